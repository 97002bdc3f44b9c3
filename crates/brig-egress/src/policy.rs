//! The compiled policy and its decisions.
//!
//! [`Policy::compile`] validates an [`EgressConfig`] (names, domains,
//! wildcards against the public suffix list, ports, methods, paths) and
//! builds two label tries, one for allow rules and one for deny rules, keyed
//! by labels from the right (`com` → `example` → `www`). A lookup walks the
//! host's labels once: O(labels) hash lookups, no allocation, independent of
//! the number of rules.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::config::{AllowRule, DenyRule, EgressConfig, Mode};
use crate::dns::{DnsAnswer, DnsGuard, DnsRefusal};
use crate::host::{Host, HostError};
use crate::lists;
use crate::rules;
use crate::ssrf::{SsrfDenial, SsrfGuard};

/// A policy that failed to load. Every variant names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("egress policy: {0}")]
    Toml(String),
    #[error("egress rule {rule:?}: the wildcard {domain:?} spans the public suffix {suffix:?}, so it would allow hosts anyone can register; list the exact hosts, or set allow_public_suffix = true on this rule if that is really meant")]
    PublicSuffixWildcard {
        rule: String,
        domain: String,
        suffix: String,
    },
    #[error("egress rule {rule:?}: {domain:?} is not a valid domain: {error}")]
    BadDomain {
        rule: String,
        domain: String,
        error: HostError,
    },
    #[error("egress rule {rule:?}: {domain:?}: a wildcard is only allowed as a whole leading label (\"*.example.com\")")]
    BadWildcard { rule: String, domain: String },
    #[error("egress rule {rule:?}: {domain:?} is an IP address; rules name hosts (trusted networks go in [egress.ssrf] trusted_cidrs)")]
    IpInRule { rule: String, domain: String },
    #[error("egress rule {rule:?}: the name is used by more than one rule")]
    DuplicateName { rule: String },
    #[error("egress rule {rule:?}: a name is 1-64 characters of a-z, 0-9, '.', '_' and '-' (and not a built-in rule name)")]
    BadName { rule: String },
    #[error("egress rule {rule:?}: `{key}` is empty; leave it out to mean any")]
    EmptyList { rule: String, key: &'static str },
    #[error("egress rule {rule:?}: port 0 is not a port")]
    BadPort { rule: String },
    #[error("egress rule {rule:?}: {method:?} is not an HTTP method token")]
    BadMethod { rule: String, method: String },
    #[error("egress rule {rule:?}: the path prefix {path:?} must start with '/' and be in normal form (no dot segments, no encoded '/', no query)")]
    BadPath { rule: String, path: String },
    #[error("egress: unknown preset {0:?} (known: registries)")]
    UnknownPreset(String),
    #[error("egress: disable_default_deny names {0:?}, which is not a shipped deny rule")]
    UnknownDefaultDeny(String),
    #[error("egress: default_ports is empty or holds port 0")]
    NoDefaultPorts,
    #[error("egress.dns: {0}")]
    BadDns(&'static str),
}

/// One request to judge. `method` and `path` are `None` when the request
/// is not visible (an opaque CONNECT tunnel, a transparent TLS connection
/// judged by SNI).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub host: &'a Host,
    pub port: u16,
    pub method: Option<&'a str>,
    /// The request target's path (origin form); a query or fragment is
    /// ignored.
    pub path: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A connection-level request (no method or path visible).
    pub fn new(host: &'a Host, port: u16) -> Request<'a> {
        Request {
            host,
            port,
            method: None,
            path: None,
        }
    }

    /// The same request with a visible HTTP method and path.
    pub fn http(host: &'a Host, port: u16, method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            host,
            port,
            method: Some(method),
            path: Some(path),
        }
    }
}

/// The rule that made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleId<'p> {
    /// An allow rule (from config or a preset), by name.
    Allow(&'p str),
    /// A deny rule (from config or the shipped deny-list), by name.
    Deny(&'p str),
    /// A built-in rule: `default-deny`, `ip-literal`, `invalid-host`,
    /// `dns-*`, `ssrf:*` (see [`rules`](crate::rules)).
    Builtin(&'static str),
}

impl<'p> RuleId<'p> {
    /// The rule's name, as journaled.
    pub fn as_str(&self) -> &'p str {
        match self {
            RuleId::Allow(n) | RuleId::Deny(n) => n,
            RuleId::Builtin(n) => n,
        }
    }
}

impl fmt::Display for RuleId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request could not show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unseen {
    Method,
    Path,
}

/// Why a decision came out as it did. Text is made on demand
/// ([`Decision::reason_text`]), so deciding allocates nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// An allow rule matched host, port, method and path.
    Allowed,
    /// No allow rule names the host.
    NoRule,
    /// A deny rule matched.
    DenyListed,
    /// The rule names the host but not this port.
    PortNotAllowed,
    /// The rule names the host but not this method.
    MethodNotAllowed,
    /// The rule names the host but no prefix matches the path.
    PathNotAllowed,
    /// The path is not in normal form (dot segments, encoded '/', ...).
    PathNotNormal,
    /// The rule restricts methods or paths, and the request does not show
    /// them.
    NotVisible(Unseen),
    /// The host is an IP literal; rules name hosts.
    IpLiteral,
    /// The host did not normalize.
    InvalidHost(HostError),
    /// A DNS tunnel heuristic refused the query.
    Dns(DnsRefusal),
    /// The SSRF guard refused an address.
    Ssrf(SsrfDenial),
    /// The TLS SNI or the `Host` header names another host than the
    /// CONNECT target (domain fronting); `claimed` is what it named.
    Mismatch { source: NameSource, claimed: String },
}

/// Where a second name for a connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameSource {
    /// The TLS ClientHello's server name.
    Sni,
    /// The HTTP `Host` header (or an absolute URI's authority).
    HostHeader,
}

/// A decision, naming the rule that made it. Borrowed from the [`Policy`]
/// (rule names are not copied).
#[derive(Clone, Debug)]
pub struct Decision<'p> {
    /// Whether the request may proceed (in report mode, also when it would
    /// be denied).
    pub allowed: bool,
    /// Report mode only: enforce mode would have denied this.
    pub would_deny: bool,
    /// The rule that decided (for `allowed` in report mode: the rule that
    /// would have denied).
    pub rule: RuleId<'p>,
    pub reason: Reason,
    /// Whether a rule that matched the host and port restricts methods or
    /// paths, so that the proxy has to see inside the request to judge it
    /// fully (see [`Policy::needs_inspection`]).
    pub needs_inspection: bool,
    source: Option<&'p Compiled>,
    defaults: &'p [u16],
}

/// A decision as text, for a 403 body, `brig session show` and the
/// journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub would_deny: bool,
    pub rule: String,
    pub reason: String,
    /// Present when the request is (or would be) denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how_to_request_access: Option<String>,
}

impl Explanation {
    /// The body of a 403 response: one paragraph a person or an agent can
    /// act on.
    pub fn to_text(&self) -> String {
        let mut s = format!("brig egress: {} (rule: {})\n", self.reason, self.rule);
        if let Some(h) = &self.how_to_request_access {
            s.push_str(h);
            s.push('\n');
        }
        s
    }
}

/// A DNS query's decision: what to answer, and the decision behind it.
#[derive(Clone, Debug)]
pub struct DnsDecision<'p> {
    pub answer: DnsAnswer,
    pub decision: Decision<'p>,
}

#[derive(Debug)]
struct Compiled {
    name: String,
    deny: bool,
    /// Where it came from, for explanations.
    origin: Origin,
    patterns: Vec<String>,
    ports: Option<Vec<u16>>,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Config,
    Preset(&'static str),
    Shipped(&'static str),
}

impl Compiled {
    fn port_ok(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }
    fn narrows(&self) -> bool {
        self.methods.is_some() || self.paths.is_some()
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, u32>,
    /// Rules naming exactly this domain.
    exact: Vec<u32>,
    /// Rules naming `*.` this domain (hosts strictly under it).
    under: Vec<u32>,
}

#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
}

impl Trie {
    fn new() -> Trie {
        Trie {
            nodes: vec![Node::default()],
        }
    }

    fn insert(&mut self, domain: &str, wildcard: bool, rule: u32) {
        let mut at = 0usize;
        for label in domain.rsplit('.') {
            at = match self.nodes[at].children.get(label) {
                Some(&n) => n as usize,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[at].children.insert(label.into(), n as u32);
                    n
                }
            };
        }
        let list = if wildcard {
            &mut self.nodes[at].under
        } else {
            &mut self.nodes[at].exact
        };
        if !list.contains(&rule) {
            list.push(rule);
        }
    }

    /// Call `f` with every rule matching `host`, least specific first.
    fn walk(&self, host: &str, mut f: impl FnMut(u32)) {
        let mut node = &self.nodes[0];
        let mut rest = host;
        loop {
            let (left, label) = match rest.rfind('.') {
                Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
                None => (None, rest),
            };
            let Some(&next) = node.children.get(label) else {
                return;
            };
            node = &self.nodes[next as usize];
            match left {
                None => {
                    node.exact.iter().for_each(|&r| f(r));
                    return;
                }
                Some(l) => {
                    node.under.iter().for_each(|&r| f(r));
                    rest = l;
                }
            }
        }
    }
}

/// The compiled egress policy: immutable, `Send + Sync`, shared by the
/// proxy and the resolver of every session that uses it.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    default_ports: Vec<u16>,
    rules: Vec<Compiled>,
    allow: Trie,
    deny: Trie,
    ssrf: SsrfGuard,
    dns: DnsGuard,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && !rules::BUILTIN.contains(&n)
        && !rules::PROXY.contains(&n)
}

fn is_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A wildcard's base spans a public suffix when the base itself is one
/// (`com`, `co.uk`, `github.io`, `s3.amazonaws.com`). An unknown TLD counts
/// as a public suffix (the list's implicit `*` rule).
fn public_suffix_of(base: &str) -> Option<String> {
    match psl::suffix(base.as_bytes()) {
        Some(s) if s.as_bytes().len() == base.len() => Some(base.to_string()),
        Some(_) => None,
        None => Some(base.to_string()),
    }
}

struct Spec<'a> {
    name: &'a str,
    deny: bool,
    origin: Origin,
    domains: Cow<'a, [String]>,
    ports: Option<&'a [u16]>,
    methods: Option<&'a [String]>,
    paths: Option<&'a [String]>,
    allow_public_suffix: bool,
}

impl Policy {
    /// Validate and compile. Errors name the rule.
    pub fn compile(cfg: &EgressConfig) -> Result<Policy, PolicyError> {
        if cfg.default_ports.is_empty() || cfg.default_ports.contains(&0) {
            return Err(PolicyError::NoDefaultPorts);
        }
        let dns = &cfg.dns;
        if !(1..=63).contains(&dns.max_label_len) {
            return Err(PolicyError::BadDns("max_label_len must be 1..=63"));
        }
        if !(1..=253).contains(&dns.max_name_len) {
            return Err(PolicyError::BadDns("max_name_len must be 1..=253"));
        }
        if dns.entropy_min_len == 0 || dns.hex_run_min == 0 {
            return Err(PolicyError::BadDns(
                "entropy_min_len and hex_run_min must be at least 1",
            ));
        }
        if !(dns.entropy_threshold.is_finite() && dns.entropy_threshold > 0.0) {
            return Err(PolicyError::BadDns(
                "entropy_threshold must be a positive number of bits",
            ));
        }
        let mut specs: Vec<Spec> = Vec::new();
        for r in &cfg.allow {
            if !valid_name(&r.name) {
                return Err(PolicyError::BadName {
                    rule: r.name.clone(),
                });
            }
            specs.push(allow_spec(r));
        }
        for r in &cfg.deny {
            if !valid_name(&r.name) {
                return Err(PolicyError::BadName {
                    rule: r.name.clone(),
                });
            }
            specs.push(deny_spec(r));
        }
        for p in &cfg.presets {
            let preset = lists::preset(p).ok_or_else(|| PolicyError::UnknownPreset(p.clone()))?;
            for pr in preset.rules {
                specs.push(Spec {
                    name: pr.name,
                    deny: false,
                    origin: Origin::Preset(preset.name),
                    domains: Cow::Owned(pr.domains.iter().map(|d| d.to_string()).collect()),
                    ports: pr.ports,
                    methods: None,
                    paths: None,
                    allow_public_suffix: false,
                });
            }
        }
        for d in &cfg.disable_default_deny {
            if !lists::DEFAULT_DENY.iter().any(|s| s.name == d) {
                return Err(PolicyError::UnknownDefaultDeny(d.clone()));
            }
        }
        if cfg.default_deny_list {
            for s in lists::DEFAULT_DENY {
                if cfg.disable_default_deny.iter().any(|d| d == s.name) {
                    continue;
                }
                let mut domains: Vec<String> = s.domains.iter().map(|d| d.to_string()).collect();
                if s.name == "exfil/object-storage" {
                    domains.extend(lists::regional_object_storage());
                }
                specs.push(Spec {
                    name: s.name,
                    deny: true,
                    origin: Origin::Shipped(s.why),
                    domains: Cow::Owned(domains),
                    ports: None,
                    methods: None,
                    paths: None,
                    allow_public_suffix: true,
                });
            }
        }

        let mut policy = Policy {
            mode: cfg.mode,
            default_ports: cfg.default_ports.clone(),
            rules: Vec::with_capacity(specs.len()),
            allow: Trie::new(),
            deny: Trie::new(),
            ssrf: SsrfGuard::new(&cfg.ssrf),
            dns: DnsGuard::new(&cfg.dns),
        };
        let mut names: HashMap<&str, ()> = HashMap::new();
        for spec in &specs {
            if names.insert(spec.name, ()).is_some() {
                return Err(PolicyError::DuplicateName {
                    rule: spec.name.to_string(),
                });
            }
            let compiled = compile_rule(spec, &cfg.default_ports)?;
            let idx = policy.rules.len() as u32;
            let trie = if spec.deny {
                &mut policy.deny
            } else {
                &mut policy.allow
            };
            for p in &compiled.patterns {
                match p.strip_prefix("*.") {
                    Some(base) => trie.insert(base, true, idx),
                    None => trie.insert(p, false, idx),
                }
            }
            policy.rules.push(compiled);
        }
        Ok(policy)
    }

    /// Parse TOML (the body of `[egress]`) and compile.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        Policy::compile(&EgressConfig::from_toml(text)?)
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The SSRF guard configured with this policy.
    pub fn ssrf(&self) -> &SsrfGuard {
        &self.ssrf
    }

    /// The DNS tunnel guard configured with this policy.
    pub fn dns_guard(&self) -> &DnsGuard {
        &self.dns
    }

    /// The names of all rules, allow and deny, in load order.
    pub fn rule_names(&self) -> impl Iterator<Item = (&str, bool)> {
        self.rules.iter().map(|r| (r.name.as_str(), r.deny))
    }

    fn decision<'s>(
        &'s self,
        allowed: bool,
        rule: RuleId<'s>,
        reason: Reason,
        source: Option<&'s Compiled>,
    ) -> Decision<'s> {
        let rule = match rule {
            RuleId::Allow(_) | RuleId::Deny(_) => {
                let s = source.expect("named rules carry their source");
                if s.deny {
                    RuleId::Deny(&s.name)
                } else {
                    RuleId::Allow(&s.name)
                }
            }
            RuleId::Builtin(b) => RuleId::Builtin(b),
        };
        let relaxable = match &reason {
            Reason::NoRule
            | Reason::PortNotAllowed
            | Reason::MethodNotAllowed
            | Reason::PathNotAllowed
            | Reason::PathNotNormal
            | Reason::NotVisible(_)
            | Reason::IpLiteral => true,
            Reason::Dns(r) => r.relaxed_by_report(),
            _ => false,
        };
        let defaults = self.default_ports.as_slice();
        if !allowed && relaxable && self.mode == Mode::Report {
            return Decision {
                allowed: true,
                would_deny: true,
                rule,
                reason,
                needs_inspection: false,
                source,
                defaults,
            };
        }
        Decision {
            allowed,
            would_deny: false,
            rule,
            reason,
            needs_inspection: false,
            source,
            defaults,
        }
    }

    /// Judge one connection or request. Pure and cheap: two trie walks over
    /// the host's labels; allocates only when the path has percent-escapes.
    pub fn decide(&self, req: &Request<'_>) -> Decision<'_> {
        let host = match req.host {
            Host::Ip(_) => {
                return self.decision(
                    false,
                    RuleId::Builtin(rules::IP_LITERAL),
                    Reason::IpLiteral,
                    None,
                )
            }
            Host::Domain(d) => d.as_str(),
        };
        let path = match req.path.map(normalize_path) {
            Some(Ok(p)) => Some(p),
            Some(Err(PathError)) => None,
            None => None,
        };
        let bad_path = req.path.is_some() && path.is_none();
        let mut inspect = false;

        // The deny-list always wins: the most specific matching deny rule.
        let mut denied: Option<u32> = None;
        let mut hard_deny = false;
        self.deny.walk(host, |i| {
            let r = &self.rules[i as usize];
            if !r.port_ok(req.port) {
                return;
            }
            inspect |= r.narrows();
            let method_hit = match (&r.methods, req.method) {
                (None, _) => true,
                (Some(_), None) => true,
                (Some(ms), Some(m)) => ms.iter().any(|x| x.eq_ignore_ascii_case(m)),
            };
            let path_hit = match (&r.paths, &path) {
                (None, _) => true,
                (Some(_), None) => true,
                (Some(ps), Some(p)) => ps.iter().any(|x| prefix_match(x, p, true)),
            };
            if method_hit && path_hit {
                denied = Some(i);
                // Denied whatever the request shows: inspection cannot help.
                hard_deny |= !r.narrows() || (req.method.is_some() && path.is_some());
            }
        });
        if let Some(i) = denied {
            let r = &self.rules[i as usize];
            let mut d = self.decision(false, RuleId::Deny(""), Reason::DenyListed, Some(r));
            d.needs_inspection = !hard_deny;
            return d;
        }

        // Allow rules: any that passes allows (the most specific is named);
        // otherwise the most specific that named the host explains.
        let mut pass: Option<u32> = None;
        let mut fail: Option<(u32, Reason)> = None;
        self.allow.walk(host, |i| {
            let r = &self.rules[i as usize];
            if r.port_ok(req.port) {
                inspect |= r.narrows();
            }
            match check_allow(r, req, path.as_deref(), bad_path) {
                Ok(()) => pass = Some(i),
                Err(reason) => {
                    // Keep the most informative failure: a rule that got
                    // past the port check beats one that did not.
                    let better = match &fail {
                        None => true,
                        Some((_, Reason::PortNotAllowed)) => true,
                        Some(_) => reason != Reason::PortNotAllowed,
                    };
                    if better {
                        fail = Some((i, reason));
                    }
                }
            }
        });
        let mut d = match (pass, fail) {
            (Some(i), _) => self.decision(
                true,
                RuleId::Allow(""),
                Reason::Allowed,
                Some(&self.rules[i as usize]),
            ),
            (None, Some((i, reason))) => self.decision(
                false,
                RuleId::Allow(""),
                reason,
                Some(&self.rules[i as usize]),
            ),
            (None, None) => self.decision(
                false,
                RuleId::Builtin(rules::DEFAULT_DENY),
                Reason::NoRule,
                None,
            ),
        };
        // Inspection matters only when seeing the request could change the
        // answer: not when a rule already allows the opaque connection.
        d.needs_inspection = inspect && pass.is_none();
        d
    }

    /// Normalize a raw host and judge the request; an invalid host is a
    /// denial by `invalid-host` (in every mode).
    pub fn decide_raw(
        &self,
        host: &str,
        port: u16,
        method: Option<&str>,
        path: Option<&str>,
    ) -> (Option<Host>, Decision<'_>) {
        match Host::parse(host) {
            Ok(h) => {
                let d = self.decide(&Request {
                    host: &h,
                    port,
                    method,
                    path,
                });
                (Some(h), d)
            }
            Err(e) => (
                None,
                self.decision(
                    false,
                    RuleId::Builtin(rules::INVALID_HOST),
                    Reason::InvalidHost(e),
                    None,
                ),
            ),
        }
    }

    /// Whether judging `host:port` fully needs the request's method and
    /// path (some matching rule restricts them): the proxy should inspect
    /// such a tunnel instead of passing it through opaque.
    pub fn needs_inspection(&self, host: &Host, port: u16) -> bool {
        self.decide(&Request::new(host, port)).needs_inspection
    }

    /// Whether a name may be resolved at all (DNS): denied by a deny rule
    /// that covers the whole host (no ports, methods or paths), allowed by
    /// any allow rule naming the host on any port, else `default-deny`.
    pub fn decide_name(&self, host: &Host) -> Decision<'_> {
        let name = match host {
            Host::Ip(_) => {
                return self.decision(
                    false,
                    RuleId::Builtin(rules::IP_LITERAL),
                    Reason::IpLiteral,
                    None,
                )
            }
            Host::Domain(d) => d.as_str(),
        };
        let mut denied = None;
        self.deny.walk(name, |i| {
            let r = &self.rules[i as usize];
            if r.ports.is_none() && !r.narrows() {
                denied = Some(i);
            }
        });
        if let Some(i) = denied {
            return self.decision(
                false,
                RuleId::Deny(""),
                Reason::DenyListed,
                Some(&self.rules[i as usize]),
            );
        }
        let mut allowed = None;
        self.allow.walk(name, |i| allowed = Some(i));
        match allowed {
            Some(i) => self.decision(
                true,
                RuleId::Allow(""),
                Reason::Allowed,
                Some(&self.rules[i as usize]),
            ),
            None => self.decision(
                false,
                RuleId::Builtin(rules::DEFAULT_DENY),
                Reason::NoRule,
                None,
            ),
        }
    }

    /// Judge a DNS query from a session: the name is normalized, then the
    /// tunnel heuristics, then the query type, then [`Policy::decide_name`].
    pub fn decide_dns(&self, qname: &str, qtype: u16) -> DnsDecision<'_> {
        let host = match Host::parse(qname) {
            Ok(h) => h,
            Err(e) => {
                let decision = self.decision(
                    false,
                    RuleId::Builtin(rules::INVALID_HOST),
                    Reason::InvalidHost(e),
                    None,
                );
                return DnsDecision {
                    answer: DnsAnswer::Refused,
                    decision,
                };
            }
        };
        let Host::Domain(name) = &host else {
            let decision = self.decision(
                false,
                RuleId::Builtin(rules::IP_LITERAL),
                Reason::IpLiteral,
                None,
            );
            return DnsDecision {
                answer: DnsAnswer::NxDomain,
                decision,
            };
        };
        let refusal = self.dns.check(name, qtype).err();
        if let Some(r) = refusal {
            let answer = r.answer();
            let decision = self.decision(false, RuleId::Builtin(r.rule()), Reason::Dns(r), None);
            if decision.allowed {
                // Report mode let a name heuristic through: judge the name.
                let name_decision = self.decide_name(&host);
                let answer = if name_decision.allowed {
                    DnsAnswer::Resolve
                } else {
                    DnsAnswer::NxDomain
                };
                return DnsDecision {
                    answer,
                    decision: Decision {
                        would_deny: true,
                        ..decision
                    },
                };
            }
            return DnsDecision { answer, decision };
        }
        let decision = self.decide_name(&host);
        let answer = if decision.allowed {
            DnsAnswer::Resolve
        } else {
            DnsAnswer::NxDomain
        };
        DnsDecision { answer, decision }
    }

    /// A connection names its destination twice: the CONNECT target (or
    /// the proxy request's authority) and then the TLS SNI or the `Host`
    /// header inside. Both must name the same host (and a `Host` header
    /// with a port, the same port), or the request is denied by
    /// `sni-mismatch` / `host-mismatch`, in every mode: a mismatch is domain
    /// fronting, not an allowlist miss. (A transparent connection has no
    /// CONNECT target: the proxy judges its SNI or `Host` and resolves that
    /// name itself, ignoring the address the sandbox dialed.)
    pub fn check_same_host(
        &self,
        target: &Host,
        target_port: u16,
        claimed: &str,
        source: NameSource,
    ) -> Result<(), Decision<'_>> {
        let parsed = match source {
            NameSource::Sni => Host::parse(claimed).map(|h| (h, target_port)),
            NameSource::HostHeader => crate::host::parse_authority(claimed, Some(target_port)),
        };
        let (host, port) = match parsed {
            Ok(hp) => hp,
            Err(e) => {
                return Err(self.decision(
                    false,
                    RuleId::Builtin(rules::INVALID_HOST),
                    Reason::InvalidHost(e),
                    None,
                ))
            }
        };
        if &host == target && port == target_port {
            return Ok(());
        }
        let rule = match source {
            NameSource::Sni => rules::SNI_MISMATCH,
            NameSource::HostHeader => rules::HOST_MISMATCH,
        };
        Err(self.decision(
            false,
            RuleId::Builtin(rule),
            Reason::Mismatch {
                source,
                claimed: claimed.to_string(),
            },
            None,
        ))
    }

    /// A decision for an SSRF denial (always enforced), for the journal and
    /// the 403 body.
    pub fn ssrf_decision(&self, denial: SsrfDenial) -> Decision<'_> {
        Decision {
            allowed: false,
            would_deny: false,
            rule: RuleId::Builtin(denial.rule()),
            reason: Reason::Ssrf(denial),
            needs_inspection: false,
            source: None,
            defaults: &self.default_ports,
        }
    }
}

fn ports_text(p: &[u16]) -> String {
    let v: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn allow_spec(r: &AllowRule) -> Spec<'_> {
    Spec {
        name: &r.name,
        deny: false,
        origin: Origin::Config,
        domains: Cow::Borrowed(&r.domains),
        ports: r.ports.as_deref(),
        methods: r.methods.as_deref(),
        paths: r.paths.as_deref(),
        allow_public_suffix: r.allow_public_suffix,
    }
}

fn deny_spec(r: &DenyRule) -> Spec<'_> {
    Spec {
        name: &r.name,
        deny: true,
        origin: Origin::Config,
        domains: Cow::Borrowed(&r.domains),
        ports: r.ports.as_deref(),
        methods: r.methods.as_deref(),
        paths: r.paths.as_deref(),
        allow_public_suffix: true,
    }
}

fn compile_rule(spec: &Spec<'_>, default_ports: &[u16]) -> Result<Compiled, PolicyError> {
    let rule = || spec.name.to_string();
    if spec.domains.is_empty() {
        return Err(PolicyError::EmptyList {
            rule: rule(),
            key: "domains",
        });
    }
    let mut patterns = Vec::with_capacity(spec.domains.len());
    for raw in spec.domains.iter() {
        let (wild, base) = match raw.strip_prefix("*.") {
            Some(b) => (true, b),
            None => (false, raw.as_str()),
        };
        if base.contains('*') {
            return Err(PolicyError::BadWildcard {
                rule: rule(),
                domain: raw.clone(),
            });
        }
        let host = Host::parse(base).map_err(|error| match error {
            HostError::BadIpv4 | HostError::BadIpv6 => PolicyError::IpInRule {
                rule: rule(),
                domain: raw.clone(),
            },
            error => PolicyError::BadDomain {
                rule: rule(),
                domain: raw.clone(),
                error,
            },
        })?;
        let base = match host {
            Host::Domain(d) => d,
            Host::Ip(_) => {
                return Err(PolicyError::IpInRule {
                    rule: rule(),
                    domain: raw.clone(),
                })
            }
        };
        if wild && !spec.allow_public_suffix {
            if let Some(suffix) = public_suffix_of(&base) {
                return Err(PolicyError::PublicSuffixWildcard {
                    rule: rule(),
                    domain: raw.clone(),
                    suffix,
                });
            }
        }
        patterns.push(if wild { format!("*.{base}") } else { base });
    }
    let ports = match spec.ports {
        Some([]) => {
            return Err(PolicyError::EmptyList {
                rule: rule(),
                key: "ports",
            })
        }
        Some(p) if p.contains(&0) => return Err(PolicyError::BadPort { rule: rule() }),
        Some(p) => Some(p.to_vec()),
        None if spec.deny => None,
        None => Some(default_ports.to_vec()),
    };
    let methods = match spec.methods {
        Some([]) => {
            return Err(PolicyError::EmptyList {
                rule: rule(),
                key: "methods",
            })
        }
        Some(ms) => {
            let mut out = Vec::with_capacity(ms.len());
            for m in ms {
                if !is_token(m) {
                    return Err(PolicyError::BadMethod {
                        rule: rule(),
                        method: m.clone(),
                    });
                }
                out.push(m.to_ascii_uppercase());
            }
            Some(out)
        }
        None => None,
    };
    let paths = match spec.paths {
        Some([]) => {
            return Err(PolicyError::EmptyList {
                rule: rule(),
                key: "paths",
            })
        }
        Some(ps) => {
            let mut out = Vec::with_capacity(ps.len());
            for p in ps {
                match normalize_path(p) {
                    Ok(n) if n == p.as_str() && !p.contains(['?', '#']) => out.push(n.into_owned()),
                    _ => {
                        return Err(PolicyError::BadPath {
                            rule: rule(),
                            path: p.clone(),
                        })
                    }
                }
            }
            Some(out)
        }
        None => None,
    };
    Ok(Compiled {
        name: spec.name.to_string(),
        deny: spec.deny,
        origin: spec.origin,
        patterns,
        ports,
        methods,
        paths,
    })
}

fn check_allow(
    r: &Compiled,
    req: &Request<'_>,
    path: Option<&str>,
    bad_path: bool,
) -> Result<(), Reason> {
    if !r.port_ok(req.port) {
        return Err(Reason::PortNotAllowed);
    }
    if let Some(ms) = &r.methods {
        match req.method {
            None => return Err(Reason::NotVisible(Unseen::Method)),
            Some(m) if !ms.iter().any(|x| x == m) => return Err(Reason::MethodNotAllowed),
            Some(_) => {}
        }
    }
    if let Some(ps) = &r.paths {
        if bad_path {
            return Err(Reason::PathNotNormal);
        }
        match path {
            None => return Err(Reason::NotVisible(Unseen::Path)),
            Some(p) if !ps.iter().any(|x| prefix_match(x, p, false)) => {
                return Err(Reason::PathNotAllowed)
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Segment-aware prefix match: `/org` matches `/org`, `/org/x`, `/org;x`,
/// not `/orgx`; `/org/` matches everything under it. Deny rules compare
/// ASCII case-insensitively (a case-insensitive server must not slip past
/// one), allow rules exactly.
fn prefix_match(prefix: &str, path: &str, fold: bool) -> bool {
    if path.len() < prefix.len() {
        return false;
    }
    let head = &path.as_bytes()[..prefix.len()];
    let same = if fold {
        head.eq_ignore_ascii_case(prefix.as_bytes())
    } else {
        head == prefix.as_bytes()
    };
    same && (prefix.ends_with('/')
        || path.len() == prefix.len()
        || matches!(path.as_bytes()[prefix.len()], b'/' | b';'))
}

/// The part of a request target that may be logged: the query and
/// fragment (which often carry tokens) are cut off.
pub fn path_for_log(raw: &str) -> &str {
    &raw[..raw.find(['?', '#']).unwrap_or(raw.len())]
}

/// A request path that is not in normal form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the path is not in normal form")]
pub struct PathError;

/// The path as rules see it: the query and fragment dropped, percent-escapes
/// of unreserved characters decoded (RFC 3986 §6.2.2.2) and other escapes
/// upper-cased. Refused (`Err`): not starting with `/`, controls, spaces,
/// backslashes, encoded `/`, `\` or NUL, malformed escapes, and dot segments
/// (`.`, `..`, `..;x`) before or after decoding.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let p = &raw[..end];
    if !p.starts_with('/') {
        return Err(PathError);
    }
    if p.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'\\') {
        return Err(PathError);
    }
    let out: Cow<str> = if p.contains('%') {
        let b = p.as_bytes();
        let mut s = String::with_capacity(p.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) else {
                    return Err(PathError);
                };
                let v = (h * 16 + l) as u8;
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    s.push(v as char);
                } else if matches!(v, b'/' | b'\\' | 0) {
                    return Err(PathError);
                } else {
                    s.push('%');
                    s.push(b[i + 1].to_ascii_uppercase() as char);
                    s.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
            } else {
                // Copy one whole UTF-8 character.
                let ch_len = p[i..].chars().next().map_or(1, |c| c.len_utf8());
                s.push_str(&p[i..i + ch_len]);
                i += ch_len;
            }
        }
        Cow::Owned(s)
    } else {
        Cow::Borrowed(p)
    };
    for seg in out.split('/') {
        let head = seg.split(';').next().unwrap_or(seg);
        if head == "." || head == ".." {
            return Err(PathError);
        }
    }
    Ok(out)
}

impl<'p> Decision<'p> {
    /// Whether the request is refused.
    pub fn denied(&self) -> bool {
        !self.allowed
    }

    /// The reason in words (needs the request for names and numbers).
    pub fn reason_text(&self, host: &str, port: u16, method: Option<&str>) -> String {
        let rule = self.rule.as_str();
        match &self.reason {
            Reason::Allowed => format!("{host}:{port} is allowed by rule {rule:?}"),
            Reason::NoRule => format!("no egress rule allows {host}"),
            Reason::DenyListed => match self.source.map(|s| s.origin) {
                Some(Origin::Shipped(why)) => format!("{host} is on brig's default deny-list ({rule}: {why})"),
                _ => format!("{host} is denied by rule {rule:?}"),
            },
            Reason::PortNotAllowed => {
                let ports = self.source.and_then(|s| s.ports.as_deref()).map(ports_text).unwrap_or_default();
                format!("rule {rule:?} allows {host} on ports {ports}, not on port {port}")
            }
            Reason::MethodNotAllowed => {
                let ms = self.source.and_then(|s| s.methods.as_ref()).map(|m| m.join(", ")).unwrap_or_default();
                format!("rule {rule:?} allows {host} for {ms}, not for {}", method.unwrap_or("?"))
            }
            Reason::PathNotAllowed => {
                let ps = self.source.and_then(|s| s.paths.as_ref()).map(|m| m.join(", ")).unwrap_or_default();
                format!("rule {rule:?} allows {host} only under the paths {ps}")
            }
            Reason::PathNotNormal => format!(
                "rule {rule:?} restricts paths on {host}, and this path is not in normal form (dot segments, encoded '/')"
            ),
            Reason::NotVisible(u) => format!(
                "rule {rule:?} restricts {} on {host}, which this connection does not show (an opaque tunnel)",
                if *u == Unseen::Method { "methods" } else { "paths" }
            ),
            Reason::IpLiteral => format!("{host} is an IP address; egress rules allow host names only"),
            Reason::InvalidHost(e) => format!("the host {host:?} is not valid: {e}"),
            Reason::Dns(r) => format!("DNS query for {host} refused: {r}"),
            Reason::Ssrf(d) => format!("{host} resolves to a refused address: {d}"),
            Reason::Mismatch { source, claimed } => format!(
                "the {} names {claimed:?} but the connection was opened to {host}:{port}",
                if *source == NameSource::Sni { "TLS server name (SNI)" } else { "Host header" }
            ),
        }
    }

    /// How to ask for access, naming the config key to add; `None` when
    /// the request is allowed (and not merely reported).
    pub fn how_to_request_access(
        &self,
        host: &str,
        port: u16,
        method: Option<&str>,
    ) -> Option<String> {
        if self.allowed && !self.would_deny {
            return None;
        }
        let rule = self.rule.as_str();
        let owner = "ask the session's owner to add to brig.toml (or the session's profile)";
        let new_rule = |extra: &str| {
            format!("{owner}:\n  [[egress.allow]]\n  name = \"<name>\"\n  domains = [\"{host}\"]{extra}")
        };
        let origin = self.source.map(|s| s.origin);
        let in_rule = |key: &str, value: String| match origin {
            Some(Origin::Preset(p)) => new_rule(&format!(
                "\n  {key} = {value}\n(rule {rule:?} comes from the preset {p:?}, which cannot be \
                 edited; a new rule adds to it)"
            )),
            _ => format!(
                "ask the session's owner to set {key} = {value} in the [[egress.allow]] rule named \
                 {rule:?} (brig.toml or the session's profile)"
            ),
        };
        Some(match &self.reason {
            Reason::Allowed => return None,
            Reason::NoRule => {
                let ports = if self.default_ports_has(port) { String::new() } else { format!("\n  ports = [{port}]") };
                new_rule(&ports)
            }
            Reason::DenyListed => match origin {
                Some(Origin::Shipped(_)) => format!(
                    "the deny-list wins over every allow rule; if this host is really needed, ask the operator to add \
                     \"{rule}\" to [egress] disable_default_deny in brig.toml (and allow the exact host)"
                ),
                _ => format!("the deny-list wins over every allow rule; ask the operator to narrow or remove the [[egress.deny]] rule named {rule:?}"),
            },
            Reason::PortNotAllowed => {
                let mut ports = self.source.and_then(|s| s.ports.clone()).unwrap_or_default();
                ports.push(port);
                in_rule("ports", ports_text(&ports))
            }
            Reason::MethodNotAllowed => {
                let mut ms = self.source.and_then(|s| s.methods.clone()).unwrap_or_default();
                ms.push(method.unwrap_or("GET").to_ascii_uppercase());
                let v: Vec<String> = ms.iter().map(|m| format!("\"{m}\"")).collect();
                in_rule("methods", format!("[{}]", v.join(", ")))
            }
            Reason::PathNotAllowed => {
                let mut ps = self.source.and_then(|s| s.paths.clone()).unwrap_or_default();
                ps.push("/<prefix>/".to_string());
                let v: Vec<String> = ps.iter().map(|m| format!("\"{m}\"")).collect();
                in_rule("paths", format!("[{}]", v.join(", ")))
            }
            Reason::PathNotNormal => "send the request with a normalized path (no '.' or '..' segments, no encoded '/')".to_string(),
            Reason::NotVisible(_) => format!(
                "send the request through the proxy as plain HTTP or let brig inspect the tunnel; or {owner} a rule for {host} without `methods`/`paths`"
            ),
            Reason::IpLiteral => "name the host instead of its address: rules allow host names, and the SSRF guard judges the addresses they resolve to".to_string(),
            Reason::InvalidHost(_) => "use the host's canonical name (letters, digits, '-', IDNA for other scripts)".to_string(),
            Reason::Dns(r) => match r {
                DnsRefusal::QType(_) => "only A and AAAA lookups are answered inside a session; use the name directly".to_string(),
                DnsRefusal::LabelTooLong { .. } | DnsRefusal::NameTooLong { .. } => {
                    "long DNS names are refused (tunnels use them); if this is a real host, ask the \
                     operator to raise max_label_len / max_name_len in [egress.dns]"
                        .to_string()
                }
                DnsRefusal::EncodedLabel { .. } => {
                    "names that look like encoded data are refused (DNS tunnels); if this is a real \
                     host, ask the operator to raise entropy_min_len (or hex_run_min) in [egress.dns]"
                        .to_string()
                }
            },
            Reason::Ssrf(d) => d.how_to_request_access(),
            Reason::Mismatch { .. } => format!(
                "send the request to the host it names: the CONNECT target, the TLS server name and the Host header must all be {host}"
            ),
        })
    }

    fn default_ports_has(&self, port: u16) -> bool {
        self.defaults.contains(&port)
    }

    /// Everything as text, for a 403 body and the journal.
    pub fn explain(&self, host: &str, port: u16, method: Option<&str>) -> Explanation {
        Explanation {
            allowed: self.allowed,
            would_deny: self.would_deny,
            rule: self.rule.as_str().to_string(),
            reason: self.reason_text(host, port, method),
            how_to_request_access: self.how_to_request_access(host, port, method),
        }
    }

    /// [`Decision::explain`] for a request.
    pub fn explain_request(&self, req: &Request<'_>) -> Explanation {
        self.explain(&req.host.to_string(), req.port, req.method)
    }
}
