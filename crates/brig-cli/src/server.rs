//! The control plane in this process: `brig serve`, and the embedded one
//! `brig demo` starts. The only place the CLI touches `brig_server`.

use std::path::{Path, PathBuf};

use brig_core::Result;
use brig_server::ServerConfig;

use crate::cli::LogFormat;

/// brig.toml from `path`, or every default when there is none.
pub fn load_config(path: Option<&Path>) -> Result<ServerConfig> {
    match path {
        Some(p) => ServerConfig::load(p),
        None => ServerConfig::parse("", "defaults (no brig.toml)"),
    }
}

/// The socket a brig.toml says the server listens on (for the client).
pub fn configured_socket(path: &Path) -> Result<PathBuf> {
    Ok(ServerConfig::load(path)?.socket)
}

/// `brig serve`: load brig.toml (if any), apply the flags, serve until
/// SIGINT/SIGTERM.
pub async fn serve(
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    log_format: Option<LogFormat>,
) -> Result<()> {
    brig_server::init_logging(log_format == Some(LogFormat::Json));
    let mut cfg = load_config(config)?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(s) = socket {
        cfg.socket = s;
    }
    brig_server::serve(cfg).await
}

/// A control plane running inside this process on a private socket.
pub struct Embedded {
    inner: brig_server::RunningServer,
}

impl Embedded {
    /// With the embedded defaults changed by `tweak` (the demo's test gate).
    pub async fn start_with(
        data_dir: &Path,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Result<Embedded> {
        let mut cfg = ServerConfig::embedded(data_dir);
        tweak(&mut cfg);
        Ok(Embedded {
            inner: brig_server::start(cfg).await?,
        })
    }

    pub fn socket_path(&self) -> PathBuf {
        self.inner.socket_path().to_path_buf()
    }

    pub async fn shutdown(self) -> Result<()> {
        self.inner.shutdown().await
    }
}
