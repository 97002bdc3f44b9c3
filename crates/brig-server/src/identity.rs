//! Who is calling the API (issue 7; docs/IDENTITY.md): every request
//! carries a [`Caller`], set by the listener's auth layer. On the unix
//! socket (mode 0600: only brig's own user, root, can connect) the caller
//! is the local administrator; on TCP it is whoever the bearer token
//! belongs to.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// The authenticated human behind an API request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `local:<user>`, `oidc:<iss>#<sub>`, `token:<name>`.
    pub id: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    /// `local`, `oidc`, `token`.
    pub via: &'static str,
}

impl Caller {
    /// The socket's peer: the machine's administrator.
    pub fn local_admin() -> Caller {
        Caller {
            id: "local:root".into(),
            groups: vec![],
            roles: vec!["admin".into()],
            via: "local",
        }
    }

    /// The holder of the deployment's static `[tcp]` bearer token.
    pub fn static_token() -> Caller {
        Caller {
            id: "token:tcp".into(),
            groups: vec![],
            roles: vec!["admin".into()],
            via: "token",
        }
    }

    /// The caller as the policy engine's principal.
    pub fn human(&self) -> brig_policy::HumanPrincipal {
        brig_policy::HumanPrincipal {
            id: self.id.clone(),
            groups: self.groups.clone(),
            roles: self.roles.clone(),
        }
    }

    /// Whether the caller may name another human for a session it creates
    /// (the local administrator acting for a local user, as `sudo brig`
    /// does); everyone else creates sessions as themselves.
    pub fn may_act_for_others(&self) -> bool {
        self.via == "local"
    }
}

/// The unix listener's layer: every request is the local administrator's.
pub async fn local_caller(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(Caller::local_admin());
    next.run(req).await
}
