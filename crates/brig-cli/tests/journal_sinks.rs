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
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Signed checkpoints travel with the events.
            if v["record"] == "checkpoint" {
                return None;
            }
            Some(v["id"].as_str().unwrap().to_string())
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

/// A session on `<dir>/proj` for `task`, after `n` execs of `echo i`.
fn session_with_execs(s: &Server, dir: &Path, task: &str, n: usize) -> String {
    let proj = dir.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let id = s.json(&[
        "session",
        "create",
        "--repo",
        proj.to_str().unwrap(),
        "--task",
        task,
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..n {
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
    id
}

#[test]
fn file_sink_gets_every_event_even_across_a_kill_9() {
    let mut s = Server::start_with(Some(&config));
    let dir = s.dir.path().to_path_buf();
    let id = session_with_execs(&s, &dir, "SINK-1", 5);
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

/// The file sink's copy of the signed checkpoints is evidence: `brig
/// journal verify --checkpoint <the sink's file>` checks the database
/// against it, and catches a tail cut from the database after the local
/// checkpoints (table and file) were removed too.
#[test]
fn file_sink_checkpoints_verify_the_journal_and_catch_a_truncated_tail() {
    let write_cfg = |dir: &Path| {
        let cfg = config(dir);
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        // Before the [[journal.sinks]] table: keys of [journal] itself.
        text = text.replace(
            "\n[[journal.sinks]]",
            "\n[journal]\ncheckpoint_every = 2\ncheckpoint_interval = \"1s\"\n\n[[journal.sinks]]",
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let mut s = Server::start_with(Some(&write_cfg));
    let dir = s.dir.path().to_path_buf();
    let data = dir.join("data");
    session_with_execs(&s, &dir, "CP-1", 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = s.json(&["journal", "sinks"]);
        if v[0]["checkpoint_cursor"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint reached the sink: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A graceful stop signs the head and delivers it to the sink.
    assert_eq!(nix_kill(s.child.id(), libc::SIGTERM), 0);
    assert!(s.child.wait().unwrap().success(), "{}", s.log());

    let sink = dir.join("sink.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["record"], "checkpoint", "the last line: {last}");
    let head = last["seq"].as_i64().unwrap();
    let dd = data.to_str().unwrap();
    let verify = |extra: Option<&Path>| {
        let mut args = vec!["--json", "journal", "verify", "--data-dir", dd];
        if let Some(p) = extra {
            args.extend(["--checkpoint", p.to_str().unwrap()]);
        }
        let o = s.brig(&args);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&o.stdout), text(&o.stderr)));
        (o.status.code(), r)
    };
    let (code, r) = verify(Some(&sink));
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["latest_checkpoint"]["seq"], head);
    assert_eq!(r["last_seq"], head);

    // Cut the last events and every local trace of the checkpoints.
    let c = rusqlite::Connection::open(data.join("brig.db")).unwrap();
    c.execute("DELETE FROM events WHERE seq > ?1", [head - 3])
        .unwrap();
    c.execute("DELETE FROM checkpoints", []).unwrap();
    drop(c);
    std::fs::remove_file(data.join("journal/checkpoints.jsonl")).unwrap();
    let (code, r) = verify(None);
    assert_eq!(code, Some(0), "local evidence alone is fooled: {r}");
    let (code, r) = verify(Some(&sink));
    assert_eq!(code, Some(4), "{r}");
    assert_eq!(r["ok"], false);
    assert_eq!(r["problems"][0]["kind"], "truncated", "{r}");
}
