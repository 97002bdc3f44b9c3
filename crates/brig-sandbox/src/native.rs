//! `brig oci-runtime ...`: the `native` runtime, an OCI runtime CLI
//! (create/start/kill/delete/state, as runc and crun have) implemented with
//! youki's libcontainer inside brig's own binary. (Stub: to be written.)

/// Entry point of `brig oci-runtime <args>`; returns the exit code.
pub fn cli_main(_args: &[String]) -> i32 {
    eprintln!("brig oci-runtime: not yet implemented");
    125
}
