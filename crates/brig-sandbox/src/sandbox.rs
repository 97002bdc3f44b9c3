//! The sandbox of one session: create (all or nothing), exec, destroy.
//! (Stub: to be written.)

use std::path::PathBuf;

use brig_core::session::{Limits, RuntimeKind};
use brig_core::{wire, Result, SessionId};

use crate::channel::ExecHandle;
use crate::image::Image;

/// Where brig keeps sandbox state on the host.
#[derive(Clone, Debug)]
pub struct SandboxPaths {
    /// brig's data dir (images, session dirs, runtime state).
    pub data_dir: PathBuf,
    /// The `brig` binary to run as `oci-runtime` (native) and to place in
    /// every sandbox as its init. Defaults to the current executable.
    pub brig_exe: PathBuf,
}

/// Everything needed to build one sandbox.
#[derive(Clone, Debug)]
pub struct SandboxRequest {
    pub id: SessionId,
    pub runtime: RuntimeKind,
    /// Image name (`host`, or an imported name or `sha256:` digest).
    pub image: String,
    pub limits: Limits,
    /// Host directories whose snapshot is copied into /workspace, in order
    /// (honouring .gitignore, `.git` excluded), capped at `upload_cap_bytes` in total.
    pub uploads: Vec<PathBuf>,
    pub upload_cap_bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DestroyReport {
    pub processes_killed: bool,
    pub workspace_shredded: bool,
    pub cgroups_removed: bool,
    pub runtime_state_removed: bool,
    /// Problems met while destroying (each also logged).
    pub problems: Vec<String>,
}

pub struct Sandbox {
    pub id: SessionId,
    pub image: Image,
    /// Isolation layers in force, e.g. `ns:mount,pid,ipc,uts,net,cgroup`,
    /// `seccomp:allowlist`, `landlock:abi7`, `cgroup:v1`, `rootfs:ro`.
    pub layers: Vec<String>,
}

impl Sandbox {
    /// Build and start the sandbox; on any failure everything made so far is
    /// removed and the error names the layer that failed.
    pub async fn create(_paths: &SandboxPaths, _req: SandboxRequest) -> Result<Sandbox> {
        todo!()
    }
    pub async fn exec(&self, _spawn: wire::Spawn) -> Result<ExecHandle> {
        todo!()
    }
    /// Live process count inside, from init.
    pub async fn status(&self) -> Result<wire::Status> {
        todo!()
    }
    /// Total CPU time used by the sandbox's cgroup, for idle detection.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        todo!()
    }
    /// SIGKILL every process of the sandbox now (synchronous, fast: the kill switch).
    pub fn kill_now(&self) {
        todo!()
    }
    /// Kill, delete runtime state, unmount, shred and verify, remove cgroups.
    /// Idempotent.
    pub async fn destroy(&self) -> DestroyReport {
        todo!()
    }
    /// Resolves when the sandbox died on its own (init exited, channel closed).
    pub async fn died(&self) {
        todo!()
    }
}

/// Destroy every sandbox, mount, cgroup, runtime state and workspace under
/// `paths` whose session is not in `keep` (crash reconciliation at startup).
/// Returns one line per thing cleaned.
pub async fn reconcile(_paths: &SandboxPaths, _keep: &[SessionId]) -> Result<Vec<String>> {
    todo!()
}
