//! `brig model log SESSION`: the conversation a session had with models
//! through brig's gateway, replayed from what was captured (redacted), and
//! `brig report cost`: tokens, spend and sandbox-hours per day or month.

use brig_core::{Error, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::Client;
use crate::output::Out;
use crate::term;

#[derive(Subcommand, Debug)]
pub enum ModelCmd {
    /// Replay a session's model calls: each request's messages and the answer.
    Log {
        session: String,
        /// Only the last N calls.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Tokens, model spend and sandbox-hours per day or month, by user, task or session.
    Cost(CostArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    User,
    Task,
    Session,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

#[derive(Args, Debug)]
pub struct CostArgs {
    /// From this time: RFC 3339 or an age (7d, 12h); default 30 days.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    #[arg(long, value_enum, default_value = "user")]
    pub by: By,
    #[arg(long, value_enum, default_value = "day")]
    pub period: Period,
}

pub async fn run(c: &Client, cmd: &ModelCmd, out: Out) -> Result<i32> {
    let ModelCmd::Log { session, limit } = cmd;
    let id = session.parse::<brig_core::SessionId>().map(String::from)?;
    let path = match limit {
        Some(n) => format!("/v1/sessions/{id}/model-calls?limit={n}"),
        None => format!("/v1/sessions/{id}/model-calls"),
    };
    let (calls, raw) = c.get::<Vec<Value>>(&path).await?;
    if out.json {
        out.json_value(&raw);
        return Ok(0);
    }
    if calls.is_empty() {
        out.text(&format!("session {id} made no model calls"));
        return Ok(0);
    }
    let mut t = String::new();
    for call in &calls {
        t.push_str(&render_call(call));
        t.push('\n');
    }
    out.text(t.trim_end());
    Ok(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The text of a message's content: a string, or an array of parts.
fn content_text(c: &Value) -> String {
    match c {
        Value::String(x) => x.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match s(&p["type"]) {
                "text" | "input_text" | "output_text" => s(&p["text"]).to_string(),
                "tool_use" => format!("[tool call {}({})]", s(&p["name"]), p["input"]),
                "tool_result" => format!("[tool result] {}", content_text(&p["content"])),
                "image" | "image_url" | "input_image" => "[image]".to_string(),
                "" => content_text(p),
                other => format!("[{other}]"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn one_line(x: &str, max: usize) -> String {
    let flat: String = x.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}…", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

/// What was asked: the messages of chat/messages requests, the input of
/// responses/embeddings; a payload kept as a digest says so.
fn request_lines(req: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if req.get("sha256").is_some() && req.get("messages").is_none() {
        out.push(format!(
            "  (request of {} bytes kept as sha256 {}: {})",
            req["size"],
            s(&req["sha256"]),
            one_line(s(&req["excerpt"]), 120)
        ));
        return out;
    }
    if let Some(sys) = req.get("system").filter(|v| !v.is_null()) {
        out.push(format!("  system: {}", one_line(&content_text(sys), 200)));
    }
    if let Some(ms) = req["messages"].as_array() {
        for m in ms {
            let mut text = content_text(&m["content"]);
            if let Some(tc) = m["tool_calls"].as_array() {
                for c in tc {
                    text.push_str(&format!(
                        " [tool call {}({})]",
                        s(&c["function"]["name"]),
                        s(&c["function"]["arguments"])
                    ));
                }
            }
            out.push(format!("  {}: {}", s(&m["role"]), one_line(&text, 200)));
        }
    }
    match &req["input"] {
        Value::Null => {}
        Value::String(x) => out.push(format!("  input: {}", one_line(x, 200))),
        Value::Array(items) => {
            for i in items {
                let role = i["role"].as_str().unwrap_or("input");
                let text = if i.is_string() {
                    s(i).to_string()
                } else {
                    content_text(&i["content"])
                };
                out.push(format!("  {role}: {}", one_line(&text, 200)));
            }
        }
        other => out.push(format!("  input: {}", one_line(&other.to_string(), 200))),
    }
    out
}

/// What came back: OpenAI choices, Anthropic content blocks, responses
/// output items, or the gateway's reassembled stream.
fn response_lines(resp: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(choices) = resp["choices"].as_array() {
        for ch in choices {
            let m = &ch["message"];
            let mut text = content_text(&m["content"]);
            if let Some(tc) = m["tool_calls"].as_array() {
                for c in tc {
                    text.push_str(&format!(
                        " [tool call {}({})]",
                        s(&c["function"]["name"]),
                        s(&c["function"]["arguments"])
                    ));
                }
            }
            out.push(format!("  assistant: {}", one_line(&text, 400)));
        }
    } else if resp["content"].is_array() || resp["content"].is_string() {
        out.push(format!(
            "  assistant: {}",
            one_line(&content_text(&resp["content"]), 400)
        ));
    } else if let Some(items) = resp["output"].as_array() {
        for i in items {
            match s(&i["type"]) {
                "function_call" => out.push(format!(
                    "  assistant: [tool call {}({})]",
                    s(&i["name"]),
                    s(&i["arguments"])
                )),
                _ => out.push(format!(
                    "  assistant: {}",
                    one_line(&content_text(&i["content"]), 400)
                )),
            }
        }
    } else if let Some(text) = resp["text"].as_str() {
        out.push(format!("  assistant: {}", one_line(text, 400)));
    }
    if let Some(tc) = resp["tool_calls"].as_array() {
        for c in tc {
            let name = c["name"]
                .as_str()
                .or(c["function"]["name"].as_str())
                .unwrap_or("");
            let args = c["arguments"]
                .as_str()
                .or(c["function"]["arguments"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| c["input"].to_string());
            out.push(format!(
                "  assistant: [tool call {name}({})]",
                one_line(&args, 200)
            ));
        }
    }
    out
}

fn render_call(c: &Value) -> String {
    let model = s(&c["model"]);
    let target = match (c["upstream"].as_str(), c["upstream_model"].as_str()) {
        (Some(u), Some(m)) => format!(" → {u}/{m}"),
        _ => String::new(),
    };
    let cost = c["cost_usd"]
        .as_f64()
        .map(|x| format!(" · ${x:.6}"))
        .unwrap_or_default();
    let mut t = format!(
        "── {} {} {model}{target} · {} {} · {} in / {} out tokens{cost} · {:.0} ms{}\n",
        s(&c["time"]),
        s(&c["endpoint"]),
        c["status"],
        s(&c["outcome"]),
        c["input_tokens"],
        c["output_tokens"],
        c["latency_ms"].as_f64().unwrap_or(0.0),
        if c["stream"] == true {
            " · stream"
        } else {
            ""
        },
    );
    if let Some(rule) = c["rule"].as_str() {
        t.push_str(&format!("  rule: {rule}\n"));
    }
    for l in request_lines(&c["request"]) {
        t.push_str(&l);
        t.push('\n');
    }
    for l in response_lines(&c["response"]) {
        t.push_str(&l);
        t.push('\n');
    }
    if let Some(e) = c["error"].as_str() {
        t.push_str(&format!("  error: {}\n", one_line(e, 300)));
    }
    t
}

pub async fn report(c: &Client, cmd: &ReportCmd, out: Out) -> Result<i32> {
    let ReportCmd::Cost(a) = cmd;
    let by = match a.by {
        By::User => "user",
        By::Task => "task",
        By::Session => "session",
    };
    let period = match a.period {
        Period::Day => "day",
        Period::Month => "month",
    };
    let mut path = format!("/v1/reports/cost?by={by}&period={period}");
    if let Some(since) = &a.since {
        let t = crate::journal::parse_since(since).map_err(|e: Error| e.context("--since"))?;
        path.push_str(&format!("&since={}", crate::journal::enc(&t)));
    }
    let (r, raw) = c.get::<Value>(&path).await?;
    if out.json {
        out.json_value(&raw);
        return Ok(0);
    }
    let usd = |v: &Value| format!("{:.4}", v.as_f64().unwrap_or(0.0));
    let rows: Vec<Vec<String>> = r["lines"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    vec![
                        s(&l["period"]).to_string(),
                        s(&l["key"]).to_string(),
                        l["calls"].to_string(),
                        l["input_tokens"].to_string(),
                        l["output_tokens"].to_string(),
                        usd(&l["cost_usd"]),
                        format!("{:.2}", l["sandbox_hours"].as_f64().unwrap_or(0.0)),
                        usd(&l["sandbox_usd"]),
                        usd(&l["total_usd"]),
                        usd(&l["planned_usd"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let tt = &r["totals"];
    let mut text = term::table(
        &[
            period.to_uppercase().as_str(),
            by.to_uppercase().as_str(),
            "CALLS",
            "IN TOKENS",
            "OUT TOKENS",
            "MODEL $",
            "SANDBOX H",
            "SANDBOX $",
            "TOTAL $",
            "BLUEPRINT $",
        ],
        &rows,
    );
    text.push_str(&format!(
        "\nsince {}: {} calls, {} tokens in, {} out; model ${} + sandbox ${} ({:.2} h at ${}/h) = ${}; the blueprint's model (${}/h of model spend + sandbox) for the same hours: ${}",
        s(&r["since"]),
        tt["calls"],
        tt["input_tokens"],
        tt["output_tokens"],
        usd(&tt["model_usd"]),
        usd(&tt["sandbox_usd"]),
        tt["sandbox_hours"].as_f64().unwrap_or(0.0),
        r["cost_model"]["sandbox_hour_usd"],
        usd(&tt["total_usd"]),
        r["cost_model"]["planned_model_usd_per_hour"],
        usd(&tt["planned_usd"]),
    ));
    out.text(&text);
    Ok(0)
}
