//! The embedded default forge: a local bare repository is the upstream, and
//! brig keeps the pull request records itself, one JSON file each, in
//! `<bare>/brig/pulls/<n>.json` (git ignores the extra directory).
//!
//! Numbers are allocated by hard-linking a fully written temporary file to
//! `<n>.json`: `link(2)` fails if the name exists (O_EXCL semantics), so two
//! concurrent opens never share a number and a reader never sees half a
//! record. The "one open PR per head branch" check runs under an `flock` on
//! `<bare>/brig/pulls.lock`, so two opens for the same head cannot both pass.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::git::{absolute, git_query};
use crate::{
    Access, BoxFuture, Forge, ForgeError, GitRemote, NewPullRequest, PrState, PullRequest,
};

const FORGE: &str = "local forge";

/// The on-disk record: the same fields as every forge's pull request.
#[derive(Serialize, Deserialize)]
struct Record {
    version: u32,
    #[serde(flatten)]
    pr: PullRequest,
    created_unix: u64,
    updated_unix: u64,
}

pub struct LocalForge {
    bare: PathBuf,
}

impl LocalForge {
    /// An existing bare repository.
    pub fn open(path: &Path) -> Result<Self, ForgeError> {
        let bare = absolute(path)?;
        let looks_bare = bare.join("HEAD").is_file()
            && bare.join("objects").is_dir()
            && bare.join("refs").is_dir();
        if !looks_bare {
            return Err(ForgeError::Config(format!(
                "`{}` is not a bare git repository (no HEAD, objects/ and refs/); create one with `git init --bare {}`",
                bare.display(),
                bare.display()
            )));
        }
        Ok(LocalForge { bare })
    }

    /// Opens the bare repository at `path`, creating it (`git init --bare`)
    /// when the directory does not exist yet.
    /// (Synchronous: a one-time startup step.)
    pub fn open_or_init(path: &Path, initial_branch: &str) -> Result<Self, ForgeError> {
        if !path.exists() {
            crate::validate_branch(initial_branch).map_err(ForgeError::Config)?;
            let out = std::process::Command::new("git")
                .arg("init")
                .arg("--bare")
                .arg(format!("--initial-branch={initial_branch}"))
                .arg(path)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .map_err(|e| {
                    ForgeError::Io(format!("cannot start git: {e} (is git installed?)"))
                })?;
            if !out.status.success() {
                return Err(ForgeError::Io(format!(
                    "git init --bare {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Self::open(path)
    }

    /// The bare repository.
    pub fn path(&self) -> &Path {
        &self.bare
    }

    fn pulls_dir(&self) -> PathBuf {
        self.bare.join("brig").join("pulls")
    }

    fn url_of(&self, number: u64) -> String {
        format!("file://{}#pull/{number}", self.bare.display())
    }

    /// The tip of `refs/heads/<branch>`, or `None` when it does not exist.
    async fn branch_tip(&self, branch: &str) -> Result<Option<String>, ForgeError> {
        git_query(
            &self.bare,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
        )
        .await
    }

    /// Every record, lowest number first.
    pub async fn list_pull_requests(&self) -> Result<Vec<PullRequest>, ForgeError> {
        let dir = self.pulls_dir();
        tokio::task::spawn_blocking(move || Ok(read_all(&dir)?.into_iter().map(|r| r.pr).collect()))
            .await
            .map_err(|e| ForgeError::Io(format!("PR records task failed: {e}")))?
    }

    /// Records a decision taken elsewhere (a human closed or merged it).
    /// A merged record is final.
    pub async fn set_state(&self, number: u64, state: PrState) -> Result<PullRequest, ForgeError> {
        let dir = self.pulls_dir();
        let url = self.url_of(number);
        tokio::task::spawn_blocking(move || {
            let _lock = lock(&dir)?;
            let path = dir.join(format!("{number}.json"));
            let mut rec = read_record(&path)?.ok_or_else(|| ForgeError::NotFound {
                forge: FORGE,
                what: format!("pull request #{number} ({url})"),
            })?;
            if rec.pr.state == PrState::Merged && state != PrState::Merged {
                return Err(ForgeError::Invalid(format!(
                    "pull request #{number} is merged; a merged pull request cannot be reopened or closed"
                )));
            }
            rec.pr.state = state;
            rec.updated_unix = now();
            let tmp = write_temp(&dir, &rec)?;
            std::fs::rename(&tmp, &path).map_err(|e| io_err(format!("replacing {}", path.display()), e))?;
            Ok(rec.pr)
        })
        .await
        .map_err(|e| ForgeError::Io(format!("PR records task failed: {e}")))?
    }

    async fn open_pr(&self, req: &NewPullRequest) -> Result<PullRequest, ForgeError> {
        req.validate()?;
        let repo = self.bare.display().to_string();
        let head_sha =
            self.branch_tip(&req.head)
                .await?
                .ok_or_else(|| ForgeError::BranchNotFound {
                    forge: FORGE,
                    repo: repo.clone(),
                    branch: req.head.clone(),
                })?;
        let base_sha =
            self.branch_tip(&req.base)
                .await?
                .ok_or_else(|| ForgeError::BranchNotFound {
                    forge: FORGE,
                    repo: repo.clone(),
                    branch: req.base.clone(),
                })?;
        // GitHub's "No commits between": nothing on head that base lacks.
        if git_query(
            &self.bare,
            &["merge-base", "--is-ancestor", &head_sha, &base_sha],
        )
        .await?
        .is_some()
        {
            return Err(ForgeError::Rejected {
                forge: FORGE,
                status: 422,
                message: format!(
                    "no commits between `{}` and `{}`: the head branch has nothing to merge",
                    req.base, req.head
                ),
            });
        }
        let dir = self.pulls_dir();
        let req = req.clone();
        let bare = self.bare.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
            let _lock = lock(&dir)?;
            let existing = read_all(&dir)?;
            if let Some(open) = existing
                .iter()
                .find(|r| r.pr.state == PrState::Open && r.pr.head == req.head)
            {
                return Err(ForgeError::AlreadyExists {
                    forge: FORGE,
                    head: req.head.clone(),
                    existing: Some(format!("#{} {}", open.pr.number, open.pr.url)),
                });
            }
            let mut number = existing.iter().map(|r| r.pr.number).max().unwrap_or(0) + 1;
            let t = now();
            loop {
                let rec = Record {
                    version: 1,
                    pr: PullRequest {
                        number,
                        url: format!("file://{}#pull/{number}", bare.display()),
                        title: req.title.clone(),
                        body: req.body.clone(),
                        head: req.head.clone(),
                        base: req.base.clone(),
                        state: PrState::Open,
                        head_sha: Some(head_sha.clone()),
                    },
                    created_unix: t,
                    updated_unix: t,
                };
                let tmp = write_temp(&dir, &rec)?;
                let target = dir.join(format!("{number}.json"));
                let linked = std::fs::hard_link(&tmp, &target);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        tracing::info!(number, head = %req.head, base = %req.base, "local forge: pull request opened");
                        return Ok(rec.pr);
                    }
                    // Taken by a writer outside our lock (another host on a
                    // shared directory): the next number.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => number += 1,
                    Err(e) => return Err(io_err(format!("creating {}", target.display()), e)),
                }
            }
        })
        .await
        .map_err(|e| ForgeError::Io(format!("PR records task failed: {e}")))?
    }

    async fn get_pr(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let path = self.pulls_dir().join(format!("{number}.json"));
        let rec = tokio::task::spawn_blocking(move || read_record(&path))
            .await
            .map_err(|e| ForgeError::Io(format!("PR records task failed: {e}")))??;
        let mut pr = rec
            .ok_or_else(|| ForgeError::NotFound {
                forge: FORGE,
                what: format!("pull request #{number} ({})", self.url_of(number)),
            })?
            .pr;
        // Like a forge: an open PR's head is the branch's current tip.
        if pr.state == PrState::Open {
            if let Some(tip) = self.branch_tip(&pr.head).await? {
                pr.head_sha = Some(tip);
            }
        }
        Ok(pr)
    }
}

impl Forge for LocalForge {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn describe(&self) -> String {
        format!("local bare repository {}", self.bare.display())
    }

    fn git_remote(&self, _: Access) -> BoxFuture<'_, Result<GitRemote, ForgeError>> {
        let remote = GitRemote::new(self.bare.display().to_string(), "file");
        Box::pin(async move { Ok(remote) })
    }

    fn open_pull_request<'a>(
        &'a self,
        req: &'a NewPullRequest,
    ) -> BoxFuture<'a, Result<PullRequest, ForgeError>> {
        Box::pin(self.open_pr(req))
    }

    fn get_pull_request(&self, number: u64) -> BoxFuture<'_, Result<PullRequest, ForgeError>> {
        Box::pin(self.get_pr(number))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An exclusive `flock` on `<pulls>/../pulls.lock`, released on drop.
fn lock(pulls: &Path) -> Result<File, ForgeError> {
    std::fs::create_dir_all(pulls)
        .map_err(|e| io_err(format!("creating {}", pulls.display()), e))?;
    let path = pulls.with_file_name("pulls.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own; it is released when `f` closes.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(io_err(
            format!("locking {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

fn write_temp(dir: &Path, rec: &Record) -> Result<PathBuf, ForgeError> {
    let tmp = dir.join(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_err(format!("creating {}", tmp.display()), e))?;
    let json = serde_json::to_vec_pretty(rec)
        .map_err(|e| ForgeError::Io(format!("encoding a PR record: {e}")))?;
    f.write_all(&json)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(format!("writing {}", tmp.display()), e))?;
    Ok(tmp)
}

fn read_record(path: &Path) -> Result<Option<Record>, ForgeError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("reading {}", path.display()), e)),
    };
    // A record brig cannot read is an error, never "no such PR".
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        ForgeError::Io(format!(
            "PR record {} is corrupt ({e}); fix or remove it",
            path.display()
        ))
    })
}

fn read_all(dir: &Path) -> Result<Vec<Record>, ForgeError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_record = name
            .strip_suffix(".json")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_record {
            if let Some(r) = read_record(&entry.path())? {
                out.push(r);
            }
        }
    }
    out.sort_by_key(|r| r.pr.number);
    Ok(out)
}
