//! GitLabForge against a local HTTPS server that speaks GitLab's REST v4
//! shapes (merge_requests endpoints, error bodies, 409, 429) and checks the
//! request on its side.

#[path = "common/tls.rs"]
mod tls;

use std::sync::Arc;
use std::time::Duration;

use brig_forge::{
    Forge, ForgeError, GitLabAuth, GitLabForge, HttpOptions, NewPullRequest, PrState, Secret,
    StaticToken,
};
use serde_json::{json, Value};
use tls::{fake, json_resp, record, Fake, Req, Resp, Seen};

const TOKEN: &str = "glpat-GoodTokenForTheFakeGitLab0000";
const PROJECT: &str = "/api/v4/projects/group%2Fsub%2Fproj";

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    mrs: Vec<Value>,
}

fn mr_json(iid: u64, b: &Value) -> Value {
    json!({
        "id": 90_000 + iid,
        "iid": iid,
        "project_id": 42,
        "title": b["title"],
        "description": b["description"],
        "state": "opened",
        "created_at": "2024-05-01T12:00:00.000Z",
        "updated_at": "2024-05-01T12:00:00.000Z",
        "merged_by": null,
        "merged_at": null,
        "closed_at": null,
        "target_branch": b["target_branch"],
        "source_branch": b["source_branch"],
        "author": {"id": 7, "username": "brig-bot", "name": "brig"},
        "source_project_id": 42,
        "target_project_id": 42,
        "draft": false,
        "merge_status": "checking",
        "detailed_merge_status": "checking",
        "sha": "3333333333333333333333333333333333333333",
        "merge_commit_sha": null,
        "references": {"short": format!("!{iid}"), "full": format!("group/sub/proj!{iid}")},
        "web_url": format!("https://gitlab.example/group/sub/proj/-/merge_requests/{iid}")
    })
}

fn handle(st: &mut State, _base: &str, r: Req) -> Resp {
    let keep = [
        "private-token",
        "authorization",
        "content-type",
        "user-agent",
    ];
    st.seen.push(record(&r, &keep));
    let bearer = format!("Bearer {TOKEN}");
    if r.header("private-token") != Some(TOKEN)
        && r.header("authorization") != Some(bearer.as_str())
    {
        return json_resp(401, &[], json!({"message": "401 Unauthorized"}));
    }
    if r.path.starts_with("/api/v4/projects/group%2Flimited/") {
        return json_resp(
            429,
            &[
                ("retry-after", "60".into()),
                ("ratelimit-limit", "600".into()),
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-name", "throttle_authenticated_api".into()),
            ],
            json!({"message": "Retry later"}),
        );
    }
    if r.path.starts_with("/api/v4/projects/group%2Freporter/") {
        return json_resp(403, &[], json!({"message": "403 Forbidden"}));
    }
    let Some(rest) = r.path.strip_prefix(PROJECT) else {
        return json_resp(404, &[], json!({"message": "404 Project Not Found"}));
    };
    match (r.method.as_str(), rest) {
        ("POST", "/merge_requests") => {
            let b = r.json();
            let src = b["source_branch"].as_str().unwrap_or("");
            if !["brig/s1/fix", "brig/s2/more"].contains(&src) {
                return json_resp(
                    422,
                    &[],
                    json!({"message": {"source_branch": ["does not exist"]}}),
                );
            }
            if let Some(open) = st
                .mrs
                .iter()
                .find(|m| m["source_branch"] == src && m["state"] == "opened")
            {
                let msg = format!(
                    "Another open merge request already exists for this source branch: !{}",
                    open["iid"]
                );
                return json_resp(409, &[], json!({"message": [msg]}));
            }
            let iid = st.mrs.len() as u64 + 1;
            let m = mr_json(iid, &b);
            st.mrs.push(m.clone());
            json_resp(201, &[], m)
        }
        ("GET", p) => match p
            .strip_prefix("/merge_requests/")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| st.mrs.get(n.wrapping_sub(1)))
        {
            Some(m) => json_resp(200, &[], m.clone()),
            None => json_resp(404, &[], json!({"message": "404 Not found"})),
        },
        _ => json_resp(404, &[], json!({"error": "404 Not Found"})),
    }
}

type Fx = Fake<State>;

async fn fixture() -> Fx {
    fake(handle).await
}

impl Fx {
    fn forge(&self, project: &str, auth: GitLabAuth, token: &str) -> GitLabForge {
        GitLabForge::new(
            &format!("{}/api/v4", self.server.base()),
            project,
            auth,
            Arc::new(StaticToken(Secret::new(token))),
            self.opts(),
        )
        .unwrap()
    }
}

fn req(head: &str) -> NewPullRequest {
    NewPullRequest {
        title: "brig: fix the flaky test".into(),
        body: "Tests: 12 passed.".into(),
        head: head.into(),
        base: "main".into(),
    }
}

#[tokio::test]
async fn opens_a_merge_request_with_the_real_request_shape() {
    let fx = fixture().await;
    let forge = fx.forge("group/sub/proj", GitLabAuth::PrivateToken, TOKEN);
    let pr = forge.open_pull_request(&req("brig/s1/fix")).await.unwrap();
    assert_eq!(pr.number, 1);
    assert_eq!(
        pr.url,
        "https://gitlab.example/group/sub/proj/-/merge_requests/1"
    );
    assert_eq!(pr.state, PrState::Open);
    assert_eq!(
        (pr.head.as_str(), pr.base.as_str()),
        ("brig/s1/fix", "main")
    );
    assert_eq!(
        (pr.title.as_str(), pr.body.as_str()),
        ("brig: fix the flaky test", "Tests: 12 passed.")
    );
    assert_eq!(
        pr.head_sha.as_deref(),
        Some("3333333333333333333333333333333333333333")
    );

    let st = fx.state.lock().unwrap();
    let (method, path, headers, body) = &st.seen[0];
    assert_eq!(method, "POST");
    // The project path is one URL-encoded segment.
    assert_eq!(path, "/api/v4/projects/group%2Fsub%2Fproj/merge_requests");
    let h = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(h("private-token"), Some(TOKEN));
    assert_eq!(h("authorization"), None);
    assert_eq!(h("content-type"), Some("application/json"));
    assert_eq!(
        body,
        &json!({"source_branch": "brig/s1/fix", "target_branch": "main", "title": "brig: fix the flaky test", "description": "Tests: 12 passed."})
    );
}

#[tokio::test]
async fn bearer_auth_and_reading_states() {
    let fx = fixture().await;
    let forge = fx.forge("group/sub/proj", GitLabAuth::Bearer, TOKEN);
    let opened = forge.open_pull_request(&req("brig/s2/more")).await.unwrap();
    {
        let st = fx.state.lock().unwrap();
        let h = &st.seen[0].2;
        assert!(h.contains(&("authorization".into(), format!("Bearer {TOKEN}"))));
        assert!(!h.iter().any(|(k, _)| k == "private-token"));
    }
    assert_eq!(forge.get_pull_request(1).await.unwrap(), opened);
    for (gl, ours) in [
        ("merged", PrState::Merged),
        ("closed", PrState::Closed),
        ("locked", PrState::Closed),
    ] {
        fx.state.lock().unwrap().mrs[0]["state"] = json!(gl);
        assert_eq!(forge.get_pull_request(1).await.unwrap().state, ours);
    }
    let e = forge.get_pull_request(5).await.unwrap_err();
    assert!(matches!(e, ForgeError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("merge request !5"), "{e}");
}

#[tokio::test]
async fn conflicts_and_refusals_are_clear() {
    let fx = fixture().await;
    let forge = fx.forge("group/sub/proj", GitLabAuth::PrivateToken, TOKEN);
    forge.open_pull_request(&req("brig/s1/fix")).await.unwrap();
    let e = forge
        .open_pull_request(&req("brig/s1/fix"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ForgeError::AlreadyExists { existing: Some(x), .. } if x == "!1"),
        "{e:?}"
    );

    let e = forge
        .open_pull_request(&req("brig/s9/none"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ForgeError::BranchNotFound { branch, .. } if branch == "brig/s9/none"),
        "{e:?}"
    );

    let e = fx
        .forge(
            "group/sub/proj",
            GitLabAuth::PrivateToken,
            "glpat-wrong-token-value",
        )
        .open_pull_request(&req("brig/s2/more"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Unauthorized { .. }), "{e:?}");
    assert!(!e.explain().to_string().contains("glpat-wrong"));

    let e = fx
        .forge("group/other", GitLabAuth::PrivateToken, TOKEN)
        .open_pull_request(&req("brig/s2/more"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("404 Project Not Found"), "{e}");

    let e = fx
        .forge("group/reporter", GitLabAuth::PrivateToken, TOKEN)
        .open_pull_request(&req("brig/s2/more"))
        .await
        .unwrap_err();
    assert!(matches!(e, ForgeError::Forbidden { .. }), "{e:?}");

    let e = fx
        .forge("group/limited", GitLabAuth::PrivateToken, TOKEN)
        .open_pull_request(&req("brig/s2/more"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ForgeError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(60)),
        "{e:?}"
    );
    // Nothing was created by any refusal but the first open.
    assert_eq!(fx.state.lock().unwrap().mrs.len(), 1);
}

#[tokio::test]
async fn project_names_and_git_urls() {
    let tok = || Arc::new(StaticToken(Secret::new("t")));
    let f = GitLabForge::new(
        "https://gitlab.com/api/v4",
        "group/sub/proj",
        GitLabAuth::PrivateToken,
        tok(),
        HttpOptions::default(),
    )
    .unwrap();
    assert_eq!(f.git_url(), Some("https://gitlab.com/group/sub/proj.git"));
    let f = GitLabForge::new(
        "https://git.corp/gitlab/api/v4",
        "g/p.git",
        GitLabAuth::PrivateToken,
        tok(),
        HttpOptions::default(),
    )
    .unwrap();
    assert_eq!(f.git_url(), Some("https://git.corp/gitlab/g/p.git"));
    let f = GitLabForge::new(
        "https://gitlab.com/api/v4",
        "1234",
        GitLabAuth::PrivateToken,
        tok(),
        HttpOptions::default(),
    )
    .unwrap();
    assert_eq!(f.git_url(), None);
    let e = f.fetch_source().await.unwrap_err();
    assert!(e.to_string().contains("set git_url"), "{e}");
    for bad in ["", "/g/p", "g/../p", "g//p", "g p", "g/p?x"] {
        assert!(
            GitLabForge::new(
                "https://gitlab.com/api/v4",
                bad,
                GitLabAuth::PrivateToken,
                tok(),
                HttpOptions::default()
            )
            .is_err(),
            "{bad:?}"
        );
    }
}
