//! `--upload DIR` / `--repo PATH`: copy a controlled snapshot of a host
//! directory into a session's /workspace, never a mount. (Stub: to be written.)

use std::path::Path;

use brig_core::Result;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Entries skipped: ignored by .gitignore/.git, special files.
    pub skipped: u64,
}

/// Copy `src` into `dst` (an existing directory), honouring .gitignore
/// files and skipping `.git`, copying symlinks as symlinks (never following
/// them), skipping device nodes, fifos and sockets, keeping non-UTF-8 names,
/// and chowning everything to `owner` (uid, gid). Fails with
/// `ErrorKind::LimitExceeded` once the total would pass `cap_bytes`; the
/// caller then discards `dst` whole.
pub fn copy_snapshot(_src: &Path, _dst: &Path, _cap_bytes: u64, _owner: (u32, u32)) -> Result<UploadStats> {
    todo!()
}
