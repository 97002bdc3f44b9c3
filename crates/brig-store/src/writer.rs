//! The group-commit writer: one thread owns the journal's appends and
//! commits every write that is waiting in one IMMEDIATE transaction.
//!
//! Callers hand the writer a closure over a [`Tx`] (the store's write
//! operations: append events, insert or update a session, record an exec's
//! start or end) and wait for its result. The thread takes the first waiting
//! write, then every other write queued behind it (up to
//! [`WriterOptions::max_batch`]), runs each inside its own SAVEPOINT of one
//! transaction, commits once, and only then answers every caller. So:
//!
//! - a caller's write is committed (as durable as the store's `synchronous`
//!   setting makes any commit) before its call returns, exactly as with
//!   [`Store::append_events`];
//! - the hash chain stays one chain: writes are applied one after the other
//!   in the order they reached the writer, each seeing the chain head the
//!   previous one left;
//! - a write that fails (a duplicate event id, an unknown session, a panic)
//!   is rolled back to its savepoint and fails alone; the rest of its batch
//!   commits;
//! - a transaction that cannot begin or commit fails every write of the
//!   batch with the same error, and none of the batch is written.
//!
//! No write waits for a timer: a batch is whatever queued up while the
//! previous commit ran, so a lone writer pays one commit as before and
//! concurrent writers share one.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::Arc;

use crate::Masks;
use brig_core::event::Event;
use brig_core::session::SessionInfo;
use brig_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{
    add_session_record_on, append_events_on, append_owned_on, db_err, finish_exec_on,
    insert_exec_on, insert_session_on, set_session_git_on, update_session_on, ExecEnd, ExecRecord,
    Store,
};

/// The store's write operations inside one write of a group commit.
pub struct Tx<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) red: &'a Masks,
    /// The highest seq this write appended (0 if none).
    last_seq: Cell<i64>,
}

impl Tx<'_> {
    pub(crate) fn appended(&self, seqs: &[i64]) {
        if let Some(&s) = seqs.last() {
            self.last_seq.set(self.last_seq.get().max(s));
        }
    }

    /// Append an event, redacted and chained; returns its seq.
    pub fn append_event(&self, ev: &Event) -> Result<i64> {
        let seqs = self.append_events(std::slice::from_ref(ev))?;
        Ok(seqs[0])
    }

    /// Append events in order; returns their seqs.
    pub fn append_events(&self, evs: &[Event]) -> Result<Vec<i64>> {
        let seqs = append_events_on(self.conn, self.red, evs)?;
        self.appended(&seqs);
        Ok(seqs)
    }

    /// [`Tx::append_events`] of events the caller no longer needs (they
    /// are redacted in place instead of copied).
    pub fn append_events_owned(&self, evs: Vec<Event>) -> Result<Vec<i64>> {
        let seqs = append_owned_on(self.conn, self.red, evs.into_iter())?;
        self.appended(&seqs);
        Ok(seqs)
    }

    /// See [`Store::insert_session`].
    pub fn insert_session(&self, info: &SessionInfo, reason: &str) -> Result<()> {
        insert_session_on(self.conn, info, reason)
    }

    /// See [`Store::update_session`].
    pub fn update_session(&self, info: &SessionInfo, reason: &str) -> Result<()> {
        update_session_on(self.conn, info, reason)
    }

    /// See [`Store::record_exec_start`].
    pub fn record_exec_start(
        &self,
        info: &SessionInfo,
        rec: &ExecRecord,
        ev: &Event,
    ) -> Result<()> {
        update_session_on(self.conn, info, "exec started")?;
        insert_exec_on(self.conn, self.red, rec)?;
        self.append_events(std::slice::from_ref(ev)).map(|_| ())
    }

    /// What a session's checkout pinned, with its event (issue 5).
    pub fn set_session_git(
        &self,
        session: &brig_core::SessionId,
        record: &serde_json::Value,
        ev: &Event,
    ) -> Result<()> {
        set_session_git_on(self.conn, session, record)?;
        self.append_events(std::slice::from_ref(ev)).map(|_| ())
    }

    /// One of a session's records of `kind` (read back with
    /// [`Store::session_records`]), with its event.
    pub fn add_session_record(
        &self,
        session: &brig_core::SessionId,
        kind: &str,
        record: &serde_json::Value,
        ev: &Event,
    ) -> Result<()> {
        // Kept redacted, like the event that carries the same record.
        let record = self.red.redact_value(record);
        add_session_record_on(self.conn, session, kind, &ev.time, &record)?;
        self.append_events(std::slice::from_ref(ev)).map(|_| ())
    }

    /// See [`Store::record_exec_end`].
    pub fn record_exec_end(
        &self,
        info: &SessionInfo,
        exec_id: &str,
        end: &ExecEnd,
        ev: &Event,
    ) -> Result<()> {
        finish_exec_on(self.conn, &info.id, exec_id, end)?;
        update_session_on(self.conn, info, "exec finished")?;
        self.append_events(std::slice::from_ref(ev)).map(|_| ())
    }
}

/// How the writer batches, and whom it tells about commits.
#[derive(Clone)]
pub struct WriterOptions {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Called on the writer thread after every commit that appended events,
    /// with the new chain head's seq (e.g. to wake the journal sinks).
    pub on_commit: Option<Arc<dyn Fn(i64) + Send + Sync>>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_batch: 1024,
            on_commit: None,
        }
    }
}

impl std::fmt::Debug for WriterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterOptions")
            .field("max_batch", &self.max_batch)
            .field("on_commit", &self.on_commit.is_some())
            .finish()
    }
}

/// One write waiting in the queue.
trait Job: Send {
    /// Runs the write; `Err` if it failed (its savepoint is rolled back).
    fn run(&mut self, tx: &Tx<'_>) -> std::result::Result<(), ()>;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: std::result::Result<(), &Error>);
}

struct Pending<T, F> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
{
    fn run(&mut self, tx: &Tx<'_>) -> std::result::Result<(), ()> {
        let Some(f) = self.f.take() else {
            return Err(());
        };
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| f(tx))).unwrap_or_else(|_| {
            Err(Error::internal(
                "a journal write panicked; it was rolled back",
            ))
        });
        let ok = out.is_ok();
        self.out = Some(out);
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), &Error>) {
        let me = *self;
        let answer = match (commit, me.out) {
            // A write that failed by itself says why, whatever the batch did.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), _) => Err(e.clone()),
            (Ok(()), None) => Err(Error::internal("journal write was not run")),
        };
        // The caller may have stopped waiting (a dropped request); the
        // write stands either way.
        let _ = me.reply.send(answer);
    }
}

/// The handle callers write through. Cheap to clone; the thread stops when
/// the last handle is dropped, after the writes already queued.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

fn stopped() -> Error {
    Error::internal("the journal writer thread has stopped; the write was not made")
        .hint("see brig serve's log for why; restart brig serve")
}

impl Writer {
    /// Start the writer thread for `store`.
    pub fn spawn(store: Arc<Store>, opts: WriterOptions) -> Result<Writer> {
        let (queue, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("brig-journal-writer".into())
            .spawn(move || run(store, rx, opts))
            .map_err(|e| Error::internal(format!("cannot start the journal writer thread: {e}")))?;
        Ok(Writer { queue })
    }

    fn submit<T, F>(&self, f: F) -> oneshot::Receiver<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        // If the thread is gone the job (and its sender) is dropped, and
        // the receiver reports it.
        let _ = self.queue.send(Box::new(Pending {
            f: Some(f),
            out: None,
            reply,
        }));
        rx
    }

    /// Run `f` in the next group commit; returns once it is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(f).await.unwrap_or_else(|_| Err(stopped()))
    }

    /// [`Writer::write`] for synchronous callers (not inside an async task).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(f)
            .blocking_recv()
            .unwrap_or_else(|_| Err(stopped()))
    }
}

fn run(store: Arc<Store>, rx: mpsc::Receiver<Box<dyn Job>>, opts: WriterOptions) {
    let max = opts.max_batch.max(1);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let n = batch.len();
        match store.group_commit(&mut batch) {
            Ok(head) => {
                for j in batch {
                    j.finish(Ok(()));
                }
                if let (Some(head), Some(cb)) = (head, &opts.on_commit) {
                    cb(head);
                }
            }
            Err(e) => {
                let e = e.context(format!(
                    "journal group commit of {n} write(s) failed and was rolled back (none of them was written)"
                ));
                for j in batch {
                    j.finish(Err(&e));
                }
            }
        }
    }
}

impl Store {
    /// Runs `jobs` in one IMMEDIATE transaction, each in its own savepoint
    /// (a lone job needs none: the transaction is its savepoint). Returns
    /// the chain head's seq if any job appended events.
    fn group_commit(&self, jobs: &mut [Box<dyn Job>]) -> Result<Option<i64>> {
        let red = self.masks();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err("begin group commit"))?;
        let mut head = None;
        if let [job] = jobs {
            let t = Tx {
                conn: &tx,
                red: &red,
                last_seq: Cell::new(0),
            };
            if job.run(&t).is_err() {
                // The job holds its own error; nothing of it stays.
                tx.rollback().map_err(db_err("roll back a failed write"))?;
                return Ok(None);
            }
            head = Some(t.last_seq.get()).filter(|&s| s > 0);
            tx.commit().map_err(db_err("commit"))?;
            return Ok(head);
        }
        // Savepoints by hand, with cached statements: one parse per
        // connection, not two per write.
        let sp = |sql: &str| -> Result<()> {
            tx.prepare_cached(sql)
                .and_then(|mut st| st.execute([]))
                .map(|_| ())
                .map_err(db_err("savepoint"))
        };
        for job in jobs.iter_mut() {
            sp("SAVEPOINT brig_write")?;
            let t = Tx {
                conn: &tx,
                red: &red,
                last_seq: Cell::new(0),
            };
            let ok = job.run(&t).is_ok();
            let last = t.last_seq.get();
            if ok {
                sp("RELEASE brig_write")?;
                if last > 0 {
                    head = Some(last);
                }
            } else {
                // Nothing of the failed write stays, and the chain head is
                // as it was before it.
                sp("ROLLBACK TO brig_write")?;
                sp("RELEASE brig_write")?;
            }
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(head)
    }
}
