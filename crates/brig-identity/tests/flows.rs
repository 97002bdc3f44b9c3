//! The device flow (`brig login`), authorization code + PKCE and refresh,
//! against the TestIdp over HTTPS on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_identity::testing::{TestIdp, TestIdpOptions, TestUser};
use brig_identity::{AuthCodeRequest, DevicePoll, IdentityError, OidcClient};

const REDIRECT: &str = "http://127.0.0.1:8765/callback";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_happy_path() {
    let idp = TestIdp::start().await;
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let auth = c.start_device_flow().await.unwrap();
    assert_eq!(auth.user_code.len(), 9);
    assert!(auth.verification_uri.starts_with(&idp.issuer()));
    assert!(auth
        .verification_uri_complete
        .as_deref()
        .unwrap()
        .contains(&auth.user_code));
    assert_eq!(auth.interval, Duration::from_secs(1));
    // The device code is not in Debug output.
    assert!(!format!("{auth:?}").contains("dc-"));

    let alice = TestUser::new("alice").with_groups(&["devs"]);
    assert!(idp.approve(&auth.user_code, &alice));
    let mut events = Vec::new();
    let tokens = c
        .poll_device_token(&auth, |e| events.push(e))
        .await
        .unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(tokens.claims.sub, "alice");
    assert!(tokens.refresh_token.is_some());
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(300)));
    assert_eq!(c.principal(&tokens.claims).groups, ["devs"]);
    // The ID token is what the API takes.
    c.authenticate(&tokens.id_token).await.unwrap();
    let shown = format!("{tokens:?}");
    assert!(!shown.contains(&tokens.id_token) && !shown.contains(&tokens.access_token));
    assert_eq!(idp.device_polls(&auth.user_code).unwrap().polls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_pending_then_slow_down_then_approved() {
    let idp = Arc::new(TestIdp::start().await);
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let auth = c.start_device_flow().await.unwrap();
    let code = auth.user_code.clone();
    let alice = TestUser::new("alice");
    let mut events = Vec::new();
    let started = Instant::now();
    let tokens = c
        .poll_device_token(&auth, |e| {
            events.push(e);
            match e {
                // The user is still typing; the IdP then asks to slow down.
                DevicePoll::Pending => assert!(idp.slow_down_next(&code)),
                DevicePoll::SlowDown { .. } => assert!(idp.approve(&code, &alice)),
            }
        })
        .await
        .unwrap();
    assert_eq!(tokens.claims.sub, "alice");
    assert_eq!(
        events,
        [
            DevicePoll::Pending,
            DevicePoll::SlowDown {
                interval: Duration::from_secs(6)
            }
        ]
    );
    let polls = idp.device_polls(&code).unwrap();
    assert_eq!(polls.polls, 3);
    assert_eq!(
        polls.too_early, 0,
        "the client honoured the longer interval"
    );
    assert!(started.elapsed() >= Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_denied() {
    let idp = Arc::new(TestIdp::start().await);
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let auth = c.start_device_flow().await.unwrap();
    let code = auth.user_code.clone();
    let e = c
        .poll_device_token(&auth, |_| assert!(idp.deny(&code)))
        .await
        .unwrap_err();
    assert!(matches!(e, IdentityError::AccessDenied { .. }), "{e}");
    assert!(e.to_string().contains("denied"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_expired_at_the_idp_and_locally() {
    let idp = Arc::new(TestIdp::start().await);
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let auth = c.start_device_flow().await.unwrap();
    let code = auth.user_code.clone();
    let e = c
        .poll_device_token(&auth, |_| assert!(idp.expire(&code)))
        .await
        .unwrap_err();
    assert!(matches!(e, IdentityError::DeviceExpired), "{e}");
    assert_eq!(idp.device_polls(&code).unwrap().polls, 2);

    // The code's lifetime passes without an answer: the client stops by
    // itself instead of polling forever.
    let idp = TestIdp::start_with(TestIdpOptions {
        device_expires_in: Duration::from_secs(3),
        ..TestIdpOptions::default()
    })
    .await;
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let auth = c.start_device_flow().await.unwrap();
    let started = Instant::now();
    let e = c.poll_device_token(&auth, |_| {}).await.unwrap_err();
    assert!(matches!(e, IdentityError::DeviceExpired), "{e}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(idp.device_polls(&auth.user_code).unwrap().polls <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_gives_new_tokens_and_the_old_refresh_token_is_spent() {
    let idp = TestIdp::start().await;
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let auth = c.start_device_flow().await.unwrap();
    idp.approve(&auth.user_code, &TestUser::new("bob"));
    let first = c.poll_device_token(&auth, |_| {}).await.unwrap();
    let rt = first.refresh_token.clone().unwrap();
    let second = c.refresh(&rt).await.unwrap();
    assert_eq!(second.claims.sub, "bob");
    assert_ne!(second.refresh_token.as_deref(), Some(rt.as_str()));
    let e = c.refresh(&rt).await.unwrap_err();
    match &e {
        IdentityError::Refused { error, status, .. } => {
            assert_eq!((error.as_str(), *status), ("invalid_grant", 400))
        }
        other => panic!("{other}"),
    }
    // No error carries the refresh token.
    assert!(!e.to_string().contains(&rt), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_happy_path_checks_state_and_nonce() {
    let idp = TestIdp::start().await;
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let req = AuthCodeRequest::new(&c, REDIRECT).await.unwrap();
    assert!(req.url.starts_with(&format!("{}/authorize?", idp.issuer())));
    assert!(req.url.contains("code_challenge_method=S256"));
    assert!(req.url.contains(&format!(
        "code_challenge={}",
        brig_identity::pkce_challenge(&req.code_verifier)
    )));
    assert!(
        !req.url.contains(&req.code_verifier),
        "the verifier stays here"
    );
    assert!(!format!("{req:?}").contains(&req.code_verifier));

    let redirect = idp
        .authorize(&req.url, &TestUser::new("carol"))
        .await
        .unwrap();
    assert!(redirect.location.starts_with(REDIRECT));
    assert_eq!(redirect.state, req.state);
    let tokens = c
        .complete_auth_code(&req, &redirect.state, &redirect.code)
        .await
        .unwrap();
    assert_eq!(tokens.claims.sub, "carol");
    assert_eq!(tokens.claims.nonce.as_deref(), Some(req.nonce.as_str()));

    // A code is good once.
    let e = c
        .exchange_code(&redirect.code, &req.code_verifier, REDIRECT)
        .await
        .unwrap_err();
    assert!(matches!(e, IdentityError::Refused { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_wrong_verifier_forged_state_and_foreign_nonce_are_refused() {
    let idp = TestIdp::start().await;
    let c = OidcClient::discover(idp.config()).await.unwrap();
    let carol = TestUser::new("carol");

    let req = AuthCodeRequest::new(&c, REDIRECT).await.unwrap();
    let r = idp.authorize(&req.url, &carol).await.unwrap();
    let other = AuthCodeRequest::new(&c, REDIRECT).await.unwrap();
    let e = c
        .exchange_code(&r.code, &other.code_verifier, REDIRECT)
        .await
        .unwrap_err();
    match &e {
        IdentityError::Refused {
            error, description, ..
        } => {
            assert_eq!(error, "invalid_grant");
            assert!(description.as_deref().unwrap().contains("PKCE"), "{e}");
        }
        other => panic!("{other}"),
    }

    // A redirect whose state is not this login's: refused before any
    // request to the IdP.
    let req = AuthCodeRequest::new(&c, REDIRECT).await.unwrap();
    let r = idp.authorize(&req.url, &carol).await.unwrap();
    let before = idp.token_requests();
    let e = c
        .complete_auth_code(&req, "forged-state", &r.code)
        .await
        .unwrap_err();
    assert!(matches!(e, IdentityError::StateMismatch), "{e}");
    assert_eq!(idp.token_requests(), before);

    // An ID token minted for another login's nonce.
    let tokens = c
        .exchange_code(&r.code, &req.code_verifier, REDIRECT)
        .await
        .unwrap();
    let e = c
        .verify_id_token(&tokens.id_token, Some(&other.nonce))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "nonce_mismatch");
    c.verify_id_token(&tokens.id_token, Some(&req.nonce))
        .await
        .unwrap();

    // A redirect URI that is neither https nor loopback.
    let e = AuthCodeRequest::new(&c, "http://app.example/cb")
        .await
        .unwrap_err();
    assert!(matches!(e, IdentityError::InsecureUrl { .. }), "{e}");
}
