//! The warm pool with real sandboxes (as root): a create takes a pristine
//! sandbox started ahead of it, gets its own files in it, and the pool
//! refills; what cannot use a pooled sandbox destroys it; shutdown and the
//! kill switch leave nothing.

mod server_support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use server_support::*;

async fn start(warm: usize) -> Srv {
    Srv::start_with(|c| {
        c.pool.warm = warm;
        c.upload_cap_bytes = 1 << 20;
    })
    .await
}

async fn metric(srv: &Srv, series: &str) -> u64 {
    let text = srv
        .server
        .as_ref()
        .unwrap()
        .manager()
        .metrics_text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Wait until `n` sandboxes are ready in the pool.
async fn wait_ready(srv: &Srv, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(srv, "brig_pool_ready").await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never had {n} ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ids of every sandbox on the host (session dirs).
fn sandboxes(srv: &Srv) -> BTreeSet<String> {
    std::fs::read_dir(brig_sandbox::workspace::sessions_dir(srv.data()))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The one pooled sandbox: on the host, not a session.
async fn pooled(srv: &Srv) -> String {
    let (_, all) = srv.call("GET", "/v1/sessions?all=true", None).await;
    let sessions: BTreeSet<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    let waiting: Vec<String> = sandboxes(srv).difference(&sessions).cloned().collect();
    assert_eq!(waiting.len(), 1, "pooled sandboxes: {waiting:?}");
    waiting[0].clone()
}

fn id_of(v: &serde_json::Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_takes_a_warm_sandbox_with_its_own_files_and_the_pool_refills() {
    require_root!();
    let srv = start(1).await;
    let proj = project();
    // The first create of a kind starts cold and makes the pool keep one.
    let a = id_of(&srv.create(json!({"task": "T-a"})).await);
    assert_eq!(
        metric(&srv, "brig_pool_claims_total{result=\"miss\"}").await,
        1
    );
    wait_ready(&srv, 1).await;
    let waiting = pooled(&srv).await;

    let b = srv
        .create(json!({"task": "T-b", "repo": proj.path()}))
        .await;
    assert_eq!(id_of(&b), waiting, "the create took the pooled sandbox");
    assert_eq!(b["state"], "running", "{b}");
    assert_eq!(
        metric(&srv, "brig_pool_claims_total{result=\"hit\"}").await,
        1
    );
    // Its files were copied in after it started, owned by the sandbox's user.
    let out = srv
        .exec(
            &waiting,
            &[
                "sh",
                "-c",
                "cat /workspace/README; stat -c %u /workspace/README; id -u",
            ],
        )
        .await;
    assert_eq!(out["status"]["code"], 0, "{out}");
    let lines: Vec<&str> = out["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(lines[0], "hello from the repo", "{out}");
    assert_eq!(
        lines[1], lines[2],
        "the file belongs to the sandbox's user: {out}"
    );
    // The session's own journal starts with its create, as a cold one does.
    let (_, evs) = srv
        .call("GET", &format!("/v1/sessions/{waiting}/events"), None)
        .await;
    let actions: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"session.create"), "{actions:?}");
    // Nothing of the first session is in it.
    let out = srv
        .exec(&waiting, &["ls", "-A", "/workspace", "/tmp"])
        .await;
    assert_eq!(
        out["stdout"].as_str().unwrap(),
        "/tmp:\n\n/workspace:\nREADME\nsrc\n",
        "{out}"
    );

    // The pool refills, under a new id.
    wait_ready(&srv, 1).await;
    let next = pooled(&srv).await;
    assert!(next != waiting && next != a);

    for id in [&a, &waiting] {
        let (s, v) = srv
            .call("DELETE", &format!("/v1/sessions/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        srv.assert_gone(id);
    }
    // Shutdown drains the pool: nothing is left on the host.
    let mut srv = srv;
    srv.server.take().unwrap().shutdown().await.unwrap();
    srv.assert_gone(&next);
    assert!(sandboxes(&srv).is_empty(), "{:?}", sandboxes(&srv));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_limits_start_cold_and_a_failed_fill_leaves_nothing() {
    require_root!();
    let srv = start(1).await;
    let first = id_of(&srv.create(json!({"task": "T-a"})).await);
    wait_ready(&srv, 1).await;
    let waiting = pooled(&srv).await;

    // Other limits: not the pooled sandbox (its cgroup and tmpfs are sized
    // for the others).
    let small = srv
        .create(json!({"task": "T-small", "memory": "1G", "disk": "1G"}))
        .await;
    assert_ne!(id_of(&small), waiting);
    let out = srv
        .exec(&id_of(&small), &["sh", "-c", "df -B1 /workspace | tail -1"])
        .await;
    assert!(
        out["stdout"].as_str().unwrap().contains("1073741824"),
        "{out}"
    );

    // An upload over the cap into the pooled sandbox: the create fails and
    // the sandbox is destroyed, with the error a cold start gives.
    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("blob"), vec![7u8; 2 << 20]).unwrap();
    let (s, v) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"task": "T-big", "upload": big.path()})),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["kind"], "limit_exceeded", "{v}");
    let (_, st) = srv
        .call("GET", &format!("/v1/sessions/{waiting}"), None)
        .await;
    assert_eq!(st["state"], "failed", "{st}");
    srv.assert_gone(&waiting);

    // The kill switch takes the pool with the sessions: both templates'
    // sandboxes (one of each template now).
    wait_ready(&srv, 2).await;
    let (s, v) = srv.call("POST", "/v1/kill-all", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(metric(&srv, "brig_pool_ready").await, 0);
    assert!(sandboxes(&srv).is_empty(), "{:?}", sandboxes(&srv));
    srv.assert_gone(&first);
    srv.stop().await;
}
