//! Scanner throughput on a directory tree:
//! `cargo run --release -p brig-scan --example scan_bench -- DIR [RUNS]`.
//!
//! The first run warms the page cache and is not counted; the best of the
//! remaining runs is reported (MB = 10^6 bytes of file content read).
//! `scan_bench --json DIR` prints the report as JSON instead (bench/peers.sh
//! scores the labelled set with it); `scan_bench --git REPO REV...` times a
//! git scan (`rev-list REV...`) instead.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: scan_bench DIR [RUNS]");
        std::process::exit(2);
    };
    if dir == "--json" {
        let dir = args.next().expect("usage: scan_bench --json DIR");
        let r = brig_scan::Scanner::builtin()
            .scan_dir(dir.as_ref())
            .expect("scan");
        println!("{}", serde_json::to_string_pretty(&r).expect("json"));
        return;
    }
    if dir == "--git" {
        let repo = args.next().expect("usage: scan_bench --git REPO REV...");
        let revs: Vec<String> = args.collect();
        let sc = brig_scan::Scanner::builtin();
        let t = Instant::now();
        let r = sc.scan_git(repo.as_ref(), &[], &revs).expect("git scan");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "brig-scan git: {} commits, {} files, {:.1} MB of blobs in {secs:.3} s: {:.0} MB/s, {:.0} commits/s; {} findings",
            r.commits_scanned,
            r.files_scanned,
            r.bytes_scanned as f64 / 1e6,
            r.bytes_scanned as f64 / 1e6 / secs,
            r.commits_scanned as f64 / secs,
            r.findings.len()
        );
        return;
    }
    let runs: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let scanner = brig_scan::Scanner::builtin();
    let warm = scanner.scan_dir(dir.as_ref()).expect("scan");
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let r = scanner.scan_dir(dir.as_ref()).expect("scan");
        assert_eq!(
            r.bytes_scanned, warm.bytes_scanned,
            "the tree changed during the benchmark"
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mb = warm.bytes_scanned as f64 / 1e6;
    let mut by_kind = std::collections::BTreeMap::new();
    let mut by_rule = std::collections::BTreeMap::new();
    for f in &warm.findings {
        *by_kind.entry(f.kind.as_str()).or_insert(0u64) += 1;
        *by_rule.entry(f.rule.as_str()).or_insert(0u64) += 1;
    }
    println!(
        "brig-scan: {} files, {:.1} MB in {:.3} s (best of {runs}): {:.0} MB/s on {} threads",
        warm.files_scanned,
        mb,
        best,
        mb / best,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("best_seconds={best:.4}");
    println!("findings: {} {:?}", warm.findings.len(), by_kind);
    println!("by rule: {by_rule:?}");
    if std::env::var_os("SCAN_BENCH_LIST").is_some() {
        for f in &warm.findings {
            println!("{}\n    {}", f.summary(), f.excerpt);
        }
    }
}
