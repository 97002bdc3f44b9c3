//! `brig pr preview|gate|create|list SESSION`: what a session pushed, the
//! profile's test gate, and the pull request opened through the forge
//! (issue 5; the work is brig-server's `pr` module).

use brig_core::Result;
use clap::Subcommand;
use hyper::Method;

use crate::client::Client;
use crate::output::Out;
use crate::term::{self, Spinner};

#[derive(Subcommand, Debug)]
pub enum PrCmd {
    /// Diff stat, diff and the latest test-gate result of a pushed bot branch.
    Preview {
        session: String,
        /// A pushed bot branch (default: the latest pushed).
        #[arg(long, value_name = "BRANCH")]
        branch: Option<String>,
        /// Only the diff stat.
        #[arg(long)]
        stat: bool,
    },
    /// Run the profile's test gate in the sandbox at the pushed commit.
    Gate {
        session: String,
        #[arg(long, value_name = "BRANCH")]
        branch: Option<String>,
    },
    /// Open a pull request for a pushed bot branch (after the gate passes).
    Create {
        session: String,
        #[arg(long, value_name = "TEXT")]
        title: String,
        #[arg(long, value_name = "TEXT", default_value = "")]
        body: String,
        #[arg(long, value_name = "BRANCH")]
        branch: Option<String>,
    },
    /// The session's pull requests.
    #[command(alias = "ls")]
    List { session: String },
}

fn id(s: &str) -> Result<String> {
    s.parse::<brig_core::SessionId>().map(String::from)
}

fn gate_line(g: &serde_json::Value) -> String {
    if g.is_null() {
        return "test gate: not run for this commit".into();
    }
    let mut s = format!(
        "test gate: {} · `{}` exit {} · {} ms · commit {}",
        if g["passed"].as_bool() == Some(true) {
            "passed"
        } else {
            "FAILED"
        },
        g["command"].as_str().unwrap_or(""),
        g["exit_code"]
            .as_i64()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        g["duration_ms"].as_u64().unwrap_or(0),
        term::short_digest(g["commit"].as_str().unwrap_or("")),
    );
    if let Some(c) = g["coverage"].as_object() {
        s.push_str(&format!(
            " · coverage {:.2}% (was {})",
            c["head"].as_f64().unwrap_or(0.0),
            c["base"]
                .as_f64()
                .map(|b| format!("{b:.2}%"))
                .unwrap_or_else(|| "?".into())
        ));
    }
    if let Some(r) = g["reason"].as_str() {
        s.push_str(&format!("\n  {r}"));
    }
    s
}

pub async fn run(c: &Client, cmd: &PrCmd, out: Out) -> Result<i32> {
    match cmd {
        PrCmd::Preview {
            session,
            branch,
            stat,
        } => {
            let id = id(session)?;
            let q = branch
                .as_ref()
                .map(|b| format!("?branch={}", crate::app::path_segment(b)))
                .unwrap_or_default();
            let (_, raw) = c
                .get::<serde_json::Value>(&format!("/v1/sessions/{id}/pr/preview{q}"))
                .await?;
            if out.json {
                out.json_value(&raw);
                return Ok(0);
            }
            out.text(&format!(
                "{} → {} ({} commit{} on {})",
                raw["branch"].as_str().unwrap_or(""),
                raw["base"].as_str().unwrap_or(""),
                raw["commits"].as_array().map(Vec::len).unwrap_or(0),
                if raw["commits"].as_array().map(Vec::len) == Some(1) {
                    ""
                } else {
                    "s"
                },
                term::short_digest(raw["base_commit"].as_str().unwrap_or("")),
            ));
            out.text(raw["diffstat"].as_str().unwrap_or("").trim_end());
            out.text(&gate_line(&raw["gate"]));
            if !stat {
                out.text("");
                out.text(raw["diff"].as_str().unwrap_or("").trim_end());
                if raw["diff_truncated"].as_bool() == Some(true) {
                    out.note("(diff truncated; see the branch upstream for the rest)");
                }
            }
            Ok(0)
        }
        PrCmd::Gate { session, branch } => {
            let id = id(session)?;
            let body = serde_json::json!({ "branch": branch });
            let spin = Spinner::start("running the test gate", !out.json && !out.quiet);
            let r = c
                .call_value(
                    Method::POST,
                    &format!("/v1/sessions/{id}/gate"),
                    Some(&body),
                )
                .await;
            spin.stop().await;
            let raw = r?;
            let passed = raw["passed"].as_bool() == Some(true);
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&gate_line(&raw));
                if !passed {
                    out.text(raw["output_tail"].as_str().unwrap_or("").trim_end());
                }
            }
            // A failed gate is a result, not a brig error: exit 1, like a test runner.
            Ok(if passed { 0 } else { 1 })
        }
        PrCmd::Create {
            session,
            title,
            body,
            branch,
        } => {
            let id = id(session)?;
            let req = serde_json::json!({ "title": title, "body": body, "branch": branch });
            let spin = Spinner::start(
                "test gate, then opening the pull request",
                !out.json && !out.quiet,
            );
            let r = c
                .call_value(
                    Method::POST,
                    &format!("/v1/sessions/{id}/pulls"),
                    Some(&req),
                )
                .await;
            spin.stop().await;
            let raw = r?;
            if out.json {
                out.json_value(&raw);
            } else {
                let pr = &raw["pull_request"];
                out.text(pr["url"].as_str().unwrap_or(""));
                out.note(&format!(
                    "#{} {} → {}",
                    pr["number"].as_u64().unwrap_or(0),
                    pr["head"].as_str().unwrap_or(""),
                    pr["base"].as_str().unwrap_or("")
                ));
                if !raw["gate"].is_null() {
                    out.note(&gate_line(&raw["gate"]));
                }
            }
            Ok(0)
        }
        PrCmd::List { session } => {
            let id = id(session)?;
            let (list, raw) = c
                .get::<Vec<serde_json::Value>>(&format!("/v1/sessions/{id}/pulls"))
                .await?;
            if out.json {
                out.json_value(&raw);
            } else if list.is_empty() {
                out.note(&format!("session {id} has opened no pull requests"));
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p["number"].as_u64().unwrap_or(0).to_string(),
                            p["state"].as_str().unwrap_or("").to_string(),
                            p["head"].as_str().unwrap_or("").to_string(),
                            p["base"].as_str().unwrap_or("").to_string(),
                            p["url"].as_str().unwrap_or("").to_string(),
                        ]
                    })
                    .collect();
                out.text(&term::table(&["#", "STATE", "HEAD", "BASE", "URL"], &rows));
            }
            Ok(0)
        }
    }
}
