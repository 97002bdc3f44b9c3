//! The per-session resolver over its unix socket (DNS over TCP framing),
//! with a test DNS server upstream.

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use brig_proxy::dns_wire::{self, A, AAAA, FORMERR, NOERROR, NXDOMAIN, REFUSED, SERVFAIL};
use brig_proxy::{EventKind, Limits, Verdict};
use common::*;
use tokio::io::AsyncWriteExt;

fn rcode(m: &[u8]) -> u8 {
    m[3] & 0xf
}

fn records(m: &[u8], name: &str, qtype: u16) -> Vec<IpAddr> {
    let q = dns_wire::build_query(0x4242, name, qtype);
    dns_wire::parse_response(m, &q, qtype)
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.0)
        .collect()
}

async fn setup(limits: Limits) -> (Session, TestDns) {
    let dns = test_dns(Arc::new(|name: &str, _q, _n| {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        match name {
            "origin.test" => vec![(ip("203.0.113.5"), 30), (ip("2001:db8::5"), 30)],
            "other.test" => vec![(ip("203.0.113.6"), 30), (ip("127.0.0.1"), 30)],
            "rebind.test" => vec![(ip("169.254.169.254"), 30)],
            _ => vec![],
        }
    }))
    .await;
    let s = session(
        "s-dns",
        Opts {
            policy: r#"
[[allow]]
name = "origin"
domains = ["origin.test", "other.test", "rebind.test", "gone.nx", "*.tunnel-ok.test"]
[ssrf]
trusted_cidrs = ["203.0.113.0/24"]
"#,
            dns: Some(dns.addr),
            limits,
            ..Opts::default()
        },
    )
    .await;
    (s, dns)
}

#[tokio::test]
async fn allowed_names_get_only_checked_a_and_aaaa() {
    let (s, up) = setup(Limits::default()).await;
    let a = s.dns_query("Origin.Test.", A).await;
    assert_eq!(rcode(&a), NOERROR);
    assert_eq!(
        records(&a, "Origin.Test.", A),
        vec!["203.0.113.5".parse::<IpAddr>().unwrap()]
    );
    // 2001:db8::/32 is documentation space and not trusted: dropped, and
    // since nothing is left, REFUSED.
    let aaaa = s.dns_query("origin.test", AAAA).await;
    assert_eq!(rcode(&aaaa), REFUSED);
    // A mixed answer keeps only what the guard lets through.
    let m = s.dns_query("other.test", A).await;
    assert_eq!(
        records(&m, "other.test", A),
        vec!["203.0.113.6".parse::<IpAddr>().unwrap()]
    );
    // Cloud metadata is refused.
    let r = s.dns_query("rebind.test", A).await;
    assert_eq!(rcode(&r), REFUSED);
    // Upstream NXDOMAIN passes through.
    assert_eq!(rcode(&s.dns_query("gone.nx", A).await), NXDOMAIN);
    // The resolver remembered what it answered (for transparent mode).
    assert!(s
        .egress
        .resolver
        .answered("origin.test", "203.0.113.5".parse().unwrap()));
    assert!(!s
        .egress
        .resolver
        .answered("other.test", "127.0.0.1".parse().unwrap()));
    // A second A query for origin.test is answered from memory.
    let before = up.queries.lock().unwrap().len();
    let _ = s.dns_query("origin.test", A).await;
    assert_eq!(up.queries.lock().unwrap().len(), before);
    let ev = s.events();
    assert_eq!(ev.len(), 6);
    assert!(ev.iter().all(|e| e.kind == EventKind::Dns));
    assert_eq!(ev[0].host.as_deref(), Some("origin.test"));
    assert_eq!(
        ev[0].answers,
        vec!["203.0.113.5".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(ev[2].dropped, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        (ev[3].rule.as_str(), ev[3].decision),
        ("ssrf:cloud-metadata", Verdict::Denied)
    );
}

#[tokio::test]
async fn denied_names_tunnels_and_types() {
    let (s, up) = setup(Limits::default()).await;
    for (name, qtype, want, rule) in [
        ("evil.example", A, NXDOMAIN, "default-deny"),
        ("pastebin.com", AAAA, NXDOMAIN, "exfil/pastebins"),
        ("origin.test", 16, REFUSED, "dns-qtype"),  // TXT
        ("origin.test", 10, REFUSED, "dns-qtype"),  // NULL
        ("origin.test", 255, REFUSED, "dns-qtype"), // ANY
        ("origin.test", 65, NOERROR, "dns-qtype"),  // HTTPS: NODATA
        (
            "4a6f686e20446f65206b6e6f7773207468652070617373776f7264.tunnel-ok.test",
            A,
            REFUSED,
            "dns-label-length",
        ),
        (
            "6a6f686e646f65736563726574.tunnel-ok.test",
            A,
            REFUSED,
            "dns-label-entropy",
        ),
        (
            "mzxw6ytboi2dqnzrgq3tkmbq.tunnel-ok.test",
            A,
            REFUSED,
            "dns-label-entropy",
        ),
        ("127.0.0.1", A, NXDOMAIN, "ip-literal"),
    ] {
        let r = s.dns_query(name, qtype).await;
        assert_eq!(rcode(&r), want, "{name} {qtype}");
        let e = s.events().pop().unwrap();
        assert_eq!(e.rule, rule, "{name} {qtype}");
        assert_eq!(e.qtype, Some(qtype));
    }
    // None of these reached upstream.
    assert!(
        up.queries.lock().unwrap().is_empty(),
        "{:?}",
        up.queries.lock().unwrap()
    );
}

#[tokio::test]
async fn extended_error_text_with_edns() {
    let (s, _up) = setup(Limits::default()).await;
    let mut q = dns_wire::build_query(7, "pastebin.com", A);
    q[11] = 1;
    q.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    let mut c = tokio::net::UnixStream::connect(&s.dns).await.unwrap();
    let r = dns_exchange(&mut c, &q).await;
    assert_eq!(rcode(&r), NXDOMAIN);
    let text = String::from_utf8_lossy(&r);
    assert!(text.contains("exfil/pastebins"), "{text}");
}

#[tokio::test]
async fn malformed_many_per_connection_and_rate_limit() {
    let (s, _up) = setup(Limits {
        dns_queries_per_sec: 0.1,
        dns_burst: 3.0,
        ..Limits::default()
    })
    .await;
    let mut c = tokio::net::UnixStream::connect(&s.dns).await.unwrap();
    // A header with two questions: FORMERR, same connection goes on.
    let mut bad = dns_wire::build_query(9, "origin.test", A);
    bad[5] = 2;
    let r = dns_exchange(&mut c, &bad).await;
    assert_eq!((rcode(&r), u16::from_be_bytes([r[0], r[1]])), (FORMERR, 9));
    for i in 0..3u16 {
        let r = dns_exchange(&mut c, &dns_wire::build_query(100 + i, "origin.test", A)).await;
        assert_eq!(u16::from_be_bytes([r[0], r[1]]), 100 + i);
        assert_eq!(rcode(&r), NOERROR);
    }
    let r = dns_exchange(&mut c, &dns_wire::build_query(200, "origin.test", A)).await;
    assert_eq!(rcode(&r), REFUSED);
    assert_eq!(s.events().pop().unwrap().rule, "rate-limit:dns");
    // A message too short for a header: the connection is closed.
    c.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    assert!(closed(&mut c).await);
    assert_eq!(s.events().pop().unwrap().rule, "dns-malformed");
}

#[tokio::test]
async fn upstream_down_is_servfail() {
    let s = session(
        "s-down",
        Opts {
            policy: "[[allow]]\nname = \"o\"\ndomains = [\"origin.test\"]\n",
            dns: Some("127.0.0.1:9".parse().unwrap()),
            ..Opts::default()
        },
    )
    .await;
    let r = s.dns_query("origin.test", A).await;
    assert_eq!(rcode(&r), SERVFAIL);
    assert!(s.events().pop().unwrap().error.is_some());
}

/// DNS streams count against the session's open connections: anything in
/// the sandbox can connect to the socket, so a flood of idle DNS streams is
/// bounded like proxy streams are.
#[tokio::test]
async fn dns_streams_count_against_the_connection_limit() {
    let (s, _up) = setup(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::UnixStream::connect(&s.dns).await.unwrap();
        let q = dns_wire::build_query(7, "origin.test", A);
        assert_eq!(rcode(&dns_exchange(&mut c, &q).await), NOERROR);
        held.push(c);
    }
    // The third is closed without an answer, and that is an event.
    let mut c = tokio::net::UnixStream::connect(&s.dns).await.unwrap();
    let q = dns_wire::build_query(8, "origin.test", A);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let _ = c.write_all(&framed).await;
    let mut buf = [0u8; 2];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut c, &mut buf),
    )
    .await
    .expect("closed at once")
    .unwrap_or(0);
    assert_eq!(n, 0, "no answer over the limit");
    let evs = s.events();
    assert!(
        evs.iter().any(|e| e.kind == EventKind::Connection
            && e.rule == "rate-limit:connections"
            && e.decision == Verdict::Denied),
        "{evs:?}"
    );
    // Once one is closed, a new stream is served again.
    drop(held.pop());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut c = tokio::net::UnixStream::connect(&s.dns).await.unwrap();
    assert_eq!(rcode(&dns_exchange(&mut c, &q).await), NOERROR);
}
