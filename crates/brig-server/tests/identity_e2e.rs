//! The API's authentication end to end (issue 7): a real `brig serve`
//! control plane with `[tcp]` and `[identity.oidc]` pointing at a real
//! OpenID provider on loopback (brig-identity's TestIdp: discovery, JWKS,
//! RS256/ES256 JWTs signed by OpenSSL), called over real TCP and unix
//! socket connections.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use brig_identity::testing::{BadToken, TestIdp, TestUser};
use brig_identity::Alg;
use brig_server::ServerConfig;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: Value,
    raw: String,
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let bytes = body.map(|v| v.to_string()).unwrap_or_default();
    let resp = send
        .send_request(b.body(Full::new(Bytes::from(bytes))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let raw = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Answer {
        status,
        www_authenticate,
        body,
        raw,
    }
}

struct Server {
    dir: tempfile::TempDir,
    srv: brig_server::RunningServer,
    addr: std::net::SocketAddr,
}

/// `brig serve` with TCP on 127.0.0.1 and the IdP's `[identity.oidc]`
/// (no static token).
async fn server(idp: &TestIdp, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\nsocket = {:?}\n[tcp]\nlisten = \"127.0.0.1:0\"\n\
         [identity.oidc]\nissuer = {:?}\nclient_id = {:?}\nca_file = {:?}\n{extra}",
        dir.path(),
        dir.path().join("brig.sock"),
        idp.issuer(),
        idp.client_id(),
        idp.ca_file(),
    );
    let cfg = ServerConfig::parse(&text, "identity-test.toml").unwrap();
    let srv = brig_server::start(cfg).await.unwrap();
    let addr = srv.tcp_addr().unwrap();
    Server { dir, srv, addr }
}

impl Server {
    fn events(&self, action: &str) -> Vec<brig_core::event::Event> {
        self.srv
            .manager()
            .db()
            .store()
            .events(None)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == action)
            .collect()
    }
    async fn stop(self) {
        self.srv.shutdown().await.unwrap();
        drop(self.dir);
    }
}

fn reason_of(a: &Answer) -> String {
    let h = a.www_authenticate.clone().unwrap_or_default();
    h.split("error_description=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_from_the_idp_are_accepted_and_every_bad_one_is_refused_and_journaled() {
    let idp = TestIdp::start().await;
    let s = server(&idp, "").await;
    let alice = TestUser::new("alice").with_groups(&["team-a"]);
    let want_id = format!("oidc:{}#alice", idp.issuer());

    for alg in [Alg::RS256, Alg::ES256] {
        let tok = idp.id_token_alg(&alice, alg);
        let a = call(s.addr, "GET", "/v1/whoami", Some(&tok), None).await;
        assert_eq!(a.status, 200, "{alg:?}: {}", a.raw);
        assert_eq!(
            a.body,
            json!({"id": want_id, "name": "alice@example.test", "groups": ["team-a"], "roles": [], "via": "oidc"}),
            "{alg:?}"
        );
    }

    // Not even a credential: 401 without an error code (RFC 6750 3.1).
    let a = call(s.addr, "GET", "/v1/whoami", None, None).await;
    assert_eq!(a.status, 401, "{}", a.raw);
    assert_eq!(a.www_authenticate.as_deref(), Some("Bearer realm=\"brig\""));
    assert_eq!(a.body["error"]["kind"], "unauthorized");
    // /healthz and the login hint need none.
    assert_eq!(
        call(s.addr, "GET", "/healthz", None, None).await.status,
        200
    );
    let h = call(s.addr, "GET", "/v1/identity", None, None).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["oidc"]["issuer"], idp.issuer());
    assert_eq!(h.body["oidc"]["client_id"], idp.client_id());

    let cases = [
        (BadToken::Forged, "bad_signature"),
        (BadToken::TamperedPayload, "bad_signature"),
        (BadToken::Expired, "expired"),
        (BadToken::WrongAudience, "wrong_audience"),
        (BadToken::MultipleAudiencesNoAzp, "wrong_azp"),
        (BadToken::WrongIssuer, "wrong_issuer"),
        (BadToken::NotYetValid, "not_yet_valid"),
        (BadToken::AlgNone, "alg_none"),
        (BadToken::KeyConfusionHs256, "alg_symmetric"),
        (BadToken::KidWrongKeyType, "key_mismatch"),
        (BadToken::UnknownKey, "unknown_kid"),
    ];
    for (kind, reason) in cases {
        let tok = idp.bad_token(kind, &alice);
        let a = call(s.addr, "GET", "/v1/sessions", Some(&tok), None).await;
        assert_eq!(a.status, 401, "{kind:?}: {}", a.raw);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(
                format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"").as_str()
            ),
            "{kind:?}"
        );
        assert_eq!(a.body["error"]["kind"], "unauthorized", "{kind:?}");
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(reason),
            "{kind:?}: {}",
            a.raw
        );
        // Never echoed: not the token, not its signature.
        let sig = tok.rsplit('.').next().unwrap();
        assert!(!a.raw.contains(&tok), "{kind:?}");
        assert!(sig.is_empty() || !a.raw.contains(sig), "{kind:?}");
    }

    // Each refusal is in the journal, with its reason and never the token.
    let failures = s.events("auth.failure");
    let reasons: Vec<&str> = failures
        .iter()
        .map(|e| e.details["reason"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = vec!["missing"];
    want.extend(cases.iter().map(|c| c.1));
    assert_eq!(reasons, want);
    for e in &failures {
        assert_eq!(e.outcome, brig_core::event::Outcome::Denied);
        assert!(e.details["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/v1/")));
        assert_eq!(e.details["remote"], "127.0.0.1");
    }
    let journal = serde_json::to_string(&failures).unwrap();
    for (kind, _) in cases {
        let tok = idp.bad_token(kind, &alice);
        let payload = tok.split('.').nth(1).unwrap();
        assert!(!journal.contains(payload), "{kind:?} in the journal");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_is_503_not_401() {
    let idp = TestIdp::start().await;
    let s = server(&idp, "").await;
    let tok = idp.id_token(&TestUser::new("alice"));
    drop(idp);
    let a = call(s.addr, "GET", "/v1/whoami", Some(&tok), None).await;
    assert_eq!(a.status, 503, "{}", a.raw);
    assert_eq!(a.body["error"]["kind"], "unavailable");
    assert!(a.www_authenticate.is_none());
    assert_eq!(
        s.events("auth.failure")[0].details["reason"],
        "keys_unavailable"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_issue_use_list_revoke_expire_and_are_never_stored() {
    let idp = TestIdp::start().await;
    let s = server(
        &idp,
        "[identity.tokens]\nmax_ttl = \"7d\"\ndefault_ttl = \"1d\"\n",
    )
    .await;
    let alice = TestUser::new("alice").with_groups(&["team-a"]);
    let alice_id = format!("oidc:{}#alice", idp.issuer());
    let id_tok = idp.id_token(&alice);
    let bob_tok = idp.id_token(&TestUser::new("bob"));

    let a = call(
        s.addr,
        "POST",
        "/v1/tokens",
        Some(&id_tok),
        Some(json!({"name": "ci-nightly", "ttl": "2h"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.raw);
    let pat = a.body["token"].as_str().unwrap().to_string();
    let tid = a.body["id"].as_str().unwrap().to_string();
    assert!(regex_like_token(&pat), "{pat}");
    assert_eq!(a.body["principal"], alice_id);

    // Used: the owner, via token, with the owner's groups at issue time.
    let w = call(s.addr, "GET", "/v1/whoami", Some(&pat), None).await;
    assert_eq!(w.status, 200, "{}", w.raw);
    assert_eq!(
        (&w.body["id"], &w.body["via"], &w.body["groups"]),
        (&json!(alice_id), &json!("token"), &json!(["team-a"]))
    );
    // A token cannot mint tokens.
    let a = call(
        s.addr,
        "POST",
        "/v1/tokens",
        Some(&pat),
        Some(json!({"name": "more"})),
    )
    .await;
    assert_eq!(
        (a.status, a.body["error"]["kind"].clone()),
        (403, json!("denied"))
    );
    // Over max_ttl, a bad name: refused.
    for body in [json!({"name": "x", "ttl": "30d"}), json!({"name": "a b"})] {
        let a = call(s.addr, "POST", "/v1/tokens", Some(&id_tok), Some(body)).await;
        assert_eq!(a.status, 400, "{}", a.raw);
    }

    // Listed to its owner, without hash or token; not to bob.
    let l = call(s.addr, "GET", "/v1/tokens", Some(&id_tok), None).await;
    assert_eq!(l.status, 200);
    let list = l.body.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (&list[0]["id"], &list[0]["state"], &list[0]["name"]),
        (&json!(tid), &json!("active"), &json!("ci-nightly"))
    );
    assert!(list[0].get("hash").is_none() && !l.raw.contains(&pat));
    assert!(
        list[0]["last_used"].is_string(),
        "use is recorded: {}",
        l.raw
    );
    let l = call(s.addr, "GET", "/v1/tokens", Some(&bob_tok), None).await;
    assert_eq!(l.body, json!([]));
    // Bob cannot revoke it (and does not learn it exists).
    let r = call(
        s.addr,
        "DELETE",
        &format!("/v1/tokens/{tid}"),
        Some(&bob_tok),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.raw);

    // Revoked by its owner: refused from then on.
    let r = call(
        s.addr,
        "DELETE",
        &format!("/v1/tokens/{tid}"),
        Some(&id_tok),
        None,
    )
    .await;
    assert_eq!((r.status, r.body["state"].clone()), (200, json!("revoked")));
    let w = call(s.addr, "GET", "/v1/whoami", Some(&pat), None).await;
    assert_eq!(w.status, 401);
    assert_eq!(reason_of(&w), "revoked");

    // Expired: refused.
    let a = call(
        s.addr,
        "POST",
        "/v1/tokens",
        Some(&id_tok),
        Some(json!({"name": "short", "ttl": "1s"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.raw);
    let short = a.body["token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let w = call(s.addr, "GET", "/v1/whoami", Some(&short), None).await;
    assert_eq!((w.status, reason_of(&w)), (401, "expired".to_string()));

    // Unknown and malformed tokens.
    let unknown = format!("brig_pat_{}", "A".repeat(43));
    let w = call(s.addr, "GET", "/v1/whoami", Some(&unknown), None).await;
    assert_eq!(
        (w.status, reason_of(&w)),
        (401, "unknown_token".to_string())
    );
    let w = call(s.addr, "GET", "/v1/whoami", Some("brig_pat_short"), None).await;
    assert_eq!((w.status, reason_of(&w)), (401, "malformed".to_string()));

    // Journaled: issue and revoke, with the token id, never the token.
    let issued = s.events("token.issue");
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0].details["pat_id"], tid);
    assert_eq!(issued[0].human.as_deref(), Some(alice_id.as_str()));
    assert_eq!(s.events("token.revoke").len(), 1);

    // A leaked token is masked wherever brig records it.
    let mut ev = brig_core::event::Event::new("exec.start", brig_core::event::Outcome::Info)
        .details(json!({"argv": ["curl", "-H", format!("Authorization: Bearer {pat}")]}));
    ev.session = None;
    s.srv
        .manager()
        .db()
        .write(move |tx| tx.append_event(&ev))
        .await
        .unwrap();

    // The plaintext is nowhere in the database files; the hash is.
    let db = s.dir.path().join("brig.db");
    let hash = brig_identity::TokenHash::of(&pat).to_hex();
    for f in std::fs::read_dir(s.dir.path()).unwrap() {
        let p = f.unwrap().path();
        if p.to_string_lossy().starts_with(&*db.to_string_lossy()) {
            let bytes = std::fs::read(&p).unwrap();
            for t in [&pat, &short] {
                assert!(
                    !contains(&bytes, t.as_bytes()),
                    "{} holds a token in plaintext",
                    p.display()
                );
            }
        }
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored: String = conn
        .query_row("SELECT hash FROM api_tokens WHERE id = ?1", [&tid], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, hash);
    s.stop().await;
}

fn regex_like_token(t: &str) -> bool {
    t.len() == 9 + 43
        && t.starts_with("brig_pat_")
        && t[9..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_caller_cannot_create_a_session_for_someone_else() {
    let idp = TestIdp::start().await;
    let s = server(&idp, "").await;
    let tok = idp.id_token(&TestUser::new("alice"));
    let a = call(
        s.addr,
        "POST",
        "/v1/sessions",
        Some(&tok),
        Some(json!({"task": "T-1", "human": "local:root"})),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.raw);
    assert_eq!(a.body["error"]["kind"], "denied");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("local:root"),
        "{}",
        a.raw
    );
    assert!(s
        .srv
        .manager()
        .db()
        .store()
        .list_sessions(true)
        .unwrap()
        .is_empty());
    s.stop().await;
}

/// A child that connects as `uid` (curl over the socket): status and body.
fn curl_as(uid: u32, socket: &Path, path: &str) -> (u16, Value) {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .uid(uid)
        .gid(uid)
        .output()
        .expect("curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_peers_are_named_by_the_kernel() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (uid 0 and another uid)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::embedded(dir.path());
    let srv = brig_server::start(cfg).await.unwrap();
    let sock = srv.socket_path().to_path_buf();
    let (s, v) = brig_server::client::request(&sock, "GET", "/v1/whoami", None)
        .await
        .unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"id": "local:root", "name": "root", "groups": [], "roles": ["admin"], "via": "local"})
    );
    // Root acts for others on the socket, as `sudo brig` does.
    // Another uid (nobody: not in a users table, not the server's owner)
    // is refused once it can reach the socket at all.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (s, v) = curl_as(65534, &sock, "/v1/whoami");
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534 is not a brig user"),
        "{v}"
    );
    let failures: Vec<_> = srv
        .manager()
        .db()
        .store()
        .events(None)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "auth.failure")
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].details["reason"], "unknown_local_user");
    assert_eq!(failures[0].details["via"], "local");
    srv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_journals_a_bounded_number() {
    let idp = TestIdp::start().await;
    let s = server(&idp, "").await;
    let bad = format!("brig_pat_{}", "B".repeat(43));
    for _ in 0..200 {
        let a = call(s.addr, "GET", "/v1/sessions", Some(&bad), None).await;
        assert_eq!(a.status, 401);
    }
    let n = s.events("auth.failure").len();
    // The burst, and one a second while the flood lasted.
    assert!(
        (30..=45).contains(&n),
        "{n} auth.failure events for 200 refusals"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call(s.addr, "GET", "/v1/sessions", Some(&bad), None).await;
    // Nothing is lost silently: the next event counts what was dropped.
    let evs = s.events("auth.failure");
    let dropped: u64 = evs
        .iter()
        .map(|e| e.details["suppressed_before"].as_u64().unwrap())
        .sum();
    assert_eq!(evs.len() as u64 + dropped, 201);
    s.stop().await;
}

/// A request with any headers; the status, the response's headers and body.
async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

fn header(h: &hyper::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_with_the_authorization_code_and_pkce() {
    let idp = TestIdp::start().await;
    let s = server(
        &idp,
        "redirect_uri = \"http://127.0.0.1/v1/auth/callback\"\nweb_session_ttl = \"1h\"\n",
    )
    .await;
    let erin = TestUser::new("erin").with_groups(&["team-e"]);

    // Off-site return paths are refused before anything starts.
    for bad in ["//evil.example/", "https%3A%2F%2Fevil.example%2F"] {
        let (st, _, body) = raw(
            s.addr,
            "GET",
            &format!("/v1/auth/login?return_to={bad}"),
            &[],
        )
        .await;
        assert_eq!(st, 400, "{bad}: {body}");
    }

    // The login: to the IdP with an S256 challenge, back with a code.
    let (st, h, body) = raw(s.addr, "GET", "/v1/auth/login?return_to=/ui/sessions", &[]).await;
    assert_eq!(st, 302, "{body}");
    let to_idp = header(&h, "location");
    assert!(
        to_idp.starts_with(&format!("{}/authorize?", idp.issuer())),
        "{to_idp}"
    );
    assert!(
        to_idp.contains("code_challenge_method=S256") && to_idp.contains("nonce="),
        "{to_idp}"
    );
    assert!(
        !to_idp.contains("code_verifier"),
        "the verifier stays on the server"
    );
    let back = idp.authorize(&to_idp, &erin).await.unwrap();
    let callback = format!("/v1/auth/callback?code={}&state={}", back.code, back.state);

    // A forged state finishes nothing.
    let (st, _, body) = raw(
        s.addr,
        "GET",
        &format!("/v1/auth/callback?code={}&state=forged", back.code),
        &[],
    )
    .await;
    assert_eq!(st, 400, "{body}");

    let (st, h, body) = raw(s.addr, "GET", &callback, &[]).await;
    assert_eq!(st, 302, "{body}");
    assert_eq!(header(&h, "location"), "/ui/sessions");
    let set = header(&h, "set-cookie");
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(set.contains(attr), "{attr} missing: {set}");
    }
    let token = set
        .strip_prefix("brig_session=")
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    assert!(token.starts_with("brig_pat_"), "{set}");
    let cookie = format!("brig_session={token}");

    // The redirect works once.
    let (st, _, body) = raw(s.addr, "GET", &callback, &[]).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("no login in progress"), "{body}");

    // The cookie is the human.
    let (st, _, body) = raw(s.addr, "GET", "/v1/whoami", &[("cookie", &cookie)]).await;
    assert_eq!(st, 200, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert!(me["id"].as_str().unwrap().ends_with("#erin"), "{me}");
    assert_eq!(me["groups"], json!(["team-e"]), "{me}");

    // A change made with the cookie needs the CSRF header.
    let (st, _, body) = raw(s.addr, "POST", "/v1/auth/logout", &[("cookie", &cookie)]).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("X-Brig-Csrf"), "{body}");
    let (st, h, body) = raw(
        s.addr,
        "POST",
        "/v1/auth/logout",
        &[("cookie", &cookie), ("x-brig-csrf", "1")],
    )
    .await;
    assert_eq!(st, 204, "{body}");
    assert!(header(&h, "set-cookie").contains("Max-Age=0"));
    // Logged out: the cookie no longer gets in.
    let (st, _, _) = raw(s.addr, "GET", "/v1/whoami", &[("cookie", &cookie)]).await;
    assert_eq!(st, 401);

    // Journaled, without the token.
    let logins = s.events("auth.login");
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!(logins[0].human.as_deref(), Some("erin@example.test"));
    assert_eq!(s.events("auth.logout").len(), 1);
    let all = serde_json::to_string(&s.events("auth.login")).unwrap();
    assert!(!all.contains(&token));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_redirect_uri_there_is_no_browser_login() {
    let idp = TestIdp::start().await;
    let s = server(&idp, "").await;
    let (st, _, body) = raw(s.addr, "GET", "/v1/auth/login", &[]).await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("redirect_uri"), "{body}");
    s.stop().await;
}
