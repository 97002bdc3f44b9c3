//! `brig sandbox-forwarder <json>`: the in-sandbox end of the egress
//! channel ([`crate::egress`]).
//!
//! Started by init after its guards are in force (so it runs as the sandbox
//! user under the same seccomp and Landlock as everything else), before
//! init reports ready (it writes one byte, `R`, on its stdout once every
//! listener is bound, which init waits for), and restarted by init when it
//! dies; in between, connections are refused.
//! One thread (tokio's current-thread runtime: a single epoll loop, no
//! worker threads):
//!
//! - TCP listeners on the explicit proxy address and on `0.0.0.0` for each
//!   transparent port. Each accepted connection gets a new stream to the
//!   proxy socket, which starts with a PROXY v1 header (src = the peer,
//!   dst = the accepted socket's own address: the original destination,
//!   thanks to the AnyIP route), then both directions are copied (8 KiB
//!   buffer each way, half-closes passed on). Proxy socket missing or
//!   refusing: the connection is reset at once.
//! - DNS on UDP and TCP: each query (a DNS header at least, QR = 0) goes
//!   over the DNS socket with 2-byte framing; the answer (same id) goes
//!   back. Malformed queries and late answers are dropped.
//!
//! Bounded: at most [`MAX_CONNS`] relayed connections and [`MAX_DNS`]
//! queries in flight; more are refused or dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use tokio::sync::Semaphore;

use crate::egress::ForwarderConfig;

const MAX_CONNS: usize = 1024;
const MAX_DNS: usize = 256;
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// A TCP DNS client idle this long is closed.
const DNS_TCP_IDLE: Duration = Duration::from_secs(10);
const DNS_HEADER: usize = 12;
/// How long a bind may fail with EACCES: the host lowers the netns's
/// unprivileged port start while init gets ready, usually before.
const BIND_WAIT: Duration = Duration::from_secs(15);

/// Entry point; never returns.
pub fn main(config_json: &str) -> ! {
    let config: ForwarderConfig = match serde_json::from_str(config_json) {
        Ok(c) => c,
        Err(_) => std::process::exit(2),
    };
    // Nothing of the sandbox (same uid) may ptrace it or open its fds.
    // SAFETY: a plain prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => std::process::exit(3),
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, run(config));
    std::process::exit(code)
}

/// `bind()` again while it fails with EACCES, for at most [`BIND_WAIT`].
async fn bind_retry<T, F: Future<Output = std::io::Result<T>>>(
    bind: impl Fn() -> F,
) -> std::io::Result<T> {
    let deadline = tokio::time::Instant::now() + BIND_WAIT;
    loop {
        match bind().await {
            Err(e)
                if e.kind() == std::io::ErrorKind::PermissionDenied
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            r => return r,
        }
    }
}

async fn run(config: ForwarderConfig) -> i32 {
    let config = Rc::new(config);
    let conns = Arc::new(Semaphore::new(MAX_CONNS));
    let mut addrs: Vec<SocketAddr> = vec![];
    match config.explicit.parse() {
        Ok(a) => addrs.push(a),
        Err(_) => return 2,
    }
    for p in &config.transparent_ports {
        addrs.push(SocketAddr::from(([0, 0, 0, 0], *p)));
    }
    // Every loop reports here when it ends (only on an accept error that
    // is not transient): then exit, and init starts a fresh forwarder.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
        let tx = done_tx.clone();
        tokio::task::spawn_local(async move {
            f.await;
            let _ = tx.send(());
        });
    };
    for a in addrs {
        let l = match bind_retry(|| TcpListener::bind(a)).await {
            Ok(l) => l,
            Err(_) => return 4,
        };
        spawn(Box::pin(accept_loop(l, config.clone(), conns.clone())));
    }
    if let Some(d) = &config.dns_listen {
        let Ok(a) = d.parse::<SocketAddr>() else {
            return 2;
        };
        let (Ok(u), Ok(t)) = (
            bind_retry(|| UdpSocket::bind(a)).await,
            bind_retry(|| TcpListener::bind(a)).await,
        ) else {
            return 5;
        };
        let dns = Arc::new(Semaphore::new(MAX_DNS));
        spawn(Box::pin(dns_udp(u, config.clone(), dns.clone())));
        spawn(Box::pin(dns_tcp(t, config.clone(), dns)));
    }
    // Every listener is bound: tell init (the first start waits for it;
    // later ones have nobody reading, which is fine).
    // SAFETY: writing one byte from a static buffer.
    unsafe { libc::write(1, b"R".as_ptr().cast(), 1) };
    let _ = done.recv().await;
    6
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
        )
    )
}

/// Accept connections and serve each in its own task while `limit` has a
/// permit (a connection over it is reset); returns on an accept error that
/// is not transient.
async fn accept_each<F: Future<Output = ()> + 'static>(
    l: TcpListener,
    limit: Arc<Semaphore>,
    serve: impl Fn(TcpStream, SocketAddr) -> F,
) {
    loop {
        let (client, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) if transient(&e) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            reset(client);
            continue;
        };
        let conn = serve(client, peer);
        tokio::task::spawn_local(async move {
            conn.await;
            drop(permit);
        });
    }
}

async fn accept_loop(l: TcpListener, config: Rc<ForwarderConfig>, conns: Arc<Semaphore>) {
    accept_each(l, conns, move |client, peer| {
        let config = config.clone();
        async move { relay(client, peer, &config).await }
    })
    .await
}

/// Close with RST: the program sees its connection refused, not a clean end.
fn reset(s: TcpStream) {
    // A zero linger never blocks (the deprecation is about non-zero ones).
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

/// The PROXY protocol v1 header for a connection from `src` to `dst`.
pub fn proxy_header(src: SocketAddr, dst: SocketAddr) -> String {
    let (src, dst) = (canonical(src), canonical(dst));
    let fam = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
        (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
        _ => return "PROXY UNKNOWN\r\n".into(),
    };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
}

/// IPv4-mapped IPv6 as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    }
}

async fn relay(client: TcpStream, peer: SocketAddr, config: &ForwarderConfig) {
    let Ok(dst) = client.local_addr() else {
        return reset(client);
    };
    let mut up = match UnixStream::connect(&config.proxy).await {
        Ok(u) => u,
        Err(_) => return reset(client),
    };
    if up
        .write_all(proxy_header(peer, dst).as_bytes())
        .await
        .is_err()
    {
        return reset(client);
    }
    let _ = client.set_nodelay(true);
    let mut client = client;
    // Copies both ways; after EOF on one side the other gets a shutdown
    // (half-close) and copying goes on the other way until it ends too.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
}

/// A query worth forwarding: at least a header, QR = 0 (a query), at least
/// one question.
pub fn valid_query(q: &[u8]) -> bool {
    q.len() >= DNS_HEADER && q[2] & 0x80 == 0 && u16::from_be_bytes([q[4], q[5]]) >= 1
}

/// A DNS message with its 2-byte length prefix (DNS over TCP framing).
fn framed(m: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(m.len() + 2);
    msg.extend_from_slice(&(m.len() as u16).to_be_bytes());
    msg.extend_from_slice(m);
    msg
}

/// One query over a connection to the DNS socket; the answer, if it came
/// in time and carries the query's id.
async fn ask(conn: &mut UnixStream, q: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        conn.write_all(&framed(q)).await.ok()?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.ok()?;
        let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
        conn.read_exact(&mut a).await.ok()?;
        Some(a)
    };
    let a = tokio::time::timeout(DNS_TIMEOUT, exchange).await.ok()??;
    (a.len() >= DNS_HEADER && a[..2] == q[..2]).then_some(a)
}

async fn dns_udp(sock: UdpSocket, config: Rc<ForwarderConfig>, inflight: Arc<Semaphore>) {
    let sock = Rc::new(sock);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            // A lasting error must not spin the forwarder: pause, retry.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let q = &buf[..n];
        if !valid_query(q) {
            continue;
        }
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            continue;
        };
        let q = q.to_vec();
        let (sock, config) = (sock.clone(), config.clone());
        tokio::task::spawn_local(async move {
            let conn = tokio::time::timeout(DNS_TIMEOUT, UnixStream::connect(&config.dns)).await;
            if let Ok(Ok(mut conn)) = conn {
                if let Some(a) = ask(&mut conn, &q).await {
                    let _ = sock.send_to(&a, from).await;
                }
            }
            drop(permit);
        });
    }
}

async fn dns_tcp(l: TcpListener, config: Rc<ForwarderConfig>, inflight: Arc<Semaphore>) {
    accept_each(l, inflight, move |client, _| {
        let config = config.clone();
        async move { dns_tcp_client(client, &config).await }
    })
    .await
}

async fn dns_tcp_client(mut client: TcpStream, config: &ForwarderConfig) {
    let Ok(Ok(mut up)) = tokio::time::timeout(DNS_TIMEOUT, UnixStream::connect(&config.dns)).await
    else {
        return reset(client);
    };
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(DNS_TCP_IDLE, client.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(DNS_TIMEOUT, client.read_exact(&mut q)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        // A malformed query ends the connection (framing is all there is).
        if !valid_query(&q) {
            return;
        }
        let Some(a) = ask(&mut up, &q).await else {
            return;
        };
        if client.write_all(&framed(&a)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms() {
        let h = proxy_header(
            "127.0.0.1:40000".parse().unwrap(),
            "93.184.216.34:443".parse().unwrap(),
        );
        assert_eq!(h, "PROXY TCP4 127.0.0.1 93.184.216.34 40000 443\r\n");
        let h = proxy_header(
            "[::ffff:127.0.0.1]:1".parse().unwrap(),
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
        );
        assert_eq!(h, "PROXY TCP4 127.0.0.1 10.0.0.1 1 80\r\n");
        let h = proxy_header("[::1]:5".parse().unwrap(), "[::1]:3128".parse().unwrap());
        assert_eq!(h, "PROXY TCP6 ::1 ::1 5 3128\r\n");
    }

    #[test]
    fn queries() {
        let mut q = vec![0u8; 12];
        assert!(!valid_query(&q), "no question");
        q[5] = 1;
        assert!(valid_query(&q));
        q[2] = 0x80;
        assert!(!valid_query(&q), "a response is not a query");
        assert!(!valid_query(&[0; 5]));
    }
}
