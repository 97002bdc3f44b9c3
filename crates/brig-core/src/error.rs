//! One error type for brig, with a kind that maps to a CLI exit code and an
//! HTTP status, a message that says what was wrong and a hint that says what
//! to do about it.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request or flags were malformed or out of range.
    InvalidInput,
    /// The thing named does not exist.
    NotFound,
    /// The thing exists but is in the wrong state (e.g. exec on a destroyed session).
    Conflict,
    /// A limit or cap was exceeded (upload size, argv size, ...).
    LimitExceeded,
    /// A guard could not be applied; brig fails closed.
    GuardUnavailable,
    /// The sandbox runtime failed.
    Runtime,
    /// Authentication failed or is missing.
    Unauthorized,
    /// Policy denied it.
    Denied,
    /// The control plane cannot be reached.
    Unavailable,
    /// A deadline passed.
    Timeout,
    /// Anything else: a bug or an I/O failure on the host.
    Internal,
}

impl ErrorKind {
    /// Exit codes of brig's own commands (documented in docs/CLI.md).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::InvalidInput => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::LimitExceeded => 5,
            ErrorKind::GuardUnavailable => 6,
            ErrorKind::Runtime => 7,
            ErrorKind::Unauthorized => 8,
            ErrorKind::Denied => 9,
            ErrorKind::Unavailable => 10,
            ErrorKind::Timeout => 11,
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Denied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::LimitExceeded => 413,
            ErrorKind::GuardUnavailable => 424,
            ErrorKind::Internal | ErrorKind::Runtime => 500,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    pub fn from_http_status(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::InvalidInput,
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Denied,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::LimitExceeded,
            424 => ErrorKind::GuardUnavailable,
            503 => ErrorKind::Unavailable,
            504 => ErrorKind::Timeout,
            _ => ErrorKind::Internal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
    pub fn runtime(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Runtime, message)
    }
    /// A guard (isolation layer) could not be applied: the action stops.
    pub fn guard(layer: &str, why: impl fmt::Display) -> Self {
        Error::new(
            ErrorKind::GuardUnavailable,
            format!("isolation layer '{layer}' could not be applied: {why}"),
        )
        .hint(
            "run `brig doctor` to see what this host supports; brig never starts a weaker sandbox",
        )
    }
    /// Prefix the message with context, keeping kind and hint.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::internal(e.to_string())
    }
}

/// The JSON body of every API error: `{"error": {"kind", "message", "hint"}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_http_status() {
        for k in [
            ErrorKind::InvalidInput,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::LimitExceeded,
            ErrorKind::GuardUnavailable,
            ErrorKind::Unauthorized,
            ErrorKind::Denied,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
        ] {
            assert_eq!(ErrorKind::from_http_status(k.http_status()), k);
        }
    }

    #[test]
    fn display_includes_hint() {
        let e = Error::invalid("bad").hint("do this");
        assert_eq!(e.to_string(), "bad (hint: do this)");
    }
}
