//! The engine: brig's schema, the policy sets (one per profile, one for the
//! deployment), and `authorize`.
//!
//! Which set decides: an agent action (exec, net.connect, git.*, pr.open,
//! secret.use, model.call) is decided by the set of the agent's profile
//! (base + the profile's template + its extras + `[policy] extra`); a human
//! action (session.create, session.kill, approval.grant, policy.change) by
//! the deployment set (deployment.cedar + `[policy] deployment` + `[policy]
//! extra`). The request names its principal, so the set is never a
//! separate argument that could disagree with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, RestrictedExpression, Schema, Validator,
};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Diagnostic, Severity};
use crate::request::{Action, AgentPrincipal, HumanPrincipal, Request};
use crate::sensitive::Sensitivity;
use crate::source::{load, Loaded, PolicyEffect, PolicyRef, PolicySource};
use crate::PolicyError;

/// brig's Cedar schema (human format), namespace `Brig`.
pub const SCHEMA: &str = include_str!("../schema.cedarschema");

/// The policies in every agent profile.
pub const BASE: &str = include_str!("../policies/base.cedar");
/// The deployment set: human actions.
pub const DEPLOYMENT: &str = include_str!("../policies/deployment.cedar");

/// The shipped profile templates, in rollout order.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("read-only", include_str!("../policies/read-only.cedar")),
    ("pr", include_str!("../policies/pr.cedar")),
    ("privileged", include_str!("../policies/privileged.cedar")),
];

/// The name of the deployment set in decisions (`policy_set`).
pub const DEPLOYMENT_SET: &str = "deployment";

/// Every shipped source under the names decisions use
/// (`shipped:base.cedar`, ...): what `brig policy show` prints.
pub fn shipped_sources() -> Vec<PolicySource> {
    let mut v = vec![
        PolicySource::new("shipped:base.cedar", BASE),
        PolicySource::new("shipped:deployment.cedar", DEPLOYMENT),
    ];
    for (name, text) in TEMPLATES {
        v.push(PolicySource::new(format!("shipped:{name}.cedar"), *text));
    }
    v
}

fn template(name: &str) -> Option<&'static str> {
    TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// `[policy]` of brig.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Lets a human approve their own session's request (off: the shipped
    /// `deploy.no-self-approval` forbids it).
    pub allow_self_approval: bool,
    /// Branch names (globs; `*` stays within one `/` component, `**`
    /// crosses) that are protected: no agent pushes there, in any profile.
    pub protected_branches: Vec<String>,
    /// Policy files added to every agent profile and to the deployment set.
    pub extra: Vec<PathBuf>,
    /// Policy files added to the deployment set only.
    pub deployment: Vec<PathBuf>,
    /// Extra policy files of a shipped profile, or a new profile built on
    /// a shipped template.
    pub profiles: BTreeMap<String, ProfileConfig>,
    pub sensitive: Sensitivity,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allow_self_approval: false,
            protected_branches: default_protected(),
            extra: Vec::new(),
            deployment: Vec::new(),
            profiles: BTreeMap::new(),
            sensitive: Sensitivity::default(),
        }
    }
}

fn default_protected() -> Vec<String> {
    [
        "main",
        "master",
        "trunk",
        "develop",
        "release/**",
        "release-*",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `[policy.profiles.NAME]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The shipped template the profile starts from (default: its own
    /// name, which must then be read-only, pr or privileged).
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub extra: Vec<PathBuf>,
}

/// One profile of the engine: a template and the policy sources added to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSpec {
    pub name: String,
    pub template: String,
    pub extra: Vec<PolicySource>,
}

/// Everything the engine is built from, as text (no I/O in [`PolicyEngine::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSpec {
    pub profiles: Vec<ProfileSpec>,
    /// Added to every agent profile and to the deployment set.
    pub extra: Vec<PolicySource>,
    /// Added to the deployment set only.
    pub deployment: Vec<PolicySource>,
    pub allow_self_approval: bool,
    pub protected_branches: Vec<String>,
}

impl Default for EngineSpec {
    /// The three shipped profiles, the shipped deployment set, nothing extra.
    fn default() -> Self {
        Self {
            profiles: TEMPLATES
                .iter()
                .map(|(n, _)| ProfileSpec {
                    name: n.to_string(),
                    template: n.to_string(),
                    extra: Vec::new(),
                })
                .collect(),
            extra: Vec::new(),
            deployment: Vec::new(),
            allow_self_approval: false,
            protected_branches: default_protected(),
        }
    }
}

impl EngineSpec {
    /// Read the files `[policy]` names; relative paths are under `base_dir`
    /// (brig.toml's directory).
    pub fn from_config(config: &PolicyConfig, base_dir: &Path) -> Result<Self, PolicyError> {
        let read = |paths: &[PathBuf]| -> Result<Vec<PolicySource>, PolicyError> {
            paths
                .iter()
                .map(|p| PolicySource::read(&base_dir.join(p)))
                .collect()
        };
        let mut spec = Self {
            extra: read(&config.extra)?,
            deployment: read(&config.deployment)?,
            allow_self_approval: config.allow_self_approval,
            protected_branches: config.protected_branches.clone(),
            ..Self::default()
        };
        for (name, p) in &config.profiles {
            let tpl = p.template.clone().unwrap_or_else(|| name.clone());
            if template(&tpl).is_none() {
                return Err(PolicyError::UnknownTemplate {
                    profile: name.clone(),
                    template: tpl,
                });
            }
            let extra = read(&p.extra)?;
            match spec.profiles.iter_mut().find(|s| &s.name == name) {
                Some(s) => {
                    s.template = tpl;
                    s.extra = extra;
                }
                None => spec.profiles.push(ProfileSpec {
                    name: name.clone(),
                    template: tpl,
                    extra,
                }),
            }
        }
        Ok(spec)
    }
}

/// The outcome of a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Denied now, allowed once humans holding `roles` approve: every
    /// forbid that decided carries `@approval`, and a permit applies
    /// without them.
    NeedsApproval {
        roles: Vec<String>,
        policies: Vec<String>,
    },
}

/// A decision and what decided it: what the journal stores (`rule` =
/// [`Decision::rule`], details = this, as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(flatten)]
    pub outcome: Outcome,
    pub action: String,
    /// `agent:<session>` or `human:<id>`.
    pub principal: String,
    /// The Cedar resource, e.g. `Brig::Branch::"acme/app:main"`.
    pub resource: String,
    /// `profile:<name>` or `deployment`.
    pub policy_set: String,
    /// Allow: the permits that applied. Deny / NeedsApproval: the forbids
    /// that applied (empty: no permit applied, Cedar's default deny).
    pub determining: Vec<PolicyRef>,
    /// Evaluation errors. An error in a forbid makes the decision Deny
    /// (fail closed: the forbid might have applied).
    pub errors: Vec<String>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }

    /// The one rule name for the journal: the first determining policy's
    /// id, `default-deny` when nothing permitted, `error` when the request
    /// could not be evaluated at all.
    pub fn rule(&self) -> &str {
        match self.determining.first() {
            Some(p) => &p.id,
            None if self.outcome == Outcome::Allow => "allow",
            None if !self.errors.is_empty() => "error",
            None => "default-deny",
        }
    }

    fn failed(req: &Request, policy_set: String, error: String) -> Self {
        Self {
            outcome: Outcome::Deny,
            action: req.action_name().to_string(),
            principal: req.principal_name(),
            resource: String::new(),
            policy_set,
            determining: Vec::new(),
            errors: vec![error],
        }
    }
}

/// One action's policies in one set, indexed by their resource scope, so
/// a decision evaluates only the policies that can apply. Cedar evaluates
/// every policy it is given (about 1 µs each); a policy whose action or
/// resource scope excludes the request can never apply, so leaving it out
/// changes no decision.
#[derive(Debug, Default)]
struct ActionSet {
    /// Policies whose resource scope names no entity (`resource`,
    /// `resource is T`): candidates for every request.
    unscoped: PolicySet,
    /// Policies whose scope names an entity (`resource == E`, `resource in
    /// E`, `resource is T in E`), by E; each set is `unscoped` plus them.
    scoped: HashMap<EntityUid, PolicySet>,
    /// Whether any of its forbids carries `@approval`.
    has_approval: bool,
}

impl ActionSet {
    /// The candidates for a resource with these scope keys (the resource
    /// and its ancestors: exact, since brig builds every entity itself).
    fn select(&self, keys: &[EntityUid]) -> std::borrow::Cow<'_, PolicySet> {
        use std::borrow::Cow;
        let mut hits = keys.iter().filter_map(|k| self.scoped.get(k));
        match (hits.next(), hits.next()) {
            (None, _) => Cow::Borrowed(&self.unscoped),
            (Some(one), None) => Cow::Borrowed(one),
            (Some(a), Some(b)) => {
                // Scoped to the branch and to its repo: rare, merged here.
                let mut merged = a.clone();
                for extra in std::iter::once(b).chain(hits) {
                    for p in extra.policies() {
                        if merged.policy(p.id()).is_none() {
                            let _ = merged.add(p.clone());
                        }
                    }
                }
                Cow::Owned(merged)
            }
        }
    }
}

#[derive(Debug)]
struct CompiledSet {
    name: String,
    by_action: HashMap<String, ActionSet>,
    meta: HashMap<PolicyId, PolicyRef>,
    /// For an action no policy names: nothing applies, default deny.
    empty: ActionSet,
}

impl CompiledSet {
    fn actions(&self, action: &str) -> &ActionSet {
        self.by_action.get(action).unwrap_or(&self.empty)
    }
}

/// Cedar names, built once.
#[derive(Debug)]
struct Names {
    agent: EntityTypeName,
    human: EntityTypeName,
    group: EntityTypeName,
    repo: EntityTypeName,
    branch: EntityTypeName,
    host: EntityTypeName,
    secret: EntityTypeName,
    model: EntityTypeName,
    command: EntityTypeName,
    session: EntityTypeName,
    approval_request: EntityTypeName,
    deployment: EntityTypeName,
}

impl Names {
    fn new() -> Result<Self, PolicyError> {
        let t = |s: &str| {
            EntityTypeName::from_str(&format!("Brig::{s}"))
                .map_err(|e| PolicyError::Schema(format!("type name {s}: {e}")))
        };
        Ok(Self {
            agent: t("Agent")?,
            human: t("Human")?,
            group: t("Group")?,
            repo: t("Repo")?,
            branch: t("Branch")?,
            host: t("Host")?,
            secret: t("Secret")?,
            model: t("Model")?,
            command: t("Command")?,
            session: t("Session")?,
            approval_request: t("ApprovalRequest")?,
            deployment: t("Deployment")?,
        })
    }
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_string())
}

fn set<'a>(v: impl IntoIterator<Item = &'a String>) -> RestrictedExpression {
    RestrictedExpression::new_set(v.into_iter().map(|x| s(x)))
}

/// An entity not yet evaluated: built only when the session cache misses.
type Raw = (
    EntityUid,
    Vec<(&'static str, RestrictedExpression)>,
    HashSet<EntityUid>,
);

fn materialize(raw: Vec<Raw>) -> Result<Vec<Entity>, String> {
    raw.into_iter().map(|(u, a, p)| entity(u, a, p)).collect()
}

/// What determines a session request's resource entities (none for human
/// actions, which the session path does not take, and custom ones).
fn cache_key(req: &Request) -> Option<String> {
    Some(match &req.action {
        Action::Exec { argv, .. } => {
            let p = argv
                .first()
                .map_or("", |a| a.rsplit('/').next().unwrap_or(a));
            format!("c\0{p}")
        }
        Action::NetConnect { host, .. } => format!("h\0{host}"),
        Action::GitFetch { repo, .. } => format!("r\0{repo}"),
        Action::GitPush {
            repo,
            branch,
            bot_branch,
            ..
        } => format!("b\0{repo}\0{branch}\0{bot_branch}"),
        Action::PrOpen {
            repo,
            head,
            bot_branch,
            ..
        } => format!("b\0{repo}\0{head}\0{bot_branch}"),
        Action::SecretUse { name, scope, .. } => format!("s\0{name}\0{scope}"),
        Action::ModelCall { model, .. } => format!("m\0{model}"),
        _ => return None,
    })
}

/// The resource and its ancestors: the keys of the resource-scope index.
fn scope_keys(resource: &EntityUid, raw: &[Raw]) -> Vec<EntityUid> {
    let mut keys = vec![resource.clone()];
    if let Some((_, _, parents)) = raw.iter().find(|(u, _, _)| u == resource) {
        keys.extend(parents.iter().cloned());
    }
    keys
}

fn entity(
    uid: EntityUid,
    attrs: Vec<(&str, RestrictedExpression)>,
    parents: HashSet<EntityUid>,
) -> Result<Entity, String> {
    let attrs: HashMap<String, RestrictedExpression> =
        attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Entity::new(uid, attrs, parents).map_err(|e| format!("entity: {e}"))
}

/// How many resources a session keeps complete entity sets for.
const SESSION_CACHE: usize = 256;

/// The entities of one agent session, built once at session start (the
/// agent, its human, their groups), plus a small cache of complete entity
/// sets per resource the session used (the programs it runs, the hosts it
/// reaches, its branch), so a repeated decision builds only its context.
/// Keep one per session (`Send + Sync`; share it behind an `Arc`).
#[derive(Debug)]
pub struct SessionPolicy {
    agent: AgentPrincipal,
    principal: EntityUid,
    entities: Entities,
    by_resource: std::sync::Mutex<HashMap<String, std::sync::Arc<Entities>>>,
}

impl SessionPolicy {
    pub fn agent(&self) -> &AgentPrincipal {
        &self.agent
    }
}

/// brig's policy engine. Cheap to share (`Send + Sync`); rebuild it to
/// change policy.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Schema,
    authorizer: Authorizer,
    profiles: HashMap<String, CompiledSet>,
    deployment: CompiledSet,
    protected: GlobSet,
    allow_self_approval: bool,
    names: Names,
    actions: HashMap<String, EntityUid>,
    digest: String,
}

impl PolicyEngine {
    /// Build the engine. Every source is parsed and validated against the
    /// schema in strict mode; any error (a parse error, an unknown type or
    /// attribute, a duplicate `@id` within one set, a template) refuses the
    /// whole engine, with every error named by file, line and column.
    pub fn new(spec: &EngineSpec) -> Result<Self, PolicyError> {
        let (schema, _) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let validator = Validator::new(schema.clone());
        let names = Names::new()?;
        let actions: HashMap<String, EntityUid> = schema
            .actions()
            .map(|a| (a.id().unescaped().to_string(), a.clone()))
            .collect();

        // Load every distinct source once (base and extras are shared).
        let mut errors: Vec<Diagnostic> = Vec::new();
        // Keyed by name and text: two different files may share a name.
        let mut cache: HashMap<(String, String), Vec<Loaded>> = HashMap::new();
        let mut hasher = Sha256::new();
        let mut get = |src: &PolicySource, errors: &mut Vec<Diagnostic>| -> Vec<Loaded> {
            let key = (src.name.clone(), src.text.clone());
            if let Some(l) = cache.get(&key) {
                return l.clone();
            }
            hasher.update(src.name.len().to_be_bytes());
            hasher.update(src.name.as_bytes());
            hasher.update(src.text.len().to_be_bytes());
            hasher.update(src.text.as_bytes());
            let (loaded, diags) = load(src, &validator);
            errors.extend(diags.into_iter().filter(|d| d.severity == Severity::Error));
            cache.insert(key, loaded.clone());
            loaded
        };

        let base = PolicySource::new("shipped:base.cedar", BASE);
        let mut profiles = HashMap::new();
        for p in &spec.profiles {
            let Some(text) = template(&p.template) else {
                return Err(PolicyError::UnknownTemplate {
                    profile: p.name.clone(),
                    template: p.template.clone(),
                });
            };
            let tpl = PolicySource::new(format!("shipped:{}.cedar", p.template), text);
            let mut policies = get(&base, &mut errors);
            policies.extend(get(&tpl, &mut errors));
            for x in spec.extra.iter().chain(&p.extra) {
                policies.extend(get(x, &mut errors));
            }
            let set = compile(
                &format!("profile:{}", p.name),
                policies,
                &actions,
                &mut errors,
            );
            profiles.insert(p.name.clone(), set);
        }
        let dep = PolicySource::new("shipped:deployment.cedar", DEPLOYMENT);
        let mut policies = get(&dep, &mut errors);
        for x in spec.extra.iter().chain(&spec.deployment) {
            policies.extend(get(x, &mut errors));
        }
        let deployment = compile(DEPLOYMENT_SET, policies, &actions, &mut errors);
        if !errors.is_empty() {
            errors.dedup();
            return Err(PolicyError::Invalid(errors));
        }

        let mut b = GlobSetBuilder::new();
        for pattern in &spec.protected_branches {
            let g = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| PolicyError::ProtectedBranches {
                    pattern: pattern.clone(),
                    message: e.kind().to_string(),
                })?;
            b.add(g);
        }
        let protected = b.build().map_err(|e| PolicyError::ProtectedBranches {
            pattern: String::new(),
            message: e.to_string(),
        })?;
        hasher.update([u8::from(spec.allow_self_approval)]);
        for p in &spec.protected_branches {
            hasher.update(p.as_bytes());
            hasher.update([0]);
        }

        Ok(Self {
            schema,
            authorizer: Authorizer::new(),
            profiles,
            deployment,
            protected,
            allow_self_approval: spec.allow_self_approval,
            names,
            actions,
            digest: hex::encode(hasher.finalize()),
        })
    }

    /// The shipped profiles and deployment set, nothing extra.
    pub fn shipped() -> Result<Self, PolicyError> {
        Self::new(&EngineSpec::default())
    }

    /// sha256 over every loaded source and setting: journal it with a
    /// policy change (old and new digest) and with each session's start.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The profile names, sorted.
    pub fn profiles(&self) -> Vec<String> {
        let mut v: Vec<String> = self.profiles.keys().cloned().collect();
        v.sort();
        v
    }

    /// The policies of a set (`profile:<name>` or a bare profile name, or
    /// `deployment`), sorted by id.
    pub fn policies(&self, set: &str) -> Option<Vec<PolicyRef>> {
        let set = if set == DEPLOYMENT_SET {
            &self.deployment
        } else {
            self.profiles
                .get(set.strip_prefix("profile:").unwrap_or(set))?
        };
        let mut v: Vec<PolicyRef> = set.meta.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Some(v)
    }

    /// Whether `[policy] protected_branches` protects `branch`.
    pub fn is_protected(&self, branch: &str) -> bool {
        self.protected.is_match(branch)
    }

    /// Build an agent's entities once, at session start. Fails when the
    /// profile is unknown or the principal does not fit the schema.
    pub fn session(&self, agent: &AgentPrincipal) -> Result<SessionPolicy, PolicyError> {
        let err = |message: String| PolicyError::Session {
            session: agent.session.clone(),
            message,
        };
        if !self.profiles.contains_key(&agent.profile) {
            return Err(err(self.unknown_profile(&agent.profile)));
        }
        let (principal, ents) = self.agent_entities(agent).map_err(err)?;
        let entities = Entities::from_entities(ents, Some(&self.schema))
            .map_err(|e| err(format!("principal {}: {e}", agent.name())))?;
        Ok(SessionPolicy {
            agent: agent.clone(),
            principal,
            entities,
            by_resource: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Decide a request. Never panics, never fails open: anything that
    /// cannot be evaluated is a Deny with the reason in `errors`.
    pub fn authorize(&self, req: &Request) -> Decision {
        let (set, principal, mut ents) = match (req.agent(), req.human()) {
            (Some(agent), _) => {
                let Some(set) = self.profiles.get(&agent.profile) else {
                    return Decision::failed(
                        req,
                        format!("profile:{}", agent.profile),
                        self.unknown_profile(&agent.profile),
                    );
                };
                match self.agent_entities(agent) {
                    Ok((p, e)) => (set, p, e),
                    Err(e) => return Decision::failed(req, set.name.clone(), e),
                }
            }
            (None, Some(human)) => match self.human_entities(human) {
                Ok((p, e)) => (&self.deployment, p, e),
                Err(e) => return Decision::failed(req, self.deployment.name.clone(), e),
            },
            (None, None) => {
                return Decision::failed(req, String::new(), "request has no principal".into())
            }
        };
        let (resource, context, raw) = match self.resource_and_context(req) {
            Ok(x) => x,
            Err(e) => return Decision::failed(req, set.name.clone(), e),
        };
        let keys = scope_keys(&resource, &raw);
        let entities = match materialize(raw).and_then(|mut r| {
            ents.append(&mut r);
            Entities::from_entities(ents, Some(&self.schema)).map_err(|e| format!("entities: {e}"))
        }) {
            Ok(e) => e,
            Err(e) => return Decision::failed(req, set.name.clone(), e),
        };
        self.decide(
            req, set, principal, resource, &keys, context, &entities, true,
        )
    }

    /// Decide a request of the session's agent with its prebuilt entities
    /// (what the exec, connect and push paths call).
    pub fn authorize_session(&self, session: &SessionPolicy, req: &Request) -> Decision {
        let set_name = || format!("profile:{}", session.agent.profile);
        if req.agent() != Some(&session.agent) {
            return Decision::failed(
                req,
                set_name(),
                format!(
                    "request is not by this session's agent {} (a request names its own principal)",
                    session.agent.name()
                ),
            );
        }
        let Some(set) = self.profiles.get(&session.agent.profile) else {
            return Decision::failed(
                req,
                set_name(),
                self.unknown_profile(&session.agent.profile),
            );
        };
        let (resource, context, raw) = match self.resource_and_context(req) {
            Ok(x) => x,
            Err(e) => return Decision::failed(req, set.name.clone(), e),
        };
        let keys = scope_keys(&resource, &raw);
        let key = cache_key(req);
        let cached = key.as_ref().and_then(|k| {
            session
                .by_resource
                .lock()
                .ok()
                .and_then(|m| m.get(k).cloned())
        });
        let entities = match cached {
            Some(e) => e,
            None => {
                let built = materialize(raw).and_then(|r| {
                    session
                        .entities
                        .clone()
                        .add_entities(r, Some(&self.schema))
                        .map_err(|e| format!("entities: {e}"))
                });
                let built = match built {
                    Ok(e) => std::sync::Arc::new(e),
                    Err(e) => return Decision::failed(req, set.name.clone(), e),
                };
                if let (Some(k), Ok(mut m)) = (key, session.by_resource.lock()) {
                    if m.len() < SESSION_CACHE {
                        m.insert(k, built.clone());
                    }
                }
                built
            }
        };
        // The context is built from typed fields (tests check it against the
        // schema on the `authorize` path); only a custom request, whose
        // shape nobody checked, is validated here. Either way a forbid that
        // cannot be evaluated denies (fail closed).
        let validate = matches!(req.action, Action::Custom { .. });
        self.decide(
            req,
            set,
            session.principal.clone(),
            resource,
            &keys,
            context,
            &entities,
            validate,
        )
    }

    /// The profiles (sorted) under which this agent request would be
    /// allowed or would need approval: the "how to ask for access" of a
    /// denial. Evaluates the request once per profile; call it when
    /// explaining a denial, not on the hot path. Empty for human actions.
    pub fn profiles_allowing(&self, req: &Request) -> Vec<String> {
        let Some(agent) = req.agent() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in self.profiles() {
            let mut other = req.clone();
            if let Some(a) = other.agent_mut() {
                a.profile = name.clone();
            }
            if name != agent.profile && self.authorize(&other).outcome != Outcome::Deny {
                out.push(name);
            }
        }
        out
    }

    fn unknown_profile(&self, profile: &str) -> String {
        format!(
            "unknown profile {profile:?} (known: {}); add [policy.profiles.{profile}] to brig.toml",
            self.profiles().join(", ")
        )
    }

    #[allow(clippy::too_many_arguments)] // one private call shape, two callers
    fn decide(
        &self,
        req: &Request,
        set: &CompiledSet,
        principal: EntityUid,
        resource: EntityUid,
        keys: &[EntityUid],
        context: Context,
        entities: &Entities,
        validate: bool,
    ) -> Decision {
        let name = req.action_name();
        let resource_name = resource.to_string();
        let fail = |e: String| Decision {
            resource: resource_name.clone(),
            ..Decision::failed(req, set.name.clone(), e)
        };
        let Some(action) = self.actions.get(name) else {
            return fail(format!(
                "unknown action {name:?}: the schema has no such action, so nothing permits it"
            ));
        };
        let creq = match cedar_policy::Request::new(
            principal,
            action.clone(),
            resource,
            context,
            validate.then_some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => return fail(format!("request does not fit the schema: {e}")),
        };
        let aset = set.actions(name);
        let candidates = aset.select(keys);
        let resp = self.authorizer.is_authorized(&creq, &candidates, entities);
        let meta = |id: &PolicyId| -> PolicyRef {
            set.meta.get(id).cloned().unwrap_or_else(|| PolicyRef {
                id: id.to_string(),
                reason: String::new(),
                effect: PolicyEffect::Forbid,
                approval: None,
                source: String::new(),
            })
        };
        let mut errors = Vec::new();
        let mut forbid_errored = false;
        for e in resp.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            let m = meta(pe.policy_id());
            if m.effect == PolicyEffect::Forbid {
                forbid_errored = true;
            }
            errors.push(format!("policy {}: {}", m.id, pe.inner()));
        }
        let mut determining: Vec<PolicyRef> = resp.diagnostics().reason().map(meta).collect();
        determining.sort_by(|a, b| a.id.cmp(&b.id));
        let outcome = match resp.decision() {
            CedarDecision::Allow if forbid_errored => {
                errors.push("a forbid could not be evaluated: denied (fail closed)".into());
                determining.clear();
                Outcome::Deny
            }
            CedarDecision::Allow => Outcome::Allow,
            CedarDecision::Deny => {
                let all_approval = !determining.is_empty()
                    && determining
                        .iter()
                        .all(|p| p.effect == PolicyEffect::Forbid && p.approval.is_some());
                match aset.has_approval {
                    true if all_approval && !forbid_errored => {
                        // Would a permit allow it without the @approval forbids?
                        let mut sans = PolicySet::new();
                        for p in candidates.policies() {
                            let m = meta(p.id());
                            if !(m.effect == PolicyEffect::Forbid && m.approval.is_some()) {
                                let _ = sans.add(p.clone());
                            }
                        }
                        let r = self.authorizer.is_authorized(&creq, &sans, entities);
                        let sans_forbid_err = r.diagnostics().errors().any(|e| {
                            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                            meta(pe.policy_id()).effect == PolicyEffect::Forbid
                        });
                        if r.decision() == CedarDecision::Allow && !sans_forbid_err {
                            let roles: BTreeSet<String> = determining
                                .iter()
                                .filter_map(|p| p.approval.clone())
                                .collect();
                            Outcome::NeedsApproval {
                                roles: roles.into_iter().collect(),
                                policies: determining.iter().map(|p| p.id.clone()).collect(),
                            }
                        } else {
                            Outcome::Deny
                        }
                    }
                    _ => Outcome::Deny,
                }
            }
        };
        Decision {
            outcome,
            action: name.to_string(),
            principal: req.principal_name(),
            resource: resource_name,
            policy_set: set.name.clone(),
            determining,
            errors,
        }
    }

    fn human_entities(&self, h: &HumanPrincipal) -> Result<(EntityUid, Vec<Entity>), String> {
        let n = &self.names;
        let groups: BTreeSet<&String> = h.groups.iter().collect();
        let mut out = Vec::with_capacity(groups.len() + 2);
        let mut parents = HashSet::new();
        for g in groups {
            let g_uid = uid(&n.group, g);
            parents.insert(g_uid.clone());
            out.push(entity(g_uid, vec![("name", s(g))], HashSet::new())?);
        }
        let h_uid = uid(&n.human, &h.id);
        out.push(entity(
            h_uid.clone(),
            vec![("roles", set(&h.roles))],
            parents,
        )?);
        Ok((h_uid, out))
    }

    fn agent_entities(&self, a: &AgentPrincipal) -> Result<(EntityUid, Vec<Entity>), String> {
        let (h_uid, mut out) = self.human_entities(&a.human)?;
        let a_uid = uid(&self.names.agent, &a.session);
        out.push(entity(
            a_uid.clone(),
            vec![
                ("human", RestrictedExpression::new_entity_uid(h_uid)),
                ("task", s(&a.task)),
                ("profile", s(&a.profile)),
            ],
            HashSet::new(),
        )?);
        Ok((a_uid, out))
    }

    /// The resource uid, the context and the resource's entities.
    fn resource_and_context(
        &self,
        req: &Request,
    ) -> Result<(EntityUid, Context, Vec<Raw>), String> {
        let n = &self.names;
        let approval = {
            let (granted, by, roles) = match &req.approval {
                Some(a) => (true, a.by.as_str(), a.roles.as_slice()),
                None => (false, "", &[][..]),
            };
            RestrictedExpression::new_record([
                (
                    "granted".to_string(),
                    RestrictedExpression::new_bool(granted),
                ),
                ("by".to_string(), s(by)),
                ("roles".to_string(), set(roles)),
            ])
            .map_err(|e| format!("approval: {e}"))?
        };
        let none = HashSet::new;
        let mut ctx: Vec<(&str, RestrictedExpression)> = vec![("approval", approval)];
        let mut ents = Vec::with_capacity(2);
        let resource = match &req.action {
            Action::Exec {
                argv, sensitive, ..
            } => {
                let program = argv
                    .first()
                    .map(|a| a.rsplit('/').next().unwrap_or(a))
                    .unwrap_or("");
                ctx.push(("command", s(&argv.join(" "))));
                ctx.push(("program", s(program)));
                ctx.push(("args", set(argv.iter().skip(1))));
                ctx.push(("sensitive", set(sensitive)));
                let r = uid(&n.command, program);
                ents.push((r.clone(), vec![("name", s(program))], none()));
                r
            }
            Action::NetConnect {
                host,
                port,
                method,
                path,
                sensitive,
                ..
            } => {
                ctx.push(("host", s(host)));
                ctx.push(("port", RestrictedExpression::new_long(i64::from(*port))));
                if let Some(m) = method {
                    ctx.push(("method", s(m)));
                }
                if let Some(p) = path {
                    ctx.push(("path", s(p)));
                }
                ctx.push(("sensitive", set(sensitive)));
                let r = uid(&n.host, host);
                ents.push((r.clone(), vec![("name", s(host))], none()));
                r
            }
            Action::GitFetch { repo, .. } => {
                let r = uid(&n.repo, repo);
                ents.push((r.clone(), vec![("name", s(repo))], none()));
                r
            }
            Action::GitPush {
                repo,
                branch,
                force,
                bot_branch,
                sensitive,
                ..
            } => {
                ctx.push(("branch", s(branch)));
                ctx.push(("force", RestrictedExpression::new_bool(*force)));
                ctx.push(("is_bot_branch", RestrictedExpression::new_bool(*bot_branch)));
                ctx.push(("sensitive", set(sensitive)));
                self.branch(repo, branch, *bot_branch, &mut ents)?
            }
            Action::PrOpen {
                repo,
                head,
                base,
                bot_branch,
                gate_passed,
                ..
            } => {
                ctx.push(("base", s(base)));
                ctx.push(("gate_passed", RestrictedExpression::new_bool(*gate_passed)));
                self.branch(repo, head, *bot_branch, &mut ents)?
            }
            Action::SecretUse {
                name,
                scope,
                sensitive,
                ..
            } => {
                ctx.push(("sensitive", set(sensitive)));
                let r = uid(&n.secret, name);
                ents.push((
                    r.clone(),
                    vec![("name", s(name)), ("scope", s(scope))],
                    none(),
                ));
                r
            }
            Action::ModelCall { model, .. } => {
                let r = uid(&n.model, model);
                ents.push((r.clone(), vec![("name", s(model))], none()));
                r
            }
            Action::SessionCreate {
                repo,
                task,
                profile,
                ..
            } => {
                ctx.push(("task", s(task)));
                ctx.push(("profile", s(profile)));
                let r = uid(&n.repo, repo);
                ents.push((r.clone(), vec![("name", s(repo))], none()));
                r
            }
            Action::SessionKill {
                session,
                owner,
                task,
                profile,
                ..
            } => {
                let r = uid(&n.session, session);
                ents.push((
                    r.clone(),
                    vec![
                        (
                            "human",
                            RestrictedExpression::new_entity_uid(uid(&n.human, owner)),
                        ),
                        ("task", s(task)),
                        ("profile", s(profile)),
                    ],
                    none(),
                ));
                r
            }
            Action::SessionUse {
                session,
                owner,
                write,
                what,
                ..
            } => {
                ctx.push(("write", RestrictedExpression::new_bool(*write)));
                ctx.push(("what", s(what)));
                let r = uid(&n.session, session);
                ents.push((
                    r.clone(),
                    vec![
                        (
                            "human",
                            RestrictedExpression::new_entity_uid(uid(&n.human, owner)),
                        ),
                        ("task", s("")),
                        ("profile", s("")),
                    ],
                    none(),
                ));
                r
            }
            Action::ApprovalGrant {
                approver,
                requester,
                request_id,
                session,
                roles,
            } => {
                ctx.push(("request_id", s(request_id)));
                ctx.push(("approver", s(&approver.id)));
                ctx.push(("requester", s(requester)));
                ctx.push((
                    "self_approval_allowed",
                    RestrictedExpression::new_bool(self.allow_self_approval),
                ));
                let r = uid(&n.approval_request, request_id);
                ents.push((
                    r.clone(),
                    vec![
                        (
                            "requester",
                            RestrictedExpression::new_entity_uid(uid(&n.human, requester)),
                        ),
                        ("session", s(session)),
                        ("roles", set(roles)),
                    ],
                    none(),
                ));
                r
            }
            Action::PolicyChange { profile, .. } => {
                ctx.push(("profile", s(profile)));
                let r = uid(&n.deployment, "brig");
                ents.push((r.clone(), Vec::new(), none()));
                r
            }
            Action::Custom { resource, .. } => {
                // No context: whatever the action, a custom request carries
                // none, so a declared action fails the schema check.
                ctx.clear();
                EntityUid::from_str(resource)
                    .map_err(|e| format!("resource {resource:?} is not a Cedar entity uid: {e}"))?
            }
        };
        let context = Context::from_pairs(ctx.into_iter().map(|(k, v)| (k.to_string(), v)))
            .map_err(|e| format!("context: {e}"))?;
        Ok((resource, context, ents))
    }

    /// A branch entity (in its repo), protected per `[policy]`.
    fn branch(
        &self,
        repo: &str,
        branch: &str,
        bot: bool,
        ents: &mut Vec<Raw>,
    ) -> Result<EntityUid, String> {
        let n = &self.names;
        let repo_uid = uid(&n.repo, repo);
        // Git ref names cannot contain ':', so `<repo>:<branch>` is unique.
        let b = uid(&n.branch, &format!("{repo}:{branch}"));
        ents.push((
            b.clone(),
            vec![
                ("name", s(branch)),
                ("bot", RestrictedExpression::new_bool(bot)),
                (
                    "protected",
                    RestrictedExpression::new_bool(self.is_protected(branch)),
                ),
            ],
            HashSet::from([repo_uid.clone()]),
        ));
        ents.push((repo_uid, vec![("name", s(repo))], HashSet::new()));
        Ok(b)
    }
}

/// Split a set's policies by the actions their scope can match, and check
/// `@id`s are unique within the set.
fn compile(
    name: &str,
    policies: Vec<Loaded>,
    actions: &HashMap<String, EntityUid>,
    errors: &mut Vec<Diagnostic>,
) -> CompiledSet {
    let mut meta: HashMap<PolicyId, PolicyRef> = HashMap::new();
    // action -> (unscoped policies, scope entity -> its policies)
    type Split = (
        Vec<cedar_policy::Policy>,
        HashMap<EntityUid, Vec<cedar_policy::Policy>>,
    );
    let mut split: HashMap<String, Split> = HashMap::new();
    let mut has_approval: HashSet<String> = HashSet::new();
    for l in policies {
        let pid = l.policy.id().clone();
        if let Some(first) = meta.get(&pid) {
            errors.push(Diagnostic {
                source: l.meta.source.clone(),
                line: l.line,
                col: l.col,
                severity: Severity::Error,
                policy: Some(l.meta.id.clone()),
                message: format!(
                    "duplicate @id {:?} in policy set {name} (also in {}): ids must be unique within a set",
                    l.meta.id, first.source
                ),
            });
            continue;
        }
        let targets: Vec<&String> = match l.policy.action_constraint() {
            cedar_policy::ActionConstraint::Any => actions.keys().collect(),
            cedar_policy::ActionConstraint::Eq(a) => actions
                .iter()
                .filter(|(_, u)| **u == a)
                .map(|(k, _)| k)
                .collect(),
            // The schema has no action groups, so `in [..]` is membership.
            cedar_policy::ActionConstraint::In(list) => actions
                .iter()
                .filter(|(_, u)| list.contains(u))
                .map(|(k, _)| k)
                .collect(),
        };
        let scope = match l.policy.resource_constraint() {
            cedar_policy::ResourceConstraint::Eq(u)
            | cedar_policy::ResourceConstraint::In(u)
            | cedar_policy::ResourceConstraint::IsIn(_, u) => Some(u),
            cedar_policy::ResourceConstraint::Any | cedar_policy::ResourceConstraint::Is(_) => None,
        };
        let is_approval = l.meta.effect == PolicyEffect::Forbid && l.meta.approval.is_some();
        for a in targets {
            let entry = split.entry(a.clone()).or_default();
            match &scope {
                None => entry.0.push(l.policy.clone()),
                Some(u) => entry.1.entry(u.clone()).or_default().push(l.policy.clone()),
            }
            if is_approval {
                has_approval.insert(a.clone());
            }
        }
        meta.insert(pid, l.meta);
    }
    // Ids are unique within the set (checked above), so `add` cannot fail.
    let to_set = |ps: &[cedar_policy::Policy]| {
        let mut set = PolicySet::new();
        for p in ps {
            let _ = set.add(p.clone());
        }
        set
    };
    let by_action = split
        .into_iter()
        .map(|(a, (unscoped, scoped))| {
            let set = ActionSet {
                unscoped: to_set(&unscoped),
                scoped: scoped
                    .into_iter()
                    .map(|(u, ps)| {
                        let mut all = unscoped.clone();
                        all.extend(ps);
                        (u, to_set(&all))
                    })
                    .collect(),
                has_approval: has_approval.contains(&a),
            };
            (a, set)
        })
        .collect();
    CompiledSet {
        name: name.to_string(),
        by_action,
        meta,
        empty: ActionSet::default(),
    }
}

/// A decision as a human reads it: what was decided, by which policies and
/// why, and how to get access.
pub fn explain(d: &Decision) -> String {
    let mut out = String::new();
    let what = format!(
        "{} by {} on {} ({})",
        d.action, d.principal, d.resource, d.policy_set
    );
    let list = |out: &mut String, ps: &[PolicyRef]| {
        for p in ps {
            let effect = match p.effect {
                PolicyEffect::Permit => "permit",
                PolicyEffect::Forbid => "forbid",
            };
            out.push_str(&format!("\n  {effect} {} [{}]", p.id, p.source));
            if !p.reason.is_empty() {
                out.push_str(&format!(": {}", p.reason));
            }
        }
    };
    match &d.outcome {
        Outcome::Allow => {
            out.push_str(&format!("allowed: {what}"));
            list(&mut out, &d.determining);
        }
        Outcome::NeedsApproval { roles, .. } => {
            out.push_str(&format!(
                "needs approval: {what} waits until a human with role {} approves it",
                roles
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(" and a human with role ")
            ));
            list(&mut out, &d.determining);
            out.push_str(
                "\n  to proceed: ask a human holding the role to approve the request; approving your own request does not count unless [policy] allow_self_approval is set",
            );
        }
        Outcome::Deny if !d.errors.is_empty() && d.determining.is_empty() => {
            out.push_str(&format!(
                "denied: {what}: it could not be evaluated, so it is denied (fail closed)"
            ));
        }
        Outcome::Deny if d.determining.is_empty() => {
            out.push_str(&format!(
                "denied: {what}: no policy permits it (Cedar denies by default)\n  to get access: ask for a session whose profile permits {}, or an admin to add a permit for it (brig policy test shows what decides)",
                d.action
            ));
        }
        Outcome::Deny => {
            out.push_str(&format!("denied: {what}"));
            list(&mut out, &d.determining);
            out.push_str(
                "\n  a forbid always beats a permit: to get access, follow the reason above",
            );
        }
    }
    for e in &d.errors {
        out.push_str(&format!("\n  error: {e}"));
    }
    out
}
