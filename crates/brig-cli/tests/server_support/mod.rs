//! Helpers for the control-plane tests (run as root): an in-process
//! `brig serve` on a throw-away data dir, API calls over its socket, and
//! checks that a session left nothing behind on the host.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_core::SessionId;
use brig_sandbox::cgroup::SessionCgroup;
use brig_server::{RunningServer, ServerConfig};
use serde_json::{json, Value};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !server_support::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

pub fn test_config(dir: &Path) -> ServerConfig {
    let mut cfg = ServerConfig::embedded(dir);
    cfg.brig_exe = PathBuf::from(env!("CARGO_BIN_EXE_brig"));
    cfg.reaper.interval = Duration::from_millis(100);
    // No warm pool unless a test asks (server_pool): the other tests count
    // what a session leaves on the host, and pooled sandboxes are not theirs.
    cfg.pool.warm = 0;
    cfg
}

pub fn data_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("brig-srv-")
        .tempdir()
        .unwrap();
    // The runtime's setup runs as the sandbox's mapped root: paths must be traversable.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    d
}

pub struct Srv {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub sock: PathBuf,
}

impl Srv {
    pub async fn start() -> Srv {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Srv {
        let dir = data_dir();
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        let server = brig_server::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let sock = server.socket_path().to_path_buf();
        Srv {
            dir,
            server: Some(server),
            sock,
        }
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        brig_server::client::request(&self.sock, method, path, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Create a session; panics unless 201.
    pub async fn create(&self, body: Value) -> Value {
        let (s, v) = self.call("POST", "/v1/sessions", Some(body)).await;
        assert_eq!(s, 201, "create: {v}");
        v
    }

    pub async fn exec(&self, id: &str, argv: &[&str]) -> Value {
        self.exec_req(id, json!({ "argv": argv })).await
    }

    pub async fn exec_req(&self, id: &str, req: Value) -> Value {
        let (s, v) = self
            .call("POST", &format!("/v1/sessions/{id}/exec"), Some(req))
            .await;
        assert_eq!(s, 200, "exec: {v}");
        v
    }

    pub async fn state(&self, id: &str) -> Value {
        let (s, v) = self.call("GET", &format!("/v1/sessions/{id}"), None).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Poll until the session is in `state` (or panic after `within`).
    pub async fn wait_state(&self, id: &str, state: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.state(id).await;
            if v["state"] == state {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "session {id} not {state} after {within:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nothing of the session remains: no session dir, mount or cgroup.
    pub fn assert_gone(&self, id: &str) {
        assert_gone(self.data(), id);
    }

    /// `who` approves request `apr` of `owner`'s session in `role`, as the
    /// API does for an authenticated caller: policy (approval.grant), then
    /// the store.
    pub async fn approve_as(&self, who: &str, role: &str, owner: &str, apr: &str) {
        let mgr = self.server.as_ref().unwrap().manager().clone();
        let human = brig_policy::HumanPrincipal::new(who).with_roles(&[role]);
        mgr.decide_human(&brig_policy::Request::approval_grant(
            &human,
            owner,
            apr,
            &[role.to_string()],
        ))
        .await
        .unwrap();
        mgr.approvals()
            .unwrap()
            .decide(
                apr,
                brig_server::approvals::HumanDecision {
                    by: who.into(),
                    approve: true,
                    for_: Some(Duration::from_secs(600)),
                    note: None,
                    roles: vec![role.into()],
                },
                true,
            )
            .await
            .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

pub fn assert_gone(data: &Path, id: &str) {
    let dir = brig_sandbox::workspace::session_dir(data, id);
    assert!(!dir.exists(), "{} still exists", dir.display());
    let mounts = brig_sandbox::workspace::mounts_under(&dir);
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        !SessionCgroup::new(id).exists(),
        "cgroup of {id} still exists"
    );
}

impl Drop for Srv {
    fn drop(&mut self) {
        // Last resort when a test panicked: leave no mount or cgroup behind.
        if let Ok(rd) = std::fs::read_dir(brig_sandbox::workspace::sessions_dir(self.dir.path())) {
            for e in rd.flatten() {
                if let Some(id) = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<SessionId>().ok())
                {
                    let cg = SessionCgroup::new(id.as_str());
                    let _ = cg.kill_all(Duration::from_secs(5));
                    let _ = cg.remove();
                }
            }
        }
        let mut mounts = brig_sandbox::workspace::mounts_under(self.dir.path());
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in mounts {
            let _ = brig_sandbox::workspace::unmount(&m);
        }
    }
}

/// A small project directory to pass as `repo`.
pub fn project() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("brig-proj-")
        .tempdir()
        .unwrap();
    std::fs::write(d.path().join("README"), "hello from the repo\n").unwrap();
    std::fs::create_dir(d.path().join("src")).unwrap();
    std::fs::write(d.path().join("src/main.sh"), "echo main\n").unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}
