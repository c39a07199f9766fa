//! The node's core: a member's loaded state (config, keys, charter, state database, transparency
//! log, datasets with their policies) and the logic on it, below every surface.
//!
//! - [`requester`]: the requester's side of federated SQL (catalogs, signed requests, receipts).
//! - [`owner`]: the owner's side (a peer's request checked, decided, run, logged, released).
//! - [`witness`]: cosigning other members' checkpoints, and checkpointing this member's log.
//! - [`audit`]: fetching, verifying and reconciling members' logs.
//! - [`access`]: access requests, decisions and grants, on both sides.
//! - [`admin`]: offline commands on a node folder.
//!
//! Nothing here listens: the surfaces in `crate::api` call into this module, never the reverse.

pub mod access;
pub mod admin;
pub mod audit;
pub mod governance;
pub mod health;
pub mod metrics;
pub mod owner;
pub mod phases;
pub mod requester;
pub mod witness;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_charter::SignedCharter;
use concord_log::NoteSigner;
use concord_log::checkpoint::CosignatureSigner;
use concord_policy::{AccessContext, Action, AllowList, Baseline, Policy};
use concord_query::dataset::{self, DatasetFormat};
use datafusion::catalog::TableProvider;
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::net::tls::TlsKeys;
use crate::store::config::{NodeConfig, NodeDir};
use crate::store::state::{DatasetRecord, State};
use crate::store::tlog::Log;

/// A dataset ready to serve.
pub struct LoadedDataset {
    /// Its row in the registry: name, file path, format, schema, policy source, row count.
    pub record: DatasetRecord,
    /// The policy parsed from the record; one that no longer parses is replaced by a policy that
    /// admits nobody.
    pub policy: Arc<Policy>,
    /// `Err` holds why the file cannot be read now; the node stays up and says so when asked.
    pub table: Result<Arc<dyn TableProvider>, String>,
    /// Whether each privacy unit has one row, for the file as it was (length, modification
    /// time) when that was found.
    pub unit_rows: Mutex<Option<(FileStamp, bool)>>,
}

/// What identifies one version of a data file.
pub type FileStamp = (u64, Option<std::time::SystemTime>);

impl LoadedDataset {
    /// The file's stamp; none for a directory (its entry does not change when a file in it is
    /// rewritten) or rows the node does not hold (a database's, a cluster's), which are then
    /// never taken as known.
    fn stamp(&self) -> Option<FileStamp> {
        if !self.record.format.is_file() {
            return None;
        }
        let m = std::fs::metadata(&self.record.path).ok().filter(std::fs::Metadata::is_file)?;
        Some((m.len(), m.modified().ok()))
    }

    /// Whether each privacy unit has exactly one row in the file as it is now; found with one
    /// pass over the data, kept until the file changes.
    pub async fn unit_is_row(&self, limits: &concord_query::limits::ExecLimits) -> Result<bool, NodeError> {
        let (Some(personal), Ok(table)) = (&self.policy.personal, &self.table) else {
            return Ok(false);
        };
        let Some(stamp) = self.stamp() else { return Ok(false) };
        if let Some((s, known)) = *self.unit_rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
            && s == stamp
        {
            return Ok(known);
        }
        let known = concord_query::release::unit_is_row(
            &self.record.name,
            table.clone(),
            &personal.privacy_unit,
            limits,
        )
        .await?;
        *self.unit_rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((stamp, known));
        Ok(known)
    }
}

/// The datasets of a node as of one generation of its registry.
#[derive(Default)]
pub struct Datasets {
    /// The registry's generation they were loaded at; another one in the state database means
    /// they are loaded again.
    pub generation: i64,
    /// The datasets, by name.
    pub map: BTreeMap<String, Arc<LoadedDataset>>,
}

/// A stored policy: a policy file, or (from nodes of before policies) the JSON of an allow-list,
/// which becomes the default policy for those members.
pub fn stored_policy(record: &DatasetRecord) -> Result<Policy, NodeError> {
    let text = record.policy.trim_start();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|source| NodeError::Decode {
            what: format!("the policy of dataset {}", record.name),
            source,
        })?;
        let allow = match &v["allow"] {
            serde_json::Value::String(s) if s == "everyone" => AllowList::Everyone,
            serde_json::Value::Object(m) => AllowList::Members(
                m.get("members")
                    .and_then(|x| x.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            ),
            _ => AllowList::Nobody,
        };
        let columns = dataset_columns(record)?;
        return Ok(Policy::default_for(&columns, &allow)?);
    }
    Ok(Policy::parse(&record.policy, &format!("policy of dataset {}", record.name))?)
}

/// The column names of a registered dataset.
pub fn dataset_columns(record: &DatasetRecord) -> Result<Vec<String>, NodeError> {
    let schema = concord_query::ipc::decode_schema(&record.schema_ipc)?;
    Ok(schema.fields().iter().map(|f| f.name().clone()).collect())
}

/// One entry of a node's catalog as a peer sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The dataset's name on its owner's node.
    pub name: String,
    /// The charter's shared schema the dataset conforms to, if any.
    pub shared_schema: Option<String>,
    /// Arrow IPC schema, base64.
    pub schema_ipc: String,
    /// Why this member may see the dataset but not aggregate it (the owner's policy, with the
    /// requester's live grants and no purpose); a requester leaves it out of the shared schema
    /// and names it. `None`: it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<String>,
    /// Released under differential privacy: each query costs privacy budget, so a query that
    /// reads several owners checks with each before any runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// Where `withheld` without a purpose: the purposes under which the requester's own live
    /// grants admit it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
}

/// What a member's catalog shows another: the datasets it may see, and the shared schemas in
/// which the owner holds datasets it does not show that member (so that a query over them
/// names the owner as left out, never leaves it out without a word).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Catalog {
    /// The datasets the member may see (the owner's policy allows it `describe`).
    pub datasets: Vec<CatalogEntry>,
    /// Shared schemas in which the owner holds datasets it does not show the member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hidden_in: Vec<String>,
}

/// A member's keys.
pub struct Keys {
    /// Signs this member's notes: requests, receipts, checkpoints, proposals, votes.
    pub signer: NoteSigner,
    /// Cosigns other members' checkpoints.
    pub witness: CosignatureSigner,
    /// Mutual TLS with the other members.
    pub tls: TlsKeys,
}

/// Everything a running node holds.
pub struct Node {
    /// The node's configuration (`concord.toml`): federation, member id, endpoints, limits.
    pub cfg: NodeConfig,
    /// The node folder: configuration, keys, state database.
    pub dir: NodeDir,
    /// This member's keys in use: replaced whole when a charter version rotates them.
    keys: std::sync::RwLock<Arc<Keys>>,
    /// The certificate the peer listener presents, replaced with the keys.
    pub server_cert: Arc<crate::net::tls::ServerCert>,
    /// This member's transparency log.
    pub log: Log,
    /// The state database: dataset registry, charter versions, access requests and grants,
    /// privacy budgets, governance acts, request ids and kept notes.
    pub state: State,
    /// The current charter version: replaced whole when a new version is adopted.
    charter: std::sync::RwLock<Arc<SignedCharter>>,
    /// (pin, member id) of every member but this node, as the current version says.
    pub pins: crate::net::tls::Pins,
    /// Reloaded when the registry's generation changes: a dataset added or a policy set by
    /// another process takes effect at the next request.
    datasets: tokio::sync::RwLock<Arc<Datasets>>,
    /// Owner sub-queries running at once (peers' and this member's own parts).
    pub subquery_slots: tokio::sync::Semaphore,
    /// Analysts' queries running at once.
    pub query_slots: tokio::sync::Semaphore,
    /// Catalogs of other members, per member and charter version, with when they were read.
    pub catalogs: requester::CatalogCache,
    /// Requests each member may send to the peer listener.
    pub peer_rate: RateLimiter,
    /// Log reads (tiles, checkpoints) each member may make, at ten times the request rate.
    pub read_rate: RateLimiter,
    /// The proposals and votes on the current charter version (built on first use).
    round: Mutex<Option<concord_charter::governance::Round>>,
    /// Members that signed their own exit: refused from the next connection, before the
    /// version without them is adopted.
    pub(crate) exiting: Mutex<std::collections::BTreeSet<String>>,
    /// Sub-queries that passed the check round, by requester and request id, until their run
    /// takes them (or their reservation's time ends): the run does not decide them again.
    pub(crate) checked: owner::CheckedRequests,
    /// Counters for `GET /metrics`.
    pub metrics: metrics::Metrics,
}

impl Node {
    /// Loads a node folder; it must hold an accepted charter that names this member with this
    /// node's keys.
    pub async fn open(dir: &NodeDir) -> Result<Self, NodeError> {
        let cfg = dir.load_config()?;
        let state = dir.open_state()?;
        let charter = accepted_charter(dir, &state)?;
        let me = named_member(dir, &charter, &cfg)?;
        // A rotation this version made (or one interrupted halfway): the pending keys it lists
        // take over, logged first.
        let log = dir.open_log()?;
        if crate::store::config::rotation_listed(dir, me)? {
            log.append(crate::store::entry::LogEntry::keys_set(me).to_bytes()?).await?;
            crate::store::config::finish_rotation(dir, me)?;
            tracing::info!(member = %cfg.member, version = charter.charter.version, "rotated keys taken into use");
        }
        let signer = dir.load_signer(&cfg)?;
        let witness = dir.load_witness(&cfg)?;
        let tls = dir.load_tls()?;
        let keys = Keys { signer, witness, tls };
        check_listed_keys(&charter, &cfg, me, &keys)?;
        let pins = peer_pins(&charter, &cfg);
        let timeout = std::time::Duration::from_secs(cfg.limits.subquery_timeout_secs);
        let datasets = load_datasets(&charter, &state, &Datasets::default(), timeout).await?;
        let slots = cfg.limits.max_concurrent_queries;
        let limits = cfg.limits.clone();
        let node = Self {
            cfg,
            dir: dir.clone(),
            server_cert: Arc::new(crate::net::tls::ServerCert::new(&keys.tls)?),
            keys: std::sync::RwLock::new(Arc::new(keys)),
            log,
            state,
            charter: std::sync::RwLock::new(Arc::new(charter)),
            pins: crate::net::tls::Pins::new(pins),
            datasets: tokio::sync::RwLock::new(Arc::new(datasets)),
            subquery_slots: tokio::sync::Semaphore::new(slots),
            checked: owner::CheckedRequests::default(),
            metrics: metrics::Metrics::default(),
            query_slots: tokio::sync::Semaphore::new(slots),
            catalogs: requester::CatalogCache::default(),
            peer_rate: RateLimiter::new(limits.peer_requests_per_sec, limits.peer_burst),
            read_rate: RateLimiter::new(
                limits.peer_requests_per_sec.saturating_mul(10),
                limits.peer_burst.saturating_mul(10),
            ),
            round: Mutex::new(None),
            exiting: Mutex::new(std::collections::BTreeSet::new()),
        };
        node.restore_governance()?;
        Ok(node)
    }

    /// The federation's name, as the node's configuration gives it.
    pub fn federation(&self) -> &str {
        &self.cfg.federation
    }

    /// This member's keys in use.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The current charter version.
    pub fn charter(&self) -> Arc<SignedCharter> {
        self.charter.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Adopts the version after the current one, at once and without a restart: verified from
    /// the current version (the threshold of its members' signatures over a body that names its
    /// digest), stored, logged, and put in place for every request that starts after it
    /// (members, TLS pins, schemas, baseline, witness quorum).
    ///
    /// Invariant: the node's charter changes only here, one version at a time, each verified
    /// from the one before.
    pub async fn adopt(&self, next: SignedCharter) -> Result<(), NodeError> {
        let signers = {
            let mut current = self.charter.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            next.verify_successor(&current.charter)?;
            self.state.store_charter(next.charter.version, &next.to_bytes())?;
            let signers = next.signed_by_members_of(&current.charter);
            *current = Arc::new(next);
            signers
        };
        self.metrics.governance(metrics::GovernanceEvent::Adoption);
        // The round of the new version, and the exits open on it (none yet: the exits on the
        // version before are done or dead with it).
        self.restore_governance()?;
        let c = self.charter();
        match c.charter.member(&self.cfg.member) {
            None => tracing::warn!(
                version = c.charter.version,
                "charter version {} does not name this member: it is out of the federation, and every member refuses it from now",
                c.charter.version
            ),
            Some(me)
                if me.vkey != self.keys().signer.vkey()
                    || me.tls_pin != self.keys().tls.pin
                    || me.witness_vkey != self.keys().witness.verifier().to_vkey() =>
            {
                self.take_rotated_keys(me, c.charter.version).await?
            }
            Some(me) if me.peer_endpoint != self.cfg.peer_endpoint => tracing::warn!(
                version = c.charter.version,
                "charter version {} moves this member's peer endpoint to {}; members dial it there from now",
                c.charter.version,
                me.peer_endpoint
            ),
            Some(_) => {}
        }
        let entry = crate::store::entry::LogEntry::CharterAccepted {
            time: crate::store::entry::now(),
            version: c.charter.version,
            digest: c.charter.digest(),
            signers,
        };
        self.log.append(entry.to_bytes()?).await?;
        Ok(())
    }

    /// A version that lists other keys for this member: the pending keys of `concord keys
    /// rotate`, if they are the ones it lists, take over at once (signing, witnessing, both
    /// sides of TLS). Without them the node goes on with keys the members now refuse, and says
    /// so.
    async fn take_rotated_keys(
        &self,
        me: &concord_charter::MemberCard,
        version: u64,
    ) -> Result<(), NodeError> {
        let listed = match crate::store::config::rotation_listed(&self.dir, me) {
            Ok(true) => {
                // Logged before the files move: a crash in between is finished at the next start.
                self.log.append(crate::store::entry::LogEntry::keys_set(me).to_bytes()?).await?;
                Ok(true)
            }
            other => other,
        };
        let taken = listed.and_then(|listed| {
            if !listed {
                return Ok(false);
            }
            crate::store::config::finish_rotation(&self.dir, me)?;
            let keys = Keys {
                signer: self.dir.load_signer(&self.cfg)?,
                witness: self.dir.load_witness(&self.cfg)?,
                tls: self.dir.load_tls()?,
            };
            self.server_cert.set(&keys.tls)?;
            *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
            Ok(true)
        });
        match taken {
            Ok(true) => tracing::info!(
                version,
                "charter version {version} rotates this member's keys: the new keys are in use"
            ),
            Ok(false) => tracing::warn!(
                version,
                "charter version {version} lists other keys for this member than this node holds, and no pending rotation matches them; members refuse this node's keys from now"
            ),
            Err(e) => tracing::error!(
                version,
                "charter version {version} rotates this member's keys, which could not be taken into use: {e}"
            ),
        }
        Ok(())
    }

    /// The TLS pins of the current members but this node and those leaving.
    pub(crate) fn refresh_pins(&self) {
        let exiting = self.exiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        self.pins.set(
            self.charter()
                .charter
                .members
                .iter()
                .filter(|m| m.id != self.cfg.member && !exiting.contains(&m.id))
                .map(|m| (m.tls_pin.clone(), m.id.clone()))
                .collect(),
        );
    }

    /// The number of the charter version in force.
    pub fn charter_version(&self) -> u64 {
        self.charter().charter.version
    }

    /// The charter's baseline rules.
    pub fn baseline(&self) -> Baseline {
        baseline_of(&self.charter().charter)
    }

    /// The datasets as the registry holds them now.
    pub async fn datasets(&self) -> Result<Arc<Datasets>, NodeError> {
        let generation = self.state.datasets_generation()?;
        {
            let d = self.datasets.read().await;
            if d.generation == generation {
                return Ok(d.clone());
            }
        }
        let mut w = self.datasets.write().await;
        if w.generation != generation {
            let timeout = std::time::Duration::from_secs(self.cfg.limits.subquery_timeout_secs);
            *w = Arc::new(load_datasets(&self.charter(), &self.state, &w, timeout).await?);
            tracing::info!(generation = w.generation, datasets = w.map.len(), "dataset registry reloaded");
        }
        Ok(w.clone())
    }

    /// Datasets whose policy lets `requester` see them, as its catalog shows them; whether
    /// each is released to a query without a purpose (and under which purposes its grants admit
    /// it); and the shared schemas where datasets are hidden from it.
    pub async fn catalog_for(&self, requester: &str) -> Result<Catalog, NodeError> {
        let charter = self.charter();
        let baseline = baseline_of(&charter.charter);
        let now = chrono::Utc::now().timestamp();
        let mut out = Catalog::default();
        for d in self.datasets().await?.map.values() {
            let name = &d.record.name;
            let decide = |purpose: &str, action: Action| -> Result<concord_policy::Decision, NodeError> {
                let ctx = AccessContext {
                    requester: requester.to_owned(),
                    purpose: purpose.to_owned(),
                    grants: self.state.live_grants(requester, name, now, Some(purpose))?,
                    charter_version: charter.charter.version,
                };
                Ok(d.policy.decide(&self.cfg.member, name, action, &ctx, &baseline))
            };
            if !decide("", Action::Describe)?.is_allowed() {
                if let Some(s) = &d.record.shared_schema
                    && !out.hidden_in.contains(s)
                {
                    out.hidden_in.push(s.clone());
                }
                continue;
            }
            out.datasets.push(self.catalog_entry(&charter.charter, d, requester, now, decide)?);
        }
        Ok(out)
    }

    /// A dataset `requester` may see, as its catalog shows it: why it is withheld, and under which purposes.
    fn catalog_entry(
        &self,
        charter: &concord_charter::Charter,
        d: &LoadedDataset,
        requester: &str,
        now: i64,
        decide: impl Fn(&str, Action) -> Result<concord_policy::Decision, NodeError>,
    ) -> Result<CatalogEntry, NodeError> {
        let name = &d.record.name;
        // The owner's own analysts are bound by no rule; others only by a policy in force.
        let in_force = if requester == self.cfg.member { Ok(()) } else { policy_in_force(charter, d) };
        let usable = in_force.is_ok();
        let withheld = match (decide("", Action::Aggregate)?, in_force) {
            (_, Err(e)) => Some(format!("its policy is not in force: {e}")),
            (concord_policy::Decision::Allow { .. }, Ok(())) => None,
            (concord_policy::Decision::Deny { reason }, Ok(())) => Some(reason),
        };
        let mut purposes = Vec::new();
        if withheld.is_some() && usable {
            for p in self.state.grant_purposes(requester, name, now)? {
                if decide(&p, Action::Aggregate)?.is_allowed() {
                    purposes.push(p);
                }
            }
        }
        Ok(CatalogEntry {
            name: name.clone(),
            shared_schema: d.record.shared_schema.clone(),
            schema_ipc: B64.encode(&d.record.schema_ipc),
            withheld,
            private: d.policy.release.privacy.is_some(),
            purposes,
        })
    }
}

/// The latest charter version a node folder holds; a node cannot start without one.
fn accepted_charter(dir: &NodeDir, state: &State) -> Result<SignedCharter, NodeError> {
    let bytes = state.latest_charter()?.ok_or_else(|| {
        NodeError::Config(format!(
            "{} has no charter yet; sign the genesis charter with every founder, then run `concord charter accept {} FILE`",
            dir.root.display(),
            dir.root.display()
        ))
    })?;
    Ok(SignedCharter::parse(&bytes)?)
}

/// This member's card in `charter`; a version that does not name it is one the member left.
fn named_member<'a>(
    dir: &NodeDir,
    charter: &'a SignedCharter,
    cfg: &NodeConfig,
) -> Result<&'a concord_charter::MemberCard, NodeError> {
    charter.charter.member(&cfg.member).ok_or_else(|| {
        NodeError::Config(format!(
            "charter version {} of federation {} does not name member {}: it left or was removed, and this node no longer takes part. Its log and state stay in {} for audits",
            charter.charter.version,
            charter.charter.federation,
            cfg.member,
            dir.root.display()
        ))
    })
}

/// Refuses to start with keys other than those `charter` lists for this member.
fn check_listed_keys(
    charter: &SignedCharter,
    cfg: &NodeConfig,
    me: &concord_charter::MemberCard,
    keys: &Keys,
) -> Result<(), NodeError> {
    let Keys { signer, witness, tls } = keys;
    if me.vkey != signer.vkey() || me.tls_pin != tls.pin || me.witness_vkey != witness.verifier().to_vkey() {
        return Err(NodeError::Config(format!(
            "charter version {} lists other keys for {} than this node holds; a key change needs a new charter version (`concord keys rotate`, then a `--rotate-key` proposal)",
            charter.charter.version, cfg.member
        )));
    }
    Ok(())
}

/// (pin, member id) of every member `charter` lists but this node.
fn peer_pins(charter: &SignedCharter, cfg: &NodeConfig) -> crate::net::tls::PinList {
    charter
        .charter
        .members
        .iter()
        .filter(|m| m.id != cfg.member)
        .map(|m| (m.tls_pin.clone(), m.id.clone()))
        .collect()
}

/// What a shared schema says of the people its data describes, as policies are checked
/// against it.
pub fn personal_schema(s: &concord_charter::SharedSchema) -> concord_policy::PersonalSchema {
    concord_policy::PersonalSchema {
        name: s.name.clone(),
        columns: s.personal_columns(),
        privacy_unit: s.privacy_unit.clone(),
    }
}

/// Whether a dataset's policy keeps the charter's baseline and its shared schema's protection
/// of personal data, as the charter is now; the error names the rule.
pub fn policy_in_force(
    charter: &concord_charter::Charter,
    d: &LoadedDataset,
) -> Result<(), concord_policy::PolicyError> {
    d.policy.check_baseline(&baseline_of(charter))?;
    if let Some(s) = d.record.shared_schema.as_deref().and_then(|s| charter.schema(s)) {
        d.policy.check_schema(&personal_schema(s))?;
    }
    Ok(())
}

/// The baseline rules a charter version sets for every dataset's policy.
pub fn baseline_of(c: &concord_charter::Charter) -> Baseline {
    use concord_policy::Classification;
    Baseline {
        min_group_size: c.min_group_size,
        cross_borders: match c.cross_borders {
            concord_charter::CrossBorders::Public => Classification::Public,
            concord_charter::CrossBorders::General => Classification::General,
            concord_charter::CrossBorders::Important => Classification::Important,
        },
    }
}

/// Loads the registry; datasets whose record did not change since `previous` are kept as they
/// were loaded.
async fn load_datasets(
    charter: &SignedCharter,
    state: &State,
    previous: &Datasets,
    timeout: std::time::Duration,
) -> Result<Datasets, NodeError> {
    let generation = state.datasets_generation()?;
    let mut map = BTreeMap::new();
    for record in state.datasets()? {
        if let Some(old) = previous.map.get(&record.name)
            && old.record.policy == record.policy
            && old.record.path == record.path
            && old.record.postgres == record.postgres
            && old.record.ballista == record.ballista
            && old.record.schema_ipc == record.schema_ipc
            && old.record.added_at == record.added_at
        {
            map.insert(record.name.clone(), old.clone());
            continue;
        }
        let policy = match stored_policy(&record) {
            Ok(p) => p,
            Err(e) => {
                // A policy that no longer parses admits nobody; the owner's stewards are told.
                tracing::warn!(dataset = %record.name, "policy unreadable, dataset closed to peers: {e}");
                Policy::default_for(&[], &AllowList::Nobody)?
            }
        };
        let table = load_table(charter, &record, timeout).await.map_err(|e| e.to_string());
        if let Err(why) = &table {
            tracing::warn!(dataset = %record.name, "dataset unavailable: {why}");
        }
        let loaded = LoadedDataset { record, policy: Arc::new(policy), table, unit_rows: Mutex::new(None) };
        // Refused at every request too: the charter may change while the node runs.
        if let Err(e) = policy_in_force(&charter.charter, &loaded) {
            tracing::error!(dataset = %loaded.record.name, "dataset not served to other members: {e}");
        }
        map.insert(loaded.record.name.clone(), Arc::new(loaded));
    }
    Ok(Datasets { generation, map })
}

async fn load_table(
    charter: &SignedCharter,
    r: &DatasetRecord,
    timeout: std::time::Duration,
) -> Result<Arc<dyn TableProvider>, NodeError> {
    if r.format == DatasetFormat::Postgres {
        let source = r.postgres.as_ref().ok_or_else(|| {
            NodeError::Config(format!(
                "dataset {} is in PostgreSQL but its registry row names no database",
                r.name
            ))
        })?;
        let password = source.password.as_ref().map(|c| admin::read_password(c, &r.name)).transpose()?;
        let schema = concord_query::ipc::decode_schema(&r.schema_ipc)?;
        return Ok(concord_source::postgres::table(source, password, schema, timeout)?);
    }
    let shared = match &r.shared_schema {
        Some(s) => Some(charter.charter.schema(s).ok_or_else(|| {
            NodeError::Config(format!("dataset {} conforms to {s}, which the charter no longer has", r.name))
        })?),
        None => None,
    };
    if r.format == DatasetFormat::Ballista {
        let cluster = r.ballista.as_ref().ok_or_else(|| {
            NodeError::Config(format!(
                "dataset {} is on a Ballista cluster but its registry row names no scheduler",
                r.name
            ))
        })?;
        return Ok(concord_source::ballista::table(&r.name, cluster, &r.path, shared, timeout).await?);
    }
    let format = DatasetFormat::of_path(&r.path)?;
    Ok(dataset::open(&r.name, &r.path, format, shared, &r.csv).await?)
}

/// Per-member token buckets: `rate` requests a second sustained, `burst` at once. What they
/// refuse is counted here, in memory, and logged with the other counted refusals: a refusal
/// costs no disk write.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    refused: Mutex<HashMap<String, u64>>,
}

impl RateLimiter {
    /// A limiter of `rate` requests a second sustained and `burst` at once, per member; a
    /// member's bucket starts full.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token of `member`'s bucket; when it is empty, the refusal is counted and the
    /// answer is how long until the bucket holds a token again.
    pub fn admit(&self, member: &str) -> Result<(), std::time::Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (tokens, at) = b.entry(member.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = std::time::Duration::from_secs_f64(((1.0 - *tokens) / self.rate).max(0.001));
        let mut r = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *r.entry(member.to_owned()).or_insert(0) += 1;
        Err(wait)
    }

    /// The refusals counted since the last call, per member.
    pub fn take_refused(&self) -> Vec<(String, u64)> {
        let mut r = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.drain().collect()
    }
}
