//! What a scan reports: findings (never the secret itself), a report, SARIF.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A credential matched by a rule (API key, token, password assignment).
    Secret,
    /// A private key block (PEM, OpenSSH, PGP, PuTTY).
    PrivateKey,
    /// A random-looking token next to a secret-ish word.
    HighEntropy,
    /// A file above the size limit.
    LargeFile,
    /// An executable, object file or archive, or large binary content.
    BinaryFile,
    /// A file whose name alone says it holds secrets (.env, id_rsa, *.pem, ...).
    DeniedFileName,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Secret => "secret",
            FindingKind::PrivateKey => "private_key",
            FindingKind::HighEntropy => "high_entropy",
            FindingKind::LargeFile => "large_file",
            FindingKind::BinaryFile => "binary_file",
            FindingKind::DeniedFileName => "denied_file_name",
        }
    }
}

/// One problem in one file (of one commit). It never holds the secret: the
/// excerpt has it masked and the fingerprint is a digest of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule id (`aws-access-key-id`, `large-file`, ...).
    pub rule: String,
    pub kind: FindingKind,
    /// What the rule detects, for humans.
    pub description: String,
    /// The file, relative to the scan root or the repository, `/`-separated.
    pub path: String,
    /// 1-based line of the secret in the (new) file; 0 = the whole file.
    pub line: u32,
    /// 1-based byte column of the secret on that line; 0 = the whole file.
    pub column: u32,
    /// The commit that added it, for git scans.
    pub commit: Option<String>,
    /// A short hex digest of the rule and the matched secret: stable across
    /// runs (baselines, de-duplication), never the secret.
    pub fingerprint: String,
    /// The line with every secret on it masked, capped to a few hundred
    /// characters, control characters replaced. Empty for whole-file findings.
    pub excerpt: String,
}

impl Finding {
    /// One line for people (git's remote output, terminals): `path:line:column:
    /// rule [kind] (commit abc123def456): description`. Control characters in
    /// the path are replaced; the secret is not in it.
    pub fn summary(&self) -> String {
        let mut s: String = self
            .path
            .chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect();
        if self.line > 0 {
            s.push_str(&format!(":{}:{}", self.line, self.column));
        }
        s.push_str(&format!(": {} [{}]", self.rule, self.kind.as_str()));
        if let Some(c) = &self.commit {
            s.push_str(&format!(" (commit {})", &c[..c.len().min(12)]));
        }
        s.push_str(": ");
        s.push_str(&self.description);
        s
    }
}

/// The outcome of one scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Files looked at (names and sizes), including binary ones.
    pub files_scanned: u64,
    /// Bytes of content read, including binary content only sniffed.
    pub bytes_scanned: u64,
    /// Commits looked at (git scans; 0 otherwise).
    pub commits_scanned: u64,
    /// Files that could not be read (directory scans), at most 100: a scan
    /// with any is incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Findings in a stable order: commit order is kept, then path, line, column, rule.
    pub(crate) fn sort(&mut self) {
        self.findings.sort_by(|a, b| {
            (&a.path, a.line, a.column, &a.rule).cmp(&(&b.path, b.line, b.column, &b.rule))
        });
    }
}

fn level(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::HighEntropy => "warning",
        _ => "error",
    }
}

/// The report as SARIF 2.1.0 (one run; rules are the ones with results).
pub fn to_sarif(report: &Report) -> Value {
    let mut rules: BTreeMap<&str, &Finding> = BTreeMap::new();
    for f in &report.findings {
        rules.entry(f.rule.as_str()).or_insert(f);
    }
    let index: BTreeMap<&str, usize> = rules.keys().enumerate().map(|(i, r)| (*r, i)).collect();
    let rules_json: Vec<Value> = rules
        .values()
        .map(|f| {
            json!({
                "id": f.rule,
                "name": f.rule,
                "shortDescription": { "text": f.description },
                "defaultConfiguration": { "level": level(f.kind) },
                "properties": { "tags": [f.kind.as_str()] },
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let mut physical = json!({ "artifactLocation": { "uri": f.path } });
            if f.line > 0 {
                physical["region"] = json!({ "startLine": f.line, "startColumn": f.column.max(1) });
            }
            let mut r = json!({
                "ruleId": f.rule,
                "ruleIndex": index[f.rule.as_str()],
                "level": level(f.kind),
                "kind": "fail",
                "message": { "text": format!("{}: {}", f.kind.as_str(), f.description) },
                "locations": [{ "physicalLocation": physical }],
                "partialFingerprints": { "brigScan/v1": f.fingerprint },
            });
            if let Some(c) = &f.commit {
                r["properties"] = json!({ "commit": c });
            }
            r
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "brig-scan",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules_json,
            }},
            "results": results,
        }],
    })
}
