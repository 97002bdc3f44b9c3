//! Sessions: what a user asks for, the limits that bound it, the states it
//! goes through, and what the API reports about it.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ids::{SessionId, TaskId};

/// The sandbox runtimes brig can drive. All are fed the same OCI spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RuntimeKind {
    /// youki's libcontainer, in-process (no extra binary).
    Native,
    /// gVisor's `runsc`.
    Gvisor,
    /// Any OCI runtime binary by path (crun, runc, youki, ...).
    Oci { path: String },
}

impl RuntimeKind {
    pub fn name(&self) -> String {
        match self {
            RuntimeKind::Native => "native".into(),
            RuntimeKind::Gvisor => "gvisor".into(),
            RuntimeKind::Oci { path } => format!("oci:{path}"),
        }
    }
    /// `native`, `gvisor`, or `oci:/path/to/runtime`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "native" => Ok(RuntimeKind::Native),
            "gvisor" | "runsc" => Ok(RuntimeKind::Gvisor),
            _ => match s.strip_prefix("oci:") {
                Some(p) if p.starts_with('/') => Ok(RuntimeKind::Oci { path: p.into() }),
                _ => Err(Error::invalid(format!("unknown runtime {s:?}"))
                    .hint("use native, gvisor, or oci:/absolute/path/to/runtime")),
            },
        }
    }
}

/// Resource limits of one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU quota in milli-CPUs (1000 = one core).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids: u64,
    /// Size cap of /workspace.
    pub disk_bytes: u64,
    /// Size cap of /tmp.
    pub tmp_bytes: u64,
    /// Idle timeout in seconds (no exec and no process activity).
    pub idle_secs: u64,
    /// Active timebox in seconds from start.
    pub timebox_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_millis: 1000,
            memory_bytes: 2 << 30,
            pids: 512,
            disk_bytes: 10 << 30,
            tmp_bytes: 512 << 20,
            idle_secs: 15 * 60,
            timebox_secs: 20 * 60,
        }
    }
}

impl Limits {
    /// Reject limits no sandbox could honour, saying which and why.
    pub fn validate(&self) -> Result<(), Error> {
        let fail =
            |what: &str, why: &str| Err(Error::invalid(format!("impossible limit: {what} {why}")));
        if self.cpu_millis < 10 {
            return fail("--cpus", "must be at least 0.01");
        }
        if self.cpu_millis > 1024 * 1000 {
            return fail("--cpus", "must be at most 1024");
        }
        if self.memory_bytes < (16 << 20) {
            return fail("--memory", "must be at least 16M");
        }
        if self.pids < 8 {
            return fail("--pids", "must be at least 8");
        }
        if self.pids > 4_194_304 {
            return fail("--pids", "must be at most 4194304");
        }
        if self.disk_bytes < (1 << 20) {
            return fail("--disk", "must be at least 1M");
        }
        if self.tmp_bytes < (1 << 20) {
            return fail("tmp size", "must be at least 1M");
        }
        if self.idle_secs == 0 {
            return fail("--idle", "must be greater than zero");
        }
        if self.timebox_secs == 0 {
            return fail("--timebox", "must be greater than zero");
        }
        Ok(())
    }
}

/// What `brig session create` asks for. Paths are on the client's host and
/// read by the server (they share a host: the API is a local unix socket).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateSession {
    pub task: String,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub upload: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub pids: Option<u64>,
    #[serde(default)]
    pub disk: Option<String>,
    #[serde(default)]
    pub idle: Option<String>,
    #[serde(default)]
    pub timebox: Option<String>,
    /// The human who asked (until OIDC lands: the local user name).
    #[serde(default)]
    pub human: Option<String>,
    /// A git source's branch, tag or commit to pin (resolved to a SHA once).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Cone-mode sparse directories of a git source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sparse: Vec<String>,
    /// History depth of a git source's checkout (default `[git] depth`, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// A kill drill's session (`brig drill kill`): it also holds the
    /// drill's own credential. Never read from the API.
    #[serde(skip)]
    pub drill: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Created,
    Running,
    Idle,
    Destroyed,
    Failed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Created => "created",
            SessionState::Running => "running",
            SessionState::Idle => "idle",
            SessionState::Destroyed => "destroyed",
            SessionState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => SessionState::Created,
            "running" => SessionState::Running,
            "idle" => SessionState::Idle,
            "destroyed" => SessionState::Destroyed,
            "failed" => SessionState::Failed,
            _ => return None,
        })
    }
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SessionState::Created | SessionState::Running | SessionState::Idle
        )
    }
}

/// A session as the API reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub principal: String,
    pub human: String,
    pub task: TaskId,
    pub profile: String,
    pub runtime: String,
    pub image: String,
    pub image_digest: String,
    pub state: SessionState,
    pub limits: Limits,
    #[serde(default)]
    pub repo: Option<String>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub ended_at: Option<String>,
    #[serde(default)]
    pub end_reason: Option<String>,
    /// Isolation layers applied, e.g. `seccomp`, `landlock:abi7`, `cgroup:v1`.
    #[serde(default)]
    pub layers: Vec<String>,
    #[serde(default)]
    pub exec_count: u64,
    #[serde(default)]
    pub last_activity_at: Option<String>,
}

/// What destroy/kill/run report at the end of a session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session: SessionInfo,
    pub execs: u64,
    pub failed_execs: u64,
    pub duration_ms: u64,
    pub blocked: Vec<String>,
    pub workspace_shredded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names_parse() {
        assert_eq!(RuntimeKind::parse("native").unwrap(), RuntimeKind::Native);
        assert_eq!(RuntimeKind::parse("gvisor").unwrap(), RuntimeKind::Gvisor);
        assert_eq!(
            RuntimeKind::parse("oci:/usr/bin/crun").unwrap(),
            RuntimeKind::Oci {
                path: "/usr/bin/crun".into()
            }
        );
        assert!(RuntimeKind::parse("oci:crun").is_err());
        assert!(RuntimeKind::parse("docker").is_err());
    }

    #[test]
    fn impossible_limits_are_named() {
        let l = Limits {
            memory_bytes: 1024,
            ..Limits::default()
        };
        let e = l.validate().unwrap_err();
        assert!(e.message.contains("--memory"), "{e}");
        assert!(Limits::default().validate().is_ok());
    }
}
