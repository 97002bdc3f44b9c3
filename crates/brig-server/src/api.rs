//! The HTTP+JSON API of docs/API.md, on axum. Every error leaves as
//! `{"error": {kind, message, hint}}` with the kind's HTTP status.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use brig_core::error::ApiErrorBody;
use brig_core::exec::ExecRequest;
use brig_core::session::CreateSession;
use brig_core::wire::{self, Frame, Kind};
use brig_core::{Error, ErrorKind, SessionId};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::auth::Token;
use crate::manager::{DestroyMode, ExecCtl, ExecOut, Manager};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
/// The `Upgrade` protocol of attached exec.
pub const ATTACH_PROTOCOL: &str = "brig-exec/1";
/// Largest request body (an ExecRequest with stdin is the big one).
pub const BODY_LIMIT: usize = 4 << 20;

#[derive(Clone)]
pub struct AppState {
    pub mgr: Arc<Manager>,
}

/// An API error: a brig error rendered with its kind's status.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(kind = ?self.0.kind, error = %self.0, "request failed");
        }
        (status, axum::Json(ApiErrorBody { error: self.0 })).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// `Json` whose rejections are API errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(ApiError(json_rejection(rej.status(), rej.body_text()))),
        }
    }
}

fn json_rejection(status: StatusCode, text: String) -> Error {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => Error::new(
            ErrorKind::LimitExceeded,
            format!("request body is larger than {BODY_LIMIT} bytes"),
        )
        .hint("pass large inputs through a file in /workspace instead"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Error::invalid(text).hint("send Content-Type: application/json")
        }
        _ => Error::invalid(format!("request body is not valid: {text}"))
            .hint("see GET /openapi.json for the request schemas"),
    }
}

pub(crate) fn parse_id(s: &str) -> Result<SessionId, ApiError> {
    s.parse().map_err(ApiError)
}

// ---- the route table: the router and the list the OpenAPI test checks ----

pub(crate) struct Routes {
    router: Router<AppState>,
    pub(crate) list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn add(mut self, method: &'static str, path: &'static str, mr: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(path, mr);
        self.list.push((method, path));
        self
    }
    /// Routes another module adds (its handlers stay in its own file).
    fn with(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }
    pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("get", path, axum::routing::get(h))
    }
    pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.add("post", path, axum::routing::post(h))
    }
    pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(
        self,
        path: &'static str,
        h: H,
    ) -> Self {
        self.add("delete", path, axum::routing::delete(h))
    }
}

pub(crate) fn routes() -> Routes {
    Routes {
        router: Router::new(),
        list: Vec::new(),
    }
    .get("/healthz", healthz)
    .get("/metrics", metrics)
    .get("/openapi.json", openapi)
    .get("/v1/version", version)
    .get("/v1/doctor", doctor)
    .post("/v1/sessions", create_session)
    .get("/v1/sessions", list_sessions)
    .get("/v1/sessions/{id}", get_session)
    .delete("/v1/sessions/{id}", destroy_session)
    .get("/v1/sessions/{id}/events", session_events)
    .post("/v1/sessions/{id}/artifacts", issue_artifact_url)
    .get("/v1/sessions/{id}/artifacts", list_artifacts)
    .get("/v1/sessions/{id}/artifacts/{name}", get_artifact)
    .get("/v1/git/signing-key", git_signing_key)
    .get("/v1/sessions/{id}/credentials", list_credentials)
    .post(
        "/v1/sessions/{id}/credentials/{name}/revoke",
        revoke_credential,
    )
    .get("/v1/sessions/{id}/pr/preview", pr_preview)
    .post("/v1/sessions/{id}/gate", run_gate)
    .post("/v1/sessions/{id}/pulls", create_pr)
    .get("/v1/sessions/{id}/pulls", list_prs)
    .get("/v1/journal", journal)
    .get("/v1/journal/verify", journal_verify)
    .get("/v1/journal/sinks", journal_sinks)
    .post("/v1/sessions/{id}/exec", exec_buffered)
    .post("/v1/sessions/{id}/exec/attach", exec_attach)
    .post("/v1/sessions/{id}/kill", kill_session)
    .post("/v1/kill-all", kill_all)
    .post("/v1/kill", kill)
    .get("/v1/sessions/{id}/model-calls", model_calls)
    .get("/v1/reports/cost", cost_report)
    .post("/v1/drill/kill", drill_kill)
    .get("/v1/images", list_images)
    .post("/v1/images/import", import_image)
    .post("/v1/images/build", build_image)
    .with(crate::approvals_api::routes)
    .with(crate::identity::routes)
}

/// Which listener a router serves: who its callers are is decided
/// differently (`crate::identity`).
pub enum Listener {
    /// The unix socket: the connection's SO_PEERCRED uid (the server must
    /// be served `into_make_service_with_connect_info::<auth::UnixPeer>()`;
    /// without it every request is refused).
    Unix,
    /// TCP: a bearer credential (the static `[tcp] token_file` token, an
    /// API token, or an OIDC ID token).
    Tcp(Option<Arc<Token>>),
}

/// The API router. With a token, every route but `/healthz` and
/// `/v1/identity` needs `Authorization: Bearer` (the TCP listener);
/// without, the unix socket's peer is identified. Builds its own
/// [`crate::identity::Identity`] from the manager's config; a server
/// shares one between its listeners with [`router_with`].
pub fn router(state: AppState, token: Option<Arc<Token>>) -> Router {
    let identity = Arc::new(crate::identity::Identity::new_or_refusing(
        &state.mgr.config().identity,
    ));
    let listener = match token {
        Some(t) => Listener::Tcp(Some(t)),
        None => Listener::Unix,
    };
    router_with(state, identity, listener)
}

pub fn router_with(
    state: AppState,
    identity: Arc<crate::identity::Identity>,
    listener: Listener,
) -> Router {
    let mgr = state.mgr.clone();
    let r = routes()
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Inside the auth layer below: runs once the caller is known.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session_use,
        ))
        .with_state(state);
    let auth = |static_token| {
        Arc::new(crate::identity::Auth {
            mgr,
            identity,
            static_token,
        })
    };
    // The auth layer, and its state for the handlers that sign humans in
    // (crate::web_login).
    match listener {
        Listener::Tcp(t) => {
            let a = auth(t);
            r.layer(axum::middleware::from_fn_with_state(
                a.clone(),
                require_token,
            ))
            .layer(axum::Extension(a))
        }
        Listener::Unix => {
            let a = auth(None);
            r.layer(axum::middleware::from_fn_with_state(
                a.clone(),
                crate::identity::Auth::unix,
            ))
            .layer(axum::Extension(a))
        }
    }
}

/// Cedar's `session.use` on every `/v1/sessions/{id}[/...]` request, once
/// the caller is known: their own sessions, an admin's any, an auditor's
/// reads. Runs inside the auth layer; an id that does not parse or name a
/// session is left to the handler (400 / 404).
async fn session_use(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v1/sessions/") else {
        return next.run(req).await;
    };
    let (id, what) = match rest.split_once('/') {
        Some((id, w)) => (id, w.split('/').next().unwrap_or("")),
        None if req.method() == axum::http::Method::DELETE => (rest, "destroy"),
        None => (rest, "show"),
    };
    let Ok(sid) = parse_id(id) else {
        return next.run(req).await;
    };
    let Some(caller) = req.extensions().get::<crate::identity::Caller>().cloned() else {
        // The auth layer names every caller: without one, nothing gets in.
        return ApiError(Error::internal("no caller on an authenticated request")).into_response();
    };
    let info = match st.mgr.get(&sid).await {
        Ok(info) => info,
        // No such session: the handler says so (404).
        Err(e) if e.kind == ErrorKind::NotFound => return next.run(req).await,
        // The session cannot be looked up: nothing is decided, so nothing
        // goes through (fail closed).
        Err(e) => return ApiError(e).into_response(),
    };
    let write = !matches!(req.method().as_str(), "GET" | "HEAD");
    let r =
        brig_policy::Request::session_use(&caller.human(), sid.as_str(), &info.human, write, what);
    match st.mgr.decide_session_use(&r).await {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError(e).into_response(),
    }
}

/// The TCP listener's bearer auth (`crate::identity::Auth::tcp`).
async fn require_token(
    State(auth): State<Arc<crate::identity::Auth>>,
    req: Request,
    next: Next,
) -> Response {
    crate::identity::Auth::tcp(State(auth), req, next).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError(
        Error::not_found(format!(
            "no such endpoint: {} {}",
            req.method(),
            req.uri().path()
        ))
        .hint("GET /openapi.json lists every endpoint"),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let body = ApiErrorBody {
        error: Error::invalid(format!(
            "{} is not allowed on {}",
            req.method(),
            req.uri().path()
        ))
        .hint("GET /openapi.json lists the methods of every endpoint"),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

// ---- handlers ----

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let text = st.mgr.metrics_text().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn version() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")}))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> brig_core::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(Error::internal(format!("task failed: {e}"))))?
        .map_err(ApiError)
}

async fn doctor(
    State(_st): State<AppState>,
) -> ApiResult<axum::Json<brig_sandbox::doctor::DoctorReport>> {
    Ok(axum::Json(
        blocking(|| Ok(brig_sandbox::doctor::probe())).await?,
    ))
}

#[derive(Deserialize, Default)]
struct CreateQuery {
    #[serde(default)]
    progress: bool,
}

/// `?progress=true`: a `200` NDJSON stream of `{"progress": "..."}` lines
/// while the session starts (its checkout's git progress among them), then
/// one `{"status": 201, "session": ...}` or `{"status": N, "error": ...}`.
///
/// The session's human is the caller; only a caller that
/// [`crate::identity::Caller::may_act_for_others`] may name another in
/// `human` (403 for anyone else).
async fn create_session(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    q: Result<Query<CreateQuery>, QueryRejection>,
    ApiJson(mut req): ApiJson<CreateSession>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError(Error::invalid(format!("bad query: {}", e.body_text())).hint("use ?progress=true"))
    })?;
    // The caller's own session, unless it may act for others (403 if not).
    req.human = Some(crate::identity::session_human(
        &caller,
        req.human.as_deref(),
    )?);
    if !q.progress {
        let info = st.mgr.create_as(req, None, caller.human()).await?;
        return Ok((StatusCode::CREATED, axum::Json(info)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let lines = tx.clone();
    // Progress never blocks the create: a slow reader just misses lines.
    let report: crate::git::Progress = Arc::new(move |m: &str| {
        let _ = lines.try_send(serde_json::json!({ "progress": m }).to_string() + "\n");
    });
    let mgr = st.mgr.clone();
    tokio::spawn(async move {
        let last = match mgr.create_as(req, Some(report), caller.human()).await {
            Ok(info) => serde_json::json!({ "status": 201, "session": info }),
            Err(e) => serde_json::json!({ "status": e.kind.http_status(), "error": e }),
        };
        let _ = tx.send(last.to_string() + "\n").await;
    });
    Ok(ndjson(rx))
}

/// A `200` NDJSON response of the lines `rx` gets, until its senders are gone.
fn ndjson(rx: tokio::sync::mpsc::Receiver<String>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|l| {
            (
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(l)),
                rx,
            )
        })
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list_sessions(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError(Error::invalid(format!("bad query: {}", e.body_text())).hint("use ?all=true"))
    })?;
    // The sessions the caller may read (session.use): their own, or all
    // for an admin or an auditor. Not journaled: a listing is no action.
    let policy = st.mgr.policy()?;
    let human = caller.human();
    let mine: Vec<_> = st
        .mgr
        .list(q.all)
        .await?
        .into_iter()
        .filter(|s| {
            let r =
                brig_policy::Request::session_use(&human, s.id.as_str(), &s.human, false, "list");
            policy.engine.authorize(&r).is_allowed()
        })
        .collect();
    Ok(axum::Json(mine).into_response())
}

/// Most egress denials `GET /v1/sessions/{id}` explains.
const SHOWN_DENIALS: i64 = 20;

async fn get_session(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let info = st.mgr.get(&id).await?;
    let mut v = serde_json::to_value(&info)
        .map_err(|e| brig_core::Error::internal(format!("session as JSON: {e}")))?;
    v["egress_denials"] = st.mgr.egress_denials(&id, SHOWN_DENIALS).await?.into();
    if let Some(g) = st.mgr.session_git(&id).await? {
        v["git"] = serde_json::to_value(g).unwrap_or_default();
    }
    Ok(axum::Json(v).into_response())
}

async fn session_events(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    Ok(axum::Json(st.mgr.events(&id).await?).into_response())
}

// ---- pull requests: preview, test gate, open (crate::pr) ----

/// What a session holds of its profile's secrets: names, scopes, hosts,
/// expiry and state, never a value or a placeholder.
async fn list_credentials(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    st.mgr.get(&id).await?;
    Ok(axum::Json(crate::secrets::list(st.mgr.db(), &id).await?).into_response())
}

async fn revoke_credential(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    Ok(axum::Json(st.mgr.revoke_credential(&id, &name).await?).into_response())
}

/// brig's deployment key: what a forge or a reviewer needs to verify the
/// commits brig signs (`git verify-commit` with gpg.format=ssh).
async fn git_signing_key(State(st): State<AppState>) -> ApiResult<Response> {
    let k = st.mgr.git_signer()?;
    Ok(axum::Json(serde_json::json!({
        "public_key": k.public_key_openssh(),
        "allowed_signers": k.allowed_signers_line("*"),
        "namespace": "git",
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
struct BranchQuery {
    branch: Option<String>,
}

async fn pr_preview(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<BranchQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let Query(q) = q.map_err(|e| {
        ApiError(Error::invalid(format!("bad query: {}", e.body_text())).hint("use ?branch=NAME"))
    })?;
    Ok(axum::Json(crate::pr::preview(&st.mgr, &id, q.branch).await?).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GateRequest {
    #[serde(default)]
    branch: Option<String>,
}

async fn run_gate(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    // The body is optional: empty means the latest pushed branch.
    let req: GateRequest = if body.is_empty() {
        GateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(Error::invalid(format!("request body is not valid: {e}"))))?
    };
    Ok(axum::Json(crate::pr::run_gate(&st.mgr, &id, req.branch).await?).into_response())
}

async fn create_pr(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<crate::pr::CreatePr>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let (pr, gate) = crate::pr::create(&st.mgr, &id, req).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"pull_request": pr, "gate": gate})),
    )
        .into_response())
}

async fn list_prs(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    st.mgr.get(&id).await?;
    Ok(axum::Json(crate::pr::pull_requests(&st.mgr, &id).await?).into_response())
}

// ---- artifacts: upload URLs (crate::artifacts) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArtifactUrlRequest {
    name: String,
    /// e.g. "10m"; default 10 minutes.
    ttl: Option<String>,
}

/// An upload URL's lifetime when the request names none.
const DEFAULT_ARTIFACT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

fn artifacts_service(st: &AppState) -> ApiResult<Arc<crate::artifacts::Artifacts>> {
    Ok(st.mgr.artifacts()?)
}

async fn issue_artifact_url(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ArtifactUrlRequest>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    crate::artifacts::check_name(&req.name)?;
    let ttl = match &req.ttl {
        Some(t) => brig_core::units::parse_duration(t)?,
        None => DEFAULT_ARTIFACT_TTL,
    };
    let info = st.mgr.get(&id).await?;
    let svc = artifacts_service(&st)?;
    let issued = svc
        .issue(st.mgr.db(), st.mgr.known(), &info, &req.name, ttl)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(issued)).into_response())
}

async fn list_artifacts(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    st.mgr.get(&id).await?;
    let list = st.mgr.db().run(move |s| s.artifacts(&id)).await?;
    let out: Vec<serde_json::Value> = list
        .into_iter()
        .map(|a| {
            serde_json::json!({
                "name": a.name,
                "size": a.size,
                "sha256": a.sha256,
                "uploaded_at": a.uploaded_at,
            })
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

async fn get_artifact(
    State(st): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    crate::artifacts::check_name(&name)?;
    st.mgr.get(&id).await?;
    let id2 = id.clone();
    let n2 = name.clone();
    let rec = st
        .mgr
        .db()
        .run(move |s| s.artifact(&id2, &n2))
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("session {id} has no artifact {name:?}"))
                .hint("list them with `brig artifact list --session ID`")
        })?;
    let svc = artifacts_service(&st)?;
    let path = svc.session_dir(id.as_str()).join(&rec.name);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Error::internal(format!("artifact {name:?} of session {id}: {e}"))
            .hint("the file under data_dir/artifacts was removed or is unreadable")
    })?;
    let stream = futures_util::stream::unfold(Some(file), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(rec.size));
    if let Ok(v) = HeaderValue::from_str(&rec.sha256) {
        h.insert("x-brig-sha256", v);
    }
    Ok(resp)
}

/// `GET /v1/journal` filters; `user` is the human behind the events.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    since: Option<String>,
    session: Option<String>,
    user: Option<String>,
    after_seq: Option<i64>,
    limit: Option<i64>,
}

/// Most events one journal request returns; page on with `after_seq`.
const JOURNAL_PAGE_MAX: i64 = 10_000;

async fn journal(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    q: Result<Query<JournalQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError(
            Error::invalid(format!("bad query: {}", e.body_text()))
                .hint("use since=RFC3339, session=ID, user=NAME, after_seq=N, limit=N"),
        )
    })?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=JOURNAL_PAGE_MAX).contains(&limit) {
        return Err(ApiError(
            Error::invalid(format!(
                "limit {limit} is out of range 1..={JOURNAL_PAGE_MAX}"
            ))
            .hint("page through larger journals with after_seq"),
        ));
    }
    // Who reads what (session.use): a caller who may read any session
    // (admins, auditors) reads the whole journal; anyone else only the
    // events of their own sessions. Asking for one session is decided, and
    // a refusal journaled, like any read of that session.
    let human = caller.human();
    let everything = st
        .mgr
        .policy()?
        .engine
        .authorize(&brig_policy::Request::session_use(
            &human, "*", "", false, "journal",
        ))
        .is_allowed();
    let mut owner = None;
    if let Some(s) = &q.session {
        match parse_id(s) {
            Ok(sid) => match st.mgr.get(&sid).await {
                Ok(info) => {
                    let r = brig_policy::Request::session_use(
                        &human,
                        sid.as_str(),
                        &info.human,
                        false,
                        "journal",
                    );
                    st.mgr.decide_session_use(&r).await?;
                }
                // Events outlive their session's record: only a reader
                // of everything gets them; anyone else nothing of it.
                Err(e) if e.kind == ErrorKind::NotFound && everything => {}
                Err(e) => return Err(ApiError(e)),
            },
            // A reader of everything may filter by any id.
            Err(_) if everything => {}
            Err(e) => return Err(e),
        }
    } else if !everything {
        owner = Some(caller.id.clone());
    }
    let f = brig_store::EventFilter {
        since: q.since,
        session: q.session,
        human: q.user,
        owner,
        after_seq: q.after_seq,
        limit: Some(limit),
    };
    let evs = st.mgr.db().run(move |s| s.events_filtered(&f)).await?;
    Ok(axum::Json(evs).into_response())
}

async fn journal_verify(State(st): State<AppState>) -> ApiResult<Response> {
    let data_dir = st.mgr.config().data_dir.clone();
    let report = st
        .mgr
        .db()
        .run(move |s| crate::journal::verify_store(s, &data_dir, None, None))
        .await?;
    Ok(axum::Json(report).into_response())
}

async fn journal_sinks(State(st): State<AppState>) -> ApiResult<Response> {
    let mgr = st.mgr.clone();
    let status = tokio::task::spawn_blocking(move || mgr.sink_status())
        .await
        .map_err(|e| ApiError(Error::internal(format!("sink status task failed: {e}"))))?;
    Ok(axum::Json(status).into_response())
}

async fn exec_buffered(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    Ok(axum::Json(st.mgr.exec_buffered(&id, req).await?).into_response())
}

async fn destroy_session(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let info = st.mgr.get(&id).await?;
    may_kill(&st, &caller, std::slice::from_ref(&info)).await?;
    let s = st
        .mgr
        .destroy(&id, DestroyMode::Graceful, "destroyed by request")
        .await?;
    Ok(axum::Json(s).into_response())
}

/// Cedar's `session.kill`: the caller may kill each of these sessions
/// (their own; an admin any). One refusal refuses the whole kill.
async fn may_kill(
    st: &AppState,
    caller: &crate::identity::Caller,
    sessions: &[brig_core::session::SessionInfo],
) -> ApiResult<()> {
    let human = caller.human();
    for s in sessions {
        let r = brig_policy::Request::session_kill(&human, s.id.as_str(), &s.human);
        st.mgr.decide_human(&r).await?;
    }
    Ok(())
}

async fn kill_session(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let info = st.mgr.get(&id).await?;
    may_kill(&st, &caller, std::slice::from_ref(&info)).await?;
    let s = st
        .mgr
        .destroy(&id, DestroyMode::Kill, "killed by request")
        .await?;
    Ok(axum::Json(s).into_response())
}

async fn kill_all(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
) -> ApiResult<Response> {
    let lives = st.mgr.list(false).await?;
    may_kill(&st, &caller, &lives).await?;
    let t0 = Instant::now();
    let mgr = st.mgr.clone();
    // Runs to the end even if the client hangs up: a kill switch must not be half-pulled.
    let killed = tokio::spawn(async move { mgr.kill_all("kill switch (kill-all)").await })
        .await
        .map_err(|e| ApiError(Error::internal(format!("kill-all task failed: {e}"))))?;
    Ok(axum::Json(serde_json::json!({
        "killed": killed,
        "duration_ms": t0.elapsed().as_millis() as u64,
    }))
    .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelCallsQuery {
    limit: Option<u64>,
}

/// `GET /v1/sessions/{id}/model-calls`: what the model gateway captured
/// (redacted), oldest first.
async fn model_calls(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ModelCallsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let Query(q) = q.map_err(|e| {
        ApiError(Error::invalid(format!("bad query: {}", e.body_text())).hint("use limit=N"))
    })?;
    // The session must exist (404 names it otherwise).
    st.mgr.get(&id).await?;
    let calls = crate::models::log(st.mgr.db(), &id, q.limit).await?;
    Ok(axum::Json(calls).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CostQuery {
    since: Option<String>,
    by: Option<String>,
    period: Option<String>,
}

/// `GET /v1/reports/cost`: tokens, spend and sandbox-hours per period and
/// key, next to the blueprint's cost model for the same usage.
async fn cost_report(
    State(st): State<AppState>,
    q: Result<Query<CostQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError(
            Error::invalid(format!("bad query: {}", e.body_text()))
                .hint("use since=RFC3339, by=user|task|session, period=day|month"),
        )
    })?;
    let by = brig_store::usage::UsageBy::parse(q.by.as_deref().unwrap_or("user"))?;
    let period = match q.period.as_deref().unwrap_or("day") {
        "day" => brig_store::usage::Period::Day,
        "month" => brig_store::usage::Period::Month,
        p => {
            return Err(ApiError(
                Error::invalid(format!("period {p:?} is not day or month"))
                    .hint("use period=day or period=month"),
            ))
        }
    };
    let report = crate::models::cost_report(&st.mgr, q.since, by, period).await?;
    Ok(axum::Json(report).into_response())
}

/// `POST /v1/kill`: exactly one of the selectors.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn kill(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    ApiJson(b): ApiJson<KillBody>,
) -> ApiResult<Response> {
    use crate::manager::KillTarget;
    let picked = [
        b.session.is_some(),
        b.user.is_some(),
        b.task.is_some(),
        b.all,
    ];
    if picked.iter().filter(|x| **x).count() != 1 {
        return Err(ApiError(
            Error::invalid("the kill switch needs exactly one of session, user, task or all")
                .hint("e.g. {\"user\": \"ada\"} or {\"all\": true}"),
        ));
    }
    let (target, reason) = match (b.session, b.user, b.task) {
        (Some(id), _, _) => (
            KillTarget::Session(parse_id(&id)?),
            "kill switch (session)".to_string(),
        ),
        (_, Some(u), _) => (
            KillTarget::Human(u.clone()),
            format!("kill switch (user {u})"),
        ),
        (_, _, Some(t)) => (
            KillTarget::Task(t.clone()),
            format!("kill switch (task {t})"),
        ),
        _ => (KillTarget::All, "kill switch (kill-all)".to_string()),
    };
    // Policy on every session it would take.
    let lives = st.mgr.list(false).await?;
    let hit: Vec<_> = lives.into_iter().filter(|s| target.matches(s)).collect();
    may_kill(&st, &caller, &hit).await?;
    let t0 = Instant::now();
    let mgr = st.mgr.clone();
    // Runs to the end even if the client hangs up: a kill switch must not be half-pulled.
    let killed = tokio::spawn(async move { mgr.kill_where(&target, &reason).await })
        .await
        .map_err(|e| ApiError(Error::internal(format!("kill task failed: {e}"))))?;
    Ok(axum::Json(serde_json::json!({
        "killed": killed,
        "duration_ms": t0.elapsed().as_millis() as u64,
    }))
    .into_response())
}

/// `POST /v1/drill/kill`: the kill switch's game day.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrillBody {
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    human: Option<String>,
}

async fn drill_kill(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    ApiJson(b): ApiJson<DrillBody>,
) -> ApiResult<Response> {
    let human = crate::identity::session_human(&caller, b.human.as_deref())?;
    let mgr = st.mgr.clone();
    let report = tokio::spawn(async move { mgr.drill_kill(Some(human), b.profile).await })
        .await
        .map_err(|e| ApiError(Error::internal(format!("kill drill task failed: {e}"))))??;
    Ok(axum::Json(report).into_response())
}

async fn list_images(State(st): State<AppState>) -> ApiResult<Response> {
    let paths = st.mgr.paths().clone();
    let list = blocking(move || brig_sandbox::image::list(&paths)).await?;
    Ok(axum::Json(list).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportRequest {
    path: String,
    name: String,
}

async fn import_image(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ImportRequest>,
) -> ApiResult<Response> {
    let path = std::path::PathBuf::from(&req.path);
    if !path.is_absolute() {
        return Err(ApiError(
            Error::invalid(format!("image path {:?} must be absolute", req.path))
                .hint("the server reads it on its own host"),
        ));
    }
    if !path.exists() {
        return Err(ApiError(Error::invalid(format!(
            "image path {:?} does not exist",
            req.path
        ))));
    }
    if req.name.is_empty()
        || req.name.len() > 128
        || !req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(ApiError(
            Error::invalid(format!("image name {:?} is not valid", req.name))
                .hint("use 1-128 letters, digits and - _ . : /"),
        ));
    }
    let paths = st.mgr.paths().clone();
    let img = blocking(move || brig_sandbox::image::import(&paths, &path, &req.name)).await?;
    Ok((StatusCode::CREATED, axum::Json(img)).into_response())
}

/// `brig image build`: runs to completion even if the caller goes away
/// (the build session is always destroyed); with `?progress=true`, NDJSON
/// progress lines, then `{"status", "image" | "error"}`.
async fn build_image(
    State(st): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::identity::Caller>,
    q: Result<Query<CreateQuery>, QueryRejection>,
    ApiJson(req): ApiJson<crate::image_build::BuildRequest>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| {
        ApiError(Error::invalid(format!("bad query: {}", e.body_text())).hint("use ?progress=true"))
    })?;
    let human = crate::identity::session_human(&caller, None)?;
    let mgr = st.mgr.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let lines = tx.clone();
    let report: crate::git::Progress = Arc::new(move |m: &str| {
        let _ = lines.try_send(serde_json::json!({ "progress": m }).to_string() + "\n");
    });
    let task = tokio::spawn(async move {
        crate::image_build::build(mgr, caller.human(), human, req, Some(report)).await
    });
    if !q.progress {
        drop(rx);
        let r = task
            .await
            .map_err(|e| ApiError(Error::internal(format!("image build task failed: {e}"))))??;
        return Ok((StatusCode::CREATED, axum::Json(r)).into_response());
    }
    tokio::spawn(async move {
        let last = match task.await {
            Ok(Ok(r)) => serde_json::json!({ "status": 201, "image": r }),
            Ok(Err(e)) => serde_json::json!({ "status": e.kind.http_status(), "error": e }),
            Err(e) => {
                serde_json::json!({ "status": 500, "error": Error::internal(format!("image build task failed: {e}")) })
            }
        };
        let _ = tx.send(last.to_string() + "\n").await;
    });
    Ok(ndjson(rx))
}

// ---- attached exec ----

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

async fn exec_attach(
    State(st): State<AppState>,
    Path(id): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    if !header_has(req.headers(), header::CONNECTION, "upgrade")
        || !header_has(req.headers(), header::UPGRADE, ATTACH_PROTOCOL)
    {
        return Err(ApiError(
            Error::invalid("attached exec needs an HTTP upgrade")
                .hint(format!("send `Connection: Upgrade` and `Upgrade: {ATTACH_PROTOCOL}`, or use POST .../exec for buffered output")),
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let body: Bytes = axum::body::to_bytes(req.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| ApiError(json_rejection(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())))?;
    let exec_req: ExecRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(Error::invalid(format!(
            "request body is not a valid ExecRequest: {e}"
        )))
    })?;
    let (ctl, rx) = st.mgr.exec(&id, exec_req).await?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => attach_session(TokioIo::new(upgraded), ctl, rx).await,
            Err(e) => {
                tracing::warn!(error = %e, "attach: upgrade failed; killing the command");
                let _ = ctl.signal(libc::SIGKILL).await;
                drain(rx).await;
            }
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(ATTACH_PROTOCOL));
    Ok(resp)
}

async fn drain(mut rx: mpsc::Receiver<ExecOut>) {
    while rx.recv().await.is_some() {}
}

/// The frames one `ExecOut` becomes on channel 1.
pub fn out_frames(out: ExecOut) -> Vec<Frame> {
    let data = |kind, b: Vec<u8>| -> Vec<Frame> {
        b.chunks(wire::MAX_PAYLOAD)
            .map(|c| Frame::new(kind, 1, c.to_vec()))
            .collect()
    };
    match out {
        ExecOut::Started { pid } => vec![Frame::json(Kind::Started, 1, &wire::Started { pid })],
        ExecOut::Stdout(b) => data(Kind::Stdout, b),
        ExecOut::Stderr(b) => data(Kind::Stderr, b),
        // ExitStatus is wire::Exited plus `timed_out`.
        ExecOut::Exited(st) => vec![Frame::json(Kind::Exited, 1, &st)],
        ExecOut::SpawnFailed(error) => vec![Frame::json(
            Kind::SpawnFailed,
            1,
            &wire::Failed {
                layer: "spawn".into(),
                error,
            },
        )],
    }
}

async fn attach_session<IO>(io: IO, ctl: ExecCtl, mut rx: mpsc::Receiver<ExecOut>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let ctl = Arc::new(ctl);
    let reader = tokio::spawn(read_client(rd, ctl.clone()));
    while let Some(out) = rx.recv().await {
        let mut buf = Vec::new();
        for f in out_frames(out) {
            f.encode_into(&mut buf);
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            // The client is gone: dropping the receiver makes brig kill the command.
            tracing::info!(exec = %ctl.exec_id, "attach: client disconnected");
            break;
        }
    }
    drop(rx);
    let _ = wr.shutdown().await;
    reader.abort();
}

async fn read_client<R: tokio::io::AsyncRead + Unpin>(mut rd: R, ctl: Arc<ExecCtl>) {
    let mut dec = wire::Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof_sent = false;
    'read: loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
        loop {
            let f = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(exec = %ctl.exec_id, error = %e, "attach: corrupt client stream");
                    break 'read;
                }
            };
            let r = match f.kind {
                Kind::Stdin if !eof_sent => ctl.stdin(f.payload).await,
                Kind::StdinEof if !eof_sent => {
                    eof_sent = true;
                    ctl.close_stdin().await
                }
                Kind::Signal => match f.parse::<wire::SignalMsg>() {
                    Ok(m) => ctl.signal(m.signal).await,
                    Err(e) => Err(Error::invalid(e.to_string())),
                },
                Kind::Resize => match f.parse::<wire::Resize>() {
                    Ok(m) => ctl.resize(m.rows, m.cols).await,
                    Err(e) => Err(Error::invalid(e.to_string())),
                },
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!(exec = %ctl.exec_id, error = %e, "attach: client frame not delivered");
            }
        }
    }
    if !eof_sent {
        let _ = ctl.close_stdin().await;
    }
}
