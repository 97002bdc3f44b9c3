//! A session's resolver: a small UDP client to the upstream DNS server,
//! and the session's memory of which names resolved to which addresses
//! (bounded, TTL-respecting), used by the transparent mode.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use brig_egress::{SsrfDenial, SsrfGuard};

use crate::dns_wire::{self, A, AAAA};

/// Addresses after the SSRF guard.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    /// Passed the guard (with TTL, capped).
    pub kept: Vec<(IpAddr, u32)>,
    /// Refused by the guard, with why.
    pub dropped: Vec<(IpAddr, SsrfDenial)>,
}

/// Resolver settings.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// The upstream DNS server; `None`: the first `nameserver` of
    /// /etc/resolv.conf.
    pub upstream: Option<SocketAddr>,
    /// Names answered without asking upstream (tests, benchmarks, a
    /// deployment's fixed mirrors). Keys are normalized names.
    pub static_hosts: HashMap<String, Vec<IpAddr>>,
    /// One attempt's timeout, and how many attempts.
    pub timeout: Duration,
    pub attempts: u32,
    /// Names (name, type) remembered per session.
    pub max_names: usize,
    /// TTL cap on what brig answers and reuses.
    pub max_ttl: u32,
    /// How long an answered address stays valid for a transparent
    /// connection after its TTL ran out (clients reuse addresses past the
    /// TTL: connection pools, JVM caches).
    pub transparent_grace: Duration,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            upstream: None,
            static_hosts: HashMap::new(),
            timeout: Duration::from_millis(1500),
            attempts: 2,
            max_names: 4096,
            max_ttl: 300,
            transparent_grace: Duration::from_secs(120),
        }
    }
}

/// Why a name could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("the name does not exist (NXDOMAIN)")]
    NxDomain,
    #[error("the upstream DNS server failed (rcode {0})")]
    Failed(u8),
    #[error("the upstream DNS server did not answer in time")]
    Timeout,
    #[error("no upstream DNS server configured")]
    NoUpstream,
    #[error("DNS I/O: {0}")]
    Io(String),
}

#[derive(Debug)]
struct Entry {
    addrs: Vec<IpAddr>,
    fresh_until: Instant,
    keep_until: Instant,
}

/// One session's resolver (shared by its proxy and DNS channels).
#[derive(Debug)]
pub struct SessionResolver {
    cfg: ResolverConfig,
    upstream: Option<SocketAddr>,
    cache: Mutex<HashMap<(String, u16), Entry>>,
}

/// The first nameserver of a resolv.conf.
pub fn resolv_conf_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next() != Some("nameserver") {
            return None;
        }
        let ip: IpAddr = w.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

impl SessionResolver {
    pub fn new(cfg: ResolverConfig) -> SessionResolver {
        let upstream = cfg.upstream.or_else(|| {
            std::fs::read_to_string("/etc/resolv.conf")
                .ok()
                .and_then(|t| resolv_conf_nameserver(&t))
        });
        SessionResolver {
            cfg,
            upstream,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.cfg
    }

    /// Resolve `name` (normalized) for the proxy: A and AAAA, from the
    /// session's fresh answers or upstream, each address checked by the
    /// SSRF guard. The caller dials one of `kept`: no second resolution.
    pub async fn lookup(&self, name: &str, guard: &SsrfGuard) -> Result<Checked, ResolveError> {
        let (a, aaaa) = tokio::join!(self.query(name, A, guard), self.query(name, AAAA, guard));
        match (a, aaaa) {
            (Ok(mut x), Ok(y)) => {
                x.kept.extend(y.kept);
                x.dropped.extend(y.dropped);
                Ok(x)
            }
            (Ok(x), Err(_)) | (Err(_), Ok(x)) if !x.kept.is_empty() || !x.dropped.is_empty() => {
                Ok(x)
            }
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(e),
        }
    }

    /// Answers for one type: fresh ones from memory, else from upstream.
    /// Every address goes through the guard; denied ones are dropped (and
    /// returned with their denial), kept ones are remembered for the
    /// session.
    pub async fn query(
        &self,
        name: &str,
        qtype: u16,
        guard: &SsrfGuard,
    ) -> Result<Checked, ResolveError> {
        let raw: Vec<(IpAddr, u32)> = if let Some(s) = self.cfg.static_hosts.get(name) {
            s.iter()
                .filter(|ip| (qtype == A) == ip.is_ipv4())
                .map(|ip| (*ip, 60))
                .collect()
        } else if let Some(v) = self.fresh(name, qtype) {
            return Ok(Checked {
                kept: v,
                dropped: Vec::new(),
            });
        } else {
            self.upstream_query(name, qtype).await?
        };
        let mut out = Checked::default();
        for (ip, ttl) in raw {
            match guard.check_ip(ip) {
                Ok(_) => out.kept.push((ip, ttl.min(self.cfg.max_ttl))),
                Err(d) => out.dropped.push((ip, d)),
            }
        }
        if !out.kept.is_empty() {
            let ttl = out.kept.iter().map(|(_, t)| *t).min().unwrap_or(0);
            let ips: Vec<IpAddr> = out.kept.iter().map(|(ip, _)| *ip).collect();
            self.remember(name, qtype, &ips, ttl);
        }
        Ok(out)
    }

    fn fresh(&self, name: &str, qtype: u16) -> Option<Vec<(IpAddr, u32)>> {
        let c = self.cache.lock().unwrap();
        let e = c.get(&(name.to_string(), qtype))?;
        let now = Instant::now();
        if e.fresh_until <= now {
            return None;
        }
        let ttl = (e.fresh_until - now).as_secs() as u32;
        Some(e.addrs.iter().map(|ip| (*ip, ttl)).collect())
    }

    /// Remember that `name` resolved to `addrs` for `ttl` seconds (capped).
    pub fn remember(&self, name: &str, qtype: u16, addrs: &[IpAddr], ttl: u32) {
        let now = Instant::now();
        let ttl = Duration::from_secs(ttl.min(self.cfg.max_ttl) as u64);
        let mut c = self.cache.lock().unwrap();
        if c.len() >= self.cfg.max_names {
            c.retain(|_, e| e.keep_until > now);
            if c.len() >= self.cfg.max_names {
                if let Some(k) = c
                    .iter()
                    .min_by_key(|(_, e)| e.keep_until)
                    .map(|(k, _)| k.clone())
                {
                    c.remove(&k);
                }
            }
        }
        c.insert(
            (name.to_string(), qtype),
            Entry {
                addrs: addrs.to_vec(),
                fresh_until: now + ttl,
                keep_until: now + ttl + self.cfg.transparent_grace,
            },
        );
    }

    /// Whether this session's resolver answered `ip` for `name` (within
    /// TTL + grace).
    pub fn answered(&self, name: &str, ip: IpAddr) -> bool {
        let qtype = if ip.is_ipv4() { A } else { AAAA };
        if let Some(s) = self.cfg.static_hosts.get(name) {
            if s.contains(&ip) {
                return true;
            }
        }
        let c = self.cache.lock().unwrap();
        c.get(&(name.to_string(), qtype))
            .is_some_and(|e| e.keep_until > Instant::now() && e.addrs.contains(&ip))
    }

    /// The names this session's resolver answered `ip` for, most recent
    /// first.
    pub fn names_for(&self, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let mut v: Vec<(Instant, String)> = self
            .cache
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.keep_until > now && e.addrs.contains(&ip))
            .map(|((n, _), e)| (e.keep_until, n.clone()))
            .collect();
        for (n, ips) in &self.cfg.static_hosts {
            if ips.contains(&ip) {
                v.push((now, n.clone()));
            }
        }
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        v.dedup_by(|a, b| a.1 == b.1);
        v.into_iter().map(|(_, n)| n).collect()
    }

    async fn upstream_query(
        &self,
        name: &str,
        qtype: u16,
    ) -> Result<Vec<(IpAddr, u32)>, ResolveError> {
        let up = self.upstream.ok_or(ResolveError::NoUpstream)?;
        let bind: SocketAddr = if up.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let io = |e: std::io::Error| ResolveError::Io(e.to_string());
        let mut last = ResolveError::Timeout;
        for _ in 0..self.cfg.attempts.max(1) {
            // A fresh socket per attempt: the kernel picks a random
            // ephemeral port; the id is random too.
            let sock = UdpSocket::bind(bind).await.map_err(io)?;
            sock.connect(up).await.map_err(io)?;
            let id: u16 = rand::random();
            let q = dns_wire::build_query(id, name, qtype);
            sock.send(&q).await.map_err(io)?;
            let deadline = tokio::time::Instant::now() + self.cfg.timeout;
            let mut buf = vec![0u8; 4096];
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Err(_) => {
                        last = ResolveError::Timeout;
                        break;
                    }
                    Ok(Err(e)) => {
                        last = io(e);
                        break;
                    }
                    Ok(Ok(n)) => {
                        // Anything that is not the answer to this query
                        // (other id, other question) is ignored.
                        let Some(a) = dns_wire::parse_response(&buf[..n], &q, qtype) else {
                            continue;
                        };
                        return match a.rcode {
                            dns_wire::NOERROR => Ok(a.records),
                            dns_wire::NXDOMAIN => Err(ResolveError::NxDomain),
                            r => Err(ResolveError::Failed(r)),
                        };
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        assert_eq!(
            resolv_conf_nameserver("# x\nsearch a\nnameserver 10.1.2.3\nnameserver 1.1.1.1\n"),
            Some("10.1.2.3:53".parse().unwrap())
        );
        assert_eq!(resolv_conf_nameserver("search a\n"), None);
    }

    #[test]
    fn memory_is_bounded_and_per_name() {
        let r = SessionResolver::new(ResolverConfig {
            upstream: Some("127.0.0.1:9".parse().unwrap()),
            max_names: 3,
            ..ResolverConfig::default()
        });
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        for i in 0..10 {
            r.remember(&format!("n{i}.example"), A, &[ip], 30);
        }
        assert!(r.cache.lock().unwrap().len() <= 3);
        assert!(r.answered("n9.example", ip));
        assert!(!r.answered("n0.example", ip));
        assert!(!r.answered("n9.example", "203.0.113.10".parse().unwrap()));
        assert_eq!(r.names_for(ip)[0], "n9.example");
    }
}
