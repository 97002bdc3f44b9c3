//! Before a pull request exists (issue 5, "Gates"; docs/GIT.md): what a
//! session pushed, its diff, the profile's test gate run in the sandbox at
//! the pushed commit, and the PR opened through the session's forge only
//! when the gate passes.
//!
//! - The diff is the gateway repository's: the pinned commit against the
//!   bot branch as the agent pushed it (the upstream has the same trees,
//!   signed by brig).
//! - The gate runs the profile's `test` command (and `coverage`, when
//!   named) in a detached worktree of the pushed commit inside the sandbox
//!   (`/workspace/.git/brig-gate`), so what is tested is exactly what the
//!   PR holds, not the agent's uncommitted edits. Coverage is compared with
//!   the pinned commit's, measured the same way once per session.
//! - Every gate run is journaled (`git.gate`) and kept; `POST .../pr`
//!   reuses the latest result when it is for the same commit and passed,
//!   and runs the gate otherwise.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brig_core::event::Outcome;
use brig_core::exec::ExecRequest;
use brig_core::{Error, ErrorKind, Result, SessionId};
use brig_forge::{NewPullRequest, PullRequest};
use serde::{Deserialize, Serialize};

use crate::git::SessionGit;
use crate::git_config::Gate;
use crate::manager::{session_event, Manager};

/// Store record kinds.
const GATE: &str = "gate";
const PULL: &str = "pull_request";
/// The diff shown by a preview, at most.
const MAX_DIFF: usize = 256 * 1024;
/// Output kept from a gate command (its tail).
const OUTPUT_TAIL: usize = 4096;
/// Where the gate's worktrees live inside the sandbox.
const GATE_DIR: &str = "/workspace/.git/brig-gate";
const BASE_DIR: &str = "/workspace/.git/brig-gate-base";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    pub command: String,
    pub head: f64,
    pub base: Option<f64>,
    /// Points lost against the pinned commit (negative: gained).
    pub drop: Option<f64>,
    pub max_drop: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateResult {
    pub at: String,
    pub branch: String,
    /// The commit tested (as the agent pushed it).
    pub commit: String,
    pub command: String,
    pub exit_code: Option<i32>,
    pub passed: bool,
    pub duration_ms: u64,
    /// The output's tail (stdout then stderr), redacted by the journal's
    /// redactor before it is kept.
    pub output_tail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
    /// Why the gate could not run or failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preview {
    pub branch: String,
    pub base: String,
    pub base_commit: String,
    pub head_commit: String,
    pub commits: Vec<String>,
    pub diffstat: String,
    pub diff: String,
    pub diff_truncated: bool,
    pub gate: Option<GateResult>,
    pub pull_requests: Vec<PullRequest>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreatePr {
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// The bot branch (default: the only one pushed, or the latest).
    #[serde(default)]
    pub branch: Option<String>,
}

/// A read of the gateway repository, with brig-git's clean git
/// environment (no host config, no prompts, killed when dropped).
async fn git_in(repo: &Path, args: &[&str]) -> Result<String> {
    let mut c = brig_git::gitcmd::git(repo, &[]);
    c.args(args);
    let what = format!("git {}", args.first().unwrap_or(&""));
    let out = brig_git::gitcmd::run_ok(c, None, &what)
        .await
        .map_err(Error::internal)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The session's pushed bot branches in its gateway repository, newest
/// commit first: (branch, tip).
pub async fn pushed_branches(gateway: &Path, g: &SessionGit) -> Result<Vec<(String, String)>> {
    let prefix = format!("refs/heads/{}", g.bot_prefix);
    let out = git_in(
        gateway,
        &[
            "for-each-ref",
            "--sort=-committerdate",
            "--format=%(refname) %(objectname)",
            &prefix,
        ],
    )
    .await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, sha)| {
            (
                r.trim_start_matches("refs/heads/").to_string(),
                sha.to_string(),
            )
        })
        .collect())
}

async fn pick_branch(
    gateway: &Path,
    g: &SessionGit,
    want: Option<&str>,
) -> Result<(String, String)> {
    let pushed = pushed_branches(gateway, g).await?;
    match want {
        Some(b) => pushed.into_iter().find(|(n, _)| n == b).ok_or_else(|| {
            Error::not_found(format!("branch {b:?} was not pushed by this session")).hint(format!(
                "push it from the sandbox first: git push origin HEAD:{}{}",
                g.bot_prefix,
                b.rsplit('/').next().unwrap_or("work")
            ))
        }),
        None => pushed.into_iter().next().ok_or_else(|| {
            Error::new(ErrorKind::Conflict, "this session has pushed nothing yet").hint(format!(
                "inside the sandbox: git push origin HEAD:{}my-change",
                g.bot_prefix
            ))
        }),
    }
}

async fn git_of(mgr: &Manager, id: &SessionId) -> Result<SessionGit> {
    mgr.session_git(id).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Conflict,
            format!("session {id} has no git checkout"),
        )
        .hint("create the session with --repo naming a git repository")
    })
}

/// `brig pr preview`: diff stat, diff and the latest gate result.
pub async fn preview(
    mgr: &Arc<Manager>,
    id: &SessionId,
    branch: Option<String>,
) -> Result<Preview> {
    let g = git_of(mgr, id).await?;
    let gateway = crate::git::gateway_dir(&mgr.config().data_dir, id);
    let gate = latest_gate(mgr, id).await?;
    let pulls = pull_requests(mgr, id).await?;
    let (branch, head) = pick_branch(&gateway, &g, branch.as_deref()).await?;
    let base = g.pinned.commit.clone();
    let range = format!("{base}..{head}");
    let commits = git_in(&gateway, &["rev-list", "--reverse", &range])
        .await?
        .lines()
        .map(str::to_string)
        .collect();
    let diffstat = git_in(&gateway, &["diff", "--stat", &base, &head]).await?;
    let mut diff = git_in(&gateway, &["diff", &base, &head]).await?;
    let truncated = diff.len() > MAX_DIFF;
    if truncated {
        let mut cut = MAX_DIFF;
        while !diff.is_char_boundary(cut) {
            cut -= 1;
        }
        diff.truncate(cut);
    }
    Ok(Preview {
        gate: gate.filter(|r| r.commit == head),
        pull_requests: pulls.into_iter().filter(|p| p.head == branch).collect(),
        branch,
        base: g.pinned.base_branch.clone(),
        base_commit: base,
        head_commit: head,
        commits,
        diffstat,
        diff,
        diff_truncated: truncated,
    })
}

async fn latest_gate(mgr: &Manager, id: &SessionId) -> Result<Option<GateResult>> {
    let sid = id.clone();
    let recs = mgr.db().run(move |s| s.session_records(&sid, GATE)).await?;
    Ok(recs
        .into_iter()
        .last()
        .and_then(|v| serde_json::from_value(v).ok()))
}

pub async fn pull_requests(mgr: &Manager, id: &SessionId) -> Result<Vec<PullRequest>> {
    let sid = id.clone();
    let recs = mgr.db().run(move |s| s.session_records(&sid, PULL)).await?;
    Ok(recs
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

fn gate_of(mgr: &Manager, profile: &str) -> Result<Option<Gate>> {
    Ok(mgr.config().profile(profile)?.gate.clone())
}

/// Run one shell command in the sandbox, `cwd` given, with the gate's
/// timeout; (exit code, tail of the output, duration).
async fn run_in(
    mgr: &Arc<Manager>,
    id: &SessionId,
    cwd: &str,
    cmd: &str,
    timeout: Duration,
) -> Result<(Option<i32>, bool, String, u64)> {
    let r = mgr
        .exec_buffered(
            id,
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
                cwd: Some(cwd.into()),
                timeout_ms: Some(timeout.as_millis() as u64),
                ..Default::default()
            },
        )
        .await?;
    let mut all = r.stdout;
    all.push_str(&r.stderr);
    let tail = tail(&all, OUTPUT_TAIL);
    Ok((r.status.code, r.status.code == Some(0), tail, r.duration_ms))
}

fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[...]{}", &s[start..])
}

/// The last `NN.N%` a coverage command printed.
pub fn parse_coverage(out: &str) -> Option<f64> {
    let b = out.as_bytes();
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        if b[i] != b'%' {
            continue;
        }
        let mut j = i;
        while j > 0 && (b[j - 1].is_ascii_digit() || b[j - 1] == b'.') {
            j -= 1;
        }
        if j < i {
            if let Ok(v) = out[j..i].parse::<f64>() {
                if (0.0..=100.0).contains(&v) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// A detached worktree of `commit` at `dir` inside the sandbox (replacing
/// one left from an earlier run).
async fn worktree(mgr: &Arc<Manager>, id: &SessionId, dir: &str, commit: &str) -> Result<()> {
    let script = format!(
        "git -C /workspace worktree remove --force {dir} >/dev/null 2>&1; rm -rf {dir}; \
         git -C /workspace worktree add --detach --quiet {dir} {commit}"
    );
    let (code, ok, out, _) =
        run_in(mgr, id, "/workspace", &script, Duration::from_secs(300)).await?;
    if !ok {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "cannot check out commit {commit} for the gate (exit {code:?}): {}",
                out.trim()
            ),
        )
        .hint("the commit must be in the sandbox's repository: push from /workspace"));
    }
    Ok(())
}

/// Run the profile's gate on a pushed branch; the result is kept and
/// journaled whatever it is.
pub async fn run_gate(
    mgr: &Arc<Manager>,
    id: &SessionId,
    branch: Option<String>,
) -> Result<GateResult> {
    let info = mgr.get(id).await?;
    let g = git_of(mgr, id).await?;
    let Some(gate) = gate_of(mgr, &info.profile)? else {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("profile {:?} names no test gate", info.profile),
        )
        .hint("add [profiles.NAME.gate] test = \"...\" to brig.toml"));
    };
    let gateway = crate::git::gateway_dir(&mgr.config().data_dir, id);
    let (branch, head) = pick_branch(&gateway, &g, branch.as_deref()).await?;
    let t0 = std::time::Instant::now();
    let mut result = GateResult {
        at: brig_core::event::now_rfc3339(),
        branch: branch.clone(),
        commit: head.clone(),
        command: gate.test.clone(),
        exit_code: None,
        passed: false,
        duration_ms: 0,
        output_tail: String::new(),
        coverage: None,
        reason: None,
    };
    match gate_steps(mgr, id, &g, &gate, &head, &mut result).await {
        Ok(()) => {}
        Err(e) => {
            result.passed = false;
            result.reason = Some(e.message.clone());
        }
    }
    result.duration_ms = t0.elapsed().as_millis() as u64;
    let mut ev = session_event(
        &info,
        "git.gate",
        if result.passed {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    );
    ev.branch = Some(branch);
    ev.rule = (!result.passed).then(|| {
        if result.coverage.as_ref().is_some_and(|c| !c.passed) {
            "gate:coverage".to_string()
        } else {
            "gate:test".to_string()
        }
    });
    let rec = serde_json::to_value(&result).map_err(|e| Error::internal(e.to_string()))?;
    let ev = ev.details(rec.clone());
    let sid = id.clone();
    mgr.db()
        .write(move |s| s.add_session_record(&sid, GATE, &rec, &ev))
        .await?;
    // Read back: the stored record is the redacted one.
    Ok(latest_gate(mgr, id).await?.unwrap_or(result))
}

async fn gate_steps(
    mgr: &Arc<Manager>,
    id: &SessionId,
    g: &SessionGit,
    gate: &Gate,
    head: &str,
    result: &mut GateResult,
) -> Result<()> {
    worktree(mgr, id, GATE_DIR, head).await?;
    let (code, ok, out, _) = run_in(mgr, id, GATE_DIR, &gate.test, gate.timeout).await?;
    result.exit_code = code;
    result.output_tail = out;
    if !ok {
        result.reason = Some(match code {
            Some(c) => format!("the test command exited {c}"),
            None => "the test command was killed (timeout or signal)".into(),
        });
        return Ok(());
    }
    let Some(cov_cmd) = &gate.coverage else {
        result.passed = true;
        return Ok(());
    };
    let measure = |dir: &'static str| {
        let cmd = cov_cmd.clone();
        async move {
            let (_, ok, out, _) = run_in(mgr, id, dir, &cmd, gate.timeout).await?;
            if !ok {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("the coverage command failed: {}", out.trim()),
                ));
            }
            parse_coverage(&out).ok_or_else(|| {
                Error::new(
                    ErrorKind::Conflict,
                    "the coverage command printed no percentage (NN.N%)",
                )
                .hint("make the coverage command print the total as its last percentage")
            })
        }
    };
    let head_cov = measure(GATE_DIR).await?;
    worktree(mgr, id, BASE_DIR, &g.pinned.commit).await?;
    let base_cov = measure(BASE_DIR).await?;
    let drop = base_cov - head_cov;
    let passed = drop <= gate.max_coverage_drop + 1e-9;
    result.coverage = Some(Coverage {
        command: cov_cmd.clone(),
        head: head_cov,
        base: Some(base_cov),
        drop: Some(drop),
        max_drop: gate.max_coverage_drop,
        passed,
    });
    result.passed = passed;
    if !passed {
        result.reason = Some(format!(
            "coverage dropped {drop:.2} points ({base_cov:.2}% to {head_cov:.2}%), more than the {:.2} allowed",
            gate.max_coverage_drop
        ));
    }
    Ok(())
}

/// The gate's result as a section of the PR body.
fn gate_section(r: Option<&GateResult>) -> String {
    let Some(r) = r else {
        return "\n\n---\nbrig: this profile has no test gate.\n".into();
    };
    let mut s = format!(
        "\n\n---\n### brig test gate: {}\n\n- commit `{}`\n- `{}` exited {} in {} ms\n",
        if r.passed { "passed" } else { "failed" },
        r.commit,
        r.command,
        r.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(killed)".into()),
        r.duration_ms
    );
    if let Some(c) = &r.coverage {
        s.push_str(&format!(
            "- coverage {:.2}% (pinned commit {}), allowed drop {:.2} points\n",
            c.head,
            c.base
                .map(|b| format!("{b:.2}%"))
                .unwrap_or_else(|| "unknown".into()),
            c.max_drop
        ));
    }
    s
}

/// `brig pr create`: the gate (unless the latest result passed for this
/// very commit), then the PR through the session's forge.
pub async fn create(
    mgr: &Arc<Manager>,
    id: &SessionId,
    req: CreatePr,
) -> Result<(PullRequest, Option<GateResult>)> {
    let info = mgr.get(id).await?;
    let g = git_of(mgr, id).await?;
    let gateway = crate::git::gateway_dir(&mgr.config().data_dir, id);
    let (branch, head) = pick_branch(&gateway, &g, req.branch.as_deref()).await?;
    let gate = match gate_of(mgr, &info.profile)? {
        None => None,
        Some(_) => {
            let latest = latest_gate(mgr, id).await?;
            let r = match latest {
                Some(r) if r.commit == head && r.passed => r,
                _ => run_gate(mgr, id, Some(branch.clone())).await?,
            };
            if !r.passed {
                let mut ev = session_event(&info, "git.pr.open", Outcome::Denied);
                ev.branch = Some(branch.clone());
                ev.rule = Some("gate".into());
                let ev = ev.details(
                    serde_json::json!({"branch": branch, "commit": head, "reason": r.reason}),
                );
                mgr.db().write(move |s| s.append_event(&ev)).await?;
                return Err(Error::new(
                    ErrorKind::Denied,
                    format!(
                        "the test gate failed for {branch} at {}: {}; no pull request was opened",
                        &head[..12.min(head.len())],
                        r.reason.as_deref().unwrap_or("failed")
                    ),
                )
                .hint("fix it in the sandbox, push again, and retry; `brig pr preview` shows the gate's output"));
            }
            Some(r)
        }
    };
    // Policy on opening it (pr.open), under the session's profile.
    let bot = branch.starts_with(&g.bot_prefix);
    let passed = gate.as_ref().is_none_or(|r| r.passed);
    mgr.authorize_pr_open(id, &g.name, &branch, &g.pinned.base_branch, bot, passed)
        .await?;
    let forge = mgr.live_session_forge(id, &g)?;
    let new = NewPullRequest {
        title: req.title.clone(),
        body: format!("{}{}", req.body, gate_section(gate.as_ref())),
        head: branch.clone(),
        base: g.pinned.base_branch.clone(),
    };
    let opened = forge.open_pull_request(&new).await;
    let mut ev = session_event(
        &info,
        "git.pr.open",
        if opened.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    );
    ev.branch = Some(branch.clone());
    match opened {
        Ok(pr) => {
            let rec = serde_json::to_value(&pr).map_err(|e| Error::internal(e.to_string()))?;
            let ev = ev.details(serde_json::json!({
                "forge": forge.kind(), "number": pr.number, "url": pr.url, "head": pr.head,
                "base": pr.base, "commit": head, "gate_passed": gate.as_ref().map(|g| g.passed),
            }));
            let sid = id.clone();
            mgr.db()
                .write(move |s| s.add_session_record(&sid, PULL, &rec, &ev))
                .await?;
            Ok((pr, gate))
        }
        Err(e) => {
            let err: Error = e.into();
            let ev = ev.details(
                serde_json::json!({"forge": forge.kind(), "head": branch, "error": err.message}),
            );
            mgr.db().write(move |s| s.append_event(&ev)).await?;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_the_last_percentage() {
        assert_eq!(parse_coverage("lines: 81.5%\nTOTAL 72.25%\n"), Some(72.25));
        assert_eq!(parse_coverage("100%"), Some(100.0));
        assert_eq!(parse_coverage("no numbers here %"), None);
        assert_eq!(parse_coverage("ratio 180% then 12%"), Some(12.0));
    }

    #[test]
    fn tails_cut_on_char_boundaries() {
        let s = "é".repeat(3000);
        let t = tail(&s, 4096);
        assert!(t.starts_with("[...]"));
        assert!(t.len() <= 4096 + 5);
    }
}
