//! The IdP's HTTP client: HTTP/1.1 over hyper, TLS by brig-tls's shared
//! client context (system CAs plus the configured extra CA file, TLS 1.2+,
//! hostname or IP verified), as brig-forge and brig-secrets do.
//!
//! `https://` only, except to a loopback host (a test IdP on 127.0.0.1).
//! Redirects are not followed (an IdP's endpoints are configured or
//! discovered as final URLs). One connection per request: discovery and the
//! JWKS are fetched rarely, token requests once per login.

use std::net::IpAddr;
use std::path::Path;
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

use crate::error::quoted;
use crate::IdentityError;

/// Discovery documents, JWKS and token answers are small JSON documents.
const MAX_RESPONSE: usize = 1 << 20;

/// A checked `https://host[:port]/path` (or loopback `http://`) URL.
#[derive(Clone, Debug)]
pub(crate) struct Url {
    pub raw: String,
    https: bool,
    /// Without IPv6 brackets: what is dialled and verified.
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

/// 127.0.0.0/8, ::1 and `localhost`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Parses and checks a URL; `what` names it in errors (`issuer`,
/// `jwks_uri`, `token_endpoint`).
pub(crate) fn check_url(what: &str, url: &str) -> Result<Url, IdentityError> {
    let bad = |why: &str| IdentityError::config(format!("{what} `{}`: {why}", quoted(url)));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    if auth.as_str().contains('@') {
        return Err(bad("credentials in a URL end up in logs; remove them"));
    }
    if url.contains('#') {
        return Err(bad("a fragment (#...) is not allowed here"));
    }
    let host = auth
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if is_loopback_host(&host) => false,
        Some("http") => {
            return Err(IdentityError::InsecureUrl {
                what: what.to_string(),
                url: quoted(url),
            })
        }
        Some(_) => return Err(bad("the scheme must be https://")),
        None => return Err(bad("no scheme; write it as https://host[/path]")),
    };
    Ok(Url {
        raw: url.to_string(),
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
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, url: &Url) -> Result<T, IdentityError> {
        // serde's message names the field and position, never a value.
        serde_json::from_slice(&self.body).map_err(|e| IdentityError::Protocol {
            url: url.raw.clone(),
            detail: format!("HTTP {} with a body brig cannot read: {e}", self.status),
        })
    }
}

pub(crate) struct HttpClient {
    tls: SslConnector,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<Self, IdentityError> {
        Ok(HttpClient {
            tls: brig_tls::client_connector(ca_file, "[identity.oidc] ca_file")
                .map_err(IdentityError::Config)?,
            timeout,
        })
    }

    pub async fn get(&self, url: &Url) -> Result<Response, IdentityError> {
        self.send(Method::GET, url, None).await
    }

    /// POSTs an `application/x-www-form-urlencoded` body. Its values may be
    /// secrets (device codes, refresh tokens, the client secret, the PKCE
    /// verifier): no error ever includes the body.
    pub async fn post_form(
        &self,
        url: &Url,
        pairs: &[(&str, &str)],
    ) -> Result<Response, IdentityError> {
        // Finished before the await: the serializer is not Send.
        let body = {
            let mut f = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                f.append_pair(k, v);
            }
            f.finish().into_bytes()
        };
        self.send(Method::POST, url, Some(body)).await
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        form: Option<Vec<u8>>,
    ) -> Result<Response, IdentityError> {
        let body = form.as_deref().unwrap_or_default().to_vec();
        let mut req = Request::builder()
            .method(method)
            .uri(url.path_and_query.as_str())
            .header("host", &url.authority)
            .header("accept", "application/json")
            .header("user-agent", concat!("brig/", env!("CARGO_PKG_VERSION")))
            .header("content-length", body.len());
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| IdentityError::config(format!("{}: {e}", url.raw)))?;
        match tokio::time::timeout(self.timeout, self.exchange(url, req)).await {
            Ok(r) => r,
            Err(_) => Err(IdentityError::Timeout {
                url: url.raw.clone(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        url: &Url,
        req: Request<Full<Bytes>>,
    ) -> Result<Response, IdentityError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| IdentityError::Unavailable {
                url: url.raw.clone(),
                detail: format!("cannot connect: {e}"),
            })?;
        let _ = tcp.set_nodelay(true);
        if !url.https {
            return over(url, tcp, req).await;
        }
        let tls_err = |detail: String| IdentityError::Tls {
            url: url.raw.clone(),
            detail,
        };
        // configure(): SNI for names, hostname or IP verification.
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
                    "certificate verification failed: {} (set [identity.oidc] ca_file for a private CA)",
                    verify.error_string()
                )
            } else {
                e.to_string()
            };
            return Err(tls_err(detail));
        }
        over(url, stream, req).await
    }
}

async fn over<S>(url: &Url, io: S, req: Request<Full<Bytes>>) -> Result<Response, IdentityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |detail: String| IdentityError::Unavailable {
        url: url.raw.clone(),
        detail,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed(format!("HTTP handshake failed: {e}")))?;
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| failed(format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| failed(format!("reading the answer failed: {e}")))?
        .to_bytes();
    conn.abort();
    if status >= 500 {
        return Err(failed(format!("HTTP {status}")));
    }
    Ok(Response {
        status,
        headers: parts.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_unless_loopback() {
        let u = check_url("issuer", "https://idp.example:8443/realms/brig").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("idp.example", 8443, "/realms/brig")
        );
        for ok in [
            "http://127.0.0.1:1/x",
            "http://127.9.9.9/",
            "http://[::1]:8080",
            "http://localhost:5556/dex",
        ] {
            assert!(!check_url("issuer", ok).unwrap().https, "{ok}");
        }
        let e = check_url("issuer", "http://idp.example/").unwrap_err();
        assert!(matches!(e, IdentityError::InsecureUrl { .. }), "{e}");
        assert!(e.to_string().contains("loopback"), "{e}");
        for bad in [
            "https://u:p@idp.example/",
            "ftp://idp.example/",
            "idp.example",
            "https://idp.example/#x",
        ] {
            assert!(check_url("issuer", bad).is_err(), "{bad}");
        }
    }
}
