//! `[models]` in brig.toml (docs/MODELS.md): upstreams, routes, prices,
//! budgets and PII rules. [`GatewayConfig`] is what serde reads;
//! [`GatewayConfig::validate`] checks it and [`Compiled`] is what the
//! gateway runs on (every name resolved, every size and duration parsed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use brig_core::units::{parse_duration, parse_size};
use serde::{Deserialize, Serialize};

use crate::pii::PiiRules;

/// The reserved host the sandbox reaches the gateway at.
pub const DEFAULT_HOST: &str = "model.brig";
const DEFAULT_MAX_BODY: u64 = 8 << 20;
const DEFAULT_CAPTURE_MAX: u64 = 64 << 10;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BACKOFF: Duration = Duration::from_millis(250);
const DEFAULT_RETRIES: u32 = 2;

/// A configuration error: the key it is about and what to do.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("[models] {key}: {message}")]
pub struct ConfigError {
    /// The dotted key (`models.upstreams.openai.base_url`).
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// A size: `"8M"` or a number of bytes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self, key: &str) -> Result<u64, ConfigError> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(s) => parse_size(s).map_err(|e| err(key, e.to_string())),
        }
    }
}

/// A duration: `"30s"`, `"500ms"` or a number of seconds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum DurationValue {
    Secs(u64),
    Text(String),
}

impl DurationValue {
    fn get(&self, key: &str) -> Result<Duration, ConfigError> {
        match self {
            DurationValue::Secs(s) => Ok(Duration::from_secs(*s)),
            DurationValue::Text(s) => parse_duration(s).map_err(|e| err(key, e.to_string())),
        }
    }
}

/// `[models]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The reserved host (default `model.brig`).
    #[serde(default)]
    pub host: Option<String>,
    /// Request body cap (default 8M): larger is a provider-shaped 413.
    #[serde(default)]
    pub max_body: Option<SizeValue>,
    /// A captured request or response larger than this (default 64K) is
    /// stored as sha256 + size + excerpt.
    #[serde(default)]
    pub capture_max: Option<SizeValue>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    /// USD per million tokens, keyed by upstream model name
    /// (`"gpt-4o-mini"`), `"upstream/model"` (wins), or `"*"` (default).
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    #[serde(default)]
    pub budgets: BudgetsConfig,
    #[serde(default)]
    pub pii: PiiConfig,
}

/// What speaks on the other side.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    Openai,
    Anthropic,
    OpenaiCompatible,
}

impl UpstreamKind {
    pub fn protocol(self) -> Protocol {
        match self {
            UpstreamKind::Openai | UpstreamKind::OpenaiCompatible => Protocol::OpenAi,
            UpstreamKind::Anthropic => Protocol::Anthropic,
        }
    }
}

/// The wire protocol of an endpoint or an upstream (no translation
/// between them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::OpenAi => "OpenAI",
            Protocol::Anthropic => "Anthropic",
        }
    }
}

/// A reference to an upstream's real key, opaque to this crate: the
/// embedder's [`crate::KeyProvider`] resolves it (`{ source = "vault",
/// key = "kv/openai" }`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct KeyRef(pub serde_json::Value);

/// `[models.upstreams.NAME]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub kind: UpstreamKind,
    /// What the official SDK would take as its base URL: OpenAI's includes
    /// `/v1` (default `https://api.openai.com/v1`), Anthropic's does not
    /// (default `https://api.anthropic.com`). Required for
    /// `openai-compatible`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The real key; none for keyless local servers.
    #[serde(default)]
    pub key: Option<KeyRef>,
    /// Per attempt: the whole exchange, streams included (default 600s).
    #[serde(default)]
    pub timeout: Option<DurationValue>,
    /// TCP (and TLS) connect (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<DurationValue>,
    /// Retries of one target on errors that are safe to retry (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// First wait between retries, doubled each time (default 250ms); an
    /// upstream's `retry-after` wins when it is longer and fits the timeout.
    #[serde(default)]
    pub backoff: Option<DurationValue>,
    /// Model names exposed as they are (routed here). `"*"`: any name no
    /// route or other upstream claims, for this protocol.
    #[serde(default)]
    pub models: Vec<String>,
    /// Extra PEM CA certificates for this upstream's TLS.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// `[models.routes.ALIAS]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `"upstream/model"` in fallback order.
    pub targets: Vec<String>,
}

/// `[models.prices."MODEL"]`: USD per million tokens.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input tokens (OpenAI `cached_tokens`, Anthropic
    /// `cache_read_input_tokens`); default: `input`.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Anthropic `cache_creation_input_tokens`; default: `input`.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// `[models.budgets]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    #[serde(default)]
    pub session: Option<BudgetConfig>,
    #[serde(default)]
    pub human: Option<BudgetConfig>,
    #[serde(default)]
    pub task: Option<BudgetConfig>,
}

/// One scope's limits; each is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Input + output tokens.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// USD, from the price table.
    #[serde(default)]
    pub max_spend: Option<f64>,
    /// Requests per minute (sliding 60 s window).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default)]
    pub concurrent: Option<u32>,
}

/// `[models.pii]` (brig-redact's detectors, shared with `[journal.pii]`).
pub use brig_redact::pii::PiiConfig;

/// A parsed base URL.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BaseUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// No trailing slash (`/v1`, or empty).
    pub path: String,
    /// The Host header value.
    pub authority: String,
}

fn parse_base(key: &str, url: &str) -> Result<BaseUrl, ConfigError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(err(
            key,
            format!("`{url}` is not an http(s) URL; write e.g. https://api.openai.com/v1"),
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(err(
            key,
            "credentials in the URL are not allowed; put the key in `key`",
        ));
    }
    if path.contains('?') || path.contains('#') {
        return Err(err(key, "a base URL has no query or fragment"));
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let end = r
            .find(']')
            .ok_or_else(|| err(key, format!("`{url}`: unclosed IPv6 bracket")))?;
        let host = &r[..end];
        let port = match &r[end + 1..] {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| err(key, format!("`{url}`: bad port")))?,
            ),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(err(key, format!("`{url}` has no host")));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| err(key, format!("`{url}`: port `{p}` is not a number")))?,
        None if https => 443,
        None => 80,
    };
    Ok(BaseUrl {
        https,
        host,
        port,
        path: path.trim_end_matches('/').to_string(),
        authority: authority.to_string(),
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// One upstream as the gateway runs it.
#[derive(Debug)]
pub(crate) struct CompiledUpstream {
    pub name: Arc<str>,
    pub kind: UpstreamKind,
    pub base: BaseUrl,
    pub key: Option<KeyRef>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub ca_file: Option<std::path::PathBuf>,
}

/// A target of a model name: upstream index and upstream model.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub upstream: usize,
    pub model: Arc<str>,
}

/// What a model name resolves to.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The alias, when it is one.
    pub route: Option<Arc<str>>,
    pub protocol: Protocol,
    pub targets: Arc<[Target]>,
}

/// Limits of one scope.
#[derive(Clone, Debug, Default)]
pub(crate) struct Limits {
    pub max_tokens: Option<u64>,
    pub max_spend: Option<f64>,
    pub rpm: Option<u32>,
    pub concurrent: Option<u32>,
}

impl Limits {
    fn from(b: &Option<BudgetConfig>) -> Limits {
        match b {
            None => Limits::default(),
            Some(b) => Limits {
                max_tokens: b.max_tokens,
                max_spend: b.max_spend,
                rpm: b.rpm,
                concurrent: b.concurrent,
            },
        }
    }
    pub fn is_empty(&self) -> bool {
        self.max_tokens.is_none()
            && self.max_spend.is_none()
            && self.rpm.is_none()
            && self.concurrent.is_none()
    }
}

/// The validated configuration.
pub(crate) struct Compiled {
    pub host: String,
    pub max_body: usize,
    pub capture_max: usize,
    pub upstreams: Vec<CompiledUpstream>,
    /// Aliases and exposed names.
    pub names: HashMap<String, Resolved>,
    /// The `"*"` upstream of each protocol.
    pub wildcard: HashMap<Protocol, usize>,
    /// Names listed by `GET /v1/models`, per protocol, sorted.
    pub listed: HashMap<Protocol, Vec<String>>,
    pub prices: HashMap<String, Price>,
    /// session, human, task.
    pub limits: [Limits; 3],
    pub pii: PiiRules,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl GatewayConfig {
    /// Checks everything [`crate::Gateway::new`] would; the error names the
    /// key and says how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    pub(crate) fn compile(&self) -> Result<Compiled, ConfigError> {
        let host = self.host.clone().unwrap_or_else(|| DEFAULT_HOST.into());
        if host.is_empty() || !host.contains('.') || host.contains(['/', ':', ' ']) {
            return Err(err(
                "models.host",
                format!("`{host}` is not a host name; leave it out for `{DEFAULT_HOST}`"),
            ));
        }
        let max_body = match &self.max_body {
            Some(s) => s.bytes("models.max_body")?,
            None => DEFAULT_MAX_BODY,
        };
        if max_body < 1024 {
            return Err(err(
                "models.max_body",
                "must be at least 1K (model requests carry whole conversations)",
            ));
        }
        let capture_max = match &self.capture_max {
            Some(s) => s.bytes("models.capture_max")?,
            None => DEFAULT_CAPTURE_MAX,
        };
        if capture_max < 256 {
            return Err(err("models.capture_max", "must be at least 256 bytes"));
        }

        let mut upstreams = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (name, u) in &self.upstreams {
            let at = format!("models.upstreams.{name}");
            if !valid_name(name) {
                return Err(err(
                    &at,
                    "an upstream name is letters, digits, `-`, `_` or `.`",
                ));
            }
            let url = match (&u.base_url, u.kind) {
                (Some(url), _) => url.clone(),
                (None, UpstreamKind::Openai) => "https://api.openai.com/v1".into(),
                (None, UpstreamKind::Anthropic) => "https://api.anthropic.com".into(),
                (None, UpstreamKind::OpenaiCompatible) => {
                    return Err(err(
                        format!("{at}.base_url"),
                        "an openai-compatible upstream needs its base URL, e.g. http://127.0.0.1:8000/v1",
                    ))
                }
            };
            let base = parse_base(&format!("{at}.base_url"), &url)?;
            if !base.https && u.key.is_some() && !is_loopback(&base.host) {
                return Err(err(
                    format!("{at}.base_url"),
                    format!("`{url}` is plain http to a host that is not loopback, and a key is set: the key would cross the network in clear; use https, or drop `key` for a keyless server"),
                ));
            }
            let dur = |v: &Option<DurationValue>, k: &str, d: Duration| match v {
                Some(v) => v.get(&format!("{at}.{k}")),
                None => Ok(d),
            };
            let timeout = dur(&u.timeout, "timeout", DEFAULT_TIMEOUT)?;
            let connect_timeout = dur(
                &u.connect_timeout,
                "connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
            )?;
            let backoff = dur(&u.backoff, "backoff", DEFAULT_BACKOFF)?;
            if timeout.is_zero() || connect_timeout.is_zero() {
                return Err(err(
                    format!("{at}.timeout"),
                    "timeouts must be longer than zero",
                ));
            }
            let retries = u.retries.unwrap_or(DEFAULT_RETRIES);
            if retries > 10 {
                return Err(err(
                    format!("{at}.retries"),
                    "at most 10 (each retry costs a full timeout in the worst case)",
                ));
            }
            if let Some(ca) = &u.ca_file {
                if !base.https {
                    return Err(err(
                        format!("{at}.ca_file"),
                        "a CA file only applies to https base URLs",
                    ));
                }
                brig_tls::client_connector(Some(ca), &format!("{at}.ca_file"))
                    .map_err(|e| err(format!("{at}.ca_file"), e))?;
            }
            index.insert(name.as_str(), upstreams.len());
            upstreams.push(CompiledUpstream {
                name: Arc::from(name.as_str()),
                kind: u.kind,
                base,
                key: u.key.clone(),
                timeout,
                connect_timeout,
                retries,
                backoff,
                ca_file: u.ca_file.clone(),
            });
        }

        let mut names: HashMap<String, Resolved> = HashMap::new();
        let mut wildcard: HashMap<Protocol, usize> = HashMap::new();
        let mut listed: HashMap<Protocol, Vec<String>> = HashMap::new();
        for (name, u) in &self.upstreams {
            let i = index[name.as_str()];
            let protocol = u.kind.protocol();
            for m in &u.models {
                let at = format!("models.upstreams.{name}.models");
                if m == "*" {
                    if let Some(other) = wildcard.insert(protocol, i) {
                        return Err(err(
                            at,
                            format!(
                                "upstream `{}` already takes every other {} model (`*`); only one upstream per protocol can",
                                upstreams[other].name,
                                protocol.name()
                            ),
                        ));
                    }
                    continue;
                }
                if m.is_empty() || m.contains(char::is_whitespace) {
                    return Err(err(at, format!("`{m}` is not a model name")));
                }
                if let Some(prev) = names.get(m) {
                    return Err(err(
                        at,
                        format!(
                            "`{m}` is also exposed by upstream `{}`; route it with [models.routes.\"{m}\"] targets instead",
                            upstreams[prev.targets[0].upstream].name
                        ),
                    ));
                }
                names.insert(
                    m.clone(),
                    Resolved {
                        route: None,
                        protocol,
                        targets: Arc::from(vec![Target {
                            upstream: i,
                            model: Arc::from(m.as_str()),
                        }]),
                    },
                );
                listed.entry(protocol).or_default().push(m.clone());
            }
        }
        for (alias, r) in &self.routes {
            let at = format!("models.routes.{alias}");
            if alias.is_empty() || alias.contains(char::is_whitespace) {
                return Err(err(&at, "an alias is a model name without spaces"));
            }
            if names.contains_key(alias) {
                return Err(err(
                    &at,
                    format!("`{alias}` is also a model an upstream exposes; rename the alias or drop the model from that upstream's `models`"),
                ));
            }
            if r.targets.is_empty() {
                return Err(err(
                    format!("{at}.targets"),
                    "needs at least one \"upstream/model\"",
                ));
            }
            let mut targets = Vec::new();
            let mut protocol = None;
            for t in &r.targets {
                let (u, m) = t.split_once('/').ok_or_else(|| {
                    err(
                        format!("{at}.targets"),
                        format!("`{t}` is not \"upstream/model\""),
                    )
                })?;
                let Some(&ui) = index.get(u) else {
                    return Err(err(
                        format!("{at}.targets"),
                        format!("`{t}`: no upstream `{u}`; define [models.upstreams.{u}]"),
                    ));
                };
                if m.is_empty() {
                    return Err(err(
                        format!("{at}.targets"),
                        format!("`{t}` names no model"),
                    ));
                }
                let p = upstreams[ui].kind.protocol();
                match protocol {
                    None => protocol = Some(p),
                    Some(q) if q != p => {
                        return Err(err(
                            format!("{at}.targets"),
                            format!("mixes {} and {} upstreams; brig does not translate between protocols, so every target of a route must speak the same one", q.name(), p.name()),
                        ))
                    }
                    _ => {}
                }
                targets.push(Target {
                    upstream: ui,
                    model: Arc::from(m),
                });
            }
            let protocol = protocol.unwrap_or(Protocol::OpenAi);
            names.insert(
                alias.clone(),
                Resolved {
                    route: Some(Arc::from(alias.as_str())),
                    protocol,
                    targets: Arc::from(targets),
                },
            );
            listed.entry(protocol).or_default().push(alias.clone());
        }
        for l in listed.values_mut() {
            l.sort();
        }

        let mut prices = HashMap::new();
        for (m, p) in &self.prices {
            let at = format!("models.prices.\"{m}\"");
            let all = [Some(p.input), Some(p.output), p.cached_input, p.cache_write];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(err(at, "prices are USD per million tokens, zero or more"));
            }
            prices.insert(m.clone(), p.clone());
        }

        let b = &self.budgets;
        for (scope, l) in [
            ("session", &b.session),
            ("human", &b.human),
            ("task", &b.task),
        ] {
            let Some(l) = l else { continue };
            let at = format!("models.budgets.{scope}");
            if l.max_tokens == Some(0) || l.rpm == Some(0) || l.concurrent == Some(0) {
                return Err(err(
                    at,
                    "a limit of 0 would refuse every request; leave the key out for no limit",
                ));
            }
            if let Some(s) = l.max_spend {
                if !s.is_finite() || s <= 0.0 {
                    return Err(err(format!("{at}.max_spend"), "is USD, more than zero"));
                }
                // Fail closed: spend that cannot be priced cannot be limited.
                if !prices.contains_key("*") {
                    if let Some(p) = wildcard.keys().next() {
                        return Err(err(
                            format!("{at}.max_spend"),
                            format!("an upstream takes any {} model (`*`), so some models have no price; add [models.prices.\"*\"] as the default price", p.name()),
                        ));
                    }
                    for r in names.values() {
                        for t in r.targets.iter() {
                            let full = format!("{}/{}", upstreams[t.upstream].name, t.model);
                            if !prices.contains_key(&full) && !prices.contains_key(&*t.model) {
                                return Err(err(
                                    format!("{at}.max_spend"),
                                    format!("model `{full}` has no price, so its spend cannot be limited; add [models.prices.\"{}\"] (or a default [models.prices.\"*\"])", t.model),
                                ));
                            }
                        }
                    }
                }
            }
        }
        let limits = [
            Limits::from(&b.session),
            Limits::from(&b.human),
            Limits::from(&b.task),
        ];
        let pii = PiiRules::new(&self.pii).map_err(|e| ConfigError {
            key: format!("models.pii.{}", e.key),
            message: e.message,
        })?;
        Ok(Compiled {
            host,
            max_body: max_body as usize,
            capture_max: capture_max as usize,
            upstreams,
            names,
            wildcard,
            listed,
            prices,
            limits,
            pii,
        })
    }
}

impl Compiled {
    pub fn resolve(&self, model: &str, protocol: Protocol) -> Option<Resolved> {
        if let Some(r) = self.names.get(model) {
            return Some(r.clone());
        }
        let &u = self.wildcard.get(&protocol)?;
        Some(Resolved {
            route: None,
            protocol,
            targets: Arc::from(vec![Target {
                upstream: u,
                model: Arc::from(model),
            }]),
        })
    }

    pub fn price(&self, upstream: &str, model: &str) -> Option<&Price> {
        thread_local! {
            /// `upstream/model`, built here for every record: one buffer.
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with(|k| {
            let mut k = k.borrow_mut();
            k.clear();
            k.push_str(upstream);
            k.push('/');
            k.push_str(model);
            self.prices.get(k.as_str())
        })
        .or_else(|| self.prices.get(model))
        .or_else(|| self.prices.get("*"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> GatewayConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn the_documented_example_validates() {
        let c = parse(
            r#"
max_body = "8M"
capture_max = "64K"
[upstreams.openai]
kind = "openai"
key = { source = "vault", key = "kv/openai" }
timeout = "120s"
retries = 2
models = ["gpt-4o-mini"]
[upstreams.local]
kind = "openai-compatible"
base_url = "http://127.0.0.1:8000/v1"
[upstreams.anthropic]
kind = "anthropic"
key = { source = "env", key = "ANTHROPIC_API_KEY" }
models = ["claude-sonnet-4-5"]
[routes.coder]
targets = ["local/qwen2.5-coder", "openai/gpt-4o-mini"]
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[prices."*"]
input = 0
output = 0
[budgets.session]
max_tokens = 2000000
max_spend = 5.0
rpm = 60
concurrent = 4
[pii]
enabled = ["email", "card"]
patterns = { employee_id = "EMP-[0-9]{6}" }
"#,
        );
        let c = c.compile().unwrap();
        assert_eq!(c.max_body, 8 << 20);
        assert_eq!(c.capture_max, 64 << 10);
        let r = c.resolve("coder", Protocol::OpenAi).unwrap();
        assert_eq!(r.targets.len(), 2);
        assert_eq!(&*r.targets[0].model, "qwen2.5-coder");
        assert_eq!(c.upstreams[r.targets[1].upstream].base.path, "/v1");
        assert!(c.resolve("nope", Protocol::OpenAi).is_none());
        assert_eq!(c.limits[0].rpm, Some(60));
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = toml::from_str::<GatewayConfig>("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let cases: &[(&str, &str, &str)] = &[
            (
                "[upstreams.x]\nkind = \"openai-compatible\"",
                "models.upstreams.x.base_url",
                "needs its base URL",
            ),
            (
                "[upstreams.x]\nkind = \"openai\"\nbase_url = \"http://10.0.0.1/v1\"\nkey = \"k\"",
                "models.upstreams.x.base_url",
                "in clear",
            ),
            (
                "[routes.r]\ntargets = [\"nope/m\"]",
                "models.routes.r.targets",
                "define [models.upstreams.nope]",
            ),
            (
                "[upstreams.a]\nkind = \"anthropic\"\n[upstreams.o]\nkind = \"openai\"\n[routes.r]\ntargets = [\"a/x\", \"o/y\"]",
                "models.routes.r.targets",
                "does not translate",
            ),
            (
                "[upstreams.o]\nkind = \"openai\"\nmodels = [\"m\"]\n[budgets.task]\nmax_spend = 1.0",
                "models.budgets.task.max_spend",
                "has no price",
            ),
            ("max_body = \"huge\"", "models.max_body", "not valid"),
            (
                "[budgets.session]\nrpm = 0",
                "models.budgets.session",
                "leave the key out",
            ),
            (
                "[pii]\nenabled = [\"dna\"]",
                "models.pii.enabled",
                "email",
            ),
            (
                "[pii]\npatterns = { bad = \"(\" }",
                "models.pii.patterns.bad",
                "",
            ),
        ];
        for (toml, key, fix) in cases {
            let e = parse(toml).validate().unwrap_err();
            assert_eq!(e.key, *key, "{toml}: {e}");
            assert!(e.message.contains(fix), "{toml}: {e}");
        }
    }
}
