//! push_branch and fetch_source over real smart HTTP: an HTTPS server that
//! checks Basic auth and runs the real `git http-backend` CGI.

#[path = "common/git.rs"]
mod gitfx;
#[path = "common/tls.rs"]
mod tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use brig_forge::{
    Access, Forge, ForgeError, GitHubForge, GitLabAuth, GitLabForge, HttpOptions, Secret,
    StaticToken,
};
use bytes::Bytes;
use gitfx::{commit, git, work_repo};
use http_body_util::Full;
use hyper::Response;
use tls::{serve, Handler, Req, Resp, Server, TestPki};
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "ghs_PushTokenNeverInArgv0123456789abcdef";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Runs `git http-backend` for one request, CGI style.
async fn cgi(root: &Path, user: &str, r: &Req) -> Resp {
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // Set: http-backend enables receive-pack for authenticated users.
        .env("REMOTE_USER", user)
        .env("REQUEST_METHOD", &r.method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", r.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ct) = r.header("content-type") {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(enc) = r.header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(p) = r.header("git-protocol") {
        cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = r.body.clone();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    writer.await.unwrap();
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&raw[..split.0]).to_string();
    let mut resp = Response::builder().status(200);
    for line in head.lines() {
        let (k, v) = line.split_once(':').unwrap();
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            resp = resp.status(v.split(' ').next().unwrap().parse::<u16>().unwrap());
        } else {
            resp = resp.header(k.trim(), v);
        }
    }
    resp.body(Full::new(Bytes::copy_from_slice(&raw[split.0 + split.1..])))
        .unwrap()
}

struct Fx {
    dir: tempfile::TempDir,
    pki: TestPki,
    server: Server,
    upstream: PathBuf,
    work: PathBuf,
    main: String,
    /// The Basic-auth users the server accepted.
    users: Arc<Mutex<Vec<String>>>,
}

async fn fixture() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let root = dir.path().join("srv");
    let upstream = root.join("acme/widgets.git");
    std::fs::create_dir_all(&upstream).unwrap();
    git(
        &upstream,
        &["init", "-q", "--bare", "--initial-branch=main"],
    );
    let work = dir.path().join("work");
    work_repo(&work);
    let main = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "-q", upstream.to_str().unwrap(), "main"]);

    let users = Arc::new(Mutex::new(Vec::new()));
    let u2 = users.clone();
    let handler: Handler = Arc::new(move |r: Req| {
        let root = root.clone();
        let users = u2.clone();
        Box::pin(async move {
            let ok_user = ["x-access-token", "oauth2"].into_iter().find(|u| {
                r.header("authorization")
                    == Some(format!("Basic {}", b64(&format!("{u}:{TOKEN}"))).as_str())
            });
            let Some(user) = ok_user else {
                return Response::builder()
                    .status(401)
                    .header("www-authenticate", "Basic realm=\"brig-test\"")
                    .body(Full::new(Bytes::from_static(b"Unauthorized")))
                    .unwrap();
            };
            users.lock().unwrap().push(user.to_string());
            cgi(&root, user, &r).await
        })
    });
    let server = serve(&pki, handler).await;
    Fx {
        dir,
        pki,
        server,
        upstream,
        work,
        main,
        users,
    }
}

impl Fx {
    fn opts(&self) -> HttpOptions {
        HttpOptions {
            ca_file: Some(self.pki.ca_pem_file.clone()),
            ..HttpOptions::default()
        }
    }

    fn github(&self, token: &str) -> GitHubForge {
        GitHubForge::new(
            &self.server.base(),
            "acme",
            "widgets",
            Arc::new(StaticToken(Secret::new(token))),
            self.opts(),
        )
        .unwrap()
    }

    fn new_commit(&self, branch: &str) -> String {
        git(&self.work, &["checkout", "-q", "-B", branch, &self.main]);
        commit(
            &self.work,
            &format!("{}.txt", branch.replace('/', "_")),
            branch,
        )
    }

    fn upstream_tip(&self, branch: &str) -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&self.upstream)
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

#[tokio::test]
async fn github_push_lands_over_https_with_basic_auth() {
    let fx = fixture().await;
    // The derived URL is https://127.0.0.1:PORT/acme/widgets.git.
    let forge = fx.github(TOKEN);
    assert_eq!(
        forge.git_url(),
        format!("{}/acme/widgets.git", fx.server.base())
    );
    let sha = fx.new_commit("brig/s1/fix");
    forge
        .push_branch(&fx.work, &sha, "brig/s1/fix")
        .await
        .unwrap();
    assert_eq!(
        fx.upstream_tip("brig/s1/fix").as_deref(),
        Some(sha.as_str())
    );
    assert!(fx
        .users
        .lock()
        .unwrap()
        .iter()
        .all(|u| u == "x-access-token"));
    assert!(!fx.users.lock().unwrap().is_empty());

    // Not forced: a diverging commit is refused and the branch stays.
    let diverged = fx.new_commit("other");
    let e = forge
        .push_branch(&fx.work, &diverged, "brig/s1/fix")
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Push { .. }), "{e:?}");
    assert_eq!(
        fx.upstream_tip("brig/s1/fix").as_deref(),
        Some(sha.as_str())
    );
}

#[tokio::test]
async fn the_token_is_not_in_argv_and_not_in_errors() {
    let fx = fixture().await;
    let forge = fx.github(TOKEN);
    let remote = forge.git_remote(Access::Write).await.unwrap();
    let sha = fx.new_commit("brig/s1/argv");
    let cmd = remote.push_command(&fx.work, &sha, "brig/s1/argv").unwrap();
    let basic = b64(&format!("x-access-token:{TOKEN}"));
    let argv: Vec<String> = std::iter::once(cmd.as_std().get_program())
        .chain(cmd.as_std().get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        argv.iter()
            .all(|a| !a.contains(TOKEN) && !a.contains(&basic)),
        "{argv:?}"
    );
    assert!(
        !argv
            .iter()
            .any(|a| a.contains("force") || a.starts_with('+')),
        "{argv:?}"
    );
    // Only a GIT_CONFIG_VALUE_n carries it.
    for (k, v) in cmd.as_std().get_envs() {
        let v = v
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        if v.contains(&basic) {
            assert!(
                k.to_string_lossy().starts_with("GIT_CONFIG_VALUE_"),
                "{k:?}"
            );
        }
        assert!(!v.contains(TOKEN), "{k:?} has the raw token");
    }

    // The server refuses a wrong token: a clear error with no token in it.
    let wrong = "ghs_WrongTokenAlsoSecret9876543210";
    let e = fx
        .github(wrong)
        .push_branch(&fx.work, &sha, "brig/s1/argv")
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Unauthorized { .. }), "{e:?}");
    let all = format!("{e} {e:?} {}", e.explain());
    let wrong_basic = b64(&format!("x-access-token:{wrong}"));
    assert!(!all.contains(wrong) && !all.contains(&wrong_basic), "{all}");
    assert!(all.contains("expired or revoked"), "{all}");
    assert_eq!(fx.upstream_tip("brig/s1/argv"), None);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_push() {
    let fx = fixture().await;
    let forge = GitHubForge::new(
        &fx.server.base(),
        "acme",
        "widgets",
        Arc::new(StaticToken(Secret::new(TOKEN))),
        HttpOptions::default(),
    )
    .unwrap();
    let sha = fx.new_commit("brig/s1/tls");
    // brig's own environment cannot switch verification off for git
    // (nextest runs each test in its own process).
    std::env::set_var("GIT_SSL_NO_VERIFY", "1");
    let e = forge
        .push_branch(&fx.work, &sha, "brig/s1/tls")
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Tls { .. }), "{e:?}");
    assert_eq!(fx.server.request_count(), 0);
}

#[tokio::test]
async fn gitlab_push_and_fetch_source_clone() {
    let fx = fixture().await;
    let forge = GitLabForge::new(
        &format!("{}/api/v4", fx.server.base()),
        "acme/widgets",
        GitLabAuth::PrivateToken,
        Arc::new(StaticToken(Secret::new(TOKEN))),
        fx.opts(),
    )
    .unwrap();
    let sha = fx.new_commit("brig/s2/gl");
    forge
        .push_branch(&fx.work, &sha, "brig/s2/gl")
        .await
        .unwrap();
    assert_eq!(fx.upstream_tip("brig/s2/gl").as_deref(), Some(sha.as_str()));
    assert!(fx.users.lock().unwrap().iter().all(|u| u == "oauth2"));

    // brig's host side clones a session checkout with the fetch source.
    let src = forge.fetch_source().await.unwrap();
    let dest = fx.dir.path().join("checkout");
    let mut cmd = std::process::Command::new("git");
    cmd.args([
        "clone",
        "-q",
        "--depth",
        "1",
        "--branch",
        "brig/s2/gl",
        src.url(),
    ])
    .arg(&dest);
    src.configure(&mut cmd);
    // Off the runtime thread: the server answers on it.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        src.redact(&String::from_utf8_lossy(&out.stderr))
    );
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), sha);
    // The clone's own config keeps no credential.
    let config = std::fs::read_to_string(dest.join(".git/config")).unwrap();
    assert!(
        !config.contains(TOKEN) && !config.contains(&b64(&format!("oauth2:{TOKEN}"))),
        "{config}"
    );
}
