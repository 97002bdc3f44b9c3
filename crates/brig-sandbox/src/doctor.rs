//! `brig doctor`: what this host supports and which runtimes will work.
//!
//! Every check looks at the kernel the way a sandbox will use it (a real
//! `unshare` in a forked child, the Landlock and seccomp syscalls), not at
//! config files, so the report matches what session creation will find.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Check {
    /// e.g. `namespaces.user`, `seccomp`, `landlock`, `cgroup.v1.memory`, `runsc`.
    pub name: String,
    pub ok: bool,
    /// What was found (a version, an ABI number) or why not.
    pub detail: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RuntimeSupport {
    /// `native`, `gvisor`, `oci:/usr/bin/crun`, ...
    pub runtime: String,
    pub works: bool,
    pub detail: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    pub runtimes: Vec<RuntimeSupport>,
}

impl DoctorReport {
    /// The check named `name`, if probed.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
    /// Whether runtime `name` (`native`, `gvisor`, `oci:<path>`) will work.
    pub fn runtime(&self, name: &str) -> Option<&RuntimeSupport> {
        self.runtimes.iter().find(|r| r.runtime == name)
    }
}

/// Namespaces a sandbox gets, as named in /proc/self/ns, with their clone flag.
const NAMESPACES: [(&str, &str, libc::c_int); 7] = [
    ("user", "user", libc::CLONE_NEWUSER),
    ("net", "net", libc::CLONE_NEWNET),
    ("pid", "pid", libc::CLONE_NEWPID),
    ("mount", "mnt", libc::CLONE_NEWNS),
    ("ipc", "ipc", libc::CLONE_NEWIPC),
    ("uts", "uts", libc::CLONE_NEWUTS),
    ("cgroup", "cgroup", libc::CLONE_NEWCGROUP),
];

/// cgroup controllers every runtime needs for the session limits.
const NEEDED_CGROUP_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

/// A check from a probe's answer: what works, or why not.
fn probe_check(name: &str, r: Result<String, String>) -> Check {
    Check {
        name: name.into(),
        ok: r.is_ok(),
        detail: r.unwrap_or_else(|e| e),
    }
}

/// Probe the host. Cheap enough to run on every `brig doctor` and at `brig serve` start.
pub fn probe() -> DoctorReport {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();

    // Namespaces.
    let mut ns_missing = Vec::new();
    for (name, file, flag) in NAMESPACES {
        let c = check_namespace(name, file, flag, root);
        // Without root, the user namespace is how the rest are obtained;
        // as root it is optional (the runtime may run rootful).
        if !c.ok && (name != "user" || !root) {
            ns_missing.push(name);
        }
        checks.push(c);
    }

    // seccomp.
    let seccomp = check_seccomp();
    let seccomp_ok = seccomp.ok;
    checks.push(seccomp);

    // Landlock.
    let landlock = check_landlock();
    let landlock_ok = landlock.ok;
    checks.push(landlock);

    checks.push(check_no_new_privs());

    // Process capture (native and oci: runtimes).
    let capture = crate::capture::probe().map(|()| {
        "seccomp user notification and PIDFD_INFO_EXIT: every exec and every exit is recorded"
            .to_string()
    });
    let capture_ok = capture.is_ok();
    checks.push(probe_check("capture", capture));

    // The egress channel's routing (native and oci: runtimes).
    let egress = crate::egress::probe();
    let egress_ok = egress.is_ok();
    checks.push(probe_check("egress", egress));

    // cgroups.
    let mounts = read_mountinfo();
    let (v2_checks, v2_available) = check_cgroup_v2(&mounts);
    checks.extend(v2_checks);
    let mut v1_present = Vec::new();
    for ctrl in V1_CONTROLLERS {
        let c = check_cgroup_v1(&mounts, ctrl);
        if c.ok {
            v1_present.push(ctrl);
        }
        checks.push(c);
    }
    // A controller counts if v2 offers it (brig enables it in its subtree) or v1 mounts it.
    let cgroup_missing: Vec<&str> = NEEDED_CGROUP_CONTROLLERS
        .into_iter()
        .filter(|c| !v1_present.contains(c) && !v2_available.iter().any(|e| e == c))
        .collect();

    // Filesystems and devices.
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for (name, fs) in [("overlayfs", "overlay"), ("tmpfs", "tmpfs")] {
        let ok = filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs));
        checks.push(Check {
            name: name.into(),
            ok,
            detail: if ok {
                format!("{fs} listed in /proc/filesystems")
            } else {
                format!(
                    "{fs} not in /proc/filesystems (module not loaded or kernel built without it)"
                )
            },
        });
    }
    checks.push(check_kvm());

    // Runtime binaries.
    let runsc = check_binary("runsc", "runsc");
    let runsc_path = runsc.1.clone();
    checks.push(runsc.0);
    let mut oci_found = Vec::new();
    for bin in ["crun", "runc"] {
        let (c, path) = check_binary(bin, bin);
        if let Some(p) = path {
            oci_found.push((p, c.detail.clone(), c.ok));
        }
        checks.push(c);
    }
    checks.push(check_binary("bwrap", "bwrap").0);

    // Which runtimes will work.
    let mut runtimes = Vec::new();
    let mut native_missing = Vec::new();
    if !ns_missing.is_empty() {
        native_missing.push(format!("namespaces ({})", ns_missing.join(", ")));
    }
    if !seccomp_ok {
        native_missing.push("seccomp filters".to_string());
    }
    if !landlock_ok {
        native_missing.push("Landlock".to_string());
    }
    if !capture_ok {
        native_missing.push("process capture (Linux 6.15 or newer)".to_string());
    }
    if !egress_ok {
        native_missing.push("egress routing in the sandbox's network namespace".to_string());
    }
    if !cgroup_missing.is_empty() {
        native_missing.push(format!(
            "cgroup controllers ({})",
            cgroup_missing.join(", ")
        ));
    }
    runtimes.push(RuntimeSupport {
        runtime: "native".into(),
        works: native_missing.is_empty(),
        detail: if native_missing.is_empty() {
            "embedded libcontainer: namespaces, seccomp, Landlock and cgroup controllers available"
                .into()
        } else {
            format!("missing: {}", native_missing.join("; "))
        },
    });

    let mut gvisor_missing = Vec::new();
    if runsc_path.is_none() {
        gvisor_missing.push(
            "runsc not found (install the Debian package `runsc` or put it on PATH)".to_string(),
        );
    }
    // Process capture under gVisor: the Sentry's trace points.
    if let Some(p) = &runsc_path {
        let trace = crate::gvisor_trace::probe_runsc(p);
        if trace.is_err() {
            gvisor_missing.push("process capture (runsc's trace points)".to_string());
        }
        checks.push(probe_check("capture.gvisor", trace));
        let uds = crate::egress::probe_runsc(p);
        if uds.is_err() {
            gvisor_missing.push("the egress channel (runsc --host-uds)".to_string());
        }
        checks.push(probe_check("egress.gvisor", uds));
    }
    if !cgroup_missing.is_empty() {
        gvisor_missing.push(format!(
            "cgroup controllers ({})",
            cgroup_missing.join(", ")
        ));
    }
    runtimes.push(RuntimeSupport {
        runtime: "gvisor".into(),
        works: gvisor_missing.is_empty(),
        detail: match (&runsc_path, gvisor_missing.is_empty()) {
            (Some(p), true) => format!("{}", p.display()),
            _ => format!("missing: {}", gvisor_missing.join("; ")),
        },
    });

    for (path, version, ran) in oci_found {
        let mut missing = Vec::new();
        if !ran {
            missing.push(format!("{} does not run: {version}", path.display()));
        }
        if !ns_missing.is_empty() {
            missing.push(format!("namespaces ({})", ns_missing.join(", ")));
        }
        if !capture_ok {
            missing.push("process capture (Linux 6.15 or newer)".to_string());
        }
        if !egress_ok {
            missing.push("egress routing in the sandbox's network namespace".to_string());
        }
        if !cgroup_missing.is_empty() {
            missing.push(format!(
                "cgroup controllers ({})",
                cgroup_missing.join(", ")
            ));
        }
        runtimes.push(RuntimeSupport {
            runtime: format!("oci:{}", path.display()),
            works: missing.is_empty(),
            detail: if missing.is_empty() {
                version
            } else {
                format!("missing: {}", missing.join("; "))
            },
        });
    }

    DoctorReport { checks, runtimes }
}

fn check_namespace(name: &str, file: &str, flag: libc::c_int, root: bool) -> Check {
    let cname = format!("namespaces.{name}");
    let nsfile = format!("/proc/self/ns/{file}");
    if std::fs::symlink_metadata(&nsfile).is_err() {
        return Check {
            name: cname,
            ok: false,
            detail: format!("{nsfile} missing: kernel built without {name} namespaces"),
        };
    }
    // Unprivileged, the other namespaces come from inside a user namespace.
    let flags = if root || flag == libc::CLONE_NEWUSER {
        flag
    } else {
        flag | libc::CLONE_NEWUSER
    };
    match unshare_in_child(flags) {
        Ok(()) => Check {
            name: cname,
            ok: true,
            detail: format!("{nsfile} present; unshare works"),
        },
        Err(e) => Check {
            name: cname,
            ok: false,
            detail: format!(
                "{nsfile} present but unshare fails: {e}{}",
                userns_hint(flag)
            ),
        },
    }
}

fn userns_hint(flag: libc::c_int) -> &'static str {
    if flag == libc::CLONE_NEWUSER {
        " (check /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone)"
    } else {
        ""
    }
}

/// Fork a child that calls `unshare(flags)` and reports the errno through
/// its exit status. The child only makes raw syscalls, so forking from a
/// multi-threaded process is safe; the probe never changes our own process.
fn unshare_in_child(flags: libc::c_int) -> Result<(), std::io::Error> {
    run_in_child(|| {
        // SAFETY: raw syscall in the forked child, no allocation.
        if unsafe { libc::unshare(flags) } == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
        }
    })
}

/// Run `f` in a forked child; its return value is an errno (0 = success).
/// `f` must only make async-signal-safe calls.
fn run_in_child(f: impl FnOnce() -> i32) -> Result<(), std::io::Error> {
    // SAFETY: the child runs `f` (raw syscalls only) and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let code = f();
        // SAFETY: leave the child without running any parent state's destructors.
        unsafe { libc::_exit(code.clamp(0, 255)) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    } else {
        Err(std::io::Error::other("probe child died from a signal"))
    }
}

fn check_seccomp() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|v| v.trim().to_string());
    // SAFETY: PR_GET_SECCOMP takes no pointers.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    // SECCOMP_GET_ACTION_AVAIL answers whether filter mode with the actions
    // the sandbox uses is built in; it changes nothing.
    let errno_avail = seccomp_action_available(libc::SECCOMP_RET_ERRNO);
    let kill_avail = seccomp_action_available(libc::SECCOMP_RET_KILL_PROCESS);
    let ok = field.is_some() && mode >= 0 && errno_avail;
    let current = match field.as_deref() {
        Some("0") => "this process is not filtered",
        Some("1") => "this process is in strict mode",
        Some("2") => "this process is already filtered",
        _ => "mode unknown",
    };
    Check {
        name: "seccomp".into(),
        ok,
        detail: if ok {
            format!(
                "filter mode available (SECCOMP_RET_ERRNO yes, SECCOMP_RET_KILL_PROCESS {}); {current}",
                if kill_avail { "yes" } else { "no" }
            )
        } else if field.is_none() || mode < 0 {
            "kernel built without seccomp (no Seccomp: in /proc/self/status or PR_GET_SECCOMP fails)".into()
        } else {
            "seccomp present but filter mode (SECCOMP_RET_ERRNO) unavailable".into()
        },
    }
}

fn seccomp_action_available(action: u32) -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let a: u32 = action;
    // SAFETY: the kernel reads one u32 from a valid pointer.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &a as *const u32,
        ) == 0
    }
}

/// The Landlock ABI version, if the kernel has Landlock enabled.
pub fn landlock_abi() -> Result<i64, std::io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with the VERSION flag and no attr, the syscall only returns a number.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn check_landlock() -> Check {
    match landlock_abi() {
        Ok(abi) if abi >= 1 => Check {
            name: "landlock".into(),
            ok: true,
            detail: format!("ABI {abi}"),
        },
        Ok(abi) => Check {
            name: "landlock".into(),
            ok: false,
            detail: format!("unexpected ABI {abi}"),
        },
        Err(e) => Check {
            name: "landlock".into(),
            ok: false,
            detail: match e.raw_os_error() {
                Some(libc::ENOSYS) => "kernel built without Landlock (ENOSYS)".into(),
                Some(libc::EOPNOTSUPP) => {
                    "Landlock built in but disabled: add `landlock` to the lsm= boot parameter"
                        .into()
                }
                _ => format!("landlock_create_ruleset failed: {e}"),
            },
        },
    }
}

fn check_no_new_privs() -> Check {
    // Setting it is irreversible, so try in a child.
    let r = run_in_child(|| {
        // SAFETY: prctl with integer arguments in the forked child.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return std::io::Error::last_os_error().raw_os_error().unwrap_or(1);
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1 {
            0
        } else {
            libc::EINVAL
        }
    });
    Check {
        name: "no_new_privs".into(),
        ok: r.is_ok(),
        detail: match r {
            Ok(()) => "PR_SET_NO_NEW_PRIVS works".into(),
            Err(e) => format!("PR_SET_NO_NEW_PRIVS fails: {e}"),
        },
    }
}

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug)]
struct Mount {
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

fn read_mountinfo() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| parse_mountinfo(&s))
        .unwrap_or_default()
}

fn parse_mountinfo(s: &str) -> Vec<Mount> {
    s.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount_point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _source = post.next()?;
            let super_options = post.next().unwrap_or("").to_string();
            Some(Mount {
                mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 checks, and the controllers its root offers.
fn check_cgroup_v2(mounts: &[Mount]) -> (Vec<Check>, Vec<String>) {
    let Some(m) = mounts.iter().find(|m| m.fstype == "cgroup2") else {
        return (
            vec![Check {
                name: "cgroup.v2".into(),
                ok: false,
                detail: "no cgroup2 hierarchy mounted".into(),
            }],
            Vec::new(),
        );
    };
    let read = |f: &str| -> Vec<String> {
        std::fs::read_to_string(m.mount_point.join(f))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let available = read("cgroup.controllers");
    let enabled = read("cgroup.subtree_control");
    let mut checks = vec![Check {
        name: "cgroup.v2".into(),
        ok: !available.is_empty(),
        detail: if available.is_empty() {
            format!(
                "mounted at {} with no controllers (they are bound to cgroup v1 hierarchies)",
                m.mount_point.display()
            )
        } else {
            format!(
                "mounted at {}; controllers available: {}; enabled for children: {}",
                m.mount_point.display(),
                available.join(" "),
                if enabled.is_empty() {
                    "none".to_string()
                } else {
                    enabled.join(" ")
                }
            )
        },
    }];
    for ctrl in NEEDED_CGROUP_CONTROLLERS {
        if available.iter().any(|a| a == ctrl) {
            let on = enabled.iter().any(|e| e == ctrl);
            checks.push(Check {
                name: format!("cgroup.v2.{ctrl}"),
                ok: true,
                detail: if on {
                    "available and enabled in cgroup.subtree_control".into()
                } else {
                    "available; brig enables it in its own subtree".into()
                },
            });
        }
    }
    // A controller that is available can be enabled by brig for its subtree.
    (checks, available)
}

fn check_cgroup_v1(mounts: &[Mount], ctrl: &str) -> Check {
    let found = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == ctrl));
    Check {
        name: format!("cgroup.v1.{ctrl}"),
        ok: found.is_some(),
        detail: match found {
            Some(m) => format!("mounted at {}", m.mount_point.display()),
            None => "not mounted as a cgroup v1 hierarchy".into(),
        },
    }
}

fn check_kvm() -> Check {
    use std::os::unix::fs::FileTypeExt;
    let ok = std::fs::metadata("/dev/kvm")
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    Check {
        name: "kvm".into(),
        ok,
        detail: if ok {
            "/dev/kvm present (hardware virtualization for VM runtimes such as kata)".into()
        } else {
            "/dev/kvm absent (only needed by VM runtimes such as kata)".into()
        },
    }
}

/// Find `bin` on PATH or in the usual system directories (a server started
/// with a minimal PATH still finds /usr/sbin/runsc).
pub fn find_binary(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(bin))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Look for `bin` and run `bin --version`; the check is ok when it runs.
fn check_binary(name: &str, bin: &str) -> (Check, Option<PathBuf>) {
    let Some(path) = find_binary(bin) else {
        return (
            Check {
                name: name.into(),
                ok: false,
                detail: format!("{bin} not found on PATH"),
            },
            None,
        );
    };
    let (ok, detail) = match version_line(&path) {
        Ok(v) => (true, format!("{} ({v})", path.display())),
        Err(e) => (
            false,
            format!("{} found but `--version` failed: {e}", path.display()),
        ),
    };
    (
        Check {
            name: name.into(),
            ok,
            detail,
        },
        Some(path),
    )
}

/// First line of `<path> --version`, with a deadline so a wedged binary
/// cannot hang `brig serve` start.
fn version_line(path: &Path) -> Result<String, String> {
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out after 5s".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "printed no version".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(r: &'a DoctorReport, name: &str) -> &'a Check {
        r.check(name)
            .unwrap_or_else(|| panic!("no check {name}: {r:#?}"))
    }

    #[test]
    fn this_host_supports_native() {
        let r = probe();
        let native = r.runtime("native").unwrap();
        assert!(native.works, "{r:#?}");
        for ns in ["user", "net", "pid", "mount", "ipc", "uts", "cgroup"] {
            assert!(check(&r, &format!("namespaces.{ns}")).ok, "{ns}: {r:#?}");
        }
        assert!(check(&r, "seccomp").ok);
        assert!(check(&r, "no_new_privs").ok);
        let ll = check(&r, "landlock");
        assert!(ll.ok);
        let abi: i64 = ll.detail.strip_prefix("ABI ").unwrap().parse().unwrap();
        assert!(abi >= 1);
        assert_eq!(landlock_abi().unwrap(), abi);
        for c in ["memory", "pids", "cpu"] {
            assert!(check(&r, &format!("cgroup.v1.{c}")).ok, "{c}");
        }
        assert!(check(&r, "cgroup.v1.memory")
            .detail
            .contains("/sys/fs/cgroup/memory"));
        assert!(check(&r, "overlayfs").ok);
        assert!(check(&r, "tmpfs").ok);
        let eg = check(&r, "egress");
        assert!(eg.ok && eg.detail.contains("93.184.216.34:443"), "{eg:?}");
    }

    #[test]
    fn this_host_has_runsc_and_crun() {
        let r = probe();
        let runsc = check(&r, "runsc");
        assert!(runsc.ok, "{runsc:?}");
        assert!(runsc.detail.contains("runsc version"), "{}", runsc.detail);
        assert!(r.runtime("gvisor").unwrap().works);
        assert!(check(&r, "egress.gvisor").ok, "{r:#?}");
        let trace = check(&r, "capture.gvisor");
        assert!(trace.ok, "{trace:?}");
        let crun = find_binary("crun").unwrap();
        let oci = r.runtime(&format!("oci:{}", crun.display())).unwrap();
        assert!(oci.works, "{oci:?}");
        assert!(oci.detail.contains("crun version"));
        assert!(check(&r, "bwrap").ok);
    }

    #[test]
    fn probing_does_not_change_this_process() {
        // SAFETY: query only.
        let nnp = || unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
        let before = (std::fs::read_link("/proc/self/ns/user").unwrap(), nnp());
        let _ = probe();
        assert_eq!(
            (std::fs::read_link("/proc/self/ns/user").unwrap(), nnp()),
            before
        );
    }

    #[test]
    fn report_serializes() {
        let v = serde_json::to_value(probe()).unwrap();
        assert!(v["checks"].as_array().unwrap().len() > 15);
        assert!(v["runtimes"][0]["runtime"] == "native");
    }

    #[test]
    fn mountinfo_parsing() {
        let s = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                 41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime shared:5 - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(s);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].super_options, "rw,memory");
        assert_eq!(m[1].mount_point, Path::new("/sys/fs/cgroup/uni fied"));
        assert_eq!(m[1].fstype, "cgroup2");
        assert!(check_cgroup_v1(&m, "memory").ok);
        assert!(!check_cgroup_v1(&m, "pids").ok);
    }
}
