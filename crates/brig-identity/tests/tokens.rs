//! API tokens for automation, against an in-memory store keyed by hash (as
//! the server's SQLite table is).

use std::collections::HashMap;
use std::time::Duration;

use brig_identity::{
    ApiTokenConfig, ApiTokenError, ApiTokens, TokenHash, TokenRecord, TOKEN_PREFIX, TOKEN_REGEX,
};
use time::OffsetDateTime;

fn tokens() -> ApiTokens {
    ApiTokens::new(&ApiTokenConfig::default())
}

#[test]
fn issue_then_verify_and_the_store_holds_no_plaintext() {
    let t = tokens();
    let mut store: HashMap<TokenHash, TokenRecord> = HashMap::new();
    let (plain, rec) = t
        .issue(
            "oidc:https://idp.example#alice",
            "ci-nightly",
            Duration::from_secs(3600),
        )
        .unwrap();
    assert!(plain.expose().starts_with(TOKEN_PREFIX));
    assert_eq!(plain.expose().len(), TOKEN_PREFIX.len() + 43);
    let re = regex::Regex::new(TOKEN_REGEX).unwrap();
    assert!(re.is_match(&format!("export BRIG_TOKEN={} # x", plain.expose())));
    assert_eq!(format!("{plain:?}"), "PlaintextToken([REDACTED])");
    assert_eq!(rec.expires - rec.created, time::Duration::hours(1));
    assert!(rec.id.starts_with("tok-"));
    let row = serde_json::to_string(&rec).unwrap();
    assert!(!row.contains(&plain.expose()[TOKEN_PREFIX.len()..]));
    store.insert(rec.hash, rec.clone());

    let got = t.verify(plain.expose(), |h| store.get(h).cloned()).unwrap();
    assert_eq!(got, rec);
    assert!(ApiTokens::looks_like_token(plain.expose()));

    // Two tokens never collide.
    let (other, _) = t.issue("local:bob", "x", Duration::from_secs(60)).unwrap();
    assert_ne!(other, plain);
}

#[test]
fn wrong_expired_revoked_and_malformed_tokens_are_refused() {
    let t = tokens();
    let mut store: HashMap<TokenHash, TokenRecord> = HashMap::new();
    let now = OffsetDateTime::now_utc();
    let (plain, rec) = t
        .issue_at("local:alice", "deploy", Duration::from_secs(60), now)
        .unwrap();
    store.insert(rec.hash, rec.clone());
    let look = |h: &TokenHash| store.get(h).cloned();

    // One character changed: well-formed, unknown.
    let mut wrong = plain.expose().to_string();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(t.verify(&wrong, look), Err(ApiTokenError::Unknown));

    // A lookup that returns the wrong row still cannot pass.
    assert_eq!(
        t.verify(&wrong, |_| Some(rec.clone())),
        Err(ApiTokenError::Unknown)
    );

    let later = now + Duration::from_secs(61);
    assert_eq!(
        t.verify_at(plain.expose(), later, look),
        Err(ApiTokenError::Expired(rec.expires))
    );
    assert!(t.verify_at(plain.expose(), now, look).is_ok());

    let mut revoked = rec.clone();
    revoked.revoked = Some(now);
    assert_eq!(
        t.verify_at(plain.expose(), now, |_| Some(revoked.clone())),
        Err(ApiTokenError::Revoked(now))
    );

    for bad in [
        "",
        "brig_pat_",
        "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &format!("{}!", &plain.expose()[..plain.expose().len() - 1]),
        &format!("{}a", plain.expose()),
    ] {
        assert_eq!(
            t.verify(bad, |_| panic!("no lookup for a malformed token")),
            Err(ApiTokenError::Malformed),
            "{bad:?}"
        );
    }
}

#[test]
fn issuing_refuses_agents_endless_tokens_and_bad_names() {
    let t = ApiTokens::new(&ApiTokenConfig {
        max_ttl: Duration::from_secs(86400),
        default_ttl: Duration::from_secs(3600),
    });
    let refused = |r: Result<_, ApiTokenError>| matches!(r, Err(ApiTokenError::Refused(_)));
    assert!(refused(t.issue(
        "agent:s-abcdefghjk",
        "x",
        Duration::from_secs(60)
    )));
    assert!(refused(t.issue(
        "local:alice",
        "x",
        Duration::from_secs(86401)
    )));
    assert!(refused(t.issue("local:alice", "x", Duration::ZERO)));
    assert!(refused(t.issue("local:alice", "", Duration::from_secs(60))));
    assert!(refused(t.issue(
        "local:alice",
        "a b",
        Duration::from_secs(60)
    )));
    assert!(refused(t.issue("", "x", Duration::from_secs(60))));
    assert!(t
        .issue("local:alice", "x", Duration::from_secs(86400))
        .is_ok());
}

#[test]
fn records_round_trip_through_json() {
    let (_, rec) = tokens()
        .issue("local:alice", "x", Duration::from_secs(60))
        .unwrap();
    let back: TokenRecord = serde_json::from_str(&serde_json::to_string(&rec).unwrap()).unwrap();
    assert_eq!(back, rec);
    assert_eq!(rec.hash.to_hex().len(), 64);
}
