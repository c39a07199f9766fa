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
    /// The owner's side: policy, sub-query check, execution. Used for peers' requests and for
    /// this member's own parts of a federated query.
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
        Ok(run_subquery(dataset, table, sql).await?)
    }
}

/// The owner's whole check of a peer's request, then the release. Returns the signed receipt
/// and the Arrow IPC bytes it covers.
pub async fn serve_query(node: &Node, tls_member: &str, body: &[u8]) -> Result<(Note, Vec<u8>), NodeError> {
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
    // From here on the requester is authenticated: every outcome is logged.
    let request_note = crate::store::entry::b64(&note.to_bytes());
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
                request_note,
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
            let entry = LogEntry::AccessServed {
                time: crate::store::entry::now(),
                request_id: request.request_id.clone(),
                requester: request.requester.clone(),
                dataset: request.dataset.clone(),
                decision: format!("refused:{}", e.code()),
                result_sha256: None,
                groups_released: 0,
                request_note,
            };
            node.log.append(entry.to_bytes()?).await?;
            Err(e)
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
    let now = chrono::Utc::now().timestamp();
    if (now - request.time).abs() > FRESHNESS_SECS {
        return Err(NodeError::Stale(format!(
            "request time is {} s from this node's clock, more than {FRESHNESS_SECS} s; check both clocks",
            now - request.time
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
    let answer = node.answer_subquery(&request.requester, &request.dataset, &request.sql).await?;
    let ipc = concord_query::ipc::encode(&answer.schema, &answer.batches)?;
    Ok((answer, ipc))
}
