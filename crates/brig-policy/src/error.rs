//! Errors and diagnostics. A policy brig cannot load is an error that names
//! the file, line and column and says what is wrong; it is never dropped.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How bad a [`Diagnostic`] is: an `Error` stops the engine from loading,
/// a `Warning` is reported by `brig policy lint` only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a policy source, with a 1-based line and column (0 when
/// the finding is about the whole source).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub source: String,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    /// The policy's `@id` when the finding is about one policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}", self.source, self.line, self.col)?;
        if let Some(p) = &self.policy {
            write!(f, " in policy {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Policies that do not parse or do not validate against brig's schema.
    #[error("invalid policy: {}", list(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("brig's embedded Cedar schema does not load (a bug in brig-policy): {0}")]
    Schema(String),
    #[error("profile {profile:?}: unknown template {template:?} (the shipped templates are read-only, pr, privileged)")]
    UnknownTemplate { profile: String, template: String },
    #[error("cannot read policy file {path}: {error} (check [policy] in brig.toml)")]
    Read { path: String, error: std::io::Error },
    #[error("[policy.sensitive] {field}.{label}: pattern {pattern:?}: {message}")]
    Sensitivity {
        field: String,
        label: String,
        pattern: String,
        message: String,
    },
    /// A session whose agent cannot be decided for (unknown profile, or a
    /// principal that does not fit the schema).
    #[error("session {session}: {message}")]
    Session { session: String, message: String },
    #[error("[policy] protected_branches: pattern {pattern:?}: {message}")]
    ProtectedBranches { pattern: String, message: String },
}

fn list(d: &[Diagnostic]) -> String {
    let errors: Vec<String> = d
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    errors.join("; ")
}
