//! TLS interception for the hosts secrets are bound to (issue 6): the
//! sandbox's TLS ends at brig with a leaf of brig's CA for that host, and
//! brig opens its own verified TLS connection upstream. Both sides speak
//! HTTP/1.1, request by request, through the same loop as plain HTTP
//! (conn.rs), where placeholders are injected and exfiltration checked.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openssl::ssl::{Ssl, SslConnector};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::SessionEgress;

/// A byte stream either way (a TCP or TLS connection, boxed).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream whose first bytes were already read (the peeked ClientHello).
pub struct Prefixed<S> {
    pre: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(pre: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed { pre, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.pre.len() {
            let n = (self.pre.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.pre[at..at + n]);
            self.at += n;
            if self.at == self.pre.len() {
                self.pre = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The upstream TLS client: the system's CA bundle, plus
/// `ProxyConfig::upstream_ca_file`; TLS >= 1.2; ALPN http/1.1 only.
pub(crate) fn connector(extra_ca: Option<&Path>) -> Result<SslConnector, String> {
    brig_tls::client_connector(extra_ca, "upstream_ca_file").map_err(|e| format!("upstream {e}"))
}

/// TLS to `host` over `tcp`, verified (chain and name). Fails closed: no
/// fallback to an unverified or plain connection.
pub(crate) async fn connect_upstream(
    s: &SessionEgress,
    host: &str,
    tcp: TcpStream,
) -> Result<SslStream<TcpStream>, String> {
    let conn = s.upstream_tls()?;
    let ssl = conn
        .configure()
        .and_then(|c| c.into_ssl(host))
        .map_err(|e| format!("TLS to {host}: {e}"))?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| format!("TLS to {host}: {e}"))?;
    match tokio::time::timeout(s.config.connect_timeout, Pin::new(&mut stream).connect()).await {
        Err(_) => Err(format!("TLS to {host}: handshake timed out")),
        Ok(Err(e)) => {
            let verify = stream.ssl().verify_result();
            Err(if verify.as_raw() != 0 {
                format!(
                    "TLS to {host}: the upstream certificate is not trusted ({}); brig does not fall back to an unverified connection",
                    verify.error_string()
                )
            } else {
                format!("TLS to {host}: {e}")
            })
        }
        Ok(Ok(())) => Ok(stream),
    }
}

/// Terminate the sandbox's TLS for `host` with a leaf of brig's CA.
pub(crate) async fn accept_client<S>(
    s: &SessionEgress,
    host: &str,
    client: S,
    timeout: Duration,
) -> Result<SslStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(ca) = &s.ca else {
        return Err("no CA configured".into());
    };
    let acceptor = ca.acceptor_for(host).map_err(|e| e.to_string())?;
    let ssl = Ssl::new(acceptor.context()).map_err(|e| format!("TLS toward the sandbox: {e}"))?;
    let mut stream =
        SslStream::new(ssl, client).map_err(|e| format!("TLS toward the sandbox: {e}"))?;
    match tokio::time::timeout(timeout, Pin::new(&mut stream).accept()).await {
        Err(_) => Err("TLS handshake with the sandbox timed out".into()),
        Ok(Err(e)) => Err(format!(
            "TLS handshake with the sandbox failed ({e}); does the sandbox trust brig's CA?"
        )),
        Ok(Ok(())) => Ok(stream),
    }
}
