//! Reading a session's journal in control-plane tests: its events, the
//! process events among them, and polling until what a test waits for has
//! been journaled (capture and egress are journaled in batches, a moment
//! after they happen). Needs `mod server_support;` beside it.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

use crate::server_support::Srv;

/// The session's events, oldest first.
pub async fn events(srv: &Srv, id: &str) -> Vec<Value> {
    let (s, v) = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

pub fn argv_of(e: &Value) -> Vec<String> {
    e["details"]["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub fn find_exec<'a>(evs: &'a [Value], argv: &[&str]) -> Option<&'a Value> {
    evs.iter()
        .find(|e| e["action"] == "process.exec" && argv_of(e) == argv)
}

pub fn find_exit(evs: &[Value], pid: &Value) -> Option<Value> {
    evs.iter()
        .find(|e| e["action"] == "process.exit" && &e["details"]["pid"] == pid)
        .cloned()
}

/// One line per event: action, rule and details (for failure messages).
pub fn event_lines(evs: &[Value], prefix: &str) -> String {
    evs.iter()
        .filter(|e| e["action"].as_str().unwrap_or("").starts_with(prefix))
        .map(|e| format!("{} {} {}", e["action"], e["rule"], e["details"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Poll the journal until `done` holds; after 20 s fail, listing the
/// process and network events found.
pub async fn wait_events(srv: &Srv, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let evs = events(srv, id).await;
        if done(&evs) {
            return evs;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "journal incomplete; process and network events:\n{}\n{}",
                event_lines(&evs, "process."),
                event_lines(&evs, "net.")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
