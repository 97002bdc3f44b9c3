//! The framed protocol between brig (the host side) and `brig sandbox-init`,
//! the first process inside every sandbox. It runs over the init's stdin
//! (host → sandbox) and stdout (sandbox → host): pipes only brig holds, so
//! nothing inside the sandbox can speak it (init makes itself non-dumpable,
//! which closes /proc/1/fd to the sandbox's own user).
//!
//! Frame: `len: u32 BE` (of what follows) · `kind: u8` · `chan: u32 BE` · payload.
//! `chan` is the exec channel a frame belongs to (0 for init-wide frames).
//! Control payloads are JSON; data payloads are raw bytes.

use serde::{Deserialize, Serialize};

/// Largest payload of one frame; writers split data into frames this size.
pub const MAX_PAYLOAD: usize = 64 * 1024;
const HEADER: usize = 4 + 1 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    // host → sandbox
    /// Start a command: JSON [`Spawn`].
    Spawn = 1,
    /// Bytes for the command's stdin.
    Stdin = 2,
    /// Close the command's stdin.
    StdinEof = 3,
    /// Send a signal to the command's process group: JSON [`SignalMsg`].
    Signal = 4,
    /// Resize the command's PTY: JSON [`Resize`].
    Resize = 5,
    /// Ask init how many processes are alive: answered by `Status`.
    Ping = 6,
    /// The host's answer on a held exec: JSON [`HoldAnswer`].
    HoldAnswer = 7,

    // sandbox → host
    /// Init is up with every guard applied: JSON [`Ready`].
    Ready = 64,
    /// The command started: JSON [`Started`].
    Started = 65,
    /// The command could not start: JSON [`Failed`].
    SpawnFailed = 66,
    Stdout = 67,
    Stderr = 68,
    /// The command ended (after its output was flushed): JSON [`Exited`].
    Exited = 69,
    /// Init could not apply a guard and is exiting: JSON [`Failed`].
    Fatal = 70,
    /// Reply to `Ping`: JSON [`Status`].
    Status = 71,
    /// A process in the sandbox is executing a program (captured by init's
    /// seccomp user-notification filter): JSON [`ProcessExec`].
    Process = 72,
    /// A process init saw exec was reaped by init: JSON [`ProcessExit`].
    ProcessExit = 73,
    /// A process is held in execve until the host answers (its command line
    /// matched a sensitive pattern's words): JSON [`ProcessHold`].
    Hold = 74,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => Spawn,
            2 => Stdin,
            3 => StdinEof,
            4 => Signal,
            5 => Resize,
            6 => Ping,
            7 => HoldAnswer,
            64 => Ready,
            65 => Started,
            66 => SpawnFailed,
            67 => Stdout,
            68 => Stderr,
            69 => Exited,
            70 => Fatal,
            71 => Status,
            72 => Process,
            73 => ProcessExit,
            74 => Hold,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub chan: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, chan: u32, payload: Vec<u8>) -> Frame {
        Frame {
            kind,
            chan,
            payload,
        }
    }
    pub fn json<T: Serialize>(kind: Kind, chan: u32, msg: &T) -> Frame {
        Frame::new(
            kind,
            chan,
            serde_json::to_vec(msg).expect("wire messages serialize"),
        )
    }
    pub fn parse<T: for<'a> Deserialize<'a>>(&self) -> Result<T, WireError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| WireError(format!("bad {:?} payload: {e}", self.kind)))
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        self.encode_into(&mut out);
        out
    }
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = (1 + 4 + self.payload.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.chan.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for WireError {}

/// Incremental decoder: feed bytes as they arrive, take whole frames out.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error
    /// if the stream is corrupt (unknown kind, oversized frame): the caller
    /// must then drop the channel, as nothing after it can be trusted.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
        if !(5..=5 + MAX_PAYLOAD).contains(&len) {
            return Err(WireError(format!("frame length {len} out of range")));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = Kind::from_u8(self.buf[4])
            .ok_or_else(|| WireError(format!("unknown frame kind {}", self.buf[4])))?;
        let chan = u32::from_be_bytes(self.buf[5..9].try_into().unwrap());
        let payload = self.buf[9..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(Frame {
            kind,
            chan,
            payload,
        }))
    }
}

/// Start a command inside the sandbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spawn {
    pub argv: Vec<String>,
    /// The whole environment: init passes nothing of its own.
    pub env: Vec<(String, String)>,
    pub cwd: String,
    /// Allocate a PTY of (rows, cols); stdout carries its output, no stderr.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
    /// Policy already decided this command line (it was labelled sensitive
    /// and allowed, perhaps after an approval): init does not hold it, nor
    /// what it starts, again.
    #[serde(default)]
    pub decided: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignalMsg {
    pub signal: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ready {
    /// Guards init applied to itself (and so to every descendant),
    /// e.g. `seccomp:allowlist`, `landlock:abi7`, `no_new_privs`.
    pub layers: Vec<String>,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Started {
    /// Pid inside the sandbox's pid namespace.
    pub pid: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failed {
    /// Which layer or step failed (`seccomp`, `landlock`, `spawn`, ...).
    pub layer: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exited {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Live processes in the sandbox besides init.
    pub processes: u32,
    /// Commands started through `Spawn` still running.
    pub running: u32,
}

/// A process in the sandbox called `execve`/`execveat` (init let it go on;
/// the exec may still fail, e.g. a PATH lookup's miss).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessExec {
    /// Pid (thread-group id) inside the sandbox's pid namespace.
    pub pid: i32,
    pub ppid: i32,
    /// Real uid inside the sandbox.
    pub uid: u32,
    /// As read from the process's memory at the syscall (capped; see
    /// docs/ISOLATION.md for what a multi-threaded process can race).
    pub argv: Vec<String>,
    /// The program path as passed to execve (execveat: resolved against its
    /// directory descriptor where possible).
    pub path: String,
    pub cwd: String,
    /// RFC 3339 UTC, when init saw the call.
    pub time: String,
}

/// An exec init holds in the kernel until the host answers ([`HoldAnswer`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessHold {
    /// Init's handle on the held call (answers name it).
    pub id: u64,
    pub exec: ProcessExec,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HoldVerdict {
    /// Still deciding (an approval is awaited): `message` goes to the
    /// process's stderr, the call stays held.
    Wait,
    /// Let the exec go on.
    Allow,
    /// Fail the exec with EPERM; `message` goes to the process's stderr.
    Deny,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HoldAnswer {
    pub id: u64,
    pub verdict: HoldVerdict,
    #[serde(default)]
    pub message: Option<String>,
}

/// A process init saw exec ended, as reaped by init.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessExit {
    pub pid: i32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// RFC 3339 UTC, when init reaped it.
    pub time: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let a = Frame::json(
            Kind::Spawn,
            7,
            &Spawn {
                argv: vec!["ls".into()],
                env: vec![],
                cwd: "/workspace".into(),
                tty: None,
                decided: false,
            },
        );
        let b = Frame::new(Kind::Stdout, 7, b"hello".to_vec());
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        let mut d = Decoder::new();
        let mut out = vec![];
        for chunk in bytes.chunks(3) {
            d.feed(chunk);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, vec![a.clone(), b]);
        let s: Spawn = out[0].parse().unwrap();
        assert_eq!(s.argv, vec!["ls"]);
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let mut d = Decoder::new();
        d.feed(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::new();
        d.feed(&[0, 0, 0, 5, 200, 0, 0, 0, 0]);
        assert!(d.next_frame().is_err());
    }
}
