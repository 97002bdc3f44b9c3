//! Process capture for `gvisor` sessions: gVisor's runtime monitoring
//! (seccheck trace points), read by brig from outside the sandbox.
//!
//! gVisor does not implement seccomp user notification, so init cannot
//! capture execs there ([`crate::capture`]). Instead runsc starts the sandbox
//! with `--pod-init-config=<session dir>/trace.json`, whose trace session
//! enables these points of the Sentry (gVisor's kernel) with the `remote`
//! sink pointed at a unix socket brig listens on, one per session, in the
//! session dir (never mounted into the sandbox):
//!
//! - `container/start` (the container id): proof that points flow;
//! - `sentry/clone` (caller's thread group, the new one, clone flags): the
//!   parent of every process;
//! - `syscall/execve/enter`, `syscall/execveat/enter` (pathname, argv;
//!   context: time, thread group, credentials, cwd): every exec attempt;
//! - `sentry/exit_notify_parent` (exit status as `wait` reports it): the end
//!   of every process, whoever reaps it.
//!
//! The wire protocol is gVisor's `pkg/sentry/seccheck/sinks/remote`: runsc
//! connects (`SOCK_SEQPACKET`) while it creates the sandbox, sends a
//! `Handshake{version}` protobuf and waits for brig's; then every message is
//! an 8-byte header (`header_size: u16, message_type: u16, dropped: u32`,
//! native byte order) followed by one protobuf of
//! `pkg/sentry/seccheck/points/*.proto`. The few messages brig needs are
//! decoded by hand ([`pb`]); input is untrusted (gVisor's threat model does
//! not trust the Sentry) and capped like init's capture.
//!
//! The trace session is configured from outside before the sandbox starts
//! and lives in the Sentry: nothing inside the sandbox can see, change or
//! delete it (`runsc trace` talks to the sandbox's control socket on the
//! host, which only root on the host reaches).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use brig_core::{wire, Error, Result};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::channel::{ProcessEvent, ProcessProducer};

/// The layer a gVisor session reports when its processes are captured.
pub const LAYER: &str = "capture:gvisor-trace";
/// The layer named when capture cannot be set up.
const GUARD: &str = "capture";
const SOCKET: &str = "trace.sock";
const CONFIG: &str = "trace.json";
/// The remote-sink protocol version brig speaks (runsc 2022-12 sends 1).
const PROTOCOL_VERSION: u64 = 1;
/// Larger than any message the Sentry can send (its socket's send buffer).
const MAX_MESSAGE: usize = 512 * 1024;
/// Caps, as init's capture: per string, and arguments per exec.
const MAX_STR: usize = 4096;
const MAX_ARGS: usize = 256;
/// Live processes tracked for their parent and exit; the sandbox's pids
/// limit keeps the real number far below.
const MAX_TRACKED: usize = 65536;
/// The pid of the sandbox's init: orphans' new parent.
const INIT_PID: i32 = 1;

// common.proto `MessageType`.
const MSG_CONTAINER_START: u16 = 1;
const MSG_SENTRY_CLONE: u16 = 2;
const MSG_SENTRY_EXIT_NOTIFY_PARENT: u16 = 4;
const MSG_SYSCALL_EXECVE: u16 = 11;

const CLONE_THREAD: u64 = 0x0001_0000;
const CLONE_PARENT: u64 = 0x0000_8000;

/// The pod init config: one trace session, the points above, the remote
/// sink at `endpoint`. The sink retries a full socket for about a second (the
/// sandbox waits, not brig) before it drops a point; drops are counted in
/// every header and journaled.
pub fn pod_init_config(endpoint: &Path) -> serde_json::Value {
    let exec_ctx = ["time", "thread_id", "group_id", "credentials", "cwd"];
    serde_json::json!({
        "trace_session": {
            "name": "Default",
            "points": [
                {"name": "container/start", "context_fields": ["time", "group_id"]},
                {"name": "sentry/clone", "context_fields": ["group_id"]},
                {"name": "syscall/execve/enter", "context_fields": exec_ctx},
                {"name": "syscall/execveat/enter", "optional_fields": ["fd_path"],
                 "context_fields": exec_ctx},
                {"name": "sentry/exit_notify_parent", "context_fields": ["time", "group_id"]},
            ],
            "sinks": [{
                "name": "remote",
                "config": {
                    "endpoint": endpoint.to_string_lossy(),
                    "retries": 100,
                    "backoff": "100us",
                    "backoff_max": "10ms",
                },
            }],
        }
    })
}

/// The points brig's pod init config enables.
pub const POINTS: [&str; 5] = [
    "container/start",
    "sentry/clone",
    "syscall/execve/enter",
    "syscall/execveat/enter",
    "sentry/exit_notify_parent",
];

/// Whether `runsc` has the trace points and the `remote` sink this capture
/// needs (`runsc trace metadata`), for `brig doctor`.
pub fn probe_runsc(runsc: &Path) -> std::result::Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(runsc)
        .args(["trace", "metadata"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {} trace metadata: {e}", runsc.display()))?;
    // Read while it runs: the listing is larger than a pipe.
    let mut so = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = so.read_to_string(&mut out);
        out
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("`runsc trace metadata` timed out after 5s".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("`runsc trace metadata` exited with {status}"));
    }
    let listed = |name: &str| {
        out.lines().any(|l| {
            l.strip_prefix("Name: ")
                .is_some_and(|r| r.split(',').next() == Some(name))
        })
    };
    let missing: Vec<&str> = POINTS
        .into_iter()
        .chain(["remote"])
        .filter(|p| !listed(p))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "runsc has no trace point or sink {}",
            missing.join(", ")
        ));
    }
    Ok(format!(
        "runsc trace points {} and the remote sink: every exec and exit is recorded",
        POINTS.join(", ")
    ))
}

fn guard(msg: impl std::fmt::Display) -> Error {
    Error::guard(GUARD, format!("gVisor trace: {msg}"))
}

fn os_err(what: &str) -> Error {
    guard(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// The listening socket and pod init config of one session, before runsc
/// connected.
pub struct TraceSocket {
    fd: OwnedFd,
    path: PathBuf,
    config: PathBuf,
}

impl TraceSocket {
    /// Create `<session_dir>/trace.sock` (root only) and the pod init config
    /// naming it.
    pub fn listen(session_dir: &Path) -> Result<TraceSocket> {
        let path = session_dir.join(SOCKET);
        let bytes = path.as_os_str().as_encoded_bytes();
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
            return Err(guard(format!(
                "the socket path {} is longer than a unix socket allows ({} bytes)",
                path.display(),
                addr.sun_path.len() - 1
            ))
            .hint("use a shorter data dir"));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let _ = std::fs::remove_file(&path);
        // SAFETY: plain syscalls; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(os_err("socket(AF_UNIX, SOCK_SEQPACKET)"));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(os_err(&format!("bind({})", path.display())));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| guard(format!("chmod {}: {e}", path.display())))?;
        if unsafe { libc::listen(fd.as_raw_fd(), 1) } != 0 {
            return Err(os_err("listen"));
        }
        let config = session_dir.join(CONFIG);
        let json = serde_json::to_vec_pretty(&pod_init_config(&path))
            .map_err(|e| Error::internal(e.to_string()))?;
        std::fs::write(&config, json)
            .map_err(|e| guard(format!("writing {}: {e}", config.display())))?;
        Ok(TraceSocket { fd, path, config })
    }

    /// The global runsc flag that makes the sandbox connect.
    pub fn runsc_flag(&self) -> String {
        format!("--pod-init-config={}", self.config.display())
    }

    /// Wait for runsc to connect, check it is a process of brig's own user,
    /// and exchange versions. The socket file is removed once connected: no
    /// second peer can connect.
    pub async fn accept(self, timeout: Duration) -> Result<Connection> {
        let path = self.path.clone();
        let r = tokio::time::timeout(timeout, self.accept_inner()).await;
        let _ = std::fs::remove_file(&path);
        match r {
            Ok(r) => r,
            Err(_) => Err(guard(format!(
                "runsc did not connect to {} within {} s",
                path.display(),
                timeout.as_secs()
            ))),
        }
    }

    async fn accept_inner(self) -> Result<Connection> {
        let listener = register(self.fd)?;
        let conn = loop {
            let mut g = listener
                .readable()
                .await
                .map_err(|e| guard(format!("polling: {e}")))?;
            // SAFETY: plain syscall; the fd is owned right away.
            let fd = unsafe {
                libc::accept4(
                    listener.get_ref().as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd >= 0 {
                break unsafe { OwnedFd::from_raw_fd(fd) };
            }
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                g.clear_ready();
                continue;
            }
            return Err(guard(format!("accept: {e}")));
        };
        drop(listener);
        check_peer(&conn)?;
        let conn = register(conn)?;
        let mut buf = vec![0u8; 1024];
        let n = recv(&conn, &mut buf)
            .await
            .map_err(|e| guard(format!("reading runsc's handshake: {e}")))?
            .ok_or_else(|| guard("runsc closed the trace socket before its handshake"))?;
        let version = pb::handshake_version(&buf[..n])
            .ok_or_else(|| guard("runsc's handshake is not a Handshake message"))?;
        if version < PROTOCOL_VERSION {
            return Err(guard(format!(
                "runsc speaks remote-sink protocol {version}, brig needs {PROTOCOL_VERSION}"
            )));
        }
        let reply = pb::handshake(PROTOCOL_VERSION);
        // SAFETY: plain syscall on our socket with our buffer.
        let w = unsafe {
            libc::send(
                conn.get_ref().as_raw_fd(),
                reply.as_ptr().cast(),
                reply.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if w != reply.len() as isize {
            return Err(os_err("sending brig's handshake"));
        }
        Ok(Connection { fd: conn, version })
    }
}

fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor, and `as_raw_fd` returns
    // that same descriptor for as long as the AsyncFd owns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| guard(format!("polling: {}", e.into_parts().1)))
}

/// The peer must run as brig's own user (runsc, started by brig as root).
fn check_peer(fd: &OwnedFd) -> Result<()> {
    // SAFETY: ucred is plain data; getsockopt writes at most its size.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(os_err("SO_PEERCRED"));
    }
    let me = unsafe { libc::geteuid() };
    if cred.uid != me {
        return Err(guard(format!(
            "the trace socket's peer (pid {}) runs as uid {}, not brig's {me}",
            cred.pid, cred.uid
        )));
    }
    Ok(())
}

/// One message; `Ok(None)` at EOF. A message larger than `buf` is cut
/// (`MSG_TRUNC`) and reported as its real length, which the caller drops.
async fn recv(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        let mut g = fd.readable().await?;
        // SAFETY: plain syscall into our buffer.
        let n = unsafe {
            libc::recv(
                fd.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n > 0 {
            return Ok(Some(n as usize));
        }
        if n == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            g.clear_ready();
            continue;
        }
        if e.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return Err(e);
    }
}

/// runsc is connected and the versions agreed.
pub struct Connection {
    fd: AsyncFd<OwnedFd>,
    version: u64,
}

impl Connection {
    /// The remote-sink protocol version the Sentry reported.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Read points until the Sentry closes the socket (the sandbox ended),
    /// turning them into process events for `producer`. The returned
    /// receiver resolves at the `container/start` of `container_id`.
    pub fn start(self, container_id: String, producer: ProcessProducer) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(read_loop(self.fd, container_id, producer, tx));
        rx
    }
}

async fn read_loop(
    fd: AsyncFd<OwnedFd>,
    container_id: String,
    producer: ProcessProducer,
    started: oneshot::Sender<()>,
) {
    let mut started = Some(started);
    let mut tracker = Tracker::default();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match recv(&fd, &mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "reading gVisor's trace socket failed; capture ends");
                break;
            }
        };
        if n > buf.len() {
            // Cut: the message is lost, and so possibly a process.
            tracker.lost();
            producer.count_dropped(1);
            continue;
        }
        let out = tracker.message(&buf[..n]);
        producer.count_dropped(out.dropped);
        if out.started.as_deref() == Some(container_id.as_str()) {
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
        }
        for e in out.events {
            producer.offer(e);
        }
    }
}

/// What one message gave.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub events: Vec<ProcessEvent>,
    /// Points the Sentry or brig lost since the previous message.
    pub dropped: u64,
    /// The id of a container that started.
    pub started: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Proc {
    ppid: i32,
    /// An exec was seen: its exit is journaled.
    execd: bool,
    /// Alive when a point was lost (its exec, maybe): its exit is
    /// journaled too, so a process whose exec point was lost still shows.
    uncertain: bool,
}

/// Turns the stream of points into process events: parents from clones,
/// execs, and exits of the processes seen to exec (and, once a point was
/// lost, of every process that was alive then).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    procs: HashMap<i32, Proc>,
    /// The header's cumulative drop count (wraps at u32).
    sentry_dropped: u32,
    /// A point was ever lost: the exit of a process never seen is journaled.
    lossy: bool,
}

impl Tracker {
    /// One whole message (header + payload).
    pub fn message(&mut self, msg: &[u8]) -> Output {
        let mut out = Output::default();
        let Some((hdr_size, kind, dropped)) = header(msg) else {
            out.dropped = 1;
            return out;
        };
        out.dropped = u64::from(dropped.wrapping_sub(self.sentry_dropped));
        self.sentry_dropped = dropped;
        if out.dropped > 0 {
            // Before this message's own point: it may be the exit of the
            // process whose exec was lost.
            self.lost();
        }
        let payload = &msg[hdr_size..];
        let parsed = match kind {
            MSG_CONTAINER_START => {
                out.started = pb::container_start_id(payload);
                true
            }
            MSG_SENTRY_CLONE => pb::clone_info(payload).map(|c| self.clone(c)).is_some(),
            MSG_SYSCALL_EXECVE => pb::execve(payload)
                .map(|x| out.events.push(ProcessEvent::Exec(self.exec(x))))
                .is_some(),
            MSG_SENTRY_EXIT_NOTIFY_PARENT => pb::exit_notify(payload)
                .map(|x| out.events.extend(self.exit(x).map(ProcessEvent::Exit)))
                .is_some(),
            // Points brig did not ask for (a newer runsc may add some).
            _ => true,
        };
        if !parsed {
            out.dropped += 1;
            self.lost();
        }
        out
    }

    /// A point was lost (dropped by the Sentry, cut, or malformed).
    pub fn lost(&mut self) {
        self.lossy = true;
        for p in self.procs.values_mut() {
            p.uncertain = true;
        }
    }

    fn clone(&mut self, c: pb::CloneInfo) {
        if c.flags & CLONE_THREAD != 0 || c.created_tgid == c.ctx.tgid {
            return;
        }
        let ppid = if c.flags & CLONE_PARENT != 0 {
            self.procs.get(&c.ctx.tgid).map_or(INIT_PID, |p| p.ppid)
        } else {
            c.ctx.tgid
        };
        if self.procs.len() < MAX_TRACKED || self.procs.contains_key(&c.created_tgid) {
            self.procs.insert(
                c.created_tgid,
                Proc {
                    ppid,
                    execd: false,
                    uncertain: false,
                },
            );
        }
    }

    fn exec(&mut self, x: pb::Execve) -> wire::ProcessExec {
        let tgid = x.ctx.tgid;
        let ppid = match self.procs.get_mut(&tgid) {
            Some(p) => {
                p.execd = true;
                p.ppid
            }
            None => {
                // Not seen cloned (only init itself, or past the cap).
                if self.procs.len() < MAX_TRACKED {
                    self.procs.insert(
                        tgid,
                        Proc {
                            ppid: 0,
                            execd: true,
                            uncertain: false,
                        },
                    );
                }
                0
            }
        };
        let path = if x.pathname.is_empty() {
            x.fd_path
        } else if !x.pathname.starts_with('/') && !x.fd_path.is_empty() {
            // execveat relative to a directory fd.
            format!("{}/{}", x.fd_path.trim_end_matches('/'), x.pathname)
        } else {
            x.pathname
        };
        wire::ProcessExec {
            pid: tgid,
            ppid,
            uid: x.ctx.uid,
            argv: x.argv,
            path,
            cwd: x.ctx.cwd,
            time: rfc3339(x.ctx.time_ns),
        }
    }

    fn exit(&mut self, x: pb::ExitNotify) -> Option<wire::ProcessExit> {
        let tgid = x.ctx.tgid;
        let gone = self.procs.remove(&tgid);
        // Its children now belong to init.
        for p in self.procs.values_mut() {
            if p.ppid == tgid {
                p.ppid = INIT_PID;
            }
        }
        let report = match gone {
            Some(p) => p.execd || p.uncertain,
            None => self.lossy,
        };
        if !report {
            return None;
        }
        let (code, signal) = wait_status(x.status);
        Some(wire::ProcessExit {
            pid: tgid,
            code,
            signal,
            time: rfc3339(x.ctx.time_ns),
        })
    }
}

/// `(header size, message type, dropped)`, if the header is whole.
fn header(msg: &[u8]) -> Option<(usize, u16, u32)> {
    if msg.len() < 8 {
        return None;
    }
    let size = u16::from_ne_bytes([msg[0], msg[1]]) as usize;
    let kind = u16::from_ne_bytes([msg[2], msg[3]]);
    let dropped = u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
    (size >= 8 && size <= msg.len()).then_some((size, kind, dropped))
}

/// A `wait` status: `(exit code, signal)`.
fn wait_status(status: i32) -> (Option<i32>, Option<i32>) {
    match status & 0x7f {
        0 => (Some((status >> 8) & 0xff), None),
        sig => (None, Some(sig)),
    }
}

/// The Sentry's CLOCK_REALTIME, or brig's clock if that is far off.
fn rfc3339(time_ns: i64) -> String {
    use time::OffsetDateTime;
    let now = OffsetDateTime::now_utc();
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ns))
        .ok()
        .filter(|t| (*t - now).abs() < time::Duration::minutes(10))
        .unwrap_or(now);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The few protobuf messages of `pkg/sentry/seccheck/points` brig reads,
/// decoded by hand: varints and length-delimited fields, unknown fields
/// skipped, strings capped. Field numbers are those of runsc 2022-12.
pub(crate) mod pb {
    use super::{MAX_ARGS, MAX_STR};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Val<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Fixed,
    }

    /// The fields of one message, in order; None at the first malformed one.
    struct Fields<'a>(&'a [u8]);

    impl<'a> Fields<'a> {
        fn varint(&mut self) -> Option<u64> {
            let mut v = 0u64;
            for i in 0..10 {
                let (&b, rest) = self.0.split_first()?;
                self.0 = rest;
                v |= u64::from(b & 0x7f) << (7 * i);
                if b < 0x80 {
                    return Some(v);
                }
            }
            None
        }

        fn skip(&mut self, n: usize) -> Option<&'a [u8]> {
            if n > self.0.len() {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }

        /// The next field, or `Some(Err(()))` if the rest is malformed.
        fn next_field(&mut self) -> Option<Result<(u64, Val<'a>), ()>> {
            if self.0.is_empty() {
                return None;
            }
            Some(self.field().ok_or(()))
        }

        fn field(&mut self) -> Option<(u64, Val<'a>)> {
            let key = self.varint()?;
            let v = match key & 7 {
                0 => Val::Varint(self.varint()?),
                1 => {
                    self.skip(8)?;
                    Val::Fixed
                }
                2 => {
                    let n = usize::try_from(self.varint()?).ok()?;
                    Val::Bytes(self.skip(n)?)
                }
                5 => {
                    self.skip(4)?;
                    Val::Fixed
                }
                _ => return None,
            };
            Some((key >> 3, v))
        }
    }

    /// Every field of `b`, or None if any is malformed.
    fn fields(b: &[u8]) -> Option<Vec<(u64, Val<'_>)>> {
        let mut f = Fields(b);
        let mut out = vec![];
        while let Some(x) = f.next_field() {
            out.push(x.ok()?);
        }
        Some(out)
    }

    fn string(b: &[u8]) -> String {
        if b.len() > MAX_STR {
            // A cut UTF-8 sequence shows as a replacement character.
            return String::from_utf8_lossy(&b[..MAX_STR]).into_owned() + "[brig: truncated]";
        }
        String::from_utf8_lossy(b).into_owned()
    }

    /// The context fields brig asks for (common.proto `ContextData`).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Context {
        pub time_ns: i64,
        pub tid: i32,
        pub tgid: i32,
        /// `credentials.real_uid`.
        pub uid: u32,
        pub cwd: String,
    }

    fn context(b: &[u8]) -> Option<Context> {
        let mut c = Context::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Val::Varint(x)) => c.time_ns = x as i64,
                (2, Val::Varint(x)) => c.tid = x as i32,
                (4, Val::Varint(x)) => c.tgid = x as i32,
                (7, Val::Bytes(cred)) => {
                    for (m, w) in fields(cred)? {
                        if let (1, Val::Varint(uid)) = (m, w) {
                            c.uid = uid as u32;
                        }
                    }
                }
                (8, Val::Bytes(s)) => c.cwd = string(s),
                _ => {}
            }
        }
        Some(c)
    }

    /// common.proto `Handshake.version`.
    pub fn handshake_version(b: &[u8]) -> Option<u64> {
        let mut version = 0;
        for (n, v) in fields(b)? {
            if let (1, Val::Varint(x)) = (n, v) {
                version = x;
            }
        }
        Some(version)
    }

    pub fn handshake(version: u64) -> Vec<u8> {
        let mut out = vec![0x08];
        let mut v = version;
        loop {
            if v < 0x80 {
                out.push(v as u8);
                return out;
            }
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
    }

    /// container.proto `Start.id`.
    pub fn container_start_id(b: &[u8]) -> Option<String> {
        fields(b)?.into_iter().find_map(|(n, v)| match (n, v) {
            (2, Val::Bytes(s)) => Some(string(s)),
            _ => None,
        })
    }

    /// sentry.proto `CloneInfo`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct CloneInfo {
        pub ctx: Context,
        pub created_tid: i32,
        pub created_tgid: i32,
        pub flags: u64,
    }

    pub fn clone_info(b: &[u8]) -> Option<CloneInfo> {
        let mut c = CloneInfo::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Val::Bytes(x)) => c.ctx = context(x)?,
                (3, Val::Varint(x)) => c.created_tid = x as i32,
                (4, Val::Varint(x)) => c.created_tgid = x as i32,
                (6, Val::Varint(x)) => c.flags = x,
                _ => {}
            }
        }
        (c.created_tgid > 0).then_some(c)
    }

    /// syscall.proto `Execve` (execve and execveat).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Execve {
        pub ctx: Context,
        pub sysno: u64,
        pub fd_path: String,
        pub pathname: String,
        pub argv: Vec<String>,
    }

    pub fn execve(b: &[u8]) -> Option<Execve> {
        let mut x = Execve::default();
        let mut args = 0usize;
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Val::Bytes(c)) => x.ctx = context(c)?,
                (3, Val::Varint(s)) => x.sysno = s,
                (5, Val::Bytes(s)) => x.fd_path = string(s),
                (6, Val::Bytes(s)) => x.pathname = string(s),
                (7, Val::Bytes(s)) => {
                    args += 1;
                    if args <= MAX_ARGS {
                        x.argv.push(string(s));
                    } else if args == MAX_ARGS + 1 {
                        x.argv.push("[brig: more arguments not captured]".into());
                    }
                }
                _ => {}
            }
        }
        (x.ctx.tgid > 0).then_some(x)
    }

    /// sentry.proto `ExitNotifyParentInfo`.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct ExitNotify {
        pub ctx: Context,
        pub status: i32,
    }

    pub fn exit_notify(b: &[u8]) -> Option<ExitNotify> {
        let mut x = ExitNotify::default();
        for (n, v) in fields(b)? {
            match (n, v) {
                (1, Val::Bytes(c)) => x.ctx = context(c)?,
                (2, Val::Varint(s)) => x.status = s as i32,
                _ => {}
            }
        }
        (x.ctx.tgid > 0).then_some(x)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn varints_strings_and_malformed_input() {
            assert_eq!(handshake(1), vec![0x08, 0x01]);
            assert_eq!(handshake(300), vec![0x08, 0xac, 0x02]);
            assert_eq!(handshake_version(&handshake(300)), Some(300));
            assert_eq!(handshake_version(&[]), Some(0));
            // A length past the end, an unterminated varint, a bad wire type.
            assert_eq!(handshake_version(&[0x12, 0x05, 0x61]), None);
            assert_eq!(handshake_version(&[0x08, 0xff]), None);
            assert_eq!(handshake_version(&[0x0b]), None);
            assert_eq!(execve(&[0x0a, 0x03, 0x20]), None);
            let long = vec![b'a'; MAX_STR + 10];
            let s = string(&long);
            assert!(s.ends_with("[brig: truncated]") && s.len() == MAX_STR + 17);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as the real runsc (Debian's 0.0~20221219.0) sent them with
    /// brig's pod init config, for a container (`gvtrace`, uid 1000, cwd
    /// /tmp) whose init shell ran `/bin/sh -c "$0"; sleep 0.5` with `$0` =
    /// `ls /tmp; /bin/false; (exit 3) & wait; setsid sh -c "sleep 0.1; exit 5" &
    /// python3 -c "...subprocess.run([\"/bin/echo\",\"hidden\"])"; kill -9 $$`;
    /// `[u32 LE length][message]` each.
    const CAPTURED: &[u8] = include_bytes!("testdata/gvisor_trace.bin");

    fn messages(mut b: &[u8]) -> Vec<&[u8]> {
        let mut out = vec![];
        while b.len() >= 4 {
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            out.push(&b[4..4 + n]);
            b = &b[4 + n..];
        }
        out
    }

    #[test]
    fn pod_init_config_names_the_socket_and_the_points() {
        let c = pod_init_config(Path::new("/d/trace.sock"));
        let s = &c["trace_session"];
        assert_eq!(s["sinks"][0]["name"], "remote");
        assert_eq!(s["sinks"][0]["config"]["endpoint"], "/d/trace.sock");
        let points: Vec<&str> = s["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for p in [
            "container/start",
            "sentry/clone",
            "syscall/execve/enter",
            "syscall/execveat/enter",
            "sentry/exit_notify_parent",
        ] {
            assert!(points.contains(&p), "{p}");
        }
    }

    #[test]
    fn wait_statuses() {
        assert_eq!(wait_status(0), (Some(0), None));
        assert_eq!(wait_status(3 << 8), (Some(3), None));
        assert_eq!(wait_status(9), (None, Some(9)));
        assert_eq!(wait_status(0x80 | 11), (None, Some(11)));
    }

    #[test]
    fn headers() {
        assert_eq!(header(&[8, 0, 11, 0, 2, 0, 0, 0]), Some((8, 11, 2)));
        assert_eq!(header(&[8, 0, 11, 0]), None);
        assert_eq!(header(&[9, 0, 11, 0, 0, 0, 0, 0]), None);
        // A dropped count arriving in a header is reported once, as a delta.
        let mut t = Tracker::default();
        assert_eq!(t.message(&[8, 0, 99, 0, 2, 0, 0, 0]).dropped, 2);
        assert_eq!(t.message(&[8, 0, 99, 0, 2, 0, 0, 0]).dropped, 0);
        assert_eq!(t.message(&[8, 0, 99, 0, 5, 0, 0, 0]).dropped, 3);
        assert_eq!(t.message(&[8, 0, 99]).dropped, 1);
    }

    #[test]
    fn decodes_what_the_real_runsc_sent() {
        let msgs = messages(CAPTURED);
        assert!(msgs.len() > 10, "{}", msgs.len());
        let mut t = Tracker::default();
        let (mut execs, mut exits, mut started) = (vec![], vec![], vec![]);
        for m in &msgs {
            let out = t.message(m);
            assert_eq!(out.dropped, 0);
            started.extend(out.started);
            for e in out.events {
                match e {
                    ProcessEvent::Exec(x) => execs.push(x),
                    ProcessEvent::Exit(x) => exits.push(x),
                    ProcessEvent::Overflow { .. } => unreachable!(),
                }
            }
        }
        assert_eq!(started, vec!["gvtrace".to_string()]);
        let find = |argv: &[&str]| {
            execs
                .iter()
                .find(|x| x.argv == argv)
                .unwrap_or_else(|| panic!("no exec of {argv:?} in {execs:#?}"))
                .clone()
        };
        let exit_of = |pid: i32| {
            exits
                .iter()
                .find(|x| x.pid == pid)
                .unwrap_or_else(|| panic!("no exit of {pid} in {exits:#?}"))
                .clone()
        };
        let sh = execs
            .iter()
            .find(|x| x.argv.first().map(String::as_str) == Some("/bin/sh"))
            .expect("the shell")
            .clone();
        assert_eq!((sh.ppid, sh.path.as_str()), (1, "/bin/sh"), "{sh:?}");
        // `ls` fails under this gVisor (its statx is refused): exit code 2.
        let ls = find(&["ls", "/tmp"]);
        assert_eq!(ls.ppid, sh.pid, "{ls:?}");
        assert_eq!(ls.uid, 1000);
        assert_eq!(ls.cwd, "/tmp");
        assert_eq!(ls.path, "/usr/bin/ls");
        assert!(ls.time.starts_with("20"), "{}", ls.time);
        assert_eq!(exit_of(ls.pid).code, Some(2));
        // Reaped by its own parent (the shell), exit code still recorded.
        let f = find(&["/bin/false"]);
        assert_eq!(
            (exit_of(f.pid).code, f.path.as_str()),
            (Some(1), "/bin/false")
        );
        // A detached job: its parent is gone before it ends.
        let job = find(&["sh", "-c", "sleep 0.1; exit 5"]);
        assert_eq!(exit_of(job.pid).code, Some(5));
        let sleep = find(&["sleep", "0.1"]);
        assert_eq!(sleep.ppid, job.pid);
        // A binary started by a program.
        let py = execs
            .iter()
            .find(|x| x.argv.first().map(String::as_str) == Some("python3"))
            .expect("python3");
        let echo = find(&["/bin/echo", "hidden"]);
        assert_eq!(echo.ppid, py.pid);
        assert_eq!(exit_of(echo.pid).code, Some(0));
        // The shell killed itself.
        let e = exit_of(sh.pid);
        assert_eq!((e.code, e.signal), (None, Some(9)), "{e:?}");
        // The fork that never exec'd has no exit of its own.
        assert!(exits.iter().all(|x| execs.iter().any(|e| e.pid == x.pid)));
    }

    /// A stand-in for runsc's end: connect, handshake, send `msgs`.
    fn fake_sentry(
        path: &Path,
        hello: &[u8],
        msgs: Vec<Vec<u8>>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        let path = path.to_path_buf();
        let hello = hello.to_vec();
        std::thread::spawn(move || {
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) };
            assert!(fd >= 0);
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr
                .sun_path
                .iter_mut()
                .zip(path.as_os_str().as_encoded_bytes())
            {
                *d = *s as libc::c_char;
            }
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            let send = |b: &[u8]| unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    b.as_ptr().cast(),
                    b.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            send(&hello);
            let mut reply = vec![0u8; 64];
            let n = unsafe { libc::recv(fd.as_raw_fd(), reply.as_mut_ptr().cast(), 64, 0) };
            reply.truncate(n.max(0) as usize);
            for m in msgs {
                assert_eq!(send(&m), m.len() as isize);
            }
            reply
        })
    }

    #[tokio::test]
    async fn socket_handshake_and_stream_into_the_process_queue() {
        let dir = tempfile::tempdir().unwrap();
        let sock = TraceSocket::listen(dir.path()).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(CONFIG)).unwrap()).unwrap();
        let endpoint = dir.path().join(SOCKET);
        assert_eq!(
            config["trace_session"]["sinks"][0]["config"]["endpoint"],
            endpoint.to_str().unwrap()
        );
        assert_eq!(
            sock.runsc_flag(),
            format!("--pod-init-config={}", dir.path().join(CONFIG).display())
        );
        let msgs: Vec<Vec<u8>> = messages(CAPTURED).into_iter().map(<[u8]>::to_vec).collect();
        let peer = fake_sentry(&endpoint, &pb::handshake(1), msgs);
        let conn = sock.accept(Duration::from_secs(5)).await.unwrap();
        assert_eq!(conn.version(), 1);
        // Connected: the socket file is gone, nobody else can connect.
        assert!(!endpoint.exists());
        assert_eq!(peer.join().unwrap(), pb::handshake(PROTOCOL_VERSION));

        let (to_init, _a) = tokio::io::duplex(64);
        let (_b, from_init) = tokio::io::duplex(64);
        let (channel, producer) = crate::channel::Channel::with_producer(to_init, from_init);
        let started = conn.start("gvtrace".into(), producer);
        tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .unwrap()
            .unwrap();
        let mut events = channel.process_events().unwrap();
        let mut execs = 0;
        let mut exits = 0;
        // The peer is gone: the stream ends once init's side ends too.
        drop(_b);
        while let Some(e) = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
        {
            match e {
                ProcessEvent::Exec(_) => execs += 1,
                ProcessEvent::Exit(_) => exits += 1,
                ProcessEvent::Overflow { dropped } => panic!("dropped {dropped}"),
            }
        }
        assert!(execs >= 8 && exits >= 6, "{execs} execs, {exits} exits");
    }

    #[tokio::test]
    async fn no_peer_or_a_bad_handshake_names_the_capture_layer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = TraceSocket::listen(dir.path()).unwrap();
        let e = sock.accept(Duration::from_millis(100)).await.err().unwrap();
        assert_eq!(e.kind, brig_core::ErrorKind::GuardUnavailable);
        assert!(
            e.message.contains("'capture'") && e.message.contains("did not connect"),
            "{e}"
        );

        let sock = TraceSocket::listen(dir.path()).unwrap();
        let peer = fake_sentry(&dir.path().join(SOCKET), &[0xff], vec![]);
        let e = sock.accept(Duration::from_secs(5)).await.err().unwrap();
        assert!(
            e.message.contains("'capture'") && e.message.contains("Handshake"),
            "{e}"
        );
        peer.join().unwrap();

        let long = dir.path().join("x".repeat(120));
        std::fs::create_dir(&long).unwrap();
        let e = TraceSocket::listen(&long).err().unwrap();
        assert!(
            e.message.contains("'capture'") && e.message.contains("longer"),
            "{e}"
        );
    }

    /// After a lost point, the exit of a process not seen exec (its exec
    /// may be what was lost) is journaled too.
    #[test]
    fn a_lost_point_keeps_the_exits_of_live_processes() {
        let mut t = Tracker::default();
        let ctx = |tgid| pb::Context {
            tgid,
            tid: tgid,
            ..Default::default()
        };
        let clone = |parent, child| pb::CloneInfo {
            ctx: ctx(parent),
            created_tid: child,
            created_tgid: child,
            flags: 0,
        };
        let exit = |tgid| pb::ExitNotify {
            ctx: ctx(tgid),
            status: 0,
        };
        t.clone(clone(1, 2));
        assert!(t.exit(exit(2)).is_none(), "a fork that never exec'd");
        t.clone(clone(1, 3));
        t.clone(clone(1, 4));
        // An exit point whose header says one point was dropped before it.
        let mut msg = vec![8, 0, MSG_SENTRY_EXIT_NOTIFY_PARENT as u8, 0, 1, 0, 0, 0];
        msg.extend([0x0a, 0x02, 0x20, 0x03]); // context_data { thread_group_id: 3 }
        let out = t.message(&msg);
        assert_eq!(out.dropped, 1);
        match &out.events[..] {
            [ProcessEvent::Exit(x)] => assert_eq!((x.pid, x.code), (3, Some(0))),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.exit(exit(4)).map(|x| x.pid), Some(4));
        // Cloned after the loss: certain again.
        t.clone(clone(1, 5));
        assert!(t.exit(exit(5)).is_none());
        // Never seen at all, once lossy: reported.
        assert_eq!(t.exit(exit(77)).map(|x| x.pid), Some(77));
    }

    #[test]
    fn clones_threads_and_reparenting() {
        let mut t = Tracker::default();
        let ctx = |tgid| pb::Context {
            tgid,
            tid: tgid,
            ..Default::default()
        };
        let clone = |parent, child, flags| pb::CloneInfo {
            ctx: ctx(parent),
            created_tid: child,
            created_tgid: child,
            flags,
        };
        t.clone(clone(1, 2, 0));
        t.clone(clone(2, 3, 0));
        // A thread is no new process; CLONE_PARENT makes a sibling.
        t.clone(pb::CloneInfo {
            created_tgid: 2,
            created_tid: 9,
            ..clone(2, 9, CLONE_THREAD)
        });
        t.clone(clone(3, 4, CLONE_PARENT));
        assert_eq!(t.procs.len(), 3);
        assert_eq!(t.procs[&4].ppid, 2);
        let exec = |tgid| pb::Execve {
            ctx: ctx(tgid),
            pathname: "/bin/true".into(),
            argv: vec!["true".into()],
            ..Default::default()
        };
        assert_eq!(t.exec(exec(3)).ppid, 2);
        // 2 exits without having exec'd: no event, its children go to init.
        assert!(t
            .exit(pb::ExitNotify {
                ctx: ctx(2),
                status: 0
            })
            .is_none());
        assert_eq!(t.exec(exec(4)).ppid, 1);
        let e = t
            .exit(pb::ExitNotify {
                ctx: ctx(3),
                status: 7 << 8,
            })
            .unwrap();
        assert_eq!((e.pid, e.code), (3, Some(7)));
        assert!(!t.procs.contains_key(&3));
    }
}
