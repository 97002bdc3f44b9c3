//! The group-commit writer: concurrent writes batched into one transaction,
//! every caller answered only after its commit, one chain, failures isolated
//! to the write (or, for a failed commit, to the batch) that caused them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use brig_audit::{verify, JournalKey};
use brig_core::event::{Event, Outcome};
use brig_core::ErrorKind;
use brig_store::{Store, Writer, WriterOptions};

type Job = Box<dyn FnOnce(&brig_store::Tx<'_>) -> brig_core::Result<i64> + Send>;

fn ev(writer: usize, i: usize) -> Event {
    Event::new("exec.start", Outcome::Info).details(serde_json::json!({"writer": writer, "i": i}))
}

fn store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("brig.db")).unwrap();
    (dir, Arc::new(s))
}

fn all_events(s: &Store) -> Vec<Event> {
    s.events_after(0, i64::MAX).unwrap()
}

fn chain_verifies(s: &Store) {
    let events = all_events(s);
    let key = JournalKey::from_seed([3; 32]);
    let (seq, hash) = s.head().unwrap().unwrap();
    let r = verify(&events, &[key.sign(seq, &hash)], &key.public());
    assert!(r.ok, "{:?}", r.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_all_committed_once_in_one_chain_and_batched() {
    let (_d, s) = store();
    let commits = Arc::new(AtomicUsize::new(0));
    let c = commits.clone();
    let w = Writer::spawn(
        s.clone(),
        WriterOptions {
            on_commit: Some(Arc::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    const WRITERS: usize = 32;
    const EACH: usize = 50;
    let mut tasks = Vec::new();
    for n in 0..WRITERS {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut ids = Vec::new();
            for i in 0..EACH {
                let e = ev(n, i);
                ids.push(e.id.clone());
                let seq = w.write(move |tx| tx.append_event(&e)).await.unwrap();
                seqs.push(seq);
            }
            (ids, seqs)
        }));
    }
    let mut want_ids = BTreeSet::new();
    let mut all_seqs = BTreeSet::new();
    for t in tasks {
        let (ids, seqs) = t.await.unwrap();
        // One caller's events keep their order.
        assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
        want_ids.extend(ids);
        all_seqs.extend(seqs);
    }
    let events = all_events(&s);
    assert_eq!(events.len(), WRITERS * EACH, "none lost, none duplicated");
    let got: BTreeSet<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, want_ids);
    assert_eq!(
        all_seqs,
        (1..=(WRITERS * EACH) as i64).collect::<BTreeSet<_>>(),
        "each caller got its own seq, with no gap"
    );
    chain_verifies(&s);
    let n = commits.load(Ordering::SeqCst);
    assert!(
        n < WRITERS * EACH,
        "concurrent writes share commits ({n} commits for {} writes)",
        WRITERS * EACH
    );
}

#[test]
fn a_write_is_visible_when_its_call_returns() {
    let (_d, s) = store();
    let w = Writer::spawn(s.clone(), WriterOptions::default()).unwrap();
    for i in 0..20 {
        let e = ev(0, i);
        let id = e.id.clone();
        let seq = w.write_blocking(move |tx| tx.append_event(&e)).unwrap();
        // Read through another connection: committed, not just written.
        let other = Store::open_read_only(&_d.path().join("brig.db")).unwrap();
        let got = other.events_after(seq - 1, 1).unwrap();
        assert_eq!(got[0].id, id);
    }
}

#[test]
fn a_failing_write_fails_alone_and_leaves_nothing_behind() {
    let (_d, s) = store();
    let w = Writer::spawn(s.clone(), WriterOptions::default()).unwrap();
    let first = ev(0, 0);
    let dup = first.clone();
    w.write_blocking(move |tx| tx.append_event(&first)).unwrap();
    // Queue writes so they land in one batch: a good one, one that appends
    // an event and then hits a duplicate id, a panicking one, a good one.
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let blocker = {
        let w = w.clone();
        std::thread::spawn(move || {
            w.write_blocking(move |tx| {
                g.wait();
                // Hold the writer until the others are queued.
                std::thread::sleep(std::time::Duration::from_millis(200));
                tx.append_event(&ev(1, 0))
            })
        })
    };
    gate.wait();
    let spawn = |f: Job| {
        let w = w.clone();
        std::thread::spawn(move || w.write_blocking(f))
    };
    let good1 = spawn(Box::new(|tx| tx.append_event(&ev(2, 0))));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let bad = spawn(Box::new(move |tx| {
        tx.append_event(&ev(3, 0))?;
        tx.append_event(&dup)
    }));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let panics = spawn(Box::new(|tx| {
        tx.append_event(&ev(4, 0))?;
        panic!("boom")
    }));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let good2 = spawn(Box::new(|tx| tx.append_event(&ev(5, 0))));
    assert_eq!(blocker.join().unwrap().unwrap(), 2);
    assert_eq!(good1.join().unwrap().unwrap(), 3);
    let e = bad.join().unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert!(e.message.contains("already in the journal"), "{e}");
    let e = panics.join().unwrap().unwrap_err();
    assert!(e.message.contains("panicked"), "{e}");
    // The failed writes left no event and no hole in the chain.
    assert_eq!(good2.join().unwrap().unwrap(), 4);
    let events = all_events(&s);
    let writers: Vec<i64> = events
        .iter()
        .map(|e| e.details["writer"].as_i64().unwrap())
        .collect();
    assert_eq!(writers, vec![0, 1, 2, 5]);
    chain_verifies(&s);
}

#[test]
fn a_failing_commit_fails_every_write_of_its_batch_and_writes_none() {
    let (_d, s) = store();
    let w = Writer::spawn(s.clone(), WriterOptions::default()).unwrap();
    w.write_blocking(|tx| tx.append_event(&ev(0, 0))).unwrap();
    // The veto lets `arm - 1` more commits through, then fails one.
    let arm = Arc::new(AtomicUsize::new(0));
    let a = arm.clone();
    s.set_commit_veto(Some(Box::new(move || {
        let n = a.load(Ordering::SeqCst);
        if n == 0 {
            return false;
        }
        a.store(n - 1, Ordering::SeqCst);
        n == 1
    })));

    // A first write holds the writer (its own batch) while 8 more queue up
    // behind it; they form the next batch together, whose commit fails.
    let gate = Arc::new(Barrier::new(2));
    let g = gate.clone();
    let held = {
        let w = w.clone();
        let arm = arm.clone();
        std::thread::spawn(move || {
            w.write_blocking(move |tx| {
                g.wait();
                std::thread::sleep(std::time::Duration::from_millis(300));
                arm.store(2, Ordering::SeqCst);
                tx.append_event(&ev(1, 0))
            })
        })
    };
    gate.wait();
    let queued: Vec<_> = (0..8)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || w.write_blocking(move |tx| tx.append_event(&ev(2, i))))
        })
        .collect();
    assert_eq!(held.join().unwrap().unwrap(), 2, "the first batch commits");
    for q in queued {
        let e = q.join().unwrap().unwrap_err();
        assert!(
            e.message.contains("group commit of 8 write(s) failed")
                && e.message.contains("none of them was written"),
            "{e}"
        );
    }
    let events = all_events(&s);
    assert_eq!(events.len(), 2, "nothing of the failed batch was written");
    assert!(events.iter().all(|e| e.details["writer"] != 2));
    // The writer goes on, and the chain is whole.
    let seq = w.write_blocking(|tx| tx.append_event(&ev(9, 0))).unwrap();
    assert_eq!(seq, 3);
    chain_verifies(&s);
    s.set_commit_veto(None);
}

#[test]
fn a_lone_failing_write_leaves_nothing_behind() {
    let (_d, s) = store();
    let w = Writer::spawn(s.clone(), WriterOptions::default()).unwrap();
    let first = ev(0, 0);
    let dup = first.clone();
    assert_eq!(
        w.write_blocking(move |tx| tx.append_event(&first)).unwrap(),
        1
    );
    let e = w
        .write_blocking(move |tx| {
            tx.append_event(&ev(1, 0))?;
            tx.append_event(&dup)
        })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    let e = w
        .write_blocking(|tx| -> brig_core::Result<i64> {
            tx.append_event(&ev(2, 0))?;
            panic!("boom")
        })
        .unwrap_err();
    assert!(e.message.contains("panicked"), "{e}");
    assert_eq!(
        w.write_blocking(|tx| tx.append_event(&ev(3, 0))).unwrap(),
        2
    );
    let writers: Vec<i64> = all_events(&s)
        .iter()
        .map(|e| e.details["writer"].as_i64().unwrap())
        .collect();
    assert_eq!(writers, vec![0, 3]);
    chain_verifies(&s);
}

#[test]
fn a_dropped_writer_finishes_what_was_queued() {
    let (_d, s) = store();
    let w = Writer::spawn(s.clone(), WriterOptions::default()).unwrap();
    let rx: Vec<_> = (0..10)
        .map(|i| {
            let w = w.clone();
            std::thread::spawn(move || w.write_blocking(move |tx| tx.append_event(&ev(0, i))))
        })
        .collect();
    drop(w);
    for r in rx {
        r.join().unwrap().unwrap();
    }
    assert_eq!(all_events(&s).len(), 10);
}
