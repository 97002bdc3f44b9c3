//! Host side of the init protocol. (Stub: to be written.)

use brig_core::exec::ExitStatus;
use brig_core::wire;
use brig_core::Result;

/// What an exec produces, in order: `Started`, output, then `Exited` (or `Failed`).
#[derive(Debug)]
pub enum ExecEvent {
    Started { pid: i32 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(ExitStatus),
    /// Could not start, or the sandbox died under it.
    Failed(String),
}

/// One running command. Dropping it does not kill the command.
pub struct ExecHandle {
    pub chan: u32,
    pub events: tokio::sync::mpsc::Receiver<ExecEvent>,
}

impl ExecHandle {
    pub async fn stdin(&self, _data: Vec<u8>) -> Result<()> {
        todo!()
    }
    pub async fn close_stdin(&self) -> Result<()> {
        todo!()
    }
    pub async fn signal(&self, _signal: i32) -> Result<()> {
        todo!()
    }
    pub async fn resize(&self, _rows: u16, _cols: u16) -> Result<()> {
        todo!()
    }
}

/// Keeps `wire` referenced until the real implementation lands.
pub type SpawnMsg = wire::Spawn;
