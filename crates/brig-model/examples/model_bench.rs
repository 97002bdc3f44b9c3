//! The model gateway's benchmark: the fake upstream and the gateway on
//! loopback, measured side by side with hitting the upstream directly (and,
//! with `--peer`, a third endpoint such as a LiteLLM proxy in front of the
//! same fake upstream).
//!
//! ```text
//! cargo run --release -p brig-model --features fake --example model_bench -- \
//!     [--requests 2000] [--concurrency 8] [--seconds 5] [--stream-words 20] \
//!     [--fake-port 18080] [--peer http://127.0.0.1:4000/v1 --peer-key sk-1234 --peer-model gpt-4o-mini] \
//!     [--system-words 0]
//! ```
//!
//! `--system-words N` puts the same system message of N words in front of
//! every request, as agents send their system prompt and tools in every
//! call (default 0: the one-line request alone).
//!
//! - latency: sequential small non-stream chat completions on one
//!   keep-alive connection per endpoint, rounds interleaved (direct, gateway,
//!   peer, direct, ...) so machine noise lands on all columns alike;
//! - requests/s: `--concurrency` keep-alive clients for `--seconds` each;
//! - stream time to first chunk: sequential streaming completions, the
//!   time from sending the request to the first body chunk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_model::fake::FakeUpstream;
use brig_model::{Gateway, GatewayConfig, GatewayDeps, KeyRef, SessionCtx};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Target {
    name: &'static str,
    /// `,{"role":"system",...}` before the user message, or empty.
    system: Arc<str>,
    /// OpenAI base URL: `http://host:port/v1`.
    base: String,
    key: String,
    model: String,
}

struct Args {
    requests: usize,
    concurrency: usize,
    seconds: u64,
    stream_words: usize,
    system_words: usize,
    fake_port: u16,
    peer: Option<String>,
    peer_key: String,
    peer_model: String,
}

fn args() -> Args {
    let mut a = Args {
        requests: 2000,
        concurrency: 8,
        seconds: 5,
        stream_words: 20,
        system_words: 0,
        fake_port: 0,
        peer: None,
        peer_key: "sk-1234".into(),
        peer_model: "gpt-4o-mini".into(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        let num = || {
            val.parse::<usize>()
                .unwrap_or_else(|_| panic!("{} needs a number", v[i]))
        };
        match v[i].as_str() {
            "--requests" => a.requests = num(),
            "--concurrency" => a.concurrency = num(),
            "--seconds" => a.seconds = num() as u64,
            "--stream-words" => a.stream_words = num(),
            "--system-words" => a.system_words = num(),
            "--fake-port" => a.fake_port = num() as u16,
            "--peer" => a.peer = Some(val),
            "--peer-key" => a.peer_key = val,
            "--peer-model" => a.peer_model = val,
            "-h" | "--help" => {
                println!("see the comment at the top of examples/model_bench.rs");
                std::process::exit(0);
            }
            o => panic!("unknown option {o}"),
        }
        i += 2;
    }
    a
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    path_prefix: String,
}

impl Conn {
    async fn open(base: &str) -> Conn {
        let rest = base.strip_prefix("http://").expect("an http:// base URL");
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let tcp = TcpStream::connect(authority).await.expect("connect");
        tcp.set_nodelay(true).ok();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn {
            sender,
            authority: authority.to_string(),
            path_prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// One request; the time to the head's arrival and to the first body
    /// chunk, and the whole time.
    async fn chat(&mut self, t: &Target, stream: bool) -> (Duration, Duration) {
        let body = if stream {
            format!(
                r#"{{"model":"{}","stream":true,"messages":[{}{{"role":"user","content":"Say hello."}}]}}"#,
                t.model, t.system
            )
        } else {
            format!(
                r#"{{"model":"{}","messages":[{}{{"role":"user","content":"Say hello."}}],"max_tokens":16}}"#,
                t.model, t.system
            )
        };
        let req = hyper::Request::post(format!("{}/chat/completions", self.path_prefix))
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", t.key))
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let t0 = Instant::now();
        self.sender.ready().await.expect("ready");
        let resp = self.sender.send_request(req).await.expect("response");
        assert!(
            resp.status().is_success(),
            "{}: status {}",
            t.name,
            resp.status()
        );
        let mut b = resp.into_body();
        let mut first = None;
        while let Some(f) = b.frame().await {
            let f = f.expect("body");
            if first.is_none() && f.data_ref().is_some_and(|d| !d.is_empty()) {
                first = Some(t0.elapsed());
            }
        }
        let all = t0.elapsed();
        (first.unwrap_or(all), all)
    }
}

/// CPU time of this process (every thread: client, fake upstream,
/// gateway), in ns, from /proc (0 where there is none).
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let fake = FakeUpstream::start_at(([127, 0, 0, 1], a.fake_port).into())
        .await
        .expect("fake upstream");
    fake.keep_requests(false);
    fake.set_default(brig_model::fake::Behavior::reply(
        "hello ".repeat(a.stream_words).trim_end(),
    ));
    let cfg: GatewayConfig = toml::from_str(&format!(
        r#"
[upstreams.fake]
kind = "openai-compatible"
base_url = "{}"
models = ["gpt-4o-mini"]
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[budgets.session]
max_tokens = 1000000000000
rpm = 100000000
"#,
        fake.openai_url()
    ))
    .expect("config");
    let (tx, mut rx) = tokio::sync::mpsc::channel(100_000);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let keys = |_: &str, _: &KeyRef| -> Result<Option<String>, String> { Ok(None) };
    let red = Arc::new(brig_redact::Redactor::patterns_only());
    let gw = Gateway::new(
        cfg,
        GatewayDeps {
            keys: Arc::new(keys),
            redactor: Arc::new(move || red.clone()),
            sink: Arc::new(tx),
        },
    )
    .expect("gateway");
    let key = brig_model::placeholder_key();
    gw.open_session(SessionCtx {
        session: "bench".into(),
        human: Some("bench".into()),
        task: None,
        api_key: key.clone(),
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let gaddr = l.local_addr().expect("addr");
    let g = gw.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tcp.set_nodelay(true).ok();
            tokio::spawn(g.serve_connection(Arc::from("bench"), tcp, Vec::new()));
        }
    });

    let system: Arc<str> = if a.system_words == 0 {
        "".into()
    } else {
        let words = [
            "Follow",
            "the",
            "repository's",
            "conventions;",
            "run",
            "the",
            "tests",
            "before",
            "every",
            "commit.",
        ];
        let text: Vec<&str> = (0..a.system_words)
            .map(|i| words[i % words.len()])
            .collect();
        format!(r#"{{"role":"system","content":"{}"}},"#, text.join(" ")).into()
    };
    let mut targets = vec![
        Target {
            name: "direct",
            system: system.clone(),
            base: fake.openai_url(),
            key: "none".into(),
            model: "gpt-4o-mini".into(),
        },
        Target {
            name: "brig",
            system: system.clone(),
            base: format!("http://{gaddr}/v1"),
            key: key.clone(),
            model: "gpt-4o-mini".into(),
        },
    ];
    if let Some(p) = &a.peer {
        targets.push(Target {
            name: "peer",
            system: system.clone(),
            base: p.clone(),
            key: a.peer_key.clone(),
            model: a.peer_model.clone(),
        });
    }
    println!(
        "model_bench: {} cpus, {} requests, {} clients x {} s, {} stream chunks, system message {} words",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        a.requests,
        a.concurrency,
        a.seconds,
        a.stream_words + 3,
        a.system_words
    );

    // Latency and stream TTFB: interleaved rounds on one connection each.
    let mut conns = Vec::new();
    for t in &targets {
        conns.push(Conn::open(&t.base).await);
    }
    let warm = (a.requests / 10).clamp(20, 500);
    for _ in 0..warm {
        for (c, t) in conns.iter_mut().zip(&targets) {
            c.chat(t, false).await;
            c.chat(t, true).await;
        }
    }
    let n = targets.len();
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut ttfb: Vec<Vec<Duration>> = vec![Vec::new(); n];
    for _ in 0..a.requests {
        for (i, (c, t)) in conns.iter_mut().zip(&targets).enumerate() {
            lat[i].push(c.chat(t, false).await.1);
        }
    }
    for _ in 0..a.requests / 2 {
        for (i, (c, t)) in conns.iter_mut().zip(&targets).enumerate() {
            ttfb[i].push(c.chat(t, true).await.0);
        }
    }
    drop(conns);

    // Throughput: C keep-alive clients per target, in 250 ms slices
    // taken in turn (direct, brig, peer, direct, ...) for S seconds each,
    // so a busy neighbour on the machine slows every column alike.
    let mut pools: Vec<Vec<Conn>> = Vec::new();
    for t in &targets {
        let mut v = Vec::new();
        for _ in 0..a.concurrency {
            v.push(Conn::open(&t.base).await);
        }
        pools.push(v);
    }
    let targets: Vec<Arc<Target>> = targets.into_iter().map(Arc::new).collect();
    let slice = Duration::from_millis(250);
    let mut done = vec![0u64; targets.len()];
    let mut cpu = vec![0u64; targets.len()];
    for _ in 0..(a.seconds * 4) {
        for (i, t) in targets.iter().enumerate() {
            let end = Instant::now() + slice;
            let cpu0 = cpu_ns();
            let mut tasks = Vec::new();
            for mut c in pools[i].drain(..) {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        c.chat(&t, false).await;
                        n += 1;
                    }
                    (n, c)
                }));
            }
            for x in tasks {
                let (n, c) = x.await.expect("client");
                done[i] += n;
                pools[i].push(c);
            }
            cpu[i] += cpu_ns().saturating_sub(cpu0);
        }
    }
    let rps: Vec<f64> = done.iter().map(|n| *n as f64 / a.seconds as f64).collect();

    let (d50, d99) = (pct(&mut lat[0], 0.5), pct(&mut lat[0], 0.99));
    let (s50, s99) = (pct(&mut ttfb[0], 0.5), pct(&mut ttfb[0], 0.99));
    println!();
    println!(
        "{:<8} {:>9} {:>9} {:>11} {:>11} {:>10} {:>9} {:>12} {:>12} {:>11}",
        "endpoint",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "req/s",
        "vs direct",
        "ttfc p50 ms",
        "+ttfc p50 ms",
        "cpu us/req"
    );
    for (i, t) in targets.iter().enumerate() {
        let (p50, p99) = (pct(&mut lat[i], 0.5), pct(&mut lat[i], 0.99));
        let (f50, _f99) = (pct(&mut ttfb[i], 0.5), pct(&mut ttfb[i], 0.99));
        println!(
            "{:<8} {:>9.3} {:>9.3} {:>11.3} {:>11.3} {:>10.0} {:>8.0}% {:>12.3} {:>12.3} {:>11.1}",
            t.name,
            p50,
            p99,
            p50 - d50,
            p99 - d99,
            rps[i],
            rps[i] / rps[0] * 100.0,
            f50,
            f50 - s50,
            cpu[i] as f64 / 1e3 / done[i].max(1) as f64
        );
    }
    let _ = s99;
    println!(
        "\nupstream connections opened by all clients (direct and brig's pool): {}",
        fake.connections_opened()
    );
}
