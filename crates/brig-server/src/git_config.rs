//! `[git]` and `[profiles.NAME.gate]` of brig.toml (issue 5; reference in
//! docs/CONFIG.md): where the sandbox's `origin` points, which branches it
//! may push, its identity, and the test gate a PR must pass.

use std::time::Duration;

use brig_core::units::{parse_duration, parse_size};
use brig_core::{Error, Result};
use serde::Deserialize;

/// The git gateway's settings, resolved.
#[derive(Clone, Debug)]
pub struct GitConfig {
    /// The gateway's host name inside sandboxes (`http://<host>/<repo>.git`).
    pub host: String,
    /// Branches a session may push: `<prefix>...`; `{session}` is replaced.
    pub bot_prefix: String,
    /// Branch patterns never pushed to (`*` matches within a path segment,
    /// a trailing `/**` everything below).
    pub protected: Vec<String>,
    pub max_pack_bytes: u64,
    /// History depth of a checkout unless `--depth` says otherwise.
    pub depth: u32,
    /// The session's author identity; `{session}` is replaced.
    pub author_name: String,
    pub author_email: String,
}

impl Default for GitConfig {
    fn default() -> GitConfig {
        GitConfig {
            host: "git.brig".into(),
            bot_prefix: "brig/{session}/".into(),
            protected: vec!["main".into(), "master".into(), "release/**".into()],
            max_pack_bytes: 100 << 20,
            depth: 1,
            author_name: "brig agent {session}".into(),
            author_email: "{session}@agents.brig.invalid".into(),
        }
    }
}

impl GitConfig {
    pub fn bot_prefix_for(&self, session: &str) -> String {
        self.bot_prefix.replace("{session}", session)
    }
    pub fn author_for(&self, session: &str) -> (String, String) {
        (
            self.author_name.replace("{session}", session),
            self.author_email.replace("{session}", session),
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGit {
    host: Option<String>,
    bot_prefix: Option<String>,
    protected: Option<Vec<String>>,
    max_pack: Option<toml::Value>,
    depth: Option<u32>,
    author_name: Option<String>,
    author_email: Option<String>,
}

impl RawGit {
    pub(crate) fn apply(&self, at: &str) -> Result<GitConfig> {
        let mut g = GitConfig::default();
        let err = |what: String| {
            Error::invalid(format!("{at} {what}")).hint("the [git] keys are in docs/CONFIG.md")
        };
        if let Some(h) = &self.host {
            match brig_egress::Host::parse(h) {
                Ok(brig_egress::Host::Domain(d)) if d.contains('.') => g.host = d,
                _ => return Err(err(format!("host {h:?} is not a host name"))),
            }
        }
        if let Some(p) = &self.bot_prefix {
            let probe = p.replace("{session}", "s");
            if probe.is_empty()
                || !probe.ends_with('/')
                || probe.starts_with('/')
                || probe.contains("..")
                || probe
                    .bytes()
                    .any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b))
            {
                return Err(err(format!(
                    "bot_prefix {p:?} must be a branch path ending in '/' (e.g. \"brig/{{session}}/\")"
                )));
            }
            if !p.contains("{session}") {
                return Err(err(format!(
                    "bot_prefix {p:?} must contain {{session}}, so one session cannot push over another's branches"
                )));
            }
            g.bot_prefix = p.clone();
        }
        if let Some(p) = &self.protected {
            for pat in p {
                if pat.is_empty() || pat.starts_with('/') || pat.starts_with("refs/") {
                    return Err(err(format!(
                        "protected pattern {pat:?} must be a branch name pattern like \"main\" or \"release/**\""
                    )));
                }
            }
            g.protected = p.clone();
        }
        if let Some(v) = &self.max_pack {
            g.max_pack_bytes = match v {
                toml::Value::Integer(n) if *n > 0 => *n as u64,
                toml::Value::String(s) => {
                    parse_size(s).map_err(|e| e.context(format!("{at} max_pack")))?
                }
                _ => return Err(err("max_pack must be a size like \"100M\"".into())),
            };
            if g.max_pack_bytes == 0 {
                return Err(err("max_pack must be greater than zero".into()));
            }
        }
        if let Some(d) = self.depth {
            if d == 0 {
                return Err(err("depth must be at least 1".into()));
            }
            g.depth = d;
        }
        if let Some(n) = &self.author_name {
            if n.trim().is_empty() || n.contains(['<', '>', '\n']) {
                return Err(err(format!(
                    "author_name {n:?} must be a name without '<', '>' or newlines"
                )));
            }
            g.author_name = n.clone();
        }
        if let Some(e) = &self.author_email {
            if !e.contains('@') || e.contains(['<', '>', '\n', ' ']) {
                return Err(err(format!("author_email {e:?} must be an e-mail address")));
            }
            g.author_email = e.clone();
        }
        Ok(g)
    }
}

/// A profile's test gate: what must pass in the sandbox before a PR opens.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// Shell command run in /workspace (`sh -c`), e.g. `cargo test`.
    pub test: String,
    /// A command that prints a coverage percentage (its last `NN.N%`).
    pub coverage: Option<String>,
    /// Most coverage may drop, in percentage points, against the pinned
    /// commit's.
    pub max_coverage_drop: f64,
    pub timeout: Duration,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGate {
    test: String,
    coverage: Option<String>,
    max_coverage_drop: Option<f64>,
    timeout: Option<String>,
}

impl RawGate {
    pub(crate) fn apply(&self, at: &str) -> Result<Gate> {
        if self.test.trim().is_empty() {
            return Err(Error::invalid(format!(
                "{at} test must be a command, e.g. test = \"cargo test\""
            )));
        }
        let max_coverage_drop = self.max_coverage_drop.unwrap_or(0.0);
        if !max_coverage_drop.is_finite() || !(0.0..=100.0).contains(&max_coverage_drop) {
            return Err(Error::invalid(format!(
                "{at} max_coverage_drop must be between 0 and 100 (percentage points)"
            )));
        }
        if let Some(c) = &self.coverage {
            if c.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "{at} coverage must be a command or absent"
                )));
            }
        }
        let timeout = match &self.timeout {
            None => Duration::from_secs(900),
            Some(t) => parse_duration(t).map_err(|e| e.context(format!("{at} timeout")))?,
        };
        Ok(Gate {
            test: self.test.clone(),
            coverage: self.coverage.clone(),
            max_coverage_drop,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let g = RawGit::default().apply("[git]").unwrap();
        assert_eq!(g.bot_prefix_for("s1"), "brig/s1/");
        assert_eq!(g.author_for("s1").1, "s1@agents.brig.invalid");
        let raw: RawGit = toml::from_str("bot_prefix = \"agents/\"").unwrap();
        assert!(raw
            .apply("[git]")
            .unwrap_err()
            .message
            .contains("{session}"));
        let raw: RawGit = toml::from_str("bot_prefix = \"a/{session}\"").unwrap();
        assert!(raw.apply("[git]").is_err());
        let raw: RawGit =
            toml::from_str("max_pack = \"2M\"\nprotected = [\"main\", \"rel/*\"]").unwrap();
        let g = raw.apply("[git]").unwrap();
        assert_eq!(g.max_pack_bytes, 2 << 20);
        assert!(toml::from_str::<RawGit>("colour = 1").is_err());
    }

    #[test]
    fn gate_parses_and_checks() {
        let raw: RawGate = toml::from_str(
            "test = \"cargo test\"\ncoverage = \"./cov.sh\"\nmax_coverage_drop = 1.5",
        )
        .unwrap();
        let g = raw.apply("[profiles.x.gate]").unwrap();
        assert_eq!((g.test.as_str(), g.max_coverage_drop), ("cargo test", 1.5));
        let raw: RawGate = toml::from_str("test = \" \"").unwrap();
        assert!(raw.apply("g").is_err());
        let raw: RawGate = toml::from_str("test = \"t\"\nmax_coverage_drop = -1").unwrap();
        assert!(raw.apply("g").is_err());
    }
}
