//! GitHub (github.com or Enterprise Server) over REST v3.
//!
//! - open: `POST /repos/{owner}/{repo}/pulls` with `{title, body, head, base}`
//! - read: `GET /repos/{owner}/{repo}/pulls/{number}`
//! - on "already exists": `GET /repos/{owner}/{repo}/pulls?head={owner}:{branch}&state=open`
//!   to name the existing one
//!
//! Headers: `Accept: application/vnd.github+json`, `X-GitHub-Api-Version:
//! 2022-11-28`, `Authorization: Bearer <token>`, `User-Agent: brig/<v>`.
//! git: `https://github.com/{owner}/{repo}.git` with
//! `Authorization: Basic base64(x-access-token:<token>)`.

use std::sync::Arc;

use hyper::Method;
use serde::Deserialize;
use serde_json::json;

use crate::http::{check_git_url, ApiClient, ApiResponse};
use crate::{
    Access, BoxFuture, Forge, ForgeError, GitRemote, HttpOptions, NewPullRequest, PrState,
    PullRequest, TokenSource,
};

const FORGE: &str = "GitHub";
pub const DEFAULT_API: &str = "https://api.github.com";
const API_VERSION: &str = "2022-11-28";

pub struct GitHubForge {
    api: ApiClient,
    owner: String,
    repo: String,
    git_url: String,
    token: Arc<dyn TokenSource>,
    opts: HttpOptions,
}

#[derive(Deserialize)]
struct GhRef {
    #[serde(rename = "ref")]
    name: String,
    sha: Option<String>,
}

#[derive(Deserialize)]
struct GhPull {
    number: u64,
    html_url: String,
    state: String,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
    title: String,
    #[serde(default)]
    body: Option<String>,
    head: GhRef,
    base: GhRef,
}

impl GhPull {
    fn into_pr(self) -> Result<PullRequest, ForgeError> {
        let merged = self.merged == Some(true) || self.merged_at.is_some();
        let state = match (self.state.as_str(), merged) {
            (_, true) => PrState::Merged,
            ("open", _) => PrState::Open,
            ("closed", _) => PrState::Closed,
            (s, _) => {
                return Err(ForgeError::Protocol {
                    forge: FORGE,
                    detail: format!("pull request #{} has unknown state `{s}`", self.number),
                })
            }
        };
        Ok(PullRequest {
            number: self.number,
            url: self.html_url,
            title: self.title,
            body: self.body.unwrap_or_default(),
            head: self.head.name,
            base: self.base.name,
            state,
            head_sha: self.head.sha,
        })
    }
}

#[derive(Deserialize, Default)]
struct GhErrorItem {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct GhError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<GhErrorItem>,
}

/// GitHub owner and repository names: letters, digits, `-`, `_`, `.`.
fn check_name(what: &str, v: &str) -> Result<(), ForgeError> {
    let ok = !v.is_empty()
        && v.len() <= 100
        && v != "."
        && v != ".."
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ForgeError::Config(format!(
            "GitHub {what} `{}` is not a valid name (letters, digits, '-', '_', '.')",
            v.escape_debug()
        )))
    }
}

impl GitHubForge {
    /// `api`: `https://api.github.com`, or `https://HOST/api/v3` for
    /// Enterprise Server. The git URL is derived from it (see
    /// [`GitHubForge::with_git_url`] to set it).
    pub fn new(
        api: &str,
        owner: &str,
        repo: &str,
        token: Arc<dyn TokenSource>,
        opts: HttpOptions,
    ) -> Result<Self, ForgeError> {
        check_name("owner", owner)?;
        let repo = repo.strip_suffix(".git").unwrap_or(repo);
        check_name("repo", repo)?;
        let api_client = ApiClient::new(FORGE, api, &opts)?;
        let b = &api_client.base;
        let web = if b.host.eq_ignore_ascii_case("api.github.com") {
            "https://github.com".to_string()
        } else {
            b.origin.clone()
        };
        Ok(GitHubForge {
            git_url: format!("{web}/{owner}/{repo}.git"),
            api: api_client,
            owner: owner.to_string(),
            repo: repo.to_string(),
            token,
            opts,
        })
    }

    /// The repository's git URL, when it is not the derived one.
    pub fn with_git_url(mut self, url: &str) -> Result<Self, ForgeError> {
        self.git_url = check_git_url(url, self.opts.allow_http)?;
        Ok(self)
    }

    pub fn git_url(&self) -> &str {
        &self.git_url
    }

    fn repo_path(&self) -> String {
        format!("/repos/{}/{}", self.owner, self.repo)
    }

    async fn call(
        &self,
        access: Access,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiResponse, ForgeError> {
        let token = self.token.token(access).await?;
        let auth = format!("Bearer {}", token.expose());
        self.api
            .send(
                method,
                path,
                &[
                    ("accept", "application/vnd.github+json"),
                    ("x-github-api-version", API_VERSION),
                    ("authorization", &auth),
                ],
                body,
            )
            .await
    }

    /// The errors every endpoint shares; `what` names the request.
    fn error(&self, r: &ApiResponse, what: &str) -> ForgeError {
        let e: GhError = serde_json::from_slice(&r.body).unwrap_or_default();
        let remaining = r.header("x-ratelimit-remaining");
        let secondary = e.message.to_ascii_lowercase().contains("rate limit");
        match r.status {
            401 => ForgeError::Unauthorized {
                forge: FORGE,
                detail: format!("{what}: HTTP 401 {}", e.message),
            },
            403 | 429 if r.status == 429 || remaining == Some("0") || secondary => {
                ForgeError::RateLimited {
                    forge: FORGE,
                    retry_after: r.retry_after("x-ratelimit-reset"),
                }
            }
            403 => ForgeError::Forbidden {
                forge: FORGE,
                detail: format!("{what}: HTTP 403 {}", e.message),
            },
            404 => ForgeError::NotFound {
                forge: FORGE,
                what: format!(
                    "{what} (HTTP 404: repository {}/{} does not exist or the token cannot see it)",
                    self.owner, self.repo
                ),
            },
            _ => r.unexpected(FORGE, what),
        }
    }

    async fn open_pr(&self, req: &NewPullRequest) -> Result<PullRequest, ForgeError> {
        req.validate()?;
        let what = format!(
            "opening a pull request {} -> {} in {}/{}",
            req.head, req.base, self.owner, self.repo
        );
        let body =
            json!({"title": req.title, "body": req.body, "head": req.head, "base": req.base});
        let r = self
            .call(
                Access::Write,
                Method::POST,
                &format!("{}/pulls", self.repo_path()),
                Some(&body),
            )
            .await?;
        if r.status == 201 {
            return r.json::<GhPull>(FORGE)?.into_pr();
        }
        if r.status != 422 {
            return Err(self.error(&r, &what));
        }
        let e: GhError = serde_json::from_slice(&r.body).unwrap_or_default();
        let says = |needle: &str| {
            e.errors
                .iter()
                .any(|i| i.message.as_deref().is_some_and(|m| m.contains(needle)))
                || e.message.contains(needle)
        };
        if says("already exists") {
            let existing = self.find_open(&req.head).await;
            return Err(ForgeError::AlreadyExists {
                forge: FORGE,
                head: req.head.clone(),
                existing,
            });
        }
        for item in &e.errors {
            if item.code.as_deref() == Some("invalid") {
                let branch = match item.field.as_deref() {
                    Some("head") => &req.head,
                    Some("base") => &req.base,
                    _ => continue,
                };
                return Err(ForgeError::BranchNotFound {
                    forge: FORGE,
                    repo: format!("{}/{}", self.owner, self.repo),
                    branch: branch.clone(),
                });
            }
        }
        let mut parts: Vec<String> = e
            .errors
            .iter()
            .map(|i| match (&i.message, &i.field, &i.code) {
                (Some(m), _, _) => m.clone(),
                (None, Some(f), Some(c)) => format!("{f} is {c}"),
                _ => String::new(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if parts.is_empty() {
            parts.push(r.message());
        }
        Err(ForgeError::Rejected {
            forge: FORGE,
            status: 422,
            message: format!("{what}: {}", parts.join("; ")),
        })
    }

    /// The open pull request for `head`, for the "already exists" error.
    async fn find_open(&self, head: &str) -> Option<String> {
        let path = format!(
            "{}/pulls?state=open&head={}:{}",
            self.repo_path(),
            self.owner,
            encode_query(head)
        );
        let r = self
            .call(Access::Read, Method::GET, &path, None)
            .await
            .ok()?;
        if r.status != 200 {
            return None;
        }
        let list: Vec<GhPull> = r.json(FORGE).ok()?;
        list.into_iter()
            .find(|p| p.head.name == head)
            .map(|p| format!("#{} {}", p.number, p.html_url))
    }

    async fn get_pr(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let what = format!("pull request #{number} of {}/{}", self.owner, self.repo);
        let r = self
            .call(
                Access::Read,
                Method::GET,
                &format!("{}/pulls/{number}", self.repo_path()),
                None,
            )
            .await?;
        if r.status == 200 {
            return r.json::<GhPull>(FORGE)?.into_pr();
        }
        Err(self.error(&r, &what))
    }
}

/// Percent-encodes a branch name for a query string.
pub(crate) fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Forge for GitHubForge {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn describe(&self) -> String {
        format!(
            "GitHub {}/{} at {}",
            self.owner, self.repo, self.api.base.origin
        )
    }

    fn git_remote(&self, access: Access) -> BoxFuture<'_, Result<GitRemote, ForgeError>> {
        Box::pin(async move {
            let token = self.token.token(access).await?;
            Ok(GitRemote::https(
                &self.git_url,
                "x-access-token",
                &token,
                &self.opts,
            ))
        })
    }

    fn open_pull_request<'a>(
        &'a self,
        req: &'a NewPullRequest,
    ) -> BoxFuture<'a, Result<PullRequest, ForgeError>> {
        Box::pin(self.open_pr(req))
    }

    fn get_pull_request(&self, number: u64) -> BoxFuture<'_, Result<PullRequest, ForgeError>> {
        Box::pin(self.get_pr(number))
    }
}
