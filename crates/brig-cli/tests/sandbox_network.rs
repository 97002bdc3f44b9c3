//! The network inside a sandbox is loopback only: `lo` is up (a test
//! server on 127.0.0.1 works, as agents' test suites expect), and nothing
//! else exists: no other interface, no route out. The one way out is the
//! egress channel (egress_channel.rs): on native every IPv4 address is
//! local and 80/443 are the sandbox's own forwarder, which with no proxy
//! serving (as here) resets the connection at once; gVisor has no route.

mod sandbox_support;

use brig_core::session::{Limits, RuntimeKind};
use sandbox_support::*;

const LOOPBACK_ONLY: &str = r#"
import socket, threading, os
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept(); c.sendall(b"pong"); c.close()
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(("127.0.0.1", port), timeout=3)
assert c.recv(4) == b"pong"
print("loopback ok")
ifaces = sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else ["?"]
print("ifaces", ifaces)
try:
    c = socket.create_connection(("1.1.1.1", 443), timeout=3)
    c.sendall(b"hello")
    if c.recv(1) == b"":
        print("outside blocked: accepted inside, closed")
    else:
        print("outside reachable")
except TimeoutError:
    print("outside reachable: held open")
except OSError as e:
    print("outside blocked", e.errno)
"#;

async fn check(runtime: RuntimeKind) {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = TestEnv::new();
    let sb = env.create(runtime, Limits::default()).await;
    let out = sh_ok(&sb, &format!("python3 -c '{LOOPBACK_ONLY}'")).await;
    assert!(out.contains("loopback ok"), "{out}");
    assert!(out.contains("outside blocked"), "{out}");
    assert!(!out.contains("outside reachable"), "{out}");
    if let Some(line) = out.lines().find(|l| l.starts_with("ifaces")) {
        // /sys/class/net may be hidden (gVisor); where it is visible only lo exists.
        assert!(line == "ifaces ['lo']" || line == "ifaces ['?']", "{line}");
    }
    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_has_loopback_and_nothing_else() {
    check(RuntimeKind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_has_loopback_and_nothing_else() {
    check(RuntimeKind::Gvisor).await;
}
