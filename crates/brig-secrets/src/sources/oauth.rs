//! OAuth2 access tokens for GCP and Azure: one token request shape
//! (a form POST answering `access_token` + `expires_in`), a cache that keeps
//! the token until a minute before it expires, and a GET that retries once
//! with a fresh token when the API says 401 (revoked or expired early).

use std::future::Future;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use tokio::time::Instant;

use crate::http::{self, Client, Response, Url};
use crate::{SecretError, SecretValue};

/// Renew this long before the upstream's expiry.
const EARLY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct TokenCache(tokio::sync::Mutex<Option<(SecretValue, Instant)>>);

impl TokenCache {
    async fn get<F, Fut>(&self, login: F) -> Result<SecretValue, SecretError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(SecretValue, Duration), SecretError>>,
    {
        let mut slot = self.0.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        *slot = None;
        let (t, ttl) = login().await?;
        *slot = Some((t.clone(), Instant::now() + ttl.saturating_sub(EARLY)));
        Ok(t)
    }

    async fn clear(&self) {
        *self.0.lock().await = None;
    }
}

/// POSTs a token request form. `sent` are the secrets in it (for
/// scrubbing the upstream's message). 400/401 are brig's credentials.
pub(crate) async fn request_token(
    client: &Client,
    url: &str,
    form: Vec<u8>,
    what: &str,
    sent: &[&str],
) -> Result<(SecretValue, Duration), SecretError> {
    let url = client.url(url)?;
    let r = client
        .send(
            Method::POST,
            &url,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
            ],
            form,
        )
        .await?;
    if matches!(r.status, 400 | 401 | 403) {
        return Err(SecretError::Auth {
            upstream: client.upstream().to_string(),
            message: format!(
                "{what} at {}{}: HTTP {}: {}",
                url.origin(),
                url.path(),
                r.status,
                r.message(sent)
            ),
        });
    }
    if !r.ok() {
        return Err(http::status_error(client.upstream(), what, None, &r, sent));
    }
    #[derive(Deserialize)]
    struct Token {
        access_token: SecretValue,
        #[serde(default = "hour")]
        expires_in: u64,
    }
    fn hour() -> u64 {
        3600
    }
    let t: Token = r.json(client.upstream())?;
    if t.access_token.is_empty() {
        return Err(SecretError::Protocol {
            upstream: client.upstream().to_string(),
            detail: format!("{what}: an empty access_token"),
        });
    }
    Ok((t.access_token, Duration::from_secs(t.expires_in)))
}

/// GET `url` with a bearer token from `cache` (obtained by `login`), once
/// more with a fresh token after a 401. Returns the answer and the token
/// (to scrub from messages).
pub(crate) async fn bearer_get<F, Fut>(
    client: &Client,
    cache: &TokenCache,
    url: &Url,
    login: F,
) -> Result<(Response, SecretValue), SecretError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(SecretValue, Duration), SecretError>>,
{
    let mut retried = false;
    loop {
        let token = cache.get(&login).await?;
        let auth = format!("Bearer {}", token.expose_str().unwrap_or_default());
        let auth = SecretValue::from_string(auth);
        let r = client
            .send(
                Method::GET,
                url,
                &[
                    ("authorization", auth.expose_str().unwrap_or_default()),
                    ("accept", "application/json"),
                ],
                Vec::new(),
            )
            .await?;
        if r.status == 401 && !retried {
            retried = true;
            cache.clear().await;
            continue;
        }
        return Ok((r, token));
    }
}
