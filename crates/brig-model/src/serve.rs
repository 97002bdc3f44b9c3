//! The request path: endpoint, session and key, body, model, budgets,
//! then the targets in fallback order with retries, and the response
//! relayed. Every refusal is answered in the endpoint's provider shape
//! and recorded with the rule that decided it.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    USER_AGENT,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::config::{Protocol, UpstreamKind};
use crate::record::{Attempt, Call, CallOutcome};
use crate::relay::{GatewayBody, Relay, Stripper};
use crate::request::{parse_head, rewrite};
use crate::shape::Failure;
use crate::upstream::{Conn, ConnectError};
use crate::{Endpoint, Inner, SessionState};

/// The Anthropic API version sent when the client names none.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The longest wait between two attempts (an upstream's `retry-after`
/// longer than this goes to the next target instead).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn serve_connection<I>(
    inner: Arc<Inner>,
    session: Arc<str>,
    io: I,
    buffered: Vec<u8>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(brig_proxy::Prefixed::new(buffered, io));
    let svc = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        let session = session.clone();
        async move { Ok::<_, Infallible>(handle(inner, session, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, svc)
        .await
    {
        tracing::debug!(error = %e, "model gateway connection ended");
    }
}

// `Upstream` is the common case and moved once: boxing it would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Reply {
    Local(Bytes),
    Upstream {
        resp: Response<Incoming>,
        conn: Conn,
        deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
        strip: bool,
    },
}

/// The endpoint of a request, and the model id of `GET /v1/models/{id}`.
fn classify(method: &Method, path: &str) -> (Endpoint, Option<String>) {
    let p = path.strip_prefix("/v1").unwrap_or(path);
    let p = p.trim_end_matches('/');
    let post = method == Method::POST;
    let e = match p {
        "/chat/completions" if post => Endpoint::ChatCompletions,
        "/responses" if post => Endpoint::Responses,
        "/embeddings" if post => Endpoint::Embeddings,
        "/messages" if post => Endpoint::Messages,
        "/messages/count_tokens" if post => Endpoint::CountTokens,
        "/models" if method == Method::GET => Endpoint::Models,
        _ => {
            if method == Method::GET {
                if let Some(id) = p.strip_prefix("/models/") {
                    if !id.is_empty() {
                        return (Endpoint::Models, Some(id.to_string()));
                    }
                }
            }
            Endpoint::Unknown
        }
    };
    (e, None)
}

async fn handle(
    inner: Arc<Inner>,
    session: Arc<str>,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    let (endpoint, model_id) = classify(req.method(), req.uri().path());
    let protocol = match endpoint {
        Endpoint::Models | Endpoint::Unknown if req.headers().contains_key("anthropic-version") => {
            Protocol::Anthropic
        }
        e => e.protocol(),
    };
    let mut call = Box::new(Call::new(inner.clone(), session, endpoint, protocol));
    match run(&inner, &mut call, req, model_id).await {
        Ok(Reply::Local(body)) => {
            call.status = 200;
            call.outcome = Some(CallOutcome::Ok);
            let mut r = Response::new(GatewayBody::full(body));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            call_header(h, &call.id);
            r
        }
        Ok(Reply::Upstream {
            resp,
            conn,
            deadline,
            strip,
        }) => {
            let (parts, body) = resp.into_parts();
            call.status = parts.status.as_u16();
            call.sse = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let strip = strip && call.sse && call.status < 300;
            let mut r = Response::new(GatewayBody::Full(None));
            *r.status_mut() = parts.status;
            // The upstream's headers, less the hop-by-hop ones (looked for
            // first: most responses have none but `transfer-encoding`).
            let mut h = parts.headers;
            if h.keys().any(hop_by_hop) {
                let hop: Vec<HeaderName> = h.keys().filter(|k| hop_by_hop(k)).cloned().collect();
                for k in hop {
                    h.remove(k);
                }
            }
            if strip {
                h.remove(CONTENT_LENGTH);
            }
            call_header(&mut h, &call.id);
            *r.headers_mut() = h;
            *r.body_mut() = GatewayBody::Relay(Box::new(Relay {
                upstream: body,
                conn: Some(conn),
                call: Some(call),
                deadline,
                strip: strip.then(Stripper::default),
                pending: None,
                done: false,
            }));
            r
        }
        Err(f) => {
            let outcome = if (f.status == 429 && f.rule().starts_with("budget:"))
                || f.rule().starts_with("exfil:")
                || f.rule == "policy"
            {
                CallOutcome::Denied
            } else {
                CallOutcome::Error
            };
            call.fail(f.status, f.rule(), &f.message, outcome);
            error_response(&f, protocol, &call.id)
        }
    }
}

const X_BRIG_CALL: HeaderName = HeaderName::from_static("x-brig-call");

fn call_header(h: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(X_BRIG_CALL, v);
    }
}

fn hop_by_hop(k: &HeaderName) -> bool {
    matches!(
        k.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
    )
}

fn error_response(f: &Failure, p: Protocol, id: &str) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(f.body(p)));
    *r.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    call_header(h, id);
    if let Some(s) = f.retry_after {
        h.insert("retry-after", HeaderValue::from(s));
    }
    if f.no_retry {
        h.insert("x-should-retry", HeaderValue::from_static("false"));
    }
    r
}

/// The key the request carries: OpenAI `Authorization: Bearer`,
/// Anthropic `x-api-key` (or Bearer). Every one present must match.
fn key_ok(h: &HeaderMap, want: &str) -> bool {
    let mut seen = false;
    if let Some(v) = h.get("x-api-key") {
        seen = true;
        if !ct_eq(v.as_bytes(), want.as_bytes()) {
            return false;
        }
    }
    if let Some(v) = h.get("authorization") {
        seen = true;
        let v = v.as_bytes();
        let token = v
            .strip_prefix(b"Bearer ")
            .or_else(|| v.strip_prefix(b"bearer "))
            .unwrap_or(b"");
        if !ct_eq(token, want.as_bytes()) {
            return false;
        }
    }
    seen
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn run(
    inner: &Arc<Inner>,
    call: &mut Call,
    req: Request<Incoming>,
    model_id: Option<String>,
) -> Result<Reply, Failure> {
    let cfg = &inner.config;
    if call.endpoint == Endpoint::Unknown {
        return Err(Failure::new(
            404,
            "endpoint:unknown",
            format!(
                "brig's model gateway has no endpoint {} {}; it serves POST /v1/chat/completions, /v1/responses, /v1/embeddings, /v1/messages, /v1/messages/count_tokens and GET /v1/models",
                req.method(),
                req.uri().path()
            ),
        )
        .code("unknown_url"));
    }
    let session = inner
        .sessions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&call.session_id)
        .cloned();
    let Some(session) = session else {
        return Err(Failure::new(
            401,
            "session:unknown",
            "this brig session is not open for model calls (closed, or started without model access)",
        )
        .code("invalid_api_key"));
    };
    call.session = Some(session.clone());
    if !key_ok(req.headers(), &session.ctx.api_key) {
        return Err(Failure::new(
            401,
            "auth:key",
            "the API key is not this session's: use the OPENAI_API_KEY / ANTHROPIC_API_KEY brig set in the session's environment",
        )
        .code("invalid_api_key"));
    }
    if call.endpoint == Endpoint::Models {
        return models(inner, call.protocol, model_id.as_deref()).map(Reply::Local);
    }

    // The body, capped.
    let too_large = || {
        Failure::new(
            413,
            "body:too_large",
            format!(
                "the request body is larger than brig's limit of {} bytes ([models] max_body); send less context",
                cfg.max_body
            ),
        )
        .code("request_too_large")
    };
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, cfg.max_body).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(too_large());
            }
            return Err(Failure::new(
                400,
                "body:unreadable",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    // The record's copy: `body` is a slice of the connection's read buffer,
    // which hyper reuses for the next request once nothing refers to it.
    call.request = Bytes::copy_from_slice(&body);
    // A secret brig knows (its value, in any encoding) never goes to a
    // model provider: the request is refused, not redacted and sent.
    if let Some(rule) = (inner.redactor)().known_value_in(&body) {
        return Err(Failure::new(
            400,
            "exfil:known-secret",
            format!(
                "the request carries a secret brig knows ({rule}); brig does not send it to a model provider: remove it from the prompt"
            ),
        )
        .code("secret_in_request"));
    }
    let head = parse_head(&body).map_err(|e| Failure::new(400, "body:malformed", e))?;
    call.stream = head.stream;
    let Some(model) = head.model else {
        return Err(
            Failure::new(400, "model:missing", "the request names no `model`")
                .code("missing_model"),
        );
    };
    call.model = Some(model.clone());
    let Some(resolved) = cfg.resolve(&model, call.protocol) else {
        let other = match call.protocol {
            Protocol::OpenAi => Protocol::Anthropic,
            Protocol::Anthropic => Protocol::OpenAi,
        };
        if cfg.resolve(&model, other).is_some() {
            return Err(protocol_mismatch(&model, other));
        }
        return Err(unknown_model(cfg, &model, call.protocol));
    };
    if resolved.protocol != call.protocol {
        return Err(protocol_mismatch(&model, resolved.protocol));
    }
    call.route = resolved.route.clone();

    // Policy on the model (brig's Cedar `model.call`), before budgets.
    if let Some(g) = &session.guard {
        if let Err((rule, message)) = g.check(&model) {
            let mut f = Failure::new(403, "policy", message)
                .code("model_not_allowed")
                .kind("permission_error");
            f.rule_owned = Some(rule);
            f.no_retry = true;
            return Err(f);
        }
    }

    // Budgets.
    match inner
        .budgets
        .admit(&session.scopes, &cfg.limits, call.endpoint.charged())
    {
        Ok(slot) => call.slot = Some(slot),
        Err(d) => {
            let t = if d.quota {
                "insufficient_quota"
            } else {
                "rate_limit_exceeded"
            };
            let mut f = Failure::new(429, "budget", d.message).code(t).kind(t);
            f.rule_owned = Some(d.rule);
            f.retry_after = d.retry_after;
            f.no_retry = d.quota;
            return Err(f);
        }
    }

    let inject_usage =
        call.endpoint == Endpoint::ChatCompletions && head.stream && !head.include_usage;
    forward(
        inner,
        call,
        &session,
        &parts.headers,
        &resolved,
        inject_usage,
    )
    .await
}

fn protocol_mismatch(model: &str, served: Protocol) -> Failure {
    let (wants, path) = match served {
        Protocol::OpenAi => (
            "OpenAI",
            "/v1/chat/completions (or /v1/responses, /v1/embeddings)",
        ),
        Protocol::Anthropic => ("Anthropic", "/v1/messages"),
    };
    Failure::new(
        400,
        "model:protocol",
        format!("model `{model}` is served by {wants} upstreams and brig does not translate between protocols: call it at {path}"),
    )
    .code("model_protocol_mismatch")
}

fn unknown_model(cfg: &crate::config::Compiled, model: &str, p: Protocol) -> Failure {
    let known = cfg.listed.get(&p).map(|l| l.join(", ")).unwrap_or_default();
    let known = if known.is_empty() {
        "none".to_string()
    } else {
        known
    };
    Failure::new(
        404,
        "model:unknown",
        format!("the model `{model}` does not exist in brig's model gateway; models available here: {known} (GET /v1/models lists them; the operator adds more under [models] in brig.toml)"),
    )
    .code("model_not_found")
}

fn models(inner: &Inner, p: Protocol, id: Option<&str>) -> Result<Bytes, Failure> {
    let names: &[String] = inner
        .config
        .listed
        .get(&p)
        .map(|v| v.as_slice())
        .unwrap_or(&[]);
    let one = |n: &str| match p {
        Protocol::OpenAi => json!({"id": n, "object": "model", "created": 0, "owned_by": "brig"}),
        Protocol::Anthropic => {
            json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"})
        }
    };
    let v = match id {
        Some(id) => {
            if !names.iter().any(|n| n == id) {
                return Err(unknown_model(&inner.config, id, p));
            }
            one(id)
        }
        None => {
            let data: Vec<_> = names.iter().map(|n| one(n)).collect();
            match p {
                Protocol::OpenAi => json!({"object": "list", "data": data}),
                Protocol::Anthropic => json!({
                    "data": data,
                    "has_more": false,
                    "first_id": names.first(),
                    "last_id": names.last(),
                }),
            }
        }
    };
    Ok(Bytes::from(v.to_string()))
}

/// Statuses an upstream answers when the same request may succeed later.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// Statuses worth trying the next target for (the upstream's own state:
/// overloaded, its key refused, the model missing there); a 400 is the
/// request's fault and would fail everywhere.
fn next_target_helps(status: u16) -> bool {
    retryable(status) || matches!(status, 401 | 403 | 404)
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("retry-after-ms").and_then(|v| v.to_str().ok());
    if let Some(ms) = v.and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    let s = h
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

fn upstream_path(kind: UpstreamKind, e: Endpoint) -> &'static str {
    match (kind.protocol(), e) {
        (Protocol::Anthropic, Endpoint::CountTokens) => "/v1/messages/count_tokens",
        (Protocol::Anthropic, _) => "/v1/messages",
        (_, Endpoint::Responses) => "/responses",
        (_, Endpoint::Embeddings) => "/embeddings",
        _ => "/chat/completions",
    }
}

const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const ANTHROPIC_VERSION_H: HeaderName = HeaderName::from_static("anthropic-version");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const PASS_HEADERS: [HeaderName; 5] = [
    ACCEPT,
    USER_AGENT,
    HeaderName::from_static("openai-beta"),
    ANTHROPIC_BETA,
    HeaderName::from_static("idempotency-key"),
];

async fn forward(
    inner: &Arc<Inner>,
    call: &mut Call,
    session: &Arc<SessionState>,
    client_headers: &HeaderMap,
    resolved: &crate::config::Resolved,
    inject_usage: bool,
) -> Result<Reply, Failure> {
    let cfg = &inner.config;
    let requested = call.model.clone().unwrap_or_default();
    let n = resolved.targets.len();
    let mut last: Option<Failure> = None;
    for (ti, target) in resolved.targets.iter().enumerate() {
        let u = &cfg.upstreams[target.upstream];
        let client = &inner.clients[target.upstream];
        call.upstream = Some(target.upstream);
        call.upstream_model = Some(target.model.clone());
        let is_last_target = ti + 1 == n;
        let key = match &u.key {
            None => None,
            Some(k) => {
                let t0 = Instant::now();
                match inner.keys.key(&u.name, k).await {
                    Ok(k) => k,
                    Err(e) => {
                        call.attempts.push(Attempt {
                            upstream: u.name.to_string(),
                            model: target.model.to_string(),
                            status: None,
                            error: Some(format!("the upstream's key could not be fetched: {e}")),
                            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
                        });
                        last = Some(
                            Failure::new(
                                503,
                                "upstream:key",
                                format!("brig could not get the key of upstream `{}`; the operator sees why in `brig model log`", u.name),
                            )
                            .code("upstream_key_unavailable"),
                        );
                        continue;
                    }
                }
            }
        };
        let body = rewrite(
            &call.request,
            (*target.model != *requested).then_some(&*target.model),
            inject_usage,
        );
        // Built for each request sent (most calls send one), not cloned.
        let headers = || upstream_headers(client, u, client_headers, key.as_deref(), body.len());
        let uri = client.uri(upstream_path(u.kind, call.endpoint));
        for attempt in 0..=u.retries {
            if session.closed.load(Ordering::SeqCst) {
                return Err(Failure::new(
                    503,
                    "session:closed",
                    "the brig session was closed",
                ));
            }
            let t0 = Instant::now();
            // One timer per attempt: it bounds the head here and the body
            // in the relay.
            let mut deadline = Box::pin(tokio::time::sleep(u.timeout));
            let r = tokio::select! {
                biased;
                r = exchange(client, u, session, &uri, &headers, body.clone()) => Ok(r),
                _ = deadline.as_mut() => Err(()),
            };
            let latency_ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut attempt_rec = Attempt {
                upstream: u.name.to_string(),
                model: target.model.to_string(),
                status: None,
                error: None,
                latency_ms,
            };
            let can_retry = attempt < u.retries;
            match r {
                Ok(Ok((resp, conn))) => {
                    let status = resp.status().as_u16();
                    attempt_rec.status = Some(status);
                    call.attempts.push(attempt_rec);
                    if retryable(status) && can_retry {
                        let wait = retry_after(resp.headers())
                            .unwrap_or(u.backoff * 2u32.saturating_pow(attempt));
                        if wait <= MAX_RETRY_WAIT && wait < u.timeout {
                            drop((resp, conn));
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                    if !is_last_target && next_target_helps(status) {
                        last = Some(Failure::new(
                            502,
                            "upstream:status",
                            format!("upstream `{}` answered {status}", u.name),
                        ));
                        break;
                    }
                    return Ok(Reply::Upstream {
                        resp,
                        conn,
                        deadline,
                        strip: inject_usage,
                    });
                }
                Ok(Err(e)) => {
                    attempt_rec.error = Some(e.clone());
                    call.attempts.push(attempt_rec);
                    last = Some(
                        Failure::new(
                            502,
                            "upstream:unreachable",
                            format!("brig could not reach upstream `{}`: {e}", u.name),
                        )
                        .code("upstream_unreachable"),
                    );
                }
                Err(_) => {
                    attempt_rec.error = Some(format!("no response within {:?}", u.timeout));
                    call.attempts.push(attempt_rec);
                    last = Some(
                        Failure::new(
                            504,
                            "upstream:timeout",
                            format!(
                                "upstream `{}` did not answer within {:?}",
                                u.name, u.timeout
                            ),
                        )
                        .code("upstream_timeout"),
                    );
                }
            }
            if can_retry {
                tokio::time::sleep(u.backoff * 2u32.saturating_pow(attempt)).await;
            }
        }
    }
    let mut f = last.unwrap_or_else(|| {
        Failure::new(502, "upstream:none", "no upstream could take the request")
    });
    if n > 1 {
        f.message = format!(
            "every target of `{requested}` failed ({}); the last: {}",
            call.attempts
                .iter()
                .map(|a| format!(
                    "{}/{}: {}",
                    a.upstream,
                    a.model,
                    a.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "error".into())
                ))
                .collect::<Vec<_>>()
                .join(", "),
            f.message
        );
    }
    Err(f)
}

fn upstream_headers(
    client: &crate::upstream::Client,
    u: &crate::config::CompiledUpstream,
    headers: &HeaderMap,
    key: Option<&str>,
    len: usize,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(10);
    if let Some(v) = &client.host {
        h.insert(HOST, v.clone());
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    for name in PASS_HEADERS {
        if let Some(v) = headers.get(&name) {
            h.insert(name, v.clone());
        }
    }
    if !h.contains_key(ACCEPT) {
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    }
    if u.kind == UpstreamKind::Anthropic {
        let v = headers
            .get(&ANTHROPIC_VERSION_H)
            .cloned()
            .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
        h.insert(ANTHROPIC_VERSION_H, v);
    } else {
        h.remove(ANTHROPIC_BETA);
    }
    if let Some(k) = key {
        // A key with characters HTTP cannot carry is left out (and the
        // upstream says 401), never logged.
        match u.kind {
            UpstreamKind::Anthropic => {
                if let Ok(mut v) = HeaderValue::from_str(k) {
                    v.set_sensitive(true);
                    h.insert(X_API_KEY, v);
                }
            }
            _ => {
                if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {k}")) {
                    v.set_sensitive(true);
                    h.insert(AUTHORIZATION, v);
                }
            }
        }
    }
    h
}

/// One exchange up to the response head. A pooled connection that turns
/// out closed (the server timed it out) is replaced once by a new one.
async fn exchange(
    client: &crate::upstream::Client,
    u: &crate::config::CompiledUpstream,
    session: &Arc<SessionState>,
    uri: &hyper::Uri,
    headers: &(dyn Fn() -> HeaderMap + Sync),
    body: Bytes,
) -> Result<(Response<Incoming>, Conn), String> {
    let mut fresh = false;
    loop {
        let mut conn = client
            .get(u, &session.reg, fresh)
            .await
            .map_err(|e| match e {
                ConnectError::Timeout => format!("connect timed out after {:?}", u.connect_timeout),
                ConnectError::Failed(e) => e,
            })?;
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers();
        match conn.send(req).await {
            Ok(resp) => return Ok((resp, conn)),
            Err(e)
                if conn.reused
                    && !fresh
                    && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) =>
            {
                fresh = true;
                continue;
            }
            Err(e) => return Err(format!("request failed: {e}")),
        }
    }
}
