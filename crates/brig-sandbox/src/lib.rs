//! brig-sandbox: one sandbox per session.
//!
//! brig builds one OCI runtime spec per session ([`spec`]) and hands it to a
//! runtime ([`runtime`]): `native` (youki's libcontainer, run by brig's own
//! binary as `brig oci-runtime ...`), `gvisor` (`runsc`), or any OCI runtime
//! binary. The spec's process is `brig sandbox-init` ([`init`]), which applies
//! seccomp and Landlock to itself, then serves the framed protocol of
//! `brig_core::wire` on its stdin/stdout; the host side is [`channel`].

pub mod channel;
pub mod init;
pub mod sandbox;

pub use channel::{ExecEvent, ExecHandle};
pub use sandbox::{DestroyReport, Image, Sandbox, SandboxPaths, SandboxRequest};
pub mod native;
