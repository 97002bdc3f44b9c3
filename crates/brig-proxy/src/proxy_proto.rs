//! PROXY protocol v1 (HAProxy's text form): the header the in-sandbox
//! forwarder puts in front of every stream it forwards.
//!
//! ```text
//! PROXY TCP4 <src> <dst> <sport> <dport>\r\n
//! PROXY TCP6 <src> <dst> <sport> <dport>\r\n
//! ```
//!
//! At most 107 bytes including CRLF. Strict: single spaces, addresses of
//! the named family, decimal ports without signs or leading zeros.
//! `PROXY UNKNOWN` is refused (brig needs the original destination).

use std::net::{IpAddr, SocketAddr};

/// The longest v1 header, CRLF included (HAProxy spec §2.1).
pub const MAX_V1_LEN: usize = 107;

/// A parsed v1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub src: SocketAddr,
    /// The address the sandbox program connected to.
    pub dst: SocketAddr,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the stream does not start with a PROXY v1 header")]
    NotProxy,
    #[error("the PROXY header is longer than 107 bytes")]
    TooLong,
    #[error("PROXY UNKNOWN (no original destination) is refused")]
    Unknown,
    #[error("malformed PROXY v1 header")]
    Malformed,
}

/// Parse a header line (with or without its CRLF).
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    if line.len() + 2 > MAX_V1_LEN {
        return Err(ProxyHeaderError::TooLong);
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed)?;
    let rest = line
        .strip_prefix("PROXY ")
        .ok_or(ProxyHeaderError::NotProxy)?;
    let mut parts = rest.split(' ');
    let proto = parts.next().ok_or(ProxyHeaderError::Malformed)?;
    if proto == "UNKNOWN" {
        return Err(ProxyHeaderError::Unknown);
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyHeaderError::Malformed),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(ProxyHeaderError::Malformed);
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
        let a: IpAddr = s.parse().map_err(|_| ProxyHeaderError::Malformed)?;
        if a.is_ipv6() != v6 {
            return Err(ProxyHeaderError::Malformed);
        }
        Ok(a)
    };
    let port = |s: &str| -> Result<u16, ProxyHeaderError> {
        if s.is_empty()
            || s.len() > 5
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return Err(ProxyHeaderError::Malformed);
        }
        s.parse().map_err(|_| ProxyHeaderError::Malformed)
    };
    Ok(ProxyHeader {
        src: SocketAddr::new(ip(src)?, port(sport)?),
        dst: SocketAddr::new(ip(dst)?, port(dport)?),
    })
}

/// Format a header (what the forwarder sends; used by tests and benches).
pub fn format_v1(src: SocketAddr, dst: SocketAddr) -> String {
    let proto = if dst.is_ipv6() { "TCP6" } else { "TCP4" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6() {
        let h = parse_v1(b"PROXY TCP4 10.0.0.2 93.184.216.34 51000 443\r\n").unwrap();
        assert_eq!(h.dst, "93.184.216.34:443".parse().unwrap());
        assert_eq!(h.src, "10.0.0.2:51000".parse().unwrap());
        let h = parse_v1(b"PROXY TCP6 fd00::2 2001:db8::1 1 65535\r\n").unwrap();
        assert_eq!(h.dst, "[2001:db8::1]:65535".parse().unwrap());
        let s = format_v1(h.src, h.dst);
        assert_eq!(parse_v1(s.as_bytes()).unwrap(), h);
    }

    #[test]
    fn refused() {
        for bad in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY TCP4 10.0.0.2 1.2.3.4 1 2 3\r\n",
            b"PROXY TCP4 10.0.0.2  1.2.3.4 1 2\r\n",
            b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP6 10.0.0.2 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 10.0.0.2 1.2.3.4 1 65536\r\n",
            b"PROXY TCP4 10.0.0.2 1.2.3.4 1 +80\r\n",
            b"PROXY TCP4 10.0.0.2 1.2.3.4 1 080\r\n",
            b"PROXY TCP4 10.0.0.2 1.2.3.4 1\r\n",
            b"PROXY UDP4 10.0.0.2 1.2.3.4 1 2\r\n",
            b"proxy TCP4 10.0.0.2 1.2.3.4 1 2\r\n",
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 010.0.0.2 1.2.3.4 1 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = format!("PROXY TCP6 {} {} 1 2\r\n", "a:".repeat(30), "b");
        assert!(parse_v1(long.as_bytes()).is_err());
    }
}
