//! ID-token verification against a real OIDC provider (the TestIdp: HTTPS on
//! 127.0.0.1, discovery, JWKS, real RSA/EC signatures).

use std::time::Duration;

use brig_identity::testing::{BadToken, TestIdp, TestIdpOptions, TestUser};
use brig_identity::{Alg, IdentityError, OidcClient, OidcConfig, TokenError, Via};
use serde_json::json;

fn client(idp: &TestIdp) -> OidcClient {
    OidcClient::new(idp.config()).unwrap()
}

fn reason(r: Result<brig_identity::Claims, TokenError>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(e) => e.reason(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_rs256_and_es256_tokens_are_accepted() {
    let idp = TestIdp::start().await;
    let c = client(&idp);
    let alice = TestUser::new("alice").with_groups(&["team-a", "ops"]);
    for alg in [Alg::RS256, Alg::ES256] {
        let claims = c
            .verify_id_token(&idp.id_token_alg(&alice, alg), None)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.iss, idp.issuer());
        let p = c.principal(&claims);
        assert_eq!(p.id, format!("oidc:{}#alice", idp.issuer()));
        assert_eq!(p.name, "alice@example.test");
        assert_eq!(p.groups, ["team-a", "ops"]);
        assert_eq!(p.via, Via::Oidc);
    }
    let p = c.authenticate(&idp.id_token(&alice)).await.unwrap();
    assert_eq!(p.email.as_deref(), Some("alice@example.test"));
    // One JWKS fetch served all of them.
    assert_eq!(idp.jwks_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_algs_verify_when_allowed_and_only_then() {
    let idp = TestIdp::start().await;
    for alg in [Alg::PS256, Alg::RS512, Alg::ES384, Alg::EdDSA] {
        idp.add_key(alg);
    }
    let alice = TestUser::new("alice");
    let default = client(&idp);
    let e = default
        .verify_id_token(&idp.id_token_alg(&alice, Alg::PS256), None)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "alg_not_allowed", "{e}");
    assert!(e.to_string().contains("RS256, ES256"), "{e}");

    let mut cfg = idp.config();
    cfg.allowed_algs = vec![Alg::PS256, Alg::RS512, Alg::ES384, Alg::EdDSA];
    let c = OidcClient::new(cfg).unwrap();
    for alg in [Alg::PS256, Alg::RS512, Alg::ES384, Alg::EdDSA] {
        let t = idp.id_token_alg(&alice, alg);
        assert_eq!(
            reason(c.verify_id_token(&t, None).await),
            "accepted",
            "{alg}"
        );
    }
    // RS256 is no longer allowed for this client.
    assert_eq!(
        reason(c.verify_id_token(&idp.id_token(&alice), None).await),
        "alg_not_allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_its_reason() {
    let idp = TestIdp::start().await;
    let c = client(&idp);
    let alice = TestUser::new("alice");
    // Warm the cache, so the unknown-kid refetch below is the only one.
    c.verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap();
    for (kind, want) in [
        (BadToken::Expired, "expired"),
        (BadToken::NotYetValid, "not_yet_valid"),
        (BadToken::IssuedInFuture, "issued_in_future"),
        (BadToken::WrongAudience, "wrong_audience"),
        (BadToken::MultipleAudiencesNoAzp, "wrong_azp"),
        (BadToken::WrongIssuer, "wrong_issuer"),
        (BadToken::AlgNone, "alg_none"),
        (BadToken::KeyConfusionHs256, "alg_symmetric"),
        (BadToken::Forged, "bad_signature"),
        (BadToken::TamperedPayload, "bad_signature"),
        (BadToken::KidWrongKeyType, "key_mismatch"),
        (BadToken::UnknownKey, "unknown_kid"),
    ] {
        let t = idp.bad_token(kind, &alice);
        let r = c.verify_id_token(&t, None).await;
        assert_eq!(reason(r.clone()), want, "{kind:?}: {r:?}");
        // No error quotes the token.
        let msg = r.unwrap_err().to_string();
        for part in t.split('.').filter(|p| p.len() > 8) {
            assert!(!msg.contains(part), "{kind:?} echoes the token: {msg}");
        }
    }
    // HS256 stays refused even if someone "allows" it: it cannot be
    // configured at all.
    let e = serde_json::from_value::<Alg>(json!("HS256")).unwrap_err();
    assert!(e.to_string().contains("symmetric"), "{e}");
    // Garbage.
    for junk in ["", "abc", "a.b.c", "e30.e30.", "not a token at all"] {
        assert_eq!(
            reason(c.verify_id_token(junk, None).await),
            "malformed",
            "{junk:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_once_then_is_refused_without_hammering_the_idp() {
    let idp = TestIdp::start().await;
    let c = client(&idp);
    let alice = TestUser::new("alice");
    c.verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap();
    assert_eq!(idp.jwks_requests(), 1);
    let e = c
        .verify_id_token(&idp.bad_token(BadToken::UnknownKey, &alice), None)
        .await
        .unwrap_err();
    assert!(matches!(e, TokenError::UnknownKid { .. }), "{e}");
    assert_eq!(idp.jwks_requests(), 2, "one refetch for the unknown kid");
    // A flood of made-up kids within jwks_refetch_interval: no more fetches.
    for _ in 0..20 {
        let t = idp.bad_token(BadToken::UnknownKey, &alice);
        assert_eq!(reason(c.verify_id_token(&t, None).await), "unknown_kid");
    }
    assert_eq!(idp.jwks_requests(), 2);
    assert_eq!(c.jwks().await.unwrap().fetches(), 2);
    // Good tokens still verify from the cache.
    c.verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_and_the_removed_one_refused() {
    let idp = TestIdp::start().await;
    let c = client(&idp);
    let alice = TestUser::new("alice");
    let old = idp.id_token(&alice);
    c.verify_id_token(&old, None).await.unwrap();
    let old_kid = idp.signing_kid(Alg::RS256).unwrap();
    let new_kid = idp.rotate(Alg::RS256);
    assert_ne!(old_kid, new_kid);
    assert!(!idp.kids().contains(&old_kid));
    // The new kid is unknown to the cache: one refetch, then it verifies.
    let new = idp.id_token(&alice);
    c.verify_id_token(&new, None).await.unwrap();
    assert_eq!(idp.jwks_requests(), 2);
    // The old key is gone from the refetched JWKS.
    assert_eq!(reason(c.verify_id_token(&old, None).await), "unknown_kid");
    // The EC key was not rotated.
    c.verify_id_token(&idp.id_token_alg(&alice, Alg::ES256), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kid_only_a_single_suitable_key_is_used() {
    let idp = TestIdp::start().await;
    let c = client(&idp);
    let alice = TestUser::new("alice");
    let kid = idp.signing_kid(Alg::RS256).unwrap();
    let no_kid = idp.sign_with(&kid, json!({"alg": "RS256"}), &idp.claims(&alice));
    c.verify_id_token(&no_kid, None).await.unwrap();

    // Two RSA keys: which one is meant is ambiguous.
    let idp2 = TestIdp::start().await;
    idp2.add_key(Alg::RS256);
    let c2 = client(&idp2);
    let kid = idp2.signing_kid(Alg::RS256).unwrap();
    let no_kid = idp2.sign_with(&kid, json!({"alg": "RS256"}), &idp2.claims(&alice));
    let e = c2.verify_id_token(&no_kid, None).await.unwrap_err();
    assert_eq!(
        e,
        TokenError::NoKid {
            alg: "RS256".into(),
            candidates: 2
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_outage_keeps_cached_keys_until_the_hard_max_age_then_fails_closed() {
    let idp = TestIdp::start().await;
    let mut cfg = idp.config();
    cfg.jwks_max_age = Duration::from_millis(500);
    cfg.jwks_refetch_interval = Duration::from_millis(200);
    cfg.jwks_hard_max_age = Duration::from_millis(2500);
    let c = OidcClient::new(cfg).unwrap();
    let alice = TestUser::new("alice");
    c.verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap();
    // The keys were fetched before this instant.
    let start = std::time::Instant::now();
    idp.set_jwks_available(false);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Stale: a refetch is tried, fails, and the cached key still verifies.
    c.verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap();
    assert_eq!(idp.jwks_requests(), 2);
    // Past the hard max age: refused, and says why.
    tokio::time::sleep(Duration::from_millis(2600).saturating_sub(start.elapsed())).await;
    let e = c
        .verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("jwks_hard_max_age"), "{e}");
    // The IdP is back: after the retry interval keys are fetched again.
    idp.set_jwks_available(true);
    tokio::time::sleep(Duration::from_millis(250)).await;
    c.verify_id_token(&idp.id_token(&alice), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_must_name_the_configured_issuer_exactly() {
    let idp = TestIdp::start().await;
    idp.set_advertised_issuer(Some("https://other.example"));
    let e = OidcClient::discover(idp.config()).await.unwrap_err();
    assert!(matches!(e, IdentityError::IssuerMismatch { .. }), "{e}");
    assert!(e.to_string().contains("https://other.example"), "{e}");
    // Verification then fails closed (503, not 401).
    let c = client(&idp);
    let e = c
        .verify_id_token(&idp.id_token(&TestUser::new("a")), None)
        .await
        .unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    // ... and the IdP is not asked again for every token.
    let asked = idp.discovery_requests();
    let e = c
        .verify_id_token(&idp.id_token(&TestUser::new("a")), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("retried at most every"), "{e}");
    assert_eq!(idp.discovery_requests(), asked);

    // A trailing slash is another issuer.
    idp.set_advertised_issuer(None);
    let mut cfg = idp.config();
    cfg.issuer.push('/');
    let e = OidcClient::discover(cfg).await.unwrap_err();
    assert!(matches!(e, IdentityError::IssuerMismatch { .. }), "{e}");
    OidcClient::discover(idp.config()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_with_a_path_works() {
    let idp = TestIdp::start_with(TestIdpOptions {
        issuer_path: "/realms/brig".into(),
        ..TestIdpOptions::default()
    })
    .await;
    assert!(idp.issuer().ends_with("/realms/brig"));
    let c = OidcClient::discover(idp.config()).await.unwrap();
    assert_eq!(
        c.discovery().await.unwrap().jwks_uri,
        format!("{}/jwks", idp.issuer())
    );
    c.verify_id_token(&idp.id_token(&TestUser::new("a")), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_issuers_are_refused_unless_loopback_and_tls_is_verified() {
    let e = OidcClient::new(OidcConfig::new("http://idp.example.com", "brig")).unwrap_err();
    assert!(matches!(e, IdentityError::InsecureUrl { .. }), "{e}");
    assert!(e.to_string().contains("loopback"), "{e}");
    assert!(OidcClient::new(OidcConfig::new("http://127.0.0.1:9", "brig")).is_ok());

    // Without the TestIdp's CA the certificate does not verify.
    let idp = TestIdp::start().await;
    let mut cfg = idp.config();
    cfg.ca_file = None;
    let e = OidcClient::discover(cfg).await.unwrap_err();
    assert!(matches!(e, IdentityError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");
    // The CA file is the PEM the IdP exposes.
    assert_eq!(
        std::fs::read_to_string(idp.ca_file()).unwrap(),
        idp.ca_pem()
    );
}
