//! The egress policy as written in TOML (`[egress]` in brig.toml, and per
//! profile later). [`EgressConfig::compile`](crate::Policy::compile) turns
//! it into a [`Policy`](crate::Policy); every key is in docs/EGRESS.md.

use serde::{Deserialize, Serialize};

use crate::dns::DnsConfig;
use crate::ssrf::SsrfConfig;

/// `enforce` denies; `report` lets allowlist misses through and marks the
/// decision `would_deny` (the deny-list, invalid hosts, SNI/Host mismatches,
/// non-A/AAAA DNS types and the SSRF guard are enforced in both modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

/// The `[egress]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// `enforce` (default) or `report`.
    pub mode: Mode,
    /// Named allow presets to enable, e.g. `["registries"]`.
    pub presets: Vec<String>,
    /// Include brig's shipped deny-list of exfiltration targets (default
    /// true).
    pub default_deny_list: bool,
    /// Shipped deny rules to leave out, by name (e.g.
    /// `["exfil/object-storage"]`).
    pub disable_default_deny: Vec<String>,
    /// Ports an allow rule permits when it sets no `ports` (default
    /// `[80, 443]`).
    pub default_ports: Vec<u16>,
    /// Allow rules (`[[egress.allow]]`).
    pub allow: Vec<AllowRule>,
    /// Deny rules (`[[egress.deny]]`); a matching deny rule always wins.
    pub deny: Vec<DenyRule>,
    /// The SSRF guard (`[egress.ssrf]`).
    pub ssrf: SsrfConfig,
    /// DNS tunnel heuristics (`[egress.dns]`).
    pub dns: DnsConfig,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            mode: Mode::Enforce,
            presets: Vec::new(),
            default_deny_list: true,
            disable_default_deny: Vec::new(),
            default_ports: vec![80, 443],
            allow: Vec::new(),
            deny: Vec::new(),
            ssrf: SsrfConfig::default(),
            dns: DnsConfig::default(),
        }
    }
}

/// One `[[egress.allow]]` rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Unique name; decisions and the journal name the rule by it.
    pub name: String,
    /// `example.com` (exactly that host) or `*.example.com` (every host
    /// strictly under it, not the apex).
    pub domains: Vec<String>,
    /// Ports; default `[egress] default_ports`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// HTTP methods (case-insensitive in config, matched upper-case);
    /// default any. Needs a visible request (plain HTTP, or an inspected
    /// tunnel): an opaque CONNECT does not satisfy a rule that sets this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// URL path prefixes; default any. Same visibility rule as `methods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Let a `*.` wildcard span a public suffix (`*.github.io`). Default
    /// false: such a wildcard is an error when the policy loads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_public_suffix: bool,
}

/// One `[[egress.deny]]` rule. Without `ports`, `methods` and `paths` it
/// denies the host outright (and its name in DNS); with them, only the
/// matching requests (an opaque tunnel whose method or path cannot be seen
/// is denied).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

impl EgressConfig {
    /// Parse the body of an `[egress]` table (its keys at top level, e.g.
    /// `mode = "report"` and `[[allow]]`). brig.toml embeds the same type
    /// as its `egress` field.
    pub fn from_toml(text: &str) -> Result<EgressConfig, crate::PolicyError> {
        toml::from_str(text).map_err(|e| crate::PolicyError::Toml(e.to_string()))
    }
}
