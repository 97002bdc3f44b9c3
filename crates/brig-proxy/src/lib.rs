//! brig-proxy: the host side of a session's egress (issue 4). One job:
//! serve a session's egress channels.
//!
//! - [`serve_unix`]: the proxy channel. Every stream is one connection the
//!   sandbox made, forwarded by brig's in-sandbox forwarder and starting
//!   with a PROXY protocol v1 header whose destination is the address the
//!   sandbox program connected to. Destination `127.0.0.1:3128` (or
//!   `[::1]:3128`, [`ProxyConfig::explicit_addrs`]) is explicit-proxy mode
//!   (CONNECT, absolute-URI HTTP); anything else is transparent mode for
//!   that destination (port 443: judged by the TLS SNI; port 80: by the
//!   `Host` header; other ports: by the names this session's resolver
//!   answered that address for).
//! - [`serve_tcp`]: explicit mode on a TCP listener, no PROXY header
//!   (tests, benchmarks).
//! - [`serve_dns_unix`]: the resolver channel: DNS over TCP framing, one
//!   query per message, many per connection.
//!
//! The session is the [`SessionEgress`] the listener was given, never
//! anything inside a stream. Decisions come from `brig_egress::Policy`;
//! every connection, request and query is one [`EgressEvent`] given to the
//! session's [`EgressEvents`]. Dropping (aborting) a serve future drops
//! every connection it accepted. docs/EGRESS.md, "The proxy" and "The
//! resolver", is the reference.
//!
//! Secrets (issue 6, docs/EGRESS.md "TLS interception and secret
//! injection"): with [`SessionEgress::with_secrets`] and
//! [`SessionEgress::with_ca`], TLS to the hosts secrets are bound to is
//! terminated with a leaf of brig's [`CertAuthority`], placeholders are
//! replaced by real values there ([`inject`]), and every request brig can
//! see is checked for placeholders and values going elsewhere.

pub mod artifact;
pub mod ca;
mod conn;
mod dns_server;
pub mod dns_wire;
mod event;
pub mod http;
pub mod inject;
mod limits;
pub mod local;
mod mitm;
pub mod proxy_proto;
mod resolver;
pub mod tls;
mod tunnel;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use brig_egress::Policy;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;

pub use ca::{CaError, CertAuthority};
pub use event::{EgressEvent, EgressEvents, EventKind, MemoryEvents, NoEvents, Verdict, Via};
pub use inject::{Placeholders, Secret, SecretError};
pub use limits::{Limits, SessionLimits};
pub use mitm::Prefixed;
pub use resolver::{
    resolv_conf_nameserver, Checked, ResolveError, ResolverConfig, SessionResolver,
};

/// The rule names the proxy and resolver decide by themselves (besides
/// the policy's rules and `brig_egress::rules`).
pub mod rules {
    /// A TLS connection (CONNECT to a TLS port, transparent 443) whose
    /// ClientHello names no server, or that is not TLS.
    pub const TLS_NO_SNI: &str = "tls-no-sni";
    /// A transparent connection to an address the session's resolver did
    /// not answer for the name it shows (SNI or Host).
    pub const TRANSPARENT_IP_MISMATCH: &str = "transparent-ip-mismatch";
    /// A transparent connection (not 80/443) to an address the session's
    /// resolver answered for no name.
    pub const TRANSPARENT_UNKNOWN_ADDRESS: &str = "transparent-unknown-address";
    /// Over the session's request rate.
    pub const RATE_REQUESTS: &str = "rate-limit:requests";
    /// Over the session's concurrent connections.
    pub const RATE_CONNECTIONS: &str = "rate-limit:connections";
    /// Over the session's bytes out per minute.
    pub const RATE_BYTES_OUT: &str = "rate-limit:bytes-out";
    /// Over the session's DNS query rate.
    pub const RATE_DNS: &str = "rate-limit:dns";
    /// A malformed request (400).
    pub const BAD_REQUEST: &str = "bad-request";
    /// Request line and headers over the cap, or too many header fields (431).
    pub const HEADERS_TOO_LARGE: &str = "headers-too-large";
    /// Headers not complete in time (408).
    pub const HEADER_TIMEOUT: &str = "header-timeout";
    /// A stream without a valid PROXY v1 header (closed).
    pub const PROXY_PROTOCOL: &str = "proxy-protocol";
    /// Upstream failed (502/504); the policy had allowed the request.
    pub const UPSTREAM: &str = "upstream";
    /// A malformed DNS message.
    pub const DNS_MALFORMED: &str = "dns-malformed";
    /// A DNS class other than IN.
    pub const DNS_QCLASS: &str = "dns-qclass";
}

/// Timeouts, caps and the mode table.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// PROXY-header destinations that mean explicit-proxy mode.
    pub explicit_addrs: Vec<SocketAddr>,
    /// Transparent ports judged by the `Host` header.
    pub http_ports: Vec<u16>,
    /// Ports whose connections must be TLS with an SNI (transparent, and
    /// CONNECT tunnels).
    pub tls_ports: Vec<u16>,
    /// Request line + headers cap (431 above it).
    pub max_head_bytes: usize,
    /// From a request's first byte to the end of its headers (408), and
    /// for the PROXY header and a DNS message.
    pub head_timeout: Duration,
    /// Idle keep-alive connection between requests (closed quietly).
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    /// Waiting for an upstream response head, or between body reads (504).
    pub response_timeout: Duration,
    /// A tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Waiting for a tunnel's ClientHello.
    pub tls_peek_timeout: Duration,
    /// An idle DNS channel connection.
    pub dns_idle_timeout: Duration,
    /// CA certificates (PEM) trusted for intercepted upstreams besides the
    /// system bundle (a private registry's CA; tests' origins).
    pub upstream_ca_file: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            explicit_addrs: vec![
                "127.0.0.1:3128".parse().unwrap(),
                "[::1]:3128".parse().unwrap(),
            ],
            http_ports: vec![80],
            tls_ports: vec![443],
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(600),
            tls_peek_timeout: Duration::from_secs(10),
            dns_idle_timeout: Duration::from_secs(60),
            upstream_ca_file: None,
        }
    }
}

/// One session's egress: its id, policy, limits (and their state), event
/// sink and resolver. Cheap to clone; clones share the limits' state and
/// the resolver's memory, so give the proxy and DNS channels of one
/// session clones of one value.
#[derive(Clone)]
pub struct SessionEgress {
    pub session: Arc<str>,
    pub policy: Arc<Policy>,
    pub config: Arc<ProxyConfig>,
    pub limits: Arc<SessionLimits>,
    pub events: Arc<dyn EgressEvents>,
    pub resolver: Arc<SessionResolver>,
    /// brig's artifact endpoint for this session (`artifact`); `None`:
    /// requests for the artifact host get a 404 that says so.
    pub artifacts: Option<Arc<dyn artifact::ArtifactSink>>,
    /// brig's own services on reserved hosts (the git gateway): requests
    /// for them are handed over whole (`local`).
    pub local: Vec<Arc<dyn local::LocalService>>,
    /// The session's secrets (issue 6): which hosts are TLS-intercepted,
    /// what is injected, what is blocked. `None`: nothing is intercepted
    /// and nothing is scanned.
    pub secrets: Option<Arc<dyn SecretInjector>>,
    /// brig's CA, for the leaves of intercepted hosts. A host the
    /// injector wants intercepted without a CA is refused (fail closed).
    pub ca: Option<Arc<CertAuthority>>,
    /// The upstream TLS client, built on first use from `config`.
    tls_client: Arc<OnceLock<Result<openssl::ssl::SslConnector, String>>>,
    /// The control plane's policy on connections the egress policy let
    /// through (Cedar's `net.connect`); `None`: the egress policy alone.
    pub guard: Option<Arc<dyn ConnectGuard>>,
}

/// A second decision on a destination the egress policy allowed: brig's
/// identity-aware policy (issue 7). Called on the connection's path, so it
/// must be quick and must not block.
pub trait ConnectGuard: Send + Sync {
    /// `Err` refuses the connection with the rule, the reason and how to
    /// ask for access (the 403's body and the event's explanation).
    fn check(
        &self,
        host: &str,
        port: u16,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Result<(), GuardDenial>;
}

#[derive(Clone, Debug)]
pub struct GuardDenial {
    pub rule: String,
    pub reason: String,
    pub how: String,
}

/// What the proxy asks of a session's secrets. The control plane builds
/// one per session (from brig-secrets' grants); [`Placeholders`] is the
/// usual implementation.
pub trait SecretInjector: Send + Sync + 'static {
    /// The session's placeholders, values and bindings, compiled. An
    /// `Arc` so the control plane can swap them while the session lives (a
    /// renewed credential, one expired or revoked): each request uses the
    /// set it started with.
    fn placeholders(&self) -> Arc<Placeholders>;
    /// Whether TLS to `host` (normalized) is intercepted. Default: a
    /// secret is bound to it.
    fn intercept(&self, host: &str) -> bool {
        self.placeholders().bound_to(host)
    }
    /// Secret `name` was injected into a request to `host` (for the
    /// credential's use record). Must not block.
    fn used(&self, _name: &str, _host: &str) {}
    /// Whether secret `name` may be injected into a request to `host`
    /// (Cedar's `secret.use`), asked before anything of the request is
    /// sent upstream. `Err` refuses the request (403). Called on the
    /// request's path: quick, never blocking. Default: its binding decides.
    fn authorize(&self, _name: &str, _host: &str) -> Result<(), GuardDenial> {
        Ok(())
    }
}

/// A fixed set (tests, and sessions whose secrets never change).
impl SecretInjector for Arc<Placeholders> {
    fn placeholders(&self) -> Arc<Placeholders> {
        self.clone()
    }
}

impl SessionEgress {
    /// Default limits and timeouts.
    pub fn new(
        session: impl Into<Arc<str>>,
        policy: Arc<Policy>,
        resolver: SessionResolver,
        events: Arc<dyn EgressEvents>,
    ) -> SessionEgress {
        SessionEgress {
            session: session.into(),
            policy,
            config: Arc::new(ProxyConfig::default()),
            limits: Arc::new(SessionLimits::new(Limits::default())),
            events,
            resolver: Arc::new(resolver),
            artifacts: None,
            local: Vec::new(),
            secrets: None,
            ca: None,
            tls_client: Arc::new(OnceLock::new()),
            guard: None,
        }
    }

    pub fn with_guard(mut self, guard: Arc<dyn ConnectGuard>) -> SessionEgress {
        self.guard = Some(guard);
        self
    }

    /// The session's secrets: their bound hosts are TLS-intercepted (with
    /// `ca`), placeholders injected there, and every visible request
    /// checked for placeholders and values going elsewhere.
    /// Events are scrubbed from here on: a placeholder or value a request
    /// carried in its host or path reaches the sink as `[secret:NAME]`.
    pub fn with_secrets(mut self, secrets: Arc<dyn SecretInjector>) -> SessionEgress {
        self.events = Arc::new(inject::ScrubEvents {
            inner: self.events.clone(),
            secrets: secrets.clone(),
        });
        self.secrets = Some(secrets);
        self
    }

    /// brig's CA (one per deployment, shared by every session).
    pub fn with_ca(mut self, ca: Arc<CertAuthority>) -> SessionEgress {
        self.ca = Some(ca);
        self
    }

    /// The verified upstream TLS client (system CAs and
    /// `config.upstream_ca_file`).
    pub(crate) fn upstream_tls(&self) -> Result<&openssl::ssl::SslConnector, String> {
        self.tls_client
            .get_or_init(|| mitm::connector(self.config.upstream_ca_file.as_deref()))
            .as_ref()
            .map_err(|e| e.clone())
    }

    pub fn with_artifacts(mut self, sink: Arc<dyn artifact::ArtifactSink>) -> SessionEgress {
        self.artifacts = Some(sink);
        self
    }

    pub fn with_local(mut self, service: Arc<dyn local::LocalService>) -> SessionEgress {
        self.local.push(service);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> SessionEgress {
        self.limits = Arc::new(SessionLimits::new(limits));
        self
    }

    pub fn with_config(mut self, config: ProxyConfig) -> SessionEgress {
        self.config = Arc::new(config);
        self.tls_client = Arc::new(OnceLock::new());
        self
    }
}

/// Serve a session's proxy channel (PROXY v1 header first on every
/// stream). Runs until the listener fails; drop the future to end every
/// connection.
pub async fn serve_unix(listener: UnixListener, s: SessionEgress) -> io::Result<()> {
    let mut set = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    set.spawn(conn::serve_stream(stream, s.clone(), true));
                }
                Err(e) => accept_error(e).await?,
            },
            Some(_) = set.join_next(), if !set.is_empty() => {}
        }
    }
}

/// Serve explicit-proxy mode on TCP (no PROXY header): tests and
/// benchmarks.
pub async fn serve_tcp(listener: TcpListener, s: SessionEgress) -> io::Result<()> {
    let mut set = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    set.spawn(conn::serve_stream(stream, s.clone(), false));
                }
                Err(e) => accept_error(e).await?,
            },
            Some(_) = set.join_next(), if !set.is_empty() => {}
        }
    }
}

/// Serve a session's DNS channel (DNS over TCP framing).
pub async fn serve_dns_unix(listener: UnixListener, s: SessionEgress) -> io::Result<()> {
    let mut set = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    set.spawn(dns_server::serve_dns_stream(stream, s.clone()));
                }
                Err(e) => accept_error(e).await?,
            },
            Some(_) = set.join_next(), if !set.is_empty() => {}
        }
    }
}

/// Transient accept errors (out of descriptors, a connection reset while
/// queued) pause briefly; others end the listener.
async fn accept_error(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        // ENFILE, EMFILE, ECONNABORTED, ECONNRESET, ENOBUFS, ENOMEM
        Some(code) if [23, 24, 103, 104, 105, 12].contains(&code) => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        }
        _ if e.kind() == io::ErrorKind::ConnectionAborted
            || e.kind() == io::ErrorKind::ConnectionReset =>
        {
            Ok(())
        }
        _ => Err(e),
    }
}

/// Answer one DNS message as the session's resolver would (the bytes of a
/// response, or `None` when the message is not a query). For callers that
/// carry DNS some other way.
pub async fn answer_dns(s: &SessionEgress, msg: &[u8]) -> Option<Vec<u8>> {
    dns_server::answer(s, msg).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn proxy_rule_names_are_reserved_in_brig_egress() {
        use super::rules::*;
        for name in [
            TLS_NO_SNI,
            TRANSPARENT_IP_MISMATCH,
            TRANSPARENT_UNKNOWN_ADDRESS,
            BAD_REQUEST,
            HEADERS_TOO_LARGE,
            HEADER_TIMEOUT,
            PROXY_PROTOCOL,
            UPSTREAM,
            DNS_MALFORMED,
            DNS_QCLASS,
        ] {
            assert!(brig_egress::rules::PROXY.contains(&name), "{name}");
        }
        for name in [RATE_REQUESTS, RATE_CONNECTIONS, RATE_BYTES_OUT, RATE_DNS] {
            assert!(
                name.contains(':'),
                "{name} cannot be a configured rule name"
            );
        }
    }
}
