//! `brig.toml`: the control plane's configuration (reference: docs/CONFIG.md).
//!
//! Every table rejects keys it does not know, so a typo is an error that
//! names the key and the file instead of a setting silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_core::session::{Limits, RuntimeKind};
use brig_core::units::{parse_duration, parse_size};
use brig_core::{Error, Result};
use serde::Deserialize;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/brig";
pub const DEFAULT_SOCKET: &str = "/run/brig/brig.sock";
pub const DEFAULT_CONFIG_PATH: &str = "/etc/brig/brig.toml";
pub const DEFAULT_UPLOAD_CAP: u64 = 100 << 20;
pub const DEFAULT_PROFILE: &str = "default";

/// The whole configuration of `brig serve`, resolved and validated.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// The `brig` binary run as `oci-runtime` and placed in sandboxes as init.
    pub brig_exe: PathBuf,
    pub tcp: Option<TcpConfig>,
    /// `[identity]`: who may call the API (brig-identity; docs/IDENTITY.md).
    /// The default: local users on the unix socket, no IdP.
    pub identity: brig_identity::IdentityConfig,
    /// Limits of a session that neither its profile nor its request sets.
    pub defaults: Limits,
    /// Cap on everything `--repo` and `--upload` copy into one workspace.
    pub upload_cap_bytes: u64,
    pub reaper: ReaperConfig,
    /// `[pool]`: sandboxes started ahead of demand (crate::pool).
    pub pool: crate::pool::PoolConfig,
    pub journal: JournalConfig,
    pub profiles: BTreeMap<String, Profile>,
    /// How sessions' DNS queries are answered (`[resolver]`).
    pub resolver: brig_proxy::ResolverConfig,
    /// Each session's egress rate limits (`[egress_limits]`).
    pub egress_limits: brig_proxy::Limits,
    /// brig's artifact endpoint and its upload URLs (`[artifacts]`).
    pub artifacts: ArtifactsConfig,
    /// `[git]`: the git gateway (issue 5).
    pub git: crate::git_config::GitConfig,
    /// `[scan]`: the pre-push scanner (brig-scan; docs/SCANNER.md).
    pub scan: brig_scan::ScanConfig,
    /// `[repos.NAME]`: upstreams on a forge, named by `--repo NAME`.
    pub repos: BTreeMap<String, brig_forge::ForgeConfig>,
    /// `[secrets]`: sources, minters, TTL bounds (docs/SECRETS.md).
    pub secrets: brig_secrets::SecretsConfig,
    /// `[repo_tokens]`: `[repos.NAME]` whose tokens a `[secrets.minters]`
    /// mints per session (NAME = minter).
    pub repo_tokens: BTreeMap<String, String>,
    /// `secrets_upstream_ca`: extra CAs (PEM) the proxy trusts for the
    /// upstream TLS of hosts it intercepts (a private registry's CA).
    pub secrets_upstream_ca: Option<PathBuf>,
    /// `[models]`: the model gateway (brig-model; docs/MODELS.md). None:
    /// sessions get no model endpoint.
    pub models: Option<brig_model::GatewayConfig>,
    /// `[cost]`: the cost model of `brig report cost`.
    pub cost: CostConfig,
    /// `[policy]`: Cedar policies (brig-policy; docs/POLICY.md).
    pub policy: brig_policy::PolicyConfig,
    /// `[approvals]`: how sensitive capabilities wait for a human.
    pub approvals: crate::approvals::ApprovalsConfig,
    /// brig.toml's directory: relative policy files are under it.
    pub config_dir: PathBuf,
    /// Where this came from (a path, or `embedded defaults`), for messages.
    pub source: String,
}

/// `[cost]`: what `brig report cost` prices next to the model spend.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CostConfig {
    /// USD per sandbox-hour (the compute a session holds; default 0.10).
    #[serde(default = "default_sandbox_hour")]
    pub sandbox_hour_usd: f64,
    /// The blueprint's estimate: model spend per task-hour of agent work
    /// the budget was planned with (default 2.00 USD), shown beside the
    /// measured spend.
    #[serde(default = "default_planned_model_hour")]
    pub planned_model_usd_per_hour: f64,
}

fn default_sandbox_hour() -> f64 {
    0.10
}
fn default_planned_model_hour() -> f64 {
    2.0
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            sandbox_hour_usd: default_sandbox_hour(),
            planned_model_usd_per_hour: default_planned_model_hour(),
        }
    }
}

/// `[artifacts]`: the endpoint sessions upload artifacts to (docs/EGRESS.md,
/// "Upload URLs").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactsConfig {
    /// The endpoint's host name, served by the proxy itself (never dialed).
    pub host: String,
    /// Largest artifact (413 above it; nothing is kept).
    pub max_size: u64,
    /// Longest lifetime an upload URL may be given.
    pub max_ttl: Duration,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            host: brig_proxy::artifact::DEFAULT_HOST.to_string(),
            max_size: 1 << 30,
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawArtifacts {
    host: Option<String>,
    max_size: Option<Size>,
    max_ttl: Option<Dur>,
}

impl RawArtifacts {
    fn apply(&self, at: &str) -> Result<ArtifactsConfig> {
        let mut a = ArtifactsConfig::default();
        if let Some(h) = &self.host {
            a.host = match brig_egress::Host::parse(h) {
                Ok(brig_egress::Host::Domain(d)) if d.contains('.') => d,
                _ => {
                    return Err(Error::invalid(format!(
                        "{at} host {h:?} is not a host name"
                    ))
                    .hint("use a name under a TLD that is not delegated, e.g. host = \"artifacts.brig\""))
                }
            };
        }
        if let Some(m) = &self.max_size {
            a.max_size = m.bytes().map_err(|e| e.context(at))?;
        }
        if let Some(t) = &self.max_ttl {
            a.max_ttl = t.get().map_err(|e| e.context(at))?;
            if a.max_ttl.is_zero() {
                return Err(Error::invalid(format!(
                    "{at} max_ttl must be greater than zero"
                )));
            }
        }
        Ok(a)
    }
}

#[derive(Clone, Debug)]
pub struct TcpConfig {
    pub listen: SocketAddr,
    /// The static bearer token; optional when `[identity.oidc]` is set.
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ReaperConfig {
    /// How often the reaper looks at every live session.
    pub interval: Duration,
    /// A running session with no activity this long is shown as `idle`.
    pub mark_idle_after: Duration,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        ReaperConfig {
            interval: Duration::from_secs(5),
            mark_idle_after: Duration::from_secs(30),
        }
    }
}

/// When the journal's chain head is signed.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Sign after this many new events...
    pub checkpoint_every: u64,
    /// ...or this long after the last checkpoint, whichever comes first
    /// (only if there are new events), and at shutdown.
    pub checkpoint_interval: Duration,
    /// SIEM sinks (`[[journal.sinks]]`, see docs/SINKS.md).
    pub sinks: Vec<brig_sinks::SinkConfig>,
    /// `[journal.pii]`: PII detectors for argv, environment and payload
    /// excerpts before they are stored (default: [`JOURNAL_PII`]).
    pub pii: brig_redact::pii::PiiConfig,
}

/// The journal's default PII detectors: not `ip`, whose matches in a
/// command line (`curl 10.0.0.5`, `nc 127.0.0.1 22`) are what an auditor
/// needs to read, and whose network events carry addresses anyway.
pub const JOURNAL_PII: &[&str] = &["email", "phone", "card", "national_id"];

fn journal_pii(
    enabled: Option<Vec<String>>,
    patterns: BTreeMap<String, String>,
) -> brig_redact::pii::PiiConfig {
    brig_redact::pii::PiiConfig {
        enabled: enabled.unwrap_or_else(|| JOURNAL_PII.iter().map(|s| s.to_string()).collect()),
        patterns,
    }
}

/// `[journal.pii]` as written: `enabled` defaults to [`JOURNAL_PII`].
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournalPii {
    enabled: Option<Vec<String>>,
    #[serde(default)]
    patterns: BTreeMap<String, String>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            sinks: Vec::new(),
            pii: journal_pii(None, BTreeMap::new()),
        }
    }
}

/// A profile: the runtime, image, limits and environment a session gets.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub runtime: RuntimeKind,
    pub image: String,
    pub limits: Limits,
    /// The clean environment commands get (on top of the image's).
    pub env: Vec<(String, String)>,
    /// The egress policy (`[profiles.NAME.egress]`, else the global
    /// `[egress]`), checked by `brig_egress::Policy::compile` at load.
    pub egress: brig_egress::EgressConfig,
    /// `[profiles.NAME.gate]`: what must pass before a PR opens.
    pub gate: Option<crate::git_config::Gate>,
    /// `[profiles.NAME.secrets.GRANT]`: what its sessions hold (default: nothing).
    pub secrets: BTreeMap<String, crate::secrets::Grant>,
    /// The rollout phase: the policy profile (`read-only`, `pr`,
    /// `privileged`, or one of `[policy.profiles]`) that decides what its
    /// agents may do (default: `pr`, or the profile's own name when that
    /// names a policy profile).
    pub policy: String,
}

// ---- the file as written ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    brig_exe: Option<PathBuf>,
    upload_cap: Option<Size>,
    tcp: Option<RawTcp>,
    #[serde(default)]
    identity: brig_identity::IdentityConfig,
    #[serde(default)]
    defaults: RawLimits,
    #[serde(default)]
    reaper: RawReaper,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
    egress: Option<brig_egress::EgressConfig>,
    #[serde(default)]
    resolver: RawResolver,
    #[serde(default)]
    artifacts: RawArtifacts,
    #[serde(default)]
    egress_limits: RawEgressLimits,
    #[serde(default)]
    git: crate::git_config::RawGit,
    scan: Option<brig_scan::ScanConfig>,
    #[serde(default)]
    repos: BTreeMap<String, brig_forge::ForgeConfig>,
    #[serde(default)]
    secrets: brig_secrets::SecretsConfig,
    secrets_upstream_ca: Option<PathBuf>,
    #[serde(default)]
    repo_tokens: BTreeMap<String, String>,
    models: Option<brig_model::GatewayConfig>,
    #[serde(default)]
    cost: CostConfig,
    #[serde(default)]
    policy: brig_policy::PolicyConfig,
    #[serde(default)]
    approvals: crate::approvals::ApprovalsConfig,
}

/// Per-session egress rate limits; unset keys keep brig-proxy's defaults.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEgressLimits {
    requests_per_sec: Option<f64>,
    request_burst: Option<f64>,
    max_connections: Option<usize>,
    bytes_out_per_min: Option<Size>,
    dns_queries_per_sec: Option<f64>,
    dns_burst: Option<f64>,
}

impl RawEgressLimits {
    fn apply(&self, at: &str) -> Result<brig_proxy::Limits> {
        let mut l = brig_proxy::Limits::default();
        let rate = |v: f64, key: &str| -> Result<f64> {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(Error::invalid(format!(
                    "{at} {key} must be a positive number"
                )))
            }
        };
        if let Some(v) = self.requests_per_sec {
            l.requests_per_sec = rate(v, "requests_per_sec")?;
        }
        if let Some(v) = self.request_burst {
            l.request_burst = rate(v, "request_burst")?;
        }
        if let Some(v) = self.max_connections {
            if v == 0 {
                return Err(Error::invalid(format!(
                    "{at} max_connections must be at least 1"
                )));
            }
            l.max_connections = v;
        }
        if let Some(v) = &self.bytes_out_per_min {
            l.bytes_out_per_min = v.bytes().map_err(|e| e.context(at))?;
        }
        if let Some(v) = self.dns_queries_per_sec {
            l.dns_queries_per_sec = rate(v, "dns_queries_per_sec")?;
        }
        if let Some(v) = self.dns_burst {
            l.dns_burst = rate(v, "dns_burst")?;
        }
        Ok(l)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    /// `ip:port` of the DNS server brig asks; default: /etc/resolv.conf's first.
    upstream: Option<String>,
    /// Names answered without asking upstream: `"mirror.internal" = ["10.0.0.5"]`.
    #[serde(default)]
    hosts: BTreeMap<String, Vec<std::net::IpAddr>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcp {
    listen: String,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReaper {
    interval: Option<Dur>,
    mark_idle_after: Option<Dur>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    warm: Option<usize>,
    templates: Option<usize>,
    idle: Option<Dur>,
}

/// Most sandboxes `[pool]` may keep per template, and templates.
const POOL_MAX: usize = 16;

impl RawPool {
    fn apply(&self, at: &dyn Fn(&str) -> String) -> Result<crate::pool::PoolConfig> {
        let mut p = crate::pool::PoolConfig::default();
        for (name, given, into) in [
            ("warm", self.warm, &mut p.warm),
            ("templates", self.templates, &mut p.templates),
        ] {
            if let Some(n) = given {
                if n > POOL_MAX {
                    return Err(Error::invalid(at(&format!(
                        "[pool] {name} = {n} is more than {POOL_MAX}"
                    )))
                    .hint("each pooled sandbox holds host memory while it waits; 0 turns the pool off"));
                }
                *into = n;
            }
        }
        if let Some(d) = &self.idle {
            p.idle = d.get().map_err(|e| e.context(at("[pool] idle")))?;
        }
        Ok(p)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    checkpoint_every: Option<u64>,
    checkpoint_interval: Option<Dur>,
    #[serde(default)]
    sinks: Vec<brig_sinks::SinkConfig>,
    pii: Option<RawJournalPii>,
}

/// Limit settings, as `[defaults]` and `[profiles.NAME.limits]` write them.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    cpus: Option<f64>,
    memory: Option<Size>,
    pids: Option<u64>,
    disk: Option<Size>,
    tmp: Option<Size>,
    idle: Option<Dur>,
    timebox: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    runtime: Option<String>,
    image: Option<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    env: BTreeMap<String, String>,
    egress: Option<brig_egress::EgressConfig>,
    gate: Option<crate::git_config::RawGate>,
    #[serde(default)]
    secrets: BTreeMap<String, crate::secrets::Grant>,
    policy: Option<String>,
}

/// A size: `"2G"` or a number of bytes.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(s) => parse_size(s),
        }
    }
}

/// A duration: `"15m"` or a number of seconds.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Dur {
    Secs(u64),
    Text(String),
}

impl Dur {
    fn get(&self) -> Result<Duration> {
        match self {
            Dur::Secs(s) => Ok(Duration::from_secs(*s)),
            Dur::Text(s) => parse_duration(s),
        }
    }
}

impl RawLimits {
    fn apply(&self, base: &Limits, at: &str) -> Result<Limits> {
        let ctx = |e: Error| e.context(at);
        let mut l = base.clone();
        if let Some(c) = self.cpus {
            l.cpu_millis = cpus_to_millis(c).map_err(ctx)?;
        }
        if let Some(m) = &self.memory {
            l.memory_bytes = m.bytes().map_err(ctx)?;
        }
        if let Some(p) = self.pids {
            l.pids = p;
        }
        if let Some(d) = &self.disk {
            l.disk_bytes = d.bytes().map_err(ctx)?;
        }
        if let Some(t) = &self.tmp {
            l.tmp_bytes = t.bytes().map_err(ctx)?;
        }
        if let Some(i) = &self.idle {
            l.idle_secs = i.get().map_err(ctx)?.as_secs();
        }
        if let Some(t) = &self.timebox {
            l.timebox_secs = t.get().map_err(ctx)?.as_secs();
        }
        Ok(l)
    }
}

/// `--cpus 1.5` → 1500 milli-CPUs.
pub fn cpus_to_millis(cpus: f64) -> Result<u64> {
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(Error::invalid(format!("cpus {cpus} is not valid"))
            .hint("give a positive number of CPUs, e.g. 0.5 or 2"));
    }
    Ok((cpus * 1000.0).round() as u64)
}

impl ServerConfig {
    /// Everything at its default, with `data_dir` (and the socket under it):
    /// what `brig demo` and tests run on.
    pub fn embedded(data_dir: &Path) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.to_path_buf(),
            socket: data_dir.join("brig.sock"),
            brig_exe: default_brig_exe(),
            tcp: None,
            identity: brig_identity::IdentityConfig::default(),
            defaults: Limits::default(),
            upload_cap_bytes: DEFAULT_UPLOAD_CAP,
            reaper: ReaperConfig::default(),
            pool: crate::pool::PoolConfig::default(),
            journal: JournalConfig::default(),
            profiles: builtin_profiles(&Limits::default(), &brig_egress::EgressConfig::default()),
            resolver: brig_proxy::ResolverConfig::default(),
            egress_limits: brig_proxy::Limits::default(),
            artifacts: ArtifactsConfig::default(),
            git: crate::git_config::GitConfig::default(),
            scan: brig_scan::ScanConfig::default(),
            repos: BTreeMap::new(),
            secrets: brig_secrets::SecretsConfig::default(),
            secrets_upstream_ca: None,
            repo_tokens: BTreeMap::new(),
            models: None,
            cost: CostConfig::default(),
            policy: brig_policy::PolicyConfig::default(),
            approvals: crate::approvals::ApprovalsConfig::default(),
            config_dir: PathBuf::from("."),
            source: "embedded defaults".into(),
        }
    }

    /// Read and validate a brig.toml.
    pub fn load(path: &Path) -> Result<ServerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!("cannot read {}: {e}", path.display()))
                .hint("pass --config PATH, or create the file (see docs/CONFIG.md)")
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        cfg.config_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        // Policy files are read (and checked against the schema) now: a
        // brig.toml whose policies do not compile does not start.
        crate::policy::Policy::build(&cfg).map_err(|e| e.context(format!("{}", path.display())))?;
        Ok(cfg)
    }

    /// `load` the file if it exists, the defaults (with the stock paths) if not.
    pub fn load_or_default(path: &Path) -> Result<ServerConfig> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::parse("", &format!("{} (absent: defaults)", path.display()))
        }
    }

    /// Parse brig.toml text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<ServerConfig> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            Error::invalid(format!("{source}: {}", e.message())).hint(location_hint(text, e.span()))
        })?;
        let at = |what: &str| format!("{source}: {what}");
        let defaults = raw.defaults.apply(&Limits::default(), &at("[defaults]"))?;
        defaults
            .validate()
            .map_err(|e| e.context(at("[defaults]")))?;
        let upload_cap_bytes = match &raw.upload_cap {
            Some(s) => s.bytes().map_err(|e| e.context(at("upload_cap")))?,
            None => DEFAULT_UPLOAD_CAP,
        };
        let mut reaper = ReaperConfig::default();
        if let Some(d) = &raw.reaper.interval {
            reaper.interval = d.get().map_err(|e| e.context(at("[reaper] interval")))?;
        }
        if let Some(d) = &raw.reaper.mark_idle_after {
            reaper.mark_idle_after = d
                .get()
                .map_err(|e| e.context(at("[reaper] mark_idle_after")))?;
        }
        if reaper.interval.is_zero() {
            return Err(Error::invalid(at(
                "[reaper] interval must be greater than zero",
            )));
        }
        let mut journal = JournalConfig::default();
        if let Some(n) = raw.journal.checkpoint_every {
            if n == 0 {
                return Err(
                    Error::invalid(at("[journal] checkpoint_every must be at least 1"))
                        .hint("e.g. checkpoint_every = 1000"),
                );
            }
            journal.checkpoint_every = n;
        }
        if let Some(d) = &raw.journal.checkpoint_interval {
            journal.checkpoint_interval = d
                .get()
                .map_err(|e| e.context(at("[journal] checkpoint_interval")))?;
            if journal.checkpoint_interval.is_zero() {
                return Err(Error::invalid(at(
                    "[journal] checkpoint_interval must be greater than zero",
                ))
                .hint("e.g. checkpoint_interval = \"10s\""));
            }
        }
        for sink in &raw.journal.sinks {
            sink.validate()
                .map_err(|e| e.context(at(&format!("[[journal.sinks]] '{}'", sink.name))))?;
        }
        journal.sinks = raw.journal.sinks;
        if let Some(raw_pii) = raw.journal.pii {
            let pii = journal_pii(raw_pii.enabled, raw_pii.patterns);
            brig_redact::pii::PiiRules::new(&pii).map_err(|e| {
                Error::invalid(at(&format!("[journal.pii] {}: {}", e.key, e.message))).hint(
                    "built-in detectors: email, phone, card, national_id, ip; `enabled = []` turns them off",
                )
            })?;
            journal.pii = pii;
        }
        raw.identity.validate().map_err(|e| {
            Error::invalid(at(&e.to_string())).hint("see docs/IDENTITY.md for [identity]")
        })?;
        let tcp = match raw.tcp {
            None => None,
            Some(t) => {
                let listen: SocketAddr = t.listen.parse().map_err(|_| {
                    Error::invalid(at(&format!(
                        "[tcp] listen {:?} is not an address:port",
                        t.listen
                    )))
                    .hint("e.g. listen = \"127.0.0.1:7420\"")
                })?;
                // TCP without a way to authenticate would be an open door
                // (API tokens need someone to issue them): refuse outright.
                if t.token_file.is_none() && raw.identity.oidc.is_none() {
                    return Err(Error::invalid(at("[tcp] needs token_file or [identity.oidc]: brig never listens on TCP without authentication"))
                        .hint("write a random token (e.g. `openssl rand -hex 32`) to a file only root can read and set token_file, or configure [identity.oidc]"));
                }
                Some(TcpConfig {
                    listen,
                    token_file: t.token_file,
                })
            }
        };
        let egress = raw.egress.unwrap_or_default();
        check_egress(&egress, &at("[egress]"))?;
        let profiles = if raw.profiles.is_empty() {
            builtin_profiles(&defaults, &egress)
        } else {
            let mut out = BTreeMap::new();
            for (name, p) in &raw.profiles {
                out.insert(
                    name.clone(),
                    resolve_profile(name, p, &defaults, &egress, source)?,
                );
            }
            out
        };
        raw.secrets
            .ttl
            .validate()
            .map_err(|e| Error::invalid(at(&format!("[secrets.ttl]: {e}"))))?;
        for (pname, p) in &profiles {
            for (gname, g) in &p.secrets {
                let where_ = at(&format!("[profiles.{pname}.secrets.{gname}]"));
                if !crate::secrets::check_grant_name(gname) {
                    return Err(Error::invalid(format!(
                        "{where_}: a grant's name is 1-64 of A-Z, a-z, 0-9 and _, not starting with a digit"
                    )));
                }
                g.check(&where_, &raw.secrets)?;
            }
        }
        for (repo, minter) in &raw.repo_tokens {
            let where_ = at(&format!("[repo_tokens] {repo}"));
            match raw.repos.get(repo) {
                Some(brig_forge::ForgeConfig::Github(_)) => {}
                Some(_) => {
                    return Err(Error::invalid(format!(
                        "{where_}: minted tokens are for GitHub repos (a GitHub App's installation tokens)"
                    )))
                }
                None => return Err(Error::invalid(format!("{where_}: no [repos.{repo}]"))),
            }
            if !raw.secrets.minters.contains_key(minter) {
                return Err(Error::invalid(format!(
                    "{where_}: no [secrets.minters.{minter}]"
                )));
            }
        }
        if let Some(m) = &raw.models {
            crate::models::check_config(m, &raw.secrets).map_err(|e| Error::invalid(at(&e)))?;
        }
        for (k, v) in [
            ("sandbox_hour_usd", raw.cost.sandbox_hour_usd),
            (
                "planned_model_usd_per_hour",
                raw.cost.planned_model_usd_per_hour,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(at(&format!(
                    "[cost] {k} must be a number of USD, 0 or more"
                ))));
            }
        }
        let mut resolver = brig_proxy::ResolverConfig::default();
        if let Some(u) = &raw.resolver.upstream {
            resolver.upstream = Some(u.parse().map_err(|_| {
                Error::invalid(at(&format!("[resolver] upstream {u:?} is not an ip:port")))
                    .hint("e.g. upstream = \"10.0.0.2:53\"")
            })?);
        }
        for (name, addrs) in &raw.resolver.hosts {
            let key = match brig_egress::Host::parse(name) {
                Ok(brig_egress::Host::Domain(d)) => d,
                _ => {
                    return Err(Error::invalid(at(&format!(
                        "[resolver.hosts] {name:?} is not a host name"
                    ))))
                }
            };
            resolver.static_hosts.insert(key, addrs.clone());
        }
        Ok(ServerConfig {
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            socket: raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            brig_exe: raw.brig_exe.unwrap_or_else(default_brig_exe),
            tcp,
            identity: raw.identity,
            defaults,
            upload_cap_bytes,
            reaper,
            pool: raw.pool.apply(&at)?,
            journal,
            profiles,
            resolver,
            egress_limits: raw.egress_limits.apply(&at("[egress_limits]"))?,
            artifacts: raw.artifacts.apply(&at("[artifacts]"))?,
            git: raw.git.apply(&at("[git]"))?,
            scan: check_scan(raw.scan.unwrap_or_default(), &at("[scan]"))?,
            repos: check_repos(raw.repos, &at("[repos]"))?,
            secrets: raw.secrets,
            secrets_upstream_ca: raw.secrets_upstream_ca,
            repo_tokens: raw.repo_tokens,
            models: raw.models,
            cost: raw.cost,
            policy: raw.policy,
            approvals: raw.approvals,
            config_dir: PathBuf::from("."),
            source: source.to_string(),
        })
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("brig.db")
    }

    pub fn sandbox_paths(&self) -> brig_sandbox::SandboxPaths {
        brig_sandbox::SandboxPaths {
            data_dir: self.data_dir.clone(),
            brig_exe: self.brig_exe.clone(),
        }
    }

    pub fn profile(&self, name: &str) -> Result<&Profile> {
        self.profiles.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            Error::not_found(format!("profile {name:?} does not exist")).hint(format!(
                "profiles in {}: {}",
                self.source,
                known.join(", ")
            ))
        })
    }
}

/// The scanner's rules must compile (a rules file that does not is an
/// error here, not a scanner silently weaker).
fn check_scan(c: brig_scan::ScanConfig, at: &str) -> Result<brig_scan::ScanConfig> {
    brig_scan::Scanner::new(&c).map_err(|e| {
        Error::invalid(format!("{at}: {e}")).hint("the [scan] keys are in docs/SCANNER.md")
    })?;
    Ok(c)
}

/// Repo names are what `--repo NAME` and the gateway URL use.
fn check_repos(
    repos: BTreeMap<String, brig_forge::ForgeConfig>,
    at: &str,
) -> Result<BTreeMap<String, brig_forge::ForgeConfig>> {
    for name in repos.keys() {
        let ok = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(Error::invalid(format!(
                "{at}: repo name {name:?} must be 1-100 characters of [A-Za-z0-9._-], not starting with '.'"
            )));
        }
    }
    Ok(repos)
}

/// An egress table must compile: every error names its rule and where it is.
fn check_egress(c: &brig_egress::EgressConfig, at: &str) -> Result<()> {
    brig_egress::Policy::compile(c).map(|_| ()).map_err(|e| {
        Error::invalid(format!("{at}: {e}")).hint("the egress keys are in docs/EGRESS.md")
    })
}

fn resolve_profile(
    name: &str,
    p: &RawProfile,
    defaults: &Limits,
    egress: &brig_egress::EgressConfig,
    source: &str,
) -> Result<Profile> {
    let at = format!("{source}: [profiles.{name}]");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(Error::invalid(format!(
            "{at}: profile names use letters, digits, - _ ."
        )));
    }
    let runtime =
        RuntimeKind::parse(p.runtime.as_deref().unwrap_or("native")).map_err(|e| e.context(&at))?;
    let limits = p.limits.apply(defaults, &format!("{at}.limits"))?;
    limits.validate().map_err(|e| e.context(&at))?;
    for k in p.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::invalid(format!(
                "{at}.env: {k:?} is not a valid variable name"
            )));
        }
    }
    let egress = p.egress.clone().unwrap_or_else(|| egress.clone());
    check_egress(&egress, &format!("{at}.egress"))?;
    Ok(Profile {
        runtime,
        image: p.image.clone().unwrap_or_else(|| "host".into()),
        limits,
        env: p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        egress,
        gate: p
            .gate
            .as_ref()
            .map(|g| g.apply(&format!("{at}.gate")))
            .transpose()?,
        secrets: p.secrets.clone(),
        policy: p
            .policy
            .clone()
            .unwrap_or_else(|| default_policy_profile(name)),
    })
}

/// A profile named like a shipped policy profile is that phase; every
/// other one starts in `pr` (bot branches and PRs behind the test gate).
pub fn default_policy_profile(profile: &str) -> String {
    match profile {
        "read-only" | "pr" | "privileged" => profile.to_string(),
        _ => "pr".to_string(),
    }
}

/// `default` (native) and `gvisor`, both on the `host` image: what brig
/// offers when brig.toml defines no profiles.
pub fn builtin_profiles(
    defaults: &Limits,
    egress: &brig_egress::EgressConfig,
) -> BTreeMap<String, Profile> {
    let mk = |runtime| Profile {
        runtime,
        image: "host".into(),
        limits: defaults.clone(),
        env: Vec::new(),
        egress: egress.clone(),
        gate: None,
        secrets: BTreeMap::new(),
        policy: default_policy_profile(DEFAULT_PROFILE),
    };
    BTreeMap::from([
        (DEFAULT_PROFILE.to_string(), mk(RuntimeKind::Native)),
        ("gvisor".to_string(), mk(RuntimeKind::Gvisor)),
    ])
}

fn default_brig_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/brig"))
}

fn location_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!("fix line {line}; every key brig.toml accepts is in docs/CONFIG.md")
        }
        None => "every key brig.toml accepts is in docs/CONFIG.md".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults_with_builtin_profiles() {
        let c = ServerConfig::parse("", "brig.toml").unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.upload_cap_bytes, 100 << 20);
        assert!(c.tcp.is_none());
        assert_eq!(c.reaper.interval, Duration::from_secs(5));
        assert_eq!(c.profile("default").unwrap().runtime, RuntimeKind::Native);
        assert_eq!(c.profile("gvisor").unwrap().runtime, RuntimeKind::Gvisor);
        assert_eq!(c.profile("default").unwrap().image, "host");
        let e = c.profile("nope").unwrap_err();
        assert_eq!(e.kind, brig_core::ErrorKind::NotFound);
        assert!(e.hint.unwrap().contains("default, gvisor"));
    }

    #[test]
    fn repo_tokens_name_a_github_repo_and_a_minter() {
        let base = r#"
            [secrets.minters.gh]
            kind = "github_app"
            app_id = 1
            installation_id = 2
            private_key_file = "/nonexistent/key.pem"
            permissions = { contents = "write", pull_requests = "write" }
            [repos.api]
            kind = "github"
            owner = "acme"
            repo = "api"
            [repos.lab]
            kind = "gitlab"
            project = "g/p"
            token_env = "T"
        "#;
        let ok = format!("{base}\n[repo_tokens]\napi = \"gh\"\n");
        let c = ServerConfig::parse(&ok, "t.toml").unwrap();
        assert_eq!(c.repo_tokens.get("api").map(String::as_str), Some("gh"));
        for (extra, want) in [
            ("[repo_tokens]\nnope = \"gh\"", "no [repos.nope]"),
            ("[repo_tokens]\nlab = \"gh\"", "GitHub"),
            (
                "[repo_tokens]\napi = \"other\"",
                "no [secrets.minters.other]",
            ),
        ] {
            let e = ServerConfig::parse(&format!("{base}\n{extra}\n"), "t.toml").unwrap_err();
            assert!(e.message.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn full_file_parses() {
        let c = ServerConfig::parse(
            r#"
            data_dir = "/srv/brig"
            socket = "/srv/brig/api.sock"
            brig_exe = "/opt/brig"
            upload_cap = "1G"
            [tcp]
            listen = "127.0.0.1:7420"
            token_file = "/etc/brig/token"
            [defaults]
            cpus = 2
            memory = "4G"
            idle = "10m"
            timebox = 3600
            [reaper]
            interval = "100ms"
            mark_idle_after = "1s"
            [profiles.ci]
            runtime = "oci:/usr/bin/crun"
            image = "debian"
            limits = { memory = "1G", pids = 64 }
            env = { CI = "1", PATH = "/usr/bin:/bin" }
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.brig_exe, PathBuf::from("/opt/brig"));
        assert_eq!(c.upload_cap_bytes, 1 << 30);
        assert_eq!(c.tcp.as_ref().unwrap().listen.port(), 7420);
        assert_eq!(c.defaults.cpu_millis, 2000);
        assert_eq!(c.defaults.idle_secs, 600);
        assert_eq!(c.defaults.timebox_secs, 3600);
        assert_eq!(c.reaper.interval, Duration::from_millis(100));
        // Only the profiles the file defines.
        assert_eq!(c.profiles.len(), 1);
        let ci = c.profile("ci").unwrap();
        assert_eq!(
            ci.runtime,
            RuntimeKind::Oci {
                path: "/usr/bin/crun".into()
            }
        );
        assert_eq!(ci.limits.memory_bytes, 1 << 30);
        assert_eq!(ci.limits.pids, 64);
        // Unset profile limits come from [defaults].
        assert_eq!(ci.limits.cpu_millis, 2000);
        assert!(ci.env.contains(&("CI".into(), "1".into())));
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        for (text, key) in [
            ("sockett = \"/x\"", "sockett"),
            ("[defaults]\nmemroy = \"1G\"", "memroy"),
            (
                "[profiles.a]\nruntime = \"native\"\nimage_name = \"x\"",
                "image_name",
            ),
            ("[tcp]\nlisten = \"127.0.0.1:1\"\ntoken = \"x\"", "token"),
        ] {
            let e = ServerConfig::parse(text, "/etc/brig/brig.toml").unwrap_err();
            assert_eq!(e.kind, brig_core::ErrorKind::InvalidInput);
            assert!(e.message.contains(key), "{e}");
            assert!(e.message.contains("/etc/brig/brig.toml"), "{e}");
        }
    }

    #[test]
    fn tcp_without_a_token_is_refused() {
        let e = ServerConfig::parse("[tcp]\nlisten = \"127.0.0.1:7420\"", "b.toml").unwrap_err();
        assert!(e.message.contains("token_file"), "{e}");
        let e = ServerConfig::parse(
            "[tcp]\nlisten = \"localhost\"\ntoken_file = \"/t\"",
            "b.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("listen"), "{e}");
    }

    #[test]
    fn identity_is_local_by_default_and_checked_at_load() {
        let c = ServerConfig::parse("", "b.toml").unwrap();
        assert!(c.identity.oidc.is_none());
        assert_eq!(c.identity.local.default_roles, vec!["admin".to_string()]);
        // [tcp] needs no token_file when an IdP authenticates.
        let c = ServerConfig::parse(
            "[tcp]\nlisten = \"127.0.0.1:7420\"\n[identity.oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"brig\"\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(c.tcp.unwrap().token_file, None);
        assert_eq!(c.identity.oidc.unwrap().client_id, "brig");
        for (text, key) in [
            (
                "[identity.oidc]\nissuer = \"http://idp.example.com\"\nclient_id = \"b\"",
                "issuer",
            ),
            (
                "[identity.oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"\"",
                "client_id",
            ),
            (
                "[identity.tokens]\nmax_ttl = \"1d\"\ndefault_ttl = \"2d\"",
                "default_ttl",
            ),
            ("[identity.users.Bad]\n", "Bad"),
            ("[identity]\nmode = \"x\"", "mode"),
        ] {
            let e = ServerConfig::parse(text, "b.toml").unwrap_err();
            assert_eq!(e.kind, brig_core::ErrorKind::InvalidInput);
            assert!(
                e.message.contains(key) && e.message.contains("b.toml"),
                "{key}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = ServerConfig::parse("[defaults]\nmemory = \"1K\"", "b.toml").unwrap_err();
        assert!(
            e.message.contains("--memory") && e.message.contains("[defaults]"),
            "{e}"
        );
        let e = ServerConfig::parse("[profiles.x]\nruntime = \"docker\"", "b.toml").unwrap_err();
        assert!(
            e.message.contains("[profiles.x]") && e.message.contains("docker"),
            "{e}"
        );
        let e = ServerConfig::parse("upload_cap = \"lots\"", "b.toml").unwrap_err();
        assert!(e.message.contains("upload_cap"), "{e}");
        let e = ServerConfig::parse("[reaper]\ninterval = \"0s\"", "b.toml").unwrap_err();
        assert!(e.message.contains("interval"), "{e}");
    }

    #[test]
    fn pool_section_parses_and_bad_values_are_named() {
        let c = ServerConfig::parse("", "t.toml").unwrap();
        assert_eq!((c.pool.warm, c.pool.templates), (1, 4));
        assert_eq!(c.pool.idle, Duration::from_secs(600));
        let c = ServerConfig::parse("[pool]\nwarm = 0\ntemplates = 2\nidle = \"1m\"", "t.toml")
            .unwrap();
        assert_eq!((c.pool.warm, c.pool.templates), (0, 2));
        assert_eq!(c.pool.idle, Duration::from_secs(60));
        let e = ServerConfig::parse("[pool]\nwarm = 17", "t.toml").unwrap_err();
        assert!(e.message.contains("t.toml: [pool] warm = 17"), "{e}");
        let e = ServerConfig::parse("[pool]\nidle = \"soon\"", "t.toml").unwrap_err();
        assert!(e.to_string().contains("[pool] idle"), "{e}");
        let e = ServerConfig::parse("[pool]\nsize = 3", "t.toml").unwrap_err();
        assert!(e.message.contains("size"), "{e}");
    }

    #[test]
    fn journal_section_parses_and_bad_values_are_named() {
        let c = ServerConfig::parse("", "t.toml").unwrap();
        assert_eq!(c.journal.checkpoint_every, 1000);
        assert_eq!(c.journal.checkpoint_interval, Duration::from_secs(10));
        let c = ServerConfig::parse(
            "[journal]\ncheckpoint_every = 5\ncheckpoint_interval = \"250ms\"",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.journal.checkpoint_every, 5);
        assert_eq!(c.journal.checkpoint_interval, Duration::from_millis(250));
        assert_eq!(c.journal.pii.enabled, JOURNAL_PII, "not ip by default");
        let c = ServerConfig::parse(
            "[journal.pii]\npatterns = { emp = \"EMP-[0-9]{6}\" }",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.journal.pii.enabled, JOURNAL_PII);
        assert_eq!(c.journal.pii.patterns.len(), 1);
        let e = ServerConfig::parse("[journal.pii]\nenabled = [\"emails\"]", "t.toml").unwrap_err();
        assert!(e.message.contains("[journal.pii] enabled"), "{e}");
        let c = ServerConfig::parse("[journal.pii]\nenabled = []", "t.toml").unwrap();
        assert!(c.journal.pii.enabled.is_empty());
        let e = ServerConfig::parse("[journal]\ncheckpoint_every = 0", "t.toml").unwrap_err();
        assert!(e.message.contains("[journal] checkpoint_every"), "{e}");
        let e =
            ServerConfig::parse("[journal]\ncheckpoint_interval = \"0s\"", "t.toml").unwrap_err();
        assert!(e.message.contains("checkpoint_interval"), "{e}");
        let e = ServerConfig::parse("[journal]\nchekpoint_every = 3", "t.toml").unwrap_err();
        assert!(e.message.contains("chekpoint_every"), "{e}");
    }

    #[test]
    fn artifacts_table_is_checked() {
        let c = ServerConfig::parse("", "t").unwrap();
        assert_eq!(c.artifacts, ArtifactsConfig::default());
        assert_eq!(c.artifacts.host, "artifacts.brig");
        let c = ServerConfig::parse(
            "[artifacts]\nhost = \"Drop.Example.Internal.\"\nmax_size = \"10M\"\nmax_ttl = \"1h\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.artifacts.host, "drop.example.internal");
        assert_eq!(c.artifacts.max_size, 10 << 20);
        assert_eq!(c.artifacts.max_ttl, Duration::from_secs(3600));
        for bad in [
            "[artifacts]\nhost = \"1.2.3.4\"\n",
            "[artifacts]\nhost = \"nodot\"\n",
            "[artifacts]\nmax_ttl = \"0s\"\n",
            "[artifacts]\nmax_size = \"lots\"\n",
            "[artifacts]\nhots = \"x.brig\"\n",
        ] {
            assert!(ServerConfig::parse(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn embedded_puts_everything_under_the_data_dir() {
        let c = ServerConfig::embedded(Path::new("/tmp/x"));
        assert_eq!(c.socket, PathBuf::from("/tmp/x/brig.sock"));
        assert_eq!(c.db_path(), PathBuf::from("/tmp/x/brig.db"));
        assert!(c.profiles.contains_key("default") && c.profiles.contains_key("gvisor"));
    }

    #[test]
    fn egress_and_resolver_parse_per_profile_and_bad_policies_are_named() {
        let text = r#"
            [egress]
            presets = ["registries"]
            [[egress.allow]]
            name = "github"
            domains = ["github.com"]
            [resolver]
            upstream = "10.0.0.2:53"
            hosts = { "Mirror.Internal." = ["10.0.0.5"] }
            [profiles.default]
            [profiles.locked]
            egress = { presets = [] }
        "#;
        let c = ServerConfig::parse(text, "t.toml").unwrap();
        assert_eq!(c.profiles["default"].egress.presets, vec!["registries"]);
        assert_eq!(c.profiles["default"].egress.allow.len(), 1);
        assert!(c.profiles["locked"].egress.presets.is_empty());
        assert!(
            c.profiles["locked"].egress.allow.is_empty(),
            "a profile's table replaces [egress]"
        );
        assert_eq!(c.resolver.upstream, Some("10.0.0.2:53".parse().unwrap()));
        assert_eq!(
            c.resolver.static_hosts["mirror.internal"],
            vec!["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
        );
        // Builtin profiles take the global table too.
        let c = ServerConfig::parse("[egress]\npresets = [\"registries\"]", "t.toml").unwrap();
        assert_eq!(c.profiles["gvisor"].egress.presets, vec!["registries"]);

        let e = ServerConfig::parse(
            "[[egress.allow]]\nname = \"all-com\"\ndomains = [\"*.com\"]",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            e.message.contains("[egress]") && e.message.contains("all-com"),
            "{e}"
        );
        let e = ServerConfig::parse(
            "[profiles.x.egress]\npresets = [\"no-such-preset\"]",
            "t.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("[profiles.x].egress"), "{e}");
        let e = ServerConfig::parse("[egress]\nmode = \"audit\"", "t.toml").unwrap_err();
        assert!(
            e.message.contains("mode") || e.message.contains("audit"),
            "{e}"
        );
        let e = ServerConfig::parse("[resolver]\nupstream = \"nope\"", "t.toml").unwrap_err();
        assert!(e.message.contains("[resolver] upstream"), "{e}");
        let c = ServerConfig::parse(
            "[egress_limits]\nrequests_per_sec = 5\nbytes_out_per_min = \"1M\"",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.egress_limits.requests_per_sec, 5.0);
        assert_eq!(c.egress_limits.bytes_out_per_min, 1 << 20);
        assert_eq!(
            c.egress_limits.max_connections,
            brig_proxy::Limits::default().max_connections
        );
        let e = ServerConfig::parse("[egress_limits]\nrequests_per_sec = 0", "t.toml").unwrap_err();
        assert!(
            e.message.contains("[egress_limits] requests_per_sec"),
            "{e}"
        );
    }
}
