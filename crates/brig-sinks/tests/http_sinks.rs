//! Splunk HEC, Datadog, CloudWatch Logs and OTLP against local servers that
//! speak each wire format, verify it, and fail and recover on demand.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::event::Event;
use brig_sinks::sigv4::{self, Credentials};
use brig_sinks::{CursorStore, MemoryCursors, SinkConfig, SinkKind};
use common::*;
use serde_json::Value;

const HEC_TOKEN: &str = "11111111-2222-3333-4444-555555555555";

/// A Splunk HEC: checks the path, the auth header and each concatenated
/// event object; answers like Splunk. Events with action `bad` get code 6.
async fn hec_server() -> Arc<HttpSinkServer> {
    HttpSinkServer::start(|r| {
        if r.method != "POST" || r.path != "/services/collector/event" {
            return Err(format!("wrong endpoint {} {}", r.method, r.path));
        }
        if r.header("authorization") != Some(&format!("Splunk {HEC_TOKEN}")) {
            return Ok(Reply {
                status: 401,
                body: r#"{"text":"Invalid authorization","code":3}"#.into(),
                events: vec![],
                checkpoints: vec![],
            });
        }
        let mut d = Decoded::default();
        for obj in serde_json::Deserializer::from_slice(&r.body).into_iter::<Value>() {
            let obj = obj.map_err(|e| format!("body is not concatenated JSON objects: {e}"))?;
            for k in ["time", "host", "source", "sourcetype", "event"] {
                if obj.get(k).is_none() {
                    return Err(format!("HEC object without `{k}`: {obj}"));
                }
            }
            if !obj["time"].is_number()
                || obj["source"] != "brig"
                || obj["host"] != "test-host"
                || obj["index"] != "audit"
            {
                return Err(format!("bad HEC metadata: {obj}"));
            }
            if obj["sourcetype"] == "brig:checkpoint" {
                d.checkpoint(&obj["event"].to_string())?;
                continue;
            }
            if obj["sourcetype"] != "brig:event" {
                return Err(format!("an event with sourcetype {}", obj["sourcetype"]));
            }
            let e: Event =
                serde_json::from_value(obj["event"].clone()).map_err(|e| e.to_string())?;
            if e.action == "bad" {
                return Ok(Reply {
                    status: 400,
                    body: r#"{"text":"Invalid data format","code":6,"invalid-event-number":0}"#
                        .into(),
                    events: vec![],
                    checkpoints: vec![],
                });
            }
            d.event(e)?;
        }
        Ok(d.reply(200, r#"{"text":"Success","code":0}"#))
    })
    .await
}

fn hec_config(url: &str, token_file: &std::path::Path) -> SinkConfig {
    fast(SinkConfig::new(
        "splunk",
        SinkKind::SplunkHec {
            url: url.into(),
            token_file: Some(token_file.into()),
            token_env: None,
            index: Some("audit".into()),
            sourcetype: "brig:event".into(),
            source: "brig".into(),
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_outage_loses_nothing_and_cursor_moves_only_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hec-token");
    std::fs::write(&token, format!("{HEC_TOKEN}\n")).unwrap();
    let srv = hec_server().await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 5);
    let (runner, cursors) = j.start_mem(vec![hec_config(&srv.url(), &token)]);
    wait_for("first 5 events", || srv.accepted.lock().unwrap().len() == 5).await;
    wait_for("cursor at 5", || status(&runner).cursor == 5).await;

    srv.set_mode(Mode::Fail(
        503,
        r#"{"text":"Server is busy","code":9}"#.into(),
    ))
    .await;
    want.extend(j.append("exec.exit", 7));
    wait_for("failures reported", || {
        status(&runner).consecutive_failures >= 3
    })
    .await;
    let st = status(&runner);
    assert_eq!(st.cursor, 5, "cursor must not move without an ack");
    assert_eq!(st.lag, 7);
    assert_eq!(st.head, 12);
    let err = st.last_error.clone().unwrap();
    assert!(
        err.contains("503") && err.contains("Server is busy"),
        "{err}"
    );
    assert!(!err.contains(HEC_TOKEN));
    assert_eq!(cursors.get("splunk").unwrap().map(|c| c.seq), Some(5));

    srv.set_mode(Mode::Up).await;
    wait_for("all 12 after recovery", || status(&runner).cursor == 12).await;
    assert_all_delivered(&srv.accepted_ids(), &want);
    let st = status(&runner);
    assert_eq!((st.lag, st.consecutive_failures), (0, 0));
    assert!(st.last_success_at.is_some());
    assert!(
        srv.violations.lock().unwrap().is_empty(),
        "{:?}",
        srv.violations.lock().unwrap()
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_poison_event_is_dead_lettered_and_the_rest_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hec-token");
    std::fs::write(&token, HEC_TOKEN).unwrap();
    let srv = hec_server().await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 3);
    let bad = j.append("bad", 1);
    want.extend(j.append("exec.exit", 3));
    let mut cfg = hec_config(&srv.url(), &token);
    cfg.poison_attempts = 2;
    let mut opts = fast_opts();
    opts.dead_letter_dir = Some(dir.path().join("dead"));
    let runner = j.start(vec![cfg], Arc::new(MemoryCursors::new()), opts);
    wait_for("journal drained", || status(&runner).cursor == 7).await;
    assert_all_delivered(&srv.accepted_ids(), &want);
    let dl = std::fs::read_to_string(dir.path().join("dead/splunk.dead-letter.jsonl")).unwrap();
    let lines: Vec<Value> = dl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], bad[0].as_str());
    assert_eq!(lines[0]["event"]["id"], bad[0].as_str());
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .contains("Invalid data format"));
    let st = status(&runner);
    assert_eq!(st.dead_lettered_total, 1);
    assert!(st.last_error.unwrap().contains("dead-lettered"));
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_poison_without_dead_letter_dir_blocks_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hec-token");
    std::fs::write(&token, HEC_TOKEN).unwrap();
    let srv = hec_server().await;
    let j = Journal::new();
    j.append("exec.start", 1);
    j.append("bad", 1);
    let mut cfg = hec_config(&srv.url(), &token);
    cfg.poison_attempts = 1;
    let (runner, _) = j.start_mem(vec![cfg]);
    wait_for("stuck on the bad event", || {
        status(&runner).consecutive_failures >= 3
    })
    .await;
    let st = status(&runner);
    assert_eq!((st.cursor, st.lag), (1, 1));
    assert!(st.last_error.unwrap().contains("no dead-letter directory"));
    runner.shutdown().await;
}

/// Datadog logs intake v2: JSON array of log entries, DD-API-KEY, 202.
async fn datadog_server() -> Arc<HttpSinkServer> {
    HttpSinkServer::start(|r| {
        if r.method != "POST" || r.path != "/api/v2/logs" {
            return Err(format!("wrong endpoint {} {}", r.method, r.path));
        }
        if r.header("dd-api-key") != Some("dd-key-123") {
            return Ok(Reply {
                status: 403,
                body: r#"{"errors":[{"status":"403","title":"Forbidden"}]}"#.into(),
                events: vec![],
                checkpoints: vec![],
            });
        }
        if r.header("content-type") != Some("application/json") {
            return Err("content-type must be application/json".into());
        }
        let arr: Vec<Value> =
            serde_json::from_slice(&r.body).map_err(|e| format!("not a JSON array: {e}"))?;
        if arr.is_empty() || arr.len() > 1000 || r.body.len() > 5 * 1024 * 1024 {
            return Err(format!("payload over the limits: {} entries", arr.len()));
        }
        let mut d = Decoded::default();
        for o in arr {
            // Sorted: serde_json keeps insertion order when a crate in the
            // build enables its preserve_order feature (cedar-policy does).
            let mut keys: Vec<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            if keys != ["ddsource", "ddtags", "hostname", "message", "service"] {
                return Err(format!("unexpected entry keys {keys:?}"));
            }
            let msg = o["message"].as_str().ok_or("message is not a string")?;
            let tags = o["ddtags"].as_str().unwrap();
            if is_checkpoint(msg) {
                if !tags.starts_with("record:checkpoint,action:journal.checkpoint,")
                    || !tags.contains("env:test")
                {
                    return Err(format!("bad checkpoint ddtags {tags}"));
                }
                d.checkpoint(msg)?;
                continue;
            }
            let e = parse_event(msg)?;
            if !tags.contains(&format!("action:{}", e.action)) || !tags.contains("env:test") {
                return Err(format!("bad ddtags {tags}"));
            }
            d.event(e)?;
        }
        Ok(d.reply(202, "{}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_lost_ack_redelivers_with_the_same_event_ids() {
    let srv = datadog_server().await;
    std::env::set_var("BRIG_TEST_DD_KEY", "dd-key-123");
    let mut cfg = fast(SinkConfig::new(
        "dd",
        SinkKind::Datadog {
            url: srv.url(),
            api_key_file: None,
            api_key_env: Some("BRIG_TEST_DD_KEY".into()),
            service: "brig".into(),
            ddsource: "brig".into(),
            tags: vec!["env:test".into()],
        },
    ));
    cfg.batch_size = 4;
    srv.set_mode(Mode::DropAck).await;
    let j = Journal::new();
    let want = j.append("exec.start", 4);
    let (runner, _) = j.start_mem(vec![cfg]);
    wait_for("received but not acked", || {
        srv.accepted.lock().unwrap().len() >= 8
    })
    .await;
    assert_eq!(status(&runner).cursor, 0, "no ack, no progress");
    srv.set_mode(Mode::Up).await;
    wait_for("acked", || status(&runner).cursor == 4).await;
    let got = srv.accepted_ids();
    // Every copy the server saw is one of the journal's ids: duplicates, never new ids.
    for id in &got {
        assert!(want.contains(id), "unknown id {id}");
    }
    assert!(got.len() >= 12);
    assert_eq!(
        &got[..4],
        &want[..],
        "each retry is the same events in order"
    );
    assert_eq!(&got[got.len() - 4..], &want[..]);
    assert!(srv.violations.lock().unwrap().is_empty());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datadog_bad_key_is_retried_and_reported() {
    let srv = datadog_server().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), "wrong-key").unwrap();
    let cfg = fast(SinkConfig::new(
        "dd",
        SinkKind::Datadog {
            url: format!("{}/api/v2/logs", srv.url()),
            api_key_file: Some(dir.path().join("k")),
            api_key_env: None,
            service: "brig".into(),
            ddsource: "brig".into(),
            tags: vec![],
        },
    ));
    let j = Journal::new();
    j.append("exec.start", 2);
    let (runner, _) = j.start_mem(vec![cfg]);
    wait_for("auth failure reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    let st = status(&runner);
    assert_eq!((st.cursor, st.lag, st.dead_lettered_total), (0, 2, 0));
    let err = st.last_error.unwrap();
    assert!(err.contains("403") && err.contains("api_key_file"), "{err}");
    assert!(!err.contains("wrong-key"));
    runner.shutdown().await;
}

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// CloudWatch Logs: recomputes the SigV4 signature of every request from the
/// bytes received, and knows only the streams created through CreateLogStream.
async fn cloudwatch_server(streams: Arc<Mutex<Vec<String>>>) -> Arc<HttpSinkServer> {
    HttpSinkServer::start(move |r| {
        let auth = r.header("authorization").ok_or("no authorization header")?;
        let date = r.header("x-amz-date").ok_or("no x-amz-date")?;
        let signed = auth.split("SignedHeaders=").nth(1).and_then(|s| s.split(',').next()).ok_or("no SignedHeaders")?;
        for h in ["content-type", "host", "x-amz-date", "x-amz-target", "x-amz-security-token"] {
            if !signed.split(';').any(|s| s == h) {
                return Err(format!("{h} is not signed: {signed}"));
            }
        }
        let headers: Vec<(&str, &str)> = signed.split(';').map(|h| (h, r.header(h).unwrap_or(""))).collect();
        let creds = Credentials { access_key_id: AKID.into(), secret_access_key: SECRET.into(), session_token: None };
        let want = sigv4::sign(&r.method, &r.path, &r.query, &headers, &r.body, &creds, "us-east-1", "logs", date);
        if want.authorization != auth {
            return Ok(Reply { status: 403, body: r#"{"__type":"InvalidSignatureException","message":"signature mismatch"}"#.into(), events: vec![], checkpoints: vec![] });
        }
        if r.header("x-amz-security-token") != Some("session-tok") {
            return Err("missing session token".into());
        }
        if r.header("content-type") != Some("application/x-amz-json-1.1") || r.path != "/" {
            return Err("wrong content-type or path".into());
        }
        let body: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        if body["logGroupName"] != "brig-audit" || body["logStreamName"] != "host-1" {
            return Err(format!("wrong group/stream {body}"));
        }
        match r.header("x-amz-target") {
            Some("Logs_20140328.CreateLogStream") => {
                streams.lock().unwrap().push("host-1".into());
                Ok(Reply { status: 200, body: "{}".into(), events: vec![], checkpoints: vec![] })
            }
            Some("Logs_20140328.PutLogEvents") => {
                if !streams.lock().unwrap().contains(&"host-1".to_string()) {
                    return Ok(Reply { status: 400, body: r#"{"__type":"ResourceNotFoundException","message":"The specified log stream does not exist."}"#.into(), events: vec![], checkpoints: vec![] });
                }
                let evs = body["logEvents"].as_array().ok_or("no logEvents")?;
                if evs.is_empty() || evs.len() > 10_000 {
                    return Err("logEvents count out of limits".into());
                }
                let mut last = 0;
                let mut d = Decoded::default();
                let mut too_old = 0;
                for le in evs {
                    let ts = le["timestamp"].as_i64().ok_or("timestamp not an integer")?;
                    if ts < last {
                        return Err("logEvents not in chronological order".into());
                    }
                    last = ts;
                    // Like CloudWatch: events older than 14 days are dropped and reported.
                    if ts < 1_577_836_800_000 {
                        too_old += 1;
                        continue;
                    }
                    d.message(le["message"].as_str().ok_or("message not a string")?)?;
                }
                let body = if too_old > 0 {
                    format!(r#"{{"nextSequenceToken":"1","rejectedLogEventsInfo":{{"tooOldLogEventEndIndex":{too_old}}}}}"#)
                } else {
                    r#"{"nextSequenceToken":"1"}"#.to_string()
                };
                Ok(d.reply(200, body))
            }
            other => Err(format!("unexpected X-Amz-Target {other:?}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_requests_are_signed_ordered_and_the_stream_is_created() {
    let streams = Arc::new(Mutex::new(Vec::new()));
    let srv = cloudwatch_server(streams.clone()).await;
    std::env::set_var("BRIG_TEST_AKID", AKID);
    std::env::set_var("BRIG_TEST_SECRET", SECRET);
    std::env::set_var("BRIG_TEST_TOKEN", "session-tok");
    let cfg = fast(SinkConfig::new(
        "cw",
        SinkKind::Cloudwatch {
            endpoint: Some(srv.url()),
            region: "us-east-1".into(),
            log_group: "brig-audit".into(),
            log_stream: "host-1".into(),
            access_key_id_env: "BRIG_TEST_AKID".into(),
            secret_access_key_env: "BRIG_TEST_SECRET".into(),
            session_token_env: Some("BRIG_TEST_TOKEN".into()),
            create_log_stream: true,
        },
    ));
    let j = Journal::new();
    // Event times out of order within the batch: the sink must sort them.
    let mut want = Vec::new();
    for (i, t) in [
        "2026-01-01T00:00:03Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:02Z",
    ]
    .iter()
    .enumerate()
    {
        let mut e = event("exec.start", i);
        e.time = t.to_string();
        want.push(e.id.clone());
        j.source.append(e);
    }
    let (runner, _) = j.start_mem(vec![cfg]);
    wait_for("delivered", || status(&runner).cursor == 3).await;
    assert_eq!(
        streams.lock().unwrap().len(),
        1,
        "CreateLogStream called once"
    );
    let got = srv.accepted.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let mut sorted = want.clone();
    sorted.sort();
    let mut got_ids = ids(&got);
    got_ids.sort();
    assert_eq!(got_ids, sorted);
    assert!(
        srv.violations.lock().unwrap().is_empty(),
        "{:?}",
        srv.violations.lock().unwrap()
    );
    // The server really checks: a wrong secret is refused and reported, not dead-lettered.
    std::env::set_var("BRIG_TEST_SECRET2", "not-the-secret");
    let bad = fast(SinkConfig::new(
        "cw-bad",
        SinkKind::Cloudwatch {
            endpoint: Some(srv.url()),
            region: "us-east-1".into(),
            log_group: "brig-audit".into(),
            log_stream: "host-1".into(),
            access_key_id_env: "BRIG_TEST_AKID".into(),
            secret_access_key_env: "BRIG_TEST_SECRET2".into(),
            session_token_env: Some("BRIG_TEST_TOKEN".into()),
            create_log_stream: false,
        },
    ));
    let (r2, _) = j.start_mem(vec![bad]);
    wait_for("signature refused", || {
        status(&r2).consecutive_failures >= 2
    })
    .await;
    let st = status(&r2);
    assert_eq!(st.cursor, 0);
    assert!(st
        .last_error
        .as_deref()
        .unwrap()
        .contains("InvalidSignatureException"));
    runner.shutdown().await;
    r2.shutdown().await;
}

/// An OTLP/HTTP collector taking JSON ExportLogsServiceRequests.
async fn otlp_server() -> Arc<HttpSinkServer> {
    HttpSinkServer::start(|r| {
        if r.method != "POST" || r.path != "/v1/logs" {
            return Err(format!("wrong endpoint {} {}", r.method, r.path));
        }
        if r.header("x-tenant") != Some("blue")
            || r.header("authorization") != Some("Bearer otlp-secret")
        {
            return Ok(Reply {
                status: 401,
                body: "{}".into(),
                events: vec![],
                checkpoints: vec![],
            });
        }
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
        let rl = &v["resourceLogs"][0];
        let rattrs = attrs(&rl["resource"]["attributes"]);
        if rattrs.get("service.name").map(String::as_str) != Some("brig") {
            return Err(format!("no service.name: {rattrs:?}"));
        }
        let recs = rl["scopeLogs"][0]["logRecords"]
            .as_array()
            .ok_or("no logRecords")?;
        let mut d = Decoded::default();
        for rec in recs {
            let body = rec["body"]["stringValue"]
                .as_str()
                .ok_or("body.stringValue missing")?;
            let a = attrs(&rec["attributes"]);
            if a.get("brig.record").map(String::as_str) == Some("checkpoint") {
                let seq = d.checkpoint(body)?;
                if a.get("brig.seq") != Some(&seq.to_string())
                    || a.get("brig.action").map(String::as_str) != Some("journal.checkpoint")
                    || !a.contains_key("brig.key_id")
                    || rec["severityText"] != "INFO"
                {
                    return Err(format!("checkpoint attributes: {a:?}"));
                }
                continue;
            }
            let e = parse_event(body)?;
            if a.get("event.id") != Some(&e.id)
                || a.get("brig.action") != Some(&e.action)
                || a.get("brig.session") != e.session.as_ref()
            {
                return Err(format!("attributes do not match the event: {a:?}"));
            }
            let t: i128 = rec["timeUnixNano"]
                .as_str()
                .ok_or("timeUnixNano not a string")?
                .parse()
                .map_err(|_| "bad timeUnixNano")?;
            if t < 1_600_000_000_000_000_000
                || rec["severityText"] != "INFO"
                || rec["severityNumber"] != 9
            {
                return Err("bad time or severity".into());
            }
            d.event(e)?;
        }
        Ok(d.reply(200, "{}"))
    })
    .await
}

fn attrs(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["key"].as_str()?.to_string(),
                a["value"]["stringValue"]
                    .as_str()
                    .or(a["value"]["intValue"].as_str())?
                    .to_string(),
            ))
        })
        .collect()
}

fn otlp_config(url: &str, dir: &std::path::Path) -> SinkConfig {
    std::fs::write(dir.join("auth"), "Bearer otlp-secret\n").unwrap();
    fast(SinkConfig::new(
        "otel",
        SinkKind::Otlp {
            url: url.into(),
            headers: [("x-tenant".to_string(), "blue".to_string())].into(),
            header_files: [("authorization".to_string(), dir.join("auth"))].into(),
            service_name: "brig".into(),
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_down_at_start_then_recovers_and_a_restart_resumes_from_the_stored_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let srv = otlp_server().await;
    srv.set_mode(Mode::Refuse).await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 3);
    let cursors =
        Arc::new(brig_sinks::FileCursorStore::open(dir.path().join("cursors.json")).unwrap());
    let runner = j.start(
        vec![otlp_config(&srv.url(), dir.path())],
        cursors.clone(),
        fast_opts(),
    );
    wait_for("refusal reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    let st = status(&runner);
    assert_eq!((st.cursor, st.lag), (0, 3));
    assert!(st.last_error.unwrap().contains("cannot connect"));

    srv.set_mode(Mode::Up).await;
    wait_for("delivered after recovery", || status(&runner).cursor == 3).await;
    runner.shutdown().await;

    // brig restarts: events written meanwhile go out, the old ones do not.
    want.extend(j.append("exec.exit", 2));
    let reopened =
        Arc::new(brig_sinks::FileCursorStore::open(dir.path().join("cursors.json")).unwrap());
    assert_eq!(reopened.get("otel").unwrap().map(|c| c.seq), Some(3));
    let runner = j.start(
        vec![otlp_config(&srv.url(), dir.path())],
        reopened,
        fast_opts(),
    );
    wait_for("new events after restart", || status(&runner).cursor == 5).await;
    assert_eq!(
        srv.accepted_ids(),
        want,
        "no event twice: the cursor was stored after the ack"
    );
    assert!(
        srv.violations.lock().unwrap().is_empty(),
        "{:?}",
        srv.violations.lock().unwrap()
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_connections_closed_mid_request_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let srv = otlp_server().await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 2);
    let (runner, _) = j.start_mem(vec![otlp_config(&format!("{}/", srv.url()), dir.path())]);
    wait_for("first", || status(&runner).cursor == 2).await;
    srv.set_mode(Mode::Close).await;
    want.extend(j.append("exec.exit", 2));
    wait_for("close reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    assert_eq!(status(&runner).cursor, 2);
    srv.set_mode(Mode::Up).await;
    wait_for("rest", || status(&runner).cursor == 4).await;
    assert_all_delivered(&srv.accepted_ids(), &want);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_what_is_deliverable_and_is_bounded_when_a_sink_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let up = otlp_server().await;
    let down = otlp_server().await;
    down.set_mode(Mode::Refuse).await;
    let j = Journal::new();
    let mut slow = otlp_config(&up.url(), dir.path());
    slow.flush_interval = Duration::from_secs(30);
    let mut other = otlp_config(&down.url(), dir.path());
    other.name = "otel-down".into();
    let (runner, cursors) = j.start_mem(vec![slow, other]);
    let want = j.append("exec.start", 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        up.accepted.lock().unwrap().is_empty(),
        "still waiting for a fuller batch"
    );
    let started = std::time::Instant::now();
    let st = runner.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown is bounded"
    );
    assert_eq!(
        up.accepted_ids(),
        want,
        "a partial batch is flushed at shutdown"
    );
    assert_eq!(cursors.get("otel").unwrap().map(|c| c.seq), Some(3));
    assert_eq!(cursors.get("otel-down").unwrap(), None);
    assert_eq!(st.iter().find(|s| s.name == "otel-down").unwrap().lag, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_events_it_drops_as_too_old_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let streams = Arc::new(Mutex::new(vec!["host-1".to_string()]));
    let srv = cloudwatch_server(streams).await;
    std::env::set_var("BRIG_TEST_AKID3", AKID);
    std::env::set_var("BRIG_TEST_SECRET3", SECRET);
    std::env::set_var("BRIG_TEST_TOKEN3", "session-tok");
    let cfg = fast(SinkConfig::new(
        "cw",
        SinkKind::Cloudwatch {
            endpoint: Some(srv.url()),
            region: "us-east-1".into(),
            log_group: "brig-audit".into(),
            log_stream: "host-1".into(),
            access_key_id_env: "BRIG_TEST_AKID3".into(),
            secret_access_key_env: "BRIG_TEST_SECRET3".into(),
            session_token_env: Some("BRIG_TEST_TOKEN3".into()),
            create_log_stream: false,
        },
    ));
    let j = Journal::new();
    let fresh = j.append("exec.start", 2);
    let mut old = event("exec.start", 9);
    old.time = "2001-01-01T00:00:00Z".into();
    let old_id = old.id.clone();
    j.source.append(old);
    let mut opts = fast_opts();
    opts.dead_letter_dir = Some(dir.path().to_path_buf());
    let runner = j.start(vec![cfg], Arc::new(MemoryCursors::new()), opts);
    wait_for("drained", || status(&runner).cursor == 3).await;
    assert_eq!(srv.accepted_ids(), fresh);
    let dl = std::fs::read_to_string(dir.path().join("cw.dead-letter.jsonl")).unwrap();
    let line: Value = serde_json::from_str(dl.lines().next().unwrap()).unwrap();
    assert_eq!(line["id"], old_id.as_str());
    assert!(
        line["error"].as_str().unwrap().contains("too old"),
        "{line}"
    );
    assert_eq!(status(&runner).dead_lettered_total, 1);
    runner.shutdown().await;
}

fn datadog_config(url: &str) -> SinkConfig {
    std::env::set_var("BRIG_TEST_DD_KEY", "dd-key-123");
    fast(SinkConfig::new(
        "dd",
        SinkKind::Datadog {
            url: url.into(),
            api_key_file: None,
            api_key_env: Some("BRIG_TEST_DD_KEY".into()),
            service: "brig".into(),
            ddsource: "brig".into(),
            tags: vec!["env:test".into()],
        },
    ))
}

fn cloudwatch_config(url: &str) -> SinkConfig {
    std::env::set_var("BRIG_TEST_AKID", AKID);
    std::env::set_var("BRIG_TEST_SECRET", SECRET);
    std::env::set_var("BRIG_TEST_TOKEN", "session-tok");
    fast(SinkConfig::new(
        "cw",
        SinkKind::Cloudwatch {
            endpoint: Some(url.into()),
            region: "us-east-1".into(),
            log_group: "brig-audit".into(),
            log_stream: "host-1".into(),
            access_key_id_env: "BRIG_TEST_AKID".into(),
            secret_access_key_env: "BRIG_TEST_SECRET".into(),
            session_token_env: Some("BRIG_TEST_TOKEN".into()),
            create_log_stream: true,
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_sink_delivers_each_checkpoint_after_the_events_it_signs() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hec-token");
    std::fs::write(&token, format!("{HEC_TOKEN}\n")).unwrap();
    let hec = hec_server().await;
    let dd = datadog_server().await;
    let cw = cloudwatch_server(Arc::new(Mutex::new(Vec::new()))).await;
    let otlp = otlp_server().await;
    let servers = [&hec, &dd, &cw, &otlp];
    let j = Journal::new();
    // Checkpoints signed before the runners start (a backlog), and while
    // they run; small batches so checkpoints land at batch edges too.
    let mut want = j.append("exec.start", 5);
    let mut cps = vec![j.checkpoint()];
    want.extend(j.append("exec.exit", 3));
    cps.push(j.checkpoint());
    let cfgs: Vec<SinkConfig> = [
        hec_config(&hec.url(), &token),
        datadog_config(&dd.url()),
        cloudwatch_config(&cw.url()),
        otlp_config(&otlp.url(), dir.path()),
    ]
    .into_iter()
    .map(|mut c| {
        c.batch_size = 3;
        c
    })
    .collect();
    let (runner, cursors) = j.start_mem(cfgs);
    wait_for("the backlog everywhere", || {
        runner
            .status()
            .iter()
            .all(|s| s.cursor == 8 && s.checkpoint_cursor == 8)
    })
    .await;
    want.extend(j.append("exec.start", 4));
    cps.push(j.checkpoint());
    wait_for("every checkpoint everywhere", || {
        runner
            .status()
            .iter()
            .all(|s| s.cursor == 12 && s.checkpoint_cursor == 12)
    })
    .await;
    assert_eq!(cps, vec![5, 8, 12]);
    for (srv, name) in servers.iter().zip(["splunk", "dd", "cw", "otel"]) {
        assert!(
            srv.violations.lock().unwrap().is_empty(),
            "{name}: {:?}",
            srv.violations.lock().unwrap()
        );
        assert_all_delivered(&srv.accepted_ids(), &want);
        assert_eq!(
            checkpoint_seqs(&srv.checkpoints.lock().unwrap()),
            cps,
            "{name}"
        );
        let c = cursors.get(name).unwrap().unwrap();
        assert_eq!((c.seq, c.checkpoint_seq), (12, 12), "{name}");
    }
    // The checkpoint is carried verbatim.
    let got = hec.checkpoints.lock().unwrap()[0].clone();
    assert_eq!(got["hash"], format!("{:064x}", 5));
    assert_eq!(got["key_id"], "ed25519:00112233445566ff");
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_down_when_a_checkpoint_is_signed_gets_it_after_recovery_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cursor_file = dir.path().join("cursors.json");
    let srv = datadog_server().await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 3);
    let cursors: Arc<dyn CursorStore> =
        Arc::new(brig_sinks::FileCursorStore::open(&cursor_file).unwrap());
    let runner = j.start(vec![datadog_config(&srv.url())], cursors, fast_opts());
    wait_for("first events", || status(&runner).cursor == 3).await;

    srv.set_mode(Mode::Fail(503, "{}".into())).await;
    want.extend(j.append("exec.exit", 2));
    let cp = j.checkpoint();
    wait_for("failures", || status(&runner).consecutive_failures >= 2).await;
    let st = status(&runner);
    assert_eq!((st.cursor, st.checkpoint_cursor), (3, 0));
    assert!(srv.checkpoints.lock().unwrap().is_empty());

    // brig restarts while the sink is still down: the checkpoint waits.
    runner.shutdown().await;
    let cursors: Arc<dyn CursorStore> =
        Arc::new(brig_sinks::FileCursorStore::open(&cursor_file).unwrap());
    let runner = j.start(vec![datadog_config(&srv.url())], cursors, fast_opts());
    wait_for("still failing", || {
        status(&runner).consecutive_failures >= 1
    })
    .await;
    srv.set_mode(Mode::Up).await;
    wait_for("the checkpoint after recovery", || {
        status(&runner).checkpoint_cursor == cp
    })
    .await;
    assert_eq!(status(&runner).cursor, 5);
    assert_all_delivered(&srv.accepted_ids(), &want);
    assert_eq!(checkpoint_seqs(&srv.checkpoints.lock().unwrap()), vec![cp]);
    assert!(srv.violations.lock().unwrap().is_empty());
    runner.shutdown().await;

    // Acknowledged means stored: a third start sends nothing again.
    let n = srv.checkpoints.lock().unwrap().len();
    let reopened = brig_sinks::FileCursorStore::open(&cursor_file).unwrap();
    assert_eq!(
        reopened.get("dd").unwrap(),
        Some(brig_sinks::Cursor {
            seq: 5,
            checkpoint_seq: cp
        })
    );
    let runner = j.start(
        vec![datadog_config(&srv.url())],
        Arc::new(reopened),
        fast_opts(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(srv.checkpoints.lock().unwrap().len(), n);
    runner.shutdown().await;
}
