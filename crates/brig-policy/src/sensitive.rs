//! Configured sensitivity: `[policy.sensitive]` names patterns of commands,
//! pushed paths and hosts, and brig hands Cedar the *names* of the patterns
//! a request matches (`context.sensitive`). Cedar's `like` cannot match an
//! argv (no alternation, no path semantics), so matching happens here.
//!
//! Labels are a hint to policy, not a boundary: a determined agent can hide
//! `terraform apply` behind a script. The sandbox and the egress layer are
//! the boundary; labels are what make a human look before it runs.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// `[policy.sensitive]` of brig.toml: label name -> glob patterns.
///
/// A field that is absent keeps the shipped defaults; a field that is
/// present replaces them whole (`commands = {}` means no command is
/// sensitive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensitivity {
    /// Matched against the command line (argv joined with single spaces,
    /// with argv[0] as given and as its file name) and against each command
    /// of an inline shell script (`sh -c "a && b"`). `*` matches anything,
    /// spaces and `/` included.
    #[serde(default = "default_commands")]
    pub commands: BTreeMap<String, Vec<String>>,
    /// Matched against every path a push touches. `*` stays inside one path
    /// component, `**` crosses them; a pattern without `/` also matches the
    /// file name anywhere (`*.tf` matches `modules/net/main.tf`), as in
    /// .gitignore.
    #[serde(default = "default_paths")]
    pub paths: BTreeMap<String, Vec<String>>,
    /// Matched (case-insensitively) against the host of a connection.
    #[serde(default = "default_hosts")]
    pub hosts: BTreeMap<String, Vec<String>>,
}

fn map(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

fn default_commands() -> BTreeMap<String, Vec<String>> {
    map(&[
        (
            "migration",
            &[
                "*migrate*",
                "alembic upgrade*",
                "alembic downgrade*",
                "flyway *",
                "liquibase *update*",
                "rails db:*",
                "prisma migrate*",
            ],
        ),
        (
            "iac",
            &[
                "terraform apply*",
                "terraform destroy*",
                "tofu apply*",
                "tofu destroy*",
                "pulumi up*",
                "pulumi destroy*",
                "kubectl apply*",
                "kubectl delete*",
                "helm install*",
                "helm upgrade*",
            ],
        ),
    ])
}

fn default_paths() -> BTreeMap<String, Vec<String>> {
    map(&[(
        "infra",
        &[
            "infra/**",
            "terraform/**",
            "*.tf",
            "*.tfvars",
            ".github/workflows/**",
        ],
    )])
}

fn default_hosts() -> BTreeMap<String, Vec<String>> {
    map(&[(
        "cloud",
        &[
            "*.amazonaws.com",
            "*.googleapis.com",
            "management.azure.com",
            "*.blob.core.windows.net",
        ],
    )])
}

impl Default for Sensitivity {
    fn default() -> Self {
        Self {
            commands: default_commands(),
            paths: default_paths(),
            hosts: default_hosts(),
        }
    }
}

impl Sensitivity {
    /// One word per command pattern that every command line it matches
    /// contains (its longest run of literal characters without a space):
    /// the sandbox's cheap prefilter for holding an exec until policy
    /// decided it. `""` (matches everything) for a pattern without one.
    pub fn command_words(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for p in self.commands.values().flatten() {
            out.insert(longest_literal(p));
        }
        out.into_iter().collect()
    }

    /// Compile every pattern once; an invalid glob is an error naming the
    /// label and the pattern.
    pub fn compile(&self) -> Result<SensitivityMatcher, PolicyError> {
        Ok(SensitivityMatcher {
            commands: Labeled::build("commands", &self.commands, Kind::Command)?,
            paths: Labeled::build("paths", &self.paths, Kind::Path)?,
            hosts: Labeled::build("hosts", &self.hosts, Kind::Host)?,
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Command,
    Path,
    Host,
}

/// One glob set per kind; `labels[i]` is the label of the set's glob `i`.
#[derive(Debug)]
struct Labeled {
    set: GlobSet,
    /// For paths: the patterns without `/`, matched against file names.
    names: GlobSet,
    labels: Vec<String>,
    name_labels: Vec<String>,
}

impl Labeled {
    fn build(
        field: &str,
        entries: &BTreeMap<String, Vec<String>>,
        kind: Kind,
    ) -> Result<Self, PolicyError> {
        let mut set = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        let mut labels = Vec::new();
        let mut name_labels = Vec::new();
        for (label, patterns) in entries {
            if label.is_empty() {
                return Err(PolicyError::Sensitivity {
                    field: field.to_string(),
                    label: label.clone(),
                    pattern: String::new(),
                    message: "a label name cannot be empty".into(),
                });
            }
            for pattern in patterns {
                let glob = |literal_separator: bool| -> Result<Glob, PolicyError> {
                    GlobBuilder::new(pattern)
                        .literal_separator(literal_separator)
                        .case_insensitive(matches!(kind, Kind::Host))
                        .backslash_escape(true)
                        .build()
                        .map_err(|e| PolicyError::Sensitivity {
                            field: field.to_string(),
                            label: label.clone(),
                            pattern: pattern.clone(),
                            message: e.kind().to_string(),
                        })
                };
                match kind {
                    Kind::Command | Kind::Host => {
                        set.add(glob(false)?);
                        labels.push(label.clone());
                    }
                    Kind::Path => {
                        set.add(glob(true)?);
                        labels.push(label.clone());
                        if !pattern.contains('/') {
                            names.add(glob(true)?);
                            name_labels.push(label.clone());
                        }
                    }
                }
            }
        }
        let finish = |b: GlobSetBuilder| {
            b.build().map_err(|e| PolicyError::Sensitivity {
                field: field.to_string(),
                label: String::new(),
                pattern: String::new(),
                message: e.to_string(),
            })
        };
        Ok(Self {
            set: finish(set)?,
            names: finish(names)?,
            labels,
            name_labels,
        })
    }

    fn add_matches(&self, candidate: &str, out: &mut BTreeSet<String>) {
        for i in self.set.matches(candidate) {
            if let Some(l) = self.labels.get(i) {
                out.insert(l.clone());
            }
        }
    }

    fn add_name_matches(&self, candidate: &str, out: &mut BTreeSet<String>) {
        for i in self.names.matches(candidate) {
            if let Some(l) = self.name_labels.get(i) {
                out.insert(l.clone());
            }
        }
    }
}

/// The compiled `[policy.sensitive]`: labels an exec's argv, a push's paths,
/// a connection's host. Every function returns sorted, deduplicated labels.
#[derive(Debug)]
pub struct SensitivityMatcher {
    commands: Labeled,
    paths: Labeled,
    hosts: Labeled,
}

/// Shell operators that separate commands of an inline script.
const SCRIPT_SEPARATORS: &[&str] = &["&&", "||", ";", "|", "\n", "&", "$(", "`", "(", ")"];

impl SensitivityMatcher {
    /// Labels of an exec. Candidates: the whole command line, the same with
    /// argv[0] replaced by its file name (`/usr/bin/terraform apply` is
    /// `terraform apply`), and each command of any argument that is an
    /// inline script (`bash -c "cd x && terraform apply"`).
    pub fn label_command(&self, argv: &[String]) -> Vec<String> {
        let mut out = BTreeSet::new();
        if argv.is_empty() {
            return Vec::new();
        }
        let joined = argv.join(" ");
        self.commands.add_matches(&joined, &mut out);
        if let Some((first, rest)) = argv.split_first() {
            let base = file_name(first);
            if base != first {
                let mut line = String::from(base);
                for a in rest {
                    line.push(' ');
                    line.push_str(a);
                }
                self.commands.add_matches(&line, &mut out);
            }
            for arg in rest {
                if !arg.contains(' ') {
                    continue;
                }
                for segment in split_script(arg) {
                    let words: Vec<&str> = segment.split_whitespace().collect();
                    let Some((prog, tail)) = words.split_first() else {
                        continue;
                    };
                    let mut line = String::from(file_name(prog));
                    for w in tail {
                        line.push(' ');
                        line.push_str(w);
                    }
                    self.commands.add_matches(&line, &mut out);
                    self.commands.add_matches(&words.join(" "), &mut out);
                }
            }
        }
        out.into_iter().collect()
    }

    /// Labels of the paths a push touches (repository-relative, `/`
    /// separated; a leading `./` or `/` is ignored).
    pub fn label_paths<S: AsRef<str>>(&self, paths: &[S]) -> Vec<String> {
        let mut out = BTreeSet::new();
        for p in paths {
            let p = p.as_ref();
            let p = p.strip_prefix("./").unwrap_or(p).trim_start_matches('/');
            self.paths.add_matches(p, &mut out);
            self.paths.add_name_matches(file_name(p), &mut out);
        }
        out.into_iter().collect()
    }

    /// Labels of a connection's host (a trailing dot is ignored).
    pub fn label_host(&self, host: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        self.hosts
            .add_matches(host.strip_suffix('.').unwrap_or(host), &mut out);
        out.into_iter().collect()
    }
}

fn file_name(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Split an inline shell script into its commands at shell operators. Not a
/// shell parser (quotes are not interpreted): good enough to find
/// `terraform apply` in `cd infra && terraform apply -auto-approve`.
fn split_script(script: &str) -> Vec<&str> {
    let mut parts = vec![script];
    for sep in SCRIPT_SEPARATORS {
        parts = parts.into_iter().flat_map(|p| p.split(sep)).collect();
    }
    parts
        .into_iter()
        .map(|p| p.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|p| !p.is_empty())
        .collect()
}

/// The longest run of a glob's literal characters that holds no space:
/// `*`, `?`, `[...]` and `{...}` end a run (their text is not literal).
fn longest_literal(pattern: &str) -> String {
    let mut best = String::new();
    let mut cur = String::new();
    let mut chars = pattern.chars();
    let end_run = |cur: &mut String, best: &mut String| {
        if cur.len() > best.len() {
            *best = std::mem::take(cur);
        }
        cur.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | ' ' | '\t' => end_run(&mut cur, &mut best),
            '[' | '{' => {
                end_run(&mut cur, &mut best);
                let close = if c == '[' { ']' } else { '}' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
            }
            '\\' => match chars.next() {
                Some(' ') | None => end_run(&mut cur, &mut best),
                Some(d) => cur.push(d),
            },
            c => cur.push(c),
        }
    }
    end_run(&mut cur, &mut best);
    best
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_words_are_literal_runs() {
        use super::longest_literal as w;
        assert_eq!(w("terraform apply*"), "terraform");
        assert_eq!(w("*migrate*"), "migrate");
        assert_eq!(w("rails db:*"), "rails");
        assert_eq!(w("kubectl [ad]*"), "kubectl");
        assert_eq!(w("*"), "");
        assert_eq!(w("a{bcdef,g}h"), "a");
        let words = super::Sensitivity::default().command_words();
        assert!(words.contains(&"terraform".to_string()), "{words:?}");
        assert!(!words.iter().any(|w| w.is_empty()), "{words:?}");
    }

    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn default_commands_label_migrations_and_iac() {
        let m = Sensitivity::default().compile().unwrap();
        assert_eq!(
            m.label_command(&argv("python manage.py migrate")),
            ["migration"]
        );
        assert_eq!(
            m.label_command(&argv("alembic upgrade head")),
            ["migration"]
        );
        assert_eq!(
            m.label_command(&argv("/usr/local/bin/terraform apply -auto-approve")),
            ["iac"]
        );
        assert_eq!(
            m.label_command(&[
                "bash".into(),
                "-c".into(),
                "cd infra && terraform apply -auto-approve; echo done".into()
            ]),
            ["iac"]
        );
        assert!(m
            .label_command(&argv("cargo test -p brig-policy"))
            .is_empty());
        assert!(m.label_command(&argv("terraform plan")).is_empty());
        assert!(m.label_command(&[]).is_empty());
    }

    #[test]
    fn paths_follow_gitignore_like_rules() {
        let m = Sensitivity::default().compile().unwrap();
        assert_eq!(m.label_paths(&["infra/prod/main.yaml"]), ["infra"]);
        assert_eq!(m.label_paths(&["modules/net/main.tf"]), ["infra"]);
        assert_eq!(m.label_paths(&["./.github/workflows/ci.yml"]), ["infra"]);
        assert!(m
            .label_paths(&["src/infra.rs", "docs/infra/x.md"])
            .is_empty());
        assert!(m.label_paths::<&str>(&[]).is_empty());
    }

    #[test]
    fn hosts_match_case_insensitively() {
        let m = Sensitivity::default().compile().unwrap();
        assert_eq!(m.label_host("S3.us-east-1.AmazonAWS.com."), ["cloud"]);
        assert!(m.label_host("crates.io").is_empty());
    }

    #[test]
    fn config_replaces_only_the_fields_it_names() {
        let s: Sensitivity = toml::from_str(
            r#"
            commands = { deploy = ["./deploy.sh*", "make deploy*"] }
            "#,
        )
        .unwrap();
        assert_eq!(s.paths, default_paths());
        let m = s.compile().unwrap();
        assert_eq!(m.label_command(&argv("make deploy ENV=prod")), ["deploy"]);
        assert!(m.label_command(&argv("terraform apply")).is_empty());
        let s: Sensitivity = toml::from_str("commands = {}\npaths = {}\nhosts = {}").unwrap();
        let m = s.compile().unwrap();
        assert!(m.label_paths(&["main.tf"]).is_empty());
    }

    #[test]
    fn an_invalid_glob_names_label_and_pattern() {
        let s: Sensitivity = toml::from_str(r#"paths = { bad = ["infra/[x"] }"#).unwrap();
        let err = s.compile().unwrap_err().to_string();
        assert!(err.contains("bad") && err.contains("infra/[x"), "{err}");
    }
}
