//! Approval requests and plans (issue 7). The store keeps them and makes a
//! decision atomic; what needs approval, who may give it and what an agent
//! sees while it waits are brig-server's.

use crate::Masks;
use brig_core::event::Event;
use brig_core::{Error, Result, SessionId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::writer::Tx;
use crate::{append_events_on, db_err, Store};

/// One approval request, as stored and as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRecord {
    pub id: String,
    pub session: String,
    /// The human the session belongs to (who asked, through the agent).
    pub human: String,
    pub task: String,
    /// The action held back (`exec`, `git.push`, ...).
    pub action: String,
    /// What it acts on (the command line, the branch, ...).
    pub resource: String,
    /// The sensitive capability that needs the approval (`migration`, ...).
    pub capability: String,
    /// Roles of which one is needed to approve.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The policies that asked for the approval.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Why, in words (the policies' reasons).
    #[serde(default)]
    pub reason: String,
    /// `pending`, `approved`, `denied`, `expired`, `cancelled`.
    pub state: String,
    pub requested_at: String,
    /// A pending request expires at this time.
    pub expires_at: String,
    /// `human:<id>` or `rule:<standing rule>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// An approval holds until then (`brig approve --for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// The denial's reason, or the approver's note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The session's latest plan when the request was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// A decision to record: the state it moves to and by whom.
#[derive(Clone, Debug)]
pub struct Decision {
    pub state: &'static str,
    pub by: String,
    pub at: String,
    pub valid_until: Option<String>,
    pub note: Option<String>,
}

fn parse(text: String) -> Result<ApprovalRecord> {
    serde_json::from_str(&text).map_err(|e| Error::internal(format!("approval record: {e}")))
}

fn add_approval_on(
    conn: &Connection,
    red: &Masks,
    rec: &ApprovalRecord,
    ev: &Event,
) -> Result<Vec<i64>> {
    let stored = red.redact_value(&serde_json::to_value(rec).unwrap_or_default());
    conn.execute(
        "INSERT INTO approvals (id, session, human, task, action, resource, capability, state,
            requested_at, expires_at, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            rec.id,
            rec.session,
            rec.human,
            rec.task,
            rec.action,
            rec.resource,
            rec.capability,
            rec.state,
            rec.requested_at,
            rec.expires_at,
            stored.to_string()
        ],
    )
    .map_err(db_err("record approval request"))?;
    append_events_on(conn, red, std::slice::from_ref(ev))
}

fn decide_approval_on(
    conn: &Connection,
    red: &Masks,
    id: &str,
    d: &Decision,
    ev: &Event,
) -> Result<Option<(ApprovalRecord, Vec<i64>)>> {
    let cur: Option<String> = conn
        .query_row(
            "SELECT record FROM approvals WHERE id = ?1 AND state = 'pending'",
            [id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err("read approval"))?;
    let Some(cur) = cur else {
        return Ok(None);
    };
    let mut rec = parse(cur)?;
    rec.state = d.state.to_string();
    rec.decided_by = Some(d.by.clone());
    rec.decided_at = Some(d.at.clone());
    rec.valid_until = d.valid_until.clone();
    rec.note = d.note.clone();
    let stored = red.redact_value(&serde_json::to_value(&rec).unwrap_or_default());
    conn.execute(
        "UPDATE approvals SET state = ?2, decided_by = ?3, decided_at = ?4, valid_until = ?5,
            record = ?6 WHERE id = ?1 AND state = 'pending'",
        params![id, d.state, d.by, d.at, d.valid_until, stored.to_string()],
    )
    .map_err(db_err("decide approval"))?;
    let seqs = append_events_on(conn, red, std::slice::from_ref(ev))?;
    Ok(Some((rec, seqs)))
}

fn add_plan_on(
    conn: &Connection,
    red: &Masks,
    id: &str,
    session: &SessionId,
    at: &str,
    plan: &serde_json::Value,
    ev: &Event,
) -> Result<Vec<i64>> {
    conn.execute(
        "INSERT INTO plans (id, session, submitted_at, record) VALUES (?1, ?2, ?3, ?4)",
        params![id, session.as_str(), at, red.redact_value(plan).to_string()],
    )
    .map_err(db_err("record plan"))?;
    append_events_on(conn, red, std::slice::from_ref(ev))
}

impl Tx<'_> {
    /// See [`Store::add_approval`].
    pub fn add_approval(&self, rec: &ApprovalRecord, ev: &Event) -> Result<()> {
        let seqs = add_approval_on(self.conn, self.red, rec, ev)?;
        self.appended(&seqs);
        Ok(())
    }

    /// See [`Store::decide_approval`].
    pub fn decide_approval(
        &self,
        id: &str,
        d: &Decision,
        ev: &Event,
    ) -> Result<Option<ApprovalRecord>> {
        Ok(
            decide_approval_on(self.conn, self.red, id, d, ev)?.map(|(rec, seqs)| {
                self.appended(&seqs);
                rec
            }),
        )
    }

    /// See [`Store::add_plan`].
    pub fn add_plan(
        &self,
        id: &str,
        session: &SessionId,
        at: &str,
        plan: &serde_json::Value,
        ev: &Event,
    ) -> Result<()> {
        let seqs = add_plan_on(self.conn, self.red, id, session, at, plan, ev)?;
        self.appended(&seqs);
        Ok(())
    }
}

impl Store {
    /// A new pending request and its `approval.request` event.
    pub fn add_approval(&self, rec: &ApprovalRecord, ev: &Event) -> Result<()> {
        self.in_tx("approval request", |c, red| {
            add_approval_on(c, red, rec, ev).map(|_| ())
        })
    }

    pub fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>> {
        let conn = self.conn();
        conn.query_row("SELECT record FROM approvals WHERE id = ?1", [id], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(db_err("read approval"))?
        .map(parse)
        .transpose()
    }

    /// Requests in `state` (all when `None`), oldest first; of one session
    /// when given.
    pub fn approvals(
        &self,
        state: Option<&str>,
        session: Option<&SessionId>,
    ) -> Result<Vec<ApprovalRecord>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT record FROM approvals WHERE (?1 IS NULL OR state = ?1)
                 AND (?2 IS NULL OR session = ?2) ORDER BY requested_at, id",
            )
            .map_err(db_err("list approvals"))?;
        let rows = st
            .query_map(params![state, session.map(|s| s.as_str())], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db_err("list approvals"))?;
        rows.map(|r| r.map_err(db_err("list approvals")).and_then(parse))
            .collect()
    }

    /// The session's request for exactly this action on this resource
    /// that is pending, or approved and still valid at `now`.
    pub fn open_approval(
        &self,
        session: &SessionId,
        action: &str,
        resource: &str,
        capability: &str,
        now: &str,
    ) -> Result<Option<ApprovalRecord>> {
        let conn = self.conn();
        conn.query_row(
            "SELECT record FROM approvals WHERE session = ?1 AND action = ?2 AND resource = ?3
                AND capability = ?4
                AND ((state = 'pending' AND expires_at > ?5)
                     OR (state = 'approved' AND valid_until > ?5))
             ORDER BY requested_at DESC LIMIT 1",
            params![session.as_str(), action, resource, capability, now],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(db_err("find approval"))?
        .map(parse)
        .transpose()
    }

    /// Decide a pending request, with its event, in one transaction.
    /// `Ok(None)`: it was not pending any more (someone else decided it,
    /// it expired, or its session ended) and nothing was written.
    pub fn decide_approval(
        &self,
        id: &str,
        d: &Decision,
        ev: &Event,
    ) -> Result<Option<ApprovalRecord>> {
        self.in_tx("approval decision", |c, red| {
            decide_approval_on(c, red, id, d, ev).map(|r| r.map(|(rec, _)| rec))
        })
    }

    /// A submitted plan and its `plan.submit` event.
    pub fn add_plan(
        &self,
        id: &str,
        session: &SessionId,
        at: &str,
        plan: &serde_json::Value,
        ev: &Event,
    ) -> Result<()> {
        self.in_tx("plan", |c, red| {
            add_plan_on(c, red, id, session, at, plan, ev).map(|_| ())
        })
    }

    fn in_tx<T>(&self, what: &str, f: impl FnOnce(&Connection, &Masks) -> Result<T>) -> Result<T> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin"))?;
        let out = f(&tx, &red)?;
        tx.commit().map_err(|e| db_err(what)(e))?;
        Ok(out)
    }

    /// A session's plans, oldest first.
    pub fn plans(&self, session: &SessionId) -> Result<Vec<serde_json::Value>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT record FROM plans WHERE session = ?1 ORDER BY seq")
            .map_err(db_err("read plans"))?;
        let rows = st
            .query_map([session.as_str()], |r| r.get::<_, String>(0))
            .map_err(db_err("read plans"))?;
        rows.map(|r| {
            r.map_err(db_err("read plans")).and_then(|t| {
                serde_json::from_str(&t).map_err(|e| Error::internal(format!("plan record: {e}")))
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_core::event::Outcome;
    use brig_core::session::{Limits, SessionInfo, SessionState};

    fn session() -> SessionInfo {
        let id = SessionId::generate();
        SessionInfo {
            principal: id.principal(),
            id,
            human: "ada".into(),
            task: "T-1".parse().unwrap(),
            profile: "privileged".into(),
            runtime: "native".into(),
            image: "host".into(),
            image_digest: "sha256:00".into(),
            state: SessionState::Running,
            limits: Limits::default(),
            repo: None,
            created_at: "2026-12-01T10:00:00Z".into(),
            started_at: Some("2026-12-01T10:00:00Z".into()),
            ended_at: None,
            end_reason: None,
            layers: vec![],
            exec_count: 0,
            last_activity_at: None,
        }
    }

    fn request(info: &SessionInfo, id: &str) -> ApprovalRecord {
        ApprovalRecord {
            id: id.into(),
            session: info.id.to_string(),
            human: "ada".into(),
            task: "T-1".into(),
            action: "exec".into(),
            resource: "alembic upgrade head".into(),
            capability: "migration".into(),
            roles: vec!["db-approver".into()],
            policies: vec!["privileged.migration".into()],
            reason: "migrations need a DB approver".into(),
            state: "pending".into(),
            requested_at: "2026-12-01T10:01:00Z".into(),
            expires_at: "2026-12-01T11:01:00Z".into(),
            decided_by: None,
            decided_at: None,
            valid_until: None,
            note: None,
            plan: None,
        }
    }

    #[test]
    fn a_request_is_decided_once_and_found_while_valid() {
        let s = Store::open_in_memory().unwrap();
        let info = session();
        s.insert_session(&info, "created").unwrap();
        let ev = Event::new("approval.request", Outcome::Info);
        s.add_approval(&request(&info, "apr-1"), &ev).unwrap();
        let now = "2026-12-01T10:02:00Z";
        let open = s
            .open_approval(&info.id, "exec", "alembic upgrade head", "migration", now)
            .unwrap()
            .unwrap();
        assert_eq!(open.state, "pending");
        assert_eq!(s.approvals(Some("pending"), None).unwrap().len(), 1);

        let approve = Decision {
            state: "approved",
            by: "human:bob".into(),
            at: now.into(),
            valid_until: Some("2026-12-01T10:32:00Z".into()),
            note: None,
        };
        let deny = Decision {
            state: "denied",
            by: "human:carol".into(),
            at: now.into(),
            valid_until: None,
            note: Some("not today".into()),
        };
        let ev = Event::new("approval.grant", Outcome::Success);
        let won = s.decide_approval("apr-1", &approve, &ev).unwrap().unwrap();
        assert_eq!(won.decided_by.as_deref(), Some("human:bob"));
        // The second approver finds it decided: nothing written.
        assert!(s.decide_approval("apr-1", &deny, &ev).unwrap().is_none());
        assert_eq!(s.approval("apr-1").unwrap().unwrap().state, "approved");
        // Valid until its time, then not.
        assert!(s
            .open_approval(
                &info.id,
                "exec",
                "alembic upgrade head",
                "migration",
                "2026-12-01T10:31:00Z"
            )
            .unwrap()
            .is_some());
        assert!(s
            .open_approval(
                &info.id,
                "exec",
                "alembic upgrade head",
                "migration",
                "2026-12-01T10:33:00Z"
            )
            .unwrap()
            .is_none());
        // Another command is another request.
        assert!(s
            .open_approval(&info.id, "exec", "alembic downgrade", "migration", now)
            .unwrap()
            .is_none());
        assert!(s.decide_approval("apr-404", &deny, &ev).unwrap().is_none());
    }

    #[test]
    fn plans_are_kept_in_order_and_redacted() {
        let s = Store::open_in_memory().unwrap();
        let info = session();
        s.insert_session(&info, "created").unwrap();
        let ev = Event::new("plan.submit", Outcome::Info);
        let p1 =
            serde_json::json!({"goal": "migrate", "steps": ["a"], "note": "AKIAIOSFODNN7EXAMPLE"});
        s.add_plan("pl-1", &info.id, "2026-12-01T10:00:00Z", &p1, &ev)
            .unwrap();
        let ev = Event::new("plan.submit", Outcome::Info);
        s.add_plan(
            "pl-2",
            &info.id,
            "2026-12-01T10:05:00Z",
            &serde_json::json!({"goal": "b"}),
            &ev,
        )
        .unwrap();
        let plans = s.plans(&info.id).unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[1]["goal"], "b");
        assert!(!plans[0].to_string().contains("AKIAIOSFODNN7EXAMPLE"));
    }
}
