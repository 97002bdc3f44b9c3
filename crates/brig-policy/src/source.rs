//! Loading policy text: parse, give every policy its `@id`, validate
//! against the schema in strict mode, and turn every Cedar error into a
//! [`Diagnostic`] with a file, line and column. Shared by the engine (where
//! an error refuses to load) and `lint` (which reports everything).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, ValidationMode, Validator};
use serde::{Deserialize, Serialize};

use crate::error::{Diagnostic, Severity};
use crate::PolicyError;

/// One policy file (or string): a name for diagnostics and its text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySource {
    pub name: String,
    pub text: String,
}

impl PolicySource {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }

    /// Read a policy file; the name is the path as given.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Ok(Self::new(path.display().to_string(), text))
    }
}

/// What brig knows of a policy besides its Cedar: the `@id`, the `@reason`
/// a denial quotes, the `@approval` role that lifts a forbid, and where it
/// came from. This is what a [`crate::Decision`] names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub id: String,
    #[serde(default)]
    pub reason: String,
    pub effect: PolicyEffect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// The policy file (`shipped:pr.cedar` for brig's own).
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyEffect {
    Permit,
    Forbid,
}

/// A parsed, validated policy under its brig id.
#[derive(Clone, Debug)]
pub(crate) struct Loaded {
    pub policy: Policy,
    pub meta: PolicyRef,
    /// Where the policy starts in its source (1-based; 0 if not found).
    pub line: usize,
    pub col: usize,
}

/// Byte offset -> 1-based (line, column in characters).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn first_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset())
}

fn message(d: &dyn miette::Diagnostic) -> String {
    let mut m = d.to_string();
    if let Some(help) = d.help() {
        m.push_str(" (");
        m.push_str(&help.to_string());
        m.push(')');
    }
    m
}

/// Every error of a Cedar diagnostic (itself and its `related` ones).
fn diagnostics_of(
    source: &PolicySource,
    d: &dyn miette::Diagnostic,
    severity: Severity,
    policy: Option<String>,
    fallback_offset: Option<usize>,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut push = |d: &dyn miette::Diagnostic| {
        let (line, col) = first_offset(d)
            .or(fallback_offset)
            .map_or((0, 0), |o| line_col(&source.text, o));
        out.push(Diagnostic {
            source: source.name.clone(),
            line,
            col,
            severity,
            policy: policy.clone(),
            message: message(d),
        });
    };
    push(d);
    if let Some(related) = d.related() {
        for r in related {
            push(r);
        }
    }
    out
}

/// Where a policy starts in its source: Cedar keeps each policy's own text,
/// which is found in the file (the first occurrence not already claimed).
fn offset_of(text: &str, policy: &Policy, from: usize) -> Option<usize> {
    let own = policy.to_string();
    let own = own.trim();
    text.get(from..)
        .and_then(|rest| rest.find(own))
        .map(|i| i + from)
        .or_else(|| text.find(own))
}

/// Parse and validate one source. Returns the policies (in source order,
/// under their brig ids) and every diagnostic; the caller decides whether
/// warnings matter.
pub(crate) fn load(source: &PolicySource, validator: &Validator) -> (Vec<Loaded>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let set = match PolicySet::from_str(&source.text) {
        Ok(set) => set,
        Err(e) => {
            diags.extend(diagnostics_of(source, &e, Severity::Error, None, None));
            return (Vec::new(), diags);
        }
    };
    // Cedar names the policies of a string policy0, policy1, ... in source
    // order; brig names them by @id.
    let mut parsed: Vec<(usize, &Policy)> = set
        .policies()
        .map(|p| {
            let id: &str = p.id().as_ref();
            let n = id
                .strip_prefix("policy")
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            (n, p)
        })
        .collect();
    parsed.sort_by_key(|(n, _)| *n);
    let mut offsets: HashMap<PolicyId, usize> = HashMap::new();
    let mut from = 0;
    for (_, p) in &parsed {
        if let Some(o) = offset_of(&source.text, p, from) {
            offsets.insert(p.id().clone(), o);
            from = o + 1;
        }
    }
    let brig_id = |p: &Policy| -> String {
        match p.annotation("id") {
            Some(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => format!("{}#{}", source.name, p.id()),
        }
    };
    let at = |id: &PolicyId| -> (usize, usize) {
        offsets
            .get(id)
            .map_or((0, 0), |o| line_col(&source.text, *o))
    };

    for t in set.templates() {
        diags.push(Diagnostic {
            source: source.name.clone(),
            line: 0,
            col: 0,
            severity: Severity::Error,
            policy: t.annotation("id").map(String::from),
            message: "policy templates (?principal/?resource slots) are not supported: brig has no link store, so a template would never apply; write the policy out".into(),
        });
    }

    let result = validator.validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        let pid = e.policy_id();
        let policy = set.policy(pid).map(brig_id);
        let fallback = offsets.get(pid).copied();
        diags.extend(diagnostics_of(source, e, Severity::Error, policy, fallback));
    }
    for w in result.validation_warnings() {
        let pid = w.policy_id();
        let policy = set.policy(pid).map(brig_id);
        let fallback = offsets.get(pid).copied();
        diags.extend(diagnostics_of(
            source,
            w,
            Severity::Warning,
            policy,
            fallback,
        ));
    }

    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut loaded = Vec::new();
    for (_, p) in parsed {
        let id = brig_id(p);
        let (line, col) = at(p.id());
        let warn = |message: String| Diagnostic {
            source: source.name.clone(),
            line,
            col,
            severity: Severity::Warning,
            policy: Some(id.clone()),
            message,
        };
        if p.annotation("id").is_none_or(|s| s.trim().is_empty()) {
            diags.push(warn(format!(
                "no @id(\"...\"): decisions will name it {id}; give it a stable id"
            )));
        }
        let reason = p.annotation("reason").unwrap_or("").trim().to_string();
        if reason.is_empty() {
            diags.push(warn(
                "no @reason(\"...\"): a denial by it cannot tell the agent why, or how to ask for access".into(),
            ));
        }
        let effect = match p.effect() {
            Effect::Permit => PolicyEffect::Permit,
            Effect::Forbid => PolicyEffect::Forbid,
        };
        let approval = p
            .annotation("approval")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(role) = &approval {
            if effect == PolicyEffect::Permit {
                diags.push(warn(format!(
                    "@approval(\"{role}\") on a permit means nothing: only a forbid can wait for an approval"
                )));
            } else if !p.to_string().contains("context.approval") {
                diags.push(warn(format!(
                    "@approval(\"{role}\") but the policy never reads context.approval: no approval can lift it (add `unless {{ context.approval.granted && context.approval.roles.contains(\"{role}\") }}`)"
                )));
            }
        } else if p.annotation("approval").is_some() {
            diags.push(warn("@approval with no role: it is ignored".into()));
        }
        if let Some((l, c)) = seen.get(&id) {
            diags.push(Diagnostic {
                source: source.name.clone(),
                line,
                col,
                severity: Severity::Error,
                policy: Some(id.clone()),
                message: format!(
                    "duplicate @id {id:?} (first at {l}:{c}): every policy needs its own id"
                ),
            });
            continue;
        }
        seen.insert(id.clone(), (line, col));
        let pid = PolicyId::new(&id);
        loaded.push(Loaded {
            policy: p.new_id(pid),
            meta: PolicyRef {
                id,
                reason,
                effect,
                approval,
                source: source.name.clone(),
            },
            line,
            col,
        });
    }
    (loaded, diags)
}
