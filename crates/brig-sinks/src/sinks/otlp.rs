//! OTLP/HTTP logs, JSON encoding: `POST /v1/logs` with an
//! ExportLogsServiceRequest (resourceLogs -> scopeLogs -> logRecords).

use brig_core::event::Event;
use brig_core::Result;
use serde_json::{json, Value};

use super::{
    classify_status, event_json, event_unix_nanos, local_hostname, post_chunked, severity,
    status_error, unix_nanos, BoxFut, Delivered, DeliveryError, DeliveryResult, Sink,
    CHECKPOINT_ACTION,
};
use crate::config::{SecretRef, SinkConfig, SinkKind};
use crate::http::{parse_url, HttpClient, HttpResponse};
use crate::runner::RunnerOptions;
use crate::{Record, SignedCheckpoint, CHECKPOINT_RECORD};

/// Collectors commonly cap request bodies; stay well under the usual limits.
const MAX_BYTES: usize = 4 * 1024 * 1024;

pub(crate) struct OtlpSink {
    client: HttpClient,
    /// Plain and secret headers together; values never leave this struct.
    headers: Vec<(String, String)>,
    resource: Value,
}

fn attr(key: &str, v: &str) -> Value {
    json!({"key": key, "value": {"stringValue": v}})
}

impl OtlpSink {
    pub fn new(cfg: &SinkConfig, opts: &RunnerOptions) -> Result<Self> {
        let SinkKind::Otlp {
            url,
            headers,
            header_files,
            service_name,
        } = &cfg.kind
        else {
            unreachable!("OtlpSink built from another kind")
        };
        let target = parse_url(cfg, "url", url, "/v1/logs")?;
        let mut all = Vec::new();
        for (k, v) in headers {
            check_header(cfg, "headers", k)?;
            all.push((k.to_ascii_lowercase(), v.clone()));
        }
        for (k, path) in header_files {
            check_header(cfg, "header_files", k)?;
            let v = SecretRef::File(path.clone()).read(cfg, "header_files")?;
            all.push((k.to_ascii_lowercase(), v.expose().to_string()));
        }
        let host = opts.hostname.clone().unwrap_or_else(local_hostname);
        Ok(OtlpSink {
            client: HttpClient::new(target, cfg.timeout),
            headers: all,
            resource: json!({"attributes": [attr("service.name", service_name), attr("host.name", &host)]}),
        })
    }

    fn record(e: &Event) -> Value {
        let (_, text, number) = severity(e.outcome);
        let mut attrs = vec![
            attr("event.id", &e.id),
            attr("brig.action", &e.action),
            json!({"key": "brig.seq", "value": {"intValue": e.seq.to_string()}}),
        ];
        let opt = [
            ("brig.session", &e.session),
            ("brig.human", &e.human),
            ("brig.agent", &e.agent),
            ("brig.task", &e.task),
            ("brig.repo", &e.repo),
            ("brig.branch", &e.branch),
            ("brig.rule", &e.rule),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                attrs.push(attr(k, v));
            }
        }
        if let Some(o) = serde_json::to_value(e.outcome)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
        {
            attrs.push(attr("brig.outcome", &o));
        }
        // int64 fields are decimal strings in OTLP's JSON mapping.
        json!({
            "timeUnixNano": event_unix_nanos(e).to_string(),
            "severityNumber": number,
            "severityText": text,
            "body": {"stringValue": event_json(e)},
            "attributes": attrs,
        })
    }
}

impl OtlpSink {
    /// A signed checkpoint: INFO, body the checkpoint record JSON,
    /// attributes `brig.record` = `checkpoint`, `brig.action`
    /// = `journal.checkpoint`, `brig.seq`, `brig.key_id`.
    fn checkpoint_record(c: &SignedCheckpoint) -> Value {
        let (_, text, number) = severity(brig_core::event::Outcome::Info);
        json!({
            "timeUnixNano": unix_nanos(&c.time).to_string(),
            "severityNumber": number,
            "severityText": text,
            "body": {"stringValue": c.record_json()},
            "attributes": [
                attr("brig.record", CHECKPOINT_RECORD),
                attr("brig.action", CHECKPOINT_ACTION),
                json!({"key": "brig.seq", "value": {"intValue": c.seq.to_string()}}),
                attr("brig.key_id", &c.key_id),
            ],
        })
    }
}

fn check_header(cfg: &SinkConfig, key: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(cfg.err(key, format!("`{name}` is not a valid header name")));
    }
    Ok(())
}

fn check(resp: &HttpResponse) -> std::result::Result<Delivered, DeliveryError> {
    if resp.status == 200 {
        // A partial success names no records, and the spec says not to retry:
        // surface it in status rather than dropping it unseen.
        let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        let ps = &v["partialSuccess"];
        let rejected = match &ps["rejectedLogRecords"] {
            Value::String(s) => s.parse::<i64>().unwrap_or(0),
            Value::Number(n) => n.as_i64().unwrap_or(0),
            _ => 0,
        };
        let warning = (rejected > 0).then(|| {
            format!(
                "collector accepted the batch but rejected {rejected} log records: {}",
                ps["errorMessage"].as_str().unwrap_or("")
            )
        });
        return Ok(Delivered {
            rejected: Vec::new(),
            warning,
        });
    }
    Err(status_error(
        "OTLP collector",
        resp,
        classify_status(resp.status),
    ))
}

impl Sink for OtlpSink {
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult> {
        Box::pin(async move {
            let items: Vec<Vec<u8>> = batch
                .iter()
                .map(|r| {
                    let v = match r {
                        Record::Event(e) => Self::record(e),
                        Record::Checkpoint(c) => Self::checkpoint_record(c),
                    };
                    serde_json::to_vec(&v).unwrap_or_default()
                })
                .collect();
            let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
            headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let resource = serde_json::to_vec(&self.resource).unwrap_or_default();
            let scope = format!(
                "{{\"name\":\"brig\",\"version\":\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            );
            post_chunked(
                &mut self.client,
                &headers,
                &items,
                usize::MAX,
                MAX_BYTES,
                1,
                |chunk| {
                    let mut b = b"{\"resourceLogs\":[{\"resource\":".to_vec();
                    b.extend_from_slice(&resource);
                    b.extend_from_slice(b",\"scopeLogs\":[{\"scope\":");
                    b.extend_from_slice(scope.as_bytes());
                    b.extend_from_slice(b",\"logRecords\":[");
                    b.extend_from_slice(&chunk.join(&b','));
                    b.extend_from_slice(b"]}]}]}");
                    b
                },
                check,
            )
            .await
        })
    }
}
