//! `brig scan` as a user runs it: exit codes 0 clean / 1 findings / 2 bad
//! input, text, JSON and SARIF output, --git-range, and never the secret.

use std::path::Path;
use std::process::{Command, Output};

const TOKEN: &str = "glpat-Qm3xT9vB2nL7pK4rW8zY";

fn brig(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brig"))
        .current_dir(dir)
        .args(args)
        .env_remove("BRIG_CONFIG")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("brig runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn clean_tree_exits_0_and_findings_exit_1_with_file_line_and_rule() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ok.rs"), "fn main() {}\n").unwrap();
    let o = brig(d.path(), &["scan", "."]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    std::fs::write(d.path().join("ci.yml"), format!("env:\n  GL: {TOKEN}\n")).unwrap();
    let o = brig(d.path(), &["scan", "."]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("ci.yml:2:") && out.contains("gitlab-token") && out.contains("GitLab"),
        "{out}"
    );
    assert!(
        !out.contains(TOKEN) && !err.contains(TOKEN),
        "the secret was printed: {out}{err}"
    );
    assert!(err.contains("1 finding"), "{err}");
}

#[test]
fn json_and_sarif_output() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ci.yml"), format!("GL: {TOKEN}\n")).unwrap();
    for args in [
        &["scan", "--json", "."][..],
        &["scan", "--format", "json", "."][..],
    ] {
        let o = brig(d.path(), args);
        assert_eq!(o.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
        assert_eq!(v["findings"][0]["rule"], "gitlab-token");
        assert_eq!(v["findings"][0]["line"], 1);
        assert!(!String::from_utf8_lossy(&o.stdout).contains(TOKEN));
    }
    let o = brig(d.path(), &["scan", "--format", "sarif", "."]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("SARIF on stdout");
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["results"][0]["ruleId"], "gitlab-token");
    assert_eq!(
        v["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "ci.yml"
    );
}

#[test]
fn git_range_finds_a_secret_in_an_older_commit() {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(d.path().join("a.txt"), "a\n").unwrap();
    git(d.path(), &["add", "."]);
    git(d.path(), &["commit", "-q", "-m", "base"]);
    let base = git(d.path(), &["rev-parse", "HEAD"]);
    std::fs::write(d.path().join("a.txt"), format!("a\ntoken {TOKEN}\n")).unwrap();
    git(d.path(), &["commit", "-q", "-am", "leak"]);
    let leak = git(d.path(), &["rev-parse", "HEAD"]);
    std::fs::write(d.path().join("a.txt"), "a\n").unwrap();
    git(d.path(), &["commit", "-q", "-am", "unleak"]);
    let range = format!("{base}..HEAD");

    // The working tree is clean; the range is not.
    assert_eq!(brig(d.path(), &["scan", "."]).status.code(), Some(0));
    let o = brig(d.path(), &["scan", "--git-range", &range, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["commits_scanned"], 2);
    assert_eq!(v["findings"][0]["commit"], leak.as_str());
    assert_eq!(v["findings"][0]["line"], 2);
    // --repo from elsewhere; text names the commit.
    let o = brig(
        Path::new("/"),
        &[
            "scan",
            "--git-range",
            &range,
            "--repo",
            d.path().to_str().unwrap(),
        ],
    );
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        out.contains("a.txt:2:") && out.contains(&leak[..12]),
        "{out}"
    );
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["scan".into()], "required"),
        (
            vec!["scan".into(), "/nonexistent/dir".into()],
            "cannot read",
        ),
        (
            vec![
                "scan".into(),
                ".".into(),
                "--git-range".into(),
                "a..b".into(),
            ],
            "cannot be used",
        ),
        (
            vec!["scan".into(), "--git-range".into(), "nope..HEAD".into()],
            "git",
        ),
        (
            vec!["scan".into(), "--git-range=--all".into()],
            "not a git range",
        ),
        (
            vec![
                "scan".into(),
                ".".into(),
                "--rules".into(),
                "/nonexistent/rules.toml".into(),
            ],
            "rules.toml",
        ),
        (
            vec!["scan".into(), ".".into(), "--format".into(), "xml".into()],
            "xml",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = brig(d.path(), &args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A bad rule in a rules file names the rule.
    let rules = d.path().join("rules.toml");
    std::fs::write(&rules, "[[rules]]\nid = \"broken\"\nregex = '''(x'''\n").unwrap();
    let o = brig(d.path(), &["scan", ".", "--rules", rules.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("broken") && err.contains("regex"), "{err}");
}

#[test]
fn scan_settings_come_from_brig_toml_and_rules_files() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.bin.txt"), "x".repeat(100)).unwrap();
    std::fs::write(d.path().join("notes.txt"), "ticket ACME-1234567\n").unwrap();
    // Defaults: clean.
    assert_eq!(brig(d.path(), &["scan", "."]).status.code(), Some(0));
    let cfg = d.path().join("brig.toml");
    std::fs::write(
        &cfg,
        "[scan]\nlarge_file_bytes = 50\nrules_file = \"team.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("team.toml"),
        "[[rules]]\nid = \"acme-ticket\"\nregex = '''ACME-\\d{7}'''\nkeywords = [\"acme-\"]\n",
    )
    .unwrap();
    let o = brig(
        d.path(),
        &["--config", cfg.to_str().unwrap(), "scan", "--json", "."],
    );
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rules: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"large-file") && rules.contains(&"acme-ticket"),
        "{rules:?}"
    );
    // An unknown [scan] key is an error, not ignored.
    std::fs::write(&cfg, "[scan]\nlarge_files = 1\n").unwrap();
    let o = brig(d.path(), &["--config", cfg.to_str().unwrap(), "scan", "."]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("large_files"), "{err}");
}
