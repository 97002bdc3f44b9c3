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
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, Weak};

use brig_redact::Redactor;
use serde_json::Value;
use siphasher::sip128::SipHasher13;

use crate::pii::PiiRules;
use crate::record::{UsageFields, UsageKey};

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
    /// Verdicts of strings seen before, when the scan may use them.
    cache: Option<Taken>,
}

impl Scan {
    /// `x` into the text, unless it is known clean under this scan's
    /// redactor (then the text scan would find nothing in it anyway).
    fn push(&mut self, x: &str) {
        self.push_word(x, common(x).is_some())
    }

    /// [`Scan::push`] of a string whose [`common`] verdict is known.
    fn push_word(&mut self, x: &str, common: bool) {
        if let Some(c) = &mut self.cache {
            if common && c.common {
                return;
            }
            if x.len() >= CACHE_MIN {
                let h = c.sip.hash(x.as_bytes()).as_u128();
                if c.seen.contains(&h) {
                    return;
                }
                c.pending.push(h);
            }
        }
        self.text.push_str(x);
        self.text.push('\n');
    }
}

/// Strings shorter than this are scanned every time: hashing one and
/// looking it up costs about what scanning it does.
const CACHE_MIN: usize = 32;
/// At most this many verdicts are kept (16 bytes each, about 1.2 MiB with
/// the table's overhead); a full cache starts over.
const CACHE_MAX: usize = 1 << 16;

macro_rules! common_words {
    (sensitive: [$($s:literal),* $(,)?], plain: [$($p:literal),* $(,)?] $(,)?) => {
        /// The words of the providers' wire formats (member names and the
        /// values they take: roles, types, finish reasons): most of the
        /// strings of every call, and too short for the table to pay.
        /// Left out of the text like the table's strings, and under the
        /// same rule: only while each of them alone is clean under the
        /// redactor and the PII rules of the scan ([`common_clean`]).
        /// `Some(may_be_sensitive_key(x))` for one of them (the words are
        /// listed by that verdict; a test checks it), `None` otherwise.
        fn common(x: &str) -> Option<bool> {
            match x {
                $($s)|* => Some(true),
                $($p)|* => Some(false),
                _ => None,
            }
        }
        const COMMON: &[&str] = &[$($s,)* $($p),*];
    };
}

common_words! {
    sensitive: [
        "accepted_prediction_tokens",
        "audio_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cached_tokens",
        "completion_tokens",
        "completion_tokens_details",
        "input_tokens",
        "input_tokens_details",
        "max_completion_tokens",
        "max_tokens",
        "output_tokens",
        "output_tokens_details",
        "prompt_tokens",
        "prompt_tokens_details",
        "reasoning_tokens",
        "rejected_prediction_tokens",
        "total_tokens",
    ],
    plain: [
        "additionalProperties",
        "annotations",
        "arguments",
        "array",
        "assistant",
        "auto",
        "base64",
        "boolean",
        "cache_control",
        "chat.completion",
        "chat.completion.chunk",
        "choices",
        "completed",
        "content",
        "created",
        "data",
        "default",
        "delta",
        "description",
        "developer",
        "dimensions",
        "effort",
        "embedding",
        "encoding_format",
        "end_turn",
        "enum",
        "ephemeral",
        "event",
        "finish_reason",
        "float",
        "format",
        "frequency_penalty",
        "function",
        "high",
        "id",
        "image",
        "image_url",
        "in_progress",
        "include_usage",
        "index",
        "input",
        "input_text",
        "instructions",
        "integer",
        "is_error",
        "items",
        "json_object",
        "json_schema",
        "length",
        "list",
        "logit_bias",
        "logprobs",
        "low",
        "media_type",
        "medium",
        "message",
        "messages",
        "metadata",
        "model",
        "name",
        "none",
        "null",
        "number",
        "object",
        "output",
        "output_text",
        "parallel_tool_calls",
        "parameters",
        "presence_penalty",
        "previous_response_id",
        "properties",
        "reasoning",
        "refusal",
        "required",
        "response",
        "response_format",
        "role",
        "schema",
        "seed",
        "service_tier",
        "signature",
        "source",
        "status",
        "stop",
        "stop_reason",
        "stop_sequence",
        "store",
        "stream",
        "stream_options",
        "strict",
        "string",
        "summary",
        "system",
        "system_fingerprint",
        "temperature",
        "text",
        "thinking",
        "tool",
        "tool_call_id",
        "tool_calls",
        "tool_choice",
        "tool_result",
        "tool_use",
        "tool_use_id",
        "tools",
        "top_k",
        "top_logprobs",
        "top_p",
        "type",
        "url",
        "usage",
        "user",
    ],
}

/// Whether no word of [`common`] needs masking alone.
fn common_clean(red: &Redactor, pii: &PiiRules) -> bool {
    COMMON
        .iter()
        .all(|w| !red.may_redact(w) && !pii.may_match(w))
}

/// The table's hasher: its keys are already keyed SipHash values.
#[derive(Default)]
struct Low64(u64);

impl Hasher for Low64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = self.0.rotate_left(8) ^ u64::from(x);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Seen = HashSet<u128, BuildHasherDefault<Low64>>;

/// Strings the prefilter already found clean: no known value, no secret
/// pattern and no PII detector matched them, under one redactor (the PII
/// rules are the gateway's, fixed). Agents send their system prompt, tool
/// definitions and the whole conversation so far again in every call, so
/// most of a request's text was seen in the one before.
///
/// Entries are 128-bit SipHash-1-3 values under a key drawn at start: a
/// client cannot make a string that needs masking collide with a clean one
/// it cannot see the key of. A string is entered only after a scan of the
/// text it was part of found nothing (so it is clean on its own: what the
/// scan finds in one string it finds in any text holding it); a cached
/// string is only left out of the text scan, never out of the value rules
/// (sensitive keys and flags) or out of a walk. A new redactor (secrets
/// added or removed) empties the cache.
pub(crate) struct CleanCache {
    sip: SipHasher13,
    state: Mutex<Option<CacheState>>,
}

struct CacheState {
    /// The redactor the verdicts hold for. A `Weak` keeps its allocation,
    /// so a later redactor can never have the same address.
    redactor: Weak<Redactor>,
    seen: Seen,
    /// [`common_clean`] under it.
    common: bool,
}

/// A cache's table, taken for one record's scan.
struct Taken {
    sip: SipHasher13,
    redactor: Weak<Redactor>,
    seen: Seen,
    common: bool,
    /// Hashes of the strings added to the text: entered if it is clean.
    pending: Vec<u128>,
}

impl CleanCache {
    pub fn new() -> CleanCache {
        CleanCache {
            sip: SipHasher13::new_with_keys(rand::random(), rand::random()),
            state: Mutex::new(None),
        }
    }

    /// The table for a scan under `red` (an empty one when the last scan
    /// was under another redactor, or when another scan has it).
    fn take(&self, red: &Arc<Redactor>, pii: &PiiRules) -> Taken {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        let (seen, common) = match st {
            Some(st) if std::ptr::eq(st.redactor.as_ptr(), Arc::as_ptr(red)) => {
                (st.seen, st.common)
            }
            _ => (Seen::default(), common_clean(red, pii)),
        };
        Taken {
            sip: self.sip,
            redactor: Arc::downgrade(red),
            seen,
            common,
            pending: Vec::new(),
        }
    }

    /// The table back, with `pending` entered when `clean`.
    fn give_back(&self, mut t: Taken, clean: bool) {
        if clean {
            if t.seen.len() + t.pending.len() > CACHE_MAX {
                t.seen.clear();
            }
            t.seen.extend(t.pending.drain(..));
        }
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(CacheState {
            redactor: t.redactor,
            seen: t.seen,
            common: t.common,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |s| s.seen.len())
    }
}

fn collect(v: &Value, s: &mut Scan) {
    match v {
        Value::String(x) => s.push(x),
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
                s.push(k);
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

/// The prefilter over everything one record holds as text: JSON bodies
/// scanned as they are (no tree built: [`Prefilter::add_json`]), trees,
/// and plain strings, all joined into one text; then one pass of the known
/// values, one of the secret patterns and one of the PII set over it
/// ([`Prefilter::need`]) instead of one of each per value and per string.
pub(crate) struct Prefilter<'a> {
    s: Scan,
    home: Option<&'a CleanCache>,
}

impl<'a> Prefilter<'a> {
    pub fn new() -> Prefilter<'a> {
        let mut text = TEXT.with(|t| t.take());
        text.clear();
        Prefilter {
            s: Scan {
                text,
                value_rule: false,
                cache: None,
            },
            home: None,
        }
    }

    /// A prefilter that leaves strings `cache` knows clean under `red` out
    /// of its text scan, and enters the ones it finds clean. Its verdict
    /// ([`Prefilter::need`]) must be taken with `red`.
    pub fn cached(cache: &'a CleanCache, red: &Arc<Redactor>, pii: &PiiRules) -> Prefilter<'a> {
        let mut p = Prefilter::new();
        p.s.cache = Some(cache.take(red, pii));
        p.home = Some(cache);
        p
    }

    /// Every string and key of a tree.
    pub fn add_value(&mut self, v: &Value) {
        collect(v, &mut self.s);
    }

    pub fn add_str(&mut self, x: &str) {
        self.s.push(x);
    }

    pub fn add_str_opt(&mut self, x: Option<&str>) {
        if let Some(x) = x {
            self.add_str(x);
        }
    }

    /// Done without a decision (its buffer is kept for the next one).
    pub fn discard(mut self) {
        if let (Some(home), Some(t)) = (self.home, self.s.cache.take()) {
            home.give_back(t, false);
        }
        let s = self.s;
        if s.text.capacity() <= 1 << 20 {
            TEXT.with(|t| t.set(s.text));
        }
    }

    /// Scans (and so validates) the JSON text `b` as [`Prefilter::add_value`]
    /// would its tree, without building one; with `usage`, the counts of
    /// the top-level `usage` object are read (none: it has no such
    /// object). On an error (not
    /// JSON, or nested deeper than serde_json allows) nothing of `b` is
    /// added.
    pub fn add_json(
        &mut self,
        b: &[u8],
        usage: Option<&mut Option<UsageFields>>,
    ) -> Result<(), NotJson> {
        let mark = self.s.text.len();
        let pending = self.s.cache.as_ref().map_or(0, |c| c.pending.len());
        let rule = self.s.value_rule;
        let mode = match usage {
            Some(u) => Mode::Top(u),
            None => Mode::Plain,
        };
        let r = std::str::from_utf8(b).map_err(|_| NotJson).and_then(|t| {
            let mut rd = Reader { t, i: 0, depth: 0 };
            rd.ws();
            rd.value(&mut self.s, mode)?;
            rd.ws();
            if rd.i == t.len() {
                Ok(())
            } else {
                Err(NotJson)
            }
        });
        if r.is_err() {
            // Its strings were not scanned: none of them may be entered.
            self.s.text.truncate(mark);
            if let Some(c) = &mut self.s.cache {
                c.pending.truncate(pending);
            }
            self.s.value_rule = rule;
        }
        r
    }

    /// `false`: [`scrub`] would leave every value added as it is, and
    /// `redact_str` of the redactor and of the PII rules every string.
    pub fn need(mut self, red: &Redactor, pii: &PiiRules) -> bool {
        // The text's verdict alone says whether its strings are clean: the
        // value rules are about where a string is, not what it holds.
        let text_hit = red.may_redact(&self.s.text) || pii.may_match(&self.s.text);
        let mut other_redactor = false;
        if let (Some(home), Some(t)) = (self.home, self.s.cache.take()) {
            // Strings were left out by verdicts under the cache's
            // redactor: under another one only a walk can tell.
            other_redactor = !std::ptr::eq(t.redactor.as_ptr(), red);
            home.give_back(t, !text_hit && !other_redactor);
        }
        let s = self.s;
        let need = s.value_rule || text_hit || other_redactor;
        if s.text.capacity() <= 1 << 20 {
            TEXT.with(|t| t.set(s.text));
        }
        need
    }
}

/// What a scanned JSON value was, as its container needs to know.
enum Kind {
    Str { nonempty: bool, flag: bool },
    U64(u64),
    Object,
    Other,
}

/// Where a scanned value's usage counts go.
enum Mode<'a> {
    Plain,
    /// The body: its `usage` member's counts.
    Top(&'a mut Option<UsageFields>),
    /// A `usage` object.
    Usage(&'a mut UsageFields),
    /// A `*_tokens_details` object of one: its `cached_tokens`.
    Details(&'a mut u64),
}

/// A body that is not one JSON value (or is nested deeper than serde_json
/// allows): nothing of it was scanned.
#[derive(Debug)]
pub(crate) struct NotJson;

/// serde_json's nesting limit: the 128th level is an error.
const MAX_DEPTH: usize = 128;

/// One JSON text read once for the prefilter ([`Prefilter::add_json`]):
/// every string and key decoded into the scan's text, with the same value
/// rules as [`collect`] over its tree, and the usage counts read on the
/// way. No tree and no serde machinery per value: a string without
/// escapes is the text between its quotes; one with escapes is decoded by
/// serde_json itself, so the text is what a tree would hold.
struct Reader<'a> {
    t: &'a str,
    i: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn b(&self) -> &'a [u8] {
        self.t.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.b().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn enter(&mut self) -> Result<(), NotJson> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(NotJson);
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    /// After a member or element: `true` when `close` ended the container.
    fn next_or_close(&mut self, close: u8) -> Result<bool, NotJson> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            Some(c) if c == close => {
                self.i += 1;
                self.depth -= 1;
                Ok(true)
            }
            _ => Err(NotJson),
        }
    }

    fn value(&mut self, s: &mut Scan, mode: Mode<'_>) -> Result<Kind, NotJson> {
        match self.peek() {
            Some(b'"') => {
                let x = self.string()?;
                s.push(&x);
                Ok(Kind::Str {
                    nonempty: !x.is_empty(),
                    flag: may_be_sensitive_flag(&x),
                })
            }
            Some(b'{') => self.object(s, mode),
            Some(b'[') => self.array(s),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(NotJson),
        }
    }

    fn literal(&mut self, word: &str) -> Result<Kind, NotJson> {
        if !self.b()[self.i..].starts_with(word.as_bytes()) {
            return Err(NotJson);
        }
        self.i += word.len();
        Ok(Kind::Other)
    }

    /// The string at `"`, decoded.
    fn string(&mut self) -> Result<Cow<'a, str>, NotJson> {
        let b = self.b();
        let start = self.i + 1;
        let mut j = start;
        let mut escaped = false;
        loop {
            match memchr::memchr2(b'"', b'\\', &b[j..]) {
                None => return Err(NotJson),
                Some(k) if b[j + k] == b'"' => {
                    j += k;
                    break;
                }
                // The byte after a backslash never ends the string.
                Some(k) => {
                    escaped = true;
                    j += k + 2;
                    if j > b.len() {
                        return Err(NotJson);
                    }
                }
            }
        }
        // JSON strings hold no raw control characters (serde_json refuses
        // them; so does this scan).
        if b[start..j].iter().fold(false, |m, &c| m | (c < 0x20)) {
            return Err(NotJson);
        }
        self.i = j + 1;
        // Quotes are ASCII: both ends are char boundaries.
        if !escaped {
            return Ok(Cow::Borrowed(&self.t[start..j]));
        }
        serde_json::from_str::<String>(&self.t[start - 1..j + 1])
            .map(Cow::Owned)
            .map_err(|_| NotJson)
    }

    /// As serde_json reads it: `U64` for an integer without sign, fraction
    /// or exponent that fits in a u64; anything else is an f64 or an i64.
    fn number(&mut self) -> Result<Kind, NotJson> {
        let b = self.b();
        let digits = |j: &mut usize| {
            let from = *j;
            while matches!(b.get(*j), Some(b'0'..=b'9')) {
                *j += 1;
            }
            *j > from
        };
        let mut j = self.i;
        let neg = b[j] == b'-';
        if neg {
            j += 1;
        }
        let int_start = j;
        match b.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => {
                digits(&mut j);
            }
            _ => return Err(NotJson),
        }
        let int_end = j;
        let mut integer = true;
        if b.get(j) == Some(&b'.') {
            integer = false;
            j += 1;
            if !digits(&mut j) {
                return Err(NotJson);
            }
        }
        if matches!(b.get(j), Some(b'e' | b'E')) {
            integer = false;
            j += 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if !digits(&mut j) {
                return Err(NotJson);
            }
        }
        self.i = j;
        if neg || !integer {
            return Ok(Kind::Other);
        }
        let mut n: u64 = 0;
        for &d in &b[int_start..int_end] {
            match n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
            {
                Some(v) => n = v,
                None => return Ok(Kind::Other),
            }
        }
        Ok(Kind::U64(n))
    }

    fn array(&mut self, s: &mut Scan) -> Result<Kind, NotJson> {
        self.enter()?;
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Kind::Other);
        }
        let mut after_flag = false;
        loop {
            match self.value(s, Mode::Plain)? {
                Kind::Str { flag, .. } => {
                    if after_flag {
                        s.value_rule = true;
                    }
                    after_flag = flag;
                }
                _ => after_flag = false,
            }
            if self.next_or_close(b']')? {
                return Ok(Kind::Other);
            }
        }
    }

    fn object(&mut self, s: &mut Scan, mut mode: Mode<'_>) -> Result<Kind, NotJson> {
        self.enter()?;
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Kind::Object);
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(NotJson);
            }
            let key = self.string()?;
            let word = common(&key);
            s.push_word(&key, word.is_some());
            let sensitive = word.unwrap_or_else(|| may_be_sensitive_key(&key));
            let name = UsageKey::of(&key);
            self.ws();
            if self.peek() != Some(b':') {
                return Err(NotJson);
            }
            self.i += 1;
            self.ws();
            // The last of duplicate members counts, as in a tree.
            let mut usage = UsageFields::default();
            let mut cached = 0;
            let child = match &mut mode {
                Mode::Top(_) if name == UsageKey::Usage => Mode::Usage(&mut usage),
                Mode::Usage(_)
                    if matches!(name, UsageKey::PromptDetails | UsageKey::InputDetails) =>
                {
                    Mode::Details(&mut cached)
                }
                _ => Mode::Plain,
            };
            let k = self.value(s, child)?;
            if sensitive && matches!(k, Kind::Str { nonempty: true, .. }) {
                s.value_rule = true;
            }
            match &mut mode {
                Mode::Top(out) if name == UsageKey::Usage => {
                    **out = matches!(k, Kind::Object).then_some(usage);
                }
                Mode::Usage(u) => {
                    let n = match k {
                        Kind::U64(n) => n,
                        _ => 0,
                    };
                    let object = matches!(k, Kind::Object);
                    if let Some(f) = u.field(name) {
                        *f = n;
                    } else if let Some(f) = u.details(name) {
                        *f = if object { cached } else { 0 };
                    }
                }
                Mode::Details(c) if name == UsageKey::Cached => {
                    **c = match k {
                        Kind::U64(n) => n,
                        _ => 0,
                    };
                }
                _ => {}
            }
            if self.next_or_close(b'}')? {
                return Ok(Kind::Object);
            }
        }
    }
}

/// Whether any of `values` or `strs` may hold something to mask
/// ([`Prefilter`] over them).
#[cfg(test)]
pub(crate) fn may_need(values: &[&Value], strs: &[&str], red: &Redactor, pii: &PiiRules) -> bool {
    let mut p = Prefilter::new();
    for v in values {
        p.add_value(v);
    }
    for x in strs {
        p.add_str(x);
    }
    p.need(red, pii)
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

    /// One record's scan of `bodies` through `cache`: its verdict and the
    /// text it scanned.
    fn cached_scan(
        cache: &CleanCache,
        red: &Arc<Redactor>,
        bodies: &[&str],
        extra: &[&str],
    ) -> (bool, String) {
        let mut p = Prefilter::cached(cache, red, &rules());
        for b in bodies {
            let _ = p.add_json(b.as_bytes(), None);
        }
        for x in extra {
            p.add_str(x);
        }
        let text = p.s.text.clone();
        (p.need(red, &rules()), text)
    }

    #[test]
    fn the_cache_leaves_out_only_strings_seen_clean_under_the_same_redactor() {
        let cache = CleanCache::new();
        let long = "You are a careful coding agent; the deploy value is hunter2-very-secret-long.";
        let body = format!(r#"{{"messages":[{{"role":"system","content":"{long}"}}]}}"#);
        let red = Arc::new(Redactor::patterns_only());
        // First seen: scanned, clean, entered; then left out of the text.
        let (need, text) = cached_scan(&cache, &red, &[&body], &[]);
        assert!(!need);
        assert!(text.contains(long));
        assert_eq!(cache.len(), 1);
        let (need, text) = cached_scan(&cache, &red, &[&body], &[]);
        assert!(!need);
        assert!(!text.contains(long), "{text}");
        assert!(
            !text.contains("content"),
            "the protocol's words are left out"
        );
        // A new redactor that knows the value: the cache starts over and
        // the string is scanned (and needs masking).
        let red2 = Arc::new(
            Redactor::builder()
                .secret("K", "hunter2-very-secret-long")
                .build(),
        );
        let (need, text) = cached_scan(&cache, &red2, &[&body], &[]);
        assert!(need);
        assert!(text.contains(long));
        assert_eq!(cache.len(), 0, "nothing is entered from a text that hits");
        let (need, _) = cached_scan(&cache, &red2, &[&body], &[]);
        assert!(need);
        // A verdict taken under another redactor than the cache's cannot
        // be trusted for what was left out: a walk.
        let _ = cached_scan(&cache, &red, &[&body], &[]);
        let mut p = Prefilter::cached(&cache, &red, &rules());
        p.add_json(body.as_bytes(), None).unwrap();
        assert!(p.need(&red2, &rules()));
    }

    #[test]
    fn the_cache_never_enters_pii_or_what_it_did_not_scan() {
        let cache = CleanCache::new();
        let red = Arc::new(Redactor::patterns_only());
        let mail = "Please send the staging report to jane.doe@example.com by Friday.";
        let clean = "Please send the staging report to the release channel by Friday.";
        // PII anywhere in the text: nothing of that record is entered, so
        // it is scanned (and found) again in the next.
        for _ in 0..3 {
            let (need, text) = cached_scan(&cache, &red, &[], &[clean, mail]);
            assert!(need);
            assert!(text.contains(mail) && text.contains(clean));
        }
        assert_eq!(cache.len(), 0);
        // A clean string entered does not hide PII next to it.
        assert!(!cached_scan(&cache, &red, &[], &[clean]).0);
        let (need, text) = cached_scan(&cache, &red, &[], &[clean, mail]);
        assert!(need);
        assert!(!text.contains(clean) && text.contains(mail));
        // A body that is not JSON is not scanned: its strings are not
        // entered, even when the rest of the record is clean.
        let cache = CleanCache::new();
        let broken = format!(r#"{{"a":"{mail}","b":"#);
        assert!(!cached_scan(&cache, &red, &[&broken], &["gpt-4o-mini"]).0);
        assert_eq!(cache.len(), 0);
        // Value rules are never cached away: a sensitive key's string is
        // a walk every time, though the string itself is entered as clean.
        let body = format!(r#"{{"api_key":"{clean}"}}"#);
        for _ in 0..2 {
            assert!(cached_scan(&cache, &red, &[&body], &[]).0);
        }
        let mut v: Value = serde_json::from_str(&body).unwrap();
        scrub(&mut v, &red, &rules());
        assert_eq!(v["api_key"], "[REDACTED:sensitive_key]");
    }

    #[test]
    fn the_protocols_words_are_left_out_only_while_each_is_clean() {
        let pii = rules();
        for w in COMMON {
            assert_eq!(common(w), Some(may_be_sensitive_key(w)), "{w}");
        }
        // Under the built-in rules every word is clean, so they are left
        // out; other short strings never are.
        let red = Arc::new(Redactor::patterns_only());
        assert!(common_clean(&red, &pii));
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi."}],"max_tokens":5}"#;
        let cache = CleanCache::new();
        let (need, text) = cached_scan(&cache, &red, &[body], &[]);
        assert!(!need);
        assert_eq!(text, "gpt-4o-mini\nSay hi.\n");
        // A redactor that knows a value one of the words holds: none of
        // them is left out, and the word is found.
        let red2 = Arc::new(
            Redactor::builder()
                .secret("K", "completion_tokens_details")
                .build(),
        );
        assert!(!common_clean(&red2, &pii));
        let body = r#"{"usage":{"completion_tokens_details":{"reasoning_tokens":0}}}"#;
        let (need, text) = cached_scan(&cache, &red2, &[body], &[]);
        assert!(need);
        assert!(text.contains("completion_tokens_details") && text.contains("usage"));
        // A verdict under the cache's redactor is not one under another.
        let mut p = Prefilter::cached(&cache, &red, &pii);
        p.add_json(body.as_bytes(), None).unwrap();
        assert!(p.need(&red2, &pii));
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = CleanCache::new();
        let red = Arc::new(Redactor::patterns_only());
        let strs: Vec<String> = (0..CACHE_MAX + 10)
            .map(|i| format!("a string long enough to be remembered, number {i:08}"))
            .collect();
        for chunk in strs.chunks(1000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            assert!(!cached_scan(&cache, &red, &[], &refs).0);
            assert!(cache.len() <= CACHE_MAX);
        }
        assert!(cache.len() < CACHE_MAX);
    }

    #[test]
    fn the_text_scan_sees_what_the_tree_walk_sees() {
        let cases = [
            r#"{"model":"m","messages":[{"role":"user","content":"hi \"q\" \u0041KIA\n"}],"api_key":"x"}"#,
            r#"["deploy","--password","p",3,"-x"]"#,
            r#"{"a":{"token":""},"b":[1,"--token","x",null,"--pwd",true,"y"]}"#,
            r#" "plain" "#,
            r#"{"usage":{"prompt_tokens":3,"note":"ghp_x","secret":"s"},"k":[],"z":1.5e3}"#,
            r#"{"usage":{"input_tokens":7,"output_tokens":2.5,"input_tokens_details":{"cached_tokens":4}},"x":{"usage":{"input_tokens":1}}}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":-1,"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens_details":7}}"#,
            r#"{"usage":{"cache_read_input_tokens":5,"cache_creation_input_tokens":6,"input_tokens":1},"usage":{"output_tokens":9}}"#,
            r#"{"usage":"none"}"#,
            r#"{"\u0070assword":"v","n":{"deep":[[{"SESSION_ID":"abc"}]]}}"#,
        ];
        for c in cases {
            let v: Value = serde_json::from_str(c).unwrap();
            let mut tree = Scan::default();
            collect(&v, &mut tree);
            let mut p = Prefilter::new();
            let mut usage = None;
            p.add_json(c.as_bytes(), Some(&mut usage)).unwrap();
            let lines = |t: &str| {
                let mut l: Vec<String> = t.split('\n').map(str::to_string).collect();
                l.sort();
                l
            };
            // A tree keeps the last of duplicate members; the scan sees
            // them all (more text, never less).
            let (got, want) = (lines(&p.s.text), lines(&tree.text));
            if c.contains("\"usage\":{\"prompt_tokens\":1,") || c.contains("},\"usage\":{") {
                let mut rest = got.clone();
                for w in &want {
                    let i = rest.iter().position(|x| x == w);
                    assert!(i.is_some(), "{c}: {w:?} not scanned");
                    rest.remove(i.unwrap());
                }
            } else {
                assert_eq!(got, want, "{c}");
            }
            assert_eq!(p.s.value_rule, tree.value_rule, "{c}");
            let want = v.get("usage").filter(|u| u.is_object()).map(|u| {
                let mut f = UsageFields::default();
                f.fill(u);
                f
            });
            assert_eq!(usage, want, "{c}");
            p.discard();
        }
        // Not one JSON value: an error, and nothing of it is kept.
        for c in [r#"{"a":"b"} x"#, r#"{"a":"#, "nope", ""] {
            let mut p = Prefilter::new();
            p.add_str("before");
            assert!(p.add_json(c.as_bytes(), None).is_err(), "{c}");
            assert_eq!(p.s.text, "before\n");
            assert!(!p.s.value_rule);
        }
    }
}
