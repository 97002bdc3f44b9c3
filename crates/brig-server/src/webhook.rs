//! The approvals webhook: one JSON POST per approval request and decision,
//! signed with HMAC-SHA256 (`X-Brig-Signature: sha256=<hex>`, as GitHub's
//! webhooks are), sent from a queue so no approval waits on the network,
//! retried three times. Plain `http://` (a chat bot's relay next to brig),
//! as brig's sinks: `https://` is refused at load rather than sent in clear.

use std::time::Duration;

use brig_core::{Error, Result};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::sync::mpsc;

/// Notifications queued; past this they are dropped (logged).
const QUEUE: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Webhook {
    tx: mpsc::Sender<serde_json::Value>,
}

struct Target {
    addr: String,
    host: String,
    path: String,
    key: Option<Vec<u8>>,
}

impl Webhook {
    pub fn new(cfg: &crate::approvals::WebhookConfig) -> Result<Webhook> {
        let uri: hyper::Uri = cfg
            .url
            .parse()
            .map_err(|e| Error::invalid(format!("[approvals.webhook] url {:?}: {e}", cfg.url)))?;
        if uri.scheme_str() != Some("http") {
            return Err(Error::invalid(format!(
                "[approvals.webhook] url {:?}: only http:// is supported",
                cfg.url
            ))
            .hint("point it at a relay next to brig (e.g. http://127.0.0.1:PORT/hook) that forwards over TLS"));
        }
        let auth = uri.authority().ok_or_else(|| {
            Error::invalid(format!("[approvals.webhook] url {:?} has no host", cfg.url))
        })?;
        let key = match &cfg.secret_file {
            Some(p) => Some(read_private(p)?.trim().as_bytes().to_vec()),
            None => None,
        };
        let t = Target {
            addr: format!("{}:{}", auth.host(), auth.port_u16().unwrap_or(80)),
            host: auth.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or("/".into()),
            key,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(t, rx));
        Ok(Webhook { tx })
    }

    /// Queue a notification (never blocks).
    pub fn send(&self, body: serde_json::Value) {
        if self.tx.try_send(body).is_err() {
            tracing::warn!("approvals webhook: queue full, a notification was dropped");
        }
    }
}

async fn post(t: &Target, body: &[u8]) -> std::result::Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect(&t.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", t.addr))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::post(&t.path)
        .header("host", &t.host)
        .header("content-type", "application/json")
        .header("user-agent", concat!("brig/", env!("CARGO_PKG_VERSION")));
    if let Some(k) = &t.key {
        let mut mac = Hmac::<Sha256>::new_from_slice(k).map_err(|e| e.to_string())?;
        mac.update(body);
        req = req.header(
            "x-brig-signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        );
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn run(t: Target, mut rx: mpsc::Receiver<serde_json::Value>) {
    while let Some(v) = rx.recv().await {
        let body = v.to_string();
        for attempt in 0..3u32 {
            match tokio::time::timeout(TIMEOUT, post(&t, body.as_bytes())).await {
                Ok(Ok(s)) if (200..300).contains(&s) => break,
                Ok(Ok(s)) => tracing::warn!(
                    status = s,
                    attempt,
                    "approvals webhook refused a notification"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "approvals webhook failed"),
                Err(_) => tracing::warn!(attempt, "approvals webhook timed out"),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
    }
}

/// A key file: readable by brig's user only.
fn read_private(p: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(p).map_err(|e| {
        Error::invalid(format!(
            "[approvals.webhook] secret_file {}: {e}",
            p.display()
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::invalid(format!(
            "[approvals.webhook] secret_file {} is readable by other users",
            p.display()
        ))
        .hint(format!("chmod 600 {}", p.display())));
    }
    std::fs::read_to_string(p).map_err(|e| {
        Error::invalid(format!(
            "[approvals.webhook] secret_file {}: {e}",
            p.display()
        ))
    })
}
