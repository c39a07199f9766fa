//! The owner's side of a federated query: a peer's signed request checked (member, signature,
//! federation, charter version, freshness, replay), decided by the dataset's policy, its
//! sub-query checked and run, the decision logged, and the release signed.
//!
//! Invariant: nothing is released before its "access served" entry is on disk.

use concord_log::Note;
use concord_policy::{Action, Decision};
use concord_query::QueryError;
use concord_query::owner::{OwnerAnswer, run_subquery};
use sha2::{Digest, Sha256};

use crate::NodeError;
use crate::net::protocol::{FRESHNESS_SECS, QueryRequest, ReleaseReceipt};
use crate::node::Node;
use crate::store::entry::LogEntry;

/// Largest query request note: it is kept, base64, in a log entry of at most 64 KiB.
pub const MAX_REQUEST_NOTE: usize = 40 * 1024;

impl Node {
    /// The owner's side: policy, sub-query check, execution within the node's limits. Used for
    /// peers' requests and for this member's own parts of a federated query.
    pub async fn answer_subquery(
        &self,
        requester: &str,
        dataset: &str,
        sql: &str,
    ) -> Result<OwnerAnswer, NodeError> {
        let d = self
            .datasets
            .get(dataset)
            .ok_or_else(|| NodeError::NotFound(format!("{} has no dataset {dataset}", self.cfg.member)))?;
        if let Decision::Deny { reason } = d.policy.decide(&self.cfg.member, requester, Action::Aggregate) {
            return Err(NodeError::PolicyRefused(reason));
        }
        let table = d
            .table
            .clone()
            .map_err(|why| NodeError::Query(QueryError::Dataset { name: dataset.to_owned(), reason: why }))?;
        let limits = &self.cfg.limits;
        let _slot = self
            .subquery_slots
            .acquire()
            .await
            .map_err(|_| NodeError::State("the node is stopping".into()))?;
        let exec = limits.exec();
        let run = run_subquery(dataset, table, sql, &exec);
        match tokio::time::timeout(std::time::Duration::from_secs(limits.subquery_timeout_secs), run).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(NodeError::Query(QueryError::Limit(format!(
                "the sub-query ran longer than the {} s {} allows one sub-query",
                limits.subquery_timeout_secs, self.cfg.member
            )))),
        }
    }
}

/// Checks before authentication: size, syntax, the TLS identity, the member's signature.
fn authenticate(node: &Node, tls_member: &str, body: &[u8]) -> Result<(Note, QueryRequest), NodeError> {
    if body.len() > MAX_REQUEST_NOTE {
        return Err(NodeError::TooLarge(format!(
            "a request note of {} bytes is over {MAX_REQUEST_NOTE}; it must fit a log entry, so shorten the SQL",
            body.len()
        )));
    }
    let note = Note::parse(body)?;
    let request = QueryRequest::from_text(note.text())?;
    if request.requester != tls_member {
        return Err(NodeError::UnknownMember(format!(
            "the request names requester {} but the TLS connection is {tls_member}'s",
            request.requester
        )));
    }
    let requester = node.charter.charter.member(&request.requester).ok_or_else(|| {
        NodeError::UnknownMember(format!("{} is not a member of {}", request.requester, node.federation()))
    })?;
    note.verify(std::slice::from_ref(&requester.verifier()?)).map_err(|e| {
        NodeError::BadSignature(format!(
            "request {} is not signed by {}'s key: {e}",
            request.request_id, requester.id
        ))
    })?;
    Ok((note, request))
}

/// Freshness and replay: a request from another time, or seen before, is no new access.
fn fresh_and_new(node: &Node, request: &QueryRequest) -> Result<(), NodeError> {
    let now = chrono::Utc::now().timestamp();
    // abs_diff cannot overflow, whatever time the request claims.
    if now.abs_diff(request.time) > FRESHNESS_SECS.unsigned_abs() {
        return Err(NodeError::Stale(format!(
            "request time {} is more than {FRESHNESS_SECS} s from this node's clock ({now}); check both clocks",
            request.time
        )));
    }
    if !node.state.record_request(
        &request.request_id,
        &request.requester,
        now,
        now - 2 * FRESHNESS_SECS - 60,
    )? {
        return Err(NodeError::Replayed(format!("request {} was seen before", request.request_id)));
    }
    Ok(())
}

/// The owner's whole check of a peer's request, then the release. Returns the signed receipt
/// and the Arrow IPC bytes it covers.
///
/// What is not an access (a malformed, unsigned, stale or replayed request) is counted per
/// member and logged as a count, so that no member can grow this log without bound. Every
/// authenticated, fresh request is logged with its decision (`released`, `refused:<code>` or
/// `failed:<code>`) before anything is answered; errors carry codes and data-free reasons only.
pub async fn serve_query(node: &Node, tls_member: &str, body: &[u8]) -> Result<(Note, Vec<u8>), NodeError> {
    let (note, request) = match authenticate(node, tls_member, body) {
        Ok(x) => x,
        Err(e) => {
            node.state.count_refusal(tls_member, e.code())?;
            return Err(e);
        }
    };
    if let Err(e) = fresh_and_new(node, &request) {
        node.state.count_refusal(&request.requester, e.code())?;
        return Err(e);
    }
    let note_bytes = note.to_bytes();
    match decide_and_run(node, &request).await {
        Ok((answer, ipc)) => {
            let result_sha256 = concord_charter::hex(&Sha256::digest(&ipc));
            let entry = LogEntry::AccessServed {
                time: crate::store::entry::now(),
                request_id: request.request_id.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                decision: "released".into(),
                result_sha256: Some(result_sha256.clone()),
                groups_released: answer.groups_released,
                request_note: crate::store::entry::b64(&note_bytes),
                reason: None,
            };
            // Invariant: nothing is released before its "access served" entry is on disk.
            let log_index = node.log.append(entry.to_bytes()?).await?;
            let receipt = ReleaseReceipt {
                federation: request.federation.clone(),
                request_id: request.request_id.clone(),
                owner: node.cfg.member.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                result_sha256,
                rows_scanned: answer.rows_scanned,
                groups_released: answer.groups_released,
                log_index,
            };
            tracing::info!(
                request = %request.request_id,
                requester = %request.requester,
                dataset = %request.dataset,
                groups = answer.groups_released,
                log_index,
                "released partial aggregate"
            );
            Ok((receipt.sign(&node.signer)?, ipc))
        }
        Err(e) => {
            let (decision, wire) = for_the_wire(&node.cfg.member, &request.request_id, e);
            let entry = LogEntry::AccessServed {
                time: crate::store::entry::now(),
                request_id: request.request_id.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                decision,
                result_sha256: None,
                groups_released: 0,
                request_note: crate::store::entry::sha256(&note_bytes),
                reason: Some(wire.to_string()),
            };
            node.log.append(entry.to_bytes()?).await?;
            Err(wire)
        }
    }
}

/// Every check after authentication, then the run.
async fn decide_and_run(node: &Node, request: &QueryRequest) -> Result<(OwnerAnswer, Vec<u8>), NodeError> {
    if request.federation != node.federation() || request.owner != node.cfg.member {
        return Err(NodeError::BadRequest(format!(
            "request is addressed to {}/{}, this node is {}/{}",
            request.federation,
            request.owner,
            node.federation(),
            node.cfg.member
        )));
    }
    if request.charter_version != node.charter_version() {
        return Err(NodeError::WrongCharter(format!(
            "request made under charter version {}, this node is at version {}; both sides must accept the same version",
            request.charter_version,
            node.charter_version()
        )));
    }
    let answer = node.answer_subquery(&request.requester, &request.dataset, &request.sql).await?;
    let ipc = concord_query::ipc::encode(&answer.schema, &answer.batches)?;
    Ok((answer, ipc))
}

/// The leading words of an error message that hold no value from the data: `Arrow error: Cast
/// error` of `Arrow error: Cast error: Cannot cast string 'BR-West|…' to value of Int64 type`.
pub fn error_class(detail: &str) -> String {
    let words: Vec<&str> = detail
        .split(": ")
        .take_while(|s| {
            !s.is_empty() && s.len() <= 40 && s.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
        })
        .take(2)
        .collect();
    if words.is_empty() { "error".into() } else { words.join(": ") }
}

/// What may cross the border of an error: a code and a reason without values from the data, and
/// the decision to log. The detail stays on this node, in its own log output, as a class only.
fn for_the_wire(owner: &str, request_id: &str, e: NodeError) -> (String, NodeError) {
    let code = e.code().to_owned();
    match e {
        NodeError::Query(QueryError::Execution(detail)) => {
            let class = error_class(&detail);
            tracing::warn!(request = %request_id, %class, "sub-query failed while running");
            (
                format!("failed:{code}"),
                NodeError::Query(QueryError::Execution(format!(
                    "the sub-query failed while {owner} ran it ({class}); the detail stays with {owner}"
                ))),
            )
        }
        NodeError::Query(QueryError::Dataset { name, .. }) => {
            tracing::warn!(request = %request_id, dataset = %name, "dataset unavailable for a sub-query");
            (
                format!("failed:{code}"),
                NodeError::Query(QueryError::Dataset {
                    name,
                    reason: format!("is unavailable on {owner} now; its stewards are told"),
                }),
            )
        }
        NodeError::Config(_)
        | NodeError::Io { .. }
        | NodeError::State(_)
        | NodeError::Tls(_)
        | NodeError::Listen { .. }
        | NodeError::Peer { .. } => {
            tracing::warn!(request = %request_id, %code, "sub-query failed on this node: {e}");
            (
                "failed:internal".into(),
                NodeError::Internal(format!("{owner} could not answer; its operators are told")),
            )
        }
        other => (format!("refused:{code}"), other),
    }
}
