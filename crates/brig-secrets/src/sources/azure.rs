//! `kind = "azure_key_vault"`: `GET {vault_url}/secrets/{name}[/{version}]
//! ?api-version=7.4` with a bearer token from the Microsoft identity
//! platform's client-credentials grant (`POST {authority}/{tenant}/oauth2/
//! v2.0/token`, scope `https://vault.azure.net/.default`), cached until a
//! minute before it expires. Keys: `name` or `name/version`. A secret whose
//! `attributes.exp` has passed, or that is disabled, is refused as expired;
//! otherwise `exp` bounds the TTL.

use std::time::Duration;

use serde::Deserialize;

use crate::config::CredentialRef;
use crate::http::{self, Client, HttpConfig};
use crate::sources::oauth::{self, TokenCache};
use crate::{BoxFuture, Fetched, SecretError, SecretSource, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// `https://NAME.vault.azure.net`
    pub vault_url: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: CredentialRef,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Another cloud's Key Vault resource (`https://vault.azure.cn/.default`).
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn default_api_version() -> String {
    "7.4".into()
}
fn default_scope() -> String {
    "https://vault.azure.net/.default".into()
}

pub struct AzureSource {
    upstream: String,
    vault_url: String,
    token_url: String,
    client_id: String,
    client_secret: CredentialRef,
    api_version: String,
    scope: String,
    client: Client,
    tokens: TokenCache,
}

fn plain(what: &str, v: &str, extra: &str) -> Result<(), SecretError> {
    super::check_word(what, v, 127, extra)
}

impl AzureSource {
    pub fn new(name: &str, c: &AzureConfig) -> Result<Self, SecretError> {
        let section = format!("[secrets.sources.{name}]");
        let vault_url = http::check_base(
            &format!("{section} vault_url"),
            &c.vault_url,
            c.http.allow_http,
        )?;
        let authority = http::check_base(
            &format!("{section} authority"),
            &c.authority,
            c.http.allow_http,
        )?;
        plain(&format!("{section} tenant_id"), &c.tenant_id, ".")?;
        plain(&format!("{section} client_id"), &c.client_id, "")?;
        plain(&format!("{section} api_version"), &c.api_version, ".")?;
        c.client_secret
            .validate(&format!("{section} client_secret"))?;
        let upstream = format!("azure_key_vault source `{name}` ({vault_url})");
        Ok(AzureSource {
            client: Client::new(upstream.clone(), &c.http)?,
            upstream,
            vault_url,
            token_url: format!("{authority}/{}/oauth2/v2.0/token", c.tenant_id),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            api_version: c.api_version.clone(),
            scope: c.scope.clone(),
            tokens: TokenCache::default(),
        })
    }

    async fn login(&self) -> Result<(SecretValue, Duration), SecretError> {
        let secret = self
            .client_secret
            .read(&format!("{}: client_secret", self.upstream))?;
        let s = secret.expose_str().unwrap_or_default();
        let body = http::form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &self.client_id),
            ("client_secret", s),
            ("scope", &self.scope),
        ]);
        oauth::request_token(
            &self.client,
            &self.token_url,
            body,
            &format!(
                "client-credentials token request for client `{}`",
                self.client_id
            ),
            &[s],
        )
        .await
    }
}

impl SecretSource for AzureSource {
    fn kind(&self) -> &'static str {
        "azure_key_vault"
    }

    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            let (name, version) = match key.split_once('/') {
                Some((n, v)) => (n, Some(v)),
                None => (key, None),
            };
            plain(&format!("{}: key", self.upstream), name, "")?;
            if let Some(v) = version {
                plain(&format!("{}: version", self.upstream), v, "")?;
            }
            let path = match version {
                Some(v) => format!("secrets/{name}/{v}"),
                None => format!("secrets/{name}"),
            };
            let url = self.client.url(&format!(
                "{}/{path}?api-version={}",
                self.vault_url, self.api_version
            ))?;
            let (r, token) =
                oauth::bearer_get(&self.client, &self.tokens, &url, || self.login()).await?;
            let sent = [token.expose_str().unwrap_or_default()];
            let what = format!("get of `{path}`");
            if !r.ok() {
                let message = r.message(&sent);
                if r.status == 403 && message.contains("disabled") {
                    return Err(SecretError::Expired {
                        upstream: self.upstream.clone(),
                        key: key.to_string(),
                        detail: message,
                    });
                }
                if r.status == 403 {
                    return Err(SecretError::Rejected {
                        upstream: self.upstream.clone(),
                        what,
                        status: 403,
                        message: format!(
                            "{message} (client `{}` needs the Key Vault Secrets User role or a `get` access policy)",
                            self.client_id
                        ),
                    });
                }
                return Err(http::status_error(
                    &self.upstream,
                    &what,
                    Some(key),
                    &r,
                    &sent,
                ));
            }
            #[derive(Deserialize)]
            struct Bundle {
                value: SecretValue,
                #[serde(default)]
                attributes: Option<Attributes>,
            }
            #[derive(Deserialize)]
            struct Attributes {
                #[serde(default)]
                enabled: Option<bool>,
                #[serde(default)]
                exp: Option<i64>,
                #[serde(default)]
                nbf: Option<i64>,
            }
            let b: Bundle = r.json(&self.upstream)?;
            let now = crate::jwt::now_unix();
            let mut ttl = None;
            if let Some(a) = b.attributes {
                let expired = |detail: String| SecretError::Expired {
                    upstream: self.upstream.clone(),
                    key: key.to_string(),
                    detail,
                };
                if a.enabled == Some(false) {
                    return Err(expired("the secret is disabled".into()));
                }
                if a.nbf.is_some_and(|nbf| nbf > now) {
                    return Err(expired("the secret is not valid yet (nbf)".into()));
                }
                if let Some(exp) = a.exp {
                    if exp <= now {
                        return Err(expired(
                            "its expiry (attributes.exp) has passed; set a new version".into(),
                        ));
                    }
                    ttl = Some(Duration::from_secs((exp - now) as u64));
                }
            }
            Ok(Fetched {
                value: b.value,
                ttl,
                lease: None,
            })
        })
    }
}
