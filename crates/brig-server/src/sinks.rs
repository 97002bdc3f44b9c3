//! The journal's SIEM sinks in the control plane: brig-sinks runners fed
//! from the store. The events table is the disk-backed buffer and each
//! sink's cursor lives in the same database, so a sink that is down, or a
//! brig that restarts (even after kill -9), resumes from its last
//! acknowledged event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brig_core::event::Event;
use brig_core::Result;
use brig_sinks::{CursorStore, EventSource, RunnerOptions, SinkConfig, SinkRunner, Wakeup};
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
}

impl CursorStore for StoreJournal {
    fn get(&self, sink: &str) -> Result<Option<i64>> {
        self.0.sink_cursor(sink)
    }
    fn set(&self, sink: &str, seq: i64) -> Result<()> {
        self.0.set_sink_cursor(sink, seq)
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
        // The store does not signal appends yet; a short poll keeps the
        // lag small without one.
        poll_interval: Duration::from_millis(250),
        ..RunnerOptions::default()
    };
    SinkRunner::start(sinks.to_vec(), journal.clone(), journal, wakeup, opts).map(Some)
}
