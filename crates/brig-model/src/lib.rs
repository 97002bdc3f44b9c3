//! brig-model: the model gateway (issue 7; docs/MODELS.md).
//!
//! Sessions reach it at `http://model.brig` on their egress channel: the
//! proxy hands the whole connection over ([`GatewayService`], a
//! `brig_proxy::local::LocalService`) with the channel's session, the only
//! identity. It speaks the OpenAI (`/v1/chat/completions`, `/v1/responses`,
//! `/v1/embeddings`, `/v1/models`) and Anthropic (`/v1/messages`,
//! `/v1/messages/count_tokens`) wire formats, routes a model name (an alias
//! or an exposed model) to upstream targets in fallback order, retries what
//! is safe to retry, passes SSE through chunk by chunk, enforces budgets
//! per session, human and task, and records one redacted [`ModelCall`] per
//! request. The sandbox holds only a per-session placeholder key; the real
//! key comes from the embedder's [`KeyProvider`] and is added here.

mod budget;
mod config;
mod pii;
mod record;
mod relay;
mod request;
mod scrub;
mod serve;
mod shape;
mod upstream;

#[cfg(feature = "fake")]
pub mod fake;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

pub use budget::{Scope, Usage};
pub use config::{
    BudgetConfig, BudgetsConfig, ConfigError, DurationValue, GatewayConfig, KeyRef, PiiConfig,
    Price, Protocol, RouteConfig, SizeValue, UpstreamConfig, UpstreamKind, DEFAULT_HOST,
};
pub use record::{Attempt, CallOutcome, ModelCall, RawJson, TokenSource};
pub use relay::GatewayBody;

use brig_proxy::local::{LocalService, LocalStream};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves an upstream's key reference to the real key (the embedder's
/// secret sources). `Ok(None)`: send no key. An error is answered as a
/// provider-shaped 503 naming the upstream (never the key or the error's
/// text, which goes to the record, redacted).
pub trait KeyProvider: Send + Sync {
    fn key<'a>(
        &'a self,
        upstream: &'a str,
        key: &'a KeyRef,
    ) -> BoxFuture<'a, Result<Option<String>, String>>;
}

/// A synchronous closure is a key provider too.
impl<F> KeyProvider for F
where
    F: Fn(&str, &KeyRef) -> Result<Option<String>, String> + Send + Sync,
{
    fn key<'a>(
        &'a self,
        upstream: &'a str,
        key: &'a KeyRef,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        let r = self(upstream, key);
        Box::pin(async move { r })
    }
}

/// Receives one [`ModelCall`] per request. Called from a task off the
/// request path; it must not block (queue and return).
pub trait CallSink: Send + Sync {
    fn record(&self, call: ModelCall);
}

/// A bounded queue as the sink: a full queue drops the record (logged).
impl CallSink for tokio::sync::mpsc::Sender<ModelCall> {
    fn record(&self, call: ModelCall) {
        if self.try_send(call).is_err() {
            tracing::warn!("model call record dropped: the sink's queue is full or closed");
        }
    }
}

/// The current redactor (the set of known secrets changes while brig runs).
pub type RedactorFn = Arc<dyn Fn() -> Arc<brig_redact::Redactor> + Send + Sync>;

/// What the embedder provides.
pub struct GatewayDeps {
    pub keys: Arc<dyn KeyProvider>,
    pub redactor: RedactorFn,
    pub sink: Arc<dyn CallSink>,
}

/// One session as the gateway knows it.
#[derive(Clone, Debug)]
pub struct SessionCtx {
    pub session: String,
    pub human: Option<String>,
    pub task: Option<String>,
    /// The placeholder key the sandbox holds ([`placeholder_key`]).
    pub api_key: String,
}

/// A fresh per-session placeholder key (`sk-brig-` + 48 hex digits): the
/// only key a sandbox ever holds. It is worth nothing outside its session's
/// channel, and it is not a provider key.
pub fn placeholder_key() -> String {
    let a: u128 = rand::random();
    let b: u64 = rand::random();
    format!("sk-brig-{a:032x}{b:016x}")
}

/// The endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Responses,
    Embeddings,
    Models,
    Messages,
    CountTokens,
    Unknown,
}

impl Endpoint {
    /// The name in [`ModelCall::endpoint`].
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "messages.count_tokens",
            Endpoint::Unknown => "unknown",
        }
    }
    pub fn protocol(self) -> Protocol {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Protocol::Anthropic,
            _ => Protocol::OpenAi,
        }
    }
    /// Whether the endpoint's calls use tokens (budgets, cost).
    pub(crate) fn charged(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Responses
                | Endpoint::Embeddings
                | Endpoint::Messages
        )
    }
}

/// The control plane's decision on each call's model, after routing
/// resolved it and before budgets (brig's Cedar `model.call`). Called on
/// the request's path: quick, never blocking.
pub trait ModelGuard: Send + Sync {
    /// `Err((rule, message))` refuses the call: a provider-shaped 403.
    fn check(&self, model: &str) -> Result<(), (String, String)>;
}

pub(crate) struct SessionState {
    pub ctx: SessionCtx,
    pub guard: Option<Arc<dyn ModelGuard>>,
    /// Its ledgers: session, then human and task when it has them.
    pub scopes: Vec<budget::ScopeRef>,
    pub closed: AtomicBool,
    pub reg: Arc<upstream::Registry>,
}

pub(crate) struct Inner {
    pub config: config::Compiled,
    pub clients: Vec<upstream::Client>,
    pub sessions: RwLock<HashMap<Arc<str>, Arc<SessionState>>>,
    pub budgets: budget::Budgets,
    pub keys: Arc<dyn KeyProvider>,
    pub redactor: RedactorFn,
    pub sink: Arc<dyn CallSink>,
    /// Calls whose record is not yet written.
    pub in_flight: AtomicUsize,
    pub recorder: record::Recorder,
    /// The record prefilter's verdicts of strings seen before.
    pub clean: scrub::CleanCache,
}

/// The gateway. Share it as `Arc<Gateway>`.
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

impl Gateway {
    /// Validates `config` (the error names the key) and builds the
    /// upstream clients (TLS contexts).
    pub fn new(config: GatewayConfig, deps: GatewayDeps) -> Result<Arc<Gateway>, ConfigError> {
        let compiled = config.compile()?;
        let mut clients = Vec::with_capacity(compiled.upstreams.len());
        for u in &compiled.upstreams {
            clients.push(upstream::Client::new(u).map_err(|e| ConfigError {
                key: format!("models.upstreams.{}", u.name),
                message: e,
            })?);
        }
        Ok(Arc::new(Gateway {
            inner: Arc::new(Inner {
                config: compiled,
                clients,
                sessions: RwLock::new(HashMap::new()),
                budgets: budget::Budgets::default(),
                keys: deps.keys,
                redactor: deps.redactor,
                sink: deps.sink,
                in_flight: AtomicUsize::new(0),
                recorder: record::Recorder::default(),
                clean: scrub::CleanCache::new(),
            }),
        }))
    }

    /// The reserved host (`model.brig`).
    pub fn host(&self) -> &str {
        &self.inner.config.host
    }

    /// The environment a session's processes get so the official SDKs,
    /// Claude Code, Codex CLI and Aider use the gateway unmodified.
    pub fn session_env(&self, api_key: &str) -> Vec<(String, String)> {
        let base = format!("http://{}", self.host());
        vec![
            ("OPENAI_BASE_URL".into(), format!("{base}/v1")),
            ("OPENAI_API_BASE".into(), format!("{base}/v1")),
            ("OPENAI_API_KEY".into(), api_key.into()),
            ("ANTHROPIC_BASE_URL".into(), base),
            ("ANTHROPIC_API_KEY".into(), api_key.into()),
        ]
    }

    /// Lets the session's channel use the gateway; replaces a session of
    /// the same id (its in-flight requests are aborted).
    pub fn open_session(&self, ctx: SessionCtx) {
        self.open_session_guarded(ctx, None)
    }

    /// [`Gateway::open_session`], with `guard` deciding each call's model.
    pub fn open_session_guarded(&self, ctx: SessionCtx, guard: Option<Arc<dyn ModelGuard>>) {
        let id: Arc<str> = Arc::from(ctx.session.as_str());
        let b = &self.inner.budgets;
        let mut scopes = vec![b.scope_ref(Scope::Session, &ctx.session)];
        if let Some(h) = &ctx.human {
            scopes.push(b.scope_ref(Scope::Human, h));
        }
        if let Some(t) = &ctx.task {
            scopes.push(b.scope_ref(Scope::Task, t));
        }
        let s = Arc::new(SessionState {
            ctx,
            guard,
            scopes,
            closed: AtomicBool::new(false),
            reg: Arc::new(upstream::Registry::default()),
        });
        let old = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, s);
        if let Some(old) = old {
            old.closed.store(true, Ordering::SeqCst);
            old.reg.abort_all();
        }
    }

    /// Refuses the session's further requests (401) and aborts its
    /// upstream requests in flight (their streams end with an error event).
    /// Whether the session was open.
    pub fn close_session(&self, session: &str) -> bool {
        let s = self
            .inner
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
        match s {
            Some(s) => {
                s.closed.store(true, Ordering::SeqCst);
                s.reg.abort_all();
                true
            }
            None => false,
        }
    }

    /// Adds persisted totals (at start) to a scope key's ledger.
    pub fn seed_usage(&self, scope: Scope, key: &str, tokens: u64, spend_usd: f64) {
        self.inner.budgets.seed(scope, key, tokens, spend_usd);
    }

    /// What a scope key has used (none when it has made no request).
    pub fn usage(&self, scope: Scope, key: &str) -> Option<Usage> {
        self.inner.budgets.usage(scope, key)
    }

    /// Requests whose record has not been handed to the sink yet (0 when
    /// the gateway is idle: nothing is left behind).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Serves HTTP/1.1 on a connection handed over for `session` (the
    /// channel's session, never anything the request says); `buffered` is
    /// what was already read of it. Ends when the connection does.
    pub fn serve_connection<I>(
        self: &Arc<Self>,
        session: Arc<str>,
        io: I,
        buffered: Vec<u8>,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        serve::serve_connection(self.inner.clone(), session, io, buffered)
    }

    /// The gateway as a local service of the proxy channels.
    pub fn service(self: &Arc<Self>) -> GatewayService {
        GatewayService(self.clone())
    }
}

/// [`Gateway`] as a `brig_proxy::local::LocalService` (one for all
/// sessions: the proxy tells which session a connection belongs to).
#[derive(Clone)]
pub struct GatewayService(pub Arc<Gateway>);

impl LocalService for GatewayService {
    fn host(&self) -> &str {
        self.0.host()
    }

    fn serve(
        &self,
        session: Arc<str>,
        stream: Box<dyn LocalStream>,
        buffered: Vec<u8>,
    ) -> brig_proxy::local::BoxFuture<'static, ()> {
        Box::pin(self.0.serve_connection(session, stream, buffered))
    }
}
