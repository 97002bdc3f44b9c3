//! `brig-bench`: the benchmarks of issue 2, measured on the machine it runs
//! on, printed as a markdown report (docs/BENCHMARKS.md is written from it).
//!
//! Run by hand, as root, on a release build:
//!
//! ```text
//! cargo build --release -p brig-cli -p brig-bench
//! target/release/brig-bench --brig target/release/brig all
//! ```
//!
//! It starts the control plane in this process (`brig_server::start` on a
//! throw-away data dir), talks to it over its unix socket exactly as the CLI
//! does (one connection per request), and measures:
//!
//! 1. `spinup`: `POST /v1/sessions` to the first exec of `/bin/true`
//!    returning, for `native` and `gvisor`, interleaved with the references
//!    bare `bwrap ... true` and `runsc do true`;
//! 2. `exec`: exec round-trip of `/bin/true` through the API vs spawning it
//!    directly from this process;
//! 3. `memory`: host memory of K idle native sessions (PSS of every process
//!    in each session's cgroup, the memory cgroup's usage, server RSS growth);
//! 4. `concurrent`: C native sessions created at once, an exec in each at
//!    once, then `POST /v1/kill-all`, and a check that nothing is left.
//!
//! Progress goes to stderr, the report to stdout.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const USAGE: &str =
    "usage: brig-bench [--brig PATH] [-n N] [--exec-n N] [--idle K] [--concurrent C]
                  [all|spinup|exec|memory|concurrent|capture]...
  --brig PATH       the `brig` binary (default: `brig` next to this executable)
  -n N              spin-up iterations per runtime and reference (default 30)
  --exec-n N        exec round-trips (default 300)
  --idle K          idle sessions for the memory figure (default 20)
  --concurrent C    sessions for the concurrency figure (default 50)
  capture           process-capture overhead (issue 3; not part of `all`)
  --brig-b PATH     capture: another build's `brig`, measured in the same rounds (A/B)
  --capture-rounds R  capture: rounds (default 5)
  --capture-n N     capture: execs in the shell loop (default 10000)
  --capture-only W  capture: only workload W (loop or make; repeatable)
Runs as root. Progress on stderr, a markdown report on stdout.";

struct Args {
    brig: PathBuf,
    /// `capture`: a second build's `brig`, run in the same rounds (A/B).
    brig_b: Option<PathBuf>,
    capture_rounds: usize,
    /// `capture`: execs in the shell loop.
    capture_n: usize,
    /// `capture`: only these workloads (`loop`, `make`); empty: both.
    capture_only: Vec<String>,
    n: usize,
    exec_n: usize,
    idle_k: usize,
    concurrent: usize,
    what: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        brig: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("brig")))
            .unwrap_or_else(|| PathBuf::from("brig")),
        brig_b: None,
        capture_rounds: 5,
        capture_n: 10_000,
        capture_only: vec![],
        n: 30,
        exec_n: 300,
        idle_k: 20,
        concurrent: 50,
        what: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|v: &usize| *v > 0)
                .ok_or_else(|| format!("{name} needs a positive number\n{USAGE}"))
        };
        match x.as_str() {
            "--brig" => a.brig = PathBuf::from(it.next().ok_or("--brig needs a path")?),
            "--brig-b" => a.brig_b = Some(PathBuf::from(it.next().ok_or("--brig-b needs a path")?)),
            "--capture-rounds" => a.capture_rounds = num("--capture-rounds")?,
            "--capture-n" => a.capture_n = num("--capture-n")?,
            "--capture-only" => match it.next().as_deref() {
                Some(w @ ("loop" | "make")) => a.capture_only.push(w.to_string()),
                _ => return Err(format!("--capture-only needs loop or make\n{USAGE}")),
            },
            "-n" => a.n = num("-n")?,
            "--exec-n" => a.exec_n = num("--exec-n")?,
            "--idle" => a.idle_k = num("--idle")?,
            "--concurrent" => a.concurrent = num("--concurrent")?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            "all" | "spinup" | "exec" | "memory" | "concurrent" | "capture" => a.what.push(x),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.what.is_empty() || a.what.iter().any(|w| w == "all") {
        a.what = ["spinup", "exec", "memory", "concurrent"]
            .map(String::from)
            .to_vec();
    }
    a.brig =
        std::fs::canonicalize(&a.brig).map_err(|e| format!("--brig {}: {e}", a.brig.display()))?;
    if let Some(b) = &a.brig_b {
        a.brig_b =
            Some(std::fs::canonicalize(b).map_err(|e| format!("--brig-b {}: {e}", b.display()))?);
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("brig-bench: run as root (sessions need namespaces, cgroups and mounts)");
        std::process::exit(2);
    }
    if std::env::var_os("BRIG_LOG").is_some() {
        brig_server::init_logging(false);
    }
    // The same runtime shape as `brig serve`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(args));
    std::process::exit(code);
}

// ---------------------------------------------------------------- stats ----

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }
    fn p(&self, p: f64) -> f64 {
        pct(&self.sorted(), p)
    }
    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }
    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            self.0.len(),
            self.p(50.0),
            self.p(99.0),
            self.min(),
            self.mean(),
            self.max()
        )
    }
}

const TABLE_HEAD: &str =
    "| what | n | p50 ms | p99 ms | min ms | mean ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|";

/// A table of samples: [`TABLE_HEAD`], one row each, a blank line.
fn table(rows: &[(&Samples, &str)]) -> String {
    let mut s = String::from(TABLE_HEAD);
    for (v, name) in rows {
        s.push('\n');
        s.push_str(&v.row(name));
    }
    s.push_str("\n\n");
    s
}

fn mib(bytes: f64) -> String {
    format!("{:.2}", bytes / (1024.0 * 1024.0))
}

// --------------------------------------------------------------- server ----

struct Bench {
    sock: PathBuf,
    data: PathBuf,
}

impl Bench {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        brig_server::client::request(&self.sock, method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn create(&self, body: Value) -> String {
        let (s, v) = self.call("POST", "/v1/sessions", Some(body)).await;
        assert_eq!(s, 201, "create: {v}");
        v["id"].as_str().expect("session id").to_string()
    }

    async fn exec_true(&self, id: &str) {
        let (s, v) = self
            .call(
                "POST",
                &format!("/v1/sessions/{id}/exec"),
                Some(json!({"argv": ["/bin/true"]})),
            )
            .await;
        assert_eq!(s, 200, "exec: {v}");
        assert_eq!(v["status"]["code"], 0, "exec: {v}");
    }

    async fn kill(&self, id: &str) {
        let (s, v) = self
            .call("POST", &format!("/v1/sessions/{id}/kill"), None)
            .await;
        assert_eq!(s, 200, "kill: {v}");
    }

    /// Problems if anything of session `id` is left on the host.
    fn leftovers(&self, id: &str) -> Vec<String> {
        let mut v = vec![];
        let dir = brig_sandbox::workspace::session_dir(&self.data, id);
        if dir.exists() {
            v.push(format!("{} exists", dir.display()));
        }
        let m = brig_sandbox::workspace::mounts_under(&dir);
        if !m.is_empty() {
            v.push(format!("mounts {m:?}"));
        }
        if brig_sandbox::cgroup::SessionCgroup::new(id).exists() {
            v.push(format!("cgroup brig/{id}"));
        }
        let state = brig_sandbox::runtime::runtimes_dir(&self.data)
            .join("native")
            .join(id);
        if state.exists() {
            v.push(format!("{} exists", state.display()));
        }
        v
    }
}

async fn run(args: Args) -> i32 {
    let dir = tempfile::Builder::new()
        .prefix("brig-bench-")
        .tempdir()
        .expect("data dir");
    // The runtime's setup runs as the sandbox's mapped root: paths must be traversable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut cfg = brig_server::ServerConfig::embedded(dir.path());
    cfg.brig_exe = args.brig.clone();
    let server = match brig_server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("brig-bench: cannot start the control plane: {e}");
            return 1;
        }
    };
    let b = Bench {
        sock: server.socket_path().to_path_buf(),
        data: dir.path().to_path_buf(),
    };
    // `capture --brig-b`: a second control plane whose sessions run that build.
    let dir_b = tempfile::Builder::new()
        .prefix("brig-bench-b-")
        .tempdir()
        .expect("data dir");
    let mut server_b = None;
    if let Some(brig_b) = args
        .brig_b
        .clone()
        .filter(|_| args.what.iter().any(|w| w == "capture"))
    {
        std::fs::set_permissions(dir_b.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let mut cfg = brig_server::ServerConfig::embedded(dir_b.path());
        cfg.brig_exe = brig_b;
        match brig_server::start(cfg).await {
            Ok(s) => server_b = Some(s),
            Err(e) => {
                eprintln!("brig-bench: cannot start the second control plane: {e}");
                return 1;
            }
        }
    }
    let bench_b = server_b.as_ref().map(|s| Bench {
        sock: s.socket_path().to_path_buf(),
        data: dir_b.path().to_path_buf(),
    });

    let mut out = String::new();
    out.push_str("## Sessions (issue 2)\n\n");
    out.push_str(&machine_facts(&args));
    let mut ok = true;
    for w in args.what.clone() {
        let section = match w.as_str() {
            "spinup" => spinup(&b, &args).await,
            "exec" => exec_overhead(&b, &args).await,
            "memory" => memory(&b, &args).await,
            "concurrent" => concurrent(&b, &args).await,
            "capture" => capture(&b, bench_b.as_ref(), &args).await,
            _ => unreachable!(),
        };
        match section {
            Ok(s) => out.push_str(&s),
            Err(e) => {
                ok = false;
                eprintln!("brig-bench: {w}: {e}");
                out.push_str(&format!("### {w}\n\nFAILED: {e}\n\n"));
            }
        }
    }
    if let Err(e) = server.shutdown().await {
        eprintln!("brig-bench: shutdown: {e}");
    }
    if let Some(s) = server_b {
        if let Err(e) = s.shutdown().await {
            eprintln!("brig-bench: shutdown: {e}");
        }
    }
    println!("{out}");
    if ok {
        0
    } else {
        1
    }
}

// -------------------------------------------------------------- machine ----

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn machine_facts(args: &Args) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_else(|| "?".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let cg = match brig_sandbox::cgroup::detect() {
        brig_sandbox::cgroup::Version::V1 => "v1",
        brig_sandbox::cgroup::Version::V2 => "v2",
    };
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "?".into());
    format!(
        "Machine (read by the bench at run time):\n\n\
         | fact | value |\n|---|---|\n\
         | CPUs (`nproc`) | {} |\n| CPU model | {model} |\n| memory | {mem} |\n\
         | kernel | {} |\n| OS | {os} |\n| cgroups | {cg} |\n\
         | runsc | {} |\n| bwrap | {} |\n| brig binary | `{}` |\n\n",
        sh("nproc", &[]),
        sh("uname", &["-r"]),
        sh("runsc", &["--version"]),
        sh("bwrap", &["--version"]),
        args.brig.display(),
    )
}

// -------------------------------------------------------------- spin-up ----

const BWRAP: &[&str] = &[
    "--unshare-all",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/bin",
    "/bin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "true",
];

fn run_ref(cmd: &str, args: &[&str]) -> Result<Duration, String> {
    let t = Instant::now();
    let st = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let d = t.elapsed();
    if !st.success() {
        return Err(format!("{cmd} {args:?}: {st}"));
    }
    Ok(d)
}

async fn spinup_once(b: &Bench, runtime: &str) -> Duration {
    let t = Instant::now();
    let id = b
        .create(json!({"task": "bench-spinup", "runtime": runtime}))
        .await;
    b.exec_true(&id).await;
    let d = t.elapsed();
    b.kill(&id).await;
    d
}

/// A second control plane without a warm pool (`[pool] warm = 0`): every
/// create starts its sandbox cold, as the first of its kind does.
async fn cold_plane(
    args: &Args,
) -> Result<(brig_server::RunningServer, Bench, tempfile::TempDir), String> {
    let dir = tempfile::Builder::new()
        .prefix("brig-bench-cold-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .map_err(|e| e.to_string())?;
    let mut cfg = brig_server::ServerConfig::embedded(dir.path());
    cfg.brig_exe = args.brig.clone();
    cfg.pool.warm = 0;
    let server = brig_server::start(cfg)
        .await
        .map_err(|e| format!("cannot start the pool-less control plane: {e}"))?;
    let b = Bench {
        sock: server.socket_path().to_path_buf(),
        data: dir.path().to_path_buf(),
    };
    Ok((server, b, dir))
}

/// A counter of the control plane's `/metrics`.
async fn metric(b: &Bench, series: &str) -> f64 {
    let text = match brig_server::client::request_raw(&b.sock, "GET", "/metrics", None).await {
        Ok((_, body)) => String::from_utf8_lossy(&body).into_owned(),
        Err(_) => return f64::NAN,
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

async fn spinup(b: &Bench, args: &Args) -> Result<String, String> {
    let (cold_server, cold, _cold_dir) = cold_plane(args).await?;
    let measured = spinup_with(b, &cold, args).await;
    if let Err(e) = cold_server.shutdown().await {
        eprintln!("brig-bench: shutdown: {e}");
    }
    measured
}

async fn spinup_with(b: &Bench, cold: &Bench, args: &Args) -> Result<String, String> {
    let runsc_root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rr = format!("--root={}", runsc_root.path().display());
    let runsc: Vec<&str> = vec![&rr, "--network=none", "--platform=ptrace", "do", "true"];
    // Warm-up (page cache, first-use paths; the pool's first create of
    // the template, which starts cold), not counted.
    spinup_once(b, "native").await;
    spinup_once(cold, "native").await;
    spinup_once(b, "gvisor").await;
    run_ref("/usr/bin/bwrap", BWRAP)?;
    run_ref("/usr/bin/runsc", &runsc)?;
    let hits0 = metric(b, "brig_pool_claims_total{result=\"hit\"}").await;
    let misses0 = metric(b, "brig_pool_claims_total{result=\"miss\"}").await;
    let (mut native, mut cold_native, mut gvisor, mut bwrap, mut rsc) = Default::default();
    let (n_s, c_s, g_s, b_s, r_s): (
        &mut Samples,
        &mut Samples,
        &mut Samples,
        &mut Samples,
        &mut Samples,
    ) = (
        &mut native,
        &mut cold_native,
        &mut gvisor,
        &mut bwrap,
        &mut rsc,
    );
    for i in 0..args.n {
        eprintln!("spin-up {}/{}", i + 1, args.n);
        // Interleaved, rotating which goes first.
        for k in 0..5 {
            match (i + k) % 5 {
                0 => n_s.push(spinup_once(b, "native").await),
                1 => c_s.push(spinup_once(cold, "native").await),
                2 => g_s.push(spinup_once(b, "gvisor").await),
                3 => b_s.push(run_ref("/usr/bin/bwrap", BWRAP)?),
                _ => r_s.push(run_ref("/usr/bin/runsc", &runsc)?),
            }
        }
    }
    let hits = metric(b, "brig_pool_claims_total{result=\"hit\"}").await - hits0;
    let misses = metric(b, "brig_pool_claims_total{result=\"miss\"}").await - misses0;
    let ratio = native.p(50.0) / bwrap.p(50.0);
    let cold_ratio = cold_native.p(50.0) / bwrap.p(50.0);
    let mut s = String::from("### 1. Spin-up\n\n");
    s.push_str(&format!(
        "API call (`POST /v1/sessions`) to the first exec's exit recorded (`POST /v1/sessions/{{id}}/exec` \
         of `/bin/true` returned), {} iterations each, interleaved (the order rotates every round), \
         each session killed between iterations (not timed); one warm-up of each not counted.\n\n",
        args.n
    ));
    s.push_str(&table(&[
        (
            &native,
            "brig `native` session (embedded defaults: warm pool)",
        ),
        (
            &cold_native,
            "brig `native` session, cold (`[pool] warm = 0`)",
        ),
        (&gvisor, "brig `gvisor` session (not pooled)"),
        (&bwrap, "bare `bwrap ... true` (reference)"),
        (
            &rsc,
            "bare `runsc --network=none --platform=ptrace do true` (reference)",
        ),
    ]));
    s.push_str(&format!(
        "native p50 / bwrap p50 = **{ratio:.2}×** (cold: {cold_ratio:.2}×); gvisor p50 / runsc-do p50 = {:.2}×. \
         Warm-pool creates that found a sandbox ready: {hits} of {} (the others started cold).\n\n",
        gvisor.p(50.0) / rsc.p(50.0),
        hits + misses
    ));
    s.push_str(&format!(
        "Targets: native p50 ≤ 60 ms: **{}** ({:.1} ms); native p50 ≤ 2× bare bwrap: **{}** ({ratio:.2}×).\n\n",
        met(native.p(50.0) <= 60.0),
        native.p(50.0),
        met(ratio <= 2.0)
    ));
    Ok(s)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

// ----------------------------------------------------------------- exec ----

async fn exec_overhead(b: &Bench, args: &Args) -> Result<String, String> {
    let id = b.create(json!({"task": "bench-exec"})).await;
    for _ in 0..10 {
        b.exec_true(&id).await;
        run_ref("/bin/true", &[])?;
    }
    let (mut api, mut direct) = (Samples::default(), Samples::default());
    for i in 0..args.exec_n {
        if i % 100 == 0 {
            eprintln!("exec {}/{}", i, args.exec_n);
        }
        let t = Instant::now();
        b.exec_true(&id).await;
        api.push(t.elapsed());
        direct.push(run_ref("/bin/true", &[])?);
    }
    b.kill(&id).await;
    let diff50 = api.p(50.0) - direct.p(50.0);
    let diff99 = api.p(99.0) - direct.p(99.0);
    let mut s = String::from("### 2. Exec round-trip overhead\n\n");
    s.push_str(&format!(
        "One running `native` session; {} round-trips of `POST /v1/sessions/{{id}}/exec` `/bin/true` \
         (new connection per request, as the CLI does; the exec is journaled in SQLite before the \
         answer), each followed by spawning `/bin/true` directly from the bench process \
         (`std::process::Command::status`); 10 warm-ups of each not counted.\n\n",
        args.exec_n
    ));
    s.push_str(&table(&[
        (&api, "exec through the API"),
        (&direct, "direct spawn + wait"),
    ]));
    s.push_str(&format!(
        "Overhead: p50 **{diff50:.2} ms**, p99 {diff99:.2} ms (difference of the percentiles). \
         Target ≤ 3 ms p50: **{}**.\n\n",
        met(diff50 <= 3.0)
    ));
    Ok(s)
}

// -------------------------------------------------------------- capture ----

/// The process-heavy workloads of the issue: 10,000 short commands from a
/// shell loop (the worst case: nothing but execs), and building a small C
/// project with make (40 files, one compile each, then a link).
fn shell_loop(n: usize) -> String {
    format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done")
}
const MAKE: &str = "set -e; d=$(mktemp -d /workspace/cproj.XXXXXX); cd \"$d\"; \
    for i in $(seq 1 40); do \
      printf 'int f%d(int x) { int s = 0; for (int k = 0; k < x; k++) s += k * %d; return s; }\\n' $i $i > f$i.c; \
    done; \
    printf 'int main(void) { return 0; }\\n' > main.c; \
    printf 'OBJS = $(patsubst %%.c,%%.o,$(wildcard *.c))\\nprog: $(OBJS)\\n\\tgcc -o $@ $(OBJS)\\n%%.o: %%.c\\n\\tgcc -O1 -c $< -o $@\\n' > Makefile; \
    make -s; test -x prog; cd /; rm -rf \"$d\"";

/// CPU time (user + system) of this whole process so far: the control
/// plane runs in it, so a difference over a window is what brig spent.
fn self_cpu() -> Duration {
    // SAFETY: getrusage writes one plain struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of this process's threads, summed by thread name (from each
/// thread's schedstat, in ns): where the control plane's CPU went.
fn threads_cpu() -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(comm.trim().to_string()).or_insert(0) += ns;
    }
    out
}

/// `after - before` per thread name, in ms, biggest first (threads that
/// ended in between are not counted).
fn threads_delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut v: Vec<(String, f64)> = after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0);
            (k.clone(), a.saturating_sub(b) as f64 / 1e6)
        })
        .filter(|(_, ms)| *ms >= 0.05)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(k, ms)| format!("{k} {ms:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the control plane has left to do once an exec has ended (the
/// journal's linger and last batch): waited out before its CPU is read.
const SETTLE: Duration = Duration::from_millis(300);

/// Wall time of the loop in a real session of `brig serve` (capture on,
/// every process journaled in SQLite by the same process as it runs), the
/// journaled event count, and this process's CPU time from the exec's start
/// until the journal has settled.
async fn loop_captured(
    b: &Bench,
    script: &str,
    want: usize,
) -> Result<(Duration, usize, Duration), String> {
    let ready0 = metric(b, "brig_pool_ready").await.max(1.0);
    let id = b.create(json!({"task": "bench-capture"})).await;
    // The create took a warm sandbox and the pool is building the next one:
    // wait for it, or that build would run on the same CPUs as the loop.
    let refill = Instant::now();
    while metric(b, "brig_pool_ready").await < ready0 {
        if refill.elapsed() > Duration::from_secs(60) {
            b.kill(&id).await;
            return Err("the warm pool did not refill within 60 s of a create".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = refill.elapsed();
    let threads0 = threads_cpu();
    let cpu0 = self_cpu();
    let t = Instant::now();
    let (s, v) = b
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"argv": ["sh", "-c", script], "timeout_ms": 300_000})),
        )
        .await;
    let d = t.elapsed();
    if s != 200 || v["status"]["code"] != 0 {
        return Err(format!("captured loop: {v}"));
    }
    tokio::time::sleep(SETTLE).await;
    let cpu = self_cpu() - cpu0;
    eprintln!(
        "  journaled exec (after {} ms of pool refill): CPU by thread, ms: {}",
        waited.as_millis(),
        threads_delta(&threads0, &threads_cpu())
    );
    // Let the journal catch up, then count what it holds.
    let mut n = 0;
    for _ in 0..600 {
        let (_, evs) = b
            .call("GET", &format!("/v1/sessions/{id}/events"), None)
            .await;
        n = evs
            .as_array()
            .map(|a| a.iter().filter(|e| e["action"] == "process.exec").count())
            .unwrap_or(0);
        if n > want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.kill(&id).await;
    Ok((d, n, cpu))
}

/// The same loop in the same kind of sandbox with capture off (built
/// through `brig_sandbox` directly: the control plane has no such switch).
async fn loop_direct(
    b: &Bench,
    brig: &std::path::Path,
    capture: bool,
    script: &str,
) -> Result<(Duration, Duration), String> {
    let paths = brig_sandbox::SandboxPaths {
        data_dir: b.data.clone(),
        brig_exe: brig.to_path_buf(),
    };
    let image = brig_sandbox::image::resolve(&paths, "host").map_err(|e| e.to_string())?;
    let sb = brig_sandbox::Sandbox::create_with_image(
        &paths,
        brig_sandbox::SandboxRequest {
            id: brig_core::SessionId::generate(),
            runtime: brig_core::session::RuntimeKind::Native,
            image: "host".into(),
            limits: brig_core::session::Limits::default(),
            uploads: vec![],
            checkout: None,
            trust_ca: None,
            upload_cap_bytes: 0,
            no_capture: !capture,
            hold_words: vec![],
        },
        image,
    )
    .await
    .map_err(|e| e.to_string())?;
    let want = if capture {
        brig_sandbox::capture::LAYER
    } else {
        "capture:off"
    };
    if !sb.layers.iter().any(|l| l == want) {
        return Err(format!("no {want} in {:?}", sb.layers));
    }
    // Drain the process events as the control plane would, minus the journal.
    if let Some(mut events) = sb.process_events() {
        tokio::spawn(async move { while events.recv().await.is_some() {} });
    }
    let cpu0 = self_cpu();
    let t = Instant::now();
    let mut h = sb
        .exec(brig_core::wire::Spawn {
            argv: ["sh", "-c", script].map(String::from).to_vec(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/workspace".into(),
            tty: None,
            decided: false,
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut res = Err("no exit".to_string());
    while let Some(ev) = h.events.recv().await {
        match ev {
            brig_sandbox::ExecEvent::Exited(st) if st.code == Some(0) => {
                let d = t.elapsed();
                tokio::time::sleep(SETTLE).await;
                res = Ok((d, self_cpu() - cpu0));
                break;
            }
            brig_sandbox::ExecEvent::Exited(st) => {
                res = Err(format!("uncaptured loop: {st:?}"));
                break;
            }
            brig_sandbox::ExecEvent::Failed(e) => {
                res = Err(e);
                break;
            }
            _ => {}
        }
    }
    sb.kill_now();
    let _ = sb.destroy().await;
    res
}

/// One build's samples of one workload.
#[derive(Default)]
struct CaptureSamples {
    on: Samples,
    bare: Samples,
    off: Samples,
    journaled: usize,
    /// This process's CPU time over each variant's exec (and settle), ms.
    cpu_on: Samples,
    cpu_bare: Samples,
}

impl CaptureSamples {
    async fn round(
        &mut self,
        b: &Bench,
        brig: &std::path::Path,
        script: &str,
        want: usize,
    ) -> Result<(), String> {
        let (d, n, cpu) = loop_captured(b, script, want).await?;
        self.on.push(d);
        self.cpu_on.push(cpu);
        self.journaled = n;
        self.off.push(loop_direct(b, brig, false, script).await?.0);
        let (d, cpu) = loop_direct(b, brig, true, script).await?;
        self.bare.push(d);
        self.cpu_bare.push(cpu);
        Ok(())
    }

    /// (journaled, capture alone) overhead in % of p50 off.
    fn overheads(&self) -> (f64, f64) {
        let off = self.off.p(50.0);
        (
            (self.on.p(50.0) / off - 1.0) * 100.0,
            (self.bare.p(50.0) / off - 1.0) * 100.0,
        )
    }

    fn report(&self, s: &mut String, build: &str) {
        s.push_str(&table(&[
            (&self.on, "capture on"),
            (&self.bare, "capture on, events drained, no journal"),
            (&self.off, "capture off"),
        ]));
        let (overhead, alone) = self.overheads();
        s.push_str(&format!(
            "{build}Overhead (p50 on / p50 off − 1): **{overhead:.1} %** with the journal, \
             {alone:.1} % for the capture itself (no journal). Target ≤ 5 %: **{}**. \
             The last captured round left {} `process.exec` events on the journal.\n\n",
            met(overhead <= 5.0),
            self.journaled
        ));
        // The control plane's CPU beyond draining the events, per journaled
        // process (an exec and an exit event each).
        let extra = self.cpu_on.p(50.0) - self.cpu_bare.p(50.0);
        s.push_str(&format!(
            "{build}CPU of `brig serve` (this process) over the exec and {} ms after, p50: \
             {:.1} ms journaled, {:.1} ms with the events drained only: **{:.1} µs per \
             journaled process** for the API exec and the journal.\n\n",
            SETTLE.as_millis(),
            self.cpu_on.p(50.0),
            self.cpu_bare.p(50.0),
            extra * 1000.0 / self.journaled.max(1) as f64,
        ));
    }
}

async fn capture(b: &Bench, b2: Option<&Bench>, args: &Args) -> Result<String, String> {
    let mut s = String::from("### Process capture overhead\n\n");
    let rounds = args.capture_rounds;
    let workloads = [
        (
            "loop",
            format!("shell loop of {} `/bin/true`", args.capture_n),
            shell_loop(args.capture_n),
            args.capture_n,
        ),
        (
            "make",
            "`make` of a 41-file C project".to_string(),
            MAKE.to_string(),
            80,
        ),
    ];
    for (key, name, script, want) in workloads {
        if !args.capture_only.is_empty() && !args.capture_only.iter().any(|w| w == key) {
            continue;
        }
        let (mut a, mut other) = (CaptureSamples::default(), CaptureSamples::default());
        for i in 0..rounds {
            eprintln!("capture ({name}) round {}/{rounds}", i + 1);
            a.round(b, &args.brig, &script, want).await?;
            if let (Some(b2), Some(brig_b)) = (b2, &args.brig_b) {
                other.round(b2, brig_b, &script, want).await?;
            }
        }
        s.push_str(&format!(
            "#### {name}\n\n`sh -c '{script}'` in a `native` session, {rounds} rounds alternating: capture on \
             (a session of `brig serve`, exec through the API, every process journaled) and capture \
             off (the same sandbox built through `brig_sandbox` with `no_capture`), and capture on in a sandbox built \
             the same way whose process events are drained but not journaled. Wall time of the \
             exec, ms.{}\n\n",
            if b2.is_some() {
                " Two builds (A: `--brig`, B: `--brig-b`), each round running A's three variants, then B's."
            } else {
                ""
            }
        ));
        if b2.is_some() {
            s.push_str(&format!("A (`{}`):\n\n", args.brig.display()));
            a.report(&mut s, "A: ");
            let bb = args.brig_b.as_ref().expect("with b2");
            s.push_str(&format!("B (`{}`):\n\n", bb.display()));
            other.report(&mut s, "B: ");
        } else {
            a.report(&mut s, "");
        }
    }
    Ok(s)
}

// --------------------------------------------------------------- memory ----

fn pss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
}

fn rss_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

fn cgroup_procs(id: &str) -> Vec<i32> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/pids/brig/{id}/cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn cgroup_mem(id: &str) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/brig/{id}/memory.usage_in_bytes"
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn drop_caches_settle() {
    // Let freed memory and RCU settle before reading RSS.
    std::thread::sleep(Duration::from_millis(500));
}

async fn memory(b: &Bench, args: &Args) -> Result<String, String> {
    // Warm-up: the first session maps everything the server needs.
    let w = b.create(json!({"task": "bench-mem"})).await;
    b.exec_true(&w).await;
    b.kill(&w).await;
    drop_caches_settle();
    let rss0 = rss_kib("self", "VmRSS:");
    let mut ids = vec![];
    for i in 0..args.idle_k {
        eprintln!("idle session {}/{}", i + 1, args.idle_k);
        let id = b.create(json!({"task": "bench-mem"})).await;
        b.exec_true(&id).await;
        ids.push(id);
    }
    // Idle: no exec for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib("self", "VmRSS:");
    let (mut pss, mut cg, mut nprocs) = (vec![], vec![], 0usize);
    let mut comms = std::collections::BTreeSet::new();
    for id in &ids {
        let procs = cgroup_procs(id);
        nprocs += procs.len();
        let mut sum = 0u64;
        for p in &procs {
            sum += pss_kib(*p).unwrap_or(0) * 1024;
            comms.insert(comm(*p));
        }
        pss.push(sum as f64);
        cg.push(cgroup_mem(id) as f64);
    }
    for id in &ids {
        b.kill(id).await;
    }
    let k = ids.len() as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let maxf = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
    let growth = (rss1 as f64 - rss0 as f64) * 1024.0 / k;
    let mut s = String::from("### 3. Host memory per idle session\n\n");
    s.push_str(&format!(
        "{} idle `native` sessions (each created, one `/bin/true` exec, then 2 s without activity). \
         Per session: the PSS (`/proc/<pid>/smaps_rollup`) summed over every process in its pids \
         cgroup (`/sys/fs/cgroup/pids/brig/<id>/cgroup.procs`: {:.1} processes per session, {}), \
         the memory cgroup's `memory.usage_in_bytes` (charged pages: the processes' anonymous \
         memory, page tables, kernel memory and page cache touched, incl. the tmpfs workspace's \
         pages), and the control plane's RSS growth divided by the number of sessions (the control \
         plane runs inside the bench process; its RSS read after a warm-up session).\n\n",
        args.idle_k,
        nprocs as f64 / k,
        comms.into_iter().collect::<Vec<_>>().join(", "),
    ));
    s.push_str("| figure (per idle session) | mean MiB | max MiB |\n|---|---:|---:|\n");
    s.push_str(&format!(
        "| PSS of the sandbox's processes | {} | {} |\n",
        mib(mean(&pss)),
        mib(maxf(&pss))
    ));
    s.push_str(&format!(
        "| memory cgroup usage | {} | {} |\n",
        mib(mean(&cg)),
        mib(maxf(&cg))
    ));
    s.push_str(&format!(
        "| brig server RSS growth / K | {} | |\n",
        mib(growth)
    ));
    let total = mean(&pss) + growth.max(0.0);
    s.push_str(&format!(
        "| **PSS + server growth** | **{}** | |\n\n",
        mib(total)
    ));
    s.push_str(&format!(
        "Target ≤ 5 MiB per idle session, judged on PSS of the sandbox's processes plus the \
         server's growth per session: **{}** ({} MiB). PSS is the honest host-memory figure: \
         the sandbox's init is brig's own binary, whose text pages are shared by every session \
         and the server, so RSS would count them once per session; PSS charges each session its \
         fair share. The cgroup figure is shown for completeness: it also counts page cache and \
         kernel objects (the mount namespace, tmpfs and cgroup structures) charged on creation.\n\n",
        met(total <= 5.0 * 1024.0 * 1024.0),
        mib(total)
    ));
    Ok(s)
}

// ----------------------------------------------------------- concurrent ----

async fn concurrent(b: &Bench, args: &Args) -> Result<String, String> {
    let c = args.concurrent;
    let sock = b.sock.clone();
    eprintln!("creating {c} sessions concurrently");
    let t = Instant::now();
    let mut tasks = vec![];
    for _ in 0..c {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = brig_server::client::request(
                &sock,
                "POST",
                "/v1/sessions",
                Some(&json!({"task": "bench-concurrent"})),
            )
            .await;
            (t.elapsed(), r)
        }));
    }
    let mut creates = Samples::default();
    let mut ids = vec![];
    let mut errors = vec![];
    for t in tasks {
        let (d, r) = t.await.map_err(|e| e.to_string())?;
        match r {
            Ok((201, v)) => {
                creates.push(d);
                ids.push(v["id"].as_str().unwrap_or_default().to_string());
            }
            Ok((s, v)) => errors.push(format!("{s}: {v}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let create_wall = t.elapsed();
    eprintln!("exec in {} sessions concurrently", ids.len());
    let t = Instant::now();
    let mut tasks = vec![];
    for id in ids.clone() {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = brig_server::client::request(
                &sock,
                "POST",
                &format!("/v1/sessions/{id}/exec"),
                Some(&json!({"argv": ["/bin/sh", "-c", "echo ok"]})),
            )
            .await;
            (t.elapsed(), r)
        }));
    }
    let mut execs = Samples::default();
    for t in tasks {
        let (d, r) = t.await.map_err(|e| e.to_string())?;
        match r {
            Ok((200, v)) if v["stdout"] == "ok\n" => execs.push(d),
            Ok((s, v)) => errors.push(format!("exec {s}: {v}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let exec_wall = t.elapsed();
    // The cgroups of all sessions, for the "nothing left" check.
    let live_procs: usize = ids.iter().map(|id| cgroup_procs(id).len()).sum();
    eprintln!("kill-all");
    let t = Instant::now();
    let (s, v) = b.call("POST", "/v1/kill-all", None).await;
    let kill_wall = t.elapsed();
    if s != 200 {
        return Err(format!("kill-all: {s} {v}"));
    }
    let killed = v["killed"].as_array().map(|a| a.len()).unwrap_or(0);
    let server_ms = v["duration_ms"].as_u64().unwrap_or(0);
    let mut left = vec![];
    for id in &ids {
        left.extend(b.leftovers(id));
    }
    let parent_children: Vec<String> = std::fs::read_dir("/sys/fs/cgroup/pids/brig")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| ids.contains(n))
                .collect()
        })
        .unwrap_or_default();
    left.extend(
        parent_children
            .iter()
            .map(|n| format!("pids cgroup brig/{n}")),
    );
    let (ls, lv) = b.call("GET", "/v1/sessions", None).await;
    let still_live = if ls == 200 {
        lv.as_array().map(|a| a.len()).unwrap_or(0)
    } else {
        usize::MAX
    };

    let mut s = format!("### 4. {c} concurrent sessions\n\n");
    s.push_str(&format!(
        "{c} `native` sessions created at once (one task and connection each), then one exec \
         (`sh -c 'echo ok'`) in every one at once, then `POST /v1/kill-all`; afterwards every \
         session dir, mount, cgroup and runtime state is checked to be gone.\n\n"
    ));
    s.push_str(&table(&[
        (&creates, &format!("create (each of {c}, concurrent)")),
        (&execs, &format!("exec (each of {c}, concurrent)")),
    ]));
    s.push_str(&format!(
        "| figure | value |\n|---|---|\n\
         | sessions created | {} of {c} ({} errors) |\n\
         | wall time, all creates | {:.0} ms |\n\
         | wall time, all execs | {:.0} ms |\n\
         | processes in their cgroups before kill-all | {live_procs} |\n\
         | `POST /v1/kill-all`, client-observed | **{:.0} ms** |\n\
         | `POST /v1/kill-all`, server-reported `duration_ms` | {server_ms} ms |\n\
         | sessions killed | {killed} |\n\
         | live sessions afterwards | {still_live} |\n\
         | left on the host afterwards | {} |\n\n",
        ids.len(),
        errors.len(),
        create_wall.as_secs_f64() * 1000.0,
        exec_wall.as_secs_f64() * 1000.0,
        kill_wall.as_secs_f64() * 1000.0,
        if left.is_empty() {
            "nothing".to_string()
        } else {
            left.join("; ")
        }
    ));
    if !errors.is_empty() {
        s.push_str(&format!("Errors: {}\n\n", errors.join("; ")));
    }
    s.push_str(&format!(
        "Target: kill-all of {c} < 1 s: **{}** ({:.0} ms); nothing left: **{}**.\n\n",
        met(kill_wall < Duration::from_secs(1) && killed == ids.len()),
        kill_wall.as_secs_f64() * 1000.0,
        met(left.is_empty() && still_live == 0)
    ));
    Ok(s)
}
