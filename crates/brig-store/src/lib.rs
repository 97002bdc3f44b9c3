//! brig-store: brig's state in an embedded SQLite database.
//!
//! One file under the data dir (`brig.db`), in WAL mode with foreign keys on
//! and a busy timeout, migrated by ordered SQL scripts recorded in
//! `schema_migrations`. A database written by a newer brig (a version this
//! binary does not know) is refused rather than guessed at.
//!
//! The API is synchronous; [`Store`] keeps its connection behind a mutex so
//! it is `Send + Sync` and an async caller runs it on a blocking thread
//! (`tokio::task::spawn_blocking`).

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use brig_audit::{canonical_json, seal, seal_with, Checkpoint, GENESIS};
use brig_redact::pii::PiiRules;
use brig_redact::Redactor;

use brig_core::event::{Event, Outcome};
use brig_core::exec::ExitStatus;
use brig_core::session::{Limits, SessionInfo, SessionState};
use brig_core::{Error, ErrorKind, Result, SessionId, TaskId};
use rusqlite::{params, Connection, OptionalExtension, Row};

pub mod approvals;
pub mod tokens;
pub mod usage;
pub mod writer;
pub use writer::{Tx, Writer, WriterOptions};

/// The schema, one script per version, in order. Never edit a released
/// entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, their state transitions, events and execs.
    r#"
    CREATE TABLE sessions (
        id               TEXT PRIMARY KEY,
        human            TEXT NOT NULL,
        task             TEXT NOT NULL,
        profile          TEXT NOT NULL,
        runtime          TEXT NOT NULL,
        image            TEXT NOT NULL,
        image_digest     TEXT NOT NULL,
        state            TEXT NOT NULL,
        limits           TEXT NOT NULL,
        repo             TEXT,
        created_at       TEXT NOT NULL,
        started_at       TEXT,
        ended_at         TEXT,
        end_reason       TEXT,
        layers           TEXT NOT NULL DEFAULT '[]',
        exec_count       INTEGER NOT NULL DEFAULT 0,
        last_activity_at TEXT
    );
    CREATE INDEX sessions_state ON sessions(state);
    CREATE INDEX sessions_created ON sessions(created_at);

    CREATE TABLE state_transitions (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        session    TEXT NOT NULL REFERENCES sessions(id),
        from_state TEXT,
        to_state   TEXT NOT NULL,
        time       TEXT NOT NULL,
        reason     TEXT NOT NULL
    );
    CREATE INDEX state_transitions_session ON state_transitions(session);

    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        id      TEXT NOT NULL UNIQUE,
        time    TEXT NOT NULL,
        session TEXT,
        human   TEXT,
        agent   TEXT,
        task    TEXT,
        repo    TEXT,
        branch  TEXT,
        action  TEXT NOT NULL,
        outcome TEXT NOT NULL,
        rule    TEXT,
        details TEXT NOT NULL DEFAULT 'null'
    );
    CREATE INDEX events_session ON events(session, seq);

    CREATE TABLE execs (
        session      TEXT NOT NULL REFERENCES sessions(id),
        exec_id      TEXT NOT NULL,
        argv         TEXT NOT NULL,
        cwd          TEXT NOT NULL,
        started_at   TEXT NOT NULL,
        ended_at     TEXT,
        exit_code    INTEGER,
        exit_signal  INTEGER,
        timed_out    INTEGER NOT NULL DEFAULT 0,
        duration_ms  INTEGER,
        stdout_bytes INTEGER NOT NULL DEFAULT 0,
        stderr_bytes INTEGER NOT NULL DEFAULT 0,
        error        TEXT,
        PRIMARY KEY (session, exec_id)
    );
    "#,
    // 2: the tamper-evident journal: each event's chain link, signed
    // checkpoints of the chain head, and how far each sink has shipped.
    r#"
    ALTER TABLE events ADD COLUMN prev_hash TEXT;
    ALTER TABLE events ADD COLUMN hash TEXT;
    CREATE INDEX events_human ON events(human, seq);
    CREATE INDEX events_time ON events(time);

    CREATE TABLE checkpoints (
        seq       INTEGER NOT NULL,
        hash      TEXT NOT NULL,
        time      TEXT NOT NULL,
        key_id    TEXT NOT NULL,
        signature TEXT NOT NULL,
        PRIMARY KEY (seq, key_id)
    );

    CREATE TABLE sink_cursors (
        name       TEXT PRIMARY KEY,
        seq        INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    "#,
    // 3: sinks also deliver the signed checkpoints: how far each sink has
    // shipped them (the seq of the last checkpoint it acknowledged).
    r#"
    ALTER TABLE sink_cursors ADD COLUMN checkpoint_seq INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: artifacts handed over through upload URLs (issue 4), and the
    // nonces of the upload tokens used (each token is single use).
    r#"
    CREATE TABLE artifacts (
        session     TEXT NOT NULL REFERENCES sessions(id),
        name        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        uploaded_at TEXT NOT NULL,
        PRIMARY KEY (session, name)
    );
    CREATE TABLE artifact_tokens (
        nonce      TEXT PRIMARY KEY,
        session    TEXT NOT NULL,
        name       TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        used_at    TEXT NOT NULL
    );
    "#,
    // 5: repo access (issue 5): what a session's checkout pinned, its test
    // gate's results and the pull requests opened for it, each a JSON
    // record (brig-server's types; the journal holds the same as events).
    r#"
    CREATE TABLE session_git (
        session TEXT PRIMARY KEY REFERENCES sessions(id),
        record  TEXT NOT NULL
    );
    CREATE TABLE session_records (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        session TEXT NOT NULL REFERENCES sessions(id),
        kind    TEXT NOT NULL,
        at      TEXT NOT NULL,
        record  TEXT NOT NULL
    );
    CREATE INDEX session_records_by_kind ON session_records (session, kind, seq);
    "#,
    // 6: the model gateway's captured calls (issue 8): one row per request
    // with the columns the budgets and the cost report add up, and the
    // whole (already redacted) record as JSON for `brig model log`.
    r#"
    CREATE TABLE model_calls (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        session       TEXT NOT NULL REFERENCES sessions(id),
        human         TEXT,
        task          TEXT,
        at            TEXT NOT NULL,
        model         TEXT NOT NULL,
        outcome       TEXT NOT NULL,
        input_tokens  INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd      REAL NOT NULL,
        record        TEXT NOT NULL
    );
    CREATE INDEX model_calls_by_session ON model_calls (session, seq);
    CREATE INDEX model_calls_by_time ON model_calls (at);
    "#,
    // 7: human in the loop (issue 7): approval requests for sensitive
    // capabilities and the plans agents submit. A request is decided once
    // (the UPDATE only takes a pending row), so two approvers cannot both
    // win.
    r#"
    CREATE TABLE approvals (
        id           TEXT PRIMARY KEY,
        session      TEXT NOT NULL REFERENCES sessions(id),
        human        TEXT NOT NULL,
        task         TEXT NOT NULL,
        action       TEXT NOT NULL,
        resource     TEXT NOT NULL,
        capability   TEXT NOT NULL,
        state        TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        expires_at   TEXT NOT NULL,
        decided_by   TEXT,
        decided_at   TEXT,
        valid_until  TEXT,
        record       TEXT NOT NULL
    );
    CREATE INDEX approvals_by_state ON approvals (state, requested_at);
    CREATE INDEX approvals_by_session ON approvals (session, action, resource);
    CREATE TABLE plans (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        id           TEXT NOT NULL UNIQUE,
        session      TEXT NOT NULL REFERENCES sessions(id),
        submitted_at TEXT NOT NULL,
        record       TEXT NOT NULL
    );
    CREATE INDEX plans_by_session ON plans (session, seq);
    "#,
    // 8: API tokens for automation (issue 7): kept as the SHA-256 of the
    // token (the token itself is shown once and never stored), with the
    // owner's roles and groups at issue time.
    r#"
    CREATE TABLE api_tokens (
        id          TEXT PRIMARY KEY,
        principal   TEXT NOT NULL,
        name        TEXT NOT NULL,
        hash        TEXT NOT NULL UNIQUE,
        created     TEXT NOT NULL,
        expires     TEXT NOT NULL,
        last_used   TEXT,
        revoked     TEXT,
        roles       TEXT NOT NULL DEFAULT '[]',
        groups_json TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX api_tokens_by_principal ON api_tokens (principal, created);
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// One recorded state change of a session.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transition {
    pub session: SessionId,
    pub from: Option<SessionState>,
    pub to: SessionState,
    pub time: String,
    pub reason: String,
}

/// One command run in a session, as recorded (never its output).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecRecord {
    pub session: SessionId,
    pub exec_id: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub status: Option<ExitStatus>,
    pub duration_ms: Option<u64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Why it could not start or finish (spawn failure, sandbox died).
    pub error: Option<String>,
}

/// How an exec ended, for [`Store::finish_exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecEnd {
    pub ended_at: String,
    pub status: Option<ExitStatus>,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub error: Option<String>,
}

/// One artifact a session handed over through an upload URL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactRecord {
    pub session: SessionId,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub uploaded_at: String,
}

/// The database. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
    redactor: RwLock<Arc<Redactor>>,
    /// PII detectors for what is stored (`[journal.pii]`), if any.
    pii: RwLock<Option<Arc<PiiRules>>>,
}

/// Which events [`Store::events_filtered`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventFilter {
    /// RFC 3339; events at or after it.
    pub since: Option<String>,
    pub session: Option<String>,
    /// The human behind the events.
    pub human: Option<String>,
    /// Only events of the sessions this human owns (what a human who may
    /// not read the whole journal sees).
    pub owner: Option<String>,
    /// Only events with a greater seq (then the first `limit`, else the last).
    pub after_seq: Option<i64>,
    pub limit: Option<i64>,
}

fn db_err(what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::internal(format!("database: {what}: {e}"))
}

impl Store {
    /// Open (creating if needed) the database at `path` and migrate it.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::internal(format!("cannot create {}: {e}", dir.display()))
                        .hint("check that data_dir in brig.toml is writable by brig serve")
                })?;
            }
        }
        let conn = Connection::open(path).map_err(|e| {
            Error::internal(format!("cannot open database {}: {e}", path.display()))
                .hint("check that data_dir in brig.toml is writable by brig serve")
        })?;
        Self::setup(conn, &path.display().to_string()).map_err(|e| {
            if e.message.contains("not a database") || e.message.contains("malformed") {
                corrupt_msg(path, &e.message)
            } else {
                e
            }
        })
    }

    /// A private in-memory database (tests, dry runs).
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory().map_err(db_err("open in memory"))?;
        Self::setup(conn, ":memory:")
    }

    fn setup(mut conn: Connection, name: &str) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_err("busy_timeout"))?;
        // journal_mode answers with a row, so it is queried, not executed.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db_err("journal_mode"))?;
        if mode != "wal" && name != ":memory:" {
            return Err(Error::internal(format!(
                "database {name}: could not switch to WAL mode (got {mode})"
            ))
            .hint("put data_dir on a local filesystem that supports shared memory"));
        }
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768;",
        )
        .map_err(db_err("pragmas"))?;
        migrate(&mut conn, name)?;
        Ok(Store {
            conn: Mutex::new(conn),
            redactor: RwLock::new(Arc::new(Redactor::patterns_only())),
            pii: RwLock::new(None),
        })
    }

    /// Open an existing database read-only, without migrating it (what an
    /// auditor runs `brig journal verify` on: the live data dir or a copy).
    /// Refuses files that are not a brig database or predate the journal.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        use rusqlite::OpenFlags;
        if !path.is_file() {
            return Err(
                Error::not_found(format!("no database at {}", path.display()))
                    .hint("pass the data dir brig serve uses (--data-dir), which holds brig.db"),
            );
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| corrupt(path, e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db_err("busy_timeout"))?;
        // A copy without its -shm file on a read-only medium cannot be
        // opened in WAL mode read-only; fall back to an immutable view.
        let conn = match current_version(&conn) {
            Ok(_) => conn,
            Err(_) => {
                let uri = format!("file:{}?immutable=1", path.display());
                Connection::open_with_flags(&uri, flags | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(|e| corrupt(path, e))?
            }
        };
        let version = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| corrupt(path, e))?;
        if version < 2 {
            return Err(Error::invalid(format!(
                "database {} has schema version {version}: it predates the hash-chained journal",
                path.display()
            ))
            .hint(
                "start brig serve on it once to migrate (events written before are chained then)",
            ));
        }
        if version > SCHEMA_VERSION {
            return Err(Error::conflict(format!(
                "database {} has schema version {version}, newer than this brig understands ({SCHEMA_VERSION})",
                path.display()
            ))
            .hint("verify it with the brig that wrote it"));
        }
        // Touch the tables verify needs, so damage shows here, by name.
        conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map_err(|e| corrupt(path, e))?;
        Ok(Store {
            conn: Mutex::new(conn),
            redactor: RwLock::new(Arc::new(Redactor::patterns_only())),
            pii: RwLock::new(None),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i64> {
        current_version(&self.conn())
    }

    /// Record a new session (in whatever state `info` has, normally `created`)
    /// with its first transition.
    pub fn insert_session(&self, info: &SessionInfo, reason: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err("begin"))?;
        insert_session_on(&tx, info, reason)?;
        tx.commit().map_err(db_err("commit"))
    }

    /// Write every field of `info` (the session must exist). When its state
    /// differs from the stored one, the transition is recorded with `reason`
    /// in the same transaction.
    pub fn update_session(&self, info: &SessionInfo, reason: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err("begin"))?;
        update_session_on(&tx, info, reason)?;
        tx.commit().map_err(db_err("commit"))
    }

    /// An exec's start, in one transaction: the session row (exec count,
    /// activity), the exec row and its `exec.start` event. Every exec pays
    /// this, so it is one lock and one commit, not three.
    pub fn record_exec_start(
        &self,
        info: &SessionInfo,
        rec: &ExecRecord,
        ev: &Event,
    ) -> Result<()> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin"))?;
        update_session_on(&tx, info, "exec started")?;
        insert_exec_on(&tx, &red, rec)?;
        append_events_on(&tx, &red, std::slice::from_ref(ev))?;
        tx.commit().map_err(db_err("commit"))
    }

    /// An exec's end, in one transaction: the exec row, the session row and
    /// its `exec.exit` event.
    pub fn record_exec_end(
        &self,
        info: &SessionInfo,
        exec_id: &str,
        end: &ExecEnd,
        ev: &Event,
    ) -> Result<()> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin"))?;
        finish_exec_on(&tx, &info.id, exec_id, end)?;
        update_session_on(&tx, info, "exec finished")?;
        append_events_on(&tx, &red, std::slice::from_ref(ev))?;
        tx.commit().map_err(db_err("commit"))
    }

    pub fn get_session(&self, id: &SessionId) -> Result<Option<SessionInfo>> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {SESSION_COLS} FROM sessions WHERE id = ?1"),
            [id.as_str()],
            row_to_session,
        )
        .optional()
        .map_err(db_err("read session"))
    }

    /// Sessions newest first: live ones only unless `all`.
    pub fn list_sessions(&self, all: bool) -> Result<Vec<SessionInfo>> {
        let conn = self.conn();
        let sql = if all {
            format!("SELECT {SESSION_COLS} FROM sessions ORDER BY created_at DESC, rowid DESC")
        } else {
            format!(
                "SELECT {SESSION_COLS} FROM sessions WHERE state IN ('created', 'running', 'idle')
                 ORDER BY created_at DESC, rowid DESC"
            )
        };
        let mut stmt = conn.prepare(&sql).map_err(db_err("list sessions"))?;
        let rows = stmt
            .query_map([], row_to_session)
            .map_err(db_err("list sessions"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err("list sessions"))
    }

    /// How many sessions are in each state.
    pub fn count_by_state(&self) -> Result<Vec<(SessionState, u64)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT state, COUNT(*) FROM sessions GROUP BY state")
            .map_err(db_err("count sessions"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_err("count sessions"))?;
        let mut out = Vec::new();
        for row in rows {
            let (s, n) = row.map_err(db_err("count sessions"))?;
            out.push((parse_state(&s)?, n as u64));
        }
        Ok(out)
    }

    /// Every state change of a session, oldest first.
    pub fn transitions(&self, id: &SessionId) -> Result<Vec<Transition>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT session, from_state, to_state, time, reason FROM state_transitions
                 WHERE session = ?1 ORDER BY id",
            )
            .map_err(db_err("read transitions"))?;
        let rows = stmt
            .query_map([id.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(db_err("read transitions"))?;
        let mut out = Vec::new();
        for row in rows {
            let (session, from, to, time, reason) = row.map_err(db_err("read transitions"))?;
            out.push(Transition {
                session: parse_id(session)?,
                from: from.as_deref().map(parse_state).transpose()?,
                to: parse_state(&to)?,
                time,
                reason,
            });
        }
        Ok(out)
    }

    /// The redactor every event and exec record passes through before it
    /// is written (default: patterns only). The control plane installs one
    /// that also knows its secret values.
    pub fn set_redactor(&self, r: Arc<Redactor>) {
        *self.redactor.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    /// The redactor in force now (brig's other capture paths, e.g. the
    /// model gateway, mask with the same one).
    pub fn current_redactor(&self) -> Arc<Redactor> {
        self.redactor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The PII detectors every stored event and exec record also passes
    /// through (`[journal.pii]`), after the redactor; `None`: none.
    pub fn set_pii(&self, rules: Option<Arc<PiiRules>>) {
        *self.pii.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    fn masks(&self) -> Masks {
        Masks {
            secrets: self.current_redactor(),
            pii: self.pii.read().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Test hook: when `veto` returns true, SQLite turns the next COMMIT
    /// into a rollback and the commit fails (a real commit failure, for
    /// testing what callers see). `None` removes it.
    #[doc(hidden)]
    pub fn set_commit_veto(&self, veto: Option<Box<dyn FnMut() -> bool + Send>>) {
        let conn = self.conn();
        match veto {
            Some(v) => conn.commit_hook(Some(v)),
            None => conn.commit_hook(None::<fn() -> bool>),
        }
    }

    /// `synchronous = FULL` (fsync the WAL at every commit: an event
    /// survives power loss once appended) or `NORMAL` (the default: it
    /// survives a crash of brig, fsync at WAL checkpoints).
    pub fn set_synchronous_full(&self, full: bool) -> Result<()> {
        let mode = if full { "FULL" } else { "NORMAL" };
        self.conn()
            .execute_batch(&format!("PRAGMA synchronous = {mode}"))
            .map_err(db_err("synchronous"))
    }

    /// Append an event, redacted and chained; returns its sequence number.
    pub fn append_event(&self, ev: &Event) -> Result<i64> {
        let seqs = self.append_events(std::slice::from_ref(ev))?;
        Ok(seqs[0])
    }

    /// Append events in one transaction (one fsync), in order: each is
    /// redacted, given the next seq and linked to the chain head. The
    /// connection mutex serializes appenders and the transaction is
    /// IMMEDIATE, so the head read and the inserts cannot interleave with
    /// another writer, even one in another process.
    pub fn append_events(&self, evs: &[Event]) -> Result<Vec<i64>> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin append"))?;
        let out = append_events_on(&tx, &red, evs)?;
        tx.commit().map_err(db_err("commit events"))?;
        Ok(out)
    }

    /// The chain head: (seq, hash) of the last event.
    pub fn head(&self) -> Result<Option<(i64, String)>> {
        head_of(&self.conn())
    }

    /// Events of one session (or, with `None`, those of no session), oldest first.
    pub fn events(&self, session: Option<&SessionId>) -> Result<Vec<Event>> {
        let conn = self.conn();
        match session {
            Some(id) => query_events(
                &conn,
                &format!("SELECT {EVENT_COLS} FROM events WHERE session = ?1 ORDER BY seq"),
                params![id.as_str()],
            ),
            None => query_events(
                &conn,
                &format!("SELECT {EVENT_COLS} FROM events WHERE session IS NULL ORDER BY seq"),
                [],
            ),
        }
    }

    /// The session's last `limit` denied events whose action starts with
    /// `prefix` (e.g. `net.`), newest first: what `brig session show` explains.
    pub fn denials(&self, session: &SessionId, prefix: &str, limit: i64) -> Result<Vec<Event>> {
        let conn = self.conn();
        // LIKE with an escaped prefix: '_' and '%' in it match themselves.
        let pattern = prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
            + "%";
        query_events(
            &conn,
            &format!(
                "SELECT {EVENT_COLS} FROM events WHERE session = ?1 AND outcome = 'denied' \
                 AND action LIKE ?2 ESCAPE '\\' ORDER BY seq DESC LIMIT ?3"
            ),
            params![session.as_str(), pattern, limit],
        )
    }

    /// Up to `limit` events with seq > `after_seq`, of every session, in
    /// seq order (the journal as sinks and `tail -f` read it).
    pub fn events_after(&self, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        let conn = self.conn();
        query_events(
            &conn,
            &format!("SELECT {EVENT_COLS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
            params![after_seq, limit.max(0)],
        )
    }

    /// Events matching `f`, in seq order. With `limit` and no `after_seq`,
    /// the *last* `limit` matching events (what `journal show` wants).
    pub fn events_filtered(&self, f: &EventFilter) -> Result<Vec<Event>> {
        let since = match &f.since {
            Some(t) => Some(parse_time(t)?),
            None => None,
        };
        let mut sql = format!("SELECT {EVENT_COLS} FROM events WHERE seq > ?1");
        let mut args: Vec<rusqlite::types::Value> = vec![f.after_seq.unwrap_or(0).into()];
        if let Some(s) = &f.session {
            args.push(s.clone().into());
            sql.push_str(&format!(" AND session = ?{}", args.len()));
        }
        if let Some(h) = &f.human {
            args.push(h.clone().into());
            sql.push_str(&format!(" AND human = ?{}", args.len()));
        }
        if let Some(o) = &f.owner {
            args.push(o.clone().into());
            sql.push_str(&format!(
                " AND session IN (SELECT id FROM sessions WHERE human = ?{})",
                args.len()
            ));
        }
        if let Some(t) = since {
            // Coarse in SQL (whole seconds; RFC 3339 text sorts by time at
            // that precision), exact below.
            let floor = t
                .replace_nanosecond(0)
                .unwrap_or(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            args.push(floor.trim_end_matches('Z').to_string().into());
            sql.push_str(&format!(" AND time >= ?{}", args.len()));
        }
        let tail = f.after_seq.is_none() && f.limit.is_some();
        sql.push_str(if tail {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq"
        });
        if let Some(n) = f.limit {
            // In SQL, so `show` on a large journal reads only what it shows.
            // The exact `since` check below only drops rows of the boundary
            // second, so at most that second's events are missing from a page.
            args.push(n.max(0).into());
            sql.push_str(&format!(" LIMIT ?{}", args.len()));
        }
        let conn = self.conn();
        let mut out = query_events(&conn, &sql, rusqlite::params_from_iter(args))?;
        if let Some(t) = since {
            out.retain(|e| parse_time(&e.time).map(|et| et >= t).unwrap_or(true));
        }
        if let Some(n) = f.limit {
            out.truncate(n.max(0) as usize);
        }
        if tail {
            out.reverse();
        }
        Ok(out)
    }

    /// Record a signed checkpoint (idempotent).
    pub fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO checkpoints (seq, hash, time, key_id, signature)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![cp.seq, cp.hash, cp.time, cp.key_id, cp.signature],
            )
            .map_err(db_err("record checkpoint"))?;
        Ok(())
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq, time",
            )
            .map_err(db_err("read checkpoints"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Checkpoint {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                    time: r.get(2)?,
                    key_id: r.get(3)?,
                    signature: r.get(4)?,
                })
            })
            .map_err(db_err("read checkpoints"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err("read checkpoints"))
    }

    /// Up to `limit` checkpoints with `after < seq <= upto`, by seq (what a
    /// sink delivers after the events they sign).
    pub fn checkpoints_between(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Checkpoint>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT seq, hash, time, key_id, signature FROM checkpoints
                 WHERE seq > ?1 AND seq <= ?2 ORDER BY seq, key_id LIMIT ?3",
            )
            .map_err(db_err("read checkpoints"))?;
        let rows = stmt
            .query_map(params![after, upto, limit.max(0)], |r| {
                Ok(Checkpoint {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                    time: r.get(2)?,
                    key_id: r.get(3)?,
                    signature: r.get(4)?,
                })
            })
            .map_err(db_err("read checkpoints"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err("read checkpoints"))
    }

    /// The seq of the newest checkpoint (0 if none).
    pub fn last_checkpoint_seq(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM checkpoints", [], |r| {
                r.get(0)
            })
            .map_err(db_err("read checkpoints"))
    }

    /// The last seq a sink acknowledged, if it ever did.
    pub fn sink_cursor(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.sink_cursors(name)?.map(|(seq, _)| seq))
    }

    /// A sink's cursors: (seq of the last event, seq of the last signed
    /// checkpoint) it acknowledged, if it ever acknowledged anything.
    pub fn sink_cursors(&self, name: &str) -> Result<Option<(i64, i64)>> {
        self.conn()
            .query_row(
                "SELECT seq, checkpoint_seq FROM sink_cursors WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err("read sink cursor"))
    }

    /// Record that sink `name` acknowledged every event up to `seq`.
    pub fn set_sink_cursor(&self, name: &str, seq: i64) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO sink_cursors (name, seq, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
                params![name, seq, brig_core::event::now_rfc3339()],
            )
            .map_err(db_err("write sink cursor"))?;
        Ok(())
    }

    /// Record both of a sink's cursors in one statement (one row): every
    /// event up to `seq` and every checkpoint up to `checkpoint_seq`.
    pub fn set_sink_cursors(&self, name: &str, seq: i64, checkpoint_seq: i64) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO sink_cursors (name, seq, checkpoint_seq, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET seq = excluded.seq,
                    checkpoint_seq = excluded.checkpoint_seq, updated_at = excluded.updated_at",
                params![name, seq, checkpoint_seq, brig_core::event::now_rfc3339()],
            )
            .map_err(db_err("write sink cursor"))?;
        Ok(())
    }

    /// Record that an exec started.
    pub fn insert_exec(&self, rec: &ExecRecord) -> Result<()> {
        let red = self.masks();
        insert_exec_on(&self.conn(), &red, rec)
    }

    /// Record how an exec ended.
    pub fn finish_exec(&self, session: &SessionId, exec_id: &str, end: &ExecEnd) -> Result<()> {
        finish_exec_on(&self.conn(), session, exec_id, end)
    }

    /// Execs of a session, in the order they started.
    pub fn execs(&self, session: &SessionId) -> Result<Vec<ExecRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT exec_id, argv, cwd, started_at, ended_at, exit_code, exit_signal, timed_out,
                    duration_ms, stdout_bytes, stderr_bytes, error
                 FROM execs WHERE session = ?1 ORDER BY started_at, rowid",
            )
            .map_err(db_err("read execs"))?;
        let rows = stmt
            .query_map([session.as_str()], |r| {
                let ended_at: Option<String> = r.get(4)?;
                let code: Option<i32> = r.get(5)?;
                let signal: Option<i32> = r.get(6)?;
                let timed_out: bool = r.get(7)?;
                let status =
                    (code.is_some() || signal.is_some() || timed_out).then_some(ExitStatus {
                        code,
                        signal,
                        timed_out,
                    });
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    ended_at,
                    status,
                    r.get::<_, Option<i64>>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, Option<String>>(11)?,
                ))
            })
            .map_err(db_err("read execs"))?;
        let mut out = Vec::new();
        for row in rows {
            let (exec_id, argv, cwd, started_at, ended_at, status, dur, so, se, error) =
                row.map_err(db_err("read execs"))?;
            out.push(ExecRecord {
                session: session.clone(),
                exec_id,
                argv: from_json(&argv)?,
                cwd,
                started_at,
                ended_at,
                status,
                duration_ms: dur.map(|d| d as u64),
                stdout_bytes: so as u64,
                stderr_bytes: se as u64,
                error,
            });
        }
        Ok(out)
    }

    /// Whether the upload token with this nonce was used.
    pub fn artifact_token_used(&self, nonce: &str) -> Result<bool> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM artifact_tokens WHERE nonce = ?1",
                [nonce],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(db_err("read artifact tokens"))
    }

    /// Accept an upload, in one IMMEDIATE transaction: use the token's
    /// nonce up (single use), record the artifact (replacing one of the
    /// same name), append `ev`, and run `place` (which moves the bytes into
    /// place) before the commit; if `place` fails, nothing is recorded.
    /// `Ok(false)`: the nonce was already used, nothing changed and `place`
    /// was not run.
    pub fn accept_artifact(
        &self,
        rec: &ArtifactRecord,
        nonce: &str,
        expires_at: &str,
        ev: &Event,
        place: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin artifact"))?;
        let fresh = tx
            .execute(
                "INSERT OR IGNORE INTO artifact_tokens (nonce, session, name, expires_at, used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    nonce,
                    rec.session.as_str(),
                    rec.name,
                    expires_at,
                    rec.uploaded_at
                ],
            )
            .map_err(db_err("use artifact token"))?;
        if fresh == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO artifacts (session, name, size, sha256, uploaded_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                rec.session.as_str(),
                rec.name,
                rec.size as i64,
                rec.sha256,
                rec.uploaded_at
            ],
        )
        .map_err(db_err("record artifact"))?;
        append_events_on(&tx, &red, std::slice::from_ref(ev))?;
        place()?;
        tx.commit().map_err(db_err("commit artifact"))?;
        Ok(true)
    }

    pub fn session_git(&self, session: &SessionId) -> Result<Option<serde_json::Value>> {
        let conn = self.conn();
        let text: Option<String> = conn
            .query_row(
                "SELECT record FROM session_git WHERE session = ?1",
                [session.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("read session git"))?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| Error::internal(format!("session git record: {e}")))
        })
        .transpose()
    }

    /// A session's records of `kind`, oldest first.
    pub fn session_records(
        &self,
        session: &SessionId,
        kind: &str,
    ) -> Result<Vec<serde_json::Value>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT record FROM session_records WHERE session = ?1 AND kind = ?2 ORDER BY seq",
            )
            .map_err(db_err("read session records"))?;
        let rows = st
            .query_map([session.as_str(), kind], |r| r.get::<_, String>(0))
            .map_err(db_err("read session records"))?;
        let mut out = vec![];
        for t in rows {
            let t = t.map_err(db_err("read session records"))?;
            out.push(
                serde_json::from_str(&t)
                    .map_err(|e| Error::internal(format!("session record: {e}")))?,
            );
        }
        Ok(out)
    }

    /// A session's artifacts, by name.
    pub fn artifacts(&self, session: &SessionId) -> Result<Vec<ArtifactRecord>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT name, size, sha256, uploaded_at FROM artifacts WHERE session = ?1
                 ORDER BY name",
            )
            .map_err(db_err("read artifacts"))?;
        let rows = st
            .query_map([session.as_str()], |r| {
                Ok(ArtifactRecord {
                    session: session.clone(),
                    name: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    sha256: r.get(2)?,
                    uploaded_at: r.get(3)?,
                })
            })
            .map_err(db_err("read artifacts"))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err("read artifacts"))
    }

    /// One artifact of a session.
    pub fn artifact(&self, session: &SessionId, name: &str) -> Result<Option<ArtifactRecord>> {
        Ok(self
            .artifacts(session)?
            .into_iter()
            .find(|a| a.name == name))
    }

    /// (execs, failed execs) of a session: failed = did not exit 0.
    pub fn exec_counts(&self, session: &SessionId) -> Result<(u64, u64)> {
        let conn = self.conn();
        conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN exit_code IS 0 AND timed_out = 0
                 AND error IS NULL THEN 0 ELSE 1 END), 0)
             FROM execs WHERE session = ?1",
            [session.as_str()],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .map_err(db_err("count execs"))
    }
}

const SESSION_COLS: &str = "id, human, task, profile, runtime, image, image_digest, state, limits,
    repo, created_at, started_at, ended_at, end_reason, layers, exec_count, last_activity_at";

fn row_to_session(r: &Row<'_>) -> rusqlite::Result<SessionInfo> {
    let conv = |i: usize, e: Error| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    };
    let id: String = r.get(0)?;
    let id = SessionId::try_from(id).map_err(|e| conv(0, e))?;
    let task: String = r.get(2)?;
    let task = TaskId::try_from(task).map_err(|e| conv(2, e))?;
    let state: String = r.get(7)?;
    let state = parse_state(&state).map_err(|e| conv(7, e))?;
    let limits: String = r.get(8)?;
    let limits: Limits = from_json(&limits).map_err(|e| conv(8, e))?;
    let layers: String = r.get(14)?;
    let layers: Vec<String> = from_json(&layers).map_err(|e| conv(14, e))?;
    Ok(SessionInfo {
        principal: id.principal(),
        id,
        human: r.get(1)?,
        task,
        profile: r.get(3)?,
        runtime: r.get(4)?,
        image: r.get(5)?,
        image_digest: r.get(6)?,
        state,
        limits,
        repo: r.get(9)?,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        ended_at: r.get(12)?,
        end_reason: r.get(13)?,
        layers,
        exec_count: r.get::<_, i64>(15)? as u64,
        last_activity_at: r.get(16)?,
    })
}

/// The columns of `sessions`, in the order `?1..?17` of its INSERT and UPDATE.
fn session_row(info: &SessionInfo) -> Result<Vec<rusqlite::types::Value>> {
    use rusqlite::types::Value;
    let text = |s: &str| Value::Text(s.to_string());
    let opt = |s: &Option<String>| s.as_deref().map(text).unwrap_or(Value::Null);
    Ok(vec![
        text(info.id.as_str()),
        text(&info.human),
        text(info.task.as_str()),
        text(&info.profile),
        text(&info.runtime),
        text(&info.image),
        text(&info.image_digest),
        text(info.state.as_str()),
        Value::Text(to_json(&info.limits)?),
        opt(&info.repo),
        text(&info.created_at),
        opt(&info.started_at),
        opt(&info.ended_at),
        opt(&info.end_reason),
        Value::Text(to_json(&info.layers)?),
        Value::Integer(info.exec_count as i64),
        opt(&info.last_activity_at),
    ])
}

fn insert_transition(
    tx: &Connection,
    id: &SessionId,
    from: Option<SessionState>,
    to: SessionState,
    time: &str,
    reason: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO state_transitions (session, from_state, to_state, time, reason)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id.as_str(),
            from.map(|s| s.as_str()),
            to.as_str(),
            time,
            reason
        ],
    )
    .map_err(db_err("record transition"))?;
    Ok(())
}

/// A database file SQLite cannot read: say so, and what to do.
fn corrupt(path: &Path, e: rusqlite::Error) -> Error {
    corrupt_msg(path, &e.to_string())
}

fn corrupt_msg(path: &Path, why: &str) -> Error {
    Error::invalid(format!(
        "{} is not a readable brig database (corrupt or not SQLite): {why}",
        path.display()
    ))
    .hint(
        "restore brig.db from a backup or point at the right data dir; \
           never let brig serve write over a damaged journal you still need as evidence",
    )
}

const EVENT_COLS: &str = "seq, id, time, session, human, agent, task, repo, branch, action,
    outcome, rule, details, prev_hash, hash";

fn query_events<P: rusqlite::Params>(conn: &Connection, sql: &str, args: P) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db_err("read events"))?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                Event {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    time: r.get(2)?,
                    session: r.get(3)?,
                    human: r.get(4)?,
                    agent: r.get(5)?,
                    task: r.get(6)?,
                    repo: r.get(7)?,
                    branch: r.get(8)?,
                    action: r.get(9)?,
                    outcome: Outcome::Info,
                    rule: r.get(11)?,
                    details: serde_json::Value::Null,
                    prev_hash: r.get(13)?,
                    hash: r.get(14)?,
                },
                r.get::<_, String>(10)?,
                r.get::<_, String>(12)?,
            ))
        })
        .map_err(db_err("read events"))?;
    let mut out = Vec::new();
    for row in rows {
        let (mut ev, outcome, details) = row.map_err(db_err("read events"))?;
        ev.outcome = parse_outcome(&outcome)?;
        ev.details = from_json(&details)?;
        out.push(ev);
    }
    Ok(out)
}

fn head_of(conn: &Connection) -> Result<Option<(i64, String)>> {
    conn.query_row(
        "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)),
    )
    .optional()
    .map_err(db_err("read journal head"))?
    .map(|(seq, hash)| {
        hash.map(|h| (seq, h)).ok_or_else(|| {
            Error::internal(format!("journal head (seq {seq}) has no hash"))
                .hint("run `brig journal verify`: the events table was written outside brig")
        })
    })
    .transpose()
}

/// What everything stored passes through: the redactor (secrets) on every
/// string, and the journal's PII detectors on what a program or a person
/// wrote ([`PII_FIELDS`]), never on who did it or what brig decided: a
/// principal's email is attribution, not a leak.
pub(crate) struct Masks {
    secrets: Arc<Redactor>,
    pii: Option<Arc<PiiRules>>,
}

/// The event details that carry free text from inside a session: argv,
/// environment, payload excerpts.
pub const PII_FIELDS: &[&str] = &["argv", "env", "excerpt", "payload"];

impl Masks {
    pub(crate) fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        self.secrets.redact_str(s)
    }

    pub(crate) fn redact_value_mut(&self, v: &mut serde_json::Value) {
        self.secrets.redact_value_mut(v);
    }

    pub(crate) fn redact_value(&self, v: &serde_json::Value) -> serde_json::Value {
        self.secrets.redact_value(v)
    }

    /// PII masked in the [`PII_FIELDS`] of `details` (after the secrets).
    fn pii_fields(&self, details: &mut serde_json::Value) {
        let (Some(p), Some(map)) = (&self.pii, details.as_object_mut()) else {
            return;
        };
        for k in PII_FIELDS {
            if let Some(v) = map.get_mut(*k) {
                if *k == "argv" && pii_argv(p, v) {
                    continue;
                }
                p.redact_value_mut(v);
            }
        }
    }
}

/// PII split over arguments (`echo 4111 1111 1111 1111` after a shell's
/// word splitting) is found in the arguments joined by spaces; the masked
/// line is split again. Only when no argument has a space of its own (else
/// the split would not give the arguments back): false, and each argument
/// is masked alone.
fn pii_argv(p: &PiiRules, v: &mut serde_json::Value) -> bool {
    let Some(args) = v.as_array() else {
        return false;
    };
    let words: Option<Vec<&str>> = args
        .iter()
        .map(|a| a.as_str().filter(|s| !s.contains(' ')))
        .collect();
    let Some(words) = words else {
        return false;
    };
    let line = words.join(" ");
    if let Cow::Owned(masked) = p.redact_str(&line) {
        *v = masked.split(' ').map(|w| serde_json::json!(w)).collect();
    }
    true
}

/// Every string of an event that can carry a secret, redacted.
fn redact_event(red: &Masks, mut e: Event) -> Event {
    let s = |v: &mut String| {
        if let Cow::Owned(r) = red.redact_str(v) {
            *v = r;
        }
    };
    for v in [
        &mut e.human,
        &mut e.task,
        &mut e.repo,
        &mut e.branch,
        &mut e.rule,
    ]
    .into_iter()
    .flatten()
    {
        s(v);
    }
    s(&mut e.action);
    red.redact_value_mut(&mut e.details);
    red.pii_fields(&mut e.details);
    e
}

fn parse_time(t: &str) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).map_err(|e| {
        Error::invalid(format!("not an RFC 3339 time: {t:?}: {e}"))
            .hint("e.g. 2026-01-31T12:00:00Z")
    })
}

/// Chain events written before the journal was hash-chained (schema v1),
/// in seq order, in the migration's transaction.
fn backfill_chain(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let legacy = query_events(
        tx,
        &format!("SELECT {EVENT_COLS} FROM events ORDER BY seq"),
        [],
    )?;
    let mut prev = GENESIS.to_string();
    let mut stmt = tx
        .prepare("UPDATE events SET prev_hash = ?2, hash = ?3 WHERE seq = ?1")
        .map_err(db_err("chain legacy events"))?;
    for mut ev in legacy {
        let hash = seal(&prev, &mut ev);
        stmt.execute(params![ev.seq, prev, hash])
            .map_err(db_err("chain legacy events"))?;
        prev = hash;
    }
    Ok(())
}

fn current_version(conn: &Connection) -> Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
    .map_err(db_err("read schema version"))
}

fn migrate(conn: &mut Connection, name: &str) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TEXT NOT NULL
        )",
    )
    .map_err(db_err("create schema_migrations"))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err("begin migration"))?;
    let have = current_version(&tx)?;
    if have > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "database {name} has schema version {have}, newer than this brig understands \
                 ({SCHEMA_VERSION})"
            ),
        )
        .hint("run the newer brig that wrote it, or point data_dir at another directory"));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        let version = i as i64 + 1;
        tx.execute_batch(sql)
            .map_err(|e| Error::internal(format!("database {name}: migration {version}: {e}")))?;
        if version == 2 {
            backfill_chain(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, brig_core::event::now_rfc3339()],
        )
        .map_err(db_err("record migration"))?;
    }
    tx.commit().map_err(db_err("commit migration"))
}

/// Insert a new session row with its first transition.
/// What a session's checkout pinned (issue 5), replacing any record.
pub(crate) fn set_session_git_on(
    tx: &Connection,
    session: &SessionId,
    record: &serde_json::Value,
) -> Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO session_git (session, record) VALUES (?1, ?2)",
        params![session.as_str(), record.to_string()],
    )
    .map(|_| ())
    .map_err(db_err("record session git"))
}

/// One of a session's records of `kind` (a gate result, a pull request).
pub(crate) fn add_session_record_on(
    tx: &Connection,
    session: &SessionId,
    kind: &str,
    at: &str,
    record: &serde_json::Value,
) -> Result<()> {
    tx.execute(
        "INSERT INTO session_records (session, kind, at, record) VALUES (?1, ?2, ?3, ?4)",
        params![session.as_str(), kind, at, record.to_string()],
    )
    .map(|_| ())
    .map_err(db_err("add session record"))
}

fn insert_session_on(tx: &Connection, info: &SessionInfo, reason: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO sessions (id, human, task, profile, runtime, image, image_digest, state,
            limits, repo, created_at, started_at, ended_at, end_reason, layers, exec_count,
            last_activity_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        rusqlite::params_from_iter(session_row(info)?),
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Error::conflict(format!("session {} already exists", info.id))
        }
        e => db_err("insert session")(e),
    })?;
    insert_transition(tx, &info.id, None, info.state, &info.created_at, reason)
}

/// Write every field of `info`; record the transition if its state changed.
fn update_session_on(tx: &Connection, info: &SessionInfo, reason: &str) -> Result<()> {
    let old: Option<String> = tx
        .query_row(
            "SELECT state FROM sessions WHERE id = ?1",
            [info.id.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err("read session state"))?;
    let Some(old) = old else {
        return Err(Error::not_found(format!("session {} not found", info.id)));
    };
    let old = parse_state(&old)?;
    tx.execute(
        "UPDATE sessions SET human = ?2, task = ?3, profile = ?4, runtime = ?5, image = ?6,
                image_digest = ?7, state = ?8, limits = ?9, repo = ?10, created_at = ?11,
                started_at = ?12, ended_at = ?13, end_reason = ?14, layers = ?15,
                exec_count = ?16, last_activity_at = ?17
             WHERE id = ?1",
        rusqlite::params_from_iter(session_row(info)?),
    )
    .map_err(db_err("update session"))?;
    if old != info.state {
        let time = brig_core::event::now_rfc3339();
        insert_transition(tx, &info.id, Some(old), info.state, &time, reason)?;
    }
    Ok(())
}

/// Append `evs` after the chain head inside `tx` (see `Store::append_events`).
fn append_events_on(tx: &Connection, red: &Masks, evs: &[Event]) -> Result<Vec<i64>> {
    append_owned_on(tx, red, evs.iter().cloned())
}

/// [`append_events_on`] of events the caller gives up: redacted in place,
/// not copied first (process capture's batches).
pub(crate) fn append_owned_on(
    tx: &Connection,
    red: &Masks,
    evs: impl ExactSizeIterator<Item = Event>,
) -> Result<Vec<i64>> {
    let (mut seq, mut prev) = head_of(tx)?.unwrap_or((0, GENESIS.to_string()));
    let mut out = Vec::with_capacity(evs.len());
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO events (seq, id, time, session, human, agent, task, repo, branch,
                        action, outcome, rule, details, prev_hash, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .map_err(db_err("append event"))?;
        for ev in evs {
            let mut ev = redact_event(red, ev);
            seq += 1;
            ev.seq = seq;
            // Stored as hashed: the canonical text is valid JSON.
            let details = canonical_json(&ev.details);
            let hash = seal_with(&prev, &mut ev, &details);
            stmt.execute(params![
                ev.seq,
                ev.id,
                ev.time,
                ev.session,
                ev.human,
                ev.agent,
                ev.task,
                ev.repo,
                ev.branch,
                ev.action,
                outcome_str(ev.outcome),
                ev.rule,
                details,
                prev,
                hash,
            ])
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Error::conflict(format!("event {} is already in the journal", ev.id))
                        .hint("every event needs a fresh id (Event::new makes one)")
                }
                e => db_err("append event")(e),
            })?;
            out.push(seq);
            prev = hash;
        }
    }
    Ok(out)
}

fn insert_exec_on(conn: &Connection, red: &Masks, rec: &ExecRecord) -> Result<()> {
    // argv is as sensitive as the exec.start event that carries it.
    let mut argv = serde_json::json!({ "argv": red.redact_value(&serde_json::json!(rec.argv)) });
    red.pii_fields(&mut argv);
    let argv = argv["argv"].take();
    let cwd = red.redact_str(&rec.cwd).into_owned();
    conn.execute(
        "INSERT INTO execs (session, exec_id, argv, cwd, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            rec.session.as_str(),
            rec.exec_id,
            to_json(&argv)?,
            cwd,
            rec.started_at
        ],
    )
    .map_err(db_err("insert exec"))?;
    Ok(())
}

fn finish_exec_on(
    conn: &Connection,
    session: &SessionId,
    exec_id: &str,
    end: &ExecEnd,
) -> Result<()> {
    let n = conn
        .execute(
            "UPDATE execs SET ended_at = ?3, exit_code = ?4, exit_signal = ?5, timed_out = ?6,
                    duration_ms = ?7, stdout_bytes = ?8, stderr_bytes = ?9, error = ?10
                 WHERE session = ?1 AND exec_id = ?2",
            params![
                session.as_str(),
                exec_id,
                end.ended_at,
                end.status.and_then(|s| s.code),
                end.status.and_then(|s| s.signal),
                end.status.map(|s| s.timed_out).unwrap_or(false),
                end.duration_ms as i64,
                end.stdout_bytes as i64,
                end.stderr_bytes as i64,
                end.error,
            ],
        )
        .map_err(db_err("finish exec"))?;
    if n == 0 {
        return Err(Error::not_found(format!(
            "exec {exec_id} of session {session} not found"
        )));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::internal(format!("database: encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::internal(format!("database: decode {s:?}: {e}")))
}

fn parse_state(s: &str) -> Result<SessionState> {
    SessionState::parse(s)
        .ok_or_else(|| Error::internal(format!("database: unknown session state {s:?}")))
}

fn parse_id(s: String) -> Result<SessionId> {
    SessionId::try_from(s).map_err(|e| Error::internal(format!("database: {}", e.message)))
}

fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Denied => "denied",
        Outcome::Info => "info",
    }
}

fn parse_outcome(s: &str) -> Result<Outcome> {
    Ok(match s {
        "success" => Outcome::Success,
        "failure" => Outcome::Failure,
        "denied" => Outcome::Denied,
        "info" => Outcome::Info,
        _ => return Err(Error::internal(format!("database: unknown outcome {s:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: SessionState) -> SessionInfo {
        let id = SessionId::generate();
        SessionInfo {
            principal: id.principal(),
            id,
            human: "ada".into(),
            task: "JIRA-1".parse().unwrap(),
            profile: "default".into(),
            runtime: "native".into(),
            image: "host".into(),
            image_digest: "sha256:00".into(),
            state,
            limits: Limits::default(),
            repo: Some("/src/repo".into()),
            created_at: brig_core::event::now_rfc3339(),
            started_at: None,
            ended_at: None,
            end_reason: None,
            layers: vec![],
            exec_count: 0,
            last_activity_at: None,
        }
    }

    #[test]
    fn an_artifact_token_is_used_once_and_a_failed_placement_records_nothing() {
        let s = Store::open_in_memory().unwrap();
        let info = session(SessionState::Running);
        s.insert_session(&info, "created").unwrap();
        let rec = ArtifactRecord {
            session: info.id.clone(),
            name: "out.tar".into(),
            size: 3,
            sha256: "ab".into(),
            uploaded_at: brig_core::event::now_rfc3339(),
        };
        let ev = Event::new("artifact.upload", Outcome::Success);
        // A placement that fails: nothing recorded, the token not used.
        let r = s.accept_artifact(&rec, "n1", "t", &ev, || Err(Error::internal("disk full")));
        assert!(r.is_err());
        assert!(!s.artifact_token_used("n1").unwrap());
        assert!(s.artifacts(&info.id).unwrap().is_empty());
        let mut placed = 0;
        assert!(s
            .accept_artifact(&rec, "n1", "t", &ev, || {
                placed += 1;
                Ok(())
            })
            .unwrap());
        assert!(s.artifact_token_used("n1").unwrap());
        assert!(!s
            .accept_artifact(&rec, "n1", "t", &ev, || {
                placed += 1;
                Ok(())
            })
            .unwrap());
        assert_eq!(placed, 1);
        assert_eq!(s.artifacts(&info.id).unwrap(), vec![rec.clone()]);
        assert_eq!(s.artifact(&info.id, "out.tar").unwrap(), Some(rec));
        assert_eq!(s.artifact(&info.id, "nope").unwrap(), None);
        // The accepted upload's event was journaled with it.
        assert_eq!(s.events(None).unwrap().len(), 1);
    }

    #[test]
    fn fresh_db_migrates_and_reopen_is_a_noop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/brig.db");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let info = session(SessionState::Created);
        s.insert_session(&info, "create").unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let n: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, SCHEMA_VERSION, "re-open must not re-apply migrations");
        assert!(s.get_session(&info.id).unwrap().is_some());
        let mode: String = s
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = s
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn db_from_a_newer_brig_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("brig.db");
        drop(Store::open(&path).unwrap());
        {
            let c = Connection::open(&path).unwrap();
            c.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 'later')",
                [SCHEMA_VERSION + 1],
            )
            .unwrap();
        }
        let e = Store::open(&path)
            .err()
            .expect("newer schema must be refused");
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("newer"), "{e}");
        assert!(
            e.message.contains(&format!("{}", SCHEMA_VERSION + 1)),
            "{e}"
        );
        assert!(e.hint.is_some());
    }

    #[test]
    fn sessions_round_trip_with_transitions() {
        let s = Store::open_in_memory().unwrap();
        let mut a = session(SessionState::Created);
        s.insert_session(&a, "create requested").unwrap();
        let got = s.get_session(&a.id).unwrap().unwrap();
        assert_eq!(got.task, a.task);
        assert_eq!(got.limits, a.limits);
        assert_eq!(got.principal, a.id.principal());

        a.state = SessionState::Running;
        a.layers = vec!["seccomp:allowlist".into(), "cgroup:v1".into()];
        a.started_at = Some(brig_core::event::now_rfc3339());
        s.update_session(&a, "sandbox started").unwrap();
        a.exec_count = 3;
        s.update_session(&a, "unused: same state").unwrap();
        a.state = SessionState::Destroyed;
        a.end_reason = Some("idle_timeout".into());
        s.update_session(&a, "idle_timeout").unwrap();

        let got = s.get_session(&a.id).unwrap().unwrap();
        assert_eq!(got.layers, a.layers);
        assert_eq!(got.exec_count, 3);
        assert_eq!(got.end_reason.as_deref(), Some("idle_timeout"));
        let t = s.transitions(&a.id).unwrap();
        let seen: Vec<_> = t
            .iter()
            .map(|t| (t.from, t.to, t.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (None, SessionState::Created, "create requested"),
                (
                    Some(SessionState::Created),
                    SessionState::Running,
                    "sandbox started"
                ),
                (
                    Some(SessionState::Running),
                    SessionState::Destroyed,
                    "idle_timeout"
                ),
            ]
        );
        assert!(s.insert_session(&a, "again").is_err());
        let unknown = session(SessionState::Running);
        assert_eq!(
            s.update_session(&unknown, "x").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn list_is_newest_first_and_live_only_by_default() {
        let s = Store::open_in_memory().unwrap();
        let mut old = session(SessionState::Running);
        old.created_at = "2024-01-01T00:00:00Z".into();
        let mut dead = session(SessionState::Destroyed);
        dead.created_at = "2024-01-02T00:00:00Z".into();
        let mut new = session(SessionState::Idle);
        new.created_at = "2024-01-03T00:00:00Z".into();
        for x in [&old, &dead, &new] {
            s.insert_session(x, "t").unwrap();
        }
        let live: Vec<_> = s
            .list_sessions(false)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(live, vec![new.id.clone(), old.id.clone()]);
        let all: Vec<_> = s
            .list_sessions(true)
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(all, vec![new.id, dead.id, old.id]);
        let mut counts = s.count_by_state().unwrap();
        counts.sort_by_key(|(st, _)| st.as_str());
        assert_eq!(
            counts,
            vec![
                (SessionState::Destroyed, 1),
                (SessionState::Idle, 1),
                (SessionState::Running, 1)
            ]
        );
    }

    #[test]
    fn events_are_sequenced_per_session() {
        let s = Store::open_in_memory().unwrap();
        let a = session(SessionState::Running);
        s.insert_session(&a, "t").unwrap();
        let mut e1 = Event::new("exec.start", Outcome::Info)
            .details(serde_json::json!({"argv": ["make", "test"]}));
        e1.session = Some(a.id.to_string());
        let mut e2 = Event::new("exec.exit", Outcome::Failure).rule("timeout");
        e2.session = Some(a.id.to_string());
        let global = Event::new("sandbox.reconcile", Outcome::Success);
        let s1 = s.append_event(&e1).unwrap();
        s.append_event(&global).unwrap();
        let s2 = s.append_event(&e2).unwrap();
        assert!(s2 > s1);
        let evs = s.events(Some(&a.id)).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].action, "exec.start");
        assert_eq!(evs[0].seq, s1);
        assert_eq!(evs[0].details["argv"][1], "test");
        assert_eq!(evs[1].outcome, Outcome::Failure);
        assert_eq!(evs[1].rule.as_deref(), Some("timeout"));
        assert_eq!(s.events(None).unwrap().len(), 1);
    }

    #[test]
    fn execs_record_counts_not_output() {
        let s = Store::open_in_memory().unwrap();
        let a = session(SessionState::Running);
        s.insert_session(&a, "t").unwrap();
        for (id, code) in [("x-1", Some(0)), ("x-2", Some(2)), ("x-3", None)] {
            s.insert_exec(&ExecRecord {
                session: a.id.clone(),
                exec_id: id.into(),
                argv: vec!["sh".into(), "-c".into(), "exit".into()],
                cwd: "/workspace".into(),
                started_at: brig_core::event::now_rfc3339(),
                ended_at: None,
                status: None,
                duration_ms: None,
                stdout_bytes: 0,
                stderr_bytes: 0,
                error: None,
            })
            .unwrap();
            s.finish_exec(
                &a.id,
                id,
                &ExecEnd {
                    ended_at: brig_core::event::now_rfc3339(),
                    status: Some(ExitStatus {
                        code,
                        signal: code.is_none().then_some(9),
                        timed_out: code.is_none(),
                    }),
                    duration_ms: 12,
                    stdout_bytes: 100,
                    stderr_bytes: 7,
                    error: None,
                },
            )
            .unwrap();
        }
        let execs = s.execs(&a.id).unwrap();
        assert_eq!(execs.len(), 3);
        assert_eq!(execs[0].argv, vec!["sh", "-c", "exit"]);
        assert_eq!(execs[0].stdout_bytes, 100);
        assert_eq!(execs[2].status.unwrap().signal, Some(9));
        assert!(execs[2].status.unwrap().timed_out);
        assert_eq!(s.exec_counts(&a.id).unwrap(), (3, 2));
        assert_eq!(
            s.finish_exec(&a.id, "x-404", &execs_end())
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        // Foreign keys hold: no exec for a session that does not exist.
        let ghost = session(SessionState::Running);
        let mut rec = execs[0].clone();
        rec.session = ghost.id;
        assert!(s.insert_exec(&rec).is_err());
    }

    fn execs_end() -> ExecEnd {
        ExecEnd {
            ended_at: String::new(),
            status: None,
            duration_ms: 0,
            stdout_bytes: 0,
            stderr_bytes: 0,
            error: None,
        }
    }
}
