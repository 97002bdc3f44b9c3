//! Repo access of a session (issue 5; docs/GIT.md): the checkout at session
//! creation, and the session's git record.
//!
//! Per session, under `<data_dir>/git/<session>/`:
//! - `gateway.git`: the gateway repository (brig-git) the sandbox's
//!   `origin` reaches through the egress channel;
//! - `work`: the workspace tree, only while the sandbox is being made (it
//!   is copied into /workspace, then removed).
//!
//! The directory goes when the session ends.

use std::path::{Path, PathBuf};

use brig_core::session::{CreateSession, SessionInfo};
use brig_core::{Error, ErrorKind, Result, SessionId};
use brig_git::checkout::{self, CheckoutRequest, Pinned, Source};
use serde::{Deserialize, Serialize};

use crate::git_config::GitConfig;

/// Where a long wait tells what it is doing (a line at a time).
pub type Progress = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// The git directory under the data dir.
pub const DIR: &str = "git";

/// What a session's checkout pinned, and where its pushes may go: kept in
/// the store (`session_git`), shown by `brig session show`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionGit {
    /// The source as shown to people (a path, or `NAME` of `[repos]`).
    pub source: String,
    /// The repository's name in the gateway URL.
    pub name: String,
    #[serde(flatten)]
    pub pinned: Pinned,
    /// `origin` inside the sandbox.
    pub origin: String,
    /// Branches the session may push: this prefix and anything below.
    pub bot_prefix: String,
    pub author_name: String,
    pub author_email: String,
    /// `[repos.NAME]` accepted pushes go to; absent: the local source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// A session's checkout, planned from the request before anything is made.
pub struct Plan {
    pub req: CheckoutRequest,
    pub source_display: String,
    /// `[repos.NAME]` the upstream is; `None`: the local source itself.
    pub upstream: Option<String>,
}

/// What `--repo` names.
pub enum RepoArg {
    /// A path on brig's host (a git repository, or a directory to copy).
    Path(PathBuf),
    /// A `[repos.NAME]` of brig.toml (its forge is the session's: see
    /// [`named_source`]).
    Named(String),
}

/// `Some` when the request's `--repo` is a git source to check out; `None`
/// when it is a plain directory (copied as before) or absent. Flags that
/// only apply to git sources are refused for anything else.
pub async fn plan(
    cfg: &GitConfig,
    id: &SessionId,
    req: &CreateSession,
    repo: Option<&RepoArg>,
) -> Result<Option<Plan>> {
    let git_flags = req.git_ref.is_some() || !req.sparse.is_empty() || req.depth.is_some();
    let (source, name, upstream) = match repo {
        None => {
            if git_flags {
                return Err(Error::invalid(
                    "--ref, --sparse and --depth need --repo naming a git repository",
                ));
            }
            return Ok(None);
        }
        Some(RepoArg::Path(path)) if !checkout::is_repository(path) => {
            if git_flags {
                return Err(Error::invalid(format!(
                    "--repo {} is not a git repository, so --ref, --sparse and --depth do not apply",
                    path.display()
                ))
                .hint("pass a git working tree or bare repository, or drop those flags to copy the directory as it is"));
            }
            return Ok(None);
        }
        Some(RepoArg::Path(path)) => (Source::local(path), repo_name(path), None),
        Some(RepoArg::Named(name)) => {
            // The source is the session's forge's, resolved once the
            // session exists (its read token may be minted for it).
            let source = Source {
                url: String::new(),
                env: vec![],
                display: name.clone(),
            };
            (source, name.clone(), Some(name.clone()))
        }
    };
    let (author_name, author_email) = cfg.author_for(id.as_str());
    let display = source.display.clone();
    let r = CheckoutRequest {
        source,
        reference: req.git_ref.clone(),
        depth: req.depth.unwrap_or(cfg.depth),
        sparse: req
            .sparse
            .iter()
            .map(|s| s.trim_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        origin_url: format!("http://{}/{name}.git", cfg.host),
        name,
        author_name,
        author_email,
    };
    checkout::validate(&r)?;
    Ok(Some(Plan {
        req: r,
        source_display: display,
        upstream,
    }))
}

/// Where brig's host side fetches a `[repos.NAME]` from: the forge's URL,
/// with its read credentials in git's environment only (never a URL, an
/// argument or the sandbox).
pub async fn named_source(name: &str, forge: &dyn brig_forge::Forge) -> Result<Source> {
    let remote = forge.fetch_source().await.map_err(|e| {
        let e: Error = e.into();
        e.context(format!("--repo {name}"))
    })?;
    let mut cmd = std::process::Command::new("git");
    remote.configure(&mut cmd);
    let env = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_os_string(), v.to_os_string())))
        .collect();
    Ok(Source {
        url: remote.url().to_string(),
        env,
        display: format!("{name} ({})", forge.describe()),
    })
}

/// The gateway URL's repository name from a path: its last component
/// without `.git`, reduced to `[A-Za-z0-9._-]`.
pub fn repo_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = base.strip_suffix(".git").unwrap_or(&base);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean
        .trim_start_matches('.')
        .chars()
        .take(100)
        .collect::<String>();
    if clean.is_empty() {
        "repo".into()
    } else {
        clean
    }
}

pub fn session_dir(data_dir: &Path, id: &SessionId) -> PathBuf {
    data_dir.join(DIR).join(id.as_str())
}

pub fn gateway_dir(data_dir: &Path, id: &SessionId) -> PathBuf {
    session_dir(data_dir, id).join("gateway.git")
}

/// Run the checkout (blocking git, on a blocking thread): the gateway
/// repository and the workspace tree, under the session's git directory
/// (root's alone: 0700). On error nothing is left.
pub async fn run_checkout(
    data_dir: &Path,
    id: &SessionId,
    plan: &Plan,
    bot_prefix: String,
    report: Option<Progress>,
) -> Result<(SessionGit, PathBuf)> {
    let dir = session_dir(data_dir, id);
    let gateway = dir.join("gateway.git");
    let work = dir.join("work");
    let req = plan.req.clone();
    let source = plan.source_display.clone();
    let upstream = plan.upstream.clone();
    let sid = id.to_string();
    let made = tokio::task::spawn_blocking(move || -> Result<SessionGit> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        let progress = |line: &str| {
            tracing::debug!(session = %sid, "checkout: {line}");
            if let Some(r) = &report {
                r(line)
            }
        };
        match checkout::checkout(&req, &gateway, &work, &progress) {
            Ok(pinned) => Ok(SessionGit {
                source,
                name: req.name.clone(),
                pinned,
                origin: req.origin_url.clone(),
                bot_prefix,
                author_name: req.author_name.clone(),
                author_email: req.author_email.clone(),
                upstream,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e.context("--repo checkout"))
            }
        }
    })
    .await
    .map_err(|e| Error::internal(format!("checkout task failed: {e}")))??;
    Ok((made, session_dir(data_dir, id).join("work")))
}

/// The upstream of a session checked out from a local source: the
/// repository itself (the embedded forge: its git directory, PR records
/// beside it).
pub fn local_forge(g: &SessionGit) -> Result<std::sync::Arc<dyn brig_forge::Forge>> {
    let dir = checkout::git_dir(Path::new(&g.source));
    let f = brig_forge::LocalForge::open(&dir).map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("the session's upstream {}: {e}", g.source),
        )
    })?;
    Ok(std::sync::Arc::new(f))
}

/// Remove a session's git directory (its end, or a failed start).
pub fn remove(data_dir: &Path, id: &SessionId) -> Vec<String> {
    let dir = session_dir(data_dir, id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => vec![],
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => vec![format!("cannot remove {}: {e}", dir.display())],
    }
}

/// The `git.checkout` event of a session.
pub fn checkout_event(info: &SessionInfo, g: &SessionGit) -> brig_core::event::Event {
    let mut ev =
        crate::manager::session_event(info, "git.checkout", brig_core::event::Outcome::Success);
    ev.branch = Some(g.pinned.base_branch.clone());
    ev.details(serde_json::json!({
        "source": g.source, "commit": g.pinned.commit, "requested": g.pinned.requested,
        "depth": g.pinned.depth, "sparse": g.pinned.sparse, "origin": g.origin,
        "bot_prefix": g.bot_prefix,
    }))
}

/// A session's git record from the store, when it has one.
pub fn from_record(v: Option<serde_json::Value>) -> Result<Option<SessionGit>> {
    v.map(|v| {
        serde_json::from_value(v)
            .map_err(|e| Error::new(ErrorKind::Internal, format!("session git record: {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_are_url_safe() {
        assert_eq!(repo_name(Path::new("/src/my repo.git")), "my-repo");
        assert_eq!(repo_name(Path::new("/src/.hidden")), "hidden");
        assert_eq!(repo_name(Path::new("/")), "repo");
        assert_eq!(repo_name(Path::new("/x/api")), "api");
    }
}
