//! The gateway end to end: real loopback connections into its serve
//! function, fake upstreams speaking the OpenAI and Anthropic wire formats.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_model::fake::Behavior;
use brig_model::{CallOutcome, Scope, TokenSource};
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn frames_text(frames: &[Bytes]) -> String {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

// ---------------------------------------------------------------- endpoints

#[tokio::test]
async fn chat_completion_goes_upstream_with_the_real_key_and_is_recorded() {
    let mut h = harness(&base_config("")).await;
    let (s, v) = once(
        h.addr,
        post(
            "/v1/chat/completions",
            &h.key,
            &chat("gpt-4o-mini", "hi there"),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the fake upstream."
    );
    let got = &h.fake(0).requests()[0];
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {REAL_OPENAI}").as_str())
    );
    assert!(
        !format!("{:?}", got.headers).contains(&h.key),
        "the placeholder went upstream"
    );
    let c = h.call().await;
    assert_eq!(c.session, SESSION);
    assert_eq!(
        (c.human.as_deref(), c.task.as_deref()),
        (Some("ann"), Some("T-1"))
    );
    assert_eq!(c.endpoint, "chat.completions");
    assert_eq!(c.outcome, CallOutcome::Ok);
    assert_eq!(c.status, 200);
    assert_eq!(c.upstream.as_deref(), Some("oa"));
    assert_eq!(c.tokens_source, TokenSource::Reported);
    let usage = &v["usage"];
    assert_eq!(c.input_tokens, usage["prompt_tokens"].as_u64().unwrap());
    assert_eq!(
        c.output_tokens,
        usage["completion_tokens"].as_u64().unwrap()
    );
    // Cost from the price table: 0.15 / 0.60 USD per million.
    let want = (c.input_tokens as f64 * 0.15 + c.output_tokens as f64 * 0.60) / 1e6;
    assert!(
        (c.cost_usd.unwrap() - want).abs() < 1e-12,
        "{:?} vs {want}",
        c.cost_usd
    );
    assert_eq!(
        c.request_value().unwrap()["messages"][0]["content"],
        "hi there"
    );
    assert_eq!(c.response_value().unwrap()["object"], "chat.completion");
    assert!(c.ttfb_ms.is_some() && c.latency_ms > 0.0);
    assert!(c.id.starts_with("mc_"));
    let u = h.gw.usage(Scope::Task, "T-1").unwrap();
    assert_eq!(u.tokens, c.input_tokens + c.output_tokens);
}

#[tokio::test]
async fn absolute_form_and_bytes_the_proxy_already_read() {
    use brig_proxy::local::LocalService;
    let mut h = harness(&base_config("")).await;
    // The proxy read the head; the service gets it as `buffered` and the
    // rest (the body) on the stream.
    let body = chat("gpt-4o-mini", "absolute").to_string();
    let head = format!(
        "POST http://model.brig/v1/chat/completions HTTP/1.1\r\nhost: model.brig\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        h.key,
        body.len()
    );
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let svc = h.gw.service();
    assert_eq!(svc.host(), "model.brig");
    let task = tokio::spawn(svc.serve(Arc::from(SESSION), Box::new(server), head.into_bytes()));
    client.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("chat.completion"), "{out}");
    task.await.unwrap();
    assert_eq!(h.call().await.status, 200);
}

#[tokio::test]
async fn chat_stream_arrives_chunk_by_chunk_and_the_usage_chunk_is_stripped() {
    let mut h = harness(&base_config("")).await;
    h.fake(0).script(Behavior {
        chunk_delay: Duration::from_millis(150),
        reply: Some("one two three four five".into()),
        ..Default::default()
    });
    let mut req = chat("gpt-4o-mini", "stream please");
    req["stream"] = json!(true);
    let mut c = Client::connect(h.addr).await;
    let t0 = Instant::now();
    let r = c.send(post("/v1/chat/completions", &h.key, &req)).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = r.into_body();
    let mut frames = Vec::new();
    let mut first_at = None;
    while let Some(f) = body.frame().await {
        let f = f.unwrap().into_data().unwrap();
        if first_at.is_none() {
            first_at = Some(t0.elapsed());
            // The fake has not finished: this chunk was not buffered.
            assert_eq!(h.fake(0).streams_completed(), 0);
        }
        frames.push(f);
    }
    let total = t0.elapsed();
    let first = first_at.unwrap();
    assert!(
        first < Duration::from_millis(400),
        "first chunk after {first:?}"
    );
    assert!(
        total >= Duration::from_millis(700),
        "whole stream in {total:?}"
    );
    assert!(frames.len() >= 5, "{} frames", frames.len());
    let text = frames_text(&frames);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // brig asked for usage; the client did not, so it does not see it.
    assert!(!text.contains("\"choices\":[]"), "{text}");
    let up = h.fake(0).requests()[0].json();
    assert_eq!(up["stream_options"]["include_usage"], true);
    let rec = h.call().await;
    assert!(rec.stream);
    assert_eq!(rec.tokens_source, TokenSource::Reported);
    assert_eq!(rec.output_tokens, 5);
    let resp = rec.response_value().unwrap();
    let msg = &resp["choices"][0];
    assert_eq!(msg["message"]["content"], "one two three four five");
    assert_eq!(msg["finish_reason"], "stop");
}

#[tokio::test]
async fn a_client_that_asks_for_usage_keeps_the_usage_chunk() {
    let mut h = harness(&base_config("")).await;
    let mut req = chat("gpt-4o-mini", "x");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let mut c = Client::connect(h.addr).await;
    let text = body_text(c.send(post("/v1/chat/completions", &h.key, &req)).await).await;
    assert!(
        text.contains("\"choices\":[]") && text.contains("\"usage\":{"),
        "{text}"
    );
    assert_eq!(h.call().await.tokens_source, TokenSource::Reported);
}

#[tokio::test]
async fn tool_calls_pass_through_and_are_reassembled() {
    let mut h = harness(&base_config("")).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut req = chat("gpt-4o-mini", "weather?");
    req["tools"] = tools.clone();
    let (s, v) = once(h.addr, post("/v1/chat/completions", &h.key, &req)).await;
    assert_eq!(s, 200);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    h.call().await;
    req["stream"] = json!(true);
    let mut c = Client::connect(h.addr).await;
    body_text(c.send(post("/v1/chat/completions", &h.key, &req)).await).await;
    let rec = h.call().await;
    let resp = rec.response_value().unwrap();
    let tc = &resp["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(tc["function"]["name"], "get_weather");
    assert_eq!(tc["function"]["arguments"], "{\"city\":\"fake\"}");
    // Anthropic: a tool_use block, streamed as input_json_delta.
    let areq = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "messages": [{"role": "user", "content": "weather?"}]});
    let text = body_text(c.send(post_anthropic("/v1/messages", &h.key, &areq)).await).await;
    assert!(text.contains("input_json_delta"), "{text}");
    let rec = h.call().await;
    let resp = rec.response_value().unwrap();
    let block = &resp["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["input"]["city"], "fake");
    assert_eq!(resp["stop_reason"], "tool_use");
}

#[tokio::test]
async fn anthropic_messages_stream_keeps_the_event_sequence() {
    let mut h = harness(&base_config("")).await;
    let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hello"}]});
    let mut r = post_anthropic("/v1/messages?beta=true", &h.key, &req);
    r.headers_mut()
        .insert("anthropic-beta", "tools-2024-05-16".parse().unwrap());
    let mut c = Client::connect(h.addr).await;
    let text = body_text(c.send(r).await).await;
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta") && names.contains(&"message_delta"));
    let got = &h.fake(0).requests()[0];
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some(REAL_ANTHROPIC));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(got.header("anthropic-beta"), Some("tools-2024-05-16"));
    assert_eq!(got.header("authorization"), None);
    let rec = h.call().await;
    assert_eq!(rec.endpoint, "messages");
    assert_eq!(rec.tokens_source, TokenSource::Reported);
    assert_eq!(rec.output_tokens, 5);
    assert_eq!(
        rec.response_value().unwrap()["content"][0]["text"],
        "Hello from the fake upstream."
    );
    let want = (rec.input_tokens as f64 * 3.0 + 5.0 * 15.0) / 1e6;
    assert!((rec.cost_usd.unwrap() - want).abs() < 1e-12);
    // Non-stream and count_tokens.
    let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]});
    let (s, v) = body_json(c.send(post_anthropic("/v1/messages", &h.key, &req)).await).await;
    assert_eq!((s, v["type"].as_str()), (200, Some("message")));
    assert_eq!(v["stop_reason"], "end_turn");
    let (s, v) = body_json(
        c.send(post_anthropic("/v1/messages/count_tokens", &h.key, &req))
            .await,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["input_tokens"].as_u64().unwrap() > 0);
    h.call().await;
    let ct = h.call().await;
    assert_eq!(ct.endpoint, "messages.count_tokens");
    assert_eq!(ct.tokens_source, TokenSource::None);
}

#[tokio::test]
async fn responses_embeddings_and_models() {
    let mut h = harness(&base_config(
        "[routes.coder]\ntargets = [\"oa/gpt-4o-mini\"]",
    ))
    .await;
    let mut c = Client::connect(h.addr).await;
    let (s, v) = body_json(
        c.send(post(
            "/v1/responses",
            &h.key,
            &json!({"model": "gpt-4o-mini", "input": "hi"}),
        ))
        .await,
    )
    .await;
    assert_eq!((s, v["object"].as_str()), (200, Some("response")));
    let rec = h.call().await;
    assert_eq!(rec.endpoint, "responses");
    assert_eq!(
        rec.input_tokens,
        v["usage"]["input_tokens"].as_u64().unwrap()
    );
    let text = body_text(
        c.send(post(
            "/v1/responses",
            &h.key,
            &json!({"model": "gpt-4o-mini", "input": "hi", "stream": true}),
        ))
        .await,
    )
    .await;
    assert!(
        text.contains("event: response.output_text.delta")
            && text.contains("event: response.completed")
    );
    let rec = h.call().await;
    assert_eq!(rec.tokens_source, TokenSource::Reported);
    assert_eq!(rec.response_value().unwrap()["status"], "completed");

    let (s, v) = body_json(
        c.send(post(
            "/v1/embeddings",
            &h.key,
            &json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
        ))
        .await,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let rec = h.call().await;
    assert_eq!(
        (rec.endpoint.as_str(), rec.output_tokens),
        ("embeddings", 0)
    );
    assert!(rec.input_tokens > 0);

    let get = |path: &str, anthropic: bool| {
        let mut b = hyper::Request::get(path)
            .header("host", "model.brig")
            .header("authorization", format!("Bearer {}", h.key));
        if anthropic {
            b = b.header("anthropic-version", "2023-06-01");
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let (s, v) = body_json(c.send(get("/v1/models", false)).await).await;
    assert_eq!(s, 200);
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["coder", "gpt-4o-mini", "text-embedding-3-small"]);
    let (_, v) = body_json(c.send(get("/v1/models", true)).await).await;
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["data"][0]["id"], "claude-sonnet-4-5");
    assert_eq!(v["has_more"], false);
    let (s, v) = body_json(c.send(get("/v1/models/coder", false)).await).await;
    assert_eq!((s, v["id"].as_str()), (200, Some("coder")));
    let (s, v) = body_json(c.send(get("/v1/models/nope", false)).await).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

// ------------------------------------------------------- routing, retries

#[tokio::test]
async fn an_alias_routes_to_its_target_model() {
    let mut h = harness(&base_config(
        "[upstreams.local]\nkind = \"openai-compatible\"\nbase_url = \"{B1}\"\nretries = 0\n[routes.coder]\ntargets = [\"local/qwen2.5-coder\", \"oa/gpt-4o-mini\"]",
    ))
    .await;
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("coder", "code")),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["model"], "qwen2.5-coder");
    let got = &h.fake(1).requests()[0];
    assert_eq!(got.json()["model"], "qwen2.5-coder");
    assert_eq!(
        got.header("authorization"),
        None,
        "a keyless upstream gets no key"
    );
    assert!(h.fake(0).requests().is_empty());
    let c = h.call().await;
    assert_eq!(c.route.as_deref(), Some("coder"));
    assert_eq!(c.model.as_deref(), Some("coder"));
    assert_eq!(
        (c.upstream.as_deref(), c.upstream_model.as_deref()),
        (Some("local"), Some("qwen2.5-coder"))
    );
}

#[tokio::test]
async fn fallback_goes_to_the_second_target_when_the_first_fails() {
    let mut h = harness(&base_config(
        "[upstreams.local]\nkind = \"openai-compatible\"\nbase_url = \"{B1}\"\nretries = 0\n[routes.coder]\ntargets = [\"local/qwen\", \"oa/gpt-4o-mini\"]",
    ))
    .await;
    h.fake(1).script(Behavior::status(503));
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("coder", "x")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "gpt-4o-mini");
    let c = h.call().await;
    assert_eq!(c.attempts.len(), 2);
    assert_eq!(
        (c.attempts[0].upstream.as_str(), c.attempts[0].status),
        ("local", Some(503))
    );
    assert_eq!(
        (c.attempts[1].upstream.as_str(), c.attempts[1].status),
        ("oa", Some(200))
    );
    assert_eq!(c.upstream.as_deref(), Some("oa"));
    // A target that cannot be reached at all falls back too.
    drop(h.fakes.remove(1));
    let (s, _) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("coder", "x")),
    )
    .await;
    assert_eq!(s, 200);
    let c = h.call().await;
    assert!(
        c.attempts[0].error.as_deref().unwrap().contains("connect"),
        "{:?}",
        c.attempts
    );
}

#[tokio::test]
async fn retries_happen_only_when_safe() {
    let cfg = base_config("").replace(
        "retries = 0\nmodels = [\"gpt-4o-mini\"",
        "retries = 2\nbackoff = \"10ms\"\nmodels = [\"gpt-4o-mini\"",
    );
    let mut h = harness(&cfg).await;
    // 500 then 429 (retry-after: 0) then success: retried.
    h.fake(0).script(Behavior::status(500));
    h.fake(0).script(Behavior::rate_limited(0));
    let (s, _) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "x")),
    )
    .await;
    assert_eq!(s, 200);
    let c = h.call().await;
    let st: Vec<_> = c.attempts.iter().map(|a| a.status).collect();
    assert_eq!(st, [Some(500), Some(429), Some(200)]);
    // 400 is the request's fault: passed through, not retried.
    h.fake(0).script(Behavior::status(400));
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "x")),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(h.call().await.attempts.len(), 1);
    // Retries exhausted: the provider's own answer reaches the client.
    for _ in 0..3 {
        h.fake(0).script(Behavior::status(500));
    }
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "x")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (500, Some("server_error"))
    );
    assert_eq!(h.call().await.attempts.len(), 3);
    // Bytes already sent: a stream that hangs is not retried; the timeout
    // ends it with the protocol's error event.
    let n = h.fake(0).requests().len();
    let cfg2 = cfg.replace("retries = 2", "retries = 2\ntimeout = \"400ms\"");
    drop(h);
    let mut h = harness(&cfg2).await;
    h.fake(0).script(Behavior::hang_after(3));
    let mut req = chat("gpt-4o-mini", "x");
    req["stream"] = json!(true);
    let mut c = Client::connect(h.addr).await;
    let text = body_text(c.send(post("/v1/chat/completions", &h.key, &req)).await).await;
    assert!(text.contains("\"error\":{"), "{text}");
    assert!(!text.contains("[DONE]"));
    assert_eq!(h.fake(0).requests().len(), 1);
    let c = h.call().await;
    assert_eq!(
        (c.outcome, c.rule.as_deref()),
        (CallOutcome::Error, Some("upstream:timeout"))
    );
    assert_eq!(c.attempts.len(), 1);
    let _ = n;
}

#[tokio::test]
async fn a_slow_upstream_times_out_with_a_provider_shaped_504_or_falls_back() {
    let mut h = harness(&base_config(
        "[upstreams.slow]\nkind = \"openai-compatible\"\nbase_url = \"{B1}\"\nretries = 0\ntimeout = \"300ms\"\n[routes.r]\ntargets = [\"slow/m\"]\n[routes.r2]\ntargets = [\"slow/m\", \"oa/gpt-4o-mini\"]",
    ))
    .await;
    h.fake(1)
        .set_default(Behavior::slow_first_byte(Duration::from_secs(3)));
    let t0 = Instant::now();
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("r", "x")),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (504, Some("upstream_timeout")),
        "{v}"
    );
    assert_eq!(h.call().await.rule.as_deref(), Some("upstream:timeout"));
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("r2", "x")),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let c = h.call().await;
    assert_eq!(c.attempts.len(), 2);
    assert!(c.attempts[0]
        .error
        .as_deref()
        .unwrap()
        .contains("no response"));
    // The timed-out connections were dropped, not left waiting.
    eventually("slow upstream connections closed", || {
        h.fake(1).connections_open() == 0
    })
    .await;
}

#[tokio::test]
async fn a_key_that_cannot_be_fetched_is_a_503_naming_the_upstream_not_the_key() {
    let cfg = base_config("[upstreams.sealed]\nkind = \"openai-compatible\"\nbase_url = \"{B1}\"\nkey = \"sealed\"\nmodels = [\"m\"]");
    let mut h = harness(&cfg).await;
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("m", "x")),
    )
    .await;
    assert_eq!(s, 503);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`sealed`") && !msg.contains("vault") && !msg.contains(REAL_OPENAI),
        "{msg}"
    );
    assert!(h.fake(1).requests().is_empty());
    let c = h.call().await;
    let e = c.attempts[0].error.as_deref().unwrap();
    assert!(e.contains("sealed") && !e.contains(REAL_OPENAI), "{e}");
}

// ------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_gets_provider_shaped_errors() {
    let cfg = base_config("").replace("[upstreams.oa]", "max_body = \"2K\"\n[upstreams.oa]");
    let mut h = harness(&cfg).await;
    let mut c = Client::connect(h.addr).await;
    // Unknown model: OpenAI and Anthropic shapes.
    let (s, v) = body_json(
        c.send(post("/v1/chat/completions", &h.key, &chat("gpt-9", "x")))
            .await,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("gpt-4o-mini"));
    let areq = json!({"model": "claude-9", "max_tokens": 5, "messages": []});
    let (s, v) = body_json(c.send(post_anthropic("/v1/messages", &h.key, &areq)).await).await;
    assert_eq!(
        (s, v["type"].as_str(), v["error"]["type"].as_str()),
        (404, Some("error"), Some("not_found_error"))
    );
    // A model of the other protocol.
    let (s, v) = body_json(
        c.send(post(
            "/v1/chat/completions",
            &h.key,
            &chat("claude-sonnet-4-5", "x"),
        ))
        .await,
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/messages"),
        "{v}"
    );
    // Malformed JSON.
    let mut r = post("/v1/chat/completions", &h.key, &json!({}));
    *r.body_mut() = Full::new(Bytes::from_static(b"{\"model\": \"gpt-4o-mini\", "));
    let (s, v) = body_json(c.send(r).await).await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
    // Oversized: declared, and streamed without a length.
    let big = chat("gpt-4o-mini", &"x".repeat(4096));
    let (s, v) = body_json(c.send(post("/v1/chat/completions", &h.key, &big)).await).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let mut c = Client::connect(h.addr).await;
    let req = hyper::Request::post("/v1/messages")
        .header("x-api-key", &h.key)
        .body(Chunked(
            (0..8).map(|_| Bytes::from(vec![b' '; 1024])).collect(),
        ))
        .unwrap();
    let (mut sender, conn) = {
        let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap()
    };
    tokio::spawn(conn);
    let r = sender.send_request(req).await.unwrap();
    let (s, v) = body_json(r).await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (413, Some("request_too_large"))
    );
    // Wrong key, no key, unknown session, unknown endpoint.
    let (s, v) = body_json(
        c.send(post(
            "/v1/chat/completions",
            "sk-guess",
            &chat("gpt-4o-mini", "x"),
        ))
        .await,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let mut r = post("/v1/chat/completions", "", &chat("gpt-4o-mini", "x"));
    r.headers_mut().remove("authorization");
    assert_eq!(body_json(c.send(r).await).await.0, 401);
    let (s, _) = body_json(
        c.send(post("/v1/fine_tuning/jobs", &h.key, &json!({})))
            .await,
    )
    .await;
    assert_eq!(s, 404);
    assert!(h.fake(0).requests().is_empty(), "nothing bad went upstream");
    let mut rules = Vec::new();
    for _ in 0..9 {
        rules.push(h.call().await.rule.unwrap_or_default());
    }
    assert_eq!(
        rules,
        [
            "model:unknown",
            "model:unknown",
            "model:protocol",
            "body:malformed",
            "body:too_large",
            "body:too_large",
            "auth:key",
            "auth:key",
            "endpoint:unknown",
        ]
    );
    h.gw.close_session(SESSION);
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "x")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["type"].as_str()),
        (401, Some("authentication_error"))
    );
    assert_eq!(h.call().await.rule.as_deref(), Some("session:unknown"));
}

/// A body of chunks with no length (sent chunked).
struct Chunked(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------- budgets

#[tokio::test]
async fn a_token_budget_stops_a_runaway_loop() {
    let mut h = harness(&base_config("[budgets.session]\nmax_tokens = 100")).await;
    let mut c = Client::connect(h.addr).await;
    let (mut ok, mut denied, mut last) = (0, 0, json!(null));
    let mut headers = None;
    for _ in 0..40 {
        let r = c
            .send(post(
                "/v1/chat/completions",
                &h.key,
                &chat("gpt-4o-mini", "loop again"),
            ))
            .await;
        if r.status() == 429 {
            headers = Some(r.headers().clone());
            denied += 1;
            last = body_json(r).await.1;
        } else {
            assert_eq!(r.status(), 200);
            ok += 1;
            body_json(r).await;
            // As a real loop does: the next request after this one's end.
            h.settle().await;
        }
    }
    // Each call is ~9 tokens: the budget lets ~11 through, then stops all.
    assert!((10..=13).contains(&ok), "{ok} went through");
    assert_eq!(ok + denied, 40);
    assert_eq!(last["error"]["type"], "insufficient_quota");
    let msg = last["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("budget:session:max_tokens") && msg.contains("of its 100 tokens"),
        "{msg}"
    );
    assert!(msg.contains("[models.budgets.session] max_tokens"), "{msg}");
    let hd = headers.unwrap();
    assert_eq!(hd["x-should-retry"], "false");
    assert_eq!(h.fake(0).requests().len(), ok);
    let mut denials = 0;
    for _ in 0..40 {
        let r = h.call().await;
        if r.outcome == CallOutcome::Denied {
            denials += 1;
            assert_eq!(r.rule.as_deref(), Some("budget:session:max_tokens"));
            assert_eq!(r.status, 429);
        }
    }
    assert_eq!(denials, denied);
    // Anthropic's shape for the same refusal.
    let areq = json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let (s, v) = body_json(c.send(post_anthropic("/v1/messages", &h.key, &areq)).await).await;
    assert_eq!(
        (s, v["type"].as_str(), v["error"]["type"].as_str()),
        (429, Some("error"), Some("rate_limit_error"))
    );
}

#[tokio::test]
async fn seeded_usage_and_spend_limits_count() {
    let h = harness(&base_config(
        "[budgets.human]\nmax_spend = 0.01\n[prices.\"*\"]\ninput = 0.1\noutput = 0.1",
    ))
    .await;
    h.gw.seed_usage(Scope::Human, "ann", 10, 0.02);
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "x")),
    )
    .await;
    assert_eq!(s, 429);
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("human `ann`") && m.contains("budget:human:max_spend"),
        "{m}"
    );
}

#[tokio::test]
async fn rpm_and_concurrency_limits() {
    let mut h = harness(&base_config(
        "[budgets.task]\nrpm = 3\n[budgets.session]\nconcurrent = 1",
    ))
    .await;
    h.fake(0).script(Behavior {
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let mut req = chat("gpt-4o-mini", "x");
    req["stream"] = json!(true);
    let mut c1 = Client::connect(h.addr).await;
    let r1 = c1.send(post("/v1/chat/completions", &h.key, &req)).await;
    assert_eq!(r1.status(), 200);
    // One in flight: the second is refused at once.
    let (s, v) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "x")),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
    body_text(r1).await;
    // Freed when the stream ended; the task's rpm (3) refuses the 4th
    // (the refused one was not counted).
    let mut c = Client::connect(h.addr).await;
    for _ in 0..2 {
        let r = c
            .send(post(
                "/v1/chat/completions",
                &h.key,
                &chat("gpt-4o-mini", "x"),
            ))
            .await;
        assert_eq!(r.status(), 200);
        body_text(r).await;
    }
    let r = c
        .send(post(
            "/v1/chat/completions",
            &h.key,
            &chat("gpt-4o-mini", "x"),
        ))
        .await;
    assert_eq!(r.status(), 429);
    let ra: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=60).contains(&ra), "retry-after {ra}");
    let (_, v) = body_json(r).await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget:task:rpm"));
    let mut rules = Vec::new();
    for _ in 0..5 {
        rules.push(h.call().await.rule);
    }
    assert!(
        rules.contains(&Some("budget:session:concurrent".into())),
        "{rules:?}"
    );
    assert!(rules.contains(&Some("budget:task:rpm".into())), "{rules:?}");
}

// ---------------------------------------------------------------- capture

#[tokio::test]
async fn secrets_and_pii_in_prompts_never_reach_the_record() {
    let mut h = harness(&base_config(
        "[pii]\npatterns = { employee_id = \"EMP-[0-9]{6}\" }",
    ))
    .await;
    // PII goes to the model as written (redaction is for the record); a
    // known secret only comes back in the answer (one in a prompt is
    // refused: a_known_secret_in_a_prompt_is_refused_before_it_leaves).
    let planted = "mail jane.doe@example.com, card 4111 1111 1111 1111, ssn 123-45-6789, call +1 415 555 0134, host 10.20.30.40, id EMP-123456, gh ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    h.fake(0).set_default(Behavior::reply(&format!(
        "my key is {CANARY}; echo {planted}"
    )));
    let mut req = chat("gpt-4o-mini", planted);
    req["user"] = json!("jane.doe@example.com");
    let (s, v) = once(h.addr, post("/v1/chat/completions", &h.key, &req)).await;
    assert_eq!(s, 200);
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("jane.doe@example.com"));
    req["stream"] = json!(true);
    let mut c = Client::connect(h.addr).await;
    body_text(c.send(post("/v1/chat/completions", &h.key, &req)).await).await;
    for _ in 0..2 {
        let rec = serde_json::to_string(&h.call().await).unwrap();
        for leak in [
            CANARY,
            "jane.doe@example.com",
            "4111 1111 1111 1111",
            "123-45-6789",
            "415 555 0134",
            "10.20.30.40",
            "EMP-123456",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        ] {
            assert!(!rec.contains(leak), "{leak} in the record: {rec}");
        }
        for mask in [
            "[REDACTED:secret:CANARY]",
            "[REDACTED:pii:email]",
            "[REDACTED:pii:card]",
            "[REDACTED:pii:national_id]",
            "[REDACTED:pii:phone]",
            "[REDACTED:pii:ip]",
            "[REDACTED:pii:employee_id]",
            "[REDACTED:github_token]",
        ] {
            assert!(rec.contains(mask), "{mask} missing: {rec}");
        }
    }
}

/// The record prefilter remembers strings it found clean (agents send the
/// same system prompt and history in every call). What it remembered must
/// never hide a secret brig learns later, nor PII.
#[tokio::test]
async fn strings_seen_clean_are_masked_once_a_secret_is_known_and_pii_always() {
    const LATE: &str = "late-secret-Vb73kQ2nRtXw";
    let current = Arc::new(std::sync::RwLock::new(Arc::new(
        brig_redact::Redactor::patterns_only(),
    )));
    let c2 = current.clone();
    let mut h = harness_with(
        &base_config(""),
        2,
        Arc::new(move || c2.read().unwrap().clone()),
    )
    .await;
    let system = "You are a careful coding agent. Follow the repository's conventions.";
    let answer = format!("The staging deploy uses the value {LATE} for its database login.");
    h.fake(0).set_default(Behavior::reply(&answer));
    let mut req = chat("gpt-4o-mini", "How do I deploy staging?");
    req["messages"] = json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "How do I deploy staging?"},
    ]);
    // Unknown yet: recorded as it is, twice (the second time from the
    // prefilter's memory).
    for _ in 0..2 {
        let (s, _) = once(h.addr, post("/v1/chat/completions", &h.key, &req)).await;
        assert_eq!(s, 200);
        let rec = serde_json::to_string(&h.call().await).unwrap();
        assert!(rec.contains(LATE), "{rec}");
    }
    // brig learns the value (a new redactor): the next record masks it,
    // though the very same answer text was found clean before.
    *current.write().unwrap() = Arc::new(
        brig_redact::Redactor::builder()
            .secret("LATE", LATE)
            .build(),
    );
    for _ in 0..2 {
        let (s, _) = once(h.addr, post("/v1/chat/completions", &h.key, &req)).await;
        assert_eq!(s, 200);
        let rec = serde_json::to_string(&h.call().await).unwrap();
        assert!(!rec.contains(LATE), "{LATE} in the record: {rec}");
        assert!(rec.contains("[REDACTED:secret:LATE]"), "{rec}");
        assert!(rec.contains(system), "{rec}");
    }
    // PII is never remembered as clean: the same mail address in the same
    // long string is masked in every record, and a clean string seen
    // before does not hide one in the strings next to it.
    let pii = "Please send the staging report to jane.doe@example.com by Friday.";
    h.fake(0).set_default(Behavior::reply(pii));
    for i in 0..3 {
        let mut req = req.clone();
        if i == 2 {
            req["messages"][1]["content"] =
                json!(format!("{system} Also cc jane.doe@example.com."));
        }
        let (s, _) = once(h.addr, post("/v1/chat/completions", &h.key, &req)).await;
        assert_eq!(s, 200);
        let rec = serde_json::to_string(&h.call().await).unwrap();
        assert!(
            !rec.contains("jane.doe@example.com"),
            "PII in the record: {rec}"
        );
        assert!(rec.contains("[REDACTED:pii:email]"), "{rec}");
    }
}

#[tokio::test]
async fn a_known_secret_in_a_prompt_is_refused_before_it_leaves() {
    let mut h = harness(&base_config("")).await;
    let req = chat("gpt-4o-mini", &format!("deploy with {CANARY}"));
    let (s, v) = once(h.addr, post("/v1/chat/completions", &h.key, &req)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "secret_in_request", "{v}");
    assert!(
        h.fake(0).requests().is_empty(),
        "the secret reached the upstream"
    );
    let c = h.call().await;
    assert_eq!(c.rule.as_deref(), Some("exfil:known-secret"));
    assert!(!serde_json::to_string(&c).unwrap().contains(CANARY));
}

#[tokio::test]
async fn large_payloads_are_stored_as_digest_size_and_redacted_excerpt() {
    let cfg = base_config("").replace("[upstreams.oa]", "capture_max = \"1K\"\n[upstreams.oa]");
    let mut h = harness(&cfg).await;
    let text = format!(
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789 bob@corp.example {}",
        "lorem ipsum ".repeat(300)
    );
    let (s, _) = once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", &text)),
    )
    .await;
    assert_eq!(s, 200);
    let c = h.call().await;
    let r = c.request_value().unwrap();
    assert_eq!(r["sha256"].as_str().unwrap().len(), 64);
    assert!(r["size"].as_u64().unwrap() > 3000);
    assert_eq!(r["truncated"], true);
    let ex = r["excerpt"].as_str().unwrap();
    assert!(
        ex.contains("[REDACTED:github_token]") && ex.contains("[REDACTED:pii:email]"),
        "{ex}"
    );
    assert!(!ex.contains("ghp_abcdefghij") && !ex.contains("bob@corp.example"));
    // The response was small: stored whole.
    assert_eq!(c.response_value().unwrap()["object"], "chat.completion");
}

#[tokio::test]
async fn without_usage_tokens_are_counted() {
    let mut h = harness(&base_config("")).await;
    h.fake(0).set_default(Behavior {
        no_usage: true,
        reply: Some("abcd efgh".into()),
        ..Default::default()
    });
    let (s, _) = once(
        h.addr,
        post(
            "/v1/chat/completions",
            &h.key,
            &chat("gpt-4o-mini", "12345678"),
        ),
    )
    .await;
    assert_eq!(s, 200);
    let c = h.call().await;
    assert_eq!(c.tokens_source, TokenSource::Counted);
    // "user" + "12345678" = 12 bytes = 3 tokens; "abcd efgh" + "assistant" = 18 bytes = 5.
    assert_eq!((c.input_tokens, c.output_tokens), (3, 5));
    assert!(c.cost_usd.unwrap() > 0.0);
}

// ------------------------------------------------- disconnects and closing

#[tokio::test]
async fn a_client_gone_mid_stream_cancels_the_upstream_and_leaves_nothing_behind() {
    let mut h = harness(&base_config("")).await;
    // One call first: it starts the gateway's one recorder task and the
    // upstream pool's connection, which stay.
    once(
        h.addr,
        post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "warm")),
    )
    .await;
    h.call().await;
    h.settle().await;
    eventually("the warm-up client's connection task ended", || {
        h.sessions.lock().unwrap().iter().all(|t| t.is_finished())
    })
    .await;
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    h.fake(0).script(Behavior {
        chunk_delay: Duration::from_millis(100),
        reply: Some("w ".repeat(100)),
        ..Default::default()
    });
    let mut req = chat("gpt-4o-mini", "long");
    req["stream"] = json!(true);
    let mut c = Client::connect(h.addr).await;
    let r = c.send(post("/v1/chat/completions", &h.key, &req)).await;
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    // The client goes away mid-stream.
    drop(body);
    c.conn.abort();
    drop(c);
    eventually("the fake saw its stream cancelled", || {
        h.fake(0).streams_cancelled() == 1
    })
    .await;
    eventually("the upstream connection closed", || {
        h.fake(0).connections_open() == 0
    })
    .await;
    let rec = h.call().await;
    assert_eq!(rec.outcome, CallOutcome::ClientClosed);
    assert_eq!(h.fake(0).streams_completed(), 0);
    h.settle().await;
    // Nothing left: the gateway's connection task ended with the client's.
    eventually("the gateway connection task ended", || {
        h.sessions.lock().unwrap().iter().all(|t| t.is_finished())
    })
    .await;
    eventually("no task left behind", || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            <= baseline
    })
    .await;
    // Waiting for a slow head: the client leaving drops that exchange too.
    h.fake(0)
        .script(Behavior::slow_first_byte(Duration::from_secs(30)));
    let mut c = Client::connect(h.addr).await;
    let req = post("/v1/chat/completions", &h.key, &chat("gpt-4o-mini", "slow"));
    let _ = tokio::time::timeout(Duration::from_millis(200), c.send(req)).await;
    c.conn.abort();
    drop(c);
    eventually("the slow upstream connection closed", || {
        h.fake(0).connections_open() == 0
    })
    .await;
    assert_eq!(h.call().await.outcome, CallOutcome::ClientClosed);
    h.settle().await;
}

#[tokio::test]
async fn closing_the_session_aborts_its_streams_and_refuses_what_follows() {
    let mut h = harness(&base_config("")).await;
    h.fake(0).script(Behavior {
        chunk_delay: Duration::from_millis(100),
        reply: Some("w ".repeat(100)),
        ..Default::default()
    });
    let areq = json!({"model": "claude-sonnet-4-5", "max_tokens": 500, "stream": true,
        "messages": [{"role": "user", "content": "long"}]});
    let mut c = Client::connect(h.addr).await;
    let r = c.send(post_anthropic("/v1/messages", &h.key, &areq)).await;
    let mut body = r.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(h.gw.close_session(SESSION));
    let t0 = Instant::now();
    let mut rest = Vec::new();
    while let Some(f) = body.frame().await {
        rest.push(f.unwrap().into_data().unwrap());
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    let text = frames_text(&rest);
    assert!(
        text.contains("event: error") && text.contains("session was closed"),
        "{text}"
    );
    assert!(!text.contains("message_stop"));
    eventually("upstream cancelled", || h.fake(0).streams_cancelled() == 1).await;
    let rec = h.call().await;
    assert_eq!(
        (rec.outcome, rec.rule.as_deref()),
        (CallOutcome::Error, Some("session:closed"))
    );
    let (s, _) = body_json(c.send(post_anthropic("/v1/messages", &h.key, &areq)).await).await;
    assert_eq!(s, 401);
    h.settle().await;
}
