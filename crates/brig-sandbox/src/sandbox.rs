//! The sandbox of one session: create (all or nothing), exec, destroy.
//!
//! `create` resolves the image, makes the session dir and its tmpfs
//! workspace, copies uploads in, writes the OCI bundle, has the runtime
//! `run --detach` it with two pipes as the init's stdin/stdout, waits for
//! init's `Ready`, then proves the cgroup limits are in force. Any failure
//! tears down everything made so far and returns an error naming the layer.
//!
//! Process ownership: OCI runtimes exit once the container runs, which
//! orphans its init. brig makes itself a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`) so those inits become brig's children instead
//! of pid 1's (which, in some environments, never reaps them). Each adopted
//! process is held by a pidfd: signals and the final reap
//! (`waitid(P_PIDFD)`) go to exactly that process, never to a recycled pid,
//! and brig never calls `wait(-1)`, so it cannot steal other children's
//! exit statuses (tokio's, for instance).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brig_core::session::{Limits, RuntimeKind};
use brig_core::units::format_size;
use brig_core::{wire, Error, ErrorKind, Result, SessionId};

use crate::cgroup::SessionCgroup;
use crate::channel::{Channel, ExecHandle};
use crate::gvisor_trace::TraceSocket;
use crate::image::{Image, ResolvedImage};
use crate::init::InitConfig;
use crate::runtime::{log_tail, runtimes_dir, InitIo, Runtime};
use crate::spec::{self, UserNs, SANDBOX_GID, SANDBOX_UID};
use crate::workspace::{self, Workspace};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// runsc connects to the trace socket while it creates the sandbox.
const TRACE_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// After `run` succeeded, the handshake is done or about to be.
const TRACE_CONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
/// After init is ready, the container's start point is already sent.
const TRACE_START_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const RECORD: &str = "sandbox.json";

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
    /// PEM of a CA the sandbox must trust on top of the image's (brig's
    /// egress CA): written with the image's bundle into the egress dir, bound
    /// over the system bundle, named by [`crate::egress::ca_env`].
    pub trust_ca: Option<String>,
    /// A checkout brig made (brig-git's workspace tree), copied in first
    /// and whole, `.git` included; counted against `upload_cap_bytes`.
    pub checkout: Option<PathBuf>,
    pub upload_cap_bytes: u64,
    /// Turn process capture off on a runtime that has it. Only for
    /// measuring its cost (brig-bench's baseline): `brig serve` never sets it.
    pub no_capture: bool,
    /// With capture by init (native, oci): an exec whose command line holds
    /// one of these words waits until it is decided
    /// ([`Sandbox::process_holds`]).
    pub hold_words: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DestroyReport {
    pub processes_killed: bool,
    pub workspace_shredded: bool,
    pub cgroups_removed: bool,
    pub runtime_state_removed: bool,
    /// Problems met while destroying (each also logged).
    pub problems: Vec<String>,
}

impl DestroyReport {
    pub fn clean(&self) -> bool {
        self.processes_killed
            && self.workspace_shredded
            && self.cgroups_removed
            && self.runtime_state_removed
            && self.problems.is_empty()
    }
}

/// What a session dir records for reconciliation after a crash.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    runtime: RuntimeKind,
}

pub struct Sandbox {
    pub id: SessionId,
    pub image: Image,
    /// Isolation layers in force, e.g. `ns:mount,pid,ipc,uts,net,cgroup`,
    /// `seccomp:allowlist`, `landlock:abi7`, `cgroup:v1`, `rootfs:ro`.
    pub layers: Vec<String>,
    parts: Arc<Parts>,
    channel: Arc<Channel>,
    destroyed: AtomicBool,
    report: tokio::sync::Mutex<Option<DestroyReport>>,
}

/// Everything a sandbox is made of on the host, as far as it got built.
struct Parts {
    id: SessionId,
    runtime: Runtime,
    session_dir: PathBuf,
    cgroup: SessionCgroup,
    /// Processes the runtime left as brig's children (the container init;
    /// gVisor's sandbox and gofer), held by pidfd.
    adopted: std::sync::Mutex<Vec<Adopted>>,
}

struct Adopted {
    pid: i32,
    fd: OwnedFd,
}

impl Sandbox {
    /// Build and start the sandbox; on any failure everything made so far is
    /// removed and the error names the layer that failed.
    pub async fn create(paths: &SandboxPaths, req: SandboxRequest) -> Result<Sandbox> {
        req.limits.validate()?;
        let image = crate::image::resolve(paths, &req.image)?;
        Self::create_with_image(paths, req, image).await
    }

    /// [`Sandbox::create`] with the image already resolved (`req.image` is
    /// then only a label).
    pub async fn create_with_image(
        paths: &SandboxPaths,
        req: SandboxRequest,
        image: ResolvedImage,
    ) -> Result<Sandbox> {
        req.limits.validate()?;
        let runtime = Runtime::new(&req.runtime, paths)?;
        become_subreaper()?;
        let session_dir = workspace::session_dir(&paths.data_dir, req.id.as_str());
        // Never touch what another sandbox of this id may own.
        let cgroup = SessionCgroup::new(req.id.as_str());
        if session_dir.exists() || cgroup.exists() || runtime.has_state(req.id.as_str()) {
            return Err(Error::conflict(format!(
                "leftovers of a sandbox {} exist (session dir, cgroup or runtime state)",
                req.id
            ))
            .hint("restart `brig serve` to reconcile, or use a new session id"));
        }
        let parts = Arc::new(Parts {
            id: req.id.clone(),
            cgroup,
            runtime,
            session_dir,
            adopted: std::sync::Mutex::new(vec![]),
        });
        match build(paths, &req, &image, &parts).await {
            Ok((channel, layers)) => Ok(Sandbox {
                id: req.id,
                image: image.image,
                layers,
                parts,
                channel,
                destroyed: AtomicBool::new(false),
                report: tokio::sync::Mutex::new(None),
            }),
            Err(e) => {
                let report = teardown(&parts, true).await;
                if !report.clean() {
                    tracing::error!(session = %req.id, problems = ?report.problems, "cleanup after a failed create was incomplete");
                }
                Err(e)
            }
        }
    }

    pub async fn exec(&self, spawn: wire::Spawn) -> Result<ExecHandle> {
        self.check_live()?;
        self.channel.spawn(spawn).await
    }

    /// Copy a checkout and uploads into the workspace of a sandbox that is
    /// already running (one that waited, pristine, in brig's warm pool), as
    /// `create` does before it starts one. On an error (over the cap) the
    /// workspace holds part of the copy: the caller destroys the sandbox.
    pub fn fill(&self, checkout: Option<&Path>, uploads: &[PathBuf], cap: u64) -> Result<()> {
        self.check_live()?;
        let ws = Workspace::at(&self.parts.session_dir);
        copy_in(
            &ws.path,
            checkout,
            uploads,
            cap,
            sandbox_owner(&self.parts.runtime),
        )
    }

    /// Whether a sandbox made for one session may be handed to another
    /// before anything ran in it (the warm pool): only where /workspace is a
    /// plain bind mount, so what the host copies in later is seen as it is.
    pub fn poolable(runtime: &RuntimeKind) -> bool {
        matches!(runtime, RuntimeKind::Native)
    }

    /// Whether the sandbox is still usable (init alive, not destroyed).
    pub fn is_live(&self) -> bool {
        self.check_live().is_ok()
    }

    /// Live process count inside, from init.
    pub async fn status(&self) -> Result<wire::Status> {
        self.check_live()?;
        self.channel.status(STATUS_TIMEOUT).await
    }

    /// Total CPU time used by the sandbox's cgroup, for idle detection.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        self.parts.cgroup.cpu_usage_ns()
    }

    /// SIGKILL every process of the sandbox now (synchronous, fast: the kill switch).
    pub fn kill_now(&self) {
        self.destroyed.store(true, Ordering::SeqCst);
        self.parts.kill_now();
    }

    /// Kill, delete runtime state, unmount, shred and verify, remove cgroups.
    /// Idempotent.
    pub async fn destroy(&self) -> DestroyReport {
        self.destroyed.store(true, Ordering::SeqCst);
        let mut guard = self.report.lock().await;
        if let Some(r) = guard.as_ref() {
            return r.clone();
        }
        let r = teardown(&self.parts, false).await;
        if !r.problems.is_empty() {
            tracing::warn!(session = %self.id, problems = ?r.problems, "destroy met problems");
        }
        *guard = Some(r.clone());
        r
    }

    /// Every process of the sandbox as init records it (exec and, for what
    /// init reaps, exit), or under gVisor as the Sentry's trace points
    /// report it (exec and exit of every process); once per sandbox. Empty
    /// (ends at once) when capture is off (`capture:off` in `layers`).
    pub fn process_events(&self) -> Option<crate::channel::ProcessEvents> {
        self.channel.process_events()
    }

    /// Execs init holds until they are decided (the spec's `hold_words`);
    /// once per sandbox. Answer each with [`Sandbox::answer_hold`].
    pub fn process_holds(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<brig_core::wire::ProcessHold>> {
        self.channel.process_holds()
    }

    pub async fn answer_hold(&self, answer: brig_core::wire::HoldAnswer) -> brig_core::Result<()> {
        self.channel.answer_hold(answer).await
    }

    /// Resolves when the sandbox died on its own (init exited, channel closed).
    pub async fn died(&self) {
        self.channel.closed().await
    }

    /// Host pid of the container's init (for diagnostics and tests).
    pub fn init_pid(&self) -> Option<i32> {
        self.parts.adopted.lock().ok()?.first().map(|a| a.pid)
    }

    /// The session's directory on the host.
    pub fn session_dir(&self) -> &Path {
        &self.parts.session_dir
    }

    /// The session's cgroup on the host.
    pub fn cgroup(&self) -> &SessionCgroup {
        &self.parts.cgroup
    }

    fn check_live(&self) -> Result<()> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(Error::conflict(format!(
                "sandbox of {} is destroyed",
                self.id
            )));
        }
        if self.channel.is_closed() {
            return Err(Error::conflict(format!("sandbox of {} has died", self.id))
                .hint("destroy the session and create a new one"));
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Never leave a sandbox running unwatched: a sandbox dropped without
        // destroy is killed; its mounts, cgroup and dirs stay for reconcile.
        if !self.destroyed.load(Ordering::SeqCst) {
            tracing::warn!(session = %self.id, "sandbox dropped without destroy; killing it");
            self.parts.kill_now();
        }
    }
}

/// Host uid and gid of the sandbox's user (mapped under a user namespace).
fn sandbox_owner(runtime: &Runtime) -> (u32, u32) {
    match runtime.user_ns().then(UserNs::standard) {
        Some(u) => (u.to_host(SANDBOX_UID), u.to_host(SANDBOX_GID)),
        None => (SANDBOX_UID, SANDBOX_GID),
    }
}

/// A checkout (first, whole) and then each upload into the workspace, all
/// within `cap` bytes.
fn copy_in(
    workspace: &Path,
    checkout: Option<&Path>,
    uploads: &[PathBuf],
    cap: u64,
    owner: (u32, u32),
) -> Result<()> {
    let mut left = cap;
    if let Some(src) = checkout {
        let stats = crate::upload::copy_checkout(src, workspace, left, owner)?;
        left = left.saturating_sub(stats.bytes);
    }
    for src in uploads {
        let stats = crate::upload::copy_snapshot(src, workspace, left, owner)?;
        left = left.saturating_sub(stats.bytes);
    }
    Ok(())
}

/// The routing that makes every IPv4 destination reach the forwarder,
/// running while init gets ready.
enum EgressSetup {
    /// Done from the host in the netns of init (`pid`).
    Host(i32, tokio::task::JoinHandle<Result<()>>),
    /// Done inside the sandbox by `brig sandbox-anyip` (gVisor).
    Inside(tokio::task::JoinHandle<Result<()>>),
    Taken,
}

impl EgressSetup {
    /// The setup's result if it already finished (why init failed to get
    /// ready, when the route could not be set).
    async fn finished(
        &mut self,
    ) -> Option<std::result::Result<Result<()>, tokio::task::JoinError>> {
        let done = match self {
            EgressSetup::Host(_, h) | EgressSetup::Inside(h) => h.is_finished(),
            EgressSetup::Taken => false,
        };
        if !done {
            return None;
        }
        match std::mem::replace(self, EgressSetup::Taken) {
            EgressSetup::Host(_, h) | EgressSetup::Inside(h) => Some(h.await),
            EgressSetup::Taken => None,
        }
    }
}

/// The steps of create after the image is resolved.
async fn build(
    paths: &SandboxPaths,
    req: &SandboxRequest,
    image: &ResolvedImage,
    parts: &Arc<Parts>,
) -> Result<(Arc<Channel>, Vec<String>)> {
    let runtime = &parts.runtime;
    // Overlaps a kernel wait of the runtime's cgroup move with what follows.
    crate::cgroup::warm_migration_lock();
    let user_ns = runtime.user_ns().then(UserNs::standard);
    let owner = sandbox_owner(runtime);
    // What the cgroup must enforce: the session's limits, plus the host
    // tasks of the runtime itself (gVisor's Sentry).
    let l = &Limits {
        pids: req.limits.pids + runtime.pids_overhead(req.limits.pids),
        ..req.limits.clone()
    };
    let ws = Workspace::create(&parts.session_dir, l.disk_bytes, owner)?;
    let record = serde_json::to_vec(&Record {
        runtime: req.runtime.clone(),
    })
    .map_err(|e| Error::internal(e.to_string()))?;
    std::fs::write(parts.session_dir.join(RECORD), record)?;

    // The egress channel's directory: owner root, group = the host gid the
    // sandbox's user has (native, oci: the mapped one, no host user's).
    // gVisor checks the permission itself, against the sandbox's gid 1000
    // as is, which may be a real group on the host: there the session dir
    // is root's alone (0700; runsc and its gofer run as root), so no host
    // user reaches the sockets (or the workspace) through it.
    if user_ns.is_none() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&parts.session_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::guard("egress", format!("chmod of the session dir: {e}")))?;
    }
    let egress_dir = crate::egress::create_dir(&parts.session_dir, owner.1)?;
    if let Some(pem) = &req.trust_ca {
        crate::egress::write_ca_bundle(&egress_dir, &image.rootfs, pem)?;
    }
    // Every runtime catches 80/443 transparently (routed from the host, or
    // from inside under gVisor).
    let forwarder = crate::egress::ForwarderConfig::new(true);

    copy_in(
        &ws.path,
        req.checkout.as_deref(),
        &req.uploads,
        req.upload_cap_bytes,
        owner,
    )?;

    let init = InitConfig {
        rw_paths: [
            "/workspace",
            "/tmp",
            "/dev/shm",
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/tty",
            "/dev/ptmx",
            "/dev/pts",
        ]
        .map(String::from)
        .to_vec(),
        landlock: runtime.landlock(),
        seccomp: true,
        nproc: matches!(req.runtime, RuntimeKind::Gvisor).then_some(req.limits.pids),
        capture: runtime.capture() && !req.no_capture,
        hold_words: if runtime.capture() && !req.no_capture {
            req.hold_words.clone()
        } else {
            Vec::new()
        },
        egress: Some(forwarder.clone()),
    };
    let init_dir = crate::initfs::prepare(&paths.data_dir, &paths.brig_exe)?;
    let spec = spec::build(&spec::SpecInput {
        id: &req.id,
        image,
        limits: l,
        workspace: &ws.path,
        init_dir: &init_dir,
        init: &init,
        user_ns,
        egress: Some(&egress_dir),
    })?;
    let bundle = parts.session_dir.join("bundle");
    spec::write_bundle(&bundle, &spec)?;

    // The control pipes: ours are close-on-exec so no other child of brig
    // (sessions are created concurrently) inherits them and holds them open.
    let (to_init_r, to_init_w) = pipe()?;
    let (from_init_r, from_init_w) = pipe()?;
    let log_path = parts.session_dir.join("runtime.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let pid_file = parts.session_dir.join("init.pid");
    runtime.prepare()?;
    // gVisor: the Sentry's trace points, on a socket of brig's (fail closed:
    // no connection and handshake, no session).
    let trace = match runtime.trace_capture() && !req.no_capture {
        true => Some(TraceSocket::listen(&parts.session_dir)?),
        false => None,
    };
    let flags: Vec<String> = trace.iter().map(TraceSocket::runsc_flag).collect();
    let accept = trace.map(|t| tokio::spawn(t.accept(TRACE_ACCEPT_TIMEOUT)));
    let run = runtime
        .run_detached_with(
            req.id.as_str(),
            &bundle,
            &pid_file,
            InitIo {
                stdin: to_init_r,
                stdout: from_init_w,
                stderr: log,
            },
            &flags,
        )
        .await;
    if run.is_ok() {
        // Held before anything else can fail, so teardown reaps them.
        parts.adopt(&pid_file)?;
    }
    let trace = match (accept, run) {
        (None, run) => {
            run?;
            None
        }
        (Some(accept), Err(e)) => {
            // runsc sets the sink up first: a run that failed before the
            // handshake most likely failed at it.
            if accept.is_finished() {
                if let Ok(Err(capture)) = accept.await {
                    return Err(capture);
                }
                return Err(e);
            }
            accept.abort();
            return Err(Error::guard(
                "capture",
                format!(
                    "gVisor trace: runsc did not connect to brig's trace socket: {}",
                    e.message
                ),
            ));
        }
        (Some(accept), Ok(())) => {
            match tokio::time::timeout(TRACE_CONNECTED_TIMEOUT, accept).await {
                Ok(Ok(Ok(conn))) => Some(conn),
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(Error::guard("capture", format!("gVisor trace: {e}"))),
                Err(_) => {
                    return Err(Error::guard(
                        "capture",
                        "gVisor trace: the sandbox runs but runsc never connected to brig's trace socket",
                    ))
                }
            }
        }
    };

    let to_init = tokio::net::unix::pipe::Sender::from_owned_fd(to_init_w)?;
    let from_init = tokio::net::unix::pipe::Receiver::from_owned_fd(from_init_r)?;
    let (channel, trace_started) = match trace {
        Some(conn) => {
            let (channel, producer) = Channel::with_producer(to_init, from_init);
            (
                channel,
                Some(conn.start(req.id.as_str().to_string(), producer)),
            )
        }
        None => (Channel::new(to_init, from_init), None),
    };
    // The sandbox's network namespace exists once the runtime has run it:
    // route it while init gets ready, so the forwarder (which init waits
    // for before `Ready`) can bind its ports at once.
    let mut netns = match runtime.egress_from_host() {
        true => {
            let pid = parts
                .adopted
                .lock()
                .ok()
                .and_then(|a| a.first().map(|a| a.pid))
                .ok_or_else(|| Error::guard("egress", "no sandbox init to enter"))?;
            EgressSetup::Host(
                pid,
                tokio::task::spawn_blocking(move || crate::egress::setup_netns(pid)),
            )
        }
        false => {
            let rt = runtime.clone();
            let id = req.id.as_str().to_string();
            EgressSetup::Inside(tokio::spawn(async move { rt.exec_anyip(&id).await }))
        }
    };
    let ready = match channel.wait_ready(READY_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            // A route that could not be set is why init's forwarder failed.
            if let Some(Ok(Err(why))) = netns.finished().await {
                return Err(why);
            }
            if e.kind == ErrorKind::GuardUnavailable {
                return Err(e);
            }
            return Err(Error::runtime(format!(
                "{}: the sandbox's init did not get ready: {}; runtime log: {}",
                runtime.name(),
                e.message,
                log_tail(&log_path)
            ))
            .hint("run `brig doctor` to check the runtime; the runtime log is quoted above"));
        }
    };
    for (wanted, prefix) in [
        (init.seccomp, "seccomp"),
        (init.landlock, "landlock"),
        (init.capture, "capture"),
        (init.egress.is_some(), "egress"),
    ] {
        if wanted && !ready.layers.iter().any(|x| x.starts_with(prefix)) {
            return Err(Error::guard(
                prefix,
                "init reported ready without applying it",
            ));
        }
    }
    if ready.uid != SANDBOX_UID || ready.gid != SANDBOX_GID {
        return Err(Error::guard(
            "user",
            format!(
                "init runs as {}:{}, not {SANDBOX_UID}:{SANDBOX_GID}",
                ready.uid, ready.gid
            ),
        ));
    }
    parts.cgroup.verify(l)?;
    // The one way out: routes and port floor of the sandbox's network
    // namespace, then the forwarder's listeners, before anyone may use it.
    let task_failed =
        |e: tokio::task::JoinError| Error::guard("egress", format!("the setup task failed: {e}"));
    match netns {
        EgressSetup::Host(pid, setup) => {
            setup.await.map_err(task_failed)??;
            let fw = forwarder.clone();
            tokio::task::spawn_blocking(move || crate::egress::wait_listeners(pid, &fw))
                .await
                .map_err(task_failed)??;
        }
        // Init reported its forwarder listening in `Ready` (the host cannot
        // read the Sentry's sockets).
        EgressSetup::Inside(setup) => setup.await.map_err(task_failed)??,
        EgressSetup::Taken => return Err(Error::guard("egress", "the setup was lost")),
    }
    let egress_layer = crate::egress::LAYER_TRANSPARENT;
    // The container's start must have come through the trace socket by now
    // (it precedes init's first instruction): points really flow.
    let traced = match trace_started {
        Some(started) => match tokio::time::timeout(TRACE_START_TIMEOUT, started).await {
            Ok(Ok(())) => true,
            _ => {
                return Err(Error::guard(
                    "capture",
                    format!(
                        "gVisor trace: no container/start point for {} arrived from the Sentry",
                        req.id
                    ),
                ))
            }
        },
        None => false,
    };

    let mut ns = "ns:mnt,pid,ipc,uts,net,cgroup".to_string();
    if user_ns.is_some() {
        ns.push_str(",user");
    }
    let mut layers = vec![
        format!("runtime:{}", runtime.name()),
        ns,
        "rootfs:ro".to_string(),
        "caps:none".to_string(),
        "no_new_privs".to_string(),
        parts.cgroup.version.layer().to_string(),
        format!("workspace:tmpfs({})", format_size(l.disk_bytes)),
        format!("tmp:tmpfs({})", format_size(l.tmp_bytes)),
    ];
    for x in ready.layers {
        if !layers.contains(&x) {
            layers.push(x);
        }
    }
    layers.push(egress_layer.to_string());
    if traced {
        layers.push(crate::gvisor_trace::LAYER.to_string());
    } else if !init.capture {
        layers.push(match req.no_capture {
            true => "capture:off".to_string(),
            false => format!("capture:unavailable({})", runtime.name()),
        });
    }
    Ok((channel, layers))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::internal(format!("creating a pipe: {e}")))
}

/// See the module doc. Idempotent; affects the whole brig process.
fn become_subreaper() -> Result<()> {
    static DONE: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    })
    .clone()
    .map_err(|e| Error::internal(format!("PR_SET_CHILD_SUBREAPER: {e}")))
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: plain syscall on a pidfd we own.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// Reap the process behind `fd` if it is a dead child of ours. Returns true
/// once it is gone (reaped now, or not our child to reap).
fn pidfd_reap(fd: &OwnedFd) -> bool {
    // SAFETY: siginfo_t is plain data; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            fd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r != 0 {
        // ECHILD: not our child (or already reaped): nothing to wait for.
        return true;
    }
    // WNOHANG and still running: si_pid stays 0.
    unsafe { info.si_pid() != 0 }
}

fn child_pids_of_self() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the last ')' (comm may contain spaces): state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(me) {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

impl Parts {
    /// Take hold of the processes the runtime left behind: the init from
    /// the pid file first, then any child of ours naming this session
    /// (gVisor's sandbox and gofer).
    fn adopt(&self, pid_file: &Path) -> Result<()> {
        let layer = format!("runtime:{}", self.runtime.name());
        let pid: i32 = std::fs::read_to_string(pid_file)
            .map_err(|e| {
                Error::guard(
                    &layer,
                    format!("no init pid file {}: {e}", pid_file.display()),
                )
            })?
            .trim()
            .parse()
            .map_err(|_| Error::guard(&layer, "the init pid file is not a number"))?;
        let mut adopted = self.adopted.lock().expect("adopted lock");
        let fd = pidfd_open(pid)
            .ok_or_else(|| Error::guard(&layer, format!("the sandbox init (pid {pid}) is gone")))?;
        adopted.push(Adopted { pid, fd });
        // The native runtime leaves exactly one process behind, its init
        // (from the pid file); every other process of the sandbox descends
        // from it. Scanning /proc costs milliseconds per create, so only
        // runtimes that leave helpers (gVisor's sandbox and gofer) pay it.
        if self.runtime.kind == RuntimeKind::Native {
            return Ok(());
        }
        let cg_path = format!("/{}", self.cgroup.rel);
        for (child, cmd) in child_pids_of_self() {
            let in_cgroup = std::fs::read_to_string(format!("/proc/{child}/cgroup"))
                .map(|c| c.lines().any(|l| l.ends_with(&cg_path)))
                .unwrap_or(false);
            if child != pid && (in_cgroup || cmd.contains(self.id.as_str())) {
                if let Some(fd) = pidfd_open(child) {
                    adopted.push(Adopted { pid: child, fd });
                }
            }
        }
        Ok(())
    }

    fn kill_now(&self) {
        if let Ok(adopted) = self.adopted.lock() {
            for a in adopted.iter() {
                pidfd_kill(&a.fd);
            }
        }
        self.cgroup.kill_once();
    }

    /// Reap the adopted processes, waiting up to `timeout` for them to die.
    async fn reap(&self, timeout: Duration) -> Vec<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left: Vec<i32> = {
                let mut adopted = self.adopted.lock().expect("adopted lock");
                adopted.retain(|a| !pidfd_reap(&a.fd));
                adopted.iter().map(|a| a.pid).collect()
            };
            if left.is_empty() || tokio::time::Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Kill everything, delete the runtime's state, reap, remove the cgroup,
/// shred the workspace. Each step runs even if an earlier one failed.
async fn teardown(parts: &Arc<Parts>, partial: bool) -> DestroyReport {
    let mut r = DestroyReport::default();
    let id = parts.id.as_str().to_string();
    parts.kill_now();
    let p = parts.clone();
    let killed = tokio::task::spawn_blocking(move || p.cgroup.kill_all(KILL_TIMEOUT))
        .await
        .unwrap_or_else(|e| Err(Error::internal(e.to_string())));
    if let Err(e) = killed {
        r.problems.push(e.message);
    }
    if parts.runtime.has_state(&id) {
        if let Err(e) = parts.runtime.delete(&id).await {
            r.problems.push(e.message);
        }
    }
    r.runtime_state_removed = !parts.runtime.has_state(&id);
    let left = parts.reap(KILL_TIMEOUT).await;
    if !left.is_empty() {
        r.problems
            .push(format!("processes {left:?} did not exit after SIGKILL"));
    }
    r.processes_killed = left.is_empty() && parts.cgroup.pids().is_empty();
    let p = parts.clone();
    let removed = tokio::task::spawn_blocking(move || p.cgroup.remove())
        .await
        .unwrap_or_else(|e| Err(Error::internal(e.to_string())));
    if let Err(e) = removed {
        r.problems.push(e.message);
    }
    r.cgroups_removed = !parts.cgroup.exists();
    let sd = parts.session_dir.clone();
    let shred = tokio::task::spawn_blocking(move || Workspace::at(&sd).shred())
        .await
        .unwrap_or_default();
    r.problems.extend(shred.problems);
    r.workspace_shredded = shred.unmounted && shred.removed;
    if !partial || !r.clean() {
        tracing::debug!(session = %id, report = ?r, "sandbox torn down");
    }
    r
}

/// Destroy every sandbox, mount, cgroup, runtime state and workspace under
/// `paths` whose session is not in `keep` (crash reconciliation at startup).
/// Returns one line per thing cleaned.
pub async fn reconcile(paths: &SandboxPaths, keep: &[SessionId]) -> Result<Vec<String>> {
    use std::collections::BTreeSet;
    let keep: BTreeSet<&str> = keep.iter().map(|k| k.as_str()).collect();
    let mut lines = vec![];
    let sessions = workspace::sessions_dir(&paths.data_dir);

    // Every runtime that ever kept state here.
    let mut runtimes = vec![];
    if let Ok(rd) = std::fs::read_dir(runtimes_dir(&paths.data_dir)) {
        for e in rd.flatten() {
            if let Some(rt) = Runtime::from_state_dir(&e.path(), paths) {
                runtimes.push(rt);
            }
        }
    }

    // Session ids found in this data dir: session dirs, mounts, runtime state.
    let mut ids: BTreeSet<String> = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(&sessions) {
        for e in rd.flatten() {
            ids.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    for m in workspace::mounts_under(&sessions) {
        if let Ok(rel) = m.strip_prefix(&sessions) {
            if let Some(first) = rel.components().next() {
                ids.insert(first.as_os_str().to_string_lossy().into_owned());
            }
        }
    }
    // Cgroups are host-wide: another brig with another data dir may own
    // some under brig/. Only ids this data dir knows are ours to clean, and
    // the session dir outlives the cgroup (destroy removes it last).
    for rt in &runtimes {
        ids.extend(rt.state_ids());
    }

    for id in ids {
        if keep.contains(id.as_str()) {
            continue;
        }
        let cg = SessionCgroup::new(&id);
        let pids = cg.pids();
        if !pids.is_empty() {
            let n = pids.len();
            // Those that are our children (a sandbox this process lost
            // track of) must also be reaped, or they stay zombies.
            let me = std::process::id() as i32;
            let ours: Vec<OwnedFd> = child_pids_of_self()
                .into_iter()
                .filter(|(p, _)| pids.contains(p) && *p != me)
                .filter_map(|(p, _)| pidfd_open(p))
                .collect();
            let c = cg.clone();
            let res = tokio::task::spawn_blocking(move || c.kill_all(KILL_TIMEOUT))
                .await
                .unwrap_or_else(|e| Err(Error::internal(e.to_string())));
            for fd in &ours {
                for _ in 0..200 {
                    if pidfd_reap(fd) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            match res {
                Ok(()) => lines.push(format!("{id}: killed {n} leftover process(es)")),
                Err(e) => lines.push(format!("{id}: could not kill leftover processes: {e}")),
            }
        }
        for rt in &runtimes {
            if rt.has_state(&id) {
                match rt.delete(&id).await {
                    Ok(()) => lines.push(format!("{id}: deleted {} runtime state", rt.name())),
                    Err(e) => {
                        rt.remove_state(&id);
                        lines.push(format!("{id}: removed {} runtime state ({e})", rt.name()))
                    }
                }
            }
        }
        if cg.exists() {
            let c = cg.clone();
            match tokio::task::spawn_blocking(move || c.remove()).await {
                Ok(Ok(())) => lines.push(format!("{id}: removed cgroup {}", cg.rel)),
                Ok(Err(e)) => lines.push(format!("{id}: could not remove cgroup: {e}")),
                Err(e) => lines.push(format!("{id}: could not remove cgroup: {e}")),
            }
        }
        let sd = sessions.join(&id);
        if sd.exists() {
            let had_mount = workspace::is_mountpoint(&sd.join("workspace"));
            let r = tokio::task::spawn_blocking(move || Workspace::at(&sd).shred())
                .await
                .unwrap_or_default();
            if r.unmounted && r.removed {
                let what = if had_mount {
                    "unmounted and shredded workspace"
                } else {
                    "removed session dir"
                };
                lines.push(format!("{id}: {what}"));
            } else {
                lines.push(format!(
                    "{id}: workspace not fully shredded: {}",
                    r.problems.join("; ")
                ));
            }
        }
    }
    // Empty `brig` parents; busy ones (live sessions) stay.
    let _ = crate::cgroup::remove_empty_parents();
    Ok(lines)
}
