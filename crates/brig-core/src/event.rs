//! The one event schema brig records everything in. The journal issue makes
//! it tamper-evident; this is the shape every part writes.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
    Info,
}

/// One event. `action` is a dotted verb (`session.create`, `exec.start`,
/// `exec.exit`, `session.destroy`, `sandbox.blocked`, ...).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Monotonic sequence number assigned by the store.
    #[serde(default)]
    pub seq: i64,
    pub id: String,
    /// RFC 3339 UTC with nanoseconds.
    pub time: String,
    #[serde(default)]
    pub session: Option<String>,
    /// The human behind the action.
    #[serde(default)]
    pub human: Option<String>,
    /// The agent principal, `agent:<session>`.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    pub action: String,
    pub outcome: Outcome,
    /// The rule that decided it (a policy id, a limit, a guard).
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub details: serde_json::Value,
    /// The hash of the event before this one in the journal (hex sha256;
    /// 64 zeros for the first). Set by the store; see brig-audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// sha256(prev_hash || canonical JSON of this event without the two
    /// hash fields), hex. Set by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl Event {
    pub fn new(action: impl Into<String>, outcome: Outcome) -> Self {
        Event {
            seq: 0,
            id: format!("e-{}", uuidish()),
            time: now_rfc3339(),
            session: None,
            human: None,
            agent: None,
            task: None,
            repo: None,
            branch: None,
            action: action.into(),
            outcome,
            rule: None,
            details: serde_json::Value::Null,
            prev_hash: None,
            hash: None,
        }
    }
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// 32 hex digits: 48 bits of milliseconds since the epoch, then 80 random
/// bits (the layout of a UUIDv7). Time-ordered ids land at the end of the
/// journal's unique index instead of at random places in it, which keeps
/// appends fast as the journal grows; the random part keeps them unique.
fn uuidish() -> String {
    use rand::Rng;
    let ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
    let r: u128 = rand::thread_rng().gen::<u128>() & ((1u128 << 80) - 1);
    format!("{:012x}{r:020x}", ms & 0xffff_ffff_ffff)
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_unique_and_time_ordered() {
        let a = Event::new("x", Outcome::Info).id;
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = Event::new("x", Outcome::Info).id;
        assert!(a < b, "{a} !< {b}");
        assert_eq!(a.len(), 2 + 32);
        assert!(a.starts_with("e-") && a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|_| Event::new("x", Outcome::Info).id)
            .collect();
        assert_eq!(many.len(), 10_000);
    }
}
