//! The one error type of the forges. Every variant says what was wrong
//! (`Display`) and what to do about it (`hint`); none ever carries a token:
//! git's output is redacted before it gets here and forge answers are
//! summarised from their JSON `message`, never echoed with our headers.

use std::fmt;
use std::time::Duration;

use brig_core::{Error as CoreError, ErrorKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The forge configuration is wrong (bad URL, bad owner/project name,
    /// `http://` without `allow_http`, a bare repository that is not one).
    #[error("forge configuration: {0}")]
    Config(String),
    /// No usable credential: the token variable is unset or empty, the file
    /// is missing or readable by others.
    #[error("forge credential: {0}")]
    Credential(String),
    /// The request itself is invalid (empty title, bad branch name), refused
    /// before anything is sent.
    #[error("invalid pull request: {0}")]
    Invalid(String),
    /// A branch the request names does not exist upstream.
    #[error("{forge}: branch `{branch}` does not exist in {repo}")]
    BranchNotFound {
        forge: &'static str,
        repo: String,
        branch: String,
    },
    /// The repository, project or pull request does not exist (or the
    /// token cannot see it: GitHub and GitLab answer 404 for both).
    #[error("{forge}: {what} not found")]
    NotFound { forge: &'static str, what: String },
    /// An open pull/merge request for this head branch already exists.
    #[error("{forge}: an open pull request for branch `{head}` already exists{}", existing.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    AlreadyExists {
        forge: &'static str,
        head: String,
        existing: Option<String>,
    },
    /// The forge rejected the credential (HTTP 401, git authentication).
    #[error("{forge} rejected the credential: {detail}")]
    Unauthorized { forge: &'static str, detail: String },
    /// The credential is valid but lacks a permission (HTTP 403).
    #[error("{forge} refused the request: {detail}")]
    Forbidden { forge: &'static str, detail: String },
    /// Rate limited (GitHub 403/429 with `x-ratelimit-remaining: 0`, 429).
    #[error("{forge} rate limit reached{}", retry_after.map(|d| format!("; retry in {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        forge: &'static str,
        retry_after: Option<Duration>,
    },
    /// The forge refused the content (GitHub 422, GitLab 400/422).
    #[error("{forge} rejected the request (HTTP {status}): {message}")]
    Rejected {
        forge: &'static str,
        status: u16,
        message: String,
    },
    /// `git push` was refused or failed; `detail` is git's redacted output.
    #[error("git push to {remote} failed: {detail}")]
    Push { remote: String, detail: String },
    /// The TLS handshake failed (untrusted or mismatched certificate, no
    /// common protocol). brig never falls back to plain HTTP.
    #[error("TLS with {host} failed: {detail}")]
    Tls { host: String, detail: String },
    /// The forge could not be reached, or answered with a server error.
    #[error("{forge} is unreachable: {detail}")]
    Unavailable { forge: &'static str, detail: String },
    /// A deadline passed.
    #[error("{what} timed out after {}s", after.as_secs())]
    Timeout { what: String, after: Duration },
    /// The forge answered something brig does not understand.
    #[error("{forge} answered unexpectedly: {detail}")]
    Protocol { forge: &'static str, detail: String },
    /// A local I/O failure (the PR records, spawning git).
    #[error("{0}")]
    Io(String),
}

impl ForgeError {
    /// What to do about it, in one sentence.
    pub fn hint(&self) -> String {
        match self {
            ForgeError::Config(_) => "fix the [forge] section of brig.toml (docs/FORGES.md)".into(),
            ForgeError::Credential(_) => "set the variable named by `token_env`, or write the token to the `token_file` with mode 0600 (docs/FORGES.md)".into(),
            ForgeError::Invalid(_) => "fix the pull request's title, body or branch names and try again".into(),
            ForgeError::BranchNotFound { .. } => "push the branch first (brig pushes the bot branch before it opens the pull request), or name an existing base branch".into(),
            ForgeError::NotFound { .. } => "check owner/repo (GitHub) or project (GitLab) in brig.toml, and that the token can see that repository".into(),
            ForgeError::AlreadyExists { .. } => "update the existing pull request by pushing to its branch, or close it first".into(),
            ForgeError::Unauthorized { .. } => "the token is wrong, expired or revoked: issue a new one and update token_env/token_file".into(),
            ForgeError::Forbidden { .. } => "give the token write access to contents and pull requests (GitHub) or the api scope and Developer role (GitLab)".into(),
            ForgeError::RateLimited { .. } => "wait for the rate limit window to reset, then retry; nothing was created".into(),
            ForgeError::Rejected { .. } => "read the forge's message above: the branches, title or body need fixing".into(),
            ForgeError::Push { .. } => "brig never force-pushes: if the upstream branch moved, push a new bot branch".into(),
            ForgeError::Tls { .. } => "if the forge uses a private CA, name its PEM file in `ca_file`; brig never falls back to plain HTTP".into(),
            ForgeError::Unavailable { .. } => "check the forge's URL and the host's network, then retry".into(),
            ForgeError::Timeout { .. } => "the forge is slow or unreachable; retry later or raise `timeout_secs`".into(),
            ForgeError::Protocol { .. } => "check that `api` points at the forge's REST API root (e.g. https://api.github.com, https://gitlab.com/api/v4)".into(),
            ForgeError::Io(_) => "check the permissions and free space of brig's state directory".into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ForgeError::Config(_) | ForgeError::Invalid(_) | ForgeError::Rejected { .. } => {
                ErrorKind::InvalidInput
            }
            ForgeError::Credential(_) | ForgeError::Unauthorized { .. } => ErrorKind::Unauthorized,
            ForgeError::BranchNotFound { .. } | ForgeError::NotFound { .. } => ErrorKind::NotFound,
            ForgeError::AlreadyExists { .. } | ForgeError::Push { .. } => ErrorKind::Conflict,
            ForgeError::Forbidden { .. } => ErrorKind::Denied,
            ForgeError::RateLimited { .. } => ErrorKind::LimitExceeded,
            ForgeError::Tls { .. } => ErrorKind::GuardUnavailable,
            ForgeError::Unavailable { .. } => ErrorKind::Unavailable,
            ForgeError::Timeout { .. } => ErrorKind::Timeout,
            ForgeError::Protocol { .. } | ForgeError::Io(_) => ErrorKind::Internal,
        }
    }

    /// The message and the hint on one line, for a CLI or a journal entry.
    pub fn explain(&self) -> impl fmt::Display + '_ {
        struct Explain<'a>(&'a ForgeError);
        impl fmt::Display for Explain<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} (hint: {})", self.0, self.0.hint())
            }
        }
        Explain(self)
    }
}

impl From<ForgeError> for CoreError {
    fn from(e: ForgeError) -> Self {
        CoreError::new(e.kind(), e.to_string()).hint(e.hint())
    }
}

pub(crate) fn io_err(what: impl fmt::Display, e: std::io::Error) -> ForgeError {
    ForgeError::Io(format!("{what}: {e}"))
}
