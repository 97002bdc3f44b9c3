//! API tests that need no sandbox: routing, errors, validation, auth,
//! OpenAPI, metrics, the socket. End-to-end tests with real sandboxes live
//! in crates/brig-cli/tests/server_*.rs.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use brig_core::session::{Limits, SessionInfo, SessionState};
use brig_core::SessionId;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::config::ServerConfig;
use crate::manager::Manager;

struct Fixture {
    _dir: tempfile::TempDir,
    mgr: Arc<Manager>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig::embedded(dir.path());
    let store = brig_store::Store::open(&cfg.db_path()).unwrap();
    Fixture {
        mgr: Arc::new(Manager::new(cfg, store)),
        _dir: dir,
    }
}

impl Fixture {
    /// The unix router, called as root over the socket would be.
    fn app(&self) -> axum::Router {
        api::router(
            AppState {
                mgr: self.mgr.clone(),
            },
            None,
        )
        .layer(axum::extract::connect_info::MockConnectInfo(
            crate::auth::UnixPeer {
                uid: Some(0),
                pid: None,
            },
        ))
    }
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(self.app(), method, path, body, None).await
    }
    /// A session the store knows but that has no sandbox.
    async fn insert(&self, state: SessionState) -> SessionId {
        let id = SessionId::generate();
        let info = SessionInfo {
            principal: id.principal(),
            id: id.clone(),
            human: "ada".into(),
            task: "T-1".parse().unwrap(),
            profile: "default".into(),
            runtime: "native".into(),
            image: "host".into(),
            image_digest: "sha256:00".into(),
            state,
            limits: Limits::default(),
            repo: None,
            created_at: brig_core::event::now_rfc3339(),
            started_at: None,
            ended_at: None,
            end_reason: (!state.is_live()).then(|| "killed by request".into()),
            layers: vec![],
            exec_count: 0,
            last_activity_at: None,
        };
        self.mgr
            .db()
            .run(move |s| s.insert_session(&info, "test"))
            .await
            .unwrap();
        id
    }
}

async fn call(
    app: axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(path);
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let req = b
        .body(match body {
            Some(v) => Body::from(serde_json::to_vec(&v).unwrap()),
            None => Body::empty(),
        })
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

/// An API error body of the given kind, with a message and usually a hint.
fn assert_error(status: StatusCode, body: &Value, want: StatusCode, kind: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["kind"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn health_and_version() {
    let f = fixture();
    let (s, v) = f.call("GET", "/healthz", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    let (s, v) = f.call("GET", "/v1/version", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn openapi_documents_every_route_and_only_those() {
    let doc: Value = serde_json::from_str(api::OPENAPI).expect("openapi.json parses");
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = api::routes().list;
    for (method, path) in &routes {
        let op = &doc["paths"][*path][*method];
        assert!(op.is_object(), "{method} {path} is not in openapi.json");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            assert!(
                routes.iter().any(|(m, p)| m == method && p == path),
                "openapi.json documents {method} {path}, which the router lacks"
            );
        }
    }
    // Every $ref points at something that exists.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        out.push(x.as_str().unwrap().to_string());
                    } else {
                        refs(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = vec![];
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let ptr = r.strip_prefix('#').expect("local refs only");
        assert!(doc.pointer(ptr).is_some(), "dangling $ref {r}");
    }
}

#[tokio::test]
async fn openapi_is_served() {
    let f = fixture();
    let (s, v) = f.call("GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["info"]["title"], "brig API");
}

#[tokio::test]
async fn unknown_and_malformed_sessions() {
    let f = fixture();
    let ghost = SessionId::generate();
    for (m, p, body) in [
        ("GET", format!("/v1/sessions/{ghost}"), None),
        ("GET", format!("/v1/sessions/{ghost}/events"), None),
        ("DELETE", format!("/v1/sessions/{ghost}"), None),
        ("POST", format!("/v1/sessions/{ghost}/kill"), None),
        (
            "POST",
            format!("/v1/sessions/{ghost}/exec"),
            Some(json!({"argv": ["true"]})),
        ),
    ] {
        let (s, v) = f.call(m, &p, body).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(ghost.as_str()));
    }
    let (s, v) = f.call("GET", "/v1/sessions/..%2F..%2Fetc", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(v["error"]["hint"].is_string());
    let (s, v) = f.call("GET", "/v1/nope", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = f.call("PUT", "/v1/sessions", None).await;
    assert_error(s, &v, StatusCode::METHOD_NOT_ALLOWED, "invalid_input");
}

#[tokio::test]
async fn ended_sessions_refuse_exec_and_destroy() {
    let f = fixture();
    let id = f.insert(SessionState::Destroyed).await;
    let (s, v) = f
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(json!({"argv": ["ls"]})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("destroyed"),
        "{v}"
    );
    let (s, v) = f.call("DELETE", &format!("/v1/sessions/{id}"), None).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    let (s, v) = f
        .call("POST", &format!("/v1/sessions/{id}/kill"), None)
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    // Still readable, with its events.
    let (s, v) = f.call("GET", &format!("/v1/sessions/{id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "destroyed");
    assert_eq!(v["principal"], format!("agent:{id}"));
    let (s, v) = f
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

#[tokio::test]
async fn listing_is_live_only_unless_all() {
    let f = fixture();
    let dead = f.insert(SessionState::Failed).await;
    let live = f.insert(SessionState::Running).await;
    let (_, v) = f.call("GET", "/v1/sessions", None).await;
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![live.as_str()]);
    let (_, v) = f.call("GET", "/v1/sessions?all=true", None).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == dead.as_str()));
    let (s, v) = f.call("GET", "/v1/sessions?all=maybe", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
}

#[tokio::test]
async fn bad_exec_requests_are_refused_before_anything_runs() {
    let f = fixture();
    let id = f.insert(SessionState::Destroyed).await;
    let path = format!("/v1/sessions/{id}/exec");
    let huge = vec!["x".repeat(1024); 300];
    let (s, v) = f.call("POST", &path, Some(json!({"argv": huge}))).await;
    assert_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded");
    let (s, v) = f.call("POST", &path, Some(json!({"argv": []}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, v) = f
        .call("POST", &path, Some(json!({"argv": ["ls"], "cwd": "rel"})))
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    let (s, v) = f.call("POST", &path, Some(json!({"argv": "ls"}))).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    // A body over the request limit is a limit error in the API's shape.
    let big = "y".repeat(api::BODY_LIMIT + 1);
    let (s, v) = f
        .call("POST", &path, Some(json!({"argv": ["cat"], "stdin": big})))
        .await;
    assert_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded");
    // Not JSON at all.
    let req = Request::builder()
        .method("POST")
        .uri(&path)
        .body(Body::from("argv=ls"))
        .unwrap();
    let resp = f.app().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("Content-Type"),
        "{v}"
    );
}

#[tokio::test]
async fn attach_needs_the_upgrade_headers() {
    let f = fixture();
    let id = f.insert(SessionState::Running).await;
    let (s, v) = f
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec/attach"),
            Some(json!({"argv": ["sh"]})),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_input");
    assert!(v["error"]["hint"].as_str().unwrap().contains("brig-exec/1"));
}

#[tokio::test]
async fn bad_creates_are_refused_and_leave_nothing() {
    let f = fixture();
    let repo = tempfile::tempdir().unwrap();
    let repo_s = repo.path().to_str().unwrap().to_string();
    let file = repo.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let cases = [
        (
            json!({"task": "has space"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "task",
        ),
        (
            json!({"task": "T-1", "memory": "1K"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "--memory",
        ),
        (
            json!({"task": "T-1", "cpus": 0.0}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "cpus",
        ),
        (
            json!({"task": "T-1", "pids": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "--pids",
        ),
        (
            json!({"task": "T-1", "idle": "soon"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "--idle",
        ),
        (
            json!({"task": "T-1", "profile": "nope"}),
            StatusCode::NOT_FOUND,
            "not_found",
            "profile",
        ),
        (
            json!({"task": "T-1", "runtime": "docker"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "docker",
        ),
        (
            json!({"task": "T-1", "runtime": "oci:/bin/sh"}),
            StatusCode::FORBIDDEN,
            "denied",
            "oci:/bin/sh",
        ),
        (
            json!({"task": "T-1", "repo": "/no/such/repo"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "does not exist",
        ),
        (
            json!({"task": "T-1", "repo": "relative/repo"}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "absolute",
        ),
        (
            json!({"task": "T-1", "repo": repo_s, "upload": file.to_str().unwrap()}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "--upload",
        ),
        (
            json!({"repo": repo_s}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "task",
        ),
    ];
    for (body, status, kind, needle) in cases {
        let (s, v) = f.call("POST", "/v1/sessions", Some(body.clone())).await;
        assert_error(s, &v, status, kind);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body} → {v}"
        );
    }
    // Refused before anything was recorded or built.
    let (_, v) = f.call("GET", "/v1/sessions?all=true", None).await;
    assert_eq!(v, json!([]));
    assert!(!f.mgr.paths().data_dir.join("sessions").exists());
}

#[tokio::test]
async fn kill_all_with_nothing_live() {
    let f = fixture();
    let (s, v) = f.call("POST", "/v1/kill-all", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["killed"], json!([]));
    assert!(v["duration_ms"].is_u64());
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let f = fixture();
    f.insert(SessionState::Running).await;
    f.insert(SessionState::Failed).await;
    let resp = f
        .app()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("brig_sessions{state=\"running\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("brig_sessions{state=\"failed\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE brig_session_spinup_seconds histogram"));
    assert!(text.contains("brig_kill_switch_seconds_count 0"));
}

#[tokio::test]
async fn tcp_router_needs_the_bearer_token() {
    let f = fixture();
    let secret = "s3cret-token-0123456789";
    let app = api::router(
        AppState { mgr: f.mgr.clone() },
        Some(Arc::new(Token::new(secret).unwrap())),
    );
    let (s, v) = call(app.clone(), "GET", "/v1/sessions", None, None).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, v) = call(
        app.clone(),
        "GET",
        "/v1/sessions",
        None,
        Some("Bearer wrong-token-0000000"),
    )
    .await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        !v.to_string().contains("wrong-token"),
        "the candidate is never echoed"
    );
    let (s, _) = call(
        app.clone(),
        "GET",
        "/v1/sessions",
        None,
        Some(&format!("Basic {secret}")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(
        app.clone(),
        "GET",
        "/v1/sessions",
        None,
        Some(&format!("Bearer {secret}")),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, _) = call(app.clone(), "POST", "/v1/kill-all", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(app, "GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn socket_is_private_exclusive_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::embedded(dir.path());
    cfg.socket = dir.path().join("run/brig.sock");
    // A stale socket (nothing listening) is taken over.
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&cfg.socket).unwrap());
    assert!(cfg.socket.exists());

    let srv = crate::start_inner(cfg.clone(), false).await.unwrap();
    let mode = std::fs::metadata(srv.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (s, v) = crate::client::request(srv.socket_path(), "GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!((s, v), (200, json!({"status": "ok"})));
    let e: brig_core::Error = crate::client::call::<Value>(
        srv.socket_path(),
        "GET",
        &format!("/v1/sessions/{}", SessionId::generate()),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, brig_core::ErrorKind::NotFound);

    // A second server on the same socket is refused; the first keeps working.
    let e = crate::start_inner(cfg.clone(), false)
        .await
        .err()
        .expect("second start refused");
    assert_eq!(e.kind, brig_core::ErrorKind::Conflict);
    assert!(e.message.contains("already listening"), "{e}");
    let (s, _) = crate::client::request(srv.socket_path(), "GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!(s, 200);

    srv.shutdown().await.unwrap();
    assert!(!cfg.socket.exists());
    let e = crate::client::request(&cfg.socket, "GET", "/healthz", None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, brig_core::ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::embedded(dir.path());
    cfg.socket = dir.path().join("not-a-socket");
    std::fs::write(&cfg.socket, "precious").unwrap();
    let e = crate::start_inner(cfg.clone(), false).await.err().unwrap();
    assert!(e.message.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&cfg.socket).unwrap(), "precious");
}

#[tokio::test]
async fn tcp_listener_refuses_to_start_with_a_weak_token_and_serves_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "short").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "data_dir = {:?}\nsocket = {:?}\n[tcp]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
        dir.path(),
        dir.path().join("b.sock"),
        token
    );
    let cfg = ServerConfig::parse(&text, "t.toml").unwrap();
    let e = crate::start_inner(cfg.clone(), false).await.err().unwrap();
    assert!(e.message.contains("token"), "{e}");
    assert!(!cfg.socket.exists(), "a refused start leaves no socket");

    std::fs::write(&token, "0123456789abcdef0123456789abcdef").unwrap();
    let srv = crate::start_inner(cfg, false).await.unwrap();
    let addr = srv.tcp_addr().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /v1/sessions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    srv.shutdown().await.unwrap();
}
