//! The same spec on the other runtimes: gVisor (`runsc`) and an OCI binary
//! (`crun`). Each test is skipped, saying so, when its runtime is absent.

mod sandbox_support;

use std::path::Path;

use brig_core::session::{Limits, RuntimeKind};
use brig_sandbox::cgroup::SessionCgroup;
use sandbox_support::*;

fn limits() -> Limits {
    Limits {
        cpu_millis: 500,
        memory_bytes: 256 << 20,
        pids: 64,
        disk_bytes: 8 << 20,
        tmp_bytes: 4 << 20,
        ..Limits::default()
    }
}

/// create, look around inside, destroy, nothing left.
async fn round_trip(runtime: RuntimeKind, expect_landlock: bool) {
    let env = TestEnv::new();
    let l = limits();
    let sb = env.create(runtime.clone(), l.clone()).await;
    let id = sb.id.clone();
    let pid = sb.init_pid();
    assert!(
        sb.layers.contains(&format!("runtime:{}", runtime.name())),
        "{:?}",
        sb.layers
    );
    assert_eq!(
        sb.layers.iter().any(|x| x.starts_with("landlock")),
        expect_landlock,
        "{:?}",
        sb.layers
    );

    let who = sh_ok(&sb, "id -u; id -g; hostname; pwd").await;
    assert_eq!(who, format!("1000\n1000\n{id}\n/workspace\n"));
    let status = sh_ok(
        &sb,
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    // gVisor's /proc does not show NoNewPrivs; its layers say init set it.
    if runtime != RuntimeKind::Gvisor {
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    }
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let o = run(&sb, &["/bin/sh", "-c", "touch /usr/x"]).await;
    assert_ne!(o.code, Some(0), "wrote to the image: {o:?}");
    sh_ok(&sb, "echo data > /workspace/f; cat /workspace/f").await;
    let o = run(
        &sb,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/workspace/fill bs=1M count=32 2>&1",
        ],
    )
    .await;
    assert!(o.stdout.contains("No space left"), "{o:?}");
    // gVisor's own host threads get room on top of the session's pids.
    let overhead = brig_sandbox::runtime::Runtime::new(&runtime, &env.paths)
        .unwrap()
        .pids_overhead(l.pids);
    let want = Limits {
        pids: l.pids + overhead,
        ..l.clone()
    };
    SessionCgroup::new(id.as_str()).verify(&want).unwrap();

    let r = sb.destroy().await;
    assert!(r.clean(), "{r:?}");
    assert_nothing_left(&env, &id, pid);
}

/// A v1 host with an (empty) cgroup2 mounted at /sys/fs/cgroup/unified.
fn hybrid_cgroups() -> bool {
    brig_sandbox::cgroup::detect() == brig_sandbox::cgroup::Version::V1
        && Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_round_trip() {
    if !is_root() || !Path::new("/usr/bin/crun").exists() {
        eprintln!("skipped: needs root and /usr/bin/crun");
        return;
    }
    let crun = RuntimeKind::Oci {
        path: "/usr/bin/crun".into(),
    };
    if hybrid_cgroups() {
        // crun 1.8 refuses hybrid hierarchies ("cgroups in hybrid mode not
        // supported"): brig must fail closed, name the runtime, leave nothing.
        let env = TestEnv::new();
        let req = env.request(crun, limits());
        let id = req.id.clone();
        let e = brig_sandbox::Sandbox::create_with_image(&env.paths, req, env.host_image())
            .await
            .err()
            .expect("crun on a hybrid cgroup host must fail");
        assert_eq!(e.kind, brig_core::ErrorKind::GuardUnavailable, "{e}");
        assert!(e.message.contains("runtime:oci:/usr/bin/crun"), "{e}");
        assert!(
            e.message.contains("hybrid"),
            "the runtime's own words are quoted: {e}"
        );
        assert_nothing_left(&env, &id, None);
        return;
    }
    round_trip(crun, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_round_trip() {
    if !is_root() || !Path::new(brig_sandbox::runtime::RUNSC).exists() {
        eprintln!("skipped: needs root and runsc");
        return;
    }
    round_trip(RuntimeKind::Gvisor, false).await;
}

/// The `oci` runtime with runc: the same spec, the same CLI, driven by path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_round_trip() {
    if !is_root() || !Path::new("/usr/bin/runc").exists() {
        eprintln!("skipped: needs root and /usr/bin/runc");
        return;
    }
    round_trip(
        RuntimeKind::Oci {
            path: "/usr/bin/runc".into(),
        },
        true,
    )
    .await;
}
