//! Concurrent appends through brig serve's journal path, before and after
//! the group-commit writer (docs/BENCHMARKS.md, "Journal").
//!
//! ```text
//! cargo build --release -p brig-store --example group_commit
//! target/release/examples/group_commit --dir /var/tmp --events 40000 --appenders 1,4,16,64 [--rounds N] [--full] [--only before|after] [--direct B]
//! ```
//!
//! N appender tasks on a tokio runtime with one worker per CPU (what
//! `brig serve` runs on) each append their share of realistic `exec.start`
//! events one at a time, awaiting each before the next (as an API handler
//! does: it answers only after its event is committed):
//!
//! - **before**: the path `brig serve` had, `Db::run`: `spawn_blocking`
//!   then `Store::append_event`, one IMMEDIATE transaction per event;
//! - **after**: the path it has now, `Db::write`: `brig_store::Writer::write`
//!   (one writer thread; the writes waiting at the same time share one
//!   transaction, a savepoint each, and are answered after the commit).
//!
//! Both with the store's default `synchronous = NORMAL` (what brig serve
//! uses) and, with `--full`, `synchronous = FULL` (an fsync per commit).
//! Every run uses a fresh database on disk and ends with a full verify of
//! the chain, a count of the events and of their distinct ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_audit::JournalKey;
use brig_core::event::{Event, Outcome};
use brig_store::{Store, Writer, WriterOptions};

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

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Before,
    After,
}

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    commits: u64,
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn run(dir: &std::path::Path, mode: Mode, appenders: u64, total: u64, full: bool) -> Figures {
    let path = dir.join("group_commit.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    let store = Arc::new(Store::open(&path).expect("open"));
    store.set_synchronous_full(full).expect("pragma");
    let commits = Arc::new(AtomicU64::new(0));
    let c = commits.clone();
    let writer = Writer::spawn(
        store.clone(),
        WriterOptions {
            on_commit: Some(Arc::new(move |_| {
                c.fetch_add(1, Ordering::Relaxed);
            })),
            ..WriterOptions::default()
        },
    )
    .expect("writer");
    let each = total / appenders;
    let per: Vec<Vec<Event>> = (0..appenders)
        .map(|a| (0..each).map(|i| event(a * each + i)).collect())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (secs, mut lat) = rt.block_on(async {
        let t = Instant::now();
        let mut tasks = Vec::new();
        for evs in per {
            let store = store.clone();
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(evs.len());
                for ev in evs {
                    let t0 = Instant::now();
                    match mode {
                        Mode::Before => {
                            let s = store.clone();
                            tokio::task::spawn_blocking(move || s.append_event(&ev))
                                .await
                                .expect("task")
                                .expect("append");
                        }
                        Mode::After => {
                            writer
                                .write(move |tx| tx.append_event(&ev))
                                .await
                                .expect("append");
                        }
                    }
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("appender"));
        }
        (t.elapsed().as_secs_f64(), lat)
    });
    let n = appenders * each;
    // Everything committed, once, in one chain.
    let events = store.events_after(0, i64::MAX).expect("read");
    assert_eq!(events.len() as u64, n, "events lost or duplicated");
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len() as u64, n, "duplicate event ids");
    let key = JournalKey::from_seed([5; 32]);
    let (seq, hash) = store.head().expect("head").expect("not empty");
    let report = brig_audit::verify(&events, &[key.sign(seq, &hash)], &key.public());
    assert!(report.ok, "chain does not verify: {:?}", report.problems);
    let commits = match mode {
        Mode::Before => n,
        Mode::After => commits.load(Ordering::Relaxed),
    };
    Figures {
        rate: n as f64 / secs,
        p50: pct(&mut lat, 0.50),
        p99: pct(&mut lat, 0.99),
        commits,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(arg(&args, "--dir").unwrap_or("/var/tmp"));
    let total: u64 = arg(&args, "--events")
        .map(|v| v.parse().expect("--events N"))
        .unwrap_or(40_000);
    let appenders: Vec<u64> = arg(&args, "--appenders")
        .unwrap_or("1,4,16,64")
        .split(',')
        .map(|v| v.parse().expect("--appenders N,M,..."))
        .collect();
    let rounds: u64 = arg(&args, "--rounds")
        .map(|v| v.parse().expect("--rounds N"))
        .unwrap_or(1);
    let full = args.iter().any(|a| a == "--full");
    let only = arg(&args, "--only");
    let dir = dir.join(format!("brig-group-commit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    if let Some(b) = arg(&args, "--direct") {
        // The ceiling: one thread, Store::append_events with B events per
        // transaction, nobody waiting.
        let b: usize = b.parse().expect("--direct B");
        let path = dir.join("direct.db");
        let store = Store::open(&path).expect("open");
        store.set_synchronous_full(full).expect("pragma");
        let evs: Vec<Event> = (0..total).map(event).collect();
        let t = Instant::now();
        for c in evs.chunks(b) {
            store.append_events(c).expect("append");
        }
        println!(
            "direct: {b} events per transaction: {:.0} events/s",
            total as f64 / t.elapsed().as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    println!(
        "{total} events per run, synchronous = {}, {} CPUs, {rounds} round(s)\n",
        if full { "FULL" } else { "NORMAL" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| appenders | path | events/s | p50 ms | p99 ms | commits | events/commit |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for &n in &appenders {
        for round in 0..rounds {
            // Alternate which path goes first, so disk noise hits both.
            let order = if round % 2 == 0 {
                [Mode::Before, Mode::After]
            } else {
                [Mode::After, Mode::Before]
            };
            for mode in order {
                let skip = match only {
                    Some("before") => mode != Mode::Before,
                    Some("after") => mode != Mode::After,
                    _ => false,
                };
                if skip {
                    continue;
                }
                let o = run(&dir, mode, n, total, full);
                println!(
                    "| {n} | {} | {:.0} | {:.3} | {:.3} | {} | {:.1} |",
                    match mode {
                        Mode::Before => "before (spawn_blocking + append_event)",
                        Mode::After => "after (group-commit writer)",
                    },
                    o.rate,
                    o.p50.as_secs_f64() * 1e3,
                    o.p99.as_secs_f64() * 1e3,
                    o.commits,
                    (total / n * n) as f64 / o.commits.max(1) as f64
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
