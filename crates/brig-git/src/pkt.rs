//! pkt-lines (gitprotocol-common): 4 hex digits of length (including themselves), then
//! the payload; `0000` is a flush, `0001` a delim, `0002` a response-end.

/// The largest pkt-line git sends or accepts (65520 bytes, header included).
pub const MAX_PKT: usize = 65520;

/// One pkt-line with `data` as payload.
pub fn line(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    push_line(&mut out, data);
    out
}

pub fn push_line(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(data.len() + 4 <= MAX_PKT);
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

pub const FLUSH: &[u8] = b"0000";

/// Sideband packets on `band` (1 data, 2 progress/messages, 3 fatal error), split so
/// that no packet exceeds the side-band-64k size.
pub fn push_sideband(out: &mut Vec<u8>, band: u8, data: &[u8]) {
    for chunk in data.chunks(MAX_PKT - 5) {
        let mut p = Vec::with_capacity(chunk.len() + 1);
        p.push(band);
        p.extend_from_slice(chunk);
        push_line(out, &p);
    }
}

/// One packet read from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkt<'a> {
    Flush,
    Delim,
    ResponseEnd,
    Data(&'a [u8]),
}

#[derive(Debug, PartialEq, Eq)]
pub enum PktError {
    /// More bytes are needed to finish the packet.
    Incomplete,
    /// Not a pkt-line at all.
    Invalid(String),
}

/// Parse the packet at the start of `buf`: the packet and how many bytes it used.
pub fn parse(buf: &[u8]) -> Result<(Pkt<'_>, usize), PktError> {
    if buf.len() < 4 {
        return Err(PktError::Incomplete);
    }
    let hex = std::str::from_utf8(&buf[..4])
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .filter(|_| buf[..4].iter().all(u8::is_ascii_hexdigit))
        .ok_or_else(|| {
            PktError::Invalid(format!(
                "bad pkt-line length {:?}",
                String::from_utf8_lossy(&buf[..4])
            ))
        })?;
    match hex {
        0 => Ok((Pkt::Flush, 4)),
        1 => Ok((Pkt::Delim, 4)),
        2 => Ok((Pkt::ResponseEnd, 4)),
        3 => Err(PktError::Invalid("pkt-line length 3 is invalid".into())),
        n if n > MAX_PKT => Err(PktError::Invalid(format!(
            "pkt-line of {n} bytes exceeds {MAX_PKT}"
        ))),
        n if buf.len() < n => Err(PktError::Incomplete),
        n => Ok((Pkt::Data(&buf[4..n]), n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_writes() {
        let mut b = line(b"hello\n");
        b.extend_from_slice(FLUSH);
        assert_eq!(&b[..4], b"000a");
        let (p, n) = parse(&b).unwrap();
        assert_eq!(p, Pkt::Data(b"hello\n"));
        assert_eq!(parse(&b[n..]).unwrap(), (Pkt::Flush, 4));
        assert_eq!(parse(&b[..5]), Err(PktError::Incomplete));
        assert!(matches!(parse(b"zzzz"), Err(PktError::Invalid(_))));
        assert!(matches!(parse(b"ffff"), Err(PktError::Invalid(_))));
        assert!(matches!(parse(b"+0a0"), Err(PktError::Invalid(_))));
    }

    #[test]
    fn sideband_splits_long_messages() {
        let mut out = Vec::new();
        push_sideband(&mut out, 2, &vec![b'x'; MAX_PKT * 2]);
        let mut rest = &out[..];
        let mut total = 0;
        while !rest.is_empty() {
            let (p, n) = parse(rest).unwrap();
            let Pkt::Data(d) = p else { panic!() };
            assert_eq!(d[0], 2);
            total += d.len() - 1;
            rest = &rest[n..];
        }
        assert_eq!(total, MAX_PKT * 2);
    }
}
