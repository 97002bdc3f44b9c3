//! A session's way out, from the control plane: bind the session's two
//! egress sockets (`brig_sandbox::egress`) and serve them with `brig-proxy`
//! under that session's policy, journaling every connection, request and
//! DNS query (docs/EGRESS.md).
//!
//! The session is the socket: the listeners are created here for exactly
//! one session and handed to the proxy with that session's identity; nothing
//! a stream says can change it. Dropping [`SessionChannels`] stops serving:
//! the sockets are unlinked and every open connection is dropped, so the
//! sandbox's connections are refused from then on (fail closed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use brig_core::event::{Event, Outcome};
use brig_core::session::SessionInfo;
use brig_core::{Error, ErrorKind, Result};
use brig_egress::Policy;
use brig_proxy::{EgressEvent, EgressEvents, EventKind, ResolverConfig, SessionEgress, Verdict};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::manager::Db;

/// Events queued for the journal; past this they are counted and dropped
/// (a flood of requests must not grow brig's memory), and the count is
/// journaled as `net.journal_overflow`.
const QUEUE: usize = 8192;

/// The serving tasks of one session's egress sockets.
pub struct SessionChannels {
    tasks: Vec<JoinHandle<()>>,
    paths: Vec<PathBuf>,
    limits: Option<Arc<brig_proxy::SessionLimits>>,
}

impl SessionChannels {
    /// Proxy streams open now (the kill drill watches them drop to 0).
    pub fn open_connections(&self) -> usize {
        self.limits.as_ref().map_or(0, |l| l.open_connections())
    }

    /// A handle that keeps counting after the channels are dropped.
    pub fn connection_counter(&self) -> Option<Arc<brig_proxy::SessionLimits>> {
        self.limits.clone()
    }
}

impl Drop for SessionChannels {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// brig's own endpoints a session's proxy channel answers itself.
#[derive(Default)]
pub struct OwnServices {
    /// The artifact endpoint (none: the proxy answers 404).
    pub artifacts: Option<Arc<crate::artifacts::Artifacts>>,
    /// Local services on reserved hosts (the git gateway).
    pub local: Vec<Arc<dyn brig_proxy::local::LocalService>>,
    /// The session's secrets and brig's CA: their hosts are intercepted.
    pub secrets: Option<(
        Arc<dyn brig_proxy::SecretInjector>,
        Arc<brig_proxy::CertAuthority>,
    )>,
    /// Extra CAs trusted for intercepted hosts' upstream TLS (on top of the
    /// system bundle): `secrets_upstream_ca` of brig.toml.
    pub upstream_ca_file: Option<PathBuf>,
    /// Cedar's second word on what the egress policy allows.
    pub guard: Option<Arc<dyn brig_proxy::ConnectGuard>>,
}

/// Bind `dir`'s sockets and serve them for `info`'s session. An error names
/// the layer `egress`: the session must not start without its way out.
pub fn start(
    db: &Db,
    info: &SessionInfo,
    policy: Arc<Policy>,
    resolver: &ResolverConfig,
    limits: &brig_proxy::Limits,
    own: OwnServices,
    dir: &Path,
) -> Result<SessionChannels> {
    let OwnServices {
        artifacts,
        local,
        secrets,
        upstream_ca_file,
        guard: connect_guard,
    } = own;
    let guard = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorKind::GuardUnavailable,
            format!("egress: {what} in {}: {e}", dir.display()),
        )
        .hint("the session's way out could not be set up, so it does not start")
    };
    let listen = |name: &str| -> Result<tokio::net::UnixListener> {
        let l = brig_sandbox::egress::bind_egress_socket(dir, name)
            .map_err(|e| guard(&format!("binding {name}"), e))?;
        l.set_nonblocking(true)
            .map_err(|e| guard(&format!("{name} non-blocking"), e))?;
        tokio::net::UnixListener::from_std(l).map_err(|e| guard(&format!("serving {name}"), e))
    };
    let mut channels = SessionChannels {
        tasks: Vec::new(),
        paths: Vec::new(),
        limits: None,
    };
    let proxy = listen(brig_sandbox::egress::PROXY_SOCK)?;
    channels
        .paths
        .push(dir.join(brig_sandbox::egress::PROXY_SOCK));
    let dns = listen(brig_sandbox::egress::DNS_SOCK)?;
    channels
        .paths
        .push(dir.join(brig_sandbox::egress::DNS_SOCK));

    let (tx, rx) = mpsc::channel(QUEUE);
    let sink = Arc::new(JournalSink {
        tx,
        dropped: Default::default(),
    });
    let session = SessionEgress::new(
        info.id.to_string(),
        policy,
        brig_proxy::SessionResolver::new(resolver.clone()),
        sink.clone(),
    )
    .with_limits(limits.clone());
    channels
        .tasks
        .push(tokio::spawn(journal(db.clone(), info.clone(), rx, sink)));
    // brig's artifact endpoint, answered by this session's proxy itself
    // (crate::artifacts; no service: the proxy answers 404).
    let session = match artifacts {
        Some(a) => session.with_artifacts(Arc::new(crate::artifacts::SessionSink::new(
            db.clone(),
            info.clone(),
            a,
        ))),
        None => session,
    };
    // brig's own services on this channel (the git gateway).
    let session = local.into_iter().fold(session, |s, l| s.with_local(l));
    let session = match secrets {
        Some((injector, ca)) => {
            let cfg = brig_proxy::ProxyConfig {
                upstream_ca_file,
                ..brig_proxy::ProxyConfig::default()
            };
            session.with_config(cfg).with_secrets(injector).with_ca(ca)
        }
        None => session,
    };
    let session = match connect_guard {
        Some(g) => session.with_guard(g),
        None => session,
    };
    channels.limits = Some(session.limits.clone());
    let id = info.id.to_string();
    let s = session.clone();
    channels.tasks.push(tokio::spawn(async move {
        if let Err(e) = brig_proxy::serve_unix(proxy, s).await {
            tracing::error!(session = %id, error = %e, "egress proxy channel stopped");
        }
    }));
    let id = info.id.to_string();
    channels.tasks.push(tokio::spawn(async move {
        if let Err(e) = brig_proxy::serve_dns_unix(dns, session).await {
            tracing::error!(session = %id, error = %e, "egress DNS channel stopped");
        }
    }));
    Ok(channels)
}

/// The proxy's event sink: a bounded queue that never blocks a connection.
struct JournalSink {
    tx: mpsc::Sender<EgressEvent>,
    dropped: std::sync::atomic::AtomicU64,
}

impl EgressEvents for JournalSink {
    fn event(&self, event: EgressEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn journal(
    db: Db,
    info: SessionInfo,
    mut rx: mpsc::Receiver<EgressEvent>,
    sink: Arc<JournalSink>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = crate::manager::gather_batch(journal_event(&info, first), || {
            rx.try_recv().ok().map(|e| journal_event(&info, e))
        })
        .await;
        let dropped = sink.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            batch.push(
                crate::manager::session_event(&info, "net.journal_overflow", Outcome::Failure)
                    .rule("egress.queue")
                    .details(serde_json::json!({ "dropped": dropped })),
            );
        }
        if let Err(e) = db
            .write(move |s| s.append_events_owned(batch).map(|_| ()))
            .await
        {
            tracing::error!(session = %info.id, error = %e, "could not journal egress events");
        }
    }
}

/// The journal's form of one proxy/resolver event: `net.connect` (a tunnel
/// or a refused connection), `net.request` (one plain-HTTP request),
/// `net.dns` (one query); outcome `success` when allowed, `denied` when
/// denied, `info` for report mode's would-deny (with `would_deny: true`).
pub fn journal_event(info: &SessionInfo, e: EgressEvent) -> Event {
    let action = match e.kind {
        EventKind::Tunnel | EventKind::Connection => "net.connect",
        EventKind::Http => "net.request",
        EventKind::Dns => "net.dns",
    };
    let outcome = match e.decision {
        Verdict::Allowed => Outcome::Success,
        Verdict::Denied => Outcome::Denied,
        Verdict::WouldDeny => Outcome::Info,
    };
    let rule = e.rule.clone();
    let mut details = serde_json::to_value(&e).unwrap_or_default();
    if let Some(o) = details.as_object_mut() {
        // Already the event's own fields.
        o.remove("session");
        o.remove("rule");
        if e.decision == Verdict::WouldDeny {
            o.insert("would_deny".into(), true.into());
        }
    }
    let mut ev = crate::manager::session_event(info, action, outcome).details(details);
    if !rule.is_empty() {
        ev = ev.rule(rule);
    }
    ev
}
