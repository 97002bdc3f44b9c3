//! MCP's streamable HTTP transport (protocol 2025-06-18): `POST /mcp`
//! with one JSON-RPC message (or a 2025-03-26 batch), answered with
//! `application/json` (no SSE: brig sends no server-initiated messages);
//! `Mcp-Session-Id` from `initialize` on; `DELETE /mcp` ends the session;
//! `GET /mcp` is 405 (no server stream).
//!
//! Every request must carry `Authorization: Bearer <brig credential>`; it
//! is checked with brig (`GET /v1/whoami`) and forwarded on every API call,
//! so each tool call is made as that principal. A missing or refused
//! credential is `401` — this is never an open relay to brig — and an MCP
//! session belongs to the principal that initialized it (another
//! principal's requests on it are `403`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brig_core::{Error, ErrorKind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::api::BrigApi;
use crate::jsonrpc::{self, Incoming as Rpc, Message, RpcError};
use crate::server::{McpSession, PROTOCOL_VERSIONS};

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";
/// The endpoint's path.
pub const PATH: &str = "/mcp";
/// The largest POST body (a file_write's content is in one).
pub const MAX_BODY: usize = 8 << 20;
/// An MCP session unused this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(3600);
/// At most this many MCP sessions at once.
pub const MAX_SESSIONS: usize = 1024;

/// Who a bearer is: checked with brig, and the API as that caller.
pub trait Authenticate: Send + Sync + 'static {
    type Api: BrigApi;
    /// `Err` with kind `Unauthorized` for a credential brig refuses.
    fn authenticate(
        &self,
        bearer: &str,
    ) -> impl Future<Output = Result<(Arc<Self::Api>, String), Error>> + Send;
}

struct Entry<A: BrigApi> {
    session: Arc<McpSession<A>>,
    principal: String,
    last: Instant,
}

struct Shared<Au: Authenticate> {
    auth: Arc<Au>,
    sessions: Mutex<HashMap<String, Entry<Au::Api>>>,
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve<Au: Authenticate>(
    listener: TcpListener,
    auth: Arc<Au>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        auth,
        sessions: Mutex::new(HashMap::new()),
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "MCP HTTP connection ended");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A transport-level refusal: a JSON-RPC error body (id null) at an HTTP
/// status, as MCP clients read them.
fn refuse(status: StatusCode, code: i64, message: impl Into<String>) -> Resp {
    json_response(
        status,
        &jsonrpc::error(&Value::Null, &RpcError::new(code, message)),
    )
}

fn unauthorized(message: &str, invalid: bool) -> Resp {
    let mut r = refuse(StatusCode::UNAUTHORIZED, jsonrpc::INVALID_REQUEST, message);
    let v = if invalid {
        "Bearer realm=\"brig-mcp\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"brig-mcp\""
    };
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(v));
    r
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Browsers' DNS-rebinding guard: an `Origin`, when there is one, must be
/// this host or loopback.
fn origin_allowed(req: &Request<Incoming>) -> bool {
    let Some(origin) = header(req, "origin") else {
        return true;
    };
    let host_of = |s: &str| -> String {
        let s = s.split("://").nth(1).unwrap_or(s);
        let s = s.split('/').next().unwrap_or("");
        let host = if let Some(rest) = s.strip_prefix('[') {
            rest.split(']').next().unwrap_or("").to_string()
        } else {
            s.rsplit_once(':').map(|(h, _)| h).unwrap_or(s).to_string()
        };
        host.to_ascii_lowercase()
    };
    let o = host_of(origin);
    if matches!(o.as_str(), "localhost" | "127.0.0.1" | "::1") {
        return true;
    }
    header(req, "host").is_some_and(|h| host_of(h) == o)
}

async fn handle<Au: Authenticate>(shared: &Shared<Au>, req: Request<Incoming>) -> Resp {
    if req.uri().path() != PATH {
        return refuse(
            StatusCode::NOT_FOUND,
            jsonrpc::INVALID_REQUEST,
            format!("no such endpoint: MCP is served at {PATH}"),
        );
    }
    if !origin_allowed(&req) {
        return refuse(
            StatusCode::FORBIDDEN,
            jsonrpc::INVALID_REQUEST,
            "Origin not allowed",
        );
    }
    // Every request authenticates, with brig itself.
    let bearer = match header(&req, AUTHORIZATION.as_str()) {
        Some(v) => match v.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                t.trim().to_string()
            }
            _ => return unauthorized("Authorization must be \"Bearer <brig token>\"", true),
        },
        None => {
            return unauthorized(
                "authentication required: send Authorization: Bearer <brig token> (an API token from `brig token create`, or an OIDC ID token)",
                false,
            )
        }
    };
    let (api, principal) = match shared.auth.authenticate(&bearer).await {
        Ok(x) => x,
        Err(e) if e.kind == ErrorKind::Unauthorized => {
            return unauthorized(&format!("brig refused the credential: {}", e.message), true)
        }
        Err(e) => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                jsonrpc::INTERNAL_ERROR,
                format!("cannot check the credential with brig: {}", e.message),
            )
        }
    };
    let version = header(&req, VERSION_HEADER).map(str::to_string);
    if let Some(v) = &version {
        if !PROTOCOL_VERSIONS.contains(&v.as_str()) {
            return refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "unsupported MCP-Protocol-Version {v:?}; brig speaks {}",
                    PROTOCOL_VERSIONS.join(", ")
                ),
            );
        }
    }
    let sid = header(&req, SESSION_HEADER).map(str::to_string);
    match *req.method() {
        Method::POST => post(shared, req, api, principal, sid).await,
        Method::DELETE => {
            let Some(sid) = sid else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    jsonrpc::INVALID_REQUEST,
                    "DELETE needs Mcp-Session-Id",
                );
            };
            let mut all = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match all.get(&sid) {
                None => refuse(
                    StatusCode::NOT_FOUND,
                    jsonrpc::INVALID_REQUEST,
                    "no such MCP session",
                ),
                Some(e) if e.principal != principal => refuse(
                    StatusCode::FORBIDDEN,
                    jsonrpc::INVALID_REQUEST,
                    "this MCP session belongs to another principal",
                ),
                Some(_) => {
                    all.remove(&sid);
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
            }
        }
        _ => {
            let mut r = refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                jsonrpc::INVALID_REQUEST,
                "brig's MCP endpoint takes POST (and DELETE to end a session); it opens no server stream",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
            r
        }
    }
}

async fn post<Au: Authenticate>(
    shared: &Shared<Au>,
    req: Request<Incoming>,
    api: Arc<Au::Api>,
    principal: String,
    sid: Option<String>,
) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                jsonrpc::INVALID_REQUEST,
                format!("body larger than {MAX_BODY} bytes (or unreadable)"),
            )
        }
    };
    let incoming = match jsonrpc::parse(&body) {
        Ok(i) => i,
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &jsonrpc::error(&Value::Null, &e)),
    };
    let is_init =
        matches!(&incoming, Rpc::Single(Message::Request { method, .. }) if method == "initialize");
    let (session, new_id) = if is_init {
        let session = Arc::new(McpSession::new(api));
        let id = new_session_id();
        let mut all = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, e| e.last.elapsed() < IDLE);
        if all.len() >= MAX_SESSIONS {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                jsonrpc::INTERNAL_ERROR,
                "too many MCP sessions: end some (DELETE) or wait for idle ones to expire",
            );
        }
        all.insert(
            id.clone(),
            Entry {
                session: session.clone(),
                principal,
                last: Instant::now(),
            },
        );
        (session, Some(id))
    } else {
        let Some(sid) = sid else {
            return refuse(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                "missing Mcp-Session-Id: send initialize first",
            );
        };
        let mut all = shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(&sid) {
            None => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    jsonrpc::INVALID_REQUEST,
                    "unknown or expired MCP session: initialize again",
                )
            }
            Some(e) if e.principal != principal => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    jsonrpc::INVALID_REQUEST,
                    "this MCP session belongs to another principal",
                )
            }
            Some(e) => {
                e.last = Instant::now();
                e.session.set_api(api);
                (e.session.clone(), None)
            }
        }
    };
    let answer = match incoming {
        Rpc::Single(m) => session.handle(m).await,
        Rpc::Batch(ms) => {
            let mut out = Vec::new();
            for m in ms {
                if let Some(r) = session.handle(m).await {
                    out.push(r);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
    };
    if let Some(id) = &new_id {
        // An initialize that failed leaves no session behind.
        if answer.as_ref().is_none_or(|a| a.get("error").is_some()) {
            shared
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            return json_response(StatusCode::OK, &answer.unwrap_or(json!(null)));
        }
    }
    let mut r = match answer {
        Some(a) => json_response(StatusCode::OK, &a),
        None => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
    };
    if let Some(id) = new_id {
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert(SESSION_HEADER, v);
        }
    }
    r
}

/// 128 random bits, hex (visible ASCII, as the spec asks).
fn new_session_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Method as ApiMethod;
    use http_body_util::BodyExt;

    /// brig, as far as the transport cares: two good bearers.
    struct Fake;
    struct NoApi;
    impl BrigApi for NoApi {
        async fn call(&self, _: ApiMethod, p: &str, _: Option<Value>) -> brig_core::Result<Value> {
            Err(Error::not_found(p.to_string()))
        }
    }
    impl Authenticate for Fake {
        type Api = NoApi;
        async fn authenticate(&self, bearer: &str) -> Result<(Arc<NoApi>, String), Error> {
            match bearer {
                "alice-token" => Ok((Arc::new(NoApi), "oidc:idp#alice".into())),
                "bob-token" => Ok((Arc::new(NoApi), "oidc:idp#bob".into())),
                _ => Err(Error::new(ErrorKind::Unauthorized, "unknown_token")),
            }
        }
    }

    struct Reply {
        status: u16,
        headers: hyper::HeaderMap,
        body: Value,
    }

    async fn send(
        addr: std::net::SocketAddr,
        method: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut b = Request::builder()
            .method(method)
            .uri(PATH)
            .header("host", addr.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = tx
            .send_request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}"#;
    const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

    #[tokio::test]
    async fn the_transport_authenticates_and_binds_sessions() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, Arc::new(Fake), async {
            let _ = stopped.await;
        }));

        // No credential, a refused one, another scheme: 401, no session.
        for auth in [None, Some("Bearer nope"), Some("Basic YTpi")] {
            let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
            let r = send(addr, "POST", &h, INIT).await;
            assert_eq!(r.status, 401, "{auth:?}");
            let www = r.headers.get("www-authenticate").unwrap().to_str().unwrap();
            assert!(www.starts_with("Bearer realm=\"brig-mcp\""), "{www}");
            assert!(r.headers.get(SESSION_HEADER).is_none());
            assert!(r.body["error"]["message"].is_string(), "{auth:?}");
        }
        let alice = [("authorization", "Bearer alice-token")];
        let r = send(addr, "POST", &alice, INIT).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["result"]["protocolVersion"], "2025-06-18");
        let sid = r.headers[SESSION_HEADER].to_str().unwrap().to_string();
        assert_eq!(sid.len(), 32);

        // Without the session id 400; an unknown one 404; bob on alice's 403.
        assert_eq!(send(addr, "POST", &alice, LIST).await.status, 400);
        let h = [
            ("authorization", "Bearer alice-token"),
            (SESSION_HEADER, "f00"),
        ];
        assert_eq!(send(addr, "POST", &h, LIST).await.status, 404);
        let bob = [
            ("authorization", "Bearer bob-token"),
            (SESSION_HEADER, sid.as_str()),
        ];
        assert_eq!(send(addr, "POST", &bob, LIST).await.status, 403);
        let mine = [
            ("authorization", "Bearer alice-token"),
            (SESSION_HEADER, sid.as_str()),
        ];
        let r = send(addr, "POST", &mine, LIST).await;
        assert_eq!(r.status, 200);
        assert!(r.body["result"]["tools"].as_array().unwrap().len() > 10);
        // A notification: 202, no body. Bad JSON: 400 with -32700.
        let r = send(
            addr,
            "POST",
            &mine,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .await;
        assert_eq!(r.status, 202);
        let r = send(addr, "POST", &mine, "{nope").await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], jsonrpc::PARSE_ERROR);
        // An unsupported protocol version header: 400.
        let v = [
            ("authorization", "Bearer alice-token"),
            (SESSION_HEADER, sid.as_str()),
            (VERSION_HEADER, "1999-01-01"),
        ];
        assert_eq!(send(addr, "POST", &v, LIST).await.status, 400);
        // A foreign Origin: 403.
        let o = [
            ("authorization", "Bearer alice-token"),
            (SESSION_HEADER, sid.as_str()),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(send(addr, "POST", &o, LIST).await.status, 403);
        // No server stream; DELETE ends the session (bob cannot).
        assert_eq!(send(addr, "GET", &mine, "").await.status, 405);
        assert_eq!(send(addr, "DELETE", &bob, "").await.status, 403);
        assert_eq!(send(addr, "DELETE", &mine, "").await.status, 204);
        assert_eq!(send(addr, "POST", &mine, LIST).await.status, 404);
        // Another path: 404.
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = tx
            .send_request(
                Request::builder()
                    .uri("/other")
                    .header("host", "x")
                    .header("authorization", "Bearer alice-token")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
