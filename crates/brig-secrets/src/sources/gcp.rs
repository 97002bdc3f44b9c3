//! `kind = "gcp_secret_manager"`: `GET {endpoint}/v1/projects/P/secrets/S/
//! versions/V:access`, authenticated with an OAuth2 access token that brig
//! gets from a service-account JSON key: an RS256 JWT assertion (iss = the
//! account, aud = its `token_uri`) POSTed to `token_uri` with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, cached until
//! a minute before it expires. Keys: `secret[@version]` (version `latest`
//! by default) in the configured project, or a full
//! `projects/P/secrets/S/versions/V`. The payload's CRC32C is checked.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use openssl::pkey::{PKey, Private};
use serde::Deserialize;
use serde_json::json;

use crate::http::{self, Client, HttpConfig};
use crate::jwt;
use crate::sources::oauth::{self, TokenCache};
use crate::{BoxFuture, Fetched, SecretError, SecretSource, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// The service account's JSON key (mode 0600).
    pub credentials_file: PathBuf,
    /// Default: the key's `project_id`.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Default: the key's `token_uri`.
    #[serde(default)]
    pub token_uri: Option<String>,
    #[serde(default = "default_scope")]
    pub scope: String,
    #[serde(default)]
    pub http: HttpConfig,
}

fn default_endpoint() -> String {
    "https://secretmanager.googleapis.com".into()
}
fn default_scope() -> String {
    "https://www.googleapis.com/auth/cloud-platform".into()
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    private_key: SecretValue,
    client_email: String,
    #[serde(default)]
    token_uri: Option<String>,
}

pub struct GcpSource {
    upstream: String,
    endpoint: String,
    project: String,
    token_uri: String,
    scope: String,
    email: String,
    key_id: Option<String>,
    key: PKey<Private>,
    client: Client,
    tokens: TokenCache,
}

fn check_segment(upstream: &str, what: &str, s: &str) -> Result<(), SecretError> {
    super::check_word(&format!("{upstream}: {what}"), s, 255, "_")
}

impl GcpSource {
    pub fn new(name: &str, c: &GcpConfig) -> Result<Self, SecretError> {
        let section = format!("[secrets.sources.{name}]");
        let bad_key = |e: String| SecretError::config(format!("{section} credentials_file: {e}"));
        let raw = crate::sources::file::read_private(&c.credentials_file).map_err(bad_key)?;
        // serde's message names the missing field, never a value.
        let kf: KeyFile = serde_json::from_slice(&raw)
            .map_err(|e| bad_key(format!("not a service-account JSON key: {e}")))?;
        drop(zeroize::Zeroizing::new(raw));
        if kf.kind != "service_account" {
            return Err(bad_key(format!(
                "`type` is `{}`; brig needs a `service_account` key",
                kf.kind
            )));
        }
        let key = jwt::rsa_key(
            &format!("{section} credentials_file private_key"),
            kf.private_key.expose(),
        )?;
        let project = c.project.clone().or(kf.project_id).ok_or_else(|| {
            SecretError::config(format!(
                "{section}: set `project` (the key has no project_id)"
            ))
        })?;
        let endpoint = http::check_base(
            &format!("{section} endpoint"),
            &c.endpoint,
            c.http.allow_http,
        )?;
        let token_uri = c
            .token_uri
            .clone()
            .or(kf.token_uri)
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        http::parse_url(
            &format!("{section} token_uri"),
            &token_uri,
            c.http.allow_http,
        )?;
        let upstream = format!("gcp_secret_manager source `{name}` ({endpoint})");
        check_segment(&upstream, "project", &project)?;
        Ok(GcpSource {
            client: Client::new(upstream.clone(), &c.http)?,
            upstream,
            endpoint,
            project,
            token_uri,
            scope: c.scope.clone(),
            email: kf.client_email,
            key_id: kf.private_key_id,
            key,
            tokens: TokenCache::default(),
        })
    }

    /// The JWT-bearer grant: a one-hour assertion for one token.
    async fn login(&self) -> Result<(SecretValue, Duration), SecretError> {
        let now = jwt::now_unix();
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.email,
            "scope": self.scope,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = SecretValue::from_string(jwt::sign_rs256(&self.key, &header, &claims)?);
        let a = assertion.expose_str().unwrap_or_default();
        let body = http::form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", a),
        ]);
        oauth::request_token(
            &self.client,
            &self.token_uri,
            body,
            &format!("token request for {}", self.email),
            &[a],
        )
        .await
    }

    /// `projects/P/secrets/S/versions/V` for a key.
    fn resource(&self, key: &str) -> Result<String, SecretError> {
        if let Some(rest) = key.strip_prefix("projects/") {
            let parts: Vec<&str> = rest.split('/').collect();
            if parts.len() == 5 && parts[1] == "secrets" && parts[3] == "versions" {
                check_segment(&self.upstream, "project", parts[0])?;
                check_segment(&self.upstream, "secret", parts[2])?;
                check_segment(&self.upstream, "version", parts[4])?;
                return Ok(key.to_string());
            }
            return Err(SecretError::config(format!(
                "{}: key `{key}` is not projects/P/secrets/S/versions/V",
                self.upstream
            )));
        }
        let (secret, version) = key.rsplit_once('@').unwrap_or((key, "latest"));
        check_segment(&self.upstream, "secret", secret)?;
        check_segment(&self.upstream, "version", version)?;
        Ok(format!(
            "projects/{}/secrets/{secret}/versions/{version}",
            self.project
        ))
    }
}

impl SecretSource for GcpSource {
    fn kind(&self) -> &'static str {
        "gcp_secret_manager"
    }

    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            let resource = self.resource(key)?;
            let url = self
                .client
                .url(&format!("{}/v1/{resource}:access", self.endpoint))?;
            let (r, token) =
                oauth::bearer_get(&self.client, &self.tokens, &url, || self.login()).await?;
            let sent = [token.expose_str().unwrap_or_default()];
            let what = format!("access to `{resource}`");
            if !r.ok() {
                let message = r.message(&sent);
                // Disabled or destroyed versions answer FAILED_PRECONDITION.
                if r.status == 400
                    && (message.contains("DISABLED") || message.contains("DESTROYED"))
                {
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
                            "{message} ({} needs roles/secretmanager.secretAccessor on the secret)",
                            self.email
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
            #[serde(rename_all = "camelCase")]
            struct Access {
                payload: Payload,
            }
            #[derive(Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Payload {
                data: SecretValue,
                #[serde(default)]
                data_crc32c: Option<String>,
            }
            let a: Access = r.json(&self.upstream)?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(a.payload.data.expose())
                .map_err(|_| SecretError::Protocol {
                    upstream: self.upstream.clone(),
                    detail: format!("{what}: payload.data is not base64"),
                })?;
            let value = SecretValue::new(data);
            if let Some(want) = a.payload.data_crc32c {
                let got = crc32c(value.expose());
                if want.parse::<u64>().ok() != Some(u64::from(got)) {
                    return Err(SecretError::Protocol {
                        upstream: self.upstream.clone(),
                        detail: format!(
                            "{what}: the payload's CRC32C does not match (corrupted in transit)"
                        ),
                    });
                }
            }
            Ok(Fetched {
                value,
                ttl: None,
                lease: None,
            })
        })
    }
}

/// CRC-32C (Castagnoli), bitwise: payloads are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
