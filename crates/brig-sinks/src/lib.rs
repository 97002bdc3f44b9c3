//! brig's SIEM sinks: at-least-once delivery of journal events.
//!
//! The journal (SQLite) is the durable buffer. Each sink keeps a cursor, the
//! `seq` of the last event the sink acknowledged; a runner per sink reads the
//! events after its cursor in batches, delivers them, and moves the cursor only
//! after the acknowledgement. So nothing is lost while a sink is down or brig
//! restarts, each sink resumes from its last ack, and a re-delivered event
//! carries the same event id. See `docs/SINKS.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use brig_core::event::Event;
use brig_core::{Error, Result};

pub mod config;
mod http;
mod runner;
pub mod sigv4;
mod sinks;

pub use config::{RetryConfig, SecretRef, SinkConfig, SinkKind, SyslogTransport};
pub use runner::{RunnerOptions, SinkRunner, SinkStatus, Wakeup};

/// Where the runners read events from: the journal.
pub trait EventSource: Send + Sync {
    /// Up to `limit` events with `seq > seq`, in ascending `seq` order.
    fn events_after(&self, seq: i64, limit: usize) -> Result<Vec<Event>>;
    /// The highest `seq` in the journal (0 when empty).
    fn head_seq(&self) -> Result<i64>;
}

/// Where each sink's cursor (last acknowledged `seq`) is kept. `set` must be
/// durable when it returns: a runner resumes from `get` after a restart.
pub trait CursorStore: Send + Sync {
    fn get(&self, sink: &str) -> Result<Option<i64>>;
    fn set(&self, sink: &str, seq: i64) -> Result<()>;
}

/// An in-memory journal: for tests and for embedding without a store.
#[derive(Default)]
pub struct MemorySource {
    events: Mutex<Vec<Event>>,
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
}

/// Cursors in memory: lost on restart, for tests.
#[derive(Default)]
pub struct MemoryCursors {
    map: Mutex<BTreeMap<String, i64>>,
}

impl MemoryCursors {
    pub fn new() -> Self {
        Self::default()
    }
}

impl CursorStore for MemoryCursors {
    fn get(&self, sink: &str) -> Result<Option<i64>> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sink)
            .copied())
    }
    fn set(&self, sink: &str, seq: i64) -> Result<()> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sink.to_string(), seq);
        Ok(())
    }
}

/// Cursors in one small JSON file (`{"sink": seq}`), replaced atomically
/// (write a temporary file, fsync, rename, fsync the directory) so a crash
/// leaves either the old or the new cursors, never a torn file.
pub struct FileCursorStore {
    path: PathBuf,
    map: Mutex<BTreeMap<String, i64>>,
}

impl FileCursorStore {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let map = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
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

    fn persist(&self, map: &BTreeMap<String, i64>) -> Result<()> {
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
    fn get(&self, sink: &str) -> Result<Option<i64>> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sink)
            .copied())
    }
    fn set(&self, sink: &str, seq: i64) -> Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = map.clone();
        next.insert(sink.to_string(), seq);
        self.persist(&next)?;
        *map = next;
        Ok(())
    }
}
