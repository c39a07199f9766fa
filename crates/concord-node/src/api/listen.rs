//! The accept loop both listeners share, with the limits that keep a node answering under load
//! and abuse: a cap on open connections (beyond it, clients wait in the kernel's backlog), a
//! share of them per address (beyond it, as many again wait for a slot of their address), a
//! deadline for the TLS handshake and for each request's headers, a lifetime for each
//! connection and for each request, and back-off when accepting fails (for example when the
//! process is out of file handles), instead of a loop that spins.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

use crate::store::config::Limits;

/// The member at the other end of a peer connection, from its certificate pin.
#[derive(Clone, Debug)]
pub struct PeerId(pub String);

/// How connections are opened: plain TCP (local listener) or mutual TLS with pins (peers).
#[derive(Clone)]
pub enum Transport {
    /// HTTP over plain TCP: the local listener.
    Plain,
    /// HTTP over mutual TLS: the peer listener; a client is served only if its pin is a member's.
    Tls {
        /// Accepts TLS 1.3 connections with the peer listener's server configuration.
        acceptor: tokio_rustls::TlsAcceptor,
        /// The members' pins, to name the member at the other end of each connection.
        pins: crate::net::tls::Pins,
        /// Told of each member's connection served, with its protocol (`h2` or `http/1.1`).
        on_connection: Arc<dyn Fn(&'static str) + Send + Sync>,
    },
}

/// The deadlines of one listener, from the node's limits.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Open connections at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one address: no single client takes every slot.
    pub max_per_address: usize,
    /// Time for a TLS handshake.
    pub handshake: Duration,
    /// Time for a request's headers to arrive.
    pub header: Duration,
    /// Longest life of a connection, however it is used.
    pub connection: Duration,
    /// Time for one request, from its headers to its answer.
    pub request: Duration,
}

impl Deadlines {
    /// The deadlines `limits` set: a handshake gets the header time but at most 3 s; a request,
    /// the longer of the two query timeouts plus the header time; a connection, that longer
    /// query timeout plus the idle time.
    pub fn of(limits: &Limits) -> Self {
        let query = Duration::from_secs(limits.query_timeout_secs.max(limits.subquery_timeout_secs));
        Self {
            max_connections: limits.max_connections,
            max_per_address: limits.max_connections_per_address,
            handshake: Duration::from_secs(limits.header_timeout_secs.min(3)),
            header: Duration::from_secs(limits.header_timeout_secs),
            request: query + Duration::from_secs(limits.header_timeout_secs),
            connection: query + Duration::from_secs(limits.idle_timeout_secs),
        }
    }
}

/// Adds a deadline to every request of `app`: a client that sends its body too slowly, or a
/// handler that overruns, gets 408 and the connection's slot back.
pub fn with_request_deadline(app: Router, deadline: Duration) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(deadline, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    let e = crate::NodeError::BadRequest(format!(
                        "the request took longer than {} s; send it again",
                        deadline.as_secs()
                    ));
                    let mut resp = axum::response::IntoResponse::into_response(crate::api::ErrorResponse(e));
                    *resp.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
                    resp
                }
            }
        },
    ))
}

/// Accepts connections until `shutdown` turns true, each served by `app` within `deadlines`.
pub async fn serve(
    app: Router,
    listener: TcpListener,
    transport: Transport,
    deadlines: Deadlines,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = with_request_deadline(app, deadlines.request);
    let slots = Arc::new(Semaphore::new(deadlines.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    let addresses: Addresses = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    loop {
        let Some(permit) = free_slot(&mut connections, &slots, &mut shutdown).await else { break };
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file handles, or the like: wait, then try again, doubling up to 1 s.
                tracing::warn!("accepting a connection failed: {e}; retrying in {} ms", backoff.as_millis());
                drop(permit);
                if shut_down_during(&mut shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let Some(mut per_address) = PerAddress::take(&addresses, remote.ip(), deadlines.max_per_address)
        else {
            tracing::info!(%remote, "too many connections from one address, served and waiting; closed");
            continue;
        };
        // Answers are written in pieces; without this, delayed ACKs add ~40 ms.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let transport = transport.clone();
        connections.spawn(async move {
            let _permit = permit;
            // Over its address's share, a connection waits for a slot as long as a client
            // has to send its headers.
            if !per_address.served_within(deadlines.header).await {
                tracing::info!(%remote, "no slot for its address within {} s; closed", deadlines.header.as_secs());
                return;
            }
            serve_connection(tcp, remote, app, transport, deadlines).await;
            drop(per_address);
        });
    }
    connections.shutdown().await;
}

/// Waits for a free connection slot, reaping finished connections; none once `shutdown` changes.
async fn free_slot(
    connections: &mut tokio::task::JoinSet<()>,
    slots: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        // Finished connections are reaped first, so that the set holds only live ones.
        while connections.try_join_next().is_some() {}
        tokio::select! {
            _ = shutdown.changed() => return None,
            p = slots.clone().acquire_owned() => return p.ok(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits `pause`, or less if `shutdown` changes first; whether it did.
async fn shut_down_during(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}

/// Serves one accepted connection with `app`: at once over plain TCP; over TLS, after a
/// handshake within its deadline, and only for a member's certificate.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    app: Router,
    transport: Transport,
    deadlines: Deadlines,
) {
    match transport {
        Transport::Plain => http(TokioIo::new(tcp), app, None, deadlines).await,
        Transport::Tls { acceptor, pins, on_connection } => {
            let tls = match tokio::time::timeout(deadlines.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%remote, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake not finished in time");
                    return;
                }
            };
            let Some(member) = crate::net::tls::peer_member(tls.get_ref().1, &pins) else { return };
            if tls.get_ref().1.alpn_protocol() == Some(crate::net::tls::H2) {
                on_connection("h2");
                http2(TokioIo::new(tls), app, PeerId(member), deadlines).await;
            } else {
                on_connection("http/1.1");
                http(TokioIo::new(tls), app, Some(PeerId(member)), deadlines).await;
            }
        }
    }
}

type Addresses = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, AddressSlots>>>;

/// One address's share of a listener: `max_per_address` connections served at once, and as
/// many again waiting for one of those to end.
struct AddressSlots {
    served: Arc<Semaphore>,
    /// Connections served or waiting.
    users: usize,
}

/// One connection from an address, counted while it lives: served in one of its address's
/// slots, or waiting for one. Members that share an address (behind one NAT, or on loopback)
/// wait their turn instead of being refused: a burst of witness calls and pushes from fifty
/// members on 127.0.0.1 is served, a client that floods from one address still holds at most
/// twice its share of the listener.
struct PerAddress {
    addresses: Addresses,
    ip: std::net::IpAddr,
    served: Arc<Semaphore>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl PerAddress {
    /// A place for a new connection from `ip`, if fewer than `2 * max` are served or waiting.
    fn take(addresses: &Addresses, ip: std::net::IpAddr, max: usize) -> Option<Self> {
        let mut map = addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let slots = map
            .entry(ip)
            .or_insert_with(|| AddressSlots { served: Arc::new(Semaphore::new(max.max(1))), users: 0 });
        if slots.users >= 2 * max.max(1) {
            return None;
        }
        let served = slots.served.clone();
        slots.users += 1;
        Some(Self { addresses: addresses.clone(), ip, served, permit: None })
    }

    /// Waits up to `wait` for one of the address's served slots; whether it got one.
    async fn served_within(&mut self, wait: Duration) -> bool {
        if let Ok(p) = self.served.clone().try_acquire_owned() {
            self.permit = Some(p);
            return true;
        }
        match tokio::time::timeout(wait, self.served.clone().acquire_owned()).await {
            Ok(Ok(p)) => {
                self.permit = Some(p);
                true
            }
            _ => false,
        }
    }
}

impl Drop for PerAddress {
    fn drop(&mut self) {
        self.permit = None;
        let mut map = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slots) = map.get_mut(&self.ip) {
            slots.users -= 1;
            if slots.users == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Most calls a peer's HTTP/2 connection carries at once; more wait in the peer's node.
const MAX_STREAMS: u32 = 64;

/// Serves a peer's HTTP/2 connection: its calls at once, up to [`MAX_STREAMS`]. At the end of
/// the connection's lifetime it is asked to take no new calls (GOAWAY) and closed once the calls
/// it carries have their answers, each within a request's deadline.
async fn http2<I>(io: TokioIo<I>, app: Router, peer: PeerId, deadlines: Deadlines)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .adaptive_window(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(deadlines.connection) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(deadlines.request, conn).await;
}

async fn http<I>(io: TokioIo<I>, app: Router, peer: Option<PeerId>, deadlines: Deadlines)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(p) = &peer {
            req.extensions_mut().insert(p.clone());
        }
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header)
        .serve_connection(io, service);
    // A connection lives at most this long, however it is used.
    let _ = tokio::time::timeout(deadlines.connection, conn).await;
}
