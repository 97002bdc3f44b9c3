//! The upstream HTTP client: HTTP/1.1 over TCP or TLS (brig-tls's shared
//! verifying context), with a small keep-alive pool per upstream. A
//! connection is lent to one exchange at a time and driven by the task of
//! the request that uses it (no task of its own: each exchange would wake
//! one, and be woken by it, several times). It goes back to the pool only
//! when its response body was read to the end, and it is dropped (the
//! socket closed) otherwise: a client that goes away, a closed session, a
//! timeout. That is what cancels an upstream request at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use openssl::ssl::SslConnector;
use tokio::net::TcpStream;

use crate::config::CompiledUpstream;

/// Idle connections kept per upstream.
const MAX_IDLE: usize = 64;
/// An idle connection older than this is not reused (servers close theirs
/// after 5 to 120 s; reusing one that is being closed fails the request).
const IDLE_FOR: Duration = Duration::from_secs(30);

/// hyper's connection future: it does the connection's reads and writes.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
    since: Instant,
}

pub(crate) struct Client {
    pub tls: Option<SslConnector>,
    pool: Arc<Mutex<Vec<Idle>>>,
    /// The `host` header of its requests.
    pub host: Option<HeaderValue>,
    /// The request URIs (path and query), by the endpoint path they end
    /// in: made once, not per request.
    uris: Vec<(&'static str, Uri)>,
}

/// Every path [`Client::uri`] is asked for.
pub(crate) const PATHS: &[&str] = &[
    "/v1/messages/count_tokens",
    "/v1/messages",
    "/responses",
    "/embeddings",
    "/chat/completions",
];

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
    /// `None` once the connection has ended (or was aborted).
    driver: Option<Driver>,
    pool: Weak<Mutex<Vec<Idle>>>,
    /// Its entry in the session's in-flight registry.
    reg: Arc<Registry>,
    id: u64,
    /// The waker registered there.
    waker: Option<Waker>,
    pub reused: bool,
}

impl Conn {
    fn new(
        sender: SendRequest<Full<Bytes>>,
        driver: Driver,
        pool: &Arc<Mutex<Vec<Idle>>>,
        reg: &Arc<Registry>,
        reused: bool,
    ) -> Conn {
        Conn {
            sender: Some(sender),
            driver: Some(driver),
            pool: Arc::downgrade(pool),
            reg: reg.clone(),
            id: reg.next.fetch_add(1, Ordering::Relaxed),
            waker: None,
            reused,
        }
    }

    fn sender(&mut self) -> &mut SendRequest<Full<Bytes>> {
        self.sender
            .as_mut()
            .expect("a lent connection has its sender")
    }

    /// Lets the connection read and write what it can; `true` while it is
    /// open. A closed session drops it here (its exchange then fails).
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        drive(&mut self.driver, &self.reg, self.id, &mut self.waker, cx)
    }

    /// Sends `req` and waits for the response head, driving the connection.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<Response<Incoming>> {
        let Conn {
            sender,
            driver,
            reg,
            id,
            waker,
            ..
        } = self;
        let sender = sender.as_mut().expect("a lent connection has its sender");
        // The first poll of `fut` queues the request, the driver writes it
        // and reads the response, which `fut` then has. When the driver
        // ends (or is dropped) first, `fut` fails.
        let mut fut = std::pin::pin!(sender.send_request(req));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            drive(driver, reg, *id, waker, cx);
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Waits until the connection can take a request (`false`: it cannot).
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            let open = self.drive(cx);
            match self.sender().poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(r.is_ok() && open),
                Poll::Pending if open => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await
    }

    /// Back to the pool: only after its response was read to the end.
    pub fn release(mut self, cx: &mut Context<'_>) {
        // Once more, so the connection takes the end of the response in.
        let open = self.drive(cx);
        if self.waker.take().is_some() {
            self.reg.remove(self.id);
        }
        let (Some(sender), Some(driver)) = (self.sender.take(), self.driver.take()) else {
            return;
        };
        if !open || sender.is_closed() {
            return;
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < MAX_IDLE {
            p.push(Idle {
                sender,
                driver,
                since: Instant::now(),
            });
        }
    }
}

/// [`Conn::drive`] on its parts (while its sender is borrowed).
fn drive(
    driver: &mut Option<Driver>,
    reg: &Arc<Registry>,
    id: u64,
    waker: &mut Option<Waker>,
    cx: &mut Context<'_>,
) -> bool {
    let Some(d) = driver.as_mut() else {
        return false;
    };
    // Registered so closing the session wakes this exchange; again only
    // when the request's task changes (it does not, in practice).
    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        let w = cx.waker().clone();
        reg.set(id, w.clone());
        *waker = Some(w);
    }
    if reg.aborted() {
        *driver = None;
        return false;
    }
    match d.as_mut().poll(cx) {
        Poll::Pending => true,
        Poll::Ready(_) => {
            *driver = None;
            false
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Not released: dropping the driver closes the socket.
        if self.waker.is_some() {
            self.reg.remove(self.id);
        }
    }
}

/// The session's exchanges in flight (the wakers of their requests'
/// tasks), so closing the session aborts them.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    aborted: AtomicBool,
    tasks: Mutex<HashMap<u64, Waker>>,
}

impl Registry {
    fn set(&self, id: u64, w: Waker) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, w);
    }
    fn remove(&self, id: u64) {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
    /// Every exchange in flight drops its connection (now, or the next time
    /// it is polled), and no new one starts.
    pub fn abort_all(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, w) in tasks {
            w.wake();
        }
    }
    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
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
        let mut uris = Vec::with_capacity(PATHS.len());
        for p in PATHS {
            let full = format!("{}{}", u.base.path, p);
            let uri = full
                .parse::<Uri>()
                .map_err(|_| format!("bad upstream path {full}"))?;
            uris.push((*p, uri));
        }
        Ok(Client {
            tls,
            pool: Arc::new(Mutex::new(Vec::new())),
            host: HeaderValue::from_str(&u.base.authority).ok(),
            uris,
        })
    }

    /// The URI of `path` (one of [`PATHS`]) on this upstream.
    pub fn uri(&self, path: &'static str) -> Uri {
        match self.uris.iter().find(|(p, _)| *p == path) {
            Some((_, u)) => u.clone(),
            None => Uri::from_static("/"),
        }
    }

    /// A ready connection: a pooled one when there is one, else a new one.
    pub async fn get(
        &self,
        u: &CompiledUpstream,
        reg: &Arc<Registry>,
        fresh: bool,
    ) -> Result<Conn, ConnectError> {
        if reg.aborted() {
            return Err(ConnectError::Failed("the brig session was closed".into()));
        }
        // `fresh`: a pooled connection just failed; skip the pool.
        let mut from_pool = !fresh;
        while from_pool {
            let idle = {
                let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                p.pop()
            };
            let Some(idle) = idle else {
                from_pool = false;
                continue;
            };
            if idle.sender.is_closed() || idle.since.elapsed() > IDLE_FOR {
                continue; // dropped: closed
            }
            let ready = idle.sender.is_ready();
            let mut c = Conn::new(idle.sender, idle.driver, &self.pool, reg, true);
            // Ready at once for a connection whose last response was read
            // to the end (one poll of it still sees a close by the server);
            // a closing one fails here and is dropped.
            let ok = if ready {
                c.ready().await
            } else {
                matches!(
                    tokio::time::timeout(Duration::from_millis(50), c.ready()).await,
                    Ok(true)
                )
            };
            if ok {
                return Ok(c);
            }
        }
        match tokio::time::timeout(u.connect_timeout, self.connect(u)).await {
            Ok(Ok((sender, driver))) => Ok(Conn::new(sender, driver, &self.pool, reg, false)),
            Ok(Err(e)) => Err(ConnectError::Failed(e)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn connect(
        &self,
        u: &CompiledUpstream,
    ) -> Result<(SendRequest<Full<Bytes>>, Driver), String> {
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

async fn handshake<S>(io: S, origin: &str) -> Result<(SendRequest<Full<Bytes>>, Driver), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {origin} failed: {e}"))?;
    Ok((sender, Box::pin(conn)))
}
