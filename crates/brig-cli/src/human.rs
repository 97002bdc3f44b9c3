//! Human control from the CLI (issue 7): approvals (`brig approvals list`,
//! `brig approve`, `brig deny`), plans (`brig plan submit|show`) and the
//! policy itself (`brig policy lint|test|show`, which work offline on
//! brig.toml's policies, so a policy change can be checked in CI before it
//! is deployed).

use std::path::{Path, PathBuf};

use brig_core::{Error, Result};
use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use crate::client::Client;
use crate::output::Out;
use crate::term;

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// Requests waiting for a human (all of them with --all).
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        all: bool,
    },
    /// One request.
    Show { id: String },
}

#[derive(Subcommand, Debug)]
pub enum PlanCmd {
    /// Submit a plan for a session: a JSON file (or - for stdin) with goal,
    /// steps, blast_radius {files, services, data} and rollback.
    Submit { session: String, file: PathBuf },
    /// The session's plans.
    Show { session: String },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate policy files against brig's schema.
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate a request (a JSON file, or - for stdin) with brig.toml's
    /// policies and show which policies decided it.
    Test { file: PathBuf },
    /// The profiles and their policies (ids, effects, reasons).
    Show,
}

pub async fn approvals(c: &Client, cmd: &ApprovalsCmd, out: Out) -> Result<i32> {
    match cmd {
        ApprovalsCmd::List { all } => {
            let path = if *all {
                "/v1/approvals".to_string()
            } else {
                "/v1/approvals?state=pending".to_string()
            };
            let (list, raw) = c.get::<Vec<Value>>(&path).await?;
            if out.json {
                out.json_value(&raw);
                return Ok(0);
            }
            if list.is_empty() {
                out.text(if *all {
                    "no approval requests"
                } else {
                    "no approval requests are pending"
                });
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        s(&a["id"]),
                        s(&a["state"]),
                        s(&a["session"]),
                        s(&a["human"]),
                        format!("{} {}", s(&a["action"]), short(&s(&a["resource"]), 40)),
                        s(&a["capability"]),
                        a["roles"]
                            .as_array()
                            .map(|r| r.iter().map(s).collect::<Vec<_>>().join(","))
                            .unwrap_or_default(),
                        term::age(a["requested_at"].as_str().unwrap_or("")),
                    ]
                })
                .collect();
            out.text(&term::table(
                &[
                    "ID",
                    "STATE",
                    "SESSION",
                    "HUMAN",
                    "ACTION",
                    "CAPABILITY",
                    "ROLES",
                    "AGE",
                ],
                &rows,
            ));
            Ok(0)
        }
        ApprovalsCmd::Show { id } => {
            let (a, raw) = c
                .get::<Value>(&format!("/v1/approvals/{}", crate::app::path_segment(id)))
                .await?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&describe(&a));
            }
            Ok(0)
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn short(x: &str, n: usize) -> String {
    if x.chars().count() > n {
        format!("{}…", x.chars().take(n).collect::<String>())
    } else {
        x.to_string()
    }
}

fn describe(a: &Value) -> String {
    let mut t = format!(
        "{} · {} · session {} of {} (task {})\n  {} {}\n  capability {} · roles {}\n  why: {}\n  requested {} · expires {}",
        s(&a["id"]),
        s(&a["state"]),
        s(&a["session"]),
        s(&a["human"]),
        s(&a["task"]),
        s(&a["action"]),
        s(&a["resource"]),
        s(&a["capability"]),
        a["roles"].as_array().map(|r| r.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
        s(&a["reason"]),
        s(&a["requested_at"]),
        s(&a["expires_at"]),
    );
    if let Some(by) = a["decided_by"].as_str() {
        t.push_str(&format!("\n  decided by {by} at {}", s(&a["decided_at"])));
    }
    if let Some(u) = a["valid_until"].as_str() {
        t.push_str(&format!(" · holds until {u}"));
    }
    if let Some(n) = a["note"].as_str() {
        t.push_str(&format!("\n  note: {n}"));
    }
    t
}

pub async fn approve(
    c: &Client,
    id: &str,
    for_: Option<&str>,
    note: Option<&str>,
    out: Out,
) -> Result<i32> {
    let body = serde_json::json!({"for": for_, "note": note});
    let raw = c
        .call_value(
            Method::POST,
            &format!("/v1/approvals/{}/approve", crate::app::path_segment(id)),
            Some(&body),
        )
        .await?;
    if out.json {
        out.json_value(&raw);
    } else {
        out.text(&format!(
            "{} approved until {}",
            s(&raw["id"]),
            s(&raw["valid_until"])
        ));
    }
    Ok(0)
}

pub async fn deny(c: &Client, id: &str, reason: &str, out: Out) -> Result<i32> {
    let body = serde_json::json!({"reason": reason});
    let raw = c
        .call_value(
            Method::POST,
            &format!("/v1/approvals/{}/deny", crate::app::path_segment(id)),
            Some(&body),
        )
        .await?;
    if out.json {
        out.json_value(&raw);
    } else {
        out.text(&format!("{} denied: {reason}", s(&raw["id"])));
    }
    Ok(0)
}

fn read_input(p: &Path) -> Result<String> {
    if p == Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        Ok(t)
    } else {
        std::fs::read_to_string(p)
            .map_err(|e| Error::invalid(format!("cannot read {}: {e}", p.display())))
    }
}

pub async fn plan(c: &Client, cmd: &PlanCmd, out: Out) -> Result<i32> {
    match cmd {
        PlanCmd::Submit { session, file } => {
            let id = session.parse::<brig_core::SessionId>().map(String::from)?;
            let text = read_input(file)?;
            let body: Value = serde_json::from_str(&text).map_err(|e| {
                Error::invalid(format!("{}: not JSON: {e}", file.display()))
                    .hint("a plan is {\"goal\": ..., \"steps\": [...], \"blast_radius\": {\"files\": [], \"services\": [], \"data\": []}, \"rollback\": ...}")
            })?;
            let raw = c
                .call_value(
                    Method::POST,
                    &format!("/v1/sessions/{id}/plans"),
                    Some(&body),
                )
                .await?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&format!("plan {} submitted for {id}", s(&raw["id"])));
            }
            Ok(0)
        }
        PlanCmd::Show { session } => {
            let id = session.parse::<brig_core::SessionId>().map(String::from)?;
            let (plans, raw) = c
                .get::<Vec<Value>>(&format!("/v1/sessions/{id}/plans"))
                .await?;
            if out.json {
                out.json_value(&raw);
                return Ok(0);
            }
            let mut t = String::new();
            for p in &plans {
                t.push_str(&format!(
                    "{} · {} · goal: {}\n",
                    s(&p["id"]),
                    s(&p["submitted_at"]),
                    s(&p["goal"])
                ));
                for (i, step) in p["steps"].as_array().into_iter().flatten().enumerate() {
                    t.push_str(&format!("  {}. {}\n", i + 1, s(step)));
                }
                let br = &p["blast_radius"];
                let list = |k: &str| {
                    br[k]
                        .as_array()
                        .map(|v| v.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                };
                t.push_str(&format!(
                    "  blast radius: files [{}] services [{}] data [{}]\n  rollback: {}\n",
                    list("files"),
                    list("services"),
                    list("data"),
                    s(&p["rollback"])
                ));
            }
            if plans.is_empty() {
                t = format!("session {id} has no plan");
            }
            out.text(t.trim_end());
            Ok(0)
        }
    }
}

/// The deployment's engine, built from brig.toml like `brig serve` does.
fn engine(config: Option<&Path>) -> Result<brig_server::policy::Policy> {
    let cfg = crate::server::load_config(config)?;
    brig_server::policy::Policy::build(&cfg)
}

pub fn policy(config: Option<&Path>, cmd: &PolicyCmd, out: Out) -> Result<i32> {
    match cmd {
        PolicyCmd::Lint { files } => {
            let mut texts = Vec::new();
            for f in files {
                texts.push((f.display().to_string(), read_input(f)?));
            }
            let refs: Vec<(&str, &str)> = texts
                .iter()
                .map(|(n, t)| (n.as_str(), t.as_str()))
                .collect();
            let diags = brig_policy::lint(&refs);
            let errors = diags
                .iter()
                .filter(|d| d.severity == brig_policy::Severity::Error)
                .count();
            if out.json {
                out.json_value(&serde_json::json!({"ok": errors == 0, "diagnostics": diags}));
            } else if diags.is_empty() {
                out.text(&format!("{} file(s): no findings", files.len()));
            } else {
                let t: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
                out.text(&t.join("\n"));
            }
            // Exit 2 (invalid input) when a policy does not validate.
            Ok(if errors == 0 { 0 } else { 2 })
        }
        PolicyCmd::Test { file } => {
            let p = engine(config)?;
            let text = read_input(file)?;
            let req: brig_policy::Request = serde_json::from_str(&text).map_err(|e| {
                Error::invalid(format!("{}: not a policy request: {e}", file.display()))
                    .hint("e.g. {\"action\": \"git.push\", \"agent\": {\"session\": \"s-1\", \"human\": {\"id\": \"ada\"}, \"task\": \"T-1\", \"profile\": \"pr\"}, \"repo\": \"app\", \"branch\": \"main\", \"force\": false, \"bot_branch\": false, \"sensitive\": []} (docs/POLICY.md)")
            })?;
            let d = p.engine.authorize(&req);
            if out.json {
                out.json_value(&serde_json::to_value(&d).unwrap_or_default());
            } else {
                out.text(&brig_policy::explain(&d));
            }
            // Exit 9 (denied) when it is not allowed, so scripts can assert.
            Ok(if d.is_allowed() { 0 } else { 9 })
        }
        PolicyCmd::Show => {
            let p = engine(config)?;
            let mut all = serde_json::Map::new();
            for name in p.engine.profiles() {
                let set = format!("profile:{name}");
                let pol = p.engine.policies(&set).or_else(|| p.engine.policies(&name));
                all.insert(name, serde_json::to_value(pol).unwrap_or_default());
            }
            let dep = p.engine.policies(brig_policy::DEPLOYMENT_SET);
            if out.json {
                out.json_value(&serde_json::json!({"digest": p.engine.digest(), "profiles": all, "deployment": dep}));
                return Ok(0);
            }
            let mut t = format!("policy digest {}\n", p.engine.digest());
            let mut section = |title: &str, v: &Value| {
                t.push_str(&format!("\n{title}\n"));
                for r in v.as_array().into_iter().flatten() {
                    t.push_str(&format!(
                        "  {:<7} {:<36} {}{}\n",
                        s(&r["effect"]),
                        s(&r["id"]),
                        short(&s(&r["reason"]), 90),
                        r["approval"]
                            .as_str()
                            .map(|a| format!(" [approval: {a}]"))
                            .unwrap_or_default()
                    ));
                }
            };
            for (name, v) in &all {
                section(&format!("profile {name}"), v);
            }
            section("deployment", &serde_json::to_value(dep).unwrap_or_default());
            out.text(t.trim_end());
            Ok(0)
        }
    }
}
