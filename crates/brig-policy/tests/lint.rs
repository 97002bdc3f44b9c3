//! `lint` and the engine's refusal of invalid policies: every finding names
//! the file, line and column, and says what is wrong.

use brig_policy::*;

fn errors(d: &[Diagnostic]) -> Vec<&Diagnostic> {
    d.iter().filter(|d| d.severity == Severity::Error).collect()
}

#[test]
fn shipped_policies_lint_clean() {
    let sources = shipped_sources();
    let pairs: Vec<(&str, &str)> = sources
        .iter()
        .map(|s| (s.name.as_str(), s.text.as_str()))
        .collect();
    let d = lint(&pairs);
    assert!(d.is_empty(), "{d:#?}");
}

#[test]
fn an_undefined_attribute_is_an_error_at_its_line() {
    let text = r#"@id("org.ok")
@reason("fine")
permit (principal, action == Brig::Action::"exec", resource);

@id("org.typo")
@reason("typo")
forbid (principal, action == Brig::Action::"git.push", resource)
when { context.forced };
"#;
    let d = lint(&[("org.cedar", text)]);
    let e = errors(&d);
    assert_eq!(e.len(), 1, "{d:#?}");
    assert_eq!(e[0].source, "org.cedar");
    assert_eq!(e[0].policy.as_deref(), Some("org.typo"));
    assert_eq!(e[0].line, 8, "{:?}", e[0]);
    assert!(e[0].col > 1, "{:?}", e[0]);
    assert!(e[0].message.contains("forced"), "{}", e[0].message);
    // The engine refuses it, naming the same place.
    let spec = EngineSpec {
        extra: vec![PolicySource::new("org.cedar", text)],
        ..EngineSpec::default()
    };
    let err = PolicyEngine::new(&spec).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("org.cedar:8:"), "{msg}");
    match err {
        PolicyError::Invalid(d) => assert!(d.iter().all(|d| d.source == "org.cedar"), "{d:?}"),
        other => panic!("{other}"),
    }
}

#[test]
fn an_undefined_type_and_action_are_errors() {
    let text = r#"@id("a") @reason("r")
permit (principal is Brig::Robot, action == Brig::Action::"exec", resource);
@id("b") @reason("r")
permit (principal, action == Brig::Action::"repo.delete", resource);
@id("c") @reason("r")
permit (principal, action == Brig::Action::"exec", resource) when { resource.scope == "x" };
"#;
    let d = lint(&[("t.cedar", text)]);
    let e = errors(&d);
    let by: Vec<(Option<&str>, usize)> = e.iter().map(|d| (d.policy.as_deref(), d.line)).collect();
    assert!(by.contains(&(Some("a"), 2)), "{d:#?}");
    assert!(by.contains(&(Some("b"), 4)), "{d:#?}");
    // Command has no `scope` (Secret has): strict validation knows the type.
    assert!(by.contains(&(Some("c"), 6)), "{d:#?}");
    assert!(e.iter().any(|d| d.message.contains("Robot")), "{d:#?}");
    assert!(
        e.iter().any(|d| d.message.contains("repo.delete")),
        "{d:#?}"
    );
}

#[test]
fn a_parse_error_names_line_and_column() {
    let text =
        "@id(\"x\") @reason(\"r\")\npermit (principal, action, resource)\nwhen { context. };\n";
    let d = lint(&[("broken.cedar", text)]);
    let e = errors(&d);
    assert!(!e.is_empty(), "{d:#?}");
    assert_eq!(
        (e[0].source.as_str(), e[0].line),
        ("broken.cedar", 3),
        "{:?}",
        e[0]
    );
    let spec = EngineSpec {
        deployment: vec![PolicySource::new("broken.cedar", text)],
        ..EngineSpec::default()
    };
    let msg = PolicyEngine::new(&spec).unwrap_err().to_string();
    assert!(msg.contains("broken.cedar:3:"), "{msg}");
}

#[test]
fn warnings_missing_id_reason_and_useless_approval() {
    let text = r#"permit (principal, action == Brig::Action::"exec", resource);

@id("org.approval-nothing")
@reason("r")
@approval("db-approver")
forbid (principal, action == Brig::Action::"exec", resource)
when { context.sensitive.contains("migration") };

@id("org.approval-permit")
@reason("r")
@approval("x")
permit (principal, action == Brig::Action::"exec", resource);
"#;
    let d = lint(&[("w.cedar", text)]);
    assert!(errors(&d).is_empty(), "{d:#?}");
    let w = |needle: &str, line: usize| {
        assert!(
            d.iter().any(|x| x.severity == Severity::Warning
                && x.message.contains(needle)
                && x.line == line),
            "no warning {needle:?} at line {line}: {d:#?}"
        );
    };
    w("no @id", 1);
    w("no @reason", 1);
    w("never reads context.approval", 3);
    w("on a permit means nothing", 9);
    // Warnings do not stop the engine; the id-less policy gets a stable name.
    let spec = EngineSpec {
        extra: vec![PolicySource::new("w.cedar", text)],
        ..EngineSpec::default()
    };
    let e = PolicyEngine::new(&spec).unwrap();
    let ids: Vec<String> = e
        .policies("pr")
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(ids.contains(&"w.cedar#policy0".to_string()), "{ids:?}");
}

#[test]
fn duplicate_ids_and_templates_are_errors() {
    let a =
        r#"@id("dup") @reason("r") permit (principal, action == Brig::Action::"exec", resource);"#;
    let b = r#"@id("dup") @reason("r") permit (principal, action == Brig::Action::"git.fetch", resource);"#;
    let d = lint(&[("a.cedar", a), ("b.cedar", b)]);
    assert!(
        errors(&d)
            .iter()
            .any(|d| d.source == "b.cedar" && d.message.contains("a.cedar")),
        "{d:#?}"
    );
    let shipped = r#"@id("base.no-force-push") @reason("r") permit (principal, action == Brig::Action::"exec", resource);"#;
    let d = lint(&[("s.cedar", shipped)]);
    assert!(
        errors(&d).iter().any(|d| d.message.contains("shipped")),
        "{d:#?}"
    );
    let spec = EngineSpec {
        extra: vec![PolicySource::new("s.cedar", shipped)],
        ..EngineSpec::default()
    };
    let msg = PolicyEngine::new(&spec).unwrap_err().to_string();
    assert!(msg.contains("duplicate @id"), "{msg}");

    let tpl = r#"@id("t") @reason("r") permit (principal == ?principal, action == Brig::Action::"exec", resource);"#;
    let d = lint(&[("t.cedar", tpl)]);
    assert!(
        errors(&d).iter().any(|d| d.message.contains("template")),
        "{d:#?}"
    );
}

#[test]
fn the_schema_is_what_the_docs_say() {
    // Every action of the issue is declared.
    for a in [
        "exec",
        "net.connect",
        "git.fetch",
        "git.push",
        "pr.open",
        "secret.use",
        "model.call",
        "session.create",
        "session.kill",
        "session.use",
        "approval.grant",
        "policy.change",
    ] {
        assert!(SCHEMA.contains(&format!("action \"{a}\"")), "{a}");
    }
}
