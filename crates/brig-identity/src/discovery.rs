//! OpenID Connect Discovery 1.0: `{issuer}/.well-known/openid-configuration`.
//!
//! The document's `issuer` must be the configured issuer exactly (section
//! 4.3: this is what stops one IdP's metadata being served for another's),
//! and every endpoint it names is held to the same rule as the issuer:
//! `https://`, or `http://` only to a loopback host. It is fetched once per
//! client: endpoints do not move, keys rotate through the JWKS.

use serde::Deserialize;

use crate::error::quoted;
use crate::http::{check_url, HttpClient, Url};
use crate::IdentityError;

/// The metadata brig uses.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub id_token_signing_alg_values_supported: Vec<String>,
    pub code_challenge_methods_supported: Vec<String>,
    pub(crate) jwks: Url,
    pub(crate) token: Option<Url>,
    pub(crate) device: Option<Url>,
    pub(crate) authorization: Option<Url>,
}

#[derive(Deserialize)]
struct Raw {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    authorization_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint: Option<String>,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    code_challenge_methods_supported: Vec<String>,
}

/// Where the discovery document of an issuer is (the issuer without a
/// trailing slash, then the well-known path: Discovery section 4).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

impl Discovery {
    pub(crate) async fn fetch(http: &HttpClient, issuer: &str) -> Result<Discovery, IdentityError> {
        // The issuer's own scheme rule first, with its own error.
        check_url("[identity.oidc] issuer", issuer)?;
        let url = check_url("discovery document", &discovery_url(issuer))?;
        let r = http.get(&url).await?;
        if !r.ok() {
            return Err(IdentityError::Protocol {
                url: url.raw.clone(),
                detail: format!(
                    "HTTP {} for the discovery document (is [identity.oidc] issuer right?)",
                    r.status
                ),
            });
        }
        let raw: Raw = r.json(&url)?;
        Discovery::from_raw(raw, issuer, &url.raw)
    }

    fn from_raw(raw: Raw, issuer: &str, url: &str) -> Result<Discovery, IdentityError> {
        if raw.issuer != issuer {
            return Err(IdentityError::IssuerMismatch {
                url: url.to_string(),
                configured: issuer.to_string(),
                advertised: quoted(&raw.issuer),
            });
        }
        let opt = |what: &str, v: &Option<String>| -> Result<Option<Url>, IdentityError> {
            v.as_deref().map(|u| check_url(what, u)).transpose()
        };
        Ok(Discovery {
            jwks: check_url("jwks_uri", &raw.jwks_uri)?,
            token: opt("token_endpoint", &raw.token_endpoint)?,
            device: opt(
                "device_authorization_endpoint",
                &raw.device_authorization_endpoint,
            )?,
            authorization: opt("authorization_endpoint", &raw.authorization_endpoint)?,
            issuer: raw.issuer,
            jwks_uri: raw.jwks_uri,
            authorization_endpoint: raw.authorization_endpoint,
            token_endpoint: raw.token_endpoint,
            device_authorization_endpoint: raw.device_authorization_endpoint,
            userinfo_endpoint: raw.userinfo_endpoint,
            id_token_signing_alg_values_supported: raw.id_token_signing_alg_values_supported,
            code_challenge_methods_supported: raw.code_challenge_methods_supported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(issuer: &str, jwks: &str) -> Raw {
        serde_json::from_value(serde_json::json!({"issuer": issuer, "jwks_uri": jwks})).unwrap()
    }

    #[test]
    fn the_issuer_must_match_exactly_and_endpoints_be_https() {
        assert_eq!(
            discovery_url("https://idp.example/realms/x/"),
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
        let ok = Discovery::from_raw(
            raw("https://idp.example", "https://keys.example/jwks"),
            "https://idp.example",
            "u",
        )
        .unwrap();
        assert_eq!(ok.jwks_uri, "https://keys.example/jwks");
        for other in [
            "https://idp.example/",
            "https://IDP.example",
            "https://evil.example",
        ] {
            let e = Discovery::from_raw(
                raw(other, "https://keys.example/jwks"),
                "https://idp.example",
                "u",
            )
            .unwrap_err();
            assert!(
                matches!(e, IdentityError::IssuerMismatch { .. }),
                "{other}: {e}"
            );
        }
        let e = Discovery::from_raw(
            raw("https://idp.example", "http://keys.example/jwks"),
            "https://idp.example",
            "u",
        )
        .unwrap_err();
        assert!(matches!(e, IdentityError::InsecureUrl { .. }), "{e}");
    }
}
