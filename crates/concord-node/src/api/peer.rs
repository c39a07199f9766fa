//! The peer listener: other members' nodes, over mutual TLS with charter pins.
//!
//! Routes: `GET /v1/status`, `GET /v1/catalog` (the datasets that admit the caller),
//! `POST /v1/query` (a signed query-request note; answered with Arrow IPC and a signed receipt
//! in the `concord-receipt` header), `POST /v1/query/check` and `/v1/query/cancel` (the same
//! note: the check round of a query over several owners, which reserves its privacy cost, and
//! its withdrawal), `POST /v1/access/request` (a signed access request),
//! `POST /v1/access/decision` (an owner's signed decision on one of this node's requests),
//! `GET /v1/access/decision/<id>` (the decision on the caller's request, empty while pending),
//! `POST /v1/governance/proposal|vote|charter` (signed proposals, votes and charter versions
//! pushed by members), `GET /v1/governance/acts` and `GET /v1/governance/charter/<n>` (what a
//! member pulls: this node's version with the acts on it, and any version it holds). Every
//! request must come from a member of the current charter version.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::NodeError;
use crate::api::listen::{Deadlines, Transport};
use crate::api::{ErrorResponse, serve_checkpoint, serve_tile};
use crate::node::Node;
use crate::node::requester::{RECEIPT_HEADER, RELEASE_DETAILS_HEADER};

/// Largest request body a peer may send.
pub const MAX_PEER_BODY: usize = 512 * 1024;

pub use crate::api::listen::PeerId;

/// The peer listener's routes, with per-member rate limits and the body limit; the caller adds
/// the transport, which puts each connection's [`PeerId`] into its requests.
pub fn router(node: Arc<Node>) -> Router {
    // What costs the owner work or log space is rate-limited per member; reading the log is not
    // (an audit reads many tiles), and is bounded by the connection limits.
    let limited = Router::new()
        .route("/v1/catalog", get(catalog))
        .route("/v1/query", post(query))
        .route("/v1/query/check", post(query_check))
        .route("/v1/query/cancel", post(query_cancel))
        .route("/v1/witness/add-checkpoint", post(add_checkpoint))
        .route("/v1/access/request", post(access_request))
        .route("/v1/access/decision", post(access_decision))
        .route("/v1/access/decision/{id}", get(access_decision_note))
        .route("/v1/governance/proposal", post(governance_proposal))
        .route("/v1/governance/vote", post(governance_vote))
        .route("/v1/governance/charter", post(governance_charter))
        .route("/v1/governance/charter/{version}", get(governance_charter_note))
        .route("/v1/governance/acts", get(governance_acts))
        .route_layer(axum::middleware::from_fn_with_state((node.clone(), Bucket::Requests), rate_limit));
    // Reading the log has a bucket of its own, larger: an audit reads many tiles at once.
    let reads = Router::new()
        .route("/v1/log/checkpoint", get(log_checkpoint))
        .route("/v1/log/tile/{*path}", get(log_tile))
        .route_layer(axum::middleware::from_fn_with_state((node.clone(), Bucket::Reads), rate_limit));
    Router::new()
        .route("/v1/status", get(status))
        .merge(reads)
        .merge(limited)
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY))
        .with_state(node)
}

async fn status(State(node): State<Arc<Node>>) -> impl IntoResponse {
    axum::Json(crate::wire::PeerStatus {
        federation: node.federation().to_owned(),
        member: node.cfg.member.clone(),
        charter_version: node.charter_version(),
    })
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
    match crate::node::witness::add_checkpoint(&node, &body).await {
        Ok(a) => {
            let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [("content-type", a.content_type)], a.body).into_response()
        }
        Err(e) => ErrorResponse(e).into_response(),
    }
}

async fn access_request(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    let id = node.receive_access_request(&peer.0, &body).await.map_err(ErrorResponse)?;
    Ok(axum::Json(serde_json::json!({ "request": id, "status": "pending" })).into_response())
}

async fn access_decision(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    node.receive_access_decision(&peer.0, &body).await.map_err(ErrorResponse)?;
    Ok(axum::Json(serde_json::json!({ "ok": true })).into_response())
}

async fn governance_proposal(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ErrorResponse> {
    let id = node.take_proposal(&body).await.map_err(ErrorResponse)?;
    Ok(axum::Json(serde_json::json!({ "proposal": id })).into_response())
}

async fn governance_vote(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ErrorResponse> {
    let wire: crate::wire::VoteWire = serde_json::from_slice(&body).map_err(|e| {
        ErrorResponse(NodeError::BadRequest(format!("a vote is JSON {{note, body_signature}}: {e}")))
    })?;
    let report = node.take_vote(&wire).await.map_err(ErrorResponse)?;
    Ok(axum::Json(report).into_response())
}

async fn governance_charter(State(node): State<Arc<Node>>, body: Bytes) -> Result<Response, ErrorResponse> {
    let version = node.take_charter(&body).await.map_err(ErrorResponse)?;
    Ok(axum::Json(serde_json::json!({ "version": version })).into_response())
}

async fn governance_charter_note(
    State(node): State<Arc<Node>>,
    axum::extract::Path(version): axum::extract::Path<u64>,
) -> Result<Response, ErrorResponse> {
    Ok(node.charter_note(version).map_err(ErrorResponse)?.into_response())
}

async fn governance_acts(State(node): State<Arc<Node>>) -> Result<Response, ErrorResponse> {
    Ok(axum::Json(node.acts().map_err(ErrorResponse)?).into_response())
}

async fn access_decision_note(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ErrorResponse> {
    let note = node.access_decision_note(&peer.0, &id).map_err(ErrorResponse)?;
    Ok(note.unwrap_or_default().into_response())
}

async fn catalog(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
) -> Result<Response, ErrorResponse> {
    let catalog = node.catalog_for(&peer.0).await.map_err(ErrorResponse)?;
    node.metrics.catalog_served();
    Ok(axum::Json(catalog).into_response())
}

async fn query(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    let served = crate::node::owner::serve_query(&node, &peer.0, &body).await.inspect_err(|e| {
        // Ids and codes only: a request's SQL and purpose are not logged here.
        node.metrics.refused(e.code().as_str());
        tracing::info!(requester = %peer.0, code = e.code().as_str(), "peer request refused");
    })?;
    node.metrics.served();
    tracing::info!(requester = %peer.0, request = %served.request_id, "peer request served");
    let mut resp = (StatusCode::OK, served.ipc).into_response();
    for (name, bytes) in
        [(RECEIPT_HEADER, served.receipt.to_bytes()), (RELEASE_DETAILS_HEADER, served.details)]
    {
        let header =
            HeaderValue::from_str(&B64.encode(bytes)).map_err(|source| NodeError::Header { name, source })?;
        resp.headers_mut().insert(name, header);
    }
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/vnd.apache.arrow.stream"));
    Ok(resp)
}

/// The check round of a query over several owners: answered `{"ok": true}`, or the refusal.
async fn query_check(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    crate::node::owner::check_query(&node, &peer.0, &body).await.inspect_err(|e| {
        node.metrics.refused(e.code().as_str());
        tracing::info!(requester = %peer.0, code = e.code().as_str(), "peer request refused at its check");
    })?;
    Ok(axum::Json(serde_json::json!({ "ok": true })).into_response())
}

/// A checked request withdrawn by its requester.
async fn query_cancel(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<PeerId>,
    body: Bytes,
) -> Result<Response, ErrorResponse> {
    crate::node::owner::cancel_query(&node, &peer.0, &body)?;
    Ok(axum::Json(serde_json::json!({ "ok": true })).into_response())
}

/// Accepts mutual-TLS connections from members until `shutdown` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let server_config = match crate::net::tls::server_config(node.server_cert.clone(), node.pins.clone()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!("peer listener cannot start: {e}");
            return;
        }
    };
    let counted = node.clone();
    let transport = Transport::Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(server_config),
        pins: node.pins.clone(),
        on_connection: Arc::new(move |protocol| counted.metrics.peer_connection(protocol)),
    };
    let deadlines = Deadlines::of(&node.cfg.limits);
    crate::api::listen::serve(router(node), listener, transport, deadlines, shutdown).await;
}

/// Which of a member's buckets a route draws from.
#[derive(Clone, Copy)]
enum Bucket {
    /// Catalog, query and add-checkpoint calls.
    Requests,
    /// Log reads, at ten times the rate.
    Reads,
}

/// Refuses a member's call over its bucket's rate (429); the limiter counts the refusal in
/// memory, and it is logged with the other counted refusals.
async fn rate_limit(
    State((node, bucket)): State<(Arc<Node>, Bucket)>,
    Extension(peer): Extension<PeerId>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The peer was a member when its connection opened; it must still be one now (a version
    // adopted since, or its own exit, takes effect on open connections too).
    if !node.pins.get().iter().any(|(_, m)| *m == peer.0) {
        return ErrorResponse(NodeError::Forbidden(format!(
            "{} is not a member of charter version {} of {}",
            peer.0,
            node.charter_version(),
            node.federation()
        )))
        .into_response();
    }
    let (limiter, what) = match bucket {
        Bucket::Requests => (&node.peer_rate, "sends requests"),
        Bucket::Reads => (&node.read_rate, "reads this log"),
    };
    let wait = match limiter.admit(&peer.0) {
        Ok(()) => return next.run(req).await,
        Err(wait) => wait,
    };
    let mut resp = ErrorResponse(NodeError::RateLimited(format!(
        "{} {what} faster than {} allows; slow down and retry",
        peer.0, node.cfg.member
    )))
    .into_response();
    // When to retry: `Retry-After` in whole seconds (RFC 9110), and to the millisecond for a
    // member's node, which paces its calls by it.
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs_f64().ceil().max(1.0).to_string()) {
        h.insert(axum::http::header::RETRY_AFTER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&wait.as_millis().max(1).to_string()) {
        h.insert(crate::net::client::RETRY_AFTER_MS, v);
    }
    resp
}
