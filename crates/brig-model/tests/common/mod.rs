//! The harness: fake upstreams, a gateway served on a real loopback
//! listener (as the proxy would hand connections over), and a small HTTP
//! client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_model::fake::FakeUpstream;
use brig_model::{Gateway, GatewayConfig, GatewayDeps, KeyRef, ModelCall, SessionCtx};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const SESSION: &str = "ses_test1";
pub const REAL_OPENAI: &str = "sk-real-openai-0123456789abcdef";
pub const REAL_ANTHROPIC: &str = "sk-ant-real-0123456789abcdef";
/// A secret brig knows (the redactor's known values).
pub const CANARY: &str = "canary-secret-Zq81xLm40PwT";

pub struct Harness {
    pub gw: Arc<Gateway>,
    pub addr: SocketAddr,
    pub key: String,
    pub calls: mpsc::Receiver<ModelCall>,
    pub fakes: Vec<FakeUpstream>,
    pub sessions: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// `[models]` with `{A}`, `{B}` replaced by the fakes' URLs (`{A1}` the
/// OpenAI base).
pub async fn harness(toml_src: &str) -> Harness {
    harness_n(toml_src, 2).await
}

pub async fn harness_n(toml_src: &str, fakes: usize) -> Harness {
    let redactor = Arc::new(
        brig_redact::Redactor::builder()
            .secret("CANARY", CANARY)
            .secret("OPENAI", REAL_OPENAI)
            .build(),
    );
    harness_with(toml_src, fakes, Arc::new(move || redactor.clone())).await
}

/// [`harness_n`] with the embedder's redactor function.
pub async fn harness_with(
    toml_src: &str,
    fakes: usize,
    redactor: brig_model::RedactorFn,
) -> Harness {
    let mut fs = Vec::new();
    let mut src = toml_src.to_string();
    for (i, name) in ["A", "B"].iter().enumerate().take(fakes) {
        let f = FakeUpstream::start().await.unwrap();
        src = src.replace(&format!("{{{name}1}}"), &f.openai_url());
        src = src.replace(&format!("{{{name}}}"), &f.url());
        let _ = i;
        fs.push(f);
    }
    let config: GatewayConfig = toml::from_str(&src).unwrap();
    let (tx, rx) = mpsc::channel(10_000);
    let keys = |upstream: &str, k: &KeyRef| -> Result<Option<String>, String> {
        match k.0.as_str() {
            Some("openai") => Ok(Some(REAL_OPENAI.into())),
            Some("anthropic") => Ok(Some(REAL_ANTHROPIC.into())),
            _ => Err(format!(
                "vault path kv/{upstream} is sealed (token {REAL_OPENAI})"
            )),
        }
    };
    let gw = Gateway::new(
        config,
        GatewayDeps {
            keys: Arc::new(keys),
            redactor,
            sink: Arc::new(tx),
        },
    )
    .unwrap();
    let key = brig_model::placeholder_key();
    gw.open_session(SessionCtx {
        session: SESSION.into(),
        human: Some("ann".into()),
        task: Some("T-1".into()),
        api_key: key.clone(),
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let g = gw.clone();
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let s2 = sessions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let h = tokio::spawn(g.serve_connection(Arc::from(SESSION), tcp, Vec::new()));
            s2.lock().unwrap().push(h);
        }
    });
    Harness {
        gw,
        addr,
        key,
        calls: rx,
        fakes: fs,
        sessions,
    }
}

pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub conn: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, conn }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap()
    }
}

pub fn post(path: &str, key: &str, body: &serde_json::Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "model.brig")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub fn post_anthropic(path: &str, key: &str, body: &serde_json::Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "model.brig")
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

pub async fn body_json(r: Response<Incoming>) -> (u16, serde_json::Value) {
    let s = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (
        s,
        serde_json::from_slice(&b)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&b).into())),
    )
}

pub async fn body_text(r: Response<Incoming>) -> String {
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}

/// One request on a fresh connection.
pub async fn once(addr: SocketAddr, req: Request<Full<Bytes>>) -> (u16, serde_json::Value) {
    let mut c = Client::connect(addr).await;
    body_json(c.send(req).await).await
}

impl Harness {
    /// The next record (waits up to 5 s).
    pub async fn call(&mut self) -> ModelCall {
        tokio::time::timeout(Duration::from_secs(5), self.calls.recv())
            .await
            .expect("a model call record within 5 s")
            .expect("sink open")
    }

    pub fn fake(&self, i: usize) -> &FakeUpstream {
        &self.fakes[i]
    }

    /// Waits until every call's record was written.
    pub async fn settle(&self) {
        for _ in 0..200 {
            if self.gw.in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} calls still in flight", self.gw.in_flight());
    }
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn chat(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// A config with one OpenAI-kind upstream (`oa`, fake A) and one
/// Anthropic one (`an`, fake A too), plus `extra`.
pub fn base_config(extra: &str) -> String {
    format!(
        r#"
[upstreams.oa]
kind = "openai"
base_url = "{{A1}}"
key = "openai"
retries = 0
models = ["gpt-4o-mini", "text-embedding-3-small"]
[upstreams.an]
kind = "anthropic"
base_url = "{{A}}"
key = "anthropic"
retries = 0
models = ["claude-sonnet-4-5"]
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[prices."claude-sonnet-4-5"]
input = 3.0
output = 15.0
{extra}
"#
    )
}
