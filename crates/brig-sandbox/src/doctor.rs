//! `brig doctor`: what this host supports and which runtimes will work.
//! (Stub: to be written.)

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

/// Probe the host. Cheap enough to run on every `brig doctor` and at `brig serve` start.
pub fn probe() -> DoctorReport {
    todo!()
}
