//! brig's seccomp allow-list, built with seccompiler.
//!
//! `brig sandbox-init` installs it on itself (all threads, TSYNC) before it
//! serves any command, so every process in the sandbox inherits it. It is an
//! ALLOW-list: the syscalls ordinary development work needs (shells,
//! coreutils, python, gcc/make, git, cargo, node) are allowed, a few only
//! with safe arguments, and everything else fails with `EPERM`. Among what is
//! therefore denied: ptrace, process_vm_*, mount and the new mount API,
//! pivot_root, chroot, bpf, keyctl/add_key/request_key, kexec_*, module
//! loading, io_uring_*, userfaultfd, perf_event_open, unshare, setns,
//! open_by_handle_at, reboot, swap, syslog, acct, clock setting, quotactl,
//! fanotify, iopl/ioperm.
//!
//! Two filters are installed. The kernel runs every filter and keeps the
//! most restrictive answer (ERRNO beats ALLOW), so:
//! 1. the allow-list: listed (and argument-checked) syscalls → ALLOW, all
//!    else → `EPERM`;
//! 2. `clone3` → `ENOSYS`, all else → ALLOW. `clone3` passes its flags in
//!    memory where BPF cannot see them, so it is refused as "not
//!    implemented": glibc then falls back to `clone`, whose flags the
//!    allow-list does check (no `CLONE_NEW*`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The layer name reported in `Ready.layers`.
pub const LAYER: &str = "seccomp:allowlist";

/// Every namespace-creating clone flag (CLONE_NEWTIME is 0x80, in CSIGNAL's
/// neighbourhood, so it is spelled out).
pub const CLONE_NEW_MASK: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | 0x80) as u64;

/// Socket families a sandboxed program may open. AF_NETLINK stays for
/// getaddrinfo/iproute queries; AF_PACKET, AF_VSOCK, AF_ALG, ... are denied.
pub const ALLOWED_SOCKET_FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// Terminal ioctls that inject input into, or drive, a terminal another
/// process reads from.
const DENIED_IOCTLS: [u64; 2] = [libc::TIOCSTI, libc::TIOCLINUX];

#[cfg(target_arch = "x86_64")]
fn target_arch() -> Result<TargetArch, String> {
    Ok(TargetArch::x86_64)
}
#[cfg(target_arch = "aarch64")]
fn target_arch() -> Result<TargetArch, String> {
    Ok(TargetArch::aarch64)
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn target_arch() -> Result<TargetArch, String> {
    Err(format!(
        "brig has no seccomp allow-list for {}",
        std::env::consts::ARCH
    ))
}

/// Syscalls allowed whatever their arguments.
fn unconditional() -> Vec<libc::c_long> {
    #[allow(unused_mut)]
    let mut v: Vec<libc::c_long> = vec![
        // I/O on descriptors
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_close_range,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_fcntl,
        libc::SYS_flock,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_sync,
        libc::SYS_syncfs,
        libc::SYS_sync_file_range,
        libc::SYS_ftruncate,
        libc::SYS_truncate,
        libc::SYS_fallocate,
        libc::SYS_fadvise64,
        libc::SYS_readahead,
        libc::SYS_sendfile,
        libc::SYS_splice,
        libc::SYS_tee,
        libc::SYS_vmsplice,
        libc::SYS_copy_file_range,
        libc::SYS_pipe2,
        // files and directories (Landlock and the read-only root decide where)
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        libc::SYS_getdents64,
        libc::SYS_getcwd,
        libc::SYS_chdir,
        libc::SYS_fchdir,
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_unlinkat,
        libc::SYS_renameat2,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_readlinkat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchmodat2,
        libc::SYS_fchown,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_umask,
        libc::SYS_getxattr,
        libc::SYS_lgetxattr,
        libc::SYS_fgetxattr,
        libc::SYS_listxattr,
        libc::SYS_llistxattr,
        libc::SYS_flistxattr,
        libc::SYS_setxattr,
        libc::SYS_lsetxattr,
        libc::SYS_fsetxattr,
        libc::SYS_removexattr,
        libc::SYS_lremovexattr,
        libc::SYS_fremovexattr,
        libc::SYS_inotify_init1,
        libc::SYS_inotify_add_watch,
        libc::SYS_inotify_rm_watch,
        // memory
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_msync,
        libc::SYS_mincore,
        libc::SYS_madvise,
        libc::SYS_mlock,
        libc::SYS_mlock2,
        libc::SYS_munlock,
        libc::SYS_mlockall,
        libc::SYS_munlockall,
        libc::SYS_membarrier,
        libc::SYS_memfd_create,
        libc::SYS_get_mempolicy,
        libc::SYS_set_mempolicy,
        libc::SYS_mbind,
        libc::SYS_pkey_alloc,
        libc::SYS_pkey_free,
        libc::SYS_pkey_mprotect,
        libc::SYS_mseal,
        // processes and threads (clone is argument-checked below)
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_kill,
        libc::SYS_tkill,
        libc::SYS_tgkill,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_send_signal,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_gettid,
        libc::SYS_getpgid,
        libc::SYS_setpgid,
        libc::SYS_getsid,
        libc::SYS_setsid,
        libc::SYS_set_tid_address,
        libc::SYS_set_robust_list,
        libc::SYS_get_robust_list,
        libc::SYS_rseq,
        libc::SYS_futex,
        libc::SYS_futex_waitv,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_getparam,
        libc::SYS_sched_setparam,
        libc::SYS_sched_getscheduler,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_get_priority_max,
        libc::SYS_sched_get_priority_min,
        libc::SYS_sched_rr_get_interval,
        libc::SYS_sched_getattr,
        libc::SYS_sched_setattr,
        libc::SYS_getpriority,
        libc::SYS_setpriority,
        libc::SYS_ioprio_get,
        libc::SYS_ioprio_set,
        libc::SYS_prctl,
        libc::SYS_prlimit64,
        libc::SYS_getrusage,
        libc::SYS_times,
        libc::SYS_sysinfo,
        libc::SYS_uname,
        libc::SYS_getcpu,
        libc::SYS_getrandom,
        // credentials (all capabilities are dropped, so these can only narrow)
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getresuid,
        libc::SYS_getresgid,
        libc::SYS_getgroups,
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_setgroups,
        libc::SYS_setfsuid,
        libc::SYS_setfsgid,
        libc::SYS_capget,
        libc::SYS_capset,
        // self-restriction only ever narrows what a process may do
        libc::SYS_seccomp,
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
        // signals
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigpending,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_rt_sigsuspend,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_signalfd4,
        // time
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_nanosleep,
        libc::SYS_getitimer,
        libc::SYS_setitimer,
        libc::SYS_timer_create,
        libc::SYS_timer_settime,
        libc::SYS_timer_gettime,
        libc::SYS_timer_getoverrun,
        libc::SYS_timer_delete,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        // event loops
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        // Linux AIO (databases, some build tools); io_uring stays denied
        libc::SYS_io_setup,
        libc::SYS_io_destroy,
        libc::SYS_io_submit,
        libc::SYS_io_cancel,
        libc::SYS_io_getevents,
        // System V / POSIX IPC (the sandbox has its own IPC namespace)
        libc::SYS_shmget,
        libc::SYS_shmat,
        libc::SYS_shmdt,
        libc::SYS_shmctl,
        libc::SYS_semget,
        libc::SYS_semop,
        libc::SYS_semctl,
        libc::SYS_semtimedop,
        libc::SYS_msgget,
        libc::SYS_msgsnd,
        libc::SYS_msgrcv,
        libc::SYS_msgctl,
        libc::SYS_mq_open,
        libc::SYS_mq_unlink,
        libc::SYS_mq_timedsend,
        libc::SYS_mq_timedreceive,
        libc::SYS_mq_notify,
        libc::SYS_mq_getsetattr,
        // sockets (socket() itself is argument-checked below)
        libc::SYS_socketpair,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvmmsg,
        libc::SYS_shutdown,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        // denied through the second filter (ENOSYS), so glibc falls back to clone
        libc::SYS_clone3,
    ];
    // Legacy syscalls that only x86_64 has (aarch64 has just the *at forms).
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_open,
        libc::SYS_creat,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_mkdir,
        libc::SYS_rmdir,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_link,
        libc::SYS_unlink,
        libc::SYS_symlink,
        libc::SYS_readlink,
        libc::SYS_chmod,
        libc::SYS_chown,
        libc::SYS_lchown,
        libc::SYS_utime,
        libc::SYS_utimes,
        libc::SYS_futimesat,
        libc::SYS_mknod,
        libc::SYS_getdents,
        libc::SYS_dup2,
        libc::SYS_pipe,
        libc::SYS_poll,
        libc::SYS_select,
        libc::SYS_epoll_create,
        libc::SYS_epoll_wait,
        libc::SYS_eventfd,
        libc::SYS_signalfd,
        libc::SYS_inotify_init,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_pause,
        libc::SYS_alarm,
        libc::SYS_time,
        libc::SYS_getpgrp,
        libc::SYS_getrlimit,
        libc::SYS_setrlimit,
        libc::SYS_arch_prctl,
    ]);
    v
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("static seccomp condition is valid")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("static seccomp rule is valid")
}

/// Syscalls allowed only with some arguments (rules are OR'ed, the
/// conditions of one rule AND'ed).
fn conditional() -> Vec<(libc::c_long, Vec<SeccompRule>)> {
    use SeccompCmpArgLen::Dword;
    vec![
        // The kernel only reads the low 32 bits of clone's flags, so a Dword
        // compare sees exactly what it acts on.
        (
            libc::SYS_clone,
            vec![rule(vec![cond(
                0,
                Dword,
                SeccompCmpOp::MaskedEq(CLONE_NEW_MASK),
                0,
            )])],
        ),
        (
            libc::SYS_socket,
            ALLOWED_SOCKET_FAMILIES
                .iter()
                .map(|&f| rule(vec![cond(0, Dword, SeccompCmpOp::Eq, f as u64)]))
                .collect(),
        ),
        (
            libc::SYS_ioctl,
            vec![rule(
                DENIED_IOCTLS
                    .iter()
                    .map(|&c| cond(1, Dword, SeccompCmpOp::Ne, c))
                    .collect(),
            )],
        ),
        // Only the default persona (PER_LINUX) and the query (0xffffffff):
        // other personas switch off ASLR or change the ABI.
        (
            libc::SYS_personality,
            vec![
                rule(vec![cond(0, Dword, SeccompCmpOp::Eq, 0)]),
                rule(vec![cond(0, Dword, SeccompCmpOp::Eq, 0xffff_ffff)]),
            ],
        ),
    ]
}

/// The allow-list filter: listed syscalls → ALLOW, everything else → EPERM.
pub fn allowlist_program() -> Result<BpfProgram, String> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in unconditional() {
        rules.insert(nr, vec![]);
    }
    for (nr, r) in conditional() {
        rules.insert(nr, r);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| format!("building the allow-list: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("compiling the allow-list: {e}"))
}

/// The second filter: clone3 → ENOSYS, everything else → ALLOW.
pub fn clone3_program() -> Result<BpfProgram, String> {
    let arch = target_arch()?;
    let rules = BTreeMap::from([(libc::SYS_clone3, vec![])]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| format!("building the clone3 filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("compiling the clone3 filter: {e}"))
}

/// Install both filters on every thread of the calling process (TSYNC).
/// Also sets no_new_privs, which seccomp requires without CAP_SYS_ADMIN.
/// An error names what failed; the caller must not go on without it.
pub fn apply() -> Result<&'static str, String> {
    let allow = allowlist_program()?;
    let clone3 = clone3_program()?;
    // clone3's filter first: once the allow-list is in, installing more
    // filters still works (seccomp is allowed) but there is no need to rely on it.
    seccompiler::apply_filter_all_threads(&clone3)
        .map_err(|e| format!("installing the clone3 filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&allow)
        .map_err(|e| format!("installing the allow-list: {e}"))?;
    Ok(LAYER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seccompiler::sock_filter;

    // Classic-BPF opcodes seccompiler emits.
    const LD_W_ABS: u16 = 0x20;
    const ALU_AND_K: u16 = 0x54;
    const JA: u16 = 0x05;
    const JEQ_K: u16 = 0x15;
    const JGT_K: u16 = 0x25;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;

    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;

    /// A tiny interpreter for the subset of classic BPF seccompiler emits,
    /// so the tests check what the kernel will decide, not how the program looks.
    fn run(prog: &[sock_filter], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        // struct seccomp_data: nr (u32), arch (u32), ip (u64), args[6] (u64 each)
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&(nr as u32).to_ne_bytes());
        data.extend_from_slice(&arch.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let ins = &prog[pc];
            pc += 1;
            match ins.code {
                LD_W_ABS => {
                    let k = ins.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                ALU_AND_K => acc &= ins.k,
                JA => pc += ins.k as usize,
                JEQ_K | JGT_K | JGE_K => {
                    let hit = match ins.code {
                        JEQ_K => acc == ins.k,
                        JGT_K => acc > ins.k,
                        _ => acc >= ins.k,
                    };
                    pc += if hit { ins.jt } else { ins.jf } as usize;
                }
                RET_K => return ins.k,
                other => panic!("unexpected BPF opcode {other:#x}"),
            }
        }
    }

    fn native_arch() -> u32 {
        if cfg!(target_arch = "x86_64") {
            62 | 0x8000_0000 | 0x4000_0000
        } else {
            183 | 0x8000_0000 | 0x4000_0000
        }
    }

    /// What the kernel returns with both filters installed: the most
    /// restrictive action wins (ERRNO < ALLOW in precedence order).
    fn decide(nr: libc::c_long, args: [u64; 6]) -> Result<(), i32> {
        let a = run(&allowlist_program().unwrap(), native_arch(), nr, args);
        let b = run(&clone3_program().unwrap(), native_arch(), nr, args);
        for r in [a, b] {
            assert!(
                r == RET_ALLOW || r & 0xffff_0000 == RET_ERRNO,
                "unexpected action {r:#x}"
            );
        }
        // On a tie between two ERRNOs the kernel keeps the newest filter's
        // (the allow-list); that never arises for clone3, allowed by the list.
        match (a, b) {
            (RET_ALLOW, RET_ALLOW) => Ok(()),
            (RET_ALLOW, e) | (e, _) => Err((e & 0xffff) as i32),
        }
    }

    #[test]
    fn programs_fit_the_kernel_limit() {
        let p = allowlist_program().unwrap();
        assert!(
            !p.is_empty() && p.len() < 4096,
            "allow-list is {} instructions",
            p.len()
        );
        assert!(clone3_program().unwrap().len() < 16);
    }

    #[test]
    fn ordinary_syscalls_are_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_futex,
            libc::SYS_rseq,
            libc::SYS_getrandom,
            libc::SYS_connect,
        ] {
            assert_eq!(decide(nr, [0; 6]), Ok(()), "syscall {nr}");
        }
    }

    /// What init's process capture needs once the allow-list is in: the
    /// seccomp syscall (for the notification filter), the listener's ioctls,
    /// and reading /proc/<pid>/mem with openat + pread64 (never ptrace or
    /// process_vm_readv, which stay denied).
    #[test]
    fn process_capture_syscalls_are_allowed() {
        assert_eq!(decide(libc::SYS_seccomp, [1, 1 << 3, 0, 0, 0, 0]), Ok(()));
        for req in [0xc050_2100u64, 0xc018_2101, 0x4008_2102] {
            assert_eq!(decide(libc::SYS_ioctl, [5, req, 0, 0, 0, 0]), Ok(()));
        }
        assert_eq!(decide(libc::SYS_openat, [0; 6]), Ok(()));
        assert_eq!(decide(libc::SYS_pread64, [0; 6]), Ok(()));
        assert_eq!(decide(libc::SYS_readlinkat, [0; 6]), Ok(()));
        for nr in [libc::SYS_ptrace, libc::SYS_process_vm_readv] {
            assert_eq!(decide(nr, [0; 6]), Err(libc::EPERM), "syscall {nr}");
        }
    }

    #[test]
    fn dangerous_syscalls_are_eperm() {
        let denied = [
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_bpf,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_userfaultfd,
            libc::SYS_perf_event_open,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_syslog,
            libc::SYS_acct,
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_adjtimex,
            libc::SYS_quotactl,
            libc::SYS_lookup_dcookie,
            libc::SYS_fanotify_init,
            libc::SYS_fsopen,
            libc::SYS_open_tree,
            libc::SYS_move_mount,
            libc::SYS_pidfd_getfd,
            libc::SYS_kcmp,
        ];
        for nr in denied {
            assert_eq!(decide(nr, [0; 6]), Err(libc::EPERM), "syscall {nr}");
        }
        #[cfg(target_arch = "x86_64")]
        for nr in [libc::SYS_iopl, libc::SYS_ioperm] {
            assert_eq!(decide(nr, [0; 6]), Err(libc::EPERM), "syscall {nr}");
        }
        // x32-ABI numbers (bit 30 set) share x86_64's audit arch: an
        // allow-list never matches them.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            decide(libc::SYS_read | 0x4000_0000, [0; 6]),
            Err(libc::EPERM)
        );
        // An unknown or future syscall number is denied too.
        assert_eq!(decide(1000, [0; 6]), Err(libc::EPERM));
    }

    #[test]
    fn clone_is_checked_and_clone3_is_enosys() {
        let fork_flags =
            (libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
        let thread_flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(decide(libc::SYS_clone, [fork_flags, 0, 0, 0, 0, 0]), Ok(()));
        assert_eq!(
            decide(libc::SYS_clone, [thread_flags, 0, 0, 0, 0, 0]),
            Ok(())
        );
        for ns in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWCGROUP,
            0x80, // CLONE_NEWTIME
        ] {
            let flags = fork_flags | ns as u64;
            assert_eq!(
                decide(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]),
                Err(libc::EPERM),
                "flag {ns:#x}"
            );
        }
        assert_eq!(decide(libc::SYS_clone3, [0; 6]), Err(libc::ENOSYS));
    }

    #[test]
    fn socket_families_and_personality_and_ioctl() {
        for f in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(decide(libc::SYS_socket, [f as u64, 1, 0, 0, 0, 0]), Ok(()));
        }
        for f in [
            libc::AF_PACKET,
            libc::AF_VSOCK,
            libc::AF_ALG,
            libc::AF_BLUETOOTH,
            libc::AF_KEY,
        ] {
            assert_eq!(
                decide(libc::SYS_socket, [f as u64, 3, 0, 0, 0, 0]),
                Err(libc::EPERM),
                "family {f}"
            );
        }
        assert_eq!(decide(libc::SYS_personality, [0, 0, 0, 0, 0, 0]), Ok(()));
        assert_eq!(
            decide(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]),
            Ok(())
        );
        // ADDR_NO_RANDOMIZE
        assert_eq!(
            decide(libc::SYS_personality, [0x0040000, 0, 0, 0, 0, 0]),
            Err(libc::EPERM)
        );
        assert_eq!(
            decide(libc::SYS_ioctl, [0, libc::TCGETS, 0, 0, 0, 0]),
            Ok(())
        );
        assert_eq!(
            decide(libc::SYS_ioctl, [0, libc::TIOCSTI, 0, 0, 0, 0]),
            Err(libc::EPERM)
        );
        // High bits the kernel drops do not smuggle TIOCSTI past the compare.
        assert_eq!(
            decide(
                libc::SYS_ioctl,
                [0, (1u64 << 32) | libc::TIOCSTI, 0, 0, 0, 0]
            ),
            Err(libc::EPERM)
        );
    }

    #[test]
    fn foreign_architectures_are_killed() {
        let p = allowlist_program().unwrap();
        // i386 (AUDIT_ARCH_I386): the 32-bit syscall table would bypass the list.
        assert_eq!(
            run(&p, 3 | 0x4000_0000, libc::SYS_read, [0; 6]),
            0x8000_0000
        );
    }
}
