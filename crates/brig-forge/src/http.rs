//! The forge API client: HTTP/1.1 over hyper, TLS by the system OpenSSL.
//!
//! Certificates are verified against the system CA bundle plus an optional
//! extra PEM file, with SNI and hostname (or IP) verification; TLS 1.2 at
//! least. `http://` is refused unless the configuration says
//! `allow_http = true`, and a TLS failure is an error, never a retry in
//! clear. One connection per request: brig opens a handful of pull requests
//! per session, so pooling would buy nothing and keep sockets open.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use openssl::ssl::SslConnector;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::ForgeError;

/// Forge answers are small JSON documents; a larger one is cut off.
const MAX_RESPONSE: usize = 4 << 20;

/// How brig talks to a forge's API (and, for the CA, its git endpoint).
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Extra CA certificates (PEM), trusted on top of the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` API and git URLs (a test or a loopback proxy only).
    pub allow_http: bool,
    /// Deadline of one API request, connect to last byte.
    pub timeout: Duration,
    /// Deadline of one git push or fetch.
    pub git_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            ca_file: None,
            allow_http: false,
            timeout: Duration::from_secs(30),
            git_timeout: crate::git::DEFAULT_GIT_TIMEOUT,
        }
    }
}

/// A parsed `https://host[:port][/prefix]` base URL.
#[derive(Clone, Debug)]
pub(crate) struct BaseUrl {
    pub https: bool,
    /// Without IPv6 brackets: what we connect to and verify.
    pub host: String,
    pub port: u16,
    /// `scheme://host[:port]`, for messages and derived git URLs.
    pub origin: String,
    /// The `Host` header.
    host_header: String,
    /// The path prefix, no trailing slash (`""`, `/api/v4`).
    pub prefix: String,
}

pub(crate) fn parse_base(what: &str, url: &str, allow_http: bool) -> Result<BaseUrl, ForgeError> {
    let bad = |why: String| ForgeError::Config(format!("{what} `{url}`: {why}"));
    let uri: Uri = url.parse().map_err(|e| bad(format!("not a URL ({e})")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if allow_http => false,
        Some("http") => {
            return Err(bad(
                "plain http:// would send the token in clear; use https://, or set allow_http = true for a loopback test server".into(),
            ))
        }
        Some(s) => return Err(bad(format!("scheme `{s}` is not supported; use https://"))),
        None => return Err(bad("no scheme; write it as https://host[/path]".into())),
    };
    let auth = uri.authority().ok_or_else(|| bad("no host".into()))?;
    if auth.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL end up in logs; remove them and use token_env or token_file"
                .into(),
        ));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed here".into()));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let scheme = if https { "https" } else { "http" };
    let origin = format!("{scheme}://{}", auth.as_str());
    Ok(BaseUrl {
        https,
        host,
        port,
        origin,
        host_header: auth.as_str().to_string(),
        prefix: uri.path().trim_end_matches('/').to_string(),
    })
}

pub(crate) struct ApiResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        forge: &'static str,
    ) -> Result<T, ForgeError> {
        serde_json::from_slice(&self.body).map_err(|e| ForgeError::Protocol {
            forge,
            detail: format!(
                "HTTP {} with a body brig cannot read ({e}): {}",
                self.status,
                self.snippet()
            ),
        })
    }

    /// The forge's own words: the JSON `message` (GitLab's may be a list or
    /// an object of field errors), else the start of the body.
    pub fn message(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => match v.get("message").or_else(|| v.get("error")) {
                Some(m) => flatten(m),
                None => self.snippet(),
            },
            Err(_) => self.snippet(),
        }
    }

    fn snippet(&self) -> String {
        let s: String = String::from_utf8_lossy(&self.body)
            .chars()
            .take(300)
            .collect();
        s.replace(['\n', '\r'], " ")
    }

    /// Seconds to wait from `Retry-After`, else from a reset epoch header.
    pub fn retry_after(&self, reset_header: &str) -> Option<Duration> {
        if let Some(s) = self
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Some(Duration::from_secs(s));
        }
        let reset = self.header(reset_header)?.parse::<u64>().ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(Duration::from_secs(reset.saturating_sub(now)))
    }

    /// The error for an answer no forge-specific rule explained.
    pub fn unexpected(&self, forge: &'static str, what: &str) -> ForgeError {
        let message = self.message();
        match self.status {
            300..=399 => ForgeError::Protocol {
                forge,
                detail: format!(
                    "{what}: HTTP {} redirect to {} (brig does not follow redirects with a token; point `api` at the final URL)",
                    self.status,
                    self.header("location").unwrap_or("nowhere")
                ),
            },
            500..=599 => ForgeError::Unavailable {
                forge,
                detail: format!("{what}: HTTP {}: {message}", self.status),
            },
            s @ 400..=499 => ForgeError::Rejected {
                forge,
                status: s,
                message: format!("{what}: {message}"),
            },
            s => ForgeError::Protocol {
                forge,
                detail: format!("{what}: unexpected HTTP {s}: {message}"),
            },
        }
    }
}

/// A JSON message as one line of text.
fn flatten(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.iter().map(flatten).collect::<Vec<_>>().join("; "),
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k} {}", flatten(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

pub(crate) struct ApiClient {
    forge: &'static str,
    pub base: BaseUrl,
    tls: Option<SslConnector>,
    timeout: Duration,
}

/// The TLS client context (brig-tls: system CAs, the extra CA file, TLS >= 1.2).
fn connector(ca_file: Option<&Path>) -> Result<SslConnector, ForgeError> {
    brig_tls::client_connector(ca_file, "ca_file").map_err(ForgeError::Config)
}

impl ApiClient {
    pub fn new(forge: &'static str, api: &str, opts: &HttpOptions) -> Result<Self, ForgeError> {
        let base = parse_base("api", api, opts.allow_http)?;
        let tls = if base.https {
            Some(connector(opts.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(ApiClient {
            forge,
            base,
            tls,
            timeout: opts.timeout,
        })
    }

    /// Sends one request to `prefix + path`. Header values may be secrets:
    /// they never appear in an error.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        json: Option<&serde_json::Value>,
    ) -> Result<ApiResponse, ForgeError> {
        let body = match json {
            Some(v) => Bytes::from(
                serde_json::to_vec(v).map_err(|e| ForgeError::Io(format!("encoding JSON: {e}")))?,
            ),
            None => Bytes::new(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base.prefix))
            .header("host", &self.base.host_header)
            .header("user-agent", concat!("brig/", env!("CARGO_PKG_VERSION")))
            .header("content-length", body.len());
        if json.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // The error names the header, never its value (it may be a token).
        let req = req.body(Full::new(body)).map_err(|_| {
            ForgeError::Credential(
                "a request header is not valid HTTP (a token with odd characters?)".into(),
            )
        })?;
        let what = format!("{method} {}{}{path}", self.base.origin, self.base.prefix);
        match tokio::time::timeout(self.timeout, self.exchange(req)).await {
            Ok(r) => r,
            Err(_) => Err(ForgeError::Timeout {
                what: format!("{} request {what}", self.forge),
                after: self.timeout,
            }),
        }
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<ApiResponse, ForgeError> {
        let (host, port) = (self.base.host.as_str(), self.base.port);
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| ForgeError::Unavailable {
                forge: self.forge,
                detail: format!("cannot connect to {}: {e}", self.base.origin),
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return self.over(tcp, req).await;
        };
        let tls_err = |detail: String| ForgeError::Tls {
            host: self.base.origin.clone(),
            detail,
        };
        // configure(): SNI (for names) and hostname or IP verification.
        let ssl = tls
            .configure()
            .and_then(|c| c.into_ssl(host))
            .map_err(|e| tls_err(e.to_string()))?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| tls_err(e.to_string()))?;
        if let Err(e) = Pin::new(&mut stream).connect().await {
            let verify = stream.ssl().verify_result();
            let detail = if verify.as_raw() != 0 {
                format!("certificate verification failed: {}", verify.error_string())
            } else {
                e.to_string()
            };
            return Err(tls_err(detail));
        }
        self.over(stream, req).await
    }

    async fn over<S>(&self, io: S, req: Request<Full<Bytes>>) -> Result<ApiResponse, ForgeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |detail: String| ForgeError::Unavailable {
            forge: self.forge,
            detail,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                failed(format!(
                    "HTTP handshake with {} failed: {e}",
                    self.base.origin
                ))
            })?;
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| failed(format!("request to {} failed: {e}", self.base.origin)))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| {
                failed(format!(
                    "reading the answer of {} failed: {e}",
                    self.base.origin
                ))
            })?
            .to_bytes();
        conn.abort();
        Ok(ApiResponse {
            status,
            headers: parts.headers,
            body,
        })
    }
}

/// A git URL from configuration: https (or http when allowed), no userinfo.
pub(crate) fn check_git_url(url: &str, allow_http: bool) -> Result<String, ForgeError> {
    let base = parse_base("git_url", url, allow_http)?;
    if base.prefix.is_empty() {
        return Err(ForgeError::Config(format!(
            "git_url `{url}` has no repository path"
        )));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let b = parse_base("api", "https://api.github.com", false).unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.prefix.as_str()),
            ("api.github.com", 443, "")
        );
        let b = parse_base("api", "https://gitlab.example:8443/api/v4/", false).unwrap();
        assert_eq!(
            (b.port, b.prefix.as_str(), b.origin.as_str()),
            (8443, "/api/v4", "https://gitlab.example:8443")
        );
        let b = parse_base("api", "https://[::1]:9/x", false).unwrap();
        assert_eq!(b.host, "::1");
        let e = parse_base("api", "http://127.0.0.1:1", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_http"), "{e}");
        assert!(!parse_base("api", "http://127.0.0.1:1", true).unwrap().https);
        let e = parse_base("api", "https://u:p@h/", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("credentials in the URL"), "{e}");
        assert!(parse_base("api", "ftp://h/", false).is_err());
        assert!(parse_base("api", "h/x", false).is_err());
        assert!(check_git_url("https://h", false).is_err());
    }

    #[test]
    fn messages_flatten() {
        let r = ApiResponse {
            status: 409,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"message":["Another open merge request already exists for this source branch: !5"]}"#),
        };
        assert_eq!(
            r.message(),
            "Another open merge request already exists for this source branch: !5"
        );
        let r = ApiResponse {
            status: 422,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"message":{"source_branch":["does not exist"]}}"#),
        };
        assert_eq!(r.message(), "source_branch does not exist");
    }
}
