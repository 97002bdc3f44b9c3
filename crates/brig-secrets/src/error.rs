//! `SecretError`: what went wrong, where, and what to do, never a secret.

use std::time::Duration;

/// Every error names the upstream (`vault source `prod``), the key or
/// request, the HTTP status and the upstream's own message where it has
/// one. None carries a secret value, a token, or a signed request: messages
/// from upstreams are cut short and scrubbed of the credentials brig sent.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The `[secrets]` configuration is wrong: fix brig.toml.
    #[error("secrets config: {0}")]
    Config(String),
    /// The secret does not exist (or brig's identity may not see it).
    #[error("{upstream}: secret `{key}` not found: {message}")]
    NotFound {
        upstream: String,
        key: String,
        message: String,
    },
    /// The upstream refused brig's own credentials (token, key, AppRole).
    #[error("{upstream}: authentication failed: {message}")]
    Auth { upstream: String, message: String },
    /// The upstream refused a request for another reason (HTTP 4xx).
    #[error("{upstream}: {what} refused with HTTP {status}: {message}")]
    Rejected {
        upstream: String,
        what: String,
        status: u16,
        message: String,
    },
    /// The upstream is down, unreachable, or answered 5xx. brig does not
    /// fall back to anything: the caller fails closed.
    #[error("{upstream} unavailable: {detail}")]
    Unavailable { upstream: String, detail: String },
    /// The upstream answered something brig cannot read.
    #[error("{upstream}: unexpected answer: {detail}")]
    Protocol { upstream: String, detail: String },
    #[error("{upstream}: TLS with {host} failed: {detail}")]
    Tls {
        upstream: String,
        host: String,
        detail: String,
    },
    #[error("{upstream}: {what} timed out after {}", brig_core::units::format_duration(*.after))]
    Timeout {
        upstream: String,
        what: String,
        after: Duration,
    },
    /// The secret or credential has expired or was revoked.
    #[error("{upstream}: `{key}` has expired or was revoked: {detail}")]
    Expired {
        upstream: String,
        key: String,
        detail: String,
    },
    /// A mint request asks for more than the minter allows (default deny).
    #[error("{minter}: {detail}")]
    Denied { minter: String, detail: String },
}

impl SecretError {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        SecretError::Config(msg.into())
    }

    /// Whether a retry later may succeed (the upstream was down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SecretError::Unavailable { .. } | SecretError::Timeout { .. }
        )
    }
}
