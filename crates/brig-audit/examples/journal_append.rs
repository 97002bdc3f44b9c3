//! Journal append throughput (docs/BENCHMARKS.md, "Journal (issue 3)").
//!
//! ```text
//! cargo run --release -p brig-audit --example journal_append -- [--events N] [--batch B] [--dir DIR]
//! ```
//!
//! Appends realistic `exec.start` events (redaction, hash chain, SQLite
//! insert) to a fresh database on disk and reports events/s for:
//! - batched + durable: `synchronous = FULL` (the WAL is fsynced at every
//!   commit), B events per transaction, so one fsync per batch;
//! - one event per transaction, `synchronous = NORMAL` (what the control
//!   plane does per event today; survives a crash of brig, fsync at WAL
//!   checkpoints);
//! - one event per transaction, `synchronous = FULL` (an fsync per event);
//!
//! then verifies the whole journal (events/s) and signs a checkpoint.

use std::time::Instant;

use brig_audit::JournalKey;
use brig_core::event::{Event, Outcome};
use brig_store::Store;

fn event(i: u64) -> Event {
    let mut e = Event::new("exec.start", Outcome::Info).details(serde_json::json!({
        "exec_id": format!("x-{i}"),
        "argv": ["cc", "-O2", "-c", format!("src/file{i}.c"), "-o", format!("build/file{i}.o")],
        "cwd": "/workspace",
        "tty": false,
        "timeout_ms": null,
    }));
    e.session = Some("s-bench0000001".into());
    e.human = Some("ada".into());
    e.agent = Some("agent:s-bench0000001".into());
    e.task = Some("BENCH-1".into());
    e.repo = Some("/src/project".into());
    e
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn run(
    dir: &std::path::Path,
    name: &str,
    n: u64,
    batch: u64,
    full: bool,
) -> (f64, Store, std::path::PathBuf) {
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    let s = Store::open(&path).expect("open");
    s.set_synchronous_full(full).expect("pragma");
    let events: Vec<Event> = (0..n).map(event).collect();
    let t = Instant::now();
    for chunk in events.chunks(batch as usize) {
        if chunk.len() == 1 {
            s.append_event(&chunk[0]).expect("append");
        } else {
            s.append_events(chunk).expect("append");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!(
        "| {name} | {n} | {batch} | {} | {:.2} s | **{:.0}** |",
        if full { "FULL" } else { "NORMAL" },
        secs,
        rate
    );
    (rate, s, path)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--events", 200_000);
    let batch = arg(&args, "--batch", 1000);
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("brig-journal-bench-")
        .tempdir_in(base)
        .expect("tempdir");
    {
        // Where the time goes, without SQLite: redaction and hashing.
        let red = brig_redact::Redactor::patterns_only();
        let evs: Vec<Event> = (0..20_000).map(event).collect();
        let t = Instant::now();
        let mut prev = brig_audit::GENESIS.to_string();
        for e in &evs {
            let mut e = e.clone();
            red.redact_value_mut(&mut e.details);
            prev = brig_audit::seal(&prev, &mut e);
        }
        println!(
            "redact + chain, no database: {:.2} µs/event",
            t.elapsed().as_secs_f64() * 1e6 / evs.len() as f64
        );
    }
    println!("| mode | events | per commit | synchronous | time | events/s |");
    println!("|---|---:|---:|---|---:|---:|");
    let (_, s, _) = run(dir.path(), "batched-durable", n, batch, true);
    run(dir.path(), "single-normal", n / 10, 1, false);
    run(dir.path(), "single-full", n / 100, 1, true);

    let t = Instant::now();
    let events = s.events_after(0, i64::MAX).expect("read");
    let read = t.elapsed().as_secs_f64();
    let key = JournalKey::from_seed([5; 32]);
    let (seq, hash) = s.head().expect("head").expect("events");
    let t = Instant::now();
    let cp = key.sign(seq, &hash);
    let sign_us = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    let report = brig_audit::verify(&events, &[cp], &key.public());
    let verify = t.elapsed().as_secs_f64();
    assert!(report.ok, "{:?}", report.problems.first());
    println!();
    println!(
        "verify: {} events read in {:.2} s, verified in {:.2} s ({:.0} events/s); one checkpoint signature {:.0} µs",
        events.len(),
        read,
        verify,
        events.len() as f64 / verify,
        sign_us
    );
    let red = brig_redact::Redactor::patterns_only();
    let e = event(1);
    let t = Instant::now();
    let k = 100_000;
    for _ in 0..k {
        std::hint::black_box(red.redact_value(&e.details));
    }
    println!(
        "redaction of one exec.start's details: {:.2} µs",
        t.elapsed().as_secs_f64() * 1e6 / k as f64
    );
}
