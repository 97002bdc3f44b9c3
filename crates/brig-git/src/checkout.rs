//! Pinned, shallow, optionally sparse checkout of a session's repository
//! (issue 5, "In"; docs/GIT.md, "Checkout").
//!
//! Two repositories come out of one checkout, both on brig's side:
//! - the session's **gateway repository** (bare): the pinned commit at
//!   depth `depth`, on the base branch, nothing else. The git gateway
//!   serves the sandbox's fetches and receives its pushes here.
//! - the **workspace tree**: a shallow clone of the gateway repository
//!   (partial, `blob:none`, and sparse when directories are named), whose
//!   `origin` is the gateway's URL as the sandbox sees it. It is copied
//!   into `/workspace` whole.
//!
//! The ref a user names is resolved to a SHA once (`git ls-remote`), and
//! that SHA is what is fetched and recorded: a branch moving upstream while
//! the session lives changes nothing.
//!
//! Every git run here is isolated from the host user's and the system's git
//! configuration (no `insteadOf`, no hooks, no credential helpers that the
//! operator did not pass): what shapes a checkout is its request.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use brig_core::{Error, ErrorKind, Result};

/// Where a session's repository comes from, as brig's host side reaches it.
#[derive(Clone, Debug)]
pub struct Source {
    /// A local path (a working tree or a bare repository) or a URL.
    pub url: String,
    /// Extra environment for git (a forge's read credentials: never argv,
    /// never the sandbox).
    pub env: Vec<(OsString, OsString)>,
    /// What to say in errors (never a URL with credentials in it).
    pub display: String,
}

impl Source {
    pub fn local(path: &Path) -> Source {
        Source {
            url: path.display().to_string(),
            env: vec![],
            display: path.display().to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CheckoutRequest {
    pub source: Source,
    /// A branch, tag or full commit SHA; `None`: the source's HEAD.
    pub reference: Option<String>,
    /// History depth (≥ 1); 1 = the pinned commit alone.
    pub depth: u32,
    /// Cone-mode sparse directories; empty = the whole tree.
    pub sparse: Vec<String>,
    /// The repository's name in the gateway URL (`<name>.git`).
    pub name: String,
    /// `origin` as the sandbox sees it (the gateway).
    pub origin_url: String,
    /// The session's author identity, set in the workspace's git config.
    pub author_name: String,
    pub author_email: String,
}

/// What a checkout pinned.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    /// The commit everything is at.
    pub commit: String,
    /// The base branch the gateway repository holds the commit on (the ref
    /// asked for when it is a branch, else the source's default branch, else
    /// `main`).
    pub base_branch: String,
    /// What the user asked for (`HEAD` when nothing).
    pub requested: String,
    pub depth: u32,
    pub sparse: Vec<String>,
}

/// Longest sparse list and entry accepted (the cone set is a command line).
const MAX_SPARSE: usize = 256;
const MAX_DEPTH: u32 = 1_000_000;

/// Check a request's shape before anything touches the disk.
pub fn validate(req: &CheckoutRequest) -> Result<()> {
    if req.depth == 0 || req.depth > MAX_DEPTH {
        return Err(Error::invalid(format!(
            "depth {} is out of range (1..={MAX_DEPTH})",
            req.depth
        ))
        .hint("pass --depth 1 for the pinned commit alone"));
    }
    if let Some(r) = &req.reference {
        check_reference(r)?;
    }
    if req.sparse.len() > MAX_SPARSE {
        return Err(Error::invalid(format!(
            "--sparse names {} directories; at most {MAX_SPARSE}",
            req.sparse.len()
        )));
    }
    for d in &req.sparse {
        check_sparse_dir(d)?;
    }
    if req.name.is_empty()
        || req.name.len() > 100
        || !req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || req.name.starts_with('.')
    {
        return Err(Error::invalid(format!(
            "repository name {:?} must be 1-100 characters of [A-Za-z0-9._-], not starting with '.'",
            req.name
        )));
    }
    Ok(())
}

/// A ref name git would accept and that cannot be read as an option.
fn check_reference(r: &str) -> Result<()> {
    let bad = r.is_empty()
        || r.len() > 255
        || r.starts_with('-')
        || r.contains("..")
        || r.contains("@{")
        || r.ends_with('/')
        || r.ends_with(".lock")
        || r.bytes()
            .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b));
    if bad {
        return Err(
            Error::invalid(format!("{r:?} is not a valid git ref or commit")).hint(
                "pass a branch (main), a tag (v1.2.0) or a full 40-character commit SHA with --ref",
            ),
        );
    }
    Ok(())
}

fn check_sparse_dir(d: &str) -> Result<()> {
    let bad = d.is_empty()
        || d.len() > 4096
        || d.starts_with('/')
        || d.starts_with('-')
        || d.starts_with('!')
        || d.split('/').any(|c| c == ".." || c == "." || c == ".git")
        || d.bytes()
            .any(|b| b.is_ascii_control() || b"*?[\\".contains(&b));
    if bad {
        return Err(Error::invalid(format!(
            "sparse directory {d:?} must be a relative directory path without '..', '.git' or glob characters"
        ))
        .hint("name directories of the repository, e.g. --sparse pkg/a,pkg/b"));
    }
    Ok(())
}

fn is_full_sha(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A git command with none of the host's configuration and no prompts.
fn git(env: &[(OsString, OsString)]) -> Command {
    let mut c = Command::new("git");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GIT_") {
            c.env_remove(k);
        }
    }
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env("LC_ALL", "C")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "protocol.ext.allow=never",
        ])
        .stdin(Stdio::null());
    c.envs(env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())));
    c
}

/// Run git; on failure an error naming `what` and git's own last words
/// (with `display` in place of the URL, so no credential leaks through it).
fn run(mut c: Command, what: &str, src: &Source) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| Error::internal(format!("{what}: cannot run git: {e}")).hint("install git"))?;
    if !out.status.success() {
        return Err(git_failure(
            what,
            &String::from_utf8_lossy(&out.stderr),
            src,
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn git_failure(what: &str, stderr: &str, src: &Source) -> Error {
    let mut msg = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("hint:"))
        .unwrap_or("git failed")
        .trim_start_matches("fatal: ")
        .trim_start_matches("error: ")
        .to_string();
    if src.url != src.display && !src.url.is_empty() {
        msg = msg.replace(&src.url, &src.display);
    }
    Error::new(
        ErrorKind::InvalidInput,
        format!("{what} ({}): {msg}", src.display),
    )
}

/// Resolve `reference` on the source to (commit, base branch), once.
pub fn resolve(src: &Source, reference: Option<&str>) -> Result<(String, String)> {
    if let Some(r) = reference {
        check_reference(r)?;
    }
    let asked = reference.unwrap_or("HEAD");
    if is_full_sha(asked) {
        // A commit: its branch is the source's default one.
        let (_, base) = resolve(src, None).unwrap_or((String::new(), "main".into()));
        return Ok((asked.to_ascii_lowercase(), base));
    }
    let mut c = git(&src.env);
    c.args(["ls-remote", "--symref", "--"]).arg(&src.url);
    if asked == "HEAD" {
        c.arg("HEAD");
    } else {
        c.args([
            format!("refs/heads/{asked}"),
            format!("refs/tags/{asked}"),
            format!("refs/tags/{asked}^{{}}"),
            asked.to_string(),
        ]);
    }
    let out = run(c, "cannot read the repository's refs", src)?;
    let mut head_branch = None;
    let mut found: Vec<(String, String)> = vec![];
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("ref: ") {
            if let Some((target, _)) = rest.split_once('\t') {
                head_branch = target.strip_prefix("refs/heads/").map(str::to_string);
            }
            continue;
        }
        if let Some((sha, name)) = line.split_once('\t') {
            found.push((sha.to_string(), name.to_string()));
        }
    }
    let pick = |name: &str| {
        found
            .iter()
            .find(|(_, n)| n == name)
            .map(|(s, _)| s.clone())
    };
    if asked == "HEAD" {
        let sha = pick("HEAD").ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "repository {} has no commits (HEAD points nowhere)",
                    src.display
                ),
            )
            .hint("commit something first, or pass --ref BRANCH")
        })?;
        return Ok((sha, head_branch.unwrap_or_else(|| "main".into())));
    }
    if let Some(sha) = pick(&format!("refs/heads/{asked}")) {
        return Ok((sha, asked.to_string()));
    }
    // An annotated tag: the commit it peels to.
    let tag =
        pick(&format!("refs/tags/{asked}^{{}}")).or_else(|| pick(&format!("refs/tags/{asked}")));
    let full = pick(asked);
    match tag.or(full) {
        Some(sha) => {
            let (_, base) = resolve(src, None).unwrap_or((String::new(), "main".into()));
            Ok((sha, base))
        }
        None => Err(Error::new(
            ErrorKind::NotFound,
            format!("ref {asked:?} does not exist in {}", src.display),
        )
        .hint(
            "pass an existing branch, tag or full commit SHA with --ref (git ls-remote lists them)",
        )),
    }
}

/// Check out `req` at its pinned commit: the gateway repository at
/// `gateway` (created; must not exist) and the workspace tree at `work`
/// (created; must not exist). `progress` gets git's progress lines. On
/// error, whatever was created is removed.
pub fn checkout(
    req: &CheckoutRequest,
    gateway: &Path,
    work: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Pinned> {
    validate(req)?;
    for p in [gateway, work] {
        if p.exists() {
            return Err(Error::internal(format!("{} already exists", p.display())));
        }
    }
    let r = checkout_inner(req, gateway, work, progress);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(gateway);
        let _ = std::fs::remove_dir_all(work);
    }
    r
}

fn checkout_inner(
    req: &CheckoutRequest,
    gateway: &Path,
    work: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Pinned> {
    let src = &req.source;
    let (commit, base_branch) = resolve(src, req.reference.as_deref())?;
    let none = Source::local(gateway);
    let no_env: &[(OsString, OsString)] = &[];

    // The gateway repository: the pinned commit alone (at `depth`).
    let mut c = git(no_env);
    c.args(["init", "-q", "--bare", "--template="]).arg(gateway);
    run(c, "cannot create the gateway repository", &none)?;
    for (k, v) in [
        ("uploadpack.allowFilter", "true"),
        ("receive.denyNonFastForwards", "true"),
        ("receive.denyDeletes", "true"),
        ("core.logAllRefUpdates", "false"),
        ("gc.auto", "0"),
    ] {
        let mut c = git(no_env);
        c.arg("-C").arg(gateway).args(["config", k, v]);
        run(c, "cannot configure the gateway repository", &none)?;
    }
    let mut c = git(&src.env);
    c.arg("-C")
        .arg(gateway)
        .args(["fetch", "--no-tags", "--no-write-fetch-head", "--progress"])
        .arg(format!("--depth={}", req.depth))
        .arg("--")
        .arg(&src.url)
        .arg(&commit);
    run_with_progress(c, "cannot fetch the pinned commit", src, progress).map_err(|e| {
        if is_full_sha(req.reference.as_deref().unwrap_or("")) {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "commit {commit} cannot be fetched from {}: {}",
                    src.display, e.message
                ),
            )
            .hint("pass a commit that exists in the repository (git log lists them)")
        } else {
            e
        }
    })?;
    let mut c = git(no_env);
    c.arg("-C")
        .arg(gateway)
        .args(["update-ref", &format!("refs/heads/{base_branch}"), &commit]);
    run(c, "cannot record the pinned commit", &none)?;
    let mut c = git(no_env);
    c.arg("-C")
        .arg(gateway)
        .args(["symbolic-ref", "HEAD", &format!("refs/heads/{base_branch}")]);
    run(c, "cannot set the gateway's HEAD", &none)?;

    // The workspace: a shallow partial clone of the gateway repository,
    // blobs fetched only for what is checked out.
    let mut c = git(no_env);
    c.args([
        "clone",
        "-q",
        "--template=",
        "--no-checkout",
        "--no-tags",
        "--single-branch",
        "-b",
        &base_branch,
    ]);
    // Sparse: a partial clone over the file transport, so only the named
    // directories' blobs come along. The whole tree: a local clone (the
    // gateway's objects linked, no pack made again; the gateway holds the
    // pinned commit alone, so nothing more comes along), several times
    // faster than either a new pack or blobs fetched lazily at checkout.
    if req.sparse.is_empty() {
        c.arg("--local").arg(gateway);
    } else {
        c.args(["--filter=blob:none", "--sparse", "--depth=1"])
            .arg(format!("file://{}", gateway.display()));
    }
    c.arg(work);
    run(c, "cannot create the workspace clone", &none)?;
    if !req.sparse.is_empty() {
        let mut c = git(no_env);
        c.arg("-C")
            .arg(work)
            .args(["sparse-checkout", "set", "--cone", "--"])
            .args(&req.sparse);
        run(c, "cannot set the sparse directories", &none)?;
    }
    let mut c = git(no_env);
    c.arg("-C").arg(work).args(["checkout", "-q", &base_branch]);
    run(c, "cannot check out the pinned commit", &none)?;
    // Sparse directories that match nothing are a typo, not a working set.
    for d in &req.sparse {
        if !work.join(d).is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("sparse directory {d:?} does not exist at commit {commit}"),
            )
            .hint("name directories that exist in the repository at the pinned commit"));
        }
    }
    for (k, v) in [
        ("remote.origin.url", req.origin_url.as_str()),
        ("user.name", req.author_name.as_str()),
        ("user.email", req.author_email.as_str()),
        // Only bot branches can be pushed: `git push` alone pushes the
        // current branch under its own name, which the gateway names.
        ("push.default", "current"),
        ("gc.auto", "0"),
    ] {
        let mut c = git(no_env);
        c.arg("-C").arg(work).args(["config", k, v]);
        run(c, "cannot configure the workspace clone", &none)?;
    }
    // No other history: exactly the pinned commit (at depth 1).
    let mut c = git(no_env);
    c.arg("-C").arg(work).args(["rev-parse", "HEAD"]);
    let head = run(c, "cannot read the workspace's HEAD", &none)?;
    if head.trim() != commit {
        return Err(Error::internal(format!(
            "the workspace is at {} instead of the pinned {commit}",
            head.trim()
        )));
    }
    Ok(Pinned {
        commit,
        base_branch,
        requested: req.reference.clone().unwrap_or_else(|| "HEAD".into()),
        depth: req.depth,
        sparse: req.sparse.clone(),
    })
}

/// Run git with `--progress`, handing each progress line (split on CR and
/// LF) to `progress`, and keep the last lines for an error.
fn run_with_progress(
    mut c: Command,
    what: &str,
    src: &Source,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| Error::internal(format!("{what}: cannot run git: {e}")).hint("install git"))?;
    let stderr = child.stderr.take().expect("piped");
    let mut tail: Vec<String> = vec![];
    let mut r = BufReader::new(stderr);
    let mut buf = vec![];
    loop {
        buf.clear();
        // Progress lines end in CR; final ones in LF.
        let n = read_until_any(&mut r, &mut buf)?;
        if n == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let line = if src.url != src.display {
            line.replace(&src.url, &src.display)
        } else {
            line.to_string()
        };
        progress(&line);
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(git_failure(what, &tail.join("\n"), src));
    }
    Ok(())
}

fn read_until_any(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut n = 0;
    loop {
        let (done, used) = {
            let avail = r.fill_buf()?;
            if avail.is_empty() {
                return Ok(n);
            }
            match avail.iter().position(|&b| b == b'\r' || b == b'\n') {
                Some(i) => {
                    buf.extend_from_slice(&avail[..i]);
                    (true, i + 1)
                }
                None => {
                    buf.extend_from_slice(avail);
                    (false, avail.len())
                }
            }
        };
        r.consume(used);
        n += used;
        if done {
            return Ok(n);
        }
    }
}

/// Is `path` a git repository brig can check out from: a working tree
/// (has `.git`) or a bare repository (HEAD, objects/, refs/)?
pub fn is_repository(path: &Path) -> bool {
    path.join(".git").exists()
        || (path.join("HEAD").is_file()
            && path.join("objects").is_dir()
            && path.join("refs").is_dir())
}

/// The git directory of a local repository (where brig keeps its records
/// for the embedded forge): `<path>/.git` of a working tree, the path of a
/// bare one.
pub fn git_dir(path: &Path) -> PathBuf {
    let dot = path.join(".git");
    if dot.is_dir() {
        dot
    } else {
        path.to_path_buf()
    }
}

/// For callers passing `OsStr` env pairs from strings.
pub fn env_pair(k: &str, v: impl AsRef<OsStr>) -> (OsString, OsString) {
    (OsString::from(k), v.as_ref().to_os_string())
}
