//! The git gateway on a session's egress channel (issue 5; docs/GIT.md):
//! requests for `[git] host` (default `git.brig`) are handed over by the
//! proxy (`brig_proxy::local`) with the channel's session, and served by
//! brig-git against that session's gateway repository, with brig-scan as
//! the pre-push scanner, brig's deployment key as the signer and the
//! session's forge as the upstream. Every fetch and push is journaled
//! (`git.fetch`, `git.push`).

use std::convert::Infallible;
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use brig_core::event::{Event, Outcome};
use brig_core::session::SessionInfo;
use brig_core::Error;
use brig_forge::Forge;
use brig_git::{
    GatewayServices, GitEvent, GitSession, NewCommit, PushScanner, SshSigner, Upstream, Violation,
};
use brig_proxy::local::{BoxFuture, LocalService, LocalStream};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::manager::{session_event, Db};

/// The deployment key that signs accepted commits, under the data dir.
pub const SIGNING_KEY_FILE: &str = "keys/git-signing.key";

/// Git events queued for the journal per session; past this they are
/// dropped and counted (logged): a push storm must not grow brig's memory.
const QUEUE: usize = 1024;

/// brig-scan as the gateway's pre-push scanner.
pub struct Scan(pub Arc<brig_scan::Scanner>);

impl PushScanner for Scan {
    fn scan(
        &self,
        repo: &Path,
        env: &[(OsString, OsString)],
        revs: &[String],
    ) -> Result<Vec<Violation>, String> {
        // Exactly the push's new commits: without --no-walk rev-list would
        // walk down to the pinned commit and scan its whole tree as added.
        let mut walk = Vec::with_capacity(revs.len() + 1);
        walk.push("--no-walk".to_string());
        walk.extend(revs.iter().cloned());
        let report = self
            .0
            .scan_git(repo, env, &walk)
            .map_err(|e| e.to_string())?;
        Ok(violations(report))
    }

    fn scan_listed(
        &self,
        repo: &Path,
        env: &[(OsString, OsString)],
        commits: &[NewCommit],
    ) -> Result<Vec<Violation>, String> {
        let listed: Vec<(String, Option<String>)> = commits
            .iter()
            .map(|c| (c.id.clone(), c.parents.first().cloned()))
            .collect();
        let report = self
            .0
            .scan_git_commits(repo, env, &listed)
            .map_err(|e| e.to_string())?;
        Ok(violations(report))
    }
}

fn violations(report: brig_scan::Report) -> Vec<Violation> {
    report
        .findings
        .into_iter()
        .map(|f| Violation {
            commit: f.commit.unwrap_or_default(),
            path: f.path,
            line: (f.line > 0).then_some(f.line),
            rule: f.rule,
            description: f.description,
        })
        .collect()
}

/// A forge as the gateway's upstream.
pub struct ForgeUpstream(pub Arc<dyn Forge>);

impl Upstream for ForgeUpstream {
    fn push<'a>(
        &'a self,
        repo: &'a Path,
        sha: &'a str,
        branch: &'a str,
    ) -> brig_git::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0
                .push_branch(repo, sha, branch)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// What one session's gateway is served with.
pub struct Services {
    pub scanner: Scan,
    pub upstream: ForgeUpstream,
    pub signer: Arc<SshSigner>,
    events: mpsc::Sender<GitEvent>,
    /// The session's policy: every push is decided there (`git.push`).
    pub gate: Option<Arc<crate::policy::AgentGate>>,
    /// The repository's name in policy requests.
    pub repo_name: String,
}

impl GatewayServices for Services {
    fn scanner(&self) -> &dyn PushScanner {
        &self.scanner
    }
    fn upstream(&self) -> &dyn Upstream {
        &self.upstream
    }
    fn signer(&self) -> &SshSigner {
        &self.signer
    }
    fn record(&self, event: GitEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!("git event dropped: the journal queue is full");
        }
    }
    fn decides_non_bot_branches(&self) -> bool {
        self.gate.is_some()
    }

    fn authorize_push<'a>(
        &'a self,
        branch: &'a str,
        bot_branch: bool,
        paths: &'a [String],
    ) -> brig_git::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(gate) = &self.gate else {
                return Ok(());
            };
            let labels = gate.policy.sensitivity.label_paths(paths);
            // The gateway's own rules already refused force, deletes, tags
            // and protected branches: policy decides the rest (the profile
            // may not push at all; a non-bot branch or sensitive paths may
            // need an approval).
            let r = brig_policy::Request::git_push(
                gate.session.agent(),
                &self.repo_name,
                branch,
                false,
                bot_branch,
                &labels,
            );
            // A push does not wait: git's client would sit silent. The
            // request is made; the agent pushes again once it is approved.
            gate.decide(r, &format!("{}:{branch}", self.repo_name), false, &|_| {})
                .await
                .map(|_| ())
                .map_err(git_message)
        })
    }

    fn authorize_fetch(&self) -> brig_git::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let Some(gate) = &self.gate else {
                return Ok(());
            };
            let r = brig_policy::Request::git_fetch(gate.session.agent(), &self.repo_name);
            gate.decide(r, &self.repo_name, false, &|_| {})
                .await
                .map(|_| ())
                .map_err(git_message)
        })
    }
}

/// A policy refusal as git's client shows it: one line, with what to do.
fn git_message(e: Error) -> String {
    match e.hint {
        Some(h) => format!("{} ({h})", e.message),
        None => e.message,
    }
}

impl Services {
    /// The services of `info`'s session, journaling through `db`. The
    /// journal task ends when the last handle on these services goes.
    pub fn new(
        db: Db,
        info: &SessionInfo,
        scanner: Arc<brig_scan::Scanner>,
        forge: Arc<dyn Forge>,
        signer: Arc<SshSigner>,
    ) -> Services {
        let (tx, mut rx) = mpsc::channel::<GitEvent>(QUEUE);
        let info = info.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let e = journal_event(&info, &ev);
                if let Err(err) = db.write(move |s| s.append_event(&e)).await {
                    tracing::error!(error = %err, "could not journal a git event");
                }
            }
        });
        Services {
            scanner: Scan(scanner),
            upstream: ForgeUpstream(forge),
            signer,
            events: tx,
            gate: None,
            repo_name: String::new(),
        }
    }
}

/// A gateway event as a journal event: outcome, deciding rule, the first
/// ref's branch, the details as brig-git reports them (violations name
/// file, line and rule, never the secret).
pub fn journal_event(info: &SessionInfo, ev: &GitEvent) -> Event {
    let (outcome, rule, branch) = match ev {
        GitEvent::Fetch(f) => (outcome_of(&f.outcome), None, None),
        GitEvent::Push(p) => (
            outcome_of(&p.outcome),
            p.rule.clone(),
            p.refs
                .first()
                .map(|r| r.refname.trim_start_matches("refs/heads/").to_string()),
        ),
    };
    let mut e = session_event(info, ev.action(), outcome);
    e.rule = rule;
    e.branch = branch;
    let mut details = serde_json::to_value(ev).unwrap_or_default();
    if let Some(o) = details.as_object_mut() {
        o.remove("action");
        o.remove("session");
    }
    e.details(details)
}

fn outcome_of(o: &brig_git::events::Outcome) -> Outcome {
    match o {
        brig_git::events::Outcome::Ok => Outcome::Success,
        brig_git::events::Outcome::Rejected => Outcome::Denied,
        brig_git::events::Outcome::Error => Outcome::Failure,
    }
}

/// The gateway as a local service of one session's proxy channel.
pub struct GatewayService {
    pub host: String,
    pub session: GitSession,
}

impl LocalService for GatewayService {
    fn host(&self) -> &str {
        &self.host
    }

    fn serve(
        &self,
        session: Arc<str>,
        stream: Box<dyn LocalStream>,
        buffered: Vec<u8>,
    ) -> BoxFuture<'static, ()> {
        let git = self.session.clone();
        Box::pin(async move {
            // The channel's session and the gateway's are one by
            // construction; a mismatch is a brig bug: serve nothing.
            if *session != *git.repo.session {
                tracing::error!(channel = %session, gateway = %git.repo.session, "git gateway: session mismatch");
                return;
            }
            let io = TokioIo::new(brig_proxy::Prefixed::new(buffered, stream));
            let svc = hyper::service::service_fn(move |req| {
                let git = git.clone();
                async move { Ok::<_, Infallible>(brig_git::serve(git, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "git gateway connection ended");
            }
        })
    }
}
