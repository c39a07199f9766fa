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
    /// The node's folder, configuration or a command's arguments are missing or invalid; the
    /// message says what to change.
    #[error("{0}")]
    Config(String),
    /// A configuration file is not valid TOML of the node's configuration.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: String,
        /// What the TOML parser said, with the line.
        source: toml::de::Error,
    },
    /// The configuration could not be written as TOML.
    #[error("cannot write the configuration: {0}")]
    TomlEncode(#[from] toml::ser::Error),
    /// A JSON file or stored JSON value could not be read.
    #[error("cannot read {what}: {source}")]
    Decode {
        /// What was being read (a file, a stored value, a peer's answer).
        what: String,
        /// serde_json's error, with the line and column.
        source: serde_json::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The node's state is not as it must be (a row missing, a value of the wrong size); the
    /// message names it.
    #[error("state database: {0}")]
    State(String),
    /// SQLite failed under the state database; its error is kept as the source.
    #[error("state database: {0}")]
    Database(#[from] rusqlite::Error),
    /// A SQLite database could not be opened.
    #[error("cannot open {path}: {source}")]
    DatabaseOpen {
        /// The database file.
        path: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// An append to the transparency log failed; the writer's error is kept as the source
    /// (shared by every append of the failed batch).
    #[error("log append failed: {0}")]
    LogAppend(#[source] std::sync::Arc<NodeError>),
    /// SQLite failed under the transparency log; its error is kept as the source.
    #[error("log storage: {0}")]
    LogStorage(#[source] rusqlite::Error),
    /// This node's disk is full, as it is told to another member: no detail of the node.
    #[error("{0}'s disk is full: it takes no new work until its operators free space")]
    DiskFull(String),
    /// A value could not be encoded as JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A task of the node ended before it answered: the node is stopping.
    #[error("{0} has stopped; the node is stopping")]
    Stopped(&'static str),
    /// Arrow could not write or read a result (CSV, IPC).
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A value cannot be sent as an HTTP header.
    #[error("the {name} header cannot be sent: {source}")]
    Header {
        /// The header's name.
        name: &'static str,
        /// Why the value is not a header value.
        source: axum::http::header::InvalidHeaderValue,
    },
    /// A task of the node panicked or was cancelled.
    #[error("a task of the node failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A certificate could not be made or checked; the message says which.
    #[error("TLS: {0}")]
    Tls(String),
    /// A TLS certificate could not be generated.
    #[error("cannot generate a TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused a TLS configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// A PEM file (certificate or key) could not be read.
    #[error("cannot read {path}: {source}")]
    Pem {
        /// The PEM file.
        path: String,
        /// Why it could not be read.
        source: rustls::pki_types::pem::Error,
    },
    /// A charter version, proposal or vote is malformed or not allowed.
    #[error(transparent)]
    Charter(#[from] CharterError),
    /// A signed note, checkpoint or proof is malformed or does not verify.
    #[error(transparent)]
    Note(#[from] LogError),
    /// Planning, checking or running a query failed.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A usage policy is malformed, does not fit its dataset, or loosens the baseline.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A dataset in the member's own engine (PostgreSQL) cannot be reached or read.
    #[error(transparent)]
    Source(#[from] concord_source::SourceError),
    /// The request is malformed; the message says what to send instead.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No token, an unknown token, or a peer that is not a member.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The caller may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The member named is not in the current charter.
    #[error("unknown member: {0}")]
    UnknownMember(String),
    /// A signature does not verify with the member's key.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A signed request's time is too far from this node's clock.
    #[error("stale request: {0}")]
    Stale(String),
    /// A request id was seen before.
    #[error("replayed request: {0}")]
    Replayed(String),
    /// The request was made under another charter version.
    #[error("charter mismatch: {0}")]
    WrongCharter(String),
    /// The owner's usage policy does not release what was asked for.
    #[error("refused by policy: {0}")]
    PolicyRefused(String),
    /// What the request names does not exist here.
    #[error("not found: {0}")]
    NotFound(String),
    /// A body or message is over its size limit.
    #[error("request body too large: {0}")]
    TooLarge(String),
    /// Another member's node failed a call.
    #[error("member {member} answered {code}: {message}")]
    Peer {
        /// The member whose node failed.
        member: String,
        /// How it failed.
        code: PeerFailure,
        /// What it said, or what went wrong, in words.
        message: String,
    },
    /// The node cannot listen on an address.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address as configured.
        addr: String,
        /// Why, and what to do.
        reason: String,
        /// The operating system's error, when there is one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// An error on this node whose detail stays here.
    #[error("internal error: {0}")]
    Internal(String),
    /// Too many requests from one caller.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The request conflicts with the state it acts on (a decision on a decided request).
    #[error("conflict: {0}")]
    Conflict(String),
}

/// How another member's node failed a call: the closed set of what this node can tell apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFailure {
    /// It could not be reached, or did not answer within the time allowed.
    Unreachable,
    /// Its answer is larger than this node reads for the call (`limit` bytes).
    TooLarge {
        /// The most bytes this node reads for the call.
        limit: usize,
    },
    /// It answered with Concord's error shape and this code.
    Answered(wire::ErrorCode),
    /// It answered with an error code this node does not know (a newer version), kept as sent.
    UnknownCode(String),
    /// It answered with this HTTP status and a body that is not Concord's error shape.
    Status(u16),
    /// Its catalog could not be read or is over its limits.
    MalformedCatalog,
    /// Its answer carries no valid release receipt.
    BadReceipt,
    /// Its answer (an Arrow IPC stream) could not be read.
    BadAnswer,
    /// A witness has seen a larger log than the checkpoint it was asked to cosign.
    Rollback,
    /// A witness answered without its cosignature.
    NoCosignature,
    /// A witness answered 409 without the size it has seen.
    BadConflict,
    /// A witness's size kept moving while it was asked.
    Conflict,
}

impl PeerFailure {
    /// The code as it was sent, or as this node names the failure.
    pub fn from_code(code: &str) -> Self {
        wire::ErrorCode::parse(code).map(Self::Answered).unwrap_or_else(|| Self::UnknownCode(code.to_owned()))
    }
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable => f.write_str("unreachable"),
            Self::TooLarge { .. } => f.write_str("answer_too_large"),
            Self::Answered(code) => f.write_str(code.as_str()),
            Self::UnknownCode(code) => f.write_str(code),
            Self::Status(status) => write!(f, "http_{status}"),
            Self::MalformedCatalog => f.write_str("malformed_catalog"),
            Self::BadReceipt => f.write_str("bad_receipt"),
            Self::BadAnswer => f.write_str("bad_answer"),
            Self::Rollback => f.write_str("rollback"),
            Self::NoCosignature => f.write_str("no_cosignature"),
            Self::BadConflict => f.write_str("bad_conflict"),
            Self::Conflict => f.write_str("conflict"),
        }
    }
}

impl NodeError {
    /// An IO error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io { path: path.as_ref().display().to_string(), source }
    }

    /// Whether a write failed because the disk is full (SQLite's `SQLITE_FULL`, or the
    /// operating system's "no space left on device"), anywhere in the error's sources.
    pub fn disk_full(&self) -> bool {
        if matches!(self, Self::DiskFull(_)) {
            return true;
        }
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = e {
            // SQLite says SQLITE_FULL when a write finds no space, and SQLITE_IOERR_SHMSIZE when
            // its shared-memory file cannot grow.
            if let Some(rusqlite::Error::SqliteFailure(f, _)) = err.downcast_ref::<rusqlite::Error>()
                && (f.code == rusqlite::ErrorCode::DiskFull
                    || f.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE)
            {
                return true;
            }
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            {
                return true;
            }
            e = err.source();
        }
        false
    }

    /// A stable code, the same in every API.
    pub fn code(&self) -> wire::ErrorCode {
        use wire::ErrorCode as C;
        if self.disk_full() {
            return C::DiskFull;
        }
        match self {
            Self::Config(_) | Self::Toml { .. } | Self::TomlEncode(_) => C::Config,
            Self::Io { .. } => C::Io,
            Self::State(_)
            | Self::Database(_)
            | Self::DatabaseOpen { .. }
            | Self::LogStorage(_)
            | Self::LogAppend(_)
            | Self::Decode { .. }
            | Self::Encode { .. }
            | Self::Arrow(_)
            | Self::Header { .. }
            | Self::Stopped(_)
            | Self::Task(_) => C::State,
            Self::DiskFull(_) => C::DiskFull,
            Self::Tls(_) | Self::Certificate(_) | Self::Rustls(_) | Self::Pem { .. } => C::Tls,
            Self::Charter(_) => C::Charter,
            Self::Note(_) => C::MalformedNote,
            Self::Query(q) => match q {
                QueryError::Plan(_) => C::InvalidQuery,
                QueryError::Refused(_) => C::QueryRefused,
                QueryError::SubqueryRefused(_) => C::SubqueryRefused,
                QueryError::Dataset { .. } => C::DatasetUnavailable,
                QueryError::Owner { .. } => C::OwnerFailed,
                QueryError::Unreachable { .. } => C::OwnerUnreachable,
                QueryError::Execution(_) | QueryError::Arrow(_) => C::ExecutionFailed,
                QueryError::Limit(_) => C::LimitExceeded,
                QueryError::Policy(_) => C::PolicyRefused,
            },
            Self::Policy(_) => C::Policy,
            Self::Source(concord_source::SourceError::Config(_)) => C::Config,
            Self::Source(_) => C::DatasetUnavailable,
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
        if self.disk_full() {
            return 507;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_full() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None)
    }

    #[test]
    fn a_full_disk_is_disk_full_however_deep_it_lies() {
        let cases = [
            NodeError::Database(sqlite_full()),
            NodeError::LogAppend(std::sync::Arc::new(NodeError::LogStorage(sqlite_full()))),
            NodeError::io("state", std::io::Error::from(std::io::ErrorKind::StorageFull)),
        ];
        for e in cases {
            assert_eq!((e.code(), e.status()), (wire::ErrorCode::DiskFull, 507), "{e}");
        }
        let other = NodeError::LogAppend(std::sync::Arc::new(NodeError::LogStorage(
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None),
        )));
        assert_eq!((other.code(), other.status()), (wire::ErrorCode::State, 500));
    }
}
