//! The proxy end to end over real sockets: the session's unix socket with
//! PROXY headers, a test DNS server, origins on loopback.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use brig_proxy::{tls, EventKind, Limits, ProxyConfig, Verdict, Via};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    web: Origin,
    tls: RawOrigin,
    s: Session,
}

/// origin.test and other.test resolve to the origins' address.
async fn world(o: Opts) -> World {
    let web = http_origin(80).await;
    let tls = raw_origin(443).await;
    assert_eq!(web.addr.ip(), web.addr.ip());
    let wip = web.addr.ip();
    let tip = tls.addr.ip();
    let dns = test_dns(std::sync::Arc::new(move |name: &str, _q, _n| match name {
        "origin.test" | "other.test" | "unlisted.test" => vec![(wip, 60), (tip, 60)],
        "ssh.test" => vec![(wip, 60)],
        _ => vec![],
    }))
    .await;
    let s = session(
        "s-1",
        Opts {
            dns: Some(dns.addr),
            ..o
        },
    )
    .await;
    World { web, tls, s }
}

#[tokio::test]
async fn connect_allowed_with_matching_sni_is_spliced() {
    let w = world(Opts::default()).await;
    // Both origins share one DNS name; the test TLS origin listens on 443
    // of its own address, so point origin.test at it alone for this test.
    let mut c = w.s.explicit().await;
    let r = roundtrip(
        &mut c,
        "CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let hello = tls::build_client_hello(Some("origin.test"));
    c.write_all(&hello).await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("pong"));
    drop(c);
    let ev = w.s.wait_events(1).await;
    let e = &ev[0];
    assert_eq!(
        (e.kind, e.via, e.decision),
        (EventKind::Tunnel, Via::Explicit, Verdict::Allowed)
    );
    assert_eq!(e.rule, "origin");
    assert_eq!(e.host.as_deref(), Some("origin.test"));
    assert_eq!(e.address.map(|a| a.port()), Some(443));
    assert!(e.bytes_out >= hello.len() as u64 && e.bytes_in > 0, "{e:?}");
    assert_eq!(&w.tls.received.lock().unwrap()[..hello.len()], &hello[..]);
}

#[tokio::test]
async fn connect_denied_gets_403_with_explanation() {
    let w = world(Opts::default()).await;
    for (target, rule) in [
        ("evil.example:443", "default-deny"),
        ("pastebin.com:443", "exfil/pastebins"),
        ("ssh.test:443", "ssh-host"),
        ("origin.test:22", "origin"),
        ("bad_host..x:443", "invalid-host"),
    ] {
        let mut c = w.s.explicit().await;
        let r = roundtrip(&mut c, &format!("CONNECT {target} HTTP/1.1\r\n\r\n"))
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{target}");
        assert_eq!(r.header("x-brig-rule").as_deref(), Some(rule), "{target}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("text/plain; charset=utf-8")
        );
        assert!(r.body.starts_with("brig egress: "), "{}", r.body);
        assert!(r.body.contains(&format!("(rule: {rule})")), "{}", r.body);
        assert!(closed(&mut c).await);
    }
    let r = w.s.ask("CONNECT evil.example:443 HTTP/1.1\r\n\r\n").await;
    assert!(
        r.body.contains("[[egress.allow]]") && r.body.contains("evil.example"),
        "{}",
        r.body
    );
    let ev = w.s.wait_events(6).await;
    assert!(ev.iter().all(|e| e.decision == Verdict::Denied
        && e.explanation.is_some()
        && e.status == Some(403)));
    // Port 22 is allowed for ssh.test only; the rule says so.
    let ev22 = ev.iter().find(|e| e.port == 22).unwrap();
    assert!(ev22
        .explanation
        .as_ref()
        .unwrap()
        .reason
        .contains("not on port 22"));
    assert_eq!(w.tls.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connect_to_an_allowed_non_tls_port_is_opaque() {
    let w = world(Opts::default()).await;
    // ssh.test:22 has a rule; nothing listens on the origin's port 22, so
    // the dial fails: 502 from an allowed decision.
    let r = w.s.ask("CONNECT ssh.test:22 HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-brig-rule").as_deref(), Some("upstream"));
    let ev = w.s.wait_events(1).await;
    assert_eq!(
        (ev[0].decision, ev[0].rule.as_str()),
        (Verdict::Allowed, "ssh-host")
    );
}

#[tokio::test]
async fn sni_mismatch_and_missing_sni_close_the_tunnel() {
    let w = world(Opts::default()).await;
    for (hello, rule) in [
        (tls::build_client_hello(Some("other.test")), "sni-mismatch"),
        (
            tls::build_client_hello(Some("evil.example")),
            "sni-mismatch",
        ),
        (tls::build_client_hello(None), "tls-no-sni"),
        (
            b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec(),
            "tls-no-sni",
        ),
    ] {
        let mut c = w.s.explicit().await;
        let r = roundtrip(&mut c, "CONNECT origin.test:443 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        c.write_all(&hello).await.unwrap();
        assert!(closed(&mut c).await, "{rule}");
        let ev = w.s.wait_events(1).await;
        let e = w.s.events.take().pop().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!((e.decision, e.rule.as_str()), (Verdict::Denied, rule));
        assert!(e.explanation.is_some());
    }
    // Not a byte reached the origin (its connection was opened and closed).
    assert!(w.tls.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn absolute_uri_get_keep_alive_and_per_request_decisions() {
    let w = world(Opts::default()).await;
    let mut c = w.s.explicit().await;
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/a/b?token=s3cret HTTP/1.1\r\nHost: origin.test\r\nAuthorization: Bearer s3cret\r\nProxy-Authorization: Basic s3cret\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello /a/b?token=s3cret");
    // Same connection: a denied request, then an allowed POST with a body.
    let r = roundtrip(
        &mut c,
        "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-brig-rule").as_deref(), Some("default-deny"));
    let r = roundtrip(&mut c, "POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello /up");
    let heads = w.web.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2);
    assert!(
        heads[0].starts_with("GET /a/b?token=s3cret HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    let lower = heads[0].to_ascii_lowercase();
    assert!(!lower.contains("proxy-authorization") && !lower.contains("proxy-connection"));
    assert!(
        !lower.contains("x-drop") && !lower.contains("connection:"),
        "{lower}"
    );
    assert!(
        lower.contains("authorization: bearer"),
        "end-to-end headers are kept"
    );
    // One upstream connection for both allowed requests.
    assert_eq!(w.web.connections.load(Ordering::SeqCst), 1);
    let ev = w.s.wait_events(3).await;
    assert_eq!(ev[0].path.as_deref(), Some("/a/b"));
    assert_eq!(ev[0].method.as_deref(), Some("GET"));
    assert_eq!(ev[0].status, Some(200));
    assert_eq!(ev[1].decision, Verdict::Denied);
    assert_eq!(ev[2].method.as_deref(), Some("POST"));
    assert!(ev[2].bytes_out > 5 && ev[2].bytes_in > 0);
    let all = serde_json::to_string(&ev).unwrap();
    assert!(!all.contains("s3cret"), "no secret in events: {all}");
}

#[tokio::test]
async fn host_mismatch_and_relative_uri() {
    let w = world(Opts::default()).await;
    let r =
        w.s.ask("GET http://origin.test/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("host-mismatch"))
    );
    let r =
        w.s.ask("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test:8080\r\n\r\n")
            .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("host-mismatch"))
    );
    let r =
        w.s.ask("CONNECT origin.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n")
            .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("host-mismatch"))
    );
    let r =
        w.s.ask("GET /relative HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("relative URI"));
    let r =
        w.s.ask("GET http://user:pw@origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("invalid-host"))
    );
    assert_eq!(w.web.connections.load(Ordering::SeqCst), 0);
    let all = serde_json::to_string(&w.s.events()).unwrap();
    assert!(!all.contains("pw@"), "{all}");
}

#[tokio::test]
async fn connect_userinfo_never_reaches_the_answer_or_the_journal() {
    let w = world(Opts::default()).await;
    let r =
        w.s.ask("CONNECT user:s3cret@origin.test:443 HTTP/1.1\r\n\r\n")
            .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("invalid-host"))
    );
    assert!(!r.body.contains("s3cret"), "{}", r.body);
    let all = serde_json::to_string(&w.s.wait_events(1).await).unwrap();
    assert!(!all.contains("s3cret"), "{all}");
}

#[tokio::test]
async fn ip_literals_in_every_form_are_denied() {
    let w = world(Opts::default()).await;
    let web = w.web.addr.ip().to_string();
    let forms = [
        // (CONNECT target, rule): the policy trusts 127.0.0.0/8 here, so the
        // IPv4 forms fall to ip-literal; IPv6 loopback and embeddings stay
        // denied by the SSRF guard.
        (format!("{web}:80"), "ip-literal"),
        ("127.0.0.1:443".to_string(), "ip-literal"),
        ("2130706433:443".to_string(), "ip-literal"),
        ("0177.0.0.1:443".to_string(), "ip-literal"),
        ("0x7f.1:443".to_string(), "ip-literal"),
        ("127.1:443".to_string(), "ip-literal"),
        ("[::1]:443".to_string(), "ssrf:loopback"),
        ("[::ffff:127.0.0.1]:443".to_string(), "ssrf:ipv4-mapped"),
        ("[::ffff:7f00:1]:443".to_string(), "ssrf:ipv4-mapped"),
        ("[::127.0.0.1]:443".to_string(), "ssrf:ipv4-compatible"),
        ("169.254.169.254:80".to_string(), "ssrf:cloud-metadata"),
        ("10.0.0.1:443".to_string(), "ssrf:private"),
        ("[fe80::1]:443".to_string(), "ssrf:link-local"),
        ("93.184.216.34:443".to_string(), "ip-literal"),
        ("[2606:4700::1]:443".to_string(), "ip-literal"),
        ("[fe80::1%25eth0]:443".to_string(), "invalid-host"),
    ];
    for (target, rule) in &forms {
        let r = w.s.ask(&format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        assert_eq!(
            (r.status, r.header("x-brig-rule")),
            (403, Some(rule.to_string())),
            "CONNECT {target}"
        );
        let host = target.rsplit_once(':').unwrap().0;
        let r =
            w.s.ask(&format!(
                "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ))
            .await;
        assert_eq!(r.status, 403, "GET http://{host}/");
    }
    assert_eq!(w.web.connections.load(Ordering::SeqCst), 0);
    assert_eq!(w.tls.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn loopback_is_refused_unless_trusted_and_dns_rebinding_fails() {
    // No trust for 127.0.0.0/8: a name resolving to loopback is refused.
    let web = http_origin(80).await;
    let wip = web.addr.ip();
    let public: IpAddr = "203.0.113.7".parse().unwrap();
    let dns = test_dns(std::sync::Arc::new(move |name: &str, q, n| match name {
        "origin.test" => vec![(wip, 60)],
        // Rebinding: an allowed test address first (TTL 0), then loopback.
        "rebind.test" if q == 1 && n == 0 => vec![(public, 0)],
        "rebind.test" => vec![(wip, 0)],
        _ => vec![],
    }))
    .await;
    let s = session(
        "s-rebind",
        Opts {
            policy: POLICY_UNTRUSTED,
            dns: Some(dns.addr),
            ..Opts::default()
        },
    )
    .await;
    let mut c = s.explicit().await;
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("ssrf:loopback"))
    );
    assert!(
        r.body.contains("127.0.0.0/8 (loopback)") && r.body.contains("trusted_cidrs"),
        "{}",
        r.body
    );

    // The sandbox resolves rebind.test through brig: the public answer.
    let a = s.dns_query("rebind.test", 1).await;
    let q = brig_proxy::dns_wire::build_query(0x4242, "rebind.test", 1);
    let ans = brig_proxy::dns_wire::parse_response(&a, &q, 1).unwrap();
    assert_eq!(
        ans.records.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![public]
    );
    // Then the proxy resolves it once more (TTL 0): loopback now, refused.
    let mut c = s.explicit().await;
    let r = roundtrip(
        &mut c,
        "GET http://rebind.test/ HTTP/1.1\r\nHost: rebind.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("ssrf:loopback"))
    );
    // And the sandbox's own second lookup gets no loopback address.
    let a = s.dns_query("rebind.test", 1).await;
    assert_eq!(a[3] & 0xf, brig_proxy::dns_wire::REFUSED);
    assert_eq!(
        web.connections.load(Ordering::SeqCst),
        0,
        "the origin on loopback was never dialed"
    );
    let ev = s.events();
    let dns_ev: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::Dns).collect();
    assert_eq!(dns_ev.len(), 2);
    assert_eq!(dns_ev[1].dropped, vec![wip]);
    assert_eq!(dns_ev[1].rule, "ssrf:loopback");
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let w = world(Opts {
        limits: Limits {
            requests_per_sec: 0.5,
            request_burst: 2.0,
            ..Limits::default()
        },
        ..Opts::default()
    })
    .await;
    let mut c = w.s.explicit().await;
    for _ in 0..2 {
        let r = roundtrip(
            &mut c,
            "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("x-brig-rule").as_deref(),
        Some("rate-limit:requests")
    );
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&ra));
    let ev = w.s.wait_events(3).await;
    assert_eq!(
        (ev[2].rule.as_str(), ev[2].status),
        ("rate-limit:requests", Some(429))
    );

    // Concurrent connections.
    let w = world(Opts {
        limits: Limits {
            max_connections: 2,
            ..Limits::default()
        },
        ..Opts::default()
    })
    .await;
    let _a = w.s.explicit().await;
    let _b = w.s.explicit().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = w.s.explicit().await;
    let r = read_resp(&mut c).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (429, Some("rate-limit:connections"))
    );

    // Bytes out per minute: a body past the budget closes the request.
    let w = world(Opts {
        limits: Limits {
            bytes_out_per_min: 1000,
            ..Limits::default()
        },
        ..Opts::default()
    })
    .await;
    let mut c = w.s.explicit().await;
    let body = "x".repeat(4000);
    let r = roundtrip(&mut c, &format!("POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4000\r\n\r\n{body}")).await;
    assert!(r.map(|r| r.status == 429).unwrap_or(true));
    let r =
        w.s.ask("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
            .await;
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (429, Some("rate-limit:bytes-out"))
    );
}

#[tokio::test]
async fn bad_input_400_431_and_smuggling_forms() {
    let w = world(Opts::default()).await;
    for req in [
        "GARBAGE\r\n\r\n".to_string(),
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nHost: other.test\r\n\r\n".to_string(),
        "GET http://origin.test/ HTTP/1.1\r\n\r\n".to_string(),
        "POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
        "POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n".to_string(),
        "GET https://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_string(),
        "GET http://origin.test/ HTTP/1.1\r\nBad Header: x\r\n\r\n".to_string(),
    ] {
        let mut c = w.s.explicit().await;
        let r = roundtrip(&mut c, &req).await.unwrap();
        assert_eq!(r.status, 400, "{req:?}");
        assert!(closed(&mut c).await);
    }
    let mut c = w.s.explicit().await;
    let big = format!(
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = c.write_all(big.as_bytes()).await;
    let r = read_resp(&mut c).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (431, Some("headers-too-large"))
    );
    let mut c = w.s.explicit().await;
    let many: String = (0..200).map(|i| format!("X-{i}: 1\r\n")).collect();
    let r = roundtrip(
        &mut c,
        &format!("GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n{many}\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(w.web.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slowloris_gets_408_without_harming_another_session() {
    let cfg = ProxyConfig {
        head_timeout: Duration::from_millis(400),
        ..ProxyConfig::default()
    };
    let slow = world(Opts {
        config: cfg.clone(),
        ..Opts::default()
    })
    .await;
    let healthy = world(Opts::default()).await;
    // 100 slow connections dripping a byte every 100 ms.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = slow.s.explicit().await;
        tasks.push(tokio::spawn(async move {
            let req = b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa";
            for b in req.iter() {
                if c.write_all(&[*b]).await.is_err() {
                    // The proxy answered and closed between our last look and
                    // this byte: the answer is still buffered on our side.
                    let mut rest = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest)).await;
                    return (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).to_string());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut peek = [0u8; 1];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), c.read(&mut peek)).await {
                    if n > 0 {
                        let mut rest = vec![peek[0]];
                        let mut tmp = [0u8; 1024];
                        if let Ok(n) = c.read(&mut tmp).await { rest.extend_from_slice(&tmp[..n]); }
                        return Some(String::from_utf8_lossy(&rest).to_string());
                    }
                }
            }
            None
        }));
    }
    // Meanwhile the healthy session answers promptly.
    let t0 = Instant::now();
    for _ in 0..20 {
        let mut c = healthy.s.explicit().await;
        let r = roundtrip(
            &mut c,
            "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    for t in tasks {
        let got = t.await.unwrap().expect("a 408 before the head completed");
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    }
    let ev = slow.s.wait_events(100).await;
    assert!(ev
        .iter()
        .all(|e| e.rule == "header-timeout" && e.status == Some(408)));
    assert_eq!(slow.web.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn proxy_header_v4_v6_and_malformed() {
    let w = world(Opts::default()).await;
    // Malformed headers: closed without a byte of answer, and journaled.
    for bad in [
        &b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"[..],
        b"PROXY TCP4 10.0.0.2 1.2.3.4 1 99999\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY TCP6 10.0.0.2 127.0.0.1 1 3128\r\n",
    ] {
        let mut c = tokio::net::UnixStream::connect(&w.s.proxy).await.unwrap();
        c.write_all(bad).await.unwrap();
        assert!(closed(&mut c).await);
    }
    let ev = w.s.wait_events(4).await;
    assert!(ev
        .iter()
        .all(|e| e.rule == "proxy-protocol" && e.kind == EventKind::Connection));
    // [::1]:3128 is explicit mode too.
    let mut c = w.s.open("[::1]:3128".parse().unwrap()).await;
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/v6 HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.body, "hello /v6");
    // A v6 transparent destination nobody resolved: denied.
    let mut c = w.s.open("[2001:db8::1]:80".parse().unwrap()).await;
    let r = roundtrip(&mut c, "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("transparent-ip-mismatch"))
    );
}

#[tokio::test]
async fn transparent_http_by_host_header() {
    let w = world(Opts::default()).await;
    // The sandbox resolved origin.test through its resolver...
    let _ = w.s.dns_query("origin.test", 1).await;
    // ...and connected to the answer on port 80, ignoring any proxy.
    let mut c = w.s.open(w.web.addr).await;
    let r = roundtrip(&mut c, "GET /t?q=1 HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello /t?q=1"));
    let r = roundtrip(&mut c, "GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("default-deny"))
    );
    // An address the resolver answered for no such name: mismatch.
    let mut c =
        w.s.open(SocketAddr::new("127.9.9.9".parse().unwrap(), 80))
            .await;
    let r = roundtrip(&mut c, "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("transparent-ip-mismatch"))
    );
    assert!(r.body.contains("127.9.9.9"));
    // Absolute-form to a transparent destination is refused.
    let mut c = w.s.open(w.web.addr).await;
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let ev = w.s.events();
    let t: Vec<_> = ev.iter().filter(|e| e.via == Via::Transparent).collect();
    assert_eq!(t[0].original_dst, Some(w.web.addr));
    assert_eq!(t[0].path.as_deref(), Some("/t"));
    assert_eq!(w.web.heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn transparent_tls_by_sni() {
    let w = world(Opts::default()).await;
    let _ = w.s.dns_query("origin.test", 1).await;
    let hello = tls::build_client_hello(Some("origin.test"));
    let mut c = w.s.open(w.tls.addr).await;
    c.write_all(&hello).await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("pong"));
    drop(c);
    for (sni, rule) in [
        (Some("evil.example"), "default-deny"),
        (None, "tls-no-sni"),
        (Some("pastebin.com"), "exfil/pastebins"),
    ] {
        let mut c = w.s.open(w.tls.addr).await;
        c.write_all(&tls::build_client_hello(sni)).await.unwrap();
        assert!(closed(&mut c).await);
        let e = w.s.events().pop().unwrap();
        assert_eq!(
            (e.decision, e.rule.as_str()),
            (Verdict::Denied, rule),
            "{sni:?}"
        );
    }
    // other.test is allowed, but the sandbox never resolved it: the IP it
    // dialed is not one brig answered for that name.
    let mut c = w.s.open(w.tls.addr).await;
    c.write_all(&tls::build_client_hello(Some("other.test")))
        .await
        .unwrap();
    assert!(closed(&mut c).await);
    let e = w.s.events().pop().unwrap();
    assert_eq!(e.rule, "transparent-ip-mismatch");
    assert_eq!(w.tls.connections.load(Ordering::SeqCst), 1);
    assert_eq!(&w.tls.received.lock().unwrap()[..], &hello[..]);
}

#[tokio::test]
async fn transparent_other_port_by_resolved_name() {
    let w = world(Opts::default()).await;
    // ssh.test:22 is allowed; the sandbox resolved it; nothing listens, so
    // the decision is allowed and the dial fails.
    let _ = w.s.dns_query("ssh.test", 1).await;
    let dst = SocketAddr::new(w.web.addr.ip(), 22);
    let mut c = w.s.open(dst).await;
    assert!(closed(&mut c).await);
    let e = w.s.wait_events(2).await.pop().unwrap();
    assert_eq!(
        (e.decision, e.rule.as_str(), e.host.as_deref()),
        (Verdict::Allowed, "ssh-host", Some("ssh.test"))
    );
    assert!(e.error.is_some());
    // Port 25 of the same address: no rule.
    let mut c = w.s.open(SocketAddr::new(w.web.addr.ip(), 25)).await;
    assert!(closed(&mut c).await);
    let e = w.s.wait_events(3).await.pop().unwrap();
    assert_eq!(e.decision, Verdict::Denied);
    // An address nobody resolved.
    let mut c = w.s.open("127.8.8.8:5432".parse().unwrap()).await;
    assert!(closed(&mut c).await);
    let e = w.s.wait_events(4).await.pop().unwrap();
    assert_eq!(e.rule, "transparent-unknown-address");
}

#[tokio::test]
async fn serve_tcp_explicit_mode() {
    let w = world(Opts::default()).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(brig_proxy::serve_tcp(l, w.s.egress.clone()));
    let mut c = tcp(addr).await;
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/tcp HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.body, "hello /tcp");
    // No PROXY header on TCP: a PROXY line is just a malformed request.
    let mut c = tcp(addr).await;
    let r = roundtrip(&mut c, "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    t.abort();
}

const REPORT: &str = r#"
mode = "report"

[[allow]]
name = "origin"
domains = ["origin.test"]

[ssrf]
trusted_cidrs = ["127.0.0.0/8"]
"#;

#[tokio::test]
async fn report_mode_lets_misses_through_as_would_deny() {
    let w = world(Opts {
        policy: REPORT,
        ..Opts::default()
    })
    .await;
    let mut c = w.s.explicit().await;
    let r = roundtrip(
        &mut c,
        "GET http://unlisted.test/x HTTP/1.1\r\nHost: unlisted.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello /x"));
    // The deny-list and mismatches are enforced in report mode too.
    let r = roundtrip(
        &mut c,
        "GET http://pastebin.com/ HTTP/1.1\r\nHost: pastebin.com\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (403, Some("exfil/pastebins"))
    );
    let r =
        w.s.ask("GET http://origin.test/ HTTP/1.1\r\nHost: unlisted.test\r\n\r\n")
            .await;
    assert_eq!(r.status, 403);
    let ev = w.s.wait_events(3).await;
    assert_eq!(
        (ev[0].decision, ev[0].rule.as_str()),
        (Verdict::WouldDeny, "default-deny")
    );
    let x = ev[0].explanation.as_ref().unwrap();
    assert!(x.would_deny && x.how_to_request_access.is_some());
    assert_eq!(ev[1].decision, Verdict::Denied);
    assert_eq!(ev[2].rule, "host-mismatch");
}

#[tokio::test]
async fn a_rate_limited_upload_never_logs_its_token() {
    let w = world(Opts {
        limits: Limits {
            requests_per_sec: 0.01,
            request_burst: 1.0,
            ..Limits::default()
        },
        ..Opts::default()
    })
    .await;
    let mut c = w.s.explicit().await;
    let r = roundtrip(
        &mut c,
        "GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = roundtrip(
        &mut c,
        "PUT http://artifacts.brig/v1/upload/SECRET-TOKEN HTTP/1.1\r\nHost: artifacts.brig\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    let ev = w.s.wait_events(2).await;
    assert_eq!(ev[1].path.as_deref(), Some("/v1/upload/[token]"));
    let all = format!("{ev:?}");
    assert!(!all.contains("SECRET-TOKEN"), "{all}");
}

#[tokio::test]
async fn a_stream_still_sending_its_proxy_header_holds_a_connection_slot() {
    let w = world(Opts {
        limits: Limits {
            max_connections: 1,
            ..Limits::default()
        },
        ..Opts::default()
    })
    .await;
    // Connected, PROXY header not sent yet.
    let _silent = tokio::net::UnixStream::connect(&w.s.proxy).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = w.s.explicit().await;
    let r = read_resp(&mut c).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-brig-rule").as_deref()),
        (429, Some("rate-limit:connections"))
    );
}
