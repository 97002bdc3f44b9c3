//! brig's artifact endpoint, served by the proxy itself (issue 4, "Upload
//! URLs"). A request on a session's proxy channel whose host is the
//! artifact host ([`DEFAULT_HOST`], or the sink's [`ArtifactSink::host`])
//! is never judged by the policy and never dialed: it is answered here,
//! and an upload (`PUT` or `POST /v1/upload/<token>`) is streamed to the
//! session's [`ArtifactSink`], which checks the token and keeps the bytes.
//!
//! The token is the sink's business (the proxy never parses it) and is
//! never put in an event: the logged path of an upload is
//! [`LOGGED_UPLOAD_PATH`].

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use brig_egress::Host;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::event::{EgressEvent, Verdict};
use crate::http::{self, Framing, Meter};
use crate::SessionEgress;

/// The artifact endpoint's host name when the sink names none: under a
/// TLD that is not delegated, so it can never be a real host.
pub const DEFAULT_HOST: &str = "artifacts.brig";
/// Where uploads go: `<prefix><token>`.
pub const UPLOAD_PREFIX: &str = "/v1/upload/";
/// What an upload's path is logged as (never the token).
pub const LOGGED_UPLOAD_PATH: &str = "/v1/upload/[token]";
/// The address the session's resolver answers for the artifact host, so a
/// program that ignores HTTP_PROXY is caught on port 80 and served here.
/// It is never dialed (TEST-NET-1: routed nowhere).
pub const ENDPOINT_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 80);

/// Rule names of the artifact endpoint's answers (they hold a `:`, which no
/// configured rule name can).
pub mod rules {
    /// An upload accepted.
    pub const UPLOAD: &str = "artifact:upload";
    /// A token that is not valid: malformed, a bad signature, another
    /// session's, expired.
    pub const TOKEN: &str = "artifact:token";
    /// A token already used (single use).
    pub const USED: &str = "artifact:used";
    /// Over the size cap.
    pub const SIZE: &str = "artifact:size";
    /// The session has no artifact endpoint, or the request is not an upload.
    pub const ENDPOINT: &str = "artifact:endpoint";
    /// Storing failed on brig's side.
    pub const STORE: &str = "artifact:store";
}

/// A boxed future (the sink's methods are async; no async-trait here).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an upload is refused: the HTTP status, the rule, a message for the
/// agent and the journal (never the token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub rule: String,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, rule: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            rule: rule.to_string(),
            message: message.into(),
        }
    }
}

/// What was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// One upload in progress: the body is written to it; then exactly one of
/// `finish` or `abort`. Dropping it without either must keep nothing.
pub trait ArtifactUpload: AsyncWrite + Send + Unpin {
    /// The most bytes this upload may have.
    fn max_size(&self) -> u64;
    /// The body is complete: keep it (and use the token up).
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Receipt, Refusal>>;
    /// The body did not arrive whole or was too large: keep nothing.
    fn abort(self: Box<Self>, why: Refusal) -> BoxFuture<'static, ()>;
}

/// A session's artifact endpoint (the control plane implements it).
pub trait ArtifactSink: Send + Sync + 'static {
    /// The endpoint's host name (normalized: lowercase, no trailing dot).
    fn host(&self) -> &str {
        DEFAULT_HOST
    }
    /// Check `token` for `session` (the channel's session, never anything
    /// the request says) and a declared body size; start the upload.
    fn begin<'a>(
        &'a self,
        session: &'a str,
        token: &'a str,
        content_length: Option<u64>,
    ) -> BoxFuture<'a, Result<Box<dyn ArtifactUpload>, Refusal>>;
}

/// Whether a request for `host` is for the session's artifact endpoint.
pub(crate) fn is_artifact_host(s: &SessionEgress, host: &Host) -> bool {
    let Host::Domain(d) = host else { return false };
    match &s.artifacts {
        Some(a) => d == a.host() || d == DEFAULT_HOST,
        None => d == DEFAULT_HOST,
    }
}

/// An artifact request's path as logged: an upload's never holds its token.
pub(crate) fn logged_path(path: &str) -> &str {
    if path.starts_with(UPLOAD_PREFIX) {
        LOGGED_UPLOAD_PATH
    } else {
        path
    }
}

/// The resolver's answer for the artifact host (A: [`ENDPOINT_V4`];
/// AAAA: no data), when the session has an endpoint; `None` for every
/// other name and type (the policy decides those).
pub(crate) fn dns_answer(
    s: &SessionEgress,
    q: &crate::dns_wire::Query,
    host: Option<&Host>,
    ev: &mut EgressEvent,
) -> Option<Vec<u8>> {
    use crate::dns_wire;
    if s.artifacts.is_none() || (q.qtype != dns_wire::A && q.qtype != dns_wire::AAAA) {
        return None;
    }
    if !is_artifact_host(s, host?) {
        return None;
    }
    Some(fixed_answer(q, ENDPOINT_V4, rules::ENDPOINT, ev))
}

/// brig's own answer for one of its reserved hosts: `ip` for A, no data
/// for AAAA, journaled under `rule`.
pub(crate) fn fixed_answer(
    q: &crate::dns_wire::Query,
    ip: std::net::Ipv4Addr,
    rule: &str,
    ev: &mut EgressEvent,
) -> Vec<u8> {
    use crate::dns_wire;
    let answers: Vec<(std::net::IpAddr, u32)> = if q.qtype == dns_wire::A {
        vec![(ip.into(), 60)]
    } else {
        Vec::new()
    };
    ev.decision = Verdict::Allowed;
    ev.rule = rule.to_string();
    ev.rcode = Some(dns_wire::rcode_name(dns_wire::NOERROR));
    ev.answers = answers.iter().map(|(ip, _)| *ip).collect();
    dns_wire::build_response(q, dns_wire::NOERROR, &answers, None)
}

/// The parts of a parsed request the endpoint needs.
pub(crate) struct Req<'a> {
    pub method: &'a str,
    /// The path without query (it holds the token: never logged).
    pub path: Option<&'a str>,
    pub framing: Framing,
    pub keep_alive: bool,
    pub connect: bool,
    /// The Host header names another host than the request's target.
    pub host_mismatch: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        _ => "Error",
    }
}

fn answer(status: u16, rule: &str, content_type: &str, body: &str, close: bool) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Brig-Rule: {rule}\r\n",
        reason(status),
        body.len()
    );
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

struct SizeMeter {
    max: u64,
    n: u64,
}

impl Meter for SizeMeter {
    fn copied(&mut self, n: usize) -> bool {
        self.n += n as u64;
        self.n <= self.max
    }
}

/// Serve one request for the artifact endpoint and report its event
/// (path, rule, decision, status, bytes) before any lingering close.
/// Returns whether the client connection may carry another request.
pub(crate) async fn serve<S>(
    client: &mut S,
    buf: &mut Vec<u8>,
    s: &SessionEgress,
    req: Req<'_>,
    mut ev: EgressEvent,
    start: Instant,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (keep, linger) = serve_inner(client, buf, s, req, &mut ev).await;
    ev.duration_us = start.elapsed().as_micros() as u64;
    s.events.event(ev);
    if linger {
        linger_close(client).await;
    }
    keep
}

/// (keep the connection, linger before closing it).
async fn serve_inner<S>(
    client: &mut S,
    buf: &mut Vec<u8>,
    s: &SessionEgress,
    req: Req<'_>,
    ev: &mut EgressEvent,
) -> (bool, bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let path = req.path.unwrap_or("");
    let token = path.strip_prefix(UPLOAD_PREFIX);
    ev.path = Some(logged_path(path))
        .filter(|p| !p.is_empty() && !req.connect)
        .map(str::to_string);
    let body_pending = req.framing != Framing::None;
    let refuse = |r: Refusal, ev: &mut EgressEvent| {
        ev.decision = Verdict::Denied;
        ev.rule = r.rule.clone();
        ev.status = Some(r.status);
        ev.error = Some(r.message.clone());
        ev.explanation = None;
        r
    };
    let send = |r: &Refusal, close: bool| {
        answer(
            r.status,
            &r.rule,
            "text/plain; charset=utf-8",
            &format!("brig artifacts: {} (rule: {})\n", r.message, r.rule),
            close,
        )
    };
    let early = if req.host_mismatch {
        Some(Refusal::new(
            403,
            brig_egress::rules::HOST_MISMATCH,
            "the Host header names another host than the request's target",
        ))
    } else if req.connect {
        Some(Refusal::new(
            403,
            rules::ENDPOINT,
            "brig's artifact endpoint is plain http:// and served by brig itself; upload with `curl -T FILE URL` to the URL `brig artifact url` printed",
        ))
    } else if s.artifacts.is_none() {
        Some(Refusal::new(
            404,
            rules::ENDPOINT,
            "this session has no artifact endpoint",
        ))
    } else if token.is_none() {
        Some(Refusal::new(
            404,
            rules::ENDPOINT,
            "not an upload URL; ask the session's owner for one (`brig artifact url --session ID NAME`)",
        ))
    } else if req.method != "PUT" && req.method != "POST" {
        Some(Refusal::new(
            405,
            rules::ENDPOINT,
            format!(
                "{} is not an upload; use PUT (curl -T FILE URL)",
                req.method
            ),
        ))
    } else {
        None
    };
    if let Some(r) = early {
        let r = refuse(r, ev);
        let keep = req.keep_alive && !body_pending && !req.connect;
        let _ = client.write_all(&send(&r, !keep)).await;
        return (keep, !keep);
    }
    let sink = s.artifacts.as_ref().expect("checked above");
    let token = token.expect("checked above");
    let declared = match req.framing {
        Framing::Length(n) => Some(n),
        Framing::None => Some(0),
        _ => None,
    };
    let mut upload = match sink.begin(&s.session, token, declared).await {
        Ok(u) => u,
        Err(r) => {
            let r = refuse(r, ev);
            let keep = req.keep_alive && !body_pending;
            let _ = client.write_all(&send(&r, !keep)).await;
            return (keep, !keep);
        }
    };
    // A client waiting for `100 Continue` (curl -T) gets it now; one that
    // is not may ignore it (RFC 9110 §15.2: clients parse unexpected 1xx).
    if body_pending && buf.is_empty() {
        let _ = client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
    }
    let mut meter = SizeMeter {
        max: upload.max_size(),
        n: 0,
    };
    let copied = http::copy_body(
        buf,
        client,
        &mut upload,
        req.framing,
        s.config.response_timeout,
        &mut meter,
    )
    .await;
    ev.bytes_out = meter.n;
    let copied = match copied {
        Ok(_) => upload
            .flush()
            .await
            .map_err(|e| Refusal::new(500, rules::STORE, format!("writing the artifact: {e}"))),
        Err(_) if meter.n > meter.max => Err(Refusal::new(
            413,
            rules::SIZE,
            format!(
                "the upload is larger than this endpoint's cap of {} bytes; nothing was kept",
                meter.max
            ),
        )),
        Err(e) => Err(Refusal::new(
            400,
            rules::ENDPOINT,
            format!("the body did not arrive whole ({e}); nothing was kept"),
        )),
    };
    if let Err(r) = copied {
        upload.abort(r.clone()).await;
        let r = refuse(r, ev);
        let _ = client.write_all(&send(&r, true)).await;
        return (false, true);
    }
    match upload.finish().await {
        Ok(rc) => {
            ev.decision = Verdict::Allowed;
            ev.rule = rules::UPLOAD.to_string();
            ev.status = Some(201);
            ev.explanation = None;
            let body = format!(
                "{{\"name\":{},\"size\":{},\"sha256\":\"{}\"}}\n",
                json_string(&rc.name),
                rc.size,
                rc.sha256
            );
            let _ = client
                .write_all(&answer(
                    201,
                    rules::UPLOAD,
                    "application/json",
                    &body,
                    !req.keep_alive,
                ))
                .await;
            (req.keep_alive, false)
        }
        Err(r) => {
            let r = refuse(r, ev);
            let _ = client.write_all(&send(&r, !req.keep_alive)).await;
            (req.keep_alive, false)
        }
    }
}

/// Close after an answer sent before the request's body was read: stop
/// writing, then read and discard what the client still sends (bounded),
/// so the answer is not lost to a reset.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S) {
    let _ = client.flush().await;
    let _ = client.shutdown().await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut sink = [0u8; 16 * 1024];
    let mut left: u64 = 64 << 20;
    while left > 0 {
        match tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
            _ => break,
        }
    }
}

/// A JSON string literal (names may hold any character but `/` and NUL).
fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    type Kept = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// A sink that accepts the token "good" (once) into memory.
    #[derive(Default)]
    struct MemSink {
        kept: Kept,
        used: Arc<Mutex<bool>>,
    }

    struct MemUpload {
        buf: Vec<u8>,
        kept: Kept,
        used: Arc<Mutex<bool>>,
    }

    impl AsyncWrite for MemUpload {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            b: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.buf.extend_from_slice(b);
            std::task::Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl ArtifactUpload for MemUpload {
        fn max_size(&self) -> u64 {
            8
        }
        fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Receipt, Refusal>> {
            Box::pin(async move {
                let mut used = self.used.lock().unwrap();
                if *used {
                    return Err(Refusal::new(409, rules::USED, "already used"));
                }
                *used = true;
                self.kept
                    .lock()
                    .unwrap()
                    .push(("a.txt".into(), self.buf.clone()));
                Ok(Receipt {
                    name: "a.txt".into(),
                    size: self.buf.len() as u64,
                    sha256: "00".into(),
                })
            })
        }
        fn abort(self: Box<Self>, _: Refusal) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    impl ArtifactSink for MemSink {
        fn begin<'a>(
            &'a self,
            session: &'a str,
            token: &'a str,
            len: Option<u64>,
        ) -> BoxFuture<'a, Result<Box<dyn ArtifactUpload>, Refusal>> {
            Box::pin(async move {
                assert_eq!(session, "s-test");
                if token != "good" {
                    return Err(Refusal::new(403, rules::TOKEN, "bad token"));
                }
                if len.is_some_and(|n| n > 8) {
                    return Err(Refusal::new(413, rules::SIZE, "too big"));
                }
                Ok(Box::new(MemUpload {
                    buf: Vec::new(),
                    kept: self.kept.clone(),
                    used: self.used.clone(),
                }) as Box<dyn ArtifactUpload>)
            })
        }
    }

    async fn start(sink: Option<Arc<MemSink>>) -> (std::net::SocketAddr, Arc<crate::MemoryEvents>) {
        let policy = brig_egress::Policy::compile(&Default::default()).unwrap();
        let events = Arc::new(crate::MemoryEvents::new());
        let mut s = SessionEgress::new(
            "s-test",
            Arc::new(policy),
            crate::SessionResolver::new(crate::ResolverConfig::default()),
            events.clone(),
        );
        if let Some(k) = sink {
            s = s.with_artifacts(k);
        }
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(crate::serve_tcp(l, s));
        (addr, events)
    }

    async fn roundtrip(addr: std::net::SocketAddr, req: &str) -> String {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn the_proxy_serves_uploads_itself_and_logs_no_token() {
        let sink = Arc::new(MemSink::default());
        let (addr, events) = start(Some(sink.clone())).await;
        let put = |tok: &str, body: &str, extra: &str| {
            format!(
                "PUT http://artifacts.brig/v1/upload/{tok} HTTP/1.1\r\nHost: artifacts.brig\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                body.len()
            )
        };
        // The head first: `100 Continue` once the token is accepted, then the body.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let full = put("good", "hello", "Expect: 100-continue\r\n");
        let (head, body) = full.split_at(full.len() - 5);
        c.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 25];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(body.as_bytes()).await.unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 201 Created"), "{r}");
        assert_eq!(sink.kept.lock().unwrap()[0].1, b"hello");
        // Used up; a bad token; too large (refused before the body).
        let r = roundtrip(addr, &put("good", "again", "")).await;
        assert!(r.starts_with("HTTP/1.1 409"), "{r}");
        let r = roundtrip(addr, &put("bad", "x", "")).await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("artifact:token"),
            "{r}"
        );
        let r = roundtrip(addr, &put("good", "123456789", "")).await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        // Chunked over the cap: 413 after reading past it.
        let r = roundtrip(
            addr,
            "PUT http://artifacts.brig/v1/upload/good HTTP/1.1\r\nHost: artifacts.brig\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        )
        .await;
        assert!(r.contains("HTTP/1.1 413"), "{r}");
        // Not an upload; a GET; a CONNECT; a Host that is not the URI's host.
        let r = roundtrip(addr, "GET http://artifacts.brig/ HTTP/1.1\r\nHost: artifacts.brig\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = roundtrip(addr, "GET http://artifacts.brig/v1/upload/good HTTP/1.1\r\nHost: artifacts.brig\r\nConnection: close\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = roundtrip(
            addr,
            "CONNECT artifacts.brig:443 HTTP/1.1\r\nHost: artifacts.brig:443\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("artifact:endpoint"),
            "{r}"
        );
        let r = roundtrip(addr, "PUT http://artifacts.brig/v1/upload/good HTTP/1.1\r\nHost: elsewhere.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("host-mismatch"),
            "{r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let evs = events.snapshot();
        assert!(evs.len() >= 8, "{evs:?}");
        for e in &evs {
            let p = e.path.clone().unwrap_or_default();
            assert!(
                !p.contains("good") && !p.contains("bad"),
                "token logged: {e:?}"
            );
        }
        assert!(evs
            .iter()
            .any(|e| e.rule == rules::UPLOAD && e.status == Some(201) && e.bytes_out == 5));
    }

    #[tokio::test]
    async fn without_a_sink_the_host_is_a_404_never_dialed() {
        let (addr, events) = start(None).await;
        let r = roundtrip(addr, "PUT http://artifacts.brig/v1/upload/t HTTP/1.1\r\nHost: artifacts.brig\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx").await;
        assert!(
            r.starts_with("HTTP/1.1 404") && r.contains("no artifact endpoint"),
            "{r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let evs = events.snapshot();
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0].address, None);
        assert_eq!(evs[0].path.as_deref(), Some(LOGGED_UPLOAD_PATH));
    }

    #[test]
    fn names_escape_in_json() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn rule_names_cannot_be_configured() {
        for r in [
            rules::UPLOAD,
            rules::TOKEN,
            rules::USED,
            rules::SIZE,
            rules::ENDPOINT,
            rules::STORE,
        ] {
            assert!(r.contains(':'), "{r}");
        }
    }
}
