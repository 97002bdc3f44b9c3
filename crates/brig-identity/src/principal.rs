//! Principals: the human (or automation) behind a request, and the agent
//! principal `agent:<session>` every session runs as.

use brig_core::ids::{SessionId, TaskId};
use serde::{Deserialize, Serialize};

/// How a principal authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// An ID token from the configured IdP.
    Oidc,
    /// A unix-socket peer mapped to a local user.
    Local,
    /// An API token (automation).
    Token,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Oidc => "oidc",
            Via::Local => "local",
            Via::Token => "token",
        }
    }
}

/// A human or automation principal.
///
/// `id` is stable and unique: `oidc:<iss>#<sub>` (the IdP's subject never
/// changes, an email can) or `local:<user>`. `name` is what people read
/// (email, user name). Groups and roles are inputs to policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub via: Via,
}

impl Principal {
    /// `oidc:<iss>#<sub>`.
    pub fn oidc_id(issuer: &str, sub: &str) -> String {
        format!("oidc:{issuer}#{sub}")
    }

    /// `local:<user>`.
    pub fn local_id(user: &str) -> String {
        format!("local:{user}")
    }

    /// The same principal, authenticated by an API token it owns: the
    /// server looks the owner up by [`crate::TokenRecord::principal`] and
    /// marks how this request came in.
    pub fn via_token(mut self) -> Principal {
        self.via = Via::Token;
        self
    }
}

/// The prefix of every agent principal.
pub const AGENT_PREFIX: &str = "agent:";

/// `agent:<session>`.
pub fn agent_id(session: &SessionId) -> String {
    session.principal()
}

/// The session of an `agent:<session>` principal; `None` for anything else
/// (including a malformed session id).
pub fn parse_agent_id(id: &str) -> Option<SessionId> {
    id.strip_prefix(AGENT_PREFIX)?.parse().ok()
}

/// Whether a principal id is an agent's.
pub fn is_agent_id(id: &str) -> bool {
    id.starts_with(AGENT_PREFIX)
}

/// A session's service principal, linked to exactly one human and one task:
/// what the journal and policy see as `principal` (the human) and `agent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPrincipal {
    pub session: SessionId,
    /// The human's principal id (never another agent).
    pub human: String,
    pub task: TaskId,
}

impl AgentPrincipal {
    /// Refuses an agent as the human: an agent cannot start sessions of
    /// its own on someone's behalf.
    pub fn new(
        session: SessionId,
        human: &Principal,
        task: TaskId,
    ) -> Result<AgentPrincipal, crate::IdentityError> {
        if is_agent_id(&human.id) {
            return Err(crate::IdentityError::config(format!(
                "{} is an agent principal; a session's principal must be a human or automation principal",
                human.id
            )));
        }
        Ok(AgentPrincipal {
            session,
            human: human.id.clone(),
            task,
        })
    }

    /// `agent:<session>`.
    pub fn id(&self) -> String {
        agent_id(&self.session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_round_trip_and_nothing_else_parses() {
        let s = SessionId::generate();
        let id = agent_id(&s);
        assert_eq!(id, format!("agent:{s}"));
        assert_eq!(parse_agent_id(&id), Some(s.clone()));
        assert!(is_agent_id(&id));
        for bad in [
            "agent:",
            "agent:s-x",
            "local:alice",
            "agent:S-ABCDEFGHJK",
            "",
        ] {
            assert_eq!(parse_agent_id(bad), None, "{bad}");
        }
        let human = Principal {
            id: Principal::local_id("alice"),
            name: "alice".into(),
            email: None,
            groups: vec![],
            roles: vec![],
            via: Via::Local,
        };
        let task: TaskId = "JIRA-12".parse().unwrap();
        let a = AgentPrincipal::new(s.clone(), &human, task.clone()).unwrap();
        assert_eq!((a.id(), a.human.as_str()), (id.clone(), "local:alice"));
        let agent_as_human = Principal {
            id,
            ..human.clone()
        };
        assert!(AgentPrincipal::new(s, &agent_as_human, task).is_err());
        assert_eq!(
            serde_json::to_value(&human).unwrap()["via"],
            serde_json::json!("local")
        );
    }
}
