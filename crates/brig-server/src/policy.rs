//! Cedar policy in the control plane (issue 7; docs/POLICY.md): the engine
//! built from `[policy]` at start (a policy that does not compile stops
//! brig from starting), each session's principal, and the journal's form
//! of a decision. Handlers ask here; they never decide with `if`s.

use std::sync::Arc;

use brig_core::event::{Event, Outcome};
use brig_core::session::SessionInfo;
use brig_core::{Error, ErrorKind, Result};
use brig_policy::{AgentPrincipal, Decision, HumanPrincipal, PolicyEngine, SensitivityMatcher};

use crate::config::ServerConfig;
use crate::manager::session_event;

/// The deployment's policies and sensitivity patterns.
pub struct Policy {
    pub engine: Arc<PolicyEngine>,
    pub sensitivity: SensitivityMatcher,
}

impl Policy {
    /// Read and check `[policy]` (files relative to brig.toml's directory),
    /// and that every `[profiles.NAME] policy` names a policy profile.
    pub fn build(cfg: &ServerConfig) -> Result<Policy> {
        let bad = |e: brig_policy::PolicyError| {
            Error::invalid(format!("[policy]: {e}")).hint("the [policy] keys and the shipped policies are in docs/POLICY.md; `brig policy lint FILE` checks a policy file")
        };
        let spec =
            brig_policy::EngineSpec::from_config(&cfg.policy, &cfg.config_dir).map_err(bad)?;
        let engine = PolicyEngine::new(&spec).map_err(bad)?;
        let sensitivity = cfg.policy.sensitive.compile().map_err(bad)?;
        let known = engine.profiles();
        for (name, p) in &cfg.profiles {
            if !known.contains(&p.policy) {
                return Err(Error::invalid(format!(
                    "[profiles.{name}] policy = {:?} is not a policy profile",
                    p.policy
                ))
                .hint(format!(
                    "use one of {} (or add [policy.profiles.{}])",
                    known.join(", "),
                    p.policy
                )));
            }
        }
        Ok(Policy {
            engine: Arc::new(engine),
            sensitivity,
        })
    }

    /// The principal of `info`'s session under its profile's policy.
    pub fn agent(&self, info: &SessionInfo, policy_profile: &str) -> AgentPrincipal {
        AgentPrincipal::new(
            info.id.to_string(),
            HumanPrincipal::new(info.human.clone()),
            info.task.to_string(),
            policy_profile.to_string(),
        )
    }
}

/// The journal's form of a decision: `policy.decision`, its rule the
/// deciding policy, its details the whole decision (the policies and their
/// reasons).
pub fn decision_event(info: Option<&SessionInfo>, d: &Decision) -> Event {
    let outcome = match d.outcome {
        brig_policy::Outcome::Allow => Outcome::Success,
        brig_policy::Outcome::Deny => Outcome::Denied,
        brig_policy::Outcome::NeedsApproval { .. } => Outcome::Info,
    };
    let mut ev = match info {
        Some(i) => session_event(i, "policy.decision", outcome),
        None => Event::new("policy.decision", outcome),
    };
    if info.is_none() && d.principal.starts_with("human:") {
        ev.human = Some(d.principal.trim_start_matches("human:").to_string());
    }
    ev.rule(d.rule().to_string())
        .details(serde_json::to_value(d).unwrap_or_default())
}

/// A denial as the API's error: which policy denied it, why, and how to
/// ask for access.
pub fn denied(d: &Decision) -> Error {
    let reason = d
        .determining
        .first()
        .map(|p| p.reason.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "no policy permits it (default deny)".to_string());
    Error::new(
        ErrorKind::Denied,
        format!(
            "policy denied {} on {}: {reason} [{}]",
            d.action,
            d.resource,
            d.rule()
        ),
    )
    .hint(match &d.outcome {
        brig_policy::Outcome::NeedsApproval { roles, .. } => format!(
            "this needs a human's approval (role {}): see `brig approvals list`",
            roles.join(" or ")
        ),
        _ => format!(
            "ask an administrator to change the session's policy profile or the policy {}; `brig policy test` shows what decides a request",
            d.rule()
        ),
    })
}

/// One session's agent before policy: its prebuilt entities, the
/// approvals it may wait for, and the journal its decisions go to. The
/// exec path and the git gateway both decide through it.
pub struct AgentGate {
    pub policy: Arc<Policy>,
    pub approvals: Option<Arc<crate::approvals::Approvals>>,
    pub db: crate::manager::Db,
    pub session: Arc<brig_policy::SessionPolicy>,
    /// The session as created (its id, human, task and repo name events).
    pub info: SessionInfo,
    /// Approvals seen granted, by action and resource, with their
    /// `valid_until`: the synchronous connect path uses them.
    pub granted:
        std::sync::Mutex<std::collections::HashMap<String, (brig_policy::Approval, String)>>,
}

fn grant_key(action: &str, resource: &str) -> String {
    format!("{action}\0{resource}")
}

impl AgentGate {
    async fn journal(&self, d: &Decision) {
        let ev = decision_event(Some(&self.info), d);
        let (db, id) = (self.db.clone(), self.info.id.clone());
        let write = async move {
            if let Err(e) = db.write(move |s| s.append_event(&ev).map(|_| ())).await {
                tracing::error!(session = %id, error = %e, "could not journal a policy decision");
            }
        };
        // An allowed exec or push must not wait for a journal commit of its
        // own (the exec's start event follows anyway); a refusal is
        // journaled before the caller hears it.
        if d.is_allowed() {
            tokio::spawn(write);
        } else {
            write.await;
        }
    }

    /// Decide `r` (on `resource`, as an approval request names it). When
    /// policy asks for a human's approval: an approval already held is
    /// used; otherwise a request is made (or the pending one reused) and,
    /// with `wait`, waited for up to `[approvals] wait` after `say` tells
    /// the agent what it waits for. Every decision is journaled.
    pub async fn decide(
        &self,
        r: brig_policy::Request,
        resource: &str,
        wait: bool,
        say: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Decision> {
        let d = self.policy.engine.authorize_session(&self.session, &r);
        self.journal(&d).await;
        let (roles, policies) = match &d.outcome {
            brig_policy::Outcome::Allow => return Ok(d),
            brig_policy::Outcome::Deny => return Err(denied(&d)),
            brig_policy::Outcome::NeedsApproval { roles, policies } => {
                (roles.clone(), policies.clone())
            }
        };
        let approvals = self.approvals.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::GuardUnavailable,
                "this needs a human's approval, but [approvals] is not usable",
            )
        })?;
        let labels = match &r.action {
            brig_policy::Action::Exec { sensitive, .. }
            | brig_policy::Action::GitPush { sensitive, .. }
            | brig_policy::Action::NetConnect { sensitive, .. }
            | brig_policy::Action::SecretUse { sensitive, .. } => sensitive.join(","),
            _ => String::new(),
        };
        let ask = crate::approvals::Ask {
            action: d.action.clone(),
            resource: resource.to_string(),
            capability: if labels.is_empty() {
                policies.join(",")
            } else {
                labels
            },
            roles,
            policies,
            reason: d
                .determining
                .iter()
                .map(|p| p.reason.clone())
                .collect::<Vec<_>>()
                .join(" "),
        };
        let mut rec = match approvals.held(&self.info, &ask).await? {
            Some(a) => a,
            None => approvals.request(&self.info, &ask).await?,
        };
        if rec.state == "pending" {
            say(crate::approvals::waiting_message(&rec));
            if !wait {
                return Err(
                    Error::new(ErrorKind::Denied, crate::approvals::waiting_message(&rec))
                        .hint("try again once it is approved"),
                );
            }
            rec = approvals.wait_for(&rec.id, approvals.wait()).await?;
        }
        match rec.state.as_str() {
            "approved" => {
                let approval = brig_policy::Approval {
                    by: rec.decided_by.clone().unwrap_or_default(),
                    roles: rec.roles.clone(),
                };
                if let Some(until) = &rec.valid_until {
                    self.granted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            grant_key(&d.action, resource),
                            (approval.clone(), until.clone()),
                        );
                }
                let again = r.with_approval(approval);
                let d2 = self.policy.engine.authorize_session(&self.session, &again);
                self.journal(&d2).await;
                if d2.is_allowed() {
                    Ok(d2)
                } else {
                    Err(denied(&d2))
                }
            }
            "denied" => Err(Error::new(
                ErrorKind::Denied,
                format!(
                    "approval {} was denied by {}: {}",
                    rec.id,
                    rec.decided_by.as_deref().unwrap_or("?"),
                    rec.note.as_deref().unwrap_or("no reason given")
                ),
            )
            .hint("change the plan, or ask the approver what would be acceptable")),
            "pending" => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "approval {} is still pending after {}",
                    rec.id,
                    brig_core::units::format_duration(approvals.wait())
                ),
            )
            .hint(format!("retry once a human ran `brig approve {}`", rec.id))),
            other => Err(
                Error::new(ErrorKind::Denied, format!("approval {} is {other}", rec.id))
                    .hint("retry: a new request is made"),
            ),
        }
    }
}

impl AgentGate {
    /// Decide `r` synchronously, on a connection's or request's path (a
    /// decision is microseconds): with an approval already seen granted
    /// for it while that holds. A refusal is journaled, and one that needs
    /// an approval also makes the request, in the background: the agent
    /// tries again once a human approved it. `again` says how.
    pub fn check_now(
        self: &Arc<Self>,
        r: brig_policy::Request,
        resource: String,
        again: &str,
    ) -> std::result::Result<(Decision, bool), brig_proxy::GuardDenial> {
        let held = {
            let granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
            granted
                .get(&grant_key(r.action_name(), &resource))
                .filter(|(_, until)| *until > brig_core::event::now_rfc3339())
                .map(|(a, _)| a.clone())
        };
        let with_approval = held.is_some();
        let d = match held {
            Some(a) => self
                .policy
                .engine
                .authorize_session(&self.session, &r.clone().with_approval(a)),
            None => self.policy.engine.authorize_session(&self.session, &r),
        };
        if d.is_allowed() {
            return Ok((d, with_approval));
        }
        let reason = d
            .determining
            .first()
            .map(|p| p.reason.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("no policy permits {} here (default deny)", d.action));
        let rule = d.rule().to_string();
        let how = match &d.outcome {
            brig_policy::Outcome::NeedsApproval { roles, .. } => format!(
                "a human with role {} approves it (`brig approvals list`, then `brig approve ID`); {again} once approved",
                roles.join(" or ")
            ),
            _ => "ask for a session whose policy profile allows it (`brig policy test` shows what decides it)".into(),
        };
        let gate = self.clone();
        tokio::spawn(async move {
            let _ = gate.decide(r, &resource, false, &|_| {}).await;
        });
        Err(brig_proxy::GuardDenial { rule, reason, how })
    }
}

/// Cedar's `net.connect` on every destination the egress policy let
/// through, on the connection's path (allowed ones are journaled as the
/// proxy's own `net.connect` events).
pub struct ConnectGate(pub Arc<AgentGate>);

impl brig_proxy::ConnectGuard for ConnectGate {
    fn check(
        &self,
        host: &str,
        port: u16,
        method: Option<&str>,
        path: Option<&str>,
    ) -> std::result::Result<(), brig_proxy::GuardDenial> {
        let g = &self.0;
        let labels = g.policy.sensitivity.label_host(host);
        let r = brig_policy::Request::net_connect(g.session.agent(), host, port, method, path)
            .with_labels(&labels);
        g.check_now(r, format!("{host}:{port}"), "connect again")
            .map(|_| ())
    }
}

/// Cedar's `model.call` on each call to the model gateway, once routing
/// named the model (allowed calls are journaled as `model.call` events;
/// refusals also as `policy.decision`).
pub struct ModelGate(pub Arc<AgentGate>);

impl brig_model::ModelGuard for ModelGate {
    fn check(&self, model: &str) -> std::result::Result<(), (String, String)> {
        let g = &self.0;
        let r = brig_policy::Request::model_call(g.session.agent(), model);
        g.check_now(r, model.to_string(), "call again")
            .map(|_| ())
            .map_err(|d| (d.rule, format!("{} ({})", d.reason, d.how)))
    }
}

/// Cedar's `secret.use` each time the proxy is about to put a secret's
/// value into a request to one of its bound hosts. The session's secrets
/// otherwise as they are; the first allowed use of a secret at a host is
/// journaled (later ones are in each request's event, `secrets`), every
/// refusal is.
pub struct SecretGate {
    pub secrets: Arc<crate::secrets::SessionSecrets>,
    pub gate: Arc<AgentGate>,
    /// (secret, host) already allowed without an approval.
    allowed: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl SecretGate {
    pub fn new(secrets: Arc<crate::secrets::SessionSecrets>, gate: Arc<AgentGate>) -> Self {
        SecretGate {
            secrets,
            gate,
            allowed: Default::default(),
        }
    }
}

impl brig_proxy::SecretInjector for SecretGate {
    fn placeholders(&self) -> Arc<brig_proxy::inject::Placeholders> {
        self.secrets.placeholders()
    }
    fn intercept(&self, host: &str) -> bool {
        self.secrets.intercept(host)
    }
    fn used(&self, name: &str, host: &str) {
        self.secrets.used(name, host)
    }
    fn authorize(
        &self,
        name: &str,
        host: &str,
    ) -> std::result::Result<(), brig_proxy::GuardDenial> {
        let key = (name.to_string(), host.to_string());
        if self
            .allowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Ok(());
        }
        // A secret the session holds no grant record of has no scope to be
        // allowed by: refused (fail closed).
        let scope = self.secrets.scope_of(name).unwrap_or_default();
        let g = &self.gate;
        let r = brig_policy::Request::secret_use(g.session.agent(), name, &scope);
        let (d, with_approval) = g.check_now(r, name.to_string(), "send the request again")?;
        if with_approval {
            // Held only while the approval does: decided again next time.
            return Ok(());
        }
        self.allowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        let gate = g.clone();
        tokio::spawn(async move { gate.journal(&d).await });
        Ok(())
    }
}
