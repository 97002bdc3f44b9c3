//! `kind = "vault"`: Vault dynamic secrets as minted credentials. Each mint
//! is a fresh `GET /v1/<mount>/creds/<role>` on a `[secrets.sources.NAME]`
//! with `engine = "dynamic"`, with its own lease; revoke ends the lease
//! (`PUT /v1/sys/leases/revoke`). Vault's role decides the lease's length;
//! brig stops using the credential, and revokes it, when the requested TTL
//! ends if the lease is longer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::config::TtlBounds;
use crate::mint::{rfc3339, Minted, Minter, Revocation, ScopeRequest};
use crate::{BoxFuture, SecretError, SecretSource};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultMinterConfig {
    /// A `[secrets.sources.NAME]` of kind `vault`, `engine = "dynamic"`.
    pub source: String,
    /// The role (`<mount>/creds/<role>`), optionally `role#field`.
    pub role: String,
    #[serde(default, with = "crate::config::duration::option")]
    pub ttl: Option<Duration>,
}

pub struct VaultMinter {
    name: String,
    source_name: String,
    source: Arc<dyn SecretSource>,
    role: String,
    ttl: TtlBounds,
}

impl VaultMinter {
    pub fn new(
        name: &str,
        c: &VaultMinterConfig,
        bounds: TtlBounds,
        sources: &BTreeMap<String, Arc<dyn SecretSource>>,
    ) -> Result<Self, SecretError> {
        let section = format!("[secrets.minters.{name}]");
        let source = sources.get(&c.source).ok_or_else(|| {
            SecretError::config(format!(
                "{section} source `{}`: no such [secrets.sources.{}]",
                c.source, c.source
            ))
        })?;
        if source.kind() != "vault" {
            return Err(SecretError::config(format!(
                "{section} source `{}` is of kind `{}`; a vault minter needs kind = \"vault\" with engine = \"dynamic\"",
                c.source,
                source.kind()
            )));
        }
        let ttl = TtlBounds {
            default: bounds.resolve(&section, c.ttl)?,
            ..bounds
        };
        Ok(VaultMinter {
            name: name.to_string(),
            source_name: c.source.clone(),
            source: source.clone(),
            role: c.role.clone(),
            ttl,
        })
    }
}

impl Minter for VaultMinter {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn mint<'a>(&'a self, req: &'a ScopeRequest) -> BoxFuture<'a, Result<Minted, SecretError>> {
        Box::pin(async move {
            let me = format!("vault minter `{}`", self.name);
            let ttl = self.ttl.resolve(&me, req.ttl)?;
            let f = self.source.fetch(&self.role).await?;
            let Some(lease) = f.lease else {
                return Err(SecretError::config(format!(
                    "{me}: source `{}` returned no lease for `{}`; set engine = \"dynamic\" on it",
                    self.source_name, self.role
                )));
            };
            let used = lease.duration.min(ttl);
            let expires_at = OffsetDateTime::now_utc() + used;
            Ok(Minted {
                value: f.value,
                expires_at,
                granted: json!({
                    "minter": self.name,
                    "kind": "vault",
                    "scope": req.scope,
                    "source": self.source_name,
                    "role": self.role,
                    "lease_id": lease.id,
                    "lease_duration_seconds": lease.duration.as_secs(),
                    "renewable": lease.renewable,
                    "expires_at": rfc3339(expires_at),
                }),
                revocation: Revocation::Lease(lease),
            })
        })
    }

    fn revoke<'a>(&'a self, minted: &'a Minted) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            match &minted.revocation {
                Revocation::Lease(lease) => self.source.revoke(lease).await,
                other => Err(SecretError::config(format!(
                    "vault minter `{}`: cannot revoke a credential it did not mint ({other:?})",
                    self.name
                ))),
            }
        })
    }
}
