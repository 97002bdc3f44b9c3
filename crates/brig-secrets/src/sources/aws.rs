//! `kind = "aws_ssm"` (Parameter Store `GetParameter`, decrypted) and
//! `kind = "aws_secrets_manager"` (`GetSecretValue`), over AWS's JSON 1.1
//! protocol: `POST /` with `X-Amz-Target`, `Content-Type:
//! application/x-amz-json-1.1` and a SigV4 `Authorization` header
//! (brig-sigv4). Keys: SSM a parameter name (`/app/db/password`, or
//! `name:3` for a version, as SSM takes it); Secrets Manager a secret id or
//! ARN, `#field` picks a field of a JSON secret.

use base64::Engine;
use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use crate::config::CredentialRef;
use crate::http::{self, Client, HttpConfig, Response, Url};
use crate::sources::{pick_field, split_field};
use crate::{BoxFuture, Fetched, SecretError, SecretSource, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// `us-east-1`
    pub region: String,
    /// Default `https://ssm.<region>.amazonaws.com` /
    /// `https://secretsmanager.<region>.amazonaws.com` (a VPC endpoint or a
    /// FIPS endpoint goes here).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials: AwsCredentials,
    /// SSM only: decrypt SecureString parameters (`WithDecryption`).
    #[serde(default = "yes")]
    pub with_decryption: bool,
    #[serde(default)]
    pub http: HttpConfig,
}

fn yes() -> bool {
    true
}

/// brig's own AWS credentials, read at each request (so rotated ones are
/// used at once). Defaults: the standard `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and (when set) `AWS_SESSION_TOKEN` variables.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AwsCredentials {
    #[serde(default = "default_akid")]
    pub access_key_id: CredentialRef,
    #[serde(default = "default_secret")]
    pub secret_access_key: CredentialRef,
    /// Unset: `AWS_SESSION_TOKEN` if that variable is set. Set: required.
    #[serde(default)]
    pub session_token: Option<CredentialRef>,
}

fn default_akid() -> CredentialRef {
    CredentialRef::env("AWS_ACCESS_KEY_ID")
}
fn default_secret() -> CredentialRef {
    CredentialRef::env("AWS_SECRET_ACCESS_KEY")
}

impl Default for AwsCredentials {
    fn default() -> Self {
        AwsCredentials {
            access_key_id: default_akid(),
            secret_access_key: default_secret(),
            session_token: None,
        }
    }
}

impl AwsCredentials {
    pub(crate) fn validate(&self, what: &str) -> Result<(), SecretError> {
        self.access_key_id
            .validate(&format!("{what} access_key_id"))?;
        self.secret_access_key
            .validate(&format!("{what} secret_access_key"))?;
        if let Some(t) = &self.session_token {
            t.validate(&format!("{what} session_token"))?;
        }
        Ok(())
    }

    pub(crate) fn resolve(&self, what: &str) -> Result<brig_sigv4::Credentials, SecretError> {
        let text = |v: SecretValue, which: &str| {
            v.expose_str()
                .map(str::to_string)
                .ok_or_else(|| SecretError::config(format!("{what}: the AWS {which} is not text")))
        };
        let akid = text(
            self.access_key_id
                .read(&format!("{what}: AWS access key id"))?,
            "access key id",
        )?;
        let secret = text(
            self.secret_access_key
                .read(&format!("{what}: AWS secret access key"))?,
            "secret access key",
        )?;
        let session_token = match &self.session_token {
            Some(t) => Some(text(
                t.read(&format!("{what}: AWS session token"))?,
                "session token",
            )?),
            None => std::env::var("AWS_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        Ok(brig_sigv4::Credentials {
            access_key_id: akid,
            secret_access_key: secret,
            session_token,
        })
    }
}

/// Sends one SigV4-signed POST. `extra` headers are signed too. The
/// returned strings are what an error message must not repeat.
pub(crate) async fn signed_post(
    client: &Client,
    url: &Url,
    region: &str,
    service: &str,
    creds: &brig_sigv4::Credentials,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, SecretError> {
    let date = brig_sigv4::amz_date(time::OffsetDateTime::now_utc());
    let mut headers: Vec<(&str, &str)> = vec![("host", &url.authority), ("x-amz-date", &date)];
    headers.extend_from_slice(extra);
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token", t));
    }
    let signed = brig_sigv4::sign(
        "POST",
        url.path(),
        "",
        &headers,
        &body,
        creds,
        region,
        service,
        &date,
    );
    // `host` goes out as the client's own Host header.
    let mut send: Vec<(&str, &str)> = headers.into_iter().filter(|(k, _)| *k != "host").collect();
    send.push(("authorization", &signed.authorization));
    client.send(Method::POST, url, &send, body).await
}

/// AWS's error `__type`s that mean brig's own credentials are wrong.
const AUTH_ERRORS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationToken",
];

/// Maps an AWS error answer (JSON `__type` or XML `Code`).
pub(crate) fn aws_error(
    upstream: &str,
    what: &str,
    key: Option<&str>,
    code: &str,
    r: &Response,
    message: String,
) -> SecretError {
    let upstream_s = upstream.to_string();
    if AUTH_ERRORS.contains(&code) {
        return SecretError::Auth {
            upstream: upstream_s,
            message: format!(
                "{what}: {message} (check brig's AWS credentials, their region and the clock)"
            ),
        };
    }
    if let Some(key) = key {
        if code.contains("NotFound") {
            return SecretError::NotFound {
                upstream: upstream_s,
                key: key.to_string(),
                message,
            };
        }
    }
    if code.contains("AccessDenied") {
        return SecretError::Rejected {
            upstream: upstream_s,
            what: what.to_string(),
            status: r.status,
            message: format!("{message} (brig's IAM identity needs permission for this call)"),
        };
    }
    if r.status >= 500 || code.contains("InternalServer") || code.contains("Throttl") {
        return SecretError::Unavailable {
            upstream: upstream_s,
            detail: format!("{what}: HTTP {}: {message}", r.status),
        };
    }
    SecretError::Rejected {
        upstream: upstream_s,
        what: what.to_string(),
        status: r.status,
        message,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Ssm,
    SecretsManager,
}

impl Service {
    fn signing_name(self) -> &'static str {
        match self {
            Service::Ssm => "ssm",
            Service::SecretsManager => "secretsmanager",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Service::Ssm => "aws_ssm",
            Service::SecretsManager => "aws_secrets_manager",
        }
    }
}

pub struct AwsSource {
    upstream: String,
    service: Service,
    region: String,
    endpoint: String,
    credentials: AwsCredentials,
    with_decryption: bool,
    client: Client,
}

pub(crate) fn check_region(what: &str, region: &str) -> Result<(), SecretError> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SecretError::config(format!(
            "{what} region `{region}` is not an AWS region name (e.g. us-east-1)"
        )))
    }
}

impl AwsSource {
    pub fn new(name: &str, service: Service, c: &AwsConfig) -> Result<Self, SecretError> {
        let section = format!("[secrets.sources.{name}]");
        check_region(&section, &c.region)?;
        c.credentials.validate(&format!("{section} credentials"))?;
        let endpoint = match &c.endpoint {
            Some(e) => e.clone(),
            None => format!(
                "https://{}.{}.amazonaws.com",
                service.signing_name(),
                c.region
            ),
        };
        let endpoint =
            http::check_base(&format!("{section} endpoint"), &endpoint, c.http.allow_http)?;
        let upstream = format!("{} source `{name}` ({endpoint})", service.kind());
        Ok(AwsSource {
            client: Client::new(upstream.clone(), &c.http)?,
            upstream,
            service,
            region: c.region.clone(),
            endpoint,
            credentials: c.credentials.clone(),
            with_decryption: c.with_decryption,
        })
    }

    async fn call(
        &self,
        target: &str,
        key: &str,
        body: serde_json::Value,
    ) -> Result<Response, SecretError> {
        let creds = self.credentials.resolve(&self.upstream)?;
        let url = self.client.url(&format!("{}/", self.endpoint))?;
        let r = signed_post(
            &self.client,
            &url,
            &self.region,
            self.service.signing_name(),
            &creds,
            &[
                ("x-amz-target", target),
                ("content-type", "application/x-amz-json-1.1"),
            ],
            body.to_string().into_bytes(),
        )
        .await?;
        if r.ok() {
            return Ok(r);
        }
        let what = format!("{target} of `{key}`");
        let sent: Vec<&str> = std::iter::once(creds.secret_access_key.as_str())
            .chain(creds.session_token.as_deref())
            .collect();
        let code = r
            .json::<serde_json::Value>(&self.upstream)
            .ok()
            .and_then(|v| {
                v.get("__type")
                    .and_then(|t| t.as_str())
                    .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            });
        Err(match code {
            Some(code) => aws_error(
                &self.upstream,
                &what,
                Some(key),
                &code,
                &r,
                r.message(&sent),
            ),
            None => http::status_error(&self.upstream, &what, Some(key), &r, &sent),
        })
    }
}

fn check_name(upstream: &str, key: &str) -> Result<(), SecretError> {
    if key.is_empty() || key.len() > 2048 || key.chars().any(|c| c.is_control()) {
        return Err(SecretError::config(format!(
            "{upstream}: key `{}` is not a parameter or secret name",
            key.escape_debug()
        )));
    }
    Ok(())
}

impl SecretSource for AwsSource {
    fn kind(&self) -> &'static str {
        self.service.kind()
    }

    fn fetch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Fetched, SecretError>> {
        Box::pin(async move {
            match self.service {
                Service::Ssm => {
                    check_name(&self.upstream, key)?;
                    let r = self
                        .call(
                            "AmazonSSM.GetParameter",
                            key,
                            json!({"Name": key, "WithDecryption": self.with_decryption}),
                        )
                        .await?;
                    #[derive(Deserialize)]
                    #[serde(rename_all = "PascalCase")]
                    struct Out {
                        parameter: Param,
                    }
                    #[derive(Deserialize)]
                    #[serde(rename_all = "PascalCase")]
                    struct Param {
                        value: SecretValue,
                    }
                    let out: Out = r.json(&self.upstream)?;
                    Ok(Fetched {
                        value: out.parameter.value,
                        ttl: None,
                        lease: None,
                    })
                }
                Service::SecretsManager => {
                    let (id, field) = split_field(key);
                    check_name(&self.upstream, id)?;
                    let r = self
                        .call(
                            "secretsmanager.GetSecretValue",
                            key,
                            json!({"SecretId": id}),
                        )
                        .await?;
                    #[derive(Deserialize)]
                    #[serde(rename_all = "PascalCase")]
                    struct Out {
                        secret_string: Option<SecretValue>,
                        secret_binary: Option<SecretValue>,
                    }
                    let out: Out = r.json(&self.upstream)?;
                    let value = match (out.secret_string, out.secret_binary) {
                        (Some(s), _) => {
                            match field {
                                None => s,
                                Some(f) => {
                                    let v: serde_json::Value = serde_json::from_slice(s.expose())
                                    .map_err(|_| SecretError::Protocol {
                                        upstream: self.upstream.clone(),
                                        detail: format!("`{id}` is not a JSON secret, so it has no field `{f}`"),
                                    })?;
                                    pick_field(&self.upstream, key, v, Some(f))?
                                }
                            }
                        }
                        (None, Some(b)) if field.is_none() => SecretValue::new(
                            base64::engine::general_purpose::STANDARD
                                .decode(b.expose())
                                .map_err(|_| SecretError::Protocol {
                                    upstream: self.upstream.clone(),
                                    detail: format!("`{id}`: SecretBinary is not base64"),
                                })?,
                        ),
                        _ => {
                            return Err(SecretError::Protocol {
                                upstream: self.upstream.clone(),
                                detail: format!(
                                    "`{key}`: the answer has no SecretString to take a field from"
                                ),
                            })
                        }
                    };
                    Ok(Fetched {
                        value,
                        ttl: None,
                        lease: None,
                    })
                }
            }
        })
    }
}
