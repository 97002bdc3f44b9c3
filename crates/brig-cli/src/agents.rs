//! `brig run --agent NAME "what to do" [-- AGENT ARGS]`: a real coding agent, unmodified,
//! run non-interactively inside a session (issue 9; docs/AGENTS.md).
//!
//! A preset is what it takes to make one agent fit inside brig: its one-shot
//! command line, a writable HOME and config dir on the session's `/tmp`
//! (tmpfs), its own telemetry/auto-update switched off through its own
//! settings, its own permission prompts and sandbox off (brig is the
//! sandbox; the profile decides what it may do), and its model traffic at
//! brig's model gateway (`http://model.brig`: the session's environment
//! already carries the base URLs and a placeholder key, and the proxy and
//! CA variables). The agent comes from the image: it is never downloaded at
//! run time.
//!
//! The run: create the session, check the agent is in the image, set up its
//! HOME, run it (buffered, with a progress indicator), push its commits for
//! it if it never pushes by itself (`push_after`), then the diff against the
//! pinned commit, the test gate of what was pushed, the summary, destroy.
//! The exit code is the agent's, or git's when that push failed.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use brig_core::exec::{ExecRequest, ExecResult};
use brig_core::units::{format_duration, parse_duration};
use brig_core::{Error, Result};
use hyper::Method;
use serde_json::{json, Value};

use crate::app::{self, EXIT_BRIG_FAILED};
use crate::cli::{ExecOpts, RunArgs};
use crate::client::Client;
use crate::output::Out;
use crate::term::{short_digest, Spinner};

/// The agent's HOME (and config dirs under it): on the session's tmpfs,
/// outside /workspace so it is never part of the diff.
pub const AGENT_HOME: &str = "/tmp/agent-home";
/// How long an agent may run unless `--timeout` says otherwise.
const DEFAULT_TIMEOUT: &str = "30m";

/// One agent's preset.
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    /// The executable, looked up on the image's PATH.
    pub binary: &'static str,
    /// The version the preset was written and tested against.
    pub tested_version: &'static str,
    /// How to put it in an image (the preset never downloads it).
    pub install: &'static str,
    /// The image recipe shipped for it (`recipes/NAME/`, built into brig).
    pub recipe: crate::recipes::Files,
    /// The digest of that recipe: the preset runs the image built from
    /// exactly it (`recipe/NAME@DIGEST`) unless `--image` says otherwise.
    pub recipe_digest: &'static str,
    /// Environment on top of the session's (gateway, proxy, CA).
    pub env: &'static [(&'static str, &'static str)],
    /// Config files written under [`AGENT_HOME`] before the run:
    /// (path relative to it, contents).
    pub files: &'static [(&'static str, &'static str)],
    /// What it writes into the repository for itself (caches), kept out of
    /// the diff and of commits by `.git/info/exclude` (local, never pushed).
    pub exclude: &'static [&'static str],
    /// The agent commits but never pushes by itself: after a successful run
    /// that committed beyond the pinned commit, brig pushes HEAD from the
    /// session to its bot branch `<bot prefix><name>`, through the git
    /// gateway like any push the agent would make (policy, scan, journal).
    pub push_after: bool,
    /// The native program an npm launcher only locates and starts: run
    /// it directly (the same program, without a Node.js start first).
    pub native: Option<NativeBinary>,
    argv: fn(&str, &str, Option<&str>) -> Vec<String>,
    /// The task text is the last argument (extra arguments go before it).
    task_last: bool,
    model_env: &'static [&'static str],
}

/// Where an npm package's launcher finds its platform binary, and what
/// the launcher would set for it. Paths are relative to the `node_modules`
/// directory whose `.bin/` holds the launcher; `{arch}` is `uname -m`
/// (`x86_64` or `aarch64`), `{npm_arch}` Node's name for it (`x64`, `arm64`).
#[derive(Debug)]
pub struct NativeBinary {
    pub path: &'static str,
    /// The launcher's package, under `node_modules`.
    pub package: &'static str,
    /// Set to the package's directory, as the launcher does.
    pub package_root_env: &'static str,
    /// Set as the launcher sets them.
    pub env: &'static [(&'static str, &'static str)],
}

/// `uname -m` and Node's name for the same architecture: the platforms an
/// npm package's native binary is looked up for.
const NPM_ARCHES: [(&str, &str); 2] = [("x86_64", "x64"), ("aarch64", "arm64")];

impl NativeBinary {
    /// A shell fragment that, with `$b` the launcher on PATH, moves `$b` to
    /// the native binary and sets `$r` to the package's directory when both
    /// are there; otherwise leaves `$b` alone and `$r` empty.
    fn script(&self, launcher: &str) -> String {
        let arms: String = NPM_ARCHES
            .iter()
            .map(|(arch, npm)| {
                let path = self.path.replace("{arch}", arch).replace("{npm_arch}", npm);
                format!("{arch}) n=$m/{};; ", shell_quote(&path))
            })
            .collect();
        format!(
            "r=; m=${{b%/.bin/{launcher}}}; case $(uname -m 2>/dev/null) in {arms}*) n=;; esac; \
             if [ \"$m\" != \"$b\" ] && [ -n \"$n\" ] && [ -x \"$n\" ] && [ -d \"$m\"/{pkg} ]; \
             then b=$n; r=$m/{pkg}; fi",
            pkg = shell_quote(self.package),
        )
    }

    /// What the launcher would set, for the package found at `root`.
    fn env(&self, root: &str) -> Vec<(String, String)> {
        std::iter::once((self.package_root_env, root))
            .chain(self.env.iter().copied())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl Preset {
    /// The image the preset runs in: built from its pinned recipe.
    pub fn image(&self) -> String {
        brig_server::image_build::image_name(self.name, self.recipe_digest)
    }

    /// Where its recipe installs it in the image.
    pub fn prefix(&self) -> String {
        format!("/opt/brig/{}/", self.name)
    }
    /// The command line of a one-shot run of `task` (`bin` is the resolved
    /// executable), with the user's `extra` arguments for the agent.
    pub fn argv(
        &self,
        bin: &str,
        task: &str,
        model: Option<&str>,
        extra: &[String],
    ) -> Vec<String> {
        let mut v = (self.argv)(bin, task, model);
        let at = if self.task_last { v.len() - 1 } else { v.len() };
        v.splice(at..at, extra.iter().cloned());
        v
    }

    /// The full environment of the run.
    pub fn env(&self, model: Option<&str>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(m) = model {
            v.extend(
                self.model_env
                    .iter()
                    .map(|k| (k.to_string(), m.to_string())),
            );
        }
        v
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

const CLAUDE_CODE: Preset = Preset {
    name: "claude-code",
    binary: "claude",
    tested_version: "2.1.197",
    install: "build the image its recipe pins with `brig image build --agent claude-code`",
    recipe: crate::recipes::CLAUDE_CODE,
    recipe_digest: "sha256:da5f2c0cac86036a4c0976127a8b1d0407a2db0f60ce8744a9c9f446edd084eb",
    env: &[
        ("HOME", AGENT_HOME),
        ("CLAUDE_CONFIG_DIR", "/tmp/agent-home/.claude"),
        ("XDG_CONFIG_HOME", "/tmp/agent-home/.config"),
        ("XDG_CACHE_HOME", "/tmp/agent-home/.cache"),
        // Non-essential traffic off through its own settings.
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("DISABLE_BUG_COMMAND", "1"),
        // brig is the sandbox: its own permission bypass is allowed to
        // run as the sandbox's (mapped) root.
        ("IS_SANDBOX", "1"),
        ("CI", "1"),
    ],
    files: &[(
        ".claude/settings.json",
        r#"{"permissions": {"defaultMode": "bypassPermissions"}, "autoUpdates": false, "includeCoAuthoredBy": false}
"#,
    )],
    exclude: &[],
    push_after: false,
    // bin/claude.exe is the native binary itself (its postinstall puts it there).
    native: None,
    argv: |bin, task, model| {
        let mut v = s(&[
            bin,
            "-p",
            task,
            "--permission-mode",
            "bypassPermissions",
            "--output-format",
            "text",
            "--no-session-persistence",
        ]);
        if let Some(m) = model {
            v.extend(s(&["--model", m]));
        }
        v
    },
    task_last: false,
    model_env: &[
        "ANTHROPIC_MODEL",
        "ANTHROPIC_SMALL_FAST_MODEL",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
    ],
};

const CODEX: Preset = Preset {
    name: "codex",
    binary: "codex",
    tested_version: "0.171.0",
    install: "build the image its recipe pins with `brig image build --agent codex`",
    recipe: crate::recipes::CODEX,
    recipe_digest: "sha256:b0a3259b58d910d56a23a39b7f1665d2633c25efd5fbe7bec214ed083152e7ba",
    env: &[
        ("HOME", AGENT_HOME),
        ("CODEX_HOME", "/tmp/agent-home/.codex"),
        // Codex makes its helper binaries (apply_patch) in CODEX_HOME only
        // when that is not under the temp dir.
        ("TMPDIR", "/tmp/agent-home/tmp"),
        ("XDG_CONFIG_HOME", "/tmp/agent-home/.config"),
        ("XDG_CACHE_HOME", "/tmp/agent-home/.cache"),
        ("CI", "1"),
    ],
    // brig's gateway as the model provider (Responses API, the session's
    // placeholder key), no update check, no analytics or OTel export.
    files: &[(
        ".codex/config.toml",
        r#"model_provider = "brig"
check_for_update_on_startup = false
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.brig]
name = "brig model gateway"
base_url = "http://model.brig/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"

# Remote plugins, apps and in-app updates reach github.com and chatgpt.com.
[features]
plugins = false
remote_plugin = false
plugin_sharing = false
apps = false
in_app_updates = false
"#,
    )],
    exclude: &[],
    push_after: false,
    // `codex` on PATH is a Node.js script that finds this binary and runs
    // it with two variables set; run it directly, as Codex's standalone
    // install does, without starting Node.js first.
    native: Some(NativeBinary {
        path: "@openai/codex-linux-{npm_arch}/vendor/{arch}-unknown-linux-musl/bin/codex",
        package: "@openai/codex",
        package_root_env: "CODEX_MANAGED_PACKAGE_ROOT",
        env: &[("CODEX_MANAGED_BY_NPM", "1")],
    }),
    argv: |bin, task, model| {
        let mut v = s(&[
            bin,
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",
            "--color",
            "never",
        ]);
        if let Some(m) = model {
            v.extend(s(&["--model", m]));
        }
        v.push(task.to_string());
        v
    },
    task_last: true,
    model_env: &[],
};

const AIDER: Preset = Preset {
    name: "aider",
    binary: "aider",
    tested_version: "0.86.2",
    install: "build the image its recipe pins with `brig image build --agent aider`",
    recipe: crate::recipes::AIDER,
    recipe_digest: "sha256:a957c6136ae3e6d1241b10b126ea0505f5fa9cfa3d1c615c5a1c817e72259ad4",
    env: &[
        ("HOME", AGENT_HOME),
        ("XDG_CONFIG_HOME", "/tmp/agent-home/.config"),
        ("XDG_CACHE_HOME", "/tmp/agent-home/.cache"),
        ("AIDER_CHECK_UPDATE", "false"),
        ("AIDER_ANALYTICS_DISABLE", "true"),
        ("AIDER_SHOW_RELEASE_NOTES", "false"),
        ("AIDER_YES_ALWAYS", "true"),
        // litellm's model cost map from its package, not from GitHub.
        ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        ("CI", "1"),
    ],
    // A fresh (non-empty) model-info cache, so aider does not fetch
    // litellm's model list from raw.githubusercontent.com at start.
    files: &[(
        ".aider/caches/model_prices_and_context_window.json",
        "{\"brig-model-gateway\": {}}\n",
    )],
    exclude: &[".aider*"],
    // Under --yes-always it runs no shell command the model suggests (that
    // needs an explicit yes), so it never runs `git push`.
    push_after: true,
    native: None,
    argv: |bin, task, model| {
        let m = format!("openai/{}", model.unwrap_or("gpt-4o-mini"));
        s(&[
            bin,
            "--message",
            task,
            "--yes-always",
            "--no-check-update",
            "--analytics-disable",
            "--no-show-release-notes",
            "--no-show-model-warnings",
            "--no-pretty",
            "--no-fancy-input",
            "--no-detect-urls",
            "--no-gitignore",
            "--no-restore-chat-history",
            "--input-history-file",
            "/tmp/agent-home/.aider.input.history",
            "--chat-history-file",
            "/tmp/agent-home/.aider.chat.history.md",
            "--openai-api-base",
            "http://model.brig/v1",
            "--model",
            &m,
        ])
    },
    task_last: false,
    model_env: &[],
};

/// Every preset, in the order docs and errors list them.
pub const PRESETS: [&Preset; 3] = [&CLAUDE_CODE, &CODEX, &AIDER];

pub fn preset(name: &str) -> Result<&'static Preset> {
    PRESETS
        .iter()
        .copied()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            Error::invalid(format!("no agent preset {name:?}")).hint(format!(
                "the presets are: {}",
                PRESETS.map(|p| p.name).join(", ")
            ))
        })
}

/// One buffered exec (no stdin); the raw answer too.
async fn exec(c: &Client, id: &str, req: &ExecRequest) -> Result<(ExecResult, Value)> {
    c.call::<ExecResult, _>(Method::POST, &format!("/v1/sessions/{id}/exec"), Some(req))
        .await
}

fn sh_req(script: &str, stdin: Option<String>) -> ExecRequest {
    ExecRequest {
        argv: s(&["/bin/sh", "-c", script]),
        env: vec![],
        cwd: None,
        tty: None,
        timeout_ms: Some(60_000),
        stdin,
    }
}

fn shell_quote(a: &str) -> String {
    format!("'{}'", a.replace('\'', r"'\''"))
}

/// The agent's executable in the image, its version line, and the
/// variables its npm launcher would have set when that is the native
/// binary the launcher runs; or a clear error naming how to install it.
async fn find_agent(
    c: &Client,
    id: &str,
    p: &Preset,
    env: Vec<(String, String)>,
    image: &str,
) -> Result<(String, String, Vec<(String, String)>)> {
    let native = p
        .native
        .as_ref()
        .map(|n| n.script(p.binary))
        .unwrap_or_else(|| "r=".into());
    let script = format!(
        "b=$(command -v {bin}) || exit 127; {native}; echo \"$b\"; echo \"$r\"; \"$b\" --version 2>/dev/null | head -n 1",
        bin = shell_quote(p.binary)
    );
    let mut req = sh_req(&script, None);
    req.env = env;
    let (r, _) = exec(c, id, &req).await?;
    let mut lines = r.stdout.lines();
    match (r.status.code, lines.next(), lines.next()) {
        (Some(0), Some(bin), Some(root)) if !bin.trim().is_empty() => {
            // `$r` is set only when the native binary was chosen.
            let launcher_env = match (&p.native, root.trim()) {
                (Some(n), root) if !root.is_empty() => n.env(root),
                _ => vec![],
            };
            Ok((
                bin.trim().to_string(),
                lines.next().unwrap_or("").trim().to_string(),
                launcher_env,
            ))
        }
        _ => Err(Error::invalid(format!(
            "the agent {} ({}) is not in the image {image}",
            p.name, p.binary
        ))
        .hint(format!(
            "brig never downloads an agent at run time: {}; or pass --image with one that has it",
            p.install
        ))),
    }
}

/// The preset's pinned image must be built before anything is created.
async fn ensure_image(c: &Client, p: &Preset) -> Result<()> {
    let (list, _) = c.get::<Vec<brig_sandbox::Image>>("/v1/images").await?;
    let name = p.image();
    if list.iter().any(|i| i.name == name) {
        return Ok(());
    }
    Err(Error::not_found(format!(
        "the {} image is not built: {name} (the image of the recipe this preset pins)",
        p.name
    ))
    .hint(format!(
        "build it with `brig image build --agent {}` (its installs run in a sandbox that reaches only the package registries); or pass --image with one that has {}",
        p.name, p.binary
    )))
}

/// The agent's run, attached: its stdout and stderr written as they come,
/// whole lines only while the progress line is up (`spinner`: it redraws
/// the terminal's last line), the rest at the end. Its stdin is closed.
/// The result has the status; its output is what was shown, not kept.
async fn exec_live(
    c: &Client,
    id: &str,
    req: &ExecRequest,
    show_stderr: bool,
    spinner: bool,
) -> Result<(ExecResult, Value)> {
    use brig_core::wire::{self, Decoder, Frame, Kind};
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let corrupt =
        |e: wire::WireError| Error::internal(format!("corrupt exec stream from brig: {e}"));
    let t0 = Instant::now();
    let stream = c.attach(id, req).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let eof = Frame::new(Kind::StdinEof, 1, vec![]).encode();
    wr.write_all(&eof)
        .await
        .map_err(|e| Error::internal(format!("closing the agent's stdin: {e}")))?;
    let _ = wr.flush().await;
    // (pending bytes, bytes seen) for stdout and stderr.
    let mut pending: [(Vec<u8>, u64); 2] = [(Vec::new(), 0), (Vec::new(), 0)];
    let emit = |which: usize, bytes: &[u8]| {
        if which == 1 && !show_stderr {
            return;
        }
        // Over the progress line: erase it first; it is redrawn below.
        let clear: &[u8] = if spinner { b"\r\x1b[2K" } else { b"" };
        let _ = if which == 0 {
            let mut o = std::io::stdout().lock();
            o.write_all(clear)
                .and_then(|_| o.write_all(bytes))
                .and_then(|_| o.flush())
        } else {
            let mut e = std::io::stderr().lock();
            e.write_all(clear)
                .and_then(|_| e.write_all(bytes))
                .and_then(|_| e.flush())
        };
    };
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let status = 'read: loop {
        while let Some(f) = dec.next_frame().map_err(corrupt)? {
            let which = match f.kind {
                Kind::Stdout => 0,
                Kind::Stderr => 1,
                Kind::Exited => {
                    break 'read f.parse::<brig_core::exec::ExitStatus>().map_err(corrupt)?
                }
                Kind::SpawnFailed => {
                    let w: wire::Failed = f.parse().map_err(corrupt)?;
                    return Err(Error::runtime(format!(
                        "the agent could not start ({}): {}",
                        w.layer, w.error
                    )));
                }
                _ => continue,
            };
            let (p, n) = &mut pending[which];
            *n += f.payload.len() as u64;
            p.extend_from_slice(&f.payload);
            let upto = if spinner {
                p.iter().rposition(|&b| b == b'\n').map(|i| i + 1)
            } else {
                Some(p.len())
            };
            if let Some(k) = upto {
                let line: Vec<u8> = p.drain(..k).collect();
                emit(which, &line);
            }
        }
        let n = rd.read(&mut buf).await.map_err(|e| {
            Error::new(
                brig_core::ErrorKind::Unavailable,
                format!("lost the connection to brig while the agent ran: {e}"),
            )
        })?;
        if n == 0 {
            return Err(Error::runtime(
                "brig closed the agent's stream before it finished",
            )
            .hint("the session may have been destroyed (idle timeout, timebox, kill); see `brig session show ID`"));
        }
        dec.feed(&buf[..n]);
    };
    for (which, (p, _)) in pending.iter().enumerate() {
        if !p.is_empty() {
            emit(which, p);
        }
    }
    let r = ExecResult {
        exec_id: String::new(),
        status,
        stdout: String::new(),
        stderr: String::new(),
        stdout_bytes: pending[0].1,
        stderr_bytes: pending[1].1,
        truncated: false,
        duration_ms: t0.elapsed().as_millis() as u64,
    };
    let raw = serde_json::to_value(&r).unwrap_or_default();
    Ok((r, raw))
}

/// Write the preset's config files under its HOME.
async fn set_up_home(c: &Client, id: &str, p: &Preset) -> Result<()> {
    let mut script = format!(
        "set -e; umask 077; mkdir -p {AGENT_HOME}/.config {AGENT_HOME}/.cache {AGENT_HOME}/tmp"
    );
    for (i, (path, _)) in p.files.iter().enumerate() {
        let full = format!("{AGENT_HOME}/{path}");
        script.push_str(&format!(
            "; mkdir -p \"$(dirname {q})\"; sed -n '/^--brig-file-{i}--$/,/^--brig-end-{i}--$/p' /tmp/.brig-agent-files | sed '1d;$d' > {q}",
            q = shell_quote(&full)
        ));
    }
    script.push_str("; rm -f /tmp/.brig-agent-files");
    if !p.exclude.is_empty() {
        let lines: Vec<String> = p.exclude.iter().map(|e| shell_quote(e)).collect();
        script.push_str(&format!(
            "; if [ -d /workspace/.git ]; then mkdir -p /workspace/.git/info && printf '%s\\n' {} >> /workspace/.git/info/exclude; fi",
            lines.join(" ")
        ));
    }
    let mut files = String::new();
    for (i, (_, body)) in p.files.iter().enumerate() {
        files.push_str(&format!("--brig-file-{i}--\n{body}"));
        if !body.ends_with('\n') {
            files.push('\n');
        }
        files.push_str(&format!("--brig-end-{i}--\n"));
    }
    let script = format!("cat > /tmp/.brig-agent-files; {script}");
    let (r, _) = exec(c, id, &sh_req(&script, Some(files))).await?;
    if r.status.code != Some(0) {
        return Err(Error::internal(format!(
            "setting up the agent's HOME failed: {}",
            r.stderr.trim()
        )));
    }
    Ok(())
}

/// Push what the agent committed beyond the pinned commit to its bot
/// branch, from inside the session (the session's own git, proxy and
/// gateway: a push like any other, decided by the profile and journaled).
/// The push goes to the recorded origin URL, not to whatever the agent may
/// have made of the `origin` remote. The push's result (none when it did
/// not run) and `{"branch", "commits", "exec"}` or `{"not_run": why}`.
async fn push_after(
    c: &Client,
    id: &str,
    p: &Preset,
    git: &Value,
) -> Result<(Option<ExecResult>, Value)> {
    let (Some(pinned), Some(prefix), Some(origin)) = (
        git["commit"].as_str(),
        git["bot_prefix"].as_str(),
        git["origin"].as_str(),
    ) else {
        return Ok((
            None,
            json!({"not_run": "the session has no git repository with a gateway"}),
        ));
    };
    let in_workspace = |argv: Vec<String>, timeout_ms: u64| ExecRequest {
        argv,
        env: vec![],
        cwd: Some("/workspace".into()),
        tty: None,
        timeout_ms: Some(timeout_ms),
        stdin: None,
    };
    let count = in_workspace(
        s(&["git", "rev-list", "--count", &format!("{pinned}..HEAD")]),
        60_000,
    );
    let (r, _) = exec(c, id, &count).await?;
    let commits = match (r.status.code, r.stdout.trim().parse::<u64>()) {
        (Some(0), Ok(n)) => n,
        _ => {
            let why = format!("cannot count its commits: {}", r.stderr.trim());
            return Ok((None, json!({ "not_run": why })));
        }
    };
    if commits == 0 {
        let why = "it made no commit beyond the pinned commit";
        return Ok((None, json!({ "not_run": why })));
    }
    let branch = format!("{prefix}{}", p.name);
    let push = in_workspace(
        s(&["git", "push", origin, &format!("HEAD:refs/heads/{branch}")]),
        300_000,
    );
    let (r, raw) = exec(c, id, &push).await?;
    Ok((
        Some(r),
        json!({"branch": branch, "commits": commits, "exec": raw}),
    ))
}

/// The diff of /workspace against the pinned commit (commits and
/// uncommitted changes, and the untracked files' names).
async fn workspace_diff(c: &Client, id: &str, pinned: Option<&str>) -> Option<Value> {
    let base = pinned.map(shell_quote).unwrap_or_else(|| "HEAD".into());
    let script = format!(
        "cd /workspace && git rev-parse --git-dir >/dev/null 2>&1 || exit 3; \
         git add -N . >/dev/null 2>&1; \
         echo '--stat--'; git diff --stat {base}; echo '--diff--'; git diff {base} | head -c 262144"
    );
    let (r, _) = exec(c, id, &sh_req(&script, None)).await.ok()?;
    if r.status.code != Some(0) {
        return None;
    }
    let out = r.stdout;
    let (stat, diff) = out
        .strip_prefix("--stat--\n")
        .and_then(|r| r.split_once("--diff--\n"))
        .unwrap_or(("", ""));
    Some(json!({"base": pinned, "diffstat": stat.trim_end(), "diff": diff}))
}

/// The test gate on what the agent pushed: the result, or why it did not run.
async fn gate(c: &Client, id: &str) -> Value {
    match c
        .call::<Value, _>(
            Method::POST,
            &format!("/v1/sessions/{id}/gate"),
            Some(&json!({})),
        )
        .await
    {
        Ok((_, raw)) => raw,
        Err(e) => json!({"not_run": e.message}),
    }
}

fn gate_line(g: &Value) -> String {
    if let Some(why) = g["not_run"].as_str() {
        return format!("test gate: not run ({why})");
    }
    format!(
        "test gate: {} · `{}` exit {} · commit {}",
        if g["passed"] == true {
            "passed"
        } else {
            "FAILED"
        },
        g["command"].as_str().unwrap_or("?"),
        g["exit_code"]
            .as_i64()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "?".into()),
        g["commit"]
            .as_str()
            .map(|c| &c[..c.len().min(12)])
            .unwrap_or("?"),
    )
}

/// `brig run --agent NAME [create flags] "what to do"`.
pub async fn run_agent(c: &Client, a: &RunArgs, out: Out) -> Result<i32> {
    let name = a.agent.as_deref().unwrap_or_default();
    let model = a.model.as_deref();
    let task_text = a.prompt.as_deref().unwrap_or_default();
    let (extra, create_args, opts) = (&a.cmd[..], &a.create, &a.opts);
    let p = preset(name)?;
    if task_text.trim().is_empty() {
        return Err(Error::invalid(
            "the agent needs a task: brig run --agent NAME \"what to do\"",
        ));
    }
    if opts.tty {
        return Err(Error::invalid(
            "--agent runs the agent non-interactively; drop --tty",
        ));
    }
    let timeout = parse_duration(opts.timeout.as_deref().unwrap_or(DEFAULT_TIMEOUT))?;
    let mut body = app::create_body(create_args)?;
    // Without --image: the image built from the preset's pinned recipe, or
    // nothing at all.
    let pinned = body.image.is_none();
    if pinned {
        ensure_image(c, p).await?;
        body.image = Some(p.image());
    }
    let started = Instant::now();
    // A Ctrl-C while the sandbox starts must not leave it behind: let the
    // create finish, then destroy what it made.
    let create = app::create(c, &body, out);
    tokio::pin!(create);
    let mut interrupted = false;
    let created = loop {
        tokio::select! {
            r = &mut create => break r,
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                out.note("brig: interrupted; destroying the session as soon as it exists");
            }
        }
    };
    let (info, mut raw_info) = created?;
    let id = info.id.to_string();
    if interrupted {
        let _ = app::destroy_quietly(c, &id).await;
        return Ok(130);
    }
    // The checkout's details (pinned commit, bot prefix) are in the show.
    if let Ok((_, shown)) = c
        .call::<Value, ()>(Method::GET, &format!("/v1/sessions/{id}"), None)
        .await
    {
        raw_info = shown;
    }
    out.note(&format!(
        "brig: session {id} · image {}@{} · agent {}",
        info.image,
        short_digest(&info.image_digest),
        p.name
    ));

    let result = tokio::select! {
        r = run_in(c, &id, p, model, task_text, extra, opts, timeout, &raw_info, pinned, out) => r,
        _ = tokio::signal::ctrl_c() => {
            out.note("brig: interrupted; destroying the session");
            Ok((130, json!({"interrupted": true})))
        }
    };
    let summary = app::destroy_quietly(c, &id).await;
    let duration = started.elapsed();
    let (code, mut doc) = match result {
        Ok(v) => v,
        Err(e) => {
            out.error(&e);
            if let Err(d) = &summary {
                out.error(&d.clone().context(format!("destroying session {id}")));
            }
            return Ok(EXIT_BRIG_FAILED);
        }
    };
    doc["session"] = json!(id);
    doc["duration_ms"] = json!(duration.as_millis() as u64);
    match &summary {
        Ok((_, raw)) => doc["summary"] = raw.clone(),
        Err(e) => doc["destroy_error"] = serde_json::to_value(e).unwrap_or_default(),
    }
    if out.json {
        out.json_value(&doc);
    } else if !out.quiet && doc["interrupted"] != true {
        let mut t = String::new();
        if let Some(d) = doc.get("diff").filter(|d| !d.is_null()) {
            let stat = d["diffstat"].as_str().unwrap_or("");
            if stat.is_empty() {
                t.push_str("diff: no changes\n");
            } else {
                t.push_str(&format!(
                    "diff against {}:\n{}\n",
                    d["base"]
                        .as_str()
                        .map(|b| &b[..b.len().min(12)])
                        .unwrap_or("HEAD"),
                    d["diff"].as_str().unwrap_or("")
                ));
                t.push_str(&format!("{stat}\n"));
            }
        }
        t.push_str(&format!("{}\n", gate_line(&doc["gate"])));
        out.text(&t);
        eprintln!(
            "brig: session {id} · agent {} {} · exit {code} · {}{}",
            p.name,
            doc["agent"]["version"].as_str().unwrap_or(""),
            format_duration(duration),
            match &summary {
                Ok((s, _)) if s.workspace_shredded => " · workspace shredded".to_string(),
                Ok(_) => " · workspace NOT verified shredded".to_string(),
                Err(_) => String::new(),
            }
        );
        eprintln!("brig: everything it did: brig journal show --session {id}");
    }
    if let Err(e) = &summary {
        if !out.json {
            out.error(&e.clone().context(format!("destroying session {id}")));
        }
        return Ok(EXIT_BRIG_FAILED);
    }
    Ok(code)
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    c: &Client,
    id: &str,
    p: &Preset,
    model: Option<&str>,
    task_text: &str,
    extra: &[String],
    opts: &ExecOpts,
    timeout: std::time::Duration,
    raw_info: &Value,
    pinned_image: bool,
    out: Out,
) -> Result<(i32, Value)> {
    set_up_home(c, id, p).await?;
    // Looked up with the run's own environment (a --env PATH counts).
    let mut env = p.env(model);
    env.extend(opts.env.iter().cloned());
    let image = raw_info["image"].as_str().unwrap_or("?");
    let (bin, version, launcher_env) = find_agent(c, id, p, env.clone(), image).await?;
    if pinned_image && !bin.starts_with(&p.prefix()) {
        return Err(Error::conflict(format!(
            "{} resolves to {bin}, not to the one its recipe installed under {}",
            p.binary,
            p.prefix()
        ))
        .hint("drop the --env PATH that shadows it"));
    }
    if !version.contains(p.tested_version) {
        out.note(&format!(
            "brig: note: the preset was tested with {} {}; the image has {}",
            p.name,
            p.tested_version,
            if version.is_empty() {
                "an unknown version"
            } else {
                &version
            }
        ));
    }
    // The launcher's variables first: the user's --env still wins.
    let env: Vec<(String, String)> = launcher_env.into_iter().chain(env).collect();
    let req = ExecRequest {
        argv: p.argv(&bin, task_text, model, extra),
        env,
        cwd: opts.cwd.clone(),
        tty: None,
        timeout_ms: Some(timeout.as_millis() as u64),
        stdin: None,
    };
    req.validate()?;
    let live = !out.json && !out.quiet && std::io::stderr().is_terminal();
    let head = format!("{} {version} is working in session {id}", p.name);
    let message = Arc::new(Mutex::new(head.clone()));
    let spin = Spinner::start_shared(message.clone(), live);
    // Text output streams the agent's output as it comes (attached exec);
    // --json keeps the buffered ExecResult for its document.
    let run = async {
        if out.json {
            exec(c, id, &req).await
        } else {
            exec_live(c, id, &req, !out.quiet, live).await
        }
    };
    tokio::pin!(run);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    // Count from here on: what brig itself ran to set up is not the agent's.
    let mut progress = Progress::default();
    if live {
        progress.poll(c, id).await;
        progress = Progress {
            after_seq: progress.after_seq,
            name: p.name,
            ..Default::default()
        };
    }
    let res = loop {
        tokio::select! {
            r = &mut run => break r,
            _ = tick.tick(), if live => {
                progress.poll(c, id).await;
                if let Ok(mut m) = message.lock() {
                    *m = progress.line(&head, id);
                }
            }
        }
    };
    spin.stop().await;
    let (r, raw) = res?;
    if !out.json && r.status.timed_out {
        out.note(&format!(
            "brig: the agent timed out after {} and was killed",
            format_duration(timeout)
        ));
    }
    let mut code = r.status.shell_code();
    // For an agent that does not push by itself: its commits, pushed by
    // brig, only after it succeeded. A refused push fails the run.
    let push = if !p.push_after {
        Value::Null
    } else if code != 0 {
        json!({"not_run": format!("the agent exited {code}")})
    } else {
        let (pushed, v) = push_after(c, id, p, &raw_info["git"]).await?;
        if let Some(r) = pushed {
            code = r.status.shell_code();
            if !out.json && (code != 0 || !out.quiet) {
                // git's own output: on a refusal, the gateway's reasons.
                eprintln!(
                    "brig: {} does not push by itself; brig pushes its commits: git push {} HEAD:{}",
                    p.name,
                    raw_info["git"]["origin"].as_str().unwrap_or("origin"),
                    v["branch"].as_str().unwrap_or("?")
                );
                for t in [&r.stdout, &r.stderr] {
                    if !t.is_empty() {
                        eprint!("{t}{}", if t.ends_with('\n') { "" } else { "\n" });
                    }
                }
                if code != 0 {
                    eprintln!("brig: the push failed (git exit {code})");
                }
            }
        } else if !out.json && !out.quiet {
            eprintln!("brig: no push: {}", v["not_run"].as_str().unwrap_or("?"));
        }
        v
    };
    let pinned = raw_info["git"]["commit"].as_str();
    let diff = workspace_diff(c, id, pinned).await;
    let gate = if raw_info["git"].is_object() {
        let spin = Spinner::start("running the test gate", !out.json && !out.quiet);
        let g = gate(c, id).await;
        spin.stop().await;
        g
    } else {
        json!({"not_run": "the session has no git repository"})
    };
    Ok((
        code,
        json!({
            "agent": {"name": p.name, "binary": bin, "version": version, "tested_version": p.tested_version, "argv": req.argv,
                      "recipe_digest": if pinned_image { json!(p.recipe_digest) } else { Value::Null }},
            "image": raw_info["image"],
            "image_digest": raw_info["image_digest"],
            "exit_code": code,
            "exec": raw,
            "push": push,
            "diff": diff,
            "gate": gate,
        }),
    ))
}

/// What the spinner shows while the agent works: from the session's
/// journal, the commands it ran, its model calls and its latest command.
#[derive(Default)]
struct Progress {
    after_seq: Option<u64>,
    name: &'static str,
    commands: u64,
    model_calls: u64,
    last: String,
}

impl Progress {
    async fn poll(&mut self, c: &Client, id: &str) {
        let after = self
            .after_seq
            .map(|s| format!("&after_seq={s}"))
            .unwrap_or_default();
        let Ok((_, v)) = c
            .call::<Value, ()>(
                Method::GET,
                &format!("/v1/journal?session={id}&limit=1000{after}"),
                None,
            )
            .await
        else {
            return;
        };
        self.add(v.as_array().map(Vec::as_slice).unwrap_or_default());
    }

    fn add(&mut self, events: &[Value]) {
        for e in events {
            if let Some(seq) = e["seq"].as_u64() {
                self.after_seq = Some(self.after_seq.map_or(seq, |s| s.max(seq)));
            }
            match e["action"].as_str() {
                Some("process.exec") => {
                    self.commands += 1;
                    if let Some(argv) = e["details"]["argv"].as_array() {
                        let line: Vec<&str> = argv.iter().filter_map(|a| a.as_str()).collect();
                        self.last = line.join(" ").chars().take(60).collect();
                    }
                }
                Some("model.call") => self.model_calls += 1,
                _ => {}
            }
        }
    }

    fn line(&self, head: &str, id: &str) -> String {
        if self.commands == 0 && self.model_calls == 0 {
            return head.to_string();
        }
        let mut l = format!(
            "{} in {id} · {} commands · {} model calls",
            self.name, self.commands, self.model_calls
        );
        if !self.last.is_empty() {
            l.push_str(&format!(" · last: {}", self.last));
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_non_interactive_and_keeps_home_off_the_workspace() {
        for p in PRESETS {
            let argv = p.argv("/usr/bin/x", "fix the bug", Some("coder"), &["--x".into()]);
            assert!(argv.iter().any(|a| a == "--x"), "{}", p.name);
            assert!(argv.iter().any(|a| a == "fix the bug"), "{}", p.name);
            assert!(argv.iter().any(|a| a.contains("coder")), "{}", p.name);
            let env = p.env(None);
            assert!(
                env.contains(&("HOME".into(), AGENT_HOME.into())),
                "{}",
                p.name
            );
            for (k, v) in &env {
                assert!(!v.starts_with("/workspace"), "{}: {k}={v}", p.name);
            }
        }
        let c = preset("claude-code").unwrap();
        let argv = c.argv("claude", "t", None, &[]);
        assert!(argv
            .windows(2)
            .any(|w| w == ["--permission-mode", "bypassPermissions"]));
        assert!(c.env(None).iter().any(|(k, _)| k == "DISABLE_TELEMETRY"));
        assert!(c
            .env(Some("m"))
            .contains(&("ANTHROPIC_MODEL".into(), "m".into())));
        let x = preset("codex")
            .unwrap()
            .argv("codex", "t", None, &["-c".into(), "a=1".into()]);
        assert_eq!(&x[x.len() - 3..], ["-c", "a=1", "t"]);
        // Only aider needs brig to push its commits.
        let pushers: Vec<&str> = PRESETS
            .iter()
            .filter(|p| p.push_after)
            .map(|p| p.name)
            .collect();
        assert_eq!(pushers, ["aider"]);
        let e = preset("cursor").unwrap_err();
        assert!(e.hint.unwrap().contains("claude-code, codex, aider"));
    }

    /// `(b, r)` after the native-binary fragment, run by a real `sh`.
    fn resolve(n: &NativeBinary, launcher: &std::path::Path) -> (String, String) {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "b=\"$1\"; {}; echo \"$b\"; echo \"$r\"",
                n.script("codex")
            ))
            .arg("sh")
            .arg(launcher)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let out = String::from_utf8(o.stdout).unwrap();
        let mut l = out.lines();
        (l.next().unwrap().into(), l.next().unwrap_or("").into())
    }

    #[test]
    fn codex_runs_the_native_binary_its_launcher_would_run() {
        use std::os::unix::fs::PermissionsExt;
        let n = preset("codex").unwrap().native.as_ref().unwrap();
        let (arch, npm) = match std::env::consts::ARCH {
            "x86_64" => ("x86_64", "x64"),
            "aarch64" => ("aarch64", "arm64"),
            other => panic!("no test for {other}"),
        };
        let d = tempfile::tempdir().unwrap();
        // A directory with a space: the fragment quotes what it must.
        let nm = d.path().join("opt x/node_modules");
        std::fs::create_dir_all(nm.join(".bin")).unwrap();
        let launcher = nm.join(".bin/codex");
        std::fs::write(&launcher, "#!/usr/bin/env node\n").unwrap();
        // No native binary yet: the launcher stays.
        assert_eq!(
            resolve(n, &launcher),
            (launcher.display().to_string(), String::new())
        );
        let native = nm.join(format!(
            "@openai/codex-linux-{npm}/vendor/{arch}-unknown-linux-musl/bin/codex"
        ));
        std::fs::create_dir_all(native.parent().unwrap()).unwrap();
        std::fs::write(&native, "").unwrap();
        std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Without the launcher's own package it is not the layout npm made.
        assert_eq!(resolve(n, &launcher).1, "");
        std::fs::create_dir_all(nm.join("@openai/codex")).unwrap();
        assert_eq!(
            resolve(n, &launcher),
            (
                native.display().to_string(),
                nm.join("@openai/codex").display().to_string()
            )
        );
        // Not executable: not run.
        std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(resolve(n, &launcher).0, launcher.display().to_string());
        // What the launcher would have set for that package.
        assert_eq!(
            n.env("/p"),
            [
                ("CODEX_MANAGED_PACKAGE_ROOT".to_string(), "/p".to_string()),
                ("CODEX_MANAGED_BY_NPM".into(), "1".into())
            ]
        );
        // A `codex` that is not an npm launcher is run as it is.
        let plain = d.path().join("codex");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(
            resolve(n, &plain),
            (plain.display().to_string(), String::new())
        );
    }

    #[test]
    fn each_preset_pins_its_shipped_recipe() {
        for p in PRESETS {
            let files = crate::recipes::to_map(p.recipe);
            assert_eq!(
                brig_server::image_build::recipe_digest(&files),
                p.recipe_digest,
                "{}: recipes/{}/ changed: update the preset's pin",
                p.name,
                p.name
            );
            let r = brig_server::image_build::Recipe::parse(files).unwrap();
            assert_eq!(r.name, p.name);
            assert_eq!(format!("{}/", r.prefix), p.prefix());
            assert_eq!(r.image_name(), p.image());
            assert!(
                r.steps
                    .iter()
                    .chain(r.check.iter())
                    .any(|s| s.contains(p.tested_version)),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn progress_counts_what_the_journal_says() {
        let mut p = Progress {
            name: "claude-code",
            ..Default::default()
        };
        assert_eq!(
            p.line("claude-code is working", "s-1"),
            "claude-code is working"
        );
        p.add(&[
            json!({"seq": 7, "action": "process.exec", "details": {"argv": ["sh", "test.sh"]}}),
            json!({"seq": 9, "action": "model.call"}),
            json!({"seq": 8, "action": "net.request"}),
        ]);
        assert_eq!(p.after_seq, Some(9));
        assert_eq!(
            p.line("claude-code is working", "s-1"),
            "claude-code in s-1 · 1 commands · 1 model calls · last: sh test.sh"
        );
    }

    #[test]
    fn gate_lines() {
        assert_eq!(
            gate_line(&json!({"not_run": "nothing pushed"})),
            "test gate: not run (nothing pushed)"
        );
        let l = gate_line(
            &json!({"passed": true, "command": "sh t.sh", "exit_code": 0, "commit": "0123456789abcdef"}),
        );
        assert_eq!(
            l,
            "test gate: passed · `sh t.sh` exit 0 · commit 0123456789ab"
        );
    }
}
