//! Offline operations on a node folder: charter genesis, signing and acceptance, dataset
//! registration, tokens. None of them needs the node to be running.

use std::path::{Path, PathBuf};

use concord_charter::{Charter, MemberCard, SharedSchema, SignedCharter, check_identifier};
use concord_policy::{AllowList, PersonalSchema, Policy};
use concord_query::dataset::{self, CsvOptions, DatasetFormat};
use concord_source::ballista::BallistaSource;
use concord_source::postgres::{Credential, Password, PostgresSource};
use datafusion::catalog::TableProvider as _;

use sha2::{Digest, Sha256};

use crate::NodeError;
use crate::store::config::{NodeDir, replace_file};
use crate::store::entry::{LogEntry, now};
use crate::store::state::{DatasetRecord, now_rfc3339};
use crate::wire::Role;

fn read(path: &Path) -> Result<Vec<u8>, NodeError> {
    std::fs::read(path).map_err(|e| NodeError::io(path, e))
}

/// Builds genesis (version 1) from member cards and shared-schema files and writes it unsigned.
pub fn charter_genesis(
    federation: &str,
    cards: &[PathBuf],
    schemas: &[PathBuf],
    out: &Path,
) -> Result<Charter, NodeError> {
    let cards = cards
        .iter()
        .map(|p| {
            serde_json::from_slice::<MemberCard>(&read(p)?).map_err(|source| NodeError::Decode {
                what: format!("{} as a member card", p.display()),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let schemas = schemas
        .iter()
        .map(|p| {
            serde_json::from_slice::<SharedSchema>(&read(p)?).map_err(|e| {
                NodeError::Config(format!(
                    "{} is not a shared schema ({{\"name\", \"columns\": [{{\"name\", \"type\", \"personal\"}}]}}): {e}",
                    p.display()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    write_genesis(federation, cards, schemas, out)
}

/// Writes genesis (version 1), unsigned, to `out`.
pub fn write_genesis(
    federation: &str,
    cards: Vec<MemberCard>,
    schemas: Vec<SharedSchema>,
    out: &Path,
) -> Result<Charter, NodeError> {
    for s in &schemas {
        dataset::check_types(s)?;
    }
    let charter = Charter::genesis(federation, cards, schemas)?;
    replace_file(out, charter.to_text().as_bytes())?;
    Ok(charter)
}

/// Adds this member's signature to a charter file. Returns who has signed it so far.
pub fn charter_sign(dir: &NodeDir, file: &Path) -> Result<Vec<String>, NodeError> {
    let cfg = dir.load_config()?;
    let signer = dir.load_signer(&cfg)?;
    let mut sc = SignedCharter::parse(&read(file)?)?;
    let me = sc.charter.member(&cfg.member).ok_or_else(|| {
        NodeError::Config(format!(
            "{} does not name member {}; only its members sign it",
            file.display(),
            cfg.member
        ))
    })?;
    if me.vkey != signer.vkey() {
        return Err(NodeError::Config(format!(
            "{} lists another key for {} than this node holds",
            file.display(),
            cfg.member
        )));
    }
    sc.note.sign(&signer);
    let signed = sc.signed_by()?;
    replace_file(file, &sc.to_bytes())?;
    Ok(signed)
}

/// Verifies a charter file and makes it this node's charter.
pub fn charter_accept(dir: &NodeDir, file: &Path) -> Result<SignedCharter, NodeError> {
    let cfg = dir.load_config()?;
    let signer = dir.load_signer(&cfg)?;
    let tls = crate::net::tls::TlsKeys::load(&dir.tls_cert(), &dir.tls_key())?;
    let sc = SignedCharter::parse(&read(file)?)?;
    let state = dir.open_state()?;
    match state.latest_charter()? {
        None => sc.verify_genesis()?,
        Some(bytes) => {
            let current = SignedCharter::parse(&bytes)?;
            if current.charter.version >= sc.charter.version {
                return Err(NodeError::Config(format!(
                    "this node already has charter version {}; nothing older or equal is accepted",
                    current.charter.version
                )));
            }
            sc.verify_successor(&current.charter)?;
        }
    }
    if sc.charter.federation != cfg.federation {
        return Err(NodeError::Config(format!(
            "the charter is for federation {}, this node belongs to {}",
            sc.charter.federation, cfg.federation
        )));
    }
    let me = sc
        .charter
        .member(&cfg.member)
        .ok_or_else(|| NodeError::Config(format!("the charter does not name member {}", cfg.member)))?;
    if me.vkey != signer.vkey() || me.tls_pin != tls.pin {
        return Err(NodeError::Config(format!(
            "the charter lists other keys for {} than this node holds",
            cfg.member
        )));
    }
    state.store_charter(sc.charter.version, &sc.to_bytes())?;
    let entry = LogEntry::CharterAccepted {
        time: now(),
        version: sc.charter.version,
        digest: sc.charter.digest(),
        signers: sc.signed_by()?,
    };
    dir.open_log()?.append_blocking(entry.to_bytes()?)?;
    Ok(sc)
}

fn current_charter(dir: &NodeDir) -> Result<Option<SignedCharter>, NodeError> {
    match dir.open_state()?.latest_charter()? {
        Some(b) => Ok(Some(SignedCharter::parse(&b)?)),
        None => Ok(None),
    }
}

/// Registers a new dataset by reference: its file stays where it is. A dataset of the same name
/// is not replaced: that is [`dataset_replace`].
pub async fn dataset_add(
    dir: &NodeDir,
    name: &str,
    file: &Path,
    shared_schema: Option<&str>,
    allow: Option<&str>,
) -> Result<DatasetRecord, NodeError> {
    let spec = DatasetSpec {
        name,
        file,
        shared_schema,
        allow,
        csv: CsvOptions::default(),
        postgres: None,
        ballista: None,
    };
    Ok(dataset_register(dir, &spec, false).await?.record)
}

/// What `concord dataset add` registers.
#[derive(Clone, Debug)]
pub struct DatasetSpec<'a> {
    /// The dataset's name, an identifier; other members see it as `member.name`.
    pub name: &'a str,
    /// The data file (`.csv` or `.parquet`), referenced where it is, never copied.
    pub file: &'a Path,
    /// The charter's shared schema the dataset conforms to, if any.
    pub shared_schema: Option<&'a str>,
    /// `--allow`: whom a new dataset's first policy admits (`*` for every member, or member ids,
    /// comma-separated); refused for a replacement, which keeps its policy.
    pub allow: Option<&'a str>,
    /// How a CSV file is read; left at the defaults, a replacement reads it as before.
    pub csv: CsvOptions,
    /// A table of the member's PostgreSQL database instead of a file (`file` is then empty):
    /// the owner's plans run there.
    pub postgres: Option<PostgresSource>,
    /// The member's Ballista cluster, whose executors read `file` (Parquet files, or a
    /// directory of them): the owner's plans run there.
    pub ballista: Option<BallistaSource>,
}

/// A dataset registered: the record, what a replacement changed, and the file's columns left
/// out (each with its type and why).
#[derive(Clone, Debug)]
pub struct Registered {
    /// The record stored in the registry.
    pub record: DatasetRecord,
    /// For a replacement, what changed, in words; empty for a new dataset.
    pub changes: Vec<String>,
    /// The file's columns left out of the dataset, each with its type and why.
    pub left_out: Vec<String>,
    /// What the operator should know: other datasets of this node in the same shared schema.
    pub notes: Vec<String>,
}

/// Registers a dataset, or with `replace` replaces one (then `changes` says what changed).
pub async fn dataset_register(
    dir: &NodeDir,
    spec: &DatasetSpec<'_>,
    replace: bool,
) -> Result<Registered, NodeError> {
    register(dir, spec, replace).await
}

/// Replaces a registered dataset; returns it and what changed (file, rows, columns, schema,
/// policy). Without `allow`, the steward's policy stays.
pub async fn dataset_replace(
    dir: &NodeDir,
    name: &str,
    file: &Path,
    shared_schema: Option<&str>,
    allow: Option<&str>,
) -> Result<(DatasetRecord, Vec<String>), NodeError> {
    let spec = DatasetSpec {
        name,
        file,
        shared_schema,
        allow,
        csv: CsvOptions::default(),
        postgres: None,
        ballista: None,
    };
    let r = register(dir, &spec, true).await?;
    Ok((r.record, r.changes))
}

/// Removes a dataset from the registry (its file stays); logged. A running node stops serving
/// it at the next request.
pub async fn dataset_remove(dir: &NodeDir, name: &str) -> Result<DatasetRecord, NodeError> {
    dir.load_config()?;
    let state = dir.open_state()?;
    let record = state.datasets()?.into_iter().find(|d| d.name == name).ok_or_else(|| {
        NodeError::NotFound(format!(
            "{} has no dataset {name}; `concord dataset list` shows them",
            dir.root.display()
        ))
    })?;
    let entry = LogEntry::DatasetRemoved { time: now(), name: name.to_owned() };
    dir.open_log()?.append_blocking(entry.to_bytes()?)?;
    state.remove_dataset(name)?;
    Ok(record)
}

/// Registers a dataset, or with `replace` replaces one: the checks, the file (or the
/// PostgreSQL table) opened and read, its policy settled, then the record stored and logged.
async fn register(dir: &NodeDir, spec: &DatasetSpec<'_>, replace: bool) -> Result<Registered, NodeError> {
    let DatasetSpec { name, shared_schema, allow, .. } = *spec;
    let cfg = dir.load_config()?;
    check_identifier("dataset name", name)?;
    let old = dir.open_state()?.datasets()?.into_iter().find(|d| d.name == name);
    check_replacement(name, old.as_ref(), replace)?;
    let charter = current_charter(dir)?;
    let shared = shared_schema_of(charter.as_ref(), shared_schema)?;
    let allow_list = allow_list_for(name, old.as_ref(), allow, charter.as_ref())?;
    let timeout = std::time::Duration::from_secs(cfg.limits.subquery_timeout_secs.max(60));
    let read = match (&spec.postgres, &spec.ballista) {
        (Some(pg), _) => read_postgres(name, pg, shared.as_ref(), timeout).await?,
        (None, Some(cluster)) => read_ballista(name, spec.file, cluster, shared.as_ref(), timeout).await?,
        (None, None) => read_file(name, spec, old.as_ref(), shared.as_ref()).await?,
    };
    let columns: Vec<String> = read.schema.fields().iter().map(|f| f.name().clone()).collect();
    let personal = shared.as_ref().map(super::personal_schema).filter(PersonalSchema::is_personal);
    let mut notes = Vec::new();
    let policy = match (&old, &personal) {
        (Some(o), _) => kept_policy(name, o, personal.as_ref())?,
        (None, Some(p)) => derived_policy(name, &columns, p, charter.as_ref(), &allow_list, &mut notes)?,
        (None, None) => Policy::default_for(&columns, &allow_list)?,
    };
    let record = DatasetRecord {
        name: name.to_owned(),
        path: read.path,
        format: read.format,
        shared_schema: shared.map(|s| s.name),
        schema_ipc: concord_query::ipc::encode_schema(&read.schema)?,
        policy: policy.source.clone(),
        rows: read.rows,
        added_at: now_rfc3339(),
        csv: read.csv,
        postgres: read.postgres,
        ballista: read.ballista,
    };
    let changes = match &old {
        Some(o) => changes_of(o, &record)?,
        None => Vec::new(),
    };
    store_registered(dir, &record, &policy)?;
    note_schema_siblings(dir, &record, &mut notes)?;
    Ok(Registered { record, changes, left_out: read.left_out, notes })
}

/// What registration read of a dataset's rows.
struct Read {
    format: DatasetFormat,
    /// The file's canonical path; empty for a table in PostgreSQL.
    path: PathBuf,
    csv: CsvOptions,
    schema: arrow::datatypes::SchemaRef,
    left_out: Vec<String>,
    rows: u64,
    postgres: Option<PostgresSource>,
    ballista: Option<BallistaSource>,
}

/// A data file opened and read once through, so that one that cannot be parsed with its schema
/// is found now and not at a peer's first query.
async fn read_file(
    name: &str,
    spec: &DatasetSpec<'_>,
    old: Option<&DatasetRecord>,
    shared: Option<&SharedSchema>,
) -> Result<Read, NodeError> {
    let format = DatasetFormat::of_path(spec.file)?;
    let mut csv = spec.csv.clone();
    // A replacement keeps how the old CSV was read unless options are given, like its policy.
    if let Some(o) = old
        && format == DatasetFormat::Csv
        && csv.is_default()
    {
        csv = o.csv.clone();
    }
    let path = canonical_path(name, spec.file)?;
    let table = dataset::open(name, &path, format, shared, &csv).await?;
    let left_out = table.left_out().to_vec();
    let schema = table.schema();
    let rows = dataset::scan_all(name, &path, table).await?;
    Ok(Read { format, path, csv, schema, left_out, rows, postgres: None, ballista: None })
}

/// A PostgreSQL table described: its columns from the catalog, its rows counted there. The
/// registry keeps the table's qualified name and where the password is, never the password.
async fn read_postgres(
    name: &str,
    pg: &PostgresSource,
    shared: Option<&SharedSchema>,
    timeout: std::time::Duration,
) -> Result<Read, NodeError> {
    let password = pg.password.as_ref().map(|c| read_password(c, name)).transpose()?;
    let found = concord_source::postgres::describe(name, pg, password, shared, timeout).await?;
    let postgres = PostgresSource { table: found.relation, ..pg.clone() };
    Ok(Read {
        format: DatasetFormat::Postgres,
        path: PathBuf::new(),
        csv: CsvOptions::default(),
        schema: found.schema,
        left_out: found.left_out,
        rows: found.rows,
        postgres: Some(postgres),
        ballista: None,
    })
}

/// Parquet files on a Ballista cluster described: their columns from the footers (read by the
/// node), their rows counted by the cluster, which thus shows it reads them.
async fn read_ballista(
    name: &str,
    file: &Path,
    cluster: &BallistaSource,
    shared: Option<&SharedSchema>,
    timeout: std::time::Duration,
) -> Result<Read, NodeError> {
    let path = canonical_path(name, file)?;
    let found = concord_source::ballista::describe(name, cluster, &path, shared, timeout).await?;
    Ok(Read {
        format: DatasetFormat::Ballista,
        path,
        csv: CsvOptions::default(),
        schema: found.schema,
        left_out: found.left_out,
        rows: found.rows,
        postgres: None,
        ballista: Some(cluster.clone()),
    })
}

/// The password of `dataset`'s database from where the registry says it is: an environment
/// variable of this process, or a file only its owner can read.
pub fn read_password(c: &Credential, dataset: &str) -> Result<Password, NodeError> {
    match c {
        Credential::Env(var) => std::env::var(var).map(Password::new).map_err(|_| {
            NodeError::Config(format!(
                "environment variable {var} is not set (or not UTF-8); it holds the password of dataset {dataset}'s \
                 PostgreSQL database: set it in the node's environment"
            ))
        }),
        Credential::File(path) => {
            use std::io::Read as _;
            use std::os::unix::fs::MetadataExt as _;
            // The mode is checked on the handle the password is read from: no window between the
            // check and the read for the file to be replaced.
            let file = std::fs::File::open(path).map_err(|e| NodeError::io(path, e))?;
            let meta = file.metadata().map_err(|e| NodeError::io(path, e))?;
            if meta.mode() & 0o077 != 0 {
                return Err(NodeError::Config(format!(
                    "{} holds dataset {dataset}'s PostgreSQL password but others may read it (mode {:o}); \
                     make it private: chmod 600 {}",
                    path.display(),
                    meta.mode() & 0o777,
                    path.display()
                )));
            }
            if !meta.is_file() {
                return Err(NodeError::Config(format!(
                    "{} is not a file; --password-file takes a file (mode 0600) whose first line is dataset {dataset}'s \
                     PostgreSQL password",
                    path.display()
                )));
            }
            let mut text = String::new();
            // A password file is a line; more than 64 KiB is not one.
            file.take(64 * 1024).read_to_string(&mut text).map_err(|e| NodeError::io(path, e))?;
            let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if line.is_empty() {
                return Err(NodeError::Config(format!(
                    "{} is empty; its first line must be dataset {dataset}'s PostgreSQL password",
                    path.display()
                )));
            }
            Ok(Password::new(line.to_owned()))
        }
    }
}

/// Refuses to add a dataset whose name is taken, or to replace one that does not exist.
fn check_replacement(name: &str, old: Option<&DatasetRecord>, replace: bool) -> Result<(), NodeError> {
    match (old, replace) {
        (Some(o), false) => {
            return Err(NodeError::Conflict(format!(
                "dataset {name} exists already ({}, {} rows); give --replace to replace it (its policy stays unless --allow is given), or `concord dataset remove` it first",
                o.path.display(),
                o.rows
            )));
        }
        (None, true) => {
            return Err(NodeError::NotFound(format!(
                "there is no dataset {name} to replace; add it without --replace"
            )));
        }
        _ => {}
    }
    Ok(())
}

/// The data file's absolute path, with symbolic links resolved; the registry keeps this one.
fn canonical_path(name: &str, file: &Path) -> Result<PathBuf, NodeError> {
    std::fs::canonicalize(file).map_err(|e| {
        NodeError::Query(concord_query::QueryError::Dataset {
            name: name.to_owned(),
            reason: format!("cannot open {}: {e}", file.display()),
        })
    })
}

/// The shared schema a new registration names, as the accepted charter defines it.
fn shared_schema_of(
    charter: Option<&SignedCharter>,
    shared_schema: Option<&str>,
) -> Result<Option<SharedSchema>, NodeError> {
    Ok(match shared_schema {
        None => None,
        Some(s) => {
            let c = charter.ok_or_else(|| {
                NodeError::Config(
                    "no charter accepted yet; accept the genesis charter before naming a shared schema"
                        .into(),
                )
            })?;
            Some(c.charter.schema(s).cloned().ok_or_else(|| {
                let known: Vec<_> = c.charter.schemas.iter().map(|s| s.name.as_str()).collect();
                NodeError::Config(format!(
                    "the charter has no shared schema {s}; it has: {}",
                    known.join(", ")
                ))
            })?)
        }
    })
}

/// The members `--allow` names, each checked against the charter; refused for a replacement.
fn allow_list_for(
    name: &str,
    old: Option<&DatasetRecord>,
    allow: Option<&str>,
    charter: Option<&SignedCharter>,
) -> Result<AllowList, NodeError> {
    // A replacement keeps the policy in force: a new policy comes only from `policy set`, so
    // that a line typed to replace a file never swaps a steward's rules for a default.
    if let (Some(o), Some(_)) = (old, allow) {
        return Err(NodeError::Conflict(format!(
            "--allow gives a new dataset its first policy; {name} keeps its policy (sha256:{}) when replaced. \
             Replace without --allow, and change the policy with `concord policy set`",
            super::stored_policy(o)?.digest()
        )));
    }
    let allow_list = AllowList::parse(allow.unwrap_or(""))?;
    if let (AllowList::Members(ids), Some(c)) = (&allow_list, charter) {
        for id in ids {
            if c.charter.member(id).is_none() {
                let known: Vec<&str> = c.charter.members.iter().map(|m| m.id.as_str()).collect();
                return Err(NodeError::Config(format!(
                    "--allow names {id}, who is not a member of charter version {}; members: {}",
                    c.charter.version,
                    known.join(", ")
                )));
            }
        }
    }
    Ok(allow_list)
}

/// The policy a replaced dataset keeps, which must still protect its shared schema's personal
/// columns.
fn kept_policy(
    name: &str,
    o: &DatasetRecord,
    personal: Option<&PersonalSchema>,
) -> Result<Policy, NodeError> {
    let kept = super::stored_policy(o)?;
    if let Some(p) = personal {
        kept.check_schema(p).map_err(|e| {
            NodeError::Config(format!(
                "{e}. The policy {name} keeps when replaced does not protect {}'s personal columns; set one \
                 that does with `concord policy set` first",
                p.name
            ))
        })?;
    }
    Ok(kept)
}

/// The first policy of a dataset whose shared schema describes people, derived from that
/// schema and the charter's baseline; `notes` tells the operator what it does.
fn derived_policy(
    name: &str,
    columns: &[String],
    p: &PersonalSchema,
    charter: Option<&SignedCharter>,
    allow_list: &AllowList,
    notes: &mut Vec<String>,
) -> Result<Policy, NodeError> {
    let baseline = charter.map(|c| super::baseline_of(&c.charter)).unwrap_or_default();
    let derived = Policy::derived(columns, p, &baseline, allow_list)?;
    notes.push(match &p.privacy_unit {
        Some(u) => format!(
            "shared schema {} describes people: the policy is derived from it (privacy unit {u} hidden; {} \
             aggregate-only; differential privacy, rho {} a query, {} per requester, delta {:e}); --allow names \
             who may use it. `concord policy show` prints it, `concord policy set` replaces it",
            p.name,
            p.columns.iter().filter(|c| Some(*c) != Some(u)).cloned().collect::<Vec<_>>().join(", "),
            concord_policy::DERIVED_COST,
            concord_policy::DERIVED_BUDGET_PER_REQUESTER,
            concord_policy::dp::DEFAULT_DELTA,
        ),
        None => format!(
            "warning: shared schema {} marks {} as personal but names no privacy unit, so no policy can be \
             derived to share them: other members may see that {name} exists, no more. Set a policy with \
             [personal] privacy_unit with `concord policy set`",
            p.name,
            p.columns.join(", ")
        ),
    });
    Ok(derived)
}

/// Stores the registration in the registry, then logs it with its schema's and policy's digests.
fn store_registered(dir: &NodeDir, record: &DatasetRecord, policy: &Policy) -> Result<(), NodeError> {
    dir.open_state()?.put_dataset(record)?;
    let entry = LogEntry::DatasetRegistered {
        time: now(),
        name: record.name.clone(),
        shared_schema: record.shared_schema.clone(),
        schema_sha256: concord_charter::hex(&Sha256::digest(&record.schema_ipc)),
        policy: format!("sha256:{}", policy.digest()),
    };
    dir.open_log()?.append_blocking(entry.to_bytes()?)?;
    Ok(())
}

/// Adds a note when the dataset's shared schema now has several datasets on this node.
fn note_schema_siblings(
    dir: &NodeDir,
    record: &DatasetRecord,
    notes: &mut Vec<String>,
) -> Result<(), NodeError> {
    if let Some(schema) = &record.shared_schema {
        let together: Vec<String> = dir
            .open_state()?
            .datasets()?
            .into_iter()
            .filter(|d| d.shared_schema.as_deref() == Some(schema.as_str()))
            .map(|d| d.name)
            .collect();
        if together.len() > 1 {
            notes.push(format!(
                "shared schema {schema} now has {} datasets on this node ({}); a query over {schema} reads them all, each named in the provenance",
                together.len(),
                together.join(", ")
            ));
        }
    }
    Ok(())
}

/// What a replacement changes, in words.
fn changes_of(old: &DatasetRecord, new: &DatasetRecord) -> Result<Vec<String>, NodeError> {
    let mut out = Vec::new();
    if old.path != new.path || old.postgres != new.postgres || old.ballista != new.ballista {
        out.push(format!("{} -> {}", old.location(), new.location()));
    }
    if old.rows != new.rows {
        out.push(format!("rows {} -> {}", old.rows, new.rows));
    }
    let (a, b) = (super::dataset_columns(old)?, super::dataset_columns(new)?);
    let gone: Vec<&String> = a.iter().filter(|c| !b.contains(c)).collect();
    let added: Vec<&String> = b.iter().filter(|c| !a.contains(c)).collect();
    if !gone.is_empty() {
        out.push(format!(
            "columns removed: {}",
            gone.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if !added.is_empty() {
        out.push(format!(
            "columns added: {}",
            added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if old.csv != new.csv {
        let words = |c: &CsvOptions| match c.describe() {
            d if d.is_empty() => "defaults".to_string(),
            d => d.join(", "),
        };
        out.push(format!("CSV options {} -> {}", words(&old.csv), words(&new.csv)));
    }
    if old.shared_schema != new.shared_schema {
        out.push(format!(
            "shared schema {} -> {}",
            old.shared_schema.as_deref().unwrap_or("none"),
            new.shared_schema.as_deref().unwrap_or("none")
        ));
    }
    if out.is_empty() {
        out.push("nothing: same file, rows, columns, schema and policy".into());
    }
    // Invariant: a replacement never changes the policy.
    out.push(format!(
        "policy kept (sha256:{}); change it with `concord policy set`",
        concord_charter::hex(&Sha256::digest(new.policy.as_bytes()))
    ));
    Ok(out)
}

/// Reads and checks a policy file for a dataset of this node: syntax, Cedar, columns, the
/// charter's baseline, member ids.
pub fn policy_check_for(
    dir: &NodeDir,
    dataset: &str,
    file: &Path,
) -> Result<(Policy, DatasetRecord), NodeError> {
    dir.load_config()?;
    let text = std::fs::read_to_string(file).map_err(|e| NodeError::io(file, e))?;
    let policy = Policy::parse(&text, &file.display().to_string())?;
    let state = dir.open_state()?;
    let record = state.datasets()?.into_iter().find(|d| d.name == dataset).ok_or_else(|| {
        NodeError::NotFound(format!(
            "{} has no dataset {dataset}; register it first with `concord dataset add`",
            dir.root.display()
        ))
    })?;
    policy.check_columns(dataset, &crate::node::dataset_columns(&record)?)?;
    let charter = current_charter(dir)?;
    let baseline = charter.as_ref().map(|c| super::baseline_of(&c.charter)).unwrap_or_default();
    policy.check_baseline(&baseline)?;
    if let (Some(c), Some(s)) = (&charter, &record.shared_schema)
        && let Some(schema) = c.charter.schema(s)
    {
        policy.check_schema(&super::personal_schema(schema))?;
    }
    if let Some(c) = &charter {
        for m in policy.named_members() {
            if c.charter.member(m).is_none() {
                return Err(NodeError::Config(format!(
                    "{}: groups name {m}, who is not a member of {}",
                    file.display(),
                    c.charter.federation
                )));
            }
        }
    }
    Ok((policy, record))
}

/// Sets the usage policy of a dataset; a running node applies it at its next request. Logged
/// with the policy's digest. Nothing is changed if any check fails.
pub fn policy_set(dir: &NodeDir, dataset: &str, file: &Path) -> Result<Policy, NodeError> {
    let (policy, _) = policy_check_for(dir, dataset, file)?;
    let entry = LogEntry::PolicySet {
        time: now(),
        dataset: dataset.to_owned(),
        policy_sha256: format!("sha256:{}", policy.digest()),
        classification: policy.classification,
    };
    // Logged first: a policy in force always has its entry, even if the write below fails.
    dir.open_log()?.append_blocking(entry.to_bytes()?)?;
    if !dir.open_state()?.set_policy(dataset, &policy.source)? {
        return Err(NodeError::NotFound(format!("dataset {dataset} was removed meanwhile")));
    }
    Ok(policy)
}

/// The policy in force for a dataset of this node.
pub fn policy_show(dir: &NodeDir, dataset: &str) -> Result<Policy, NodeError> {
    dir.load_config()?;
    let record = dir
        .open_state()?
        .datasets()?
        .into_iter()
        .find(|d| d.name == dataset)
        .ok_or_else(|| NodeError::NotFound(format!("{} has no dataset {dataset}", dir.root.display())))?;
    crate::node::stored_policy(&record)
}

/// Creates a bearer token for a local user.
pub fn token_create(dir: &NodeDir, role: &str) -> Result<String, NodeError> {
    dir.load_config()?;
    let Some(role) = Role::parse(role) else {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        return Err(NodeError::Config(format!("unknown role {role:?}; roles: {}", roles.join(", "))));
    };
    dir.open_state()?.create_token(role.as_str())
}

/// What `concord backup` wrote.
#[derive(Clone, Debug)]
pub struct Backup {
    /// The files written, as their paths in `dest`.
    pub files: Vec<PathBuf>,
    /// Entries of the transparency log in the copy.
    pub log_size: u64,
    /// The datasets' files, which are referenced, not copied: the operator backs them up.
    pub dataset_files: Vec<PathBuf>,
}

/// Copies a node folder to `dest` (which must not exist) while the node may run: the config,
/// the member cards, the keys and a consistent snapshot of the state database, every file
/// created 0600 (never through an existing file or link) and synced. The copy is made in a new
/// private folder beside `dest` and renamed into place, so `dest` is whole or absent; keys that
/// change while the snapshot is taken (a rotation taking effect) fail the backup.
pub fn backup(dir: &NodeDir, dest: &Path) -> Result<Backup, NodeError> {
    dir.load_config()?;
    if dest.exists() {
        return Err(NodeError::Conflict(format!("{} exists; back up into a new folder", dest.display())));
    }
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| NodeError::Config(format!("{} names no folder to create", dest.display())))?;
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{name}.partial-{:016x}", rand::random::<u64>()));
    private_dir(&tmp)?;
    let result = copy_node(dir, &tmp, dest);
    match result {
        Ok(b) => {
            std::fs::rename(&tmp, dest).map_err(|e| NodeError::io(dest, e))?;
            sync_dir(parent)?;
            Ok(b)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Copies the node folder into `tmp` (to be renamed `dest`): config, member cards, a snapshot
/// of the state database, then the keys, which must not have changed meanwhile; all synced.
fn copy_node(dir: &NodeDir, tmp: &Path, dest: &Path) -> Result<Backup, NodeError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files = Vec::new();
    let keys_before = key_files(dir)?;
    for f in ["concord.toml", "member-card.json", "member-card.next.json"] {
        let from = dir.root.join(f);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| NodeError::io(&from, e))?;
            crate::store::config::write_private(&tmp.join(f), &bytes)?;
            files.push(dest.join(f));
        }
    }
    let db = tmp.join("state.db");
    dir.open_state()?.backup_into(&db)?;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| NodeError::io(&db, e))?;
    std::fs::File::open(&db).and_then(|f| f.sync_all()).map_err(|e| NodeError::io(&db, e))?;
    files.push(dest.join("state.db"));
    if key_files(dir)? != keys_before {
        return Err(NodeError::Conflict(
            "the node's keys changed while the backup was taken (a key rotation took effect); run it again"
                .into(),
        ));
    }
    for sub in ["keys", "keys/next"] {
        if keys_before.iter().any(|(rel, _)| rel.starts_with(sub)) {
            private_dir(&tmp.join(sub))?;
        }
    }
    for (rel, bytes) in &keys_before {
        crate::store::config::write_private(&tmp.join(rel), bytes)?;
        files.push(dest.join(rel));
    }
    for sub in ["keys/next", "keys"] {
        if tmp.join(sub).is_dir() {
            sync_dir(&tmp.join(sub))?;
        }
    }
    sync_dir(tmp)?;
    let copy_dir = NodeDir::new(tmp);
    let log_size = crate::store::tlog::stored_size_at(&copy_dir.state_db())?;
    // A table in PostgreSQL is backed up with its database, and files on a Ballista cluster
    // with the cluster's storage, not here.
    let dataset_files = copy_dir
        .open_state()?
        .datasets()?
        .into_iter()
        .filter(|d| d.format.is_file())
        .map(|d| d.path)
        .collect();
    Ok(Backup { files, log_size, dataset_files })
}

/// Creates folder `p`, open to its owner only.
fn private_dir(p: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::DirBuilderExt as _;
    // Not recursive: a folder that exists already (someone else's) is an error.
    std::fs::DirBuilder::new().mode(0o700).create(p).map_err(|e| NodeError::io(p, e))
}

/// Syncs folder `p`, so that the entries made in it are on disk.
fn sync_dir(p: &Path) -> Result<(), NodeError> {
    std::fs::File::open(p).and_then(|d| d.sync_all()).map_err(|e| NodeError::io(p, e))
}

/// The node's key files (`keys/*`, `keys/next/*`), by path under the folder, with their bytes.
fn key_files(dir: &NodeDir) -> Result<Vec<(PathBuf, Vec<u8>)>, NodeError> {
    let mut out = Vec::new();
    for sub in ["keys", "keys/next"] {
        let from = dir.root.join(sub);
        if !from.is_dir() {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&from)
            .map_err(|e| NodeError::io(&from, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| NodeError::io(&from, e)))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for p in entries {
            if p.is_file() {
                let bytes = std::fs::read(&p).map_err(|e| NodeError::io(&p, e))?;
                let rel = Path::new(sub).join(p.file_name().unwrap_or_default());
                out.push((rel, bytes));
            }
        }
    }
    Ok(out)
}
