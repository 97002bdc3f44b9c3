//! brig's own services on reserved hosts (the git gateway's way in): the
//! proxy hands the connection over whole, with the session of its channel.

mod common;

use std::sync::Arc;

use brig_proxy::dns_wire::{self, A};
use brig_proxy::local::{BoxFuture, LocalService, LocalStream, SERVICE_V4};
use brig_proxy::{EventKind, Verdict};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers one request with `<session>|<request line>|<body>`.
struct Echo;

impl LocalService for Echo {
    fn host(&self) -> &str {
        "git.brig"
    }

    fn serve(
        &self,
        session: Arc<str>,
        mut stream: Box<dyn LocalStream>,
        mut buffered: Vec<u8>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Head, then a Content-Length body (the test sends 5 bytes).
            let mut chunk = [0u8; 1024];
            while !buffered.windows(4).any(|w| w == b"\r\n\r\n") || !buffered.ends_with(b"hello") {
                let n = stream.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buffered.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8_lossy(&buffered).to_string();
            let line = text.lines().next().unwrap_or("").to_string();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            let reply = format!("{session}|{line}|{body}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            stream.write_all(resp.as_bytes()).await.unwrap();
        })
    }
}

async fn with_echo() -> Session {
    session(
        "s-local",
        Opts {
            local: vec![Arc::new(Echo)],
            ..Opts::default()
        },
    )
    .await
}

#[tokio::test]
async fn explicit_and_transparent_requests_are_handed_over_with_their_session() {
    let s = with_echo().await;
    // Explicit proxy, absolute-form, body split from the head.
    let mut c = s.explicit().await;
    c.write_all(b"POST http://git.brig/r.git/git-upload-pack HTTP/1.1\r\nHost: git.brig\r\nContent-Length: 5\r\n\r\nhel")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    c.write_all(b"lo").await.unwrap();
    let r = read_resp(&mut c).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.as_str(),
        "s-local|POST http://git.brig/r.git/git-upload-pack HTTP/1.1|hello"
    );
    // Transparent: origin-form on the service address, any case of the host.
    let mut c = s.open(format!("{SERVICE_V4}:80").parse().unwrap()).await;
    let r = roundtrip(
        &mut c,
        "POST /r.git/info/refs HTTP/1.1\r\nHost: GIT.brig\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    assert_eq!(
        r.body.as_str(),
        "s-local|POST /r.git/info/refs HTTP/1.1|hello"
    );
    let ev = s.wait_events(2).await;
    for e in &ev[..2] {
        assert_eq!(
            (e.kind, e.decision, e.rule.as_str()),
            (EventKind::Http, Verdict::Allowed, "local:service")
        );
        assert_eq!(e.host.as_deref(), Some("git.brig"));
    }
}

#[tokio::test]
async fn a_tunnel_to_a_local_service_is_refused_and_other_hosts_are_still_judged() {
    let s = with_echo().await;
    let r = s
        .ask("CONNECT git.brig:443 HTTP/1.1\r\nHost: git.brig:443\r\n\r\n")
        .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (400, Some("local:no-tunnel"))
    );
    assert!(r.body.as_str().contains("http://git.brig/"));
    // A look-alike host is the policy's business (denied by default).
    let r = s
        .ask("GET http://git.brig.evil.test/ HTTP/1.1\r\nHost: git.brig.evil.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 403);
    // A session without the service: git.brig is an ordinary (denied) name.
    let plain = session("s-plain", Opts::default()).await;
    let r = plain
        .ask("GET http://git.brig/r.git/info/refs HTTP/1.1\r\nHost: git.brig\r\n\r\n")
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn the_resolver_answers_the_service_host_with_the_service_address() {
    let s = with_echo().await;
    let m = s.dns_query("git.brig", A).await;
    let q = dns_wire::build_query(0x4242, "git.brig", A);
    let ips: Vec<_> = dns_wire::parse_response(&m, &q, A)
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ips, vec![std::net::IpAddr::from(SERVICE_V4)]);
}
