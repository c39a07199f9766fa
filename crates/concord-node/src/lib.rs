//! A member's node: the only crate that listens on the network and touches disk.
//!
//! Layers, each using only those below it:
//! - `run`: starting and stopping a node (both listeners, the checkpoint loop).
//! - `api`: the surfaces. `api::peer` is the peer listener (mutual TLS with charter pins) that
//!   answers other members' sub-queries, serves the log and witnesses checkpoints; `api::local`
//!   is the local listener (HTTP JSON API with bearer tokens and roles) for the member's users.
//! - `node`: the core. The loaded node (`Node`), the requester's and the owner's logic, witness
//!   and checkpointing, audits, offline commands.
//! - `store` (node folder and keys, SQLite state, the transparency log, log entries) and `net`
//!   (pinned TLS, HTTP clients, the peer protocol's signed notes).
//!
//! Invariant: no byte of a dataset leaves the node except through `node::owner::serve_query`,
//! after the request's signature, freshness, replay, the owner's policy and the owner's
//! sub-query check.

#![warn(missing_docs)]

pub mod api;
pub mod net;
pub mod node;
pub mod run;
pub mod store;
pub mod wire;

use concord_charter::CharterError;
use concord_log::LogError;
use concord_policy::PolicyError;
use concord_query::QueryError;

/// Errors of the node, each with a stable code for the wire.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state database: {0}")]
    State(String),
    /// SQLite failed under the state database; its error is kept as the source.
    #[error("state database: {0}")]
    Database(#[from] rusqlite::Error),
    /// SQLite failed under the transparency log; its error is kept as the source.
    #[error("log storage: {0}")]
    LogStorage(#[source] rusqlite::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Charter(#[from] CharterError),
    #[error(transparent)]
    Note(#[from] LogError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("unknown member: {0}")]
    UnknownMember(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("stale request: {0}")]
    Stale(String),
    #[error("replayed request: {0}")]
    Replayed(String),
    #[error("charter mismatch: {0}")]
    WrongCharter(String),
    #[error("refused by policy: {0}")]
    PolicyRefused(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("request body too large: {0}")]
    TooLarge(String),
    #[error("member {member} answered {code}: {message}")]
    Peer { member: String, code: String, message: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// An error on this node whose detail stays here.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The request conflicts with the state it acts on (a decision on a decided request).
    #[error("conflict: {0}")]
    Conflict(String),
}

impl NodeError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }

    /// A stable code, the same in every API.
    pub fn code(&self) -> wire::ErrorCode {
        use wire::ErrorCode as C;
        match self {
            Self::Config(_) => C::Config,
            Self::Io { .. } => C::Io,
            Self::State(_) | Self::Database(_) | Self::LogStorage(_) => C::State,
            Self::Tls(_) => C::Tls,
            Self::Charter(_) => C::Charter,
            Self::Note(_) => C::MalformedNote,
            Self::Query(q) => match q {
                QueryError::Plan(_) => C::InvalidQuery,
                QueryError::Refused(_) => C::QueryRefused,
                QueryError::SubqueryRefused(_) => C::SubqueryRefused,
                QueryError::Dataset { .. } => C::DatasetUnavailable,
                QueryError::Owner { .. } => C::OwnerFailed,
                QueryError::Unreachable { .. } => C::OwnerUnreachable,
                QueryError::Execution(_) => C::ExecutionFailed,
                QueryError::Limit(_) => C::LimitExceeded,
                QueryError::Policy(_) => C::PolicyRefused,
            },
            Self::Policy(_) => C::Policy,
            Self::BadRequest(_) => C::BadRequest,
            Self::Unauthorized(_) => C::Unauthorized,
            Self::Forbidden(_) => C::Forbidden,
            Self::UnknownMember(_) => C::UnknownMember,
            Self::BadSignature(_) => C::BadSignature,
            Self::Stale(_) => C::StaleRequest,
            Self::Replayed(_) => C::ReplayedRequest,
            Self::WrongCharter(_) => C::CharterMismatch,
            Self::PolicyRefused(_) => C::PolicyRefused,
            Self::NotFound(_) => C::NotFound,
            Self::TooLarge(_) => C::TooLarge,
            Self::Peer { .. } => C::PeerError,
            Self::Listen { .. } => C::Listen,
            Self::Internal(_) => C::Internal,
            Self::RateLimited(_) => C::RateLimited,
            Self::Conflict(_) => C::Conflict,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) | Self::Note(_) | Self::Policy(_) => 400,
            Self::Query(QueryError::Plan(_) | QueryError::Refused(_) | QueryError::SubqueryRefused(_)) => 400,
            Self::Unauthorized(_) | Self::UnknownMember(_) | Self::BadSignature(_) => 401,
            Self::PolicyRefused(_) | Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Replayed(_) | Self::WrongCharter(_) | Self::Conflict(_) => 409,
            Self::Query(QueryError::Policy(_)) => 403,
            Self::Stale(_) => 408,
            Self::TooLarge(_) => 413,
            Self::RateLimited(_) => 429,
            Self::Query(QueryError::Limit(_)) => 422,
            Self::Peer { .. } | Self::Query(QueryError::Owner { .. } | QueryError::Unreachable { .. }) => 502,
            _ => 500,
        }
    }
}
