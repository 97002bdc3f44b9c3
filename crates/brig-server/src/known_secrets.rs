//! Every secret value brig knows, in one place, and the one redactor built
//! from them (issue 6, "Redaction"): the journal, proxy events, the git
//! gateway's events and exec records all pass through the store's
//! redactor, which this registry rebuilds whenever what brig knows changes.
//!
//! Values are grouped by owner (`artifact-urls`, `session:<id>`, ...): an
//! owner's set is replaced or forgotten whole. A value may carry an expiry;
//! it stays known for [`GRACE_MS`] after it, so late logs of it are still
//! masked. The scanner's secret patterns join brig-redact's own, and brig's
//! own API tokens (`brig_pat_…`, [`brig_identity::TOKEN_REGEX`]) are always
//! among them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use brig_core::{Error, Result};
use brig_redact::Redactor;
use brig_store::Store;

/// The redactor's rule for a leaked brig API token.
pub const API_TOKEN_RULE: &str = "brig-api-token";

/// How long an expired value stays known.
pub const GRACE_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone)]
pub struct Known {
    /// What the mask says (`[REDACTED:secret:<name>]`); never secret.
    pub name: String,
    pub value: String,
    /// Unix ms after which it is no longer valid (`None`: until forgotten).
    pub until_ms: Option<u64>,
}

pub struct KnownSecrets {
    store: Arc<Store>,
    patterns: Vec<(String, String)>,
    owners: Mutex<BTreeMap<String, Vec<Known>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl KnownSecrets {
    /// `patterns` (rule, regex) are checked here: one that does not compile
    /// is an error, not a redactor silently weaker. brig's API token
    /// pattern is added to them.
    pub fn new(store: Arc<Store>, mut patterns: Vec<(String, String)>) -> Result<KnownSecrets> {
        patterns.push((
            API_TOKEN_RULE.to_string(),
            brig_identity::TOKEN_REGEX.to_string(),
        ));
        let mut b = Redactor::builder();
        for (rule, re) in &patterns {
            b = b
                .pattern(rule.clone(), re)
                .map_err(|e| Error::invalid(format!("redactor: {e}")))?;
        }
        store.set_redactor(Arc::new(b.build()));
        Ok(KnownSecrets {
            store,
            patterns,
            owners: Mutex::new(BTreeMap::new()),
        })
    }

    /// Replace `owner`'s values (an empty list forgets it).
    pub fn set_owner(&self, owner: &str, values: Vec<Known>) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if values.is_empty() {
            owners.remove(owner);
        } else {
            owners.insert(owner.to_string(), values);
        }
        self.rebuild(&mut owners);
    }

    /// Add one value to `owner`'s.
    pub fn add(&self, owner: &str, known: Known) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.entry(owner.to_string()).or_default().push(known);
        self.rebuild(&mut owners);
    }

    /// Every known value (name, value) but `owner`'s: what a session must
    /// not send anywhere.
    pub fn values_except(&self, owner: &str) -> Vec<(String, String)> {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(o, _)| o.as_str() != owner)
            .flat_map(|(_, v)| v.iter().map(|k| (k.name.clone(), k.value.clone())))
            .collect()
    }

    /// How many values are known now (not their forms).
    pub fn len(&self) -> usize {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rebuild(&self, owners: &mut BTreeMap<String, Vec<Known>>) {
        let now = now_ms();
        for v in owners.values_mut() {
            v.retain(|k| k.until_ms.is_none_or(|u| u.saturating_add(GRACE_MS) > now));
        }
        owners.retain(|_, v| !v.is_empty());
        let mut b = Redactor::builder();
        for (rule, re) in &self.patterns {
            b = b.pattern(rule.clone(), re).expect("compiled in new");
        }
        for k in owners.values().flatten() {
            b = b.secret(k.name.clone(), k.value.clone());
        }
        self.store.set_redactor(Arc::new(b.build()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_core::event::{Event, Outcome};

    #[test]
    fn values_and_patterns_reach_the_store_and_forgotten_ones_leave() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&d.path().join("t.db")).unwrap());
        let k = KnownSecrets::new(
            store.clone(),
            vec![("acme".into(), r"acme_[a-z0-9]{10}".into())],
        )
        .unwrap();
        k.add(
            "session:s1",
            Known {
                name: "DB_PASSWORD".into(),
                value: "hunter2-but-longer".into(),
                until_ms: None,
            },
        );
        let pat = "brig_pat_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg";
        let ev = Event::new("exec.start", Outcome::Info).details(
            serde_json::json!({"argv": ["psql", "hunter2-but-longer", "acme_abcdefghij", pat]}),
        );
        store.append_events(&[ev]).unwrap();
        let text = serde_json::to_string(&store.events(None).unwrap()).unwrap();
        assert!(
            !text.contains("hunter2-but-longer")
                && !text.contains("acme_abcdefghij")
                && !text.contains(pat),
            "{text}"
        );
        assert!(
            text.contains("[REDACTED:secret:DB_PASSWORD]")
                && text.contains("[REDACTED:acme]")
                && text.contains(&format!("[REDACTED:{API_TOKEN_RULE}]")),
            "{text}"
        );
        k.set_owner("session:s1", vec![]);
        assert!(k.is_empty());
        // Expired long ago: pruned at the next rebuild.
        k.add(
            "x",
            Known {
                name: "old".into(),
                value: "old-value-123".into(),
                until_ms: Some(1),
            },
        );
        assert!(k.is_empty());
        assert!(KnownSecrets::new(store, vec![("bad".into(), "(".into())]).is_err());
    }
}
