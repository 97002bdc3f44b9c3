//! Test harness: real sockets only. A test DNS server on loopback (UDP)
//! that answers per test, origin servers on their own loopback address,
//! and a session served on unix sockets in a temp dir.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_egress::Policy;
use brig_proxy::{
    dns_wire, proxy_proto, EgressEvent, Limits, MemoryEvents, ProxyConfig, ResolverConfig,
    SessionEgress, SessionResolver,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};

pub type Answers = Arc<dyn Fn(&str, u16, usize) -> Vec<(IpAddr, u32)> + Send + Sync>;

/// A DNS server on 127.0.0.1 answering by a closure of (name, qtype, how
/// many queries for that name so far).
pub struct TestDns {
    pub addr: SocketAddr,
    pub queries: Arc<Mutex<Vec<(String, u16)>>>,
}

pub async fn test_dns(answers: Answers) -> TestDns {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let queries = Arc::new(Mutex::new(Vec::new()));
    let q2 = queries.clone();
    tokio::spawn(async move {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = dns_wire::parse_query(&buf[..n]) else {
                continue;
            };
            let name = q.name.clone().unwrap_or_default().to_ascii_lowercase();
            q2.lock().unwrap().push((name.clone(), q.qtype));
            let c = counts.entry(name.clone()).or_default();
            let recs: Vec<(IpAddr, u32)> = answers(&name, q.qtype, *c)
                .into_iter()
                .filter(|(ip, _)| ip.is_ipv4() == (q.qtype == dns_wire::A))
                .collect();
            *c += 1;
            let rcode = if name.ends_with(".nx") {
                dns_wire::NXDOMAIN
            } else {
                dns_wire::NOERROR
            };
            let r = dns_wire::build_response(&q, rcode, &recs, None);
            let _ = sock.send_to(&r, from).await;
        }
    });
    TestDns { addr, queries }
}

/// A free loopback address other than 127.0.0.1 with `port` bindable.
pub async fn bind_unique(port: u16) -> TcpListener {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = (std::process::id() as usize * 7919) % 200 + 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(127, base as u8, (n / 250) as u8 + 1, (n % 250) as u8 + 2);
        if let Ok(l) = TcpListener::bind((ip, port)).await {
            return l;
        }
    }
}

/// An HTTP origin: answers every request with `hello <path>` (keep-alive),
/// records each request head.
pub struct Origin {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
}

pub async fn http_origin(port: u16) -> Origin {
    let l = bind_unique(port).await;
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (h2, c2) = (heads.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let h = h2.clone();
            tokio::spawn(async move {
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
                    let cl: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
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
                    buf.drain(..cl);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    h.lock().unwrap().push(head);
                    let body = format!("hello {path}");
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Origin {
        addr,
        heads,
        connections,
    }
}

/// A raw TCP origin (stands in for a TLS server): records what it
/// receives, answers `pong <n>` to each read.
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<u8>>>,
    pub connections: Arc<AtomicUsize>,
}

pub async fn raw_origin(port: u16) -> RawOrigin {
    let l = bind_unique(port).await;
    let addr = l.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (r2, c2) = (received.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let r = r2.clone();
            tokio::spawn(async move {
                let mut tmp = [0u8; 65536];
                loop {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            r.lock().unwrap().extend_from_slice(&tmp[..n]);
                            if s.write_all(format!("pong {n}").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    RawOrigin {
        addr,
        received,
        connections,
    }
}

pub fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub const POLICY: &str = r#"
[[allow]]
name = "origin"
domains = ["origin.test", "other.test"]

[[allow]]
name = "ssh-host"
domains = ["ssh.test"]
ports = [22]

[ssrf]
trusted_cidrs = ["127.0.0.0/8", "203.0.113.0/24"]
"#;

pub const POLICY_UNTRUSTED: &str = r#"
[[allow]]
name = "origin"
domains = ["origin.test", "rebind.test"]

[ssrf]
trusted_cidrs = ["203.0.113.0/24"]
"#;

/// A session served on unix sockets in a temp dir.
pub struct Session {
    pub dir: tempfile::TempDir,
    pub proxy: PathBuf,
    pub dns: PathBuf,
    pub events: Arc<MemoryEvents>,
    pub egress: SessionEgress,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Opts {
    pub policy: &'static str,
    pub limits: Limits,
    pub config: ProxyConfig,
    pub dns: Option<SocketAddr>,
    /// brig's own services on reserved hosts.
    pub local: Vec<Arc<dyn brig_proxy::local::LocalService>>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            policy: POLICY,
            limits: Limits::default(),
            config: ProxyConfig::default(),
            dns: None,
            local: Vec::new(),
        }
    }
}

pub async fn session(name: &str, o: Opts) -> Session {
    let dir = tempfile::tempdir().unwrap();
    let proxy = dir.path().join("egress.sock");
    let dns = dir.path().join("dns.sock");
    let policy = Arc::new(Policy::from_toml(o.policy).unwrap());
    let resolver = SessionResolver::new(ResolverConfig {
        upstream: Some(o.dns.unwrap_or_else(|| "127.0.0.1:9".parse().unwrap())),
        timeout: Duration::from_millis(500),
        ..ResolverConfig::default()
    });
    let events = Arc::new(MemoryEvents::new());
    let mut egress = SessionEgress::new(name, policy, resolver, events.clone())
        .with_limits(o.limits)
        .with_config(o.config);
    egress.local = o.local;
    let pl = UnixListener::bind(&proxy).unwrap();
    let dl = UnixListener::bind(&dns).unwrap();
    let tasks = vec![
        tokio::spawn(brig_proxy::serve_unix(pl, egress.clone())),
        tokio::spawn(brig_proxy::serve_dns_unix(dl, egress.clone())),
    ];
    Session {
        dir,
        proxy,
        dns,
        events,
        egress,
        tasks,
    }
}

impl Session {
    /// A stream as the forwarder opens it: PROXY header to `dst` first.
    pub async fn open(&self, dst: SocketAddr) -> UnixStream {
        let mut s = UnixStream::connect(&self.proxy).await.unwrap();
        let src: SocketAddr = if dst.is_ipv4() {
            "10.0.0.2:40000".parse().unwrap()
        } else {
            "[fd00::2]:40000".parse().unwrap()
        };
        s.write_all(proxy_proto::format_v1(src, dst).as_bytes())
            .await
            .unwrap();
        s
    }

    /// An explicit-proxy stream (the sandbox connected to 127.0.0.1:3128).
    pub async fn explicit(&self) -> UnixStream {
        self.open("127.0.0.1:3128".parse().unwrap()).await
    }

    /// One request on a fresh explicit-proxy stream, and its answer.
    pub async fn ask(&self, req: &str) -> Resp {
        let mut c = self.explicit().await;
        roundtrip(&mut c, req).await.unwrap()
    }

    /// Ask the session's resolver.
    pub async fn dns_query(&self, name: &str, qtype: u16) -> Vec<u8> {
        let mut s = UnixStream::connect(&self.dns).await.unwrap();
        let q = dns_wire::build_query(0x4242, name, qtype);
        dns_exchange(&mut s, &q).await
    }

    pub fn events(&self) -> Vec<EgressEvent> {
        self.events.snapshot()
    }

    /// Wait until at least `n` events are in.
    pub async fn wait_events(&self, n: usize) -> Vec<EgressEvent> {
        for _ in 0..200 {
            let e = self.events();
            if e.len() >= n {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} events, got {:?}", self.events());
    }
}

pub async fn dns_exchange(s: &mut UnixStream, q: &[u8]) -> Vec<u8> {
    let mut m = (q.len() as u16).to_be_bytes().to_vec();
    m.extend_from_slice(q);
    s.write_all(&m).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut r).await.unwrap();
    r
}

/// One HTTP response: status, head, body (by Content-Length).
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

pub async fn read_resp<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Resp> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut tmp))
            .await
            .expect("response timed out")
        {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let cl: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < cl {
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    Some(Resp {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// Send a request and read its response.
pub async fn roundtrip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    req: &str,
) -> Option<Resp> {
    s.write_all(req.as_bytes()).await.ok()?;
    read_resp(s).await
}

/// Whether the peer closes without sending anything more.
pub async fn closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

pub fn fixed(map: Vec<(&'static str, IpAddr)>) -> Answers {
    Arc::new(move |name: &str, _q, _n| {
        map.iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, ip)| (*ip, 60))
            .collect()
    })
}

pub async fn tcp(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}
