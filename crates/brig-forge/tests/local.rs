//! The embedded local forge against real git: push, open, numbers under
//! concurrency, refusals.

#[path = "common/git.rs"]
mod gitfx;

use std::path::Path;
use std::sync::Arc;

use brig_forge::{Forge, ForgeError, LocalForge, NewPullRequest, PrState};
use gitfx::{commit, git, work_repo};

struct Fx {
    _dir: tempfile::TempDir,
    work: std::path::PathBuf,
    forge: Arc<LocalForge>,
    main: String,
}

async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    work_repo(&work);
    let forge = LocalForge::open_or_init(&dir.path().join("upstream.git"), "main").unwrap();
    let main = git(&work, &["rev-parse", "HEAD"]);
    forge.push_branch(&work, &main, "main").await.unwrap();
    Fx {
        _dir: dir,
        work,
        forge: Arc::new(forge),
        main,
    }
}

fn pr(head: &str) -> NewPullRequest {
    NewPullRequest {
        title: format!("brig: {head}"),
        body: "tests: 3 passed".into(),
        head: head.into(),
        base: "main".into(),
    }
}

/// A branch with one commit of its own, pushed upstream.
async fn push_branch(fx: &Fx, branch: &str) -> String {
    git(&fx.work, &["checkout", "-q", "-B", branch, &fx.main]);
    let sha = commit(
        &fx.work,
        &format!("{}.txt", branch.replace('/', "_")),
        branch,
    );
    fx.forge.push_branch(&fx.work, &sha, branch).await.unwrap();
    sha
}

fn upstream_tip(forge: &LocalForge, branch: &str) -> String {
    git(
        forge.path(),
        &["rev-parse", &format!("refs/heads/{branch}")],
    )
}

#[tokio::test]
async fn push_lands_and_open_keeps_a_record_with_the_forge_fields() {
    let fx = fixture().await;
    let sha = push_branch(&fx, "brig/s1/fix").await;
    assert_eq!(upstream_tip(&fx.forge, "brig/s1/fix"), sha);

    let opened = fx
        .forge
        .open_pull_request(&pr("brig/s1/fix"))
        .await
        .unwrap();
    assert_eq!(opened.number, 1);
    assert_eq!(opened.state, PrState::Open);
    assert_eq!(opened.head, "brig/s1/fix");
    assert_eq!(opened.base, "main");
    assert_eq!(opened.title, "brig: brig/s1/fix");
    assert_eq!(opened.body, "tests: 3 passed");
    assert_eq!(opened.head_sha.as_deref(), Some(sha.as_str()));
    assert_eq!(
        opened.url,
        format!("file://{}#pull/1", fx.forge.path().display())
    );

    // The record on disk has the same fields.
    let raw = std::fs::read(fx.forge.path().join("brig/pulls/1.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    for (k, want) in [
        ("title", "brig: brig/s1/fix"),
        ("body", "tests: 3 passed"),
        ("head", "brig/s1/fix"),
        ("base", "main"),
        ("state", "open"),
    ] {
        assert_eq!(v[k], want, "field {k}");
    }
    assert_eq!(v["url"], opened.url.as_str());

    assert_eq!(fx.forge.get_pull_request(1).await.unwrap(), opened);
    // An open PR follows its branch.
    let sha2 = commit(&fx.work, "more.txt", "more");
    fx.forge
        .push_branch(&fx.work, &sha2, "brig/s1/fix")
        .await
        .unwrap();
    let got = fx.forge.get_pull_request(1).await.unwrap();
    assert_eq!(got.head_sha.as_deref(), Some(sha2.as_str()));
}

#[tokio::test]
async fn push_is_never_forced_and_is_idempotent() {
    let fx = fixture().await;
    let sha = push_branch(&fx, "brig/s1/a").await;
    // The same SHA again: nothing to do, not an error.
    fx.forge
        .push_branch(&fx.work, &sha, "brig/s1/a")
        .await
        .unwrap();
    // A commit that does not descend from the branch's tip: refused.
    git(&fx.work, &["checkout", "-q", "-B", "other", &fx.main]);
    let diverged = commit(&fx.work, "other.txt", "x");
    let err = fx
        .forge
        .push_branch(&fx.work, &diverged, "brig/s1/a")
        .await
        .unwrap_err();
    match &err {
        ForgeError::Push { detail, .. } => {
            assert!(
                detail.contains("non-fast-forward") || detail.contains("fetch first"),
                "{detail}"
            )
        }
        e => panic!("expected a refused push, got {e:?}"),
    }
    assert!(err.explain().to_string().contains("never force-pushes"));
    assert_eq!(upstream_tip(&fx.forge, "brig/s1/a"), sha);

    // Bad input never reaches git.
    for (sha, branch) in [
        ("HEAD", "brig/x"),
        (diverged.as_str(), "-f"),
        (diverged.as_str(), "a..b"),
    ] {
        let e = fx
            .forge
            .push_branch(&fx.work, sha, branch)
            .await
            .unwrap_err();
        assert!(matches!(e, ForgeError::Invalid(_)), "{e:?}");
    }
    // A commit the host repository does not have: a clear push error.
    let e = fx
        .forge
        .push_branch(&fx.work, &"e".repeat(40), "brig/s1/b")
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Push { .. }), "{e:?}");
}

#[tokio::test]
async fn concurrent_opens_get_distinct_numbers() {
    let fx = fixture().await;
    let heads: Vec<String> = (0..8).map(|i| format!("brig/s{i}/work")).collect();
    for h in &heads {
        push_branch(&fx, h).await;
    }
    let mut tasks = Vec::new();
    for h in heads.clone() {
        let forge = fx.forge.clone();
        tasks.push(tokio::spawn(async move {
            forge.open_pull_request(&pr(&h)).await
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap().unwrap().number);
    }
    numbers.sort();
    assert_eq!(numbers, (1..=8).collect::<Vec<u64>>());
    let listed = fx.forge.list_pull_requests().await.unwrap();
    assert_eq!(listed.len(), 8);
    let mut listed_heads: Vec<String> = listed.into_iter().map(|p| p.head).collect();
    listed_heads.sort();
    assert_eq!(listed_heads, heads);
}

#[tokio::test]
async fn one_open_pr_per_head_even_when_racing() {
    let fx = fixture().await;
    push_branch(&fx, "brig/s1/dup").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let forge = fx.forge.clone();
        tasks.push(tokio::spawn(async move {
            forge.open_pull_request(&pr("brig/s1/dup")).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ForgeError::AlreadyExists { head, existing, .. }) => {
                assert_eq!(head, "brig/s1/dup");
                assert!(existing.unwrap().starts_with("#1 "));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 1);
    // Once closed, a new PR for the same head is allowed.
    let closed = fx.forge.set_state(1, PrState::Closed).await.unwrap();
    assert_eq!(closed.state, PrState::Closed);
    assert_eq!(
        fx.forge.get_pull_request(1).await.unwrap().state,
        PrState::Closed
    );
    let again = fx
        .forge
        .open_pull_request(&pr("brig/s1/dup"))
        .await
        .unwrap();
    assert_eq!(again.number, 2);
    fx.forge.set_state(2, PrState::Merged).await.unwrap();
    let e = fx.forge.set_state(2, PrState::Open).await.unwrap_err();
    assert!(e.to_string().contains("merged"), "{e}");
}

#[tokio::test]
async fn refusals_are_clear() {
    let fx = fixture().await;
    push_branch(&fx, "brig/s1/ok").await;

    let e = fx
        .forge
        .open_pull_request(&pr("brig/s1/nope"))
        .await
        .unwrap_err();
    match &e {
        ForgeError::BranchNotFound { branch, .. } => assert_eq!(branch, "brig/s1/nope"),
        e => panic!("{e:?}"),
    }
    assert!(
        e.to_string()
            .contains("branch `brig/s1/nope` does not exist"),
        "{e}"
    );

    let mut bad_base = pr("brig/s1/ok");
    bad_base.base = "release".into();
    let e = fx.forge.open_pull_request(&bad_base).await.unwrap_err();
    assert!(
        matches!(&e, ForgeError::BranchNotFound { branch, .. } if branch == "release"),
        "{e:?}"
    );

    let mut same = pr("main");
    same.base = "main".into();
    assert!(matches!(
        fx.forge.open_pull_request(&same).await,
        Err(ForgeError::Invalid(_))
    ));

    let mut empty = pr("brig/s1/ok");
    empty.title = "  ".into();
    assert!(matches!(
        fx.forge.open_pull_request(&empty).await,
        Err(ForgeError::Invalid(_))
    ));

    // A branch with nothing beyond base.
    fx.forge
        .push_branch(&fx.work, &fx.main, "brig/s1/empty")
        .await
        .unwrap();
    let e = fx
        .forge
        .open_pull_request(&pr("brig/s1/empty"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no commits between"), "{e}");

    // Nothing was recorded by any refusal.
    assert!(fx.forge.list_pull_requests().await.unwrap().is_empty());

    let e = fx.forge.get_pull_request(42).await.unwrap_err();
    assert!(matches!(e, ForgeError::NotFound { .. }), "{e:?}");

    // A corrupt record is an error, not a missing PR.
    std::fs::create_dir_all(fx.forge.path().join("brig/pulls")).unwrap();
    std::fs::write(fx.forge.path().join("brig/pulls/7.json"), "{not json").unwrap();
    let e = fx.forge.get_pull_request(7).await.unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    assert!(fx.forge.open_pull_request(&pr("brig/s1/ok")).await.is_err());
}

#[test]
fn a_non_bare_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = LocalForge::open(dir.path()).err().unwrap();
    assert!(matches!(e, ForgeError::Config(_)));
    assert!(e.to_string().contains("git init --bare"), "{e}");
    let e = LocalForge::open(Path::new("/nonexistent/brig-forge"))
        .err()
        .unwrap();
    assert!(matches!(e, ForgeError::Config(_)), "{e:?}");
}
