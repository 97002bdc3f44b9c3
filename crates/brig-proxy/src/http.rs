//! The HTTP/1.1 pieces of the proxy: reading a head within a size cap and
//! a deadline, body framing (Content-Length, chunked, close-delimited),
//! and brig's own answers.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why a head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The peer closed (or was idle past the keep-alive timeout) before
    /// sending a byte of this head: no answer needed.
    Closed,
    /// Over the size cap.
    TooLarge,
    /// Bytes came, but the head was not complete in time.
    Timeout,
    Io(io::Error),
}

/// Read until `buf` holds a complete head (ending in CRLF CRLF); returns
/// its length. `idle` bounds the wait for the first byte, `complete` the
/// time from the first byte to the end of the head.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    idle: Duration,
    complete: Duration,
) -> Result<usize, HeadError> {
    let mut deadline = if buf.is_empty() {
        Instant::now() + idle
    } else {
        Instant::now() + complete
    };
    let mut searched: usize = 0;
    loop {
        if let Some(p) = memchr::memmem::find(&buf[searched.saturating_sub(3)..], b"\r\n\r\n") {
            return Ok(searched.saturating_sub(3) + p + 4);
        }
        searched = buf.len();
        if buf.len() >= max {
            return Err(HeadError::TooLarge);
        }
        let was_empty = buf.is_empty();
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve((buf.capacity()).clamp(1024, max));
        }
        let n = match tokio::time::timeout_at(deadline, r.read_buf(buf)).await {
            Err(_) if was_empty => return Err(HeadError::Closed),
            Err(_) => return Err(HeadError::Timeout),
            Ok(Err(e)) => return Err(HeadError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(if was_empty {
                HeadError::Closed
            } else {
                HeadError::Io(io::ErrorKind::UnexpectedEof.into())
            });
        }
        if was_empty {
            deadline = Instant::now() + complete;
        }
    }
}

/// How a message body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Header helpers over httparse headers.
pub fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Whether a comma-separated header (all instances) holds `token`.
pub fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Body framing of a request (RFC 9112 §6.3); `Err` for the forms that
/// allow request smuggling: both Transfer-Encoding and Content-Length,
/// differing Content-Lengths, a Transfer-Encoding other than `chunked`.
pub fn request_framing(headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
    let te: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| h.value)
        .collect();
    let cl = content_length(headers)?;
    if !te.is_empty() {
        if cl.is_some() {
            return Err("both Transfer-Encoding and Content-Length");
        }
        if te.len() != 1 || !te[0].trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding other than chunked");
        }
        return Ok(Framing::Chunked);
    }
    Ok(match cl {
        Some(0) | None => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, &'static str> {
    let mut cl: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = h.value.trim_ascii();
        if v.is_empty() || v.len() > 19 || !v.iter().all(|b| b.is_ascii_digit()) {
            return Err("an invalid Content-Length");
        }
        let n: u64 = std::str::from_utf8(v)
            .unwrap()
            .parse()
            .map_err(|_| "an invalid Content-Length")?;
        if cl.is_some_and(|c| c != n) {
            return Err("differing Content-Lengths");
        }
        cl = Some(n);
    }
    Ok(cl)
}

/// Body framing of a response to `method`.
pub fn response_framing(
    method: &str,
    status: u16,
    headers: &[httparse::Header<'_>],
) -> Result<Framing, &'static str> {
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    let te: Vec<&[u8]> = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| h.value)
        .collect();
    if !te.is_empty() {
        let last = te
            .last()
            .and_then(|v| v.split(|&b| b == b',').next_back())
            .map(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            .unwrap_or(false);
        return Ok(if last {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(match content_length(headers)? {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Headers never forwarded (hop-by-hop, and brig's own concern).
pub fn hop_by_hop(name: &str) -> bool {
    const HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether `name` is listed in a Connection header (so hop-by-hop too).
/// Host and the framing headers are never dropped this way: dropping them
/// would let a client smuggle a body past brig's framing.
pub fn listed_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    if ["host", "content-length", "transfer-encoding"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
    {
        return false;
    }
    has_token(headers, "connection", name)
}

/// Tracks where a chunked body ends, over the raw bytes (which are
/// forwarded unchanged).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    line: usize,
    size: u64,
    digits: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    LastCr,
    LastLf,
    Done,
}

const MAX_CHUNK_LINE: usize = 4096;

impl Chunked {
    /// Feed bytes; `Ok(Some(n))` when the body ends after `n` of them.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, &'static str> {
        self.feed_inner(data, None)
    }

    /// As [`Chunked::feed`], also appending the chunks' data (the body
    /// itself, without framing or trailers) to `out`.
    pub fn feed_data(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, &'static str> {
        self.feed_inner(data, Some(out))
    }

    fn feed_inner(
        &mut self,
        data: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Option<usize>, &'static str> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Data(left) => {
                    let take = (left as usize).min(data.len() - i) as u64;
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(&data[i..i + take as usize]);
                    }
                    i += take as usize;
                    self.state = if take == left {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left - take)
                    };
                    continue;
                }
                ChunkState::Size => {
                    if let Some(d) = (b as char).to_digit(16) {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size * 16 + d as u64;
                    } else if self.digits == 0 {
                        return Err("bad chunk size");
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = ChunkState::Ext;
                    } else {
                        return Err("bad chunk size");
                    }
                }
                ChunkState::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err("chunk extension too long");
                    }
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' || b < 0x20 && b != b'\t' {
                        return Err("bad chunk extension");
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("bad chunk line");
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        ChunkState::LastCr
                    } else {
                        ChunkState::Data(self.size)
                    };
                    self.size = 0;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err("missing CRLF after chunk");
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("missing CRLF after chunk");
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::LastCr => {
                    // Either the final CRLF or a trailer field.
                    if b == b'\r' {
                        self.state = ChunkState::LastLf;
                    } else {
                        self.state = ChunkState::Trailer;
                        self.line = 1;
                    }
                }
                ChunkState::Trailer => {
                    self.line += 1;
                    if self.line > 16 * 1024 {
                        return Err("trailer too long");
                    }
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err("bad trailer");
                    }
                    self.state = ChunkState::LastCr;
                }
                ChunkState::LastLf => {
                    if b != b'\n' {
                        return Err("bad end of chunked body");
                    }
                    self.state = ChunkState::Done;
                    return Ok(Some(i + 1));
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// Counts and limits applied while copying one direction.
pub trait Meter {
    /// `n` bytes were copied; false to stop (a limit was hit).
    fn copied(&mut self, n: usize) -> bool;
}

/// Copy one body from `pre` (bytes already read, consumed from its front)
/// and then `src` to `dst`. Returns bytes copied; the bytes after the body
/// stay in `pre`. `idle` bounds each read.
pub async fn copy_body<R, W, M>(
    pre: &mut Vec<u8>,
    src: &mut R,
    dst: &mut W,
    framing: Framing,
    idle: Duration,
    meter: &mut M,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    M: Meter,
{
    let mut total = 0u64;
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::None => return Ok(0),
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let limit = |e: &'static str| io::Error::new(io::ErrorKind::InvalidData, e);
    // What is already buffered.
    if !pre.is_empty() {
        let take = match framing {
            Framing::Length(_) => (left.min(pre.len() as u64)) as usize,
            Framing::Chunked => match chunked.feed(pre).map_err(limit)? {
                Some(n) => {
                    left = 0;
                    n
                }
                None => pre.len(),
            },
            _ => pre.len(),
        };
        dst.write_all(&pre[..take]).await?;
        if !meter.copied(take) {
            return Err(io::Error::other("limit"));
        }
        pre.drain(..take);
        total += take as u64;
        if let Framing::Length(_) = framing {
            left -= take as u64;
        }
    }
    if left == 0 {
        return Ok(total);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let want = if let Framing::Length(_) = framing {
            left.min(buf.len() as u64) as usize
        } else {
            buf.len()
        };
        let n = match tokio::time::timeout(idle, src.read(&mut buf[..want])).await {
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            Ok(r) => r?,
        };
        if n == 0 {
            if framing == Framing::Close {
                return Ok(total);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut take = n;
        let mut done = false;
        match framing {
            Framing::Length(_) => {
                left -= n as u64;
                done = left == 0;
            }
            Framing::Chunked => {
                if let Some(end) = chunked.feed(&buf[..n]).map_err(limit)? {
                    take = end;
                    done = true;
                    // Bytes after the body (a pipelined request) go back.
                    pre.extend_from_slice(&buf[end..n]);
                }
            }
            _ => {}
        }
        dst.write_all(&buf[..take]).await?;
        total += take as u64;
        if !meter.copied(take) {
            return Err(io::Error::other("limit"));
        }
        if done {
            return Ok(total);
        }
        // Bulk bodies get a bigger buffer (fewer system calls).
        if n == buf.len() && buf.len() < 256 * 1024 {
            buf = vec![0u8; buf.len() * 4];
        }
    }
}

/// brig's own answer: status, a few headers, a text body.
pub fn answer(status: u16, extra: &[(&str, &str)], body: &str, close: bool) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let mut s = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        body.len()
    );
    for (k, v) in extra {
        s.push_str(k);
        s.push_str(": ");
        // Header values never carry a line break.
        s.extend(v.chars().filter(|c| *c != '\r' && *c != '\n'));
        s.push_str("\r\n");
    }
    if close {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_ends() {
        let body = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let (a, b) = body.split_at(split);
            let end = match c.feed(a).unwrap() {
                Some(n) => n,
                None => split + c.feed(b).unwrap().unwrap(),
            };
            assert_eq!(&body[end..], b"GET /next", "split {split}");
        }
        let mut c = Chunked::default();
        assert!(c.feed(b"zz\r\n").is_err());
        let mut c = Chunked::default();
        assert!(c.feed(b"3\r\nabcX").is_err());
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"0\r\n\r\n").unwrap(), Some(5));
    }

    #[test]
    fn smuggling_forms_refused() {
        let h = |v: &[(&'static str, &'static [u8])]| -> Vec<httparse::Header<'static>> {
            v.iter()
                .map(|(n, v)| httparse::Header { name: n, value: v })
                .collect()
        };
        assert!(request_framing(&h(&[
            ("Content-Length", b"3"),
            ("Transfer-Encoding", b"chunked")
        ]))
        .is_err());
        assert!(
            request_framing(&h(&[("Content-Length", b"3"), ("Content-Length", b"4")])).is_err()
        );
        assert!(request_framing(&h(&[("Content-Length", b"+3")])).is_err());
        assert!(request_framing(&h(&[("Transfer-Encoding", b"gzip, chunked")])).is_err());
        assert_eq!(
            request_framing(&h(&[("Content-Length", b"3"), ("Content-Length", b"3")])),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            request_framing(&h(&[("transfer-encoding", b"Chunked")])),
            Ok(Framing::Chunked)
        );
        assert!(!listed_in_connection(
            &h(&[("Connection", b"content-length")]),
            "Content-Length"
        ));
        assert!(listed_in_connection(
            &h(&[("Connection", b"close, X-Secret")]),
            "x-secret"
        ));
    }
}
