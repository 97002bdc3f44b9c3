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

use crate::gitcmd::{git, run_ok};

/// Refs under this prefix are brig's own, never advertised to the agent.
pub const HIDDEN_REFS: &str = "refs/brig/";

pub fn signed_ref(branch: &str) -> String {
    format!("refs/brig/signed/{branch}")
}

/// The gateway's branches: full ref name to commit id.
pub async fn branches(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let mut c = git(dir, &[]);
    c.args([
        "for-each-ref",
        "--format=%(objectname) %(refname)",
        "refs/heads/",
    ]);
    let out = run_ok(c, None, "listing the gateway's branches").await?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(sha, r)| (r.to_string(), sha.to_string()))
        .collect())
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
