//! Test helpers: an in-memory journal and local servers that speak each
//! sink's wire format, verify what they receive, and fail on demand.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::event::{Event, Outcome};
use brig_sinks::{
    CursorStore, EventSource, MemoryCursors, MemorySource, RunnerOptions, SignedCheckpoint,
    SinkConfig, SinkRunner, SinkStatus, Wakeup,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub fn event(action: &str, n: usize) -> Event {
    let mut e = Event::new(action, Outcome::Success).details(serde_json::json!({"n": n}));
    e.session = Some("s-test".into());
    e
}

/// A journal, cursors and a wakeup, like `brig serve` would wire them.
pub struct Journal {
    pub source: Arc<MemorySource>,
    pub wakeup: Wakeup,
}

impl Journal {
    pub fn new() -> Self {
        Journal {
            source: Arc::new(MemorySource::new()),
            wakeup: Wakeup::new(),
        }
    }
    pub fn append(&self, action: &str, count: usize) -> Vec<String> {
        let ids = (0..count)
            .map(|n| {
                let e = event(action, n);
                let id = e.id.clone();
                self.source.append(e);
                id
            })
            .collect();
        self.wakeup.notify();
        ids
    }
    /// "Signs" the head (the runner carries checkpoints verbatim, so a
    /// fake signature will do here) and wakes the runners; returns its seq.
    pub fn checkpoint(&self) -> i64 {
        let seq = self.source.head_seq().unwrap();
        self.source.add_checkpoint(SignedCheckpoint {
            seq,
            hash: format!("{seq:064x}"),
            time: brig_core::event::now_rfc3339(),
            key_id: "ed25519:00112233445566ff".into(),
            signature: "ab".repeat(64),
        });
        self.wakeup.notify();
        seq
    }
    pub fn start(
        &self,
        cfgs: Vec<SinkConfig>,
        cursors: Arc<dyn CursorStore>,
        opts: RunnerOptions,
    ) -> SinkRunner {
        SinkRunner::start(cfgs, self.source.clone(), cursors, &self.wakeup, opts)
            .expect("runner starts")
    }
    pub fn start_mem(&self, cfgs: Vec<SinkConfig>) -> (SinkRunner, Arc<MemoryCursors>) {
        let c = Arc::new(MemoryCursors::new());
        (self.start(cfgs, c.clone(), fast_opts()), c)
    }
}

pub fn fast_opts() -> RunnerOptions {
    RunnerOptions {
        poll_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(3),
        hostname: Some("test-host".into()),
        ..RunnerOptions::default()
    }
}

/// Small batches and quick retries so tests run fast.
pub fn fast(mut c: SinkConfig) -> SinkConfig {
    c.flush_interval = Duration::from_millis(20);
    c.retry.initial = Duration::from_millis(20);
    c.retry.max = Duration::from_millis(100);
    c.timeout = Duration::from_secs(2);
    c
}

pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn status(r: &SinkRunner) -> SinkStatus {
    r.status().remove(0)
}

#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the handler decided: the reply, and the events it decoded (recorded
/// as delivered only if the reply is sent in `Mode::Up`).
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub events: Vec<Event>,
    /// Checkpoint records it decoded (the record JSON).
    pub checkpoints: Vec<Value>,
}

impl Reply {
    pub fn refuse(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            events: vec![],
            checkpoints: vec![],
        }
    }
}

/// What one request carried, in wire order: events, and checkpoint
/// records each after the event it signs when that is in the same request.
#[derive(Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub checkpoints: Vec<Value>,
    cp_seqs: std::collections::BTreeSet<i64>,
}

impl Decoded {
    pub fn event(&mut self, e: Event) -> Result<(), String> {
        if self.cp_seqs.contains(&e.seq) {
            return Err(format!("event {} came after its checkpoint", e.seq));
        }
        self.events.push(e);
        Ok(())
    }
    /// A checkpoint record (a sink's message text).
    pub fn checkpoint(&mut self, text: &str) -> Result<i64, String> {
        let v = parse_checkpoint(text)?;
        let seq = v["seq"].as_i64().unwrap();
        self.cp_seqs.insert(seq);
        self.checkpoints.push(v);
        Ok(seq)
    }
    /// An event or a checkpoint, told apart by the `record` member.
    pub fn message(&mut self, text: &str) -> Result<(), String> {
        if is_checkpoint(text) {
            self.checkpoint(text).map(|_| ())
        } else {
            self.event(parse_event(text)?)
        }
    }
    pub fn reply(self, status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            body: body.into(),
            events: self.events,
            checkpoints: self.checkpoints,
        }
    }
}

pub fn is_checkpoint(text: &str) -> bool {
    text.starts_with(r#"{"record":"checkpoint","#)
}

/// A checkpoint record: exactly `record`, `seq`, `hash`, `time`, `key_id`,
/// `signature`, in that order.
pub fn parse_checkpoint(text: &str) -> Result<Value, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("checkpoint is not JSON: {e}"))?;
    let keys: Vec<&str> = v
        .as_object()
        .ok_or("checkpoint is not an object")?
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    if sorted != ["hash", "key_id", "record", "seq", "signature", "time"] || !v["seq"].is_i64() {
        return Err(format!("not a checkpoint record: {text}"));
    }
    if v["record"] != "checkpoint" {
        return Err(format!("record is not checkpoint: {text}"));
    }
    Ok(v)
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Up,
    /// Answer every request with this status and body, accepting nothing.
    Fail(u16, String),
    /// Take the events, then answer 503: the ack is lost.
    DropAck,
    /// Accept connections and close them without answering.
    Close,
    /// Stop listening: connections are refused.
    Refuse,
}

type Handler = dyn Fn(&Req) -> Result<Reply, String> + Send + Sync;

pub struct HttpSinkServer {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    /// Events in the order the server accepted them (duplicates included).
    pub accepted: Arc<Mutex<Vec<Event>>>,
    /// Checkpoint records in the order accepted (duplicates included).
    pub checkpoints: Arc<Mutex<Vec<Value>>>,
    /// Every request, verified or not.
    pub requests: Arc<Mutex<Vec<Req>>>,
    /// Requests that broke the wire format (must stay empty).
    pub violations: Arc<Mutex<Vec<String>>>,
    handler: Arc<Handler>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HttpSinkServer {
    pub async fn start(
        handler: impl Fn(&Req) -> Result<Reply, String> + Send + Sync + 'static,
    ) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Arc::new(HttpSinkServer {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(Mode::Up)),
            accepted: Default::default(),
            checkpoints: Default::default(),
            requests: Default::default(),
            violations: Default::default(),
            handler: Arc::new(handler),
            task: Mutex::new(None),
        });
        s.serve(listener);
        s
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn accepted_ids(&self) -> Vec<String> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    pub async fn set_mode(self: &Arc<Self>, m: Mode) {
        let was = std::mem::replace(&mut *self.mode.lock().unwrap(), m.clone());
        if m == Mode::Refuse && was != Mode::Refuse {
            // Dropping the accept loop drops the listener and every connection.
            let task = self.task.lock().unwrap().take();
            if let Some(t) = task {
                t.abort();
                let _ = t.await;
            }
        } else if m != Mode::Refuse && was == Mode::Refuse {
            let l = TcpListener::bind(self.addr)
                .await
                .expect("rebind the same port");
            self.serve(l);
        }
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if *me.mode.lock().unwrap() == Mode::Close {
                    drop(stream);
                    continue;
                }
                let me2 = me.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let me3 = me2.clone();
                        async move {
                            // Kept-alive connections see Close too: an error
                            // from the service makes hyper drop the connection.
                            if *me3.mode.lock().unwrap() == Mode::Close {
                                return Err(std::io::Error::other("closing"));
                            }
                            Ok(me3.handle(req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let r = Req {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body,
        };
        self.requests.lock().unwrap().push(r.clone());
        let mode = self.mode.lock().unwrap().clone();
        let reply = |status: u16, body: String| {
            hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        if let Mode::Fail(status, body) = &mode {
            return reply(*status, body.clone());
        }
        match (self.handler)(&r) {
            Err(v) => {
                self.violations.lock().unwrap().push(v.clone());
                reply(
                    400,
                    format!("{{\"violation\":{}}}", serde_json::Value::String(v)),
                )
            }
            Ok(rep) => {
                if (200..300).contains(&rep.status) {
                    let mut accepted = self.accepted.lock().unwrap();
                    accepted.extend(rep.events);
                    for c in rep.checkpoints {
                        let seq = c["seq"].as_i64().unwrap();
                        if !accepted.iter().any(|e| e.seq == seq) {
                            self.violations
                                .lock()
                                .unwrap()
                                .push(format!("checkpoint of seq {seq} before event {seq}"));
                        }
                        self.checkpoints.lock().unwrap().push(c);
                    }
                }
                if mode == Mode::DropAck {
                    return reply(503, "{}".into());
                }
                reply(rep.status, rep.body)
            }
        }
    }
}

/// Parses an event carried as a JSON string (the message of every sink).
pub fn parse_event(s: &str) -> Result<Event, String> {
    serde_json::from_str(s).map_err(|e| format!("message is not an event: {e}: {s}"))
}

pub fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// The seqs of the checkpoints accepted, first delivery of each, in order.
pub fn checkpoint_seqs(cps: &[Value]) -> Vec<i64> {
    let mut seen = std::collections::BTreeSet::new();
    cps.iter()
        .map(|c| c["seq"].as_i64().unwrap())
        .filter(|s| seen.insert(*s))
        .collect()
}

/// Every id of `want` was accepted, in order, each at least once.
pub fn assert_all_delivered(accepted: &[String], want: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    let mut order = Vec::new();
    for id in accepted {
        if seen.insert(id.clone()) {
            order.push(id.clone());
        }
    }
    assert_eq!(
        order, want,
        "every event delivered once at least, in journal order"
    );
}
