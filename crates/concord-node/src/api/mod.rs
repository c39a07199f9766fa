//! The node's surfaces: the peer listener (`peer`, mutual TLS for other members' nodes), the
//! local listener (`local`, the member's own users) and Arrow Flight SQL beside it (`flight`). They parse, authenticate and answer; the
//! work is done by `crate::node`.

pub mod console;
pub mod flight;
pub mod listen;
pub mod local;
pub mod openapi;
pub mod peer;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::NodeError;
use crate::node::Node;
use crate::wire::{ErrorBody, ErrorDetail};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the local API until `shutdown` turns true: the routes of `local`, and its OpenAPI
/// document at `/api/openapi.json`, which needs no token: it describes, it holds nothing.
pub async fn serve_local(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let deadlines = listen::Deadlines::of(&node.cfg.limits);
    // The local listener serves plain HTTP (bind it to loopback): the console's cookies are not
    // `Secure`, which a browser would not send back over plain HTTP.
    let app = local::router(node.clone())
        .route("/api/openapi.json", axum::routing::get(openapi::openapi))
        .merge(console::router(node, false));
    listen::serve(app, listener, listen::Transport::Plain, deadlines, shutdown).await;
}

/// An error as the wire's JSON error body.
pub fn error_body(e: &NodeError) -> ErrorBody {
    // `NodeError::DiskFull` (an owner's, as peers are told) says so itself.
    let message = if e.disk_full() && !matches!(e, NodeError::DiskFull(_)) {
        format!(
            "this node's disk is full: it takes no new work until space is freed on the volume of \
             its folder; nothing it acknowledged is lost ({e})"
        )
    } else {
        e.to_string()
    };
    ErrorBody { error: ErrorDetail { code: e.code(), message } }
}

/// A node error as an HTTP answer: its status and the one JSON error shape.
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
