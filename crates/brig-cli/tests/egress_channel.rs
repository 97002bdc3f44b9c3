//! The sandbox side of the egress channel (issue 4), in real sandboxes (as
//! root): a fake host proxy binds the session's egress sockets with
//! `brig_sandbox::egress::bind_egress_socket` and records what arrives;
//! programs inside use the proxy variables, connect to IP literals, resolve
//! names, and try every other way out.

mod sandbox_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::session::{Limits, RuntimeKind};
use brig_sandbox::egress::{self, bind_egress_socket, DNS_SOCK, PROXY_SOCK};
use brig_sandbox::Sandbox;
use sandbox_support::*;

/// What the fake proxy saw: one (header line, first bytes) per stream, and
/// the names the fake DNS server was asked.
#[derive(Default)]
struct Seen {
    streams: Vec<(String, String)>,
    names: Vec<String>,
}

struct FakeProxy {
    seen: Arc<Mutex<Seen>>,
}

impl FakeProxy {
    fn start(sb: &Sandbox) -> FakeProxy {
        let dir = egress::host_dir(sb.session_dir());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let serve = |name: &str, f: fn(UnixStream, &Mutex<Seen>)| {
            let l = bind_egress_socket(&dir, name).unwrap_or_else(|e| panic!("bind {name}: {e}"));
            let s = seen.clone();
            std::thread::spawn(move || {
                for c in l.incoming().flatten() {
                    let s = s.clone();
                    std::thread::spawn(move || f(c, &s));
                }
            });
        };
        serve(PROXY_SOCK, serve_stream);
        serve(DNS_SOCK, serve_dns);
        FakeProxy { seen }
    }

    fn streams(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().streams.clone()
    }

    /// `curl` fetched http://example.test/ through HTTP_PROXY: it got the
    /// fake answer, and its stream came from 127.0.0.1 to port 3128. The
    /// streams seen so far.
    fn assert_explicit_request(&self, curl: &Output) -> Vec<(String, String)> {
        assert_eq!(curl.code, Some(0), "{curl:?}");
        assert_eq!(curl.stdout.trim(), "fake-ok");
        let streams = self.streams();
        let ex = streams
            .iter()
            .find(|(_, b)| b.starts_with("GET http://example.test/"))
            .unwrap_or_else(|| panic!("no explicit-proxy stream: {streams:?}"));
        let h: Vec<&str> = ex.0.trim_end().split(' ').collect();
        assert_eq!((h[3], h[5]), ("127.0.0.1", "3128"), "{ex:?}");
        streams
    }
}

/// Header line, then one chunk; answers like an HTTP proxy to a request,
/// otherwise `pong:` + the chunk; then keeps echoing until EOF.
fn serve_stream(c: UnixStream, seen: &Mutex<Seen>) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut header = String::new();
    if r.read_line(&mut header).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let n = r.read(&mut buf).unwrap_or(0);
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    seen.lock()
        .unwrap()
        .streams
        .push((header.clone(), first.clone()));
    let mut w = c;
    if first.starts_with("GET ") {
        let _ = w.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nfake-ok\r\n");
        return;
    }
    let _ = w.write_all(format!("pong:{first}").as_bytes());
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = w.write_all(&buf[..n]);
            }
        }
    }
    // The program half-closed: answer once more, then end our side too.
    let _ = w.write_all(b"bye");
}

/// DNS over TCP framing: A queries for anything get 192.0.2.55, others an
/// empty NOERROR answer.
fn serve_dns(mut c: UnixStream, seen: &Mutex<Seen>) {
    loop {
        let mut len = [0u8; 2];
        if c.read_exact(&mut len).is_err() {
            return;
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        if c.read_exact(&mut q).is_err() || q.len() < 12 {
            return;
        }
        // The question: labels, then type and class.
        let mut i = 12;
        let mut name = vec![];
        while i < q.len() && q[i] != 0 {
            let l = q[i] as usize;
            name.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + l).min(q.len())]).into_owned());
            i += 1 + l;
        }
        let qend = i + 5;
        if qend > q.len() {
            return;
        }
        let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
        seen.lock().unwrap().names.push(name.join("."));
        let mut a = q[..qend].to_vec();
        a[2] = 0x81;
        a[3] = 0x80;
        a[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
        if qtype == 1 {
            a[7] = 1;
            a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 55]);
        }
        let mut msg = (a.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(&a);
        if c.write_all(&msg).is_err() {
            return;
        }
    }
}

/// Every check inside: one line `name: result` each.
const INSIDE: &str = r#"
import socket, sys, time, os
def line(k, v): print(f"{k}: {v}", flush=True)
def tcp(host, port, send=b"ping", fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host, port))
    except OSError as e:
        return f"connect-failed {type(e).__name__} {e.errno} in {time.monotonic() - t:.2f}"
    try:
        s.sendall(send)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(4096)
            if not b: break
            got += b
        return f"got {got!r} in {time.monotonic() - t:.2f}"
    except OSError as e:
        return f"closed {type(e).__name__} in {time.monotonic() - t:.2f}"
def tcp_rr(host, port):
    # A request and its answer, no half-close: what TLS and HTTP do.
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((host, port)); s.sendall(b"ping")
        got = b""
        while len(got) < 9:
            b = s.recv(4096)
            if not b: break
            got += b
        return f"got {got!r}"
    except OSError as e:
        return f"failed {type(e).__name__} {e.errno}"
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
    try:
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01", (host, port))
        return f"answer {s.recvfrom(512)[0]!r}"
    except OSError as e:
        return f"nothing {type(e).__name__}"
mode = sys.argv[1]
line("env", os.environ.get("HTTPS_PROXY"))
line("transparent", tcp("93.184.216.34", 443))
line("transparent-rr", tcp_rr("93.184.216.34", 443))
line("port22", tcp("1.2.3.4", 22))
line("udp-dns", udp("8.8.8.8", 53))
line("quic", udp("1.2.3.4", 443))
line("ipv6", tcp("2606:2800:220:1:248:1893:25c8:1946", 443, fam=socket.AF_INET6))
if mode == "tamper":
    import subprocess
    for f in ["proxy.sock", "resolv.conf"]:
        try:
            os.unlink("/.brig/egress/" + f); line("unlink-" + f, "done")
        except OSError as e:
            line("unlink-" + f, f"refused {e.errno}")
    r = subprocess.run(["/usr/sbin/ip", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", "local"], capture_output=True, text=True)
    line("route-del", f"exit {r.returncode} {r.stderr.strip()}")
    r = subprocess.run(["/usr/sbin/ip", "route", "show", "table", "local"], capture_output=True, text=True)
    line("route-show", "anyip" if any(l.startswith("local default") or l.startswith("local 0.0.0.0/0") for l in r.stdout.splitlines()) else r.stdout.replace("\n", " | "))
if mode == "served":
    line("resolve", sorted({a[4][0] for a in socket.getaddrinfo("example.test", 443, socket.AF_INET)}))
    line("udp-local", udp("127.0.0.53", 53)[:40])
"#;

fn field<'a>(out: &'a str, k: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{k}: ")))
        .unwrap_or_else(|| panic!("no {k} in {out}"))
}

async fn inside(sb: &Sandbox, mode: &str) -> String {
    let o = run(sb, &["/usr/bin/python3", "-c", INSIDE, mode]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    o.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_egress_channel() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host_floor =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let env = TestEnv::new();
    let sb = env.create(RuntimeKind::Native, Limits::default()).await;
    assert!(
        sb.layers.iter().any(|l| l == egress::LAYER_TRANSPARENT),
        "{:?}",
        sb.layers
    );
    // The host's own settings are untouched: only the sandbox's netns changed.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
        host_floor
    );
    let dir = egress::host_dir(sb.session_dir());
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o751, "egress dir mode");
    assert_eq!(meta.uid(), 0);

    // Nobody serves yet: every way out is closed at once.
    let out = inside(&sb, "unserved").await;
    eprintln!("unserved:\n{out}");
    assert_eq!(field(&out, "env"), "http://127.0.0.1:3128");
    let t = field(&out, "transparent");
    // Accepted by the forwarder and reset at once (the reset may even
    // beat the end of the program's connect).
    assert!(
        t.starts_with("closed")
            || t.starts_with("got b''")
            || t.starts_with("connect-failed ConnectionResetError"),
        "unserved transparent connect: {t}"
    );
    let secs: f64 = t.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs < 1.0, "not refused at once: {t}");
    let curl = run(
        &sb,
        &["/usr/bin/curl", "-sS", "-m", "5", "http://example.test/"],
    )
    .await;
    assert_ne!(curl.code, Some(0), "curl without a proxy: {curl:?}");

    // A host service on loopback: the sandbox's 127.0.0.1 is its own.
    let host_srv = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_srv.local_addr().unwrap().port();
    host_srv.set_nonblocking(true).unwrap();

    let proxy = FakeProxy::start(&sb);
    let out = inside(&sb, "served").await;
    eprintln!("served:\n{out}");
    let t = field(&out, "transparent");
    assert!(t.starts_with("got b'pong:pingbye'"), "transparent: {t}");
    assert_eq!(field(&out, "transparent-rr"), "got b'pong:ping'", "{out}");
    assert!(field(&out, "port22").starts_with("connect-failed ConnectionRefusedError"));
    assert!(field(&out, "udp-dns").starts_with("nothing"), "{out}");
    assert!(field(&out, "quic").starts_with("nothing"), "{out}");
    assert!(field(&out, "ipv6").starts_with("connect-failed"), "{out}");
    assert_eq!(field(&out, "resolve"), "['192.0.2.55']");
    assert!(field(&out, "udp-local").starts_with("answer"), "{out}");

    let streams = proxy.streams();
    let tr = streams
        .iter()
        .find(|(h, _)| h.contains(" 93.184.216.34 "))
        .unwrap_or_else(|| panic!("no transparent stream: {streams:?}"));
    let h: Vec<&str> = tr.0.trim_end().split(' ').collect();
    assert_eq!(h[..2], ["PROXY", "TCP4"], "{tr:?}");
    assert_eq!((h[3], h[5]), ("93.184.216.34", "443"), "{tr:?}");
    assert!(tr.0.ends_with("\r\n"));
    assert_eq!(tr.1, "ping");
    assert!(
        !streams.iter().any(|(h, _)| h.contains(" 1.2.3.4 ")),
        "port 22 / QUIC reached the proxy: {streams:?}"
    );
    assert!(proxy
        .seen
        .lock()
        .unwrap()
        .names
        .iter()
        .any(|n| n == "example.test"));

    // HTTP_PROXY from the environment init gives every command.
    let curl = run(
        &sb,
        &["/usr/bin/curl", "-sS", "-m", "5", "http://example.test/"],
    )
    .await;
    proxy.assert_explicit_request(&curl);

    // The sandbox cannot take the channel apart: read-only mount, no
    // capability over its network namespace.
    let out = inside(&sb, "tamper").await;
    eprintln!("tamper:\n{out}");
    for k in ["unlink-proxy.sock", "unlink-resolv.conf"] {
        assert_eq!(field(&out, k), "refused 30", "EROFS: {out}");
    }
    assert!(field(&out, "route-del").starts_with("exit 2"), "{out}");
    assert_eq!(field(&out, "route-show"), "anyip", "{out}");

    // Nobody else on the host can connect to the session's sockets.
    let sock = dir.join(PROXY_SOCK);
    let o = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import socket,sys\ntry:\n socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('connected')\nexcept OSError as e: print('refused', e.errno)")
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "refused 13",
        "{o:?}"
    );

    // The host's loopback service stays out of reach.
    let o = run(
        &sb,
        &[
            "/usr/bin/python3",
            "-c",
            "import socket,sys\ntry:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3); print('reached')\nexcept OSError as e: print('refused', e.errno)",
            &host_port.to_string(),
        ],
    )
    .await;
    assert!(o.stdout.starts_with("refused"), "{o:?}");
    assert!(host_srv.accept().is_err(), "the host's service was reached");

    // The forwarder dies: connections fail closed until init restarted it.
    let o = run(
        &sb,
        &[
            "/bin/sh",
            "-c",
            "for p in /proc/[0-9]*; do [ ${p#/proc/} = $$ ] && continue; grep -q sandbox-forwarder $p/cmdline 2>/dev/null && kill -9 ${p#/proc/} && echo killed; done; true",
        ],
    )
    .await;
    assert!(o.stdout.contains("killed"), "{o:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = inside(&sb, "served").await;
    assert!(
        field(&out, "transparent").starts_with("got b'pong:pingbye'"),
        "after a restart: {out}"
    );

    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
}

/// An OCI runtime binary (runc here; crun refuses this host's hybrid
/// cgroups) gets the same channel as native: brig routes the netns of the
/// init the runtime left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_runc_egress_channel() {
    let runc = "/usr/sbin/runc";
    if !is_root() || !std::path::Path::new(runc).exists() {
        eprintln!("skipped: needs root and {runc}");
        return;
    }
    let env = TestEnv::new();
    let req = env.request(RuntimeKind::Oci { path: runc.into() }, Limits::default());
    let sb = Sandbox::create_with_image(&env.paths, req, env.host_image())
        .await
        .unwrap_or_else(|e| panic!("create failed: {e}"));
    assert!(
        sb.layers.iter().any(|l| l == egress::LAYER_TRANSPARENT),
        "{:?}",
        sb.layers
    );
    let proxy = FakeProxy::start(&sb);
    let out = inside(&sb, "served").await;
    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
    assert!(
        field(&out, "transparent").starts_with("got b'pong:pingbye'"),
        "{out}"
    );
    assert!(field(&out, "port22").starts_with("connect-failed ConnectionRefusedError"));
    assert!(field(&out, "udp-dns").starts_with("nothing"), "{out}");
    assert!(field(&out, "ipv6").starts_with("connect-failed"), "{out}");
    assert_eq!(field(&out, "resolve"), "['192.0.2.55']");
    assert!(proxy
        .streams()
        .iter()
        .any(|(h, _)| h.starts_with("PROXY TCP4 ") && h.contains(" 93.184.216.34 ")));
}

/// gVisor: its network stack is the Sentry's, which brig cannot route from
/// outside; `brig sandbox-anyip`, run inside before the sandbox is ready,
/// makes every IPv4 destination local there, so the same channel as native
/// is served (`egress:transparent`): the explicit proxy, DNS, and 80/443 to
/// any address caught with its original destination; every other way out
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_egress_channel() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = TestEnv::new();
    let sb = env.create(RuntimeKind::Gvisor, Limits::default()).await;
    assert!(
        sb.layers.iter().any(|l| l == egress::LAYER_TRANSPARENT),
        "{:?}",
        sb.layers
    );
    // gVisor checks the socket's permission against the sandbox's gid as
    // is (1000, maybe a real host group): the session dir is root's alone.
    use std::os::unix::fs::MetadataExt;
    let sd = std::fs::metadata(sb.session_dir()).unwrap();
    assert_eq!(sd.mode() & 0o777, 0o700, "gVisor session dir mode");

    // Under gVisor the session dir is root's alone: no host user gets near
    // the sockets (checked once they are bound, below).
    let unserved = run(
        &sb,
        &["/usr/bin/curl", "-sS", "-m", "5", "http://example.test/"],
    )
    .await;
    assert_ne!(unserved.code, Some(0), "{unserved:?}");

    let proxy = FakeProxy::start(&sb);
    let curl = run(
        &sb,
        &["/usr/bin/curl", "-sS", "-m", "5", "http://example.test/"],
    )
    .await;
    let out = inside(&sb, "served").await;
    eprintln!("gvisor:\n{out}");
    let o = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import socket,sys\ntry:\n socket.socket(socket.AF_UNIX).connect(sys.argv[1]); print('connected')\nexcept OSError as e: print('refused', e.errno)")
        .arg(egress::host_dir(sb.session_dir()).join(PROXY_SOCK))
        .output()
        .unwrap();
    let host_user = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");

    let streams = proxy.assert_explicit_request(&curl);
    assert_eq!(field(&out, "env"), "http://127.0.0.1:3128");
    // A connect to any address on 443 is caught with its destination and
    // carries data both ways. (gVisor's host sockets do not pass a
    // half-close on to the host, so the `transparent` probe, which shuts
    // its write side and waits for the end, does not end here.)
    assert_eq!(field(&out, "transparent-rr"), "got b'pong:ping'", "{out}");
    for k in ["port22", "ipv6"] {
        assert!(field(&out, k).starts_with("connect-failed"), "{k}: {out}");
    }
    assert!(field(&out, "udp-dns").starts_with("nothing"), "{out}");
    assert!(field(&out, "quic").starts_with("nothing"), "{out}");
    assert_eq!(field(&out, "resolve"), "['192.0.2.55']");
    let caught: Vec<_> = streams
        .iter()
        .filter(|(h, _)| h.starts_with("PROXY TCP4 ") && h.contains(" 93.184.216.34 "))
        .collect();
    assert_eq!(caught.len(), 2, "the transparent connects: {streams:?}");
    assert_eq!(
        streams.len(),
        3,
        "only the explicit request and the caught connects: {streams:?}"
    );
    assert_eq!(
        host_user, "refused 13",
        "host uid/gid 1000 reached the socket"
    );
}

/// Init does not report ready without its forwarder listening: here (init
/// run on the host, where `/.brig` does not exist) the forwarder cannot
/// start, and init's answer is `Fatal` naming the layer `egress`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_without_its_forwarder_is_not_ready() {
    let cfg = serde_json::json!({
        "rw_paths": [],
        "landlock": false,
        "seccomp": false,
        "egress": egress::ForwarderConfig::new(true),
    })
    .to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_brig"))
        .arg("sandbox-init")
        .arg(&cfg)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let chan = brig_sandbox::channel::Channel::new(
        child.stdin.take().unwrap(),
        child.stdout.take().unwrap(),
    );
    let e = chan.wait_ready(Duration::from_secs(20)).await.unwrap_err();
    assert!(e.message.contains("'egress'"), "{e}");
    assert!(e.message.contains("forwarder"), "{e}");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

/// A step of the egress setup that cannot be done names the layer.
#[test]
fn egress_setup_fails_closed_naming_the_layer() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let e = egress::setup_netns(i32::MAX).unwrap_err();
    assert!(e.message.contains("'egress'"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let e = bind_egress_socket(d.path(), PROXY_SOCK).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
}

/// With a CA to trust (brig's egress CA), the sandbox's system bundle and
/// `/.brig/egress/ca-bundle.pem` are the image's CAs followed by it, on
/// `native` and `gvisor` alike; without one, the image's bundle is as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_bundle_adds_brigs_ca_to_the_images() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let host = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    let pem = "-----BEGIN CERTIFICATE-----\nYnJpZy10ZXN0LWNh\n-----END CERTIFICATE-----\n";
    let env = TestEnv::new();
    // The real `host` image (its generated /etc has the host's bundle).
    let paths = env.paths.clone();
    let image = move || brig_sandbox::image::resolve(&paths, "host").unwrap();
    for runtime in [RuntimeKind::Native, RuntimeKind::Gvisor] {
        let mut req = env.request(runtime.clone(), Limits::default());
        req.trust_ca = Some(pem.to_string());
        let sb = Sandbox::create_with_image(&env.paths, req, image())
            .await
            .unwrap_or_else(|e| panic!("{runtime:?}: {e}"));
        for path in ["/etc/ssl/certs/ca-certificates.crt", egress::CA_BUNDLE_PATH] {
            let out = run(&sb, &["/bin/cat", path]).await;
            assert_eq!(out.code, Some(0), "{runtime:?} {path}: {}", out.stderr);
            assert!(
                out.stdout.ends_with(pem),
                "{runtime:?} {path}: ends {:?}",
                &out.stdout[out.stdout.len().saturating_sub(80)..]
            );
            assert!(
                out.stdout.starts_with(&host[..host.len().min(200)]),
                "{runtime:?} {path}"
            );
        }
        // Read-only like the rest of the image.
        let out = run(
            &sb,
            &[
                "/bin/sh",
                "-c",
                "echo x >> /etc/ssl/certs/ca-certificates.crt",
            ],
        )
        .await;
        assert_ne!(out.code, Some(0), "{runtime:?}");
        sb.destroy().await;
    }
    let req = env.request(RuntimeKind::Native, Limits::default());
    let sb = Sandbox::create_with_image(&env.paths, req, image())
        .await
        .unwrap();
    let out = run(&sb, &["/bin/cat", "/etc/ssl/certs/ca-certificates.crt"]).await;
    assert_eq!(out.stdout, host);
    let out = run(&sb, &["/bin/cat", egress::CA_BUNDLE_PATH]).await;
    assert_ne!(out.code, Some(0));
    sb.destroy().await;
}
