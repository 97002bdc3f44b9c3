//! The upstream HTTP client: HTTP/1.1 over hyper, TLS by the system OpenSSL
//! (the approach of brig-forge's client).
//!
//! Certificates are verified against the system CA bundle plus an optional
//! extra PEM file, with SNI and hostname (or IP) checks, TLS 1.2 at least.
//! `http://` is refused unless the configuration says `allow_http = true`,
//! and even then only to a loopback address (a local test server): a secret
//! source's traffic carries credentials. One connection per request: a
//! source is asked once per TTL, pooling would only keep sockets open.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use openssl::ssl::SslConnector;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::SecretError;

/// Secret-store answers are small JSON/XML documents.
const MAX_RESPONSE: usize = 1 << 20;
/// How much of an upstream's own error message an error quotes.
const MAX_MESSAGE: usize = 300;

/// Transport options every remote source and minter takes.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Extra CA certificates (PEM), trusted on top of the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` URLs to loopback addresses (test servers only).
    #[serde(default)]
    pub allow_http: bool,
    /// Deadline of one request, connect to last byte.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            ca_file: None,
            allow_http: false,
            timeout: default_timeout(),
        }
    }
}

/// A checked `scheme://host[:port][/prefix]` URL.
#[derive(Clone, Debug)]
pub(crate) struct Url {
    https: bool,
    /// Without IPv6 brackets: what we connect to and verify.
    host: String,
    port: u16,
    /// The `Host` header (and SigV4's `host`).
    pub authority: String,
    /// Path and query, `/` at least.
    pub path_and_query: String,
}

impl Url {
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }

    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// Checks a configured base URL (`what` names the config key).
pub(crate) fn check_base(what: &str, url: &str, allow_http: bool) -> Result<String, SecretError> {
    let u = parse_url(what, url, allow_http)?;
    if u.path_and_query.contains('?') {
        return Err(SecretError::config(format!(
            "{what} `{url}`: a query string is not allowed here"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

pub(crate) fn parse_url(what: &str, url: &str, allow_http: bool) -> Result<Url, SecretError> {
    let bad = |why: String| SecretError::config(format!("{what} `{url}`: {why}"));
    let uri: Uri = url.parse().map_err(|e| bad(format!("not a URL ({e})")))?;
    let auth = uri.authority().ok_or_else(|| bad("no host".into()))?;
    if auth.as_str().contains('@') {
        return Err(bad(
            "credentials in the URL end up in logs; remove them and use the credential settings"
                .into(),
        ));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if allow_http => {
            let loopback = host == "localhost"
                || host
                    .parse::<IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if !loopback {
                return Err(bad(
                    "allow_http only permits loopback addresses (a local test server); use https://"
                        .into(),
                ));
            }
            false
        }
        Some("http") => {
            return Err(bad(
                "plain http:// would send credentials in clear; use https:// (allow_http = true is for a loopback test server only)".into(),
            ))
        }
        Some(s) => return Err(bad(format!("scheme `{s}` is not supported; use https://"))),
        None => return Err(bad("no scheme; write it as https://host[/path]".into())),
    };
    Ok(Url {
        https,
        port: auth.port_u16().unwrap_or(if https { 443 } else { 80 }),
        host,
        authority: auth.as_str().to_string(),
        path_and_query: uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string()),
    })
}

pub(crate) struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, upstream: &str) -> Result<T, SecretError> {
        // serde's message names the field and position, never the value.
        serde_json::from_slice(&self.body).map_err(|e| SecretError::Protocol {
            upstream: upstream.to_string(),
            detail: format!("HTTP {} with a body brig cannot read: {e}", self.status),
        })
    }

    /// The upstream's own error message: Vault's `errors`, AWS's `message`,
    /// Google's and Azure's `error.message`, OAuth2's `error` +
    /// `error_description`; else the start of a non-JSON body. Cut short and
    /// scrubbed of `sent` (the credentials of the request), in case an
    /// upstream echoes them.
    pub fn message(&self, sent: &[&str]) -> String {
        let text = match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => json_message(&v),
            Err(_) => None,
        }
        .unwrap_or_else(|| {
            let body = String::from_utf8_lossy(&self.body);
            if body.trim().is_empty() {
                "(no message)".to_string()
            } else if body.trim_start().starts_with('{') {
                "(a JSON body without an error message)".to_string()
            } else {
                body.to_string()
            }
        });
        scrub(&text, sent)
    }
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    if let Some(errs) = v.get("errors").and_then(|e| e.as_array()) {
        let all: Vec<String> = errs.iter().filter_map(s).collect();
        if !all.is_empty() {
            return Some(all.join("; "));
        }
    }
    if let Some(e) = v.get("error") {
        if let Some(m) = e.get("message").and_then(s) {
            let code = e.get("status").or_else(|| e.get("code")).and_then(|c| {
                c.as_str()
                    .map(str::to_string)
                    .or_else(|| Some(c.to_string()))
            });
            return Some(match code {
                Some(c) => format!("{c}: {m}"),
                None => m,
            });
        }
        if let Some(code) = s(e) {
            return Some(match v.get("error_description").and_then(s) {
                Some(d) => format!("{code}: {d}"),
                None => code,
            });
        }
    }
    let msg = v.get("message").or_else(|| v.get("Message")).and_then(s);
    let ty = v.get("__type").and_then(s).map(|t| {
        // `com.amazonaws...#ParameterNotFound` → `ParameterNotFound`
        t.rsplit('#').next().unwrap_or(&t).to_string()
    });
    match (ty, msg) {
        (Some(t), Some(m)) => Some(format!("{t}: {m}")),
        (Some(t), None) => Some(t),
        (None, m) => m,
    }
}

/// One line, at most `MAX_MESSAGE` characters, with every `secret` replaced.
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut t = text.replace(['\n', '\r'], " ");
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        t = t.replace(s, "[REDACTED]");
    }
    if t.chars().count() > MAX_MESSAGE {
        t = t.chars().take(MAX_MESSAGE).collect::<String>() + "…";
    }
    t
}

/// The HTTPS client of one source or minter.
pub(crate) struct Client {
    upstream: String,
    allow_http: bool,
    tls: SslConnector,
    timeout: Duration,
}

/// The TLS client context (brig-tls: system CAs, the extra CA file, TLS >= 1.2).
fn connector(ca_file: Option<&Path>) -> Result<SslConnector, SecretError> {
    brig_tls::client_connector(ca_file, "ca_file").map_err(SecretError::config)
}

impl Client {
    pub fn new(upstream: String, cfg: &HttpConfig) -> Result<Self, SecretError> {
        Ok(Client {
            upstream,
            allow_http: cfg.allow_http,
            tls: connector(cfg.ca_file.as_deref())?,
            timeout: cfg.timeout,
        })
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn url(&self, url: &str) -> Result<Url, SecretError> {
        parse_url("url", url, self.allow_http)
    }

    /// Sends one request. Header values and the body may be secrets: they
    /// never appear in an error.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, SecretError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url.path_and_query.as_str())
            .header("host", &url.authority)
            .header("user-agent", concat!("brig/", env!("CARGO_PKG_VERSION")))
            .header("content-length", body.len());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // The error names no header value (it may be a token).
        let req = req.body(Full::new(Bytes::from(body))).map_err(|_| {
            SecretError::config(format!(
                "{}: a request header is not valid HTTP (a credential with a newline or odd characters?)",
                self.upstream
            ))
        })?;
        let what = format!("{method} {}{}", url.origin(), url.path());
        match tokio::time::timeout(self.timeout, self.exchange(url, req)).await {
            Ok(r) => r,
            Err(_) => Err(SecretError::Timeout {
                upstream: self.upstream.clone(),
                what,
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        url: &Url,
        req: Request<Full<Bytes>>,
    ) -> Result<Response, SecretError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| SecretError::Unavailable {
                upstream: self.upstream.clone(),
                detail: format!("cannot connect to {}: {e}", url.origin()),
            })?;
        let _ = tcp.set_nodelay(true);
        if !url.https {
            return self.over(url, tcp, req).await;
        }
        let tls_err = |detail: String| SecretError::Tls {
            upstream: self.upstream.clone(),
            host: url.origin(),
            detail,
        };
        // configure(): SNI (for names) and hostname or IP verification.
        let ssl = self
            .tls
            .configure()
            .and_then(|c| c.into_ssl(&url.host))
            .map_err(|e| tls_err(e.to_string()))?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| tls_err(e.to_string()))?;
        if let Err(e) = Pin::new(&mut stream).connect().await {
            let verify = stream.ssl().verify_result();
            let detail = if verify.as_raw() != 0 {
                format!(
                    "certificate verification failed: {} (set ca_file for a private CA)",
                    verify.error_string()
                )
            } else {
                e.to_string()
            };
            return Err(tls_err(detail));
        }
        self.over(url, stream, req).await
    }

    async fn over<S>(
        &self,
        url: &Url,
        io: S,
        req: Request<Full<Bytes>>,
    ) -> Result<Response, SecretError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |detail: String| SecretError::Unavailable {
            upstream: self.upstream.clone(),
            detail,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| failed(format!("HTTP handshake with {} failed: {e}", url.origin())))?;
        let conn = tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| failed(format!("request to {} failed: {e}", url.origin())))?;
        let status = resp.status().as_u16();
        let body = resp.into_body();
        let body = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| {
                failed(format!(
                    "reading the answer of {} failed: {e}",
                    url.origin()
                ))
            })?
            .to_bytes();
        conn.abort();
        Ok(Response { status, body })
    }
}

/// The error for an answer a caller's own rules did not explain: 404 is
/// "not found" when a key was asked for, 401 is brig's credentials, 5xx the
/// upstream being down, any other status a refusal.
pub(crate) fn status_error(
    upstream: &str,
    what: &str,
    key: Option<&str>,
    r: &Response,
    sent: &[&str],
) -> SecretError {
    let message = r.message(sent);
    let upstream = upstream.to_string();
    match (r.status, key) {
        (404, Some(key)) => SecretError::NotFound {
            upstream,
            key: key.to_string(),
            message: format!("HTTP 404: {message}"),
        },
        (401, _) => SecretError::Auth {
            upstream,
            message: format!("{what}: HTTP 401: {message}"),
        },
        (s @ 300..=399, _) => SecretError::Rejected {
            upstream,
            what: what.to_string(),
            status: s,
            message: "brig does not follow redirects with credentials; configure the final URL"
                .into(),
        },
        (s @ 500..=599, _) => SecretError::Unavailable {
            upstream,
            detail: format!("{what}: HTTP {s}: {message}"),
        },
        (s, _) => SecretError::Rejected {
            upstream,
            what: what.to_string(),
            status: s,
            message,
        },
    }
}

/// `application/x-www-form-urlencoded` from pairs.
pub(crate) fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("address", "https://vault.example:8200/x", false).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path()),
            ("vault.example", 8200, "/x")
        );
        let e = parse_url("address", "http://127.0.0.1:1", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_http"), "{e}");
        assert!(!parse_url("a", "http://127.0.0.1:1", true).unwrap().https);
        assert!(!parse_url("a", "http://[::1]:1", true).unwrap().https);
        let e = parse_url("a", "http://vault.example", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
        assert!(parse_url("a", "https://u:p@h/", false).is_err());
        assert!(parse_url("a", "ftp://h/", false).is_err());
        assert!(check_base("a", "https://h/?x=1", false).is_err());
        assert_eq!(
            check_base("a", "https://h/v1/", false).unwrap(),
            "https://h/v1"
        );
    }

    #[test]
    fn messages() {
        let r = |b: &str| Response {
            status: 400,
            body: Bytes::from(b.to_string()),
        };
        assert_eq!(
            r(r#"{"errors":["permission denied"]}"#).message(&[]),
            "permission denied"
        );
        assert_eq!(
            r(r#"{"__type":"com.amazonaws#ParameterNotFound","message":"nope"}"#).message(&[]),
            "ParameterNotFound: nope"
        );
        assert_eq!(
            r(r#"{"error":{"code":404,"message":"Secret not found","status":"NOT_FOUND"}}"#)
                .message(&[]),
            "NOT_FOUND: Secret not found"
        );
        assert_eq!(
            r(r#"{"error":"invalid_client","error_description":"bad secret s3cr3t-value"}"#)
                .message(&["s3cr3t-value"]),
            "invalid_client: bad secret [REDACTED]"
        );
        assert_eq!(
            r(r#"{"value":"x"}"#).message(&[]),
            "(a JSON body without an error message)"
        );
        assert!(r(&"x".repeat(1000)).message(&[]).chars().count() <= MAX_MESSAGE + 1);
    }
}
