//! `kind = "file"`: files in a directory that only brig can read.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{BoxFuture, Fetched, SecretError, SecretSource, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Keys are file names (or relative paths) below this directory.
    pub dir: PathBuf,
    /// Drop one trailing newline (`echo token > file` writes one).
    #[serde(default = "yes")]
    pub trim_newline: bool,
}

fn yes() -> bool {
    true
}

/// The largest secret file brig reads.
const MAX_FILE: u64 = 1 << 20;

/// Reads a file that must be a regular file (not a symlink), owned by
/// brig's user, and neither group- nor other-accessible: a secret that other
/// users can read has already leaked, and brig refuses to pretend
/// otherwise. The error names the path and the fix, never content.
pub(crate) fn read_private(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                format!("`{shown}` is a symlink; point the configuration at the file itself")
            } else {
                format!("cannot open `{shown}`: {e}")
            }
        })?;
    let md = f
        .metadata()
        .map_err(|e| format!("cannot stat `{shown}`: {e}"))?;
    if !md.is_file() {
        return Err(format!("`{shown}` is not a regular file"));
    }
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "`{shown}` has mode {:04o}: a secret file must not be group- or other-accessible; run `chmod 600 {shown}`",
            md.mode() & 0o7777
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if md.uid() != me {
        return Err(format!(
            "`{shown}` is owned by uid {}, not brig's uid {me}; another user could replace it",
            md.uid()
        ));
    }
    if md.len() > MAX_FILE {
        return Err(format!(
            "`{shown}` is larger than 1 MiB; that is not a secret"
        ));
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    f.take(MAX_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    Ok(buf)
}

pub(crate) fn trim_newline(v: &mut Vec<u8>) {
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
}

pub struct FileSource {
    upstream: String,
    dir: PathBuf,
    trim_newline: bool,
}

impl FileSource {
    pub fn new(name: &str, c: &FileConfig) -> Result<Self, SecretError> {
        if !c.dir.is_absolute() {
            return Err(SecretError::config(format!(
                "[secrets.sources.{name}] dir `{}` must be an absolute path",
                c.dir.display()
            )));
        }
        Ok(FileSource {
            upstream: format!("file source `{name}`"),
            dir: c.dir.clone(),
            trim_newline: c.trim_newline,
        })
    }
}

impl SecretSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            super::check_key(&self.upstream, key, true, "")?;
            let path = self.dir.join(key);
            let mut v = match read_private(&path) {
                Ok(v) => v,
                Err(message) if std::fs::symlink_metadata(&path).is_err() => {
                    return Err(SecretError::NotFound {
                        upstream: self.upstream.clone(),
                        key: key.to_string(),
                        message,
                    })
                }
                Err(e) => return Err(SecretError::config(format!("{}: {e}", self.upstream))),
            };
            if self.trim_newline {
                trim_newline(&mut v);
            }
            Ok(Fetched {
                value: SecretValue::new(v),
                ttl: None,
                lease: None,
            })
        })
    }
}
