//! brig-egress: the decision layer of brig's default-deny egress (issue 4).
//!
//! No I/O. The egress proxy, the per-session DNS resolver and the
//! transparent redirector (to come) all ask this crate the same questions
//! and get the same answers, each naming the rule that made it and saying
//! how to ask for access. docs/EGRESS.md is the policy reference.
//!
//! # The pieces
//!
//! - [`EgressConfig`]: the `[egress]` table of brig.toml (serde/TOML):
//!   mode (`enforce`/`report`), allow and deny rules, presets, the shipped
//!   deny-list switch, `[egress.ssrf]` and `[egress.dns]`.
//! - [`Policy`]: the compiled, immutable policy (`Send + Sync`, share it in
//!   an `Arc`). [`Policy::compile`] refuses a bad policy with a
//!   [`PolicyError`] naming the rule, including a `*.` wildcard that spans a
//!   public suffix without `allow_public_suffix = true`.
//! - [`Host`]: one canonical form of a destination ([`Host::parse`],
//!   [`parse_authority`]): case, trailing dot, IDNA, every numeric IPv4 form,
//!   IPv6 without zone ids.
//! - [`SsrfGuard`]: which addresses may be dialed
//!   ([`SsrfGuard::check_resolved`]).
//! - [`DnsGuard`]: DNS tunnel heuristics.
//!
//! # How the proxy will use it
//!
//! ```text
//! let policy: Arc<Policy> = Arc::new(Policy::compile(&config.egress)?);
//!
//! // CONNECT host:port (or a transparent connection: host from SNI/Host)
//! let (host, port) = parse_authority(target, None)?;          // invalid-host on error
//! let d = policy.decide(&Request::new(&host, port));
//! // after peeking the ClientHello, and for each Host header inside:
//! policy.check_same_host(&host, port, sni, NameSource::Sni)?;  // sni-mismatch
//! if d.needs_inspection { /* terminate TLS, judge each request with
//!                             Request::http(&host, port, method, path) */ }
//! if d.denied() { reply 403 with d.explain_request(&req).to_text(); journal it }
//! if d.would_deny { journal "would deny" (report mode) and go on }
//!
//! // Resolve once, check every address, dial exactly a checked address.
//! // (An IP literal, allowed only in report mode, is checked as &[ip].)
//! let addrs = resolve(host)?;                                   // one resolution
//! let addrs = policy.ssrf().check_resolved(&addrs)
//!     .map_err(|e| policy.ssrf_decision(e))?;                  // ssrf:<range>
//! connect(addrs[0]) ...
//!
//! // The resolver, for each query from the session:
//! let q = policy.decide_dns(qname, qtype);
//! match q.answer { Resolve => ..., NoData => ..., NxDomain => ..., Refused => ... }
//! journal(q.decision.explain(qname, 53, None));
//! ```
//!
//! [`Policy::decide`] takes a normalized [`Host`] (always from
//! [`Host::parse`]: a hand-built `Host::Domain("Example.COM")` matches no
//! rule, which fails closed) and does two trie walks
//! over its labels (deny-list first, then allow rules): O(labels), no
//! allocation, whatever the number of rules. A [`Decision`] borrows rule
//! names from the policy; its text ([`Decision::explain`]) is built only
//! when it is needed, for a 403 body or the journal.
//!
//! # Not here yet
//!
//! The proxy, the resolver, transparent redirection, per-session rate
//! limits, signed upload URLs and the journal events themselves belong to
//! the wiring that uses this crate; so does merging a profile's `[egress]`
//! over brig.toml's.
//!
//! # Report mode
//!
//! `mode = "report"` lets allowlist misses through (`default-deny`, a port,
//! method or path a rule does not list, an IP literal, and the DNS name
//! heuristics) with `allowed = true, would_deny = true`. The deny-list,
//! invalid hosts, SNI/Host mismatches, non-A/AAAA DNS types and the SSRF
//! guard are enforced in both modes: report mode is for finding the allow
//! rules a workload needs, not for opening the places that are never wanted.

mod config;
pub mod dns;
mod host;
pub mod lists;
mod policy;
pub mod ssrf;

pub use config::{AllowRule, DenyRule, EgressConfig, Mode};
pub use dns::{DnsAnswer, DnsConfig, DnsGuard, DnsRefusal};
pub use host::{parse_authority, Host, HostError};
pub use policy::{
    normalize_path, path_for_log, Decision, DnsDecision, Explanation, NameSource, PathError,
    Policy, PolicyError, Reason, Request, RuleId, Unseen,
};
pub use ssrf::{Cidr, IpClass, IpVerdict, SsrfConfig, SsrfDenial, SsrfGuard};

/// The names of brig's built-in rules (what [`RuleId::Builtin`] carries,
/// besides the `ssrf:<class>` names of [`IpClass::rule`]).
pub mod rules {
    /// No allow rule names the host.
    pub const DEFAULT_DENY: &str = "default-deny";
    /// The destination is an IP literal; rules name hosts.
    pub const IP_LITERAL: &str = "ip-literal";
    /// The host did not normalize.
    pub const INVALID_HOST: &str = "invalid-host";
    /// A DNS query type other than A/AAAA.
    pub const DNS_QTYPE: &str = "dns-qtype";
    /// A DNS label over `max_label_len`.
    pub const DNS_LABEL_LENGTH: &str = "dns-label-length";
    /// A DNS name over `max_name_len`.
    pub const DNS_NAME_LENGTH: &str = "dns-name-length";
    /// A DNS label that looks like encoded data.
    pub const DNS_LABEL_ENTROPY: &str = "dns-label-entropy";
    /// The TLS SNI names another host than the CONNECT target.
    pub const SNI_MISMATCH: &str = "sni-mismatch";
    /// The `Host` header names another host than the CONNECT target or
    /// the proxy request's authority.
    pub const HOST_MISMATCH: &str = "host-mismatch";

    /// The names the egress proxy and resolver (`brig-proxy`) decide by
    /// themselves; a configured rule may not take them either (the
    /// `rate-limit:*` names have a ':', which no configured name can).
    pub const PROXY: &[&str] = &[
        "tls-no-sni",
        "transparent-ip-mismatch",
        "transparent-unknown-address",
        "bad-request",
        "headers-too-large",
        "header-timeout",
        "proxy-protocol",
        "upstream",
        "dns-malformed",
        "dns-qclass",
    ];

    /// Names a configured rule may not take.
    pub const BUILTIN: &[&str] = &[
        DEFAULT_DENY,
        IP_LITERAL,
        INVALID_HOST,
        DNS_QTYPE,
        DNS_LABEL_LENGTH,
        DNS_NAME_LENGTH,
        DNS_LABEL_ENTROPY,
        SNI_MISMATCH,
        HOST_MISMATCH,
    ];
}
