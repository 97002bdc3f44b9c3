//! Scanning every commit of a git range through four git processes in all
//! (rev-list, diff-tree --stdin, cat-file --batch-check, cat-file --batch),
//! whatever the number of commits; three when the caller lists the commits.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::dir::MAX_CONTENT_BYTES;
use crate::engine::FileInput;
use crate::error::ScanError;
use crate::report::Report;
use crate::Scanner;

const NULL_SHA_CHARS: &[u8] = b"0";

/// One file a commit adds or modifies.
#[derive(Debug)]
struct Change {
    path: String,
    old: Option<String>,
    new: String,
}

struct Commit {
    sha: String,
    first_parent: Option<String>,
    changes: Vec<Change>,
}

fn git(repo: &Path, env: &[(OsString, OsString)]) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(repo);
    // Nothing interactive, nothing from the user's pager or colour settings.
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn spawn_err(what: &str, e: std::io::Error) -> ScanError {
    ScanError::Git(format!(
        "cannot run `git {what}`: {e} (is git installed and on PATH?)"
    ))
}

fn failed(what: &str, out: &std::process::Output) -> ScanError {
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim();
    ScanError::Git(format!(
        "`git {what}` failed ({}): {}",
        out.status,
        if err.is_empty() { "no message" } else { err }
    ))
}

/// Run `cmd`, feeding `input` from a thread (so a full stdout pipe cannot
/// deadlock us) and handing stdout to `read` as it streams.
fn pipe<T>(
    mut cmd: Command,
    what: &str,
    input: Vec<u8>,
    read: impl FnOnce(&mut dyn BufRead) -> Result<T, ScanError>,
) -> Result<T, ScanError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_err(what, e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let mut stdout = BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
    let result = read(&mut stdout);
    drop(stdout);
    let _ = writer.join();
    let status = child.wait().map_err(|e| spawn_err(what, e))?;
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(
            what,
            &std::process::Output {
                status,
                stdout: Vec::new(),
                stderr,
            },
        ));
    }
    result
}

/// `rev-list --parents --reverse <revs>`: commits oldest first, with first parents.
fn rev_list(
    repo: &Path,
    env: &[(OsString, OsString)],
    revs: &[String],
) -> Result<Vec<Commit>, ScanError> {
    let out = git(repo, env)
        .args(["rev-list", "--parents", "--reverse"])
        .args(revs)
        .arg("--")
        .output()
        .map_err(|e| spawn_err("rev-list", e))?;
    if !out.status.success() {
        return Err(failed(&format!("rev-list {}", revs.join(" ")), &out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Commit {
                sha: it.next()?.to_string(),
                first_parent: it.next().map(str::to_string),
                changes: Vec::new(),
            })
        })
        .collect())
}

fn is_null(sha: &str) -> bool {
    sha.bytes().all(|b| NULL_SHA_CHARS.contains(&b))
}

/// `diff-tree --stdin -r -z --raw -M`: each commit against its first parent.
fn diff_trees(
    repo: &Path,
    env: &[(OsString, OsString)],
    commits: &mut [Commit],
) -> Result<(), ScanError> {
    let mut input = Vec::new();
    for c in commits.iter() {
        input.extend_from_slice(c.sha.as_bytes());
        if let Some(p) = &c.first_parent {
            input.push(b' ');
            input.extend_from_slice(p.as_bytes());
        }
        input.push(b'\n');
    }
    let index: HashMap<String, usize> = commits
        .iter()
        .enumerate()
        .map(|(i, c)| (c.sha.clone(), i))
        .collect();
    let mut cmd = git(repo, env);
    cmd.args([
        "diff-tree",
        "--stdin",
        "-r",
        "-z",
        "--raw",
        "--no-abbrev",
        "-M",
        "--root",
        "--always",
        "--no-ext-diff",
    ]);
    let lists = pipe(cmd, "diff-tree --stdin", input, |out| {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf)
            .map_err(|e| ScanError::Git(format!("reading git diff-tree: {e}")))?;
        let mut per: Vec<(usize, Change)> = Vec::new();
        let mut fields = buf.split(|&b| b == 0).filter(|f| !f.is_empty());
        let mut current: Option<usize> = None;
        let mut listed = vec![false; commits.len()];
        while let Some(f) = fields.next() {
            let f = String::from_utf8_lossy(f);
            let f = f.trim_start_matches('\n');
            if let Some(meta) = f.strip_prefix(':') {
                // :old_mode new_mode old_sha new_sha status
                let parts: Vec<&str> = meta.split(' ').collect();
                if parts.len() < 5 {
                    return Err(ScanError::Git(format!(
                        "unexpected git diff-tree line `:{meta}`"
                    )));
                }
                let (new_mode, old_sha, new_sha, status) = (parts[1], parts[2], parts[3], parts[4]);
                let two_paths = status.starts_with('R') || status.starts_with('C');
                if two_paths {
                    fields.next();
                }
                let path = fields
                    .next()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .ok_or_else(|| {
                        ScanError::Git("git diff-tree output ended inside an entry".into())
                    })?;
                // Deletions add nothing; submodules (160000) have no blob here.
                if status.starts_with('D') || new_mode == "160000" || is_null(new_sha) {
                    continue;
                }
                let Some(ci) = current else {
                    return Err(ScanError::Git(
                        "git diff-tree printed an entry before a commit id".into(),
                    ));
                };
                let old =
                    (!is_null(old_sha) && !status.starts_with('A')).then(|| old_sha.to_string());
                per.push((
                    ci,
                    Change {
                        path,
                        old,
                        new: new_sha.to_string(),
                    },
                ));
            } else {
                let ci = *index.get(f.trim()).ok_or_else(|| {
                    ScanError::Git(format!(
                        "git diff-tree named an unexpected commit `{}`",
                        f.trim()
                    ))
                })?;
                listed[ci] = true;
                current = Some(ci);
            }
        }
        // diff-tree --stdin skips an id it cannot read and still exits 0: a
        // commit it did not list was not scanned, so the scan fails.
        if let Some(c) = commits.iter().find(|c| !listed[index[&c.sha]]) {
            return Err(ScanError::Git(format!(
                "git diff-tree did not list commit {} (is it in the repository?)",
                c.sha
            )));
        }
        Ok(per)
    })?;
    for (ci, ch) in lists {
        commits[ci].changes.push(ch);
    }
    Ok(())
}

/// Sizes of blobs, by `cat-file --batch-check`.
fn sizes(
    repo: &Path,
    env: &[(OsString, OsString)],
    shas: &[&str],
) -> Result<HashMap<String, u64>, ScanError> {
    let mut input = Vec::new();
    for s in shas {
        input.extend_from_slice(s.as_bytes());
        input.push(b'\n');
    }
    let mut cmd = git(repo, env);
    cmd.args([
        "cat-file",
        "--batch-check=%(objectname) %(objecttype) %(objectsize)",
    ]);
    pipe(cmd, "cat-file --batch-check", input, |out| {
        let mut m = HashMap::new();
        let mut line = String::new();
        loop {
            line.clear();
            if out
                .read_line(&mut line)
                .map_err(|e| ScanError::Git(format!("reading git cat-file: {e}")))?
                == 0
            {
                break;
            }
            let p: Vec<&str> = line.split_whitespace().collect();
            match p.as_slice() {
                [sha, _kind, size] => {
                    m.insert(sha.to_string(), size.parse().unwrap_or(0));
                }
                [sha, "missing"] => {
                    return Err(ScanError::Git(format!(
                        "object {sha} is missing (a push's quarantine objects need GIT_OBJECT_DIRECTORY / GIT_ALTERNATE_OBJECT_DIRECTORIES in env)"
                    )))
                }
                _ => return Err(ScanError::Git(format!("unexpected git cat-file line `{}`", line.trim()))),
            }
        }
        Ok(m)
    })
}

pub(crate) fn scan_git(
    sc: &Scanner,
    repo: &Path,
    env: &[(OsString, OsString)],
    revs: &[String],
) -> Result<Report, ScanError> {
    if revs.is_empty() {
        return Err(ScanError::Git(
            "no revisions to scan: give a range such as A..B".into(),
        ));
    }
    let commits = rev_list(repo, env, revs)?;
    scan_commits(sc, repo, env, commits)
}

/// [`scan_git`] for commits the caller has listed (oldest first, each with its
/// first parent): a push's gateway has them already, so no rev-list runs.
pub(crate) fn scan_git_commits(
    sc: &Scanner,
    repo: &Path,
    env: &[(OsString, OsString)],
    commits: &[(String, Option<String>)],
) -> Result<Report, ScanError> {
    let commits = commits
        .iter()
        .map(|(sha, first_parent)| Commit {
            sha: sha.clone(),
            first_parent: first_parent.clone(),
            changes: Vec::new(),
        })
        .collect();
    scan_commits(sc, repo, env, commits)
}

fn scan_commits(
    sc: &Scanner,
    repo: &Path,
    env: &[(OsString, OsString)],
    mut commits: Vec<Commit>,
) -> Result<Report, ScanError> {
    let mut report = Report {
        commits_scanned: commits.len() as u64,
        ..Report::default()
    };
    if commits.is_empty() {
        return Ok(report);
    }
    diff_trees(repo, env, &mut commits)?;
    let mut wanted: Vec<&str> = Vec::new();
    for c in &commits {
        for ch in &c.changes {
            wanted.push(&ch.new);
            if let Some(o) = &ch.old {
                wanted.push(o);
            }
        }
    }
    wanted.sort_unstable();
    wanted.dedup();
    let size = sizes(repo, env, &wanted)?;
    let readable = |sha: &str| size.get(sha).is_some_and(|&s| s <= MAX_CONTENT_BYTES);
    // One cat-file --batch for all contents, requested in the order they are scanned.
    let mut input = Vec::new();
    for c in &commits {
        for ch in &c.changes {
            for sha in [Some(&ch.new), ch.old.as_ref()].into_iter().flatten() {
                if readable(sha) {
                    input.extend_from_slice(sha.as_bytes());
                    input.push(b'\n');
                }
            }
        }
    }
    let mut cmd = git(repo, env);
    cmd.args(["cat-file", "--batch"]);
    let commits = &commits;
    let size = &size;
    let (files, bytes, findings) = pipe(cmd, "cat-file --batch", input, |out| {
        // This thread reads blobs while a second one scans them, so git's
        // inflating and brig's scanning overlap (both cores). The channel is
        // short: at most a few blobs wait in memory.
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(
                &Commit,
                &Change,
                Option<Vec<u8>>,
                Option<Vec<u8>>,
            )>(8);
            let worker = s.spawn(move || {
                let (mut files, mut bytes, mut findings) = (0u64, 0u64, Vec::new());
                for (c, ch, new, old) in rx {
                    files += 1;
                    bytes += new.as_ref().map_or(0, |d| d.len() as u64);
                    sc.scan_file(
                        &FileInput {
                            path: &ch.path,
                            data: new.as_deref(),
                            size: size.get(&ch.new).copied().unwrap_or(0),
                            commit: Some(&c.sha),
                            // A modified file: only lines its parent lacks count.
                            old: if ch.old.is_some() {
                                Some(old.as_deref().unwrap_or(b""))
                            } else {
                                None
                            },
                        },
                        &mut findings,
                    );
                }
                (files, bytes, findings)
            });
            let read = (|| {
                for c in commits {
                    for ch in &c.changes {
                        let new = if readable(&ch.new) {
                            Some(read_object(out, &ch.new)?)
                        } else {
                            None
                        };
                        let old = match &ch.old {
                            Some(o) if readable(o) => Some(read_object(out, o)?),
                            _ => None,
                        };
                        if tx.send((c, ch, new, old)).is_err() {
                            return Err(ScanError::Git("the scanning thread stopped".into()));
                        }
                    }
                }
                Ok(())
            })();
            drop(tx);
            let scanned = worker
                .join()
                .map_err(|_| ScanError::Git("the scanning thread panicked".into()))?;
            read.map(|()| scanned)
        })
    })?;
    report.files_scanned = files;
    report.bytes_scanned = bytes;
    report.findings = findings;
    Ok(report)
}

/// One `cat-file --batch` response: `<sha> <type> <size>\n<content>\n`.
fn read_object(out: &mut dyn BufRead, sha: &str) -> Result<Vec<u8>, ScanError> {
    let mut header = String::new();
    out.read_line(&mut header)
        .map_err(|e| ScanError::Git(format!("reading git cat-file: {e}")))?;
    let p: Vec<&str> = header.split_whitespace().collect();
    let size: usize = match p.as_slice() {
        [got, _kind, size] if *got == sha => size
            .parse()
            .map_err(|_| ScanError::Git(format!("bad git cat-file header `{}`", header.trim())))?,
        _ => {
            return Err(ScanError::Git(format!(
                "git cat-file answered `{}` for {sha}",
                header.trim()
            )))
        }
    };
    let mut data = vec![0; size + 1];
    out.read_exact(&mut data)
        .map_err(|e| ScanError::Git(format!("reading object {sha}: {e}")))?;
    data.pop(); // the newline after the content
    Ok(data)
}
