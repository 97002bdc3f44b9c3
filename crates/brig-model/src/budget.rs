//! Budgets: in-memory ledgers per scope key (session id, human, task).
//! A request is checked before it is forwarded (rpm over a sliding 60 s
//! window, requests in flight, tokens and spend already used); its usage is
//! added when its call is recorded. So requests already in flight when a
//! limit is reached still finish: the overshoot is bounded by `concurrent`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Limits;

const WINDOW: Duration = Duration::from_secs(60);

/// A budget scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Session,
    Human,
    Task,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Session => "session",
            Scope::Human => "human",
            Scope::Task => "task",
        }
    }
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What a scope key has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens: u64,
    pub spend_usd: f64,
    /// Requests in the last 60 s.
    pub requests_last_minute: u32,
    pub in_flight: u32,
}

#[derive(Default)]
struct Ledger {
    tokens: u64,
    spend: f64,
    recent: VecDeque<Instant>,
    in_flight: u32,
}

/// A refusal: which budget, and the message agents see.
#[derive(Clone, Debug)]
pub(crate) struct Denial {
    /// `budget:session:max_tokens`.
    pub rule: String,
    pub message: String,
    /// Seconds, for rpm and concurrency.
    pub retry_after: Option<u64>,
    /// tokens and spend: retrying cannot help.
    pub quota: bool,
}

type Entry = Arc<Mutex<Ledger>>;

/// A scope key's ledger, looked up once per session (at open) instead of
/// once per request.
#[derive(Clone)]
pub(crate) struct ScopeRef {
    pub scope: Scope,
    pub key: String,
    entry: Entry,
}

#[derive(Default)]
pub(crate) struct Budgets {
    ledgers: Mutex<HashMap<(Scope, String), Entry>>,
}

/// Holds one request's place in the `concurrent` count of each scope.
pub(crate) struct Slot {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({} scopes)", self.entries.len())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        for e in &self.entries {
            let mut l = e.lock().unwrap_or_else(|p| p.into_inner());
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

impl Budgets {
    fn entry(&self, scope: Scope, key: &str) -> Entry {
        let mut m = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = m.get(&(scope, key.to_string())) {
            return e.clone();
        }
        m.entry((scope, key.to_string())).or_default().clone()
    }

    pub fn seed(&self, scope: Scope, key: &str, tokens: u64, spend: f64) {
        let e = self.entry(scope, key);
        let mut l = e.lock().unwrap_or_else(|p| p.into_inner());
        l.tokens = l.tokens.saturating_add(tokens);
        l.spend += spend.max(0.0);
    }

    pub fn usage(&self, scope: Scope, key: &str) -> Option<Usage> {
        let e = {
            let m = self.ledgers.lock().unwrap_or_else(|p| p.into_inner());
            m.get(&(scope, key.to_string()))?.clone()
        };
        let mut l = e.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut l.recent, Instant::now());
        Some(Usage {
            tokens: l.tokens,
            spend_usd: l.spend,
            requests_last_minute: l.recent.len() as u32,
            in_flight: l.in_flight,
        })
    }

    pub fn scope_ref(&self, scope: Scope, key: &str) -> ScopeRef {
        ScopeRef {
            scope,
            key: key.to_string(),
            entry: self.entry(scope, key),
        }
    }

    /// Checks every scope and, when all pass, counts the request (rpm and
    /// in flight) in all of them at once. `counted`: whether this request
    /// takes tokens or spend (count_tokens and models do not).
    pub fn admit(
        &self,
        scopes: &[ScopeRef],
        limits: &[Limits; 3],
        counted: bool,
    ) -> Result<Slot, Denial> {
        let now = Instant::now();
        let entries: Vec<(&ScopeRef, &Limits)> = scopes
            .iter()
            .map(|r| (r, &limits[r.scope.index()]))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        // Locks taken in one order (session, human, task), so two requests
        // never deadlock.
        let mut guards: Vec<_> = entries
            .iter()
            .map(|(r, _)| r.entry.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        for ((r, limits), l) in entries.iter().zip(guards.iter_mut()) {
            let (scope, key) = (r.scope, r.key.as_str());
            prune(&mut l.recent, now);
            // Formatted only for a refusal.
            let who = || match scope {
                Scope::Session => "this session".to_string(),
                Scope::Human => format!("human `{key}`"),
                Scope::Task => format!("task `{key}`"),
            };
            let deny = |what: &str, message: String, retry_after, quota| {
                let s = scope.name();
                Denial {
                    rule: format!("budget:{s}:{what}"),
                    message: format!(
                        "{message} (brig rule budget:{s}:{what}); to get more, ask the operator to raise [models.budgets.{s}] {what} in brig.toml"
                    ),
                    retry_after,
                    quota,
                }
            };
            if counted {
                if let Some(max) = limits.max_tokens {
                    if l.tokens >= max {
                        return Err(deny(
                            "max_tokens",
                            format!(
                                "brig model budget exhausted: {} has used {} of its {max} tokens",
                                who(),
                                l.tokens
                            ),
                            None,
                            true,
                        ));
                    }
                }
                if let Some(max) = limits.max_spend {
                    if l.spend >= max {
                        return Err(deny(
                            "max_spend",
                            format!(
                                "brig model budget exhausted: {} has spent ${:.4} of its ${max:.2}",
                                who(),
                                l.spend
                            ),
                            None,
                            true,
                        ));
                    }
                }
            }
            if let Some(max) = limits.rpm {
                if l.recent.len() >= max as usize {
                    let wait = l
                        .recent
                        .front()
                        .map(|t| WINDOW.saturating_sub(now.duration_since(*t)))
                        .unwrap_or(WINDOW);
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    return Err(deny(
                        "rpm",
                        format!("brig rate limit: {} may send {max} model requests per minute; retry in {secs}s", who()),
                        Some(secs.max(1)),
                        false,
                    ));
                }
            }
            if let Some(max) = limits.concurrent {
                if l.in_flight >= max {
                    return Err(deny(
                        "concurrent",
                        format!("brig rate limit: {} may have {max} model requests in flight at once; wait for one to finish", who()),
                        Some(1),
                        false,
                    ));
                }
            }
        }
        for ((_, limits), l) in entries.iter().zip(guards.iter_mut()) {
            // The window only for scopes that have an rpm (it holds one
            // instant per request of the last minute).
            if limits.rpm.is_some() {
                l.recent.push_back(now);
            }
            l.in_flight += 1;
        }
        drop(guards);
        Ok(Slot {
            entries: entries.into_iter().map(|(r, _)| r.entry.clone()).collect(),
        })
    }

    /// Adds a finished call's usage to every scope it belongs to.
    pub fn add(&self, scopes: &[ScopeRef], tokens: u64, spend: f64) {
        if tokens == 0 && spend <= 0.0 {
            return;
        }
        for r in scopes {
            let mut l = r.entry.lock().unwrap_or_else(|p| p.into_inner());
            l.tokens = l.tokens.saturating_add(tokens);
            l.spend += spend;
        }
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant) {
    while let Some(t) = q.front() {
        if now.duration_since(*t) >= WINDOW {
            q.pop_front();
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_deny_with_rule_and_release_slots() {
        let b = Budgets::default();
        let lim = Limits {
            max_tokens: Some(100),
            concurrent: Some(2),
            ..Default::default()
        };
        let lims = [lim, Limits::default(), Limits::default()];
        let s = [b.scope_ref(Scope::Session, "s1")];
        let a = b.admit(&s, &lims, true).unwrap();
        let c = b.admit(&s, &lims, true).unwrap();
        let d = b.admit(&s, &lims, true).unwrap_err();
        assert_eq!(d.rule, "budget:session:concurrent");
        assert_eq!(d.retry_after, Some(1));
        drop(a);
        drop(c);
        b.add(&s, 100, 0.0);
        let d = b.admit(&s, &lims, true).unwrap_err();
        assert_eq!(d.rule, "budget:session:max_tokens");
        assert!(
            d.quota && d.message.contains("100 of its 100"),
            "{}",
            d.message
        );
        // A request that takes no tokens still passes.
        assert!(b.admit(&s, &lims, false).is_ok());
        assert_eq!(b.usage(Scope::Session, "s1").unwrap().in_flight, 0);
    }

    #[test]
    fn rpm_counts_every_scope_and_says_when_to_retry() {
        let b = Budgets::default();
        let lim = Limits {
            rpm: Some(2),
            ..Default::default()
        };
        let lims = [Limits::default(), lim, Limits::default()];
        let s = [
            b.scope_ref(Scope::Session, "s"),
            b.scope_ref(Scope::Human, "ann"),
        ];
        b.admit(&s, &lims, true).unwrap();
        b.admit(&s, &lims, true).unwrap();
        let d = b.admit(&s, &lims, true).unwrap_err();
        assert_eq!(d.rule, "budget:human:rpm");
        assert!(d.retry_after.unwrap() >= 59, "{:?}", d.retry_after);
        assert!(d.message.contains("human `ann`"), "{}", d.message);
        b.seed(Scope::Task, "t", 5, 0.5);
        assert_eq!(b.usage(Scope::Task, "t").unwrap().tokens, 5);
    }
}
