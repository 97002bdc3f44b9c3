//! brig's forges (issue 5): where an accepted bot branch goes upstream and
//! where its pull/merge request is opened. Nothing else in brig writes to
//! the upstream. See docs/FORGES.md.
//!
//! - [`LocalForge`]: the embedded default, a local bare repository plus PR
//!   records kept by brig in `<bare>/brig/pulls/<n>.json`.
//! - [`GitHubForge`]: GitHub REST v3 (github.com or Enterprise).
//! - [`GitLabForge`]: GitLab REST v4 (gitlab.com or self-managed).
//!
//! Every forge pushes with the real `git push <url> <sha>:refs/heads/<branch>`
//! (never forced) and hands out a [`GitRemote`]: the URL plus the
//! environment that carries its credential to git without putting it in argv,
//! the sandbox, logs or errors.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub mod config;
mod error;
mod git;
pub mod github;
pub mod gitlab;
mod http;
pub mod local;
mod token;

pub use config::{ForgeConfig, GithubConfig, GitlabConfig, LocalConfig};
pub use error::ForgeError;
pub use git::{validate_branch, validate_sha, GitRemote};
pub use github::GitHubForge;
pub use gitlab::{GitLabAuth, GitLabForge};
pub use http::HttpOptions;
pub use local::LocalForge;
pub use token::{Access, EnvToken, FileToken, Secret, StaticToken, TokenSource};

/// What the forge methods return: a boxed future, so `dyn Forge` works
/// without the async-trait crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of a pull/merge request, the same words for every forge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrState {
    Open,
    Closed,
    Merged,
}

/// A pull request (GitHub) or merge request (GitLab), or a local record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// GitHub's `number`, GitLab's `iid`, the local record's number.
    pub number: u64,
    /// Where a human looks at it.
    pub url: String,
    pub title: String,
    pub body: String,
    /// The head (source) branch, without `refs/heads/`.
    pub head: String,
    /// The base (target) branch.
    pub base: String,
    pub state: PrState,
    /// The head commit, when the forge says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
}

/// What brig asks a forge to open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPullRequest {
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// The bot branch brig pushed.
    pub head: String,
    /// The branch to merge into.
    pub base: String,
}

/// GitHub's limits, the tightest of the forges: refuse rather than truncate,
/// so a test-gate report is never silently cut.
pub const MAX_TITLE_CHARS: usize = 256;
pub const MAX_BODY_CHARS: usize = 65_536;

impl NewPullRequest {
    /// Checked by every forge before anything is sent.
    pub fn validate(&self) -> Result<(), ForgeError> {
        let title = self.title.trim();
        if title.is_empty() {
            return Err(ForgeError::Invalid("the title is empty".into()));
        }
        if self.title.chars().count() > MAX_TITLE_CHARS {
            return Err(ForgeError::Invalid(format!(
                "the title has {} characters; at most {MAX_TITLE_CHARS} are allowed",
                self.title.chars().count()
            )));
        }
        if self.title.chars().any(|c| c.is_control()) {
            return Err(ForgeError::Invalid(
                "the title contains a newline or control character".into(),
            ));
        }
        if self.body.chars().count() > MAX_BODY_CHARS {
            return Err(ForgeError::Invalid(format!(
                "the body has {} characters; at most {MAX_BODY_CHARS} are allowed",
                self.body.chars().count()
            )));
        }
        validate_branch(&self.head).map_err(|e| ForgeError::Invalid(format!("head: {e}")))?;
        validate_branch(&self.base).map_err(|e| ForgeError::Invalid(format!("base: {e}")))?;
        if self.head == self.base {
            return Err(ForgeError::Invalid(format!(
                "head and base are the same branch `{}`",
                self.head
            )));
        }
        Ok(())
    }
}

/// A forge: the one way brig's writes reach the upstream.
pub trait Forge: Send + Sync {
    /// `local`, `github` or `gitlab`.
    fn kind(&self) -> &'static str;

    /// A human-readable name of the upstream (no secret), for logs and errors.
    fn describe(&self) -> String;

    /// The URL and credential environment for git, scoped to `access`.
    fn git_remote(&self, access: Access) -> BoxFuture<'_, Result<GitRemote, ForgeError>>;

    /// Where brig's host side clones or fetches a session's checkout from,
    /// with read credentials that stay on the host.
    fn fetch_source(&self) -> BoxFuture<'_, Result<GitRemote, ForgeError>> {
        self.git_remote(Access::Read)
    }

    /// `git push <upstream> <sha>:refs/heads/<branch>` from brig's host-side
    /// repository: never forced, so a moved branch is refused, not clobbered.
    fn push_branch<'a>(
        &'a self,
        local_repo: &'a Path,
        sha: &'a str,
        branch: &'a str,
    ) -> BoxFuture<'a, Result<(), ForgeError>> {
        Box::pin(async move {
            let remote = self.git_remote(Access::Write).await?;
            remote.push(local_repo, sha, branch).await
        })
    }

    /// Opens a pull/merge request from `req.head` into `req.base`.
    fn open_pull_request<'a>(
        &'a self,
        req: &'a NewPullRequest,
    ) -> BoxFuture<'a, Result<PullRequest, ForgeError>>;

    /// Reads a pull/merge request by its number (GitLab: iid).
    fn get_pull_request(&self, number: u64) -> BoxFuture<'_, Result<PullRequest, ForgeError>>;
}
