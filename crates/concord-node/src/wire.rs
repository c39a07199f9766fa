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
    Config,
    Io,
    State,
    Tls,
    Charter,
    MalformedNote,
    Policy,
    BadRequest,
    Unauthorized,
    Forbidden,
    UnknownMember,
    BadSignature,
    StaleRequest,
    ReplayedRequest,
    CharterMismatch,
    PolicyRefused,
    NotFound,
    TooLarge,
    PeerError,
    Listen,
    Internal,
    RateLimited,
    Conflict,
    InvalidQuery,
    QueryRefused,
    SubqueryRefused,
    DatasetUnavailable,
    OwnerFailed,
    OwnerUnreachable,
    ExecutionFailed,
    LimitExceeded,
}

impl ErrorCode {
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
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to act on and a message that says what to do.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
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

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Analyst => "analyst",
            Self::Steward => "steward",
            Self::Auditor => "auditor",
            Self::Delegate => "delegate",
            Self::Operator => "operator",
        }
    }

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
    pub federation: String,
    pub member: String,
    pub charter_version: u64,
    /// Member ids of the current charter version.
    pub members: Vec<String>,
    /// Names of the shared schemas.
    pub schemas: Vec<String>,
    /// The role of the token that asked.
    pub role: Role,
}

/// One of this node's datasets, as `GET /v1/datasets` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DatasetInfo {
    pub name: String,
    /// `csv` or `parquet`.
    pub format: String,
    pub shared_schema: Option<String>,
    pub rows: u64,
    /// `public`, `general`, `important` or `core`.
    pub classification: String,
    pub personal: bool,
    pub policy_sha256: String,
    /// False when the file can no longer be read as registered.
    pub available: bool,
}

/// `POST /v1/query`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
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
    pub columns: Vec<String>,
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

/// One table a query may name, as `GET /v1/tables` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TableInfo {
    /// The name to write in SQL.
    pub name: String,
    pub kind: TableKind,
    /// The shared schema it follows, if any.
    pub shared_schema: Option<String>,
    /// The owning member, for a member's dataset and this node's own tables.
    pub member: Option<String>,
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
    pub name: String,
    /// The SQL type, for example `BIGINT`, `DECIMAL(15,2)`, `DATE`.
    pub sql_type: String,
    pub nullable: bool,
}

/// `POST /v1/audit`: the members to audit, or all.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRequest {
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub all: bool,
}

/// An audit's outcome.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditResponse {
    /// True when nothing failed the audit.
    pub ok: bool,
    pub report: AuditReport,
}

/// One member's part of an audit.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberAudit {
    pub member: String,
    pub size: u64,
    pub root: String,
    pub cosigners: Vec<String>,
    pub witness_quorum: usize,
    /// The size verified before this audit, if any.
    pub previous_size: Option<u64>,
    /// New entries verified by this audit.
    pub new_entries: u64,
    pub problems: Vec<String>,
}

/// A reconciliation finding between two logs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct Mismatch {
    pub request_id: String,
    pub requester: String,
    pub owner: String,
    pub problem: String,
}

/// Kept evidence of a fork or a failed consistency proof.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    pub origin: String,
    pub detail: String,
    pub first: String,
    pub second: String,
    /// Unix seconds.
    pub time: i64,
}

/// The whole audit report.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditReport {
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
    #[serde(default)]
    pub purpose: String,
    pub dataset: String,
    pub sql: String,
}

/// What `policy test` reports: for a member, a purpose and SQL over one of this node's
/// datasets, what would be released and which rule allowed or refused each part.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyTest {
    pub dataset: String,
    pub requester: String,
    pub purpose: String,
    pub subqueries: Vec<SubqueryTest>,
}

/// One owner's sub-query of a `policy test`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubqueryTest {
    pub sql: String,
    pub action: String,
    /// The access decision: `allowed by ...` or `refused: ...`.
    pub access: String,
    /// `released` or `refused: ...`, after column modes and release rules.
    pub verdict: String,
    pub lines: Vec<String>,
    /// The requester's budget left before this query, where differential privacy applies.
    pub budget_left: Option<String>,
}

/// `POST /v1/access/requests`: what an analyst asks for.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessAsk {
    /// `member.dataset`.
    pub dataset: String,
    /// `aggregate`, `read_rows` or `describe`.
    pub actions: Vec<String>,
    pub purpose: String,
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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }

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
    Pending,
    Approved,
    Refused,
    Revoked,
    /// Approved, and its period is over (said when listed).
    Expired,
}

impl AccessStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Refused => "refused",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }

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
    pub id: String,
    pub direction: Direction,
    pub requester: String,
    pub owner: String,
    pub dataset: String,
    /// The actions asked for, separated by commas.
    pub actions: String,
    pub purpose: String,
    pub legal_basis: String,
    /// Unix seconds.
    pub valid_from: i64,
    /// Unix seconds.
    pub valid_until: i64,
    pub status: AccessStatus,
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
    Approve,
    Refuse,
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

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Refuse => "refuse",
            Self::Revoke => "revoke",
        }
    }

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
    Live,
    Adopted,
    Dead,
}

impl ProposalStatus {
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
    pub id: String,
    pub proposer: String,
    pub base_version: u64,
    /// Unix seconds.
    pub expires: u64,
    /// One line per change.
    pub changes: Vec<String>,
    pub status: ProposalStatus,
    /// Why a dead proposal died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_because: Option<String>,
    pub yes: Vec<String>,
    pub no: Vec<String>,
    /// Yes votes that adopt it: the current version's threshold.
    pub threshold: usize,
}

/// `GET /v1/governance/proposals`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Proposals {
    /// The charter version in force, which the proposals change.
    pub version: u64,
    pub proposals: Vec<ProposalView>,
}

/// `POST /v1/governance/proposals`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeRequest {
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
    pub proposal: String,
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
    pub vote: Ballot,
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
    pub proposal: String,
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
    pub note: String,
    #[serde(default)]
    pub body_signature: Option<String>,
}

/// One of an equivocation's two votes.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VotedOn {
    pub proposal: String,
    pub vote: VoteWire,
}

/// Two yes votes of one member on different proposals of one version, both signed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Equivocation {
    pub first: VotedOn,
    pub second: VotedOn,
}

/// One piece of governance evidence.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct EvidenceItem {
    pub seq: i64,
    pub base_version: u64,
    pub kind: EvidenceKind,
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
    pub evidence: Vec<EvidenceItem>,
    /// Pass it as `?after=` for the next page; absent on the last.
    pub next: Option<i64>,
}

/// A charter version as JSON.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CharterView {
    pub version: u64,
    pub federation: String,
    pub digest: String,
    /// The digest of the version before.
    pub previous: Option<String>,
    /// The digest of version 1.
    pub genesis: String,
    pub threshold: usize,
    pub witness_quorum: usize,
    pub min_group_size: u64,
    pub cross_borders: CrossBorders,
    pub access_notes: AccessNotes,
    pub members: Vec<MemberCard>,
    pub schemas: Vec<SharedSchema>,
    /// Members whose signatures the version carries.
    pub signers: Vec<String>,
    /// What this version changed from the one before, one line each (none for version 1).
    pub changes: Vec<String>,
}

/// `GET /v1/charter/history`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CharterHistory {
    pub genesis: String,
    pub versions: Vec<CharterView>,
}
