//! gitleaks' TOML rule format, parsed and compiled.
//!
//! Supported: `[[rules]]` id, description, regex, secretGroup, entropy,
//! keywords, path, tags, `[[rules.allowlists]]` and the older
//! `[rules.allowlist]`; global `[allowlist]` and `[[allowlists]]` (with
//! targetRules); `[extend] useDefault` and `disabledRules`; `title`,
//! `description` and `minVersion` are read and ignored. Everything else
//! (composite `[[rules.required]]`, `[extend] path`, unknown keys) is an
//! error naming the rule and the key, never a silent different result.

use std::collections::HashSet;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::error::ScanError;
use crate::report::FindingKind;

/// brig's default rules, in gitleaks' format.
pub const BUILTIN_RULES: &str = include_str!("../rules/default.toml");
pub(crate) const BUILTIN_ORIGIN: &str = "built-in rules";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlConfig {
    #[allow(dead_code)]
    title: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(rename = "minVersion")]
    #[allow(dead_code)]
    min_version: Option<String>,
    extend: Option<GlExtend>,
    #[serde(default)]
    rules: Vec<GlRule>,
    allowlist: Option<GlAllowlist>,
    #[serde(default)]
    allowlists: Vec<GlAllowlist>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlExtend {
    #[serde(rename = "useDefault")]
    use_default: Option<bool>,
    path: Option<String>,
    #[serde(rename = "disabledRules", default)]
    disabled_rules: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlRule {
    id: String,
    description: Option<String>,
    regex: Option<String>,
    #[serde(rename = "secretGroup")]
    secret_group: Option<i64>,
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    path: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    allowlist: Option<GlAllowlist>,
    #[serde(default)]
    allowlists: Vec<GlAllowlist>,
    // Composite rules: parsed only to refuse them with a clear message.
    required: Option<toml::Value>,
    #[serde(rename = "skipReport")]
    skip_report: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlAllowlist {
    #[allow(dead_code)]
    description: Option<String>,
    condition: Option<String>,
    #[serde(default)]
    commits: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(rename = "regexTarget")]
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    #[serde(rename = "targetRules", default)]
    target_rules: Vec<String>,
}

/// What an allowlist's `regexes` are matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Secret,
    Match,
    Line,
}

#[derive(Debug, Clone)]
pub(crate) struct Allowlist {
    pub and: bool,
    pub commits: Vec<String>,
    pub paths: Vec<Regex>,
    pub regexes: Vec<Regex>,
    pub target: Target,
    /// Lower-cased.
    pub stopwords: Vec<String>,
    /// Global `[[allowlists]]` only: the rules it applies to (empty = all).
    pub target_rules: Vec<String>,
}

/// What the allowlist sees of one candidate finding.
pub(crate) struct Candidate<'a> {
    pub commit: Option<&'a str>,
    pub path: &'a str,
    pub secret: &'a [u8],
    pub matched: &'a [u8],
    pub line: &'a [u8],
}

impl Allowlist {
    pub fn allows(&self, c: &Candidate<'_>) -> bool {
        let commit = !self.commits.is_empty()
            && c.commit
                .is_some_and(|cm| self.commits.iter().any(|a| cm.eq_ignore_ascii_case(a)));
        let path =
            !self.paths.is_empty() && self.paths.iter().any(|r| r.is_match(c.path.as_bytes()));
        let target = match self.target {
            Target::Secret => c.secret,
            Target::Match => c.matched,
            Target::Line => c.line,
        };
        let regex = !self.regexes.is_empty() && self.regexes.iter().any(|r| r.is_match(target));
        let stop = !self.stopwords.is_empty() && {
            let lower = c.secret.to_ascii_lowercase();
            self.stopwords
                .iter()
                .any(|w| memchr::memmem::find(&lower, w.as_bytes()).is_some())
        };
        if self.and {
            // Every criterion the allowlist sets must hold.
            (self.commits.is_empty() || commit)
                && (self.paths.is_empty() || path)
                && (self.regexes.is_empty() || regex)
                && (self.stopwords.is_empty() || stop)
        } else {
            commit || path || regex || stop
        }
    }

    /// An allowlist that only names paths (decidable before reading content).
    pub fn paths_only(&self) -> bool {
        self.commits.is_empty()
            && self.regexes.is_empty()
            && self.stopwords.is_empty()
            && !self.paths.is_empty()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: String,
    pub description: String,
    pub regex: Option<Regex>,
    pub source: Option<String>,
    /// Some(n): the capture group that is the secret.
    pub secret_group: Option<usize>,
    pub entropy: Option<f64>,
    /// Lower-cased.
    pub keywords: Vec<String>,
    pub path: Option<Regex>,
    pub kind: FindingKind,
    pub allowlists: Vec<Allowlist>,
    /// The regex names a newline, so a match may run past its keyword's line.
    pub multiline: bool,
    /// Higher wins when two rules report overlapping text.
    pub priority: u8,
}

/// A parsed rule set before it becomes a scanner.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSet {
    pub rules: Vec<Rule>,
    pub global: Vec<Allowlist>,
}

pub(crate) fn compile_regex(
    origin: &str,
    rule: &str,
    what: &str,
    src: &str,
) -> Result<Regex, ScanError> {
    // ASCII classes are both faster and what gitleaks' rules mean; a pattern
    // that needs Unicode (\p{..}, non-ASCII literals) gets it.
    let build = |unicode: bool| {
        RegexBuilder::new(src)
            .unicode(unicode)
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
    };
    build(false).or_else(|_| build(true)).map_err(|e| {
        ScanError::rule(
            origin,
            rule,
            format!("{what} is not a valid regex (Rust `regex` syntax, which is Go's RE2 syntax less a few rarely used escapes): {e}"),
        )
    })
}

fn compile_allowlist(
    origin: &str,
    rule: &str,
    a: &GlAllowlist,
    global: bool,
) -> Result<Allowlist, ScanError> {
    let and = match a.condition.as_deref().map(|c| c.to_ascii_uppercase()) {
        None => false,
        Some(c) if c == "OR" => false,
        Some(c) if c == "AND" => true,
        Some(c) => {
            return Err(ScanError::rule(
                origin,
                rule,
                format!("allowlist condition `{c}` is neither \"OR\" nor \"AND\""),
            ))
        }
    };
    let target = match a.regex_target.as_deref() {
        None | Some("secret") => Target::Secret,
        Some("match") => Target::Match,
        Some("line") => Target::Line,
        Some(t) => {
            return Err(ScanError::rule(
                origin,
                rule,
                format!(
                    "allowlist regexTarget `{t}` is not one of \"secret\", \"match\", \"line\""
                ),
            ))
        }
    };
    if !global && !a.target_rules.is_empty() {
        return Err(ScanError::rule(
            origin,
            rule,
            "targetRules belongs in a global [[allowlists]], not in a rule's allowlist",
        ));
    }
    let mut paths = Vec::new();
    for p in &a.paths {
        paths.push(compile_regex(origin, rule, "allowlist path", p)?);
    }
    let mut regexes = Vec::new();
    for r in &a.regexes {
        regexes.push(compile_regex(origin, rule, "allowlist regex", r)?);
    }
    let al = Allowlist {
        and,
        commits: a
            .commits
            .iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect(),
        paths,
        regexes,
        target,
        stopwords: a.stopwords.iter().map(|s| s.to_ascii_lowercase()).collect(),
        target_rules: a.target_rules.clone(),
    };
    if al.commits.is_empty()
        && al.paths.is_empty()
        && al.regexes.is_empty()
        && al.stopwords.is_empty()
    {
        return Err(ScanError::rule(
            origin,
            rule,
            "an allowlist needs at least one of commits, paths, regexes, stopwords",
        ));
    }
    Ok(al)
}

fn names_newline(src: &str) -> bool {
    src.contains("(?s")
        || src.contains("\\n")
        || src.contains("\\r")
        || src.contains("[\\s\\S]")
        || src.contains("[\\S\\s]")
}

fn compile_rule(origin: &str, r: &GlRule) -> Result<Rule, ScanError> {
    let id = r.id.trim();
    if id.is_empty() {
        return Err(ScanError::config(
            origin,
            "a [[rules]] entry has an empty id",
        ));
    }
    if r.required.is_some() || r.skip_report.is_some() {
        return Err(ScanError::rule(
            origin,
            id,
            "composite rules ([[rules.required]], skipReport) are not supported by brig; split it into plain rules",
        ));
    }
    if r.regex.is_none() && r.path.is_none() {
        return Err(ScanError::rule(
            origin,
            id,
            "a rule needs a regex, a path, or both",
        ));
    }
    let regex = match &r.regex {
        Some(src) if src.is_empty() => return Err(ScanError::rule(origin, id, "regex is empty")),
        Some(src) => Some(compile_regex(origin, id, "regex", src)?),
        None => None,
    };
    let secret_group = match r.secret_group {
        None | Some(0) => None,
        Some(n) if n < 0 => {
            return Err(ScanError::rule(origin, id, "secretGroup must be 0 or more"))
        }
        Some(n) => {
            let n = n as usize;
            let groups = regex.as_ref().map_or(0, |re| re.captures_len() - 1);
            if n > groups {
                return Err(ScanError::rule(
                    origin,
                    id,
                    format!("secretGroup = {n} but the regex has only {groups} capture group(s)"),
                ));
            }
            Some(n)
        }
    };
    if let Some(e) = r.entropy {
        if !(0.0..=8.0).contains(&e) {
            return Err(ScanError::rule(
                origin,
                id,
                format!("entropy = {e} is outside 0..8 (bits per byte)"),
            ));
        }
    }
    let mut keywords = Vec::new();
    for k in &r.keywords {
        if k.is_empty() || k.contains('\n') {
            return Err(ScanError::rule(
                origin,
                id,
                "keywords must be non-empty and on one line",
            ));
        }
        keywords.push(k.to_ascii_lowercase());
    }
    let path = match &r.path {
        Some(p) => Some(compile_regex(origin, id, "path", p)?),
        None => None,
    };
    let mut allowlists = Vec::new();
    for a in r.allowlist.iter().chain(r.allowlists.iter()) {
        allowlists.push(compile_allowlist(origin, id, a, false)?);
    }
    let has = |t: &str| r.tags.iter().any(|x| x.eq_ignore_ascii_case(t));
    let kind = if regex.is_none() || has("denied-file") {
        FindingKind::DeniedFileName
    } else if has("private-key") {
        FindingKind::PrivateKey
    } else if has("high-entropy") {
        FindingKind::HighEntropy
    } else {
        FindingKind::Secret
    };
    let priority = match kind {
        FindingKind::HighEntropy => 1,
        _ if has("generic") => 2,
        _ => 3,
    };
    Ok(Rule {
        id: id.to_string(),
        description: r.description.clone().unwrap_or_else(|| id.to_string()),
        multiline: r.regex.as_deref().is_some_and(names_newline),
        source: r.regex.clone(),
        regex,
        secret_group,
        entropy: r.entropy.filter(|e| *e > 0.0),
        keywords,
        path,
        kind,
        allowlists,
        priority,
    })
}

/// Parse one gitleaks TOML text. Returns the rule set and whether it asks
/// for the default rules (`[extend] useDefault = true`) and which to drop.
pub(crate) fn parse(origin: &str, text: &str) -> Result<(RuleSet, bool, Vec<String>), ScanError> {
    let cfg: GlConfig = toml::from_str(text).map_err(|e| {
        ScanError::config(
            origin,
            format!(
                "not a valid gitleaks rules file: {}",
                e.to_string().trim_end()
            ),
        )
    })?;
    let mut use_default = false;
    let mut disabled = Vec::new();
    if let Some(ext) = &cfg.extend {
        if ext.path.is_some() {
            return Err(ScanError::config(
                origin,
                "[extend] path is not supported: copy that file's rules into this one, or use `useDefault = true` for brig's built-in rules",
            ));
        }
        use_default = ext.use_default.unwrap_or(false);
        disabled = ext.disabled_rules.clone();
    }
    let mut set = RuleSet::default();
    let mut seen = HashSet::new();
    for r in &cfg.rules {
        let rule = compile_rule(origin, r)?;
        if !seen.insert(rule.id.clone()) {
            return Err(ScanError::rule(
                origin,
                &rule.id,
                "two rules have this id; ids must be unique",
            ));
        }
        set.rules.push(rule);
    }
    for a in cfg.allowlist.iter().chain(cfg.allowlists.iter()) {
        // targetRules may name a default rule when extending: checked once merged.
        set.global
            .push(compile_allowlist(origin, "(global allowlist)", a, true)?);
    }
    Ok((set, use_default, disabled))
}

impl RuleSet {
    pub fn builtin() -> RuleSet {
        let (set, _, _) =
            parse(BUILTIN_ORIGIN, BUILTIN_RULES).expect("the built-in rules compile (tested)");
        set
    }

    /// Add `other`'s rules; one with an existing id replaces it.
    pub fn merge(&mut self, other: RuleSet) {
        for r in other.rules {
            if let Some(slot) = self.rules.iter_mut().find(|x| x.id == r.id) {
                *slot = r;
            } else {
                self.rules.push(r);
            }
        }
        self.global.extend(other.global);
    }

    /// Drop rules by id; an id that names no rule is an error (a typo would
    /// otherwise leave the rule on).
    pub fn disable(&mut self, origin: &str, ids: &[String]) -> Result<(), ScanError> {
        for id in ids {
            let before = self.rules.len();
            self.rules.retain(|r| &r.id != id);
            if self.rules.len() == before {
                return Err(ScanError::rule(
                    origin,
                    id,
                    "disabled, but no rule has this id",
                ));
            }
        }
        Ok(())
    }

    pub fn check_targets(&self, origin: &str) -> Result<(), ScanError> {
        for a in &self.global {
            for t in &a.target_rules {
                if !self.rules.iter().any(|r| &r.id == t) {
                    return Err(ScanError::rule(
                        origin,
                        t,
                        "named in an allowlist's targetRules, but no rule has this id",
                    ));
                }
            }
        }
        Ok(())
    }
}
