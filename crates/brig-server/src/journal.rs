//! The journal's signer and verifier in the control plane.
//!
//! Every event reaches the store through its redactor and hash chain
//! (brig-store). This module signs the chain head: every
//! `[journal] checkpoint_every` events or `checkpoint_interval`, and at
//! shutdown. Each checkpoint goes to `<data_dir>/journal/checkpoints.jsonl`
//! (fsynced, outside the database) first and to the database second, so a
//! checkpoint in the database is always also in the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_audit::checkpoint::{append_checkpoint_file, read_checkpoint_file, read_public_key};
use brig_audit::{Checkpoint, JournalKey, VerifyReport};
use brig_core::{Error, Result};
use brig_sinks::Wakeup;
use brig_store::{Store, Tx, Writer, WriterOptions};
use tokio::task::JoinHandle;

use crate::config::JournalConfig;
use crate::manager::Db;

/// The one writer of the journal in `brig serve`: a thread that commits
/// every write waiting at the same time in one transaction (group commit,
/// `brig_store::writer`), and wakes the sink runners after each commit.
#[derive(Clone)]
pub struct JournalWriter {
    writer: std::result::Result<Writer, Error>,
    wakeup: Wakeup,
}

impl JournalWriter {
    /// Start the writer thread. If it cannot start, every write fails with
    /// that error (fail closed: nothing is journaled out of order or lost
    /// silently).
    pub fn spawn(store: Arc<Store>) -> JournalWriter {
        let wakeup = Wakeup::new();
        let w = wakeup.clone();
        let writer = Writer::spawn(
            store,
            WriterOptions {
                on_commit: Some(Arc::new(move |_| w.notify())),
                ..WriterOptions::default()
            },
        );
        if let Err(e) = &writer {
            tracing::error!(error = %e, "journal writer did not start; every journaled write will fail");
        }
        JournalWriter { writer, wakeup }
    }

    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx<'_>) -> Result<T> + Send + 'static,
    {
        match &self.writer {
            Ok(w) => w.write(f).await,
            Err(e) => Err(e.clone()),
        }
    }

    /// Notified after every commit that appended events and every signed
    /// checkpoint: what the sink runners wait on.
    pub fn wakeup(&self) -> &Wakeup {
        &self.wakeup
    }
}

/// `<data_dir>/journal/checkpoints.jsonl`.
pub fn checkpoint_file(data_dir: &Path) -> PathBuf {
    data_dir.join("journal").join("checkpoints.jsonl")
}

pub struct Journal {
    db: Db,
    key: JournalKey,
    file: PathBuf,
    cfg: JournalConfig,
}

impl Journal {
    /// Load (or create on first start) the signing key under `data_dir`.
    pub fn open(db: Db, data_dir: &Path, cfg: JournalConfig) -> Result<Journal> {
        let key = JournalKey::load_or_create(data_dir)?;
        tracing::info!(key_id = %key.key_id(), public_key = %JournalKey::public_path(data_dir).display(), "journal signing key ready");
        Ok(Journal {
            db,
            key,
            file: checkpoint_file(data_dir),
            cfg,
        })
    }

    /// Sign the chain head if it moved since the last checkpoint.
    pub fn checkpoint_blocking(&self, store: &Store) -> Result<Option<Checkpoint>> {
        let Some((seq, hash)) = store.head()? else {
            return Ok(None);
        };
        if seq <= store.last_checkpoint_seq()? {
            return Ok(None);
        }
        let cp = self.key.sign(seq, &hash);
        append_checkpoint_file(&self.file, &cp)
            .map_err(|e| e.context("journal checkpoint file"))?;
        store.insert_checkpoint(&cp)?;
        // The sinks deliver checkpoints too (docs/SINKS.md).
        self.db.writer().wakeup().notify();
        Ok(Some(cp))
    }

    pub async fn checkpoint(self: &Arc<Self>) -> Result<Option<Checkpoint>> {
        let me = self.clone();
        self.db.run(move |s| me.checkpoint_blocking(s)).await
    }

    /// The checkpoint task: polls the head (cheap: one indexed row) and
    /// signs when enough events or enough time have passed.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let tick = me.cfg.checkpoint_interval.min(Duration::from_millis(500));
            let mut last_signed = me.db.run(|s| s.last_checkpoint_seq()).await.unwrap_or(0);
            let mut last_time = Instant::now();
            loop {
                tokio::time::sleep(tick).await;
                let head = match me.db.run(|s| s.head()).await {
                    Ok(h) => h.map_or(0, |(seq, _)| seq),
                    Err(e) => {
                        tracing::error!(error = %e, "journal: cannot read the chain head");
                        continue;
                    }
                };
                let pending = (head - last_signed).max(0) as u64;
                let due = pending >= me.cfg.checkpoint_every
                    || (pending > 0 && last_time.elapsed() >= me.cfg.checkpoint_interval);
                if !due {
                    continue;
                }
                match me.checkpoint().await {
                    Ok(cp) => {
                        if let Some(cp) = cp {
                            tracing::debug!(seq = cp.seq, "journal checkpoint signed");
                            last_signed = cp.seq;
                        }
                        last_time = Instant::now();
                    }
                    Err(e) => tracing::error!(error = %e, "journal: checkpoint failed"),
                }
            }
        })
    }
}

/// Verify a journal: every event of `store`, the checkpoints of the
/// database and of the checkpoint file(s), against the public key
/// (`public_key`, else `<data_dir>/keys/journal-ed25519.pub`).
pub fn verify_store(
    store: &Store,
    data_dir: &Path,
    extra_checkpoints: Option<&Path>,
    public_key: Option<&Path>,
) -> Result<VerifyReport> {
    let key_path = public_key
        .map(Path::to_path_buf)
        .unwrap_or_else(|| JournalKey::public_path(data_dir));
    let key = read_public_key(&key_path)?;
    let mut cps = store.checkpoints()?;
    let file = checkpoint_file(data_dir);
    cps.extend(read_checkpoint_file(&file)?);
    if let Some(extra) = extra_checkpoints {
        if !extra.is_file() {
            return Err(Error::not_found(format!(
                "checkpoint file {} does not exist",
                extra.display()
            ))
            .hint("pass the checkpoints.jsonl kept outside the data dir (a copy, or a sink's)"));
        }
        cps.extend(read_checkpoint_file(extra)?);
    }
    // Read in pages so a large journal does not need one giant statement.
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 50_000)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page);
    }
    Ok(brig_audit::verify(&events, &cps, &key))
}

/// `brig journal verify` without a server: open `<data_dir>/brig.db`
/// read-only (a live data dir or an auditor's copy) and verify it.
pub fn verify_offline(
    data_dir: &Path,
    extra_checkpoints: Option<&Path>,
    public_key: Option<&Path>,
) -> Result<VerifyReport> {
    let store = Store::open_read_only(&data_dir.join("brig.db"))?;
    verify_store(&store, data_dir, extra_checkpoints, public_key)
}
