//! Attached exec over the upgraded connection (docs/API.md): stream stdout
//! and stderr live, forward stdin, signals and window resizes, and return
//! how the command ended.

use std::io::Write;

use brig_core::exec::ExitStatus;
use brig_core::wire::{self, Decoder, Frame, Kind};
use brig_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// The channel every attached exec uses.
const CHAN: u32 = 1;

#[derive(Clone, Copy, Debug, Default)]
pub struct AttachOpts {
    /// Forward our stdin; otherwise the command's stdin is closed at once.
    pub stdin: bool,
    /// Forward SIGINT/SIGTERM/SIGHUP/SIGQUIT to the command.
    pub signals: bool,
    /// A PTY was requested: forward SIGWINCH as resizes.
    pub tty: bool,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Exited(ExitStatus),
    /// The command never started (`layer` says which step failed).
    SpawnFailed {
        layer: String,
        error: String,
    },
}

impl Outcome {
    /// The exit code `brig exec`/`brig run` return: the command's, or
    /// docker's 126 (cannot run) / 127 (not found) when it never started.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(s) => s.shell_code(),
            Outcome::SpawnFailed { error, .. } => spawn_failure_code(error),
        }
    }
}

pub fn spawn_failure_code(error: &str) -> i32 {
    let e = error.to_ascii_lowercase();
    if e.contains("no such file") || e.contains("not found") || e.contains("enoent") {
        127
    } else {
        126
    }
}

/// Drive one attached exec to its end.
pub async fn run<S>(stream: S, opts: AttachOpts) -> Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Frame>(64);

    // One writer owns the write half; stdin, signals and resizes feed it.
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if wr.write_all(&f.encode()).await.is_err() {
                break;
            }
            let _ = wr.flush().await;
        }
    });

    let mut tasks = Vec::new();
    if opts.stdin {
        tasks.push(tokio::spawn(forward_stdin(tx.clone())));
    } else {
        let _ = tx.send(Frame::new(Kind::StdinEof, CHAN, vec![])).await;
    }
    if opts.signals {
        tasks.push(forward_signals(tx.clone()));
    }
    if opts.tty {
        tasks.push(tokio::spawn(forward_resizes(tx.clone())));
    }
    drop(tx);

    let result = read_frames(&mut rd).await;
    for t in tasks {
        t.abort();
    }
    // Let frames already queued (e.g. StdinEof) go out; the writer ends when
    // the aborted tasks drop their senders.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), writer).await;
    result
}

async fn read_frames<R: AsyncRead + Unpin>(rd: &mut R) -> Result<Outcome> {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(f) = dec.next_frame().map_err(corrupt)? {
            match f.kind {
                Kind::Stdout => write_all(&mut std::io::stdout().lock(), &f.payload),
                Kind::Stderr => write_all(&mut std::io::stderr().lock(), &f.payload),
                Kind::Exited => {
                    // `Exited` plus the API's `timed_out`: ExitStatus has both.
                    let s: ExitStatus = f.parse().map_err(corrupt)?;
                    return Ok(Outcome::Exited(s));
                }
                Kind::SpawnFailed => {
                    let w: wire::Failed = f.parse().map_err(corrupt)?;
                    return Ok(Outcome::SpawnFailed {
                        layer: w.layer,
                        error: w.error,
                    });
                }
                // `Started` and anything newer carry nothing we print.
                _ => {}
            }
        }
        let n = rd.read(&mut buf).await.map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("lost the connection to brig while the command ran: {e}"),
            )
        })?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Runtime,
                "brig closed the exec stream before the command finished",
            )
            .hint("the session may have been destroyed (idle timeout, timebox, kill); see `brig session show ID`"));
        }
        dec.feed(&buf[..n]);
    }
}

fn write_all(w: &mut impl Write, bytes: &[u8]) {
    // A closed stdout (e.g. `| head`) must not stop the command's stream.
    let _ = w.write_all(bytes);
    let _ = w.flush();
}

fn corrupt(e: wire::WireError) -> Error {
    Error::internal(format!("corrupt exec stream from brig: {e}"))
}

async fn forward_stdin(tx: mpsc::Sender<Frame>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; wire::MAX_PAYLOAD];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send(Frame::new(Kind::Stdin, CHAN, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Frame::new(Kind::StdinEof, CHAN, vec![])).await;
}

/// Handlers are installed before this returns (not in the spawned task), so
/// a signal that arrives right after the command starts is not lost.
fn forward_signals(tx: mpsc::Sender<Frame>) -> tokio::task::JoinHandle<()> {
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ];
    let mut streams = Vec::new();
    for k in kinds {
        if let Ok(s) = signal(k) {
            streams.push((k.as_raw_value(), s));
        }
    }
    tokio::spawn(async move {
        let (stx, mut srx) = mpsc::channel::<i32>(16);
        let mut pumps = Vec::new();
        for (num, mut s) in streams {
            let stx = stx.clone();
            pumps.push(tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if stx.send(num).await.is_err() {
                        break;
                    }
                }
            }));
        }
        drop(stx);
        while let Some(num) = srx.recv().await {
            let msg = wire::SignalMsg { signal: num };
            if tx
                .send(Frame::json(Kind::Signal, CHAN, &msg))
                .await
                .is_err()
            {
                break;
            }
        }
        for p in pumps {
            p.abort();
        }
    })
}

async fn forward_resizes(tx: mpsc::Sender<Frame>) {
    let Ok(mut s) = signal(SignalKind::window_change()) else {
        return;
    };
    while s.recv().await.is_some() {
        if let Some((rows, cols)) = crate::term::window_size() {
            let msg = wire::Resize { rows, cols };
            if tx
                .send(Frame::json(Kind::Resize, CHAN, &msg))
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_until_exit_and_sends_stdin_eof() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(async move {
            let mut out = Vec::new();
            out.extend(Frame::json(Kind::Started, CHAN, &wire::Started { pid: 7 }).encode());
            out.extend(Frame::new(Kind::Stdout, CHAN, b"".to_vec()).encode());
            out.extend(
                Frame::json(
                    Kind::Exited,
                    CHAN,
                    &serde_json::json!({"code": 3, "signal": null}),
                )
                .encode(),
            );
            server.write_all(&out).await.unwrap();
            let mut got = vec![0u8; 64];
            let n = server.read(&mut got).await.unwrap();
            let mut d = Decoder::new();
            d.feed(&got[..n]);
            d.next_frame().unwrap().unwrap().kind
        });
        let out = run(client, AttachOpts::default()).await.unwrap();
        assert_eq!(out.exit_code(), 3);
        assert_eq!(srv.await.unwrap(), Kind::StdinEof);
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_is_an_error() {
        let (client, server) = tokio::io::duplex(1024);
        drop(server);
        let e = run(client, AttachOpts::default()).await.unwrap_err();
        assert!(e.message.contains("before the command finished"), "{e}");
    }

    #[test]
    fn spawn_failures_follow_docker() {
        assert_eq!(spawn_failure_code("execvp: No such file or directory"), 127);
        assert_eq!(spawn_failure_code("Permission denied"), 126);
        let o = Outcome::Exited(ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: false,
        });
        assert_eq!(o.exit_code(), 137);
    }
}
