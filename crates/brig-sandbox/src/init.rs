//! `brig sandbox-init`: pid 1 of every sandbox. (Stub: to be written.)

use serde::{Deserialize, Serialize};

/// Passed as the single argument after `sandbox-init` (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// Paths the sandbox may write (Landlock): /workspace, /tmp, /dev/null...
    pub rw_paths: Vec<String>,
    /// Whether Landlock is required (native, oci) or not applicable (gvisor,
    /// whose own kernel is the boundary).
    pub landlock: bool,
    /// Whether init installs brig's seccomp allow-list on itself.
    pub seccomp: bool,
}

/// Entry point of `brig sandbox-init <json>`; never returns.
pub fn main(_config_json: &str) -> ! {
    todo!("sandbox-init")
}
