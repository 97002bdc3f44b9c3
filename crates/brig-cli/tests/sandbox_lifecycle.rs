//! The sandbox lifecycle on the `native` runtime, as root: create, what the
//! sandbox looks like from inside, limits in force, destroy leaves nothing,
//! a failing layer leaves nothing, reconcile after a crash.

mod sandbox_support;

use std::time::{Duration, Instant};

use brig_core::session::{Limits, RuntimeKind};
use brig_core::ErrorKind;
use brig_sandbox::cgroup::SessionCgroup;
use brig_sandbox::Sandbox;
use sandbox_support::*;

fn small_limits() -> Limits {
    Limits {
        cpu_millis: 500,
        memory_bytes: 128 << 20,
        pids: 64,
        disk_bytes: 8 << 20,
        tmp_bytes: 4 << 20,
        ..Limits::default()
    }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sandbox_is_hardened_and_destroy_leaves_nothing() {
    require_root!();
    let env = TestEnv::new();
    let limits = small_limits();
    let sb = env.create(RuntimeKind::Native, limits.clone()).await;
    let id = sb.id.clone();
    let init_pid = sb.init_pid();
    for want in [
        "runtime:native",
        "rootfs:ro",
        "caps:none",
        "no_new_privs",
        "cgroup:v1",
    ] {
        assert!(
            sb.layers.iter().any(|l| l == want),
            "{want} not in {:?}",
            sb.layers
        );
    }
    assert!(
        sb.layers
            .iter()
            .any(|l| l.starts_with("ns:mnt,pid,ipc,uts,net,cgroup")),
        "{:?}",
        sb.layers
    );
    assert!(
        sb.layers.iter().any(|l| l.starts_with("seccomp")),
        "{:?}",
        sb.layers
    );
    assert!(
        sb.layers.iter().any(|l| l.starts_with("landlock")),
        "{:?}",
        sb.layers
    );

    // Who and where.
    let id_out = sh_ok(&sb, "id").await;
    assert!(
        id_out.starts_with("uid=1000(agent) gid=1000(agent)"),
        "{id_out}"
    );
    assert_eq!(sh_ok(&sb, "hostname").await.trim(), id.as_str());
    assert_eq!(
        sh_ok(&sb, "pwd; echo $HOME").await,
        "/workspace\n/workspace\n"
    );
    assert_eq!(sh_ok(&sb, "ls -A /workspace").await, "");
    let status = sh_ok(&sb, "cat /proc/self/status").await;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{k} missing in {status}"))
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // The root is read-only, /workspace and /tmp are writable.
    let o = run(&sb, &["/bin/sh", "-c", "touch /etc/x"]).await;
    assert_ne!(o.code, Some(0), "wrote to the root: {o:?}");
    sh_ok(
        &sb,
        "echo hi > /workspace/f && echo hi > /tmp/f && cat /workspace/f",
    )
    .await;
    // Only loopback.
    let ifaces = sh_ok(&sb, "ls /sys/class/net").await;
    assert_eq!(ifaces.trim(), "lo");
    // Masked /proc and /sys paths (those this kernel has).
    assert_eq!(sh_ok(&sb, "wc -c < /proc/timer_list").await.trim(), "0");
    assert_eq!(sh_ok(&sb, "ls -A /sys/firmware | wc -l").await.trim(), "0");
    let o = run(
        &sb,
        &["/bin/sh", "-c", "echo 1 > /proc/sys/kernel/domainname"],
    )
    .await;
    assert_ne!(o.code, Some(0), "/proc/sys is writable: {o:?}");

    // Limits really are in force in the cgroup the kernel uses.
    let cg = SessionCgroup::new(id.as_str());
    cg.verify(&limits).unwrap();
    let mem = std::fs::read_to_string(cg.dir("memory").join("memory.limit_in_bytes")).unwrap();
    assert_eq!(mem.trim().parse::<u64>().unwrap(), 128 << 20);
    assert_eq!(
        std::fs::read_to_string(cg.dir("pids").join("pids.max"))
            .unwrap()
            .trim(),
        "64"
    );
    assert_eq!(
        std::fs::read_to_string(cg.dir("cpu").join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "50000"
    );
    let inside = sh_ok(&sb, "cat /proc/self/cgroup").await;
    assert!(inside.contains("memory:/"), "{inside}");
    assert!(
        cg.pids().contains(&init_pid.unwrap()),
        "init not in the session cgroup"
    );
    assert!(sb.cpu_usage_ns().unwrap() > 0);
    let st = sb.status().await.unwrap();
    assert_eq!(st.running, 0);

    // The workspace is the session's tmpfs, owned by the mapped agent uid.
    let ws = sb.session_dir().join("workspace");
    assert!(brig_sandbox::workspace::is_mountpoint(&ws));

    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
    assert_nothing_left(&env, &id, init_pid);
    // Idempotent, and the sandbox refuses work afterwards.
    assert!(sb.destroy().await.clean());
    let e = sb.status().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_memory_pids_disk() {
    require_root!();
    let env = TestEnv::new();
    let sb = env.create(RuntimeKind::Native, small_limits()).await;
    // Disk: /workspace is 8 MiB.
    let o = run(
        &sb,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/workspace/fill bs=1M count=32 2>&1; echo rc=$?",
        ],
    )
    .await;
    assert!(o.stdout.contains("No space left on device"), "{o:?}");
    // /tmp is 4 MiB.
    let o = run(
        &sb,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/tmp/fill bs=1M count=32 2>&1",
        ],
    )
    .await;
    assert!(o.stdout.contains("No space left on device"), "{o:?}");
    // Pids: 64 at most. A burst of 200 sleeps hits the limit; the host
    // sees at most 64 tasks in the cgroup and the sandbox recovers.
    let cg = SessionCgroup::new(sb.id.as_str());
    let _ = run(
        &sb,
        &[
            "/bin/sh",
            "-c",
            "(for i in $(seq 200); do sleep 3 & done) 2>/dev/null; true",
        ],
    )
    .await;
    let tasks = std::fs::read_to_string(cg.dir("pids").join("tasks"))
        .unwrap()
        .lines()
        .count();
    assert!((30..=64).contains(&tasks), "{tasks} tasks in the cgroup");
    let events = std::fs::read_to_string(cg.dir("pids").join("pids.events")).unwrap_or_default();
    assert!(
        !events.contains("max 0"),
        "the pids limit was never hit: {events}"
    );
    let mut recovered = false;
    for _ in 0..100 {
        let _ = run(&sb, &["/usr/bin/pkill", "-x", "sleep"]).await;
        // At rest: init, its egress forwarder and its capture supervisor.
        if cg.pids().len() <= 3 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the sandbox did not recover from the fork burst");
    // Memory: 128 MiB; allocating 512 MiB is killed inside, the sandbox lives on.
    let o = run(
        &sb,
        &[
            "/usr/bin/python3",
            "-c",
            "b = bytearray(512 << 20); print('survived')",
        ],
    )
    .await;
    if o.failed.is_none() && !o.stderr.contains("No such file") {
        assert!(!o.stdout.contains("survived"), "{o:?}");
    }
    let o = run(
        &sb,
        &[
            "/bin/sh",
            "-c",
            "head -c 400000000 /dev/zero | tail -c 1 >/dev/null; echo done",
        ],
    )
    .await;
    assert_eq!(o.code, Some(0), "{o:?}");
    assert_eq!(sh_ok(&sb, "echo alive").await, "alive\n");
    let id = sb.id.clone();
    let pid = sb.init_pid();
    assert!(sb.destroy().await.clean());
    assert_nothing_left(&env, &id, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_layers_fail_create_and_leave_nothing() {
    require_root!();
    let env = TestEnv::new();

    // A bad image root: the runtime cannot set up the root filesystem.
    let req = env.request(RuntimeKind::Native, small_limits());
    let id = req.id.clone();
    let mut img = env.host_image();
    img.rootfs = env.images.path().join("does-not-exist");
    let e = Sandbox::create_with_image(&env.paths, req, img)
        .await
        .err()
        .expect("bad rootfs must fail");
    assert_eq!(e.kind, ErrorKind::GuardUnavailable, "{e}");
    assert!(e.message.contains("runtime:native"), "{e}");
    assert_nothing_left(&env, &id, None);

    // A runtime that is not installed.
    let req = env.request(
        RuntimeKind::Oci {
            path: "/nonexistent/runc".into(),
        },
        small_limits(),
    );
    let id = req.id.clone();
    let e = Sandbox::create_with_image(&env.paths, req, env.host_image())
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::GuardUnavailable);
    assert!(e.message.contains("/nonexistent/runc"), "{e}");
    assert_nothing_left(&env, &id, None);

    // Impossible limits are refused before anything is made.
    let req = env.request(
        RuntimeKind::Native,
        Limits {
            memory_bytes: 1024,
            ..small_limits()
        },
    );
    let id = req.id.clone();
    let e = Sandbox::create_with_image(&env.paths, req, env.host_image())
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert_nothing_left(&env, &id, None);

    // Leftovers of the same id: refused, and what create did not make stays.
    let req = env.request(RuntimeKind::Native, small_limits());
    let id = req.id.clone();
    let sd = env.data.path().join("sessions").join(id.as_str());
    std::fs::create_dir_all(&sd).unwrap();
    let e = Sandbox::create_with_image(&env.paths, req, env.host_image())
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert!(sd.exists(), "create must not remove what it did not make");
    std::fs::remove_dir(&sd).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_cleans_up_after_a_crash() {
    require_root!();
    let env = TestEnv::new();
    let survivor = env.create(RuntimeKind::Native, small_limits()).await;
    let crashed = env.create(RuntimeKind::Native, small_limits()).await;
    let crashed_id = crashed.id.clone();
    let crashed_pid = crashed.init_pid().unwrap();
    sh_ok(
        &crashed,
        "echo secret > /workspace/s; sleep 1000 >/dev/null 2>&1 &",
    )
    .await;
    // A crash: brig forgets the sandbox without destroying or killing it.
    std::mem::forget(crashed);
    assert!(pid_alive(crashed_pid));

    let lines = brig_sandbox::sandbox::reconcile(&env.paths, std::slice::from_ref(&survivor.id))
        .await
        .unwrap();
    let text = lines.join("\n");
    assert!(text.contains(&format!("{crashed_id}: killed")), "{text}");
    assert!(text.contains("runtime state"), "{text}");
    assert!(text.contains("shredded"), "{text}");
    assert!(
        !text.contains(survivor.id.as_str()),
        "the kept session was touched: {text}"
    );
    // The init is dead; after a real crash the new brig is not its parent,
    // so it is reaped by init, not by us: only check that it is dead.
    let stat = std::fs::read_to_string(format!("/proc/{crashed_pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "crashed init still running: {stat}"
    );
    let sd = env.data.path().join("sessions").join(crashed_id.as_str());
    assert!(!sd.exists());
    assert!(!SessionCgroup::new(crashed_id.as_str()).exists());

    // The survivor still works, and a second reconcile finds nothing.
    assert_eq!(sh_ok(&survivor, "echo ok").await, "ok\n");
    let again = brig_sandbox::sandbox::reconcile(&env.paths, std::slice::from_ref(&survivor.id))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let sid = survivor.id.clone();
    let spid = survivor.init_pid();
    assert!(survivor.destroy().await.clean());
    assert_nothing_left(&env, &sid, spid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_now_is_fast_and_died_resolves() {
    require_root!();
    let env = TestEnv::new();
    let sb = env.create(RuntimeKind::Native, small_limits()).await;
    sh_ok(
        &sb,
        "sleep 1000 >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 &",
    )
    .await;
    let t = Instant::now();
    sb.kill_now();
    // Loose: the kill switch's real figure is a benchmark; this only
    // catches a kill_now that blocks on teardown work.
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "kill_now took {:?}",
        t.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), sb.died())
        .await
        .expect("died() did not resolve");
    let id = sb.id.clone();
    let pid = sb.init_pid();
    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
    assert_nothing_left(&env, &id, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_on_the_real_host_image() {
    require_root!();
    let env = TestEnv::new();
    let req = env.request(RuntimeKind::Native, small_limits());
    let id = req.id.clone();
    let sb = Sandbox::create(&env.paths, req)
        .await
        .unwrap_or_else(|e| panic!("create on the host image: {e}"));
    assert_eq!(sb.image.name, "host");
    assert!(sb.image.digest.starts_with("sha256:"), "{:?}", sb.image);
    assert_eq!(sh_ok(&sb, "id -un").await.trim(), "agent");
    let o = run(&sb, &["/bin/sh", "-c", "cat /etc/shadow"]).await;
    assert_ne!(o.code, Some(0), "{o:?}");
    let pid = sb.init_pid();
    assert!(sb.destroy().await.clean());
    assert_nothing_left(&env, &id, pid);
}
