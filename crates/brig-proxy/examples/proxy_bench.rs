//! Egress proxy benchmark (docs/BENCHMARKS.md, "Egress (issue 4)"): brig's
//! proxy side by side with squid and tinyproxy on loopback, configured
//! with the same allow rule (the host `localhost`, the two origin ports),
//! against a direct connection.
//!
//! ```text
//! cargo run --release -p brig-proxy --example proxy_bench [-- --secs 3 --rounds 3]
//! ```
//!
//! Needs `squid` and `tinyproxy` (Debian packages) and `openssl` on PATH;
//! a proxy that is missing is skipped. Everything runs on this machine:
//! the origins (plain HTTP and TLS, built in), the clients, and each
//! proxy in its own process (brig: this binary with `serve-brig`), so the
//! proxies' memory can be read from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIG: u64 = 1 << 30;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve-brig") {
        serve_brig(
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        );
        return;
    }
    let secs: u64 = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |name: &str| opt(name).map(|v| v.split(',').map(str::to_string).collect::<Vec<_>>());
    let o = Opts {
        old_brig: opt("--old-brig").map(PathBuf::from),
        only: list("--only"),
        targets: list("--targets"),
    };
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs(secs), rounds, o));
}

/// Command-line selections (all phases and targets by default).
struct Opts {
    /// Another build of this benchmark whose `serve-brig` runs as the
    /// target "brig (old)", interleaved with the others: an A/B of two
    /// proxy builds in one run.
    old_brig: Option<PathBuf>,
    /// Phases: rate, tls, lat, dl, hold.
    only: Option<Vec<String>>,
    /// Targets by short name: direct, brig, old, squid, tinyproxy.
    targets: Option<Vec<String>>,
}

impl Opts {
    fn phase(&self, p: &str) -> bool {
        self.only.as_ref().is_none_or(|v| v.iter().any(|x| x == p))
    }
    fn target(&self, t: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|v| v.iter().any(|x| x == t))
    }
}

/// brig's proxy as its own process: explicit mode on TCP, no limits, the
/// allow rule for `localhost`, 127.0.0.0/8 trusted (the origins are on
/// loopback), `localhost` resolved by a static entry.
fn serve_brig(port: u16, http_port: u16, tls_port: u16) {
    use brig_egress::Policy;
    use brig_proxy::*;
    // BRIG_BENCH_PROXY_THREADS: the proxy runtime's worker threads
    // (default 2, one per core).
    let threads = std::env::var("BRIG_BENCH_PROXY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let policy = Policy::from_toml(&format!(
            "[[allow]]\nname = \"bench\"\ndomains = [\"localhost\"]\nports = [{http_port}, {tls_port}]\n[ssrf]\ntrusted_cidrs = [\"127.0.0.0/8\"]\n"
        ))
        .unwrap();
        let mut hosts = std::collections::HashMap::new();
        hosts.insert("localhost".to_string(), vec!["127.0.0.1".parse().unwrap()]);
        let resolver = SessionResolver::new(ResolverConfig { static_hosts: hosts, ..ResolverConfig::default() });
        struct Count(AtomicU64);
        impl EgressEvents for Count {
            fn event(&self, e: EgressEvent) {
                // Touch the event as a journal would (it is built in full).
                self.0.fetch_add(e.bytes_in + 1, Ordering::Relaxed);
            }
        }
        let s = SessionEgress::new("bench", Arc::new(policy), resolver, Arc::new(Count(AtomicU64::new(0))))
            .with_limits(Limits::unlimited());
        let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        println!("ready");
        // On a worker, as `brig serve` spawns serve_unix: block_on would
        // keep the accept loop on this thread, outside the runtime's
        // workers, and every accept a cross-thread wake-up.
        // (BRIG_BENCH_BLOCK_ON=1: the accept loop on this thread, as this
        // benchmark had it before, for comparison.)
        if std::env::var_os("BRIG_BENCH_BLOCK_ON").is_some() {
            serve_tcp(l, s).await.unwrap();
        } else {
            tokio::spawn(serve_tcp(l, s)).await.unwrap().unwrap();
        }
    });
}

fn raise_nofile() {
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Brig,
    BrigOld,
    Squid,
    Tinyproxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Brig => "brig",
            Kind::BrigOld => "brig (old)",
            Kind::Squid => "squid 5.7",
            Kind::Tinyproxy => "tinyproxy 1.11.1",
        }
    }
}

struct Target {
    kind: Kind,
    proxy: Option<SocketAddr>,
    child: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_port(p: u16) -> bool {
    for _ in 0..200 {
        if StdStream::connect(("127.0.0.1", p)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn start_brig(exe: &Path, kind: Kind, http_port: u16, tls_port: u16) -> Option<Target> {
    let port = free_port();
    let child = Command::new(exe)
        .args([
            "serve-brig",
            &port.to_string(),
            &http_port.to_string(),
            &tls_port.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let t = Target {
        kind,
        proxy: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        child: Some(child),
    };
    wait_port(port).then_some(t)
}

fn start_squid(dir: &Path, http_port: u16, tls_port: u16) -> Option<Target> {
    let port = free_port();
    let d = dir.join("squid");
    std::fs::create_dir_all(&d).ok()?;
    let _ = Command::new("chmod").args(["777", d.to_str()?]).status();
    let conf = format!(
        "http_port 127.0.0.1:{port}\n\
         pid_filename {d}/squid.pid\n\
         cache_log {d}/cache.log\n\
         access_log none\n\
         cache_store_log none\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         coredump_dir {d}\n\
         netdb_filename none\n\
         pinger_enable off\n\
         shutdown_lifetime 0 seconds\n\
         max_filedescriptors 16384\n\
         client_persistent_connections on\n\
         server_persistent_connections on\n\
         acl okports port {http_port} {tls_port}\n\
         acl allowed dstdomain localhost\n\
         http_access deny !okports\n\
         http_access allow allowed\n\
         http_access deny all\n",
        d = d.display()
    );
    let cf = d.join("squid.conf");
    std::fs::write(&cf, conf).ok()?;
    let child = Command::new("squid")
        .args(["-N", "-f", cf.to_str()?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Target {
        kind: Kind::Squid,
        proxy: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        child: Some(child),
    };
    wait_port(port).then_some(t)
}

fn start_tinyproxy(dir: &Path, http_port: u16, tls_port: u16) -> Option<Target> {
    let port = free_port();
    let d = dir.join("tinyproxy");
    std::fs::create_dir_all(&d).ok()?;
    let _ = Command::new("chmod").args(["777", d.to_str()?]).status();
    std::fs::write(d.join("filter"), "^localhost$\n").ok()?;
    let conf = format!(
        "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 4000\nLogLevel Critical\n\
         PidFile \"{d}/tinyproxy.pid\"\nFilter \"{d}/filter\"\nFilterDefaultDeny Yes\nFilterURLs Off\nFilterExtended Yes\n\
         ConnectPort {tls_port}\nConnectPort {http_port}\n",
        d = d.display()
    );
    let cf = d.join("tinyproxy.conf");
    std::fs::write(&cf, conf).ok()?;
    let child = Command::new("tinyproxy")
        .args(["-d", "-c", cf.to_str()?])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t = Target {
        kind: Kind::Tinyproxy,
        proxy: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        child: Some(child),
    };
    wait_port(port).then_some(t)
}

/// RSS in KiB of a process and its descendants.
fn rss_tree(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += s
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
            stack.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    total
}

// ---- origins ----

async fn http_origin() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut have = 0;
                loop {
                    let end = loop {
                        if let Some(p) = find(&buf[..have], b"\r\n\r\n") {
                            break p + 4;
                        }
                        if have == buf.len() {
                            return;
                        }
                        match s.read(&mut buf[have..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have += n,
                        }
                    };
                    let big = buf[..end].windows(4).any(|w| w == b"/big");
                    buf.copy_within(end..have, 0);
                    have -= end;
                    if big {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\nContent-Type: application/octet-stream\r\n\r\n");
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![0x5au8; 256 * 1024];
                        let mut left = BIG;
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                    } else if s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A TLS origin (OpenSSL, P-256 ECDSA certificate for `localhost`): one
/// GET per connection, then close. Worker threads accept in parallel.
fn tls_origin(dir: &Path) -> u16 {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl req failed");
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_private_key_file(&key, SslFiletype::PEM).unwrap();
    b.set_certificate_chain_file(&cert).unwrap();
    let acc = Arc::new(b.build());
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    for _ in 0..24 {
        let l = l.try_clone().unwrap();
        let acc = acc.clone();
        std::thread::spawn(move || loop {
            let Ok((s, _)) = l.accept() else { continue };
            let _ = s.set_nodelay(true);
            let Ok(mut t) = acc.accept(s) else { continue };
            let mut buf = [0u8; 2048];
            let mut have = 0;
            while find(&buf[..have], b"\r\n\r\n").is_none() && have < buf.len() {
                match t.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => have += n,
                }
            }
            let _ =
                t.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = t.shutdown();
        });
    }
    port
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

// ---- clients ----

/// Read one response (head + Content-Length body): its length and
/// whether the server closes the connection after it.
async fn read_response_c(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u64, bool)> {
    buf.clear();
    let mut tmp = [0u8; 16384];
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        eprintln!("unexpected: {}", head.lines().next().unwrap_or(""));
        return None;
    }
    let cl: u64 = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut got = (buf.len() - end) as u64;
    let mut big = vec![0u8; 256 * 1024];
    while got < cl {
        let n = s.read(&mut big).await.ok()?;
        if n == 0 {
            return None;
        }
        got += n as u64;
    }
    let close = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        (l.starts_with("connection:") || l.starts_with("proxy-connection:")) && l.contains("close")
    }) || head.starts_with("HTTP/1.0");
    Some((cl, close))
}

async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u64> {
    read_response_c(s, buf).await.map(|r| r.0)
}

fn request(t: &Target, http_port: u16, path: &str) -> Vec<u8> {
    match t.proxy {
        None => format!("GET {path} HTTP/1.1\r\nHost: localhost:{http_port}\r\n\r\n"),
        Some(_) => format!("GET http://localhost:{http_port}{path} HTTP/1.1\r\nHost: localhost:{http_port}\r\n\r\n"),
    }
    .into_bytes()
}

async fn connect(t: &Target, http_port: u16) -> TcpStream {
    let addr = t
        .proxy
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], http_port)));
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Keep-alive request rate with `conc` connections for `d`.
async fn http_rate(t: &Target, http_port: u16, conc: usize, d: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let req = request(t, http_port, "/small");
    let mut hs = Vec::new();
    for _ in 0..conc {
        let mut s = connect(t, http_port).await;
        let (stop, count, req) = (stop.clone(), count.clone(), req.clone());
        let addr = t
            .proxy
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], http_port)));
        hs.push(tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                let r = match s.write_all(&req).await {
                    Ok(()) => read_response_c(&mut s, &mut buf).await,
                    Err(_) => None,
                };
                if r.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                if r.is_none_or(|(_, close)| close) {
                    // A proxy that closes after each response (tinyproxy,
                    // with or without saying so): a new connection per
                    // request.
                    s = TcpStream::connect(addr).await.unwrap();
                    s.set_nodelay(true).unwrap();
                }
            }
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    for h in hs {
        let _ = h.await;
    }
    n as f64 / el
}

/// Sequential request latencies on one keep-alive connection (µs).
async fn latencies(t: &Target, http_port: u16, n: usize) -> Vec<f64> {
    let mut s = connect(t, http_port).await;
    let req = request(t, http_port, "/small");
    let mut buf = Vec::with_capacity(4096);
    let mut v = Vec::with_capacity(n);
    // (A proxy without keep-alive reconnects per request, timed.)
    for i in 0..n + 200 {
        let t0 = Instant::now();
        let mut r = None;
        for _ in 0..2 {
            if s.write_all(&req).await.is_ok() {
                r = read_response_c(&mut s, &mut buf).await;
            }
            if r.is_some() {
                break;
            }
            s = connect(t, http_port).await;
        }
        let (_, close) = r.expect("no response");
        if close {
            s = connect(t, http_port).await;
        }
        if i >= 200 {
            v.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn download(t: &Target, http_port: u16) -> f64 {
    let mut s = connect(t, http_port).await;
    let req = request(t, http_port, "/big");
    let t0 = Instant::now();
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    let n = read_response(&mut s, &mut buf)
        .await
        .expect("download failed");
    assert_eq!(n, BIG);
    (BIG as f64 / (1 << 20) as f64) / t0.elapsed().as_secs_f64()
}

/// CPU time (ns) of a process's live threads so far, exact
/// (sum_exec_runtime; a thread that exited takes its time with it).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU time (ns) of a process so far from its tick counts: its threads,
/// those that exited, and its reaped children (tinyproxy runs a thread
/// per connection). Sampled at each tick, so it can miss short bursts.
fn cpu_ticks_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (which may hold spaces) and the state (not
    // a number): ppid first, so utime, stime, cutime, cstime are 10..14.
    let rest = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks: u64 = f.get(10..14).map(|v| v.iter().sum()).unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

/// Context switches (voluntary and not) of a process's live threads so
/// far (a thread that exited takes its count with it).
fn ctx_switches(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Busy CPU time of the whole machine so far (ns; /proc/stat, all but
/// idle and iowait).
fn machine_busy_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    busy * 1_000_000_000 / hz
}

/// A CONNECT+TLS run: transactions per second, and CPU per transaction
/// (µs) of the proxy process and of the whole machine.
struct TlsRun {
    rate: f64,
    proxy_us: f64,
    proxy_ticks_us: f64,
    machine_us: f64,
    /// The proxy's context switches per transaction.
    proxy_cs: f64,
}

fn tls_run(t: &Target, tls_port: u16, conc: usize, d: Duration) -> TlsRun {
    let pid = t.child.as_ref().map(|c| c.id());
    let (p0, m0, c0) = (pid.map(cpu_ns), machine_busy_ns(), pid.map(ctx_switches));
    let k0 = pid.map(cpu_ticks_ns);
    let (rate, n) = tls_rate(t, tls_port, conc, d);
    let (p1, m1, c1) = (pid.map(cpu_ns), machine_busy_ns(), pid.map(ctx_switches));
    let k1 = pid.map(cpu_ticks_ns);
    let n = n.max(1) as f64;
    TlsRun {
        rate,
        proxy_us: match (p0, p1) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e3 / n,
            _ => 0.0,
        },
        proxy_ticks_us: match (k0, k1) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e3 / n,
            _ => 0.0,
        },
        machine_us: (m1 - m0) as f64 / 1e3 / n,
        proxy_cs: match (c0, c1) {
            (Some(a), Some(b)) => (b - a) as f64 / n,
            _ => 0.0,
        },
    }
}

/// CONNECT (when proxied) + TLS handshake + GET + close, `conc` threads:
/// the rate, and how many transactions completed.
fn tls_rate(t: &Target, tls_port: u16, conc: usize, d: Duration) -> (f64, u64) {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let conn = Arc::new(b.build());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let fails = Arc::new(AtomicU64::new(0));
    let proxy = t.proxy;
    let mut hs = Vec::new();
    for _ in 0..conc {
        let (conn, stop, count, fails) = (conn.clone(), stop.clone(), count.clone(), fails.clone());
        hs.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = (|| -> Option<()> {
                    let s = match proxy {
                        None => StdStream::connect(("127.0.0.1", tls_port)).ok()?,
                        Some(p) => {
                            let mut s = StdStream::connect(p).ok()?;
                            s.set_nodelay(true).ok()?;
                            s.write_all(format!("CONNECT localhost:{tls_port} HTTP/1.1\r\nHost: localhost:{tls_port}\r\n\r\n").as_bytes()).ok()?;
                            // Nothing can follow the proxy's answer before
                            // the ClientHello is sent: read it whole.
                            let mut buf = Vec::new();
                            let mut b = [0u8; 512];
                            while find(&buf, b"\r\n\r\n").is_none() {
                                let n = s.read(&mut b).ok()?;
                                if n == 0 {
                                    return None;
                                }
                                buf.extend_from_slice(&b[..n]);
                            }
                            if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
                                return None;
                            }
                            s
                        }
                    };
                    s.set_nodelay(true).ok()?;
                    let mut t = conn.connect("localhost", s).ok()?;
                    t.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
                    let mut out = Vec::new();
                    let _ = t.read_to_end(&mut out);
                    find(&out, b"\r\n\r\nok").map(|_| ())
                })();
                if ok.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    fails.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t0 = Instant::now();
    std::thread::sleep(d);
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    for h in hs {
        let _ = h.join();
    }
    let f = fails.load(Ordering::Relaxed);
    if f > 0 {
        eprintln!("{}: {f} failed TLS transactions", t.kind.name());
    }
    // Those that finished after the clock stopped count for CPU.
    (n as f64 / el, count.load(Ordering::Relaxed))
}

/// Hold `n` connections: through a proxy, CONNECT tunnels to the plain
/// origin (so the proxy holds both sides), each carrying one request and
/// then idle; direct, plain keep-alive connections. RSS before and after,
/// and how many still answer a second request.
async fn hold(t: &Target, http_port: u16, n: usize) -> (usize, Option<f64>) {
    let pid = t.child.as_ref().map(|c| c.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = pid.map(rss_tree);
    let req = format!("GET /small HTTP/1.1\r\nHost: localhost:{http_port}\r\n\r\n").into_bytes();
    let mut conns = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for _ in 0..n {
        let addr = t
            .proxy
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], http_port)));
        let Ok(mut s) = TcpStream::connect(addr).await else {
            break;
        };
        if t.proxy.is_some() {
            let c = format!(
                "CONNECT localhost:{http_port} HTTP/1.1\r\nHost: localhost:{http_port}\r\n\r\n"
            );
            if s.write_all(c.as_bytes()).await.is_err() {
                break;
            }
            let mut b = Vec::new();
            let mut tmp = [0u8; 512];
            while find(&b, b"\r\n\r\n").is_none() {
                match s.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => b.extend_from_slice(&tmp[..k]),
                }
            }
            if !b.starts_with(b"HTTP/1.1 200") && !b.starts_with(b"HTTP/1.0 200") {
                eprintln!(
                    "{}: CONNECT refused: {}",
                    t.kind.name(),
                    String::from_utf8_lossy(&b).lines().next().unwrap_or("")
                );
                break;
            }
        }
        if s.write_all(&req).await.is_err() || read_response(&mut s, &mut buf).await.is_none() {
            break;
        }
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = pid.map(rss_tree);
    let mut alive = 0;
    for s in conns.iter_mut() {
        if s.write_all(&req).await.is_ok() && read_response(s, &mut buf).await.is_some() {
            alive += 1;
        }
    }
    let per = match (before, after) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b)) as f64 / n as f64),
        _ => None,
    };
    (alive, per)
}

async fn run(d: Duration, rounds: usize, o: Opts) {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("brig-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let http_port = http_origin().await;
    let tls_port = tls_origin(&dir);
    let mut targets = vec![Target {
        kind: Kind::Direct,
        proxy: None,
        child: None,
    }];
    if o.target("brig") {
        let exe = std::env::current_exe().unwrap();
        match start_brig(&exe, Kind::Brig, http_port, tls_port) {
            Some(t) => targets.push(t),
            None => panic!("brig's proxy did not start"),
        }
    }
    if let Some(exe) = o.old_brig.as_ref().filter(|_| o.target("old")) {
        match start_brig(exe, Kind::BrigOld, http_port, tls_port) {
            Some(t) => targets.push(t),
            None => panic!("the old brig proxy ({}) did not start", exe.display()),
        }
    }
    if o.target("squid") {
        match start_squid(&dir, http_port, tls_port) {
            Some(t) => targets.push(t),
            None => eprintln!("squid: not started (skipped)"),
        }
    }
    if o.target("tinyproxy") {
        match start_tinyproxy(&dir, http_port, tls_port) {
            Some(t) => targets.push(t),
            None => eprintln!("tinyproxy: not started (skipped)"),
        }
    }
    for t in &targets {
        if let Some(c) = &t.child {
            println!("{}: pid {}", t.kind.name(), c.id());
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    // Rates and latencies in rounds, the targets interleaved in each, so
    // that the other load on this shared machine falls on all of them
    // alike; the medians of the rounds are reported (min-max in brackets).
    let nt = targets.len();
    let mut rates = vec![Vec::new(); nt];
    let mut tlss = vec![Vec::new(); nt];
    let mut lats = vec![Vec::new(); nt];
    let mut proxy_cpu: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut machine_cpu: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut proxy_cs: Vec<Vec<f64>> = vec![Vec::new(); nt];
    let mut proxy_ticks: Vec<Vec<f64>> = vec![Vec::new(); nt];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            rates[i].push(if o.phase("rate") {
                http_rate(t, http_port, 16, d).await
            } else {
                f64::NAN
            });
            if o.phase("tls") {
                let r = tokio::task::block_in_place(|| tls_run(t, tls_port, 8, d));
                tlss[i].push(r.rate);
                proxy_cpu[i].push(r.proxy_us);
                proxy_ticks[i].push(r.proxy_ticks_us);
                machine_cpu[i].push(r.machine_us);
                proxy_cs[i].push(r.proxy_cs);
            } else {
                tlss[i].push(f64::NAN);
            }
            if o.phase("lat") {
                lats[i].extend(latencies(t, http_port, 1500).await);
            } else {
                lats[i].push(f64::NAN);
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        format!("{:.0} ({:.0}-{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    // Paired ratios: each round's figure over the same round's reference
    // (the load of the moment falls on both).
    let ratio = |a: &Vec<f64>, b: &Vec<f64>| {
        let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        r.sort_by(|x, y| x.total_cmp(y));
        format!("{:.2} ({:.2}-{:.2})", r[r.len() / 2], r[0], r[r.len() - 1])
    };
    let squid = targets.iter().position(|t| t.kind == Kind::Squid);
    let old = targets.iter().position(|t| t.kind == Kind::BrigOld);
    if let (Some(b), Some(q)) = (targets.iter().position(|t| t.kind == Kind::Brig), old) {
        println!(
            "paired, brig / brig (old): CONNECT+TLS {}; plain HTTP {}",
            ratio(&tlss[b], &tlss[q]),
            ratio(&rates[b], &rates[q])
        );
    }
    for (i, t) in targets.iter().enumerate().skip(1) {
        let vs_squid = squid
            .map(|q| ratio(&rates[i], &rates[q]))
            .unwrap_or_else(|| "—".into());
        println!(
            "paired, {}: CONNECT+TLS / direct {}; plain HTTP / direct {}; plain HTTP / squid {}",
            t.kind.name(),
            ratio(&tlss[i], &tlss[0]),
            ratio(&rates[i], &rates[0]),
            vs_squid
        );
    }
    if o.phase("tls") {
        for (i, t) in targets.iter().enumerate() {
            let mut m = machine_cpu[i].clone();
            let mut p = proxy_cpu[i].clone();
            let mut k = proxy_ticks[i].clone();
            let mut c = proxy_cs[i].clone();
            c.sort_by(|a, b| a.total_cmp(b));
            println!(
                "CPU per CONNECT+TLS transaction, {}: machine {} µs; proxy process {} µs (live threads, exact), {} µs (ticks, exited threads too), {} context switches",
                t.kind.name(),
                med(&mut m),
                if t.child.is_some() { med(&mut p) } else { "—".into() },
                if t.child.is_some() { med(&mut k) } else { "—".into() },
                if t.child.is_some() { format!("{:.1}", c[c.len() / 2]) } else { "—".into() }
            );
        }
    }
    for l in lats.iter_mut() {
        l.sort_by(|a, b| a.total_cmp(b));
    }
    let direct_lat = (pct(&lats[0], 0.5), pct(&lats[0], 0.99));
    println!("| | plain HTTP req/s (16 conns) | CONNECT+TLS tx/s (8 threads) | p50 / p99 latency µs | added p50 / p99 µs | 1 GiB download MiB/s | idle tunnels held (of 1,000) | KiB per idle tunnel |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, t) in targets.iter().enumerate() {
        let (p50, p99) = (pct(&lats[i], 0.5), pct(&lats[i], 0.99));
        let dl = if o.phase("dl") {
            download(t, http_port).await
        } else {
            f64::NAN
        };
        let (alive, per) = if o.phase("hold") {
            hold(t, http_port, 1000).await
        } else {
            (0, None)
        };
        let added = if t.kind == Kind::Direct {
            "—".to_string()
        } else {
            format!("{:.0} / {:.0}", p50 - direct_lat.0, p99 - direct_lat.1)
        };
        println!(
            "| {} | {} | {} | {:.0} / {:.0} | {} | {:.0} | {} | {} |",
            t.kind.name(),
            med(&mut rates[i]),
            med(&mut tlss[i]),
            p50,
            p99,
            added,
            dl,
            alive,
            per.map(|p| format!("{p:.1}")).unwrap_or_else(|| "—".into())
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
    drop(targets);
    let _ = std::fs::remove_dir_all(&dir);
}
