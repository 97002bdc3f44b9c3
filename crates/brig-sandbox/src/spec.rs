//! The OCI runtime spec of one session: the sandbox contract every runtime
//! executes (`native`, `gvisor`, any OCI binary).
//!
//! Choices written down here because every runtime sees them:
//!
//! - **Process**: `/.brig/brig sandbox-init <InitConfig json>` (brig's own
//!   binary, bind-mounted read-only and nosuid) in `/workspace`, as
//!   [`SANDBOX_UID`]:[`SANDBOX_GID`] (`agent` in the `host` image's generated
//!   /etc/passwd), no terminal, every capability set empty, no_new_privs,
//!   `HOME=/workspace` (there is no home directory), RLIMIT_NOFILE 4096 and
//!   no core dumps. Seccomp is *not* in the spec: init installs brig's own
//!   allow-list on itself (so `libcontainer` needs no libseccomp).
//! - **Filesystem**: the image root read-only; /proc, a tmpfs /dev with the
//!   standard devices the runtime creates, /dev/pts (newinstance), a
//!   size-limited /dev/shm, /sys read-only, the image's read-only binds,
//!   `/workspace` (the session's tmpfs, read-write), `/tmp` (a tmpfs of
//!   `limits.tmp_bytes`); runc's masked and read-only /proc and /sys paths.
//! - **Namespaces**: mount, pid, ipc, uts (hostname = session id), network
//!   (a new one: loopback only), cgroup, and a user namespace when the
//!   runtime supports it ([`UserNs`]): container uids 0..65536 map to host
//!   uids from [`UserNs::HOST_BASE`], so even root inside (which brig never
//!   uses) is nobody on the host. gVisor gets no user namespace in the spec:
//!   its sandbox already runs as an unprivileged user in its own namespace,
//!   and its Sentry is the kernel the workload talks to.
//! - **cgroup**: `/brig/<session>`, cpu quota, memory limit with swap equal
//!   to it (no swap), pids limit, devices default-deny except the standard
//!   character devices.

use std::path::{Path, PathBuf};

use brig_core::session::Limits;
use brig_core::{Error, Result, SessionId};
use libcontainer::oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::image::ResolvedImage;
use crate::init::InitConfig;

/// The unprivileged user every sandbox command runs as (inside the sandbox).
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;
/// Where brig's binary is placed in every sandbox (it is init).
pub const INIT_PATH: &str = "/.brig/brig";
pub const WORKSPACE: &str = "/workspace";
/// CFS period; the quota is `cpu_millis` thousandths of it.
pub const CPU_PERIOD_US: u64 = 100_000;
const DEV_SHM_BYTES: u64 = 64 << 20;
const NOFILE: u64 = 4096;

/// A user namespace mapping: container ids `0..SIZE` → host `base..base+SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserNs {
    pub host_base: u32,
}

impl UserNs {
    /// Far above any login user's and the usual /etc/subuid ranges
    /// (100000+), so sandbox files never belong to a real host user.
    pub const HOST_BASE: u32 = 1_900_000_000;
    pub const SIZE: u32 = 65536;

    pub fn standard() -> UserNs {
        UserNs {
            host_base: Self::HOST_BASE,
        }
    }
    /// The host uid/gid a container id maps to.
    pub fn to_host(&self, id: u32) -> u32 {
        self.host_base + id
    }
}

/// What one session's spec is made of.
#[derive(Clone, Debug)]
pub struct SpecInput<'a> {
    pub id: &'a SessionId,
    pub image: &'a ResolvedImage,
    pub limits: &'a Limits,
    /// The host directory mounted at /workspace.
    pub workspace: &'a Path,
    /// The directory mounted at `/.brig`: brig's binary with its loader
    /// and libraries ([`crate::initfs`]).
    pub init_dir: &'a Path,
    pub init: &'a InitConfig,
    pub user_ns: Option<UserNs>,
    /// The session's egress directory ([`crate::egress`]), bound read-only
    /// at [`crate::egress::MOUNT`]; its generated resolv.conf is bound over
    /// the image's /etc/resolv.conf where the image has that file.
    pub egress: Option<&'a Path>,
}

/// The cgroup path (relative to each hierarchy's root) of a session.
pub fn cgroup_path(id: &SessionId) -> String {
    format!("/brig/{id}")
}

fn spec_err(what: &str) -> impl Fn(libcontainer::oci_spec::OciSpecError) -> Error + '_ {
    move |e| Error::internal(format!("building the OCI spec ({what}): {e}"))
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err("mount"))
}

fn char_dev(major: i64, minor: Option<i64>) -> Result<LinuxDeviceCgroup> {
    let b = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::C)
        .major(major)
        .access("rwm");
    match minor {
        Some(m) => b.minor(m),
        None => b,
    }
    .build()
    .map_err(spec_err("device rule"))
}

/// Build the spec of one session.
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let l = input.limits;
    let init_json = serde_json::to_string(input.init)
        .map_err(|e| Error::internal(format!("encoding the init config: {e}")))?;

    let mut env: Vec<String> = input
        .image
        .env
        .iter()
        .filter(|(k, _)| k != "HOME")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.push(format!("HOME={WORKSPACE}"));

    let none = Capabilities::new;
    let no_caps = LinuxCapabilitiesBuilder::default()
        .bounding(none())
        .effective(none())
        .inheritable(none())
        .permitted(none())
        .ambient(none())
        .build()
        .map_err(spec_err("capabilities"))?;
    let rlimits = vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(NOFILE)
            .hard(NOFILE)
            .build()
            .map_err(spec_err("rlimit"))?,
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitCore)
            .soft(0u64)
            .hard(0u64)
            .build()
            .map_err(spec_err("rlimit"))?,
    ];
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(SANDBOX_UID)
                .gid(SANDBOX_GID)
                .additional_gids(Vec::<u32>::new())
                .build()
                .map_err(spec_err("user"))?,
        )
        .args(crate::initfs::init_args(init_json))
        .env(env)
        .cwd(WORKSPACE)
        .capabilities(no_caps)
        .rlimits(rlimits)
        .no_new_privileges(true)
        .build()
        .map_err(spec_err("process"))?;

    let tmp_size = format!("size={}", l.tmp_bytes);
    let shm_size = format!("size={DEV_SHM_BYTES}");
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ];
    for (host, inside) in &input.image.binds {
        let inside = inside
            .to_str()
            .ok_or_else(|| Error::invalid(format!("image bind target {inside:?} is not UTF-8")))?;
        mounts.push(mount(
            inside,
            "bind",
            host,
            &["rbind", "ro", "nosuid", "nodev"],
        )?);
    }
    mounts.push(mount(
        crate::initfs::MOUNT,
        "bind",
        input.init_dir,
        &["bind", "ro", "nosuid", "nodev"],
    )?);
    if let Some(dir) = input.egress {
        mounts.push(mount(
            crate::egress::MOUNT,
            "bind",
            dir,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        )?);
        // Only over a regular file: a mountpoint the runtime had to create
        // (or a symlink it had to follow) would change the image. An image
        // without one keeps its resolver settings, which reach nothing: only
        // 127.0.0.53 answers inside.
        let target = input.image.rootfs.join("etc/resolv.conf");
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file()) {
            mounts.push(mount(
                "/etc/resolv.conf",
                "bind",
                &dir.join(crate::egress::RESOLV_FILE),
                &["bind", "ro", "nosuid", "nodev", "noexec"],
            )?);
        }
        // The trust bundle (when brig intercepts hosts) over the system one,
        // under the same rule: only over a regular file of the image.
        let bundle = dir.join(crate::egress::CA_BUNDLE_FILE);
        let system = input.image.rootfs.join(crate::egress::SYSTEM_BUNDLE);
        if bundle.is_file() && std::fs::symlink_metadata(&system).is_ok_and(|m| m.is_file()) {
            mounts.push(mount(
                &format!("/{}", crate::egress::SYSTEM_BUNDLE),
                "bind",
                &bundle,
                &["bind", "ro", "nosuid", "nodev", "noexec"],
            )?);
        }
    }
    mounts.push(mount(
        WORKSPACE,
        "bind",
        input.workspace,
        &["bind", "rw", "nosuid", "nodev"],
    )?);
    mounts.push(mount(
        "/tmp",
        "tmpfs",
        Path::new("tmpfs"),
        &["nosuid", "nodev", "mode=1777", &tmp_size],
    )?);

    let mut namespaces = vec![];
    for typ in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .chain(input.user_ns.map(|_| LinuxNamespaceType::User))
    {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(spec_err("namespace"))?,
        );
    }

    // Deny every device, then allow what a shell needs: null zero full
    // random urandom tty ptmx and the pts of its own devpts.
    let mut devices = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(spec_err("device rule"))?];
    for (major, minor) in [
        (1, Some(3)),
        (1, Some(5)),
        (1, Some(7)),
        (1, Some(8)),
        (1, Some(9)),
        (5, Some(0)),
        (5, Some(2)),
        (136, None),
    ] {
        devices.push(char_dev(major, minor)?);
    }
    let quota = (l.cpu_millis * CPU_PERIOD_US / 1000) as i64;
    let resources = LinuxResourcesBuilder::default()
        .devices(devices)
        .cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(spec_err("cpu"))?,
        )
        .memory(
            LinuxMemoryBuilder::default()
                .limit(l.memory_bytes as i64)
                .swap(l.memory_bytes as i64)
                .build()
                .map_err(spec_err("memory"))?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(l.pids as i64)
                .build()
                .map_err(spec_err("pids"))?,
        )
        .build()
        .map_err(spec_err("resources"))?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(PathBuf::from(cgroup_path(input.id)))
        .masked_paths(
            [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap",
            ]
            .map(String::from)
            .to_vec(),
        )
        .readonly_paths(
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]
            .map(String::from)
            .to_vec(),
        );
    if let Some(u) = input.user_ns {
        let map = || {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(u.host_base)
                .size(UserNs::SIZE)
                .build()
                .map_err(spec_err("id mapping"))
        };
        linux = linux.uid_mappings(vec![map()?]).gid_mappings(vec![map()?]);
    }
    let linux = linux.build().map_err(spec_err("linux"))?;

    SpecBuilder::default()
        .version("1.0.2")
        .hostname(input.id.as_str())
        .root(
            RootBuilder::default()
                .path(&input.image.rootfs)
                .readonly(true)
                .build()
                .map_err(spec_err("root"))?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_err("spec"))
}

/// Write `spec` as `<bundle>/config.json` (mode 0600: it names host paths).
pub fn write_bundle(bundle: &Path, spec: &Spec) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(bundle)
        .map_err(|e| Error::internal(format!("creating bundle {}: {e}", bundle.display())))?;
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| Error::internal(format!("encoding the OCI spec: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
    f.write_all(&json)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Image;

    fn image() -> ResolvedImage {
        ResolvedImage {
            image: Image {
                name: "host".into(),
                digest: "sha256:00".into(),
            },
            rootfs: "/var/lib/brig/images/host/rootfs".into(),
            binds: vec![("/usr".into(), "/usr".into())],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("HOME".into(), "/root".into()),
            ],
        }
    }

    #[test]
    fn spec_carries_every_layer() {
        let id = SessionId::generate();
        let img = image();
        let limits = Limits {
            cpu_millis: 1500,
            memory_bytes: 256 << 20,
            pids: 64,
            ..Limits::default()
        };
        let init = InitConfig {
            rw_paths: vec!["/workspace".into()],
            landlock: true,
            seccomp: true,
            nproc: None,
            capture: true,
            hold_words: vec![],
            egress: Some(crate::egress::ForwarderConfig::new(true)),
        };
        let spec = build(&SpecInput {
            id: &id,
            image: &img,
            limits: &limits,
            workspace: Path::new("/data/sessions/x/workspace"),
            init_dir: Path::new("/data/init/k"),
            init: &init,
            user_ns: Some(UserNs::standard()),
            egress: Some(Path::new("/data/sessions/x/egress")),
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["hostname"], id.as_str());
        assert_eq!(v["root"]["readonly"], true);
        let p = &v["process"];
        assert_eq!(p["args"][0], "/.brig/ld.so");
        assert_eq!(p["args"][3], INIT_PATH);
        assert_eq!(p["args"][4], "sandbox-init");
        let cfg: InitConfig = serde_json::from_str(p["args"][5].as_str().unwrap()).unwrap();
        assert!(cfg.seccomp && cfg.landlock);
        assert_eq!(p["user"]["uid"], SANDBOX_UID);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["cwd"], "/workspace");
        for set in [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ] {
            assert_eq!(p["capabilities"][set], serde_json::json!([]), "{set}");
        }
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"HOME=/workspace") && !env.contains(&"HOME=/root"),
            "{env:?}"
        );
        let r = &v["linux"]["resources"];
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["memory"]["limit"], 256 << 20);
        assert_eq!(r["memory"]["swap"], 256 << 20);
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(r["devices"][0]["allow"], false);
        assert_eq!(v["linux"]["cgroupsPath"], format!("/brig/{id}"));
        assert!(
            v.get("linux").unwrap().get("seccomp").is_none(),
            "init applies seccomp itself"
        );
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["mount", "pid", "ipc", "uts", "network", "cgroup", "user"] {
            assert!(ns.contains(&want), "{want} missing from {ns:?}");
        }
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], UserNs::HOST_BASE);
        let mounts = v["mounts"].as_array().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == d)
                .unwrap_or_else(|| panic!("no {d}"))
        };
        assert!(find("/usr")["options"]
            .as_array()
            .unwrap()
            .contains(&"ro".into()));
        assert!(find(crate::initfs::MOUNT)["options"]
            .as_array()
            .unwrap()
            .contains(&"nosuid".into()));
        assert_eq!(find("/workspace")["source"], "/data/sessions/x/workspace");
        let eg = find(crate::egress::MOUNT);
        assert_eq!(eg["source"], "/data/sessions/x/egress");
        assert!(eg["options"].as_array().unwrap().contains(&"ro".into()));
        assert!(find("/tmp")["options"]
            .as_array()
            .unwrap()
            .contains(&format!("size={}", limits.tmp_bytes).into()));
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/kcore".into()));
        assert!(v["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/sys".into()));
    }
}
