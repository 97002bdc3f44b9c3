//! A minimal client of the API over the unix socket: what tests and tools
//! need to call `brig serve` without a client crate of their own.

use std::path::Path;

use brig_core::error::ApiErrorBody;
use brig_core::{Error, ErrorKind, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::api::ATTACH_PROTOCOL;

async fn connect(socket: &Path) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot connect to brig serve at {}: {e}", socket.display()),
        )
        .hint("start it with `brig serve`, or pass the socket it listens on")
    })?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

fn build(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<hyper::Request<Full<Bytes>>> {
    let bytes = match body {
        Some(v) => serde_json::to_vec(v).map_err(|e| Error::internal(e.to_string()))?,
        None => Vec::new(),
    };
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "brig");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(Bytes::from(bytes)))
        .map_err(|e| Error::invalid(format!("bad request: {e}")))
}

/// Send one request; the status and the raw body.
pub async fn request_raw(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Vec<u8>)> {
    let mut send = connect(socket).await?;
    let resp = send
        .send_request(build(method, path, body)?)
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("reading response: {e}")))?
        .to_bytes();
    Ok((status, bytes.to_vec()))
}

/// Send one request; the status and the body as JSON (`Null` when empty).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let (status, bytes) = request_raw(socket, method, path, body).await?;
    if bytes.is_empty() {
        return Ok((status, serde_json::Value::Null));
    }
    let v = serde_json::from_slice(&bytes).map_err(|e| {
        Error::internal(format!(
            "response is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ))
    })?;
    Ok((status, v))
}

/// Call and decode: a 2xx body as `T`, an error body as the brig error.
pub async fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<T> {
    let (status, v) = request(socket, method, path, body).await?;
    if (200..300).contains(&status) {
        serde_json::from_value(v).map_err(|e| Error::internal(format!("unexpected response: {e}")))
    } else {
        Err(serde_json::from_value::<ApiErrorBody>(v)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                Error::new(
                    ErrorKind::from_http_status(status),
                    format!("HTTP {status}"),
                )
            }))
    }
}

/// Start an attached exec: after the `101`, the returned stream carries
/// `brig_core::wire` frames on channel 1 both ways.
pub async fn attach(
    socket: &Path,
    path: &str,
    body: &serde_json::Value,
) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
    let mut send = connect(socket).await?;
    let mut req = build("POST", path, Some(body))?;
    req.headers_mut().insert(
        "connection",
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    req.headers_mut().insert(
        "upgrade",
        hyper::header::HeaderValue::from_static(ATTACH_PROTOCOL),
    );
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("request failed: {e}")))?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(serde_json::from_slice::<ApiErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                Error::new(
                    ErrorKind::from_http_status(status),
                    format!("HTTP {status}"),
                )
            }));
    }
    let up = hyper::upgrade::on(resp)
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("upgrade failed: {e}")))?;
    Ok(TokioIo::new(up))
}
