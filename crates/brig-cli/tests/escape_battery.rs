//! The escape battery: real attacks run inside real sandboxes of every
//! runtime that must pass it (`native`, `gvisor`), each of which must be
//! blocked. The attacks live in `escape/probe.py` (one attack per exec, so
//! each is its own process with its own exit code); the host side plants
//! canaries, listens on loopback and unix sockets, and checks that nothing
//! reached them and that the host is fine afterwards.

mod sandbox_support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use brig_core::session::{Limits, RuntimeKind};
use brig_sandbox::Sandbox;
use sandbox_support::*;

const PROBE: &str = include_str!("escape/probe.py");
const PIDS: u64 = 64;
const DISK_MIB: u64 = 16;

fn battery_limits() -> Limits {
    Limits {
        cpu_millis: 1000,
        memory_bytes: 256 << 20,
        pids: PIDS,
        disk_bytes: DISK_MIB << 20,
        tmp_bytes: 8 << 20,
        ..Limits::default()
    }
}

async fn probe(sb: &Sandbox, attack: &str, args: &[&str]) -> Output {
    let mut argv = vec!["/usr/bin/python3", "-c", PROBE, attack];
    argv.extend_from_slice(args);
    run(sb, &argv).await
}

/// Host-side bait: a loopback TCP service, a unix socket standing in for
/// brig's API socket, an abstract unix socket and a canary file. Counts
/// every connection that reaches it.
struct Bait {
    tcp_port: u16,
    unix_path: std::path::PathBuf,
    abstract_name: String,
    canary: std::path::PathBuf,
    hits: Arc<AtomicUsize>,
}

impl Bait {
    fn new(dir: &std::path::Path) -> Bait {
        let hits = Arc::new(AtomicUsize::new(0));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in tcp.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
        let unix_path = dir.join("brig.sock");
        let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
        std::fs::set_permissions(&unix_path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in unix.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
        static N: AtomicUsize = AtomicUsize::new(0);
        let abstract_name = format!(
            "brig-bait-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            abstract_name.as_bytes(),
        )
        .unwrap();
        let abs = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let h = hits.clone();
        std::thread::spawn(move || {
            for c in abs.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                drop(c);
            }
        });
        let canary = dir.join("canary-secret.txt");
        std::fs::write(&canary, "brig-canary-do-not-read").unwrap();
        std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o644)).unwrap();
        Bait {
            tcp_port,
            unix_path,
            abstract_name,
            canary,
            hits,
        }
    }
}

fn host_can_fork() -> bool {
    std::process::Command::new("/bin/true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Every attack, against sandbox `a`, with `b` as the neighbour session.
async fn run_battery(env: &TestEnv, a: &Sandbox, b: &Sandbox, runtime: &str) {
    let bait = Bait::new(env.data.path());
    let port = bait.tcp_port.to_string();
    let abstract_arg = format!("@{}", bait.abstract_name);
    let b_workspace = b.session_dir().join("workspace");
    let b_root = format!("/proc/{}/root/workspace", b.init_pid().unwrap_or(1));

    // A neighbour's secret and a setuid-root binary planted by the host.
    sh_ok(b, "echo neighbour-secret > /workspace/secret.txt").await;
    let suid = a.session_dir().join("workspace/suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    std::os::unix::fs::chown(&suid, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let canary = bait.canary.to_string_lossy().into_owned();
    let data_dir = env.data.path().to_string_lossy().into_owned();
    let unix_path = bait.unix_path.to_string_lossy().into_owned();
    let b_ws = b_workspace.to_string_lossy().into_owned();
    let b_secret = b_workspace
        .join("secret.txt")
        .to_string_lossy()
        .into_owned();
    let pids = PIDS.to_string();
    let disk = DISK_MIB.to_string();
    let attacks: Vec<(&str, Vec<&str>)> = vec![
        (
            "read-host-file",
            vec![&canary, "/etc/ssh/sshd_config", "/var/lib/dpkg/status"],
        ),
        ("write-rootfs", vec![]),
        ("mount", vec![]),
        ("ptrace", vec![]),
        ("unshare", vec![]),
        ("setns", vec![]),
        ("raw-socket", vec![]),
        ("connect-tcp", vec!["127.0.0.1", &port]),
        ("connect-tcp", vec!["::1", &port]),
        ("connect-tcp", vec!["1.1.1.1", "443"]),
        ("connect-tcp", vec!["203.0.113.7", "443"]),
        ("connect-tcp", vec!["10.0.2.2", "22"]),
        ("connect-unix", vec![&unix_path, &abstract_arg]),
        ("read-path", vec![&b_ws, &b_secret, &b_root, &data_dir]),
        ("setuid", vec!["/workspace/suid-id", "-u"]),
        ("proc-sys-write", vec![]),
        ("device-nodes", vec![]),
        ("keyring", vec![]),
        ("bpf", vec![]),
        ("io-uring", vec![]),
        ("kernel-modules", vec![]),
        ("disk-fill", vec![&disk]),
        ("fork-bomb", vec![&pids]),
    ];
    let mut escapes = vec![];
    for (attack, args) in &attacks {
        let o = probe(a, attack, args).await;
        eprintln!(
            "[{runtime}] {attack} {args:?}: {} {}",
            o.stdout.trim(),
            o.stderr.trim()
        );
        if o.code != Some(0) || !o.stdout.starts_with("BLOCKED") {
            escapes.push(format!("{attack} {args:?}: {o:?}"));
        }
    }
    // The memory bomb must be killed by the OOM killer of the session's own
    // cgroup. On the host kernel (native) that kills the bomb alone and the
    // sandbox lives on. Under gVisor all guest memory belongs to the Sentry,
    // so the session's OOM ends the whole sandbox: contained, but fatal to
    // the session (documented in docs/ISOLATION.md).
    let o = probe(a, "memory-bomb", &["4096"]).await;
    eprintln!("[{runtime}] memory-bomb: {o:?}");
    if runtime == "gvisor" {
        let killed = o.signal == Some(9) || o.failed.is_some();
        if !killed {
            escapes.push(format!("memory-bomb was not stopped: {o:?}"));
        }
    } else {
        if o.signal != Some(9) {
            escapes.push(format!("memory-bomb was not OOM-killed: {o:?}"));
        }
        let after = run(a, &["/bin/true"]).await;
        assert_eq!(
            after.code,
            Some(0),
            "[{runtime}] sandbox unusable after the memory bomb: {after:?}"
        );
    }
    // The neighbour is untouched by all of it.
    let b_after = run(b, &["/bin/cat", "/workspace/secret.txt"]).await;
    assert_eq!(
        b_after.stdout.trim(),
        "neighbour-secret",
        "[{runtime}] neighbour harmed: {b_after:?}"
    );

    assert!(
        escapes.is_empty(),
        "[{runtime}] escapes:\n{}",
        escapes.join("\n")
    );
    assert_eq!(
        bait.hits.load(Ordering::SeqCst),
        0,
        "[{runtime}] a host service was reached"
    );
    assert!(
        host_can_fork(),
        "[{runtime}] host cannot fork after the fork bomb"
    );
    let mut s = String::new();
    std::fs::File::open(&bait.canary)
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "brig-canary-do-not-read");
}

async fn battery_for(runtime: RuntimeKind, name: &str, limits: Limits) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = TestEnv::new();
    let a = env.create(runtime.clone(), limits.clone()).await;
    let b = env.create(runtime, limits).await;
    run_battery(&env, &a, &b, name).await;
    let (ia, ib) = (a.init_pid(), b.init_pid());
    let ra = a.destroy().await;
    let rb = b.destroy().await;
    assert!(ra.clean() && rb.clean(), "{ra:?} {rb:?}");
    assert_nothing_left(&env, &a.id, ia);
    assert_nothing_left(&env, &b.id, ib);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_battery_native() {
    battery_for(RuntimeKind::Native, "native", battery_limits()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_battery_gvisor() {
    // Under gVisor guest memory is the Sentry's: give the fork bomb room
    // so it meets the pids limit (RLIMIT_NPROC inside) before memory.
    let limits = Limits {
        memory_bytes: 1 << 30,
        ..battery_limits()
    };
    battery_for(RuntimeKind::Gvisor, "gvisor", limits).await;
}
