//! `brig journal show|tail|export|verify`.
//!
//! show, tail and export read the journal through the API; verify opens
//! the data dir's database read-only and needs no server, so an auditor can
//! run it on a copy.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_audit::export::{to_ecs, to_ocsf};
use brig_audit::VerifyReport;
use brig_core::event::Event;
use brig_core::units::parse_duration;
use brig_core::{Error, ErrorKind, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::client::Client;
use crate::output::Out;

/// Exit code of `journal verify` when the journal is not intact: the
/// `conflict` kind (the journal exists but is not what its chain and
/// signatures say it was).
pub const VERIFY_FAILED: ErrorKind = ErrorKind::Conflict;

#[derive(Subcommand, Debug)]
pub enum JournalCmd {
    /// Print journal events (the last --limit matching ones), oldest first.
    Show(ShowArgs),
    /// Print the last events, and with -f every new one as it is recorded.
    Tail(TailArgs),
    /// Write matching events to stdout, one JSON document per line.
    Export(ExportArgs),
    /// Check the hash chain and signed checkpoints, offline (no server needed).
    Verify(VerifyArgs),
    /// Each SIEM sink's cursor, lag and last error.
    Sinks,
}

#[derive(Args, Debug, Clone)]
pub struct Filters {
    /// Only events at or after this time: RFC 3339 (2026-01-31T12:00:00Z) or an age (15m, 2h).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<String>,
    /// Only this session's events.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only events of this human.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// At most this many events (the most recent ones).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub limit: i64,
}

#[derive(Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    pub filters: Filters,
    /// Keep following: print new events as they are recorded.
    #[arg(short, long)]
    pub follow: bool,
    /// How many past events to print first.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub lines: i64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// brig's own event schema.
    Jsonl,
    /// OCSF 1.1 (Process Activity, Network Activity, API Activity, Authentication).
    Ocsf,
    /// Elastic Common Schema.
    Ecs,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: Format,
    #[command(flatten)]
    pub filters: Filters,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The data dir to verify (default: brig.toml's data_dir, else /var/lib/brig).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also check the checkpoints in this file: a copy of checkpoints.jsonl
    /// kept outside the data dir, or a file sink's JSONL (its events are
    /// skipped, its `"record":"checkpoint"` lines read).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// The journal's public key (default: DIR/keys/journal-ed25519.pub). Pass
    /// a copy kept elsewhere: a key read from the data dir is only as
    /// trustworthy as the data dir.
    #[arg(long, value_name = "FILE")]
    pub public_key: Option<PathBuf>,
}

pub(crate) fn parse_since(s: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.format(&Rfc3339).unwrap_or_else(|_| s.to_string()));
    }
    let d = parse_duration(s).map_err(|_| {
        Error::invalid(format!(
            "--since {s:?} is neither an RFC 3339 time nor an age"
        ))
        .hint("e.g. --since 2026-01-31T12:00:00Z or --since 15m")
    })?;
    let t = time::OffsetDateTime::now_utc() - d;
    Ok(t.format(&Rfc3339).unwrap_or_default())
}

/// A query string value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn query(f: &Filters, after_seq: Option<i64>, limit: i64) -> String {
    let mut q = vec![format!("limit={limit}")];
    if let Some(s) = &f.since {
        q.push(format!("since={}", enc(s)));
    }
    if let Some(s) = &f.session {
        q.push(format!("session={}", enc(s)));
    }
    if let Some(u) = &f.user {
        q.push(format!("user={}", enc(u)));
    }
    if let Some(a) = after_seq {
        q.push(format!("after_seq={a}"));
    }
    format!("/v1/journal?{}", q.join("&"))
}

async fn fetch(c: &Client, path: &str) -> Result<Vec<Event>> {
    Ok(c.get::<Vec<Event>>(path).await?.0)
}

/// One event as a line for humans.
pub fn event_line(e: &Event) -> String {
    let outcome = serde_json::to_value(e.outcome)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let mut line = format!(
        "{:>6}  {}  {:<18} {:<8} {}",
        e.seq,
        e.time.get(..23).unwrap_or(&e.time),
        e.action,
        outcome,
        e.session.as_deref().unwrap_or("-"),
    );
    if let Some(h) = &e.human {
        line.push_str(&format!("  {h}"));
    }
    if let Some(r) = &e.rule {
        line.push_str(&format!("  rule={r}"));
    }
    if let Some(argv) = e.details.get("argv").and_then(|a| a.as_array()) {
        let words: Vec<&str> = argv.iter().filter_map(|a| a.as_str()).collect();
        line.push_str(&format!("  $ {}", words.join(" ")));
    } else if let Some(code) = e.details.get("code").filter(|c| !c.is_null()) {
        line.push_str(&format!("  exit={code}"));
    } else if let Some(r) = e.details.get("reason").and_then(|r| r.as_str()) {
        line.push_str(&format!("  ({r})"));
    }
    line
}

/// One JSON document and a newline on stdout. `Ok(false)` when stdout was
/// closed (`| head`): the reader has all it wants, which is not an error.
fn print_jsonl(v: &serde_json::Value) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    let r = serde_json::to_writer(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::internal(format!("cannot write to stdout: {e}"))),
    }
}

pub async fn run(
    client: impl FnOnce() -> Result<Client>,
    config: Option<&Path>,
    cmd: &JournalCmd,
    out: Out,
) -> Result<i32> {
    match cmd {
        JournalCmd::Show(a) => {
            let evs = fetch(&client()?, &query(&a.filters, None, a.limit)).await?;
            if out.json {
                out.json_value(&serde_json::to_value(&evs).unwrap_or_default());
            } else if evs.is_empty() {
                out.note("no events match");
            } else {
                let text: Vec<String> = evs.iter().map(event_line).collect();
                out.text(&text.join("\n"));
            }
            Ok(0)
        }
        JournalCmd::Tail(a) => {
            let c = client()?;
            let mut evs = fetch(&c, &query(&a.filters, None, a.lines)).await?;
            let mut after = evs.last().map(|e| e.seq);
            loop {
                for e in &evs {
                    if out.json {
                        if !print_jsonl(&serde_json::to_value(e).unwrap_or_default())? {
                            return Ok(0);
                        }
                    } else {
                        out.text(&event_line(e));
                    }
                }
                if !a.follow {
                    return Ok(0);
                }
                if evs.len() < 1000 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // Before the first event exists, follow from the start.
                let from = after.unwrap_or(0);
                evs = fetch(&c, &query(&a.filters, Some(from), 1000)).await?;
                if let Some(l) = evs.last() {
                    after = Some(l.seq);
                }
            }
        }
        JournalCmd::Export(a) => {
            let c = client()?;
            let mut after = 0;
            loop {
                let page = fetch(&c, &query(&a.filters, Some(after), 5000)).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for e in &page {
                    let doc = match a.format {
                        Format::Jsonl => serde_json::to_value(e).unwrap_or_default(),
                        Format::Ocsf => to_ocsf(e),
                        Format::Ecs => to_ecs(e),
                    };
                    if !print_jsonl(&doc)? {
                        return Ok(0);
                    }
                }
            }
            Ok(0)
        }
        JournalCmd::Sinks => {
            let (v, _) = client()?
                .get::<serde_json::Value>("/v1/journal/sinks")
                .await?;
            if out.json {
                out.json_value(&v);
                return Ok(0);
            }
            let sinks = v.as_array().cloned().unwrap_or_default();
            if sinks.is_empty() {
                out.note("no journal sinks configured (see [[journal.sinks]] in docs/SINKS.md)");
                return Ok(0);
            }
            let mut lines = vec![format!(
                "{:<16} {:<11} {:>8} {:>8} {:>6} {:>10}  LAST ERROR",
                "SINK", "KIND", "CURSOR", "HEAD", "LAG", "CHECKPOINT"
            )];
            for s in &sinks {
                lines.push(format!(
                    "{:<16} {:<11} {:>8} {:>8} {:>6} {:>10}  {}",
                    s["name"].as_str().unwrap_or("?"),
                    s["kind"].as_str().unwrap_or("?"),
                    s["cursor"],
                    s["head"],
                    s["lag"],
                    s["checkpoint_cursor"],
                    s["last_error"].as_str().unwrap_or("-"),
                ));
            }
            out.text(&lines.join("\n"));
            Ok(0)
        }
        JournalCmd::Verify(a) => {
            let data_dir = match &a.data_dir {
                Some(d) => d.clone(),
                None => crate::server::load_config(config)?.data_dir,
            };
            let (dd, cp, pk) = (data_dir.clone(), a.checkpoint.clone(), a.public_key.clone());
            let report = tokio::task::spawn_blocking(move || {
                brig_server::journal::verify_offline(&dd, cp.as_deref(), pk.as_deref())
            })
            .await
            .map_err(|e| Error::internal(format!("verify task failed: {e}")))??;
            if out.json {
                out.json_value(&serde_json::to_value(&report).unwrap_or_default());
            } else {
                out.text(&verify_text(&report, &data_dir));
            }
            Ok(if report.ok {
                0
            } else {
                VERIFY_FAILED.exit_code()
            })
        }
    }
}

pub fn verify_text(r: &VerifyReport, data_dir: &Path) -> String {
    let range = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..{b}"),
        _ => "empty".into(),
    };
    let latest = r
        .latest_checkpoint
        .as_ref()
        .map(|c| format!("latest signed seq {} at {}", c.seq, c.time))
        .unwrap_or_else(|| "none valid".into());
    let mut s = format!(
        "journal {}: {} events ({range}), {} checkpoint(s) ({latest}), key {}\n",
        data_dir.display(),
        r.events,
        r.checkpoints,
        r.key_id
    );
    if r.unsigned_tail > 0 {
        s.push_str(&format!(
            "note: the last {} events are chained but not yet signed; a truncation of only those \
             cannot be proven\n",
            r.unsigned_tail
        ));
    }
    if r.ok {
        s.push_str("✓ intact: every event matches its hash, the chain is unbroken, every checkpoint is validly signed and matches");
    } else {
        s.push_str(&format!("✗ TAMPERED: {} problem(s)\n", r.problems.len()));
        if let Some(p) = r.first_break() {
            s.push_str(&format!(
                "  the chain first breaks at seq {}{}\n",
                p.seq.map_or("?".into(), |x| x.to_string()),
                p.event_id
                    .as_deref()
                    .map(|i| format!(" (event {i})"))
                    .unwrap_or_default()
            ));
        }
        for p in &r.problems {
            s.push_str(&format!(
                "  - {}: {}\n",
                serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                p.message
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_an_age() {
        assert_eq!(
            parse_since("2026-01-31T12:00:00Z").unwrap(),
            "2026-01-31T12:00:00Z"
        );
        let t = parse_since("15m").unwrap();
        assert!(t.ends_with('Z'), "{t}");
        let e = parse_since("last tuesday").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }

    #[test]
    fn query_encodes_values() {
        let f = Filters {
            since: Some("2026-01-31T12:00:00+01:00".into()),
            session: Some("s-1".into()),
            user: Some("a b&c".into()),
        };
        assert_eq!(
            query(&f, Some(5), 10),
            "/v1/journal?limit=10&since=2026-01-31T12%3A00%3A00%2B01%3A00&session=s-1&user=a%20b%26c&after_seq=5"
        );
    }
}
