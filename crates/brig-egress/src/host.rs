//! Host normalization: one canonical form for every way a client can name a
//! destination, so that the name brig judges is the name brig dials.
//!
//! [`Host::parse`] accepts what appears in a `Host` header, a CONNECT target
//! (without the port), a TLS SNI, an absolute URI's host or a DNS query name,
//! and returns either a [`Host::Domain`] (lowercase A-labels, no trailing
//! dot) or a [`Host::Ip`] literal. Anything ambiguous is an error, never a
//! guess:
//!
//! - ASCII case is folded and one trailing dot (the DNS root) is dropped.
//! - Unicode names are mapped and validated by UTS 46 (IDNA 2008 with the
//!   UTS 46 mapping, non-transitional) and returned as A-labels; an `xn--`
//!   label that does not decode to a valid U-label is rejected.
//! - A name whose last label is numeric (`2130706433`, `0177.0.0.1`,
//!   `0x7f.1`, `127.1`) is an IPv4 literal, parsed as the WHATWG URL
//!   standard (and so browsers, and libc's `inet_aton`) parse it: each part
//!   decimal, octal (leading `0`) or hex (`0x`); 1 to 4 parts, the last
//!   filling the remaining bytes. If such a name does not parse as IPv4 it
//!   is rejected, not treated as a domain.
//!   On every form glibc's `inet_aton` accepts, the address is the same
//!   (tests/inet_aton.rs checks thousands); the differences fail closed:
//!   `0x` and a trailing dot (`1.2.3.4.`) are IP literals here, names to
//!   glibc; glibc ignores anything after whitespace, brig refuses it.
//! - IPv6 literals, bracketed or bare, are parsed by the standard library;
//!   zone ids (`%eth0`, `%25eth0`) are rejected.
//! - Percent signs, empty labels, labels over 63 octets, names over 253,
//!   and characters outside letters, digits, `-` and `_` are rejected.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// A normalized destination host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name: lowercase ASCII (A-labels), no trailing dot, every
    /// label 1..=63 octets, at most 253 octets in all.
    Domain(String),
    /// An IP literal (IPv4 in any numeric form, or IPv6).
    Ip(IpAddr),
}

/// Why a host was rejected. Every variant is a denial with the rule
/// `invalid-host`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("percent-encoding is not allowed in a host")]
    PercentEncoded,
    #[error("the host has an empty label")]
    EmptyLabel,
    #[error("a label is longer than 63 octets")]
    LabelTooLong,
    #[error("the host is longer than 253 octets")]
    NameTooLong,
    #[error("the host contains a character that is not allowed: {0:?}")]
    BadChar(char),
    #[error("IPv6 zone ids are not allowed in a host")]
    ZoneId,
    #[error("not a valid IPv6 literal")]
    BadIpv6,
    #[error("the host ends in a number but is not a valid IPv4 address")]
    BadIpv4,
    #[error("the host is not a valid internationalized domain name (UTS 46)")]
    BadIdna,
    #[error("a label starts or ends with a hyphen")]
    BadHyphen,
    #[error("not a valid host:port authority")]
    BadAuthority,
    #[error("userinfo (user@) is not allowed in an authority")]
    Userinfo,
}

impl Host {
    /// Normalize a host as it appears on the wire (see the module docs).
    pub fn parse(input: &str) -> Result<Host, HostError> {
        if input.is_empty() {
            return Err(HostError::Empty);
        }
        if input.contains('%') {
            // Before anything else: `%25` zone ids and percent-encoded
            // hosts are both refused with a name for what they are.
            if input.starts_with('[') || input.contains(':') {
                return Err(HostError::ZoneId);
            }
            return Err(HostError::PercentEncoded);
        }
        if let Some(inner) = input.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|a| Host::Ip(IpAddr::V6(a)))
                .map_err(|_| HostError::BadIpv6);
        }
        if input.contains(':') {
            return input
                .parse::<Ipv6Addr>()
                .map(|a| Host::Ip(IpAddr::V6(a)))
                .map_err(|_| HostError::BadIpv6);
        }
        // One trailing dot is the DNS root; more is an empty label.
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if name.is_ascii() {
            if ends_in_number(name) {
                return parse_ipv4(name).map(|a| Host::Ip(IpAddr::V4(a)));
            }
            return ascii_domain(name).map(Host::Domain);
        }
        unicode_domain(name).map(Host::Domain)
    }

    /// The domain name, if this is one.
    pub fn domain(&self) -> Option<&str> {
        match self {
            Host::Domain(d) => Some(d),
            Host::Ip(_) => None,
        }
    }

    /// The IP literal, if this is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Domain(_) => None,
            Host::Ip(ip) => Some(*ip),
        }
    }
}

impl fmt::Display for Host {
    /// The canonical form: the domain, an IPv4 in dotted decimal, an IPv6
    /// in brackets (as in a URL or `Host` header).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// Parse a `host:port` authority (a CONNECT target, or a `Host` header with
/// `default_port` for when it has none). IPv6 must be bracketed when a port
/// follows. Userinfo is refused.
pub fn parse_authority(input: &str, default_port: Option<u16>) -> Result<(Host, u16), HostError> {
    if input.contains('@') {
        return Err(HostError::Userinfo);
    }
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let close = rest.find(']').ok_or(HostError::BadIpv6)?;
        let host = &input[..close + 2];
        let after = &rest[close + 1..];
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(HostError::BadAuthority),
        }
    } else {
        match input.rsplit_once(':') {
            Some((h, p)) => {
                if h.contains(':') {
                    // A bare IPv6 with a port is ambiguous.
                    return Err(HostError::BadAuthority);
                }
                (h, Some(p))
            }
            None => (input, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or(HostError::BadAuthority)?,
    };
    Ok((Host::parse(host)?, port))
}

fn parse_port(p: &str) -> Result<u16, HostError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::BadAuthority);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(HostError::BadAuthority),
        Ok(n) => Ok(n),
    }
}

/// WHATWG "ends in a number": the last label (after one trailing dot was
/// removed) is all decimal digits, or `0x`/`0X` followed by hex digits.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// One IPv4 part: decimal, octal (leading 0) or hex (0x); u64 so that
/// overflow is detected rather than wrapped.
fn ipv4_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is 0 in the URL standard.
        return Some(0);
    }
    if digits.len() > 32 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parse an IPv4 literal the way the WHATWG URL parser and `inet_aton` do.
pub(crate) fn parse_ipv4(name: &str) -> Result<Ipv4Addr, HostError> {
    let mut parts = [0u64; 4];
    let mut n = 0;
    for part in name.split('.') {
        if n == 4 {
            return Err(HostError::BadIpv4);
        }
        parts[n] = ipv4_part(part).ok_or(HostError::BadIpv4)?;
        n += 1;
    }
    let (last, init) = (parts[n - 1], &parts[..n - 1]);
    if init.iter().any(|&p| p > 255) {
        return Err(HostError::BadIpv4);
    }
    if last >= 1u64 << (8 * (5 - n)) {
        return Err(HostError::BadIpv4);
    }
    let mut v = last;
    for (i, &p) in init.iter().enumerate() {
        v += p << (8 * (3 - i));
    }
    Ok(Ipv4Addr::from(v as u32))
}

fn ascii_domain(name: &str) -> Result<String, HostError> {
    if name.len() > 253 {
        return Err(HostError::NameTooLong);
    }
    let mut has_ace = false;
    for label in name.split('.') {
        check_ascii_label(label)?;
        if label.len() >= 4 && label[..4].eq_ignore_ascii_case("xn--") {
            has_ace = true;
        }
    }
    let lower = name.to_ascii_lowercase();
    if has_ace {
        // Validate every A-label: it must decode to a U-label that UTS 46
        // accepts and that encodes back to the same A-label.
        validate_ace(&lower)?;
    }
    Ok(lower)
}

fn check_ascii_label(label: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if label.len() > 63 {
        return Err(HostError::LabelTooLong);
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(HostError::BadChar(c));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostError::BadHyphen);
    }
    Ok(())
}

const UTS46: Uts46 = Uts46::new();
/// STD3 rules, except that `_` is allowed (it occurs in real host names).
const DENY: AsciiDenyList = AsciiDenyList::new(true, "!\"#$%&'()*+,/:;<=>?@[\\]^`{|}~");

fn validate_ace(lower: &str) -> Result<(), HostError> {
    let unicode = UTS46
        .to_unicode(lower.as_bytes(), DENY, Hyphens::Allow)
        .1
        .map(|_| ())
        .map_err(|_| HostError::BadIdna);
    unicode?;
    let back = UTS46
        .to_ascii(lower.as_bytes(), DENY, Hyphens::Allow, DnsLength::Verify)
        .map_err(|_| HostError::BadIdna)?;
    if back != lower {
        return Err(HostError::BadIdna);
    }
    Ok(())
}

fn unicode_domain(name: &str) -> Result<String, HostError> {
    let ascii = UTS46
        .to_ascii(name.as_bytes(), DENY, Hyphens::Allow, DnsLength::Verify)
        .map_err(|_| HostError::BadIdna)?
        .into_owned();
    // UTS 46 maps some characters to dots (U+3002 IDEOGRAPHIC FULL STOP)
    // and digits (fullwidth forms): the result is judged again as ASCII,
    // so `１２７.０.０.１` is the IPv4 literal it spells.
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii).to_string();
    if ascii.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if ends_in_number(&ascii) {
        return Err(HostError::BadIpv4);
    }
    ascii_domain(&ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Host {
        Host::Ip(IpAddr::V4(s.parse().unwrap()))
    }
    fn dom(s: &str) -> Host {
        Host::Domain(s.to_string())
    }

    #[test]
    fn case_and_trailing_dot() {
        assert_eq!(Host::parse("Index.Crates.IO."), Ok(dom("index.crates.io")));
        assert_eq!(Host::parse("example.com"), Ok(dom("example.com")));
        assert_eq!(Host::parse("example.com.."), Err(HostError::EmptyLabel));
        assert_eq!(Host::parse("."), Err(HostError::EmptyLabel));
        assert_eq!(Host::parse(""), Err(HostError::Empty));
    }

    #[test]
    fn empty_and_long_labels() {
        assert_eq!(Host::parse("a..b"), Err(HostError::EmptyLabel));
        assert_eq!(Host::parse(".a.b"), Err(HostError::EmptyLabel));
        let long = "a".repeat(64);
        assert_eq!(
            Host::parse(&format!("{long}.com")),
            Err(HostError::LabelTooLong)
        );
        let ok = "a".repeat(63);
        assert!(Host::parse(&format!("{ok}.com")).is_ok());
        let name = ["abcdefghi"; 26].join(".");
        assert_eq!(Host::parse(&name), Err(HostError::NameTooLong));
    }

    #[test]
    fn bad_characters() {
        for h in [
            "exa mple.com",
            "a/b.com",
            "a\\b.com",
            "a@b.com",
            "a!b",
            "a*.com",
            "a\0b",
            "a\tb",
        ] {
            assert!(
                matches!(Host::parse(h), Err(HostError::BadChar(_))),
                "{h:?}"
            );
        }
        assert_eq!(Host::parse("-a.com"), Err(HostError::BadHyphen));
        assert_eq!(Host::parse("a-.com"), Err(HostError::BadHyphen));
        assert_eq!(
            Host::parse("under_score.example.com"),
            Ok(dom("under_score.example.com"))
        );
        assert_eq!(
            Host::parse("r3---sn-4g5e6nez.googlevideo.com"),
            Ok(dom("r3---sn-4g5e6nez.googlevideo.com"))
        );
    }

    #[test]
    fn percent_encoding_rejected() {
        assert_eq!(Host::parse("exa%6dple.com"), Err(HostError::PercentEncoded));
        assert_eq!(
            Host::parse("%31%32%37.0.0.1"),
            Err(HostError::PercentEncoded)
        );
        assert_eq!(Host::parse("[fe80::1%25eth0]"), Err(HostError::ZoneId));
        assert_eq!(Host::parse("[fe80::1%eth0]"), Err(HostError::ZoneId));
        assert_eq!(Host::parse("fe80::1%eth0"), Err(HostError::ZoneId));
    }

    #[test]
    fn ipv4_numeric_forms() {
        let cases = [
            ("127.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0x7F.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("0x7f.0.0.0x1", "127.0.0.1"),
            ("0177.0x0.0.01", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
            ("0", "0.0.0.0"),
            ("0x", "0.0.0.0"),
            ("0x0.0", "0.0.0.0"),
            ("00", "0.0.0.0"),
            ("169.254.43518", "169.254.169.254"),
            ("0xa9fea9fe", "169.254.169.254"),
            ("2852039166", "169.254.169.254"),
            ("0251.0376.0251.0376", "169.254.169.254"),
            ("10.0xff.0377.255", "10.255.255.255"),
            ("192.168.0x1", "192.168.0.1"),
            ("4294967295", "255.255.255.255"),
            ("1.2.3.4", "1.2.3.4"),
            ("example.0x10", "bad"),
            ("1.2.3.4.5", "bad"),
            ("256.0.0.1", "bad"),
            ("1.256.0.1", "bad"),
            ("1.2.3.256", "bad"),
            ("1.2.65536", "bad"),
            ("1.16777216", "bad"),
            ("4294967296", "bad"),
            ("08.0.0.1", "bad"),
            ("0x7g.1", "bad"),
            ("1..1", "bad"),
            ("99999999999999999999999999", "bad"),
            ("foo.123", "bad"),
        ];
        for (input, want) in cases {
            let got = Host::parse(input);
            if want == "bad" {
                assert_eq!(got, Err(HostError::BadIpv4), "{input}");
            } else {
                assert_eq!(got, Ok(v4(want)), "{input}");
            }
        }
        // A label that merely contains digits is a domain.
        assert_eq!(Host::parse("1.2.3.foo"), Ok(dom("1.2.3.foo")));
        assert_eq!(Host::parse("0x7f.1x"), Ok(dom("0x7f.1x")));
        assert_eq!(
            Host::parse("ec2-54-12-34-56.compute-1.amazonaws.com"),
            Ok(dom("ec2-54-12-34-56.compute-1.amazonaws.com"))
        );
    }

    #[test]
    fn ipv4_numeric_property() {
        // Every address, printed in a random mix of radixes and part
        // counts, parses back to itself.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let addr = x as u32;
            let b = addr.to_be_bytes();
            let fmt = |v: u64, r: u64| match r % 3 {
                0 => format!("{v}"),
                1 => format!("0{v:o}"),
                _ => format!("0x{v:x}"),
            };
            let r = x >> 32;
            let s = match r % 4 {
                0 => fmt(addr as u64, r >> 2),
                1 => format!(
                    "{}.{}",
                    fmt(b[0] as u64, r >> 2),
                    fmt((addr & 0xff_ffff) as u64, r >> 4)
                ),
                2 => format!(
                    "{}.{}.{}",
                    fmt(b[0] as u64, r >> 2),
                    fmt(b[1] as u64, r >> 4),
                    fmt((addr & 0xffff) as u64, r >> 6)
                ),
                _ => format!(
                    "{}.{}.{}.{}",
                    fmt(b[0] as u64, r >> 2),
                    fmt(b[1] as u64, r >> 4),
                    fmt(b[2] as u64, r >> 6),
                    fmt(b[3] as u64, r >> 8)
                ),
            };
            assert_eq!(
                Host::parse(&s),
                Ok(Host::Ip(IpAddr::V4(Ipv4Addr::from(addr)))),
                "{s}"
            );
        }
    }

    #[test]
    fn ipv6_literals() {
        assert_eq!(Host::parse("[::1]"), Ok(Host::Ip("::1".parse().unwrap())));
        assert_eq!(Host::parse("::1"), Ok(Host::Ip("::1".parse().unwrap())));
        assert_eq!(
            Host::parse("[::ffff:127.0.0.1]"),
            Ok(Host::Ip("::ffff:7f00:1".parse().unwrap()))
        );
        assert_eq!(Host::parse("[::1"), Err(HostError::BadIpv6));
        assert_eq!(Host::parse("[example.com]"), Err(HostError::BadIpv6));
        assert_eq!(Host::parse("[127.0.0.1]"), Err(HostError::BadIpv6));
        assert_eq!(Host::parse("1:2:3"), Err(HostError::BadIpv6));
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
    }

    #[test]
    fn idna() {
        assert_eq!(
            Host::parse("bücher.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        assert_eq!(
            Host::parse("BÜCHER.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        assert_eq!(
            Host::parse("xn--bcher-kva.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        assert_eq!(
            Host::parse("XN--BCHER-KVA.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        assert_eq!(Host::parse("пример.рф"), Ok(dom("xn--e1afmkfd.xn--p1ai")));
        // Fullwidth letters and the ideographic full stop map to ASCII.
        assert_eq!(
            Host::parse("ｐａｓｔｅｂｉｎ。com"),
            Ok(dom("pastebin.com"))
        );
        // ... and fullwidth digits that spell an IPv4 are not a domain.
        assert_eq!(Host::parse("１２７。０。０。１"), Err(HostError::BadIpv4));
        // Invalid punycode, and A-labels that are not canonical.
        assert_eq!(Host::parse("xn--a.example"), Err(HostError::BadIdna));
        assert_eq!(
            Host::parse("xn--zzzzzzzzzzzzzz-.example"),
            Err(HostError::BadHyphen)
        );
        assert_eq!(
            Host::parse("xn--bcher-kva9.example"),
            Err(HostError::BadIdna)
        );
        // An A-label for an uppercase U-label is not canonical.
        assert_eq!(
            Host::parse("xn--Bcher-kva.example"),
            Ok(dom("xn--bcher-kva.example"))
        );
        // Disallowed code points.
        assert_eq!(Host::parse("a\u{2028}b.com"), Err(HostError::BadIdna));
        assert_eq!(Host::parse("exa/mple。com"), Err(HostError::BadIdna));
    }

    #[test]
    fn authority() {
        assert_eq!(
            parse_authority("example.com:443", None),
            Ok((dom("example.com"), 443))
        );
        assert_eq!(
            parse_authority("Example.COM", Some(80)),
            Ok((dom("example.com"), 80))
        );
        assert_eq!(
            parse_authority("[::1]:22", None),
            Ok((Host::Ip("::1".parse().unwrap()), 22))
        );
        assert_eq!(
            parse_authority("[::1]", Some(443)),
            Ok((Host::Ip("::1".parse().unwrap()), 443))
        );
        assert_eq!(
            parse_authority("0x7f.1:8080", None),
            Ok((v4("127.0.0.1"), 8080))
        );
        assert_eq!(
            parse_authority("example.com", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("example.com:0", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("example.com:65536", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("example.com:+80", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("example.com:", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("::1:22", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("[::1]x", None),
            Err(HostError::BadAuthority)
        );
        assert_eq!(
            parse_authority("user@example.com:443", None),
            Err(HostError::Userinfo)
        );
    }
}
