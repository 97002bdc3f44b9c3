//! `brig scan PATH|--git-range A..B`: the pre-push scanner as a command
//! (issue 5). The scanning itself is brig-scan's; this file turns arguments
//! into a `Scanner`, a report into text, JSON or SARIF, and findings into
//! exit code 1.

use std::path::{Path, PathBuf};

use brig_core::{Error, Result};
use brig_scan::{Report, ScanConfig, Scanner};

use crate::output::Out;

/// Exit code when the scan found something.
const EXIT_FINDINGS: i32 = 1;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanFormat {
    Text,
    Json,
    Sarif,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "The scan settings come from the `[scan]` table of brig.toml \
    (the global --config / BRIG_CONFIG, else /etc/brig/brig.toml if present; a file that \
    is only a [scan] table works too). Exit codes: 0 clean, 1 findings, 2 bad input."
)]
pub struct ScanArgs {
    /// A directory (or file) to scan: .gitignore honoured, .git skipped.
    #[arg(required_unless_present = "git_range", conflicts_with = "git_range")]
    pub path: Option<PathBuf>,
    /// Scan every commit of a git range (A..B) instead: the lines each commit adds.
    #[arg(long, value_name = "A..B")]
    pub git_range: Option<String>,
    /// The repository for --git-range (default: the current directory).
    #[arg(long, value_name = "DIR", requires = "git_range")]
    pub repo: Option<PathBuf>,
    /// A rules file in gitleaks' TOML format (overrides [scan] rules_file).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// With --rules: use only that file's rules, not brig's built-in ones.
    #[arg(long, requires = "rules")]
    pub no_builtin: bool,
    /// Output format (--json is the same as --format json).
    #[arg(long, value_enum, default_value = "text")]
    pub format: ScanFormat,
}

/// `[scan]` of a brig.toml (a missing table means defaults; other tables are
/// someone else's and ignored here). A relative rules_file is taken from the
/// file's directory.
fn load_config(path: &Path) -> Result<ScanConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read config file {}: {e}", path.display())))?;
    let mut cfg = ScanConfig::from_brig_toml(&text, &path.display().to_string()).map_err(|e| {
        Error::invalid(e.to_string()).hint("see docs/SCANNER.md for the [scan] settings")
    })?;
    if let (Some(rf), Some(dir)) = (&cfg.rules_file, path.parent()) {
        if rf.is_relative() {
            cfg.rules_file = Some(dir.join(rf));
        }
    }
    Ok(cfg)
}

/// `config`: the brig.toml the dispatcher resolved (`--config` /
/// BRIG_CONFIG, else /etc/brig/brig.toml if present).
fn scanner(a: &ScanArgs, config: Option<&Path>) -> Result<Scanner> {
    let mut cfg = match config {
        Some(p) => load_config(p)?,
        None => ScanConfig::default(),
    };
    if let Some(r) = &a.rules {
        cfg.rules_file = Some(r.clone());
        cfg.extend_builtin = !a.no_builtin;
    }
    Scanner::new(&cfg).map_err(|e| {
        Error::invalid(e.to_string()).hint("fix the rules or [scan] settings named above")
    })
}

/// A path or excerpt as safe terminal text.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn print_text(r: &Report, out: Out) {
    let mut s = String::new();
    for f in &r.findings {
        s.push_str(&f.summary());
        s.push('\n');
        if !f.excerpt.is_empty() {
            s.push_str(&format!("    {}\n", clean(&f.excerpt)));
        }
    }
    if !s.is_empty() {
        out.text(&s);
    }
}

pub fn run(a: &ScanArgs, config: Option<&Path>, out: Out) -> Result<i32> {
    let sc = scanner(a, config)?;
    let report = match (&a.git_range, &a.path) {
        (Some(range), _) => {
            if range.starts_with('-') || range.trim().is_empty() {
                return Err(Error::invalid(format!("`{range}` is not a git range"))
                    .hint("give a range of commits such as main..HEAD"));
            }
            let repo = a.repo.clone().unwrap_or_else(|| PathBuf::from("."));
            sc.scan_git_range(&repo, range).map_err(|e| {
                Error::invalid(e.to_string()).hint(
                    "give a range of existing commits (A..B) in a git repository (--repo DIR)",
                )
            })?
        }
        (None, Some(path)) => sc
            .scan_dir(path)
            .map_err(|e| Error::invalid(e.to_string()))?,
        (None, None) => {
            return Err(Error::invalid("nothing to scan").hint("give a PATH or --git-range A..B"))
        }
    };
    let format = if out.json { ScanFormat::Json } else { a.format };
    match format {
        ScanFormat::Json => out.json_value(
            &serde_json::to_value(&report).map_err(|e| Error::internal(e.to_string()))?,
        ),
        ScanFormat::Sarif => out.json_value(&brig_scan::to_sarif(&report)),
        ScanFormat::Text => print_text(&report, out),
    }
    for u in &report.unreadable {
        eprintln!("brig: warning: not scanned: {}", clean(u));
    }
    if format == ScanFormat::Text {
        let what = if a.git_range.is_some() {
            format!(
                "{} commits, {} files",
                report.commits_scanned, report.files_scanned
            )
        } else {
            format!("{} files", report.files_scanned)
        };
        out.note(&format!(
            "{} finding(s) in {what}, {:.1} MB scanned",
            report.findings.len(),
            report.bytes_scanned as f64 / 1e6
        ));
    }
    Ok(if report.is_clean() { 0 } else { EXIT_FINDINGS })
}
