//! The metadata service's HTTP side: one listening socket per VPC namespace per host, made
//! inside that namespace, and hyper's HTTP/1 on each connection, bounded in every dimension a
//! guest controls (header size and count, body size, how long a request may dribble in, how
//! long a connection may live, how many connections a namespace and one address may hold).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::handler::{self, Reply};
use super::token::TokenKey;
use super::view::InstanceView;
use super::Lookup;
use axum::http::StatusCode;

/// The metadata service's address.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Its port.
pub const PORT: u16 = 80;

/// What a guest may ask of the service at once; every one is a bound on memory or time that
/// a hostile guest would otherwise choose.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line and headers together (larger: 431 and the connection closes).
    pub max_header_bytes: usize,
    /// Header count (more: 431).
    pub max_headers: usize,
    /// The time a request's head may take to arrive (slower: the connection closes).
    pub header_timeout: Duration,
    /// A request body's size (larger: 413); the metadata service reads none.
    pub max_body: usize,
    /// The time a request's body may take to arrive (slower: 408).
    pub body_timeout: Duration,
    /// After this long a connection is closed (after the request in progress, if any).
    pub connection_lifetime: Duration,
    /// Connections open at once in one namespace (more are closed as they are accepted).
    pub max_connections: usize,
    /// Connections open at once from one address (more are closed as they are accepted).
    pub max_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_headers: 32,
            header_timeout: Duration::from_secs(5),
            max_body: 4 * 1024,
            body_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
            max_connections: 256,
            max_per_source: 16,
        }
    }
}

/// One namespace's service: which VPC it answers for and what it answers with.
pub struct Context {
    vpc_id: String,
    lookup: Arc<dyn Lookup>,
    key: TokenKey,
    limits: Limits,
    connections: Arc<Semaphore>,
    per_source: Mutex<HashMap<Ipv4Addr, usize>>,
}

impl Context {
    pub fn new(vpc_id: &str, lookup: Arc<dyn Lookup>, key: TokenKey, limits: Limits) -> Self {
        Self {
            vpc_id: vpc_id.to_string(),
            lookup,
            key,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            per_source: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `peer`, or `None` when the namespace or the
    /// address has as many as it may.
    pub(super) fn admit(self: &Arc<Self>, peer: Ipv4Addr) -> Option<Admitted> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer).or_insert(0);
        if *n >= self.limits.max_per_source {
            return None;
        }
        *n += 1;
        Some(Admitted {
            ctx: self.clone(),
            peer,
            _permit: permit,
        })
    }

    async fn view(&self, peer: Ipv4Addr) -> Result<Option<InstanceView>, String> {
        let lookup = self.lookup.clone();
        let vpc = self.vpc_id.clone();
        tokio::task::spawn_blocking(move || lookup.instance_at(&vpc, peer))
            .await
            .map_err(|e| format!("the lookup task failed: {e}"))?
    }

    async fn respond(
        &self,
        req: hyper::Request<Incoming>,
        peer: Ipv4Addr,
        ttl: &Ttl,
    ) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        // The body is read (the service uses none) so that the connection can carry the next
        // request, within a size and a time.
        let body = Limited::new(body, self.limits.max_body).collect();
        match tokio::time::timeout(self.limits.body_timeout, body).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return closing(Reply::error(StatusCode::PAYLOAD_TOO_LARGE))
            }
            Ok(Err(_)) => return closing(Reply::error(StatusCode::BAD_REQUEST)),
            Err(_) => return closing(Reply::error(StatusCode::REQUEST_TIMEOUT)),
        }
        let view = match self.view(peer).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("metadata service of {}: {e}", self.vpc_id);
                return closing(Reply::error(StatusCode::INTERNAL_SERVER_ERROR));
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let reply = handler::answer(
            view.as_ref(),
            &self.key,
            now,
            handler::Request {
                method: &parts.method,
                path: parts.uri.path(),
                headers: &parts.headers,
            },
        );
        tracing::debug!(
            "metadata {} {peer} {} {} -> {}",
            self.vpc_id,
            parts.method,
            parts.uri.path(),
            reply.status.as_u16()
        );
        if let Some(hops) = reply.hop_limit {
            // The token must not travel further than the hop limit: a reply that cannot be
            // sent with it is not sent at all.
            if let Err(e) = ttl.lower_to(hops) {
                tracing::warn!("metadata service of {}: IP_TTL {hops}: {e}", self.vpc_id);
                return closing(Reply::error(StatusCode::INTERNAL_SERVER_ERROR));
            }
        }
        response(reply, false)
    }
}

/// A connection's claim on its namespace's and address's slots, given back when it ends.
pub(super) struct Admitted {
    ctx: Arc<Context>,
    peer: Ipv4Addr,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self
            .ctx
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

fn response(r: Reply, close: bool) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder()
        .status(r.status)
        .header("content-type", r.content_type)
        .header("server", "EC2ws");
    for (k, v) in &r.headers {
        b = b.header(*k, v.as_str());
    }
    if close {
        b = b.header("connection", "close");
    }
    b.body(Full::new(Bytes::from(r.body)))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// An answer after which the connection closes (its request was not read to its end).
fn closing(r: Reply) -> hyper::Response<Full<Bytes>> {
    response(r, true)
}

/// A connection's IP TTL: lowered (never raised) to a token reply's hop limit, and kept there
/// for the rest of the connection, so that a token reply can never leave with more hops
/// because a later request on the same connection was being answered while it was written.
struct Ttl {
    /// The connection's socket (`None`: not a socket, in tests).
    fd: Option<RawFd>,
    current: AtomicU32,
}

impl Ttl {
    fn lower_to(&self, hops: u8) -> std::io::Result<()> {
        let hops = u32::from(hops);
        let Some(fd) = self.fd else {
            return Ok(());
        };
        if hops >= self.current.load(Ordering::Relaxed) {
            return Ok(());
        }
        let v = hops as libc::c_int;
        // SAFETY: `fd` is the socket of the connection whose request is being answered: the
        // connection (which owns the socket) polls this code and outlives it. setsockopt reads
        // one c_int from a valid pointer with its size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_TTL,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.current.store(hops, Ordering::Relaxed);
        Ok(())
    }
}

/// Serves HTTP/1 on one connection from `peer` until it ends, its lifetime is up or a limit
/// closes it. `fd` is the connection's socket (for the IP TTL of token replies).
pub async fn serve_connection<IO>(io: IO, peer: Ipv4Addr, ctx: Arc<Context>, fd: Option<RawFd>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ttl = Arc::new(Ttl {
        fd,
        // Linux's default (net.ipv4.ip_default_ttl); every hop limit (at most 64) is at most it.
        current: AtomicU32::new(64),
    });
    let limits = ctx.limits.clone();
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        let ttl = ttl.clone();
        async move { Ok::<_, Infallible>(ctx.respond(req, peer, &ttl).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("metadata connection from {peer}: {e}");
            }
        }
        _ = tokio::time::sleep(limits.connection_lifetime) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.body_timeout, conn).await;
        }
    }
}

/// Accepts connections on `listener` for ever, each served on its own task.
pub async fn accept_loop(listener: tokio::net::TcpListener, ctx: Arc<Context>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("metadata service of {}: accept: {e}", ctx.vpc_id);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else {
            continue;
        };
        let peer = *peer.ip();
        let Some(admitted) = ctx.admit(peer) else {
            // Dropping the stream closes it.
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let fd = stream.as_raw_fd();
            serve_connection(stream, peer, ctx, Some(fd)).await;
            drop(admitted);
        });
    }
}

/// Makes the service's listening socket inside network namespace `netns` (where the data
/// plane has put [`ADDRESS`] on the loopback): a thread joins the namespace, binds, and hands
/// the socket back; the socket stays in that namespace.
pub fn bind_in(netns: &str) -> Result<std::net::TcpListener, String> {
    let bound = vireo_net::in_netns(netns, || {
        let l = std::net::TcpListener::bind(SocketAddrV4::new(ADDRESS, PORT))?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .map_err(|e| e.to_string())?;
    bound.map_err(|e| format!("cannot listen on {ADDRESS}:{PORT} in {netns}: {e}"))
}
