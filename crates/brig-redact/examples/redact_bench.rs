//! Redactor throughput on a large log stream (issue 6 benchmark;
//! docs/BENCHMARKS.md, "Redactor").
//!
//! ```text
//! cargo run --release -p brig-redact --example redact_bench -- [MB]
//! ```
//!
//! A synthetic but realistic stream (default 64 MB): command lines, URLs,
//! HTTP headers, JSON payload fragments and compiler output, one line in
//! 50 carrying a secret (a known value in plain, base64 or URL-encoded
//! form, or a token shape). Measured line by line (`redact_str`, as the
//! journal calls it per string) for: built-in patterns only; plus 100
//! known values (×4 encoded forms); plus the pre-push scanner's rule
//! patterns (brig-scan's built-in set), which is what `brig serve` runs.

use std::time::Instant;

use base64::Engine;
use brig_redact::Redactor;

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(64);
    let secrets: Vec<String> = (0..100)
        .map(|i| format!("s3cr3t-value-{i:03}-Zq9xW2pL7vB4nM8k"))
        .collect();
    let plain = [
        "cargo build --release -p brig-cli --target-dir /workspace/target",
        "GET https://index.crates.io/config.json HTTP/1.1 200 1234 bytes in 12 ms",
        "   Compiling serde_json v1.0.128 (/root/.cargo/registry/src/index.crates.io/serde_json-1.0.128)",
        "{\"event\":\"exec.start\",\"argv\":[\"python3\",\"-m\",\"pytest\",\"-q\",\"tests/test_api.py\"],\"cwd\":\"/workspace\"}",
        "Accept: application/json\r\nUser-Agent: pip/24.0 CPython/3.11.2\r\nHost: pypi.org",
        "test result: ok. 212 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 4.21s",
        "warning: unused variable: `x` --> src/lib.rs:42:9 | 42 | let x = compute(a, b, 0x7f3a9c);",
        "npm http fetch GET 200 https://registry.npmjs.org/left-pad 34ms (cache revalidated)",
    ];
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0;
    let mut i = 0usize;
    while size < mb << 20 {
        let l = if i % 50 == 49 {
            let s = &secrets[i % secrets.len()];
            match (i / 50) % 4 {
                0 => format!("curl -H 'X-Api-Key: {s}' https://api.example.com/v1/items"),
                1 => format!(
                    "echo {} | base64 -d",
                    base64::engine::general_purpose::STANDARD.encode(s)
                ),
                2 => format!("GET /callback?token={} HTTP/1.1", s.replace('-', "%2D")),
                _ => format!("export AWS_ACCESS_KEY_ID=AKIA{:016}", i % 10_000_000),
            }
        } else {
            format!("{} #{i}", plain[i % plain.len()])
        };
        size += l.len() + 1;
        lines.push(l);
        i += 1;
    }
    let scanner = brig_scan::Scanner::builtin();
    let scan_patterns = scanner.redaction_patterns();
    let mut with_values = Redactor::builder();
    for (k, s) in secrets.iter().enumerate() {
        with_values = with_values.secret(format!("S{k}"), s.clone());
    }
    let with_values = with_values.build();
    let mut full = Redactor::builder();
    for (k, s) in secrets.iter().enumerate() {
        full = full.secret(format!("S{k}"), s.clone());
    }
    let mut compiled = 0;
    for (id, p) in &scan_patterns {
        match full.pattern(id.clone(), p) {
            Ok(b) => {
                full = b;
                compiled += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let full = full.build();
    println!(
        "stream: {:.1} MB, {} lines (1 in 50 with a secret); {} known values ({} forms); {compiled} scanner patterns\n",
        size as f64 / 1e6,
        lines.len(),
        secrets.len(),
        with_values.value_forms()
    );
    println!("| Redactor | MB/s | Lines/s | Masked lines |");
    println!("|---|---|---|---|");
    for (name, red) in [
        ("built-in patterns", Redactor::patterns_only()),
        ("+ 100 known values", with_values),
        ("+ scanner rule patterns (brig serve)", full),
    ] {
        // One warm-up pass, then the best of three.
        let mut best = f64::MAX;
        let mut masked = 0;
        for pass in 0..4 {
            let t = Instant::now();
            let mut m = 0;
            for l in &lines {
                if let std::borrow::Cow::Owned(_) = red.redact_str(l) {
                    m += 1;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            if pass > 0 {
                best = best.min(secs);
            }
            masked = m;
        }
        println!(
            "| {name} | {:.0} | {:.0} | {masked} |",
            size as f64 / 1e6 / best,
            lines.len() as f64 / best
        );
    }
}
