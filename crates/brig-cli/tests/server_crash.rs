//! Crash reconciliation (as root): `brig serve` killed with SIGKILL mid
//! session, restarted: the session is marked failed and nothing of its
//! sandbox is left on the host.

mod server_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use server_support::*;

fn spawn_serve(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_brig"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn brig serve")
}

async fn wait_healthy(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = brig_server::client::request(sock, "GET", "/healthz", None).await {
            return;
        }
        assert!(Instant::now() < deadline, "brig serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_then_restart_leaves_nothing_behind() {
    require_root!();
    let dir = data_dir();
    let sock = dir.path().join("brig.sock");
    let config = dir.path().join("brig.toml");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\nsocket = {:?}\n", dir.path(), sock),
    )
    .unwrap();

    let mut serve = spawn_serve(&config);
    wait_healthy(&sock).await;
    let call = |m: &'static str, p: String, b: Option<serde_json::Value>| {
        let sock = sock.clone();
        async move {
            brig_server::client::request(&sock, m, &p, b.as_ref())
                .await
                .unwrap()
        }
    };
    let (s, v) = call(
        "POST",
        "/v1/sessions".into(),
        Some(json!({"task": "T-crash"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        "POST",
        format!("/v1/sessions/{id}/exec"),
        Some(json!({"argv": ["sh", "-c", "echo hi > f"]})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(brig_sandbox::workspace::session_dir(dir.path(), &id).exists());
    // The warm pool (on by default) has a sandbox of its own waiting: the
    // crash leaves it too.
    let deadline = Instant::now() + Duration::from_secs(20);
    while brig_server::client::request_raw(&sock, "GET", "/metrics", None)
        .await
        .map(|(_, b)| !String::from_utf8_lossy(&b).contains("\nbrig_pool_ready 1\n"))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the pool never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sessions = brig_sandbox::workspace::sessions_dir(dir.path());
    assert_eq!(std::fs::read_dir(&sessions).unwrap().count(), 2);

    serve.kill().unwrap(); // SIGKILL
    serve.wait().unwrap();

    let mut serve = spawn_serve(&config);
    wait_healthy(&sock).await;
    let (_, v) = call("GET", format!("/v1/sessions/{id}"), None).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["end_reason"], "brig serve restarted");
    assert_gone(dir.path(), &id);
    // The pooled sandbox too (it has no session row; reconcile keeps nothing).
    let left: Vec<_> = std::fs::read_dir(&sessions)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left after reconcile: {left:?}");
    let (_, live) = call("GET", "/v1/sessions".into(), None).await;
    assert_eq!(live, json!([]));

    // A clean stop removes the socket.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let st = serve.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists());
}
