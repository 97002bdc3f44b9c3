//! `brig creds list SESSION`: what a session holds of its profile's
//! secrets (issue 6). Names, scopes, hosts, expiry and state; never a value
//! or a placeholder.

use brig_core::Result;
use clap::Subcommand;

use crate::client::Client;
use crate::output::Out;
use crate::term;

#[derive(Subcommand, Debug)]
pub enum CredsCmd {
    /// The session's credentials, the latest state of each.
    #[command(alias = "ls")]
    List { session: String },
    /// Revoke one credential now (its placeholder is refused from then on).
    Revoke { session: String, name: String },
}

pub async fn run(c: &Client, cmd: &CredsCmd, out: Out) -> Result<i32> {
    match cmd {
        CredsCmd::Revoke { session, name } => {
            let id = session.parse::<brig_core::SessionId>().map(String::from)?;
            let raw = c
                .call_value::<()>(
                    hyper::Method::POST,
                    &format!(
                        "/v1/sessions/{id}/credentials/{}/revoke",
                        crate::app::path_segment(name)
                    ),
                    None,
                )
                .await?;
            if out.json {
                out.json_value(&raw);
            } else {
                out.text(&format!("{} revoked", raw["name"].as_str().unwrap_or(name)));
            }
            Ok(0)
        }
        CredsCmd::List { session } => {
            let id = session.parse::<brig_core::SessionId>().map(String::from)?;
            let (list, raw) = c
                .get::<Vec<serde_json::Value>>(&format!("/v1/sessions/{id}/credentials"))
                .await?;
            if out.json {
                out.json_value(&raw);
            } else if list.is_empty() {
                out.note(&format!("session {id} holds no credentials"));
            } else {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            s(&c["name"]),
                            s(&c["scope"]),
                            s(&c["origin"]),
                            c["hosts"]
                                .as_array()
                                .map(|h| {
                                    h.iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default(),
                            s(&c["expires_at"]),
                            s(&c["state"]),
                        ]
                    })
                    .collect();
                out.text(&term::table(
                    &["NAME", "SCOPE", "ORIGIN", "HOSTS", "EXPIRES", "STATE"],
                    &rows,
                ));
            }
            Ok(0)
        }
    }
}
