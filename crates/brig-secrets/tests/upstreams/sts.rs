//! AWS STS AssumeRole: Query API form, SigV4, session policy, XML answers.

use std::sync::Arc;
use std::time::Duration;

use brig_secrets::{Revocation, ScopeRequest, SecretError};
use serde_json::json;

use crate::aws::{creds_toml, AKID, SECRET_KEY};
use crate::common::{assert_clean, raw, verify_sigv4, Req, Resp, Server};
use crate::minter;

const ROLE: &str = "arn:aws:iam::123456789012:role/brig-agent";
const NEW_SECRET: &str = "sts-minted-secret-key-canary-9f0";
const NEW_TOKEN: &str = "IQoJb3JpZ2luX2VjEsts-minted-session-token-canary";

fn xml_err(status: u16, code: &str, msg: &str) -> Resp {
    raw(
        status,
        "text/xml",
        format!("<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error><RequestId>r1</RequestId></ErrorResponse>"),
    )
}

fn handler(r: &Req) -> Resp {
    match verify_sigv4(r, AKID, SECRET_KEY) {
        Ok((region, service)) if region == "us-east-1" && service == "sts" => {}
        Ok(_) => return xml_err(400, "InvalidClientTokenId", "wrong scope"),
        Err(_) => {
            return xml_err(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        }
    }
    if r.header("content-type") != Some("application/x-www-form-urlencoded; charset=utf-8") {
        return xml_err(400, "InvalidParameterValue", "content type");
    }
    let f = |k: &str| r.form_get(k).unwrap_or_default();
    if f("Action") != "AssumeRole" || f("Version") != "2011-06-15" || f("RoleArn") != ROLE {
        return xml_err(400, "InvalidAction", "bad action");
    }
    let secs: i64 = f("DurationSeconds").parse().unwrap_or(0);
    if !(900..=3600).contains(&secs) {
        return xml_err(400, "ValidationError", "DurationSeconds out of range");
    }
    let policy: serde_json::Value = serde_json::from_str(&f("Policy")).unwrap_or_default();
    if policy["Statement"][0]["Action"] == "iam:*" {
        return xml_err(403, "AccessDenied", "User: arn:aws:iam::123456789012:user/brig is not authorized to perform: sts:AssumeRole");
    }
    let exp = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let exp = exp
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    raw(
        200,
        "text/xml",
        format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>brig</SourceIdentity>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/brig-agent/{}</Arn>
      <AssumedRoleId>ARO123EXAMPLE123:{}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>
      <SecretAccessKey>{NEW_SECRET}</SecretAccessKey>
      <SessionToken>{NEW_TOKEN}</SessionToken>
      <Expiration>{exp}</Expiration>
    </Credentials>
    <PackedPolicySize>6</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#,
            f("RoleSessionName"),
            f("RoleSessionName")
        ),
    )
}

fn sts(
    s: &Server,
    dir: &std::path::Path,
    secret: &str,
    policy: bool,
) -> Arc<dyn brig_secrets::Minter> {
    let policy = if policy {
        "policy = '''{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"s3:GetObject\",\"Resource\":\"arn:aws:s3:::brig-artifacts/*\"}]}'''\n"
    } else {
        ""
    };
    minter(&format!(
        "kind = \"aws_sts\"\nrole_arn = \"{ROLE}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nttl = \"15m\"\nhttp = {{ allow_http = true }}\n{policy}{}\n",
        s.url,
        creds_toml(dir, secret)
    ))
}

#[tokio::test]
async fn assume_role_with_the_session_policy() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let m = sts(&s, dir.path(), SECRET_KEY, true);
    let got = m
        .mint(&ScopeRequest::new("s-42", "cloud:artifacts"))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(got.value.expose()).unwrap();
    assert_eq!(v["Version"], 1);
    assert_eq!(v["AccessKeyId"], "ASIAIOSFODNN7EXAMPLE");
    assert_eq!(v["SecretAccessKey"], NEW_SECRET);
    assert_eq!(v["SessionToken"], NEW_TOKEN);
    assert!(matches!(got.revocation, Revocation::ExpiresOnly { .. }));
    let left = got.expires_at - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::minutes(15) && left > time::Duration::minutes(14),
        "{left}"
    );
    assert_eq!(got.granted["role_session_name"], "brig-s-42");
    assert_eq!(
        got.granted["assumed_role_arn"],
        "arn:aws:sts::123456789012:assumed-role/brig-agent/brig-s-42"
    );
    assert_eq!(
        got.granted["session_policy"]["Statement"][0]["Action"],
        "s3:GetObject"
    );
    let shown = format!("{got:?} {}", got.granted);
    assert!(
        !shown.contains(NEW_SECRET) && !shown.contains(NEW_TOKEN),
        "{shown}"
    );

    let r = &s.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
    let form: std::collections::BTreeMap<String, String> = r.form().into_iter().collect();
    let want_policy = json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::brig-artifacts/*"}]});
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&form["Policy"]).unwrap(),
        want_policy
    );
    assert_eq!(form["RoleSessionName"], "brig-s-42");
    assert_eq!(form["DurationSeconds"], "900");
    assert_eq!(form.len(), 6, "{form:?}");

    // A request's own policy replaces the default one; 1 h is in bounds.
    let mut req = ScopeRequest::new("s-43", "cloud:x").with_ttl(Duration::from_secs(3600));
    req.policy = Some(
        json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sqs:SendMessage","Resource":"*"}]}),
    );
    let got = m.mint(&req).await.unwrap();
    assert_eq!(got.granted["duration_seconds"], 3600);
    let form: std::collections::BTreeMap<String, String> =
        s.requests()[1].form().into_iter().collect();
    assert!(form["Policy"].contains("sqs:SendMessage"));
    m.revoke(&got).await.unwrap();
}

#[tokio::test]
async fn refusals_are_clear() {
    let s = Server::http(Arc::new(handler)).await;
    let dir = tempfile::tempdir().unwrap();
    let m = sts(&s, dir.path(), SECRET_KEY, false);
    // No policy anywhere: brig will not assume the role unnarrowed.
    let e = m
        .mint(&ScopeRequest::new("s", "cloud:x"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Denied { .. }) && e.to_string().contains("no session policy"),
        "{e}"
    );
    // TTL bounds.
    let mut req = ScopeRequest::new("s", "cloud:x").with_ttl(Duration::from_secs(2 * 3600));
    req.policy = Some(
        json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:*","Resource":"*"}]}),
    );
    let e = m.mint(&req).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("TTL 2h is outside the allowed 15m..1h"),
        "{e}"
    );
    assert!(s.requests().is_empty());
    // STS's own AccessDenied.
    req.ttl = None;
    let e = m.mint(&req).await.unwrap_err();
    assert!(
        matches!(e, SecretError::Rejected { status: 403, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("AccessDenied: User: arn:aws:iam::123456789012:user/brig is not authorized"),
        "{e}"
    );

    // A wrong secret key: STS's SignatureDoesNotMatch, an auth error.
    let dir2 = tempfile::tempdir().unwrap();
    let m = sts(&s, dir2.path(), "not-the-right-secret-key-value", true);
    let e = m
        .mint(&ScopeRequest::new("s", "cloud:x"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SecretError::Auth { .. }) && e.to_string().contains("SignatureDoesNotMatch"),
        "{e}"
    );
    assert_clean(&e, &["not-the-right-secret-key-value"]);
}

#[test]
fn a_ttl_default_outside_the_bounds_is_a_config_error() {
    let c: brig_secrets::MinterConfig = toml::from_str(&format!(
        "kind = \"aws_sts\"\nrole_arn = \"{ROLE}\"\nregion = \"us-east-1\"\nttl = \"2h\"\n"
    ))
    .unwrap();
    let e = c
        .build("cloud", Default::default(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[secrets.minters.cloud]: TTL 2h is outside the allowed 15m..1h"),
        "{e}"
    );
    let c: brig_secrets::MinterConfig =
        toml::from_str("kind = \"aws_sts\"\nrole_arn = \"brig-agent\"\nregion = \"us-east-1\"\n")
            .unwrap();
    let e = c
        .build("cloud", Default::default(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is not a role ARN"), "{e}");
}
