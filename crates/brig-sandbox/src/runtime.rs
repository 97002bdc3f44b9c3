//! The runtimes: every one is driven through the OCI runtime command line
//! (`run --detach`, `kill`, `delete`), fed the same spec in a bundle.
//!
//! - `native`: `<brig> oci-runtime --root <state> ...` (youki's libcontainer
//!   inside brig's own binary, see [`crate::native`]);
//! - `gvisor`: `runsc --root <state> --network=none --platform=ptrace ...`
//!   (ptrace: this host has no KVM for gVisor, and the 2022 runsc predates
//!   systrap);
//! - `oci`: any runtime binary by path (crun, runc, youki) with the same CLI.
//!
//! The container's init inherits the stdin/stdout given to `run`: they are
//! the control pipes. Each runtime keeps its state under
//! `<data_dir>/run/<name>`, where a `.brig-runtime` file records which
//! runtime owns it so that reconciliation after a crash can call the right
//! binary.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use brig_core::session::RuntimeKind;
use brig_core::{Error, Result};

use crate::sandbox::SandboxPaths;

/// Where Debian installs gVisor.
pub const RUNSC: &str = "/usr/bin/runsc";
const GVISOR_PIDS_OVERHEAD: u64 = 512;
const MARKER: &str = ".brig-runtime";
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Runtime {
    pub kind: RuntimeKind,
    pub bin: PathBuf,
    /// The `--root` state directory.
    pub root: PathBuf,
    global: Vec<String>,
}

/// The stdio of a container's init.
pub struct InitIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    /// The runtime's and init's stderr (a log file in the session dir).
    pub stderr: std::fs::File,
}

/// `<data_dir>/run`.
pub fn runtimes_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

impl Runtime {
    pub fn new(kind: &RuntimeKind, paths: &SandboxPaths) -> Result<Runtime> {
        let run = runtimes_dir(&paths.data_dir);
        let (bin, dir, global) = match kind {
            RuntimeKind::Native => (
                paths.brig_exe.clone(),
                "native".to_string(),
                vec!["oci-runtime".to_string()],
            ),
            RuntimeKind::Gvisor => (PathBuf::from(RUNSC), "runsc".to_string(), vec![]),
            RuntimeKind::Oci { path } => {
                let name: String = path
                    .trim_start_matches('/')
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                (PathBuf::from(path), format!("oci-{name}"), vec![])
            }
        };
        if !bin.is_file() {
            return Err(Error::guard(
                &format!("runtime:{}", kind.name()),
                format!("{} is not installed", bin.display()),
            ));
        }
        let root = run.join(dir);
        let mut global = global;
        global.push(format!("--root={}", root.display()));
        if *kind == RuntimeKind::Gvisor {
            global.extend(
                // host-uds=open: the sandbox may connect to the host's unix
                // sockets it can see, i.e. the egress sockets (the only
                // host sockets brig mounts).
                ["--network=none", "--platform=ptrace", "--host-uds=open"]
                    .iter()
                    .map(|s| s.to_string()),
            );
        }
        Ok(Runtime {
            kind: kind.clone(),
            bin,
            root,
            global,
        })
    }

    /// The runtime recorded in a state dir by [`Runtime::prepare`].
    pub fn from_state_dir(dir: &Path, paths: &SandboxPaths) -> Option<Runtime> {
        let s = std::fs::read_to_string(dir.join(MARKER)).ok()?;
        let kind: RuntimeKind = serde_json::from_str(&s).ok()?;
        Runtime::new(&kind, paths).ok()
    }

    pub fn name(&self) -> String {
        self.kind.name()
    }

    /// Whether the spec gets a user namespace (see [`crate::spec`]).
    pub fn user_ns(&self) -> bool {
        !matches!(self.kind, RuntimeKind::Gvisor)
    }

    /// Whether init should apply Landlock: gVisor's Sentry does not
    /// implement it, and is itself the filesystem boundary.
    pub fn landlock(&self) -> bool {
        !matches!(self.kind, RuntimeKind::Gvisor)
    }

    /// Whether init records every exec with a seccomp user-notification
    /// filter ([`crate::capture`]): gVisor does not implement it.
    pub fn capture(&self) -> bool {
        !matches!(self.kind, RuntimeKind::Gvisor)
    }

    /// Whether brig routes the sandbox's network namespace from the host
    /// ([`crate::egress::setup_netns`]). Not under gVisor, whose network
    /// stack lives in its Sentry: there [`Runtime::exec_anyip`] does the
    /// same from inside.
    pub fn egress_from_host(&self) -> bool {
        !matches!(self.kind, RuntimeKind::Gvisor)
    }

    /// gVisor: `runsc exec` of `brig sandbox-anyip` in container `id`, as
    /// root with CAP_NET_ADMIN and nothing else, before the sandbox is
    /// ready (no workload runs yet). It makes every IPv4 destination local
    /// to the Sentry's netstack ([`crate::egress::add_sandbox_anyip_addrs`]).
    /// Any failure is the layer `egress`: the session does not start.
    pub async fn exec_anyip(&self, id: &str) -> Result<()> {
        let mut c = self.command();
        c.arg("exec")
            .arg("--user=0:0")
            .arg("--cap=CAP_NET_ADMIN")
            .arg("--cwd=/")
            .arg(id)
            .args(crate::egress::anyip_args())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(RUN_TIMEOUT, c.output()).await {
            Ok(o) => {
                o.map_err(|e| Error::guard("egress", format!("running {} exec: {e}", self.name())))?
            }
            Err(_) => {
                return Err(Error::guard(
                    "egress",
                    format!(
                        "`{} exec` of sandbox-anyip did not finish within {RUN_TIMEOUT:?}",
                        self.name()
                    ),
                ))
            }
        };
        if !out.status.success() {
            return Err(Error::guard(
                "egress",
                format!(
                    "`{} exec` of sandbox-anyip failed ({}): {}",
                    self.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    /// Whether processes are captured by the runtime's own trace points
    /// instead, read by brig from outside ([`crate::gvisor_trace`]).
    pub fn trace_capture(&self) -> bool {
        matches!(self.kind, RuntimeKind::Gvisor)
    }

    /// Host tasks the runtime itself runs inside the session's cgroup, on
    /// top of the sandbox's own processes. gVisor's Sentry and gofer are
    /// ~40 host threads at rest and grow with load; were they counted in
    /// `limits.pids`, a small limit would starve the Sentry (it cannot make
    /// a thread and the whole sandbox dies). A fork bomb inside still ends
    /// at the raised limit, inside the session's cgroup, never on the host.
    /// Under the ptrace platform every guest process also costs host tasks
    /// (a stub process and a tracer thread), hence the per-process factor;
    /// the guest's own limit is RLIMIT_NPROC = `limits.pids`, set by init.
    pub fn pids_overhead(&self, pids: u64) -> u64 {
        match self.kind {
            RuntimeKind::Gvisor => GVISOR_PIDS_OVERHEAD + 8 * pids,
            _ => 0,
        }
    }

    /// Create the state dir and mark which runtime owns it.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(|e| {
            Error::internal(format!(
                "creating runtime state {}: {e}",
                self.root.display()
            ))
        })?;
        let marker = self.root.join(MARKER);
        if !marker.exists() {
            let json = serde_json::to_string(&self.kind).unwrap_or_default();
            std::fs::write(&marker, json)?;
        }
        Ok(())
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(&self.global);
        c.env_clear();
        c.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        c
    }

    fn layer(&self) -> String {
        format!("runtime:{}", self.name())
    }

    /// `run --detach`: create and start the container; returns once the
    /// runtime has exited, leaving the init running with `io`.
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: InitIo,
    ) -> Result<()> {
        self.run_detached_with(id, bundle, pid_file, io, &[]).await
    }

    /// [`Runtime::run_detached`] with more global flags for this run only
    /// (gVisor's `--pod-init-config`).
    pub async fn run_detached_with(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        io: InitIo,
        flags: &[String],
    ) -> Result<()> {
        let log_path = bundle.join("..").join("runtime.log");
        let mut c = self.command();
        c.args(flags)
            .arg("run")
            .arg("--detach")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg(id)
            .stdin(Stdio::from(io.stdin))
            .stdout(Stdio::from(io.stdout))
            .stderr(Stdio::from(io.stderr))
            .kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| {
            Error::guard(
                &self.layer(),
                format!("cannot run {}: {e}", self.bin.display()),
            )
        })?;
        // Our copies of the init's ends were moved into `c`; drop it so the
        // pipes close when the init dies.
        drop(c);
        let status = match tokio::time::timeout(RUN_TIMEOUT, child.wait()).await {
            Ok(s) => s.map_err(|e| Error::runtime(format!("waiting for {}: {e}", self.name())))?,
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(Error::runtime(format!(
                    "{} did not start the sandbox within {RUN_TIMEOUT:?}: {}",
                    self.name(),
                    log_tail(&log_path)
                )));
            }
        };
        if !status.success() {
            return Err(Error::guard(
                &self.layer(),
                format!(
                    "`{} run` failed ({status}): {}",
                    self.name(),
                    log_tail(&log_path)
                ),
            ));
        }
        Ok(())
    }

    /// `kill <id> KILL`, then `delete --force <id>`; tolerant of a
    /// container that is already gone.
    pub async fn delete(&self, id: &str) -> Result<()> {
        let out = self
            .command()
            .arg("delete")
            .arg("--force")
            .arg(id)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| Error::runtime(format!("running {} delete: {e}", self.name())))?;
        let gone = !self.has_state(id);
        if out.status.success() || gone {
            self.remove_state(id);
            return Ok(());
        }
        Err(Error::runtime(format!(
            "`{} delete --force {id}` failed: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    /// Entries in the state root that belong to container `id`.
    fn state_entries(&self, id: &str) -> Vec<PathBuf> {
        let mut v = vec![];
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n == id || n.starts_with(&format!("{id}_")) || n.starts_with(&format!("{id}.")) {
                    v.push(e.path());
                }
            }
        }
        v
    }

    pub fn has_state(&self, id: &str) -> bool {
        !self.state_entries(id).is_empty()
    }

    /// Remove what the runtime left of `id` in its state root.
    pub fn remove_state(&self, id: &str) {
        for p in self.state_entries(id) {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }

    /// Names of containers with state in this root that look like sessions.
    pub fn state_ids(&self) -> Vec<String> {
        let mut v = vec![];
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.len() >= 12 && n.starts_with("s-") {
                    let id = n[..12].to_string();
                    if id.parse::<brig_core::SessionId>().is_ok() {
                        v.push(id);
                    }
                }
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

/// The last lines of a runtime log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
    if tail.is_empty() {
        "(no output from the runtime)".to_string()
    } else if tail.len() > 2000 {
        let mut start = tail.len() - 2000;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        format!("...{}", &tail[start..])
    } else {
        tail
    }
}
