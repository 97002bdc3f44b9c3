//! brig-audit: what makes the journal evidence.
//!
//! - [`chain`]: every event carries `prev_hash` and
//!   `hash = sha256(prev_hash || canonical JSON of the event without its hash fields)`.
//! - [`checkpoint`]: the chain head is signed with an Ed25519 key brig holds;
//!   each signed checkpoint is kept in the database *and* in a file outside it.
//! - [`verify`]: finds a modified, deleted, reordered, inserted or
//!   tail-truncated event and names where the chain breaks.
//! - [`export`]: OCSF and ECS mappings of brig's one event schema.
//!
//! The canonical form (also in docs/ARCHITECTURE.md): the event serialized
//! as JSON with the `hash` and `prev_hash` members removed, every object's
//! keys sorted by their UTF-8 bytes at every depth, no whitespace, strings
//! escaped as serde_json does (`"`, `\`, control characters; everything else
//! literal UTF-8), numbers as serde_json prints them. `seq` is part of the
//! hashed form, so moving an event to another position breaks its hash.

pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod verify;

pub use chain::{canonical_json, event_hash, seal, seal_with, GENESIS};
pub use checkpoint::{Checkpoint, JournalKey};
pub use verify::{verify, Problem, ProblemKind, VerifyReport};
