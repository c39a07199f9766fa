//! The local API's wire: every request and response body of the local listener, defined once.
//!
//! The server (`api::local`) takes and returns these types, the client (`net::local`, which the
//! CLI and the tests use) reads them back, and the OpenAPI document (`api::openapi`) is derived
//! from them. This module sits below both sides and depends on no other part of the node.
//!
//! Invariant: a field is added here or nowhere; neither side builds or reads JSON by hand.

use std::fmt;

use concord_charter::governance::{Ballot, Change};
use concord_charter::{AccessNotes, CrossBorders, MemberCard, SharedSchema};
use concord_query::federate::Contribution;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes, the same on the local listener, the peer listener and in the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The node's configuration is missing or invalid.
    Config,
    /// A file on the node could not be read or written.
    Io,
    /// The node's state database or log storage failed.
    State,
    /// A TLS certificate or connection could not be set up or checked.
    Tls,
    /// A charter version, proposal or vote is malformed, not properly signed or not allowed.
    Charter,
    /// A signed note, checkpoint or proof is malformed or does not verify.
    MalformedNote,
    /// A usage policy is malformed, does not fit its dataset, or loosens the charter's baseline.
    Policy,
    /// The request is malformed; the message says what to send instead.
    BadRequest,
    /// No bearer token was sent, or the token is unknown.
    Unauthorized,
    /// The caller may not do this: its token has the wrong role, or the peer is no longer a member.
    Forbidden,
    /// The member named is not in the current charter.
    UnknownMember,
    /// A signature does not verify with the member's key.
    BadSignature,
    /// A signed request's time is more than 300 s from the receiving node's clock.
    StaleRequest,
    /// A request (or access request) with this id was seen before.
    ReplayedRequest,
    /// The request was made under another charter version than the receiving node's.
    CharterMismatch,
    /// The owner's usage policy does not release what was asked for.
    PolicyRefused,
    /// What the request names does not exist on this node.
    NotFound,
    /// A body or message is over its size limit.
    TooLarge,
    /// Another member's node answered with an error; the message names the member and its code.
    PeerError,
    /// The node cannot listen on its configured address.
    Listen,
    /// An error inside this node, whose detail stays on the node.
    Internal,
    /// Too many requests from this caller; try again later.
    RateLimited,
    /// The request conflicts with the state it acts on, such as a decision on a request already decided.
    Conflict,
    /// The SQL is malformed, names an unknown table or column, or has a type error.
    InvalidQuery,
    /// Valid SQL that would move raw rows across a border, or whose results cannot be merged.
    QueryRefused,
    /// An owner's check of its sub-query refused it.
    SubqueryRefused,
    /// A dataset file is missing, unreadable or does not match its schema.
    DatasetUnavailable,
    /// An owner answered its sub-query with an error.
    OwnerFailed,
    /// An owner could not be reached; ask for a partial result to go on without it.
    OwnerUnreachable,
    /// The query failed while it ran.
    ExecutionFailed,
    /// A bound on execution was reached: memory, time, groups or sizes.
    LimitExceeded,
    /// The node's disk is full: it takes no new work until space is freed; nothing it
    /// acknowledged is lost.
    DiskFull,
}

impl ErrorCode {
    /// The code of this wire name, if any.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Io => "io",
            Self::State => "state",
            Self::Tls => "tls",
            Self::Charter => "charter",
            Self::MalformedNote => "malformed_note",
            Self::Policy => "policy",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UnknownMember => "unknown_member",
            Self::BadSignature => "bad_signature",
            Self::StaleRequest => "stale_request",
            Self::ReplayedRequest => "replayed_request",
            Self::CharterMismatch => "charter_mismatch",
            Self::PolicyRefused => "policy_refused",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::PeerError => "peer_error",
            Self::Listen => "listen",
            Self::Internal => "internal",
            Self::RateLimited => "rate_limited",
            Self::Conflict => "conflict",
            Self::InvalidQuery => "invalid_query",
            Self::QueryRefused => "query_refused",
            Self::SubqueryRefused => "subquery_refused",
            Self::DatasetUnavailable => "dataset_unavailable",
            Self::OwnerFailed => "owner_failed",
            Self::OwnerUnreachable => "owner_unreachable",
            Self::ExecutionFailed => "execution_failed",
            Self::LimitExceeded => "limit_exceeded",
            Self::DiskFull => "disk_full",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every error answer, on both listeners: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to act on and a message that says what to do.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// The stable error code.
    pub code: ErrorCode,
    /// What happened and what to do about it, in words; never values from a dataset.
    pub message: String,
}

/// Roles of the local listener's users; a token has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs queries and files access requests.
    Analyst,
    /// Keeps datasets and policies; decides access requests.
    Steward,
    /// Audits logs and reads this node's log.
    Auditor,
    /// Proposes and votes on charter changes.
    Delegate,
    /// Reads the node's metrics.
    Operator,
}

impl Role {
    /// Every role, in the order the help lists them.
    pub const ALL: [Role; 5] = [Self::Analyst, Self::Steward, Self::Auditor, Self::Delegate, Self::Operator];

    /// The role's name: `analyst`, `steward`, `auditor`, `delegate` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Analyst => "analyst",
            Self::Steward => "steward",
            Self::Auditor => "auditor",
            Self::Delegate => "delegate",
            Self::Operator => "operator",
        }
    }

    /// The role of this name, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/status`: who this node is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// The federation's name.
    pub federation: String,
    /// This node's member id.
    pub member: String,
    /// The charter version in force on this node.
    pub charter_version: u64,
    /// Member ids of the current charter version.
    pub members: Vec<String>,
    /// Names of the shared schemas.
    pub schemas: Vec<String>,
    /// The role of the token that asked.
    pub role: Role,
}

/// A peer's `GET /v1/status` (peer listener): who answers and on which charter version.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerStatus {
    /// The federation's name.
    pub federation: String,
    /// The member that answers.
    pub member: String,
    /// The charter version in force on its node.
    pub charter_version: u64,
}

/// How a member's node answers this node, as the console's overview shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberHealth {
    /// The member's id.
    pub id: String,
    /// The member's name in the charter.
    pub name: String,
    /// The member's jurisdiction in the charter.
    pub jurisdiction: String,
    /// The charter version its node reports, when it answered.
    pub charter_version: Option<u64>,
    /// Milliseconds its answer took, when it answered.
    pub latency_ms: Option<u64>,
    /// Why it did not answer, or answered as another member or federation.
    pub problem: Option<String>,
}

/// One of this node's datasets, as `GET /v1/datasets` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetInfo {
    /// The dataset's name on this node.
    pub name: String,
    /// `csv` or `parquet`.
    pub format: concord_query::dataset::DatasetFormat,
    /// The charter's shared schema the dataset conforms to, if any.
    pub shared_schema: Option<String>,
    /// Number of rows, as counted when the dataset was registered.
    pub rows: u64,
    /// `public`, `general`, `important` or `core`.
    pub classification: concord_policy::Classification,
    /// True when the dataset's policy declares personal data.
    pub personal: bool,
    /// Hex SHA-256 of the dataset's policy file, as the log records it.
    pub policy_sha256: String,
    /// False when the file can no longer be read as registered.
    pub available: bool,
}

/// `POST /v1/query`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The SQL to run over the federation's tables (see `GET /v1/tables`).
    pub sql: String,
    /// Stated in every request to owners; `analysis` when absent. One line.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Leave out owners that cannot be reached, and name them, instead of failing.
    #[serde(default)]
    pub partial: bool,
}

/// A query's result.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct QueryResponse {
    /// The result's column names, in order.
    pub columns: Vec<String>,
    /// Number of rows in the result.
    pub row_count: u64,
    /// The result as an Arrow IPC stream, base64.
    pub arrow_ipc: String,
    /// What each member contributed.
    pub provenance: Vec<Contribution>,
    /// Members left out of a partial result because they could not be reached.
    pub missing: Vec<String>,
    /// Datasets left out because their owners do not release them to this member, with why.
    pub left_out: Vec<String>,
}

/// `GET /v1/tables`: the tables a query may name, and what could not be listed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TableList {
    /// Shared schemas, member datasets released to this member, and this node's own tables.
    pub tables: Vec<TableInfo>,
    /// Members whose catalogs could not be read and tables that cannot be read now, named.
    pub warnings: Vec<String>,
}

/// One table a query may name, as `GET /v1/tables` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TableInfo {
    /// The name to write in SQL.
    pub name: String,
    /// What kind of table the name stands for.
    pub kind: TableKind,
    /// The shared schema it follows, if any.
    pub shared_schema: Option<String>,
    /// The owning member, for a member's dataset and this node's own tables.
    pub member: Option<String>,
    /// The table's columns, in order.
    pub columns: Vec<ColumnInfo>,
}

/// What kind of table a name stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// A shared schema: every member's conforming datasets, federated.
    Federated,
    /// One member's dataset (`member.dataset`), which its owner releases to this member.
    MemberDataset,
    /// This node's own dataset (`local.dataset`), for its own analysts.
    Local,
}

impl TableKind {
    /// The kind in words: `federated`, `member dataset` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Federated => "federated",
            Self::MemberDataset => "member dataset",
            Self::Local => "local",
        }
    }
}

/// A column of a table: its SQL type name.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ColumnInfo {
    /// The column's name.
    pub name: String,
    /// The SQL type, for example `BIGINT`, `DECIMAL(15,2)`, `DATE`.
    pub sql_type: String,
    /// True when the column may hold NULL.
    pub nullable: bool,
}

/// `POST /v1/audit`: the members to audit, or all.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    /// Member ids whose logs to audit.
    #[serde(default)]
    pub members: Vec<String>,
    /// Audit every member of the current charter instead.
    #[serde(default)]
    pub all: bool,
}

/// An audit's outcome.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    /// True when nothing failed the audit.
    pub ok: bool,
    /// The full report.
    pub report: AuditReport,
}

/// One member's part of an audit.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberAudit {
    /// The audited member's id.
    pub member: String,
    /// Entries in the member's log, as its latest verified checkpoint states.
    pub size: u64,
    /// Hex root hash of that checkpoint.
    pub root: String,
    /// Member ids of the log's witnesses (under the charter) whose cosignatures on it verified.
    pub cosigners: Vec<String>,
    /// Cosignatures the charter requires of a checkpoint.
    pub witness_quorum: usize,
    /// The size verified before this audit, if any.
    pub previous_size: Option<u64>,
    /// New entries verified by this audit.
    pub new_entries: u64,
    /// What failed for this member, one line each; any fails the audit.
    pub problems: Vec<String>,
}

/// A reconciliation finding between two logs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Mismatch {
    /// The query request's id.
    pub request_id: String,
    /// Member id of the requester.
    pub requester: String,
    /// Member id of the owner.
    pub owner: String,
    /// What the two logs disagree on, in words.
    pub problem: String,
}

/// Kept evidence of a fork or a failed consistency proof.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    /// The log's origin, `<federation>/<member>`.
    pub origin: String,
    /// What does not agree, in words.
    pub detail: String,
    /// The earlier signed checkpoint note.
    pub first: String,
    /// The signed checkpoint note that contradicts it.
    pub second: String,
    /// Unix seconds.
    pub time: i64,
}

/// The whole audit report.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditReport {
    /// One part per audited member.
    pub members: Vec<MemberAudit>,
    /// Accesses the two logs do not tell alike: each fails the audit.
    pub mismatches: Vec<Mismatch>,
    /// Releases whose requester logged the request but not the answer: the requester (or the
    /// connection) went down between the two. Named; they do not fail the audit.
    pub unreceived: Vec<Mismatch>,
    /// Evidence about the audited members' logs.
    pub evidence: Vec<Evidence>,
    /// The notes this node keeps of accesses it was a party to, checked against the salted
    /// commitments of the entries verified in this audit (its own log's and its peers').
    pub notes_checked: u64,
    /// Notes that do not match their commitment, or are missing: each fails the audit.
    pub notes_problems: Vec<String>,
}

impl AuditReport {
    /// True when nothing failed the audit.
    pub fn ok(&self) -> bool {
        self.members.iter().all(|m| m.problems.is_empty())
            && self.mismatches.is_empty()
            && self.evidence.is_empty()
            && self.notes_problems.is_empty()
    }
}

/// `POST /v1/policy/test`: what this node's policy would release for a member's SQL.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyTestRequest {
    /// The requesting member.
    #[serde(rename = "as")]
    pub as_member: String,
    /// The purpose the request would state.
    #[serde(default)]
    pub purpose: String,
    /// Name of one of this node's datasets.
    pub dataset: String,
    /// The SQL the requester would run over it.
    pub sql: String,
}

/// What `policy test` reports: for a member, a purpose and SQL over one of this node's
/// datasets, what would be released and which rule allowed or refused each part.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyTest {
    /// Name of the dataset tested.
    pub dataset: String,
    /// Member id of the requester tested for.
    pub requester: String,
    /// The purpose tested.
    pub purpose: String,
    /// One report per sub-query this node would be sent.
    pub subqueries: Vec<SubqueryTest>,
}

/// One owner's sub-query of a `policy test`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubqueryTest {
    /// The sub-query as SQL text.
    pub sql: String,
    /// `aggregate`, `read_rows` or `describe`; absent when the sub-query cannot be parsed.
    pub action: Option<concord_policy::Action>,
    /// The access decision; absent when the sub-query cannot be parsed.
    pub access: Option<AccessVerdict>,
    /// Released or refused, after the access decision, column modes and release rules.
    pub verdict: concord_query::release::Verdict,
    /// One line per column use and per release rule.
    pub lines: Vec<String>,
    /// The requester's budget left before this query, where differential privacy applies.
    pub budget_left: Option<String>,
}

/// The access decision of a `policy test`: `{"outcome": "allowed", "by": ...}` or
/// `{"outcome": "refused", "reason": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AccessVerdict {
    /// The policy's rules admit the requester.
    Allowed {
        /// The rule that admits it.
        by: String,
    },
    /// No rule admits the requester, or a rule forbids it.
    Refused {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for AccessVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allowed { by } => write!(f, "allowed by {by}"),
            Self::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// `POST /v1/access/requests`: what an analyst asks for.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessAsk {
    /// `member.dataset`.
    pub dataset: String,
    /// `aggregate`, `read_rows` or `describe`.
    pub actions: Vec<concord_policy::Action>,
    /// Why access is asked for, one line.
    pub purpose: String,
    /// The legal basis for the access, one line.
    pub legal_basis: String,
    /// The period asked for, in days from now.
    #[serde(default = "thirty")]
    pub days: u64,
}

fn thirty() -> u64 {
    30
}

/// Which side of an access request this node is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Filed with this node: it owns the dataset.
    In,
    /// Filed by this node's analyst with another member.
    Out,
}

impl Direction {
    /// `in` or `out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }

    /// The direction of this name, if any.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "in" => Some(Self::In),
            "out" => Some(Self::Out),
            _ => None,
        }
    }
}

/// Where an access request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessStatus {
    /// Filed; no steward has decided it yet.
    Pending,
    /// Approved: a grant for its period.
    Approved,
    /// Refused by the owner's steward.
    Refused,
    /// Approved, then revoked by the owner's steward.
    Revoked,
    /// Approved, and its period is over (said when listed).
    Expired,
}

impl AccessStatus {
    /// `pending`, `approved`, `refused`, `revoked` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Refused => "refused",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }

    /// The status of this name, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Refused, Self::Revoked, Self::Expired]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

impl fmt::Display for AccessStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An access request as a node keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessRecord {
    /// The access request's id, 32 hex digits.
    pub id: String,
    /// Whether it was filed with this node or by it.
    pub direction: Direction,
    /// Member id of the requester.
    pub requester: String,
    /// Member id of the owner.
    pub owner: String,
    /// Name of the owner's dataset asked for.
    pub dataset: String,
    /// The actions asked for: `aggregate`, `read_rows`, `describe`.
    pub actions: Vec<concord_policy::Action>,
    /// Why access is asked for.
    pub purpose: String,
    /// The legal basis stated for the access.
    pub legal_basis: String,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub valid_until: i64,
    /// Where the request stands.
    pub status: AccessStatus,
    /// The steward's reason for the decision; absent while pending.
    pub reason: Option<String>,
    /// Unix seconds.
    pub filed_at: i64,
    /// Unix seconds.
    pub decided_at: Option<i64>,
}

/// A steward's decision on an access request: the last segment of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Grant the access for the request's period (or fewer days).
    Approve,
    /// Refuse the request, with a reason.
    Refuse,
    /// End an approved grant now, with a reason.
    Revoke,
}

impl Decision {
    /// The status the decision gives.
    pub fn status(self) -> AccessStatus {
        match self {
            Self::Approve => AccessStatus::Approved,
            Self::Refuse => AccessStatus::Refused,
            Self::Revoke => AccessStatus::Revoked,
        }
    }

    /// `approve`, `refuse` or `revoke`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Refuse => "refuse",
            Self::Revoke => "revoke",
        }
    }

    /// The decision of this name, if any.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Self::Approve),
            "refuse" => Some(Self::Refuse),
            "revoke" => Some(Self::Revoke),
            _ => None,
        }
    }
}

/// `POST /v1/access/requests/{id}/{decision}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// Needed to refuse or revoke.
    #[serde(default)]
    pub reason: String,
    /// Approve for at most this many days (the request's period otherwise).
    #[serde(default)]
    pub days: Option<u64>,
}

/// Where a proposal stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProposalStatus {
    /// Open for votes.
    Live,
    /// Adopted: it became the next charter version.
    Adopted,
    /// Can no longer be adopted: too many no votes, or expired.
    Dead,
}

impl ProposalStatus {
    /// `live`, `adopted` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Adopted => "adopted",
            Self::Dead => "dead",
        }
    }
}

/// One proposal as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProposalView {
    /// The proposal's id: hex SHA-256 of its canonical text.
    pub id: String,
    /// Member id of the proposer.
    pub proposer: String,
    /// The charter version the proposal changes.
    pub base_version: u64,
    /// Unix seconds.
    pub expires: u64,
    /// One line per change.
    pub changes: Vec<String>,
    /// Where the proposal stands.
    pub status: ProposalStatus,
    /// Why a dead proposal died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_because: Option<String>,
    /// Member ids that voted yes.
    pub yes: Vec<String>,
    /// Member ids that voted no.
    pub no: Vec<String>,
    /// Yes votes that adopt it: the current version's threshold.
    pub threshold: usize,
}

/// `GET /v1/governance/proposals`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Proposals {
    /// The charter version in force, which the proposals change.
    pub version: u64,
    /// Every proposal on that version.
    pub proposals: Vec<ProposalView>,
}

/// `POST /v1/governance/proposals`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeRequest {
    /// The changes to the current charter version, applied in order.
    pub changes: Vec<Change>,
    /// How long the proposal stays open, in seconds (a week when absent).
    #[serde(default = "week")]
    pub expires_in_secs: u64,
}

fn week() -> u64 {
    7 * 24 * 3600
}

/// A proposal as filed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Proposed {
    /// The proposal's id: hex SHA-256 of its canonical text.
    pub proposal: String,
    /// The charter version the proposal changes.
    pub base_version: u64,
    /// One line per change.
    pub changes: Vec<String>,
    /// This member's own yes vote, cast with the proposal; absent when it already has a live
    /// yes on another proposal of this version (one yes per version).
    pub vote: Option<VoteReport>,
}

/// `POST /v1/governance/proposals/{id}/vote`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// `yes` or `no`.
    pub vote: Ballot,
    /// An optional one-line reason, signed with the vote.
    #[serde(default)]
    pub reason: String,
}

/// What a vote did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VoteOutcome {
    /// Counted; the proposal stays live.
    Counted,
    /// The vote completed the threshold: the next charter version is in force.
    Adopted,
    /// The proposal can no longer be adopted.
    Dead,
}

impl VoteOutcome {
    /// `counted`, `adopted` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counted => "counted",
            Self::Adopted => "adopted",
            Self::Dead => "dead",
        }
    }
}

/// What a vote did, as the API says it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VoteReport {
    /// Id of the proposal voted on.
    pub proposal: String,
    /// What the vote did.
    pub outcome: VoteOutcome,
    /// The charter version in force after the vote.
    pub version: u64,
    /// Yes votes counted on the proposal (all of them once adopted).
    pub yes: usize,
    /// Yes votes the proposal needs.
    pub threshold: usize,
}

impl VoteReport {
    /// Yes votes still needed; 0 once adopted.
    pub fn needed(&self) -> usize {
        match self.outcome {
            VoteOutcome::Adopted => 0,
            _ => self.threshold.saturating_sub(self.yes),
        }
    }
}

/// What kind of misbehaviour a piece of evidence shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvidenceKind {
    /// A member signed yes on two bodies of one version: both signed votes.
    Equivocation,
    /// A second signed body of a charter version this node holds.
    Fork,
}

/// A vote as it travels: the signed vote note and, for a yes, the signature over the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VoteWire {
    /// The voter's signed vote note, in C2SP signed-note text form.
    pub note: String,
    /// For a yes: the voter's signature over the resulting charter body, as `<key name> <base64>`.
    #[serde(default)]
    pub body_signature: Option<String>,
}

/// One of an equivocation's two votes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VotedOn {
    /// Id of the proposal voted on.
    pub proposal: String,
    /// The signed vote.
    pub vote: VoteWire,
}

/// Two yes votes of one member on different proposals of one version, both signed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Equivocation {
    /// The first yes vote.
    pub first: VotedOn,
    /// The second yes vote, on another proposal.
    pub second: VotedOn,
}

/// One piece of governance evidence.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EvidenceItem {
    /// Its sequence number on this node, for paging with `?after=`.
    pub seq: i64,
    /// The charter version it concerns.
    pub base_version: u64,
    /// What kind of misbehaviour it shows.
    pub kind: EvidenceKind,
    /// When this node received it, RFC 3339.
    pub received_at: String,
    /// For an equivocation: both signed votes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equivocation: Option<Equivocation>,
    /// For a fork: the second signed charter note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork: Option<String>,
}

/// `GET /v1/governance/evidence`: 50 at a time.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EvidencePage {
    /// The pieces of evidence, oldest first.
    pub evidence: Vec<EvidenceItem>,
    /// Pass it as `?after=` for the next page; absent on the last.
    pub next: Option<i64>,
}

/// A charter version as JSON.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CharterView {
    /// The version number: 1 for genesis.
    pub version: u64,
    /// The federation's name.
    pub federation: String,
    /// Hex SHA-256 of the version's canonical text.
    pub digest: String,
    /// The digest of the version before.
    pub previous: Option<String>,
    /// The digest of version 1.
    pub genesis: String,
    /// Yes votes of this version's members needed to adopt the next version.
    pub threshold: usize,
    /// Witness cosignatures a member's checkpoint needs before it is published.
    pub witness_quorum: usize,
    /// Members who witness each log: the members after its owner in id order (every other
    /// member unless the charter sets fewer).
    pub witnesses_per_log: usize,
    /// Baseline rule: the smallest group of distinct people in which personal data is released.
    pub min_group_size: u64,
    /// Baseline rule: the most sensitive classification whose data may cross borders.
    pub cross_borders: CrossBorders,
    /// Who reads the notes of accesses in the logs: the two parties, or every member.
    pub access_notes: AccessNotes,
    /// The members, sorted by id.
    pub members: Vec<MemberCard>,
    /// The shared schemas, sorted by name.
    pub schemas: Vec<SharedSchema>,
    /// Members whose signatures the version carries.
    pub signers: Vec<String>,
    /// What this version changed from the one before, one line each (none for version 1).
    pub changes: Vec<String>,
}

/// `GET /v1/charter/history`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CharterHistory {
    /// Hex SHA-256 of version 1's canonical text.
    pub genesis: String,
    /// Every version this node holds, from version 1 up.
    pub versions: Vec<CharterView>,
}
