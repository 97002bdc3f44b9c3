//! brig's own services on a session's proxy channel (the git gateway,
//! issue 5): a request whose host is the service's reserved name is never
//! judged by the egress policy and never dialed. The proxy hands the whole
//! connection over, with the bytes it has read (the request head, maybe
//! part of a body), to the service, which speaks HTTP on it itself, and
//! tells it the session the channel belongs to (never anything the request
//! says).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use brig_egress::Host;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::event::EgressEvent;
use crate::SessionEgress;

/// A connection handed to a local service.
pub trait LocalStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> LocalStream for T {}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The address the session's resolver answers for a local service's host,
/// so a program that ignores HTTP_PROXY is caught on port 80 and served
/// here. It is never dialed (TEST-NET-1).
pub const SERVICE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 81);

/// Rule names of the local services' answers (they hold a `:`, which no
/// configured rule name can).
pub mod rules {
    /// A request handed to a local service.
    pub const SERVICE: &str = "local:service";
    /// A CONNECT (TLS) to a local service's host: they speak plain HTTP on
    /// the channel, which is already brig's own.
    pub const NO_TUNNEL: &str = "local:no-tunnel";
}

pub trait LocalService: Send + Sync {
    /// The reserved host name (under a TLD that is not delegated).
    fn host(&self) -> &str;
    /// Serve the connection: `buffered` holds what the proxy already read
    /// of it (the first request's head and maybe more), to be read first.
    fn serve(
        &self,
        session: Arc<str>,
        stream: Box<dyn LocalStream>,
        buffered: Vec<u8>,
    ) -> BoxFuture<'static, ()>;
}

/// The session's local service for `host`, if any.
pub(crate) fn service_for<'a>(
    s: &'a SessionEgress,
    host: &Host,
) -> Option<&'a Arc<dyn LocalService>> {
    let Host::Domain(d) = host else { return None };
    s.local.iter().find(|l| l.host().eq_ignore_ascii_case(d))
}

/// The resolver's answer for a local service's host (A: [`SERVICE_V4`];
/// AAAA: no data); `None` for every other name.
pub(crate) fn dns_answer(
    s: &SessionEgress,
    q: &crate::dns_wire::Query,
    host: Option<&Host>,
    ev: &mut EgressEvent,
) -> Option<Vec<u8>> {
    use crate::dns_wire;
    if q.qtype != dns_wire::A && q.qtype != dns_wire::AAAA {
        return None;
    }
    service_for(s, host?)?;
    Some(crate::artifact::fixed_answer(
        q,
        SERVICE_V4,
        rules::SERVICE,
        ev,
    ))
}
