//! The model gateway in the control plane (issue 8; docs/MODELS.md):
//! brig-model's gateway built from `[models]`, served to every session's
//! proxy channel as the local service `model.brig`, its upstream keys
//! fetched from `[secrets]` (and known to the redactor), its calls stored
//! and journaled as `model.call`, its budgets seeded from what is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use brig_core::event::{Event, Outcome};
use brig_core::{Result, SessionId};
use brig_model::{CallOutcome, Gateway, GatewayConfig, GatewayDeps, KeyRef, ModelCall, Scope};
use brig_secrets::config::Secrets;
use brig_store::usage::{ModelCallRow, UsageBy};
use tokio::sync::mpsc;

use crate::known_secrets::{Known, KnownSecrets};
use crate::manager::Db;

/// Calls queued for the store; past this a record is dropped (logged):
/// a runaway loop must not grow brig's memory.
const QUEUE: usize = 4096;
/// Most calls written in one transaction.
const BATCH: usize = 256;

/// `key = { source = "NAME", key = "..." }` of an upstream.
fn key_ref(k: &KeyRef) -> std::result::Result<(String, String), String> {
    let src = k.0.get("source").and_then(|v| v.as_str());
    let key = k.0.get("key").and_then(|v| v.as_str());
    match (src, key, k.0.as_object().map(|o| o.len())) {
        (Some(s), Some(k), Some(2)) => Ok((s.to_string(), k.to_string())),
        _ => Err(
            "key must be { source = \"<[secrets.sources] name>\", key = \"<key in it>\" }".into(),
        ),
    }
}

/// Checked at load: the gateway's own rules, and every upstream key names
/// a configured secret source.
pub fn check_config(
    m: &GatewayConfig,
    secrets: &brig_secrets::SecretsConfig,
) -> std::result::Result<(), String> {
    m.validate().map_err(|e| e.to_string())?;
    for (name, u) in &m.upstreams {
        if let Some(k) = &u.key {
            let (src, _) = key_ref(k).map_err(|e| format!("[models.upstreams.{name}] {e}"))?;
            if !secrets.sources.contains_key(&src) {
                return Err(format!(
                    "[models.upstreams.{name}] key: no [secrets.sources.{src}] (the upstream's key comes from a secret source)"
                ));
            }
        }
    }
    Ok(())
}

/// Upstream keys from brig's secret sources. Every value fetched joins the
/// known secrets (masked everywhere, refused in what sessions send).
struct SecretKeys {
    secrets: Option<Arc<Secrets>>,
    known: Arc<KnownSecrets>,
    /// The value last registered per upstream: the redactor is rebuilt only
    /// when one changes, not on every request.
    registered: Mutex<HashMap<String, String>>,
}

impl brig_model::KeyProvider for SecretKeys {
    fn key<'a>(
        &'a self,
        upstream: &'a str,
        key: &'a KeyRef,
    ) -> brig_model::BoxFuture<'a, std::result::Result<Option<String>, String>> {
        Box::pin(async move {
            let (src, k) = key_ref(key)?;
            let secrets = self
                .secrets
                .as_ref()
                .ok_or_else(|| "[secrets] is not usable".to_string())?;
            let v = secrets
                .cache
                .get(&src, &k)
                .await
                .map_err(|e| e.to_string())?;
            let v = v
                .expose_str()
                .ok_or_else(|| format!("the key of upstream {upstream} is not UTF-8 text"))?
                .to_string();
            let changed = {
                let mut reg = self.registered.lock().unwrap_or_else(|p| p.into_inner());
                match reg.get(upstream) {
                    Some(old) if *old == v => false,
                    _ => {
                        reg.insert(upstream.to_string(), v.clone());
                        true
                    }
                }
            };
            if changed {
                self.known.set_owner(
                    &format!("model-upstream:{upstream}"),
                    vec![Known {
                        name: format!("model_upstream_{upstream}"),
                        value: v.clone(),
                        until_ms: None,
                    }],
                );
            }
            Ok(Some(v))
        })
    }
}

/// Build the gateway from `[models]`; its calls go to the store.
pub fn build(
    cfg: &GatewayConfig,
    db: &Db,
    secrets: Option<Arc<Secrets>>,
    known: Arc<KnownSecrets>,
) -> std::result::Result<Arc<Gateway>, String> {
    let store = db.store();
    let redactor: brig_model::RedactorFn = Arc::new(move || store.current_redactor());
    let (tx, rx) = mpsc::channel::<ModelCall>(QUEUE);
    let sink = Arc::new(CountingSink {
        tx,
        dropped: Default::default(),
    });
    let gw = Gateway::new(
        cfg.clone(),
        GatewayDeps {
            keys: Arc::new(SecretKeys {
                secrets,
                known,
                registered: Mutex::new(HashMap::new()),
            }),
            redactor,
            sink: sink.clone(),
        },
    )
    .map_err(|e| e.to_string())?;
    // Budgets go on from what is stored: a restart does not reset them.
    let store = db.store();
    for (by, scope) in [
        (UsageBy::User, Scope::Human),
        (UsageBy::Task, Scope::Task),
        (UsageBy::Session, Scope::Session),
    ] {
        match store.model_usage_totals(by) {
            Ok(totals) => {
                for t in totals {
                    gw.seed_usage(scope, &t.key, t.tokens, t.cost_usd);
                }
            }
            Err(e) => return Err(format!("reading stored model usage: {e}")),
        }
    }
    tokio::spawn(record(db.clone(), rx, sink));
    Ok(gw)
}

/// The gateway's sink: a bounded queue that never blocks a call; what does
/// not fit is counted, and the count journaled (`model.call_overflow`)
/// with the next batch — a lost record is never silent.
struct CountingSink {
    tx: mpsc::Sender<ModelCall>,
    dropped: std::sync::atomic::AtomicU64,
}

impl brig_model::CallSink for CountingSink {
    fn record(&self, call: ModelCall) {
        if self.tx.try_send(call).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("model call record dropped: the recorder's queue is full");
        }
    }
}

/// The journal's form of one call.
pub fn call_event(c: &ModelCall) -> Event {
    let outcome = match c.outcome {
        CallOutcome::Ok => Outcome::Success,
        CallOutcome::Denied => Outcome::Denied,
        _ => Outcome::Failure,
    };
    let mut e = Event::new("model.call", outcome);
    e.session = Some(c.session.clone());
    e.agent = Some(format!("agent:{}", c.session));
    e.human = c.human.clone();
    e.task = c.task.clone();
    e.rule = c.rule.clone();
    e.details(serde_json::json!({
        "call": c.id,
        "endpoint": c.endpoint,
        "model": c.model,
        "route": c.route,
        "upstream": c.upstream,
        "upstream_model": c.upstream_model,
        "attempts": c.attempts.len(),
        "status": c.status,
        "outcome": c.outcome,
        "stream": c.stream,
        "latency_ms": c.latency_ms,
        "ttfb_ms": c.ttfb_ms,
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "tokens_source": c.tokens_source,
        "cost_usd": c.cost_usd,
        "error": c.error,
    }))
}

fn row(c: &ModelCall) -> Option<ModelCallRow> {
    let session: SessionId = c.session.parse().ok()?;
    Some(ModelCallRow {
        id: c.id.clone(),
        session,
        human: c.human.clone(),
        task: c.task.clone(),
        at: c.time.clone(),
        model: c
            .upstream_model
            .clone()
            .or_else(|| c.model.clone())
            .unwrap_or_else(|| "-".into()),
        outcome: serde_json::to_value(c.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        input_tokens: c.input_tokens,
        output_tokens: c.output_tokens,
        cost_usd: c.cost_usd.unwrap_or(0.0),
        record: serde_json::to_value(c).unwrap_or_default(),
    })
}

/// Store and journal the gateway's calls, in batches.
async fn record(db: Db, mut rx: mpsc::Receiver<ModelCall>, sink: Arc<CountingSink>) {
    while let Some(first) = rx.recv().await {
        let dropped = sink.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            let ev = Event::new("model.call_overflow", Outcome::Failure)
                .rule("model.queue")
                .details(serde_json::json!({ "dropped": dropped }));
            if let Err(e) = db.write(move |s| s.append_event(&ev).map(|_| ())).await {
                tracing::error!(error = %e, dropped, "could not journal dropped model calls");
            }
        }
        let mut calls = vec![first];
        while calls.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => calls.push(c),
                Err(_) => break,
            }
        }
        let rows: Vec<(ModelCallRow, Event)> = calls
            .iter()
            .filter_map(|c| row(c).map(|r| (r, call_event(c))))
            .collect();
        if let Err(e) = db.write(move |s| s.add_model_calls(&rows)).await {
            tracing::error!(error = %e, "could not store model calls");
        }
    }
}

/// A session's captured calls (`brig model log`).
pub async fn log(db: &Db, id: &SessionId, limit: Option<u64>) -> Result<Vec<serde_json::Value>> {
    let id = id.clone();
    db.run(move |s| s.model_calls(&id, limit)).await
}

/// One line of the cost report: measured usage and what it costs, next to
/// the blueprint's cost model for the same sandbox-hours.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CostLine {
    #[serde(flatten)]
    pub usage: brig_store::usage::UsageRow,
    /// sandbox_hours x `[cost] sandbox_hour_usd`.
    pub sandbox_usd: f64,
    /// Model spend + sandbox cost.
    pub total_usd: f64,
    /// The blueprint's cost model for the same sandbox-hours:
    /// hours x (`sandbox_hour_usd` + `planned_model_usd_per_hour`).
    pub planned_usd: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CostReport {
    pub since: String,
    pub by: brig_store::usage::UsageBy,
    pub period: brig_store::usage::Period,
    pub cost_model: crate::config::CostConfig,
    pub lines: Vec<CostLine>,
    pub totals: CostTotals,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CostTotals {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub model_usd: f64,
    pub sandbox_hours: f64,
    pub sandbox_usd: f64,
    pub total_usd: f64,
    pub planned_usd: f64,
}

/// The cost report since `since` (RFC 3339; default: 30 days ago).
pub async fn cost_report(
    mgr: &crate::manager::Manager,
    since: Option<String>,
    by: UsageBy,
    period: brig_store::usage::Period,
) -> Result<CostReport> {
    use time::format_description::well_known::Rfc3339;
    let now = time::OffsetDateTime::now_utc();
    let since = match since {
        Some(s) => {
            time::OffsetDateTime::parse(&s, &Rfc3339).map_err(|_| {
                brig_core::Error::invalid(format!("since {s:?} is not an RFC 3339 time"))
                    .hint("e.g. since=2026-11-01T00:00:00Z (the CLI also takes an age: --since 7d)")
            })?;
            s
        }
        None => (now - time::Duration::days(30))
            .format(&Rfc3339)
            .unwrap_or_default(),
    };
    let now_s = now.format(&Rfc3339).unwrap_or_default();
    let since_c = since.clone();
    let rows = mgr
        .db()
        .run(move |s| s.usage_report(&since_c, &now_s, by, period))
        .await?;
    let cm = mgr.config().cost.clone();
    let mut totals = CostTotals::default();
    let lines: Vec<CostLine> = rows
        .into_iter()
        .map(|u| {
            let sandbox_usd = u.sandbox_hours * cm.sandbox_hour_usd;
            let planned_usd =
                u.sandbox_hours * (cm.sandbox_hour_usd + cm.planned_model_usd_per_hour);
            totals.calls += u.calls;
            totals.input_tokens += u.input_tokens;
            totals.output_tokens += u.output_tokens;
            totals.model_usd += u.cost_usd;
            totals.sandbox_hours += u.sandbox_hours;
            totals.sandbox_usd += sandbox_usd;
            totals.planned_usd += planned_usd;
            CostLine {
                total_usd: u.cost_usd + sandbox_usd,
                usage: u,
                sandbox_usd,
                planned_usd,
            }
        })
        .collect();
    totals.total_usd = totals.model_usd + totals.sandbox_usd;
    Ok(CostReport {
        since,
        by,
        period,
        cost_model: cm,
        lines,
        totals,
    })
}
