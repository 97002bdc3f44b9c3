//! brig-redact: the one redactor every part of brig runs text through
//! before it is stored, logged or shipped.
//!
//! A [`Redactor`] masks two kinds of secret as `[REDACTED:<rule>]`:
//!
//! - **known values** (what brig itself holds: tokens, passwords), each also
//!   matched in its standard and URL-safe base64 (padded and unpadded, at the
//!   three byte alignments a value can have inside a larger encoded blob) and
//!   URL-encoded forms. All forms of all values are one Aho-Corasick
//!   automaton, so the cost does not grow with the number of secrets.
//! - **patterns**: AWS access key ids, GitHub/GitLab/Slack tokens, private
//!   key blocks, JWTs, `Authorization: Bearer|Basic ...`, and generic
//!   `password=`/`token=`/`secret=` assignments. A `RegexSet` tells in one
//!   pass which patterns can match; only those run.
//!
//! Overlapping matches are merged and the union is masked, so two secrets
//! sharing bytes never leave a piece of either in the clear. No I/O here.
//!
//! [`pii`] holds the PII detectors, applied where records are stored (the
//! journal, the model gateway's captures) and never used to refuse traffic.

pub mod pii;

use std::borrow::Cow;
use std::fmt::Write as _;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Known values shorter than this are still masked verbatim, but their
/// encoded forms are not (a 2-character base64 core would mask half the
/// journal).
const MIN_ENCODED_CORE: usize = 8;

/// A secret pattern: a name (the `<rule>` of the mask) and a regex. When
/// the regex has a group named `s`, only that group is masked, so
/// `password=hunter2` keeps its key: `password=[REDACTED:secret_assignment]`.
struct Pattern {
    rule: String,
    re: Regex,
}

/// The built-in patterns. Values never contain `[`, so an already masked
/// `token=[REDACTED:...]` is left as it is (redaction is idempotent).
const PATTERNS: &[(&str, &str)] = &[
    (
        "aws_access_key_id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}\b",
    ),
    (
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    ),
    (
        "gitlab_token",
        r"\bgl(?:pat|dt|rt|ptt|cbt)-[A-Za-z0-9_\-]{20,}",
    ),
    ("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    (
        "slack_webhook",
        r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}",
    ),
    // A block cut short (an excerpt) is masked to its end: fail closed.
    (
        "private_key",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\z)",
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
    ),
    (
        "authorization",
        r"(?i)\b(?:proxy-)?authorization\s*[:=]\s*(?:bearer|basic|token|digest)?\s*(?P<s>[^\s\[\x22'][^\s\x22']*)",
    ),
    ("bearer", r"(?i)\bbearer\s+(?P<s>[A-Za-z0-9._~+/-]{8,}=*)"),
    (
        "secret_assignment",
        r#"(?i)[A-Za-z0-9_.-]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)[A-Za-z0-9_.-]*\s*[:=]\s*(?P<s>"[^"\[][^"]*"|'[^'\[][^']*'|[^\s&;,"'\[][^\s&;,"']*)"#,
    ),
    (
        "url_credentials",
        r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?P<s>[^/\s@\[]+)@",
    ),
    // brig's own upload URLs (`/v1/upload/<hex payload>.<hex HMAC>`): masked
    // by their shape, so a token is never journaled in clear even when the
    // issuer no longer lists it as a known secret (a restart, an evicted one).
    (
        "brig_upload_token",
        r"/v1/upload/(?P<s>[0-9a-f]{16,}\.[0-9a-f]{64})\b",
    ),
];

/// JSON object keys whose string values are secret whatever they look like
/// (`{"GITHUB_TOKEN": "..."}`, `{"password": "..."}`).
const SENSITIVE_KEY: &str = r"(?i)(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|authorization|credential|cookie|session[_-]?key)";

/// Command-line flags whose *next* argument is a secret
/// (`mysql --password hunter2`).
const SENSITIVE_FLAG: &str = r"(?i)^--?[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)$";

/// For [`Redactor::may_redact`]: in ASCII text, every match of a built-in
/// pattern contains one of these (ASCII case-insensitively; the patterns
/// under `(?i)` could otherwise match through Unicode case folding, so
/// text that is not ASCII goes to the pattern set). `true`: a keyword of
/// `secret_assignment`, which needs a `:` or `=` after its name.
const BUILTIN_NEEDLES: &[(&str, bool)] = &[
    // aws_access_key_id
    ("AKIA", false),
    ("ASIA", false),
    ("ABIA", false),
    ("ACCA", false),
    ("AGPA", false),
    ("AIDA", false),
    ("AROA", false),
    ("AIPA", false),
    ("ANPA", false),
    ("ANVA", false),
    ("APKA", false),
    // github_token
    ("ghp_", false),
    ("gho_", false),
    ("ghu_", false),
    ("ghs_", false),
    ("ghr_", false),
    ("github_pat_", false),
    // gitlab_token
    ("glpat-", false),
    ("gldt-", false),
    ("glrt-", false),
    ("glptt-", false),
    ("glcbt-", false),
    // slack_token
    ("xox", false),
    // slack_webhook, url_credentials
    ("://", false),
    // private_key
    ("-----BEGIN", false),
    // jwt
    ("eyJ", false),
    // authorization
    ("authorization", false),
    // bearer
    ("bearer", false),
    // brig_upload_token
    ("/v1/upload/", false),
    // secret_assignment: password, passwd, pwd, token, secret,
    // api/access/private key, credential(s)
    ("pass", true),
    ("pwd", true),
    ("token", true),
    ("secret", true),
    ("key", true),
    ("credential", true),
];

/// Builds a [`Redactor`] from the secret values brig knows.
#[derive(Default)]
pub struct RedactorBuilder {
    secrets: Vec<(String, String)>,
    /// Extra patterns (the scanner's rules): `(rule, regex)`.
    patterns: Vec<(String, Regex)>,
}

impl RedactorBuilder {
    /// A known secret value; `name` becomes the mask's rule
    /// (`[REDACTED:secret:<name>]`), so it must not itself be secret.
    /// Empty values are ignored.
    pub fn secret(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let value = value.into();
        if !value.is_empty() {
            self.secrets.push((name.into(), value));
        }
        self
    }

    /// An extra secret pattern, masked as `[REDACTED:<rule>]` (its `s`
    /// group when it has one, else the whole match). A regex that does not
    /// compile is an error naming the rule.
    pub fn pattern(mut self, rule: impl Into<String>, regex: &str) -> Result<Self, String> {
        let rule = rule.into();
        let re = regex::RegexBuilder::new(regex)
            .size_limit(1 << 22)
            .build()
            .map_err(|e| format!("pattern {rule}: {e}"))?;
        self.patterns.push((rule, re));
        Ok(self)
    }

    pub fn build(self) -> Redactor {
        let mut needles: Vec<String> = Vec::new();
        let mut rules: Vec<String> = Vec::new();
        let mut longest = 0;
        for (name, value) in &self.secrets {
            let rule = format!("secret:{name}");
            for form in encoded_forms(value.as_bytes()) {
                longest = longest.max(form.len());
                if !needles.contains(&form) {
                    needles.push(form);
                    rules.push(rule.clone());
                }
            }
        }
        // Standard (not leftmost) semantics so overlapping iteration finds
        // every occurrence of every form; overlaps are merged afterwards.
        let values = (!needles.is_empty()).then(|| {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .build(&needles)
                .expect("literal needles always build")
        });
        let mut patterns: Vec<Pattern> = PATTERNS
            .iter()
            .map(|(rule, re)| Pattern {
                rule: rule.to_string(),
                re: Regex::new(re).expect("built-in pattern compiles"),
            })
            .collect();
        let extra = (!self.patterns.is_empty()).then(|| {
            regex::RegexSetBuilder::new(self.patterns.iter().map(|(_, re)| re.as_str()))
                .size_limit(1 << 28)
                .dfa_size_limit(1 << 24)
                .build()
                .expect("patterns compiled one by one")
        });
        patterns.extend(
            self.patterns
                .into_iter()
                .map(|(rule, re)| Pattern { rule, re }),
        );
        // Each pattern compiled alone; the set gets room for all of them.
        let set = regex::RegexSetBuilder::new(patterns.iter().map(|p| p.re.as_str()))
            .size_limit(1 << 28)
            .dfa_size_limit(1 << 24)
            .build()
            .expect("patterns compiled one by one");
        Redactor {
            values,
            value_rules: rules,
            longest_value: longest,
            patterns,
            set,
            extra,
            // Leftmost, not overlapping: a needle that begins inside another
            // one's match is skipped, which loses nothing (the keywords are
            // all name characters, so a keyword's check runs over any needle
            // inside its name; no other needle can begin inside a keyword
            // and match its pattern there).
            needles: AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .build(BUILTIN_NEEDLES.iter().map(|(n, _)| n))
                .expect("literal needles always build"),
            sensitive_key: Regex::new(SENSITIVE_KEY).expect("compiles"),
            sensitive_flag: Regex::new(SENSITIVE_FLAG).expect("compiles"),
        }
    }
}

/// The redactor. Build it once and share it (`Send + Sync`).
pub struct Redactor {
    values: Option<AhoCorasick>,
    value_rules: Vec<String>,
    longest_value: usize,
    patterns: Vec<Pattern>,
    set: RegexSet,
    /// The patterns added to the built-in ones, alone.
    extra: Option<RegexSet>,
    /// [`BUILTIN_NEEDLES`].
    needles: AhoCorasick,
    sensitive_key: Regex,
    sensitive_flag: Regex,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::patterns_only()
    }
}

impl std::fmt::Debug for Redactor {
    // Never print the automaton: it holds the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("value_forms", &self.value_rules.len())
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

/// A large payload as stored: its digest and size, and a capped, redacted
/// excerpt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CappedPayload {
    /// Hex sha256 of the whole payload (as given, before redaction).
    pub sha256: String,
    pub size: u64,
    /// At most `max` bytes of the start of the payload, lossily decoded as
    /// UTF-8 and redacted.
    pub excerpt: String,
    pub truncated: bool,
}

impl Redactor {
    pub fn builder() -> RedactorBuilder {
        RedactorBuilder::default()
    }

    /// Patterns only: what every part uses until it knows secret values.
    pub fn patterns_only() -> Redactor {
        RedactorBuilder::default().build()
    }

    /// The rule of the first known secret value (in any of its encoded
    /// forms) in `hay`, if one is there; patterns are not consulted. What
    /// an outbound path uses to refuse sending a secret brig knows.
    pub fn known_value_in(&self, hay: &[u8]) -> Option<&str> {
        let m = self.values.as_ref()?.find(hay)?;
        Some(self.value_rules[m.pattern().as_usize()].as_str())
    }

    /// Whether [`Redactor::redact_str`] might change `s`: one early-exit
    /// pass of the known values and one of the pattern set, none of the
    /// per-pattern searches. `false` means `redact_str(s)` is `s` as it is.
    pub fn may_redact(&self, s: &str) -> bool {
        if self.values.as_ref().is_some_and(|ac| ac.is_match(s)) {
            return true;
        }
        if !s.is_ascii() {
            return self.set.is_match(s);
        }
        if self.extra.as_ref().is_some_and(|x| x.is_match(s)) {
            return true;
        }
        // The built-in patterns: a literal each of their matches holds.
        let b = s.as_bytes();
        self.needles.find_iter(s).any(|m| {
            if !BUILTIN_NEEDLES[m.pattern().as_usize()].1 {
                return true;
            }
            // secret_assignment: the keyword, the rest of the name
            // (`[A-Za-z0-9_.-]*`), blanks, then `:` or `=`.
            let mut i = m.end();
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'-'))
            {
                i += 1;
            }
            // `\s` in ASCII text.
            while i < b.len() && matches!(b[i], b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ') {
                i += 1;
            }
            matches!(b.get(i), Some(b':' | b'='))
        })
    }

    /// How many known-value forms (values × encodings) are matched.
    pub fn value_forms(&self) -> usize {
        self.value_rules.len()
    }

    /// `s` with every secret masked; borrowed when nothing matched.
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        // Most text holds nothing: one early-exit pass decides that, before
        // the overlapping searches that find where each mask goes.
        if !self.may_redact(s) {
            return Cow::Borrowed(s);
        }
        self.redact_searched(s)
    }

    /// [`Redactor::redact_str`] without its early exit: every known value
    /// and pattern searched (what the early exit is tested against).
    fn redact_searched<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut spans: Vec<(usize, usize, &str)> = Vec::new();
        if let Some(ac) = &self.values {
            for m in ac.find_overlapping_iter(s) {
                spans.push((
                    m.start(),
                    m.end(),
                    &self.value_rules[m.pattern().as_usize()],
                ));
            }
        }
        let hits = self.set.matches(s);
        if hits.matched_any() {
            for i in hits.iter() {
                let p = &self.patterns[i];
                for c in p.re.captures_iter(s) {
                    let m = c.name("s").or_else(|| c.get(0)).expect("group 0 exists");
                    if m.start() < m.end() {
                        spans.push((m.start(), m.end(), p.rule.as_str()));
                    }
                }
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(s);
        }
        // Masks already in the text stay as they are (idempotence): a
        // rule name like `secret:DB_PASSWORD` is not itself a secret.
        let masks = existing_masks(s);
        if !masks.is_empty() {
            spans.retain(|&(a, b, _)| !masks.iter().any(|&(ma, mb)| ma <= a && b <= mb));
            if spans.is_empty() {
                return Cow::Borrowed(s);
            }
        }
        spans.sort_by_key(|&(a, b, _)| (a, std::cmp::Reverse(b)));
        let mut out = String::with_capacity(s.len());
        let mut at = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end, mut rule) = spans[i];
            i += 1;
            // Merge everything that overlaps or touches this span; a known
            // value names the mask over a pattern that also matched it.
            while i < spans.len() && spans[i].0 <= end {
                end = end.max(spans[i].1);
                if !rule.starts_with("secret:") && spans[i].2.starts_with("secret:") {
                    rule = spans[i].2;
                }
                i += 1;
            }
            let start = start.max(at);
            out.push_str(&s[at..start]);
            let _ = write!(out, "[REDACTED:{rule}]");
            at = end;
        }
        out.push_str(&s[at..]);
        Cow::Owned(out)
    }

    /// Redact a JSON value in place: every string, object key and value;
    /// string values under a sensitive key (`password`, `*_TOKEN`, ...)
    /// and arguments after a sensitive flag (`--password X`) entirely.
    pub fn redact_value_mut(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact_str(s) {
                    *s = r;
                }
            }
            Value::Array(items) => {
                let mut mask_next = false;
                for item in items.iter_mut() {
                    let masked_flag = mask_next;
                    mask_next = false;
                    if let Value::String(s) = item {
                        if masked_flag {
                            *s = "[REDACTED:secret_argument]".into();
                            continue;
                        }
                        mask_next = self.sensitive_flag.is_match(s);
                    }
                    self.redact_value_mut(item);
                }
            }
            Value::Object(map) => {
                let mut renamed = false;
                for (k, val) in map.iter_mut() {
                    if self.sensitive_key.is_match(k) {
                        if let Value::String(s) = val {
                            if !s.is_empty() && !s.starts_with("[REDACTED:") {
                                *s = "[REDACTED:sensitive_key]".into();
                            }
                        }
                    }
                    self.redact_value_mut(val);
                    renamed |= matches!(self.redact_str(k), Cow::Owned(_));
                }
                // Rebuilt only when a key itself holds a secret: rebuilding
                // every object re-hashes it, once per event on the journal.
                if renamed {
                    for (k, val) in std::mem::take(map) {
                        let k = match self.redact_str(&k) {
                            Cow::Borrowed(_) => k,
                            Cow::Owned(r) => r,
                        };
                        map.insert(k, val);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A redacted copy of `v`.
    pub fn redact_value(&self, v: &Value) -> Value {
        let mut v = v.clone();
        self.redact_value_mut(&mut v);
        v
    }

    /// A payload reduced to sha256, size and a redacted excerpt of at most
    /// `max` bytes. The excerpt is redacted with some context past `max`,
    /// so a secret straddling the cut is still recognised and masked.
    pub fn cap_payload(&self, bytes: &[u8], max: usize) -> CappedPayload {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let window = bytes.len().min(max + self.longest_value + 4096);
        let text = String::from_utf8_lossy(&bytes[..window]);
        let red = self.redact_str(&text);
        let mut cut = red.len().min(max);
        while !red.is_char_boundary(cut) {
            cut -= 1;
        }
        // Never end inside a mask: keep it whole or drop it.
        let mut excerpt = &red[..cut];
        if let Some(open) = excerpt.rfind('[') {
            let tail = &excerpt[open..];
            if !tail.contains(']') && (MASK.starts_with(tail) || tail.starts_with(MASK)) {
                excerpt = &excerpt[..open];
            }
        }
        CappedPayload {
            sha256,
            size: bytes.len() as u64,
            excerpt: excerpt.to_string(),
            truncated: bytes.len() > max,
        }
    }
}

const MASK: &str = "[REDACTED:";

/// Byte ranges of `[REDACTED:...]` masks already in `s`.
fn existing_masks(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find(MASK) {
        let start = from + i;
        match s[start..].find(']') {
            Some(j) => {
                out.push((start, start + j + 1));
                from = start + j + 1;
            }
            None => break,
        }
    }
    out
}

/// Every form a known value is matched in: itself, URL-encoded (upper and
/// lower case hex, `+` for space), and base64 (standard and URL-safe,
/// padded and not) at each of the 3 alignments it can have inside a larger
/// encoded blob.
pub fn encoded_forms(value: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |s: String, out: &mut Vec<String>| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    if let Ok(s) = std::str::from_utf8(value) {
        push(s.to_string(), &mut out);
        for upper in [true, false] {
            let enc = url_encode(value, upper, false);
            if enc.len() >= MIN_ENCODED_CORE {
                push(enc, &mut out);
            }
            let form = url_encode(value, upper, true);
            if form.len() >= MIN_ENCODED_CORE {
                push(form, &mut out);
            }
        }
    }
    // Hex, both cases (`xxd -p`, `od`-style dumps of the value).
    let lower = hex::encode(value);
    if lower.len() >= MIN_ENCODED_CORE {
        push(lower.to_ascii_uppercase(), &mut out);
        push(lower, &mut out);
    }
    for engine in [&STANDARD, &URL_SAFE] {
        let full = engine.encode(value);
        if full.len() >= MIN_ENCODED_CORE {
            push(full, &mut out);
        }
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            // Encode behind k filler bytes; keep only the characters whose
            // 6 bits all come from the value (the rest depend on neighbours).
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(value);
            let enc = engine.encode(&buf);
            let first = (8 * k).div_ceil(6);
            let last = (8 * (k + value.len())) / 6;
            if last > first && last - first >= MIN_ENCODED_CORE {
                push(enc[first..last].to_string(), &mut out);
            }
            if k == 0 && enc.len() >= MIN_ENCODED_CORE {
                push(enc, &mut out);
            }
        }
    }
    out
}

fn url_encode(value: &[u8], upper: bool, plus_for_space: bool) -> String {
    let mut s = String::with_capacity(value.len() * 3);
    for &b in value {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                s.push(b as char)
            }
            b' ' if plus_for_space => s.push('+'),
            _ if upper => {
                let _ = write!(s, "%{b:02X}");
            }
            _ => {
                let _ = write!(s, "%{b:02x}");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "s3cr3t-Value/with+chars=&more";

    fn r() -> Redactor {
        Redactor::builder().secret("DB_PASSWORD", SECRET).build()
    }

    #[test]
    fn a_known_value_is_masked_in_hex_too() {
        let red = Redactor::builder().secret("K", "s3cr3t-hex-value").build();
        let hex = hex::encode("s3cr3t-hex-value");
        assert_eq!(
            red.redact_str(&format!("dump {hex} end")),
            "dump [REDACTED:secret:K] end"
        );
        assert_eq!(
            red.redact_str(&format!("DUMP {}", hex.to_uppercase())),
            "DUMP [REDACTED:secret:K]"
        );
    }

    #[test]
    fn extra_patterns_mask_their_group_or_match_and_bad_ones_are_named() {
        let red = Redactor::builder()
            .pattern("acme-token", r"acme_(?P<s>[a-z0-9]{12})")
            .unwrap()
            .pattern("whole", r"ZZ[0-9]{6}ZZ")
            .unwrap()
            .build();
        assert_eq!(
            red.redact_str("t=acme_abcdef123456 end"),
            "t=acme_[REDACTED:acme-token] end"
        );
        assert_eq!(red.redact_str("x ZZ123456ZZ y"), "x [REDACTED:whole] y");
        let e = Redactor::builder()
            .pattern("broken", r"(unclosed")
            .err()
            .unwrap();
        assert!(e.contains("broken"), "{e}");
    }

    fn assert_masked(red: &Redactor, text: &str, rule: &str) {
        let out = red.redact_str(text);
        assert!(
            out.contains(&format!("[REDACTED:{rule}]")),
            "{text:?} -> {out:?} lacks {rule}"
        );
    }

    #[test]
    fn brig_upload_urls_are_masked_by_shape() {
        let red = Redactor::patterns_only();
        let token = format!("{}.{}", "6a".repeat(40), "0f".repeat(32));
        let text = format!("curl -T app.tgz http://artifacts.brig/v1/upload/{token}");
        let out = red.redact_str(&text);
        assert_eq!(
            out,
            "curl -T app.tgz http://artifacts.brig/v1/upload/[REDACTED:brig_upload_token]"
        );
        // The logged path form and other hex stay as they are.
        assert_eq!(red.redact_str("/v1/upload/[token]"), "/v1/upload/[token]");
        assert_eq!(red.redact_str("sha256 0f0f0f"), "sha256 0f0f0f");
    }

    #[test]
    fn known_value_is_masked_verbatim() {
        let red = r();
        let text = format!("connect --pw {SECRET} now");
        assert_eq!(
            red.redact_str(&text),
            "connect --pw [REDACTED:secret:DB_PASSWORD] now"
        );
    }

    #[test]
    fn known_value_in_every_base64_form_and_alignment() {
        let red = r();
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            assert_masked(&red, &engine.encode(SECRET), "secret:DB_PASSWORD");
            for prefix in ["", "a", "ab", "abc", "user:"] {
                for suffix in ["", "x", "xy", "\n"] {
                    let blob = engine.encode(format!("{prefix}{SECRET}{suffix}"));
                    let out = red.redact_str(&blob);
                    assert!(
                        out.contains("[REDACTED:secret:DB_PASSWORD]"),
                        "base64 of {prefix:?}+secret+{suffix:?} not masked: {out}"
                    );
                    // Nothing that would decode back to the secret is left.
                    assert!(!out.contains(&engine.encode(SECRET)[4..16]), "{out}");
                }
            }
        }
    }

    #[test]
    fn known_value_url_encoded() {
        let red = r();
        assert_masked(
            &red,
            "https://x/?p=s3cr3t-Value%2Fwith%2Bchars%3D%26more&q=1",
            "secret:DB_PASSWORD",
        );
        assert_masked(
            &red,
            "p=s3cr3t-Value%2fwith%2bchars%3d%26more",
            "secret:DB_PASSWORD",
        );
        let spaced = Redactor::builder()
            .secret("PHRASE", "correct horse battery")
            .build();
        assert_masked(&spaced, "q=correct+horse+battery", "secret:PHRASE");
    }

    #[test]
    fn overlapping_secrets_mask_the_union() {
        let red = Redactor::builder()
            .secret("A", "abcdef123456")
            .secret("B", "123456uvwxyz")
            .build();
        let out = red.redact_str("<abcdef123456uvwxyz>");
        assert_eq!(out, "<[REDACTED:secret:A]>");
        // One inside another.
        let red = Redactor::builder()
            .secret("OUTER", "xxinner-secretxx")
            .secret("INNER", "inner-secret")
            .build();
        assert_eq!(
            red.redact_str("[xxinner-secretxx]"),
            "[[REDACTED:secret:OUTER]]"
        );
        assert_eq!(red.redact_str("inner-secret!"), "[REDACTED:secret:INNER]!");
    }

    #[test]
    fn patterns_each_masked() {
        let red = Redactor::patterns_only();
        let cases = [
            ("aws s3 ls --key AKIAIOSFODNN7EXAMPLE", "aws_access_key_id"),
            (
                "git clone https://ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789@github.com/x",
                "github_token",
            ),
            ("glpat-abcdefghij0123456789", "gitlab_token"),
            ("xoxb-123456789012-abcdefABCDEF", "slack_token"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
                "private_key",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk (cut)",
                "private_key",
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "jwt",
            ),
            ("curl -H 'Authorization: Bearer abc.def-ghi_jkl'", "authorization"),
            ("Authorization: Basic dXNlcjpwYXNz", "authorization"),
            ("password=hunter2", "secret_assignment"),
            ("export API_TOKEN=\"tok en\"", "secret_assignment"),
            ("client_secret: abcdef", "secret_assignment"),
            ("postgres://admin:pa55word@db:5432/x", "url_credentials"),
        ];
        for (text, rule) in cases {
            let out = red.redact_str(text);
            assert!(
                out.contains(&format!("[REDACTED:{rule}]")),
                "{text:?} -> {out:?}"
            );
        }
        // The key stays readable, only the value goes.
        assert_eq!(
            red.redact_str("password=hunter2 next"),
            "password=[REDACTED:secret_assignment] next"
        );
        assert_eq!(
            red.redact_str("Authorization: Bearer abcdefgh12345"),
            "Authorization: Bearer [REDACTED:authorization]"
        );
        assert!(!red.redact_str("AKIAIOSFODNN7EXAMPLE").contains("AKIA"));
    }

    #[test]
    fn may_redact_is_true_wherever_redact_str_masks() {
        let red = Redactor::builder()
            .secret("K", "hunter2-very-secret")
            .pattern("ticket", r"TCK-[0-9]{6}")
            .unwrap()
            .build();
        let secrets = [
            "aws s3 ls --key AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
            "x ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 y",
            "github_pat_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123",
            "glpat-abcdefghij0123456789",
            "xoxb-123456789012-abcdefABCDEF",
            "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXX",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
            "curl -H 'AUTHORIZATION: Bearer abc.def-ghi_jkl'",
            "proxy-authorization=abc",
            "BeArEr abcdefgh12345",
            "password=hunter2",
            "PassWord \x0b\t = hunter2",
            "export API_TOKEN=\"tok en\"",
            "client_secret: abcdef",
            "my.pwd-x: abc",
            "access-key=abc",
            "CREDENTIALS='abc'",
            "postgres://admin:pa55word@db:5432/x",
            "/v1/upload/0123456789abcdef0123.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "key is hunter2-very-secret",
            "aHVudGVyMi12ZXJ5LXNlY3JldA==",
            "ticket TCK-123456",
            // Not ASCII: the whole set decides (`ſ` folds to `s`).
            "ſecret=abc",
        ];
        let mut rules_seen = std::collections::BTreeSet::new();
        for s in secrets {
            assert!(
                matches!(red.redact_searched(s), Cow::Owned(_)),
                "{s:?} not masked"
            );
            assert!(red.may_redact(s), "{s:?}");
            let masked = red.redact_searched(s);
            for m in masked.split("[REDACTED:").skip(1) {
                rules_seen.insert(m.split(']').next().unwrap_or("").to_string());
            }
        }
        // redact_str trusts may_redact: a built-in pattern added without its
        // needle would go unmasked, so each must have an example here.
        for (rule, _) in PATTERNS {
            assert!(
                rules_seen.contains(*rule),
                "no example above is masked by the built-in pattern {rule}: add one (and its needle to BUILTIN_NEEDLES)"
            );
        }
        for s in [
            "prompt_tokens\ncompletion_tokens\ntotal_tokens\nSay hello.",
            "the token bucket refilled; password policy ok",
            "gpt-4o-mini\nassistant\nhello hello",
        ] {
            assert!(!red.may_redact(s), "{s:?}");
            assert!(matches!(red.redact_searched(s), Cow::Borrowed(_)));
        }
        // Every prefix and suffix of the masked cases: never a miss.
        for s in secrets {
            for (i, _) in s.char_indices() {
                for t in [&s[i..], &s[..i]] {
                    if matches!(red.redact_searched(t), Cow::Owned(_)) {
                        assert!(red.may_redact(t), "{t:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn non_secrets_survive() {
        let red = r();
        for text in [
            "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
            "session 123e4567-e89b-12d3-a456-426614174000",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "make test && cargo build --release",
            "the token bucket refilled; password policy ok",
            "AKIA is a prefix",
            "e-0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(red.redact_str(text), text);
            assert!(matches!(red.redact_str(text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn redaction_is_idempotent() {
        let red = r();
        let once = red
            .redact_str(&format!("token={SECRET} AKIAIOSFODNN7EXAMPLE"))
            .into_owned();
        assert_eq!(red.redact_str(&once), once);
    }

    #[test]
    fn json_keys_values_flags_recursively() {
        let red = r();
        let v = json!({
            "argv": ["mysql", "--password", "hunter2", "-e", "select 1", "AKIAIOSFODNN7EXAMPLE"],
            "env": {"GITHUB_TOKEN": "anything-at-all", "PATH": "/usr/bin", "EMPTY_SECRET": ""},
            "nested": [{"deep": format!("x {SECRET} y")}],
            SECRET: 1,
            "stdout_bytes": 42,
            "tokens": 17
        });
        let out = red.redact_value(&v);
        assert_eq!(out["argv"][2], "[REDACTED:secret_argument]");
        assert_eq!(out["argv"][3], "-e");
        assert_eq!(out["argv"][5], "[REDACTED:aws_access_key_id]");
        assert_eq!(out["env"]["GITHUB_TOKEN"], "[REDACTED:sensitive_key]");
        assert_eq!(out["env"]["PATH"], "/usr/bin");
        assert_eq!(out["env"]["EMPTY_SECRET"], "");
        assert_eq!(
            out["nested"][0]["deep"],
            "x [REDACTED:secret:DB_PASSWORD] y"
        );
        assert_eq!(out["[REDACTED:secret:DB_PASSWORD]"], 1);
        assert_eq!(out["stdout_bytes"], 42);
        assert_eq!(out["tokens"], 17);
        assert!(!out.to_string().contains(SECRET));
        assert!(!out.to_string().contains("hunter2"));
    }

    #[test]
    fn cap_payload_digests_and_masks_across_the_cut() {
        let red = r();
        let mut payload = vec![b'a'; 10];
        payload.extend_from_slice(SECRET.as_bytes());
        payload.extend(std::iter::repeat_n(b'z', 10_000));
        let c = red.cap_payload(&payload, 16);
        assert_eq!(c.size, payload.len() as u64);
        assert_eq!(c.sha256, hex::encode(Sha256::digest(&payload)));
        assert!(c.truncated);
        assert!(c.excerpt.len() <= 16, "{}", c.excerpt);
        // The secret straddles byte 16: not a single byte of it past the a's.
        assert_eq!(c.excerpt, "aaaaaaaaaa");
        let small = red.cap_payload(b"ok", 16);
        assert_eq!(small.excerpt, "ok");
        assert!(!small.truncated);
        // Non-UTF-8 is excerpted lossily, never panics at a boundary.
        let c = red.cap_payload("ééééé".as_bytes(), 3);
        assert_eq!(c.excerpt, "é");
    }

    #[test]
    fn debug_never_prints_secrets() {
        assert!(!format!("{:?}", r()).contains("s3cr3t"));
    }
}
