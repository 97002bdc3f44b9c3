//! Exec requests and results, as the API and CLI see them.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Largest total argv (bytes, counting one NUL per argument) brig accepts;
/// Linux's own limit for one string is 128 KiB and for all of argv+envp is
/// a quarter of the stack limit, so anything past this fails anyway.
pub const MAX_ARGV_BYTES: usize = 256 * 1024;
pub const MAX_ARGS: usize = 4096;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Extra environment on top of the profile's clean environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox; defaults to /workspace.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Allocate a PTY of this size (rows, cols).
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
    /// Kill the command (SIGKILL to its process group) after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// For the buffered (non-streaming) API: stdin given whole.
    #[serde(default)]
    pub stdin: Option<String>,
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), Error> {
        if self.argv.is_empty() {
            return Err(Error::invalid("exec needs a command")
                .hint("e.g. brig session exec ID -- make test"));
        }
        if self.argv.len() > MAX_ARGS {
            return Err(Error::new(
                crate::ErrorKind::LimitExceeded,
                format!(
                    "argv has {} arguments; the limit is {MAX_ARGS}",
                    self.argv.len()
                ),
            )
            .hint("pass long lists through a file in /workspace instead"));
        }
        let size: usize = self.argv.iter().map(|a| a.len() + 1).sum();
        if size > MAX_ARGV_BYTES {
            return Err(Error::new(
                crate::ErrorKind::LimitExceeded,
                format!("argv is {size} bytes; the limit is {MAX_ARGV_BYTES}"),
            )
            .hint("pass large inputs through a file in /workspace or stdin instead"));
        }
        if self
            .argv
            .iter()
            .chain(self.env.iter().map(|(k, _)| k))
            .any(|a| a.contains('\0'))
        {
            return Err(Error::invalid(
                "argv and env names may not contain NUL bytes",
            ));
        }
        for (k, _) in &self.env {
            if k.is_empty() || k.contains('=') {
                return Err(Error::invalid(format!(
                    "environment name {k:?} is not valid"
                )));
            }
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                return Err(Error::invalid(format!(
                    "cwd {cwd:?} must be an absolute path inside the sandbox"
                )));
            }
        }
        Ok(())
    }
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    #[serde(default)]
    pub code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    /// brig killed it because its per-command timeout passed.
    #[serde(default)]
    pub timed_out: bool,
}

impl ExitStatus {
    /// Shell convention: the exit code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 255,
        }
    }
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Result of the buffered exec API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecResult {
    pub exec_id: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Output beyond the buffered cap was dropped (counts stay exact).
    pub truncated: bool,
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_argv_is_refused_with_the_limit() {
        let r = ExecRequest {
            argv: vec!["x".repeat(MAX_ARGV_BYTES)],
            ..Default::default()
        };
        let e = r.validate().unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::LimitExceeded);
        assert!(e.message.contains("limit"));
        assert!(ExecRequest::default().validate().is_err());
        let ok = ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn shell_codes() {
        assert_eq!(
            ExitStatus {
                code: Some(3),
                signal: None,
                timed_out: false
            }
            .shell_code(),
            3
        );
        assert_eq!(
            ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: true
            }
            .shell_code(),
            137
        );
    }
}
