//! What the gateway reports for every fetch and push (journaled by the server as
//! `git.fetch` and `git.push`). Nothing here carries a secret: violations name
//! commit, file, line and rule only.

use serde::{Deserialize, Serialize};

use crate::rules::PushRule;
use crate::Violation;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action")]
pub enum GitEvent {
    #[serde(rename = "git.fetch")]
    Fetch(FetchEvent),
    #[serde(rename = "git.push")]
    Push(PushEvent),
}

impl GitEvent {
    pub fn action(&self) -> &'static str {
        match self {
            GitEvent::Fetch(_) => "git.fetch",
            GitEvent::Push(_) => "git.push",
        }
    }
    pub fn session(&self) -> &str {
        match self {
            GitEvent::Fetch(e) => &e.session,
            GitEvent::Push(e) => &e.session,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Rejected,
    /// brig or the upstream failed (not a rule).
    Error,
}

/// One fetch request: the ref advertisement (`stage = "advertise"`) or one
/// upload-pack exchange (`stage = "upload-pack"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchEvent {
    pub session: String,
    pub repo: String,
    pub stage: String,
    /// `0` or `2`.
    pub protocol: u8,
    pub outcome: Outcome,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    /// What went wrong (git's own message, trimmed), when it did.
    pub error: Option<String>,
}

/// The verdict on one ref of a push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefVerdict {
    pub refname: String,
    pub old: String,
    pub new: String,
    pub accepted: bool,
    /// `git.push.<rule>` when rejected.
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// The signed commit pushed upstream for this ref.
    pub signed_tip: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommit {
    /// The agent's commit id (what the gateway's branch points at).
    pub original: String,
    /// brig's signed rewrite (what the upstream branch points at).
    pub signed: String,
}

/// One push (one `git-receive-pack` POST with commands).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushEvent {
    pub session: String,
    pub repo: String,
    pub outcome: Outcome,
    /// The rule that decided the push when rejected (the first ref's).
    pub rule: Option<String>,
    pub refs: Vec<RefVerdict>,
    /// New commits of the push, oldest first (when the pack was indexed).
    pub commits: Vec<String>,
    pub violations: Vec<Violation>,
    pub signed: Vec<SignedCommit>,
    pub pack_bytes: u64,
    pub push_options: Vec<String>,
    pub duration_ms: u64,
    /// Where the push's time went, stage by stage in the order they ended
    /// (`refs`, `pack`, `checks`, `scan`, `policy`, `sign`, `upstream`,
    /// `update_refs`; a rejected push stops early).
    #[serde(default)]
    pub stages: Vec<PushStage>,
    pub error: Option<String>,
}

/// One stage of a push and its wall time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushStage {
    pub stage: String,
    pub ms: f64,
}

impl PushEvent {
    pub(crate) fn new(session: &str, repo: &str) -> Self {
        PushEvent {
            session: session.into(),
            repo: repo.into(),
            outcome: Outcome::Ok,
            rule: None,
            refs: vec![],
            commits: vec![],
            violations: vec![],
            signed: vec![],
            pack_bytes: 0,
            push_options: vec![],
            duration_ms: 0,
            stages: vec![],
            error: None,
        }
    }

    /// Record that `stage` ended now; `since` moves to now.
    pub(crate) fn lap(&mut self, stage: &str, since: &mut std::time::Instant) {
        let now = std::time::Instant::now();
        let us = now.duration_since(*since).as_micros() as f64;
        self.stages.push(PushStage {
            stage: stage.into(),
            ms: (us / 100.0).round() / 10.0,
        });
        *since = now;
    }

    pub(crate) fn reject(&mut self, rule: PushRule) {
        if self.outcome == Outcome::Ok {
            self.outcome = Outcome::Rejected;
        }
        self.rule.get_or_insert_with(|| rule.name());
    }
}
