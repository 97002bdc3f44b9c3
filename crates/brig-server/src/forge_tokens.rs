//! brig's own forge credentials, minted per session (issue 6, "Just-in-time
//! credentials"): a `[repos.NAME]` listed in `[repo_tokens]` gets its token
//! from a `[secrets.minters.*]` (a GitHub App) instead of a static one,
//! for exactly that repository and the access asked: `git.read` (contents:
//! read) to check out, `git.write` (contents: write, pull_requests: write)
//! to push the bot branch and open the pull request. The tokens stay on
//! brig's side (they are git's environment on the host, never the
//! sandbox's), each is journaled when granted and revoked when the session
//! ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use brig_core::event::Outcome;
use brig_core::session::SessionInfo;
use brig_forge::{Access, ForgeError, Secret, TokenSource};
use brig_secrets::{Minted, Minter, ScopeRequest};

use crate::known_secrets::{Known, KnownSecrets};
use crate::manager::{session_event, Db};

/// A token is reused while it has at least this much life left.
const MIN_LEFT: Duration = Duration::from_secs(120);

fn scope(access: Access) -> (&'static str, BTreeMap<String, String>) {
    let p = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    match access {
        Access::Read => ("git.read", p(&[("contents", "read")])),
        Access::Write => (
            "git.write",
            p(&[("contents", "write"), ("pull_requests", "write")]),
        ),
    }
}

/// One session's forge tokens for one repository.
pub struct SessionForgeTokens {
    minter: Arc<dyn Minter>,
    /// `owner/name`.
    repository: String,
    db: Db,
    info: SessionInfo,
    known: Arc<KnownSecrets>,
    held: tokio::sync::Mutex<BTreeMap<&'static str, Minted>>,
}

impl SessionForgeTokens {
    pub fn new(
        minter: Arc<dyn Minter>,
        repository: String,
        db: Db,
        info: SessionInfo,
        known: Arc<KnownSecrets>,
    ) -> SessionForgeTokens {
        SessionForgeTokens {
            minter,
            repository,
            db,
            info,
            known,
            held: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    async fn journal(
        &self,
        action: &str,
        outcome: Outcome,
        scope: &str,
        details: serde_json::Value,
    ) {
        let mut ev = session_event(&self.info, action, outcome);
        ev.rule = Some(format!("forge:{scope}"));
        let ev = ev.details(details);
        let _ = self.db.write(move |s| s.append_event(&ev)).await;
    }

    /// Revoke every token the session was given (its end, a failed start).
    pub async fn revoke_all(&self, reason: &str) {
        let held = std::mem::take(&mut *self.held.lock().await);
        for (scope, m) in held {
            let r = tokio::time::timeout(Duration::from_secs(5), self.minter.revoke(&m)).await;
            let (outcome, error) = match r {
                Ok(Ok(())) => (Outcome::Success, None),
                Ok(Err(e)) => (Outcome::Failure, Some(e.to_string())),
                Err(_) => (Outcome::Failure, Some("no answer in 5 s".to_string())),
            };
            self.journal(
                "credential.revoke",
                outcome,
                scope,
                serde_json::json!({"name": format!("forge:{scope}"), "scope": scope,
                    "repository": self.repository, "reason": reason, "error": error}),
            )
            .await;
        }
    }
}

impl TokenSource for SessionForgeTokens {
    fn token(&self, access: Access) -> brig_forge::BoxFuture<'_, Result<Secret, ForgeError>> {
        Box::pin(async move {
            let (scope, permissions) = scope(access);
            let mut held = self.held.lock().await;
            let now = time::OffsetDateTime::now_utc();
            if let Some(m) = held.get(scope) {
                if m.expires_at - now > MIN_LEFT {
                    if let Some(v) = m.value.expose_str() {
                        return Ok(Secret::new(v));
                    }
                }
            }
            let req = ScopeRequest {
                session: self.info.id.to_string(),
                scope: scope.to_string(),
                repository: Some(self.repository.clone()),
                permissions,
                policy: None,
                ttl: None,
            };
            let minted = match self.minter.mint(&req).await {
                Ok(m) => m,
                Err(e) => {
                    self.journal(
                        "credential.grant",
                        Outcome::Failure,
                        scope,
                        serde_json::json!({"name": format!("forge:{scope}"), "scope": scope,
                            "repository": self.repository, "error": e.to_string()}),
                    )
                    .await;
                    return Err(ForgeError::Credential(format!(
                        "minting a {scope} token for {}: {e}",
                        self.repository
                    )));
                }
            };
            let value = minted
                .value
                .expose_str()
                .ok_or_else(|| ForgeError::Credential("the minted token is not text".into()))?
                .to_string();
            self.known.add(
                &format!("session:{}", self.info.id),
                Known {
                    name: format!("forge-{scope}"),
                    value: value.clone(),
                    until_ms: Some((minted.expires_at.unix_timestamp().max(0) as u64) * 1000),
                },
            );
            let expires = minted
                .expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .ok();
            self.journal(
                "credential.grant",
                Outcome::Success,
                scope,
                serde_json::json!({"name": format!("forge:{scope}"), "scope": scope,
                    "origin": format!("minter:{}", self.minter.kind()),
                    "repository": self.repository, "expires_at": expires, "granted": minted.granted}),
            )
            .await;
            if let Some(old) = held.insert(scope, minted) {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), self.minter.revoke(&old)).await;
            }
            Ok(Secret::new(value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder {
        asked: Mutex<Vec<ScopeRequest>>,
        revoked: Mutex<Vec<String>>,
    }

    impl Minter for Recorder {
        fn kind(&self) -> &'static str {
            "github_app"
        }
        fn mint<'a>(
            &'a self,
            req: &'a ScopeRequest,
        ) -> brig_secrets::BoxFuture<'a, Result<Minted, brig_secrets::SecretError>> {
            Box::pin(async move {
                let mut asked = self.asked.lock().unwrap();
                asked.push(req.clone());
                Ok(Minted {
                    value: brig_secrets::SecretValue::from_string(format!(
                        "ghs_fake{:04}",
                        asked.len()
                    )),
                    expires_at: time::OffsetDateTime::now_utc() + Duration::from_secs(1800),
                    revocation: brig_secrets::Revocation::Token,
                    granted: serde_json::json!({"repositories": [req.repository], "permissions": req.permissions}),
                })
            })
        }
        fn revoke<'a>(
            &'a self,
            m: &'a Minted,
        ) -> brig_secrets::BoxFuture<'a, Result<(), brig_secrets::SecretError>> {
            Box::pin(async move {
                self.revoked
                    .lock()
                    .unwrap()
                    .push(m.value.expose_str().unwrap().to_string());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn tokens_are_minted_per_scope_for_one_repository_reused_and_revoked_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::new(brig_store::Store::open(&dir.path().join("t.db")).unwrap());
        let known = Arc::new(KnownSecrets::new(db.store(), vec![]).unwrap());
        let info = crate::tests_support::session_info();
        db.write({
            let info = info.clone();
            move |s| s.insert_session(&info, "test")
        })
        .await
        .unwrap();
        let rec = Arc::new(Recorder {
            asked: Mutex::new(vec![]),
            revoked: Mutex::new(vec![]),
        });
        let t = SessionForgeTokens::new(
            rec.clone(),
            "acme/api".into(),
            db.clone(),
            info.clone(),
            known.clone(),
        );
        let r1 = t.token(Access::Read).await.unwrap();
        let r2 = t.token(Access::Read).await.unwrap();
        assert_eq!(r1.expose(), r2.expose(), "reused while it lives");
        let w = t.token(Access::Write).await.unwrap();
        assert_ne!(w.expose(), r1.expose());
        {
            let asked = rec.asked.lock().unwrap();
            assert_eq!(asked.len(), 2);
            assert_eq!(asked[0].scope, "git.read");
            assert_eq!(asked[0].repository.as_deref(), Some("acme/api"));
            assert_eq!(
                asked[0].permissions.get("contents").map(String::as_str),
                Some("read")
            );
            assert_eq!(
                asked[0].permissions.len(),
                1,
                "nothing but contents:read to clone"
            );
            assert_eq!(asked[1].scope, "git.write");
            assert_eq!(
                asked[1]
                    .permissions
                    .get("pull_requests")
                    .map(String::as_str),
                Some("write")
            );
            assert!(asked.iter().all(|a| a.session == info.id.to_string()));
        }
        t.revoke_all("session destroyed").await;
        let mut revoked = rec.revoked.lock().unwrap().clone();
        revoked.sort();
        assert_eq!(
            revoked,
            vec!["ghs_fake0001".to_string(), "ghs_fake0002".to_string()]
        );
        let sid = info.id.clone();
        let evs = db.run(move |s| s.events(Some(&sid))).await.unwrap();
        let n = |a: &str| evs.iter().filter(|e| e.action == a).count();
        assert_eq!((n("credential.grant"), n("credential.revoke")), (2, 2));
        let text = serde_json::to_string(&evs).unwrap();
        assert!(!text.contains("ghs_fake"), "a token is in the journal");
    }
}
