//! Landlock for the sandbox's init.
//!
//! Init restricts itself (and so every process it starts) to: read and
//! execute anywhere under `/`, full access beneath the configured read-write
//! paths (/workspace, /tmp, a few /dev nodes), and — where the kernel has
//! them (ABI 6+) — no abstract unix sockets and no signals reaching outside
//! the sandbox's Landlock domain.
//!
//! The ruleset uses every filesystem right of the kernel's ABI, capped at
//! the newest ABI brig has been tested with, and is required to be fully
//! enforced: anything less is an error and init refuses to serve.

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The newest Landlock ABI brig has been tested with. A newer kernel is
/// used at this level: new rights may restrict things brig's sandboxes rely on.
const NEWEST_TESTED: i32 = 7;

/// The kernel's Landlock ABI version, or why there is none.
pub fn kernel_abi() -> Result<i32, String> {
    // SAFETY: the documented version query: no pointers, no side effects.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v >= 1 {
        return Ok(v as i32);
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => "Landlock is built into this kernel but not enabled (add `landlock` to the `lsm=` boot parameter)".to_string(),
        Some(libc::ENOSYS) => "this kernel has no Landlock (needs Linux 5.13+ with CONFIG_SECURITY_LANDLOCK)".to_string(),
        _ => format!("querying the Landlock ABI failed: {e}"),
    })
}

/// Restrict the calling process as described above. Returns the layer name
/// (`landlock:abiN`) or an error saying what could not be enforced.
pub fn apply(rw_paths: &[String]) -> Result<String, String> {
    let version = kernel_abi()?.min(NEWEST_TESTED);
    let abi = ABI::from(version);
    let fs_all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(fs_all)
        .map_err(|e| err("handling filesystem rights", &e))?;
    if version >= 6 {
        ruleset = ruleset
            .scope(Scope::from_all(abi))
            .map_err(|e| err("scoping abstract unix sockets and signals", &e))?;
    }
    let mut created = ruleset
        .create()
        .map_err(|e| err("creating the ruleset", &e))?;

    let root = PathFd::new("/").map_err(|e| err("opening /", &e))?;
    created = created
        .add_rule(PathBeneath::new(root, read))
        .map_err(|e| err("allowing read+execute under /", &e))?;

    // Paths that do not exist in this sandbox are skipped: leaving one out
    // only denies more. Files get the file subset of the rights.
    for p in rw_paths {
        if std::fs::metadata(p).is_err() {
            continue;
        }
        created = created
            .add_rules(path_beneath_rules([p], fs_all))
            .map_err(|e| err(&format!("allowing writes under {p}"), &e))?;
    }

    let status = created
        .restrict_self()
        .map_err(|e| err("restricting the process", &e))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(format!(
            "the ruleset is only {:?} at ABI {version}",
            status.ruleset
        ));
    }
    if !status.no_new_privs {
        return Err("no_new_privs could not be set".into());
    }
    Ok(format!("landlock:abi{version}"))
}
