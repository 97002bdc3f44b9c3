//! Who is calling brig (docs/IDENTITY.md).
//!
//! - Humans with an IdP: [`OidcClient`] verifies ID tokens against the IdP's
//!   JWKS ([`OidcClient::verify_id_token`]: issuer, audience, expiry and
//!   algorithms pinned; `none` and HMAC always refused; keys cached and
//!   rotated by [`JwksCache`]), runs the device flow for `brig login` and
//!   authorization code + PKCE for a web UI, and refreshes tokens. Any
//!   standard IdP: Okta, Entra ID, Google, Keycloak, Dex.
//! - Humans without one (the embedded default): [`LocalUsers`] maps a
//!   unix-socket peer's uid to a local user.
//! - Sessions: the agent principal `agent:<session>` ([`AgentPrincipal`]),
//!   linked to one human and one task.
//! - Automation: [`ApiTokens`], per principal, shown once, hashed at rest,
//!   expiring.
//!
//! Every signature is checked by the system OpenSSL (the `openssl` crate,
//! as the rest of brig); HTTPS uses brig-tls's client context.

mod config;
mod discovery;
mod error;
mod http;
mod jose;
mod jwks;
mod local;
mod oidc;
mod principal;
mod tokens;

#[cfg(feature = "test-idp")]
pub mod testing;

pub use config::{ApiTokenConfig, IdentityConfig, LocalConfig, LocalUserConfig, OidcConfig};
pub use discovery::{discovery_url, Discovery};
pub use error::{IdentityError, TokenError};
pub use jose::{Alg, MAX_TOKEN_LEN};
pub use jwks::JwksCache;
pub use local::{user_name, LocalUsers};
pub use oidc::{
    pkce_challenge, AuthCodeRequest, Claims, DeviceAuthorization, DevicePoll, OidcClient, TokenSet,
};
pub use principal::{
    agent_id, is_agent_id, parse_agent_id, AgentPrincipal, Principal, Via, AGENT_PREFIX,
};
pub use tokens::{
    ApiTokenError, ApiTokens, PlaintextToken, TokenHash, TokenRecord, TOKEN_PREFIX, TOKEN_REGEX,
};
