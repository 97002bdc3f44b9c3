//! The local terminal: raw mode (always restored), window size, a progress
//! spinner for anything that waits, and aligned tables.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts stdin's terminal in raw mode; the previous mode comes back on drop,
/// which also runs when the caller returns an error or panics.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// `None` when stdin is not a terminal (nothing to do).
    pub fn enable() -> std::io::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let fd = stdin.as_fd();
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// (rows, cols) of the terminal on stdout, else stdin, else stderr.
pub fn window_size() -> Option<(u16, u16)> {
    fn of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
        use std::os::fd::AsRawFd;
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
    }
    of(std::io::stdout().as_fd())
        .or_else(|| of(std::io::stdin().as_fd()))
        .or_else(|| of(std::io::stderr().as_fd()))
}

/// A spinner with elapsed time on stderr, only when stderr is a terminal
/// and the output is for humans.
pub struct Spinner {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: impl Into<String>, enabled: bool) -> Spinner {
        Self::start_shared(Arc::new(Mutex::new(message.into())), enabled)
    }

    /// A spinner whose message the caller may change while it spins.
    pub fn start_shared(message: Arc<Mutex<String>>, enabled: bool) -> Spinner {
        if !enabled || !std::io::stderr().is_terminal() {
            return Spinner {
                stop: None,
                task: None,
            };
        }
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let start = Instant::now();
            let mut i = 0;
            loop {
                let secs = start.elapsed().as_secs_f64();
                let message = message.lock().map(|m| m.clone()).unwrap_or_default();
                {
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K{} {message} {secs:.1}s",
                        FRAMES[i % FRAMES.len()]
                    );
                    let _ = err.flush();
                }
                i += 1;
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        });
        Spinner {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stop and erase the spinner line.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Print rows under headers, columns padded to the widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i] - c.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `sha256:0123456789ab…` → `sha256:0123456789ab` (12 hex digits, like docker).
pub fn short_digest(d: &str) -> String {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() > 12 => format!("sha256:{}", &h[..12]),
        _ => d.to_string(),
    }
}

/// How long ago an RFC 3339 time was, compactly (`5s`, `3m`, `2h`).
pub fn age(rfc3339: &str) -> String {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return rfc3339.to_string();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64;
    compact_secs(secs)
}

/// Only the largest unit: a table wants `2h`, not `2h13m7s`.
fn compact_secs(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["s-a".into(), "running".into()],
                vec!["s-bbbbbb".into(), "idle".into()],
            ],
        );
        assert_eq!(t, "ID        STATE\ns-a       running\ns-bbbbbb  idle\n");
    }

    #[test]
    fn ages_are_compact() {
        assert_eq!(compact_secs(0), "0s");
        assert_eq!(compact_secs(59), "59s");
        assert_eq!(compact_secs(61), "1m");
        assert_eq!(compact_secs(7300), "2h");
        assert_eq!(compact_secs(200_000), "2d");
    }

    #[test]
    fn digests_shorten() {
        assert_eq!(
            short_digest(&format!("sha256:{}", "a".repeat(64))),
            "sha256:aaaaaaaaaaaa"
        );
        assert_eq!(short_digest("x"), "x");
    }
}
