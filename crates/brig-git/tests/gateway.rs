//! The git gateway end to end: brig's service on a loopback port, the real `git`
//! client cloning, committing and pushing through it, a local bare upstream.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use brig_git::events::Outcome;
use brig_git::{
    GatewayServices, GitEvent, GitSession, LocalUpstream, PushScanner, SessionRepo, SshSigner,
    Upstream, Violation,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSION: &str = "s-abcdefgh23";
const BOT: &str = "brig/s-abcdefgh23";
/// What the test scanner flags; the part after `=` must never reach git's output.
const MARKER: &str = "BRIG_TEST_SECRET=";
const SECRET_VALUE: &str = "hunter2-d41d8cd98f";

/// Flags every added line containing [`MARKER`] in every commit it is given.
struct MarkerScanner {
    fail: bool,
}

impl PushScanner for MarkerScanner {
    fn scan(
        &self,
        repo: &Path,
        env: &[(OsString, OsString)],
        revs: &[String],
    ) -> Result<Vec<Violation>, String> {
        if self.fail {
            return Err("the scanner is offline".into());
        }
        let mut found = vec![];
        for rev in revs {
            let out = std::process::Command::new("git")
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap())
                .env("GIT_DIR", repo)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .args(["show", "--format=", "-p", "--unified=0", rev])
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let (mut path, mut line) = (String::new(), 0u32);
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(p) = l.strip_prefix("+++ b/") {
                    path = p.to_string();
                } else if let Some(h) = l.strip_prefix("@@ ") {
                    let plus = h.split(' ').nth(1).unwrap_or("+0");
                    line = plus[1..].split(',').next().unwrap().parse().unwrap_or(0);
                } else if let Some(added) = l.strip_prefix('+') {
                    if added.contains(MARKER) {
                        found.push(Violation {
                            commit: rev.clone(),
                            path: path.clone(),
                            line: Some(line),
                            rule: "test-marker".into(),
                            description: "a test secret".into(),
                        });
                    }
                    line += 1;
                }
            }
        }
        Ok(found)
    }
}

struct Services {
    scanner: Box<dyn PushScanner>,
    upstream: LocalUpstream,
    signer: SshSigner,
    events: Mutex<Vec<GitEvent>>,
    /// The paths each `authorize_push` was asked about.
    authorized_paths: Mutex<Vec<Vec<String>>>,
}

impl GatewayServices for Services {
    fn scanner(&self) -> &dyn PushScanner {
        self.scanner.as_ref()
    }
    fn upstream(&self) -> &dyn Upstream {
        &self.upstream
    }
    fn signer(&self) -> &SshSigner {
        &self.signer
    }
    fn record(&self, event: GitEvent) {
        self.events.lock().unwrap().push(event);
    }
    fn authorize_push<'a>(
        &'a self,
        _branch: &'a str,
        _bot_branch: bool,
        paths: &'a [String],
    ) -> brig_git::BoxFuture<'a, Result<(), String>> {
        self.authorized_paths.lock().unwrap().push(paths.to_vec());
        Box::pin(async { Ok(()) })
    }
}

/// `git` as a user would run it: no global or system config, no proxy.
async fn git_in(dir: &Path, home: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new("git")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .current_dir(dir)
        .args(["-c", "user.name=Agent", "-c", "user.email=agent@sandbox"])
        .args(["-c", "protocol.version=2", "-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Fixture {
    tmp: tempfile::TempDir,
    upstream: PathBuf,
    gateway: PathBuf,
    url: String,
    base: String,
    services: Arc<Services>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with(|_| {}, Box::new(MarkerScanner { fail: false }), None).await
    }

    /// `base_file`: one more file in the pinned commit.
    async fn with(
        tune: impl FnOnce(&mut SessionRepo),
        scanner: Box<dyn PushScanner>,
        base_file: Option<(&str, &str)>,
    ) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("home")).unwrap();
        let home = root.join("home");
        // An upstream with three commits on main.
        let src = root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let ok = |o: Output| assert!(o.status.success(), "{}", stderr(&o));
        ok(git_in(&src, &home, &["init", "-q", "-b", "main"]).await);
        for i in 1..=3 {
            std::fs::write(src.join("README"), format!("version {i}\n")).unwrap();
            if let (3, Some((path, content))) = (i, base_file) {
                std::fs::write(src.join(path), content).unwrap();
            }
            ok(git_in(&src, &home, &["add", "."]).await);
            ok(git_in(
                &src,
                &home,
                &["commit", "-q", "-m", &format!("upstream {i}")],
            )
            .await);
        }
        let upstream = root.join("upstream.git");
        ok(git_in(
            &root,
            &home,
            &[
                "clone",
                "-q",
                "--bare",
                src.to_str().unwrap(),
                upstream.to_str().unwrap(),
            ],
        )
        .await);
        let base = String::from_utf8(git_in(&src, &home, &["rev-parse", "HEAD"]).await.stdout)
            .unwrap()
            .trim()
            .to_string();
        // The gateway: the pinned commit alone, shallow, on main.
        let gateway = root.join("git").join(SESSION).join("gateway.git");
        std::fs::create_dir_all(&gateway).unwrap();
        ok(git_in(&gateway, &home, &["init", "-q", "--bare"]).await);
        ok(git_in(
            &gateway,
            &home,
            &[
                "fetch",
                "-q",
                "--no-tags",
                "--depth",
                "1",
                upstream.to_str().unwrap(),
                &base,
            ],
        )
        .await);
        ok(git_in(&gateway, &home, &["update-ref", "refs/heads/main", &base]).await);
        ok(git_in(
            &gateway,
            &home,
            &["symbolic-ref", "HEAD", "refs/heads/main"],
        )
        .await);

        let mut repo = SessionRepo::for_tests(&gateway, "app", SESSION);
        repo.identity.name = "brig bot".into();
        repo.identity.email = "bot@brig.example".into();
        tune(&mut repo);
        let services = Arc::new(Services {
            scanner,
            upstream: LocalUpstream::new(&upstream),
            signer: SshSigner::generate(),
            events: Mutex::new(vec![]),
            authorized_paths: Mutex::new(vec![]),
        });
        let session = GitSession {
            repo: Arc::new(repo),
            services: services.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // As the control plane does: one session per connection, brig_git::serve.
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let session = session.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = session.clone();
                        async move { Ok::<_, std::convert::Infallible>(brig_git::serve(s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Fixture {
            tmp,
            upstream,
            gateway,
            url: format!("http://{addr}/app.git"),
            base,
            services,
            server,
        }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn home(&self) -> PathBuf {
        self.tmp.path().join("home")
    }
    async fn git(&self, dir: &Path, args: &[&str]) -> Output {
        git_in(dir, &self.home(), args).await
    }
    async fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let o = self.git(dir, args).await;
        assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// A clone of the gateway, as the sandbox has it.
    async fn clone(&self) -> PathBuf {
        let work = self.root().join("work");
        self.ok(
            self.root(),
            &["clone", "-q", &self.url, work.to_str().unwrap()],
        )
        .await;
        work
    }

    async fn commit(&self, work: &Path, file: &str, content: &str, msg: &str) -> String {
        let p = work.join(file);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(p, content).unwrap();
        self.ok(work, &["add", "."]).await;
        self.ok(work, &["commit", "-q", "-m", msg]).await;
        self.ok(work, &["rev-parse", "HEAD"]).await
    }

    /// `repo`'s value of `branch`, if it has one.
    async fn branch_in(&self, repo: &Path, branch: &str) -> Option<String> {
        let r = format!("refs/heads/{branch}");
        let o = self.git(repo, &["rev-parse", "--verify", "-q", &r]).await;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    async fn upstream_ref(&self, branch: &str) -> Option<String> {
        self.branch_in(&self.upstream, branch).await
    }

    async fn gateway_ref(&self, branch: &str) -> Option<String> {
        self.branch_in(&self.gateway, branch).await
    }

    async fn gateway_has(&self, sha: &str) -> bool {
        self.git(&self.gateway, &["cat-file", "-e", sha])
            .await
            .status
            .success()
    }

    /// Nothing reached the upstream: only its main, unchanged.
    async fn assert_upstream_untouched(&self) {
        let refs = self
            .ok(
                &self.upstream,
                &["for-each-ref", "--format=%(refname) %(objectname)"],
            )
            .await;
        assert_eq!(refs, format!("refs/heads/main {}", self.base));
    }

    fn assert_no_quarantine_left(&self) {
        let leftovers: Vec<_> = std::fs::read_dir(self.gateway.join("objects"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("incoming-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "quarantine left behind: {leftovers:?}"
        );
    }

    fn pushes(&self) -> Vec<brig_git::PushEvent> {
        self.services
            .events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                GitEvent::Push(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// A rejected push: git fails, prints every `needles`, and nothing moved.
    async fn assert_rejected(&self, work: &Path, args: &[&str], needles: &[&str]) -> String {
        let o = self.git(work, args).await;
        let err = stderr(&o);
        assert!(!o.status.success(), "push should fail: {err}");
        for n in needles {
            assert!(err.contains(n), "git push's stderr lacks {n:?}:\n{err}");
        }
        assert!(
            !err.contains(SECRET_VALUE),
            "the secret reached the agent:\n{err}"
        );
        self.assert_no_quarantine_left();
        err
    }

    async fn verify_upstream(&self, sha: &str) -> Output {
        let allowed = self.root().join("allowed_signers");
        std::fs::write(
            &allowed,
            format!(
                "{}\n",
                self.services
                    .signer
                    .allowed_signers_line("bot@brig.example")
            ),
        )
        .unwrap();
        self.git(
            &self.upstream,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
                "verify-commit",
                sha,
            ],
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_a_bot_branch_lands_upstream_signed_and_chains() {
    let f = Fixture::new().await;
    let work = f.clone().await;
    // The clone has the pinned commit alone.
    assert_eq!(f.ok(&work, &["rev-list", "--count", "HEAD"]).await, "1");
    let branch = format!("{BOT}/feature");
    let c1 = f.commit(&work, "src/lib.rs", "fn f() {}\n", "add f").await;
    let tree1 = f.ok(&work, &["rev-parse", "HEAD^{tree}"]).await;
    let o = f
        .git(
            &work,
            &["push", "origin", &format!("HEAD:refs/heads/{branch}")],
        )
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("signed by brig"), "{}", stderr(&o));

    // Upstream: a signed rewrite with the session's identity, same tree and message.
    let s1 = f.upstream_ref(&branch).await.expect("branch upstream");
    assert_ne!(s1, c1, "upstream gets brig's signed rewrite");
    let who = f
        .ok(
            &f.upstream,
            &["log", "-1", "--format=%an <%ae>|%cn <%ce>|%T|%s|%P", &s1],
        )
        .await;
    assert_eq!(
        who,
        format!(
            "brig bot <bot@brig.example>|brig bot <bot@brig.example>|{tree1}|add f|{}",
            f.base
        )
    );
    let v = f.verify_upstream(&s1).await;
    assert!(v.status.success(), "verify-commit: {}", stderr(&v));
    assert!(
        stderr(&v).contains("Good \"git\" signature for bot@brig.example"),
        "{}",
        stderr(&v)
    );
    // The gateway keeps the agent's own commit on the branch.
    assert_eq!(f.gateway_ref(&branch).await.as_deref(), Some(c1.as_str()));

    // A second push on top: a fast-forward upstream, chained onto the signed parent.
    let c2 = f
        .commit(&work, "src/lib.rs", "fn f() {}\nfn g() {}\n", "add g")
        .await;
    let o = f
        .git(&work, &["push", "origin", &format!("HEAD:{branch}")])
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let s2 = f.upstream_ref(&branch).await.unwrap();
    assert_eq!(
        f.ok(&f.upstream, &["rev-parse", &format!("{s2}^")]).await,
        s1
    );
    assert!(f.verify_upstream(&s2).await.status.success());
    assert_eq!(f.gateway_ref(&branch).await.as_deref(), Some(c2.as_str()));

    // Two commits in one push: each signed, the second onto the first's rewrite.
    let c3 = f.commit(&work, "a.txt", "a\n", "add a").await;
    let c4 = f.commit(&work, "b.txt", "b\n", "add b").await;
    let o = f
        .git(&work, &["push", "origin", &format!("HEAD:{branch}")])
        .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let s4 = f.upstream_ref(&branch).await.unwrap();
    let s3 = f.ok(&f.upstream, &["rev-parse", &format!("{s4}^")]).await;
    assert_eq!(
        f.ok(&f.upstream, &["rev-parse", &format!("{s3}^")]).await,
        s2
    );
    for s in [&s3, &s4] {
        assert!(f.verify_upstream(s).await.status.success());
    }
    assert_eq!(
        f.ok(&f.upstream, &["log", "-2", "--format=%s", &s4]).await,
        "add b\nadd a"
    );
    // The signed objects brig wrote itself pass git's strictest check.
    f.ok(&f.gateway, &["fsck", "--strict", "--no-dangling"])
        .await;
    let third = f.pushes().pop().unwrap();
    assert_eq!(
        third
            .signed
            .iter()
            .map(|x| (x.original.clone(), x.signed.clone()))
            .collect::<Vec<_>>(),
        vec![(c3.clone(), s3.clone()), (c4.clone(), s4.clone())]
    );
    // Where the push's time went, stage by stage.
    let stages: Vec<&str> = third.stages.iter().map(|x| x.stage.as_str()).collect();
    assert_eq!(
        stages,
        [
            "request",
            "refs",
            "pack",
            "checks",
            "scan",
            "policy",
            "sign",
            "upstream",
            "update_refs"
        ]
    );
    let total: f64 = third.stages.iter().map(|x| x.ms).sum();
    assert!(
        third.stages.iter().all(|x| x.ms >= 0.0) && total <= third.duration_ms as f64 + 1.0,
        "{:?} against {} ms",
        third.stages,
        third.duration_ms
    );

    // brig's own refs are never advertised, in protocol v0 or v2; v0 fetches work.
    for v in ["0", "2"] {
        let pv = format!("protocol.version={v}");
        let refs = f.ok(&work, &["-c", &pv, "ls-remote", "origin"]).await;
        assert!(
            refs.contains(&format!("{c4}\trefs/heads/{branch}")),
            "{refs}"
        );
        assert!(!refs.contains("refs/brig"), "{refs}");
        f.ok(&work, &["-c", &pv, "fetch", "-q", "origin"]).await;
    }

    // A tampered commit does not verify (the check can fail).
    let raw = f.ok(&f.upstream, &["cat-file", "commit", &s2]).await;
    let forged = raw.replace("add g", "add h");
    let path = f.root().join("forged");
    std::fs::write(&path, format!("{forged}\n")).unwrap();
    let forged_sha = f
        .ok(
            &f.upstream,
            &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()],
        )
        .await;
    assert!(!f.verify_upstream(&forged_sha).await.status.success());

    // Events: two accepted pushes with their signed commits; fetches recorded.
    let pushes = f.pushes();
    assert_eq!(pushes.len(), 3);
    assert_eq!(pushes[0].outcome, Outcome::Ok);
    assert_eq!(pushes[0].signed.len(), 1);
    assert_eq!(pushes[0].signed[0].original, c1);
    assert_eq!(pushes[0].signed[0].signed, s1);
    assert_eq!(pushes[1].refs[0].signed_tip.as_deref(), Some(s2.as_str()));
    assert!(pushes[1].refs[0].accepted);
    assert!(pushes[1].pack_bytes > 0);
    let events = f.services.events.lock().unwrap().clone();
    assert!(events
        .iter()
        .any(|e| matches!(e, GitEvent::Fetch(x) if x.stage == "upload-pack" && x.outcome == Outcome::Ok && x.protocol == 2 && x.bytes_out > 0)));
    assert!(events
        .iter()
        .any(|e| matches!(e, GitEvent::Fetch(x) if x.protocol == 0 && x.stage == "advertise")));
    let json = serde_json::to_value(GitEvent::Push(pushes[1].clone())).unwrap();
    assert_eq!(json["action"], "git.push");
    assert_eq!(json["refs"][0]["signed_tip"], s2.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_rejections_reach_git_push_and_nothing_moves() {
    let f = Fixture::new().await;
    let work = f.clone().await;
    f.commit(&work, "a.txt", "a\n", "a").await;

    f.assert_rejected(
        &work,
        &["push", "origin", "HEAD:main"],
        &["protected", "git.push.protected", "[remote rejected]"],
    )
    .await;
    f.assert_rejected(
        &work,
        &["push", "origin", "HEAD:release/2"],
        &["protected (pattern 'release/**')"],
    )
    .await;
    f.assert_rejected(
        &work,
        &["push", "origin", "HEAD:feature"],
        &[
            "outside this session's bot prefix",
            &format!("push to {BOT}/<name>"),
        ],
    )
    .await;
    f.assert_rejected(
        &work,
        &["push", "origin", "HEAD:brig/s-other00000/x"],
        &["git.push.bot_prefix"],
    )
    .await;
    f.ok(&work, &["tag", "v1"]).await;
    f.assert_rejected(
        &work,
        &["push", "origin", "v1"],
        &["tags are not accepted", "git.push.tag"],
    )
    .await;
    // Two refs, one bad: neither is updated.
    let good = format!("HEAD:{BOT}/ok");
    f.assert_rejected(
        &work,
        &["push", "origin", &good, "HEAD:main"],
        &["git.push.atomic", "git.push.protected"],
    )
    .await;
    assert_eq!(f.gateway_ref(&format!("{BOT}/ok")).await, None);
    f.assert_upstream_untouched().await;
    let pushes = f.pushes();
    assert_eq!(pushes.len(), 6);
    assert!(pushes.iter().all(|p| p.outcome == Outcome::Rejected));
    assert_eq!(pushes[0].rule.as_deref(), Some("git.push.protected"));
    assert_eq!(pushes[3].rule.as_deref(), Some("git.push.bot_prefix"));
    assert_eq!(pushes[4].rule.as_deref(), Some("git.push.tag"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_push_and_delete_are_rejected() {
    let f = Fixture::new().await;
    let work = f.clone().await;
    let branch = format!("{BOT}/x");
    f.commit(&work, "a.txt", "a\n", "a").await;
    f.ok(&work, &["push", "-q", "origin", &format!("HEAD:{branch}")])
        .await;
    let signed = f.upstream_ref(&branch).await.unwrap();
    let before = f.gateway_ref(&branch).await;

    f.ok(&work, &["commit", "-q", "--amend", "-m", "rewritten"])
        .await;
    f.assert_rejected(
        &work,
        &["push", "--force", "origin", &format!("HEAD:{branch}")],
        &[
            "non-fast-forward (force-push) is not allowed",
            "git.push.non_fast_forward",
        ],
    )
    .await;
    f.assert_rejected(
        &work,
        &["push", "origin", "--delete", &branch],
        &["deleting branches is not allowed", "git.push.delete"],
    )
    .await;
    assert_eq!(
        f.upstream_ref(&branch).await.as_deref(),
        Some(signed.as_str())
    );
    assert_eq!(f.gateway_ref(&branch).await, before);
    let amended = f.ok(&work, &["rev-parse", "HEAD"]).await;
    assert!(
        !f.gateway_has(&amended).await,
        "a rejected push's objects are not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_any_pushed_commit_reject_the_push() {
    let f = Fixture::new().await;
    let work = f.clone().await;
    let branch = format!("{BOT}/leak");
    // The secret in an older commit of the push, the tip clean.
    let bad = f
        .commit(
            &work,
            "conf/app.env",
            &format!("a=1\nb=2\n{MARKER}{SECRET_VALUE}\n"),
            "config",
        )
        .await;
    f.commit(&work, "conf/app.env", "a=1\nb=2\n", "remove it again")
        .await;
    let err = f
        .assert_rejected(
            &work,
            &["push", "origin", &format!("HEAD:{branch}")],
            &[
                &bad[..12],
                "conf/app.env:3",
                "rule test-marker",
                "git.push.scan",
            ],
        )
        .await;
    assert!(err.contains("remote: brig: rejected: commit"), "{err}");
    f.assert_upstream_untouched().await;
    assert_eq!(f.gateway_ref(&branch).await, None);
    assert!(!f.gateway_has(&bad).await);
    let p = f.pushes().pop().unwrap();
    assert_eq!(p.outcome, Outcome::Rejected);
    assert_eq!(p.commits.len(), 2, "every new commit is scanned");
    assert_eq!(p.violations.len(), 1);
    assert!(!serde_json::to_string(&p).unwrap().contains(SECRET_VALUE));

    // The secret in the tip alone.
    f.ok(&work, &["reset", "-q", "--hard", "origin/main"]).await;
    let tip = f
        .commit(
            &work,
            "k.txt",
            &format!("{MARKER}{SECRET_VALUE}\n"),
            "tip leak",
        )
        .await;
    f.assert_rejected(
        &work,
        &["push", "origin", &format!("HEAD:{branch}")],
        &[&tip[..12], "k.txt:1", "rule test-marker"],
    )
    .await;
    f.assert_upstream_untouched().await;
}

/// Policy sees every path a push changes, exactly as it lands: a name git
/// would C-quote (non-ASCII, a quote, a newline), a deletion, and what a
/// merge commit changes itself (an "evil merge", which a plain `diff-tree`
/// of the merge lists nothing for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_sees_every_path_a_push_touches_unquoted_merges_included() {
    let f = Fixture::new().await;
    let work = f.clone().await;
    let branch = format!("{BOT}/paths");
    f.commit(&work, "secrets/clé \"x\"\nz.txt", "a\n", "odd name")
        .await;
    f.ok(&work, &["rm", "-q", "README"]).await;
    f.ok(&work, &["commit", "-q", "-m", "drop README"]).await;
    // A side branch, merged with a change of the merge's own.
    f.ok(&work, &["checkout", "-q", "-b", "side", "HEAD~2"])
        .await;
    f.commit(&work, "side.txt", "s\n", "side").await;
    f.ok(&work, &["checkout", "-q", "-"]).await;
    f.ok(&work, &["merge", "-q", "--no-ff", "--no-commit", "side"])
        .await;
    std::fs::create_dir_all(work.join(".github/workflows")).unwrap();
    std::fs::write(work.join(".github/workflows/ci.yml"), "on: push\n").unwrap();
    f.ok(&work, &["add", "."]).await;
    f.ok(&work, &["commit", "-q", "-m", "merge side"]).await;
    f.ok(&work, &["push", "-q", "origin", &format!("HEAD:{branch}")])
        .await;
    let seen = f.services.authorized_paths.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![vec![
            ".github/workflows/ci.yml".to_string(),
            "README".into(),
            "secrets/clé \"x\"\nz.txt".into(),
            "side.txt".into(),
        ]],
        "the paths policy was asked about"
    );
    assert!(f.upstream_ref(&branch).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scanner_fails_closed() {
    let f = Fixture::with(|_| {}, Box::new(MarkerScanner { fail: true }), None).await;
    let work = f.clone().await;
    f.commit(&work, "a.txt", "a\n", "a").await;
    f.assert_rejected(
        &work,
        &["push", "origin", &format!("HEAD:{BOT}/x")],
        &["pre-push scan could not run", "git.push.scan_unavailable"],
    )
    .await;
    f.assert_upstream_untouched().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_pack_is_refused() {
    let f = Fixture::with(
        |r| r.limits.max_pack_bytes = 1 << 20,
        Box::new(MarkerScanner { fail: false }),
        None,
    )
    .await;
    let work = f.clone().await;
    // Past http.postBuffer (1 MiB): git probes first, then streams chunked; within
    // the drain allowance (4 x the limit), so git reads brig's answer.
    let mut noise = vec![0u8; 2 << 20];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
    std::fs::write(work.join("blob.bin"), &noise).unwrap();
    f.ok(&work, &["add", "."]).await;
    f.ok(&work, &["commit", "-q", "-m", "big"]).await;
    f.assert_rejected(
        &work,
        &["push", "origin", &format!("HEAD:{BOT}/big")],
        &["exceeds the gateway's limit of 1048576 bytes"],
    )
    .await;
    f.assert_upstream_untouched().await;
    assert_eq!(f.gateway_ref(&format!("{BOT}/big")).await, None);
    let p = f.pushes().pop().unwrap();
    assert_eq!(p.rule.as_deref(), Some("git.push.pack_size"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_reaches_the_agent_and_the_gateway_stays() {
    let f = Fixture::new().await;
    let work = f.clone().await;
    let branch = format!("{BOT}/x");
    // Someone else made the branch upstream: brig's (unforced) push is refused.
    let tree = format!("{}^{{tree}}", f.base);
    let theirs = f
        .ok(
            &f.upstream,
            &["commit-tree", "-p", &f.base, "-m", "theirs", &tree],
        )
        .await;
    f.ok(
        &f.upstream,
        &["update-ref", &format!("refs/heads/{branch}"), &theirs],
    )
    .await;
    f.commit(&work, "a.txt", "a\n", "a").await;
    let o = f
        .git(&work, &["push", "origin", &format!("HEAD:{branch}")])
        .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("upstream refused or failed"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("git.push.upstream"), "{}", stderr(&o));
    assert_eq!(f.gateway_ref(&branch).await, None);
    assert_eq!(
        f.upstream_ref(&branch).await.as_deref(),
        Some(theirs.as_str())
    );
    assert_eq!(f.pushes().pop().unwrap().outcome, Outcome::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_repos_and_missing_refs_are_clear_errors() {
    let f = Fixture::new().await;
    let other = f.url.replace("/app.git", "/nope.git");
    let o = f.git(f.root(), &["clone", &other, "x"]).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no repository 'nope' in this session"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("/app.git"), "{}", stderr(&o));

    let work = f.clone().await;
    let o = f
        .git(&work, &["fetch", "origin", "refs/heads/does-not-exist"])
        .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("couldn't find remote ref refs/heads/does-not-exist"),
        "{}",
        stderr(&o)
    );
    // A commit the gateway does not have cannot be fetched by id either.
    let o = f
        .git(
            &work,
            &[
                "fetch",
                "origin",
                "0123456789abcdef0123456789abcdef01234567",
            ],
        )
        .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not our ref"), "{}", stderr(&o));
}

/// One raw HTTP/1.1 exchange with the gateway (`Connection: close`).
async fn raw_http(url: &str, path: &str, body: &[u8]) -> String {
    raw_http_with(url, path, "", body).await
}

async fn raw_http_with(url: &str, path: &str, headers: &str, body: &[u8]) -> String {
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: git.brig\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_pack_is_rejected_and_nothing_is_kept() {
    let f = Fixture::new().await;
    let cmd = format!(
        "0000000000000000000000000000000000000000 1111111111111111111111111111111111111111 refs/heads/{BOT}/x\0report-status side-band-64k\n"
    );
    let mut body = format!("{:04x}{cmd}0000", cmd.len() + 4).into_bytes();
    body.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x01garbage that is no zlib stream at all");
    let r = raw_http(&f.url, "/app.git/git-receive-pack", &body).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains(&format!("ng refs/heads/{BOT}/x the pack is corrupt")),
        "{r}"
    );
    assert!(r.contains("unpack "), "{r}");
    assert!(!r.contains("unpack ok"), "{r}");
    assert!(r.contains("git.push.corrupt_pack"), "{r}");
    f.assert_no_quarantine_left();
    f.assert_upstream_untouched().await;
    assert_eq!(f.gateway_ref(&format!("{BOT}/x")).await, None);

    // Not a pkt-line at all: 400 with the reason.
    let r = raw_http(&f.url, "/app.git/git-receive-pack", b"zzzzgarbage").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("malformed push request"), "{r}");
    // git's probe before a large push: an empty answer.
    let r = raw_http(&f.url, "/app.git/git-receive-pack", b"0000").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("application/x-git-receive-pack-result"), "{r}");
    // An unknown repository's endpoints are 404s.
    let r = raw_http(&f.url, "/nope.git/git-receive-pack", b"0000").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_needs_a_session_extension() {
    use tower::ServiceExt;
    let req = axum::http::Request::get("/app.git/info/refs?service=git-upload-pack")
        .body(axum::body::Body::empty())
        .unwrap();
    let r = brig_git::router().oneshot(req).await.unwrap();
    assert_eq!(r.status(), 500);

    let f = Fixture::new().await;
    let mut req = axum::http::Request::get("/app.git/info/refs?service=git-receive-pack")
        .body(axum::body::Body::empty())
        .unwrap();
    let session = GitSession {
        repo: Arc::new(SessionRepo::for_tests(&f.gateway, "app", SESSION)),
        services: f.services.clone(),
    };
    req.extensions_mut().insert(session);
    let r = brig_git::router().oneshot(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("# service=git-receive-pack"), "{text}");
    assert!(
        text.contains(&format!("{} refs/heads/main", f.base)),
        "{text}"
    );
    assert!(text.contains("report-status"), "{text}");
}

/// brig-scan as the scanner (the control plane's adapter does the same mapping).
struct RealScanner(brig_scan::Scanner);

impl PushScanner for RealScanner {
    fn scan(
        &self,
        repo: &Path,
        env: &[(OsString, OsString)],
        revs: &[String],
    ) -> Result<Vec<Violation>, String> {
        let report = self
            .0
            .scan_git(repo, env, revs)
            .map_err(|e| e.to_string())?;
        Ok(report
            .findings
            .into_iter()
            .map(|f| Violation {
                commit: f.commit.unwrap_or_default(),
                path: f.path,
                line: (f.line > 0).then_some(f.line),
                rule: f.rule,
                description: f.description,
            })
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brig_scan_blocks_new_secrets_but_not_what_the_pinned_commit_has() {
    // The pinned commit carries a key already (a test fixture upstream).
    let old_key = "aws_access_key_id = AKIAQ4HZT7SX2LMN5WJP\n";
    let f = Fixture::with(
        |_| {},
        Box::new(RealScanner(brig_scan::Scanner::builtin())),
        Some(("fixture.txt", old_key)),
    )
    .await;
    let work = f.clone().await;
    let branch = format!("{BOT}/real");
    f.commit(&work, "src/ok.rs", "fn ok() {}\n", "clean").await;
    let o = f
        .git(&work, &["push", "origin", &format!("HEAD:{branch}")])
        .await;
    assert!(
        o.status.success(),
        "a clean push is accepted: {}",
        stderr(&o)
    );
    assert!(f.upstream_ref(&branch).await.is_some());

    let key = "AKIAR7TG3KQ2WX5ZNB4M";
    let leak = f
        .commit(
            &work,
            "conf/deploy.ini",
            &format!("[aws]\naws_access_key_id = {key}\n"),
            "deploy",
        )
        .await;
    let err = f
        .assert_rejected(
            &work,
            &["push", "origin", &format!("HEAD:{branch}")],
            &[
                &leak[..12],
                "conf/deploy.ini:2",
                "aws-access-key-id",
                "git.push.scan",
            ],
        )
        .await;
    assert!(!err.contains(key), "the key reached the agent:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_fetch_request_is_served_and_a_gzip_bomb_is_refused() {
    use std::io::Write;
    let f = Fixture::with(
        |r| r.limits.max_fetch_request_bytes = 64 << 10,
        Box::new(MarkerScanner { fail: false }),
        None,
    )
    .await;
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let want = format!("want {}\n", f.base);
    let req = format!("{:04x}{want}00000009done\n", want.len() + 4);
    let r = raw_http_with(
        &f.url,
        "/app.git/git-upload-pack",
        "Content-Encoding: gzip\r\n",
        &gzip(req.as_bytes()),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("PACK"), "{r}");
    // Small on the wire, past the limit once inflated.
    let r = raw_http_with(
        &f.url,
        "/app.git/git-upload-pack",
        "Content-Encoding: gzip\r\n",
        &gzip(&vec![b'0'; 1 << 20]),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("inflates past 65536 bytes"), "{r}");
}
