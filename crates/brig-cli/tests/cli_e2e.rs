//! End to end through the binary: `brig serve` as a child process, then the
//! client commands against it. Needs root (sandboxes), as CI runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod cli_support;

use cli_support::*;
fn project(dir: &Path) -> PathBuf {
    let p = dir.join("proj");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("hello.txt"), "hello from the host\n").unwrap();
    p
}

#[test]
fn session_lifecycle_through_the_cli() {
    let s = Server::start();
    let proj = project(s.dir.path());

    // create: the id on stdout, nothing else.
    let o = s.brig(&[
        "session",
        "create",
        "--task",
        "CLI-1",
        "--repo",
        proj.to_str().unwrap(),
        "--memory",
        "512M",
    ]);
    assert!(
        o.status.success(),
        "create: {}\n{}",
        text(&o.stderr),
        s.log()
    );
    let id = text(&o.stdout).trim().to_string();
    assert!(id.starts_with("s-") && id.len() == 12, "{id:?}");

    // list/show --json: the API's shapes.
    let list = s.json(&["session", "list"]);
    let arr = list.as_array().expect("list is an array");
    assert!(arr.iter().any(|x| x["id"] == id.as_str()), "{list}");
    let show = s.json(&["session", "show", &id]);
    assert_eq!(show["id"], id.as_str());
    assert_eq!(show["task"], "CLI-1");
    assert_eq!(show["limits"]["memory_bytes"], 512u64 << 20);
    assert!(show["image_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let o = s.brig(&["session", "list"]);
    assert!(text(&o.stdout).starts_with("ID "), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains(&id));

    // exec: exit code, and stdout/stderr kept apart.
    let o = s.brig(&[
        "session",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");

    // The repo was copied into /workspace, the default cwd.
    let o = s.brig(&["session", "exec", &id, "--", "cat", "hello.txt"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello from the host\n");

    // stdin is piped through, and large inputs arrive whole.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let o = s.brig_stdin(&["session", "exec", &id, "--", "wc", "-c"], &big);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "300000");
    let o = s.brig_stdin(&["session", "exec", &id, "--", "cat"], b"piped\n");
    assert_eq!(text(&o.stdout), "piped\n");

    // --env and --cwd.
    let o = s.brig(&[
        "session",
        "exec",
        &id,
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(text(&o.stdout), "hi\n/tmp\n", "{}", text(&o.stderr));

    // Signals: killed by n is 128+n; a command that does not exist is 127.
    let o = s.brig(&["session", "exec", &id, "--", "sh", "-c", "kill -KILL $$"]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
    let o = s.brig(&["session", "exec", &id, "--", "/no/such/command"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));

    // --timeout kills the command.
    let t = Instant::now();
    let o = s.brig(&[
        "session",
        "exec",
        &id,
        "--timeout",
        "1s",
        "--",
        "sleep",
        "30",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "timeout not enforced"
    );

    // exec --json: the API's ExecResult, exit code still the command's.
    let o = s.brig(&[
        "--json",
        "session",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo hi; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"]["code"], 4);
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["stdout_bytes"], 3);

    // destroy: the summary, then the session is gone from the live list.
    let d = s.json(&["session", "destroy", &id]);
    assert_eq!(d["workspace_shredded"], true, "{d}");
    assert!(d["execs"].as_u64().unwrap() >= 9, "{d}");
    let list = s.json(&["session", "list"]);
    assert!(!list
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == id.as_str()));
    let all = s.json(&["session", "list", "--all"]);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == id.as_str()));

    // Using a destroyed session is brig's failure (125), with a reason.
    let o = s.brig(&["session", "exec", &id, "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    // show of an unknown session: not found, exit 3.
    let o = s.brig(&["session", "show", "s-abcdefgh23"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let o = s.brig(&["--json", "session", "show", "s-abcdefgh23"]);
    let e: serde_json::Value = serde_json::from_slice(&o.stderr).unwrap();
    assert_eq!(e["error"]["kind"], "not_found");
}

#[test]
fn run_propagates_the_exit_code_and_leaves_nothing_behind() {
    let s = Server::start();
    let o = s.brig(&[
        "run",
        "--task",
        "CLI-2",
        "--",
        "sh",
        "-c",
        "echo ran; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o.stderr), s.log());
    assert_eq!(text(&o.stdout), "ran\n");
    let e = text(&o.stderr);
    assert!(e.contains("brig: session s-"), "summary on stderr: {e}");
    assert!(e.contains("exit 3"), "{e}");
    assert!(e.contains("sha256:"), "{e}");
    let live = s.json(&["session", "list"]);
    assert_eq!(
        live.as_array().unwrap().len(),
        0,
        "run left a live session: {live}"
    );

    // --json: one document with the exec result and the summary.
    let o = s.brig(&[
        "--json",
        "run",
        "--task",
        "CLI-2",
        "--",
        "sh",
        "-c",
        "echo x; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 5);
    assert_eq!(v["exec"]["stdout"], "x\n");
    assert_eq!(v["summary"]["workspace_shredded"], true);
    assert!(v["image_digest"].as_str().unwrap().starts_with("sha256:"));
    let live = s.json(&["session", "list"]);
    assert_eq!(live.as_array().unwrap().len(), 0, "{live}");
}

#[test]
fn run_destroys_the_session_on_ctrl_c() {
    let s = Server::start();
    let mut child = s
        .cmd(&["run", "--task", "CLI-3", "--", "sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command runs in its session.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = s.json(&["session", "list"]);
        if live
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["exec_count"].as_u64() >= Some(1))
        {
            break;
        }
        assert!(Instant::now() < deadline, "run never started its command");
        std::thread::sleep(Duration::from_millis(100));
    }
    nix_kill(child.id(), libc::SIGINT);
    let t = Instant::now();
    let st = child.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(15));
    // The command died of SIGINT: 130.
    assert_eq!(st.code(), Some(130));
    let live = s.json(&["session", "list"]);
    assert_eq!(live.as_array().unwrap().len(), 0, "{live}");
}

#[test]
fn kill_all_through_the_cli() {
    let s = Server::start();
    for _ in 0..2 {
        let o = s.brig(&["session", "create", "--task", "CLI-4"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let v = s.json(&["kill", "--all"]);
    assert_eq!(v["killed"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["duration_ms"].is_u64());
    let live = s.json(&["session", "list"]);
    assert_eq!(live.as_array().unwrap().len(), 0);
}

#[test]
fn kill_by_user_and_task_takes_only_theirs() {
    let s = Server::start();
    let create = |user: &str, task: &str| {
        let o = s
            .cmd(&["session", "create", "--task", task])
            .env("SUDO_USER", user)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout).trim().to_string()
    };
    let ada1 = create("ada", "T-1");
    let ada2 = create("ada", "T-2");
    let bob = create("bob", "T-2");
    let v = s.json(&["kill", "--user", "ada"]);
    let mut killed: Vec<String> = serde_json::from_value(v["killed"].clone()).unwrap();
    killed.sort();
    let mut want = vec![ada1, ada2];
    want.sort();
    assert_eq!(killed, want, "{v}");
    let live = s.json(&["session", "list"]);
    assert_eq!(live.as_array().unwrap().len(), 1, "{live}");
    assert_eq!(live[0]["id"], bob.as_str());
    // A task with no live session kills nothing; bob's task does.
    assert_eq!(
        s.json(&["kill", "--task", "T-9"])["killed"],
        serde_json::json!([])
    );
    assert_eq!(
        s.json(&["kill", "--task", "T-2"])["killed"],
        serde_json::json!([bob])
    );
    // Two selectors at once are a usage error.
    let o = s.brig(&["kill", "--user", "ada", "--all"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    // The journal says who was killed and why.
    let j = s.json(&["journal", "show", "--limit", "1000"]);
    let reasons: Vec<String> = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "session.destroy")
        .map(|e| e["details"]["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .filter(|r| *r == "kill switch (user ada)")
            .count()
            == 2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "kill switch (task T-2)"),
        "{reasons:?}"
    );
}

#[test]
fn kill_drill_reports_every_part_dead_within_a_second() {
    let s = Server::start();
    let o = s.brig(&["--json", "drill", "kill"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "drill: {e}: {}{}\n{}",
            text(&o.stdout),
            text(&o.stderr),
            s.log()
        )
    });
    let parts = r["parts"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["part"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["processes", "connections", "credentials", "sandbox"],
        "{r}"
    );
    // Each part was live before the kill, and dead after it.
    for p in parts {
        assert!(p["live_before"].as_u64().unwrap() >= 1, "{r}");
        assert!(p["dead_ms"].as_f64().is_some(), "{r}");
    }
    assert_eq!(parts[1]["live_before"], 2, "{r}");
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(o.status.code(), Some(0));
    // Nothing of it is left, and the journal has the drill and the revocation.
    assert_eq!(s.json(&["session", "list"]).as_array().unwrap().len(), 0);
    let id = r["session"].as_str().unwrap();
    let j = s.json(&["journal", "show", "--session", id]);
    let actions: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "credential.grant",
        "credential.revoke",
        "session.destroy",
        "drill.kill",
    ] {
        assert!(actions.contains(&a), "{a} missing: {actions:?}");
    }
    let info = s.json(&["session", "show", id]);
    assert_eq!(info["state"], "destroyed", "{info}");
}

#[test]
fn demo_exits_0() {
    let o = Command::new(BRIG)
        .args(["demo", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("demo --json: {e}: {}{}", text(&o.stdout), text(&o.stderr)));
    assert_eq!(o.status.code(), Some(0), "{report:#}\n{}", text(&o.stderr));
    assert_eq!(report["ok"], true);
    let steps = report["steps"].as_array().unwrap();
    let escapes = steps.iter().find(|s| s["step"] == "escapes").unwrap();
    let attempts = escapes["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 9, "{escapes}");
    // The egress attempts are refused by brig's proxy with the rule that did it.
    let paste = attempts
        .iter()
        .find(|a| a["name"] == "exfil-paste")
        .expect("exfil-paste");
    assert_eq!(paste["blocked"], true, "{paste}");
    assert!(
        paste["error"].as_str().unwrap().contains("exfil/pastebins"),
        "{paste}"
    );
    // The git path: pushed, the secret refused, the PR opened, signed upstream.
    for step in ["push", "push_secret_refused", "pull_request"] {
        let st = steps
            .iter()
            .find(|s| s["step"] == step)
            .unwrap_or_else(|| panic!("{step}"));
        assert_eq!(st["ok"], true, "{st}");
    }
    let pr = steps.iter().find(|s| s["step"] == "pull_request").unwrap();
    assert_eq!(pr["result"]["gate"]["passed"], true, "{pr}");
    assert_eq!(report["summary"]["workspace_shredded"], true);
}

#[test]
fn tcp_with_a_bearer_token_and_the_socket_from_brig_toml() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let write = |dir: &Path| {
        let token = dir.join("token");
        std::fs::write(&token, "e2e-secret-token-0123456789abcdef\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = dir.join("brig.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nsocket = {:?}\n[tcp]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {:?}\n",
                dir.join("data"),
                dir.join("s"),
                token
            ),
        )
        .unwrap();
        cfg
    };
    let s = Server::start_with(Some(&write));
    let url = format!("http://127.0.0.1:{port}");
    let tcp = |token: Option<&str>| {
        let mut c = Command::new(BRIG);
        c.args(["--url", &url, "--json", "session", "list"])
            .env_remove("BRIG_SOCKET")
            .env_remove("BRIG_CONFIG")
            .stdin(Stdio::null());
        match token {
            Some(t) => c.env("BRIG_TOKEN", t),
            None => c.env_remove("BRIG_TOKEN"),
        };
        c.output().unwrap()
    };
    let o = tcp(Some("e2e-secret-token-0123456789abcdef"));
    assert_eq!(o.status.code(), Some(0), "{}\n{}", text(&o.stderr), s.log());
    assert!(serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .is_array());
    for bad in [Some("wrong"), None] {
        let o = tcp(bad);
        assert_eq!(o.status.code(), Some(8), "{bad:?}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("e2e-secret"), "the token leaked");
    }

    // Without --socket the client uses the socket brig.toml names.
    let o = Command::new(BRIG)
        .arg("--config")
        .arg(s.dir.path().join("brig.toml"))
        .args(["session", "list"])
        .env_remove("BRIG_SOCKET")
        .env_remove("BRIG_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}
