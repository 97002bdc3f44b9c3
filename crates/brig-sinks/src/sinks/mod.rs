//! The sinks: each turns a batch of records (events, and the signed
//! checkpoints after the events they sign) into its wire format and reports
//! what the far end acknowledged.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use brig_core::event::{Event, Outcome};
use brig_core::Result;

use crate::Record;

use crate::config::{SinkConfig, SinkKind};
use crate::runner::RunnerOptions;

mod cloudwatch;
mod datadog;
mod file;
mod otlp;
mod splunk;
mod syslog;

pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A successful delivery. `rejected` lists events the far end accepted the
/// request for but said it dropped (index into the batch, reason): the runner
/// dead-letters them so they are not lost silently.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    pub rejected: Vec<(usize, String)>,
    /// Accepted, but the far end reported something worth showing in status
    /// (e.g. an OTLP partial success that does not say which records).
    pub warning: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// The sink is down, busy or misconfigured: retry the same events later.
    Retry,
    /// The sink rejected the data itself: retrying unchanged will not help.
    Poison,
}

#[derive(Debug)]
pub(crate) struct DeliveryError {
    /// The first `acked` events of the batch were acknowledged before the failure.
    pub acked: usize,
    pub kind: FailKind,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn retry(message: impl Into<String>) -> Self {
        DeliveryError {
            acked: 0,
            kind: FailKind::Retry,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn poison(message: impl Into<String>) -> Self {
        DeliveryError {
            kind: FailKind::Poison,
            ..Self::retry(message)
        }
    }
    pub fn after(mut self, acked: usize) -> Self {
        self.acked += acked;
        self
    }
}

pub(crate) type DeliveryResult = std::result::Result<Delivered, DeliveryError>;

pub(crate) trait Sink: Send {
    /// The most events the sink takes in one `deliver` call.
    fn max_batch(&self) -> usize {
        usize::MAX
    }
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult>;
}

/// Builds a sink from its config, reading its secrets. Does no network I/O.
pub(crate) fn build(cfg: &SinkConfig, opts: &RunnerOptions) -> Result<Box<dyn Sink>> {
    Ok(match &cfg.kind {
        SinkKind::File { .. } => Box::new(file::FileSink::new(cfg)?),
        SinkKind::Syslog { .. } => Box::new(syslog::SyslogSink::new(cfg, opts)?),
        SinkKind::SplunkHec { .. } => Box::new(splunk::SplunkSink::new(cfg, opts)?),
        SinkKind::Datadog { .. } => Box::new(datadog::DatadogSink::new(cfg, opts)?),
        SinkKind::Cloudwatch { .. } => Box::new(cloudwatch::CloudWatchSink::new(cfg)?),
        SinkKind::Otlp { .. } => Box::new(otlp::OtlpSink::new(cfg, opts)?),
    })
}

/// Splits items with the given encoded sizes into consecutive chunks of at
/// most `max_count` items and `max_bytes` bytes (each item costing
/// `size + overhead`). `Err(i)` when item `i` alone is over the byte limit.
pub(crate) fn chunks(
    sizes: &[usize],
    max_count: usize,
    max_bytes: usize,
    overhead: usize,
) -> std::result::Result<Vec<Range<usize>>, usize> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, s) in sizes.iter().enumerate() {
        let cost = s + overhead;
        if cost > max_bytes {
            return Err(i);
        }
        if i > start && (i - start >= max_count || bytes + cost > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    Ok(out)
}

/// The event as one line of JSON (what every sink carries as the message).
pub(crate) fn event_json(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn unix_nanos(t: &str) -> i128 {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .unix_timestamp_nanos()
}

/// The event time as nanoseconds since the epoch; "now" if it does not parse.
pub(crate) fn event_unix_nanos(e: &Event) -> i128 {
    unix_nanos(&e.time)
}

/// A record's time (the event's, or when the checkpoint was signed).
pub(crate) fn record_unix_nanos(r: &Record) -> i128 {
    match r {
        Record::Event(e) => unix_nanos(&e.time),
        Record::Checkpoint(c) => unix_nanos(&c.time),
    }
}

/// What sinks name a checkpoint record by: syslog MSGID, OTLP/Datadog action.
pub(crate) const CHECKPOINT_ACTION: &str = "journal.checkpoint";

/// Syslog severity (RFC 5424) and OTLP severity for an outcome.
pub(crate) fn severity(o: Outcome) -> (u8, &'static str, u8) {
    match o {
        Outcome::Success | Outcome::Info => (6, "INFO", 9),
        Outcome::Denied => (4, "WARN", 13),
        Outcome::Failure => (3, "ERROR", 17),
    }
}

/// Classifies an HTTP status for the sinks whose protocol follows the usual
/// conventions: 408/429/5xx and auth failures are retried (the sink or our
/// config is at fault, not the data); other 4xx mean the data was refused.
pub(crate) fn classify_status(status: u16) -> FailKind {
    match status {
        408 | 429 | 401 | 403 | 404 => FailKind::Retry,
        400..=499 => FailKind::Poison,
        _ => FailKind::Retry,
    }
}

pub(crate) fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Posts `items` in as many requests as the limits need, each body built by
/// `wrap`, each response judged by `check`. Reports how many items were
/// acknowledged before a failure; an item over the byte limit by itself is
/// poison (it can never be sent as is).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn post_chunked(
    client: &mut crate::http::HttpClient,
    headers: &[(&str, &str)],
    items: &[Vec<u8>],
    max_count: usize,
    max_bytes: usize,
    overhead: usize,
    wrap: impl Fn(&[Vec<u8>]) -> Vec<u8>,
    check: impl Fn(&crate::http::HttpResponse) -> std::result::Result<Delivered, DeliveryError>,
) -> DeliveryResult {
    let sizes: Vec<usize> = items.iter().map(Vec::len).collect();
    let (ranges, oversize) = match chunks(&sizes, max_count, max_bytes, overhead) {
        Ok(r) => (r, None),
        Err(i) => (
            chunks(&sizes[..i], max_count, max_bytes, overhead).unwrap_or_default(),
            Some(i),
        ),
    };
    let path = client.target.path.clone();
    let mut delivered = Delivered::default();
    for r in ranges {
        let body = wrap(&items[r.clone()]);
        let resp = client
            .send(hyper::Method::POST, &path, headers, body.into())
            .await
            .map_err(|m| DeliveryError::retry(m).after(r.start))?;
        let d = check(&resp).map_err(|e| e.after(r.start))?;
        delivered
            .rejected
            .extend(d.rejected.into_iter().map(|(i, why)| (i + r.start, why)));
        if d.warning.is_some() {
            delivered.warning = d.warning;
        }
    }
    if let Some(i) = oversize {
        return Err(DeliveryError::poison(format!(
            "event is {} bytes, over the sink's request limit of {max_bytes} bytes",
            sizes[i]
        ))
        .after(i));
    }
    Ok(delivered)
}

/// The error for an HTTP status the protocol does not treat as success.
pub(crate) fn status_error(
    what: &str,
    resp: &crate::http::HttpResponse,
    kind: FailKind,
) -> DeliveryError {
    DeliveryError {
        acked: 0,
        kind,
        message: format!("{what} answered HTTP {}: {}", resp.status, resp.snippet()),
        retry_after: resp.retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_count_and_bytes() {
        assert_eq!(
            chunks(&[1, 1, 1, 1, 1], 2, 100, 0).unwrap(),
            vec![0..2, 2..4, 4..5]
        );
        assert_eq!(chunks(&[40, 40, 40], 10, 100, 5).unwrap(), vec![0..2, 2..3]);
        assert_eq!(chunks(&[10, 200, 10], 10, 100, 0), Err(1));
        assert!(chunks(&[], 10, 100, 0).unwrap().is_empty());
    }
}
