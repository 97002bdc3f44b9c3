//! Sparse shallow checkout vs a full clone of a large local repository
//! (issue 5 benchmark; docs/BENCHMARKS.md, "Checkout").
//!
//! ```text
//! cargo run --release -p brig-git --example checkout_bench -- [CORPUS_DIR] [RUNS]
//! ```
//!
//! Builds a repository from CORPUS_DIR (default: the first directory under
//! ~/.cargo/registry/src), one commit per top-level entry (so history and
//! size grow together), then times, RUNS times each (default 3, median
//! reported), with a cold page cache not forced (the repo was just written):
//! a full `git clone --no-local`, a `--depth 1` clone, brig's checkout at
//! depth 1 of the whole tree, and brig's checkout at depth 1 of one sparse
//! directory. Sizes are the workspace trees' bytes (`du -sb`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brig_git::checkout::{checkout, CheckoutRequest, Source};

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "gc.auto=0",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

fn du(p: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let corpus = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let base =
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/registry/src");
        std::fs::read_dir(&base)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    });
    let runs: usize = args.next().map(|s| s.parse().unwrap()).unwrap_or(3);
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("big");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let t0 = Instant::now();
    for (i, e) in entries.iter().enumerate() {
        let name = e.file_name().unwrap();
        let st = Command::new("cp")
            .arg("-r")
            .arg(e)
            .arg(repo.join(name))
            .status()
            .unwrap();
        assert!(st.success());
        // Nested .git directories and ignore files would change what is committed.
        let _ = std::fs::remove_dir_all(repo.join(name).join(".git"));
        git(&repo, &["add", "-A", "-f", "."]);
        git(
            &repo,
            &[
                "commit",
                "-qm",
                &format!("add {} ({i})", name.to_string_lossy()),
            ],
        );
    }
    git(&repo, &["gc", "-q"]);
    let sparse_dir = entries[entries.len() / 2]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    eprintln!("built {} commits in {:.0?}", entries.len(), t0.elapsed());
    let repo_bytes = du(&repo.join(".git"));
    let tree_bytes = du(&repo) - repo_bytes;

    let url = format!("file://{}", repo.display());
    let mut results: Vec<(&str, Vec<Duration>, u64)> = vec![];
    let mut run = |label: &'static str, f: &dyn Fn(&Path) -> PathBuf| {
        let mut times = vec![];
        let mut size = 0;
        for r in 0..runs {
            let dir = tmp.path().join(format!("{label}-{r}").replace(' ', "_"));
            std::fs::create_dir_all(&dir).unwrap();
            let t = Instant::now();
            let ws = f(&dir);
            times.push(t.elapsed());
            size = du(&ws);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        results.push((label, times, size));
    };
    run("git clone (full)", &|d| {
        let ws = d.join("ws");
        let st = Command::new("git")
            .args(["clone", "-q", "--no-local", &url])
            .arg(&ws)
            .status()
            .unwrap();
        assert!(st.success());
        ws
    });
    run("git clone --depth 1", &|d| {
        let ws = d.join("ws");
        let st = Command::new("git")
            .args(["clone", "-q", "--depth", "1", &url])
            .arg(&ws)
            .status()
            .unwrap();
        assert!(st.success());
        ws
    });
    let req = |sparse: Vec<String>| CheckoutRequest {
        source: Source::local(&repo),
        reference: Some("main".into()),
        depth: 1,
        sparse,
        name: "big".into(),
        origin_url: "http://git.brig/big.git".into(),
        author_name: "a".into(),
        author_email: "a@b".into(),
    };
    run("brig checkout (depth 1, whole tree)", &|d| {
        let ws = d.join("ws");
        checkout(&req(vec![]), &d.join("gw.git"), &ws, &|_| {}).unwrap();
        ws
    });
    let sparse = sparse_dir.clone();
    run("brig checkout (depth 1, sparse: 1 dir)", &|d| {
        let ws = d.join("ws");
        checkout(&req(vec![sparse.clone()]), &d.join("gw.git"), &ws, &|_| {}).unwrap();
        ws
    });

    println!(
        "repository: {} commits, {:.1} MiB of objects (packed), {:.1} MiB working tree; sparse dir: {sparse_dir}; {runs} runs each, median\n",
        entries.len(),
        repo_bytes as f64 / 1048576.0,
        tree_bytes as f64 / 1048576.0
    );
    println!("| Method | Median | Runs | Workspace on disk |");
    println!("|---|---|---|---|");
    let full = median(results[0].1.clone());
    for (label, times, size) in &results {
        let m = median(times.clone());
        println!(
            "| {label} | {:.2} s ({:.1}× faster than full) | {} | {:.1} MiB |",
            m.as_secs_f64(),
            full.as_secs_f64() / m.as_secs_f64(),
            times
                .iter()
                .map(|t| format!("{:.2}", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            *size as f64 / 1048576.0
        );
    }
}
