//! brig's repo access (issue 5). See docs/GIT.md.
//!
//! The git gateway: each session's `origin` (`http://git.brig/<name>.git`, smart HTTP)
//! is served by [`gateway::serve`] (or the axum [`gateway::router`]) against the
//! session's own bare gateway repository. Fetches are `git upload-pack` on that
//! repository; pushes are received by brig itself: rules on the command list, the pack
//! indexed into a quarantine, every new commit scanned, then re-written with the
//! session's identity, signed ([`sshsig`]) and pushed upstream ([`Upstream`]).

pub mod checkout;
pub mod commit;
pub mod events;
pub mod gateway;
pub mod gitcmd;
pub mod object;
pub mod pkt;
mod receive;
pub mod repo;
pub mod rules;
pub mod sshsig;
#[cfg(test)]
mod testgit;
pub mod upstream;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use events::{FetchEvent, GitEvent, PushEvent, PushStage, RefVerdict, SignedCommit};
pub use gateway::{router, serve};
pub use rules::PushRule;
pub use sshsig::SshSigner;
pub use upstream::LocalUpstream;

/// The identity brig's commits carry (author and committer of every signed commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Identity {
    /// A name and email that fit a commit header (no `<`, `>`, newline or NUL).
    pub fn check(&self) -> Result<(), String> {
        let bad = |s: &str| {
            s.bytes()
                .any(|b| matches!(b, b'<' | b'>' | b'\n' | b'\r' | 0))
        };
        if self.name.trim().is_empty() || self.email.trim().is_empty() {
            return Err("the session's git identity has an empty name or email".into());
        }
        if bad(&self.name) || bad(&self.email) {
            return Err("the session's git identity contains '<', '>', a newline or NUL".into());
        }
        Ok(())
    }
}

/// Limits on what one request may make the gateway read or do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// The largest pack a push may send; reading stops past it.
    pub max_pack_bytes: u64,
    /// The command list of a push (ref updates, push options).
    pub max_command_bytes: usize,
    pub max_ref_updates: usize,
    /// New commits in one push (each is scanned and signed).
    pub max_new_commits: usize,
    /// The body of a fetch request (wants and haves), after gzip.
    pub max_fetch_request_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pack_bytes: 100 << 20,
            max_command_bytes: 1 << 20,
            max_ref_updates: 32,
            max_new_commits: 2000,
            max_fetch_request_bytes: 16 << 20,
        }
    }
}

/// One session's gateway repository and the rules its pushes live under.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRepo {
    /// The bare gateway repository (`<data>/git/<session>/gateway.git`).
    pub dir: PathBuf,
    /// The name in the URL: `http://git.brig/<name>.git`.
    pub name: String,
    pub session: String,
    pub identity: Identity,
    /// Branches the session may push, e.g. `brig/<session>/`.
    pub bot_prefix: String,
    /// Branch patterns never pushed ([`rules::glob_match`]); the base branch always is.
    pub protected: Vec<String>,
    pub base_branch: String,
    #[serde(default)]
    pub limits: Limits,
}

impl SessionRepo {
    /// The default bot prefix of a session: `brig/<session>/`.
    pub fn default_bot_prefix(session: &str) -> String {
        format!("brig/{session}/")
    }

    /// Whether `branch` is under the bot prefix (and not the prefix alone).
    pub fn is_bot_branch(&self, branch: &str) -> bool {
        branch.starts_with(&self.bot_prefix) && branch.len() > self.bot_prefix.len()
    }

    /// The pattern that protects `branch`, if one does.
    pub fn protected_pattern(&self, branch: &str) -> Option<&str> {
        if branch == self.base_branch {
            return Some(&self.base_branch);
        }
        self.protected
            .iter()
            .map(String::as_str)
            .find(|p| rules::glob_match(p, branch))
    }

    #[doc(hidden)]
    pub fn for_tests(dir: impl Into<PathBuf>, name: &str, session: &str) -> SessionRepo {
        SessionRepo {
            dir: dir.into(),
            name: name.into(),
            session: session.into(),
            identity: Identity {
                name: "brig bot".into(),
                email: "bot@brig.invalid".into(),
            },
            bot_prefix: Self::default_bot_prefix(session),
            protected: vec!["main".into(), "master".into(), "release/**".into()],
            base_branch: "main".into(),
            limits: Limits::default(),
        }
    }
}

/// One finding of the pre-push scan: where and which rule, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub commit: String,
    pub path: String,
    pub line: Option<u32>,
    pub rule: String,
    pub description: String,
}

/// The pre-push scanner. `revs` are the push's new commits (every one, oldest
/// first); run git in `repo` with `env` (the quarantine: the objects are not in the
/// repository proper yet). An `Err` rejects the push (fail closed).
pub trait PushScanner: Send + Sync {
    fn scan(
        &self,
        repo: &Path,
        env: &[(OsString, OsString)],
        revs: &[String],
    ) -> Result<Vec<Violation>, String>;

    /// [`PushScanner::scan`] for the push's new commits as the gateway has
    /// listed them (oldest first, with their parents), for a scanner that can
    /// skip its own walk. Default: `scan` of their ids.
    fn scan_listed(
        &self,
        repo: &Path,
        env: &[(OsString, OsString)],
        commits: &[NewCommit],
    ) -> Result<Vec<Violation>, String> {
        let revs: Vec<String> = commits.iter().map(|c| c.id.clone()).collect();
        self.scan(repo, env, &revs)
    }
}

/// One new commit of a push: its id and its parents' ids, as git lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCommit {
    pub id: String,
    pub parents: Vec<String>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The real repository. `push` makes `branch` (a branch name such as
/// `brig/s-x/fix`, no `refs/heads/`) point at `sha`, an object of `repo`, without
/// force. Its error is shown to the agent: it must carry no credential.
pub trait Upstream: Send + Sync {
    fn push<'a>(
        &'a self,
        repo: &'a Path,
        sha: &'a str,
        branch: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// What the control plane supplies to the gateway.
pub trait GatewayServices: Send + Sync {
    fn scanner(&self) -> &dyn PushScanner;
    fn upstream(&self) -> &dyn Upstream;
    /// brig's deployment key, which signs every accepted commit.
    fn signer(&self) -> &SshSigner;
    /// Every fetch and push, accepted or not (journal as `git.fetch` / `git.push`).
    /// Called on the request's task: do not block.
    fn record(&self, event: GitEvent);
    /// Policy on one branch update, after the gateway's own rules and the
    /// scan passed, with every path its new commits touch and whether the
    /// branch is under the session's bot prefix: `Err(why)` refuses it
    /// (shown in git's output). Default: allowed.
    fn authorize_push<'a>(
        &'a self,
        branch: &'a str,
        bot_branch: bool,
        paths: &'a [String],
    ) -> BoxFuture<'a, Result<(), String>> {
        let _ = (branch, bot_branch, paths);
        Box::pin(async { Ok(()) })
    }
    /// Whether [`GatewayServices::authorize_push`] decides pushes outside
    /// the bot prefix (a policy with rules for them, e.g. a maintainer's
    /// approval). Default `false`: the gateway refuses them itself, before
    /// anything else. Protected branches are refused either way.
    fn decides_non_bot_branches(&self) -> bool {
        false
    }
    /// Policy on a fetch (its ref advertisement and each upload-pack):
    /// `Err(why)` refuses it with a 403 carrying `why`. Default: allowed.
    fn authorize_fetch(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// The session a connection belongs to, decided by the channel it came in on (never
/// by anything in the request). Put it in the request's extensions for
/// [`gateway::router`], or pass it to [`gateway::serve`].
#[derive(Clone)]
pub struct GitSession {
    pub repo: Arc<SessionRepo>,
    pub services: Arc<dyn GatewayServices>,
}
