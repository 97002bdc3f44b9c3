//! One task per sink: read after the cursor, deliver, advance on ack.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::event::now_rfc3339;
use brig_core::{Error, Result};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::SinkConfig;
use crate::sinks::{self, FailKind, Sink};
use crate::{Cursor, CursorStore, EventSource, Record};

/// How the runners behave, beyond each sink's own config.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Where events a sink refuses for good are written
    /// (`<dir>/<sink>.dead-letter.jsonl`). Without it such a sink stops at the
    /// refused event and says so in its status: nothing is dropped.
    pub dead_letter_dir: Option<PathBuf>,
    /// The host name put in events; defaults to the kernel's.
    pub hostname: Option<String>,
    /// How long `shutdown` may spend delivering what is left.
    pub shutdown_timeout: Duration,
    /// How often an idle runner looks for events without a wakeup (events
    /// written by another process).
    pub poll_interval: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            dead_letter_dir: None,
            hostname: None,
            shutdown_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Tells the runners that events were appended. Cheap to clone; a wakeup is
/// never lost, even if a runner is busy when it is sent.
#[derive(Clone)]
pub struct Wakeup(Arc<watch::Sender<u64>>);

impl Default for Wakeup {
    fn default() -> Self {
        Wakeup(Arc::new(watch::channel(0).0))
    }
}

impl Wakeup {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// What `brig journal sinks` shows for one sink.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SinkStatus {
    pub name: String,
    pub kind: String,
    /// `seq` of the last acknowledged event.
    pub cursor: i64,
    /// `seq` of the last acknowledged signed checkpoint (0: none yet).
    pub checkpoint_cursor: i64,
    /// `seq` of the newest event in the journal.
    pub head: i64,
    /// Events not yet acknowledged by this sink.
    pub lag: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_success_at: Option<String>,
    /// Records (events and checkpoints) acknowledged since start (a
    /// re-delivered one counts again).
    pub delivered_total: u64,
    pub dead_lettered_total: u64,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Something the sink accepted but reported (e.g. an OTLP partial success).
    pub last_warning: Option<String>,
}

struct Handle {
    status: Arc<Mutex<SinkStatus>>,
    task: tokio::task::JoinHandle<()>,
}

/// The running sinks.
pub struct SinkRunner {
    handles: Vec<Handle>,
    source: Arc<dyn EventSource>,
    shutdown: watch::Sender<bool>,
    shutdown_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SinkRunner {
    /// Checks every config (errors name the sink and the key), reads each
    /// sink's cursor, and starts one task per sink. A sink that is down at
    /// start is not an error: its events wait in the journal. Must be called
    /// inside a tokio runtime.
    pub fn start(
        cfgs: Vec<SinkConfig>,
        source: Arc<dyn EventSource>,
        cursors: Arc<dyn CursorStore>,
        wakeup: &Wakeup,
        opts: RunnerOptions,
    ) -> Result<SinkRunner> {
        let mut names = BTreeSet::new();
        for c in &cfgs {
            if !names.insert(c.name.clone()) {
                return Err(Error::invalid(format!(
                    "journal sink name '{}' is used twice",
                    c.name
                ))
                .hint("each sink needs its own name: it keys the sink's cursor"));
            }
        }
        let mut built: Vec<(SinkConfig, Box<dyn Sink>, Cursor)> = Vec::new();
        for c in cfgs {
            let sink = sinks::build(&c, &opts)?;
            let cursor = cursors
                .get(&c.name)
                .map_err(|e| e.context(format!("reading the cursor of journal sink '{}'", c.name)))?
                .unwrap_or_default();
            built.push((c, sink, cursor));
        }
        let (shutdown, _) = watch::channel(false);
        let mut handles = Vec::new();
        for (cfg, sink, cursor) in built {
            let status = Arc::new(Mutex::new(SinkStatus {
                name: cfg.name.clone(),
                kind: cfg.kind.type_name().to_string(),
                cursor: cursor.seq,
                checkpoint_cursor: cursor.checkpoint_seq,
                head: 0,
                lag: 0,
                last_error: None,
                last_error_at: None,
                last_success_at: None,
                delivered_total: 0,
                dead_lettered_total: 0,
                consecutive_failures: 0,
                last_warning: None,
            }));
            let worker = Worker {
                cfg,
                sink,
                source: source.clone(),
                cursors: cursors.clone(),
                cursor,
                status: status.clone(),
                wake: wakeup.subscribe(),
                _wakeup: wakeup.clone(),
                stop: shutdown.subscribe(),
                orphaned: false,
                opts: opts.clone(),
            };
            handles.push(Handle {
                status,
                task: tokio::spawn(worker.run()),
            });
        }
        Ok(SinkRunner {
            handles,
            source,
            shutdown,
            shutdown_timeout: opts.shutdown_timeout,
        })
    }

    /// Each sink's cursor, lag and last error.
    pub fn status(&self) -> Vec<SinkStatus> {
        let head = self.source.head_seq().ok();
        self.handles
            .iter()
            .map(|h| {
                let mut s = lock(&h.status).clone();
                if let Some(head) = head {
                    s.head = head;
                }
                s.lag = (s.head - s.cursor).max(0);
                s
            })
            .collect()
    }

    /// Delivers what is deliverable within the shutdown timeout, then stops
    /// every runner. A sink that is down is not waited for: its events stay
    /// in the journal after its cursor.
    pub async fn shutdown(self) -> Vec<SinkStatus> {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + self.shutdown_timeout;
        for h in &self.handles {
            let abort = h.task.abort_handle();
            if tokio::time::timeout_at(deadline, async {
                while !h.task.is_finished() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_err()
            {
                abort.abort();
            }
        }
        let status = self.status();
        for h in self.handles {
            let _ = h.task.await;
        }
        status
    }
}

struct Worker {
    cfg: SinkConfig,
    sink: Box<dyn Sink>,
    source: Arc<dyn EventSource>,
    cursors: Arc<dyn CursorStore>,
    cursor: Cursor,
    status: Arc<Mutex<SinkStatus>>,
    wake: watch::Receiver<u64>,
    /// Keeps the wakeup channel open even if the host drops its `Wakeup`.
    _wakeup: Wakeup,
    stop: watch::Receiver<bool>,
    /// The `SinkRunner` was dropped without `shutdown`: stop at once (the
    /// cursor is already stored, so nothing is lost).
    orphaned: bool,
    opts: RunnerOptions,
}

impl Worker {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps until `until`, a wakeup, or shutdown.
    async fn idle(&mut self, until: Instant) {
        tokio::select! {
            _ = self.wake.changed() => {}
            r = self.stop.changed() => self.orphaned |= r.is_err(),
            _ = tokio::time::sleep_until(until) => {}
        }
    }

    /// Sleeps for a retry backoff; only shutdown cuts it short.
    async fn backoff(&mut self, d: Duration) {
        tokio::select! {
            r = self.stop.changed() => self.orphaned |= r.is_err(),
            _ = tokio::time::sleep(d) => {}
        }
    }

    fn fail(&self, msg: &str) -> u32 {
        let mut s = lock(&self.status);
        s.consecutive_failures += 1;
        s.last_error = Some(msg.to_string());
        s.last_error_at = Some(now_rfc3339());
        let n = s.consecutive_failures;
        // Log the first failure and then less and less often: a sink down for
        // hours should not flood brig's own log.
        if n.is_power_of_two() {
            tracing::warn!(sink = %self.cfg.name, failures = n, error = %msg, "journal sink delivery failed");
        }
        n
    }

    /// Moves the cursor past `done` (a prefix of `batch`, acknowledged or
    /// dead-lettered) and stores it.
    async fn advance(&mut self, batch: &[Record], done: usize, delivered: u64) {
        let cursor = cursor_after(self.cursor, batch, done);
        self.cursor = cursor;
        let cursors = self.cursors.clone();
        let name = self.cfg.name.clone();
        let res = tokio::task::spawn_blocking(move || cursors.set(&name, cursor))
            .await
            .unwrap_or_else(|e| Err(Error::internal(e.to_string())));
        let mut s = lock(&self.status);
        s.cursor = cursor.seq;
        s.checkpoint_cursor = cursor.checkpoint_seq;
        s.delivered_total += delivered;
        s.last_success_at = Some(now_rfc3339());
        if s.consecutive_failures > 0 {
            tracing::info!(sink = %self.cfg.name, "journal sink delivering again");
        }
        s.consecutive_failures = 0;
        if let Err(e) = res {
            // The events were acknowledged; a lost cursor only means they are
            // delivered again after a restart (at-least-once still holds).
            s.last_error = Some(format!("cannot store the cursor: {e}"));
            s.last_error_at = Some(now_rfc3339());
        }
    }

    /// Appends refused records to the dead-letter file, fsynced.
    async fn dead_letter(
        &mut self,
        events: Vec<(Record, String)>,
    ) -> std::result::Result<(), String> {
        let Some(dir) = self.opts.dead_letter_dir.clone() else {
            return Err("no dead-letter directory is configured, so the sink stops here rather than drop it".into());
        };
        let path = dir.join(format!("{}.dead-letter.jsonl", self.cfg.name));
        let sink = self.cfg.name.clone();
        let n = events.len() as u64;
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            for (r, why) in events {
                let line = match r {
                    Record::Event(e) => serde_json::json!({
                        "sink": sink, "seq": e.seq, "id": e.id, "error": why,
                        "at": now_rfc3339(), "event": e,
                    }),
                    Record::Checkpoint(c) => serde_json::json!({
                        "sink": sink, "seq": c.seq, "error": why,
                        "at": now_rfc3339(), "checkpoint": c,
                    }),
                };
                f.write_all(format!("{line}\n").as_bytes())?;
            }
            f.sync_data()
        })
        .await
        .map_err(|e| e.to_string())?;
        res.map_err(|e| format!("cannot write the dead-letter file: {e}"))?;
        lock(&self.status).dead_lettered_total += n;
        tracing::warn!(sink = %self.cfg.name, records = n, "journal records dead-lettered");
        Ok(())
    }

    async fn run(mut self) {
        // While the cursor is before isolate_until, records go one at a time
        // to find the ones a sink refuses without holding back the rest of
        // their batch.
        let mut isolate_until = Cursor::default();
        let mut failures = 0u32;
        let mut poison = 0u32;
        let mut pending_since: Option<Instant> = None;
        loop {
            if self.orphaned {
                return;
            }
            let stopping = self.stopping();
            let limit = if self.cursor.seq < isolate_until.seq
                || self.cursor.checkpoint_seq < isolate_until.checkpoint_seq
            {
                1
            } else {
                self.cfg.batch_size.min(self.sink.max_batch()).max(1)
            };
            let (source, cursor) = (self.source.clone(), self.cursor);
            let batch = tokio::task::spawn_blocking(move || fetch(&*source, cursor, limit))
                .await
                .unwrap_or_else(|e| Err(Error::internal(e.to_string())));
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    failures = self.fail(&format!("cannot read the journal: {e}"));
                    if stopping {
                        return;
                    }
                    let d = self.cfg.retry.delay(failures);
                    self.backoff(d).await;
                    continue;
                }
            };
            if batch.is_empty() {
                if stopping {
                    return;
                }
                pending_since = None;
                let until = Instant::now() + self.opts.poll_interval;
                self.idle(until).await;
                continue;
            }
            // A partial batch waits up to flush_interval for more events.
            if batch.len() < limit && !stopping && failures == 0 && poison == 0 {
                let due = *pending_since.get_or_insert_with(Instant::now) + self.cfg.flush_interval;
                if Instant::now() < due {
                    self.idle(due).await;
                    continue;
                }
            }
            pending_since = None;
            let last = batch.last().map(Record::seq).unwrap_or(self.cursor.seq);
            match self.sink.deliver(&batch).await {
                Ok(d) => {
                    if let Some(w) = d.warning {
                        lock(&self.status).last_warning = Some(w);
                    }
                    if !d.rejected.is_empty() {
                        let refused: Vec<(Record, String)> = d
                            .rejected
                            .into_iter()
                            .filter_map(|(i, why)| {
                                batch.get(i).cloned().map(|e| {
                                    (e, format!("accepted but dropped by the sink: {why}"))
                                })
                            })
                            .collect();
                        if self.opts.dead_letter_dir.is_none() {
                            // The sink already dropped them; re-sending the batch
                            // would only duplicate the rest forever. Say so loudly.
                            let ids: Vec<String> = refused.iter().map(|(r, _)| r.label()).collect();
                            let msg = format!(
                                "the sink accepted but dropped {} ({}); no dead-letter directory is configured to keep them",
                                ids.join(", "),
                                refused[0].1
                            );
                            tracing::error!(sink = %self.cfg.name, error = %msg, "journal events dropped by the sink");
                            self.advance(&batch, batch.len(), batch.len() as u64).await;
                            lock(&self.status).last_error = Some(msg);
                            failures = 0;
                            poison = 0;
                            continue;
                        }
                        if let Err(m) = self.dead_letter(refused).await {
                            // Holding the cursor re-sends the whole batch; that
                            // duplicates, but loses nothing.
                            failures = self.fail(&format!(
                                "the sink dropped records of the batch ending at seq {last}, and {m}"
                            ));
                            let d = self.cfg.retry.delay(failures);
                            self.backoff(d).await;
                            continue;
                        }
                    }
                    self.advance(&batch, batch.len(), batch.len() as u64).await;
                    failures = 0;
                    poison = 0;
                }
                Err(e) => {
                    let acked = e.acked.min(batch.len());
                    if acked > 0 {
                        self.advance(&batch, acked, acked as u64).await;
                        failures = 0;
                        poison = 0;
                    }
                    let rest = &batch[acked..];
                    match e.kind {
                        FailKind::Poison if rest.len() > 1 => {
                            self.fail(&format!(
                                "the sink refused a batch ({}); sending its {} events one at a time to find the bad one",
                                e.message,
                                rest.len()
                            ));
                            isolate_until = cursor_after(self.cursor, &batch, batch.len());
                        }
                        FailKind::Poison if !rest.is_empty() => {
                            poison += 1;
                            let ev = rest[0].clone();
                            let msg = format!(
                                "the sink refused {} ({}): attempt {poison} of {}",
                                ev.label(),
                                e.message,
                                self.cfg.poison_attempts
                            );
                            failures = self.fail(&msg);
                            if poison >= self.cfg.poison_attempts {
                                match self
                                    .dead_letter(vec![(ev.clone(), e.message.clone())])
                                    .await
                                {
                                    Ok(()) => {
                                        self.advance(rest, 1, 0).await;
                                        lock(&self.status).last_error = Some(format!(
                                            "{} dead-lettered after {poison} refusals: {}",
                                            ev.label(),
                                            e.message
                                        ));
                                        poison = 0;
                                        failures = 0;
                                        continue;
                                    }
                                    Err(m) => {
                                        self.fail(&format!("{msg}; {m}"));
                                    }
                                }
                            }
                            if stopping {
                                return;
                            }
                            let d = self.cfg.retry.delay(failures);
                            self.backoff(d).await;
                        }
                        _ if acked > 0 && !rest.is_empty() => {
                            // Progress was made: try the rest straight away.
                            self.fail(&e.message);
                        }
                        _ => {
                            failures = self.fail(&e.message);
                            if stopping {
                                return;
                            }
                            let d = self
                                .cfg
                                .retry
                                .delay(failures)
                                .max(e.retry_after.unwrap_or_default());
                            self.backoff(d).await;
                        }
                    }
                }
            }
        }
    }
}

/// The next records after `cursor`: up to `limit` events, and the signed
/// checkpoints after the checkpoint cursor whose event is among them or
/// already delivered, each placed right after the event it signs. A
/// checkpoint of an event not yet read waits for its event.
fn fetch(source: &dyn EventSource, cursor: Cursor, limit: usize) -> brig_core::Result<Vec<Record>> {
    let events = source.events_after(cursor.seq, limit)?;
    let upto = events.last().map_or(cursor.seq, |e| e.seq);
    let cps = if upto > cursor.checkpoint_seq {
        source.checkpoints_between(cursor.checkpoint_seq, upto, limit)?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(events.len() + cps.len());
    let mut cps = cps.into_iter().peekable();
    for e in events {
        while let Some(c) = cps.next_if(|c| c.seq < e.seq) {
            out.push(Record::Checkpoint(c));
        }
        let seq = e.seq;
        out.push(Record::Event(e));
        while let Some(c) = cps.next_if(|c| c.seq == seq) {
            out.push(Record::Checkpoint(c));
        }
    }
    out.extend(cps.map(Record::Checkpoint));
    if out.len() > limit {
        // Keep whole groups of checkpoints of one seq (the cursor counts
        // checkpoints by seq), unless one group alone is over the limit.
        let mut cut = limit;
        while cut > 1
            && matches!((&out[cut - 1], &out[cut]), (Record::Checkpoint(a), Record::Checkpoint(b)) if a.seq == b.seq)
        {
            cut -= 1;
        }
        out.truncate(cut);
    }
    Ok(out)
}

/// The cursor once the first `done` records of `batch` are acknowledged.
/// A checkpoint acknowledged while another of the same seq is not yet
/// leaves the checkpoint cursor before that seq: both are sent again.
fn cursor_after(mut cursor: Cursor, batch: &[Record], done: usize) -> Cursor {
    let done = done.min(batch.len());
    for (i, r) in batch[..done].iter().enumerate() {
        match r {
            Record::Event(e) => cursor.seq = cursor.seq.max(e.seq),
            Record::Checkpoint(c) => {
                let split = matches!(batch.get(i + 1), Some(Record::Checkpoint(n)) if n.seq == c.seq)
                    && i + 1 >= done;
                if !split {
                    cursor.checkpoint_seq = cursor.checkpoint_seq.max(c.seq);
                }
            }
        }
    }
    cursor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemorySource, SignedCheckpoint};
    use brig_core::event::{Event, Outcome};

    fn cp(seq: i64, key: &str) -> SignedCheckpoint {
        SignedCheckpoint {
            seq,
            hash: "h".into(),
            time: "2026-01-01T00:00:00Z".into(),
            key_id: key.into(),
            signature: "s".into(),
        }
    }

    fn kinds(rs: &[Record]) -> Vec<String> {
        rs.iter()
            .map(|r| match r {
                Record::Event(e) => format!("e{}", e.seq),
                Record::Checkpoint(c) => format!("c{}{}", c.seq, c.key_id),
            })
            .collect()
    }

    #[test]
    fn checkpoints_follow_the_event_they_sign_and_wait_for_it() {
        let src = MemorySource::new();
        for _ in 0..6 {
            src.append(Event::new("x", Outcome::Info));
        }
        src.add_checkpoint(cp(2, "a"));
        src.add_checkpoint(cp(4, "a"));
        src.add_checkpoint(cp(4, "b"));
        src.add_checkpoint(cp(6, "a"));
        let c0 = Cursor::default();
        let b = fetch(&src, c0, 3).unwrap();
        assert_eq!(kinds(&b), ["e1", "e2", "c2a"]);
        let c1 = cursor_after(c0, &b, b.len());
        assert_eq!(
            c1,
            Cursor {
                seq: 2,
                checkpoint_seq: 2
            }
        );
        // A tie group is not split by the limit...
        let b = fetch(&src, c1, 3).unwrap();
        assert_eq!(kinds(&b), ["e3", "e4"]);
        let b = fetch(
            &src,
            Cursor {
                seq: 4,
                checkpoint_seq: 2,
            },
            3,
        )
        .unwrap();
        assert_eq!(kinds(&b), ["c4a", "c4b", "e5"]);
        // ...and a partial ack inside one re-sends the whole group.
        assert_eq!(
            cursor_after(
                Cursor {
                    seq: 4,
                    checkpoint_seq: 2
                },
                &b,
                1
            ),
            Cursor {
                seq: 4,
                checkpoint_seq: 2
            }
        );
        assert_eq!(
            cursor_after(
                Cursor {
                    seq: 4,
                    checkpoint_seq: 2
                },
                &b,
                2
            ),
            Cursor {
                seq: 4,
                checkpoint_seq: 4
            }
        );
        // Caught up on events, a late checkpoint is still delivered.
        let b = fetch(
            &src,
            Cursor {
                seq: 6,
                checkpoint_seq: 4,
            },
            10,
        )
        .unwrap();
        assert_eq!(kinds(&b), ["c6a"]);
        // An old cursor (no checkpoint cursor yet) gets the past checkpoints.
        let b = fetch(
            &src,
            Cursor {
                seq: 6,
                checkpoint_seq: 0,
            },
            10,
        )
        .unwrap();
        assert_eq!(kinds(&b), ["c2a", "c4a", "c4b", "c6a"]);
        assert!(fetch(
            &src,
            Cursor {
                seq: 6,
                checkpoint_seq: 6
            },
            10
        )
        .unwrap()
        .is_empty());
    }
}
