//! `ScanConfig`: the scanner's settings, embedded in brig.toml as `[scan]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// 1 MiB: the default large-file threshold.
pub const DEFAULT_LARGE_FILE_BYTES: u64 = 1024 * 1024;
/// 256 KiB: binary content (not an executable or archive) above this is reported.
pub const DEFAULT_MAX_BINARY_BYTES: u64 = 256 * 1024;
/// Bits per byte a token must exceed to be a high-entropy finding.
pub const DEFAULT_ENTROPY_THRESHOLD: f64 = 4.3;

/// The scanner's settings. Every field has a default, so `[scan]` may be
/// empty or absent; unknown keys are an error (a typo must not silently
/// weaken a security control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// A rules file in gitleaks' TOML format (`[[rules]]`, `[allowlist]`,
    /// `[extend]`, ...). A relative path is taken from the current directory
    /// (brig.toml's loader may resolve it first). None: built-in rules only.
    pub rules_file: Option<PathBuf>,
    /// With `rules_file`: true (default) adds its rules to the built-in set
    /// (a rule with a built-in rule's id replaces it); false replaces the
    /// built-in set, unless the file itself says `[extend] useDefault = true`.
    pub extend_builtin: bool,
    /// A file larger than this many bytes is a `large_file` finding. 0 turns
    /// the check off. Default 1 MiB.
    pub large_file_bytes: u64,
    /// Sniff file content for binaries (NUL bytes, ELF/PE/Mach-O/zip/... magic).
    /// Binary content is never searched for secrets. Executables, object files
    /// and archives are always a `binary_file` finding; other binary content
    /// (images, ...) only above `max_binary_bytes`. Default true.
    pub sniff_binary: bool,
    /// Binary content that is not an executable or archive is reported above
    /// this size. Default 256 KiB.
    pub max_binary_bytes: u64,
    /// Extra denied file names, as globs: a glob without `/` matches the file
    /// name in any directory (`*.sqlite`), one with `/` matches the whole path
    /// from the scan root (`config/prod/*.yaml`). Added to the built-in list.
    pub denied_files: Vec<String>,
    /// Shannon entropy (bits per byte) above which a token near a secret-ish
    /// word is a `high_entropy` finding; applies to rules tagged
    /// `high-entropy`. Default 4.3 (random hex never exceeds 4.0, so git SHAs
    /// and checksums stay quiet). 0 turns the high-entropy detector off.
    pub entropy_threshold: f64,
    /// Paths never reported, whatever the finding, as globs (same syntax as
    /// `denied_files`): test fixtures, vendored code.
    pub allow_paths: Vec<String>,
    /// Rule ids to turn off (built-in or from `rules_file`), e.g.
    /// `["jwt"]`. An id that names no rule is an error.
    pub disabled_rules: Vec<String>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            rules_file: None,
            extend_builtin: true,
            large_file_bytes: DEFAULT_LARGE_FILE_BYTES,
            sniff_binary: true,
            max_binary_bytes: DEFAULT_MAX_BINARY_BYTES,
            denied_files: Vec::new(),
            entropy_threshold: DEFAULT_ENTROPY_THRESHOLD,
            allow_paths: Vec::new(),
            disabled_rules: Vec::new(),
        }
    }
}

impl ScanConfig {
    /// The `[scan]` table of a brig.toml text (absent: defaults). Other
    /// tables belong to other parts of brig and are not looked at.
    pub fn from_brig_toml(text: &str, origin: &str) -> Result<ScanConfig, crate::ScanError> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| {
            crate::ScanError::config(
                origin,
                format!("not valid TOML: {}", e.to_string().trim_end()),
            )
        })?;
        match doc.get("scan") {
            None => Ok(ScanConfig::default()),
            Some(scan) => scan.clone().try_into().map_err(|e: toml::de::Error| {
                crate::ScanError::config(&format!("{origin}: [scan]"), e.to_string().trim_end())
            }),
        }
    }
}
