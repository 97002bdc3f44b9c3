//! The capture supervisor: a process of its own that serves the exec
//! notification listener, so the trapped process and its answer never wait
//! for init's poll loop.
//!
//! Init forks it once, right after installing the filter and before it
//! starts anything. It blocks in `SECCOMP_IOCTL_NOTIF_RECV`: with the
//! listener in `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` mode, only a receiver
//! blocked there is woken on the trapping CPU and wakes the caller back on
//! its own, so an exec costs a hand-off on one CPU instead of two wake-ups
//! across CPUs (on a VM: IPIs and vCPU wake-ups). One thread serves the
//! notifications (read argv/cwd/ids, write the `Process` frame, then answer
//! `CONTINUE`); another waits for the exits of watched processes and
//! writes their `ProcessExit` frames, at most every [`EXIT_COALESCE`]. The
//! frames go, encoded, through a pipe that init forwards to the host as
//! they are; init reads it lazily (a burst of execs costs init one wake-up
//! per 25 ms, not one per exec).
//!
//! Holds: an exec whose argv holds a sensitive word is not answered here;
//! its record goes to init on a second pipe, and init decides it exactly as
//! before (exempt, decided ancestors, the host's verdict) and answers it on
//! its own copy of the listener.
//!
//! Fails closed: the supervisor never answers an exec it did not record
//! (it exits instead when a pipe to init breaks). If it dies — killed by
//! the sandbox's user, which it shares, or on a fault — no exec is let go
//! on any more (they wait in the kernel: init keeps the listener for the
//! holds), init sees its pidfd hang up, sends `Fatal` (layer `capture`) and
//! ends the sandbox; when init's copy closes, waiting execs fail with
//! `ENOSYS`. It is not dumpable (a fork of init), so nothing in the sandbox
//! can read its memory or take its descriptors.
//!
//! It is a sibling of the sandbox's processes, not their ancestor: Yama's
//! `ptrace_scope` 1 (Ubuntu's default) refuses it their memory. Init probes
//! that first (the supervisor reads a throw-away child's memory); if the
//! kernel refuses, init serves the listener itself, as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::wire::{Frame, Kind};

use super::{Notice, Reader, Tracker};

/// Least time between two rounds of exits (a burst of short processes
/// costs one wake-up, not one each).
const EXIT_COALESCE: Duration = Duration::from_millis(25);

/// The supervisor's name in `/proc/<pid>/comm`.
pub(crate) const NAME: &std::ffi::CStr = c"brig-capture";

/// What the supervisor reads in the probe child to learn whether the
/// kernel lets it read a sibling's memory.
static PROBE: [u8; 16] = *b"brig-capture-ok!";

/// Init's handles on a running supervisor.
pub(crate) struct Supervised {
    pub(crate) pid: i32,
    /// Readable once the supervisor has exited.
    pub(crate) pidfd: OwnedFd,
    /// Encoded `Process`/`ProcessExit` frames (non-blocking).
    pub(crate) records: OwnedFd,
    /// Encoded `Hold` frames: execs with a sensitive word, unanswered
    /// (non-blocking).
    pub(crate) holds: OwnedFd,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Close every descriptor but `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut from: libc::c_uint = 0;
    for &k in &keep {
        let k = k as libc::c_uint;
        if k > from {
            // SAFETY: closing descriptor ranges of our own process.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k + 1;
    }
    unsafe { libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0) };
}

fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), ()> {
    while !buf.is_empty() {
        // SAFETY: writing from a valid slice.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

fn reap(pid: i32) {
    let mut st = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut st, 0) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// What [`start`] gives back when the kernel does not let the supervisor
/// read a sibling's memory: init serves the listener with them.
pub(crate) type Refused = (Reader, Tracker);

/// Fork the supervisor (init is single-threaded here), handing it the
/// reader and the exit tracker.
pub(crate) fn start(
    reader: Reader,
    tracker: Tracker,
) -> Result<Result<Supervised, Refused>, String> {
    let (records_r, records_w) = pipe()?;
    let (holds_r, holds_w) = pipe()?;
    // Room for a few thousand records while init is busy (best effort:
    // a full pipe only makes the supervisor wait).
    // SAFETY: F_SETPIPE_SZ on our own pipe.
    unsafe { libc::fcntl(records_w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    // SAFETY: getpid has no memory effects.
    let init = unsafe { libc::getpid() };

    // The probe target: a dumpable child holding nothing but its pipe,
    // which exits when the pipe closes.
    let (probe_r, probe_w) = pipe()?;
    // SAFETY: init is single-threaded; the child only makes syscalls.
    let probe = unsafe { libc::fork() };
    if probe < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if probe == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::dup2(probe_r.as_raw_fd(), 0);
            libc::syscall(
                libc::SYS_close_range,
                1 as libc::c_uint,
                libc::c_uint::MAX,
                0,
            );
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
            let mut b = 0u8;
            libc::read(0, (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(probe_r);

    // SAFETY: as above; the child never returns into init's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        drop(probe_w);
        reap(probe);
        return Err(format!("fork: {e}"));
    }
    if pid == 0 {
        // SAFETY: prctl and getppid with plain arguments.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            if libc::getppid() != init {
                libc::_exit(1);
            }
            libc::prctl(libc::PR_SET_NAME, NAME.as_ptr(), 0, 0, 0);
        }
        // Nothing of init's but what it serves: not the host's pipes (init's
        // end of the session), not the probe's (it must see EOF).
        close_all_but(&[
            2,
            reader.fd,
            tracker.exits_fd(),
            records_w.as_raw_fd(),
            holds_w.as_raw_fd(),
        ]);
        ignore_signals();
        let ok = super::read_mem(probe, PROBE.as_ptr() as u64, PROBE.len())
            .is_some_and(|got| got == PROBE);
        let _ = write_all(holds_w.as_raw_fd(), if ok { b"Y" } else { b"N" });
        if !ok {
            unsafe { libc::_exit(0) };
        }
        supervise(reader, tracker, records_w, holds_w);
    }
    drop(records_w);
    drop(holds_w);
    let mut verdict = [0u8; 1];
    let got = loop {
        // SAFETY: a blocking read of one byte from our pipe.
        let n = unsafe { libc::read(holds_r.as_raw_fd(), verdict.as_mut_ptr().cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    drop(probe_w);
    reap(probe);
    if got != 1 || verdict[0] != b'Y' {
        // SAFETY: the supervisor exits on its own after a refusal; make sure.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        return Ok(Err((reader, tracker)));
    }
    let pidfd = super::pidfd_open(pid).ok_or_else(|| {
        format!(
            "pidfd_open of the capture supervisor: {}",
            std::io::Error::last_os_error()
        )
    })?;
    set_nonblocking(records_r.as_raw_fd());
    set_nonblocking(holds_r.as_raw_fd());
    // Init keeps neither: the tracker's pidfds are the supervisor's.
    drop((reader, tracker));
    Ok(Ok(Supervised {
        pid,
        pidfd,
        records: records_r,
        holds: holds_r,
    }))
}

/// The sandbox's user can signal the supervisor (it is one of its own
/// processes): what would end it quietly is ignored; SIGKILL (and a fault)
/// still end it, and with it the session.
fn ignore_signals() {
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGPIPE,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGIO,
        libc::SIGPWR,
    ] {
        // SAFETY: setting a signal's disposition to ignore.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // SAFETY: an empty mask on a local, then set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

type Shared = Arc<Mutex<(Tracker, OwnedFd)>>;

/// The supervisor's life; any failure ends the process (never returns
/// into init's code, which it was forked from).
fn supervise(mut reader: Reader, tracker: Tracker, records: OwnedFd, holds: OwnedFd) -> ! {
    let exits_fd = tracker.exits_fd();
    let shared: Shared = Arc::new(Mutex::new((tracker, records)));
    let s2 = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("exits".into())
        .spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exits_loop(exits_fd, &s2)
            }));
            // SAFETY: ends the whole supervisor: no exit may go unseen.
            unsafe { libc::_exit(1) }
        });
    if spawned.is_err() {
        unsafe { libc::_exit(1) };
    }
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(&mut reader, &shared, holds.as_raw_fd())
    }));
    unsafe { libc::_exit(1) }
}

/// Notifications, one at a time, blocked in RECV between them. Each
/// record is in init's pipe before its exec is let go on: a supervisor
/// killed right after an answer has lost nothing it answered.
fn serve(reader: &mut Reader, shared: &Shared, holds: RawFd) {
    let mut out = Vec::with_capacity(4096);
    loop {
        let handled = reader.handle_one(|notice, watch| {
            out.clear();
            if let Notice::Candidate(h) = notice {
                if write_all(holds, &Frame::json(Kind::Hold, 0, h).encode()).is_err() {
                    return false;
                }
            }
            // Under the lock: the exits thread cannot report this process's
            // exit before its exec is written.
            let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((pid, fd)) = watch {
                if let Some(old) = g.0.track(pid, fd) {
                    Frame::json(Kind::ProcessExit, 0, &old).encode_into(&mut out);
                }
            }
            if let Notice::Exec(e) = notice {
                Frame::json(Kind::Process, 0, e).encode_into(&mut out);
            }
            out.is_empty() || write_all(g.1.as_raw_fd(), &out).is_ok()
        });
        match handled {
            // Recorded (and answered unless held), or the caller died
            // while it was read.
            Ok(_) => continue,
            // A signal, or the caller died before RECV took it.
            Err(libc::EINTR | libc::ENOENT) => continue,
            // A pipe to init broke (EPIPE), or the listener is gone.
            Err(_) => return,
        }
    }
}

/// Exits of watched processes: wait for the first, take all, write them.
fn exits_loop(exits_fd: RawFd, shared: &Shared) {
    let mut out = Vec::new();
    loop {
        let mut p = libc::pollfd {
            fd: exits_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor.
        if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        out.clear();
        {
            let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
            for exit in g.0.take_exits() {
                Frame::json(Kind::ProcessExit, 0, &exit).encode_into(&mut out);
            }
            if !out.is_empty() && write_all(g.1.as_raw_fd(), &out).is_err() {
                return;
            }
        }
        std::thread::sleep(EXIT_COALESCE);
    }
}

/// Whether `wire` frames in `buf` are complete up to some point: the
/// length of the longest prefix of whole frames.
pub(crate) fn whole_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf.len() >= at + 4 {
        let len = u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if buf.len() < at + 4 + len {
            break;
        }
        at += 4 + len;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_frames_stops_at_a_partial_frame() {
        let mut b = Frame::new(Kind::Process, 0, b"{}".to_vec()).encode();
        let one = b.len();
        b.extend(Frame::new(Kind::ProcessExit, 0, b"{\"a\":1}".to_vec()).encode());
        let two = b.len();
        assert_eq!(whole_frames(&b), two);
        assert_eq!(whole_frames(&b[..two - 1]), one);
        assert_eq!(whole_frames(&b[..3]), 0);
    }
}
