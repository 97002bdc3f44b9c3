//! `brig mcp`: brig's MCP server (brig-mcp, docs/MCP.md) on stdio, or on
//! streamable HTTP with `--listen`. Either way it is a client of brig's
//! API: on stdio as whoever runs it (the socket's peer, or BRIG_TOKEN /
//! the stored login over --url); over HTTP as the bearer each MCP request
//! carries, forwarded to brig's TCP API (so `--listen` needs `--url`).

use std::net::SocketAddr;
use std::sync::Arc;

use brig_core::{Error, ErrorKind, Result};
use brig_mcp::{BrigApi, McpSession, Method};
use clap::Args;
use serde_json::Value;

use crate::client::{Client, Endpoint};
use crate::output::Out;

#[derive(Args, Debug)]
pub struct McpArgs {
    /// Serve MCP's streamable HTTP transport on ADDR (e.g. 127.0.0.1:7879;
    /// port 0 picks one) instead of stdio. Every request must carry
    /// `Authorization: Bearer <brig token>`, forwarded to brig's TCP API
    /// (--url), so each MCP client acts as its own principal.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// brig's API through the CLI's client, as one caller.
struct Api(Client);

impl BrigApi for Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let m = match method {
            Method::Get => hyper::Method::GET,
            Method::Post => hyper::Method::POST,
            Method::Delete => hyper::Method::DELETE,
        };
        on_worker(self.0.clone(), m, path.to_string(), body).await
    }
}

/// One API call for the worker thread.
struct Job {
    client: Client,
    method: hyper::Method,
    path: String,
    body: Option<Value>,
    reply: tokio::sync::oneshot::Sender<Result<Value>>,
}

/// The CLI client's futures are not `Send` (the stored login's refresh
/// is not), while MCP calls are served on many tasks: they run on one
/// thread of their own (a current-thread runtime with a `LocalSet`), and
/// the answer comes back on a channel.
async fn on_worker(
    client: Client,
    method: hyper::Method,
    path: String,
    body: Option<Value>,
) -> Result<Value> {
    static WORKER: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Job>> =
        std::sync::OnceLock::new();
    let tx = WORKER.get_or_init(|| {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("brig-mcp-api".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("brig mcp: cannot start the API thread: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    while let Some(j) = rx.recv().await {
                        tokio::task::spawn_local(async move {
                            let r = j
                                .client
                                .call_value(j.method, &j.path, j.body.as_ref())
                                .await;
                            let _ = j.reply.send(r);
                        });
                    }
                });
            })
            .expect("spawn the MCP API thread");
        tx
    });
    let (reply, rx) = tokio::sync::oneshot::channel();
    tx.send(Job {
        client,
        method,
        path,
        body,
        reply,
    })
    .map_err(|_| Error::internal("the MCP API thread is gone"))?;
    rx.await
        .map_err(|_| Error::internal("the MCP API thread dropped a call"))?
}

/// Checks each HTTP request's bearer with brig (`/v1/whoami`).
struct Bearers {
    url: String,
}

impl brig_mcp::http::Authenticate for Bearers {
    type Api = Api;
    async fn authenticate(&self, bearer: &str) -> Result<(Arc<Api>, String)> {
        let c = Client::new(Endpoint::from_url(&self.url, Some(bearer.to_string()))?);
        let who = on_worker(c.clone(), hyper::Method::GET, "/v1/whoami".into(), None).await?;
        let id = who["id"].as_str().unwrap_or_default().to_string();
        if id.is_empty() {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                "brig did not say who the credential is",
            ));
        }
        Ok((Arc::new(Api(c)), id))
    }
}

pub async fn run(client: Client, url: Option<&str>, a: &McpArgs, out: Out) -> Result<i32> {
    match &a.listen {
        None => stdio(client, out).await,
        Some(addr) => http(url, addr, out).await,
    }
}

async fn stdio(client: Client, out: Out) -> Result<i32> {
    // Fail at once, with brig's own error, when brig is not there or the
    // credential is refused: an MCP client would only see a dead server.
    let who = client
        .call_value::<()>(hyper::Method::GET, "/v1/whoami", None)
        .await?;
    if !out.quiet {
        eprintln!(
            "brig mcp: serving MCP on stdio as {}",
            who["id"].as_str().unwrap_or("?")
        );
    }
    let session = Arc::new(McpSession::new(Arc::new(Api(client))));
    brig_mcp::stdio::serve(session, tokio::io::stdin(), tokio::io::stdout())
        .await
        .map_err(|e| Error::internal(format!("MCP over stdio: {e}")))?;
    Ok(0)
}

async fn http(url: Option<&str>, addr: &str, out: Out) -> Result<i32> {
    let Some(url) = url else {
        return Err(Error::invalid(
            "brig mcp --listen needs brig's TCP API (--url or BRIG_URL)",
        )
        .hint("each MCP request's bearer is forwarded to brig; over the unix socket every MCP client would act as you. Serve the API on TCP ([tcp] listen) and pass --url http://HOST:PORT"));
    };
    // Checked here so a bad --url fails before anything listens.
    Endpoint::from_url(url, None)?;
    let addr: SocketAddr = addr.parse().map_err(|_| {
        Error::invalid(format!("--listen {addr:?} is not an address"))
            .hint("e.g. --listen 127.0.0.1:7879")
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let endpoint = format!("http://{bound}{}", brig_mcp::http::PATH);
    if out.json {
        // One line (the server keeps running): what a supervisor reads.
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let _ = writeln!(
            o,
            "{}",
            serde_json::json!({"listening": endpoint, "addr": bound.to_string()})
        );
        let _ = o.flush();
    } else if !out.quiet {
        eprintln!("brig mcp: serving MCP (streamable HTTP) at {endpoint}; every request needs Authorization: Bearer <brig token>");
    }
    if !bound.ip().is_loopback() && !out.quiet {
        eprintln!("brig mcp: warning: {bound} is not loopback and this is plain HTTP: put TLS in front of it");
    }
    let auth = Arc::new(Bearers {
        url: url.to_string(),
    });
    brig_mcp::http::serve(listener, auth, shutdown())
        .await
        .map_err(|e| Error::internal(format!("MCP over HTTP: {e}")))?;
    Ok(0)
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
