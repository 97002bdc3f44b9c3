//! The HTTP client of brig's API (docs/API.md): hyper 1 over a unix socket
//! (the default) or TCP with a bearer token. One connection per request:
//! the socket is local and cheap, and it keeps the client stateless.
//!
//! Over TCP the bearer is BRIG_TOKEN (an API token, or the server's static
//! token) or else the stored `brig login` (its ID token, refreshed when it
//! has expired; see `crate::login`). The unix socket needs none: the
//! server asks the kernel who connected.

use std::path::PathBuf;
use std::sync::Arc;

use brig_core::error::ApiErrorBody;
use brig_core::{Error, ErrorKind, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where the control plane listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        /// `host:port`.
        addr: String,
        token: Option<String>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr}"),
        }
    }
}

impl Endpoint {
    /// Parse `--url`: `http://host:port` (TLS is for a fronting proxy).
    pub fn from_url(url: &str, token: Option<String>) -> Result<Endpoint> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            Error::invalid(format!("--url {url:?} is not an http:// URL"))
                .hint("use e.g. --url http://127.0.0.1:7878, or --socket for the local unix socket")
        })?;
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') {
            return Err(Error::invalid(format!(
                "--url {url:?} must be just scheme, host and port"
            ))
            .hint("e.g. http://127.0.0.1:7878"));
        }
        let addr = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:80")
        };
        Ok(Endpoint::Tcp { addr, token })
    }
}

/// A byte stream the client can speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    /// Whether a TCP request without BRIG_TOKEN carries the stored login.
    use_login: bool,
    /// The stored login's bearer, read (and refreshed) once per client.
    login: Arc<tokio::sync::OnceCell<Option<Secret>>>,
}

/// A bearer credential; Debug never shows it.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            use_login: true,
            login: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The same endpoint without the stored login (`brig login` asking the
    /// server which IdP to use, before there is one).
    pub fn anonymous(&self) -> Client {
        Client {
            endpoint: self.endpoint.clone(),
            use_login: false,
            login: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// The unix socket (where the server identifies the peer itself).
    pub fn is_local(&self) -> bool {
        matches!(self.endpoint, Endpoint::Unix(_))
    }

    /// The `Authorization` a request gets: BRIG_TOKEN, else the stored
    /// login over TCP; nothing on the socket.
    async fn bearer(&self) -> Result<Option<String>> {
        match &self.endpoint {
            Endpoint::Unix(_) => Ok(None),
            Endpoint::Tcp { token: Some(t), .. } => Ok(Some(t.clone())),
            Endpoint::Tcp { token: None, .. } if !self.use_login => Ok(None),
            Endpoint::Tcp { token: None, .. } => {
                let s = self
                    .login
                    .get_or_try_init(|| async {
                        crate::login::stored_bearer().await.map(|b| b.map(Secret))
                    })
                    .await?;
                Ok(s.as_ref().map(|s| s.0.clone()))
            }
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>> {
        match &self.endpoint {
            Endpoint::Unix(path) => match tokio::net::UnixStream::connect(path).await {
                Ok(s) => Ok(Box::new(s)),
                Err(e) => Err(self.unreachable(e)),
            },
            Endpoint::Tcp { addr, .. } => match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    Ok(Box::new(s))
                }
                Err(e) => Err(self.unreachable(e)),
            },
        }
    }

    fn unreachable(&self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::new(
                ErrorKind::Unauthorized,
                format!("cannot reach brig at {}: permission denied", self.endpoint),
            )
            .hint("the API socket is mode 0600: run brig as the user that runs `brig serve` (usually root, e.g. with sudo)");
        }
        let hint = match &self.endpoint {
            Endpoint::Unix(p) if p.as_os_str() == crate::cli::DEFAULT_SOCKET => {
                "start it with `sudo brig serve` (or run `brig demo`, which needs no server)".to_string()
            }
            Endpoint::Unix(p) => format!(
                "start it with `sudo brig serve --socket {}`, or point --socket/BRIG_SOCKET at the running server's socket",
                p.display()
            ),
            Endpoint::Tcp { .. } => {
                "check --url/BRIG_URL and that `brig serve` listens on TCP there".to_string()
            }
        };
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "cannot reach brig at {}: is `brig serve` running? ({e})",
                self.endpoint
            ),
        )
        .hint(hint)
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Request<Full<Bytes>> {
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp { addr, .. } => addr.clone(),
        };
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("brig/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            b = b.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        b.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("static request parts are valid")
    }

    async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        upgrades: bool,
    ) -> Result<Response<Incoming>> {
        if let Some(t) = self.bearer().await? {
            let v = hyper::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                Error::invalid("the bearer token has characters a header cannot carry")
                    .hint("check BRIG_TOKEN (or run `brig login` again)")
            })?;
            req.headers_mut().insert(hyper::header::AUTHORIZATION, v);
        }
        let io = TokioIo::new(self.connect().await?);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.broken(e))?;
        if upgrades {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
        } else {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        sender.send_request(req).await.map_err(|e| self.broken(e))
    }

    fn broken(&self, e: hyper::Error) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!("the connection to brig at {} failed: {e}", self.endpoint),
        )
        .hint("the server may have stopped or restarted; check its logs")
    }

    /// Call the API; the answer as raw JSON (so `--json` can print exactly
    /// what the server said), or the API's error mapped back to an [`Error`].
    pub async fn call_value<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<serde_json::Value> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| Error::internal(e.to_string())))
            .transpose()?;
        let resp = self.send(self.request(method, path, body), false).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(e))?
            .to_bytes();
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::internal(format!("brig answered {path} with invalid JSON: {e}"))
                .hint("the client and server versions may differ: compare `brig version` with the server's")
        })
    }

    /// Call the API and decode the answer into `T`.
    pub async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(T, serde_json::Value)> {
        let v = self.call_value(method, path, body).await?;
        let t = decode(path, &v)?;
        Ok((t, v))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, serde_json::Value)> {
        self.call::<T, ()>(Method::GET, path, None).await
    }

    /// Call an endpoint that answers NDJSON: `each` gets every line but
    /// the last as JSON; the last is returned.
    pub async fn call_lines<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mut each: impl FnMut(&serde_json::Value),
    ) -> Result<serde_json::Value> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| Error::internal(e.to_string())))
            .transpose()?;
        let resp = self.send(self.request(method, path, body), false).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| self.broken(e))?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut last = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.broken(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let v: serde_json::Value = serde_json::from_slice(&line).map_err(|e| {
                    Error::internal(format!("brig answered {path} with an invalid line: {e}"))
                })?;
                if let Some(prev) = last.replace(v) {
                    each(&prev);
                }
            }
        }
        last.ok_or_else(|| self.broken_stream(path))
    }

    fn broken_stream(&self, path: &str) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!("brig at {} ended {path} without an answer", self.endpoint),
        )
        .hint("the server may have stopped or restarted; check its logs and `brig session list`")
    }

    /// GET raw bytes, streamed to `w`; returns the response's headers and
    /// the byte count. An API error is mapped back to an [`Error`].
    pub async fn download<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        path: &str,
        w: &mut W,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(hyper::HeaderMap, u64)> {
        use tokio::io::AsyncWriteExt;
        let resp = self
            .send(self.request(Method::GET, path, None), false)
            .await?;
        let status = resp.status();
        let (parts, mut body) = resp.into_parts();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| self.broken(e))?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.broken(e))?;
            if let Ok(data) = frame.into_data() {
                each(&data);
                w.write_all(&data)
                    .await
                    .map_err(|e| Error::internal(format!("writing {path}: {e}")))?;
                n += data.len() as u64;
            }
        }
        w.flush()
            .await
            .map_err(|e| Error::internal(format!("writing {path}: {e}")))?;
        Ok((parts.headers, n))
    }

    /// Open an attached exec: the request, the `101`, then the raw stream
    /// that carries `brig_core::wire` frames.
    pub async fn attach(
        &self,
        session: &str,
        req: &brig_core::exec::ExecRequest,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        let body = serde_json::to_vec(req).map_err(|e| Error::internal(e.to_string()))?;
        let mut r = self.request(
            Method::POST,
            &format!("/v1/sessions/{session}/exec/attach"),
            Some(body),
        );
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        r.headers_mut().insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("brig-exec/1"),
        );
        let resp = self.send(r, true).await?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if status.is_success() {
                return Err(Error::internal(format!(
                    "brig answered the attach request with {status} instead of 101 Switching Protocols"
                )));
            }
            return Err(api_error(status, &bytes));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|e| self.broken(e))?;
        Ok(TokioIo::new(upgraded))
    }
}

pub fn decode<T: DeserializeOwned>(what: &str, v: &serde_json::Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Error::internal(format!("unexpected answer from brig for {what}: {e}")).hint(
            "the client and server versions may differ: compare `brig version` with the server's",
        )
    })
}

/// Map an API error response back to brig's error: the body's kind when it
/// has the documented shape, else the kind the HTTP status stands for.
pub fn api_error(status: StatusCode, body: &[u8]) -> Error {
    if let Ok(b) = serde_json::from_slice::<ApiErrorBody>(body) {
        return b.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    Error::new(
        ErrorKind::from_http_status(status.as_u16()),
        if text.is_empty() {
            format!("brig answered {status}")
        } else {
            format!("brig answered {status}: {}", truncate(text, 500))
        },
    )
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_keep_kind_and_hint() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"kind":"not_found","message":"no session s-x","hint":"see brig session list"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.hint.as_deref(), Some("see brig session list"));
        let e = api_error(StatusCode::GATEWAY_TIMEOUT, b"upstream slow");
        assert_eq!(e.kind, ErrorKind::Timeout);
        assert!(e.message.contains("upstream slow"));
    }

    #[test]
    fn urls() {
        assert!(matches!(
            Endpoint::from_url("http://127.0.0.1:7878/", None).unwrap(),
            Endpoint::Tcp { addr, .. } if addr == "127.0.0.1:7878"
        ));
        assert!(Endpoint::from_url("https://x", None).is_err());
        assert!(Endpoint::from_url("http://x/y", None).is_err());
    }

    #[tokio::test]
    async fn a_missing_socket_says_how_to_start_brig() {
        let c = Client::new(Endpoint::Unix("/nonexistent/brig.sock".into()));
        let e = c.get::<serde_json::Value>("/healthz").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("is `brig serve` running?"), "{e}");
        assert!(e.hint.unwrap().contains("brig serve --socket"));
    }
}
