//! Local upstreams for tests and benchmarks (feature `fake`): one HTTP/1.1
//! server on 127.0.0.1 that speaks the OpenAI (base URL `{url}/v1`) and
//! Anthropic (base URL `{url}`) wire formats as the real APIs do: ids,
//! object types, fields, SSE event sequences, usage, tool calls, errors.
//!
//! It answers by [`Behavior`]: a queue of scripted ones (one per request,
//! in order), else the default. It keeps every request it received and
//! counts connections and streams, so a test can assert which key arrived
//! and that a stream was cancelled when its client went away.
//!
//! Endpoints: `POST /v1/chat/completions`, `/v1/responses`,
//! `/v1/embeddings`, `/v1/messages`, `/v1/messages/count_tokens`,
//! `GET /v1/models`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::record::text_len;

/// How the fake answers one request.
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Answer with this status and the provider's error body (and
    /// `retry-after` when given).
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    /// Wait this long before the response head.
    pub first_byte_delay: Duration,
    /// Wait this long between stream events.
    pub chunk_delay: Duration,
    /// The reply text (default "Hello from the fake upstream.").
    pub reply: Option<String>,
    /// Call this tool with these arguments (else a tool is called on its
    /// own when the request offers tools and its last message is not a
    /// tool result).
    pub tool_call: Option<(String, Value)>,
    /// Leave usage out of the response.
    pub no_usage: bool,
    /// Send this many stream events and then hang (until the client goes).
    pub hang_after: Option<usize>,
}

impl Behavior {
    pub fn status(status: u16) -> Behavior {
        Behavior {
            status: Some(status),
            ..Default::default()
        }
    }
    pub fn rate_limited(retry_after: u64) -> Behavior {
        Behavior {
            status: Some(429),
            retry_after: Some(retry_after),
            ..Default::default()
        }
    }
    pub fn reply(text: &str) -> Behavior {
        Behavior {
            reply: Some(text.into()),
            ..Default::default()
        }
    }
    pub fn slow_first_byte(d: Duration) -> Behavior {
        Behavior {
            first_byte_delay: d,
            ..Default::default()
        }
    }
    pub fn hang_after(events: usize) -> Behavior {
        Behavior {
            hang_after: Some(events),
            ..Default::default()
        }
    }
    pub fn chunk_delay(d: Duration) -> Behavior {
        Behavior {
            chunk_delay: d,
            ..Default::default()
        }
    }
    pub fn tool_call(name: &str, arguments: Value) -> Behavior {
        Behavior {
            tool_call: Some((name.into(), arguments)),
            ..Default::default()
        }
    }
}

/// A request as the fake received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Behavior>,
    received: Mutex<Vec<Received>>,
    key: Mutex<Option<String>>,
    record: std::sync::atomic::AtomicBool,
    conns_opened: AtomicUsize,
    conns_open: AtomicUsize,
    streams_done: AtomicUsize,
    streams_cancelled: AtomicUsize,
}

/// A running fake upstream; stops when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Listens on 127.0.0.1 (a free port).
    pub async fn start() -> std::io::Result<FakeUpstream> {
        FakeUpstream::start_at("127.0.0.1:0".parse().expect("literal")).await
    }

    /// Listens on `addr` (a fixed port, for a peer configured in advance).
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<FakeUpstream> {
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let state = Arc::new(State::default());
        state.record.store(true, Ordering::SeqCst);
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let st = st.clone();
                st.conns_opened.fetch_add(1, Ordering::SeqCst);
                st.conns_open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let s2 = st.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let st = s2.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                    st.conns_open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(FakeUpstream { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT` (Anthropic's base URL).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `http://127.0.0.1:PORT/v1` (OpenAI's base URL).
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    /// Requests must carry this key (Bearer or x-api-key), else 401.
    pub fn require_key(&self, key: &str) {
        *self.state.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.into());
    }
    /// The next request is answered so (a queue, in order).
    pub fn script(&self, b: Behavior) {
        self.state
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(b);
    }
    /// How requests are answered when the queue is empty.
    pub fn set_default(&self, b: Behavior) {
        *self.state.default.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }
    /// Whether to keep received requests (off for benchmarks).
    pub fn keep_requests(&self, on: bool) {
        self.state.record.store(on, Ordering::SeqCst);
    }
    pub fn requests(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub fn connections_opened(&self) -> usize {
        self.state.conns_opened.load(Ordering::SeqCst)
    }
    pub fn connections_open(&self) -> usize {
        self.state.conns_open.load(Ordering::SeqCst)
    }
    /// Streams sent to their end.
    pub fn streams_completed(&self) -> usize {
        self.state.streams_done.load(Ordering::SeqCst)
    }
    /// Streams whose client went away before their end.
    pub fn streams_cancelled(&self) -> usize {
        self.state.streams_cancelled.load(Ordering::SeqCst)
    }
}

/// A body fed by a channel (the stream producer's task).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

enum FakeBody {
    Full(Option<Bytes>),
    Stream(ChannelBody),
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FakeBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            FakeBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }
}

fn rand_id(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| A[rand::random::<usize>() % A.len()] as char)
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn json_response(status: u16, v: &Value, anthropic: bool) -> Response<FakeBody> {
    let mut r = Response::new(FakeBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().expect("static"));
    let rid = format!("req_{}", rand_id(24));
    if anthropic {
        h.insert("request-id", rid.parse().expect("ascii"));
    } else {
        h.insert("x-request-id", rid.parse().expect("ascii"));
        h.insert("openai-processing-ms", "1".parse().expect("static"));
    }
    r
}

fn error_body(status: u16, anthropic: bool) -> Value {
    if anthropic {
        let (t, m) = match status {
            400 => ("invalid_request_error", "messages: field required"),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => (
                "permission_error",
                "Your API key does not have permission to use the specified resource.",
            ),
            404 => ("not_found_error", "model: not found"),
            429 => (
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            ),
            529 => ("overloaded_error", "Overloaded"),
            _ => ("api_error", "Internal server error"),
        };
        json!({"type": "error", "error": {"type": t, "message": m}, "request_id": format!("req_{}", rand_id(24))})
    } else {
        let (m, t, c): (&str, &str, Value) = match status {
            400 => ("Invalid request.", "invalid_request_error", Value::Null),
            401 => ("Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.", "invalid_request_error", json!("invalid_api_key")),
            404 => ("The model does not exist or you do not have access to it.", "invalid_request_error", json!("model_not_found")),
            429 => ("Rate limit reached for requests. Please try again later.", "requests", json!("rate_limit_exceeded")),
            503 => ("The engine is currently overloaded, please try again later.", "server_error", Value::Null),
            _ => ("The server had an error while processing your request. Sorry about that!", "server_error", Value::Null),
        };
        json!({"error": {"message": m, "type": t, "param": null, "code": c}})
    }
}

/// `s` in pieces of about `n` bytes (tool arguments streamed in fragments).
fn fragments(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < s.len() {
        let mut end = (at + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(&s[at..end]);
        at = end;
    }
    out
}

/// Deterministic input tokens: the request's text, 4 bytes a token.
fn input_tokens(req: &Value) -> u64 {
    let n: usize = [
        "messages",
        "system",
        "input",
        "instructions",
        "tools",
        "prompt",
    ]
    .iter()
    .filter_map(|k| req.get(*k))
    .map(text_len)
    .sum();
    (n.div_ceil(4) as u64).max(1)
}

fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c == ' ' && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Arguments for a tool from its JSON schema: a value of the right type
/// for each required property.
fn args_for(schema: Option<&Value>) -> Value {
    let mut o = serde_json::Map::new();
    let Some(s) = schema else {
        return Value::Object(o);
    };
    let props = s.get("properties").and_then(|p| p.as_object());
    for r in s
        .get("required")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let Some(name) = r.as_str() else { continue };
        let t = props
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("string");
        let v = match t {
            "integer" | "number" => json!(1),
            "boolean" => json!(true),
            "array" => json!([]),
            "object" => json!({}),
            _ => json!("fake"),
        };
        o.insert(name.into(), v);
    }
    Value::Object(o)
}

/// The tool to call, if any: (name, arguments).
fn pick_tool(req: &Value, b: &Behavior, anthropic: bool) -> Option<(String, Value)> {
    if let Some(t) = &b.tool_call {
        return Some(t.clone());
    }
    let tools = req.get("tools")?.as_array()?;
    let first = tools.first()?;
    if req.get("tool_choice").and_then(|c| c.as_str()) == Some("none") {
        return None;
    }
    let last = req
        .get("messages")
        .or_else(|| req.get("input"))
        .and_then(|m| m.as_array())
        .and_then(|m| m.last());
    if let Some(l) = last {
        let role = l.get("role").and_then(|r| r.as_str()).unwrap_or("");
        let ty = l.get("type").and_then(|r| r.as_str()).unwrap_or("");
        let has_result = l
            .get("content")
            .and_then(|c| c.as_array())
            .is_some_and(|c| {
                c.iter()
                    .any(|x| x.get("type").and_then(|t| t.as_str()) == Some("tool_result"))
            });
        if role == "tool" || ty == "function_call_output" || has_result {
            return None;
        }
    }
    let (name, schema) = if anthropic {
        (first.get("name"), first.get("input_schema"))
    } else if let Some(f) = first.get("function") {
        (f.get("name"), f.get("parameters"))
    } else {
        (first.get("name"), first.get("parameters"))
    };
    Some((name?.as_str()?.to_string(), args_for(schema)))
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<FakeBody> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rec = Received {
        method: method.clone(),
        path: path.clone(),
        headers,
        body: body.clone(),
    };
    let p = path.split('?').next().unwrap_or("").to_string();
    let anthropic = p.starts_with("/v1/messages");
    if let Some(k) = st.key.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        let bearer = rec
            .header("authorization")
            .map(|a| a.trim_start_matches("Bearer ").to_string());
        let ok = if anthropic {
            rec.header("x-api-key") == Some(k.as_str()) || bearer.as_deref() == Some(&k)
        } else {
            bearer.as_deref() == Some(&k)
        };
        if !ok {
            if st.record.load(Ordering::SeqCst) {
                st.received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(rec);
            }
            return json_response(401, &error_body(401, anthropic), anthropic);
        }
    }
    if st.record.load(Ordering::SeqCst) {
        st.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }
    if method == "GET" && p == "/v1/models" {
        return json_response(
            200,
            &json!({"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                {"id": "text-embedding-3-small", "object": "model", "created": 1705948997, "owned_by": "system"}
            ]}),
            false,
        );
    }
    let b = {
        let q = st
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        q.unwrap_or_else(|| st.default.lock().unwrap_or_else(|e| e.into_inner()).clone())
    };
    if !b.first_byte_delay.is_zero() {
        tokio::time::sleep(b.first_byte_delay).await;
    }
    if let Some(s) = b.status {
        let mut r = json_response(s, &error_body(s, anthropic), anthropic);
        if let Some(ra) = b.retry_after {
            r.headers_mut().insert("retry-after", ra.into());
        }
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return json_response(400, &error_body(400, anthropic), anthropic);
    };
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    let stream = req.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    match (method.as_str(), p.as_str()) {
        ("POST", "/v1/chat/completions") => chat(&st, &req, &model, stream, &b),
        ("POST", "/v1/responses") => responses(&st, &req, &model, stream, &b),
        ("POST", "/v1/embeddings") => embeddings(&req, &model, &b),
        ("POST", "/v1/messages") => messages(&st, &req, &model, stream, &b),
        ("POST", "/v1/messages/count_tokens") => {
            json_response(200, &json!({"input_tokens": input_tokens(&req)}), true)
        }
        _ => json_response(404, &error_body(404, anthropic), anthropic),
    }
}

/// Streams `events` (already framed) with the behavior's pacing.
fn sse(st: &Arc<State>, events: Vec<String>, b: &Behavior) -> Response<FakeBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let st = st.clone();
    let delay = b.chunk_delay;
    let hang = b.hang_after;
    tokio::spawn(async move {
        for (i, e) in events.into_iter().enumerate() {
            if hang == Some(i) {
                tx.closed().await;
                st.streams_cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if i > 0 && !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tx.closed() => {
                        st.streams_cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
            if tx.send(Bytes::from(e)).await.is_err() {
                st.streams_cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        st.streams_done.fetch_add(1, Ordering::SeqCst);
    });
    let mut r = Response::new(FakeBody::Stream(ChannelBody(rx)));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        "text/event-stream; charset=utf-8".parse().expect("static"),
    );
    h.insert("cache-control", "no-cache".parse().expect("static"));
    h.insert(
        "x-request-id",
        format!("req_{}", rand_id(24)).parse().expect("ascii"),
    );
    r
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn event(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

fn reply_text(b: &Behavior) -> String {
    b.reply
        .clone()
        .unwrap_or_else(|| "Hello from the fake upstream.".into())
}

fn chat(
    st: &Arc<State>,
    req: &Value,
    model: &str,
    stream: bool,
    b: &Behavior,
) -> Response<FakeBody> {
    let id = format!("chatcmpl-{}", rand_id(29));
    let created = now();
    let fp = "fp_fake0001";
    let prompt = input_tokens(req);
    let tool = pick_tool(req, b, false);
    let text = reply_text(b);
    let pieces = words(&text);
    let call_id = format!("call_{}", rand_id(24));
    let (completion, finish) = match &tool {
        Some((_, args)) => (
            (args.to_string().len().div_ceil(4) as u64).max(1),
            "tool_calls",
        ),
        None => (pieces.len() as u64, "stop"),
    };
    let usage = json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
    });
    if !stream {
        let message = match &tool {
            Some((name, args)) => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args.to_string()}}
            ], "refusal": null, "annotations": []}),
            None => {
                json!({"role": "assistant", "content": text, "refusal": null, "annotations": []})
            }
        };
        let mut v = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": fp,
        });
        if b.no_usage {
            v.as_object_mut().map(|o| o.remove("usage"));
        }
        return json_response(200, &v, false);
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
        && !b.no_usage;
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": fp,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        data(&c)
    };
    let mut events = Vec::new();
    match &tool {
        Some((name, args)) => {
            events.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}], "refusal": null}),
                Value::Null,
            ));
            let a = args.to_string();
            for f in fragments(&a, 8) {
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}),
                    Value::Null,
                ));
            }
        }
        None => {
            events.push(chunk(
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            ));
            for p in &pieces {
                events.push(chunk(json!({"content": p}), Value::Null));
            }
        }
    }
    events.push(chunk(json!({}), json!(finish)));
    if include_usage {
        events.push(data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": fp, "choices": [], "usage": usage,
        })));
    }
    events.push("data: [DONE]\n\n".into());
    sse(st, events, b)
}

fn responses(
    st: &Arc<State>,
    req: &Value,
    model: &str,
    stream: bool,
    b: &Behavior,
) -> Response<FakeBody> {
    let id = format!("resp_{}", rand_id(48));
    let msg_id = format!("msg_{}", rand_id(48));
    let created = now();
    let input = input_tokens(req);
    let text = reply_text(b);
    let pieces = words(&text);
    let tool = pick_tool(req, b, false);
    let output_tokens = pieces.len() as u64;
    let usage = json!({
        "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output_tokens,
    });
    let item = match &tool {
        Some((name, args)) => {
            json!({"type": "function_call", "id": format!("fc_{}", rand_id(48)), "call_id": format!("call_{}", rand_id(24)), "name": name, "arguments": args.to_string(), "status": "completed"})
        }
        None => json!({"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}),
    };
    let object = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": created, "status": status,
            "background": false, "error": null, "incomplete_details": null,
            "instructions": req.get("instructions").cloned().unwrap_or(Value::Null),
            "max_output_tokens": null, "model": model, "output": output,
            "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "service_tier": "default",
            "store": true, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": req.get("tools").cloned().unwrap_or(json!([])),
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": null, "metadata": {},
        })
    };
    let final_usage = if b.no_usage { Value::Null } else { usage };
    if !stream {
        return json_response(200, &object("completed", json!([item]), final_usage), false);
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        event(name, &v)
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": object("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.in_progress",
            json!({"response": object("in_progress", json!([]), Value::Null)}),
        ),
    ];
    if tool.is_some() {
        events.push(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ));
        events.push(ev(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ));
    } else {
        let empty = json!({"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []});
        events.push(ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": empty}),
        ));
        events.push(ev("response.content_part.added", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})));
        for p in &pieces {
            events.push(ev("response.output_text.delta", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": p, "logprobs": []})));
        }
        events.push(ev("response.output_text.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []})));
        events.push(ev("response.content_part.done", json!({"item_id": msg_id, "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}})));
        events.push(ev(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ));
    }
    events.push(ev(
        "response.completed",
        json!({"response": object("completed", json!([item]), final_usage)}),
    ));
    sse(st, events, b)
}

fn embeddings(req: &Value, model: &str, b: &Behavior) -> Response<FakeBody> {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        _ => return json_response(400, &error_body(400, false), false),
    };
    let b64 = req.get("encoding_format").and_then(|f| f.as_str()) == Some("base64");
    let dims = req
        .get("dimensions")
        .and_then(|d| d.as_u64())
        .unwrap_or(8)
        .clamp(1, 4096) as usize;
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            tokens += (s.len().div_ceil(4) as u64).max(1);
            // Deterministic per text: a tiny FNV-seeded sequence.
            let mut h: u32 = 2166136261;
            for c in s.bytes() {
                h = (h ^ c as u32).wrapping_mul(16777619);
            }
            let v: Vec<f32> = (0..dims)
                .map(|k| {
                    h = h.wrapping_mul(1664525).wrapping_add(1013904223 + k as u32);
                    (h >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            let emb = if b64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    let mut v = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    if b.no_usage {
        v.as_object_mut().map(|o| o.remove("usage"));
    }
    json_response(200, &v, false)
}

fn messages(
    st: &Arc<State>,
    req: &Value,
    model: &str,
    stream: bool,
    b: &Behavior,
) -> Response<FakeBody> {
    if req.get("max_tokens").is_none() {
        return json_response(
            400,
            &json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}),
            true,
        );
    }
    let id = format!("msg_01{}", rand_id(22));
    let input = input_tokens(req);
    let text = reply_text(b);
    let pieces = words(&text);
    let tool = pick_tool(req, b, true);
    let tool_id = format!("toolu_01{}", rand_id(22));
    let (output, stop) = match &tool {
        Some((_, a)) => ((a.to_string().len().div_ceil(4) as u64).max(1), "tool_use"),
        None => (pieces.len() as u64, "end_turn"),
    };
    let usage = |out: u64| json!({"input_tokens": input, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": out, "service_tier": "standard"});
    if !stream {
        let content = match &tool {
            Some((name, args)) => {
                json!([{"type": "tool_use", "id": tool_id, "name": name, "input": args}])
            }
            None => json!([{"type": "text", "text": text}]),
        };
        let mut v = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage(output)});
        if b.no_usage {
            v.as_object_mut().map(|o| o.remove("usage"));
        }
        return json_response(200, &v, true);
    }
    let mut events = vec![event(
        "message_start",
        &json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage(1)}}),
    )];
    match &tool {
        Some((name, args)) => {
            events.push(event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": tool_id, "name": name, "input": {}}})));
            events.push(event("ping", &json!({"type": "ping"})));
            let a = args.to_string();
            for f in fragments(&a, 8) {
                events.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": f}})));
            }
        }
        None => {
            events.push(event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            events.push(event("ping", &json!({"type": "ping"})));
            for p in &pieces {
                events.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
            }
        }
    }
    events.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": output}});
    if b.no_usage {
        delta.as_object_mut().map(|o| o.remove("usage"));
    }
    events.push(event("message_delta", &delta));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    sse(st, events, b)
}
