//! Secrets never enter the box (issue 6), end to end in a real `native`
//! session: canary secrets from an env and a file source are granted to the
//! session as placeholders; brig's proxy intercepts their bound host's TLS
//! (the sandbox trusts brig's CA through the bundle brig gives it) and swaps
//! the real values in only there; a local HTTPS origin with its own CA
//! records what it receives. The canaries must not appear inside the
//! sandbox (environment, files, any process's /proc), in the journal, or in
//! any request but to their bound host.

mod server_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use serde_json::{json, Value};
use server_support::*;

const ENV_CANARY: &str = "canary-env-7c1e9f04b2d64a83";
const FILE_CANARY: &str = "canary-file-5d2b8a61e0f94c17";
const VAULT_CANARY: &str = "canary-vault-93fa0c7d1e2b6b58";
const VAULT_TOKEN: &str = "hvs.brig-e2e-vault-token";

/// A Vault speaking KV v2 on loopback: `GET /v1/secret/data/ci` with the
/// right `X-Vault-Token` answers the canary; anything else is a 403 or 404
/// as Vault would. Counts the reads.
fn fake_vault() -> (u16, Arc<Mutex<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reads = Arc::new(Mutex::new(0u32));
    let r2 = reads.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let want = format!("x-vault-token: {}", VAULT_TOKEN.to_ascii_lowercase());
            let authed = req.lines().any(|l| l.to_ascii_lowercase() == want);
            let (status, body) = if !authed {
                (
                    "403 Forbidden",
                    r#"{"errors":["permission denied"]}"#.to_string(),
                )
            } else if req.starts_with("GET /v1/secret/data/ci ") {
                *r2.lock().unwrap() += 1;
                (
                    "200 OK",
                    format!(
                        r#"{{"data":{{"data":{{"token":"{VAULT_CANARY}"}},"metadata":{{"version":3}}}},"lease_duration":0,"renewable":false}}"#
                    ),
                )
            } else {
                ("404 Not Found", r#"{"errors":[]}"#.to_string())
            };
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, reads)
}

fn cert(
    cn: &str,
    ca: Option<(&X509, &PKey<openssl::pkey::Private>)>,
) -> (X509, PKey<openssl::pkey::Private>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match ca {
        None => {
            b.set_issuer_name(&name).unwrap();
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            b.sign(&key, MessageDigest::sha256()).unwrap();
        }
        Some((ca_cert, ca_key)) => {
            b.set_issuer_name(ca_cert.subject_name()).unwrap();
            let san = SubjectAlternativeName::new()
                .dns(cn)
                .build(&b.x509v3_context(Some(ca_cert), None))
                .unwrap();
            b.append_extension(san).unwrap();
            b.sign(ca_key, MessageDigest::sha256()).unwrap();
        }
    }
    (b.build(), key)
}

/// An HTTPS origin for `api.canary.test` and `other.canary.test` on
/// loopback that records every request it receives (head and body).
struct Origin {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn origin() -> Origin {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_key) = cert("canary test CA", None);
    let ca_file = dir.path().join("origin-ca.pem");
    std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    let (leaf, key) = cert("api.canary.test", Some((&ca, &ca_key)));
    acc.set_private_key(&key).unwrap();
    acc.set_certificate(&leaf).unwrap();
    // other.canary.test rides the same certificate's name check: the
    // proxy never gets that far for it (the placeholder is blocked first).
    let acc = Arc::new(acc.build());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let acc = acc.clone();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let Ok(mut tls) = acc.accept(stream) else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // One request: the head, then Content-Length bytes.
                loop {
                    let n = match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf).into_owned());
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
                let _ = tls.shutdown();
            });
        }
    });
    Origin {
        port,
        seen,
        ca_file,
        _dir: dir,
    }
}

/// A plain-HTTP origin that records what reaches it.
fn plain_origin() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
        }
    });
    (port, seen)
}

fn configure(
    cfg: &mut brig_server::ServerConfig,
    o: &Origin,
    plain_port: u16,
    vault_port: u16,
    secrets_dir: &std::path::Path,
    env_var: &str,
) {
    cfg.secrets = toml::from_str(&format!(
        "[sources.env]\nkind = \"env\"\n[sources.files]\nkind = \"file\"\ndir = {:?}\n\
         [sources.vault]\nkind = \"vault\"\naddress = \"http://127.0.0.1:{vault_port}\"\n\
         auth = {{ method = \"token\", token = {{ env = \"BRIG_E2E_VAULT_TOKEN\" }} }}\n\
         http = {{ allow_http = true }}\n",
        secrets_dir.display().to_string()
    ))
    .unwrap();
    cfg.secrets_upstream_ca = Some(o.ca_file.clone());
    cfg.resolver
        .static_hosts
        .insert("api.canary.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    cfg.resolver.static_hosts.insert(
        "other.canary.test".into(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    let p = cfg.profiles.get_mut("default").unwrap();
    p.egress = toml::from_str(&format!(
        "[[allow]]\nname = \"canary\"\ndomains = [\"api.canary.test\", \"other.canary.test\"]\nports = [{}, {}]\n[ssrf]\ntrusted_cidrs = [\"127.0.0.0/8\"]\n",
        o.port, plain_port
    ))
    .unwrap();
    p.secrets = toml::from_str(&format!(
        r#"
[CANARY_ENV]
source = "env"
key = "{env_var}"
scope = "pkg"
hosts = ["api.canary.test"]
[CANARY_FILE]
source = "files"
key = "canary.txt"
scope = "pkg"
hosts = ["api.canary.test"]
file = true
body = true
[CANARY_VAULT]
source = "vault"
key = "ci#token"
scope = "model"
hosts = ["api.canary.test"]
authorization = "Token "
"#
    ))
    .unwrap();
}

async fn sh(srv: &Srv, id: &str, script: &str) -> (i64, String) {
    let r = srv.exec(id, &["/bin/sh", "-c", script]).await;
    (
        r["status"]["code"].as_i64().unwrap_or(-1),
        format!(
            "{}{}",
            r["stdout"].as_str().unwrap_or(""),
            r["stderr"].as_str().unwrap_or("")
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_reach_only_their_bound_host_and_nothing_else_sees_them() {
    require_root!();
    let o = origin();
    let secrets_dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let f = secrets_dir.path().join("canary.txt");
        std::fs::write(&f, format!("{FILE_CANARY}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::env::set_var("BRIG_E2E_CANARY_ENV", ENV_CANARY);
    std::env::set_var("BRIG_E2E_VAULT_TOKEN", VAULT_TOKEN);
    let (vault_port, vault_reads) = fake_vault();
    let sd = secrets_dir.path().to_path_buf();
    let (plain_port, plain_seen) = plain_origin();
    let srv = Srv::start_with(|cfg| {
        configure(cfg, &o, plain_port, vault_port, &sd, "BRIG_E2E_CANARY_ENV")
    })
    .await;
    let s = srv.create(json!({"task": "SEC-1"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let port = o.port;

    // Inside: placeholders only, in the environment and the file; no
    // process's environment or command line holds a canary.
    let (code, out) = sh(
        &srv,
        &id,
        "echo ENV=$CANARY_ENV; echo FILE=$(cat /.brig/egress/secrets/CANARY_FILE); \
         cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c -e 'canary-env-7c1e9f04[b]2d64a83' -e 'canary-file-5d2b8a61[e]0f94c17' -e 'canary-vault-93fa0c7d[1]e2b6b58' || true",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ENV=brig-placeholder-"), "{out}");
    assert!(out.contains("FILE=brig-placeholder-"), "{out}");
    assert!(
        !out.contains(ENV_CANARY) && !out.contains(FILE_CANARY) && !out.contains(VAULT_CANARY),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with('0'),
        "a canary is in some /proc: {out}"
    );

    // The bound host gets the real values: a header, and a body (allowed).
    let (code, out) = sh(
        &srv,
        &id,
        &format!(
            "curl -sS -f https://api.canary.test:{port}/header -H \"Authorization: Bearer $CANARY_ENV\" && \
             curl -sS -f https://api.canary.test:{port}/body -d \"key=$(cat /.brig/egress/secrets/CANARY_FILE)\""
        ),
    )
    .await;
    assert_eq!(code, 0, "curl to the bound host: {out}");
    let seen = o.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.contains(&format!("Bearer {ENV_CANARY}"))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.contains(&format!("key={FILE_CANARY}"))),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|r| r.contains("brig-placeholder-")),
        "{seen:?}"
    );
    // The Vault grant: read once, just in time, and set as Authorization
    // where the client set none.
    let (code, out) = sh(
        &srv,
        &id,
        &format!("curl -sS -f https://api.canary.test:{port}/vault"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(*vault_reads.lock().unwrap(), 1);
    let seen = o.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.contains("GET /vault") && r.contains(&format!("Token {VAULT_CANARY}"))),
        "{seen:?}"
    );

    // Any other host brig sees (plain HTTP here): the placeholder is
    // blocked before anything leaves, in a header or a body. (TLS to a host
    // no secret is bound to is not intercepted: it passes untouched.)
    let (code, out) = sh(
        &srv,
        &id,
        &format!(
            "curl -sS -o /dev/null -w '%{{http_code}} ' http://other.canary.test:{plain_port}/h -H \"X-Key: $CANARY_ENV\"; \
             curl -sS -o /dev/null -w '%{{http_code}}' http://other.canary.test:{plain_port}/b -d \"k=$(cat /.brig/egress/secrets/CANARY_FILE)\""
        ),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "403 403"), "{out}");
    assert!(
        plain_seen.lock().unwrap().is_empty(),
        "the other host got: {:?}",
        plain_seen.lock().unwrap()
    );

    // What the session holds, never values.
    let (st, creds) = srv
        .call("GET", &format!("/v1/sessions/{id}/credentials"), None)
        .await;
    assert_eq!(st, 200, "{creds}");
    let list = creds.as_array().unwrap();
    assert_eq!(list.len(), 3, "{creds}");
    assert!(list.iter().all(|c| c["state"] == "active"));
    let text = creds.to_string();
    assert!(
        !text.contains(ENV_CANARY) && !text.contains("brig-placeholder-"),
        "{text}"
    );

    // Revoked: refused within a second, nothing reaches the bound host.
    let (st, r) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/credentials/CANARY_ENV/revoke"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["state"], "revoked");
    let t0 = std::time::Instant::now();
    let before = o.seen.lock().unwrap().len();
    let (code, out) = sh(
        &srv,
        &id,
        &format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' https://api.canary.test:{port}/again -H \"Authorization: Bearer $CANARY_ENV\""
        ),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "403"), "{out}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(o.seen.lock().unwrap().len(), before);
    let (_, creds) = srv
        .call("GET", &format!("/v1/sessions/{id}/credentials"), None)
        .await;
    let state = |n: &str| {
        creds
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(
        (state("CANARY_ENV"), state("CANARY_FILE")),
        (json!("revoked"), json!("active")),
        "{creds}"
    );

    let (st, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(st, 200);
    let (_, creds) = srv
        .call("GET", &format!("/v1/sessions/{id}/credentials"), None)
        .await;
    assert!(
        creds
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "revoked"),
        "{creds}"
    );

    // The journal: grants, uses, the blocked exfiltration, revocations; no canary.
    let (_, evs) = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    let evs = evs.as_array().unwrap();
    let count = |a: &str| evs.iter().filter(|e| e["action"] == a).count();
    assert_eq!(count("credential.grant"), 3);
    assert_eq!(count("credential.revoke"), 3);
    assert!(count("credential.use") >= 2, "{evs:?}");
    assert!(
        evs.iter()
            .any(|e| e["rule"].as_str().is_some_and(|r| r.starts_with("secret:"))),
        "no blocked exfiltration event: {:?}",
        evs.iter()
            .filter(|e| e["action"].as_str().unwrap_or("").starts_with("net."))
            .collect::<Vec<_>>()
    );
    let (_, all) = srv.call("GET", "/v1/journal?limit=10000", None).await;
    let all = all.to_string();
    for c in [ENV_CANARY, FILE_CANARY, VAULT_CANARY] {
        assert!(!all.contains(c), "{c} is in the journal");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_cannot_be_fetched_stops_the_session_cleanly() {
    require_root!();
    let o = origin();
    let secrets_dir = tempfile::tempdir().unwrap();
    let sd = secrets_dir.path().to_path_buf();
    // The env variable is not set and the file does not exist.
    let srv = Srv::start_with(|cfg| configure(cfg, &o, 9, 9, &sd, "BRIG_E2E_UNSET_CANARY")).await;
    let (st, e) = srv
        .call("POST", "/v1/sessions", Some(json!({"task": "SEC-2"})))
        .await;
    assert!(st >= 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("CANARY_"), "names the grant: {msg}");
    let (_, list) = srv.call("GET", "/v1/sessions?all=true", None).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["state"], "failed", "{list:?}");
    let id = list[0]["id"].as_str().unwrap();
    srv.assert_gone(id);
    let v: Value = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await
        .1;
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "credential.grant" && e["outcome"] == "failure"));
    srv.stop().await;
}

const AWS_CANARY: &str = "canary-aws-ssm-4d1f8e2b7c90a635";
const AWS_SM_CANARY: &str = "canary-aws-sm-9e4b2c7a1d05f368";
const GCP_CANARY: &str = "canary-gcp-sm-6b3e0a9d2f71c84e";
const AZ_CANARY: &str = "canary-azure-kv-1f7c5b3e9a20d46b";

/// CRC-32C (Castagnoli), as GCP's `payload.dataCrc32c`.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One loopback server speaking the three clouds' secret APIs as far as
/// brig's sources use them: AWS SSM GetParameter (a SigV4-signed JSON 1.1
/// call), GCP's OAuth token endpoint (JWT bearer grant) and Secret
/// Manager `:access`, Azure AD's client-credentials token endpoint and Key
/// Vault's secret GET. Each answers its canary only to a request that
/// carries the credential it expects.
fn fake_clouds() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        use base64::Engine as _;
        for mut stream in listener.incoming().flatten() {
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            // Read the head, then as much body as Content-Length says.
            loop {
                let m = stream.read(&mut buf[n..]).unwrap_or(0);
                if m == 0 {
                    break;
                }
                n += m;
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if n >= h + 4 + len {
                        break;
                    }
                }
            }
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s2.lock().unwrap().push(req.clone());
            let lower = req.to_ascii_lowercase();
            let first = req.lines().next().unwrap_or("").to_string();
            let (status, body) = if first.starts_with("POST / ")
                && lower.contains("x-amz-target: amazonssm.getparameter")
                && lower.contains("authorization: aws4-hmac-sha256 credential=akidbrige2e")
            {
                ("200 OK", json!({"Parameter": {"Name": "/brig/canary", "Type": "SecureString", "Value": AWS_CANARY, "Version": 1}}).to_string())
            } else if first.starts_with("POST / ")
                && lower.contains("x-amz-target: secretsmanager.getsecretvalue")
                && lower.contains("authorization: aws4-hmac-sha256 credential=akidbrige2e")
                && req.contains("\"SecretId\":\"prod/db\"")
            {
                ("200 OK", json!({"ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf",
                    "Name": "prod/db", "SecretString": json!({"user": "app", "password": AWS_SM_CANARY}).to_string(),
                    "VersionId": "v1", "VersionStages": ["AWSCURRENT"]}).to_string())
            } else if first.starts_with("POST /token ")
                && req.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
            {
                ("200 OK", json!({"access_token": "ya29.brig-e2e", "expires_in": 3600, "token_type": "Bearer"}).to_string())
            } else if first
                .starts_with("GET /v1/projects/brig-e2e/secrets/canary/versions/latest:access ")
                && lower.contains("authorization: bearer ya29.brig-e2e")
            {
                let data = base64::engine::general_purpose::STANDARD.encode(GCP_CANARY);
                ("200 OK", json!({"name": "projects/brig-e2e/secrets/canary/versions/1",
                    "payload": {"data": data, "dataCrc32c": crc32c(GCP_CANARY.as_bytes()).to_string()}}).to_string())
            } else if first.starts_with("POST /tenant-e2e/oauth2/v2.0/token ")
                && req.contains("client_secret=az-e2e-secret")
            {
                ("200 OK", json!({"access_token": "az.brig-e2e", "expires_in": 3600, "token_type": "Bearer"}).to_string())
            } else if first.starts_with("GET /secrets/canary?api-version=7.4 ")
                && lower.contains("authorization: bearer az.brig-e2e")
            {
                ("200 OK", json!({"value": AZ_CANARY, "id": format!("http://127.0.0.1:{port}/secrets/canary/v1"),
                    "attributes": {"enabled": true}}).to_string())
            } else {
                ("403 Forbidden", json!({"error": "denied"}).to_string())
            };
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (port, seen)
}

/// The cloud sources end to end (issue 6): canaries from AWS SSM, GCP
/// Secret Manager and Azure Key Vault (local servers speaking their APIs)
/// reach only their bound host; the sandbox, the journal and other hosts
/// never see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_source_canaries_reach_only_their_bound_host() {
    require_root!();
    let o = origin();
    let (plain_port, plain_seen) = plain_origin();
    let (clouds, cloud_seen) = fake_clouds();
    let keys = tempfile::tempdir().unwrap();
    let sa = {
        use std::os::unix::fs::PermissionsExt;
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let f = keys.path().join("sa.json");
        std::fs::write(
            &f,
            json!({"type": "service_account", "project_id": "brig-e2e", "private_key_id": "k1",
                "private_key": pem, "client_email": "brig@brig-e2e.iam.gserviceaccount.com",
                "token_uri": format!("http://127.0.0.1:{clouds}/token")})
            .to_string(),
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    };
    std::env::set_var("BRIG_E2E_AKID", "AKIDBRIGE2E");
    std::env::set_var("BRIG_E2E_AWS_SECRET", "brig-e2e-aws-secret-key");
    std::env::set_var("BRIG_E2E_AZ_SECRET", "az-e2e-secret");
    let srv = Srv::start_with(|cfg| {
        configure(cfg, &o, plain_port, 1, keys.path(), "UNUSED");
        cfg.secrets = toml::from_str(&format!(
            r#"
[sources.ssm]
kind = "aws_ssm"
region = "eu-west-1"
endpoint = "http://127.0.0.1:{clouds}"
http = {{ allow_http = true }}
credentials = {{ access_key_id = {{ env = "BRIG_E2E_AKID" }}, secret_access_key = {{ env = "BRIG_E2E_AWS_SECRET" }} }}
[sources.sm]
kind = "aws_secrets_manager"
region = "eu-west-1"
endpoint = "http://127.0.0.1:{clouds}"
http = {{ allow_http = true }}
credentials = {{ access_key_id = {{ env = "BRIG_E2E_AKID" }}, secret_access_key = {{ env = "BRIG_E2E_AWS_SECRET" }} }}
[sources.gcp]
kind = "gcp_secret_manager"
credentials_file = {sa:?}
endpoint = "http://127.0.0.1:{clouds}"
http = {{ allow_http = true }}
[sources.azure]
kind = "azure_key_vault"
vault_url = "http://127.0.0.1:{clouds}"
tenant_id = "tenant-e2e"
client_id = "client-e2e"
client_secret = {{ env = "BRIG_E2E_AZ_SECRET" }}
authority = "http://127.0.0.1:{clouds}"
http = {{ allow_http = true }}
"#
        ))
        .unwrap();
        // Cloud credentials in a pr session: the deployment's own profile
        // "cloud-ci" (pr plus one permit) says they may be used.
        std::fs::write(
            keys.path().join("cloud-ci.cedar"),
            "@id(\"cloud-ci.secret\")\n@reason(\"CI sessions use their cloud read credentials.\")\n\
             permit (principal, action == Brig::Action::\"secret.use\", resource)\n\
             when { resource.scope like \"cloud:*\" };\n",
        )
        .unwrap();
        cfg.policy.profiles.insert(
            "cloud-ci".into(),
            brig_policy::ProfileConfig {
                template: Some("pr".into()),
                extra: vec![keys.path().join("cloud-ci.cedar")],
            },
        );
        cfg.profiles.get_mut("default").unwrap().policy = "cloud-ci".into();
        cfg.profiles.get_mut("default").unwrap().secrets = toml::from_str(
            r#"
[CANARY_AWS]
source = "ssm"
key = "/brig/canary"
scope = "cloud:aws"
hosts = ["api.canary.test"]
[CANARY_SM]
source = "sm"
key = "prod/db#password"
scope = "cloud:aws"
hosts = ["api.canary.test"]
[CANARY_GCP]
source = "gcp"
key = "canary"
scope = "cloud:gcp"
hosts = ["api.canary.test"]
[CANARY_AZ]
source = "azure"
key = "canary"
scope = "cloud:azure"
hosts = ["api.canary.test"]
"#,
        )
        .unwrap();
    })
    .await;
    let s = srv.create(json!({"task": "SEC-9"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let canaries = [AWS_CANARY, AWS_SM_CANARY, GCP_CANARY, AZ_CANARY];
    // Each source was really asked (with its own credential).
    assert!(
        cloud_seen.lock().unwrap().len() >= 6,
        "{:?}",
        cloud_seen.lock().unwrap()
    );

    // Inside: placeholders only, in no process's environment a canary.
    let (code, out) = sh(
        &srv,
        &id,
        "echo A=$CANARY_AWS S=$CANARY_SM G=$CANARY_GCP Z=$CANARY_AZ; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c -e 'canary-aws-ssm-4d1f[8]e2b7c90a635' -e 'canary-aws-sm-9e4b[2]c7a1d05f368' -e 'canary-gcp-sm-6b3e[0]a9d2f71c84e' -e 'canary-azure-kv-1f7c[5]b3e9a20d46b' || true",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("brig-placeholder-").count(), 4, "{out}");
    assert!(
        out.trim_end().ends_with('0'),
        "a canary is in some /proc: {out}"
    );
    assert!(canaries.iter().all(|c| !out.contains(c)), "{out}");

    // The bound host gets the real values.
    let port = o.port;
    let (code, out) = sh(
        &srv,
        &id,
        &format!("curl -sS -f https://api.canary.test:{port}/cloud -H \"X-A: $CANARY_AWS\" -H \"X-S: $CANARY_SM\" -H \"X-G: $CANARY_GCP\" -H \"X-Z: $CANARY_AZ\""),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let seen = o.seen.lock().unwrap().clone();
    let req = seen
        .iter()
        .find(|r| r.contains("GET /cloud"))
        .cloned()
        .unwrap_or_default();
    for c in canaries {
        assert!(req.contains(c), "{c} did not reach the bound host: {req}");
    }
    // Another host: refused before anything leaves.
    let (_, out) = sh(
        &srv,
        &id,
        &format!("curl -sS -o /dev/null -w '%{{http_code}}' http://other.canary.test:{plain_port}/x -H \"X-A: $CANARY_GCP\""),
    )
    .await;
    assert_eq!(out, "403");
    assert!(plain_seen.lock().unwrap().is_empty());
    // The journal never holds one.
    let (_, all) = srv.call("GET", "/v1/journal?limit=10000", None).await;
    let all = all.to_string();
    for c in canaries {
        assert!(!all.contains(c), "{c} is in the journal");
    }
    srv.stop().await;
}

const CLOUD_CANARY: &str = "canary-cloud-4e8b1d90a7c35f26";

/// Cedar's `secret.use` at each injection: a pr session's cloud credential
/// is never swapped in (default deny); a privileged session's waits for a
/// cloud-approver, then goes. Both journaled; the canary reaches the bound
/// host only once approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn using_a_cloud_credential_is_policy_and_needs_an_approver() {
    require_root!();
    let o = origin();
    let secrets_dir = tempfile::tempdir().unwrap();
    std::fs::write(secrets_dir.path().join("canary.txt"), "unused\n").unwrap();
    std::env::set_var("BRIG_E2E_CLOUD_CANARY", CLOUD_CANARY);
    std::env::set_var("BRIG_E2E_VAULT_TOKEN", VAULT_TOKEN);
    let (vault_port, _) = fake_vault();
    let sd = secrets_dir.path().to_path_buf();
    let (plain_port, _) = plain_origin();
    let srv = Srv::start_with(|cfg| {
        configure(cfg, &o, plain_port, vault_port, &sd, "BRIG_E2E_CLOUD_CANARY");
        let p = cfg.profiles.get_mut("default").unwrap();
        p.secrets = toml::from_str(
            "[CANARY_CLOUD]\nsource = \"env\"\nkey = \"BRIG_E2E_CLOUD_CANARY\"\nscope = \"cloud:test\"\nhosts = [\"api.canary.test\"]\n",
        )
        .unwrap();
        let mut ops = p.clone();
        ops.policy = "privileged".into();
        cfg.profiles.insert("ops".into(), ops);
    })
    .await;
    let port = o.port;
    let curl = format!(
        "curl -sS -o /tmp/body -w '%{{http_code}}' https://api.canary.test:{port}/cloud -H \"Authorization: Bearer $CANARY_CLOUD\"; echo; cat /tmp/body"
    );
    let reached = |o: &Origin| {
        o.seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(CLOUD_CANARY))
    };

    // pr: refused, by policy, before anything leaves.
    let pr = srv.create(json!({"task": "SEC-9", "human": "ada"})).await;
    let pr = pr["id"].as_str().unwrap().to_string();
    let (code, out) = sh(&srv, &pr, &curl).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("403"), "{out}");
    assert!(out.contains("default-deny"), "{out}");
    assert!(!reached(&o));

    // privileged: asks a cloud-approver; the agent is told, and retries.
    let ops = srv
        .create(json!({"task": "SEC-9", "profile": "ops", "human": "ada"}))
        .await;
    let ops = ops["id"].as_str().unwrap().to_string();
    let (code, out) = sh(&srv, &ops, &curl).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("403"), "{out}");
    assert!(
        out.contains("privileged.secret-cloud") && out.contains("cloud-approver"),
        "{out}"
    );
    assert!(!reached(&o));
    let mut req = Value::Null;
    for _ in 0..200 {
        let (_, v) = srv.call("GET", "/v1/approvals?state=pending", None).await;
        if let Some(r) = v.as_array().and_then(|a| a.first()) {
            req = r.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(req["action"], "secret.use", "{req}");
    assert_eq!(req["resource"], "CANARY_CLOUD", "{req}");
    let apr = req["id"].as_str().unwrap().to_string();
    srv.approve_as("eve", "cloud-approver", "ada", &apr).await;
    let mut out = String::new();
    for _ in 0..50 {
        out = sh(&srv, &ops, &curl).await.1;
        if out.starts_with("200") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(out.starts_with("200"), "{out}");
    assert!(reached(&o), "the approved credential reached its host");

    // Every refusal is journaled with its policy; the canary never is.
    let (_, all) = srv.call("GET", "/v1/journal?limit=10000", None).await;
    let evs = all.as_array().unwrap();
    let refused = |session: &str, rule: &str| {
        evs.iter().any(|e| {
            e["action"] == "policy.decision"
                && e["session"] == session
                && e["rule"] == rule
                && e["details"]["action"] == "secret.use"
        })
    };
    assert!(refused(&pr, "default-deny"), "{all}");
    assert!(refused(&ops, "privileged.secret-cloud"), "{all}");
    assert!(!all.to_string().contains(CLOUD_CANARY));
    srv.stop().await;
}
