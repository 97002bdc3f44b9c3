//! The CLI without a server: argument errors, the "no server" hint, exit
//! codes and `--json` shapes. Every command here points at a socket that
//! does not exist, so exit 2 (not 10) proves nothing was contacted.

use std::process::{Command, Output, Stdio};

fn brig(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brig"))
        .args(args)
        .env_remove("BRIG_URL")
        .env_remove("BRIG_CONFIG")
        .env("BRIG_SOCKET", "/nonexistent/brig-test/brig.sock")
        .stdin(Stdio::null())
        .output()
        .expect("run brig")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_error(o: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(stderr(o).trim())
        .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {}", stderr(o)));
    assert!(v["error"]["kind"].is_string(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v
}

#[test]
fn bad_memory_is_a_usage_error_naming_the_value() {
    let o = brig(&["session", "create", "--task", "T-1", "--memory", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--memory"), "{e}");
    assert!(e.contains("\"lots\" is not valid"), "{e}");
    assert!(e.contains("2G"), "the hint shows a valid size: {e}");
    assert!(stdout(&o).is_empty());
}

#[test]
fn bad_duration_is_a_usage_error() {
    for flag in ["--idle", "--timebox"] {
        let o = brig(&["session", "create", "--task", "T-1", flag, "soon"]);
        assert_eq!(o.status.code(), Some(2), "{flag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("duration \"soon\" is not valid"),
            "{}",
            stderr(&o)
        );
    }
    let o = brig(&["run", "--task", "T-1", "--idle", "0s", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("greater than zero"), "{}", stderr(&o));
}

#[test]
fn unknown_runtime_is_a_usage_error() {
    let o = brig(&["run", "--task", "T-1", "--runtime", "docker", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("unknown runtime \"docker\""), "{e}");
    assert!(e.contains("oci:/"), "the hint lists the runtimes: {e}");
}

#[test]
fn bad_task_and_session_ids_are_refused_locally() {
    let o = brig(&["session", "create", "--task", "has space"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("task id"), "{}", stderr(&o));

    let o = brig(&["session", "show", "../../etc"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is not a session id"), "{}", stderr(&o));
    assert!(stderr(&o).contains("brig session list"), "{}", stderr(&o));
}

#[test]
fn a_missing_repo_is_refused_before_contacting_brig() {
    let o = brig(&[
        "session",
        "create",
        "--task",
        "T-1",
        "--repo",
        "/nonexistent/repo",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--repo /nonexistent/repo"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_are_json_with_json() {
    let o = brig(&[
        "--json", "session", "create", "--task", "T-1", "--memory", "lots",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let v = json_error(&o);
    assert_eq!(v["error"]["kind"], "invalid_input");
    assert!(stdout(&o).is_empty());
}

#[test]
fn kill_without_a_target_says_how() {
    let o = brig(&["kill"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--user"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--all"), "{}", stderr(&o));
}

#[test]
fn no_server_exits_10_with_the_hint() {
    let o = brig(&["session", "list"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cannot reach brig at /nonexistent/brig-test/brig.sock"),
        "{e}"
    );
    assert!(e.contains("is `brig serve` running?"), "{e}");
    assert!(
        e.contains("brig serve --socket /nonexistent/brig-test/brig.sock"),
        "{e}"
    );

    let o = brig(&["--json", "image", "list"]);
    assert_eq!(o.status.code(), Some(10));
    assert_eq!(json_error(&o)["error"]["kind"], "unavailable");
    assert!(stdout(&o).is_empty());

    // --socket wins over BRIG_SOCKET.
    let o = brig(&["--socket", "/nonexistent/other.sock", "kill", "--all"]);
    assert_eq!(o.status.code(), Some(10));
    assert!(
        stderr(&o).contains("/nonexistent/other.sock"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn exec_and_run_report_brig_failures_as_125() {
    // docker's convention: 125 means brig failed, not the command.
    let o = brig(&["session", "exec", "s-abcdefgh23", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("is `brig serve` running?"));
    let o = brig(&["run", "--task", "T-1", "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
}

#[test]
fn a_missing_config_file_is_named() {
    let o = brig(&["--config", "/nonexistent/brig.toml", "session", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/brig.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn tcp_urls_are_checked() {
    let o = brig(&["--url", "ftp://x", "session", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("http://"), "{}", stderr(&o));
    // Nothing listens on port 1: unreachable, exit 10.
    let o = brig(&["--url", "http://127.0.0.1:1", "session", "list"]);
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
}

#[test]
fn version_text_and_json() {
    let o = brig(&["version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o).trim(),
        format!("brig {}", env!("CARGO_PKG_VERSION"))
    );
    let o = brig(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn help_lists_every_command() {
    let o = brig(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let h = stdout(&o);
    for cmd in [
        "serve", "session", "run", "kill", "drill", "image", "doctor", "version", "demo",
    ] {
        assert!(h.contains(cmd), "{cmd} missing from --help: {h}");
    }
    assert!(
        !h.contains("sandbox-init"),
        "hidden entry points stay hidden"
    );
}

#[test]
fn doctor_json_names_the_native_runtime() {
    // Needs no server: it probes this host directly.
    let o = brig(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {}{}",
            stdout(&o),
            stderr(&o)
        )
    });
    let runtimes = v["runtimes"].as_array().expect("runtimes");
    let native = runtimes
        .iter()
        .find(|r| r["runtime"] == "native")
        .expect("native is reported");
    assert!(v["checks"].as_array().is_some_and(|c| !c.is_empty()));
    // Exit code: 0 iff native works, else 6 (guard unavailable).
    let expect = if native["works"] == true { 0 } else { 6 };
    assert_eq!(o.status.code(), Some(expect));

    let o = brig(&["doctor"]);
    let text = stdout(&o);
    assert!(text.contains("native"), "{text}");
    assert!(text.contains('✓') || text.contains('✗'), "{text}");
}

#[test]
fn a_non_utf8_repo_path_is_a_clear_error_not_a_panic() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join(OsStr::from_bytes(b"repo\xff"));
    std::fs::create_dir(&bad).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_brig"))
        .args(["--json", "session", "create", "--task", "T-1", "--repo"])
        .arg(&bad)
        .env_remove("BRIG_URL")
        .env_remove("BRIG_CONFIG")
        .env("BRIG_SOCKET", "/nonexistent/brig-test/brig.sock")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v = json_error(&o);
    assert_eq!(v["error"]["kind"], "invalid_input");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid UTF-8"),
        "{v}"
    );
}
