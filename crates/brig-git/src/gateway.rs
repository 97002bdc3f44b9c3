//! The smart HTTP side of the gateway (gitprotocol-http):
//! `GET /<name>.git/info/refs?service=git-upload-pack|git-receive-pack`,
//! `POST /<name>.git/git-upload-pack`, `POST /<name>.git/git-receive-pack`.
//!
//! Fetches run `git upload-pack --stateless-rpc` on the session's gateway repository
//! (protocol v2 when the client's `Git-Protocol` header asks for it); pushes are
//! received by brig itself (`receive.rs`). Errors are `text/plain`, which git prints
//! to the agent as `remote: ...` lines.

use std::ffi::OsString;
use std::io::Read;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::{BoxError, Router};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::events::{FetchEvent, GitEvent, Outcome};
use crate::gitcmd::{first_line, git};
use crate::{pkt, receive, GitSession};

/// An axum router serving the gateway for the [`GitSession`] found in each request's
/// extensions (the server adds it per connection, e.g. with `Extension(session)` or
/// `req.extensions_mut().insert(session)`). A request without one is refused.
pub fn router() -> Router {
    Router::new().fallback(|req: Request| async move {
        match req.extensions().get::<GitSession>().cloned() {
            Some(s) => serve(s, req).await,
            None => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this connection carries no session (a brig bug: the gateway is mounted \
                 without its session); nothing was read or changed",
            ),
        }
    })
}

/// Serve one request of `session`'s git client.
pub async fn serve<B>(session: GitSession, req: Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = Body::new(body);
    let path = parts.uri.path();
    let Some((name, op)) = split_path(path) else {
        return plain(
            StatusCode::NOT_FOUND,
            &format!(
                "{path} is not a git smart-HTTP endpoint; this session's repository is \
                 http://git.brig/{}.git",
                session.repo.name
            ),
        );
    };
    if name != session.repo.name {
        return plain(
            StatusCode::NOT_FOUND,
            &format!(
                "no repository '{}' in this session; its only repository is \
                 http://git.brig/{}.git",
                name.chars().take(100).collect::<String>(),
                session.repo.name
            ),
        );
    }
    let v2 = wants_v2(&parts.headers);
    match (op, &parts.method) {
        (Op::InfoRefs, &Method::GET) => match service(parts.uri.query()) {
            Some("git-upload-pack") => advertise_upload_pack(&session, v2).await,
            Some("git-receive-pack") => receive::advertise(&session).await,
            _ => plain(
                StatusCode::FORBIDDEN,
                "brig's gateway speaks smart HTTP only: use a git client \
                 (info/refs?service=git-upload-pack or git-receive-pack)",
            ),
        },
        (Op::UploadPack, &Method::POST) => upload_pack(&session, &parts.headers, body, v2).await,
        (Op::ReceivePack, &Method::POST) => {
            receive::receive_pack(&session, &parts.headers, body).await
        }
        _ => plain(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", parts.method),
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    InfoRefs,
    UploadPack,
    ReceivePack,
}

/// `/<name>[.git]/<op>` into the repository name and the operation.
fn split_path(path: &str) -> Option<(&str, Op)> {
    let p = path.strip_prefix('/')?;
    let (name, op) = [
        ("/info/refs", Op::InfoRefs),
        ("/git-upload-pack", Op::UploadPack),
        ("/git-receive-pack", Op::ReceivePack),
    ]
    .into_iter()
    .find_map(|(suffix, op)| p.strip_suffix(suffix).map(|n| (n, op)))?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    (!name.is_empty()).then_some((name, op))
}

fn service(query: Option<&str>) -> Option<&str> {
    query?.split('&').find_map(|kv| kv.strip_prefix("service="))
}

/// Protocol v2 only when asked (`Git-Protocol: version=2`); nothing else of the header
/// reaches git.
fn wants_v2(headers: &HeaderMap) -> bool {
    headers
        .get("git-protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(':').any(|kv| kv.trim() == "version=2"))
}

fn protocol_env(v2: bool) -> Vec<(OsString, OsString)> {
    if v2 {
        vec![("GIT_PROTOCOL".into(), "version=2".into())]
    } else {
        vec![]
    }
}

/// upload-pack's configuration on a gateway repository: brig's refs hidden, and no
/// fetching of objects by id beyond what git's protocol v0 allows for advertised refs.
fn upload_pack_args() -> [&'static str; 10] {
    [
        "-c",
        "uploadpack.hideRefs=refs/brig/",
        "-c",
        "uploadpack.allowAnySHA1InWant=false",
        "-c",
        "uploadpack.allowTipSHA1InWant=false",
        "-c",
        "uploadpack.allowReachableSHA1InWant=false",
        "upload-pack",
        "--stateless-rpc",
    ]
}

/// A `text/plain` answer: git shows each line to the agent as `remote: brig: ...`.
pub(crate) fn plain(status: StatusCode, msg: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(format!("brig: {msg}\n")))
        .expect("static headers")
}

fn git_response(content_type: &str, body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("static headers")
}

/// Reports one fetch exchange when dropped, so an aborted stream is journaled too.
struct FetchRecord {
    session: GitSession,
    event: FetchEvent,
    start: Instant,
    done: bool,
}

impl FetchRecord {
    fn new(session: &GitSession, stage: &str, v2: bool) -> Self {
        FetchRecord {
            session: session.clone(),
            event: FetchEvent {
                session: session.repo.session.clone(),
                repo: session.repo.name.clone(),
                stage: stage.into(),
                protocol: if v2 { 2 } else { 0 },
                outcome: Outcome::Ok,
                bytes_in: 0,
                bytes_out: 0,
                duration_ms: 0,
                error: None,
            },
            start: Instant::now(),
            done: false,
        }
    }
    fn fail(&mut self, outcome: Outcome, error: String) {
        self.event.outcome = outcome;
        self.event.error = Some(error);
    }
}

impl Drop for FetchRecord {
    fn drop(&mut self) {
        if !self.done && self.event.error.is_none() {
            self.fail(Outcome::Error, "the client went away before the end".into());
        }
        self.event.duration_ms = self.start.elapsed().as_millis() as u64;
        let ev = GitEvent::Fetch(self.event.clone());
        self.session.services.record(ev);
    }
}

async fn advertise_upload_pack(session: &GitSession, v2: bool) -> Response {
    let mut rec = FetchRecord::new(session, "advertise", v2);
    if let Err(why) = session.services.authorize_fetch().await {
        rec.fail(Outcome::Rejected, why.clone());
        return plain(StatusCode::FORBIDDEN, &why);
    }
    let mut c = git(&session.repo.dir, &protocol_env(v2));
    c.args(upload_pack_args())
        .arg("--advertise-refs")
        .arg(&session.repo.dir);
    let out = match crate::gitcmd::run(c, None).await {
        Ok(o) if o.ok => o.stdout,
        Ok(o) => {
            let why = first_line(&o.stderr);
            rec.fail(Outcome::Error, why.clone());
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the gateway repository cannot be read: {why}"),
            );
        }
        Err(e) => {
            rec.fail(Outcome::Error, e.clone());
            return plain(StatusCode::INTERNAL_SERVER_ERROR, &e);
        }
    };
    let mut body = Vec::with_capacity(out.len() + 40);
    if !v2 {
        pkt::push_line(&mut body, b"# service=git-upload-pack\n");
        body.extend_from_slice(pkt::FLUSH);
    }
    body.extend_from_slice(&out);
    rec.event.bytes_out = body.len() as u64;
    rec.done = true;
    git_response(
        "application/x-git-upload-pack-advertisement",
        Body::from(body),
    )
}

/// Read a whole (small) request body, at most `limit` bytes.
pub(crate) async fn read_limited(body: Body, limit: u64) -> Result<Vec<u8>, String> {
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the request failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(format!("the request is larger than {limit} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

async fn upload_pack(session: &GitSession, headers: &HeaderMap, body: Body, v2: bool) -> Response {
    let mut rec = FetchRecord::new(session, "upload-pack", v2);
    if let Err(why) = session.services.authorize_fetch().await {
        rec.fail(Outcome::Rejected, why.clone());
        return plain(StatusCode::FORBIDDEN, &why);
    }
    let limit = session.repo.limits.max_fetch_request_bytes;
    let raw = match read_limited(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            rec.fail(Outcome::Rejected, e.clone());
            return plain(StatusCode::PAYLOAD_TOO_LARGE, &e);
        }
    };
    rec.event.bytes_in = raw.len() as u64;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let input = match encoding {
        "identity" => raw,
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            let read = flate2::read::GzDecoder::new(&raw[..])
                .take(limit + 1)
                .read_to_end(&mut out);
            match read {
                Ok(n) if n as u64 <= limit => out,
                Ok(_) => {
                    let e = format!("the fetch request inflates past {limit} bytes");
                    rec.fail(Outcome::Rejected, e.clone());
                    return plain(StatusCode::PAYLOAD_TOO_LARGE, &e);
                }
                Err(e) => {
                    let e = format!("the fetch request is not valid gzip: {e}");
                    rec.fail(Outcome::Rejected, e.clone());
                    return plain(StatusCode::BAD_REQUEST, &e);
                }
            }
        }
        other => {
            let e = format!("unsupported Content-Encoding {other:?}");
            rec.fail(Outcome::Rejected, e.clone());
            return plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, &e);
        }
    };

    let mut c = git(&session.repo.dir, &protocol_env(v2));
    c.args(upload_pack_args())
        .arg(&session.repo.dir)
        .stdin(std::process::Stdio::piped());
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => {
            let e = format!("cannot run git upload-pack: {e}");
            rec.fail(Outcome::Error, e.clone());
            return plain(StatusCode::INTERNAL_SERVER_ERROR, &e);
        }
    };
    let mut stdin = child.stdin.take().expect("piped");
    // Written from its own task: upload-pack may answer before it has read everything.
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf).await;
        buf
    });
    let stdout = child.stdout.take().expect("piped");

    struct State {
        child: tokio::process::Child,
        stdout: tokio::process::ChildStdout,
        stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
        rec: FetchRecord,
    }
    let state = State {
        child,
        stdout,
        stderr: Some(stderr_task),
        rec,
    };
    // Dropping the stream (client gone) drops the child, which kills it.
    let stream = futures_util::stream::unfold(Some(state), |st| async move {
        let mut st = st?;
        let mut buf = vec![0u8; 64 << 10];
        match st.stdout.read(&mut buf).await {
            Ok(n) if n > 0 => {
                buf.truncate(n);
                st.rec.event.bytes_out += n as u64;
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(st)))
            }
            _ => {
                let status = st.child.wait().await;
                let err = match st.stderr.take() {
                    Some(h) => h.await.unwrap_or_default(),
                    None => vec![],
                };
                match status {
                    Ok(s) if s.success() => {}
                    _ => {
                        let why = first_line(&err);
                        st.rec
                            .fail(Outcome::Error, format!("git upload-pack: {why}"));
                    }
                }
                st.rec.done = true;
                None
            }
        }
    });
    git_response(
        "application/x-git-upload-pack-result",
        Body::from_stream(stream),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            split_path("/app.git/info/refs"),
            Some(("app", Op::InfoRefs))
        );
        assert_eq!(
            split_path("/app/git-upload-pack"),
            Some(("app", Op::UploadPack))
        );
        assert_eq!(
            split_path("/org/app.git/git-receive-pack"),
            Some(("org/app", Op::ReceivePack))
        );
        assert_eq!(split_path("/.git/info/refs"), None);
        assert_eq!(split_path("/app.git/HEAD"), None);
        assert_eq!(
            service(Some("service=git-upload-pack")),
            Some("git-upload-pack")
        );
        assert_eq!(service(None), None);
    }
}
