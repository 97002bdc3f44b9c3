//! `brig mcp` (issue 9, docs/MCP.md) end to end: the official MCP Python
//! SDK (`mcp` from PyPI, tests/mcp_client.py) drives real `native`
//! sessions through `brig mcp`, on stdio (as the socket's peer) and on
//! streamable HTTP (as the bearer of each request, forwarded to brig's TCP
//! API). What the client saw is checked against brig's own journal: every
//! tool call went through policy, the journal and approvals under the
//! principal that authenticated the MCP connection.

mod server_support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use server_support::*;
use tokio::io::AsyncBufReadExt;

const BRIG: &str = env!("CARGO_BIN_EXE_brig");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py");

/// The SDK is installed (.ci/run); without it the test cannot say anything.
fn have_sdk() -> bool {
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import mcp, httpx2"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Human",
            "-c",
            "user.email=human@example.com",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An upstream repository with one commit on main.
fn upstream() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("brig-mcp-up-")
        .tempdir()
        .unwrap();
    let up = t.path().join("app");
    std::fs::create_dir_all(&up).unwrap();
    git(&up, &["init", "-q", "-b", "main"]);
    std::fs::write(up.join("README.md"), "# app\n").unwrap();
    git(&up, &["add", "."]);
    git(&up, &["commit", "-qm", "first"]);
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    t
}

/// Run the Python client; its JSON transcript.
async fn client(mode: &str, env: &[(&str, String)]) -> Value {
    let mut c = tokio::process::Command::new("/usr/bin/python3");
    c.arg(CLIENT)
        .arg(mode)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), c.output())
        .await
        .expect("the MCP client finished within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mcp_client.py {mode}: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("transcript: {e}: {stdout}\nstderr: {stderr}"))
}

/// The `n`th call of `tool` in the transcript.
fn nth<'a>(t: &'a Value, tool: &str, n: usize) -> &'a Value {
    t["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["tool"] == tool)
        .nth(n)
        .unwrap_or_else(|| panic!("no call {n} of {tool}: {t}"))
}

fn text(c: &Value) -> &str {
    c["text"].as_str().unwrap_or("")
}

async fn events(srv: &Srv, id: &str) -> Vec<Value> {
    let (st, v) = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    assert_eq!(st, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn argv_of(e: &Value) -> Vec<String> {
    e["details"]["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_tools_drive_a_session_through_policy_and_the_journal() {
    require_root!();
    assert!(
        have_sdk(),
        "the MCP Python SDK is missing: pip install mcp (see .ci/run)"
    );
    let up = upstream();
    let repo = up.path().join("app");
    let srv = Srv::start_with(|cfg| {
        let p = cfg.profiles.get_mut("default").unwrap();
        // The gate checks what the MCP client wrote is in the pushed tree.
        p.gate = Some(brig_server::git_config::Gate {
            test: "grep -q 'hello from mcp' notes/hello.txt".into(),
            coverage: None,
            max_coverage_drop: 0.0,
            timeout: Duration::from_secs(60),
        });
    })
    .await;
    let t = client(
        "stdio",
        &[
            ("BRIG", BRIG.to_string()),
            ("BRIG_SOCKET", srv.sock.display().to_string()),
            ("REPO", repo.display().to_string()),
        ],
    )
    .await;

    // The handshake and the tools.
    assert_eq!(t["server_name"], "brig", "{t}");
    assert!(
        brig_mcp::PROTOCOL_VERSIONS.contains(&t["protocol_version"].as_str().unwrap()),
        "{t}"
    );
    let tools: Vec<&str> = t["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    for want in [
        "session_create",
        "session_attach",
        "exec",
        "file_read",
        "file_write",
        "file_list",
        "diff",
        "plan_submit",
        "approval_request",
        "approval_status",
        "push",
        "pr_open",
    ] {
        assert!(tools.contains(&want), "{want} missing from {tools:?}");
    }
    let me = t["whoami"]["id"].as_str().unwrap().to_string();
    let id = t["session"]
        .as_str()
        .expect("a session was created")
        .to_string();
    let info = srv.state(&id).await;
    assert_eq!(
        info["human"],
        me.as_str(),
        "the session is the caller's: {info}"
    );

    // exec: output and exit code, a non-zero exit being a result.
    let e = nth(&t, "exec", 0);
    assert_eq!(e["is_error"], false, "{e}");
    assert_eq!(e["structured"]["exit_code"], 3, "{e}");
    assert_eq!(e["structured"]["stdout"], "out\n");
    assert_eq!(e["structured"]["stderr"], "err\n");

    // Files: written, read back (text and base64), listed.
    let w = nth(&t, "file_write", 0);
    assert_eq!(w["is_error"], false, "{w}");
    assert_eq!(w["structured"]["size"], "hello from mcp\n".len());
    let r = nth(&t, "file_read", 0);
    assert_eq!(r["is_error"], false, "{r}");
    assert_eq!(r["structured"]["content"], "hello from mcp\n", "{r}");
    let r64 = nth(&t, "file_read", 1);
    assert_eq!(
        r64["structured"]["content"], "aGVsbG8gZnJvbSBtY3AK",
        "{r64}"
    );
    let l = nth(&t, "file_list", 0);
    assert_eq!(
        l["structured"]["entries"],
        json!([{"path": "hello.txt", "type": "f", "size": 15}]),
        "{l}"
    );
    let root = nth(&t, "file_list", 1);
    let names: Vec<&str> = root["structured"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"README.md") && names.contains(&"notes") && names.contains(&".git"),
        "{names:?}"
    );
    // Confined to /workspace: '..', and a symlink out of it, read or write.
    let up_ = nth(&t, "file_read", 2);
    assert_eq!(up_["is_error"], true, "{up_}");
    assert!(text(up_).contains(".."), "{up_}");
    let via_link = nth(&t, "file_read", 3);
    assert_eq!(via_link["is_error"], true, "{via_link}");
    assert!(text(via_link).contains("outside /workspace"), "{via_link}");
    let w_link = nth(&t, "file_write", 1);
    assert_eq!(w_link["is_error"], true, "{w_link}");
    assert!(text(w_link).contains("outside /workspace"), "{w_link}");
    assert!(
        !Path::new("/etc/brig-mcp-escape").exists(),
        "nothing was written outside"
    );

    // The diff shows the new file.
    let d = nth(&t, "diff", 0);
    assert_eq!(d["is_error"], false, "{d}");
    assert!(
        d["structured"]["diff"]
            .as_str()
            .unwrap()
            .contains("+hello from mcp"),
        "{d}"
    );
    assert!(d["structured"]["diffstat"]
        .as_str()
        .unwrap()
        .contains("notes/hello.txt"));

    // The plan is the session's.
    let p = nth(&t, "plan_submit", 0);
    assert_eq!(p["is_error"], false, "{p}");
    let plan_id = p["structured"]["id"].as_str().unwrap().to_string();
    let (_, plans) = srv
        .call("GET", &format!("/v1/sessions/{id}/plans"), None)
        .await;
    assert!(plans.to_string().contains(&plan_id), "{plans}");

    // A migration in a `pr` session: refused by policy, as an isError
    // result that names the policy.
    let m = nth(&t, "exec", 2);
    assert_eq!(m["is_error"], true, "{m}");
    assert_eq!(m["structured"]["error"]["kind"], "denied", "{m}");
    assert!(text(m).starts_with("refused by brig"), "{m}");

    // Push (committing first) and the PR, through the gateway and the gate.
    let push = nth(&t, "push", 0);
    assert_eq!(push["is_error"], false, "{push}");
    let prefix = t["bot_prefix"].as_str().unwrap();
    assert_eq!(push["structured"]["branch"], format!("{prefix}work"));
    let pv = nth(&t, "diff", 1);
    assert_eq!(pv["is_error"], false, "{pv}");
    assert!(
        pv["structured"]["diff"]
            .as_str()
            .unwrap()
            .contains("+hello from mcp"),
        "{pv}"
    );
    let pr = nth(&t, "pr_open", 0);
    assert_eq!(pr["is_error"], false, "{pr}");
    assert_eq!(pr["structured"]["gate"]["passed"], true, "{pr}");
    assert_eq!(
        pr["structured"]["pull_request"]["head"],
        format!("{prefix}work")
    );
    // A push to main is the gateway's to refuse, and it says so.
    let bad = nth(&t, "push", 1);
    assert_eq!(bad["is_error"], true, "{bad}");
    assert!(text(bad).contains("main"), "{bad}");

    // An unknown tool is a JSON-RPC error, not a result.
    let u = t["unknown_tool"].as_str().unwrap();
    assert!(u.contains("unknown tool"), "{u}");

    // The journal: every command the tools ran, under the caller, with its
    // exit code; the refusal with its policy; the plan, the push, the PR.
    let evs = events(&srv, &id).await;
    let starts: Vec<&Value> = evs.iter().filter(|e| e["action"] == "exec.start").collect();
    assert!(
        starts.iter().all(|e| e["human"] == me.as_str()),
        "every exec is journaled under {me}"
    );
    let exit3 = starts
        .iter()
        .find(|e| argv_of(e).join(" ").contains("exit 3"))
        .expect("the exec is journaled");
    let exec_id = exit3["details"]["exec_id"].clone();
    assert!(
        evs.iter().any(|e| e["action"] == "exec.exit"
            && e["details"]["exec_id"] == exec_id
            && e["details"]["code"] == 3),
        "its exit code is journaled: {exec_id}"
    );
    assert!(
        starts
            .iter()
            .any(|e| argv_of(e).contains(&"/workspace/notes/hello.txt".to_string())),
        "the file tools' commands are journaled"
    );
    let denied: Vec<&Value> = evs
        .iter()
        .filter(|e| e["action"] == "policy.decision" && e["outcome"] == "denied")
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| text(m).contains(e["rule"].as_str().unwrap_or("?"))),
        "the refusal is journaled with the policy the tool named: {denied:?} / {m}"
    );
    assert!(
        !starts
            .iter()
            .any(|e| argv_of(e).first().map(String::as_str) == Some("alembic")),
        "the refused command never started"
    );
    for action in ["plan.submit", "git.push", "git.gate", "git.pr.open"] {
        assert!(
            evs.iter()
                .any(|e| e["action"] == action && e["human"] == me.as_str()),
            "{action} journaled under {me}"
        );
    }
    let ev_tool = nth(&t, "session_events", 0);
    assert!(
        ev_tool["structured"]["events"].as_array().unwrap().len() >= 5,
        "{ev_tool}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_needs_a_bearer_and_acts_as_its_principal_with_approvals() {
    use brig_identity::testing::{TestIdp, TestUser};
    require_root!();
    assert!(
        have_sdk(),
        "the MCP Python SDK is missing: pip install mcp (see .ci/run)"
    );
    let idp = TestIdp::start().await;
    let mut oidc = idp.config();
    oidc.roles_claim = Some("groups".into());
    let srv = Srv::start_with(|cfg| {
        let mut ops = cfg.profiles.get("default").unwrap().clone();
        ops.policy = "privileged".into();
        cfg.profiles.insert("ops".into(), ops);
        cfg.approvals.wait = "60s".into();
        cfg.tcp = Some(brig_server::config::TcpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
        });
        cfg.identity.oidc = Some(oidc);
    })
    .await;
    let api = srv.server.as_ref().unwrap().tcp_addr().unwrap();
    let alice = idp.id_token(&TestUser::new("alice").with_groups(&["privileged"]));
    let bob = idp.id_token(&TestUser::new("bob"));
    let carol = idp.id_token(&TestUser::new("carol").with_groups(&["db-approver"]));

    let mut mcp = tokio::process::Command::new(BRIG)
        .args([
            "--url",
            &format!("http://{api}"),
            "--json",
            "mcp",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("BRIG_TOKEN")
        .env_remove("BRIG_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(mcp.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("brig mcp says where it listens")
        .unwrap()
        .expect("a line");
    let listening: Value = serde_json::from_str(&first).unwrap();
    let url = listening["listening"].as_str().unwrap().to_string();
    assert!(url.ends_with("/mcp"), "{url}");

    let t = client(
        "http",
        &[
            ("MCP_URL", url.clone()),
            ("BRIG_API", format!("http://{api}")),
            ("ALICE", alice.clone()),
            ("BOB", bob.clone()),
            ("CAROL", carol.clone()),
        ],
    )
    .await;

    // No bearer, a bearer brig refuses, another scheme: 401, nothing served.
    let raw = &t["raw"];
    for k in ["no_token", "bad_token", "basic_auth"] {
        assert_eq!(raw[k]["status"], 401, "{k}: {raw}");
        assert!(
            raw[k]["www_authenticate"]
                .as_str()
                .unwrap()
                .starts_with("Bearer"),
            "{k}: {raw}"
        );
    }
    assert!(raw["no_token"]["session"].is_null());
    // alice's MCP session is hers: no session id is 400, bob on it 403.
    assert_eq!(raw["alice_init"]["status"], 200, "{raw}");
    assert!(raw["alice_init"]["session"].as_str().unwrap().len() >= 32);
    assert_eq!(raw["no_session"]["status"], 400, "{raw}");
    assert_eq!(raw["bob_on_alices_session"]["status"], 403, "{raw}");
    assert_eq!(raw["alice_on_her_session"]["status"], 200, "{raw}");
    assert!(raw["alice_on_her_session"]["body"]["result"]["tools"].is_array());

    // Through the SDK, as alice.
    let me = t["whoami"]["id"].as_str().unwrap().to_string();
    assert!(me.starts_with("oidc:") && me.ends_with("#alice"), "{me}");
    let id = t["session"].as_str().expect("a session").to_string();
    assert_eq!(srv.state(&id).await["human"], me.as_str());
    let hello = nth(&t, "exec", 0);
    assert_eq!(
        hello["structured"]["stdout"], "hello over http\n",
        "{hello}"
    );

    // The migration asks for a db-approver; carol approves with brig; the
    // command that waited ran, once, and approval_status has its result.
    let ask = nth(&t, "approval_request", 0);
    assert_eq!(ask["is_error"], false, "{ask}");
    let apr = t["approval"].as_str().expect("an approval id").to_string();
    assert!(
        text(ask).contains(&apr) && text(ask).contains("db-approver"),
        "{ask}"
    );
    let listed = nth(&t, "approval_list", 0);
    assert!(listed.to_string().contains(&apr), "{listed}");
    assert_eq!(t["approve_status"], 200, "{t}");
    let calls = t["calls"].as_array().unwrap();
    let last = calls
        .iter()
        .rev()
        .find(|c| c["tool"] == "approval_status")
        .unwrap();
    assert_eq!(
        last["structured"]["approval"]["state"], "approved",
        "{last}"
    );
    assert_eq!(last["structured"]["command"]["state"], "done", "{last}");
    let res = &last["structured"]["command"]["result"];
    assert_eq!(res["exit_code"], 0, "{last}");
    assert!(
        res["stdout"].as_str().unwrap().contains("migrated"),
        "{last}"
    );

    // The journal, under alice: her commands, the request, carol's grant.
    let evs = events(&srv, &id).await;
    let migrations: Vec<&Value> = evs
        .iter()
        .filter(|e| e["action"] == "exec.start" && argv_of(e).join(" ").contains("alembic upgrade"))
        .collect();
    assert_eq!(migrations.len(), 1, "the approved command ran once");
    assert_eq!(migrations[0]["human"], me.as_str());
    let req = evs
        .iter()
        .find(|e| e["action"] == "approval.request")
        .expect("approval.request journaled");
    assert_eq!(req["human"], me.as_str());
    assert!(
        evs.iter().any(
            |e| e["action"].as_str().unwrap_or("").starts_with("approval.")
                && e.to_string().contains("#carol")
        ),
        "carol's decision is journaled"
    );
    assert!(evs.iter().any(|e| e["action"] == "plan.submit"));

    let _ = mcp.start_kill();
    let _ = mcp.wait().await;
    srv.stop().await;
}
