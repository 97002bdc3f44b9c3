//! Bad input to the control plane with real sandboxes (as root): each a
//! clear error, and nothing left behind (no session dir, mount or cgroup).

mod server_support;

use std::os::unix::ffi::OsStrExt;

use serde_json::json;
use server_support::*;

fn session_dirs(srv: &Srv) -> usize {
    std::fs::read_dir(brig_sandbox::workspace::sessions_dir(srv.data()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_leaves_nothing() {
    require_root!();
    let srv = Srv::start_with(|c| c.upload_cap_bytes = 1 << 20).await;
    let proj = project();

    // Unknown session.
    let (s, v) = srv.call("GET", "/v1/sessions/s-2222222222", None).await;
    assert_eq!(s, 404, "{v}");
    // Bad image: refused before anything is recorded.
    let (s, v) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"task": "T-1", "image": "no-such-image"})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-image"),
        "{v}"
    );
    // Impossible limits.
    let (s, v) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"task": "T-1", "memory": "1M"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--memory"),
        "{v}"
    );
    let (_, all) = srv.call("GET", "/v1/sessions?all=true", None).await;
    assert_eq!(all, json!([]), "refused creates are not recorded");

    // Upload over the cap: the session fails, its sandbox is gone.
    let big = tempfile::tempdir().unwrap();
    std::fs::write(big.path().join("blob"), vec![7u8; 2 << 20]).unwrap();
    let (s, v) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"task": "T-big", "repo": proj.path(), "upload": big.path()})),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["kind"], "limit_exceeded");
    let (_, all) = srv.call("GET", "/v1/sessions?all=true", None).await;
    let failed = &all.as_array().unwrap()[0];
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["end_reason"]
            .as_str()
            .unwrap()
            .contains("sandbox failed to start"),
        "{failed}"
    );
    srv.assert_gone(failed["id"].as_str().unwrap());
    assert_eq!(session_dirs(&srv), 0);

    // Non-UTF-8 names inside an upload are copied, not refused or mangled into errors.
    let odd = tempfile::tempdir().unwrap();
    std::fs::write(
        odd.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        "x",
    )
    .unwrap();
    std::fs::write(odd.path().join("plain.txt"), "y").unwrap();
    let id = srv
        .create(json!({"task": "T-odd", "upload": odd.path()}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = srv.exec(&id, &["sh", "-c", "ls /workspace | wc -l"]).await;
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "2", "{r}");

    // Huge argv: refused with the limit, the session unharmed.
    let huge: Vec<String> = (0..300).map(|_| "x".repeat(1024)).collect();
    let (s, v) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"argv": huge})),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("limit"),
        "{v}"
    );
    assert_eq!(srv.exec(&id, &["true"]).await["status"]["code"], 0);

    let (s, _) = srv
        .call("POST", &format!("/v1/sessions/{id}/kill"), None)
        .await;
    assert_eq!(s, 200);
    srv.assert_gone(&id);
    assert_eq!(session_dirs(&srv), 0);
    srv.stop().await;
}
