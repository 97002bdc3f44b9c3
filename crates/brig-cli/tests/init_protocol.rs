//! `brig sandbox-init` driven through the host-side `Channel`, run as a plain
//! child process (no container): the protocol, PTYs, the dead-man switch,
//! and the seccomp and Landlock guards init applies to itself and to every
//! command it starts. Each test's init exits when its channel is dropped,
//! killing whatever it started; `Init::drop` makes sure of it.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brig_core::exec::ExitStatus;
use brig_core::wire::{Ready, Spawn};
use brig_core::ErrorKind;
use brig_sandbox::channel::{Channel, ExecEvent, ExecHandle};
use tokio::process::{Child, Command};

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const T: Duration = Duration::from_secs(20);

struct Init {
    chan: Option<Arc<Channel>>,
    child: Child,
    ready: Ready,
    dir: tempfile::TempDir,
}

impl Init {
    fn chan(&self) -> &Arc<Channel> {
        self.chan.as_ref().unwrap()
    }
    fn dir(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }
    fn spawn_msg(&self, argv: &[&str]) -> Spawn {
        Spawn {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("PATH".into(), PATH.into()),
                ("HOME".into(), self.dir()),
                ("TMPDIR".into(), self.dir()),
                ("LANG".into(), "C".into()),
            ],
            cwd: self.dir(),
            tty: None,
            decided: false,
        }
    }
    async fn spawn(&self, argv: &[&str]) -> ExecHandle {
        self.chan()
            .spawn(self.spawn_msg(argv))
            .await
            .expect("spawn frame sent")
    }
    async fn run(&self, argv: &[&str]) -> Output {
        let h = self.spawn(argv).await;
        collect(h).await
    }
    /// Close init's stdin and wait for it to exit; returns how long it took.
    async fn hang_up(&mut self) -> Duration {
        let t = Instant::now();
        drop(self.chan.take());
        tokio::time::timeout(T, self.child.wait())
            .await
            .expect("init exits after its stdin closes")
            .unwrap();
        t.elapsed()
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        // Normally closing stdin ends init (and kills its commands); if it
        // hangs, kill it so a failing test leaves nothing behind.
        drop(self.chan.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }
}

fn config(dir: &str) -> String {
    serde_json::json!({
        "rw_paths": [dir, "/dev/null", "/dev/ptmx", "/dev/pts", "/dev/tty"],
        "landlock": true,
        "seccomp": true,
    })
    .to_string()
}

fn init_command(wrapper: &[&str], config: &str) -> Command {
    let brig = env!("CARGO_BIN_EXE_brig");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(brig),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(brig);
            c
        }
    };
    cmd.arg("sandbox-init")
        .arg(config)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

async fn start_with(wrapper: &[&str], dir: tempfile::TempDir) -> Init {
    let cfg = config(dir.path().to_str().unwrap());
    spawn_ready(wrapper, &cfg, dir).await
}

/// Init started with `cfg`, once it is ready.
async fn spawn_ready(wrapper: &[&str], cfg: &str, dir: tempfile::TempDir) -> Init {
    let mut child = init_command(wrapper, cfg)
        .spawn()
        .expect("start brig sandbox-init");
    let chan = Channel::new(child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let ready = chan.wait_ready(T).await.expect("init becomes ready");
    Init {
        chan: Some(chan),
        child,
        ready,
        dir,
    }
}

async fn start() -> Init {
    start_with(&[], tempfile::tempdir().unwrap()).await
}

/// Init with process capture, served by the supervisor or (`in_init`) by
/// init's own loop, holding execs whose argv has `brigheld`.
async fn start_capture(in_init: bool) -> Init {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cfg = serde_json::json!({
        "rw_paths": [d, "/dev/null"],
        "landlock": true,
        "seccomp": true,
        "capture": true,
        "capture_in_init": in_init,
        "hold_words": ["brigheld"],
    })
    .to_string();
    spawn_ready(&[], &cfg, dir).await
}

#[derive(Debug, Default)]
struct Output {
    pid: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    failed: Option<String>,
}

impl Output {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code)
    }
}

async fn collect(mut h: ExecHandle) -> Output {
    let mut o = Output::default();
    tokio::time::timeout(T, async {
        while let Some(ev) = h.events.recv().await {
            match ev {
                ExecEvent::Started { pid } => o.pid = Some(pid),
                ExecEvent::Stdout(b) => o.stdout.extend(b),
                ExecEvent::Stderr(b) => o.stderr.extend(b),
                ExecEvent::Exited(s) => {
                    o.status = Some(s);
                    break;
                }
                ExecEvent::Failed(e) => {
                    o.failed = Some(e);
                    break;
                }
            }
        }
    })
    .await
    .expect("command finishes");
    o
}

async fn started(h: &mut ExecHandle) -> i32 {
    match tokio::time::timeout(T, h.events.recv()).await.unwrap() {
        Some(ExecEvent::Started { pid }) => pid,
        other => panic!("expected Started, got {other:?}"),
    }
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as dead: it runs nothing and holds nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .map(|i| !s[i + 2..].starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_reports_every_layer() {
    let init = start().await;
    let layers = &init.ready.layers;
    for l in ["no_new_privs", "nondumpable", "seccomp:allowlist"] {
        assert!(layers.iter().any(|x| x == l), "{l} missing from {layers:?}");
    }
    assert!(
        layers.iter().any(|x| x.starts_with("landlock:abi")),
        "{layers:?}"
    );
    assert_eq!((init.ready.uid, init.ready.gid), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_and_exit_codes() {
    let init = start().await;
    let o = init.run(&["sh", "-c", "echo hello; exit 3"]).await;
    assert!(o.pid.unwrap() > 0);
    assert_eq!(o.out(), "hello\n");
    assert_eq!(o.code(), Some(3));
    assert_eq!(init.run(&["true"]).await.code(), Some(0));
    assert_eq!(init.run(&["/bin/false"]).await.code(), Some(1));
    // Exactly the given environment, nothing of init's or the test's.
    let o = init.run(&["env"]).await;
    let mut vars: Vec<_> = o
        .out()
        .lines()
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    vars.sort();
    assert_eq!(vars, ["HOME", "LANG", "PATH", "TMPDIR"]);
    // ... and the given working directory.
    assert_eq!(init.run(&["pwd"]).await.out().trim(), init.dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_and_stderr_are_separate() {
    let init = start().await;
    let o = init
        .run(&["sh", "-c", "echo out; echo err >&2; echo out2"])
        .await;
    assert_eq!(o.out(), "out\nout2\n");
    assert_eq!(o.err(), "err\n");
    assert_eq!(o.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_round_trips_even_when_large() {
    let init = start().await;
    let h = init.spawn(&["cat"]).await;
    h.stdin(b"abc\n".to_vec()).await.unwrap();
    h.close_stdin().await.unwrap();
    let o = collect(h).await;
    assert_eq!((o.out().as_str(), o.code()), ("abc\n", Some(0)));

    // More than the pipes hold in both directions at once: init must keep
    // draining cat's stdout while it feeds cat's stdin.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let h = init.spawn(&["cat"]).await;
    h.stdin(data.clone()).await.unwrap();
    h.close_stdin().await.unwrap();
    let o = collect(h).await;
    assert_eq!(o.code(), Some(0));
    assert!(
        o.stdout == data,
        "cat returned {} bytes of {}",
        o.stdout.len(),
        data.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_reach_the_command() {
    let init = start().await;
    let mut h = init.spawn(&["sleep", "100"]).await;
    started(&mut h).await;
    let t = Instant::now();
    h.signal(15).await.unwrap();
    let o = collect(h).await;
    assert_eq!(o.status.unwrap().signal, Some(15), "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(5));

    // The whole process group gets it, background jobs included.
    let mut h = init.spawn(&["sh", "-c", "sleep 100 & echo $!; wait"]).await;
    started(&mut h).await;
    let bg = match h.events.recv().await {
        Some(ExecEvent::Stdout(b)) => String::from_utf8(b).unwrap().trim().parse::<i32>().unwrap(),
        other => panic!("expected the background pid, got {other:?}"),
    };
    assert!(alive(bg));
    h.signal(9).await.unwrap();
    let o = collect(h).await;
    assert_eq!(o.status.unwrap().signal, Some(9));
    let t = Instant::now();
    while alive(bg) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(bg),
        "background sleep {bg} survived SIGKILL to its group"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pty_has_the_requested_size_and_resizes() {
    let init = start().await;
    let mut s = init.spawn_msg(&["tty"]);
    s.tty = Some((24, 80));
    let o = collect(init.chan().spawn(s).await.unwrap()).await;
    assert_eq!(o.code(), Some(0), "{o:?}");
    let tty = o.out();
    assert!(tty.trim().starts_with("/dev/pts/"), "tty printed {tty:?}");
    assert!(o.stderr.is_empty(), "a PTY merges stderr into stdout");

    let mut s = init.spawn_msg(&["stty", "size"]);
    s.tty = Some((33, 111));
    let o = collect(init.chan().spawn(s).await.unwrap()).await;
    assert_eq!(o.out().trim(), "33 111");

    // Resize while running: the command reads a line, then prints its size.
    let mut s = init.spawn_msg(&["sh", "-c", "read x; stty size"]);
    s.tty = Some((24, 80));
    let mut h = init.chan().spawn(s).await.unwrap();
    started(&mut h).await;
    h.resize(50, 132).await.unwrap();
    h.stdin(b"go\n".to_vec()).await.unwrap();
    let o = collect(h).await;
    assert!(o.out().contains("50 132"), "after resize: {:?}", o.out());

    // StdinEof on a PTY sends ^D: cat sees end of input.
    let mut s = init.spawn_msg(&["cat"]);
    s.tty = Some((24, 80));
    let h = init.chan().spawn(s).await.unwrap();
    h.stdin(b"typed\n".to_vec()).await.unwrap();
    h.close_stdin().await.unwrap();
    let o = collect(h).await;
    assert_eq!(o.code(), Some(0));
    assert!(o.out().contains("typed"), "{:?}", o.out());
}

#[tokio::test(flavor = "multi_thread")]
async fn spawn_failures_are_reported() {
    let init = start().await;
    let o = init.run(&["brig-no-such-command"]).await;
    assert_eq!(
        o.failed.as_deref(),
        Some("brig-no-such-command: No such file or directory"),
        "{o:?}"
    );
    assert!(o.pid.is_none());
    let o = init.run(&["/nonexistent/tool"]).await;
    assert_eq!(
        o.failed.as_deref(),
        Some("/nonexistent/tool: No such file or directory")
    );
    let mut s = init.spawn_msg(&["true"]);
    s.cwd = "/nonexistent-brig-dir".into();
    let o = collect(init.chan().spawn(s).await.unwrap()).await;
    assert!(o
        .failed
        .unwrap()
        .contains("cannot change to /nonexistent-brig-dir"));
    // A non-executable file.
    std::fs::write(init.dir.path().join("script"), "#!/bin/sh\n").unwrap();
    let o = init.run(&["./script"]).await;
    assert_eq!(o.failed.as_deref(), Some("./script: Permission denied"));
    // init keeps serving after failures.
    assert_eq!(init.run(&["true"]).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_execs() {
    let init = start().await;
    let mut handles = Vec::new();
    for i in 0..40 {
        let script = format!(
            "sleep 0.$((RANDOM % 3)) 2>/dev/null; echo {i}; echo e{i} >&2; exit $(({i} % 7))"
        );
        handles.push(init.spawn(&["bash", "-c", &script]).await);
    }
    let outs = futures_join(handles).await;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.out(), format!("{i}\n"));
        assert_eq!(o.err(), format!("e{i}\n"));
        assert_eq!(o.code(), Some(i as i32 % 7));
    }
}

async fn futures_join(handles: Vec<ExecHandle>) -> Vec<Output> {
    let tasks: Vec<_> = handles
        .into_iter()
        .map(|h| tokio::spawn(collect(h)))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn output_larger_than_a_frame_arrives_intact() {
    let init = start().await;
    let o = init
        .run(&["sh", "-c", "seq 1 200000; seq 1 100000 >&2"])
        .await;
    let expect: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert!(o.stdout.len() > 10 * brig_core::wire::MAX_PAYLOAD);
    assert!(
        o.out() == expect,
        "stdout differs ({} bytes, expected {})",
        o.stdout.len(),
        expect.len()
    );
    let expect: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert!(o.err() == expect);
}

#[tokio::test(flavor = "multi_thread")]
async fn background_job_holding_stdout_does_not_hang_exited() {
    let init = start().await;
    let t = Instant::now();
    let o = init.run(&["sh", "-c", "sleep 30 & echo done"]).await;
    assert_eq!(o.out(), "done\n");
    assert_eq!(o.code(), Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "Exited took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_processes() {
    let init = start().await;
    let s = init.chan().status(T).await.unwrap();
    assert_eq!((s.processes, s.running), (0, 0));
    let mut a = init.spawn(&["sleep", "100"]).await;
    let mut b = init
        .spawn(&["sh", "-c", "sleep 100 & sleep 100 & wait"])
        .await;
    started(&mut a).await;
    started(&mut b).await;
    // sleep + sh + 2 sleeps; give sh a moment to fork its children.
    let t = Instant::now();
    let mut s = init.chan().status(T).await.unwrap();
    while s.processes < 4 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s = init.chan().status(T).await.unwrap();
    }
    assert_eq!((s.processes, s.running), (4, 2));
    a.signal(9).await.unwrap();
    b.signal(9).await.unwrap();
    collect(a).await;
    collect(b).await;
    let t = Instant::now();
    let mut s = init.chan().status(T).await.unwrap();
    while s.processes > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s = init.chan().status(T).await.unwrap();
    }
    assert_eq!((s.processes, s.running), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_channel_kills_everything() {
    let mut init = start().await;
    let init_pid = init.child.id().unwrap() as i32;
    let mut a = init.spawn(&["sleep", "1000"]).await;
    let a_pid = started(&mut a).await;
    // A job that left its process group and session: found through init's
    // descendants instead.
    let o = init
        .run(&["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 & echo $!"])
        .await;
    let b_pid: i32 = o.out().trim().parse().unwrap();
    assert!(alive(a_pid) && alive(b_pid));
    let chan = init.chan().clone();
    drop(a);
    drop(chan);
    let took = init.hang_up().await;
    assert!(took < Duration::from_secs(2), "init took {took:?} to exit");
    assert!(!alive(init_pid));
    let t = Instant::now();
    while (alive(a_pid) || alive(b_pid)) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(a_pid), "sleep {a_pid} outlived init");
    assert!(!alive(b_pid), "setsid sleep {b_pid} outlived init");
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_execs_fail_when_init_dies() {
    let init = start().await;
    let mut h = init.spawn(&["sleep", "1000"]).await;
    let pid = started(&mut h).await;
    // Kill init from outside: the exec must not wait forever.
    unsafe { libc::kill(init.child.id().unwrap() as i32, libc::SIGKILL) };
    let o = collect(h).await;
    assert!(o.failed.unwrap().starts_with("sandbox ended"));
    init.chan().closed().await;
    assert!(init.chan().is_closed());
    let e = init
        .chan()
        .spawn(init.spawn_msg(&["true"]))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Runtime);
    // Outside a pid namespace a SIGKILLed init cannot take its commands
    // along (inside one, the kernel does): clean up here.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_a_fatal_frame() {
    let mut child = init_command(&[], "{not json").spawn().unwrap();
    let chan = Channel::new(child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let e = chan.wait_ready(T).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::GuardUnavailable);
    assert!(e.message.contains("'config'"), "{e}");
    let st = tokio::time::timeout(T, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code(), Some(1));
}

/// Runs a python probe; each line is `name errno` (0 = the call succeeded).
#[cfg(target_arch = "x86_64")]
const SYSCALL_PROBE: &str = r#"
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def probe(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print(name, 0 if r >= 0 else ctypes.get_errno(), flush=True)
probe("ptrace_traceme", 101, 0, 0, 0, 0)
probe("mount", 165, 0, 0, 0, 0, 0)
probe("keyctl_get_session", 250, 0, -3, 1)
probe("unshare_user", 272, 0x10000000)
probe("unshare_net", 272, 0x40000000)
probe("setns", 308, 0, 0)
probe("bpf", 321, 0, 0, 0)
probe("perf_event_open", 298, 0, 0, -1, -1, 0)
probe("userfaultfd", 323, 0)
probe("io_uring_setup", 425, 0, 0)
probe("clone3", 435, 0, 0)
probe("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
probe("kexec_load", 246, 0, 0, 0, 0)
probe("init_module", 175, 0, 0, 0)
probe("personality_norandom", 135, 0x0040000)
probe("iopl", 172, 3)
probe("open_by_handle_at", 304, 0, 0, 0)
try:
    socket.socket(17, socket.SOCK_RAW, 0)  # AF_PACKET
    print("socket_packet", 0)
except OSError as e:
    print("socket_packet", e.errno)
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    print("socket_inet", 0)
except OSError as e:
    print("socket_inet", e.errno)
"#;

#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "multi_thread")]
async fn seccomp_denies_escape_syscalls_with_eperm() {
    let init = start().await;
    let o = init.run(&["/usr/bin/python3", "-c", SYSCALL_PROBE]).await;
    assert_eq!(o.code(), Some(0), "{o:?}");
    let results: std::collections::HashMap<String, i32> = o
        .out()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    // These run as root on the host, where most would succeed (or fail
    // differently) without the filter: EPERM is seccomp's answer.
    for name in [
        "ptrace_traceme",
        "mount",
        "keyctl_get_session",
        "unshare_user",
        "unshare_net",
        "setns",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "clone_newuser",
        "kexec_load",
        "init_module",
        "personality_norandom",
        "iopl",
        "open_by_handle_at",
        "socket_packet",
    ] {
        assert_eq!(results.get(name), Some(&libc::EPERM), "{name}: {results:?}");
    }
    assert_eq!(results.get("clone3"), Some(&libc::ENOSYS), "{results:?}");
    assert_eq!(results.get("socket_inet"), Some(&0));

    // The same through ordinary tools.
    for argv in [&["unshare", "-U", "true"][..], &["unshare", "-n", "true"]] {
        let o = init.run(argv).await;
        assert_ne!(o.code(), Some(0), "{argv:?} succeeded");
        assert!(
            o.err().contains("Operation not permitted"),
            "{argv:?}: {}",
            o.err()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ordinary_work_still_runs_under_the_guards() {
    let init = start().await;
    let o = init
        .run(&[
            "sh",
            "-c",
            "ls / | wc -l; echo a b c | tr ' ' '\\n' | sort -r | head -n1",
        ])
        .await;
    assert_eq!(o.code(), Some(0), "{o:?}");
    assert_eq!(o.out().lines().nth(1), Some("c"));
    // python with a thread (clone3 → ENOSYS → clone fallback) and a subprocess.
    let py = "import threading, subprocess\n\
              t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n\
              print(subprocess.run(['echo', 'sub'], capture_output=True, text=True).stdout.strip())\n\
              print(2 + 2)";
    let o = init.run(&["/usr/bin/python3", "-c", py]).await;
    assert_eq!(
        (o.out().as_str(), o.code()),
        ("thread\nsub\n4\n", Some(0)),
        "{o:?}"
    );
    if std::path::Path::new("/usr/bin/gcc").exists() {
        std::fs::write(
            init.dir.path().join("hello.c"),
            "#include <stdio.h>\nint main(void){puts(\"hi from gcc\");return 0;}\n",
        )
        .unwrap();
        let o = init
            .run(&["sh", "-c", "gcc -O1 -o hello hello.c && ./hello"])
            .await;
        assert_eq!(
            (o.out().as_str(), o.code()),
            ("hi from gcc\n", Some(0)),
            "{o:?}"
        );
    }
    if std::path::Path::new("/usr/bin/git").exists() {
        let o = init
            .run(&["sh", "-c", "git init -q repo && cd repo && echo x > f && git add f && git -c user.email=a@b -c user.name=a commit -qm m && git log --format=%s"])
            .await;
        assert_eq!((o.out().as_str(), o.code()), ("m\n", Some(0)), "{o:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn landlock_confines_writes_to_rw_paths() {
    let init = start().await;
    let outside = format!("/var/tmp/brig-landlock-probe-{}", std::process::id());
    let _ = std::fs::remove_file(&outside);
    let o = init
        .run(&["sh", "-c", &format!("echo x > {outside}")])
        .await;
    let leaked = std::path::Path::new(&outside).exists();
    let _ = std::fs::remove_file(&outside);
    assert!(!leaked, "wrote {outside} outside the rw paths");
    assert_ne!(o.code(), Some(0));
    assert!(o.err().contains("Permission denied"), "{}", o.err());
    // Nor creating files, directories or links under /root or /etc.
    let probes = [
        "/root/brig-landlock-probe",
        "/etc/brig-landlock-probe-dir",
        "/etc/brig-landlock-probe-link",
    ];
    for p in probes {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_dir(p);
    }
    let cmds = [
        format!("touch {}", probes[0]),
        format!("mkdir {}", probes[1]),
        format!("ln -s /tmp {}", probes[2]),
    ];
    for cmd in &cmds {
        let o = init.run(&["sh", "-c", cmd]).await;
        let leaked: Vec<_> = probes
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .collect();
        for p in &leaked {
            let _ = std::fs::remove_file(p);
            let _ = std::fs::remove_dir(p);
        }
        assert!(leaked.is_empty(), "{cmd} created {leaked:?}");
        assert_ne!(o.code(), Some(0), "{cmd} succeeded");
    }
    // Inside the rw paths: fine. Reading anywhere: fine.
    let o = init.run(&["sh", "-c", "echo y > inside && cat inside && echo z > /dev/null && head -c 10 /etc/passwd >/dev/null"]).await;
    assert_eq!((o.out().as_str(), o.code()), ("y\n", Some(0)), "{o:?}");
}

/// Init as an unprivileged user: a command of the same uid cannot open
/// init's /proc entries (it is non-dumpable), while it can open those of
/// its own, dumpable, children: the difference is init's flag, not a
/// blanket denial. As root this would prove nothing (CAP_SYS_PTRACE).
#[tokio::test(flavor = "multi_thread")]
async fn init_is_not_dumpable_to_its_own_user() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let init = start_with(
        &[
            "/usr/bin/setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ],
        dir,
    )
    .await;
    assert_eq!(init.ready.uid, 65534);
    let o = init.run(&["sh", "-c", "ls /proc/$PPID/fd"]).await;
    assert_ne!(o.code(), Some(0), "listed init's fds: {o:?}");
    assert!(o.err().contains("Permission denied"), "{}", o.err());
    let o = init
        .run(&[
            "sh",
            "-c",
            "sleep 5 & ls /proc/$!/fd >/dev/null && echo ok; kill $!",
        ])
        .await;
    assert_eq!(o.out(), "ok\n", "{o:?}");
}

/// Wait for the next held exec and answer it.
async fn answer(
    chan: &Arc<Channel>,
    holds: &mut tokio::sync::mpsc::UnboundedReceiver<brig_core::wire::ProcessHold>,
    verdict: brig_core::wire::HoldVerdict,
    message: Option<&str>,
) -> brig_core::wire::ProcessHold {
    let held = tokio::time::timeout(T, holds.recv())
        .await
        .expect("a hold")
        .expect("holds open");
    chan.answer_hold(brig_core::wire::HoldAnswer {
        id: held.id,
        verdict,
        message: message.map(String::from),
    })
    .await
    .unwrap();
    held
}

/// Both ways of serving capture (the supervisor, and init itself where Yama
/// forbids a supervisor) record every exec with its exit, and hold an exec
/// with a sensitive word until the host answers: allowed, it runs and is
/// recorded; denied, it fails with EPERM and the process is told why.
#[tokio::test(flavor = "multi_thread")]
async fn capture_records_and_holds_served_by_the_supervisor_or_by_init() {
    use brig_core::wire::HoldVerdict;
    use brig_sandbox::channel::ProcessEvent;
    for in_init in [false, true] {
        let init = start_capture(in_init).await;
        let layer = if in_init {
            "capture:in-init"
        } else {
            "capture:supervisor"
        };
        assert!(
            init.ready.layers.iter().any(|l| l == layer),
            "{:?}",
            init.ready.layers
        );
        let mut events = init.chan().process_events().expect("capture events");
        let mut holds = init.chan().process_holds().expect("holds");
        let script = "/bin/true; /bin/echo brigheld-yes; /bin/echo brigheld-no; exit 3";
        let h = init.spawn(&["sh", "-c", script]).await;
        let yes = answer(init.chan(), &mut holds, HoldVerdict::Allow, None).await;
        assert_eq!(yes.exec.argv, ["/bin/echo", "brigheld-yes"], "{in_init}");
        let no = answer(
            init.chan(),
            &mut holds,
            HoldVerdict::Deny,
            Some("refused by the test"),
        )
        .await;
        assert_eq!(no.exec.argv, ["/bin/echo", "brigheld-no"], "{in_init}");
        let out = collect(h).await;
        assert_eq!(out.out(), "brigheld-yes\n", "{in_init}: {out:?}");
        assert_eq!(out.code(), Some(3), "{in_init}: {out:?}");
        assert!(
            out.err().contains("brig: refused by the test"),
            "{in_init}: {}",
            out.err()
        );
        // Every exec with its exit: the script, /bin/true, the allowed echo.
        let sh = out.pid.expect("started");
        let (mut execs, mut exits) = (Vec::new(), Vec::new());
        let want = |execs: &Vec<brig_core::wire::ProcessExec>,
                    exits: &Vec<brig_core::wire::ProcessExit>| {
            ["/bin/true", "/bin/echo"].iter().all(|p| {
                execs.iter().any(|e| {
                    e.path == *p && exits.iter().any(|x| x.pid == e.pid && x.code == Some(0))
                })
            }) && exits.iter().any(|x| x.pid == sh && x.code == Some(3))
        };
        tokio::time::timeout(T, async {
            while !want(&execs, &exits) {
                match events.recv().await {
                    Some(ProcessEvent::Exec(e)) => execs.push(e),
                    Some(ProcessEvent::Exit(x)) => exits.push(x),
                    other => panic!("{other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{in_init}: execs {execs:?}, exits {exits:?}"));
        let true_ = execs.iter().find(|e| e.path == "/bin/true").unwrap();
        assert_eq!(true_.ppid, sh, "{true_:?}");
        assert_eq!(true_.argv, ["/bin/true"]);
        assert!(
            !execs
                .iter()
                .any(|e| e.argv.iter().any(|a| a == "brigheld-no")),
            "a denied exec did not run: {execs:?}"
        );
    }
}
