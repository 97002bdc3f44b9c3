//! Every action tried under every shipped profile (and the deployment set),
//! allowed and denied, through the real engine with the shipped policies.
//! Every denial must name the policy that decided it (or be Cedar's
//! default deny) and explain itself.

use brig_policy::*;

fn engine() -> PolicyEngine {
    PolicyEngine::shipped().unwrap_or_else(|e| panic!("shipped policies must load: {e}"))
}

fn alice() -> HumanPrincipal {
    HumanPrincipal::new("alice").with_groups(&["eng"])
}

fn agent(profile: &str) -> AgentPrincipal {
    AgentPrincipal::new("s-1", alice(), "TASK-1", profile)
}

fn argv(s: &str) -> Vec<String> {
    s.split(' ').map(String::from).collect()
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

/// Assert the outcome, and for every non-allow that it is explained and
/// journaled with its rule; returns the decision.
#[track_caller]
fn check(e: &PolicyEngine, req: Request, expect: &str, rule: &str) -> Decision {
    let d = e.authorize(&req);
    let got = match &d.outcome {
        Outcome::Allow => "allow",
        Outcome::Deny => "deny",
        Outcome::NeedsApproval { .. } => "needs_approval",
    };
    assert_eq!(got, expect, "{}\n{}", explain(&d), json(&d));
    assert_eq!(d.rule(), rule, "{}", explain(&d));
    if got != "allow" {
        let text = explain(&d);
        assert!(text.contains(rule) || rule == "default-deny", "{text}");
        if rule != "default-deny" && rule != "error" {
            let p = &d.determining[0];
            assert!(!p.reason.is_empty(), "denial by {} has no reason", p.id);
            assert!(text.contains(&p.reason), "{text}");
        }
    }
    // The journal stores the decision as JSON: it must round-trip.
    let back: Decision = serde_json::from_str(&json(&d)).unwrap();
    assert_eq!(back, d);
    // The session path (cached entities) decides the same.
    if let Some(a) = req.agent() {
        if let Ok(s) = e.session(a) {
            assert_eq!(e.authorize_session(&s, &req), d, "session path differs");
        }
    }
    d
}

fn json(d: &Decision) -> String {
    serde_json::to_string(d).unwrap()
}

fn approval(by: &str, roles: &[&str]) -> Approval {
    Approval {
        by: by.into(),
        roles: labels(roles),
    }
}

// ---------------- read-only ----------------

#[test]
fn read_only_profile() {
    let e = engine();
    let a = agent("read-only");
    check(
        &e,
        Request::exec(&a, &argv("cargo test"), &[]),
        "allow",
        "read-only.exec",
    );
    check(
        &e,
        Request::exec(
            &a,
            &argv("python manage.py migrate"),
            &labels(&["migration"]),
        ),
        "deny",
        "read-only.exec-sensitive",
    );
    check(
        &e,
        Request::git_fetch(&a, "acme/app"),
        "allow",
        "base.git-fetch",
    );
    // Cannot push at all, not even to a bot branch.
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/s-1", false, true, &[]),
        "deny",
        "read-only.no-push",
    );
    check(
        &e,
        Request::pr_open(&a, "acme/app", "brig/s-1", "main", true, true),
        "deny",
        "read-only.no-pr",
    );
    check(
        &e,
        Request::net_connect(&a, "crates.io", 443, Some("GET"), Some("/api/v1/crates")),
        "allow",
        "base.net-connect",
    );
    check(
        &e,
        Request::net_connect(&a, "s3.amazonaws.com", 443, None, None)
            .with_labels(&labels(&["cloud"])),
        "deny",
        "read-only.net-sensitive",
    );
    check(
        &e,
        Request::secret_use(&a, "NPM_TOKEN", "pkg"),
        "allow",
        "read-only.secret-registry",
    );
    check(
        &e,
        Request::secret_use(&a, "GH_READ", "git.read"),
        "allow",
        "read-only.secret-registry",
    );
    check(
        &e,
        Request::secret_use(&a, "GH_WRITE", "git.write"),
        "deny",
        "default-deny",
    );
    check(
        &e,
        Request::model_call(&a, "claude-sonnet"),
        "allow",
        "base.model-call",
    );
    // An approval changes nothing here: read-only has no approval path.
    check(
        &e,
        Request::exec(&a, &argv("terraform apply"), &labels(&["iac"]))
            .with_approval(approval("human:bob", &["infra-approver"])),
        "deny",
        "read-only.exec-sensitive",
    );
}

// ---------------- pr ----------------

#[test]
fn pr_profile() {
    let e = engine();
    let a = agent("pr");
    check(
        &e,
        Request::exec(&a, &argv("cargo test"), &[]),
        "allow",
        "pr.exec",
    );
    check(
        &e,
        Request::exec(&a, &argv("terraform apply"), &labels(&["iac"])),
        "deny",
        "pr.exec-sensitive",
    );
    check(
        &e,
        Request::git_fetch(&a, "acme/app"),
        "allow",
        "base.git-fetch",
    );
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/s-1", false, true, &[]),
        "allow",
        "pr.push-bot-branch",
    );
    // main is protected and not a bot branch: both forbids name themselves.
    let d = check(
        &e,
        Request::git_push(&a, "acme/app", "main", false, false, &[]),
        "deny",
        "base.protected-branch",
    );
    let ids: Vec<&str> = d.determining.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["base.protected-branch", "pr.push-non-bot"]);
    // A non-protected, non-bot branch: still no.
    check(
        &e,
        Request::git_push(&a, "acme/app", "feature/x", false, false, &[]),
        "deny",
        "pr.push-non-bot",
    );
    // Force-push to its own bot branch: no.
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/s-1", true, true, &[]),
        "deny",
        "base.no-force-push",
    );
    // Sensitive paths: no (needs a privileged session).
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/s-1", false, true, &labels(&["infra"])),
        "deny",
        "pr.push-sensitive",
    );
    // PRs behind the test gate.
    check(
        &e,
        Request::pr_open(&a, "acme/app", "brig/s-1", "main", true, true),
        "allow",
        "pr.open",
    );
    check(
        &e,
        Request::pr_open(&a, "acme/app", "brig/s-1", "main", true, false),
        "deny",
        "pr.open-gate",
    );
    check(
        &e,
        Request::pr_open(&a, "acme/app", "feature/x", "main", false, true),
        "deny",
        "default-deny",
    );
    // Egress: the connect policy is expressible; hosts are the egress layer's.
    check(
        &e,
        Request::net_connect(&a, "registry.npmjs.org", 443, None, None),
        "allow",
        "base.net-connect",
    );
    check(
        &e,
        Request::net_connect(&a, "storage.googleapis.com", 443, None, None)
            .with_labels(&labels(&["cloud"])),
        "deny",
        "pr.net-sensitive",
    );
    check(
        &e,
        Request::secret_use(&a, "GH_READ", "git.read"),
        "allow",
        "pr.secret",
    );
    check(
        &e,
        Request::secret_use(&a, "AWS", "cloud:aws"),
        "deny",
        "default-deny",
    );
    check(
        &e,
        Request::model_call(&a, "gpt-x"),
        "allow",
        "base.model-call",
    );
}

// ---------------- privileged ----------------

#[test]
fn privileged_profile_sensitive_capabilities_need_approval() {
    let e = engine();
    let a = agent("privileged");
    check(
        &e,
        Request::exec(&a, &argv("make"), &[]),
        "allow",
        "privileged.exec",
    );

    let migrate = Request::exec(&a, &argv("alembic upgrade head"), &labels(&["migration"]));
    let d = check(
        &e,
        migrate.clone(),
        "needs_approval",
        "privileged.exec-migration",
    );
    assert_eq!(
        d.outcome,
        Outcome::NeedsApproval {
            roles: labels(&["db-approver"]),
            policies: labels(&["privileged.exec-migration"]),
        }
    );
    assert_eq!(d.determining[0].approval.as_deref(), Some("db-approver"));
    assert!(explain(&d).contains("db-approver"), "{}", explain(&d));
    // Granted in the right role: allowed.
    check(
        &e,
        migrate
            .clone()
            .with_approval(approval("human:bob", &["db-approver"])),
        "allow",
        "privileged.exec",
    );
    // Granted in another role: still waiting.
    check(
        &e,
        migrate.with_approval(approval("human:bob", &["infra-approver"])),
        "needs_approval",
        "privileged.exec-migration",
    );

    let iac = Request::exec(&a, &argv("terraform apply"), &labels(&["iac"]));
    check(&e, iac.clone(), "needs_approval", "privileged.exec-iac");
    check(
        &e,
        iac.with_approval(approval("rule:standing-iac", &["infra-approver"])),
        "allow",
        "privileged.exec",
    );
    // A label the shipped policies do not name falls to the catch-all.
    check(
        &e,
        Request::exec(&a, &argv("./deploy.sh"), &labels(&["deploy"])),
        "needs_approval",
        "privileged.exec-other-sensitive",
    );
    // Two labels: two approvals (both roles) are needed.
    let both = Request::exec(&a, &argv("x"), &labels(&["migration", "iac"]));
    let d = check(&e, both.clone(), "needs_approval", "privileged.exec-iac");
    assert_eq!(
        d.outcome,
        Outcome::NeedsApproval {
            roles: labels(&["db-approver", "infra-approver"]),
            policies: labels(&["privileged.exec-iac", "privileged.exec-migration"]),
        }
    );
    check(
        &e,
        both.clone()
            .with_approval(approval("human:bob", &["db-approver"])),
        "needs_approval",
        "privileged.exec-iac",
    );
    check(
        &e,
        both.with_approval(approval(
            "human:bob,human:carol",
            &["db-approver", "infra-approver"],
        )),
        "allow",
        "privileged.exec",
    );

    // Pushes: bot branches as in pr; other branches behind a maintainer.
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/s-1", false, true, &[]),
        "allow",
        "privileged.push",
    );
    let push = Request::git_push(&a, "acme/app", "hotfix/42", false, false, &[]);
    check(
        &e,
        push.clone(),
        "needs_approval",
        "privileged.push-non-bot",
    );
    check(
        &e,
        push.clone()
            .with_approval(approval("human:maria", &["maintainer"])),
        "allow",
        "privileged.push",
    );
    // A standing rule is not enough for this one: it asks for a human.
    check(
        &e,
        push.with_approval(approval("rule:auto", &["maintainer"])),
        "needs_approval",
        "privileged.push-non-bot",
    );
    // Protected and force: never, approval or not.
    check(
        &e,
        Request::git_push(&a, "acme/app", "main", false, false, &[])
            .with_approval(approval("human:maria", &["maintainer"])),
        "deny",
        "base.protected-branch",
    );
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/s-1", true, true, &[])
            .with_approval(approval("human:maria", &["maintainer"])),
        "deny",
        "base.no-force-push",
    );
    // Infra paths: an infra-approver.
    let infra = Request::git_push(&a, "acme/app", "brig/s-1", false, true, &labels(&["infra"]));
    check(&e, infra.clone(), "needs_approval", "privileged.push-infra");
    check(
        &e,
        infra.with_approval(approval("human:ian", &["infra-approver"])),
        "allow",
        "privileged.push",
    );
    // Mixed: approval forbid + a hard forbid = plain deny.
    check(
        &e,
        Request::git_push(&a, "acme/app", "main", false, false, &labels(&["infra"])),
        "deny",
        "base.protected-branch",
    );

    // Egress widening and cloud secrets.
    let wide = Request::net_connect(&a, "ec2.amazonaws.com", 443, None, None)
        .with_labels(&labels(&["cloud"]));
    check(
        &e,
        wide.clone(),
        "needs_approval",
        "privileged.net-sensitive",
    );
    check(
        &e,
        wide.with_approval(approval("human:sec", &["security-approver"])),
        "allow",
        "base.net-connect",
    );
    check(
        &e,
        Request::secret_use(&a, "AWS_PROD", "cloud:aws"),
        "needs_approval",
        "privileged.secret-cloud",
    );
    check(
        &e,
        Request::secret_use(&a, "NPM", "pkg"),
        "allow",
        "privileged.secret",
    );
    check(
        &e,
        Request::pr_open(&a, "acme/app", "hotfix/42", "main", false, true),
        "allow",
        "privileged.open",
    );
    check(
        &e,
        Request::pr_open(&a, "acme/app", "hotfix/42", "main", false, false),
        "deny",
        "privileged.open-gate",
    );
    check(
        &e,
        Request::git_fetch(&a, "acme/app"),
        "allow",
        "base.git-fetch",
    );
    check(&e, Request::model_call(&a, "m"), "allow", "base.model-call");
}

// ---------------- deployment (human actions) ----------------

#[test]
fn deployment_set_human_actions() {
    let e = engine();
    let admin = HumanPrincipal::new("root").with_groups(&["admins"]);
    let dev = alice();
    let priv_dev = HumanPrincipal::new("pat").with_roles(&["privileged"]);

    check(
        &e,
        Request::session_create(&dev, "acme/app", "T-1", "pr"),
        "allow",
        "deploy.session-create",
    );
    let d = check(
        &e,
        Request::session_create(&dev, "acme/app", "T-1", "privileged"),
        "deny",
        "default-deny",
    );
    assert_eq!(d.policy_set, DEPLOYMENT_SET);
    check(
        &e,
        Request::session_create(&priv_dev, "acme/app", "T-1", "privileged"),
        "allow",
        "deploy.session-create-privileged",
    );
    check(
        &e,
        Request::session_create(&admin, "acme/app", "T-1", "custom"),
        "allow",
        "deploy.admin-session-create",
    );

    check(
        &e,
        Request::session_kill(&dev, "s-1", "alice"),
        "allow",
        "deploy.session-kill-own",
    );
    check(
        &e,
        Request::session_kill(&dev, "s-2", "bob"),
        "deny",
        "default-deny",
    );
    check(
        &e,
        Request::session_kill(&admin, "s-2", "bob"),
        "allow",
        "deploy.admin-session-kill",
    );

    // Reading and acting in a session: one's own, an admin's any, an
    // auditor's reads only.
    let auditor = HumanPrincipal::new("dora").with_roles(&["auditor"]);
    for (who, session, owner, write, verdict, rule) in [
        (
            &dev,
            "s-1",
            "alice",
            true,
            "allow",
            "deploy.session-use-own",
        ),
        (&dev, "s-2", "bob", false, "deny", "default-deny"),
        (&dev, "s-2", "bob", true, "deny", "default-deny"),
        (
            &admin,
            "s-2",
            "bob",
            true,
            "allow",
            "deploy.admin-session-use",
        ),
        (
            &auditor,
            "s-2",
            "bob",
            false,
            "allow",
            "deploy.auditor-session-read",
        ),
        (&auditor, "s-2", "bob", true, "deny", "default-deny"),
    ] {
        check(
            &e,
            Request::session_use(who, session, owner, write, "exec"),
            verdict,
            rule,
        );
    }

    check(
        &e,
        Request::policy_change(&dev, "pr"),
        "deny",
        "default-deny",
    );
    check(
        &e,
        Request::policy_change(&admin, "pr"),
        "allow",
        "deploy.policy-change",
    );
    check(
        &e,
        Request::policy_change(&HumanPrincipal::new("pa").with_roles(&["policy-admin"]), ""),
        "allow",
        "deploy.policy-change",
    );
}

#[test]
fn approvals_need_the_role_and_another_human() {
    let e = engine();
    let bob = HumanPrincipal::new("bob").with_roles(&["db-approver"]);
    let alice_approver = HumanPrincipal::new("alice").with_roles(&["db-approver"]);
    let roles = labels(&["db-approver"]);
    check(
        &e,
        Request::approval_grant(&bob, "alice", "req-1", &roles),
        "allow",
        "deploy.approval-grant",
    );
    // Without the role.
    check(
        &e,
        Request::approval_grant(&HumanPrincipal::new("eve"), "alice", "req-1", &roles),
        "deny",
        "default-deny",
    );
    // Self-approval is forbidden even with the role: forbid beats permit.
    let d = check(
        &e,
        Request::approval_grant(&alice_approver, "alice", "req-1", &roles),
        "deny",
        "deploy.no-self-approval",
    );
    assert!(explain(&d).contains("allow_self_approval"));
    // ... unless the deployment allows it.
    let spec = EngineSpec {
        allow_self_approval: true,
        ..EngineSpec::default()
    };
    let lax = PolicyEngine::new(&spec).unwrap();
    check(
        &lax,
        Request::approval_grant(&alice_approver, "alice", "req-1", &roles),
        "allow",
        "deploy.approval-grant",
    );
    assert_ne!(
        lax.digest(),
        e.digest(),
        "the setting is part of the digest"
    );
}

// ---------------- cross-cutting ----------------

#[test]
fn forbid_beats_an_extra_permit_everything() {
    let spec = EngineSpec {
        extra: vec![PolicySource::new(
            "org.cedar",
            r#"@id("org.yolo") @reason("permit everything") permit (principal, action, resource);"#,
        )],
        ..EngineSpec::default()
    };
    let e = PolicyEngine::new(&spec).unwrap();
    let a = agent("read-only");
    // Something only the extra permits: allowed, and it says so.
    let d = check(
        &e,
        Request::secret_use(&a, "X", "cloud:aws"),
        "allow",
        "org.yolo",
    );
    assert_eq!(d.determining[0].source, "org.cedar");
    // The base forbid still wins.
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/x", true, true, &[]),
        "deny",
        "base.no-force-push",
    );
    check(
        &e,
        Request::git_push(&a, "acme/app", "brig/x", false, true, &[]),
        "deny",
        "read-only.no-push",
    );
    // And the deployment set got it too, but not past its forbid.
    let alice_approver = HumanPrincipal::new("alice").with_roles(&["x"]);
    check(
        &e,
        Request::approval_grant(&alice_approver, "alice", "r", &labels(&["db-approver"])),
        "deny",
        "deploy.no-self-approval",
    );
}

#[test]
fn unknown_actions_profiles_and_bad_requests_are_denied() {
    let e = engine();
    let a = agent("privileged");
    let d = check(
        &e,
        Request::custom(&a, "repo.delete", r#"Brig::Repo::"acme/app""#),
        "deny",
        "error",
    );
    assert!(d.errors[0].contains("unknown action"), "{:?}", d.errors);
    // Even with a permit-everything policy.
    let spec = EngineSpec {
        extra: vec![PolicySource::new(
            "all.cedar",
            r#"@id("all") @reason("r") permit (principal, action, resource);"#,
        )],
        ..EngineSpec::default()
    };
    let lax = PolicyEngine::new(&spec).unwrap();
    check(
        &lax,
        Request::custom(&a, "repo.delete", r#"Brig::Repo::"acme/app""#),
        "deny",
        "error",
    );
    // A declared action without its context does not fit the schema.
    let d = check(
        &lax,
        Request::custom(&a, "git.fetch", r#"Brig::Repo::"acme/app""#),
        "deny",
        "error",
    );
    assert!(d.errors[0].contains("schema"), "{:?}", d.errors);
    // A bad resource uid.
    check(
        &lax,
        Request::custom(&a, "git.fetch", "not a uid"),
        "deny",
        "error",
    );
    // An unknown profile.
    let d = check(
        &e,
        Request::exec(&agent("yolo"), &argv("ls"), &[]),
        "deny",
        "error",
    );
    assert!(d.errors[0].contains("unknown profile"), "{:?}", d.errors);
    assert!(e.session(&agent("yolo")).is_err());
}

#[test]
fn a_forbid_that_errors_fails_closed() {
    // Integer overflow is a runtime error strict validation cannot see.
    let spec = EngineSpec {
        extra: vec![PolicySource::new(
            "overflow.cedar",
            r#"@id("org.overflow") @reason("r")
forbid (principal, action == Brig::Action::"net.connect", resource)
when { context.port + 9223372036854775807 > 0 };"#,
        )],
        ..EngineSpec::default()
    };
    let e = PolicyEngine::new(&spec).unwrap();
    let a = agent("pr");
    let d = check(
        &e,
        Request::net_connect(&a, "crates.io", 443, None, None),
        "deny",
        "error",
    );
    assert!(
        d.errors.iter().any(|m| m.contains("org.overflow")),
        "{:?}",
        d.errors
    );
    assert!(explain(&d).contains("fail closed"), "{}", explain(&d));
    // Other actions are untouched.
    check(&e, Request::exec(&a, &argv("ls"), &[]), "allow", "pr.exec");
}

#[test]
fn protected_branches_come_from_config() {
    let spec = EngineSpec {
        protected_branches: vec!["prod".into(), "release/**".into()],
        ..EngineSpec::default()
    };
    let e = PolicyEngine::new(&spec).unwrap();
    let a = agent("privileged");
    let ok = approval("human:m", &["maintainer"]);
    check(
        &e,
        Request::git_push(&a, "r", "prod", false, false, &[]).with_approval(ok.clone()),
        "deny",
        "base.protected-branch",
    );
    check(
        &e,
        Request::git_push(&a, "r", "release/1.2/hotfix", false, false, &[])
            .with_approval(ok.clone()),
        "deny",
        "base.protected-branch",
    );
    // main is not protected in this deployment: a maintainer may approve.
    check(
        &e,
        Request::git_push(&a, "r", "main", false, false, &[]).with_approval(ok),
        "allow",
        "privileged.push",
    );
    assert!(engine().is_protected("main") && !engine().is_protected("brig/x"));
}

#[test]
fn the_session_path_refuses_another_agent() {
    let e = engine();
    let s = e.session(&agent("pr")).unwrap();
    let other = AgentPrincipal::new("s-2", alice(), "TASK-1", "pr");
    let d = e.authorize_session(&s, &Request::exec(&other, &argv("ls"), &[]));
    assert_eq!(d.outcome, Outcome::Deny);
    assert!(d.errors[0].contains("agent:s-1"), "{:?}", d.errors);
}

#[test]
fn extra_profiles_and_files_from_config() {
    let dir = std::env::temp_dir().join(format!("brig-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pr-infra.cedar"),
        r#"@id("pr-infra.terraform-plan")
@reason("this profile may run terraform plan, labelled iac by the deployment")
permit (principal, action == Brig::Action::"exec", resource)
when { context.program == "terraform" && context.args.contains("plan") };
"#,
    )
    .unwrap();
    let cfg: PolicyConfig = toml::from_str(
        r#"
        allow_self_approval = false
        [profiles.pr-infra]
        template = "pr"
        extra = ["pr-infra.cedar"]
        [sensitive]
        commands = { iac = ["terraform *"] }
        "#,
    )
    .unwrap();
    let e = PolicyEngine::new(&EngineSpec::from_config(&cfg, &dir).unwrap()).unwrap();
    assert_eq!(e.profiles(), ["pr", "pr-infra", "privileged", "read-only"]);
    let m = cfg.sensitive.compile().unwrap();
    let a = agent("pr-infra");
    let plan = argv("terraform plan");
    // The pr template's sensitive forbid still beats the profile's permit.
    check(
        &e,
        Request::exec(&a, &plan, &m.label_command(&plan)),
        "deny",
        "pr.exec-sensitive",
    );
    // Missing files are an error naming the path.
    let bad: PolicyConfig = toml::from_str("extra = [\"nope.cedar\"]").unwrap();
    let err = EngineSpec::from_config(&bad, &dir).unwrap_err().to_string();
    assert!(err.contains("nope.cedar"), "{err}");
    let bad: PolicyConfig = toml::from_str("[profiles.x]\ntemplate = \"admin\"").unwrap();
    let err = EngineSpec::from_config(&bad, &dir).unwrap_err().to_string();
    assert!(err.contains("admin"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resource_scoped_policies_apply_exactly_where_they_name() {
    // The engine evaluates only policies whose resource scope can match;
    // this proves the index keeps every one that can (==, in, is..in, on
    // the resource and on its repo), including both at once.
    let spec = EngineSpec {
        extra: vec![PolicySource::new(
            "scoped.cedar",
            r#"
@id("org.frozen") @reason("acme/frozen is frozen")
forbid (principal, action == Brig::Action::"git.push", resource in Brig::Repo::"acme/frozen");
@id("org.special-branch") @reason("this one branch is off limits")
forbid (principal, action == Brig::Action::"git.push", resource == Brig::Branch::"acme/app:brig/special");
@id("org.typed-in") @reason("release repo")
forbid (principal, action == Brig::Action::"git.push", resource is Brig::Branch in Brig::Repo::"acme/rel")
when { context.sensitive.contains("infra") };
@id("org.tool") @reason("the linter may run")
permit (principal, action == Brig::Action::"exec", resource == Brig::Command::"lint-tool");
@id("org.rel-branch") @reason("and this branch of acme/rel too")
forbid (principal, action == Brig::Action::"git.push", resource == Brig::Branch::"acme/rel:brig/x");
"#,
        )],
        ..EngineSpec::default()
    };
    let e = PolicyEngine::new(&spec).unwrap();
    let a = agent("pr");
    let push = |repo: &str, branch: &str, l: &[&str]| {
        Request::git_push(&a, repo, branch, false, true, &labels(l))
    };
    check(&e, push("acme/frozen", "brig/x", &[]), "deny", "org.frozen");
    check(
        &e,
        push("acme/app", "brig/x", &[]),
        "allow",
        "pr.push-bot-branch",
    );
    check(
        &e,
        push("acme/app", "brig/special", &[]),
        "deny",
        "org.special-branch",
    );
    check(
        &e,
        push("acme/rel", "brig/y", &[]),
        "allow",
        "pr.push-bot-branch",
    );
    // Scoped on the repo and on the branch: both are candidates.
    let d = check(
        &e,
        push("acme/rel", "brig/x", &["infra"]),
        "deny",
        "org.rel-branch",
    );
    let ids: Vec<&str> = d.determining.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["org.rel-branch", "org.typed-in", "pr.push-sensitive"]);
    // read-only's exec permit plus a per-command one.
    let ro = agent("read-only");
    let d = check(
        &e,
        Request::exec(&ro, &argv("/usr/bin/lint-tool --fix"), &[]),
        "allow",
        "org.tool",
    );
    assert_eq!(d.determining.len(), 2, "{d:?}");
}

#[test]
fn the_session_cache_is_keyed_by_every_resource_attribute() {
    let e = engine();
    let a = agent("pr");
    let s = e.session(&a).unwrap();
    // Same branch name, once as a bot branch and once not: the cached
    // entity for one must not answer for the other.
    let bot = Request::git_push(&a, "acme/app", "brig/s-1", false, true, &[]);
    let not_bot = Request::git_push(&a, "acme/app", "brig/s-1", false, false, &[]);
    for _ in 0..2 {
        assert_eq!(e.authorize_session(&s, &bot).outcome, Outcome::Allow);
        assert_eq!(e.authorize_session(&s, &not_bot).rule(), "pr.push-non-bot");
    }
    let reg = Request::secret_use(&a, "TOKEN", "pkg");
    let cloud = Request::secret_use(&a, "TOKEN", "cloud:aws");
    for _ in 0..2 {
        assert_eq!(e.authorize_session(&s, &reg).outcome, Outcome::Allow);
        assert_eq!(e.authorize_session(&s, &cloud).outcome, Outcome::Deny);
    }
}

#[test]
fn requests_read_from_json_and_profiles_that_would_allow() {
    // The form `brig policy test` can read and the journal keeps.
    let text = r#"{
        "action": "git.push",
        "agent": {"session": "s-9", "human": {"id": "alice", "groups": ["eng"]},
                  "task": "T-9", "profile": "read-only"},
        "repo": "acme/app", "branch": "brig/s-9", "bot_branch": true,
        "sensitive": []
    }"#;
    let req: Request = serde_json::from_str(text).unwrap();
    assert_eq!(req.action_name(), "git.push");
    let back: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
    assert_eq!(back, req);
    let e = engine();
    check(&e, req.clone(), "deny", "read-only.no-push");
    assert_eq!(e.profiles_allowing(&req), ["pr", "privileged"]);
    let migrate = Request::exec(
        &agent("read-only"),
        &argv("alembic upgrade head"),
        &labels(&["migration"]),
    );
    // privileged would need approval: it is still a way to get access.
    assert_eq!(e.profiles_allowing(&migrate), ["privileged"]);
    let force = Request::git_push(&agent("pr"), "r", "brig/x", true, true, &[]);
    assert!(e.profiles_allowing(&force).is_empty());
    // Unknown fields and actions are refused when read.
    assert!(serde_json::from_str::<Request>(r#"{"action": "repo.delete"}"#).is_err());
    let with_approval = r#"{"action": "exec", "argv": ["ls"],
        "agent": {"session": "s", "human": {"id": "a"}, "task": "t", "profile": "pr"},
        "approval": {"by": "human:bob", "roles": ["db-approver"]}}"#;
    let r: Request = serde_json::from_str(with_approval).unwrap();
    assert_eq!(r.approval.unwrap().by, "human:bob");
}
