//! PII detectors (`[models.pii]`, `[journal.pii]`): emails, phone numbers,
//! payment cards (Luhn-checked), national IDs (US SSN, UK NINO), IP
//! addresses (v4, v6), plus named extra patterns. Masks look like the
//! secret redactor's: `[REDACTED:pii:email]`. A `RegexSet` says in one pass
//! which detectors can match; only those run. Apart from [`crate::Redactor`]
//! on purpose: PII is masked where records are stored, never used to refuse
//! traffic.

use std::borrow::Cow;
use std::collections::BTreeMap;

use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A PII section (`[models.pii]`, `[journal.pii]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Built-in detectors: `email`, `phone`, `card` (Luhn-checked),
    /// `national_id` (US SSN, UK NINO), `ip` (v4 and v6). Default: all.
    #[serde(default = "all_pii")]
    pub enabled: Vec<String>,
    /// Extra named patterns (Rust regex syntax).
    #[serde(default)]
    pub patterns: BTreeMap<String, String>,
}

impl Default for PiiConfig {
    fn default() -> Self {
        PiiConfig {
            enabled: all_pii(),
            patterns: BTreeMap::new(),
        }
    }
}

fn all_pii() -> Vec<String> {
    BUILTIN.iter().map(|s| s.to_string()).collect()
}

/// What is wrong in a PII section: `key` relative to it (`enabled`,
/// `patterns.NAME`).
#[derive(Clone, Debug, PartialEq)]
pub struct PiiError {
    pub key: String,
    pub message: String,
}

/// The built-in detectors' names.
pub const BUILTIN: &[&str] = &["email", "phone", "card", "national_id", "ip"];

#[derive(Clone, Copy, Debug)]
enum Check {
    None,
    Luhn,
    Ssn,
    Ipv6,
    Phone,
}

struct Rule {
    name: String,
    re: Regex,
    check: Check,
}

/// The compiled detectors.
pub struct PiiRules {
    rules: Vec<Rule>,
    set: Option<RegexSet>,
}

impl std::fmt::Debug for PiiRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.name))
            .finish()
    }
}

fn builtin(name: &str) -> Option<Vec<(&'static str, Check)>> {
    Some(match name {
        "email" => vec![(
            r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
            Check::None,
        )],
        // International (+CC ...) or North American ((555) 123-4567,
        // 555-123-4567, 555.123.4567): separators required, so plain
        // numbers (ids, counts, timestamps) are left alone.
        "phone" => vec![
            (
                r"\+[1-9][0-9]{0,2}(?:[ .\-]?\(?[0-9]{1,4}\)?){2,5}[ .\-]?[0-9]{2,4}\b",
                Check::Phone,
            ),
            (
                r"(?:\([0-9]{3}\) ?|\b[0-9]{3}[.\-])[0-9]{3}[.\-][0-9]{4}\b",
                Check::None,
            ),
        ],
        "card" => vec![(r"\b[0-9](?:[ \-]?[0-9]){12,18}\b", Check::Luhn)],
        "national_id" => vec![
            (r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", Check::Ssn),
            (
                r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b",
                Check::None,
            ),
        ],
        "ip" => vec![
            (
                r"\b(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\b",
                Check::None,
            ),
            (r"[0-9A-Fa-f:]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*", Check::Ipv6),
        ],
        _ => return None,
    })
}

impl PiiRules {
    pub fn new(c: &PiiConfig) -> Result<PiiRules, PiiError> {
        let mut rules = Vec::new();
        for name in &c.enabled {
            let Some(list) = builtin(name) else {
                return Err(PiiError {
                    key: "enabled".into(),
                    message: format!(
                        "`{name}` is not a detector; the built-in ones are {}",
                        BUILTIN.join(", ")
                    ),
                });
            };
            for (re, check) in list {
                rules.push(Rule {
                    name: format!("pii:{name}"),
                    re: Regex::new(re).expect("built-in PII pattern compiles"),
                    check,
                });
            }
        }
        for (name, re) in &c.patterns {
            let key = format!("patterns.{name}");
            if name.is_empty() || name.contains([']', '[', ' ']) {
                return Err(PiiError {
                    key,
                    message: "a pattern name has no spaces or brackets".into(),
                });
            }
            let re = regex::RegexBuilder::new(re)
                .size_limit(1 << 22)
                .build()
                .map_err(|e| PiiError {
                    key: key.clone(),
                    message: format!("does not compile: {e}"),
                })?;
            if re.is_match("") {
                return Err(PiiError {
                    key,
                    message: "matches the empty string, which would mask everything".into(),
                });
            }
            rules.push(Rule {
                name: format!("pii:{name}"),
                re,
                check: Check::None,
            });
        }
        let set = (!rules.is_empty()).then(|| {
            regex::RegexSetBuilder::new(rules.iter().map(|r| r.re.as_str()))
                .size_limit(1 << 26)
                .build()
                .expect("each pattern compiled alone")
        });
        Ok(PiiRules { rules, set })
    }

    /// `s` with every PII match masked; borrowed when nothing matched.
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let Some(set) = &self.set else {
            return Cow::Borrowed(s);
        };
        // Early exit on clean text before the overlapping search.
        if !set.is_match(s) {
            return Cow::Borrowed(s);
        }
        let hits = set.matches(s);
        let mut spans: Vec<(usize, usize, &str)> = Vec::new();
        for i in hits.iter() {
            let r = &self.rules[i];
            for m in r.re.find_iter(s) {
                if m.start() < m.end() && passes(r.check, s, m.start(), m.end()) {
                    spans.push((m.start(), m.end(), r.name.as_str()));
                }
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(s);
        }
        spans.sort_by_key(|&(a, b, _)| (a, std::cmp::Reverse(b)));
        let mut out = String::with_capacity(s.len());
        let (mut at, mut i) = (0, 0);
        while i < spans.len() {
            let (start, mut end, rule) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 < end {
                end = end.max(spans[i].1);
                i += 1;
            }
            let start = start.max(at);
            // Never mask inside an existing mask (`[REDACTED:...]`).
            if in_mask(s, start) {
                continue;
            }
            out.push_str(&s[at..start]);
            out.push_str("[REDACTED:");
            out.push_str(rule);
            out.push(']');
            at = end;
        }
        out.push_str(&s[at..]);
        Cow::Owned(out)
    }

    /// Whether any detector could match in `s` (one pass of the set).
    pub fn may_match(&self, s: &str) -> bool {
        self.set.as_ref().is_some_and(|set| set.is_match(s))
    }

    /// Every string (and object key) of `v`, in place. Objects are rebuilt
    /// only when one of their keys changes.
    pub fn redact_value_mut(&self, v: &mut Value) {
        if self.set.is_none() {
            return;
        }
        match v {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact_str(s) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_value_mut(x)),
            Value::Object(map) => {
                map.values_mut().for_each(|x| self.redact_value_mut(x));
                if map
                    .keys()
                    .any(|k| matches!(self.redact_str(k), Cow::Owned(_)))
                {
                    let entries = std::mem::take(map);
                    for (k, val) in entries {
                        let k = match self.redact_str(&k) {
                            Cow::Borrowed(_) => k,
                            Cow::Owned(r) => r,
                        };
                        map.insert(k, val);
                    }
                }
            }
            _ => {}
        }
    }
}

fn in_mask(s: &str, at: usize) -> bool {
    match s[..at].rfind("[REDACTED:") {
        Some(open) => !s[open..at].contains(']'),
        None => false,
    }
}

fn passes(check: Check, s: &str, start: usize, end: usize) -> bool {
    let m = &s[start..end];
    match check {
        Check::None => true,
        Check::Luhn => luhn(m),
        Check::Phone => {
            let digits = m.bytes().filter(u8::is_ascii_digit).count();
            (8..=15).contains(&digits)
        }
        Check::Ssn => {
            let area = &m[..3];
            area != "000"
                && area != "666"
                && !area.starts_with('9')
                && &m[4..6] != "00"
                && &m[7..] != "0000"
        }
        Check::Ipv6 => {
            // Whole tokens only (`std::vec` is not an address), parsed by
            // the standard library.
            let before = s[..start].chars().next_back();
            let after = s[end..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            !word(before)
                && !word(after)
                && m.trim_end_matches('.')
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
        }
    }
}

/// The Luhn checksum of the digits in `s` (13 to 19 of them).
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> PiiRules {
        let mut c = PiiConfig::default();
        c.patterns
            .insert("employee_id".into(), "EMP-[0-9]{6}".into());
        PiiRules::new(&c).unwrap()
    }

    #[test]
    fn each_detector_masks_and_leaves_lookalikes() {
        let r = rules();
        let cases = [
            (
                "mail jane.doe+x@example.co.uk now",
                "mail [REDACTED:pii:email] now",
            ),
            ("call +44 20 7946 0958.", "call [REDACTED:pii:phone]."),
            ("call (555) 123-4567", "call [REDACTED:pii:phone]"),
            ("card 4111 1111 1111 1111 ok", "card [REDACTED:pii:card] ok"),
            ("card 4111-1111-1111-1112 ok", "card 4111-1111-1111-1112 ok"),
            ("ssn 123-45-6789", "ssn [REDACTED:pii:national_id]"),
            ("ssn 000-45-6789", "ssn 000-45-6789"),
            ("nino AB 12 34 56 C", "nino [REDACTED:pii:national_id]"),
            ("host 10.1.2.3:80", "host [REDACTED:pii:ip]:80"),
            ("v6 2001:db8::8a2e:370:7334 x", "v6 [REDACTED:pii:ip] x"),
            (
                "rust std::vec::Vec and 12:30:45",
                "rust std::vec::Vec and 12:30:45",
            ),
            ("id EMP-123456", "id [REDACTED:pii:employee_id]"),
            ("order 1234567 of 2024-01-02", "order 1234567 of 2024-01-02"),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact_str(input), want, "{input}");
        }
    }

    #[test]
    fn only_enabled_detectors_run() {
        let r = PiiRules::new(&PiiConfig {
            enabled: vec!["email".into()],
            patterns: Default::default(),
        })
        .unwrap();
        assert_eq!(
            r.redact_str("a@b.io 10.0.0.1"),
            "[REDACTED:pii:email] 10.0.0.1"
        );
        let none = PiiRules::new(&PiiConfig {
            enabled: vec![],
            patterns: Default::default(),
        })
        .unwrap();
        assert!(matches!(none.redact_str("a@b.io"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_values_and_keys() {
        let r = rules();
        let mut v = serde_json::json!({"messages":[{"content":"I am bob@corp.example"}],"bob@corp.example":1});
        r.redact_value_mut(&mut v);
        let s = v.to_string();
        assert!(!s.contains("bob@corp.example"), "{s}");
        assert!(s.contains("[REDACTED:pii:email]"));
    }
}
