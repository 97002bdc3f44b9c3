//! What every sandbox mounts read-only at `/.brig`: brig's own binary (its
//! init) together with the host's dynamic loader and the shared libraries
//! that binary needs. Init runs through that loader
//! (`/.brig/ld.so --library-path /.brig/lib /.brig/brig sandbox-init ...`),
//! so it works in any image — an imported Alpine or distroless root has no
//! glibc of the host's version, or none at all — while the commands it
//! starts use only the image's own libraries.
//!
//! The set is built once per brig binary under `<data_dir>/init/<key>`,
//! where the key fingerprints the binary (path, size, mtime, inode), and is
//! published atomically (a temp dir renamed into place).

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use brig_core::{Error, Result};
use sha2::{Digest, Sha256};

/// Where the set is mounted inside every sandbox.
pub const MOUNT: &str = "/.brig";
/// The process args that start init through the bundled loader.
pub fn init_args(config_json: String) -> Vec<String> {
    vec![
        format!("{MOUNT}/ld.so"),
        "--library-path".into(),
        format!("{MOUNT}/lib"),
        format!("{MOUNT}/brig"),
        "sandbox-init".into(),
        config_json,
    ]
}

/// The argument of `brig sandbox-init` that prints the shared objects the
/// running binary has mapped, one path a line, and exits.
pub const PRINT_LIBS: &str = "--print-libs";

/// Print the shared objects this process has mapped (the loader and every
/// library), for [`prepare`]. Runs in the brig binary itself, so what is
/// listed is exactly what that binary needs.
pub fn print_libs() -> ! {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for line in maps.lines() {
        if let Some(p) = line.split_whitespace().nth(5) {
            if p.starts_with('/') && p.contains(".so") && seen.insert(p.to_string()) {
                println!("{p}");
            }
        }
    }
    std::process::exit(0)
}

fn cache() -> &'static Mutex<HashMap<String, PathBuf>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<String, PathBuf>>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn fingerprint(brig_exe: &Path) -> Result<String> {
    let m = std::fs::metadata(brig_exe).map_err(|e| {
        Error::invalid(format!("brig binary {}: {e}", brig_exe.display()))
            .hint("set brig_exe in brig.toml to the path of the brig binary")
    })?;
    let mut h = Sha256::new();
    h.update(brig_exe.as_os_str().as_encoded_bytes());
    h.update(m.len().to_le_bytes());
    h.update(m.mtime().to_le_bytes());
    h.update(m.mtime_nsec().to_le_bytes());
    h.update(m.ino().to_le_bytes());
    Ok(hex::encode(&h.finalize()[..12]))
}

/// The directory to mount at [`MOUNT`] for `brig_exe`, built if needed.
pub fn prepare(data_dir: &Path, brig_exe: &Path) -> Result<PathBuf> {
    let key = fingerprint(brig_exe)?;
    let base = data_dir.join("init");
    let dir = base.join(&key);
    // Cached per directory, not per binary: one process may serve several
    // data dirs (tests do), and each must mount its own copy.
    let cache_key = dir.to_string_lossy().into_owned();
    if let Some(p) = cache().lock().unwrap().get(&cache_key) {
        if p.join("ld.so").exists() {
            return Ok(p.clone());
        }
    }
    if !dir.join("brig").exists() {
        build(&base, &dir, brig_exe)?;
    }
    // The mountpoint of the session's egress dir (a copy built before
    // it existed gets it now).
    let egress = dir.join(crate::egress::DIR);
    match std::fs::create_dir(&egress) {
        Ok(()) => set_mode(&egress, 0o755)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::guard("init", format!("{}: {e}", egress.display()))),
    }
    cache().lock().unwrap().insert(cache_key, dir.clone());
    Ok(dir)
}

fn build(base: &Path, dir: &Path, brig_exe: &Path) -> Result<()> {
    let fail = |what: String| Error::guard("init", what);
    let out = std::process::Command::new(brig_exe)
        .args(["sandbox-init", PRINT_LIBS])
        .output()
        .map_err(|e| {
            fail(format!(
                "running {} to list its libraries: {e}",
                brig_exe.display()
            ))
        })?;
    if !out.status.success() {
        return Err(fail(format!(
            "{} {PRINT_LIBS} failed: {}",
            brig_exe.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let libs: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    let loader = libs
        .iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
        })
        .ok_or_else(|| {
            fail(format!(
                "{} maps no dynamic loader (ld-linux*)",
                brig_exe.display()
            ))
        })?;

    std::fs::create_dir_all(base).map_err(|e| fail(format!("{}: {e}", base.display())))?;
    set_mode(base, 0o711)?;
    let tmp = base.join(format!(".tmp-{}-{}", std::process::id(), rand_suffix()));
    let res = (|| -> Result<()> {
        std::fs::create_dir_all(tmp.join("lib"))
            .map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
        copy(brig_exe, &tmp.join("brig"), 0o755)?;
        copy(loader, &tmp.join("ld.so"), 0o755)?;
        for lib in &libs {
            if let Some(name) = lib.file_name() {
                copy(lib, &tmp.join("lib").join(name), 0o644)?;
            }
        }
        set_mode(&tmp.join("lib"), 0o755)?;
        set_mode(&tmp, 0o755)?;
        match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            // Another brig published the same set first: use theirs.
            Err(_) if dir.join("brig").exists() => Ok(()),
            Err(e) => Err(fail(format!("publishing {}: {e}", dir.display()))),
        }
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    std::fs::copy(from, to).map_err(|e| {
        Error::guard(
            "init",
            format!("copying {} to {}: {e}", from.display(), to.display()),
        )
    })?;
    set_mode(to, mode)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::guard("init", format!("chmod {}: {e}", p.display())))
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
