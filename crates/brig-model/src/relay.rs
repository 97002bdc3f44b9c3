//! The response body sent to the client: an upstream's body passed through
//! frame by frame (a copy of each kept for the record, no bytes copied),
//! or a body of the gateway's own. An SSE stream that fails midway (an
//! upstream error, the timeout, the session closed) ends with the
//! protocol's error event; when the client goes away the body is dropped,
//! which drops the upstream connection and records `client_closed`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use memchr::memmem;
use tokio::time::Sleep;

use crate::record::{Call, CallOutcome};
use crate::upstream::Conn;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body of the gateway.
pub enum GatewayBody {
    Full(Option<Bytes>),
    Relay(Box<Relay>),
}

impl GatewayBody {
    pub(crate) fn full(b: Bytes) -> GatewayBody {
        GatewayBody::Full(Some(b))
    }
}

pub struct Relay {
    pub(crate) upstream: Incoming,
    pub(crate) conn: Option<Conn>,
    pub(crate) call: Option<Box<Call>>,
    pub(crate) deadline: Pin<Box<Sleep>>,
    /// Drops the usage-only chunk the gateway asked for (OpenAI chat
    /// streams whose client did not ask for usage).
    pub(crate) strip: Option<Stripper>,
    pub(crate) pending: Option<Bytes>,
    pub(crate) done: bool,
}

impl Relay {
    fn finish(&mut self, outcome: CallOutcome, error: Option<String>, rule: Option<&str>) {
        self.done = true;
        if let Some(mut c) = self.call.take() {
            c.outcome = Some(outcome);
            if let Some(e) = error {
                c.error = Some(e);
            }
            if let Some(r) = rule {
                c.rule = Some(r.into());
            }
            // Dropped here: the record is made off the request path.
        }
    }

    /// The stream failed midway: end it with the protocol's error event
    /// (SSE), or fail the body (the client sees a cut connection).
    fn fail(
        &mut self,
        status: u16,
        rule: &str,
        message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // The upstream connection is not reusable: drop (abort) it now.
        self.conn = None;
        let sse = self.call.as_ref().map(|c| (c.sse, c.endpoint));
        self.finish(CallOutcome::Error, Some(message.clone()), Some(rule));
        match sse {
            Some((true, endpoint)) => {
                let mut ev = self.strip.as_mut().map(|s| s.flush()).unwrap_or_default();
                let e = crate::shape::stream_error(endpoint, status, &message);
                if ev.is_empty() {
                    ev = e;
                } else {
                    let mut v = ev.to_vec();
                    v.extend_from_slice(&e);
                    ev = Bytes::from(v);
                }
                Poll::Ready(Some(Ok(Frame::data(ev))))
            }
            _ => Poll::Ready(Some(Err(message.into()))),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Relay(r) => r.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Full(b) => b.is_none(),
            GatewayBody::Relay(r) => r.done && r.pending.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Relay(r) if r.strip.is_none() && !r.done => r.upstream.size_hint(),
            GatewayBody::Relay(_) => SizeHint::default(),
        }
    }
}

impl Relay {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        // The upstream connection is driven here, in this task: when the
        // body has nothing yet, the connection reads, and the body is
        // asked once more.
        let mut driven = false;
        loop {
            match Pin::new(&mut self.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: not relayed
                    };
                    if let Some(c) = self.call.as_mut() {
                        c.keep(&data);
                    }
                    let out = match self.strip.as_mut() {
                        Some(s) => s.feed(data),
                        None => data,
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => {
                    let closed = self
                        .call
                        .as_ref()
                        .and_then(|c| c.session.as_ref())
                        .is_some_and(|s| s.closed.load(Ordering::SeqCst));
                    return if closed {
                        self.fail(503, "session:closed", "the brig session was closed".into())
                    } else {
                        self.fail(
                            502,
                            "upstream:error",
                            format!("the upstream failed mid-response: {e}"),
                        )
                    };
                }
                Poll::Ready(None) => {
                    let tail = self.strip.as_mut().map(|s| s.flush()).unwrap_or_default();
                    if let Some(c) = self.conn.take() {
                        c.release(cx);
                    }
                    let status = self.call.as_ref().map(|c| c.status).unwrap_or(200);
                    let outcome = if status < 400 {
                        CallOutcome::Ok
                    } else {
                        CallOutcome::Error
                    };
                    self.finish(outcome, None, None);
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending if driven => break,
                Poll::Pending => {
                    driven = true;
                    match self.conn.as_mut() {
                        Some(c) => {
                            c.drive(cx);
                        }
                        None => break,
                    }
                }
            }
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return self.fail(
                504,
                "upstream:timeout",
                "the upstream did not finish within its timeout".into(),
            );
        }
        Poll::Pending
    }
}

/// Splits an SSE stream into events and drops the usage-only chunk of an
/// OpenAI chat stream (`"choices":[]` with a `usage`). Whole events pass
/// as they came; only a partial event waits for its end.
#[derive(Default)]
pub(crate) struct Stripper {
    buf: Vec<u8>,
}

fn event_end(b: &[u8]) -> Option<usize> {
    let lf = memmem::find(b, b"\n\n").map(|i| i + 2);
    let crlf = memmem::find(b, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_only(ev: &[u8]) -> bool {
    if memmem::find(ev, b"\"choices\":[]").is_none()
        && memmem::find(ev, b"\"choices\": []").is_none()
    {
        return false;
    }
    let Some(start) = memmem::find(ev, b"data:") else {
        return false;
    };
    let data = &ev[start + 5..];
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
        return false;
    };
    v.get("choices")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.is_empty())
        && v.get("usage").is_some_and(|u| u.is_object())
}

impl Stripper {
    pub fn feed(&mut self, data: Bytes) -> Bytes {
        // The common case: whole events, none of them usage-only.
        if self.buf.is_empty()
            && (data.ends_with(b"\n\n"))
            && memmem::find(&data, b"\"choices\":[]").is_none()
            && memmem::find(&data, b"\"choices\": []").is_none()
        {
            return data;
        }
        self.buf.extend_from_slice(&data);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(n) = event_end(&self.buf[at..]) {
            let ev = &self.buf[at..at + n];
            if !is_usage_only(ev) {
                out.extend_from_slice(ev);
            }
            at += n;
        }
        self.buf.drain(..at);
        Bytes::from(out)
    }

    pub fn flush(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripper_drops_only_the_usage_chunk_across_splits() {
        let mut s = Stripper::default();
        let a = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert_eq!(s.feed(Bytes::from(a)), a);
        let usage = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let done = "data: [DONE]\n\n";
        let all = format!("{usage}{done}");
        let (p1, p2) = all.split_at(20);
        assert_eq!(s.feed(Bytes::from(p1.to_string())), "");
        assert_eq!(s.feed(Bytes::from(p2.to_string())), done);
        assert_eq!(s.flush(), "");
    }
}
