//! The listeners' credentials: the static bearer token of `[tcp]
//! token_file`, and the kernel's word on who is at the other end of a unix
//! socket connection ([`UnixPeer`]). Who that makes the caller is
//! `crate::identity`'s.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use brig_core::{Error, Result};
use sha2::{Digest, Sha256};

/// Shortest token brig accepts.
pub const MIN_TOKEN_LEN: usize = 16;

/// A bearer token, kept only as its SHA-256 so comparisons take the same
/// time whatever the candidate (length included) and the secret itself is
/// never held, printed or logged.
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Result<Token> {
        let secret = secret.trim();
        if secret.len() < MIN_TOKEN_LEN {
            return Err(Error::invalid(format!(
                "the TCP bearer token is {} characters; brig needs at least {MIN_TOKEN_LEN}",
                secret.len()
            ))
            .hint("generate one with e.g. `openssl rand -hex 32`"));
        }
        Ok(Token(Sha256::digest(secret.as_bytes()).into()))
    }

    /// Read the token file; refuse one that other users can read.
    pub fn from_file(path: &Path) -> Result<Token> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::invalid(format!("cannot read token_file {}: {e}", path.display()))
                .hint("create it with a random token, mode 0600")
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::invalid(format!(
                "token_file {} is readable by other users (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ))
            .hint(format!("chmod 600 {}", path.display())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!("cannot read token_file {}: {e}", path.display()))
        })?;
        Token::new(&text).map_err(|e| e.context(format!("token_file {}", path.display())))
    }

    /// Constant-time comparison of digests.
    pub fn matches(&self, candidate: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        let diff = d
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// A unix-socket connection's peer, from SO_PEERCRED: filled in by the
/// kernel when the client connected, so a client cannot claim another uid.
/// `None` when the kernel gave nothing (then nobody is let in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixPeer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl UnixPeer {
    /// The peer of a connected stream.
    pub fn of(stream: &tokio::net::UnixStream) -> UnixPeer {
        match stream.peer_cred() {
            Ok(c) => UnixPeer {
                uid: Some(c.uid()),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "SO_PEERCRED failed; the connection is refused");
                UnixPeer {
                    uid: None,
                    pid: None,
                }
            }
        }
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for UnixPeer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        UnixPeer::of(s.io())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let t = Token::new("0123456789abcdef0123\n").unwrap();
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches(""));
        assert!(Token::new("short").is_err());
        assert!(!format!("{t:?}").contains("0123"));
    }

    #[tokio::test]
    async fn the_peer_is_who_the_kernel_says() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let p = UnixPeer::of(&a);
        // SAFETY: geteuid cannot fail.
        assert_eq!(p.uid, Some(unsafe { libc::geteuid() }));
        assert_eq!(p.pid, Some(std::process::id() as i32));
    }

    #[test]
    fn token_files_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Token::from_file(&p).unwrap_err();
        assert!(e.message.contains("readable by other users"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::from_file(&p)
            .unwrap()
            .matches("0123456789abcdef0123"));
        assert!(Token::from_file(&d.path().join("missing")).is_err());
    }
}
