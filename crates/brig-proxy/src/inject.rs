//! Placeholders and real values at the edge (issue 6). The sandbox holds
//! placeholders; for a request to a secret's bound host brig swaps the
//! placeholder for the real value (request line and headers always, the
//! body where the binding says so). A placeholder sent anywhere else, or a
//! known real value (or its encoded forms) sent to a host it is not bound
//! to, blocks the request. Responses are scrubbed the other way: a real
//! value coming back is replaced by its placeholder, so the sandbox never
//! reads one.
//!
//! Nothing here ever formats a value or a placeholder: errors, events and
//! explanations name the secret by its name.

use std::collections::BTreeSet;
use std::io;
use std::time::Duration;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use brig_egress::Explanation;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::{Chunked, Framing, Meter};

/// The rules this module decides by.
pub mod rules {
    /// A placeholder sent to a host its secret is not bound to.
    pub const PLACEHOLDER_EXFIL: &str = "secret:placeholder-exfil";
    /// A known real value (or an encoded form) sent to a host it is not
    /// bound to.
    pub const VALUE_EXFIL: &str = "secret:value-exfil";
    /// A host a secret is bound to must be intercepted, and brig has no CA.
    pub const NO_CA: &str = "secret:no-ca";
}

/// A secret as the proxy needs it: built by the control plane from the
/// session's grants (crate brig-secrets) once per session.
#[derive(Clone)]
pub struct Secret {
    /// What events and errors call it (e.g. `GITHUB_TOKEN`).
    pub name: String,
    /// The string the sandbox holds instead of the value.
    pub placeholder: String,
    /// The real value.
    pub value: String,
    /// Hosts it may be sent to: `api.example.com` exactly, or
    /// `*.example.com` (strictly under it), as in egress rules.
    pub hosts: Vec<String>,
    /// Also replace the placeholder in request bodies (form posts, JSON
    /// token exchanges). Headers and the request line always.
    pub body: bool,
    /// Set `Authorization: <prefix><value>` on requests to a bound host
    /// that carry no Authorization header (e.g. `"Bearer "`).
    pub authorization: Option<String>,
    /// With `authorization`: also replace an Authorization header the
    /// client set itself (not to a placeholder). Off: a client's own
    /// Authorization header is left alone.
    pub override_authorization: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value or the placeholder.
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("body", &self.body)
            .field("authorization", &self.authorization.is_some())
            .field("override_authorization", &self.override_authorization)
            .finish_non_exhaustive()
    }
}

/// Why a set of secrets was refused. Names secrets, never values.
#[derive(Debug, thiserror::Error)]
#[error("secret injection: {0}")]
pub struct SecretError(pub String);

/// Values shorter than this are not looked for in outbound traffic (they
/// would match by chance); placeholders are always looked for.
pub const MIN_SCANNED_VALUE: usize = 8;
/// Placeholders must be at least this long (they are matched anywhere).
pub const MIN_PLACEHOLDER: usize = 12;
/// A body to be rewritten with a Content-Length up to this is buffered
/// and sent with its new length; longer ones are re-chunked.
pub const MAX_BUFFERED_BODY: u64 = 1 << 20;

#[derive(Clone, Debug)]
enum HostPattern {
    Exact(String),
    /// `.example.com`
    Suffix(String),
}

impl HostPattern {
    fn parse(s: &str) -> Option<HostPattern> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let ok = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        match s.strip_prefix("*.") {
            Some(rest) if ok(rest) => Some(HostPattern::Suffix(format!(".{rest}"))),
            None if ok(&s) => Some(HostPattern::Exact(s)),
            _ => None,
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(sfx) => host.len() > sfx.len() && host.ends_with(sfx.as_str()),
        }
    }
}

struct Entry {
    name: String,
    /// `None` for a value brig knows but this session holds no
    /// placeholder for (scanned for, never injected).
    placeholder: Option<Vec<u8>>,
    value: Vec<u8>,
    hosts: Vec<HostPattern>,
    body: bool,
    authorization: Option<Vec<u8>>,
    override_authorization: bool,
    /// What replaces the value in responses.
    mask: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Placeholder,
    Value,
}

/// One session's secrets, compiled: one Aho-Corasick automaton over every
/// placeholder and every form of every known value.
pub struct Placeholders {
    entries: Vec<Entry>,
    ac: Option<AhoCorasick>,
    pats: Vec<(usize, Kind)>,
    max_len: usize,
    /// Placeholders and raw values, ASCII case folded: for host names
    /// (normalized to lower case) and for scrubbing events.
    folded: Option<AhoCorasick>,
    folded_pats: Vec<usize>,
}

impl std::fmt::Debug for Placeholders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Placeholders")
            .field("secrets", &names)
            .finish_non_exhaustive()
    }
}

fn hex(v: &[u8], upper: bool) -> String {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut s = String::with_capacity(v.len() * 2);
    for b in v {
        s.push(digits[(b >> 4) as usize] as char);
        s.push(digits[(b & 15) as usize] as char);
    }
    s
}

fn header_safe(v: &[u8]) -> bool {
    !v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

impl Placeholders {
    /// The session's secrets.
    pub fn new(secrets: Vec<Secret>) -> Result<Placeholders, SecretError> {
        Placeholders::with_known_values(secrets, Vec::new())
    }

    /// The session's secrets, plus `(name, value)` pairs brig knows and
    /// this session must not send anywhere (other credentials of the
    /// deployment): scanned for in outbound traffic, never injected.
    pub fn with_known_values(
        secrets: Vec<Secret>,
        known: Vec<(String, String)>,
    ) -> Result<Placeholders, SecretError> {
        let mut entries = Vec::new();
        for s in secrets {
            let bad = |why: &str| SecretError(format!("secret `{}`: {why}", s.name));
            if s.name.is_empty() || !header_safe(s.name.as_bytes()) {
                return Err(SecretError("a secret without a usable name".into()));
            }
            if s.placeholder.len() < MIN_PLACEHOLDER {
                return Err(bad(&format!(
                    "its placeholder is shorter than {MIN_PLACEHOLDER} bytes"
                )));
            }
            if s.value.is_empty() {
                return Err(bad("its value is empty"));
            }
            // Both go into headers: a line break would split the request.
            if !header_safe(s.value.as_bytes()) || !header_safe(s.placeholder.as_bytes()) {
                return Err(bad(
                    "its value or placeholder holds a line break or NUL, which cannot go in a header",
                ));
            }
            if s.placeholder.contains(&s.value) || s.value.contains(&s.placeholder) {
                return Err(bad("its placeholder and value contain one another"));
            }
            if s.hosts.is_empty() {
                return Err(bad("it is bound to no host"));
            }
            let mut hosts = Vec::new();
            for h in &s.hosts {
                hosts.push(
                    HostPattern::parse(h)
                        .ok_or_else(|| bad(&format!("the host pattern {h:?} is not valid")))?,
                );
            }
            if let Some(a) = &s.authorization {
                if !header_safe(a.as_bytes()) {
                    return Err(bad("its authorization prefix holds a line break"));
                }
            }
            entries.push(Entry {
                mask: s.placeholder.clone().into_bytes(),
                name: s.name,
                placeholder: Some(s.placeholder.into_bytes()),
                value: s.value.into_bytes(),
                hosts,
                body: s.body,
                authorization: s.authorization.map(String::into_bytes),
                override_authorization: s.override_authorization,
            });
        }
        for (name, value) in known {
            if value.len() < MIN_SCANNED_VALUE {
                continue;
            }
            entries.push(Entry {
                mask: format!("[REDACTED:secret:{name}]").into_bytes(),
                name,
                placeholder: None,
                value: value.into_bytes(),
                hosts: Vec::new(),
                body: false,
                authorization: None,
                override_authorization: false,
            });
        }
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut pats = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(p) = &e.placeholder {
                patterns.push(p.clone());
                pats.push((i, Kind::Placeholder));
            }
            if e.value.len() >= MIN_SCANNED_VALUE {
                let mut forms = brig_redact::encoded_forms(&e.value);
                forms.push(hex(&e.value, false));
                forms.push(hex(&e.value, true));
                forms.dedup();
                for f in forms {
                    patterns.push(f.into_bytes());
                    pats.push((i, Kind::Value));
                }
            }
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let mut folded_patterns: Vec<Vec<u8>> = Vec::new();
        let mut folded_pats = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(p) = &e.placeholder {
                folded_patterns.push(p.clone());
                folded_pats.push(i);
            }
            if e.value.len() >= MIN_SCANNED_VALUE {
                folded_patterns.push(e.value.clone());
                folded_pats.push(i);
            }
        }
        let folded = if folded_patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .ascii_case_insensitive(true)
                    .build(&folded_patterns)
                    .map_err(|e| SecretError(format!("building the matcher: {e}")))?,
            )
        };
        let ac = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| SecretError(format!("building the matcher: {e}")))?,
            )
        };
        Ok(Placeholders {
            entries,
            ac,
            pats,
            max_len,
            folded,
            folded_pats,
        })
    }

    /// Whether some secret is bound to `host` (normalized): such hosts are
    /// TLS-intercepted.
    pub fn bound_to(&self, host: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.hosts.iter().any(|p| p.matches(host)))
    }

    /// The secrets' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What applies to a request to `host`.
    pub(crate) fn plan(&self, host: &str) -> Plan<'_> {
        let bound: Vec<bool> = self
            .entries
            .iter()
            .map(|e| e.hosts.iter().any(|p| p.matches(host)))
            .collect();
        Plan { p: self, bound }
    }

    /// A host name (CONNECT target, SNI, Host, DNS query) that carries a
    /// placeholder or a value, in any case: no real host name does, so it
    /// is exfiltration whatever the host.
    pub(crate) fn in_name(&self, name: &str) -> Option<Blocked> {
        let m = self.folded.as_ref()?.find(name)?;
        let i = self.folded_pats[m.pattern().as_usize()];
        let e = &self.entries[i];
        let kind = match &e.placeholder {
            Some(p)
                if p.len() == m.len() && p.eq_ignore_ascii_case(&name.as_bytes()[m.range()]) =>
            {
                Kind::Placeholder
            }
            _ => Kind::Value,
        };
        Some(Plan::blocked_entry(e, kind, NAME.into()))
    }

    /// `text` with every placeholder and raw value (any case) replaced by
    /// `[secret:NAME]`: what events carry instead.
    pub fn scrub_text<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let Some(ac) = &self.folded else {
            return text.into();
        };
        let mut out: Option<String> = None;
        let mut at = 0;
        for m in ac.find_iter(text) {
            let o = out.get_or_insert_with(String::new);
            o.push_str(&text[at..m.start()]);
            o.push_str("[secret:");
            o.push_str(&self.entries[self.folded_pats[m.pattern().as_usize()]].name);
            o.push(']');
            at = m.end();
        }
        match out {
            None => text.into(),
            Some(mut o) => {
                o.push_str(&text[at..]);
                o.into()
            }
        }
    }

    /// The real value of secret `name` appears in `data` (or an encoded
    /// form of it): for tests and callers scanning other channels.
    pub fn find_value(&self, data: &[u8]) -> Option<&str> {
        let ac = self.ac.as_ref()?;
        ac.find_iter(data)
            .map(|m| self.pats[m.pattern().as_usize()])
            .find(|(_, k)| *k == Kind::Value)
            .map(|(i, _)| self.entries[i].name.as_str())
    }

    /// `data` with every real value (any form) replaced by its
    /// placeholder (or a mask for values without one); `None`: none found.
    pub(crate) fn scrub(&self, data: &[u8]) -> Option<Vec<u8>> {
        let ac = self.ac.as_ref()?;
        let mut out: Option<Vec<u8>> = None;
        let mut at = 0;
        for m in ac.find_iter(data) {
            let (i, kind) = self.pats[m.pattern().as_usize()];
            if kind != Kind::Value {
                continue;
            }
            let o = out.get_or_insert_with(|| Vec::with_capacity(data.len()));
            o.extend_from_slice(&data[at..m.start()]);
            o.extend_from_slice(&self.entries[i].mask);
            at = m.end();
        }
        let mut o = out?;
        o.extend_from_slice(&data[at..]);
        Some(o)
    }
}

const NAME: &str = "a host name";

/// Something a session may not send: which rule, which secret, where.
#[derive(Clone, Debug)]
pub(crate) struct Blocked {
    pub rule: &'static str,
    pub secret: String,
    pub place: String,
    pub bound: Vec<String>,
}

impl Blocked {
    pub(crate) fn explanation(&self, host: &str) -> Explanation {
        let what = if self.rule == rules::PLACEHOLDER_EXFIL {
            "the placeholder"
        } else {
            "the real value"
        };
        let (what, how) = if self.place == NAME {
            (
                format!(
                    "{what} of secret {} was sent as part of a host name (journaled as an exfiltration attempt)",
                    self.secret
                ),
                "no real host name holds a secret; connect to the host itself".to_string(),
            )
        } else if self.rule == rules::PLACEHOLDER_EXFIL {
            (
                format!(
                    "the placeholder of secret {} was sent in {} to {host}, a host the secret is not bound to (journaled as an exfiltration attempt)",
                    self.secret, self.place
                ),
                if self.bound.is_empty() {
                    format!("secret {} is not bound to any host", self.secret)
                } else {
                    format!(
                        "secret {} may be sent only to {}; ask the session's owner to bind it to {host} if that is meant",
                        self.secret,
                        self.bound.join(", ")
                    )
                },
            )
        } else {
            (
                format!(
                    "the real value of secret {} (or an encoding of it) was sent in {} to {host}, a host it is not bound to (journaled as an exfiltration attempt)",
                    self.secret, self.place
                ),
                "real secret values never leave brig except to their bound hosts; use the placeholder the session holds".to_string(),
            )
        };
        Explanation {
            allowed: false,
            would_deny: false,
            rule: self.rule.to_string(),
            reason: what,
            how_to_request_access: Some(how),
        }
    }
}

/// The secrets' view of one request to one host.
pub(crate) struct Plan<'a> {
    p: &'a Placeholders,
    bound: Vec<bool>,
}

/// What the head became.
#[derive(Debug)]
pub(crate) struct HeadOut {
    pub head: Vec<u8>,
    /// Names of the secrets injected.
    pub injected: BTreeSet<String>,
}

impl Plan<'_> {
    fn blocked(&self, i: usize, kind: Kind, place: String) -> Blocked {
        Plan::blocked_entry(&self.p.entries[i], kind, place)
    }

    fn blocked_entry(e: &Entry, kind: Kind, place: String) -> Blocked {
        Blocked {
            rule: match kind {
                Kind::Placeholder => rules::PLACEHOLDER_EXFIL,
                Kind::Value => rules::VALUE_EXFIL,
            },
            secret: e.name.clone(),
            place,
            bound: e
                .hosts
                .iter()
                .map(|h| match h {
                    HostPattern::Exact(h) => h.clone(),
                    HostPattern::Suffix(s) => format!("*{s}"),
                })
                .collect(),
        }
    }

    /// Names of the secrets that may be replaced in this request's body.
    pub(crate) fn body_secrets(&self) -> impl Iterator<Item = &str> {
        self.p
            .entries
            .iter()
            .zip(&self.bound)
            .filter(|(e, b)| **b && e.body && e.placeholder.is_some())
            .map(|(e, _)| e.name.as_str())
    }

    /// Whether some secret may be replaced in this request's body.
    pub(crate) fn injects_body(&self) -> bool {
        self.p
            .entries
            .iter()
            .zip(&self.bound)
            .any(|(e, b)| *b && e.body && e.placeholder.is_some())
    }

    /// Rewrite a request head (request line and headers, as brig sends it
    /// upstream): placeholders of bound secrets become values, anything
    /// else that gives a secret away blocks the request.
    pub(crate) fn rewrite_head(&self, head: &[u8]) -> Result<HeadOut, Blocked> {
        let mut out = Vec::with_capacity(head.len() + 64);
        let mut injected = BTreeSet::new();
        // The client's own Authorization header (index of the line in
        // `out`, and whether it held a placeholder).
        let mut auth: Option<(usize, usize, bool)> = None;
        let body = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
        for (n, line) in body.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let name = if n == 0 {
                None
            } else {
                line.iter()
                    .position(|&b| b == b':')
                    .map(|c| String::from_utf8_lossy(&line[..c]).trim().to_string())
            };
            let place = || match &name {
                None => "the request line".to_string(),
                Some(h) => format!("the {h} header"),
            };
            let start = out.len();
            let mut had_placeholder = false;
            let mut at = 0;
            if let Some(ac) = &self.p.ac {
                for m in ac.find_iter(line) {
                    let (i, kind) = self.p.pats[m.pattern().as_usize()];
                    match (kind, self.bound[i]) {
                        (Kind::Placeholder, true) => {
                            out.extend_from_slice(&line[at..m.start()]);
                            out.extend_from_slice(&self.p.entries[i].value);
                            at = m.end();
                            had_placeholder = true;
                            injected.insert(self.p.entries[i].name.clone());
                        }
                        (Kind::Value, true) => {}
                        (_, false) => return Err(self.blocked(i, kind, place())),
                    }
                }
            }
            out.extend_from_slice(&line[at..]);
            if name
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case("authorization"))
            {
                auth = Some((start, out.len(), had_placeholder));
            }
            out.extend_from_slice(b"\r\n");
        }
        // A binding that sets Authorization itself.
        let setter = self
            .p
            .entries
            .iter()
            .zip(&self.bound)
            .find(|(e, b)| **b && e.authorization.is_some());
        if let Some((e, _)) = setter {
            let mut value = e.authorization.clone().unwrap_or_default();
            value.extend_from_slice(&e.value);
            match auth {
                None => {
                    out.extend_from_slice(b"Authorization: ");
                    out.extend_from_slice(&value);
                    out.extend_from_slice(b"\r\n");
                    injected.insert(e.name.clone());
                }
                // The client's own header, not a placeholder: left alone
                // unless the binding says to override it.
                Some((s, end, false)) if e.override_authorization => {
                    let mut line = b"Authorization: ".to_vec();
                    line.extend_from_slice(&value);
                    out.splice(s..end, line);
                    injected.insert(e.name.clone());
                }
                Some(_) => {}
            }
        }
        out.extend_from_slice(b"\r\n");
        Ok(HeadOut {
            head: out,
            injected,
        })
    }

    pub(crate) fn request_filter(&self) -> BodyFilter<'_> {
        BodyFilter {
            plan: Some(self),
            p: self.p,
            held: Vec::new(),
            injected: BTreeSet::new(),
        }
    }
}

/// A streaming matcher over a body: holds back the last `max_len - 1`
/// bytes so that a placeholder or value split across reads (or chunks) is
/// still seen whole, and nothing of it is passed on first.
pub(crate) struct BodyFilter<'a> {
    /// `Some`: a request body (inject, block); `None`: a response body
    /// (values become placeholders).
    plan: Option<&'a Plan<'a>>,
    p: &'a Placeholders,
    held: Vec<u8>,
    pub injected: BTreeSet<String>,
}

impl<'a> BodyFilter<'a> {
    pub(crate) fn response(p: &'a Placeholders) -> BodyFilter<'a> {
        BodyFilter {
            plan: None,
            p,
            held: Vec::new(),
            injected: BTreeSet::new(),
        }
    }

    /// Feed body bytes; what may go on is appended to `out`.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Blocked> {
        self.held.extend_from_slice(data);
        self.run(false, out)
    }

    /// The body ended: the rest goes on.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Blocked> {
        self.run(true, out)
    }

    fn run(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), Blocked> {
        let Some(ac) = &self.p.ac else {
            out.append(&mut self.held);
            return Ok(());
        };
        let len = self.held.len();
        // A match starting before `safe` is complete within `held`.
        let safe = if last {
            len
        } else {
            len.saturating_sub(self.p.max_len.saturating_sub(1))
        };
        let mut at = 0;
        for m in ac.find_iter(&self.held) {
            if m.start() >= safe {
                break;
            }
            let (i, kind) = self.p.pats[m.pattern().as_usize()];
            let e = &self.p.entries[i];
            let replace: Option<&[u8]> = match (self.plan, kind) {
                (None, Kind::Value) => Some(&e.mask),
                (None, Kind::Placeholder) => None,
                (Some(plan), _) if !plan.bound[i] => {
                    return Err(plan.blocked(i, kind, "the body".into()))
                }
                (Some(_), Kind::Placeholder) if e.body => {
                    self.injected.insert(e.name.clone());
                    Some(&e.value)
                }
                // A bound secret's placeholder where the binding does not
                // inject in bodies, or its own value: sent as is.
                (Some(_), _) => None,
            };
            if let Some(r) = replace {
                out.extend_from_slice(&self.held[at..m.start()]);
                out.extend_from_slice(r);
                at = m.end();
            }
        }
        let keep_from = safe.max(at);
        out.extend_from_slice(&self.held[at..keep_from]);
        self.held.drain(..keep_from);
        Ok(())
    }
}

/// How a filtered body is framed on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutFraming {
    /// The same Content-Length (the filter cannot change the length).
    Same,
    /// Buffered, then sent with its new Content-Length (falls back to
    /// chunked if it grows past twice the buffer cap).
    Buffer,
    Chunked,
    /// Until the connection closes (a response to an HTTP/1.0 client).
    Close,
}

/// Why a filtered copy stopped.
pub(crate) enum FilterError {
    /// The body gave a secret away. The peer may have a partial message
    /// (the head and bytes before the secret): drop the connection.
    Blocked(Blocked),
    Io(io::Error),
}

impl From<io::Error> for FilterError {
    fn from(e: io::Error) -> FilterError {
        FilterError::Io(e)
    }
}

/// `head` (complete, as it would be sent with the original framing) with
/// its Content-Length / Transfer-Encoding replaced by `framing`.
fn reframe(head: &[u8], framing: Option<String>) -> Vec<u8> {
    strip_headers(head, &["content-length", "transfer-encoding"], framing)
}

/// `head` without the fields `names` (lower case), `add` appended.
fn strip_headers(head: &[u8], names: &[&str], add: Option<String>) -> Vec<u8> {
    let body = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let mut out = Vec::with_capacity(head.len() + 32);
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let l = line.strip_suffix(b"\r").unwrap_or(line);
        let named = |h: &&str| {
            l.len() > h.len()
                && l[h.len()] == b':'
                && l[..h.len()].eq_ignore_ascii_case(h.as_bytes())
        };
        if n > 0 && names.iter().any(named) {
            continue;
        }
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(f) = add {
        out.extend_from_slice(f.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A request head with `Expect: 100-continue`, without it: brig reads
/// such a body itself before going upstream, so it answers the `100`.
pub(crate) fn take_expect_continue(head: &[u8]) -> Option<Vec<u8>> {
    let lower = head.to_ascii_lowercase();
    memchr::memmem::find(&lower, b"\r\nexpect:")?;
    Some(strip_headers(head, &["expect"], None))
}

async fn emit<W: AsyncWrite + Unpin, M: Meter>(
    dst: &mut W,
    meter: &mut M,
    bytes: &[u8],
) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    dst.write_all(bytes).await?;
    if !meter.copied(bytes.len()) {
        return Err(io::Error::other("limit"));
    }
    Ok(())
}

async fn emit_chunk<W: AsyncWrite + Unpin, M: Meter>(
    dst: &mut W,
    meter: &mut M,
    data: &[u8],
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut b = Vec::with_capacity(data.len() + 12);
    b.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    emit(dst, meter, &b).await
}

/// Send `head` and then one body from `pre` (bytes already read) and
/// `src` to `dst`, through `filter`, framed by `out`. The bytes after the
/// body stay in `pre`. Every byte written (head included) goes through
/// `meter`; returns their count.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn copy_filtered<R, W, M>(
    head: &[u8],
    pre: &mut Vec<u8>,
    src: &mut R,
    dst: &mut W,
    framing: Framing,
    idle: Duration,
    meter: &mut M,
    filter: &mut BodyFilter<'_>,
    mut out: OutFraming,
) -> Result<u64, FilterError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    M: Meter,
{
    let mut total = 0u64;
    let mut buffered: Vec<u8> = Vec::new();
    if out == OutFraming::Buffer && !matches!(framing, Framing::Length(n) if n <= MAX_BUFFERED_BODY)
    {
        out = OutFraming::Chunked;
    }
    match out {
        OutFraming::Same => {
            emit(dst, meter, head).await?;
            total += head.len() as u64;
        }
        OutFraming::Chunked | OutFraming::Close => {
            let te = (out == OutFraming::Chunked).then(|| "Transfer-Encoding: chunked".to_string());
            let h = reframe(head, te);
            emit(dst, meter, &h).await?;
            total += h.len() as u64;
        }
        OutFraming::Buffer => {}
    }
    let mut raw = std::mem::take(pre);
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut chunked = Chunked::default();
    let mut payload = Vec::new();
    let mut filtered = Vec::new();
    let mut done = framing == Framing::None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent_body = 0u64;
    loop {
        if raw.is_empty() && !done {
            let want = match framing {
                Framing::Length(_) => left.min(buf.len() as u64) as usize,
                _ => buf.len(),
            };
            let n = match tokio::time::timeout(idle, src.read(&mut buf[..want])).await {
                Err(_) => return Err(io::Error::from(io::ErrorKind::TimedOut).into()),
                Ok(r) => r?,
            };
            if n == 0 {
                if framing != Framing::Close {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                done = true;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        match framing {
            Framing::Length(_) => {
                let take = left.min(raw.len() as u64) as usize;
                payload.extend_from_slice(&raw[..take]);
                raw.drain(..take);
                left -= take as u64;
                done = left == 0;
            }
            Framing::Chunked => match chunked
                .feed_data(&raw, &mut payload)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                Some(end) => {
                    raw.drain(..end);
                    done = true;
                }
                None => raw.clear(),
            },
            Framing::Close => payload.append(&mut raw),
            Framing::None => done = true,
        }
        let r = filter.feed(&payload, &mut filtered);
        payload.clear();
        let r = r.and_then(|_| {
            if done {
                filter.finish(&mut filtered)
            } else {
                Ok(())
            }
        });
        if let Err(b) = r {
            *pre = raw;
            return Err(FilterError::Blocked(b));
        }
        match out {
            OutFraming::Same | OutFraming::Close => emit(dst, meter, &filtered).await?,
            OutFraming::Chunked => emit_chunk(dst, meter, &filtered).await?,
            OutFraming::Buffer => {
                buffered.append(&mut filtered);
                if buffered.len() as u64 > 2 * MAX_BUFFERED_BODY {
                    // Grew past the cap (long values): stream the rest.
                    let h = reframe(head, Some("Transfer-Encoding: chunked".into()));
                    emit(dst, meter, &h).await?;
                    total += h.len() as u64;
                    emit_chunk(dst, meter, &buffered).await?;
                    sent_body += buffered.len() as u64;
                    buffered = Vec::new();
                    out = OutFraming::Chunked;
                }
            }
        }
        sent_body += filtered.len() as u64;
        filtered.clear();
        if done {
            break;
        }
    }
    *pre = raw;
    match out {
        OutFraming::Chunked => emit(dst, meter, b"0\r\n\r\n").await?,
        OutFraming::Buffer => {
            let h = reframe(head, Some(format!("Content-Length: {}", buffered.len())));
            let mut all = h;
            all.extend_from_slice(&buffered);
            emit(dst, meter, &all).await?;
            total += all.len() as u64;
        }
        OutFraming::Same => {
            // The filter replaced nothing, so the length is unchanged.
            if !matches!(framing, Framing::Length(n) if n == sent_body) {
                return Err(io::Error::other("filtered body changed its length").into());
            }
        }
        OutFraming::Close => {}
    }
    Ok(total + sent_body)
}

/// The session's event sink behind a scrubber: whatever a request named
/// (a host, a path, an error, an explanation quoting them) reaches the
/// journal with placeholders and values replaced by `[secret:NAME]`.
pub(crate) struct ScrubEvents {
    pub inner: std::sync::Arc<dyn crate::EgressEvents>,
    pub secrets: std::sync::Arc<dyn crate::SecretInjector>,
}

impl crate::EgressEvents for ScrubEvents {
    fn event(&self, mut e: crate::EgressEvent) {
        let p = self.secrets.placeholders();
        let fix = |s: &mut String| {
            if let std::borrow::Cow::Owned(o) = p.scrub_text(s) {
                *s = o;
            }
        };
        for f in [&mut e.host, &mut e.path, &mut e.method, &mut e.error]
            .into_iter()
            .flatten()
        {
            fix(f);
        }
        if let Some(x) = &mut e.explanation {
            fix(&mut x.reason);
            if let Some(h) = &mut x.how_to_request_access {
                fix(h);
            }
        }
        self.inner.event(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PH: &str = "brig-ph-s1-GH-0123456789abcdef";
    const VAL: &str = "ghp_RealValue_9f8e7d6c5b4a";
    const PH2: &str = "brig-ph-s1-NPM-fedcba9876543210";
    const VAL2: &str = "npm_OtherRealValue_1234";

    fn p(body: bool) -> Placeholders {
        Placeholders::with_known_values(
            vec![
                Secret {
                    name: "GH".into(),
                    placeholder: PH.into(),
                    value: VAL.into(),
                    hosts: vec!["api.github.com".into(), "*.gh.example".into()],
                    body,
                    authorization: None,
                    override_authorization: false,
                },
                Secret {
                    name: "NPM".into(),
                    placeholder: PH2.into(),
                    value: VAL2.into(),
                    hosts: vec!["registry.npmjs.org".into()],
                    body: true,
                    authorization: Some("Bearer ".into()),
                    override_authorization: false,
                },
            ],
            vec![("OTHER".into(), "other-known-value-xyz".into())],
        )
        .unwrap()
    }

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut h = lines.join("\r\n").into_bytes();
        h.extend_from_slice(b"\r\n\r\n");
        h
    }

    #[test]
    fn hosts_match_exactly_or_strictly_under() {
        let p = p(false);
        assert!(p.bound_to("api.github.com"));
        assert!(p.bound_to("x.gh.example"));
        assert!(!p.bound_to("gh.example"));
        assert!(!p.bound_to("github.com"));
        assert!(!p.bound_to("evilapi.github.com"));
    }

    #[test]
    fn head_injection_and_blocking() {
        let p = p(false);
        let h = head(&[
            &format!("GET /x?t={PH} HTTP/1.1"),
            "Host: api.github.com",
            &format!("Authorization: Bearer {PH}"),
        ]);
        let out = p.plan("api.github.com").rewrite_head(&h).unwrap();
        let s = String::from_utf8(out.head).unwrap();
        assert!(s.contains(&format!("Bearer {VAL}\r\n")), "{s}");
        assert!(s.contains(&format!("/x?t={VAL} ")), "{s}");
        assert!(!s.contains(PH));
        assert!(s.ends_with("\r\n\r\n"));
        assert_eq!(out.injected.into_iter().collect::<Vec<_>>(), ["GH"]);
        // The same request to another host is blocked, naming the header.
        let b = p.plan("evil.example").rewrite_head(&h).unwrap_err();
        assert_eq!(b.rule, rules::PLACEHOLDER_EXFIL);
        assert_eq!(b.secret, "GH");
        assert_eq!(b.place, "the request line");
        let text = b.explanation("evil.example").to_text();
        assert!(
            text.contains("api.github.com") && !text.contains(PH),
            "{text}"
        );
        // A real value (and its base64) to an unbound host.
        for v in [VAL.to_string(), hex(VAL.as_bytes(), false)] {
            let h = head(&["GET / HTTP/1.1", &format!("X-Data: {v}")]);
            let b = p.plan("other.example").rewrite_head(&h).unwrap_err();
            assert_eq!(
                (b.rule, b.place.as_str()),
                (rules::VALUE_EXFIL, "the X-Data header")
            );
        }
        let h = head(&["GET / HTTP/1.1", "X-K: other-known-value-xyz"]);
        assert_eq!(
            p.plan("api.github.com")
                .rewrite_head(&h)
                .unwrap_err()
                .secret,
            "OTHER"
        );
    }

    #[test]
    fn authorization_set_only_when_the_client_did_not() {
        let p = p(false);
        let plan = p.plan("registry.npmjs.org");
        let out = plan
            .rewrite_head(&head(&["GET / HTTP/1.1", "Host: registry.npmjs.org"]))
            .unwrap();
        let s = String::from_utf8(out.head).unwrap();
        assert!(
            s.contains(&format!("Authorization: Bearer {VAL2}\r\n")),
            "{s}"
        );
        let own = head(&["GET / HTTP/1.1", "authorization: Basic dXNlcjpwdw=="]);
        let out = plan.rewrite_head(&own).unwrap();
        let s = String::from_utf8(out.head).unwrap();
        assert!(
            s.contains("authorization: Basic dXNlcjpwdw==\r\n") && !s.contains(VAL2),
            "{s}"
        );
        assert!(out.injected.is_empty());
        // Unless the binding overrides it.
        let mut secrets = vec![Secret {
            name: "NPM".into(),
            placeholder: PH2.into(),
            value: VAL2.into(),
            hosts: vec!["registry.npmjs.org".into()],
            body: false,
            authorization: Some("Bearer ".into()),
            override_authorization: true,
        }];
        let o = Placeholders::new(secrets.clone()).unwrap();
        let out = o.plan("registry.npmjs.org").rewrite_head(&own).unwrap();
        let s = String::from_utf8(out.head).unwrap();
        assert!(
            s.contains(&format!("Authorization: Bearer {VAL2}\r\n")),
            "{s}"
        );
        assert!(!s.contains("Basic"), "{s}");
        // Not to another host, whatever the binding.
        secrets[0].hosts = vec!["other.example".into()];
        let o = Placeholders::new(secrets).unwrap();
        let out = o.plan("registry.npmjs.org").rewrite_head(&own).unwrap();
        assert!(!String::from_utf8(out.head).unwrap().contains(VAL2));
    }

    fn run_filter(f: &mut BodyFilter<'_>, body: &[u8], split: usize) -> Result<Vec<u8>, Blocked> {
        let mut out = Vec::new();
        let (a, b) = body.split_at(split);
        f.feed(a, &mut out)?;
        f.feed(b, &mut out)?;
        f.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn body_filter_across_every_split() {
        let body = format!("{{\"token\":\"{PH}\",\"n\":\"{PH}\"}}");
        let want = format!("{{\"token\":\"{VAL}\",\"n\":\"{VAL}\"}}");
        for split in 0..body.len() {
            let inject = p(true);
            let plan = inject.plan("api.github.com");
            let mut f = plan.request_filter();
            let out = run_filter(&mut f, body.as_bytes(), split).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "split {split}");
            // Without body injection the body is unchanged.
            let plain = p(false);
            let plan = plain.plan("api.github.com");
            let mut f = plan.request_filter();
            assert_eq!(
                run_filter(&mut f, body.as_bytes(), split).unwrap(),
                body.as_bytes()
            );
            // To another host, blocked wherever the split falls.
            let plan = plain.plan("x.example");
            let mut f = plan.request_filter();
            assert!(
                run_filter(&mut f, body.as_bytes(), split).is_err(),
                "split {split}"
            );
        }
        // A response: values back to placeholders.
        let inject = p(true);
        let resp = format!("echo {VAL} and {VAL}");
        for split in 0..resp.len() {
            let mut f = BodyFilter::response(&inject);
            let out = run_filter(&mut f, resp.as_bytes(), split).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("echo {PH} and {PH}")
            );
        }
    }

    #[test]
    fn refused_secrets_name_the_secret_only() {
        let mk = |ph: &str, v: &str, hosts: Vec<String>| Secret {
            name: "S".into(),
            placeholder: ph.into(),
            value: v.into(),
            hosts,
            body: false,
            authorization: None,
            override_authorization: false,
        };
        for s in [
            mk("short", "value-value", vec!["a.example".into()]),
            mk(PH, "bad-value\r\nX: y", vec!["a.example".into()]),
            mk(PH, VAL, vec![]),
            mk(PH, VAL, vec!["*.".into()]),
        ] {
            let e = Placeholders::new(vec![s]).unwrap_err().to_string();
            assert!(
                e.contains("secret `S`") && !e.contains(VAL) && !e.contains("bad-value"),
                "{e}"
            );
        }
    }
}
