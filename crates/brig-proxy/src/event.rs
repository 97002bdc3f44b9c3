//! One event per connection, request and DNS query: what the control plane
//! journals.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use brig_egress::Explanation;
use serde::Serialize;

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A CONNECT tunnel or a transparent TLS/TCP connection (opaque).
    Tunnel,
    /// One plain-HTTP request (explicit absolute-URI or transparent port 80).
    Http,
    /// A connection refused before any request could be judged (bad PROXY
    /// header, connection limit, malformed or oversized request, timeout).
    Connection,
    /// One DNS query.
    Dns,
}

/// How the stream reached brig.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// An explicit-proxy client (HTTP_PROXY, CONNECT).
    Explicit,
    /// A transparently caught connection to `dst`.
    Transparent,
    /// The per-session DNS channel.
    Dns,
}

/// The outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Denied,
    /// Report mode: let through, enforce mode would have denied it.
    WouldDeny,
}

/// One event. Hosts are normalized; paths are cut by
/// `brig_egress::path_for_log` (no query, no fragment); no header value is
/// ever recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EgressEvent {
    pub session: String,
    pub kind: EventKind,
    pub via: Via,
    /// The host judged (normalized), when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: u16,
    /// The original destination of a transparent connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<SocketAddr>,
    /// The address brig dialed (checked by the SSRF guard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub decision: Verdict,
    /// The rule that decided (an egress rule, a built-in rule, or one of
    /// the proxy's own: see [`crate::rules`]).
    pub rule: String,
    /// HTTP status sent to the client (or received from upstream and
    /// forwarded), when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes from upstream to the sandbox.
    pub bytes_in: u64,
    /// Bytes from the sandbox to upstream.
    pub bytes_out: u64,
    pub duration_us: u64,
    /// Present when denied or would-deny: rule, reason and how to request
    /// access.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
    /// What went wrong outside the policy (upstream refused, timeout, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// DNS: the query type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<u16>,
    /// DNS: the response code sent (NOERROR, NXDOMAIN, REFUSED, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<&'static str>,
    /// DNS: the addresses answered (after the SSRF guard).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<IpAddr>,
    /// DNS: addresses upstream returned that the SSRF guard dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<IpAddr>,
    /// brig terminated this TLS connection (a host secrets are bound to),
    /// or this request came through such a connection.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub intercepted: bool,
    /// Names of the secrets whose real values brig injected into this
    /// request (never a value or a placeholder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl EgressEvent {
    pub(crate) fn new(session: &str, kind: EventKind, via: Via) -> EgressEvent {
        EgressEvent {
            session: session.to_string(),
            kind,
            via,
            host: None,
            port: 0,
            original_dst: None,
            address: None,
            method: None,
            path: None,
            decision: Verdict::Denied,
            rule: String::new(),
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_us: 0,
            explanation: None,
            error: None,
            qtype: None,
            rcode: None,
            answers: Vec::new(),
            dropped: Vec::new(),
            intercepted: false,
            secrets: Vec::new(),
        }
    }
}

/// Where events go. Implemented by the control plane (journal). Called on
/// the connection's task: it must not block (queue and return).
pub trait EgressEvents: Send + Sync + 'static {
    fn event(&self, event: EgressEvent);
}

/// Drops every event.
pub struct NoEvents;

impl EgressEvents for NoEvents {
    fn event(&self, _: EgressEvent) {}
}

/// Keeps every event in memory (tests, benchmarks).
#[derive(Default)]
pub struct MemoryEvents(Mutex<Vec<EgressEvent>>);

impl MemoryEvents {
    pub fn new() -> MemoryEvents {
        MemoryEvents::default()
    }
    /// A copy of the events so far.
    pub fn snapshot(&self) -> Vec<EgressEvent> {
        self.0.lock().unwrap().clone()
    }
    /// Take the events so far.
    pub fn take(&self) -> Vec<EgressEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl EgressEvents for MemoryEvents {
    fn event(&self, event: EgressEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl EgressEvents for tokio::sync::mpsc::UnboundedSender<EgressEvent> {
    fn event(&self, event: EgressEvent) {
        let _ = self.send(event);
    }
}
