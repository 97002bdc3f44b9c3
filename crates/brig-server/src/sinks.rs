//! The journal's SIEM sinks in the control plane: brig-sinks runners fed
//! from the store. The events and checkpoints tables are the disk-backed
//! buffer and each sink's cursors (last event, last signed checkpoint) live
//! in the same database, so a sink that is down, or a brig that restarts
//! (even after kill -9), resumes from what it last acknowledged. Every
//! signed checkpoint reaches every sink after the event it signs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brig_core::event::Event;
use brig_core::Result;
use brig_sinks::{
    Cursor, CursorStore, EventSource, RunnerOptions, SignedCheckpoint, SinkConfig, SinkRunner,
    Wakeup,
};
use brig_store::Store;

/// The store, as the sink runners see it.
pub struct StoreJournal(pub Arc<Store>);

impl EventSource for StoreJournal {
    fn events_after(&self, seq: i64, limit: usize) -> Result<Vec<Event>> {
        self.0.events_after(seq, limit as i64)
    }
    fn head_seq(&self) -> Result<i64> {
        Ok(self.0.head()?.map_or(0, |(seq, _)| seq))
    }
    fn checkpoints_between(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<SignedCheckpoint>> {
        Ok(self
            .0
            .checkpoints_between(after, upto, limit as i64)?
            .into_iter()
            .map(signed)
            .collect())
    }
}

/// A checkpoint as sinks carry it (the same five fields).
pub fn signed(c: brig_audit::Checkpoint) -> SignedCheckpoint {
    SignedCheckpoint {
        seq: c.seq,
        hash: c.hash,
        time: c.time,
        key_id: c.key_id,
        signature: c.signature,
    }
}

impl CursorStore for StoreJournal {
    fn get(&self, sink: &str) -> Result<Option<Cursor>> {
        Ok(self
            .0
            .sink_cursors(sink)?
            .map(|(seq, checkpoint_seq)| Cursor {
                seq,
                checkpoint_seq,
            }))
    }
    fn set(&self, sink: &str, c: Cursor) -> Result<()> {
        self.0.set_sink_cursors(sink, c.seq, c.checkpoint_seq)
    }
}

/// Start a runner for the configured sinks (none configured: none started).
/// Events refused for good go to `<data_dir>/sinks/<sink>.dead-letter.jsonl`.
pub fn start(
    sinks: &[SinkConfig],
    store: Arc<Store>,
    data_dir: &Path,
    wakeup: &Wakeup,
) -> Result<Option<SinkRunner>> {
    if sinks.is_empty() {
        return Ok(None);
    }
    let journal = Arc::new(StoreJournal(store));
    let opts = RunnerOptions {
        dead_letter_dir: Some(data_dir.join("sinks")),
        // The journal writer wakes the runners after every commit and
        // every checkpoint; the poll is for writes of another process.
        poll_interval: Duration::from_millis(250),
        ..RunnerOptions::default()
    };
    SinkRunner::start(sinks.to_vec(), journal.clone(), journal, wakeup, opts).map(Some)
}
