//! One stream of a session's proxy channel, from its PROXY header to its
//! last byte.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brig_egress::{Decision, Explanation, Host, NameSource, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::event::{EgressEvent, EventKind, Verdict, Via};
use crate::http::{self, Framing, HeadError, Meter};
use crate::inject::{self, Blocked, BodyFilter, FilterError, OutFraming};
use crate::mitm::{self, Io, Prefixed};
use crate::proxy_proto::{self, MAX_V1_LEN};
use crate::resolver::ResolveError;
use crate::tls::{self, Hello};
use crate::{rules, SessionEgress};

/// A judgement, owned (rule name and explanation copied out of the
/// policy's decision; the explanation only when not simply allowed).
#[derive(Clone, Debug)]
pub(crate) struct Judged {
    pub verdict: Verdict,
    pub rule: String,
    pub expl: Option<Explanation>,
}

impl Judged {
    /// `host` is formatted only for an explanation (not on the allowed
    /// path, the per-request one).
    pub(crate) fn from_decision(
        d: &Decision<'_>,
        host: impl std::fmt::Display,
        port: u16,
        method: Option<&str>,
    ) -> Judged {
        let verdict = if !d.allowed {
            Verdict::Denied
        } else if d.would_deny {
            Verdict::WouldDeny
        } else {
            Verdict::Allowed
        };
        Judged {
            verdict,
            rule: d.rule.as_str().to_string(),
            expl: (verdict != Verdict::Allowed).then(|| d.explain(&host.to_string(), port, method)),
        }
    }

    /// A denial by one of the proxy's own rules.
    pub(crate) fn builtin(rule: &str, reason: String, how: String) -> Judged {
        Judged {
            verdict: Verdict::Denied,
            rule: rule.to_string(),
            expl: Some(Explanation {
                allowed: false,
                would_deny: false,
                rule: rule.to_string(),
                reason,
                how_to_request_access: Some(how),
            }),
        }
    }

    /// A request that gives a secret away (crate::inject).
    pub(crate) fn from_blocked(b: &Blocked, host: &str) -> Judged {
        Judged {
            verdict: Verdict::Denied,
            rule: b.rule.to_string(),
            expl: Some(b.explanation(host)),
        }
    }

    fn denied(&self) -> bool {
        self.verdict == Verdict::Denied
    }

    fn body(&self) -> String {
        self.expl.as_ref().map(|e| e.to_text()).unwrap_or_default()
    }
}

/// Judge a destination: an IP literal goes through the SSRF guard first
/// (its range is the more useful answer), then the policy.
pub(crate) fn judge(
    s: &SessionEgress,
    host: &Host,
    port: u16,
    method: Option<&str>,
    path: Option<&str>,
) -> Judged {
    if let Host::Ip(ip) = host {
        if let Err(e) = s.policy.ssrf().check_ip(*ip) {
            return Judged::from_decision(&s.policy.ssrf_decision(e), host, port, method);
        }
    }
    let d = s.policy.decide(&Request {
        host,
        port,
        method,
        path,
    });
    guarded(
        s,
        Judged::from_decision(&d, host, port, method),
        host,
        port,
        method,
        path,
    )
}

/// The control plane's guard on what the egress policy did not deny.
fn guarded(
    s: &SessionEgress,
    j: Judged,
    host: &dyn std::fmt::Display,
    port: u16,
    method: Option<&str>,
    path: Option<&str>,
) -> Judged {
    let Some(g) = s.guard.as_ref().filter(|_| !j.denied()) else {
        return j;
    };
    match g.check(&host.to_string(), port, method, path) {
        Ok(()) => j,
        Err(d) => Judged::builtin(&d.rule, d.reason, d.how),
    }
}

fn mismatch(d: Decision<'_>, host: &Host, port: u16) -> Judged {
    Judged::from_decision(&d, host, port, None)
}

fn ip_mismatch(name: &str, dst: SocketAddr) -> Judged {
    Judged::builtin(
        rules::TRANSPARENT_IP_MISMATCH,
        format!(
            "the connection to {name} was opened to {}, an address this session's resolver did not answer for {name}",
            dst.ip()
        ),
        format!(
            "resolve {name} through the session's DNS resolver (the sandbox's /etc/resolv.conf) and connect to an address it returned, or use the proxy (HTTPS_PROXY)"
        ),
    )
}

fn no_sni(host: &str) -> Judged {
    Judged::builtin(
        rules::TLS_NO_SNI,
        format!("the TLS connection to {host} does not name its server (no SNI in the ClientHello, or not TLS)"),
        "send TLS with the server name (SNI) of the host the connection is for; brig judges TLS connections by it".to_string(),
    )
}

enum DialFail {
    Denied(Judged),
    Status(u16, String),
}

/// Resolve once, check every address, connect to a checked one.
async fn dial_name(
    s: &SessionEgress,
    host: &Host,
    port: u16,
) -> Result<(TcpStream, SocketAddr), DialFail> {
    let addrs: Vec<std::net::IpAddr> = match host {
        Host::Ip(ip) => vec![*ip],
        Host::Domain(d) => match s.resolver.lookup(d, s.policy.ssrf()).await {
            Ok(c) => {
                if c.kept.is_empty() {
                    if let Some((_, denial)) = c.dropped.into_iter().next() {
                        return Err(DialFail::Denied(Judged::from_decision(
                            &s.policy.ssrf_decision(denial),
                            d,
                            port,
                            None,
                        )));
                    }
                }
                c.kept.into_iter().map(|(ip, _)| ip).collect()
            }
            Err(ResolveError::Timeout) => {
                return Err(DialFail::Status(
                    504,
                    format!("resolving {d}: {}", ResolveError::Timeout),
                ))
            }
            Err(e) => return Err(DialFail::Status(502, format!("resolving {d}: {e}"))),
        },
    };
    if addrs.is_empty() {
        return Err(DialFail::Status(502, format!("{host} has no address")));
    }
    // Every address to be dialed is checked (again, for the record: the
    // resolver kept only addresses that passed).
    let checked = match s.policy.ssrf().check_resolved(&addrs) {
        Ok(c) => c,
        Err(e) => {
            return Err(DialFail::Denied(Judged::from_decision(
                &s.policy.ssrf_decision(e),
                host,
                port,
                None,
            )))
        }
    };
    let mut last = DialFail::Status(502, "no address".into());
    for ip in checked {
        let addr = SocketAddr::new(ip, port);
        match dial(s, addr).await {
            Ok(t) => return Ok((t, addr)),
            Err((code, e)) => last = DialFail::Status(code, e),
        }
    }
    Err(last)
}

/// Connect to one checked address; `Err((status, error))`.
async fn dial(s: &SessionEgress, addr: SocketAddr) -> Result<TcpStream, (u16, String)> {
    match tokio::time::timeout(s.config.connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => Err((504, format!("connecting to {addr}: timed out"))),
        Ok(Err(e)) => Err((502, format!("connecting to {addr}: {e}"))),
        Ok(Ok(t)) => {
            let _ = t.set_nodelay(true);
            Ok(t)
        }
    }
}

struct Ctx<'a> {
    s: &'a SessionEgress,
    via: Via,
    dst: Option<SocketAddr>,
    /// Inside an intercepted TLS connection: the host and port it is for.
    tls: Option<TlsTarget>,
}

/// What an intercepted connection is for: every request inside must name
/// this host, and goes to it over verified TLS.
struct TlsTarget {
    host: Host,
    port: u16,
    /// The TCP connection a CONNECT already dialed (used first).
    pre: Mutex<Option<(TcpStream, SocketAddr)>>,
}

impl Ctx<'_> {
    fn event(&self, kind: EventKind) -> EgressEvent {
        let mut e = EgressEvent::new(&self.s.session, kind, self.via);
        e.intercepted = self.tls.is_some();
        e.original_dst = self.dst;
        if let Some(d) = self.dst {
            e.port = d.port();
        }
        e
    }

    /// Hand the event over, its duration measured from `start`.
    fn emit(&self, mut e: EgressEvent, start: Instant) {
        e.duration_us = start.elapsed().as_micros() as u64;
        self.s.events.event(e);
    }

    fn refused(&self, start: Instant, rule: &str, status: Option<u16>, error: String) {
        let mut e = self.event(EventKind::Connection);
        e.rule = rule.to_string();
        e.status = status;
        e.error = Some(error);
        self.emit(e, start);
    }
}

/// Serve one stream of the proxy channel.
pub(crate) async fn serve_stream<S>(mut client: S, s: SessionEgress, proxied: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    let mut ctx = Ctx {
        s: &s,
        via: Via::Explicit,
        dst: None,
        tls: None,
    };
    // The slot is taken before the PROXY header is read: a stream that
    // sends nothing holds one for the header's 10 s, so it counts.
    let slot = s.limits.connection();
    if proxied {
        match read_proxy_header(&mut client, &mut buf, s.config.head_timeout).await {
            Ok(h) => {
                if !s.config.explicit_addrs.contains(&h.dst) {
                    ctx.via = Via::Transparent;
                    ctx.dst = Some(h.dst);
                }
            }
            Err(e) => {
                ctx.refused(start, rules::PROXY_PROTOCOL, None, e);
                return;
            }
        }
    }
    let Some(_slot) = slot else {
        if ctx.dst.is_none()
            || ctx
                .dst
                .is_some_and(|d| s.config.http_ports.contains(&d.port()))
        {
            let body = format!(
                "brig egress: this session has {} connections open, its limit (rule: {})\n",
                s.limits.limits.max_connections,
                rules::RATE_CONNECTIONS
            );
            let _ = client
                .write_all(&http::answer(
                    429,
                    &[
                        ("Retry-After", "1"),
                        ("X-Brig-Rule", rules::RATE_CONNECTIONS),
                    ],
                    &body,
                    true,
                ))
                .await;
        }
        ctx.refused(
            start,
            rules::RATE_CONNECTIONS,
            Some(429),
            "too many connections".into(),
        );
        return;
    };
    match ctx.dst {
        None => http_loop(client, buf, &ctx, start).await,
        Some(d) if s.config.http_ports.contains(&d.port()) => {
            http_loop(client, buf, &ctx, start).await
        }
        Some(d) if s.config.tls_ports.contains(&d.port()) => {
            transparent_tls(client, buf, &ctx, d, start).await
        }
        Some(d) => transparent_tcp(client, buf, &ctx, d, start).await,
    }
}

async fn read_proxy_header<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<proxy_proto::ProxyHeader, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    buf.reserve(1024);
    loop {
        if let Some(p) = memchr::memmem::find(buf, b"\r\n") {
            let h = proxy_proto::parse_v1(&buf[..p + 2]).map_err(|e| e.to_string());
            buf.drain(..p + 2);
            return h;
        }
        if buf.len() >= MAX_V1_LEN {
            return Err(proxy_proto::ProxyHeaderError::TooLong.to_string());
        }
        if buf.len() >= 6 && !buf.starts_with(b"PROXY ") {
            return Err(proxy_proto::ProxyHeaderError::NotProxy.to_string());
        }
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Err(_) => return Err("no PROXY header in time".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(0)) => return Err("closed before the PROXY header".into()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A parsed request, owned.
struct Prep {
    method: String,
    connect: bool,
    host: Host,
    port: u16,
    log_path: Option<String>,
    upstream_head: Vec<u8>,
    framing: Framing,
    keep_alive: bool,
    http11: bool,
    judged: Judged,
}

enum Early {
    /// brig answers `status` and closes; the rule and error for the event.
    Status(u16, &'static str, String),
    /// Too many headers.
    TooLarge,
}

const MAX_HEADERS: usize = 128;

fn prepare(head: &[u8], ctx: &Ctx<'_>) -> Result<Prep, Early> {
    let s = ctx.s;
    let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hdrs);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Early::Status(
                400,
                rules::BAD_REQUEST,
                "incomplete request head".into(),
            ))
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Early::TooLarge),
        Err(e) => {
            return Err(Early::Status(
                400,
                rules::BAD_REQUEST,
                format!("malformed request: {e}"),
            ))
        }
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("");
    let version = req.version.unwrap_or(1);
    let headers = &*req.headers;
    let bad = |m: String| Early::Status(400, rules::BAD_REQUEST, m);
    let hosts: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    if hosts.len() > 1 {
        return Err(bad("more than one Host header".into()));
    }
    let host_hdr = match hosts.first() {
        Some(v) => Some(
            std::str::from_utf8(v).map_err(|_| bad("a Host header that is not ASCII".into()))?,
        ),
        None => None,
    };
    let keep_alive = version == 1 && !http::has_token(headers, "connection", "close");

    if method == "CONNECT" {
        if ctx.via == Via::Transparent || ctx.tls.is_some() {
            return Err(bad("CONNECT sent to a server that is not the proxy".into()));
        }
        let (host, port) = match brig_egress::parse_authority(target, None) {
            Ok(hp) => hp,
            Err(e) => {
                let j = Judged::builtin(
                    brig_egress::rules::INVALID_HOST,
                    // Never the userinfo of `user:password@host` (the
                    // explanation is journaled).
                    match target.rsplit_once('@') {
                        Some((_, host)) => {
                            format!("the CONNECT target [userinfo]@{host:?} is not valid: {e}")
                        }
                        None => format!("the CONNECT target {target:?} is not valid: {e}"),
                    },
                    "CONNECT to host:port, the host's canonical name and a port".into(),
                );
                return Ok(Prep {
                    method,
                    connect: true,
                    host: Host::Domain(String::new()),
                    port: 0,
                    log_path: None,
                    upstream_head: Vec::new(),
                    framing: Framing::None,
                    keep_alive: false,
                    http11: version == 1,
                    judged: j,
                });
            }
        };
        let mut judged = judge(s, &host, port, None, None);
        if let Some(h) = host_hdr {
            if let Err(d) = s
                .policy
                .check_same_host(&host, port, h, NameSource::HostHeader)
            {
                judged = mismatch(d, &host, port);
            }
        }
        return Ok(Prep {
            method,
            connect: true,
            host,
            port,
            log_path: None,
            upstream_head: Vec::new(),
            framing: Framing::None,
            keep_alive: false,
            http11: version == 1,
            judged,
        });
    }

    let framing =
        http::request_framing(headers).map_err(|e| bad(format!("request framing: {e}")))?;
    // Where the request goes, and its origin-form target.
    let (host, port, origin_path, mut judged_host): (Host, u16, &str, Option<Judged>) = match (
        ctx.tls.as_ref(),
        ctx.dst,
    ) {
        // Inside intercepted TLS: origin form, and the Host header must
        // name the host the connection is for.
        (Some(t), _) => {
            if !target.starts_with('/') {
                return Err(bad(
                    "a request inside TLS must use an origin-form target (/path)".into(),
                ));
            }
            let Some(h) = host_hdr else {
                return Err(bad("a request without a Host header".into()));
            };
            let j = s
                .policy
                .check_same_host(&t.host, t.port, h, NameSource::HostHeader)
                .err()
                .map(|d| mismatch(d, &t.host, t.port));
            (t.host.clone(), t.port, target, j)
        }
        (None, None) => {
            let rest = match target.get(..7) {
                Some(p) if p.eq_ignore_ascii_case("http://") => &target[7..],
                _ if target.starts_with('/') || target == "*" => {
                    return Err(bad(
                        "a request with a relative URI sent to the proxy (use an absolute URI, or CONNECT)".into(),
                    ))
                }
                _ => return Err(bad(format!("unsupported request target {:?}", http_scheme(target)))),
            };
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..end];
            let path = &rest[end..];
            let (host, port, mut j) = match brig_egress::parse_authority(authority, Some(80)) {
                Ok((h, p)) => (h, p, None),
                Err(e) => (
                    Host::Domain(String::new()),
                    80,
                    Some(Judged::builtin(
                        brig_egress::rules::INVALID_HOST,
                        format!("the request's host is not valid: {e}"),
                        "name the host by its canonical name, without userinfo".into(),
                    )),
                ),
            };
            match host_hdr {
                Some(h) if j.is_none() => {
                    if let Err(d) = s
                        .policy
                        .check_same_host(&host, port, h, NameSource::HostHeader)
                    {
                        j = Some(mismatch(d, &host, port));
                    }
                }
                None if version == 1 => {
                    return Err(bad("HTTP/1.1 request without a Host header".into()))
                }
                _ => {}
            }
            (host, port, path, j)
        }
        (None, Some(dst)) => {
            if !target.starts_with('/') {
                return Err(bad(
                    "a transparent request must use an origin-form target (/path)".into(),
                ));
            }
            let Some(h) = host_hdr else {
                return Err(bad("a request without a Host header".into()));
            };
            match brig_egress::parse_authority(h, Some(dst.port())) {
                Ok((host, port)) => {
                    let mut j = None;
                    if port != dst.port() {
                        if let Err(d) =
                            s.policy
                                .check_same_host(&host, dst.port(), h, NameSource::HostHeader)
                        {
                            j = Some(mismatch(d, &host, dst.port()));
                        }
                    }
                    (host, dst.port(), target, j)
                }
                Err(e) => (
                    Host::Domain(String::new()),
                    dst.port(),
                    target,
                    Some(Judged::builtin(
                        brig_egress::rules::INVALID_HOST,
                        format!("the Host header is not valid: {e}"),
                        "name the host by its canonical name".into(),
                    )),
                ),
            }
        }
    };
    let origin_path = if origin_path.is_empty() {
        "/"
    } else if origin_path.starts_with('?') {
        // `http://host?q`: the path is "/" (RFC 9112 §3.2.1).
        return Err(bad("an absolute URI with a query and no path".into()));
    } else {
        origin_path
    };
    let judged = match judged_host.take() {
        Some(j) => j,
        None => judge(s, &host, port, Some(&method), Some(origin_path)),
    };
    // The head sent upstream: origin form, hop-by-hop headers removed.
    let mut up = Vec::with_capacity(head.len() + 32);
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(origin_path.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers.iter() {
        if http::hop_by_hop(h.name) || http::listed_in_connection(headers, h.name) {
            continue;
        }
        up.extend_from_slice(h.name.as_bytes());
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    if host_hdr.is_none() {
        up.extend_from_slice(b"Host: ");
        up.extend_from_slice(host.to_string().as_bytes());
        if port != 80 {
            up.extend_from_slice(format!(":{port}").as_bytes());
        }
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(b"\r\n");
    Ok(Prep {
        method,
        connect: false,
        host,
        port,
        log_path: Some(brig_egress::path_for_log(origin_path).to_string()),
        upstream_head: up,
        framing,
        keep_alive,
        http11: version == 1,
        judged,
    })
}

/// The scheme of an unsupported target, for the error (never the rest:
/// it may carry credentials).
fn http_scheme(target: &str) -> &str {
    match target.find("://") {
        Some(i) if i < 16 => &target[..i + 3],
        _ => "(not a URI)",
    }
}

struct Upstream {
    key: (Host, u16),
    addr: SocketAddr,
    /// TCP, or TLS for an intercepted connection.
    stream: Box<dyn Io>,
    buf: Vec<u8>,
}

struct OutMeter<'a> {
    s: &'a SessionEgress,
    count: &'a AtomicU64,
    exhausted: bool,
}

impl Meter for OutMeter<'_> {
    fn copied(&mut self, n: usize) -> bool {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        if !self.s.limits.charge_bytes_out(n) {
            self.exhausted = true;
            return false;
        }
        true
    }
}

struct InMeter<'a>(&'a AtomicU64);

impl Meter for InMeter<'_> {
    fn copied(&mut self, n: usize) -> bool {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        true
    }
}

async fn send_answer<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) {
    let _ = client.write_all(bytes).await;
}

/// Answer `code` with brig's one-line text (`why` and the rule), closing
/// the connection, and journal the stream as refused with `error`.
async fn refuse<S: AsyncWrite + Unpin>(
    client: &mut S,
    ctx: &Ctx<'_>,
    start: Instant,
    code: u16,
    rule: &str,
    why: &str,
    error: String,
) {
    let body = format!("brig egress: {why} (rule: {rule})\n");
    send_answer(
        client,
        &http::answer(code, &[("X-Brig-Rule", rule)], &body, true),
    )
    .await;
    ctx.refused(start, rule, Some(code), error);
}

/// Answer a denial with its `403` and explanation, and journal it.
async fn deny<S: AsyncWrite + Unpin>(
    client: &mut S,
    ctx: &Ctx<'_>,
    mut ev: EgressEvent,
    j: Judged,
    start: Instant,
    close: bool,
) {
    send_answer(
        client,
        &http::answer(403, &[("X-Brig-Rule", &j.rule)], &j.body(), close),
    )
    .await;
    ev.decision = j.verdict;
    ev.rule = j.rule;
    ev.explanation = j.expl;
    ev.status = Some(403);
    ctx.emit(ev, start);
}

/// A request that would give a secret away: `403` naming the secret (by
/// name) and the rule, journaled as an exfiltration attempt.
#[allow(clippy::too_many_arguments)]
async fn exfil<S: AsyncWrite + Unpin>(
    client: &mut S,
    ctx: &Ctx<'_>,
    mut ev: EgressEvent,
    b: &Blocked,
    host: &str,
    start: Instant,
    close: bool,
) {
    let expl = b.explanation(host);
    send_answer(
        client,
        &http::answer(403, &[("X-Brig-Rule", b.rule)], &expl.to_text(), close),
    )
    .await;
    ev.decision = Verdict::Denied;
    ev.rule = b.rule.to_string();
    ev.explanation = Some(expl);
    ev.status = Some(403);
    ev.error = Some(format!("exfiltration attempt: secret {}", b.secret));
    ctx.emit(ev, start);
}

/// The first of `names` the control plane's policy refuses to inject into
/// a request to `host`, as the refusal to answer.
fn secret_refused<'n>(
    s: &SessionEgress,
    names: impl Iterator<Item = &'n str>,
    host: &str,
) -> Option<Judged> {
    let inj = s.secrets.as_ref()?;
    for name in names {
        if let Err(d) = inj.authorize(name, host) {
            return Some(Judged::builtin(&d.rule, d.reason, d.how));
        }
    }
    None
}

/// A host name that carries a placeholder or a value (exfiltration by
/// name: DNS, SNI, CONNECT, Host).
pub(crate) fn name_leak(s: &SessionEgress, name: &str) -> Option<Blocked> {
    s.secrets.as_ref()?.placeholders().in_name(name)
}

/// Whether TLS to `host` is intercepted (a secret is bound to it).
fn intercepts(s: &SessionEgress, host: &Host) -> bool {
    match (host, &s.secrets) {
        (Host::Domain(d), Some(i)) => i.intercept(d),
        _ => false,
    }
}

/// Terminate the sandbox's TLS to `host` with brig's leaf and serve the
/// requests inside it like plain HTTP, upstream over verified TLS. `pre`:
/// the TCP connection a CONNECT already dialed. The tunnel's own event is
/// emitted when it ends; each request inside has its own.
#[allow(clippy::too_many_arguments)]
async fn intercept<S>(
    client: S,
    buf: Vec<u8>,
    ctx: &Ctx<'_>,
    host: Host,
    port: u16,
    pre: Option<(TcpStream, SocketAddr)>,
    mut ev: EgressEvent,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = ctx.s;
    ev.intercepted = true;
    let name = host.to_string();
    if s.ca.is_none() {
        // Splicing would let placeholders through unchecked: refuse.
        ev.decision = Verdict::Denied;
        ev.rule = inject::rules::NO_CA.to_string();
        ev.error = Some(format!(
            "a secret is bound to {name}, so its TLS must be intercepted, and this brig has no CA configured"
        ));
        ctx.emit(ev, start);
        return;
    }
    let tls = match mitm::accept_client(
        s,
        &name,
        Prefixed::new(buf, client),
        s.config.tls_peek_timeout,
    )
    .await
    {
        Ok(t) => t,
        Err(e) => {
            ev.error = Some(e);
            ctx.emit(ev, start);
            return;
        }
    };
    let inner = Ctx {
        s,
        via: ctx.via,
        dst: ctx.dst,
        tls: Some(TlsTarget {
            host,
            port,
            pre: Mutex::new(pre),
        }),
    };
    serve_intercepted(Box::new(tls), &inner).await;
    ctx.emit(ev, start);
}

/// The requests inside an intercepted connection. A plain fn with a boxed
/// future: http_loop is what called us (through connect_tunnel).
fn serve_intercepted<'a>(
    client: Box<dyn Io>,
    inner: &'a Ctx<'a>,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(http_loop(client, Vec::new(), inner, Instant::now()))
}

/// Whether the session is over its request rate or its bytes-out budget:
/// the rule, and how long until it is not. Each call costs one request.
fn over_limit(s: &SessionEgress) -> Option<(&'static str, Duration)> {
    match s.limits.request() {
        Err(w) => Some((rules::RATE_REQUESTS, w)),
        Ok(()) => s
            .limits
            .bytes_out_available()
            .err()
            .map(|w| (rules::RATE_BYTES_OUT, w)),
    }
}

/// An opaque stream over the limits is closed and journaled (no answer:
/// there is no protocol to answer in).
fn tunnel_limited(ctx: &Ctx<'_>, start: Instant) -> bool {
    let Some((rule, wait)) = over_limit(ctx.s) else {
        return false;
    };
    let mut e = ctx.event(EventKind::Tunnel);
    e.decision = Verdict::Denied;
    e.rule = rule.to_string();
    e.error = Some(format!(
        "rate limited (retry after {} s)",
        retry_after(wait)
    ));
    ctx.emit(e, start);
    true
}

fn retry_after(d: Duration) -> String {
    d.as_secs_f64().ceil().max(1.0).to_string()
}

async fn http_loop<S>(mut client: S, mut buf: Vec<u8>, ctx: &Ctx<'_>, conn_start: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = ctx.s;
    let cfg = &s.config;
    let mut upstream: Option<Upstream> = None;
    let mut first = true;
    loop {
        let idle = if first {
            cfg.head_timeout
        } else {
            cfg.keepalive_timeout
        };
        let n = match http::read_head(
            &mut client,
            &mut buf,
            cfg.max_head_bytes,
            idle,
            cfg.head_timeout,
        )
        .await
        {
            Ok(n) => n,
            Err(HeadError::Closed) => {
                if first && buf.is_empty() && ctx.via == Via::Transparent && ctx.tls.is_none() {
                    ctx.refused(conn_start, rules::BAD_REQUEST, None, "no request".into());
                }
                return;
            }
            Err(HeadError::TooLarge) => {
                let why = format!(
                    "the request line and headers exceed {} bytes",
                    cfg.max_head_bytes
                );
                let err = "request head too large".into();
                refuse(
                    &mut client,
                    ctx,
                    conn_start,
                    431,
                    rules::HEADERS_TOO_LARGE,
                    &why,
                    err,
                )
                .await;
                return;
            }
            Err(HeadError::Timeout) => {
                let why = format!(
                    "the request headers were not complete within {:?}",
                    cfg.head_timeout
                );
                let err = "request head timeout".into();
                refuse(
                    &mut client,
                    ctx,
                    conn_start,
                    408,
                    rules::HEADER_TIMEOUT,
                    &why,
                    err,
                )
                .await;
                return;
            }
            Err(HeadError::Io(_)) => return,
        };
        first = false;
        let start = Instant::now();
        let mut prep = match prepare(&buf[..n], ctx) {
            Ok(p) => p,
            Err(Early::TooLarge) => {
                let why = "too many header fields";
                let err = "too many headers".into();
                refuse(
                    &mut client,
                    ctx,
                    start,
                    431,
                    rules::HEADERS_TOO_LARGE,
                    why,
                    err,
                )
                .await;
                return;
            }
            Err(Early::Status(code, rule, err)) => {
                refuse(&mut client, ctx, start, code, rule, &err, err.clone()).await;
                return;
            }
        };
        // brig's own service on this host gets the connection whole, the
        // head it sent included.
        let local = crate::local::service_for(s, &prep.host).cloned();
        let head = local.as_ref().map(|_| buf[..n].to_vec());
        buf.drain(..n);
        if buf.capacity() > 64 * 1024 && buf.len() < 1024 {
            buf.shrink_to(4096);
        }
        let mut ev = ctx.event(if prep.connect {
            EventKind::Tunnel
        } else {
            EventKind::Http
        });
        let host = prep.host.to_string();
        ev.host = (!host.is_empty()).then_some(host);
        ev.port = prep.port;
        ev.method = Some(prep.method.clone());
        // An upload's path holds its token: logged redacted on every path
        // (the rate limit below answers before the artifact endpoint).
        let artifact = crate::artifact::is_artifact_host(s, &prep.host);
        ev.path = match &prep.log_path {
            Some(p) if artifact => Some(crate::artifact::logged_path(p).to_string()),
            p => p.clone(),
        };
        ev.decision = prep.judged.verdict;
        ev.rule = prep.judged.rule.clone();
        ev.explanation = prep.judged.expl.clone();

        // Limits first: a flood of requests is refused whatever it asks.
        if let Some((rule, wait)) = over_limit(s) {
            let ra = retry_after(wait);
            let body = format!("brig egress: this session is over its rate limit (rule: {rule}); retry after {ra} s\n");
            send_answer(
                &mut client,
                &http::answer(
                    429,
                    &[("Retry-After", &ra), ("X-Brig-Rule", rule)],
                    &body,
                    true,
                ),
            )
            .await;
            ev.decision = Verdict::Denied;
            ev.rule = rule.to_string();
            ev.status = Some(429);
            ev.explanation = None;
            ev.error = Some("rate limited".into());
            ctx.emit(ev, start);
            return;
        }
        if let Some(b) = name_leak(s, &ev.host.clone().unwrap_or_default()) {
            exfil(&mut client, ctx, ev, &b, "", start, true).await;
            return;
        }
        if let (Some(svc), Some(mut head)) = (local, head) {
            if prep.connect {
                let why = format!(
                    "{} is brig's own service and speaks plain HTTP on the session's channel: use http://{}/",
                    svc.host(),
                    svc.host()
                );
                refuse(
                    &mut client,
                    ctx,
                    start,
                    400,
                    crate::local::rules::NO_TUNNEL,
                    &why,
                    "CONNECT to a local service".into(),
                )
                .await;
                return;
            }
            ev.decision = Verdict::Allowed;
            ev.rule = crate::local::rules::SERVICE.to_string();
            ev.explanation = None;
            ctx.emit(ev, start);
            head.extend_from_slice(&buf);
            svc.serve(s.session.clone(), Box::new(client), head).await;
            return;
        }
        // brig's own artifact endpoint: never judged by the policy, never
        // dialed (crate::artifact).
        if artifact {
            let req = crate::artifact::Req {
                method: &prep.method,
                path: prep.log_path.as_deref(),
                framing: prep.framing,
                keep_alive: prep.keep_alive,
                connect: prep.connect,
                host_mismatch: prep.judged.rule == brig_egress::rules::HOST_MISMATCH,
            };
            let keep = crate::artifact::serve(&mut client, &mut buf, s, req, ev, start).await;
            if keep {
                continue;
            }
            return;
        }
        if prep.judged.denied() {
            let keep = prep.keep_alive && !prep.connect && prep.framing == Framing::None;
            deny(&mut client, ctx, ev, prep.judged, start, !keep).await;
            if keep {
                continue;
            }
            return;
        }
        if prep.connect {
            connect_tunnel(client, buf, ctx, prep, ev, start).await;
            return;
        }

        // Plain HTTP: the upstream connection, reused while it names the
        // same destination.
        let key = (prep.host.clone(), prep.port);
        if let (Some(dst), Host::Domain(name)) = (ctx.dst, &prep.host) {
            if !s.resolver.answered(name, dst.ip()) {
                let j = ip_mismatch(name, dst);
                let keep = prep.keep_alive && prep.framing == Framing::None;
                deny(&mut client, ctx, ev, j, start, !keep).await;
                if keep {
                    continue;
                }
                return;
            }
        }
        if upstream.as_ref().is_some_and(|u| u.key != key) {
            upstream = None;
        }
        // Secrets: placeholders of the secrets bound to this host become
        // their values; anything that gives a secret away elsewhere blocks
        // the request (crate::inject).
        let host_s = prep.host.to_string();
        let placeholders = s.secrets.as_ref().map(|i| i.placeholders());
        let plan = placeholders.as_ref().map(|p| p.plan(&host_s));
        let mut injected = BTreeSet::new();
        if let Some(plan) = &plan {
            match plan.rewrite_head(&prep.upstream_head) {
                Ok(h) => {
                    prep.upstream_head = h.head;
                    injected = h.injected;
                }
                Err(b) => {
                    let keep = prep.keep_alive && prep.framing == Framing::None;
                    exfil(&mut client, ctx, ev, &b, &host_s, start, !keep).await;
                    if keep {
                        continue;
                    }
                    return;
                }
            }
        }
        let mut filter = match &plan {
            Some(p) if prep.framing != Framing::None => Some(p.request_filter()),
            _ => None,
        };
        // A small body is read whole before anything is sent, so a
        // blocked one never reaches upstream; a larger one streams.
        let body_out = match (&plan, prep.framing) {
            (_, Framing::Length(n)) if n <= inject::MAX_BUFFERED_BODY => OutFraming::Buffer,
            (Some(p), Framing::Length(_)) if !p.injects_body() => OutFraming::Same,
            _ => OutFraming::Chunked,
        };
        // Policy on each secret about to be used, before a byte goes out: the
        // head's, and a streamed body's possible ones (known only as it
        // passes, so asked for up front).
        let streamed: Vec<&str> = match (&plan, &filter) {
            (Some(p), Some(_)) if body_out != OutFraming::Buffer => p.body_secrets().collect(),
            _ => Vec::new(),
        };
        let asked = injected.iter().map(String::as_str).chain(streamed);
        if let Some(j) = secret_refused(s, asked, &host_s) {
            let keep = prep.keep_alive && prep.framing == Framing::None;
            deny(&mut client, ctx, ev, j, start, !keep).await;
            if keep {
                continue;
            }
            return;
        }
        // Such a body is filtered into memory before brig dials: a blocked
        // request never opens a connection upstream.
        let mut rendered: Option<Vec<u8>> = None;
        if let (Some(f), OutFraming::Buffer) = (filter.as_mut(), body_out) {
            if let Some(h) = inject::take_expect_continue(&prep.upstream_head) {
                prep.upstream_head = h;
                send_answer(&mut client, b"HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            let mut whole = Vec::new();
            let uncounted = AtomicU64::new(0);
            let r = inject::copy_filtered(
                &prep.upstream_head,
                &mut buf,
                &mut client,
                &mut whole,
                prep.framing,
                cfg.head_timeout,
                &mut InMeter(&uncounted),
                f,
                OutFraming::Buffer,
            )
            .await;
            match r {
                Ok(_) => rendered = Some(whole),
                Err(FilterError::Blocked(b)) => {
                    exfil(&mut client, ctx, ev, &b, &host_s, start, true).await;
                    return;
                }
                Err(FilterError::Io(e)) => {
                    let err = format!("reading the request body: {e}");
                    let body = format!("brig egress: {err} (rule: {})\n", rules::BAD_REQUEST);
                    send_answer(
                        &mut client,
                        &http::answer(400, &[("X-Brig-Rule", rules::BAD_REQUEST)], &body, true),
                    )
                    .await;
                    ev.status = Some(400);
                    ev.error = Some(err);
                    ctx.emit(ev, start);
                    return;
                }
            }
            let body_only = f.injected.difference(&injected).map(String::as_str);
            if let Some(j) = secret_refused(s, body_only, &host_s) {
                deny(&mut client, ctx, ev, j, start, true).await;
                return;
            }
            injected.extend(f.injected.iter().cloned());
            filter = None;
        }
        let bytes_out = AtomicU64::new(0);
        let bytes_in = AtomicU64::new(0);
        let mut reused = upstream.is_some();
        let mut attempt = 0;
        let outcome: Result<(u16, bool, bool), (u16, String)> = loop {
            attempt += 1;
            if upstream.is_none() {
                reused = false;
                let pre = ctx.tls.as_ref().and_then(|t| t.pre.lock().unwrap().take());
                let dialed = match (pre, ctx.dst) {
                    (Some(p), _) => Ok(p),
                    (None, None) => dial_name(s, &prep.host, prep.port).await,
                    (None, Some(dst)) => match s.policy.ssrf().check_ip(dst.ip()) {
                        Err(e) => Err(DialFail::Denied(Judged::from_decision(
                            &s.policy.ssrf_decision(e),
                            &prep.host,
                            dst.port(),
                            None,
                        ))),
                        Ok(_) => dial(s, dst)
                            .await
                            .map(|t| (t, dst))
                            .map_err(|(code, e)| DialFail::Status(code, e)),
                    },
                };
                // An intercepted connection goes on over verified TLS.
                let dialed = match (dialed, &ctx.tls) {
                    (Ok((tcp, addr)), Some(_)) => {
                        match mitm::connect_upstream(s, &host_s, tcp).await {
                            Ok(t) => Ok((Box::new(t) as Box<dyn Io>, addr)),
                            Err(e) => {
                                ev.address = Some(addr);
                                Err(DialFail::Status(502, e))
                            }
                        }
                    }
                    (Ok((tcp, addr)), None) => Ok((Box::new(tcp) as Box<dyn Io>, addr)),
                    (Err(e), _) => Err(e),
                };
                match dialed {
                    Ok((stream, addr)) => {
                        upstream = Some(Upstream {
                            key: key.clone(),
                            addr,
                            stream,
                            buf: Vec::new(),
                        })
                    }
                    Err(DialFail::Denied(j)) => {
                        deny(&mut client, ctx, ev, j, start, true).await;
                        return;
                    }
                    Err(DialFail::Status(code, err)) => break Err((code, err)),
                }
            }
            let up = upstream.as_mut().unwrap();
            ev.address = Some(up.addr);
            let mut meter = OutMeter {
                s,
                count: &bytes_out,
                exhausted: false,
            };
            // Head (and what is buffered of the body) in one write.
            let sent = match (filter.as_mut(), &rendered) {
                (_, Some(whole)) => async {
                    up.stream.write_all(whole).await?;
                    meter.copied(whole.len());
                    Ok(whole.len() as u64)
                }
                .await
                .map_err(FilterError::Io),
                (None, None) => async {
                    up.stream.write_all(&prep.upstream_head).await?;
                    meter.copied(prep.upstream_head.len());
                    http::copy_body(
                        &mut buf,
                        &mut client,
                        &mut up.stream,
                        prep.framing,
                        cfg.head_timeout,
                        &mut meter,
                    )
                    .await
                }
                .await
                .map_err(FilterError::Io),
                (Some(f), None) => {
                    inject::copy_filtered(
                        &prep.upstream_head,
                        &mut buf,
                        &mut client,
                        &mut up.stream,
                        prep.framing,
                        cfg.head_timeout,
                        &mut meter,
                        f,
                        body_out,
                    )
                    .await
                }
            };
            if meter.exhausted {
                break Err((429, "bytes-out limit reached while sending".into()));
            }
            let sent = match sent {
                Err(FilterError::Blocked(b)) => {
                    // The upstream has at most a partial request: it is
                    // dropped with this connection.
                    ev.bytes_out = bytes_out.load(Ordering::Relaxed);
                    exfil(&mut client, ctx, ev, &b, &host_s, start, true).await;
                    return;
                }
                Err(FilterError::Io(e)) => Err(e),
                Ok(n) => Ok(n),
            };
            if let Some(f) = &filter {
                injected.extend(f.injected.iter().cloned());
            }
            if let Err(e) = sent {
                if reused && attempt == 1 && (prep.framing == Framing::None || rendered.is_some()) {
                    upstream = None;
                    continue;
                }
                break Err((502, format!("sending the request upstream: {e}")));
            }
            // Responses are scrubbed of real values (headers always, the
            // body when this request carried one).
            let scrub = placeholders.as_deref().map(|p| (p, !injected.is_empty()));
            match read_response(
                &mut client,
                up,
                &prep,
                cfg.response_timeout,
                &bytes_in,
                scrub,
            )
            .await
            {
                Ok(r) => break Ok(r),
                Err(RespErr::ClosedEarly)
                    if reused
                        && attempt == 1
                        && (prep.framing == Framing::None || rendered.is_some()) =>
                {
                    upstream = None;
                    continue;
                }
                Err(RespErr::ClosedEarly) => {
                    break Err((502, "upstream closed without a response".into()))
                }
                Err(RespErr::Timeout) => {
                    break Err((504, "upstream did not answer in time".into()))
                }
                Err(RespErr::Bad(e)) => break Err((502, e)),
                Err(RespErr::ClientGone) => {
                    ev.bytes_in = bytes_in.load(Ordering::Relaxed);
                    ev.bytes_out = bytes_out.load(Ordering::Relaxed);
                    ev.error = Some("client went away".into());
                    ctx.emit(ev, start);
                    return;
                }
            }
        };
        ev.bytes_in = bytes_in.load(Ordering::Relaxed);
        ev.bytes_out = bytes_out.load(Ordering::Relaxed);
        if let Some(inj) = &s.secrets {
            for name in &injected {
                inj.used(name, &host_s);
            }
        }
        ev.secrets = injected.into_iter().collect();
        match outcome {
            Ok((status, up_keep, client_keep)) => {
                ev.status = Some(status);
                ctx.emit(ev, start);
                if !up_keep {
                    upstream = None;
                }
                if !client_keep || !prep.keep_alive {
                    let _ = client.shutdown().await;
                    return;
                }
            }
            Err((code, err)) => {
                let rule = if code == 429 {
                    rules::RATE_BYTES_OUT
                } else {
                    rules::UPSTREAM
                };
                if bytes_in.load(Ordering::Relaxed) == 0 {
                    let body = format!("brig egress: {err} (rule: {rule})\n");
                    send_answer(
                        &mut client,
                        &http::answer(code, &[("X-Brig-Rule", rule)], &body, true),
                    )
                    .await;
                }
                ev.status = Some(code);
                ev.error = Some(err);
                if code == 429 {
                    ev.decision = Verdict::Denied;
                    ev.rule = rule.to_string();
                }
                ctx.emit(ev, start);
                return;
            }
        }
    }
}

enum RespErr {
    ClosedEarly,
    Timeout,
    Bad(String),
    ClientGone,
}

/// Read the response (skipping 1xx after forwarding them) and forward it.
/// Returns (status, upstream reusable, client connection reusable).
async fn read_response<S>(
    client: &mut S,
    up: &mut Upstream,
    prep: &Prep,
    timeout: Duration,
    bytes_in: &AtomicU64,
    scrub: Option<(&inject::Placeholders, bool)>,
) -> Result<(u16, bool, bool), RespErr>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut got_any = false;
    loop {
        let n =
            match http::read_head(&mut up.stream, &mut up.buf, 64 * 1024, timeout, timeout).await {
                Ok(n) => n,
                Err(HeadError::Closed) if !got_any => {
                    return Err(if up.buf.is_empty() {
                        RespErr::ClosedEarly
                    } else {
                        RespErr::Timeout
                    })
                }
                Err(HeadError::Closed) | Err(HeadError::Timeout) => return Err(RespErr::Timeout),
                Err(HeadError::TooLarge) => {
                    return Err(RespErr::Bad("upstream response head too large".into()))
                }
                Err(HeadError::Io(e)) => {
                    return Err(if up.buf.is_empty() && !got_any {
                        RespErr::ClosedEarly
                    } else {
                        RespErr::Bad(format!("reading the response: {e}"))
                    })
                }
            };
        got_any = true;
        let mut hdrs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hdrs);
        match resp.parse(&up.buf[..n]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(RespErr::Bad("malformed upstream response".into())),
        }
        let status = resp.code.unwrap_or(0);
        let headers = &*resp.headers;
        if status == 101 {
            return Err(RespErr::Bad("upstream switched protocols".into()));
        }
        let framing = http::response_framing(&prep.method, status, headers)
            .map_err(|e| RespErr::Bad(format!("upstream framing: {e}")))?;
        let up_keep = resp.version == Some(1)
            && !http::has_token(headers, "connection", "close")
            && framing != Framing::Close;
        let interim = (100..200).contains(&status);
        // A body to scrub is re-framed (its length may change).
        let body_scrub = match scrub {
            Some((p, true)) if framing != Framing::None && !interim => Some((
                p,
                match framing {
                    Framing::Length(_) => OutFraming::Buffer,
                    _ if prep.http11 => OutFraming::Chunked,
                    _ => OutFraming::Close,
                },
            )),
            _ => None,
        };
        let client_keep = prep.keep_alive
            && framing != Framing::Close
            && !matches!(body_scrub, Some((_, OutFraming::Close)));
        let mut out = Vec::with_capacity(n + 32);
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in headers.iter() {
            if http::hop_by_hop(h.name) || http::listed_in_connection(headers, h.name) {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        if !client_keep && !interim {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if let Some((p, _)) = scrub {
            if let Some(o) = p.scrub(&out) {
                out = o;
            }
        }
        up.buf.drain(..n);
        if let Some((p, mode)) = body_scrub {
            let mut meter = InMeter(bytes_in);
            let mut f = BodyFilter::response(p);
            let r = inject::copy_filtered(
                &out,
                &mut up.buf,
                &mut up.stream,
                client,
                framing,
                timeout,
                &mut meter,
                &mut f,
                mode,
            )
            .await;
            return match r {
                Ok(_) => Ok((status, up_keep && up.buf.is_empty(), client_keep)),
                Err(FilterError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    Err(RespErr::Timeout)
                }
                Err(FilterError::Io(e)) => {
                    Err(RespErr::Bad(format!("copying the response body: {e}")))
                }
                Err(FilterError::Blocked(_)) => Err(RespErr::Bad("response body refused".into())),
            };
        }
        if client.write_all(&out).await.is_err() {
            return Err(RespErr::ClientGone);
        }
        bytes_in.fetch_add(out.len() as u64, Ordering::Relaxed);
        if interim {
            continue;
        }
        let mut meter = InMeter(bytes_in);
        match http::copy_body(
            &mut up.buf,
            &mut up.stream,
            client,
            framing,
            timeout,
            &mut meter,
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(RespErr::Timeout),
            Err(e) => return Err(RespErr::Bad(format!("copying the response body: {e}"))),
        }
        // Anything past the response is not ours to keep.
        let up_keep = up_keep && up.buf.is_empty();
        return Ok((status, up_keep, client_keep));
    }
}

/// Peek the ClientHello: read until it is complete (or not TLS), keeping
/// every byte in `buf` to forward later.
async fn peek_hello<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Option<Hello> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tls::parse_client_hello(buf) {
            Hello::Partial => {}
            h => return Some(h),
        }
        if buf.len() > tls::MAX_HELLO + 64 {
            return Some(Hello::NotTls);
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return None,
            Ok(Ok(_)) => {}
        }
    }
}

async fn connect_tunnel<S>(
    mut client: S,
    mut buf: Vec<u8>,
    ctx: &Ctx<'_>,
    prep: Prep,
    mut ev: EgressEvent,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = ctx.s;
    let (mut up, addr) = match dial_name(s, &prep.host, prep.port).await {
        Ok(x) => x,
        Err(DialFail::Denied(j)) => {
            deny(&mut client, ctx, ev, j, start, true).await;
            return;
        }
        Err(DialFail::Status(code, err)) => {
            let body = format!("brig egress: {err} (rule: {})\n", rules::UPSTREAM);
            send_answer(
                &mut client,
                &http::answer(code, &[("X-Brig-Rule", rules::UPSTREAM)], &body, true),
            )
            .await;
            ev.status = Some(code);
            ev.error = Some(err);
            ctx.emit(ev, start);
            return;
        }
    };
    ev.address = Some(addr);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    ev.status = Some(200);
    // A bound host's tunnel is TLS on any port: brig must see inside it.
    if s.config.tls_ports.contains(&prep.port) || intercepts(s, &prep.host) {
        // The tunnel is judged by the server name inside it too.
        let hello = peek_hello(&mut client, &mut buf, s.config.tls_peek_timeout).await;
        let host_s = prep.host.to_string();
        let verdict = match (&hello, &prep.host) {
            (Some(Hello::Sni(name)), _) => s
                .policy
                .check_same_host(&prep.host, prep.port, name, NameSource::Sni)
                .err()
                .map(|d| mismatch(d, &prep.host, prep.port)),
            (Some(_), Host::Ip(_)) => None, // an IP target has no name to check
            (_, _) => Some(no_sni(&host_s)),
        };
        if let Some(j) = verdict {
            ev.decision = j.verdict;
            ev.rule = j.rule;
            ev.explanation = j.expl;
            ev.bytes_out = buf.len() as u64;
            ev.error = Some("tunnel closed after the ClientHello".into());
            ctx.emit(ev, start);
            return;
        }
        if intercepts(s, &prep.host) {
            let pre = Some((up, addr));
            intercept(client, buf, ctx, prep.host, prep.port, pre, ev, start).await;
            return;
        }
    }
    splice_and_report(client, &mut up, buf, ctx, ev, start).await;
}

async fn splice_and_report<S>(
    client: S,
    up: &mut TcpStream,
    pre: Vec<u8>,
    ctx: &Ctx<'_>,
    mut ev: EgressEvent,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let r = splice(client, up, pre, ctx.s).await;
    ev.bytes_out = r.bytes_out;
    ev.bytes_in = r.bytes_in;
    if r.limited {
        ev.decision = Verdict::Denied;
        ev.rule = rules::RATE_BYTES_OUT.to_string();
        ev.error = Some("bytes-out limit reached: tunnel closed".into());
    } else if let Some(e) = r.error {
        ev.error = Some(e);
    }
    ctx.emit(ev, start);
}

struct SpliceResult {
    bytes_in: u64,
    bytes_out: u64,
    limited: bool,
    error: Option<String>,
}

/// Copy both ways until both sides are done (or one fails, or the tunnel
/// is idle for `tunnel_idle_timeout` in both directions, or the session's
/// bytes-out budget is spent).
async fn splice<S>(
    mut client: S,
    up: &mut TcpStream,
    pre: Vec<u8>,
    s: &SessionEgress,
) -> SpliceResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let out_n = AtomicU64::new(0);
    let in_n = AtomicU64::new(0);
    let mut om = OutMeter {
        s,
        count: &out_n,
        exhausted: false,
    };
    let mut im = InMeter(&in_n);
    let end = crate::tunnel::copy_both(
        &mut client,
        up,
        pre,
        &mut om,
        &mut im,
        s.config.tunnel_idle_timeout,
    )
    .await;
    let error = match end {
        crate::tunnel::End::Done => None,
        crate::tunnel::End::Limited => Some("bytes-out limit".to_string()),
        crate::tunnel::End::Idle => Some("tunnel idle".to_string()),
        crate::tunnel::End::Io(e) => Some(e.to_string()),
    };
    SpliceResult {
        bytes_in: in_n.load(Ordering::Relaxed),
        bytes_out: out_n.load(Ordering::Relaxed),
        limited: om.exhausted,
        error,
    }
}

/// The end of a transparent tunnel once judged: denied, it is closed;
/// else brig dials exactly `dst` and splices. Journaled either way.
async fn opaque_to<S>(
    client: S,
    buf: Vec<u8>,
    ctx: &Ctx<'_>,
    mut ev: EgressEvent,
    j: Judged,
    dst: SocketAddr,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let denied = j.denied();
    ev.decision = j.verdict;
    ev.rule = j.rule;
    ev.explanation = j.expl;
    if denied {
        ctx.emit(ev, start);
        return;
    }
    let mut up = match dial(ctx.s, dst).await {
        Ok(t) => t,
        Err((_, e)) => {
            ev.error = Some(e);
            ctx.emit(ev, start);
            return;
        }
    };
    ev.address = Some(dst);
    splice_and_report(client, &mut up, buf, ctx, ev, start).await;
}

/// Transparent TLS (port 443): the SNI names the destination.
async fn transparent_tls<S>(
    mut client: S,
    mut buf: Vec<u8>,
    ctx: &Ctx<'_>,
    dst: SocketAddr,
    start: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = ctx.s;
    if tunnel_limited(ctx, start) {
        return;
    }
    let mut ev = ctx.event(EventKind::Tunnel);
    let hello = peek_hello(&mut client, &mut buf, s.config.tls_peek_timeout).await;
    let name = match hello {
        Some(Hello::Sni(n)) => n,
        _ => {
            let j = no_sni(&dst.ip().to_string());
            ev.rule = j.rule;
            ev.explanation = j.expl;
            ev.error = Some("no server name".into());
            ctx.emit(ev, start);
            return;
        }
    };
    if let Some(b) = name_leak(s, &name) {
        ev.host = Some(name);
        let j = Judged::from_blocked(&b, "");
        ev.decision = j.verdict;
        ev.rule = j.rule;
        ev.explanation = j.expl;
        ev.error = Some(format!("exfiltration attempt: secret {}", b.secret));
        ctx.emit(ev, start);
        return;
    }
    let (host, d) = s.policy.decide_raw(&name, dst.port(), None, None);
    let shown = host
        .as_ref()
        .map(|h| h.to_string())
        .unwrap_or_else(|| name.clone());
    ev.host = Some(shown.clone());
    let mut j = guarded(
        s,
        Judged::from_decision(&d, &shown, dst.port(), None),
        &shown,
        dst.port(),
        None,
        None,
    );
    if !j.denied() {
        j = match &host {
            Some(Host::Domain(n)) if !s.resolver.answered(n, dst.ip()) => ip_mismatch(n, dst),
            Some(Host::Ip(ip)) if *ip != dst.ip() => ip_mismatch(&shown, dst),
            _ => match s.policy.ssrf().check_ip(dst.ip()) {
                Err(e) => {
                    Judged::from_decision(&s.policy.ssrf_decision(e), &shown, dst.port(), None)
                }
                Ok(_) => j,
            },
        };
    }
    if let Some(h) = host.filter(|h| !j.denied() && intercepts(s, h)) {
        ev.decision = j.verdict;
        ev.rule = j.rule;
        ev.explanation = j.expl;
        intercept(client, buf, ctx, h, dst.port(), None, ev, start).await;
        return;
    }
    opaque_to(client, buf, ctx, ev, j, dst, start).await;
}

/// Transparent TCP on other ports: judged by the names this session's
/// resolver answered the destination address for.
async fn transparent_tcp<S>(client: S, buf: Vec<u8>, ctx: &Ctx<'_>, dst: SocketAddr, start: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let s = ctx.s;
    if tunnel_limited(ctx, start) {
        return;
    }
    let mut ev = ctx.event(EventKind::Tunnel);
    let names = s.resolver.names_for(dst.ip());
    let mut chosen: Option<(String, Judged)> = None;
    for n in &names {
        let Ok(h) = Host::parse(n) else { continue };
        let j = judge(s, &h, dst.port(), None, None);
        let allowed = !j.denied();
        if chosen.is_none() || allowed {
            chosen = Some((n.clone(), j));
        }
        if allowed {
            break;
        }
    }
    let (name, mut j) = chosen.unwrap_or_else(|| {
        (
            dst.ip().to_string(),
            Judged::builtin(
                rules::TRANSPARENT_UNKNOWN_ADDRESS,
                format!(
                    "the connection was opened to {dst}, an address this session's resolver answered for no name"
                ),
                "connect by a host name resolved through the session's DNS resolver, to a port an egress rule allows".into(),
            ),
        )
    });
    if !j.denied() {
        if let Err(e) = s.policy.ssrf().check_ip(dst.ip()) {
            j = Judged::from_decision(&s.policy.ssrf_decision(e), &name, dst.port(), None);
        }
    }
    ev.host = Some(name);
    opaque_to(client, buf, ctx, ev, j, dst, start).await;
}
