//! The requester's side of a federated query: other members' catalogs, the analyst's DataFusion
//! context, signed requests to owners, and their receipts checked and logged.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_query::dataset::shared_arrow_schema;
use concord_query::{
    Contribution, FederatedTable, OwnerClient, Part, PartialAnswer, QueryError, QueryOutcome,
};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use crate::NodeError;
use crate::net::protocol::{QueryRequest, ReleaseReceipt, new_request_id};
use crate::node::{CatalogEntry, Node};
use crate::store::entry::LogEntry;

impl Node {
    /// Fetches every other member's catalog; a member that does not answer is reported as such.
    async fn catalogs(&self) -> Vec<(String, Result<Vec<CatalogEntry>, NodeError>)> {
        let calls =
            self.charter.charter.members.iter().filter(|m| m.id != self.cfg.member).map(|m| async move {
                let r = crate::net::client::peer_call(
                    &self.tls,
                    &m.id,
                    &m.peer_endpoint,
                    &m.tls_pin,
                    "GET",
                    "/v1/catalog",
                    vec![],
                )
                .await
                .and_then(|resp| {
                    if resp.status != 200 {
                        let (code, message) = resp.error_parts();
                        return Err(NodeError::Peer { member: m.id.clone(), code, message });
                    }
                    serde_json::from_slice::<Vec<CatalogEntry>>(&resp.body).map_err(|e| NodeError::Peer {
                        member: m.id.clone(),
                        code: "malformed_catalog".into(),
                        message: e.to_string(),
                    })
                });
                (m.id.clone(), r)
            });
        futures::future::join_all(calls).await
    }

    /// Builds the analyst's DataFusion context: shared schemas as federated tables, every
    /// member's admitted datasets as `member.dataset`, and this member's own datasets as
    /// ordinary tables under `local`.
    pub async fn query_context(&self) -> Result<SessionContext, NodeError> {
        let ctx = SessionContext::new();
        let mut entries: Vec<(String, CatalogEntry)> =
            self.catalog_for(&self.cfg.member).into_iter().map(|e| (self.cfg.member.clone(), e)).collect();
        let mut unreachable = Vec::new();
        for (member, result) in self.catalogs().await {
            match result {
                Ok(list) => entries.extend(list.into_iter().map(|e| (member.clone(), e))),
                Err(e) => {
                    tracing::warn!(%member, "catalog unavailable: {e}");
                    unreachable.push(member);
                }
            }
        }
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| NodeError::State("DataFusion's default catalog is missing".into()))?;
        for s in &self.charter.charter.schemas {
            let parts = entries
                .iter()
                .filter(|(_, e)| e.shared_schema.as_deref() == Some(s.name.as_str()))
                .map(|(m, e)| Part { owner: m.clone(), dataset: e.name.clone() })
                .collect();
            let table = FederatedTable {
                display: s.name.clone(),
                schema: shared_arrow_schema(s),
                parts,
                shared: true,
                unreachable: unreachable.clone(),
            };
            ctx.register_table(s.name.as_str(), Arc::new(table)).map_err(QueryError::plan)?;
        }
        let schema_of = |m: &str| -> Result<Arc<dyn datafusion::catalog::SchemaProvider>, NodeError> {
            match catalog.schema(m) {
                Some(s) => Ok(s),
                None => {
                    let s: Arc<dyn datafusion::catalog::SchemaProvider> =
                        Arc::new(MemorySchemaProvider::new());
                    catalog.register_schema(m, s.clone()).map_err(QueryError::plan)?;
                    Ok(s)
                }
            }
        };
        for (member, e) in &entries {
            let schema = concord_query::ipc::decode_schema(&B64.decode(&e.schema_ipc).map_err(|_| {
                NodeError::Peer {
                    member: member.clone(),
                    code: "malformed_catalog".into(),
                    message: format!("schema of {} is not base64", e.name),
                }
            })?)?;
            let table = FederatedTable {
                display: format!("{member}.{}", e.name),
                schema,
                parts: vec![Part { owner: member.clone(), dataset: e.name.clone() }],
                shared: false,
                unreachable: vec![],
            };
            schema_of(member)?.register_table(e.name.clone(), Arc::new(table)).map_err(QueryError::plan)?;
        }
        let local = schema_of("local")?;
        for d in self.datasets.values() {
            if let Ok(t) = &d.table {
                local.register_table(d.record.name.clone(), t.clone()).map_err(QueryError::plan)?;
            }
        }
        Ok(ctx)
    }

    /// Runs an analyst's federated SQL; with `allow_partial`, unreachable owners are left out
    /// and named instead of failing the query.
    pub async fn query(
        self: &Arc<Self>,
        sql: &str,
        purpose: &str,
        allow_partial: bool,
    ) -> Result<QueryOutcome, NodeError> {
        let ctx = self.query_context().await?;
        let owners = PeerOwners { node: self.clone(), purpose: purpose.to_owned() };
        Ok(concord_query::run_federated_with(&ctx, sql, &owners, allow_partial).await?)
    }

    /// Sends one signed sub-query to an owner and verifies its receipt.
    pub async fn request_partial(
        &self,
        part: &Part,
        sql: &str,
        purpose: &str,
    ) -> Result<PartialAnswer, NodeError> {
        let owner = self
            .charter
            .charter
            .member(&part.owner)
            .ok_or_else(|| NodeError::UnknownMember(format!("{} is not in the charter", part.owner)))?;
        let request = QueryRequest {
            federation: self.federation().to_owned(),
            request_id: new_request_id(),
            requester: self.cfg.member.clone(),
            owner: part.owner.clone(),
            charter_version: self.charter_version(),
            time: chrono::Utc::now().timestamp(),
            dataset: part.dataset.clone(),
            purpose: purpose.to_owned(),
            sql: sql.to_owned(),
        };
        let note = request.sign(&self.signer)?;
        let resp = crate::net::client::peer_call(
            &self.tls,
            &owner.id,
            &owner.peer_endpoint,
            &owner.tls_pin,
            "POST",
            "/v1/query",
            note.to_bytes(),
        )
        .await?;
        if resp.status != 200 {
            let (code, message) = resp.error_parts();
            return Err(NodeError::Peer { member: owner.id.clone(), code, message });
        }
        let bad = |message: String| NodeError::Peer {
            member: owner.id.clone(),
            code: "bad_receipt".into(),
            message,
        };
        let receipt_b64 = resp
            .headers
            .get(RECEIPT_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("the answer carries no receipt".into()))?;
        let receipt_bytes = B64.decode(receipt_b64).map_err(|_| bad("receipt is not base64".into()))?;
        let receipt = ReleaseReceipt::verify(&receipt_bytes, &owner.verifier()?)
            .map_err(|e| bad(format!("receipt does not verify: {e}")))?;
        let digest = concord_charter::hex(&Sha256::digest(&resp.body));
        if receipt.request_id != request.request_id
            || receipt.owner != owner.id
            || receipt.requester != self.cfg.member
            || receipt.dataset != part.dataset
            || receipt.federation != request.federation
        {
            return Err(bad("receipt is for another request".into()));
        }
        if receipt.result_sha256 != digest {
            return Err(bad("result does not match the digest in the receipt".into()));
        }
        let (_, batches) = concord_query::ipc::decode(&resp.body)?;
        // Invariant: a partial is used only once its "access made" entry is on disk.
        let entry = LogEntry::AccessMade {
            time: crate::store::entry::now(),
            request_id: receipt.request_id.clone(),
            owner: owner.id.clone(),
            dataset: part.dataset.clone(),
            result_sha256: receipt.result_sha256.clone(),
            owner_log_index: receipt.log_index,
            receipt: crate::store::entry::b64(&receipt_bytes),
        };
        self.log.append(entry.to_bytes()?).await?;
        Ok(PartialAnswer {
            batches,
            contribution: Contribution {
                member: owner.id.clone(),
                dataset: part.dataset.clone(),
                rows_scanned: receipt.rows_scanned,
                groups_released: receipt.groups_released,
                receipt_digest: Some(format!(
                    "sha256:{}",
                    concord_charter::hex(&Sha256::digest(&receipt_bytes))
                )),
            },
        })
    }
}

/// Response header that carries the owner's signed receipt, base64.
pub const RECEIPT_HEADER: &str = "concord-receipt";

/// The requester's transport to owners: the peer protocol, or in-process for its own datasets.
struct PeerOwners {
    node: Arc<Node>,
    purpose: String,
}

#[async_trait]
impl OwnerClient for PeerOwners {
    async fn partial(&self, part: &Part, sql: &str) -> Result<PartialAnswer, QueryError> {
        let as_query_error = |e: NodeError| match e {
            NodeError::Query(q) => q,
            NodeError::Peer { member, code, message } if code == "unreachable" => {
                QueryError::Unreachable { member, reason: message }
            }
            NodeError::Peer { member, code, message } => {
                QueryError::Owner { member, reason: format!("{code}: {message}") }
            }
            other => QueryError::Owner { member: part.owner.clone(), reason: other.to_string() },
        };
        if part.owner == self.node.cfg.member {
            let a =
                self.node.answer_subquery(&part.owner, &part.dataset, sql).await.map_err(as_query_error)?;
            return Ok(PartialAnswer {
                batches: a.batches,
                contribution: Contribution {
                    member: part.owner.clone(),
                    dataset: part.dataset.clone(),
                    rows_scanned: a.rows_scanned,
                    groups_released: a.groups_released,
                    receipt_digest: None,
                },
            });
        }
        self.node.request_partial(part, sql, &self.purpose).await.map_err(as_query_error)
    }
}
