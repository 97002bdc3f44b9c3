//! The warm pool: pristine sandboxes started ahead of demand.
//!
//! Most of a native spin-up is the runtime's (`oci-runtime run`: mounts,
//! namespaces, the cgroup move and its RCU wait, init's seccomp and
//! Landlock), none of which depends on the session. So for each recently
//! used *template* (runtime, image digest, limits, trust bundle, hold
//! words: everything a sandbox is built from except the session's files),
//! brig keeps `warm` sandboxes started and waiting, each under a session id
//! generated for it. A create that matches takes one, copies the checkout
//! and uploads into its workspace from the host, and goes on exactly as
//! after a cold start (egress channel, secrets, model endpoint).
//!
//! A pooled sandbox is never shared: nothing ran in it but init and its
//! forwarder, nothing of any session is in it, and its egress sockets
//! answer nothing until its session's channel is bound. It is used once and
//! destroyed with its session; a claim that cannot be used is destroyed.
//! Templates not used for `idle` are drained; `brig serve`'s shutdown and
//! the kill switch drain everything; after a crash, reconcile removes
//! pooled sandboxes like any other leftover (they have no session row).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brig_core::session::{Limits, RuntimeKind};
use brig_core::SessionId;
use brig_sandbox::image::ResolvedImage;
use brig_sandbox::{Sandbox, SandboxPaths, SandboxRequest};

/// `[pool]` of brig.toml.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Sandboxes kept ready per template (0: no pool).
    pub warm: usize,
    /// Templates kept at once (the least recently used is dropped).
    pub templates: usize,
    /// A template not used this long is drained.
    pub idle: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            warm: 1,
            templates: 4,
            idle: Duration::from_secs(600),
        }
    }
}

/// After a failed pooled start, no other is tried for this long (a broken
/// runtime must not be hammered; creates still start cold and report it).
const FAILED_BACKOFF: Duration = Duration::from_secs(30);

/// Longest a drain waits for starts in flight (a start's own timeouts end
/// it well before).
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Everything a sandbox is built from except its session and its files.
#[derive(Clone, Debug)]
pub struct Template {
    pub runtime: RuntimeKind,
    /// The image as the request named it (a label in the sandbox).
    pub image_name: String,
    pub image: ResolvedImage,
    pub limits: Limits,
    pub trust_ca: Option<String>,
    pub hold_words: Vec<String>,
}

impl Template {
    /// Equal keys build equal sandboxes. The idle timeout and the timebox
    /// are the session's, not the sandbox's, so they are not in it.
    fn key(&self) -> String {
        let l = &self.limits;
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.runtime.name(),
            self.image.image.digest,
            l.cpu_millis,
            l.memory_bytes,
            l.pids,
            l.disk_bytes,
            l.tmp_bytes,
            self.trust_ca.as_deref().map(sha256_hex).unwrap_or_default(),
            self.hold_words.join(","),
        )
    }

    fn request(&self, id: SessionId) -> SandboxRequest {
        SandboxRequest {
            id,
            runtime: self.runtime.clone(),
            image: self.image_name.clone(),
            limits: self.limits.clone(),
            uploads: vec![],
            trust_ca: self.trust_ca.clone(),
            checkout: None,
            upload_cap_bytes: 0,
            no_capture: false,
            hold_words: self.hold_words.clone(),
        }
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

struct Slot {
    template: Template,
    ready: Vec<Sandbox>,
    /// Starts in flight.
    filling: usize,
    last_used: Instant,
    failed_at: Option<Instant>,
}

pub struct Pool {
    cfg: PoolConfig,
    paths: SandboxPaths,
    slots: Mutex<HashMap<String, Slot>>,
    closed: AtomicBool,
    /// Starts in flight, across slots (drain waits for them).
    starting: std::sync::atomic::AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    failures: AtomicU64,
}

/// A pooled sandbox taken for one create. Dropped unused, it is destroyed.
pub struct Claim {
    sandbox: Option<Sandbox>,
}

impl Claim {
    pub fn id(&self) -> &SessionId {
        &self.sandbox.as_ref().expect("a claim holds its sandbox").id
    }

    /// Whether its sandbox can still be used (it may have died since the
    /// claim looked).
    pub fn is_live(&self) -> bool {
        self.sandbox.as_ref().is_some_and(Sandbox::is_live)
    }

    /// The sandbox, now the session's.
    pub fn take(mut self) -> Sandbox {
        self.sandbox.take().expect("a claim holds its sandbox")
    }

    /// Destroy it now (a create that cannot use it, before starting cold
    /// under the same id).
    pub async fn discard(mut self) {
        if let Some(sb) = self.sandbox.take() {
            destroy(sb).await;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(sb) = self.sandbox.take() {
            destroy_later(sb);
        }
    }
}

async fn destroy(sb: Sandbox) {
    let report = sb.destroy().await;
    if !report.clean() {
        tracing::error!(sandbox = %sb.id, problems = ?report.problems, "destroying a pooled sandbox was incomplete");
    }
}

fn destroy_later(sb: Sandbox) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(destroy(sb));
        }
        // No runtime to destroy it on: Sandbox's Drop kills it, and
        // reconcile removes the rest at the next start.
        Err(_) => drop(sb),
    }
}

impl Pool {
    pub fn new(cfg: PoolConfig, paths: SandboxPaths) -> Pool {
        Pool {
            cfg,
            paths,
            slots: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            starting: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enabled_for(&self, t: &Template) -> bool {
        self.cfg.warm > 0
            && self.cfg.templates > 0
            && !self.closed.load(Ordering::SeqCst)
            && Sandbox::poolable(&t.runtime)
    }

    /// A ready sandbox of `t`, if there is one; either way `t` is kept
    /// warm from now on (its slot refilled in the background).
    pub fn claim(self: &Arc<Self>, t: &Template) -> Option<Claim> {
        if !self.enabled_for(t) {
            return None;
        }
        let key = t.key();
        let (got, dead) = {
            let mut slots = self.slots();
            if !slots.contains_key(&key) {
                self.make_room(&mut slots);
            }
            let slot = slots.entry(key).or_insert_with(|| Slot {
                template: t.clone(),
                ready: Vec::new(),
                filling: 0,
                last_used: Instant::now(),
                failed_at: None,
            });
            slot.last_used = Instant::now();
            let mut dead = Vec::new();
            let mut got = None;
            while let Some(sb) = slot.ready.pop() {
                if sb.is_live() {
                    got = Some(sb);
                    break;
                }
                dead.push(sb);
            }
            (got, dead)
        };
        for sb in dead {
            tracing::warn!(sandbox = %sb.id, "a pooled sandbox died while it waited");
            destroy_later(sb);
        }
        match &got {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        self.refill();
        got.map(|sb| Claim { sandbox: Some(sb) })
    }

    /// Drop the least recently used template while there are too many.
    fn make_room(&self, slots: &mut HashMap<String, Slot>) {
        while slots.len() >= self.cfg.templates {
            let Some(oldest) = slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            if let Some(slot) = slots.remove(&oldest) {
                slot.ready.into_iter().for_each(destroy_later);
            }
        }
    }

    /// Start what each slot lacks, one start per slot at a time.
    pub fn refill(self: &Arc<Self>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut starts = Vec::new();
        {
            let mut slots = self.slots();
            for (key, slot) in slots.iter_mut() {
                let backing_off = slot.failed_at.is_some_and(|t| t.elapsed() < FAILED_BACKOFF);
                if slot.filling == 0 && slot.ready.len() < self.cfg.warm && !backing_off {
                    slot.filling += 1;
                    self.starting.fetch_add(1, Ordering::SeqCst);
                    starts.push((key.clone(), slot.template.clone()));
                }
            }
        }
        for (key, t) in starts {
            let me = self.clone();
            tokio::spawn(async move { me.start_one(key, t).await });
        }
    }

    async fn start_one(self: Arc<Self>, key: String, t: Template) {
        let req = t.request(SessionId::generate());
        let made = Sandbox::create_with_image(&self.paths, req, t.image.clone()).await;
        let leftover = {
            let mut slots = self.slots();
            let slot = slots.get_mut(&key);
            match (made, slot) {
                (Ok(sb), Some(slot)) if !self.closed.load(Ordering::SeqCst) => {
                    slot.filling -= 1;
                    slot.failed_at = None;
                    slot.ready.push(sb);
                    None
                }
                // Drained (or closed) while it started.
                (Ok(sb), slot) => {
                    if let Some(slot) = slot {
                        slot.filling -= 1;
                    }
                    Some(sb)
                }
                (Err(e), slot) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "starting a pooled sandbox failed; creates start cold meanwhile");
                    if let Some(slot) = slot {
                        slot.filling -= 1;
                        slot.failed_at = Some(Instant::now());
                    }
                    None
                }
            }
        };
        if let Some(sb) = leftover {
            destroy(sb).await;
        }
        self.starting.fetch_sub(1, Ordering::SeqCst);
        // Another start if the slot still lacks one (warm > 1).
        self.refill();
    }

    /// Destroy every ready sandbox and forget every template (the kill
    /// switch); the pool fills again as creates come.
    /// Starts in flight are waited for: a start that finds its slot gone
    /// destroys what it made, so nothing of the pool runs afterwards.
    pub async fn drain(&self) {
        let all: Vec<Sandbox> = {
            let mut slots = self.slots();
            slots.drain().flat_map(|(_, s)| s.ready).collect()
        };
        futures_util::future::join_all(all.into_iter().map(destroy)).await;
        let deadline = Instant::now() + DRAIN_WAIT;
        while self.starting.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drain and start nothing more (shutdown).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.drain().await;
    }

    /// Drain the templates not used for `idle` (the reaper's pass).
    pub fn expire(&self) {
        let mut gone = Vec::new();
        {
            let mut slots = self.slots();
            slots.retain(|_, s| {
                let keep = s.last_used.elapsed() < self.cfg.idle;
                if !keep {
                    gone.append(&mut s.ready);
                }
                keep
            });
        }
        gone.into_iter().for_each(destroy_later);
    }

    /// Sandboxes ready now.
    pub fn ready(&self) -> usize {
        self.slots().values().map(|s| s.ready.len()).sum()
    }

    /// Prometheus exposition of the pool.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP brig_pool_ready Pristine sandboxes waiting in the warm pool.\n# TYPE brig_pool_ready gauge\nbrig_pool_ready {}",
            self.ready()
        );
        let _ = writeln!(
            out,
            "# HELP brig_pool_claims_total Creates that looked in the warm pool, by whether a sandbox was ready.\n# TYPE brig_pool_claims_total counter\nbrig_pool_claims_total{{result=\"hit\"}} {}\nbrig_pool_claims_total{{result=\"miss\"}} {}",
            g(&self.hits),
            g(&self.misses)
        );
        let _ = writeln!(
            out,
            "# HELP brig_pool_start_failures_total Pooled sandboxes that failed to start.\n# TYPE brig_pool_start_failures_total counter\nbrig_pool_start_failures_total {}",
            g(&self.failures)
        );
    }
}
