//! The gateway repository on the host (created by [`crate::checkout`]): its
//! branches, and the map from the agent's commit ids to brig's signed ones.
//!
//! Layout of `<dir>` (a bare repository):
//! - `refs/heads/<base>`: the pinned commit (shallow, depth 1);
//! - `refs/heads/<bot branch>`: the agent's commits as pushed (so the agent's next
//!   push is a fast-forward of what it has);
//! - `refs/brig/signed/<bot branch>`: the signed tip pushed upstream (hidden from
//!   fetches; keeps the signed commits from garbage collection);
//! - `brig/signed-map`: `<agent commit> <signed commit>` lines, so later pushes chain
//!   onto the signed parents.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Refs under this prefix are brig's own, never advertised to the agent.
pub const HIDDEN_REFS: &str = "refs/brig/";

pub fn signed_ref(branch: &str) -> String {
    format!("refs/brig/signed/{branch}")
}

/// The gateway's branches: full ref name to commit id, sorted by name.
///
/// Read from the files backend directly (`packed-refs`, then the loose refs
/// under `refs/heads`, which win), as `git for-each-ref` would list them: a
/// push reads them twice (its advertisement, then its checks), and one git
/// process each was a visible part of its time. Anything this reader does
/// not know (a reftable repository, a symbolic or malformed ref) is an error,
/// never a shorter list.
pub async fn branches(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || read_branches(&dir))
        .await
        .map_err(|e| format!("listing the gateway's branches: {e}"))?
}

fn read_branches(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let err = |what: String| format!("listing the gateway's branches: {what}");
    if dir.join("reftable").exists() {
        return Err(err(
            "the repository uses reftable, which brig does not read".into(),
        ));
    }
    let mut refs = std::collections::BTreeMap::new();
    match std::fs::read_to_string(dir.join("packed-refs")) {
        Ok(text) => {
            for line in text.lines() {
                // `# pack-refs with: ...` and `^<peeled>` lines of annotated tags.
                if line.starts_with('#') || line.starts_with('^') || line.is_empty() {
                    continue;
                }
                let (sha, name) = line
                    .split_once(' ')
                    .filter(|(sha, _)| is_sha(sha))
                    .ok_or_else(|| err(format!("malformed packed-refs line {line:?}")))?;
                if name.starts_with("refs/heads/") {
                    refs.insert(name.to_string(), sha.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot read packed-refs: {e}"))),
    }
    fn walk(
        dir: &Path,
        name: &str,
        refs: &mut std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        for e in entries {
            let e = e.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let file = e.file_name();
            let Some(file) = file.to_str() else {
                return Err(format!("a ref name in {} is not UTF-8", dir.display()));
            };
            // A ref being written (`<name>.lock`) is not a ref yet.
            if file.ends_with(".lock") {
                continue;
            }
            let full = format!("{name}/{file}");
            let kind = e
                .file_type()
                .map_err(|e| format!("cannot read {full}: {e}"))?;
            // git itself writes no symlinked refs; one here was not made by brig.
            if kind.is_symlink() {
                return Err(format!("{full} is a symbolic link, not a plain ref"));
            }
            if kind.is_dir() {
                walk(&e.path(), &full, refs)?;
                continue;
            }
            let text = std::fs::read_to_string(e.path())
                .map_err(|e| format!("cannot read {full}: {e}"))?;
            let sha = text.trim_end_matches('\n');
            if !is_sha(sha) {
                return Err(format!("{full} is not a plain ref ({:?})", trunc(sha)));
            }
            refs.insert(full, sha.to_string());
        }
        Ok(())
    }
    walk(&dir.join("refs").join("heads"), "refs/heads", &mut refs).map_err(err)?;
    Ok(refs.into_iter().collect())
}

/// A full lower-case SHA-1 object id.
pub(crate) fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn trunc(s: &str) -> String {
    s.chars().take(60).collect()
}

fn map_path(dir: &Path) -> PathBuf {
    dir.join("brig").join("signed-map")
}

/// The agent-commit to signed-commit map.
pub fn load_signed_map(dir: &Path) -> Result<HashMap<String, String>, String> {
    let path = map_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut map = HashMap::new();
    for line in text.lines() {
        // A torn last line (a crash mid-append) is ignored: re-signing is deterministic.
        if let Some((a, s)) = line.split_once(' ') {
            if a.len() == 40 && s.len() == 40 {
                map.insert(a.to_string(), s.to_string());
            }
        }
    }
    Ok(map)
}

pub fn append_signed_map(dir: &Path, pairs: &[(String, String)]) -> Result<(), String> {
    if pairs.is_empty() {
        return Ok(());
    }
    let path = map_path(dir);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let mut buf = String::new();
        for (a, s) in pairs {
            buf.push_str(&format!("{a} {s}\n"));
        }
        f.write_all(buf.as_bytes())?;
        f.sync_data()
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testgit::git_ok as git;

    fn empty_commit(dir: &Path) -> String {
        let tree = git(dir, &["mktree"]);
        git(dir, &["commit-tree", tree.trim(), "-m", "x"])
            .trim()
            .to_string()
    }

    fn for_each_ref(dir: &Path) -> Vec<(String, String)> {
        git(
            dir,
            &[
                "for-each-ref",
                "--format=%(refname) %(objectname)",
                "refs/heads/",
            ],
        )
        .lines()
        .map(|l| {
            let (r, s) = l.split_once(' ').unwrap();
            (r.to_string(), s.to_string())
        })
        .collect()
    }

    #[tokio::test]
    async fn branches_are_what_git_for_each_ref_lists() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("g.git");
        git(d.path(), &["init", "-q", "--bare", dir.to_str().unwrap()]);
        assert!(branches(&dir).await.unwrap().is_empty());
        let tree = git(&dir, &["mktree"]);
        let tree = tree.trim();
        let a = git(&dir, &["commit-tree", tree, "-m", "a"])
            .trim()
            .to_string();
        let b = git(&dir, &["commit-tree", tree, "-p", &a, "-m", "b"])
            .trim()
            .to_string();
        for (r, s) in [
            ("refs/heads/main", &a),
            ("refs/heads/brig/s-1/fix", &a),
            ("refs/heads/brig/s-1/deep/er", &b),
            ("refs/tags/v1", &a),
            ("refs/brig/signed/x", &b),
        ] {
            git(&dir, &["update-ref", r, s]);
        }
        assert_eq!(branches(&dir).await.unwrap(), for_each_ref(&dir));
        // Packed, then one of them moved again as a loose ref: the loose one wins.
        git(&dir, &["pack-refs", "--all"]);
        git(&dir, &["update-ref", "refs/heads/main", &b]);
        git(&dir, &["update-ref", "refs/heads/new", &b]);
        let got = branches(&dir).await.unwrap();
        assert_eq!(got, for_each_ref(&dir));
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got.contains(&("refs/heads/main".into(), b.clone())));
        // A deleted packed branch is gone.
        git(&dir, &["update-ref", "-d", "refs/heads/brig/s-1/fix"]);
        assert_eq!(branches(&dir).await.unwrap(), for_each_ref(&dir));
        // A lock file in the way is not a branch.
        std::fs::write(dir.join("refs/heads/main.lock"), format!("{a}\n")).unwrap();
        assert_eq!(branches(&dir).await.unwrap(), for_each_ref(&dir));
    }

    #[tokio::test]
    async fn what_the_reader_does_not_know_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("g.git");
        git(d.path(), &["init", "-q", "--bare", dir.to_str().unwrap()]);
        git(
            &dir,
            &["symbolic-ref", "refs/heads/alias", "refs/heads/main"],
        );
        let e = branches(&dir).await.unwrap_err();
        assert!(e.contains("refs/heads/alias is not a plain ref"), "{e}");
        std::fs::remove_file(dir.join("refs/heads/alias")).unwrap();
        git(
            &dir,
            &["update-ref", "refs/heads/main", &empty_commit(&dir)],
        );
        std::os::unix::fs::symlink(dir.join("refs/heads/main"), dir.join("refs/heads/link"))
            .unwrap();
        let e = branches(&dir).await.unwrap_err();
        assert!(e.contains("refs/heads/link is a symbolic link"), "{e}");
        std::fs::remove_file(dir.join("refs/heads/link")).unwrap();
        std::fs::write(dir.join("packed-refs"), "garbage\n").unwrap();
        let e = branches(&dir).await.unwrap_err();
        assert!(e.contains("malformed packed-refs line"), "{e}");
        std::fs::remove_file(dir.join("packed-refs")).unwrap();
        std::fs::create_dir(dir.join("reftable")).unwrap();
        let e = branches(&dir).await.unwrap_err();
        assert!(e.contains("reftable"), "{e}");
    }
}
