//! The model gateway's captured calls (issue 8) and what is added up from
//! them: the totals that seed the budgets at start, and the cost report
//! (tokens, spend and sandbox-hours per day or month, by human, task or
//! session).

use std::collections::BTreeMap;

use crate::Masks;
use brig_core::event::Event;
use brig_core::{Error, Result, SessionId};
use rusqlite::{params, Connection};
use serde::Serialize;

use crate::writer::Tx;
use crate::{append_events_on, db_err, Store};

/// One captured model call: the columns that are added up, and the whole
/// record (already redacted by the gateway; redacted again here).
#[derive(Clone, Debug)]
pub struct ModelCallRow {
    pub id: String,
    pub session: SessionId,
    pub human: Option<String>,
    pub task: Option<String>,
    /// RFC 3339 UTC.
    pub at: String,
    pub model: String,
    pub outcome: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub record: serde_json::Value,
}

/// What usage is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageBy {
    User,
    Task,
    Session,
}

impl UsageBy {
    pub fn parse(s: &str) -> Result<UsageBy> {
        match s {
            "user" | "human" => Ok(UsageBy::User),
            "task" => Ok(UsageBy::Task),
            "session" => Ok(UsageBy::Session),
            _ => Err(Error::invalid(format!("cannot group usage by {s:?}"))
                .hint("use --by user, --by task or --by session")),
        }
    }
    fn model_column(self) -> &'static str {
        match self {
            UsageBy::User => "human",
            UsageBy::Task => "task",
            UsageBy::Session => "session",
        }
    }
    fn session_column(self) -> &'static str {
        match self {
            UsageBy::User => "human",
            UsageBy::Task => "task",
            UsageBy::Session => "id",
        }
    }
}

/// Day (`2026-12-01`) or month (`2026-12`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    fn len(self) -> i64 {
        match self {
            Period::Day => 10,
            Period::Month => 7,
        }
    }
}

/// One line of the cost report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageRow {
    pub period: String,
    pub key: String,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub sandbox_hours: f64,
}

/// Total tokens and spend of one budget key.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageTotal {
    pub key: String,
    pub tokens: u64,
    pub cost_usd: f64,
}

fn add_model_calls_on(
    conn: &Connection,
    red: &Masks,
    rows: &[(ModelCallRow, Event)],
) -> Result<Vec<i64>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let mut st = conn
        .prepare_cached(
            "INSERT INTO model_calls (id, session, human, task, at, model, outcome,
                input_tokens, output_tokens, cost_usd, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .map_err(db_err("record model call"))?;
    for (r, _) in rows {
        let record = red.redact_value(&r.record);
        st.execute(params![
            r.id,
            r.session.as_str(),
            r.human,
            r.task,
            r.at,
            r.model,
            r.outcome,
            r.input_tokens as i64,
            r.output_tokens as i64,
            r.cost_usd,
            record.to_string()
        ])
        .map_err(db_err("record model call"))?;
    }
    let evs: Vec<Event> = rows.iter().map(|(_, e)| e.clone()).collect();
    append_events_on(conn, red, &evs)
}

impl Tx<'_> {
    /// See [`Store::add_model_calls`].
    pub fn add_model_calls(&self, rows: &[(ModelCallRow, Event)]) -> Result<()> {
        let seqs = add_model_calls_on(self.conn, self.red, rows)?;
        self.appended(&seqs);
        Ok(())
    }
}

impl Store {
    /// Captured calls with their `model.call` events, in one transaction.
    pub fn add_model_calls(&self, rows: &[(ModelCallRow, Event)]) -> Result<()> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin"))?;
        add_model_calls_on(&tx, &red, rows)?;
        tx.commit().map_err(db_err("commit model calls"))
    }

    /// A session's captured calls, oldest first (at most `limit`, the
    /// newest ones, when given).
    pub fn model_calls(
        &self,
        session: &SessionId,
        limit: Option<u64>,
    ) -> Result<Vec<serde_json::Value>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT record FROM (SELECT seq, record FROM model_calls WHERE session = ?1
                 ORDER BY seq DESC LIMIT ?2) ORDER BY seq",
            )
            .map_err(db_err("read model calls"))?;
        let limit = limit.map(|l| l.min(i64::MAX as u64) as i64).unwrap_or(-1);
        let rows = st
            .query_map(params![session.as_str(), limit], |r| r.get::<_, String>(0))
            .map_err(db_err("read model calls"))?;
        let mut out = vec![];
        for t in rows {
            let t = t.map_err(db_err("read model calls"))?;
            out.push(
                serde_json::from_str(&t)
                    .map_err(|e| Error::internal(format!("model call record: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Tokens and spend per key of `by` over every captured call (the
    /// budgets start from these, so a restart does not reset them).
    pub fn model_usage_totals(&self, by: UsageBy) -> Result<Vec<UsageTotal>> {
        let col = by.model_column();
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {col}, SUM(input_tokens + output_tokens), SUM(cost_usd) FROM model_calls
                 WHERE {col} IS NOT NULL GROUP BY {col}"
            ))
            .map_err(db_err("sum model usage"))?;
        let rows = st
            .query_map([], |r| {
                Ok(UsageTotal {
                    key: r.get(0)?,
                    tokens: r.get::<_, i64>(1)?.max(0) as u64,
                    cost_usd: r.get(2)?,
                })
            })
            .map_err(db_err("sum model usage"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db_err("sum model usage"))
    }

    /// The cost report: per period and key, model calls, tokens and spend
    /// (calls at or after `since`) and sandbox-hours (sessions started at
    /// or after `since`; a live one counts up to `now`).
    pub fn usage_report(
        &self,
        since: &str,
        now: &str,
        by: UsageBy,
        period: Period,
    ) -> Result<Vec<UsageRow>> {
        let len = period.len();
        let mut out: BTreeMap<(String, String), UsageRow> = BTreeMap::new();
        let conn = self.conn();
        let mcol = by.model_column();
        let mut st = conn
            .prepare(&format!(
                "SELECT substr(at, 1, ?2), COALESCE({mcol}, '-'), COUNT(*), SUM(input_tokens),
                    SUM(output_tokens), SUM(cost_usd)
                 FROM model_calls WHERE at >= ?1 GROUP BY 1, 2"
            ))
            .map_err(db_err("report model usage"))?;
        let rows = st
            .query_map(params![since, len], |r| {
                Ok(UsageRow {
                    period: r.get(0)?,
                    key: r.get(1)?,
                    calls: r.get::<_, i64>(2)?.max(0) as u64,
                    input_tokens: r.get::<_, i64>(3)?.max(0) as u64,
                    output_tokens: r.get::<_, i64>(4)?.max(0) as u64,
                    cost_usd: r.get(5)?,
                    sandbox_hours: 0.0,
                })
            })
            .map_err(db_err("report model usage"))?;
        for r in rows {
            let r = r.map_err(db_err("report model usage"))?;
            out.insert((r.period.clone(), r.key.clone()), r);
        }
        let scol = by.session_column();
        let mut st = conn
            .prepare(&format!(
                "SELECT substr(started_at, 1, ?2), {scol},
                    SUM((julianday(COALESCE(ended_at, ?3)) - julianday(started_at)) * 24.0)
                 FROM sessions WHERE started_at IS NOT NULL AND started_at >= ?1 GROUP BY 1, 2"
            ))
            .map_err(db_err("report sandbox hours"))?;
        let rows = st
            .query_map(params![since, len, now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
                ))
            })
            .map_err(db_err("report sandbox hours"))?;
        for r in rows {
            let (p, k, h) = r.map_err(db_err("report sandbox hours"))?;
            let e = out
                .entry((p.clone(), k.clone()))
                .or_insert_with(|| UsageRow {
                    period: p,
                    key: k,
                    ..UsageRow::default()
                });
            e.sandbox_hours += h.max(0.0);
        }
        Ok(out.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_core::event::Outcome;
    use brig_core::session::{Limits, SessionInfo, SessionState};

    fn session(human: &str, task: &str, started: &str, ended: Option<&str>) -> SessionInfo {
        let id = SessionId::generate();
        SessionInfo {
            principal: id.principal(),
            id,
            human: human.into(),
            task: task.parse().unwrap(),
            profile: "default".into(),
            runtime: "native".into(),
            image: "host".into(),
            image_digest: "sha256:00".into(),
            state: SessionState::Running,
            limits: Limits::default(),
            repo: None,
            created_at: started.into(),
            started_at: Some(started.into()),
            ended_at: ended.map(str::to_string),
            end_reason: None,
            layers: vec![],
            exec_count: 0,
            last_activity_at: None,
        }
    }

    fn call(info: &SessionInfo, at: &str, tin: u64, tout: u64, cost: f64) -> (ModelCallRow, Event) {
        let id = format!("mc-{}", rand_id());
        (
            ModelCallRow {
                id: id.clone(),
                session: info.id.clone(),
                human: Some(info.human.clone()),
                task: Some(info.task.to_string()),
                at: at.into(),
                model: "coder".into(),
                outcome: "ok".into(),
                input_tokens: tin,
                output_tokens: tout,
                cost_usd: cost,
                record: serde_json::json!({"id": id, "request": {"messages": [{"content": "key AKIAIOSFODNN7EXAMPLE"}]}}),
            },
            Event::new("model.call", Outcome::Success),
        )
    }

    fn rand_id() -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed).to_string()
    }

    #[test]
    fn calls_add_up_per_key_and_period_with_sandbox_hours() {
        let s = Store::open_in_memory().unwrap();
        let a = session(
            "ada",
            "T-1",
            "2026-11-30T10:00:00.000000000Z",
            Some("2026-11-30T12:30:00Z"),
        );
        let b = session("bob", "T-2", "2026-12-01T09:00:00Z", None);
        s.insert_session(&a, "created").unwrap();
        s.insert_session(&b, "created").unwrap();
        s.add_model_calls(&[
            call(&a, "2026-11-30T10:01:00Z", 100, 50, 0.01),
            call(&a, "2026-11-30T10:02:00Z", 200, 50, 0.02),
            call(&b, "2026-12-01T09:01:00Z", 10, 5, 0.5),
        ])
        .unwrap();

        let by_user = s
            .usage_report(
                "2026-11-01",
                "2026-12-01T10:00:00Z",
                UsageBy::User,
                Period::Day,
            )
            .unwrap();
        assert_eq!(by_user.len(), 2, "{by_user:?}");
        let ada = &by_user[0];
        assert_eq!(
            (ada.period.as_str(), ada.key.as_str()),
            ("2026-11-30", "ada")
        );
        assert_eq!(
            (ada.calls, ada.input_tokens, ada.output_tokens),
            (2, 300, 100)
        );
        assert!((ada.cost_usd - 0.03).abs() < 1e-9);
        assert!(
            (ada.sandbox_hours - 2.5).abs() < 1e-6,
            "{}",
            ada.sandbox_hours
        );
        // A live session counts up to now.
        assert!((by_user[1].sandbox_hours - 1.0).abs() < 1e-6);

        let monthly = s
            .usage_report(
                "2026-11-01",
                "2026-12-01T10:00:00Z",
                UsageBy::Task,
                Period::Month,
            )
            .unwrap();
        let keys: Vec<_> = monthly
            .iter()
            .map(|r| (r.period.as_str(), r.key.as_str()))
            .collect();
        assert_eq!(keys, [("2026-11", "T-1"), ("2026-12", "T-2")]);
        // --since cuts both sides.
        let late = s
            .usage_report(
                "2026-12-01",
                "2026-12-01T10:00:00Z",
                UsageBy::Session,
                Period::Day,
            )
            .unwrap();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].key, b.id.as_str());

        let totals = s.model_usage_totals(UsageBy::User).unwrap();
        assert_eq!(totals.len(), 2);
        assert_eq!(totals.iter().find(|t| t.key == "ada").unwrap().tokens, 400);

        // Records come back in order and redacted.
        let recs = s.model_calls(&a.id, None).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(
            !recs[0].to_string().contains("AKIAIOSFODNN7EXAMPLE"),
            "{}",
            recs[0]
        );
        assert_eq!(s.model_calls(&a.id, Some(1)).unwrap(), recs[1..].to_vec());
        assert!(UsageBy::parse("team").is_err());
    }
}
