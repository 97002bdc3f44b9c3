//! Per-session rate limits: requests per second and DNS queries per second
//! (token buckets), concurrent connections, bytes out per minute.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session's limits. Excess is refused (429 for HTTP, REFUSED for DNS,
/// a closed connection for opaque streams) and reported as an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// HTTP requests, CONNECTs and transparent connections per second
    /// (sustained).
    pub requests_per_sec: f64,
    /// Burst above the sustained rate.
    pub request_burst: f64,
    /// Streams open at once (proxy channel; each stream is one sandbox
    /// connection).
    pub max_connections: usize,
    /// Bytes from the sandbox to upstream per minute (request heads and
    /// bodies, tunnel bytes). Running out closes the streams that are
    /// sending and refuses new requests until it refills.
    pub bytes_out_per_min: u64,
    /// DNS queries per second (sustained) and burst.
    pub dns_queries_per_sec: f64,
    pub dns_burst: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            requests_per_sec: 100.0,
            request_burst: 500.0,
            max_connections: 512,
            bytes_out_per_min: 512 << 20,
            dns_queries_per_sec: 100.0,
            dns_burst: 200.0,
        }
    }
}

impl Limits {
    /// No limits at all (benchmarks).
    pub fn unlimited() -> Limits {
        Limits {
            requests_per_sec: f64::INFINITY,
            request_burst: f64::INFINITY,
            max_connections: usize::MAX,
            bytes_out_per_min: u64::MAX,
            dns_queries_per_sec: f64::INFINITY,
            dns_burst: f64::INFINITY,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Bucket {
        Bucket {
            tokens: burst.max(1.0),
            last: Instant::now(),
            rate,
            burst: burst.max(1.0),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if self.rate.is_infinite() {
            self.tokens = self.burst;
        } else {
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
    }

    /// Take `n` if at least one token is there (may go negative: a large
    /// write is charged whole); else the time until one is.
    fn take(&mut self, n: f64) -> Result<(), Duration> {
        self.refill();
        if self.tokens.is_infinite() {
            return Ok(());
        }
        if self.tokens >= n.min(1.0) {
            self.tokens -= n;
            return Ok(());
        }
        Err(self.wait())
    }

    fn wait(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::from_secs(60);
        }
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).clamp(0.001, 3600.0))
    }

    /// Charge `n` unconditionally; false when the bucket is now empty.
    fn charge(&mut self, n: f64) -> bool {
        self.refill();
        if self.tokens.is_infinite() {
            return true;
        }
        self.tokens -= n;
        self.tokens > 0.0
    }
}

/// A session's limits and their state, shared by every stream of the
/// session (proxy and DNS channels).
#[derive(Debug)]
pub struct SessionLimits {
    pub limits: Limits,
    requests: Mutex<Bucket>,
    dns: Mutex<Bucket>,
    bytes_out: Mutex<Bucket>,
    connections: Arc<AtomicUsize>,
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionLimits {
    pub fn new(limits: Limits) -> SessionLimits {
        let bpm = if limits.bytes_out_per_min == u64::MAX {
            f64::INFINITY
        } else {
            limits.bytes_out_per_min as f64
        };
        SessionLimits {
            requests: Mutex::new(Bucket::new(limits.requests_per_sec, limits.request_burst)),
            dns: Mutex::new(Bucket::new(limits.dns_queries_per_sec, limits.dns_burst)),
            bytes_out: Mutex::new(Bucket::new(bpm / 60.0, bpm)),
            connections: Arc::new(AtomicUsize::new(0)),
            limits,
        }
    }

    /// A slot for a new stream, or `None` at `max_connections`.
    pub fn connection(&self) -> Option<ConnSlot> {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        let slot = ConnSlot(self.connections.clone());
        if prev >= self.limits.max_connections {
            return None; // the slot drops and gives the count back
        }
        Some(slot)
    }

    /// Streams open now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// One request; `Err(retry_after)` when over the rate.
    pub fn request(&self) -> Result<(), Duration> {
        self.requests.lock().unwrap().take(1.0)
    }

    /// One DNS query.
    pub fn dns_query(&self) -> Result<(), Duration> {
        self.dns.lock().unwrap().take(1.0)
    }

    /// Whether bytes may be sent now; `Err(retry_after)` when the
    /// per-minute budget is spent.
    pub fn bytes_out_available(&self) -> Result<(), Duration> {
        let mut b = self.bytes_out.lock().unwrap();
        b.refill();
        if b.tokens > 0.0 {
            Ok(())
        } else {
            Err(b.wait())
        }
    }

    /// Charge bytes sent; false once the budget is spent.
    pub fn charge_bytes_out(&self, n: usize) -> bool {
        self.bytes_out.lock().unwrap().charge(n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        let l = SessionLimits::new(Limits {
            requests_per_sec: 1.0,
            request_burst: 3.0,
            max_connections: 2,
            bytes_out_per_min: 100,
            ..Limits::default()
        });
        assert!(l.request().is_ok());
        assert!(l.request().is_ok());
        assert!(l.request().is_ok());
        let wait = l.request().unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        let a = l.connection().unwrap();
        let _b = l.connection().unwrap();
        assert!(l.connection().is_none());
        drop(a);
        assert!(l.connection().is_some());
        assert!(l.bytes_out_available().is_ok());
        assert!(l.charge_bytes_out(60));
        assert!(!l.charge_bytes_out(60));
        assert!(l.bytes_out_available().is_err());
        let u = SessionLimits::new(Limits::unlimited());
        for _ in 0..10_000 {
            assert!(u.request().is_ok());
            assert!(u.charge_bytes_out(1 << 30));
        }
    }
}
