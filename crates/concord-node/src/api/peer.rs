//! The peer listener: other members' nodes, over mutual TLS with charter pins.
//!
//! Routes: `GET /v1/status`, `GET /v1/catalog` (the datasets that admit the caller),
//! `POST /v1/query` (a signed query-request note; answered with Arrow IPC and a signed receipt
//! in the `concord-receipt` header).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_log::Note;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::NodeError;
use concord_query::owner::OwnerAnswer;

use crate::entry::LogEntry;
use crate::node::{Node, RECEIPT_HEADER, error_body};
use crate::protocol::{FRESHNESS_SECS, QueryRequest, ReleaseReceipt};

/// Largest request body a peer may send.
pub const MAX_PEER_BODY: usize = 512 * 1024;

/// Largest query request note: it is kept, base64, in a log entry of at most 64 KiB.
pub const MAX_REQUEST_NOTE: usize = 40 * 1024;

/// The member at the other end of the TLS connection, from its certificate pin.
#[derive(Clone, Debug)]
pub struct PeerId(pub String);

pub struct ErrorResponse(pub NodeError);

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(error_body(&self.0))).into_response()
    }
}

impl From<NodeError> for ErrorResponse {
    fn from(e: NodeError) -> Self {
        Self(e)
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/catalog", get(catalog))
        .route("/v1/query", post(query))
        .route("/v1/log/checkpoint", get(log_checkpoint))
        .route("/v1/log/tile/{*path}", get(log_tile))
        .route("/v1/witness/add-checkpoint", post(add_checkpoint))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(node)
}

async fn status(State(node): State<Arc<Node>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "federation": node.federation(),
        "member": node.cfg.member,
        "charter_version": node.charter_version(),
    }))
}

async fn log_checkpoint(State(node): State<Arc<Node>>) -> Response {
    serve_checkpoint(&node)
}

async fn log_tile(
    State(node): State<Arc<Node>>,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Response {
    serve_tile(&node, &path)
}

async fn add_checkpoint(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match crate::witness::add_checkpoint(&node, &body).await {
        Ok(a) => {
            let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [("content-type", a.content_type)], a.body).into_response()
        }
        Err(e) => ErrorResponse(e).into_response(),
    }
}

/// `<prefix>/checkpoint`: the latest published (witness-quorum cosigned) checkpoint.
pub fn serve_checkpoint(node: &Node) -> Response {
    match node.log.published_checkpoint() {
        Ok(Some((_, note))) => (
            StatusCode::OK,
            [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")],
            note.to_string(),
        )
            .into_response(),
        Ok(None) => ErrorResponse(NodeError::NotFound(
            "no checkpoint is published yet; its witnesses have not cosigned one".into(),
        ))
        .into_response(),
        Err(e) => ErrorResponse(e).into_response(),
    }
}

/// `<prefix>/tile/...`: a tile or entry bundle of the latest signed checkpoint's tree.
pub fn serve_tile(node: &Node, path: &str) -> Response {
    let tile = match concord_log::tiles::Tile::parse(&format!("tile/{path}")) {
        Ok(t) => t,
        Err(e) => return ErrorResponse(NodeError::BadRequest(e.to_string())).into_response(),
    };
    let size = match node.log.latest_checkpoint() {
        Ok(c) => c.map(|(s, _)| s).unwrap_or(0),
        Err(e) => return ErrorResponse(e).into_response(),
    };
    match node.log.tile(&tile, size) {
        Ok(Some(bytes)) => (
            StatusCode::OK,
            [
                ("content-type", "application/octet-stream"),
                ("cache-control", "public, max-age=31536000, immutable"),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => ErrorResponse(NodeError::NotFound(format!(
            "tile/{path} is not in the checkpointed tree of {size}"
        )))
        .into_response(),
        Err(e) => ErrorResponse(e).into_response(),
    }
}

async fn catalog(State(node): State<Arc<Node>>, Extension(peer): Extension<PeerId>) -> impl IntoResponse {
    axum::Json(node.catalog_for(&peer.0))
}

async fn query(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    let (receipt, ipc) = serve_query(&node, &peer.0, &body).await.inspect_err(|e| {
        // Ids and codes only: a request's SQL and purpose are not logged here.
        tracing::info!(requester = %peer.0, code = e.code(), "peer request refused");
    })?;
    let mut resp = (StatusCode::OK, ipc).into_response();
    let header = HeaderValue::from_str(&B64.encode(receipt.to_bytes()))
        .map_err(|e| NodeError::State(format!("receipt header: {e}")))?;
    resp.headers_mut().insert(RECEIPT_HEADER, header);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/vnd.apache.arrow.stream"));
    Ok(resp)
}

/// The owner's whole check of a peer's request, then the release. Returns the signed receipt
/// and the Arrow IPC bytes it covers.
pub async fn serve_query(node: &Node, tls_member: &str, body: &[u8]) -> Result<(Note, Vec<u8>), NodeError> {
    if body.len() > MAX_REQUEST_NOTE {
        return Err(NodeError::TooLarge(format!(
            "a request note of {} bytes is over {MAX_REQUEST_NOTE}; it must fit a log entry, so shorten the SQL",
            body.len()
        )));
    }
    let note = Note::parse(body)?;
    let request = QueryRequest::from_text(note.text())?;
    if request.requester != tls_member {
        return Err(NodeError::UnknownMember(format!(
            "the request names requester {} but the TLS connection is {tls_member}'s",
            request.requester
        )));
    }
    let requester = node.charter.charter.member(&request.requester).ok_or_else(|| {
        NodeError::UnknownMember(format!("{} is not a member of {}", request.requester, node.federation()))
    })?;
    note.verify(std::slice::from_ref(&requester.verifier()?)).map_err(|e| {
        NodeError::BadSignature(format!(
            "request {} is not signed by {}'s key: {e}",
            request.request_id, requester.id
        ))
    })?;
    // From here on the requester is authenticated: every outcome is logged.
    let request_note = crate::entry::b64(&note.to_bytes());
    match decide_and_run(node, &request).await {
        Ok((answer, ipc)) => {
            let result_sha256 = concord_charter::hex(&Sha256::digest(&ipc));
            let entry = LogEntry::AccessServed {
                time: crate::entry::now(),
                request_id: request.request_id.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                decision: "released".into(),
                result_sha256: Some(result_sha256.clone()),
                groups_released: answer.groups_released,
                request_note,
            };
            // Invariant: nothing is released before its "access served" entry is on disk.
            let log_index = node.log.append(entry.to_bytes()?).await?;
            let receipt = ReleaseReceipt {
                federation: request.federation.clone(),
                request_id: request.request_id.clone(),
                owner: node.cfg.member.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                result_sha256,
                rows_scanned: answer.rows_scanned,
                groups_released: answer.groups_released,
                log_index,
            };
            tracing::info!(
                request = %request.request_id,
                requester = %request.requester,
                dataset = %request.dataset,
                groups = answer.groups_released,
                log_index,
                "released partial aggregate"
            );
            Ok((receipt.sign(&node.signer)?, ipc))
        }
        Err(e) => {
            let entry = LogEntry::AccessServed {
                time: crate::entry::now(),
                request_id: request.request_id.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                decision: format!("refused:{}", e.code()),
                result_sha256: None,
                groups_released: 0,
                request_note,
            };
            node.log.append(entry.to_bytes()?).await?;
            Err(e)
        }
    }
}

/// Every check after authentication, then the run.
async fn decide_and_run(node: &Node, request: &QueryRequest) -> Result<(OwnerAnswer, Vec<u8>), NodeError> {
    if request.federation != node.federation() || request.owner != node.cfg.member {
        return Err(NodeError::BadRequest(format!(
            "request is addressed to {}/{}, this node is {}/{}",
            request.federation,
            request.owner,
            node.federation(),
            node.cfg.member
        )));
    }
    if request.charter_version != node.charter_version() {
        return Err(NodeError::WrongCharter(format!(
            "request made under charter version {}, this node is at version {}; both sides must accept the same version",
            request.charter_version,
            node.charter_version()
        )));
    }
    let now = chrono::Utc::now().timestamp();
    if (now - request.time).abs() > FRESHNESS_SECS {
        return Err(NodeError::Stale(format!(
            "request time is {} s from this node's clock, more than {FRESHNESS_SECS} s; check both clocks",
            now - request.time
        )));
    }
    if !node.state.record_request(
        &request.request_id,
        &request.requester,
        now,
        now - 2 * FRESHNESS_SECS - 60,
    )? {
        return Err(NodeError::Replayed(format!("request {} was seen before", request.request_id)));
    }
    let answer = node.answer_subquery(&request.requester, &request.dataset, &request.sql).await?;
    let ipc = concord_query::ipc::encode(&answer.schema, &answer.batches)?;
    Ok((answer, ipc))
}

/// Accepts TLS connections until `shutdown` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let server_config = match crate::tls::server_config(&node.tls, node.pins.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("peer listener cannot start: {e}");
            return;
        }
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let app = router(node.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, remote)) = accepted else { continue };
                // Answers are written in pieces; without this, delayed ACKs add ~40 ms.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let app = app.clone();
                let pins = node.pins.clone();
                connections.spawn(async move {
                    let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, "TLS handshake refused: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let Some(member) = crate::tls::peer_member(tls.get_ref().1, &pins) else { return };
                    let peer = PeerId(member);
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        app.clone().oneshot(req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}
