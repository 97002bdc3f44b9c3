//! The journal as stored: hash chain, checkpoints, and every kind of
//! tampering done the way an attacker would, with SQL on the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use brig_audit::checkpoint::{append_checkpoint_file, read_checkpoint_file};
use brig_audit::{verify, JournalKey, ProblemKind, VerifyReport};
use brig_core::event::{Event, Outcome};
use brig_core::ErrorKind;
use brig_store::{EventFilter, Store};
use rusqlite::{params, Connection};

struct Journal {
    _dir: tempfile::TempDir,
    db: PathBuf,
    cp_file: PathBuf,
    key: JournalKey,
}

fn ev(i: i64) -> Event {
    let mut e = Event::new("exec.start", Outcome::Info)
        .details(serde_json::json!({"argv": ["echo", i.to_string()]}));
    e.session = Some(format!("s-{}", i % 3));
    e.human = Some(if i % 2 == 0 { "ada" } else { "bob" }.into());
    e
}

/// 20 events, a checkpoint at 10 and at 20 (database and file).
fn journal() -> Journal {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brig.db");
    let cp_file = dir.path().join("journal/checkpoints.jsonl");
    let key = JournalKey::from_seed([9; 32]);
    let s = Store::open(&db).unwrap();
    for i in 1..=20 {
        s.append_event(&ev(i)).unwrap();
        if i % 10 == 0 {
            let (seq, hash) = s.head().unwrap().unwrap();
            let cp = key.sign(seq, &hash);
            s.insert_checkpoint(&cp).unwrap();
            append_checkpoint_file(&cp_file, &cp).unwrap();
        }
    }
    Journal {
        _dir: dir,
        db,
        cp_file,
        key,
    }
}

fn check(j: &Journal) -> VerifyReport {
    let s = Store::open_read_only(&j.db).unwrap();
    let events = s.events_after(0, i64::MAX).unwrap();
    let mut cps = s.checkpoints().unwrap();
    cps.extend(read_checkpoint_file(&j.cp_file).unwrap());
    verify(&events, &cps, &j.key.public())
}

fn sql(db: &Path, stmt: &str) {
    Connection::open(db).unwrap().execute_batch(stmt).unwrap();
}

fn kinds(r: &VerifyReport) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind).collect()
}

#[test]
fn intact_journal_verifies_from_a_read_only_open() {
    let j = journal();
    let r = check(&j);
    assert!(r.ok, "{:?}", r.problems);
    assert_eq!(r.events, 20);
    assert_eq!(
        r.checkpoints, 2,
        "db and file copies are one checkpoint each"
    );
    assert_eq!(r.latest_checkpoint.unwrap().seq, 20);
}

#[test]
fn tamper_edit_a_field_is_caught() {
    let j = journal();
    sql(
        &j.db,
        "UPDATE events SET details = '{\"argv\":[\"true\"]}' WHERE seq = 7",
    );
    let r = check(&j);
    assert!(!r.ok);
    let p = r.first_break().unwrap();
    assert_eq!((p.kind, p.seq), (ProblemKind::Modified, Some(7)));
    assert!(p.event_id.as_deref().unwrap().starts_with("e-"));
    assert!(p.message.contains("seq 7"), "{}", p.message);
}

#[test]
fn tamper_delete_a_middle_row_is_caught() {
    let j = journal();
    sql(&j.db, "DELETE FROM events WHERE seq = 12");
    let r = check(&j);
    let p = r.first_break().unwrap();
    assert_eq!((p.kind, p.seq), (ProblemKind::Missing, Some(13)));
    assert!(p.message.contains("event 12 is missing"), "{}", p.message);
}

#[test]
fn tamper_swap_two_rows_seq_is_caught() {
    let j = journal();
    sql(
        &j.db,
        "UPDATE events SET seq = -1 WHERE seq = 4;
         UPDATE events SET seq = 4 WHERE seq = 5;
         UPDATE events SET seq = 5 WHERE seq = -1;",
    );
    let r = check(&j);
    assert_eq!(r.first_break().unwrap().seq, Some(4));
    let reordered: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::Reordered)
        .map(|p| p.seq)
        .collect();
    assert_eq!(reordered, vec![Some(4), Some(5)], "{:?}", r.problems);
}

#[test]
fn tamper_insert_a_forged_row_is_caught() {
    // The forger knows the algorithm: the new row links correctly to its
    // predecessor and has a correct hash. It still breaks what follows,
    // and the checkpoint at 10 no longer matches.
    let j = journal();
    let s = Store::open_read_only(&j.db).unwrap();
    let before = s.events_after(0, 100).unwrap();
    drop(s);
    let mut forged =
        Event::new("exec.start", Outcome::Info).details(serde_json::json!({"argv": ["innocent"]}));
    forged.seq = 6;
    let hash = brig_audit::seal(before[4].hash.as_ref().unwrap(), &mut forged);
    let c = Connection::open(&j.db).unwrap();
    for seq in (6..=20).rev() {
        c.execute("UPDATE events SET seq = seq + 1 WHERE seq = ?1", [seq])
            .unwrap();
    }
    c.execute(
        "INSERT INTO events (seq, id, time, action, outcome, details, prev_hash, hash)
         VALUES (6, ?1, ?2, 'exec.start', 'info', ?3, ?4, ?5)",
        params![
            forged.id,
            forged.time,
            forged.details.to_string(),
            forged.prev_hash,
            hash
        ],
    )
    .unwrap();
    drop(c);
    let r = check(&j);
    assert!(!r.ok);
    let p = r.first_break().unwrap();
    assert_eq!(p.seq, Some(7), "{:?}", r.problems);
    assert!(
        kinds(&r).contains(&ProblemKind::ChainBroken),
        "{:?}",
        r.problems
    );
    assert!(kinds(&r).contains(&ProblemKind::CheckpointMismatch));
}

#[test]
fn tamper_truncate_the_tail_is_caught() {
    let j = journal();
    sql(&j.db, "DELETE FROM events WHERE seq > 15");
    let r = check(&j);
    assert_eq!(kinds(&r), vec![ProblemKind::Truncated]);
    assert_eq!(r.problems[0].seq, Some(20));
    assert!(
        r.problems[0].message.contains("ends at seq 15"),
        "{:?}",
        r.problems
    );
    // Also deleting the database's checkpoints does not hide it: the file
    // outside the database still has them.
    sql(&j.db, "DELETE FROM checkpoints");
    assert_eq!(kinds(&check(&j)), vec![ProblemKind::Truncated]);
}

#[test]
fn tamper_checkpoint_file_signature_is_caught() {
    let j = journal();
    let text = std::fs::read_to_string(&j.cp_file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cp: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    // Claim a later head with the old signature.
    cp["seq"] = 25.into();
    lines[1] = cp.to_string();
    std::fs::write(&j.cp_file, lines.join("\n")).unwrap();
    let r = check(&j);
    assert_eq!(kinds(&r), vec![ProblemKind::BadSignature]);
    assert!(
        r.problems[0].message.contains("signature"),
        "{:?}",
        r.problems
    );
}

#[test]
fn rehashed_rewrite_is_caught_by_the_signed_checkpoint() {
    let j = journal();
    let s = Store::open_read_only(&j.db).unwrap();
    let mut evs = s.events_after(0, 100).unwrap();
    drop(s);
    evs[2].details = serde_json::json!({"argv": ["nothing", "to", "see"]});
    let mut prev = evs[1].hash.clone().unwrap();
    let c = Connection::open(&j.db).unwrap();
    for e in &mut evs[2..] {
        prev = brig_audit::seal(&prev, e);
        c.execute(
            "UPDATE events SET details = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            params![e.seq, e.details.to_string(), e.prev_hash, e.hash],
        )
        .unwrap();
    }
    drop(c);
    let r = check(&j);
    assert_eq!(
        kinds(&r),
        vec![
            ProblemKind::CheckpointMismatch,
            ProblemKind::CheckpointMismatch
        ]
    );
}

#[test]
fn concurrent_appenders_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(Store::open(&dir.path().join("brig.db")).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    if i % 5 == 0 {
                        s.append_events(&[ev(t * 100 + i), ev(t * 100 + i + 1000)])
                            .unwrap();
                    } else {
                        s.append_event(&ev(t * 100 + i)).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let evs = s.events_after(0, 10_000).unwrap();
    assert_eq!(evs.len(), 4 * 60);
    let seqs: Vec<i64> = evs.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=240).collect::<Vec<_>>());
    let k = JournalKey::from_seed([1; 32]);
    let r = verify(&evs, &[], &k.public());
    assert!(r.ok, "{:?}", r.problems);
}

#[test]
fn secrets_are_redacted_before_storage() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brig.db");
    let s = Store::open(&db).unwrap();
    s.set_redactor(Arc::new(
        brig_redact::Redactor::builder()
            .secret("DEPLOY_TOKEN", "tok-very-secret-123")
            .build(),
    ));
    let argv = vec![
        "aws".to_string(),
        "--key".into(),
        "AKIAIOSFODNN7EXAMPLE".into(),
        "tok-very-secret-123".into(),
    ];
    s.append_event(
        &Event::new("exec.start", Outcome::Info).details(serde_json::json!({"argv": argv})),
    )
    .unwrap();
    // The raw bytes on disk, not what the API would show.
    let c = Connection::open(&db).unwrap();
    let details: String = c
        .query_row("SELECT details FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(!details.contains("AKIAIOSFODNN7EXAMPLE"), "{details}");
    assert!(!details.contains("tok-very-secret"), "{details}");
    assert!(
        details.contains("[REDACTED:aws_access_key_id]"),
        "{details}"
    );
    assert!(
        details.contains("[REDACTED:secret:DEPLOY_TOKEN]"),
        "{details}"
    );
    // The hash covers the stored (redacted) form, so it verifies.
    let evs = s.events_after(0, 10).unwrap();
    assert!(verify(&evs, &[], &JournalKey::from_seed([1; 32]).public()).ok);
    drop(c);
    let wal_and_db: Vec<u8> = ["brig.db", "brig.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(dir.path().join(f)).ok())
        .flatten()
        .collect();
    let hay = String::from_utf8_lossy(&wal_and_db);
    assert!(!hay.contains("AKIAIOSFODNN7EXAMPLE"));
}

#[test]
fn corrupt_database_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brig.db");
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let e = Store::open_read_only(&db).err().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("not a readable brig database"), "{e}");
    assert!(e.hint.is_some());
    let e = Store::open(&db).err().unwrap();
    assert!(e.message.contains("not a readable brig database"), "{e}");
    let e = Store::open_read_only(&dir.path().join("absent.db"))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // A real database whose events table is damaged.
    let db2 = dir.path().join("b.db");
    drop(Store::open(&db2).unwrap());
    sql(&db2, "DROP TABLE events");
    let e = Store::open_read_only(&db2).err().unwrap();
    assert!(e.message.contains("no such table: events"), "{e}");
}

#[test]
fn v1_database_is_migrated_and_its_events_chained() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("brig.db");
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 'then');
             CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                time TEXT NOT NULL, session TEXT, human TEXT, agent TEXT, task TEXT, repo TEXT,
                branch TEXT, action TEXT NOT NULL, outcome TEXT NOT NULL, rule TEXT,
                details TEXT NOT NULL DEFAULT 'null');
             INSERT INTO events (id, time, action, outcome) VALUES ('e-a', '2026-01-01T00:00:00Z', 'x', 'info');
             INSERT INTO events (id, time, action, outcome) VALUES ('e-b', '2026-01-01T00:00:01Z', 'y', 'success');",
        )
        .unwrap();
    }
    let e = Store::open_read_only(&db).err().unwrap();
    assert!(e.message.contains("predates"), "{e}");
    let s = Store::open(&db).unwrap();
    s.append_event(&ev(3)).unwrap();
    let evs = s.events_after(0, 10).unwrap();
    assert_eq!(evs.len(), 3);
    assert!(verify(&evs, &[], &JournalKey::from_seed([1; 32]).public()).ok);
}

#[test]
fn filters_after_seq_and_sink_cursors() {
    let j = journal();
    let s = Store::open(&j.db).unwrap();
    assert_eq!(s.events_after(18, 10).unwrap().len(), 2);
    assert_eq!(s.events_after(0, 5).unwrap().last().unwrap().seq, 5);
    let f = |f: EventFilter| -> Vec<i64> {
        s.events_filtered(&f)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(
        f(EventFilter {
            session: Some("s-1".into()),
            human: Some("ada".into()),
            ..Default::default()
        }),
        vec![4, 10, 16]
    );
    // limit without after_seq: the last N, oldest first.
    assert_eq!(
        f(EventFilter {
            limit: Some(3),
            ..Default::default()
        }),
        vec![18, 19, 20]
    );
    assert_eq!(
        f(EventFilter {
            after_seq: Some(2),
            limit: Some(2),
            ..Default::default()
        }),
        vec![3, 4]
    );
    assert!(f(EventFilter {
        since: Some("2999-01-01T00:00:00Z".into()),
        ..Default::default()
    })
    .is_empty());
    assert_eq!(
        f(EventFilter {
            since: Some("2000-01-01T00:00:00.5Z".into()),
            ..Default::default()
        })
        .len(),
        20
    );
    let e = s
        .events_filtered(&EventFilter {
            since: Some("yesterday".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);

    assert_eq!(s.sink_cursor("splunk").unwrap(), None);
    s.set_sink_cursor("splunk", 7).unwrap();
    s.set_sink_cursor("splunk", 12).unwrap();
    assert_eq!(s.sink_cursor("splunk").unwrap(), Some(12));
    assert_eq!(s.last_checkpoint_seq().unwrap(), 20);
}
