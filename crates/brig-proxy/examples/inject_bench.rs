//! Secret injection benchmark (docs/BENCHMARKS.md, "Secret injection
//! (issue 6)"): the latency brig adds to an HTTPS request it intercepts
//! and injects a secret into, against one it passes through (splices), in
//! one run, interleaved, on loopback.
//!
//! ```text
//! cargo run --release -p brig-proxy --example inject_bench [-- --n 2000]
//! ```
//!
//! Two HTTPS origins (their own test CA, same code) answer a small
//! keep-alive response. brig serves explicit-proxy mode on TCP in this
//! process; `bound.bench` has a secret bound to it (intercepted, the
//! placeholder in `Authorization` replaced), `plain.bench` does not
//! (spliced). Measured, alternating one intercepted and one passed-through
//! sample:
//!
//! - cold: CONNECT, TLS handshake, one GET, close (what a CLI tool pays);
//! - warm: one GET on an open keep-alive connection (what a client with a
//!   connection pool pays).

use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_egress::Policy;
use brig_proxy::*;
use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslMethod};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

const PH: &str = "brig-ph-bench-TOKEN-0123456789abcdef";
const VAL: &str = "ghp_BenchRealValue_abcdefghijklmnopqrstuvwx";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

/// `bound`: answer 500 to a request that still carries the placeholder.
async fn origin(acceptor: Arc<SslAcceptor>, bound: bool) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acc = acceptor.clone();
            tokio::spawn(async move {
                let mut s = SslStream::new(Ssl::new(acc.context()).unwrap(), tcp).unwrap();
                if std::pin::Pin::new(&mut s).accept().await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                loop {
                    let mut tmp = [0u8; 4096];
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&tmp[..k]),
                    }
                    while let Some(p) = find(&buf, b"\r\n\r\n") {
                        // The bound origin checks it got the real value.
                        let head = &buf[..p];
                        let status = if bound && find(head, PH.as_bytes()).is_some() {
                            "500 placeholder"
                        } else {
                            "200 OK"
                        };
                        buf.drain(..p + 4);
                        let r = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                        if s.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    memchr::memmem::find(h, n)
}

async fn read_resp<S: AsyncReadExt + Unpin>(s: &mut S) -> u16 {
    let mut buf = Vec::new();
    loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_string();
            let cl: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < p + 4 + cl {
                let mut tmp = [0u8; 4096];
                let k = s.read(&mut tmp).await.unwrap();
                assert!(k > 0, "closed mid-response");
                buf.extend_from_slice(&tmp[..k]);
            }
            return head.split(' ').nth(1).unwrap().parse().unwrap();
        }
        let mut tmp = [0u8; 4096];
        let k = s.read(&mut tmp).await.unwrap();
        assert!(k > 0, "closed before a response");
        buf.extend_from_slice(&tmp[..k]);
    }
}

async fn open(proxy: u16, host: &str, port: u16, tls: &SslConnector) -> SslStream<TcpStream> {
    let mut c = TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    c.set_nodelay(true).unwrap();
    c.write_all(
        format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_resp(&mut c).await, 200);
    let ssl = tls.configure().unwrap().into_ssl(host).unwrap();
    let mut s = SslStream::new(ssl, c).unwrap();
    std::pin::Pin::new(&mut s).connect().await.unwrap();
    s
}

async fn get(s: &mut SslStream<TcpStream>, host: &str) {
    let req = format!("GET /user HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {PH}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let status = read_resp(s).await;
    assert_eq!(status, 200, "{host}");
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(n: usize) {
    let origin_ca = CertAuthority::generate("bench origin CA").unwrap();
    let bound_port = origin(origin_ca.acceptor_for("bound.bench").unwrap(), true).await;
    let plain_port = origin(origin_ca.acceptor_for("plain.bench").unwrap(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("origin-ca.pem");
    std::fs::write(&ca_file, origin_ca.cert_pem()).unwrap();
    let brig_ca = Arc::new(CertAuthority::generate("brig bench CA").unwrap());

    let policy = Policy::from_toml(&format!(
        "[[allow]]\nname = \"bench\"\ndomains = [\"bound.bench\", \"plain.bench\"]\nports = [{bound_port}, {plain_port}]\n[ssrf]\ntrusted_cidrs = [\"127.0.0.0/8\"]\n"
    ))
    .unwrap();
    let mut hosts = std::collections::HashMap::new();
    for h in ["bound.bench", "plain.bench"] {
        hosts.insert(h.to_string(), vec!["127.0.0.1".parse().unwrap()]);
    }
    let resolver = SessionResolver::new(ResolverConfig {
        static_hosts: hosts,
        ..ResolverConfig::default()
    });
    let secrets = Placeholders::new(vec![Secret {
        name: "TOKEN".into(),
        placeholder: PH.into(),
        value: VAL.into(),
        hosts: vec!["bound.bench".into()],
        body: false,
        authorization: None,
        override_authorization: false,
    }])
    .unwrap();
    let events = Arc::new(MemoryEvents::new());
    let s = SessionEgress::new("bench", Arc::new(policy), resolver, events.clone())
        .with_limits(Limits::unlimited())
        .with_config(ProxyConfig {
            upstream_ca_file: Some(ca_file),
            ..ProxyConfig::default()
        })
        .with_secrets(Arc::new(Arc::new(secrets)))
        .with_ca(brig_ca.clone());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap().port();
    tokio::spawn(serve_tcp(l, s));

    // The client trusts both CAs (a sandbox's bundle holds brig's).
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.cert_store_mut()
        .add_cert(origin_ca.cert().clone())
        .unwrap();
    b.cert_store_mut().add_cert(brig_ca.cert().clone()).unwrap();
    b.set_alpn_protos(b"\x08http/1.1").unwrap();
    let tls = b.build();

    // Warm-up: leaf minted, connectors built, code paths paged in.
    for _ in 0..50 {
        let mut c = open(proxy, "bound.bench", bound_port, &tls).await;
        get(&mut c, "bound.bench").await;
        let mut c = open(proxy, "plain.bench", plain_port, &tls).await;
        get(&mut c, "plain.bench").await;
    }

    let (mut cold_i, mut cold_p) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let mut c = open(proxy, "bound.bench", bound_port, &tls).await;
        get(&mut c, "bound.bench").await;
        cold_i.push(ms(t.elapsed()));
        drop(c);
        let t = Instant::now();
        let mut c = open(proxy, "plain.bench", plain_port, &tls).await;
        get(&mut c, "plain.bench").await;
        cold_p.push(ms(t.elapsed()));
    }
    let mut ci = open(proxy, "bound.bench", bound_port, &tls).await;
    let mut cp = open(proxy, "plain.bench", plain_port, &tls).await;
    let (mut warm_i, mut warm_p) = (Vec::new(), Vec::new());
    for _ in 0..n * 5 {
        let t = Instant::now();
        get(&mut ci, "bound.bench").await;
        warm_i.push(ms(t.elapsed()));
        let t = Instant::now();
        get(&mut cp, "plain.bench").await;
        warm_p.push(ms(t.elapsed()));
    }
    let injected = events
        .snapshot()
        .iter()
        .filter(|e| e.secrets.iter().any(|s| s == "TOKEN"))
        .count();
    println!(
        "inject_bench: {n} cold and {} warm samples of each, interleaved",
        n * 5
    );
    println!("  (requests with TOKEN injected, per the events: {injected})");
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "mean ms"
    );
    for (name, v) in [
        ("cold, intercepted + injected", &mut cold_i),
        ("cold, passed through", &mut cold_p),
        ("warm, intercepted + injected", &mut warm_i),
        ("warm, passed through", &mut warm_p),
    ] {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{name:<34} {:>9.3} {:>9.3} {:>9.3}",
            pct(v, 0.5),
            pct(v, 0.99),
            mean
        );
    }
    println!(
        "added (intercepted - passed through): cold p50 {:+.3} ms, p99 {:+.3} ms; warm p50 {:+.3} ms, p99 {:+.3} ms",
        pct(&mut cold_i, 0.5) - pct(&mut cold_p, 0.5),
        pct(&mut cold_i, 0.99) - pct(&mut cold_p, 0.99),
        pct(&mut warm_i, 0.5) - pct(&mut warm_p, 0.5),
        pct(&mut warm_i, 0.99) - pct(&mut warm_p, 0.99),
    );
}
