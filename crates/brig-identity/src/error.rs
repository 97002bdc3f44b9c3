//! The errors: what was wrong and what to do, never a token or a secret.

use std::time::Duration;

use brig_core::units::format_duration;

/// At most this much of a value taken from a token or an IdP answer is
/// quoted in an error (escaped with `{:?}`), so a hostile value cannot
/// flood or forge a log line.
const MAX_QUOTED: usize = 80;

/// A value from outside, cut short, for an error message.
pub(crate) fn quoted(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        s.to_string()
    } else {
        s.chars().take(MAX_QUOTED).collect::<String>() + "…"
    }
}

/// Configuration, discovery, HTTP and OAuth2 flow errors.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `[identity]` in brig.toml is wrong: fix it.
    #[error("identity config: {0}")]
    Config(String),
    /// An `http://` URL whose host is not loopback.
    #[error("{what} `{url}`: plain http:// is only accepted when the host is loopback (127.0.0.0/8, ::1, localhost: a local test IdP); use https://")]
    InsecureUrl { what: String, url: String },
    /// The discovery document names another issuer than the configured one
    /// (OpenID Connect Discovery 1.0, section 4.3: they must be identical).
    #[error("OIDC discovery at {url}: the document's issuer {advertised:?} is not the configured issuer {configured:?}; they must be identical, character for character (check [identity.oidc] issuer, including any trailing slash)")]
    IssuerMismatch {
        url: String,
        configured: String,
        advertised: String,
    },
    /// The IdP cannot be reached, or answered 5xx.
    #[error("{url} unavailable: {detail}")]
    Unavailable { url: String, detail: String },
    #[error("TLS with {url} failed: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url} timed out after {}", format_duration(*.after))]
    Timeout { url: String, after: Duration },
    /// The IdP answered something brig cannot read.
    #[error("{url}: unexpected answer: {detail}")]
    Protocol { url: String, detail: String },
    /// An OAuth2 error answer (RFC 6749 section 5.2) brig has no better
    /// error for: `invalid_grant`, `invalid_client`, ...
    #[error("{endpoint} refused the request (HTTP {status}): {error}{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        endpoint: String,
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// The IdP's discovery document has no endpoint for this.
    #[error("the IdP does not offer {0} (its discovery document has no endpoint for it)")]
    NotSupported(&'static str),
    /// RFC 8628 `expired_token`, or the device code's lifetime passed.
    #[error("the device code expired before the login was approved; run `brig login` again")]
    DeviceExpired,
    /// RFC 8628 `access_denied`: the user (or the IdP's policy) said no.
    #[error("the login was denied at the IdP{}", .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    AccessDenied { description: Option<String> },
    /// The redirect's `state` is not the one this login sent (CSRF or a
    /// replayed redirect).
    #[error("the authorization response's state does not match this login's request (a forged or replayed redirect); start the login again")]
    StateMismatch,
    /// The ID token the IdP handed out did not verify.
    #[error("the ID token from the IdP was refused: {0}")]
    Token(#[from] TokenError),
}

impl IdentityError {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        IdentityError::Config(msg.into())
    }

    /// Whether trying again later may succeed (the IdP was down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            IdentityError::Unavailable { .. } | IdentityError::Timeout { .. }
        )
    }
}

/// Why an ID token was refused: one variant per check, so the server can
/// answer 401 with the reason ([`TokenError::reason`]). No variant carries
/// the token; claim values are quoted cut short.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a compact JWS (header.payload.signature): {0}")]
    Malformed(String),
    #[error("the token is {len} bytes; at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    /// `alg: none` in any spelling: an unsigned token.
    #[error("unsigned token (alg \"none\") refused")]
    AlgNone,
    /// HS256/384/512 are refused whatever allowed_algs says: an IdP's keys
    /// are public, so a "signature" made with one as the HMAC secret proves
    /// nothing (the key-confusion attack).
    #[error("alg {alg:?} is symmetric (HMAC) and always refused: with the IdP's public key as the HMAC secret anyone can sign (key confusion)")]
    SymmetricAlg { alg: String },
    #[error("alg {alg:?} is not a signature algorithm brig supports")]
    UnsupportedAlg { alg: String },
    #[error("alg {alg} is not in [identity.oidc] allowed_algs ({allowed})")]
    AlgNotAllowed { alg: String, allowed: String },
    /// RFC 7515 4.1.11: a `crit` extension brig does not understand.
    #[error("the token's header has `crit` ({0}); brig supports no JWS extensions")]
    CriticalHeader(String),
    #[error("the token's header `typ` is {0:?}, not JWT (an access or logout token used as an ID token?)")]
    WrongType(String),
    /// No key with this `kid`, also after refetching the JWKS (or a refetch
    /// was not allowed yet: at most one per `jwks_refetch_interval`).
    #[error("no key with kid {kid:?} in the IdP's JWKS")]
    UnknownKid { kid: String },
    /// No `kid`, and not exactly one key suits the alg.
    #[error("the token has no kid and the IdP's JWKS has {candidates} keys for {alg}; brig needs exactly one to pick")]
    NoKid { alg: String, candidates: usize },
    /// The key the `kid` names cannot make this alg's signatures (an RSA key
    /// for ES256, a P-256 key for ES384, a JWK whose own `alg` differs).
    #[error("key {kid:?} cannot verify {alg}: {reason}")]
    KeyMismatch {
        kid: String,
        alg: String,
        reason: String,
    },
    #[error("the signature does not verify with the IdP's key (forged or altered token)")]
    BadSignature,
    #[error("issuer {got:?} is not the configured issuer {expected:?}")]
    WrongIssuer { expected: String, got: String },
    #[error("audience {got:?} does not include any of {expected:?}")]
    WrongAudience {
        expected: Vec<String>,
        got: Vec<String>,
    },
    /// Several audiences and `azp` is missing or not our client_id
    /// (OpenID Connect Core 3.1.3.7, items 4 and 5).
    #[error(
        "the token has several audiences and its azp {got:?} is not the client_id {expected:?}"
    )]
    WrongAuthorizedParty {
        expected: String,
        got: Option<String>,
    },
    #[error("the token expired at {exp} (unix time; now {now}, leeway {leeway}s)")]
    Expired { exp: i64, now: i64, leeway: u64 },
    #[error("the token is not valid before {nbf} (unix time; now {now}, leeway {leeway}s)")]
    NotYetValid { nbf: i64, now: i64, leeway: u64 },
    #[error("the token was issued in the future ({iat}, unix time; now {now}, leeway {leeway}s): check the clocks of brig's host and the IdP")]
    IssuedInFuture { iat: i64, now: i64, leeway: u64 },
    /// A required claim is missing or has the wrong JSON type.
    #[error("claim `{claim}` is missing or not {expected}")]
    BadClaim {
        claim: &'static str,
        expected: &'static str,
    },
    #[error("the token has no nonce, but this login sent one")]
    NonceMissing,
    #[error("the token's nonce is not this login's (a replayed or injected token)")]
    NonceMismatch,
    /// The JWKS cannot be fetched and no cached keys may be used any more:
    /// brig fails closed. The server should answer 503, not 401.
    #[error("the IdP's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// A stable, short reason code for the 401 answer and the journal
    /// (`WWW-Authenticate: Bearer error="invalid_token",
    /// error_description="<reason>"`).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::TooLarge { .. } => "too_large",
            TokenError::AlgNone => "alg_none",
            TokenError::SymmetricAlg { .. } => "alg_symmetric",
            TokenError::UnsupportedAlg { .. } => "alg_unsupported",
            TokenError::AlgNotAllowed { .. } => "alg_not_allowed",
            TokenError::CriticalHeader(_) => "crit_header",
            TokenError::WrongType(_) => "wrong_type",
            TokenError::UnknownKid { .. } => "unknown_kid",
            TokenError::NoKid { .. } => "no_kid",
            TokenError::KeyMismatch { .. } => "key_mismatch",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::WrongAuthorizedParty { .. } => "wrong_azp",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::IssuedInFuture { .. } => "issued_in_future",
            TokenError::BadClaim { .. } => "bad_claim",
            TokenError::NonceMissing => "nonce_missing",
            TokenError::NonceMismatch => "nonce_mismatch",
            TokenError::KeysUnavailable(_) => "keys_unavailable",
        }
    }

    /// Whether the fault is brig's reach of the IdP, not the token: answer
    /// 503 (and retry later), not 401.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::KeysUnavailable(_))
    }
}
