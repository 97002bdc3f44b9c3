//! The session manager: create, exec, destroy, kill, the reaper and startup
//! reconciliation. Every state change is written to the store with a reason
//! and journaled as an event; the in-memory table holds only live sandboxes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brig_core::event::{now_rfc3339, Event, Outcome};
use brig_core::exec::{ExecRequest, ExitStatus};
use brig_core::session::{
    CreateSession, Limits, RuntimeKind, SessionInfo, SessionState, SessionSummary,
};
use brig_core::units::{parse_duration, parse_size};
use brig_core::{wire, Error, ErrorKind, ExecId, Result, SessionId, TaskId};
use brig_sandbox::{
    ExecEvent, ExecHandle, ProcessEvent, ProcessEvents, Sandbox, SandboxPaths, SandboxRequest,
};
use brig_store::{ExecEnd, ExecRecord, Store};
use tokio::sync::{mpsc, Notify};

use crate::config::{cpus_to_millis, ServerConfig, DEFAULT_PROFILE};

mod drill;
use crate::metrics::{ExecOutcome, Metrics, ReaperAction};
pub use drill::{DrillPart, DrillReport};

/// Grace between SIGTERM and SIGKILL on a graceful destroy.
pub const DESTROY_GRACE: Duration = Duration::from_secs(2);
/// Buffered exec keeps at most this much of each stream (counts stay exact).
pub const BUFFERED_OUTPUT_CAP: usize = 1 << 20;

/// The store, called from async code: reads on blocking threads, writes
/// that journal events through the group-commit writer (`crate::journal`).
#[derive(Clone)]
pub struct Db(Arc<Store>, crate::journal::JournalWriter);

impl Db {
    pub fn new(store: Store) -> Db {
        let store = Arc::new(store);
        let writer = crate::journal::JournalWriter::spawn(store.clone());
        Db(store, writer)
    }
    /// The store itself, for parts that run their own blocking loops.
    pub fn store(&self) -> Arc<Store> {
        self.0.clone()
    }
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let s = self.0.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| Error::internal(format!("database task failed: {e}")))?
    }
    /// A write that appends to the journal, committed together with the
    /// other writes waiting at the same time; returns once it is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&brig_store::Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.1.write(f).await
    }
    pub fn writer(&self) -> &crate::journal::JournalWriter {
        &self.1
    }
}

/// How a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyMode {
    /// SIGTERM to running commands, [`DESTROY_GRACE`], then kill and shred.
    Graceful,
    /// SIGKILL everything now, then shred.
    Kill,
}

/// Which live sessions the kill switch takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillTarget {
    All,
    Session(SessionId),
    /// Every session of this human.
    Human(String),
    /// Every session of this task.
    Task(String),
}

impl KillTarget {
    /// Whether the target takes this session.
    pub fn matches(&self, info: &SessionInfo) -> bool {
        match self {
            KillTarget::All => true,
            KillTarget::Session(id) => &info.id == id,
            KillTarget::Human(h) => &info.human == h,
            KillTarget::Task(t) => info.task.as_str() == t,
        }
    }
}

/// What commands in a session see of the outside, streamed in order.
#[derive(Debug)]
pub enum ExecOut {
    Started {
        pid: i32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last message on success.
    Exited(ExitStatus),
    /// The last message when the command could not start or the sandbox died.
    SpawnFailed(String),
}

/// Controls of a running exec (stdin, signals, PTY size).
pub struct ExecCtl {
    pub exec_id: ExecId,
    handle: Arc<ExecHandle>,
}

impl ExecCtl {
    pub async fn stdin(&self, data: Vec<u8>) -> Result<()> {
        self.handle.stdin(data).await
    }
    pub async fn close_stdin(&self) -> Result<()> {
        self.handle.close_stdin().await
    }
    pub async fn signal(&self, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(Error::invalid(format!("signal {signal} is not valid"))
                .hint("send a signal number from 1 to 64, e.g. 2 (INT) or 15 (TERM)"));
        }
        self.handle.signal(signal).await
    }
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.handle.resize(rows, cols).await
    }
}

struct Activity {
    last_active: Instant,
    last_cpu: Option<u64>,
}

/// A session whose sandbox exists.
struct Live {
    id: SessionId,
    sandbox: Arc<Sandbox>,
    /// Base environment: defaults, image, profile (requests add theirs).
    env: Vec<(String, String)>,
    /// The session record; held across its store write so writes stay ordered.
    info: tokio::sync::Mutex<SessionInfo>,
    started: Instant,
    activity: Mutex<Activity>,
    running: AtomicU32,
    execs: Mutex<HashMap<String, Arc<ExecHandle>>>,
    execs_done: Notify,
    /// Stops the watcher of `Sandbox::died` once brig itself ends the session.
    stop_watch: Notify,
    closing: AtomicBool,
    /// The session's egress sockets being served; dropped (unbound) first
    /// at teardown.
    egress: Mutex<Option<crate::egress::SessionChannels>>,
    /// What the session holds of its profile's secrets (revoked at its end).
    secrets: Option<Arc<crate::secrets::SessionSecrets>>,
    /// The session's own forge for a `[repos.NAME]`, and the tokens minted
    /// for it (revoked at its end).
    forge: Option<SessionForge>,
    /// Its agent's policy: every exec and push is decided there.
    gate: Arc<crate::policy::AgentGate>,
}

impl Live {
    fn touch(&self) {
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_active = Instant::now();
    }
}

pub struct Manager {
    cfg: ServerConfig,
    paths: SandboxPaths,
    db: Db,
    pub metrics: Metrics,
    live: Mutex<HashMap<SessionId, Arc<Live>>>,
    closing: AtomicBool,
    /// The journal's SIEM sink runner, when sinks are configured.
    pub sinks: Mutex<Option<brig_sinks::SinkRunner>>,
    /// Each profile's compiled egress policy, or why it does not compile
    /// (its sessions are then refused, with that reason).
    policies: HashMap<String, std::result::Result<Arc<brig_egress::Policy>, String>>,
    /// The artifact service (made on first use: the key is loaded or
    /// created then; `brig serve` makes it at start).
    artifacts: std::sync::OnceLock<Arc<crate::artifacts::Artifacts>>,
    /// Every secret value brig knows, and the redactor built from them.
    known: Arc<crate::known_secrets::KnownSecrets>,
    /// `[secrets]` built (sources, minters, cache), or why it cannot be;
    /// `None` when brig.toml configures none.
    secrets: Option<std::result::Result<Arc<brig_secrets::config::Secrets>, String>>,
    /// The model gateway of `[models]` (none without it); built at start,
    /// an error leaves sessions refused with the reason (fail closed).
    models: Option<std::result::Result<Arc<brig_model::Gateway>, String>>,
    /// Cedar policies (checked at load; an error here refuses every
    /// session with the reason: fail closed).
    policy: std::result::Result<Arc<crate::policy::Policy>, String>,
    /// Approval requests and decisions.
    approvals: std::result::Result<Arc<crate::approvals::Approvals>, String>,
    /// brig's egress CA (made on first use under the data dir).
    egress_ca: std::sync::OnceLock<Arc<brig_proxy::CertAuthority>>,
    /// The pre-push scanner every session's git gateway uses, or why its
    /// rules do not compile.
    scanner: std::result::Result<Arc<brig_scan::Scanner>, String>,
    /// The forge of each `[repos.NAME]`, or why it cannot be built.
    forges: HashMap<String, std::result::Result<Arc<dyn brig_forge::Forge>, String>>,
    /// brig's deployment key (made on first use).
    git_signer: std::sync::OnceLock<Arc<brig_git::SshSigner>>,
    /// Sandboxes started ahead of demand.
    pool: Arc<crate::pool::Pool>,
}

/// What a failed create has made so far, to undo ([`Manager::fail_start`]).
#[derive(Default)]
struct Undo<'a> {
    forge: Option<&'a SessionForge>,
    secrets: Option<&'a crate::secrets::SessionSecrets>,
    /// The checkout's directory (without a sandbox, which removes it).
    git_dir: bool,
    sandbox: Option<&'a Sandbox>,
}

/// A session's own forge for a `[repos.NAME]`, and the tokens minted for
/// it (`[repo_tokens]`), revoked at its end.
type SessionForge = (
    Arc<dyn brig_forge::Forge>,
    Option<Arc<crate::forge_tokens::SessionForgeTokens>>,
);

pub(crate) fn session_event(info: &SessionInfo, action: &str, outcome: Outcome) -> Event {
    let mut e = Event::new(action, outcome);
    e.session = Some(info.id.to_string());
    e.human = Some(info.human.clone());
    e.agent = Some(info.principal.clone());
    e.task = Some(info.task.to_string());
    e.repo = info.repo.clone();
    e
}

/// Most events (process or egress) journaled in one append (one
/// transaction).
const JOURNAL_BATCH: usize = 256;
/// How long the first event of a batch waits for others.
const JOURNAL_LINGER: Duration = Duration::from_millis(10);

/// One batch for the journal: `first`, what `next` has ready now, and,
/// unless the batch is full, what it has after [`JOURNAL_LINGER`]. Events
/// come in bursts (a script's processes, a build's fetches): a moment's
/// wait lets one transaction take many of them instead of one each, which
/// keeps the journal's share of the CPUs small. A full batch does not wait.
pub(crate) async fn gather_batch(
    first: Event,
    mut next: impl FnMut() -> Option<Event>,
) -> Vec<Event> {
    let mut batch = vec![first];
    let mut take = |batch: &mut Vec<Event>| {
        while batch.len() < JOURNAL_BATCH {
            match next() {
                Some(e) => batch.push(e),
                None => break,
            }
        }
    };
    take(&mut batch);
    if batch.len() < JOURNAL_BATCH {
        tokio::time::sleep(JOURNAL_LINGER).await;
        take(&mut batch);
    }
    batch
}

/// The journal event for one captured process event.
fn process_event(info: &SessionInfo, pe: ProcessEvent) -> Event {
    match pe {
        ProcessEvent::Exec(p) => {
            let mut e =
                session_event(info, "process.exec", Outcome::Info).details(serde_json::json!({
                    "pid": p.pid, "ppid": p.ppid, "uid": p.uid, "argv": p.argv,
                    "path": p.path, "cwd": p.cwd,
                }));
            e.time = p.time;
            e
        }
        ProcessEvent::Exit(p) => {
            let outcome = if p.code == Some(0) {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let mut e = session_event(info, "process.exit", outcome).details(serde_json::json!({
                "pid": p.pid, "code": p.code, "signal": p.signal,
            }));
            e.time = p.time;
            e
        }
        ProcessEvent::Overflow { dropped } => {
            session_event(info, "process.capture_overflow", Outcome::Failure)
                .rule("capture.queue")
                .details(serde_json::json!({ "dropped": dropped }))
        }
    }
}

/// Apply a state change to `info` (timestamps, end reason).
fn apply_state(info: &mut SessionInfo, to: SessionState, reason: &str) {
    let now = now_rfc3339();
    if to == SessionState::Running && info.started_at.is_none() {
        info.started_at = Some(now.clone());
    }
    if !to.is_live() {
        info.ended_at = Some(now);
        info.end_reason = Some(reason.to_string());
    }
    info.state = to;
}

impl Manager {
    pub fn new(cfg: ServerConfig, store: Store) -> Manager {
        // Checked when the configuration was loaded; a policy that does not
        // compile here leaves its profile without sessions (fail closed).
        let policies = cfg
            .profiles
            .iter()
            .map(|(name, p)| {
                let pol = brig_egress::Policy::compile(&p.egress).map(Arc::new).map_err(|e| {
                    tracing::error!(profile = %name, error = %e, "egress policy does not compile");
                    e.to_string()
                });
                (name.clone(), pol)
            })
            .collect();
        let scanner = brig_scan::Scanner::new(&cfg.scan)
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(error = %e, "the pre-push scanner's rules do not compile");
                e.to_string()
            });
        let forges: HashMap<_, _> = cfg
            .repos
            .iter()
            // Those with minted tokens get a forge per session.
            .filter(|(name, _)| !cfg.repo_tokens.contains_key(*name))
            .map(|(name, f)| {
                let built = f.build().map_err(|e| {
                    tracing::error!(repo = %name, error = %e, "forge cannot be built");
                    e.to_string()
                });
                (name.clone(), built)
            })
            .collect();
        let db = Db::new(store);
        // The scanner's secret patterns join the redactor's own (one
        // redactor for everything brig keeps).
        let patterns = match &scanner {
            Ok(sc) => sc.redaction_patterns(),
            Err(_) => vec![],
        };
        let known = crate::known_secrets::KnownSecrets::new(db.store(), patterns).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the scanner's patterns do not compile in the redactor; redacting with brig's own");
            crate::known_secrets::KnownSecrets::new(db.store(), vec![]).expect("no patterns compile")
        });
        let secrets =
            (!cfg.secrets.sources.is_empty() || !cfg.secrets.minters.is_empty()).then(|| {
                cfg.secrets.build().map(Arc::new).map_err(|e| {
                    tracing::error!(error = %e, "[secrets] cannot be built");
                    e.to_string()
                })
            });
        let known = Arc::new(known);
        let models = cfg.models.as_ref().map(|m| {
            let sources = secrets.as_ref().and_then(|r| r.as_ref().ok().cloned());
            crate::models::build(m, &db, sources, known.clone()).map_err(|e| {
                tracing::error!(error = %e, "[models] cannot be built");
                e
            })
        });
        let policy = crate::policy::Policy::build(&cfg)
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(error = %e, "[policy] cannot be built: every session is refused");
                e.to_string()
            });
        let approvals = crate::approvals::Approvals::new(db.clone(), &cfg.approvals)
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(error = %e, "[approvals] cannot be built");
                e.to_string()
            });
        let pool = Arc::new(crate::pool::Pool::new(
            cfg.pool.clone(),
            cfg.sandbox_paths(),
        ));
        Manager {
            pool,
            known,
            secrets,
            models,
            policy,
            approvals,
            egress_ca: std::sync::OnceLock::new(),
            policies,
            paths: cfg.sandbox_paths(),
            cfg,
            db,
            metrics: Metrics::default(),
            live: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            sinks: Mutex::new(None),
            artifacts: std::sync::OnceLock::new(),
            scanner,
            forges,
            git_signer: std::sync::OnceLock::new(),
        }
    }

    /// The artifact service, made on first use.
    pub fn artifacts(&self) -> Result<Arc<crate::artifacts::Artifacts>> {
        if let Some(a) = self.artifacts.get() {
            return Ok(a.clone());
        }
        let a = crate::artifacts::Artifacts::open(&self.cfg.data_dir, &self.cfg.artifacts)?;
        Ok(self.artifacts.get_or_init(|| Arc::new(a)).clone())
    }

    /// Each journal sink's cursor, lag and last error (`brig journal sinks`).
    pub fn sink_status(&self) -> Vec<brig_sinks::SinkStatus> {
        let g = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|r| r.status()).unwrap_or_default()
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }
    pub fn paths(&self) -> &SandboxPaths {
        &self.paths
    }
    pub fn db(&self) -> &Db {
        &self.db
    }

    fn live_table(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of sessions with a sandbox.
    pub fn live_count(&self) -> usize {
        self.live_table().len()
    }

    /// Record a state change of a session (store + event) in one step.
    async fn record_state(
        &self,
        info: &mut SessionInfo,
        to: SessionState,
        reason: &str,
    ) -> Result<()> {
        let from = info.state;
        apply_state(info, to, reason);
        let ev = session_event(
            info,
            "session.state",
            if to == SessionState::Failed {
                Outcome::Failure
            } else {
                Outcome::Info
            },
        )
        .details(serde_json::json!({"from": from.as_str(), "to": to.as_str(), "reason": reason}));
        let snapshot = info.clone();
        let reason = reason.to_string();
        self.db
            .write(move |s| {
                s.update_session(&snapshot, &reason)?;
                s.append_event(&ev)?;
                Ok(())
            })
            .await
    }

    async fn journal(&self, ev: Event) {
        if let Err(e) = self.db.write(move |s| s.append_event(&ev)).await {
            tracing::error!(error = %e, "could not journal an event");
        }
    }

    // ---- queries ----

    pub async fn get(&self, id: &SessionId) -> Result<SessionInfo> {
        let live = self.live_table().get(id).cloned();
        if let Some(l) = live {
            return Ok(l.info.lock().await.clone());
        }
        let id2 = id.clone();
        self.db
            .run(move |s| s.get_session(&id2))
            .await?
            .ok_or_else(|| unknown_session(id))
    }

    pub async fn list(&self, all: bool) -> Result<Vec<SessionInfo>> {
        self.db.run(move |s| s.list_sessions(all)).await
    }

    pub async fn events(&self, id: &SessionId) -> Result<Vec<Event>> {
        self.get(id).await?;
        let id = id.clone();
        self.db.run(move |s| s.events(Some(&id))).await
    }

    /// What the session's checkout pinned (none for a copied directory).
    pub async fn session_git(&self, id: &SessionId) -> Result<Option<crate::git::SessionGit>> {
        let id = id.clone();
        crate::git::from_record(self.db.run(move |s| s.session_git(&id)).await?)
    }

    /// The session's last `limit` egress denials, newest first, each as
    /// the agent was told: rule, what was asked, and how to request access.
    pub async fn egress_denials(
        &self,
        id: &SessionId,
        limit: i64,
    ) -> Result<Vec<serde_json::Value>> {
        let id = id.clone();
        let evs = self.db.run(move |s| s.denials(&id, "net.", limit)).await?;
        Ok(evs
            .into_iter()
            .map(|e| {
                let d = &e.details;
                serde_json::json!({
                    "seq": e.seq, "time": e.time, "action": e.action, "rule": e.rule,
                    "host": d["host"], "port": d["port"], "method": d["method"],
                    "path": d["path"], "via": d["via"],
                    "reason": d["explanation"]["reason"],
                    "how_to_request_access": d["explanation"]["how_to_request_access"],
                })
            })
            .collect())
    }

    pub async fn metrics_text(&self) -> Result<String> {
        let counts = self.db.run(|s| s.count_by_state()).await?;
        let mut out = self.metrics.render(&counts);
        self.pool.render(&mut out);
        Ok(out)
    }

    // ---- create ----

    /// Validate, record, start the sandbox. Runs to completion even if the
    /// caller goes away, so no half-made session is left behind.
    pub async fn create(self: &Arc<Self>, req: CreateSession) -> Result<SessionInfo> {
        self.create_reporting(req, None).await
    }

    /// [`Manager::create`] on behalf of `caller`, whom policy must allow
    /// (`session.create` in the deployment set).
    pub async fn create_as(
        self: &Arc<Self>,
        req: CreateSession,
        progress: Option<crate::git::Progress>,
        caller: brig_policy::HumanPrincipal,
    ) -> Result<SessionInfo> {
        let profile = req
            .profile
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.into());
        let phase = self.cfg.profile(&profile)?.policy.clone();
        let r = brig_policy::Request::session_create(
            &caller,
            req.repo.as_deref().unwrap_or(""),
            &req.task,
            &phase,
        );
        self.decide_human(&r).await?;
        self.create_reporting(req, progress).await
    }

    /// The deployment's policies, or why there are none (fail closed).
    pub fn policy(&self) -> Result<&Arc<crate::policy::Policy>> {
        self.policy.as_ref().map_err(|e| {
            Error::new(
                ErrorKind::GuardUnavailable,
                format!("policy is not usable: {e}"),
            )
            .hint("fix [policy] in brig.toml (docs/POLICY.md) and restart brig serve")
        })
    }

    pub fn approvals(&self) -> Result<&Arc<crate::approvals::Approvals>> {
        self.approvals.as_ref().map_err(|e| {
            Error::new(
                ErrorKind::GuardUnavailable,
                format!("approvals are not usable: {e}"),
            )
            .hint("fix [approvals] in brig.toml and restart brig serve")
        })
    }

    /// Decide a human's request (deployment set), journal the decision,
    /// and refuse it with the policy's reason when denied.
    pub async fn decide_human(&self, r: &brig_policy::Request) -> Result<brig_policy::Decision> {
        let d = self.policy()?.engine.authorize(r);
        self.journal(crate::policy::decision_event(None, &d)).await;
        if d.is_allowed() {
            Ok(d)
        } else {
            Err(crate::policy::denied(&d))
        }
    }

    /// Cedar's `session.use`: a human reads or acts in a session. Refusals
    /// are journaled, and so is acting in someone else's session (an admin
    /// at work); a human reading or acting in their own is not a decision
    /// worth a journal line each time (what they do is journaled anyway).
    pub async fn decide_session_use(&self, r: &brig_policy::Request) -> Result<()> {
        let d = self.policy()?.engine.authorize(r);
        let others = matches!(&r.action, brig_policy::Action::SessionUse { human, owner, write, .. }
            if *write && human.id != *owner);
        if !d.is_allowed() || others {
            self.journal(crate::policy::decision_event(None, &d)).await;
        }
        if d.is_allowed() {
            Ok(())
        } else {
            Err(crate::policy::denied(&d))
        }
    }

    /// Decide an agent's request through its session's gate (see
    /// [`crate::policy::AgentGate`]), waiting for an approval if needed.
    async fn decide_agent(
        &self,
        live: &Live,
        r: brig_policy::Request,
        resource: &str,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<brig_policy::Decision> {
        live.gate.decide(r, resource, true, say).await
    }

    /// [`Manager::create`], telling `progress` what it is doing (the
    /// checkout's git progress lines among it) on the way.
    pub async fn create_reporting(
        self: &Arc<Self>,
        req: CreateSession,
        progress: Option<crate::git::Progress>,
    ) -> Result<SessionInfo> {
        let me = self.clone();
        tokio::spawn(async move { me.create_inner(req, progress).await })
            .await
            .map_err(|e| Error::internal(format!("session create task failed: {e}")))?
    }

    async fn create_inner(
        self: Arc<Self>,
        req: CreateSession,
        progress: Option<crate::git::Progress>,
    ) -> Result<SessionInfo> {
        let say = |m: &str| {
            if let Some(p) = &progress {
                p(m)
            }
        };
        let t0 = Instant::now();
        if self.closing.load(Ordering::SeqCst) {
            return Err(
                Error::new(ErrorKind::Unavailable, "brig serve is shutting down")
                    .hint("retry once it is back"),
            );
        }
        let task: TaskId = req.task.parse()?;
        let profile_name = req
            .profile
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.into());
        let profile = self.cfg.profile(&profile_name)?.clone();
        let runtime = match &req.runtime {
            None => profile.runtime.clone(),
            Some(r) => {
                let k = RuntimeKind::parse(r)?;
                // An OCI runtime is a binary brig runs as root: only brig.toml names one.
                if matches!(k, RuntimeKind::Oci { .. }) && k != profile.runtime {
                    return Err(Error::new(
                        ErrorKind::Denied,
                        format!("runtime {r:?} is not the runtime of profile {profile_name:?}"),
                    )
                    .hint("OCI runtime binaries are chosen in brig.toml profiles; pick a profile that uses it"));
                }
                k
            }
        };
        let limits = request_limits(&profile.limits, &req)?;
        limits.validate()?;
        let repo = match req.repo.as_deref() {
            None => None,
            Some(name) if self.cfg.repos.contains_key(name) => {
                Some(crate::git::RepoArg::Named(name.to_string()))
            }
            Some(p) if !p.starts_with('/') && !p.contains('/') => {
                let known: Vec<&str> = self.cfg.repos.keys().map(String::as_str).collect();
                return Err(Error::not_found(format!(
                    "--repo {p:?} is neither an absolute path nor a [repos] entry of brig.toml"
                ))
                .hint(if known.is_empty() {
                    "pass an absolute path, or define [repos.NAME] in brig.toml".to_string()
                } else {
                    format!("repos in brig.toml: {}", known.join(", "))
                }));
            }
            Some(p) => Some(crate::git::RepoArg::Path(check_dir(p, "--repo")?)),
        };
        let upload = req
            .upload
            .as_deref()
            .map(|p| check_dir(p, "--upload"))
            .transpose()?;
        let human = match req.human.as_deref() {
            None | Some("") => "local".to_string(),
            Some(h) if h.len() <= 128 && !h.chars().any(char::is_control) => h.to_string(),
            Some(_) => {
                return Err(Error::invalid(
                    "human must be at most 128 characters without control characters",
                ))
            }
        };
        let image_name = req.image.clone().unwrap_or_else(|| profile.image.clone());
        let resolved = {
            let paths = self.paths.clone();
            let name = image_name.clone();
            tokio::task::spawn_blocking(move || brig_sandbox::image::resolve(&paths, &name))
                .await
                .map_err(|e| Error::internal(format!("image resolve task failed: {e}")))?
                .map_err(|e| e.context(format!("image {image_name:?}")))?
        };
        let env = merge_env(&[base_env(), resolved.env.clone(), profile.env.clone()]);
        // A warm sandbox of the same make, if one waits (crate::pool): the
        // session takes its id. A create that fails from here on drops the
        // claim, which destroys it.
        let template = crate::pool::Template {
            runtime: runtime.clone(),
            image_name: image_name.clone(),
            image: resolved.clone(),
            limits: limits.clone(),
            // What acquire_secrets will hand out: brig's CA with any grant.
            trust_ca: match req.drill || !profile.secrets.is_empty() {
                true => self.egress_ca().ok().map(|c| c.cert_pem().to_string()),
                false => None,
            },
            hold_words: self.cfg.policy.sensitive.command_words(),
        };
        let mut claim = self.pool.claim(&template);
        let id = claim
            .as_ref()
            .map(|c| c.id().clone())
            .unwrap_or_else(SessionId::generate);
        // A git source is checked out at a pinned commit (issue 5); a plain
        // directory is copied as it is.
        let mut git_plan = crate::git::plan(&self.cfg.git, &id, &req, repo.as_ref()).await?;

        let mut info = SessionInfo {
            principal: id.principal(),
            id: id.clone(),
            human,
            task,
            profile: profile_name,
            runtime: runtime.name(),
            image: image_name.clone(),
            image_digest: resolved.image.digest.clone(),
            state: SessionState::Created,
            limits: limits.clone(),
            repo: repo.as_ref().map(|r| match r {
                crate::git::RepoArg::Path(p) => p.display().to_string(),
                crate::git::RepoArg::Named(n) => n.clone(),
            }),
            created_at: now_rfc3339(),
            started_at: None,
            ended_at: None,
            end_reason: None,
            layers: vec![],
            exec_count: 0,
            last_activity_at: None,
        };
        // Its agent's principal under its profile's policy, before anything
        // is made for it: no policy, no session.
        let session_gate = {
            let policy = self.policy()?.clone();
            let agent = policy.agent(&info, &profile.policy);
            let session = Arc::new(policy.engine.session(&agent).map_err(|e| {
                Error::new(ErrorKind::GuardUnavailable, format!("policy: {e}"))
                    .hint("fix [policy] in brig.toml (docs/POLICY.md)")
            })?);
            Arc::new(crate::policy::AgentGate {
                policy,
                approvals: self.approvals.as_ref().ok().cloned(),
                db: self.db.clone(),
                session,
                info: info.clone(),
                granted: Default::default(),
            })
        };
        {
            let snapshot = info.clone();
            let ev =
                session_event(&info, "session.create", Outcome::Info).details(serde_json::json!({
                    "profile": info.profile, "runtime": info.runtime, "image": info.image,
                    "image_digest": info.image_digest, "limits": info.limits,
                    "upload": upload.as_ref().map(|p| p.display().to_string()),
                }));
            self.db
                .write(move |s| {
                    s.insert_session(&snapshot, "create requested")?;
                    s.append_event(&ev)?;
                    Ok(())
                })
                .await?;
        }
        tracing::info!(session = %id, task = %info.task, runtime = %info.runtime, image = %info.image, "creating session");

        // A `[repos.NAME]`: the session's own forge (its tokens minted for
        // it when `[repo_tokens]` says so), and the source it reads.
        let mut forge: Option<SessionForge> = None;
        if let Some(plan) = git_plan.as_mut() {
            if let Some(name) = plan.upstream.clone() {
                let got = match self.forge_for_session(&name, &info) {
                    Ok(f) => {
                        let source = crate::git::named_source(&name, f.0.as_ref()).await;
                        forge = Some(f);
                        source
                    }
                    Err(e) => Err(e),
                };
                match got {
                    Ok(source) => {
                        plan.source_display = source.display.clone();
                        plan.req.source = source;
                    }
                    Err(e) => {
                        let undo = Undo {
                            forge: forge.as_ref(),
                            ..Undo::default()
                        };
                        return Err(self.fail_start(&mut info, e, "repository", undo).await);
                    }
                }
            }
        }
        let checkout = match &git_plan {
            None => None,
            Some(plan) => {
                let prefix = self.cfg.git.bot_prefix_for(id.as_str());
                say(&format!("checking out {}", plan.source_display));
                match crate::git::run_checkout(
                    &self.cfg.data_dir,
                    &id,
                    plan,
                    prefix,
                    progress.clone(),
                )
                .await
                {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let undo = Undo {
                            forge: forge.as_ref(),
                            ..Undo::default()
                        };
                        return Err(self.fail_start(&mut info, e, "checkout failed", undo).await);
                    }
                }
            }
        };
        // Its secrets, just in time, before anything is made for it.
        let secrets = match self.acquire_secrets(&info, &profile, req.drill).await {
            Ok(s) => s,
            Err(e) => {
                let undo = Undo {
                    forge: forge.as_ref(),
                    git_dir: true,
                    ..Undo::default()
                };
                return Err(self.fail_start(&mut info, e, "secrets", undo).await);
            }
        };
        if let Some((s, _)) = &secrets {
            self.known.set_owner(
                &format!("session:{id}"),
                s.values
                    .iter()
                    .map(|(n, v)| crate::known_secrets::Known {
                        name: n.clone(),
                        value: v.clone(),
                        until_ms: None,
                    })
                    .collect(),
            );
        }
        let copied = match (&checkout, repo) {
            (None, Some(crate::git::RepoArg::Path(p))) => Some(p),
            _ => None,
        };

        let sreq = SandboxRequest {
            id: id.clone(),
            runtime,
            image: image_name,
            limits,
            uploads: copied.into_iter().chain(upload).collect(),
            checkout: checkout.as_ref().map(|(_, work)| work.clone()),
            trust_ca: secrets.as_ref().map(|(_, ca)| ca.cert_pem().to_string()),
            upload_cap_bytes: self.cfg.upload_cap_bytes,
            no_capture: false,
            // Commands started inside the sandbox that look sensitive wait
            // for the same decision as an API exec (Manager::decide_holds).
            hold_words: template.hold_words.clone(),
        };
        say("starting the sandbox");
        // A claim is used only if it was made exactly as this sandbox
        // would be and is still alive; otherwise it goes, and the id is free
        // to start cold.
        if let Some(c) = claim.take_if(|c| sreq.trust_ca != template.trust_ca || !c.is_live()) {
            c.discard().await;
        }
        let made = match claim {
            Some(c) => {
                let sb = c.take();
                match sb.fill(
                    sreq.checkout.as_deref(),
                    &sreq.uploads,
                    sreq.upload_cap_bytes,
                ) {
                    Ok(()) => Ok(sb),
                    Err(e) => {
                        let report = sb.destroy().await;
                        if !report.clean() {
                            tracing::error!(session = %id, problems = ?report.problems, "cleanup after a failed fill was incomplete");
                        }
                        Err(e)
                    }
                }
            }
            None => Sandbox::create_with_image(&self.paths, sreq, resolved).await,
        };
        // The workspace tree is in /workspace now (or nothing is).
        if let Some((_, work)) = &checkout {
            let _ = std::fs::remove_dir_all(work);
        }
        let sandbox = match made {
            Ok(sb) => Arc::new(sb),
            Err(e) => {
                let undo = Undo {
                    forge: forge.as_ref(),
                    secrets: secrets.as_ref().map(|(s, _)| s.as_ref()),
                    git_dir: true,
                    sandbox: None,
                };
                return Err(self
                    .fail_start(&mut info, e, "sandbox failed to start", undo)
                    .await);
            }
        };
        // Its one way out, before anything of the agent's runs.
        let started =
            crate::secrets::write_files(&sandbox, secrets.as_ref().map(|(s, _)| s.as_ref()))
                .and_then(|()| {
                    self.start_egress(
                        &info,
                        &sandbox,
                        checkout
                            .as_ref()
                            .map(|(g, _)| (g, forge.as_ref().map(|(f, _)| f.clone()))),
                        secrets.clone(),
                        &session_gate,
                    )
                });
        let egress = match started {
            Ok(c) => c,
            Err(e) => {
                let undo = Undo {
                    forge: forge.as_ref(),
                    secrets: secrets.as_ref().map(|(s, _)| s.as_ref()),
                    git_dir: true,
                    sandbox: Some(&sandbox),
                };
                return Err(self
                    .fail_start(&mut info, e, "sandbox failed to start", undo)
                    .await);
            }
        };
        // Its model endpoint: the gateway knows the session from now on,
        // and its processes get the base URLs and a placeholder key.
        let model_env = match &self.models {
            Some(Ok(gw)) => {
                let key = brig_model::placeholder_key();
                gw.open_session_guarded(
                    brig_model::SessionCtx {
                        session: id.to_string(),
                        human: Some(info.human.clone()),
                        task: Some(info.task.to_string()),
                        api_key: key.clone(),
                    },
                    Some(Arc::new(crate::policy::ModelGate(session_gate.clone()))),
                );
                gw.session_env(&key)
            }
            _ => vec![],
        };
        info.layers = sandbox.layers.clone();
        info.image_digest = sandbox.image.digest.clone();
        info.last_activity_at = Some(now_rfc3339());
        self.record_state(&mut info, SessionState::Running, "sandbox started")
            .await?;
        if let Some((g, _)) = &checkout {
            let ev = crate::git::checkout_event(&info, g);
            let rec = serde_json::to_value(g).map_err(|e| Error::internal(e.to_string()))?;
            let sid = id.clone();
            self.db
                .write(move |s| s.set_session_git(&sid, &rec, &ev))
                .await?;
        }
        let live = Arc::new(Live {
            id: id.clone(),
            sandbox: sandbox.clone(),
            env: match &secrets {
                // Placeholders and the trust bundle's variables.
                Some((s, _)) => merge_env(&[
                    env,
                    model_env,
                    s.env.clone(),
                    brig_sandbox::egress::ca_env(),
                ]),
                None => merge_env(&[env, model_env]),
            },
            info: tokio::sync::Mutex::new(info.clone()),
            started: Instant::now(),
            activity: Mutex::new(Activity {
                last_active: Instant::now(),
                last_cpu: None,
            }),
            running: AtomicU32::new(0),
            execs: Mutex::new(HashMap::new()),
            execs_done: Notify::new(),
            stop_watch: Notify::new(),
            closing: AtomicBool::new(false),
            egress: Mutex::new(Some(egress)),
            secrets: secrets.as_ref().map(|(s, _)| s.clone()),
            forge: forge.clone(),
            gate: session_gate.clone(),
        });
        self.live_table().insert(id.clone(), live.clone());
        self.metrics
            .sessions_created
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.spinup_duration.observe(t0.elapsed());
        self.watch_death(live.clone());
        if let Some(events) = sandbox.process_events() {
            self.journal_processes(&info, events);
        }
        if let Some(holds) = sandbox.process_holds() {
            self.decide_holds(&live, holds);
        }
        // A shutdown that raced this create must not leave the sandbox unwatched.
        if self.closing.load(Ordering::SeqCst) {
            if let Some(l) = self.take_live(&id) {
                let _ = self
                    .teardown(&l, DestroyMode::Kill, "brig serve shut down")
                    .await;
            }
            return Err(Error::new(
                ErrorKind::Unavailable,
                "brig serve is shutting down",
            ));
        }
        tracing::info!(session = %id, ms = t0.elapsed().as_millis() as u64, "session running");
        Ok(info)
    }

    /// Serve the session's egress sockets under its profile's policy.
    fn start_egress(
        &self,
        info: &SessionInfo,
        sandbox: &Sandbox,
        git: Option<(&crate::git::SessionGit, Option<Arc<dyn brig_forge::Forge>>)>,
        secrets: Option<(
            Arc<crate::secrets::SessionSecrets>,
            Arc<brig_proxy::CertAuthority>,
        )>,
        gate: &Arc<crate::policy::AgentGate>,
    ) -> Result<crate::egress::SessionChannels> {
        let policy = match self.policies.get(&info.profile) {
            Some(Ok(p)) => p.clone(),
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorKind::GuardUnavailable,
                    format!(
                        "profile {:?}: its egress policy does not compile: {e}",
                        info.profile
                    ),
                )
                .hint("fix the profile's egress section in brig.toml and restart brig serve"))
            }
            None => {
                return Err(Error::internal(format!(
                    "no egress policy for profile {:?}",
                    info.profile
                )))
            }
        };
        let dir = brig_sandbox::egress::host_dir(sandbox.session_dir());
        let mut local = match git {
            Some((g, forge)) => vec![self.git_gateway(info, g, forge, gate)?],
            None => vec![],
        };
        match &self.models {
            Some(Ok(gw)) => local.push(Arc::new(gw.service())),
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorKind::GuardUnavailable,
                    format!("the model gateway is not usable: {e}"),
                )
                .hint("fix [models] in brig.toml (docs/MODELS.md) and restart brig serve"))
            }
            None => {}
        }
        crate::egress::start(
            &self.db,
            info,
            policy,
            &self.cfg.resolver,
            &self.cfg.egress_limits,
            crate::egress::OwnServices {
                // No service yet: no URL was ever issued, so the proxy answers 404.
                artifacts: self.artifacts.get().cloned(),
                local,
                // Every injection is decided by Cedar's secret.use first.
                secrets: secrets.map(|(s, ca)| {
                    let gated = crate::policy::SecretGate::new(s, gate.clone());
                    (Arc::new(gated) as Arc<dyn brig_proxy::SecretInjector>, ca)
                }),
                upstream_ca_file: self.cfg.secrets_upstream_ca.clone(),
                guard: Some(Arc::new(crate::policy::ConnectGate(gate.clone()))),
            },
            &dir,
        )
    }

    /// The git gateway of a session with a checkout, as a local service of
    /// its egress channel.
    fn git_gateway(
        &self,
        info: &SessionInfo,
        g: &crate::git::SessionGit,
        forge: Option<Arc<dyn brig_forge::Forge>>,
        gate: &Arc<crate::policy::AgentGate>,
    ) -> Result<Arc<dyn brig_proxy::local::LocalService>> {
        let signer = self.git_signer()?;
        let forge = match forge {
            Some(f) => f,
            None => self.session_forge(g)?,
        };
        let mut services = crate::git_gateway::Services::new(
            self.db.clone(),
            info,
            self.scanner()?,
            forge,
            signer,
        );
        services.gate = Some(gate.clone());
        services.repo_name = g.name.clone();
        let repo = brig_git::SessionRepo {
            dir: crate::git::gateway_dir(&self.cfg.data_dir, &info.id),
            name: g.name.clone(),
            session: info.id.to_string(),
            identity: brig_git::Identity {
                name: g.author_name.clone(),
                email: g.author_email.clone(),
            },
            bot_prefix: g.bot_prefix.clone(),
            protected: self.cfg.git.protected.clone(),
            base_branch: g.pinned.base_branch.clone(),
            limits: brig_git::Limits {
                max_pack_bytes: self.cfg.git.max_pack_bytes,
                ..brig_git::Limits::default()
            },
        };
        Ok(Arc::new(crate::git_gateway::GatewayService {
            host: self.cfg.git.host.clone(),
            session: brig_git::GitSession {
                repo: Arc::new(repo),
                services: Arc::new(services),
            },
        }))
    }

    /// Journal `policy.change` when the policies brig starts with differ
    /// from the ones it ran with last (their digest is kept under the data
    /// dir): every change of policy is in the journal, whoever made it.
    pub async fn journal_policy_change(&self) -> Result<()> {
        let Ok(p) = &self.policy else { return Ok(()) };
        let path = self.cfg.data_dir.join("policy.digest");
        let before = std::fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim().to_string());
        let now = p.engine.digest().to_string();
        if before.as_deref() == Some(now.as_str()) {
            return Ok(());
        }
        let mut profiles = serde_json::Map::new();
        for name in p.engine.profiles() {
            let ids: Vec<String> = p
                .engine
                .policies(&format!("profile:{name}"))
                .or_else(|| p.engine.policies(&name))
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.id)
                .collect();
            profiles.insert(name, ids.into());
        }
        let ev = Event::new("policy.change", Outcome::Info)
            .rule("policy.load")
            .details(serde_json::json!({
                "from": before, "to": now, "config": self.cfg.source, "profiles": profiles,
            }));
        self.db
            .write(move |s| s.append_event(&ev).map(|_| ()))
            .await?;
        std::fs::write(&path, format!("{now}\n"))
            .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))
    }

    /// Cedar's `pr.open` for a live session's pull request.
    pub async fn authorize_pr_open(
        &self,
        id: &SessionId,
        repo: &str,
        head: &str,
        base: &str,
        bot_branch: bool,
        gate_passed: bool,
    ) -> Result<()> {
        let live = self.live_table().get(id).cloned();
        let Some(live) = live else {
            let info = self.get(id).await?;
            return Err(not_live(&info));
        };
        let r = brig_policy::Request::pr_open(
            live.gate.session.agent(),
            repo,
            head,
            base,
            bot_branch,
            gate_passed,
        );
        live.gate
            .decide(r, &format!("{repo}:{head}->{base}"), false, &|_| {})
            .await
            .map(|_| ())
    }

    /// Whether the session is live (not ended, not being destroyed).
    pub fn is_live(&self, id: &SessionId) -> bool {
        self.live_table()
            .get(id)
            .is_some_and(|l| !l.closing.load(Ordering::SeqCst))
    }

    /// The model gateway, when `[models]` is configured and usable.
    pub fn model_gateway(&self) -> Option<&Arc<brig_model::Gateway>> {
        self.models.as_ref().and_then(|m| m.as_ref().ok())
    }

    pub fn known(&self) -> &Arc<crate::known_secrets::KnownSecrets> {
        &self.known
    }

    /// The forge of `[repos.NAME]` (built at start; fails closed with why).
    pub fn forge(&self, name: &str) -> Result<Arc<dyn brig_forge::Forge>> {
        match self.forges.get(name) {
            Some(Ok(f)) => Ok(f.clone()),
            Some(Err(e)) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("[repos.{name}] is not usable: {e}"),
            )
            .hint("fix it in brig.toml (docs/FORGES.md) and restart brig serve")),
            None => Err(Error::not_found(format!("no [repos.{name}] in brig.toml"))),
        }
    }

    /// The forge of a live session (its own, when it has one), else by `g`.
    pub fn live_session_forge(
        &self,
        id: &SessionId,
        g: &crate::git::SessionGit,
    ) -> Result<Arc<dyn brig_forge::Forge>> {
        let own = self
            .live_table()
            .get(id)
            .and_then(|l| l.forge.as_ref().map(|(f, _)| f.clone()));
        match own {
            Some(f) => Ok(f),
            None => self.session_forge(g),
        }
    }

    /// A `[repos.NAME]`'s forge for one session: with tokens minted for it
    /// when `[repo_tokens]` names a minter, else the deployment's.
    fn forge_for_session(&self, name: &str, info: &SessionInfo) -> Result<SessionForge> {
        let Some(minter_name) = self.cfg.repo_tokens.get(name) else {
            return Ok((self.forge(name)?, None));
        };
        let secrets = match &self.secrets {
            Some(Ok(s)) => s.clone(),
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorKind::GuardUnavailable,
                    format!("[secrets] is not usable: {e}"),
                ))
            }
            None => {
                return Err(Error::internal(
                    "[repo_tokens] without [secrets] (checked at load)",
                ))
            }
        };
        let minter = secrets.minters.get(minter_name).cloned().ok_or_else(|| {
            Error::internal(format!("no minter {minter_name:?} (checked at load)"))
        })?;
        let repository = match self.cfg.repos.get(name) {
            Some(brig_forge::ForgeConfig::Github(c)) => format!("{}/{}", c.owner, c.repo),
            _ => {
                return Err(Error::internal(format!(
                    "[repo_tokens] {name}: not a GitHub repo (checked at load)"
                )))
            }
        };
        let tokens = Arc::new(crate::forge_tokens::SessionForgeTokens::new(
            minter,
            repository,
            self.db.clone(),
            info.clone(),
            self.known.clone(),
        ));
        let forge = self.cfg.repos[name]
            .build_with_token(tokens.clone())
            .map_err(|e| Error::from(e).context(format!("[repos.{name}]")))?;
        Ok((forge, Some(tokens)))
    }

    async fn revoke_forge_tokens(&self, forge: Option<&SessionForge>, reason: &str) {
        if let Some((_, Some(t))) = forge {
            t.revoke_all(reason).await;
        }
    }

    /// Where a session's accepted pushes and pull requests go.
    pub fn session_forge(&self, g: &crate::git::SessionGit) -> Result<Arc<dyn brig_forge::Forge>> {
        match &g.upstream {
            Some(name) => self.forge(name),
            None => crate::git::local_forge(g),
        }
    }

    /// The pre-push scanner (its rules compiled at start; fails closed).
    fn scanner(&self) -> Result<Arc<brig_scan::Scanner>> {
        self.scanner.clone().map_err(|e| {
            Error::new(
                ErrorKind::GuardUnavailable,
                format!("the pre-push scanner is not usable: {e}"),
            )
            .hint("fix [scan] in brig.toml (docs/SCANNER.md) and restart brig serve")
        })
    }

    /// Fetch or mint what `profile` grants, with brig's CA to intercept
    /// their hosts; `None` when it grants nothing.
    async fn acquire_secrets(
        &self,
        info: &SessionInfo,
        profile: &crate::config::Profile,
        drill: bool,
    ) -> Result<
        Option<(
            Arc<crate::secrets::SessionSecrets>,
            Arc<brig_proxy::CertAuthority>,
        )>,
    > {
        if drill {
            // The drill's own credential, through the same grant, injection
            // and revocation path as every other (drill::secrets).
            let (secrets, grants) = drill::secrets(self.cfg.secrets.ttl.max);
            let s = crate::secrets::acquire(
                &self.db,
                &secrets,
                &self.cfg.secrets.ttl,
                info,
                &grants,
                &self.known,
            )
            .await?;
            return Ok(Some((s, self.egress_ca()?)));
        }
        if profile.secrets.is_empty() {
            return Ok(None);
        }
        let secrets = match &self.secrets {
            Some(Ok(s)) => s.clone(),
            Some(Err(e)) => {
                return Err(Error::new(
                    ErrorKind::GuardUnavailable,
                    format!("[secrets] is not usable: {e}"),
                )
                .hint("fix [secrets] in brig.toml (docs/SECRETS.md) and restart brig serve"))
            }
            None => {
                return Err(Error::new(
                    ErrorKind::GuardUnavailable,
                    format!(
                    "profile {:?} grants secrets but brig.toml has no [secrets] sources or minters",
                    info.profile
                ),
                ))
            }
        };
        let ca = self.egress_ca()?;
        let s = crate::secrets::acquire(
            &self.db,
            &secrets,
            &self.cfg.secrets.ttl,
            info,
            &profile.secrets,
            &self.known,
        )
        .await?;
        Ok(Some((s, ca)))
    }

    /// A create that failed after the session was recorded: undo what was
    /// made for it (sandbox, secrets, forge tokens, git directory), count
    /// it, record it failed with `what: <error>`, and hand the error back.
    async fn fail_start(
        &self,
        info: &mut SessionInfo,
        e: Error,
        what: &str,
        undo: Undo<'_>,
    ) -> Error {
        let id = info.id.clone();
        tracing::warn!(session = %id, error = %e, "session failed to start");
        if let Some(Ok(gw)) = &self.models {
            gw.close_session(id.as_str());
        }
        if let Some(sb) = undo.sandbox {
            // Its git directory goes with it.
            for p in self.destroy_sandbox(&id, sb).await.problems {
                tracing::warn!(session = %id, problem = %p, "destroy problem");
            }
        } else if undo.git_dir {
            for p in crate::git::remove(&self.cfg.data_dir, &id) {
                tracing::warn!(session = %id, problem = %p, "cleanup problem");
            }
        }
        if let Some(s) = undo.secrets {
            self.release_secrets(info, s, "session start failed").await;
        }
        self.revoke_forge_tokens(undo.forge, "session start failed")
            .await;
        self.metrics.sessions_failed.fetch_add(1, Ordering::Relaxed);
        let reason = format!("{what}: {}", e.message);
        if let Err(re) = self.record_state(info, SessionState::Failed, &reason).await {
            tracing::error!(session = %id, error = %re, "could not record the failure");
        }
        e
    }

    /// Revoke one credential of a live session now (`brig creds revoke`):
    /// from the next request on, its placeholder is refused everywhere.
    pub async fn revoke_credential(
        &self,
        id: &SessionId,
        name: &str,
    ) -> Result<crate::secrets::CredentialInfo> {
        let live = self.live_table().get(id).cloned();
        let Some(live) = live else {
            let info = self.get(id).await?;
            return Err(not_live(&info));
        };
        let Some(s) = &live.secrets else {
            return Err(Error::not_found(format!(
                "session {id} holds no credentials"
            )));
        };
        let info = live.info.lock().await.clone();
        s.revoke_one(&self.db, &info, name).await
    }

    /// Revoke what a session holds and stop knowing its values after the
    /// redactor's grace.
    async fn release_secrets(
        &self,
        info: &SessionInfo,
        s: &crate::secrets::SessionSecrets,
        reason: &str,
    ) {
        s.revoke(&self.db, info, reason).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.known.set_owner(
            &format!("session:{}", info.id),
            s.values
                .iter()
                .map(|(n, v)| crate::known_secrets::Known {
                    name: n.clone(),
                    value: v.clone(),
                    until_ms: Some(now),
                })
                .collect(),
        );
    }

    /// brig's egress CA: `<data_dir>/keys/egress-ca/` (key 0600; never in a
    /// sandbox), made on first use.
    pub fn egress_ca(&self) -> Result<Arc<brig_proxy::CertAuthority>> {
        if let Some(c) = self.egress_ca.get() {
            return Ok(c.clone());
        }
        let dir = self.cfg.data_dir.join("keys").join("egress-ca");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    Error::guard("secrets", format!("cannot create {}: {e}", dir.display()))
                })?;
        }
        let ca = brig_proxy::CertAuthority::load_or_generate(&dir, "brig egress CA")
            .map_err(|e| Error::guard("secrets", format!("egress CA in {}: {e}", dir.display())))?;
        Ok(self.egress_ca.get_or_init(|| Arc::new(ca)).clone())
    }

    /// brig's deployment key (made on first use, 0600 under the data dir).
    pub fn git_signer(&self) -> Result<Arc<brig_git::SshSigner>> {
        if let Some(s) = self.git_signer.get() {
            return Ok(s.clone());
        }
        let path = self.cfg.data_dir.join(crate::git_gateway::SIGNING_KEY_FILE);
        let s = brig_git::SshSigner::load_or_create(&path).map_err(|e| {
            Error::new(
                ErrorKind::GuardUnavailable,
                format!("git signing key {}: {e}", path.display()),
            )
            .hint("brig signs every accepted commit; fix the key file (0600, owned by brig) or remove it to make a new one")
        })?;
        Ok(self.git_signer.get_or_init(|| Arc::new(s)).clone())
    }

    /// Journal the sandbox's process events until its channel ends, in
    /// batches. The queue in front of this is bounded and never blocks init
    /// (see [`brig_sandbox::channel::PROCESS_QUEUE`]).
    fn journal_processes(&self, info: &SessionInfo, mut events: ProcessEvents) {
        let db = self.db.clone();
        let info = info.clone();
        tokio::spawn(async move {
            while let Some(first) = events.recv().await {
                let batch = gather_batch(process_event(&info, first), || {
                    events.try_recv().map(|pe| process_event(&info, pe))
                })
                .await;
                if let Err(e) = db
                    .write(move |s| s.append_events_owned(batch).map(|_| ()))
                    .await
                {
                    tracing::error!(session = %info.id, error = %e, "could not journal process events");
                }
            }
        });
    }

    /// Decide each exec init holds (its command line held a sensitive
    /// pattern's word) as an API exec is decided: Cedar's `exec` with the
    /// command's labels, waiting for an approval when policy asks for one
    /// (the process waits in execve, told on its stderr what it waits for).
    /// Allowed: it goes on; refused: execve fails with EPERM and the reason
    /// is on its stderr. Every decision is journaled by the gate.
    fn decide_holds(
        &self,
        live: &Arc<Live>,
        mut holds: mpsc::UnboundedReceiver<brig_core::wire::ProcessHold>,
    ) {
        let (live, sensitivity) = (live.clone(), self.policy().cloned());
        // A shell tries each PATH directory in turn: one process, one
        // command line, decided once (not once per candidate).
        type Recent =
            std::collections::HashMap<(i32, Vec<String>), (Instant, bool, Option<String>)>;
        let recent: Arc<std::sync::Mutex<Recent>> = Default::default();
        tokio::spawn(async move {
            while let Some(h) = holds.recv().await {
                let live = live.clone();
                let sensitivity = sensitivity.clone();
                let recent = recent.clone();
                tokio::spawn(async move {
                    use brig_core::wire::{HoldAnswer, HoldVerdict};
                    let (id, argv) = (h.id, h.exec.argv);
                    let key = (h.exec.pid, argv.clone());
                    let seen = {
                        let mut r = recent.lock().unwrap_or_else(|p| p.into_inner());
                        r.retain(|_, (at, _, _)| at.elapsed() < Duration::from_secs(2));
                        r.get(&key).cloned()
                    };
                    if let Some((_, allow, message)) = seen {
                        let verdict = if allow {
                            HoldVerdict::Allow
                        } else {
                            HoldVerdict::Deny
                        };
                        let _ = live
                            .sandbox
                            .answer_hold(HoldAnswer {
                                id,
                                verdict,
                                message,
                            })
                            .await;
                        return;
                    }
                    let labels = match &sensitivity {
                        Ok(p) => p.sensitivity.label_command(&argv),
                        // No policy, no decision: refused (fail closed).
                        Err(_) => vec!["unknown".to_string()],
                    };
                    // A word matched but no pattern did: not sensitive.
                    let verdict = if labels.is_empty() {
                        Ok(())
                    } else {
                        let r =
                            brig_policy::Request::exec(live.gate.session.agent(), &argv, &labels);
                        let sb = live.sandbox.clone();
                        let say = move |m: String| {
                            let sb = sb.clone();
                            tokio::spawn(async move {
                                let _ = sb
                                    .answer_hold(HoldAnswer {
                                        id,
                                        verdict: HoldVerdict::Wait,
                                        message: Some(m),
                                    })
                                    .await;
                            });
                        };
                        live.gate
                            .decide(r, &argv.join(" "), true, &say)
                            .await
                            .map(|_| ())
                    };
                    let answer = match verdict {
                        Ok(()) => HoldAnswer {
                            id,
                            verdict: HoldVerdict::Allow,
                            message: None,
                        },
                        Err(e) => HoldAnswer {
                            id,
                            verdict: HoldVerdict::Deny,
                            message: Some(match &e.hint {
                                Some(h) => format!("refused: {} ({h})", e.message),
                                None => format!("refused: {}", e.message),
                            }),
                        },
                    };
                    recent.lock().unwrap_or_else(|p| p.into_inner()).insert(
                        key,
                        (
                            Instant::now(),
                            answer.verdict == HoldVerdict::Allow,
                            answer.message.clone(),
                        ),
                    );
                    if let Err(e) = live.sandbox.answer_hold(answer).await {
                        tracing::warn!(session = %live.id, error = %e, "could not answer a held exec");
                    }
                });
            }
        });
    }

    fn watch_death(self: &Arc<Self>, live: Arc<Live>) {
        let me = self.clone();
        tokio::spawn(async move {
            let sb = live.sandbox.clone();
            tokio::select! {
                _ = sb.died() => {}
                _ = live.stop_watch.notified() => return,
            }
            if live.closing.load(Ordering::SeqCst) {
                return;
            }
            let Some(l) = me.take_live(&live.id) else {
                return;
            };
            tracing::warn!(session = %l.id, "sandbox died on its own");
            me.metrics.reaper_action(ReaperAction::Died);
            let report = me.destroy_sandbox(&l.id, &l.sandbox).await;
            if let Some(s) = &l.secrets {
                let snapshot = l.info.lock().await.clone();
                me.release_secrets(&snapshot, s, "sandbox died").await;
            }
            me.revoke_forge_tokens(l.forge.as_ref(), "sandbox died")
                .await;
            let mut info = l.info.lock().await;
            let reason = "sandbox died: its init exited";
            me.metrics.sessions_failed.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = me
                .record_state(&mut info, SessionState::Failed, reason)
                .await
            {
                tracing::error!(session = %l.id, error = %e, "could not record the failure");
            }
            let ev = session_event(&info, "session.destroy", Outcome::Failure)
                .details(serde_json::json!({"reason": reason, "report": report}));
            drop(info);
            me.journal(ev).await;
        });
    }

    // ---- exec ----

    /// Start a command; its output, then how it ended, arrive on the receiver.
    /// The command runs on if the receiver is dropped only until brig notices:
    /// then its process group is killed (a client that went away).
    pub async fn exec(
        self: &Arc<Self>,
        id: &SessionId,
        req: ExecRequest,
    ) -> Result<(ExecCtl, mpsc::Receiver<ExecOut>)> {
        req.validate()?;
        if let Some((rows, cols)) = req.tty {
            if rows == 0 || cols == 0 {
                return Err(Error::invalid("tty size must be at least 1x1"));
            }
        }
        let live = self.live_table().get(id).cloned();
        let Some(live) = live else {
            let info = self.get(id).await?;
            return Err(not_live(&info));
        };
        if live.closing.load(Ordering::SeqCst) {
            return Err(Error::conflict(format!("session {id} is being destroyed")));
        }
        // Policy decides, before anything runs (approval may be waited for).
        let labels = self.policy()?.sensitivity.label_command(&req.argv);
        let preq = brig_policy::Request::exec(live.gate.session.agent(), &req.argv, &labels);
        let msgs = std::sync::Mutex::new(Vec::new());
        let say = |m: String| msgs.lock().unwrap_or_else(|p| p.into_inner()).push(m);
        self.decide_agent(&live, preq, &req.argv.join(" "), &say)
            .await?;
        let cwd = req.cwd.clone().unwrap_or_else(|| "/workspace".into());
        let mut env = live.env.clone();
        if req.tty.is_some() {
            env.push(("TERM".into(), "xterm-256color".into()));
        }
        env.extend(req.env.iter().cloned());
        let spawn = wire::Spawn {
            argv: req.argv.clone(),
            env: merge_env(&[env]),
            cwd: cwd.clone(),
            tty: req.tty,
            // Decided above with its labels: init holds none of it again.
            decided: !labels.is_empty(),
        };
        let exec_id = ExecId::generate();
        let started_at = now_rfc3339();
        // Count it before spawning so the reaper never sees a gap.
        live.running.fetch_add(1, Ordering::SeqCst);
        live.touch();
        let mut handle = match live.sandbox.exec(spawn).await {
            Ok(h) => h,
            Err(e) => {
                live.running.fetch_sub(1, Ordering::SeqCst);
                live.execs_done.notify_waiters();
                return Err(e.context(format!("exec in session {id}")));
            }
        };
        self.metrics.execs_running.fetch_add(1, Ordering::Relaxed);
        let events = std::mem::replace(&mut handle.events, mpsc::channel(1).1);
        let handle = Arc::new(handle);
        live.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(exec_id.0.clone(), handle.clone());

        {
            let mut info = live.info.lock().await;
            info.exec_count += 1;
            info.last_activity_at = Some(started_at.clone());
            let was_idle = info.state == SessionState::Idle;
            let rec = ExecRecord {
                session: id.clone(),
                exec_id: exec_id.0.clone(),
                argv: req.argv.clone(),
                cwd: cwd.clone(),
                started_at: started_at.clone(),
                ended_at: None,
                status: None,
                duration_ms: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
                error: None,
            };
            let ev = session_event(&info, "exec.start", Outcome::Info).details(serde_json::json!({
                "exec_id": exec_id.0, "argv": req.argv, "cwd": cwd, "tty": req.tty.is_some(),
                "timeout_ms": req.timeout_ms,
            }));
            if was_idle {
                self.record_state(&mut info, SessionState::Running, "exec started")
                    .await?;
            }
            let snapshot = info.clone();
            self.db
                .write(move |s| s.record_exec_start(&snapshot, &rec, &ev))
                .await?;
        }

        let (tx, rx) = mpsc::channel(64);
        // What the command waited for (an approval) comes first on stderr.
        for m in msgs.into_inner().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.try_send(ExecOut::Stderr(format!("{m}\n").into_bytes()));
        }
        let ctl = ExecCtl {
            exec_id: exec_id.clone(),
            handle: handle.clone(),
        };
        let me = self.clone();
        let timeout = req.timeout_ms.map(Duration::from_millis);
        tokio::spawn(async move {
            me.drive_exec(live, exec_id, handle, events, timeout, tx)
                .await;
        });
        Ok((ctl, rx))
    }

    async fn drive_exec(
        self: Arc<Self>,
        live: Arc<Live>,
        exec_id: ExecId,
        handle: Arc<ExecHandle>,
        mut events: mpsc::Receiver<ExecEvent>,
        timeout: Option<Duration>,
        tx: mpsc::Sender<ExecOut>,
    ) {
        let t0 = Instant::now();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let (mut out_bytes, mut err_bytes) = (0u64, 0u64);
        let mut timed_out = false;
        let mut client_gone = false;
        let mut status: Option<ExitStatus> = None;
        let mut error: Option<String> = None;
        loop {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() && !timed_out => {
                    timed_out = true;
                    // The signal goes to the command's process group.
                    if let Err(e) = handle.signal(libc::SIGKILL).await {
                        tracing::warn!(session = %live.id, exec = %exec_id, error = %e, "could not kill a command past its timeout");
                    }
                    continue;
                }
            };
            let out = match ev {
                Some(ExecEvent::Started { pid }) => ExecOut::Started { pid },
                Some(ExecEvent::Stdout(b)) => {
                    out_bytes += b.len() as u64;
                    ExecOut::Stdout(b)
                }
                Some(ExecEvent::Stderr(b)) => {
                    err_bytes += b.len() as u64;
                    ExecOut::Stderr(b)
                }
                Some(ExecEvent::Exited(mut st)) => {
                    st.timed_out |= timed_out;
                    status = Some(st);
                    break;
                }
                Some(ExecEvent::Failed(e)) => {
                    error = Some(e);
                    break;
                }
                None => {
                    error = Some("the sandbox closed the command's channel".into());
                    break;
                }
            };
            if !client_gone && tx.send(out).await.is_err() {
                client_gone = true;
                tracing::info!(session = %live.id, exec = %exec_id, "client went away; killing the command");
                let _ = handle.signal(libc::SIGKILL).await;
            }
        }
        let duration = t0.elapsed();
        let _ = tx
            .send(match (&status, &error) {
                (Some(st), _) => ExecOut::Exited(*st),
                (None, e) => ExecOut::SpawnFailed(e.clone().unwrap_or_default()),
            })
            .await;

        let outcome = match (&status, timed_out) {
            (_, true) => ExecOutcome::TimedOut,
            (Some(st), _) if st.success() => ExecOutcome::Success,
            (Some(st), _) if st.signal.is_some() => ExecOutcome::Signaled,
            (Some(_), _) => ExecOutcome::Failure,
            (None, _) => ExecOutcome::SpawnFailed,
        };
        self.metrics.exec_done(outcome, duration);
        self.metrics.execs_running.fetch_sub(1, Ordering::Relaxed);
        live.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&exec_id.0);
        live.touch();

        let ended_at = now_rfc3339();
        let end = ExecEnd {
            ended_at: ended_at.clone(),
            status,
            duration_ms: duration.as_millis() as u64,
            stdout_bytes: out_bytes,
            stderr_bytes: err_bytes,
            error: error.clone(),
        };
        {
            let mut info = live.info.lock().await;
            if info.state.is_live() {
                info.last_activity_at = Some(ended_at);
            }
            let ev = session_event(
                &info,
                "exec.exit",
                if outcome == ExecOutcome::Success {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
            )
            .details(serde_json::json!({
                "exec_id": exec_id.0,
                "code": status.and_then(|s| s.code),
                "signal": status.and_then(|s| s.signal),
                "timed_out": timed_out,
                "duration_ms": end.duration_ms,
                "stdout_bytes": out_bytes,
                "stderr_bytes": err_bytes,
                "error": error,
            }));
            let ev = if timed_out {
                ev.rule("exec.timeout_ms")
            } else {
                ev
            };
            let snapshot = info.clone();
            let r = self
                .db
                .write(move |s| s.record_exec_end(&snapshot, &exec_id.0, &end, &ev))
                .await;
            if let Err(e) = r {
                tracing::error!(session = %live.id, error = %e, "could not record an exec's end");
            }
        }
        live.running.fetch_sub(1, Ordering::SeqCst);
        live.execs_done.notify_waiters();
    }

    /// Run a command to completion, keeping up to 1 MiB of each stream.
    pub async fn exec_buffered(
        self: &Arc<Self>,
        id: &SessionId,
        req: ExecRequest,
    ) -> Result<brig_core::exec::ExecResult> {
        let stdin = req.stdin.clone();
        let t0 = Instant::now();
        let (ctl, mut rx) = self.exec(id, req).await?;
        if let Some(input) = stdin {
            if let Err(e) = ctl.stdin(input.into_bytes()).await {
                tracing::debug!(error = %e, "stdin not delivered (command may have exited)");
            }
        }
        let _ = ctl.close_stdin().await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (mut out_n, mut err_n) = (0u64, 0u64);
        let mut truncated = false;
        let mut keep = |buf: &mut Vec<u8>, n: &mut u64, b: Vec<u8>| {
            *n += b.len() as u64;
            let room = BUFFERED_OUTPUT_CAP.saturating_sub(buf.len());
            if b.len() > room {
                truncated = true;
            }
            buf.extend_from_slice(&b[..b.len().min(room)]);
        };
        let status = loop {
            match rx.recv().await {
                Some(ExecOut::Started { .. }) => {}
                Some(ExecOut::Stdout(b)) => keep(&mut out, &mut out_n, b),
                Some(ExecOut::Stderr(b)) => keep(&mut err, &mut err_n, b),
                Some(ExecOut::Exited(st)) => break st,
                Some(ExecOut::SpawnFailed(e)) => {
                    return Err(Error::runtime(format!("command could not run: {e}")).hint(
                        "check that the program exists in the image and the session is alive",
                    ))
                }
                None => return Err(Error::internal("exec ended without a status")),
            }
        };
        Ok(brig_core::exec::ExecResult {
            exec_id: ctl.exec_id.0.clone(),
            status,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            stdout_bytes: out_n,
            stderr_bytes: err_n,
            truncated,
            duration_ms: t0.elapsed().as_millis() as u64,
        })
    }

    // ---- destroy / kill ----

    fn take_live(&self, id: &SessionId) -> Option<Arc<Live>> {
        let l = self.live_table().remove(id)?;
        l.closing.store(true, Ordering::SeqCst);
        l.stop_watch.notify_one();
        Some(l)
    }

    /// End a session: graceful destroy or immediate kill.
    pub async fn destroy(
        self: &Arc<Self>,
        id: &SessionId,
        mode: DestroyMode,
        reason: &str,
    ) -> Result<SessionSummary> {
        let t0 = Instant::now();
        let Some(live) = self.take_live(id) else {
            let info = self.get(id).await?;
            return Err(Error::conflict(format!(
                "session {id} is already {}{}",
                info.state.as_str(),
                info.end_reason
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ))
            .hint("see `brig session show` for how it ended"));
        };
        if mode == DestroyMode::Kill {
            live.sandbox.kill_now();
        }
        let me = self.clone();
        let reason = reason.to_string();
        let summary = tokio::spawn(async move { me.finish_destroy(live, mode, &reason).await })
            .await
            .map_err(|e| Error::internal(format!("destroy task failed: {e}")))??;
        if mode == DestroyMode::Kill {
            self.metrics.kill_switch_duration.observe(t0.elapsed());
        }
        Ok(summary)
    }

    async fn finish_destroy(
        &self,
        live: Arc<Live>,
        mode: DestroyMode,
        reason: &str,
    ) -> Result<SessionSummary> {
        let (info, shredded) = self.teardown(&live, mode, reason).await?;
        let id = live.id.clone();
        let (execs, failed, blocked) = self
            .db
            .run(move |s| {
                let (n, f) = s.exec_counts(&id)?;
                let blocked = s
                    .events(Some(&id))?
                    .into_iter()
                    .filter(|e| e.action == "sandbox.blocked")
                    .map(|e| match e.details.get("what").and_then(|w| w.as_str()) {
                        Some(w) => w.to_string(),
                        None => e.details.to_string(),
                    })
                    .collect::<Vec<_>>();
                Ok((n, f, blocked))
            })
            .await?;
        Ok(SessionSummary {
            session: info,
            execs,
            failed_execs: failed,
            duration_ms: live.started.elapsed().as_millis() as u64,
            blocked,
            workspace_shredded: shredded,
        })
    }

    /// Stop, shred and record a session taken out of the live table.
    async fn teardown(
        &self,
        live: &Live,
        mode: DestroyMode,
        reason: &str,
    ) -> Result<(SessionInfo, bool)> {
        if mode == DestroyMode::Graceful {
            let handles: Vec<_> = live
                .execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for h in &handles {
                let _ = h.signal(libc::SIGTERM).await;
            }
            let deadline = tokio::time::Instant::now() + DESTROY_GRACE;
            while live.running.load(Ordering::SeqCst) > 0 {
                let wait = live.execs_done.notified();
                if live.running.load(Ordering::SeqCst) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, wait).await.is_err() {
                    break;
                }
            }
        }
        // No new connection from here on; open ones are dropped.
        drop(live.egress.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(Ok(gw)) = &self.models {
            gw.close_session(live.id.as_str());
        }
        if let Ok(a) = &self.approvals {
            let snapshot = live.info.lock().await.clone();
            a.cancel_session(&snapshot).await;
        }
        // Credentials are revoked while the sandbox is shredded, not after:
        // a kill must not leave them valid for as long as a shred takes.
        let revoke = async {
            if let Some(s) = &live.secrets {
                let snapshot = live.info.lock().await.clone();
                self.release_secrets(&snapshot, s, reason).await;
            }
            self.revoke_forge_tokens(live.forge.as_ref(), reason).await;
        };
        let (report, ()) = tokio::join!(self.destroy_sandbox(&live.id, &live.sandbox), revoke);
        for p in &report.problems {
            tracing::warn!(session = %live.id, problem = %p, "destroy problem");
        }
        let mut info = live.info.lock().await;
        self.record_state(&mut info, SessionState::Destroyed, reason)
            .await?;
        self.metrics
            .sessions_destroyed
            .fetch_add(1, Ordering::Relaxed);
        let ev = session_event(
            &info,
            "session.destroy",
            if report.problems.is_empty() { Outcome::Success } else { Outcome::Failure },
        )
        .details(serde_json::json!({"reason": reason, "mode": format!("{mode:?}").to_lowercase(), "report": report}));
        let info = {
            let snapshot = info.clone();
            drop(info);
            snapshot
        };
        self.journal(ev).await;
        tracing::info!(session = %live.id, reason, shredded = report.workspace_shredded, "session destroyed");
        Ok((info, report.workspace_shredded))
    }

    /// The kill switch for every live session.
    pub async fn kill_all(self: &Arc<Self>, reason: &str) -> Vec<SessionId> {
        // The pool too: after the kill switch no sandbox runs at all.
        let (killed, ()) =
            tokio::join!(self.kill_where(&KillTarget::All, reason), self.pool.drain());
        killed
    }

    /// The kill switch: SIGKILL the chosen live sandboxes first, then tear
    /// them down in parallel (connections dropped, credentials revoked,
    /// sandboxes shredded). Returns the sessions killed.
    pub async fn kill_where(self: &Arc<Self>, target: &KillTarget, reason: &str) -> Vec<SessionId> {
        let t0 = Instant::now();
        let candidates: Vec<Arc<Live>> = self.live_table().values().cloned().collect();
        let mut chosen = Vec::new();
        for l in candidates {
            let hit = target.matches(&*l.info.lock().await);
            if hit {
                chosen.push(l.id.clone());
            }
        }
        let lives: Vec<Arc<Live>> = chosen.iter().filter_map(|id| self.take_live(id)).collect();
        for l in &lives {
            l.sandbox.kill_now();
        }
        let kill_ms = t0.elapsed().as_millis() as u64;
        let mut tasks = Vec::with_capacity(lives.len());
        for l in lives {
            let me = self.clone();
            let reason = reason.to_string();
            let id = l.id.clone();
            tasks.push((
                id,
                tokio::spawn(async move { me.teardown(&l, DestroyMode::Kill, &reason).await }),
            ));
        }
        let mut killed = Vec::with_capacity(tasks.len());
        for (id, t) in tasks {
            match t.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(session = %id, error = %e, "kill-all: recording failed")
                }
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "kill-all: destroy task failed")
                }
            }
            killed.push(id);
        }
        self.metrics.kill_switch_duration.observe(t0.elapsed());
        tracing::warn!(
            sessions = killed.len(),
            kill_ms,
            ms = t0.elapsed().as_millis() as u64,
            reason,
            "kill switch"
        );
        killed
    }

    /// Refuse new sessions and kill every live one (server shutdown).
    pub async fn shutdown(self: &Arc<Self>) {
        self.closing.store(true, Ordering::SeqCst);
        self.pool.close().await;
        self.kill_all("brig serve shut down").await;
    }

    // ---- reaper ----

    /// One pass of the reaper: timebox, idle timeout, idle marking.
    pub async fn reap_once(self: &Arc<Self>) {
        if let Ok(a) = &self.approvals {
            a.expire_due().await;
        }
        self.pool.expire();
        let lives: Vec<Arc<Live>> = self.live_table().values().cloned().collect();
        let mark_after = self.cfg.reaper.mark_idle_after;
        for live in lives {
            if live.closing.load(Ordering::SeqCst) {
                continue;
            }
            let (limits, state) = {
                let info = live.info.lock().await;
                (info.limits.clone(), info.state)
            };
            if live.started.elapsed() >= Duration::from_secs(limits.timebox_secs) {
                self.reap(&live.id, ReaperAction::Timebox, "timebox");
                continue;
            }
            let cpu = live.sandbox.cpu_usage_ns();
            let idle_for = {
                let mut a = live.activity.lock().unwrap_or_else(|p| p.into_inner());
                let busy = live.running.load(Ordering::SeqCst) > 0;
                let cpu_moved = matches!((a.last_cpu, cpu), (Some(old), Some(new)) if new != old);
                if busy || cpu_moved {
                    a.last_active = Instant::now();
                }
                if cpu.is_some() {
                    a.last_cpu = cpu;
                }
                a.last_active.elapsed()
            };
            if idle_for >= Duration::from_secs(limits.idle_secs) {
                self.reap(&live.id, ReaperAction::IdleTimeout, "idle_timeout");
            } else if state == SessionState::Running && idle_for >= mark_after {
                let mut info = live.info.lock().await;
                if info.state == SessionState::Running {
                    let reason = format!("no activity for {}s", idle_for.as_secs());
                    self.metrics.reaper_action(ReaperAction::MarkedIdle);
                    if let Err(e) = self
                        .record_state(&mut info, SessionState::Idle, &reason)
                        .await
                    {
                        tracing::error!(session = %live.id, error = %e, "could not mark idle");
                    }
                }
            } else if state == SessionState::Idle && idle_for < mark_after {
                let mut info = live.info.lock().await;
                if info.state == SessionState::Idle {
                    if let Err(e) = self
                        .record_state(&mut info, SessionState::Running, "process activity")
                        .await
                    {
                        tracing::error!(session = %live.id, error = %e, "could not mark running");
                    }
                }
            }
        }
    }

    fn reap(self: &Arc<Self>, id: &SessionId, action: ReaperAction, reason: &'static str) {
        let Some(live) = self.take_live(id) else {
            return;
        };
        self.metrics.reaper_action(action);
        tracing::info!(session = %id, reason, "reaper destroying session");
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.finish_destroy(live, DestroyMode::Graceful, reason).await {
                tracing::error!(error = %e, "reaper: recording destroy failed");
            }
        });
    }

    /// Run the reaper until the returned handle is aborted.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let every = self.cfg.reaper.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.reap_once().await;
            }
        })
    }

    /// Shred a sandbox and what brig keeps beside it for the session (its
    /// git directory).
    async fn destroy_sandbox(
        &self,
        id: &SessionId,
        sandbox: &Sandbox,
    ) -> brig_sandbox::DestroyReport {
        let mut report = sandbox.destroy().await;
        report
            .problems
            .extend(crate::git::remove(&self.cfg.data_dir, id));
        report
    }

    // ---- startup ----

    /// Before listening: every session the store says is live is marked
    /// failed, and every sandbox, mount, cgroup and workspace left on the
    /// host is destroyed and journaled. Fails closed if cleaning fails.
    pub async fn reconcile(&self) -> Result<Vec<String>> {
        let stale = self.db.run(|s| s.list_sessions(false)).await?;
        for mut info in stale {
            tracing::warn!(session = %info.id, state = info.state.as_str(), "marking session failed: brig serve restarted");
            self.metrics.sessions_failed.fetch_add(1, Ordering::Relaxed);
            self.record_state(&mut info, SessionState::Failed, "brig serve restarted")
                .await?;
        }
        let cleaned = brig_sandbox::sandbox::reconcile(&self.paths, &[])
            .await
            .map_err(|e| {
                e.context("startup reconciliation (cleaning sandboxes left by a crash) failed")
            })?;
        for line in &cleaned {
            tracing::warn!(cleaned = %line, "reconcile");
        }
        let ev = Event::new("sandbox.reconcile", Outcome::Success)
            .details(serde_json::json!({"cleaned": cleaned}));
        self.db.write(move |s| s.append_event(&ev)).await?;
        Ok(cleaned)
    }
}

fn unknown_session(id: &SessionId) -> Error {
    Error::not_found(format!("session {id} does not exist")).hint("see `brig session list --all`")
}

fn not_live(info: &SessionInfo) -> Error {
    Error::conflict(format!(
        "session {} is {}{}; commands run only in live sessions",
        info.id,
        info.state.as_str(),
        info.end_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ))
    .hint("create a new session with `brig session create`")
}

/// Limits: the profile's, overridden by what the request asks for.
pub fn request_limits(base: &Limits, req: &CreateSession) -> Result<Limits> {
    let mut l = base.clone();
    if let Some(c) = req.cpus {
        l.cpu_millis = cpus_to_millis(c).map_err(|e| e.context("--cpus"))?;
    }
    if let Some(m) = &req.memory {
        l.memory_bytes = parse_size(m).map_err(|e| e.context("--memory"))?;
    }
    if let Some(p) = req.pids {
        l.pids = p;
    }
    if let Some(d) = &req.disk {
        l.disk_bytes = parse_size(d).map_err(|e| e.context("--disk"))?;
    }
    if let Some(i) = &req.idle {
        l.idle_secs = parse_duration(i)
            .map_err(|e| e.context("--idle"))?
            .as_secs();
    }
    if let Some(t) = &req.timebox {
        l.timebox_secs = parse_duration(t)
            .map_err(|e| e.context("--timebox"))?
            .as_secs();
    }
    Ok(l)
}

/// A host directory to copy into the workspace: absolute, existing, a directory.
pub fn check_dir(p: &str, flag: &str) -> Result<std::path::PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(
            Error::invalid(format!("{flag} {p:?} must be an absolute path"))
                .hint("the server resolves paths on its own host; pass an absolute path"),
        );
    }
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::invalid(format!("{flag} {p:?} does not exist")))
        }
        Err(e) => Err(Error::invalid(format!("{flag} {p:?} cannot be read: {e}"))),
        Ok(m) if !m.is_dir() => Err(Error::invalid(format!("{flag} {p:?} is not a directory"))
            .hint("give a directory; its snapshot is copied into /workspace")),
        Ok(_) => Ok(path.to_path_buf()),
    }
}

/// What every command gets before the image's and the profile's environment.
fn base_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// Concatenate environments, later layers overriding earlier ones, keeping
/// first-seen order.
pub fn merge_env(layers: &[Vec<(String, String)>]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in layers.iter().flatten() {
        match out.iter_mut().find(|(ok, _)| ok == k) {
            Some(slot) => slot.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_layers_override_in_order() {
        let e = merge_env(&[
            base_env(),
            vec![("PATH".into(), "/img".into()), ("A".into(), "1".into())],
            vec![("A".into(), "2".into())],
        ]);
        assert_eq!(e[0], ("PATH".into(), "/img".into()));
        assert!(e.contains(&("A".into(), "2".into())));
        assert_eq!(e.iter().filter(|(k, _)| k == "A").count(), 1);
        assert!(e.contains(&("HOME".into(), "/tmp".into())));
    }

    #[test]
    fn request_limits_override_the_profile_and_name_the_flag() {
        let req = CreateSession {
            cpus: Some(0.5),
            memory: Some("1G".into()),
            idle: Some("90s".into()),
            ..Default::default()
        };
        let l = request_limits(&Limits::default(), &req).unwrap();
        assert_eq!(l.cpu_millis, 500);
        assert_eq!(l.memory_bytes, 1 << 30);
        assert_eq!(l.idle_secs, 90);
        assert_eq!(l.timebox_secs, Limits::default().timebox_secs);
        let bad = CreateSession {
            disk: Some("huge".into()),
            ..Default::default()
        };
        let e = request_limits(&Limits::default(), &bad).unwrap_err();
        assert!(e.message.starts_with("--disk"), "{e}");
    }

    #[test]
    fn dirs_must_be_absolute_existing_directories() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(check_dir(d.path().to_str().unwrap(), "--repo").is_ok());
        let e = check_dir("rel/path", "--repo").unwrap_err();
        assert!(e.message.contains("absolute"), "{e}");
        let e = check_dir(f.to_str().unwrap(), "--upload").unwrap_err();
        assert!(
            e.message.contains("not a directory") && e.message.contains("--upload"),
            "{e}"
        );
        let e = check_dir("/no/such/dir", "--repo").unwrap_err();
        assert!(e.message.contains("does not exist"), "{e}");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }
}
