//! GCP Secret Manager: the service-account JWT assertion verified with the
//! public key, the token cached, `versions/V:access` with base64 payloads.

use std::sync::Arc;

use base64::Engine;
use brig_secrets::SecretError;
use openssl::pkey::{PKey, Private};
use serde_json::json;

use crate::common::{assert_clean, json, now, private_file, rsa_key, verify_jwt, Req, Server};
use crate::source;

const TOKEN: &str = "ya29.brig-test-access-token";
const CANARY: &str = "canary-gcp-secret-3b9e";
const EMAIL: &str = "brig@proj-1.iam.gserviceaccount.com";

fn handler(
    key: PKey<Private>,
    token_uri: Arc<std::sync::OnceLock<String>>,
) -> crate::common::Handler {
    Arc::new(move |r: &Req| {
        if r.path == "/token" {
            let aud = token_uri.get().cloned().unwrap_or_default();
            if r.form_get("grant_type").as_deref()
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return json(400, json!({"error": "unsupported_grant_type"}));
            }
            let Some(c) = r.form_get("assertion").and_then(|a| verify_jwt(&a, &key)) else {
                return json(
                    400,
                    json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
                );
            };
            let iat = c["iat"].as_i64().unwrap_or(0);
            let ok = c["iss"] == EMAIL
                && c["aud"] == json!(aud)
                && c["scope"] == "https://www.googleapis.com/auth/cloud-platform"
                && (iat - now()).abs() < 60
                && c["exp"].as_i64() == Some(iat + 3600);
            if !ok {
                return json(
                    400,
                    json!({"error": "invalid_grant", "error_description": format!("bad claims {c}")}),
                );
            }
            return json(
                200,
                json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
            );
        }
        if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return json(
                401,
                json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
            );
        }
        let data = base64::engine::general_purpose::STANDARD.encode(CANARY);
        match r.path.as_str() {
            "/v1/projects/proj-1/secrets/api-key/versions/latest:access" => json(
                200,
                json!({
                "name": "projects/123/secrets/api-key/versions/4",
                "payload": {"data": data, "dataCrc32c": "2634927260"}}),
            ),
            "/v1/projects/other/secrets/api-key/versions/2:access" => json(
                200,
                json!({
                "name": "projects/9/secrets/api-key/versions/2", "payload": {"data": data, "dataCrc32c": "1"}}),
            ),
            "/v1/projects/proj-1/secrets/old/versions/1:access" => json(
                400,
                json!({"error": {"code": 400,
                "message": "Secret Version [projects/123/secrets/old/versions/1] is in DESTROYED state.", "status": "FAILED_PRECONDITION"}}),
            ),
            "/v1/projects/proj-1/secrets/denied/versions/latest:access" => json(
                403,
                json!({"error": {"code": 403,
                "message": "Permission 'secretmanager.versions.access' denied for resource 'projects/proj-1/secrets/denied/versions/latest' (or it may not exist).", "status": "PERMISSION_DENIED"}}),
            ),
            "/v1/projects/proj-1/secrets/flaky/versions/latest:access" => json(
                500,
                json!({"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}),
            ),
            _ => json(
                404,
                json!({"error": {"code": 404, "message": "Secret [projects/123/secrets/x] not found or has no versions.", "status": "NOT_FOUND"}}),
            ),
        }
    })
}

#[tokio::test]
async fn service_account_jwt_token_and_access() {
    let key = rsa_key();
    let token_uri: Arc<std::sync::OnceLock<String>> = Arc::default();
    let s = Server::http(handler(key.clone(), token_uri.clone())).await;
    token_uri.set(format!("{}/token", s.url)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let kf = private_file(
        dir.path(),
        "sa.json",
        json!({"type": "service_account", "project_id": "proj-1", "private_key_id": "kid-1",
               "private_key": pem, "client_email": EMAIL, "token_uri": format!("{}/token", s.url)})
        .to_string()
        .as_bytes(),
    );
    let src = source(&format!(
        "kind = \"gcp_secret_manager\"\ncredentials_file = {}\nendpoint = \"{}\"\nhttp = {{ allow_http = true }}\n",
        crate::q(&kf),
        s.url
    ));
    let f = src.fetch("api-key").await.unwrap();
    assert_eq!(f.value.expose_str(), Some(CANARY));
    // The token is cached: the second fetch goes straight to the API.
    src.fetch("api-key").await.unwrap();
    assert_eq!(s.hits("/token"), 1);
    assert_eq!(s.hits("/v1/"), 2);
    let tok_req = &s.requests()[0];
    assert_eq!(
        tok_req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let assertion = tok_req.form_get("assertion").unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(assertion.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        header,
        json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
    );
    // Another key does not verify it (the check can fail).
    assert!(verify_jwt(&assertion, &rsa_key()).is_none());

    let e = src
        .fetch("projects/other/secrets/api-key/versions/2")
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Protocol { .. }) && e.to_string().contains("CRC32C"),
        "{e}"
    );
    let e = src.fetch("missing").await.unwrap_err();
    assert!(
        matches!(e, SecretError::NotFound { .. }) && e.to_string().contains("NOT_FOUND: Secret"),
        "{e}"
    );
    let e = src.fetch("old@1").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Expired { .. }) && e.to_string().contains("DESTROYED"),
        "{e}"
    );
    let e = src.fetch("denied").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Rejected { status: 403, .. })
            && e.to_string().contains("secretAccessor"),
        "{e}"
    );
    let e2 = src.fetch("flaky").await.unwrap_err();
    assert!(e2.is_transient(), "{e2}");
    for e in [e, e2] {
        assert_clean(&e, &[TOKEN, CANARY, &assertion]);
    }
    let e = src.fetch("a/b").await.unwrap_err();
    assert!(matches!(e, SecretError::Config(_)), "{e}");
}

#[tokio::test]
async fn a_key_the_token_endpoint_rejects_is_an_auth_error() {
    let key = rsa_key();
    let token_uri: Arc<std::sync::OnceLock<String>> = Arc::default();
    let s = Server::http(handler(key, token_uri.clone())).await;
    token_uri.set(format!("{}/token", s.url)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = rsa_key();
    let pem = String::from_utf8(other.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let kf = private_file(
        dir.path(),
        "sa.json",
        json!({"type": "service_account", "project_id": "proj-1", "private_key": pem, "client_email": EMAIL}).to_string().as_bytes(),
    );
    let src = source(&format!(
        "kind = \"gcp_secret_manager\"\ncredentials_file = {}\nendpoint = \"{}\"\ntoken_uri = \"{}/token\"\nhttp = {{ allow_http = true }}\n",
        crate::q(&kf),
        s.url,
        s.url
    ));
    let e = src.fetch("api-key").await.unwrap_err();
    assert!(matches!(e, SecretError::Auth { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("invalid_grant: Invalid JWT Signature."),
        "{e}"
    );
    assert_clean(&e, &["PRIVATE KEY"]);
    assert_eq!(s.hits("/v1/"), 0);
}

#[test]
fn a_readable_key_file_or_a_wrong_type_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kf = private_file(dir.path(), "sa.json", br#"{"type": "authorized_user"}"#);
    let toml = format!(
        "kind = \"gcp_secret_manager\"\ncredentials_file = {}\n",
        crate::q(&kf)
    );
    let e = crate::source_err(&toml);
    assert!(
        e.contains("not a service-account JSON key") || e.contains("service_account"),
        "{e}"
    );
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = crate::source_err(&toml);
    assert!(e.contains("mode 0644"), "{e}");
}
