//! An opaque tunnel's two directions, copied by one future: no split of
//! the client stream, no select over two copy loops, one idle timer for
//! the tunnel instead of one per read. A tunnel is a handful of small
//! messages each way (a TLS handshake, a request, a response); what it
//! costs beyond the kernel's own work is wake-ups and timer churn per
//! message, which this keeps to one poll of one future.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::http::Meter;

/// A copy buffer starts at this size and grows (x4 per full read) to
/// `MAX_BUF` while reads fill it; it shrinks back when the tunnel goes
/// quiet, so an idle tunnel holds 2 x `MIN_BUF`.
pub(crate) const MIN_BUF: usize = 4 * 1024;
pub(crate) const MAX_BUF: usize = 256 * 1024;

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Both sides closed their sending half, and every byte was passed on.
    Done,
    /// The meter of one direction said stop (a limit was hit).
    Limited,
    /// No bytes either way for the idle timeout.
    Idle,
    Io(io::Error),
}

/// One direction: bytes read from one side not yet written to the other.
struct Dir {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The last read filled the buffer: grow it once it is drained.
    grow: bool,
    /// The reading side closed; the writing side's shutdown is pending.
    eof: bool,
    done: bool,
}

impl Dir {
    fn new(pre: Vec<u8>) -> Dir {
        let end = pre.len();
        Dir {
            buf: pre,
            pos: 0,
            end,
            grow: false,
            eof: false,
            done: false,
        }
    }

    /// Copy until the reader has nothing now (Pending), or this
    /// direction is done. `moved` is set when any byte was read or
    /// written.
    fn poll_copy<R, W, M>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        meter: &mut M,
        moved: &mut bool,
    ) -> Poll<Result<(), End>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
        M: Meter,
    {
        loop {
            if self.pos < self.end {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.pos..self.end]))
                    .map_err(End::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(End::Io(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                *moved = true;
                if self.pos < self.end {
                    continue;
                }
                // Counted once passed on, as a whole read.
                if !meter.copied(self.end) {
                    return Poll::Ready(Err(End::Limited));
                }
                self.pos = 0;
                self.end = 0;
            }
            if self.eof {
                // A failed shutdown (that side is gone already) ends this
                // direction only: the other may still have bytes to pass.
                let _ = ready!(Pin::new(&mut *w).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.grow && self.buf.len() < MAX_BUF {
                self.buf = vec![0u8; (self.buf.len() * 4).min(MAX_BUF)];
            } else if self.buf.len() < MIN_BUF {
                // The bytes read before the tunnel (a ClientHello) were
                // this buffer: reuse its allocation.
                self.buf.resize(MIN_BUF, 0);
            }
            self.grow = false;
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb)).map_err(End::Io)?;
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
                continue;
            }
            *moved = true;
            self.grow = n == self.buf.len();
            self.end = n;
        }
    }

    /// Quiet: give a grown buffer back (nothing is pending in it).
    fn shrink(&mut self) {
        if self.pos == self.end && self.buf.len() > MIN_BUF {
            self.buf = vec![0u8; MIN_BUF];
            self.grow = false;
        }
    }
}

/// Copy `a` to `b` (first `pre`, bytes already read from `a`) and `b` to
/// `a` until both have closed their sending half (each close passed on
/// as a shutdown), one fails, a meter says stop, or nothing moves either
/// way for `idle`.
pub(crate) async fn copy_both<A, B, MA, MB>(
    a: &mut A,
    b: &mut B,
    pre: Vec<u8>,
    a_to_b: &mut MA,
    b_to_a: &mut MB,
    idle: Duration,
) -> End
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    MA: Meter,
    MB: Meter,
{
    let mut up = Dir::new(pre);
    let mut down = Dir::new(Vec::new());
    // One timer for the tunnel, checked (and moved on) when it fires: it
    // is never reset per message.
    let tick = idle.min(Duration::from_secs(30));
    let mut last = Instant::now();
    let timer = tokio::time::sleep(tick);
    tokio::pin!(timer);
    poll_fn(|cx| {
        loop {
            let mut moved = false;
            if !up.done {
                if let Poll::Ready(Err(e)) = up.poll_copy(cx, a, b, a_to_b, &mut moved) {
                    return Poll::Ready(e);
                }
            }
            if !down.done {
                if let Poll::Ready(Err(e)) = down.poll_copy(cx, b, a, b_to_a, &mut moved) {
                    return Poll::Ready(e);
                }
            }
            if up.done && down.done {
                return Poll::Ready(End::Done);
            }
            let now = Instant::now();
            if moved {
                last = now;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: closed if quiet for `idle`, else re-armed.
            if now.duration_since(last) >= idle {
                return Poll::Ready(End::Idle);
            }
            up.shrink();
            down.shrink();
            let next = (last + idle).min(now + tick);
            timer.as_mut().reset(next);
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Count<'a>(&'a AtomicU64, u64);
    impl Meter for Count<'_> {
        fn copied(&mut self, n: usize) -> bool {
            self.0.fetch_add(n as u64, Ordering::Relaxed) + (n as u64) <= self.1
        }
    }

    #[tokio::test]
    async fn both_ways_pre_first_half_close_passed_on() {
        let (mut a_far, mut a) = tokio::io::duplex(64);
        let (mut b, mut b_far) = tokio::io::duplex(64);
        let (ia, ib) = (AtomicU64::new(0), AtomicU64::new(0));
        let t = tokio::spawn(async move {
            let (mut ma, mut mb) = (Count(&ia, u64::MAX), Count(&ib, u64::MAX));
            let e = copy_both(
                &mut a,
                &mut b,
                b"hello ".to_vec(),
                &mut ma,
                &mut mb,
                Duration::from_secs(5),
            )
            .await;
            (e, ia.load(Ordering::Relaxed), ib.load(Ordering::Relaxed))
        });
        // More than the duplex's buffer each way, both at once.
        let big = vec![7u8; 300_000];
        let big2 = big.clone();
        let w = tokio::spawn(async move {
            a_far.write_all(b"world").await.unwrap();
            a_far.write_all(&big2).await.unwrap();
            a_far.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_far.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap(); // a's close reached b
        assert_eq!(&got[..11], b"hello world");
        assert_eq!(got.len(), 11 + big.len());
        b_far.write_all(b"reply").await.unwrap();
        b_far.shutdown().await.unwrap();
        assert_eq!(w.await.unwrap(), b"reply");
        let (e, na, nb) = t.await.unwrap();
        assert!(matches!(e, End::Done), "{e:?}");
        assert_eq!(na, 11 + big.len() as u64);
        assert_eq!(nb, 5);
    }

    #[tokio::test]
    async fn meter_stops_the_tunnel() {
        let (mut a_far, mut a) = tokio::io::duplex(1 << 16);
        let (mut b, _b_far) = tokio::io::duplex(1 << 20);
        let (ia, ib) = (AtomicU64::new(0), AtomicU64::new(0));
        a_far.write_all(&[1u8; 10_000]).await.unwrap();
        let mut ma = Count(&ia, 5_000);
        let mut mb = Count(&ib, u64::MAX);
        let e = copy_both(
            &mut a,
            &mut b,
            Vec::new(),
            &mut ma,
            &mut mb,
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(e, End::Limited), "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnel_is_closed_and_activity_keeps_it_open() {
        let (mut a_far, mut a) = tokio::io::duplex(1 << 16);
        let (mut b, mut b_far) = tokio::io::duplex(1 << 16);
        let t = tokio::spawn(async move {
            let (x, y) = (AtomicU64::new(0), AtomicU64::new(0));
            let start = Instant::now();
            let e = copy_both(
                &mut a,
                &mut b,
                Vec::new(),
                &mut Count(&x, u64::MAX),
                &mut Count(&y, u64::MAX),
                Duration::from_secs(60),
            )
            .await;
            (e, start.elapsed())
        });
        // A byte every 40 s for 200 s: never idle for 60 s.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            a_far.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b_far.read_exact(&mut one).await.unwrap();
        }
        let (e, took) = t.await.unwrap();
        assert!(matches!(e, End::Idle), "{e:?}");
        assert!(took >= Duration::from_secs(260), "{took:?}");
        assert!(took <= Duration::from_secs(291), "{took:?}");
    }
}
