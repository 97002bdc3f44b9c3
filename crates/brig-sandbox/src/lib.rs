//! brig-sandbox: one sandbox per session.
//!
//! brig builds one OCI runtime spec per session ([`spec`]) and hands it to a
//! runtime ([`runtime`]): `native` (youki's libcontainer, run by brig's own
//! binary as `brig oci-runtime ...`, see [`native`]), `gvisor` (`runsc`), or
//! any OCI runtime binary. The spec's process is `brig sandbox-init`
//! ([`init`]), which applies seccomp ([`seccomp`]) and Landlock
//! ([`landlock`]) to itself, then serves the framed protocol of
//! `brig_core::wire` on its stdin/stdout; the host side is [`channel`].

pub mod capture;
pub mod cgroup;
pub mod channel;
pub mod debian;
pub mod doctor;
pub mod egress;
pub mod forwarder;
pub mod gvisor_trace;
pub mod image;
pub mod init;
pub mod initfs;
pub mod landlock;
pub mod native;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod spec;
pub mod upload;
pub mod workspace;

pub use channel::{ExecEvent, ExecHandle, ProcessEvent, ProcessEvents};
pub use image::Image;
pub use sandbox::{DestroyReport, Sandbox, SandboxPaths, SandboxRequest};
