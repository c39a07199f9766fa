//! A running node: its loaded state, both listeners, and the requester's side of federated SQL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_charter::SignedCharter;
use concord_log::NoteSigner;
use concord_log::checkpoint::CosignatureSigner;
use concord_policy::{Action, DatasetPolicy, Decision};
use concord_query::dataset::{self, DatasetFormat, shared_arrow_schema};
use concord_query::owner::{OwnerAnswer, run_subquery};
use concord_query::{
    Contribution, FederatedTable, OwnerClient, Part, PartialAnswer, QueryError, QueryOutcome,
};
use datafusion::catalog::{MemorySchemaProvider, TableProvider};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::NodeError;
use crate::config::{NodeConfig, NodeDir};
use crate::entry::LogEntry;
use crate::protocol::{QueryRequest, ReleaseReceipt, new_request_id};
use crate::state::{DatasetRecord, State};
use crate::tlog::Log;
use crate::tls::TlsKeys;

/// A dataset ready to serve.
pub struct LoadedDataset {
    pub record: DatasetRecord,
    pub policy: DatasetPolicy,
    /// `Err` holds why the file cannot be read now; the node stays up and says so when asked.
    pub table: Result<Arc<dyn TableProvider>, String>,
}

/// One entry of a node's catalog as a peer sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub name: String,
    pub shared_schema: Option<String>,
    /// Arrow IPC schema, base64.
    pub schema_ipc: String,
}

/// Everything a running node holds.
pub struct Node {
    pub cfg: NodeConfig,
    pub dir: NodeDir,
    pub signer: NoteSigner,
    /// Cosigns other members' checkpoints.
    pub witness: CosignatureSigner,
    /// This member's transparency log.
    pub log: Log,
    pub state: State,
    pub charter: SignedCharter,
    pub tls: TlsKeys,
    /// (pin, member id) of every member but this node.
    pub pins: Vec<(String, String)>,
    pub datasets: BTreeMap<String, LoadedDataset>,
}

impl Node {
    /// Loads a node folder; it must hold an accepted charter that names this member with this
    /// node's keys.
    pub async fn open(dir: &NodeDir) -> Result<Self, NodeError> {
        let cfg = dir.load_config()?;
        let signer = dir.load_signer(&cfg)?;
        let witness = dir.load_witness(&cfg)?;
        let state = dir.open_state()?;
        let log = dir.open_log()?;
        let tls = TlsKeys::load(&dir.tls_cert(), &dir.tls_key())?;
        let bytes = state.latest_charter()?.ok_or_else(|| {
            NodeError::Config(format!(
                "{} has no charter yet; sign the genesis charter with every founder, then run `concord charter accept {} FILE`",
                dir.root.display(),
                dir.root.display()
            ))
        })?;
        let charter = SignedCharter::parse(&bytes)?;
        let me = charter.charter.member(&cfg.member).ok_or_else(|| {
            NodeError::Config(format!(
                "the charter does not name member {}; this node cannot take part",
                cfg.member
            ))
        })?;
        if me.vkey != signer.vkey()
            || me.tls_pin != tls.pin
            || me.witness_vkey != witness.verifier().to_vkey()
        {
            return Err(NodeError::Config(format!(
                "the charter lists other keys for {} than this node holds; a key change needs a new charter version",
                cfg.member
            )));
        }
        let pins = charter
            .charter
            .members
            .iter()
            .filter(|m| m.id != cfg.member)
            .map(|m| (m.tls_pin.clone(), m.id.clone()))
            .collect();
        let mut datasets = BTreeMap::new();
        for record in state.datasets()? {
            let policy: DatasetPolicy = serde_json::from_str(&record.policy)
                .map_err(|e| NodeError::State(format!("policy of dataset {}: {e}", record.name)))?;
            let table = load_table(&charter, &record).await.map_err(|e| e.to_string());
            if let Err(why) = &table {
                tracing::warn!(dataset = %record.name, "dataset unavailable: {why}");
            }
            datasets.insert(record.name.clone(), LoadedDataset { record, policy, table });
        }
        Ok(Self { cfg, dir: dir.clone(), signer, witness, log, state, charter, tls, pins, datasets })
    }

    pub fn federation(&self) -> &str {
        &self.charter.charter.federation
    }

    pub fn charter_version(&self) -> u64 {
        self.charter.charter.version
    }

    /// Datasets whose policy lets `requester` run aggregates, as its catalog shows them.
    pub fn catalog_for(&self, requester: &str) -> Vec<CatalogEntry> {
        self.datasets
            .values()
            .filter(|d| d.policy.decide(&self.cfg.member, requester, Action::Describe) == Decision::Allow)
            .map(|d| CatalogEntry {
                name: d.record.name.clone(),
                shared_schema: d.record.shared_schema.clone(),
                schema_ipc: B64.encode(&d.record.schema_ipc),
            })
            .collect()
    }

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

    /// Fetches every other member's catalog; a member that does not answer is reported as such.
    async fn catalogs(&self) -> Vec<(String, Result<Vec<CatalogEntry>, NodeError>)> {
        let calls =
            self.charter.charter.members.iter().filter(|m| m.id != self.cfg.member).map(|m| async move {
                let r = crate::client::peer_call(
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
        let resp = crate::client::peer_call(
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
            time: crate::entry::now(),
            request_id: receipt.request_id.clone(),
            owner: owner.id.clone(),
            dataset: part.dataset.clone(),
            result_sha256: receipt.result_sha256.clone(),
            owner_log_index: receipt.log_index,
            receipt: crate::entry::b64(&receipt_bytes),
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

async fn load_table(charter: &SignedCharter, r: &DatasetRecord) -> Result<Arc<dyn TableProvider>, NodeError> {
    let format = DatasetFormat::of_path(&r.path)?;
    let shared = match &r.shared_schema {
        Some(s) => Some(charter.charter.schema(s).ok_or_else(|| {
            NodeError::Config(format!("dataset {} conforms to {s}, which the charter no longer has", r.name))
        })?),
        None => None,
    };
    Ok(dataset::open(&r.name, &r.path, format, shared).await?)
}

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

/// Binds a listener, with an error that names the address and what to do.
pub async fn bind(addr: &str) -> Result<TcpListener, NodeError> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| NodeError::Listen { addr: addr.to_owned(), reason: "not HOST:PORT".into() })?;
    TcpListener::bind(sa).await.map_err(|e| NodeError::Listen {
        addr: addr.to_owned(),
        reason: if e.kind() == std::io::ErrorKind::AddrInUse {
            "the port is already in use; stop the other process or choose another port in concord.toml".into()
        } else {
            e.to_string()
        },
    })
}

/// Handles of a running node.
pub struct RunningNode {
    pub node: Arc<Node>,
    pub local_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops both listeners and waits for them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Opens a node folder and starts both listeners.
pub async fn start(dir: &NodeDir) -> Result<RunningNode, NodeError> {
    let node = Arc::new(Node::open(dir).await?);
    let peer_listener = bind(&node.cfg.peer_listen).await?;
    let local_listener = bind(&node.cfg.local_listen).await?;
    let local_addr = local_listener.local_addr().map_err(|e| NodeError::io(&dir.root, e))?;
    let peer_addr = peer_listener.local_addr().map_err(|e| NodeError::io(&dir.root, e))?;
    let (shutdown, rx) = watch::channel(false);
    let peer_task = tokio::spawn(crate::peer::serve(node.clone(), peer_listener, rx.clone()));
    let local_task = tokio::spawn(crate::local::serve(node.clone(), local_listener, rx.clone()));
    let publish_task = tokio::spawn(crate::witness::publish_loop(node.clone(), rx));
    tracing::info!(member = %node.cfg.member, %local_addr, %peer_addr, "node started");
    Ok(RunningNode {
        node,
        local_addr,
        peer_addr,
        shutdown,
        tasks: vec![peer_task, local_task, publish_task],
    })
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serialises an error as the wire's JSON error body.
pub fn error_body(e: &NodeError) -> serde_json::Value {
    serde_json::json!({ "error": { "code": e.code(), "message": e.to_string() } })
}
