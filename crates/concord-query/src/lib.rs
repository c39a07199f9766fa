//! Federated SQL with DataFusion.
//!
//! On the requester's side, [`federate`] plans an analyst's SQL, finds every aggregate over a
//! federated table and splits it into one partial-aggregate sub-query per owner (SQL text made by
//! DataFusion's unparser), asks an [`OwnerClient`] for each owner's partials, and merges them with
//! DataFusion into exactly what the same SQL would give over the pooled data. On the owner's side,
//! [`owner::run_subquery`] re-plans the SQL it received against the one dataset it names, checks
//! that it is a partial aggregate and nothing else, and runs it.
//!
//! Invariant: nothing here reads a federated table row by row; its scan is an error, and a plan
//! that still scans one after the split is refused with an explanation.
//!
//! This crate does no network IO and keeps no state: the node crate supplies the transport.

#![warn(missing_docs)]

pub mod chain;
pub mod compare;
pub mod dataset;
mod exact_decimal;
pub mod federate;
mod fixed;
pub mod ipc;
pub mod limits;
mod merge_avg;
pub mod owner;
pub mod params;
pub mod release;
pub mod remote;

pub use federate::{
    Contribution, FederatedTable, OwnerClient, Part, PartialAnswer, QueryOutcome, run_federated,
    run_federated_with,
};

use datafusion::error::DataFusionError;

/// Errors of federated planning and execution, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Malformed SQL, unknown table or column, type errors.
    #[error("{0}")]
    Plan(String),
    /// Valid SQL that would move raw rows across a border, or that cannot be merged.
    #[error("refused: {0}")]
    Refused(String),
    /// The owner's check of a sub-query failed.
    #[error("sub-query refused by the owner's check: {0}")]
    SubqueryRefused(String),
    /// A dataset file is missing, unreadable or does not match its schema.
    #[error("dataset {name}: {reason}")]
    Dataset {
        /// The dataset's name (or its file's path, before it has one).
        name: String,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// An owner answered with an error.
    #[error("member {member} did not answer: {reason}")]
    Owner {
        /// The member whose answer failed.
        member: String,
        /// The member's error, or what was wrong with its answer.
        reason: String,
    },
    /// An owner could not be reached at all.
    #[error("member {member} cannot be reached: {reason}; ask for a partial result to go on without it")]
    Unreachable {
        /// The member (or members, comma-separated) that could not be reached.
        member: String,
        /// Why, and what to check.
        reason: String,
    },
    /// A planned query failed as it ran, or its results could not be read or converted.
    #[error("query execution failed: {0}")]
    Execution(String),
    /// Arrow could not convert, combine or encode results; its error is kept as the source.
    #[error("query execution failed: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A limit of bounded execution was reached: memory, time, groups, sizes.
    #[error("refused: {0}")]
    Limit(String),
    /// The dataset's usage policy does not release this: column modes, release rules.
    #[error("refused by policy: {0}")]
    Policy(String),
}

impl QueryError {
    /// A stable code for the wire, the same in every API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Plan(_) => "invalid_query",
            Self::Refused(_) => "query_refused",
            Self::SubqueryRefused(_) => "subquery_refused",
            Self::Dataset { .. } => "dataset_unavailable",
            Self::Owner { .. } => "owner_failed",
            Self::Unreachable { .. } => "owner_unreachable",
            Self::Execution(_) | Self::Arrow(_) => "execution_failed",
            Self::Limit(_) => "limit_exceeded",
            Self::Policy(_) => "policy_refused",
        }
    }

    /// A planning error from DataFusion: a [`QueryError`] that travelled through DataFusion
    /// comes back as itself, anything else becomes [`Self::Plan`] without DataFusion's prefix.
    pub fn plan(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<QueryError>() {
                Ok(q) => *q,
                Err(other) => Self::Plan(other.to_string()),
            },
            DataFusionError::Context(_, inner) => Self::plan(*inner),
            other => Self::Plan(strip_df_prefix(&other)),
        }
    }

    pub(crate) fn exec(e: DataFusionError) -> Self {
        if let DataFusionError::ResourcesExhausted(_) = e.find_root() {
            return Self::Limit(
                "the query needs more memory than this node allows one query; aggregate over fewer \
                 groups or join smaller results"
                    .into(),
            );
        }
        match e {
            DataFusionError::External(inner) => match inner.downcast::<QueryError>() {
                Ok(q) => *q,
                Err(other) => Self::Execution(other.to_string()),
            },
            DataFusionError::Context(_, inner) => Self::exec(*inner),
            other => Self::Execution(strip_df_prefix(&other)),
        }
    }

    /// Wraps this error so that it can travel through DataFusion callbacks.
    pub(crate) fn into_df(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

/// DataFusion's messages carry a prefix such as "Error during planning: "; keep the message and
/// drop the backtrace hint.
fn strip_df_prefix(e: &DataFusionError) -> String {
    let s = e.strip_backtrace();
    s.trim().to_owned()
}
