//! `TestIdp`: a real OpenID provider on 127.0.0.1 over HTTPS, for tests
//! (cargo feature `test-idp`; never in the shipped binary).
//!
//! It has a CA of its own ([`TestIdp::ca_file`], [`TestIdp::ca_pem`]) and
//! serves discovery, a JWKS of real RSA and EC keys (rotatable), the device
//! authorization endpoint, an authorization endpoint (it logs in whoever
//! [`TestIdp::authorize`] says, and redirects with a code), and a token
//! endpoint for the device code (RFC 8628, with `slow_down` for clients that
//! poll too fast), authorization code (PKCE S256 checked) and refresh token
//! grants. Tokens are JWTs signed with its keys by OpenSSL. Helpers mint
//! the bad tokens a verifier must refuse ([`BadToken`]).
//!
//! ```no_run
//! # async fn f() {
//! use brig_identity::testing::{TestIdp, TestUser};
//! let idp = TestIdp::start().await;
//! let client = brig_identity::OidcClient::new(idp.config()).unwrap();
//! let token = idp.id_token(&TestUser::new("alice"));
//! let claims = client.verify_id_token(&token, None).await.unwrap();
//! assert_eq!(claims.sub, "alice");
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use rand::RngCore;
use serde_json::{json, Map, Value};

use crate::oidc::{now_unix, pkce_challenge};
use crate::{Alg, OidcConfig};

/// A user the IdP logs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl TestUser {
    /// `sub` = `name`, email `<name>@example.test`, no groups.
    pub fn new(name: &str) -> TestUser {
        TestUser {
            sub: name.to_string(),
            email: format!("{name}@example.test"),
            name: name.to_string(),
            groups: Vec::new(),
        }
    }

    pub fn with_groups(mut self, groups: &[&str]) -> TestUser {
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }
}

/// How the IdP behaves.
#[derive(Clone, Debug)]
pub struct TestIdpOptions {
    pub client_id: String,
    /// The issuer's path (`/realms/brig`, Keycloak-like); empty by default.
    pub issuer_path: String,
    /// The device flow's polling interval (whole seconds, 1 at least).
    pub device_interval: Duration,
    pub device_expires_in: Duration,
    /// How long the ID tokens it issues live.
    pub token_ttl: Duration,
    /// The JWKS's `Cache-Control: max-age`, if any.
    pub jwks_max_age: Option<u64>,
    /// The alg of the ID tokens its token endpoint issues.
    pub id_token_alg: Alg,
}

impl Default for TestIdpOptions {
    fn default() -> Self {
        TestIdpOptions {
            client_id: "brig-cli".into(),
            issuer_path: String::new(),
            device_interval: Duration::from_secs(1),
            device_expires_in: Duration::from_secs(600),
            token_ttl: Duration::from_secs(300),
            jwks_max_age: Some(300),
            id_token_alg: Alg::RS256,
        }
    }
}

/// The tokens a verifier must refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadToken {
    /// exp an hour ago.
    Expired,
    /// nbf in an hour.
    NotYetValid,
    /// iat in an hour.
    IssuedInFuture,
    /// aud is someone else.
    WrongAudience,
    /// Two audiences and no azp.
    MultipleAudiencesNoAzp,
    /// iss is another issuer.
    WrongIssuer,
    /// `alg: none`, no signature.
    AlgNone,
    /// HS256 "signed" with the published RSA key's PEM as the HMAC secret,
    /// kid of that RSA key (the key-confusion attack).
    KeyConfusionHs256,
    /// Signed by a key the JWKS does not have, with a kid it does not have.
    UnknownKey,
    /// Signed by another key, claiming the published RSA key's kid.
    Forged,
    /// A good RS256 token whose payload was changed (sub = "admin").
    TamperedPayload,
    /// `alg: ES256` and the kid of the RSA key (signed by the EC key).
    KidWrongKeyType,
}

struct SigningKey {
    kid: String,
    alg: Alg,
    pkey: PKey<Private>,
    published: bool,
}

fn jwk(k: &SigningKey) -> Value {
    let b = |v: Vec<u8>| URL_SAFE_NO_PAD.encode(v);
    match k.alg {
        Alg::ES256 | Alg::ES384 | Alg::ES512 => {
            let ec = k.pkey.ec_key().expect("an EC key");
            let (crv, size) = match k.alg {
                Alg::ES256 => ("P-256", 32),
                Alg::ES384 => ("P-384", 48),
                _ => ("P-521", 66),
            };
            let mut ctx = BigNumContext::new().expect("bn ctx");
            let (mut x, mut y) = (BigNum::new().expect("bn"), BigNum::new().expect("bn"));
            ec.public_key()
                .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
                .expect("coordinates");
            json!({"kty":"EC","kid":k.kid,"use":"sig","alg":k.alg.as_str(),"crv":crv,
                   "x":b(x.to_vec_padded(size).expect("pad")),"y":b(y.to_vec_padded(size).expect("pad"))})
        }
        Alg::EdDSA => json!({"kty":"OKP","kid":k.kid,"use":"sig","alg":"EdDSA","crv":"Ed25519",
                   "x":b(k.pkey.raw_public_key().expect("raw key"))}),
        _ => {
            let rsa = k.pkey.rsa().expect("an RSA key");
            json!({"kty":"RSA","kid":k.kid,"use":"sig","alg":k.alg.as_str(),
                   "n":b(rsa.n().to_vec()),"e":b(rsa.e().to_vec())})
        }
    }
}

fn generate(alg: Alg) -> PKey<Private> {
    let ec = |nid| {
        let group = EcGroup::from_curve_name(nid).expect("curve");
        PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
    };
    match alg {
        Alg::ES256 => ec(Nid::X9_62_PRIME256V1),
        Alg::ES384 => ec(Nid::SECP384R1),
        Alg::ES512 => ec(Nid::SECP521R1),
        Alg::EdDSA => PKey::generate_ed25519().expect("Ed25519 key"),
        _ => PKey::from_rsa(Rsa::generate(2048).expect("RSA key")).expect("pkey"),
    }
}

/// A JWS signature of `alg` with `key`, in JWS form (r || s for ECDSA).
fn sign_bytes(key: &PKey<Private>, alg: Alg, input: &[u8]) -> Vec<u8> {
    let md = match alg {
        Alg::RS256 | Alg::PS256 | Alg::ES256 => MessageDigest::sha256(),
        Alg::RS384 | Alg::PS384 | Alg::ES384 => MessageDigest::sha384(),
        Alg::RS512 | Alg::PS512 | Alg::ES512 => MessageDigest::sha512(),
        Alg::EdDSA => {
            let mut s = Signer::new_without_digest(key).expect("signer");
            return s.sign_oneshot_to_vec(input).expect("Ed25519 signature");
        }
    };
    let mut s = Signer::new(md, key).expect("signer");
    if matches!(alg, Alg::PS256 | Alg::PS384 | Alg::PS512) {
        s.set_rsa_padding(Padding::PKCS1_PSS).expect("pss");
        s.set_rsa_mgf1_md(md).expect("mgf1");
        s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
            .expect("salt");
    }
    s.update(input).expect("update");
    let sig = s.sign_to_vec().expect("signature");
    let size = match alg {
        Alg::ES256 => 32,
        Alg::ES384 => 48,
        Alg::ES512 => 66,
        _ => return sig,
    };
    let der = EcdsaSig::from_der(&sig).expect("DER signature");
    let mut raw = der.r().to_vec_padded(size).expect("r");
    raw.extend(der.s().to_vec_padded(size).expect("s"));
    raw
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn compact(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DeviceStatus {
    Pending,
    Approved(TestUser),
    Denied,
    Expired,
    /// Tokens were issued; the code is spent.
    Used,
}

struct DeviceGrant {
    user_code: String,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    status: DeviceStatus,
    force_slow_down: bool,
    polls: u32,
    too_early: u32,
}

struct CodeGrant {
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: TestUser,
}

struct State {
    keys: Vec<SigningKey>,
    next_kid: u32,
    advertised_issuer: Option<String>,
    jwks_available: bool,
    discovery_requests: usize,
    jwks_requests: usize,
    token_requests: usize,
    /// By device code.
    devices: HashMap<String, DeviceGrant>,
    codes: HashMap<String, CodeGrant>,
    refresh: HashMap<String, TestUser>,
    browser_user: Option<TestUser>,
}

struct Inner {
    issuer: String,
    path: String,
    opts: TestIdpOptions,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the device flow's polls looked like, for a user code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevicePolls {
    pub polls: u32,
    /// Polls that came sooner than the interval (answered `slow_down`).
    pub too_early: u32,
}

/// The redirect the authorization endpoint answered.
#[derive(Clone, Debug)]
pub struct AuthRedirect {
    pub location: String,
    pub code: String,
    pub state: String,
}

/// The IdP. Dropping it stops the server.
pub struct TestIdp {
    inner: Arc<Inner>,
    addr: SocketAddr,
    ca_pem: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tolerance on the device flow's interval (scheduling, the answer's
/// trip back).
const POLL_TOLERANCE: Duration = Duration::from_millis(100);

impl TestIdp {
    /// An IdP with one RS256 and one ES256 key, client `brig-cli`.
    pub async fn start() -> TestIdp {
        TestIdp::start_with(TestIdpOptions::default()).await
    }

    pub async fn start_with(opts: TestIdpOptions) -> TestIdp {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, leaf, leaf_key) = pki();
        let ca_pem = String::from_utf8(ca.to_pem().expect("pem")).expect("utf-8");
        let ca_file = dir.path().join("test-idp-ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write the CA");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let path = opts.issuer_path.trim_end_matches('/').to_string();
        let inner = Arc::new(Inner {
            issuer: format!("https://{addr}{path}"),
            path,
            opts,
            state: Mutex::new(State {
                keys: Vec::new(),
                next_kid: 1,
                advertised_issuer: None,
                jwks_available: true,
                discovery_requests: 0,
                jwks_requests: 0,
                token_requests: 0,
                devices: HashMap::new(),
                codes: HashMap::new(),
                refresh: HashMap::new(),
                browser_user: None,
            }),
        });
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("tls");
        acceptor.set_private_key(&leaf_key).expect("key");
        acceptor.set_certificate(&leaf).expect("cert");
        let acceptor = Arc::new(acceptor.build());
        let server = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, inner) = (acceptor.clone(), server.clone());
                tokio::spawn(async move {
                    let Ok(ssl) = Ssl::new(acceptor.context()) else {
                        return;
                    };
                    let Ok(mut tls) = tokio_openssl::SslStream::new(ssl, tcp) else {
                        return;
                    };
                    if Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let inner = inner.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let r = Req {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().unwrap_or_default().to_string(),
                                body,
                            };
                            Ok::<_, Infallible>(handle(&inner, r))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let idp = TestIdp {
            inner,
            addr,
            ca_pem,
            ca_file,
            _dir: dir,
            task,
        };
        idp.add_key(Alg::RS256);
        idp.add_key(Alg::ES256);
        idp
    }

    /// `https://127.0.0.1:<port>[<issuer_path>]`.
    pub fn issuer(&self) -> String {
        self.inner.issuer.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn client_id(&self) -> &str {
        &self.inner.opts.client_id
    }

    /// The CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The same CA in a file (for `ca_file`); lives as long as the IdP.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A client configuration for this IdP: its issuer and client id, its
    /// CA trusted, every other setting the default.
    pub fn config(&self) -> OidcConfig {
        let mut c = OidcConfig::new(self.issuer(), self.client_id());
        c.ca_file = Some(self.ca_file.clone());
        c.timeout = Duration::from_secs(5);
        c
    }

    /// Publishes a new key for `alg` and signs that alg with it from now
    /// on. Returns its kid.
    pub fn add_key(&self, alg: Alg) -> String {
        let pkey = generate(alg);
        let mut st = self.inner.state();
        let kid = format!("{}-{}", alg.as_str().to_ascii_lowercase(), st.next_kid);
        st.next_kid += 1;
        st.keys.push(SigningKey {
            kid: kid.clone(),
            alg,
            pkey,
            published: true,
        });
        kid
    }

    /// Takes a key out of the JWKS (tokens it signed stop verifying once
    /// a verifier refetches).
    pub fn remove_key(&self, kid: &str) {
        for k in self.inner.state().keys.iter_mut() {
            if k.kid == kid {
                k.published = false;
            }
        }
    }

    /// Key rotation: a new key for `alg` signs from now on and the old
    /// keys of that alg leave the JWKS. Returns the new kid. (For an
    /// overlap window: [`TestIdp::add_key`], later [`TestIdp::remove_key`].)
    pub fn rotate(&self, alg: Alg) -> String {
        let old: Vec<String> = self
            .inner
            .state()
            .keys
            .iter()
            .filter(|k| k.alg == alg && k.published)
            .map(|k| k.kid.clone())
            .collect();
        let kid = self.add_key(alg);
        for k in old {
            self.remove_key(&k);
        }
        kid
    }

    /// The kids the JWKS publishes.
    pub fn kids(&self) -> Vec<String> {
        let st = self.inner.state();
        st.keys
            .iter()
            .filter(|k| k.published)
            .map(|k| k.kid.clone())
            .collect()
    }

    /// The kid that signs `alg` now.
    pub fn signing_kid(&self, alg: Alg) -> Option<String> {
        let st = self.inner.state();
        st.keys
            .iter()
            .rev()
            .find(|k| k.alg == alg && k.published)
            .map(|k| k.kid.clone())
    }

    /// `false`: the JWKS answers 503 (an IdP outage).
    pub fn set_jwks_available(&self, up: bool) {
        self.inner.state().jwks_available = up;
    }

    /// Makes discovery advertise another issuer (a misconfigured or
    /// impersonating IdP).
    pub fn set_advertised_issuer(&self, issuer: Option<&str>) {
        self.inner.state().advertised_issuer = issuer.map(str::to_string);
    }

    pub fn discovery_requests(&self) -> usize {
        self.inner.state().discovery_requests
    }

    pub fn jwks_requests(&self) -> usize {
        self.inner.state().jwks_requests
    }

    pub fn token_requests(&self) -> usize {
        self.inner.state().token_requests
    }

    /// Good claims for `user`: iss, aud (the client id), sub, iat now, exp
    /// in `token_ttl`, email (verified), name, groups. Edit, then
    /// [`TestIdp::sign`].
    pub fn claims(&self, user: &TestUser) -> Map<String, Value> {
        let now = now_unix();
        let v = json!({
            "iss": self.inner.issuer,
            "aud": self.inner.opts.client_id,
            "sub": user.sub,
            "iat": now,
            "exp": now + self.inner.opts.token_ttl.as_secs() as i64,
            "email": user.email,
            "email_verified": true,
            "name": user.name,
            "groups": user.groups,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Signs claims with the current key of `alg` (kid in the header).
    pub fn sign(&self, alg: Alg, claims: &Map<String, Value>) -> String {
        let kid = self
            .signing_kid(alg)
            .unwrap_or_else(|| panic!("the test IdP has no {alg} key; add_key({alg:?}) first"));
        self.sign_with(
            &kid,
            json!({"alg": alg.as_str(), "kid": kid, "typ": "JWT"}),
            claims,
        )
    }

    /// Signs with the key `kid` (published or not) under any header: the
    /// key's own alg makes the signature, whatever the header says.
    pub fn sign_with(&self, kid: &str, header: Value, claims: &Map<String, Value>) -> String {
        let st = self.inner.state();
        let k = st
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .unwrap_or_else(|| panic!("no key {kid}"));
        compact(&header, &Value::Object(claims.clone()), |input| {
            sign_bytes(&k.pkey, k.alg, input)
        })
    }

    /// A good ID token for `user`, RS256.
    pub fn id_token(&self, user: &TestUser) -> String {
        self.sign(Alg::RS256, &self.claims(user))
    }

    /// A good ID token for `user` with `alg`.
    pub fn id_token_alg(&self, user: &TestUser, alg: Alg) -> String {
        self.sign(alg, &self.claims(user))
    }

    /// A token a verifier must refuse.
    pub fn bad_token(&self, kind: BadToken, user: &TestUser) -> String {
        let now = now_unix();
        let mut c = self.claims(user);
        let rsa_kid = self.signing_kid(Alg::RS256).expect("an RS256 key");
        let with = |mut c: Map<String, Value>, k: &str, v: Value| {
            c.insert(k.to_string(), v);
            self.sign(Alg::RS256, &c)
        };
        match kind {
            BadToken::Expired => {
                c.insert("iat".into(), json!(now - 7200));
                with(c, "exp", json!(now - 3600))
            }
            BadToken::NotYetValid => with(c, "nbf", json!(now + 3600)),
            BadToken::IssuedInFuture => with(c, "iat", json!(now + 3600)),
            BadToken::WrongAudience => with(c, "aud", json!("someone-else")),
            BadToken::MultipleAudiencesNoAzp => {
                with(c, "aud", json!([self.client_id(), "someone-else"]))
            }
            BadToken::WrongIssuer => with(c, "iss", json!("https://evil.example")),
            BadToken::AlgNone => format!(
                "{}.{}.",
                b64json(&json!({"alg": "none", "typ": "JWT"})),
                b64json(&Value::Object(c))
            ),
            BadToken::KeyConfusionHs256 => {
                let pem = {
                    let st = self.inner.state();
                    let k = st.keys.iter().find(|k| k.kid == rsa_kid).expect("key");
                    k.pkey.public_key_to_pem().expect("pem")
                };
                let hmac = PKey::hmac(&pem).expect("hmac key");
                compact(
                    &json!({"alg": "HS256", "kid": rsa_kid, "typ": "JWT"}),
                    &Value::Object(c),
                    |input| {
                        let mut s = Signer::new(MessageDigest::sha256(), &hmac).expect("hmac");
                        s.update(input).expect("update");
                        s.sign_to_vec().expect("hmac")
                    },
                )
            }
            BadToken::UnknownKey | BadToken::Forged => {
                let other = generate(Alg::RS256);
                let kid = if kind == BadToken::Forged {
                    rsa_kid
                } else {
                    random_token("unknown-")
                };
                compact(
                    &json!({"alg": "RS256", "kid": kid, "typ": "JWT"}),
                    &Value::Object(c),
                    |input| sign_bytes(&other, Alg::RS256, input),
                )
            }
            BadToken::TamperedPayload => {
                let good = self.sign(Alg::RS256, &c);
                c.insert("sub".into(), json!("admin"));
                let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
                parts[1] = b64json(&Value::Object(c));
                parts.join(".")
            }
            BadToken::KidWrongKeyType => {
                let ec_kid = self.signing_kid(Alg::ES256).expect("an ES256 key");
                self.sign_with(
                    &ec_kid,
                    json!({"alg": "ES256", "kid": rsa_kid, "typ": "JWT"}),
                    &c,
                )
            }
        }
    }

    /// The user logged in at the authorization endpoint is `user`: requests
    /// `authorization_url` (from [`crate::AuthCodeRequest`]) over HTTPS like
    /// a browser, and returns the redirect with the code and state.
    pub async fn authorize(
        &self,
        authorization_url: &str,
        user: &TestUser,
    ) -> Result<AuthRedirect, String> {
        self.inner.state().browser_user = Some(user.clone());
        let http = crate::http::HttpClient::new(Some(&self.ca_file), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let url = crate::http::check_url("authorization URL", authorization_url)
            .map_err(|e| e.to_string())?;
        let r = http.get(&url).await.map_err(|e| e.to_string())?;
        if r.status != 302 {
            return Err(format!(
                "HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        let location = r.header("location").ok_or("no Location")?.to_string();
        let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let mut code = None;
        let mut state = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" => code = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                _ => {}
            }
        }
        Ok(AuthRedirect {
            code: code.ok_or("no code in the redirect")?,
            state: state.unwrap_or_default(),
            location,
        })
    }

    fn device<R>(&self, user_code: &str, f: impl FnOnce(&mut DeviceGrant) -> R) -> Option<R> {
        let mut st = self.inner.state();
        st.devices
            .values_mut()
            .find(|g| g.user_code == user_code)
            .map(f)
    }

    /// The user approves the device login; false if no such user code.
    pub fn approve(&self, user_code: &str, user: &TestUser) -> bool {
        self.device(user_code, |g| {
            g.status = DeviceStatus::Approved(user.clone())
        })
        .is_some()
    }

    /// The user denies the device login.
    pub fn deny(&self, user_code: &str) -> bool {
        self.device(user_code, |g| g.status = DeviceStatus::Denied)
            .is_some()
    }

    /// The device code expires now.
    pub fn expire(&self, user_code: &str) -> bool {
        self.device(user_code, |g| g.status = DeviceStatus::Expired)
            .is_some()
    }

    /// The next poll is answered `slow_down` (and the interval grows 5s).
    pub fn slow_down_next(&self, user_code: &str) -> bool {
        self.device(user_code, |g| g.force_slow_down = true)
            .is_some()
    }

    pub fn device_polls(&self, user_code: &str) -> Option<DevicePolls> {
        self.device(user_code, |g| DevicePolls {
            polls: g.polls,
            too_early: g.too_early,
        })
    }
}

/// A CA and a leaf it signed for 127.0.0.1 and localhost.
fn pki() -> (X509, X509, PKey<Private>) {
    let key = || generate(Alg::ES256);
    let name = |cn: &str| {
        let mut n = X509NameBuilder::new().expect("name");
        n.append_entry_by_text("CN", cn).expect("cn");
        n.build()
    };
    let builder =
        |serial: u32, subject: &str, issuer: &openssl::x509::X509NameRef, key: &PKey<Private>| {
            let mut b = X509Builder::new().expect("x509");
            b.set_version(2).expect("v3");
            b.set_serial_number(
                &BigNum::from_u32(serial)
                    .and_then(|n| n.to_asn1_integer())
                    .expect("serial"),
            )
            .expect("serial");
            b.set_subject_name(&name(subject)).expect("subject");
            b.set_issuer_name(issuer).expect("issuer");
            b.set_pubkey(key).expect("pubkey");
            b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
                .expect("nb");
            b.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
                .expect("na");
            b
        };
    let ca_key = key();
    let ca_name = name("brig-identity test IdP CA");
    let mut b = builder(1, "brig-identity test IdP CA", &ca_name, &ca_key);
    b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
        .expect("bc");
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .expect("ku"),
    )
    .expect("ku");
    b.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    let ca = b.build();

    let leaf_key = key();
    let mut b = builder(2, "127.0.0.1", ca.subject_name(), &leaf_key);
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&b.x509v3_context(Some(&ca), None))
        .expect("san");
    b.append_extension(san).expect("san");
    b.append_extension(BasicConstraints::new().build().expect("bc"))
        .expect("bc");
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().expect("eku"))
        .expect("eku");
    b.sign(&ca_key, MessageDigest::sha256()).expect("sign");
    (ca, b.build(), leaf_key)
}

struct Req {
    method: String,
    path: String,
    query: String,
    body: Bytes,
}

type Resp = Response<Full<Bytes>>;

fn json_resp(status: u16, v: Value, extra: &[(&str, String)]) -> Resp {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for (k, v) in extra {
        b = b.header(*k, v);
    }
    b.body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn oauth_err(status: u16, error: &str, description: &str) -> Resp {
    json_resp(
        status,
        json!({"error": error, "error_description": description}),
        &[],
    )
}

fn form(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

fn handle(inner: &Inner, r: Req) -> Resp {
    let Some(path) = r.path.strip_prefix(inner.path.as_str()) else {
        return oauth_err(404, "not_found", "no such path");
    };
    match (r.method.as_str(), path) {
        ("GET", "/.well-known/openid-configuration") => discovery(inner),
        ("GET", "/jwks") => jwks(inner),
        ("POST", "/device") => device_authorization(inner, &form(&r.body)),
        ("GET", "/authorize") => authorize(inner, &form(r.query.as_bytes())),
        ("POST", "/token") => {
            inner.state().token_requests += 1;
            token(inner, &form(&r.body))
        }
        _ => oauth_err(404, "not_found", "no such endpoint"),
    }
}

fn discovery(inner: &Inner) -> Resp {
    let iss = &inner.issuer;
    let advertised = {
        let mut st = inner.state();
        st.discovery_requests += 1;
        st.advertised_issuer.clone().unwrap_or_else(|| iss.clone())
    };
    json_resp(
        200,
        json!({
            "issuer": advertised,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "device_authorization_endpoint": format!("{iss}/device"),
            "jwks_uri": format!("{iss}/jwks"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256", "EdDSA"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
        }),
        &[],
    )
}

fn jwks(inner: &Inner) -> Resp {
    let mut st = inner.state();
    st.jwks_requests += 1;
    if !st.jwks_available {
        return oauth_err(503, "temporarily_unavailable", "the JWKS is down");
    }
    let keys: Vec<Value> = st.keys.iter().filter(|k| k.published).map(jwk).collect();
    let extra: Vec<(&str, String)> = inner
        .opts
        .jwks_max_age
        .map(|a| ("cache-control", format!("public, max-age={a}")))
        .into_iter()
        .collect();
    json_resp(200, json!({ "keys": keys }), &extra)
}

fn device_authorization(inner: &Inner, f: &HashMap<String, String>) -> Resp {
    if f.get("client_id") != Some(&inner.opts.client_id) {
        return oauth_err(401, "invalid_client", "unknown client_id");
    }
    if !f
        .get("scope")
        .is_some_and(|s| s.split(' ').any(|s| s == "openid"))
    {
        return oauth_err(400, "invalid_scope", "openid is required");
    }
    let device_code = random_token("dc-");
    let mut b = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let user_code = format!(
        "{:04X}-{:04X}",
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]])
    );
    let interval = inner.opts.device_interval.max(Duration::from_secs(1));
    inner.state().devices.insert(
        device_code.clone(),
        DeviceGrant {
            user_code: user_code.clone(),
            expires: Instant::now() + inner.opts.device_expires_in,
            interval,
            last_poll: None,
            status: DeviceStatus::Pending,
            force_slow_down: false,
            polls: 0,
            too_early: 0,
        },
    );
    let verify = format!("{}/activate", inner.issuer);
    json_resp(
        200,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verify,
            "verification_uri_complete": format!("{verify}?user_code={user_code}"),
            "expires_in": inner.opts.device_expires_in.as_secs(),
            "interval": interval.as_secs(),
        }),
        &[],
    )
}

fn authorize(inner: &Inner, q: &HashMap<String, String>) -> Resp {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    if get("client_id") != inner.opts.client_id {
        return oauth_err(400, "invalid_client", "unknown client_id");
    }
    if get("response_type") != "code" {
        return oauth_err(400, "unsupported_response_type", "only code");
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
        return oauth_err(400, "invalid_request", "PKCE with S256 is required");
    }
    let redirect = get("redirect_uri");
    if redirect.is_empty() {
        return oauth_err(400, "invalid_request", "redirect_uri is required");
    }
    let Some(user) = inner.state().browser_user.clone() else {
        return oauth_err(401, "login_required", "nobody is logged in");
    };
    let code = random_token("code-");
    inner.state().codes.insert(
        code.clone(),
        CodeGrant {
            redirect_uri: redirect.to_string(),
            challenge: get("code_challenge").to_string(),
            nonce: q.get("nonce").cloned(),
            user,
        },
    );
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("code", &code);
    if let Some(s) = q.get("state") {
        query.append_pair("state", s);
    }
    let sep = if redirect.contains('?') { '&' } else { '?' };
    Response::builder()
        .status(302)
        .header("location", format!("{redirect}{sep}{}", query.finish()))
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn token(inner: &Inner, f: &HashMap<String, String>) -> Resp {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or_default();
    if get("client_id") != inner.opts.client_id {
        return oauth_err(401, "invalid_client", "unknown client_id");
    }
    match get("grant_type") {
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let now = Instant::now();
            let mut st = inner.state();
            let Some(g) = st.devices.get_mut(get("device_code")) else {
                return oauth_err(400, "invalid_grant", "unknown device_code");
            };
            g.polls += 1;
            if now >= g.expires && g.status != DeviceStatus::Used {
                g.status = DeviceStatus::Expired;
            }
            if g.status == DeviceStatus::Expired {
                return oauth_err(400, "expired_token", "the device code expired");
            }
            let early = g
                .last_poll
                .is_some_and(|t| now.duration_since(t) + POLL_TOLERANCE < g.interval);
            g.last_poll = Some(now);
            if early || g.force_slow_down {
                g.too_early += u32::from(early);
                g.force_slow_down = false;
                g.interval += Duration::from_secs(5);
                return oauth_err(400, "slow_down", "poll less often");
            }
            match g.status.clone() {
                DeviceStatus::Pending => oauth_err(
                    400,
                    "authorization_pending",
                    "the user has not approved yet",
                ),
                DeviceStatus::Denied => oauth_err(400, "access_denied", "the user said no"),
                DeviceStatus::Used => oauth_err(400, "invalid_grant", "the device code was used"),
                DeviceStatus::Expired => oauth_err(400, "expired_token", "the device code expired"),
                DeviceStatus::Approved(user) => {
                    g.status = DeviceStatus::Used;
                    drop(st);
                    issue(inner, &user, None)
                }
            }
        }
        "authorization_code" => {
            let Some(g) = inner.state().codes.remove(get("code")) else {
                return oauth_err(400, "invalid_grant", "unknown or used code");
            };
            if g.redirect_uri != get("redirect_uri") {
                return oauth_err(400, "invalid_grant", "redirect_uri differs");
            }
            if pkce_challenge(get("code_verifier")) != g.challenge {
                return oauth_err(400, "invalid_grant", "PKCE verification failed");
            }
            issue(inner, &g.user, g.nonce.as_deref())
        }
        "refresh_token" => {
            let Some(user) = inner.state().refresh.remove(get("refresh_token")) else {
                return oauth_err(400, "invalid_grant", "unknown or used refresh token");
            };
            issue(inner, &user, None)
        }
        _ => oauth_err(400, "unsupported_grant_type", "no such grant"),
    }
}

/// A token answer for `user`: an ID token signed with the current key of
/// `id_token_alg`, an opaque access token, a new refresh token.
fn issue(inner: &Inner, user: &TestUser, nonce: Option<&str>) -> Resp {
    let now = now_unix();
    let alg = inner.opts.id_token_alg;
    let mut claims = json!({
        "iss": inner.issuer, "aud": inner.opts.client_id, "sub": user.sub,
        "iat": now, "exp": now + inner.opts.token_ttl.as_secs() as i64,
        "email": user.email, "email_verified": true, "name": user.name, "groups": user.groups,
    });
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    let refresh = random_token("rt-");
    let id_token = {
        let mut st = inner.state();
        st.refresh.insert(refresh.clone(), user.clone());
        let Some(k) = st.keys.iter().rev().find(|k| k.alg == alg && k.published) else {
            return oauth_err(500, "server_error", "no signing key");
        };
        compact(
            &json!({"alg": alg.as_str(), "kid": k.kid, "typ": "JWT"}),
            &claims,
            |input| sign_bytes(&k.pkey, alg, input),
        )
    };
    json_resp(
        200,
        json!({
            "access_token": random_token("at-"),
            "token_type": "Bearer",
            "expires_in": inner.opts.token_ttl.as_secs(),
            "refresh_token": refresh,
            "id_token": id_token,
            "scope": "openid profile email offline_access",
        }),
        &[("cache-control", "no-store".to_string())],
    )
}
