//! Reading the server name (SNI) out of a TLS ClientHello without
//! terminating TLS. The proxy peeks: it buffers the client's first bytes,
//! parses them here, and forwards exactly those bytes upstream afterwards.

/// What the first bytes of a stream say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Partial,
    /// A complete ClientHello with this server name (`host_name` type).
    Sni(String),
    /// A complete ClientHello without a server name.
    NoSni,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
}

/// The largest ClientHello brig buffers (handshake message, all records).
pub const MAX_HELLO: usize = 16 * 1024;

/// Parse the records at the start of `buf`.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    // Reassemble the handshake message from consecutive handshake records.
    let mut msg: Vec<u8> = Vec::new();
    let mut i = 0;
    loop {
        if buf.len() < i + 5 {
            return if buf.len() > i && buf[i] != 0x16 {
                Hello::NotTls
            } else {
                Hello::Partial
            };
        }
        if buf[i] != 0x16 || buf[i + 1] != 0x03 {
            return Hello::NotTls;
        }
        let len = u16::from_be_bytes([buf[i + 3], buf[i + 4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Hello::NotTls;
        }
        if buf.len() < i + 5 + len {
            // Judge what we have so far: a bad type fails early.
            if i == 0 && buf.len() > 5 && buf[5] != 0x01 {
                return Hello::NotTls;
            }
            return Hello::Partial;
        }
        msg.extend_from_slice(&buf[i + 5..i + 5 + len]);
        i += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != 0x01 {
                return Hello::NotTls;
            }
            let hlen = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if hlen + 4 > MAX_HELLO {
                return Hello::NotTls;
            }
            if msg.len() >= hlen + 4 {
                return parse_hello_body(&msg[4..4 + hlen]);
            }
        }
        if i >= MAX_HELLO + 5 * 8 {
            return Hello::NotTls;
        }
    }
}

struct Rd<'a> {
    b: &'a [u8],
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

fn parse_hello_body(body: &[u8]) -> Hello {
    let mut r = Rd { b: body };
    let parsed = (|| {
        r.take(2 + 32)?; // legacy_version, random
        let n = r.u8()?;
        r.take(n)?; // session id
        let n = r.u16()?;
        r.take(n)?; // cipher suites
        let n = r.u8()?;
        r.take(n)?; // compression methods
        if r.b.is_empty() {
            return Some(None);
        }
        let n = r.u16()?;
        let mut ext = Rd { b: r.take(n)? };
        let mut found: Option<String> = None;
        while !ext.b.is_empty() {
            let typ = ext.u16()?;
            let len = ext.u16()?;
            let data = ext.take(len)?;
            if typ == 0 {
                if found.is_some() {
                    return Some(Some(Err(()))); // two SNI extensions
                }
                let mut d = Rd { b: data };
                let list_len = d.u16()?;
                let mut list = Rd {
                    b: d.take(list_len)?,
                };
                while !list.b.is_empty() {
                    let kind = list.u8()?;
                    let l = list.u16()?;
                    let name = list.take(l)?;
                    if kind == 0 {
                        if found.is_some() {
                            return Some(Some(Err(())));
                        }
                        let s = std::str::from_utf8(name).ok()?;
                        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
                            return Some(Some(Err(())));
                        }
                        found = Some(s.to_string());
                    }
                }
            }
        }
        Some(found.map(Ok))
    })();
    match parsed {
        None => Hello::NotTls,
        Some(None) => Hello::NoSni,
        Some(Some(Ok(s))) => Hello::Sni(s),
        Some(Some(Err(()))) => Hello::NotTls,
    }
}

/// A minimal, syntactically valid ClientHello (TLS 1.2 record framing)
/// carrying `sni` (or none), for tests and benchmarks.
pub fn build_client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x03]);
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
    body.extend_from_slice(&[0x01, 0x00]);
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let n = name.len() as u16;
        exts.extend_from_slice(&[0x00, 0x00]);
        exts.extend_from_slice(&(n + 5).to_be_bytes());
        exts.extend_from_slice(&(n + 3).to_be_bytes());
        exts.push(0);
        exts.extend_from_slice(&n.to_be_bytes());
        exts.extend_from_slice(name.as_bytes());
    }
    // supported_versions: TLS 1.3
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_found_in_pieces() {
        let h = build_client_hello(Some("Example.COM"));
        for cut in 0..h.len() {
            assert_eq!(parse_client_hello(&h[..cut]), Hello::Partial, "cut {cut}");
        }
        assert_eq!(parse_client_hello(&h), Hello::Sni("Example.COM".into()));
        assert_eq!(parse_client_hello(&build_client_hello(None)), Hello::NoSni);
    }

    #[test]
    fn split_over_two_records() {
        let h = build_client_hello(Some("a.example"));
        let hs = &h[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![0x16, 0x03, 0x01];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(parse_client_hello(&two), Hello::Sni("a.example".into()));
    }

    #[test]
    fn not_tls() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse_client_hello(b"SSH-2.0-OpenSSH"), Hello::NotTls);
        let mut h = build_client_hello(Some("a.example"));
        let last = h.len() - 8;
        h.truncate(last);
        // Shortened inner lengths: the record claims more than it holds.
        assert_eq!(parse_client_hello(&h), Hello::Partial);
    }
}
