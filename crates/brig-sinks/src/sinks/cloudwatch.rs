//! CloudWatch Logs `PutLogEvents` (JSON 1.1 protocol), signed with SigV4.

use brig_core::Result;
use hyper::Method;
use serde_json::{json, Value};

use super::{
    classify_status, record_unix_nanos, BoxFut, Delivered, DeliveryError, DeliveryResult, FailKind,
    Sink,
};
use crate::config::{SecretRef, SinkConfig, SinkKind};
use crate::http::{parse_url, HttpClient, HttpResponse};
use crate::sigv4::{self, Credentials};
use crate::Record;

/// PutLogEvents limits: 10,000 events, 1,048,576 bytes (message bytes + 26
/// per event), 24 hours between the first and last event; 256 KiB per event.
const MAX_EVENTS: usize = 10_000;
const MAX_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD: usize = 26;
const MAX_EVENT_BYTES: usize = 262_144 - EVENT_OVERHEAD;
const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;

pub(crate) struct CloudWatchSink {
    client: HttpClient,
    creds: Credentials,
    region: String,
    log_group: String,
    log_stream: String,
    create_log_stream: bool,
}

impl CloudWatchSink {
    pub fn new(cfg: &SinkConfig) -> Result<Self> {
        let SinkKind::Cloudwatch {
            endpoint,
            region,
            log_group,
            log_stream,
            access_key_id_env,
            secret_access_key_env,
            session_token_env,
            create_log_stream,
        } = &cfg.kind
        else {
            unreachable!("CloudWatchSink built from another kind")
        };
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(cfg.err(
                "region",
                format!("`{region}` is not an AWS region (like us-east-1)"),
            ));
        }
        if log_group.is_empty() || log_group.len() > 512 {
            return Err(cfg.err("log_group", "must be 1-512 characters"));
        }
        if log_stream.is_empty() || log_stream.len() > 512 || log_stream.contains([':', '*']) {
            return Err(cfg.err("log_stream", "must be 1-512 characters without ':' or '*'"));
        }
        let endpoint = endpoint
            .clone()
            .unwrap_or_else(|| format!("https://logs.{region}.amazonaws.com"));
        let target = parse_url(cfg, "endpoint", &endpoint, "")?;
        let env = |key: &str, var: &str| SecretRef::Env(var.to_string()).read(cfg, key);
        let creds = Credentials {
            access_key_id: env("access_key_id_env", access_key_id_env)?
                .expose()
                .to_string(),
            secret_access_key: env("secret_access_key_env", secret_access_key_env)?
                .expose()
                .to_string(),
            session_token: match session_token_env {
                Some(v) => Some(env("session_token_env", v)?.expose().to_string()),
                None => None,
            },
        };
        Ok(CloudWatchSink {
            client: HttpClient::new(target, cfg.timeout),
            creds,
            region: region.clone(),
            log_group: log_group.clone(),
            log_stream: log_stream.clone(),
            create_log_stream: *create_log_stream,
        })
    }

    async fn call(
        &mut self,
        action: &str,
        body: Vec<u8>,
    ) -> std::result::Result<HttpResponse, DeliveryError> {
        let date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let target = format!("Logs_20140328.{action}");
        let host = self.client.target.host.clone();
        let path = self.client.target.path.clone();
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", &host),
            ("x-amz-date", &date),
            ("x-amz-target", &target),
        ];
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token", t));
        }
        let (p, q) = path.split_once('?').unwrap_or((&path, ""));
        let signed = sigv4::sign(
            "POST",
            p,
            q,
            &headers,
            &body,
            &self.creds,
            &self.region,
            "logs",
            &date,
        );
        // The client sets Host itself, from the same value that was signed.
        headers.retain(|(k, _)| *k != "host");
        headers.push(("authorization", &signed.authorization));
        self.client
            .send(Method::POST, &path, &headers, body.into())
            .await
            .map_err(DeliveryError::retry)
    }

    /// Splits the batch (in seq order) so each request fits the limits.
    fn plan(batch: &[(i64, String)]) -> std::result::Result<Vec<std::ops::Range<usize>>, usize> {
        let mut out = Vec::new();
        let (mut start, mut bytes, mut lo, mut hi) = (0, 0, i64::MAX, i64::MIN);
        for (i, (ts, msg)) in batch.iter().enumerate() {
            if msg.len() > MAX_EVENT_BYTES {
                return Err(i);
            }
            let cost = msg.len() + EVENT_OVERHEAD;
            let (nlo, nhi) = (lo.min(*ts), hi.max(*ts));
            if i > start
                && (i - start >= MAX_EVENTS || bytes + cost > MAX_BYTES || nhi - nlo >= MAX_SPAN_MS)
            {
                out.push(start..i);
                (start, bytes, lo, hi) = (i, 0, *ts, *ts);
            } else {
                (lo, hi) = (nlo, nhi);
            }
            bytes += cost;
        }
        if start < batch.len() {
            out.push(start..batch.len());
        }
        Ok(out)
    }

    async fn put(
        &mut self,
        items: &[(i64, String)],
        range: std::ops::Range<usize>,
    ) -> DeliveryResult {
        // Events must be in chronological order; keep each one's batch index.
        let mut order: Vec<usize> = range.collect();
        order.sort_by_key(|&i| items[i].0);
        let events: Vec<Value> = order
            .iter()
            .map(|&i| json!({"timestamp": items[i].0, "message": items[i].1}))
            .collect();
        let body = serde_json::to_vec(&json!({
            "logGroupName": self.log_group,
            "logStreamName": self.log_stream,
            "logEvents": events,
        }))
        .unwrap_or_default();
        let mut created = false;
        loop {
            let resp = self.call("PutLogEvents", body.clone()).await?;
            if resp.status == 200 {
                return Ok(rejections(&resp, &order));
            }
            let ty = error_type(&resp);
            match ty.as_str() {
                "DataAlreadyAcceptedException" => return Ok(Delivered::default()),
                "ResourceNotFoundException" if self.create_log_stream && !created => {
                    self.create_stream().await?;
                    created = true;
                }
                "ResourceNotFoundException" => {
                    let mut e = aws_error(&resp, &ty, FailKind::Retry);
                    e.message.push_str(&format!(
                        " (log group '{}' / stream '{}': create them, or set create_log_stream = true)",
                        self.log_group, self.log_stream
                    ));
                    return Err(e);
                }
                "InvalidParameterException" | "SerializationException" => {
                    return Err(aws_error(&resp, &ty, FailKind::Poison))
                }
                _ => {
                    let kind = if resp.status == 400 {
                        FailKind::Retry
                    } else {
                        classify_status(resp.status)
                    };
                    return Err(aws_error(&resp, &ty, kind));
                }
            }
        }
    }

    async fn create_stream(&mut self) -> std::result::Result<(), DeliveryError> {
        let body = serde_json::to_vec(&json!({
            "logGroupName": self.log_group,
            "logStreamName": self.log_stream,
        }))
        .unwrap_or_default();
        let resp = self.call("CreateLogStream", body).await?;
        let ty = error_type(&resp);
        if resp.status == 200 || ty == "ResourceAlreadyExistsException" {
            return Ok(());
        }
        let mut e = aws_error(&resp, &ty, FailKind::Retry);
        e.message = format!("CreateLogStream for '{}': {}", self.log_stream, e.message);
        Err(e)
    }
}

/// `__type` of an AWS JSON error, without the `namespace#` prefix.
fn error_type(resp: &HttpResponse) -> String {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let t = v["__type"].as_str().unwrap_or("");
    t.rsplit('#').next().unwrap_or("").to_string()
}

fn aws_error(resp: &HttpResponse, ty: &str, kind: FailKind) -> DeliveryError {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let msg = v["message"]
        .as_str()
        .or(v["Message"].as_str())
        .unwrap_or("");
    DeliveryError {
        acked: 0,
        kind,
        message: format!("CloudWatch Logs answered HTTP {} {ty}: {msg}", resp.status),
        retry_after: resp.retry_after,
    }
}

/// Maps `rejectedLogEventsInfo` (indices into the sorted request) back to batch indices.
fn rejections(resp: &HttpResponse, order: &[usize]) -> Delivered {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let info = &v["rejectedLogEventsInfo"];
    let mut rejected = Vec::new();
    let idx = |k: &str| info[k].as_u64().map(|n| (n as usize).min(order.len()));
    if let Some(end) = idx("tooOldLogEventEndIndex") {
        rejected.extend(order[..end].iter().map(|&i| {
            (
                i,
                "too old for CloudWatch Logs (older than 14 days or the group's retention)"
                    .to_string(),
            )
        }));
    }
    if let Some(end) = idx("expiredLogEventEndIndex") {
        rejected.extend(
            order[..end]
                .iter()
                .map(|&i| (i, "older than the log group's retention".to_string())),
        );
    }
    if let Some(start) = idx("tooNewLogEventStartIndex") {
        rejected.extend(
            order[start..]
                .iter()
                .map(|&i| (i, "more than 2 hours in the future".to_string())),
        );
    }
    rejected.sort_by_key(|r| r.0);
    rejected.dedup_by_key(|r| r.0);
    Delivered {
        rejected,
        warning: None,
    }
}

impl Sink for CloudWatchSink {
    fn max_batch(&self) -> usize {
        MAX_EVENTS
    }
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult> {
        Box::pin(async move {
            let items: Vec<(i64, String)> = batch
                .iter()
                .map(|r| ((record_unix_nanos(r) / 1_000_000) as i64, r.json()))
                .collect();
            let (ranges, oversize) = match Self::plan(&items) {
                Ok(r) => (r, None),
                Err(i) => (Self::plan(&items[..i]).unwrap_or_default(), Some(i)),
            };
            let mut delivered = Delivered::default();
            for r in ranges {
                let start = r.start;
                let d = self.put(&items, r).await.map_err(|e| e.after(start))?;
                delivered.rejected.extend(d.rejected);
            }
            if let Some(i) = oversize {
                return Err(DeliveryError::poison(format!(
                    "event is {} bytes, over CloudWatch's {MAX_EVENT_BYTES}-byte limit per event",
                    items[i].1.len()
                ))
                .after(i));
            }
            Ok(delivered)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_on_the_24_hour_span() {
        let h = 3600 * 1000;
        let items: Vec<(i64, String)> = [0, h, 25 * h, 26 * h, 2 * h]
            .iter()
            .map(|t| (*t, "m".to_string()))
            .collect();
        let plan = CloudWatchSink::plan(&items).unwrap();
        assert_eq!(plan, vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn plan_flags_an_oversize_event() {
        let items = vec![(0, "a".to_string()), (0, "x".repeat(MAX_EVENT_BYTES + 1))];
        assert_eq!(CloudWatchSink::plan(&items), Err(1));
    }
}
