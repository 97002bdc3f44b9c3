//! Running git on a gateway repository: a clean environment (no user or system
//! config, no inherited GIT_* variables, no prompts), killed when dropped.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// `git` with `GIT_DIR=repo` and nothing of brig's own environment but PATH.
pub fn git(repo: &Path, env: &[(OsString, OsString)]) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("GIT_DIR", repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env("HOME", "/nonexistent")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// The first line of git's stderr, for a message (git prefixes `fatal: `/`error: `).
pub fn first_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let l = s
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let l = l
        .strip_prefix("fatal: ")
        .or_else(|| l.strip_prefix("error: "))
        .unwrap_or(l);
    l.chars().take(300).collect()
}

pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Run `cmd` to the end, feeding `input` to its stdin.
pub async fn run(mut cmd: Command, input: Option<&[u8]>) -> Result<Out, String> {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run git: {e}"))?;
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("piped");
        // A git that exits early closes its stdin: its status tells why.
        let _ = stdin.write_all(data).await;
        drop(stdin);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("git failed: {e}"))?;
    Ok(Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: out.stdout,
        stderr: out.stderr,
    })
}

/// Run and require success; the error is git's first line with `what` in front.
pub async fn run_ok(cmd: Command, input: Option<&[u8]>, what: &str) -> Result<Vec<u8>, String> {
    let out = run(cmd, input).await?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(format!("{what}: {}", first_line(&out.stderr)))
    }
}
