//! The requester's side of a federated query: other members' catalogs, the analyst's DataFusion
//! context, signed requests to owners, and their receipts checked and logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_query::dataset::shared_arrow_schema;
use concord_query::{
    Contribution, FederatedTable, OwnerClient, Part, PartialAnswer, QueryError, QueryOutcome,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::prelude::SessionContext;

use crate::net::client::{Budget, peer_call_paced};
use crate::net::protocol::{
    QueryRequest, ReleaseDetails, ReleaseReceipt, commitment, new_request_id, result_digest,
};
use crate::node::{Catalog, Node};
use crate::store::entry::{LogEntry, Notes};
use crate::store::state::NoteKind;
use crate::wire::{ColumnInfo, ErrorCode, TableInfo, TableKind, TableList};
use crate::{NodeError, PeerFailure};

/// Largest catalog answer read from a member.
pub const MAX_CATALOG_BYTES: usize = 4 * 1024 * 1024;
/// Most datasets one member's catalog may list.
pub const MAX_CATALOG_ENTRIES: usize = 4096;

/// One dataset of another member, as its catalog shows it, its schema decoded.
#[derive(Clone, Debug)]
pub struct PeerDataset {
    /// The dataset's name on its owner's node.
    pub name: String,
    /// The charter's shared schema it conforms to, if any.
    pub shared_schema: Option<String>,
    /// Its Arrow schema, decoded from the catalog entry.
    pub schema: SchemaRef,
    /// Why its owner does not release it to this member, if it does not.
    pub withheld: Option<String>,
    /// Released under differential privacy: each query costs privacy budget.
    pub private: bool,
    /// Where withheld without a purpose: the purposes under which this member's grants admit it.
    pub purposes: Vec<String>,
}

impl PeerDataset {
    /// A catalog entry, its schema decoded.
    fn of(e: crate::node::CatalogEntry, schema: SchemaRef) -> Self {
        Self {
            name: e.name,
            shared_schema: e.shared_schema,
            schema,
            withheld: e.withheld,
            private: e.private,
            purposes: e.purposes,
        }
    }
}

/// One member's catalog as read: its datasets, and the shared schemas where it holds datasets
/// it does not show this member.
#[derive(Clone, Debug, Default)]
pub struct PeerCatalog {
    /// The datasets the member shows this member.
    pub datasets: Vec<PeerDataset>,
    /// Shared schemas of the current charter in which the member holds datasets it does not show.
    pub hidden_in: Vec<String>,
}

/// One member's catalog: the charter version and time it was read at, and what it listed (or
/// why it could not be read: a member that is down is not asked again by every query).
type CachedCatalog = (u64, Instant, Result<Arc<PeerCatalog>, String>);

/// One table of an analyst's context: its schema in the SQL namespace (`public` for the shared
/// schemas, a member's id, `local`), its name, what it is and its Arrow schema.
#[derive(Clone, Debug)]
pub struct CatalogTable {
    /// `public`, a member id or `local`.
    pub db_schema: String,
    /// The table's name in that schema.
    pub table: String,
    /// What kind of table the name stands for.
    pub kind: TableKind,
    /// The member holding the data, for a member's dataset or a local table.
    pub member: Option<String>,
    /// Its columns.
    pub schema: SchemaRef,
}

impl CatalogTable {
    /// The name to write in SQL: `cases`, `bravo.cases`, `local.cases`.
    pub fn sql_name(&self) -> String {
        if self.db_schema == "public" {
            self.table.clone()
        } else {
            format!("{}.{}", self.db_schema, self.table)
        }
    }
}

/// The tables an analyst may name, and what could not be listed.
#[derive(Clone, Debug)]
pub struct CatalogTables {
    /// Every table, shared schemas first as the catalog lists them.
    pub tables: Vec<CatalogTable>,
    /// Members whose catalogs could not be read and tables that cannot be read now, named.
    pub warnings: Vec<String>,
}

/// Members' catalogs as last read, per member and charter version.
#[derive(Default)]
pub struct CatalogCache {
    inner: Mutex<HashMap<String, CachedCatalog>>,
    /// One lock per member, held while its catalog is read: concurrent queries (or a burst of
    /// `GET /v1/tables`) that miss the cache wait for one read instead of each asking the member.
    reading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl CatalogCache {
    /// The lock held while `member`'s catalog is read.
    fn reading(&self, member: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(member.to_owned()).or_default().clone()
    }

    fn get(&self, member: &str, version: u64, ttl: Duration) -> Option<Result<Arc<PeerCatalog>, String>> {
        let map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(member).filter(|(v, at, _)| *v == version && at.elapsed() < ttl).map(|(_, _, c)| c.clone())
    }

    /// Whether `member`'s `dataset` charges privacy budget, as its catalog last said; unknown
    /// counts as yes.
    fn charges_budget(&self, member: &str, dataset: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(member) {
            Some((_, _, Ok(c))) => c.datasets.iter().find(|d| d.name == dataset).is_none_or(|d| d.private),
            _ => true,
        }
    }

    fn put(&self, member: &str, version: u64, catalog: Result<Arc<PeerCatalog>, String>) {
        let mut map = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(member.to_owned(), (version, Instant::now(), catalog));
    }
}

/// Schema `m` of the analyst's catalog, registered empty if it is not there yet.
fn schema_of(
    catalog: &Arc<dyn datafusion::catalog::CatalogProvider>,
    m: &str,
) -> Result<Arc<dyn datafusion::catalog::SchemaProvider>, NodeError> {
    match catalog.schema(m) {
        Some(s) => Ok(s),
        None => {
            let s: Arc<dyn datafusion::catalog::SchemaProvider> = Arc::new(MemorySchemaProvider::new());
            catalog.register_schema(m, s.clone()).map_err(QueryError::plan)?;
            Ok(s)
        }
    }
}

/// Which members' catalogs a query needs: the tables it names, where a shared schema needs every
/// member, `member.dataset` that member, and `local.*` none.
fn members_named(node: &Node, ctx: &SessionContext, sql: &str) -> BTreeSet<String> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let Ok(statement) = state.sql_to_statement(sql, &dialect) else { return BTreeSet::new() };
    let Ok(tables) = state.resolve_table_references(&statement) else { return BTreeSet::new() };
    let charter = node.charter();
    let others = || charter.charter.members.iter().map(|m| m.id.clone()).filter(|m| *m != node.cfg.member);
    let mut wanted = BTreeSet::new();
    // SHOW TABLES, SHOW COLUMNS and information_schema list every member's datasets.
    let listing = sql.trim_start().get(..4).is_some_and(|w| w.eq_ignore_ascii_case("show"))
        || tables.iter().any(|t| t.schema() == Some("information_schema"));
    if listing {
        wanted.extend(others());
    }
    for t in tables {
        match t.schema() {
            Some(s) if s != node.cfg.member && charter.charter.member(s).is_some() => {
                wanted.insert(s.to_owned());
            }
            Some(_) => {}
            None if charter.charter.schema(t.table()).is_some() => wanted.extend(others()),
            None => {}
        }
    }
    wanted
}

/// What an analyst's context is built from: every dataset known with its member, the shared
/// schemas each member holds datasets of but does not show, and the members not reached.
struct Gathered {
    entries: Vec<(String, PeerDataset)>,
    hidden: Vec<(String, String)>,
    unreachable: Vec<String>,
}

/// A planning error about a table that does not exist, with the closest names the analyst's
/// context holds (shared schemas, `member.dataset`, `local.dataset`) and how to list them all.
fn did_you_mean(ctx: &SessionContext, msg: String) -> String {
    use datafusion::common::utils::datafusion_strsim::levenshtein;
    // DataFusion says: table 'datafusion.schema.table' not found.
    let Some(missing) = msg
        .split_once("table '")
        .and_then(|(_, rest)| rest.split_once("' not found"))
        .map(|(name, _)| name.trim_start_matches("datafusion.").trim_start_matches("public.").to_owned())
    else {
        return msg;
    };
    let mut names = Vec::new();
    if let Some(catalog) = ctx.catalog("datafusion") {
        for schema in catalog.schema_names() {
            if schema == "information_schema" {
                continue;
            }
            for t in catalog.schema(&schema).map(|s| s.table_names()).unwrap_or_default() {
                names.push(if schema == "public" { t } else { format!("{schema}.{t}") });
            }
        }
    }
    let mut close: Vec<(usize, String)> = names
        .into_iter()
        .map(|n| (levenshtein(&n.to_lowercase(), &missing.to_lowercase()), n))
        .filter(|(d, n)| *d <= (n.len() / 3).max(2))
        .collect();
    close.sort();
    let hint = match close.first() {
        Some((_, n)) => format!("; did you mean {n}?"),
        None => String::new(),
    };
    format!("{msg}{hint} (SHOW TABLES or `concord tables` lists what a query may name)")
}

impl Node {
    /// Reads one member's catalog (or takes it from the cache): bounded in time and size, every
    /// schema decoded as a schema alone. A bad answer is an error that names the member.
    async fn catalog_of(&self, m: &concord_charter::MemberCard) -> Result<Arc<PeerCatalog>, NodeError> {
        let version = self.charter_version();
        let ttl = Duration::from_secs(self.cfg.limits.catalog_ttl_secs);
        let cached = match self.catalogs.get(&m.id, version, ttl) {
            Some(c) => c,
            None => {
                let lock = self.catalogs.reading(&m.id);
                let _reading = lock.lock().await;
                // Another task may have read it while this one waited.
                match self.catalogs.get(&m.id, version, ttl) {
                    Some(c) => c,
                    None => {
                        let read = self.read_catalog(m).await.map_err(|e| e.to_string());
                        self.catalogs.put(&m.id, version, read.clone());
                        read
                    }
                }
            }
        };
        cached.map_err(|message| NodeError::Peer {
            member: m.id.clone(),
            code: PeerFailure::Unreachable,
            message,
        })
    }

    async fn read_catalog(&self, m: &concord_charter::MemberCard) -> Result<Arc<PeerCatalog>, NodeError> {
        let bad = |message: String| NodeError::Peer {
            member: m.id.clone(),
            code: PeerFailure::MalformedCatalog,
            message,
        };
        let budget = Budget {
            timeout: Duration::from_secs(self.cfg.limits.catalog_timeout_secs),
            max_bytes: MAX_CATALOG_BYTES,
        };
        let resp = peer_call_paced(&self.keys().tls, m, "GET", "/v1/catalog", vec![], budget).await?;
        if resp.status != 200 {
            let (code, message) = resp.failure();
            return Err(NodeError::Peer { member: m.id.clone(), code, message });
        }
        let catalog: Catalog = serde_json::from_slice(&resp.body).map_err(|e| bad(e.to_string()))?;
        let list = catalog.datasets;
        if list.len() > MAX_CATALOG_ENTRIES || catalog.hidden_in.len() > MAX_CATALOG_ENTRIES {
            return Err(bad(format!("{} datasets, more than {MAX_CATALOG_ENTRIES}", list.len())));
        }
        let charter = self.charter();
        let hidden_in =
            catalog.hidden_in.into_iter().filter(|s| charter.charter.schema(s).is_some()).collect();
        let mut out = Vec::with_capacity(list.len());
        for e in list {
            if e.purposes.len() > 64 || e.purposes.iter().any(|p| p.len() > 200) {
                return Err(bad(format!("the purposes of {} are too many or too long", e.name)));
            }
            concord_charter::check_identifier("dataset name", &e.name)
                .map_err(|err| bad(format!("dataset name {:?}: {err}", e.name)))?;
            let bytes =
                B64.decode(&e.schema_ipc).map_err(|_| bad(format!("schema of {} is not base64", e.name)))?;
            let schema = concord_query::ipc::decode_schema(&bytes)
                .map_err(|err| bad(format!("schema of {}: {err}", e.name)))?;
            out.push(PeerDataset::of(e, schema));
        }
        Ok(Arc::new(PeerCatalog { datasets: out, hidden_in }))
    }

    /// Builds the analyst's DataFusion context for `sql`: shared schemas as federated tables,
    /// the admitted datasets of every member the query names as `member.dataset`, and this
    /// member's own datasets as ordinary tables under `local`. Only the catalogs of members the
    /// query names are read, in parallel, each within its timeout; one that cannot be read
    /// leaves its member unreachable.
    pub async fn query_context(&self, sql: &str, purpose: &str) -> Result<SessionContext, NodeError> {
        let ctx = concord_query::limits::analyst_session(&self.cfg.limits.exec())?;
        let wanted = members_named(self, &ctx, sql);
        Ok(self.fill_context(ctx, &wanted, purpose).await?.0)
    }

    /// The tables an analyst's query may name, each with its columns as SQL types: shared
    /// schemas, every member's datasets released to this member, this node's own tables. A
    /// member whose catalog cannot be read, or a table of this node that cannot be read now,
    /// is named in the list's warnings.
    pub async fn tables(&self) -> Result<TableList, NodeError> {
        let CatalogTables { tables, warnings } = self.catalog_tables().await?;
        let tables = tables
            .into_iter()
            .map(|t| TableInfo {
                columns: t
                    .schema
                    .fields()
                    .iter()
                    .map(|f| ColumnInfo {
                        name: f.name().clone(),
                        sql_type: concord_query::dataset::sql_type(f.data_type()),
                        nullable: f.is_nullable(),
                    })
                    .collect(),
                shared_schema: (t.kind == TableKind::Federated).then(|| t.table.clone()),
                name: t.sql_name(),
                kind: t.kind,
                member: t.member,
            })
            .collect();
        Ok(TableList { tables, warnings })
    }

    /// The tables an analyst's query may name with their Arrow schemas, as [`Node::tables`]
    /// lists them (and Flight SQL's metadata commands), with the same warnings.
    pub async fn catalog_tables(&self) -> Result<CatalogTables, NodeError> {
        let ctx = concord_query::limits::analyst_session(&self.cfg.limits.exec())?;
        let charter = self.charter();
        let wanted: BTreeSet<String> =
            charter.charter.members.iter().map(|m| m.id.clone()).filter(|m| *m != self.cfg.member).collect();
        let (ctx, unreachable) = self.fill_context(ctx, &wanted, "analysis").await?;
        let mut warnings: Vec<String> = unreachable
            .iter()
            .map(|m| {
                format!("{m}'s catalog could not be read now: its datasets are not listed; try again later")
            })
            .collect();
        for d in self.datasets().await?.map.values() {
            if let Err(why) = &d.table {
                warnings.push(format!("local.{} is not listed: {why}", d.record.name));
            }
        }
        let tables = self.list_tables(&ctx, &mut warnings).await?;
        Ok(CatalogTables { tables, warnings })
    }

    /// Every table of the analyst's context `ctx` but its information schema.
    async fn list_tables(
        &self,
        ctx: &SessionContext,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<CatalogTable>, NodeError> {
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| NodeError::State("DataFusion's default catalog is missing".into()))?;
        let mut out = Vec::new();
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else { continue };
            let (kind, member) = match schema_name.as_str() {
                "information_schema" => continue,
                "public" => (TableKind::Federated, None),
                "local" => (TableKind::Local, Some(self.cfg.member.clone())),
                m => (TableKind::MemberDataset, Some(m.to_owned())),
            };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                match schema.table(&name).await {
                    Ok(Some(t)) => out.push(CatalogTable {
                        db_schema: schema_name.clone(),
                        table: name,
                        kind,
                        member: member.clone(),
                        schema: t.schema(),
                    }),
                    Ok(None) => {}
                    Err(e) => warnings.push(format!("{schema_name}.{name} is not listed: {e}")),
                }
            }
        }
        Ok(out)
    }

    /// What an analyst's SQL would answer, without running it or asking any owner: the
    /// result's schema and the types of its parameters `$1`, `$2`, ... (for Flight SQL's
    /// prepared statements). The SQL is checked as a query would be.
    pub async fn describe_query(
        &self,
        sql: &str,
        purpose: &str,
    ) -> Result<(SchemaRef, Vec<Option<DataType>>), NodeError> {
        let ctx = self.query_context(sql, purpose).await?;
        match concord_query::federate::describe(&ctx, sql).await {
            Ok(d) => Ok(d),
            Err(QueryError::Plan(msg)) => Err(NodeError::Query(QueryError::Plan(did_you_mean(&ctx, msg)))),
            Err(e) => Err(e.into()),
        }
    }

    /// This node's own datasets and the catalogs of the members in `wanted`, read in parallel;
    /// a member whose catalog cannot be read is named unreachable.
    async fn gather(&self, wanted: &BTreeSet<String>) -> Result<Gathered, NodeError> {
        let mut entries: Vec<(String, PeerDataset)> = Vec::new();
        let mut hidden: Vec<(String, String)> = Vec::new();
        for e in self.catalog_for(&self.cfg.member).await?.datasets {
            // This node wrote the schema at registration; one it cannot read is named, never
            // left out of a shared table without a word.
            let schema = B64
                .decode(&e.schema_ipc)
                .map_err(|x| x.to_string())
                .and_then(|b| concord_query::ipc::decode_schema(&b).map_err(|x| x.to_string()))
                .map_err(|why| {
                    NodeError::Config(format!(
                        "dataset {}: its stored schema cannot be read ({why}); register it again with `concord dataset add --replace`",
                        e.name
                    ))
                })?;
            entries.push((self.cfg.member.clone(), PeerDataset::of(e, schema)));
        }
        let charter = self.charter();
        let members: Vec<&concord_charter::MemberCard> =
            charter.charter.members.iter().filter(|m| wanted.contains(&m.id)).collect();
        let fetched = futures::future::join_all(
            members.iter().map(|m| async move { (m.id.clone(), self.catalog_of(m).await) }),
        )
        .await;
        let mut unreachable = Vec::new();
        for (member, result) in fetched {
            match result {
                Ok(c) => {
                    entries.extend(c.datasets.iter().map(|e| (member.clone(), e.clone())));
                    hidden.extend(c.hidden_in.iter().map(|s| (member.clone(), s.clone())));
                }
                Err(e) => {
                    tracing::warn!(%member, "catalog unavailable: {e}");
                    unreachable.push(member);
                }
            }
        }
        Ok(Gathered { entries, hidden, unreachable })
    }

    /// Fills an analyst's context: the catalogs of the members in `wanted` are read.
    async fn fill_context(
        &self,
        ctx: SessionContext,
        wanted: &BTreeSet<String>,
        purpose: &str,
    ) -> Result<(SessionContext, Vec<String>), NodeError> {
        let Gathered { entries, hidden, unreachable } = self.gather(wanted).await?;
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| NodeError::State("DataFusion's default catalog is missing".into()))?;
        for s in &self.charter().charter.schemas {
            let table = self.shared_table(s, &entries, &hidden, &unreachable, purpose);
            ctx.register_table(s.name.as_str(), Arc::new(table)).map_err(QueryError::plan)?;
        }
        for (member, e) in entries {
            let table = FederatedTable {
                display: format!("{member}.{}", e.name),
                schema: e.schema,
                parts: vec![Part { owner: member.clone(), dataset: e.name.clone() }],
                shared: false,
                unreachable: vec![],
                withheld: vec![],
            };
            schema_of(&catalog, &member)?
                .register_table(e.name, Arc::new(table))
                .map_err(QueryError::plan)?;
        }
        for member in &unreachable {
            // The member's schema exists, so that `member.x` says who cannot be reached.
            schema_of(&catalog, member)?;
        }
        let local = schema_of(&catalog, "local")?;
        for d in self.datasets().await?.map.values() {
            if let Ok(t) = &d.table {
                local.register_table(d.record.name.clone(), t.clone()).map_err(QueryError::plan)?;
            }
        }
        Ok((ctx, unreachable))
    }

    /// The federated table of shared schema `s` for one query: the conforming datasets
    /// released to it as its parts, and the ones withheld from it named.
    fn shared_table(
        &self,
        s: &concord_charter::SharedSchema,
        entries: &[(String, PeerDataset)],
        hidden: &[(String, String)],
        unreachable: &[String],
        purpose: &str,
    ) -> FederatedTable {
        let conforming = entries.iter().filter(|(_, e)| e.shared_schema.as_deref() == Some(s.name.as_str()));
        // Released to this query: without a purpose, or under the query's purpose by a grant.
        let released = |e: &PeerDataset| e.withheld.is_none() || e.purposes.iter().any(|p| p == purpose);
        let parts = conforming
            .clone()
            .filter(|(_, e)| released(e))
            .map(|(m, e)| Part { owner: m.clone(), dataset: e.name.clone() })
            .collect();
        // Conforming datasets their owners show but do not release to this query, and
        // owners that hold datasets of the schema they do not show: named in every result
        // over the schema, never left out without a word.
        let mut withheld: Vec<String> = conforming
            .filter(|(_, e)| !released(e))
            .map(|(m, e)| {
                let why = printable(e.withheld.as_deref().unwrap_or(""));
                match e.purposes.as_slice() {
                    [] => format!("{m}.{} ({why})", e.name),
                    ps => format!(
                        "{m}.{} ({why}; your grants admit it for purpose {}: query with --purpose)",
                        e.name,
                        ps.iter().map(|p| printable(p)).collect::<Vec<_>>().join(", ")
                    ),
                }
            })
            .collect();
        withheld.extend(hidden.iter().filter(|(_, h)| h == &s.name).map(|(m, _)| {
            format!("{m} (holds datasets of {} that it does not show to {})", s.name, self.cfg.member)
        }));
        FederatedTable {
            display: s.name.clone(),
            schema: shared_arrow_schema(s),
            parts,
            shared: true,
            unreachable: unreachable.to_vec(),
            withheld,
        }
    }

    /// Runs an analyst's federated SQL within the node's limits (a query slot, a memory pool,
    /// the query timeout); with `allow_partial`, unreachable owners are left out and named
    /// instead of failing the query.
    pub async fn query(
        self: &Arc<Self>,
        sql: &str,
        purpose: &str,
        allow_partial: bool,
    ) -> Result<QueryOutcome, NodeError> {
        self.query_bound(sql, &[], purpose, allow_partial).await
    }

    /// [`Node::query`] of a prepared statement: `params` bound to its placeholders `$1`, `$2`,
    /// ... in the planned statement, never into its text.
    pub async fn query_bound(
        self: &Arc<Self>,
        sql: &str,
        params: &[datafusion::scalar::ScalarValue],
        purpose: &str,
        allow_partial: bool,
    ) -> Result<QueryOutcome, NodeError> {
        let _slot = self.query_slots.acquire().await.map_err(|_| NodeError::Stopped("the query queue"))?;
        let limits = &self.cfg.limits;
        let work = async {
            let mut t = super::phases::Phases::start("query");
            let ctx = self.query_context(sql, purpose).await?;
            t.mark("context");
            let owners = PeerOwners {
                node: self.clone(),
                purpose: purpose.to_owned(),
                prepared: Mutex::new(HashMap::new()),
                own_failure: Mutex::new(None),
                fetched: Mutex::new((None, None)),
            };
            let max_rows = limits.max_result_rows;
            let run = concord_query::federate::run_federated_bound(
                &ctx,
                sql,
                params,
                &owners,
                allow_partial,
                max_rows,
            );
            let ran = run.await;
            let (began, came) = *owners.fetched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let (Some(began), Some(came)) = (began, came) {
                t.mark_at("plan", began);
                t.mark_at("fetch", came);
                t.mark("merge");
            } else {
                t.mark("plan_and_run");
            }
            let own = owners.own_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            match (ran, own) {
                (Ok(out), _) => Ok(out),
                (Err(_), Some(own)) => Err(own),
                (Err(QueryError::Plan(msg)), None) => {
                    Err(NodeError::Query(QueryError::Plan(did_you_mean(&ctx, msg))))
                }
                (Err(e), None) => Err(e.into()),
            }
        };
        match tokio::time::timeout(limits.query_timeout(), work).await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Query(QueryError::Limit(format!(
                "the query ran longer than this node's limit of {} s ([limits] query_timeout_secs)",
                limits.query_timeout_secs
            )))),
        }
    }

    /// Sends one signed sub-query to an owner and verifies its receipt.
    pub async fn request_partial(
        &self,
        part: &Part,
        sql: &str,
        purpose: &str,
    ) -> Result<PartialAnswer, NodeError> {
        let prepared = self.prepare_request(part, sql, purpose).await?;
        self.send_request(&prepared).await
    }

    /// Signs a sub-query's request note and logs it ("access requested"): before it is sent,
    /// to check or to run.
    pub async fn prepare_request(
        &self,
        part: &Part,
        sql: &str,
        purpose: &str,
    ) -> Result<Prepared, NodeError> {
        let (prepared, asked) = self.sign_request(part, sql, purpose)?;
        let mut t = super::phases::Phases::start("request_log");
        self.log.append(asked).await?;
        t.mark("log_append");
        Ok(prepared)
    }

    /// Signs the requests of several parts and logs them in one commit.
    pub async fn prepare_requests(
        &self,
        parts: &[(&Part, &str)],
        purpose: &str,
    ) -> Result<Vec<Prepared>, (String, NodeError)> {
        let mut prepared = Vec::new();
        let mut entries = Vec::new();
        for (part, sql) in parts {
            let (p, asked) = self.sign_request(part, sql, purpose).map_err(|e| (part.owner.clone(), e))?;
            prepared.push(p);
            entries.push(asked);
        }
        let mut t = super::phases::Phases::start("request_log");
        // Invariant (as in `prepare_request`): all are on disk before any is sent.
        self.log.append_all(entries).await.map_err(|e| (self.cfg.member.clone(), e))?;
        t.mark("log_append");
        Ok(prepared)
    }

    /// A sub-query's signed request, its notes kept, and its "access requested" entry to log
    /// before it is sent.
    fn sign_request(&self, part: &Part, sql: &str, purpose: &str) -> Result<(Prepared, Vec<u8>), NodeError> {
        let mut t = super::phases::Phases::start("request");
        let charter = self.charter();
        let owner = owner_card(&charter, &part.owner)?;
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
        let signed = request.sign(&self.keys().signer)?;
        t.mark("sign");
        // Invariant: a request is on disk in this log before it is sent, so that whatever
        // crashes, the owner's "access served" has its twin here. The log holds its public
        // note; the details (SQL, purpose) stay with the two parties.
        let asked = LogEntry::AccessRequested {
            time: crate::store::entry::now(),
            request_id: request.request_id.clone(),
            owner: owner.id.clone(),
            dataset: part.dataset.clone(),
            request_note: crate::store::entry::b64(&signed.note.to_bytes()),
            notes: Notes::public(&charter.charter, Some(&signed.details), None, None),
        };
        let body = signed.to_bytes();
        self.state.keep_notes(&request.request_id, &self.cfg.member, NoteKind::Request, &body)?;
        t.mark("keep_notes");
        let prepared = Prepared {
            part: part.clone(),
            note_digest: signed.note_digest(),
            salt: signed.salt,
            request,
            body,
        };
        Ok((prepared, asked.to_bytes()?))
    }

    /// Sends a prepared request to its owner's check round (`check`) or withdraws it.
    async fn check_round(&self, prepared: &Prepared, path: &str) -> Result<(), NodeError> {
        let charter = self.charter();
        let owner = owner_card(&charter, &prepared.part.owner)?;
        let budget =
            Budget { timeout: Duration::from_secs(self.cfg.limits.peer_timeout_secs), max_bytes: 64 * 1024 };
        let resp =
            peer_call_paced(&self.keys().tls, owner, "POST", path, prepared.body.clone(), budget).await?;
        if resp.status != 200 {
            let (code, message) = resp.failure();
            return Err(NodeError::Peer { member: owner.id.clone(), code, message });
        }
        Ok(())
    }

    /// Sends a prepared request to run and verifies its receipt.
    pub async fn send_request(&self, prepared: &Prepared) -> Result<PartialAnswer, NodeError> {
        let mut t = super::phases::Phases::start("partial");
        let part = &prepared.part;
        let charter = self.charter();
        let owner = owner_card(&charter, &part.owner)?;
        let budget = Budget {
            timeout: Duration::from_secs(self.cfg.limits.peer_timeout_secs),
            max_bytes: concord_query::ipc::MAX_IPC_BYTES,
        };
        let resp =
            peer_call_paced(&self.keys().tls, owner, "POST", "/v1/query", prepared.body.clone(), budget)
                .await?;
        t.mark("owner_call");
        if resp.status != 200 {
            let (code, message) = resp.failure();
            return Err(NodeError::Peer { member: owner.id.clone(), code, message });
        }
        let (receipt, receipt_bytes, details, released) = self.check_release(owner, prepared, &resp)?;
        let (_, batches) = concord_query::ipc::decode(&resp.body).map_err(|e| NodeError::Peer {
            member: owner.id.clone(),
            code: PeerFailure::BadAnswer,
            message: e.to_string(),
        })?;
        t.mark("verify_and_decode");
        // Invariant: a partial is used only once its "access made" entry is on disk.
        let entry = LogEntry::AccessMade {
            time: crate::store::entry::now(),
            request_id: receipt.request_id.clone(),
            owner: owner.id.clone(),
            dataset: part.dataset.clone(),
            release: receipt.release.clone(),
            owner_log_index: receipt.log_index,
            receipt: crate::store::entry::b64(&receipt_bytes),
            notes: Notes::public(&charter.charter, None, Some(&details), None),
        };
        self.state.keep_notes(&receipt.request_id, &self.cfg.member, NoteKind::Release, &details)?;
        t.mark("keep_notes");
        self.log.append(entry.to_bytes()?).await?;
        t.mark("log_append");
        Ok(PartialAnswer {
            batches,
            contribution: Contribution {
                member: owner.id.clone(),
                dataset: part.dataset.clone(),
                rows_scanned: released.rows_scanned,
                groups_released: released.groups_released,
                receipt_digest: Some(commitment(&receipt_bytes)),
                release: released.release,
            },
        })
    }

    /// Checks an owner's answer to a prepared request: its receipt, signed by the owner, is for
    /// this request, and commits to the release's details, which commit to the result. Returns
    /// the receipt, its bytes, the details' bytes and the details.
    fn check_release(
        &self,
        owner: &concord_charter::MemberCard,
        prepared: &Prepared,
        resp: &crate::net::client::Response,
    ) -> Result<(ReleaseReceipt, Vec<u8>, Vec<u8>, ReleaseDetails), NodeError> {
        let (part, request) = (&prepared.part, &prepared.request);
        let bad = |message: String| NodeError::Peer {
            member: owner.id.clone(),
            code: PeerFailure::BadReceipt,
            message,
        };
        let header = |name: &str| -> Result<Vec<u8>, NodeError> {
            let v = resp
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| bad(format!("the answer carries no {name} header")))?;
            B64.decode(v).map_err(|_| bad(format!("the {name} header is not base64")))
        };
        let receipt_bytes = header(RECEIPT_HEADER)?;
        let details = header(RELEASE_DETAILS_HEADER)?;
        let receipt = ReleaseReceipt::verify(&receipt_bytes, &owner.verifier()?)
            .map_err(|e| bad(format!("receipt does not verify: {e}")))?;
        if receipt.request_id != request.request_id
            || receipt.owner != owner.id
            || receipt.requester != self.cfg.member
            || receipt.dataset != part.dataset
            || receipt.federation != request.federation
            || receipt.request_note != prepared.note_digest
        {
            return Err(bad("receipt is for another request".into()));
        }
        if receipt.release != commitment(&details) {
            return Err(bad("the release's details are not those the receipt commits to".into()));
        }
        let released =
            ReleaseDetails::from_bytes(&details).map_err(|e| bad(format!("release details: {e}")))?;
        if released.salt != prepared.salt {
            return Err(bad("the release's details are salted for another request".into()));
        }
        if released.result_sha256 != result_digest(&prepared.salt, &resp.body) {
            return Err(bad("result does not match the digest in the release's details".into()));
        }
        Ok((receipt, receipt_bytes, details, released))
    }
}

/// An owner's card in the charter a request is made under.
fn owner_card<'a>(
    charter: &'a concord_charter::SignedCharter,
    owner: &str,
) -> Result<&'a concord_charter::MemberCard, NodeError> {
    charter
        .charter
        .member(owner)
        .ok_or_else(|| NodeError::UnknownMember(format!("{owner} is not in the charter")))
}

/// Response header that carries the owner's signed receipt, base64.
pub const RECEIPT_HEADER: &str = "concord-receipt";
/// Response header that carries the release's details (what the receipt commits to), base64.
pub const RELEASE_DETAILS_HEADER: &str = "concord-release-details";

/// A sub-query's signed request, logged and ready to send.
pub struct Prepared {
    /// The owner and dataset the request goes to.
    pub part: Part,
    /// The request as signed and logged.
    pub request: QueryRequest,
    /// The body that travels: the signed public note with its details.
    pub body: Vec<u8>,
    /// `sha256:<hex>` of the signed public note.
    pub note_digest: String,
    /// The details' salt, which salts the release's details too.
    pub salt: String,
}

/// The requester's transport to owners: the peer protocol, or in-process for its own datasets.
struct PeerOwners {
    node: Arc<Node>,
    purpose: String,
    /// Requests signed and logged before the query runs (and, where a budget is charged, that
    /// passed the check round), by owner, dataset and SQL, to run as they were prepared.
    prepared: Mutex<HashMap<(String, String, String), Vec<Prepared>>>,
    /// The first failure on this node itself on the way to an owner (its disk full, its log, its
    /// notes): the query's error is this one, not the owner's.
    own_failure: Mutex<Option<NodeError>>,
    /// When the parts were first asked for and when the last one came back: the query's
    /// planning, fetching and merging in its step timings.
    fetched: Mutex<(Option<Instant>, Option<Instant>)>,
}

impl PeerOwners {
    fn fetch_began(&self) {
        let mut f = self.fetched.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.0.get_or_insert_with(Instant::now);
    }

    fn part_came(&self) {
        self.fetched.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1 = Some(Instant::now());
    }
}

/// An owner's error as the query's: a refusal names the owner.
fn as_query_error(owner: &str, e: NodeError) -> QueryError {
    match e {
        NodeError::Query(q) => q,
        NodeError::Peer { member, code: PeerFailure::Unreachable, message } => {
            QueryError::Unreachable { member, reason: message }
        }
        NodeError::Peer { member, code: PeerFailure::Answered(ErrorCode::DiskFull), .. } => {
            QueryError::Unreachable {
                member,
                reason: "its disk is full and it takes no new work until its operator frees space".into(),
            }
        }
        NodeError::Peer { member, code: PeerFailure::TooLarge { limit }, .. } => QueryError::Limit(format!(
            "member {member}'s answer to its part is larger than the {} MiB a node reads from an \
             owner; filter or aggregate more at the owner (a WHERE on its columns, a GROUP BY) so \
             that less comes back",
            limit / (1024 * 1024)
        )),
        NodeError::Peer { member, code: PeerFailure::Answered(ErrorCode::PolicyRefused), message } => {
            let why = message.strip_prefix("refused by policy: ").unwrap_or(&message);
            QueryError::Policy(format!("{member}: {why}"))
        }
        NodeError::PolicyRefused(reason) => QueryError::Policy(format!("{owner}: {reason}")),
        NodeError::Peer { member, code, message } => {
            QueryError::Owner { member, reason: format!("{code}: {message}") }
        }
        other => QueryError::Owner { member: owner.to_owned(), reason: other.to_string() },
    }
}

impl PeerOwners {
    /// An error on the way to `owner` as the query's; a failure on this node itself is kept as
    /// the query's error (see [`PeerOwners::own_failure`]).
    fn failed(&self, owner: &str, e: NodeError) -> QueryError {
        // What an owner (or this node as owner of its own part) answered, or a refusal of what
        // was asked; anything else happened on this node.
        let answered = matches!(
            e,
            NodeError::Peer { .. }
                | NodeError::Query(_)
                | NodeError::PolicyRefused(_)
                | NodeError::UnknownMember(_)
                | NodeError::RateLimited(_)
        );
        if answered && !e.disk_full() {
            return as_query_error(owner, e);
        }
        let q = QueryError::Execution(format!(
            "this node could not keep its record of the part for {owner}: {e}"
        ));
        self.own_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
        q
    }

    /// Prepares each remote sub-query's request, logged in one commit: all, or the error.
    async fn prepare_all(&self, remote: &[&(Part, String)]) -> Result<Vec<Prepared>, QueryError> {
        let parts: Vec<(&Part, &str)> = remote.iter().map(|(p, sql)| (p, sql.as_str())).collect();
        self.node.prepare_requests(&parts, &self.purpose).await.map_err(|(owner, e)| self.failed(&owner, e))
    }

    /// Runs the check round on each prepared request: those that passed, and the first error if any.
    async fn check_prepared(&self, ready: Vec<Prepared>) -> (Vec<Prepared>, Option<QueryError>) {
        let checks =
            futures::future::join_all(ready.iter().map(|r| self.node.check_round(r, "/v1/query/check")))
                .await;
        let mut passed = Vec::new();
        let mut first_error = None;
        for (r, c) in ready.into_iter().zip(checks) {
            match c {
                Ok(()) => passed.push(r),
                Err(e) => {
                    first_error.get_or_insert(self.failed(&r.part.owner, e));
                }
            }
        }
        (passed, first_error)
    }

    /// Keeps requests prepared (and checked where a budget is charged), by owner, dataset and
    /// SQL, to run as they are.
    fn keep_prepared(&self, ready: Vec<Prepared>) {
        let mut prepared = self.prepared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in ready {
            let key = (r.part.owner.clone(), r.part.dataset.clone(), r.request.sql.clone());
            prepared.entry(key).or_default().push(r);
        }
    }

    /// Withdraws requests that passed the check round; a withdrawal not delivered is only logged.
    async fn withdraw(&self, ready: &[Prepared]) {
        let withdrawn =
            futures::future::join_all(ready.iter().map(|r| self.node.check_round(r, "/v1/query/cancel")))
                .await;
        for (r, w) in ready.iter().zip(withdrawn) {
            if let Err(w) = w {
                tracing::warn!(request = %r.request.request_id, owner = %r.part.owner, "withdrawal not delivered; the reservation lapses: {w}");
            }
        }
    }
}

#[async_trait]
impl OwnerClient for PeerOwners {
    async fn before_partials(&self, asks: &[(Part, String)], check: bool) -> Result<(), QueryError> {
        self.fetch_began();
        let me = &self.node.cfg.member;
        let remote: Vec<&(Part, String)> = asks.iter().filter(|(p, _)| &p.owner != me).collect();
        if remote.len() < 2 {
            return Ok(());
        }
        // Every request is logged in one commit before any is sent.
        let ready = self.prepare_all(&remote).await?;
        // The check round only where one owner's refusal could leave another's budget spent.
        let charges = remote.iter().any(|(p, _)| self.node.catalogs.charges_budget(&p.owner, &p.dataset));
        if !check || !charges {
            self.keep_prepared(ready);
            return Ok(());
        }
        let (ready, first_error) = self.check_prepared(ready).await;
        match first_error {
            None => {
                self.keep_prepared(ready);
                Ok(())
            }
            Some(e) => {
                // Withdrawn wherever it passed: their reservations are released at once.
                self.withdraw(&ready).await;
                Err(e)
            }
        }
    }

    async fn partial(&self, part: &Part, sql: &str) -> Result<PartialAnswer, QueryError> {
        let answer = self.partial_of(part, sql).await;
        self.part_came();
        answer
    }
}

impl PeerOwners {
    /// [`OwnerClient::partial`]: this node's own part answered here, another member's asked for.
    async fn partial_of(&self, part: &Part, sql: &str) -> Result<PartialAnswer, QueryError> {
        self.fetch_began();
        if part.owner == self.node.cfg.member {
            let ask = crate::node::owner::Ask {
                requester: &part.owner,
                dataset: &part.dataset,
                sql,
                purpose: &self.purpose,
                request_id: None,
            };
            let a = self.node.answer_subquery(&ask).await.map_err(|e| self.failed(&part.owner, e))?;
            return Ok(PartialAnswer {
                batches: a.batches,
                contribution: Contribution {
                    member: part.owner.clone(),
                    dataset: part.dataset.clone(),
                    rows_scanned: a.rows_scanned,
                    groups_released: a.groups_released,
                    receipt_digest: None,
                    release: a.report,
                },
            });
        }
        let ready = {
            let mut c = self.prepared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.get_mut(&(part.owner.clone(), part.dataset.clone(), sql.to_owned())).and_then(Vec::pop)
        };
        let answer = match ready {
            Some(prepared) => self.node.send_request(&prepared).await,
            None => self.node.request_partial(part, sql, &self.purpose).await,
        };
        answer.map_err(|e| self.failed(&part.owner, e))
    }
}

/// A peer's text as this node shows it to its analysts: no control characters (no terminal
/// escapes), at most 200 characters.
fn printable(text: &str) -> String {
    let mut chars = text.chars().filter(|c| !c.is_control());
    let mut out: String = chars.by_ref().take(200).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn a_peers_text_loses_terminal_escapes_and_its_length() {
        assert_eq!(printable("no rule permits\u{1b}[2J\u{7}"), "no rule permits[2J");
        let long = "x".repeat(5000);
        let shown = printable(&long);
        assert_eq!(shown.chars().count(), 201, "200 characters and an ellipsis");
        assert!(shown.ends_with('…'));
        assert_eq!(printable(&"y".repeat(200)), "y".repeat(200), "exactly 200 stays whole");
    }
}
