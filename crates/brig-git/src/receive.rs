//! `git-receive-pack`, implemented by brig (no git hooks): the command list is
//! checked against the push rules before the pack is read; the pack is indexed into
//! a quarantine object directory (nothing of a rejected push is kept); every new
//! commit is scanned; accepted commits are re-written with the session's identity,
//! signed and pushed upstream; only then do the gateway's refs move. The answer is
//! git's own report-status (`ok`/`ng <ref> <reason>`) with `remote:` lines on
//! side-band 2, so `git push` shows every reason and fails.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::events::{GitEvent, Outcome, PushEvent, RefVerdict, SignedCommit};
use crate::gateway::plain;
use crate::gitcmd::{first_line, git, run, run_ok};
use crate::pkt::{self, Pkt, PktError};
use crate::repo::{self, is_sha, signed_ref};
use crate::rules::{check_command, PushRule, ZERO};
use crate::{commit, object, GitSession, NewCommit, Violation};

const CAPABILITIES: &str =
    "report-status delete-refs side-band-64k quiet ofs-delta push-options object-format=sha1 agent=brig-git";

/// How far past the pack limit a rejected push is still read (and discarded).
const DRAIN_FACTOR: u64 = 4;

const RESULT_TYPE: &str = "application/x-git-receive-pack-result";

/// The ref advertisement for a push: the gateway's branches (never brig's own refs).
pub(crate) async fn advertise(session: &GitSession) -> Response {
    let branches = match repo::branches(&session.repo.dir).await {
        Ok(b) => b,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the gateway repository cannot be read: {e}"),
            )
        }
    };
    let mut body = Vec::new();
    pkt::push_line(&mut body, b"# service=git-receive-pack\n");
    body.extend_from_slice(pkt::FLUSH);
    if branches.is_empty() {
        pkt::push_line(
            &mut body,
            format!("{ZERO} capabilities^{{}}\0{CAPABILITIES}\n").as_bytes(),
        );
    }
    for (i, (name, sha)) in branches.iter().enumerate() {
        let line = if i == 0 {
            format!("{sha} {name}\0{CAPABILITIES}\n")
        } else {
            format!("{sha} {name}\n")
        };
        pkt::push_line(&mut body, line.as_bytes());
    }
    body.extend_from_slice(pkt::FLUSH);
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/x-git-receive-pack-advertisement",
        )
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .expect("static headers")
}

/// One push at a time per gateway repository (the refs, the signed map, upstream).
async fn repo_lock(dir: &Path) -> tokio::sync::OwnedMutexGuard<()> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let lock = {
        let mut map = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        match map.get(dir).and_then(Weak::upgrade) {
            Some(l) => l,
            None => {
                let l = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(dir.to_path_buf(), Arc::downgrade(&l));
                l
            }
        }
    };
    lock.lock_owned().await
}

/// The request body, read as the push is processed.
struct BodyReader {
    body: Body,
    buf: Vec<u8>,
    pos: usize,
    total: u64,
}

impl BodyReader {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|e| format!("reading the push failed: {e}"))?;
            if let Ok(data) = frame.into_data() {
                self.total += data.len() as u64;
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
    async fn fill(&mut self) -> Result<bool, String> {
        match self.next().await? {
            Some(d) => {
                self.buf.extend_from_slice(&d);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    /// Read and discard (never store) the rest of a rejected push, so that git,
    /// which sends its whole body before it reads the answer, gets the answer and
    /// shows the reason; past [`DRAIN_FACTOR`] × the pack limit, stop reading (the
    /// connection is cut and git reports only a failed RPC).
    async fn drain(&mut self, max_pack: u64) {
        let limit = max_pack.saturating_mul(DRAIN_FACTOR);
        while self.total <= limit {
            match self.next().await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}

struct Command {
    old: String,
    new: String,
    refname: String,
    verdict: Option<(PushRule, String)>,
    signed_tip: Option<String>,
}

impl Command {
    fn branch(&self) -> &str {
        self.refname
            .strip_prefix("refs/heads/")
            .unwrap_or(&self.refname)
    }
}

struct Request {
    caps: HashSet<String>,
    commands: Vec<Command>,
    push_options: Vec<String>,
}

/// Parse the update requests (`shallow` lines, commands, push options) at the start
/// of the body. `Ok(None)`: a body with no commands (git's probe of a large push).
async fn parse_request(rd: &mut BodyReader, limit: usize) -> Result<Option<Request>, String> {
    let mut req = Request {
        caps: HashSet::new(),
        commands: vec![],
        push_options: vec![],
    };
    let mut in_options = false;
    loop {
        let parsed = pkt::parse(&rd.buf[rd.pos..]);
        match parsed {
            Err(PktError::Incomplete) => {
                if rd.buf.len() > limit {
                    return Err(format!("the push's command list exceeds {limit} bytes"));
                }
                if !rd.fill().await? {
                    if rd.buf.len() == rd.pos && req.commands.is_empty() && !in_options {
                        return Ok(None);
                    }
                    return Err("the push request ends inside its command list".into());
                }
            }
            Err(PktError::Invalid(e)) => return Err(format!("malformed push request: {e}")),
            Ok((Pkt::Flush, n)) => {
                rd.pos += n;
                if req.commands.is_empty() {
                    return Ok(None);
                }
                if !in_options && req.caps.contains("push-options") {
                    in_options = true;
                    continue;
                }
                return Ok(Some(req));
            }
            Ok((Pkt::Data(d), n)) => {
                let d = d.strip_suffix(b"\n").unwrap_or(d).to_vec();
                rd.pos += n;
                if in_options {
                    let o = String::from_utf8_lossy(&d).into_owned();
                    req.push_options.push(o.chars().take(1000).collect());
                    continue;
                }
                let (line, caps) = match d.iter().position(|&b| b == 0) {
                    Some(i) if req.commands.is_empty() => (&d[..i], Some(&d[i + 1..])),
                    Some(_) => return Err("capabilities after the first command".into()),
                    None => (&d[..], None),
                };
                let line = std::str::from_utf8(line)
                    .map_err(|_| "a push command is not UTF-8".to_string())?;
                if let Some(caps) = caps {
                    req.caps = String::from_utf8_lossy(caps)
                        .split(' ')
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                if let Some(s) = line.strip_prefix("shallow ") {
                    // The client is shallow; its pack is checked for completeness anyway.
                    if !is_sha(s) || !req.commands.is_empty() {
                        return Err(format!("malformed shallow line {line:?}"));
                    }
                    continue;
                }
                if line.starts_with("push-cert") {
                    return Err("signed pushes (push-cert) are not supported".into());
                }
                let mut it = line.splitn(3, ' ');
                let (Some(old), Some(new), Some(refname)) = (it.next(), it.next(), it.next())
                else {
                    return Err(format!("malformed push command {:?}", trunc(line, 200)));
                };
                if !is_sha(old) || !is_sha(new) || refname.is_empty() {
                    return Err(format!("malformed push command {:?}", trunc(line, 200)));
                }
                req.commands.push(Command {
                    old: old.into(),
                    new: new.into(),
                    refname: refname.into(),
                    verdict: None,
                    signed_tip: None,
                });
            }
            Ok((other, _)) => return Err(format!("unexpected {other:?} in the push request")),
        }
    }
}

fn trunc(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One line, printable, bounded: safe in a report-status line and a `remote:` line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect()
}

/// The answer: side-band 2 messages, then the report-status on band 1.
struct Reply {
    sideband: bool,
    report: bool,
    messages: Vec<String>,
    unpack: Result<(), String>,
}

impl Reply {
    fn render(&self, commands: &[Command]) -> Vec<u8> {
        let mut report = Vec::new();
        if self.report {
            match &self.unpack {
                Ok(()) => pkt::push_line(&mut report, b"unpack ok\n"),
                Err(e) => pkt::push_line(&mut report, format!("unpack {}\n", clean(e)).as_bytes()),
            }
            for c in commands {
                let line = match &c.verdict {
                    None => format!("ok {}\n", c.refname),
                    Some((rule, why)) => {
                        format!("ng {} {} [{}]\n", c.refname, clean(why), rule.name())
                    }
                };
                pkt::push_line(&mut report, line.as_bytes());
            }
            report.extend_from_slice(pkt::FLUSH);
        }
        if !self.sideband {
            return report;
        }
        let mut out = Vec::new();
        for m in &self.messages {
            pkt::push_sideband(&mut out, 2, format!("brig: {}\n", clean(m)).as_bytes());
        }
        if !report.is_empty() {
            pkt::push_sideband(&mut out, 1, &report);
        }
        out.extend_from_slice(pkt::FLUSH);
        out
    }
}

pub(crate) async fn receive_pack(
    session: &GitSession,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a push body must not be compressed (Content-Encoding)",
            );
        }
    }
    let start = Instant::now();
    let _lock = repo_lock(&session.repo.dir).await;
    let mut rd = BodyReader {
        body,
        buf: Vec::new(),
        pos: 0,
        total: 0,
    };
    let mut req = match parse_request(&mut rd, session.repo.limits.max_command_bytes).await {
        Ok(Some(r)) => r,
        Ok(None) => return result(Vec::new()),
        Err(e) => {
            let mut ev = PushEvent::new(&session.repo.session, &session.repo.name);
            ev.reject(PushRule::BadRequest);
            ev.error = Some(e.clone());
            ev.duration_ms = start.elapsed().as_millis() as u64;
            session.services.record(GitEvent::Push(ev));
            return plain(StatusCode::BAD_REQUEST, &e);
        }
    };
    let mut reply = Reply {
        sideband: req.caps.contains("side-band-64k") || req.caps.contains("side-band"),
        report: req.caps.contains("report-status"),
        messages: vec![],
        unpack: Ok(()),
    };
    let mut ev = PushEvent::new(&session.repo.session, &session.repo.name);
    ev.push_options = req.push_options.clone();
    let mut t = start;
    ev.lap("request", &mut t);

    let quarantine = push(session, &mut rd, &mut req, &mut reply, &mut ev, &mut t).await;
    drop(quarantine);

    // A push is accepted whole or not at all (up to the upstream, ref by ref).
    if let Some(rule) = req
        .commands
        .iter()
        .find_map(|c| c.verdict.as_ref().map(|v| v.0))
    {
        if rule != PushRule::Upstream && rule != PushRule::Signing {
            ev.reject(rule);
        }
    }
    ev.pack_bytes = rd.total.saturating_sub(rd.pos as u64);
    ev.refs = req
        .commands
        .iter()
        .map(|c| RefVerdict {
            refname: c.refname.clone(),
            old: c.old.clone(),
            new: c.new.clone(),
            accepted: c.verdict.is_none(),
            rule: c.verdict.as_ref().map(|v| v.0.name()),
            reason: c.verdict.as_ref().map(|v| v.1.clone()),
            signed_tip: c.signed_tip.clone(),
        })
        .collect();
    ev.duration_ms = start.elapsed().as_millis() as u64;
    let body = reply.render(&req.commands);
    session.services.record(GitEvent::Push(ev));
    result(body)
}

fn result(body: Vec<u8>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, RESULT_TYPE)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .expect("static headers")
}

/// Reject every command of the push: `rule` for the ones not already rejected.
fn reject_all(cmds: &mut [Command], rule: PushRule, why: &str) {
    for c in cmds.iter_mut() {
        if c.verdict.is_none() {
            c.verdict = Some((rule, why.to_string()));
        }
    }
}

/// After one ref was rejected: every other one is not updated either.
fn reject_rest(cmds: &mut [Command]) {
    let first = cmds
        .iter()
        .find_map(|c| c.verdict.as_ref().map(|v| (v.0, c.refname.clone())));
    if let Some((rule, refname)) = first {
        let why = format!(
            "not updated: {refname} of the same push was rejected ({})",
            rule.name()
        );
        reject_all(cmds, PushRule::Atomic, &why);
    }
}

/// The push proper. Returns the quarantine (dropped, so deleted, by the caller).
async fn push(
    session: &GitSession,
    rd: &mut BodyReader,
    req: &mut Request,
    reply: &mut Reply,
    ev: &mut PushEvent,
    t: &mut Instant,
) -> Option<tempfile::TempDir> {
    let repo = &session.repo;
    let limits = &repo.limits;
    let cmds = &mut req.commands;

    // 1. Rules on names, before reading the pack.
    let mut seen = HashSet::new();
    let dup = cmds
        .iter()
        .find(|c| !seen.insert(c.refname.clone()))
        .map(|c| c.refname.clone());
    let current: HashMap<String, String> = match repo::branches(&repo.dir).await {
        Ok(b) => b.into_iter().collect(),
        Err(e) => {
            ev.outcome = Outcome::Error;
            ev.error = Some(e.clone());
            reject_all(cmds, PushRule::BadRequest, &format!("gateway error: {e}"));
            rd.drain(limits.max_pack_bytes).await;
            return None;
        }
    };
    if cmds.len() > limits.max_ref_updates {
        let why = format!(
            "a push may update at most {} refs; push fewer branches at a time",
            limits.max_ref_updates
        );
        reject_all(cmds, PushRule::BadRequest, &why);
    } else if let Some(d) = dup {
        reject_all(
            cmds,
            PushRule::BadRequest,
            &format!("{d} appears twice in the push"),
        );
    }
    for c in cmds.iter_mut() {
        if c.verdict.is_none() {
            c.verdict = check_command(
                repo,
                &c.refname,
                &c.old,
                &c.new,
                current.get(&c.refname).map(String::as_str),
                session.services.decides_non_bot_branches(),
            )
            .err();
        }
    }
    if reject_with_reasons(cmds, reply) {
        // Not stored, not indexed: read only to answer on a clean connection.
        rd.drain(limits.max_pack_bytes).await;
        return None;
    }

    ev.lap("refs", t);

    // 2. The pack, into a quarantine object directory, within the size limit.
    let quarantine = match tempfile::Builder::new()
        .prefix("incoming-")
        .tempdir_in(repo.dir.join("objects"))
    {
        Ok(q) => q,
        Err(e) => {
            let why = format!("gateway error: cannot create a quarantine: {e}");
            ev.outcome = Outcome::Error;
            ev.error = Some(why.clone());
            reject_all(cmds, PushRule::BadRequest, &why);
            rd.drain(limits.max_pack_bytes).await;
            return None;
        }
    };
    let qdir = quarantine.path().to_path_buf();
    let env: Vec<(OsString, OsString)> = vec![
        ("GIT_OBJECT_DIRECTORY".into(), qdir.clone().into()),
        (
            "GIT_ALTERNATE_OBJECT_DIRECTORIES".into(),
            repo.dir.join("objects").into(),
        ),
        // git refuses ref updates while this is set: a scanner cannot move refs.
        ("GIT_QUARANTINE_PATH".into(), qdir.clone().into()),
    ];
    if let Err(e) = std::fs::create_dir(qdir.join("pack")) {
        let why = format!("gateway error: cannot create a quarantine: {e}");
        reject_all(cmds, PushRule::BadRequest, &why);
        return Some(quarantine);
    }
    match index_pack(repo, &env, rd).await {
        Ok(()) => {}
        Err(IndexError::TooLarge) => {
            let why = format!(
                "the pack exceeds the gateway's limit of {} bytes; push fewer or smaller changes",
                limits.max_pack_bytes
            );
            reply.messages.push(format!("rejected: {why}"));
            reply.unpack = Err(format!("pack exceeds {} bytes", limits.max_pack_bytes));
            reject_all(cmds, PushRule::PackSize, &why);
            // Nothing past the limit reaches git; the rest is only discarded.
            rd.drain(limits.max_pack_bytes).await;
            return Some(quarantine);
        }
        Err(IndexError::Corrupt(e)) => {
            let why = format!("the pack is corrupt and was discarded: {e}");
            reply.messages.push(format!("rejected: {why}"));
            reply.unpack = Err(e);
            reject_all(cmds, PushRule::CorruptPack, &why);
            rd.drain(limits.max_pack_bytes).await;
            return Some(quarantine);
        }
        Err(IndexError::Gateway(e)) => {
            ev.outcome = Outcome::Error;
            ev.error = Some(e.clone());
            reply.unpack = Err("gateway error".into());
            reject_all(cmds, PushRule::BadRequest, &format!("gateway error: {e}"));
            return Some(quarantine);
        }
    }

    ev.lap("pack", t);

    // 3. What the pack made of each ref (commits, fast-forwards, complete
    // history) and the push's new commits. Both only read the quarantine, so
    // they run at once; the object checks are judged first, as if run first.
    let news: Vec<String> = cmds.iter().map(|c| c.new.clone()).collect();
    let (objects, listed) = tokio::join!(
        check_objects(repo, &env, cmds),
        list_commits(repo, &env, &news)
    );
    match objects {
        Err((rule, why)) => {
            reply.messages.push(format!("rejected: {why}"));
            reject_all(cmds, rule, &why);
            return Some(quarantine);
        }
        Ok(verdicts) => {
            for (c, v) in cmds.iter_mut().zip(verdicts) {
                c.verdict = c.verdict.take().or(v);
            }
        }
    }
    if reject_with_reasons(cmds, reply) {
        return Some(quarantine);
    }
    let commits = match listed {
        Ok(c) => c,
        Err(e) => {
            reject_all(cmds, PushRule::Incomplete, &e);
            return Some(quarantine);
        }
    };
    let ids: Vec<String> = commits.iter().map(|c| c.id.clone()).collect();
    ev.commits = ids.clone();
    if commits.len() > limits.max_new_commits {
        let why = format!(
            "the push has {} new commits, more than the limit of {}; push in smaller steps",
            commits.len(),
            limits.max_new_commits
        );
        reply.messages.push(format!("rejected: {why}"));
        reject_all(cmds, PushRule::TooManyCommits, &why);
        return Some(quarantine);
    }
    ev.lap("checks", t);

    // 4. The scan of every new commit, the paths they touch (for policy) and
    // their signed rewrites (written only once the push is accepted): all
    // read-only, so at once, and judged in that order.
    let (scanned, paths, rewrites) = tokio::join!(
        scan(session, &env, &commits),
        touched_paths(repo, &env, &commits),
        rewrite_commits(session, &env, &commits)
    );
    match scanned {
        Err(e) => {
            let why = format!("the pre-push scan could not run, so nothing is accepted: {e}");
            ev.error = Some(e);
            reply.messages.push(format!("rejected: {why}"));
            reject_all(cmds, PushRule::ScanUnavailable, &why);
            return Some(quarantine);
        }
        // A finding in a commit the push does not add (the pinned commit, an
        // accepted push) is already upstream: a scanner that walks history past
        // the new commits must not block the push for it.
        Ok(v) => {
            let v: Vec<Violation> = v
                .into_iter()
                .filter(|x| x.commit.is_empty() || ids.contains(&x.commit))
                .collect();
            if !v.is_empty() {
                reject_for_violations(cmds, reply, &v);
                ev.violations = v;
                return Some(quarantine);
            }
        }
    }
    ev.lap("scan", t);

    // 4b. Policy on each branch, with the paths its new commits touch.
    let paths = match paths {
        Ok(p) => p,
        Err(e) => {
            reject_all(cmds, PushRule::Policy, &format!("gateway error: {e}"));
            return Some(quarantine);
        }
    };
    for c in cmds.iter_mut() {
        let branch = c.branch().to_string();
        let bot = repo.is_bot_branch(&branch);
        if let Err(why) = session.services.authorize_push(&branch, bot, &paths).await {
            c.verdict = Some((PushRule::Policy, why));
        }
    }
    if reject_with_reasons(cmds, reply) {
        return Some(quarantine);
    }
    ev.lap("policy", t);

    // 5. Accepted: the objects move in, then sign, push upstream, move the refs.
    if let Err(e) = migrate(&qdir, &repo.dir.join("objects")) {
        ev.outcome = Outcome::Error;
        ev.error = Some(e.clone());
        reject_all(cmds, PushRule::BadRequest, &format!("gateway error: {e}"));
        return Some(quarantine);
    }
    let signed = match rewrites.and_then(|r| write_signed(repo, r)) {
        Ok(s) => s,
        Err(e) => {
            ev.outcome = Outcome::Error;
            ev.error = Some(e.clone());
            let why = format!("signing failed, nothing was pushed: {e}");
            reply.messages.push(why.clone());
            reject_all(cmds, PushRule::Signing, &why);
            return Some(quarantine);
        }
    };
    let map = match repo::load_signed_map(&repo.dir) {
        Ok(m) => m,
        Err(e) => {
            ev.outcome = Outcome::Error;
            ev.error = Some(e.clone());
            reject_all(cmds, PushRule::Signing, &format!("gateway error: {e}"));
            return Some(quarantine);
        }
    };
    ev.signed = signed
        .iter()
        .map(|(o, s)| SignedCommit {
            original: o.clone(),
            signed: s.clone(),
        })
        .collect();
    if !signed.is_empty() {
        reply.messages.push(format!(
            "{} new commit(s) re-written as {} <{}> and signed by brig",
            signed.len(),
            repo.identity.name,
            repo.identity.email
        ));
    }
    ev.lap("sign", t);
    for c in cmds.iter_mut() {
        let tip = map.get(&c.new).cloned().unwrap_or_else(|| c.new.clone());
        let branch = c.branch().to_string();
        match session
            .services
            .upstream()
            .push(&repo.dir, &tip, &branch)
            .await
        {
            Ok(()) => {
                reply
                    .messages
                    .push(format!("upstream {branch} is now {}", &tip[..12]));
                c.signed_tip = Some(tip);
            }
            Err(e) => {
                ev.outcome = Outcome::Error;
                let why = format!(
                    "the upstream refused or failed, the gateway is unchanged: {}",
                    clean(&e)
                );
                ev.error.get_or_insert(why.clone());
                reply.messages.push(format!("{branch}: {why}"));
                c.verdict = Some((PushRule::Upstream, why));
            }
        }
    }
    ev.lap("upstream", t);
    let mut script = String::new();
    for c in cmds.iter().filter(|c| c.verdict.is_none()) {
        let tip = c.signed_tip.as_deref().expect("accepted refs have a tip");
        script.push_str(&format!("update {} {} {}\n", c.refname, c.new, c.old));
        script.push_str(&format!("update {} {tip}\n", signed_ref(c.branch())));
    }
    if !script.is_empty() {
        let mut u = git(&repo.dir, &[]);
        u.args(["update-ref", "--stdin"]);
        if let Err(e) = run_ok(u, Some(script.as_bytes()), "updating the gateway's refs").await {
            // The upstream moved but the gateway did not: the agent's next push is
            // refused as stale until the operator looks; say so plainly.
            tracing::error!(session = %repo.session, error = %e, "gateway ref update failed after the upstream push");
            ev.outcome = Outcome::Error;
            ev.error = Some(e.clone());
            for c in cmds.iter_mut().filter(|c| c.verdict.is_none()) {
                c.verdict = Some((
                    PushRule::BadRequest,
                    format!("gateway error after the upstream push: {e}"),
                ));
            }
        }
        ev.lap("update_refs", t);
    }
    Some(quarantine)
}

/// If a command has a verdict: every other one is rejected with it, the
/// reasons go to git's output, and `true`.
fn reject_with_reasons(cmds: &mut [Command], reply: &mut Reply) -> bool {
    if !cmds.iter().any(|c| c.verdict.is_some()) {
        return false;
    }
    reject_rest(cmds);
    for c in cmds.iter().filter(|c| c.verdict.is_some()) {
        let (rule, why) = c.verdict.as_ref().expect("filtered");
        if *rule != PushRule::Atomic {
            reply
                .messages
                .push(format!("rejected {}: {why} [{}]", c.refname, rule.name()));
        }
    }
    true
}

/// The push's new commits, oldest first (parents before children), with their
/// parents.
async fn list_commits(
    repo: &crate::SessionRepo,
    env: &[(OsString, OsString)],
    news: &[String],
) -> Result<Vec<NewCommit>, String> {
    let mut c = git(&repo.dir, env);
    c.args(["rev-list", "--topo-order", "--reverse", "--parents"])
        .args(news)
        .args(["--not", "--all"]);
    let out = run_ok(c, None, "listing the new commits").await?;
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            let mut ids = l.split(' ').map(str::to_string);
            let id = ids.next().unwrap_or_default();
            let parents: Vec<String> = ids.collect();
            if !is_sha(&id) || !parents.iter().all(|p| is_sha(p)) {
                return Err(format!("git rev-list printed {l:?}"));
            }
            Ok(NewCommit { id, parents })
        })
        .collect()
}

/// The scan of the new commits, on a blocking thread (the scanner runs git).
async fn scan(
    session: &GitSession,
    env: &[(OsString, OsString)],
    commits: &[NewCommit],
) -> Result<Vec<Violation>, String> {
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    let services = session.services.clone();
    let (dir, env, commits) = (session.repo.dir.clone(), env.to_vec(), commits.to_vec());
    tokio::task::spawn_blocking(move || services.scanner().scan_listed(&dir, &env, &commits))
        .await
        .unwrap_or_else(|e| Err(format!("the scanner crashed: {e}")))
}

/// Every path the new commits add, change or delete, each commit against
/// its first parent (a merge's whole change against the branch it lands
/// on, so nothing a merge brings in or changes itself is missed). Paths
/// are git's raw bytes (`-z`: never C-quoted), so policy sees what lands.
/// A commit git does not list is an error, never fewer paths.
async fn touched_paths(
    repo: &crate::SessionRepo,
    env: &[(OsString, OsString)],
    commits: &[NewCommit],
) -> Result<Vec<String>, String> {
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    let mut input = String::new();
    for c in commits {
        input.push_str(&c.id);
        if let Some(p) = c.parents.first() {
            input.push(' ');
            input.push_str(p);
        }
        input.push('\n');
    }
    let mut c = git(&repo.dir, env);
    c.args([
        "diff-tree",
        "--stdin",
        "-r",
        "-z",
        "--raw",
        "--no-abbrev",
        "--no-renames",
        "--root",
        "--always",
        "--no-ext-diff",
    ]);
    let out = run_ok(
        c,
        Some(input.as_bytes()),
        "listing the paths the push touches",
    )
    .await?;
    parse_touched(&out, commits)
}

/// `diff-tree --stdin -z --raw --always` output: a commit id field, then
/// for each change a `:modes ids status` field and its path field.
fn parse_touched(out: &[u8], commits: &[NewCommit]) -> Result<Vec<String>, String> {
    let mut unlisted: HashSet<&str> = commits.iter().map(|c| c.id.as_str()).collect();
    let mut current = false;
    let mut fields = out.split(|&b| b == 0).filter(|f| !f.is_empty());
    let mut paths = Vec::new();
    while let Some(f) = fields.next() {
        if f.starts_with(b":") {
            let path = fields
                .next()
                .ok_or("git diff-tree output ended inside an entry")?;
            if !current {
                return Err("git diff-tree printed a change before a commit id".into());
            }
            paths.push(String::from_utf8_lossy(path).into_owned());
        } else {
            let id = String::from_utf8_lossy(f);
            let id = id.trim();
            if !unlisted.remove(id) {
                return Err(format!("git diff-tree named an unexpected commit {id:?}"));
            }
            current = true;
        }
    }
    if let Some(id) = unlisted.iter().next() {
        return Err(format!(
            "git diff-tree did not list commit {id}, so its paths are unknown"
        ));
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

fn reject_for_violations(cmds: &mut [Command], reply: &mut Reply, v: &[Violation]) {
    const SHOWN: usize = 50;
    for x in v.iter().take(SHOWN) {
        let at = match x.line {
            Some(l) => format!("{}:{l}", x.path),
            None => x.path.clone(),
        };
        reply.messages.push(format!(
            "rejected: commit {} {at}: rule {}: {}",
            &x.commit[..12.min(x.commit.len())],
            x.rule,
            x.description
        ));
    }
    if v.len() > SHOWN {
        reply
            .messages
            .push(format!("... and {} more findings", v.len() - SHOWN));
    }
    reply.messages.push(
        "remove them from every commit of the push (git rebase -i / commit --amend), then push again"
            .into(),
    );
    let first = &v[0];
    let why = format!(
        "pre-push scan: {} finding(s), first: rule {} in {}{} of commit {}",
        v.len(),
        first.rule,
        first.path,
        first.line.map(|l| format!(":{l}")).unwrap_or_default(),
        &first.commit[..12.min(first.commit.len())]
    );
    reject_all(cmds, PushRule::Scan, &why);
}

enum IndexError {
    TooLarge,
    Corrupt(String),
    Gateway(String),
}

/// Stream the rest of the body into `git index-pack` in the quarantine, counting it.
async fn index_pack(
    repo: &crate::SessionRepo,
    env: &[(OsString, OsString)],
    rd: &mut BodyReader,
) -> Result<(), IndexError> {
    let max = repo.limits.max_pack_bytes;
    let mut c = git(&repo.dir, env);
    c.args(["index-pack", "--stdin", "--fix-thin", "--strict"])
        .arg(format!("--max-input-size={}", max.max(1)))
        .stdin(std::process::Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| IndexError::Gateway(format!("cannot run git index-pack: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_task = tokio::spawn(async move {
        let mut b = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut b).await;
        b
    });
    let mut stdout = child.stdout.take().expect("piped");
    let out_task = tokio::spawn(async move {
        let mut b = Vec::new();
        let _ = (&mut stdout).take(4096).read_to_end(&mut b).await;
        b
    });
    let mut sent: u64 = 0;
    let mut first = rd.buf.split_off(rd.pos);
    loop {
        let chunk: Bytes = if !first.is_empty() {
            Bytes::from(std::mem::take(&mut first))
        } else {
            match rd.next().await {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => return Err(IndexError::Corrupt(e)),
            }
        };
        sent += chunk.len() as u64;
        if sent > max {
            // kill_on_drop ends index-pack; the quarantine is deleted by the caller.
            drop(child);
            return Err(IndexError::TooLarge);
        }
        if stdin.write_all(&chunk).await.is_err() {
            // index-pack stopped (a corrupt pack): its status says why.
            break;
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .await
        .map_err(|e| IndexError::Gateway(format!("git index-pack: {e}")))?;
    let err = err_task.await.unwrap_or_default();
    let out = out_task.await.unwrap_or_default();
    if sent == 0 {
        return Err(IndexError::Corrupt("the push has no pack".into()));
    }
    if !status.success() || !out.starts_with(b"pack\t") {
        let why = first_line(&err);
        return Err(IndexError::Corrupt(if why.is_empty() {
            "git index-pack failed".into()
        } else {
            why
        }));
    }
    Ok(())
}

/// A verdict for each command, in order: every new tip is a commit, every
/// update a fast-forward, no object missing. The three checks run at once;
/// a wrong tip decides before the others, as if it were checked first.
async fn check_objects(
    repo: &crate::SessionRepo,
    env: &[(OsString, OsString)],
    cmds: &[Command],
) -> Result<Vec<Option<(PushRule, String)>>, (PushRule, String)> {
    let input: String = cmds.iter().map(|c| format!("{}\n", c.new)).collect();
    let types = async {
        let mut b = git(&repo.dir, env);
        b.args(["cat-file", "--batch-check=%(objectname) %(objecttype)"]);
        run_ok(b, Some(input.as_bytes()), "reading the pushed objects").await
    };
    // Missing objects anywhere in the new history (git's own connectivity check).
    let connected = async {
        let mut rl = git(&repo.dir, env);
        rl.args([
            "rev-list",
            "--objects",
            "--stdin",
            "--not",
            "--all",
            "--quiet",
        ]);
        run(rl, Some(input.as_bytes())).await
    };
    let ancestry = futures_util::future::join_all(cmds.iter().map(|c| async move {
        if c.old == ZERO {
            return None;
        }
        let mut m = git(&repo.dir, env);
        m.args(["merge-base", "--is-ancestor", &c.old, &c.new]);
        Some(run(m, None).await)
    }));
    let (types, connected, ancestry) = tokio::join!(types, connected, ancestry);

    let out = types.map_err(|e| (PushRule::Incomplete, e))?;
    let types: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    let mut verdicts: Vec<Option<(PushRule, String)>> = cmds
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&String::new())))
        .map(|(c, t)| {
            if t.ends_with(" missing") || t.is_empty() {
                Some((
                    PushRule::Incomplete,
                    format!("{} is not in the pack", &c.new[..12]),
                ))
            } else if !t.ends_with(" commit") {
                Some((
                    PushRule::NotACommit,
                    "a branch must point at a commit".into(),
                ))
            } else {
                None
            }
        })
        .collect();
    if verdicts.iter().any(Option::is_some) {
        return Ok(verdicts);
    }
    let out = connected.map_err(|e| (PushRule::Incomplete, e))?;
    if !out.ok {
        return Err((
            PushRule::Incomplete,
            format!(
                "the pushed history is incomplete ({}); push from a clone of this gateway",
                first_line(&out.stderr)
            ),
        ));
    }
    for (v, a) in verdicts.iter_mut().zip(ancestry) {
        let Some(out) = a else { continue };
        let out = out.map_err(|e| (PushRule::Incomplete, e))?;
        *v = match out.code {
            Some(0) => None,
            Some(1) => Some((
                PushRule::NonFastForward,
                "non-fast-forward (force-push) is not allowed; fetch, rebase or merge on top, push again"
                    .into(),
            )),
            _ => Some((
                PushRule::Incomplete,
                format!("cannot compare with the branch: {}", first_line(&out.stderr)),
            )),
        };
    }
    Ok(verdicts)
}

/// Move the quarantine's objects into the repository (packs: .idx last, so git
/// never sees an index without its pack).
fn migrate(q: &Path, objects: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, base, out)?;
            } else {
                out.push(p.strip_prefix(base).expect("under base").to_path_buf());
            }
        }
        Ok(())
    }
    walk(q, q, &mut files).map_err(|e| format!("cannot read the quarantine: {e}"))?;
    files.sort_by_key(|p| p.extension().is_some_and(|e| e == "idx"));
    for rel in files {
        let dst = objects.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        if dst.exists() {
            continue; // the same object or pack is already there
        }
        std::fs::rename(q.join(&rel), &dst)
            .map_err(|e| format!("cannot move {} into the repository: {e}", rel.display()))?;
    }
    Ok(())
}

/// A new commit's signed rewrite: made while the push is judged, written only
/// once it is accepted.
struct Rewrite {
    original: String,
    signed: String,
    /// The signed object to write; `None` when an earlier push signed it.
    object: Option<Vec<u8>>,
}

/// Re-write and sign each new commit (oldest first), each one's parents mapped
/// to their signed ids: one `cat-file --batch` reads them all, the ids are
/// computed here, nothing is written.
async fn rewrite_commits(
    session: &GitSession,
    env: &[(OsString, OsString)],
    commits: &[NewCommit],
) -> Result<Vec<Rewrite>, String> {
    let repo = &session.repo;
    let mut map = repo::load_signed_map(&repo.dir)?;
    let unsigned: Vec<&str> = commits
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| !map.contains_key(*id))
        .collect();
    let mut raw = read_commits(repo, env, &unsigned).await?.into_iter();
    let mut out = Vec::with_capacity(commits.len());
    for c in commits {
        if let Some(s) = map.get(&c.id) {
            out.push(Rewrite {
                original: c.id.clone(),
                signed: s.clone(),
                object: None,
            });
            continue;
        }
        let body = raw.next().ok_or("git cat-file answered too few commits")?;
        let rewritten = commit::rewrite(&body, &repo.identity, |p| {
            map.get(p).cloned().unwrap_or_else(|| p.to_string())
        })?;
        let signed = commit::sign(&rewritten, session.services.signer());
        let id = object::object_id("commit", &signed);
        map.insert(c.id.clone(), id.clone());
        out.push(Rewrite {
            original: c.id.clone(),
            signed: id,
            object: Some(signed),
        });
    }
    Ok(out)
}

/// The raw commit objects `ids`, in order, by one `git cat-file --batch`.
async fn read_commits(
    repo: &crate::SessionRepo,
    env: &[(OsString, OsString)],
    ids: &[&str],
) -> Result<Vec<Vec<u8>>, String> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let input: String = ids.iter().map(|id| format!("{id}\n")).collect();
    let mut c = git(&repo.dir, env);
    c.args(["cat-file", "--batch"]);
    let out = run_ok(c, Some(input.as_bytes()), "reading the pushed commits").await?;
    let mut rest = &out[..];
    let mut bodies = Vec::with_capacity(ids.len());
    for id in ids {
        // `<id> commit <size>\n<content>\n`
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("git cat-file answered too little")?;
        let header = String::from_utf8_lossy(&rest[..nl]).into_owned();
        let size = match header.split(' ').collect::<Vec<_>>().as_slice() {
            [got, "commit", size] if got == id => size
                .parse::<usize>()
                .map_err(|_| format!("git cat-file answered {header:?}"))?,
            _ => return Err(format!("git cat-file answered {header:?} for {id}")),
        };
        let body = rest
            .get(nl + 1..nl + 1 + size)
            .ok_or("git cat-file answered too little")?;
        bodies.push(body.to_vec());
        rest = rest.get(nl + 2 + size..).unwrap_or_default();
    }
    Ok(bodies)
}

/// Write the fresh signed commits (the objects are in the repository by now)
/// and record the mapping; `(agent commit, signed commit)` pairs.
fn write_signed(
    repo: &crate::SessionRepo,
    rewrites: Vec<Rewrite>,
) -> Result<Vec<(String, String)>, String> {
    let objects = repo.dir.join("objects");
    let mut fresh = Vec::new();
    for r in &rewrites {
        if let Some(body) = &r.object {
            let id = object::write_loose(&objects, "commit", body)?;
            if id != r.signed {
                return Err(format!("signed commit {} was written as {id}", r.signed));
            }
            fresh.push((r.original.clone(), id));
        }
    }
    repo::append_signed_map(&repo.dir, &fresh)?;
    Ok(rewrites
        .into_iter()
        .map(|r| (r.original, r.signed))
        .collect())
}
