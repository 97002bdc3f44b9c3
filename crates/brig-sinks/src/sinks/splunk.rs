//! Splunk HTTP Event Collector: `POST /services/collector/event`,
//! `Authorization: Splunk <token>`, a body of concatenated event objects.

use brig_core::Result;

use super::{
    local_hostname, post_chunked, record_unix_nanos, status_error, BoxFut, Delivered,
    DeliveryError, DeliveryResult, FailKind, Sink,
};
use crate::config::{Secret, SecretRef, SinkConfig, SinkKind};
use crate::http::{parse_url, HttpClient, HttpResponse};
use crate::runner::RunnerOptions;
use crate::Record;

/// The sourcetype of signed checkpoints (events use the configured one).
pub(crate) const CHECKPOINT_SOURCETYPE: &str = "brig:checkpoint";

/// Splunk's classic `max_content_length` default; newer releases allow more.
const MAX_BYTES: usize = 1_000_000;

pub(crate) struct SplunkSink {
    client: HttpClient,
    auth: String,
    host: String,
    source: String,
    sourcetype: String,
    index: Option<String>,
}

impl SplunkSink {
    pub fn new(cfg: &SinkConfig, opts: &RunnerOptions) -> Result<Self> {
        let SinkKind::SplunkHec {
            url,
            token_file,
            token_env,
            index,
            sourcetype,
            source,
        } = &cfg.kind
        else {
            unreachable!("SplunkSink built from another kind")
        };
        let target = parse_url(cfg, "url", url, "/services/collector/event")?;
        let token: Secret = SecretRef::pick(cfg, "token_file", token_file, "token_env", token_env)?
            .read(
                cfg,
                if token_file.is_some() {
                    "token_file"
                } else {
                    "token_env"
                },
            )?;
        Ok(SplunkSink {
            client: HttpClient::new(target, cfg.timeout),
            auth: format!("Splunk {}", token.expose()),
            host: opts.hostname.clone().unwrap_or_else(local_hostname),
            source: source.clone(),
            sourcetype: sourcetype.clone(),
            index: index.clone(),
        })
    }

    fn encode(&self, r: &Record) -> Vec<u8> {
        let nanos = record_unix_nanos(r);
        let sourcetype = match r {
            Record::Event(_) => self.sourcetype.as_str(),
            Record::Checkpoint(_) => CHECKPOINT_SOURCETYPE,
        };
        let (secs, frac) = (
            nanos.div_euclid(1_000_000_000),
            nanos.rem_euclid(1_000_000_000),
        );
        let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
        let mut out = format!(
            "{{\"time\":{secs}.{:06},\"host\":{},\"source\":{},\"sourcetype\":{}",
            frac / 1000,
            s(&self.host),
            s(&self.source),
            s(sourcetype)
        );
        if let Some(i) = &self.index {
            out.push_str(&format!(",\"index\":{}", s(i)));
        }
        out.push_str(",\"event\":");
        out.push_str(&r.json());
        out.push('}');
        out.into_bytes()
    }
}

/// HEC answers `{"text": "...", "code": N}`.
fn check(resp: &HttpResponse) -> std::result::Result<Delivered, DeliveryError> {
    let code = serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_i64()));
    if resp.status == 200 && code == Some(0) {
        return Ok(Delivered::default());
    }
    let kind = match (resp.status, code) {
        (200, _) => FailKind::Retry,
        // 5 no data, 6 invalid data format, 12 event field required,
        // 13 event field blank: the events themselves are at fault.
        (400, Some(5 | 6 | 12 | 13)) | (413, _) => FailKind::Poison,
        // 7 incorrect index, 10/11 channel issues, 2/3/4 token issues: ours to fix.
        _ => FailKind::Retry,
    };
    let mut e = status_error("Splunk HEC", resp, kind);
    if resp.status == 401 || resp.status == 403 {
        e.message
            .push_str(" (check the HEC token in token_file/token_env)");
    }
    Err(e)
}

impl Sink for SplunkSink {
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult> {
        Box::pin(async move {
            let items: Vec<Vec<u8>> = batch.iter().map(|e| self.encode(e)).collect();
            let headers = [
                ("authorization", self.auth.as_str()),
                ("content-type", "application/json"),
            ];
            post_chunked(
                &mut self.client,
                &headers,
                &items,
                usize::MAX,
                MAX_BYTES,
                1,
                |chunk| chunk.join(&b'\n'),
                check,
            )
            .await
        })
    }
}
