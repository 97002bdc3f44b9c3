//! Session directories and their /workspace: a tmpfs per session at
//! `<data_dir>/sessions/<id>/workspace`, `size=limits.disk_bytes` (a disk
//! fill inside gets ENOSPC and the host disk never fills), mode 0750, owned
//! by the sandbox user's host uid. Nothing of it touches a disk, so
//! shredding is: delete the files, unmount, prove it is gone.

use std::path::{Path, PathBuf};

use brig_core::{Error, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// `<data_dir>/sessions`.
pub fn sessions_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("sessions")
}

/// `<data_dir>/sessions/<id>`: bundle, runtime log, record, workspace.
pub fn session_dir(data_dir: &Path, id: &str) -> PathBuf {
    sessions_dir(data_dir).join(id)
}

#[derive(Clone, Debug)]
pub struct Workspace {
    /// The session directory that holds the workspace mountpoint.
    pub session_dir: PathBuf,
    /// The tmpfs mountpoint.
    pub path: PathBuf,
}

/// What shredding did, step by step.
#[derive(Clone, Debug, Default)]
pub struct ShredReport {
    pub unmounted: bool,
    pub removed: bool,
    pub problems: Vec<String>,
}

impl Workspace {
    /// The workspace of an existing session dir (for reconcile/destroy).
    pub fn at(session_dir: &Path) -> Workspace {
        Workspace {
            session_dir: session_dir.to_path_buf(),
            path: session_dir.join("workspace"),
        }
    }

    /// Make the session dir (which must not exist) and mount the tmpfs.
    pub fn create(session_dir: &Path, size_bytes: u64, owner: (u32, u32)) -> Result<Workspace> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = session_dir
            .parent()
            .ok_or_else(|| Error::internal("session dir has no parent"))?;
        std::fs::create_dir_all(parent).map_err(|e| {
            Error::internal(format!("creating {}: {e}", parent.display()))
                .hint("check that brig's data dir is writable")
        })?;
        // 0711: the runtime's setup, running as the sandbox's mapped root,
        // must traverse it to bind the workspace; nobody may list it.
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(session_dir)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Error::conflict(format!(
                    "session dir {} already exists",
                    session_dir.display()
                ))
                .hint("a previous sandbox of this id was not cleaned up; restart `brig serve` to reconcile"),
                _ => Error::internal(format!("creating {}: {e}", session_dir.display())),
            })?;
        let ws = Workspace::at(session_dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&ws.path)
            .map_err(|e| Error::internal(format!("creating {}: {e}", ws.path.display())))?;
        let opts = format!(
            "size={size_bytes},mode=0750,uid={},gid={},nr_inodes={}",
            owner.0,
            owner.1,
            inode_cap(size_bytes)
        );
        mount(
            Some("brig-workspace"),
            &ws.path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .map_err(|e| {
            Error::guard(
                "workspace",
                format!(
                    "mounting a {size_bytes}-byte tmpfs at {}: {e}",
                    ws.path.display()
                ),
            )
        })?;
        Ok(ws)
    }

    /// Delete everything in the workspace, unmount it (lazily if busy),
    /// verify it is no longer a mountpoint and is empty, remove the
    /// session dir. Run only once every process of the sandbox is dead.
    pub fn shred(&self) -> ShredReport {
        let mut r = ShredReport::default();
        if !self.session_dir.exists() {
            r.unmounted = true;
            r.removed = true;
            return r;
        }
        // Unlink first, so the pages are freed even if a reference to the
        // tmpfs outlives a lazy unmount.
        if is_mountpoint(&self.path) {
            if let Ok(rd) = std::fs::read_dir(&self.path) {
                for e in rd.flatten() {
                    let p = e.path();
                    let res = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    if let Err(err) = res {
                        r.problems.push(format!("deleting {}: {err}", p.display()));
                    }
                }
            }
        }
        // Unmount everything at or under the session dir (the workspace,
        // and anything a runtime may have left), deepest first.
        let mut mounts = mounts_under(&self.session_dir);
        mounts.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for m in mounts {
            if let Err(e) = unmount(&m) {
                r.problems.push(e.message);
            }
        }
        r.unmounted = mounts_under(&self.session_dir).is_empty();
        if !r.unmounted {
            r.problems
                .push(format!("{} is still mounted", self.session_dir.display()));
            return r;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.session_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                r.problems
                    .push(format!("removing {}: {e}", self.session_dir.display()));
            }
        }
        r.removed = !self.session_dir.exists();
        if !r.removed {
            r.problems
                .push(format!("{} still exists", self.session_dir.display()));
        }
        r
    }
}

/// Bound inodes too, so a million empty files cannot eat host memory
/// beyond the size cap (one inode per 4 KiB, at least 1024).
fn inode_cap(size_bytes: u64) -> u64 {
    (size_bytes / 4096).clamp(1024, 1 << 24)
}

/// Unmount `path`; if it is busy, detach it lazily.
pub fn unmount(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) if !is_mountpoint(path) => Ok(()),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(first) => umount2(path, MntFlags::MNT_DETACH).map_err(|e| {
            Error::runtime(format!(
                "unmounting {}: {first}, lazy unmount too: {e}",
                path.display()
            ))
        }),
    }
}

/// Decode the octal escapes (`\040` for space, ...) of /proc/self/mountinfo.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0');
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points of this mount namespace (field 5 of mountinfo).
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape))
        .collect()
}

pub fn is_mountpoint(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(unescape("/x\\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/end\\04"), PathBuf::from("/end\\04"));
    }

    #[test]
    fn inode_cap_is_bounded() {
        assert_eq!(inode_cap(1 << 20), 1024);
        assert_eq!(inode_cap(10 << 30), (10 << 30) / 4096);
    }

    /// Needs root (mount): a full workspace says ENOSPC, shred leaves nothing.
    #[test]
    fn tmpfs_quota_holds_and_shred_leaves_nothing() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let data = tempfile::tempdir().unwrap();
        let sd = session_dir(data.path(), "s-wstest2345");
        let ws = Workspace::create(&sd, 1 << 20, (12345, 12345)).unwrap();
        struct Guard<'a>(&'a Workspace);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                let _ = umount2(&self.0.path, MntFlags::MNT_DETACH);
            }
        }
        let _g = Guard(&ws);
        assert!(is_mountpoint(&ws.path));
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&ws.path).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (12345, 12345, 0o750)
        );
        let e = std::fs::write(ws.path.join("big"), vec![7u8; 2 << 20]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        // Creating the same session again is a conflict.
        let again = Workspace::create(&sd, 1 << 20, (0, 0)).unwrap_err();
        assert_eq!(again.kind, brig_core::ErrorKind::Conflict);
        let r = ws.shred();
        assert!(r.unmounted && r.removed, "{r:?}");
        assert!(r.problems.is_empty(), "{r:?}");
        assert!(!sd.exists());
        assert!(mounts_under(data.path()).is_empty());
        // Idempotent.
        assert!(ws.shred().removed);
    }
}
