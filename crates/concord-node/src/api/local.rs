//! The local listener: the member's own users, HTTP JSON with bearer tokens.
//!
//! Every request and response body is a type of [`crate::wire`]; the routes, their roles and
//! their bodies are described by the OpenAPI 3.1 document at `GET /api/openapi.json`
//! (`concord api openapi`), derived from the handlers below. Errors answer as
//! `{"error": {"code", "message"}}` with a stable code, the same as on the peer listener.
//!
//! Roles: `analyst` (queries, access requests), `auditor` (audits and the log), `steward`
//! (policy tests, decisions on access requests), `delegate` (governance), `operator`
//! (metrics). Status, tables, datasets and the charter answer any role.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_charter::governance::Change;
use serde::Deserialize;

use crate::NodeError;
use crate::api::ErrorResponse;
use crate::node::Node;
use crate::wire::{
    AccessAsk, AccessRecord, AuditRequest, AuditResponse, CharterHistory, CharterView, DatasetInfo,
    DecideRequest, Decision, Equivocation, EvidenceItem, EvidenceKind, EvidencePage, PolicyTest,
    PolicyTestRequest, Proposals, ProposeRequest, Proposed, QueryRequest, QueryResponse, Role, Status,
    TableList, VoteReport, VoteRequest,
};

/// Largest request body a local user may send.
pub const MAX_LOCAL_BODY: usize = 1024 * 1024;

type ApiResult<T> = Result<axum::Json<T>, ErrorResponse>;

/// A JSON request body; the error names what it is and what to send instead.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str, send: &str) -> Result<T, NodeError> {
    serde_json::from_slice(body).map_err(|e| NodeError::BadRequest(format!("{what}: {e}; send {send}")))
}

/// Query parameters; a bad one is a bad request in the one error shape.
fn query_params<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, NodeError> {
    q.map(|Query(t)| t).map_err(|e| NodeError::BadRequest(format!("query parameters: {}", e.body_text())))
}

/// The role of the request's bearer token, if it is one of `roles` (any role when empty).
pub fn authorize(node: &Node, headers: &HeaderMap, roles: &[Role]) -> Result<Role, NodeError> {
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
    let role = Role::parse(&role)
        .ok_or_else(|| NodeError::State(format!("a token has the unknown role {role:?}; create it again")))?;
    if !roles.is_empty() && !roles.contains(&role) {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(NodeError::Forbidden(format!(
            "role {role} may not do this; it needs a token of role {}",
            names.join(", ")
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

/// The local API's routes, each behind a token (the document is added by `api::serve_local`).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/tables", get(tables))
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
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_LOCAL_BODY))
        .with_state(node)
}

/// Prometheus metrics of this node (role operator).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")))]
async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Result<Response, ErrorResponse> {
    authorize(&node, &headers, &[Role::Operator])?;
    Ok((
        [("content-type", "text/plain; version=0.0.4; charset=utf-8"), ("cache-control", "no-store")],
        node.metrics_text()?,
    )
        .into_response())
}

/// Federation, member, charter version, members and shared schemas; the caller's role.
#[utoipa::path(get, path = "/v1/status", tag = "node", responses((status = 200, body = Status)))]
async fn status(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<Status> {
    let role = authorize(&node, &headers, &[])?;
    let charter = node.charter();
    Ok(axum::Json(Status {
        federation: node.federation().to_owned(),
        member: node.cfg.member.clone(),
        charter_version: node.charter_version(),
        members: charter.charter.members.iter().map(|m| m.id.clone()).collect(),
        schemas: charter.charter.schemas.iter().map(|s| s.name.clone()).collect(),
        role,
    }))
}

/// The tables a query may name: shared schemas, the member datasets released to this member,
/// and this node's own tables; each with its columns as SQL types.
#[utoipa::path(get, path = "/v1/tables", tag = "query", responses((status = 200, body = TableList)))]
async fn tables(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<TableList> {
    authorize(&node, &headers, &[])?;
    Ok(axum::Json(node.tables().await?))
}

/// This node's datasets.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets", responses((status = 200, body = Vec<DatasetInfo>)))]
async fn datasets(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<Vec<DatasetInfo>> {
    authorize(&node, &headers, &[])?;
    let list = node
        .datasets()
        .await?
        .map
        .values()
        .map(|d| DatasetInfo {
            name: d.record.name.clone(),
            format: d.record.format,
            shared_schema: d.record.shared_schema.clone(),
            rows: d.record.rows,
            classification: d.policy.classification,
            personal: d.policy.holds_personal_data(),
            policy_sha256: d.policy.digest(),
            available: d.table.is_ok(),
        })
        .collect();
    Ok(axum::Json(list))
}

/// Runs federated SQL (role analyst): the result as a base64 Arrow IPC stream with its
/// provenance, and the members or datasets a result leaves out.
#[utoipa::path(post, path = "/v1/query", tag = "query", request_body = QueryRequest,
    responses((status = 200, body = QueryResponse)))]
async fn query(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<QueryResponse> {
    authorize(&node, &headers, &[Role::Analyst])?;
    let q: QueryRequest =
        json_body(&body, "query body", r#"{"sql": "...", "purpose": "...", "partial": false}"#)?;
    let purpose = q.purpose.unwrap_or_else(|| "analysis".into());
    if purpose.contains(['\n', '\r']) || purpose.trim().is_empty() {
        return Err(NodeError::BadRequest("purpose must be one line of text".into()).into());
    }
    // Codes and sizes only: the SQL and the values stay out of the node's log.
    let out = node.query(&q.sql, purpose.trim(), q.partial).await.inspect_err(|e| {
        node.metrics.query_made(Some(e.code().as_str()));
        tracing::info!(code = e.code().as_str(), "query failed");
    })?;
    node.metrics.query_made(None);
    let ipc = concord_query::ipc::encode(&out.schema, &out.batches).map_err(NodeError::from)?;
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    tracing::info!(rows, owners = out.provenance.len(), missing = out.missing.len(), "query answered");
    Ok(axum::Json(QueryResponse {
        columns: out.schema.fields().iter().map(|f| f.name().clone()).collect(),
        row_count: rows as u64,
        arrow_ipc: B64.encode(ipc),
        provenance: out.provenance,
        missing: out.missing,
        left_out: out.left_out,
    }))
}

/// The latest published checkpoint of this node's log, a C2SP signed note (role auditor).
#[utoipa::path(get, path = "/v1/log/checkpoint", tag = "log",
    responses((status = 200, description = "C2SP tlog-checkpoint", content_type = "text/plain", body = String)))]
async fn log_checkpoint(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<Response, ErrorResponse> {
    authorize(&node, &headers, &[Role::Auditor])?;
    Ok(crate::api::serve_checkpoint(&node))
}

/// A tile or entry bundle of this node's log per C2SP tlog-tiles (role auditor).
#[utoipa::path(get, path = "/v1/log/tile/{path}", tag = "log",
    params(("path" = String, Path, description = "`L/N[.p/W]` or `entries/N[.p/W]`, N in tlog-tiles' 3-digit groups")),
    responses((status = 200, description = "tile bytes", content_type = "application/octet-stream", body = Vec<u8>)))]
async fn log_tile(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Result<Response, ErrorResponse> {
    authorize(&node, &headers, &[Role::Auditor])?;
    Ok(crate::api::serve_tile(&node, &path))
}

/// A C2SP tlog-proof for entry `index` against the published checkpoint, with the entry as its
/// extra data: an offline receipt (role auditor).
#[utoipa::path(get, path = "/v1/log/receipt/{index}", tag = "log",
    params(("index" = u64, Path, description = "the entry's index")),
    responses((status = 200, description = "C2SP tlog-proof", content_type = "text/plain", body = String)))]
async fn log_receipt(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(index): Path<String>,
) -> Result<Response, ErrorResponse> {
    authorize(&node, &headers, &[Role::Auditor])?;
    let index: u64 = index.parse().map_err(|_| {
        NodeError::BadRequest(format!("entry index {index:?} is not a number; write 0, 1, 2, ..."))
    })?;
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

/// Audits members' logs and reconciles the accesses between them (role auditor).
#[utoipa::path(post, path = "/v1/audit", tag = "log", request_body = AuditRequest,
    responses((status = 200, body = AuditResponse)))]
async fn audit(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<AuditResponse> {
    authorize(&node, &headers, &[Role::Auditor])?;
    let q: AuditRequest = json_body(&body, "audit body", r#"{"members": [...]} or {"all": true}"#)?;
    let targets: Vec<String> =
        if q.all { node.charter().charter.members.iter().map(|m| m.id.clone()).collect() } else { q.members };
    if targets.is_empty() {
        return Err(NodeError::BadRequest("name a member to audit, or all".into()).into());
    }
    let report = crate::node::audit::audit(&node, &targets).await?;
    Ok(axum::Json(AuditResponse { ok: report.ok(), report }))
}

/// What this node's policy would release for a member's SQL, rule by rule; nothing runs
/// (role steward).
#[utoipa::path(post, path = "/v1/policy/test", tag = "datasets", request_body = PolicyTestRequest,
    responses((status = 200, body = PolicyTest)))]
async fn policy_test(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<PolicyTest> {
    authorize(&node, &headers, &[Role::Steward])?;
    let q: PolicyTestRequest =
        json_body(&body, "policy test body", r#"{"as", "purpose", "dataset", "sql"}"#)?;
    Ok(axum::Json(node.policy_test(&q.as_member, &q.purpose, &q.dataset, &q.sql).await?))
}

/// Files an access request with a dataset's owner (role analyst).
#[utoipa::path(post, path = "/v1/access/requests", tag = "access", request_body = AccessAsk,
    responses((status = 200, body = AccessRecord)))]
async fn access_file(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<AccessRecord> {
    authorize(&node, &headers, &[Role::Analyst])?;
    let ask: AccessAsk = json_body(
        &body,
        "access request body",
        r#"{"dataset": "member.dataset", "actions": ["aggregate"], "purpose", "legal_basis", "days"}"#,
    )?;
    Ok(axum::Json(node.file_access_request(&ask).await?))
}

/// Access requests filed here and with this node (roles analyst, steward).
#[utoipa::path(get, path = "/v1/access/requests", tag = "access", responses((status = 200, body = Vec<AccessRecord>)))]
async fn access_list(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<Vec<AccessRecord>> {
    authorize(&node, &headers, &[Role::Analyst, Role::Steward])?;
    Ok(axum::Json(node.access_requests().await?))
}

/// Approves, refuses or revokes a request filed with this node (role steward).
#[utoipa::path(post, path = "/v1/access/requests/{id}/{decision}", tag = "access",
    params(("id" = String, Path), ("decision" = Decision, Path)),
    request_body(content = Option<DecideRequest>, description = "may be empty to approve"),
    responses((status = 200, body = AccessRecord)))]
async fn access_decide(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<AccessRecord> {
    authorize(&node, &headers, &[Role::Steward])?;
    let decision = Decision::parse(&decision).ok_or_else(|| {
        NodeError::NotFound(format!("no action {decision:?}; use approve, refuse or revoke"))
    })?;
    let b: DecideRequest = if body.is_empty() {
        DecideRequest::default()
    } else {
        json_body(&body, "decision body", r#"{"reason": "...", "days": N}"#)?
    };
    Ok(axum::Json(node.decide_access_request(&id, decision, &b.reason, b.days).await?))
}

/// The proposals on the current charter version with their status and votes (roles delegate,
/// auditor).
#[utoipa::path(get, path = "/v1/governance/proposals", tag = "governance", responses((status = 200, body = Proposals)))]
async fn proposals_list(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<Proposals> {
    authorize(&node, &headers, &[Role::Delegate, Role::Auditor])?;
    Ok(axum::Json(Proposals { version: node.charter_version(), proposals: node.proposals()? }))
}

/// Proposes changes to the current version (role delegate); this member votes yes on its own
/// proposal unless it already has a live yes on this version.
#[utoipa::path(post, path = "/v1/governance/proposals", tag = "governance", request_body = ProposeRequest,
    responses((status = 200, body = Proposed)))]
async fn proposals_file(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Proposed> {
    authorize(&node, &headers, &[Role::Delegate])?;
    let b: ProposeRequest = json_body(
        &body,
        "proposal body",
        r#"{"changes": [{"change": "min-group-size", "size": 12}], "expires_in_secs": N}"#,
    )?;
    let base_version = node.charter_version();
    let changes: Vec<String> = b.changes.iter().map(Change::summary).collect();
    let (proposal, vote) =
        node.propose_and_vote(b.changes, std::time::Duration::from_secs(b.expires_in_secs)).await?;
    Ok(axum::Json(Proposed { proposal, base_version, changes, vote }))
}

/// This member's vote on a proposal, signed by this node (role delegate).
#[utoipa::path(post, path = "/v1/governance/proposals/{id}/vote", tag = "governance",
    params(("id" = String, Path)), request_body = VoteRequest, responses((status = 200, body = VoteReport)))]
async fn proposal_vote(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<VoteReport> {
    authorize(&node, &headers, &[Role::Delegate])?;
    let b: VoteRequest = json_body(&body, "vote body", r#"{"vote": "yes" or "no", "reason": "..."}"#)?;
    Ok(axum::Json(node.cast_vote(&id, b.vote, &b.reason).await?))
}

/// This member leaves the federation; the others' nodes vote yes by themselves (role delegate).
#[utoipa::path(post, path = "/v1/governance/leave", tag = "governance", responses((status = 200, body = VoteReport)))]
async fn leave(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<VoteReport> {
    authorize(&node, &headers, &[Role::Delegate])?;
    Ok(axum::Json(node.leave(std::time::Duration::from_secs(30 * 24 * 3600)).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct EvidenceQuery {
    /// The `next` of the page before.
    #[serde(default)]
    after: i64,
}

/// Pieces of evidence per page of `GET /v1/governance/evidence`.
const EVIDENCE_PAGE: u32 = 50;

/// Misbehaviour kept as evidence, 50 at a time: equivocations (both signed votes) and forks
/// (a second signed body of a version held) (roles delegate, auditor).
#[utoipa::path(get, path = "/v1/governance/evidence", tag = "governance", params(EvidenceQuery),
    responses((status = 200, body = EvidencePage)))]
async fn evidence_list(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    q: Result<Query<EvidenceQuery>, QueryRejection>,
) -> ApiResult<EvidencePage> {
    authorize(&node, &headers, &[Role::Delegate, Role::Auditor])?;
    let q = query_params(q)?;
    let page = node.state.governance_evidence(q.after, EVIDENCE_PAGE)?;
    let next = (page.len() == EVIDENCE_PAGE as usize).then(|| page.last().map(|e| e.0)).flatten();
    let evidence = page
        .into_iter()
        .map(|(seq, base_version, kind, body, received_at)| {
            let (kind, equivocation, fork) = if kind == "evidence" {
                let votes: Equivocation = serde_json::from_str(&body)
                    .map_err(|source| NodeError::Decode { what: format!("evidence {seq}"), source })?;
                (EvidenceKind::Equivocation, Some(votes), None)
            } else {
                (EvidenceKind::Fork, None, Some(body))
            };
            Ok(EvidenceItem { seq, base_version, kind, received_at, equivocation, fork })
        })
        .collect::<Result<Vec<_>, NodeError>>()?;
    Ok(axum::Json(EvidencePage { evidence, next }))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct CharterQuery {
    /// The version to show (the current one when absent).
    version: Option<u64>,
}

/// Every charter version this node holds, as the API shows them: each with what it changed.
pub(crate) fn history(node: &Node) -> Result<Vec<CharterView>, NodeError> {
    let all: Vec<concord_charter::SignedCharter> = node
        .state
        .charter_history()?
        .iter()
        .map(|b| Ok(concord_charter::SignedCharter::parse(b)?))
        .collect::<Result<_, NodeError>>()?;
    let genesis = all.first().map(|g| g.charter.digest()).unwrap_or_default();
    let mut out = Vec::with_capacity(all.len());
    let mut before: Option<&concord_charter::Charter> = None;
    for sc in &all {
        let c = &sc.charter;
        out.push(CharterView {
            version: c.version,
            federation: c.federation.clone(),
            digest: c.digest(),
            previous: c.previous.clone(),
            genesis: genesis.clone(),
            threshold: c.threshold,
            witness_quorum: c.witness_quorum,
            witnesses_per_log: c.witnesses_of_each_log(),
            min_group_size: c.min_group_size,
            cross_borders: c.cross_borders,
            access_notes: c.access_notes,
            members: c.members.clone(),
            schemas: c.schemas.clone(),
            signers: sc.signed_by()?,
            changes: before.map(|b| concord_charter::governance::diff(b, c)).unwrap_or_default(),
        });
        before = Some(c);
    }
    Ok(out)
}

/// A charter version as this node holds it (the current one unless `?version=`).
#[utoipa::path(get, path = "/v1/charter", tag = "governance", params(CharterQuery),
    responses((status = 200, body = CharterView)))]
async fn charter_show(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    q: Result<Query<CharterQuery>, QueryRejection>,
) -> ApiResult<CharterView> {
    authorize(&node, &headers, &[])?;
    let q = query_params(q)?;
    let want = q.version.unwrap_or_else(|| node.charter_version());
    history(&node)?.into_iter().find(|s| s.version == want).map(axum::Json).ok_or_else(|| {
        NodeError::NotFound(format!(
            "charter version {want}; this node holds versions 1 to {}",
            node.charter_version()
        ))
        .into()
    })
}

/// Every charter version this node holds, from genesis.
#[utoipa::path(get, path = "/v1/charter/history", tag = "governance", responses((status = 200, body = CharterHistory)))]
async fn charter_history(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<CharterHistory> {
    authorize(&node, &headers, &[])?;
    let versions = history(&node)?;
    let genesis = versions.first().map(|v| v.digest.clone()).unwrap_or_default();
    Ok(axum::Json(CharterHistory { genesis, versions }))
}

/// The handlers the OpenAPI document describes (see `api::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        metrics,
        status,
        tables,
        datasets,
        query,
        log_checkpoint,
        log_tile,
        log_receipt,
        audit,
        policy_test,
        access_file,
        access_list,
        access_decide,
        proposals_list,
        proposals_file,
        proposal_vote,
        leave,
        evidence_list,
        charter_show,
        charter_history
    ),
    components(schemas(Decision))
)]
pub struct Paths;
