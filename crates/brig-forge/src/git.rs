//! Running git against the upstream: the URL, the credential and the
//! hardening every git process brig starts for a forge gets.
//!
//! The credential travels as `http.<url>.extraHeader` through
//! `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`: never in argv
//! (visible in `ps` to every user), never in the URL (git prints URLs), and
//! only to the host git process, not the sandbox. The header is scoped to the
//! upstream URL and redirects are not followed, so it cannot be carried to
//! another host. git's output is redacted of the token in every encoding
//! before it goes into an error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use brig_redact::Redactor;
use tokio::process::Command;

use crate::token::Secret;
use crate::ForgeError;

/// git's ambient variables that could point a push at another repository,
/// another config or a credential prompt; removed from every git brig runs.
const SCRUBBED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_PROXY_COMMAND",
    "GIT_TRACE",
    "GIT_TRACE_CURL",
    "GIT_TRACE_PACKET",
    "GIT_CURL_VERBOSE",
    // These beat the command-scope config: GIT_SSL_NO_VERIFY in brig's
    // environment would turn certificate checks off, GIT_SSL_CAINFO would
    // hide the forge's ca_file.
    "GIT_SSL_NO_VERIFY",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "GIT_SSL_CERT",
    "GIT_SSL_KEY",
    "GIT_SSL_CERT_PASSWORD_PROTECTED",
    "GIT_SSL_VERSION",
    "GIT_SSL_CIPHER_LIST",
];

/// Default deadline of one git push or fetch against a forge.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// At most this much of git's (redacted) output goes into an error.
const MAX_DETAIL: usize = 2000;

/// A git remote for brig's host side: URL plus the environment that carries
/// credentials and hardening to git. `Debug` shows no secret.
#[derive(Clone)]
pub struct GitRemote {
    url: String,
    /// `GIT_ALLOW_PROTOCOL`: `file` for a local forge, `https` otherwise.
    protocols: &'static str,
    /// Command-scope config entries; the auth header value is secret.
    config: Vec<(String, ConfigValue)>,
    redactor: Arc<Redactor>,
    timeout: Duration,
}

#[derive(Clone)]
enum ConfigValue {
    Plain(String),
    Secret(Secret),
}

impl fmt::Debug for GitRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitRemote")
            .field("url", &self.url)
            .field("authenticated", &self.is_authenticated())
            .finish()
    }
}

impl GitRemote {
    /// A remote without credentials. `protocols` is git's allow-list
    /// (`file`, `https`, or `http` when the configuration allows it).
    pub fn new(url: String, protocols: &'static str) -> Self {
        let config = vec![
            // Nothing from a credential helper, and nothing stored in one.
            (
                "credential.helper".into(),
                ConfigValue::Plain(String::new()),
            ),
            // A redirect could carry the header to another host.
            (
                "http.followRedirects".into(),
                ConfigValue::Plain("false".into()),
            ),
            // Command scope wins over the host repository's own config.
            ("http.sslVerify".into(), ConfigValue::Plain("true".into())),
            (
                "core.hooksPath".into(),
                ConfigValue::Plain("/dev/null".into()),
            ),
        ];
        GitRemote {
            url,
            protocols,
            config,
            redactor: Arc::new(Redactor::patterns_only()),
            timeout: DEFAULT_GIT_TIMEOUT,
        }
    }

    /// Sends `Authorization: Basic base64(user:token)` to this URL only.
    pub fn with_basic_auth(mut self, user: &str, token: &Secret) -> Self {
        use base64::Engine as _;
        let b64 =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", token.expose()));
        let header = format!("Authorization: Basic {b64}");
        self.config.push((
            format!("http.{}.extraHeader", self.url),
            ConfigValue::Secret(Secret::new(header)),
        ));
        self.redactor = Arc::new(
            Redactor::builder()
                .secret("forge_token", token.expose())
                .secret("forge_token", b64)
                .build(),
        );
        self
    }

    /// git's CA bundle for this remote (a private or test CA).
    pub fn with_ca_file(mut self, ca: Option<&Path>) -> Self {
        if let Some(ca) = ca {
            self.config.push((
                "http.sslCAInfo".into(),
                ConfigValue::Plain(ca.display().to_string()),
            ));
        }
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A forge's remote: Basic auth for `user`, the forge's CA file and git
    /// deadline; `http://` only gets here when `allow_http` let it through.
    pub(crate) fn https(url: &str, user: &str, token: &Secret, opts: &crate::HttpOptions) -> Self {
        let protocols = if url.starts_with("http://") {
            "http"
        } else {
            "https"
        };
        GitRemote::new(url.to_string(), protocols)
            .with_basic_auth(user, token)
            .with_ca_file(opts.ca_file.as_deref())
            .with_timeout(opts.git_timeout)
    }

    /// The URL to give git (it carries no credential).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_authenticated(&self) -> bool {
        self.config
            .iter()
            .any(|(_, v)| matches!(v, ConfigValue::Secret(_)))
    }

    /// The deadline brig applies to one git operation against this remote.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Puts the credential and the hardening into a git command's
    /// environment. For brig's host-side git only: never a sandbox's.
    pub fn configure(&self, cmd: &mut std::process::Command) {
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", self.protocols)
            .env("GIT_CONFIG_COUNT", self.config.len().to_string());
        for (i, (k, v)) in self.config.iter().enumerate() {
            let v = match v {
                ConfigValue::Plain(s) => s.as_str(),
                ConfigValue::Secret(s) => s.expose(),
            };
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
                .env(format!("GIT_CONFIG_VALUE_{i}"), v);
        }
    }

    /// Masks the credential (in every encoding) and secret-shaped text.
    pub fn redact(&self, text: &str) -> String {
        self.redactor.redact_str(text).into_owned()
    }

    /// The exact push command: `git -C <repo> push --porcelain --no-verify
    /// <url> <sha>:refs/heads/<branch>` (the pre-push check is brig's
    /// scanner, not a hook in the host-side repository). No `--force`, no `+` in the refspec.
    pub fn push_command(
        &self,
        local_repo: &Path,
        sha: &str,
        branch: &str,
    ) -> Result<Command, ForgeError> {
        validate_sha(sha).map_err(ForgeError::Invalid)?;
        validate_branch(branch).map_err(|e| ForgeError::Invalid(format!("branch: {e}")))?;
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(local_repo)
            .args(["push", "--porcelain", "--no-verify"])
            .arg(&self.url)
            .arg(format!("{sha}:refs/heads/{branch}"));
        self.configure(cmd.as_std_mut());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Pushes `sha` to `refs/heads/<branch>` upstream. Already there: Ok.
    pub async fn push(&self, local_repo: &Path, sha: &str, branch: &str) -> Result<(), ForgeError> {
        let mut cmd = self.push_command(local_repo, sha, branch)?;
        let child = cmd
            .spawn()
            .map_err(|e| ForgeError::Io(format!("cannot start git: {e} (is git installed?)")))?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| ForgeError::Io(format!("waiting for git push: {e}")))?,
            Err(_) => {
                return Err(ForgeError::Timeout {
                    what: format!("git push to {}", self.url),
                    after: self.timeout,
                })
            }
        };
        let stdout = self.redact(&String::from_utf8_lossy(&out.stdout));
        let stderr = self.redact(&String::from_utf8_lossy(&out.stderr));
        // --porcelain: `<flag>\t<from>:<to>\t<summary>` per ref; `!` = rejected.
        for line in stdout.lines() {
            let mut f = line.splitn(3, '\t');
            if let (Some("!"), Some(_), Some(summary)) = (f.next(), f.next(), f.next()) {
                return Err(ForgeError::Push {
                    remote: self.url.clone(),
                    detail: cap(&format!(
                        "the upstream refused branch `{branch}`: {summary}{}",
                        tail(&stderr)
                            .map(|t| format!("; git said: {t}"))
                            .unwrap_or_default()
                    )),
                });
            }
        }
        if out.status.success() {
            tracing::info!(remote = %self.url, branch, sha, "pushed bot branch upstream");
            return Ok(());
        }
        Err(classify_failure(&self.url, &stderr, &out.status))
    }
}

/// The last lines of git's output, as one line.
fn tail(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let from = lines.len().saturating_sub(6);
    Some(lines[from..].join(" | "))
}

fn cap(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_string();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Turns git's (already redacted) stderr into the error that says what to do.
fn classify_failure(url: &str, stderr: &str, status: &std::process::ExitStatus) -> ForgeError {
    let detail = cap(&tail(stderr).unwrap_or_else(|| format!("git exited with {status}")));
    let low = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| low.contains(n));
    if has(&[
        "error: 401",
        "authentication failed",
        "could not read username",
        "terminal prompts disabled",
    ]) {
        ForgeError::Unauthorized {
            forge: "git",
            detail,
        }
    } else if has(&["error: 403"]) {
        ForgeError::Forbidden {
            forge: "git",
            detail,
        }
    } else if has(&[
        "ssl certificate problem",
        "certificate verify",
        "server certificate verification",
        "ssl_connect",
        "tls connect",
    ]) {
        ForgeError::Tls {
            host: url.to_string(),
            detail,
        }
    } else if has(&[
        "could not resolve host",
        "failed to connect",
        "connection refused",
        "connection timed out",
    ]) {
        ForgeError::Unavailable {
            forge: "git",
            detail,
        }
    } else if has(&[
        "error: 404",
        "repository not found",
        "does not appear to be a git repository",
        "not found",
    ]) {
        ForgeError::NotFound {
            forge: "git",
            what: format!("repository {url} ({detail})"),
        }
    } else {
        ForgeError::Push {
            remote: url.to_string(),
            detail,
        }
    }
}

/// A full object name: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn validate_sha(sha: &str) -> Result<(), String> {
    let ok = (sha.len() == 40 || sha.len() == 64)
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a full commit SHA (40 or 64 lowercase hex digits)",
            sha.escape_debug()
        ))
    }
}

/// A branch name git accepts under `refs/heads/` (git-check-ref-format),
/// minus what is legal but a trap: a leading `-` (an option to git),
/// `HEAD`, and a full `refs/...` name.
pub fn validate_branch(name: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "`{}` is not a valid branch name: {why}",
            name.escape_debug()
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.starts_with('-') {
        return bad("it starts with '-'");
    }
    if name == "HEAD" || name == "@" || name.starts_with("refs/") {
        return bad("give a plain branch name like brig/<session>/fix");
    }
    if let Some(c) = name.chars().find(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\' | '\x7f')
    }) {
        return bad(&format!("it contains {c:?}"));
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") {
        return bad("it contains '..', '@{' or '//'");
    }
    if name.starts_with('/') || name.ends_with('/') || name.ends_with('.') {
        return bad("it starts or ends with '/', or ends with '.'");
    }
    for comp in name.split('/') {
        if comp.starts_with('.') || comp.ends_with(".lock") {
            return bad("a component starts with '.' or ends with '.lock'");
        }
    }
    Ok(())
}

/// Runs a read-only git command against a bare repository (the local
/// forge), returning trimmed stdout, or `None` when git exits non-zero.
pub(crate) async fn git_query(git_dir: &Path, args: &[&str]) -> Result<Option<String>, ForgeError> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(git_dir).args(args);
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .map_err(|e| ForgeError::Io(format!("cannot start git: {e} (is git installed?)")))?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// The absolute path of a bare repository, canonicalised once.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf, ForgeError> {
    std::fs::canonicalize(path)
        .map_err(|e| ForgeError::Config(format!("local forge path `{}`: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names() {
        for ok in ["main", "brig/s-1/fix", "feature/a.b", "x_y-z"] {
            validate_branch(ok).unwrap();
        }
        for bad in [
            "",
            "-f",
            "a..b",
            "a b",
            "a:b",
            "a~1",
            "a^",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "/a",
            "a/",
            "a.",
            "a//b",
            ".a",
            "a/.b",
            "a.lock",
            "a/b.lock/c",
            "HEAD",
            "@",
            "a@{1}",
            "refs/heads/x",
            "a\nb",
        ] {
            assert!(validate_branch(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shas() {
        validate_sha(&"a".repeat(40)).unwrap();
        validate_sha(&"0".repeat(64)).unwrap();
        assert!(validate_sha("HEAD").is_err());
        assert!(validate_sha(&"A".repeat(40)).is_err());
        assert!(validate_sha(&format!("-{}", "a".repeat(39))).is_err());
    }

    #[test]
    fn basic_auth_stays_out_of_args_and_debug() {
        let r = GitRemote::new("https://git.example/o/r.git".into(), "https")
            .with_basic_auth("x-access-token", &Secret::new("tok_SECRET_1234"));
        let cmd = r
            .push_command(Path::new("/tmp/repo"), &"b".repeat(40), "brig/s/fix")
            .unwrap();
        let std = cmd.as_std();
        let args: Vec<String> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-C",
                "/tmp/repo",
                "push",
                "--porcelain",
                "--no-verify",
                "https://git.example/o/r.git",
                &format!("{}:refs/heads/brig/s/fix", "b".repeat(40)),
            ]
        );
        assert!(!args
            .iter()
            .any(|a| a.contains("SECRET") || a.contains("force") || a.starts_with('+')));
        let envs: Vec<(String, String)> = std
            .get_envs()
            .filter_map(|(k, v)| {
                Some((
                    k.to_string_lossy().into_owned(),
                    v?.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        let key = envs
            .iter()
            .find(|(_, v)| v == "http.https://git.example/o/r.git.extraHeader")
            .unwrap();
        let idx = key.0.trim_start_matches("GIT_CONFIG_KEY_");
        let val = &envs
            .iter()
            .find(|(k, _)| *k == format!("GIT_CONFIG_VALUE_{idx}"))
            .unwrap()
            .1;
        use base64::Engine as _;
        let expect =
            base64::engine::general_purpose::STANDARD.encode("x-access-token:tok_SECRET_1234");
        assert_eq!(val, &format!("Authorization: Basic {expect}"));
        assert!(envs.contains(&("GIT_TERMINAL_PROMPT".into(), "0".into())));
        assert!(!format!("{r:?}").contains("SECRET"));
        // The token is masked raw and inside the base64 header.
        let red = r.redact(&format!("fatal: tok_SECRET_1234 and {expect}"));
        assert!(!red.contains("SECRET") && !red.contains(&expect), "{red}");
    }
}
