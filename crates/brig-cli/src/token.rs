//! `brig token create|list|revoke`: API tokens for automation (issue 7).
//! A token acts as whoever created it; it is shown once (stdout, alone on
//! its line, so `$(brig token create ci)` works) and the server keeps only
//! its hash.

use brig_core::Result;
use clap::Subcommand;
use hyper::Method;

use crate::client::Client;
use crate::output::Out;
use crate::term;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a token acting as you (shown once).
    Create {
        /// What it is for (1-64 characters, no spaces), e.g. ci-nightly.
        name: String,
        /// How long it is valid (default: the server's [identity.tokens] default_ttl).
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<String>,
    },
    /// Your tokens (an admin's: everyone's); never the tokens themselves.
    #[command(alias = "ls")]
    List,
    /// Revoke a token now.
    #[command(alias = "rm")]
    Revoke { id: String },
}

fn parse_ttl(s: &str) -> std::result::Result<String, String> {
    match brig_core::units::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("ttl {s:?} must be greater than zero")),
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(c: &Client, cmd: &TokenCmd, out: Out) -> Result<i32> {
    match cmd {
        TokenCmd::Create { name, ttl } => {
            let body = serde_json::json!({ "name": name, "ttl": ttl });
            let v = c
                .call_value(Method::POST, "/v1/tokens", Some(&body))
                .await?;
            if out.json {
                out.json_value(&v);
            } else {
                out.text(v["token"].as_str().unwrap_or_default());
                out.note(&format!(
                    "token {} ({}) expires {}; it is shown only now: keep it in a secret store",
                    v["id"].as_str().unwrap_or("-"),
                    v["name"].as_str().unwrap_or("-"),
                    v["expires"].as_str().unwrap_or("-"),
                ));
            }
            Ok(0)
        }
        TokenCmd::List => {
            let (list, raw) = c.get::<Vec<serde_json::Value>>("/v1/tokens").await?;
            if out.json {
                out.json_value(&raw);
            } else if list.is_empty() {
                out.note("no API tokens (issue one with `brig token create NAME`)");
            } else {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            s(&t["id"]),
                            s(&t["name"]),
                            s(&t["principal"]),
                            s(&t["expires"]),
                            s(&t["last_used"]),
                            s(&t["state"]),
                        ]
                    })
                    .collect();
                out.text(&term::table(
                    &["ID", "NAME", "PRINCIPAL", "EXPIRES", "LAST USED", "STATE"],
                    &rows,
                ));
            }
            Ok(0)
        }
        TokenCmd::Revoke { id } => {
            let v = c
                .call_value::<()>(
                    Method::DELETE,
                    &format!("/v1/tokens/{}", crate::app::path_segment(id)),
                    None,
                )
                .await?;
            if out.json {
                out.json_value(&v);
            } else {
                out.text(&format!("{} revoked", v["id"].as_str().unwrap_or(id)));
            }
            Ok(0)
        }
    }
}
