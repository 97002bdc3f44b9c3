//! brig-policy: brig's policy engine. Cedar policies over brig's schema
//! decide every agent action (exec, net.connect, git.fetch, git.push,
//! pr.open, secret.use, model.call) and every human one (session.create,
//! session.kill, approval.grant, policy.change). Default deny; a forbid
//! beats any permit; a forbid marked `@approval("<role>")` turns a denial
//! into "needs approval" when a permit would otherwise allow the request.
//!
//! - [`PolicyEngine`]: schema, the profile sets (`read-only`, `pr`,
//!   `privileged`: the rollout phases, shipped as Cedar templates), the
//!   deployment set, `authorize` returning a [`Decision`] that names the
//!   policies that decided and is what the journal stores.
//! - [`Request`]: typed request builders; callers never write Cedar.
//! - [`Sensitivity`]: `[policy.sensitive]`, turning argv, pushed paths and
//!   hosts into the labels policies test (`context.sensitive`).
//! - [`lint`] and [`explain`] for `brig policy lint` and `brig policy test`.
//!
//! No I/O except [`PolicySource::read`] and [`EngineSpec::from_config`],
//! which read the policy files brig.toml names. See docs/POLICY.md.

mod engine;
mod error;
mod lint;
mod request;
mod sensitive;
mod source;

pub use engine::{
    explain, shipped_sources, Decision, EngineSpec, Outcome, PolicyConfig, PolicyEngine,
    ProfileConfig, ProfileSpec, SessionPolicy, BASE, DEPLOYMENT, DEPLOYMENT_SET, SCHEMA, TEMPLATES,
};
pub use error::{Diagnostic, PolicyError, Severity};
pub use lint::lint;
pub use request::{Action, AgentPrincipal, Approval, HumanPrincipal, Request};
pub use sensitive::{Sensitivity, SensitivityMatcher};
pub use source::{PolicyEffect, PolicyRef, PolicySource};
