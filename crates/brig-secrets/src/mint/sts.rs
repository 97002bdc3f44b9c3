//! `kind = "aws_sts"`: AWS STS `AssumeRole` with a session policy, over
//! the Query API (a SigV4-signed form POST, an XML answer).
//!
//! The session policy narrows the role to what the scope needs (the
//! effective permissions are the intersection of both); brig refuses to
//! assume a role without one. `RoleSessionName = brig-<session>`, so
//! CloudTrail names the session. STS credentials cannot be revoked one by
//! one: they expire after `DurationSeconds` (the TTL), and brig stops
//! injecting them at session end.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::config::TtlBounds;
use crate::http::{self, Client, HttpConfig, Response};
use crate::mint::{parse_rfc3339, rfc3339, Minted, Minter, Revocation, ScopeRequest};
use crate::sources::aws::{self, AwsCredentials};
use crate::{BoxFuture, SecretError, SecretValue};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StsConfig {
    /// `arn:aws:iam::123456789012:role/brig-agent`
    pub role_arn: String,
    pub region: String,
    /// Default `https://sts.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials: AwsCredentials,
    /// The role's trust policy may demand one.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The session policy when a request brings none (IAM policy JSON, as
    /// a TOML table or a JSON string).
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
    #[serde(default, with = "crate::config::duration::option")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub http: HttpConfig,
}

pub struct StsMinter {
    name: String,
    upstream: String,
    role_arn: String,
    region: String,
    endpoint: String,
    credentials: AwsCredentials,
    external_id: Option<String>,
    policy: Option<String>,
    ttl: TtlBounds,
    client: Client,
}

/// AWS's packed-policy limit is on the compressed form; 2048 plain
/// characters is the documented plain-text maximum.
const MAX_POLICY: usize = 2048;

fn policy_text(what: &str, p: &serde_json::Value) -> Result<String, SecretError> {
    let text = match p {
        serde_json::Value::String(s) => {
            let v: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                SecretError::config(format!("{what}: the session policy is not JSON: {e}"))
            })?;
            v.to_string()
        }
        serde_json::Value::Object(_) => p.to_string(),
        _ => {
            return Err(SecretError::config(format!(
                "{what}: the session policy must be an IAM policy object"
            )))
        }
    };
    if !text.contains("\"Statement\"") {
        return Err(SecretError::config(format!(
            "{what}: the session policy has no `Statement`"
        )));
    }
    if text.len() > MAX_POLICY {
        return Err(SecretError::config(format!(
            "{what}: the session policy is {} characters; STS takes at most {MAX_POLICY}",
            text.len()
        )));
    }
    Ok(text)
}

/// `brig-<session>` in STS's alphabet (`[\w+=,.@-]`, 2..64).
fn session_name(session: &str) -> String {
    let mut s: String = format!("brig-{session}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(64);
    s
}

/// The text of the first `<tag>` inside `doc`, each of `path` nested in the
/// one before, with XML's five entities decoded. AWS's answers are flat,
/// attribute-free and namespace-prefix-free, which this relies on.
pub(crate) fn xml_text(doc: &str, path: &[&str]) -> Option<String> {
    let mut scope = doc;
    for tag in path {
        let open = format!("<{tag}");
        let mut from = 0;
        let start = loop {
            let i = from + scope[from..].find(&open)?;
            let after = scope[i + open.len()..].chars().next()?;
            if after == '>' || after.is_whitespace() {
                break i;
            }
            from = i + open.len();
        };
        let body_start = start + scope[start..].find('>')? + 1;
        let end = body_start + scope[body_start..].find(&format!("</{tag}>"))?;
        scope = &scope[body_start..end];
    }
    Some(
        scope
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

impl StsMinter {
    pub fn new(name: &str, c: &StsConfig, bounds: TtlBounds) -> Result<Self, SecretError> {
        let section = format!("[secrets.minters.{name}]");
        aws::check_region(&section, &c.region)?;
        c.credentials.validate(&format!("{section} credentials"))?;
        if !c.role_arn.starts_with("arn:")
            || c.role_arn.split(':').count() < 6
            || !c.role_arn.contains(":role/")
        {
            return Err(SecretError::config(format!(
                "{section} role_arn `{}` is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
                c.role_arn
            )));
        }
        // STS takes 900 s at least; the bounds must allow that.
        if bounds.min < Duration::from_secs(900) {
            return Err(SecretError::config(format!(
                "{section}: STS credentials live 15 minutes at least; raise [secrets.ttl] min to 15m"
            )));
        }
        let endpoint = match &c.endpoint {
            Some(e) => e.clone(),
            None => format!("https://sts.{}.amazonaws.com", c.region),
        };
        let endpoint =
            http::check_base(&format!("{section} endpoint"), &endpoint, c.http.allow_http)?;
        let policy = c
            .policy
            .as_ref()
            .map(|p| policy_text(&format!("{section} policy"), p))
            .transpose()?;
        let ttl = TtlBounds {
            default: bounds.resolve(&section, c.ttl)?,
            ..bounds
        };
        let upstream = format!("aws_sts minter `{name}` ({endpoint})");
        Ok(StsMinter {
            client: Client::new(upstream.clone(), &c.http)?,
            name: name.to_string(),
            upstream,
            role_arn: c.role_arn.clone(),
            region: c.region.clone(),
            endpoint,
            credentials: c.credentials.clone(),
            external_id: c.external_id.clone(),
            policy,
            ttl,
        })
    }

    fn error(&self, what: &str, r: &Response, sent: &[&str]) -> SecretError {
        let text = String::from_utf8_lossy(&r.body);
        match xml_text(&text, &["Error", "Code"]) {
            Some(code) => {
                let msg = xml_text(&text, &["Error", "Message"]).unwrap_or_default();
                let message = http::scrub(&format!("{code}: {msg}"), sent);
                aws::aws_error(&self.upstream, what, None, &code, r, message)
            }
            None => http::status_error(&self.upstream, what, None, r, sent),
        }
    }
}

impl Minter for StsMinter {
    fn kind(&self) -> &'static str {
        "aws_sts"
    }

    fn mint<'a>(&'a self, req: &'a ScopeRequest) -> BoxFuture<'a, Result<Minted, SecretError>> {
        Box::pin(async move {
            let me = format!("aws_sts minter `{}`", self.name);
            let ttl = self.ttl.resolve(&me, req.ttl)?;
            let policy = match (&req.policy, &self.policy) {
                (Some(p), _) => policy_text(&me, p)?,
                (None, Some(p)) => p.clone(),
                (None, None) => {
                    return Err(SecretError::Denied {
                        minter: me,
                        detail: format!(
                            "scope `{}` brings no session policy and [secrets.minters.{}] has no `policy`; brig does not assume a role unnarrowed",
                            req.scope, self.name
                        ),
                    })
                }
            };
            let session = session_name(&req.session);
            let secs = ttl.as_secs().to_string();
            let mut params: Vec<(&str, &str)> = vec![
                ("Action", "AssumeRole"),
                ("Version", "2011-06-15"),
                ("RoleArn", &self.role_arn),
                ("RoleSessionName", &session),
                ("DurationSeconds", &secs),
                ("Policy", &policy),
            ];
            if let Some(x) = &self.external_id {
                params.push(("ExternalId", x));
            }
            let creds = self.credentials.resolve(&self.upstream)?;
            let url = self.client.url(&format!("{}/", self.endpoint))?;
            let r = aws::signed_post(
                &self.client,
                &url,
                &self.region,
                "sts",
                &creds,
                &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )],
                http::form(&params),
            )
            .await?;
            let sent: Vec<&str> = std::iter::once(creds.secret_access_key.as_str())
                .chain(creds.session_token.as_deref())
                .collect();
            let what = format!("AssumeRole of `{}`", self.role_arn);
            if !r.ok() {
                return Err(self.error(&what, &r, &sent));
            }
            let doc = SecretValue::new(r.body.to_vec());
            let doc = doc.expose_str().unwrap_or_default();
            let field = |name: &str| {
                xml_text(doc, &["AssumeRoleResult", "Credentials", name]).ok_or_else(|| {
                    SecretError::Protocol {
                        upstream: self.upstream.clone(),
                        detail: format!("{what}: the answer has no Credentials/{name}"),
                    }
                })
            };
            let akid = field("AccessKeyId")?;
            let secret = SecretValue::from_string(field("SecretAccessKey")?);
            let token = SecretValue::from_string(field("SessionToken")?);
            let expiration = field("Expiration")?;
            let upstream_exp = parse_rfc3339(&self.upstream, "Expiration", &expiration)?;
            let assumed = xml_text(doc, &["AssumeRoleResult", "AssumedRoleUser", "Arn"]);
            // credential_process's format: what AWS SDKs read.
            let value = SecretValue::from_string(
                json!({
                    "Version": 1,
                    "AccessKeyId": akid,
                    "SecretAccessKey": secret.expose_str().unwrap_or_default(),
                    "SessionToken": token.expose_str().unwrap_or_default(),
                    "Expiration": expiration,
                })
                .to_string(),
            );
            let expires_at = upstream_exp.min(OffsetDateTime::now_utc() + ttl);
            Ok(Minted {
                value,
                expires_at,
                revocation: Revocation::ExpiresOnly {
                    why: "STS session credentials cannot be revoked one by one; they expire at expires_at",
                },
                granted: json!({
                    "minter": self.name,
                    "kind": "aws_sts",
                    "scope": req.scope,
                    "role_arn": self.role_arn,
                    "assumed_role_arn": assumed,
                    "role_session_name": session,
                    "access_key_id": akid,
                    "duration_seconds": ttl.as_secs(),
                    "session_policy": serde_json::from_str::<serde_json::Value>(&policy).unwrap_or_default(),
                    "expires_at": rfc3339(expires_at),
                }),
            })
        })
    }

    fn revoke<'a>(&'a self, _minted: &'a Minted) -> BoxFuture<'a, Result<(), SecretError>> {
        // Nothing to call: see Revocation::ExpiresOnly.
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml() {
        let d = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult><Credentials><AccessKeyId>ASIA1</AccessKeyId>
  <SessionToken>a&amp;b</SessionToken></Credentials></AssumeRoleResult></AssumeRoleResponse>"#;
        assert_eq!(
            xml_text(d, &["AssumeRoleResult", "Credentials", "AccessKeyId"]).unwrap(),
            "ASIA1"
        );
        assert_eq!(
            xml_text(d, &["AssumeRoleResult", "Credentials", "SessionToken"]).unwrap(),
            "a&b"
        );
        assert!(xml_text(d, &["AssumeRoleResult", "Credentials", "Expiration"]).is_none());
        assert!(xml_text(d, &["AssumeRoleResponse"]).is_some());
    }

    #[test]
    fn session_names() {
        assert_eq!(session_name("s_01/x y"), "brig-s_01-x-y");
        assert_eq!(session_name(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn policies() {
        let p = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]});
        assert!(policy_text("m", &p).is_ok());
        assert!(policy_text("m", &json!(p.to_string())).is_ok());
        assert!(policy_text("m", &json!({"Version": "2012-10-17"})).is_err());
        assert!(policy_text("m", &json!("not json")).is_err());
    }
}
