//! Egress end to end (issue 4): real clients inside a real `native` session
//! of `brig serve`, through the session's egress channel and brig's proxy
//! and resolver, to the real package registries this machine reaches (they
//! resolve into 203.0.113.0/24, a documentation range the SSRF guard denies
//! unless trusted: these tests trust it explicitly). Every allowed attempt
//! works; every bypass attempt is denied, and every decision is on the
//! session's journal with the rule that made it.

mod journal_support;
mod server_support;

use std::path::Path;
use std::time::Duration;

use journal_support::*;
use serde_json::{json, Value};
use server_support::*;

const PROBE: &str = include_str!("egress/probe.py");

fn registries_policy(cfg: &mut brig_server::ServerConfig) {
    let egress: brig_egress::EgressConfig = toml::from_str(
        r#"
        presets = ["registries"]
        [ssrf]
        trusted_cidrs = ["203.0.113.0/24"]
        "#,
    )
    .unwrap();
    for p in cfg.profiles.values_mut() {
        p.egress = egress.clone();
    }
}

/// A project with one dependency, this toolchain's cargo binary and a
/// stand-in for rustc that only answers cargo's questions (`cargo fetch`
/// compiles nothing), or None when cargo or rustc is not at hand.
fn cargo_upload() -> Option<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let cargo = std::path::PathBuf::from(std::env::var_os("CARGO")?);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let ask = |args: &[&str]| {
        std::process::Command::new(&rustc)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| o.stdout)
    };
    let version = ask(&["-vV"])?;
    let print = ask(&[
        "-",
        "--crate-name",
        "___",
        "--print=file-names",
        "--crate-type",
        "bin",
        "--crate-type",
        "rlib",
        "--crate-type",
        "dylib",
        "--crate-type",
        "cdylib",
        "--crate-type",
        "staticlib",
        "--crate-type",
        "proc-macro",
        "--print=sysroot",
        "--print=split-debuginfo",
        "--print=crate-name",
        "--print=cfg",
        "-Wwarnings",
    ])?;
    let d = tempfile::Builder::new()
        .prefix("brig-cargo-")
        .tempdir()
        .ok()?;
    let p = d.path();
    std::fs::create_dir(p.join("src")).ok()?;
    std::fs::write(
        p.join("Cargo.toml"),
        "[package]\nname = \"fetchme\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"1\"\n",
    )
    .ok()?;
    std::fs::write(p.join("src/main.rs"), "fn main() {}\n").ok()?;
    std::fs::write(p.join("rustc-vV.txt"), version).ok()?;
    std::fs::write(p.join("rustc-print.txt"), print).ok()?;
    std::fs::write(
        p.join("fake-rustc"),
        "#!/bin/sh\nd=\"$(dirname \"$0\")\"\ncase \"$*\" in\n  *--print=file-names*) cat \"$d/rustc-print.txt\" ;;\n  *) cat \"$d/rustc-vV.txt\" ;;\nesac\n",
    )
    .ok()?;
    std::fs::copy(&cargo, p.join("cargo")).ok()?;
    for (f, mode) in [("fake-rustc", 0o755), ("cargo", 0o755)] {
        std::fs::set_permissions(p.join(f), std::fs::Permissions::from_mode(mode)).ok()?;
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(d)
}

/// Whether this machine reaches the registries at all (the CI machine
/// does); without them the allowed half of the test has nothing to reach.
fn registries_reachable() -> bool {
    use std::net::ToSocketAddrs;
    ("pypi.org", 443)
        .to_socket_addrs()
        .map(|mut a| {
            a.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
        })
        .unwrap_or(false)
}

fn net_events<'a>(evs: &'a [Value], outcome: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["action"].as_str().unwrap_or("").starts_with("net.") && e["outcome"] == outcome
        })
        .collect()
}

fn has_denial(evs: &[Value], host: &str, rule_prefix: &str) -> bool {
    net_events(evs, "denied").iter().any(|e| {
        e["details"]["host"] == host && e["rule"].as_str().unwrap_or("").starts_with(rule_prefix)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_reach_allowed_registries_and_every_bypass_is_denied_and_journaled() {
    require_root!();
    every_bypass_is_denied(brig_core::session::RuntimeKind::Native).await;
}

/// The same battery in gVisor sessions, whose 80/443 are caught inside the
/// Sentry's own network stack (`brig sandbox-anyip`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_gvisor_too_every_bypass_is_denied_and_journaled() {
    require_root!();
    every_bypass_is_denied(brig_core::session::RuntimeKind::Gvisor).await;
}

async fn every_bypass_is_denied(runtime: brig_core::session::RuntimeKind) {
    if !registries_reachable() {
        eprintln!("skipped: the package registries are not reachable from this machine");
        return;
    }
    // A service on the host's loopback: nothing in the sandbox may reach it.
    let host_svc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host_svc.set_nonblocking(true).unwrap();
    let host_port = host_svc.local_addr().unwrap().port();

    let srv = Srv::start_with(|cfg| {
        registries_policy(cfg);
        for p in cfg.profiles.values_mut() {
            p.runtime = runtime.clone();
        }
    })
    .await;
    let repo = project();
    std::fs::write(repo.path().join("probe.py"), PROBE).unwrap();
    let info = srv
        .create(json!({ "task": "EGRESS-1", "repo": repo.path(), "memory": "1G" }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    assert!(
        info["layers"].to_string().contains("egress:transparent"),
        "{info}"
    );

    let r = srv
        .exec_req(
            &id,
            json!({ "argv": ["python3", "/workspace/probe.py", host_port.to_string()], "timeout_ms": 300000 }),
        )
        .await;
    assert_eq!(r["status"]["code"], 0, "probe failed: {r}");
    let res: Value = serde_json::from_str(r["stdout"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("probe output: {e}: {r}"));
    let get = |k: &str| res[k].clone();
    let text = |k: &str| res[k].to_string();

    // Allowed: honouring HTTPS_PROXY, and transparently without it.
    assert_eq!(
        get("urllib_allowed")["status"],
        200,
        "{}",
        text("urllib_allowed")
    );
    assert_eq!(
        get("curl_proxy_allowed")["out"],
        "200",
        "{}",
        text("curl_proxy_allowed")
    );
    assert_eq!(
        get("curl_transparent_allowed")["out"],
        "200",
        "{}",
        text("curl_transparent_allowed")
    );
    // Denied with the rule and how to ask for access.
    let d = get("urllib_denied");
    assert_eq!(d["status"], 403, "{d}");
    assert_eq!(d["rule"], "default-deny", "{d}");
    assert!(
        d["body"].as_str().unwrap().contains("[[egress.allow]]"),
        "{d}"
    );
    assert_ne!(
        get("curl_transparent_denied")["code"],
        0,
        "{}",
        text("curl_transparent_denied")
    );
    // IP literals in every disguise: 403 from the proxy's SSRF guard or policy.
    for k in [
        "ip_v4",
        "ip_decimal",
        "ip_hex",
        "ip_octal",
        "ip_v6_loopback",
        "ip_v4_mapped",
        "metadata",
    ] {
        assert_eq!(get(k)["status"], 403, "{k}: {}", text(k));
    }
    for k in [
        "connect_port_22",
        "connect_host_loopback",
        "absolute_uri_denied",
    ] {
        assert!(text(k).contains(" 403 "), "{k}: {}", text(k));
    }
    assert!(
        text("host_header_mismatch").contains(" 400 ")
            || text("host_header_mismatch").contains(" 403 "),
        "{}",
        text("host_header_mismatch")
    );
    let sni = get("sni_mismatch");
    assert!(
        sni["tls"].as_str().unwrap().starts_with("error"),
        "domain fronting got through: {sni}"
    );
    // Around the proxy: nothing routes.
    for k in ["direct_port_22", "direct_host_loopback", "ipv6_global"] {
        assert!(text(k).contains("error"), "{k}: {}", text(k));
    }
    for k in ["udp_quic", "dns_outside_resolver"] {
        assert!(!text(k).contains("answer"), "{k}: {}", text(k));
    }
    // brig's resolver: allowed names answered, the rest refused.
    assert_eq!(get("dns_allowed")["rcode"], 0, "{}", text("dns_allowed"));
    assert!(get("dns_allowed")["answers"].as_u64().unwrap() >= 1);
    assert_eq!(
        get("dns_denied_name")["rcode"],
        3,
        "NXDOMAIN: {}",
        text("dns_denied_name")
    );
    assert_eq!(get("dns_txt")["rcode"], 5, "REFUSED: {}", text("dns_txt"));
    assert_ne!(get("dns_tunnel")["rcode"], 0, "{}", text("dns_tunnel"));
    // The host's loopback service never saw a connection.
    assert!(
        host_svc.accept().is_err(),
        "a sandbox reached the host's loopback"
    );

    // The journal has every decision, with its rule.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let evs = loop {
        let evs = events(&srv, &id).await;
        if has_denial(&evs, "example.com", "default-deny") && has_denial(&evs, "paste.ee", "exfil")
            || tokio::time::Instant::now() > deadline
        {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let allowed = net_events(&evs, "success");
    assert!(
        allowed.iter().any(|e| e["action"] == "net.connect"
            && e["details"]["host"] == "pypi.org"
            && e["rule"] == "registries/pypi"
            && e["details"]["address"]
                .as_str()
                .unwrap_or("")
                .starts_with("203.0.113.")),
        "no allowed pypi.org connection on the journal"
    );
    assert!(has_denial(&evs, "example.com", "default-deny"));
    assert!(
        has_denial(&evs, "paste.ee", "exfil"),
        "the exfiltration deny-list"
    );
    assert!(
        has_denial(&evs, "pypi.org", "tls-")
            || net_events(&evs, "denied")
                .iter()
                .any(|e| e["rule"].as_str().unwrap_or("").contains("sni")),
        "the SNI mismatch"
    );
    let ssrf = net_events(&evs, "denied")
        .iter()
        .filter(|e| e["rule"].as_str().unwrap_or("").starts_with("ssrf:"))
        .count();
    assert!(ssrf >= 5, "IP literals denied by the SSRF guard: {ssrf}");
    assert!(
        net_events(&evs, "denied")
            .iter()
            .any(|e| e["action"] == "net.dns" && e["rule"] == "dns-qtype"),
        "TXT refused on the journal"
    );
    for e in net_events(&evs, "denied") {
        assert!(
            e["details"]["explanation"]["how_to_request_access"].is_string(),
            "a denial without its explanation: {e}"
        );
    }
    // `brig session show` explains the same denials.
    let (s, shown) = srv.call("GET", &format!("/v1/sessions/{id}"), None).await;
    assert_eq!(s, 200, "{shown}");
    let denials = shown["egress_denials"].as_array().expect("egress_denials");
    assert!(!denials.is_empty() && denials.len() <= 20, "{shown}");
    assert!(
        denials.iter().any(|d| d["host"] == "paste.ee"
            && d["rule"].as_str().unwrap_or("").starts_with("exfil")
            && d["how_to_request_access"]
                .as_str()
                .unwrap_or("")
                .contains("disable_default_deny")),
        "{denials:?}"
    );

    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.assert_gone(&id);
    srv.stop().await;
}

/// Node's `fetch` ignores HTTP_PROXY: it is caught transparently, judged by
/// its SNI, and works for an allowed registry; pip, npm, `cargo fetch` and
/// `apt-get download` (which honour the proxy variables) fetch a real
/// package; a denied host or mirror fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_npm_node_cargo_and_apt_work_when_allowed_and_fail_when_denied() {
    require_root!();
    if !registries_reachable() {
        eprintln!("skipped: the package registries are not reachable from this machine");
        return;
    }
    let have = |p: &str| Path::new(p).exists();
    let srv = Srv::start_with(registries_policy).await;
    let info = srv
        .create(json!({ "task": "EGRESS-2", "memory": "1G" }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    let run = |argv: Vec<&'static str>| {
        let srv = &srv;
        let id = id.clone();
        async move {
            srv.exec_req(&id, json!({ "argv": argv, "timeout_ms": 240000 }))
                .await
        }
    };
    let mut checked = 0;
    if have("/usr/bin/pip3") {
        let r = run(vec![
            "pip3",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "six==1.16.0",
            "-d",
            "/workspace/dl",
        ])
        .await;
        assert_eq!(r["status"]["code"], 0, "pip download: {r}");
        let r = run(vec!["sh", "-c", "ls /workspace/dl"]).await;
        assert!(r["stdout"].as_str().unwrap().contains("six-1.16.0"), "{r}");
        let r = run(vec![
            "pip3",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--retries",
            "0",
            "--timeout",
            "5",
            "--index-url",
            "https://example.com/simple",
            "six",
            "-d",
            "/workspace/dl2",
        ])
        .await;
        assert_ne!(r["status"]["code"], 0, "pip through a denied index: {r}");
        checked += 1;
    }
    if have("/usr/bin/npm") {
        let r = run(vec!["npm", "view", "is-number@7.0.0", "version"]).await;
        assert_eq!(r["status"]["code"], 0, "npm view: {r}");
        assert!(r["stdout"].as_str().unwrap().contains("7.0.0"), "{r}");
        checked += 1;
    }
    if have("/usr/bin/node") {
        // Node trusts only its own CA list; this machine's registries are
        // served under a CA of the system bundle (which the sandbox has).
        let ca = json!([["NODE_EXTRA_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt"]]);
        let js = "fetch('https://registry.npmjs.org/is-number').then(r=>{console.log(r.status)},e=>{console.log('error',e.cause&&e.cause.code);process.exit(3)})";
        let r = srv
            .exec_req(&id, json!({ "argv": ["node", "-e", js], "env": ca }))
            .await;
        assert_eq!(r["stdout"], "200\n", "node fetch, transparent: {r}");
        let js = "fetch('https://example.com/').then(r=>{console.log(r.status)},e=>{console.log('error');process.exit(3)})";
        let r = srv
            .exec_req(&id, json!({ "argv": ["node", "-e", js], "env": ca }))
            .await;
        assert_eq!(r["status"]["code"], 3, "node fetch of a denied host: {r}");
        checked += 1;
    }
    if let Some(dir) = cargo_upload() {
        // cargo honours HTTPS_PROXY (libcurl); the project and a cargo binary
        // are uploaded (the host image has no Rust toolchain).
        let repo = dir.path().to_str().unwrap().to_string();
        let c = srv
            .create(json!({ "task": "EGRESS-2c", "memory": "1G", "repo": repo }))
            .await;
        let cid = c["id"].as_str().unwrap().to_string();
        let r = srv
            .exec_req(
                &cid,
                json!({ "argv": ["sh", "-c", "CARGO_HOME=/workspace/home RUSTC=/workspace/fake-rustc ./cargo fetch && ls home/registry/cache/*/"], "timeout_ms": 240000 }),
            )
            .await;
        assert_eq!(r["status"]["code"], 0, "cargo fetch: {r}");
        assert!(r["stdout"].as_str().unwrap().contains("itoa-1."), "{r}");
        let fetched = |evs: &[Value]| {
            net_events(evs, "success")
                .iter()
                .any(|e| e["details"]["host"] == "index.crates.io")
        };
        wait_events(&srv, &cid, fetched).await;
        let (s, _) = srv
            .call("DELETE", &format!("/v1/sessions/{cid}"), None)
            .await;
        assert_eq!(s, 200);
        checked += 1;
    }
    if have("/usr/bin/apt-get") && have("/usr/share/keyrings/debian-archive-keyring.gpg") {
        // apt-get as the sandbox's user, with its state under /workspace;
        // plain HTTP to deb.debian.org (the preset allows port 80 there).
        let apt = |mirror: &str, then: &str| {
            format!(
                "mkdir -p apt/lists/partial apt/cache/archives/partial dl && \
                 echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} bookworm main' > apt/sources.list && \
                 O='-o Dir::Etc::SourceList=/workspace/apt/sources.list -o Dir::Etc::SourceParts=/nonexistent \
                 -o Dir::State::Lists=/workspace/apt/lists -o Dir::Cache=/workspace/apt/cache \
                 -o Debug::NoLocking=1 -o Acquire::Languages=none -o Acquire::Retries=0' && \
                 apt-get $O update -q && cd dl && {then}"
            )
        };
        let ok = apt(
            "http://deb.debian.org/debian",
            "apt-get $O download hostname && ls",
        );
        let r = srv
            .exec_req(
                &id,
                json!({ "argv": ["sh", "-c", ok], "timeout_ms": 240000 }),
            )
            .await;
        assert_eq!(r["status"]["code"], 0, "apt-get download: {r}");
        assert!(r["stdout"].as_str().unwrap().contains("hostname_"), "{r}");
        let denied = apt("http://ftp.us.debian.org/debian", "true");
        let r = srv
            .exec_req(
                &id,
                json!({ "argv": ["sh", "-c", denied], "timeout_ms": 120000 }),
            )
            .await;
        assert!(
            r["status"]["code"] != 0 || r["stderr"].as_str().unwrap_or("").contains("403"),
            "apt-get update from an unlisted mirror: {r}"
        );
        checked += 1;
    }
    assert!(
        checked > 0,
        "no client to test (pip3, npm, node, cargo, apt-get)"
    );
    if have("/usr/bin/node") {
        let caught = |evs: &[Value]| {
            net_events(evs, "success").iter().any(|e| {
                e["details"]["via"] == "transparent" && e["details"]["host"] == "registry.npmjs.org"
            })
        };
        wait_events(&srv, &id, caught).await;
    }
    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}

/// A session over its request rate gets 429s (with Retry-After), journaled
/// under the rate-limit rule; brig.toml's `[egress_limits]` sets the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_its_request_rate_gets_429_and_it_is_journaled() {
    require_root!();
    let srv = Srv::start_with(|cfg| {
        cfg.egress_limits.requests_per_sec = 0.2;
        cfg.egress_limits.request_burst = 2.0;
    })
    .await;
    let info = srv.create(json!({ "task": "EGRESS-3" })).await;
    let id = info["id"].as_str().unwrap().to_string();
    let py = r#"
import urllib.request, urllib.error
out = []
for i in range(5):
    try:
        urllib.request.urlopen("http://example.com/", timeout=10)
        out.append("200")
    except urllib.error.HTTPError as e:
        out.append("%d:%s" % (e.code, e.headers.get("Retry-After") or "-"))
print(" ".join(out))
"#;
    let r = srv.exec(&id, &["python3", "-c", py]).await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    let got: Vec<&str> = r["stdout"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(got.len(), 5, "{r}");
    assert!(
        got[..2].iter().all(|s| s.starts_with("403")),
        "the burst is judged by policy: {got:?}"
    );
    assert!(
        got[2..]
            .iter()
            .all(|s| s.starts_with("429:") && !s.ends_with(":-")),
        "{got:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let evs = events(&srv, &id).await;
        let limited = net_events(&evs, "denied")
            .iter()
            .filter(|e| e["rule"] == "rate-limit:requests")
            .count();
        if limited >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rate-limit denials journaled: {limited}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}
