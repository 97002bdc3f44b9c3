//! The journal through the control plane: redaction before storage, the
//! checkpoint task, the checkpoint at shutdown, and the journal API.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use brig_audit::checkpoint::read_checkpoint_file;
use brig_audit::JournalKey;
use brig_core::event::{Event, Outcome};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::config::ServerConfig;
use crate::journal::{checkpoint_file, Journal};
use crate::manager::Manager;

fn exec_event(session: &str, human: &str, argv: &[&str]) -> Event {
    let mut e =
        Event::new("exec.start", Outcome::Info).details(serde_json::json!({ "argv": argv }));
    e.session = Some(session.into());
    e.human = Some(human.into());
    e
}

async fn get(mgr: &Arc<Manager>, path: &str) -> (StatusCode, Value) {
    let app = api::router(AppState { mgr: mgr.clone() }, None).layer(
        axum::extract::connect_info::MockConnectInfo(crate::auth::UnixPeer {
            uid: Some(0),
            pid: None,
        }),
    );
    let resp = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn journal_api_filters_redacts_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::embedded(dir.path());
    let store = brig_store::Store::open(&cfg.db_path()).unwrap();
    let mgr = Arc::new(Manager::new(cfg.clone(), store));
    let journal =
        Arc::new(Journal::open(mgr.db().clone(), dir.path(), cfg.journal.clone()).unwrap());
    let evs = vec![
        exec_event(
            "s-1",
            "ada",
            &["aws", "s3", "ls", "--key", "AKIAIOSFODNN7EXAMPLE"],
        ),
        exec_event("s-2", "bob", &["make"]),
        exec_event("s-1", "ada", &["make", "test"]),
    ];
    mgr.db().run(move |s| s.append_events(&evs)).await.unwrap();
    journal
        .checkpoint()
        .await
        .unwrap()
        .expect("a new head is signed");
    assert!(
        journal.checkpoint().await.unwrap().is_none(),
        "nothing new: no checkpoint"
    );

    let (s, v) = get(&mgr, "/v1/journal?session=s-1&user=ada").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = v.as_array().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["details"]["argv"][4], "[REDACTED:aws_access_key_id]");
    assert_eq!(got[0]["prev_hash"], brig_audit::GENESIS);
    assert_eq!(
        got[1]["prev_hash"],
        get(&mgr, "/v1/journal?limit=3").await.1[1]["hash"]
    );
    let (_, v) = get(&mgr, "/v1/journal?after_seq=1&limit=1").await;
    assert_eq!(v[0]["seq"], 2);

    for bad in [
        "/v1/journal?limit=0",
        "/v1/journal?bogus=1",
        "/v1/journal?since=yesterday",
    ] {
        let (s, v) = get(&mgr, bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["kind"], "invalid_input");
    }

    let (s, v) = get(&mgr, "/v1/journal/verify").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["events"], 3);
    assert_eq!(v["latest_checkpoint"]["seq"], 3);

    rusqlite::Connection::open(cfg.db_path())
        .unwrap()
        .execute("UPDATE events SET human = 'mallory' WHERE seq = 2", [])
        .unwrap();
    let (_, v) = get(&mgr, "/v1/journal/verify").await;
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["kind"], "modified");
    assert_eq!(v["problems"][0]["seq"], 2);
}

#[tokio::test]
async fn server_signs_every_n_events_and_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::embedded(dir.path());
    cfg.journal.checkpoint_every = 5;
    cfg.journal.checkpoint_interval = Duration::from_secs(3600);
    same_policies_as_last_run(&cfg);
    let srv = crate::start_inner(cfg.clone(), false).await.unwrap();
    let key = JournalKey::key_path(dir.path());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let db = srv.manager().db().clone();
    for i in 0..7 {
        let e = exec_event("s-1", "ada", &["echo", &i.to_string()]);
        db.run(move |s| s.append_event(&e)).await.unwrap();
    }
    // Count-triggered: 7 >= 5, long before the hour-long interval.
    let mut signed = 0;
    for _ in 0..40 {
        signed = db.run(|s| s.last_checkpoint_seq()).await.unwrap();
        if signed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(signed, 7);
    let e = exec_event("s-1", "ada", &["late"]);
    db.run(move |s| s.append_event(&e)).await.unwrap();
    srv.shutdown().await.unwrap();

    let file = read_checkpoint_file(&checkpoint_file(dir.path())).unwrap();
    assert_eq!(file.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![7, 8]);
    let report = crate::journal::verify_offline(dir.path(), None, None).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.unsigned_tail, 0);
}

#[tokio::test]
async fn a_leaked_signing_key_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    JournalKey::load_or_create(dir.path()).unwrap();
    let key = JournalKey::key_path(dir.path());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = crate::start_inner(ServerConfig::embedded(dir.path()), false)
        .await
        .err()
        .expect("must refuse");
    assert_eq!(e.kind, brig_core::ErrorKind::GuardUnavailable);
    assert!(e.message.contains("journal signing key"), "{e}");
    assert!(!dir.path().join("brig.sock").exists(), "socket cleaned up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_checkpoints_prove_a_truncated_tail_that_local_evidence_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("audit-sink.jsonl");
    let mut cfg = ServerConfig::embedded(dir.path());
    cfg.journal.checkpoint_every = 5;
    cfg.journal.checkpoint_interval = Duration::from_secs(3600);
    let mut sc = brig_sinks::SinkConfig::new(
        "audit-file",
        brig_sinks::SinkKind::File { path: sink.clone() },
    );
    sc.flush_interval = Duration::from_millis(20);
    cfg.journal.sinks = vec![sc];
    same_policies_as_last_run(&cfg);
    let srv = crate::start_inner(cfg.clone(), false).await.unwrap();
    let db = srv.manager().db().clone();
    // 12 events from 4 concurrent writers, through the group-commit writer.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..3 {
                let e = exec_event("s-1", "ada", &["echo", &format!("{w}-{i}")]);
                db.write(move |tx| tx.append_event(&e)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A checkpoint signed while running reaches the sink...
    for _ in 0..100 {
        if srv.manager().sink_status()[0].checkpoint_cursor >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(srv.manager().sink_status()[0].checkpoint_cursor >= 5);
    // ...and so does the one signed at shutdown.
    srv.shutdown().await.unwrap();

    let text = std::fs::read_to_string(&sink).unwrap();
    let mut event_seqs = Vec::new();
    let mut cp_seqs = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["record"] == "checkpoint" {
            let seq = v["seq"].as_i64().unwrap();
            assert!(
                event_seqs.contains(&seq),
                "checkpoint {seq} before its event"
            );
            cp_seqs.push(seq);
        } else {
            event_seqs.push(v["seq"].as_i64().unwrap());
        }
    }
    assert_eq!(event_seqs, (1..=12).collect::<Vec<_>>());
    assert_eq!(cp_seqs.last(), Some(&12), "the shutdown checkpoint: {text}");
    // What the sink holds is evidence: verify reads it as checkpoints.
    let ok = crate::journal::verify_offline(dir.path(), Some(&sink), None).unwrap();
    assert!(ok.ok, "{:?}", ok.problems);
    assert_eq!(ok.latest_checkpoint.unwrap().seq, 12);

    // Whoever holds the host cuts the tail and every local checkpoint.
    let c = rusqlite::Connection::open(cfg.db_path()).unwrap();
    c.execute("DELETE FROM events WHERE seq > 9", []).unwrap();
    c.execute("DELETE FROM checkpoints", []).unwrap();
    drop(c);
    std::fs::remove_file(checkpoint_file(dir.path())).unwrap();
    let fooled = crate::journal::verify_offline(dir.path(), None, None).unwrap();
    assert!(fooled.ok, "nothing local can tell: {:?}", fooled.problems);
    let caught = crate::journal::verify_offline(dir.path(), Some(&sink), None).unwrap();
    assert!(!caught.ok);
    assert_eq!(
        caught.problems[0].kind,
        brig_audit::ProblemKind::Truncated,
        "{:?}",
        caught.problems
    );
}

/// These tests count the journal's events exactly: start as if brig ran
/// with the same policies before (no `policy.change` at start).
fn same_policies_as_last_run(cfg: &ServerConfig) {
    let p = crate::policy::Policy::build(cfg).unwrap();
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    std::fs::write(
        cfg.data_dir.join("policy.digest"),
        format!("{}\n", p.engine.digest()),
    )
    .unwrap();
}
