//! GitHubForge against a local HTTPS server that speaks GitHub's REST v3
//! shapes (pulls endpoints, error bodies, rate-limit headers) and checks
//! the request on its side.

#[path = "common/tls.rs"]
mod tls;

use std::sync::Arc;
use std::time::Duration;

use brig_forge::{
    Forge, ForgeError, GitHubForge, HttpOptions, NewPullRequest, PrState, Secret, StaticToken,
};
use serde_json::{json, Value};
use tls::{fake, json_resp, record, serve, Fake, Handler, Req, Resp, Seen, TestPki};

const TOKEN: &str = "ghs_GoodTokenForTheFakeGitHub000000000000";

#[derive(Default)]
struct State {
    /// Every request: method, path, headers of interest, JSON body.
    seen: Vec<Seen>,
    pulls: Vec<Value>,
}

fn pull_json(base: &str, n: u64, title: &str, body: &str, head: &str, base_ref: &str) -> Value {
    // The fields of GitHub's pull request object brig reads, plus enough of
    // the rest to be the real shape.
    json!({
        "url": format!("{base}/repos/acme/widgets/pulls/{n}"),
        "id": 1_000_000 + n,
        "node_id": "PR_kwDOtest",
        "html_url": format!("https://github.com/acme/widgets/pull/{n}"),
        "number": n,
        "state": "open",
        "locked": false,
        "title": title,
        "user": {"login": "brig-bot[bot]", "id": 1, "type": "Bot"},
        "body": body,
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "closed_at": null,
        "merged_at": null,
        "merge_commit_sha": null,
        "draft": false,
        "head": {"label": format!("acme:{head}"), "ref": head, "sha": "1111111111111111111111111111111111111111",
                 "repo": {"full_name": "acme/widgets"}},
        "base": {"label": format!("acme:{base_ref}"), "ref": base_ref, "sha": "2222222222222222222222222222222222222222",
                 "repo": {"full_name": "acme/widgets"}},
        "merged": false,
        "mergeable": null,
        "comments": 0,
        "commits": 1
    })
}

fn not_found() -> Resp {
    json_resp(
        404,
        &[],
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "404"}),
    )
}

fn handle(st: &mut State, base: &str, r: Req) -> Resp {
    let keep = [
        "accept",
        "x-github-api-version",
        "authorization",
        "user-agent",
        "content-type",
    ];
    st.seen.push(record(&r, &keep));
    if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
        return json_resp(
            401,
            &[],
            json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}),
        );
    }
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["repos", owner, repo, "pulls", rest @ ..] = parts.as_slice() else {
        return not_found();
    };
    match *owner {
        "limited" => {
            let reset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 120;
            return json_resp(
                403,
                &[
                    ("x-ratelimit-limit", "5000".into()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-used", "5000".into()),
                    ("x-ratelimit-reset", reset.to_string()),
                    ("x-ratelimit-resource", "core".into()),
                ],
                json!({"message": "API rate limit exceeded for installation ID 1.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api", "status": "403"}),
            );
        }
        "secondary" => {
            return json_resp(
                429,
                &[("retry-after", "30".into())],
                json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits", "status": "429"}),
            );
        }
        "readonly" => {
            return json_resp(
                403,
                &[("x-ratelimit-remaining", "4999".into())],
                json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "403"}),
            );
        }
        _ => {}
    }
    if (*owner, *repo) != ("acme", "widgets") {
        return not_found();
    }
    match (r.method.as_str(), rest) {
        ("POST", []) => {
            let b = r.json();
            let (title, body, head, base_ref) = (
                b["title"].as_str().unwrap_or(""),
                b["body"].as_str().unwrap_or(""),
                b["head"].as_str().unwrap_or(""),
                b["base"].as_str().unwrap_or(""),
            );
            if !["brig/s1/fix", "brig/s2/more"].contains(&head) {
                return json_resp(
                    422,
                    &[],
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}], "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "422"}),
                );
            }
            if st
                .pulls
                .iter()
                .any(|p| p["head"]["ref"] == head && p["state"] == "open")
            {
                return json_resp(
                    422,
                    &[],
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for acme:{head}.")}], "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request", "status": "422"}),
                );
            }
            let n = st.pulls.len() as u64 + 1;
            let p = pull_json(base, n, title, body, head, base_ref);
            st.pulls.push(p.clone());
            json_resp(
                201,
                &[("location", format!("{base}/repos/acme/widgets/pulls/{n}"))],
                p,
            )
        }
        ("GET", []) => {
            let want_head = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("head=acme:"))
                .unwrap_or("");
            let want_head = want_head.replace("%2F", "/");
            let list: Vec<Value> = st
                .pulls
                .iter()
                .filter(|p| p["head"]["ref"] == want_head.as_str() && p["state"] == "open")
                .cloned()
                .collect();
            json_resp(200, &[], Value::Array(list))
        }
        ("GET", [n]) => match n
            .parse::<usize>()
            .ok()
            .and_then(|n| st.pulls.get(n.wrapping_sub(1)))
        {
            Some(p) => json_resp(200, &[], p.clone()),
            None => not_found(),
        },
        _ => not_found(),
    }
}

type Fx = Fake<State>;

async fn fixture() -> Fx {
    fake(handle).await
}

impl Fx {
    fn forge(&self, owner: &str, token: &str) -> GitHubForge {
        let opts = self.opts();
        GitHubForge::new(
            &self.server.base(),
            owner,
            "widgets",
            Arc::new(StaticToken(Secret::new(token))),
            opts,
        )
        .unwrap()
    }
}

fn req(head: &str) -> NewPullRequest {
    NewPullRequest {
        title: "brig: fix the flaky test".into(),
        body: "Tests: 12 passed.\n\nOpened by brig session s1.".into(),
        head: head.into(),
        base: "main".into(),
    }
}

#[tokio::test]
async fn opens_a_pull_request_with_the_real_request_shape() {
    let fx = fixture().await;
    let forge = fx.forge("acme", TOKEN);
    let pr = forge.open_pull_request(&req("brig/s1/fix")).await.unwrap();
    assert_eq!(pr.number, 1);
    assert_eq!(pr.url, "https://github.com/acme/widgets/pull/1");
    assert_eq!(pr.state, PrState::Open);
    assert_eq!(
        (pr.head.as_str(), pr.base.as_str()),
        ("brig/s1/fix", "main")
    );
    assert_eq!(pr.title, "brig: fix the flaky test");
    assert_eq!(
        pr.head_sha.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );

    let st = fx.state.lock().unwrap();
    let (method, path, headers, body) = &st.seen[0];
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/repos/acme/widgets/pulls")
    );
    let h = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("accept"), Some("application/vnd.github+json"));
    assert_eq!(h("x-github-api-version"), Some("2022-11-28"));
    assert_eq!(h("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(h("content-type"), Some("application/json"));
    assert!(h("user-agent").unwrap().starts_with("brig/"));
    assert_eq!(
        body,
        &json!({"title": "brig: fix the flaky test", "body": "Tests: 12 passed.\n\nOpened by brig session s1.", "head": "brig/s1/fix", "base": "main"})
    );
}

#[tokio::test]
async fn reads_a_pull_request_and_its_state() {
    let fx = fixture().await;
    let forge = fx.forge("acme", TOKEN);
    let opened = forge.open_pull_request(&req("brig/s1/fix")).await.unwrap();
    assert_eq!(forge.get_pull_request(1).await.unwrap(), opened);
    {
        let mut st = fx.state.lock().unwrap();
        st.pulls[0]["state"] = json!("closed");
        st.pulls[0]["merged"] = json!(true);
        st.pulls[0]["merged_at"] = json!("2024-05-02T00:00:00Z");
    }
    assert_eq!(
        forge.get_pull_request(1).await.unwrap().state,
        PrState::Merged
    );
    fx.state.lock().unwrap().pulls[0]["merged"] = json!(false);
    fx.state.lock().unwrap().pulls[0]["merged_at"] = Value::Null;
    assert_eq!(
        forge.get_pull_request(1).await.unwrap().state,
        PrState::Closed
    );
    let e = forge.get_pull_request(99).await.unwrap_err();
    assert!(matches!(e, ForgeError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("pull request #99"), "{e}");
}

#[tokio::test]
async fn already_exists_names_the_open_one() {
    let fx = fixture().await;
    let forge = fx.forge("acme", TOKEN);
    forge.open_pull_request(&req("brig/s1/fix")).await.unwrap();
    let e = forge
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    match &e {
        ForgeError::AlreadyExists { head, existing, .. } => {
            assert_eq!(head, "brig/s1/fix");
            assert_eq!(
                existing.as_deref(),
                Some("#1 https://github.com/acme/widgets/pull/1")
            );
        }
        e => panic!("{e:?}"),
    }
    // The lookup asked for the head the GitHub way.
    let st = fx.state.lock().unwrap();
    assert!(st.seen.iter().any(|(m, p, _, _)| m == "GET"
        && p == "/repos/acme/widgets/pulls?state=open&head=acme:brig/s1/fix"));
}

#[tokio::test]
async fn unknown_head_bad_token_unknown_repo_and_permissions_are_clear() {
    let fx = fixture().await;
    let e = fx
        .forge("acme", TOKEN)
        .open_pull_request(&req("brig/s9/none"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ForgeError::BranchNotFound { branch, .. } if branch == "brig/s9/none"),
        "{e:?}"
    );

    let e = fx
        .forge("acme", "ghs_WrongToken")
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Unauthorized { .. }), "{e:?}");
    let shown = e.explain().to_string();
    assert!(
        shown.contains("Bad credentials") && shown.contains("expired or revoked"),
        "{shown}"
    );
    assert!(!shown.contains("ghs_WrongToken"), "{shown}");

    let e = fx
        .forge("nobody", TOKEN)
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::NotFound { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("nobody/widgets does not exist or the token cannot see it"),
        "{e}"
    );

    let e = fx
        .forge("readonly", TOKEN)
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Forbidden { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("Resource not accessible by integration"),
        "{e}"
    );
    assert!(!format!("{e:?}").contains(TOKEN));
}

#[tokio::test]
async fn rate_limits_say_when_to_retry() {
    let fx = fixture().await;
    let e = fx
        .forge("limited", TOKEN)
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    match e {
        ForgeError::RateLimited {
            retry_after: Some(d),
            ..
        } => {
            assert!(d.as_secs() > 60 && d.as_secs() <= 120, "{d:?}")
        }
        e => panic!("{e:?}"),
    }
    let e = fx
        .forge("secondary", TOKEN)
        .get_pull_request(1)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ForgeError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(30)),
        "{e:?}"
    );
    assert!(e.to_string().contains("retry in 30s"), "{e}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error_not_a_fallback() {
    let fx = fixture().await;
    // No ca_file: the test CA is not in the system bundle.
    let forge = GitHubForge::new(
        &fx.server.base(),
        "acme",
        "widgets",
        Arc::new(StaticToken(Secret::new(TOKEN))),
        HttpOptions::default(),
    )
    .unwrap();
    let e = forge
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    match &e {
        ForgeError::Tls { detail, .. } => assert!(detail.contains("certificate"), "{detail}"),
        e => panic!("{e:?}"),
    }
    assert!(e.explain().to_string().contains("ca_file"));
    // The token never left: no request reached the server.
    assert_eq!(fx.server.request_count(), 0);
    // The server notices the client's hang-up a moment later.
    for _ in 0..100 {
        if fx.server.handshake_failures() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fx.server.handshake_failures() >= 1);
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Signed by a CA the client trusts, but for other.example, not 127.0.0.1.
    let pki = TestPki::for_names(dir.path(), &[], &["other.example"]);
    let handler: Handler = Arc::new(|_| Box::pin(async { json_resp(200, &[], json!({})) }));
    let server = serve(&pki, handler).await;
    let forge = GitHubForge::new(
        &server.base(),
        "acme",
        "widgets",
        Arc::new(StaticToken(Secret::new(TOKEN))),
        HttpOptions {
            ca_file: Some(pki.ca_pem_file.clone()),
            ..HttpOptions::default()
        },
    )
    .unwrap();
    let e = forge.get_pull_request(1).await.unwrap_err();
    match &e {
        ForgeError::Tls { detail, .. } => assert!(detail.contains("mismatch"), "{detail}"),
        e => panic!("{e:?}"),
    }
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn derived_git_urls() {
    let tok = || Arc::new(StaticToken(Secret::new("t")));
    let f = GitHubForge::new(
        "https://api.github.com",
        "acme",
        "widgets.git",
        Arc::new(StaticToken(Secret::new("ghs_SecretForDebug"))),
        HttpOptions::default(),
    )
    .unwrap();
    assert_eq!(f.git_url(), "https://github.com/acme/widgets.git");
    let r = f.fetch_source().await.unwrap();
    assert!(r.is_authenticated());
    assert_eq!(r.url(), "https://github.com/acme/widgets.git");
    assert!(!format!("{r:?}").contains("ghs_SecretForDebug"), "{r:?}");
    let f = GitHubForge::new(
        "https://ghe.corp:8443/api/v3",
        "acme",
        "widgets",
        tok(),
        HttpOptions::default(),
    )
    .unwrap();
    assert_eq!(f.git_url(), "https://ghe.corp:8443/acme/widgets.git");
    assert!(GitHubForge::new(
        "https://api.github.com",
        "ac/me",
        "w",
        tok(),
        HttpOptions::default()
    )
    .is_err());
    assert!(GitHubForge::new(
        "https://api.github.com",
        "acme",
        "..",
        tok(),
        HttpOptions::default()
    )
    .is_err());
}
