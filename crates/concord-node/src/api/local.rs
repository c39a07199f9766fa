//! The local listener: the member's own users, HTTP JSON with bearer tokens.
//!
//! Routes (every one needs `Authorization: Bearer <token>` from `concord token create`):
//! - `GET /v1/status`: federation, member, charter version, members.
//! - `GET /v1/datasets`: this node's datasets.
//! - `POST /v1/query` `{"sql": "...", "purpose": "...", "partial": false}` (role analyst): the
//!   result as a base64 Arrow IPC stream with its column names, provenance, and the members a
//!   partial result left out (`missing`).
//! - `GET /v1/log/checkpoint`, `GET /v1/log/tile/<L>/<N>[.p/<W>]`, `GET /v1/log/tile/entries/...`,
//!   `GET /v1/log/receipt/<index>`: this node's transparency log per C2SP tlog-tiles, and offline
//!   receipts (role auditor).
//! - `POST /v1/audit` `{"members": [...]}` or `{"all": true}` (role auditor).
//! - `POST /v1/policy/test` `{"as": "...", "purpose": "...", "dataset": "...", "sql": "..."}`
//!   (role steward): what this node's policy would release, rule by rule; nothing runs.
//! - `POST /v1/access/requests` `{"dataset": "member.dataset", "actions": [...], "purpose",
//!   "legal_basis", "days"}` (role analyst): file an access request with the owner.
//! - `GET /v1/access/requests` (roles analyst, steward): requests filed here and with this node.
//! - `POST /v1/access/requests/<id>/approve|refuse|revoke` `{"reason": "...", "days": N}` (role
//!   steward): decide a request filed with this node.
//!
//! - `GET /v1/governance/proposals` (roles delegate, auditor): the proposals on the current
//!   charter version, with their status and votes.
//! - `POST /v1/governance/proposals` `{"changes": [{"change": "min-group-size", "size": 12}, ...],
//!   "expires_in_secs": N}` (role delegate): propose changes to the current version.
//! - `POST /v1/governance/proposals/<id>/vote` `{"vote": "yes"|"no", "reason": "..."}` (role
//!   delegate): this member's vote, signed by this node.
//! - `POST /v1/governance/leave` (role delegate): this member leaves; the others' nodes vote
//!   yes by themselves.
//! - `GET /v1/governance/evidence[?after=SEQ]` (roles delegate, auditor): misbehaviour kept as
//!   evidence, 50 at a time (`next` is the `after` of the next page): equivocations (both signed
//!   votes) and forks (a second signed body of a version held), each kept once.
//! - `GET /v1/charter[?version=N]`: a charter version as JSON (`version`, `federation`,
//!   `members`, `genesis`, `digest`, `threshold`, ...); `GET /v1/charter/history`: every version.
//!
//! Roles: `analyst` (queries), `auditor` (audits and the log), `steward` (datasets and
//! policies), `delegate` (governance). Status and the dataset list answer any role.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::NodeError;
use crate::api::ErrorResponse;
use crate::node::Node;

/// Largest request body a local user may send.
pub const MAX_LOCAL_BODY: usize = 1024 * 1024;

/// Roles of local users.
pub const ROLES: [&str; 4] = ["analyst", "steward", "auditor", "delegate"];

/// Errors answer as `{"error": {"code", "message"}}`, the same as on the peer listener.
type ApiError = ErrorResponse;

/// A JSON request body; the error names what it is and what to send instead.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str, send: &str) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|e| NodeError::BadRequest(format!("{what}: {e}; send {send}")))
}

fn authorize(node: &Node, headers: &HeaderMap, roles: &[&str]) -> Result<String, NodeError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            NodeError::Unauthorized(
                "send `Authorization: Bearer <token>`; create a token with `concord token create`".into(),
            )
        })?;
    let role = node.state.token_role(token.trim())?.ok_or_else(|| {
        NodeError::Unauthorized("unknown token; create one with `concord token create`".into())
    })?;
    if !roles.is_empty() && !roles.contains(&role.as_str()) {
        return Err(NodeError::Forbidden(format!(
            "role {role} may not do this; it needs a token of role {}",
            roles.join(", ")
        )));
    }
    Ok(role)
}

/// Refuses a request without a valid token before its body is read: a client without one
/// holds no connection slot for longer than its headers take.
async fn require_token(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authorize(&node, req.headers(), &[]) {
        Ok(_) => next.run(req).await,
        Err(e) => ErrorResponse(e).into_response(),
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/datasets", get(datasets))
        .route("/v1/query", post(query))
        .route("/v1/log/checkpoint", get(log_checkpoint))
        .route("/v1/log/tile/{*path}", get(log_tile))
        .route("/v1/log/receipt/{index}", get(log_receipt))
        .route("/v1/audit", post(audit))
        .route("/v1/policy/test", post(policy_test))
        .route("/v1/access/requests", get(access_list).post(access_file))
        .route("/v1/access/requests/{id}/{decision}", post(access_decide))
        .route("/v1/governance/proposals", get(proposals_list).post(proposals_file))
        .route("/v1/governance/proposals/{id}/vote", post(proposal_vote))
        .route("/v1/governance/leave", post(leave))
        .route("/v1/governance/evidence", get(evidence_list))
        .route("/v1/charter", get(charter_show))
        .route("/v1/charter/history", get(charter_history))
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_LOCAL_BODY))
        .with_state(node)
}

async fn status(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &[])?;
    let members: Vec<_> = node.charter().charter.members.iter().map(|m| m.id.clone()).collect();
    Ok(axum::Json(serde_json::json!({
        "federation": node.federation(),
        "member": node.cfg.member,
        "charter_version": node.charter_version(),
        "members": members,
        "schemas": node.charter().charter.schemas.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn log_checkpoint(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["auditor"])?;
    Ok(crate::api::serve_checkpoint(&node))
}

async fn log_tile(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    axum::extract::Path(path): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["auditor"])?;
    Ok(crate::api::serve_tile(&node, &path))
}

/// A C2SP tlog-proof for entry `index` against the published checkpoint, with the entry as its
/// extra data: an offline receipt.
async fn log_receipt(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    axum::extract::Path(index): axum::extract::Path<u64>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["auditor"])?;
    let (size, note) = node
        .log
        .published_checkpoint()?
        .ok_or_else(|| NodeError::NotFound("no checkpoint is published yet".into()))?;
    if index >= size {
        return Err(NodeError::NotFound(format!(
            "entry {index} is not in the published checkpoint of {size} entries yet; retry in a second"
        ))
        .into());
    }
    let entry = node
        .log
        .entries(index, index + 1)?
        .pop()
        .ok_or_else(|| NodeError::NotFound(format!("entry {index}")))?;
    let proof = concord_log::tiles::TlogProof {
        extra: Some(entry),
        index,
        proof: node.log.inclusion_proof(index, size)?,
        checkpoint: note,
    };
    Ok(([("content-type", "text/plain; charset=utf-8")], proof.to_text()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditBody {
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    all: bool,
}

async fn audit(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["auditor"])?;
    let q: AuditBody = serde_json::from_slice(&body).map_err(|e| {
        NodeError::BadRequest(format!("body must be JSON {{\"members\": [...]}} or {{\"all\": true}}: {e}"))
    })?;
    let targets: Vec<String> =
        if q.all { node.charter().charter.members.iter().map(|m| m.id.clone()).collect() } else { q.members };
    if targets.is_empty() {
        return Err(NodeError::BadRequest("name a member to audit, or all".into()).into());
    }
    let report = crate::node::audit::audit(&node, &targets).await?;
    Ok(axum::Json(serde_json::json!({ "ok": report.ok(), "report": report })).into_response())
}

async fn datasets(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &[])?;
    let list: Vec<_> = node
        .datasets()
        .await?
        .map
        .values()
        .map(|d| {
            serde_json::json!({
                "name": d.record.name,
                "format": d.record.format,
                "shared_schema": d.record.shared_schema,
                "rows": d.record.rows,
                "classification": d.policy.classification.as_str(),
                "personal": d.policy.holds_personal_data(),
                "policy_sha256": d.policy.digest(),
                "available": d.table.is_ok(),
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

async fn access_file(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["analyst"])?;
    let ask: crate::node::access::AccessAsk = json_body(
        &body,
        "access request body",
        r#"{"dataset": "member.dataset", "actions": ["aggregate"], "purpose", "legal_basis", "days"}"#,
    )?;
    let record = node.file_access_request(&ask).await?;
    Ok(axum::Json(record).into_response())
}

async fn access_list(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["analyst", "steward"])?;
    Ok(axum::Json(node.access_requests().await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    #[serde(default)]
    reason: String,
    days: Option<u64>,
}

async fn proposals_list(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["delegate", "auditor"])?;
    Ok(axum::Json(serde_json::json!({
        "version": node.charter_version(),
        "proposals": node.proposals()?,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct EvidenceQuery {
    #[serde(default)]
    after: i64,
}

/// Pieces of evidence per page of `GET /v1/governance/evidence`.
const EVIDENCE_PAGE: u32 = 50;

async fn evidence_list(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<EvidenceQuery>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["delegate", "auditor"])?;
    let page = node.state.governance_evidence(q.after, EVIDENCE_PAGE)?;
    let next = (page.len() == EVIDENCE_PAGE as usize).then(|| page.last().map(|e| e.0)).flatten();
    let evidence: Vec<serde_json::Value> = page
        .into_iter()
        .map(|(seq, base_version, kind, body, received_at)| {
            let (kind, body) = match kind.as_str() {
                // Both signed votes of the equivocation.
                "evidence" => ("equivocation", serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))),
                // The second charter note for a version this node holds.
                _ => ("fork", serde_json::Value::String(body)),
            };
            serde_json::json!({ "seq": seq, "base_version": base_version, "kind": kind, "received_at": received_at, "evidence": body })
        })
        .collect();
    // `next`: pass it as `?after=` for the next page; null on the last.
    Ok(axum::Json(serde_json::json!({ "evidence": evidence, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposeBody {
    changes: Vec<concord_charter::governance::Change>,
    #[serde(default = "week")]
    expires_in_secs: u64,
}

fn week() -> u64 {
    7 * 24 * 3600
}

async fn proposals_file(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["delegate"])?;
    let b: ProposeBody = json_body(
        &body,
        "proposal body",
        r#"{"changes": [{"change": "min-group-size", "size": 12}], "expires_in_secs": N}"#,
    )?;
    let summary: Vec<String> = b.changes.iter().map(concord_charter::governance::Change::summary).collect();
    let id = node.propose(b.changes, std::time::Duration::from_secs(b.expires_in_secs)).await?;
    Ok(axum::Json(serde_json::json!({
        "proposal": id,
        "base_version": node.charter_version(),
        "changes": summary,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    vote: concord_charter::governance::Ballot,
    #[serde(default)]
    reason: String,
}

async fn proposal_vote(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["delegate"])?;
    let b: VoteBody = json_body(&body, "vote body", r#"{"vote": "yes" or "no", "reason": "..."}"#)?;
    Ok(axum::Json(node.cast_vote(&id, b.vote, &b.reason).await?).into_response())
}

async fn leave(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["delegate"])?;
    let report = node.leave(std::time::Duration::from_secs(30 * 24 * 3600)).await?;
    Ok(axum::Json(report).into_response())
}

#[derive(Deserialize)]
struct CharterQuery {
    version: Option<u64>,
}

/// A charter version as JSON.
fn charter_json(sc: &concord_charter::SignedCharter, genesis: &str) -> serde_json::Value {
    let c = &sc.charter;
    serde_json::json!({
        "version": c.version,
        "federation": c.federation,
        "digest": c.digest(),
        "previous": c.previous,
        "genesis": genesis,
        "threshold": c.threshold,
        "witness_quorum": c.witness_quorum,
        "min_group_size": c.min_group_size,
        "cross_borders": c.cross_borders.as_str(),
        "members": c.members,
        "schemas": c.schemas,
        "signers": sc.signed_by().unwrap_or_default(),
    })
}

fn history(node: &Node) -> Result<Vec<concord_charter::SignedCharter>, NodeError> {
    node.state.charter_history()?.iter().map(|b| Ok(concord_charter::SignedCharter::parse(b)?)).collect()
}

async fn charter_show(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<CharterQuery>,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &[])?;
    let all = history(&node)?;
    let genesis = all.first().map(|g| g.charter.digest()).unwrap_or_default();
    let want = q.version.unwrap_or_else(|| node.charter_version());
    let sc = all.iter().find(|s| s.charter.version == want).ok_or_else(|| {
        NodeError::NotFound(format!(
            "charter version {want}; this node holds versions 1 to {}",
            node.charter_version()
        ))
    })?;
    Ok(axum::Json(charter_json(sc, &genesis)).into_response())
}

async fn charter_history(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&node, &headers, &[])?;
    let all = history(&node)?;
    let genesis = all.first().map(|g| g.charter.digest()).unwrap_or_default();
    let versions: Vec<serde_json::Value> = all.iter().map(|s| charter_json(s, &genesis)).collect();
    Ok(axum::Json(serde_json::json!({ "genesis": genesis, "versions": versions })).into_response())
}

async fn access_decide(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    axum::extract::Path((id, decision)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["steward"])?;
    let decision = match decision.as_str() {
        "approve" => "approved",
        "refuse" => "refused",
        "revoke" => "revoked",
        other => {
            return Err(
                NodeError::NotFound(format!("no action {other:?}; use approve, refuse or revoke")).into()
            );
        }
    };
    let b: DecideBody = if body.is_empty() {
        DecideBody::default()
    } else {
        json_body(&body, "decision body", r#"{"reason": "...", "days": N}"#)?
    };
    let record = node.decide_access_request(&id, decision, &b.reason, b.days).await?;
    Ok(axum::Json(record).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTestBody {
    #[serde(rename = "as")]
    as_member: String,
    #[serde(default)]
    purpose: String,
    dataset: String,
    sql: String,
}

async fn policy_test(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["steward"])?;
    let q: PolicyTestBody = json_body(&body, "policy test body", r#"{"as", "purpose", "dataset", "sql"}"#)?;
    let report = node.policy_test(&q.as_member, &q.purpose, &q.dataset, &q.sql).await?;
    Ok(axum::Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    purpose: Option<String>,
    /// Leave out owners that cannot be reached, and name them, instead of failing.
    #[serde(default)]
    partial: bool,
}

async fn query(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&node, &headers, &["analyst"])?;
    let q: QueryBody = serde_json::from_slice(&body)
        .map_err(|e| NodeError::BadRequest(format!("body must be JSON {{\"sql\": \"...\"}}: {e}")))?;
    let purpose = q.purpose.unwrap_or_else(|| "analysis".into());
    if purpose.contains(['\n', '\r']) || purpose.trim().is_empty() {
        return Err(NodeError::BadRequest("purpose must be one line of text".into()).into());
    }
    let out = node.query(&q.sql, purpose.trim(), q.partial).await?;
    let ipc = concord_query::ipc::encode(&out.schema, &out.batches).map_err(NodeError::from)?;
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    Ok(axum::Json(serde_json::json!({
        "columns": out.schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>(),
        "row_count": rows,
        "arrow_ipc": B64.encode(ipc),
        "provenance": out.provenance,
        "missing": out.missing,
        "left_out": out.left_out,
    }))
    .into_response())
}

/// Serves the local API until `shutdown` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let deadlines = crate::api::listen::Deadlines::of(&node.cfg.limits);
    crate::api::listen::serve(
        router(node),
        listener,
        crate::api::listen::Transport::Plain,
        deadlines,
        shutdown,
    )
    .await;
}
