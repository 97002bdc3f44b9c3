//! The escape battery through the control plane: attacks run as execs of a
//! real session (native runtime, the `host` image), each blocked, and each
//! one on the session's journal with its argv and exit code. One target is
//! brig's own API socket, which must not exist inside the sandbox.

mod server_support;

use serde_json::{json, Value};
use server_support::*;

const PROBE: &str = include_str!("escape/probe.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_blocked_and_journaled() {
    require_root!();
    let srv = Srv::start().await;
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("probe.py"), PROBE).unwrap();
    let info = srv
        .create(json!({
            "task": "ESCAPE-1",
            "repo": repo.path().to_str().unwrap(),
            "pids": 64,
            "memory": "256M",
            "disk": "16M",
        }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    let api_socket = srv.sock.to_str().unwrap().to_string();

    let attacks: Vec<Vec<&str>> = vec![
        vec!["connect-unix", &api_socket],
        vec!["read-path", &api_socket],
        vec!["connect-tcp", "127.0.0.1", "22"],
        vec!["connect-tcp", "1.1.1.1", "443"],
        // Plain HTTP to an IP literal: brig's egress proxy answers with its
        // refusal (the probe counts only that, a close or an error as blocked).
        vec!["connect-tcp", "1.1.1.1", "80"],
        vec!["write-rootfs"],
        vec!["mount"],
        vec!["ptrace"],
        vec!["unshare"],
        vec!["setns"],
        vec!["raw-socket"],
        vec!["proc-sys-write"],
        vec!["device-nodes"],
        vec!["keyring"],
        vec!["bpf"],
        vec!["io-uring"],
        vec!["kernel-modules"],
        vec!["disk-fill", "16"],
        vec!["fork-bomb", "64"],
    ];
    for attack in &attacks {
        let mut argv = vec!["python3", "/workspace/probe.py"];
        argv.extend_from_slice(attack);
        let r = srv.exec(&id, &argv).await;
        let out = r["stdout"].as_str().unwrap_or_default();
        assert_eq!(r["status"]["code"], 0, "{attack:?} escaped or broke: {r}");
        assert!(out.starts_with("BLOCKED"), "{attack:?}: {r}");
    }

    // Every attempt is on the journal: its argv on exec.start and its exit
    // code on the matching exec.exit.
    let (s, events) = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    assert_eq!(s, 200, "{events}");
    let events = events.as_array().unwrap();
    for attack in &attacks {
        let start = events
            .iter()
            .find(|e| {
                e["action"] == "exec.start"
                    && e["details"]["argv"]
                        .as_array()
                        .is_some_and(|a| a.len() > 2 && a[2] == attack[0] && a[2..] == attack[..])
            })
            .unwrap_or_else(|| panic!("no exec.start for {attack:?}"));
        assert_eq!(start["session"], id.as_str());
        assert_eq!(start["agent"], format!("agent:{id}"));
        assert_eq!(start["task"], "ESCAPE-1");
        let exec_id = &start["details"]["exec_id"];
        let exit: &Value = events
            .iter()
            .find(|e| e["action"] == "exec.exit" && &e["details"]["exec_id"] == exec_id)
            .unwrap_or_else(|| panic!("no exec.exit for {attack:?}"));
        assert_eq!(exit["details"]["code"], 0, "{exit}");
    }

    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.assert_gone(&id);
    srv.stop().await;
}
