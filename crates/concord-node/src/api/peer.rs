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
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::NodeError;
use crate::api::{ErrorResponse, serve_checkpoint, serve_tile};
use crate::node::Node;
use crate::node::requester::RECEIPT_HEADER;

/// Largest request body a peer may send.
pub const MAX_PEER_BODY: usize = 512 * 1024;

/// The member at the other end of the TLS connection, from its certificate pin.
#[derive(Clone, Debug)]
pub struct PeerId(pub String);

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
    match crate::node::witness::add_checkpoint(&node, &body).await {
        Ok(a) => {
            let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [("content-type", a.content_type)], a.body).into_response()
        }
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
    let (receipt, ipc) = crate::node::owner::serve_query(&node, &peer.0, &body).await.inspect_err(|e| {
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

/// Accepts TLS connections until `shutdown` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let server_config = match crate::net::tls::server_config(&node.tls, node.pins.clone()) {
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
                    let Some(member) = crate::net::tls::peer_member(tls.get_ref().1, &pins) else { return };
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
