//! GitHub App installation tokens: the app JWT verified with the app's
//! public key, one repository and the requested permissions in the body,
//! revocation with the token itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use brig_secrets::{Minter, Revocation, ScopeRequest, SecretError};
use openssl::pkey::{PKey, Private};
use serde_json::json;

use crate::common::{assert_clean, json, now, private_file, raw, rsa_key, verify_jwt, Req, Server};

const TOKEN: &str = "ghs_brigTestInstallationTokenCanary01";

fn handler(key: PKey<Private>, widen: Arc<AtomicBool>) -> crate::common::Handler {
    Arc::new(move |r: &Req| {
        if r.header("x-github-api-version") != Some("2022-11-28")
            || r.header("accept") != Some("application/vnd.github+json")
        {
            return json(400, json!({"message": "missing API version headers"}));
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/v3/app/installations/42/access_tokens") => {
                let jwt = r
                    .header("authorization")
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .unwrap_or_default();
                let Some(c) = verify_jwt(jwt, &key) else {
                    return json(
                        401,
                        json!({"message": "A JSON web token could not be decoded", "documentation_url": "https://docs.github.com/rest"}),
                    );
                };
                let (iat, exp) = (
                    c["iat"].as_i64().unwrap_or(0),
                    c["exp"].as_i64().unwrap_or(0),
                );
                if c["iss"] != "12345" || exp - iat > 600 || iat > now() - 30 || exp <= now() {
                    return json(
                        401,
                        json!({"message": "'Expiration time' claim ('exp') is too far in the future"}),
                    );
                }
                let b = r.json();
                let repos = b["repositories"].as_array().cloned().unwrap_or_default();
                if repos.len() != 1 {
                    return json(422, json!({"message": "expected exactly one repository"}));
                }
                if repos[0] == "archived" {
                    return json(
                        422,
                        json!({"message": "There is at least one repository that does not exist or is not accessible to the parent installation."}),
                    );
                }
                let mut perms = b["permissions"].clone();
                perms["metadata"] = json!("read");
                if widen.load(Ordering::SeqCst) {
                    perms["administration"] = json!("write");
                }
                let exp = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap();
                json(
                    201,
                    json!({"token": TOKEN, "expires_at": exp, "permissions": perms, "repository_selection": "selected",
                    "repositories": [{"id": 1, "name": repos[0], "full_name": format!("acme/{}", repos[0].as_str().unwrap_or(""))}]}),
                )
            }
            ("DELETE", "/api/v3/installation/token") => {
                if r.header("authorization") == Some(&format!("Bearer {TOKEN}")) {
                    raw(204, "application/json", String::new())
                } else {
                    json(401, json!({"message": "Bad credentials"}))
                }
            }
            _ => json(404, json!({"message": "Not Found"})),
        }
    })
}

struct Gh {
    server: Server,
    minter: Arc<dyn Minter>,
    widen: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

async fn github() -> Gh {
    let key = rsa_key();
    let widen = Arc::new(AtomicBool::new(false));
    let server = Server::https(handler(key.clone(), widen.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = private_file(
        dir.path(),
        "app.pem",
        &key.private_key_to_pem_pkcs8().unwrap(),
    );
    let minter = crate::minter(&format!(
        r#"kind = "github_app"
app_id = 12345
installation_id = 42
private_key_file = {}
api = "{}/api/v3"
owner = "acme"
permissions = {{ contents = "write", pull_requests = "write" }}
http = {{ ca_file = {} }}
"#,
        crate::q(&pem),
        server.url,
        crate::q(server.ca_file.as_ref().unwrap())
    ));
    Gh {
        server,
        minter,
        widen,
        _dir: dir,
    }
}

#[tokio::test]
async fn one_repository_only_the_needed_permissions_and_revocation() {
    let gh = github().await;
    let got = gh
        .minter
        .mint(&ScopeRequest::git_write("s1", "acme/widgets"))
        .await
        .unwrap();
    assert_eq!(got.value.expose_str(), Some(TOKEN));
    assert_eq!(got.revocation, Revocation::Token);
    assert_eq!(got.granted["repositories"], json!(["acme/widgets"]));
    assert_eq!(
        got.granted["permissions"],
        json!({"contents": "write", "metadata": "read", "pull_requests": "write"})
    );
    // The default TTL (30 min) ends before GitHub's hour.
    let left = got.expires_at - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::minutes(30) && left > time::Duration::minutes(29),
        "{left}"
    );
    assert!(!format!("{got:?} {}", got.granted).contains(TOKEN));

    let req = &gh.server.requests()[0];
    assert_eq!(
        req.json(),
        json!({"repositories": ["widgets"], "permissions": {"contents": "write", "pull_requests": "write"}})
    );

    let read = gh
        .minter
        .mint(&ScopeRequest::git_read("s1", "acme/widgets").with_ttl(Duration::from_secs(900)))
        .await
        .unwrap();
    assert_eq!(
        gh.server.requests()[1].json()["permissions"],
        json!({"contents": "read"})
    );
    assert!(read.expires_at - time::OffsetDateTime::now_utc() <= time::Duration::minutes(15));

    gh.minter.revoke(&got).await.unwrap();
    let del = gh.server.requests().pop().unwrap();
    assert_eq!(
        (del.method.as_str(), del.path.as_str()),
        ("DELETE", "/api/v3/installation/token")
    );
    assert_eq!(
        del.header("authorization"),
        Some(&*format!("Bearer {TOKEN}"))
    );
}

#[tokio::test]
async fn requests_beyond_the_config_are_denied_before_github_is_asked() {
    let gh = github().await;
    let mut req = ScopeRequest::git_write("s1", "acme/widgets");
    req.permissions
        .insert("administration".into(), "write".into());
    let e = gh.minter.mint(&req).await.unwrap_err();
    assert!(
        matches!(e, SecretError::Denied { .. })
            && e.to_string()
                .contains("permission administration is not allowed"),
        "{e}"
    );
    let mut req = ScopeRequest::git_read("s1", "acme/widgets");
    req.permissions.insert("contents".into(), "admin".into());
    let e = gh.minter.mint(&req).await.unwrap_err();
    assert!(e.to_string().contains("above the allowed write"), "{e}");
    let e = gh
        .minter
        .mint(&ScopeRequest::git_read("s1", "evil/widgets"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not under `acme`"), "{e}");
    let e = gh
        .minter
        .mint(&ScopeRequest::new("s1", "git.read"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("names no repository"), "{e}");
    let mut req = ScopeRequest::git_read("s1", "acme/widgets");
    req.permissions.clear();
    let e = gh.minter.mint(&req).await.unwrap_err();
    assert!(e.to_string().contains("asks for no permissions"), "{e}");
    let e = gh
        .minter
        .mint(&ScopeRequest::git_read("s1", "acme/w").with_ttl(Duration::from_secs(7200)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("outside the allowed"), "{e}");
    assert!(gh.server.requests().is_empty());
}

#[tokio::test]
async fn github_errors_and_a_wider_grant() {
    let gh = github().await;
    let e = gh
        .minter
        .mint(&ScopeRequest::git_read("s1", "acme/archived"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Rejected { status: 422, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("not accessible to the parent installation"),
        "{e}"
    );

    // GitHub answering with more than asked: brig revokes and fails.
    gh.widen.store(true, Ordering::SeqCst);
    let e = gh
        .minter
        .mint(&ScopeRequest::git_read("s1", "acme/widgets"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("granted more than asked (permission administration = write)"),
        "{e}"
    );
    assert_clean(&e, &[TOKEN]);
    let last = gh.server.requests().pop().unwrap();
    assert_eq!(last.method, "DELETE", "the wider token must be revoked");
}

#[tokio::test]
async fn a_jwt_from_another_key_is_refused() {
    let key = rsa_key();
    let server = Server::http(handler(key, Arc::default())).await;
    let dir = tempfile::tempdir().unwrap();
    let pem = private_file(
        dir.path(),
        "app.pem",
        &rsa_key().private_key_to_pem_pkcs8().unwrap(),
    );
    let m = crate::minter(&format!(
        "kind = \"github_app\"\napp_id = \"12345\"\ninstallation_id = 42\nprivate_key_file = {}\napi = \"{}/api/v3\"\npermissions = {{ contents = \"read\" }}\nhttp = {{ allow_http = true }}\n",
        crate::q(&pem),
        server.url
    ));
    let e = m
        .mint(&ScopeRequest::git_read("s", "acme/widgets"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Auth { .. }) && e.to_string().contains("could not be decoded"),
        "{e}"
    );
    let jwt = server.requests()[0]
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_string();
    assert_clean(&e, &[&jwt]);
}
