//! `brig policy lint`: every finding about policy sources, errors and
//! warnings, without building an engine.

use std::collections::HashMap;

use cedar_policy::{Schema, Validator};

use crate::engine::{shipped_sources, SCHEMA};
use crate::error::{Diagnostic, Severity};
use crate::source::{load, PolicySource};

/// Lint `sources` (name, text): parse errors, strict validation against
/// brig's schema (unknown types, attributes, actions; type errors), Cedar's
/// own warnings, and brig's: a policy without `@id` or `@reason`, an
/// `@approval` that nothing can satisfy, a duplicate id (among the sources,
/// or of a shipped policy: such a file cannot be loaded next to it).
/// Sorted by source, line, column.
pub fn lint(sources: &[(&str, &str)]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let schema = match Schema::from_cedarschema_str(SCHEMA) {
        Ok((s, _)) => s,
        Err(e) => {
            out.push(Diagnostic {
                source: "schema.cedarschema".into(),
                line: 0,
                col: 0,
                severity: Severity::Error,
                policy: None,
                message: format!("brig's embedded schema does not load: {e}"),
            });
            return out;
        }
    };
    let validator = Validator::new(schema);
    let mut shipped: HashMap<String, String> = HashMap::new();
    for src in shipped_sources() {
        for l in load(&src, &validator).0 {
            shipped.insert(l.meta.id, src.name.clone());
        }
    }
    let mut seen: HashMap<String, (String, usize, usize)> = HashMap::new();
    for (name, text) in sources {
        let src = PolicySource::new(*name, *text);
        let (loaded, diags) = load(&src, &validator);
        out.extend(diags);
        for l in loaded {
            let at = || (l.line, l.col);
            if let Some(from) = shipped.get(&l.meta.id) {
                if !name.starts_with("shipped:") {
                    let (line, col) = at();
                    out.push(Diagnostic {
                        source: name.to_string(),
                        line,
                        col,
                        severity: Severity::Error,
                        policy: Some(l.meta.id.clone()),
                        message: format!(
                            "@id {:?} is already a shipped policy ({from}): pick another id",
                            l.meta.id
                        ),
                    });
                }
            }
            if let Some((other, line, col)) = seen.get(&l.meta.id) {
                if other != name {
                    let (l2, c2) = at();
                    out.push(Diagnostic {
                        source: name.to_string(),
                        line: l2,
                        col: c2,
                        severity: Severity::Error,
                        policy: Some(l.meta.id.clone()),
                        message: format!(
                            "duplicate @id {:?} (also {other}:{line}:{col})",
                            l.meta.id
                        ),
                    });
                }
            } else {
                let (line, col) = at();
                seen.insert(l.meta.id.clone(), (name.to_string(), line, col));
            }
        }
    }
    out.sort_by(|a, b| (&a.source, a.line, a.col).cmp(&(&b.source, b.line, b.col)));
    out
}
