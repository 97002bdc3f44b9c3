//! Sink configuration: one `[[journal.sinks]]` table in brig.toml per sink.
//!
//! Unknown keys are rejected, naming the sink and the key. Secrets (tokens,
//! API keys, AWS keys) are never inline: the config names a file or an
//! environment variable, and the value read from it never appears in `Debug`
//! output, errors or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use brig_core::{Error, Result};
use serde::Deserialize;

/// Keys every sink takes, whatever its type.
pub const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "batch_size",
    "flush_interval_ms",
    "retry_initial_ms",
    "retry_max_ms",
    "poison_attempts",
    "timeout_ms",
];

/// One configured sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct SinkConfig {
    /// Unique; the cursor is stored under this name, so renaming a sink
    /// re-delivers the journal to it from the start.
    pub name: String,
    pub kind: SinkKind,
    /// Most events per delivery (also capped by the sink's own limits).
    pub batch_size: usize,
    /// How long a partial batch may wait for more events before it is sent.
    pub flush_interval: Duration,
    pub retry: RetryConfig,
    /// Attempts at an event the sink rejects as malformed before it is
    /// written to the dead-letter file (never dropped silently).
    pub poison_attempts: u32,
    /// Per request (HTTP) or per connect/write (syslog TCP).
    pub timeout: Duration,
}

/// Exponential backoff between failed deliveries, capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl RetryConfig {
    /// Delay before retry number `attempt` (1-based): initial * 2^(attempt-1), capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    Udp,
    Tcp,
}

/// What a sink is and where it sends. `type = "..."` in brig.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkKind {
    /// JSON Lines, appended and fsynced per batch.
    File { path: PathBuf },
    /// RFC 5424 over UDP (RFC 5426) or TCP (RFC 6587 octet counting).
    Syslog {
        transport: SyslogTransport,
        /// `host:port`.
        addr: String,
        #[serde(default = "default_app_name")]
        app_name: String,
        /// A name (`audit`, `authpriv`, `local0`..`local7`, ...) or 0..=23.
        #[serde(default = "default_facility")]
        facility: String,
        /// UDP only: datagrams are cut to this many bytes, with a marker.
        #[serde(default = "default_max_datagram")]
        max_datagram: usize,
    },
    /// Splunk HTTP Event Collector.
    SplunkHec {
        /// Base URL (`http://splunk:8088`) or the full `/services/collector/event` URL.
        url: String,
        #[serde(default)]
        token_file: Option<PathBuf>,
        #[serde(default)]
        token_env: Option<String>,
        #[serde(default)]
        index: Option<String>,
        #[serde(default = "default_sourcetype")]
        sourcetype: String,
        #[serde(default = "default_source")]
        source: String,
    },
    /// Datadog logs intake v2.
    Datadog {
        /// Base URL or the full `/api/v2/logs` URL.
        url: String,
        #[serde(default)]
        api_key_file: Option<PathBuf>,
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default = "default_source")]
        service: String,
        #[serde(default = "default_source")]
        ddsource: String,
        /// Extra `key:value` tags added to every entry.
        #[serde(default)]
        tags: Vec<String>,
    },
    /// CloudWatch Logs PutLogEvents, signed with SigV4.
    Cloudwatch {
        /// Defaults to `https://logs.<region>.amazonaws.com` (which needs TLS).
        #[serde(default)]
        endpoint: Option<String>,
        region: String,
        log_group: String,
        log_stream: String,
        access_key_id_env: String,
        secret_access_key_env: String,
        #[serde(default)]
        session_token_env: Option<String>,
        /// Create the log stream when PutLogEvents says it does not exist.
        #[serde(default)]
        create_log_stream: bool,
    },
    /// OTLP/HTTP logs, JSON encoding.
    Otlp {
        /// Base URL (`http://collector:4318`) or the full `/v1/logs` URL.
        url: String,
        /// Plain headers, sent as is (not secret: they may be shown).
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Secret headers: header name to a file holding its value.
        #[serde(default)]
        header_files: BTreeMap<String, PathBuf>,
        #[serde(default = "default_source")]
        service_name: String,
    },
}

fn default_app_name() -> String {
    "brig".into()
}
fn default_facility() -> String {
    "audit".into()
}
fn default_max_datagram() -> usize {
    8192
}
fn default_sourcetype() -> String {
    "brig:event".into()
}
fn default_source() -> String {
    "brig".into()
}

impl SinkKind {
    /// The `type` as written in brig.toml.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File { .. } => "file",
            SinkKind::Syslog { .. } => "syslog",
            SinkKind::SplunkHec { .. } => "splunk_hec",
            SinkKind::Datadog { .. } => "datadog",
            SinkKind::Cloudwatch { .. } => "cloudwatch",
            SinkKind::Otlp { .. } => "otlp",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    #[serde(default = "d_batch")]
    batch_size: usize,
    #[serde(default = "d_flush")]
    flush_interval_ms: u64,
    #[serde(default = "d_retry_initial")]
    retry_initial_ms: u64,
    #[serde(default = "d_retry_max")]
    retry_max_ms: u64,
    #[serde(default = "d_poison")]
    poison_attempts: u32,
    #[serde(default = "d_timeout")]
    timeout_ms: u64,
}
fn d_batch() -> usize {
    500
}
fn d_flush() -> u64 {
    1000
}
fn d_retry_initial() -> u64 {
    500
}
fn d_retry_max() -> u64 {
    60_000
}
fn d_poison() -> u32 {
    5
}
fn d_timeout() -> u64 {
    10_000
}

impl TryFrom<serde_json::Value> for SinkConfig {
    type Error = String;

    fn try_from(v: serde_json::Value) -> std::result::Result<Self, String> {
        let serde_json::Value::Object(map) = v else {
            return Err("a journal sink must be a table with at least `name` and `type`".into());
        };
        let name = match map.get("name") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err("journal sink key `name` must be a string".into()),
            None => return Err("journal sink is missing the key `name`".into()),
        };
        let at = |e: String| format!("sink '{name}': {e}");
        validate_name(&name).map_err(at)?;
        if !map.contains_key("type") {
            return Err(at(
                "missing key `type` (one of file, syslog, splunk_hec, datadog, cloudwatch, otlp)"
                    .into(),
            ));
        }
        let (mut common, mut specific) = (serde_json::Map::new(), serde_json::Map::new());
        for (k, v) in map {
            if k == "name" {
                continue;
            }
            if COMMON_KEYS.contains(&k.as_str()) && k != "type" {
                common.insert(k, v);
            } else {
                specific.insert(k, v);
            }
        }
        let c: Common = serde_json::from_value(common.into()).map_err(|e| at(e.to_string()))?;
        let kind: SinkKind = serde_json::from_value(specific.into()).map_err(|e| {
            at(format!(
                "{e} (keys every sink takes: {})",
                COMMON_KEYS.join(", ")
            ))
        })?;
        if c.batch_size == 0 {
            return Err(at("key `batch_size` must be at least 1".into()));
        }
        if c.retry_initial_ms == 0 || c.retry_max_ms < c.retry_initial_ms {
            return Err(at(
                "keys `retry_initial_ms`/`retry_max_ms`: need 0 < retry_initial_ms <= retry_max_ms"
                    .into(),
            ));
        }
        if c.poison_attempts == 0 || c.timeout_ms == 0 {
            return Err(at(
                "keys `poison_attempts` and `timeout_ms` must be at least 1".into(),
            ));
        }
        Ok(SinkConfig {
            name,
            kind,
            batch_size: c.batch_size,
            flush_interval: Duration::from_millis(c.flush_interval_ms),
            retry: RetryConfig {
                initial: Duration::from_millis(c.retry_initial_ms),
                max: Duration::from_millis(c.retry_max_ms),
            },
            poison_attempts: c.poison_attempts,
            timeout: Duration::from_millis(c.timeout_ms),
        })
    }
}

fn validate_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("key `name` must be 1-64 characters of [A-Za-z0-9_-] (it names the cursor and the dead-letter file)".into())
    }
}

impl SinkConfig {
    /// A config with the defaults for everything but name and kind.
    pub fn new(name: impl Into<String>, kind: SinkKind) -> Self {
        SinkConfig {
            name: name.into(),
            kind,
            batch_size: d_batch(),
            flush_interval: Duration::from_millis(d_flush()),
            retry: RetryConfig {
                initial: Duration::from_millis(d_retry_initial()),
                max: Duration::from_millis(d_retry_max()),
            },
            poison_attempts: d_poison(),
            timeout: Duration::from_millis(d_timeout()),
        }
    }

    /// Checks everything that can be checked before the first delivery:
    /// URLs, addresses, and that every secret can be read. Errors name the
    /// sink and the key. The sink need not be reachable (it may be down;
    /// events wait in the journal).
    pub fn validate(&self) -> Result<()> {
        crate::sinks::build(self, &crate::runner::RunnerOptions::default()).map(|_| ())
    }

    pub(crate) fn err(&self, key: &str, what: impl fmt::Display) -> Error {
        Error::invalid(format!(
            "journal sink '{}' ({}): key `{key}`: {what}",
            self.name,
            self.kind.type_name()
        ))
    }
}

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

impl SecretRef {
    /// Exactly one of `file_key`/`env_key` must be set.
    pub(crate) fn pick(
        cfg: &SinkConfig,
        file_key: &str,
        file: &Option<PathBuf>,
        env_key: &str,
        env: &Option<String>,
    ) -> Result<SecretRef> {
        match (file, env) {
            (Some(f), None) => Ok(SecretRef::File(f.clone())),
            (None, Some(e)) => Ok(SecretRef::Env(e.clone())),
            (None, None) => Err(cfg
                .err(file_key, format!("missing: set `{file_key}` (a file holding the secret) or `{env_key}` (an environment variable name)"))),
            (Some(_), Some(_)) => Err(cfg.err(
                file_key,
                format!("set only one of `{file_key}` and `{env_key}`"),
            )),
        }
    }

    /// Reads the secret. The error names the file or variable, never the value.
    pub(crate) fn read(&self, cfg: &SinkConfig, key: &str) -> Result<Secret> {
        let value = match self {
            SecretRef::File(p) => std::fs::read_to_string(p)
                .map_err(|e| {
                    cfg.err(key, format!("cannot read secret file {}: {e}", p.display()))
                        .hint(
                            "create the file (mode 0600) holding only the secret, or fix the path",
                        )
                })?
                .trim()
                .to_string(),
            SecretRef::Env(v) => std::env::var(v).map_err(|_| {
                cfg.err(key, format!("environment variable {v} is not set"))
                    .hint("export it in brig serve's environment")
            })?,
        };
        if value.is_empty() {
            return Err(cfg.err(key, "the secret is empty"));
        }
        if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(cfg.err(key, "the secret contains control characters"));
        }
        Ok(Secret(value))
    }
}

/// A secret value: `Debug` and `Display` print a placeholder.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(4), Duration::from_millis(800));
        assert_eq!(r.delay(5), Duration::from_millis(1000));
        assert_eq!(r.delay(500), Duration::from_millis(1000));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }
}
