//! The SSRF guard: which addresses a session may dial.
//!
//! The proxy and the resolver resolve a name once, pass every address to
//! [`SsrfGuard::check_resolved`], and dial exactly an address it returned:
//! there is no second resolution, so DNS rebinding has nothing to rebind.
//! Every address must pass, or the whole name is denied, naming the
//! offending address and the range it fell in.
//!
//! Order of judgement for one address:
//! 1. brig's own addresses (configured) are always denied, even inside a
//!    trusted range: a session reaches brig only through the channels brig
//!    gives it, never through the egress proxy;
//! 2. an explicitly trusted CIDR allows the address;
//! 3. the special-purpose ranges below deny it;
//! 4. anything else is a public unicast address and passes.
//!
//! IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible,
//! NAT64, 6to4, Teredo) are denied as such, and the denial also names the
//! embedded IPv4 address and its own range when that is special too
//! (`::ffff:127.0.0.1` is "IPv4-mapped, embedding 127.0.0.1 (loopback)").
//! A trusted IPv4 CIDR does not trust its IPv6 embeddings: dial the IPv4
//! address, or trust the IPv6 range explicitly.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 or IPv6 network in CIDR notation (`203.0.113.0/24`,
/// `2001:db8::/32`; a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A CIDR that did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a CIDR (address/prefix): {0:?}")]
pub struct CidrError(pub String);

impl Cidr {
    /// A network from an address and a prefix length; host bits must be 0.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        let c = Cidr { addr, prefix };
        (c.network_bits() == bits(addr)).then_some(c)
    }

    const fn v4(a: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefix,
        }
    }

    const fn v6(s: [u16; 8], prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            prefix,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn network_bits(&self) -> u128 {
        bits(self.addr) & mask(self.addr.is_ipv4(), self.prefix)
    }

    /// Whether `ip` is inside this network (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        bits(ip) & mask(ip.is_ipv4(), self.prefix) == bits(self.addr)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn mask(v4: bool, prefix: u8) -> u128 {
    let width = if v4 { 32 } else { 128 };
    if prefix == 0 {
        0
    } else {
        let all = if v4 { u32::MAX as u128 } else { u128::MAX };
        (all >> (width - prefix as u32)) << (width - prefix as u32)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        // Only canonical dotted-quad / RFC 4291 forms in config.
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
        };
        Cidr::new(addr, prefix).ok_or_else(err)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an address is special. [`IpClass::name`] is the rule suffix
/// (`ssrf:loopback`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpClass {
    /// 0.0.0.0/8 ("this network", including 0.0.0.0), ::/128.
    Unspecified,
    /// 127.0.0.0/8, ::1/128.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10 (RFC 6598 shared address space, carrier-grade NAT).
    Cgnat,
    /// 169.254.169.254 and fd00:ec2::254: cloud instance metadata.
    CloudMetadata,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 192.0.0.0/24 (IETF protocol assignments).
    IetfProtocol,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15, 2001:2::/48.
    Benchmarking,
    /// 192.88.99.0/24 (deprecated 6to4 relay anycast).
    SixToFourRelay,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255/32.
    Broadcast,
    /// 240.0.0.0/4; IPv6 outside 2000::/3 that no other class names.
    Reserved,
    /// ::ffff:0:0/96.
    Ipv4Mapped,
    /// ::/96 (deprecated IPv4-compatible).
    Ipv4Compatible,
    /// 64:ff9b::/96 (well-known NAT64 prefix).
    Nat64,
    /// 64:ff9b:1::/48 (local-use NAT64).
    Nat64Local,
    /// 2002::/16.
    SixToFour,
    /// 2001::/32.
    Teredo,
    /// 2001:10::/28, 2001:20::/28 (ORCHID, overlay identifiers).
    Orchid,
    /// fec0::/10 (deprecated site-local).
    SiteLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 100::/64 (discard-only).
    Discard,
    /// One of brig's own addresses (`[egress.ssrf] own_addresses`).
    BrigOwn,
}

impl IpClass {
    /// The short name, used in rule ids (`ssrf:<name>`).
    pub fn name(&self) -> &'static str {
        match self {
            IpClass::Unspecified => "unspecified",
            IpClass::Loopback => "loopback",
            IpClass::Private => "private",
            IpClass::Cgnat => "cgnat",
            IpClass::CloudMetadata => "cloud-metadata",
            IpClass::LinkLocal => "link-local",
            IpClass::IetfProtocol => "ietf-protocol",
            IpClass::Documentation => "documentation",
            IpClass::Benchmarking => "benchmarking",
            IpClass::SixToFourRelay => "6to4-relay",
            IpClass::Multicast => "multicast",
            IpClass::Broadcast => "broadcast",
            IpClass::Reserved => "reserved",
            IpClass::Ipv4Mapped => "ipv4-mapped",
            IpClass::Ipv4Compatible => "ipv4-compatible",
            IpClass::Nat64 => "nat64",
            IpClass::Nat64Local => "nat64-local",
            IpClass::SixToFour => "6to4",
            IpClass::Teredo => "teredo",
            IpClass::Orchid => "orchid",
            IpClass::SiteLocal => "site-local",
            IpClass::UniqueLocal => "unique-local",
            IpClass::Discard => "discard",
            IpClass::BrigOwn => "brig-own",
        }
    }

    /// The rule id a denial for this class carries.
    pub fn rule(&self) -> &'static str {
        match self {
            IpClass::Unspecified => "ssrf:unspecified",
            IpClass::Loopback => "ssrf:loopback",
            IpClass::Private => "ssrf:private",
            IpClass::Cgnat => "ssrf:cgnat",
            IpClass::CloudMetadata => "ssrf:cloud-metadata",
            IpClass::LinkLocal => "ssrf:link-local",
            IpClass::IetfProtocol => "ssrf:ietf-protocol",
            IpClass::Documentation => "ssrf:documentation",
            IpClass::Benchmarking => "ssrf:benchmarking",
            IpClass::SixToFourRelay => "ssrf:6to4-relay",
            IpClass::Multicast => "ssrf:multicast",
            IpClass::Broadcast => "ssrf:broadcast",
            IpClass::Reserved => "ssrf:reserved",
            IpClass::Ipv4Mapped => "ssrf:ipv4-mapped",
            IpClass::Ipv4Compatible => "ssrf:ipv4-compatible",
            IpClass::Nat64 => "ssrf:nat64",
            IpClass::Nat64Local => "ssrf:nat64-local",
            IpClass::SixToFour => "ssrf:6to4",
            IpClass::Teredo => "ssrf:teredo",
            IpClass::Orchid => "ssrf:orchid",
            IpClass::SiteLocal => "ssrf:site-local",
            IpClass::UniqueLocal => "ssrf:unique-local",
            IpClass::Discard => "ssrf:discard",
            IpClass::BrigOwn => "ssrf:brig-own",
        }
    }
}

/// Special IPv4 ranges, most specific first (the first match names the
/// class).
const V4_RANGES: &[(Cidr, IpClass)] = &[
    (Cidr::v4([169, 254, 169, 254], 32), IpClass::CloudMetadata),
    (Cidr::v4([255, 255, 255, 255], 32), IpClass::Broadcast),
    (Cidr::v4([0, 0, 0, 0], 8), IpClass::Unspecified),
    (Cidr::v4([10, 0, 0, 0], 8), IpClass::Private),
    (Cidr::v4([100, 64, 0, 0], 10), IpClass::Cgnat),
    (Cidr::v4([127, 0, 0, 0], 8), IpClass::Loopback),
    (Cidr::v4([169, 254, 0, 0], 16), IpClass::LinkLocal),
    (Cidr::v4([172, 16, 0, 0], 12), IpClass::Private),
    (Cidr::v4([192, 0, 0, 0], 24), IpClass::IetfProtocol),
    (Cidr::v4([192, 0, 2, 0], 24), IpClass::Documentation),
    (Cidr::v4([192, 88, 99, 0], 24), IpClass::SixToFourRelay),
    (Cidr::v4([192, 168, 0, 0], 16), IpClass::Private),
    (Cidr::v4([198, 18, 0, 0], 15), IpClass::Benchmarking),
    (Cidr::v4([198, 51, 100, 0], 24), IpClass::Documentation),
    (Cidr::v4([203, 0, 113, 0], 24), IpClass::Documentation),
    (Cidr::v4([224, 0, 0, 0], 4), IpClass::Multicast),
    (Cidr::v4([240, 0, 0, 0], 4), IpClass::Reserved),
];

/// Special IPv6 ranges, most specific first. Anything outside 2000::/3
/// that none of these names is [`IpClass::Reserved`].
const V6_RANGES: &[(Cidr, IpClass)] = &[
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        IpClass::Unspecified,
    ),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), IpClass::Loopback),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        IpClass::Ipv4Mapped,
    ),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        IpClass::Ipv4Compatible,
    ),
    (
        Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),
        IpClass::Nat64,
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        IpClass::Nat64Local,
    ),
    (Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), IpClass::Discard),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), IpClass::Teredo),
    (
        Cidr::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
        IpClass::Benchmarking,
    ),
    (
        Cidr::v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),
        IpClass::Orchid,
    ),
    (
        Cidr::v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
        IpClass::Orchid,
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        IpClass::Documentation,
    ),
    (
        Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
        IpClass::SixToFour,
    ),
    (
        Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        IpClass::Documentation,
    ),
    (
        Cidr::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        IpClass::CloudMetadata,
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        IpClass::UniqueLocal,
    ),
    (
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        IpClass::LinkLocal,
    ),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        IpClass::SiteLocal,
    ),
    (
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        IpClass::Multicast,
    ),
];

const GLOBAL_UNICAST: Cidr = Cidr::v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// The special range an address is in, if any (ignoring trust and brig's
/// own addresses). For IPv6 outside 2000::/3 with no other class, the range
/// reported is `::/0` minus 2000::/3, written as the address's /3.
pub fn special_range(ip: IpAddr) -> Option<(Cidr, IpClass)> {
    let table = if ip.is_ipv4() { V4_RANGES } else { V6_RANGES };
    if let Some(hit) = table.iter().find(|(c, _)| c.contains(ip)) {
        return Some(*hit);
    }
    if ip.is_ipv6() && !GLOBAL_UNICAST.contains(ip) {
        let slash3 = Cidr::new(IpAddr::V6(Ipv6Addr::from(bits(ip) & mask(false, 3))), 3)?;
        return Some((slash3, IpClass::Reserved));
    }
    None
}

/// The IPv4 address an IPv6 address embeds, for the forms that embed one.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match special_range(IpAddr::V6(ip))?.1 {
        IpClass::Ipv4Mapped | IpClass::Nat64 => Some(low),
        // ::/96 but not :: and ::1 themselves (classified before).
        IpClass::Ipv4Compatible => Some(low),
        IpClass::SixToFour => Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        )),
        // Teredo: the client's address is the last 32 bits, inverted.
        IpClass::Teredo => Some(Ipv4Addr::from(!u32::from(low))),
        _ => None,
    }
}

/// An address the guard refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SsrfDenial {
    /// The address is in a denied range.
    #[error("{address} is in {range} ({}){}", .class.name(), embedded_text(.embedded))]
    Blocked {
        address: IpAddr,
        range: Cidr,
        class: IpClass,
        /// For IPv6 forms embedding IPv4: the embedded address, and its own
        /// special range when it has one.
        embedded: Option<(Ipv4Addr, Option<(Cidr, IpClass)>)>,
    },
    /// The name resolved to no address at all.
    #[error("the name resolved to no address")]
    NoAddresses,
}

fn embedded_text(e: &Option<(Ipv4Addr, Option<(Cidr, IpClass)>)>) -> String {
    match e {
        Some((v4, Some((r, c)))) => format!(", embedding {v4} in {r} ({})", c.name()),
        Some((v4, None)) => format!(", embedding {v4}"),
        None => String::new(),
    }
}

impl SsrfDenial {
    /// The rule id: `ssrf:<class>` (or `ssrf:no-address`).
    pub fn rule(&self) -> &'static str {
        match self {
            SsrfDenial::Blocked { class, .. } => class.rule(),
            SsrfDenial::NoAddresses => "ssrf:no-address",
        }
    }

    /// The text for a 403 body and the journal: what was refused and how to
    /// ask for access.
    pub fn how_to_request_access(&self) -> String {
        match self {
            SsrfDenial::Blocked { class: IpClass::BrigOwn, .. } => {
                "brig's own addresses are never reachable through the egress proxy; \
                 use the git and model gateways brig provides to the session"
                    .to_string()
            }
            SsrfDenial::Blocked {
                address,
                class:
                    IpClass::Ipv4Mapped | IpClass::Ipv4Compatible | IpClass::Nat64 | IpClass::SixToFour | IpClass::Teredo,
                embedded,
                ..
            } => {
                let v4 = embedded.map(|(v4, _)| format!(" {v4}")).unwrap_or_default();
                format!(
                    "addresses that embed IPv4 in IPv6 are refused; dial the IPv4 address{v4} itself \
                     (it is judged on its own). Trusting the whole embedding range would trust every \
                     address it embeds; if this one address is really meant to be reachable, ask the \
                     operator to add \"{address}/128\" to [egress.ssrf] trusted_cidrs in brig.toml"
                )
            }
            SsrfDenial::Blocked { range, .. } => format!(
                "internal and special-purpose addresses are refused; if this network is really meant \
                 to be reachable from sessions, ask the operator to add \"{range}\" (or a narrower range) \
                 to [egress.ssrf] trusted_cidrs in brig.toml"
            ),
            SsrfDenial::NoAddresses => "check the host name; nothing can be dialed".to_string(),
        }
    }
}

/// SSRF guard configuration (`[egress.ssrf]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsrfConfig {
    /// Ranges that are reachable even though they are special-purpose
    /// (for example a registry mirror on a private network).
    pub trusted_cidrs: Vec<Cidr>,
    /// brig's own addresses: always denied, even inside a trusted range.
    pub own_addresses: Vec<Cidr>,
}

/// The compiled SSRF guard (cheap to clone, no allocation per check).
#[derive(Clone, Debug, Default)]
pub struct SsrfGuard {
    trusted: Vec<Cidr>,
    own: Vec<Cidr>,
}

/// An address the guard let through, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVerdict {
    /// A public unicast address.
    Public,
    /// A special-purpose address inside a trusted CIDR.
    Trusted(Cidr),
}

impl SsrfGuard {
    /// A guard from configuration.
    pub fn new(config: &SsrfConfig) -> SsrfGuard {
        SsrfGuard {
            trusted: config.trusted_cidrs.clone(),
            own: config.own_addresses.clone(),
        }
    }

    /// Add one of brig's own addresses (for example a listening address
    /// found at start).
    pub fn add_own(&mut self, cidr: Cidr) {
        self.own.push(cidr);
    }

    /// Judge one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<IpVerdict, SsrfDenial> {
        if let Some(own) = self.own.iter().find(|c| c.contains(ip)) {
            return Err(SsrfDenial::Blocked {
                address: ip,
                range: *own,
                class: IpClass::BrigOwn,
                embedded: None,
            });
        }
        if let Some(t) = self.trusted.iter().find(|c| c.contains(ip)) {
            return Ok(IpVerdict::Trusted(*t));
        }
        match special_range(ip) {
            None => Ok(IpVerdict::Public),
            Some((range, class)) => {
                let embedded = match ip {
                    IpAddr::V6(v6) => {
                        embedded_ipv4(v6).map(|v4| (v4, special_range(IpAddr::V4(v4))))
                    }
                    IpAddr::V4(_) => None,
                };
                Err(SsrfDenial::Blocked {
                    address: ip,
                    range,
                    class,
                    embedded,
                })
            }
        }
    }

    /// Resolve once, check every address, dial exactly the checked address:
    /// every address must pass, or the whole name is denied with the first
    /// offending address. Returns the addresses (deduplicated, in order) to
    /// dial.
    pub fn check_resolved(&self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, SsrfDenial> {
        if addrs.is_empty() {
            return Err(SsrfDenial::NoAddresses);
        }
        let mut out = Vec::with_capacity(addrs.len());
        for &ip in addrs {
            self.check_ip(ip)?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn class_of(g: &SsrfGuard, s: &str) -> Option<IpClass> {
        match g.check_ip(ip(s)) {
            Ok(_) => None,
            Err(SsrfDenial::Blocked { class, .. }) => Some(class),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(c.contains(ip("203.0.113.255")));
        assert!(!c.contains(ip("203.0.114.0")));
        assert!(!c.contains(ip("::ffff:203.0.113.1")));
        assert_eq!(c.to_string(), "203.0.113.0/24");
        assert_eq!(
            "10.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix(), 0);
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10/8",
            "::1/129",
            "x",
            "10.0.0.0/+8",
            "0x7f.1/32",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_v4_range() {
        let g = SsrfGuard::default();
        let cases = [
            ("0.0.0.0", IpClass::Unspecified),
            ("0.255.255.255", IpClass::Unspecified),
            ("10.0.0.0", IpClass::Private),
            ("10.255.255.255", IpClass::Private),
            ("172.16.0.1", IpClass::Private),
            ("172.31.255.255", IpClass::Private),
            ("192.168.0.1", IpClass::Private),
            ("192.168.255.255", IpClass::Private),
            ("100.64.0.0", IpClass::Cgnat),
            ("100.127.255.255", IpClass::Cgnat),
            ("100.100.100.200", IpClass::Cgnat),
            ("127.0.0.1", IpClass::Loopback),
            ("127.255.255.254", IpClass::Loopback),
            ("169.254.169.254", IpClass::CloudMetadata),
            ("169.254.0.1", IpClass::LinkLocal),
            ("169.254.170.2", IpClass::LinkLocal),
            ("192.0.0.1", IpClass::IetfProtocol),
            ("192.0.0.170", IpClass::IetfProtocol),
            ("192.0.2.1", IpClass::Documentation),
            ("198.51.100.7", IpClass::Documentation),
            ("203.0.113.9", IpClass::Documentation),
            ("192.88.99.1", IpClass::SixToFourRelay),
            ("198.18.0.1", IpClass::Benchmarking),
            ("198.19.255.255", IpClass::Benchmarking),
            ("224.0.0.1", IpClass::Multicast),
            ("239.255.255.250", IpClass::Multicast),
            ("240.0.0.1", IpClass::Reserved),
            ("255.255.255.254", IpClass::Reserved),
            ("255.255.255.255", IpClass::Broadcast),
        ];
        for (a, want) in cases {
            assert_eq!(class_of(&g, a), Some(want), "{a}");
        }
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.255",
            "203.0.114.0",
            "223.255.255.255",
            "151.101.0.223",
        ] {
            assert_eq!(class_of(&g, a), None, "{a}");
        }
    }

    #[test]
    fn every_v6_range() {
        let g = SsrfGuard::default();
        let cases = [
            ("::", IpClass::Unspecified),
            ("::1", IpClass::Loopback),
            ("::ffff:127.0.0.1", IpClass::Ipv4Mapped),
            ("::ffff:8.8.8.8", IpClass::Ipv4Mapped),
            ("::127.0.0.1", IpClass::Ipv4Compatible),
            ("::8.8.8.8", IpClass::Ipv4Compatible),
            ("64:ff9b::7f00:1", IpClass::Nat64),
            ("64:ff9b::808:808", IpClass::Nat64),
            ("64:ff9b:1::1", IpClass::Nat64Local),
            ("100::1", IpClass::Discard),
            ("2001::1", IpClass::Teredo),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", IpClass::Teredo),
            ("2001:2::1", IpClass::Benchmarking),
            ("2001:10::1", IpClass::Orchid),
            ("2001:20::1", IpClass::Orchid),
            ("2001:db8::1", IpClass::Documentation),
            ("2001:db8:ffff::1", IpClass::Documentation),
            ("3fff::1", IpClass::Documentation),
            ("2002:7f00:1::1", IpClass::SixToFour),
            ("2002:808:808::1", IpClass::SixToFour),
            ("fc00::1", IpClass::UniqueLocal),
            ("fd12:3456::1", IpClass::UniqueLocal),
            ("fd00:ec2::254", IpClass::CloudMetadata),
            ("fe80::1", IpClass::LinkLocal),
            ("febf::1", IpClass::LinkLocal),
            ("fec0::1", IpClass::SiteLocal),
            ("ff02::1", IpClass::Multicast),
            ("ff05::2", IpClass::Multicast),
            ("4000::1", IpClass::Reserved),
            ("::2:0:0:1", IpClass::Reserved),
            ("1::1", IpClass::Reserved),
            ("e000::1", IpClass::Reserved),
        ];
        for (a, want) in cases {
            assert_eq!(class_of(&g, a), Some(want), "{a}");
        }
        for a in [
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "2001:4860:4860::8888",
            "2001:db9::1",
            "2003::1",
            "2001:1::1",
            "3ffe::1",
        ] {
            assert_eq!(class_of(&g, a), None, "{a}");
        }
    }

    #[test]
    fn embedded_v4_is_named() {
        let g = SsrfGuard::default();
        let cases = [
            ("::ffff:127.0.0.1", "127.0.0.1", Some(IpClass::Loopback)),
            (
                "::ffff:169.254.169.254",
                "169.254.169.254",
                Some(IpClass::CloudMetadata),
            ),
            ("::ffff:8.8.8.8", "8.8.8.8", None),
            ("::10.0.0.1", "10.0.0.1", Some(IpClass::Private)),
            (
                "64:ff9b::a9fe:a9fe",
                "169.254.169.254",
                Some(IpClass::CloudMetadata),
            ),
            ("2002:c0a8:101::1", "192.168.1.1", Some(IpClass::Private)),
            ("2002:7f00:1::", "127.0.0.1", Some(IpClass::Loopback)),
            // Teredo client 127.0.0.1 is stored inverted: 80ff:fffe.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                "127.0.0.1",
                Some(IpClass::Loopback),
            ),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "192.0.2.45",
                Some(IpClass::Documentation),
            ),
        ];
        for (a, v4, class) in cases {
            match g.check_ip(ip(a)) {
                Err(SsrfDenial::Blocked {
                    embedded: Some((e, r)),
                    ..
                }) => {
                    assert_eq!(e.to_string(), v4, "{a}");
                    assert_eq!(r.map(|(_, c)| c), class, "{a}");
                }
                other => panic!("{a}: {other:?}"),
            }
        }
        let d = g.check_ip(ip("::ffff:127.0.0.1")).unwrap_err();
        assert_eq!(d.to_string(), "::ffff:127.0.0.1 is in ::ffff:0.0.0.0/96 (ipv4-mapped), embedding 127.0.0.1 in 127.0.0.0/8 (loopback)");
        assert_eq!(d.rule(), "ssrf:ipv4-mapped");
    }

    #[test]
    fn trusted_and_own() {
        let cfg = SsrfConfig {
            trusted_cidrs: vec![
                "203.0.113.0/24".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            own_addresses: vec![
                "10.1.2.3".parse().unwrap(),
                "198.51.100.0/24".parse().unwrap(),
            ],
        };
        let g = SsrfGuard::new(&cfg);
        assert_eq!(
            g.check_ip(ip("203.0.113.5")),
            Ok(IpVerdict::Trusted("203.0.113.0/24".parse().unwrap()))
        );
        assert_eq!(g.check_ip(ip("1.1.1.1")), Ok(IpVerdict::Public));
        assert_eq!(class_of(&g, "10.1.2.3"), Some(IpClass::BrigOwn));
        assert_eq!(class_of(&g, "10.1.2.4"), None);
        assert_eq!(class_of(&g, "198.51.100.1"), Some(IpClass::BrigOwn));
        // Trust of a v4 range does not extend to its v6 embeddings.
        assert_eq!(
            class_of(&g, "::ffff:203.0.113.5"),
            Some(IpClass::Ipv4Mapped)
        );
        assert_eq!(class_of(&g, "127.0.0.1"), Some(IpClass::Loopback));
        let d = g.check_ip(ip("10.1.2.3")).unwrap_err();
        assert_eq!(d.rule(), "ssrf:brig-own");
        assert!(d.how_to_request_access().contains("gateways"));
        let d = SsrfGuard::default()
            .check_ip(ip("192.168.1.1"))
            .unwrap_err();
        assert!(
            d.how_to_request_access().contains("\"192.168.0.0/16\""),
            "{}",
            d.how_to_request_access()
        );
    }

    #[test]
    fn check_resolved_all_or_nothing() {
        let g = SsrfGuard::new(&SsrfConfig {
            trusted_cidrs: vec!["203.0.113.0/24".parse().unwrap()],
            ..Default::default()
        });
        assert_eq!(
            g.check_resolved(&[ip("203.0.113.10"), ip("2606:4700::1"), ip("203.0.113.10")]),
            Ok(vec![ip("203.0.113.10"), ip("2606:4700::1")])
        );
        let d = g
            .check_resolved(&[ip("203.0.113.10"), ip("127.0.0.1")])
            .unwrap_err();
        assert_eq!(d.to_string(), "127.0.0.1 is in 127.0.0.0/8 (loopback)");
        assert_eq!(g.check_resolved(&[]), Err(SsrfDenial::NoAddresses));
        // A rebinding answer mixed into a good set still denies the name.
        let d = g.check_resolved(&[ip("1.1.1.1"), ip("::1")]).unwrap_err();
        assert_eq!(d.rule(), "ssrf:loopback");
    }

    #[test]
    fn exhaustive_v4_sweep_matches_std() {
        // Cross-check a sample of the v4 space against std's own predicates.
        let g = SsrfGuard::default();
        let mut x: u32 = 12345;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let a = Ipv4Addr::from(x);
            let std_special = a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || a.is_unspecified()
                || a.octets()[0] == 0
                || (a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64)
                || a.octets()[0] >= 240
                || (a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18)
                || (a.octets()[0] == 192 && a.octets()[1] == 0 && a.octets()[2] == 0)
                || (a.octets()[0] == 192 && a.octets()[1] == 88 && a.octets()[2] == 99);
            assert_eq!(g.check_ip(IpAddr::V4(a)).is_err(), std_special, "{a}");
        }
    }
}
