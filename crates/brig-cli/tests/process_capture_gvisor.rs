//! Process capture for `gvisor` sessions (issue 3): every process started
//! inside a gVisor sandbox is on the session's journal, recorded by the
//! Sentry's trace points (`brig_sandbox::gvisor_trace`), not by anything in
//! the sandbox: a shell script's children with their exit codes (reaped by
//! the shell itself), a detached background job, a binary started by a
//! program, a binary executed from a memfd; with sandbox-visible pids. And
//! capture fails closed: if it cannot be set up, the session does not start.

mod journal_support;
mod sandbox_support;
mod server_support;

use std::path::Path;
use std::time::Duration;

use brig_core::session::{Limits, RuntimeKind};
use journal_support::*;
use serde_json::{json, Value};
use server_support::*;

fn has_runsc() -> bool {
    if !Path::new(brig_sandbox::runtime::RUNSC).exists() {
        eprintln!("skipped: needs runsc");
        return false;
    }
    true
}

fn exit_code_of(evs: &[Value], argv: &[&str]) -> Value {
    let e = find_exec(evs, argv).unwrap_or_else(|| panic!("no process.exec of {argv:?}"));
    let x = find_exit(evs, &e["details"]["pid"])
        .unwrap_or_else(|| panic!("no process.exit of {argv:?} ({e})"));
    x["details"]["code"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_of_a_gvisor_session_is_journaled() {
    require_root!();
    if !has_runsc() {
        return;
    }
    let srv = Srv::start().await;
    let info = srv
        .create(json!({
            "task": "CAPG-1", "runtime": "gvisor",
            "pids": 64, "memory": "256M", "disk": "16M",
        }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    let layers = info["layers"].to_string();
    assert!(layers.contains("capture:gvisor-trace"), "{layers}");
    assert!(!layers.contains("capture:unavailable"), "{layers}");

    // A script whose children its own shell reaps: their exit codes too.
    let script = "ls /nonexistent; /bin/false; echo $$";
    let r = srv.exec(&id, &["sh", "-c", script]).await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    let script_pid: i64 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    // A detached background job, re-parented to init when its shell exits.
    let bg = "sleep 0.2; exit 3";
    let r = srv
        .exec(&id, &["sh", "-c", &format!("setsid sh -c '{bg}' &")])
        .await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    // A binary started by a program, not by the exec API.
    let r = srv
        .exec(
            &id,
            &[
                "python3",
                "-c",
                "import subprocess; subprocess.run(['/bin/echo','hidden'])",
            ],
        )
        .await;
    assert_eq!(r["stdout"], "hidden\n", "{r}");
    // A binary with no path on any filesystem, under a made-up name.
    let memfd = "import os; fd = os.memfd_create('x'); \
                 os.write(fd, open('/bin/true', 'rb').read()); \
                 os.execve(fd, ['innocent'], {})";
    let r = srv.exec(&id, &["python3", "-c", memfd]).await;
    assert_eq!(r["status"]["code"], 0, "{r}");

    let evs = wait_events(&srv, &id, |evs| {
        find_exec(evs, &["sh", "-c", bg])
            .is_some_and(|e| find_exit(evs, &e["details"]["pid"]).is_some())
            && find_exec(evs, &["/bin/echo", "hidden"]).is_some()
            && find_exec(evs, &["innocent"])
                .is_some_and(|e| find_exit(evs, &e["details"]["pid"]).is_some())
    })
    .await;
    let all = event_lines(&evs, "process.");

    let sh = find_exec(&evs, &["sh", "-c", script]).expect("the script");
    assert_eq!(sh["session"], id.as_str());
    assert_eq!(sh["agent"], format!("agent:{id}"));
    assert_eq!(sh["task"], "CAPG-1");
    assert_eq!(sh["details"]["uid"], 1000, "{sh}");
    assert_eq!(sh["details"]["cwd"], "/workspace", "{sh}");
    assert!(
        sh["details"]["path"].as_str().unwrap().ends_with("/sh"),
        "{sh}"
    );
    // The pid the sandbox itself sees; started by init (pid 1).
    assert_eq!(sh["details"]["pid"], script_pid, "{sh}");
    assert_eq!(sh["details"]["ppid"], 1, "{sh}");
    assert_eq!(exit_code_of(&evs, &["sh", "-c", script]), 0);
    for (child, code) in [(&["ls", "/nonexistent"][..], 2), (&["/bin/false"][..], 1)] {
        let e = find_exec(&evs, child).unwrap_or_else(|| panic!("no exec of {child:?}:\n{all}"));
        assert_eq!(e["details"]["ppid"], script_pid, "{child:?}: {e}");
        assert_eq!(exit_code_of(&evs, child), code, "{child:?}:\n{all}");
    }

    let job = find_exec(&evs, &["sh", "-c", bg]).unwrap();
    let exit = find_exit(&evs, &job["details"]["pid"]).unwrap();
    assert_eq!(exit["details"]["code"], 3, "{exit}");
    assert_eq!(exit["outcome"], "failure", "{exit}");
    let sleep = find_exec(&evs, &["sleep", "0.2"]).expect("the job's own child");
    assert_eq!(sleep["details"]["ppid"], job["details"]["pid"], "{sleep}");

    let py = evs
        .iter()
        .find(|e| {
            e["action"] == "process.exec"
                && argv_of(e).first().map(String::as_str) == Some("python3")
        })
        .expect("python3");
    let echo = find_exec(&evs, &["/bin/echo", "hidden"]).unwrap();
    assert_eq!(echo["details"]["ppid"], py["details"]["pid"], "{echo}");
    assert_eq!(echo["details"]["path"], "/bin/echo", "{echo}");
    assert_eq!(exit_code_of(&evs, &["/bin/echo", "hidden"]), 0);

    let hidden = find_exec(&evs, &["innocent"]).unwrap();
    assert_eq!(exit_code_of(&evs, &["innocent"]), 0, "{hidden}");
    assert!(
        !evs.iter()
            .any(|e| e["action"] == "process.capture_overflow"),
        "nothing dropped:\n{all}"
    );

    // The trace socket is brig's, outside the sandbox: unlinked once runsc
    // connected (no second peer), and nothing of it is visible inside.
    let sdir = srv.data().join("sessions").join(&id);
    assert!(sdir.join("trace.json").exists());
    assert!(!sdir.join("trace.sock").exists());
    let probe = format!(
        "test -e {0}/trace.json || test -e {0}/trace.sock || echo absent",
        sdir.display()
    );
    let r = srv.exec(&id, &["sh", "-c", &probe]).await;
    assert_eq!(r["stdout"], "absent\n", "{r}");

    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.assert_gone(&id);
    srv.stop().await;
}

/// Many execs in a row: every one is journaled, with its exit (the sink
/// waits for a full socket rather than dropping; a drop would be journaled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_execs_is_journaled_in_full() {
    require_root!();
    if !has_runsc() {
        return;
    }
    let srv = Srv::start().await;
    let info = srv
        .create(json!({ "task": "CAPG-2", "runtime": "gvisor", "pids": 64 }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    let n = 150;
    let r = srv
        .exec(
            &id,
            &[
                "sh",
                "-c",
                &format!("i=0; while [ $i -lt {n} ]; do /bin/true burst; i=$((i+1)); done"),
            ],
        )
        .await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    let count = |evs: &[Value], action: &str| {
        let pids: Vec<&Value> = evs
            .iter()
            .filter(|e| e["action"] == "process.exec" && argv_of(e) == ["/bin/true", "burst"])
            .map(|e| &e["details"]["pid"])
            .collect();
        match action {
            "exec" => pids.len(),
            _ => pids
                .iter()
                .filter(|p| find_exit(evs, p).is_some_and(|x| x["details"]["code"] == 0))
                .count(),
        }
    };
    let evs = wait_events(&srv, &id, |evs| {
        count(evs, "exit") == n
            || evs
                .iter()
                .any(|e| e["action"] == "process.capture_overflow")
    })
    .await;
    assert_eq!(count(&evs, "exec"), n);
    assert_eq!(count(&evs, "exit"), n);
    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}

/// An exec whose point is larger than the trace socket can carry (~300 KiB
/// of argv) is lost by the Sentry; the loss is journaled
/// (`process.capture_overflow`), and so is the exit of the process whose
/// exec it may have been: it does not vanish without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_too_big_for_the_trace_socket_is_not_silent() {
    require_root!();
    if !has_runsc() {
        return;
    }
    let srv = Srv::start().await;
    let info = srv
        .create(json!({ "task": "CAPG-3", "runtime": "gvisor", "pids": 64, "memory": "256M" }))
        .await;
    let id = info["id"].as_str().unwrap().to_string();
    let py = "import subprocess; \
              p = subprocess.Popen(['/bin/sh', '-c', 'exit 6'] + ['x' * 60000] * 5); \
              print(p.pid, flush=True); p.wait()";
    let r = srv.exec(&id, &["python3", "-c", py]).await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    let pid: i64 = r["stdout"].as_str().unwrap().trim().parse().unwrap();
    let evs = wait_events(&srv, &id, |evs| {
        find_exit(evs, &json!(pid)).is_some()
            && evs
                .iter()
                .any(|e| e["action"] == "process.capture_overflow")
    })
    .await;
    let exit = find_exit(&evs, &json!(pid)).unwrap();
    assert_eq!(exit["details"]["code"], 6, "{exit}");
    let lost = evs
        .iter()
        .find(|e| e["action"] == "process.capture_overflow")
        .unwrap();
    assert!(lost["details"]["dropped"].as_u64().unwrap() >= 1, "{lost}");
    let (s, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(s, 200);
    srv.stop().await;
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 256 << 20,
        pids: 64,
        disk_bytes: 8 << 20,
        tmp_bytes: 4 << 20,
        ..Limits::default()
    }
}

/// If the trace socket cannot be made (here: a data dir too deep for a unix
/// socket's path), the session does not start, the error names the layer
/// `capture`, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_capture_fails_closed() {
    require_root!();
    if !has_runsc() {
        return;
    }
    let mut env = sandbox_support::TestEnv::new();
    let deep = env.data.path().join("d".repeat(100));
    std::fs::create_dir(&deep).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o711)).unwrap();
    env.paths.data_dir = deep;
    let req = env.request(RuntimeKind::Gvisor, limits());
    let id = req.id.clone();
    let e = brig_sandbox::Sandbox::create_with_image(&env.paths, req, env.host_image())
        .await
        .err()
        .expect("no session without capture");
    assert_eq!(e.kind, brig_core::ErrorKind::GuardUnavailable, "{e}");
    assert!(e.message.contains("'capture'"), "{e}");
    assert!(e.message.contains("unix socket"), "{e}");
    let sd = env.paths.data_dir.join("sessions").join(id.as_str());
    assert!(!sd.exists(), "session dir {} remains", sd.display());
    sandbox_support::assert_nothing_left(&env, &id, None);
}

/// `no_capture` (brig-bench's baseline) still turns it off under gVisor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_no_capture_is_off() {
    require_root!();
    if !has_runsc() {
        return;
    }
    let env = sandbox_support::TestEnv::new();
    let mut req = env.request(RuntimeKind::Gvisor, limits());
    req.no_capture = true;
    let sb = brig_sandbox::Sandbox::create_with_image(&env.paths, req, env.host_image())
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    assert!(
        sb.layers.contains(&"capture:off".to_string()),
        "{:?}",
        sb.layers
    );
    assert!(!sb.session_dir().join("trace.json").exists());
    let mut events = sb.process_events().unwrap();
    let o = sandbox_support::run(&sb, &["/bin/true"]).await;
    assert_eq!(o.code, Some(0), "{o:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events.try_recv().is_none());
    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
}
