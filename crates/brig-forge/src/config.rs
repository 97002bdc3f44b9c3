//! The `[forge]` table of brig.toml (docs/FORGES.md has the reference).
//!
//! ```toml
//! [forge]
//! kind = "github"            # or "gitlab", "local"
//! owner = "acme"
//! repo = "widgets"
//! token_env = "BRIG_GITHUB_TOKEN"   # or token_file = "/etc/brig/github.token" (mode 0600)
//! ```
//!
//! Tokens are never written inline: a variable of brig's own environment or
//! a file readable by its owner only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::gitlab::GitLabAuth;
use crate::{
    EnvToken, FileToken, Forge, ForgeError, GitHubForge, GitLabForge, HttpOptions, LocalForge,
    TokenSource,
};

/// Where a session's upstream lives and where its pull requests go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ForgeConfig {
    /// The embedded default: a local bare repository, PR records kept by brig.
    Local(LocalConfig),
    /// GitHub.com or GitHub Enterprise Server.
    Github(GithubConfig),
    /// GitLab.com or self-managed GitLab.
    Gitlab(GitlabConfig),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The bare repository (`git init --bare`).
    pub path: PathBuf,
    /// Create the bare repository when `path` does not exist.
    #[serde(default)]
    pub create: bool,
    /// Its first branch when brig creates it.
    #[serde(default = "d_branch")]
    pub initial_branch: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// REST API root: `https://api.github.com`, or `https://HOST/api/v3`.
    #[serde(default = "d_github_api")]
    pub api: String,
    pub owner: String,
    pub repo: String,
    /// Default: `https://github.com/OWNER/REPO.git` (Enterprise: the API's host).
    #[serde(default)]
    pub git_url: Option<String>,
    /// Environment variable of brig's process holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File (mode 0600) holding the token; re-read at each use.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates trusted on top of the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` URLs (a loopback test server only).
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "d_git_timeout")]
    pub git_timeout_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabConfig {
    /// REST API root: `https://gitlab.com/api/v4`, or `https://HOST/api/v4`.
    #[serde(default = "d_gitlab_api")]
    pub api: String,
    /// `group/sub/project`, or a numeric project id (then set `git_url`).
    pub project: String,
    /// Default: the API's host plus `/PROJECT.git`.
    #[serde(default)]
    pub git_url: Option<String>,
    /// `private-token` (default) or `bearer` (OAuth2 tokens).
    #[serde(default)]
    pub auth: GitLabAuth,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "d_git_timeout")]
    pub git_timeout_secs: u64,
}

fn d_branch() -> String {
    "main".into()
}
fn d_github_api() -> String {
    crate::github::DEFAULT_API.into()
}
fn d_gitlab_api() -> String {
    crate::gitlab::DEFAULT_API.into()
}
fn d_timeout() -> u64 {
    30
}
fn d_git_timeout() -> u64 {
    crate::git::DEFAULT_GIT_TIMEOUT.as_secs()
}

impl Default for ForgeConfig {
    fn default() -> Self {
        ForgeConfig::Local(LocalConfig {
            path: PathBuf::from("upstream.git"),
            create: true,
            initial_branch: d_branch(),
        })
    }
}

/// Exactly one of `token_env` and `token_file`.
fn token_source(
    kind: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Arc<dyn TokenSource>, ForgeError> {
    match (env, file) {
        (Some(var), None) => Ok(Arc::new(EnvToken::from_env(var)?)),
        (None, Some(path)) => Ok(Arc::new(FileToken::open(path)?)),
        (None, None) => Err(ForgeError::Credential(format!(
            "forge kind `{kind}` needs a token: set `token_env` (a variable of brig's environment) or `token_file` (a 0600 file)"
        ))),
        (Some(_), Some(_)) => Err(ForgeError::Config(
            "set one of `token_env` and `token_file`, not both".into(),
        )),
    }
}

fn http_options(
    ca_file: &Option<PathBuf>,
    allow_http: bool,
    timeout_secs: u64,
    git_timeout_secs: u64,
) -> Result<HttpOptions, ForgeError> {
    if timeout_secs == 0 || git_timeout_secs == 0 {
        return Err(ForgeError::Config(
            "`timeout_secs` and `git_timeout_secs` must be at least 1".into(),
        ));
    }
    Ok(HttpOptions {
        ca_file: ca_file.clone(),
        allow_http,
        timeout: Duration::from_secs(timeout_secs),
        git_timeout: Duration::from_secs(git_timeout_secs),
    })
}

impl ForgeConfig {
    /// The forge, its token read from `token_env`/`token_file` now (a
    /// missing or unsafe token fails here, at startup).
    pub fn build(&self) -> Result<Arc<dyn Forge>, ForgeError> {
        let token = match self {
            ForgeConfig::Local(_) => None,
            ForgeConfig::Github(c) => Some(token_source("github", &c.token_env, &c.token_file)?),
            ForgeConfig::Gitlab(c) => Some(token_source("gitlab", &c.token_env, &c.token_file)?),
        };
        self.build_inner(token)
    }

    /// The forge with a token source of the caller's (a just-in-time
    /// minter); `token_env`/`token_file` are then ignored.
    pub fn build_with_token(
        &self,
        token: Arc<dyn TokenSource>,
    ) -> Result<Arc<dyn Forge>, ForgeError> {
        self.build_inner(Some(token))
    }

    fn build_inner(
        &self,
        token: Option<Arc<dyn TokenSource>>,
    ) -> Result<Arc<dyn Forge>, ForgeError> {
        let need = || ForgeError::Credential("this forge needs a token".into());
        Ok(match self {
            ForgeConfig::Local(c) => {
                let forge = if c.create {
                    LocalForge::open_or_init(&c.path, &c.initial_branch)?
                } else {
                    LocalForge::open(&c.path)?
                };
                Arc::new(forge)
            }
            ForgeConfig::Github(c) => {
                let opts =
                    http_options(&c.ca_file, c.allow_http, c.timeout_secs, c.git_timeout_secs)?;
                let mut f =
                    GitHubForge::new(&c.api, &c.owner, &c.repo, token.ok_or_else(need)?, opts)?;
                if let Some(u) = &c.git_url {
                    f = f.with_git_url(u)?;
                }
                Arc::new(f)
            }
            ForgeConfig::Gitlab(c) => {
                let opts =
                    http_options(&c.ca_file, c.allow_http, c.timeout_secs, c.git_timeout_secs)?;
                let mut f =
                    GitLabForge::new(&c.api, &c.project, c.auth, token.ok_or_else(need)?, opts)?;
                if let Some(u) = &c.git_url {
                    f = f.with_git_url(u)?;
                }
                Arc::new(f)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ForgeConfig, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn shapes_and_defaults() {
        let c = parse("kind = \"github\"\nowner = \"acme\"\nrepo = \"widgets\"\ntoken_env = \"T\"")
            .unwrap();
        let ForgeConfig::Github(g) = c else { panic!() };
        assert_eq!(g.api, "https://api.github.com");
        assert_eq!((g.timeout_secs, g.git_timeout_secs), (30, 600));
        let c =
            parse("kind = \"gitlab\"\nproject = \"g/s/p\"\ntoken_file = \"/t\"\nauth = \"bearer\"")
                .unwrap();
        let ForgeConfig::Gitlab(g) = c else { panic!() };
        assert_eq!(
            (g.api.as_str(), g.auth),
            ("https://gitlab.com/api/v4", GitLabAuth::Bearer)
        );
        let c = parse("kind = \"local\"\npath = \"/srv/up.git\"").unwrap();
        assert!(matches!(
            c,
            ForgeConfig::Local(LocalConfig { create: false, .. })
        ));
    }

    #[test]
    fn unknown_keys_and_inline_tokens_refused() {
        let e =
            parse("kind = \"github\"\nowner = \"a\"\nrepo = \"b\"\ntoken = \"ghp_x\"").unwrap_err();
        assert!(e.contains("unknown field `token`"), "{e}");
        let e = parse("kind = \"local\"\npath = \"/x\"\nowner = \"a\"").unwrap_err();
        assert!(e.contains("unknown field `owner`"), "{e}");
        assert!(parse("kind = \"bitbucket\"").is_err());
    }

    #[test]
    fn token_rules() {
        let c = parse("kind = \"github\"\nowner = \"a\"\nrepo = \"b\"").unwrap();
        let e = c.build().err().unwrap();
        assert!(matches!(e, ForgeError::Credential(_)));
        assert!(e.to_string().contains("token_env"), "{e}");
        let c = parse("kind = \"github\"\nowner = \"a\"\nrepo = \"b\"\ntoken_env = \"A\"\ntoken_file = \"/b\"").unwrap();
        assert!(c.build().err().unwrap().to_string().contains("not both"));
        let c = parse(
            "kind = \"gitlab\"\nproject = \"g/p\"\ntoken_env = \"BRIG_FORGE_TEST_UNSET_TOKEN\"",
        )
        .unwrap();
        let e = c.build().err().unwrap().to_string();
        assert!(
            e.contains("BRIG_FORGE_TEST_UNSET_TOKEN") && e.contains("not set"),
            "{e}"
        );
    }

    #[test]
    fn builds_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.git");
        let c = ForgeConfig::Local(LocalConfig {
            path: path.clone(),
            create: true,
            initial_branch: "main".into(),
        });
        assert_eq!(c.build().unwrap().kind(), "local");
        assert!(path.join("HEAD").is_file());
        let tok: Arc<dyn TokenSource> = Arc::new(crate::StaticToken(crate::Secret::new("t")));
        let c = parse(
            "kind = \"github\"\napi = \"https://ghe.example/api/v3\"\nowner = \"a\"\nrepo = \"b\"",
        )
        .unwrap();
        let f = c.build_with_token(tok.clone()).unwrap();
        assert_eq!(f.describe(), "GitHub a/b at https://ghe.example");
        let c = parse("kind = \"gitlab\"\nproject = \"g/p\"\ntimeout_secs = 0").unwrap();
        assert!(c
            .build_with_token(tok.clone())
            .err()
            .unwrap()
            .to_string()
            .contains("at least 1"));
        let c = parse("kind = \"gitlab\"\napi = \"http://127.0.0.1:1/api/v4\"\nproject = \"g/p\"")
            .unwrap();
        assert!(c
            .build_with_token(tok)
            .err()
            .unwrap()
            .to_string()
            .contains("allow_http"));
    }
}
