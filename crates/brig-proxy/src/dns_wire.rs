//! The DNS wire format, as much as brig needs (RFC 1035): a query's header
//! and single question, responses with A/AAAA answers, and RFC 8914
//! extended errors (with text) when the query had EDNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const SERVFAIL: u8 = 2;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;

pub const A: u16 = 1;
pub const AAAA: u16 = 28;
const OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// RFC 8914 info codes brig uses.
pub const EDE_BLOCKED: u16 = 15;
pub const EDE_PROHIBITED: u16 = 18;

pub fn rcode_name(r: u8) -> &'static str {
    match r {
        NOERROR => "NOERROR",
        FORMERR => "FORMERR",
        SERVFAIL => "SERVFAIL",
        NXDOMAIN => "NXDOMAIN",
        NOTIMP => "NOTIMP",
        REFUSED => "REFUSED",
        _ => "OTHER",
    }
}

/// A parsed query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub rd: bool,
    /// The name as dotted text, or `None` when a label holds bytes that
    /// cannot be a host name (non-printable, non-ASCII, a '.').
    pub name: Option<String>,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as received (echoed in the answer).
    pub question: Vec<u8>,
    /// Whether the query carried an EDNS OPT record.
    pub edns: bool,
}

/// Why a message is not a query brig answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Too short for a header: nothing to answer.
    NoHeader,
    /// A header, but the rest is malformed: FORMERR (or NOTIMP for other
    /// opcodes) with this id.
    Bad { id: u16, rcode: u8 },
}

/// Parse a query (one question, no answers; additional records may hold
/// an OPT).
pub fn parse_query(msg: &[u8]) -> Result<Query, WireError> {
    if msg.len() < 12 {
        return Err(WireError::NoHeader);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let bad = |rcode| WireError::Bad { id, rcode };
    if flags & 0x8000 != 0 {
        return Err(WireError::NoHeader); // a response: never answered
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(bad(NOTIMP));
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let ns = u16::from_be_bytes([msg[8], msg[9]]);
    let ar = u16::from_be_bytes([msg[10], msg[11]]);
    if qd != 1 || an != 0 || ns != 0 {
        return Err(bad(FORMERR));
    }
    let mut i = 12;
    let mut name = String::new();
    let mut printable = true;
    loop {
        let len = *msg.get(i).ok_or(bad(FORMERR))? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(bad(FORMERR)); // no compression in a question
        }
        let label = msg.get(i..i + len).ok_or(bad(FORMERR))?;
        i += len;
        if !name.is_empty() {
            name.push('.');
        }
        if label.iter().all(|&b| b.is_ascii_graphic() && b != b'.') {
            name.push_str(std::str::from_utf8(label).unwrap_or(""));
        } else {
            printable = false;
        }
        if i - 12 > 255 {
            return Err(bad(FORMERR));
        }
    }
    let rest = msg.get(i..i + 4).ok_or(bad(FORMERR))?;
    let qtype = u16::from_be_bytes([rest[0], rest[1]]);
    let qclass = u16::from_be_bytes([rest[2], rest[3]]);
    let question = msg[12..i + 4].to_vec();
    let mut j = i + 4;
    let mut edns = false;
    for _ in 0..ar {
        j = skip_name(msg, j).ok_or(bad(FORMERR))?;
        let h = msg.get(j..j + 10).ok_or(bad(FORMERR))?;
        let t = u16::from_be_bytes([h[0], h[1]]);
        let rdlen = u16::from_be_bytes([h[8], h[9]]) as usize;
        j += 10 + rdlen;
        if j > msg.len() {
            return Err(bad(FORMERR));
        }
        edns |= t == OPT;
    }
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name: printable.then_some(name),
        qtype,
        qclass,
        question,
        edns,
    })
}

/// Skip a (possibly compressed) name; the offset after it.
fn skip_name(msg: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            msg.get(i + 1)?;
            return Some(i + 2);
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
}

/// A response to `q`: `rcode`, A/AAAA `answers` (name by pointer to the
/// question), and an extended error with text when the query had EDNS.
pub fn build_response(
    q: &Query,
    rcode: u8,
    answers: &[(IpAddr, u32)],
    ede: Option<(u16, &str)>,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + answers.len() * 28);
    m.extend_from_slice(&q.id.to_be_bytes());
    let flags: u16 = 0x8000 | 0x0080 | if q.rd { 0x0100 } else { 0 } | rcode as u16;
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&(q.edns as u16).to_be_bytes());
    m.extend_from_slice(&q.question);
    for (ip, ttl) in answers {
        m.extend_from_slice(&[0xc0, 0x0c]);
        let (t, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(a) => (A, a.octets().to_vec()),
            IpAddr::V6(a) => (AAAA, a.octets().to_vec()),
        };
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(&data);
    }
    if q.edns {
        m.push(0);
        m.extend_from_slice(&OPT.to_be_bytes());
        m.extend_from_slice(&1232u16.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        match ede {
            Some((code, text)) => {
                let text = &text.as_bytes()[..text.len().min(400)];
                let olen = 2 + text.len();
                m.extend_from_slice(&((4 + olen) as u16).to_be_bytes());
                m.extend_from_slice(&15u16.to_be_bytes()); // EDE option
                m.extend_from_slice(&(olen as u16).to_be_bytes());
                m.extend_from_slice(&code.to_be_bytes());
                m.extend_from_slice(text);
            }
            None => m.extend_from_slice(&0u16.to_be_bytes()),
        }
    }
    m
}

/// An upstream query for `name` (dotted, already normalized).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(18 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m
}

/// An upstream response: rcode and the answers of type `qtype`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub truncated: bool,
    pub records: Vec<(IpAddr, u32)>,
}

/// Parse an upstream response to the query `sent` (id and question must
/// match, or `None`: not our answer).
pub fn parse_response(msg: &[u8], sent: &[u8], qtype: u16) -> Option<Answer> {
    if msg.len() < 12 || sent.len() < 12 || msg[..2] != sent[..2] {
        return None;
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    if flags & 0x8000 == 0 {
        return None;
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let question = &sent[12..];
    if qd != 1
        || !msg[12..]
            .get(..question.len())?
            .eq_ignore_ascii_case(question)
    {
        return None;
    }
    let mut i = 12 + question.len();
    let mut records = Vec::new();
    for _ in 0..an {
        i = skip_name(msg, i)?;
        let h = msg.get(i..i + 10)?;
        let t = u16::from_be_bytes([h[0], h[1]]);
        let class = u16::from_be_bytes([h[2], h[3]]);
        let ttl = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let rdlen = u16::from_be_bytes([h[8], h[9]]) as usize;
        let data = msg.get(i + 10..i + 10 + rdlen)?;
        i += 10 + rdlen;
        if class != CLASS_IN || t != qtype {
            continue;
        }
        match (t, rdlen) {
            (A, 4) => records.push((
                IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                ttl,
            )),
            (AAAA, 16) => {
                let o: [u8; 16] = data.try_into().ok()?;
                records.push((IpAddr::V6(Ipv6Addr::from(o)), ttl));
            }
            _ => return None,
        }
    }
    Some(Answer {
        rcode: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let m = build_query(0x1234, "Example.com", AAAA);
        let q = parse_query(&m).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name.as_deref(), Some("Example.com"));
        assert_eq!(q.qtype, AAAA);
        assert!(q.rd && !q.edns);
        let ip: IpAddr = "2001:db8::5".parse().unwrap();
        let r = build_response(&q, NOERROR, &[(ip, 60)], None);
        let a = parse_response(&r, &m, AAAA).unwrap();
        assert_eq!(a.records, vec![(ip, 60)]);
        assert_eq!(a.rcode, NOERROR);
        // Another id is not our answer.
        assert!(parse_response(&r, &build_query(1, "example.com", AAAA), AAAA).is_none());
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_query(&[0; 5]), Err(WireError::NoHeader));
        let mut m = build_query(7, "a.example", A);
        m.truncate(m.len() - 2);
        assert_eq!(
            parse_query(&m),
            Err(WireError::Bad {
                id: 7,
                rcode: FORMERR
            })
        );
        let mut m = build_query(7, "a.example", A);
        m[5] = 2; // two questions
        assert!(matches!(parse_query(&m), Err(WireError::Bad { .. })));
        let mut m = build_query(7, "a.example", A);
        m[12] = 0xc0; // a pointer in the question
        assert!(matches!(parse_query(&m), Err(WireError::Bad { .. })));
        let mut m = build_query(7, "a.example", A);
        m[13] = 0; // a NUL byte in a label
        assert_eq!(parse_query(&m).unwrap().name, None);
    }

    #[test]
    fn edns_gets_extended_error() {
        let mut m = build_query(9, "a.example", 16);
        m[11] = 1;
        m.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        let q = parse_query(&m).unwrap();
        assert!(q.edns);
        let r = build_response(&q, REFUSED, &[], Some((EDE_PROHIBITED, "no TXT")));
        assert_eq!(r[3] & 0xf, REFUSED);
        assert!(r.ends_with(b"no TXT"));
    }
}
