//! `kind = "vault"`: HashiCorp Vault over its HTTP API.
//!
//! - `engine = "kv2"`: `GET /v1/<mount>/data/<path>[?version=N]`; key
//!   `path[@version][#field]`, the whole `data` object as JSON without a
//!   field.
//! - `engine = "dynamic"`: `GET /v1/<mount>/creds/<role>`, a fresh leased
//!   credential per fetch; key `role[#field]`. Leases are renewed with
//!   `PUT /v1/sys/leases/renew` and revoked with `PUT /v1/sys/leases/revoke`.
//!
//! brig's own Vault token comes from `auth`: a token (env or 0600 file),
//! AppRole (`POST /v1/auth/<mount>/login` with role_id + secret_id), or JWT
//! (`POST /v1/auth/<mount>/login` with role + the JWT of a file). A login
//! token is kept until two thirds of its TTL, renewed with
//! `auth/token/renew-self` when renewable, else (or when renewal fails)
//! brig logs in again; a 403 with a login token triggers one fresh login.

use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::CredentialRef;
use crate::http::{self, Client, HttpConfig, Response};
use crate::sources::{check_key, pick_field, split_field};
use crate::{BoxFuture, Fetched, Lease, SecretError, SecretSource, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`
    pub address: String,
    /// Vault Enterprise namespace (`X-Vault-Namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    pub auth: VaultAuth,
    #[serde(default)]
    pub engine: Engine,
    /// The secrets engine's mount: `secret` (KV v2's default), `database`...
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_mount() -> String {
    "secret".into()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    #[default]
    Kv2,
    Dynamic,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuth {
    /// A Vault token brig was given.
    Token { token: CredentialRef },
    /// AppRole login; the role_id is an identifier, the secret_id a secret.
    Approle {
        #[serde(default = "approle")]
        mount: String,
        role_id: String,
        secret_id: CredentialRef,
    },
    /// JWT/OIDC login with a JWT read from a 0600 file at every login (a
    /// workload identity token rotates).
    Jwt {
        #[serde(default = "jwt")]
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

fn approle() -> String {
    "approle".into()
}
fn jwt() -> String {
    "jwt".into()
}

struct Token {
    value: SecretValue,
    /// When to renew or log in again (two thirds of the TTL).
    refresh_at: Instant,
    /// When Vault will reject it.
    expires_at: Instant,
    renewable: bool,
}

pub struct VaultSource {
    upstream: String,
    address: String,
    namespace: Option<String>,
    auth: VaultAuth,
    engine: Engine,
    mount: String,
    client: Client,
    token: tokio::sync::Mutex<Option<Token>>,
}

/// A mount or auth mount: path segments of safe characters.
fn check_mount(name: &str, what: &str, m: &str) -> Result<(), SecretError> {
    check_key(&format!("[secrets.sources.{name}] {what}"), m, true, "")
}

impl VaultSource {
    pub fn new(name: &str, c: &VaultConfig) -> Result<Self, SecretError> {
        let address = http::check_base(
            &format!("[secrets.sources.{name}] address"),
            &c.address,
            c.http.allow_http,
        )?;
        check_mount(name, "mount", &c.mount)?;
        match &c.auth {
            VaultAuth::Token { token } => {
                token.validate(&format!("[secrets.sources.{name}.auth] token"))?
            }
            VaultAuth::Approle {
                mount,
                role_id,
                secret_id,
            } => {
                check_mount(name, "auth.mount", mount)?;
                if role_id.is_empty() {
                    return Err(SecretError::config(format!(
                        "[secrets.sources.{name}.auth] role_id is empty"
                    )));
                }
                secret_id.validate(&format!("[secrets.sources.{name}.auth] secret_id"))?;
            }
            VaultAuth::Jwt { mount, role, .. } => {
                check_mount(name, "auth.mount", mount)?;
                if role.is_empty() {
                    return Err(SecretError::config(format!(
                        "[secrets.sources.{name}.auth] role is empty"
                    )));
                }
            }
        }
        let upstream = format!("vault source `{name}` ({address})");
        Ok(VaultSource {
            client: Client::new(upstream.clone(), &c.http)?,
            upstream,
            address,
            namespace: c.namespace.clone().filter(|n| !n.is_empty()),
            auth: c.auth.clone(),
            engine: c.engine,
            mount: c.mount.trim_matches('/').to_string(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn auth_what(&self) -> String {
        match &self.auth {
            VaultAuth::Token { token } => format!("the token from {}", token.describe()),
            VaultAuth::Approle { mount, role_id, .. } => {
                format!("AppRole login (auth/{mount}, role_id `{role_id}`)")
            }
            VaultAuth::Jwt { mount, role, .. } => {
                format!("JWT login (auth/{mount}, role `{role}`)")
            }
        }
    }

    /// One request to `/v1/<path>`.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&SecretValue>,
        body: Option<serde_json::Value>,
    ) -> Result<Response, SecretError> {
        let url = self.client.url(&format!("{}/v1/{path}", self.address))?;
        let tok = match token {
            Some(t) => Some(t.expose_str().ok_or_else(|| {
                SecretError::config(format!(
                    "{}: {} is not text",
                    self.upstream,
                    self.auth_what()
                ))
            })?),
            None => None,
        };
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = tok {
            headers.push(("x-vault-token", t));
        }
        if let Some(ns) = &self.namespace {
            headers.push(("x-vault-namespace", ns));
        }
        let body = match body {
            Some(b) => {
                headers.push(("content-type", "application/json"));
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        self.client.send(method, &url, &headers, body).await
    }

    /// Logs in (or reads the static token).
    async fn login(&self) -> Result<Token, SecretError> {
        let what = self.auth_what();
        let (path, body, sent) = match &self.auth {
            VaultAuth::Token { token } => {
                let value = token.read(&format!("{}: {what}", self.upstream))?;
                // A static token: re-read on every request, so a rotated
                // file or variable takes effect at once.
                let now = Instant::now();
                return Ok(Token {
                    value,
                    refresh_at: now,
                    expires_at: now + Duration::from_secs(3600),
                    renewable: false,
                });
            }
            VaultAuth::Approle {
                mount,
                role_id,
                secret_id,
            } => {
                let sid = secret_id.read(&format!("{}: AppRole secret_id", self.upstream))?;
                let sid_str = sid.expose_str().unwrap_or_default().to_string();
                (
                    format!("auth/{mount}/login"),
                    json!({"role_id": role_id, "secret_id": sid_str}),
                    sid,
                )
            }
            VaultAuth::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                let mut jwt = crate::sources::file::read_private(jwt_file).map_err(|e| {
                    SecretError::config(format!("{}: JWT login: {e}", self.upstream))
                })?;
                crate::sources::file::trim_newline(&mut jwt);
                let jwt = SecretValue::new(jwt);
                let jwt_str = jwt.expose_str().unwrap_or_default().to_string();
                (
                    format!("auth/{mount}/login"),
                    json!({"role": role, "jwt": jwt_str}),
                    jwt,
                )
            }
        };
        let sent_s = sent.expose_str().unwrap_or_default();
        let r = self.raw(Method::POST, &path, None, Some(body)).await?;
        if !r.ok() {
            let message = r.message(&[sent_s]);
            return Err(match r.status {
                400 | 401 | 403 => SecretError::Auth {
                    upstream: self.upstream.clone(),
                    message: format!(
                        "{what}: HTTP {}: {message} (check the credentials and that the role exists)",
                        r.status
                    ),
                },
                _ => http::status_error(&self.upstream, &what, None, &r, &[sent_s]),
            });
        }
        #[derive(Deserialize)]
        struct Login {
            auth: Option<AuthBlock>,
        }
        #[derive(Deserialize)]
        struct AuthBlock {
            client_token: SecretValue,
            #[serde(default)]
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
        }
        let auth = r
            .json::<Login>(&self.upstream)?
            .auth
            .ok_or_else(|| SecretError::Protocol {
                upstream: self.upstream.clone(),
                detail: format!("{what}: the login answer has no `auth` block"),
            })?;
        Ok(token_from(
            auth.client_token,
            auth.lease_duration,
            auth.renewable,
        ))
    }

    /// `auth/token/renew-self`; the new token state, or `None` when Vault
    /// would not renew (brig then logs in again).
    async fn renew_self(&self, t: &Token) -> Option<Token> {
        let r = self
            .raw(
                Method::POST,
                "auth/token/renew-self",
                Some(&t.value),
                Some(json!({})),
            )
            .await
            .ok()?;
        if !r.ok() {
            tracing::info!(upstream = %self.upstream, status = r.status, "vault token renewal refused; logging in again");
            return None;
        }
        #[derive(Deserialize)]
        struct Renew {
            auth: RenewAuth,
        }
        #[derive(Deserialize)]
        struct RenewAuth {
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
        }
        let a = r.json::<Renew>(&self.upstream).ok()?.auth;
        Some(token_from(t.value.clone(), a.lease_duration, a.renewable))
    }

    /// A token good for the next request.
    async fn token(&self) -> Result<SecretValue, SecretError> {
        let mut slot = self.token.lock().await;
        let now = Instant::now();
        if let Some(t) = slot.as_ref() {
            if now < t.refresh_at {
                return Ok(t.value.clone());
            }
            if t.renewable && now < t.expires_at {
                if let Some(n) = self.renew_self(t).await {
                    let v = n.value.clone();
                    *slot = Some(n);
                    return Ok(v);
                }
            }
        }
        *slot = None;
        let t = self.login().await?;
        let v = t.value.clone();
        if !matches!(self.auth, VaultAuth::Token { .. }) {
            *slot = Some(t);
        }
        Ok(v)
    }

    /// A request with brig's token; a 403 with a login token (revoked or
    /// expired early) is retried once after a fresh login.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(Response, SecretValue), SecretError> {
        let token = self.token().await?;
        let r = self
            .raw(method.clone(), path, Some(&token), body.clone())
            .await?;
        if r.status == 403 && !matches!(self.auth, VaultAuth::Token { .. }) {
            *self.token.lock().await = None;
            let token = self.token().await?;
            let r = self.raw(method, path, Some(&token), body).await?;
            return Ok((r, token));
        }
        Ok((r, token))
    }

    fn refused(&self, what: &str, key: &str, r: &Response, token: &SecretValue) -> SecretError {
        let sent = [token.expose_str().unwrap_or_default()];
        if r.status == 403 {
            return SecretError::Rejected {
                upstream: self.upstream.clone(),
                what: what.to_string(),
                status: 403,
                message: format!(
                    "{} (the policies of {} must allow this path)",
                    r.message(&sent),
                    self.auth_what()
                ),
            };
        }
        if r.status == 503 {
            return SecretError::Unavailable {
                upstream: self.upstream.clone(),
                detail: format!(
                    "{what}: HTTP 503: {} (sealed or in standby?)",
                    r.message(&sent)
                ),
            };
        }
        http::status_error(&self.upstream, what, Some(key), r, &sent)
    }

    async fn fetch_kv(&self, key: &str) -> Result<Fetched, SecretError> {
        let (path, field) = split_field(key);
        let (path, version) = match path.rsplit_once('@') {
            Some((p, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => (p, Some(v)),
            _ => (path, None),
        };
        check_key(&self.upstream, path, true, "")?;
        let mut api = format!("{}/data/{path}", self.mount);
        if let Some(v) = version {
            api.push_str(&format!("?version={v}"));
        }
        let what = format!("read of `{}/{path}`", self.mount);
        let (r, token) = self.call(Method::GET, &api, None).await?;
        #[derive(Deserialize)]
        struct Kv {
            data: Option<KvData>,
        }
        #[derive(Deserialize)]
        struct KvData {
            data: Option<serde_json::Value>,
            #[serde(default)]
            metadata: Option<KvMeta>,
        }
        #[derive(Deserialize)]
        struct KvMeta {
            #[serde(default)]
            deletion_time: String,
            #[serde(default)]
            destroyed: bool,
        }
        if r.status == 404 {
            // A deleted or destroyed version answers 404 with its metadata.
            if let Ok(Kv {
                data: Some(KvData {
                    metadata: Some(m), ..
                }),
            }) = r.json::<Kv>(&self.upstream)
            {
                if m.destroyed || !m.deletion_time.is_empty() {
                    return Err(SecretError::Expired {
                        upstream: self.upstream.clone(),
                        key: key.to_string(),
                        detail: format!(
                            "this version was {} in Vault; write a new version or pin another with @version",
                            if m.destroyed { "destroyed" } else { "deleted" }
                        ),
                    });
                }
            }
        }
        if !r.ok() {
            return Err(self.refused(&what, key, &r, &token));
        }
        let data = r
            .json::<Kv>(&self.upstream)?
            .data
            .and_then(|d| d.data)
            .ok_or_else(|| SecretError::Protocol {
                upstream: self.upstream.clone(),
                detail: format!(
                    "{what}: no `data.data` in the answer (is `{}` a KV v2 mount?)",
                    self.mount
                ),
            })?;
        Ok(Fetched {
            value: pick_field(&self.upstream, key, data, field)?,
            ttl: None,
            lease: None,
        })
    }

    async fn fetch_dynamic(&self, key: &str) -> Result<Fetched, SecretError> {
        let (role, field) = split_field(key);
        check_key(&self.upstream, role, false, "")?;
        let what = format!("credentials of `{}/creds/{role}`", self.mount);
        let (r, token) = self
            .call(Method::GET, &format!("{}/creds/{role}", self.mount), None)
            .await?;
        if !r.ok() {
            return Err(self.refused(&what, key, &r, &token));
        }
        #[derive(Deserialize)]
        struct Creds {
            #[serde(default)]
            lease_id: String,
            #[serde(default)]
            lease_duration: u64,
            #[serde(default)]
            renewable: bool,
            data: Option<serde_json::Value>,
        }
        let c: Creds = r.json(&self.upstream)?;
        let Some(data) = c.data else {
            return Err(SecretError::Protocol {
                upstream: self.upstream.clone(),
                detail: format!("{what}: the answer has no `data`"),
            });
        };
        if c.lease_id.is_empty() {
            // Not a leased secret: nothing brig could revoke, so refuse
            // to treat it as a dynamic one.
            return Err(SecretError::Protocol {
                upstream: self.upstream.clone(),
                detail: format!(
                    "{what}: the answer has no lease_id; is `{}` a dynamic secrets engine?",
                    self.mount
                ),
            });
        }
        let duration = Duration::from_secs(c.lease_duration);
        Ok(Fetched {
            value: pick_field(&self.upstream, key, data, field)?,
            ttl: Some(duration),
            lease: Some(Lease {
                id: c.lease_id,
                duration,
                renewable: c.renewable,
            }),
        })
    }
}

fn token_from(value: SecretValue, lease_secs: u64, renewable: bool) -> Token {
    let now = Instant::now();
    // lease_duration 0 is a root or periodic-less token without expiry.
    let ttl = if lease_secs == 0 {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_secs(lease_secs)
    };
    Token {
        value,
        refresh_at: now + ttl * 2 / 3,
        expires_at: now + ttl,
        renewable,
    }
}

fn check_lease_id(upstream: &str, lease: &Lease) -> Result<(), SecretError> {
    check_key(upstream, &lease.id, true, "")
}

impl SecretSource for VaultSource {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            match self.engine {
                Engine::Kv2 => self.fetch_kv(key).await,
                Engine::Dynamic => self.fetch_dynamic(key).await,
            }
        })
    }

    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        increment: Duration,
    ) -> BoxFuture<'a, Result<Lease, SecretError>> {
        Box::pin(async move {
            check_lease_id(&self.upstream, lease)?;
            let what = format!("renewal of lease `{}`", lease.id);
            let (r, token) = self
                .call(
                    Method::PUT,
                    "sys/leases/renew",
                    Some(json!({"lease_id": lease.id, "increment": increment.as_secs()})),
                )
                .await?;
            if r.status == 400 {
                // "lease not found" / "lease is not renewable" / expired
                return Err(SecretError::Expired {
                    upstream: self.upstream.clone(),
                    key: lease.id.clone(),
                    detail: r.message(&[token.expose_str().unwrap_or_default()]),
                });
            }
            if !r.ok() {
                return Err(self.refused(&what, &lease.id, &r, &token));
            }
            #[derive(Deserialize)]
            struct Renewed {
                lease_id: String,
                lease_duration: u64,
                #[serde(default)]
                renewable: bool,
            }
            let n: Renewed = r.json(&self.upstream)?;
            Ok(Lease {
                id: n.lease_id,
                duration: Duration::from_secs(n.lease_duration),
                renewable: n.renewable,
            })
        })
    }

    fn revoke<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            check_lease_id(&self.upstream, lease)?;
            let what = format!("revocation of lease `{}`", lease.id);
            let (r, token) = self
                .call(
                    Method::PUT,
                    "sys/leases/revoke",
                    Some(json!({"lease_id": lease.id})),
                )
                .await?;
            if !r.ok() {
                return Err(self.refused(&what, &lease.id, &r, &token));
            }
            Ok(())
        })
    }
}
