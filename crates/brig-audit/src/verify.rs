//! Verify a journal: its hash chain and its signed checkpoints.

use std::collections::{BTreeMap, HashMap};

use brig_core::event::Event;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::chain::{event_hash, GENESIS};
use crate::checkpoint::Checkpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An event's content does not match its own hash.
    Modified,
    /// An event sits at a position other than the one it was hashed at.
    Reordered,
    /// Sequence numbers jump: events in between were deleted.
    Missing,
    /// An event does not link to the one before it (inserted or replaced).
    ChainBroken,
    /// An event has no hash at all.
    Unhashed,
    /// A signed checkpoint covers events that are no longer there.
    Truncated,
    /// The event at a checkpoint's seq is not the one that was signed.
    CheckpointMismatch,
    /// A checkpoint's signature is invalid or by another key.
    BadSignature,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Where the chain breaks.
    pub seq: Option<i64>,
    pub event_id: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when there are no problems.
    pub ok: bool,
    pub events: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub head_hash: Option<String>,
    /// Distinct checkpoints checked (database and file together).
    pub checkpoints: u64,
    /// The newest checkpoint with a valid signature.
    pub latest_checkpoint: Option<Checkpoint>,
    /// Events after the newest valid checkpoint: chained but not yet
    /// signed (a truncation of only these cannot be proven).
    pub unsigned_tail: u64,
    pub key_id: String,
    /// In journal order; the first is where the chain first breaks.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn first_break(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

/// Verify `events` (as stored, in seq order) against `checkpoints` (from
/// the database and the file, in any order, duplicates allowed) signed by
/// `key`.
pub fn verify(events: &[Event], checkpoints: &[Checkpoint], key: &VerifyingKey) -> VerifyReport {
    let mut problems = Vec::new();
    let mut by_seq: HashMap<i64, (&str, &str)> = HashMap::with_capacity(events.len());
    let mut expected_prev: Option<String> = Some(GENESIS.to_string());
    let mut prev: Option<&Event> = None;
    let mut mismatched: Vec<usize> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let at = |kind, message: String| Problem {
            kind,
            seq: Some(ev.seq),
            event_id: Some(ev.id.clone()),
            message,
        };
        let want_seq = prev.map_or(1, |p| p.seq + 1);
        if ev.seq > want_seq {
            let what = if want_seq == ev.seq - 1 {
                format!("event {want_seq} is missing")
            } else {
                format!("events {want_seq}..={} are missing", ev.seq - 1)
            };
            problems.push(at(
                ProblemKind::Missing,
                format!("{what} before seq {} (id {}): deleted", ev.seq, ev.id),
            ));
        } else if ev.seq < want_seq {
            problems.push(at(
                ProblemKind::Reordered,
                format!(
                    "seq {} follows seq {}: the journal is out of order",
                    ev.seq,
                    want_seq - 1
                ),
            ));
        }
        let (Some(hash), Some(prev_hash)) = (ev.hash.as_deref(), ev.prev_hash.as_deref()) else {
            problems.push(at(
                ProblemKind::Unhashed,
                format!(
                    "seq {} (id {}) has no hash: written outside brig",
                    ev.seq, ev.id
                ),
            ));
            expected_prev = None;
            prev = Some(ev);
            continue;
        };
        by_seq.insert(ev.seq, (hash, ev.id.as_str()));
        let content_ok = event_hash(prev_hash, ev) == hash;
        if !content_ok {
            mismatched.push(i);
        }
        // A link break right after a gap is the gap's doing: reported once.
        let gap = ev.seq != want_seq;
        if let Some(want) = &expected_prev {
            if prev_hash != want && !gap {
                let before = prev
                    .map(|p| format!("seq {} (id {})", p.seq, p.id))
                    .unwrap_or_else(|| "the start of the journal".into());
                problems.push(at(
                    ProblemKind::ChainBroken,
                    format!(
                        "seq {} (id {}) does not link to {before}: an event was inserted, \
                         replaced or rewritten there",
                        ev.seq, ev.id
                    ),
                ));
            }
        }
        expected_prev = Some(hash.to_string());
        prev = Some(ev);
    }

    // Content mismatches: tell a moved event from an edited one by
    // re-hashing it at the positions of the other mismatched events.
    for &i in &mismatched {
        let ev = &events[i];
        let (hash, prev_hash) = (
            ev.hash.as_deref().unwrap_or(""),
            ev.prev_hash.as_deref().unwrap_or(""),
        );
        let moved_from = mismatched.iter().take(64).find_map(|&j| {
            let mut probe = ev.clone();
            probe.seq = events[j].seq;
            (j != i && event_hash(prev_hash, &probe) == hash).then_some(events[j].seq)
        });
        problems.push(match moved_from {
            Some(orig) => Problem {
                kind: ProblemKind::Reordered,
                seq: Some(ev.seq),
                event_id: Some(ev.id.clone()),
                message: format!(
                    "event {} was written at seq {orig} but now sits at seq {}: reordered",
                    ev.id, ev.seq
                ),
            },
            None => Problem {
                kind: ProblemKind::Modified,
                seq: Some(ev.seq),
                event_id: Some(ev.id.clone()),
                message: format!(
                    "seq {} (id {}) does not match its hash: its content was modified",
                    ev.seq, ev.id
                ),
            },
        });
    }

    // Checkpoints, deduplicated (the same one is in the DB and the file).
    let mut distinct: BTreeMap<(i64, String, String), &Checkpoint> = BTreeMap::new();
    for cp in checkpoints {
        distinct.insert((cp.seq, cp.hash.clone(), cp.signature.clone()), cp);
    }
    let last_seq = events.last().map(|e| e.seq);
    let mut latest: Option<&Checkpoint> = None;
    for cp in distinct.values() {
        if let Err(why) = cp.verify_signature(key) {
            problems.push(Problem {
                kind: ProblemKind::BadSignature,
                seq: Some(cp.seq),
                event_id: None,
                message: format!("checkpoint at seq {} ({}): {why}", cp.seq, cp.time),
            });
            continue;
        }
        if latest.is_none_or(|l| cp.seq >= l.seq) {
            latest = Some(cp);
        }
        match by_seq.get(&cp.seq) {
            Some((h, id)) if *h == cp.hash => {}
            Some((_, id)) => problems.push(Problem {
                kind: ProblemKind::CheckpointMismatch,
                seq: Some(cp.seq),
                event_id: Some(id.to_string()),
                message: format!(
                    "seq {} (id {id}) is not the event signed at checkpoint {}: the journal \
                     was rewritten up to there",
                    cp.seq, cp.time
                ),
            }),
            None if last_seq.is_none_or(|l| cp.seq > l) => problems.push(Problem {
                kind: ProblemKind::Truncated,
                seq: Some(cp.seq),
                event_id: None,
                message: format!(
                    "checkpoint {} signed seq {} but the journal ends at {}: events were \
                     removed from the end",
                    cp.time,
                    cp.seq,
                    last_seq.map_or("nothing".to_string(), |l| format!("seq {l}"))
                ),
            }),
            None => problems.push(Problem {
                kind: ProblemKind::CheckpointMismatch,
                seq: Some(cp.seq),
                event_id: None,
                message: format!(
                    "seq {} signed at checkpoint {} is not in the journal: deleted",
                    cp.seq, cp.time
                ),
            }),
        }
    }
    // Journal order: the first problem is where the chain first breaks.
    problems.sort_by_key(|p| p.seq.unwrap_or(i64::MAX));
    let unsigned_tail = match (latest, last_seq) {
        (Some(cp), Some(l)) => (l - cp.seq).max(0) as u64,
        (None, _) => events.len() as u64,
        _ => 0,
    };
    VerifyReport {
        ok: problems.is_empty(),
        events: events.len() as u64,
        first_seq: events.first().map(|e| e.seq),
        last_seq,
        head_hash: events.last().and_then(|e| e.hash.clone()),
        checkpoints: distinct.len() as u64,
        latest_checkpoint: latest.cloned(),
        unsigned_tail,
        key_id: crate::checkpoint::key_id(key),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::seal;
    use crate::checkpoint::JournalKey;
    use brig_core::event::Outcome;

    fn journal(n: i64) -> Vec<Event> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = Event::new("exec.start", Outcome::Info)
                    .details(serde_json::json!({"argv": ["echo", seq.to_string()]}));
                e.seq = seq;
                prev = seal(&prev, &mut e);
                e
            })
            .collect()
    }

    fn kinds(r: &VerifyReport) -> Vec<ProblemKind> {
        r.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn intact_journal_verifies() {
        let k = JournalKey::from_seed([3; 32]);
        let ev = journal(10);
        let cps = vec![
            k.sign(5, ev[4].hash.as_ref().unwrap()),
            k.sign(10, ev[9].hash.as_ref().unwrap()),
        ];
        let r = verify(&ev, &cps, &k.public());
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!(r.checkpoints, 2);
        assert_eq!(r.unsigned_tail, 0);
        assert_eq!(r.last_seq, Some(10));
        assert!(verify(&[], &[], &k.public()).ok);
    }

    #[test]
    fn each_tampering_is_named() {
        let k = JournalKey::from_seed([3; 32]);
        let ev = journal(10);
        let cp = vec![k.sign(10, ev[9].hash.as_ref().unwrap())];

        let mut edited = ev.clone();
        edited[3].details = serde_json::json!({"argv": ["rm", "-rf"]});
        let r = verify(&edited, &cp, &k.public());
        assert_eq!(kinds(&r), vec![ProblemKind::Modified]);
        assert_eq!(r.first_break().unwrap().seq, Some(4));
        assert_eq!(
            r.first_break().unwrap().event_id.as_deref(),
            Some(ev[3].id.as_str())
        );

        let mut deleted = ev.clone();
        deleted.remove(5);
        let r = verify(&deleted, &cp, &k.public());
        assert_eq!(kinds(&r), vec![ProblemKind::Missing]);
        assert!(
            r.problems[0].message.contains("event 6 is missing"),
            "{:?}",
            r.problems
        );

        let mut swapped = ev.clone();
        swapped.swap(2, 3);
        swapped[2].seq = 3;
        swapped[3].seq = 4;
        let r = verify(&swapped, &cp, &k.public());
        assert!(
            kinds(&r).contains(&ProblemKind::Reordered),
            "{:?}",
            r.problems
        );
        assert_eq!(r.first_break().unwrap().seq, Some(3));

        let r = verify(&ev[..7], &cp, &k.public());
        assert_eq!(kinds(&r), vec![ProblemKind::Truncated]);

        let mut bad_sig = cp.clone();
        bad_sig[0].signature.replace_range(0..2, "ff");
        let r = verify(&ev, &bad_sig, &k.public());
        assert_eq!(kinds(&r), vec![ProblemKind::BadSignature]);
    }

    #[test]
    fn rewriting_the_whole_chain_is_caught_by_the_checkpoint() {
        // An attacker who edits an event and re-hashes everything after it
        // has a valid chain, but not the signing key.
        let k = JournalKey::from_seed([3; 32]);
        let ev = journal(6);
        let cp = vec![k.sign(6, ev[5].hash.as_ref().unwrap())];
        let mut forged = ev.clone();
        forged[1].details = serde_json::json!({"argv": ["innocent"]});
        let mut prev = forged[0].hash.clone().unwrap();
        for e in &mut forged[1..] {
            prev = seal(&prev, e);
        }
        let r = verify(&forged, &cp, &k.public());
        assert_eq!(kinds(&r), vec![ProblemKind::CheckpointMismatch]);
        // And a checkpoint re-signed with another key is not accepted.
        let other = JournalKey::from_seed([4; 32]);
        let r = verify(&forged, &[other.sign(6, &prev)], &k.public());
        assert_eq!(kinds(&r), vec![ProblemKind::BadSignature]);
    }
}
