//! `brig sandbox-init`: pid 1 of every sandbox.
//!
//! The runtime has already built the namespaces, root filesystem, cgroups
//! and unprivileged user, dropped every capability and set no_new_privs.
//! Init then:
//! 1. makes itself non-dumpable (so the sandbox's own user cannot open
//!    /proc/1/fd and take over the control pipes), a child subreaper, and
//!    sets no_new_privs itself as well;
//! 2. applies Landlock ([`crate::landlock`]) and brig's seccomp allow-list
//!    ([`crate::seccomp`]) to itself, so every process it starts inherits them;
//!    then, if asked (`capture`), the exec notification filter
//!    ([`crate::capture`]) whose listener it serves in its loop: every exec
//!    in the sandbox is reported as a `Process` frame, and every such
//!    process's end (whoever reaps it) as `ProcessExit`;
//! 3. on any failure writes one `Fatal` frame naming the layer and exits 1:
//!    it never serves with a weaker guard;
//! 4. starts the egress forwarder ([`crate::forwarder`]) if asked and waits
//!    until it listens (else `Fatal`, layer `egress`); it restarts it
//!    whenever it dies;
//! 5. writes `Ready` and serves [`brig_core::wire`] on fd 0 (host → init) and
//!    fd 1 (init → host) from a single-threaded poll loop.
//!
//! When fd 0 reaches EOF (brig went away) or fd 1 cannot be written, init
//! kills everything it started and exits: as pid 1 of the sandbox's pid
//! namespace its exit takes every process with it, so no sandbox outlives brig.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use brig_core::wire::{self, Frame, Kind};
use serde::{Deserialize, Serialize};

/// Passed as the single argument after `sandbox-init` (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitConfig {
    /// Paths the sandbox may write (Landlock): /workspace, /tmp, /dev/null...
    /// A PTY needs /dev/ptmx and /dev/pts here too.
    pub rw_paths: Vec<String>,
    /// Whether Landlock is required (native, oci) or not applicable (gvisor,
    /// whose own kernel is the boundary).
    pub landlock: bool,
    /// Whether init installs brig's seccomp allow-list on itself.
    pub seccomp: bool,
    /// RLIMIT_NPROC to set on itself (so on every descendant). Only for
    /// runtimes with their own kernel (gVisor), where the count is per
    /// sandbox; set in the OCI spec instead, runsc would also apply it to the
    /// Sentry's host process and starve it of threads.
    #[serde(default)]
    pub nproc: Option<u64>,
    /// Record every exec in the sandbox ([`crate::capture`]): a seccomp
    /// user-notification filter init installs after the allow-list. Not for
    /// gVisor, which does not implement seccomp user notification.
    #[serde(default)]
    pub capture: bool,
    /// With `capture`: an exec whose command line holds one of these words
    /// (of the sensitive command patterns) waits in the kernel until the
    /// host decides it ([`crate::capture::Capture::answer`]).
    #[serde(default)]
    pub hold_words: Vec<String>,
    /// The egress forwarder ([`crate::forwarder`]) init starts (and waits
    /// for) before `Ready` and restarts whenever it dies; commands then get the proxy
    /// environment ([`crate::egress::exec_env`]) unless they set it.
    #[serde(default)]
    pub egress: Option<crate::egress::ForwarderConfig>,
}

/// Switches read from the same JSON for tests and measurements only (brig
/// never sets them).
#[derive(Default, Deserialize)]
struct TestSwitches {
    /// With `capture`: serve the listener from init's loop even where a
    /// supervisor could ([`crate::capture::supervisor`]): the path init
    /// falls back to under Yama.
    #[serde(default)]
    capture_in_init: bool,
}

/// How long init keeps reading a command's output after its main process
/// exited, when a background child still holds the pipes open.
const LINGER: Duration = Duration::from_millis(100);

/// Longest a process frame waits in init before going to the host (and,
/// supervised, the least time between two reads of the supervisor's
/// records): every wake-up of init wakes the host too, and on a VM each
/// costs tens of microseconds of both CPUs, so a burst of execs is carried
/// in a few large writes. Any other frame takes the held ones along.
const PROCESS_HOLD: Duration = Duration::from_millis(25);
/// Held process frames are written once they reach this size.
const HOLD_BYTES: usize = 32 * 1024;

/// Least time between two wake-ups of init for exits alone.
const EXIT_COALESCE: Duration = Duration::from_millis(20);

/// [`spawn_command`]'s error when the host pipe broke (as opposed to the
/// command failing to start), which ends init.
const HOST_WRITE_FAILED: &str = "writing to brig failed";
/// [`spawn_command`]'s error when the capture supervisor died: nothing
/// answers execs any more, which ends init too.
const CAPTURE_LOST: &str =
    "the capture supervisor exited: no exec can be recorded any more, so the sandbox stops";

/// PATH used when the command's environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// First and longest wait before init restarts a dead forwarder; a
/// forwarder that lived [`FORWARDER_STABLE`] restarts after the first again.
const FORWARDER_BACKOFF: Duration = Duration::from_millis(20);
const FORWARDER_BACKOFF_MAX: Duration = Duration::from_secs(2);
const FORWARDER_STABLE: Duration = Duration::from_secs(10);
/// How long the first forwarder may take to bind its listeners.
const FORWARDER_READY: Duration = Duration::from_secs(10);

/// The egress forwarder as init keeps it alive.
struct Forwarder {
    spawn: wire::Spawn,
    /// Defaults added to every command's environment.
    env: Vec<(String, String)>,
    pid: Option<i32>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

impl Forwarder {
    /// Try again after the current back-off, and double it for next time.
    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(FORWARDER_BACKOFF_MAX);
    }
}

/// Entry point of `brig sandbox-init <json>`; never returns.
pub fn main(config_json: &str) -> ! {
    if config_json == crate::initfs::PRINT_LIBS {
        crate::initfs::print_libs();
    }
    let mut out = HostOut::new(1);
    let (mut layers, mut capture, egress) = match setup(config_json) {
        Ok(l) => l,
        Err(failed) => {
            let _ = out.send(&Frame::json(Kind::Fatal, 0, &failed));
            std::process::exit(1);
        }
    };
    out.records = capture.as_ref().and_then(|c| c.records_fd());
    let sigfd = match signal_fd() {
        Ok(fd) => fd,
        Err(e) => {
            let _ = out.send(&Frame::json(Kind::Fatal, 0, &failed("init", e)));
            std::process::exit(1);
        }
    };
    let mut forwarder = egress.map(|c| Forwarder {
        spawn: wire::Spawn {
            argv: c.args(),
            env: vec![],
            cwd: "/".into(),
            tty: None,
            decided: false,
        },
        env: crate::egress::exec_env(),
        pid: None,
        started: Instant::now(),
        backoff: FORWARDER_BACKOFF,
        restart_at: None,
    });
    // The way out is up before the sandbox is ready: the first forwarder
    // must report its listeners, or the session does not start.
    if let Some(f) = forwarder.as_mut() {
        match first_forwarder(f, capture.as_mut(), &out) {
            Ok(()) => layers.push(crate::egress::LAYER_FORWARDER.to_string()),
            Err(e) => {
                let _ = out.send(&Frame::json(Kind::Fatal, 0, &failed("egress", e)));
                std::process::exit(1);
            }
        }
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let ready = wire::Ready { layers, uid, gid };
    if out.send(&Frame::json(Kind::Ready, 0, &ready)).is_err() {
        std::process::exit(1);
    }
    let mut init = Init {
        out,
        sigfd,
        decoder: wire::Decoder::new(),
        execs: HashMap::new(),
        capture,
        exits_taken: Instant::now(),
        records_taken: Instant::now(),
        forwarder,
    };
    let code = init.serve();
    let _ = init.out.flush();
    init.kill_everything(libc::SIGKILL);
    std::process::exit(code)
}

/// Start the forwarder for the first time and wait (at most
/// [`FORWARDER_READY`]) for the byte it writes on its stdout once every
/// listener is bound.
fn first_forwarder(
    f: &mut Forwarder,
    capture: Option<&mut crate::capture::Capture>,
    out: &HostOut,
) -> Result<(), String> {
    let exec = spawn_command(&f.spawn, capture, out)
        .map_err(|e| format!("starting the forwarder: {e}"))?;
    f.pid = Some(exec.pid);
    f.started = Instant::now();
    let Some(fd) = exec.out.as_ref().map(|o| o.as_raw_fd()) else {
        return Err("the forwarder has no stdout".into());
    };
    let deadline = Instant::now() + FORWARDER_READY;
    let mut b = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the forwarder did not report its listeners within {} s",
                FORWARDER_READY.as_secs()
            ));
        }
        let mut pfd = [pollfd(fd, libc::POLLIN)];
        // SAFETY: a valid array of one pollfd.
        unsafe { libc::poll(pfd.as_mut_ptr(), 1, left.as_millis() as i32 + 1) };
        match read_fd(fd, &mut b) {
            ReadResult::Data(_) if b[0] == b'R' => return Ok(()),
            ReadResult::Data(_) => return Err("the forwarder wrote garbage".into()),
            ReadResult::Eof => {
                return Err(
                    "the forwarder exited before listening (its ports could not be bound)".into(),
                )
            }
            ReadResult::Again => {}
        }
    }
}

fn failed(layer: &str, error: impl std::fmt::Display) -> wire::Failed {
    wire::Failed {
        layer: layer.to_string(),
        error: error.to_string(),
    }
}

/// The guards in force, the capture if asked, and the forwarder to start.
type Setup = (
    Vec<String>,
    Option<crate::capture::Capture>,
    Option<crate::egress::ForwarderConfig>,
);

/// Steps 1-2: every guard, in order; the first failure names its layer.
fn setup(config_json: &str) -> Result<Setup, wire::Failed> {
    let config: InitConfig = serde_json::from_str(config_json)
        .map_err(|e| failed("config", format!("bad sandbox-init configuration: {e}")))?;
    // A closed fd 2 would be reused by the first pipe and then lost in the
    // child's dup2 dance: park /dev/null there.
    // SAFETY: fcntl/open/dup2 on descriptor numbers; errors are reported.
    unsafe {
        if libc::fcntl(2, libc::F_GETFD) < 0 {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null < 0 || (null != 2 && libc::dup2(null, 2) < 0) {
                return Err(failed(
                    "init",
                    format!(
                        "fd 2 is closed and /dev/null cannot replace it: {}",
                        std::io::Error::last_os_error()
                    ),
                ));
            }
            if null != 2 {
                libc::close(null);
            }
        }
    }
    // The host's ends may be non-blocking; init's are used blocking.
    for fd in [0, 1] {
        set_nonblocking(fd, false).map_err(|e| failed("init", format!("fd {fd}: {e}")))?;
    }
    let mut layers = Vec::new();
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(|e| failed("no_new_privs", e))?;
    layers.push("no_new_privs".to_string());
    prctl(libc::PR_SET_DUMPABLE, 0).map_err(|e| failed("nondumpable", e))?;
    layers.push("nondumpable".to_string());
    // Outside a pid namespace (tests), orphans must still come back to init
    // so it can reap and, at the end, kill them.
    prctl(libc::PR_SET_CHILD_SUBREAPER, 1)
        .map_err(|e| failed("init", format!("PR_SET_CHILD_SUBREAPER: {e}")))?;
    if let Some(n) = config.nproc {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &lim) } != 0 {
            return Err(failed("nproc", std::io::Error::last_os_error()));
        }
        layers.push(format!("nproc:{n}"));
    }
    if config.landlock {
        layers.push(crate::landlock::apply(&config.rw_paths).map_err(|e| failed("landlock", e))?);
    }
    if config.seccomp {
        layers.push(
            crate::seccomp::apply()
                .map_err(|e| failed("seccomp", e))?
                .to_string(),
        );
    }
    // Last: once it is in, every exec waits for init's answer.
    let capture = if config.capture {
        let mut c = crate::capture::Capture::install(config.hold_words.clone())
            .map_err(|e| failed("capture", e))?;
        layers.push(crate::capture::LAYER.to_string());
        if !config.hold_words.is_empty() {
            layers.push(crate::capture::HOLD_LAYER.to_string());
        }
        // Before anything else runs: the supervisor must be the listener's
        // only receiver from the first exec on.
        let switches: TestSwitches = serde_json::from_str(config_json).unwrap_or_default();
        let supervised =
            !switches.capture_in_init && c.start_supervisor().map_err(|e| failed("capture", e))?;
        layers.push(
            if supervised {
                crate::capture::SUPERVISOR_LAYER
            } else {
                crate::capture::IN_INIT_LAYER
            }
            .to_string(),
        );
        Some(c)
    } else {
        None
    };
    Ok((layers, capture, config.egress))
}

fn prctl(option: libc::c_int, value: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: plain integer prctl options.
    if unsafe { libc::prctl(option, value, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; errors are reported.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if new != flags && libc::fcntl(fd, libc::F_SETFL, new) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signals init handles, all through one signalfd (no async handlers).
fn handled_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn signal_fd() -> Result<OwnedFd, String> {
    let set = handled_signals();
    // SAFETY: blocking signals and creating a signalfd for them.
    unsafe {
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "blocking signals: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The bare message of an errno ("No such file or directory").
fn strerror(e: i32) -> String {
    // SAFETY: init is single-threaded; strerror's buffer is read at once.
    unsafe { CStr::from_ptr(libc::strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

/// Writer of frames to the host (fd 1, blocking).
struct HostOut {
    fd: RawFd,
    /// Process frames wait here (at most PROCESS_HOLD, or until any other
    /// frame goes out, which they precede) so that a burst of execs costs
    /// the host one wake-up instead of one per process.
    held: std::cell::RefCell<Vec<u8>>,
    held_since: std::cell::Cell<Option<Instant>>,
    /// The capture supervisor's pipe of encoded process frames, and what
    /// was read of it short of a whole frame.
    records: Option<RawFd>,
    partial: std::cell::RefCell<Vec<u8>>,
}

impl HostOut {
    fn new(fd: RawFd) -> HostOut {
        HostOut {
            fd,
            held: Default::default(),
            held_since: Default::default(),
            records: None,
            partial: Default::default(),
        }
    }

    /// Move the supervisor's whole frames into `held`: they precede
    /// whatever init sends next.
    /// Whether anything was read.
    fn take_records(&self) -> bool {
        let Some(fd) = self.records else { return false };
        let mut partial = self.partial.borrow_mut();
        let mut chunk = [0u8; 16 * 1024];
        let mut took = false;
        // Until EAGAIN; at EOF the supervisor is gone, and its pidfd tells init.
        while let ReadResult::Data(n) = read_fd(fd, &mut chunk) {
            partial.extend_from_slice(&chunk[..n]);
            took = true;
        }
        let whole = crate::capture::supervisor::whole_frames(&partial);
        if whole > 0 {
            self.held.borrow_mut().extend(partial.drain(..whole));
        }
        took
    }

    fn send(&self, frame: &Frame) -> Result<(), ()> {
        self.flush()?;
        write_all(self.fd, &frame.encode())
    }

    /// Queue a frame that may wait a moment (process events).
    fn hold(&self, frame: &Frame) -> Result<(), ()> {
        let full = {
            let mut held = self.held.borrow_mut();
            held.extend_from_slice(&frame.encode());
            held.len() >= HOLD_BYTES
        };
        if self.held_since.get().is_none() {
            self.held_since.set(Some(Instant::now()));
        }
        if full {
            return self.flush();
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), ()> {
        self.take_records();
        self.held_since.set(None);
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if held.is_empty() {
            return Ok(());
        }
        write_all(self.fd, &held)
    }

    /// When held frames must go out.
    fn flush_due(&self) -> Option<Instant> {
        self.held_since.get().map(|t| t + PROCESS_HOLD)
    }
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), ()> {
    while !buf.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

enum ReadResult {
    Data(usize),
    Eof,
    Again,
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> ReadResult {
    loop {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return ReadResult::Data(n as usize);
        }
        if n == 0 {
            return ReadResult::Eof;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return ReadResult::Again,
            // EIO: a PTY master whose every slave is closed. Anything else
            // is treated the same: the stream is over.
            _ => return ReadResult::Eof,
        }
    }
}

/// One command started by `Spawn`.
struct Exec {
    pid: i32,
    /// Where `Stdin` goes: the stdin pipe, or (for a PTY) a dup of the master.
    input: Option<OwnedFd>,
    in_buf: Vec<u8>,
    /// `StdinEof` arrived: close `input` once `in_buf` is written.
    in_eof: bool,
    /// stdout pipe, or the PTY master.
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    tty: bool,
    status: Option<wire::Exited>,
    /// When to stop waiting for the output pipes after the main process exited.
    deadline: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Slot {
    Out,
    Err,
    In,
}

enum Stop {
    /// fd 0 reached EOF or a termination signal arrived: a normal end.
    HostGone,
    /// The host stream is corrupt or fd 1 failed.
    Broken,
}

struct Init {
    out: HostOut,
    sigfd: OwnedFd,
    decoder: wire::Decoder,
    execs: HashMap<u32, Exec>,
    capture: Option<crate::capture::Capture>,
    /// When exits were last taken from the capture (see EXIT_COALESCE).
    exits_taken: Instant,
    /// When the supervisor's records were last taken (see PROCESS_HOLD).
    records_taken: Instant,
    forwarder: Option<Forwarder>,
}

impl Init {
    fn serve(&mut self) -> i32 {
        match self.run() {
            Stop::HostGone => 0,
            Stop::Broken => 1,
        }
    }

    fn run(&mut self) -> Stop {
        let mut buf = vec![0u8; wire::MAX_PAYLOAD];
        loop {
            if self.start_forwarder().is_err() {
                return Stop::Broken;
            }
            let mut pfds = vec![
                pollfd(0, libc::POLLIN),
                pollfd(self.sigfd.as_raw_fd(), libc::POLLIN),
            ];
            let mut slots: Vec<(u32, Slot)> = Vec::new();
            for (&chan, e) in &self.execs {
                if let Some(fd) = &e.out {
                    pfds.push(pollfd(fd.as_raw_fd(), libc::POLLIN));
                    slots.push((chan, Slot::Out));
                }
                if let Some(fd) = &e.err {
                    pfds.push(pollfd(fd.as_raw_fd(), libc::POLLIN));
                    slots.push((chan, Slot::Err));
                }
                if let Some(fd) = &e.input {
                    if !e.in_buf.is_empty() {
                        pfds.push(pollfd(fd.as_raw_fd(), libc::POLLOUT));
                        slots.push((chan, Slot::In));
                    }
                }
            }
            // Serving in init, exits are taken at every exec anyway; on
            // their own they wake init at most once per EXIT_COALESCE (until
            // then the exits fd is not polled, only its due time), so a
            // burst of short processes costs one wake-up, not one each.
            // Supervised, the supervisor's records are taken the same way,
            // at most once per PROCESS_HOLD.
            let now = Instant::now();
            let exits_due = self.exits_taken + EXIT_COALESCE;
            let watch_exits = now >= exits_due;
            let records_due = self.records_taken + PROCESS_HOLD;
            let watch_records = now >= records_due;
            let cap = self.capture.as_ref();
            let mut add = |fd: Option<RawFd>, on: bool| {
                fd.filter(|_| on).map(|fd| {
                    pfds.push(pollfd(fd, libc::POLLIN));
                    pfds.len() - 1
                })
            };
            let listener_at = add(cap.and_then(|c| c.listener_fd()), true);
            let exits_at = add(cap.and_then(|c| c.exits_fd()), watch_exits);
            let holds_at = add(cap.and_then(|c| c.holds_fd()), true);
            let records_at = add(cap.and_then(|c| c.records_fd()), watch_records);
            let sup_at = add(cap.and_then(|c| c.supervisor_fd()), true);
            let in_init = cap.is_some_and(|c| c.exits_fd().is_some());
            let supervised = cap.is_some_and(|c| c.records_fd().is_some());
            let deadlines = self.execs.values().filter_map(|e| e.deadline);
            let deadlines = deadlines
                .chain((in_init && !watch_exits).then_some(exits_due))
                .chain((supervised && !watch_records).then_some(records_due))
                .chain(self.out.flush_due())
                .chain(self.forwarder.as_ref().and_then(|f| f.restart_at));
            let timeout = deadlines
                .min()
                .map(|d| {
                    d.saturating_duration_since(Instant::now())
                        .as_millis()
                        .min(60_000) as i32
                        + 1
                })
                .unwrap_or(-1);
            // SAFETY: pfds is a valid array of pollfd.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
            if n < 0 && errno() != libc::EINTR {
                return Stop::Broken;
            }
            if self.out.flush_due().is_some_and(|d| Instant::now() >= d)
                && self.out.flush().is_err()
            {
                return Stop::Broken;
            }
            let ready = |at: Option<usize>| n > 0 && at.is_some_and(|i| pfds[i].revents != 0);
            if ready(sup_at) {
                self.capture_lost();
                return Stop::Broken;
            }
            if supervised
                && (ready(records_at) || (!watch_records && Instant::now() >= records_due))
            {
                // Only records actually taken start a new hold: a hold that
                // ran out on an empty pipe leaves the pipe watched, so an
                // idle sandbox sleeps instead of waking every PROCESS_HOLD.
                if self.out.take_records() || ready(records_at) {
                    self.records_taken = Instant::now();
                }
                if self.out.flush().is_err() {
                    return Stop::Broken;
                }
            }
            if n > 0 {
                // Execs first: every process of the sandbox waits on them.
                if ready(listener_at) && self.on_capture().is_err() {
                    return Stop::Broken;
                }
                if ready(holds_at) {
                    match self.capture.as_mut().map(|c| serve_holds(c, &self.out)) {
                        Some(Err(HoldsError::Host)) => return Stop::Broken,
                        Some(Err(HoldsError::Lost)) => {
                            self.capture_lost();
                            return Stop::Broken;
                        }
                        _ => {}
                    }
                }
                if ready(exits_at) && self.on_exits().is_err() {
                    return Stop::Broken;
                }
                if pfds[1].revents != 0 {
                    if let Some(stop) = self.on_signals() {
                        return stop;
                    }
                }
                for (i, &(chan, slot)) in slots.iter().enumerate() {
                    if pfds[i + 2].revents != 0 && self.on_ready(chan, slot, &mut buf).is_err() {
                        return Stop::Broken;
                    }
                }
                if pfds[0].revents != 0 {
                    if let Some(stop) = self.on_host(&mut buf) {
                        return stop;
                    }
                }
            }
            if self.finish_execs(&mut buf).is_err() {
                return Stop::Broken;
            }
        }
    }

    /// Start the forwarder if it is due (never running, or dead and its
    /// back-off over). A failed start is retried later; only a broken host
    /// pipe is an error.
    fn start_forwarder(&mut self) -> Result<(), ()> {
        let Some(f) = self.forwarder.as_mut() else {
            return Ok(());
        };
        if f.pid.is_some() || f.restart_at.is_none_or(|t| Instant::now() < t) {
            return Ok(());
        }
        f.restart_at = None;
        let out = &self.out;
        match spawn_command(&f.spawn, self.capture.as_mut(), out) {
            Ok(exec) => {
                // Its stdio is /dev/null in effect: nothing of it is read.
                f.pid = Some(exec.pid);
                f.started = Instant::now();
                drop(exec);
            }
            Err(e) if e == HOST_WRITE_FAILED => return Err(()),
            Err(e) if e == CAPTURE_LOST => {
                self.capture_lost();
                return Err(());
            }
            Err(_) => f.schedule_restart(),
        }
        Ok(())
    }

    /// SIGCHLD: reap everything (init is every orphan's reaper). TERM, INT,
    /// HUP: pass them on to every command, so a graceful stop reaches them.
    fn on_signals(&mut self) -> Option<Stop> {
        let mut forward = Vec::new();
        loop {
            // SAFETY: reading whole signalfd_siginfo records into a local.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = unsafe {
                libc::read(
                    self.sigfd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                break;
            }
            if info.ssi_signo as i32 != libc::SIGCHLD {
                forward.push(info.ssi_signo as i32);
            }
        }
        for sig in forward {
            self.kill_everything(sig);
        }
        match self.reap() {
            Ok(()) => None,
            Err(()) => Some(Stop::Broken),
        }
    }

    /// A process is waiting in execve: record it and let it go on.
    fn on_capture(&mut self) -> Result<(), ()> {
        if let Some(c) = self.capture.as_mut() {
            send_exec(c, &self.out)?;
        }
        // After the answer, off the caller's path: the exits since the last
        // exec (usually the previous command of the same script).
        self.on_exits()
    }

    /// Processes seen exec were reaped (by init or their own parents).
    fn on_exits(&mut self) -> Result<(), ()> {
        self.exits_taken = Instant::now();
        if let Some(c) = self.capture.as_mut() {
            for exit in c.take_exits() {
                self.out.hold(&Frame::json(Kind::ProcessExit, 0, &exit))?;
            }
        }
        Ok(())
    }

    fn reap(&mut self) -> Result<(), ()> {
        loop {
            let mut st = 0;
            // SAFETY: waitpid on any child, non-blocking.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                // Their exits go out before the commands' `Exited`.
                return self.on_exits();
            }
            let exited = match crate::capture::wait_status(st) {
                (None, None) => continue,
                (code, signal) => wire::Exited { code, signal },
            };
            if let Some(c) = self.capture.as_mut() {
                c.forget(pid);
            }
            if let Some(f) = self.forwarder.as_mut().filter(|f| f.pid == Some(pid)) {
                // Fail closed until it is back: nothing listens meanwhile.
                f.pid = None;
                if f.started.elapsed() >= FORWARDER_STABLE {
                    f.backoff = FORWARDER_BACKOFF;
                }
                f.schedule_restart();
                continue;
            }
            if let Some(e) = self
                .execs
                .values_mut()
                .find(|e| e.pid == pid && e.status.is_none())
            {
                e.status = Some(exited);
                e.deadline = Some(Instant::now() + LINGER);
            }
        }
    }

    /// An output pipe is readable (or hung up), or stdin can take more.
    fn on_ready(&mut self, chan: u32, slot: Slot, buf: &mut [u8]) -> Result<(), ()> {
        let Some(e) = self.execs.get_mut(&chan) else {
            return Ok(());
        };
        match slot {
            Slot::In => {
                flush_input(e);
                Ok(())
            }
            Slot::Out | Slot::Err => {
                let (fd, kind) = match slot {
                    Slot::Out => (&mut e.out, Kind::Stdout),
                    _ => (&mut e.err, Kind::Stderr),
                };
                let Some(raw) = fd.as_ref().map(|f| f.as_raw_fd()) else {
                    return Ok(());
                };
                match read_fd(raw, buf) {
                    ReadResult::Data(n) => {
                        self.out.send(&Frame::new(kind, chan, buf[..n].to_vec()))
                    }
                    ReadResult::Eof => {
                        *fd = None;
                        Ok(())
                    }
                    ReadResult::Again => Ok(()),
                }
            }
        }
    }

    /// Frames from the host.
    fn on_host(&mut self, buf: &mut [u8]) -> Option<Stop> {
        match read_fd(0, buf) {
            ReadResult::Data(n) => self.decoder.feed(&buf[..n]),
            ReadResult::Eof => return Some(Stop::HostGone),
            ReadResult::Again => return None,
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    if self.on_frame(frame).is_err() {
                        return Some(Stop::Broken);
                    }
                }
                Ok(None) => return None,
                // Nothing after a corrupt frame can be trusted: stop.
                Err(_) => return Some(Stop::Broken),
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), ()> {
        let chan = frame.chan;
        match frame.kind {
            Kind::Spawn => {
                let reply = match frame.parse::<wire::Spawn>() {
                    Err(e) => Err(e.to_string()),
                    Ok(_) if self.execs.contains_key(&chan) => {
                        Err(format!("channel {chan} is already in use"))
                    }
                    Ok(mut spawn) => {
                        if let Some(f) = &self.forwarder {
                            for (k, v) in &f.env {
                                if !spawn.env.iter().any(|(have, _)| have == k) {
                                    spawn.env.push((k.clone(), v.clone()));
                                }
                            }
                        }
                        spawn_command(&spawn, self.capture.as_mut(), &self.out).inspect(|e| {
                            if let (true, Some(c)) = (spawn.decided, self.capture.as_mut()) {
                                c.decided.insert(e.pid);
                            }
                        })
                    }
                };
                if reply.as_ref().is_err_and(|e| e == CAPTURE_LOST) {
                    self.capture_lost();
                    return Err(());
                }
                match reply {
                    Ok(exec) => {
                        let pid = exec.pid;
                        self.execs.insert(chan, exec);
                        self.out
                            .send(&Frame::json(Kind::Started, chan, &wire::Started { pid }))?;
                    }
                    Err(error) => {
                        self.out.send(&Frame::json(
                            Kind::SpawnFailed,
                            chan,
                            &failed("spawn", error),
                        ))?;
                    }
                }
            }
            Kind::HoldAnswer => {
                let (Ok(a), Some(c)) = (frame.parse::<wire::HoldAnswer>(), self.capture.as_mut())
                else {
                    return Ok(());
                };
                // Told before the answer: once let go on (or refused) the
                // process may be gone before init could write to it.
                if let (Some(m), Some(pid)) = (&a.message, c.held_pid(a.id)) {
                    tell_stderr(pid, m);
                }
                if let Some((_, Some(exec))) = c.answer(&a) {
                    self.out.hold(&Frame::json(Kind::Process, 0, &exec))?;
                }
            }
            Kind::Stdin => {
                if let Some(e) = self.execs.get_mut(&chan) {
                    if e.input.is_some() && !e.in_eof {
                        e.in_buf.extend_from_slice(&frame.payload);
                        flush_input(e);
                    }
                }
            }
            Kind::StdinEof => {
                if let Some(e) = self.execs.get_mut(&chan) {
                    if e.tty {
                        // A PTY has no EOF of its own: send the EOF character
                        // (^D), as a terminal user would.
                        e.in_buf.push(0x04);
                    } else {
                        e.in_eof = true;
                    }
                    flush_input(e);
                }
            }
            Kind::Signal => {
                if let (Some(e), Ok(msg)) =
                    (self.execs.get(&chan), frame.parse::<wire::SignalMsg>())
                {
                    // SAFETY: signalling the command's own process group.
                    unsafe { libc::kill(-e.pid, msg.signal) };
                }
            }
            Kind::Resize => {
                if let (Some(e), Ok(r)) = (self.execs.get(&chan), frame.parse::<wire::Resize>()) {
                    if let (true, Some(fd)) = (e.tty, &e.input) {
                        set_winsize(fd.as_raw_fd(), r.rows, r.cols);
                    }
                }
            }
            Kind::Ping => {
                let running = self.execs.values().filter(|e| e.status.is_none()).count() as u32;
                // Brig's own helpers are not the sandbox's processes.
                let infra = self.forwarder.as_ref().and_then(|f| f.pid).is_some() as u32
                    + self
                        .capture
                        .as_ref()
                        .and_then(|c| c.supervisor_pid())
                        .is_some() as u32;
                let status = wire::Status {
                    processes: count_processes().saturating_sub(infra),
                    running,
                };
                self.out.send(&Frame::json(Kind::Status, chan, &status))?;
            }
            // Frames only init sends: a confused host; ignore them.
            _ => {}
        }
        Ok(())
    }

    /// Send `Exited` for commands whose main process is reaped and whose
    /// output is at EOF, or whose linger time after exit ran out.
    fn finish_execs(&mut self, buf: &mut [u8]) -> Result<(), ()> {
        let now = Instant::now();
        let done: Vec<u32> = self
            .execs
            .iter()
            .filter(|(_, e)| {
                e.status.is_some()
                    && ((e.out.is_none() && e.err.is_none())
                        || e.deadline.is_some_and(|d| now >= d))
            })
            .map(|(&c, _)| c)
            .collect();
        for chan in done {
            let mut e = self.execs.remove(&chan).expect("listed above");
            // A background job holds the pipes: take what is already there
            // (bounded, as it may keep writing), then let go.
            for (fd, kind) in [(e.out.take(), Kind::Stdout), (e.err.take(), Kind::Stderr)] {
                let Some(fd) = fd else { continue };
                for _ in 0..16 {
                    match read_fd(fd.as_raw_fd(), buf) {
                        ReadResult::Data(n) => {
                            self.out.send(&Frame::new(kind, chan, buf[..n].to_vec()))?
                        }
                        _ => break,
                    }
                }
            }
            let status = e.status.take().expect("filtered on status");
            self.out.send(&Frame::json(Kind::Exited, chan, &status))?;
        }
        Ok(())
    }

    /// The supervisor died: tell brig why the sandbox ends (the caller
    /// then stops init, which kills everything).
    fn capture_lost(&self) {
        let _ = self.out.send(&Frame::json(
            Kind::Fatal,
            0,
            &failed("capture", CAPTURE_LOST),
        ));
    }

    /// Send `sig` to every process init started. As pid 1 of a pid namespace
    /// that is simply everyone else (kill(-1)). Outside one (tests), init is
    /// a child subreaper, so every process it started and every orphan of
    /// theirs is a descendant; those are found in /proc, never by process
    /// group, whose id a host process may have reused by now.
    fn kill_everything(&mut self, sig: i32) {
        // SAFETY: getpid and kill have no memory effects.
        if unsafe { libc::getpid() } == 1 {
            unsafe { libc::kill(-1, sig) };
            return;
        }
        // Repeat for SIGKILL: a process may have forked during a scan.
        let rounds = if sig == libc::SIGKILL { 5 } else { 1 };
        for _ in 0..rounds {
            let live = descendants(true);
            if live.is_empty() {
                break;
            }
            for pid in live {
                unsafe { libc::kill(pid, sig) };
            }
        }
    }
}

/// Handle one pending exec notification (serving in init) and report it
/// to the host: a held one at once (it waits for the answer).
fn send_exec(c: &mut crate::capture::Capture, out: &HostOut) -> Result<(), ()> {
    match c.handle_one() {
        Some(h) => report(h, out),
        None => Ok(()),
    }
}

fn report(h: crate::capture::Handled, out: &HostOut) -> Result<(), ()> {
    match h {
        crate::capture::Handled::Exec(msg) => out.hold(&Frame::json(Kind::Process, 0, &msg)),
        crate::capture::Handled::Held(h) => out.send(&Frame::json(Kind::Hold, 0, &h)),
    }
}

enum HoldsError {
    /// Writing to brig failed.
    Host,
    /// The supervisor's pipe broke: it died.
    Lost,
}

/// Supervised: decide the execs with a sensitive word the supervisor left
/// waiting, and report them.
fn serve_holds(c: &mut crate::capture::Capture, out: &HostOut) -> Result<(), HoldsError> {
    for h in c.take_holds().map_err(|_| HoldsError::Lost)? {
        report(h, out).map_err(|()| HoldsError::Host)?;
    }
    Ok(())
}

/// Best effort: a line on a held process's stderr (what it waits for, or
/// why it was refused), as `brig:` says it on an API exec.
fn tell_stderr(pid: i32, message: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Append: a stderr that is a file must not be written over. Never
    // blocking: init serves every process of the sandbox, and a stderr
    // that is a FIFO nobody reads, or a full pipe, must not stall it.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/2"))
    {
        let _ = writeln!(f, "brig: {message}");
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Write what stdin can take now (its fd is non-blocking); close it after
/// `StdinEof` once everything is written, or when the reader is gone.
fn flush_input(e: &mut Exec) {
    let Some(fd) = e.input.as_ref().map(|f| f.as_raw_fd()) else {
        e.in_buf.clear();
        return;
    };
    while !e.in_buf.is_empty() {
        // SAFETY: writing from a valid buffer.
        let n = unsafe { libc::write(fd, e.in_buf.as_ptr().cast(), e.in_buf.len()) };
        if n > 0 {
            e.in_buf.drain(..n as usize);
            continue;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return,
            _ => {
                // EPIPE: nobody reads stdin any more.
                e.in_buf.clear();
                e.input = None;
                return;
            }
        }
    }
    if e.in_eof {
        e.input = None;
    }
}

fn set_winsize(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Processes in the sandbox besides init. As pid 1 that is every process
/// in /proc; outside a pid namespace (tests) init's descendants.
fn count_processes() -> u32 {
    // SAFETY: getpid has no memory effects.
    if unsafe { libc::getpid() } == 1 {
        let n = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0);
        return n.saturating_sub(1) as u32;
    }
    descendants(false).len() as u32
}

/// Every descendant of init, from /proc/<pid>/stat's ppid field; without
/// zombies if `live_only` (they run nothing and cannot be killed again).
fn descendants(live_only: bool) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<(i32, bool)>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parens.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let zombie = fields.next() == Some("Z");
            if let Some(ppid) = fields.next().and_then(|s| s.parse::<i32>().ok()) {
                children.entry(ppid).or_default().push((pid, zombie));
            }
        }
    }
    // SAFETY: getpid has no memory effects.
    let mut todo = vec![unsafe { libc::getpid() }];
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        for &(c, zombie) in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !(live_only && zombie) {
                out.push(c);
            }
            todo.push(c);
        }
    }
    out
}

/// Why the child could not exec, sent back over a CLOEXEC pipe.
#[repr(u8)]
#[derive(Clone, Copy)]
enum Stage {
    Setsid = 1,
    Stdio = 2,
    Chdir = 3,
    Exec = 4,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", strerror(errno())));
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(what: &str, s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// The child's stdio before fork: pipes, or a PTY master and its peer.
enum Stdio {
    Pipes {
        stdin: (OwnedFd, OwnedFd),
        stdout: (OwnedFd, OwnedFd),
        stderr: (OwnedFd, OwnedFd),
    },
    Pty {
        master: OwnedFd,
        slave: OwnedFd,
    },
}

fn open_pty(rows: u16, cols: u16) -> Result<Stdio, String> {
    let path = c"/dev/ptmx";
    // SAFETY: open/ioctl on descriptors we own; errors checked.
    unsafe {
        let m = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(format!(
                "cannot open /dev/ptmx for a terminal: {}",
                strerror(errno())
            ));
        }
        let master = OwnedFd::from_raw_fd(m);
        let unlock: libc::c_int = 0;
        if libc::ioctl(m, libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(format!("cannot unlock the terminal: {}", strerror(errno())));
        }
        // TIOCGPTPEER opens the slave through the master itself: no path
        // lookup that a racing process could redirect.
        let s = libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(format!(
                "cannot open the terminal's slave side: {}",
                strerror(errno())
            ));
        }
        set_winsize(m, rows, cols);
        Ok(Stdio::Pty {
            master,
            slave: OwnedFd::from_raw_fd(s),
        })
    }
}

/// Fork and exec one command; returns once it runs (execve succeeded) or
/// with the reason it could not start.
fn spawn_command(
    spawn: &wire::Spawn,
    mut capture: Option<&mut crate::capture::Capture>,
    host: &HostOut,
) -> Result<Exec, String> {
    let Some(argv0) = spawn.argv.first() else {
        return Err("empty command".into());
    };
    // Everything the child needs is prepared before fork.
    let argv: Vec<CString> = spawn
        .argv
        .iter()
        .map(|a| cstring("an argument", a))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spawn
        .env
        .iter()
        .map(|(k, v)| cstring("the environment", &format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    let candidates: Vec<CString> = if argv0.contains('/') {
        vec![cstring("the command", argv0)?]
    } else {
        let path = spawn
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                cstring("PATH", &format!("{}/{argv0}", dir.trim_end_matches('/')))
            })
            .collect::<Result<_, _>>()?
    };
    let cwd = cstring("the working directory", &spawn.cwd)?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());

    let stdio = match spawn.tty {
        Some((rows, cols)) => open_pty(rows, cols)?,
        None => Stdio::Pipes {
            stdin: pipe()?,
            stdout: pipe()?,
            stderr: pipe()?,
        },
    };
    let (err_r, err_w) = pipe()?;
    let dumpable = capture.is_some();

    // SAFETY: init is single-threaded, so the child may run ordinary code;
    // it still only calls libc on data prepared above, then execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", strerror(errno())));
    }
    if pid == 0 {
        let (stage, e) = unsafe {
            child(
                &stdio,
                &cwd,
                &candidates,
                &argv_ptrs,
                &envp_ptrs,
                err_w.as_raw_fd(),
                dumpable,
            )
        };
        let mut report = [0u8; 5];
        report[0] = stage as u8;
        report[1..].copy_from_slice(&e.to_ne_bytes());
        let _ = write_all(err_w.as_raw_fd(), &report);
        unsafe { libc::_exit(127) };
    }
    drop(err_w);
    // The child's own exec was decided by the host before it asked.
    if let Some(c) = capture.as_deref_mut() {
        c.exempt = Some(pid);
    }

    // Keep init's ends; the child's ends close here.
    let (input, out, err, tty) = match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => (stdin.1, stdout.0, Some(stderr.0), false),
        Stdio::Pty { master, slave } => {
            drop(slave);
            let dup = master
                .try_clone()
                .map_err(|e| format!("dup of the terminal: {e}"))?;
            (dup, master, None, true)
        }
    };

    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        // With capture on, the child's execve waits for init's answer: serve
        // notifications (the child's and anyone else's) until it reports.
        // Supervised, the child's exec is served by the supervisor, but one
        // with a sensitive word comes to init to decide, and the records
        // pipe must not fill up meanwhile.
        if let Some(c) = capture.as_deref_mut() {
            let mut pfds = [pollfd(err_r.as_raw_fd(), libc::POLLIN); 5];
            let mut at = [None; 4];
            let mut nfds = 1;
            let fds = [
                c.listener_fd(),
                c.holds_fd(),
                c.records_fd(),
                c.supervisor_fd(),
            ];
            for (k, fd) in fds.into_iter().enumerate() {
                if let Some(fd) = fd {
                    pfds[nfds] = pollfd(fd, libc::POLLIN);
                    at[k] = Some(nfds);
                    nfds += 1;
                }
            }
            // SAFETY: a valid array of at least nfds pollfd.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), nfds as libc::nfds_t, -1) };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                break;
            }
            let ready = |k: usize| at[k].is_some_and(|i| pfds[i].revents != 0);
            if ready(3) {
                return Err(CAPTURE_LOST.into());
            }
            if ready(0) {
                send_exec(c, host).map_err(|_| HOST_WRITE_FAILED.to_string())?;
            }
            if ready(1) {
                serve_holds(c, host).map_err(|e| match e {
                    HoldsError::Host => HOST_WRITE_FAILED.to_string(),
                    HoldsError::Lost => CAPTURE_LOST.to_string(),
                })?;
            }
            if ready(2) {
                host.flush().map_err(|_| HOST_WRITE_FAILED.to_string())?;
            }
            if pfds[0].revents == 0 {
                continue;
            }
        }
        match read_fd(err_r.as_raw_fd(), &mut report[got..]) {
            ReadResult::Data(n) => got += n,
            _ => break,
        }
    }
    if let Some(c) = capture {
        c.exempt = None;
    }
    if got > 0 {
        // The child failed before exec and has _exited: reap it now, so the
        // loop never sees it.
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        let e = i32::from_ne_bytes(report[1..5].try_into().unwrap_or([0; 4]));
        let why = strerror(e);
        return Err(match report[0] {
            x if x == Stage::Chdir as u8 => format!("cannot change to {}: {why}", spawn.cwd),
            x if x == Stage::Exec as u8 => format!("{argv0}: {why}"),
            x if x == Stage::Setsid as u8 => format!("setsid: {why}"),
            _ => format!("setting up the command's stdio: {why}"),
        });
    }
    for fd in [Some(&input), Some(&out), err.as_ref()]
        .into_iter()
        .flatten()
    {
        let _ = set_nonblocking(fd.as_raw_fd(), true);
    }
    Ok(Exec {
        pid,
        input: Some(input),
        in_buf: Vec::new(),
        in_eof: false,
        out: Some(out),
        err,
        tty,
        status: None,
        deadline: None,
    })
}

/// In the forked child: new session, stdio, cwd, clean signals, exec.
/// Returns only on failure, with the stage and errno.
unsafe fn child(
    stdio: &Stdio,
    cwd: &CStr,
    candidates: &[CString],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err_fd: RawFd,
    dumpable: bool,
) -> (Stage, i32) {
    // Signals: init blocks some and Rust ignores SIGPIPE; both would leak
    // into the command through exec.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // Its own session and process group, so `Signal` reaches the whole job.
    if libc::setsid() < 0 {
        return (Stage::Setsid, errno());
    }
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            for (fd, target) in [(&stdin.0, 0), (&stdout.1, 1), (&stderr.1, 2)] {
                if libc::dup2(fd.as_raw_fd(), target) < 0 {
                    return (Stage::Stdio, errno());
                }
            }
        }
        Stdio::Pty { slave, .. } => {
            if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) < 0 {
                return (Stage::Stdio, errno());
            }
            for target in 0..3 {
                if libc::dup2(slave.as_raw_fd(), target) < 0 {
                    return (Stage::Stdio, errno());
                }
            }
        }
    }
    if libc::chdir(cwd.as_ptr()) < 0 {
        return (Stage::Chdir, errno());
    }
    // Nothing of init's beyond stdio crosses exec (the error pipe included,
    // which is how the parent learns exec succeeded).
    libc::syscall(
        libc::SYS_close_range,
        3 as libc::c_uint,
        libc::c_uint::MAX,
        CLOSE_RANGE_CLOEXEC,
    );
    if dumpable {
        // Init is non-dumpable and a fork keeps that until exec, but the
        // capture filter reads this process's memory at its execve. Before
        // /proc/<pid>/fd opens to the sandbox's user, close every descriptor
        // of init's (the seccomp listener among them) but the error pipe.
        let e = err_fd as libc::c_uint;
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, e - 1, 0);
        libc::syscall(libc::SYS_close_range, e + 1, libc::c_uint::MAX, 0);
        libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
    }
    // execvpe semantics, but with PATH from the command's environment:
    // ENOENT/ENOTDIR try the next directory, EACCES is kept if nothing else works.
    let mut result = libc::ENOENT;
    for c in candidates {
        // A PATH miss is not tried (so it is not recorded as an exec attempt).
        if candidates.len() > 1 && libc::access(c.as_ptr(), libc::F_OK) != 0 {
            match errno() {
                libc::ENOENT | libc::ENOTDIR => continue,
                _ => {}
            }
        }
        libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr());
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => result = libc::EACCES,
            other => return (Stage::Exec, other),
        }
    }
    (Stage::Exec, result)
}
