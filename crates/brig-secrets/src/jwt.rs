//! RS256 JWTs (RFC 7515/7519) signed with OpenSSL: GitHub App JWTs and
//! Google service-account assertions.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;

use crate::SecretError;

/// An RSA private key from PEM (PKCS#1 or PKCS#8). The error never
/// includes key material.
pub(crate) fn rsa_key(what: &str, pem: &[u8]) -> Result<PKey<Private>, SecretError> {
    let key = PKey::private_key_from_pem(pem).map_err(|_| {
        SecretError::config(format!("{what}: not a PEM private key (PKCS#1 or PKCS#8)"))
    })?;
    if key.rsa().is_err() {
        return Err(SecretError::config(format!(
            "{what}: RS256 needs an RSA key, this is another kind"
        )));
    }
    if key.bits() < 2048 {
        return Err(SecretError::config(format!(
            "{what}: the RSA key has {} bits; 2048 at least",
            key.bits()
        )));
    }
    Ok(key)
}

/// `header.claims.signature`, base64url without padding.
pub(crate) fn sign_rs256(
    key: &PKey<Private>,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, SecretError> {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = Signer::new(MessageDigest::sha256(), key)
        .and_then(|mut s| {
            s.update(signing_input.as_bytes())?;
            s.sign_to_vec()
        })
        .map_err(|e| SecretError::config(format!("RS256 signing failed: {e}")))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

pub(crate) fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
