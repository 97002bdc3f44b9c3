//! The `[identity]` section of brig.toml (embedded by brig-server):
//!
//! ```toml
//! [identity.oidc]                    # humans through an IdP (optional)
//! issuer = "https://idp.example.com/realms/brig"
//! client_id = "brig"
//! # audiences = ["brig"]             # default: [client_id]; `audience = "x"` also works
//! # allowed_algs = ["RS256", "ES256"]
//! # scopes = ["openid", "profile", "email", "offline_access"]
//! # groups_claim = "groups"
//! # roles_claim = "roles"            # default: none (roles come from policy)
//! # username_claim = "email"         # falls back to `sub`
//! # leeway = "60s"
//! # ca_file = "/etc/brig/idp-ca.pem"
//! # client_secret_file = "/etc/brig/oidc-client-secret"
//! # jwks_max_age = "1h"              # Cache-Control max-age is honoured up to this
//! # jwks_refetch_interval = "30s"    # an unknown kid refetches at most this often
//! # jwks_hard_max_age = "24h"        # cached keys are never used past this
//! # timeout = "10s"
//!
//! [identity.local]                   # the unix-socket users (the embedded default)
//! # root_user = "root"               # uid 0 is `local:<root_user>`
//! # default_roles = ["admin"]        # root's roles (and the owner's with no users table)
//!
//! [identity.users.alice]
//! roles = ["developer"]
//! groups = ["team-a"]
//!
//! [identity.tokens]                  # API tokens for automation
//! # max_ttl = "90d"
//! # default_ttl = "30d"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::http::check_url;
use crate::{Alg, IdentityError};

/// Durations in brig.toml: `"15m"`, `"1h30m"`, `"90s"`, `"500ms"`, or a
/// number of seconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => brig_core::units::parse_duration(&t).map_err(|_| {
                serde::de::Error::custom(format!(
                    "duration {t:?} is not valid; use e.g. 90s, 15m, 1h"
                ))
            }),
        }
    }
}

/// A string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => vec![s],
        Raw::Many(v) => v,
    })
}

/// The whole `[identity]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    #[serde(default)]
    pub local: LocalConfig,
    /// `[identity.users.NAME]`: the local users, by unix user name.
    #[serde(default)]
    pub users: BTreeMap<String, LocalUserConfig>,
    #[serde(default)]
    pub tokens: ApiTokenConfig,
}

impl IdentityConfig {
    pub fn validate(&self) -> Result<(), IdentityError> {
        if let Some(o) = &self.oidc {
            o.validate()?;
        }
        self.local.validate()?;
        for (name, u) in &self.users {
            crate::local::check_user_name(name)?;
            u.validate(name)?;
        }
        self.tokens.validate()
    }
}

/// `[identity.oidc]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer, exactly as the IdP writes it in its tokens (`iss`) and its
    /// discovery document. `https://`, or `http://` to a loopback host.
    pub issuer: String,
    pub client_id: String,
    /// A file holding the client secret, for IdPs that require one even for
    /// device flow (Google) or for a confidential web client. Sent as
    /// `client_secret_post`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Accepted `aud` values; empty means `[client_id]`.
    #[serde(default, alias = "audience", deserialize_with = "one_or_many")]
    pub audiences: Vec<String>,
    #[serde(default = "default_algs")]
    pub allowed_algs: Vec<Alg>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// The claim that names the human (`email` by default; an unverified
    /// email, `email_verified: false`, is not used). Falls back to `sub`.
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Extra CA certificates (PEM) trusted for the IdP, on top of the
    /// system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The longest the JWKS counts as fresh; a shorter Cache-Control
    /// max-age wins.
    #[serde(default = "default_jwks_max_age", with = "duration")]
    pub jwks_max_age: Duration,
    /// A token with an unknown kid refetches the JWKS at most this often
    /// (key rotation, without a flood of bad kids hammering the IdP).
    #[serde(default = "default_jwks_refetch", with = "duration")]
    pub jwks_refetch_interval: Duration,
    /// When the JWKS cannot be refetched, cached keys keep verifying until
    /// they are this old; then verification fails closed.
    #[serde(default = "default_jwks_hard_max_age", with = "duration")]
    pub jwks_hard_max_age: Duration,
    /// Deadline of one request to the IdP.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// The browser login's redirect (the web UI's): brig's
    /// `https://<host>/v1/auth/callback`, registered with the IdP. Unset:
    /// no browser login.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// How long a browser login lasts (its `brig_session` cookie).
    #[serde(default = "default_web_session_ttl", with = "duration")]
    pub web_session_ttl: Duration,
}

fn default_web_session_ttl() -> Duration {
    Duration::from_secs(12 * 3600)
}

fn default_algs() -> Vec<Alg> {
    vec![Alg::RS256, Alg::ES256]
}
fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .map(String::from)
        .to_vec()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "email".into()
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(3600)
}
fn default_jwks_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_hard_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The most clock skew brig accepts to be configured.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl OidcConfig {
    /// A configuration with every default.
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file: None,
            audiences: Vec::new(),
            allowed_algs: default_algs(),
            scopes: default_scopes(),
            groups_claim: default_groups_claim(),
            roles_claim: None,
            username_claim: default_username_claim(),
            leeway: default_leeway(),
            ca_file: None,
            jwks_max_age: default_jwks_max_age(),
            jwks_refetch_interval: default_jwks_refetch(),
            jwks_hard_max_age: default_jwks_hard_max_age(),
            timeout: default_timeout(),
            redirect_uri: None,
            web_session_ttl: default_web_session_ttl(),
        }
    }

    /// The accepted audiences: `audiences`, or `[client_id]`.
    pub fn effective_audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![self.client_id.clone()]
        } else {
            self.audiences.clone()
        }
    }

    pub fn validate(&self) -> Result<(), IdentityError> {
        let err = |m: String| Err(IdentityError::config(format!("[identity.oidc] {m}")));
        check_url("[identity.oidc] issuer", &self.issuer)?;
        if self.issuer.contains('?') {
            return err(format!(
                "issuer `{}`: an issuer has no query string",
                self.issuer
            ));
        }
        if self.client_id.trim().is_empty() {
            return err("client_id is empty".into());
        }
        if let Some(r) = &self.redirect_uri {
            // https, or http to loopback (RFC 8252), as the IdP will check.
            check_url("[identity.oidc] redirect_uri", r)?;
        }
        if self.audiences.iter().any(|a| a.trim().is_empty()) {
            return err("audiences has an empty value".into());
        }
        if self.allowed_algs.is_empty() {
            return err("allowed_algs is empty: no token could ever verify".into());
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            return err(format!(
                "scopes {:?} lack \"openid\": the IdP would issue no ID token",
                self.scopes
            ));
        }
        if self.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return err("a scope is empty or has a space (list each scope on its own)".into());
        }
        for (k, v) in [
            ("groups_claim", &self.groups_claim),
            ("username_claim", &self.username_claim),
        ] {
            if v.is_empty() {
                return err(format!("{k} is empty"));
            }
        }
        if self.leeway > MAX_LEEWAY {
            return err(format!(
                "leeway {}s is more than {}s: fix the clocks (NTP) instead",
                self.leeway.as_secs(),
                MAX_LEEWAY.as_secs()
            ));
        }
        if self.timeout.is_zero() || self.jwks_max_age.is_zero() {
            return err("timeout and jwks_max_age must be more than 0".into());
        }
        if self.jwks_hard_max_age < self.jwks_max_age {
            return err("jwks_hard_max_age must be at least jwks_max_age".into());
        }
        Ok(())
    }
}

/// `[identity.local]`: how unix-socket peers become principals.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The local user uid 0 is (`local:<root_user>`).
    #[serde(default = "default_root_user")]
    pub root_user: String,
    /// The roles of root, and of the server's owner when there is no
    /// `[identity.users]` table, unless the users table names them.
    #[serde(default = "default_roles")]
    pub default_roles: Vec<String>,
}

fn default_root_user() -> String {
    "root".into()
}
fn default_roles() -> Vec<String> {
    vec!["admin".into()]
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            root_user: default_root_user(),
            default_roles: default_roles(),
        }
    }
}

impl LocalConfig {
    fn validate(&self) -> Result<(), IdentityError> {
        crate::local::check_user_name(&self.root_user)
            .map_err(|e| IdentityError::config(format!("[identity.local] root_user: {e}")))?;
        check_names("[identity.local] default_roles", &self.default_roles)
    }
}

/// `[identity.users.NAME]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalUserConfig {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
}

impl LocalUserConfig {
    fn validate(&self, name: &str) -> Result<(), IdentityError> {
        check_names(&format!("[identity.users.{name}] roles"), &self.roles)?;
        check_names(&format!("[identity.users.{name}] groups"), &self.groups)
    }
}

/// Roles and group names: printable, no spaces, so they are safe in
/// policies, logs and headers.
fn check_names(what: &str, names: &[String]) -> Result<(), IdentityError> {
    for n in names {
        if n.is_empty() || n.len() > 128 || !n.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdentityError::config(format!(
                "{what}: {n:?} must be 1-128 printable ASCII characters without spaces"
            )));
        }
    }
    Ok(())
}

/// `[identity.tokens]`: API tokens for automation always expire.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenConfig {
    #[serde(default = "default_max_ttl", with = "duration")]
    pub max_ttl: Duration,
    #[serde(default = "default_ttl", with = "duration")]
    pub default_ttl: Duration,
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(90 * 86400)
}
fn default_ttl() -> Duration {
    Duration::from_secs(30 * 86400)
}

impl Default for ApiTokenConfig {
    fn default() -> Self {
        ApiTokenConfig {
            max_ttl: default_max_ttl(),
            default_ttl: default_ttl(),
        }
    }
}

impl ApiTokenConfig {
    fn validate(&self) -> Result<(), IdentityError> {
        if self.max_ttl.is_zero() || self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            return Err(IdentityError::config(
                "[identity.tokens] needs 0 < default_ttl <= max_ttl",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<IdentityConfig, String> {
        let c: IdentityConfig = toml::from_str(t).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = parse(
            r#"
            [oidc]
            issuer = "https://idp.example/realms/brig"
            client_id = "brig"
            [users.alice]
            roles = ["developer"]
            groups = ["team-a"]
            "#,
        )
        .unwrap();
        let o = c.oidc.unwrap();
        assert_eq!(
            o,
            OidcConfig::new("https://idp.example/realms/brig", "brig")
        );
        assert_eq!(o.effective_audiences(), ["brig"]);
        assert_eq!(o.allowed_algs, [Alg::RS256, Alg::ES256]);
        assert_eq!(c.local.root_user, "root");
        assert_eq!(c.users["alice"].roles, ["developer"]);

        let c = parse(
            r#"
            [oidc]
            issuer = "https://idp.example"
            client_id = "brig-cli"
            audience = "brig-api"
            allowed_algs = ["PS256", "EdDSA"]
            leeway = "30s"
            jwks_refetch_interval = "500ms"
            "#,
        )
        .unwrap();
        let o = c.oidc.unwrap();
        assert_eq!(o.effective_audiences(), ["brig-api"]);
        assert_eq!(o.allowed_algs, [Alg::PS256, Alg::EdDSA]);
        assert_eq!(o.leeway, Duration::from_secs(30));
        assert_eq!(o.jwks_refetch_interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_sections_say_what_is_wrong() {
        let oidc = |extra: &str| {
            parse(&format!(
                "[oidc]\nissuer = \"https://idp.example\"\nclient_id = \"brig\"\n{extra}"
            ))
            .unwrap_err()
        };
        assert!(oidc("allowed_algs = [\"HS256\"]").contains("symmetric"));
        assert!(oidc("allowed_algs = [\"none\"]").contains("unsigned"));
        assert!(oidc("allowed_algs = []").contains("allowed_algs is empty"));
        assert!(oidc("scopes = [\"email\"]").contains("openid"));
        assert!(oidc("leeway = \"10m\"").contains("leeway"));
        assert!(oidc("jwks_hard_max_age = \"1m\"").contains("jwks_hard_max_age"));
        assert!(oidc("colour = 1").contains("unknown field"));
        let e = parse("[oidc]\nissuer = \"http://idp.example\"\nclient_id = \"brig\"").unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(parse("[oidc]\nissuer = \"http://127.0.0.1:8080\"\nclient_id = \"b\"").is_ok());
        assert!(parse("[users.\"Bad Name\"]\n").is_err());
        assert!(parse("[users.alice]\nroles = [\"a b\"]").is_err());
        assert!(parse("[tokens]\nmax_ttl = \"1d\"\ndefault_ttl = \"2d\"").is_err());
    }
}
