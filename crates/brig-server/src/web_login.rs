//! Browser login for the web UI (issue 7; docs/IDENTITY.md): OIDC
//! authorization code with PKCE, the server side of it.
//!
//! `GET /v1/auth/login[?return_to=/path]` answers 302 to the IdP's
//! authorization endpoint with a fresh state, nonce and S256 challenge; the
//! verifier stays here, in memory, for [`LOGIN_TTL`] and one use.
//! `GET /v1/auth/callback?code&state` checks the state, exchanges the code
//! with the verifier, verifies the ID token (issuer, audience, expiry,
//! pinned algorithms, nonce) and signs the human in: an API token of theirs
//! (hashed at rest, expiring after `[identity.oidc] web_session_ttl`),
//! set as the `brig_session` cookie (`HttpOnly; Secure; SameSite=Strict`),
//! then 302 to `return_to`. The auth layer takes the cookie where a request
//! has no `Authorization`; a cookie-authenticated request that changes
//! anything must also carry `X-Brig-Csrf: 1` (a header a cross-site form
//! cannot set). `POST /v1/auth/logout` revokes the token and clears the
//! cookie. Logins and logouts are journaled (`auth.login`, `auth.logout`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use brig_core::event::{Event, Outcome};
use brig_core::{Error, ErrorKind};
use brig_identity::{ApiTokens, AuthCodeRequest};
use brig_store::tokens::ApiTokenRow;
use serde::Deserialize;

use crate::api::ApiError;
use crate::identity::{Auth, Caller};

/// The cookie that carries a browser's brig token.
pub const COOKIE: &str = "brig_session";
/// The header a cookie-authenticated change must carry.
pub const CSRF_HEADER: &str = "x-brig-csrf";
/// How long a started login waits for the IdP's redirect.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Most logins in progress at once (each is a few hundred bytes).
const MAX_PENDING: usize = 1024;

struct Pending {
    req: AuthCodeRequest,
    return_to: String,
    at: Instant,
}

/// Logins started and not finished, by state.
#[derive(Default)]
pub struct PendingLogins(Mutex<HashMap<String, Pending>>);

impl PendingLogins {
    fn put(&self, p: Pending) -> Result<(), Error> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, p| p.at.elapsed() < LOGIN_TTL);
        if m.len() >= MAX_PENDING {
            return Err(
                Error::new(ErrorKind::Unavailable, "too many logins in progress")
                    .hint("try again in a few minutes"),
            );
        }
        m.insert(p.req.state.clone(), p);
        Ok(())
    }

    /// The login `state` names, once.
    fn take(&self, state: &str) -> Option<Pending> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(state).filter(|p| p.at.elapsed() < LOGIN_TTL)
    }
}

/// Where a login may send the browser back to: a path of this server only
/// (no scheme, no host, no `//` — nothing that leaves it).
fn check_return_to(r: &str) -> Result<(), Error> {
    let ok = r.starts_with('/')
        && !r.starts_with("//")
        && !r.contains('\\')
        && r.len() <= 512
        && !r.chars().any(|c| c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "return_to {:?} is not a path on this server",
            r.chars().take(80).collect::<String>()
        ))
        .hint("give a path such as /ui/sessions"))
    }
}

fn no_oidc() -> ApiError {
    ApiError(
        Error::not_found("browser login needs [identity.oidc] with redirect_uri")
            .hint("set [identity.oidc] redirect_uri = \"https://<brig>/v1/auth/callback\" (docs/IDENTITY.md)"),
    )
}

#[derive(Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    return_to: Option<String>,
}

/// `GET /v1/auth/login`.
pub async fn login(
    Extension(a): Extension<Arc<Auth>>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let return_to = q.return_to.unwrap_or_else(|| "/".into());
    check_return_to(&return_to)?;
    let cfg = a.mgr.config().identity.oidc.as_ref().ok_or_else(no_oidc)?;
    let redirect = cfg.redirect_uri.as_deref().ok_or_else(no_oidc)?;
    let client = a.identity.oidc_client().map_err(|e| {
        ApiError(
            Error::new(
                ErrorKind::Unavailable,
                format!("[identity.oidc] is not usable: {e}"),
            )
            .hint("fix [identity.oidc] in brig.toml and restart brig serve"),
        )
    })?;
    let req = AuthCodeRequest::new(client, redirect).await.map_err(|e| {
        ApiError(
            Error::new(ErrorKind::Unavailable, format!("the IdP: {e}"))
                .hint("check that the IdP is reachable and supports the authorization code flow"),
        )
    })?;
    let url = req.url.clone();
    a.identity.pending_logins().put(Pending {
        req,
        return_to,
        at: Instant::now(),
    })?;
    Ok(redirect_to(&url, None))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

fn login_failed(kind: ErrorKind, why: String) -> ApiError {
    ApiError(Error::new(kind, why).hint("start again at /v1/auth/login"))
}

/// `GET /v1/auth/callback`: the IdP's redirect.
pub async fn callback(
    Extension(a): Extension<Arc<Auth>>,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    if let Some(e) = &q.error {
        let d = q.error_description.as_deref().unwrap_or("");
        return Err(login_failed(
            ErrorKind::Unauthorized,
            format!("the IdP refused the login: {e} {d}")
                .trim_end()
                .to_string(),
        ));
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return Err(login_failed(
            ErrorKind::InvalidInput,
            "the redirect carries no code and state".into(),
        ));
    };
    // Unknown, used or expired: nothing to finish (a replayed or forged
    // redirect lands here).
    let Some(p) = a.identity.pending_logins().take(state) else {
        return Err(login_failed(
            ErrorKind::InvalidInput,
            "no login in progress has this state (it expired, was used, or was not started here)"
                .into(),
        ));
    };
    let client = a
        .identity
        .oidc_client()
        .map_err(|e| login_failed(ErrorKind::Unavailable, e))?;
    let tokens = client
        .complete_auth_code(&p.req, state, code)
        .await
        .map_err(|e| login_failed(ErrorKind::Unauthorized, format!("the login failed: {e}")))?;
    let principal = client
        .authenticate(&tokens.id_token)
        .await
        .map_err(|e| login_failed(ErrorKind::Unauthorized, format!("the ID token: {e}")))?;
    let caller = Caller::from_principal(&principal);
    let ttl = a
        .mgr
        .config()
        .identity
        .oidc
        .as_ref()
        .map(|o| o.web_session_ttl)
        .unwrap_or(Duration::from_secs(12 * 3600));
    let issuer = ApiTokens::new(&a.mgr.config().identity.tokens);
    let (plain, rec) = issuer
        .issue(&caller.id, "web-login", ttl)
        .map_err(|e| ApiError(Error::invalid(e.to_string())))?;
    let row = crate::identity::token_row(&rec, &caller);
    let ev = auth_event("auth.login", &caller, &row);
    let stored = row.clone();
    a.mgr
        .db()
        .write(move |tx| tx.insert_api_token(&stored, &ev))
        .await?;
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
        plain.expose(),
        ttl.as_secs()
    );
    Ok(redirect_to(&p.return_to, Some(cookie)))
}

/// `POST /v1/auth/logout`: the cookie's token is revoked, the cookie cleared.
pub async fn logout(
    Extension(a): Extension<Arc<Auth>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, ApiError> {
    let Some(token) = cookie_token(req.headers()) else {
        return Err(ApiError(
            Error::invalid("no brig_session cookie to log out")
                .hint("an API token is revoked with `brig token revoke ID`"),
        ));
    };
    let hash = ApiTokens::hash(token)
        .map_err(|e| ApiError(Error::invalid(e.to_string())))?
        .to_hex();
    let row = a
        .mgr
        .db()
        .run(move |s| s.api_token_by_hash(&hash))
        .await?
        .filter(|r| r.principal == caller.id)
        .ok_or_else(|| ApiError(Error::not_found("the cookie's session is not yours")))?;
    let ev = auth_event("auth.logout", &caller, &row);
    let (id, at) = (
        row.id.clone(),
        crate::identity::fmt_time(time::OffsetDateTime::now_utc()),
    );
    a.mgr
        .db()
        .write(move |tx| tx.revoke_api_token(&id, &at, &ev))
        .await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "brig_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    Ok(r)
}

fn auth_event(action: &str, caller: &Caller, row: &ApiTokenRow) -> Event {
    let mut ev = Event::new(action, Outcome::Success);
    ev.human = Some(caller.name.clone());
    ev.details(serde_json::json!({
        "principal": caller.id, "via": "web", "token_id": row.id, "expires": row.expires,
        "groups": caller.groups, "roles": caller.roles,
    }))
}

fn redirect_to(location: &str, cookie: Option<String>) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// The `brig_session` cookie's value, if the request has one.
pub fn cookie_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_this_server() {
        for ok in ["/", "/ui/sessions?x=1"] {
            assert!(check_return_to(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "evil",
            "/a\nb",
        ] {
            assert!(check_return_to(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; brig_session=brig_pat_x ; b=2"),
        );
        assert_eq!(cookie_token(&h), Some("brig_pat_x"));
        let mut h = axum::http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("brig_sessionx=1"));
        assert_eq!(cookie_token(&h), None);
    }
}
