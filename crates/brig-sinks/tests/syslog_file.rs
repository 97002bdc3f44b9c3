//! Syslog (RFC 5424 over TCP with RFC 6587 octet counting, and over UDP) and
//! the JSONL file sink.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::event::Event;
use brig_sinks::{CursorStore, FileCursorStore, SinkConfig, SinkKind, SyslogTransport};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

/// A parsed RFC 5424 message.
#[derive(Debug)]
struct Syslog {
    pri: u16,
    timestamp: String,
    hostname: String,
    app_name: String,
    msgid: String,
    sd: String,
    msg: String,
}

/// A strict parser of `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`.
fn parse_5424(m: &str) -> Result<Syslog, String> {
    let rest = m.strip_prefix('<').ok_or("no PRI")?;
    let (pri, rest) = rest.split_once('>').ok_or("unterminated PRI")?;
    let pri: u16 = pri.parse().map_err(|_| "PRI not a number")?;
    if pri > 191 {
        return Err("PRI out of range".into());
    }
    let rest = rest.strip_prefix("1 ").ok_or("VERSION is not 1")?;
    let mut parts = rest.splitn(6, ' ');
    let mut next = || parts.next().ok_or("header too short");
    let (timestamp, hostname, app_name, procid, msgid) =
        (next()?, next()?, next()?, next()?, next()?);
    let rest = next()?;
    for (f, max) in [(hostname, 255), (app_name, 48), (procid, 128), (msgid, 32)] {
        if f.is_empty() || f.len() > max || !f.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!("bad header field {f:?}"));
        }
    }
    let t = time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("bad TIMESTAMP {timestamp}: {e}"))?;
    let frac = timestamp
        .split('.')
        .nth(1)
        .map(|f| f.trim_end_matches('Z').len())
        .unwrap_or(0);
    if frac > 6 || t.offset() != time::UtcOffset::UTC {
        return Err(format!(
            "TIMESTAMP {timestamp} has more than 6 fractional digits"
        ));
    }
    // SD-ELEMENT: '[' ... ']' with \" \\ \] escapes inside values.
    let b = rest.as_bytes();
    if b.first() != Some(&b'[') {
        return Err("no structured data".into());
    }
    let (mut i, mut in_q) = (1, false);
    while i < b.len() {
        match b[i] {
            b'\\' if in_q => i += 1,
            b'"' => in_q = !in_q,
            b']' if !in_q => break,
            _ => {}
        }
        i += 1;
    }
    let sd = &rest[..=i.min(rest.len() - 1)];
    let msg = rest[i + 1..]
        .strip_prefix(' ')
        .ok_or("no space before MSG")?;
    Ok(Syslog {
        pri,
        timestamp: timestamp.into(),
        hostname: hostname.into(),
        app_name: app_name.into(),
        msgid: msgid.into(),
        sd: sd.into(),
        msg: msg.into(),
    })
}

fn check_event(s: &Syslog) -> Result<Event, String> {
    let e = parse_event(&s.msg)?;
    if s.msgid != e.action || s.hostname != "test-host" || s.app_name != "brig-test" {
        return Err(format!("header does not match the event: {s:?}"));
    }
    // facility local3 (19), severity informational (6).
    if s.pri != 19 * 8 + 6 {
        return Err(format!("PRI {}", s.pri));
    }
    if !s.sd.starts_with("[brig@32473 ")
        || !s.sd.contains(&format!("id=\"{}\"", e.id))
        || !s.sd.contains(&format!("seq=\"{}\"", e.seq))
    {
        return Err(format!("SD {}", s.sd));
    }
    let _ = &s.timestamp;
    Ok(e)
}

/// A checkpoint message: severity informational, MSGID journal.checkpoint,
/// SD with record, seq and key_id; the record JSON as MSG.
fn check_checkpoint(s: &Syslog) -> Result<serde_json::Value, String> {
    let v = parse_checkpoint(&s.msg)?;
    if s.msgid != "journal.checkpoint" || s.hostname != "test-host" || s.pri != 19 * 8 + 6 {
        return Err(format!("checkpoint header: {s:?}"));
    }
    let want = format!(
        "[brig@32473 record=\"checkpoint\" seq=\"{}\" key_id=\"{}\"]",
        v["seq"],
        v["key_id"].as_str().unwrap()
    );
    if s.sd != want {
        return Err(format!("checkpoint SD {} (want {want})", s.sd));
    }
    Ok(v)
}

/// An event or a checkpoint, as a label of the receiver's log: `e<seq>`
/// or `c<seq>`.
fn check_record(s: &Syslog) -> Result<(String, Option<Event>), String> {
    if s.msgid == "journal.checkpoint" {
        let v = check_checkpoint(s)?;
        return Ok((format!("c{}", v["seq"]), None));
    }
    let e = check_event(s)?;
    Ok((format!("e{}", e.seq), Some(e)))
}

/// Every `c<N>` in `log` comes after the first `e<N>`.
fn checkpoints_follow_events(log: &[String]) -> Vec<i64> {
    let mut seen = Vec::new();
    let mut cps = Vec::new();
    for l in log {
        if let Some(n) = l.strip_prefix('c') {
            assert!(
                seen.contains(&format!("e{n}")),
                "checkpoint {n} before its event: {log:?}"
            );
            let n: i64 = n.parse().unwrap();
            if !cps.contains(&n) {
                cps.push(n);
            }
        } else {
            seen.push(l.clone());
        }
    }
    cps
}

/// A syslog receiver over TCP with octet-counting framing.
struct TcpSyslog {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Event>>>,
    /// Every message received, `e<seq>` or `c<seq>`, in order.
    log: Arc<Mutex<Vec<String>>>,
    violations: Arc<Mutex<Vec<String>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpSyslog {
    async fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut s = TcpSyslog {
            addr: l.local_addr().unwrap(),
            got: Default::default(),
            log: Default::default(),
            violations: Default::default(),
            task: None,
        };
        s.serve(l);
        s
    }
    fn serve(&mut self, l: TcpListener) {
        let (got, bad, log) = (self.got.clone(), self.violations.clone(), self.log.clone());
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = l.accept().await else {
                    continue;
                };
                let (got, bad, log) = (got.clone(), bad.clone(), log.clone());
                conns.spawn(async move {
                    let mut r = BufReader::new(stream);
                    loop {
                        let mut len = Vec::new();
                        if r.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let n: usize = match std::str::from_utf8(&len[..len.len() - 1])
                            .ok()
                            .and_then(|s| s.parse().ok())
                        {
                            Some(n) => n,
                            None => {
                                bad.lock().unwrap().push(format!("bad octet count {len:?}"));
                                return;
                            }
                        };
                        let mut msg = vec![0; n];
                        if r.read_exact(&mut msg).await.is_err() {
                            return;
                        }
                        match parse_5424(&String::from_utf8_lossy(&msg))
                            .and_then(|s| check_record(&s))
                        {
                            Ok((label, e)) => {
                                log.lock().unwrap().push(label);
                                got.lock().unwrap().extend(e);
                            }
                            Err(v) => bad.lock().unwrap().push(v),
                        }
                    }
                });
            }
        }));
    }
    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
    async fn restart(&mut self) {
        let l = TcpListener::bind(self.addr).await.unwrap();
        self.serve(l);
    }
}

fn syslog_config(transport: SyslogTransport, addr: String) -> SinkConfig {
    fast(SinkConfig::new(
        "syslog",
        SinkKind::Syslog {
            transport,
            addr,
            app_name: "brig-test".into(),
            facility: "local3".into(),
            max_datagram: 1024,
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_frames_parse_and_an_outage_loses_nothing() {
    let mut srv = TcpSyslog::start().await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 3);
    let (runner, cursors) = j.start_mem(vec![syslog_config(
        SyslogTransport::Tcp,
        srv.addr.to_string(),
    )]);
    wait_for("first 3", || srv.got.lock().unwrap().len() == 3).await;
    wait_for("cursor 3", || status(&runner).cursor == 3).await;

    srv.stop().await;
    want.extend(j.append("exec.exit", 4));
    wait_for("outage reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    let st = status(&runner);
    assert_eq!((st.cursor, st.lag), (3, 4));
    assert_eq!(cursors.get("syslog").unwrap().map(|c| c.seq), Some(3));

    srv.restart().await;
    wait_for("all after recovery", || status(&runner).cursor == 7).await;
    assert_all_delivered(&ids(&srv.got.lock().unwrap()), &want);
    assert!(
        srv.violations.lock().unwrap().is_empty(),
        "{:?}",
        srv.violations.lock().unwrap()
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_udp_sends_one_datagram_per_event_truncated_safely() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let j = Journal::new();
    let small = j.append("exec.start", 2);
    let big = event("exec.output", 0).details(serde_json::json!({"out": "é".repeat(3000)}));
    let big_id = big.id.clone();
    j.source.append(big);
    j.wakeup.notify();
    let (runner, _) = j.start_mem(vec![syslog_config(
        SyslogTransport::Udp,
        sock.local_addr().unwrap().to_string(),
    )]);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("datagram")
            .unwrap();
        assert!(n <= 1024, "datagram of {n} bytes over max_datagram");
        got.push(String::from_utf8(buf[..n].to_vec()).expect("cut at a char boundary"));
    }
    for (m, id) in got[..2].iter().zip(&small) {
        let s = parse_5424(m).unwrap();
        assert_eq!(&check_event(&s).unwrap().id, id);
    }
    let s = parse_5424(&got[2]).unwrap();
    assert!(s.sd.contains(&big_id));
    assert!(s.msg.ends_with("...[brig:truncated]"), "{}", s.msg);
    wait_for("cursor 3", || status(&runner).cursor == 3).await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_appends_jsonl_and_a_restart_resumes_from_the_file_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.jsonl");
    // A torn line left by a crash must not swallow the next event.
    std::fs::write(&out, "{\"torn\":").unwrap();
    let cfg = || {
        fast(SinkConfig::new(
            "file",
            SinkKind::File { path: out.clone() },
        ))
    };
    let cursor_path = dir.path().join("cursors.json");
    let j = Journal::new();
    let mut want = j.append("exec.start", 3);
    let runner = j.start(
        vec![cfg()],
        Arc::new(FileCursorStore::open(&cursor_path).unwrap()),
        fast_opts(),
    );
    wait_for("3 written", || status(&runner).cursor == 3).await;
    runner.shutdown().await;

    want.extend(j.append("exec.exit", 2));
    let cursors = Arc::new(FileCursorStore::open(&cursor_path).unwrap());
    assert_eq!(cursors.get("file").unwrap().map(|c| c.seq), Some(3));
    let runner = j.start(vec![cfg()], cursors, fast_opts());
    wait_for("5 written", || status(&runner).cursor == 5).await;
    runner.shutdown().await;

    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("{\"torn\":"));
    let events: Vec<Event> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        ids(&events),
        want,
        "each event exactly once across the restart"
    );
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_unwritable_path_is_retried_until_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.jsonl");
    // A directory where the file should be: every append fails.
    std::fs::create_dir(&out).unwrap();
    let j = Journal::new();
    let want = j.append("exec.start", 2);
    let (runner, _) = j.start_mem(vec![fast(SinkConfig::new(
        "file",
        SinkKind::File { path: out.clone() },
    ))]);
    wait_for("failure reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    assert!(status(&runner)
        .last_error
        .unwrap()
        .contains("cannot append"));
    assert_eq!(status(&runner).cursor, 0);
    std::fs::remove_dir(&out).unwrap();
    wait_for("written after the fix", || status(&runner).cursor == 2).await;
    let got: Vec<Event> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids(&got), want);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_carries_checkpoints_after_their_events_and_through_an_outage() {
    let mut srv = TcpSyslog::start().await;
    let j = Journal::new();
    let mut want = j.append("exec.start", 3);
    let mut cps = vec![j.checkpoint()];
    let (runner, _) = j.start_mem(vec![syslog_config(
        SyslogTransport::Tcp,
        srv.addr.to_string(),
    )]);
    wait_for("checkpoint 3", || status(&runner).checkpoint_cursor == 3).await;

    // Down while the next checkpoint is signed.
    srv.stop().await;
    want.extend(j.append("exec.exit", 2));
    cps.push(j.checkpoint());
    wait_for("outage reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    assert_eq!(status(&runner).checkpoint_cursor, 3);
    srv.restart().await;
    wait_for("checkpoint 5 after recovery", || {
        status(&runner).checkpoint_cursor == 5
    })
    .await;
    assert!(
        srv.violations.lock().unwrap().is_empty(),
        "{:?}",
        srv.violations.lock().unwrap()
    );
    assert_all_delivered(&ids(&srv.got.lock().unwrap()), &want);
    assert_eq!(checkpoints_follow_events(&srv.log.lock().unwrap()), cps);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_udp_sends_a_checkpoint_as_its_own_datagram() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let j = Journal::new();
    j.append("exec.start", 2);
    let cp = j.checkpoint();
    let (runner, _) = j.start_mem(vec![syslog_config(
        SyslogTransport::Udp,
        sock.local_addr().unwrap().to_string(),
    )]);
    let mut log = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("datagram")
            .unwrap();
        let m = String::from_utf8(buf[..n].to_vec()).unwrap();
        log.push(check_record(&parse_5424(&m).unwrap()).unwrap().0);
    }
    assert_eq!(log, ["e1", "e2", "c2"]);
    wait_for("checkpoint cursor", || {
        status(&runner).checkpoint_cursor == cp
    })
    .await;
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_writes_checkpoint_lines_after_their_events_even_after_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.jsonl");
    let j = Journal::new();
    let mut want = j.append("exec.start", 2);
    let mut cps = vec![j.checkpoint()];
    let (runner, _) = j.start_mem(vec![fast(SinkConfig::new(
        "file",
        SinkKind::File { path: out.clone() },
    ))]);
    wait_for("first checkpoint", || {
        status(&runner).checkpoint_cursor == 2
    })
    .await;
    // Make the file unwritable (a directory in its place) while the next
    // checkpoint is signed.
    let aside = dir.path().join("aside.jsonl");
    std::fs::rename(&out, &aside).unwrap();
    std::fs::create_dir(&out).unwrap();
    want.extend(j.append("exec.exit", 3));
    cps.push(j.checkpoint());
    wait_for("failure reported", || {
        status(&runner).consecutive_failures >= 2
    })
    .await;
    assert_eq!(status(&runner).checkpoint_cursor, 2);
    std::fs::remove_dir(&out).unwrap();
    std::fs::rename(&aside, &out).unwrap();
    wait_for("second checkpoint after the fix", || {
        status(&runner).checkpoint_cursor == 5
    })
    .await;
    runner.shutdown().await;

    let mut log = Vec::new();
    let mut events = Vec::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        if is_checkpoint(line) {
            log.push(format!("c{}", parse_checkpoint(line).unwrap()["seq"]));
        } else {
            let e: Event = serde_json::from_str(line).unwrap();
            log.push(format!("e{}", e.seq));
            events.push(e);
        }
    }
    assert_eq!(ids(&events), want);
    assert_eq!(log, ["e1", "e2", "c2", "e3", "e4", "e5", "c5"]);
    assert_eq!(checkpoints_follow_events(&log), cps);
}
