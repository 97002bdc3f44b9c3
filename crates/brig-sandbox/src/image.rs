//! Images: immutable, content-addressed roots. `host` (generated from the
//! host's /usr, /lib*, /bin, /sbin and a generated /etc) and imported OCI
//! layouts / `docker save` tarballs.
//!
//! On disk, under `<data_dir>/images/`:
//!
//! - `host/<hex>/rootfs`: the `host` image, `<hex>` its digest. The digest
//!   covers the generated files, the bind list and a fingerprint of the
//!   host's package set, so a host upgrade yields a new digest.
//! - `store/<hex>/rootfs` (+ `image.json`, `config.json`): imported images,
//!   `<hex>` the image manifest's digest.
//! - `index.json`: name → digest, with the config's Env and WorkingDir.
//! - `tmp/`: work directories; everything is built there and renamed into
//!   place, so a failure or a crash never leaves a half-written image.
//!
//! Layers are unpacked by hand rather than with `tar::Archive::unpack`, so
//! that every parent directory is resolved inside the root (symlinks
//! included) before anything is written, whiteouts are applied, and
//! ownership, setuid/setgid bits and device nodes never make it in.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use brig_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sandbox::SandboxPaths;

/// A resolved, immutable image as sessions record it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    pub name: String,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// What a runtime needs to use an image.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub image: Image,
    /// The root directory (read-only in every sandbox).
    pub rootfs: PathBuf,
    /// Read-only bind mounts (host path, path in the sandbox), e.g. the
    /// host's /usr for the `host` image.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// The image's environment (PATH, ...), from its config.
    pub env: Vec<(String, String)>,
}

/// The name of the zero-setup image generated from the host.
pub const HOST: &str = "host";

/// The PATH every image gets unless its config sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Directories every image root must have: mountpoints the sandbox uses.
/// They are real directories (never symlinks) so no mount can be
/// redirected elsewhere in the root.
pub const MOUNTPOINTS: [&str; 6] = ["workspace", "tmp", "proc", "dev", "sys", ".brig"];

/// The empty file brig's init binary is bind-mounted over
/// (`spec::INIT_PATH`); it exists in every root so no runtime ever has to
/// create a mount target inside a shared, read-only image.
const INIT_TARGET: &str = ".brig/brig";

fn images_dir(paths: &SandboxPaths) -> PathBuf {
    paths.data_dir.join("images")
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!("image {name:?} not found"))
        .hint("see `brig image list`; import one with `brig image import PATH --name NAME`, or use `host`")
}

/// Resolve `host`, an imported image's name, or a `sha256:` digest.
pub fn resolve(paths: &SandboxPaths, name: &str) -> Result<ResolvedImage> {
    if name == HOST {
        return host_image(paths);
    }
    if let Some(hex) = name.strip_prefix("sha256:") {
        return resolve_digest(paths, name, hex);
    }
    validate_name(name)?;
    let index = read_index(paths)?;
    let Some(entry) = index.images.get(name) else {
        return Err(not_found(name));
    };
    let hex = entry
        .digest
        .strip_prefix("sha256:")
        .unwrap_or_default()
        .to_string();
    load_stored(paths, name, &hex).map_err(|e| {
        if e.kind == ErrorKind::NotFound {
            Error::not_found(format!(
                "image {name:?} points at {} which is missing from the store",
                entry.digest
            ))
            .hint("import it again with `brig image import PATH --name NAME`")
        } else {
            e
        }
    })
}

fn resolve_digest(paths: &SandboxPaths, name: &str, hex: &str) -> Result<ResolvedImage> {
    if hex.len() < 12
        || hex.len() > 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(
            Error::invalid(format!("{name:?} is not a valid image digest")).hint(
                "use sha256: followed by 12 to 64 lowercase hex digits (see `brig image list`)",
            ),
        );
    }
    let mut candidates: Vec<String> = stored_digests(paths)?
        .into_iter()
        .filter(|d| d.starts_with(hex))
        .collect();
    let host = host_plan()?;
    let host_matches = host.digest_hex.starts_with(hex);
    if host_matches {
        candidates.push(host.digest_hex.clone());
    }
    match candidates.len() {
        0 => Err(not_found(name)),
        1 if host_matches => host_image(paths),
        1 => {
            let hex = candidates.pop().unwrap_or_default();
            // A digest resolves to a name when one points at it.
            let index = read_index(paths)?;
            let label = index
                .images
                .iter()
                .find(|(_, e)| e.digest == format!("sha256:{hex}"))
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| format!("sha256:{hex}"));
            load_stored(paths, &label, &hex)
        }
        n => Err(
            Error::invalid(format!("digest prefix {name:?} matches {n} images"))
                .hint("give more hex digits (see `brig image list`)"),
        ),
    }
}

/// Unpack an OCI image layout directory or a `docker save` tarball into the
/// store, keyed by digest; `name` names it for `--image`.
pub fn import(paths: &SandboxPaths, source: &Path, name: &str) -> Result<Image> {
    validate_name(name)?;
    if name.starts_with(RECIPE_PREFIX) {
        return Err(Error::invalid(format!(
            "image names starting with {RECIPE_PREFIX:?} are reserved for `brig image build`"
        ))
        .hint("pick another name"));
    }
    let meta = fs::metadata(source).map_err(|e| {
        Error::invalid(format!(
            "image source {} cannot be read: {e}",
            source.display()
        ))
        .hint("pass an OCI image layout directory or a `docker save` tarball")
    })?;
    let images = images_dir(paths);
    let work = WorkDir::new(&images)?;
    let layout_root = if meta.is_dir() {
        source.to_path_buf()
    } else {
        let staged = work.path.join("source");
        mkdir(&staged, 0o700)?;
        stage_tarball(source, &staged)?;
        staged
    };
    let plan = plan_import(&layout_root, source)?;
    let hex = plan.digest_hex.clone();
    let digest = format!("sha256:{hex}");
    let store = images.join("store");
    mkdir_all(&store)?;
    let dest = store.join(&hex);
    if !dest.join("image.json").is_file() {
        let image_dir = work.path.join("image");
        let rootfs = image_dir.join("rootfs");
        mkdir(&image_dir, 0o755)?;
        mkdir(&rootfs, 0o755)?;
        unpack_layers(&layout_root, &plan, &rootfs)?;
        write_file(&image_dir.join("config.json"), &plan.config_raw, 0o644)?;
        let meta = StoredMeta {
            digest: digest.clone(),
            env: plan.env.clone(),
            working_dir: plan.working_dir.clone(),
            format: plan.format.to_string(),
            layers: plan.layers.len(),
            base: None,
            layer_digest: None,
            recipe_digest: None,
            prefix: None,
            debian_lock: None,
        };
        write_file(&image_dir.join("image.json"), &to_json(&meta)?, 0o644)?;
        publish(&image_dir, &dest)?;
    }
    drop(work);
    update_index(paths, |idx| {
        idx.images.insert(
            name.to_string(),
            IndexEntry {
                digest: digest.clone(),
                env: plan.env.clone(),
                working_dir: plan.working_dir.clone(),
            },
        );
    })?;
    Ok(Image {
        name: name.to_string(),
        digest,
    })
}

/// Every image in the store (and `host`).
pub fn list(paths: &SandboxPaths) -> Result<Vec<Image>> {
    let mut out = vec![Image {
        name: HOST.to_string(),
        digest: format!("sha256:{}", host_plan()?.digest_hex),
    }];
    let index = read_index(paths)?;
    let stored: HashSet<String> = stored_digests(paths)?.into_iter().collect();
    let mut named = HashSet::new();
    for (name, e) in &index.images {
        let hex = e.digest.strip_prefix("sha256:").unwrap_or_default();
        if stored.contains(hex) {
            named.insert(hex.to_string());
            out.push(Image {
                name: name.clone(),
                digest: e.digest.clone(),
            });
        }
    }
    let mut unnamed: Vec<_> = stored.difference(&named).cloned().collect();
    unnamed.sort();
    for hex in unnamed {
        out.push(Image {
            name: format!("sha256:{hex}"),
            digest: format!("sha256:{hex}"),
        });
    }
    Ok(out)
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != HOST
        && !name.starts_with("sha256:")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("{name:?} is not a valid image name"))
            .hint("use letters, digits and . _ - : / @ (up to 128, starting with a letter or digit); `host` and `sha256:` are reserved"))
    }
}

// ---------------------------------------------------------------------------
// The `host` image.

/// Everything the `host` image is made of, before it is written.
#[derive(Clone)]
struct HostPlan {
    digest_hex: String,
    manifest: String,
    dirs: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    symlinks: Vec<(String, PathBuf)>,
    binds: Vec<(PathBuf, PathBuf)>,
}

fn host_env() -> Vec<(String, String)> {
    vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ]
}

const PASSWD: &str = "root:x:0:0:root:/:/usr/sbin/nologin\n\
agent:x:1000:1000:brig agent:/workspace:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n";
// The hostname is the session id, different in every sandbox; `myhostname`
// in nsswitch.conf resolves it where the host has that NSS module.
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
const RESOLV: &str = crate::egress::RESOLV_CONF;
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files myhostname dns\n\
networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\nnetgroup: files\n";
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// brig's own /etc (users, hosts, resolver, NSS) and the init binary's
/// mount target: the same in every image brig generates or builds a root for.
fn generated_etc() -> Vec<(String, Vec<u8>)> {
    vec![
        ("etc/passwd".into(), PASSWD.into()),
        ("etc/group".into(), GROUP.into()),
        ("etc/hosts".into(), HOSTS.into()),
        ("etc/resolv.conf".into(), RESOLV.into()),
        ("etc/nsswitch.conf".into(), NSSWITCH.into()),
        (INIT_TARGET.into(), Vec::new()),
    ]
}

/// Compute the `host` image from the running host, without writing.
///
/// Session creation resolves `host` every time, so the plan is cached for
/// as long as the host files it is made of look unchanged (same inode,
/// size, mtime and ctime): a stat per input instead of re-hashing ~1 MiB.
fn host_plan() -> Result<HostPlan> {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    type Key = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;
    static CACHE: Mutex<Option<(Key, HostPlan)>> = Mutex::new(None);
    let inputs = [
        "/",
        "/usr",
        "/var/lib/dpkg/status",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/os-release",
    ];
    let key: Key = inputs
        .iter()
        .map(|p| {
            fs::metadata(p).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, plan)) = cache.as_ref() {
        if *k == key {
            return Ok(plan.clone());
        }
    }
    let plan = host_plan_from(Path::new("/"))?;
    *cache = Some((key, plan.clone()));
    Ok(plan)
}

fn host_plan_from(host_root: &Path) -> Result<HostPlan> {
    let usr = host_root.join("usr");
    if !fs::symlink_metadata(&usr)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(Error::guard(
            "image:host",
            format!("{} is not a directory", usr.display()),
        ));
    }
    let mut dirs: Vec<String> = ["usr", "etc", "etc/ssl", "etc/ssl/certs"]
        .iter()
        .chain(MOUNTPOINTS.iter())
        .map(|s| s.to_string())
        .collect();
    let mut binds = vec![(usr.clone(), PathBuf::from("/usr"))];
    let mut symlinks = Vec::new();
    // /bin, /sbin and /lib*: symlinks into /usr on a merged-usr host (copy
    // the links), real directories otherwise (bind them).
    let mut tops: Vec<String> = vec!["bin".into(), "sbin".into()];
    let mut libs: Vec<String> = fs::read_dir(host_root)
        .map_err(|e| Error::internal(format!("listing {}: {e}", host_root.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("lib"))
        .collect();
    libs.sort();
    tops.extend(libs);
    for top in tops {
        let host_path = host_root.join(&top);
        let Ok(m) = fs::symlink_metadata(&host_path) else {
            continue;
        };
        if m.file_type().is_symlink() {
            let target = fs::read_link(&host_path).map_err(|e| {
                Error::internal(format!("reading link {}: {e}", host_path.display()))
            })?;
            symlinks.push((top, target));
        } else if m.is_dir() {
            binds.push((host_path, PathBuf::from("/").join(&top)));
            dirs.push(top);
        }
    }

    let mut files = generated_etc();
    if let Ok(ca) = fs::read(host_root.join(CA_BUNDLE)) {
        files.push((CA_BUNDLE.into(), ca));
    }
    if let Ok(osr) = fs::read(host_root.join("etc/os-release")) {
        files.push(("etc/os-release".into(), osr));
    }
    dirs.sort();
    dirs.dedup();
    files.sort();
    symlinks.sort();

    // The canonical manifest the digest is taken over.
    let mut m = String::from("brig-host-image v1\n");
    for d in &dirs {
        m.push_str(&format!("dir {d} 0755\n"));
    }
    for (p, content) in &files {
        m.push_str(&format!("file {p} 0644 sha256:{}\n", sha256_hex(content)));
    }
    for (p, t) in &symlinks {
        m.push_str(&format!("symlink {p} {}\n", t.display()));
    }
    for (h, i) in &binds {
        m.push_str(&format!("bind {} {} ro\n", h.display(), i.display()));
    }
    for (k, v) in host_env() {
        m.push_str(&format!("env {k}={v}\n"));
    }
    m.push_str(&format!("host-packages {}\n", host_fingerprint(host_root)?));
    Ok(HostPlan {
        digest_hex: sha256_hex(m.as_bytes()),
        manifest: m,
        dirs,
        files,
        symlinks,
        binds,
    })
}

/// What is installed on the host: dpkg's status file where there is one,
/// else the names and mtimes of /usr's top level.
fn host_fingerprint(host_root: &Path) -> Result<String> {
    let status = host_root.join("var/lib/dpkg/status");
    if let Ok(bytes) = fs::read(&status) {
        return Ok(format!("dpkg sha256:{}", sha256_hex(&bytes)));
    }
    let usr = host_root.join("usr");
    let mut listing: Vec<String> = fs::read_dir(&usr)
        .map_err(|e| Error::internal(format!("listing {}: {e}", usr.display())))?
        .filter_map(|e| e.ok())
        .map(|e| {
            let mtime = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("{} {mtime}", e.file_name().to_string_lossy())
        })
        .collect();
    listing.sort();
    Ok(format!(
        "usr sha256:{}",
        sha256_hex(listing.join("\n").as_bytes())
    ))
}

/// Resolve `host`: generate its root on first use (idempotent, atomic).
fn host_image(paths: &SandboxPaths) -> Result<ResolvedImage> {
    let plan = host_plan()?;
    let dir = images_dir(paths).join("host");
    let dest = dir.join(&plan.digest_hex);
    if !dest.join("manifest").is_file() {
        mkdir_all(&dir)?;
        let work = WorkDir::new(&images_dir(paths))?;
        let image_dir = work.path.join("image");
        mkdir(&image_dir, 0o755)?;
        write_host_root(&plan, &image_dir.join("rootfs"))?;
        // Written last: its presence marks a complete image.
        write_file(&image_dir.join("manifest"), plan.manifest.as_bytes(), 0o644)?;
        publish(&image_dir, &dest)?;
    }
    Ok(ResolvedImage {
        image: Image {
            name: HOST.to_string(),
            digest: format!("sha256:{}", plan.digest_hex),
        },
        rootfs: dest.join("rootfs"),
        binds: plan.binds,
        env: host_env(),
    })
}

fn write_host_root(plan: &HostPlan, rootfs: &Path) -> Result<()> {
    mkdir(rootfs, 0o755)?;
    for d in &plan.dirs {
        mkdir(&rootfs.join(d), 0o755)?;
    }
    for (p, content) in &plan.files {
        write_file(&rootfs.join(p), content, 0o644)?;
    }
    for (p, target) in &plan.symlinks {
        let at = rootfs.join(p);
        std::os::unix::fs::symlink(target, &at)
            .map_err(|e| Error::internal(format!("creating link {}: {e}", at.display())))?;
    }
    if nix::unistd::geteuid().is_root() {
        chown_tree_root(rootfs)?;
    }
    Ok(())
}

fn chown_tree_root(dir: &Path) -> Result<()> {
    std::os::unix::fs::lchown(dir, Some(0), Some(0))
        .map_err(|e| Error::internal(format!("chown {}: {e}", dir.display())))?;
    for e in
        fs::read_dir(dir).map_err(|e| Error::internal(format!("listing {}: {e}", dir.display())))?
    {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            chown_tree_root(&e.path())?;
        } else {
            std::os::unix::fs::lchown(e.path(), Some(0), Some(0))
                .map_err(|err| Error::internal(format!("chown {}: {err}", e.path().display())))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The index and the store.

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    images: BTreeMap<String, IndexEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    env: Vec<(String, String)>,
    #[serde(default)]
    working_dir: Option<String>,
}

/// Kept next to each stored rootfs so a bare digest resolves too.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredMeta {
    digest: String,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    format: String,
    layers: usize,
    /// A built image ([`build_layer`]): the `host` digest it was built on
    /// (`sha256:...`), or [`crate::debian::BASE`] for a full root. The
    /// host's /usr is bound, not copied, so a host-based image is only what
    /// its digest says while the host image is that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<String>,
    /// A built image: the digest of its layer and of the recipe it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recipe_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// A Debian-based built image (base [`crate::debian::BASE`]): the
    /// digest of the `debian.lock` its root was unpacked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    debian_lock: Option<String>,
}

fn read_index(paths: &SandboxPaths) -> Result<Index> {
    let p = images_dir(paths).join("index.json");
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::internal(format!("image index {} is corrupt: {e}", p.display()))
                .hint("remove it and import the images again")
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
        Err(e) => Err(Error::internal(format!("reading {}: {e}", p.display()))),
    }
}

/// Read-modify-write the index under an exclusive lock, replacing it atomically.
fn update_index(paths: &SandboxPaths, f: impl FnOnce(&mut Index)) -> Result<()> {
    let dir = images_dir(paths);
    mkdir_all(&dir)?;
    let lock_path = dir.join("index.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::internal(format!("opening {}: {e}", lock_path.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::internal(format!("locking {}: {e}", lock_path.display())))?;
    let mut index = read_index(paths)?;
    f(&mut index);
    let tmp = dir.join(format!("index.json.{}", std::process::id()));
    write_file(&tmp, &to_json(&index)?, 0o644)?;
    fs::rename(&tmp, dir.join("index.json"))
        .map_err(|e| Error::internal(format!("replacing image index: {e}")))?;
    Ok(())
}

fn stored_digests(paths: &SandboxPaths) -> Result<Vec<String>> {
    let store = images_dir(paths).join("store");
    let rd = match fs::read_dir(&store) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::internal(format!("listing {}: {e}", store.display()))),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            if is_hex64(n) && e.path().join("image.json").is_file() {
                out.push(n.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn load_stored(paths: &SandboxPaths, name: &str, hex: &str) -> Result<ResolvedImage> {
    if !is_hex64(hex) {
        return Err(not_found(name));
    }
    let dir = images_dir(paths).join("store").join(hex);
    let meta: StoredMeta = match fs::read(dir.join("image.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::internal(format!("{}/image.json is corrupt: {e}", dir.display()))
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(name)),
        Err(e) => {
            return Err(Error::internal(format!(
                "reading {}/image.json: {e}",
                dir.display()
            )))
        }
    };
    let mut binds = Vec::new();
    if let Some(base) = meta.base.as_ref().filter(|b| b.starts_with("sha256:")) {
        // Fail closed: a different host /usr under the same digest would be
        // running something the digest does not name.
        let host = host_plan()?;
        let now = format!("sha256:{}", host.digest_hex);
        if *base != now {
            return Err(Error::conflict(format!(
                "image {name:?} ({}) was built on the host image {base}, but the host image is now {now} (the host's packages changed)",
                meta.digest
            ))
            .hint("build it again on this host with `brig image build` (docs/AGENTS.md)"));
        }
        binds = host.binds;
    }
    Ok(ResolvedImage {
        image: Image {
            name: name.to_string(),
            digest: meta.digest,
        },
        rootfs: dir.join("rootfs"),
        binds,
        env: meta.env,
    })
}

// ---------------------------------------------------------------------------
// Import: reading OCI layouts and docker archives.

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<ContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// One layer to unpack: its file inside the layout and what it must hash to.
struct LayerPlan {
    rel: PathBuf,
    /// sha256 hex of the file as stored (OCI blob digest), if known.
    blob_hex: Option<String>,
    /// sha256 hex of the uncompressed tar (the config's diff_id).
    diff_hex: String,
    label: String,
}

struct ImportPlan {
    format: &'static str,
    digest_hex: String,
    config_raw: Vec<u8>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    layers: Vec<LayerPlan>,
}

/// Manifests and configs are small; refuse absurd ones before reading them.
const MAX_JSON: u64 = 16 << 20;

fn plan_import(root: &Path, source: &Path) -> Result<ImportPlan> {
    let has = |p: &str| {
        resolve_in_root(root, Path::new(p), true)
            .map(|p| p.is_file())
            .unwrap_or(false)
    };
    if has("oci-layout") && has("index.json") {
        plan_oci(root)
    } else if has("manifest.json") {
        plan_docker(root)
    } else {
        Err(Error::invalid(format!(
            "{} is neither an OCI image layout (oci-layout, index.json) nor a `docker save` archive (manifest.json)",
            source.display()
        ))
        .hint("export the image with `docker save IMAGE -o image.tar` or `skopeo copy ... oci:DIR`"))
    }
}

fn plan_oci(root: &Path) -> Result<ImportPlan> {
    let layout: serde_json::Value = serde_json::from_slice(&read_small(root, "oci-layout")?)
        .map_err(|e| Error::invalid(format!("oci-layout is not valid JSON: {e}")))?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(Error::invalid("oci-layout has no imageLayoutVersion"));
    }
    let index: OciIndex = serde_json::from_slice(&read_small(root, "index.json")?)
        .map_err(|e| Error::invalid(format!("index.json is not a valid OCI index: {e}")))?;
    let mut desc = pick_manifest(index.manifests, "index.json")?;
    // Follow nested indexes (multi-platform images) to one image manifest.
    for _ in 0..4 {
        if !is_index_type(&desc.media_type) {
            break;
        }
        let raw = read_blob_json(root, &desc)?;
        let nested: OciIndex = serde_json::from_slice(&raw)
            .map_err(|e| Error::invalid(format!("index {} is not valid: {e}", desc.digest)))?;
        desc = pick_manifest(nested.manifests, &desc.digest)?;
    }
    let manifest_raw = read_blob_json(root, &desc)?;
    let manifest: OciManifest = serde_json::from_slice(&manifest_raw).map_err(|e| {
        Error::invalid(format!(
            "manifest {} is not a valid image manifest: {e}",
            desc.digest
        ))
    })?;
    let config_raw = read_blob_json(root, &manifest.config)?;
    let (env, working_dir, diff_ids) = parse_config(&config_raw, &manifest.config.digest)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "manifest {} has {} layers but its config lists {} diff_ids",
            desc.digest,
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let n = manifest.layers.len();
    let mut layers = Vec::new();
    for (i, (l, diff)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        let hex = digest_hex(&l.digest)?;
        verify_blob(root, &l.digest, l.size)?;
        layers.push(LayerPlan {
            rel: PathBuf::from("blobs/sha256").join(&hex),
            blob_hex: Some(hex),
            diff_hex: diff,
            label: format!("layer {} of {n} ({})", i + 1, l.digest),
        });
    }
    Ok(ImportPlan {
        format: "oci-layout",
        digest_hex: digest_hex(&desc.digest)?,
        config_raw,
        env,
        working_dir,
        layers,
    })
}

fn is_index_type(t: &str) -> bool {
    t == "application/vnd.oci.image.index.v1+json"
        || t == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// One image from an index: the only one, or the one for this machine.
fn pick_manifest(mut list: Vec<Descriptor>, what: &str) -> Result<Descriptor> {
    if list.len() > 1 {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        list.retain(|d| {
            d.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == arch)
        });
    }
    match list.len() {
        0 => Err(Error::invalid(format!(
            "{what} lists no image for linux/{}",
            std::env::consts::ARCH
        ))),
        1 => Ok(list.remove(0)),
        n => Err(Error::invalid(format!(
            "{what} lists {n} images; brig imports one at a time"
        ))
        .hint("export a single image (e.g. `skopeo copy --all=false`)")),
    }
}

fn plan_docker(root: &Path) -> Result<ImportPlan> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&read_small(root, "manifest.json")?).map_err(|e| {
            Error::invalid(format!(
                "manifest.json is not a valid `docker save` manifest: {e}"
            ))
        })?;
    let entry = match entries.len() {
        1 => &entries[0],
        0 => return Err(Error::invalid("manifest.json lists no image")),
        n => {
            return Err(Error::invalid(format!(
                "manifest.json lists {n} images; brig imports one at a time"
            ))
            .hint("save a single image: `docker save IMAGE -o image.tar`"))
        }
    };
    // The config's file name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let cfg_path = safe_rel(entry.config.as_bytes()).ok_or_else(|| {
        Error::invalid(format!(
            "manifest.json names an unsafe config path {:?}",
            entry.config
        ))
    })?;
    let cfg_hex = cfg_path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".json").to_string())
        .filter(|h| is_hex64(h))
        .ok_or_else(|| {
            Error::invalid(format!(
                "config {:?} is not named by its sha256, so it cannot be verified",
                entry.config
            ))
        })?;
    let config_raw = read_small(root, &entry.config)?;
    let actual = sha256_hex(&config_raw);
    if actual != cfg_hex {
        return Err(digest_mismatch(&entry.config, &cfg_hex, &actual));
    }
    let (env, working_dir, diff_ids) = parse_config(&config_raw, &entry.config)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::invalid(format!(
            "manifest.json has {} layers but the config lists {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let n = entry.layers.len();
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    for (i, (l, diff)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let rel = safe_rel(l.as_bytes()).ok_or_else(|| {
            Error::invalid(format!("manifest.json names an unsafe layer path {l:?}"))
        })?;
        let path = resolve_in_root(root, &rel, true)?;
        let (hex, size) =
            hash_file(&path).map_err(|e| Error::invalid(format!("reading layer {l:?}: {e}")))?;
        let gz = is_gzip(&path)?;
        // An uncompressed layer must hash to its diff_id; a compressed one
        // is checked against it while unpacking.
        if !gz && hex != diff {
            return Err(digest_mismatch(l, &diff, &hex));
        }
        descs.push(serde_json::json!({
            "mediaType": if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
            "digest": format!("sha256:{hex}"),
            "size": size,
        }));
        layers.push(LayerPlan {
            rel,
            blob_hex: Some(hex),
            diff_hex: diff,
            label: format!("layer {} of {n} ({l})", i + 1),
        });
    }
    // docker's legacy archive has no manifest blob: the digest is that of
    // the equivalent OCI manifest, so it is stable across imports.
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{cfg_hex}"),
            "size": config_raw.len(),
        },
        "layers": descs,
    });
    let manifest_raw = serde_json::to_vec(&manifest).map_err(|e| Error::internal(e.to_string()))?;
    Ok(ImportPlan {
        format: "docker-archive",
        digest_hex: sha256_hex(&manifest_raw),
        config_raw,
        env,
        working_dir,
        layers,
    })
}

type ParsedConfig = (Vec<(String, String)>, Option<String>, Vec<String>);

fn parse_config(raw: &[u8], what: &str) -> Result<ParsedConfig> {
    let cfg: ImageConfig = serde_json::from_slice(raw)
        .map_err(|e| Error::invalid(format!("image config {what} is not valid: {e}")))?;
    let mut env = Vec::new();
    let (mut wd, mut raw_env) = (None, Vec::new());
    if let Some(c) = cfg.config {
        raw_env = c.env.unwrap_or_default();
        wd = c.working_dir.filter(|w| !w.is_empty());
    }
    for kv in raw_env {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => {
                return Err(Error::invalid(format!(
                    "image config {what} has a malformed Env entry {kv:?}"
                )))
            }
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    let diff_ids = cfg
        .rootfs
        .ok_or_else(|| Error::invalid(format!("image config {what} has no rootfs.diff_ids")))?
        .diff_ids
        .iter()
        .map(|d| digest_hex(d))
        .collect::<Result<Vec<_>>>()?;
    Ok((env, wd, diff_ids))
}

fn digest_hex(d: &str) -> Result<String> {
    match d.strip_prefix("sha256:") {
        Some(h) if is_hex64(h) => Ok(h.to_string()),
        _ => Err(
            Error::invalid(format!("digest {d:?} is not a sha256 digest"))
                .hint("brig verifies sha256 digests only"),
        ),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn digest_mismatch(what: &str, expected: &str, actual: &str) -> Error {
    Error::invalid(format!(
        "blob {what} does not match its digest: its content hashes to sha256:{actual}, not sha256:{expected}"
    ))
    .hint("the image is corrupt or was tampered with; export it again")
}

fn read_small(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let rel_path = safe_rel(rel.as_bytes())
        .ok_or_else(|| Error::invalid(format!("unsafe path {rel:?} in the image")))?;
    let path =
        resolve_in_root(root, &rel_path, true).map_err(|e| e.context(format!("reading {rel}")))?;
    let f = File::open(&path)
        .map_err(|e| Error::invalid(format!("{rel} is missing from the image: {e}")))?;
    let mut buf = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::invalid(format!("reading {rel}: {e}")))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(Error::invalid(format!(
            "{rel} is larger than {MAX_JSON} bytes"
        )));
    }
    Ok(buf)
}

/// Read a JSON blob and check it against its descriptor.
fn read_blob_json(root: &Path, d: &Descriptor) -> Result<Vec<u8>> {
    let hex = digest_hex(&d.digest)?;
    let raw = read_small(root, &format!("blobs/sha256/{hex}"))?;
    let actual = sha256_hex(&raw);
    if actual != hex {
        return Err(digest_mismatch(&d.digest, &hex, &actual));
    }
    if let Some(size) = d.size {
        if size != raw.len() as u64 {
            return Err(Error::invalid(format!(
                "blob {} is {} bytes, its descriptor says {size}",
                d.digest,
                raw.len()
            )));
        }
    }
    Ok(raw)
}

fn verify_blob(root: &Path, digest: &str, size: Option<u64>) -> Result<()> {
    let hex = digest_hex(digest)?;
    let path = resolve_in_root(root, &PathBuf::from("blobs/sha256").join(&hex), true)
        .map_err(|e| e.context(format!("blob {digest}")))?;
    let (actual, len) = hash_file(&path)
        .map_err(|e| Error::invalid(format!("blob {digest} is missing or unreadable: {e}")))?;
    if actual != hex {
        return Err(digest_mismatch(digest, &hex, &actual));
    }
    if let Some(size) = size {
        if size != len {
            return Err(Error::invalid(format!(
                "blob {digest} is {len} bytes, its descriptor says {size}"
            )));
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

fn is_gzip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut f =
        File::open(path).map_err(|e| Error::invalid(format!("opening {}: {e}", path.display())))?;
    let n = f.read(&mut magic)?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// Unpack a tarball given to `brig image import` (a `docker save` archive,
/// possibly holding an OCI layout, optionally gzip'd) into `staged`.
fn stage_tarball(source: &Path, staged: &Path) -> Result<()> {
    let not_tar = |e: &dyn std::fmt::Display| {
        Error::invalid(format!(
            "{} is not a tar archive or an OCI image layout directory: {e}",
            source.display()
        ))
        .hint("pass the output of `docker save IMAGE -o image.tar`, or an OCI layout directory")
    };
    let f = File::open(source)
        .map_err(|e| Error::invalid(format!("opening {}: {e}", source.display())))?;
    let gz = is_gzip(source)?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(reader);
    let mut count = 0usize;
    let entries = archive.entries().map_err(|e| not_tar(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_tar(&e))?;
        count += 1;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = safe_rel(&raw) else {
            return Err(Error::invalid(format!(
                "{} has an unsafe path {:?} (absolute or with ..)",
                source.display(),
                String::from_utf8_lossy(&raw)
            )));
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let (parent, name) = resolve_parent(staged, &rel)?;
        let target = parent.join(&name);
        match entry.header().entry_type() {
            tar::EntryType::Directory => match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                _ => {
                    remove_existing(&target)?;
                    mkdir(&target, 0o700)?;
                }
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&target)?;
                let mut out = create_new(&target, 0o600)?;
                copy_entry(&mut entry, &mut out, &target)
                    .map_err(|e| e.context(source.display()))?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().ok_or_else(|| {
                    Error::invalid(format!("symlink {} has no target", rel.display()))
                })?;
                remove_existing(&target)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target).map_err(|e| {
                    Error::internal(format!("creating link {}: {e}", target.display()))
                })?;
            }
            // Anything else has no place in an image archive's outer layer.
            _ => {}
        }
    }
    if count == 0 {
        return Err(not_tar(&"no entries"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Unpacking layers.

/// Hashes what passes through, to check a digest over exactly the bytes used.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Per-import state kept across layers.
#[derive(Default)]
struct UnpackState {
    /// Directory modes, applied once everything is unpacked so a read-only
    /// directory in a lower layer does not stop upper layers.
    dir_modes: HashMap<PathBuf, u32>,
    skipped_devices: u64,
}

fn unpack_layers(root_dir: &Path, plan: &ImportPlan, rootfs: &Path) -> Result<()> {
    let mut state = UnpackState::default();
    for layer in &plan.layers {
        let path =
            resolve_in_root(root_dir, &layer.rel, true).map_err(|e| e.context(&layer.label))?;
        let gz = is_gzip(&path)?;
        let file =
            File::open(&path).map_err(|e| Error::invalid(format!("{}: {e}", layer.label)))?;
        let mut raw = HashingReader {
            inner: file,
            hash: Sha256::new(),
        };
        {
            let mut zstd_magic = [0u8; 4];
            let mut peek = File::open(&path)?;
            if peek.read(&mut zstd_magic)? == 4 && zstd_magic == [0x28, 0xb5, 0x2f, 0xfd] {
                return Err(Error::invalid(format!(
                    "{} is zstd-compressed, which brig cannot unpack yet",
                    layer.label
                ))
                .hint("export the image with gzip or uncompressed layers"));
            }
        }
        let diff_hex = if gz {
            let mut dec = HashingReader {
                inner: flate2::read::GzDecoder::new(&mut raw),
                hash: Sha256::new(),
            };
            unpack_one(&mut dec, rootfs, &layer.label, "gzip'd tar", &mut state)?;
            drain(&mut dec).map_err(|e| {
                Error::invalid(format!("{} is not a valid gzip stream: {e}", layer.label))
            })?;
            hex::encode(dec.hash.finalize())
        } else {
            unpack_one(&mut raw, rootfs, &layer.label, "tar", &mut state)?;
            String::new()
        };
        drain(&mut raw).map_err(|e| Error::invalid(format!("reading {}: {e}", layer.label)))?;
        let blob_hex = hex::encode(raw.hash.finalize());
        // The file may have changed since it was verified: check what was used.
        if let Some(expected) = &layer.blob_hex {
            if &blob_hex != expected {
                return Err(digest_mismatch(&layer.label, expected, &blob_hex));
            }
        }
        let diff_hex = if gz { diff_hex } else { blob_hex };
        if diff_hex != layer.diff_hex {
            return Err(Error::invalid(format!(
                "{} does not match the config's diff_id: expected sha256:{}, found sha256:{diff_hex}",
                layer.label, layer.diff_hex
            ))
            .hint("the image is corrupt or was tampered with; export it again"));
        }
    }
    if state.skipped_devices > 0 {
        tracing::debug!(
            count = state.skipped_devices,
            "skipped device nodes and fifos in image layers"
        );
    }
    make_mountpoints(rootfs)?;
    for m in MOUNTPOINTS {
        state.dir_modes.remove(&rootfs.join(m));
    }
    for (dir, mode) in &state.dir_modes {
        // Entries may since have been replaced (a whiteout, a later file).
        if fs::symlink_metadata(dir)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
                .map_err(|e| Error::internal(format!("chmod {}: {e}", dir.display())))?;
        }
    }
    fs::set_permissions(rootfs, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn drain(r: &mut impl Read) -> io::Result<()> {
    io::copy(r, &mut io::sink()).map(|_| ())
}

fn unpack_one(
    reader: &mut dyn Read,
    rootfs: &Path,
    label: &str,
    kind: &str,
    state: &mut UnpackState,
) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid(format!("{label} is not a valid {kind} stream: {e}"))
            .hint("the image is corrupt; export it again")
    };
    let mut archive = tar::Archive::new(reader);
    // Paths this layer wrote (and their parents): an opaque whiteout hides
    // only what lower layers put in a directory.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let entries = archive.entries().map_err(|e| bad(&e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(&e))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let rel = safe_rel(&raw).ok_or_else(|| {
            Error::invalid(format!(
                "{label} has an unsafe path {shown:?} (absolute or with ..)"
            ))
            .hint("refusing to import an image that writes outside its root")
        })?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let (parent, name) = resolve_parent(rootfs, &rel)
            .map_err(|e| e.context(format!("{label}, entry {shown:?}")))?;
        mark_written(&mut written, rootfs, &parent);
        let name_b = name.as_bytes();
        // Whiteouts.
        if name_b == b".wh..wh..opq" {
            clear_opaque(&parent, &written)?;
            continue;
        }
        if let Some(hidden) = name_b.strip_prefix(b".wh.") {
            if hidden.is_empty() {
                return Err(Error::invalid(format!(
                    "{label} has an empty whiteout {shown:?}"
                )));
            }
            remove_existing(&parent.join(OsStr::from_bytes(hidden)))?;
            continue;
        }
        let target = parent.join(&name);
        let mode = entry.header().mode().map_err(|e| bad(&e))?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_existing(&target)?;
                        mkdir(&target, 0o755)?;
                    }
                    Err(_) => mkdir(&target, 0o755)?,
                }
                // No setuid/setgid; the sticky bit is harmless on a read-only root.
                state.dir_modes.insert(target.clone(), mode & 0o1777);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_existing(&target)?;
                let mut out = create_new(&target, 0o600)?;
                copy_entry(&mut entry, &mut out, &target).map_err(|e| e.context(label))?;
                out.set_permissions(fs::Permissions::from_mode(mode & 0o777))
                    .map_err(|e| Error::internal(format!("chmod {}: {e}", target.display())))?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name_bytes().ok_or_else(|| {
                    Error::invalid(format!("{label}: symlink {shown:?} has no target"))
                })?;
                remove_existing(&target)?;
                // The target is not checked: a link is only followed inside
                // the sandbox's root, and writes through links are resolved
                // inside the root above.
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target).map_err(|e| {
                    Error::internal(format!("creating link {}: {e}", target.display()))
                })?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name_bytes().ok_or_else(|| {
                    Error::invalid(format!("{label}: hard link {shown:?} has no target"))
                })?;
                let link_rel = safe_rel(&link).ok_or_else(|| {
                    Error::invalid(format!(
                        "{label}: hard link {shown:?} points at an unsafe path {:?}",
                        String::from_utf8_lossy(&link)
                    ))
                    .hint("refusing to import an image that links outside its root")
                })?;
                let (lp, ln) = resolve_parent(rootfs, &link_rel)
                    .map_err(|e| e.context(format!("{label}, entry {shown:?}")))?;
                let src = lp.join(ln);
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(Error::invalid(format!(
                            "{label}: hard link {shown:?} points at {:?}, which is not a file in the image",
                            String::from_utf8_lossy(&link)
                        )))
                    }
                }
                if src != target {
                    remove_existing(&target)?;
                    fs::hard_link(&src, &target).map_err(|e| {
                        Error::internal(format!("linking {}: {e}", target.display()))
                    })?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // Device nodes and fifos never enter an image root.
                state.skipped_devices += 1;
                continue;
            }
            // pax/GNU metadata the tar crate did not fold in, and unknown types.
            _ => continue,
        }
        mark_written(&mut written, rootfs, &target);
    }
    Ok(())
}

fn mark_written(written: &mut HashSet<PathBuf>, rootfs: &Path, p: &Path) {
    let mut cur = Some(p);
    while let Some(c) = cur {
        if c == rootfs || !written.insert(c.to_path_buf()) {
            break;
        }
        cur = c.parent();
    }
}

/// An opaque whiteout: drop everything in `dir` that this layer did not write.
fn clear_opaque(dir: &Path, written: &HashSet<PathBuf>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::internal(format!("listing {}: {e}", dir.display()))),
    };
    for e in rd {
        let p = e?.path();
        if !written.contains(&p) {
            remove_existing(&p)?;
        } else if fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            clear_opaque(&p, written)?;
        }
    }
    Ok(())
}

fn copy_entry(entry: &mut impl Read, out: &mut File, target: &Path) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::invalid(format!(
                    "archive data for {} is corrupt: {e}",
                    target.display()
                ))
                .hint("the image is corrupt; export it again"))
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| Error::internal(format!("writing {}: {e}", target.display())))?;
    }
}

/// A tar path as a relative path with no `..`; `None` if it is absolute or
/// climbs. `./` prefixes are dropped; an empty result means the root itself.
fn safe_rel(raw: &[u8]) -> Option<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(out)
}

/// Resolve `rel` inside `root` the way the sandbox will see it: symlinks
/// are followed with absolute targets taken relative to `root`; anything
/// that would leave `root` is refused. Returns the host path; the final
/// component is followed only if `follow_last`.
fn resolve_in_root(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf> {
    let mut rel = rel.to_path_buf();
    for _ in 0..40 {
        let (parent, name) = walk_in_root(root, &rel, false)?;
        let p = parent.join(&name);
        let is_link = fs::symlink_metadata(&p)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !follow_last || !is_link {
            return Ok(p);
        }
        // Continue with the link's target, read as a path in the root.
        let target = fs::read_link(&p)?;
        rel = if target.is_absolute() {
            target
        } else {
            parent
                .strip_prefix(root)
                .unwrap_or(Path::new(""))
                .join(target)
        };
    }
    Err(Error::invalid(format!(
        "too many symlinks resolving {}",
        rel.display()
    )))
}

/// The directory an entry at `rel` goes into (created as needed, symlinks
/// in it resolved inside `root`) and the entry's name.
fn resolve_parent(root: &Path, rel: &Path) -> Result<(PathBuf, OsString)> {
    walk_in_root(root, rel, true)
}

fn walk_in_root(root: &Path, rel: &Path, create: bool) -> Result<(PathBuf, OsString)> {
    walk_components(root, rel, create)
}

fn walk_components(root: &Path, rel: &Path, create: bool) -> Result<(PathBuf, OsString)> {
    let escape = |via: &Path| {
        Error::invalid(format!(
            "path {} would leave the image root through the symlink {}",
            rel.display(),
            via.display()
        ))
        .hint("refusing to import an image that writes outside its root")
    };
    let mut comps: Vec<OsString> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => comps.push(n.to_os_string()),
            Component::ParentDir => comps.push(OsString::from("..")),
            _ => {}
        }
    }
    let Some(last) = comps.pop() else {
        return Err(Error::invalid(format!("empty path {}", rel.display())));
    };
    if last == ".." {
        return Err(Error::invalid(format!("path {} ends in ..", rel.display())));
    }
    let mut queue: VecDeque<OsString> = comps.into();
    let mut parts: Vec<OsString> = Vec::new();
    let mut hops = 0;
    let mut via: Option<PathBuf> = None;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            if parts.pop().is_none() {
                return Err(escape(via.as_deref().unwrap_or(rel)));
            }
            continue;
        }
        let cur: PathBuf = root.join(parts.iter().collect::<PathBuf>()).join(&c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(Error::invalid(format!(
                        "too many symlinks resolving {}",
                        rel.display()
                    )));
                }
                let target = fs::read_link(&cur)?;
                via = Some(cur.strip_prefix(root).unwrap_or(&cur).to_path_buf());
                if target.is_absolute() {
                    parts.clear();
                }
                let mut front: Vec<OsString> = Vec::new();
                for tc in target.components() {
                    match tc {
                        Component::Normal(n) => front.push(n.to_os_string()),
                        Component::ParentDir => front.push(OsString::from("..")),
                        _ => {}
                    }
                }
                for f in front.into_iter().rev() {
                    queue.push_front(f);
                }
            }
            Ok(m) if m.is_dir() => parts.push(c),
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "path {}: {} is not a directory",
                    rel.display(),
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                mkdir(&cur, 0o755)?;
                parts.push(c);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::invalid(format!("{} is missing", rel.display())));
            }
            Err(e) => return Err(Error::internal(format!("reading {}: {e}", cur.display()))),
        }
    }
    Ok((root.join(parts.iter().collect::<PathBuf>()), last))
}

// ---------------------------------------------------------------------------
// Built images: the `host` image plus one layer (`brig image build`).

/// Index names of built images start with this; only [`build_layer`]
/// writes them (import refuses them), so such a name always means "built
/// by brig from the recipe whose digest it carries".
pub const RECIPE_PREFIX: &str = "recipe/";

/// Most entries a layer may have (a guard against a runaway install).
const MAX_LAYER_ENTRIES: usize = 500_000;

/// What [`build_layer`] takes.
pub struct LayerSpec<'a> {
    /// The index name to give the image (under [`RECIPE_PREFIX`]).
    pub name: &'a str,
    /// A directory on this host whose content becomes the layer.
    pub source: &'a Path,
    /// Where the layer appears in the image (absolute, under `/opt/`).
    pub prefix: &'a str,
    /// Directories under `prefix` put in front of the image's PATH.
    pub path: &'a [String],
    /// The digest of the recipe the layer was built from.
    pub recipe_digest: &'a str,
    /// The root to build on ([`stage_debian_root`]; it is moved into the
    /// image), or none for the `host` image.
    pub base: Option<&'a BaseRoot>,
}

/// A full root staged for [`build_layer`]: a Debian archive's packages,
/// unpacked, with the files their maintainer scripts would have made.
pub struct BaseRoot {
    work: WorkDir,
    /// What the image records as its base ([`crate::debian::BASE`]).
    pub label: String,
    /// The digest of the lock the packages came from.
    pub lock_digest: String,
    /// `sha256:` over the root's canonical manifest.
    pub root_digest: String,
    pub files: u64,
    pub bytes: u64,
}

/// A built image and what it is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    pub name: String,
    /// The image's content digest: the base's, the layer's, the prefix and
    /// the environment.
    pub digest: String,
    pub base: String,
    pub layer_digest: String,
    pub recipe_digest: String,
    pub prefix: String,
    /// A Debian-based image: the digest of its `debian.lock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian_lock: Option<String>,
    pub files: u64,
    pub bytes: u64,
    /// This build put the image in the store (it was not there already).
    #[serde(skip)]
    pub fresh: bool,
}

/// Stack `spec.source` as a layer at `spec.prefix` on the `host` image or
/// on `spec.base`: a new immutable image in the store, keyed by its content
/// digest. [`name_built`] then points `spec.name` at it. The source is copied, never followed:
/// directories, regular files (mode 0755 or 0644, owned by root) and
/// symlinks (kept as they are; they resolve inside the sandbox's root);
/// anything else is refused. Built in `tmp/` and renamed into place.
pub fn build_layer(paths: &SandboxPaths, spec: &LayerSpec) -> Result<BuiltImage> {
    validate_name(spec.name)?;
    if !spec.name.starts_with(RECIPE_PREFIX) {
        return Err(Error::invalid(format!(
            "a built image's name must start with {RECIPE_PREFIX:?}"
        )));
    }
    let prefix = layer_prefix(spec.prefix)?;
    for d in spec.path {
        if safe_rel(d.as_bytes()).is_none_or(|p| p.as_os_str().is_empty()) {
            return Err(Error::invalid(format!(
                "PATH entry {d:?} must be a relative directory under the prefix"
            )));
        }
    }
    let src = fs::symlink_metadata(spec.source).map_err(|e| {
        Error::invalid(format!("layer source {}: {e}", spec.source.display()))
            .hint("the build's steps must leave the layer in /workspace/layer")
    })?;
    if !src.is_dir() {
        return Err(Error::invalid(format!(
            "layer source {} is not a directory",
            spec.source.display()
        ))
        .hint("the build's steps must leave the layer in /workspace/layer"));
    }
    let images = images_dir(paths);
    let work = WorkDir::new(&images)?;
    let image_dir = work.path.join("image");
    let rootfs = image_dir.join("rootfs");
    mkdir(&image_dir, 0o755)?;
    let base = match spec.base {
        // A full root: moved in, nothing of the host's in it.
        Some(b) => {
            fs::rename(b.rootfs(), &rootfs)
                .map_err(|e| Error::internal(format!("moving the base root: {e}")))?;
            format!(
                "{}\ndebian-lock {}\nroot {}",
                b.label, b.lock_digest, b.root_digest
            )
        }
        // The host image's generated root (small: /etc, mountpoints,
        // links), its /usr bound at run time as for `host`.
        None => {
            let host = host_image(paths)?;
            copy_tree(&host.rootfs, &rootfs, "", &mut Copied::default())?;
            host.image.digest
        }
    };
    let mut at = rootfs.clone();
    for c in prefix.components() {
        at.push(c);
        mkdir(&at, 0o755)?;
    }
    fs::remove_dir(&at).map_err(|e| Error::internal(format!("{}: {e}", at.display())))?;
    let mut layer = Copied::default();
    copy_tree(spec.source, &at, "", &mut layer)?;
    let entries = layer.manifest;
    let counts = (layer.files, layer.bytes);
    let layer_hex = sha256_hex(entries.join("").as_bytes());
    let prefix_abs = format!("/{}", prefix.display());
    let mut path_var: Vec<String> = spec
        .path
        .iter()
        .map(|d| format!("{prefix_abs}/{}", d.trim_end_matches('/')))
        .collect();
    path_var.push(DEFAULT_PATH.to_string());
    let env = vec![
        ("PATH".to_string(), path_var.join(":")),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    // v1 (the host) is unchanged, so host-based digests stay what they were.
    let version = if spec.base.is_some() { 2 } else { 1 };
    let mut m = format!("brig-layer-image v{version}\nbase {base}\nprefix {prefix_abs}\n");
    let base = spec.base.map(|b| b.label.clone()).unwrap_or(base);
    let debian_lock = spec.base.map(|b| b.lock_digest.clone());
    for (k, v) in &env {
        m.push_str(&format!("env {k}={v}\n"));
    }
    m.push_str(&format!("layer sha256:{layer_hex}\n"));
    let hex = sha256_hex(m.as_bytes());
    let digest = format!("sha256:{hex}");
    let store = images.join("store");
    mkdir_all(&store)?;
    let dest = store.join(&hex);
    let fresh = !dest.join("image.json").is_file();
    if fresh {
        if nix::unistd::geteuid().is_root() {
            chown_tree_root(&rootfs)?;
        }
        write_file(&image_dir.join("manifest"), m.as_bytes(), 0o644)?;
        write_file(
            &image_dir.join("layer.manifest"),
            entries.join("").as_bytes(),
            0o644,
        )?;
        let meta = StoredMeta {
            digest: digest.clone(),
            env: env.clone(),
            working_dir: None,
            format: "brig-layer".to_string(),
            layers: 1,
            base: Some(base.clone()),
            layer_digest: Some(format!("sha256:{layer_hex}")),
            recipe_digest: Some(spec.recipe_digest.to_string()),
            prefix: Some(prefix_abs.clone()),
            debian_lock: debian_lock.clone(),
        };
        // Written last: its presence marks a complete image.
        write_file(&image_dir.join("image.json"), &to_json(&meta)?, 0o644)?;
        publish(&image_dir, &dest)?;
    }
    drop(work);
    let (base_files, base_bytes) = spec.base.map(|b| (b.files, b.bytes)).unwrap_or_default();
    Ok(BuiltImage {
        name: spec.name.to_string(),
        digest,
        base,
        layer_digest: format!("sha256:{layer_hex}"),
        recipe_digest: spec.recipe_digest.to_string(),
        prefix: prefix_abs,
        debian_lock,
        files: counts.0 + base_files,
        bytes: counts.1 + base_bytes,
        fresh,
    })
}

/// Point `img.name` at the built image (once it has passed its check).
pub fn name_built(paths: &SandboxPaths, img: &BuiltImage) -> Result<()> {
    let hex = digest_hex(&img.digest)?;
    let meta = images_dir(paths).join("store").join(hex).join("image.json");
    let meta: StoredMeta = serde_json::from_slice(
        &fs::read(&meta).map_err(|e| Error::internal(format!("{}: {e}", meta.display())))?,
    )
    .map_err(|e| Error::internal(format!("image.json is corrupt: {e}")))?;
    update_index(paths, |idx| {
        idx.images.insert(
            img.name.to_string(),
            IndexEntry {
                digest: img.digest.clone(),
                env: meta.env,
                working_dir: None,
            },
        );
    })
}

/// Remove a built image that failed its check, if this build stored it
/// (one stored before is left to whatever names it).
pub fn discard_built(paths: &SandboxPaths, img: &BuiltImage) -> Result<()> {
    if !img.fresh {
        return Ok(());
    }
    let hex = digest_hex(&img.digest)?;
    let dest = images_dir(paths).join("store").join(hex);
    // Moved aside first: a half-removed image must never look complete.
    let work = WorkDir::new(&images_dir(paths))?;
    fs::rename(&dest, work.path.join("discarded"))
        .map_err(|e| Error::internal(format!("removing {}: {e}", dest.display())))?;
    drop(work);
    Ok(())
}

impl BaseRoot {
    fn rootfs(&self) -> PathBuf {
        self.work.path.join("rootfs")
    }
}

/// What Debian's maintainer scripts would have made, for a root unpacked
/// with `dpkg-deb -x`: brig's /etc (as for `host`: users, hosts, resolver,
/// NSS), the CA bundle update-ca-certificates builds from the Mozilla
/// set, and the alternatives links a shell expects.
const DEBIAN_ALTERNATIVES: [(&str, &str); 2] = [("usr/bin/awk", "mawk"), ("usr/bin/pager", "less")];

/// Copy `unpacked` (a tree the build session unpacked from verified .debs)
/// into a new root in the store's `tmp/`, generating what the packages'
/// maintainer scripts would have, for [`build_layer`] to build on. Copied
/// as a layer is: only directories, files (0755 or 0644) and symlinks.
pub fn stage_debian_root(
    paths: &SandboxPaths,
    unpacked: &Path,
    label: &str,
    lock_digest: &str,
) -> Result<BaseRoot> {
    let work = WorkDir::new(&images_dir(paths))?;
    let rootfs = work.path.join("rootfs");
    let mut c = Copied::default();
    copy_tree(unpacked, &rootfs, "", &mut c)?;
    make_mountpoints(&rootfs)?;
    let mut generated = generated_etc();
    // Read only through real directories and from regular files: the root
    // is a host path, and a link in it must not pull a host file in.
    let mozilla = rootfs.join("usr/share/ca-certificates/mozilla");
    let real_dirs = [
        "usr",
        "usr/share",
        "usr/share/ca-certificates",
        "usr/share/ca-certificates/mozilla",
    ]
    .iter()
    .all(|d| fs::symlink_metadata(rootfs.join(d)).is_ok_and(|m| m.is_dir()));
    if let Some(rd) = real_dirs.then(|| fs::read_dir(&mozilla).ok()).flatten() {
        let mut certs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        certs.sort();
        let mut bundle = Vec::new();
        for p in certs {
            let mut pem = Vec::new();
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .and_then(|mut f| f.read_to_end(&mut pem))
                .map_err(|e| Error::internal(format!("reading {}: {e}", p.display())))?;
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            bundle.extend(pem);
        }
        generated.push((CA_BUNDLE.into(), bundle));
    }
    let mut m = c.manifest.join("");
    // Written through links resolved inside the root: a package's
    // absolute link (say etc/ssl/certs -> /etc/...) must not reach the host.
    for (p, content) in &generated {
        let (dir, name) = resolve_parent(&rootfs, Path::new(p))?;
        let at = dir.join(name);
        remove_existing(&at)?;
        write_file(&at, content, 0o644)?;
        m.push_str(&format!("generated {p} sha256:{}\n", sha256_hex(content)));
    }
    for (link, target) in DEBIAN_ALTERNATIVES {
        let (dir, name) = resolve_parent(&rootfs, Path::new(link))?;
        let at = dir.join(name);
        let exists = fs::symlink_metadata(&at).is_ok();
        if !exists && fs::symlink_metadata(dir.join(target)).is_ok_and(|m| m.is_file()) {
            std::os::unix::fs::symlink(target, &at)
                .map_err(|e| Error::internal(format!("creating link {}: {e}", at.display())))?;
            m.push_str(&format!("generated-link {link} {target}\n"));
        }
    }
    Ok(BaseRoot {
        work,
        label: label.to_string(),
        lock_digest: lock_digest.to_string(),
        root_digest: format!("sha256:{}", sha256_hex(m.as_bytes())),
        files: c.files,
        bytes: c.bytes,
    })
}

/// The mountpoints the sandbox needs, as real directories, and the init
/// binary's mount target.
fn make_mountpoints(rootfs: &Path) -> Result<()> {
    for m in MOUNTPOINTS {
        let p = rootfs.join(m);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                remove_existing(&p)?;
                mkdir(&p, 0o755)?;
            }
            Err(_) => mkdir(&p, 0o755)?,
        }
    }
    let init = rootfs.join(INIT_TARGET);
    remove_existing(&init)?;
    drop(create_new(&init, 0o644)?);
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// What a built image was built from, if `name` is one.
pub fn built_info(paths: &SandboxPaths, name: &str) -> Result<Option<BuiltImage>> {
    let r = resolve(paths, name)?;
    let hex = r.image.digest.strip_prefix("sha256:").unwrap_or_default();
    let dir = images_dir(paths).join("store").join(hex);
    let Ok(b) = fs::read(dir.join("image.json")) else {
        return Ok(None);
    };
    let meta: StoredMeta = serde_json::from_slice(&b)
        .map_err(|e| Error::internal(format!("{}/image.json is corrupt: {e}", dir.display())))?;
    let (Some(base), Some(layer_digest), Some(recipe_digest), Some(prefix)) = (
        meta.base,
        meta.layer_digest,
        meta.recipe_digest,
        meta.prefix,
    ) else {
        return Ok(None);
    };
    Ok(Some(BuiltImage {
        name: name.to_string(),
        digest: meta.digest,
        base,
        layer_digest,
        recipe_digest,
        prefix,
        debian_lock: meta.debian_lock,
        files: 0,
        bytes: 0,
        fresh: false,
    }))
}

/// `/opt/...` as a relative path, checked.
fn layer_prefix(p: &str) -> Result<PathBuf> {
    let rel = p
        .strip_prefix('/')
        .and_then(|r| safe_rel(r.as_bytes()))
        .filter(|r| r.starts_with("opt") && r.components().count() >= 2);
    rel.ok_or_else(|| {
        Error::invalid(format!(
            "layer prefix {p:?} must be an absolute path under /opt/, e.g. /opt/brig/NAME"
        ))
    })
}

/// What [`copy_tree`] copied: one canonical manifest line per entry, and
/// the files already copied by inode (hard links stay links, once).
#[derive(Default)]
struct Copied {
    manifest: Vec<String>,
    files: u64,
    bytes: u64,
    links: HashMap<(u64, u64), (PathBuf, u32, String)>,
}

/// Copy `src` into the new directory `dst` without following a symlink.
fn copy_tree(src: &Path, dst: &Path, rel: &str, c: &mut Copied) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    mkdir(dst, 0o755)?;
    // Names are JSON strings in the manifest: a space or newline in one
    // cannot forge another line.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    c.manifest.push(format!(
        "dir {} 0755\n",
        q(if rel.is_empty() { "." } else { rel })
    ));
    let mut names: Vec<OsString> = fs::read_dir(src)
        .map_err(|e| Error::internal(format!("listing {}: {e}", src.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| Error::internal(format!("listing {}: {e}", src.display())))?;
    names.sort();
    for n in names {
        if c.manifest.len() > MAX_LAYER_ENTRIES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("the layer has more than {MAX_LAYER_ENTRIES} entries"),
            ));
        }
        let Some(ns) = n.to_str() else {
            return Err(Error::invalid(format!(
                "{}: a name in the layer is not UTF-8",
                src.join(&n).display()
            )));
        };
        let r = if rel.is_empty() {
            ns.to_string()
        } else {
            format!("{rel}/{ns}")
        };
        let (s, d) = (src.join(&n), dst.join(&n));
        let md = fs::symlink_metadata(&s)
            .map_err(|e| Error::internal(format!("{}: {e}", s.display())))?;
        let ft = md.file_type();
        if ft.is_dir() {
            copy_tree(&s, &d, &r, c)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&s)
                .map_err(|e| Error::internal(format!("reading link {}: {e}", s.display())))?;
            std::os::unix::fs::symlink(&t, &d)
                .map_err(|e| Error::internal(format!("creating link {}: {e}", d.display())))?;
            let ts = t.to_str().ok_or_else(|| {
                Error::invalid(format!("{}: link target is not UTF-8", s.display()))
            })?;
            c.manifest.push(format!("symlink {} {}\n", q(&r), q(ts)));
        } else if ft.is_file() {
            if let Some((first, mode, hash)) = c.links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, &d)
                    .map_err(|e| Error::internal(format!("linking {}: {e}", d.display())))?;
                c.manifest
                    .push(format!("file {} {mode:04o} {hash}\n", q(&r)));
                continue;
            }
            // setuid/setgid/sticky and group/other write never make it in.
            let mode = if md.mode() & 0o111 != 0 { 0o755 } else { 0o644 };
            let mut from = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&s)
                .map_err(|e| Error::internal(format!("opening {}: {e}", s.display())))?;
            let mut to = HashingWriter {
                inner: create_new(&d, mode)?,
                hash: Sha256::new(),
            };
            let len = io::copy(&mut from, &mut to)
                .map_err(|e| Error::internal(format!("copying {}: {e}", s.display())))?;
            to.inner
                .set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| Error::internal(format!("chmod {}: {e}", d.display())))?;
            let hash = format!("sha256:{}", hex::encode(to.hash.finalize()));
            c.files += 1;
            c.bytes += len;
            c.manifest
                .push(format!("file {} {mode:04o} {hash}\n", q(&r)));
            if md.nlink() > 1 {
                c.links.insert((md.dev(), md.ino()), (d, mode, hash));
            }
        } else {
            return Err(Error::invalid(format!(
                "{}: the layer may hold only directories, files and symlinks",
                s.display()
            )));
        }
    }
    Ok(())
}

struct HashingWriter {
    inner: File,
    hash: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------
// Small filesystem helpers.

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::internal(e.to_string()))
}

fn mkdir(p: &Path, mode: u32) -> Result<()> {
    fs::create_dir(p).map_err(|e| Error::internal(format!("creating {}: {e}", p.display())))?;
    // Explicit: the umask must not decide an image's permissions.
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::internal(format!("chmod {}: {e}", p.display())))
}

fn mkdir_all(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| Error::internal(format!("creating {}: {e}", p.display())))
}

fn create_new(p: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(p)
        .map_err(|e| Error::internal(format!("creating {}: {e}", p.display())))
}

fn write_file(p: &Path, content: &[u8], mode: u32) -> Result<()> {
    let mut f = create_new(p, mode)?;
    f.write_all(content)
        .map_err(|e| Error::internal(format!("writing {}: {e}", p.display())))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::internal(format!("chmod {}: {e}", p.display())))
}

/// Remove whatever is at `p` (never following a symlink); absent is fine.
fn remove_existing(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => remove_tree(p),
        Ok(_) => fs::remove_file(p)
            .map_err(|e| Error::internal(format!("removing {}: {e}", p.display()))),
        Err(_) => Ok(()),
    }
}

/// `remove_dir_all` that first makes directories writable (an image may
/// hold read-only ones and we may not be root).
fn remove_tree(p: &Path) -> Result<()> {
    fn make_writable(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        make_writable(&e.path());
                    }
                }
            }
        }
    }
    if fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    make_writable(p);
    fs::remove_dir_all(p).map_err(|e| Error::internal(format!("removing {}: {e}", p.display())))
}

/// Move a finished image into place. Losing a race to another process that
/// published the same digest is fine: the content is the same.
fn publish(from: &Path, to: &Path) -> Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if to.is_dir() => {
            tracing::debug!(error = %e, dest = %to.display(), "image already published by another process");
            Ok(())
        }
        Err(e) => Err(Error::internal(format!(
            "moving image into {}: {e}",
            to.display()
        ))),
    }
}

/// A private work directory under `images/tmp/`, removed on drop (and by
/// the next one made after a crash).
pub struct WorkDir {
    path: PathBuf,
}

/// A work directory under the image store's `tmp/` (e.g. to stage a
/// recipe's files for a build), removed when dropped.
pub fn work_dir(paths: &SandboxPaths) -> Result<WorkDir> {
    WorkDir::new(&images_dir(paths))
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn new(images: &Path) -> Result<WorkDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = images.join("tmp");
        mkdir_all(&tmp)?;
        reap_stale_workdirs(&tmp);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = tmp.join(format!(
            "{}.{nanos}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        mkdir(&path, 0o700)?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(error = %e, "could not remove image work directory");
        }
    }
}

/// Remove work directories of processes that died mid-import.
fn reap_stale_workdirs(tmp: &Path) {
    let Ok(rd) = fs::read_dir(tmp) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove_tree(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn paths(t: &tempfile::TempDir) -> SandboxPaths {
        SandboxPaths {
            data_dir: t.path().to_path_buf(),
            brig_exe: PathBuf::from("/proc/self/exe"),
        }
    }

    /// Every path under `root`, relative, sorted.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn host_image_has_only_generated_etc_and_mountpoints() {
        let t = tempfile::tempdir().unwrap();
        let img = resolve(&paths(&t), "host").unwrap();
        assert_eq!(img.image.name, "host");
        assert!(img.image.digest.starts_with("sha256:") && img.image.digest.len() == 71);
        let etc = tree(&img.rootfs.join("etc"));
        let mut expected = vec![
            "group",
            "hosts",
            "nsswitch.conf",
            "passwd",
            "resolv.conf",
            "ssl",
            "ssl/certs",
        ];
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            expected.push("ssl/certs/ca-certificates.crt");
        }
        if Path::new("/etc/os-release").exists() {
            expected.push("os-release");
        }
        expected.sort();
        assert_eq!(etc, expected);
        for secret in ["shadow", "ssh", "machine-id", "sudoers", "gshadow"] {
            assert!(
                fs::symlink_metadata(img.rootfs.join("etc").join(secret)).is_err(),
                "{secret} leaked"
            );
        }
        let passwd = fs::read_to_string(img.rootfs.join("etc/passwd")).unwrap();
        assert!(passwd.contains("agent:x:1000:1000:brig agent:/workspace:/bin/sh"));
        assert!(passwd.contains("nobody:x:65534"));
        assert!(passwd.starts_with("root:x:0:0:"));
        assert!(fs::read_to_string(img.rootfs.join("etc/hosts"))
            .unwrap()
            .contains("127.0.0.1\tlocalhost"));
        if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            assert_eq!(
                fs::read(img.rootfs.join(CA_BUNDLE)).unwrap(),
                fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap()
            );
        }
        for m in MOUNTPOINTS.iter().chain(["usr", "etc"].iter()) {
            let md = fs::symlink_metadata(img.rootfs.join(m)).unwrap();
            assert!(md.is_dir(), "{m}");
            assert_eq!(md.mode() & 0o7777, 0o755, "{m}");
            assert_eq!(md.uid(), 0);
        }
        assert_eq!(
            fs::metadata(img.rootfs.join("etc/passwd")).unwrap().mode() & 0o7777,
            0o644
        );
        assert!(fs::metadata(img.rootfs.join(INIT_TARGET))
            .unwrap()
            .is_file());
        // Nothing of the host's /usr is copied; it is bound.
        assert_eq!(fs::read_dir(img.rootfs.join("usr")).unwrap().count(), 0);
        assert!(img
            .binds
            .contains(&(PathBuf::from("/usr"), PathBuf::from("/usr"))));
        for top in ["bin", "sbin", "lib", "lib64"] {
            let host = Path::new("/").join(top);
            let Ok(m) = fs::symlink_metadata(&host) else {
                continue;
            };
            if m.file_type().is_symlink() {
                assert_eq!(
                    fs::read_link(img.rootfs.join(top)).unwrap(),
                    fs::read_link(&host).unwrap()
                );
                assert!(!img.binds.iter().any(|(h, _)| h == &host));
            } else {
                assert!(img.binds.contains(&(host.clone(), host.clone())));
            }
        }
        assert_eq!(
            img.env,
            vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("LANG".into(), "C.UTF-8".into())
            ]
        );
    }

    #[test]
    fn host_digest_is_stable_and_generation_idempotent_under_races() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(&t);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || resolve(&p, "host").unwrap())
            })
            .collect();
        let results: Vec<ResolvedImage> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for r in &results {
            assert_eq!(r.image.digest, results[0].image.digest);
            assert_eq!(r.rootfs, results[0].rootfs);
        }
        assert_eq!(
            fs::read_dir(t.path().join("images/host")).unwrap().count(),
            1
        );
        assert_eq!(
            fs::read_dir(t.path().join("images/tmp")).unwrap().count(),
            0,
            "work dirs left"
        );
        // Another data dir: same digest. `list` names it without writing.
        let t2 = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(&paths(&t2), "host").unwrap().image.digest,
            results[0].image.digest
        );
        let l = list(&p).unwrap();
        assert_eq!(l[0].name, "host");
        assert_eq!(l[0].digest, results[0].image.digest);
        // The digest prefix resolves to host too.
        let prefix = &results[0].image.digest[..7 + 12];
        assert_eq!(resolve(&p, prefix).unwrap().image.name, "host");
    }

    #[test]
    fn host_digest_changes_with_the_package_set() {
        let fake = tempfile::tempdir().unwrap();
        let root = fake.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::create_dir_all(root.join("lib")).unwrap(); // a non-merged-usr host
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        fs::write(root.join("var/lib/dpkg/status"), "Package: a\nVersion: 1\n").unwrap();
        let a = host_plan_from(root).unwrap();
        assert_eq!(host_plan_from(root).unwrap().digest_hex, a.digest_hex);
        assert!(a.binds.contains(&(root.join("lib"), PathBuf::from("/lib"))));
        assert!(a.dirs.contains(&"lib".to_string()));
        assert!(a
            .symlinks
            .contains(&("bin".to_string(), PathBuf::from("usr/bin"))));
        fs::write(root.join("var/lib/dpkg/status"), "Package: a\nVersion: 2\n").unwrap();
        assert_ne!(host_plan_from(root).unwrap().digest_hex, a.digest_hex);
    }

    #[test]
    fn host_image_runs_a_shell_as_agent() {
        // A smoke test that the generated root is usable, with bwrap as a
        // stand-in runtime.
        let Some(bwrap) = crate::doctor::find_binary("bwrap") else {
            eprintln!("bwrap not installed; skipping");
            return;
        };
        let t = tempfile::tempdir().unwrap();
        let img = resolve(&paths(&t), "host").unwrap();
        let mut cmd = std::process::Command::new(bwrap);
        cmd.arg("--ro-bind").arg(&img.rootfs).arg("/");
        for (h, i) in &img.binds {
            cmd.arg("--ro-bind").arg(h).arg(i);
        }
        let out = cmd
            .args([
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--unshare-all",
                "--uid",
                "1000",
                "--gid",
                "1000",
            ])
            .args([
                "/bin/sh",
                "-c",
                "id -un; test -e /etc/shadow || echo no-shadow",
            ])
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "agent\nno-shadow\n");
    }

    #[test]
    fn resolve_errors_are_clear() {
        let t = tempfile::tempdir().unwrap();
        let p = paths(&t);
        let e = resolve(&p, "nope").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.hint.unwrap().contains("brig image list"));
        let e = resolve(&p, "sha256:abc").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let e = resolve(&p, &format!("sha256:{}", "0".repeat(64))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            resolve(&p, "bad name!").unwrap_err().kind,
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn safe_rel_refuses_climbing_and_absolute_paths() {
        assert_eq!(safe_rel(b"./a/b").unwrap(), Path::new("a/b"));
        assert_eq!(safe_rel(b"./").unwrap(), Path::new(""));
        assert!(safe_rel(b"../etc/x").is_none());
        assert!(safe_rel(b"a/../../x").is_none());
        assert!(safe_rel(b"/etc/x").is_none());
    }

    #[test]
    fn resolve_parent_follows_links_inside_and_refuses_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/usr", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("/..", root.join("rootup")).unwrap();
        let (p, n) = resolve_parent(&root, Path::new("lib/x.so")).unwrap();
        assert_eq!(p, root.join("usr/lib"));
        assert_eq!(n, "x.so");
        assert_eq!(
            resolve_parent(&root, Path::new("abs/lib/y")).unwrap().0,
            root.join("usr/lib")
        );
        assert_eq!(
            resolve_parent(&root, Path::new("new/dir/f")).unwrap().0,
            root.join("new/dir")
        );
        for bad in ["up/x", "rootup/x", "lib/../../up/x"] {
            let e = resolve_parent(&root, Path::new(bad)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
            assert!(
                e.message.contains("would leave the image root"),
                "{bad}: {}",
                e.message
            );
        }
        assert!(!t.path().join("x").exists());
    }

    /// What maintainer scripts would have made, made inside the root: a
    /// package's absolute link out of it is resolved inside, so nothing is
    /// written on the host; the CA bundle is the Mozilla set, in order.
    #[test]
    fn a_debian_root_gets_generated_files_inside_itself() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        mkdir(&outside, 0o755).unwrap();
        let u = t.path().join("unpacked");
        let moz = u.join("usr/share/ca-certificates/mozilla");
        fs::create_dir_all(&moz).unwrap();
        fs::create_dir_all(u.join("usr/bin")).unwrap();
        fs::write(moz.join("B.crt"), "b").unwrap();
        fs::write(moz.join("A.crt"), "a\n").unwrap();
        fs::write(u.join("usr/bin/mawk"), "").unwrap();
        symlink("usr/bin", u.join("bin")).unwrap();
        symlink(&outside, u.join("etc")).unwrap();
        symlink("/nowhere", u.join("tmp")).unwrap();
        let p = paths(&t);
        let b = stage_debian_root(&p, &u, "debian:bookworm", "sha256:00").unwrap();
        let r = b.rootfs();
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "wrote outside the root"
        );
        let etc = r.join(
            fs::read_link(r.join("etc"))
                .unwrap()
                .strip_prefix("/")
                .unwrap(),
        );
        assert!(fs::read_to_string(etc.join("passwd"))
            .unwrap()
            .contains("agent:x:1000"));
        assert_eq!(
            fs::read_to_string(etc.join("ssl/certs/ca-certificates.crt")).unwrap(),
            "a\nb\n"
        );
        assert_eq!(
            fs::read_link(r.join("usr/bin/awk")).unwrap(),
            Path::new("mawk")
        );
        assert!(!r.join("usr/bin/pager").exists());
        for m in MOUNTPOINTS {
            assert!(fs::symlink_metadata(r.join(m)).unwrap().is_dir(), "{m}");
        }
        assert!(r.join(INIT_TARGET).is_file());
        let again = stage_debian_root(&p, &u, "debian:bookworm", "sha256:00").unwrap();
        assert_eq!(again.root_digest, b.root_digest);
        fs::write(moz.join("C.crt"), "c").unwrap();
        let other = stage_debian_root(&p, &u, "debian:bookworm", "sha256:00").unwrap();
        assert_ne!(other.root_digest, b.root_digest);
    }
}
