//! Secrets at the edge (issue 6), end to end: a session whose secrets are
//! bound to HTTPS origins with their own test CA (trusted by brig through
//! `upstream_ca_file`), clients that trust brig's CA, and origins that
//! record exactly what they receive.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use brig_proxy::{
    CertAuthority, EventKind, Placeholders, ProxyConfig, Secret, SecretInjector, Verdict,
};
use common::*;
use openssl::ssl::{SslAcceptor, SslConnector, SslMethod};
use openssl::x509::X509;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio_openssl::SslStream;

const GH_PH: &str = "brig-ph-s1-GH_TOKEN-6f1c2a9be04d7731";
const GH_VAL: &str = "ghp_CanaryRealValue0123456789abcdefXYZ";
const FORM_PH: &str = "brig-ph-s1-CLIENT_SECRET-aa41c07d2e9f";
const FORM_VAL: &str = "cs-CanaryFormSecret-77e2b1d0c9";
const B_PH: &str = "brig-ph-s1-B_KEY-0b9d8e7f6a5c4b3a";
const B_VAL: &str = "bkey-CanaryOtherValue-5566778899";
const ALL: [&str; 6] = [GH_PH, GH_VAL, FORM_PH, FORM_VAL, B_PH, B_VAL];

/// Records every byte read and written (the raw TCP, under TLS).
struct Tap<S> {
    inner: S,
    read: Arc<Mutex<Vec<u8>>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            let new = buf.filled()[before..].to_vec();
            self.read.lock().unwrap().extend_from_slice(&new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.lock().unwrap().extend_from_slice(&buf[..*n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What an origin received: each request's head and decoded body.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTPS origin: records each request (head, decoded body) and the raw
/// TCP bytes; answers with the request's Authorization echoed in a header
/// and the whole request echoed in the body (what httpbin does).
struct TlsOrigin {
    addr: SocketAddr,
    reqs: Requests,
    raw_in: Arc<Mutex<Vec<u8>>>,
    raw_out: Arc<Mutex<Vec<u8>>>,
}

async fn tls_origin(acceptor: Arc<SslAcceptor>) -> TlsOrigin {
    let l = bind_unique(443).await;
    let addr = l.local_addr().unwrap();
    let reqs = Arc::new(Mutex::new(Vec::new()));
    let raw_in = Arc::new(Mutex::new(Vec::new()));
    let raw_out = Arc::new(Mutex::new(Vec::new()));
    let (r2, i2, o2) = (reqs.clone(), raw_in.clone(), raw_out.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let tap = Tap {
                inner: tcp,
                read: i2.clone(),
                written: o2.clone(),
            };
            let (acc, reqs) = (acceptor.clone(), r2.clone());
            tokio::spawn(async move {
                let ssl = openssl::ssl::Ssl::new(acc.context()).unwrap();
                let mut s = SslStream::new(ssl, tap).unwrap();
                if Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                serve_echo(s, reqs).await;
            });
        }
    });
    TlsOrigin {
        addr,
        reqs,
        raw_in,
        raw_out,
    }
}

async fn serve_echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, reqs: Requests) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut tmp = [0u8; 4096];
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if lower.contains("transfer-encoding: chunked") {
            let mut c = brig_proxy::http::Chunked::default();
            loop {
                if let Some(n) = c.feed_data(&buf, &mut body).unwrap() {
                    buf.drain(..n);
                    break;
                }
                buf.clear();
                let mut tmp = [0u8; 4096];
                match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
        } else {
            let cl: usize = lower
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < cl {
                let mut tmp = [0u8; 4096];
                match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            body = buf.drain(..cl).collect();
        }
        let auth = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("authorization")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        reqs.lock().unwrap().push((head.clone(), body.clone()));
        let mut echo = head.into_bytes();
        echo.extend_from_slice(&body);
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nX-Echo-Auth: {auth}\r\nContent-Length: {}\r\n\r\n",
            echo.len()
        )
        .into_bytes();
        resp.extend_from_slice(&echo);
        if s.write_all(&resp).await.is_err() {
            return;
        }
    }
}

const POLICY: &str = r#"
[[allow]]
name = "bound"
domains = ["api.bound.test", "b.bound.test", "untrusted.bound.test"]

[[allow]]
name = "others"
domains = ["other.test", "plain.test"]

[ssrf]
trusted_cidrs = ["127.0.0.0/8"]
"#;

struct World {
    s: Session,
    ca: Arc<CertAuthority>,
    origin_ca: CertAuthority,
    api: TlsOrigin,
    b: TlsOrigin,
    other: TlsOrigin,
    untrusted: TlsOrigin,
    plain: Origin,
    _ca_dir: tempfile::TempDir,
}

fn secrets() -> Placeholders {
    let s = |name: &str, ph: &str, v: &str, host: &str, body: bool, auth: Option<&str>| Secret {
        name: name.into(),
        placeholder: ph.into(),
        value: v.into(),
        hosts: vec![host.into()],
        body,
        authorization: auth.map(str::to_string),
        override_authorization: false,
    };
    Placeholders::new(vec![
        s(
            "GH_TOKEN",
            GH_PH,
            GH_VAL,
            "api.bound.test",
            false,
            Some("Bearer "),
        ),
        s(
            "CLIENT_SECRET",
            FORM_PH,
            FORM_VAL,
            "api.bound.test",
            true,
            None,
        ),
        s("B_KEY", B_PH, B_VAL, "*.bound.test", false, None),
    ])
    .unwrap()
}

async fn world(with_ca: bool) -> World {
    let origin_ca = CertAuthority::generate("origin test CA").unwrap();
    let rogue = CertAuthority::generate("rogue CA").unwrap();
    let api = tls_origin(origin_ca.acceptor_for("api.bound.test").unwrap()).await;
    let b = tls_origin(origin_ca.acceptor_for("b.bound.test").unwrap()).await;
    let other = tls_origin(origin_ca.acceptor_for("other.test").unwrap()).await;
    let untrusted = tls_origin(rogue.acceptor_for("untrusted.bound.test").unwrap()).await;
    let plain = http_origin(80).await;
    let map = vec![
        ("api.bound.test", api.addr.ip()),
        ("b.bound.test", b.addr.ip()),
        ("other.test", other.addr.ip()),
        ("untrusted.bound.test", untrusted.addr.ip()),
        ("plain.test", plain.addr.ip()),
    ];
    let dns = test_dns(fixed(map)).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file: PathBuf = ca_dir.path().join("origin-ca.pem");
    std::fs::write(&ca_file, origin_ca.cert_pem()).unwrap();
    let ca = Arc::new(CertAuthority::generate("brig test deployment CA").unwrap());
    let mut s = session(
        "s1",
        Opts {
            policy: POLICY,
            dns: Some(dns.addr),
            config: ProxyConfig {
                upstream_ca_file: Some(ca_file),
                ..ProxyConfig::default()
            },
            ..Opts::default()
        },
    )
    .await;
    // The session's egress with secrets: served on a second socket.
    let mut e = s.egress.clone().with_secrets(Arc::new(Arc::new(secrets())));
    if with_ca {
        e = e.with_ca(ca.clone());
    }
    let path = s.dir.path().join("egress-secrets.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(brig_proxy::serve_unix(l, e.clone()));
    s.proxy = path;
    let dns_path = s.dir.path().join("dns-secrets.sock");
    let l = tokio::net::UnixListener::bind(&dns_path).unwrap();
    tokio::spawn(brig_proxy::serve_dns_unix(l, e));
    s.dns = dns_path;
    World {
        s,
        ca,
        origin_ca,
        api,
        b,
        other,
        untrusted,
        plain,
        _ca_dir: ca_dir,
    }
}

/// TLS over `stream` to `host`, trusting exactly `roots`.
async fn tls_to<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    roots: &[&X509],
) -> Result<SslStream<S>, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    let store = openssl::x509::store::X509StoreBuilder::new().unwrap();
    b.set_cert_store(store.build());
    for r in roots {
        b.cert_store_mut().add_cert((*r).clone()).unwrap();
    }
    b.set_alpn_protos(b"\x02h2\x08http/1.1").unwrap();
    let ssl = b.build().configure().unwrap().into_ssl(host).unwrap();
    let mut s = SslStream::new(ssl, stream).unwrap();
    Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(s)
}

impl World {
    /// CONNECT host:443 and TLS inside, trusting brig's CA.
    async fn https(&self, host: &str) -> SslStream<UnixStream> {
        let mut c = self.s.explicit().await;
        let r = roundtrip(
            &mut c,
            &format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        tls_to(c, host, &[self.ca.cert()]).await.unwrap()
    }

    /// Every event, serialized, holds no value and no placeholder.
    fn assert_events_clean(&self) {
        // Case-folded: host names reach events in lower case.
        let json = serde_json::to_string(&self.s.events())
            .unwrap()
            .to_ascii_lowercase();
        for v in ALL {
            assert!(
                !json.contains(&v.to_ascii_lowercase()),
                "an event holds a secret or placeholder: {json}"
            );
        }
    }
}

#[tokio::test]
async fn bearer_placeholder_reaches_the_bound_origin_as_the_value_and_never_comes_back() {
    let w = world(true).await;
    let mut c = w.https("api.bound.test").await;
    assert_eq!(c.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    // brig's leaf, for this host.
    let leaf = c.ssl().peer_certificate().unwrap();
    assert_eq!(
        leaf.issuer_name()
            .entries()
            .next()
            .unwrap()
            .data()
            .as_slice(),
        b"brig test deployment CA"
    );
    for i in 0..2 {
        let r = roundtrip(
            &mut c,
            &format!("GET /user?n={i} HTTP/1.1\r\nHost: api.bound.test\r\nAuthorization: Bearer {GH_PH}\r\n\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        // The origin echoed the real value in a header and the body: the
        // sandbox reads the placeholder back.
        assert_eq!(r.header("x-echo-auth"), Some(format!("Bearer {GH_PH}")));
        assert!(r.body.contains(&format!("Bearer {GH_PH}")), "{}", r.body);
        assert!(!r.head.contains(GH_VAL) && !r.body.contains(GH_VAL));
    }
    let reqs = w.api.reqs.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    for (head, _) in &reqs {
        assert!(
            head.contains(&format!("Authorization: Bearer {GH_VAL}\r\n")),
            "{head}"
        );
        assert!(!head.contains(GH_PH), "{head}");
    }
    drop(c);
    let ev = w.s.wait_events(3).await;
    let http: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::Http).collect();
    assert_eq!(http.len(), 2);
    for e in &http {
        assert!(e.intercepted && e.decision == Verdict::Allowed, "{e:?}");
        assert_eq!(e.secrets, ["GH_TOKEN"]);
        assert_eq!(e.host.as_deref(), Some("api.bound.test"));
        assert_eq!(e.path.as_deref(), Some("/user"));
    }
    let tunnel = ev.iter().find(|e| e.kind == EventKind::Tunnel).unwrap();
    assert!(tunnel.intercepted);
    w.assert_events_clean();
}

#[tokio::test]
async fn authorization_is_set_when_absent_and_a_users_own_is_left_alone() {
    let w = world(true).await;
    let mut c = w.https("api.bound.test").await;
    let r = roundtrip(&mut c, "GET /a HTTP/1.1\r\nHost: api.bound.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.header("x-echo-auth"), Some(format!("Bearer {GH_PH}")));
    let r = roundtrip(
        &mut c,
        "GET /b HTTP/1.1\r\nHost: api.bound.test\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let reqs = w.api.reqs.lock().unwrap().clone();
    assert!(
        reqs[0]
            .0
            .contains(&format!("Authorization: Bearer {GH_VAL}\r\n")),
        "{}",
        reqs[0].0
    );
    assert!(
        reqs[1].0.contains("Authorization: Basic dXNlcjpwYXNz\r\n"),
        "{}",
        reqs[1].0
    );
    assert!(!reqs[1].0.contains(GH_VAL), "{}", reqs[1].0);
    drop(c);
    let ev = w.s.wait_events(3).await;
    let http: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::Http).collect();
    assert_eq!(http[0].secrets, ["GH_TOKEN"]);
    assert!(http[1].secrets.is_empty());
    w.assert_events_clean();
}

#[tokio::test]
async fn body_injection_only_where_the_binding_allows_it_across_chunks() {
    let w = world(true).await;
    let mut c = w.https("api.bound.test").await;
    // Content-Length: CLIENT_SECRET (body allowed) is injected, GH_TOKEN
    // (headers only) stays a placeholder; the length is recomputed.
    let body = format!("client_secret={FORM_PH}&note={GH_PH}");
    let r = roundtrip(
        &mut c,
        &format!(
            "POST /token HTTP/1.1\r\nHost: api.bound.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // The echo comes back with placeholders only.
    assert!(
        r.body
            .contains(&format!("client_secret={FORM_PH}&note={GH_PH}")),
        "{}",
        r.body
    );
    assert!(!r.body.contains(FORM_VAL));
    // Chunked, the placeholder split across two chunks sent apart.
    let (a, b) = FORM_PH.split_at(11);
    c.write_all(
        format!(
            "POST /chunked HTTP/1.1\r\nHost: api.bound.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\nx={a}\r\n",
            a.len() + 2
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.write_all(format!("{:x}\r\n{b}&y=1\r\n0\r\n\r\n", b.len() + 4).as_bytes())
        .await
        .unwrap();
    let r = read_resp(&mut c).await.unwrap();
    assert_eq!(r.status, 200);
    let reqs = w.api.reqs.lock().unwrap().clone();
    let (h0, b0) = &reqs[0];
    let want = format!("client_secret={FORM_VAL}&note={GH_PH}");
    assert_eq!(String::from_utf8_lossy(b0), want);
    assert!(
        h0.contains(&format!("Content-Length: {}\r\n", want.len())),
        "{h0}"
    );
    let (h1, b1) = &reqs[1];
    assert_eq!(String::from_utf8_lossy(b1), format!("x={FORM_VAL}&y=1"));
    assert!(
        h1.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{h1}"
    );
    drop(c);
    let ev = w.s.wait_events(3).await;
    let http: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::Http).collect();
    // GH_TOKEN also went in: Authorization was absent, the binding sets it.
    assert_eq!(http[0].secrets, ["CLIENT_SECRET", "GH_TOKEN"]);
    w.assert_events_clean();
}

#[tokio::test]
async fn a_placeholder_to_another_host_is_blocked_and_journaled() {
    let w = world(true).await;
    // An intercepted host bound to other secrets (b.bound.test has B_KEY).
    let mut c = w.https("b.bound.test").await;
    let r = roundtrip(
        &mut c,
        &format!("GET /x HTTP/1.1\r\nHost: b.bound.test\r\nX-Api-Key: {GH_PH}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.head);
    assert_eq!(
        r.header("x-brig-rule").as_deref(),
        Some("secret:placeholder-exfil")
    );
    assert!(
        r.body.contains("GH_TOKEN") && r.body.contains("X-Api-Key"),
        "{}",
        r.body
    );
    assert!(r.body.contains("api.bound.test"), "{}", r.body);
    assert!(!r.body.contains(GH_PH) && !r.body.contains(GH_VAL));
    // The connection goes on; B_KEY is injected there.
    let r = roundtrip(
        &mut c,
        &format!("GET /y HTTP/1.1\r\nHost: b.bound.test\r\nX-Api-Key: {B_PH}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let reqs = w.b.reqs.lock().unwrap().clone();
    assert_eq!(
        reqs.len(),
        1,
        "the blocked request never reached the origin"
    );
    assert!(reqs[0].0.contains(&format!("X-Api-Key: {B_VAL}")));
    drop(c);
    // Plain HTTP: in the query, in the body.
    let r =
        w.s.ask(&format!(
            "GET http://plain.test/q?t={GH_PH} HTTP/1.1\r\nHost: plain.test\r\n\r\n"
        ))
        .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("secret:placeholder-exfil"))
    );
    assert!(r.body.contains("the request line"), "{}", r.body);
    let body = format!("{{\"k\":\"{FORM_PH}\"}}");
    let r = w
        .s
        .ask(&format!(
            "POST http://plain.test/up HTTP/1.1\r\nHost: plain.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("CLIENT_SECRET") && r.body.contains("the body"),
        "{}",
        r.body
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        w.plain.heads.lock().unwrap().is_empty(),
        "nothing reached the plain origin"
    );
    assert_eq!(
        w.plain
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let ev = w.s.events();
    let blocked: Vec<_> = ev
        .iter()
        .filter(|e| e.rule == "secret:placeholder-exfil")
        .collect();
    assert_eq!(blocked.len(), 3, "{ev:?}");
    for e in blocked {
        assert_eq!((e.decision, e.status), (Verdict::Denied, Some(403)));
        assert!(e.error.as_deref().unwrap().contains("exfiltration attempt"));
        assert!(e.explanation.is_some());
    }
    w.assert_events_clean();
}

#[tokio::test]
async fn a_real_value_in_a_body_to_a_non_injecting_host_is_blocked() {
    let w = world(true).await;
    for body in [
        format!("leak={GH_VAL}"),
        format!("leak={}", base64_std(GH_VAL.as_bytes())),
        format!("leak={}", hex_lower(GH_VAL.as_bytes())),
    ] {
        let r = w
            .s
            .ask(&format!(
                "POST http://plain.test/up HTTP/1.1\r\nHost: plain.test\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ))
            .await;
        assert_eq!(r.status, 403, "{body}");
        assert_eq!(
            r.header("x-brig-rule").as_deref(),
            Some("secret:value-exfil")
        );
        assert!(r.body.contains("GH_TOKEN"), "{}", r.body);
    }
    // A body without secrets goes through.
    let r = w
        .s
        .ask("POST http://plain.test/ok HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(w.plain.heads.lock().unwrap().len(), 1);
    // A client waiting for `100 Continue` gets it from brig, which reads
    // the body before going upstream (no Expect is forwarded).
    let mut c = w.s.explicit().await;
    let r = roundtrip(
        &mut c,
        "POST http://plain.test/e HTTP/1.1\r\nHost: plain.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 100);
    let r = roundtrip(&mut c, "hello").await.unwrap();
    assert_eq!(r.status, 200);
    let heads = w.plain.heads.lock().unwrap().clone();
    assert!(
        !heads[1].to_ascii_lowercase().contains("expect"),
        "{}",
        heads[1]
    );
    w.assert_events_clean();
}

fn base64_std(v: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in v.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn hex_lower(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_host_not_bound_passes_through_untouched() {
    let w = world(true).await;
    let mut c = w.s.explicit().await;
    let r = roundtrip(
        &mut c,
        "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let client_out = Arc::new(Mutex::new(Vec::new()));
    let client_in = Arc::new(Mutex::new(Vec::new()));
    let tap = Tap {
        inner: c,
        read: client_in.clone(),
        written: client_out.clone(),
    };
    // The client trusts the origin's CA only: the handshake succeeding
    // shows no brig certificate is involved.
    let mut t = tls_to(tap, "other.test", &[w.origin_ca.cert()])
        .await
        .unwrap();
    let leaf = t.ssl().peer_certificate().unwrap();
    assert_eq!(
        leaf.issuer_name()
            .entries()
            .next()
            .unwrap()
            .data()
            .as_slice(),
        b"origin test CA"
    );
    let r = roundtrip(
        &mut t,
        &format!("GET / HTTP/1.1\r\nHost: other.test\r\nX-Not-Checked: {GH_PH}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    t.shutdown().await.ok();
    drop(t);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Byte for byte, both ways.
    assert_eq!(*w.other.raw_in.lock().unwrap(), *client_out.lock().unwrap());
    assert_eq!(*w.other.raw_out.lock().unwrap(), *client_in.lock().unwrap());
    // Opaque: the placeholder inside went unseen (the documented limit).
    assert_eq!(w.other.reqs.lock().unwrap().len(), 1);
    let ev = w.s.wait_events(1).await;
    assert!(
        !ev[0].intercepted && ev[0].kind == EventKind::Tunnel,
        "{ev:?}"
    );
    // brig minted no leaf at all.
    assert_eq!(w.ca.cached_leaves(), 0);
}

#[tokio::test]
async fn an_untrusted_upstream_fails_closed() {
    let w = world(true).await;
    let mut c = w.https("untrusted.bound.test").await;
    let r = roundtrip(
        &mut c,
        &format!("GET / HTTP/1.1\r\nHost: untrusted.bound.test\r\nX-K: {B_PH}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(r.header("x-brig-rule").as_deref(), Some("upstream"));
    assert!(
        r.body.contains("not trusted") && r.body.contains("does not fall back"),
        "{}",
        r.body
    );
    assert!(w.untrusted.reqs.lock().unwrap().is_empty());
    // The origin saw a handshake (a ClientHello), never the request.
    assert!(find(&w.untrusted.raw_in.lock().unwrap(), B_VAL.as_bytes()).is_none());
    let ev = w.s.wait_events(1).await;
    let e = ev.iter().find(|e| e.kind == EventKind::Http).unwrap();
    assert_eq!(e.status, Some(502));
    assert!(e.error.as_deref().unwrap().contains("not trusted"));
    w.assert_events_clean();
}

#[tokio::test]
async fn a_bound_host_without_a_ca_is_refused_and_a_client_not_trusting_brig_fails() {
    let w = world(false).await;
    let mut c = w.s.explicit().await;
    let r = roundtrip(&mut c, "CONNECT api.bound.test:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(tls_to(c, "api.bound.test", &[w.origin_ca.cert()])
        .await
        .is_err());
    let ev = w.s.wait_events(1).await;
    assert_eq!(ev[0].rule, "secret:no-ca");
    assert_eq!(ev[0].decision, Verdict::Denied);
    assert!(
        w.api.raw_in.lock().unwrap().is_empty(),
        "no byte reached the origin"
    );

    // With a CA, a client that does not trust it cannot be fooled into
    // anything: its handshake fails, and the event says why.
    let w = world(true).await;
    let mut c = w.s.explicit().await;
    roundtrip(&mut c, "CONNECT api.bound.test:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(tls_to(c, "api.bound.test", &[w.origin_ca.cert()])
        .await
        .is_err());
    let ev = w.s.wait_events(1).await;
    assert!(
        ev[0].error.as_deref().unwrap().contains("trust brig's CA"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn transparent_tls_to_a_bound_host_is_intercepted() {
    let w = world(true).await;
    // The sandbox resolves through its resolver, then connects directly.
    let _ =
        w.s.dns_query("api.bound.test", brig_proxy::dns_wire::A)
            .await;
    let c = w.s.open(w.api.addr).await;
    let mut t = tls_to(c, "api.bound.test", &[w.ca.cert()]).await.unwrap();
    let r = roundtrip(
        &mut t,
        &format!(
            "GET /t HTTP/1.1\r\nHost: api.bound.test\r\nAuthorization: Bearer {GH_PH}\r\n\r\n"
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(w.api.reqs.lock().unwrap()[0].0.contains(GH_VAL));
    // Another host's name inside is domain fronting.
    let r = roundtrip(&mut t, "GET /t HTTP/1.1\r\nHost: b.bound.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-brig-rule").as_deref(), Some("host-mismatch"));
    w.assert_events_clean();
}

/// The injector trait: a custom one decides interception and sees uses.
#[tokio::test]
async fn a_custom_injector_sees_every_use() {
    struct Counting(Arc<Placeholders>, Mutex<Vec<(String, String)>>);
    impl SecretInjector for Counting {
        fn placeholders(&self) -> Arc<Placeholders> {
            self.0.clone()
        }
        fn used(&self, name: &str, host: &str) {
            self.1.lock().unwrap().push((name.into(), host.into()));
        }
    }
    let w = world(true).await;
    let inj = Arc::new(Counting(Arc::new(secrets()), Mutex::new(Vec::new())));
    let e =
        w.s.egress
            .clone()
            .with_secrets(inj.clone())
            .with_ca(w.ca.clone());
    let path = w.s.dir.path().join("custom.sock");
    tokio::spawn(brig_proxy::serve_unix(
        tokio::net::UnixListener::bind(&path).unwrap(),
        e,
    ));
    let mut c = UnixStream::connect(&path).await.unwrap();
    c.write_all(
        brig_proxy::proxy_proto::format_v1(
            "10.0.0.2:1".parse().unwrap(),
            "127.0.0.1:3128".parse().unwrap(),
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    roundtrip(&mut c, "CONNECT api.bound.test:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut t = tls_to(c, "api.bound.test", &[w.ca.cert()]).await.unwrap();
    let r = roundtrip(
        &mut t,
        &format!("GET / HTTP/1.1\r\nHost: api.bound.test\r\nAuthorization: Bearer {GH_PH}\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        *inj.1.lock().unwrap(),
        [("GH_TOKEN".to_string(), "api.bound.test".to_string())]
    );
}

#[tokio::test]
async fn placeholders_in_names_and_paths_never_reach_the_journal() {
    let w = world(true).await;
    // A placeholder in a path to its bound host: injected, and the event's
    // path names the secret instead.
    let mut c = w.https("api.bound.test").await;
    let r = roundtrip(
        &mut c,
        &format!("GET /p/{GH_PH} HTTP/1.1\r\nHost: api.bound.test\r\n\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(w.api.reqs.lock().unwrap()[0]
        .0
        .starts_with(&format!("GET /p/{GH_VAL} ")));
    drop(c);
    let ev = w.s.wait_events(2).await;
    let e = ev.iter().find(|e| e.kind == EventKind::Http).unwrap();
    assert_eq!(e.path.as_deref(), Some("/p/[secret:GH_TOKEN]"));
    // In a host name: a DNS query, a CONNECT target, an SNI.
    let name = format!("{}.other.test", GH_PH.to_ascii_lowercase());
    let a = w.s.dns_query(&name, brig_proxy::dns_wire::A).await;
    assert_eq!(a[3] & 0x0f, brig_proxy::dns_wire::REFUSED);
    let r =
        w.s.ask(&format!("CONNECT {name}:443 HTTP/1.1\r\n\r\n"))
            .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-brig-rule").as_deref(),
        Some("secret:placeholder-exfil")
    );
    assert!(r.body.contains("part of a host name"), "{}", r.body);
    let c = w.s.open(w.other.addr).await;
    assert!(tls_to(c, &name, &[w.ca.cert()]).await.is_err());
    let ev = w.s.wait_events(5).await;
    let blocked = ev
        .iter()
        .filter(|e| e.rule == "secret:placeholder-exfil")
        .count();
    assert_eq!(blocked, 3, "{ev:?}");
    w.assert_events_clean();
}

/// Bodies over the 1 MiB buffer stream through the matcher.
#[tokio::test]
async fn large_bodies_stream_and_are_checked_to_their_end() {
    let w = world(true).await;
    let big = 2 << 20;
    let body_with = |needle: &str, at: usize| {
        let mut b = vec![b'a'; big];
        b[at..at + needle.len()].copy_from_slice(needle.as_bytes());
        b
    };
    // To a plain host: a value 1.5 MiB in is blocked; the origin never
    // gets a complete request.
    for (body, status) in [
        (body_with(GH_VAL, (3 << 20) / 2), 403),
        (body_with("clean", 100), 200),
    ] {
        let c = w.s.explicit().await;
        let (mut rd, mut wr) = c.into_split();
        let head = format!(
            "POST http://plain.test/big HTTP/1.1\r\nHost: plain.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&body).await;
            wr
        });
        let r = read_resp(&mut rd).await.unwrap();
        assert_eq!(r.status, status, "{}", r.body);
        if status == 403 {
            assert_eq!(
                r.header("x-brig-rule").as_deref(),
                Some("secret:value-exfil")
            );
        }
        drop(writer.await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let heads = w.plain.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "only the clean body arrived whole");
    assert!(
        heads[0].contains(&format!("Content-Length: {big}\r\n")),
        "{}",
        heads[0]
    );

    // To the bound host with body injection: re-chunked, the placeholder
    // across a 16 KiB read boundary replaced.
    let mut c = w.https("api.bound.test").await;
    let body = body_with(FORM_PH, 16 * 1024 - 7);
    c.write_all(
        format!(
            "POST /big HTTP/1.1\r\nHost: api.bound.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    c.write_all(&body).await.unwrap();
    let r = read_resp(&mut c).await.unwrap();
    assert_eq!(r.status, 200);
    let reqs = w.api.reqs.lock().unwrap().clone();
    let (h, b) = &reqs[0];
    assert!(
        h.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{h}"
    );
    assert_eq!(b.len(), big - FORM_PH.len() + FORM_VAL.len());
    assert_eq!(
        &b[16 * 1024 - 7..16 * 1024 - 7 + FORM_VAL.len()],
        FORM_VAL.as_bytes()
    );
    assert!(find(b, FORM_PH.as_bytes()).is_none());
    w.assert_events_clean();
}
