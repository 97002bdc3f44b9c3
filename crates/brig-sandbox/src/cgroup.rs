//! A session's cgroup, as the host sees it: find it, prove its limits are
//! in force, read its CPU time, kill everything in it, remove it.
//!
//! The runtime creates the cgroup from the spec (`/brig/<session>`); brig
//! never trusts that it did: after start, [`SessionCgroup::verify`] reads
//! the limits back from the kernel, and a sandbox whose limits are not in
//! force is destroyed (fail closed). cgroup v2 is used when the unified
//! hierarchy has controllers; otherwise the v1 hierarchies (this is what
//! runc, crun, runsc and libcontainer do too).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brig_core::session::Limits;
use brig_core::{Error, Result};

use crate::spec::CPU_PERIOD_US;

const ROOT: &str = "/sys/fs/cgroup";
/// Parent of every session's cgroup, in each hierarchy.
pub const PARENT: &str = "brig";
/// v1 controllers brig needs (limits, accounting, reliable kill).
const V1_REQUIRED: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn layer(self) -> &'static str {
        match self {
            Version::V1 => "cgroup:v1",
            Version::V2 => "cgroup:v2",
        }
    }
}

/// Which hierarchy the runtimes will use on this host.
pub fn detect() -> Version {
    detect_at(Path::new(ROOT))
}

fn detect_at(root: &Path) -> Version {
    // A pure v2 host mounts cgroup2 at /sys/fs/cgroup itself; a hybrid one
    // at /sys/fs/cgroup/unified, where controllers are usually empty.
    let ctl = std::fs::read_to_string(root.join("cgroup.controllers"))
        .ok()
        .filter(|c| !c.trim().is_empty());
    if ctl.is_some() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Every directory making up one session's cgroup.
#[derive(Clone, Debug)]
pub struct SessionCgroup {
    pub version: Version,
    /// `brig/<session>` relative to each hierarchy root.
    pub rel: String,
    root: PathBuf,
}

impl SessionCgroup {
    pub fn new(session: &str) -> SessionCgroup {
        Self::with_root(Path::new(ROOT), session)
    }

    fn with_root(root: &Path, session: &str) -> SessionCgroup {
        SessionCgroup {
            version: detect_at(root),
            rel: format!("{PARENT}/{session}"),
            root: root.to_path_buf(),
        }
    }

    /// The v1 hierarchies mounted under the root (memory, cpu, ... each a
    /// directory; `unified` and named ones like `systemd` excluded), or the
    /// single v2 root.
    fn hierarchies(&self) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![self.root.clone()],
            Version::V1 => {
                let mut v = vec![];
                if let Ok(rd) = std::fs::read_dir(&self.root) {
                    for e in rd.flatten() {
                        let p = e.path();
                        let name = e.file_name();
                        if name == "unified" || !p.join("cgroup.procs").exists() {
                            continue;
                        }
                        // Skip symlinks like cpu,cpuacct → cpu (same hierarchy).
                        if e.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
                            continue;
                        }
                        v.push(p);
                    }
                }
                v.sort();
                v
            }
        }
    }

    /// The session's directory in controller `ctrl` (v1) or the v2 dir.
    pub fn dir(&self, ctrl: &str) -> PathBuf {
        match self.version {
            Version::V2 => self.root.join(&self.rel),
            Version::V1 => self.root.join(ctrl).join(&self.rel),
        }
    }

    /// Every existing directory of this cgroup.
    pub fn existing_dirs(&self) -> Vec<PathBuf> {
        self.hierarchies()
            .into_iter()
            .map(|h| h.join(&self.rel))
            .filter(|d| d.is_dir())
            .collect()
    }

    pub fn exists(&self) -> bool {
        !self.existing_dirs().is_empty()
    }

    fn read(&self, ctrl: &str, file: &str) -> Result<String> {
        let p = self.dir(ctrl).join(file);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::guard("cgroup", format!("cannot read {}: {e}", p.display())))
    }

    /// Read the limits back from the kernel and compare with `want`.
    pub fn verify(&self, want: &Limits) -> Result<()> {
        let num = |ctrl: &str, file: &str| -> Result<Option<u64>> {
            let s = self.read(ctrl, file)?;
            if s == "max" {
                return Ok(None);
            }
            s.parse::<u64>()
                .map(Some)
                .map_err(|_| Error::guard("cgroup", format!("unexpected {file} value {s:?}")))
        };
        let page = 4096u64;
        let mem_ok = |got: Option<u64>| {
            // The kernel rounds the limit down to a page.
            got.is_some_and(|g| g <= want.memory_bytes && g + page > want.memory_bytes)
        };
        let quota = (want.cpu_millis * CPU_PERIOD_US / 1000) as i64;
        let (mem, swap, pids, cpu) = match self.version {
            Version::V1 => {
                for c in V1_REQUIRED {
                    if !self.dir(c).is_dir() {
                        return Err(Error::guard(
                            "cgroup",
                            format!("controller {c} has no cgroup {}", self.dir(c).display()),
                        ));
                    }
                }
                let mem = num("memory", "memory.limit_in_bytes")?;
                // memsw exists only with swap accounting; without it, swap
                // is not limited per cgroup, which we accept only if the
                // host has no swap at all.
                let swap = if self
                    .dir("memory")
                    .join("memory.memsw.limit_in_bytes")
                    .exists()
                {
                    mem_ok(num("memory", "memory.memsw.limit_in_bytes")?)
                } else {
                    host_has_no_swap()
                };
                let pids = num("pids", "pids.max")?;
                let q: i64 = self
                    .read("cpu", "cpu.cfs_quota_us")?
                    .parse()
                    .map_err(|_| Error::guard("cgroup", "unreadable cpu.cfs_quota_us"))?;
                let p = num("cpu", "cpu.cfs_period_us")?;
                (
                    mem,
                    swap,
                    pids,
                    q * CPU_PERIOD_US as i64 == quota * p.unwrap_or(0) as i64,
                )
            }
            Version::V2 => {
                let mem = num("", "memory.max")?;
                let swap = num("", "memory.swap.max")
                    .map(|s| s == Some(0))
                    .unwrap_or(host_has_no_swap());
                let pids = num("", "pids.max")?;
                let cpu = self.read("", "cpu.max")?;
                let mut it = cpu.split_whitespace();
                let q = it.next().and_then(|q| q.parse::<i64>().ok());
                let p = it.next().and_then(|p| p.parse::<i64>().ok());
                let ok =
                    matches!((q, p), (Some(q), Some(p)) if q * CPU_PERIOD_US as i64 == quota * p);
                (mem, swap, pids, ok)
            }
        };
        let mut bad = vec![];
        if !mem_ok(mem) {
            bad.push(format!(
                "memory limit is {mem:?}, want {}",
                want.memory_bytes
            ));
        }
        if !swap {
            bad.push("swap is not limited".to_string());
        }
        if pids != Some(want.pids) {
            bad.push(format!("pids limit is {pids:?}, want {}", want.pids));
        }
        if !cpu {
            bad.push(format!(
                "cpu quota is not {} ms per second",
                want.cpu_millis
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error::guard(
                "cgroup",
                format!("limits of {} not in force: {}", self.rel, bad.join("; ")),
            ))
        }
    }

    /// Total CPU time of every process that ran in the cgroup.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match self.version {
            Version::V1 => self.read("cpuacct", "cpuacct.usage").ok()?.parse().ok(),
            Version::V2 => {
                let s = self.read("", "cpu.stat").ok()?;
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us * 1000)
            }
        }
    }

    /// Every pid in the cgroup (any hierarchy, descendants included).
    pub fn pids(&self) -> Vec<i32> {
        let mut out = vec![];
        for d in self.existing_dirs() {
            collect_procs(&d, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGKILL every process once, without waiting (the kill switch).
    pub fn kill_once(&self) {
        for pid in self.pids() {
            // SAFETY: plain syscall; a pid from cgroup.procs of our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Kill every process and wait until the cgroup is empty. v2 uses
    /// cgroup.kill; v1 freezes first so nothing forks while being killed.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let v2_kill = self.dir("").join("cgroup.kill");
        let freezer = self.dir("freezer").join("freezer.state");
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::runtime(format!(
                    "processes {pids:?} of cgroup {} survived SIGKILL for {timeout:?}",
                    self.rel
                ))
                .hint("they may be stuck in the kernel (D state); check `ps -o pid,stat,wchan`"));
            }
            match self.version {
                Version::V2 if v2_kill.exists() => {
                    let _ = std::fs::write(&v2_kill, "1");
                }
                Version::V1 if freezer.exists() => {
                    let _ = std::fs::write(&freezer, "FROZEN");
                    for pid in self.pids() {
                        // SAFETY: plain syscall on pids of our own cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    // A frozen task cannot die; thaw so the kills land.
                    let _ = std::fs::write(&freezer, "THAWED");
                }
                _ => self.kill_once(),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remove every directory of the cgroup (children first). Fails if a
    /// directory stays (a process still in it).
    pub fn remove(&self) -> Result<()> {
        let mut left = vec![];
        for d in self.existing_dirs() {
            if let Err(e) = rmdir_tree(&d) {
                left.push(format!("{}: {e}", d.display()));
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::runtime(format!(
                "cgroup dirs left: {}",
                left.join("; ")
            )))
        }
    }
}

fn host_has_no_swap() -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("SwapTotal:"))
                .map(|v| v.trim().starts_with("0 "))
        })
        .unwrap_or(false)
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&e.path(), out);
            }
        }
    }
}

/// cgroup dirs are removed with rmdir, deepest first (their files are not
/// real files and cannot be unlinked).
fn rmdir_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path())?;
            }
        }
    }
    // A just-killed task may linger for a moment: retry EBUSY briefly.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Session names with a cgroup under `brig/` in any hierarchy.
pub fn leftover_sessions() -> Vec<String> {
    let probe = SessionCgroup::new("probe");
    let mut names = vec![];
    for h in probe.hierarchies() {
        if let Ok(rd) = std::fs::read_dir(h.join(PARENT)) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Remove the `brig` parent directories that hold no session any more.
pub fn remove_empty_parents() -> usize {
    let probe = SessionCgroup::new("probe");
    let mut n = 0;
    for h in probe.hierarchies() {
        if std::fs::remove_dir(h.join(PARENT)).is_ok() {
            n += 1;
        }
    }
    n
}

/// Start, in the background, the RCU grace period that the runtime's first
/// write to a `cgroup.procs` would otherwise wait for, so that it overlaps
/// with the rest of a sandbox's setup instead of adding to it.
///
/// Moving a process between cgroups takes the kernel's global
/// `cgroup_threadgroup_rwsem` for writing. Unless the hierarchy is mounted
/// with `favordynmods`, that rwsem is per-CPU and its first writer after a
/// quiet period waits a whole RCU grace period (~10-15 ms at HZ=250); later
/// writers within the next grace period do not. Every runtime moves the
/// container's processes into the session's cgroup, so each session
/// start paid one grace period. Here brig writes its own pid into the
/// `cgroup.procs` of the cgroup it already is in (a no-op move: nothing
/// changes for brig or any sandbox) on a throw-away thread; by the time
/// the runtime writes, the grace period has elapsed or is under way.
/// Best effort: any failure is ignored, the runtime then simply waits.
pub fn warm_migration_lock() {
    let Some(procs) = own_procs_file() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("brig-cgroup-warm".into())
        .spawn(move || {
            let _ = std::fs::write(&procs, std::process::id().to_string());
        });
}

/// `cgroup.procs` of the cgroup this process is in, in one hierarchy
/// (v1: the pids controller's; v2: the unified one).
fn own_procs_file() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (mount, rel) = match detect() {
        Version::V2 => (
            PathBuf::from(ROOT),
            own.lines().find_map(|l| l.strip_prefix("0::"))?,
        ),
        Version::V1 => (
            Path::new(ROOT).join("pids"),
            own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                ctrl.split(',').any(|c| c == "pids").then_some(path)
            })?,
        ),
    };
    let p = mount.join(rel.trim_start_matches('/')).join("cgroup.procs");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_v1_when_unified_has_no_controllers() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(detect_at(d.path()), Version::V1);
        std::fs::write(d.path().join("cgroup.controllers"), "\n").unwrap();
        assert_eq!(detect_at(d.path()), Version::V1);
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(detect_at(d.path()), Version::V2);
    }

    #[test]
    fn verify_names_what_is_missing() {
        // A fake v1 tree whose limits are not the ones asked for.
        let d = tempfile::tempdir().unwrap();
        let cg = SessionCgroup::with_root(d.path(), "s-test");
        for c in V1_REQUIRED {
            let dir = d.path().join(c).join(&cg.rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(d.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let m = d.path().join("memory").join(&cg.rel);
        std::fs::write(m.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            m.join("memory.memsw.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("pids").join(&cg.rel).join("pids.max"),
            "max\n",
        )
        .unwrap();
        let c = d.path().join("cpu").join(&cg.rel);
        std::fs::write(c.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(c.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let e = cg.verify(&Limits::default()).unwrap_err();
        assert_eq!(e.kind, brig_core::ErrorKind::GuardUnavailable);
        for what in ["memory limit", "swap", "pids limit", "cpu quota"] {
            assert!(e.message.contains(what), "{what} not in {e}");
        }
        // Now the right values: verify passes.
        let l = Limits {
            memory_bytes: (64 << 20) + 100,
            pids: 99,
            cpu_millis: 500,
            ..Limits::default()
        };
        std::fs::write(m.join("memory.limit_in_bytes"), format!("{}", 64 << 20)).unwrap();
        std::fs::write(
            m.join("memory.memsw.limit_in_bytes"),
            format!("{}", 64 << 20),
        )
        .unwrap();
        std::fs::write(d.path().join("pids").join(&cg.rel).join("pids.max"), "99").unwrap();
        std::fs::write(c.join("cpu.cfs_quota_us"), "50000").unwrap();
        cg.verify(&l).unwrap();
    }
}
