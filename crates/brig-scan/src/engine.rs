//! Scanning one file: names, size, content type, then content rules.

use std::collections::{HashMap, HashSet};

use aho_corasick::Input;
use sha2::{Digest, Sha256};

use crate::report::{Finding, FindingKind};
use crate::rules::{Candidate, Rule};
use crate::sniff::{sniff, Sniff};
use crate::Scanner;

/// Excerpts are capped to this many bytes of the line, around the secret.
const EXCERPT_BYTES: usize = 160;
const MASK: &str = "[REDACTED]";

/// One file to scan.
pub(crate) struct FileInput<'a> {
    pub path: &'a str,
    /// The content; None when it was too large to read (size still checked).
    pub data: Option<&'a [u8]>,
    pub size: u64,
    pub commit: Option<&'a str>,
    /// Git scans: the first parent's version; only lines not in it are reported.
    pub old: Option<&'a [u8]>,
}

/// A content match that survived entropy and allowlists.
#[derive(Debug, Clone)]
struct Hit {
    rule: u32,
    /// The secret's byte span.
    start: usize,
    end: usize,
    dropped: bool,
}

pub(crate) fn shannon(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

fn fingerprint(rule: &str, secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"brig-scan/v1\0");
    h.update(rule.as_bytes());
    h.update(b"\0");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

fn line_bounds(data: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(data.len());
    let ls = memchr::memrchr(b'\n', &data[..at]).map_or(0, |i| i + 1);
    let le = memchr::memchr(b'\n', &data[at..]).map_or(data.len(), |i| at + i);
    (ls, le)
}

impl Scanner {
    fn whole_file(
        &self,
        rule: &str,
        kind: FindingKind,
        description: String,
        f: &FileInput<'_>,
    ) -> Finding {
        Finding {
            rule: rule.to_string(),
            kind,
            description,
            path: f.path.to_string(),
            line: 0,
            column: 0,
            commit: f.commit.map(str::to_string),
            fingerprint: fingerprint(rule, f.path.as_bytes()),
            excerpt: String::new(),
        }
    }

    fn globally_allowed(&self, rule: &Rule, c: &Candidate<'_>) -> bool {
        self.global
            .iter()
            .filter(|a| a.target_rules.is_empty() || a.target_rules.iter().any(|t| t == &rule.id))
            .any(|a| a.allows(c))
    }

    fn allowed(&self, rule: &Rule, c: &Candidate<'_>) -> bool {
        rule.allowlists.iter().any(|a| a.allows(c)) || self.globally_allowed(rule, c)
    }

    pub(crate) fn scan_file(&self, f: &FileInput<'_>, out: &mut Vec<Finding>) {
        if self.allowed.matching(f.path).is_some() {
            return;
        }
        let path_only = |commit| Candidate {
            commit,
            path: f.path,
            secret: b"",
            matched: b"",
            line: b"",
        };
        // A file every rule's allowlist skips by path (a lockfile) is exempt
        // from rules and the size limit, not from binary sniffing.
        let exempt = self
            .global
            .iter()
            .any(|a| a.target_rules.is_empty() && a.paths_only() && a.allows(&path_only(f.commit)));
        if !exempt {
            for &i in &self.path_rules {
                let r = &self.rules[i as usize];
                if r.path
                    .as_ref()
                    .is_some_and(|p| p.is_match(f.path.as_bytes()))
                    && !self.allowed(r, &path_only(f.commit))
                {
                    out.push(self.whole_file(
                        &r.id,
                        FindingKind::DeniedFileName,
                        r.description.clone(),
                        f,
                    ));
                }
            }
        }
        if let Some(g) = self.denied.matching(f.path) {
            out.push(self.whole_file(
                "denied-file-name",
                FindingKind::DeniedFileName,
                format!("file name denied by [scan] denied_files (`{g}`)"),
                f,
            ));
        }
        if !exempt && self.large_file_bytes > 0 && f.size > self.large_file_bytes {
            out.push(self.whole_file(
                "large-file",
                FindingKind::LargeFile,
                format!(
                    "file is {} bytes, over the {}-byte limit",
                    f.size, self.large_file_bytes
                ),
                f,
            ));
        }
        let Some(data) = f.data else { return };
        if self.sniff_binary {
            match sniff(data) {
                Sniff::Text => {}
                Sniff::Executable(what) => {
                    out.push(self.whole_file(
                        "binary-file",
                        FindingKind::BinaryFile,
                        format!("binary file: {what}"),
                        f,
                    ));
                    return;
                }
                Sniff::Data => {
                    if self.max_binary_bytes > 0 && f.size > self.max_binary_bytes {
                        out.push(self.whole_file(
                            "binary-file",
                            FindingKind::BinaryFile,
                            format!(
                                "binary content of {} bytes, over the {}-byte limit for binaries",
                                f.size, self.max_binary_bytes
                            ),
                            f,
                        ));
                    }
                    return;
                }
            }
        }
        if exempt {
            return;
        }
        self.scan_content(f, data, out);
    }

    fn rule_applies(&self, r: &Rule, path: &str) -> bool {
        r.path.as_ref().is_none_or(|p| p.is_match(path.as_bytes()))
    }

    fn scan_content(&self, f: &FileInput<'_>, data: &[u8], out: &mut Vec<Finding>) {
        let mut hits: Vec<Hit> = Vec::new();
        let mut seen: HashSet<(u32, usize, usize)> = HashSet::new();
        let mut multiline_done = vec![false; self.rules.len()];
        // Per-file cache of path-scoped rules: 0 unknown, 1 applies, 2 not.
        let mut applies = vec![0u8; self.rules.len()];
        let mut check = |i: u32| -> bool {
            let s = &mut applies[i as usize];
            if *s == 0 {
                *s = if self.rule_applies(&self.rules[i as usize], f.path) {
                    1
                } else {
                    2
                };
            }
            *s == 1
        };
        for &i in &self.nokw_rules {
            if check(i) {
                self.run_rule(i, f, data, 0, data.len(), &mut hits, &mut seen);
            }
        }
        if let Some(ac) = &self.ac {
            let mut on_line: Vec<u32> = Vec::new();
            let mut pos = 0;
            while pos < data.len() {
                let Some(m) = ac.find(Input::new(data).span(pos..data.len())) else {
                    break;
                };
                let ls = memchr::memrchr(b'\n', &data[pos..m.start()]).map_or(pos, |i| pos + i + 1);
                let le =
                    memchr::memchr(b'\n', &data[m.end()..]).map_or(data.len(), |i| m.end() + i);
                on_line.clear();
                for k in ac.find_overlapping_iter(&data[ls..le]) {
                    for &r in &self.kw_rules[k.pattern().as_usize()] {
                        if !on_line.contains(&r) {
                            on_line.push(r);
                        }
                    }
                }
                for &r in &on_line {
                    if !check(r) {
                        continue;
                    }
                    if self.rules[r as usize].multiline {
                        // Once, from its first keyword line to the end: every
                        // later match is found by the same left-to-right search
                        // (re-running it per keyword line was quadratic on
                        // certificate bundles).
                        if !multiline_done[r as usize] {
                            multiline_done[r as usize] = true;
                            self.run_rule(r, f, data, ls, data.len(), &mut hits, &mut seen);
                        }
                    } else {
                        self.run_rule(r, f, data, ls, le, &mut hits, &mut seen);
                    }
                }
                pos = le + 1;
            }
        }
        if hits.is_empty() {
            return;
        }
        self.finish(f, data, hits, out);
    }

    /// Run rule `ri` on `data[from..to]` (the regex sees the bytes before
    /// `from` for `\b` and `^`), keeping matches that pass entropy and allowlists.
    #[allow(clippy::too_many_arguments)]
    fn run_rule(
        &self,
        ri: u32,
        f: &FileInput<'_>,
        data: &[u8],
        from: usize,
        to: usize,
        hits: &mut Vec<Hit>,
        seen: &mut HashSet<(u32, usize, usize)>,
    ) {
        let r = &self.rules[ri as usize];
        let Some(re) = &r.regex else { return };
        let hay = &data[..to];
        let mut at = from;
        let mut locs = re.capture_locations();
        while at <= hay.len() {
            let Some(m) = re.captures_read_at(&mut locs, hay, at) else {
                break;
            };
            at = if m.end() > m.start() {
                m.end()
            } else {
                m.end() + 1
            };
            let (s, e) = match r.secret_group {
                Some(g) => match locs.get(g) {
                    Some(span) => span,
                    None => continue,
                },
                // gitleaks: the first capture group that matched, else the match.
                None => (1..locs.len())
                    .find_map(|g| locs.get(g).filter(|(a, b)| b > a))
                    .unwrap_or((m.start(), m.end())),
            };
            let secret = &data[s..e];
            if secret.is_empty() || !seen.insert((ri, s, e)) {
                continue;
            }
            if let Some(min) = r.entropy {
                if shannon(secret) <= min {
                    continue;
                }
            }
            let (ls, le) = line_bounds(data, s);
            let c = Candidate {
                commit: f.commit,
                path: f.path,
                secret,
                matched: m.as_bytes(),
                line: &data[ls..le],
            };
            if self.allowed(r, &c) {
                continue;
            }
            hits.push(Hit {
                rule: ri,
                start: s,
                end: e,
                dropped: false,
            });
        }
    }

    fn finish(&self, f: &FileInput<'_>, data: &[u8], mut hits: Vec<Hit>, out: &mut Vec<Finding>) {
        hits.sort_by_key(|h| (h.start, h.end, h.rule));
        // Overlapping text: a specific rule's finding beats a generic one's,
        // which beats a high-entropy one's.
        for i in 0..hits.len() {
            let mut j = i + 1;
            while j < hits.len() && hits[j].start < hits[i].end {
                let (pi, pj) = (
                    self.rules[hits[i].rule as usize].priority,
                    self.rules[hits[j].rule as usize].priority,
                );
                if pi > pj {
                    hits[j].dropped = true;
                } else if pj > pi {
                    hits[i].dropped = true;
                }
                j += 1;
            }
        }
        hits.retain(|h| !h.dropped);
        // Line numbers, counted once through the file.
        let mut lines = Vec::with_capacity(hits.len());
        let (mut line, mut pos) = (1u32, 0usize);
        for h in &hits {
            line += memchr::memchr_iter(b'\n', &data[pos..h.start]).count() as u32;
            pos = h.start;
            let last = line
                + memchr::memchr_iter(b'\n', &data[h.start..h.end.saturating_sub(1).max(h.start)])
                    .count() as u32;
            lines.push((line, last));
        }
        let added = f.old.map(|old| added_lines(old, data));
        let spans: Vec<(usize, usize)> = hits.iter().map(|h| (h.start, h.end)).collect();
        for (h, &(first, last)) in hits.iter().zip(&lines) {
            if let Some(added) = &added {
                if !(first..=last).any(|l| added.get(l as usize - 1).copied().unwrap_or(false)) {
                    continue;
                }
            }
            let r = &self.rules[h.rule as usize];
            let (ls, le) = line_bounds(data, h.start);
            out.push(Finding {
                rule: r.id.clone(),
                kind: r.kind,
                description: r.description.clone(),
                path: f.path.to_string(),
                line: first,
                column: (h.start - ls + 1) as u32,
                commit: f.commit.map(str::to_string),
                fingerprint: fingerprint(&r.id, &data[h.start..h.end]),
                excerpt: excerpt(data, ls, le, h.start, &spans),
            });
        }
    }
}

/// For each line of `new`, whether it is absent from `old` (counting
/// duplicates): the lines a commit adds, by content, with new line numbers.
pub(crate) fn added_lines(old: &[u8], new: &[u8]) -> Vec<bool> {
    let mut counts: HashMap<&[u8], u32> = HashMap::new();
    for l in old.split(|&b| b == b'\n') {
        *counts.entry(l).or_default() += 1;
    }
    new.split(|&b| b == b'\n')
        .map(|l| match counts.get_mut(l) {
            Some(c) if *c > 0 => {
                *c -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// The line `data[ls..le]` around `at`, every secret span on it masked,
/// capped, with control characters replaced so it is safe on a terminal.
fn excerpt(data: &[u8], ls: usize, le: usize, at: usize, spans: &[(usize, usize)]) -> String {
    let (mut ws, mut we) = (ls, le);
    if we - ws > EXCERPT_BYTES {
        ws = at.saturating_sub(EXCERPT_BYTES / 2).max(ls);
        we = (ws + EXCERPT_BYTES).min(le);
    }
    let mut out = String::new();
    if ws > ls {
        out.push('…');
    }
    let mut pos = ws;
    let mut masks: Vec<(usize, usize)> = spans
        .iter()
        .filter(|(s, e)| *s < we && *e > ws)
        .map(|&(s, e)| (s.max(ws), e.min(we)))
        .collect();
    masks.sort();
    for (s, e) in masks {
        if e <= pos {
            continue;
        }
        let s = s.max(pos);
        push_clean(&mut out, &data[pos..s]);
        out.push_str(MASK);
        pos = e;
    }
    push_clean(&mut out, &data[pos..we.max(pos)]);
    if we < le {
        out.push('…');
    }
    out.trim().to_string()
}

fn push_clean(out: &mut String, bytes: &[u8]) {
    for c in String::from_utf8_lossy(bytes).chars() {
        out.push(if c == '\t' {
            ' '
        } else if c.is_control() {
            '\u{fffd}'
        } else {
            c
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_known_strings() {
        assert_eq!(shannon(b"aaaa"), 0.0);
        assert!((shannon(b"ab") - 1.0).abs() < 1e-9);
        assert!((shannon(b"0123456789abcdef") - 4.0).abs() < 1e-9);
    }

    #[test]
    fn added_lines_counts_duplicates() {
        let old = b"a\nb\nb\n";
        let new = b"a\nb\nx\nb\nb\n";
        assert_eq!(
            added_lines(old, new),
            vec![false, false, true, false, true, false]
        );
    }

    #[test]
    fn excerpt_masks_every_secret_on_the_line() {
        let data = b"x\nkey=SECRETONE other=SECRETTWO tail\ny";
        let one = (6, 15);
        let two = (22, 31);
        let e = excerpt(data, 2, 36, 6, &[one, two]);
        assert_eq!(e, "key=[REDACTED] other=[REDACTED] tail");
    }

    #[test]
    fn excerpt_of_a_long_line_is_capped_and_masked() {
        let mut line = "a".repeat(1000);
        line.push_str("TOPSECRETVALUE");
        line.push_str(&"b".repeat(1000));
        let s = 1000;
        let e = excerpt(line.as_bytes(), 0, line.len(), s, &[(s, s + 14)]);
        assert!(!e.contains("TOPSECRET"));
        assert!(e.contains(MASK));
        assert!(e.chars().count() < EXCERPT_BYTES + 20);
    }

    #[test]
    fn excerpt_replaces_control_characters() {
        let data = b"pw=\x1b[31mX\x07";
        let e = excerpt(data, 0, data.len(), 0, &[]);
        assert!(!e.contains('\x1b') && !e.contains('\x07'));
    }
}
