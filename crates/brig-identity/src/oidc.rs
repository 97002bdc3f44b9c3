//! The OIDC client of one IdP: ID-token verification (the server's API
//! auth), the device flow (`brig login`, RFC 8628), authorization code with
//! PKCE (the web UI, RFC 7636) and the refresh grant.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::discovery::Discovery;
use crate::error::quoted;
use crate::http::{check_url, HttpClient, Response, Url};
use crate::jose::{self, Alg};
use crate::jwks::JwksCache;
use crate::{IdentityError, OidcConfig, Principal, TokenError, Via};

/// The verified claims of an ID token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub azp: Option<String>,
    pub exp: i64,
    pub iat: Option<i64>,
    pub nbf: Option<i64>,
    pub nonce: Option<String>,
    /// Every other claim (email, name, groups, ...), as the IdP sent it.
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// A string claim among the others.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.other.get(name).and_then(|v| v.as_str())
    }

    /// A claim that is a list of strings, or one string (some IdPs send a
    /// single group as a string); other values are ignored.
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.other.get(name) {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The payload, strictly: a repeated registered claim is an error (serde
/// refuses a repeated field), so `iss` or `aud` cannot be read two ways.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<serde_json::Value>,
    sub: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
    azp: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    nonce: Option<serde_json::Value>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

fn string_claim(v: Option<serde_json::Value>, claim: &'static str) -> Result<String, TokenError> {
    match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(TokenError::BadClaim {
            claim,
            expected: "a non-empty string",
        }),
    }
}

/// NumericDate (RFC 7519 2): seconds, possibly fractional.
fn time_claim(
    v: Option<serde_json::Value>,
    claim: &'static str,
) -> Result<Option<i64>, TokenError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(TokenError::BadClaim {
                claim,
                expected: "a NumericDate",
            }),
        Some(_) => Err(TokenError::BadClaim {
            claim,
            expected: "a NumericDate",
        }),
    }
}

pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The claim checks after the signature verified (OpenID Connect Core
/// 3.1.3.7): iss exact, aud, azp with several audiences, exp required,
/// nbf and iat with leeway, nonce when one was sent.
pub(crate) fn check_claims(
    cfg: &OidcConfig,
    payload: &[u8],
    now: i64,
    expected_nonce: Option<&str>,
) -> Result<Claims, TokenError> {
    let raw: RawClaims = serde_json::from_slice(payload).map_err(|e| {
        TokenError::Malformed(format!("the payload is not a JSON object of claims: {e}"))
    })?;
    let leeway = cfg.leeway.as_secs();
    let lw = leeway as i64;
    let iss = string_claim(raw.iss, "iss")?;
    if iss != cfg.issuer {
        return Err(TokenError::WrongIssuer {
            expected: cfg.issuer.clone(),
            got: quoted(&iss),
        });
    }
    let sub = string_claim(raw.sub, "sub")?;
    let aud = match raw.aud {
        Some(serde_json::Value::String(s)) => vec![s],
        Some(serde_json::Value::Array(a)) if !a.is_empty() => a
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(TokenError::BadClaim {
                    claim: "aud",
                    expected: "a string or a list of strings",
                }),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(TokenError::BadClaim {
                claim: "aud",
                expected: "a string or a list of strings",
            })
        }
    };
    let expected = cfg.effective_audiences();
    if !aud.iter().any(|a| expected.contains(a)) {
        return Err(TokenError::WrongAudience {
            expected,
            got: aud.iter().take(5).map(|a| quoted(a)).collect(),
        });
    }
    let azp = match raw.azp {
        None => None,
        Some(v) => Some(string_claim(Some(v), "azp")?),
    };
    if aud.len() > 1 && azp.as_deref() != Some(cfg.client_id.as_str()) {
        return Err(TokenError::WrongAuthorizedParty {
            expected: cfg.client_id.clone(),
            got: azp.as_deref().map(quoted),
        });
    }
    let exp = time_claim(raw.exp, "exp")?.ok_or(TokenError::BadClaim {
        claim: "exp",
        expected: "a NumericDate (exp is required)",
    })?;
    if now >= exp.saturating_add(lw) {
        return Err(TokenError::Expired { exp, now, leeway });
    }
    let nbf = time_claim(raw.nbf, "nbf")?;
    if let Some(nbf) = nbf {
        if now.saturating_add(lw) < nbf {
            return Err(TokenError::NotYetValid { nbf, now, leeway });
        }
    }
    let iat = time_claim(raw.iat, "iat")?;
    if let Some(iat) = iat {
        if iat > now.saturating_add(lw) {
            return Err(TokenError::IssuedInFuture { iat, now, leeway });
        }
    }
    let nonce = match raw.nonce {
        None => None,
        Some(v) => Some(string_claim(Some(v), "nonce")?),
    };
    if let Some(want) = expected_nonce {
        match &nonce {
            None => return Err(TokenError::NonceMissing),
            Some(n) if !ct_eq(n.as_bytes(), want.as_bytes()) => {
                return Err(TokenError::NonceMismatch)
            }
            Some(_) => {}
        }
    }
    Ok(Claims {
        iss,
        sub,
        aud,
        azp,
        exp,
        iat,
        nbf,
        nonce,
        other: raw.other,
    })
}

/// Constant time for equal lengths (`openssl::memcmp::eq` panics on
/// different ones); different lengths are unequal, the length of a nonce or
/// state is no secret.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// The tokens of a successful grant. Debug never prints a token.
#[derive(Clone)]
pub struct TokenSet {
    pub id_token: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// The access token's lifetime, as the IdP said.
    pub expires_in: Option<Duration>,
    /// The ID token's claims, verified.
    pub claims: Claims,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("id_token", &"[REDACTED]")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_in", &self.expires_in)
            .field("sub", &self.claims.sub)
            .finish()
    }
}

#[derive(Deserialize)]
struct RawTokens {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An OAuth2 error answer (RFC 6749 5.2).
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// What the user is to do, from the device authorization endpoint.
#[derive(Clone)]
pub struct DeviceAuthorization {
    /// Show it: the user types it at `verification_uri`.
    pub user_code: String,
    pub verification_uri: String,
    /// The URI with the code in it (for a QR code or a click), if offered.
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    /// The polling interval the IdP asked for (5s when it did not say).
    pub interval: Duration,
    device_code: String,
    issued: Instant,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawDevice {
    device_code: String,
    user_code: String,
    // Google still says verification_url.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// One answer while polling that is not the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePoll {
    /// `authorization_pending`: the user has not finished yet.
    Pending,
    /// `slow_down`: polling from now on every `interval` (5s more).
    SlowDown { interval: Duration },
}

/// RFC 8628 3.5: a client must not poll faster than once a second.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// A browser login in progress (authorization code + PKCE): send the user
/// to `url`, keep the rest (server-side, never in the browser) until the
/// redirect comes back, then [`OidcClient::complete_auth_code`].
#[derive(Clone)]
pub struct AuthCodeRequest {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub code_verifier: String,
    pub redirect_uri: String,
}

impl fmt::Debug for AuthCodeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthCodeRequest")
            .field("url", &self.url)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes from the OS, base64url: 43 characters, the PKCE
/// verifier length RFC 7636 4.1 recommends, and state/nonce.
fn random_b64() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// S256: base64url(sha256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl AuthCodeRequest {
    /// A new login: random state, nonce and PKCE verifier, and the
    /// authorization URL with the S256 challenge. `redirect_uri` must be
    /// https, or http to a loopback host (RFC 8252 native clients).
    pub async fn new(client: &OidcClient, redirect_uri: &str) -> Result<Self, IdentityError> {
        check_url("redirect_uri", redirect_uri)?;
        let d = client.discovery().await?;
        let endpoint = &d
            .authorization
            .as_ref()
            .ok_or(IdentityError::NotSupported(
                "the authorization code flow (authorization_endpoint)",
            ))?
            .raw;
        let (state, nonce, code_verifier) = (random_b64(), random_b64(), random_b64());
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("response_type", "code")
            .append_pair("client_id", &client.cfg.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &client.cfg.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce_challenge(&code_verifier))
            .append_pair("code_challenge_method", "S256");
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(AuthCodeRequest {
            url: format!("{endpoint}{sep}{}", q.finish()),
            state,
            nonce,
            code_verifier,
            redirect_uri: redirect_uri.to_string(),
        })
    }

    /// The redirect's `state` must be this request's.
    pub fn check_state(&self, returned: &str) -> Result<(), IdentityError> {
        if ct_eq(returned.as_bytes(), self.state.as_bytes()) {
            Ok(())
        } else {
            Err(IdentityError::StateMismatch)
        }
    }
}

struct Ready {
    discovery: Discovery,
    jwks: JwksCache,
}

/// The client of one IdP. Discovery is fetched on first use (an IdP that
/// is down when brig starts does not stop brig starting; every use fails
/// until it answers) and kept for the client's life.
pub struct OidcClient {
    cfg: OidcConfig,
    http: Arc<HttpClient>,
    client_secret: Option<String>,
    ready: OnceCell<Ready>,
    /// The last failed discovery: retried at most once per
    /// `jwks_refetch_interval`, so an IdP that is down is not asked again
    /// for every API request.
    discovery_failure: std::sync::Mutex<Option<(Instant, String)>>,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.cfg.issuer)
            .field("client_id", &self.cfg.client_id)
            .finish_non_exhaustive()
    }
}

impl OidcClient {
    /// Checks the configuration, reads the client secret file and builds
    /// the TLS context; no network.
    pub fn new(cfg: OidcConfig) -> Result<OidcClient, IdentityError> {
        cfg.validate()?;
        let http = Arc::new(HttpClient::new(cfg.ca_file.as_deref(), cfg.timeout)?);
        let client_secret = match &cfg.client_secret_file {
            None => None,
            Some(p) => {
                let s = std::fs::read_to_string(p).map_err(|e| {
                    IdentityError::config(format!(
                        "[identity.oidc] client_secret_file `{}`: {e}",
                        p.display()
                    ))
                })?;
                let s = s.trim().to_string();
                if s.is_empty() {
                    return Err(IdentityError::config(format!(
                        "[identity.oidc] client_secret_file `{}` is empty",
                        p.display()
                    )));
                }
                Some(s)
            }
        };
        Ok(OidcClient {
            cfg,
            http,
            client_secret,
            ready: OnceCell::new(),
            discovery_failure: std::sync::Mutex::new(None),
        })
    }

    /// [`OidcClient::new`] and discovery at once (the CLI: fail early).
    pub async fn discover(cfg: OidcConfig) -> Result<OidcClient, IdentityError> {
        let c = OidcClient::new(cfg)?;
        c.discovery().await?;
        Ok(c)
    }

    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    async fn ready(&self) -> Result<&Ready, IdentityError> {
        if let Some(r) = self.ready.get() {
            return Ok(r);
        }
        {
            let last = self
                .discovery_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some((at, why)) = last.as_ref() {
                if at.elapsed() < self.cfg.jwks_refetch_interval {
                    return Err(IdentityError::Unavailable {
                        url: crate::discovery_url(&self.cfg.issuer),
                        detail: format!(
                            "{why} (discovery is retried at most every {})",
                            brig_core::units::format_duration(self.cfg.jwks_refetch_interval)
                        ),
                    });
                }
            }
        }
        let r: Result<&Ready, IdentityError> = self
            .ready
            .get_or_try_init(|| async {
                let discovery = Discovery::fetch(&self.http, &self.cfg.issuer).await?;
                let jwks = JwksCache::new(discovery.jwks.clone(), self.http.clone(), &self.cfg);
                Ok(Ready { discovery, jwks })
            })
            .await;
        if let Err(e) = &r {
            *self
                .discovery_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), e.to_string()));
        }
        r
    }

    /// The IdP's metadata (fetched once).
    pub async fn discovery(&self) -> Result<&Discovery, IdentityError> {
        Ok(&self.ready().await?.discovery)
    }

    /// The key cache.
    pub async fn jwks(&self) -> Result<&JwksCache, IdentityError> {
        Ok(&self.ready().await?.jwks)
    }

    /// Verifies an ID token: the strict JWS parse; `alg` allowed and never
    /// `none` or HMAC; the key by `kid` (or the only suitable key) and
    /// consistent with the alg; the signature; then the claims (see
    /// [`TokenError`] for every check). `expected_nonce`: the nonce this
    /// login sent, if any.
    pub async fn verify_id_token(
        &self,
        token: &str,
        expected_nonce: Option<&str>,
    ) -> Result<Claims, TokenError> {
        let jws = jose::parse(token)?;
        let alg = Alg::from_header(&jws.header.alg)?;
        if !self.cfg.allowed_algs.contains(&alg) {
            return Err(TokenError::AlgNotAllowed {
                alg: alg.to_string(),
                allowed: self
                    .cfg
                    .allowed_algs
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if jws.signature.is_empty() {
            return Err(TokenError::BadSignature);
        }
        let ready = self
            .ready()
            .await
            .map_err(|e| TokenError::KeysUnavailable(e.to_string()))?;
        let key = ready.jwks.key(jws.header.kid.as_deref(), alg).await?;
        if !key.verify(alg, jws.signing_input.as_bytes(), &jws.signature) {
            return Err(TokenError::BadSignature);
        }
        check_claims(&self.cfg, &jws.payload, now_unix(), expected_nonce)
    }

    /// Who verified claims are: `oidc:<iss>#<sub>`, named by
    /// `username_claim` (an email only if not `email_verified: false`),
    /// else `sub`; groups and roles from their claims.
    pub fn principal(&self, claims: &Claims) -> Principal {
        let verified_email =
            claims.other.get("email_verified").and_then(|v| v.as_bool()) != Some(false);
        let email = claims
            .string("email")
            .filter(|_| verified_email)
            .map(str::to_string);
        let name = match self.cfg.username_claim.as_str() {
            "email" => email.clone(),
            "sub" => None,
            c => claims.string(c).map(str::to_string),
        }
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| claims.sub.clone());
        Principal {
            id: Principal::oidc_id(&claims.iss, &claims.sub),
            name,
            email,
            groups: claims.strings(&self.cfg.groups_claim),
            roles: self
                .cfg
                .roles_claim
                .as_deref()
                .map(|c| claims.strings(c))
                .unwrap_or_default(),
            via: Via::Oidc,
        }
    }

    /// [`OidcClient::verify_id_token`] without a nonce, then
    /// [`OidcClient::principal`]: a bearer ID token on the API.
    pub async fn authenticate(&self, id_token: &str) -> Result<Principal, TokenError> {
        let claims = self.verify_id_token(id_token, None).await?;
        Ok(self.principal(&claims))
    }

    fn endpoint<'a>(
        &self,
        url: &'a Option<Url>,
        what: &'static str,
    ) -> Result<&'a Url, IdentityError> {
        url.as_ref().ok_or(IdentityError::NotSupported(what))
    }

    /// The client's own form fields.
    fn client_fields<'a>(&'a self, pairs: &mut Vec<(&'a str, &'a str)>) {
        pairs.push(("client_id", &self.cfg.client_id));
        if let Some(s) = &self.client_secret {
            pairs.push(("client_secret", s));
        }
    }

    /// RFC 8628 3.1: asks for a device code and the code the user types.
    pub async fn start_device_flow(&self) -> Result<DeviceAuthorization, IdentityError> {
        let d = self.discovery().await?;
        let url = self.endpoint(&d.device, "the device flow (device_authorization_endpoint)")?;
        let scope = self.cfg.scopes.join(" ");
        let mut pairs = vec![("scope", scope.as_str())];
        self.client_fields(&mut pairs);
        let r = self.http.post_form(url, &pairs).await?;
        if !r.ok() {
            return Err(oauth_error(url, &r));
        }
        let raw: RawDevice = r.json(url)?;
        check_url("verification_uri", &raw.verification_uri)?;
        if let Some(c) = &raw.verification_uri_complete {
            check_url("verification_uri_complete", c)?;
        }
        if raw.device_code.is_empty() || raw.user_code.is_empty() || raw.expires_in == 0 {
            return Err(IdentityError::Protocol {
                url: url.raw.clone(),
                detail: "an empty device_code or user_code, or expires_in 0".into(),
            });
        }
        Ok(DeviceAuthorization {
            user_code: raw.user_code,
            verification_uri: raw.verification_uri,
            verification_uri_complete: raw.verification_uri_complete,
            expires_in: Duration::from_secs(raw.expires_in),
            interval: raw
                .interval
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_INTERVAL)
                .max(MIN_INTERVAL),
            device_code: raw.device_code,
            issued: Instant::now(),
        })
    }

    /// RFC 8628 3.4-3.5: polls the token endpoint every `interval` until
    /// the user approves (the tokens, ID token verified), denies
    /// ([`IdentityError::AccessDenied`]) or the code expires
    /// ([`IdentityError::DeviceExpired`]); `slow_down` adds 5 seconds to
    /// the interval for good. `progress` hears every pending answer.
    pub async fn poll_device_token(
        &self,
        auth: &DeviceAuthorization,
        mut progress: impl FnMut(DevicePoll),
    ) -> Result<TokenSet, IdentityError> {
        let d = self.discovery().await?;
        let url = self.endpoint(&d.token, "token requests (token_endpoint)")?;
        let deadline = auth.issued + auth.expires_in;
        let mut interval = auth.interval;
        loop {
            if Instant::now() + interval >= deadline {
                return Err(IdentityError::DeviceExpired);
            }
            tokio::time::sleep(interval).await;
            let mut pairs = vec![
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", auth.device_code.as_str()),
            ];
            self.client_fields(&mut pairs);
            let r = self.http.post_form(url, &pairs).await?;
            if r.ok() {
                return self.token_set(url, &r, None, None).await;
            }
            let err: Option<OAuthError> = serde_json::from_slice(&r.body).ok();
            match err.as_ref().map(|e| e.error.as_str()) {
                Some("authorization_pending") => progress(DevicePoll::Pending),
                Some("slow_down") => {
                    interval += SLOW_DOWN_STEP;
                    progress(DevicePoll::SlowDown { interval });
                }
                Some("expired_token") => return Err(IdentityError::DeviceExpired),
                Some("access_denied") => {
                    return Err(IdentityError::AccessDenied {
                        description: err.and_then(|e| e.error_description).map(|d| quoted(&d)),
                    })
                }
                _ => return Err(oauth_error(url, &r)),
            }
        }
    }

    /// The refresh grant (RFC 6749 6). The answer must carry a new ID token
    /// (brig authenticates with it); a refresh token the IdP rotates comes
    /// back in the set, else the old one is kept.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, IdentityError> {
        let d = self.discovery().await?;
        let url = self.endpoint(&d.token, "token requests (token_endpoint)")?;
        let mut pairs = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.client_fields(&mut pairs);
        let r = self.http.post_form(url, &pairs).await?;
        if !r.ok() {
            return Err(oauth_error(url, &r));
        }
        self.token_set(url, &r, None, Some(refresh_token)).await
    }

    /// The authorization code grant with the PKCE verifier (RFC 7636 4.5).
    /// Checks no nonce: prefer [`OidcClient::complete_auth_code`].
    pub async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenSet, IdentityError> {
        self.exchange(code, code_verifier, redirect_uri, None).await
    }

    /// Finishes a browser login: the redirect's `state` must be the
    /// request's, the code is exchanged with its verifier, and the ID token
    /// must carry its nonce.
    pub async fn complete_auth_code(
        &self,
        req: &AuthCodeRequest,
        returned_state: &str,
        code: &str,
    ) -> Result<TokenSet, IdentityError> {
        req.check_state(returned_state)?;
        self.exchange(
            code,
            &req.code_verifier,
            &req.redirect_uri,
            Some(&req.nonce),
        )
        .await
    }

    async fn exchange(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
        nonce: Option<&str>,
    ) -> Result<TokenSet, IdentityError> {
        let d = self.discovery().await?;
        let url = self.endpoint(&d.token, "token requests (token_endpoint)")?;
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", code_verifier),
            ("redirect_uri", redirect_uri),
        ];
        self.client_fields(&mut pairs);
        let r = self.http.post_form(url, &pairs).await?;
        if !r.ok() {
            return Err(oauth_error(url, &r));
        }
        self.token_set(url, &r, nonce, None).await
    }

    async fn token_set(
        &self,
        url: &Url,
        r: &Response,
        nonce: Option<&str>,
        old_refresh: Option<&str>,
    ) -> Result<TokenSet, IdentityError> {
        let raw: RawTokens = r.json(url)?;
        let id_token = raw.id_token.ok_or_else(|| IdentityError::Protocol {
            url: url.raw.clone(),
            detail: "the token answer has no id_token (is \"openid\" in [identity.oidc] scopes?)"
                .into(),
        })?;
        let claims = self.verify_id_token(&id_token, nonce).await?;
        Ok(TokenSet {
            id_token,
            access_token: raw.access_token,
            refresh_token: raw
                .refresh_token
                .or_else(|| old_refresh.map(str::to_string)),
            expires_in: raw.expires_in.map(Duration::from_secs),
            claims,
        })
    }
}

/// An error answer of an OAuth2 endpoint.
fn oauth_error(url: &Url, r: &Response) -> IdentityError {
    match serde_json::from_slice::<OAuthError>(&r.body) {
        Ok(e) => IdentityError::Refused {
            endpoint: url.raw.clone(),
            status: r.status,
            error: quoted(&e.error),
            description: e.error_description.map(|d| quoted(&d)),
        },
        Err(_) => IdentityError::Protocol {
            url: url.raw.clone(),
            detail: format!("HTTP {} without an OAuth2 error body", r.status),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> OidcConfig {
        OidcConfig::new("https://idp.example", "brig")
    }

    fn check(v: serde_json::Value, nonce: Option<&str>) -> Result<Claims, TokenError> {
        check_claims(&cfg(), v.to_string().as_bytes(), 1_000_000, nonce)
    }

    fn good() -> serde_json::Value {
        json!({"iss":"https://idp.example","sub":"alice","aud":"brig","exp":1_000_300,
               "iat":1_000_000,"email":"a@example.com","groups":["g1","g2"]})
    }

    fn with(k: &str, v: serde_json::Value) -> serde_json::Value {
        let mut g = good();
        g[k] = v;
        g
    }

    #[test]
    fn every_claim_check() {
        let c = check(good(), None).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.aud.clone()),
            ("alice", vec!["brig".to_string()])
        );
        let r = |v, n| check(v, n).map(|_| "ok").unwrap_or_else(|e| e.reason());
        assert_eq!(
            r(with("iss", json!("https://idp.example/")), None),
            "wrong_issuer"
        );
        assert_eq!(r(with("aud", json!("other")), None), "wrong_audience");
        assert_eq!(r(with("aud", json!(["other", "brig"])), None), "wrong_azp");
        let mut multi = with("aud", json!(["other", "brig"]));
        multi["azp"] = json!("brig");
        assert_eq!(r(multi, None), "ok");
        assert_eq!(r(with("aud", json!([])), None), "bad_claim");
        assert_eq!(r(with("aud", json!([1])), None), "bad_claim");
        // exp: 60s leeway.
        assert_eq!(r(with("exp", json!(1_000_000 - 61)), None), "expired");
        assert_eq!(r(with("exp", json!(1_000_000 - 59)), None), "ok");
        assert_eq!(r(with("exp", json!(999_999.5)), None), "ok");
        assert_eq!(r(with("exp", json!("1000300")), None), "bad_claim");
        let mut no_exp = good();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(r(no_exp, None), "bad_claim");
        assert_eq!(r(with("nbf", json!(1_000_061)), None), "not_yet_valid");
        assert_eq!(r(with("nbf", json!(1_000_059)), None), "ok");
        assert_eq!(r(with("iat", json!(1_000_061)), None), "issued_in_future");
        assert_eq!(r(with("sub", json!("")), None), "bad_claim");
        assert_eq!(r(good(), Some("n1")), "nonce_missing");
        assert_eq!(r(with("nonce", json!("n2")), Some("n1")), "nonce_mismatch");
        assert_eq!(r(with("nonce", json!("n1")), Some("n1")), "ok");
        assert_eq!(
            r(with("nonce", json!("n1-longer")), Some("n1")),
            "nonce_mismatch"
        );
        // A repeated registered claim is refused, not read one way.
        let dup = br#"{"iss":"https://idp.example","iss":"https://evil","sub":"a","aud":"brig","exp":1000300}"#;
        assert_eq!(
            check_claims(&cfg(), dup, 1_000_000, None)
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn principals_from_claims() {
        let client = OidcClient::new(cfg()).unwrap();
        let c = check(good(), None).unwrap();
        let p = client.principal(&c);
        assert_eq!(p.id, "oidc:https://idp.example#alice");
        assert_eq!((p.name.as_str(), p.via), ("a@example.com", Via::Oidc));
        assert_eq!(p.groups, ["g1", "g2"]);
        let unverified = check(with("email_verified", json!(false)), None).unwrap();
        let p = client.principal(&unverified);
        assert_eq!((p.name.as_str(), p.email.clone()), ("alice", None));
        let one_group = check(with("groups", json!("solo")), None).unwrap();
        assert_eq!(client.principal(&one_group).groups, ["solo"]);
    }

    #[test]
    fn pkce_s256_known_answer() {
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let v = random_b64();
        assert_eq!(v.len(), 43);
        assert_ne!(v, random_b64());
    }
}
