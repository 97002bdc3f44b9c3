//! One [`ModelCall`] per request, whatever became of it. The request path
//! only collects (the request body, the response's chunks as refcounted
//! `Bytes`, timings); when the response is over, a task parses the copy
//! (usage, the reassembled message of a stream), prices it, adds it to the
//! budgets, redacts it (known secrets, then PII) and hands it to the sink.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::budget::Slot;
use crate::config::Protocol;
use crate::{Endpoint, Inner, SessionState};

/// What the response's chunks are kept up to (the message and usage are
/// parsed from them); past this only the last chunks are kept, which hold
/// the usage of every protocol's stream.
const COLLECT_MAX: usize = 16 << 20;
const TAIL_CHUNKS: usize = 64;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Ok,
    Error,
    Denied,
    ClientClosed,
}

/// Where the token counts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The provider's usage fields.
    Reported,
    /// Estimated by brig (bytes of text / 4), when no usage came back.
    Counted,
    /// Nothing to count (refused before forwarding, models, count_tokens).
    None,
}

/// One upstream attempt (retries and fallbacks each make one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub upstream: String,
    pub model: String,
    /// The upstream's status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: f64,
}

/// The stored record of one model request (what `brig model log` shows).
/// Everything in it has been through the redactor and the PII rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCall {
    /// `mc_` + 24 hex digits; also the `x-brig-call` response header.
    pub id: String,
    pub session: String,
    pub human: Option<String>,
    pub task: Option<String>,
    /// RFC 3339, when the request arrived.
    pub time: String,
    /// `chat.completions`, `responses`, `embeddings`, `models`,
    /// `messages`, `messages.count_tokens`, `unknown`.
    pub endpoint: String,
    /// The model the client asked for.
    pub model: Option<String>,
    /// The alias, when `model` is one.
    pub route: Option<String>,
    /// The upstream and model that answered (or were tried last).
    pub upstream: Option<String>,
    pub upstream_model: Option<String>,
    pub attempts: Vec<Attempt>,
    /// The status the client got.
    pub status: u16,
    pub outcome: CallOutcome,
    /// The brig rule that refused or failed it (`budget:session:max_tokens`,
    /// `model:unknown`, `body:too_large`, ...).
    pub rule: Option<String>,
    pub stream: bool,
    pub latency_ms: f64,
    /// Time to the first byte of the response body sent to the client.
    pub ttfb_ms: Option<f64>,
    /// All input tokens, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub tokens_source: TokenSource,
    /// From `[models.prices]`; none when the model has no price.
    pub cost_usd: Option<f64>,
    /// The request body (redacted JSON), or `{sha256,size,excerpt,
    /// truncated}` when larger than `capture_max` or not JSON.
    pub request: Option<RawJson>,
    /// The response body; for a stream, the reassembled message (text,
    /// tool calls, finish reason, usage), not the SSE bytes.
    pub response: Option<RawJson>,
    pub error: Option<String>,
}

impl ModelCall {
    /// [`ModelCall::request`] as a tree.
    pub fn request_value(&self) -> Option<Value> {
        self.request.as_ref().map(RawJson::to_value)
    }

    /// [`ModelCall::response`] as a tree.
    pub fn response_value(&self) -> Option<Value> {
        self.response.as_ref().map(RawJson::to_value)
    }
}

/// A JSON value kept as its text and serialized as that JSON (not as a
/// string): a record's request and response, so that a call that needs no
/// masking is stored without building and dropping a tree of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value as a tree.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    pub fn from_value(v: &Value) -> RawJson {
        RawJson(
            serde_json::value::to_raw_value(v)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }

    /// `b` as it is, when it is one JSON value.
    pub(crate) fn from_json_bytes(b: &[u8]) -> Option<RawJson> {
        let s = std::str::from_utf8(b).ok()?;
        serde_json::value::RawValue::from_string(s.to_string())
            .ok()
            .map(RawJson)
    }
}

/// Equal when the values are (whatever their spacing).
impl PartialEq for RawJson {
    fn eq(&self, o: &RawJson) -> bool {
        self.get() == o.get() || self.to_value() == o.to_value()
    }
}

/// What a record's request or response is made of before it is stored.
enum Payload {
    None,
    /// JSON text within `capture_max`, scanned.
    Json,
    /// JSON text larger than `capture_max`: a digest.
    JsonCapped,
    /// A tree (a stream's reassembled message).
    Tree(Value),
    /// Not JSON: a digest.
    Capped,
}

/// A request in flight: what its record will be made of.
pub(crate) struct Call {
    pub inner: Arc<Inner>,
    pub session: Option<Arc<SessionState>>,
    pub session_id: Arc<str>,
    pub id: String,
    pub start: Instant,
    pub time: OffsetDateTime,
    pub endpoint: Endpoint,
    pub protocol: Protocol,
    pub model: Option<String>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<usize>,
    pub upstream_model: Option<Arc<str>>,
    pub attempts: Vec<Attempt>,
    pub status: u16,
    pub outcome: Option<CallOutcome>,
    pub rule: Option<String>,
    pub stream: bool,
    pub ttfb: Option<Duration>,
    pub request: Bytes,
    chunks: Vec<Bytes>,
    collected: usize,
    dropped_middle: bool,
    pub sse: bool,
    pub error: Option<String>,
    pub slot: Option<Slot>,
}

impl Call {
    pub fn new(
        inner: Arc<Inner>,
        session_id: Arc<str>,
        endpoint: Endpoint,
        protocol: Protocol,
    ) -> Call {
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let id = format!("mc_{:024x}", rand::random::<u128>() >> 32);
        Call {
            inner,
            session: None,
            session_id,
            id,
            start: Instant::now(),
            time: OffsetDateTime::now_utc(),
            endpoint,
            protocol,
            model: None,
            route: None,
            upstream: None,
            upstream_model: None,
            attempts: Vec::new(),
            status: 0,
            outcome: None,
            rule: None,
            stream: false,
            ttfb: None,
            request: Bytes::new(),
            chunks: Vec::new(),
            collected: 0,
            dropped_middle: false,
            sse: false,
            error: None,
            slot: None,
        }
    }

    /// A copy of a response chunk (a refcount, no bytes copied).
    pub fn keep(&mut self, b: &Bytes) {
        if self.ttfb.is_none() {
            self.ttfb = Some(self.start.elapsed());
        }
        if self.collected + b.len() <= COLLECT_MAX {
            self.collected += b.len();
            // A copy, not a reference: a chunk is a slice of the upstream
            // connection's read buffer, which hyper could not reuse while
            // the record holds it (a new buffer per response).
            self.chunks.push(Bytes::copy_from_slice(b));
        } else {
            // Keep the head (message_start, the first deltas) and a tail.
            self.dropped_middle = true;
            if self.chunks.len() > TAIL_CHUNKS * 2 {
                self.chunks.remove(TAIL_CHUNKS);
            }
            self.chunks.push(Bytes::copy_from_slice(b));
        }
    }

    pub fn fail(&mut self, status: u16, rule: &str, message: &str, outcome: CallOutcome) {
        self.status = status;
        self.rule = Some(rule.to_string());
        self.error = Some(message.to_string());
        self.outcome = Some(outcome);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Free the concurrency slot now, not when the record is written.
        self.slot = None;
        if self.outcome.is_none() {
            self.outcome = Some(CallOutcome::ClientClosed);
            if self.status == 0 {
                self.status = 499;
            }
            if self.error.is_none() {
                self.error =
                    Some("the client closed the connection before the response ended".into());
            }
        }
        let done = Done {
            inner: self.inner.clone(),
            session: self.session.take(),
            session_id: self.session_id.clone(),
            id: std::mem::take(&mut self.id),
            latency: self.start.elapsed(),
            time: self.time,
            endpoint: self.endpoint,
            model: self.model.take(),
            route: self.route.take(),
            upstream: self.upstream,
            upstream_model: self.upstream_model.take(),
            attempts: std::mem::take(&mut self.attempts),
            status: self.status,
            outcome: self.outcome.unwrap_or(CallOutcome::Error),
            rule: self.rule.take(),
            stream: self.stream,
            ttfb: self.ttfb,
            request: std::mem::take(&mut self.request),
            chunks: std::mem::take(&mut self.chunks),
            dropped_middle: self.dropped_middle,
            sse: self.sse,
            error: self.error.take(),
        };
        self.inner.recorder.send(done);
    }
}

/// One task makes the records, in arrival order: a queue instead of a
/// task per call, so a busy gateway wakes no thread per request.
#[derive(Default)]
pub(crate) struct Recorder {
    tx: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Done>>,
}

impl Recorder {
    fn send(&self, done: Done) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return done.finish();
        };
        let tx = self.tx.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
            rt.spawn(async move {
                while let Some(d) = rx.recv().await {
                    // Let the calls finishing meanwhile queue up: one wake
                    // of this task per batch under load, not one per call.
                    tokio::task::yield_now().await;
                    d.finish();
                    while let Ok(d) = rx.try_recv() {
                        d.finish();
                    }
                }
            });
            tx
        });
        if let Err(e) = tx.send(done) {
            // The recorder's runtime is gone (a test's): record inline.
            e.0.finish();
        }
    }
}

/// A finished call, moved off the request path.
pub(crate) struct Done {
    inner: Arc<Inner>,
    session: Option<Arc<SessionState>>,
    session_id: Arc<str>,
    id: String,
    latency: Duration,
    time: OffsetDateTime,
    endpoint: Endpoint,
    model: Option<String>,
    route: Option<Arc<str>>,
    upstream: Option<usize>,
    upstream_model: Option<Arc<str>>,
    attempts: Vec<Attempt>,
    status: u16,
    outcome: CallOutcome,
    rule: Option<String>,
    stream: bool,
    ttfb: Option<Duration>,
    request: Bytes,
    chunks: Vec<Bytes>,
    dropped_middle: bool,
    sse: bool,
    error: Option<String>,
}

/// Token counts of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
    pub cache_write: u64,
}

impl Done {
    fn finish(mut self) {
        let inner = self.inner.clone();
        let cfg = &inner.config;
        // One chunk (most bodies that are not streams) is used as it is.
        let body: Bytes = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut b = Vec::with_capacity(self.chunks.iter().map(|c| c.len()).sum());
                for c in &self.chunks {
                    b.extend_from_slice(c);
                }
                Bytes::from(b)
            }
        };
        self.chunks.clear();
        let red = (inner.redactor)();
        let pii = &cfg.pii;
        // Redaction: known secrets (the current set), then PII. Most calls
        // hold neither: one scan over all the record's text (request,
        // response, model, errors) says whether any of it needs the walks.
        // JSON bodies are scanned as they came, and stored as that text
        // unless something in the record needs masking: no tree is built
        // for a clean call.
        let mut pre = crate::scrub::Prefilter::cached(&inner.clean, &red, pii);

        // The response: a stream's reassembled message (a tree), a JSON
        // body (its text), or anything else as a digest.
        let response_capped = !self.sse && body.len() > cfg.capture_max;
        let mut usage = None;
        let mut stream_error = None;
        let mut response = if body.is_empty() {
            Payload::None
        } else if self.sse {
            let (msg, u, err) = parse_stream(self.endpoint, &body);
            usage = u;
            stream_error = err;
            pre.add_value(&msg);
            Payload::Tree(msg)
        } else {
            let mut u = None;
            // A body stored as a digest is scanned for its usage only.
            let scanned = if response_capped {
                let mut skip = crate::scrub::Prefilter::new();
                let r = skip.add_json(&body, Some(&mut u));
                skip.discard();
                r
            } else {
                pre.add_json(&body, Some(&mut u))
            };
            match scanned {
                Ok(()) => {
                    usage = u.map(|u: UsageFields| u.tokens(self.endpoint));
                    if response_capped {
                        Payload::JsonCapped
                    } else {
                        Payload::Json
                    }
                }
                Err(_) => Payload::Capped,
            }
        };
        if let (None, Some(e)) = (&self.error, stream_error) {
            self.error = Some(e);
        }
        if self.dropped_middle {
            if let Payload::Json = response {
                response = serde_json::from_slice(&body)
                    .map(Payload::Tree)
                    .unwrap_or(Payload::Capped);
            }
            if let Payload::Tree(Value::Object(o)) = &mut response {
                o.insert("brig_truncated".into(), Value::Bool(true));
            }
        }
        let request = if self.request.is_empty() {
            Payload::None
        } else if self.request.len() > cfg.capture_max {
            Payload::JsonCapped
        } else {
            match pre.add_json(&self.request, None) {
                Ok(()) => Payload::Json,
                Err(_) => Payload::Capped,
            }
        };

        // Tokens: the provider's, else counted for calls that reached an
        // upstream and take tokens (the trees are built for that only).
        let charged = self.endpoint.charged() && self.upstream.is_some();
        let (tokens, source) = match usage {
            Some(t) => (t, TokenSource::Reported),
            None if charged && (self.status < 400 || self.outcome == CallOutcome::ClientClosed) => {
                let input = serde_json::from_slice::<Value>(&self.request)
                    .ok()
                    .as_ref()
                    .map(estimate_input)
                    .unwrap_or(0);
                let output = match &response {
                    Payload::Tree(v) => estimate_output(self.endpoint, v),
                    Payload::Json | Payload::JsonCapped => serde_json::from_slice::<Value>(&body)
                        .map(|v| estimate_output(self.endpoint, &v))
                        .unwrap_or(0),
                    Payload::Capped | Payload::None => 0,
                };
                (
                    Tokens {
                        input,
                        output,
                        ..Default::default()
                    },
                    TokenSource::Counted,
                )
            }
            None => (Tokens::default(), TokenSource::None),
        };
        let upstream_name = self.upstream.map(|i| cfg.upstreams[i].name.clone());
        let cost = match (&upstream_name, &self.upstream_model) {
            (Some(u), Some(m)) if source != TokenSource::None => {
                cfg.price(u, m).map(|p| cost_of(p, &tokens))
            }
            _ => None,
        };
        if charged {
            let total = tokens.input + tokens.output;
            let spend = cost.unwrap_or(0.0);
            if let Some(s) = &self.session {
                inner.budgets.add(&s.scopes, total, spend);
            }
        }

        pre.add_str_opt(self.model.as_deref());
        pre.add_str_opt(self.error.as_deref());
        for a in &self.attempts {
            pre.add_str_opt(a.error.as_deref());
        }
        let need = pre.need(&red, pii);
        let clean_str = |s: &str| {
            if need {
                pii.redact_str(&red.redact_str(s)).into_owned()
            } else {
                s.to_string()
            }
        };
        // A JSON text that needs masking becomes a tree for the walks.
        let store = |p: Payload, bytes: &[u8]| -> Option<RawJson> {
            match p {
                Payload::None => None,
                // The scan is not serde_json: what it read and serde_json
                // does not (a number out of f64's range) is a digest.
                Payload::Json if !need => {
                    RawJson::from_json_bytes(bytes).or_else(|| Some(capped(&inner, bytes)))
                }
                Payload::Json => match serde_json::from_slice::<Value>(bytes) {
                    Ok(mut v) => {
                        crate::scrub::scrub(&mut v, &red, pii);
                        Some(RawJson::from_value(&v))
                    }
                    Err(_) => Some(capped(&inner, bytes)),
                },
                Payload::Tree(mut v) => {
                    if need {
                        crate::scrub::scrub(&mut v, &red, pii);
                    }
                    let r = RawJson::from_value(&v);
                    // A stream's message is measured (a body's size is known).
                    if r.get().len() > cfg.capture_max {
                        Some(capped(&inner, r.get().as_bytes()))
                    } else {
                        Some(r)
                    }
                }
                Payload::Capped | Payload::JsonCapped => Some(capped(&inner, bytes)),
            }
        };
        let request = store(request, &self.request);
        let response = store(response, &body);
        let (human, task) = match &self.session {
            Some(s) => (s.ctx.human.clone(), s.ctx.task.clone()),
            None => (None, None),
        };
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let call = ModelCall {
            id: self.id,
            session: self.session_id.to_string(),
            human,
            task,
            time: self
                .time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            endpoint: self.endpoint.name().to_string(),
            model: self.model.as_deref().map(clean_str),
            route: self.route.map(|r| r.to_string()),
            upstream: upstream_name.map(|u| u.to_string()),
            upstream_model: self.upstream_model.map(|m| m.to_string()),
            attempts: self
                .attempts
                .into_iter()
                .map(|mut a| {
                    a.error = a.error.as_deref().map(clean_str);
                    a
                })
                .collect(),
            status: self.status,
            outcome: self.outcome,
            rule: self.rule,
            stream: self.stream,
            latency_ms: ms(self.latency),
            ttfb_ms: self.ttfb.map(ms),
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cached_input_tokens: tokens.cached,
            cache_write_tokens: tokens.cache_write,
            tokens_source: source,
            cost_usd: cost,
            request,
            response,
            error: self.error.as_deref().map(clean_str),
        };
        inner.sink.record(call);
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A payload as sha256 + size + redacted excerpt (brig-redact's
/// `cap_payload`, with PII masked in the excerpt too).
fn capped(inner: &Inner, bytes: &[u8]) -> RawJson {
    let red = (inner.redactor)();
    let mut c = red.cap_payload(bytes, inner.config.capture_max.min(4096));
    c.excerpt = inner.config.pii.redact_str(&c.excerpt).into_owned();
    RawJson::from_value(&serde_json::to_value(c).unwrap_or(Value::Null))
}

fn cost_of(p: &crate::config::Price, t: &Tokens) -> f64 {
    let plain = t.input.saturating_sub(t.cached + t.cache_write) as f64;
    let c = plain * p.input
        + t.cached as f64 * p.cached_input.unwrap_or(p.input)
        + t.cache_write as f64 * p.cache_write.unwrap_or(p.input)
        + t.output as f64 * p.output;
    c / 1e6
}

/// The usage fields of a response body (or of a stream's usage object).
pub(crate) fn usage_of(endpoint: Endpoint, v: &Value) -> Option<Tokens> {
    let usage = v.get("usage").filter(|u| u.is_object())?;
    let mut f = UsageFields::default();
    f.fill(usage);
    Some(f.tokens(endpoint))
}

/// The counts a `usage` object may hold, every protocol's (0: absent, or
/// not an unsigned integer); read from a tree ([`UsageFields::fill`]) or
/// while a body is scanned, without one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct UsageFields {
    input_tokens: u64,
    output_tokens: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    /// `prompt_tokens_details.cached_tokens`.
    prompt_cached: u64,
    /// `input_tokens_details.cached_tokens`.
    input_cached: u64,
}

/// The member names a usage count is read by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UsageKey {
    Usage,
    Cached,
    Input,
    Output,
    Prompt,
    Completion,
    CacheRead,
    CacheCreation,
    PromptDetails,
    InputDetails,
    Other,
}

impl UsageKey {
    pub fn of(k: &str) -> UsageKey {
        match k {
            "usage" => UsageKey::Usage,
            "cached_tokens" => UsageKey::Cached,
            "input_tokens" => UsageKey::Input,
            "output_tokens" => UsageKey::Output,
            "prompt_tokens" => UsageKey::Prompt,
            "completion_tokens" => UsageKey::Completion,
            "cache_read_input_tokens" => UsageKey::CacheRead,
            "cache_creation_input_tokens" => UsageKey::CacheCreation,
            "prompt_tokens_details" => UsageKey::PromptDetails,
            "input_tokens_details" => UsageKey::InputDetails,
            _ => UsageKey::Other,
        }
    }
}

impl UsageFields {
    /// The field a member of `usage` is counted in.
    pub fn field(&mut self, k: UsageKey) -> Option<&mut u64> {
        Some(match k {
            UsageKey::Input => &mut self.input_tokens,
            UsageKey::Output => &mut self.output_tokens,
            UsageKey::Prompt => &mut self.prompt_tokens,
            UsageKey::Completion => &mut self.completion_tokens,
            UsageKey::CacheRead => &mut self.cache_read_input_tokens,
            UsageKey::CacheCreation => &mut self.cache_creation_input_tokens,
            _ => return None,
        })
    }

    /// The field the `cached_tokens` of a member object of `usage` is
    /// counted in.
    pub fn details(&mut self, k: UsageKey) -> Option<&mut u64> {
        match k {
            UsageKey::PromptDetails => Some(&mut self.prompt_cached),
            UsageKey::InputDetails => Some(&mut self.input_cached),
            _ => None,
        }
    }

    pub fn fill(&mut self, usage: &Value) {
        let Some(o) = usage.as_object() else { return };
        for (k, v) in o {
            let k = UsageKey::of(k);
            if let Some(f) = self.field(k) {
                *f = v.as_u64().unwrap_or(0);
            } else if let Some(f) = self.details(k) {
                *f = v.get("cached_tokens").and_then(|c| c.as_u64()).unwrap_or(0);
            }
        }
    }

    pub fn tokens(&self, endpoint: Endpoint) -> Tokens {
        match endpoint {
            Endpoint::Messages => {
                let cached = self.cache_read_input_tokens;
                let write = self.cache_creation_input_tokens;
                Tokens {
                    input: self.input_tokens + cached + write,
                    output: self.output_tokens,
                    cached,
                    cache_write: write,
                }
            }
            Endpoint::Responses => Tokens {
                input: self.input_tokens,
                output: self.output_tokens,
                cached: self.input_cached,
                cache_write: 0,
            },
            _ => Tokens {
                input: self.prompt_tokens,
                output: self.completion_tokens,
                cached: self.prompt_cached,
                cache_write: 0,
            },
        }
    }
}

pub(crate) fn text_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_len).sum(),
        Value::Object(o) => o.values().map(text_len).sum(),
        _ => 0,
    }
}

/// The estimator when no usage came back: 1 token per 4 bytes of text
/// (every string of the request but `model`), rounded up.
pub(crate) fn estimate_input(req: &Value) -> u64 {
    let n: usize = match req.as_object() {
        Some(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "model")
            .map(|(_, v)| text_len(v))
            .sum(),
        None => 0,
    };
    n.div_ceil(4) as u64
}

/// The same over the model's output (message text, tool calls).
pub(crate) fn estimate_output(endpoint: Endpoint, resp: &Value) -> u64 {
    let n = match endpoint {
        Endpoint::Messages => resp.get("content").map(text_len).unwrap_or(0),
        Endpoint::Responses => resp
            .get("output")
            .or_else(|| resp.get("output_text"))
            .map(text_len)
            .unwrap_or(0),
        Endpoint::Embeddings => 0,
        _ => resp
            .get("choices")
            .map(|c| {
                c.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.get("message"))
                            .map(text_len)
                            .sum()
                    })
                    .unwrap_or(0)
            })
            .unwrap_or(0),
    };
    n.div_ceil(4) as u64
}

/// The events of an SSE body: (event name, data).
pub(crate) fn sse_events(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let mut event = String::new();
    let mut data = String::new();
    let mut has_data = false;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if has_data {
                out.push((std::mem::take(&mut event), std::mem::take(&mut data)));
            }
            event.clear();
            has_data = false;
            continue;
        }
        if let Some(v) = line.strip_prefix("data:") {
            if has_data {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
            has_data = true;
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        }
    }
    if has_data {
        out.push((event, data));
    }
    out
}

/// A stream's reassembled message, its usage and the error event it ended
/// with, if any.
pub(crate) fn parse_stream(
    endpoint: Endpoint,
    body: &[u8],
) -> (Value, Option<Tokens>, Option<String>) {
    let events = sse_events(body);
    match endpoint {
        Endpoint::Messages => anthropic_stream(&events),
        Endpoint::Responses => responses_stream(&events),
        _ => chat_stream(&events),
    }
}

fn err_text(v: &Value) -> String {
    let e = v.get("error").unwrap_or(v);
    e.get("message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string())
}

fn chat_stream(events: &[(String, String)]) -> (Value, Option<Tokens>, Option<String>) {
    #[derive(Default)]
    struct Choice {
        role: Option<String>,
        content: Option<String>,
        refusal: Option<String>,
        tools: Vec<Map<String, Value>>,
        finish: Value,
    }
    let mut choices: Vec<Choice> = Vec::new();
    let (mut id, mut model) = (Value::Null, Value::Null);
    let mut usage = None;
    let mut error = None;
    for (_, data) in events {
        if data.trim() == "[DONE]" {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if v.get("error").is_some() {
            error = Some(err_text(&v));
            continue;
        }
        if id.is_null() {
            id = v.get("id").cloned().unwrap_or(Value::Null);
            model = v.get("model").cloned().unwrap_or(Value::Null);
        }
        if let Some(t) = usage_of(Endpoint::ChatCompletions, &v) {
            usage = Some(t);
        }
        for c in v
            .get("choices")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            let i = c.get("index").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
            if i > 64 {
                continue;
            }
            while choices.len() <= i {
                choices.push(Choice::default());
            }
            let ch = &mut choices[i];
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                ch.finish = f.clone();
            }
            let Some(d) = c.get("delta") else { continue };
            if let Some(r) = d.get("role").and_then(|r| r.as_str()) {
                ch.role = Some(r.into());
            }
            if let Some(t) = d.get("content").and_then(|t| t.as_str()) {
                ch.content.get_or_insert_with(String::new).push_str(t);
            }
            if let Some(t) = d.get("refusal").and_then(|t| t.as_str()) {
                ch.refusal.get_or_insert_with(String::new).push_str(t);
            }
            for tc in d
                .get("tool_calls")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
            {
                let ti = tc.get("index").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
                if ti > 128 {
                    continue;
                }
                while ch.tools.len() <= ti {
                    let mut m = Map::new();
                    m.insert("type".into(), json!("function"));
                    m.insert("function".into(), json!({"name": "", "arguments": ""}));
                    ch.tools.push(m);
                }
                let t = &mut ch.tools[ti];
                if let Some(x) = tc.get("id") {
                    t.insert("id".into(), x.clone());
                }
                if let Some(f) = tc.get("function") {
                    let tf = t.get_mut("function").and_then(|f| f.as_object_mut());
                    if let Some(tf) = tf {
                        for k in ["name", "arguments"] {
                            if let Some(s) = f.get(k).and_then(|s| s.as_str()) {
                                let cur = tf.get(k).and_then(|c| c.as_str()).unwrap_or("");
                                let joined = format!("{cur}{s}");
                                tf.insert(k.into(), Value::String(joined));
                            }
                        }
                    }
                }
            }
        }
    }
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut m = json!({
                "role": c.role.unwrap_or_else(|| "assistant".into()),
                "content": c.content,
            });
            if let Some(r) = c.refusal {
                m["refusal"] = json!(r);
            }
            if !c.tools.is_empty() {
                m["tool_calls"] = Value::Array(c.tools.into_iter().map(Value::Object).collect());
            }
            json!({"index": i, "message": m, "finish_reason": c.finish})
        })
        .collect();
    let mut msg =
        json!({"id": id, "object": "chat.completion", "model": model, "choices": choices});
    if let Some(t) = &usage {
        msg["usage"] = json!({"prompt_tokens": t.input, "completion_tokens": t.output});
    }
    (msg, usage, error)
}

fn anthropic_stream(events: &[(String, String)]) -> (Value, Option<Tokens>, Option<String>) {
    let mut message = json!({"type": "message", "role": "assistant", "content": []});
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial: Vec<String> = Vec::new();
    let mut usage = Map::new();
    let mut error = None;
    let mut seen = false;
    for (_, data) in events {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        match v.get("type").and_then(|t| t.as_str()).unwrap_or("") {
            "message_start" => {
                if let Some(m) = v.get("message") {
                    seen = true;
                    for k in ["id", "model"] {
                        if let Some(x) = m.get(k) {
                            message[k] = x.clone();
                        }
                    }
                    if let Some(Value::Object(u)) = m.get("usage") {
                        usage.extend(u.clone());
                    }
                }
            }
            "content_block_start" => {
                let i = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
                if i > 256 {
                    continue;
                }
                while blocks.len() <= i {
                    blocks.push(Value::Null);
                    partial.push(String::new());
                }
                blocks[i] = v.get("content_block").cloned().unwrap_or(Value::Null);
            }
            "content_block_delta" => {
                let i = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
                let (Some(b), Some(d)) = (blocks.get_mut(i), v.get("delta")) else {
                    continue;
                };
                match d.get("type").and_then(|t| t.as_str()).unwrap_or("") {
                    "text_delta" => append(b, "text", d.get("text")),
                    "thinking_delta" => append(b, "thinking", d.get("thinking")),
                    "signature_delta" => append(b, "signature", d.get("signature")),
                    "input_json_delta" => {
                        if let Some(s) = d.get("partial_json").and_then(|s| s.as_str()) {
                            partial[i].push_str(s);
                        }
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                let i = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0) as usize;
                if let Some(b) = blocks.get_mut(i) {
                    if !partial[i].is_empty() {
                        b["input"] = serde_json::from_str(&partial[i])
                            .unwrap_or_else(|_| Value::String(partial[i].clone()));
                    }
                }
            }
            "message_delta" => {
                if let Some(Value::Object(d)) = v.get("delta") {
                    for (k, x) in d {
                        message[k.as_str()] = x.clone();
                    }
                }
                if let Some(Value::Object(u)) = v.get("usage") {
                    // Cumulative counts: the last one wins.
                    for (k, x) in u {
                        if !x.is_null() {
                            usage.insert(k.clone(), x.clone());
                        }
                    }
                }
            }
            "error" => error = Some(err_text(&v)),
            _ => {}
        }
    }
    message["content"] = Value::Array(blocks.into_iter().filter(|b| !b.is_null()).collect());
    let mut tokens = None;
    if seen && !usage.is_empty() {
        message["usage"] = Value::Object(usage);
        tokens = usage_of(Endpoint::Messages, &message);
    }
    (message, tokens, error)
}

fn append(b: &mut Value, key: &str, s: Option<&Value>) {
    if let (Some(s), Some(o)) = (s.and_then(|s| s.as_str()), b.as_object_mut()) {
        let cur = o
            .get(key)
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        o.insert(key.into(), Value::String(cur + s));
    }
}

fn responses_stream(events: &[(String, String)]) -> (Value, Option<Tokens>, Option<String>) {
    let mut text = String::new();
    let mut final_response = None;
    let mut error = None;
    for (ev, data) in events {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let t = v.get("type").and_then(|t| t.as_str()).unwrap_or(ev);
        match t {
            "response.output_text.delta" => {
                if let Some(d) = v.get("delta").and_then(|d| d.as_str()) {
                    text.push_str(d);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                final_response = v.get("response").cloned();
                if t == "response.failed" {
                    error = v
                        .pointer("/response/error/message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string);
                }
            }
            "error" => error = Some(err_text(&v)),
            _ => {}
        }
    }
    match final_response {
        Some(r) => {
            let usage = usage_of(Endpoint::Responses, &r);
            (r, usage, error)
        }
        None => (
            json!({"object": "response", "output_text": text}),
            None,
            error,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_stream_reassembles_text_tools_and_usage() {
        let body = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n",
            "data: [DONE]\n\n"
        );
        let (m, u, e) = parse_stream(Endpoint::ChatCompletions, body.as_bytes());
        assert_eq!(e, None);
        assert_eq!(u.unwrap().input, 7);
        let msg = &m["choices"][0]["message"];
        assert_eq!(msg["content"], "Hello");
        assert_eq!(msg["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(msg["tool_calls"][0]["id"], "call_1");
        assert_eq!(m["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn anthropic_stream_reassembles_blocks_and_usage() {
        let body = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"c\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"2}\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        );
        let (m, u, _) = parse_stream(Endpoint::Messages, body.as_bytes());
        let u = u.unwrap();
        assert_eq!((u.input, u.output, u.cached), (14, 9, 4));
        assert_eq!(m["content"][0]["text"], "Hi");
        assert_eq!(m["content"][1]["input"]["x"], 2);
        assert_eq!(m["stop_reason"], "tool_use");
    }

    #[test]
    fn estimates_and_prices() {
        let req = json!({"model": "a-very-long-model-name", "messages": [{"role": "user", "content": "12345678"}]});
        assert_eq!(estimate_input(&req), 3); // "user" + "12345678" = 12 bytes
        let p = crate::config::Price {
            input: 1.0,
            output: 2.0,
            cached_input: Some(0.5),
            cache_write: None,
        };
        let t = Tokens {
            input: 1_000_000,
            output: 1_000_000,
            cached: 500_000,
            cache_write: 0,
        };
        assert!((cost_of(&p, &t) - 2.75).abs() < 1e-9);
    }
}
