//! Process capture inside the sandbox: a seccomp user-notification filter on
//! `execve`/`execveat`, installed by `brig sandbox-init` on itself after the
//! allow-list, so every process of the sandbox inherits it.
//!
//! Each exec pauses in the kernel until init answers. Init reads the call's
//! path and argv from `/proc/<pid>/mem`, its cwd and ids from `/proc`, checks
//! the notification is still valid (the pid was not reused while it read),
//! lets the call go on (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`) and reports a
//! [`wire::ProcessExec`]. The kernel allows one listener per filter chain,
//! so nothing inside the sandbox can install a listener of its own to answer
//! (and hide) its children's execs: that fails with `EBUSY`.
//!
//! Exits: at the notification init also opens a pidfd on the caller (checked
//! by the same `ID_VALID` as the reads) and parks it in an epoll set. When
//! the process is reaped — by init, or by its own parent inside the sandbox —
//! the pidfd hangs up and `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT` (Linux
//! 6.15) gives its wait status, so every captured process gets its exit code
//! or signal, whoever reaped it. A kernel without it fails `install`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use brig_core::wire;

pub(crate) mod supervisor;

/// The layer name reported in `Ready.layers`.
pub const LAYER: &str = "capture:seccomp-notify";
/// Reported too when sensitive execs are held for the host's decision.
pub const HOLD_LAYER: &str = "capture:hold-sensitive";
/// Reported too: who serves the listener (see [`supervisor`]).
pub const SUPERVISOR_LAYER: &str = "capture:supervisor";
pub const IN_INIT_LAYER: &str = "capture:in-init";

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_GET_NOTIF_SIZES: libc::c_ulong = 3;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
// _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp),
// _IOW('!', 2, __u64): the generic ioctl encoding of x86_64 and aarch64.
const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
// _IOW('!', 4, __u64) and SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6):
// the caller and init hand the CPU to each other instead of waking one
// another on the other CPU, which on a VM means an IPI and a vCPU wake-up.
const NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
const NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
// _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info) for its first (64-byte) layout.
const PIDFD_GET_INFO: libc::c_ulong = 0xc040_ff0b;
const PIDFD_INFO_PID: u64 = 1;
const PIDFD_INFO_CREDS: u64 = 2;
const PIDFD_INFO_EXIT: u64 = 8;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Longest string read from the target (path, one argument).
const MAX_STR: usize = 4096;
/// Most arguments read; the rest are summarized as one marker.
const MAX_ARGS: usize = 256;
/// Exits taken from the epoll set per call.
const EXIT_BATCH: usize = 64;

/// `struct pidfd_info` (first version, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
    coredump_mask: u32,
    spare: u32,
}

fn pidfd_info(fd: RawFd, mask: u64) -> Option<PidfdInfo> {
    let mut info = PidfdInfo {
        mask,
        ..Default::default()
    };
    // SAFETY: PIDFD_GET_INFO fills a pidfd_info of the size in the request.
    if unsafe { libc::ioctl(fd, PIDFD_GET_INFO, &mut info as *mut PidfdInfo) } != 0 {
        return None;
    }
    Some(info)
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new close-on-exec descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: the kernel returned a new descriptor.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether this kernel has what capture needs, without installing anything
/// (for `brig doctor`): seccomp user notification and `PIDFD_INFO_EXIT`.
pub fn probe() -> Result<(), String> {
    let action: u32 = SECCOMP_RET_USER_NOTIF;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL (2) reads one u32; it changes nothing.
    if unsafe { libc::syscall(libc::SYS_seccomp, 2, 0, &action as *const u32) } != 0 {
        return Err(
            "seccomp user notification (SECCOMP_RET_USER_NOTIF, Linux 5.0) unavailable".into(),
        );
    }
    probe_pidfd_exit()
}

/// Whether the kernel keeps a reaped process's wait status for its pidfd
/// holders: fork a child that exits at once, reap it, ask its pidfd.
fn probe_pidfd_exit() -> Result<(), String> {
    // The child waits for the pipe to close, so its pidfd is opened while it
    // surely lives (in a multi-threaded caller another thread may reap).
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the child only calls read, then _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        unsafe { libc::close(p[0]) };
        unsafe { libc::close(p[1]) };
        return Err(format!("fork: {e}"));
    }
    if pid == 0 {
        let mut b = 0u8;
        unsafe {
            libc::close(p[1]);
            libc::read(p[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(7)
        };
    }
    let fd = pidfd_open(pid);
    let open_err = std::io::Error::last_os_error();
    // SAFETY: closing our ends; the child sees EOF and exits; reap it.
    unsafe { libc::close(p[0]) };
    unsafe { libc::close(p[1]) };
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, 0) };
    let fd = fd.ok_or_else(|| format!("pidfd_open: {open_err}"))?;
    match pidfd_info(fd.as_raw_fd(), PIDFD_INFO_EXIT) {
        Some(i) if i.mask & PIDFD_INFO_EXIT != 0 && wait_status(i.exit_code) == (Some(7), None) => {
            Ok(())
        }
        _ => Err(
            "the kernel cannot report the exit status of processes init does not reap \
             (PIDFD_INFO_EXIT needs Linux 6.15 or newer)"
                .into(),
        ),
    }
}

/// (exit code, signal) of a wait status; (None, None) for a stop or continue.
pub(crate) fn wait_status(st: i32) -> (Option<i32>, Option<i32>) {
    if libc::WIFEXITED(st) {
        (Some(libc::WEXITSTATUS(st)), None)
    } else if libc::WIFSIGNALED(st) {
        (None, Some(libc::WTERMSIG(st)))
    } else {
        (None, None)
    }
}

/// `struct seccomp_notif_sizes`.
#[repr(C)]
#[derive(Default)]
struct NotifSizes {
    notif: u16,
    resp: u16,
    data: u16,
}

/// The filter: on the native architecture, execve/execveat → USER_NOTIF,
/// everything else → ALLOW (the allow-list already decides the rest).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn program() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        ins(LD_W_ABS, 0, 0, 4), // arch
        ins(JEQ_K, 0, 3, AUDIT_ARCH),
        ins(LD_W_ABS, 0, 0, 0), // nr
        ins(JEQ_K, 2, 0, libc::SYS_execve as u32),
        ins(JEQ_K, 1, 0, libc::SYS_execveat as u32),
        ins(RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ins(RET_K, 0, 0, SECCOMP_RET_USER_NOTIF),
    ]
}

/// Init's end of the notification filter.
///
/// Two ways to serve it (see the module docs of [`supervisor`]):
/// - supervised (the usual): a process of its own, forked by init, blocks
///   in `SECCOMP_IOCTL_NOTIF_RECV`, does the reads and answers, and hands
///   init the records through a pipe; init only decides the execs that hold
///   a sensitive word and answers the host's verdicts;
/// - in init (where the kernel does not let a sibling read the caller's
///   memory: Yama's `ptrace_scope` ≥ 1): init serves every notification
///   from its poll loop.
pub struct Capture {
    /// The listener: kept by init in both modes, for the answers to holds.
    fd: OwnedFd,
    resp_size: usize,
    /// Serving in init: the reader and the exit tracker.
    local: Option<(Reader, Tracker)>,
    /// Served by the supervisor.
    sup: Option<supervisor::Supervised>,
    /// Processes whose command line policy already decided (and so what
    /// they start): never held.
    pub decided: std::collections::HashSet<i32>,
    /// The process init is starting itself (its command was decided by the
    /// host before it asked): not held.
    pub exempt: Option<i32>,
    /// Held calls, by notification id.
    held: HashMap<u64, wire::ProcessExec>,
    holds_in: wire::Decoder,
}

/// The supervisor's pipe is closed or corrupt: it died.
#[derive(Debug)]
pub struct SupervisorLost;

/// What became of one exec notification.
pub enum Handled {
    /// Let go on; report it.
    Exec(wire::ProcessExec),
    /// Held in the kernel until the host answers.
    Held(wire::ProcessHold),
}

/// What the reader made of one notification.
pub(crate) enum Notice {
    /// Answered (let go on): report it.
    Exec(wire::ProcessExec),
    /// Its argv holds a sensitive word: not answered; init decides it
    /// ([`Capture::decide`]).
    Candidate(wire::ProcessHold),
}

impl Capture {
    /// Install the filter on the calling (single-threaded) process.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn install(hold_words: Vec<String>) -> Result<Capture, String> {
        let mut sizes = NotifSizes::default();
        // SAFETY: seccomp(GET_NOTIF_SIZES) fills the struct.
        if unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_GET_NOTIF_SIZES,
                0,
                &mut sizes as *mut NotifSizes,
            )
        } != 0
        {
            return Err(format!(
                "seccomp user notification is not supported: {}",
                std::io::Error::last_os_error()
            ));
        }
        // The fields read and written below must exist.
        if (sizes.notif as usize) < 80 || (sizes.resp as usize) < 24 {
            return Err(format!(
                "unexpected seccomp notification sizes {}/{}",
                sizes.notif, sizes.resp
            ));
        }
        probe_pidfd_exit()?;
        let tracker = Tracker::new()?;
        let filter = program();
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: a valid program; the kernel copies it. no_new_privs is set.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            )
        };
        if fd < 0 {
            return Err(format!(
                "installing the exec notification filter: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the kernel returned a new (close-on-exec) descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // Best effort: only a latency gain, and kernels before 6.6 lack it.
        // A receiver blocked in RECV is then woken on the trapping CPU, and
        // the trapped process on the answering one.
        // SAFETY: SET_FLAGS reads a u64.
        unsafe { libc::ioctl(fd.as_raw_fd(), NOTIF_SET_FLAGS, NOTIF_FD_SYNC_WAKE_UP) };
        let reader = Reader {
            fd: fd.as_raw_fd(),
            resp_size: sizes.resp as usize,
            buf: vec![0u8; (sizes.notif as usize).max(80)],
            hold_words,
            mem: Mem::default(),
        };
        Ok(Capture {
            resp_size: sizes.resp as usize,
            fd,
            local: Some((reader, tracker)),
            sup: None,
            decided: Default::default(),
            exempt: None,
            held: HashMap::new(),
            holds_in: wire::Decoder::new(),
        })
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn install(_hold_words: Vec<String>) -> Result<Capture, String> {
        Err(format!(
            "brig has no process capture for {}",
            std::env::consts::ARCH
        ))
    }

    /// Hand the listener to a supervisor process (see [`supervisor`]).
    /// Ok(false): the kernel does not let it read the callers' memory, and
    /// init keeps serving it. Call before init starts anything.
    pub fn start_supervisor(&mut self) -> Result<bool, String> {
        let Some((reader, tracker)) = self.local.take() else {
            return Ok(self.sup.is_some());
        };
        match supervisor::start(reader, tracker)? {
            Ok(s) => {
                self.sup = Some(s);
                Ok(true)
            }
            Err(refused) => {
                self.local = Some(refused);
                Ok(false)
            }
        }
    }

    /// Serving in init: the listener, readable when an exec waits.
    pub fn listener_fd(&self) -> Option<RawFd> {
        self.local.as_ref().map(|_| self.fd.as_raw_fd())
    }

    /// Serving in init: readable when a process seen exec was reaped
    /// ([`Capture::take_exits`]).
    pub fn exits_fd(&self) -> Option<RawFd> {
        self.local.as_ref().map(|(_, t)| t.exits.as_raw_fd())
    }

    /// Supervised: readable when an exec with a sensitive word waits
    /// ([`Capture::take_holds`]).
    pub fn holds_fd(&self) -> Option<RawFd> {
        self.sup.as_ref().map(|s| s.holds.as_raw_fd())
    }

    /// Supervised: the pipe of encoded `Process`/`ProcessExit` frames the
    /// supervisor writes (init forwards them to the host as they are).
    pub fn records_fd(&self) -> Option<RawFd> {
        self.sup.as_ref().map(|s| s.records.as_raw_fd())
    }

    /// Supervised: readable once the supervisor has died (the session
    /// must stop: nothing answers the execs any more).
    pub fn supervisor_fd(&self) -> Option<RawFd> {
        self.sup.as_ref().map(|s| s.pidfd.as_raw_fd())
    }

    /// The supervisor's pid (not one of the sandbox's processes).
    pub fn supervisor_pid(&self) -> Option<i32> {
        self.sup.as_ref().map(|s| s.pid)
    }

    /// Serving in init: take one pending notification and return what it
    /// was (None: nothing pending, or the caller died meanwhile): let go
    /// on, or held when its command line holds a sensitive pattern's word.
    ///
    /// A hold is a guardrail for the agent's honest mistakes, not a
    /// boundary: the kernel reads argv again after `CONTINUE`, so a
    /// multi-threaded program can swap it after brig looked (see
    /// docs/ISOLATION.md); the boundary stays the sandbox and its egress.
    pub fn handle_one(&mut self) -> Option<Handled> {
        let (reader, tracker) = self.local.as_mut()?;
        let notice = reader
            .handle_one(|_, pidfd| {
                if let Some((pid, fd)) = pidfd {
                    if let Some(old) = tracker.track(pid, fd) {
                        tracker.pending.push(old);
                    }
                }
                true
            })
            .ok()??;
        Some(match notice {
            Notice::Exec(e) => Handled::Exec(e),
            Notice::Candidate(h) => self.decide(h),
        })
    }

    /// Supervised: the execs with a sensitive word the supervisor left
    /// unanswered, each decided: let go on, or held for the host. Err: the
    /// supervisor's pipe is closed or corrupt (it died).
    pub fn take_holds(&mut self) -> Result<Vec<Handled>, SupervisorLost> {
        let Some(fd) = self.holds_fd() else {
            return Ok(vec![]);
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: reading into a local buffer from a non-blocking pipe.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.holds_in.feed(&buf[..n as usize]);
                continue;
            }
            if n == 0 {
                return Err(SupervisorLost);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break,
                _ => return Err(SupervisorLost),
            }
        }
        let mut out = Vec::new();
        while let Some(f) = self.holds_in.next_frame().map_err(|_| SupervisorLost)? {
            let h: wire::ProcessHold = f.parse().map_err(|_| SupervisorLost)?;
            out.push(self.decide(h));
        }
        Ok(out)
    }

    /// An exec whose argv holds a sensitive word: held for the host, unless
    /// it or an ancestor was decided already (then let go on at once).
    fn decide(&mut self, h: wire::ProcessHold) -> Handled {
        if self.should_hold(h.exec.pid, h.exec.ppid) {
            self.held.insert(h.id, h.exec.clone());
            return Handled::Held(h);
        }
        self.send_continue(h.id);
        Handled::Exec(h.exec)
    }

    /// Whether a worded exec waits for the host: neither it nor an
    /// ancestor was decided already.
    fn should_hold(&self, pid: i32, ppid: i32) -> bool {
        if self.exempt == Some(pid) {
            return false;
        }
        // Up the parent chain (inside the sandbox's pid namespace).
        let mut p = pid;
        let mut parent = ppid;
        for _ in 0..64 {
            if self.decided.contains(&p) {
                return false;
            }
            if parent <= 1 {
                break;
            }
            p = parent;
            parent = parent_of(p).unwrap_or(0);
        }
        true
    }

    /// The pid of a held call's process.
    pub fn held_pid(&self, id: u64) -> Option<i32> {
        self.held.get(&id).map(|e| e.pid)
    }

    /// The host's answer on a held call. Returns the held process's pid
    /// (for a message on its stderr) and, when let go on, its exec record;
    /// None for a call not held (answered already, or unknown).
    pub fn answer(&mut self, a: &wire::HoldAnswer) -> Option<(i32, Option<wire::ProcessExec>)> {
        match a.verdict {
            wire::HoldVerdict::Wait => self.held.get(&a.id).map(|e| (e.pid, None)),
            wire::HoldVerdict::Allow => {
                let e = self.held.remove(&a.id)?;
                let live = id_valid(self.fd.as_raw_fd(), a.id);
                self.send_continue(a.id);
                Some((e.pid, live.then_some(e)))
            }
            wire::HoldVerdict::Deny => {
                let e = self.held.remove(&a.id)?;
                send_resp(self.fd.as_raw_fd(), self.resp_size, a.id, -libc::EPERM, 0);
                Some((e.pid, None))
            }
        }
    }

    /// Serving in init: the exits of watched processes that were reaped
    /// since the last call.
    pub fn take_exits(&mut self) -> Vec<wire::ProcessExit> {
        match self.local.as_mut() {
            Some((_, t)) => t.take_exits(),
            None => vec![],
        }
    }

    /// `pid` (a command init started) was reaped: it is no longer decided.
    pub fn forget(&mut self, pid: i32) {
        self.decided.remove(&pid);
    }

    fn send_continue(&self, id: u64) {
        send_resp(
            self.fd.as_raw_fd(),
            self.resp_size,
            id,
            0,
            SECCOMP_USER_NOTIF_FLAG_CONTINUE,
        );
    }
}

fn id_valid(fd: RawFd, id: u64) -> bool {
    // SAFETY: ID_VALID reads a u64.
    unsafe { libc::ioctl(fd, NOTIF_ID_VALID, &id as *const u64) == 0 }
}

/// `struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }`.
fn send_resp(fd: RawFd, resp_size: usize, id: u64, error: i32, flags: u32) {
    let mut resp = [0u8; 64];
    let resp = &mut resp[..resp_size.clamp(24, 64)];
    resp[0..8].copy_from_slice(&id.to_ne_bytes());
    resp[16..20].copy_from_slice(&error.to_ne_bytes());
    resp[20..24].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: SEND reads a seccomp_notif_resp; ENOENT (caller gone) is fine.
    unsafe { libc::ioctl(fd, NOTIF_SEND, resp.as_ptr()) };
}

/// The notification side: receive, read the caller, answer.
pub(crate) struct Reader {
    fd: RawFd,
    resp_size: usize,
    buf: Vec<u8>,
    /// Words of the sensitive command patterns: an exec whose command line
    /// holds one is left unanswered for init to decide.
    hold_words: Vec<String>,
    mem: Mem,
}

/// A pidfd of the caller, to watch for its exit.
pub(crate) type Watch = Option<(i32, OwnedFd)>;

impl Reader {
    /// One notification (blocking in RECV unless the caller polled first).
    /// `record` gets what was read, and the caller's pidfd, before the
    /// exec is let go on: what it keeps is kept whatever happens next (a
    /// killed supervisor cannot lose the record of an exec it let go).
    /// `record` false: not answered (the caller waits), Err(EPIPE).
    /// Ok(None): the caller died while it was read. Err: RECV's errno.
    pub(crate) fn handle_one(
        &mut self,
        record: impl FnOnce(&Notice, Watch) -> bool,
    ) -> Result<Option<Notice>, i32> {
        self.buf.fill(0);
        let buf = &mut self.buf;
        // SAFETY: RECV fills a zeroed seccomp_notif of the kernel's size.
        if unsafe { libc::ioctl(self.fd, NOTIF_RECV, buf.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
        let id = u64_at(0);
        let tid = u32::from_ne_bytes(buf[8..12].try_into().unwrap()) as i32;
        let nr = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
        let args: [u64; 6] = std::array::from_fn(|i| u64_at(32 + 8 * i));
        let time = brig_core::event::now_rfc3339();
        // The pidfd gives the ids (cheaper than /proc/<pid>/status) and,
        // later, the exit. A thread other than the leader may call execve:
        // then the pidfd is the thread group's, found through /proc.
        let pidfd = pidfd_open(tid).or_else(|| tgid_of(tid).and_then(pidfd_open));
        let ids = pidfd
            .as_ref()
            .and_then(|fd| pidfd_info(fd.as_raw_fd(), PIDFD_INFO_PID | PIDFD_INFO_CREDS));
        let info = read_target(&mut self.mem, tid, nr as libc::c_long, &args);
        let cwd = std::fs::read_link(format!("/proc/{tid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Only what was read while the notification was valid is the
        // caller's (the pidfd included): if it died, and the pid was
        // perhaps reused, drop it.
        let valid = id_valid(self.fd, id);
        // A process that made itself non-dumpable before exec cannot hide:
        // it is still recorded, without what only its memory holds.
        let (path, argv) = info.unwrap_or_else(|| ("[brig: memory unreadable]".into(), vec![]));
        let (pid, ppid, uid) = match &ids {
            Some(i) if i.mask & PIDFD_INFO_PID != 0 => (i.tgid as i32, i.ppid as i32, i.ruid),
            _ => (tid, 0, u32::MAX),
        };
        let let_go =
            |r: &Reader| send_resp(r.fd, r.resp_size, id, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
        if !valid {
            // Gone already (the answer only fails); nothing to record.
            let_go(self);
            return Ok(None);
        }
        let worded = self.worded(&argv);
        let exec = wire::ProcessExec {
            pid,
            ppid,
            uid,
            argv,
            path,
            cwd,
            time,
        };
        let notice = if worded {
            Notice::Candidate(wire::ProcessHold { id, exec })
        } else {
            Notice::Exec(exec)
        };
        if !record(&notice, pidfd.map(|fd| (pid, fd))) {
            return Err(libc::EPIPE);
        }
        if !worded {
            let_go(self);
        }
        Ok(Some(notice))
    }

    /// Whether the command line holds a sensitive word. A word has no
    /// space, so it is in the joined command line exactly when it is in
    /// one argument: no join on every exec.
    fn worded(&self, argv: &[String]) -> bool {
        !self.hold_words.is_empty()
            && argv
                .iter()
                .any(|a| self.hold_words.iter().any(|w| a.contains(w.as_str())))
    }
}

/// The pidfds of every live process seen exec, by pid; their hang-ups (the
/// process was reaped) make `exits` readable.
pub(crate) struct Tracker {
    /// Each entry's epoll key carries its own generation, so a stale
    /// hang-up (of a pidfd already reported) can never report a second exit.
    tracked: HashMap<i32, (u32, OwnedFd)>,
    generation: u32,
    exits: OwnedFd,
    /// Exits found outside `take_exits` (a reused pid), reported by it.
    pending: Vec<wire::ProcessExit>,
}

impl Tracker {
    fn new() -> Result<Tracker, String> {
        // SAFETY: a new close-on-exec epoll instance or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tracker {
            tracked: HashMap::new(),
            generation: 0,
            // SAFETY: the kernel returned a new descriptor.
            exits: unsafe { OwnedFd::from_raw_fd(ep) },
            pending: Vec::new(),
        })
    }

    pub(crate) fn exits_fd(&self) -> RawFd {
        self.exits.as_raw_fd()
    }

    /// Watch `pid`'s pidfd for its exit. A process that execs again (or
    /// tries PATH candidates) is already watched; a pid still in the map
    /// whose process is gone was reused: its exit is returned, to be
    /// reported before the new process's exec.
    pub(crate) fn track(&mut self, pid: i32, fd: OwnedFd) -> Option<wire::ProcessExit> {
        if let Some((_, old)) = self.tracked.get(&pid) {
            if !hung_up(old.as_raw_fd()) {
                return None;
            }
        }
        self.generation = self.generation.wrapping_add(1);
        let mut ev = libc::epoll_event {
            // Only the hang-up: a zombie is readable (POLLIN) until reaped,
            // and its status is kept only from the reap on.
            events: 0,
            u64: (u64::from(self.generation) << 32) | u64::from(pid as u32),
        };
        let old = self.tracked.remove(&pid).map(|(_, old)| exit_of(pid, &old));
        // SAFETY: adding a valid descriptor to our epoll set.
        let added = unsafe {
            libc::epoll_ctl(
                self.exits.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        } == 0;
        if added {
            self.tracked.insert(pid, (self.generation, fd));
        }
        old
    }

    /// The exits of watched processes that were reaped since the last call.
    pub(crate) fn take_exits(&mut self) -> Vec<wire::ProcessExit> {
        let mut out = std::mem::take(&mut self.pending);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EXIT_BATCH];
        loop {
            // SAFETY: epoll_wait fills at most EXIT_BATCH entries; no wait.
            let n = unsafe {
                libc::epoll_wait(
                    self.exits.as_raw_fd(),
                    events.as_mut_ptr(),
                    EXIT_BATCH as i32,
                    0,
                )
            };
            if n <= 0 {
                return out;
            }
            for ev in &events[..n as usize] {
                let (pid, generation) = (ev.u64 as u32 as i32, (ev.u64 >> 32) as u32);
                // Closing the pidfd takes it out of the epoll set (once no
                // forked child holds a copy of it either).
                if self
                    .tracked
                    .get(&pid)
                    .is_some_and(|(g, _)| *g == generation)
                {
                    let (_, fd) = self.tracked.remove(&pid).expect("just seen");
                    out.push(exit_of(pid, &fd));
                }
            }
            if (n as usize) < EXIT_BATCH {
                return out;
            }
        }
    }
}

/// The parent pid of `pid`, from `/proc/<pid>/stat` (after the command
/// name's closing parenthesis: state, then ppid).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a pidfd's process was reaped (POLLHUP).
fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: polling one valid descriptor without waiting.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLHUP != 0 }
}

/// The exit of a reaped process, from its pidfd.
fn exit_of(pid: i32, fd: &OwnedFd) -> wire::ProcessExit {
    let (code, signal) = match pidfd_info(fd.as_raw_fd(), PIDFD_INFO_EXIT) {
        Some(i) if i.mask & PIDFD_INFO_EXIT != 0 => wait_status(i.exit_code),
        _ => (None, None),
    };
    wire::ProcessExit {
        pid,
        code,
        signal,
        time: brig_core::event::now_rfc3339(),
    }
}

/// The thread-group id of a thread, from `/proc/<tid>/status`.
fn tgid_of(tid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

const PAGE: u64 = 4096;
/// Pages kept per notification: path, argv array and strings usually share
/// one or two (a shell builds them together); a long argv reads more.
const PAGES_CACHED: usize = 8;

/// The caller's memory, read whole pages at a time from
/// `/proc/<pid>/mem` (opened at the first read), each page once per
/// notification. (`process_vm_readv` would save the open and close, but
/// the allow-list denies it to everything in the sandbox, brig included.)
#[derive(Default)]
pub(crate) struct Mem {
    pid: i32,
    file: Option<std::fs::File>,
    /// (page address, bytes read) of the cached pages, most recent last.
    index: Vec<(u64, usize)>,
    pages: Vec<Box<[u8; PAGE as usize]>>,
    /// The kernel refused (the caller is not dumpable, or gone).
    pub(crate) denied: bool,
}

impl Mem {
    fn reset(&mut self, pid: i32) {
        self.pid = pid;
        self.file = None;
        self.index.clear();
        self.denied = false;
    }

    /// Close the caller's memory (before it is let go on).
    fn done(&mut self) {
        self.file = None;
    }

    /// The bytes from `addr` to the end of its page (empty: unmapped).
    fn page(&mut self, addr: u64) -> &[u8] {
        let base = addr & !(PAGE - 1);
        let off = (addr - base) as usize;
        let slot = match self.index.iter().position(|&(b, _)| b == base) {
            Some(i) => i,
            None => {
                if self.denied {
                    return &[];
                }
                if self.file.is_none() {
                    match std::fs::File::open(format!("/proc/{}/mem", self.pid)) {
                        Ok(f) => self.file = Some(f),
                        Err(_) => {
                            // Not dumpable, or gone.
                            self.denied = true;
                            return &[];
                        }
                    }
                }
                let i = if self.index.len() < PAGES_CACHED {
                    self.index.push((base, 0));
                    self.index.len() - 1
                } else {
                    // Full: reuse the oldest slot.
                    self.index.rotate_left(1);
                    self.pages.rotate_left(1);
                    self.index.len() - 1
                };
                while self.pages.len() <= i {
                    self.pages.push(Box::new([0u8; PAGE as usize]));
                }
                let n = pread(
                    self.file.as_ref().expect("opened"),
                    &mut self.pages[i][..],
                    base,
                );
                self.index[i] = (base, n);
                i
            }
        };
        let (_, len) = self.index[slot];
        &self.pages[slot][off.min(len)..len]
    }

    /// Fill `out` from `addr` on; returns how much could be read.
    fn read(&mut self, mut addr: u64, out: &mut [u8]) -> usize {
        let mut got = 0;
        while got < out.len() {
            let p = self.page(addr);
            if p.is_empty() {
                break;
            }
            let n = p.len().min(out.len() - got);
            out[got..got + n].copy_from_slice(&p[..n]);
            got += n;
            addr += n as u64;
        }
        got
    }

    /// A NUL-terminated string at `addr`, capped at [`MAX_STR`].
    fn string(&mut self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < MAX_STR {
            let room = MAX_STR - out.len();
            let p = self.page(at);
            if p.is_empty() {
                break;
            }
            let p = &p[..p.len().min(room)];
            if let Some(end) = p.iter().position(|&b| b == 0) {
                out.extend_from_slice(&p[..end]);
                return Some(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(p);
            at += p.len() as u64;
        }
        Some(String::from_utf8_lossy(&out).into_owned() + "[brig: truncated]")
    }
}

fn pread(f: &std::fs::File, buf: &mut [u8], at: u64) -> usize {
    use std::os::unix::fs::FileExt;
    f.read_at(buf, at).unwrap_or(0)
}

/// `len` bytes of `pid`'s memory at `addr`, if the kernel lets us read them.
pub(crate) fn read_mem(pid: i32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut mem = Mem::default();
    mem.reset(pid);
    let mut out = vec![0u8; len];
    (mem.read(addr, &mut out) == len).then_some(out)
}

/// The path and argv of an execve/execveat call, read from the caller's
/// memory; None when the kernel does not let it be read.
fn read_target(
    mem: &mut Mem,
    tid: i32,
    nr: libc::c_long,
    args: &[u64],
) -> Option<(String, Vec<String>)> {
    mem.reset(tid);
    let (path_ptr, argv_ptr) = if nr == libc::SYS_execveat {
        (args[1], args[2])
    } else {
        (args[0], args[1])
    };
    let mut path = mem.string(path_ptr).unwrap_or_default();
    if mem.denied {
        return None;
    }
    if nr == libc::SYS_execveat && !path.starts_with('/') {
        let dirfd = args[0] as i32;
        let base = if dirfd == libc::AT_FDCWD {
            std::fs::read_link(format!("/proc/{tid}/cwd")).ok()
        } else {
            std::fs::read_link(format!("/proc/{tid}/fd/{dirfd}")).ok()
        };
        if let Some(base) = base {
            let base = base.to_string_lossy().into_owned();
            path = if path.is_empty() {
                base
            } else {
                format!("{}/{path}", base.trim_end_matches('/'))
            };
        }
    }
    let mut argv = Vec::new();
    let mut at = argv_ptr;
    let mut more = false;
    while at != 0 {
        let mut raw = [0u8; 8];
        if mem.read(at, &mut raw) < 8 {
            break;
        }
        let p = u64::from_ne_bytes(raw);
        if p == 0 {
            break;
        }
        if argv.len() == MAX_ARGS {
            more = true;
            break;
        }
        argv.push(mem.string(p).unwrap_or_default());
        at += 8;
    }
    mem.done();
    if mem.denied {
        return None;
    }
    if more {
        argv.push("[brig: more arguments not captured]".to_string());
    }
    Some((path, argv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_and_argv_from_own_memory() {
        let a = std::ffi::CString::new("hello").unwrap();
        let b = std::ffi::CString::new("world").unwrap();
        let argv = [a.as_ptr() as u64, b.as_ptr() as u64, 0u64];
        let me = std::process::id() as i32;
        let mut mem = Mem::default();
        mem.reset(me);
        assert_eq!(mem.string(a.as_ptr() as u64).as_deref(), Some("hello"));
        let (path, args) = read_target(
            &mut mem,
            me,
            libc::SYS_execve,
            &[a.as_ptr() as u64, argv.as_ptr() as u64, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(path, "hello");
        assert_eq!(args, vec!["hello", "world"]);
    }

    /// Strings that cross pages, longer than the cache, unterminated at
    /// the cap, and an argv longer than MAX_ARGS.
    #[test]
    fn reads_across_pages_and_caps() {
        let me = std::process::id() as i32;
        // 40 KiB of 'x' with a NUL 5000 bytes after a page boundary.
        let mut big = vec![b'x'; 40 * 1024];
        let start = big.as_ptr() as u64;
        let boundary = ((start + PAGE) & !(PAGE - 1)) - start;
        let s_at = boundary as usize - 10;
        big[s_at + 20] = 0;
        let mut mem = Mem::default();
        mem.reset(me);
        let s = mem.string(start + s_at as u64).unwrap();
        assert_eq!(s, "x".repeat(20));
        // No NUL within MAX_STR: capped and marked.
        let s = mem.string(start + s_at as u64 + 21).unwrap();
        assert_eq!(s.len(), MAX_STR + "[brig: truncated]".len());
        assert!(s.ends_with("[brig: truncated]"));
        // 300 arguments (more pages than the cache holds, read twice).
        let strings: Vec<std::ffi::CString> = (0..300)
            .map(|i| std::ffi::CString::new(format!("arg{i}-{}", "y".repeat(100))).unwrap())
            .collect();
        let mut ptrs: Vec<u64> = strings.iter().map(|c| c.as_ptr() as u64).collect();
        ptrs.push(0);
        let path = std::ffi::CString::new("/bin/x").unwrap();
        let (p, args) = read_target(
            &mut mem,
            me,
            libc::SYS_execve,
            &[path.as_ptr() as u64, ptrs.as_ptr() as u64, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(p, "/bin/x");
        assert_eq!(args.len(), MAX_ARGS + 1);
        assert_eq!(args[0], format!("arg0-{}", "y".repeat(100)));
        assert_eq!(args[255], format!("arg255-{}", "y".repeat(100)));
        assert_eq!(args[256], "[brig: more arguments not captured]");
    }

    /// Another process's memory that the kernel refuses (here: a pid that
    /// does not exist) is reported as unreadable, not as an empty argv.
    #[test]
    fn unreadable_memory_is_none() {
        let mut mem = Mem::default();
        assert!(read_target(
            &mut mem,
            i32::MAX - 1,
            libc::SYS_execve,
            &[4096, 8192, 0, 0, 0, 0]
        )
        .is_none());
    }
}
