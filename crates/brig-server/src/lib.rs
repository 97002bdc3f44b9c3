//! brig-server: the control plane behind `brig serve`.
//!
//! [`start`] reconciles what a crash may have left, then serves the HTTP API
//! of docs/API.md on a unix socket (mode 0600) and, when configured, on TCP
//! with a bearer token; [`serve`] does the same until SIGINT/SIGTERM.
//! Sessions are run by the [`manager::Manager`], state lives in brig-store.

pub mod api;
pub mod approvals;
pub mod approvals_api;
pub mod artifacts;
pub mod auth;
pub mod client;
pub mod config;
pub mod egress;
pub mod forge_tokens;
pub mod git;
pub mod git_config;
pub mod git_gateway;
pub mod identity;
pub mod image_build;
pub mod journal;
pub mod known_secrets;
pub mod manager;
pub mod metrics;
pub mod models;
pub mod policy;
pub mod pool;
pub mod pr;
pub mod secrets;
pub mod sinks;
pub mod web_login;
pub mod webhook;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use brig_core::{Error, ErrorKind, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Profile, ServerConfig};
pub use manager::Manager;

/// Log to stderr, human-readable or one JSON object per line. The filter
/// comes from `BRIG_LOG` (e.g. `debug`, `brig_server=trace`), default `info`.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BRIG_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// A running control plane.
pub struct RunningServer {
    socket: PathBuf,
    tcp_addr: Option<std::net::SocketAddr>,
    mgr: Arc<Manager>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    reaper: JoinHandle<()>,
    journal: Arc<journal::Journal>,
    signer: JoinHandle<()>,
}

impl RunningServer {
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
    /// The TCP address actually bound (useful with port 0).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp_addr
    }
    pub fn manager(&self) -> &Arc<Manager> {
        &self.mgr
    }

    /// Stop accepting, destroy every live session, wait for open requests
    /// (at most a few seconds) and remove the socket.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.reaper.abort();
        self.mgr.shutdown().await;
        for s in self.servers {
            let abort = s.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), s)
                .await
                .is_err()
            {
                tracing::warn!("open connections did not close in 5 s; dropping them");
                abort.abort();
            }
        }
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(socket = %self.socket.display(), error = %e, "could not remove the socket")
            }
        }
        // Sign the head after the destroy events of the shutdown, then let
        // the sinks deliver what they can (bounded), that checkpoint included.
        self.signer.abort();
        match self.journal.checkpoint().await {
            Ok(Some(cp)) => tracing::info!(seq = cp.seq, "journal checkpoint signed at shutdown"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "journal: final checkpoint failed"),
        }
        let runner = self
            .mgr
            .sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = runner {
            for st in r.shutdown().await {
                if st.lag > 0 {
                    tracing::warn!(sink = %st.name, lag = st.lag, "journal sink behind at shutdown; it resumes from its cursor next start");
                }
            }
        }
        tracing::info!("brig serve stopped");
        Ok(())
    }
}

/// Start the control plane: open the store, reconcile leftovers of a crash,
/// listen. Returns once it accepts requests.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer> {
    start_inner(cfg, true).await
}

pub(crate) async fn start_inner(cfg: ServerConfig, reconcile: bool) -> Result<RunningServer> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        Error::internal(format!(
            "cannot create data_dir {}: {e}",
            cfg.data_dir.display()
        ))
        .hint("set data_dir in brig.toml to a directory brig serve can write")
    })?;
    let token = match cfg.tcp.as_ref().and_then(|t| t.token_file.as_ref()) {
        Some(f) => Some(Arc::new(auth::Token::from_file(f)?)),
        None => None,
    };
    // The IdP's client is built now (its CA and client secret read), so a
    // broken [identity] stops the start; discovery waits for the first use.
    let identity = Arc::new(identity::Identity::new(&cfg.identity)?);
    // Claim the socket first: a second brig serve must not touch the first one's sessions.
    let unix = bind_unix(&cfg.socket).await?;
    match listen(&cfg, unix, token, identity, reconcile).await {
        Ok(s) => Ok(s),
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.socket);
            Err(e)
        }
    }
}

async fn listen(
    cfg: &ServerConfig,
    unix: tokio::net::UnixListener,
    token: Option<Arc<auth::Token>>,
    identity: Arc<identity::Identity>,
    reconcile: bool,
) -> Result<RunningServer> {
    let db_path = cfg.db_path();
    let store = tokio::task::spawn_blocking(move || brig_store::Store::open(&db_path))
        .await
        .map_err(|e| Error::internal(format!("store task failed: {e}")))??;
    // Every event passes the redactor before it is stored. Known secret
    // values join the patterns when brig holds secrets (secrets issue).
    store.set_redactor(Arc::new(brig_redact::Redactor::patterns_only()));
    // And PII in argv, environment and payload excerpts (`[journal.pii]`,
    // checked when the config was read).
    let pii = &cfg.journal.pii;
    if !pii.enabled.is_empty() || !pii.patterns.is_empty() {
        let rules = brig_redact::pii::PiiRules::new(pii)
            .map_err(|e| Error::invalid(format!("[journal.pii] {}: {}", e.key, e.message)))?;
        store.set_pii(Some(Arc::new(rules)));
    }
    let mgr = Arc::new(Manager::new(cfg.clone(), store));
    // The upload-URL service (its signing key is made or checked now).
    mgr.artifacts()?;
    // No signing key, no journal: refuse to start rather than record
    // events nobody can later prove untouched.
    let journal = Arc::new(journal::Journal::open(
        mgr.db().clone(),
        &cfg.data_dir,
        cfg.journal.clone(),
    )?);
    if reconcile {
        mgr.reconcile().await?;
    }
    mgr.journal_policy_change().await?;
    let (stop, stop_rx) = watch::channel(false);
    let state = api::AppState { mgr: mgr.clone() };
    let mut servers = Vec::new();
    let mut tcp_addr = None;
    if let Some(t) = &cfg.tcp {
        let l = tokio::net::TcpListener::bind(t.listen).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot listen on {}: {e}", t.listen),
            )
            .hint("change [tcp] listen in brig.toml or stop what uses that port")
        })?;
        tcp_addr = l.local_addr().ok();
        let app = api::router_with(state.clone(), identity.clone(), api::Listener::Tcp(token));
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(async move {
            let r = axum::serve(
                l,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "TCP listener failed");
            }
        }));
        tracing::info!(addr = %t.listen, oidc = identity.oidc_configured(), "listening on TCP (bearer token required)");
    }
    let app = api::router_with(state, identity, api::Listener::Unix);
    let mut rx = stop_rx;
    servers.push(tokio::spawn(async move {
        // Every connection's peer uid (SO_PEERCRED) names its caller.
        let r = axum::serve(
            unix,
            app.into_make_service_with_connect_info::<auth::UnixPeer>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "unix listener failed");
        }
    }));
    let reaper = mgr.spawn_reaper();
    let signer = journal.spawn();
    let sink_runner = sinks::start(
        &cfg.journal.sinks,
        mgr.db().store(),
        &cfg.data_dir,
        mgr.db().writer().wakeup(),
    )?;
    *mgr.sinks.lock().unwrap_or_else(|p| p.into_inner()) = sink_runner;
    tracing::info!(socket = %cfg.socket.display(), data_dir = %cfg.data_dir.display(), config = %cfg.source, "brig serve ready");
    Ok(RunningServer {
        socket: cfg.socket.clone(),
        tcp_addr,
        mgr,
        stop,
        servers,
        reaper,
        journal,
        signer,
    })
}

/// Run until SIGINT or SIGTERM, then shut down gracefully.
pub async fn serve(cfg: ServerConfig) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::internal(format!("cannot watch SIGTERM: {e}")))?;
    let server = start(cfg).await?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    server.shutdown().await
}

/// Bind the API socket: create its directory, take over a stale socket only
/// if nothing answers on it, and make it 0600 before it has a name anyone
/// can connect to (bound under a temporary name, chmod, renamed).
async fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::internal(format!(
            "cannot create socket directory {}: {e}",
            dir.display()
        ))
        .hint("set socket in brig.toml to a path brig serve can create")
    })?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot inspect {}: {e}",
                path.display()
            )))
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(Error::conflict(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ))
            .hint("set socket in brig.toml to another path, or remove that file"))
        }
        Ok(_) => {
            match tokio::net::UnixStream::connect(path).await {
                Ok(_) => return Err(Error::conflict(format!(
                    "another brig serve is already listening on {}",
                    path.display()
                ))
                .hint(
                    "stop it first, or give this one another socket (and data_dir) in brig.toml",
                )),
                Err(_) => {
                    tracing::info!(socket = %path.display(), "removing a stale socket");
                    std::fs::remove_file(path).map_err(|e| {
                        Error::internal(format!(
                            "cannot remove stale socket {}: {e}",
                            path.display()
                        ))
                    })?;
                }
            }
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(|e| {
        Error::internal(format!("cannot listen on {}: {e}", path.display()))
            .hint("unix socket paths must be shorter than 108 bytes and their directory writable")
    })?;
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::internal(format!("cannot set up socket {}: {e}", path.display()))
    };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(listener)
}

#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod tests;

/// What unit tests of several modules share.
#[cfg(test)]
pub(crate) mod tests_support {
    /// A running session's record (insert it before journaling for it).
    pub fn session_info() -> brig_core::session::SessionInfo {
        let id = brig_core::SessionId::generate();
        brig_core::session::SessionInfo {
            principal: id.principal(),
            id,
            human: "h".into(),
            task: "T-1".parse().unwrap(),
            profile: "default".into(),
            runtime: "native".into(),
            image: "host".into(),
            image_digest: String::new(),
            state: brig_core::session::SessionState::Running,
            limits: Default::default(),
            repo: None,
            created_at: brig_core::event::now_rfc3339(),
            started_at: None,
            ended_at: None,
            end_reason: None,
            layers: vec![],
            exec_count: 0,
            last_activity_at: None,
        }
    }
}
