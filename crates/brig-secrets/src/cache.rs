//! `SecretCache`: just-in-time fetches, kept no longer than their TTL.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::{SecretError, SecretSource, SecretValue};

type Slot = Arc<tokio::sync::Mutex<Option<(Arc<SecretValue>, Instant)>>>;

/// Fetches `(source, key)` when asked and keeps the value in memory for
/// `min(its TTL, max_ttl)`; nothing is ever written to disk. Concurrent
/// requests for one key wait for a single fetch. Failures are not cached:
/// the next request asks the source again (and fails again while it is
/// down: no stale value is served past its TTL).
///
/// Leased values (Vault dynamic secrets) are per session and must be
/// revoked by whoever holds them, so they are refused here: mint them
/// through a `Minter` instead.
pub struct SecretCache {
    sources: BTreeMap<String, Arc<dyn SecretSource>>,
    max_ttl: Duration,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl SecretCache {
    pub fn new(sources: BTreeMap<String, Arc<dyn SecretSource>>, max_ttl: Duration) -> Self {
        SecretCache {
            sources,
            max_ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key` in the source named `source`.
    pub async fn get(&self, source: &str, key: &str) -> Result<Arc<SecretValue>, SecretError> {
        let src = self.sources.get(source).ok_or_else(|| {
            let known: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            SecretError::config(format!(
                "no secret source `{source}` (configured: {}); add [secrets.sources.{source}]",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        let slot = {
            let mut slots = self.slots.lock().expect("cache lock");
            purge_expired(&slots);
            slots
                .entry((source.to_string(), key.to_string()))
                .or_default()
                .clone()
        };
        // Held across the fetch: concurrent callers of this key wait here
        // and then find the fresh value.
        let mut entry = slot.lock().await;
        if let Some((v, until)) = entry.as_ref() {
            if Instant::now() < *until {
                return Ok(v.clone());
            }
        }
        *entry = None;
        let fetched = src.fetch(key).await?;
        if let Some(lease) = &fetched.lease {
            // Do not leave a credential alive that nobody will revoke.
            let revoked = src.revoke(lease).await;
            return Err(SecretError::config(format!(
                "source `{source}`, key `{key}`: a leased (dynamic) secret is per session and cannot be cached; configure a `kind = \"vault\"` minter for it{}",
                match revoked {
                    Ok(()) => " (the lease was revoked)".to_string(),
                    Err(e) => format!(" (revoking the lease failed too: {e})"),
                }
            )));
        }
        let ttl = fetched.ttl.map_or(self.max_ttl, |t| t.min(self.max_ttl));
        let value = Arc::new(fetched.value);
        if !ttl.is_zero() {
            *entry = Some((value.clone(), Instant::now() + ttl));
        }
        Ok(value)
    }

    /// How many values are held right now (expired ones are dropped first).
    pub fn len(&self) -> usize {
        let slots = self.slots.lock().expect("cache lock");
        purge_expired(&slots);
        slots
            .values()
            .filter(|s| s.try_lock().map_or(true, |e| e.is_some()))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets one key (after its upstream value was rotated or revoked).
    pub fn invalidate(&self, source: &str, key: &str) {
        self.slots
            .lock()
            .expect("cache lock")
            .remove(&(source.to_string(), key.to_string()));
    }

    /// Forgets everything (the kill switch).
    pub fn clear(&self) {
        self.slots.lock().expect("cache lock").clear();
    }
}

/// Drops every expired value now, so none outlives its TTL in memory
/// longer than until the next cache call. A slot being fetched is skipped.
fn purge_expired(slots: &HashMap<(String, String), Slot>) {
    let now = Instant::now();
    for slot in slots.values() {
        if let Ok(mut e) = slot.try_lock() {
            if e.as_ref().is_some_and(|(_, until)| now >= *until) {
                *e = None;
            }
        }
    }
}
