//! Prometheus metrics, exposition written by hand (text format 0.0.4): a
//! few counters and histograms need no registry crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use brig_core::session::SessionState;

/// A histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Default)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            inner: Mutex::new(HistInner {
                counts: Vec::new(),
                sum: 0.0,
                count: 0,
            }),
        }
    }
    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if h.counts.is_empty() {
            h.counts = vec![0; self.bounds.len()];
        }
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in self.bounds.iter().enumerate() {
            let c = h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

const FAST: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const EXEC: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0,
];

/// How an exec ended, as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    Success,
    Failure,
    Signaled,
    TimedOut,
    SpawnFailed,
}

impl ExecOutcome {
    const ALL: [ExecOutcome; 5] = [
        ExecOutcome::Success,
        ExecOutcome::Failure,
        ExecOutcome::Signaled,
        ExecOutcome::TimedOut,
        ExecOutcome::SpawnFailed,
    ];
    fn label(self) -> &'static str {
        match self {
            ExecOutcome::Success => "success",
            ExecOutcome::Failure => "failure",
            ExecOutcome::Signaled => "signaled",
            ExecOutcome::TimedOut => "timed_out",
            ExecOutcome::SpawnFailed => "spawn_failed",
        }
    }
}

/// Reaper actions, as a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaperAction {
    IdleTimeout,
    Timebox,
    MarkedIdle,
    Died,
}

impl ReaperAction {
    const ALL: [ReaperAction; 4] = [
        ReaperAction::IdleTimeout,
        ReaperAction::Timebox,
        ReaperAction::MarkedIdle,
        ReaperAction::Died,
    ];
    fn label(self) -> &'static str {
        match self {
            ReaperAction::IdleTimeout => "idle_timeout",
            ReaperAction::Timebox => "timebox",
            ReaperAction::MarkedIdle => "marked_idle",
            ReaperAction::Died => "sandbox_died",
        }
    }
}

pub struct Metrics {
    pub sessions_created: AtomicU64,
    pub sessions_destroyed: AtomicU64,
    pub sessions_failed: AtomicU64,
    execs: [AtomicU64; 5],
    reaper: [AtomicU64; 4],
    pub execs_running: AtomicU64,
    pub exec_duration: Histogram,
    pub spinup_duration: Histogram,
    pub kill_switch_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sessions_created: AtomicU64::new(0),
            sessions_destroyed: AtomicU64::new(0),
            sessions_failed: AtomicU64::new(0),
            execs: Default::default(),
            reaper: Default::default(),
            execs_running: AtomicU64::new(0),
            exec_duration: Histogram::new(EXEC),
            spinup_duration: Histogram::new(FAST),
            kill_switch_duration: Histogram::new(FAST),
        }
    }
}

impl Metrics {
    pub fn exec_done(&self, outcome: ExecOutcome, d: Duration) {
        self.execs[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.exec_duration.observe(d);
    }
    pub fn reaper_action(&self, a: ReaperAction) {
        self.reaper[a as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition; `by_state` is the number of sessions in each state.
    pub fn render(&self, by_state: &[(SessionState, u64)]) -> String {
        let mut out = String::new();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP brig_sessions Sessions by state.\n# TYPE brig_sessions gauge\n");
        for st in [
            SessionState::Created,
            SessionState::Running,
            SessionState::Idle,
            SessionState::Destroyed,
            SessionState::Failed,
        ] {
            let n = by_state
                .iter()
                .find(|(s, _)| *s == st)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            let _ = writeln!(out, "brig_sessions{{state=\"{}\"}} {n}", st.as_str());
        }
        for (name, help, v) in [
            (
                "brig_sessions_created_total",
                "Sessions created (sandbox started).",
                &self.sessions_created,
            ),
            (
                "brig_sessions_destroyed_total",
                "Sessions destroyed.",
                &self.sessions_destroyed,
            ),
            (
                "brig_sessions_failed_total",
                "Sessions that failed to start or died.",
                &self.sessions_failed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                g(v)
            );
        }
        let total: u64 = self.execs.iter().map(g).sum();
        let _ = writeln!(
            out,
            "# HELP brig_execs_total Commands run, all outcomes.\n# TYPE brig_execs_total counter\nbrig_execs_total {total}"
        );
        out.push_str("# HELP brig_execs_by_outcome_total Commands run, by how they ended.\n# TYPE brig_execs_by_outcome_total counter\n");
        for o in ExecOutcome::ALL {
            let _ = writeln!(
                out,
                "brig_execs_by_outcome_total{{outcome=\"{}\"}} {}",
                o.label(),
                g(&self.execs[o as usize])
            );
        }
        let _ = writeln!(
            out,
            "# HELP brig_execs_running Commands running now.\n# TYPE brig_execs_running gauge\nbrig_execs_running {}",
            g(&self.execs_running)
        );
        out.push_str("# HELP brig_reaper_actions_total What the reaper did.\n# TYPE brig_reaper_actions_total counter\n");
        for a in ReaperAction::ALL {
            let _ = writeln!(
                out,
                "brig_reaper_actions_total{{action=\"{}\"}} {}",
                a.label(),
                g(&self.reaper[a as usize])
            );
        }
        self.exec_duration.render(
            &mut out,
            "brig_exec_duration_seconds",
            "Duration of commands, start to exit.",
        );
        self.spinup_duration.render(
            &mut out,
            "brig_session_spinup_seconds",
            "Session create request to a running sandbox.",
        );
        self.kill_switch_duration.render(
            &mut out,
            "brig_kill_switch_seconds",
            "Duration of kill and kill-all, request to every sandbox shredded.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line is a comment or `name{labels} value` with a numeric value.
    fn assert_valid_exposition(text: &str) {
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                }
            }
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn exposition_is_valid_and_counts() {
        let m = Metrics::default();
        m.sessions_created.fetch_add(2, Ordering::Relaxed);
        m.exec_done(ExecOutcome::Success, Duration::from_millis(3));
        m.exec_done(ExecOutcome::TimedOut, Duration::from_secs(2));
        m.reaper_action(ReaperAction::IdleTimeout);
        m.spinup_duration.observe(Duration::from_millis(40));
        let text = m.render(&[(SessionState::Running, 3), (SessionState::Failed, 1)]);
        assert_valid_exposition(&text);
        assert_eq!(value(&text, "brig_sessions{state=\"running\"}"), 3.0);
        assert_eq!(value(&text, "brig_sessions{state=\"idle\"}"), 0.0);
        assert_eq!(value(&text, "brig_sessions_created_total"), 2.0);
        assert_eq!(value(&text, "brig_execs_total"), 2.0);
        assert_eq!(
            value(&text, "brig_execs_by_outcome_total{outcome=\"timed_out\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "brig_reaper_actions_total{action=\"idle_timeout\"}"),
            1.0
        );
        // Buckets are cumulative.
        assert_eq!(
            value(&text, "brig_exec_duration_seconds_bucket{le=\"0.005\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "brig_exec_duration_seconds_bucket{le=\"5\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "brig_exec_duration_seconds_bucket{le=\"+Inf\"}"),
            2.0
        );
        assert_eq!(value(&text, "brig_exec_duration_seconds_count"), 2.0);
        assert_eq!(
            value(&text, "brig_session_spinup_seconds_bucket{le=\"0.05\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "brig_session_spinup_seconds_bucket{le=\"0.025\"}"),
            0.0
        );
        assert_eq!(value(&text, "brig_kill_switch_seconds_count"), 0.0);
    }
}
