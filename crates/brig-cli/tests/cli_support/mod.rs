//! Helpers for the CLI end-to-end tests: `brig serve` as a child process
//! on a private data dir and socket, and the client run against it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BRIG: &str = env!("CARGO_BIN_EXE_brig");

/// `brig serve` on a private data dir and socket; stopped on drop.
pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// How `brig serve` was started, for [`Server::kill9_and_restart`].
    args: Vec<std::ffi::OsString>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// With `config`, `brig serve --config` it (which must name the socket
    /// `<dir>/s`); the closure gets the temp dir to write it in.
    pub fn start_with(config: Option<&dyn Fn(&Path) -> PathBuf>) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("brig-cli-e2e-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let args: Vec<std::ffi::OsString> = match config {
            Some(write) => vec!["--config".into(), write(dir.path()).into(), "serve".into()],
            None => vec![
                "serve".into(),
                "--data-dir".into(),
                data.into(),
                "--socket".into(),
                dir.path().join("s").into(),
            ],
        };
        let child = spawn_serve(&args, &dir.path().join("serve.log"));
        let mut s = Server { child, dir, args };
        s.wait_ready();
        s
    }

    /// SIGKILL `brig serve` (no graceful anything), then start it again on
    /// the same data dir and socket, logging to `log` in the temp dir.
    pub fn kill9_and_restart(&mut self, log: &str) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn_serve(&self.args, &self.dir.path().join(log));
        self.wait_ready();
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("brig serve exited with {st}: {}", self.log());
            }
            if self.socket().exists() {
                let o = self.brig(&["session", "list"]);
                if o.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("brig serve did not come up in 30 s: {}", self.log());
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BRIG);
        c.arg("--socket")
            .arg(self.socket())
            .args(args)
            .env_remove("BRIG_URL")
            .env_remove("BRIG_CONFIG");
        c
    }

    pub fn brig(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run brig")
    }

    pub fn brig_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let w = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let o = child.wait_with_output().unwrap();
        w.join().unwrap();
        o
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.brig(&a);
        assert!(o.status.success(), "brig {args:?}: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("brig {args:?} --json: {e}: {}", text(&o.stdout)))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: a graceful stop destroys what is left.
        let _ = nix_kill(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nix_kill(pid: u32, sig: i32) -> i32 {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, sig) }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn spawn_serve(args: &[std::ffi::OsString], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(BRIG)
        .args(args)
        .env_remove("BRIG_CONFIG")
        .env_remove("BRIG_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start brig serve")
}
