//! The control plane end to end with real sandboxes (as root): create, exec
//! (buffered and attached), journal, destroy leaving nothing behind.

mod server_support;

use std::time::Duration;

use brig_core::wire::{self, Decoder, Frame, Kind};
use serde_json::{json, Value};
use server_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lifecycle_exec_journal_destroy() {
    require_root!();
    let srv = Srv::start().await;
    let proj = project();
    let info = srv
        .create(json!({"task": "JIRA-7", "repo": proj.path(), "human": "ada"}))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(info["state"], "running");
    assert_eq!(info["principal"], format!("agent:{id}"));
    assert!(
        info["image_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{info}"
    );
    assert!(!info["layers"].as_array().unwrap().is_empty(), "{info}");
    assert!(info["started_at"].is_string());

    // The repo was copied into /workspace, which is the default cwd.
    let r = srv.exec(&id, &["cat", "README"]).await;
    assert_eq!(r["stdout"], "hello from the repo\n", "{r}");
    assert_eq!(r["status"]["code"], 0);
    assert_eq!(r["stdout_bytes"], 20);
    let r = srv.exec(&id, &["pwd"]).await;
    assert_eq!(r["stdout"], "/workspace\n");
    // A clean environment: the profile's, not the server's.
    std::env::set_var("BRIG_TEST_LEAK", "secret");
    let r = srv.exec(&id, &["env"]).await;
    assert!(
        !r["stdout"].as_str().unwrap().contains("BRIG_TEST_LEAK"),
        "{r}"
    );
    let r = srv
        .exec_req(
            &id,
            json!({"argv": ["sh", "-c", "echo $X; exit 3"], "env": [["X", "42"]]}),
        )
        .await;
    assert_eq!(r["stdout"], "42\n");
    assert_eq!(r["status"]["code"], 3);
    // stdin, whole.
    let r = srv
        .exec_req(&id, json!({"argv": ["wc", "-c"], "stdin": "12345"}))
        .await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "5");
    // Output past 1 MiB is dropped, counts stay exact.
    let r = srv.exec(&id, &["head", "-c", "3000000", "/dev/zero"]).await;
    assert_eq!(r["stdout_bytes"], 3_000_000);
    assert_eq!(r["truncated"], true);
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1 << 20);
    // Per-command timeout: killed, reported as timed out.
    let t0 = std::time::Instant::now();
    let r = srv
        .exec_req(&id, json!({"argv": ["sleep", "30"], "timeout_ms": 300}))
        .await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(r["status"]["timed_out"], true, "{r}");
    assert_eq!(r["status"]["signal"], 9, "{r}");
    // A program that does not exist: a clear error.
    let (s, v) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"argv": ["no-such-prog"]})),
        )
        .await;
    assert!(s >= 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-prog"),
        "{v}"
    );

    // The journal has every exec with counts, never the output.
    let (_, evs) = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    let evs = evs.as_array().unwrap();
    let actions: Vec<&str> = evs.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions[0], "session.create");
    assert!(
        actions.iter().filter(|a| **a == "exec.start").count() >= 8,
        "{actions:?}"
    );
    let cat_exit = evs
        .iter()
        .find(|e| e["action"] == "exec.exit" && e["details"]["stdout_bytes"] == 20)
        .expect("exec.exit of cat");
    assert_eq!(cat_exit["details"]["code"], 0);
    assert_eq!(cat_exit["agent"], format!("agent:{id}"));
    assert_eq!(cat_exit["task"], "JIRA-7");
    let all = serde_json::to_string(evs).unwrap();
    assert!(
        !all.contains("hello from the repo"),
        "output must not be journaled"
    );
    assert!(evs
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));

    let (s, sum) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200, "{sum}");
    assert_eq!(sum["workspace_shredded"], true, "{sum}");
    assert_eq!(sum["session"]["state"], "destroyed");
    assert_eq!(sum["session"]["end_reason"], "destroyed by request");
    assert!(sum["execs"].as_u64().unwrap() >= 8);
    assert!(sum["failed_execs"].as_u64().unwrap() >= 3);
    srv.assert_gone(&id);
    let (s, v) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"argv": ["ls"]})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (_, live) = srv.call("GET", "/v1/sessions", None).await;
    assert_eq!(live, json!([]));
    srv.stop().await;
}

async fn read_frames(io: &mut (impl AsyncReadExt + Unpin)) -> Vec<Frame> {
    let mut dec = Decoder::new();
    let mut out = vec![];
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf))
            .await
            .expect("attach stream stalled")
            .unwrap();
        if n == 0 {
            return out;
        }
        dec.feed(&buf[..n]);
        while let Some(f) = dec.next_frame().unwrap() {
            out.push(f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_exec_streams_stdin_signals_and_pty() {
    require_root!();
    let srv = Srv::start().await;
    let id = srv.create(json!({"task": "T-attach"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/sessions/{id}/exec/attach");

    // stdin in, stdout and stderr out, then Exited.
    let mut io = brig_server::client::attach(
        &srv.sock,
        &path,
        &json!({"argv": ["sh", "-c", "cat; echo err >&2; exit 4"]}),
    )
    .await
    .unwrap();
    let mut msg = Frame::new(Kind::Stdin, 1, b"ping\n".to_vec()).encode();
    msg.extend(Frame::new(Kind::StdinEof, 1, vec![]).encode());
    io.write_all(&msg).await.unwrap();
    let frames = read_frames(&mut io).await;
    assert_eq!(frames[0].kind, Kind::Started);
    let stdout: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == Kind::Stdout)
        .flat_map(|f| f.payload.clone())
        .collect();
    let stderr: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == Kind::Stderr)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert_eq!(stdout, b"ping\n");
    assert_eq!(stderr, b"err\n");
    let last = frames.last().unwrap();
    assert_eq!(last.kind, Kind::Exited);
    let st: Value = last.parse().unwrap();
    assert_eq!(st["code"], 4);

    // A signal reaches the command's process group.
    let mut io = brig_server::client::attach(&srv.sock, &path, &json!({"argv": ["sleep", "60"]}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    io.write_all(&Frame::json(Kind::Signal, 1, &wire::SignalMsg { signal: 15 }).encode())
        .await
        .unwrap();
    let frames = read_frames(&mut io).await;
    let st: Value = frames.last().unwrap().parse().unwrap();
    assert_eq!(st["signal"], 15, "{st}");

    // A PTY: the command sees a terminal of the asked size.
    let mut io = brig_server::client::attach(
        &srv.sock,
        &path,
        &json!({"argv": ["stty", "size"], "tty": [33, 101]}),
    )
    .await
    .unwrap();
    let frames = read_frames(&mut io).await;
    let out: Vec<u8> = frames
        .iter()
        .filter(|f| f.kind == Kind::Stdout)
        .flat_map(|f| f.payload.clone())
        .collect();
    assert!(
        String::from_utf8_lossy(&out).contains("33 101"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );

    // Unknown session over attach: a JSON error, no upgrade.
    let e = brig_server::client::attach(
        &srv.sock,
        "/v1/sessions/s-2222222222/exec/attach",
        &json!({"argv": ["true"]}),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.kind, brig_core::ErrorKind::NotFound);

    let (s, _) = srv
        .call("POST", &format!("/v1/sessions/{id}/kill"), None)
        .await;
    assert_eq!(s, 200);
    srv.assert_gone(&id);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_are_isolated_from_each_other() {
    require_root!();
    let srv = std::sync::Arc::new(Srv::start().await);
    let mut tasks = vec![];
    for i in 0..4 {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            let id = srv.create(json!({"task": format!("T-{i}")})).await["id"]
                .as_str()
                .unwrap()
                .to_string();
            let r = srv
                .exec(
                    &id,
                    &["sh", "-c", &format!("echo {i} > mine; ls /workspace")],
                )
                .await;
            assert_eq!(r["stdout"], "mine\n", "{r}");
            id
        }));
    }
    let mut ids = vec![];
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let (_, live) = srv.call("GET", "/v1/sessions", None).await;
    assert_eq!(live.as_array().unwrap().len(), 4);
    // One session cannot see another's workspace on the host path either.
    let other = brig_sandbox::workspace::session_dir(srv.data(), &ids[1]);
    let r = srv.exec(&ids[0], &["ls", other.to_str().unwrap()]).await;
    assert_ne!(r["status"]["code"], 0, "{r}");
    for id in &ids {
        let (s, v) = srv
            .call("DELETE", &format!("/v1/sessions/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        srv.assert_gone(id);
    }
    match std::sync::Arc::try_unwrap(srv) {
        Ok(s) => s.stop().await,
        Err(_) => panic!("server still shared"),
    }
}
