//! The journal's SIEM sinks in a real `brig serve`: a JSONL file sink
//! receives every journal event; `brig serve` killed with SIGKILL in the
//! middle of a session and started again loses none (the sink resumes from
//! its cursor in the database; a re-delivered event keeps its id).

mod cli_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cli_support::*;

fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("brig.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nsocket = {:?}\n\n[[journal.sinks]]\nname = \"audit-file\"\ntype = \"file\"\npath = {:?}\n",
            dir.join("data"),
            dir.join("s"),
            dir.join("sink.jsonl"),
        ),
    )
    .unwrap();
    cfg
}

fn ids_in_sink(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("sink.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn journal_ids(s: &Server) -> BTreeSet<String> {
    let o = s.brig(&["journal", "export", "--format", "jsonl"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Poll `brig journal sinks` until the file sink has caught up.
fn wait_caught_up(s: &Server) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = s.json(&["journal", "sinks"]);
        let sink = v.as_array().unwrap()[0].clone();
        if sink["lag"] == 0 && sink["cursor"].as_i64().unwrap_or(0) > 0 {
            return sink;
        }
        assert!(Instant::now() < deadline, "sink did not catch up: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn file_sink_gets_every_event_even_across_a_kill_9() {
    let mut s = Server::start_with(Some(&config));
    let dir = s.dir.path().to_path_buf();
    let proj = dir.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let id = s.json(&[
        "session",
        "create",
        "--repo",
        proj.to_str().unwrap(),
        "--task",
        "SINK-1",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..5 {
        let o = s.brig(&[
            "session",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            &format!("echo {i}"),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let sink = wait_caught_up(&s);
    assert_eq!(sink["name"], "audit-file");
    assert_eq!(sink["kind"], "file");
    assert!(sink["last_error"].is_null(), "{sink}");

    // More events, then SIGKILL before the sink may have shipped them.
    for i in 0..5 {
        let o = s.brig(&[
            "session",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            &format!("echo more {i}"),
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // Start again on the same data dir: reconciliation ends the session,
    // and the sink resumes from its stored cursor.
    s.kill9_and_restart("serve2.log");
    wait_caught_up(&s);

    let journal = journal_ids(&s);
    let shipped = ids_in_sink(&dir);
    let shipped_set: BTreeSet<String> = shipped.iter().cloned().collect();
    let missing: Vec<_> = journal.difference(&shipped_set).collect();
    assert!(missing.is_empty(), "events never shipped: {missing:?}");
    let extra: Vec<_> = shipped_set.difference(&journal).collect();
    assert!(
        extra.is_empty(),
        "shipped events the journal lacks: {extra:?}"
    );
    // At-least-once: a re-delivery repeats an event under the same id,
    // never a new id for the same event.
    assert!(shipped.len() >= journal.len());
    assert!(
        journal.len() > 20,
        "expected a real journal, got {}",
        journal.len()
    );
}
