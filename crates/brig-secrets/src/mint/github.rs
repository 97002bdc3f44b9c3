//! `kind = "github_app"`: GitHub App installation tokens for exactly one
//! repository and only the requested permissions.
//!
//! brig signs an app JWT (RS256, `iss` = the app id, `iat` = now - 60 s for
//! clock skew, `exp` = now + 9 min: GitHub refuses more than 10) and
//! `POST {api}/app/installations/{id}/access_tokens` with
//! `{"repositories": [name], "permissions": {...}}`. GitHub's tokens live
//! one hour; brig revokes them (`DELETE {api}/installation/token`) when
//! the requested TTL ends, or at session end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use openssl::pkey::{PKey, Private};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::config::TtlBounds;
use crate::http::{self, Client, HttpConfig};
use crate::mint::{parse_rfc3339, rfc3339, Minted, Minter, Revocation, ScopeRequest};
use crate::{jwt, BoxFuture, SecretError, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GithubAppConfig {
    /// The App's id (or client id), the JWT's `iss`.
    #[serde(deserialize_with = "id_string")]
    pub app_id: String,
    /// The App's private key (PEM, mode 0600).
    pub private_key_file: PathBuf,
    pub installation_id: u64,
    /// `https://api.github.com`, or `https://HOST/api/v3` (Enterprise Server).
    #[serde(default = "default_api")]
    pub api: String,
    /// The account the installation belongs to; a request for another
    /// owner's repository is denied before GitHub is asked.
    #[serde(default)]
    pub owner: Option<String>,
    /// The most each permission may be (`contents = "write"`, ...). A
    /// request for a permission not listed, or above its level, is denied.
    pub permissions: BTreeMap<String, String>,
    /// Default TTL of this minter's tokens (within `[secrets.ttl]`).
    #[serde(default, with = "crate::config::duration::option")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_api() -> String {
    "https://api.github.com".into()
}

fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        N(u64),
        S(String),
    }
    Ok(match Id::deserialize(d)? {
        Id::N(n) => n.to_string(),
        Id::S(s) => s,
    })
}

/// `read` < `write` < `admin`; anything else is not a level.
fn level(v: &str) -> Option<u8> {
    match v {
        "read" => Some(1),
        "write" => Some(2),
        "admin" => Some(3),
        _ => None,
    }
}

pub struct GithubAppMinter {
    name: String,
    upstream: String,
    app_id: String,
    key: PKey<Private>,
    installation_id: u64,
    api: String,
    owner: Option<String>,
    allowed: BTreeMap<String, String>,
    ttl: TtlBounds,
    client: Client,
}

fn repo_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl GithubAppMinter {
    pub fn new(name: &str, c: &GithubAppConfig, bounds: TtlBounds) -> Result<Self, SecretError> {
        let section = format!("[secrets.minters.{name}]");
        let api = http::check_base(&format!("{section} api"), &c.api, c.http.allow_http)?;
        let pem = crate::sources::file::read_private(&c.private_key_file)
            .map_err(|e| SecretError::config(format!("{section} private_key_file: {e}")))?;
        let pem = zeroize::Zeroizing::new(pem);
        let key = jwt::rsa_key(&format!("{section} private_key_file"), &pem)?;
        if c.permissions.is_empty() {
            return Err(SecretError::config(format!(
                "{section}: `permissions` is empty; list the most each permission may be, e.g. contents = \"write\""
            )));
        }
        for (p, l) in &c.permissions {
            if level(l).is_none() {
                return Err(SecretError::config(format!(
                    "{section} permissions.{p} = `{l}`: use read, write or admin"
                )));
            }
        }
        let ttl = TtlBounds {
            default: bounds.resolve(&section, c.ttl)?,
            ..bounds
        };
        let upstream = format!("github_app minter `{name}` ({api})");
        Ok(GithubAppMinter {
            client: Client::new(upstream.clone(), &c.http)?,
            name: name.to_string(),
            upstream,
            app_id: c.app_id.clone(),
            key,
            installation_id: c.installation_id,
            api,
            owner: c.owner.clone(),
            allowed: c.permissions.clone(),
            ttl,
        })
    }

    fn deny(&self, detail: String) -> SecretError {
        SecretError::Denied {
            minter: format!("github_app minter `{}`", self.name),
            detail,
        }
    }

    /// The app JWT: valid 10 minutes at most, so 60 s back and 9 min ahead.
    fn app_jwt(&self) -> Result<SecretValue, SecretError> {
        let now = jwt::now_unix();
        let claims = json!({"iat": now - 60, "exp": now + 9 * 60, "iss": self.app_id});
        jwt::sign_rs256(&self.key, &json!({"alg": "RS256", "typ": "JWT"}), &claims)
            .map(SecretValue::from_string)
    }

    /// Checks the request against the config: one repository of the
    /// configured owner, permissions no higher than allowed.
    fn check(&self, req: &ScopeRequest) -> Result<String, SecretError> {
        let repo = req.repository.as_deref().ok_or_else(|| {
            self.deny(format!(
                "scope `{}` names no repository; a token is minted for exactly one",
                req.scope
            ))
        })?;
        let (owner, name) = repo
            .split_once('/')
            .filter(|(o, n)| repo_part_ok(o) && repo_part_ok(n))
            .ok_or_else(|| self.deny(format!("repository `{repo}` is not owner/name")))?;
        if let Some(want) = &self.owner {
            if !want.eq_ignore_ascii_case(owner) {
                return Err(self.deny(format!(
                    "repository `{repo}` is not under `{want}`, the installation's account"
                )));
            }
        }
        if req.permissions.is_empty() {
            // Without permissions GitHub grants all of the installation's.
            return Err(self.deny(format!(
                "scope `{}` asks for no permissions; name each one",
                req.scope
            )));
        }
        for (p, l) in &req.permissions {
            let asked = level(l).ok_or_else(|| {
                self.deny(format!(
                    "permission {p} = `{l}` is not read, write or admin"
                ))
            })?;
            match self.allowed.get(p).and_then(|a| level(a)) {
                Some(max) if asked <= max => {}
                Some(_) => {
                    return Err(self.deny(format!(
                        "permission {p} = {l} is above the allowed {} (permissions in [secrets.minters.{}])",
                        self.allowed[p], self.name
                    )))
                }
                None => {
                    return Err(self.deny(format!(
                        "permission {p} is not allowed (add it to permissions in [secrets.minters.{}])",
                        self.name
                    )))
                }
            }
        }
        Ok(name.to_string())
    }
}

impl Minter for GithubAppMinter {
    fn kind(&self) -> &'static str {
        "github_app"
    }

    fn mint<'a>(&'a self, req: &'a ScopeRequest) -> BoxFuture<'a, Result<Minted, SecretError>> {
        Box::pin(async move {
            let ttl = self
                .ttl
                .resolve(&format!("github_app minter `{}`", self.name), req.ttl)?;
            let repo_name = self.check(req)?;
            let app_jwt = self.app_jwt()?;
            let jwt_s = app_jwt.expose_str().unwrap_or_default();
            let url = self.client.url(&format!(
                "{}/app/installations/{}/access_tokens",
                self.api, self.installation_id
            ))?;
            let body = json!({"repositories": [repo_name], "permissions": req.permissions});
            let auth = SecretValue::from_string(format!("Bearer {jwt_s}"));
            let r = self
                .client
                .send(
                    Method::POST,
                    &url,
                    &[
                        ("authorization", auth.expose_str().unwrap_or_default()),
                        ("accept", "application/vnd.github+json"),
                        ("x-github-api-version", "2022-11-28"),
                        ("content-type", "application/json"),
                    ],
                    body.to_string().into_bytes(),
                )
                .await?;
            let what = format!(
                "installation token for `{}` (installation {})",
                req.repository.as_deref().unwrap_or_default(),
                self.installation_id
            );
            if r.status == 401 {
                return Err(SecretError::Auth {
                    upstream: self.upstream.clone(),
                    message: format!(
                        "{what}: HTTP 401: {} (check app_id, the private key and the clock)",
                        r.message(&[jwt_s])
                    ),
                });
            }
            if !r.ok() {
                return Err(http::status_error(
                    &self.upstream,
                    &what,
                    None,
                    &r,
                    &[jwt_s],
                ));
            }
            #[derive(Deserialize)]
            struct Granted {
                token: SecretValue,
                expires_at: String,
                #[serde(default)]
                permissions: BTreeMap<String, String>,
                #[serde(default)]
                repositories: Vec<Repo>,
                #[serde(default)]
                repository_selection: Option<String>,
            }
            #[derive(Deserialize)]
            struct Repo {
                #[serde(default)]
                full_name: Option<String>,
                name: String,
            }
            let g: Granted = r.json(&self.upstream)?;
            let upstream_exp = parse_rfc3339(&self.upstream, "expires_at", &g.expires_at)?;
            let expires_at = upstream_exp.min(OffsetDateTime::now_utc() + ttl);
            let minted = Minted {
                value: g.token,
                expires_at,
                revocation: Revocation::Token,
                granted: json!({
                    "minter": self.name,
                    "kind": "github_app",
                    "scope": req.scope,
                    "installation_id": self.installation_id,
                    "repositories": g.repositories.iter().map(|r| r.full_name.clone().unwrap_or_else(|| r.name.clone())).collect::<Vec<_>>(),
                    "repository_selection": g.repository_selection,
                    "permissions": g.permissions,
                    "upstream_expires_at": g.expires_at,
                    "expires_at": rfc3339(expires_at),
                }),
            };
            // GitHub adds `metadata: read` to every token; anything else
            // beyond the request, or another repository, and the token is
            // revoked at once.
            let wider = g.permissions.iter().find(|(p, l)| {
                let asked = req.permissions.get(*p).and_then(|a| level(a));
                !(asked.is_some_and(|a| level(l).is_some_and(|g| g <= a))
                    || (p.as_str() == "metadata" && l.as_str() == "read"))
            });
            let repos_ok = g.repositories.len() == 1
                && g.repositories[0].name.eq_ignore_ascii_case(&repo_name);
            if wider.is_some() || !repos_ok {
                let _ = self.revoke(&minted).await;
                return Err(SecretError::Protocol {
                    upstream: self.upstream.clone(),
                    detail: format!(
                        "{what}: GitHub granted more than asked ({}); the token was revoked",
                        match wider {
                            Some((p, l)) => format!("permission {p} = {l}"),
                            None => format!("{} repositories", g.repositories.len()),
                        }
                    ),
                });
            }
            Ok(minted)
        })
    }

    fn revoke<'a>(&'a self, minted: &'a Minted) -> BoxFuture<'a, Result<(), SecretError>> {
        Box::pin(async move {
            let token = minted.value.expose_str().unwrap_or_default();
            let auth = SecretValue::from_string(format!("Bearer {token}"));
            let url = self
                .client
                .url(&format!("{}/installation/token", self.api))?;
            let r = self
                .client
                .send(
                    Method::DELETE,
                    &url,
                    &[
                        ("authorization", auth.expose_str().unwrap_or_default()),
                        ("accept", "application/vnd.github+json"),
                        ("x-github-api-version", "2022-11-28"),
                    ],
                    Vec::new(),
                )
                .await?;
            // 401: already revoked or expired, which is the goal.
            if r.ok() || r.status == 401 {
                return Ok(());
            }
            Err(http::status_error(
                &self.upstream,
                "token revocation",
                None,
                &r,
                &[token],
            ))
        })
    }
}
