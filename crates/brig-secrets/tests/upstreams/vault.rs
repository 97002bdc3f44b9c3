//! Vault: KV v2 over HTTPS with a token, AppRole and JWT login, dynamic
//! secrets with lease renew/revoke, and Vault's error answers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brig_secrets::{Lease, Revocation, ScopeRequest, SecretError};
use serde_json::json;

use crate::common::{assert_clean, json, private_file, Req, Server};
use crate::{q, secrets, source};

const TOKEN: &str = "hvs.brig-test-root-token";
const CANARY: &str = "canary-vault-kv-8d1f0e";

fn kv_handler(r: &Req) -> crate::common::Resp {
    if r.header("x-vault-token") != Some(TOKEN) {
        return json(403, json!({"errors": ["permission denied"]}));
    }
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/v1/secret/data/app/db?version=2") | ("GET", "/v1/secret/data/app/db") => {
            if r.header("x-vault-namespace") != Some("team-a") {
                return json(404, json!({"errors": []}));
            }
            json(
                200,
                json!({
                    "request_id": "1", "lease_id": "", "renewable": false, "lease_duration": 0,
                    "data": {"data": {"password": CANARY, "user": "app"},
                             "metadata": {"created_time": "2024-01-01T00:00:00Z", "deletion_time": "", "destroyed": false, "version": 2}}
                }),
            )
        }
        ("GET", "/v1/secret/data/app/old?version=1") => json(
            404,
            json!({
                "data": {"data": null, "metadata": {"deletion_time": "2024-02-01T00:00:00Z", "destroyed": false, "version": 1}}
            }),
        ),
        ("GET", "/v1/secret/data/forbidden") => json(
            403,
            json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]}),
        ),
        ("GET", "/v1/secret/data/sealed") => json(503, json!({"errors": ["Vault is sealed"]})),
        ("GET", "/v1/secret/data/broken") => json(500, json!({"errors": ["internal error"]})),
        _ => json(404, json!({"errors": []})),
    }
}

fn kv_toml(s: &Server, dir: &std::path::Path) -> String {
    let tok = private_file(dir, "token", format!("{TOKEN}\n").as_bytes());
    format!(
        r#"kind = "vault"
address = "{}"
namespace = "team-a"
auth = {{ method = "token", token = {{ file = {} }} }}
http = {{ ca_file = {} }}
"#,
        s.url,
        q(&tok),
        q(s.ca_file.as_ref().unwrap())
    )
}

#[tokio::test]
async fn kv2_over_https_with_a_token_file() {
    let s = Server::https(Arc::new(kv_handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(&kv_toml(&s, dir.path()));
    let f = src.fetch("app/db@2#password").await.unwrap();
    assert_eq!(f.value.expose_str(), Some(CANARY));
    assert!(f.lease.is_none());
    assert_eq!(
        format!("{f:?}").matches(CANARY).count(),
        0,
        "Debug shows the value"
    );
    // No field: the whole data object.
    let all = src.fetch("app/db").await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(all.value.expose()).unwrap();
    assert_eq!(v, json!({"password": CANARY, "user": "app"}));
    let r = &s.requests()[0];
    assert_eq!(r.path, "/v1/secret/data/app/db?version=2");
    assert_eq!(r.header("x-vault-token"), Some(TOKEN));
    assert_eq!(r.header("x-vault-namespace"), Some("team-a"));

    // A field that is not there names the fields, not their values.
    let e = src.fetch("app/db#pasword").await.unwrap_err();
    assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("its fields: password, user"), "{e}");
    assert_clean(&e, &[CANARY, TOKEN]);
}

#[tokio::test]
async fn kv2_errors_are_clear_and_clean() {
    let s = Server::https(Arc::new(kv_handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(&kv_toml(&s, dir.path()));

    let e = src.fetch("nope").await.unwrap_err();
    assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("secret `nope` not found"), "{e}");

    let e = src.fetch("forbidden").await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, SecretError::Rejected { status: 403, .. }),
        "{e}"
    );
    assert!(
        text.contains("permission denied") && text.contains("policies"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    assert_clean(&e, &[TOKEN]);

    let e = src.fetch("sealed").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Unavailable { .. }) && e.to_string().contains("Vault is sealed"),
        "{e}"
    );
    let e = src.fetch("broken").await.unwrap_err();
    assert!(
        e.is_transient() && e.to_string().contains("HTTP 500"),
        "{e}"
    );

    let e = src.fetch("app/old@1").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Expired { .. }) && e.to_string().contains("deleted"),
        "{e}"
    );

    // Keys cannot climb out of the mount.
    let e = src.fetch("../sys/raw").await.unwrap_err().to_string();
    assert!(e.contains("`..`"), "{e}");
    let e = src.fetch("a?list=true").await.unwrap_err().to_string();
    assert!(e.contains("not allowed"), "{e}");
}

#[tokio::test]
async fn https_needs_the_ca_and_http_needs_allow_http() {
    let s = Server::https(Arc::new(kv_handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = kv_toml(&s, dir.path());
    let without_ca: String = toml
        .lines()
        .filter(|l| !l.starts_with("http"))
        .collect::<Vec<_>>()
        .join("\n");
    let e = source(&without_ca).fetch("app/db").await.unwrap_err();
    assert!(matches!(e, SecretError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");
    let e = crate::source_err(
        r#"kind = "vault"
address = "http://127.0.0.1:8200"
auth = { method = "token", token = { env = "VAULT_TOKEN" } }"#,
    );
    assert!(e.contains("allow_http"), "{e}");
}

#[tokio::test]
async fn a_group_readable_token_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::https(Arc::new(kv_handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = source(&kv_toml(&s, dir.path()));
    std::fs::set_permissions(
        dir.path().join("token"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let e = src.fetch("app/db").await.unwrap_err();
    assert!(
        e.to_string().contains("mode 0640") && e.to_string().contains("chmod 600"),
        "{e}"
    );
    assert_eq!(
        s.requests().len(),
        0,
        "nothing may be sent without a valid token"
    );
}

/// A Vault with AppRole and JWT login, a database secrets engine, leases.
struct Dynamic {
    logins: AtomicUsize,
    revoked: std::sync::Mutex<Vec<String>>,
    /// Vault forgot brig's token (revoked early): answer 403 once.
    forget_token: AtomicBool,
}

const ROLE_ID: &str = "5f1e-role-id";
const SECRET_ID: &str = "secret-id-0a9b8c-canary";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJicmlnIn0.sig-canary";
const DB_PASSWORD: &str = "A1a-dynamic-db-password-canary";

fn dynamic_handler(st: Arc<Dynamic>) -> crate::common::Handler {
    Arc::new(move |r: &Req| {
        let b = r.json();
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/auth/approle/login") => {
                if b != json!({"role_id": ROLE_ID, "secret_id": SECRET_ID}) {
                    return json(400, json!({"errors": ["invalid role or secret ID"]}));
                }
                let n = st.logins.fetch_add(1, Ordering::SeqCst) + 1;
                json(
                    200,
                    json!({"auth": {"client_token": format!("hvs.login-{n}"), "lease_duration": 3600, "renewable": true, "policies": ["db"]}}),
                )
            }
            ("POST", "/v1/auth/jwt/login") => {
                if b != json!({"role": "brig", "jwt": JWT}) {
                    // Vault echoes nothing of the JWT; brig must not either.
                    return json(
                        400,
                        json!({"errors": [format!("error validating token: {}", b["jwt"].as_str().unwrap_or_default())]}),
                    );
                }
                let n = st.logins.fetch_add(1, Ordering::SeqCst) + 1;
                json(
                    200,
                    json!({"auth": {"client_token": format!("hvs.login-{n}"), "lease_duration": 600, "renewable": false}}),
                )
            }
            _ => {
                let tok = r.header("x-vault-token").unwrap_or_default().to_string();
                if !tok.starts_with("hvs.login-") {
                    return json(403, json!({"errors": ["permission denied"]}));
                }
                if st.forget_token.swap(false, Ordering::SeqCst) {
                    return json(403, json!({"errors": ["permission denied"]}));
                }
                match (r.method.as_str(), r.path.as_str()) {
                    ("GET", "/v1/database/creds/readonly") => json(
                        200,
                        json!({
                            "lease_id": "database/creds/readonly/2f6a614c-4aa2", "lease_duration": 3600, "renewable": true,
                            "data": {"username": "v-brig-readonly-x1", "password": DB_PASSWORD}
                        }),
                    ),
                    ("PUT", "/v1/sys/leases/revoke") => {
                        st.revoked
                            .lock()
                            .unwrap()
                            .push(b["lease_id"].as_str().unwrap_or_default().into());
                        crate::common::raw(204, "application/json", String::new())
                    }
                    ("PUT", "/v1/sys/leases/renew") => {
                        if st
                            .revoked
                            .lock()
                            .unwrap()
                            .iter()
                            .any(|l| b["lease_id"] == json!(l))
                        {
                            return json(400, json!({"errors": ["lease not found"]}));
                        }
                        json(
                            200,
                            json!({"lease_id": b["lease_id"], "lease_duration": b["increment"], "renewable": true}),
                        )
                    }
                    _ => json(404, json!({"errors": []})),
                }
            }
        }
    })
}

fn dyn_state() -> Arc<Dynamic> {
    Arc::new(Dynamic {
        logins: AtomicUsize::new(0),
        revoked: Default::default(),
        forget_token: AtomicBool::new(false),
    })
}

#[tokio::test]
async fn approle_dynamic_secrets_renew_and_revoke_through_the_minter() {
    let st = dyn_state();
    let s = Server::http(dynamic_handler(st.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let sid = private_file(dir.path(), "sid", SECRET_ID.as_bytes());
    let sec = secrets(&format!(
        r#"
[sources.db]
kind = "vault"
address = "{}"
engine = "dynamic"
mount = "database"
http = {{ allow_http = true }}
auth = {{ method = "approle", role_id = "{ROLE_ID}", secret_id = {{ file = {} }} }}

[minters.db-read]
kind = "vault"
source = "db"
role = "readonly#password"
ttl = "20m"
"#,
        s.url,
        q(&sid)
    ));
    let m = &sec.minters["db-read"];
    let a = m.mint(&ScopeRequest::new("sess-1", "pkg")).await.unwrap();
    assert_eq!(a.value.expose_str(), Some(DB_PASSWORD));
    assert_eq!(
        a.granted["lease_id"],
        "database/creds/readonly/2f6a614c-4aa2"
    );
    let left = a.expires_at - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::minutes(20) && left > time::Duration::minutes(19),
        "{left}"
    );
    let lease = match &a.revocation {
        Revocation::Lease(l) => l.clone(),
        other => panic!("{other:?}"),
    };
    assert!(!format!("{a:?}").contains(DB_PASSWORD));

    // A second mint reuses brig's login token.
    let _b = m.mint(&ScopeRequest::new("sess-2", "pkg")).await.unwrap();
    assert_eq!(st.logins.load(Ordering::SeqCst), 1);

    let src = &sec.sources["db"];
    let renewed = src.renew(&lease, Duration::from_secs(900)).await.unwrap();
    assert_eq!(renewed.duration, Duration::from_secs(900));

    m.revoke(&a).await.unwrap();
    assert_eq!(*st.revoked.lock().unwrap(), vec![lease.id.clone()]);
    let revoke = s
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/sys/leases/revoke")
        .unwrap();
    assert_eq!(revoke.method, "PUT");
    assert_eq!(revoke.json(), json!({"lease_id": lease.id}));
    assert_eq!(revoke.header("x-vault-token"), Some("hvs.login-1"));

    // A revoked lease cannot be renewed: a clear "expired or revoked".
    let e = src
        .renew(&lease, Duration::from_secs(900))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Expired { .. }) && e.to_string().contains("lease not found"),
        "{e}"
    );

    // A token Vault no longer knows: one fresh login, then success.
    st.forget_token.store(true, Ordering::SeqCst);
    m.mint(&ScopeRequest::new("sess-3", "pkg")).await.unwrap();
    assert_eq!(st.logins.load(Ordering::SeqCst), 2);

    // Out-of-bounds TTLs are refused before Vault is asked.
    let before = s.requests().len();
    let e = m
        .mint(&ScopeRequest::new("s", "pkg").with_ttl(Duration::from_secs(5 * 60)))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("TTL 5m is outside the allowed 15m..1h"),
        "{e}"
    );
    assert_eq!(s.requests().len(), before);
    let login = &s.requests()[0];
    assert_eq!(login.path, "/v1/auth/approle/login");
}

#[tokio::test]
async fn approle_with_a_wrong_secret_id_is_an_auth_error() {
    let st = dyn_state();
    let s = Server::http(dynamic_handler(st)).await;
    let dir = tempfile::tempdir().unwrap();
    let sid = private_file(dir.path(), "sid", b"wrong-secret-id-value");
    let src = source(&format!(
        r#"kind = "vault"
address = "{}"
engine = "dynamic"
mount = "database"
http = {{ allow_http = true }}
auth = {{ method = "approle", role_id = "{ROLE_ID}", secret_id = {{ file = {} }} }}
"#,
        s.url,
        q(&sid)
    ));
    let e = src.fetch("readonly").await.unwrap_err();
    assert!(matches!(e, SecretError::Auth { .. }), "{e}");
    assert!(e.to_string().contains("invalid role or secret ID"), "{e}");
    assert_clean(&e, &["wrong-secret-id-value"]);
}

#[tokio::test]
async fn jwt_login_reads_the_jwt_file_and_scrubs_echoes() {
    let st = dyn_state();
    let s = Server::http(dynamic_handler(st.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let jwt = private_file(dir.path(), "jwt", format!("{JWT}\n").as_bytes());
    let toml = format!(
        r#"kind = "vault"
address = "{}"
engine = "dynamic"
mount = "database"
http = {{ allow_http = true }}
auth = {{ method = "jwt", role = "brig", jwt_file = {} }}
"#,
        s.url,
        q(&jwt)
    );
    let src = source(&toml);
    let f = src.fetch("readonly").await.unwrap();
    assert_eq!(
        f.lease,
        Some(Lease {
            id: "database/creds/readonly/2f6a614c-4aa2".into(),
            duration: Duration::from_secs(3600),
            renewable: true
        })
    );
    let v: serde_json::Value = serde_json::from_slice(f.value.expose()).unwrap();
    assert_eq!(v["username"], "v-brig-readonly-x1");
    assert_eq!(s.requests()[0].json(), json!({"role": "brig", "jwt": JWT}));
    src.revoke(f.lease.as_ref().unwrap()).await.unwrap();

    // A rotated (here: wrong) JWT; Vault's message quotes it, brig's does not.
    std::fs::write(&jwt, "eyJ.rotated.but-wrong-jwt").unwrap();
    let src = source(&toml);
    let e = src.fetch("readonly").await.unwrap_err();
    assert!(matches!(e, SecretError::Auth { .. }), "{e}");
    assert_clean(&e, &["eyJ.rotated.but-wrong-jwt"]);
    assert!(e.to_string().contains("[REDACTED]"), "{e}");
}
