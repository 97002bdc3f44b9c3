//! Secrets of a session (issue 6; docs/SECRETS.md): what its profile grants,
//! fetched or minted just in time when it starts, given to the sandbox only
//! as placeholders, injected by the egress proxy for their bound hosts, and
//! revoked when it ends.
//!
//! `[profiles.NAME.secrets.GRANT]` names one grant: a value of a source
//! (`source` + `key`, through brig-secrets' TTL cache) or a credential
//! minted for this session alone (`minter` + scope, TTL within
//! `[secrets.ttl]`). Default deny: a session holds exactly its profile's
//! grants. A grant that cannot be fetched or minted fails the session's
//! start with the reason; nothing of the session is left.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::event::Outcome;
use brig_core::session::SessionInfo;
use brig_core::{Error, ErrorKind, Result};
use brig_proxy::inject::{Placeholders, Secret};
use brig_proxy::SecretInjector;
use brig_secrets::config::Secrets;
use brig_secrets::{Minted, ScopeRequest};
use serde::{Deserialize, Serialize};

use crate::manager::{session_event, Db};

/// Where a grant's placeholder file is, inside the sandbox.
pub const FILE_DIR: &str = "/.brig/egress/secrets";
/// The host directory's name under the session's egress dir.
pub const FILE_SUBDIR: &str = "secrets";

/// One grant of a profile, as brig.toml writes it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A `[secrets.sources.NAME]` and the key in it...
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// ...or a `[secrets.minters.NAME]` that mints a credential per session.
    #[serde(default)]
    pub minter: Option<String>,
    /// `git.read`, `git.write`, `pkg`, `model`, `cloud:NAME`.
    pub scope: String,
    /// Hosts the value may be sent to (`api.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// The variable holding the placeholder (default: the grant's name;
    /// `""`: none).
    #[serde(default)]
    pub env: Option<String>,
    /// Also write the placeholder to `/.brig/egress/secrets/<GRANT>`.
    #[serde(default)]
    pub file: bool,
    /// Replace the placeholder in request bodies too (not only headers).
    #[serde(default)]
    pub body: bool,
    /// Set `Authorization: <this><value>` on requests to a bound host that
    /// carry none (e.g. `"Bearer "`).
    #[serde(default)]
    pub authorization: Option<String>,
    /// GitHub: the one repository (`owner/name`) and permissions.
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub permissions: BTreeMap<String, String>,
    /// AWS: a session policy narrowing the role.
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
    /// The credential's lifetime (minters; within `[secrets.ttl]`).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Scopes a grant may name.
fn check_scope(s: &str) -> bool {
    matches!(s, "git.read" | "git.write" | "pkg" | "model")
        || s.strip_prefix("cloud:").is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        })
}

impl Grant {
    /// Checked at load, against the `[secrets]` that exist.
    pub fn check(&self, at: &str, cfg: &brig_secrets::SecretsConfig) -> Result<()> {
        let bad = |why: String| {
            Error::invalid(format!("{at}: {why}")).hint("grant keys are in docs/SECRETS.md")
        };
        match (&self.source, &self.key, &self.minter) {
            (Some(s), Some(_), None) => {
                if !cfg.sources.contains_key(s) {
                    return Err(bad(format!(
                        "source {s:?} is not a [secrets.sources] entry"
                    )));
                }
            }
            (None, None, Some(m)) => {
                if !cfg.minters.contains_key(m) {
                    return Err(bad(format!(
                        "minter {m:?} is not a [secrets.minters] entry"
                    )));
                }
            }
            _ => return Err(bad("name either `source` and `key`, or `minter`".into())),
        }
        if !check_scope(&self.scope) {
            return Err(bad(format!(
                "scope {:?} is not one of git.read, git.write, pkg, model, cloud:NAME",
                self.scope
            )));
        }
        if self.hosts.is_empty() {
            return Err(bad(
                "hosts is empty: a secret bound to no host could never be used".into(),
            ));
        }
        if let Some(e) = &self.env {
            if !e.is_empty()
                && (e.contains('=')
                    || e.contains('\0')
                    || e.starts_with(|c: char| c.is_ascii_digit()))
            {
                return Err(bad(format!("env {e:?} is not a variable name")));
            }
        }
        if let Some(t) = &self.ttl {
            brig_core::units::parse_duration(t).map_err(|e| e.context(format!("{at}: ttl")))?;
        }
        Ok(())
    }
}

/// The check of a grant's name (it becomes an env name and a file name).
pub fn check_grant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// What `brig creds list` shows of one credential (never the value).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CredentialInfo {
    pub name: String,
    pub scope: String,
    /// `source:<kind>` or `minter:<kind>`.
    pub origin: String,
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub granted_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `active`, `revoked`, `expired`.
    pub state: String,
    /// What the upstream granted (minters), never the value.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub granted: serde_json::Value,
}

/// One credential a live session holds.
struct Held {
    info: CredentialInfo,
    minted: Option<(Arc<dyn brig_secrets::Minter>, Minted)>,
    /// What was asked of the minter (to renew with the same scope).
    req: Option<ScopeRequest>,
}

/// The host a revoked or expired secret is bound to: none that exists, so
/// its placeholder is refused wherever it is sent.
const DEAD_HOST: &str = "revoked.brig.invalid";

/// A session's secrets while it lives: what the proxy injects, what the
/// sandbox sees, what is revoked at the end.
pub struct SessionSecrets {
    /// What the proxy injects; swapped whole when a credential is renewed,
    /// revoked or expires (each request uses the set it started with).
    placeholders: std::sync::RwLock<Arc<Placeholders>>,
    /// The secrets the set is built from.
    entries: Mutex<Vec<Secret>>,
    /// Values of brig's that are not this session's (scanned for only).
    others: Vec<(String, String)>,
    held: Mutex<Vec<Held>>,
    /// Environment for commands (placeholders).
    pub env: Vec<(String, String)>,
    /// Placeholder files: (file name under `secrets/`, content).
    pub files: Vec<(String, String)>,
    /// The real values (name, value), for the redactor.
    pub values: Vec<(String, String)>,
    uses: tokio::sync::mpsc::Sender<(String, String)>,
}

impl std::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("count", &self.values.len())
            .finish_non_exhaustive()
    }
}

impl SecretInjector for SessionSecrets {
    fn placeholders(&self) -> Arc<Placeholders> {
        self.placeholders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn used(&self, name: &str, host: &str) {
        // Never blocks a request: a full queue drops the use record (the
        // request itself is journaled by the proxy anyway).
        let _ = self.uses.try_send((name.to_string(), host.to_string()));
    }
}

/// A placeholder: recognizably fake, unique per session and grant.
fn placeholder(session: &str, name: &str) -> String {
    use rand::Rng;
    let r: u128 = rand::thread_rng().gen();
    format!("brig-placeholder-{session}-{name}-{r:032x}")
}

fn secret_err(grant: &str, e: brig_secrets::SecretError) -> Error {
    let e: Error = Error::new(ErrorKind::Unavailable, e.to_string());
    e.context(format!("secret {grant}"))
        .hint("the session does not start without every secret its profile grants; fix the source or the grant in brig.toml")
}

/// A grant's value, fetched or minted.
struct Obtained {
    value: String,
    minted: Option<(Arc<dyn brig_secrets::Minter>, Minted)>,
    /// `source:<kind>` or `minter:<kind>`.
    origin: String,
    expires_at: Option<String>,
    granted: serde_json::Value,
}

fn scope_request(sid: &str, g: &Grant, ttl: Option<Duration>) -> ScopeRequest {
    ScopeRequest {
        session: sid.to_string(),
        scope: g.scope.clone(),
        repository: g.repository.clone(),
        permissions: g.permissions.clone(),
        policy: g.policy.clone(),
        ttl,
    }
}

async fn obtain(
    secrets: &Secrets,
    ttl_bounds: &brig_secrets::TtlBounds,
    sid: &str,
    name: &str,
    g: &Grant,
) -> Result<Obtained> {
    if let (Some(src), Some(key)) = (&g.source, &g.key) {
        let v = secrets
            .cache
            .get(src, key)
            .await
            .map_err(|e| secret_err(name, e))?;
        let value = v
            .expose_str()
            .ok_or_else(|| Error::invalid(format!("secret {name}: the value is not UTF-8 text")))?
            .to_string();
        let kind = secrets.sources.get(src).map(|s| s.kind()).unwrap_or("?");
        return Ok(Obtained {
            value,
            minted: None,
            origin: format!("source:{kind}"),
            expires_at: None,
            granted: serde_json::Value::Null,
        });
    }
    let m = g.minter.as_deref().unwrap_or_default();
    let minter = secrets
        .minters
        .get(m)
        .cloned()
        .ok_or_else(|| Error::invalid(format!("secret {name}: no minter {m:?}")))?;
    let ttl = match &g.ttl {
        Some(t) => Some(brig_core::units::parse_duration(t)?),
        None => None,
    };
    let ttl = Some(
        ttl_bounds
            .resolve(&format!("secret {name}"), ttl)
            .map_err(|e| secret_err(name, e))?,
    );
    let req = ScopeRequest {
        session: sid.to_string(),
        scope: g.scope.clone(),
        repository: g.repository.clone(),
        permissions: g.permissions.clone(),
        policy: g.policy.clone(),
        ttl: ttl.map(|t: Duration| t),
    };
    let minted = minter.mint(&req).await.map_err(|e| secret_err(name, e))?;
    let value = minted
        .value
        .expose_str()
        .ok_or_else(|| Error::invalid(format!("secret {name}: the credential is not UTF-8 text")))?
        .to_string();
    let expires = minted
        .expires_at
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    let granted = minted.granted.clone();
    let origin = format!("minter:{}", minter.kind());
    Ok(Obtained {
        value,
        minted: Some((minter, minted)),
        origin,
        expires_at: expires,
        granted,
    })
}

/// Fetch or mint every grant of `grants` for `info`'s session; journal each
/// grant. Any failure revokes what was already minted and fails.
pub async fn acquire(
    db: &Db,
    secrets: &Secrets,
    ttl_bounds: &brig_secrets::TtlBounds,
    info: &SessionInfo,
    grants: &BTreeMap<String, Grant>,
    known: &Arc<crate::known_secrets::KnownSecrets>,
) -> Result<Arc<SessionSecrets>> {
    let mut entries = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    let mut env = Vec::new();
    let mut files = Vec::new();
    let mut values = Vec::new();
    let sid = info.id.to_string();
    for (name, g) in grants {
        let now = brig_core::event::now_rfc3339();
        let got = obtain(secrets, ttl_bounds, &sid, name, g).await;
        let Obtained {
            value,
            minted,
            origin,
            expires_at,
            granted,
        } = match got {
            Ok(x) => x,
            Err(e) => {
                let mut ev = session_event(info, "credential.grant", Outcome::Failure);
                ev.rule = Some(format!("grant:{name}"));
                let ev = ev.details(
                    serde_json::json!({"name": name, "scope": g.scope, "error": e.message}),
                );
                let _ = db.write(move |s| s.append_event(&ev)).await;
                revoke_all(db, info, held, "session start failed").await;
                return Err(e);
            }
        };
        let ph = placeholder(&sid, name);
        let env_name = match &g.env {
            None => Some(name.clone()),
            Some(e) if e.is_empty() => None,
            Some(e) => Some(e.clone()),
        };
        if let Some(e) = &env_name {
            env.push((e.clone(), ph.clone()));
        }
        let file = g.file.then(|| format!("{FILE_DIR}/{name}"));
        if g.file {
            files.push((name.clone(), ph.clone()));
        }
        values.push((name.clone(), value.clone()));
        entries.push(Secret {
            name: name.clone(),
            placeholder: ph,
            value,
            hosts: g.hosts.clone(),
            body: g.body,
            authorization: g.authorization.clone(),
            override_authorization: false,
        });
        let info_c = CredentialInfo {
            name: name.clone(),
            scope: g.scope.clone(),
            origin,
            hosts: g.hosts.clone(),
            env: env_name,
            file,
            granted_at: now,
            expires_at,
            state: "active".into(),
            granted,
        };
        let mut ev = session_event(info, "credential.grant", Outcome::Success);
        ev.rule = Some(format!("grant:{name}"));
        let rec = serde_json::to_value(&info_c).unwrap_or_default();
        let ev = ev.details(rec.clone());
        let id = info.id.clone();
        db.write(move |s| s.add_session_record(&id, "credential", &rec, &ev))
            .await?;
        let req = minted.as_ref().map(|_| {
            let ttl = g
                .ttl
                .as_deref()
                .and_then(|t| brig_core::units::parse_duration(t).ok());
            scope_request(&sid, g, ttl_bounds.resolve(name, ttl).ok())
        });
        held.push(Held {
            info: info_c,
            minted,
            req,
        });
    }
    // Every other value brig knows (other sessions', its own tokens, upload
    // URLs): scanned for in what this session sends, never injected.
    let others = known.values_except(&format!("session:{}", info.id));
    let placeholders = match Placeholders::with_known_values(entries.clone(), others.clone()) {
        Ok(p) => p,
        Err(e) => {
            revoke_all(db, info, held, "session start failed").await;
            return Err(Error::invalid(e.to_string()));
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(1024);
    let db2 = db.clone();
    let info2 = info.clone();
    tokio::spawn(async move {
        while let Some((name, host)) = rx.recv().await {
            let mut ev = session_event(&info2, "credential.use", Outcome::Success);
            ev.rule = Some(format!("grant:{name}"));
            let ev = ev.details(serde_json::json!({"name": name, "host": host}));
            let _ = db2.write(move |s| s.append_event(&ev)).await;
        }
    });
    let out = Arc::new(SessionSecrets {
        placeholders: std::sync::RwLock::new(Arc::new(placeholders)),
        entries: Mutex::new(entries),
        others,
        held: Mutex::new(held),
        env,
        files,
        values,
        uses: tx,
    });
    watch_lifetimes(db.clone(), info.clone(), known.clone(), &out);
    Ok(out)
}

/// For every minted credential: renew it at 80% of its life while the
/// session lives; if renewing fails, it expires at its time (brig stops
/// injecting it). The tasks hold the session's secrets weakly: they end
/// with it.
fn watch_lifetimes(
    db: Db,
    info: SessionInfo,
    known: Arc<crate::known_secrets::KnownSecrets>,
    s: &Arc<SessionSecrets>,
) {
    let names: Vec<String> = s
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|h| h.minted.is_some())
        .map(|h| h.info.name.clone())
        .collect();
    for name in names {
        let weak = Arc::downgrade(s);
        let (db, info, known) = (db.clone(), info.clone(), known.clone());
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let Some((minter, req, expires)) = me.minted_of(&name) else {
                    return;
                };
                let now = time::OffsetDateTime::now_utc();
                let left = (expires - now).max(time::Duration::ZERO);
                let left = Duration::from_secs_f64(left.as_seconds_f64());
                drop(me);
                tokio::time::sleep(left.mul_f64(0.8)).await;
                let Some(me) = weak.upgrade() else { return };
                if !me.holds(&name) {
                    return;
                }
                match minter.mint(&req).await {
                    Ok(m) => me.renewed(&db, &info, &known, &name, m).await,
                    Err(e) => {
                        tracing::warn!(session = %info.id, credential = %name, error = %e, "renewal failed");
                        let until = Duration::from_secs_f64(
                            (expires - time::OffsetDateTime::now_utc())
                                .max(time::Duration::ZERO)
                                .as_seconds_f64(),
                        );
                        drop(me);
                        tokio::time::sleep(until).await;
                        if let Some(me) = weak.upgrade() {
                            me.end_one(
                                &db,
                                &info,
                                &name,
                                "expired",
                                "credential.expire",
                                &e.to_string(),
                            )
                            .await;
                        }
                        return;
                    }
                }
            }
        });
    }
}

/// Revoke what a session holds (its end, the kill switch, a failed start):
/// minted credentials upstream (bounded: 5 s each, in parallel), every one
/// journaled as `credential.revoke`.
async fn revoke_all(db: &Db, info: &SessionInfo, held: Vec<Held>, reason: &str) {
    let mut tasks = Vec::new();
    for h in held {
        let db = db.clone();
        let info = info.clone();
        let reason = reason.to_string();
        tasks.push(tokio::spawn(async move {
            let result = match &h.minted {
                Some((minter, minted)) => {
                    match tokio::time::timeout(Duration::from_secs(5), minter.revoke(minted)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the upstream did not answer the revocation in 5 s".into()),
                    }
                }
                None => Ok(()),
            };
            let outcome = if result.is_ok() { Outcome::Success } else { Outcome::Failure };
            let mut ev = session_event(&info, "credential.revoke", outcome);
            ev.rule = Some(format!("grant:{}", h.info.name));
            let mut rec = h.info.clone();
            rec.state = "revoked".into();
            let rec = serde_json::to_value(&rec).unwrap_or_default();
            let ev = ev.details(serde_json::json!({
                "name": h.info.name, "scope": h.info.scope, "origin": h.info.origin,
                "reason": reason, "error": result.err(),
                "upstream": if h.minted.is_some() { "revoked" } else { "nothing to revoke (a stored value: brig stops using it)" },
            }));
            let id = info.id.clone();
            let _ = db.write(move |s| s.add_session_record(&id, "credential", &rec, &ev)).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

impl SessionSecrets {
    /// The scope of grant `name` (`git.read`, `pkg`, `cloud:aws`, ...).
    pub fn scope_of(&self, name: &str) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|h| h.info.name == name)
            .map(|h| h.info.scope.clone())
    }

    fn holds(&self, name: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|h| h.info.name == name && h.info.state == "active")
    }

    fn minted_of(
        &self,
        name: &str,
    ) -> Option<(
        Arc<dyn brig_secrets::Minter>,
        ScopeRequest,
        time::OffsetDateTime,
    )> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let h = held
            .iter()
            .find(|h| h.info.name == name && h.info.state == "active")?;
        let (m, minted) = h.minted.as_ref()?;
        Some((m.clone(), h.req.clone()?, minted.expires_at))
    }

    /// Rebuild what the proxy injects from `entries`.
    fn swap(&self, entries: &[Secret]) {
        let p = match Placeholders::with_known_values(entries.to_vec(), self.others.clone()) {
            Ok(p) => p,
            // Built from entries that were valid, so a bug; keeping the old
            // set could keep a revoked value injected: inject nothing.
            Err(e) => {
                tracing::error!(error = %e, "rebuilding the session's secrets failed: injecting none");
                Placeholders::new(Vec::new()).expect("an empty set builds")
            }
        };
        *self.placeholders.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }

    /// A renewed credential: the same placeholder now stands for the new
    /// value; the old one is revoked upstream.
    async fn renewed(
        &self,
        db: &Db,
        info: &SessionInfo,
        known: &crate::known_secrets::KnownSecrets,
        name: &str,
        m: Minted,
    ) {
        let Some(value) = m.value.expose_str().map(str::to_string) else {
            return;
        };
        known.add(
            &format!("session:{}", info.id),
            crate::known_secrets::Known {
                name: name.to_string(),
                value: value.clone(),
                until_ms: None,
            },
        );
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.iter_mut().find(|e| e.name == name) {
                e.value = value;
            }
            self.swap(&entries);
        }
        let expires = m
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .ok();
        let (old, rec) = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = held.iter_mut().find(|h| h.info.name == name) else {
                return;
            };
            h.info.expires_at = expires;
            h.info.granted = m.granted.clone();
            let minter = h.minted.as_ref().map(|(mi, _)| mi.clone());
            let old = h.minted.take();
            h.minted = minter.map(|mi| (mi, m));
            (old, h.info.clone())
        };
        if let Some((mi, old)) = old {
            let _ = tokio::time::timeout(Duration::from_secs(5), mi.revoke(&old)).await;
        }
        let mut ev = session_event(info, "credential.renew", Outcome::Success);
        ev.rule = Some(format!("grant:{name}"));
        let rec = serde_json::to_value(&rec).unwrap_or_default();
        let ev = ev.details(rec.clone());
        let id = info.id.clone();
        let _ = db
            .write(move |s| s.add_session_record(&id, "credential", &rec, &ev))
            .await;
    }

    /// Stop injecting `name` now (its placeholder is refused everywhere
    /// from the next request on), revoke it upstream, and record `state`.
    async fn end_one(
        &self,
        db: &Db,
        info: &SessionInfo,
        name: &str,
        state: &str,
        action: &str,
        why: &str,
    ) -> Option<CredentialInfo> {
        {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = entries.iter_mut().find(|e| e.name == name)?;
            e.name = format!("{name} ({state})");
            e.hosts = vec![DEAD_HOST.to_string()];
            e.body = false;
            e.authorization = None;
            self.swap(&entries);
        }
        let h = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let i = held.iter().position(|h| h.info.name == name)?;
            held.remove(i)
        };
        let mut rec = h.info.clone();
        rec.state = state.to_string();
        let upstream = match &h.minted {
            Some((m, minted)) => {
                match tokio::time::timeout(Duration::from_secs(5), m.revoke(minted)).await {
                    Ok(Ok(())) => "revoked".to_string(),
                    Ok(Err(e)) => format!("revocation failed: {e}"),
                    Err(_) => "revocation timed out (5 s)".to_string(),
                }
            }
            None => "nothing to revoke (a stored value: brig stops using it)".to_string(),
        };
        let mut ev = session_event(info, action, Outcome::Success);
        ev.rule = Some(format!("grant:{name}"));
        let ev = ev.details(serde_json::json!({"name": name, "scope": rec.scope, "reason": why, "upstream": upstream}));
        let v = serde_json::to_value(&rec).unwrap_or_default();
        let id = info.id.clone();
        let _ = db
            .write(move |s| s.add_session_record(&id, "credential", &v, &ev))
            .await;
        Some(rec)
    }

    /// `brig creds revoke`: one credential, now.
    pub async fn revoke_one(
        &self,
        db: &Db,
        info: &SessionInfo,
        name: &str,
    ) -> Result<CredentialInfo> {
        self.end_one(
            db,
            info,
            name,
            "revoked",
            "credential.revoke",
            "revoked by request",
        )
        .await
        .ok_or_else(|| {
            Error::not_found(format!(
                "session {} holds no active credential {name:?}",
                info.id
            ))
            .hint("see `brig creds list SESSION`")
        })
    }

    /// End of the session: revoke and journal everything it holds.
    pub async fn revoke(&self, db: &Db, info: &SessionInfo, reason: &str) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        revoke_all(db, info, held, reason).await;
    }
}

/// Write the placeholder files into the session's egress directory
/// (`secrets/`, read-only inside at [`FILE_DIR`]) before anything runs.
pub fn write_files(sandbox: &brig_sandbox::Sandbox, s: Option<&SessionSecrets>) -> Result<()> {
    let Some(s) = s.filter(|s| !s.files.is_empty()) else {
        return Ok(());
    };
    use std::os::unix::fs::PermissionsExt;
    let dir = brig_sandbox::egress::host_dir(sandbox.session_dir()).join(FILE_SUBDIR);
    let fail = |e: std::io::Error| {
        Error::guard(
            "secrets",
            format!("placeholder files in {}: {e}", dir.display()),
        )
    };
    std::fs::create_dir(&dir).map_err(fail)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    for (name, ph) in &s.files {
        let p = dir.join(name);
        std::fs::write(&p, format!("{ph}\n")).map_err(fail)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).map_err(fail)?;
    }
    Ok(())
}

/// `brig creds list`: the latest record of each credential of a session.
pub async fn list(db: &Db, id: &brig_core::SessionId) -> Result<Vec<CredentialInfo>> {
    let id = id.clone();
    let recs = db
        .run(move |s| s.session_records(&id, "credential"))
        .await?;
    let mut latest: BTreeMap<String, CredentialInfo> = BTreeMap::new();
    for r in recs {
        if let Ok(c) = serde_json::from_value::<CredentialInfo>(r) {
            latest.insert(c.name.clone(), c);
        }
    }
    Ok(latest.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_checked_against_the_secrets_config() {
        let cfg: brig_secrets::SecretsConfig =
            toml::from_str("[sources.env]\nkind = \"env\"\n").unwrap();
        let ok: Grant =
            toml::from_str("source = \"env\"\nkey = \"X\"\nscope = \"pkg\"\nhosts = [\"a.test\"]")
                .unwrap();
        ok.check("g", &cfg).unwrap();
        for (text, want) in [
            (
                "source = \"nope\"\nkey = \"X\"\nscope = \"pkg\"\nhosts = [\"a.test\"]",
                "not a [secrets.sources]",
            ),
            (
                "minter = \"m\"\nscope = \"pkg\"\nhosts = [\"a.test\"]",
                "not a [secrets.minters]",
            ),
            (
                "source = \"env\"\nscope = \"pkg\"\nhosts = [\"a.test\"]",
                "either",
            ),
            (
                "source = \"env\"\nkey = \"X\"\nscope = \"root\"\nhosts = [\"a.test\"]",
                "scope",
            ),
            (
                "source = \"env\"\nkey = \"X\"\nscope = \"pkg\"\nhosts = []",
                "hosts is empty",
            ),
        ] {
            let g: Grant = toml::from_str(text).unwrap();
            let e = g.check("g", &cfg).unwrap_err();
            assert!(e.message.contains(want), "{text}: {e}");
        }
        assert!(check_scope("cloud:aws-prod") && !check_scope("cloud:") && !check_scope("admin"));
        assert!(
            check_grant_name("NPM_TOKEN") && !check_grant_name("1X") && !check_grant_name("a-b")
        );
        // What a failed rebuild falls back to (inject nothing) must build.
        assert!(Placeholders::new(Vec::new()).is_ok_and(|p| p.is_empty()));
        let p = placeholder("s-1", "NPM_TOKEN");
        assert!(p.starts_with("brig-placeholder-s-1-NPM_TOKEN-") && p.len() > 40);
    }

    /// A minter whose credentials live `life`; `fail` makes mint fail.
    struct FakeMinter {
        n: std::sync::atomic::AtomicU32,
        fail: std::sync::atomic::AtomicBool,
        revoked: Mutex<Vec<String>>,
        life: Duration,
    }

    impl brig_secrets::Minter for FakeMinter {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn mint<'a>(
            &'a self,
            _req: &'a ScopeRequest,
        ) -> brig_secrets::BoxFuture<'a, std::result::Result<Minted, brig_secrets::SecretError>>
        {
            Box::pin(async move {
                if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(brig_secrets::SecretError::Unavailable {
                        upstream: "fake".into(),
                        detail: "upstream says no".into(),
                    });
                }
                let n = self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Minted {
                    value: brig_secrets::SecretValue::from_string(format!(
                        "minted-credential-{n:04}"
                    )),
                    expires_at: time::OffsetDateTime::now_utc() + self.life,
                    revocation: brig_secrets::Revocation::Token,
                    granted: serde_json::json!({"n": n}),
                })
            })
        }
        fn revoke<'a>(
            &'a self,
            m: &'a Minted,
        ) -> brig_secrets::BoxFuture<'a, std::result::Result<(), brig_secrets::SecretError>>
        {
            Box::pin(async move {
                self.revoked
                    .lock()
                    .unwrap()
                    .push(m.value.expose_str().unwrap().to_string());
                Ok(())
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn minted_credentials_renew_while_the_session_lives_then_expire() {
        // A file: the writer and the readers share it (an in-memory
        // database would be one per connection).
        let dir = tempfile::tempdir().unwrap();
        let db = Db::new(brig_store::Store::open(&dir.path().join("t.db")).unwrap());
        let known = Arc::new(crate::known_secrets::KnownSecrets::new(db.store(), vec![]).unwrap());
        let fake = Arc::new(FakeMinter {
            n: Default::default(),
            fail: Default::default(),
            revoked: Mutex::new(vec![]),
            life: Duration::from_millis(1000),
        });
        let mut minters: BTreeMap<String, Arc<dyn brig_secrets::Minter>> = BTreeMap::new();
        minters.insert("m".into(), fake.clone());
        let secrets = Secrets {
            sources: BTreeMap::new(),
            minters,
            cache: brig_secrets::SecretCache::new(BTreeMap::new(), Duration::from_secs(60)),
        };
        let info = crate::tests_support::session_info();
        db.write({
            let info = info.clone();
            move |s| s.insert_session(&info, "test")
        })
        .await
        .unwrap();
        let grant: Grant =
            toml::from_str("minter = \"m\"\nscope = \"git.read\"\nhosts = [\"api.x.test\"]")
                .unwrap();
        let grants = BTreeMap::from([("TOK".to_string(), grant)]);
        let s = acquire(
            &db,
            &secrets,
            &brig_secrets::TtlBounds::default(),
            &info,
            &grants,
            &known,
        )
        .await
        .unwrap();
        assert!(s.env[0].1.starts_with("brig-placeholder-"));
        // Which value the placeholder stands for now, and whether it is
        // still injected anywhere.
        let knows =
            |s: &SessionSecrets, v: &str| s.placeholders().find_value(v.as_bytes()).is_some();
        let live = |s: &SessionSecrets| s.placeholders().bound_to("api.x.test");
        assert!(knows(&s, "minted-credential-0000") && live(&s));
        // Renewed at 80% of its life: the same placeholder, a new value, the old one revoked.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            knows(&s, "minted-credential-0001") && !knows(&s, "minted-credential-0000") && live(&s)
        );
        assert_eq!(
            fake.revoked.lock().unwrap().clone(),
            vec!["minted-credential-0000".to_string()]
        );
        // Renewal fails: it expires at its time, and its placeholder is refused.
        fake.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(!live(&s), "an expired credential is still injected");
        assert!(s.placeholders().names().any(|n| n == "TOK (expired)"));
        let list = list(&db, &info.id).await.unwrap();
        assert_eq!(list[0].state, "expired", "{list:?}");
        let sid = info.id.clone();
        let evs = db.run(move |st| st.events(Some(&sid))).await.unwrap();
        let actions: Vec<&str> = evs.iter().map(|e| e.action.as_str()).collect();
        assert!(
            actions.contains(&"credential.renew") && actions.contains(&"credential.expire"),
            "{actions:?}"
        );
        let text = serde_json::to_string(&evs).unwrap();
        assert!(
            !text.contains("minted-credential-"),
            "a credential value is in the journal"
        );
    }
}
