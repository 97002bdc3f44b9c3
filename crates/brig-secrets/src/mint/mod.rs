//! Minters: short-lived credentials, one per session and scope, as narrow
//! as the upstream allows, with a TTL inside `[secrets.ttl]` (15 to 60
//! minutes by default).

pub mod github;
pub mod sts;
pub mod vault;

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use crate::{BoxFuture, Lease, SecretError, SecretValue};

/// What a session asks for. Default deny: a minter refuses anything its
/// configuration does not allow, and never widens a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeRequest {
    /// The session id; names the credential upstream where the upstream
    /// records a name (STS `RoleSessionName = brig-<session>`).
    pub session: String,
    /// brig's scope name: `git.read`, `git.write`, `pkg`, `model`,
    /// `cloud:NAME` (for the journal and `granted`).
    pub scope: String,
    /// `owner/name`, for repository-scoped credentials (GitHub).
    pub repository: Option<String>,
    /// GitHub App permissions (`contents` = `read`|`write`, ...).
    pub permissions: BTreeMap<String, String>,
    /// An AWS session policy (IAM policy JSON), narrowing the role.
    pub policy: Option<serde_json::Value>,
    /// `None`: the minter's default.
    pub ttl: Option<Duration>,
}

impl ScopeRequest {
    pub fn new(session: &str, scope: &str) -> Self {
        ScopeRequest {
            session: session.to_string(),
            scope: scope.to_string(),
            ..Default::default()
        }
    }

    /// `git.read` on one repository: `contents: read`.
    pub fn git_read(session: &str, repository: &str) -> Self {
        ScopeRequest {
            repository: Some(repository.to_string()),
            permissions: [("contents".to_string(), "read".to_string())].into(),
            ..Self::new(session, "git.read")
        }
    }

    /// `git.write` on one repository: push a branch and open a pull
    /// request (`contents: write`, `pull_requests: write`).
    pub fn git_write(session: &str, repository: &str) -> Self {
        ScopeRequest {
            repository: Some(repository.to_string()),
            permissions: [
                ("contents".to_string(), "write".to_string()),
                ("pull_requests".to_string(), "write".to_string()),
            ]
            .into(),
            ..Self::new(session, "git.write")
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// How a minted credential is ended before it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// The credential revokes itself (GitHub: `DELETE /installation/token`
    /// authenticated with it).
    Token,
    /// An upstream lease (Vault dynamic secrets).
    Lease(Lease),
    /// The upstream cannot revoke one credential (AWS STS): it dies at
    /// `expires_at`, and until then brig stops injecting it.
    ExpiresOnly { why: &'static str },
}

/// A minted credential. `Debug` shows everything but the value.
#[derive(Debug)]
pub struct Minted {
    /// The credential (a token; for AWS, credential_process JSON).
    pub value: SecretValue,
    /// When brig stops using it and revokes it: the requested TTL, or the
    /// upstream's own expiry when that is sooner.
    pub expires_at: OffsetDateTime,
    pub revocation: Revocation,
    /// Exactly what was granted, as the upstream reported it (never the
    /// value): for the journal and `brig creds list`.
    pub granted: serde_json::Value,
}

pub trait Minter: Send + Sync {
    /// `github_app`, `aws_sts`, `vault`.
    fn kind(&self) -> &'static str;

    fn mint<'a>(&'a self, req: &'a ScopeRequest) -> BoxFuture<'a, Result<Minted, SecretError>>;

    /// Ends the credential now. Revoking one that already expired or was
    /// revoked is not an error.
    fn revoke<'a>(&'a self, minted: &'a Minted) -> BoxFuture<'a, Result<(), SecretError>>;
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn parse_rfc3339(
    upstream: &str,
    what: &str,
    s: &str,
) -> Result<OffsetDateTime, SecretError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
        SecretError::Protocol {
            upstream: upstream.to_string(),
            detail: format!("{what} `{s}` is not an RFC 3339 time"),
        }
    })
}
