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
/// credential, cookie, session key) and then some: what
/// [`may_be_sensitive_key`] looks for (its test checks every one).
#[cfg(test)]
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
    // KEY_WORDS, ASCII case-insensitively, by their first letters: no
    // lowercased copy of every key, no search per word.
    fn at(rest: &[u8], w: &[u8]) -> bool {
        rest.len() >= w.len() && rest[..w.len()].eq_ignore_ascii_case(w)
    }
    let k = k.as_bytes();
    (0..k.len()).any(|i| {
        let rest = &k[i..];
        match rest[0].to_ascii_lowercase() {
            b'p' => at(rest, b"pass") || at(rest, b"pwd"),
            b's' => at(rest, b"secret") || at(rest, b"session"),
            b't' => at(rest, b"token"),
            b'k' => at(rest, b"key"),
            b'a' => at(rest, b"auth"),
            b'c' => at(rest, b"credential") || at(rest, b"cookie"),
            _ => false,
        }
    })
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

thread_local! {
    /// The joined text of the last scan, kept for its capacity.
    static TEXT: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// Whether any of `values` or `strs` may hold something to mask: one pass
/// of the known values, one of the secret patterns and one of the PII set
/// over all of their text together (a call's request, response, model and
/// error messages), instead of one of each per value and per string.
/// `false`: [`scrub`] would leave every value as it is, and `redact_str`
/// of the redactor and of the PII rules every string.
pub(crate) fn may_need(values: &[&Value], strs: &[&str], red: &Redactor, pii: &PiiRules) -> bool {
    let mut s = Scan {
        text: TEXT.with(|t| t.take()),
        value_rule: false,
    };
    s.text.clear();
    for v in values {
        collect(v, &mut s);
    }
    for x in strs {
        s.text.push_str(x);
        s.text.push('\n');
    }
    let need = s.value_rule || red.may_redact(&s.text) || pii.may_match(&s.text);
    if s.text.capacity() <= 1 << 20 {
        TEXT.with(|t| t.set(s.text));
    }
    need
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
    fn sensitive_keys_are_every_key_word_in_any_case() {
        for w in KEY_WORDS {
            for k in [
                w.to_string(),
                w.to_ascii_uppercase(),
                format!("x_{}_y", w.to_ascii_uppercase()),
                format!("my{w}"),
            ] {
                assert!(may_be_sensitive_key(&k), "{k}");
            }
        }
        for k in [
            "model",
            "messages",
            "content",
            "role",
            "max_tokes",
            "pas",
            "ke",
        ] {
            assert!(!may_be_sensitive_key(k), "{k}");
        }
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
        for c in [
            json!({"messages": [{"content": "key is hunter2-very-secret"}]}),
            json!({"messages": [{"content": "no secret"}], "API_KEY": "plain"}),
            json!({"args": ["deploy", "--PassWord", "plain"]}),
            json!({"c": "mail a@b.io"}),
        ] {
            assert!(may_need(&[&json!({"a": "b"}), &c], &[], &red, &pii), "{c}");
        }
        assert!(may_need(
            &[],
            &["ghp_abcdefghijklmnopqrstuvwxyz0123456789"],
            &red,
            &pii
        ));
        assert!(may_need(&[], &["x", "call 555-123-4567"], &red, &pii));
        let clean = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hello"}]});
        assert!(!may_need(
            &[&clean, &clean],
            &["gpt-4o-mini", "upstream answered 500"],
            &red,
            &pii
        ));
        let mut v = clean.clone();
        scrub(&mut v, &red, &pii);
        assert_eq!(v, clean);
    }
}
