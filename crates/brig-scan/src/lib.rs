//! brig's content scanner (issue 5, "Pre-push scanning"). See docs/SCANNER.md.
//!
//! One [`Scanner`] holds compiled rules (gitleaks' TOML format; brig's
//! defaults are embedded) and scans a blob ([`Scanner::scan_blob`]), a
//! directory ([`Scanner::scan_dir`]) or every commit of a git range
//! ([`Scanner::scan_git`]). Findings never carry the secret: a masked
//! excerpt and a digest only.
//!
//! Speed comes from doing little per byte: one Aho-Corasick pass over the
//! whole buffer finds rule keywords; a rule's regex runs only on the lines
//! holding one of its keywords; binary files are sniffed and skipped.

mod config;
mod dir;
mod engine;
mod error;
mod git;
mod report;
mod rules;
mod sniff;

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

pub use config::{
    ScanConfig, DEFAULT_ENTROPY_THRESHOLD, DEFAULT_LARGE_FILE_BYTES, DEFAULT_MAX_BINARY_BYTES,
};
pub use error::ScanError;
pub use report::{to_sarif, Finding, FindingKind, Report};
pub use rules::BUILTIN_RULES;

use rules::{Allowlist, Rule, RuleSet};

/// Compiled rules and settings; cheap to share between threads (`&Scanner`).
pub struct Scanner {
    rules: Vec<Rule>,
    global: Vec<Allowlist>,
    /// Every rule keyword, ASCII case-insensitive.
    ac: Option<AhoCorasick>,
    /// Keyword pattern id -> rules that list it.
    kw_rules: Vec<Vec<u32>>,
    /// Content rules without keywords: run over whole files.
    nokw_rules: Vec<u32>,
    /// Rules with a path and no regex: denied file names.
    path_rules: Vec<u32>,
    large_file_bytes: u64,
    sniff_binary: bool,
    max_binary_bytes: u64,
    denied: Globs,
    allowed: Globs,
}

/// Globs: ones without `/` match the file name, others the whole path.
#[derive(Default)]
struct Globs {
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
    sources: Vec<String>,
}

impl Globs {
    fn new(field: &str, globs: &[String]) -> Result<Globs, ScanError> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        let (mut n, mut p) = (0, 0);
        for g in globs {
            let glob = GlobBuilder::new(g.trim_start_matches("./"))
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    ScanError::config(&format!("[scan] {field}"), format!("bad glob `{g}`: {e}"))
                })?;
            if g.contains('/') {
                paths.add(glob);
                p += 1;
            } else {
                names.add(glob);
                n += 1;
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| ScanError::config(&format!("[scan] {field}"), e.to_string()))
        };
        Ok(Globs {
            names: if n > 0 { Some(build(names)?) } else { None },
            paths: if p > 0 { Some(build(paths)?) } else { None },
            sources: globs.to_vec(),
        })
    }

    /// The glob that matches `path`, if any.
    fn matching(&self, path: &str) -> Option<&str> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let hit = self
            .names
            .as_ref()
            .and_then(|s| s.matches(name).first().copied())
            .map(|i| (true, i))
            .or_else(|| {
                self.paths
                    .as_ref()
                    .and_then(|s| s.matches(path).first().copied())
                    .map(|i| (false, i))
            })?;
        // Recover the source glob: index within its own set, in insertion order.
        let (is_name, i) = hit;
        self.sources
            .iter()
            .filter(|g| g.contains('/') != is_name)
            .nth(i)
            .map(|s| s.as_str())
    }
}

impl Scanner {
    /// brig's built-in rules with default settings.
    pub fn builtin() -> Scanner {
        Scanner::from_set(RuleSet::builtin(), &ScanConfig::default())
            .expect("the built-in rules compile (tested)")
    }

    /// Rules and settings from a `[scan]` configuration.
    pub fn new(cfg: &ScanConfig) -> Result<Scanner, ScanError> {
        let mut set = RuleSet::builtin();
        if let Some(path) = &cfg.rules_file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ScanError::Io {
                path: path.clone(),
                source,
            })?;
            set = combine(set, &origin, &text, cfg.extend_builtin)?;
        }
        set.disable("[scan] disabled_rules", &cfg.disabled_rules)?;
        Scanner::from_set(set, cfg)
    }

    /// Rules from a gitleaks TOML text: added to the built-in rules when
    /// `extend_builtin` (or when the text says `[extend] useDefault = true`),
    /// else instead of them.
    pub fn from_gitleaks_toml(text: &str, extend_builtin: bool) -> Result<Scanner, ScanError> {
        let set = combine(RuleSet::builtin(), "gitleaks rules", text, extend_builtin)?;
        Scanner::from_set(set, &ScanConfig::default())
    }

    fn from_set(mut set: RuleSet, cfg: &ScanConfig) -> Result<Scanner, ScanError> {
        let t = cfg.entropy_threshold;
        if !(0.0..=8.0).contains(&t) {
            return Err(ScanError::config(
                "[scan] entropy_threshold",
                format!(
                    "{t} is outside 0..8 bits per byte (0 turns the high-entropy detector off)"
                ),
            ));
        }
        if t == 0.0 {
            set.rules.retain(|r| r.kind != FindingKind::HighEntropy);
        } else {
            for r in set
                .rules
                .iter_mut()
                .filter(|r| r.kind == FindingKind::HighEntropy)
            {
                r.entropy = Some(t);
            }
        }
        let mut keywords: Vec<String> = Vec::new();
        let mut kw_rules: Vec<Vec<u32>> = Vec::new();
        let mut nokw_rules = Vec::new();
        let mut path_rules = Vec::new();
        for (i, r) in set.rules.iter().enumerate() {
            let i = i as u32;
            if r.regex.is_none() {
                path_rules.push(i);
            } else if r.keywords.is_empty() {
                nokw_rules.push(i);
            } else {
                for k in &r.keywords {
                    let id = match keywords.iter().position(|x| x == k) {
                        Some(id) => id,
                        None => {
                            keywords.push(k.clone());
                            kw_rules.push(Vec::new());
                            keywords.len() - 1
                        }
                    };
                    if !kw_rules[id].contains(&i) {
                        kw_rules[id].push(i);
                    }
                }
            }
        }
        let ac = if keywords.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&keywords)
                    .or_else(|_| {
                        AhoCorasickBuilder::new()
                            .ascii_case_insensitive(true)
                            .match_kind(MatchKind::Standard)
                            .build(&keywords)
                    })
                    .map_err(|e| ScanError::config("rule keywords", e.to_string()))?,
            )
        };
        Ok(Scanner {
            rules: set.rules,
            global: set.global,
            ac,
            kw_rules,
            nokw_rules,
            path_rules,
            large_file_bytes: cfg.large_file_bytes,
            sniff_binary: cfg.sniff_binary,
            max_binary_bytes: cfg.max_binary_bytes,
            denied: Globs::new("denied_files", &cfg.denied_files)?,
            allowed: Globs::new("allow_paths", &cfg.allow_paths)?,
        })
    }

    /// The regex sources of the content rules (secrets, keys, high entropy),
    /// for redactors that want to mask the same things.
    pub fn patterns(&self) -> Vec<String> {
        self.rules.iter().filter_map(|r| r.source.clone()).collect()
    }

    /// `(rule id, regex)` of the rules specific enough to mask on sight in
    /// logs: secret and key rules that need no entropy check and have no
    /// allowlist (a generic `key = value` rule would mask hashes and ids).
    pub fn redaction_patterns(&self) -> Vec<(String, String)> {
        self.rules
            .iter()
            .filter(|r| r.entropy.is_none() && r.allowlists.is_empty())
            .filter(|r| matches!(r.kind, FindingKind::Secret | FindingKind::PrivateKey))
            .filter_map(|r| r.source.clone().map(|s| (r.id.clone(), s)))
            .collect()
    }

    /// The ids of the rules in use.
    pub fn rule_ids(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.id.clone()).collect()
    }

    /// Scan one file's content; `path` (relative, `/`-separated) is used for
    /// denied names, path-scoped rules and allowlists.
    pub fn scan_blob(&self, path: &str, data: &[u8]) -> Vec<Finding> {
        let mut out = Vec::new();
        self.scan_file(
            &engine::FileInput {
                path,
                data: Some(data),
                size: data.len() as u64,
                commit: None,
                old: None,
            },
            &mut out,
        );
        out
    }

    /// Scan a directory tree (or one file): .gitignore honoured, `.git` skipped,
    /// hidden files included, symlinks not followed; both cores used.
    pub fn scan_dir(&self, root: &Path) -> Result<Report, ScanError> {
        dir::scan_dir(self, root)
    }

    /// Scan every commit `git rev-list <revs>` selects in `repo`: the lines
    /// each commit adds against its first parent (a root commit: its whole
    /// tree), and the name, size and content type of each file it adds or
    /// modifies. `env` is added to git's environment (quarantine object
    /// directories during a push).
    pub fn scan_git(
        &self,
        repo: &Path,
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        revs: &[String],
    ) -> Result<Report, ScanError> {
        git::scan_git(self, repo, env, revs)
    }

    /// [`Scanner::scan_git`] over exactly `commits` (oldest first, each with
    /// its first parent, which it is diffed against; `None` for a root), for
    /// a caller that has listed them already (the git gateway's push).
    pub fn scan_git_commits(
        &self,
        repo: &Path,
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        commits: &[(String, Option<String>)],
    ) -> Result<Report, ScanError> {
        git::scan_git_commits(self, repo, env, commits)
    }

    /// [`Scanner::scan_git`] over one range such as `A..B`.
    pub fn scan_git_range(&self, repo: &Path, range: &str) -> Result<Report, ScanError> {
        self.scan_git(repo, &[], &[range.to_string()])
    }
}

fn combine(
    builtin: RuleSet,
    origin: &str,
    text: &str,
    extend_builtin: bool,
) -> Result<RuleSet, ScanError> {
    let (user, use_default, disabled) = rules::parse(origin, text)?;
    let set = if extend_builtin || use_default {
        let mut set = builtin;
        set.disable(origin, &disabled)?;
        set.merge(user);
        set
    } else {
        if !disabled.is_empty() {
            return Err(ScanError::config(
                origin,
                "[extend] disabledRules names default rules, but the default rules are not in use (set useDefault = true)",
            ));
        }
        user
    };
    set.check_targets(origin)?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scanner_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<super::Scanner>();
    }
}
