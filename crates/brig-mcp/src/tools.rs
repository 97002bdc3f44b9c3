//! The tools: each one is a few calls of brig's API (docs/MCP.md has the
//! table). Files, the diff and the push run inside the session through
//! the exec API with a fixed script and the path as an argument (never
//! interpolated into a command line), so they are decided by policy and
//! journaled like any other command.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::{Error, ErrorKind};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{encode_component, BrigApi, Method};
use crate::jsonrpc::RpcError;

/// How a tool call ended, before it is shaped as an MCP `CallToolResult`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    pub text: String,
    pub structured: Value,
    pub is_error: bool,
}

impl ToolResult {
    pub fn ok(text: impl Into<String>, structured: Value) -> ToolResult {
        ToolResult {
            text: text.into(),
            structured,
            is_error: false,
        }
    }
    pub fn error(text: impl Into<String>, structured: Value) -> ToolResult {
        ToolResult {
            text: text.into(),
            structured,
            is_error: true,
        }
    }

    /// What brig refused or failed, as brig said it (kind, message, hint).
    pub fn refused(e: &Error) -> ToolResult {
        let kind = serde_json::to_value(e.kind).unwrap_or(Value::Null);
        let lead = match e.kind {
            ErrorKind::Denied => "refused by brig",
            ErrorKind::Unauthorized => "not authenticated",
            ErrorKind::NotFound => "not found",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Unavailable => "brig is unavailable",
            _ => "brig failed",
        };
        let mut text = format!("{lead}: {}", e.message);
        if let Some(h) = &e.hint {
            text.push_str(&format!("\nhint: {h}"));
        }
        ToolResult::error(
            text,
            json!({"error": {"kind": kind, "message": e.message, "hint": e.hint}}),
        )
    }

    /// The MCP `CallToolResult`; `structuredContent` from protocol
    /// 2025-06-18 on.
    pub fn to_value(&self, structured: bool) -> Value {
        let mut v = json!({
            "content": [{"type": "text", "text": self.text}],
            "isError": self.is_error,
        });
        if structured && self.structured.is_object() {
            v["structuredContent"] = self.structured.clone();
        }
        v
    }
}

/// An exec that waits for a human's approval, still running after its
/// tool call answered; `approval_status` reports its result.
#[derive(Clone)]
pub struct Job {
    pub session: String,
    pub command: String,
    pub result: Arc<Mutex<Option<std::result::Result<Value, Error>>>>,
}

/// One MCP connection's state: the session it drives and its jobs.
#[derive(Default)]
pub struct Context {
    current: Mutex<Option<String>>,
    jobs: Mutex<HashMap<String, Job>>,
}

impl Context {
    pub fn current(&self) -> Option<String> {
        lock(&self.current).clone()
    }
    fn set_current(&self, id: &str) {
        *lock(&self.current) = Some(id.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ------------------------------------------------------------ definitions

fn session_prop() -> Value {
    json!({"type": "string", "description": "Session id (s-…); default: the session this connection created or attached to last."})
}

fn command_props() -> serde_json::Map<String, Value> {
    let v = json!({
        "session": session_prop(),
        "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                 "description": "The program and its arguments, run as given (no shell). Give argv or command."},
        "command": {"type": "string", "description": "A shell command line, run as /bin/sh -c COMMAND. Give argv or command."},
        "cwd": {"type": "string", "description": "Working directory inside the sandbox (default /workspace)."},
        "env": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Extra environment variables."},
        "stdin": {"type": "string", "description": "Text given to the command on its standard input."},
        "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "Kill the command after this many seconds (default 600)."}
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn tool(
    name: &str,
    title: &str,
    description: &str,
    props: Value,
    required: &[&str],
    read_only: bool,
) -> Value {
    let mut t = json!({
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": {
            "type": "object",
            "properties": props,
            "additionalProperties": false,
        },
        "annotations": {"title": title, "readOnlyHint": read_only, "openWorldHint": false},
    });
    if !required.is_empty() {
        t["inputSchema"]["required"] = json!(required);
    }
    t
}

/// Every tool, as `tools/list` shows it.
pub fn definitions() -> Vec<Value> {
    let cmd = Value::Object(command_props());
    vec![
        tool("whoami", "Who am I", "The principal brig sees behind this MCP connection (every tool call acts as it).", json!({}), &[], true),
        tool(
            "session_create",
            "Create a session",
            "Create a brig session (a fresh sandbox with /workspace) for a task and attach to it. Policy decides whether you may (session.create); it is journaled under your principal.",
            json!({
                "task": {"type": "string", "description": "The task this session works on (a ticket key, e.g. JIRA-1234)."},
                "repo": {"type": "string", "description": "A git repository or directory on the brig host (absolute path), or a [repos.NAME] of brig.toml."},
                "ref": {"type": "string", "description": "Branch, tag or commit to pin (default the repository's HEAD)."},
                "sparse": {"type": "array", "items": {"type": "string"}, "description": "Check out only these directories."},
                "depth": {"type": "integer", "minimum": 1},
                "profile": {"type": "string", "description": "Profile of brig.toml (default: default)."},
                "image": {"type": "string"},
                "runtime": {"type": "string", "description": "native, gvisor or oci:/path."},
                "cpus": {"type": "number", "exclusiveMinimum": 0},
                "memory": {"type": "string", "description": "e.g. 2G"},
                "pids": {"type": "integer", "minimum": 1},
                "disk": {"type": "string", "description": "Size cap of /workspace, e.g. 10G"},
                "idle": {"type": "string", "description": "Destroy after this long idle, e.g. 15m"},
                "timebox": {"type": "string", "description": "Destroy this long after start, e.g. 2h"}
            }),
            &["task"],
            false,
        ),
        tool("session_attach", "Attach to a session", "Make an existing session the one later tool calls use by default.", json!({"session": {"type": "string", "description": "Session id (s-…)."}}), &["session"], true),
        tool("session_list", "List sessions", "Live sessions (all, also ended ones, with all=true).", json!({"all": {"type": "boolean"}}), &[], true),
        tool("session_show", "Show a session", "A session's state, limits, git checkout (bot branch prefix) and recent egress denials.", json!({"session": session_prop()}), &[], true),
        tool("session_events", "Session journal", "The session's journal events (newest last): commands and exit codes, policy decisions, network, git, approvals.", json!({"session": session_prop(), "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "description": "At most this many of the newest (default 50)."}, "action": {"type": "string", "description": "Only actions starting with this, e.g. exec. or policy."}}), &[], true),
        tool("session_destroy", "Destroy a session", "End a session: graceful (TERM, grace, KILL) or, with kill=true, at once. Decided by policy (session.kill).", json!({"session": session_prop(), "kill": {"type": "boolean"}}), &[], false),
        tool("exec", "Run a command", "Run a command in the session's sandbox (cwd /workspace) and return its exit code, stdout and stderr. Policy decides every command; a refusal comes back as an error naming the policy. A command that needs a human's approval answers at once with the approval id and runs once approved (see approval_status). A non-zero exit code is a normal result, not an error.", cmd.clone(), &[], false),
        tool(
            "file_read",
            "Read a file",
            "Read a file under /workspace (a path relative to /workspace, or absolute under it; '..' and symlinks out of /workspace are refused).",
            json!({"session": session_prop(), "path": {"type": "string"}, "encoding": {"type": "string", "enum": ["text", "base64"], "description": "text (default) or base64 for binary files."}, "max_bytes": {"type": "integer", "minimum": 1, "maximum": 786432, "description": "Read at most this many bytes (default 262144)."}}),
            &["path"],
            true,
        ),
        tool(
            "file_write",
            "Write a file",
            "Create or replace a file under /workspace (parent directories are created). Paths as for file_read.",
            json!({"session": session_prop(), "path": {"type": "string"}, "content": {"type": "string"}, "encoding": {"type": "string", "enum": ["text", "base64"], "description": "How content is given: text (default) or base64."}}),
            &["path", "content"],
            false,
        ),
        tool(
            "file_list",
            "List files",
            "List a directory under /workspace: type (f file, d directory, l symlink), size and path of each entry; .git is listed, not entered.",
            json!({"session": session_prop(), "path": {"type": "string", "description": "Default /workspace."}, "depth": {"type": "integer", "minimum": 1, "maximum": 32, "description": "How deep to go (default 1; 32 = everything)."}, "max_entries": {"type": "integer", "minimum": 1, "maximum": 10000, "description": "Default 1000."}}),
            &[],
            true,
        ),
        tool(
            "diff",
            "Show the diff",
            "What changed in /workspace against the pinned commit (tracked and new files, as git diff). With branch: the pull-request preview of that pushed branch (commits, diffstat, diff, gate result).",
            json!({"session": session_prop(), "branch": {"type": "string", "description": "A pushed bot branch: show its PR preview instead."}}),
            &[],
            true,
        ),
        tool(
            "plan_submit",
            "Submit a plan",
            "Submit a structured plan for the humans: goal, steps, estimated blast radius, rollback. Journaled (plan.submit); approval requests made later name it.",
            json!({
                "session": session_prop(),
                "goal": {"type": "string"},
                "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "blast_radius": {"type": "object", "properties": {
                    "files": {"type": "array", "items": {"type": "string"}},
                    "services": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "string"}}
                }, "additionalProperties": false},
                "rollback": {"type": "string", "description": "How to undo it."}
            }),
            &["goal", "steps", "rollback"],
            false,
        ),
        tool("approval_request", "Request an approval", "Ask for the human approval a sensitive command needs (policy decides which, e.g. a migration needs a db-approver). Answers at once with the approval request; the command runs as soon as a human approves it (call approval_status for its result). A command that needs no approval simply runs.", cmd, &[], false),
        tool("approval_status", "Approval status", "An approval request's state (pending, approved, denied, expired, cancelled), who decided, and the result of the command that waited for it.", json!({"id": {"type": "string", "description": "Approval id (apr-…)."}}), &["id"], true),
        tool("approval_list", "List approvals", "Approval requests of the session (all sessions with all_sessions=true), pending ones by default.", json!({"session": session_prop(), "state": {"type": "string", "enum": ["pending", "approved", "denied", "expired", "cancelled", "any"]}, "all_sessions": {"type": "boolean"}}), &[], true),
        tool(
            "push",
            "Push",
            "Push HEAD of /workspace through brig's git gateway to a bot branch (default <bot prefix>work). With message: first commit every change (git add -A; git commit). The gateway's ref rules, the secret scan and policy decide; a rejection names its rule.",
            json!({"session": session_prop(), "branch": {"type": "string", "description": "Branch to push to (must be under the session's bot prefix to be accepted)."}, "message": {"type": "string", "description": "Commit all changes with this message first."}}),
            &[],
            false,
        ),
        tool(
            "pr_open",
            "Open the pull request",
            "Run the test gate on a pushed bot branch and, if it passes and policy allows (pr.open), open the pull request on the session's forge.",
            json!({"session": session_prop(), "title": {"type": "string"}, "body": {"type": "string"}, "branch": {"type": "string", "description": "The pushed branch (default <bot prefix>work)."}}),
            &["title"],
            false,
        ),
    ]
}

// -------------------------------------------------------------- arguments

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionArg {
    #[serde(default)]
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    task: String,
    #[serde(default)]
    repo: Option<String>,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    sparse: Vec<String>,
    #[serde(default)]
    depth: Option<u32>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    runtime: Option<String>,
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    pids: Option<u64>,
    #[serde(default)]
    disk: Option<String>,
    #[serde(default)]
    idle: Option<String>,
    #[serde(default)]
    timebox: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachArgs {
    session: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default)]
    all: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    action: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DestroyArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    kill: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Text,
    Base64,
}

impl Encoding {
    fn as_str(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Base64 => "base64",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    #[serde(default)]
    session: Option<String>,
    path: String,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    max_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    #[serde(default)]
    session: Option<String>,
    path: String,
    content: String,
    #[serde(default)]
    encoding: Encoding,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFilesArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    depth: Option<u32>,
    #[serde(default)]
    max_entries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    branch: Option<String>,
}

#[derive(Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
struct BlastRadius {
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    data: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanArgs {
    #[serde(default)]
    session: Option<String>,
    goal: String,
    steps: Vec<String>,
    #[serde(default)]
    blast_radius: BlastRadius,
    rollback: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalArgs {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalListArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    all_sessions: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushArgs {
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrArgs {
    #[serde(default)]
    session: Option<String>,
    title: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    branch: Option<String>,
}

fn args<T: DeserializeOwned>(tool: &str, v: Value) -> Result<T, RpcError> {
    serde_json::from_value(v)
        .map_err(|e| RpcError::invalid_params(format!("invalid arguments for {tool}: {e}")))
}

// ---------------------------------------------------------------- dispatch

/// Run tool `name`. Unknown tools and arguments that do not fit the
/// tool's schema are JSON-RPC errors (`-32602`); everything brig refused
/// or that failed is an `isError` result.
pub async fn call<A: BrigApi>(
    api: &Arc<A>,
    ctx: &Context,
    name: &str,
    arguments: Value,
) -> Result<ToolResult, RpcError> {
    let arguments = match arguments {
        Value::Null => json!({}),
        v @ Value::Object(_) => v,
        _ => return Err(RpcError::invalid_params("tool arguments must be an object")),
    };
    let r = match name {
        "whoami" => {
            let _: NoArgs = args(name, arguments)?;
            whoami(api).await
        }
        "session_create" => session_create(api, ctx, args(name, arguments)?).await,
        "session_attach" => {
            let a: AttachArgs = args(name, arguments)?;
            let id = session_id(&a.session)?;
            session_show(api, ctx, &id, true).await
        }
        "session_list" => session_list(api, args(name, arguments)?).await,
        "session_show" => {
            let a: SessionArg = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => session_show(api, ctx, &id, false).await,
                Err(r) => Ok(r),
            }
        }
        "session_events" => {
            let a: EventsArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => session_events(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        "session_destroy" => {
            let a: DestroyArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => session_destroy(api, &id, a.kill).await,
                Err(r) => Ok(r),
            }
        }
        "exec" | "approval_request" => {
            let a: ExecArgs = args(name, arguments)?;
            let asking = name == "approval_request";
            let (id, req) = match exec_request(ctx, a)? {
                Ok(x) => x,
                Err(r) => return Ok(r),
            };
            exec_tool(api, ctx, &id, req, asking).await
        }
        "file_read" => {
            let a: ReadArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => file_read(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        "file_write" => {
            let a: WriteArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => file_write(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        "file_list" => {
            let a: ListFilesArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => file_list(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        "diff" => {
            let a: DiffArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => diff(api, &id, a.branch).await,
                Err(r) => Ok(r),
            }
        }
        "plan_submit" => {
            let a: PlanArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => plan_submit(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        "approval_status" => {
            let a: ApprovalArgs = args(name, arguments)?;
            approval_status(api, ctx, &a.id).await
        }
        "approval_list" => approval_list(api, ctx, args(name, arguments)?).await,
        "push" => {
            let a: PushArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => push(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        "pr_open" => {
            let a: PrArgs = args(name, arguments)?;
            match pick(ctx, a.session.as_deref())? {
                Ok(id) => pr_open(api, &id, a).await,
                Err(r) => Ok(r),
            }
        }
        _ => {
            return Err(RpcError::invalid_params(format!("unknown tool: {name}"))
                .with_data(json!({"tools": definitions().iter().map(|t| t["name"].clone()).collect::<Vec<_>>()})))
        }
    };
    Ok(r.unwrap_or_else(|e| ToolResult::refused(&e)))
}

type ToolOut = Result<ToolResult, Error>;

fn session_id(s: &str) -> Result<String, RpcError> {
    s.parse::<brig_core::SessionId>()
        .map(String::from)
        .map_err(|e| RpcError::invalid_params(format!("invalid session id {s:?}: {}", e.message)))
}

/// The session a call is about: given, or the connection's current one.
/// `Ok(Err(result))`: there is none (an isError result that says how).
fn pick(ctx: &Context, given: Option<&str>) -> Result<Result<String, ToolResult>, RpcError> {
    match given {
        Some(s) => Ok(Ok(session_id(s)?)),
        None => Ok(ctx.current().ok_or_else(|| {
            ToolResult::error(
                "no session: call session_create (or session_attach with an id) first, or pass session",
                json!({"error": {"kind": "invalid_input", "message": "no session"}}),
            )
        })),
    }
}

async fn whoami<A: BrigApi>(api: &Arc<A>) -> ToolOut {
    let v = api.call(Method::Get, "/v1/whoami", None).await?;
    Ok(ToolResult::ok(
        format!(
            "{} ({}, via {}; roles: {})",
            s(&v["id"]),
            s(&v["name"]),
            s(&v["via"]),
            join(&v["roles"])
        ),
        v,
    ))
}

async fn session_create<A: BrigApi>(api: &Arc<A>, ctx: &Context, a: CreateArgs) -> ToolOut {
    if let Some(r) = &a.repo {
        if r.contains('/') && !r.starts_with('/') {
            return Err(Error::invalid(format!("repo {r:?} is a relative path"))
                .hint("give an absolute path on the brig host, or a [repos.NAME] of brig.toml"));
        }
    }
    let mut body = json!({"task": a.task});
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            body[k] = v;
        }
    };
    put("repo", json!(a.repo));
    put("ref", json!(a.git_ref));
    if !a.sparse.is_empty() {
        put("sparse", json!(a.sparse));
    }
    put("depth", json!(a.depth));
    put("profile", json!(a.profile));
    put("image", json!(a.image));
    put("runtime", json!(a.runtime));
    put("cpus", json!(a.cpus));
    put("memory", json!(a.memory));
    put("pids", json!(a.pids));
    put("disk", json!(a.disk));
    put("idle", json!(a.idle));
    put("timebox", json!(a.timebox));
    let v = api.call(Method::Post, "/v1/sessions", Some(body)).await?;
    let id = s(&v["id"]).to_string();
    ctx.set_current(&id);
    Ok(ToolResult::ok(
        format!(
            "created session {id} (task {}, profile {}, human {}); later calls use it by default",
            s(&v["task"]),
            s(&v["profile"]),
            s(&v["human"])
        ),
        v,
    ))
}

async fn session_show<A: BrigApi>(api: &Arc<A>, ctx: &Context, id: &str, attach: bool) -> ToolOut {
    let v = api
        .call(Method::Get, &format!("/v1/sessions/{id}"), None)
        .await?;
    let mut text = format!(
        "session {id}: {} (task {}, profile {}, human {})",
        s(&v["state"]),
        s(&v["task"]),
        s(&v["profile"]),
        s(&v["human"])
    );
    if let Some(g) = v["git"].as_object() {
        text.push_str(&format!(
            "\ngit: {} at {}, pushes go to {}…",
            g.get("source").map(s).unwrap_or("-"),
            g.get("commit").map(s).unwrap_or("-"),
            g.get("bot_prefix").map(s).unwrap_or("-")
        ));
    }
    if attach {
        if v["state"] != "running" {
            return Ok(ToolResult::error(
                format!("{text}\nnot attached: the session is not running"),
                v,
            ));
        }
        ctx.set_current(id);
        text.push_str("\nattached: later calls use this session by default");
    }
    Ok(ToolResult::ok(text, v))
}

async fn session_list<A: BrigApi>(api: &Arc<A>, a: ListArgs) -> ToolOut {
    let path = if a.all {
        "/v1/sessions?all=true"
    } else {
        "/v1/sessions"
    };
    let v = api.call(Method::Get, path, None).await?;
    let list = v.as_array().cloned().unwrap_or_default();
    let text = if list.is_empty() {
        "no sessions".to_string()
    } else {
        list.iter()
            .map(|x| {
                format!(
                    "{}  {}  {}  {}  {}",
                    s(&x["id"]),
                    s(&x["state"]),
                    s(&x["task"]),
                    s(&x["profile"]),
                    s(&x["human"])
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(ToolResult::ok(text, json!({"sessions": list})))
}

async fn session_events<A: BrigApi>(api: &Arc<A>, id: &str, a: EventsArgs) -> ToolOut {
    let v = api
        .call(Method::Get, &format!("/v1/sessions/{id}/events"), None)
        .await?;
    let mut list: Vec<Value> = v.as_array().cloned().unwrap_or_default();
    if let Some(p) = &a.action {
        list.retain(|e| s(&e["action"]).starts_with(p.as_str()));
    }
    let n = a.limit.unwrap_or(50).clamp(1, 1000);
    if list.len() > n {
        list.drain(..list.len() - n);
    }
    let text = list
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {}{}",
                s(&e["time"]),
                s(&e["action"]),
                s(&e["outcome"]),
                e["rule"]
                    .as_str()
                    .map(|r| format!("[{r}] "))
                    .unwrap_or_default(),
                e["details"]
                    .as_object()
                    .map(|d| truncate(&Value::Object(d.clone()).to_string(), 300))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ToolResult::ok(
        if text.is_empty() {
            "no events".into()
        } else {
            text
        },
        json!({"events": list}),
    ))
}

async fn session_destroy<A: BrigApi>(api: &Arc<A>, id: &str, kill: bool) -> ToolOut {
    let v = if kill {
        api.call(Method::Post, &format!("/v1/sessions/{id}/kill"), None)
            .await?
    } else {
        api.call(Method::Delete, &format!("/v1/sessions/{id}"), None)
            .await?
    };
    Ok(ToolResult::ok(
        format!("session {id} ended: {}", s(&v["state"])),
        v,
    ))
}

// -------------------------------------------------------------------- exec

/// The default per-command timeout of a tool's exec.
const DEFAULT_TIMEOUT_SECS: u64 = 600;

fn exec_request(
    ctx: &Context,
    a: ExecArgs,
) -> Result<Result<(String, Value), ToolResult>, RpcError> {
    let id = match pick(ctx, a.session.as_deref())? {
        Ok(id) => id,
        Err(r) => return Ok(Err(r)),
    };
    let argv = match (a.argv, a.command) {
        (Some(v), None) if !v.is_empty() => v,
        (None, Some(c)) if !c.trim().is_empty() => vec!["/bin/sh".into(), "-c".into(), c],
        (Some(_), Some(_)) => {
            return Err(RpcError::invalid_params("give argv or command, not both"))
        }
        _ => {
            return Err(RpcError::invalid_params(
                "give argv (a non-empty list) or command",
            ))
        }
    };
    let timeout = a
        .timeout_secs
        .unwrap_or(DEFAULT_TIMEOUT_SECS)
        .clamp(1, 86_400);
    let mut req = json!({
        "argv": argv,
        "env": a.env.into_iter().collect::<Vec<(String, String)>>(),
        "timeout_ms": timeout * 1000,
    });
    if let Some(c) = a.cwd {
        req["cwd"] = c.into();
    }
    if let Some(i) = a.stdin {
        req["stdin"] = i.into();
    }
    Ok(Ok((id, req)))
}

/// How an exec through the API ended, seen from the tool.
enum ExecEnd {
    Done(Value),
    Failed(Error),
    /// Policy asked for a human's approval: this request, and the job
    /// that runs the command once it is approved.
    Pending(Value),
}

/// How often a running exec looks for an approval request it waits for.
const APPROVAL_POLL: Duration = Duration::from_millis(400);
const APPROVAL_POLL_MAX: Duration = Duration::from_secs(3);

/// Run an exec; if policy holds it for an approval, answer with the
/// request while the exec goes on waiting (as a job of this connection).
async fn run_exec<A: BrigApi>(api: &Arc<A>, ctx: &Context, id: &str, req: Value) -> ExecEnd {
    let command = req["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| s(x).to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let slot: Arc<Mutex<Option<Result<Value, Error>>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(tokio::sync::Notify::new());
    {
        let (api, path, slot, done) = (
            api.clone(),
            format!("/v1/sessions/{id}/exec"),
            slot.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let r = api.call(Method::Post, &path, Some(req)).await;
            *lock(&slot) = Some(r);
            done.notify_one();
        });
    }
    // Soon at first (a request is made before anything runs), then less
    // often: a long build should not poll brig several times a second.
    let mut every = APPROVAL_POLL;
    loop {
        tokio::select! {
            _ = done.notified() => break,
            _ = tokio::time::sleep(every) => {}
        }
        every = (every * 3 / 2).min(APPROVAL_POLL_MAX);
        if lock(&slot).is_some() {
            break;
        }
        let Ok(v) = api
            .call(Method::Get, "/v1/approvals?state=pending", None)
            .await
        else {
            continue;
        };
        let mine = v.as_array().and_then(|l| {
            l.iter()
                .find(|a| {
                    s(&a["session"]) == id
                        && s(&a["action"]) == "exec"
                        && s(&a["resource"]) == command
                })
                .cloned()
        });
        if let Some(a) = mine {
            if lock(&slot).is_some() {
                break;
            }
            let apr = s(&a["id"]).to_string();
            lock(&ctx.jobs).insert(
                apr,
                Job {
                    session: id.to_string(),
                    command: command.clone(),
                    result: slot.clone(),
                },
            );
            return ExecEnd::Pending(a);
        }
    }
    let r = lock(&slot).take();
    match r {
        Some(Ok(v)) => ExecEnd::Done(v),
        Some(Err(e)) => ExecEnd::Failed(e),
        None => ExecEnd::Failed(Error::internal("the exec ended without an answer")),
    }
}

async fn exec_tool<A: BrigApi>(
    api: &Arc<A>,
    ctx: &Context,
    id: &str,
    req: Value,
    asking: bool,
) -> ToolOut {
    match run_exec(api, ctx, id, req).await {
        ExecEnd::Done(v) => {
            let mut r = exec_result(&v);
            if asking {
                r.text = format!("no approval was needed: the command ran\n{}", r.text);
            }
            Ok(r)
        }
        ExecEnd::Failed(e) => Err(e),
        ExecEnd::Pending(a) => {
            let text = format!(
                "exec needs approval {id} ({cap}): {reason}\nA human with role {roles} runs `brig approve {id}` (or `brig deny {id} --reason ...`); it expires {exp}. The command runs as soon as it is approved: call approval_status with id {id} for its result.",
                id = s(&a["id"]),
                cap = s(&a["capability"]),
                reason = s(&a["reason"]),
                roles = a["roles"].as_array().map(|r| r.iter().map(|x| s(x).to_string()).collect::<Vec<_>>().join(" or ")).unwrap_or_default(),
                exp = s(&a["expires_at"]),
            );
            let structured = json!({"pending_approval": a});
            // Asking for it is what approval_request is for; exec wanted
            // the command's result and has none yet.
            Ok(if asking {
                ToolResult::ok(text, structured)
            } else {
                ToolResult::error(text, structured)
            })
        }
    }
}

/// An `ExecResult` as a tool result: the exit code is data, not an error.
fn exec_result(v: &Value) -> ToolResult {
    let st = &v["status"];
    let how = match (st["code"].as_i64(), st["signal"].as_i64()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "no exit status".to_string(),
    };
    let mut text = how.clone();
    if st["timed_out"] == true {
        text.push_str(" (timed out)");
    }
    if v["truncated"] == true {
        text.push_str(&format!(
            " (output truncated: {} stdout / {} stderr bytes in all)",
            v["stdout_bytes"], v["stderr_bytes"]
        ));
    }
    text.push_str(&format!("\n--- stdout ---\n{}", s(&v["stdout"])));
    if !s(&v["stderr"]).is_empty() {
        text.push_str(&format!("\n--- stderr ---\n{}", s(&v["stderr"])));
    }
    ToolResult::ok(
        text,
        json!({
            "exit_code": st["code"],
            "signal": st["signal"],
            "timed_out": st["timed_out"] == true,
            "stdout": v["stdout"],
            "stderr": v["stderr"],
            "truncated": v["truncated"] == true,
            "exec_id": v["exec_id"],
            "duration_ms": v["duration_ms"],
        }),
    )
}

/// Run a fixed helper script in the session (never through the approval
/// job machinery: it is not a command the agent asked for by name).
async fn helper<A: BrigApi>(
    api: &Arc<A>,
    id: &str,
    argv: Vec<String>,
    stdin: Option<String>,
) -> Result<Value, Error> {
    let mut req = json!({"argv": argv, "timeout_ms": 120_000});
    if let Some(i) = stdin {
        req["stdin"] = i.into();
    }
    api.call(Method::Post, &format!("/v1/sessions/{id}/exec"), Some(req))
        .await
}

fn code(v: &Value) -> Option<i64> {
    v["status"]["code"].as_i64()
}

/// A helper script's failure: its own message (stderr) as the result.
fn helper_failed(what: &str, v: &Value) -> ToolResult {
    let err = s(&v["stderr"]).trim().to_string();
    let msg = if err.is_empty() {
        format!(
            "{what} failed ({})",
            exec_result(v).text.lines().next().unwrap_or("")
        )
    } else {
        format!("{what} failed: {err}")
    };
    ToolResult::error(
        msg.clone(),
        json!({"error": {"kind": "invalid_input", "message": msg}, "exit_code": v["status"]["code"]}),
    )
}

// ------------------------------------------------------------------- files

/// The workspace root every file tool is confined to.
pub const WORKSPACE: &str = "/workspace";

/// Normalize a path given to a file tool: relative to /workspace, or
/// absolute under it; no `..`, no NUL. Symlinks are resolved (and checked
/// again) inside the sandbox.
pub fn workspace_path(p: &str) -> Result<String, String> {
    if p.contains('\0') {
        return Err("a path may not contain NUL".into());
    }
    let rel = if let Some(r) = p.strip_prefix(WORKSPACE) {
        if r.is_empty() {
            ""
        } else if let Some(r) = r.strip_prefix('/') {
            r
        } else {
            return Err(format!("{p:?} is outside {WORKSPACE}"));
        }
    } else if p.starts_with('/') {
        return Err(format!(
            "{p:?} is outside {WORKSPACE}: give a path relative to {WORKSPACE} or under it"
        ));
    } else {
        p
    };
    let mut parts = Vec::new();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{p:?}: '..' is not allowed (paths stay inside {WORKSPACE})"
                ))
            }
            c => parts.push(c),
        }
    }
    Ok(if parts.is_empty() {
        WORKSPACE.to_string()
    } else {
        format!("{WORKSPACE}/{}", parts.join("/"))
    })
}

/// Exit codes of the helper scripts: a message on stderr says which path.
const CONFINE: &str = r#"case "$p" in /workspace|/workspace/*) ;; *) echo "$1 resolves to $p, outside /workspace" >&2; exit 45;; esac"#;

fn read_script() -> String {
    format!(
        r#"set -eu
p=$(realpath -e -- "$1" 2>/dev/null) || {{ echo "no such file: $1" >&2; exit 44; }}
{CONFINE}
[ -f "$p" ] || {{ echo "not a regular file: $1" >&2; exit 46; }}
stat -c %s -- "$p"
if [ "$3" = base64 ]; then head -c "$2" -- "$p" | base64 -w0; else head -c "$2" -- "$p"; fi"#
    )
}

fn write_script() -> String {
    format!(
        r#"set -eu
p=$(realpath -m -- "$1")
{CONFINE}
[ "$p" != /workspace ] && [ ! -d "$p" ] || {{ echo "is a directory: $1" >&2; exit 46; }}
mkdir -p -- "$(dirname -- "$p")"
if [ "$2" = base64 ]; then base64 -d > "$p"; else cat > "$p"; fi
stat -c %s -- "$p""#
    )
}

fn list_script() -> String {
    format!(
        r#"set -eu
p=$(realpath -e -- "$1" 2>/dev/null) || {{ echo "no such directory: $1" >&2; exit 44; }}
{CONFINE}
[ -d "$p" ] || {{ echo "not a directory: $1" >&2; exit 46; }}
cd -- "$p"
find . -mindepth 1 -maxdepth "$2" -name .git -prune -printf '%y\t%s\t%P\0' -o -printf '%y\t%s\t%P\0' | head -z -n "$3""#
    )
}

fn path_refused(e: String) -> ToolResult {
    ToolResult::error(
        e.clone(),
        json!({"error": {"kind": "invalid_input", "message": e}}),
    )
}

/// The most file_read returns (the exec API buffers 1 MiB of output;
/// base64 needs 4/3 of it).
const MAX_READ: u64 = 768 * 1024;
const DEFAULT_READ: u64 = 256 * 1024;

async fn file_read<A: BrigApi>(api: &Arc<A>, id: &str, a: ReadArgs) -> ToolOut {
    let path = match workspace_path(&a.path) {
        Ok(p) => p,
        Err(e) => return Ok(path_refused(e)),
    };
    let max = a.max_bytes.unwrap_or(DEFAULT_READ).clamp(1, MAX_READ);
    let v = helper(
        api,
        id,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            read_script(),
            "brig-mcp-read".into(),
            path.clone(),
            max.to_string(),
            a.encoding.as_str().into(),
        ],
        None,
    )
    .await?;
    if code(&v) != Some(0) {
        return Ok(helper_failed("file_read", &v));
    }
    let out = s(&v["stdout"]);
    let (size, content) = out.split_once('\n').unwrap_or((out, ""));
    let size: u64 = size.trim().parse().unwrap_or(0);
    let truncated = size > max;
    let mut note = String::new();
    if truncated {
        note = format!(
            " (first {max} of {size} bytes; pass max_bytes, or read it in parts with exec)"
        );
    }
    let lossy = a.encoding == Encoding::Text && content.contains('\u{FFFD}');
    if lossy {
        note.push_str(" (not valid UTF-8: shown lossily; read it with encoding base64)");
    }
    Ok(ToolResult::ok(
        if a.encoding == Encoding::Text && note.is_empty() {
            content.to_string()
        } else {
            format!("{path}: {size} bytes{note}\n{content}")
        },
        json!({"path": path, "size": size, "encoding": a.encoding.as_str(), "content": content, "truncated": truncated}),
    ))
}

async fn file_write<A: BrigApi>(api: &Arc<A>, id: &str, a: WriteArgs) -> ToolOut {
    let path = match workspace_path(&a.path) {
        Ok(p) if p == WORKSPACE => {
            return Ok(path_refused(format!(
                "{:?} is /workspace itself, not a file",
                a.path
            )))
        }
        Ok(p) => p,
        Err(e) => return Ok(path_refused(e)),
    };
    let v = helper(
        api,
        id,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            write_script(),
            "brig-mcp-write".into(),
            path.clone(),
            a.encoding.as_str().into(),
        ],
        Some(a.content),
    )
    .await?;
    if code(&v) != Some(0) {
        return Ok(helper_failed("file_write", &v));
    }
    let size: u64 = s(&v["stdout"]).trim().parse().unwrap_or(0);
    Ok(ToolResult::ok(
        format!("wrote {size} bytes to {path}"),
        json!({"path": path, "size": size}),
    ))
}

async fn file_list<A: BrigApi>(api: &Arc<A>, id: &str, a: ListFilesArgs) -> ToolOut {
    let path = match workspace_path(a.path.as_deref().unwrap_or(WORKSPACE)) {
        Ok(p) => p,
        Err(e) => return Ok(path_refused(e)),
    };
    let depth = a.depth.unwrap_or(1).clamp(1, 32);
    let max = a.max_entries.unwrap_or(1000).clamp(1, 10_000);
    let v = helper(
        api,
        id,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            list_script(),
            "brig-mcp-list".into(),
            path.clone(),
            depth.to_string(),
            (max + 1).to_string(),
        ],
        None,
    )
    .await?;
    if code(&v) != Some(0) {
        return Ok(helper_failed("file_list", &v));
    }
    let mut entries: Vec<Value> = s(&v["stdout"])
        .split('\0')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let mut it = l.splitn(3, '\t');
            let (t, size, p) = (it.next()?, it.next()?, it.next()?);
            Some(json!({"path": p, "type": t, "size": size.parse::<u64>().unwrap_or(0)}))
        })
        .collect();
    let more = entries.len() > max;
    entries.truncate(max);
    entries.sort_by(|x, y| s(&x["path"]).cmp(s(&y["path"])));
    let mut text = format!(
        "{path}: {} entries{}\n",
        entries.len(),
        if more { " (more not shown)" } else { "" }
    );
    for e in &entries {
        text.push_str(&format!(
            "{} {:>10} {}\n",
            s(&e["type"]),
            e["size"],
            s(&e["path"])
        ));
    }
    Ok(ToolResult::ok(
        text,
        json!({"path": path, "entries": entries, "truncated": more}),
    ))
}

// -------------------------------------------------------------------- diff

/// The working tree against the pinned commit, new files included, on a
/// throw-away copy of git's index (the agent's own index is untouched).
const DIFF_SCRIPT: &str = r#"set -eu
cd /workspace
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "/workspace is not a git checkout (the session was not created from a git repository)" >&2; exit 47; }
gd=$(git rev-parse --absolute-git-dir)
idx="$gd/brig-mcp-index.$$"
trap 'rm -f "$idx"' EXIT
cp -- "$gd/index" "$idx" 2>/dev/null || true
export GIT_INDEX_FILE="$idx"
git add -A 2>/dev/null
git -c core.quotepath=off diff --cached --stat HEAD
printf '\036'
git -c core.quotepath=off diff --cached HEAD"#;

async fn diff<A: BrigApi>(api: &Arc<A>, id: &str, branch: Option<String>) -> ToolOut {
    if let Some(b) = branch {
        let v = api
            .call(
                Method::Get,
                &format!(
                    "/v1/sessions/{id}/pr/preview?branch={}",
                    encode_component(&b)
                ),
                None,
            )
            .await?;
        let mut text = format!(
            "{} → {}: {} commit(s)\n{}\n",
            s(&v["branch"]),
            s(&v["base"]),
            v["commits"].as_array().map(|c| c.len()).unwrap_or(0),
            s(&v["diffstat"])
        );
        if let Some(g) = v["gate"].as_object() {
            text.push_str(&format!(
                "gate: {}\n",
                if g.get("passed") == Some(&Value::Bool(true)) {
                    "passed"
                } else {
                    "failed"
                }
            ));
        }
        text.push_str(s(&v["diff"]));
        return Ok(ToolResult::ok(text, v));
    }
    let v = helper(
        api,
        id,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            DIFF_SCRIPT.into(),
            "brig-mcp-diff".into(),
        ],
        None,
    )
    .await?;
    if code(&v) != Some(0) {
        return Ok(helper_failed("diff", &v));
    }
    let out = s(&v["stdout"]);
    let (stat, patch) = out.split_once('\u{1e}').unwrap_or(("", out));
    let text = if patch.trim().is_empty() {
        "no changes against the pinned commit".to_string()
    } else {
        format!("{stat}\n{patch}")
    };
    Ok(ToolResult::ok(
        text,
        json!({"diffstat": stat, "diff": patch, "truncated": v["truncated"] == true}),
    ))
}

// ------------------------------------------------------------ human control

async fn plan_submit<A: BrigApi>(api: &Arc<A>, id: &str, a: PlanArgs) -> ToolOut {
    let body = json!({"goal": a.goal, "steps": a.steps, "blast_radius": a.blast_radius, "rollback": a.rollback});
    let v = api
        .call(
            Method::Post,
            &format!("/v1/sessions/{id}/plans"),
            Some(body),
        )
        .await?;
    Ok(ToolResult::ok(
        format!(
            "plan {} submitted for session {id}; approval requests made from now on name it",
            s(&v["id"])
        ),
        v,
    ))
}

async fn approval_status<A: BrigApi>(api: &Arc<A>, ctx: &Context, apr: &str) -> ToolOut {
    if apr.is_empty()
        || !apr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::invalid(format!("{apr:?} is not an approval id"))
            .hint("approval ids look like apr-…"));
    }
    let v = api
        .call(Method::Get, &format!("/v1/approvals/{apr}"), None)
        .await?;
    let mut text = format!(
        "approval {apr}: {} ({} on {} in {})",
        s(&v["state"]),
        s(&v["action"]),
        s(&v["resource"]),
        s(&v["session"])
    );
    if let Some(by) = v["decided_by"].as_str() {
        text.push_str(&format!(", decided by {by}"));
    }
    if let Some(n) = v["note"].as_str() {
        text.push_str(&format!(": {n}"));
    }
    let mut structured = json!({"approval": v});
    let job = lock(&ctx.jobs).get(apr).cloned();
    if let Some(job) = job {
        let r = lock(&job.result).clone();
        match r {
            None => {
                text.push_str(&format!("\nthe command ({}) is still waiting", job.command));
                structured["command"] = json!({"state": "waiting", "session": job.session});
            }
            Some(Ok(res)) => {
                let r = exec_result(&res);
                text.push_str(&format!("\nthe command ran: {}", r.text));
                structured["command"] =
                    json!({"state": "done", "session": job.session, "result": r.structured});
            }
            Some(Err(e)) => {
                let r = ToolResult::refused(&e);
                text.push_str(&format!("\nthe command did not run: {}", r.text));
                structured["command"] = json!({"state": "failed", "session": job.session, "error": r.structured["error"]});
            }
        }
    }
    Ok(ToolResult::ok(text, structured))
}

async fn approval_list<A: BrigApi>(api: &Arc<A>, ctx: &Context, a: ApprovalListArgs) -> ToolOut {
    let state = a.state.unwrap_or_else(|| "pending".into());
    let path = if state == "any" {
        "/v1/approvals".to_string()
    } else {
        format!("/v1/approvals?state={}", encode_component(&state))
    };
    let v = api.call(Method::Get, &path, None).await?;
    let session = if a.all_sessions {
        None
    } else {
        match a.session {
            Some(s) => Some(session_id(&s).map_err(|e| Error::invalid(e.message))?),
            None => ctx.current(),
        }
    };
    let list: Vec<Value> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| session.as_deref().is_none_or(|id| s(&x["session"]) == id))
        .collect();
    let text = if list.is_empty() {
        format!("no {state} approval requests")
    } else {
        list.iter()
            .map(|x| {
                format!(
                    "{}  {}  {} {}  ({}; roles {})",
                    s(&x["id"]),
                    s(&x["state"]),
                    s(&x["action"]),
                    s(&x["resource"]),
                    s(&x["capability"]),
                    join(&x["roles"])
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(ToolResult::ok(text, json!({"approvals": list})))
}

// -------------------------------------------------------------- push and PR

/// A branch name brig's gateway could accept: git's ref rules, narrowed.
fn check_branch(b: &str) -> Result<(), Error> {
    let ok = !b.is_empty()
        && b.len() <= 200
        && !b.starts_with(['-', '/'])
        && !b.ends_with(['/', '.'])
        && !b.contains("..")
        && !b.contains("//")
        && !b.contains("@{")
        && !b.ends_with(".lock")
        && b.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(())
    } else {
        Err(
            Error::invalid(format!("{b:?} is not a branch name brig accepts"))
                .hint("letters, digits, '-', '_', '.', '/'; under the session's bot prefix"),
        )
    }
}

/// The session's bot branch for `branch` (default `<bot prefix>work`).
async fn bot_branch<A: BrigApi>(
    api: &Arc<A>,
    id: &str,
    branch: Option<String>,
) -> Result<String, Error> {
    let b = match branch {
        Some(b) => b,
        None => {
            let v = api
                .call(Method::Get, &format!("/v1/sessions/{id}"), None)
                .await?;
            let prefix = v["git"]["bot_prefix"].as_str().ok_or_else(|| {
                Error::invalid(format!("session {id} has no git checkout: nothing to push"))
                    .hint("create the session from a git repository (session_create with repo)")
            })?;
            format!("{prefix}work")
        }
    };
    check_branch(&b)?;
    Ok(b)
}

fn git(args: &[&str]) -> Vec<String> {
    let mut v = vec!["git".to_string(), "-C".into(), WORKSPACE.into()];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

async fn push<A: BrigApi>(api: &Arc<A>, id: &str, a: PushArgs) -> ToolOut {
    let branch = bot_branch(api, id, a.branch).await?;
    let mut text = String::new();
    let mut committed = Value::Null;
    if let Some(msg) = a.message.filter(|m| !m.trim().is_empty()) {
        let v = helper(api, id, git(&["add", "-A"]), None).await?;
        if code(&v) != Some(0) {
            return Ok(helper_failed("git add", &v));
        }
        let v = helper(api, id, git(&["commit", "-q", "-m", &msg]), None).await?;
        match code(&v) {
            Some(0) => text.push_str("committed every change\n"),
            _ if format!("{}{}", s(&v["stdout"]), s(&v["stderr"]))
                .contains("nothing to commit") =>
            {
                text.push_str("nothing to commit; pushing HEAD\n")
            }
            _ => return Ok(helper_failed("git commit", &v)),
        }
        let h = helper(api, id, git(&["rev-parse", "HEAD"]), None).await?;
        committed = json!(s(&h["stdout"]).trim());
    }
    let v = helper(
        api,
        id,
        git(&["push", "origin", &format!("HEAD:refs/heads/{branch}")]),
        None,
    )
    .await?;
    let out = format!("{}{}", s(&v["stdout"]), s(&v["stderr"]));
    let structured = json!({"branch": branch, "commit": committed, "exit_code": v["status"]["code"], "output": out});
    if code(&v) == Some(0) {
        text.push_str(&format!("pushed HEAD to {branch}\n{out}"));
        Ok(ToolResult::ok(text, structured))
    } else {
        text.push_str(&format!("push to {branch} was rejected\n{out}"));
        Ok(ToolResult::error(text, structured))
    }
}

async fn pr_open<A: BrigApi>(api: &Arc<A>, id: &str, a: PrArgs) -> ToolOut {
    let branch = bot_branch(api, id, a.branch).await?;
    let body = json!({"title": a.title, "body": a.body.unwrap_or_default(), "branch": branch});
    let v = api
        .call(
            Method::Post,
            &format!("/v1/sessions/{id}/pulls"),
            Some(body),
        )
        .await?;
    let pr = &v["pull_request"];
    Ok(ToolResult::ok(
        format!(
            "opened pull request #{} {} → {}{}",
            pr["number"],
            s(&pr["head"]),
            s(&pr["base"]),
            pr["url"]
                .as_str()
                .map(|u| format!(": {u}"))
                .unwrap_or_default()
        ),
        v,
    ))
}

// ----------------------------------------------------------------- helpers

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| s(x).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_workspace() {
        assert_eq!(workspace_path("a/b.txt").unwrap(), "/workspace/a/b.txt");
        assert_eq!(workspace_path("./a//b").unwrap(), "/workspace/a/b");
        assert_eq!(workspace_path("/workspace/x").unwrap(), "/workspace/x");
        assert_eq!(workspace_path("/workspace").unwrap(), "/workspace");
        assert_eq!(workspace_path("").unwrap(), "/workspace");
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "/workspacex/y",
            "/workspace/../etc",
            "a\0b",
        ] {
            assert!(workspace_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn branches_are_checked() {
        assert!(check_branch("brig/s-abc/work").is_ok());
        for bad in ["", "-f", "a..b", "a b", "a/", "x.lock", "a@{1}", "$(id)"] {
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_tool_has_an_object_schema() {
        let defs = definitions();
        let mut names: Vec<&str> = defs.iter().map(|t| t["name"].as_str().unwrap()).collect();
        for t in &defs {
            assert_eq!(t["inputSchema"]["type"], "object", "{t}");
            assert!(t["description"].as_str().unwrap().len() > 20, "{t}");
        }
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "tool names are unique");
    }
}
