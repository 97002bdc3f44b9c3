//! Forge credentials. A token is behind [`TokenSource`] so that a source
//! minting short-lived tokens just in time (a GitHub App installation token,
//! a GitLab project token) can replace the static ones without touching the
//! forges. [`Secret`] never prints its value.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{BoxFuture, ForgeError};

/// What the credential is for, so a minting source can scope it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Clone and fetch.
    Read,
    /// Push the bot branch and open the pull request.
    Write,
}

/// A secret string. `Debug` masks it and there is no `Display`: the value
/// leaves only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

/// Where a forge gets its token each time it needs one.
pub trait TokenSource: Send + Sync {
    fn token(&self, access: Access) -> BoxFuture<'_, Result<Secret, ForgeError>>;
}

/// A token known up front (tests, or a caller that minted one itself).
pub struct StaticToken(pub Secret);

impl TokenSource for StaticToken {
    fn token(&self, _: Access) -> BoxFuture<'_, Result<Secret, ForgeError>> {
        let t = self.0.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// A token read once from an environment variable of brig's own process
/// (never passed on to a sandbox).
pub struct EnvToken {
    var: String,
    value: Secret,
}

impl EnvToken {
    pub fn from_env(var: &str) -> Result<Self, ForgeError> {
        let raw = std::env::var(var).map_err(|e| {
            ForgeError::Credential(match e {
                std::env::VarError::NotPresent => {
                    format!("environment variable `{var}` (token_env) is not set")
                }
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable `{var}` (token_env) is not valid UTF-8")
                }
            })
        })?;
        let value = clean_token(&raw)
            .map_err(|why| ForgeError::Credential(format!("environment variable `{var}` {why}")))?;
        Ok(EnvToken {
            var: var.to_string(),
            value,
        })
    }

    pub fn var(&self) -> &str {
        &self.var
    }
}

impl TokenSource for EnvToken {
    fn token(&self, _: Access) -> BoxFuture<'_, Result<Secret, ForgeError>> {
        let t = self.value.clone();
        Box::pin(async move { Ok(t) })
    }
}

/// A token read from a file each time it is needed, so a rotated file takes
/// effect without a restart. The file must not be readable by group or others.
pub struct FileToken {
    path: PathBuf,
}

impl FileToken {
    /// Reads the file once now, so a missing or unsafe file fails at startup.
    pub fn open(path: &Path) -> Result<Self, ForgeError> {
        read_token_file(path)?;
        Ok(FileToken {
            path: path.to_path_buf(),
        })
    }
}

impl TokenSource for FileToken {
    fn token(&self, _: Access) -> BoxFuture<'_, Result<Secret, ForgeError>> {
        Box::pin(async move { read_token_file(&self.path) })
    }
}

fn read_token_file(path: &Path) -> Result<Secret, ForgeError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| ForgeError::Credential(format!("cannot read token_file `{shown}`: {e}")))?;
    if !meta.is_file() {
        return Err(ForgeError::Credential(format!(
            "token_file `{shown}` is not a regular file"
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ForgeError::Credential(format!(
            "token_file `{shown}` has mode {mode:04o}: a token must be readable by its owner only (chmod 600 {shown})"
        )));
    }
    let raw = std::fs::read_to_string(path)
        .map_err(|e| ForgeError::Credential(format!("cannot read token_file `{shown}`: {e}")))?;
    clean_token(&raw).map_err(|why| ForgeError::Credential(format!("token_file `{shown}` {why}")))
}

/// Trims the trailing newline editors add; refuses what cannot be a token
/// (it would break the HTTP header, or is empty).
fn clean_token(raw: &str) -> Result<Secret, &'static str> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("is empty");
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters: one token, on one line");
    }
    Ok(Secret(t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_debug_masks() {
        let s = Secret::new("ghp_supersecret");
        assert_eq!(format!("{s:?}"), "Secret([REDACTED])");
    }

    #[test]
    fn token_file_mode_and_content_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "abc123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = FileToken::open(&p).err().unwrap().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = read_token_file(&p).unwrap();
        assert_eq!(t.expose(), "abc123");
        std::fs::write(&p, "  \n").unwrap();
        let e = read_token_file(&p).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&p, "two words").unwrap();
        assert!(read_token_file(&p).is_err());
        let e = FileToken::open(&dir.path().join("missing"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read token_file"), "{e}");
    }

    #[test]
    fn env_token_missing_is_clear() {
        let e = EnvToken::from_env("BRIG_FORGE_TEST_SURELY_UNSET_VAR")
            .err()
            .unwrap();
        assert!(e
            .to_string()
            .contains("`BRIG_FORGE_TEST_SURELY_UNSET_VAR` (token_env) is not set"));
    }
}
