//! API tokens for automation: per principal, shown once, hashed at rest,
//! always expiring. Storage is the caller's (the server keeps
//! [`TokenRecord`] rows in SQLite, keyed by [`TokenHash`]).
//!
//! A token is `brig_pat_` followed by 43 base62 characters drawn from the
//! operating system's CSPRNG: 43 × log2(62) ≈ 256 bits. The prefix lets
//! brig's redactor and secret scanner (and GitHub's) recognise a leaked
//! one: [`TOKEN_REGEX`].
//!
//! Why a plain SHA-256 at rest and not a password hash (argon2, bcrypt):
//! those slow down guessing of low-entropy secrets people choose. These
//! tokens are 256 random bits; nobody can enumerate 2^256 preimages, so a
//! stolen table of hashes gives nothing, and an unsalted fast hash lets the
//! server find the row by an index lookup of the hash.

use std::fmt;
use std::time::Duration;

use rand::rngs::OsRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::ApiTokenConfig;
use crate::principal::is_agent_id;

/// Every brig API token starts with this.
pub const TOKEN_PREFIX: &str = "brig_pat_";
/// A leaked token, for the redactor and the scanner.
pub const TOKEN_REGEX: &str = r"\bbrig_pat_[0-9A-Za-z]{43}\b";
const BODY_LEN: usize = 43;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a token's whole text; hex in JSON and in the database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(plaintext: &str) -> TokenHash {
        TokenHash(Sha256::digest(plaintext.as_bytes()).into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl TryFrom<String> for TokenHash {
    type Error = String;
    fn try_from(s: String) -> Result<TokenHash, String> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&s, &mut h)
            .map_err(|_| "a token hash is 64 hex digits".to_string())?;
        Ok(TokenHash(h))
    }
}

impl From<TokenHash> for String {
    fn from(h: TokenHash) -> String {
        h.to_hex()
    }
}

/// What the server stores of a token (never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `tok-` and 16 hex digits: names the token in lists and revocations.
    pub id: String,
    /// The owner's principal id.
    pub principal: String,
    /// What the owner called it (`ci-nightly`).
    pub name: String,
    pub hash: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked: Option<OffsetDateTime>,
}

/// A token's text, shown to its owner once. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaintextToken(String);

impl PlaintextToken {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlaintextToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaintextToken([REDACTED])")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiTokenError {
    /// Not `brig_pat_` + 43 base62 characters.
    #[error("not a brig API token (they look like brig_pat_ followed by 43 letters and digits)")]
    Malformed,
    /// Well-formed, but no such token (never issued, or deleted).
    #[error("unknown API token")]
    Unknown,
    #[error("the API token expired at {0}; issue a new one with `brig token create`")]
    Expired(OffsetDateTime),
    #[error("the API token was revoked at {0}")]
    Revoked(OffsetDateTime),
    #[error("cannot issue the token: {0}")]
    Refused(String),
}

/// Issues and verifies tokens.
#[derive(Clone, Debug)]
pub struct ApiTokens {
    max_ttl: Duration,
    default_ttl: Duration,
}

impl ApiTokens {
    pub fn new(cfg: &ApiTokenConfig) -> ApiTokens {
        ApiTokens {
            max_ttl: cfg.max_ttl,
            default_ttl: cfg.default_ttl,
        }
    }

    /// The ttl to use when the owner asks for none.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// A new token for `principal_id`, valid for `ttl` (at most `max_ttl`).
    /// The plaintext goes to the owner once; the record to the store.
    pub fn issue(
        &self,
        principal_id: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<(PlaintextToken, TokenRecord), ApiTokenError> {
        self.issue_at(principal_id, name, ttl, OffsetDateTime::now_utc())
    }

    pub fn issue_at(
        &self,
        principal_id: &str,
        name: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(PlaintextToken, TokenRecord), ApiTokenError> {
        let refuse = |m: String| Err(ApiTokenError::Refused(m));
        if principal_id.is_empty() || !principal_id.chars().all(|c| !c.is_control()) {
            return refuse("the principal id is empty or has control characters".into());
        }
        if is_agent_id(principal_id) {
            return refuse(format!(
                "{principal_id} is an agent: a session authenticates by its own channel, and a token would outlive it"
            ));
        }
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return refuse(format!(
                "token name {name:?} must be 1-64 printable characters without spaces"
            ));
        }
        if ttl.is_zero() || ttl > self.max_ttl {
            return refuse(format!(
                "ttl {}s must be more than 0 and at most [identity.tokens] max_ttl ({}s)",
                ttl.as_secs(),
                self.max_ttl.as_secs()
            ));
        }
        let mut rng = OsRng;
        let body: String = (0..BODY_LEN)
            .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
            .collect();
        let plaintext = format!("{TOKEN_PREFIX}{body}");
        let id = format!("tok-{}", hex::encode(rng.gen::<[u8; 8]>()));
        let created = now.replace_nanosecond(0).unwrap_or(now);
        let record = TokenRecord {
            id,
            principal: principal_id.to_string(),
            name: name.to_string(),
            hash: TokenHash::of(&plaintext),
            created,
            expires: created + ttl,
            last_used: None,
            revoked: None,
        };
        Ok((PlaintextToken(plaintext), record))
    }

    /// The hash to look a presented token up by, if it is well-formed.
    pub fn hash(plaintext: &str) -> Result<TokenHash, ApiTokenError> {
        let body = plaintext
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(ApiTokenError::Malformed)?;
        if body.len() != BODY_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiTokenError::Malformed);
        }
        Ok(TokenHash::of(plaintext))
    }

    /// Whether `s` looks like a brig API token (so a bearer credential can
    /// be routed to [`ApiTokens::verify`] rather than to ID-token checks).
    pub fn looks_like_token(s: &str) -> bool {
        Self::hash(s).is_ok()
    }

    /// Checks a presented token: well-formed, known (`lookup` finds the row
    /// by hash), the same hash (compared in constant time, so a lookup that
    /// matched loosely still cannot pass), not revoked, not expired. The
    /// caller then records `last_used`.
    pub fn verify(
        &self,
        plaintext: &str,
        lookup: impl FnOnce(&TokenHash) -> Option<TokenRecord>,
    ) -> Result<TokenRecord, ApiTokenError> {
        self.verify_at(plaintext, OffsetDateTime::now_utc(), lookup)
    }

    pub fn verify_at(
        &self,
        plaintext: &str,
        now: OffsetDateTime,
        lookup: impl FnOnce(&TokenHash) -> Option<TokenRecord>,
    ) -> Result<TokenRecord, ApiTokenError> {
        let hash = Self::hash(plaintext)?;
        let rec = lookup(&hash).ok_or(ApiTokenError::Unknown)?;
        if !openssl::memcmp::eq(&rec.hash.0, &hash.0) {
            return Err(ApiTokenError::Unknown);
        }
        if let Some(at) = rec.revoked {
            return Err(ApiTokenError::Revoked(at));
        }
        if now >= rec.expires {
            return Err(ApiTokenError::Expired(rec.expires));
        }
        Ok(rec)
    }
}
