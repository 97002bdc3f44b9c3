//! Syslog, RFC 5424 messages over UDP (RFC 5426, one datagram per event) or
//! TCP (RFC 6587 octet-counting framing).
//!
//! UDP has no acknowledgement: a datagram sent is counted as delivered, so
//! at-least-once holds only for TCP (up to the receiver's TCP stack).

use std::time::Duration;

use brig_core::event::Event;
use brig_core::Result;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use super::{
    event_json, local_hostname, severity, BoxFut, Delivered, DeliveryError, DeliveryResult, Sink,
    CHECKPOINT_ACTION,
};
use crate::config::{SinkConfig, SinkKind, SyslogTransport};
use crate::runner::RunnerOptions;
use crate::{Record, SignedCheckpoint, CHECKPOINT_RECORD};

/// The SD-ID of brig's structured data. 32473 is the private enterprise
/// number reserved for documentation (RFC 5612).
pub const SD_ID: &str = "brig@32473";
const TRUNCATED: &str = "...[brig:truncated]";

const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

pub(crate) fn parse_facility(s: &str) -> Option<u8> {
    if let Ok(n) = s.parse::<u8>() {
        return (n < 24).then_some(n);
    }
    FACILITIES.iter().position(|f| *f == s).map(|p| p as u8)
}

/// Header fields that are the same for every message.
#[derive(Clone)]
pub(crate) struct Header {
    pub facility: u8,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
}

/// PRINTUSASCII only, at most `max` characters, `-` when empty (RFC 5424 NILVALUE).
fn field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if f.is_empty() {
        "-".into()
    } else {
        f
    }
}

fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 5424 TIMESTAMP: at most 6 fractional digits, UTC.
fn timestamp(nanos: i128) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// One RFC 5424 message (no framing). With `max`, the MSG part is cut at a
/// character boundary so the whole message fits, and a marker is appended.
pub(crate) fn format_message(h: &Header, e: &Event, max: Option<usize>) -> Vec<u8> {
    let pri = h.facility as u16 * 8 + severity(e.outcome).0 as u16;
    let outcome = serde_json::to_value(e.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut sd = format!(
        "[{SD_ID} id=\"{}\" seq=\"{}\" outcome=\"{}\"",
        sd_escape(&e.id),
        e.seq,
        outcome
    );
    if let Some(s) = &e.session {
        sd.push_str(&format!(" session=\"{}\"", sd_escape(s)));
    }
    sd.push(']');
    assemble(
        h,
        pri,
        super::event_unix_nanos(e),
        &e.action,
        &sd,
        &event_json(e),
        max,
    )
}

/// A signed checkpoint as an RFC 5424 message: severity informational,
/// MSGID `journal.checkpoint`, SD `[brig@32473 record="checkpoint" seq="…"
/// key_id="…"]`, MSG the checkpoint record JSON.
pub(crate) fn format_checkpoint(h: &Header, c: &SignedCheckpoint, max: Option<usize>) -> Vec<u8> {
    let pri = h.facility as u16 * 8 + 6;
    let sd = format!(
        "[{SD_ID} record=\"{CHECKPOINT_RECORD}\" seq=\"{}\" key_id=\"{}\"]",
        c.seq,
        sd_escape(&c.key_id)
    );
    assemble(
        h,
        pri,
        super::unix_nanos(&c.time),
        CHECKPOINT_ACTION,
        &sd,
        &c.record_json(),
        max,
    )
}

pub(crate) fn format_record(h: &Header, r: &Record, max: Option<usize>) -> Vec<u8> {
    match r {
        Record::Event(e) => format_message(h, e, max),
        Record::Checkpoint(c) => format_checkpoint(h, c, max),
    }
}

fn assemble(
    h: &Header,
    pri: u16,
    nanos: i128,
    msgid: &str,
    sd: &str,
    msg: &str,
    max: Option<usize>,
) -> Vec<u8> {
    let head = format!(
        "<{pri}>1 {} {} {} {} {} {sd} ",
        timestamp(nanos),
        field(&h.hostname, 255),
        field(&h.app_name, 48),
        field(&h.procid, 128),
        field(msgid, 32),
    );
    let mut out = head.into_bytes();
    match max {
        Some(max) if out.len() + msg.len() > max => {
            let room = max.saturating_sub(out.len() + TRUNCATED.len());
            let mut cut = room.min(msg.len());
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            out.extend_from_slice(&msg.as_bytes()[..cut]);
            out.extend_from_slice(TRUNCATED.as_bytes());
        }
        _ => out.extend_from_slice(msg.as_bytes()),
    }
    out
}

pub(crate) struct SyslogSink {
    header: Header,
    transport: SyslogTransport,
    addr: String,
    max_datagram: usize,
    timeout: Duration,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
}

impl SyslogSink {
    pub fn new(cfg: &SinkConfig, opts: &RunnerOptions) -> Result<Self> {
        let SinkKind::Syslog {
            transport,
            addr,
            app_name,
            facility,
            max_datagram,
        } = &cfg.kind
        else {
            unreachable!("SyslogSink built from another kind")
        };
        let port_ok = addr
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
            .unwrap_or(false);
        if !port_ok {
            return Err(cfg
                .err("addr", format!("`{addr}` is not host:port"))
                .hint("for example 127.0.0.1:514 or [::1]:6514"));
        }
        let facility = parse_facility(facility).ok_or_else(|| {
            cfg.err("facility", format!("`{facility}` is not a syslog facility"))
                .hint(format!("use 0..=23 or one of: {}", FACILITIES.join(", ")))
        })?;
        // RFC 5426: receivers must take 480 bytes; an IPv4 UDP payload is at most 65507.
        if !(480..=65507).contains(max_datagram) {
            return Err(cfg.err("max_datagram", "must be between 480 and 65507 bytes"));
        }
        Ok(SyslogSink {
            header: Header {
                facility,
                hostname: opts.hostname.clone().unwrap_or_else(local_hostname),
                app_name: app_name.clone(),
                procid: std::process::id().to_string(),
            },
            transport: *transport,
            addr: addr.clone(),
            max_datagram: *max_datagram,
            timeout: cfg.timeout,
            tcp: None,
            udp: None,
        })
    }

    async fn tcp_send(&mut self, data: &[u8]) -> std::result::Result<(), String> {
        // A peer that closed shows up as EOF on read before a write fails:
        // check first so a batch is not written into a dead connection.
        if let Some(s) = &self.tcp {
            let mut probe = [0u8; 64];
            match s.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(n) if n > 0 => {}
                _ => self.tcp = None,
            }
        }
        if self.tcp.is_none() {
            let s = tokio::time::timeout(self.timeout, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| format!("connect to {} timed out", self.addr))?
                .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
            let _ = s.set_nodelay(true);
            self.tcp = Some(s);
        }
        let s = self.tcp.as_mut().expect("connected above");
        let res = tokio::time::timeout(self.timeout, async {
            s.write_all(data).await?;
            s.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.tcp = None;
                Err(format!("write to {} failed: {e}", self.addr))
            }
            Err(_) => {
                self.tcp = None;
                Err(format!("write to {} timed out", self.addr))
            }
        }
    }

    async fn udp_socket(&mut self) -> std::result::Result<&UdpSocket, String> {
        if self.udp.is_none() {
            let target = tokio::net::lookup_host(&self.addr)
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.addr))?
                .next()
                .ok_or_else(|| format!("{} resolves to no address", self.addr))?;
            let bind = if target.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = UdpSocket::bind(bind)
                .await
                .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
            s.connect(target)
                .await
                .map_err(|e| format!("cannot connect UDP socket to {}: {e}", self.addr))?;
            self.udp = Some(s);
        }
        Ok(self.udp.as_ref().expect("set above"))
    }
}

impl Sink for SyslogSink {
    fn deliver<'a>(&'a mut self, batch: &'a [Record]) -> BoxFut<'a, DeliveryResult> {
        Box::pin(async move {
            match self.transport {
                SyslogTransport::Tcp => {
                    let mut data = Vec::with_capacity(batch.len() * 300);
                    for e in batch {
                        let m = format_record(&self.header, e, None);
                        data.extend_from_slice(format!("{} ", m.len()).as_bytes());
                        data.extend_from_slice(&m);
                    }
                    self.tcp_send(&data).await.map_err(DeliveryError::retry)?;
                }
                SyslogTransport::Udp => {
                    let max = self.max_datagram;
                    let header = self.header.clone();
                    for (i, e) in batch.iter().enumerate() {
                        let m = format_record(&header, e, Some(max));
                        let sock = self
                            .udp_socket()
                            .await
                            .map_err(|m| DeliveryError::retry(m).after(i))?;
                        if let Err(err) = sock.send(&m).await {
                            self.udp = None;
                            return Err(DeliveryError::retry(format!(
                                "send to {} failed: {err}",
                                self.addr
                            ))
                            .after(i));
                        }
                    }
                }
            }
            Ok(Delivered::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brig_core::event::Outcome;

    fn header() -> Header {
        Header {
            facility: 13,
            hostname: "host one".into(),
            app_name: "brig".into(),
            procid: "42".into(),
        }
    }

    #[test]
    fn message_has_rfc5424_shape() {
        let mut e = Event::new("exec.start", Outcome::Denied);
        e.time = "2026-01-02T03:04:05.123456789Z".into();
        e.seq = 7;
        e.session = Some("s-\"1]".into());
        let m = String::from_utf8(format_message(&header(), &e, None)).unwrap();
        // PRI = 13*8 + 4 (warning); 6 fractional digits; spaces dropped from HOSTNAME.
        let want = format!(
            "<108>1 2026-01-02T03:04:05.123456Z hostone brig 42 exec.start [brig@32473 id=\"{}\" seq=\"7\" outcome=\"denied\" session=\"s-\\\"1\\]\"] {{",
            e.id
        );
        assert!(m.starts_with(&want), "{m}");
        let json = &m[want.len() - 1..];
        let back: Event = serde_json::from_str(json).unwrap();
        assert_eq!(back.id, e.id);
    }

    #[test]
    fn udp_message_is_cut_at_a_char_boundary_with_a_marker() {
        let e = Event::new("x", Outcome::Info).details(serde_json::json!({"s": "é".repeat(2000)}));
        let m = format_message(&header(), &e, Some(600));
        assert!(m.len() <= 600, "{}", m.len());
        let s = String::from_utf8(m).expect("valid UTF-8 after the cut");
        assert!(s.ends_with(TRUNCATED));
    }

    #[test]
    fn facilities_parse_by_name_and_number() {
        assert_eq!(parse_facility("audit"), Some(13));
        assert_eq!(parse_facility("local7"), Some(23));
        assert_eq!(parse_facility("4"), Some(4));
        assert_eq!(parse_facility("24"), None);
        assert_eq!(parse_facility("nope"), None);
    }
}
