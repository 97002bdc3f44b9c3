//! Shared helpers for the sandbox tests (run as root): a throw-away data dir,
//! a `host`-like image, running a command to completion, and a guard that
//! removes every mount, cgroup and process a test made, even on panic.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_core::session::{Limits, RuntimeKind};
use brig_core::{wire, SessionId};
use brig_sandbox::cgroup::SessionCgroup;
use brig_sandbox::image::{Image, ResolvedImage};
use brig_sandbox::{ExecEvent, Sandbox, SandboxPaths, SandboxRequest};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A data dir and an image root for one test. Dropping it kills and removes
/// whatever the test's sandboxes left (mounts, cgroups, processes).
pub struct TestEnv {
    pub data: tempfile::TempDir,
    pub images: tempfile::TempDir,
    pub paths: SandboxPaths,
    pub ids: std::sync::Mutex<Vec<SessionId>>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let data = tempfile::Builder::new()
            .prefix("brig-sbx-")
            .tempdir()
            .unwrap();
        let images = tempfile::Builder::new()
            .prefix("brig-img-")
            .tempdir()
            .unwrap();
        // The runtime's setup runs as the sandbox's mapped root (an
        // unprivileged host uid): the paths it binds must be traversable.
        for d in [data.path(), images.path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        let paths = SandboxPaths {
            data_dir: data.path().to_path_buf(),
            brig_exe: PathBuf::from(env!("CARGO_BIN_EXE_brig")),
        };
        TestEnv {
            data,
            images,
            paths,
            ids: Default::default(),
        }
    }

    /// A minimal `host`-like image: /usr bound read-only from the host,
    /// Debian's merged-/usr symlinks, a generated /etc.
    pub fn host_image(&self) -> ResolvedImage {
        let root = self.images.path().join("rootfs");
        if !root.exists() {
            make_host_rootfs(&root);
        }
        ResolvedImage {
            image: Image {
                name: "host-test".into(),
                digest: "sha256:test".into(),
            },
            rootfs: root,
            binds: vec![(PathBuf::from("/usr"), PathBuf::from("/usr"))],
            env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        }
    }

    pub fn request(&self, runtime: RuntimeKind, limits: Limits) -> SandboxRequest {
        let id = SessionId::generate();
        self.ids.lock().unwrap().push(id.clone());
        SandboxRequest {
            id,
            runtime,
            image: "host".into(),
            limits,
            uploads: vec![],
            checkout: None,
            trust_ca: None,
            upload_cap_bytes: 64 << 20,
            no_capture: false,
            hold_words: vec![],
        }
    }

    pub async fn create(&self, runtime: RuntimeKind, limits: Limits) -> Sandbox {
        let req = self.request(runtime, limits);
        Sandbox::create_with_image(&self.paths, req, self.host_image())
            .await
            .unwrap_or_else(|e| panic!("create failed: {e}"))
    }
}

pub fn make_host_rootfs(root: &Path) {
    for d in [
        "usr",
        "etc",
        "proc",
        "dev",
        "sys",
        "tmp",
        "workspace",
        ".brig",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    std::fs::write(root.join(".brig/brig"), b"").unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\nagent:x:1000:1000:agent:/workspace:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\ntty:x:5:\nagent:x:1000:\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    // A regular file, so the session's generated resolv.conf is bound over it.
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    for p in [root.to_path_buf(), root.join(".brig"), root.join("etc")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Last-resort cleanup so a failed test leaves nothing behind.
        for id in self.ids.lock().unwrap().iter() {
            let cg = SessionCgroup::new(id.as_str());
            let _ = cg.kill_all(Duration::from_secs(5));
            let _ = cg.remove();
        }
        let mut mounts = brig_sandbox::workspace::mounts_under(self.data.path());
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in mounts {
            let _ = brig_sandbox::workspace::unmount(&m);
        }
    }
}

/// What a command did.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub failed: Option<String>,
}

pub async fn run(sb: &Sandbox, argv: &[&str]) -> Output {
    let spawn = wire::Spawn {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/workspace".into()),
        ],
        cwd: "/workspace".into(),
        tty: None,
        decided: false,
    };
    let mut h = sb
        .exec(spawn)
        .await
        .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"));
    let mut out = Output::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline, h.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{argv:?} did not finish in 60 s"));
        match ev {
            Some(ExecEvent::Started { .. }) => {}
            Some(ExecEvent::Stdout(b)) => out.stdout.push_str(&String::from_utf8_lossy(&b)),
            Some(ExecEvent::Stderr(b)) => out.stderr.push_str(&String::from_utf8_lossy(&b)),
            Some(ExecEvent::Exited(s)) => {
                out.code = s.code;
                out.signal = s.signal;
                return out;
            }
            Some(ExecEvent::Failed(e)) => {
                out.failed = Some(e);
                return out;
            }
            None => {
                out.failed = Some("event stream ended".into());
                return out;
            }
        }
    }
}

/// `sh -c script`, asserting exit 0; returns stdout.
pub async fn sh_ok(sb: &Sandbox, script: &str) -> String {
    let o = run(sb, &["/bin/sh", "-c", script]).await;
    assert_eq!(o.code, Some(0), "`{script}` failed: {o:?}");
    o.stdout
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; count it as alive (not reaped).
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Assert that nothing of the sandbox `id` remains on the host.
pub fn assert_nothing_left(env: &TestEnv, id: &SessionId, init_pid: Option<i32>) {
    let sd = env.data.path().join("sessions").join(id.as_str());
    assert!(!sd.exists(), "session dir {} remains", sd.display());
    let mounts = brig_sandbox::workspace::mounts_under(env.data.path());
    assert!(mounts.is_empty(), "mounts remain: {mounts:?}");
    let cg = SessionCgroup::new(id.as_str());
    assert!(!cg.exists(), "cgroup dirs remain: {:?}", cg.existing_dirs());
    let run = env.data.path().join("run");
    if let Ok(rd) = std::fs::read_dir(&run) {
        for rt in rd.flatten() {
            for e in std::fs::read_dir(rt.path()).unwrap().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !n.starts_with(id.as_str()),
                    "runtime state remains: {}",
                    e.path().display()
                );
            }
        }
    }
    if let Some(pid) = init_pid {
        assert!(
            !pid_alive(pid),
            "init pid {pid} still exists (alive or unreaped zombie)"
        );
    }
}
