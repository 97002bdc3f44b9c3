//! The hash chain: canonical JSON and event hashes.

use brig_core::event::{Event, Outcome};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `v` in canonical form: keys sorted at every depth, no whitespace.
/// Sorting is explicit (not left to the map type), so the form does not
/// depend on serde_json's `preserve_order` feature.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        // Null, bools and numbers print the same whatever the map type.
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// The canonical bytes of an event: everything but `prev_hash` and `hash`.
pub fn canonical_event(ev: &Event) -> String {
    canonical_event_with(ev, &canonical_json(&ev.details))
}

/// [`canonical_event`] with the event's details already in canonical form
/// (the store keeps that same text, so it is computed once per event).
/// Written field by field in sorted key order rather than through a
/// `serde_json::Value` of the whole event: same bytes, a fraction of the
/// allocations (a test holds the two forms equal).
pub fn canonical_event_with(ev: &Event, details_canonical: &str) -> String {
    let mut out = String::with_capacity(256 + details_canonical.len());
    let opt = |out: &mut String, key: &str, v: &Option<String>| {
        out.push_str(key);
        match v {
            Some(s) => write_string(s, out),
            None => out.push_str("null"),
        }
    };
    out.push_str("{\"action\":");
    write_string(&ev.action, &mut out);
    opt(&mut out, ",\"agent\":", &ev.agent);
    opt(&mut out, ",\"branch\":", &ev.branch);
    out.push_str(",\"details\":");
    out.push_str(details_canonical);
    opt(&mut out, ",\"human\":", &ev.human);
    out.push_str(",\"id\":");
    write_string(&ev.id, &mut out);
    out.push_str(",\"outcome\":");
    out.push_str(match ev.outcome {
        Outcome::Success => "\"success\"",
        Outcome::Failure => "\"failure\"",
        Outcome::Denied => "\"denied\"",
        Outcome::Info => "\"info\"",
    });
    opt(&mut out, ",\"repo\":", &ev.repo);
    opt(&mut out, ",\"rule\":", &ev.rule);
    out.push_str(",\"seq\":");
    out.push_str(&ev.seq.to_string());
    opt(&mut out, ",\"session\":", &ev.session);
    opt(&mut out, ",\"task\":", &ev.task);
    out.push_str(",\"time\":");
    write_string(&ev.time, &mut out);
    out.push('}');
    out
}

/// The generic form: the event through `serde_json::Value`. Kept to hold
/// the fast form to the documented definition.
pub fn canonical_event_generic(ev: &Event) -> String {
    let mut v = serde_json::to_value(ev).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("prev_hash");
        m.remove("hash");
    }
    canonical_json(&v)
}

fn hash_with(prev_hash: &str, ev: &Event, details_canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical_event_with(ev, details_canonical).as_bytes());
    hex::encode(h.finalize())
}

/// `sha256(prev_hash || canonical_event(ev))`, hex. `prev_hash` is the hex
/// text of the previous hash (its ASCII bytes are hashed).
pub fn event_hash(prev_hash: &str, ev: &Event) -> String {
    hash_with(prev_hash, ev, &canonical_json(&ev.details))
}

/// Link `ev` after `prev_hash`: set its `prev_hash` and `hash`. Its `seq`
/// must already be final (it is hashed). Returns the new head hash.
pub fn seal(prev_hash: &str, ev: &mut Event) -> String {
    let details = canonical_json(&ev.details);
    seal_with(prev_hash, ev, &details)
}

/// [`seal`] with the details' canonical text already computed.
pub fn seal_with(prev_hash: &str, ev: &mut Event, details_canonical: &str) -> String {
    let hash = hash_with(prev_hash, ev, details_canonical);
    ev.prev_hash = Some(prev_hash.to_string());
    ev.hash = Some(hash.clone());
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_and_has_no_whitespace() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x\"y\u{1}é", "c": 1.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"x\"y\u0001é","b":[1,{"a":true,"z":null}],"c":1.5}"#
        );
    }

    #[test]
    fn fast_canonical_form_equals_the_generic_one() {
        let mut full = Event::new("egress.blocked", Outcome::Denied)
            .rule("deny \"all\"")
            .details(json!({"z": [1, 2.5, null], "a": {"é": "\u{7f}\n", "b": false}}));
        full.seq = -3;
        full.session = Some("s-1".into());
        full.human = Some("ada\\".into());
        full.agent = Some("agent:s-1".into());
        full.task = Some("T".into());
        full.repo = Some("/r".into());
        full.branch = Some("main".into());
        full.hash = Some("ignored".into());
        for o in [
            Outcome::Success,
            Outcome::Failure,
            Outcome::Denied,
            Outcome::Info,
        ] {
            let mut e = full.clone();
            e.outcome = o;
            assert_eq!(canonical_event(&e), canonical_event_generic(&e));
        }
        let bare = Event::new("x", Outcome::Info);
        assert_eq!(canonical_event(&bare), canonical_event_generic(&bare));
    }

    #[test]
    fn hash_excludes_hash_fields_and_covers_everything_else() {
        let mut e = Event::new("exec.start", Outcome::Info).details(json!({"argv": ["ls"]}));
        e.seq = 7;
        let h = seal(GENESIS, &mut e);
        assert_eq!(e.hash.as_deref(), Some(h.as_str()));
        assert_eq!(e.prev_hash.as_deref(), Some(GENESIS));
        // Recomputing over the sealed event gives the same hash.
        assert_eq!(event_hash(GENESIS, &e), h);
        assert!(!canonical_event(&e).contains("hash"));
        let mut moved = e.clone();
        moved.seq = 8;
        assert_ne!(event_hash(GENESIS, &moved), h, "seq is hashed");
        let mut edited = e.clone();
        edited.details = json!({"argv": ["rm"]});
        assert_ne!(event_hash(GENESIS, &edited), h, "details are hashed");
        assert_ne!(event_hash(&h, &e), h, "the previous hash is hashed");
        // Known answer, so the form cannot drift silently between versions.
        let mut fixed = Event::new("session.create", Outcome::Success);
        fixed.id = "e-1".into();
        fixed.time = "2026-01-01T00:00:00Z".into();
        fixed.seq = 1;
        assert_eq!(
            canonical_event(&fixed),
            r#"{"action":"session.create","agent":null,"branch":null,"details":null,"human":null,"id":"e-1","outcome":"success","repo":null,"rule":null,"seq":1,"session":null,"task":null,"time":"2026-01-01T00:00:00Z"}"#
        );
    }
}
