//! Authorization latency: exec, net.connect and git.push, with the shipped
//! policies and with 1,000 generated policies on top.
//!
//! cargo run --release -p brig-policy --example policy_bench [-- ITERATIONS]
//!
//! Each figure times single decisions one by one (Instant around each call,
//! after a warm-up), sorted for p50/p99. `authorize` builds the principal's
//! entities per request; `authorize_session` uses the slice built once at
//! session start (what the exec, connect and push paths should call).

use std::hint::black_box;
use std::time::{Duration, Instant};

use brig_policy::*;

/// The same 1,000 rules with their entity moved from the scope into the
/// condition: the worst case for the engine's resource-scope index (every
/// policy of the action is a candidate for every request).
fn generated_unscoped(n: usize) -> String {
    generated(n)
        .replace(
            r#"resource in Brig::Repo::"org/repo-"#,
            r#"resource) when { resource.name == "org/repo-"#,
        )
        .replace(
            r#"resource in Brig::Repo::"org/legacy-"#,
            r#"resource) when { resource.name == "org/legacy-"#,
        )
        .replace(
            r#"resource == Brig::Command::"tool-"#,
            r#"resource) when { resource.name == "tool-"#,
        )
        .replace(
            r#"resource == Brig::Host::"svc-"#,
            r#"resource) when { resource.name == "svc-"#,
        )
        .replace("\")\nwhen {", "\" }\nwhen {")
        .replace("\")\nunless {", "\" }\nunless {")
}

fn generated(n: usize) -> String {
    // Realistic shapes: per-repo push rules for teams, per-tool exec rules,
    // per-host connect rules, and some per-repo forbids.
    let mut s = String::new();
    for i in 0..n {
        let rule = match i % 10 {
            0..=3 => format!(
                r#"@id("gen.push-{i}")
@reason("team {t} pushes its release branches of repo {i}")
permit (principal, action == Brig::Action::"git.push", resource in Brig::Repo::"org/repo-{i}")
when {{ principal.human in Brig::Group::"team-{t}" && resource.name like "release-{i}/*" && !context.force }};
"#,
                t = i % 37
            ),
            4 | 5 => format!(
                r#"@id("gen.forbid-push-{i}")
@reason("repo legacy-{i} is frozen")
forbid (principal, action == Brig::Action::"git.push", resource in Brig::Repo::"org/legacy-{i}")
unless {{ context.approval.granted && context.approval.roles.contains("owner-{i}") }};
"#
            ),
            6 | 7 => format!(
                r#"@id("gen.exec-{i}")
@reason("tool-{i} runs only with its config flag")
permit (principal, action == Brig::Action::"exec", resource == Brig::Command::"tool-{i}")
when {{ context.args.contains("--config=ci-{i}.toml") && principal.task like "PROJ-*" }};
"#
            ),
            _ => format!(
                r#"@id("gen.connect-{i}")
@reason("service {i} is reachable on 443 with GET")
permit (principal, action == Brig::Action::"net.connect", resource == Brig::Host::"svc-{i}.internal.example")
when {{ context.port == 443 && context has method && context.method == "GET" }};
"#
            ),
        };
        s.push_str(&rule);
    }
    s
}

fn measure(iters: usize, mut f: impl FnMut() -> Decision) -> (Duration, Duration, Outcome) {
    let mut outcome = f().outcome;
    for _ in 0..iters / 10 {
        black_box(f());
    }
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        let d = black_box(f());
        t.push(start.elapsed());
        outcome = d.outcome;
    }
    t.sort();
    let p = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    (p(0.50), p(0.99), outcome)
}

fn run(name: &str, e: &PolicyEngine, iters: usize) {
    let human = HumanPrincipal::new("alice")
        .with_groups(&["eng", "team-3"])
        .with_roles(&["dev"]);
    let agent = AgentPrincipal::new("s-0001", human, "PROJ-42", "pr");
    let session = e.session(&agent).expect("session");
    let m = Sensitivity::default().compile().expect("sensitivity");
    let argv: Vec<String> = ["cargo", "test", "--workspace", "--", "--nocapture"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let exec = Request::exec(&agent, &argv, &m.label_command(&argv));
    let connect = Request::net_connect(&agent, "crates.io", 443, Some("GET"), Some("/api/v1"))
        .with_labels(&m.label_host("crates.io"));
    let paths = ["src/lib.rs", "tests/a.rs"];
    let push = Request::git_push(
        &agent,
        "org/repo-3",
        "brig/s-0001",
        false,
        true,
        &m.label_paths(&paths),
    );
    println!("{name}:");
    for (what, req) in [
        ("exec", &exec),
        ("net.connect", &connect),
        ("git.push", &push),
    ] {
        let (p50, p99, o) = measure(iters, || e.authorize(req));
        let (s50, s99, so) = measure(iters, || e.authorize_session(&session, req));
        assert_eq!(o, so);
        println!(
            "  {what:<12} authorize p50 {:>6.1} µs  p99 {:>6.1} µs | authorize_session p50 {:>6.1} µs  p99 {:>6.1} µs  ({o:?})",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            s50.as_secs_f64() * 1e6,
            s99.as_secs_f64() * 1e6,
        );
    }
    // The other outcomes: a denial (default deny, so every candidate is
    // evaluated) and a needs-approval (a second evaluation without the
    // @approval forbids).
    let deny = Request::git_push(&agent, "org/repo-3", "main", false, false, &[]);
    let (d50, d99, o) = measure(iters, || e.authorize_session(&session, &deny));
    println!(
        "  git.push to main (pr)             authorize_session p50 {:>6.1} µs  p99 {:>6.1} µs  ({o:?})",
        d50.as_secs_f64() * 1e6,
        d99.as_secs_f64() * 1e6
    );
    let privileged = AgentPrincipal {
        profile: "privileged".into(),
        ..agent.clone()
    };
    let psession = e.session(&privileged).expect("session");
    let migrate: Vec<String> = ["alembic", "upgrade", "head"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let req = Request::exec(&privileged, &migrate, &m.label_command(&migrate));
    let (n50, n99, o) = measure(iters, || e.authorize_session(&psession, &req));
    println!(
        "  exec migration (privileged)       authorize_session p50 {:>6.1} µs  p99 {:>6.1} µs  ({})",
        n50.as_secs_f64() * 1e6,
        n99.as_secs_f64() * 1e6,
        if matches!(o, Outcome::NeedsApproval { .. }) { "NeedsApproval" } else { "unexpected" }
    );
    // Labelling is on the same path: measure it too.
    let (l50, l99) = {
        let mut t = Vec::with_capacity(iters);
        for _ in 0..iters {
            let start = Instant::now();
            black_box(m.label_command(black_box(&argv)));
            t.push(start.elapsed());
        }
        t.sort();
        (t[t.len() / 2], t[t.len() * 99 / 100])
    };
    println!(
        "  label_command (default [policy.sensitive]) p50 {:.1} µs p99 {:.1} µs",
        l50.as_secs_f64() * 1e6,
        l99.as_secs_f64() * 1e6
    );
}

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let t = Instant::now();
    let shipped = PolicyEngine::shipped().expect("shipped policies");
    println!(
        "engine build (shipped): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    run("shipped policies", &shipped, iters);

    let text = generated(1000);
    let spec = EngineSpec {
        extra: vec![PolicySource::new("generated.cedar", text)],
        ..EngineSpec::default()
    };
    let t = Instant::now();
    let big = PolicyEngine::new(&spec).expect("generated policies");
    println!(
        "engine build (shipped + 1,000 generated, 4 profiles' sets): {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    run(
        "shipped + 1,000 generated policies (resource-scoped)",
        &big,
        iters,
    );

    let spec = EngineSpec {
        extra: vec![PolicySource::new(
            "generated-unscoped.cedar",
            generated_unscoped(1000),
        )],
        ..EngineSpec::default()
    };
    let worst = PolicyEngine::new(&spec).expect("generated unscoped policies");
    run(
        "shipped + 1,000 generated policies (conditions only: worst case)",
        &worst,
        iters,
    );
}
