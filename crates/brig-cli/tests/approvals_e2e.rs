//! Policy and human approval (issue 7) end to end in real `native`
//! sessions: Cedar decides every exec; in a `privileged` session a
//! migration waits for a db-approver, who is not the session's own human;
//! a denial reaches the agent with its reason; two approvers cannot both
//! decide; an approval for a killed session is refused; a `pr` session
//! cannot run it at all; every step is in the journal.

mod server_support;

use std::time::Duration;

use brig_policy::{HumanPrincipal, Request};
use serde_json::{json, Value};
use server_support::*;

fn configure(cfg: &mut brig_server::ServerConfig) {
    let mut ops = cfg.profiles.get("default").unwrap().clone();
    ops.policy = "privileged".into();
    cfg.profiles.insert("ops".into(), ops);
    cfg.approvals.wait = "30s".into();
}

const MIGRATE: &str = "alembic upgrade head || echo migrated";
const APPLY: &str = "terraform apply -auto-approve || echo applied";

async fn pending(srv: &Srv, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let (st, v) = srv.call("GET", "/v1/approvals?state=pending", None).await;
        assert_eq!(st, 200, "{v}");
        if v.as_array().unwrap().len() >= n {
            return v.as_array().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} pending approval requests");
}

/// `who` decides `id`: policy first (approval.grant), then the store, as
/// the API does for an authenticated caller.
async fn decide(
    srv: &Srv,
    who: &HumanPrincipal,
    id: &str,
    approve: bool,
    note: Option<&str>,
) -> brig_core::Result<Value> {
    let mgr = srv.server.as_ref().unwrap().manager().clone();
    let rec = mgr.approvals()?.get(id).await?;
    mgr.decide_human(&Request::approval_grant(who, &rec.human, id, &rec.roles))
        .await?;
    let live = mgr.is_live(&rec.session.parse().unwrap());
    let roles: Vec<String> = rec
        .roles
        .iter()
        .filter(|r| who.roles.contains(r))
        .cloned()
        .collect();
    let done = mgr
        .approvals()?
        .decide(
            id,
            brig_server::approvals::HumanDecision {
                by: who.id.clone(),
                approve,
                for_: Some(Duration::from_secs(600)),
                note: note.map(str::to_string),
                roles,
            },
            live,
        )
        .await?;
    Ok(serde_json::to_value(done).unwrap())
}

/// An exec that may wait for an approval, on its own task.
fn exec_in_background(
    srv: &Srv,
    id: &str,
    script: &str,
) -> tokio::task::JoinHandle<brig_core::Result<(u16, Value)>> {
    let sock = srv.sock.clone();
    let path = format!("/v1/sessions/{id}/exec");
    let body = sh(script);
    tokio::spawn(
        async move { brig_server::client::request(&sock, "POST", &path, Some(&body)).await },
    )
}

fn sh(script: &str) -> Value {
    json!({"argv": ["/bin/sh", "-c", script], "timeout_ms": 60000})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_waits_for_another_human_with_the_role() {
    require_root!();
    let srv = Srv::start_with(configure).await;
    let s = srv
        .create(json!({"task": "OPS-1", "profile": "ops", "human": "ada"}))
        .await;
    let id = s["id"].as_str().unwrap().to_string();

    // An ordinary command runs at once.
    let r = srv.exec_req(&id, sh("echo ok")).await;
    assert_eq!(r["status"]["code"], 0, "{r}");

    // The migration waits...
    let waiting = exec_in_background(&srv, &id, MIGRATE);
    let reqs = pending(&srv, 1).await;
    let a = &reqs[0];
    let apr = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["action"], "exec");
    assert_eq!(a["capability"], "migration");
    assert_eq!(a["roles"], json!(["db-approver"]));
    assert_eq!(a["human"], "ada");
    assert!(a["reason"].as_str().unwrap().contains("db-approver"), "{a}");
    assert!(!waiting.is_finished());

    // ...the session's own human cannot approve it, nor can someone
    // without the role (the local admin over the socket, through the API).
    let ada = HumanPrincipal::new("ada").with_roles(&["db-approver"]);
    let e = decide(&srv, &ada, &apr, true, None).await.unwrap_err();
    assert!(e.to_string().contains("deploy.no-self-approval"), "{e}");
    let (st, v) = srv
        .call(
            "POST",
            &format!("/v1/approvals/{apr}/approve"),
            Some(json!({"for": "10m"})),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    assert!(
        v.to_string().contains("default-deny") || v.to_string().contains("approval"),
        "{v}"
    );

    // bob holds the role: approved, and the command runs.
    let bob = HumanPrincipal::new("bob").with_roles(&["db-approver"]);
    let done = decide(&srv, &bob, &apr, true, None).await.unwrap();
    assert_eq!(done["state"], "approved");
    assert_eq!(done["decided_by"], "human:bob");
    let (st, out) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the exec ends once approved")
        .unwrap()
        .unwrap();
    assert_eq!(st, 200, "{out}");
    assert_eq!(out["status"]["code"], 0, "{out}");
    assert!(
        out["stdout"].as_str().unwrap().contains("migrated"),
        "{out}"
    );
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains(&format!("needs approval {apr}")),
        "the agent was told what it waited for: {out}"
    );

    // A second approver finds it decided.
    let carol = HumanPrincipal::new("carol").with_roles(&["db-approver"]);
    let e = decide(&srv, &carol, &apr, false, Some("no"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already approved (by human:bob)"),
        "{e}"
    );

    // The approval holds for the same command: it runs at once.
    let r = tokio::time::timeout(Duration::from_secs(10), srv.exec_req(&id, sh(MIGRATE)))
        .await
        .expect("a held approval does not wait");
    assert_eq!(r["status"]["code"], 0, "{r}");
    assert_eq!(pending(&srv, 0).await.len(), 0);

    // A denial reaches the agent with its reason.
    let waiting = exec_in_background(&srv, &id, APPLY);
    let reqs = pending(&srv, 1).await;
    let apr2 = reqs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(reqs[0]["roles"], json!(["infra-approver"]));
    let dave = HumanPrincipal::new("dave").with_roles(&["infra-approver"]);
    decide(&srv, &dave, &apr2, false, Some("not during the freeze"))
        .await
        .unwrap();
    let (st, out) = waiting.await.unwrap().unwrap();
    assert_eq!(st, 403, "{out}");
    let msg = out["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("denied by human:dave: not during the freeze"),
        "{msg}"
    );

    // A request pending when the session is killed cannot be approved.
    let waiting = exec_in_background(&srv, &id, "alembic downgrade -1 || true");
    let reqs = pending(&srv, 1).await;
    let apr3 = reqs[0]["id"].as_str().unwrap().to_string();
    let (st, _) = srv
        .call("POST", &format!("/v1/sessions/{id}/kill"), None)
        .await;
    assert_eq!(st, 200);
    let _ = waiting.await;
    let e = decide(&srv, &bob, &apr3, true, None).await.unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");

    // The journal has each step, with the policies that decided.
    let (_, j) = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await;
    let evs = j.as_array().unwrap();
    let count = |a: &str| evs.iter().filter(|e| e["action"] == a).count();
    assert_eq!(count("approval.request"), 3, "{j}");
    assert_eq!(count("approval.grant"), 1);
    assert_eq!(count("approval.deny"), 1);
    assert_eq!(count("approval.cancel"), 1);
    let needs: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e["action"] == "policy.decision" && e["details"]["decision"] == "needs_approval"
        })
        .collect();
    assert!(needs.len() >= 3, "{j}");
    assert_eq!(needs[0]["rule"], "privileged.exec-migration");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pr_session_cannot_run_a_migration_and_is_told_why() {
    require_root!();
    let srv = Srv::start_with(configure).await;
    let s = srv.create(json!({"task": "PR-1", "human": "ada"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let (st, v) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(sh(MIGRATE)),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("pr.exec-sensitive") && m.contains("privileged session"),
        "{m}"
    );
    assert!(
        v["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("brig policy test"),
        "{v}"
    );
    // Nothing ran, nothing is pending, and the denial is journaled.
    assert_eq!(pending(&srv, 0).await.len(), 0);
    let (_, j) = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await;
    assert!(j
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "policy.decision"
            && e["outcome"] == "denied"
            && e["rule"] == "pr.exec-sensitive"));
    assert!(!j
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "exec.start"));
    // The policies brig started with are journaled as a change (first start).
    let (_, all) = srv.call("GET", "/v1/journal?limit=10000", None).await;
    let change = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "policy.change")
        .cloned()
        .expect("policy.change at start");
    assert!(
        change["details"]["to"].as_str().unwrap().len() >= 16,
        "{change}"
    );
    assert!(change["details"]["profiles"]["privileged"]
        .as_array()
        .unwrap()
        .iter()
        .any(|id| id == "privileged.exec-migration"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_rule_approves_at_once_and_says_so() {
    require_root!();
    let srv = Srv::start_with(|cfg| {
        configure(cfg);
        cfg.approvals.standing.insert(
            "ops-migrations".into(),
            toml::from_str(
                "capability = \"migration\"\ntask_prefix = \"OPS-\"\nroles = [\"db-approver\"]\n",
            )
            .unwrap(),
        );
    })
    .await;
    let s = srv
        .create(json!({"task": "OPS-7", "profile": "ops", "human": "ada"}))
        .await;
    let id = s["id"].as_str().unwrap().to_string();
    let r = tokio::time::timeout(Duration::from_secs(10), srv.exec_req(&id, sh(MIGRATE)))
        .await
        .expect("a standing rule does not wait for a human");
    assert_eq!(r["status"]["code"], 0, "{r}");
    let (_, all) = srv.call("GET", "/v1/approvals", None).await;
    assert_eq!(all[0]["state"], "approved", "{all}");
    assert_eq!(all[0]["decided_by"], "rule:ops-migrations");
    srv.stop().await;
}

/// A plain HTTP origin on loopback answering 200 "hello".
fn origin() -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut b = [0u8; 4096];
            let _ = c.read(&mut b);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n",
            );
        }
    });
    port
}

/// Cedar's net.connect on what the egress policy allows: a host
/// `[policy.sensitive] hosts` marks is refused to a pr session, and waits
/// for a security-approver in a privileged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_host_is_policy_not_only_egress() {
    require_root!();
    let port = origin();
    let srv = Srv::start_with(|cfg| {
        cfg.policy.sensitive.hosts = [("prod".to_string(), vec!["*.prod.test".to_string()])].into();
        for h in ["db.prod.test", "api.dev.test"] {
            cfg.resolver
                .static_hosts
                .insert(h.into(), vec!["127.0.0.1".parse().unwrap()]);
        }
        let p = cfg.profiles.get_mut("default").unwrap();
        p.egress = toml::from_str(&format!(
            "[[allow]]\nname = \"test\"\ndomains = [\"db.prod.test\", \"api.dev.test\"]\nports = [{port}]\n[ssrf]\ntrusted_cidrs = [\"127.0.0.0/8\"]\n"
        ))
        .unwrap();
        configure(cfg);
    })
    .await;
    let curl = |host: &str| {
        format!("curl -sS -o /dev/stderr -w '%{{http_code}}' http://{host}:{port}/ 2>&1; true")
    };
    // pr: the dev host goes, the prod host is refused by policy.
    let pr = srv.create(json!({"task": "NET-1", "human": "ada"})).await;
    let pr = pr["id"].as_str().unwrap().to_string();
    let r = srv.exec_req(&pr, sh(&curl("api.dev.test"))).await;
    assert!(r["stdout"].as_str().unwrap().contains("200"), "{r}");
    let r = srv.exec_req(&pr, sh(&curl("db.prod.test"))).await;
    let out = format!("{}{}", r["stdout"], r["stderr"]);
    assert!(
        out.contains("403") && out.contains("pr.net-sensitive"),
        "{out}"
    );

    // privileged: refused until a security-approver approves, then it goes.
    let ops = srv
        .create(json!({"task": "NET-2", "profile": "ops", "human": "ada"}))
        .await;
    let ops = ops["id"].as_str().unwrap().to_string();
    let r = srv.exec_req(&ops, sh(&curl("db.prod.test"))).await;
    let out = format!("{}{}", r["stdout"], r["stderr"]);
    assert!(
        out.contains("403") && out.contains("security-approver"),
        "{out}"
    );
    let reqs = pending(&srv, 1).await;
    assert_eq!(reqs[0]["action"], "net.connect");
    assert_eq!(reqs[0]["capability"], "prod");
    let apr = reqs[0]["id"].as_str().unwrap().to_string();
    let eve = HumanPrincipal::new("eve").with_roles(&["security-approver"]);
    decide(&srv, &eve, &apr, true, None).await.unwrap();
    // The gate sees the approval on its next decision.
    let mut ok = false;
    for _ in 0..20 {
        let r = srv.exec_req(&ops, sh(&curl("db.prod.test"))).await;
        if r["stdout"].as_str().unwrap().contains("200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the approved connection still fails");
    srv.stop().await;
}

/// A request nobody decides expires: the waiting command is told so, and
/// the journal says it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_request_expires_and_the_agent_is_told() {
    require_root!();
    let srv = Srv::start_with(|cfg| {
        configure(cfg);
        cfg.approvals.expires = "1s".into();
        cfg.approvals.wait = "20s".into();
    })
    .await;
    let s = srv
        .create(json!({"task": "OPS-2", "profile": "ops", "human": "ada"}))
        .await;
    let id = s["id"].as_str().unwrap().to_string();
    let t0 = std::time::Instant::now();
    let (st, v) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            Some(sh(MIGRATE)),
        )
        .await;
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "it waited for `wait`, not the expiry"
    );
    assert_eq!(st, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is expired"),
        "{v}"
    );
    let (_, all) = srv.call("GET", "/v1/approvals", None).await;
    assert_eq!(all[0]["state"], "expired", "{all}");
    let (_, j) = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await;
    assert!(j
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "approval.expire"));
    srv.stop().await;
}

/// One request over TCP with a bearer token: (status, body).
async fn tcp(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// Identity and policy together, over TCP with real ID tokens: a human
/// cannot end someone else's session nor approve without the role; the
/// session's own human cannot approve its request; another human holding
/// the role can, and the waiting command runs; the owner ends their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_and_kills_are_decided_by_who_is_calling() {
    use brig_identity::testing::{TestIdp, TestUser};
    require_root!();
    let idp = TestIdp::start().await;
    let mut oidc = idp.config();
    oidc.roles_claim = Some("groups".into());
    let srv = Srv::start_with(|cfg| {
        configure(cfg);
        cfg.tcp = Some(brig_server::config::TcpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file: None,
        });
        cfg.identity.oidc = Some(oidc);
    })
    .await;
    let addr = srv.server.as_ref().unwrap().tcp_addr().unwrap();
    let alice = idp.id_token(&TestUser::new("alice").with_groups(&["privileged", "db-approver"]));
    let bob = idp.id_token(&TestUser::new("bob"));
    let carol = idp.id_token(&TestUser::new("carol").with_groups(&["db-approver"]));
    let (st, v) = tcp(
        addr,
        "POST",
        "/v1/sessions",
        &alice,
        Some(json!({"task": "OPS-5", "profile": "ops"})),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // bob may not read, act in or end alice's session...
    for (method, path, body) in [
        ("GET", format!("/v1/sessions/{id}"), None),
        ("GET", format!("/v1/sessions/{id}/events"), None),
        (
            "POST",
            format!("/v1/sessions/{id}/exec"),
            Some(sh("echo hi")),
        ),
    ] {
        let (st, v) = tcp(addr, method, &path, &bob, body).await;
        assert_eq!(st, 403, "{method} {path}: {v}");
        assert!(
            v.to_string().contains("session.use") || v.to_string().contains("default-deny"),
            "{v}"
        );
    }
    let (st, v) = tcp(addr, "GET", "/v1/sessions", &bob, None).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v.as_array().unwrap().is_empty(),
        "bob sees none of alice's: {v}"
    );
    // Nor her journal: asked by session, refused; the whole journal holds
    // only bob's own sessions' events (none), not the server's either.
    let (st, v) = tcp(
        addr,
        "GET",
        &format!("/v1/journal?session={id}"),
        &bob,
        None,
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = tcp(addr, "GET", "/v1/journal?limit=10000", &bob, None).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v.as_array().unwrap().is_empty(),
        "bob reads others' events: {v}"
    );
    // ...an auditor reads it and acts in nothing; alice sees and uses her own.
    let dora = idp.id_token(&TestUser::new("dora").with_groups(&["auditor"]));
    let (st, v) = tcp(
        addr,
        "GET",
        &format!("/v1/sessions/{id}/events"),
        &dora,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = tcp(addr, "GET", "/v1/journal?limit=10000", &dora, None).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v.as_array().unwrap().iter().any(|e| e["session"].is_null()),
        "an auditor reads the whole journal: {v}"
    );
    let (st, v) = tcp(
        addr,
        "POST",
        &format!("/v1/sessions/{id}/exec"),
        &dora,
        Some(sh("echo hi")),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = tcp(addr, "GET", "/v1/sessions", &alice, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    let (st, v) = tcp(
        addr,
        "POST",
        &format!("/v1/sessions/{id}/exec"),
        &alice,
        Some(sh("echo mine")),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // alice reads her own session's events, and only those.
    let (st, v) = tcp(addr, "GET", "/v1/journal?limit=10000", &alice, None).await;
    assert_eq!(st, 200, "{v}");
    let evs = v.as_array().unwrap();
    assert!(!evs.is_empty(), "{v}");
    assert!(evs.iter().all(|e| e["session"] == id.as_str()), "{v}");
    // The refusals are journaled.
    let (_, j) = srv.call("GET", "/v1/journal?limit=10000", None).await;
    let refused = j
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "policy.decision"
                && e["outcome"] == "denied"
                && e["details"]["action"] == "session.use"
        })
        .count();
    assert!(refused >= 5, "{j}");

    // bob may not end alice's session, alone or with everyone's.
    let (st, v) = tcp(addr, "DELETE", &format!("/v1/sessions/{id}"), &bob, None).await;
    assert_eq!(st, 403, "{v}");
    let (st, v) = tcp(addr, "POST", "/v1/kill", &bob, Some(json!({"all": true}))).await;
    assert_eq!(st, 403, "{v}");

    // alice's migration waits for a db-approver.
    let (id2, alice2) = (id.clone(), alice.clone());
    let waiting = tokio::spawn(async move {
        tcp(
            addr,
            "POST",
            &format!("/v1/sessions/{id2}/exec"),
            &alice2,
            Some(sh(MIGRATE)),
        )
        .await
    });
    let apr = pending(&srv, 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/approvals/{apr}/approve");
    let (st, v) = tcp(addr, "POST", &path, &bob, Some(json!({"for": "5m"}))).await;
    assert_eq!(st, 403, "bob holds no db-approver role: {v}");
    let (st, v) = tcp(addr, "POST", &path, &alice, Some(json!({"for": "5m"}))).await;
    assert_eq!(st, 403, "{v}");
    assert!(v.to_string().contains("deploy.no-self-approval"), "{v}");
    let (st, v) = tcp(addr, "POST", &path, &carol, Some(json!({"for": "5m"}))).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["decided_by"].as_str().unwrap().starts_with("human:oidc:"),
        "{v}"
    );
    let (st, done) = waiting.await.unwrap();
    assert_eq!(st, 200, "{done}");
    assert!(
        done["stdout"].as_str().unwrap().contains("migrated"),
        "{done}"
    );

    // alice ends her own session.
    let (st, v) = tcp(addr, "DELETE", &format!("/v1/sessions/{id}"), &alice, None).await;
    assert_eq!(st, 200, "{v}");
    srv.stop().await;
}

/// A `terraform` of the test's own in /workspace/bin, started by a script
/// whose own command line names no sensitive command: only the exec inside
/// the sandbox shows what it is.
const HIDDEN_APPLY: &str = "mkdir -p /workspace/bin && \
     printf '#!/bin/sh\\necho \"terraform ran: $*\"\\n' > /workspace/bin/terraform && \
     chmod +x /workspace/bin/terraform && \
     PATH=/workspace/bin:$PATH; t=terraform; $t apply -auto-approve; echo \"rc=$?\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_command_started_inside_the_sandbox_waits_for_approval_too() {
    require_root!();
    let srv = Srv::start_with(configure).await;
    let s = srv
        .create(json!({"task": "OPS-7", "profile": "ops", "human": "ada"}))
        .await;
    let id = s["id"].as_str().unwrap().to_string();
    assert!(
        s["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "capture:hold-sensitive"),
        "{s}"
    );

    // The script itself is not sensitive: the API lets it start; its
    // `terraform apply` waits in execve for an infra-approver.
    let waiting = exec_in_background(&srv, &id, HIDDEN_APPLY);
    let reqs = pending(&srv, 1).await;
    let a = &reqs[0];
    let apr = a["id"].as_str().unwrap().to_string();
    assert_eq!(a["action"], "exec");
    assert_eq!(a["capability"], "iac");
    assert_eq!(a["roles"], json!(["infra-approver"]));
    assert!(
        a["resource"]
            .as_str()
            .unwrap()
            .starts_with("terraform apply"),
        "{a}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the held command must not run");

    let dave = HumanPrincipal::new("dave").with_roles(&["infra-approver"]);
    decide(&srv, &dave, &apr, true, None).await.unwrap();
    let (st, out) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the script ends once approved")
        .unwrap()
        .unwrap();
    assert_eq!(st, 200, "{out}");
    let stdout = out["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("terraform ran: apply -auto-approve") && stdout.contains("rc=0"),
        "{out}"
    );
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .contains(&format!("needs approval {apr}")),
        "the process was told what it waited for: {out}"
    );

    // Journaled: the decision that held it, the one that let it go, and
    // the process itself (process events are batched: soon after).
    let mut evs = Vec::new();
    for _ in 0..100 {
        let (_, j) = srv
            .call(
                "GET",
                &format!("/v1/journal?session={id}&limit=10000"),
                None,
            )
            .await;
        evs = j.as_array().unwrap().clone();
        if evs
            .iter()
            .any(|e| e["action"] == "process.exec" && e["details"]["argv"][0] == "terraform")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(evs.iter().any(|e| e["action"] == "policy.decision"
        && e["rule"] == "privileged.exec-iac"
        && e["details"]["decision"] == "needs_approval"));
    let execs: Vec<&Value> = evs
        .iter()
        .filter(|e| e["action"] == "process.exec")
        .collect();
    assert!(
        execs
            .iter()
            .any(|e| e["details"]["argv"] == json!(["terraform", "apply", "-auto-approve"])),
        "{execs:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pr_session_cannot_start_a_sensitive_command_from_a_script_either() {
    require_root!();
    let srv = Srv::start_with(configure).await;
    let s = srv.create(json!({"task": "PR-7", "human": "ada"})).await;
    let id = s["id"].as_str().unwrap().to_string();
    let r = tokio::time::timeout(Duration::from_secs(30), srv.exec_req(&id, sh(HIDDEN_APPLY)))
        .await
        .expect("a refusal does not wait");
    let stdout = r["stdout"].as_str().unwrap();
    assert!(!stdout.contains("terraform ran"), "{r}");
    // execve failed with EPERM: the shell's "cannot execute" status.
    assert!(stdout.contains("rc=126"), "{r}");
    let stderr = r["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("brig: refused") && stderr.contains("pr.exec-sensitive"),
        "the process was told why: {r}"
    );
    assert_eq!(pending(&srv, 0).await.len(), 0);
    let (_, j) = srv
        .call(
            "GET",
            &format!("/v1/journal?session={id}&limit=10000"),
            None,
        )
        .await;
    let evs = j.as_array().unwrap();
    let denial = evs
        .iter()
        .find(|e| {
            e["action"] == "policy.decision"
                && e["outcome"] == "denied"
                && e["rule"] == "pr.exec-sensitive"
        })
        .unwrap_or_else(|| panic!("no denial journaled: {j}"));
    assert!(
        denial.to_string().contains("terraform"),
        "the denial names the command: {denial}"
    );
    // A command that only holds a sensitive word is looked at, and goes.
    let r = srv
        .exec_req(
            &id,
            sh(
                "printf '#!/bin/sh\necho docs made\n' > /workspace/bin/terraform-docs && \
                chmod +x /workspace/bin/terraform-docs && PATH=/workspace/bin:$PATH terraform-docs",
            ),
        )
        .await;
    assert_eq!(r["status"]["code"], 0, "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("docs made"), "{r}");
    srv.stop().await;
}
