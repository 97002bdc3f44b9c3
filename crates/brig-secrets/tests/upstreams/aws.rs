//! AWS SSM Parameter Store and Secrets Manager: JSON 1.1 requests, SigV4
//! recomputed server-side, AWS's error shapes.

use std::path::Path;
use std::sync::Arc;

use brig_secrets::SecretError;
use serde_json::json;

use crate::common::{assert_clean, json, private_file, verify_sigv4, Req, Resp, Server};
use crate::{q, source};

pub const AKID: &str = "AKIDBRIGTEST0001";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/brigTESTsecretKEY0";
pub const SESSION_TOKEN: &str = "FwoGZXIvYXdzEBrig-session-token-canary";
const PARAM: &str = "canary-ssm-parameter-5e2a";
const SM: &str = "canary-secrets-manager-77c1";

fn err(ty: &str, msg: &str) -> Resp {
    json(400, json!({"__type": ty, "message": msg}))
}

/// Checks the request as SSM and Secrets Manager do.
fn handler(r: &Req) -> Resp {
    let (region, service) =
        match verify_sigv4(r, AKID, SECRET_KEY) {
            Ok(v) => v,
            Err(ty) => return err(
                ty,
                "The request signature we calculated does not match the signature you provided.",
            ),
        };
    if r.header("x-amz-security-token") != Some(SESSION_TOKEN) {
        return err(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    if r.method != "POST" || r.path != "/" || region != "eu-west-1" {
        return err("InvalidAction", "bad request line or region");
    }
    if r.header("content-type") != Some("application/x-amz-json-1.1") {
        return err("SerializationException", "wrong content type");
    }
    let b = r.json();
    match (
        service.as_str(),
        r.header("x-amz-target").unwrap_or_default(),
    ) {
        ("ssm", "AmazonSSM.GetParameter") => {
            if b["WithDecryption"] != json!(true) {
                return err("ValidationException", "expected WithDecryption");
            }
            match b["Name"].as_str() {
                Some("/brig/prod/api-key") => json(200, json!({"Parameter": {
                    "Name": "/brig/prod/api-key", "Type": "SecureString", "Value": PARAM, "Version": 3,
                    "ARN": "arn:aws:ssm:eu-west-1:123456789012:parameter/brig/prod/api-key"}})),
                Some("/brig/denied") => err("AccessDeniedException", "User: arn:aws:iam::123456789012:user/brig is not authorized to perform: ssm:GetParameter"),
                Some("/brig/boom") => json(500, json!({"__type": "InternalServerError", "message": "try later"})),
                _ => err("ParameterNotFound", ""),
            }
        }
        ("secretsmanager", "secretsmanager.GetSecretValue") => match b["SecretId"].as_str() {
            Some("prod/db") => json(
                200,
                json!({
                "ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf",
                "Name": "prod/db", "SecretString": json!({"username": "app", "password": SM}).to_string(),
                "VersionId": "v1", "VersionStages": ["AWSCURRENT"]}),
            ),
            Some("prod/blob") => json(
                200,
                json!({"Name": "prod/blob", "SecretBinary": "AAEC/w=="}),
            ),
            _ => json(
                400,
                json!({"__type": "ResourceNotFoundException", "Message": "Secrets Manager can't find the specified secret."}),
            ),
        },
        _ => err("UnknownOperationException", "wrong target for this service"),
    }
}

/// `credentials = {...}` from 0600 files.
pub fn creds_toml(dir: &Path, secret: &str) -> String {
    let a = private_file(dir, "akid", AKID.as_bytes());
    let s = private_file(dir, "secret", format!("{secret}\n").as_bytes());
    let t = private_file(dir, "token", SESSION_TOKEN.as_bytes());
    format!(
        "credentials = {{ access_key_id = {{ file = {} }}, secret_access_key = {{ file = {} }}, session_token = {{ file = {} }} }}",
        q(&a),
        q(&s),
        q(&t)
    )
}

fn aws_source(
    kind: &str,
    s: &Server,
    dir: &Path,
    secret: &str,
) -> Arc<dyn brig_secrets::SecretSource> {
    source(&format!(
        "kind = \"{kind}\"\nregion = \"eu-west-1\"\nendpoint = \"{}\"\nhttp = {{ allow_http = true }}\n{}\n",
        s.url,
        creds_toml(dir, secret)
    ))
}

#[tokio::test]
async fn ssm_get_parameter_is_signed_and_decrypted() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = aws_source("aws_ssm", &s, dir.path(), SECRET_KEY);
    assert_eq!(src.kind(), "aws_ssm");
    let f = src.fetch("/brig/prod/api-key").await.unwrap();
    assert_eq!(f.value.expose_str(), Some(PARAM));
    let r = &s.requests()[0];
    assert_eq!(r.header("x-amz-target"), Some("AmazonSSM.GetParameter"));
    assert_eq!(
        r.json(),
        json!({"Name": "/brig/prod/api-key", "WithDecryption": true})
    );
    let auth = r.header("authorization").unwrap();
    assert!(auth.contains("/eu-west-1/ssm/aws4_request"), "{auth}");
    assert!(
        auth.contains(
            "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        ),
        "{auth}"
    );

    let e = src.fetch("/brig/missing").await.unwrap_err();
    assert!(
        matches!(e, SecretError::NotFound { .. }) && e.to_string().contains("ParameterNotFound"),
        "{e}"
    );
    let e = src.fetch("/brig/denied").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Rejected { status: 400, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("not authorized to perform: ssm:GetParameter"),
        "{e}"
    );
    let e = src.fetch("/brig/boom").await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_clean(&e, &[SECRET_KEY, SESSION_TOKEN, PARAM]);
}

#[tokio::test]
async fn a_wrong_secret_key_fails_the_signature() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wJalrXUtnFEMI/K7MDENG/brigWRONGsecretKEY";
    let src = aws_source("aws_ssm", &s, dir.path(), wrong);
    let e = src.fetch("/brig/prod/api-key").await.unwrap_err();
    assert!(matches!(e, SecretError::Auth { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("InvalidSignatureException") && text.contains("check brig's AWS credentials"),
        "{text}"
    );
    assert_clean(&e, &[wrong, SESSION_TOKEN, PARAM]);
    // Nor is the signature itself in the error.
    let sig = s.requests()[0]
        .header("authorization")
        .unwrap()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();
    assert_clean(&e, &[&sig]);
}

#[tokio::test]
async fn secrets_manager_fields_binary_and_not_found() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let src = aws_source("aws_secrets_manager", &s, dir.path(), SECRET_KEY);
    let f = src.fetch("prod/db#password").await.unwrap();
    assert_eq!(f.value.expose_str(), Some(SM));
    let r = &s.requests()[0];
    assert_eq!(
        r.header("x-amz-target"),
        Some("secretsmanager.GetSecretValue")
    );
    assert_eq!(r.json(), json!({"SecretId": "prod/db"}));
    assert!(r
        .header("authorization")
        .unwrap()
        .contains("/secretsmanager/aws4_request"));
    let f = src.fetch("prod/blob").await.unwrap();
    assert_eq!(f.value.expose(), &[0, 1, 2, 255]);
    let e = src.fetch("prod/gone").await.unwrap_err();
    assert!(matches!(e, SecretError::NotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("ResourceNotFoundException: Secrets Manager can't find"),
        "{e}"
    );
}

#[tokio::test]
async fn missing_credentials_are_a_config_error_before_any_request() {
    let s = Server::http(Arc::new(handler)).await;
    let src = source(&format!(
        "kind = \"aws_ssm\"\nregion = \"eu-west-1\"\nendpoint = \"{}\"\nhttp = {{ allow_http = true }}\ncredentials = {{ access_key_id = {{ env = \"BRIG_TEST_NO_SUCH_AKID\" }} }}\n",
        s.url
    ));
    let e = src.fetch("/brig/prod/api-key").await.unwrap_err();
    assert!(
        matches!(e, SecretError::Config(_)) && e.to_string().contains("BRIG_TEST_NO_SUCH_AKID"),
        "{e}"
    );
    assert!(s.requests().is_empty());
}
