//! Rough cost of a decision, by hand: `cargo run --release -p brig-egress
//! --example decide_bench`. Not run by the tests.

use std::hint::black_box;
use std::time::Instant;

use brig_egress::{Host, Policy, Request};

fn main() {
    let mut toml = String::from("presets = [\"registries\"]\n");
    for i in 0..1000 {
        toml.push_str(&format!(
            "[[allow]]\nname = \"r{i}\"\ndomains = [\"h{i}.example{i}.com\", \"*.svc{i}.example.net\"]\n"
        ));
    }
    let t = Instant::now();
    let policy = Policy::from_toml(&toml).expect("policy");
    println!(
        "compile: {} rules + shipped lists in {:?}",
        2000,
        t.elapsed()
    );
    let hosts: Vec<Host> = [
        "files.pythonhosted.org",
        "a.b.svc500.example.net",
        "nope.example.org",
        "mybucket.s3.amazonaws.com",
    ]
    .iter()
    .map(|h| Host::parse(h).unwrap())
    .collect();
    for h in &hosts {
        let n = 2_000_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(policy.decide(black_box(&Request::new(h, 443))).allowed);
        }
        let per = t.elapsed().as_nanos() as f64 / n as f64;
        println!("decide({h}): {per:.0} ns");
    }
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        black_box(Host::parse(black_box("Files.PythonHosted.org.")).unwrap());
    }
    println!(
        "Host::parse: {:.0} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        black_box(policy.decide_dns(black_box("index.crates.io"), 1).answer);
    }
    println!(
        "decide_dns (parse + heuristics + policy): {:.0} ns",
        t.elapsed().as_nanos() as f64 / n as f64
    );
}
