//! Datadog logs intake v2: `POST /api/v2/logs`, `DD-API-KEY`, a JSON array.

use brig_core::Result;

use super::{
    classify_status, local_hostname, post_chunked, status_error, BoxFut, Delivered, DeliveryError,
    DeliveryResult, FailKind, Sink, CHECKPOINT_ACTION,
};
use crate::config::{SecretRef, SinkConfig, SinkKind};
use crate::http::{parse_url, HttpClient, HttpResponse};
use crate::runner::RunnerOptions;
use crate::{Record, CHECKPOINT_RECORD};

/// Intake limits: 1000 entries and 5 MB (uncompressed) per request.
const MAX_ENTRIES: usize = 1000;
const MAX_BYTES: usize = 5 * 1024 * 1024;

pub(crate) struct DatadogSink {
    client: HttpClient,
    api_key: String,
    hostname: String,
    service: String,
    ddsource: String,
    tags: Vec<String>,
}

impl DatadogSink {
    pub fn new(cfg: &SinkConfig, opts: &RunnerOptions) -> Result<Self> {
        let SinkKind::Datadog {
            url,
            api_key_file,
            api_key_env,
            service,
            ddsource,
            tags,
        } = &cfg.kind
        else {
            unreachable!("DatadogSink built from another kind")
        };
        let target = parse_url(cfg, "url", url, "/api/v2/logs")?;
        let key = SecretRef::pick(
            cfg,
            "api_key_file",
            api_key_file,
            "api_key_env",
            api_key_env,
        )?
        .read(
            cfg,
            if api_key_file.is_some() {
                "api_key_file"
            } else {
                "api_key_env"
            },
        )?;
        Ok(DatadogSink {
            client: HttpClient::new(target, cfg.timeout),
            api_key: key.expose().to_string(),
            hostname: opts.hostname.clone().unwrap_or_else(local_hostname),
            service: service.clone(),
            ddsource: ddsource.clone(),
            tags: tags.clone(),
        })
    }

    fn encode(&self, r: &Record) -> Vec<u8> {
        let mut tags = match r {
            Record::Event(e) => {
                let outcome = serde_json::to_value(e.outcome).unwrap_or_default();
                let mut tags = vec![
                    format!("action:{}", e.action),
                    format!("outcome:{}", outcome.as_str().unwrap_or("")),
                ];
                if let Some(s) = &e.session {
                    tags.push(format!("session:{s}"));
                }
                tags
            }
            Record::Checkpoint(_) => vec![
                format!("record:{CHECKPOINT_RECORD}"),
                format!("action:{CHECKPOINT_ACTION}"),
            ],
        };
        tags.extend(self.tags.iter().cloned());
        serde_json::to_vec(&serde_json::json!({
            "ddsource": self.ddsource,
            "ddtags": tags.join(","),
            "hostname": self.hostname,
            "service": self.service,
            "message": r.json(),
        }))
        .unwrap_or_default()
    }
}

fn check(resp: &HttpResponse) -> std::result::Result<Delivered, DeliveryError> {
    if resp.status == 202 || resp.status == 200 {
        return Ok(Delivered::default());
    }
    let kind = if resp.status == 413 {
        FailKind::Poison
    } else {
        classify_status(resp.status)
    };
    let mut e = status_error("Datadog", resp, kind);
    if resp.status == 403 || resp.status == 401 {
        e.message
            .push_str(" (check the API key in api_key_file/api_key_env)");
    }
    Err(e)
}

impl Sink for DatadogSink {
    fn max_batch(&self) -> usize {
        MAX_ENTRIES
    }
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult> {
        Box::pin(async move {
            let items: Vec<Vec<u8>> = batch.iter().map(|e| self.encode(e)).collect();
            let headers = [
                ("dd-api-key", self.api_key.as_str()),
                ("content-type", "application/json"),
            ];
            post_chunked(
                &mut self.client,
                &headers,
                &items,
                MAX_ENTRIES,
                MAX_BYTES - 2,
                1,
                |chunk| {
                    let mut b = b"[".to_vec();
                    b.extend_from_slice(&chunk.join(&b','));
                    b.push(b']');
                    b
                },
                check,
            )
            .await
        })
    }
}
