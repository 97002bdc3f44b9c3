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

fn uuidish() -> String {
    use rand::Rng;
    let v: u128 = rand::thread_rng().gen();
    format!("{v:032x}")
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
