//! Repo access end to end (issue 5) in a real `native` session: the
//! session's checkout at a pinned commit, the agent's git talking to brig's
//! gateway through the session's egress channel (HTTP_PROXY), pushes judged
//! and scanned, accepted commits signed and landed upstream, the test gate
//! and the pull request on the embedded forge, every step journaled.

mod server_support;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use server_support::*;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
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
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git_ok(dir: &Path, args: &[&str]) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap()
        .status
        .success()
}

/// An upstream working tree: two commits on main, `app/` and `docs/`, a
/// test script the gate runs.
fn upstream() -> (tempfile::TempDir, String, String) {
    let t = tempfile::Builder::new()
        .prefix("brig-up-")
        .tempdir()
        .unwrap();
    let up = t.path().join("app");
    std::fs::create_dir_all(up.join("app")).unwrap();
    std::fs::create_dir_all(up.join("docs")).unwrap();
    git(&up, &["init", "-q", "-b", "main"]);
    std::fs::write(up.join("app/calc.sh"), "add() { echo $(( $1 + $2 )); }\n").unwrap();
    std::fs::write(
        up.join("app/test.sh"),
        ". ./app/calc.sh\n[ \"$(add 2 2)\" = 4 ] || { echo 'FAIL add'; exit 1; }\necho 'ok 1 add'\n",
    )
    .unwrap();
    std::fs::write(up.join("docs/guide.md"), "# guide\n").unwrap();
    git(&up, &["add", "."]);
    git(&up, &["commit", "-qm", "first"]);
    let first = git(&up, &["rev-parse", "HEAD"]);
    std::fs::write(up.join("docs/guide.md"), "# guide\nmore\n").unwrap();
    git(&up, &["commit", "-qam", "second"]);
    let second = git(&up, &["rev-parse", "HEAD"]);
    // The sandbox's mapped users only need to traverse to it (brig reads it as root).
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (t, first, second)
}

/// Run a shell script in /workspace; (exit code, stdout, stderr).
async fn sh(srv: &Srv, id: &str, script: &str) -> (i64, String, String) {
    let r = srv.exec(id, &["/bin/sh", "-c", script]).await;
    (
        r["status"]["code"].as_i64().unwrap_or(-1),
        r["stdout"].as_str().unwrap_or("").to_string(),
        r["stderr"].as_str().unwrap_or("").to_string(),
    )
}

async fn events(srv: &Srv, id: &str, action: &str) -> Vec<Value> {
    let (_, v) = srv
        .call("GET", &format!("/v1/sessions/{id}/events"), None)
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

fn gated(cfg: &mut brig_server::ServerConfig) {
    let p = cfg.profiles.get_mut("default").unwrap();
    p.gate = Some(brig_server::git_config::Gate {
        test: "sh app/test.sh".into(),
        coverage: None,
        max_coverage_drop: 0.0,
        timeout: std::time::Duration::from_secs(60),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_scan_sign_gate_and_pull_request_through_the_gateway() {
    require_root!();
    let (up_dir, first, second) = upstream();
    let up = up_dir.path().join("app");
    let srv = Srv::start_with(gated).await;
    let s = srv
        .create(json!({"task": "GIT-1", "repo": up.display().to_string(), "ref": "main", "sparse": ["app"]}))
        .await;
    let id = s["id"].as_str().unwrap().to_string();
    let show = srv.state(&id).await;
    assert_eq!(show["git"]["commit"], second.as_str(), "{show}");
    assert_eq!(show["git"]["origin"], "http://git.brig/app.git");
    let prefix = show["git"]["bot_prefix"].as_str().unwrap().to_string();
    assert_eq!(prefix, format!("brig/{id}/"));

    // Pinned, sparse, no other history, origin is the gateway.
    let (code, out, err) = sh(
        &srv,
        &id,
        "cd /workspace && git rev-parse HEAD && git rev-list --all --count && ls && git remote get-url origin",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], second);
    assert_eq!(lines[1], "1");
    assert!(lines.contains(&"app") && !lines.contains(&"docs"), "{out}");
    let (code, _, _) = sh(
        &srv,
        &id,
        &format!("cd /workspace && git cat-file -e {first}"),
    )
    .await;
    assert_ne!(code, 0, "the older commit must not be in the sandbox");

    // A fetch through the gateway works (and is journaled).
    let (code, _, err) = sh(&srv, &id, "cd /workspace && git fetch -q origin").await;
    assert_eq!(code, 0, "fetch: {err}");

    // An accepted push: lands upstream, re-written with the session's identity, signed.
    let (code, _, err) = sh(
        &srv,
        &id,
        &format!(
            "cd /workspace && printf 'sub() {{ echo $(( $1 - $2 )); }}\\n' >> app/calc.sh && \
             git commit -qam 'add sub' && git push -q origin HEAD:{prefix}feature 2>&1"
        ),
    )
    .await;
    assert_eq!(code, 0, "push: {err}");
    let branch = format!("{prefix}feature");
    // The agent's own commit (upstream has its signed re-write).
    let (_, mine, _) = sh(&srv, &id, "cd /workspace && git rev-parse HEAD").await;
    let mine = mine.trim().to_string();
    let tip = git(&up, &["rev-parse", &branch]);
    assert_eq!(git(&up, &["rev-parse", &format!("{tip}^")]), second);
    assert_eq!(
        git(&up, &["log", "-1", "--format=%an <%ae>", &tip]),
        format!("brig agent {id} <{id}@agents.brig.invalid>")
    );
    let (st, key) = srv.call("GET", "/v1/git/signing-key", None).await;
    assert_eq!(st, 200, "{key}");
    let signers = up_dir.path().join("allowed_signers");
    std::fs::write(
        &signers,
        format!("{}\n", key["allowed_signers"].as_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("git")
        .arg("-C")
        .arg(&up)
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("gpg.ssh.allowedSignersFile={}", signers.display()))
        .args(["verify-commit", &tip])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify-commit: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Rejected, in git's own output, nothing upstream: a protected branch,
    // a secret (in an older commit of the push), a tag.
    let (code, out, _) = sh(&srv, &id, "cd /workspace && git push origin HEAD:main 2>&1").await;
    assert_ne!(code, 0);
    assert!(out.contains("main"), "{out}");
    let secret = "AKIA".to_string() + "Z7QWERTYUIOPASDF";
    let (code, out, _) = sh(
        &srv,
        &id,
        &format!(
            "cd /workspace && printf 'aws_access_key_id = {secret}\\n' > app/conf.ini && git add app/conf.ini && \
             git commit -qm 'config' && echo fine >> app/calc.sh && git commit -qam 'more' && \
             git push origin HEAD:{prefix}leak 2>&1"
        ),
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("app/conf.ini"), "{out}");
    assert!(
        !out.contains(&secret),
        "the secret must never be echoed: {out}"
    );
    assert!(!git_ok(
        &up,
        &["rev-parse", "--verify", "-q", &format!("{prefix}leak")]
    ));
    // A large binary and a denied file name, each named in git's output.
    for (what, script, shown) in [
        (
            "large binary",
            "head -c 3000000 /dev/urandom > app/blob.bin && git add app/blob.bin && git commit -qm blob",
            "app/blob.bin",
        ),
        (
            "denied file",
            "printf 'DB_URL=postgres://localhost/x\\n' > app/.env && git add -f app/.env && git commit -qm env",
            "app/.env",
        ),
    ] {
        let (code, out, _) = sh(
            &srv,
            &id,
            &format!(
                "cd /workspace && git reset -q --hard {mine}; \
                 {script} && git push origin HEAD:{prefix}bad 2>&1"
            ),
        )
        .await;
        assert_ne!(code, 0, "{what}: {out}");
        assert!(out.contains(shown), "{what}: {out}");
        assert!(!git_ok(&up, &["rev-parse", "--verify", "-q", &format!("{prefix}bad")]), "{what}");
    }
    let (code, _, _) = sh(
        &srv,
        &id,
        "cd /workspace && git tag v9 && git push origin v9 2>&1",
    )
    .await;
    assert_ne!(code, 0);
    assert!(!git_ok(
        &up,
        &["rev-parse", "--verify", "-q", "refs/tags/v9"]
    ));

    // Preview, gate, pull request on the embedded forge.
    let (st, p) = srv
        .call(
            "GET",
            &format!("/v1/sessions/{id}/pr/preview?branch={branch}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert!(
        p["diffstat"].as_str().unwrap().contains("app/calc.sh"),
        "{p}"
    );
    assert!(p["diff"].as_str().unwrap().contains("+sub()"), "{p}");
    let (st, pr) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/pulls"),
            Some(json!({"title": "Add sub", "body": "Adds sub().", "branch": branch})),
        )
        .await;
    assert_eq!(st, 201, "{pr}");
    assert_eq!(pr["gate"]["passed"], true, "{pr}");
    assert_eq!(pr["pull_request"]["head"], branch.as_str());
    assert_eq!(pr["pull_request"]["base"], "main");
    assert!(
        pr["pull_request"]["body"]
            .as_str()
            .unwrap()
            .contains("test gate: passed"),
        "{pr}"
    );
    let n = pr["pull_request"]["number"].as_u64().unwrap();
    assert!(up.join(format!(".git/brig/pulls/{n}.json")).is_file());

    // A failing gate opens nothing.
    let (code, _, err) = sh(
        &srv,
        &id,
        &format!(
            "cd /workspace && git reset -q --hard {mine}; \
             sed -i 's/+ \\$2/+ $2 + 1/' app/calc.sh && git commit -qam 'break add' && git push -q origin HEAD:{prefix}broken 2>&1"
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (st, e) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/pulls"),
            Some(json!({"title": "Broken", "branch": format!("{prefix}broken")})),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("test gate failed"),
        "{e}"
    );
    let (_, list) = srv
        .call("GET", &format!("/v1/sessions/{id}/pulls"), None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The journal: checkout, fetches, pushes (accepted and rejected), gate, PR.
    assert_eq!(events(&srv, &id, "git.checkout").await.len(), 1);
    assert!(!events(&srv, &id, "git.fetch").await.is_empty());
    let pushes = events(&srv, &id, "git.push").await;
    assert!(
        pushes.iter().any(|e| e["outcome"] == "success"),
        "{pushes:?}"
    );
    assert!(
        pushes.iter().filter(|e| e["outcome"] == "denied").count() >= 3,
        "{pushes:?}"
    );
    let all = serde_json::to_string(&pushes).unwrap();
    assert!(!all.contains(&secret), "no secret in the journal");
    let gates = events(&srv, &id, "git.gate").await;
    assert!(
        gates.iter().any(|e| e["outcome"] == "success")
            && gates.iter().any(|e| e["outcome"] == "failure")
    );
    assert_eq!(events(&srv, &id, "git.pr.open").await.len(), 2);

    let (st, _) = srv
        .call("DELETE", &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(st, 200);
    assert!(
        !srv.data().join("git").join(&id).exists(),
        "the session's git directory goes with it"
    );
    srv.assert_gone(&id);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_git_input_is_a_clear_error_and_leaves_nothing() {
    require_root!();
    let (up_dir, _, _) = upstream();
    let up = up_dir.path().join("app");
    let srv = Srv::start().await;
    let repo = up.display().to_string();
    for (body, want) in [
        (
            json!({"task": "G-2", "repo": repo, "ref": "no-such-branch"}),
            "no-such-branch",
        ),
        (
            json!({"task": "G-2", "repo": repo, "sparse": ["nope"]}),
            "nope",
        ),
        (
            json!({"task": "G-2", "repo": repo, "ref": "--upload-pack=x"}),
            "not a valid git ref",
        ),
        (
            json!({"task": "G-2", "repo": srv.data().display().to_string(), "ref": "main"}),
            "not a git repository",
        ),
    ] {
        let (st, e) = srv.call("POST", "/v1/sessions", Some(body.clone())).await;
        assert!((400..500).contains(&st), "{body}: {st} {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(want),
            "{body}: {e}"
        );
    }
    // Nothing of those sessions is left: no git directory, no live session.
    let git_dir = srv.data().join("git");
    assert!(!git_dir.exists() || std::fs::read_dir(&git_dir).unwrap().next().is_none());
    let (_, list) = srv.call("GET", "/v1/sessions", None).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_forge_repo_and_a_coverage_gate() {
    require_root!();
    let (up_dir, _, second) = upstream();
    let up = up_dir.path().join("app");
    std::fs::write(up.join("app/coverage.txt"), "TOTAL 80.0%\n").unwrap();
    git(&up, &["add", "."]);
    git(&up, &["commit", "-qm", "coverage"]);
    let bare = up_dir.path().join("upstream.git");
    let st = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&up)
        .arg(&bare)
        .status()
        .unwrap();
    assert!(st.success());
    let bare2 = bare.clone();
    let srv = Srv::start_with(move |cfg| {
        gated(cfg);
        let g = cfg
            .profiles
            .get_mut("default")
            .unwrap()
            .gate
            .as_mut()
            .unwrap();
        g.coverage = Some("cat app/coverage.txt".into());
        g.max_coverage_drop = 5.0;
        cfg.repos.insert(
            "widgets".into(),
            toml::from_str(&format!(
                "kind = \"local\"\npath = {:?}",
                bare2.display().to_string()
            ))
            .unwrap(),
        );
    })
    .await;
    let s = srv
        .create(json!({"task": "GIT-3", "repo": "widgets"}))
        .await;
    let id = s["id"].as_str().unwrap().to_string();
    let show = srv.state(&id).await;
    assert_eq!(show["git"]["upstream"], "widgets", "{show}");
    assert_eq!(show["git"]["origin"], "http://git.brig/widgets.git");
    assert_ne!(
        show["git"]["commit"],
        second.as_str(),
        "pinned at the newest commit"
    );
    let prefix = show["git"]["bot_prefix"].as_str().unwrap().to_string();

    // Coverage drops 2 points: within 5, the PR opens on the named forge.
    let (code, _, err) = sh(
        &srv,
        &id,
        &format!(
            "cd /workspace && echo 'TOTAL 78.0%' > app/coverage.txt && git commit -qam 'cov 78' && \
             git push -q origin HEAD:{prefix}ok 2>&1"
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(git_ok(
        &bare,
        &[
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/{prefix}ok")
        ]
    ));
    let (st, pr) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/pulls"),
            Some(json!({"title": "ok", "branch": format!("{prefix}ok")})),
        )
        .await;
    assert_eq!(st, 201, "{pr}");
    assert_eq!(pr["gate"]["coverage"]["head"], 78.0);
    assert_eq!(pr["gate"]["coverage"]["base"], 80.0);
    assert!(bare.join("brig/pulls/1.json").is_file());

    // 20 points: refused, and the gate says why.
    let (code, _, err) = sh(
        &srv,
        &id,
        &format!(
            "cd /workspace && echo 'TOTAL 60.0%' > app/coverage.txt && git commit -qam 'cov 60' && \
             git push -q origin HEAD:{prefix}low 2>&1"
        ),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (st, g) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/gate"),
            Some(json!({"branch": format!("{prefix}low")})),
        )
        .await;
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["passed"], false);
    assert!(
        g["reason"]
            .as_str()
            .unwrap()
            .contains("coverage dropped 20.00"),
        "{g}"
    );
    let gates = events(&srv, &id, "git.gate").await;
    assert_eq!(gates.last().unwrap()["rule"], "gate:coverage");
    let (st, e) = srv
        .call(
            "POST",
            &format!("/v1/sessions/{id}/pulls"),
            Some(json!({"title": "low", "branch": format!("{prefix}low")})),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    assert!(!bare.join("brig/pulls/2.json").exists());

    // An unknown name is a clear error.
    let (st, e) = srv
        .call(
            "POST",
            "/v1/sessions",
            Some(json!({"task": "GIT-3", "repo": "nope"})),
        )
        .await;
    assert_eq!(st, 404, "{e}");
    assert!(
        e["error"]["hint"].as_str().unwrap().contains("widgets"),
        "{e}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_progress_streams_the_checkout_then_the_answer() {
    require_root!();
    let (up_dir, _, second) = upstream();
    let up = up_dir.path().join("app");
    let srv = Srv::start().await;
    let lines = |bytes: Vec<u8>| -> Vec<Value> {
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let body = json!({"task": "GIT-4", "repo": up.display().to_string()});
    let (st, raw) = brig_server::client::request_raw(
        &srv.sock,
        "POST",
        "/v1/sessions?progress=true",
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
    let l = lines(raw);
    let (last, steps) = l.split_last().unwrap();
    assert!(
        steps
            .iter()
            .any(|v| v["progress"].as_str().unwrap().starts_with("checking out")),
        "{l:?}"
    );
    assert!(
        steps
            .iter()
            .any(|v| v["progress"] == "starting the sandbox"),
        "{l:?}"
    );
    assert_eq!(last["status"], 201, "{last}");
    let id = last["session"]["id"].as_str().unwrap().to_string();
    assert_eq!(srv.state(&id).await["git"]["commit"], second.as_str());

    let bad = json!({"task": "GIT-4", "repo": up.display().to_string(), "ref": "nope"});
    let (st, raw) = brig_server::client::request_raw(
        &srv.sock,
        "POST",
        "/v1/sessions?progress=true",
        Some(&bad),
    )
    .await
    .unwrap();
    assert_eq!(st, 200);
    let l = lines(raw);
    let last = l.last().unwrap();
    assert_eq!(last["status"], 404, "{last}");
    assert!(
        last["error"]["message"].as_str().unwrap().contains("nope"),
        "{last}"
    );
    srv.stop().await;
}

/// Cedar decides every push after the gateway's own rules (issue 7): a
/// read-only session never pushes; a pr session cannot push infrastructure
/// paths; a privileged one can, once an infra-approver approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decides_pushes_by_profile_and_paths() {
    require_root!();
    let (up_dir, _, _) = upstream();
    let up = up_dir.path().join("app");
    let srv = Srv::start_with(|cfg| {
        let base = cfg.profiles.get("default").unwrap().clone();
        for (name, phase) in [("ro", "read-only"), ("ops", "privileged")] {
            let mut p = base.clone();
            p.policy = phase.into();
            cfg.profiles.insert(name.into(), p);
        }
    })
    .await;
    let create = |profile: &'static str| {
        let up = up.clone();
        let srv = &srv;
        async move {
            let s = srv
                .create(json!({"task": "GIT-9", "repo": up.display().to_string(), "profile": profile, "human": "ada"}))
                .await;
            let id = s["id"].as_str().unwrap().to_string();
            let (_, show) = srv.call("GET", &format!("/v1/sessions/{id}"), None).await;
            let prefix = show["git"]["bot_prefix"].as_str().unwrap().to_string();
            (id, prefix)
        }
    };
    let commit_infra = "cd /workspace && git config user.name A && git config user.email a@x && \
         mkdir -p infra && echo 'resource \"x\" \"y\" {}' > infra/main.tf && git add infra && git commit -qm infra";

    // read-only: even a bot branch is refused, by the policy that says so.
    let (ro, prefix) = create("ro").await;
    let (code, out, _) = sh(
        &srv,
        &ro,
        &format!("cd /workspace && git config user.name A && git config user.email a@x && echo x >> docs/guide.md && git commit -qam doc && git push origin HEAD:{prefix}doc 2>&1"),
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("read-only.no-push") && out.contains("git.push.policy"),
        "{out}"
    );

    // pr (the default profile): a doc change goes, infra/ does not.
    let (pr, prefix) = create("default").await;
    let (code, out, _) = sh(
        &srv,
        &pr,
        &format!("{commit_infra} && git push origin HEAD:{prefix}infra 2>&1"),
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("pr.push-sensitive"), "{out}");

    // privileged: the push asks for an infra-approver...
    let (ops, prefix) = create("ops").await;
    let (code, out, _) = sh(
        &srv,
        &ops,
        &format!("{commit_infra} && git push origin HEAD:{prefix}infra 2>&1"),
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("needs approval apr-") && out.contains("infra-approver"),
        "{out}"
    );
    let (_, reqs) = srv.call("GET", "/v1/approvals?state=pending", None).await;
    let apr = reqs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(reqs[0]["action"], "git.push");
    assert_eq!(reqs[0]["capability"], "infra");
    // ...another human with the role approves, and the same push goes.
    srv.approve_as("dave", "infra-approver", "ada", &apr).await;
    let (code, out, _) = sh(
        &srv,
        &ops,
        &format!("cd /workspace && git push origin HEAD:{prefix}infra 2>&1"),
    )
    .await;
    assert_eq!(code, 0, "{out}");

    // A branch outside the bot prefix: pr is refused by its policy...
    let (code, out, _) = sh(
        &srv,
        &pr,
        "cd /workspace && git push origin HEAD:feature/by-hand 2>&1",
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("pr.push-non-bot"), "{out}");
    // ...privileged asks a maintainer, and a standing rule could not do;
    // once a human maintainer approved, the push lands upstream.
    let (code, out, _) = sh(
        &srv,
        &ops,
        "cd /workspace && git push origin HEAD:feature/by-hand 2>&1",
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("needs approval apr-") && out.contains("maintainer"),
        "{out}"
    );
    let (_, reqs) = srv.call("GET", "/v1/approvals?state=pending", None).await;
    let req = reqs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["resource"]
                .as_str()
                .unwrap_or("")
                .ends_with(":feature/by-hand")
        })
        .unwrap_or_else(|| panic!("{reqs}"))
        .clone();
    let apr = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["roles"], json!(["maintainer"]));
    srv.approve_as("mia", "maintainer", "ada", &apr).await;
    let (code, out, _) = sh(
        &srv,
        &ops,
        "cd /workspace && git push origin HEAD:feature/by-hand 2>&1",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let landed = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "refs/heads/feature/by-hand"])
        .current_dir(&up)
        .output()
        .unwrap();
    assert!(landed.status.success(), "the push did not reach upstream");

    // Fetches are decided too (and allowed in every shipped profile).
    let (code, out, _) = sh(&srv, &ops, "cd /workspace && git fetch origin 2>&1").await;
    assert_eq!(code, 0, "{out}");
    // (An allowed decision is journaled off the fetch's path: soon after.)
    let mut fetched = false;
    for _ in 0..100 {
        let decisions = events(&srv, &ops, "policy.decision").await;
        fetched = decisions
            .iter()
            .any(|e| e["details"]["action"] == "git.fetch" && e["rule"] == "base.git-fetch");
        if fetched {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(fetched, "no git.fetch decision in the journal");

    // Each refusal and the acceptance are journaled with their rule.
    let pushes = events(&srv, &pr, "git.push").await;
    assert!(
        pushes
            .iter()
            .any(|e| e["outcome"] == "denied" && e["rule"] == "git.push.policy"),
        "{pushes:?}"
    );
    let decisions = events(&srv, &ops, "policy.decision").await;
    assert!(
        decisions
            .iter()
            .any(|e| e["rule"] == "privileged.push-infra"),
        "{decisions:?}"
    );
    srv.stop().await;
}
