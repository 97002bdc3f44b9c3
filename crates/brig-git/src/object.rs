//! Writing a git object without running git: its id (SHA-1 of `<type> <size>\0`
//! and the bytes) and its loose file (zlib, written to a temporary file in the
//! fan-out directory, then renamed; read-only), as `git hash-object -w` does.
//! The gateway writes its signed commits this way: each one's id is needed
//! before the next can name it as a parent, and one git process per commit
//! was most of a push's signing time. Gateway repositories are SHA-1 (their
//! advertisement says `object-format=sha1`).

use std::io::Write;
use std::path::Path;

use sha1::{Digest, Sha1};

/// The id git gives `data` as an object of `kind` (`commit`, `blob`, ...).
pub fn object_id(kind: &str, data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("{kind} {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// Write `data` as a loose object of `kind` under `objects` (a repository's
/// object directory) and return its id. An object already there is kept:
/// same id, same bytes.
pub fn write_loose(objects: &Path, kind: &str, data: &[u8]) -> Result<String, String> {
    let id = object_id(kind, data);
    let dir = objects.join(&id[..2]);
    let path = dir.join(&id[2..]);
    if path.exists() {
        return Ok(id);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(format!("{kind} {}\0", data.len()).as_bytes())
        .and_then(|()| z.write_all(data))
        .map_err(|e| format!("cannot compress object {id}: {e}"))?;
    let packed = z
        .finish()
        .map_err(|e| format!("cannot compress object {id}: {e}"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix("tmp_obj_")
        .tempfile_in(&dir)
        .map_err(|e| format!("cannot write object {id}: {e}"))?;
    // No fsync, as `git hash-object -w` with git's default config.
    tmp.write_all(&packed)
        .map_err(|e| format!("cannot write object {id}: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o444))
            .map_err(|e| format!("cannot write object {id}: {e}"))?;
    }
    match tmp.persist_noclobber(&path) {
        Ok(_) => {}
        // A racing writer of the same id wrote the same bytes.
        Err(_) if path.exists() => {}
        Err(e) => return Err(format!("cannot write object {id}: {}", e.error)),
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testgit;

    fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> (bool, Vec<u8>) {
        let out = testgit::git(dir, args, input.unwrap_or(b""));
        (out.status.success(), out.stdout)
    }

    #[test]
    fn ids_and_loose_files_are_the_ones_git_makes_and_reads() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("r.git");
        assert!(
            git(
                d.path(),
                &["init", "-q", "--bare", repo.to_str().unwrap()],
                None
            )
            .0
        );
        let tree = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        assert_eq!(object_id("tree", b""), tree);
        let commit = format!(
            "tree {tree}\nauthor a <a@b> 1700000000 +0000\ncommitter a <a@b> 1700000000 +0000\n\nmsg \u{e9}\n"
        );
        let (ok, id) = git(
            &repo,
            &["hash-object", "-t", "commit", "--stdin"],
            Some(commit.as_bytes()),
        );
        assert!(ok);
        let want = String::from_utf8(id).unwrap().trim().to_string();
        let objects = repo.join("objects");
        assert_eq!(write_loose(&objects, "tree", b"").unwrap(), tree);
        let got = write_loose(&objects, "commit", commit.as_bytes()).unwrap();
        assert_eq!(got, want);
        // Written twice: the same id, the file untouched.
        assert_eq!(
            write_loose(&objects, "commit", commit.as_bytes()).unwrap(),
            want
        );
        let (ok, raw) = git(&repo, &["cat-file", "commit", &got], None);
        assert!(ok);
        assert_eq!(raw, commit.as_bytes());
        let (ok, _) = git(&repo, &["fsck", "--strict", "--no-dangling"], None);
        assert!(ok, "git fsck refuses the objects brig wrote");
        let file = objects.join(&got[..2]).join(&got[2..]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(objects.join(&got[..2]))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
