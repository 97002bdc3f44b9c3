//! Who is calling the API (issue 7; docs/IDENTITY.md): every request
//! carries a [`Caller`], set by the listener's auth layer before any
//! handler runs.
//!
//! - The unix socket: the kernel's SO_PEERCRED uid of the connection
//!   ([`crate::auth::UnixPeer`]) mapped by brig-identity's
//!   [`LocalUsers::peer_identity`]; a uid that maps to nobody is refused.
//! - TCP: a bearer credential, tried in this order: the static `[tcp]
//!   token_file` token, an API token `brig_pat_…` (looked up by its
//!   SHA-256 in the store), an OIDC ID token (verified against the IdP's
//!   JWKS). A refusal is 401 with `WWW-Authenticate: Bearer
//!   error="invalid_token", error_description="<reason>"` and brig's JSON
//!   error; an IdP brig cannot reach is 503. Refusals are journaled as
//!   `auth.failure` (reason, never the credential), at most
//!   [`FAILURE_BURST`] at once and [`FAILURE_PER_SEC`] a second after
//!   that, so a flood cannot fill the disk.
//!
//! The routes of this module: `GET /v1/whoami`, `GET /v1/identity` (what a
//! client needs for `brig login`), `POST/GET /v1/tokens`, `DELETE
//! /v1/tokens/{id}`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use brig_core::event::{Event, Outcome};
use brig_core::{Error, ErrorKind};
use brig_identity::{
    ApiTokenError, ApiTokens, IdentityConfig, LocalUsers, OidcClient, Principal, TokenError,
    TokenHash, TokenRecord, Via,
};
use brig_store::tokens::ApiTokenRow;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::{ApiError, ApiJson, AppState};
use crate::auth::{Token, UnixPeer};
use crate::manager::Manager;

/// The authenticated human (or automation) behind an API request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// `local:<user>`, `oidc:<iss>#<sub>`, `token:tcp` (the static token),
    /// or for an API token the id of the principal that owns it.
    pub id: String,
    /// What people read: the email or user name (the id for the static
    /// token).
    pub name: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    /// `local`, `oidc`, `token`.
    pub via: &'static str,
}

impl Caller {
    /// The socket's root peer: the machine's administrator.
    pub fn local_admin() -> Caller {
        Caller {
            id: "local:root".into(),
            name: "root".into(),
            groups: vec![],
            roles: vec!["admin".into()],
            via: "local",
        }
    }

    /// The holder of the deployment's static `[tcp]` bearer token.
    pub fn static_token() -> Caller {
        Caller {
            id: "token:tcp".into(),
            name: "token:tcp".into(),
            groups: vec![],
            roles: vec!["admin".into()],
            via: "token",
        }
    }

    /// A principal brig-identity authenticated.
    pub fn from_principal(p: &Principal) -> Caller {
        Caller {
            id: p.id.clone(),
            name: p.name.clone(),
            groups: p.groups.clone(),
            roles: p.roles.clone(),
            via: p.via.as_str(),
        }
    }

    /// The caller as the policy engine's principal.
    pub fn human(&self) -> brig_policy::HumanPrincipal {
        let mut groups = self.groups.clone();
        // The admin role is the policies' `admins` group.
        if self.roles.iter().any(|r| r == "admin") && !groups.iter().any(|g| g == "admins") {
            groups.push("admins".into());
        }
        brig_policy::HumanPrincipal {
            id: self.id.clone(),
            groups,
            roles: self.roles.clone(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }

    /// Whether the caller may name another human for a session it creates:
    /// an administrator on the unix socket acting for a local user, as
    /// `sudo brig` and `brig demo` do. Everyone else (any TCP caller, a
    /// local user without the admin role) creates sessions as themselves.
    pub fn may_act_for_others(&self) -> bool {
        self.via == "local" && self.is_admin()
    }
}

/// The role that sees and revokes everyone's API tokens and may act for
/// others on the socket.
pub const ADMIN_ROLE: &str = "admin";

/// The human a new session belongs to: the caller, or (for a caller that
/// [`Caller::may_act_for_others`]) the one the request names. Anyone else
/// naming somebody else is refused.
pub fn session_human(caller: &Caller, named: Option<&str>) -> Result<String, Error> {
    match named.map(str::trim).filter(|h| !h.is_empty()) {
        None => Ok(caller.id.clone()),
        Some(h) if h == caller.id => Ok(caller.id.clone()),
        Some(h) if caller.may_act_for_others() => Ok(h.to_string()),
        Some(h) => Err(Error::new(
            ErrorKind::Denied,
            format!(
                "{} cannot create a session for {h:?}: a session belongs to the human who creates it",
                caller.id
            ),
        )
        .hint("leave `human` out (the session is yours), or ask the local administrator on the unix socket")),
    }
}

// ---------------------------------------------------------------- the layer

/// Refusals journaled at once before the rate applies.
pub const FAILURE_BURST: f64 = 30.0;
/// Refusals journaled per second after the burst.
pub const FAILURE_PER_SEC: f64 = 1.0;

/// A token bucket for `auth.failure` events; what it drops is counted and
/// reported in the next event it lets through.
struct FailureLimiter {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl FailureLimiter {
    fn new() -> Self {
        FailureLimiter {
            tokens: FAILURE_BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }
    /// `Some(dropped since the last one)` if this one may be journaled.
    fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * FAILURE_PER_SEC).min(FAILURE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Everything that authenticates requests; one per server, shared by its
/// listeners.
pub struct Identity {
    local: Result<LocalUsers, String>,
    oidc: Option<Result<OidcClient, String>>,
    tokens: ApiTokens,
    failures: Mutex<FailureLimiter>,
    /// Browser logins started and not finished (crate::web_login).
    logins: crate::web_login::PendingLogins,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("oidc", &self.oidc.as_ref().map(|o| o.is_ok()))
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// From `[identity]`: the local users, the IdP's client (no network
    /// yet: discovery happens on first use) and the token rules.
    pub fn new(cfg: &IdentityConfig) -> Result<Identity, Error> {
        let bad = |e: brig_identity::IdentityError| {
            Error::invalid(e.to_string()).hint("fix [identity] in brig.toml (docs/IDENTITY.md)")
        };
        let local = LocalUsers::from_config(cfg).map_err(bad)?;
        let oidc = cfg
            .oidc
            .clone()
            .map(OidcClient::new)
            .transpose()
            .map_err(bad)?;
        Ok(Identity {
            local: Ok(local),
            oidc: oidc.map(Ok),
            tokens: ApiTokens::new(&cfg.tokens),
            failures: Mutex::new(FailureLimiter::new()),
            logins: Default::default(),
        })
    }

    /// [`Identity::new`], or one that refuses every request with why (a
    /// router built without a server start: nothing may get in because
    /// the identity config could not be used).
    pub fn new_or_refusing(cfg: &IdentityConfig) -> Identity {
        Identity::new(cfg).unwrap_or_else(|e| {
            tracing::error!(error = %e, "[identity] is not usable: every request is refused");
            Identity {
                local: Err(e.to_string()),
                oidc: Some(Err(e.to_string())),
                tokens: ApiTokens::new(&cfg.tokens),
                failures: Mutex::new(FailureLimiter::new()),
                logins: Default::default(),
            }
        })
    }

    pub fn tokens(&self) -> &ApiTokens {
        &self.tokens
    }

    pub fn oidc_configured(&self) -> bool {
        self.oidc.is_some()
    }

    /// The IdP's client, when `[identity.oidc]` is set and usable.
    pub fn oidc_client(&self) -> Result<&OidcClient, String> {
        match &self.oidc {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e.clone()),
            None => Err("no [identity.oidc]".into()),
        }
    }

    pub(crate) fn pending_logins(&self) -> &crate::web_login::PendingLogins {
        &self.logins
    }
}

/// What one listener's auth layer holds.
#[derive(Clone)]
pub struct Auth {
    pub mgr: Arc<Manager>,
    pub identity: Arc<Identity>,
    /// The static `[tcp] token_file` token (TCP only).
    pub static_token: Option<Arc<Token>>,
}

/// A refused request's method and path, for the journal.
struct ReqLine {
    method: String,
    path: String,
}

impl ReqLine {
    fn of(req: &Request) -> ReqLine {
        ReqLine {
            method: req.method().to_string(),
            path: req.uri().path().chars().take(256).collect(),
        }
    }
}

/// Why a credential was refused: a stable reason code and the message.
struct Refusal {
    reason: &'static str,
    /// `oidc`, `token`, `static`, or `none` (no credential).
    via: &'static str,
    message: String,
    hint: String,
    /// The principal, when the credential named one (a revoked token's
    /// owner): for the journal.
    principal: Option<String>,
    /// 503 (the IdP cannot be reached), not 401.
    unavailable: bool,
}

fn now() -> String {
    brig_core::event::now_rfc3339()
}

/// The stored row of a token just issued to `caller` (its hash, never it).
pub(crate) fn token_row(rec: &TokenRecord, caller: &Caller) -> ApiTokenRow {
    ApiTokenRow {
        id: rec.id.clone(),
        principal: rec.principal.clone(),
        name: rec.name.clone(),
        hash: rec.hash.to_hex(),
        created: fmt_time(rec.created),
        expires: fmt_time(rec.expires),
        last_used: None,
        revoked: None,
        roles: caller.roles.clone(),
        groups: caller.groups.clone(),
    }
}

pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &Rfc3339).ok()
}

/// The stored row as brig-identity's record (for its verification).
fn record_of(row: &ApiTokenRow) -> Option<TokenRecord> {
    Some(TokenRecord {
        id: row.id.clone(),
        principal: row.principal.clone(),
        name: row.name.clone(),
        hash: TokenHash::try_from(row.hash.clone()).ok()?,
        created: parse_time(&row.created)?,
        expires: parse_time(&row.expires)?,
        last_used: row.last_used.as_deref().and_then(parse_time),
        revoked: row.revoked.as_deref().and_then(parse_time),
    })
}

/// `last_used` is written at most this often per token.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl Auth {
    /// The unix socket's layer: the connection's peer uid.
    pub async fn unix(State(a): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
        let peer = req
            .extensions()
            .get::<ConnectInfo<UnixPeer>>()
            .map(|c| c.0)
            .or_else(|| {
                req.extensions()
                    .get::<MockConnectInfo<UnixPeer>>()
                    .map(|m| m.0)
            });
        let local = match &a.identity.local {
            Ok(l) => l,
            Err(e) => {
                return ApiError(
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("[identity] is not usable: {e}"),
                    )
                    .hint("fix [identity] in brig.toml and restart brig serve"),
                )
                .into_response()
            }
        };
        let principal = peer
            .and_then(|p| p.uid)
            .and_then(|uid| local.peer_identity(uid));
        match principal {
            Some(p) => {
                req.extensions_mut().insert(Caller::from_principal(&p));
                next.run(req).await
            }
            None => {
                let uid = peer.and_then(|p| p.uid);
                let who = match uid {
                    Some(u) => format!("uid {u}"),
                    None => "a peer whose credentials the kernel did not give".into(),
                };
                let r = Refusal {
                    reason: "unknown_local_user",
                    via: "local",
                    message: format!("{who} is not a brig user on this host"),
                    hint: "add the user to [identity.users] in brig.toml, or use `brig login` and --url over TCP".into(),
                    principal: uid.map(|u| format!("uid:{u}")),
                    unavailable: false,
                };
                a.refuse(r, &ReqLine::of(&req), None).await
            }
        }
    }

    /// The TCP listener's layer: the bearer credential.
    pub async fn tcp(State(a): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
        let path = req.uri().path();
        if matches!(
            path,
            "/healthz" | "/v1/identity" | "/v1/auth/login" | "/v1/auth/callback"
        ) {
            return next.run(req).await;
        }
        let remote = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let mut bearer = auth.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        // A browser's web login (crate::web_login): its cookie, when the
        // request names no other credential. A change made with it must
        // carry the CSRF header, which no cross-site form can send.
        if auth.is_none() {
            if let Some(c) = crate::web_login::cookie_token(req.headers()) {
                let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS");
                if !safe && !req.headers().contains_key(crate::web_login::CSRF_HEADER) {
                    return ApiError(
                        Error::new(
                            ErrorKind::Denied,
                            "a change authenticated by the brig_session cookie needs the X-Brig-Csrf header",
                        )
                        .hint("send X-Brig-Csrf: 1 with the request (brig's web UI does)"),
                    )
                    .into_response();
                }
                // Only brig's own tokens ride in the cookie.
                bearer = c.starts_with(brig_identity::TOKEN_PREFIX).then_some(c);
            }
        }
        let Some(bearer) = bearer.filter(|b| !b.is_empty()) else {
            let r = Refusal {
                reason: "missing",
                via: "none",
                message: if auth.is_some() {
                    "the Authorization header is not `Bearer <token>`".into()
                } else {
                    "this endpoint needs a bearer token".into()
                },
                hint: a.how_to_authenticate(),
                principal: None,
                unavailable: false,
            };
            return a.refuse(r, &ReqLine::of(&req), remote).await;
        };
        match a.bearer(bearer).await {
            Ok(c) => {
                req.extensions_mut().insert(c);
                next.run(req).await
            }
            Err(r) => {
                let line = ReqLine::of(&req);
                a.refuse(r, &line, remote).await
            }
        }
    }

    fn how_to_authenticate(&self) -> String {
        let mut ways = vec![];
        if self.identity.oidc_configured() {
            ways.push("an ID token from `brig login`");
        }
        ways.push("an API token from `brig token create`");
        if self.static_token.is_some() {
            ways.push("the token in the server's [tcp] token_file");
        }
        format!(
            "send `Authorization: Bearer <token>` with {}",
            ways.join(", or ")
        )
    }

    /// Who a bearer credential belongs to.
    async fn bearer(&self, bearer: &str) -> Result<Caller, Refusal> {
        if let Some(t) = &self.static_token {
            if t.matches(bearer) {
                return Ok(Caller::static_token());
            }
        }
        if bearer.starts_with(brig_identity::TOKEN_PREFIX) {
            return self.api_token(bearer).await;
        }
        match &self.identity.oidc {
            Some(Ok(oidc)) => match oidc.authenticate(bearer).await {
                Ok(p) => Ok(Caller::from_principal(&p)),
                Err(e) => Err(oidc_refusal(&e)),
            },
            Some(Err(e)) => Err(Refusal {
                reason: "keys_unavailable",
                via: "oidc",
                message: format!("[identity.oidc] is not usable: {e}"),
                hint: "fix [identity.oidc] in brig.toml and restart brig serve".into(),
                principal: None,
                unavailable: true,
            }),
            None => Err(Refusal {
                reason: "unknown_token",
                via: if self.static_token.is_some() {
                    "static"
                } else {
                    "none"
                },
                message: "the bearer token is not valid".into(),
                hint: self.how_to_authenticate(),
                principal: None,
                unavailable: false,
            }),
        }
    }

    async fn api_token(&self, bearer: &str) -> Result<Caller, Refusal> {
        let refusal = |reason, message: String, principal| Refusal {
            reason,
            via: "token",
            message,
            hint: "issue a new one with `brig token create NAME` (after `brig login`)".into(),
            principal,
            unavailable: false,
        };
        let hash = ApiTokens::hash(bearer)
            .map_err(|e| refusal("malformed", e.to_string(), None))?
            .to_hex();
        let found = self
            .mgr
            .db()
            .run(move |s| s.api_token_by_hash(&hash))
            .await
            .map_err(|e| Refusal {
                reason: "store_unavailable",
                via: "token",
                message: format!("cannot look the API token up: {e}"),
                hint: "check the server's logs".into(),
                principal: None,
                unavailable: true,
            })?;
        let rec = found.as_ref().and_then(record_of);
        let owner = found.as_ref().map(|r| r.principal.clone());
        self.identity.tokens.verify(bearer, |_| rec).map_err(|e| {
            let reason = match &e {
                ApiTokenError::Malformed => "malformed",
                ApiTokenError::Unknown => "unknown_token",
                ApiTokenError::Expired(_) => "expired",
                ApiTokenError::Revoked(_) => "revoked",
                ApiTokenError::Refused(_) => "refused",
            };
            refusal(reason, e.to_string(), owner.clone())
        })?;
        // verify found the record, so the row is there.
        let row =
            found.ok_or_else(|| refusal("unknown_token", "unknown API token".into(), None))?;
        let stale = row
            .last_used
            .as_deref()
            .and_then(parse_time)
            .is_none_or(|t| OffsetDateTime::now_utc() - t >= TOUCH_EVERY);
        if stale {
            let id = row.id.clone();
            if let Err(e) = self
                .mgr
                .db()
                .run(move |s| s.touch_api_token(&id, &now()))
                .await
            {
                tracing::warn!(token = %row.id, error = %e, "cannot record the API token's use");
            }
        }
        Ok(Caller {
            id: row.principal.clone(),
            name: row.principal.clone(),
            groups: row.groups.clone(),
            roles: row.roles.clone(),
            via: Via::Token.as_str(),
        })
    }

    /// 401 (or 503) with the reason, journaled (rate-limited).
    async fn refuse(&self, r: Refusal, req: &ReqLine, remote: Option<SocketAddr>) -> Response {
        let admitted = self
            .identity
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit();
        match admitted {
            Some(suppressed) => {
                let mut ev =
                    Event::new("auth.failure", Outcome::Denied).details(serde_json::json!({
                        "reason": r.reason,
                        "via": r.via,
                        "method": req.method,
                        "path": req.path,
                        "remote": remote.map(|a| a.ip().to_string()),
                        "principal": r.principal,
                        "suppressed_before": suppressed,
                    }));
                ev.human = r.principal.clone();
                ev.rule = Some(format!("auth.{}", r.reason));
                if let Err(e) = self.mgr.db().write(move |tx| tx.append_event(&ev)).await {
                    tracing::error!(error = %e, "cannot journal an auth failure");
                }
            }
            None => {
                tracing::warn!(reason = r.reason, "auth failure not journaled (rate limit)")
            }
        }
        let kind = if r.unavailable {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Unauthorized
        };
        let mut resp =
            ApiError(Error::new(kind, r.message.clone()).hint(r.hint.clone())).into_response();
        if !r.unavailable {
            let v = if r.reason == "missing" {
                "Bearer realm=\"brig\"".to_string()
            } else {
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    r.reason
                )
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

fn oidc_refusal(e: &TokenError) -> Refusal {
    let unavailable = e.is_unavailable();
    Refusal {
        reason: e.reason(),
        via: "oidc",
        message: if unavailable {
            format!("cannot verify the ID token: {e}")
        } else {
            format!("the ID token was refused ({}): {e}", e.reason())
        },
        hint: if unavailable {
            "brig cannot reach the IdP and fails closed; try again later".into()
        } else {
            "log in again with `brig login`".into()
        },
        principal: None,
        unavailable,
    }
}

// ---------------------------------------------------------------- handlers

/// This module's routes, added to the API's table (`api::routes`).
pub(crate) fn routes(r: crate::api::Routes) -> crate::api::Routes {
    r.get("/v1/auth/login", crate::web_login::login)
        .get("/v1/auth/callback", crate::web_login::callback)
        .post("/v1/auth/logout", crate::web_login::logout)
        .get("/v1/whoami", whoami)
        .get("/v1/identity", identity_hint)
        .post("/v1/tokens", create_token)
        .get("/v1/tokens", list_tokens)
        .delete("/v1/tokens/{id}", revoke_token)
}

/// `GET /v1/whoami`: the caller.
pub async fn whoami(Extension(c): Extension<Caller>) -> axum::Json<Caller> {
    axum::Json(c)
}

/// `GET /v1/identity`: what a client needs to log in (no credential
/// needed: it names the IdP, which is public).
pub async fn identity_hint(State(st): State<AppState>) -> axum::Json<serde_json::Value> {
    let cfg = &st.mgr.config().identity;
    axum::Json(serde_json::json!({
        "oidc": cfg.oidc.as_ref().map(|o| serde_json::json!({
            "issuer": o.issuer,
            "client_id": o.client_id,
            "scopes": o.scopes,
        })),
        "tokens": {
            "default_ttl_secs": cfg.tokens.default_ttl.as_secs(),
            "max_ttl_secs": cfg.tokens.max_ttl.as_secs(),
        },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    /// `30d`, `12h`, or seconds; default `[identity.tokens] default_ttl`.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A token as listed: never its hash.
#[derive(Serialize)]
struct TokenView {
    #[serde(flatten)]
    row: ApiTokenRow,
    /// `active`, `expired` or `revoked`.
    state: &'static str,
}

fn view(row: ApiTokenRow) -> TokenView {
    let state = if row.revoked.is_some() {
        "revoked"
    } else if parse_time(&row.expires).is_none_or(|e| e <= OffsetDateTime::now_utc()) {
        "expired"
    } else {
        "active"
    };
    TokenView { row, state }
}

fn token_event(action: &str, caller: &Caller, row: &ApiTokenRow) -> Event {
    let mut ev = Event::new(action, Outcome::Success).details(serde_json::json!({
        "pat_id": row.id,
        "name": row.name,
        "principal": row.principal,
        "expires": row.expires,
        "by": caller.id,
        "via": caller.via,
    }));
    ev.human = Some(row.principal.clone());
    ev
}

/// `POST /v1/tokens`: a new API token for the caller, shown once.
pub async fn create_token(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(b): ApiJson<CreateToken>,
) -> Result<Response, ApiError> {
    // A token minting tokens would outlive its own expiry; the static
    // token is nobody's to own.
    if caller.via == "token" {
        return Err(ApiError(
            Error::new(
                ErrorKind::Denied,
                "an API token cannot issue API tokens (it could outlive its own expiry)",
            )
            .hint("issue tokens after `brig login`, or on the server's unix socket"),
        ));
    }
    let tokens = ApiTokens::new(&st.mgr.config().identity.tokens);
    let ttl = match b.ttl.as_deref() {
        None => tokens.default_ttl(),
        Some(t) => brig_core::units::parse_duration(t).map_err(|e| {
            ApiError(
                e.context("ttl")
                    .hint("e.g. \"30d\", \"12h\" (at most [identity.tokens] max_ttl)"),
            )
        })?,
    };
    let (plain, rec) = tokens
        .issue(&caller.id, &b.name, ttl)
        .map_err(|e| ApiError(Error::invalid(e.to_string())))?;
    let row = token_row(&rec, &caller);
    let ev = token_event("token.issue", &caller, &row);
    let stored = row.clone();
    st.mgr
        .db()
        .write(move |tx| tx.insert_api_token(&stored, &ev))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "id": row.id,
            "name": row.name,
            "principal": row.principal,
            "token": plain.expose(),
            "created": row.created,
            "expires": row.expires,
        })),
    )
        .into_response())
}

/// `GET /v1/tokens`: the caller's tokens (an admin's: everyone's).
pub async fn list_tokens(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let owner = (!caller.is_admin()).then(|| caller.id.clone());
    let rows = st
        .mgr
        .db()
        .run(move |s| s.api_tokens(owner.as_deref()))
        .await?;
    let views: Vec<TokenView> = rows.into_iter().map(view).collect();
    Ok(axum::Json(views).into_response())
}

/// `DELETE /v1/tokens/{id}`: revoke one (the owner's, or any for an admin).
pub async fn revoke_token(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError(
            Error::not_found(format!("no API token {id:?} of yours"))
                .hint("list yours with `brig token list`"),
        )
    };
    if id.len() > 64 || id.chars().any(|c| c.is_control()) {
        return Err(not_found());
    }
    let lookup = id.clone();
    let row = st
        .mgr
        .db()
        .run(move |s| s.api_token(&lookup))
        .await?
        .filter(|r| r.principal == caller.id || caller.is_admin())
        .ok_or_else(not_found)?;
    let at = now();
    let ev = token_event("token.revoke", &caller, &row);
    let (rid, rat) = (row.id.clone(), at.clone());
    st.mgr
        .db()
        .write(move |tx| tx.revoke_api_token(&rid, &rat, &ev))
        .await?;
    let lookup = row.id.clone();
    let row = st
        .mgr
        .db()
        .run(move |s| s.api_token(&lookup))
        .await?
        .ok_or_else(not_found)?;
    Ok(axum::Json(view(row)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_local_admin_names_another_human() {
        let admin = Caller::local_admin();
        assert_eq!(session_human(&admin, Some("ada")).unwrap(), "ada");
        assert_eq!(session_human(&admin, None).unwrap(), "local:root");
        let oidc = Caller {
            id: "oidc:https://idp#alice".into(),
            name: "alice@example.test".into(),
            groups: vec![],
            roles: vec!["admin".into()],
            via: "oidc",
        };
        assert!(!oidc.may_act_for_others(), "admin over TCP is still TCP");
        assert_eq!(session_human(&oidc, None).unwrap(), oidc.id);
        assert_eq!(session_human(&oidc, Some(&oidc.id)).unwrap(), oidc.id);
        let e = session_human(&oidc, Some("ada")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(e.message.contains("ada"), "{e}");
        let local_dev = Caller {
            id: "local:bob".into(),
            roles: vec!["developer".into()],
            via: "local",
            ..oidc.clone()
        };
        assert!(session_human(&local_dev, Some("ada")).is_err());
        assert!(session_human(&Caller::static_token(), Some("ada")).is_err());
    }

    #[test]
    fn the_failure_journal_is_rate_limited_and_counts_what_it_drops() {
        let mut l = FailureLimiter::new();
        let burst = FAILURE_BURST as usize;
        for _ in 0..burst {
            assert_eq!(l.admit(), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(l.admit(), None);
        }
        l.last -= Duration::from_secs(2);
        assert_eq!(
            l.admit(),
            Some(100),
            "the next one says how many were dropped"
        );
    }
}
