//! brig-core: the domain types every other brig crate shares.
//!
//! No I/O lives here: ids, units, session and exec types, the event schema,
//! the error taxonomy (with CLI exit codes and HTTP statuses) and the framed
//! wire protocol spoken between brig and the init process inside a sandbox.

pub mod error;
pub mod event;
pub mod exec;
pub mod ids;
pub mod session;
pub mod units;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
pub use ids::{ExecId, SessionId, TaskId};
