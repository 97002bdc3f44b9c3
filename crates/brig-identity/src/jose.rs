//! JOSE, the parts brig needs: the signature algorithms (RFC 7518), JWKs
//! (RFC 7517) parsed once into OpenSSL public keys, the strict compact JWS
//! parse (RFC 7515) and signature verification.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Verifier};
use serde::{Deserialize, Serialize};

use crate::error::quoted;
use crate::TokenError;

/// Longer tokens are refused before any parsing. ID tokens are small; the
/// largest (Entra ID with many groups) stay well under this.
pub const MAX_TOKEN_LEN: usize = 32 * 1024;

/// RSA keys shorter than this are not used (RFC 7518 3.3: 2048 at least).
const MIN_RSA_BITS: u32 = 2048;

/// The asymmetric JWS algorithms brig verifies. There is no `none` and no
/// `HS*`: they cannot be configured, and tokens using them are refused
/// with their own errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

const ALL: [Alg; 10] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::ES512,
    Alg::EdDSA,
];

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// The header's `alg`, with the refusals that have their own error:
    /// `none` in any case, and every `HS*` (key confusion).
    pub fn from_header(alg: &str) -> Result<Alg, TokenError> {
        if alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgNone);
        }
        if alg.len() >= 2 && alg[..2].eq_ignore_ascii_case("HS") {
            return Err(TokenError::SymmetricAlg { alg: quoted(alg) });
        }
        // JWS algorithm names are case-sensitive (RFC 7515 4.1.1).
        ALL.into_iter()
            .find(|a| a.as_str() == alg)
            .ok_or_else(|| TokenError::UnsupportedAlg { alg: quoted(alg) })
    }

    fn digest(self) -> Option<MessageDigest> {
        Some(match self {
            Alg::RS256 | Alg::PS256 | Alg::ES256 => MessageDigest::sha256(),
            Alg::RS384 | Alg::PS384 | Alg::ES384 => MessageDigest::sha384(),
            Alg::RS512 | Alg::PS512 | Alg::ES512 => MessageDigest::sha512(),
            Alg::EdDSA => return None,
        })
    }

    /// The key an alg needs.
    fn needs(self) -> KeyKind {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyKind::Rsa
            }
            Alg::ES256 => KeyKind::Ec(Curve::P256),
            Alg::ES384 => KeyKind::Ec(Curve::P384),
            Alg::ES512 => KeyKind::Ec(Curve::P521),
            Alg::EdDSA => KeyKind::Ed25519,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(s: &str) -> Result<Alg, String> {
        Alg::from_header(s).map_err(|e| match e {
            TokenError::AlgNone => {
                "alg `none` (unsigned tokens) can never be allowed".to_string()
            }
            TokenError::SymmetricAlg { .. } => format!(
                "alg `{s}` is symmetric (HMAC): an IdP's keys are public, so it can never be allowed"
            ),
            _ => format!(
                "alg `{s}` is not supported; use one of {}",
                ALL.map(Alg::as_str).join(", ")
            ),
        })
    }
}

impl TryFrom<String> for Alg {
    type Error = String;
    fn try_from(s: String) -> Result<Alg, String> {
        s.parse()
    }
}

impl From<Alg> for String {
    fn from(a: Alg) -> String {
        a.as_str().to_string()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
    fn nid(self) -> Nid {
        match self {
            Curve::P256 => Nid::X9_62_PRIME256V1,
            Curve::P384 => Nid::SECP384R1,
            Curve::P521 => Nid::SECP521R1,
        }
    }
    /// Bytes of one coordinate, and of r and s in a JWS signature.
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    Ec(Curve),
    Ed25519,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa => f.write_str("an RSA key"),
            KeyKind::Ec(c) => write!(f, "an EC {} key", c.name()),
            KeyKind::Ed25519 => f.write_str("an Ed25519 key"),
        }
    }
}

/// One verification key of the IdP's JWKS, parsed once when the JWKS is
/// fetched.
pub(crate) struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, if it pins one.
    pub alg: Option<String>,
    pkey: PKey<Public>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// JWK members are base64url; some IdPs pad them, which is harmless here
/// (the values are public key numbers, not signed input).
fn b64_member(jwk: &serde_json::Value, name: &str) -> Result<Vec<u8>, String> {
    let v = jwk
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .map_err(|_| format!("`{name}` is not base64url"))
}

impl Key {
    /// One JWK; the error says why the key is not usable (it is skipped).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Key, String> {
        let s = |name: &str| jwk.get(name).and_then(|v| v.as_str()).map(str::to_string);
        if let Some(u) = s("use") {
            if u != "sig" {
                return Err(format!("`use` is {u:?}, not \"sig\""));
            }
        }
        if let Some(ops) = jwk.get("key_ops") {
            let verify = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
            if !verify {
                return Err("`key_ops` does not include \"verify\"".into());
            }
        }
        // A JWKS is public: private members mean a badly broken IdP.
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|m| jwk.get(m).is_some())
        {
            return Err("the JWK holds private or symmetric key material; refusing it".into());
        }
        let ssl = |e: openssl::error::ErrorStack| format!("OpenSSL refused the key: {e}");
        let kty = s("kty").ok_or("no `kty`")?;
        let (kind, pkey) = match kty.as_str() {
            "RSA" => {
                let n = BigNum::from_slice(&b64_member(jwk, "n")?).map_err(ssl)?;
                let e = BigNum::from_slice(&b64_member(jwk, "e")?).map_err(ssl)?;
                if n.num_bits() < MIN_RSA_BITS as i32 {
                    return Err(format!(
                        "the RSA key has {} bits; brig uses {MIN_RSA_BITS} at least",
                        n.num_bits()
                    ));
                }
                if e.num_bits() < 2 || !e.is_bit_set(0) {
                    return Err("the RSA public exponent is not an odd number > 1".into());
                }
                let rsa = Rsa::from_public_components(n, e).map_err(ssl)?;
                (KeyKind::Rsa, PKey::from_rsa(rsa).map_err(ssl)?)
            }
            "EC" => {
                let crv = s("crv").ok_or("no `crv`")?;
                let curve = match crv.as_str() {
                    "P-256" => Curve::P256,
                    "P-384" => Curve::P384,
                    "P-521" => Curve::P521,
                    other => return Err(format!("EC curve {other:?} is not supported")),
                };
                let (x, y) = (b64_member(jwk, "x")?, b64_member(jwk, "y")?);
                if x.len() != curve.size() || y.len() != curve.size() {
                    return Err(format!(
                        "{} coordinates must be {} bytes",
                        curve.name(),
                        curve.size()
                    ));
                }
                let group = EcGroup::from_curve_name(curve.nid()).map_err(ssl)?;
                // Checks that the point is on the curve.
                let ec = EcKey::from_public_key_affine_coordinates(
                    &group,
                    &*BigNum::from_slice(&x).map_err(ssl)?,
                    &*BigNum::from_slice(&y).map_err(ssl)?,
                )
                .map_err(ssl)?;
                (KeyKind::Ec(curve), PKey::from_ec_key(ec).map_err(ssl)?)
            }
            "OKP" => {
                let crv = s("crv").ok_or("no `crv`")?;
                if crv != "Ed25519" {
                    return Err(format!("OKP curve {crv:?} is not supported"));
                }
                let x = b64_member(jwk, "x")?;
                if x.len() != 32 {
                    return Err("an Ed25519 key is 32 bytes".into());
                }
                let pkey = PKey::public_key_from_raw_bytes(&x, Id::ED25519).map_err(ssl)?;
                (KeyKind::Ed25519, pkey)
            }
            other => return Err(format!("key type {other:?} cannot verify signatures")),
        };
        Ok(Key {
            kid: s("kid"),
            kind,
            alg: s("alg"),
            pkey,
        })
    }

    /// Whether this key may verify `alg`: the JWK's kty/crv must be the
    /// alg's, and its own `alg`, if any, must be this one.
    pub fn suits(&self, alg: Alg) -> Result<(), String> {
        if self.kind != alg.needs() {
            return Err(format!("it is {}, {alg} needs {}", self.kind, alg.needs()));
        }
        if let Some(a) = &self.alg {
            if a != alg.as_str() {
                return Err(format!("the JWK is pinned to alg {:?}", quoted(a)));
            }
        }
        Ok(())
    }

    /// Verifies `sig` over `input`. Call [`Key::suits`] first.
    pub fn verify(&self, alg: Alg, input: &[u8], sig: &[u8]) -> bool {
        self.try_verify(alg, input, sig).unwrap_or(false)
    }

    fn try_verify(
        &self,
        alg: Alg,
        input: &[u8],
        sig: &[u8],
    ) -> Result<bool, openssl::error::ErrorStack> {
        if self.suits(alg).is_err() {
            return Ok(false);
        }
        let Some(md) = alg.digest() else {
            // EdDSA: the message is signed as is.
            return Verifier::new_without_digest(&self.pkey)?.verify_oneshot(sig, input);
        };
        match alg.needs() {
            KeyKind::Rsa => {
                let mut v = Verifier::new(md, &self.pkey)?;
                if matches!(alg, Alg::PS256 | Alg::PS384 | Alg::PS512) {
                    // RFC 7518 3.5: MGF1 with the same hash, salt = hash size.
                    v.set_rsa_padding(Padding::PKCS1_PSS)?;
                    v.set_rsa_mgf1_md(md)?;
                    v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                } else {
                    v.set_rsa_padding(Padding::PKCS1)?;
                }
                v.update(input)?;
                v.verify(sig)
            }
            KeyKind::Ec(curve) => {
                // JWS carries r || s, each exactly the curve's size (RFC
                // 7518 3.4); OpenSSL verifies DER.
                let n = curve.size();
                if sig.len() != 2 * n {
                    return Ok(false);
                }
                let r = BigNum::from_slice(&sig[..n])?;
                let s = BigNum::from_slice(&sig[n..])?;
                let der = EcdsaSig::from_private_components(r, s)?.to_der()?;
                let mut v = Verifier::new(md, &self.pkey)?;
                v.update(input)?;
                v.verify(&der)
            }
            KeyKind::Ed25519 => Ok(false),
        }
    }
}

/// The protected header, strictly: duplicate members are an error (serde
/// refuses a repeated field), `alg` is required.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
    typ: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

pub(crate) struct Header {
    pub alg: String,
    pub kid: Option<String>,
}

/// A compact JWS, split and decoded, not yet verified.
pub(crate) struct Jws<'a> {
    pub header: Header,
    pub signing_input: &'a str,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

fn segment(name: &str, s: &str) -> Result<Vec<u8>, TokenError> {
    // No padding, no whitespace, no non-canonical trailing bits.
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed(format!("the {name} is not base64url")))
}

/// Splits and decodes `header.payload.signature` and reads the header.
/// Nothing here is trusted yet.
pub(crate) fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Malformed(format!(
            "{} segments, a JWS has 3 (a JWE or an opaque token?)",
            parts.len()
        )));
    }
    if parts[0].is_empty() || parts[1].is_empty() {
        return Err(TokenError::Malformed("an empty header or payload".into()));
    }
    let header = segment("header", parts[0])?;
    let raw: RawHeader = serde_json::from_slice(&header).map_err(|e| {
        TokenError::Malformed(format!("the header is not a JSON object as JWS needs: {e}"))
    })?;
    let alg = match raw.alg {
        Some(serde_json::Value::String(a)) => a,
        _ => {
            return Err(TokenError::Malformed(
                "the header has no string `alg`".into(),
            ))
        }
    };
    if let Some(crit) = raw.crit {
        return Err(TokenError::CriticalHeader(quoted(&crit.to_string())));
    }
    if let Some(typ) = raw.typ {
        let t = typ.as_str().unwrap_or_default();
        let t = t.strip_prefix("application/").unwrap_or(t);
        if !t.eq_ignore_ascii_case("JWT") {
            return Err(TokenError::WrongType(quoted(&typ.to_string())));
        }
    }
    let kid = match raw.kid {
        None => None,
        Some(serde_json::Value::String(k)) => Some(k),
        Some(_) => {
            return Err(TokenError::Malformed(
                "the header's `kid` is not a string".into(),
            ))
        }
    };
    let signing_input = &token[..parts[0].len() + 1 + parts[1].len()];
    Ok(Jws {
        header: Header { alg, kid },
        signing_input,
        payload: segment("payload", parts[1])?,
        signature: segment("signature", parts[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn algs_parse_and_the_dangerous_ones_never_do() {
        assert_eq!(Alg::from_header("RS256"), Ok(Alg::RS256));
        assert_eq!(Alg::from_header("EdDSA"), Ok(Alg::EdDSA));
        for none in ["none", "None", "NONE", "nOnE"] {
            assert_eq!(Alg::from_header(none), Err(TokenError::AlgNone));
        }
        for hs in ["HS256", "HS384", "HS512", "hs256"] {
            assert!(matches!(
                Alg::from_header(hs),
                Err(TokenError::SymmetricAlg { .. })
            ));
        }
        assert!(matches!(
            Alg::from_header("rs256"),
            Err(TokenError::UnsupportedAlg { .. })
        ));
        let e = "HS256".parse::<Alg>().unwrap_err();
        assert!(e.contains("symmetric"), "{e}");
        assert!("none".parse::<Alg>().unwrap_err().contains("unsigned"));
    }

    #[test]
    fn compact_parse_is_strict() {
        let h = b64(&serde_json::json!({"alg":"RS256","kid":"k"}));
        let p = b64(&serde_json::json!({"sub":"a"}));
        let ok = format!("{h}.{p}.c2ln");
        let jws = parse(&ok).unwrap();
        assert_eq!(jws.header.alg, "RS256");
        assert_eq!(jws.header.kid.as_deref(), Some("k"));
        assert_eq!(jws.signing_input, format!("{h}.{p}"));
        assert_eq!(jws.signature, b"sig");

        let bad = |t: String| parse(&t).err().map(|e| e.reason()).unwrap_or("accepted");
        assert_eq!(bad(format!("{h}.{p}")), "malformed");
        assert_eq!(bad(format!("{h}.{p}.c2ln.x.y")), "malformed");
        assert_eq!(bad(format!("{h}.{p}.c2ln=")), "malformed");
        assert_eq!(bad(format!("{h}=.{p}.c2ln")), "malformed");
        assert_eq!(bad(format!("{h}.{p}.c2l+")), "malformed");
        assert_eq!(bad(format!(".{p}.c2ln")), "malformed");
        assert_eq!(bad("x".repeat(MAX_TOKEN_LEN + 1)), "too_large");
        // A repeated member could be read two ways: refused.
        let dup = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","alg":"none"}"#);
        assert_eq!(bad(format!("{dup}.{p}.c2ln")), "malformed");
        let arr = URL_SAFE_NO_PAD.encode(r#"["RS256"]"#);
        assert_eq!(bad(format!("{arr}.{p}.c2ln")), "malformed");
        let crit = b64(&serde_json::json!({"alg":"RS256","crit":["b64"],"b64":false}));
        assert_eq!(bad(format!("{crit}.{p}.c2ln")), "crit_header");
        let at = b64(&serde_json::json!({"alg":"RS256","typ":"at+jwt"}));
        assert_eq!(bad(format!("{at}.{p}.c2ln")), "wrong_type");
        let jwt = b64(&serde_json::json!({"alg":"RS256","typ":"JWT"}));
        assert_eq!(bad(format!("{jwt}.{p}.c2ln")), "accepted");
    }

    #[test]
    fn jwks_keys_are_checked_when_parsed() {
        use serde_json::json;
        let rsa = Rsa::generate(2048).unwrap();
        let n = URL_SAFE_NO_PAD.encode(rsa.n().to_vec());
        let e = URL_SAFE_NO_PAD.encode(rsa.e().to_vec());
        let k = Key::from_jwk(&json!({"kty":"RSA","kid":"r","n":n,"e":e,"use":"sig"})).unwrap();
        assert_eq!(k.kind, KeyKind::Rsa);
        assert!(k.suits(Alg::RS256).is_ok() && k.suits(Alg::PS512).is_ok());
        assert!(k.suits(Alg::ES256).unwrap_err().contains("RSA"));
        let pinned = Key::from_jwk(&json!({"kty":"RSA","n":n,"e":e,"alg":"RS512"})).unwrap();
        assert!(pinned.suits(Alg::RS256).is_err() && pinned.suits(Alg::RS512).is_ok());
        assert!(Key::from_jwk(&json!({"kty":"RSA","n":n,"e":e,"use":"enc"})).is_err());
        assert!(Key::from_jwk(&json!({"kty":"RSA","n":n,"e":e,"key_ops":["encrypt"]})).is_err());
        assert!(Key::from_jwk(&json!({"kty":"RSA","n":n,"e":e,"d":"AQAB"})).is_err());
        assert!(Key::from_jwk(&json!({"kty":"oct","k":"c2VjcmV0"})).is_err());
        let small = Rsa::generate(1024).unwrap();
        let e = Key::from_jwk(&json!({"kty":"RSA",
            "n":URL_SAFE_NO_PAD.encode(small.n().to_vec()),
            "e":URL_SAFE_NO_PAD.encode(small.e().to_vec())}))
        .unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
        // A point that is not on the curve.
        let e = Key::from_jwk(&json!({"kty":"EC","crv":"P-256",
            "x":URL_SAFE_NO_PAD.encode([1u8;32]),"y":URL_SAFE_NO_PAD.encode([2u8;32])}));
        assert!(e.is_err());
    }
}
