//! `brig oci-runtime ...`: the `native` runtime, an OCI runtime CLI
//! (create/start/run/kill/delete/state, as runc and crun have) implemented
//! with youki's libcontainer inside brig's own binary.
//!
//! It runs as a short-lived child of brig, dispatched before any thread
//! exists (libcontainer forks). The container's init inherits this
//! process's stdin/stdout/stderr, which is how brig hands it the control
//! pipes; `create` (and `run --detach`) exit once the container exists, and
//! the init is then re-parented to brig (a child subreaper, see
//! [`crate::sandbox`]). libcontainer is built without libseccomp: the spec
//! must not carry `linux.seccomp` (brig's init installs its own filter).
//!
//! Global flags: `--root DIR` (state, default /run/brig/native); `--log`,
//! `--log-format` and `--systemd-cgroup` are accepted for compatibility
//! with callers of runc and ignored (errors go to stderr).

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;

const DEFAULT_ROOT: &str = "/run/brig/native";

const USAGE: &str = "usage: brig oci-runtime [--root DIR] COMMAND
  create [--bundle DIR] [--pid-file FILE] ID
  start ID
  run [--bundle DIR] [--pid-file FILE] [--detach] ID
  kill [--all] ID [SIGNAL]
  delete [--force] ID
  state ID";

/// Entry point of `brig oci-runtime <args>`; returns the exit code.
pub fn cli_main(args: &[String]) -> i32 {
    match run_cli(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brig oci-runtime: {e}");
            1
        }
    }
}

/// A parsed sub-command's flags and positional arguments.
#[derive(Debug, Default)]
struct Cmd {
    bundle: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    detach: bool,
    all: bool,
    force: bool,
    positional: Vec<String>,
}

fn take_value(args: &[String], i: &mut usize, flag: &str) -> Result<String, String> {
    // Accept both `--flag value` and `--flag=value`.
    if let Some(v) = args[*i].strip_prefix(&format!("{flag}=")) {
        return Ok(v.to_string());
    }
    *i += 1;
    args.get(*i)
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
}

fn flag_is(arg: &str, names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| arg == *n || arg.starts_with(&format!("{n}=")))
}

fn run_cli(args: &[String]) -> Result<i32, String> {
    let mut root = PathBuf::from(DEFAULT_ROOT);
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        let a = &args[i];
        if flag_is(a, &["--root"]) {
            root = PathBuf::from(take_value(args, &mut i, "--root")?);
        } else if flag_is(a, &["--log", "--log-format"]) {
            if !a.contains('=') {
                i += 1;
            }
        } else if a == "--systemd-cgroup" || a == "--debug" {
            // accepted, no effect
        } else {
            return Err(format!("unknown global flag {a}\n{USAGE}"));
        }
        i += 1;
    }
    let sub = args
        .get(i)
        .ok_or_else(|| format!("no command\n{USAGE}"))?
        .clone();
    let rest = &args[i + 1..];
    let mut cmd = Cmd::default();
    let mut j = 0;
    while j < rest.len() {
        let a = &rest[j];
        if flag_is(a, &["--bundle", "-b"]) {
            let flag = if a.starts_with("-b") {
                "-b"
            } else {
                "--bundle"
            };
            cmd.bundle = Some(PathBuf::from(take_value(rest, &mut j, flag)?));
        } else if flag_is(a, &["--pid-file"]) {
            cmd.pid_file = Some(PathBuf::from(take_value(rest, &mut j, "--pid-file")?));
        } else if a == "--detach" || a == "-d" {
            cmd.detach = true;
        } else if a == "--all" || a == "-a" {
            cmd.all = true;
        } else if a == "--force" || a == "-f" {
            cmd.force = true;
        } else if a == "--no-new-keyring" || a == "--no-pivot" {
            // accepted, no effect (brig's spec never needs a keyring)
        } else if a.starts_with('-') && a.len() > 1 {
            return Err(format!("unknown flag {a} for {sub}\n{USAGE}"));
        } else {
            cmd.positional.push(a.clone());
        }
        j += 1;
    }
    let id = cmd
        .positional
        .first()
        .cloned()
        .ok_or_else(|| format!("{sub}: missing container id\n{USAGE}"))?;
    match sub.as_str() {
        "create" => create(&root, &id, &cmd).map(|_| 0),
        "start" => start(&root, &id).map(|_| 0),
        "run" => {
            let pid = create(&root, &id, &cmd)?;
            if let Err(e) = start(&root, &id) {
                let _ = delete(&root, &id, true);
                return Err(e);
            }
            if cmd.detach {
                Ok(0)
            } else {
                wait_for(pid)
            }
        }
        "kill" => {
            let sig = cmd
                .positional
                .get(1)
                .map(String::as_str)
                .unwrap_or("SIGTERM");
            kill(&root, &id, sig, cmd.all).map(|_| 0)
        }
        "delete" => delete(&root, &id, cmd.force).map(|_| 0),
        "state" => state(&root, &id).map(|_| 0),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// libcontainer's error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn create(root: &Path, id: &str, cmd: &Cmd) -> Result<i32, String> {
    let bundle = match &cmd.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().map_err(|e| format!("current dir: {e}"))?,
    };
    std::fs::create_dir_all(root)
        .map_err(|e| format!("creating state root {}: {e}", root.display()))?;
    let container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(root)
        .and_then(|b| b.with_pid_file(cmd.pid_file.as_ref()))
        .and_then(|b| b.validate_id())
        .map_err(|e| format!("create {id}: {}", chain(&e)))?
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("create {id} (bundle {}): {}", bundle.display(), chain(&e)))?;
    let pid = container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| format!("create {id}: the container has no init pid"))?;
    if let Err(e) = loopback_up(pid) {
        let _ = delete(root, id, true);
        return Err(format!("create {id}: network: {e}"));
    }
    Ok(pid)
}

/// Bring up `lo` in the container's new network namespace. A fresh netns
/// has it down, and the sandbox (no capabilities) cannot raise it itself;
/// without it even loopback-only work (a test server on 127.0.0.1) fails.
/// This helper process is single-threaded and exits right after, so moving
/// it into the namespace is harmless.
fn loopback_up(pid: i32) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening the network namespace of {pid}: {e}"))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering the network namespace of {pid}: {e}"))?;
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let sock = std::os::fd::OwnedFd::from_raw_fd(sock);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(format!(
                "SIOCSIFFLAGS lo up: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn load(root: &Path, id: &str) -> Result<Container, String> {
    let dir = root.join(id);
    if !dir.exists() {
        return Err(format!(
            "container {id} does not exist in {}",
            root.display()
        ));
    }
    Container::load(dir).map_err(|e| format!("loading container {id}: {}", chain(&e)))
}

fn start(root: &Path, id: &str) -> Result<(), String> {
    load(root, id)?
        .start()
        .map_err(|e| format!("start {id}: {}", chain(&e)))
}

fn kill(root: &Path, id: &str, sig: &str, all: bool) -> Result<(), String> {
    let signal = match sig.parse::<i32>() {
        Ok(n) => Signal::try_from(n).map_err(|e| chain(&e)),
        Err(_) => Signal::try_from(sig).map_err(|e| chain(&e)),
    }
    .map_err(|e| format!("kill {id}: bad signal {sig:?}: {e}"))?;
    load(root, id)?
        .kill(signal, all)
        .map_err(|e| format!("kill {id}: {}", chain(&e)))
}

fn delete(root: &Path, id: &str, force: bool) -> Result<(), String> {
    let mut c = load(root, id)?;
    c.delete(force)
        .map_err(|e| format!("delete {id}: {}", chain(&e)))
}

fn state(root: &Path, id: &str) -> Result<(), String> {
    let mut c = load(root, id)?;
    c.refresh_status()
        .map_err(|e| format!("state {id}: {}", chain(&e)))?;
    let status = match c.status() {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    };
    let v = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": c.pid().map(|p| p.as_raw()).unwrap_or(0),
        "bundle": c.bundle(),
    });
    println!("{v}");
    Ok(())
}

/// `run` without `--detach`: wait for the init and exit as it did.
fn wait_for(pid: i32) -> Result<i32, String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for container init {pid}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn usage_errors_are_explained() {
        let e = run_cli(&s(&["--root"])).unwrap_err();
        assert!(e.contains("--root needs a value"), "{e}");
        let e = run_cli(&s(&["--root", "/tmp/x", "frobnicate", "id1"])).unwrap_err();
        assert!(e.contains("unknown command"), "{e}");
        let e = run_cli(&s(&["start"])).unwrap_err();
        assert!(e.contains("missing container id"), "{e}");
        let e = run_cli(&s(&["--root=/nonexistent/brig-test", "state", "nope"])).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
