//! Pinned, shallow, sparse checkout against real git repositories.

use std::path::{Path, PathBuf};
use std::process::Command;

use brig_core::ErrorKind;
use brig_git::checkout::{checkout, resolve, CheckoutRequest, Source};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Up", "-c", "user.email=up@example.com"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_NO_LAZY_FETCH", "1")
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
        .env("GIT_NO_LAZY_FETCH", "1")
        .output()
        .unwrap()
        .status
        .success()
}

/// An upstream with history: three commits touching pkg/a, pkg/b, docs,
/// a tag on the second.
struct Upstream {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    first: String,
    second: String,
    third: String,
}

fn upstream() -> Upstream {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("up");
    std::fs::create_dir_all(path.join("pkg/a")).unwrap();
    std::fs::create_dir_all(path.join("pkg/b")).unwrap();
    std::fs::create_dir_all(path.join("docs")).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("pkg/a/lib.rs"), "fn a() {}\n").unwrap();
    std::fs::write(path.join("pkg/b/lib.rs"), "fn b() {}\n").unwrap();
    std::fs::write(path.join("docs/README"), "docs\n").unwrap();
    std::fs::write(path.join("top.txt"), "top\n").unwrap();
    git(&path, &["add", "."]);
    git(&path, &["commit", "-qm", "first"]);
    let first = git(&path, &["rev-parse", "HEAD"]);
    std::fs::write(path.join("pkg/a/lib.rs"), "fn a() { 2 }\n").unwrap();
    git(&path, &["commit", "-qam", "second"]);
    git(&path, &["tag", "-a", "v2", "-m", "release 2"]);
    let second = git(&path, &["rev-parse", "HEAD"]);
    std::fs::write(path.join("pkg/b/lib.rs"), "fn b() { 3 }\n").unwrap();
    git(&path, &["commit", "-qam", "third"]);
    let third = git(&path, &["rev-parse", "HEAD"]);
    Upstream {
        _tmp: tmp,
        path,
        first,
        second,
        third,
    }
}

fn request(src: &Path, reference: Option<&str>, sparse: &[&str]) -> CheckoutRequest {
    CheckoutRequest {
        source: Source::local(src),
        reference: reference.map(str::to_string),
        depth: 1,
        sparse: sparse.iter().map(|s| s.to_string()).collect(),
        name: "up".into(),
        origin_url: "http://git.brig/up.git".into(),
        author_name: "brig agent".into(),
        author_email: "agent@brig.invalid".into(),
    }
}

#[test]
fn a_branch_is_pinned_to_its_sha_with_no_other_history() {
    let up = upstream();
    let out = tempfile::tempdir().unwrap();
    let (gw, ws) = (out.path().join("gw.git"), out.path().join("ws"));
    let lines = std::sync::Mutex::new(0usize);
    let pinned = checkout(&request(&up.path, Some("main"), &[]), &gw, &ws, &|_| {
        *lines.lock().unwrap() += 1;
    })
    .unwrap();
    assert_eq!(pinned.commit, up.third);
    assert_eq!(pinned.base_branch, "main");
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]), up.third);
    // One commit, older ones unreachable and absent.
    assert_eq!(git(&ws, &["rev-list", "--all", "--count"]), "1");
    assert!(!git_ok(&ws, &["cat-file", "-e", &up.second]));
    assert!(!git_ok(&gw, &["cat-file", "-e", &up.second]));
    assert_eq!(git(&gw, &["rev-list", "--all", "--count"]), "1");
    assert_eq!(
        git(&gw, &["for-each-ref", "--format=%(refname)"]),
        "refs/heads/main"
    );
    // The whole tree, origin is the gateway, the session's identity.
    assert!(ws.join("pkg/a/lib.rs").is_file() && ws.join("docs/README").is_file());
    assert_eq!(
        git(&ws, &["config", "remote.origin.url"]),
        "http://git.brig/up.git"
    );
    assert_eq!(
        git(&ws, &["config", "--file", ".git/config", "user.email"]),
        "agent@brig.invalid"
    );
    assert!(ws.join(".git/shallow").is_file());
    // No hooks came along (no template).
    assert!(
        !ws.join(".git/hooks").exists()
            || std::fs::read_dir(ws.join(".git/hooks"))
                .unwrap()
                .next()
                .is_none()
    );
    // Upstream moving later changes nothing already pinned.
    std::fs::write(up.path.join("top.txt"), "moved\n").unwrap();
    git(&up.path, &["commit", "-qam", "fourth"]);
    assert_eq!(git(&gw, &["rev-parse", "main"]), up.third);
}

#[test]
fn sparse_cone_checks_out_only_the_named_directories_and_their_blobs() {
    let up = upstream();
    let out = tempfile::tempdir().unwrap();
    let (gw, ws) = (out.path().join("gw.git"), out.path().join("ws"));
    checkout(&request(&up.path, None, &["pkg/a"]), &gw, &ws, &|_| {}).unwrap();
    assert!(ws.join("pkg/a/lib.rs").is_file());
    assert!(
        ws.join("top.txt").is_file(),
        "cone mode keeps top-level files"
    );
    assert!(!ws.join("pkg/b").exists());
    assert!(!ws.join("docs").exists());
    // Blobs outside the cone are not in the workspace's object store.
    assert!(git_ok(&ws, &["cat-file", "-e", "HEAD:pkg/a/lib.rs"]));
    assert!(!git_ok(&ws, &["cat-file", "-e", "HEAD:pkg/b/lib.rs"]));
    assert!(!git_ok(&ws, &["cat-file", "-e", "HEAD:docs/README"]));
    assert_eq!(git(&ws, &["sparse-checkout", "list"]), "pkg/a");
}

#[test]
fn tags_shas_and_bare_sources_resolve_once() {
    let up = upstream();
    let bare = up.path.parent().unwrap().join("bare.git");
    let st = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&up.path)
        .arg(&bare)
        .status()
        .unwrap();
    assert!(st.success());
    let src = Source::local(&bare);
    assert_eq!(
        resolve(&src, Some("v2")).unwrap(),
        (up.second.clone(), "main".to_string())
    );
    assert_eq!(
        resolve(&src, None).unwrap(),
        (up.third.clone(), "main".to_string())
    );
    let out = tempfile::tempdir().unwrap();
    let (gw, ws) = (out.path().join("gw.git"), out.path().join("ws"));
    let pinned = checkout(&request(&bare, Some(&up.first), &[]), &gw, &ws, &|_| {}).unwrap();
    assert_eq!(pinned.commit, up.first);
    assert_eq!(git(&ws, &["rev-parse", "HEAD"]), up.first);
    assert_eq!(
        std::fs::read_to_string(ws.join("pkg/a/lib.rs")).unwrap(),
        "fn a() {}\n"
    );
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_nothing() {
    let up = upstream();
    let out = tempfile::tempdir().unwrap();
    let (gw, ws) = (out.path().join("gw.git"), out.path().join("ws"));
    let e = checkout(
        &request(&up.path, Some("no-such-branch"), &[]),
        &gw,
        &ws,
        &|_| {},
    )
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    assert!(e.message.contains("no-such-branch"), "{}", e.message);
    assert!(!gw.exists() && !ws.exists());

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let e = checkout(&request(&up.path, Some(missing), &[]), &gw, &ws, &|_| {}).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    assert!(e.message.contains(missing), "{}", e.message);
    assert!(!gw.exists() && !ws.exists());

    let e = checkout(&request(&up.path, None, &["pkg/zzz"]), &gw, &ws, &|_| {}).unwrap_err();
    assert!(e.message.contains("pkg/zzz"), "{}", e.message);
    assert!(!gw.exists() && !ws.exists());

    for bad in ["--upload-pack=touch /tmp/x", "a..b", "x y"] {
        let e = checkout(&request(&up.path, Some(bad), &[]), &gw, &ws, &|_| {}).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}: {e:?}");
    }
    for bad in ["../x", "/abs", ".git", "a/*"] {
        let e = checkout(&request(&up.path, None, &[bad]), &gw, &ws, &|_| {}).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}: {e:?}");
    }
    let e = checkout(
        &request(&out.path().join("nope"), None, &[]),
        &gw,
        &ws,
        &|_| {},
    )
    .unwrap_err();
    assert!(e.message.contains("nope"), "{}", e.message);
    assert!(!gw.exists() && !ws.exists());
}
