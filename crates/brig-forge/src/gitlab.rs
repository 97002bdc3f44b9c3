//! GitLab (gitlab.com or self-managed) over REST v4.
//!
//! - open: `POST /projects/:id/merge_requests` with
//!   `{source_branch, target_branch, title, description}`
//! - read: `GET /projects/:id/merge_requests/:iid`
//!
//! `:id` is the project's path (`group/sub/project`, URL-encoded as
//! `group%2Fsub%2Fproject`) or its numeric id. The token goes in
//! `PRIVATE-TOKEN` (personal, project and group access tokens) or
//! `Authorization: Bearer` (OAuth tokens). git:
//! `https://gitlab.com/group/sub/project.git` with
//! `Authorization: Basic base64(oauth2:<token>)`.

use std::sync::Arc;

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::http::{check_git_url, ApiClient, ApiResponse};
use crate::{
    Access, BoxFuture, Forge, ForgeError, GitRemote, HttpOptions, NewPullRequest, PrState,
    PullRequest, TokenSource,
};

const FORGE: &str = "GitLab";
pub const DEFAULT_API: &str = "https://gitlab.com/api/v4";

/// Which header carries the GitLab token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GitLabAuth {
    /// `PRIVATE-TOKEN: <token>`: personal, project and group access tokens.
    #[default]
    PrivateToken,
    /// `Authorization: Bearer <token>`: OAuth2 tokens.
    Bearer,
}

pub struct GitLabForge {
    api: ApiClient,
    project: String,
    /// The project as it goes into a URL path (`/` encoded).
    project_id: String,
    git_url: Option<String>,
    auth: GitLabAuth,
    token: Arc<dyn TokenSource>,
    opts: HttpOptions,
}

#[derive(Deserialize)]
struct GlMr {
    iid: u64,
    web_url: String,
    title: String,
    #[serde(default)]
    description: Option<String>,
    state: String,
    source_branch: String,
    target_branch: String,
    #[serde(default)]
    sha: Option<String>,
}

impl GlMr {
    fn into_pr(self) -> Result<PullRequest, ForgeError> {
        let state = match self.state.as_str() {
            "opened" => PrState::Open,
            "closed" | "locked" => PrState::Closed,
            "merged" => PrState::Merged,
            s => {
                return Err(ForgeError::Protocol {
                    forge: FORGE,
                    detail: format!("merge request !{} has unknown state `{s}`", self.iid),
                })
            }
        };
        Ok(PullRequest {
            number: self.iid,
            url: self.web_url,
            title: self.title,
            body: self.description.unwrap_or_default(),
            head: self.source_branch,
            base: self.target_branch,
            state,
            head_sha: self.sha,
        })
    }
}

/// A project path (`group/sub/project`) or a numeric id.
fn check_project(p: &str) -> Result<(), ForgeError> {
    let ok = !p.is_empty()
        && p.len() <= 255
        && !p.starts_with('/')
        && !p.ends_with('/')
        && !p.contains("//")
        && p.split('/').all(|c| c != "." && c != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(ForgeError::Config(format!(
            "GitLab project `{}` is not a project path like group/sub/project (or a numeric id)",
            p.escape_debug()
        )))
    }
}

impl GitLabForge {
    /// `api`: `https://gitlab.com/api/v4` or `https://HOST/api/v4`. The git
    /// URL is derived from it unless the project is a numeric id (then
    /// [`GitLabForge::with_git_url`] is required).
    pub fn new(
        api: &str,
        project: &str,
        auth: GitLabAuth,
        token: Arc<dyn TokenSource>,
        opts: HttpOptions,
    ) -> Result<Self, ForgeError> {
        let project = project.strip_suffix(".git").unwrap_or(project);
        check_project(project)?;
        let api_client = ApiClient::new(FORGE, api, &opts)?;
        let numeric = project.bytes().all(|b| b.is_ascii_digit());
        let git_url = (!numeric).then(|| {
            let web = api_client.base.prefix.strip_suffix("/api/v4").unwrap_or("");
            format!("{}{web}/{project}.git", api_client.base.origin)
        });
        Ok(GitLabForge {
            api: api_client,
            project: project.to_string(),
            project_id: project.replace('/', "%2F"),
            git_url,
            auth,
            token,
            opts,
        })
    }

    pub fn with_git_url(mut self, url: &str) -> Result<Self, ForgeError> {
        self.git_url = Some(check_git_url(url, self.opts.allow_http)?);
        Ok(self)
    }

    pub fn git_url(&self) -> Option<&str> {
        self.git_url.as_deref()
    }

    async fn call(
        &self,
        access: Access,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiResponse, ForgeError> {
        let token = self.token.token(access).await?;
        let value = match self.auth {
            GitLabAuth::PrivateToken => token.expose().to_string(),
            GitLabAuth::Bearer => format!("Bearer {}", token.expose()),
        };
        let name = match self.auth {
            GitLabAuth::PrivateToken => "private-token",
            GitLabAuth::Bearer => "authorization",
        };
        let path = format!("/projects/{}{path}", self.project_id);
        self.api.send(method, &path, &[(name, &value)], body).await
    }

    fn error(&self, r: &ApiResponse, what: &str) -> ForgeError {
        let message = r.message();
        match r.status {
            401 => ForgeError::Unauthorized {
                forge: FORGE,
                detail: format!("{what}: HTTP 401 {message}"),
            },
            429 => ForgeError::RateLimited {
                forge: FORGE,
                retry_after: r.retry_after("ratelimit-reset"),
            },
            403 => ForgeError::Forbidden {
                forge: FORGE,
                detail: format!("{what}: HTTP 403 {message}"),
            },
            404 => ForgeError::NotFound {
                forge: FORGE,
                what: format!(
                    "{what} (HTTP 404 {message}: project {} does not exist or the token cannot see it)",
                    self.project
                ),
            },
            _ => r.unexpected(FORGE, what),
        }
    }

    async fn open_mr(&self, req: &NewPullRequest) -> Result<PullRequest, ForgeError> {
        req.validate()?;
        let what = format!(
            "opening a merge request {} -> {} in {}",
            req.head, req.base, self.project
        );
        let body = json!({
            "source_branch": req.head,
            "target_branch": req.base,
            "title": req.title,
            "description": req.body,
        });
        let r = self
            .call(Access::Write, Method::POST, "/merge_requests", Some(&body))
            .await?;
        match r.status {
            201 => r.json::<GlMr>(FORGE)?.into_pr(),
            409 => {
                let message = r.message();
                // "... already exists for this source branch: !5"
                let existing = message
                    .rsplit_once(": !")
                    .map(|(_, n)| format!("!{}", n.trim()));
                Err(ForgeError::AlreadyExists {
                    forge: FORGE,
                    head: req.head.clone(),
                    existing,
                })
            }
            400 | 422 => {
                // `{"message":{"source_branch":["does not exist"]}}`
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let missing = |field: &str| {
                    v["message"][field].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|m| m.as_str().is_some_and(|s| s.contains("does not exist")))
                    })
                };
                for (field, branch) in [("source_branch", &req.head), ("target_branch", &req.base)]
                {
                    if missing(field) {
                        return Err(ForgeError::BranchNotFound {
                            forge: FORGE,
                            repo: self.project.clone(),
                            branch: branch.clone(),
                        });
                    }
                }
                Err(ForgeError::Rejected {
                    forge: FORGE,
                    status: r.status,
                    message: format!("{what}: {}", r.message()),
                })
            }
            _ => Err(self.error(&r, &what)),
        }
    }

    async fn get_mr(&self, iid: u64) -> Result<PullRequest, ForgeError> {
        let what = format!("merge request !{iid} of {}", self.project);
        let r = self
            .call(
                Access::Read,
                Method::GET,
                &format!("/merge_requests/{iid}"),
                None,
            )
            .await?;
        if r.status == 200 {
            return r.json::<GlMr>(FORGE)?.into_pr();
        }
        Err(self.error(&r, &what))
    }
}

impl Forge for GitLabForge {
    fn kind(&self) -> &'static str {
        "gitlab"
    }

    fn describe(&self) -> String {
        format!(
            "GitLab project {} at {}",
            self.project, self.api.base.origin
        )
    }

    fn git_remote(&self, access: Access) -> BoxFuture<'_, Result<GitRemote, ForgeError>> {
        Box::pin(async move {
            let url = self.git_url.clone().ok_or_else(|| {
                ForgeError::Config(format!(
                    "GitLab project `{}` is a numeric id, so brig cannot derive its git URL: set git_url",
                    self.project
                ))
            })?;
            let token = self.token.token(access).await?;
            Ok(GitRemote::https(&url, "oauth2", &token, &self.opts))
        })
    }

    fn open_pull_request<'a>(
        &'a self,
        req: &'a NewPullRequest,
    ) -> BoxFuture<'a, Result<PullRequest, ForgeError>> {
        Box::pin(self.open_mr(req))
    }

    fn get_pull_request(&self, number: u64) -> BoxFuture<'_, Result<PullRequest, ForgeError>> {
        Box::pin(self.get_mr(number))
    }
}
