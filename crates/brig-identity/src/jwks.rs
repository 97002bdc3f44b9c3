//! The IdP's signing keys (its JWKS), fetched from `jwks_uri`, parsed once,
//! and cached:
//!
//! - fresh for Cache-Control `max-age`, bounded by `jwks_max_age` (and at
//!   least `min(60s, jwks_max_age)`, so `no-cache` does not mean a fetch
//!   per request); after that the next verification refetches;
//! - a token whose `kid` is unknown refetches at once (key rotation), but at
//!   most once per `jwks_refetch_interval`, so a flood of made-up kids
//!   costs the IdP one request per interval;
//! - when a refetch fails the cached keys keep verifying (an IdP outage
//!   does not log everyone out), but never once they are older than
//!   `jwks_hard_max_age`: then every verification fails closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::quoted;
use crate::http::{HttpClient, Url};
use crate::jose::Key;
use crate::{Alg, IdentityError, OidcConfig, TokenError};

/// More keys than this in one JWKS is not an IdP.
const MAX_KEYS: usize = 100;
/// The shortest freshness, whatever Cache-Control says.
const MIN_FRESH: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    keys: Arc<Vec<Arc<Key>>>,
    /// When `keys` were fetched (None: never).
    fetched_at: Option<Instant>,
    fresh_until: Option<Instant>,
    /// The last refetch an unknown kid caused.
    last_unknown_refetch: Option<Instant>,
    /// The last failed fetch, and why: retried at most once per
    /// `jwks_refetch_interval`.
    last_failure: Option<(Instant, String)>,
}

/// The cache of one IdP's keys.
pub struct JwksCache {
    uri: Url,
    http: Arc<HttpClient>,
    max_age: Duration,
    refetch_interval: Duration,
    hard_max_age: Duration,
    state: tokio::sync::Mutex<State>,
    fetches: AtomicU64,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl JwksCache {
    pub(crate) fn new(uri: Url, http: Arc<HttpClient>, cfg: &OidcConfig) -> JwksCache {
        JwksCache {
            uri,
            http,
            max_age: cfg.jwks_max_age,
            refetch_interval: cfg.jwks_refetch_interval,
            hard_max_age: cfg.jwks_hard_max_age,
            state: tokio::sync::Mutex::new(State::default()),
            fetches: AtomicU64::new(0),
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri.raw
    }

    /// How many times the JWKS was requested (metrics, tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches the JWKS now, whatever the cache holds.
    pub async fn refresh(&self) -> Result<usize, IdentityError> {
        let mut st = self.state.lock().await;
        self.fetch(&mut st).await
    }

    /// The key that verifies a token with this `kid` (or none) and `alg`.
    pub(crate) async fn key(&self, kid: Option<&str>, alg: Alg) -> Result<Arc<Key>, TokenError> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        if st.fresh_until.is_none_or(|t| now >= t) && self.may_retry(&st, now) {
            if let Err(e) = self.fetch(&mut st).await {
                tracing::warn!(jwks_uri = %self.uri.raw, error = %e, "refetching the IdP's JWKS failed; cached keys are used until jwks_hard_max_age");
            }
        }
        match st.fetched_at {
            Some(at) if now.duration_since(at) < self.hard_max_age => {}
            Some(_) => {
                return Err(TokenError::KeysUnavailable(format!(
                    "the cached keys are older than jwks_hard_max_age and {} cannot be fetched{}",
                    self.uri.raw,
                    failure(&st)
                )))
            }
            None => {
                return Err(TokenError::KeysUnavailable(format!(
                    "{} cannot be fetched{}",
                    self.uri.raw,
                    failure(&st)
                )))
            }
        }
        let Some(kid) = kid else {
            // No kid: usable only if exactly one key suits the alg.
            let fit: Vec<&Arc<Key>> = st.keys.iter().filter(|k| k.suits(alg).is_ok()).collect();
            return match fit.as_slice() {
                [k] => Ok(Arc::clone(k)),
                _ => Err(TokenError::NoKid {
                    alg: alg.to_string(),
                    candidates: fit.len(),
                }),
            };
        };
        if let Some(k) = find(&st.keys, kid, alg)? {
            return Ok(k);
        }
        let may = st
            .last_unknown_refetch
            .is_none_or(|t| now.duration_since(t) >= self.refetch_interval);
        if may {
            st.last_unknown_refetch = Some(now);
            if let Err(e) = self.fetch(&mut st).await {
                tracing::warn!(jwks_uri = %self.uri.raw, error = %e, "refetching the IdP's JWKS for an unknown kid failed");
            }
            if let Some(k) = find(&st.keys, kid, alg)? {
                return Ok(k);
            }
        }
        Err(TokenError::UnknownKid { kid: quoted(kid) })
    }

    fn may_retry(&self, st: &State, now: Instant) -> bool {
        st.last_failure
            .as_ref()
            .is_none_or(|(t, _)| now.duration_since(*t) >= self.refetch_interval)
    }

    /// Fetches and parses; on success replaces the keys. Returns how many
    /// keys are usable.
    async fn fetch(&self, st: &mut State) -> Result<usize, IdentityError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match self.fetch_keys().await {
            Ok((keys, max_age)) => {
                let n = keys.len();
                let fresh = max_age
                    .unwrap_or(self.max_age)
                    .min(self.max_age)
                    .max(MIN_FRESH.min(self.max_age));
                st.keys = Arc::new(keys);
                st.fetched_at = Some(started);
                st.fresh_until = Some(started + fresh);
                st.last_failure = None;
                Ok(n)
            }
            Err(e) => {
                st.last_failure = Some((started, e.to_string()));
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(Vec<Arc<Key>>, Option<Duration>), IdentityError> {
        let r = self.http.get(&self.uri).await?;
        if !r.ok() {
            return Err(IdentityError::Protocol {
                url: self.uri.raw.clone(),
                detail: format!("HTTP {} for the JWKS", r.status),
            });
        }
        let max_age = r.header("cache-control").and_then(cache_max_age);
        let raw: RawJwks = r.json(&self.uri)?;
        if raw.keys.len() > MAX_KEYS {
            return Err(IdentityError::Protocol {
                url: self.uri.raw.clone(),
                detail: format!("{} keys in the JWKS; at most {MAX_KEYS}", raw.keys.len()),
            });
        }
        let mut keys = Vec::with_capacity(raw.keys.len());
        for jwk in &raw.keys {
            match Key::from_jwk(jwk) {
                Ok(k) => keys.push(Arc::new(k)),
                Err(why) => {
                    let kid = jwk
                        .get("kid")
                        .and_then(|k| k.as_str())
                        .unwrap_or("(no kid)");
                    tracing::info!(jwks_uri = %self.uri.raw, kid = %quoted(kid), "JWKS key skipped: {why}");
                }
            }
        }
        if keys.is_empty() {
            return Err(IdentityError::Protocol {
                url: self.uri.raw.clone(),
                detail: "the JWKS has no usable signing key".into(),
            });
        }
        Ok((keys, max_age))
    }
}

fn failure(st: &State) -> String {
    st.last_failure
        .as_ref()
        .map(|(_, e)| format!(": {e}"))
        .unwrap_or_default()
}

/// A key with this kid that suits the alg; an error if the kid exists only
/// on keys that do not (an RSA kid on an ES256 token).
fn find(keys: &[Arc<Key>], kid: &str, alg: Alg) -> Result<Option<Arc<Key>>, TokenError> {
    let mut mismatch = None;
    for k in keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
        match k.suits(alg) {
            Ok(()) => return Ok(Some(Arc::clone(k))),
            Err(why) => mismatch = Some(why),
        }
    }
    match mismatch {
        Some(reason) => Err(TokenError::KeyMismatch {
            kid: quoted(kid),
            alg: alg.to_string(),
            reason,
        }),
        None => Ok(None),
    }
}

/// `max-age` of a Cache-Control header; `no-cache`/`no-store` are 0.
fn cache_max_age(v: &str) -> Option<Duration> {
    let mut age = None;
    for d in v.split(',').map(str::trim) {
        let d = d.to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = d.strip_prefix("max-age=") {
            age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            cache_max_age("public, max-age=3600, must-revalidate"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(cache_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(
            cache_max_age("Max-Age=\"10\""),
            Some(Duration::from_secs(10))
        );
        assert_eq!(cache_max_age("private"), None);
        assert_eq!(cache_max_age("max-age=x"), None);
    }
}
