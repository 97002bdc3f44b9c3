//! brig's SIEM sinks: at-least-once delivery of journal events.
//!
//! The journal (SQLite) is the durable buffer. Each sink keeps a cursor, the
//! `seq` of the last event the sink acknowledged; a runner per sink reads the
//! events after its cursor in batches, delivers them, and moves the cursor only
//! after the acknowledgement. So nothing is lost while a sink is down or brig
//! restarts, each sink resumes from its last ack, and a re-delivered event
//! carries the same event id. See `docs/SINKS.md`.
//!
//! Sinks also deliver every signed checkpoint of the chain head, each right
//! after the event it signs, from a second cursor (the seq of the last
//! checkpoint the sink acknowledged), so a SIEM holds evidence that
//! `brig journal verify --checkpoint` can check the database against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use brig_core::event::Event;
use brig_core::{Error, Result};
use serde::{Deserialize, Serialize};

pub mod config;
mod http;
mod runner;
pub use brig_sigv4 as sigv4;
mod sinks;

pub use config::{RetryConfig, SecretRef, SinkConfig, SinkKind, SyslogTransport};
pub use runner::{RunnerOptions, SinkRunner, SinkStatus, Wakeup};

/// A signed checkpoint of the journal's chain head: "event `seq` has hash
/// `hash`", Ed25519-signed by brig (`brig_audit::Checkpoint`, field for
/// field). Sinks carry it verbatim; only a verifier with the public key can
/// tell a valid one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub time: String,
    pub key_id: String,
    pub signature: String,
}

/// The value of the `record` member that marks a checkpoint in every
/// sink's JSON (events have no `record` member).
pub const CHECKPOINT_RECORD: &str = "checkpoint";

impl SignedCheckpoint {
    /// The checkpoint as sinks carry it: one line of JSON,
    /// `{"record":"checkpoint","seq","hash","time","key_id","signature"}`.
    /// `brig journal verify --checkpoint` reads it back.
    pub fn record_json(&self) -> String {
        #[derive(Serialize)]
        struct Rec<'a> {
            record: &'a str,
            seq: i64,
            hash: &'a str,
            time: &'a str,
            key_id: &'a str,
            signature: &'a str,
        }
        serde_json::to_string(&Rec {
            record: CHECKPOINT_RECORD,
            seq: self.seq,
            hash: &self.hash,
            time: &self.time,
            key_id: &self.key_id,
            signature: &self.signature,
        })
        .unwrap_or_else(|_| "{}".into())
    }
}

/// What a sink delivers: a journal event, or a signed checkpoint (always
/// after the event it signs).
#[derive(Clone, Debug)]
// Nearly every record is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Record {
    Event(Event),
    Checkpoint(SignedCheckpoint),
}

impl Record {
    pub fn seq(&self) -> i64 {
        match self {
            Record::Event(e) => e.seq,
            Record::Checkpoint(c) => c.seq,
        }
    }
    /// The one line of JSON every sink carries as the message.
    pub fn json(&self) -> String {
        match self {
            Record::Event(e) => serde_json::to_string(e).unwrap_or_else(|_| "{}".into()),
            Record::Checkpoint(c) => c.record_json(),
        }
    }
    /// The event id, or `checkpoint:<seq>` (for messages and dead letters).
    pub fn label(&self) -> String {
        match self {
            Record::Event(e) => format!("event seq {} id {}", e.seq, e.id),
            Record::Checkpoint(c) => format!("checkpoint of seq {}", c.seq),
        }
    }
}

/// Where the runners read events from: the journal.
pub trait EventSource: Send + Sync {
    /// Up to `limit` events with `seq > seq`, in ascending `seq` order.
    fn events_after(&self, seq: i64, limit: usize) -> Result<Vec<Event>>;
    /// The highest `seq` in the journal (0 when empty).
    fn head_seq(&self) -> Result<i64>;
    /// Up to `limit` signed checkpoints with `after < seq <= upto`, in
    /// ascending `seq` order. A source without checkpoints has none.
    fn checkpoints_between(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>> {
        let _ = (after, upto, limit);
        Ok(Vec::new())
    }
}

/// How far a sink has acknowledged: every event up to `seq` and every
/// checkpoint up to `checkpoint_seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub seq: i64,
    #[serde(default)]
    pub checkpoint_seq: i64,
}

/// Where each sink's cursor is kept. `set` must be durable (and write both
/// members at once) when it returns: a runner resumes from `get` after a
/// restart.
pub trait CursorStore: Send + Sync {
    fn get(&self, sink: &str) -> Result<Option<Cursor>>;
    fn set(&self, sink: &str, cursor: Cursor) -> Result<()>;
}

/// An in-memory journal: for tests and for embedding without a store.
#[derive(Default)]
pub struct MemorySource {
    events: Mutex<Vec<Event>>,
    checkpoints: Mutex<Vec<SignedCheckpoint>>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends an event, assigning the next `seq` like the store does.
    pub fn append(&self, mut event: Event) -> i64 {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let seq = events.last().map(|e| e.seq).unwrap_or(0) + 1;
        event.seq = seq;
        events.push(event);
        seq
    }
    /// Adds a checkpoint (kept in seq order). The source does not sign:
    /// the runner carries whatever it is given.
    pub fn add_checkpoint(&self, cp: SignedCheckpoint) {
        let mut cps = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        let at = cps.partition_point(|c| c.seq <= cp.seq);
        cps.insert(at, cp);
    }
}

impl EventSource for MemorySource {
    fn events_after(&self, seq: i64, limit: usize) -> Result<Vec<Event>> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let start = events.partition_point(|e| e.seq <= seq);
        Ok(events[start..].iter().take(limit).cloned().collect())
    }
    fn head_seq(&self) -> Result<i64> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        Ok(events.last().map(|e| e.seq).unwrap_or(0))
    }
    fn checkpoints_between(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>> {
        let cps = self.checkpoints.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cps
            .iter()
            .filter(|c| c.seq > after && c.seq <= upto)
            .take(limit)
            .cloned()
            .collect())
    }
}

/// Cursors in memory: lost on restart, for tests.
#[derive(Default)]
pub struct MemoryCursors {
    map: Mutex<BTreeMap<String, Cursor>>,
}

impl MemoryCursors {
    pub fn new() -> Self {
        Self::default()
    }
}

impl CursorStore for MemoryCursors {
    fn get(&self, sink: &str) -> Result<Option<Cursor>> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sink)
            .copied())
    }
    fn set(&self, sink: &str, cursor: Cursor) -> Result<()> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sink.to_string(), cursor);
        Ok(())
    }
}

/// Cursors in one small JSON file (`{"sink": {"seq": N, "checkpoint_seq":
/// M}}`; the older `{"sink": N}` is read as `{"seq": N}`), replaced
/// atomically (write a temporary file, fsync, rename, fsync the directory)
/// so a crash leaves either the old or the new cursors, never a torn file.
pub struct FileCursorStore {
    path: PathBuf,
    map: Mutex<BTreeMap<String, Cursor>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredCursor {
    Seq(i64),
    Both(Cursor),
}

impl FileCursorStore {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<BTreeMap<String, StoredCursor>>(&bytes)
                .map(|m| {
                    m.into_iter()
                        .map(|(k, v)| {
                            let c = match v {
                                StoredCursor::Seq(seq) => Cursor {
                                    seq,
                                    checkpoint_seq: 0,
                                },
                                StoredCursor::Both(c) => c,
                            };
                            (k, c)
                        })
                        .collect()
                })
                .map_err(|e| {
                Error::invalid(format!(
                    "sink cursor file {} is not valid JSON: {e}",
                    path.display()
                ))
                .hint("restore it from a backup, or delete it to re-deliver the whole journal to every sink")
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot read sink cursor file {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(FileCursorStore {
            path,
            map: Mutex::new(map),
        })
    }

    fn persist(&self, map: &BTreeMap<String, Cursor>) -> Result<()> {
        use std::io::Write;
        let ctx = |e: std::io::Error| {
            Error::internal(format!(
                "cannot write sink cursor file {}: {e}",
                self.path.display()
            ))
            .hint("check that brig's data directory is writable and not full")
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(ctx)?;
        f.write_all(&serde_json::to_vec(map).map_err(|e| Error::internal(e.to_string()))?)
            .map_err(ctx)?;
        f.sync_all().map_err(ctx)?;
        std::fs::rename(&tmp, &self.path).map_err(ctx)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl CursorStore for FileCursorStore {
    fn get(&self, sink: &str) -> Result<Option<Cursor>> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sink)
            .copied())
    }
    fn set(&self, sink: &str, cursor: Cursor) -> Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = map.clone();
        next.insert(sink.to_string(), cursor);
        self.persist(&next)?;
        *map = next;
        Ok(())
    }
}
