//! `--upload DIR` / `--repo PATH`: copy a controlled snapshot of a host
//! directory into a session's /workspace, never a mount.
//!
//! The walk honours `.gitignore`, `.ignore` and `.git/info/exclude` inside
//! `src` (nested ones too, even when `src` is not a git repository), but not
//! files outside `src` (parent directories, the user's global excludes): the
//! snapshot depends on `src` alone. Symlinks are never followed, by the walk
//! or by the copy (files are opened `O_NOFOLLOW`), so nothing outside `src`
//! is read into the workspace.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use brig_core::units::format_size;
use brig_core::{Error, ErrorKind, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries skipped: ignored by .gitignore/.git, special files.
    pub skipped: u64,
}

/// Copy `src` into `dst` (an existing directory), honouring .gitignore
/// files and skipping `.git`, copying symlinks as symlinks (never following
/// them), skipping device nodes, fifos and sockets, keeping non-UTF-8 names,
/// and chowning everything to `owner` (uid, gid). Fails with
/// `ErrorKind::LimitExceeded` once the total would pass `cap_bytes`; the
/// caller then discards `dst` whole.
pub fn copy_snapshot(
    src: &Path,
    dst: &Path,
    cap_bytes: u64,
    owner: (u32, u32),
) -> Result<UploadStats> {
    copy_tree(src, dst, cap_bytes, owner, false)
}

/// Copy a checkout brig made (brig-git) into `dst` as it is: its `.git`
/// included and no ignore rules (a fresh checkout has nothing ignored, and
/// its `.git` is the sandbox's clone). Otherwise as [`copy_snapshot`].
pub fn copy_checkout(
    src: &Path,
    dst: &Path,
    cap_bytes: u64,
    owner: (u32, u32),
) -> Result<UploadStats> {
    copy_tree(src, dst, cap_bytes, owner, true)
}

fn copy_tree(
    src: &Path,
    dst: &Path,
    cap_bytes: u64,
    owner: (u32, u32),
    exact: bool,
) -> Result<UploadStats> {
    let src_meta = fs::metadata(src).map_err(|e| {
        Error::invalid(format!(
            "upload source {} cannot be read: {e}",
            src.display()
        ))
        .hint("pass an existing directory to --upload / --repo")
    })?;
    if !src_meta.is_dir() {
        return Err(Error::invalid(format!(
            "upload source {} is not a directory",
            src.display()
        ))
        .hint("pass a directory to --upload / --repo"));
    }
    let dst_meta = fs::symlink_metadata(dst).map_err(|e| {
        Error::internal(format!(
            "upload destination {} is not usable: {e}",
            dst.display()
        ))
    })?;
    if !dst_meta.is_dir() {
        return Err(Error::internal(format!(
            "upload destination {} is not a directory",
            dst.display()
        )));
    }

    let walker = ignore::WalkBuilder::new(src)
        .hidden(false) // dotfiles are part of a project
        .ignore(!exact)
        .git_ignore(!exact)
        .git_exclude(!exact)
        .git_global(false) // the host user's config must not shape the snapshot
        .parents(false) // never read ignore files outside src
        .require_git(false)
        .follow_links(false)
        .same_file_system(false)
        // `.git` (a directory, or a file pointing at one) never goes in,
        // except a checkout's own.
        .filter_entry(move |e| exact || e.file_name() != ".git")
        .build();

    let mut stats = UploadStats::default();
    // Children of every directory we entered, minus those the walk yielded,
    // are what the ignore rules (and the `.git` filter) skipped.
    let mut children_seen: u64 = 0;
    let mut yielded: u64 = 0;
    // Directory modes are applied last so a read-only source directory
    // does not stop us filling its copy.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut created: HashSet<PathBuf> = HashSet::new();

    for entry in walker {
        let entry = entry.map_err(|e| {
            Error::internal(format!("walking upload source {}: {e}", src.display())).hint(
                "check that every file under the directory is readable, or list it in .gitignore",
            )
        })?;
        let path = entry.path();
        let rel = path.strip_prefix(src).map_err(|_| {
            Error::internal(format!("walk left the upload source at {}", path.display()))
        })?;
        // lstat: the entry itself, never what a symlink points at.
        let meta = fs::symlink_metadata(path)
            .map_err(|e| Error::internal(format!("reading {}: {e}", path.display())))?;
        let ft = meta.file_type();
        if entry.depth() == 0 {
            children_seen += count_children(path)?;
            continue;
        }
        yielded += 1;
        let target = dst.join(rel);
        if ft.is_dir() {
            fs::create_dir(&target)
                .map_err(|e| Error::internal(format!("creating {}: {e}", target.display())))?;
            std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1))
                .map_err(|e| Error::internal(format!("chown {}: {e}", target.display())))?;
            dir_modes.push((target.clone(), meta.permissions().mode() & 0o777));
            created.insert(target);
            children_seen += count_children(path)?;
            stats.dirs += 1;
        } else if ft.is_symlink() {
            let link = fs::read_link(path)
                .map_err(|e| Error::internal(format!("reading link {}: {e}", path.display())))?;
            std::os::unix::fs::symlink(&link, &target)
                .map_err(|e| Error::internal(format!("creating link {}: {e}", target.display())))?;
            std::os::unix::fs::lchown(&target, Some(owner.0), Some(owner.1))
                .map_err(|e| Error::internal(format!("chown {}: {e}", target.display())))?;
            stats.symlinks += 1;
        } else if ft.is_file() {
            let n = copy_file(
                path,
                &target,
                meta.permissions().mode(),
                owner,
                cap_bytes - stats.bytes,
            )
            .map_err(|e| match e {
                CopyError::OverCap(reached) => over_cap(src, cap_bytes, stats.bytes + reached, rel),
                CopyError::Other(e) => e,
            })?;
            stats.bytes += n;
            stats.files += 1;
        } else {
            // fifos, sockets, device nodes: never part of a snapshot.
            debug_assert!(
                ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device()
            );
            stats.skipped += 1;
        }
    }
    stats.skipped += children_seen.saturating_sub(yielded);

    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| Error::internal(format!("chmod {}: {e}", dir.display())))?;
    }
    Ok(stats)
}

fn over_cap(src: &Path, cap: u64, reached: u64, at: &Path) -> Error {
    Error::new(
        ErrorKind::LimitExceeded,
        format!(
            "upload of {} is over its cap of {} ({cap} bytes): reached at least {} ({reached} bytes) at {}",
            src.display(),
            format_size(cap),
            format_size(reached),
            at.display()
        ),
    )
    .hint("raise the cap with --disk, or list large or generated files in .gitignore or .ignore")
}

fn count_children(dir: &Path) -> Result<u64> {
    let rd = fs::read_dir(dir)
        .map_err(|e| Error::internal(format!("listing {}: {e}", dir.display())))?;
    Ok(rd.count() as u64)
}

enum CopyError {
    /// The file would take the total past the cap; how many bytes it had
    /// when we stopped.
    OverCap(u64),
    Other(Error),
}

/// Copy one regular file, reading at most `room + 1` bytes so a file that
/// grows while we copy it still cannot pass the cap.
fn copy_file(
    src: &Path,
    dst: &Path,
    mode: u32,
    owner: (u32, u32),
    room: u64,
) -> Result<u64, CopyError> {
    let io_err = |what: &str, p: &Path, e: io::Error| {
        CopyError::Other(Error::internal(format!("{what} {}: {e}", p.display())))
    };
    let input = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .map_err(|e| io_err("opening", src, e))?;
    // Re-check on the open descriptor: the entry may have been swapped for
    // a fifo or a device since the walk saw it.
    let meta = input.metadata().map_err(|e| io_err("reading", src, e))?;
    if !meta.is_file() {
        return Err(CopyError::Other(Error::internal(format!(
            "{} changed while it was being uploaded",
            src.display()
        ))));
    }
    if meta.len() > room {
        return Err(CopyError::OverCap(meta.len()));
    }
    // Never setuid/setgid/sticky inside the workspace.
    let mode = mode & 0o777;
    let mut out: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(dst)
        .map_err(|e| io_err("creating", dst, e))?;
    let mut limited = input.take(room + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n: u64 = 0;
    loop {
        let k = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", src, e)),
        };
        n += k as u64;
        if n > room {
            return Err(CopyError::OverCap(n));
        }
        out.write_all(&buf[..k])
            .map_err(|e| io_err("writing", dst, e))?;
    }
    std::os::unix::fs::fchown(&out, Some(owner.0), Some(owner.1))
        .map_err(|e| io_err("chown", dst, e))?;
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("chmod", dst, e))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;

    fn write(p: &Path, content: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let dst = t.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        (t, src, dst)
    }

    #[test]
    fn honours_gitignore_ignore_nested_and_skips_git() {
        let (_t, src, dst) = setup();
        write(&src.join(".gitignore"), b"target/\n*.log\n");
        write(&src.join("sub/.gitignore"), b"secret.txt\n");
        write(&src.join("sub/.ignore"), b"big.bin\n");
        write(&src.join("sub/secret.txt"), b"s");
        write(&src.join("sub/big.bin"), b"b");
        write(&src.join("sub/keep.rs"), b"fn main() {}");
        write(&src.join("target/debug/x"), b"x");
        write(&src.join("run.log"), b"log");
        write(&src.join(".env.example"), b"A=1");
        write(&src.join(".git/config"), b"[core]");
        write(&src.join("src/main.rs"), b"fn main() {}");

        let stats = copy_snapshot(&src, &dst, 1 << 20, (1000, 1000)).unwrap();
        assert!(dst.join("sub/keep.rs").is_file());
        assert!(dst.join("src/main.rs").is_file());
        assert!(
            dst.join(".env.example").is_file(),
            "hidden files are included"
        );
        assert!(dst.join(".gitignore").is_file());
        assert!(!dst.join(".git").exists());
        assert!(!dst.join("target").exists());
        assert!(!dst.join("run.log").exists());
        assert!(!dst.join("sub/secret.txt").exists());
        assert!(!dst.join("sub/big.bin").exists());
        // .git, target, run.log, sub/secret.txt, sub/big.bin
        assert_eq!(stats.skipped, 5, "{stats:?}");
        assert_eq!(stats.dirs, 2); // sub, src
        assert_eq!(stats.files, 6); // .gitignore x2, .ignore, keep.rs, .env.example, main.rs
    }

    #[test]
    fn ownership_modes_and_special_bits() {
        let (_t, src, dst) = setup();
        write(&src.join("run.sh"), b"#!/bin/sh\n");
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
        write(&src.join("ro/file"), b"r");
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        copy_snapshot(&src, &dst, 1 << 20, (1000, 1001)).unwrap();
        let m = fs::metadata(dst.join("run.sh")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755, "setuid dropped, exec kept");
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
        let d = fs::metadata(dst.join("ro")).unwrap();
        assert_eq!(d.mode() & 0o777, 0o555);
        assert_eq!((d.uid(), d.gid()), (1000, 1001));
        assert_eq!(fs::read(dst.join("ro/file")).unwrap(), b"r");
        fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dst.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn symlinks_copied_as_links_never_followed() {
        let (t, src, dst) = setup();
        let outside = t.path().join("outside");
        write(&outside.join("host-secret"), b"do not copy");
        std::os::unix::fs::symlink(&outside, src.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(outside.join("host-secret"), src.join("linkfile")).unwrap();
        std::os::unix::fs::symlink("nowhere", src.join("dangling")).unwrap();
        let stats = copy_snapshot(&src, &dst, 1 << 20, (1000, 1000)).unwrap();
        assert_eq!(stats.symlinks, 3);
        assert_eq!(stats.files, 0);
        assert_eq!(stats.bytes, 0);
        for name in ["linkdir", "linkfile", "dangling"] {
            let m = fs::symlink_metadata(dst.join(name)).unwrap();
            assert!(m.file_type().is_symlink(), "{name}");
            assert_eq!(m.uid(), 1000);
        }
        assert_eq!(fs::read_link(dst.join("linkdir")).unwrap(), outside);
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("nowhere")
        );
    }

    #[test]
    fn special_files_are_skipped() {
        let (_t, src, dst) = setup();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
        nix::sys::stat::mknod(
            &src.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        write(&src.join("ok"), b"ok");
        let stats = copy_snapshot(&src, &dst, 1 << 20, (0, 0)).unwrap();
        assert_eq!(stats.skipped, 3, "{stats:?}");
        assert_eq!(stats.files, 1);
        for name in ["fifo", "sock", "null"] {
            assert!(
                fs::symlink_metadata(dst.join(name)).is_err(),
                "{name} copied"
            );
        }
    }

    #[test]
    fn non_utf8_names_kept_byte_for_byte() {
        let (_t, src, dst) = setup();
        let name = OsStr::from_bytes(b"caf\xe9-\xff.txt");
        let dname = OsStr::from_bytes(b"d\xfe");
        write(&src.join(name), b"latin1");
        write(&src.join(dname).join(name), b"nested");
        let stats = copy_snapshot(&src, &dst, 1 << 20, (1000, 1000)).unwrap();
        assert_eq!(stats.files, 2);
        assert_eq!(fs::read(dst.join(name)).unwrap(), b"latin1");
        assert_eq!(fs::read(dst.join(dname).join(name)).unwrap(), b"nested");
        let names: Vec<Vec<u8>> = fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .collect();
        assert!(names.contains(&b"caf\xe9-\xff.txt".to_vec()));
    }

    #[test]
    fn cap_is_enforced_with_a_clear_error() {
        let (_t, src, dst) = setup();
        write(&src.join("a"), &[0u8; 600]);
        write(&src.join("b"), &[0u8; 600]);
        let err = copy_snapshot(&src, &dst, 1000, (1000, 1000)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LimitExceeded);
        assert!(err.message.contains("1000 bytes"), "{}", err.message);
        assert!(err.message.contains("1200 bytes"), "{}", err.message);
        assert!(err.hint.as_deref().unwrap().contains(".gitignore"));

        // Exactly at the cap is fine.
        let dst2 = dst.parent().unwrap().join("dst2");
        fs::create_dir(&dst2).unwrap();
        let stats = copy_snapshot(&src, &dst2, 1200, (1000, 1000)).unwrap();
        assert_eq!(stats.bytes, 1200);
    }

    #[test]
    fn ignored_big_files_do_not_count_toward_the_cap() {
        let (_t, src, dst) = setup();
        write(&src.join(".gitignore"), b"huge\n");
        write(&src.join("huge"), &vec![0u8; 1 << 16]);
        let stats = copy_snapshot(&src, &dst, 1024, (1000, 1000)).unwrap();
        assert_eq!(stats.bytes, 5);
    }

    #[test]
    fn bad_source_is_invalid_input() {
        let (t, _src, dst) = setup();
        let err = copy_snapshot(&t.path().join("missing"), &dst, 1 << 20, (0, 0)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        write(&t.path().join("file"), b"x");
        let err = copy_snapshot(&t.path().join("file"), &dst, 1 << 20, (0, 0)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(err.message.contains("not a directory"));
    }
}
