//! [`Upstream`] for a bare repository on the local filesystem: the embedded default
//! forge and the tests. A plain `git push` (never forced, no credentials).

use std::path::{Path, PathBuf};

use crate::gitcmd::{git, run};
use crate::{BoxFuture, Upstream};

#[derive(Clone, Debug)]
pub struct LocalUpstream {
    path: PathBuf,
}

impl LocalUpstream {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalUpstream { path: path.into() }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Upstream for LocalUpstream {
    fn push<'a>(
        &'a self,
        repo: &'a Path,
        sha: &'a str,
        branch: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let mut c = git(repo, &[]);
            c.arg("push")
                .arg("--quiet")
                .arg("--no-verify")
                .arg(&self.path)
                .arg(format!("{sha}:refs/heads/{branch}"));
            let out = run(c, None).await?;
            if out.ok {
                return Ok(());
            }
            // git's rejection lines, without the `To <path>` noise.
            let text = String::from_utf8_lossy(&out.stderr);
            let why: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.starts_with('!') || l.starts_with("error:") || l.starts_with("fatal:")
                })
                .collect();
            Err(if why.is_empty() {
                format!("git push exited with {:?}", out.code)
            } else {
                why.join("; ").chars().take(400).collect()
            })
        })
    }
}
