//! One MCP connection (a stdio process, or one `Mcp-Session-Id` over
//! HTTP): the lifecycle (`initialize`, `notifications/initialized`,
//! `ping`), version negotiation, `tools/list` and `tools/call`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::api::BrigApi;
use crate::jsonrpc::{self, Incoming, Message, RpcError};
use crate::tools::{self, Context};

/// The protocol revisions brig speaks, newest first. A client asking for
/// another gets the newest (and may disconnect if it cannot speak it).
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-06-18", "2025-03-26", "2024-11-05"];
pub const LATEST_PROTOCOL_VERSION: &str = PROTOCOL_VERSIONS[0];

/// Which version to answer `initialize` with.
pub fn negotiate(requested: &str) -> &'static str {
    PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST_PROTOCOL_VERSION)
}

const INSTRUCTIONS: &str = "These tools drive a brig session: a disposable Linux sandbox with the repository in /workspace. \
Start with session_create (or session_attach), then exec, file_read/file_write/file_list, diff, plan_submit, push and pr_open. \
Every call is decided by brig's policy and journaled under your principal; a refusal says which policy decided and how to ask for access. \
A command that needs a human's approval answers with the approval id: check it with approval_status.";

struct State {
    version: Option<&'static str>,
    initialized: bool,
}

/// One MCP connection over brig's API.
pub struct McpSession<A: BrigApi> {
    api: Mutex<Arc<A>>,
    state: Mutex<State>,
    ctx: Context,
}

impl<A: BrigApi> McpSession<A> {
    pub fn new(api: Arc<A>) -> McpSession<A> {
        McpSession {
            api: Mutex::new(api),
            state: Mutex::new(State {
                version: None,
                initialized: false,
            }),
            ctx: Context::default(),
        }
    }

    /// The API handle later calls use (the HTTP transport gives each
    /// request's own credential).
    pub fn set_api(&self, api: Arc<A>) {
        *self.api.lock().unwrap_or_else(|p| p.into_inner()) = api;
    }

    fn api(&self) -> Arc<A> {
        self.api.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The negotiated protocol version, once `initialize` was answered.
    pub fn protocol_version(&self) -> Option<&'static str> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).version
    }

    /// The brig session tool calls use by default.
    pub fn current_session(&self) -> Option<String> {
        self.ctx.current()
    }

    /// One body (a line, or a POST): the response to send, if any (a batch
    /// gets an array; notifications and responses get nothing).
    pub async fn handle_bytes(&self, bytes: &[u8]) -> Option<Value> {
        match jsonrpc::parse(bytes) {
            Err(e) => Some(jsonrpc::error(&Value::Null, &e)),
            Ok(Incoming::Single(m)) => self.handle(m).await,
            Ok(Incoming::Batch(ms)) => {
                let mut out = Vec::new();
                for m in ms {
                    if let Some(r) = self.handle(m).await {
                        out.push(r);
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
        }
    }

    /// One message: its response (requests and invalid messages only).
    pub async fn handle(&self, m: Message) -> Option<Value> {
        match m {
            Message::Invalid { id, error } => Some(jsonrpc::error(&id, &error)),
            Message::Response => None,
            Message::Notification { method, .. } => {
                if method == "notifications/initialized" {
                    self.state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .initialized = true;
                }
                // Anything else (cancelled, progress, roots/list_changed):
                // nothing to do, and notifications get no answer.
                None
            }
            Message::Request { id, method, params } => {
                Some(match self.request(&method, params).await {
                    Ok(v) => jsonrpc::result(&id, v),
                    Err(e) => jsonrpc::error(&id, &e),
                })
            }
        }
    }

    async fn request(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "initialize" => self.initialize(params),
            "ping" => Ok(json!({})),
            "tools/list" | "tools/call" if self.protocol_version().is_none() => Err(
                RpcError::invalid_request("not initialized: send initialize first"),
            ),
            "tools/list" => Ok(json!({"tools": tools::definitions()})),
            "tools/call" => {
                let p = match params {
                    Some(Value::Object(p)) => p,
                    _ => {
                        return Err(RpcError::invalid_params(
                            "tools/call needs params {\"name\", \"arguments\"}",
                        ))
                    }
                };
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| RpcError::invalid_params("tools/call needs a tool \"name\""))?;
                let arguments = p.get("arguments").cloned().unwrap_or(Value::Null);
                let structured = self.protocol_version().is_some_and(|v| v >= "2025-06-18");
                let api = self.api();
                let r = tools::call(&api, &self.ctx, name, arguments).await?;
                Ok(r.to_value(structured))
            }
            // Capabilities brig does not offer: empty lists rather than
            // errors, for clients that ask regardless.
            "resources/list" => Ok(json!({"resources": []})),
            "resources/templates/list" => Ok(json!({"resourceTemplates": []})),
            "prompts/list" => Ok(json!({"prompts": []})),
            m => Err(RpcError::method_not_found(m)),
        }
    }

    fn initialize(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let requested = params
            .as_ref()
            .and_then(|p| p.get("protocolVersion"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RpcError::invalid_params("initialize needs params.protocolVersion (a string)")
            })?;
        let version = negotiate(requested);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.version.is_some() {
                return Err(RpcError::invalid_request(
                    "already initialized (start a new connection to initialize again)",
                ));
            }
            st.version = Some(version);
        }
        Ok(json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "brig", "title": "brig", "version": env!("CARGO_PKG_VERSION")},
            "instructions": INSTRUCTIONS,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Method;
    use crate::jsonrpc::{INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
    use brig_core::{Error, ErrorKind};

    /// A fake brig: records calls, answers from a script.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<(Method, String, Option<Value>)>>,
    }

    impl BrigApi for Fake {
        async fn call(
            &self,
            method: Method,
            path: &str,
            body: Option<Value>,
        ) -> brig_core::Result<Value> {
            self.calls
                .lock()
                .unwrap()
                .push((method, path.to_string(), body.clone()));
            match (method, path) {
                (Method::Get, "/v1/whoami") => {
                    Ok(json!({"id": "local:ada", "name": "ada", "via": "local", "roles": []}))
                }
                (Method::Post, "/v1/sessions") => Ok(
                    json!({"id": "s-abcdefgh23", "task": body.unwrap()["task"], "profile": "default", "human": "local:ada"}),
                ),
                (Method::Post, p) if p.ends_with("/exec") => {
                    let argv = body.unwrap()["argv"].clone();
                    if argv[0] == "alembic" {
                        return Err(Error::new(
                            ErrorKind::Denied,
                            "exec denied by policy pr.no-sensitive-exec",
                        )
                        .hint("ask for a privileged session"));
                    }
                    Ok(
                        json!({"exec_id": "x-1", "status": {"code": 3}, "stdout": "hi\n", "stderr": "", "stdout_bytes": 3, "stderr_bytes": 0, "truncated": false, "duration_ms": 1}),
                    )
                }
                _ => Err(Error::not_found(format!("no {path}"))),
            }
        }
    }

    fn session() -> (Arc<Fake>, McpSession<Fake>) {
        let f = Arc::new(Fake::default());
        (f.clone(), McpSession::new(f))
    }

    async fn rpc(s: &McpSession<Fake>, v: Value) -> Value {
        s.handle_bytes(v.to_string().as_bytes()).await.unwrap()
    }

    async fn init(s: &McpSession<Fake>) -> Value {
        let r = rpc(s, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})).await;
        assert!(s
            .handle_bytes(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await
            .is_none());
        r
    }

    #[tokio::test]
    async fn bad_json_is_a_parse_error() {
        let (_, s) = session();
        let r = s.handle_bytes(b"{not json").await.unwrap();
        assert_eq!(r["error"]["code"], PARSE_ERROR);
        assert_eq!(r["id"], Value::Null);
    }

    #[tokio::test]
    async fn unknown_methods_are_method_not_found() {
        let (_, s) = session();
        init(&s).await;
        let r = rpc(
            &s,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/frobnicate"}),
        )
        .await;
        assert_eq!(r["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(r["id"], 7);
    }

    #[tokio::test]
    async fn bad_params_are_invalid_params() {
        let (fake, s) = session();
        init(&s).await;
        for (params, what) in [
            (
                json!({"name": "exec", "arguments": {"argv": "ls"}}),
                "argv not a list",
            ),
            (
                json!({"name": "exec", "arguments": {"argv": ["ls"], "bogus": 1}}),
                "unknown argument",
            ),
            (
                json!({"name": "file_read", "arguments": {}}),
                "missing path",
            ),
            (
                json!({"name": "no_such_tool", "arguments": {}}),
                "unknown tool",
            ),
            (json!({"arguments": {}}), "no name"),
            (
                json!({"name": "exec", "arguments": {"argv": ["ls"], "session": "not-a-session"}}),
                "bad session id",
            ),
        ] {
            let r = rpc(
                &s,
                json!({"jsonrpc": "2.0", "id": "p", "method": "tools/call", "params": params}),
            )
            .await;
            assert_eq!(r["error"]["code"], INVALID_PARAMS, "{what}: {r}");
        }
        let r = rpc(
            &s,
            json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {}}),
        )
        .await;
        assert_eq!(r["error"]["code"], INVALID_PARAMS);
        assert!(
            fake.calls.lock().unwrap().is_empty(),
            "nothing reached brig"
        );
    }

    #[tokio::test]
    async fn versions_are_negotiated_and_tools_need_initialize() {
        let (_, s) = session();
        let r = rpc(
            &s,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
        assert_eq!(r["error"]["code"], INVALID_REQUEST);
        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})).await;
        assert_eq!(r["result"], json!({}));
        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2099-01-01"}})).await;
        assert_eq!(r["result"]["protocolVersion"], LATEST_PROTOCOL_VERSION);
        assert_eq!(r["result"]["serverInfo"]["name"], "brig");
        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}})).await;
        assert_eq!(r["error"]["code"], INVALID_REQUEST, "initialize once");
        let (_, s2) = session();
        let r = rpc(&s2, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}})).await;
        assert_eq!(r["result"]["protocolVersion"], "2025-03-26");
    }

    #[tokio::test]
    async fn tool_calls_go_through_the_api_and_refusals_are_results() {
        let (fake, s) = session();
        init(&s).await;
        let r = rpc(
            &s,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
        let names: Vec<&str> = r["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        for n in [
            "session_create",
            "exec",
            "file_read",
            "file_write",
            "file_list",
            "diff",
            "plan_submit",
            "approval_request",
            "push",
            "pr_open",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        // No session yet: an isError result that says how to get one.
        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "exec", "arguments": {"argv": ["true"]}}})).await;
        assert_eq!(r["result"]["isError"], true, "{r}");
        assert!(r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("session_create"));

        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "session_create", "arguments": {"task": "T-1"}}})).await;
        assert_eq!(r["result"]["isError"], false, "{r}");
        assert_eq!(s.current_session().as_deref(), Some("s-abcdefgh23"));

        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "exec", "arguments": {"command": "echo hi; exit 3"}}})).await;
        assert_eq!(r["result"]["isError"], false, "{r}");
        assert_eq!(r["result"]["structuredContent"]["exit_code"], 3);
        assert_eq!(r["result"]["structuredContent"]["stdout"], "hi\n");

        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "exec", "arguments": {"argv": ["alembic", "upgrade", "head"]}}})).await;
        assert_eq!(r["result"]["isError"], true, "{r}");
        let text = r["result"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("pr.no-sensitive-exec") && text.contains("hint:"),
            "{text}"
        );
        assert_eq!(r["result"]["structuredContent"]["error"]["kind"], "denied");

        // A path out of /workspace never reaches brig.
        let before = fake.calls.lock().unwrap().len();
        let r = rpc(&s, json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {"name": "file_read", "arguments": {"path": "../etc/shadow"}}})).await;
        assert_eq!(r["result"]["isError"], true, "{r}");
        assert_eq!(fake.calls.lock().unwrap().len(), before);

        // The sh -c command and a helper script pass the path as an argument.
        let _ = rpc(&s, json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "file_read", "arguments": {"path": "a b;$(rm -rf x)"}}})).await;
        let calls = fake.calls.lock().unwrap();
        let (_, path, body) = calls.last().unwrap();
        assert_eq!(path, "/v1/sessions/s-abcdefgh23/exec");
        let argv = body.as_ref().unwrap()["argv"].as_array().unwrap().clone();
        assert_eq!(argv[4], "/workspace/a b;$(rm -rf x)");
        assert!(!argv[2].as_str().unwrap().contains("rm -rf"));
    }

    #[tokio::test]
    async fn batches_and_notifications() {
        let (_, s) = session();
        init(&s).await;
        let r = s
            .handle_bytes(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#)
            .await
            .unwrap();
        let a = r.as_array().unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0]["result"], json!({}));
        assert_eq!(a[1]["error"]["code"], METHOD_NOT_FOUND);
        assert!(s
            .handle_bytes(br#"{"jsonrpc":"2.0","id":9,"result":{}}"#)
            .await
            .is_none());
    }
}
