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

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use brig_core::wire;

/// The layer name reported in `Ready.layers`.
pub const LAYER: &str = "capture:seccomp-notify";

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

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Longest string read from the target (path, one argument).
const MAX_STR: usize = 4096;
/// Most arguments read; the rest are summarized as one marker.
const MAX_ARGS: usize = 256;
/// At most this many pids remembered for exit reports before pruning.
const SEEN_PRUNE: usize = 4096;

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
pub struct Capture {
    fd: OwnedFd,
    notif_size: usize,
    resp_size: usize,
    /// Pids (thread-group ids) seen exec, whose exit init reports when it reaps them.
    seen: HashSet<i32>,
}

impl Capture {
    /// Install the filter on the calling (single-threaded) process.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn install() -> Result<Capture, String> {
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
        Ok(Capture {
            // SAFETY: the kernel returned a new (close-on-exec) descriptor.
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            notif_size: sizes.notif as usize,
            resp_size: sizes.resp as usize,
            seen: HashSet::new(),
        })
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn install() -> Result<Capture, String> {
        Err(format!(
            "brig has no process capture for {}",
            std::env::consts::ARCH
        ))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Take one pending notification, let the exec go on, and return what
    /// it was (None: nothing pending, or the caller died meanwhile).
    pub fn handle_one(&mut self) -> Option<wire::ProcessExec> {
        let mut buf = vec![0u8; self.notif_size.max(80)];
        // SAFETY: RECV fills a zeroed seccomp_notif of the kernel's size.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_RECV, buf.as_mut_ptr()) } != 0 {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
        let id = u64_at(0);
        let tid = u32::from_ne_bytes(buf[8..12].try_into().unwrap()) as i32;
        let nr = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
        let args: Vec<u64> = (0..6).map(|i| u64_at(32 + 8 * i)).collect();
        let time = brig_core::event::now_rfc3339();
        let info = read_target(tid, nr as libc::c_long, &args);
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{tid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Only what was read while the notification was valid is the
        // caller's: if it died (and the pid was reused) drop it.
        let valid = self.id_valid(id);
        self.send_continue(id);
        if !valid {
            return None;
        }
        // A process that made itself non-dumpable before exec cannot hide:
        // it is still recorded, without what only its memory holds.
        let (path, argv) = info.unwrap_or_else(|| ("[brig: memory unreadable]".into(), vec![]));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let pid = field("Tgid:").unwrap_or(tid as i64) as i32;
        let ppid = field("PPid:").unwrap_or(0) as i32;
        let uid = field("Uid:").unwrap_or(-1) as u32;
        self.remember(pid);
        Some(wire::ProcessExec {
            pid,
            ppid,
            uid,
            argv,
            path,
            cwd,
            time,
        })
    }

    fn id_valid(&self, id: u64) -> bool {
        // SAFETY: ID_VALID reads a u64.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_ID_VALID, &id as *const u64) == 0 }
    }

    fn send_continue(&self, id: u64) {
        let mut resp = vec![0u8; self.resp_size.max(24)];
        resp[0..8].copy_from_slice(&id.to_ne_bytes());
        resp[20..24].copy_from_slice(&SECCOMP_USER_NOTIF_FLAG_CONTINUE.to_ne_bytes());
        // SAFETY: SEND reads a seccomp_notif_resp; ENOENT (caller gone) is fine.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_SEND, resp.as_ptr()) };
    }

    fn remember(&mut self, pid: i32) {
        if self.seen.len() >= SEEN_PRUNE {
            // Processes reaped by their own parents never come back to init.
            self.seen
                .retain(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        }
        self.seen.insert(pid);
    }

    /// Init reaped `pid`: whether it had seen it exec (and forget it).
    pub fn reaped(&mut self, pid: i32) -> bool {
        self.seen.remove(&pid)
    }
}

/// The path and argv of an execve/execveat call, read from the caller's memory.
fn read_target(tid: i32, nr: libc::c_long, args: &[u64]) -> Option<(String, Vec<String>)> {
    let mem = std::fs::File::open(format!("/proc/{tid}/mem")).ok()?;
    let (path_ptr, argv_ptr) = if nr == libc::SYS_execveat {
        (args[1], args[2])
    } else {
        (args[0], args[1])
    };
    let mut path = read_str(&mem, path_ptr).unwrap_or_default();
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
    if argv_ptr != 0 {
        for i in 0..=MAX_ARGS {
            let mut p = [0u8; 8];
            if pread(&mem, &mut p, argv_ptr + 8 * i as u64) != 8 {
                break;
            }
            let p = u64::from_ne_bytes(p);
            if p == 0 {
                break;
            }
            if i == MAX_ARGS {
                argv.push("[brig: more arguments not captured]".to_string());
                break;
            }
            argv.push(read_str(&mem, p).unwrap_or_default());
        }
    }
    Some((path, argv))
}

fn pread(f: &std::fs::File, buf: &mut [u8], at: u64) -> usize {
    use std::os::unix::fs::FileExt;
    f.read_at(buf, at).unwrap_or(0)
}

/// A NUL-terminated string at `addr`, read in pieces that do not cross a
/// page (the next page may be unmapped), capped at [`MAX_STR`].
fn read_str(f: &std::fs::File, addr: u64) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < MAX_STR {
        let room = (4096 - (at % 4096)) as usize;
        let mut chunk = vec![0u8; room.min(MAX_STR - out.len())];
        let n = pread(f, &mut chunk, at);
        if n == 0 {
            break;
        }
        if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    Some(String::from_utf8_lossy(&out).into_owned() + "[brig: truncated]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_and_argv_from_own_memory() {
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let a = std::ffi::CString::new("hello").unwrap();
        let b = std::ffi::CString::new("world").unwrap();
        let argv = [a.as_ptr() as u64, b.as_ptr() as u64, 0u64];
        assert_eq!(read_str(&mem, a.as_ptr() as u64).as_deref(), Some("hello"));
        let (path, args) = read_target(
            std::process::id() as i32,
            libc::SYS_execve,
            &[a.as_ptr() as u64, argv.as_ptr() as u64, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(path, "hello");
        assert_eq!(args, vec!["hello", "world"]);
    }
}
