//! The demo federation: members on 127.0.0.1, each in its own folder with its own keys and
//! database, genesis signed by all, sample or given data, and a scripted smoke tour.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_charter::{
    ColumnType, MemberCard, SchemaColumn, SharedSchema, check_identifier, check_member_id,
};
use concord_query::dataset::{self, DatasetFormat, column_type_of};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{DataFrame, SessionContext, col};
use serde::{Deserialize, Serialize};

use concord_node::net::local::{ClientError, LocalClient};
use concord_node::node::admin;
use concord_node::run::{RunningNode, start};
use concord_node::store::config::{InitOptions, NodeDir, replace_private};
use concord_node::wire::{AccessAsk, DecideRequest, Decision, QueryRequest};
use concord_node::{NodeError, PeerFailure};

/// The name of the demo's federation, in its charter and in `demo.json`.
pub const DEMO_FEDERATION: &str = "demo";

/// One member to set up.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// The member id; also the name of its folder under the demo folder.
    pub id: String,
    /// The member's display name on its card.
    pub name: String,
    /// The jurisdiction on the member's card (the sample uses two-letter codes such as `AL`).
    pub jurisdiction: String,
    /// Dataset files; each becomes a dataset named after the file's stem.
    pub files: Vec<PathBuf>,
}

/// A member as set up: where it lives and how to reach it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoMember {
    /// The member id.
    pub id: String,
    /// Base URL of the node's local API, where the member's own users call with their tokens
    /// (plain HTTP on loopback).
    pub local_url: String,
    /// Base URL of the node's peer listener, which other members reach over mutual TLS.
    pub peer_url: String,
    /// The node's Arrow Flight SQL listener, for ADBC and JDBC (`grpc://`, plain on loopback;
    /// the same tokens as the local API).
    #[serde(default)]
    pub flight_sql_url: String,
    /// A token of role `analyst`: tables and queries.
    pub analyst_token: String,
    /// A token of role `auditor`: audits and the log.
    pub auditor_token: String,
    /// A token of role `steward`: policies and access requests.
    pub steward_token: String,
    /// A token of role `delegate`: proposals and votes on the charter.
    pub delegate_token: String,
    /// A token of role `operator`: the node's metrics (`GET /metrics`).
    #[serde(default)]
    pub operator_token: String,
    /// The log prefix on the local listener: `log_url + "/checkpoint"` is the signed checkpoint.
    pub log_url: String,
    /// The log's verifier key (C2SP vkey).
    pub vkey: String,
    /// The member's node folder (keys, configuration, database); not written to `demo.json`.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `DIR/demo.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoFile {
    /// The federation's name.
    pub federation: String,
    /// Every member, in the order they were set up.
    pub members: Vec<DemoMember>,
}

/// Creates every member's node folder, the genesis charter signed by all, the datasets (with
/// `STEM.policy.toml` beside a data file as its policy; without one every member may aggregate
/// it) and an analyst, auditor and steward token each.
pub async fn setup(
    dir: &Path,
    federation: &str,
    specs: &[MemberSpec],
    schemas: Vec<SharedSchema>,
    port_base: u16,
) -> Result<Vec<DemoMember>, NodeError> {
    let (mut members, cards) = init_members(dir, federation, specs, port_base)?;
    let charter_file = dir.join("charter-v1.note");
    let charter = admin::write_genesis(federation, cards, schemas, &charter_file)?;
    for m in &members {
        admin::charter_sign(&NodeDir::new(&m.dir), &charter_file)?;
    }
    for (m, spec) in members.iter_mut().zip(specs) {
        let nd = NodeDir::new(&m.dir);
        admin::charter_accept(&nd, &charter_file)?;
        for file in &spec.files {
            let stem = stem_of(file)?;
            let shared = charter.schema(&stem).map(|s| s.name.as_str());
            admin::dataset_add(&nd, &stem, file, shared, Some("*")).await?;
            let policy = file.with_file_name(format!("{stem}.policy.toml"));
            if policy.is_file() {
                admin::policy_set(&nd, &stem, &policy)?;
            }
        }
        m.analyst_token = admin::token_create(&nd, "analyst")?;
        m.auditor_token = admin::token_create(&nd, "auditor")?;
        m.steward_token = admin::token_create(&nd, "steward")?;
        m.delegate_token = admin::token_create(&nd, "delegate")?;
        m.operator_token = admin::token_create(&nd, "operator")?;
    }
    Ok(members)
}

/// Ports each member takes from the port base: local, peer, and Arrow Flight SQL.
pub const PORTS_PER_MEMBER: usize = 3;

/// Initialises every member's node folder on three ports each from `port_base`: the local and
/// peer listeners of member `i` at `port_base + 2i` and `+ 2i + 1`, its Flight SQL listener
/// after all of those, at `port_base + 2n + i`. Returns the members (tokens not yet made) and
/// their cards for the genesis charter.
fn init_members(
    dir: &Path,
    federation: &str,
    specs: &[MemberSpec],
    port_base: u16,
) -> Result<(Vec<DemoMember>, Vec<MemberCard>), NodeError> {
    let mut cards = Vec::new();
    let mut members = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let local = port_base as u32 + 2 * i as u32;
        let peer = local + 1;
        let flight = port_base as u32 + 2 * specs.len() as u32 + i as u32;
        if flight > u16::MAX as u32 {
            return Err(NodeError::Config(format!(
                "--port-base {port_base} leaves no room for {} members",
                specs.len()
            )));
        }
        let node_dir = dir.join(&spec.id).join("node");
        admin_init(&node_dir, spec, federation, [local as u16, peer as u16, flight as u16])?;
        let card = NodeDir::new(&node_dir).load_card()?;
        members.push(DemoMember {
            id: spec.id.clone(),
            local_url: format!("http://127.0.0.1:{local}"),
            peer_url: format!("https://127.0.0.1:{peer}"),
            flight_sql_url: format!("grpc://127.0.0.1:{flight}"),
            analyst_token: String::new(),
            auditor_token: String::new(),
            steward_token: String::new(),
            delegate_token: String::new(),
            operator_token: String::new(),
            log_url: format!("http://127.0.0.1:{local}/v1/log"),
            vkey: card.vkey.clone(),
            dir: node_dir,
        });
        cards.push(card);
    }
    Ok((members, cards))
}

fn admin_init(
    node_dir: &Path,
    spec: &MemberSpec,
    federation: &str,
    [local, peer, flight]: [u16; 3],
) -> Result<(), NodeError> {
    concord_node::store::config::init(
        node_dir,
        &InitOptions {
            member: spec.id.clone(),
            federation: federation.to_owned(),
            name: Some(spec.name.clone()),
            jurisdiction: Some(spec.jurisdiction.clone()),
            peer_listen: format!("127.0.0.1:{peer}"),
            local_listen: format!("127.0.0.1:{local}"),
            flight_listen: Some(format!("127.0.0.1:{flight}")),
            advertise: None,
        },
    )?;
    Ok(())
}

fn stem_of(file: &Path) -> Result<String, NodeError> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
    check_identifier("dataset name (the file's stem)", &stem)
        .map_err(|e| NodeError::Config(format!("{}: {e}", file.display())))?;
    Ok(stem)
}

/// Starts every member's node and waits until each answers on its local listener.
pub async fn start_all(members: &[DemoMember]) -> Result<Vec<RunningNode>, NodeError> {
    let mut running = Vec::new();
    for m in members {
        match start(&NodeDir::new(&m.dir)).await {
            Ok(r) => running.push(r),
            Err(e) => {
                for r in running {
                    r.stop().await;
                }
                return Err(e);
            }
        }
    }
    for m in members {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = LocalClient::new(&m.local_url, &m.analyst_token).status().await.is_ok();
            if ok {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(NodeError::Config(format!("member {} did not answer at {}", m.id, m.local_url)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(running)
}

/// The sample members without `--data`.
pub fn sample_members(data_dir: &Path) -> Result<Vec<MemberSpec>, NodeError> {
    let people = [
        ("alpha", "Alpha Statistics Office", "AL", &["AL-North", "AL-South", "AL-Capital"][..], 30_000),
        ("bravo", "Bravo Health Agency", "BR", &["BR-East", "BR-West"][..], 24_000),
        ("charlie", "Charlie Research Consortium", "CH", &["CH-1", "CH-2", "CH-3", "CH-4"][..], 36_000),
    ];
    let mut specs = Vec::new();
    for (i, (id, name, jurisdiction, regions, rows)) in people.into_iter().enumerate() {
        let folder = data_dir.join(id);
        std::fs::create_dir_all(&folder).map_err(|e| NodeError::io(&folder, e))?;
        let cases = folder.join("health_cases.csv");
        write_health_cases(&cases, i as u64, regions, rows)?;
        write_file(&folder.join("health_cases.policy.toml"), HEALTH_POLICY)?;
        let econ = folder.join("digital_economy.csv");
        write_digital_economy(&econ, i as u64)?;
        write_file(&folder.join("digital_economy.policy.toml"), ECONOMY_POLICY)?;
        specs.push(MemberSpec {
            id: id.into(),
            name: name.into(),
            jurisdiction: jurisdiction.into(),
            files: vec![cases, econ],
        });
    }
    Ok(specs)
}

fn write_file(path: &Path, text: &str) -> Result<(), NodeError> {
    std::fs::write(path, text).map_err(|e| NodeError::io(path, e))
}

/// The sample demo's policy of `health_cases`, at every member.
pub const HEALTH_POLICY: &str = include_str!("sample/health_cases.policy.toml");

/// The sample demo's policy of `digital_economy`, at every member.
pub const ECONOMY_POLICY: &str = include_str!("sample/digital_economy.policy.toml");

/// The shared schemas of the sample data.
pub fn sample_schemas() -> Vec<SharedSchema> {
    let c = |name: &str, ty, personal| SchemaColumn { name: name.into(), ty, personal };
    vec![
        SharedSchema {
            name: "health_cases".into(),
            version: 1,
            columns: vec![
                c("case_id", ColumnType::Int64, true),
                c("region", ColumnType::Utf8, false),
                c("age_band", ColumnType::Utf8, true),
                c("sex", ColumnType::Utf8, true),
                c("onset_date", ColumnType::Date32, true),
                c("hospital_days", ColumnType::Int64, true),
                c("outcome", ColumnType::Utf8, true),
            ],
            privacy_unit: Some("case_id".into()),
        },
        SharedSchema {
            name: "digital_economy".into(),
            version: 1,
            columns: vec![
                c("year", ColumnType::Int64, false),
                c("sector", ColumnType::Utf8, false),
                c("value_added", ColumnType::Float64, false),
                c("share_of_gdp", ColumnType::Float64, false),
            ],
            privacy_unit: None,
        },
    ]
}

/// A small deterministic generator (SplitMix64), so that the sample data is the same everywhere.
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (always 0 when `n` is 0 or 1), by remainder, so very slightly biased.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// A number in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const AGE_BANDS: [&str; 9] = ["0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80+"];

fn write_health_cases(path: &Path, member: u64, regions: &[&str], rows: usize) -> Result<(), NodeError> {
    let mut rng = SplitMix::new(0xC0FFEE + member);
    let f = std::fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    let io = |e| NodeError::io(path, e);
    writeln!(w, "case_id,region,age_band,sex,onset_date,hospital_days,outcome").map_err(io)?;
    let epoch = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default();
    for i in 0..rows {
        let region = regions[rng.below(regions.len() as u64) as usize];
        let band = rng.below(AGE_BANDS.len() as u64) as usize;
        let sex = if rng.below(2) == 0 { "F" } else { "M" };
        let date = epoch + chrono::Days::new(rng.below(365));
        let severe = rng.unit() < 0.05 + 0.03 * band as f64;
        let (outcome, days) = if severe {
            if rng.unit() < 0.1 + 0.02 * band as f64 {
                ("deceased", 3 + rng.below(20))
            } else {
                ("hospitalised", 1 + rng.below(15))
            }
        } else {
            ("recovered", 0)
        };
        let days = if rng.below(10) == 0 { String::new() } else { days.to_string() };
        writeln!(
            w,
            "{},{region},{},{sex},{date},{days},{outcome}",
            member * 1_000_000 + i as u64,
            AGE_BANDS[band]
        )
        .map_err(io)?;
    }
    w.flush().map_err(io)
}

const SECTORS: [&str; 5] = ["ict", "e-commerce", "fintech", "digital-media", "cloud"];

fn write_digital_economy(path: &Path, member: u64) -> Result<(), NodeError> {
    let mut rng = SplitMix::new(0xEC0 + member);
    let io = |e| NodeError::io(path, e);
    let f = std::fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    let mut w = std::io::BufWriter::new(f);
    writeln!(w, "year,sector,value_added,share_of_gdp").map_err(io)?;
    for year in 2015..=2025 {
        for (s, sector) in SECTORS.iter().enumerate() {
            let base = 1_000.0 * (member + 1) as f64 * (1.0 + s as f64 / 2.0);
            let growth = 1.0 + 0.04 * (year - 2015) as f64;
            let va = base * growth * (0.9 + 0.2 * rng.unit());
            let share = 0.5 + 3.0 * rng.unit();
            writeln!(w, "{year},{sector},{va:.2},{share:.3}").map_err(io)?;
        }
    }
    w.flush().map_err(io)
}

/// Members from `--data FOLDER`: each sub-folder a member, each CSV or Parquet file a dataset;
/// files with the same stem in several members form a shared schema of that name (the columns
/// they all have, in a type they all fit).
/// Also returns a warning for every column left out of a shared schema, saying why.
pub async fn data_members(
    folder: &Path,
) -> Result<(Vec<MemberSpec>, Vec<SharedSchema>, Vec<String>), NodeError> {
    let specs = member_folders(folder)?;
    // Columns per stem per member; every column that cannot be shared is named.
    let mut warnings = Vec::new();
    let by_stem = columns_by_stem(&specs, &mut warnings).await?;
    let mut schemas = Vec::new();
    for (stem, lists) in by_stem {
        if lists.len() < 2 {
            continue;
        }
        let mut columns: Vec<SchemaColumn> = Vec::new();
        for (name, first) in &lists[0].1 {
            columns.extend(shared_column(&stem, name, first, &lists, &mut warnings));
        }
        if !columns.is_empty() {
            schemas.push(SharedSchema { name: stem, version: 1, columns, privacy_unit: None });
        }
    }
    Ok((specs, schemas, warnings))
}

/// One member per sub-folder of `folder`, named after it, with the CSV and Parquet files in it.
fn member_folders(folder: &Path) -> Result<Vec<MemberSpec>, NodeError> {
    let mut specs = Vec::new();
    let entries = std::fs::read_dir(folder).map_err(|e| NodeError::io(folder, e))?;
    let mut dirs: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for d in dirs {
        let id = d.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        check_member_id(&id).map_err(|e| {
            NodeError::Config(format!("{}: the folder name is the member id: {e}", d.display()))
        })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| NodeError::io(&d, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && DatasetFormat::of_path(p).is_ok())
            .collect();
        files.sort();
        specs.push(MemberSpec { name: id.clone(), jurisdiction: id.to_uppercase(), id, files });
    }
    if specs.is_empty() {
        return Err(NodeError::Config(format!(
            "{} has no member folders; put one folder per member, each with CSV or Parquet files",
            folder.display()
        )));
    }
    Ok(specs)
}

/// One member's columns of a data file, each with its shared type.
type Columns = Vec<(String, ColumnType)>;

/// Opens every member's data files and lists their columns per stem and member; files' and
/// columns' reasons for being left out go to `warnings`.
async fn columns_by_stem(
    specs: &[MemberSpec],
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Vec<(String, Columns)>>, NodeError> {
    // Per stem, each member's columns with their types.
    let mut by_stem: BTreeMap<String, Vec<(String, Columns)>> = BTreeMap::new();
    for s in specs {
        for f in &s.files {
            let stem = stem_of(f)?;
            let table =
                dataset::open(&stem, f, DatasetFormat::of_path(f)?, None, &Default::default()).await?;
            warnings.extend(table.left_out().iter().map(|w| format!("{}: {w}", f.display())));
            let mut cols = Vec::new();
            for fl in datafusion::catalog::TableProvider::schema(table.as_ref()).fields() {
                match column_type_of(fl.data_type()) {
                    Ok(t) => cols.push((fl.name().clone(), t)),
                    Err(why) => warnings.push(format!(
                        "{}: column {} ({}) is not shared: it {why}",
                        f.display(),
                        fl.name(),
                        fl.data_type()
                    )),
                }
            }
            by_stem.entry(stem).or_default().push((s.id.clone(), cols));
        }
    }
    Ok(by_stem)
}

/// The first member's column `name` of `stem` as a shared column, in the narrowest type every
/// member's column fits without loss; `None`, with a warning saying why, if it cannot be shared.
fn shared_column(
    stem: &str,
    name: &str,
    first: &ColumnType,
    lists: &[(String, Columns)],
    warnings: &mut Vec<String>,
) -> Option<SchemaColumn> {
    // The narrowest type every member's column fits without loss.
    let mut t = first.clone();
    let mut missing = Vec::new();
    for (member, l) in &lists[1..] {
        match l.iter().find(|(n, _)| n == name) {
            None => missing.push(member.as_str()),
            Some((_, u)) if dataset::fits(&dataset::arrow_type(u), &t) => {}
            Some((_, u)) if dataset::fits(&dataset::arrow_type(&t), u) => t = u.clone(),
            Some(_) => {}
        }
    }
    let misfits: Vec<String> = lists
        .iter()
        .filter_map(|(member, l)| {
            let (_, u) = l.iter().find(|(n, _)| n == name)?;
            (!dataset::fits(&dataset::arrow_type(u), &t)).then(|| format!("{u} at {member}"))
        })
        .collect();
    if !missing.is_empty() {
        warnings
            .push(format!("{stem}: column {name} is not shared: {} has no such column", missing.join(", ")));
    } else if !misfits.is_empty() {
        warnings.push(format!(
            "{stem}: column {name} is not shared: its types differ ({t} at {}, {}) and neither holds the other without loss",
            lists[0].0,
            misfits.join(", ")
        ));
    } else if let Err(e) = check_identifier("column", name) {
        warnings.push(format!("{stem}: column {name} is not shared: {e}"));
    } else {
        return Some(SchemaColumn { name: name.to_owned(), ty: t, personal: false });
    }
    None
}

/// The pooled data of every member in one DataFusion context: what a central database would
/// hold. Only the demo and tests can build it, because only they hold every member's files.
pub async fn pooled_context(
    specs: &[MemberSpec],
    schemas: &[SharedSchema],
) -> Result<SessionContext, NodeError> {
    let ctx = SessionContext::new();
    for s in schemas {
        let mut union: Option<DataFrame> = None;
        for spec in specs {
            for f in &spec.files {
                if stem_of(f)? != s.name {
                    continue;
                }
                let table =
                    dataset::open(&s.name, f, DatasetFormat::of_path(f)?, Some(s), &Default::default())
                        .await?;
                let df = ctx
                    .read_table(table)
                    .and_then(|d| {
                        d.select(s.columns.iter().map(|c| col(dataset::quoted(&c.name))).collect::<Vec<_>>())
                    })
                    .map_err(concord_query::QueryError::plan)?;
                union = Some(match union {
                    None => df,
                    Some(u) => u.union(df).map_err(concord_query::QueryError::plan)?,
                });
            }
        }
        if let Some(u) = union {
            ctx.register_table(s.name.as_str(), u.into_view()).map_err(concord_query::QueryError::plan)?;
        }
    }
    // `member.dataset`: one member's file alone.
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| NodeError::Internal("the pooled context has no default catalog".into()))?;
    for spec in specs {
        let schema = std::sync::Arc::new(datafusion::catalog::MemorySchemaProvider::new());
        catalog.register_schema(&spec.id, schema.clone()).map_err(concord_query::QueryError::plan)?;
        for f in &spec.files {
            let stem = stem_of(f)?;
            let shared = schemas.iter().find(|s| s.name == stem);
            let table =
                dataset::open(&stem, f, DatasetFormat::of_path(f)?, shared, &Default::default()).await?;
            datafusion::catalog::SchemaProvider::register_table(schema.as_ref(), stem, table)
                .map_err(concord_query::QueryError::plan)?;
        }
    }
    Ok(ctx)
}

/// What `concord demo` is given.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The folder to build the federation in; made anew each run, and refused if it holds
    /// anything but a previous demo.
    pub dir: PathBuf,
    /// One sub-folder per member, each with CSV or Parquet files, instead of the sample data.
    pub data: Option<PathBuf>,
    /// First of the ports the members listen on, two per member (local, peer).
    pub port_base: u16,
    /// Whether the caller runs the smoke tour and exits instead of waiting; [`launch`] itself
    /// does not read it.
    pub smoke: bool,
}

/// A demo federation that is up.
pub struct Demo {
    /// What `demo.json` holds: the federation's name and every member's URLs and tokens.
    pub file: DemoFile,
    /// The members as set up, with their data files.
    pub specs: Vec<MemberSpec>,
    /// The shared schemas of the genesis charter.
    pub schemas: Vec<SharedSchema>,
    /// Every member's running node, in the order of `file.members`.
    pub nodes: Vec<RunningNode>,
    /// Columns of `--data` left out of the shared schemas, each with its reason.
    pub warnings: Vec<String>,
}

impl Demo {
    /// Stops every member's node.
    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// Builds and starts the demo federation and writes `DIR/demo.json`.
pub async fn launch(opts: &DemoOptions) -> Result<Demo, NodeError> {
    prepare_dir(&opts.dir)?;
    let (specs, schemas, warnings) = match &opts.data {
        Some(folder) => data_members(folder).await?,
        None => (sample_members(&opts.dir.join("data"))?, sample_schemas(), Vec::new()),
    };
    // A port in use fails before anything is built, naming the flag that moves the ports;
    // anything else that fails leaves no half-built folder behind.
    let built = async {
        ports_free(opts.port_base, specs.len())?;
        let members = setup(&opts.dir, DEMO_FEDERATION, &specs, schemas.clone(), opts.port_base).await?;
        let nodes = start_all(&members).await?;
        Ok::<_, NodeError>((members, nodes))
    }
    .await;
    let (members, nodes) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&opts.dir);
            return Err(e);
        }
    };
    let file = DemoFile { federation: DEMO_FEDERATION.into(), members };
    let json = serde_json::to_string_pretty(&file)
        .map_err(|source| NodeError::Encode { what: "demo.json", source })?;
    // It holds every member's tokens: readable by its owner only.
    replace_private(&opts.dir.join("demo.json"), format!("{json}\n").as_bytes())?;
    Ok(Demo { file, specs, schemas, nodes, warnings })
}

/// Every port the demo's members would listen on (two each from `base`) is free on 127.0.0.1.
fn ports_free(base: u16, members: usize) -> Result<(), NodeError> {
    let count = u16::try_from(PORTS_PER_MEMBER * members).unwrap_or(u16::MAX);
    let Some(last) = base.checked_add(count.saturating_sub(1)) else {
        return Err(NodeError::Config(format!(
            "--port-base {base} leaves no room for {count} ports below 65536"
        )));
    };
    for port in base..=last {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(NodeError::Config(format!(
                "port {port} on 127.0.0.1 is taken ({e}), perhaps by another demo; the demo uses ports {base} to {last}: \
                 choose others with --port-base, e.g. --port-base {}",
                last.saturating_add(100)
            )));
        }
    }
    Ok(())
}

/// A demo folder is made anew each run; refuse to wipe anything that is not one.
fn prepare_dir(dir: &Path) -> Result<(), NodeError> {
    if dir.exists() {
        let is_demo = dir.join("demo.json").exists() || dir.join("charter-v1.note").exists();
        let empty = std::fs::read_dir(dir).map_err(|e| NodeError::io(dir, e))?.next().is_none();
        if !is_demo && !empty {
            return Err(NodeError::Config(format!(
                "{} exists and is not a demo folder; choose another --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))
}

/// Example queries for the guide and the smoke tour.
pub fn sample_queries() -> Vec<&'static str> {
    vec![
        "SELECT region, count(*) AS cases, sum(hospital_days) AS days FROM health_cases GROUP BY region ORDER BY region",
        "SELECT age_band, sex, count(*) AS n, sum(hospital_days) AS days FROM health_cases WHERE outcome = 'hospitalised' AND onset_date >= DATE '2025-04-01' GROUP BY age_band, sex ORDER BY age_band, sex",
        "SELECT outcome, count(*) AS n FROM health_cases GROUP BY outcome HAVING count(*) > 100 ORDER BY n DESC LIMIT 2",
        "WITH y AS (SELECT year, sum(value_added) AS va FROM digital_economy GROUP BY year) SELECT year, va, va - lag(va) OVER (ORDER BY year) AS growth FROM y ORDER BY year",
        "SELECT sector, avg(share_of_gdp) AS share, max(value_added) AS top FROM digital_economy WHERE year >= 2020 GROUP BY sector ORDER BY sector",
        "SELECT count(*) AS cases FROM bravo.health_cases WHERE age_band = '80+'",
        "SELECT year, sector, value_added FROM bravo.digital_economy WHERE year = 2025 ORDER BY sector",
    ]
}

/// Queries over whatever `--data` holds: a count and the aggregates of a numeric column of
/// each shared schema.
pub fn data_queries(schemas: &[SharedSchema]) -> Vec<String> {
    let mut out = Vec::new();
    for s in schemas {
        out.push(format!("SELECT count(*) AS n FROM {}", s.name));
        if let Some(c) = s.columns.iter().find(|c| c.ty.is_numeric()) {
            let n = dataset::quoted(&c.name);
            out.push(format!(
                "SELECT sum({n}) AS s, avg({n}) AS a, min({n}) AS lo, max({n}) AS hi FROM {}",
                s.name
            ));
        }
    }
    out
}

/// Prints the guide for a running demo.
pub fn guide(file: &DemoFile, queries: &[String]) -> String {
    let mut s = String::new();
    s.push_str(&format!("Federation {:?} is up with {} members:\n", file.federation, file.members.len()));
    for m in &file.members {
        s.push_str(&format!(
            "  {:<10} local {}  peer {}  flight sql {}\n",
            m.id, m.local_url, m.peer_url, m.flight_sql_url
        ));
    }
    if let Some(m) = file.members.first() {
        s.push_str("\nPut `concord` on your PATH once: cargo install --path crates/concord --locked\n");
        s.push_str(&format!("\nAsk as an analyst of {}:\n", m.id));
        s.push_str(&format!("  export CONCORD_NODE={} CONCORD_TOKEN={}\n", m.local_url, m.analyst_token));
        s.push_str("  concord tables\n");
        for q in queries.iter().take(4) {
            s.push_str(&format!("  concord query --provenance \"{q}\"\n"));
        }
        if let Some(b) = file.members.get(1) {
            s.push_str(&format!(
                "\nSee what a policy would release, rule by rule, as {}'s steward (nothing runs):\n  \
                 CONCORD_NODE={} CONCORD_TOKEN={} concord policy test --as {} health_cases \"SELECT region, count(*) FROM health_cases GROUP BY region\"\n",
                b.id, b.local_url, b.steward_token, m.id
            ));
        }
        s.push_str(&format!(
            "\nAudit every member's log as an auditor of {}:\n  CONCORD_NODE={} CONCORD_TOKEN={} concord audit --all\n",
            m.id, m.local_url, m.auditor_token
        ));
        s.push_str(&format!(
            "\nFrom Python (pip install adbc-driver-flightsql pandas), as {}'s analyst:\n  \
             import adbc_driver_flightsql.dbapi as fs\n  \
             conn = fs.connect(\"{}\", db_kwargs={{\"adbc.flight.sql.authorization_header\": \"Bearer {}\"}}, autocommit=True)\n  \
             conn.cursor().execute(\"SELECT sector, sum(value_added) FROM digital_economy GROUP BY sector\").fetch_df()\n",
            m.id, m.flight_sql_url, m.analyst_token
        ));
        s.push_str(&format!(
            "\nIn a browser, the web console: {}/console (log in with a token of demo.json: {}'s analyst token is above)\n",
            m.local_url, m.id
        ));
    }
    s.push_str("\nPress Ctrl-C to stop every node.\n");
    s
}

/// The sample demo's policies at work, run live as alpha's analyst and bravo's steward: a noisy
/// answer with its provenance, a suppressed group, a refusal with its reason, and an access
/// request approved by a steward. Each step says what it ran.
pub async fn showcase(file: &DemoFile) -> String {
    let (Some(alpha), Some(bravo)) = (file.members.first(), file.members.get(1)) else {
        return String::new();
    };
    let mut s = String::from("\nThe sample policies at work (run just now):\n");
    let noisy = "SELECT age_band, count(*) AS n, sum(hospital_days) AS days FROM health_cases GROUP BY age_band ORDER BY age_band";
    s.push_str(&show(
        "A noisy answer with its provenance:",
        noisy,
        api_query(&alpha.local_url, &alpha.analyst_token, noisy).await,
    ));
    let small = "SELECT age_band, sex, count(*) AS n FROM bravo.health_cases WHERE outcome = 'deceased' GROUP BY age_band, sex";
    s.push_str(&show(
        "Groups of fewer than ten people are suppressed and counted, never named (age bands and sexes are public keys, so the count tells nothing the release does not):",
        small,
        api_query(&alpha.local_url, &alpha.analyst_token, small).await,
    ));
    let refused =
        "SELECT case_id, region, max(hospital_days) FROM bravo.health_cases GROUP BY case_id, region";
    s.push_str(&show(
        "A refusal with its reason:",
        refused,
        api_query(&alpha.local_url, &alpha.analyst_token, refused).await,
    ));
    s.push_str(&access_request(alpha, bravo).await);
    s
}

/// One showcase step: its title, its SQL, and the answer's first rows with each owner's
/// contribution, or the refusal.
fn show(title: &str, sql: &str, r: Result<ApiResult, NodeError>) -> String {
    let mut out = format!("\n{title}\n  {sql}\n");
    match r {
        Ok(a) => {
            out.push_str(&table(&a.batches, 4));
            for c in &a.provenance {
                out.push_str(&contribution_line(c));
            }
        }
        Err(NodeError::Peer { code, message, .. }) => {
            out.push_str(&format!("  refused [{code}]: {message}\n"))
        }
        Err(e) => out.push_str(&format!("  refused: {e}\n")),
    }
    out
}

/// One owner's line of a showcase answer: groups released, what was held back, noise and budget.
fn contribution_line(c: &concord_query::Contribution) -> String {
    let r = &c.release;
    let noise =
        r.noise_scale.iter().map(|(col, sc)| format!("{col} ±{sc:.1}")).collect::<Vec<_>>().join(", ");
    format!(
        "  from {}: {} groups, {}{}{}\n",
        c.member,
        c.groups_released,
        match (r.threshold, r.public_keys) {
            (Some(t), _) => format!("released from a noisy count of {t} people, held back not counted"),
            (None, true) => "every public key released".to_owned(),
            (None, false) if r.suppressed_not_counted => "groups held back not counted".to_owned(),
            (None, false) => format!("{} suppressed", r.groups_suppressed),
        },
        r.mechanism.as_ref().map(|m| format!(", {m} noise {noise}")).unwrap_or_default(),
        r.budget
            .as_ref()
            .map(|b| format!(", {} {} spent, {} left", b.parameter, b.charged, b.requester_remaining))
            .unwrap_or_default()
    )
}

/// Files an access request as `alpha`'s analyst, has `bravo`'s steward approve it, and shows
/// the commands that do the same.
async fn access_request(alpha: &DemoMember, bravo: &DemoMember) -> String {
    let mut s = String::new();
    let ask = AccessAsk {
        dataset: format!("{}.health_cases", bravo.id),
        actions: vec![concord_policy::Action::Aggregate],
        purpose: "influenza study".into(),
        legal_basis: "public health act, art. 12".into(),
        days: 30,
    };
    let filed = LocalClient::new(&alpha.local_url, &alpha.analyst_token).file_access_request(&ask).await;
    match filed.map(|r| r.id) {
        Ok(id) => {
            let approved = LocalClient::new(&bravo.local_url, &bravo.steward_token)
                .decide(&id, Decision::Approve, &DecideRequest { reason: String::new(), days: Some(30) })
                .await
                .is_ok();
            s.push_str(&format!(
                "\nAn access request, filed by {a}'s analyst and {verdict} by {b}'s steward:\n  \
                 CONCORD_NODE={al} CONCORD_TOKEN={at} concord access request --dataset {b}.health_cases \\\n    \
                 --action aggregate --purpose \"influenza study\" --legal-basis \"public health act, art. 12\"\n  \
                 CONCORD_NODE={bl} CONCORD_TOKEN={bt} concord access approve {id}\n  \
                 (queries with --purpose \"influenza study\" now show grant {id} in their provenance)\n",
                a = alpha.id,
                b = bravo.id,
                al = alpha.local_url,
                at = alpha.analyst_token,
                bl = bravo.local_url,
                bt = bravo.steward_token,
                verdict = if approved { "approved" } else { "NOT approved" },
            ));
        }
        Err(e) => s.push_str(&format!("\nThe access request could not be filed: {e}\n")),
    }
    s
}

/// Result of a federated query through a node's local API.
#[derive(Debug)]
pub struct ApiResult {
    /// The answer's schema, as its Arrow IPC stream states it (also when there are no rows).
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    /// The answer's rows, decoded from Arrow IPC.
    pub batches: Vec<RecordBatch>,
    /// One entry per owner that contributed: its dataset, the groups it released and under
    /// which release rules (suppression, noise, budget).
    pub provenance: Vec<concord_query::Contribution>,
    /// Conforming datasets their owners do not release to this member, named.
    pub left_out: Vec<String>,
}

/// Runs SQL through a node's local API, as an analyst would.
pub async fn api_query(local_url: &str, token: &str, sql: &str) -> Result<ApiResult, NodeError> {
    let q = QueryRequest { sql: sql.to_owned(), purpose: None, partial: false };
    let body = LocalClient::new(local_url, token).query(&q).await.map_err(|e| match e {
        ClientError::Api { code, message, .. } => {
            NodeError::Peer { member: "local node".into(), code: PeerFailure::Answered(code), message }
        }
        ClientError::Unreachable(e) => e,
        ClientError::Malformed(m) => NodeError::BadRequest(format!("malformed answer: {m}")),
    })?;
    use base64::Engine as _;
    let ipc = base64::engine::general_purpose::STANDARD
        .decode(body.arrow_ipc)
        .map_err(|_| NodeError::BadRequest("arrow_ipc is not base64".into()))?;
    let (schema, batches) = concord_query::ipc::decode(&ipc)?;
    Ok(ApiResult { schema, batches, provenance: body.provenance, left_out: body.left_out })
}

/// The first `max` rows of a result as an aligned table, indented, and how many rows there are.
fn table(batches: &[RecordBatch], max: usize) -> String {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut shown = Vec::new();
    let mut left = max;
    for b in batches {
        if left == 0 {
            break;
        }
        let n = b.num_rows().min(left);
        shown.push(b.slice(0, n));
        left -= n;
    }
    let mut out = match datafusion::arrow::util::pretty::pretty_format_batches(&shown) {
        Ok(t) => t.to_string().lines().map(|l| format!("  {l}\n")).collect::<String>(),
        Err(e) => format!("  (the rows cannot be shown: {e})\n"),
    };
    if total > max {
        out.push_str(&format!("  ... {total} rows\n"));
    }
    out
}
