//! Typed requests: callers say what is being done, never write Cedar. A
//! [`Request`] is plain data (serde: the JSON form `brig policy test` reads
//! and the journal keeps); the engine turns it into Cedar entities and a
//! schema-checked context.

use serde::{Deserialize, Serialize};

/// A signed-in human: the OIDC subject, their groups and roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanPrincipal {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl HumanPrincipal {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }
    pub fn with_groups(mut self, groups: &[&str]) -> Self {
        self.groups = groups.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn with_roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// A session's service principal `agent:<session>`: linked to exactly one
/// human and one task, running under one profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPrincipal {
    pub session: String,
    pub human: HumanPrincipal,
    pub task: String,
    pub profile: String,
}

impl AgentPrincipal {
    pub fn new(
        session: impl Into<String>,
        human: HumanPrincipal,
        task: impl Into<String>,
        profile: impl Into<String>,
    ) -> Self {
        Self {
            session: session.into(),
            human,
            task: task.into(),
            profile: profile.into(),
        }
    }
    /// `agent:<session>`, the name in journal events.
    pub fn name(&self) -> String {
        format!("agent:{}", self.session)
    }
}

/// Approvals a request carries (from the approvals store): who granted them
/// (`human:<id>` or `rule:<id>` for a standing rule; several joined with
/// `,`) and in which roles (the union of every approval held).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub roles: Vec<String>,
}

/// What a request does, one variant per Cedar action. The serde tag is the
/// Cedar action name (`{"action": "git.push", ...}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action")]
pub enum Action {
    #[serde(rename = "exec")]
    Exec {
        agent: AgentPrincipal,
        argv: Vec<String>,
        #[serde(default)]
        sensitive: Vec<String>,
    },
    #[serde(rename = "net.connect")]
    NetConnect {
        agent: AgentPrincipal,
        host: String,
        port: u16,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        sensitive: Vec<String>,
    },
    #[serde(rename = "git.fetch")]
    GitFetch { agent: AgentPrincipal, repo: String },
    #[serde(rename = "git.push")]
    GitPush {
        agent: AgentPrincipal,
        repo: String,
        branch: String,
        #[serde(default)]
        force: bool,
        bot_branch: bool,
        #[serde(default)]
        sensitive: Vec<String>,
    },
    #[serde(rename = "pr.open")]
    PrOpen {
        agent: AgentPrincipal,
        repo: String,
        head: String,
        base: String,
        bot_branch: bool,
        gate_passed: bool,
    },
    #[serde(rename = "secret.use")]
    SecretUse {
        agent: AgentPrincipal,
        name: String,
        scope: String,
        #[serde(default)]
        sensitive: Vec<String>,
    },
    #[serde(rename = "model.call")]
    ModelCall {
        agent: AgentPrincipal,
        model: String,
    },
    #[serde(rename = "session.create")]
    SessionCreate {
        human: HumanPrincipal,
        repo: String,
        task: String,
        profile: String,
    },
    #[serde(rename = "session.kill")]
    SessionKill {
        human: HumanPrincipal,
        session: String,
        /// The human the session belongs to.
        owner: String,
        #[serde(default)]
        task: String,
        #[serde(default)]
        profile: String,
    },
    #[serde(rename = "session.use")]
    SessionUse {
        human: HumanPrincipal,
        session: String,
        /// The human the session belongs to.
        owner: String,
        /// Acting in it (exec, PR, ...), not only reading it.
        write: bool,
        /// What is done, e.g. `exec`, `events` (for the journal and policies).
        #[serde(default)]
        what: String,
    },
    #[serde(rename = "approval.grant")]
    ApprovalGrant {
        approver: HumanPrincipal,
        /// The human whose session asked.
        requester: String,
        request_id: String,
        /// The session that asked.
        #[serde(default)]
        session: String,
        /// The roles the approval asks for (`Outcome::NeedsApproval.roles`).
        roles: Vec<String>,
    },
    #[serde(rename = "policy.change")]
    PolicyChange {
        human: HumanPrincipal,
        /// The profile being changed ("" for the deployment set).
        #[serde(default)]
        profile: String,
    },
    /// Any other action name, with a resource as a Cedar entity uid
    /// (`Brig::Repo::"x"`) and no context: what `brig policy test --action`
    /// sends for a name brig has no builder for. Evaluated with the agent's
    /// profile; an action the schema does not declare is denied.
    #[serde(rename = "custom")]
    Custom {
        agent: AgentPrincipal,
        name: String,
        resource: String,
    },
}

/// An authorization request: an action and the approvals it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(flatten)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

fn strings(v: &[String]) -> Vec<String> {
    v.to_vec()
}

impl From<Action> for Request {
    fn from(action: Action) -> Self {
        Self {
            action,
            approval: None,
        }
    }
}

impl Request {
    /// An exec in the sandbox; `labels` from [`crate::SensitivityMatcher::label_command`].
    pub fn exec(agent: &AgentPrincipal, argv: &[String], labels: &[String]) -> Self {
        Action::Exec {
            agent: agent.clone(),
            argv: strings(argv),
            sensitive: strings(labels),
        }
        .into()
    }

    /// A connection out of the sandbox; method and path when the proxy saw
    /// an HTTP request. Add host labels with [`Request::with_labels`].
    pub fn net_connect(
        agent: &AgentPrincipal,
        host: &str,
        port: u16,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Self {
        Action::NetConnect {
            agent: agent.clone(),
            host: host.to_string(),
            port,
            method: method.map(String::from),
            path: path.map(String::from),
            sensitive: Vec::new(),
        }
        .into()
    }

    pub fn git_fetch(agent: &AgentPrincipal, repo: &str) -> Self {
        Action::GitFetch {
            agent: agent.clone(),
            repo: repo.to_string(),
        }
        .into()
    }

    /// A push of one ref; `labels` from [`crate::SensitivityMatcher::label_paths`]
    /// over the paths the pushed commits touch. Whether the branch is
    /// protected is the engine's `[policy] protected_branches`.
    pub fn git_push(
        agent: &AgentPrincipal,
        repo: &str,
        branch: &str,
        force: bool,
        bot_branch: bool,
        labels: &[String],
    ) -> Self {
        Action::GitPush {
            agent: agent.clone(),
            repo: repo.to_string(),
            branch: branch.to_string(),
            force,
            bot_branch,
            sensitive: strings(labels),
        }
        .into()
    }

    /// Open a pull request from `head` (a bot branch or not) into `base`,
    /// with the test gate's verdict on the head commit.
    pub fn pr_open(
        agent: &AgentPrincipal,
        repo: &str,
        head: &str,
        base: &str,
        bot_branch: bool,
        gate_passed: bool,
    ) -> Self {
        Action::PrOpen {
            agent: agent.clone(),
            repo: repo.to_string(),
            head: head.to_string(),
            base: base.to_string(),
            bot_branch,
            gate_passed,
        }
        .into()
    }

    pub fn secret_use(agent: &AgentPrincipal, name: &str, scope: &str) -> Self {
        Action::SecretUse {
            agent: agent.clone(),
            name: name.to_string(),
            scope: scope.to_string(),
            sensitive: Vec::new(),
        }
        .into()
    }

    pub fn model_call(agent: &AgentPrincipal, model: &str) -> Self {
        Action::ModelCall {
            agent: agent.clone(),
            model: model.to_string(),
        }
        .into()
    }

    pub fn session_create(human: &HumanPrincipal, repo: &str, task: &str, profile: &str) -> Self {
        Action::SessionCreate {
            human: human.clone(),
            repo: repo.to_string(),
            task: task.to_string(),
            profile: profile.to_string(),
        }
        .into()
    }

    /// `human` kills `session`, which belongs to `session_owner`.
    pub fn session_kill(human: &HumanPrincipal, session: &str, session_owner: &str) -> Self {
        Action::SessionKill {
            human: human.clone(),
            session: session.to_string(),
            owner: session_owner.to_string(),
            task: String::new(),
            profile: String::new(),
        }
        .into()
    }

    /// `human` reads (`write` false) or acts in (`write` true) `session`,
    /// which belongs to `session_owner`; `what` names the operation.
    pub fn session_use(
        human: &HumanPrincipal,
        session: &str,
        session_owner: &str,
        write: bool,
        what: &str,
    ) -> Self {
        Action::SessionUse {
            human: human.clone(),
            session: session.to_string(),
            owner: session_owner.to_string(),
            write,
            what: what.to_string(),
        }
        .into()
    }

    /// `approver` grants request `request_id` of `request_owner`'s session,
    /// which asks for `roles`.
    pub fn approval_grant(
        approver: &HumanPrincipal,
        request_owner: &str,
        request_id: &str,
        roles: &[String],
    ) -> Self {
        Action::ApprovalGrant {
            approver: approver.clone(),
            requester: request_owner.to_string(),
            request_id: request_id.to_string(),
            session: String::new(),
            roles: strings(roles),
        }
        .into()
    }

    /// A change of the policies of `profile` ("" = the deployment set).
    pub fn policy_change(human: &HumanPrincipal, profile: &str) -> Self {
        Action::PolicyChange {
            human: human.clone(),
            profile: profile.to_string(),
        }
        .into()
    }

    /// The request carrying the approvals granted for it.
    pub fn with_approval(mut self, approval: Approval) -> Self {
        self.approval = Some(approval);
        self
    }

    /// Add sensitivity labels (e.g. a host's, from
    /// [`crate::SensitivityMatcher::label_host`]) to an action that has them.
    pub fn with_labels(mut self, labels: &[String]) -> Self {
        match &mut self.action {
            Action::Exec { sensitive, .. }
            | Action::NetConnect { sensitive, .. }
            | Action::GitPush { sensitive, .. }
            | Action::SecretUse { sensitive, .. } => {
                for l in labels {
                    if !sensitive.contains(l) {
                        sensitive.push(l.clone());
                    }
                }
            }
            _ => {}
        }
        self
    }

    /// The Cedar action name (`exec`, `git.push`, ...; a custom action's
    /// own name).
    pub fn action_name(&self) -> &str {
        match &self.action {
            Action::Custom { name, .. } => name,
            Action::Exec { .. } => "exec",
            Action::NetConnect { .. } => "net.connect",
            Action::GitFetch { .. } => "git.fetch",
            Action::GitPush { .. } => "git.push",
            Action::PrOpen { .. } => "pr.open",
            Action::SecretUse { .. } => "secret.use",
            Action::ModelCall { .. } => "model.call",
            Action::SessionCreate { .. } => "session.create",
            Action::SessionKill { .. } => "session.kill",
            Action::SessionUse { .. } => "session.use",
            Action::ApprovalGrant { .. } => "approval.grant",
            Action::PolicyChange { .. } => "policy.change",
        }
    }

    /// The agent, for agent actions (evaluated with its profile's set).
    pub fn agent(&self) -> Option<&AgentPrincipal> {
        match &self.action {
            Action::Exec { agent, .. }
            | Action::NetConnect { agent, .. }
            | Action::GitFetch { agent, .. }
            | Action::GitPush { agent, .. }
            | Action::PrOpen { agent, .. }
            | Action::SecretUse { agent, .. }
            | Action::ModelCall { agent, .. }
            | Action::Custom { agent, .. } => Some(agent),
            _ => None,
        }
    }

    pub(crate) fn agent_mut(&mut self) -> Option<&mut AgentPrincipal> {
        match &mut self.action {
            Action::Exec { agent, .. }
            | Action::NetConnect { agent, .. }
            | Action::GitFetch { agent, .. }
            | Action::GitPush { agent, .. }
            | Action::PrOpen { agent, .. }
            | Action::SecretUse { agent, .. }
            | Action::ModelCall { agent, .. }
            | Action::Custom { agent, .. } => Some(agent),
            _ => None,
        }
    }

    /// The human, for human actions (evaluated with the deployment set).
    pub fn human(&self) -> Option<&HumanPrincipal> {
        match &self.action {
            Action::SessionCreate { human, .. }
            | Action::SessionKill { human, .. }
            | Action::SessionUse { human, .. }
            | Action::PolicyChange { human, .. } => Some(human),
            Action::ApprovalGrant { approver, .. } => Some(approver),
            _ => None,
        }
    }

    /// `agent:<session>` or `human:<id>`.
    pub fn principal_name(&self) -> String {
        match (self.agent(), self.human()) {
            (Some(a), _) => a.name(),
            (None, Some(h)) => format!("human:{}", h.id),
            (None, None) => String::new(),
        }
    }
}

impl Request {
    /// An action brig has no builder for (see [`Action::Custom`]).
    pub fn custom(agent: &AgentPrincipal, name: &str, resource: &str) -> Self {
        Action::Custom {
            agent: agent.clone(),
            name: name.to_string(),
            resource: resource.to_string(),
        }
        .into()
    }
}
