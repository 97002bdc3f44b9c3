//! A minimal HTTP/1.1 client over hyper: one kept-alive connection per sink,
//! re-established after any error. Plain HTTP only: this build has no TLS, so
//! `https://` URLs are refused at config time rather than sent in clear.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

use crate::config::SinkConfig;
use brig_core::Result;

/// Responses larger than this are cut: sinks answer with small JSON.
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Clone, Debug)]
pub(crate) struct HttpTarget {
    /// `host:port` to connect to.
    pub addr: String,
    /// The `Host` header value.
    pub host: String,
    /// Path and query to send requests to.
    pub path: String,
}

/// Parses a sink URL. `endpoint_path` is appended unless the URL already ends with it.
pub(crate) fn parse_url(
    cfg: &SinkConfig,
    key: &str,
    url: &str,
    endpoint_path: &str,
) -> Result<HttpTarget> {
    let uri: Uri = url.parse().map_err(|e| {
        cfg.err(key, format!("`{url}` is not a valid URL: {e}"))
            .hint("write it as http://host:port[/path]")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(cfg
                .err(key, format!("`{url}` uses https, but this build of brig has no TLS client for sinks"))
                .hint("send to a local TLS-terminating forwarder (an OpenTelemetry collector, Fluent Bit, stunnel) over http://127.0.0.1:PORT; brig never downgrades https to plain HTTP"))
        }
        Some(other) => return Err(cfg.err(key, format!("`{url}`: scheme `{other}` is not supported; use http://"))),
        None => return Err(cfg.err(key, format!("`{url}` has no scheme; write it as http://host:port"))),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| cfg.err(key, format!("`{url}` has no host")))?;
    if authority.as_str().contains('@') {
        // Credentials in a URL end up in logs and status output.
        return Err(cfg
            .err(key, "the URL contains credentials (user:password@)")
            .hint("remove them and use the sink's token/key file setting"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(cfg.err(key, format!("`{url}` has no host")));
    }
    let port = authority.port_u16().unwrap_or(80);
    let mut path = uri.path().trim_end_matches('/').to_string();
    if !path.ends_with(endpoint_path) {
        path.push_str(endpoint_path);
    }
    if path.is_empty() {
        path.push('/');
    }
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    Ok(HttpTarget {
        addr: format!("{host}:{port}"),
        host: if authority.port().is_some() {
            format!("{host}:{port}")
        } else {
            host.to_string()
        },
        path,
    })
}

pub(crate) struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as text for an error message, cut short.
    pub fn snippet(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s: String = s.chars().take(300).collect();
        s.replace(['\n', '\r'], " ")
    }
}

pub(crate) struct HttpClient {
    pub target: HttpTarget,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    pub fn new(target: HttpTarget, timeout: Duration) -> Self {
        HttpClient {
            target,
            timeout,
            conn: None,
        }
    }

    /// Sends one request; `Err` is a transport failure (connect, I/O, timeout).
    /// Header values may be secrets: they never appear in errors.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> std::result::Result<HttpResponse, String> {
        // A kept-alive connection the server closed while idle fails on
        // first use: retry once on a fresh one before calling it a failure.
        let reused = self.conn.is_some();
        match self
            .send_once(method.clone(), path, headers, body.clone())
            .await
        {
            Err(_) if reused => self.send_once(method, path, headers, body).await,
            r => r,
        }
    }

    async fn send_once(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> std::result::Result<HttpResponse, String> {
        let timeout = self.timeout;
        let fut = self.send_inner(method, path, headers, body);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(format!(
                    "no response from {} within {timeout:?}",
                    self.target.addr
                ))
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> std::result::Result<HttpResponse, String> {
        let cached = match self.conn.take() {
            Some(mut s) if !s.is_closed() => s.ready().await.is_ok().then_some(s),
            _ => None,
        };
        let mut sender = match cached {
            Some(s) => s,
            None => self.connect().await?,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.target.host)
            .header("content-length", body.len())
            .header(
                "user-agent",
                concat!("brig-sinks/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).map_err(|e| {
            format!(
                "cannot build the request (a header is not valid HTTP): {}",
                e
            )
        })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request to {} failed: {e}", self.target.addr))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response from {} failed: {e}", self.target.addr))?
            .to_bytes();
        self.conn = Some(sender);
        Ok(HttpResponse {
            status,
            retry_after,
            body,
        })
    }

    async fn connect(&self) -> std::result::Result<SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(&self.target.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.target.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {e}", self.target.addr))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}
