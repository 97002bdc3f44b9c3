//! Upload URLs (issue 4): a signed, time-bounded, single-use URL on brig's
//! own artifact endpoint, so an agent can hand a build artifact to its
//! human without any open storage host (docs/EGRESS.md, "Upload URLs").
//!
//! - The endpoint is a reserved host name (`[artifacts] host`, default
//!   `artifacts.brig`) answered by the session's egress proxy itself
//!   (`brig_proxy::artifact`); it is never dialed and the policy is not
//!   consulted for it.
//! - A token is `hex(payload) "." hex(mac)`, payload =
//!   `session "\n" expires_ms "\n" nonce "\n" name`, mac =
//!   HMAC-SHA256(key, `"brig-artifact-v1\n" || payload`). The key is 32
//!   random bytes brig makes once at `<data_dir>/keys/artifact-url.key`
//!   (0600, directory 0700);
//!   it never enters a sandbox.
//! - An upload is checked against the channel's session (never anything
//!   the request says), the expiry, the nonce's single use and the size
//!   cap, streamed to a temp file beside its destination
//!   `<data_dir>/artifacts/<session>/<name>`, hashed, and accepted in one
//!   store transaction that uses the nonce up, records the artifact,
//!   journals `artifact.upload` and renames the file into place.
//! - Tokens never reach the journal or the logs: every issued token is a
//!   known secret value of the store's redactor (so a command line that
//!   carries it is masked), and the proxy logs an upload's path as
//!   `/v1/upload/[token]`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brig_core::event::{now_rfc3339, Outcome};
use brig_core::session::SessionInfo;
use brig_core::{Error, ErrorKind, Result};
use brig_proxy::artifact::{
    rules, ArtifactSink, ArtifactUpload, BoxFuture, Receipt, Refusal, UPLOAD_PREFIX,
};
use brig_store::ArtifactRecord;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use crate::config::ArtifactsConfig;
use crate::manager::{session_event, Db};

/// The MAC's domain: a token for anything else never verifies here.
const DOMAIN: &[u8] = b"brig-artifact-v1\n";
/// The key file under the data dir (beside the journal's signing key).
pub const KEY_FILE: &str = "keys/artifact-url.key";
/// The artifacts' directory under the data dir.
pub const DIR: &str = "artifacts";
/// Longest token payload accepted (session, expiry, nonce, a 255-byte name).
const MAX_PAYLOAD: usize = 512;
/// Issued tokens stay known to the redactor this long after they expire.
const REDACT_GRACE_MS: u64 = 24 * 3600 * 1000;
/// Most tokens the redactor is told about (the oldest go first).
const REDACT_MAX: usize = 4096;

/// Check an artifact name: 1-255 bytes, no `/`, no `..`, no NUL or other
/// control character, not starting with `.` (brig's temp files do).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(format!("artifact name {name:?} {why}"))
            .hint("use a plain file name, e.g. build.tar.gz (no '/', no '..', at most 255 bytes)")
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > 255 {
        return Err(bad("is longer than 255 bytes"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(bad("holds a path separator"));
    }
    if name.contains("..") {
        return Err(bad("holds '..'"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad("holds a NUL or control character"));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) of a Unix time in milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn to_hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Lower-case hex only: a token has one spelling (the one the redactor
/// knows).
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(s).ok()
}

fn mac_of(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    m
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    mac_of(key, parts).finalize().into_bytes().into()
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    let mut got = 0;
    while got < N {
        // SAFETY: the pointer and length describe the unfilled part of `b`.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), N - got, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::internal(format!("getrandom: {e}")));
        }
        got += n as usize;
    }
    Ok(b)
}

/// A streaming SHA-256 in hex, for clients that check what they fetch.
#[derive(Default)]
pub struct Sha256Hex(Sha256);

impl Sha256Hex {
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    pub fn finish(self) -> String {
        to_hex(&self.0.finalize())
    }
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub session: String,
    pub expires_ms: u64,
    pub nonce: String,
    pub name: String,
}

/// An issued upload URL.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Issued {
    pub url: String,
    pub name: String,
    pub expires_at: String,
    pub max_size: u64,
}

/// The artifact service of one `brig serve`: the key, the directory, the
/// config, and the tokens the redactor must know.
pub struct Artifacts {
    key: [u8; 32],
    root: PathBuf,
    pub cfg: ArtifactsConfig,
    issued: Mutex<Vec<(String, u64)>>,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Artifacts")
            .field("root", &self.root)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Load `<data_dir>/keys/artifact-url.key`, or make it (32 random bytes,
/// 0600, in a 0700 directory).
/// A key file others can read, or of the wrong size, is refused.
pub fn load_or_create_key(data_dir: &Path) -> Result<[u8; 32]> {
    let path = data_dir.join(KEY_FILE);
    let fail = |what: &str, e: io::Error| {
        Error::internal(format!("artifact key {}: {what}: {e}", path.display()))
            .hint("brig keeps the upload-URL signing key under data_dir; check it is writable")
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail("creating its directory", e))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            use std::io::Write;
            let key = random_bytes::<32>()?;
            f.write_all(&key).map_err(|e| fail("writing", e))?;
            f.sync_all().map_err(|e| fail("syncing", e))?;
            return Ok(key);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail("creating", e)),
    }
    let meta = std::fs::metadata(&path).map_err(|e| fail("reading", e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::GuardUnavailable,
            format!(
                "artifact key {} is readable by others (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        )
        .hint("chmod 600 it, or remove it (issued upload URLs then stop working)"));
    }
    let bytes = std::fs::read(&path).map_err(|e| fail("reading", e))?;
    bytes.try_into().map_err(|_| {
        Error::internal(format!("artifact key {} is not 32 bytes", path.display()))
            .hint("remove it; brig makes a new one (issued upload URLs then stop working)")
    })
}

impl Artifacts {
    /// The control plane's artifact service; the key is loaded or created
    /// now. `brig serve` holds one, in its `Manager`.
    pub fn open(data_dir: &Path, cfg: &ArtifactsConfig) -> Result<Artifacts> {
        Ok(Artifacts {
            key: load_or_create_key(data_dir)?,
            root: data_dir.join(DIR),
            cfg: cfg.clone(),
            issued: Mutex::new(Vec::new()),
        })
    }
}

impl Artifacts {
    /// `<root>/<session>`.
    pub fn session_dir(&self, session: &str) -> PathBuf {
        self.root.join(session)
    }

    /// A token for `name` in `session`, valid for `ttl`.
    pub fn token(&self, session: &str, name: &str, ttl: Duration) -> Result<(String, Claims)> {
        check_name(name)?;
        let claims = Claims {
            session: session.to_string(),
            expires_ms: now_ms().saturating_add(ttl.as_millis() as u64),
            nonce: to_hex(&random_bytes::<16>()?),
            name: name.to_string(),
        };
        let payload = format!(
            "{}\n{}\n{}\n{}",
            claims.session, claims.expires_ms, claims.nonce, claims.name
        );
        let mac = hmac_sha256(&self.key, &[DOMAIN, payload.as_bytes()]);
        Ok((
            format!("{}.{}", to_hex(payload.as_bytes()), to_hex(&mac)),
            claims,
        ))
    }

    /// Check a token presented on `channel_session`'s channel.
    pub fn verify(
        &self,
        channel_session: &str,
        token: &str,
    ) -> std::result::Result<Claims, Refusal> {
        let invalid = |why: &str| Refusal::new(403, rules::TOKEN, format!("the upload URL {why}"));
        let (p, m) = token
            .split_once('.')
            .ok_or_else(|| invalid("is not one brig issued"))?;
        if p.len() > MAX_PAYLOAD * 2 {
            return Err(invalid("is not one brig issued"));
        }
        let (Some(payload), Some(mac)) = (from_hex(p), from_hex(m)) else {
            return Err(invalid("is not one brig issued"));
        };
        // Constant-time comparison.
        if mac_of(&self.key, &[DOMAIN, &payload])
            .verify_slice(&mac)
            .is_err()
        {
            return Err(invalid(
                "has a bad signature (not issued by this brig, or altered)",
            ));
        }
        let text = String::from_utf8(payload).map_err(|_| invalid("is malformed"))?;
        let mut it = text.splitn(4, '\n');
        let (Some(session), Some(exp), Some(nonce), Some(name)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(invalid("is malformed"));
        };
        let expires_ms: u64 = exp.parse().map_err(|_| invalid("is malformed"))?;
        if session != channel_session {
            return Err(invalid(
                "was issued for another session; each session's URLs work only from inside it",
            ));
        }
        if now_ms() >= expires_ms {
            return Err(Refusal::new(
                403,
                rules::TOKEN,
                format!(
                    "the upload URL expired at {}; ask the session's owner for a new one (`brig artifact url`)",
                    rfc3339_ms(expires_ms)
                ),
            ));
        }
        check_name(name).map_err(|_| invalid("names an invalid artifact"))?;
        Ok(Claims {
            session: session.to_string(),
            expires_ms,
            nonce: nonce.to_string(),
            name: name.to_string(),
        })
    }

    /// Tell the redactor about `token` (with every other live one), before
    /// it is handed out.
    fn remember(&self, known: &crate::known_secrets::KnownSecrets, token: &str, expires_ms: u64) {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        issued.retain(|(_, exp)| exp.saturating_add(REDACT_GRACE_MS) > now);
        issued.push((token.to_string(), expires_ms));
        if issued.len() > REDACT_MAX {
            let extra = issued.len() - REDACT_MAX;
            issued.drain(..extra);
        }
        let values = issued
            .iter()
            .map(|(t, exp)| crate::known_secrets::Known {
                name: "artifact-url".into(),
                value: t.clone(),
                until_ms: Some(*exp),
            })
            .collect();
        known.set_owner("artifact-urls", values);
    }

    /// Issue an upload URL for `name` in the live session `info` and
    /// journal `artifact.url` (name, expiry, who; never the token).
    pub async fn issue(
        self: &Arc<Self>,
        db: &Db,
        known: &Arc<crate::known_secrets::KnownSecrets>,
        info: &SessionInfo,
        name: &str,
        ttl: Duration,
    ) -> Result<Issued> {
        if ttl.is_zero() {
            return Err(Error::invalid("ttl must be greater than zero").hint("e.g. --ttl 10m"));
        }
        if ttl > self.cfg.max_ttl {
            return Err(Error::invalid(format!(
                "ttl {}s is longer than [artifacts] max_ttl ({}s)",
                ttl.as_secs(),
                self.cfg.max_ttl.as_secs()
            ))
            .hint("give a shorter --ttl, or raise max_ttl in brig.toml"));
        }
        if !info.state.is_live() {
            return Err(Error::conflict(format!(
                "session {} is {}: only a live session can upload",
                info.id,
                info.state.as_str()
            )));
        }
        let (token, claims) = self.token(info.id.as_str(), name, ttl)?;
        let me = self.clone();
        let t = token.clone();
        let exp = claims.expires_ms;
        let known = known.clone();
        tokio::task::spawn_blocking(move || me.remember(&known, &t, exp))
            .await
            .map_err(|e| Error::internal(format!("redactor task failed: {e}")))?;
        let expires_at = rfc3339_ms(claims.expires_ms);
        let ev = session_event(info, "artifact.url", Outcome::Success)
            .rule(rules::UPLOAD)
            .details(serde_json::json!({
                "name": name,
                "expires_at": expires_at,
                "ttl_secs": ttl.as_secs_f64(),
                "host": self.cfg.host,
                "issued_by": info.human,
                "via": "api",
            }));
        db.write(move |tx| tx.append_event(&ev).map(|_| ())).await?;
        Ok(Issued {
            url: format!("http://{}{UPLOAD_PREFIX}{token}", self.cfg.host),
            name: name.to_string(),
            expires_at,
            max_size: self.cfg.max_size,
        })
    }
}

/// One session's artifact endpoint, for its egress proxy.
pub struct SessionSink {
    db: Db,
    info: SessionInfo,
    host: String,
    svc: Arc<Artifacts>,
}

impl SessionSink {
    pub fn new(db: Db, info: SessionInfo, svc: Arc<Artifacts>) -> SessionSink {
        let host = svc.cfg.host.clone();
        SessionSink {
            db,
            info,
            host,
            svc,
        }
    }
}

async fn journal_refusal(db: &Db, info: &SessionInfo, name: Option<&str>, r: &Refusal) {
    let outcome = if r.status >= 500 {
        Outcome::Failure
    } else {
        Outcome::Denied
    };
    let ev = session_event(info, "artifact.upload", outcome)
        .rule(r.rule.clone())
        .details(serde_json::json!({
            "name": name,
            "outcome": "refused",
            "status": r.status,
            "reason": r.message,
        }));
    if let Err(e) = db.write(move |tx| tx.append_event(&ev).map(|_| ())).await {
        tracing::error!(session = %info.id, error = %e, "could not journal an artifact refusal");
    }
}

impl ArtifactSink for SessionSink {
    fn host(&self) -> &str {
        &self.host
    }

    fn begin<'a>(
        &'a self,
        session: &'a str,
        token: &'a str,
        content_length: Option<u64>,
    ) -> BoxFuture<'a, std::result::Result<Box<dyn ArtifactUpload>, Refusal>> {
        Box::pin(async move {
            let r = self.begin_inner(session, token, content_length).await;
            if let Err((name, r)) = &r {
                journal_refusal(&self.db, &self.info, name.as_deref(), r).await;
            }
            r.map_err(|(_, r)| r)
        })
    }
}

impl SessionSink {
    async fn begin_inner(
        &self,
        session: &str,
        token: &str,
        content_length: Option<u64>,
    ) -> std::result::Result<Box<dyn ArtifactUpload>, (Option<String>, Refusal)> {
        let svc = &self.svc;
        // The channel's session, twice over: the proxy's and this sink's.
        if session != self.info.id.as_str() {
            return Err((
                None,
                Refusal::new(403, rules::TOKEN, "the upload URL is for another session"),
            ));
        }
        let claims = svc.verify(session, token).map_err(|r| (None, r))?;
        let name = Some(claims.name.clone());
        let nonce = claims.nonce.clone();
        let used = self
            .db
            .run(move |s| s.artifact_token_used(&nonce))
            .await
            .map_err(|e| {
                (
                    name.clone(),
                    Refusal::new(
                        500,
                        rules::STORE,
                        format!("checking the URL: {}", e.message),
                    ),
                )
            })?;
        if used {
            return Err((
                name,
                Refusal::new(
                    409,
                    rules::USED,
                    "the upload URL was already used (each URL takes one upload); ask for a new one",
                ),
            ));
        }
        let max = svc.cfg.max_size;
        if content_length.is_some_and(|n| n > max) {
            return Err((
                name,
                Refusal::new(
                    413,
                    rules::SIZE,
                    format!("the upload is larger than the cap of {max} bytes ([artifacts] max_size); nothing was kept"),
                ),
            ));
        }
        let dir = svc.session_dir(session);
        let store_err =
            |what: &str, e: io::Error| Refusal::new(500, rules::STORE, format!("{what}: {e}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| (name.clone(), store_err("making the artifact directory", e)))?;
        let tmp = dir.join(format!(".upload-{}.tmp", claims.nonce));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    (
                        name.clone(),
                        Refusal::new(409, rules::USED, "an upload with this URL is in progress"),
                    )
                } else {
                    (name.clone(), store_err("creating the artifact", e))
                }
            })?;
        Ok(Box::new(Upload {
            file: Some(tokio::fs::File::from_std(file)),
            hasher: Sha256::new(),
            n: 0,
            max,
            dest: dir.join(&claims.name),
            tmp,
            claims,
            db: self.db.clone(),
            info: self.info.clone(),
            done: false,
        }))
    }
}

/// One upload: bytes go to the temp file and the hash.
struct Upload {
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    n: u64,
    max: u64,
    tmp: PathBuf,
    dest: PathBuf,
    claims: Claims,
    db: Db,
    info: SessionInfo,
    done: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn closed() -> io::Error {
    io::Error::other("the upload is finished")
}

impl AsyncWrite for Upload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(f) = this.file.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        match Pin::new(f).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.n += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl ArtifactUpload for Upload {
    fn max_size(&self) -> u64 {
        self.max
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, std::result::Result<Receipt, Refusal>> {
        Box::pin(async move {
            let name = self.claims.name.clone();
            let r = self.finish_inner().await;
            if let Err(r) = &r {
                journal_refusal(&self.db, &self.info, Some(&name), r).await;
            }
            r
        })
    }

    fn abort(self: Box<Self>, why: Refusal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            journal_refusal(&self.db, &self.info, Some(&self.claims.name), &why).await;
            drop(self);
        })
    }
}

impl Upload {
    async fn finish_inner(&mut self) -> std::result::Result<Receipt, Refusal> {
        let store_err =
            |what: &str, e: String| Refusal::new(500, rules::STORE, format!("{what}: {e}"));
        let file = self
            .file
            .take()
            .ok_or_else(|| store_err("finishing", "twice".into()))?;
        if self.n > self.max {
            return Err(Refusal::new(
                413,
                rules::SIZE,
                format!(
                    "the upload is larger than the cap of {} bytes; nothing was kept",
                    self.max
                ),
            ));
        }
        file.sync_all()
            .await
            .map_err(|e| store_err("writing the artifact", e.to_string()))?;
        drop(file);
        let sha256 = to_hex(&self.hasher.clone().finalize());
        let rec = ArtifactRecord {
            session: self.info.id.clone(),
            name: self.claims.name.clone(),
            size: self.n,
            sha256: sha256.clone(),
            uploaded_at: now_rfc3339(),
        };
        let ev = session_event(&self.info, "artifact.upload", Outcome::Success)
            .rule(rules::UPLOAD)
            .details(serde_json::json!({
                "name": rec.name,
                "size": rec.size,
                "sha256": sha256,
                "outcome": "stored",
                "url_expires_at": rfc3339_ms(self.claims.expires_ms),
            }));
        let (tmp, dest) = (self.tmp.clone(), self.dest.clone());
        let nonce = self.claims.nonce.clone();
        let expires = rfc3339_ms(self.claims.expires_ms);
        let r2 = rec.clone();
        let accepted = self
            .db
            .run(move |s| {
                s.accept_artifact(&r2, &nonce, &expires, &ev, || {
                    std::fs::rename(&tmp, &dest).map_err(|e| {
                        Error::internal(format!("moving the artifact into place: {e}"))
                    })
                })
            })
            .await;
        match accepted {
            Ok(true) => {
                self.done = true;
                self.db.writer().wakeup().notify();
                Ok(Receipt {
                    name: rec.name,
                    size: rec.size,
                    sha256,
                })
            }
            Ok(false) => Err(Refusal::new(
                409,
                rules::USED,
                "the upload URL was already used (each URL takes one upload); ask for a new one",
            )),
            Err(e) => Err(store_err("recording the artifact", e.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "build.tar.gz", "x y", "ünï"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".hidden",
            "a\0b",
            "a..b",
            &"x".repeat(256),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_764_581_703_000), "2025-12-01T09:35:03Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tokens_verify_only_for_their_session_until_they_expire() {
        let a = Artifacts {
            key: [7; 32],
            root: PathBuf::from("/nonexistent"),
            cfg: ArtifactsConfig::default(),
            issued: Mutex::new(Vec::new()),
        };
        let (t, c) = a.token("s1", "out.bin", Duration::from_secs(60)).unwrap();
        assert_eq!(a.verify("s1", &t).unwrap(), c);
        let e = a.verify("s2", &t).unwrap_err();
        assert!(e.message.contains("another session"), "{e:?}");
        // Altered: one hex digit of the payload.
        let mut b = t.clone().into_bytes();
        b[0] = if b[0] == b'7' { b'6' } else { b'7' };
        let e = a
            .verify("s1", std::str::from_utf8(&b).unwrap())
            .unwrap_err();
        assert!(e.message.contains("signature"), "{e:?}");
        // Another key.
        let other = Artifacts {
            key: [8; 32],
            root: PathBuf::new(),
            cfg: ArtifactsConfig::default(),
            issued: Mutex::new(Vec::new()),
        };
        assert!(other.verify("s1", &t).is_err());
        let (t, _) = a.token("s1", "x", Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(a.verify("s1", &t).unwrap_err().message.contains("expired"));
        assert!(a.token("s1", "../x", Duration::from_secs(1)).is_err());
        for junk in ["", ".", "zz.zz", "ab", "00.00"] {
            assert_eq!(a.verify("s1", junk).unwrap_err().status, 403);
        }
    }

    #[test]
    fn the_key_is_made_once_private_and_refused_when_readable() {
        let d = tempfile::tempdir().unwrap();
        let k1 = load_or_create_key(d.path()).unwrap();
        let p = d.path().join(KEY_FILE);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create_key(d.path()).unwrap(), k1);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_key(d.path()).is_err());
    }
}
