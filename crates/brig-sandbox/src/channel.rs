//! Host side of the init protocol ([`brig_core::wire`]).
//!
//! A [`Channel`] wraps the two pipes to a sandbox's init: frames to init go
//! through a mutex-guarded writer, and one reader task demultiplexes frames
//! from init by `chan` into each exec's event queue. The channel closes when
//! init's stdout ends or turns out corrupt; every exec still pending then
//! gets `Failed`. Dropping the last `Arc<Channel>` (every [`ExecHandle`]
//! holds one) closes init's stdin, which makes init kill everything and exit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brig_core::exec::ExitStatus;
use brig_core::wire::{self, Frame, Kind};
use brig_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// Frames buffered per exec before the reader waits for its consumer: at
/// most this many × [`wire::MAX_PAYLOAD`] bytes. Waiting pushes back through
/// init to the command (its pipe fills and it blocks) instead of growing memory.
const EVENT_QUEUE: usize = 256;

/// Process events buffered for the journal. The reader never waits on this
/// queue (init must not stall every exec of the sandbox behind a slow
/// journal): when it is full, events are dropped and counted, and the
/// consumer gets one [`ProcessEvent::Overflow`] with the count.
pub const PROCESS_QUEUE: usize = 4096;

/// Every process of the sandbox, as init's capture filter saw it.
#[derive(Debug, Clone)]
pub enum ProcessEvent {
    Exec(wire::ProcessExec),
    Exit(wire::ProcessExit),
    /// This many events were dropped because the queue was full.
    Overflow {
        dropped: u64,
    },
}

/// The receiving end of a sandbox's process events; ends with the channel.
pub struct ProcessEvents {
    rx: mpsc::Receiver<ProcessEvent>,
    dropped: Arc<AtomicU64>,
}

impl ProcessEvents {
    /// The next event, or None once the channel closed and all is drained.
    pub async fn recv(&mut self) -> Option<ProcessEvent> {
        if let Some(o) = self.overflow() {
            return Some(o);
        }
        match self.rx.recv().await {
            Some(e) => Some(e),
            None => self.overflow(),
        }
    }

    /// What is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<ProcessEvent> {
        self.overflow().or_else(|| self.rx.try_recv().ok())
    }

    fn overflow(&self) -> Option<ProcessEvent> {
        match self.dropped.swap(0, Ordering::Relaxed) {
            0 => None,
            dropped => Some(ProcessEvent::Overflow { dropped }),
        }
    }
}

/// What an exec produces, in order: `Started`, output, then `Exited` (or `Failed`).
#[derive(Debug)]
pub enum ExecEvent {
    Started {
        pid: i32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(ExitStatus),
    /// Could not start (init's `SpawnFailed` error, e.g. `make: No such file
    /// or directory`), or the sandbox died under it (`sandbox ended ...`).
    Failed(String),
}

/// One running command. Dropping it does not kill the command.
pub struct ExecHandle {
    pub chan: u32,
    pub events: mpsc::Receiver<ExecEvent>,
    channel: Arc<Channel>,
}

impl ExecHandle {
    /// Bytes for the command's stdin (split into frames as needed).
    pub async fn stdin(&self, data: Vec<u8>) -> Result<()> {
        for chunk in data.chunks(wire::MAX_PAYLOAD) {
            self.channel
                .send(Frame::new(Kind::Stdin, self.chan, chunk.to_vec()))
                .await?;
        }
        Ok(())
    }
    /// Close the command's stdin (for a PTY: send the EOF character, ^D).
    pub async fn close_stdin(&self) -> Result<()> {
        self.channel
            .send(Frame::new(Kind::StdinEof, self.chan, vec![]))
            .await
    }
    /// Signal the command's whole process group.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.channel
            .send(Frame::json(
                Kind::Signal,
                self.chan,
                &wire::SignalMsg { signal },
            ))
            .await
    }
    /// Resize the command's PTY (ignored without one).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.channel
            .send(Frame::json(
                Kind::Resize,
                self.chan,
                &wire::Resize { rows, cols },
            ))
            .await
    }
    /// The channel this command runs on.
    pub fn channel(&self) -> &Arc<Channel> {
        &self.channel
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// State shared with the reader task (which must not keep the writer alive).
struct Shared {
    execs: Mutex<HashMap<u32, mpsc::Sender<ExecEvent>>>,
    pings: Mutex<VecDeque<oneshot::Sender<wire::Status>>>,
    ready: watch::Sender<Option<Result<wire::Ready>>>,
    closed: watch::Sender<Option<String>>,
    /// Execs init holds for a decision: never dropped (a process waits on
    /// each), so unbounded; init holds only sensitive-looking ones.
    holds: mpsc::UnboundedSender<wire::ProcessHold>,
}

pub struct Channel {
    writer: tokio::sync::Mutex<Option<Writer>>,
    shared: Arc<Shared>,
    next_chan: AtomicU32,
    process: Mutex<Option<ProcessEvents>>,
    holds: Mutex<Option<mpsc::UnboundedReceiver<wire::ProcessHold>>>,
}

impl Channel {
    /// Spawns a reader task that demultiplexes frames by `chan`.
    pub fn new<W, R>(to_init: W, from_init: R) -> Arc<Channel>
    where
        W: AsyncWrite + Send + Unpin + 'static,
        R: AsyncRead + Send + Unpin + 'static,
    {
        Self::with_producer(to_init, from_init).0
    }

    /// [`Channel::new`], plus a second producer for the sandbox's process
    /// events, for capture that does not come through init (gVisor's trace
    /// points, [`crate::gvisor_trace`]). [`ProcessEvents`] ends once the
    /// reader and every producer are gone.
    pub fn with_producer<W, R>(to_init: W, from_init: R) -> (Arc<Channel>, ProcessProducer)
    where
        W: AsyncWrite + Send + Unpin + 'static,
        R: AsyncRead + Send + Unpin + 'static,
    {
        let (htx, hrx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            execs: Mutex::new(HashMap::new()),
            pings: Mutex::new(VecDeque::new()),
            ready: watch::channel(None).0,
            closed: watch::channel(None).0,
            holds: htx,
        });
        let (ptx, prx) = mpsc::channel(PROCESS_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = ProcessSink {
            tx: ptx,
            dropped: dropped.clone(),
        };
        let producer = ProcessProducer(sink.clone());
        tokio::spawn(read_loop(shared.clone(), sink, from_init));
        let channel = Arc::new(Channel {
            writer: tokio::sync::Mutex::new(Some(Box::new(to_init))),
            shared,
            next_chan: AtomicU32::new(1),
            process: Mutex::new(Some(ProcessEvents { rx: prx, dropped })),
            holds: Mutex::new(Some(hrx)),
        });
        (channel, producer)
    }

    /// The sandbox's process events (once: later calls get None).
    pub fn process_events(&self) -> Option<ProcessEvents> {
        self.process.lock().expect("process lock").take()
    }

    /// Execs held for a decision (once: later calls get None). Each waits
    /// in the kernel until [`Channel::answer_hold`] names it.
    pub fn process_holds(&self) -> Option<mpsc::UnboundedReceiver<wire::ProcessHold>> {
        self.holds.lock().expect("holds lock").take()
    }

    /// Answer a held exec (or tell it what it waits for).
    pub async fn answer_hold(&self, answer: wire::HoldAnswer) -> Result<()> {
        self.send(Frame::json(Kind::HoldAnswer, 0, &answer)).await
    }

    /// The first frame: Ready → Ok; Fatal → Err(GuardUnavailable naming the
    /// layer); EOF or timeout → Err(Runtime).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<wire::Ready> {
        let mut rx = self.shared.ready.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some())).await;
        match waited {
            Ok(Ok(r)) => r.clone().expect("waited for Some"),
            Ok(Err(_)) => Err(Error::internal("init channel state dropped")),
            Err(_) => Err(Error::runtime(format!(
                "the sandbox's init did not report ready within {} ms",
                timeout.as_millis()
            ))
            .hint("the host may be overloaded, or the runtime stalled; see brig's log for the runtime's output")),
        }
    }

    /// Start a command; its events arrive on the handle's `events`.
    pub async fn spawn(self: &Arc<Self>, spawn: wire::Spawn) -> Result<ExecHandle> {
        let chan = self.next_chan.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        // Registered before the frame goes out, so `Started` cannot be missed;
        // checked against `closed` under the same lock the reader uses to
        // fail everyone, so no exec is left waiting forever.
        {
            let mut execs = self.shared.execs.lock().expect("exec map lock");
            if let Some(why) = self.shared.closed.borrow().clone() {
                return Err(ended(&why));
            }
            execs.insert(chan, tx);
        }
        if let Err(e) = self.send(Frame::json(Kind::Spawn, chan, &spawn)).await {
            self.shared
                .execs
                .lock()
                .expect("exec map lock")
                .remove(&chan);
            return Err(e);
        }
        Ok(ExecHandle {
            chan,
            events: rx,
            channel: self.clone(),
        })
    }

    /// Ask init how many processes are alive.
    pub async fn status(&self, timeout: Duration) -> Result<wire::Status> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pings = self.shared.pings.lock().expect("ping lock");
            if let Some(why) = self.shared.closed.borrow().clone() {
                return Err(ended(&why));
            }
            pings.push_back(tx);
        }
        // Replies come in order; a waiter that timed out still takes its
        // (late) reply off the queue, keeping later ones matched.
        self.send(Frame::new(Kind::Ping, 0, vec![])).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(_)) => Err(ended(
                &self.shared.closed.borrow().clone().unwrap_or_default(),
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the sandbox's init did not answer a status request within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }

    /// Resolves once the channel hit EOF or corruption.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| c.is_some()).await;
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Close init's stdin now: init kills every process and exits (the
    /// same happens when the last `Arc<Channel>` is dropped).
    pub async fn shutdown(&self) {
        if let Some(mut w) = self.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
    }

    async fn send(&self, frame: Frame) -> Result<()> {
        let mut guard = self.writer.lock().await;
        let Some(w) = guard.as_mut() else {
            return Err(ended("brig closed the channel"));
        };
        let bytes = frame.encode();
        let res = async {
            w.write_all(&bytes).await?;
            w.flush().await
        }
        .await;
        if let Err(e) = res {
            // init's stdin is gone: so is init, or it soon will be.
            *guard = None;
            return Err(ended(&format!("writing to init failed: {e}")));
        }
        Ok(())
    }
}

fn ended(why: &str) -> Error {
    Error::new(ErrorKind::Runtime, format!("sandbox ended: {why}"))
        .hint("the sandbox's init exited (destroyed, killed, or crashed); create a new session")
}

/// The reader's end of the process-event queue (dropped with the reader,
/// which ends [`ProcessEvents`]).
#[derive(Clone)]
struct ProcessSink {
    tx: mpsc::Sender<ProcessEvent>,
    dropped: Arc<AtomicU64>,
}

impl ProcessSink {
    fn offer(&self, e: ProcessEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(e) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Another producer of a channel's process events ([`Channel::with_producer`]):
/// the same bounded queue, never waiting; what does not fit is counted.
#[derive(Clone)]
pub struct ProcessProducer(ProcessSink);

impl ProcessProducer {
    /// Queue `e`, or count it as dropped if the queue is full.
    pub fn offer(&self, e: ProcessEvent) {
        self.0.offer(e)
    }

    /// Count `n` events lost before they reached the queue (reported as one
    /// [`ProcessEvent::Overflow`] with the queue's own drops).
    pub fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.0.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, sink: ProcessSink, mut from_init: R) {
    let mut decoder = wire::Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let why = 'outer: loop {
        let n = match from_init.read(&mut buf).await {
            Ok(0) => break "init exited".to_string(),
            Ok(n) => n,
            Err(e) => break format!("reading from init failed: {e}"),
        };
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Err(e) = dispatch(&shared, &sink, frame).await {
                        break 'outer e;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'outer format!("corrupt stream from init: {e}"),
            }
        }
    };
    close(&shared, why);
}

async fn dispatch(
    shared: &Shared,
    sink: &ProcessSink,
    frame: Frame,
) -> std::result::Result<(), String> {
    let bad = |e: wire::WireError| format!("corrupt stream from init: {e}");
    let event = match frame.kind {
        Kind::Ready => {
            let ready: wire::Ready = frame.parse().map_err(bad)?;
            shared
                .ready
                .send_if_modified(|r| r.is_none() && r.replace(Ok(ready)).is_none());
            return Ok(());
        }
        Kind::Fatal => {
            let f: wire::Failed = frame.parse().map_err(bad)?;
            tracing::warn!(layer = %f.layer, error = %f.error, "sandbox init failed to apply a guard");
            shared.ready.send_if_modified(|r| {
                r.is_none() && r.replace(Err(Error::guard(&f.layer, &f.error))).is_none()
            });
            return Ok(());
        }
        Kind::Process => {
            sink.offer(ProcessEvent::Exec(frame.parse().map_err(bad)?));
            return Ok(());
        }
        Kind::ProcessExit => {
            sink.offer(ProcessEvent::Exit(frame.parse().map_err(bad)?));
            return Ok(());
        }
        Kind::Hold => {
            let h: wire::ProcessHold = frame.parse().map_err(bad)?;
            if shared.holds.send(h).is_err() {
                // Nobody decides: it stays held (fail closed) until the
                // sandbox ends.
                tracing::error!("an exec is held but nothing decides holds for this sandbox");
            }
            return Ok(());
        }
        Kind::Status => {
            let s: wire::Status = frame.parse().map_err(bad)?;
            if let Some(tx) = shared.pings.lock().expect("ping lock").pop_front() {
                let _ = tx.send(s);
            }
            return Ok(());
        }
        Kind::Started => ExecEvent::Started {
            pid: frame.parse::<wire::Started>().map_err(bad)?.pid,
        },
        Kind::Stdout => ExecEvent::Stdout(frame.payload),
        Kind::Stderr => ExecEvent::Stderr(frame.payload),
        Kind::Exited => {
            let e: wire::Exited = frame.parse().map_err(bad)?;
            ExecEvent::Exited(ExitStatus {
                code: e.code,
                signal: e.signal,
                timed_out: false,
            })
        }
        Kind::SpawnFailed => ExecEvent::Failed(frame.parse::<wire::Failed>().map_err(bad)?.error),
        other => return Err(format!("init sent a host-to-sandbox frame ({other:?})")),
    };
    let last = matches!(event, ExecEvent::Exited(_) | ExecEvent::Failed(_));
    let tx = {
        let mut execs = shared.execs.lock().expect("exec map lock");
        if last {
            execs.remove(&frame.chan)
        } else {
            execs.get(&frame.chan).cloned()
        }
    };
    if let Some(tx) = tx {
        // A dropped handle just discards its events.
        let _ = tx.send(event).await;
    }
    Ok(())
}

/// The channel is over: fail every waiter, once.
fn close(shared: &Shared, why: String) {
    let execs: Vec<_> = {
        let mut map = shared.execs.lock().expect("exec map lock");
        shared.closed.send_replace(Some(why.clone()));
        map.drain().map(|(_, tx)| tx).collect()
    };
    shared.pings.lock().expect("ping lock").clear();
    shared.ready.send_if_modified(|r| {
        r.is_none()
            && r.replace(Err(Error::runtime(format!("the sandbox's init ended before it was ready: {why}"))
                .hint("see brig's log for the runtime's output; `brig doctor` checks what this host supports")))
            .is_none()
    });
    for tx in execs {
        let msg = format!("sandbox ended before the command finished: {why}");
        // A consumer may be slow; the reader is finishing, so wait off-task.
        tokio::spawn(async move {
            let _ = tx.send(ExecEvent::Failed(msg)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    /// A fake init on the other ends of two in-memory pipes.
    struct FakeInit {
        from_host: DuplexStream,
        to_host: DuplexStream,
        decoder: wire::Decoder,
    }

    impl FakeInit {
        async fn send(&mut self, f: Frame) {
            self.to_host.write_all(&f.encode()).await.unwrap();
        }
        /// The next frame from the host, or None at EOF.
        async fn recv(&mut self) -> Option<Frame> {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(f) = self.decoder.next_frame().unwrap() {
                    return Some(f);
                }
                let n = self.from_host.read(&mut buf).await.unwrap();
                if n == 0 {
                    return None;
                }
                self.decoder.feed(&buf[..n]);
            }
        }
    }

    fn pair() -> (Arc<Channel>, FakeInit) {
        let (host_w, init_r) = duplex(1 << 20);
        let (init_w, host_r) = duplex(1 << 20);
        let fake = FakeInit {
            from_host: init_r,
            to_host: init_w,
            decoder: wire::Decoder::new(),
        };
        (Channel::new(host_w, host_r), fake)
    }

    fn ready() -> wire::Ready {
        wire::Ready {
            layers: vec!["seccomp:allowlist".into()],
            uid: 1000,
            gid: 1000,
        }
    }

    fn spawn_msg() -> wire::Spawn {
        wire::Spawn {
            argv: vec!["true".into()],
            env: vec![],
            cwd: "/workspace".into(),
            tty: None,
            decided: false,
        }
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn ready_then_demultiplexed_execs() {
        let (chan, mut init) = pair();
        init.send(Frame::json(Kind::Ready, 0, &ready())).await;
        assert_eq!(chan.wait_ready(T).await.unwrap(), ready());

        let mut a = chan.spawn(spawn_msg()).await.unwrap();
        let mut b = chan.spawn(spawn_msg()).await.unwrap();
        assert_eq!((a.chan, b.chan), (1, 2));
        for expect in [1, 2] {
            let f = init.recv().await.unwrap();
            assert_eq!((f.kind, f.chan), (Kind::Spawn, expect));
            assert_eq!(f.parse::<wire::Spawn>().unwrap(), spawn_msg());
        }
        // Interleaved output for two channels.
        init.send(Frame::json(Kind::Started, 2, &wire::Started { pid: 20 }))
            .await;
        init.send(Frame::json(Kind::Started, 1, &wire::Started { pid: 10 }))
            .await;
        init.send(Frame::new(Kind::Stdout, 1, b"a-out".to_vec()))
            .await;
        init.send(Frame::new(Kind::Stderr, 2, b"b-err".to_vec()))
            .await;
        init.send(Frame::json(
            Kind::Exited,
            2,
            &wire::Exited {
                code: None,
                signal: Some(9),
            },
        ))
        .await;
        init.send(Frame::json(
            Kind::Exited,
            1,
            &wire::Exited {
                code: Some(0),
                signal: None,
            },
        ))
        .await;

        assert!(matches!(
            a.events.recv().await,
            Some(ExecEvent::Started { pid: 10 })
        ));
        assert!(matches!(a.events.recv().await, Some(ExecEvent::Stdout(b)) if b == b"a-out"));
        assert!(matches!(a.events.recv().await, Some(ExecEvent::Exited(s)) if s.code == Some(0)));
        assert!(matches!(
            b.events.recv().await,
            Some(ExecEvent::Started { pid: 20 })
        ));
        assert!(matches!(b.events.recv().await, Some(ExecEvent::Stderr(e)) if e == b"b-err"));
        assert!(matches!(b.events.recv().await, Some(ExecEvent::Exited(s)) if s.signal == Some(9)));
        // After the last event the exec is forgotten: its queue ends.
        assert!(a.events.recv().await.is_none());

        // Control frames carry the right payloads on the right channel.
        a.signal(15).await.unwrap();
        a.resize(10, 20).await.unwrap();
        a.stdin(vec![7u8; wire::MAX_PAYLOAD + 1]).await.unwrap();
        a.close_stdin().await.unwrap();
        let f = init.recv().await.unwrap();
        assert_eq!(
            (f.kind, f.parse::<wire::SignalMsg>().unwrap().signal),
            (Kind::Signal, 15)
        );
        let f = init.recv().await.unwrap();
        assert_eq!(
            f.parse::<wire::Resize>().unwrap(),
            wire::Resize { rows: 10, cols: 20 }
        );
        let sizes: Vec<usize> = [init.recv().await.unwrap(), init.recv().await.unwrap()]
            .iter()
            .map(|f| f.payload.len())
            .collect();
        assert_eq!(sizes, [wire::MAX_PAYLOAD, 1]);
        assert_eq!(init.recv().await.unwrap().kind, Kind::StdinEof);
    }

    /// A consumer that does not keep up never stalls the reader (nor init):
    /// what does not fit is dropped and counted, and reported first.
    #[tokio::test]
    async fn process_events_overflow_is_counted_not_blocking() {
        let (chan, mut init) = pair();
        let exec = |pid| wire::ProcessExec {
            pid,
            ppid: 1,
            uid: 1000,
            argv: vec!["true".into()],
            path: "/bin/true".into(),
            cwd: "/workspace".into(),
            time: "t".into(),
        };
        let extra = 7;
        for pid in 0..(PROCESS_QUEUE + extra) as i32 {
            init.send(Frame::json(Kind::Process, 0, &exec(pid))).await;
        }
        let exit = wire::ProcessExit {
            pid: 0,
            code: Some(3),
            signal: None,
            time: "t".into(),
        };
        init.send(Frame::json(Kind::ProcessExit, 0, &exit)).await;
        // The reader got past all of them: the frame after them arrives.
        init.send(Frame::json(Kind::Ready, 0, &ready())).await;
        chan.wait_ready(T).await.unwrap();
        let mut events = chan.process_events().expect("first take");
        assert!(chan.process_events().is_none(), "taken once");
        match events.recv().await {
            Some(ProcessEvent::Overflow { dropped }) => assert_eq!(dropped, extra as u64 + 1),
            other => panic!("{other:?}"),
        }
        match events.recv().await {
            Some(ProcessEvent::Exec(e)) => assert_eq!(e, exec(0)),
            other => panic!("{other:?}"),
        }
        drop(init);
        let mut n = 1;
        while let Some(e) = events.recv().await {
            assert!(matches!(e, ProcessEvent::Exec(_)), "{e:?}");
            n += 1;
        }
        assert_eq!(n, PROCESS_QUEUE);
    }

    #[tokio::test]
    async fn spawn_failed_is_a_failed_event() {
        let (chan, mut init) = pair();
        let mut h = chan.spawn(spawn_msg()).await.unwrap();
        init.recv().await.unwrap();
        let f = wire::Failed {
            layer: "spawn".into(),
            error: "make: No such file or directory".into(),
        };
        init.send(Frame::json(Kind::SpawnFailed, h.chan, &f)).await;
        match h.events.recv().await {
            Some(ExecEvent::Failed(e)) => assert_eq!(e, "make: No such file or directory"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn fatal_is_a_guard_error_naming_the_layer() {
        let (chan, mut init) = pair();
        let f = wire::Failed {
            layer: "landlock".into(),
            error: "kernel has no Landlock".into(),
        };
        init.send(Frame::json(Kind::Fatal, 0, &f)).await;
        drop(init);
        let e = chan.wait_ready(T).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::GuardUnavailable);
        assert!(
            e.message.contains("'landlock'") && e.message.contains("kernel has no Landlock"),
            "{e}"
        );
        // The fatal error sticks even after the stream ended.
        chan.closed().await;
        assert_eq!(
            chan.wait_ready(T).await.unwrap_err().kind,
            ErrorKind::GuardUnavailable
        );
    }

    #[tokio::test]
    async fn eof_or_silence_before_ready_is_a_runtime_error() {
        let (chan, init) = pair();
        drop(init);
        let e = chan.wait_ready(T).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Runtime);
        assert!(e.message.contains("before it was ready"), "{e}");

        let (chan, _init) = pair();
        let e = chan
            .wait_ready(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Runtime);
        assert!(e.message.contains("within 50 ms"), "{e}");
    }

    #[tokio::test]
    async fn closing_fails_every_pending_exec_and_later_calls() {
        let (chan, mut init) = pair();
        init.send(Frame::json(Kind::Ready, 0, &ready())).await;
        let mut a = chan.spawn(spawn_msg()).await.unwrap();
        init.send(Frame::json(
            Kind::Started,
            a.chan,
            &wire::Started { pid: 3 },
        ))
        .await;
        assert!(matches!(
            a.events.recv().await,
            Some(ExecEvent::Started { .. })
        ));
        assert!(!chan.is_closed());
        drop(init);
        match a.events.recv().await {
            Some(ExecEvent::Failed(e)) => assert!(e.starts_with("sandbox ended"), "{e}"),
            other => panic!("{other:?}"),
        }
        chan.closed().await;
        assert!(chan.is_closed());
        let e = chan.spawn(spawn_msg()).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::Runtime);
        assert_eq!(chan.status(T).await.unwrap_err().kind, ErrorKind::Runtime);
    }

    #[tokio::test]
    async fn a_corrupt_stream_closes_the_channel() {
        let (chan, mut init) = pair();
        let mut a = chan.spawn(spawn_msg()).await.unwrap();
        init.to_host
            .write_all(&[0, 0, 0, 5, 200, 0, 0, 0, 1])
            .await
            .unwrap();
        assert!(
            matches!(a.events.recv().await, Some(ExecEvent::Failed(e)) if e.contains("corrupt"))
        );
        assert!(chan.is_closed());
        // A host-to-sandbox kind from init is just as wrong.
        let (chan, mut init) = pair();
        init.send(Frame::new(Kind::Spawn, 1, b"{}".to_vec())).await;
        chan.closed().await;
    }

    #[tokio::test]
    async fn status_replies_in_order_and_time_out() {
        let (chan, mut init) = pair();
        let c = chan.clone();
        let ask = tokio::spawn(async move { c.status(T).await });
        let f = init.recv().await.unwrap();
        assert_eq!(f.kind, Kind::Ping);
        init.send(Frame::json(
            Kind::Status,
            0,
            &wire::Status {
                processes: 4,
                running: 2,
            },
        ))
        .await;
        assert_eq!(
            ask.await.unwrap().unwrap(),
            wire::Status {
                processes: 4,
                running: 2
            }
        );
        let e = chan.status(Duration::from_millis(30)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Timeout);
    }

    #[tokio::test]
    async fn dropping_the_channel_closes_inits_stdin() {
        let (chan, mut init) = pair();
        let h = chan.spawn(spawn_msg()).await.unwrap();
        assert_eq!(init.recv().await.unwrap().kind, Kind::Spawn);
        drop(chan);
        // The handle still holds the channel open...
        h.signal(2).await.unwrap();
        assert_eq!(init.recv().await.unwrap().kind, Kind::Signal);
        drop(h);
        // ...and with the last reference gone, init sees EOF.
        assert!(tokio::time::timeout(T, init.recv())
            .await
            .unwrap()
            .is_none());
    }
}
