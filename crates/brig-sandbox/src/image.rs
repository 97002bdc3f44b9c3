//! Images: immutable, content-addressed roots. `host` (generated from the
//! host's /usr, /lib*, /bin, /sbin and a generated /etc) and imported OCI
//! layouts / `docker save` tarballs. (Stub: to be written.)

use std::path::{Path, PathBuf};

use brig_core::Result;

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

/// Resolve `host`, an imported image's name, or a `sha256:` digest.
pub fn resolve(_paths: &SandboxPaths, _name: &str) -> Result<ResolvedImage> {
    todo!()
}

/// Unpack an OCI image layout directory or a `docker save` tarball into the
/// store, keyed by digest; `name` names it for `--image`.
pub fn import(_paths: &SandboxPaths, _source: &Path, _name: &str) -> Result<Image> {
    todo!()
}

/// Every image in the store (and `host`).
pub fn list(_paths: &SandboxPaths) -> Result<Vec<Image>> {
    todo!()
}
