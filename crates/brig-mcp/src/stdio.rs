//! MCP over stdio: one JSON-RPC message per line on stdin, one per line on
//! stdout (nothing else is ever written there). Requests are served
//! concurrently, so a long `exec` does not hold up a `ping`.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::api::BrigApi;
use crate::jsonrpc::{self, RpcError};
use crate::server::McpSession;

/// The longest line accepted (a file_write's content travels in one).
pub const MAX_LINE: usize = 8 << 20;

/// Serve until stdin ends, then wait for the calls in flight.
pub async fn serve<A, R, W>(
    session: Arc<McpSession<A>>,
    reader: R,
    mut writer: W,
) -> std::io::Result<()>
where
    A: BrigApi,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let out = tokio::spawn(async move {
        while let Some(mut line) = rx.recv().await {
            line.push(b'\n');
            writer.write_all(&line).await?;
            writer.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut reader = BufReader::new(reader);
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = read_line(&mut reader, &mut buf).await?;
        if n == 0 {
            break;
        }
        let line = std::mem::take(&mut buf);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            let e = RpcError::invalid_request(format!("message larger than {MAX_LINE} bytes"));
            let _ = tx
                .send(
                    jsonrpc::error(&serde_json::Value::Null, &e)
                        .to_string()
                        .into_bytes(),
                )
                .await;
            continue;
        }
        let (s, tx) = (session.clone(), tx.clone());
        let msg = trimmed.to_vec();
        tasks.spawn(async move {
            if let Some(r) = s.handle_bytes(&msg).await {
                let _ = tx.send(r.to_string().into_bytes()).await;
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    out.await.map_err(std::io::Error::other)?
}

/// One line (without reading past MAX_LINE + 1 bytes of it into memory:
/// the rest of an oversized line is skipped).
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() <= MAX_LINE {
            let room = (MAX_LINE + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..take.min(room)]);
        }
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Method;
    use serde_json::{json, Value};

    struct Nothing;
    impl BrigApi for Nothing {
        async fn call(&self, _: Method, path: &str, _: Option<Value>) -> brig_core::Result<Value> {
            Err(brig_core::Error::not_found(path.to_string()))
        }
    }

    #[tokio::test]
    async fn lines_in_lines_out() {
        let input = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n\n{oops\n{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n".to_vec();
        let (w, mut r) = tokio::io::duplex(1 << 16);
        serve(Arc::new(McpSession::new(Arc::new(Nothing))), &input[..], w)
            .await
            .unwrap();
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut out)
            .await
            .unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines
            .iter()
            .any(|l| l["id"] == 1 && l["result"] == json!({})));
        assert!(lines
            .iter()
            .any(|l| l["error"]["code"] == jsonrpc::PARSE_ERROR));
    }
}
