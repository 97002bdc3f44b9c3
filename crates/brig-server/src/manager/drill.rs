//! `brig drill kill` (issue 7): the kill switch's game day. A test session
//! is started with what a real one holds when it must be stopped — a
//! running process, open proxy connections, a live credential — then
//! killed through the same path as `brig kill`, while observers outside
//! that path time each part until it is dead: the processes (the
//! session's cgroup is empty), the connections (the proxy counts none
//! open), the credentials (the store records every one revoked) and the
//! sandbox (its session directory is gone).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_core::event::Outcome;
use brig_core::exec::ExecRequest;
use brig_core::session::CreateSession;
use brig_core::{Error, ErrorKind, Result};
use brig_secrets::config::Secrets;
use brig_secrets::{BoxFuture, Fetched, SecretError, SecretSource, SecretValue};
use serde::Serialize;

use super::{session_event, ExecOut, KillTarget, Manager};

/// The drill's credential source: only the drill's sessions name it (its
/// name cannot be configured: `[secrets.sources]` names have no `:`).
const SOURCE: &str = "brig:drill";
/// The grant, and the host it is bound to (one that does not exist).
const GRANT: &str = "BRIG_DRILL_TOKEN";
const HOST: &str = "drill.brig.invalid";
/// Proxy connections the drill holds open from inside the sandbox.
const CONNECTIONS: usize = 2;
/// The target: every part dead within this.
pub const TARGET: Duration = Duration::from_secs(1);
/// How long an observer waits before calling a part not dead.
const GIVE_UP: Duration = Duration::from_secs(10);

struct DrillSource;

impl SecretSource for DrillSource {
    fn kind(&self) -> &'static str {
        "drill"
    }
    fn fetch<'a>(
        &'a self,
        _key: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Fetched, SecretError>> {
        Box::pin(async move {
            use rand::Rng;
            let v: [u8; 24] = rand::thread_rng().gen();
            Ok(Fetched {
                value: SecretValue::from_string(format!("brig-drill-{}", hex::encode(v))),
                ttl: None,
                lease: None,
            })
        })
    }
}

/// The drill's secrets and its one grant.
pub(super) fn secrets(max_ttl: Duration) -> (Secrets, BTreeMap<String, crate::secrets::Grant>) {
    let mut sources: BTreeMap<String, Arc<dyn SecretSource>> = BTreeMap::new();
    sources.insert(SOURCE.into(), Arc::new(DrillSource));
    let cache = brig_secrets::SecretCache::new(sources.clone(), max_ttl);
    let grant: crate::secrets::Grant = serde_json::from_value(serde_json::json!({
        "source": SOURCE, "key": "token", "scope": "cloud:drill", "hosts": [HOST],
    }))
    .expect("the drill grant is well-formed");
    (
        Secrets {
            sources,
            minters: BTreeMap::new(),
            cache,
        },
        BTreeMap::from([(GRANT.to_string(), grant)]),
    )
}

/// One part of a session and how long it took to die.
#[derive(Clone, Debug, Serialize)]
pub struct DrillPart {
    /// `processes`, `connections`, `credentials`, `sandbox`.
    pub part: &'static str,
    /// How many there were when the kill started.
    pub live_before: usize,
    /// Milliseconds from the kill to dead; `None`: not dead within 10 s.
    pub dead_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub session: String,
    pub parts: Vec<DrillPart>,
    /// Until the kill call returned.
    pub kill_ms: f64,
    pub target_ms: u64,
    /// Every part dead within the target.
    pub passed: bool,
}

/// Poll `dead` every millisecond from `t0`; the time it first held.
async fn time_until(t0: Instant, mut dead: impl FnMut() -> bool) -> Option<f64> {
    loop {
        if dead() {
            return Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        if t0.elapsed() > GIVE_UP {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Manager {
    /// Run the kill drill: start a session with live parts, kill it,
    /// report time-to-dead of each part. The session is always gone
    /// afterwards, whatever failed.
    pub async fn drill_kill(
        self: &Arc<Self>,
        human: Option<String>,
        profile: Option<String>,
    ) -> Result<DrillReport> {
        let info = self
            .create(CreateSession {
                task: "drill-kill".into(),
                human,
                profile,
                timebox: Some("5m".into()),
                drill: true,
                ..CreateSession::default()
            })
            .await?;
        let id = info.id.clone();
        let prepared = self.drill_prepare(&id).await;
        let (live, before) = match prepared {
            Ok(x) => x,
            Err(e) => {
                let _ = self
                    .destroy(
                        &id,
                        super::DestroyMode::Kill,
                        "kill drill could not prepare",
                    )
                    .await;
                return Err(e);
            }
        };
        let counter = live
            .egress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|c| c.connection_counter());
        let cgroup = live.sandbox.cgroup().clone();
        let dir = live.sandbox.session_dir().to_path_buf();
        drop(live);

        let t0 = Instant::now();
        let me = self.clone();
        let target = KillTarget::Session(id.clone());
        let kill = tokio::spawn(async move {
            me.kill_where(&target, "kill drill").await;
            t0.elapsed().as_secs_f64() * 1e3
        });
        let processes = time_until(t0, || cgroup.pids().is_empty());
        let connections = time_until(t0, || {
            counter.as_ref().is_none_or(|c| c.open_connections() == 0)
        });
        let db = self.db.clone();
        let sid = id.clone();
        let credentials = async move {
            loop {
                let sid = sid.clone();
                let all_revoked = crate::secrets::list(&db, &sid)
                    .await
                    .map(|l| !l.is_empty() && l.iter().all(|c| c.state != "active"))
                    .unwrap_or(false);
                if all_revoked {
                    return Some(t0.elapsed().as_secs_f64() * 1e3);
                }
                if t0.elapsed() > GIVE_UP {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let sandbox = time_until(t0, || !dir.exists());
        let (p, c, k, s) = tokio::join!(processes, connections, credentials, sandbox);
        let kill_ms = kill
            .await
            .map_err(|e| Error::internal(format!("kill drill: the kill task failed: {e}")))?;
        let parts = vec![
            DrillPart {
                part: "processes",
                live_before: before.0,
                dead_ms: p,
            },
            DrillPart {
                part: "connections",
                live_before: before.1,
                dead_ms: c,
            },
            DrillPart {
                part: "credentials",
                live_before: before.2,
                dead_ms: k,
            },
            DrillPart {
                part: "sandbox",
                live_before: 1,
                dead_ms: s,
            },
        ];
        let target_ms = TARGET.as_millis() as u64;
        let passed = parts
            .iter()
            .all(|p| p.dead_ms.is_some_and(|ms| ms <= target_ms as f64));
        let report = DrillReport {
            session: id.to_string(),
            parts,
            kill_ms,
            target_ms,
            passed,
        };
        let ev = session_event(
            &info,
            "drill.kill",
            if passed {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        )
        .rule("drill:kill")
        .details(serde_json::to_value(&report).unwrap_or_default());
        self.journal(ev).await;
        Ok(report)
    }

    /// Make the drill session's parts live: a process holding
    /// [`CONNECTIONS`] proxy connections open, and its credential active.
    /// Returns the session and how many of (processes, connections,
    /// credentials) are live.
    async fn drill_prepare(
        self: &Arc<Self>,
        id: &brig_core::SessionId,
    ) -> Result<(Arc<super::Live>, (usize, usize, usize))> {
        let live = self
            .live_table()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::internal("kill drill: the session is not live"))?;
        // bash's /dev/tcp: two streams to the in-sandbox forwarder, each
        // one a connection on the session's proxy channel, held by sleep.
        let script = "exec 3<>/dev/tcp/127.0.0.1/3128 4<>/dev/tcp/127.0.0.1/3128 && echo up && exec sleep 600";
        let (_ctl, mut rx) = self
            .exec(
                id,
                ExecRequest {
                    argv: vec!["bash".into(), "-c".into(), script.into()],
                    ..ExecRequest::default()
                },
            )
            .await?;
        let not_ready = |what: &str| {
            Error::new(ErrorKind::GuardUnavailable, format!("kill drill: {what}"))
                .hint("the drill needs bash in the image and the session's egress channel; see `brig doctor`")
        };
        let up = tokio::time::timeout(Duration::from_secs(10), async {
            let mut out = Vec::new();
            while let Some(m) = rx.recv().await {
                match m {
                    ExecOut::Stdout(b) => {
                        out.extend_from_slice(&b);
                        if out.windows(2).any(|w| w == b"up") {
                            return Ok(());
                        }
                    }
                    ExecOut::Exited(s) => return Err(format!("the holder exited early ({s:?})")),
                    ExecOut::SpawnFailed(e) => {
                        return Err(format!("the holder did not start: {e}"))
                    }
                    _ => {}
                }
            }
            Err("the holder's output ended".to_string())
        })
        .await
        .map_err(|_| not_ready("the connection holder did not come up within 10 s"))?;
        up.map_err(|e| not_ready(&e))?;
        // Keep draining its output so the exec never blocks.
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let deadline = Instant::now() + Duration::from_secs(5);
        let open = || {
            live.egress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(0, |c| c.open_connections())
        };
        while open() < CONNECTIONS {
            if Instant::now() > deadline {
                return Err(not_ready(&format!(
                    "{} of {CONNECTIONS} proxy connections opened",
                    open()
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let creds = crate::secrets::list(&self.db, id)
            .await?
            .iter()
            .filter(|c| c.state == "active")
            .count();
        if creds == 0 {
            return Err(not_ready("the drill credential is not active"));
        }
        let procs = live.sandbox.cgroup().pids().len();
        let conns = open();
        Ok((live, (procs, conns, creds)))
    }
}
