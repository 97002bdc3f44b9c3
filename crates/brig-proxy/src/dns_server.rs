//! The per-session resolver's channel: DNS over TCP framing (a 2-byte
//! length, then the message; RFC 1035 §4.2.2), many queries per
//! connection, answered concurrently (possibly out of order, matched by
//! id, RFC 7766).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use brig_egress::{DnsAnswer, Host};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::conn::Judged;
use crate::dns_wire::{self, Query, WireError, EDE_BLOCKED, EDE_PROHIBITED};
use crate::event::{EgressEvent, EventKind, Verdict, Via};
use crate::resolver::ResolveError;
use crate::{rules, SessionEgress};

/// The largest query brig reads (real queries are well under 512 bytes).
const MAX_QUERY: usize = 4096;
/// Queries of one connection answered at once.
const IN_FLIGHT: usize = 32;

pub(crate) async fn serve_dns_stream<S>(stream: S, s: SessionEgress)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // DNS streams count against the session's open connections like proxy
    // streams: anything in the sandbox can connect to the socket itself.
    let Some(_slot) = s.limits.connection() else {
        let mut ev = EgressEvent::new(&s.session, EventKind::Connection, Via::Dns);
        ev.port = 53;
        ev.rule = rules::RATE_CONNECTIONS.to_string();
        ev.error = Some(format!(
            "over the session's {} open egress connections",
            s.limits.limits.max_connections
        ));
        s.events.event(ev);
        return;
    };
    let (mut r, mut w) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let writer = async move {
        while let Some(m) = rx.recv().await {
            let mut framed = Vec::with_capacity(m.len() + 2);
            framed.extend_from_slice(&(m.len() as u16).to_be_bytes());
            framed.extend_from_slice(&m);
            if w.write_all(&framed).await.is_err() {
                return;
            }
        }
    };
    let s2 = s.clone();
    let reader = async move {
        let s = s2;
        let sem = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut set = JoinSet::new();
        loop {
            let mut len = [0u8; 2];
            match tokio::time::timeout(s.config.dns_idle_timeout, r.read_exact(&mut len)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            let len = u16::from_be_bytes(len) as usize;
            if !(12..=MAX_QUERY).contains(&len) {
                malformed(&s, format!("a DNS message of {len} bytes"));
                break;
            }
            let mut msg = vec![0u8; len];
            match tokio::time::timeout(s.config.head_timeout, r.read_exact(&mut msg)).await {
                Ok(Ok(_)) => {}
                _ => {
                    malformed(&s, "a truncated DNS message".into());
                    break;
                }
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let s = s.clone();
            let tx = tx.clone();
            set.spawn(async move {
                if let Some(answer) = answer(&s, &msg).await {
                    let _ = tx.send(answer).await;
                }
                drop(permit);
            });
            while set.try_join_next().is_some() {}
        }
        while set.join_next().await.is_some() {}
        drop(tx);
    };
    tokio::join!(reader, writer);
}

fn malformed(s: &SessionEgress, err: String) {
    let mut ev = EgressEvent::new(&s.session, EventKind::Dns, Via::Dns);
    ev.port = 53;
    ev.rule = rules::DNS_MALFORMED.to_string();
    ev.error = Some(err);
    s.events.event(ev);
}

fn header_only(id: u16, rcode: u8) -> Vec<u8> {
    let mut m = vec![0u8; 12];
    m[..2].copy_from_slice(&id.to_be_bytes());
    m[2] = 0x80;
    m[3] = 0x80 | rcode;
    m
}

/// Answer one query (and journal it). `None`: no answer (not a query).
pub(crate) async fn answer(s: &SessionEgress, msg: &[u8]) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut ev = EgressEvent::new(&s.session, EventKind::Dns, Via::Dns);
    ev.port = 53;
    let q = match dns_wire::parse_query(msg) {
        Ok(q) => q,
        Err(WireError::NoHeader) => {
            ev.rule = rules::DNS_MALFORMED.to_string();
            ev.error = Some("not a DNS query".into());
            s.events.event(ev);
            return None;
        }
        Err(WireError::Bad { id, rcode }) => {
            ev.rule = rules::DNS_MALFORMED.to_string();
            ev.rcode = Some(dns_wire::rcode_name(rcode));
            ev.error = Some("malformed DNS query".into());
            s.events.event(ev);
            return Some(header_only(id, rcode));
        }
    };
    ev.qtype = Some(q.qtype);
    let reply = |ev: &mut EgressEvent, rcode: u8, answers: &[(IpAddr, u32)], j: Option<&Judged>| {
        ev.rcode = Some(dns_wire::rcode_name(rcode));
        let text = j.and_then(|j| j.expl.as_ref()).map(|e| e.to_text());
        let ede = match (rcode, &text) {
            (dns_wire::NXDOMAIN, Some(t)) => Some((EDE_BLOCKED, t.as_str())),
            (dns_wire::REFUSED, Some(t)) => Some((EDE_PROHIBITED, t.as_str())),
            _ => None,
        };
        dns_wire::build_response(&q, rcode, answers, ede)
    };
    // REFUSED with the explanation, journaled.
    let refused = |mut ev: EgressEvent, j: Judged| {
        let out = reply(&mut ev, dns_wire::REFUSED, &[], Some(&j));
        fill(&mut ev, j, start);
        s.events.event(ev);
        Some(out)
    };
    let Some(raw_name) = q.name.as_deref() else {
        let j = Judged::builtin(
            brig_egress::rules::INVALID_HOST,
            "the query name holds bytes that cannot be in a host name".into(),
            "query host names only (letters, digits, '-', IDNA for other scripts)".into(),
        );
        return refused(ev, j);
    };
    // Parsed once: the event's host, the artifact check and the name
    // resolved.
    let host = Host::parse(raw_name).ok();
    ev.host = Some(match &host {
        Some(h) => h.to_string(),
        None => raw_name.chars().take(253).collect(),
    });
    if let Some(b) = crate::conn::name_leak(s, raw_name) {
        ev.error = Some(format!("exfiltration attempt: secret {}", b.secret));
        return refused(ev, Judged::from_blocked(&b, ""));
    }
    if q.qclass != 1 {
        let j = Judged::builtin(
            rules::DNS_QCLASS,
            format!("DNS class {} is not answered (only IN)", q.qclass),
            "only class IN A and AAAA lookups are answered inside a session".into(),
        );
        return refused(ev, j);
    }
    if let Err(wait) = s.limits.dns_query() {
        let j = Judged::builtin(
            rules::RATE_DNS,
            format!(
                "this session is over its DNS query rate ({} per second)",
                s.limits.limits.dns_queries_per_sec
            ),
            format!("retry after {} ms", wait.as_millis()),
        );
        return refused(ev, j);
    }
    if let Some(out) = crate::artifact::dns_answer(s, &q, host.as_ref(), &mut ev)
        .or_else(|| crate::local::dns_answer(s, &q, host.as_ref(), &mut ev))
    {
        ev.duration_us = start.elapsed().as_micros() as u64;
        s.events.event(ev);
        return Some(out);
    }
    let dd = s.policy.decide_dns(raw_name, q.qtype);
    let shown = ev.host.clone().unwrap_or_default();
    let j = Judged::from_decision(&dd.decision, &shown, 53, None);
    let out = match dd.answer {
        DnsAnswer::NxDomain => reply(&mut ev, dns_wire::NXDOMAIN, &[], Some(&j)),
        DnsAnswer::Refused => reply(&mut ev, dns_wire::REFUSED, &[], Some(&j)),
        DnsAnswer::NoData => reply(&mut ev, dns_wire::NOERROR, &[], None),
        DnsAnswer::Resolve => {
            let name = match &host {
                Some(Host::Domain(d)) => d.as_str(),
                _ => shown.as_str(),
            };
            return Some(resolve(s, &q, name, ev, j, start).await);
        }
    };
    fill(&mut ev, j, start);
    s.events.event(ev);
    Some(out)
}

fn fill(ev: &mut EgressEvent, j: Judged, start: Instant) {
    ev.decision = j.verdict;
    ev.rule = j.rule;
    ev.explanation = j.expl;
    ev.duration_us = start.elapsed().as_micros() as u64;
}

async fn resolve(
    s: &SessionEgress,
    q: &Query,
    name: &str,
    mut ev: EgressEvent,
    j: Judged,
    start: Instant,
) -> Vec<u8> {
    let res = s.resolver.query(name, q.qtype, s.policy.ssrf()).await;
    let (rcode, answers, j) = match res {
        Ok(c) => {
            ev.dropped = c.dropped.iter().map(|(ip, _)| *ip).collect();
            if c.kept.is_empty() && !c.dropped.is_empty() {
                // Every address was refused: REFUSED, explained.
                let denial = c.dropped.into_iter().next().unwrap().1;
                let d = s.policy.ssrf_decision(denial);
                let j = Judged::from_decision(&d, name, 53, None);
                (dns_wire::REFUSED, Vec::new(), j)
            } else {
                (dns_wire::NOERROR, c.kept, j)
            }
        }
        Err(ResolveError::NxDomain) => {
            ev.error = Some(ResolveError::NxDomain.to_string());
            (dns_wire::NXDOMAIN, Vec::new(), j)
        }
        Err(e) => {
            ev.error = Some(e.to_string());
            (dns_wire::SERVFAIL, Vec::new(), j)
        }
    };
    ev.rcode = Some(dns_wire::rcode_name(rcode));
    ev.answers = answers.iter().map(|(ip, _)| *ip).collect();
    let text = j.expl.as_ref().map(|e| e.to_text());
    let ede = match (&text, j.verdict) {
        (Some(t), Verdict::Denied) => Some((EDE_PROHIBITED, t.as_str())),
        _ => None,
    };
    let out = dns_wire::build_response(q, rcode, &answers, ede);
    fill(&mut ev, j, start);
    s.events.event(ev);
    out
}
