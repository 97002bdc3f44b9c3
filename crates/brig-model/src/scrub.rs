//! Redaction of a captured JSON value: known secrets and secret patterns
//! (brig-redact), then PII. Most model requests hold neither, and walking
//! a conversation with brig-redact's `redact_value_mut` (which rebuilds
//! every object) costs more than the whole proxying of it, so one pass over
//! the decoded text of the value (every string and key, joined by `\n`)
//! decides first whether a walk is needed at all.
//!
//! The joined pass never misses what the walk would find: every match in a
//! single string is also a match in the joined text (the separator is a
//! non-word character, like a string's edge). brig-redact's value-only
//! rules (a string under a sensitive key, the argument after a sensitive
//! flag) are covered by [`may_be_sensitive_key`] and
//! [`may_be_sensitive_flag`], which are supersets of brig-redact's own.

use std::borrow::Cow;

use brig_redact::Redactor;
use serde_json::Value;

use crate::pii::PiiRules;

/// Key fragments covering brig-redact's SENSITIVE_KEY (password, passwd,
/// secret, token, api key, access key, private key, authorization,
/// credential, cookie, session key) and then some.
const KEY_WORDS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "cookie",
    "session",
];

fn may_be_sensitive_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    KEY_WORDS.iter().any(|w| k.contains(w))
}

/// A superset of brig-redact's SENSITIVE_FLAG (`--password`, `-token`...).
fn may_be_sensitive_flag(s: &str) -> bool {
    s.starts_with('-') && s.len() < 64 && may_be_sensitive_key(s)
}

#[derive(Default)]
struct Scan {
    text: String,
    /// A string under a maybe-sensitive key, or after a maybe-sensitive flag.
    value_rule: bool,
}

fn collect(v: &Value, s: &mut Scan) {
    match v {
        Value::String(x) => {
            s.text.push_str(x);
            s.text.push('\n');
        }
        Value::Array(a) => {
            let mut after_flag = false;
            for x in a {
                if let Value::String(t) = x {
                    if after_flag {
                        s.value_rule = true;
                    }
                    after_flag = may_be_sensitive_flag(t);
                } else {
                    after_flag = false;
                }
                collect(x, s);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                s.text.push_str(k);
                s.text.push('\n');
                if matches!(x, Value::String(t) if !t.is_empty()) && may_be_sensitive_key(k) {
                    s.value_rule = true;
                }
                collect(x, s);
            }
        }
        _ => {}
    }
}

/// `v` with known secrets, secret patterns and PII masked.
pub(crate) fn scrub(v: &mut Value, red: &Redactor, pii: &PiiRules) {
    let mut s = Scan::default();
    collect(v, &mut s);
    if s.value_rule || matches!(red.redact_str(&s.text), Cow::Owned(_)) {
        red.redact_value_mut(v);
    }
    if pii.may_match(&s.text) {
        pii.redact_value_mut(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> PiiRules {
        PiiRules::new(&Default::default()).unwrap()
    }

    #[test]
    fn the_prefilter_never_skips_what_the_walk_would_mask() {
        let red = Redactor::builder()
            .secret("K", "hunter2-very-secret")
            .build();
        let pii = rules();
        let cases = [
            json!({"messages": [{"content": "key is hunter2-very-secret"}]}),
            json!({"messages": [{"content": "no secret"}], "api_key": "plain"}),
            json!({"args": ["deploy", "--password", "plain"]}),
            json!({"hunter2-very-secret": 1}),
            json!({"c": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"}),
            json!({"c": "mail a@b.io"}),
            json!({"c": "quote \" hunter2-very-secret \\ end"}),
        ];
        for c in cases {
            let mut want = c.clone();
            red.redact_value_mut(&mut want);
            pii.redact_value_mut(&mut want);
            let mut got = c.clone();
            scrub(&mut got, &red, &pii);
            assert_eq!(got, want, "{c}");
            assert_ne!(got, c, "{c} was not masked");
        }
        let clean = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]});
        let mut v = clean.clone();
        scrub(&mut v, &red, &pii);
        assert_eq!(v, clean);
    }
}
