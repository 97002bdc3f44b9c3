//! How results and errors reach the user: aligned text for humans, the
//! API's own JSON with `--json` (stdout), errors on stderr either way.

use std::io::Write;

use brig_core::Error;

#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub json: bool,
    pub quiet: bool,
}

impl Out {
    /// Print a JSON value on stdout, pretty, newline-terminated.
    pub fn json_value(&self, v: &serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer_pretty(&mut out, v);
        let _ = writeln!(out);
        let _ = out.flush();
    }

    /// Print human text on stdout (nothing in `--json` mode).
    pub fn text(&self, s: &str) {
        if self.json {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(s.as_bytes());
        if !s.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }

    /// A note for humans on stderr (not in `--json` or `-q` mode).
    pub fn note(&self, s: &str) {
        if self.json || self.quiet {
            return;
        }
        eprintln!("{s}");
    }

    /// Report an error: `{"error": {...}}` with `--json`, else a message and
    /// its hint.
    pub fn error(&self, e: &Error) {
        if self.json {
            let body = brig_core::error::ApiErrorBody { error: e.clone() };
            let mut err = std::io::stderr().lock();
            let _ = serde_json::to_writer(&mut err, &body);
            let _ = writeln!(err);
        } else {
            eprintln!("brig: error: {}", e.message);
            if let Some(h) = &e.hint {
                eprintln!("  hint: {h}");
            }
        }
    }
}
