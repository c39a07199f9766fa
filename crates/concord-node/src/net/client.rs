//! HTTP clients: to peers over pinned mutual TLS (HTTP/2 on pooled connections, HTTP/1.1 with a
//! peer that offers only that), and to a node's local listener (HTTP/1.1).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::client::conn::http2::SendRequest;
use hyper::header::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::NodeError;
use crate::net::pool::Key;
use crate::net::tls::TlsKeys;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest response body read, Arrow IPC results included.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// A response: status, headers, body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The response's headers.
    pub headers: HeaderMap,
    /// The whole body, read up to the call's byte limit.
    pub body: Bytes,
}

impl Response {
    /// The code and message of an error answer as written on the wire (`http_<status>` and the
    /// text as it is when the body is not the error shape).
    pub fn error_parts(&self) -> (String, String) {
        let (failure, message) = self.failure();
        (failure.to_string(), message)
    }

    /// The failure an error answer reports, typed, and its message.
    pub fn failure(&self) -> (crate::PeerFailure, String) {
        #[derive(serde::Deserialize)]
        struct Inner {
            code: String,
            message: String,
        }
        #[derive(serde::Deserialize)]
        struct Outer {
            error: Inner,
        }
        match serde_json::from_slice::<Outer>(&self.body) {
            Ok(o) => (crate::PeerFailure::from_code(&o.error.code), o.error.message),
            Err(_) => (
                crate::PeerFailure::Status(self.status),
                String::from_utf8_lossy(&self.body).trim().to_owned(),
            ),
        }
    }
}

/// How long a call may take and how many bytes of answer it reads.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Wall time of the whole call, connecting included.
    pub timeout: Duration,
    /// Most bytes of response body read; a larger answer fails the call.
    pub max_bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self { timeout: REQUEST_TIMEOUT, max_bytes: MAX_RESPONSE_BYTES }
    }
}

/// Why a call failed before its answer could be read.
enum CallFailure {
    /// The peer could not be reached, or the connection failed: in words.
    Failed(String),
    /// The answer's body is larger than the call reads.
    TooLarge,
}

impl From<String> for CallFailure {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

/// Reads a response's body, up to `max_bytes`.
async fn read_body(
    resp: hyper::Response<hyper::body::Incoming>,
    max_bytes: usize,
) -> Result<Response, CallFailure> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = Limited::new(resp.into_body(), max_bytes).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            CallFailure::TooLarge
        } else {
            CallFailure::Failed(format!("reading the response: {e}"))
        }
    })?;
    Ok(Response { status, headers, body: body.to_bytes() })
}

async fn send<S>(io: S, req: Request<Full<Bytes>>, max_bytes: usize) -> Result<Response, CallFailure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let resp = read_body(resp, max_bytes).await;
    driver.abort();
    resp
}

fn request(
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    content_type: &str,
) -> Result<Request<Full<Bytes>>, String> {
    let mut b =
        Request::builder().method(method).uri(path).header("host", host).header("content-type", content_type);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())
}

/// Calls a member's peer listener as its card says, within `budget`.
pub async fn peer_call_with(
    keys: &TlsKeys,
    card: &concord_charter::MemberCard,
    method: &str,
    path: &str,
    body: Vec<u8>,
    budget: Budget,
) -> Result<Response, NodeError> {
    call(keys, &card.id, &card.peer_endpoint, Some(&card.tls_pin), method, path, body, budget)
        .await
        .map(|(r, _)| r)
}

/// The header in which a rate-limited peer says, in milliseconds, when to retry.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// The first pause before retrying a rate-limited call that says nothing of when to retry;
/// each retry doubles it, up to a second.
const FIRST_PAUSE: Duration = Duration::from_millis(20);

/// [`peer_call_with`], paced: an answer `429 rate_limited` is retried after the pause the peer
/// asks for (`retry-after-ms`, or `Retry-After`), plus a random part of a growing pause so
/// that concurrent callers spread out, as long as the retry can start within `budget`'s time;
/// otherwise the 429 is the answer. Only calls the peer refuses before reading them are
/// retried: a rate-limited call was never seen, so sending the same signed body again is no
/// replay.
pub async fn peer_call_paced(
    keys: &TlsKeys,
    card: &concord_charter::MemberCard,
    method: &str,
    path: &str,
    body: Vec<u8>,
    budget: Budget,
) -> Result<Response, NodeError> {
    let deadline = tokio::time::Instant::now() + budget.timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let resp = peer_call_with(keys, card, method, path, body.clone(), Budget { timeout: left, ..budget })
            .await?;
        if resp.status != 429 {
            return Ok(resp);
        }
        let asked = resp
            .headers
            .get(RETRY_AFTER_MS)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_millis)
            .or_else(|| {
                let secs =
                    resp.headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?.parse::<u64>().ok()?;
                Some(Duration::from_secs(secs))
            })
            .unwrap_or(pause);
        let jitter = Duration::from_micros(rand::random::<u64>() % (pause.as_micros() as u64).max(1));
        let wait = asked.min(Duration::from_secs(5)) + jitter;
        if tokio::time::Instant::now() + wait >= deadline {
            return Ok(resp);
        }
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Calls the peer listener at `endpoint` whatever its certificate, for a candidate that does not
/// know the members' pins yet; returns the answer and the server's pin, which the caller checks
/// once it has verified what it read.
pub async fn candidate_call(
    keys: &TlsKeys,
    endpoint: &str,
    method: &str,
    path: &str,
    budget: Budget,
) -> Result<(Response, String), NodeError> {
    call(keys, endpoint, endpoint, None, method, path, Vec::new(), budget).await
}

/// Calls a peer's listener at `endpoint`, accepting only the server whose key has `pin`.
pub async fn peer_call(
    keys: &TlsKeys,
    member: &str,
    endpoint: &str,
    pin: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Response, NodeError> {
    call(keys, member, endpoint, Some(pin), method, path, body, Budget::default()).await.map(|(r, _)| r)
}

#[allow(clippy::too_many_arguments)]
async fn call(
    keys: &TlsKeys,
    member: &str,
    endpoint: &str,
    pin: Option<&str>,
    method: &str,
    path: &str,
    body: Vec<u8>,
    budget: Budget,
) -> Result<(Response, String), NodeError> {
    let fail = |failure: CallFailure| match failure {
        CallFailure::Failed(reason) => NodeError::Peer {
            member: member.to_owned(),
            code: crate::PeerFailure::Unreachable,
            message: format!(
                "{reason} (peer endpoint {endpoint}); check that its node is running and reachable"
            ),
        },
        CallFailure::TooLarge => NodeError::Peer {
            member: member.to_owned(),
            code: crate::PeerFailure::TooLarge { limit: budget.max_bytes },
            message: format!(
                "its answer is larger than the {} bytes this node reads from a peer for this call",
                budget.max_bytes
            ),
        },
    };
    let key = Key { endpoint: endpoint.to_owned(), pin: pin.map(str::to_owned) };
    let work = async {
        let mut req = request(method, endpoint, path, None, body, "application/octet-stream")?;
        if let Some((mut send, server_pin)) = keys.pool.get(&key) {
            match send_h2(&mut send, req, budget.max_bytes).await {
                Ok(resp) => return Ok((resp, server_pin)),
                // The connection was closing before the call went out: open a fresh one.
                Err(H2Failure::NotSent(unsent)) => {
                    keys.pool.forget(&key);
                    req = *unsent;
                }
                Err(H2Failure::Failed(reason)) => {
                    keys.pool.forget(&key);
                    return Err(reason);
                }
            }
        }
        let (tls, server_pin) = connect(keys, endpoint, pin).await?;
        if tls.get_ref().1.alpn_protocol() != Some(crate::net::tls::H2) {
            return Ok((send(tls, req, budget.max_bytes).await?, server_pin));
        }
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            // While calls are open, a peer that stops answering pings closes the connection.
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        // The connection runs until every handle to it is dropped, or the peer closes it.
        tokio::spawn(conn);
        keys.pool.put(key.clone(), sender.clone(), server_pin.clone());
        match send_h2(&mut sender, req, budget.max_bytes).await {
            Ok(resp) => Ok((resp, server_pin)),
            Err(H2Failure::NotSent(_)) => {
                keys.pool.forget(&key);
                Err(CallFailure::Failed("the new connection closed before the call was sent".to_string()))
            }
            Err(H2Failure::Failed(reason)) => {
                keys.pool.forget(&key);
                Err(reason)
            }
        }
    };
    match tokio::time::timeout(budget.timeout, work).await {
        Ok(r) => r.map_err(fail),
        Err(_) => {
            // A connection that let a call run out of time takes no more calls.
            keys.pool.forget(&key);
            Err(fail(CallFailure::Failed(format!("no answer within {} s", budget.timeout.as_secs()))))
        }
    }
}

/// Opens a TCP connection to `endpoint` and a mutual TLS session accepting only the server with
/// `pin` (any server with `None`); returns it and the server's pin.
async fn connect(
    keys: &TlsKeys,
    endpoint: &str,
    pin: Option<&str>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), String> {
    let connector = tokio_rustls::TlsConnector::from(keys.client(pin).map_err(|e| e.to_string())?);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = connector
        .connect(crate::net::tls::server_name(), tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let server_pin = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::net::tls::pin_of_cert(c).ok())
        .ok_or_else(|| "the server sent no certificate".to_string())?;
    Ok((tls, server_pin))
}

/// How a call on an HTTP/2 connection failed.
enum H2Failure {
    /// The connection could not take it; the request comes back unsent.
    NotSent(Box<Request<Full<Bytes>>>),
    /// It was sent and failed: it may have been seen, so it is not sent again.
    Failed(CallFailure),
}

/// Sends one call on an HTTP/2 connection and reads its answer, up to `max_bytes` of body.
async fn send_h2(
    send: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    max_bytes: usize,
) -> Result<Response, H2Failure> {
    let resp = match send.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => {
            return Err(match e.take_message() {
                Some(unsent) => H2Failure::NotSent(Box::new(unsent)),
                None => H2Failure::Failed(CallFailure::Failed(e.into_error().to_string())),
            });
        }
    };
    read_body(resp, max_bytes).await.map_err(H2Failure::Failed)
}

/// Calls a node's local listener at `base` (`http://host:port`) with a JSON body.
pub async fn local_call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&serde_json::Value>,
) -> Result<Response, NodeError> {
    let body = json_body.map(|v| v.to_string().into_bytes()).unwrap_or_default();
    local_request(base, method, path, token, body).await
}

/// Calls a node's local listener at `base` (`http://host:port`) with the body as it is.
pub async fn local_request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<Response, NodeError> {
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| {
            NodeError::Config(format!(
                "node URL {base:?} must start with http://, for example http://127.0.0.1:7100"
            ))
        })?
        .trim_end_matches('/');
    let fail = |failure: CallFailure| match failure {
        CallFailure::Failed(reason) => NodeError::Config(format!(
            "cannot reach the node at {base}: {reason}; is `concord node run` running there?"
        )),
        CallFailure::TooLarge => NodeError::TooLarge(format!(
            "the node at {base} answered more than {MAX_RESPONSE_BYTES} bytes; ask for less (a LIMIT, \
             fewer columns) or use the Flight SQL listener for large results"
        )),
    };
    let work = async {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host))
            .await
            .map_err(|_| "connection timed out".to_string())?
            .map_err(|e| e.to_string())?;
        send(tcp, request(method, host, path, token, body, "application/json")?, MAX_RESPONSE_BYTES).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| fail(CallFailure::Failed("request timed out".into())))?
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Serves one HTTP/1.1 answer with a body of `len` bytes on loopback; returns its address.
    async fn serve_once(len: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&vec![7u8; len]).await;
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_over_the_byte_limit_is_told_apart_from_a_failed_connection() {
        let addr = serve_once(10_000).await;
        let req = request("GET", &addr.to_string(), "/", None, Vec::new(), "text/plain").expect("request");
        let io = TcpStream::connect(addr).await.expect("connect");
        assert!(matches!(send(io, req, 1_000).await, Err(CallFailure::TooLarge)));

        let addr = serve_once(1_000).await;
        let req = request("GET", &addr.to_string(), "/", None, Vec::new(), "text/plain").expect("request");
        let io = TcpStream::connect(addr).await.expect("connect");
        match send(io, req, 1_000).await {
            Ok(resp) => assert_eq!(resp.body.len(), 1_000),
            Err(_) => panic!("an answer at the limit is read whole"),
        }
    }
}
