//! scan_git against real git repositories.

use std::path::Path;
use std::process::Command;

use brig_scan::{FindingKind, Scanner};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn commit(dir: &Path, files: &[(&str, &[u8])], msg: &str) -> String {
    for (p, data) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
        git(dir, &["add", p]);
    }
    git(dir, &["commit", "-q", "--allow-empty", "-m", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

fn repo() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    git(d.path(), &["init", "-q", "-b", "main"]);
    d
}

const GH: &str = "ghp_R4nd0mL00k1ngT0kenV4lue0123456789abc";

#[test]
fn a_secret_in_an_older_commit_of_the_range_is_found_with_its_commit_and_line() {
    let d = repo();
    let base = commit(d.path(), &[("src/lib.rs", b"pub fn a() {}\n")], "base");
    let with_secret = commit(
        d.path(),
        &[(
            "src/lib.rs",
            format!("pub fn a() {{}}\n\nconst T: &str = \"{GH}\";\n").as_bytes(),
        )],
        "add token",
    );
    // The tip removes it again: a tip-only scan would see nothing.
    let tip = commit(
        d.path(),
        &[("src/lib.rs", b"pub fn a() {}\npub fn b() {}\n")],
        "remove token",
    );
    let sc = Scanner::builtin();
    let r = sc
        .scan_git_range(d.path(), &format!("{base}..{tip}"))
        .unwrap();
    assert_eq!(r.commits_scanned, 2);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(f.rule, "github-token");
    assert_eq!(f.commit.as_deref(), Some(with_secret.as_str()));
    assert_eq!(f.path, "src/lib.rs");
    assert_eq!(f.line, 3);
    assert_eq!(f.column, 18);
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains(GH), "the report holds the secret: {json}");
}

#[test]
fn only_added_lines_count_and_the_root_commit_is_scanned_whole() {
    let d = repo();
    let root = commit(
        d.path(),
        &[("config.py", format!("TOKEN = \"{GH}\"\n").as_bytes())],
        "root",
    );
    let second = commit(
        d.path(),
        &[(
            "config.py",
            format!("# hello\nTOKEN = \"{GH}\"\n").as_bytes(),
        )],
        "unrelated edit",
    );
    let sc = Scanner::builtin();
    // The whole history: the root commit adds it; the second does not re-add it.
    let r = sc
        .scan_git(d.path(), &[], std::slice::from_ref(&second))
        .unwrap();
    assert_eq!(r.commits_scanned, 2);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(r.findings[0].commit.as_deref(), Some(root.as_str()));
    // Only the second commit: nothing new.
    let r = sc
        .scan_git_range(d.path(), &format!("{root}..{second}"))
        .unwrap();
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}

#[test]
fn names_sizes_and_binaries_of_added_files() {
    let d = repo();
    let base = commit(d.path(), &[("README", b"hi\n")], "base");
    let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
    elf.extend(std::iter::repeat_n(0u8, 64));
    let big = "x".repeat(2 * 1024 * 1024);
    commit(
        d.path(),
        &[
            ("tool", &elf),
            ("deploy/.env", b"A=1\n"),
            ("data.txt", big.as_bytes()),
        ],
        "stuff",
    );
    let sc = Scanner::builtin();
    let r = sc
        .scan_git_range(d.path(), &format!("{base}..HEAD"))
        .unwrap();
    let kinds: Vec<(FindingKind, &str)> = r
        .findings
        .iter()
        .map(|f| (f.kind, f.path.as_str()))
        .collect();
    assert!(
        kinds.contains(&(FindingKind::BinaryFile, "tool")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(FindingKind::DeniedFileName, "deploy/.env")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(FindingKind::LargeFile, "data.txt")),
        "{kinds:?}"
    );
    assert_eq!(r.findings.len(), 3, "{:#?}", r.findings);
}

#[test]
fn merge_commits_are_diffed_against_their_first_parent() {
    let d = repo();
    let base = commit(d.path(), &[("a.txt", b"a\n")], "base");
    git(d.path(), &["checkout", "-q", "-b", "side"]);
    let side = commit(
        d.path(),
        &[("b.txt", format!("token: {GH}\n").as_bytes())],
        "side",
    );
    git(d.path(), &["checkout", "-q", "main"]);
    commit(d.path(), &[("c.txt", b"c\n")], "main work");
    git(d.path(), &["merge", "-q", "--no-edit", "side"]);
    let merge = git(d.path(), &["rev-parse", "HEAD"]);
    let sc = Scanner::builtin();
    let r = sc
        .scan_git_range(d.path(), &format!("{base}..{merge}"))
        .unwrap();
    assert_eq!(r.commits_scanned, 3);
    // Found in the side commit and in the merge (which brings it into main).
    let commits: Vec<&str> = r
        .findings
        .iter()
        .filter_map(|f| f.commit.as_deref())
        .collect();
    assert!(commits.contains(&side.as_str()), "{:#?}", r.findings);
    assert!(commits.contains(&merge.as_str()), "{:#?}", r.findings);
}

#[test]
fn pushed_objects_in_a_quarantine_directory_are_scanned_through_env() {
    // A bare "server" repo; objects of a new commit live only in a separate
    // object directory, as during a push's pre-receive quarantine.
    let d = repo();
    let base = commit(d.path(), &[("a.txt", b"a\n")], "base");
    let server = tempfile::tempdir().unwrap();
    git(server.path(), &["init", "-q", "--bare"]);
    git(
        d.path(),
        &["push", "-q", server.path().to_str().unwrap(), "main"],
    );
    let new = commit(
        d.path(),
        &[("k.txt", format!("key={GH}\n").as_bytes())],
        "new",
    );
    let quarantine = tempfile::tempdir().unwrap();
    let qpath = quarantine.path().join("objects");
    std::fs::create_dir_all(&qpath).unwrap();
    // Write the new commit's objects into the quarantine only.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C {} pack-objects --revs --stdout <<EOF | GIT_OBJECT_DIRECTORY={} GIT_ALTERNATE_OBJECT_DIRECTORIES={}/objects git -C {} unpack-objects -q\n{new}\n^{base}\nEOF",
            d.path().display(),
            qpath.display(),
            server.path().display(),
            server.path().display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sc = Scanner::builtin();
    // Without the quarantine env, the commit is unknown: a clear error.
    let e = sc
        .scan_git(
            server.path(),
            &[],
            &[new.clone(), "--not".into(), "--all".into()],
        )
        .unwrap_err();
    assert!(e.to_string().contains("git"), "{e}");
    let env = vec![
        (
            "GIT_OBJECT_DIRECTORY".into(),
            qpath.clone().into_os_string(),
        ),
        (
            "GIT_ALTERNATE_OBJECT_DIRECTORIES".into(),
            server.path().join("objects").into_os_string(),
        ),
    ];
    let r = sc
        .scan_git(
            server.path(),
            &env,
            &[new.clone(), "--not".into(), "--all".into()],
        )
        .unwrap();
    assert_eq!(r.commits_scanned, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(r.findings[0].commit.as_deref(), Some(new.as_str()));
}

#[test]
fn a_bad_range_is_a_clear_error() {
    let d = repo();
    commit(d.path(), &[("a", b"a\n")], "a");
    let e = Scanner::builtin()
        .scan_git_range(d.path(), "nope..HEAD")
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("rev-list") && msg.contains("nope"), "{msg}");
    let e = Scanner::builtin()
        .scan_git_range(Path::new("/nonexistent-dir"), "a..b")
        .unwrap_err();
    assert!(e.to_string().contains("git"), "{e}");
}

#[test]
fn an_allowlisted_commit_is_skipped_by_its_full_sha_only() {
    let d = repo();
    let base = commit(d.path(), &[("a.txt", b"a\n")], "base");
    let leak = commit(
        d.path(),
        &[("b.txt", format!("t={GH}\n").as_bytes())],
        "leak",
    );
    let range = format!("{base}..{leak}");
    let rules =
        |c: &str| format!("[extend]\nuseDefault = true\n\n[[allowlists]]\ncommits = [\"{c}\"]\n");
    let sc = Scanner::from_gitleaks_toml(&rules(&leak), true).unwrap();
    assert!(sc
        .scan_git_range(d.path(), &range)
        .unwrap()
        .findings
        .is_empty());
    let sc = Scanner::from_gitleaks_toml(&rules(&leak[..7]), true).unwrap();
    assert_eq!(
        sc.scan_git_range(d.path(), &range).unwrap().findings.len(),
        1,
        "a prefix does not allowlist"
    );
}

#[test]
fn no_walk_scans_exactly_the_named_commits() {
    // How the gateway calls it: `--no-walk` and the push's new commits.
    let d = repo();
    commit(
        d.path(),
        &[("old.txt", format!("t={GH}\n").as_bytes())],
        "old leak, already upstream",
    );
    let a = commit(d.path(), &[("a.txt", b"a\n")], "a");
    let b = commit(d.path(), &[("b.txt", format!("u={GH}\n").as_bytes())], "b");
    let revs = vec!["--no-walk".to_string(), a.clone(), b.clone()];
    let r = Scanner::builtin().scan_git(d.path(), &[], &revs).unwrap();
    assert_eq!(r.commits_scanned, 2);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(
        (r.findings[0].path.as_str(), r.findings[0].commit.as_deref()),
        ("b.txt", Some(b.as_str()))
    );
}

#[test]
fn listed_commits_are_scanned_against_the_parent_given() {
    // How the gateway calls it now: the push's commits with their first parents.
    let d = repo();
    let base = commit(
        d.path(),
        &[("old.txt", format!("t={GH}\n").as_bytes())],
        "old leak, already upstream",
    );
    let a = commit(
        d.path(),
        &[("old.txt", format!("t={GH}\nmore\n").as_bytes())],
        "a",
    );
    let b = commit(d.path(), &[("b.txt", format!("u={GH}\n").as_bytes())], "b");
    let listed = vec![
        (a.clone(), Some(base.clone())),
        (b.clone(), Some(a.clone())),
    ];
    let r = Scanner::builtin()
        .scan_git_commits(d.path(), &[], &listed)
        .unwrap();
    assert_eq!(r.commits_scanned, 2);
    // a only adds `more` to old.txt: diffed against base, its old leak is not new.
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(
        (r.findings[0].path.as_str(), r.findings[0].commit.as_deref()),
        ("b.txt", Some(b.as_str()))
    );
    // A root commit: its whole tree counts as added.
    let r = Scanner::builtin()
        .scan_git_commits(d.path(), &[], &[(base.clone(), None)])
        .unwrap();
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(r.findings[0].path, "old.txt");
    // A commit that does not exist is an error, never an empty report.
    let missing = "1234567890123456789012345678901234567890".to_string();
    assert!(Scanner::builtin()
        .scan_git_commits(d.path(), &[], &[(missing, None)])
        .is_err());
}
