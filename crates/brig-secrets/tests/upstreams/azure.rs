//! Azure Key Vault: the client-credentials form, the bearer token, the
//! secret bundle and its attributes.

use std::sync::Arc;

use brig_secrets::SecretError;
use serde_json::json;

use crate::common::{assert_clean, json, now, private_file, Req, Server};
use crate::source;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "0e3f1a2b-aaaa-bbbb-cccc-1234567890ab";
const CLIENT_SECRET: &str = "azure~client~secret~canary~123";
const TOKEN: &str = "eyJ0eXAiOiJKV1Qi.azure-access-token";
const CANARY: &str = "canary-azure-kv-value-61d";

fn handler(r: &Req) -> crate::common::Resp {
    if r.path == format!("/{TENANT}/oauth2/v2.0/token") {
        let f = |k: &str| r.form_get(k).unwrap_or_default();
        if f("grant_type") != "client_credentials"
            || f("client_id") != CLIENT
            || f("scope") != "https://vault.azure.net/.default"
        {
            return json(
                400,
                json!({"error": "invalid_request", "error_description": "AADSTS900144: bad request"}),
            );
        }
        if f("client_secret") != CLIENT_SECRET {
            // Echo the secret to prove brig scrubs it.
            return json(
                401,
                json!({"error": "invalid_client", "error_description": format!("AADSTS7000215: Invalid client secret provided: {}", f("client_secret"))}),
            );
        }
        return json(
            200,
            json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": TOKEN}),
        );
    }
    if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
        return json(
            401,
            json!({"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}),
        );
    }
    let bundle = |exp: i64| {
        json!({"value": CANARY, "id": "https://kv/secrets/db-password/abc123",
        "attributes": {"enabled": true, "exp": exp, "created": 1700000000, "updated": 1700000000, "recoveryLevel": "Recoverable+Purgeable"}})
    };
    match r.path.as_str() {
        "/secrets/db-password?api-version=7.4" => json(200, bundle(now() + 7200)),
        "/secrets/db-password/abc123?api-version=7.4" => json(200, bundle(now() + 120)),
        "/secrets/expired?api-version=7.4" => json(200, bundle(now() - 10)),
        "/secrets/off?api-version=7.4" => json(
            403,
            json!({"error": {"code": "Forbidden", "message": "Operation get is not allowed on a disabled secret.", "innererror": {"code": "SecretDisabled"}}}),
        ),
        "/secrets/boom?api-version=7.4" => json(
            503,
            json!({"error": {"code": "ServiceUnavailable", "message": "try again"}}),
        ),
        _ => json(
            404,
            json!({"error": {"code": "SecretNotFound", "message": "A secret with (name/id) x was not found in this key vault."}}),
        ),
    }
}

fn azure(s: &Server, dir: &std::path::Path, secret: &str) -> Arc<dyn brig_secrets::SecretSource> {
    let f = private_file(dir, "client-secret", secret.as_bytes());
    source(&format!(
        "kind = \"azure_key_vault\"\nvault_url = \"{u}\"\nauthority = \"{u}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ file = {} }}\nhttp = {{ allow_http = true }}\n",
        crate::q(&f),
        u = s.url
    ))
}

#[tokio::test]
async fn client_credentials_then_get_secret() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = azure(&s, dir.path(), CLIENT_SECRET);
    let f = src.fetch("db-password").await.unwrap();
    assert_eq!(f.value.expose_str(), Some(CANARY));
    let ttl = f.ttl.unwrap().as_secs();
    assert!((7100..=7200).contains(&ttl), "{ttl}");
    let f = src.fetch("db-password/abc123").await.unwrap();
    assert!(f.ttl.unwrap().as_secs() <= 120);
    assert_eq!(s.hits(&format!("/{TENANT}/")), 1, "the token is cached");
    let t = &s.requests()[0];
    assert_eq!(t.method, "POST");
    assert_eq!(
        t.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: std::collections::BTreeMap<String, String> = t.form().into_iter().collect();
    assert_eq!(form.len(), 4, "{form:?}");

    let e = src.fetch("expired").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Expired { .. }) && e.to_string().contains("attributes.exp"),
        "{e}"
    );
    let e = src.fetch("off").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Expired { .. }) && e.to_string().contains("disabled"),
        "{e}"
    );
    let e = src.fetch("nope").await.unwrap_err();
    assert!(
        matches!(e, SecretError::NotFound { .. })
            && e.to_string().contains("SecretNotFound: A secret"),
        "{e}"
    );
    let e = src.fetch("boom").await.unwrap_err();
    assert!(
        e.is_transient() && e.to_string().contains("HTTP 503"),
        "{e}"
    );
    assert_clean(&e, &[TOKEN, CANARY, CLIENT_SECRET]);
    let e = src.fetch("a_b").await.unwrap_err();
    assert!(matches!(e, SecretError::Config(_)), "{e}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_an_auth_error_without_the_secret() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = azure(&s, dir.path(), "wrong~client~secret~value");
    let e = src.fetch("db-password").await.unwrap_err();
    assert!(matches!(e, SecretError::Auth { .. }), "{e}");
    assert!(
        e.to_string().contains("invalid_client: AADSTS7000215"),
        "{e}"
    );
    assert!(e.to_string().contains("[REDACTED]"), "{e}");
    assert_clean(&e, &["wrong~client~secret~value"]);
    assert_eq!(s.hits("/secrets/"), 0);
}
