//! The model gateway (issue 8) end to end in a real `native` session: the
//! official `openai` and `anthropic` Python SDKs run inside the sandbox,
//! unmodified, with only the environment brig gives them (base URLs at
//! `http://model.brig`, a per-session placeholder key). A local upstream
//! speaking the real OpenAI and Anthropic wire formats (brig_model::fake)
//! must see brig's real key and never the placeholder; what is stored and
//! journaled must hold no planted secret or PII; a budget stops a runaway
//! loop with the provider's own 429.

mod server_support;

use brig_model::fake::{Behavior, FakeUpstream};
use serde_json::{json, Value};
use server_support::*;

/// brig's real upstream key (an env secret source of the control plane).
const REAL_KEY: &str = "sk-real-upstream-6f1d0c2b9a8e4d73b5c1";
/// Planted in prompts: must never reach storage as is.
const EMAIL: &str = "ada.lovelace@example.com";
const CARD: &str = "4111 1111 1111 1111";
const GH_TOKEN: &str = "ghp_R9vX2mQ7tLk4Zp8Wc1Yb6Nf3Hj5Dg0Sa2Eu7";

fn configure(cfg: &mut brig_server::ServerConfig, up: &FakeUpstream, budget: Option<u64>) {
    cfg.secrets = toml::from_str("[sources.env]\nkind = \"env\"\n").unwrap();
    let budget = budget
        .map(|t| format!("[budgets.session]\nmax_tokens = {t}\n"))
        .unwrap_or_default();
    cfg.models = Some(
        toml::from_str(&format!(
            r#"
[upstreams.local]
kind = "openai-compatible"
base_url = "{oai}"
key = {{ source = "env", key = "BRIG_E2E_MODEL_KEY" }}
models = ["gpt-4o-mini"]
[upstreams.anthropic]
kind = "anthropic"
base_url = "{ant}"
key = {{ source = "env", key = "BRIG_E2E_MODEL_KEY" }}
models = ["claude-sonnet-4-5"]
[routes.coder]
targets = ["local/gpt-4o-mini"]
[routes.planner]
targets = ["anthropic/claude-sonnet-4-5"]
[prices."gpt-4o-mini"]
input = 0.15
output = 0.60
[prices."claude-sonnet-4-5"]
input = 3.0
output = 15.0
{budget}"#,
            oai = up.openai_url(),
            ant = up.url(),
        ))
        .unwrap(),
    );
}

/// Run a Python script in the session. It goes in on stdin, as an agent's
/// own prompt would be built inside its process: the journal records argv
/// (with secrets masked, but not PII: an address in a command line is
/// audit data), so planting PII in argv would test the journal, not the
/// gateway.
async fn py(srv: &Srv, id: &str, script: &str) -> (i64, String) {
    let r = srv
        .exec_req(
            id,
            json!({"argv": ["/usr/bin/python3", "-"], "stdin": script, "timeout_ms": 60000}),
        )
        .await;
    (
        r["status"]["code"].as_i64().unwrap_or(-1),
        format!(
            "{}{}",
            r["stdout"].as_str().unwrap_or(""),
            r["stderr"].as_str().unwrap_or("")
        ),
    )
}

/// Model calls of a session once the recorder has stored `n` of them.
async fn calls(srv: &Srv, id: &str, n: usize) -> Vec<Value> {
    // Generous: Claude Code sends ~80 calls of ~130 KB each, and the
    // recorder redacts each one whole (a debug build on 2 shared cores
    // needs about 5 s for them).
    for _ in 0..600 {
        let (st, v) = srv
            .call("GET", &format!("/v1/sessions/{id}/model-calls"), None)
            .await;
        assert_eq!(st, 200, "{v}");
        let list = v.as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} model calls were recorded");
}

const SDK_SCRIPT: &str = r#"
import os, json, openai, anthropic
assert os.environ["OPENAI_API_KEY"].startswith("sk-brig-"), os.environ["OPENAI_API_KEY"]
assert os.environ["OPENAI_BASE_URL"] == "http://model.brig/v1", os.environ["OPENAI_BASE_URL"]
planted = "please email ada.lovelace@example.com, card 4111 1111 1111 1111, token ghp_R9vX2mQ7tLk4Zp8Wc1Yb6Nf3Hj5Dg0Sa2Eu7"
o = openai.OpenAI()
r = o.chat.completions.create(model="coder", messages=[{"role": "user", "content": planted}])
print("openai:", r.choices[0].message.content, r.usage.total_tokens)
parts = []
for ch in o.chat.completions.create(model="coder", stream=True, messages=[{"role": "user", "content": "stream " + planted}]):
    if ch.choices and ch.choices[0].delta.content:
        parts.append(ch.choices[0].delta.content)
print("openai-stream:", "".join(parts), len(parts))
t = o.chat.completions.create(model="coder", messages=[{"role": "user", "content": "weather?"}],
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
print("openai-tool:", t.choices[0].message.tool_calls[0].function.name)
e = o.embeddings.create(model="coder", input="hello")
print("openai-embed:", len(e.data[0].embedding))
print("openai-models:", sorted(m.id for m in o.models.list()))
a = anthropic.Anthropic()
m = a.messages.create(model="planner", max_tokens=64, messages=[{"role": "user", "content": planted}])
print("anthropic:", m.content[0].text, m.usage.input_tokens, m.usage.output_tokens)
with a.messages.stream(model="planner", max_tokens=64, messages=[{"role": "user", "content": "stream " + planted}]) as s:
    text = "".join(s.text_stream)
print("anthropic-stream:", text)
c = a.messages.count_tokens(model="planner", messages=[{"role": "user", "content": "count me"}])
print("anthropic-count:", c.input_tokens > 0)
try:
    o.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    print("unknown-model:", e.status_code)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_work_unmodified_and_nothing_planted_is_stored() {
    require_root!();
    let up = FakeUpstream::start().await.unwrap();
    up.require_key(REAL_KEY);
    up.set_default(Behavior::reply("Fixed the off-by-one in stats.py."));
    std::env::set_var("BRIG_E2E_MODEL_KEY", REAL_KEY);
    let srv = Srv::start_with(|cfg| configure(cfg, &up, None)).await;
    let s = srv.create(json!({"task": "MODEL-1"})).await;
    let id = s["id"].as_str().unwrap().to_string();

    let (code, out) = py(&srv, &id, SDK_SCRIPT).await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "openai: Fixed the off-by-one in stats.py.",
        "openai-stream: Fixed the off-by-one in stats.py.",
        "openai-tool: get_weather",
        "anthropic: Fixed the off-by-one in stats.py.",
        "anthropic-stream: Fixed the off-by-one in stats.py.",
        "anthropic-count: True",
        "unknown-model: 404",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    // /v1/models lists what the OpenAI endpoints can reach (the Anthropic
    // alias is for /v1/messages).
    assert!(
        out.contains("openai-models: ['coder', 'gpt-4o-mini']"),
        "{out}"
    );
    // Streams came in pieces, not as one buffered body.
    let pieces: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("openai-stream: "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(pieces > 1, "{out}");

    // The upstream got brig's key, the real model names, and never the
    // placeholder.
    let reqs = up.requests();
    // 3 chat, 1 embeddings, 2 messages, 1 count_tokens (the model list and
    // the unknown model are answered by brig).
    assert_eq!(reqs.len(), 7);
    for r in &reqs {
        let key = r
            .header("authorization")
            .map(|a| a.trim_start_matches("Bearer ").to_string())
            .or(r.header("x-api-key").map(str::to_string));
        assert_eq!(key.as_deref(), Some(REAL_KEY), "{r:?}");
        let body = r.json();
        if let Some(m) = body["model"].as_str() {
            assert!(m == "gpt-4o-mini" || m == "claude-sonnet-4-5", "{m}");
        }
    }
    // The sandbox never held the real key.
    let (_, proc_out) = py(
        &srv,
        &id,
        "import glob\nn=0\nfor p in glob.glob('/proc/[0-9]*/environ'):\n  try: n += open(p,'rb').read().count(b'sk-real-upstream')\n  except Exception: pass\nprint('real-key-seen', n)",
    )
    .await;
    assert!(proc_out.contains("real-key-seen 0"), "{proc_out}");

    // Every call captured, with tokens and cost; nothing planted stored.
    let list = calls(&srv, &id, 9).await;
    let chat: Vec<&Value> = list
        .iter()
        .filter(|c| c["endpoint"] == "chat.completions" && c["outcome"] == "ok")
        .collect();
    assert!(chat.len() >= 3, "{list:#?}");
    for c in &chat {
        assert_eq!(c["upstream"], "local", "{c}");
        assert!(c["input_tokens"].as_u64().unwrap() > 0, "{c}");
        assert!(c["cost_usd"].as_f64().unwrap() > 0.0, "{c}");
    }
    let msgs: Vec<&Value> = list
        .iter()
        .filter(|c| c["endpoint"] == "messages")
        .collect();
    assert_eq!(msgs.len(), 2, "{list:#?}");
    assert!(list
        .iter()
        .any(|c| c["stream"] == true && c["endpoint"] == "messages"));
    let unknown = list
        .iter()
        .find(|c| c["model"] == "no-such-model")
        .expect("the unknown model's call is recorded");
    assert_eq!(unknown["status"], 404);
    let stored = serde_json::to_string(&list).unwrap();
    let journal = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await
        .1;
    let journal = journal.to_string();
    for leaked in [EMAIL, CARD, GH_TOKEN, REAL_KEY, "4111111111111111"] {
        assert!(!stored.contains(leaked), "{leaked} stored: {stored}");
        assert!(!journal.contains(leaked), "{leaked} journaled");
    }
    // ... but the conversation is still there to replay.
    assert!(stored.contains("please email"), "{stored}");
    assert!(stored.contains("Fixed the off-by-one"), "{stored}");
    let model_events = journal.matches("\"model.call\"").count();
    assert!(model_events >= 9, "{model_events}");

    // The cost report adds it up by task.
    let (st, rep) = srv
        .call("GET", "/v1/reports/cost?by=task&period=day", None)
        .await;
    assert_eq!(st, 200, "{rep}");
    let line = rep["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "MODEL-1")
        .cloned()
        .unwrap_or_else(|| panic!("{rep}"));
    assert!(line["calls"].as_u64().unwrap() >= 9, "{line}");
    assert!(line["cost_usd"].as_f64().unwrap() > 0.0, "{line}");
    assert!(line["sandbox_hours"].as_f64().unwrap() > 0.0, "{line}");

    // The CLI replays the conversation, redacted, and prints the report.
    let brig = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_brig"))
            .arg("--socket")
            .arg(&srv.sock)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let log = brig(&["model", "log", &id]);
    assert!(
        log.contains("chat.completions coder → local/gpt-4o-mini"),
        "{log}"
    );
    assert!(
        log.contains("messages planner → anthropic/claude-sonnet-4-5"),
        "{log}"
    );
    assert!(
        log.contains("user: please email [REDACTED:pii:email]"),
        "{log}"
    );
    assert!(
        log.contains("assistant: Fixed the off-by-one in stats.py."),
        "{log}"
    );
    assert!(log.contains("[tool call get_weather("), "{log}");
    assert!(!log.contains(EMAIL) && !log.contains(GH_TOKEN), "{log}");
    let report = brig(&["report", "cost", "--by", "task", "--since", "1h"]);
    assert!(report.contains("MODEL-1"), "{report}");
    assert!(report.contains("BLUEPRINT $"), "{report}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stops_a_runaway_loop_with_the_providers_429() {
    require_root!();
    let up = FakeUpstream::start().await.unwrap();
    up.require_key(REAL_KEY);
    std::env::set_var("BRIG_E2E_MODEL_KEY", REAL_KEY);
    let srv = Srv::start_with(|cfg| configure(cfg, &up, Some(300))).await;
    let s = srv.create(json!({"task": "MODEL-2"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let (code, out) = py(
        &srv,
        &id,
        r#"
import openai, anthropic
o = openai.OpenAI(max_retries=0)
n = 0
try:
    while n < 1000:
        o.chat.completions.create(model="coder", messages=[{"role": "user", "content": "again " * 20}])
        n += 1
    print("never stopped")
except openai.RateLimitError as e:
    print("stopped after", n, e.status_code, e.body["type"] if isinstance(e.body, dict) else e.body)
try:
    anthropic.Anthropic(max_retries=0).messages.create(model="planner", max_tokens=8, messages=[{"role": "user", "content": "x"}])
except anthropic.RateLimitError as e:
    print("anthropic", e.status_code, e.body["error"]["type"])
"#,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let n: usize = out
        .split("stopped after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((1..50).contains(&n), "{out}");
    assert!(out.contains(" 429 insufficient_quota"), "{out}");
    assert!(out.contains("anthropic 429 rate_limit_error"), "{out}");
    let list = calls(&srv, &id, n + 2).await;
    let denied: Vec<&Value> = list.iter().filter(|c| c["outcome"] == "denied").collect();
    assert_eq!(denied.len(), 2, "{list:#?}");
    assert_eq!(denied[0]["rule"], "budget:session:max_tokens");
    // The upstream saw only the calls within the budget.
    assert_eq!(up.requests().len(), n);
    let journal = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await
        .1;
    let denied_events = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "model.call" && e["outcome"] == "denied")
        .count();
    assert_eq!(denied_events, 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_from_npm_works_through_the_gateway() {
    require_root!();
    let claude = "/usr/bin/claude";
    assert!(
        std::path::Path::new(claude).exists(),
        "Claude Code is not installed: .ci/run installs @anthropic-ai/claude-code from npm"
    );
    let up = FakeUpstream::start().await.unwrap();
    up.require_key(REAL_KEY);
    up.set_default(Behavior::reply("All tests pass."));
    std::env::set_var("BRIG_E2E_MODEL_KEY", REAL_KEY);
    let srv = Srv::start_with(|cfg| configure(cfg, &up, None)).await;
    let s = srv.create(json!({"task": "MODEL-3"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    // Claude Code's own settings switch its non-essential traffic off;
    // HOME is writable (the workspace); the model is brig's alias.
    let r = srv
        .exec_req(
            &id,
            json!({
                "argv": [claude, "-p", "Run the tests and say if they pass.", "--output-format", "json"],
                "env": [
                    ["HOME", "/workspace/.home"],
                    ["ANTHROPIC_MODEL", "planner"],
                    ["ANTHROPIC_SMALL_FAST_MODEL", "planner"],
                    ["ANTHROPIC_DEFAULT_HAIKU_MODEL", "planner"],
                    ["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"],
                    ["DISABLE_AUTOUPDATER", "1"],
                    ["DISABLE_TELEMETRY", "1"],
                    ["DISABLE_ERROR_REPORTING", "1"]
                ],
                "timeout_ms": 120000
            }),
        )
        .await;
    let out = format!(
        "{}{}",
        r["stdout"].as_str().unwrap_or(""),
        r["stderr"].as_str().unwrap_or("")
    );
    assert_eq!(r["status"]["code"], 0, "{r:#}");
    let v: Value = serde_json::from_str(r["stdout"].as_str().unwrap().trim())
        .unwrap_or_else(|e| panic!("claude's JSON: {e}: {out}"));
    assert_eq!(v["result"], "All tests pass.", "{v:#}");
    assert_eq!(v["is_error"], false, "{v:#}");
    // It reached the model only through brig: the upstream saw brig's key
    // and the alias's real model; every call is captured.
    let reqs = up.requests();
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| r.header("x-api-key") == Some(REAL_KEY)
        || r.header("authorization") == Some(&format!("Bearer {REAL_KEY}"))));
    let list = calls(&srv, &id, reqs.len()).await;
    assert!(
        list.iter()
            .any(|c| c["endpoint"] == "messages" && c["outcome"] == "ok" && c["stream"] == true),
        "{list:#?}"
    );
    srv.stop().await;
}

/// A session's own secret (issue 6's canary) that comes back from a model,
/// and brig's upstream key, never reach what is captured or journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_in_a_model_answer_is_not_captured() {
    require_root!();
    const CANARY: &str = "canary-model-0b7e4f19c2d85a36";
    let up = FakeUpstream::start().await.unwrap();
    up.require_key(REAL_KEY);
    up.set_default(Behavior::reply(&format!(
        "The deploy key is {CANARY} and the API key is {REAL_KEY}."
    )));
    std::env::set_var("BRIG_E2E_MODEL_KEY", REAL_KEY);
    std::env::set_var("BRIG_E2E_MODEL_CANARY", CANARY);
    let srv = Srv::start_with(|cfg| {
        configure(cfg, &up, None);
        let p = cfg.profiles.get_mut("default").unwrap();
        p.secrets = toml::from_str(
            "[DEPLOY_KEY]\nsource = \"env\"\nkey = \"BRIG_E2E_MODEL_CANARY\"\nscope = \"pkg\"\nhosts = [\"deploy.example.test\"]\n",
        )
        .unwrap();
    })
    .await;
    let s = srv.create(json!({"task": "MODEL-4"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let (code, out) = py(
        &srv,
        &id,
        "import os, openai\nassert os.environ['DEPLOY_KEY'].startswith('brig-placeholder-')\nr = openai.OpenAI().chat.completions.create(model='coder', messages=[{'role': 'user', 'content': 'what is the deploy key?'}])\nprint('answer-len', len(r.choices[0].message.content))",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let list = calls(&srv, &id, 1).await;
    let stored = serde_json::to_string(&list).unwrap();
    assert!(stored.contains("The deploy key is [REDACTED:"), "{stored}");
    assert!(
        !stored.contains(CANARY) && !stored.contains(REAL_KEY),
        "{stored}"
    );
    let journal = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await
        .1
        .to_string();
    assert!(!journal.contains(CANARY) && !journal.contains(REAL_KEY));

    // A prompt carrying a secret brig knows is refused before it leaves:
    // the provider-shaped 400, nothing upstream, the call denied.
    let before = up.requests().len();
    let script = format!(
        "import openai\ntry:\n    openai.OpenAI(max_retries=0).chat.completions.create(model='coder', messages=[{{'role': 'user', 'content': 'deploy with {CANARY}'}}])\n    print('sent')\nexcept openai.BadRequestError as e:\n    print('refused', e.status_code, e.body.get('code') if isinstance(e.body, dict) else e.body)\n"
    );
    let (code, out) = py(&srv, &id, &script).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("refused 400 secret_in_request"), "{out}");
    assert_eq!(
        up.requests().len(),
        before,
        "the secret reached the upstream"
    );
    let list = calls(&srv, &id, 2).await;
    let refused = list.last().unwrap();
    assert_eq!(refused["outcome"], "denied", "{refused}");
    assert_eq!(refused["rule"], "exfil:known-secret");
    assert!(!serde_json::to_string(&list).unwrap().contains(CANARY));
    srv.stop().await;
}

/// Cedar's `model.call` on each call, once routing named the model: a
/// deployment policy that forbids one alias refuses it with the
/// provider's own 403 shape (the SDK raises its PermissionDeniedError);
/// the refusal is journaled with its policy and nothing reaches upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_policy_forbids_is_refused_in_the_providers_shape() {
    require_root!();
    let up = FakeUpstream::start().await.unwrap();
    up.require_key(REAL_KEY);
    std::env::set_var("BRIG_E2E_MODEL_KEY", REAL_KEY);
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("models.cedar");
    std::fs::write(
        &pol,
        "@id(\"deploy.no-planner\")\n@reason(\"The planner model is reserved for humans.\")\n\
         forbid (principal, action == Brig::Action::\"model.call\", resource)\n\
         when { resource.name == \"planner\" };\n",
    )
    .unwrap();
    let srv = Srv::start_with(|cfg| {
        configure(cfg, &up, None);
        cfg.policy.extra.push(pol.clone());
    })
    .await;
    let s = srv.create(json!({"task": "MODEL-5"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let (code, out) = py(
        &srv,
        &id,
        r#"
import openai, anthropic
o = openai.OpenAI(max_retries=0)
print("coder:", o.chat.completions.create(model="coder", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content is not None)
try:
    anthropic.Anthropic(max_retries=0).messages.create(model="planner", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    print("planner answered")
except anthropic.PermissionDeniedError as e:
    print("planner", e.status_code, e.body["error"]["type"], e.body["error"]["message"])
"#,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("coder: True"), "{out}");
    assert!(out.contains("planner 403"), "{out}");
    assert!(out.contains("reserved for humans"), "{out}");
    assert_eq!(
        up.requests().len(),
        1,
        "only the allowed call went upstream"
    );
    let list = calls(&srv, &id, 2).await;
    assert!(
        list.iter()
            .any(|c| c["outcome"] == "denied" && c["rule"] == "deploy.no-planner"),
        "{list:#?}"
    );
    let journal = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await
        .1;
    assert!(
        journal
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "policy.decision"
                && e["outcome"] == "denied"
                && e["rule"] == "deploy.no-planner"
                && e["details"]["action"] == "model.call"),
        "{journal}"
    );
    srv.stop().await;
}
