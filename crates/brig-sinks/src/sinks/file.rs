//! JSON Lines file: one record per line (an event, or a signed checkpoint
//! `{"record":"checkpoint",...}` after the event it signs), appended and
//! fsynced per batch.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use brig_core::Result;

use super::{BoxFut, Delivered, DeliveryError, DeliveryResult, Sink};
use crate::config::{SinkConfig, SinkKind};
use crate::Record;

pub(crate) struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub fn new(cfg: &SinkConfig) -> Result<Self> {
        let SinkKind::File { path } = &cfg.kind else {
            unreachable!("FileSink built from another kind")
        };
        if path.as_os_str().is_empty() {
            return Err(cfg.err("path", "is empty"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(cfg
                    .err(
                        "path",
                        format!("directory {} does not exist", dir.display()),
                    )
                    .hint("create it, or point `path` at an existing directory"));
            }
        }
        Ok(FileSink { path: path.clone() })
    }
}

fn append(path: &PathBuf, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // A crash mid-write can leave a torn last line; end it so the next event
    // starts on its own line and readers can skip the torn one.
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
        }
    }
    f.write_all(data)?;
    f.sync_data()
}

impl Sink for FileSink {
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult> {
        Box::pin(async move {
            let mut data = Vec::with_capacity(batch.len() * 256);
            for r in batch {
                data.extend_from_slice(r.json().as_bytes());
                data.push(b'\n');
            }
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || append(&path, &data))
                .await
                .map_err(|e| DeliveryError::retry(format!("file writer task failed: {e}")))?
                .map_err(|e| {
                    DeliveryError::retry(format!("cannot append to {}: {e}", self.path.display()))
                })?;
            Ok(Delivered::default())
        })
    }
}
