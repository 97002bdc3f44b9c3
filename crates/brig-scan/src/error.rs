//! Errors that say what was wrong and what to do about it.

use std::path::PathBuf;

/// Everything that can stop a scan before it has a report.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A rules file or `[scan]` setting is malformed (TOML syntax, unknown key, ...).
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },
    /// One rule is unusable: a bad regex, a bad secretGroup, an unsupported feature.
    #[error("{origin}: rule `{rule}`: {message}")]
    Rule {
        origin: String,
        rule: String,
        message: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// git could not be run or refused the request (bad range, not a repository, ...).
    #[error("git: {0}")]
    Git(String),
}

impl ScanError {
    pub(crate) fn config(origin: &str, message: impl Into<String>) -> Self {
        ScanError::Config {
            origin: origin.to_string(),
            message: message.into(),
        }
    }
    pub(crate) fn rule(origin: &str, rule: &str, message: impl Into<String>) -> Self {
        ScanError::Rule {
            origin: origin.to_string(),
            rule: rule.to_string(),
            message: message.into(),
        }
    }
}
