//! Human in the loop (issue 7; docs/POLICY.md "Approvals"): when policy
//! says an action needs approval, it waits here. A request is made (or the
//! open one reused), journaled and announced on the webhook; a standing
//! rule may approve it at once; otherwise a human holding one of the roles
//! approves or denies it (`brig approve ID`, `brig deny ID`), which policy
//! checks too (`approval.grant`: the role, no self-approval). The decision
//! is atomic in the store, so of two approvers only one wins; a request of
//! a session that ended is cancelled, and a pending one expires.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use brig_core::event::{now_rfc3339, Event, Outcome};
use brig_core::session::SessionInfo;
use brig_core::units::parse_duration;
use brig_core::{Error, ErrorKind, Result};
use brig_store::approvals::{ApprovalRecord, Decision as StoreDecision};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::manager::{session_event, Db};

/// `[approvals]` of brig.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// How long an action waits for a decision before it fails (the
    /// request stays pending: retry once approved).
    pub wait: String,
    /// A pending request expires this long after it was made.
    pub expires: String,
    /// How long an approval holds when the approver gives no `--for`.
    pub default_for: String,
    /// The longest `--for`.
    pub max_for: String,
    /// Announce requests and decisions here (a chat bot relays them).
    pub webhook: Option<WebhookConfig>,
    /// Standing rules: requests they match are approved at once, recorded
    /// as decided by `rule:<name>`.
    pub standing: BTreeMap<String, StandingRule>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            wait: "5m".into(),
            expires: "1h".into(),
            default_for: "30m".into(),
            max_for: "8h".into(),
            webhook: None,
            standing: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that gets one JSON POST per request and
    /// per decision.
    pub url: String,
    /// A file holding the HMAC-SHA256 key the body is signed with
    /// (`X-Brig-Signature: sha256=<hex>`), mode 0600.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandingRule {
    /// The capability it approves (`migration`, `iac`, ...; the policy's
    /// sensitivity label).
    pub capability: String,
    /// Only this action (`exec`, `git.push`, ...).
    #[serde(default)]
    pub action: Option<String>,
    /// Only tasks with this prefix (`OPS-`).
    #[serde(default)]
    pub task_prefix: Option<String>,
    /// The roles the approval counts as.
    pub roles: Vec<String>,
    /// How long the approval holds (default `default_for`).
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
}

/// The parsed durations.
#[derive(Clone, Debug)]
struct Times {
    wait: Duration,
    expires: Duration,
    default_for: Duration,
    max_for: Duration,
}

impl ApprovalsConfig {
    /// Checked at load: every duration parses, the webhook URL is http(s).
    pub fn check(&self) -> Result<()> {
        self.times()?;
        for (name, r) in &self.standing {
            if let Some(f) = &r.for_ {
                parse_duration(f)
                    .map_err(|e| e.context(format!("[approvals.standing.{name}] for")))?;
            }
            if r.roles.is_empty() {
                return Err(Error::invalid(format!(
                    "[approvals.standing.{name}] needs roles (what the approval counts as)"
                )));
            }
        }
        if let Some(w) = &self.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(Error::invalid(format!(
                    "[approvals.webhook] url {:?} is not an http(s) URL",
                    w.url
                )));
            }
        }
        Ok(())
    }

    fn times(&self) -> Result<Times> {
        let d =
            |k: &str, v: &str| parse_duration(v).map_err(|e| e.context(format!("[approvals] {k}")));
        Ok(Times {
            wait: d("wait", &self.wait)?,
            expires: d("expires", &self.expires)?,
            default_for: d("default_for", &self.default_for)?,
            max_for: d("max_for", &self.max_for)?,
        })
    }
}

/// A human's approval or denial of one request.
#[derive(Clone, Debug)]
pub struct HumanDecision {
    /// The approver's principal id.
    pub by: String,
    pub approve: bool,
    /// How long an approval holds (default `[approvals] default_for`).
    pub for_: Option<Duration>,
    pub note: Option<String>,
    /// The roles it counts as (those asked for that the approver holds).
    pub roles: Vec<String>,
}

/// What an action needs approval for.
#[derive(Clone, Debug)]
pub struct Ask {
    pub action: String,
    pub resource: String,
    pub capability: String,
    pub roles: Vec<String>,
    pub policies: Vec<String>,
    pub reason: String,
}

pub struct Approvals {
    db: Db,
    cfg: ApprovalsConfig,
    times: Times,
    /// Bumped on every decision: waiters re-read their request.
    changed: watch::Sender<u64>,
    http: Option<crate::webhook::Webhook>,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn after(d: Duration) -> String {
    rfc3339(time::OffsetDateTime::now_utc() + d)
}

fn new_id() -> String {
    use rand::Rng;
    let r: u64 = rand::thread_rng().gen();
    format!("apr-{:012x}", r & 0xffff_ffff_ffff)
}

impl Approvals {
    pub fn new(db: Db, cfg: &ApprovalsConfig) -> Result<Approvals> {
        let times = cfg.times()?;
        let http = match &cfg.webhook {
            Some(w) => Some(crate::webhook::Webhook::new(w)?),
            None => None,
        };
        Ok(Approvals {
            db,
            cfg: cfg.clone(),
            times,
            changed: watch::channel(0).0,
            http,
        })
    }

    /// How long an action waits.
    pub fn wait(&self) -> Duration {
        self.times.wait
    }

    fn event(
        &self,
        info: Option<&SessionInfo>,
        action: &str,
        outcome: Outcome,
        rec: &ApprovalRecord,
    ) -> Event {
        let mut ev = match info {
            Some(i) => session_event(i, action, outcome),
            None => {
                let mut e = Event::new(action, outcome);
                e.session = Some(rec.session.clone());
                e.agent = Some(format!("agent:{}", rec.session));
                e.task = Some(rec.task.clone());
                e
            }
        };
        ev.rule = rec.policies.first().cloned();
        ev.details(serde_json::to_value(rec).unwrap_or_default())
    }

    fn announce(&self, what: &str, rec: &ApprovalRecord) {
        if let Some(h) = &self.http {
            // The resource is a command line or a host: it leaves brig only
            // redacted, as the store keeps it.
            let rec = serde_json::to_value(rec).unwrap_or_default();
            let rec = self.db.store().current_redactor().redact_value(&rec);
            h.send(serde_json::json!({"event": what, "approval": rec}));
        }
    }

    /// The session's approval for exactly this that holds now.
    pub async fn held(&self, info: &SessionInfo, ask: &Ask) -> Result<Option<ApprovalRecord>> {
        let (id, a) = (info.id.clone(), ask.clone());
        let now = now_rfc3339();
        let open = self
            .db
            .run(move |s| s.open_approval(&id, &a.action, &a.resource, &a.capability, &now))
            .await?;
        Ok(open.filter(|r| r.state == "approved"))
    }

    /// The pending request for this (made now if there is none), or an
    /// approval a standing rule gave at once.
    pub async fn request(&self, info: &SessionInfo, ask: &Ask) -> Result<ApprovalRecord> {
        let (id, a) = (info.id.clone(), ask.clone());
        let now = now_rfc3339();
        if let Some(open) = self
            .db
            .run(move |s| s.open_approval(&id, &a.action, &a.resource, &a.capability, &now))
            .await?
        {
            return Ok(open);
        }
        let plan = {
            let id = info.id.clone();
            self.db
                .run(move |s| s.plans(&id))
                .await?
                .last()
                .and_then(|p| p["id"].as_str().map(str::to_string))
        };
        let rec = ApprovalRecord {
            id: new_id(),
            session: info.id.to_string(),
            human: info.human.clone(),
            task: info.task.to_string(),
            action: ask.action.clone(),
            resource: ask.resource.clone(),
            capability: ask.capability.clone(),
            roles: ask.roles.clone(),
            policies: ask.policies.clone(),
            reason: ask.reason.clone(),
            state: "pending".into(),
            requested_at: now_rfc3339(),
            expires_at: after(self.times.expires),
            decided_by: None,
            decided_at: None,
            valid_until: None,
            note: None,
            plan,
        };
        let ev = self.event(Some(info), "approval.request", Outcome::Info, &rec);
        let r2 = rec.clone();
        self.db.write(move |s| s.add_approval(&r2, &ev)).await?;
        self.announce("approval.request", &rec);
        // A standing rule that matches approves it at once.
        let rule = self.cfg.standing.iter().find(|(_, r)| {
            r.capability == ask.capability
                && r.action.as_ref().is_none_or(|a| *a == ask.action)
                && r.task_prefix
                    .as_ref()
                    .is_none_or(|p| info.task.as_str().starts_with(p.as_str()))
                && r.roles.iter().any(|x| ask.roles.contains(x))
        });
        if let Some((name, r)) = rule {
            let for_ = r
                .for_
                .as_deref()
                .and_then(|f| parse_duration(f).ok())
                .unwrap_or(self.times.default_for);
            let d = StoreDecision {
                state: "approved",
                by: format!("rule:{name}"),
                at: now_rfc3339(),
                valid_until: Some(after(for_)),
                note: Some(format!(
                    "standing rule {name}: roles {}",
                    r.roles.join(", ")
                )),
            };
            if let Some(done) = self.record_decision(Some(info), &rec.id, d).await? {
                return Ok(done);
            }
        }
        Ok(rec)
    }

    async fn record_decision(
        &self,
        info: Option<&SessionInfo>,
        id: &str,
        d: StoreDecision,
    ) -> Result<Option<ApprovalRecord>> {
        let action = match d.state {
            "approved" => "approval.grant",
            "denied" => "approval.deny",
            "expired" => "approval.expire",
            _ => "approval.cancel",
        };
        let outcome = if d.state == "approved" {
            Outcome::Success
        } else {
            Outcome::Denied
        };
        let cur = {
            let id = id.to_string();
            self.db.run(move |s| s.approval(&id)).await?
        };
        let Some(mut preview) = cur else {
            return Ok(None);
        };
        preview.state = d.state.to_string();
        preview.decided_by = Some(d.by.clone());
        preview.valid_until = d.valid_until.clone();
        preview.note = d.note.clone();
        let mut ev = self.event(info, action, outcome, &preview);
        if let Some(h) = d.by.strip_prefix("human:") {
            ev.human = Some(h.to_string());
        }
        let id2 = id.to_string();
        let done = self
            .db
            .write(move |s| s.decide_approval(&id2, &d, &ev))
            .await?;
        if let Some(rec) = &done {
            self.changed.send_modify(|n| *n += 1);
            self.announce(action, rec);
        }
        Ok(done)
    }

    /// Wait until the request is decided, or `wait` passes: the record as
    /// it is then.
    pub async fn wait_for(&self, id: &str, wait: Duration) -> Result<ApprovalRecord> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let rec = {
                let id = id.to_string();
                self.db.run(move |s| s.approval(&id)).await?
            }
            .ok_or_else(|| Error::not_found(format!("approval {id} does not exist")))?;
            if rec.state != "pending" {
                return Ok(rec);
            }
            if rec.expires_at <= now_rfc3339() {
                self.expire(&rec).await?;
                continue;
            }
            // Wake at the request's expiry too, not only on a decision.
            let expiry = time::OffsetDateTime::parse(
                &rec.expires_at,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
            .map(|t| {
                let left = (t - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
                tokio::time::Instant::now()
                    + Duration::from_millis(left.whole_milliseconds().max(0) as u64 + 5)
            });
            let until = expiry.map_or(deadline, |e| e.min(deadline));
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                Err(_) if until < deadline => {}
                Ok(Err(_)) | Err(_) => return Ok(rec),
            }
        }
    }

    async fn expire(&self, rec: &ApprovalRecord) -> Result<()> {
        let d = StoreDecision {
            state: "expired",
            by: "brig".into(),
            at: now_rfc3339(),
            valid_until: None,
            note: Some("nobody decided before it expired".into()),
        };
        self.record_decision(None, &rec.id, d).await.map(|_| ())
    }

    /// Expire every pending request past its time (the reaper calls this).
    pub async fn expire_due(&self) {
        let due = self
            .db
            .run(|s| s.approvals(Some("pending"), None))
            .await
            .unwrap_or_default();
        let now = now_rfc3339();
        for r in due.iter().filter(|r| r.expires_at <= now) {
            if let Err(e) = self.expire(r).await {
                tracing::warn!(approval = %r.id, error = %e, "could not expire an approval request");
            }
        }
    }

    /// A human's decision. `live`: whether the request's session still
    /// runs (an approval for a killed session is refused). The caller has
    /// already been allowed by policy (`approval.grant`).
    pub async fn decide(&self, id: &str, h: HumanDecision, live: bool) -> Result<ApprovalRecord> {
        let HumanDecision {
            by,
            approve,
            for_,
            note,
            roles,
        } = h;
        let rec = {
            let id = id.to_string();
            self.db.run(move |s| s.approval(&id)).await?
        }
        .ok_or_else(|| {
            Error::not_found(format!("approval {id} does not exist"))
                .hint("see `brig approvals list`")
        })?;
        if rec.state != "pending" {
            return Err(already(&rec));
        }
        if !live {
            let d = StoreDecision {
                state: "cancelled",
                by: "brig".into(),
                at: now_rfc3339(),
                valid_until: None,
                note: Some("its session ended".into()),
            };
            self.record_decision(None, id, d).await?;
            return Err(Error::conflict(format!(
                "approval {id} is for session {}, which has ended: nothing to approve",
                rec.session
            )));
        }
        if approve && rec.expires_at <= now_rfc3339() {
            self.expire(&rec).await?;
            return Err(
                Error::conflict(format!("approval {id} expired at {}", rec.expires_at))
                    .hint("the agent's next attempt makes a new request"),
            );
        }
        let for_ = for_.unwrap_or(self.times.default_for);
        if for_ > self.times.max_for {
            return Err(Error::invalid(format!(
                "--for {} is longer than [approvals] max_for ({})",
                brig_core::units::format_duration(for_),
                self.cfg.max_for
            )));
        }
        let d = StoreDecision {
            state: if approve { "approved" } else { "denied" },
            by: format!("human:{by}"),
            at: now_rfc3339(),
            valid_until: approve.then(|| after(for_)),
            note: note.or_else(|| approve.then(|| format!("as {}", roles.join(", ")))),
        };
        match self.record_decision(None, id, d).await? {
            Some(r) => Ok(r),
            None => {
                let now = {
                    let id = id.to_string();
                    self.db.run(move |s| s.approval(&id)).await?
                };
                Err(match now {
                    Some(r) => already(&r),
                    None => Error::not_found(format!("approval {id} does not exist")),
                })
            }
        }
    }

    /// The session ended: its pending requests are cancelled.
    pub async fn cancel_session(&self, info: &SessionInfo) {
        let id = info.id.clone();
        let pending = self
            .db
            .run(move |s| s.approvals(Some("pending"), Some(&id)))
            .await
            .unwrap_or_default();
        for r in pending {
            let d = StoreDecision {
                state: "cancelled",
                by: "brig".into(),
                at: now_rfc3339(),
                valid_until: None,
                note: Some("its session ended".into()),
            };
            let _ = self.record_decision(Some(info), &r.id, d).await;
        }
    }

    pub async fn list(&self, state: Option<String>) -> Result<Vec<ApprovalRecord>> {
        self.db
            .run(move |s| s.approvals(state.as_deref(), None))
            .await
    }

    pub async fn get(&self, id: &str) -> Result<ApprovalRecord> {
        let id2 = id.to_string();
        self.db
            .run(move |s| s.approval(&id2))
            .await?
            .ok_or_else(|| {
                Error::not_found(format!("approval {id} does not exist"))
                    .hint("see `brig approvals list`")
            })
    }
}

fn already(r: &ApprovalRecord) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "approval {} is already {}{}",
            r.id,
            r.state,
            r.decided_by
                .as_deref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default()
        ),
    )
}

/// Shared by the exec and push paths: what the waiting agent is told.
pub fn waiting_message(rec: &ApprovalRecord) -> String {
    format!(
        "brig: {} needs approval {} ({}): {} — a human with role {} runs `brig approve {}` (or `brig deny {} --reason ...`); expires {}",
        rec.action,
        rec.id,
        rec.capability,
        rec.reason,
        rec.roles.join(" or "),
        rec.id,
        rec.id,
        rec.expires_at
    )
}

/// Keep `Arc` users simple.
pub type Shared = Arc<Approvals>;
