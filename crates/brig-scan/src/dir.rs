//! Scanning a directory tree on both cores.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ignore::{WalkBuilder, WalkState};

use crate::engine::FileInput;
use crate::error::ScanError;
use crate::report::{Finding, Report};
use crate::Scanner;

/// Content above this is not read whole: only sniffed (and reported large).
pub(crate) const MAX_CONTENT_BYTES: u64 = 64 << 20;
/// Unreadable paths kept in a report, at most.
const MAX_UNREADABLE: usize = 100;

/// Read a file, but no more than the sniffing head of a huge one.
fn read_capped(path: &Path, size: u64) -> std::io::Result<(Vec<u8>, bool)> {
    let mut f = std::fs::File::open(path)?;
    if size > MAX_CONTENT_BYTES {
        let mut head = vec![0; crate::sniff::SNIFF_BYTES];
        let n = f.read(&mut head)?;
        head.truncate(n);
        return Ok((head, false));
    }
    let mut buf = Vec::with_capacity(size as usize + 1);
    f.read_to_end(&mut buf)?;
    Ok((buf, true))
}

impl Scanner {
    fn scan_path(
        &self,
        path: &Path,
        rel: &str,
        size: u64,
        out: &mut Vec<Finding>,
    ) -> std::io::Result<u64> {
        let (data, whole) = read_capped(path, size)?;
        if whole {
            self.scan_file(
                &FileInput {
                    path: rel,
                    data: Some(&data),
                    size: data.len() as u64,
                    commit: None,
                    old: None,
                },
                out,
            );
        } else {
            // Too big to read: name and size checks, and a binary sniff of the head.
            let sniff_only = if crate::sniff::sniff(&data) == crate::sniff::Sniff::Text {
                None
            } else {
                Some(&data[..])
            };
            self.scan_file(
                &FileInput {
                    path: rel,
                    data: sniff_only,
                    size,
                    commit: None,
                    old: None,
                },
                out,
            );
        }
        Ok(data.len() as u64)
    }
}

pub(crate) fn scan_dir(sc: &Scanner, root: &Path) -> Result<Report, ScanError> {
    let meta = std::fs::metadata(root).map_err(|source| ScanError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut report = Report::default();
    if meta.is_file() {
        let rel = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        report.bytes_scanned = sc
            .scan_path(root, &rel, meta.len(), &mut report.findings)
            .map_err(|source| ScanError::Io {
                path: root.to_path_buf(),
                source,
            })?;
        report.files_scanned = 1;
        return Ok(report);
    }
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let walker = WalkBuilder::new(root)
        .hidden(false)
        // .gitignore and .git/info/exclude only: what git itself would leave
        // out, not ripgrep's .ignore files nor the user's global excludes.
        .ignore(false)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .threads(threads)
        .filter_entry(|e| e.file_name() != ".git")
        .build_parallel();
    let files = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let findings = Mutex::new(Vec::new());
    let unreadable = Mutex::new(Vec::new());
    walker.run(|| {
        let (files, bytes, findings, unreadable) = (&files, &bytes, &findings, &unreadable);
        let mut local = Vec::new();
        Box::new(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    push_capped(unreadable, e.to_string());
                    return WalkState::Continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return WalkState::Continue;
            }
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match sc.scan_path(path, &rel, size, &mut local) {
                Ok(n) => {
                    files.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => push_capped(unreadable, format!("{rel}: {e}")),
            }
            if !local.is_empty() {
                findings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&mut local);
            }
            WalkState::Continue
        })
    });
    report.findings = findings.into_inner().unwrap_or_else(|p| p.into_inner());
    report.unreadable = unreadable.into_inner().unwrap_or_else(|p| p.into_inner());
    report.files_scanned = files.into_inner();
    report.bytes_scanned = bytes.into_inner();
    report.sort();
    Ok(report)
}

fn push_capped(v: &Mutex<Vec<String>>, s: String) {
    let mut v = v.lock().unwrap_or_else(|p| p.into_inner());
    if v.len() < MAX_UNREADABLE {
        v.push(s);
    }
}
