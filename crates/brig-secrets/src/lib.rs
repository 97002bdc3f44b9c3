//! brig's secrets (issue 6, docs/SECRETS.md): where real secret values come
//! from, how long brig keeps them, and the short-lived credentials brig
//! mints per session.
//!
//! - [`SecretSource`]: one trait for every store (env, file, HashiCorp
//!   Vault, AWS SSM Parameter Store and Secrets Manager, GCP Secret Manager,
//!   Azure Key Vault), each configured by a [`SourceConfig`].
//! - [`SecretCache`]: fetches just in time, keeps a value no longer than its
//!   TTL (and a configured maximum), coalesces concurrent fetches, never
//!   writes anything to disk.
//! - [`Minter`]: short-lived credentials as narrow as the upstream allows
//!   (GitHub App installation tokens for one repository, AWS STS
//!   AssumeRole with a session policy, Vault dynamic secrets), each
//!   configured by a [`MinterConfig`].
//!
//! Secret values live in [`SecretValue`] (wiped on drop, `[REDACTED]` in
//! `Debug`); [`SecretError`] never carries one. Every failure is an error:
//! there is no fallback to another source.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

mod cache;
pub mod config;
mod error;
mod http;
mod jwt;
pub mod mint;
pub mod sources;
mod value;

pub use cache::SecretCache;
pub use config::{CredentialRef, MinterConfig, SecretsConfig, SourceConfig, TtlBounds};
pub use error::SecretError;
pub use http::HttpConfig;
pub use mint::{Minted, Minter, Revocation, ScopeRequest};
pub use value::SecretValue;

/// A boxed, sendable future (the traits here are object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An upstream lease on a fetched value (a Vault dynamic secret): renew it
/// while the session lives, revoke it when the session ends. A lease id
/// names the lease; it does not grant anything without brig's own token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    /// The lease's duration when it was issued or last renewed.
    pub duration: Duration,
    pub renewable: bool,
}

/// What a source returned for a key.
#[derive(Debug)]
pub struct Fetched {
    pub value: SecretValue,
    /// How long the upstream says the value is good for (`None`: no limit
    /// given; the cache still keeps it no longer than its maximum).
    pub ttl: Option<Duration>,
    /// Set when the value is leased (dynamic): it must be revoked.
    pub lease: Option<Lease>,
}

/// A store of secrets. `key` is what brig.toml names inside that store (a
/// variable, a file name, a Vault path, a parameter name...; see
/// docs/SECRETS.md for each kind's key syntax).
pub trait SecretSource: Send + Sync {
    /// `env`, `file`, `vault`, `aws_ssm`, ...
    fn kind(&self) -> &'static str;

    /// Fetches the current value. Never a stale or default value: an
    /// unreachable or misconfigured source is an error.
    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>>;

    /// Extends a lease by `increment` (the upstream may grant less). A
    /// source without leases says so.
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        increment: Duration,
    ) -> BoxFuture<'a, Result<Lease, SecretError>> {
        let _ = increment;
        Box::pin(async move {
            Err(SecretError::Expired {
                upstream: format!("{} source", self.kind()),
                key: lease.id.clone(),
                detail: "this source has no leases to renew".into(),
            })
        })
    }

    /// Ends a lease now. Sources without leases have nothing to revoke.
    fn revoke<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), SecretError>> {
        let _ = lease;
        Box::pin(async { Ok(()) })
    }
}
