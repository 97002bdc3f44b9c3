//! scan_dir over a tree, and the report's JSON and SARIF shapes.

use brig_scan::{to_sarif, FindingKind, Report, Scanner};

const TOKEN: &str = "ghp_Z8p2LmQ4rT6vX9bN1cF3hJ5kM7nP0sW2yA4d";

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let w = |p: &str, data: &[u8]| {
        let path = d.path().join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    w(
        "src/main.rs",
        format!("fn main() {{}}\nconst T: &str = \"{TOKEN}\";\n").as_bytes(),
    );
    w(
        "src/clean.rs",
        b"pub fn add(a: i32, b: i32) -> i32 { a + b }\n",
    );
    w(".gitignore", b"target/\n*.log\n");
    w(
        "target/debug/out.rs",
        format!("const T: &str = \"{TOKEN}\";\n").as_bytes(),
    );
    w("build.log", format!("{TOKEN}\n").as_bytes());
    w(".git/config", format!("{TOKEN}\n").as_bytes());
    w(".env", b"A=1\n");
    // ripgrep's .ignore does not hide files from brig.
    w(".ignore", b"hidden.rs\n");
    w(
        "hidden.rs",
        format!("const T: &str = \"{TOKEN}\";\n").as_bytes(),
    );
    w("tools/run", b"\x7fELF\x02\x01\x01\0\0\0\0\0");
    d
}

#[test]
fn a_tree_is_scanned_with_gitignore_honoured_and_git_skipped() {
    let d = tree();
    let r = Scanner::builtin().scan_dir(d.path()).unwrap();
    let got: Vec<(String, FindingKind, u32)> = r
        .findings
        .iter()
        .map(|f| (f.path.clone(), f.kind, f.line))
        .collect();
    assert_eq!(
        got,
        vec![
            (".env".to_string(), FindingKind::DeniedFileName, 0),
            ("hidden.rs".to_string(), FindingKind::Secret, 1),
            ("src/main.rs".to_string(), FindingKind::Secret, 2),
            ("tools/run".to_string(), FindingKind::BinaryFile, 0),
        ]
    );
    // .gitignore, .ignore, .env, hidden.rs, src/main.rs, src/clean.rs, tools/run
    assert_eq!(r.files_scanned, 7);
    assert!(r.bytes_scanned > 50);
    assert!(r.unreadable.is_empty());
    // One file as the root.
    let one = Scanner::builtin()
        .scan_dir(&d.path().join("src/main.rs"))
        .unwrap();
    assert_eq!((one.files_scanned, one.findings.len()), (1, 1));
    assert_eq!(one.findings[0].path, "main.rs");
    assert!(Scanner::builtin()
        .scan_dir(&d.path().join("missing"))
        .is_err());
}

#[test]
fn json_and_sarif_shapes() {
    let d = tree();
    let r = Scanner::builtin().scan_dir(d.path()).unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["findings"][2]["kind"], "secret");
    assert_eq!(json["findings"][2]["path"], "src/main.rs");
    assert_eq!(json["files_scanned"], 7);
    let back: Report = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, r);
    assert!(!json.to_string().contains(TOKEN));

    let s = to_sarif(&r);
    assert_eq!(s["version"], "2.1.0");
    let run = &s["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "brig-scan");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["binary-file", "dotenv-file", "github-token"]);
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let secret = results
        .iter()
        .find(|x| {
            x["ruleId"] == "github-token"
                && x["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "src/main.rs"
        })
        .unwrap();
    assert_eq!(secret["level"], "error");
    assert_eq!(
        rules[secret["ruleIndex"].as_u64().unwrap() as usize]["id"],
        "github-token"
    );
    let loc = &secret["locations"][0]["physicalLocation"];
    assert_eq!(loc["artifactLocation"]["uri"], "src/main.rs");
    assert_eq!(loc["region"]["startLine"], 2);
    assert!(secret["message"]["text"]
        .as_str()
        .unwrap()
        .contains("GitHub"));
    // A whole-file result has no region (SARIF lines start at 1).
    let env = results
        .iter()
        .find(|x| x["ruleId"] == "dotenv-file")
        .unwrap();
    assert!(env["locations"][0]["physicalLocation"]
        .get("region")
        .is_none());
    assert!(!s.to_string().contains(TOKEN));
}
