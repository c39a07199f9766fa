//! Dataset sources in a member's own engine.
//!
//! A member whose rows live in a database it already runs registers a table of that database as
//! a dataset; nothing is copied beside the node. The node stays the one place that checks and
//! releases: the owner's checked plan (filters, grouping, aggregates, the minimum group size's
//! cells, the per-unit bounds of differential privacy) runs inside the engine as its own SQL,
//! made by DataFusion's unparser from that plan ([`concord_query::remote::portable`]), and what
//! comes back is the plan's output, the groups. Noise is drawn on the node, from the exact totals.
//!
//! - [`ballista`]: Parquet files on an Apache DataFusion Ballista cluster
//!   ([`ballista::BallistaSource`]), the owner's plan sent to its scheduler as DataFusion's own
//!   plan encoding.
//! - [`postgres`]: a PostgreSQL table ([`postgres::PostgresSource`]), its columns mapped to Arrow
//!   types as a file's are (exact decimals included), read over tokio-postgres.
//!
//! This crate connects to the member's own engines; it does not listen and does not touch disk:
//! a password kept in a file is read by the node and handed over.

#![warn(missing_docs)]

pub mod ballista;
pub mod postgres;

/// Whether `host` (a name, an IP address, an IPv6 address in brackets) is this machine's
/// loopback: the only place the node sends a connection that is not encrypted.
fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Errors of a dataset source, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A source's address or options are not usable as given.
    #[error("{0}")]
    Config(String),
    /// The engine refused a connection or a statement.
    #[error("PostgreSQL at {target}: {reason}")]
    Postgres {
        /// The database, without credentials: `user@host:port/db`.
        target: String,
        /// What went wrong, in the engine's words, and what to do.
        reason: String,
        /// The client's error.
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// A Ballista cluster refused a plan, or could not be reached.
    #[error("Ballista cluster at {target}: {reason}")]
    Ballista {
        /// The scheduler, `df://HOST:PORT`.
        target: String,
        /// What went wrong, and what to do.
        reason: String,
    },
    /// A table that cannot be served as a dataset.
    #[error("table {table}: {reason}")]
    Table {
        /// The table as given.
        table: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The table does not fit the shared schema it is registered under.
    #[error(transparent)]
    Query(#[from] concord_query::QueryError),
}
