//! The upstream HTTP client: HTTP/1.1 over TCP or TLS (brig-tls's shared
//! verifying context), with a small keep-alive pool per upstream. A
//! connection is lent to one exchange at a time; it goes back to the pool
//! only when its response body was read to the end, and its task is
//! aborted (the socket closed) whenever it is dropped otherwise: a client
//! that goes away, a closed session, a timeout. That is what cancels an
//! upstream request at once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use openssl::ssl::SslConnector;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::config::CompiledUpstream;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 64;
/// An idle connection older than this is not reused (servers close theirs
/// after 5 to 120 s; reusing one that is being closed fails the request).
const IDLE_FOR: Duration = Duration::from_secs(30);

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    task: AbortHandle,
    since: Instant,
}

pub(crate) struct Client {
    pub tls: Option<SslConnector>,
    pool: Arc<Mutex<Vec<Idle>>>,
}

/// Why a connection could not be had.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout,
    Failed(String),
}

/// A connection lent to one exchange.
pub(crate) struct Conn {
    /// Always `Some` until [`Conn::release`] takes it.
    sender: Option<SendRequest<Full<Bytes>>>,
    task: AbortHandle,
    pool: Weak<Mutex<Vec<Idle>>>,
    /// Its entry in the session's in-flight registry.
    reg: Option<(Arc<Registry>, u64)>,
    pub reused: bool,
}

impl Conn {
    pub fn sender(&mut self) -> &mut SendRequest<Full<Bytes>> {
        self.sender
            .as_mut()
            .expect("a lent connection has its sender")
    }

    /// Back to the pool: only after its response was read to the end.
    pub fn release(mut self) {
        if let Some((r, id)) = self.reg.take() {
            r.remove(id);
        }
        let Some(sender) = self.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return; // Drop aborts the task.
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < MAX_IDLE {
            p.push(Idle {
                sender,
                task: self.task.clone(),
                since: Instant::now(),
            });
            // The pool owns the task now: Drop must not abort it.
            self.pool = Weak::new();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some((r, id)) = self.reg.take() {
            r.remove(id);
        }
        // Released into the pool: the pool owns the task.
        if self.sender.is_none() && self.pool.upgrade().is_none() {
            return;
        }
        self.task.abort();
    }
}

/// The connection tasks of a session's exchanges in flight, so closing the
/// session aborts them.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    tasks: Mutex<HashMap<u64, AbortHandle>>,
}

impl Registry {
    pub fn add(&self, h: AbortHandle) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, h);
        id
    }
    pub fn remove(&self, id: u64) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
    pub fn abort_all(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, t) in tasks {
            t.abort();
        }
    }
}

impl Client {
    pub fn new(u: &CompiledUpstream) -> Result<Client, String> {
        let tls = if u.base.https {
            Some(brig_tls::client_connector(
                u.ca_file.as_deref(),
                &format!("models.upstreams.{}.ca_file", u.name),
            )?)
        } else {
            None
        };
        Ok(Client {
            tls,
            pool: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// A ready connection: a pooled one when there is one, else a new one.
    pub async fn get(
        &self,
        u: &CompiledUpstream,
        reg: &Arc<Registry>,
        fresh: bool,
    ) -> Result<Conn, ConnectError> {
        // `fresh`: a pooled connection just failed; skip the pool.
        let mut from_pool = !fresh;
        while from_pool {
            let idle = {
                let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                p.pop()
            };
            let Some(mut idle) = idle else {
                from_pool = false;
                continue;
            };
            if idle.sender.is_closed() || idle.since.elapsed() > IDLE_FOR {
                idle.task.abort();
                continue;
            }
            // Ready at once for a connection whose last response was read
            // to the end; a closing one fails here and is dropped.
            let ready = idle.sender.is_ready()
                || matches!(
                    tokio::time::timeout(Duration::from_millis(50), idle.sender.ready()).await,
                    Ok(Ok(()))
                );
            match ready {
                true => {
                    let id = reg.add(idle.task.clone());
                    return Ok(Conn {
                        sender: Some(idle.sender),
                        task: idle.task,
                        pool: Arc::downgrade(&self.pool),
                        reg: Some((reg.clone(), id)),
                        reused: true,
                    });
                }
                false => idle.task.abort(),
            }
        }
        match tokio::time::timeout(u.connect_timeout, self.connect(u)).await {
            Ok(Ok((sender, task))) => {
                let id = reg.add(task.clone());
                Ok(Conn {
                    sender: Some(sender),
                    task,
                    pool: Arc::downgrade(&self.pool),
                    reg: Some((reg.clone(), id)),
                    reused: false,
                })
            }
            Ok(Err(e)) => Err(ConnectError::Failed(e)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn connect(
        &self,
        u: &CompiledUpstream,
    ) -> Result<(SendRequest<Full<Bytes>>, AbortHandle), String> {
        let origin = format!(
            "{}://{}",
            if u.base.https { "https" } else { "http" },
            u.base.authority
        );
        let tcp = TcpStream::connect((u.base.host.as_str(), u.base.port))
            .await
            .map_err(|e| format!("cannot connect to {origin}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp, &origin).await,
            Some(tls) => {
                let tls_err = |d: String| format!("TLS with {origin} failed: {d}");
                let ssl = tls
                    .configure()
                    .and_then(|c| c.into_ssl(&u.base.host))
                    .map_err(|e| tls_err(e.to_string()))?;
                let mut s =
                    tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| tls_err(e.to_string()))?;
                if let Err(e) = Pin::new(&mut s).connect().await {
                    let v = s.ssl().verify_result();
                    return Err(tls_err(if v.as_raw() != 0 {
                        format!("certificate verification failed: {}", v.error_string())
                    } else {
                        e.to_string()
                    }));
                }
                handshake(s, &origin).await
            }
        }
    }
}

async fn handshake<S>(
    io: S,
    origin: &str,
) -> Result<(SendRequest<Full<Bytes>>, AbortHandle), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {origin} failed: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, task.abort_handle()))
}
