//! `concord bench federated`: a GROUP BY aggregate over rows split across three members,
//! federated through the real protocol (local API, signed requests, mutual TLS, receipts) and
//! the same SQL over the pooled data in one DataFusion context, in the same run; then the same
//! federated query over the same files with and without the sample kind of usage policy
//! (column modes, minimum group size, differential privacy), and the owner's policy check alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_charter::{ColumnType, SchemaColumn, SharedSchema};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::demo::{DemoMember, MemberSpec, SplitMix, api_query, setup, start_all};
use concord_node::NodeError;

/// What `concord bench federated` is given.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Folder for the generated data and the members' nodes; wiped at the start of a run.
    pub dir: PathBuf,
    /// Rows in all, split evenly across the three members (a remainder is dropped).
    pub rows: usize,
    /// Timed runs of each query, after one untimed warm-up.
    pub iterations: usize,
    /// First of the ports the members listen on, two per member (local, peer).
    pub port_base: u16,
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Rows written in all: the requested rows rounded down to a multiple of three.
    pub rows: usize,
    /// Groups (result rows) of [`BENCH_SQL`], the same federated and pooled.
    pub groups: usize,
    /// Wall-clock time of [`BENCH_SQL`] over the pooled data in one DataFusion context, per run.
    pub pooled: Vec<Duration>,
    /// Wall-clock time of [`BENCH_SQL`] federated through alpha's local API, per run.
    pub federated: Vec<Duration>,
    /// [`POLICY_SQL`] federated over datasets under the default policy.
    pub without_policy: Vec<Duration>,
    /// [`POLICY_SQL`] federated over the same files under the benchmark's usage policy.
    pub with_policy: Vec<Duration>,
    /// The owner's policy check of one sub-query (re-plan, decide, modes and release rules).
    pub policy_check: Vec<Duration>,
    /// One owner's release of its part alone (no network, no log) under the default policy.
    pub owner_without_policy: Vec<Duration>,
    /// The same under the benchmark's usage policy.
    pub owner_with_policy: Vec<Duration>,
}

/// The query timed with and without a usage policy (MIN and MAX are never released under
/// differential privacy, so it has neither).
pub const POLICY_SQL: &str =
    "SELECT region, count(*) AS n, sum(amount) AS total, avg(amount) AS mean FROM TABLE GROUP BY region";

/// The benchmark's usage policy of `events_dp`.
pub const EVENTS_POLICY: &str = include_str!("sample/events_dp.policy.toml");

/// The median of `a[i] / b[i]`.
pub fn paired_median(a: &[Duration], b: &[Duration]) -> f64 {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64().max(1e-9)).collect();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => 0.0,
        n if n % 2 == 1 => r[n / 2],
        n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    }
}

/// The duration at fraction `p` (0.0 to 1.0) of the way through `v` sorted, to the nearest
/// index; zero when `v` is empty.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s.get(i).copied().unwrap_or_default()
}

/// The query timed federated against pooled: a GROUP BY over the 60 regions with count, sum,
/// average, minimum and maximum.
pub const BENCH_SQL: &str = "SELECT region, count(*) AS n, sum(amount) AS total, avg(amount) AS mean, min(qty) AS lo, max(qty) AS hi FROM events GROUP BY region";

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

impl BenchReport {
    /// Median time of [`BENCH_SQL`] over the pooled data (the upper one of an even count).
    pub fn pooled_median(&self) -> Duration {
        median(&self.pooled)
    }
    /// Median time of [`BENCH_SQL`] federated (the upper one of an even count).
    pub fn federated_median(&self) -> Duration {
        median(&self.federated)
    }
    /// Federated median over pooled median: how many times longer the federated query takes.
    pub fn ratio(&self) -> f64 {
        self.federated_median().as_secs_f64() / self.pooled_median().as_secs_f64().max(1e-9)
    }
    /// Time with the policy over time without, run by run (the two run back to back, so that
    /// a drift of the machine's speed between runs cancels out), the median of those ratios:
    /// the overhead of modes, groups and noise.
    pub fn policy_ratio(&self) -> f64 {
        paired_median(&self.with_policy, &self.without_policy)
    }

    /// The same for one owner's release alone.
    pub fn owner_policy_ratio(&self) -> f64 {
        paired_median(&self.owner_with_policy, &self.owner_without_policy)
    }
}

fn write_events(path: &Path, rows: usize, seed: u64) -> Result<(), NodeError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("qty", DataType::Int64, true),
        Field::new("person", DataType::Int64, false),
    ]));
    let regions: Vec<String> = (0..60).map(|i| format!("region-{i:02}")).collect();
    let file = std::fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    let pq =
        |e: datafusion::parquet::errors::ParquetError| NodeError::Config(format!("{}: {e}", path.display()));
    let mut w = ArrowWriter::try_new(file, schema.clone(), None).map_err(pq)?;
    let mut rng = SplitMix::new(seed);
    let mut left = rows;
    let mut person = (seed as i64) * 1_000_000_000;
    while left > 0 {
        let n = left.min(65_536);
        left -= n;
        let region: StringArray = (0..n).map(|_| Some(regions[rng.below(60) as usize].as_str())).collect();
        let amount: Float64Array =
            (0..n).map(|_| Some((rng.unit() * 1000.0 * 100.0).round() / 100.0)).collect();
        let qty: Int64Array = (0..n).map(|_| Some(rng.below(500) as i64)).collect();
        let people: Int64Array = (0..n as i64).map(|k| Some(person + k)).collect();
        person += n as i64;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(region), Arc::new(amount), Arc::new(qty), Arc::new(people)],
        )?;
        w.write(&batch).map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(())
}

/// Runs the benchmark; `progress` hears what is going on.
pub async fn federated(opts: &BenchOptions, progress: &dyn Fn(&str)) -> Result<BenchReport, NodeError> {
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    let (specs, files) = write_member_files(opts, progress)?;
    let schemas = bench_schemas();
    progress("setting up the federation");
    let members = setup(&opts.dir, "bench", &specs, schemas, opts.port_base).await?;
    add_policy_datasets(&opts.dir, &members, &files).await?;
    let nodes = start_all(&members).await?;
    let pooled = pooled_events(&files).await?;
    let first = &members[0];
    let mut report = BenchReport {
        rows: opts.rows / 3 * 3,
        groups: 0,
        pooled: Vec::new(),
        federated: Vec::new(),
        without_policy: Vec::new(),
        with_policy: Vec::new(),
        policy_check: Vec::new(),
        owner_without_policy: Vec::new(),
        owner_with_policy: Vec::new(),
    };
    let result = async {
        timed_runs(opts, &pooled, first, &nodes, &mut report, progress).await?;
        report.policy_check = policy_check(&files[1], &opts.dir).await?;
        (report.owner_without_policy, report.owner_with_policy) =
            owner_release(&files[1], &opts.dir, opts.iterations.max(5) * 2).await?;
        Ok::<_, NodeError>(())
    }
    .await;
    for n in nodes {
        n.stop().await;
    }
    result?;
    Ok(report)
}

/// Writes a third of the rows as a Parquet file for each of the three members; returns their
/// specs and the files.
fn write_member_files(
    opts: &BenchOptions,
    progress: &dyn Fn(&str),
) -> Result<(Vec<MemberSpec>, Vec<PathBuf>), NodeError> {
    let ids = ["alpha", "bravo", "charlie"];
    let mut specs = Vec::new();
    let mut files = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let folder = opts.dir.join("data").join(id);
        std::fs::create_dir_all(&folder).map_err(|e| NodeError::io(&folder, e))?;
        let file = folder.join("events.parquet");
        progress(&format!("writing {} rows for {id}", opts.rows / 3));
        write_events(&file, opts.rows / 3, 42 + i as u64)?;
        files.push(file.clone());
        specs.push(MemberSpec {
            id: (*id).into(),
            name: (*id).into(),
            jurisdiction: id.to_uppercase(),
            files: vec![file],
        });
    }
    Ok((specs, files))
}

/// The shared schema `events` and the same columns as `events_dp`, protected per person.
fn bench_schemas() -> Vec<SharedSchema> {
    let schema = SharedSchema {
        name: "events".into(),
        version: 1,
        columns: vec![
            SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
            SchemaColumn { name: "amount".into(), ty: ColumnType::Float64, personal: false },
            SchemaColumn { name: "qty".into(), ty: ColumnType::Int64, personal: false },
            SchemaColumn { name: "person".into(), ty: ColumnType::Int64, personal: false },
        ],
        privacy_unit: None,
    };
    // The same columns, where person is the privacy unit: its datasets are protected.
    let mut private =
        SharedSchema { name: "events_dp".into(), privacy_unit: Some("person".into()), ..schema.clone() };
    for c in &mut private.columns {
        c.personal = c.name == "person";
    }
    vec![schema, private]
}

/// Adds each member's file once more as `events_dp` under the benchmark's usage policy, and
/// lifts the members' peer rate limits.
async fn add_policy_datasets(dir: &Path, members: &[DemoMember], files: &[PathBuf]) -> Result<(), NodeError> {
    // The same files once more, as events_dp under the benchmark's usage policy.
    let policy_file = dir.join("events_dp.policy.toml");
    std::fs::write(&policy_file, EVENTS_POLICY).map_err(|e| NodeError::io(&policy_file, e))?;
    for (m, file) in members.iter().zip(files) {
        let nd = concord_node::store::config::NodeDir::new(&m.dir);
        set_limits(&m.dir, unlimited_peer_rate)?;
        concord_node::node::admin::dataset_add(&nd, "events_dp", file, Some("events_dp"), Some("*")).await?;
        concord_node::node::admin::policy_set(&nd, "events_dp", &policy_file)?;
    }
    Ok(())
}

/// Every member's file in one DataFusion context, as the table `events`.
async fn pooled_events(files: &[PathBuf]) -> Result<SessionContext, NodeError> {
    let pooled = SessionContext::new();
    let paths: Vec<String> = files.iter().filter_map(|p| p.to_str().map(String::from)).collect();
    let df = pooled
        .read_parquet(paths, ParquetReadOptions::default())
        .await
        .map_err(concord_query::QueryError::plan)?;
    pooled.register_table("events", df.into_view()).map_err(concord_query::QueryError::plan)?;
    Ok(pooled)
}

/// The timed runs: pooled against federated, then without and with the policy, each run
/// after the warm-up reported to `progress` and recorded in `report`.
async fn timed_runs(
    opts: &BenchOptions,
    pooled: &SessionContext,
    first: &DemoMember,
    nodes: &[concord_node::run::RunningNode],
    report: &mut BenchReport,
    progress: &dyn Fn(&str),
) -> Result<(), NodeError> {
    // One warm-up of each, then alternate so that both see the same machine state.
    for i in 0..=opts.iterations {
        let (tp, tf, groups) = time_pooled_and_federated(pooled, first, nodes).await?;
        report.groups = groups;
        let (t_plain, t_policy) = time_without_and_with_policy(first, nodes, i).await?;
        if i > 0 {
            progress(&format!(
                "run {i}: pooled {:.1} ms, federated {:.1} ms; without policy {:.1} ms, with policy {:.1} ms",
                ms(tp),
                ms(tf),
                ms(t_plain),
                ms(t_policy)
            ));
            report.pooled.push(tp);
            report.federated.push(tf);
            report.without_policy.push(t_plain);
            report.with_policy.push(t_policy);
        }
    }
    Ok(())
}

/// Times [`BENCH_SQL`] pooled and federated once each and checks that both found the same
/// number of groups; returns the two times and the groups.
async fn time_pooled_and_federated(
    pooled: &SessionContext,
    first: &DemoMember,
    nodes: &[concord_node::run::RunningNode],
) -> Result<(Duration, Duration, usize), NodeError> {
    let t = Instant::now();
    let p = pooled.sql(BENCH_SQL).await.map_err(concord_query::QueryError::plan)?;
    let p = p.collect().await.map_err(concord_query::QueryError::plan)?;
    let tp = t.elapsed();
    let t = Instant::now();
    let f = api_query(&first.local_url, &first.analyst_token, BENCH_SQL).await?;
    let tf = t.elapsed();
    // Let the nodes publish and cosign the checkpoints of this query's log entries
    // before the next timing, so that neither side is timed against that work.
    settle(nodes).await?;
    let groups: usize = f.batches.iter().map(|b| b.num_rows()).sum();
    let pooled_groups: usize = p.iter().map(|b| b.num_rows()).sum();
    if groups != pooled_groups {
        return Err(NodeError::Config(format!("federated gave {groups} groups, pooled {pooled_groups}")));
    }
    Ok((tp, tf, groups))
}

/// Times [`POLICY_SQL`] federated without and with the usage policy, the order swapped on odd
/// runs, and checks that the policy added noise; returns the two times in that order.
async fn time_without_and_with_policy(
    first: &DemoMember,
    nodes: &[concord_node::run::RunningNode],
    i: usize,
) -> Result<(Duration, Duration), NodeError> {
    // The same federated query with and without the usage policy, over the same files,
    // in turn first and second.
    let mut t_plain = Duration::ZERO;
    let mut t_policy = Duration::ZERO;
    let mut noisy = None;
    for policy_on in if i.is_multiple_of(2) { [false, true] } else { [true, false] } {
        let table = if policy_on { "events_dp" } else { "events" };
        let t = Instant::now();
        let answer =
            api_query(&first.local_url, &first.analyst_token, &POLICY_SQL.replace("TABLE", table)).await?;
        if policy_on {
            t_policy = t.elapsed();
            noisy = Some(answer);
        } else {
            t_plain = t.elapsed();
        }
        settle(nodes).await?;
    }
    let noisy = noisy.ok_or_else(|| NodeError::Config("the run with the policy did not run".into()))?;
    if !noisy.provenance.iter().any(|c| c.release.mechanism.is_some()) {
        return Err(NodeError::Config("the run with the policy added no noise".into()));
    }
    Ok((t_plain, t_policy))
}

/// The owner's check of one sub-query as bravo gets it from alpha, timed 1000 times: re-plan
/// against the dataset, the shape check, the policy's decision (baseline and Cedar), column
/// modes and release rules. Nothing runs.
async fn policy_check(file: &Path, dir: &Path) -> Result<Vec<Duration>, NodeError> {
    use concord_query::release::{Rules, check};
    let policy = Arc::new(concord_policy_of(EVENTS_POLICY, dir)?);
    let table = concord_query::dataset::open(
        "events_dp",
        file,
        concord_query::dataset::DatasetFormat::Parquet,
        None,
        &Default::default(),
    )
    .await?;
    let ctx = SessionContext::new();
    let fed = concord_query::FederatedTable {
        display: "events_dp".into(),
        schema: datafusion::catalog::TableProvider::schema(table.as_ref()),
        parts: vec![concord_query::Part { owner: "bravo".into(), dataset: "events_dp".into() }],
        shared: false,
        unreachable: vec![],
        withheld: vec![],
    };
    ctx.register_table("events_dp", Arc::new(fed)).map_err(concord_query::QueryError::plan)?;
    let (_, planned) =
        concord_query::federate::plan_subqueries(&ctx, &POLICY_SQL.replace("TABLE", "events_dp")).await?;
    let sql = planned.first().map(|p| p.sql.clone()).unwrap_or_default();
    let access = concord_policy::AccessContext {
        requester: "alpha".into(),
        purpose: "analysis".into(),
        grants: vec![],
        charter_version: 1,
    };
    let mut times = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        let sub = concord_query::owner::parse_subquery("events_dp", table.clone(), &sql).await?;
        let d =
            policy.decide("bravo", "events_dp", sub.action(), &access, &concord_policy::Baseline::default());
        if !d.is_allowed() {
            return Err(NodeError::Config(format!("the benchmark's sub-query is refused: {d:?}")));
        }
        let rules = Rules {
            policy: policy.clone(),
            baseline: concord_policy::Baseline::default(),
            own: false,
            unit_is_row: true,
        };
        check(sub, rules)?;
        times.push(t.elapsed());
    }
    Ok(times)
}

/// One owner's release of the sub-query alone, over its own file, without network or log:
/// the exact answer (default policy) and the answer under the benchmark's policy, alternated.
async fn owner_release(
    file: &Path,
    dir: &Path,
    runs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), NodeError> {
    use concord_query::release::Rules;
    let policy = Arc::new(concord_policy_of(EVENTS_POLICY, dir)?);
    let columns: Vec<String> = ["region", "amount", "qty", "person"].map(String::from).to_vec();
    let open = Arc::new(concord_policy::Policy::default_for(&columns, &concord_policy::AllowList::Everyone)?);
    let table = concord_query::dataset::open(
        "events_dp",
        file,
        concord_query::dataset::DatasetFormat::Parquet,
        None,
        &Default::default(),
    )
    .await?;
    let sql =
        "SELECT region, count(1) AS n, sum(amount) AS s, count(amount) AS c FROM events_dp GROUP BY region";
    let rules = |policy: &Arc<concord_policy::Policy>| Rules {
        policy: policy.clone(),
        baseline: concord_policy::Baseline::default(),
        own: false,
        unit_is_row: true,
    };
    let (exact, private) = (rules(&open), rules(&policy));
    let limits = concord_query::limits::ExecLimits::default();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..=runs {
        let t = Instant::now();
        concord_query::owner::run_subquery("events_dp", table.clone(), sql, &exact, &limits).await?;
        let ta = t.elapsed();
        let t = Instant::now();
        let answer =
            concord_query::owner::run_subquery("events_dp", table.clone(), sql, &private, &limits).await?;
        let tb = t.elapsed();
        if answer.report.mechanism.is_none() {
            return Err(NodeError::Config("the owner's release under the policy added no noise".into()));
        }
        if i > 0 {
            a.push(ta);
            b.push(tb);
        }
    }
    Ok((a, b))
}

fn concord_policy_of(text: &str, dir: &Path) -> Result<concord_policy::Policy, NodeError> {
    Ok(concord_policy::Policy::parse(text, &dir.join("events_dp.policy.toml").display().to_string())?)
}

/// Waits until every node published a checkpoint of all its entries.
async fn settle(nodes: &[concord_node::run::RunningNode]) -> Result<(), NodeError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut done = true;
        for n in nodes {
            let size = n.node.log.size()?;
            done &= n.node.log.published_checkpoint()?.is_some_and(|(s, _)| s >= size);
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(NodeError::Config("checkpoints were not cosigned within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Changes the `[limits]` of the node in `dir`.
pub fn set_limits(
    dir: &Path,
    change: impl FnOnce(&mut concord_node::store::config::Limits),
) -> Result<(), NodeError> {
    let nd = concord_node::store::config::NodeDir::new(dir);
    let mut cfg = nd.load_config()?;
    change(&mut cfg.limits);
    nd.save_config(&cfg)
}

/// Lets a member send a peer far more requests than by default (one requester's queries, every
/// vote and the witness traffic go to every member): the benchmarks measure the work, not the
/// rate limit.
pub fn unlimited_peer_rate(limits: &mut concord_node::store::config::Limits) {
    limits.peer_requests_per_sec = 1000;
    limits.peer_burst = 1000;
}

/// A duration in milliseconds, with fractions.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Figures of `concord bench log`.
#[derive(Clone, Debug)]
pub struct LogBenchReport {
    /// Baseline in the same run: plain SQLite inserts of the same entries, one durable
    /// transaction each, no Merkle tree (appends per second).
    pub baseline: f64,
    /// (writers, appends, appends per second, p50, p99)
    pub appends: Vec<(usize, usize, f64, Duration, Duration)>,
    /// Checkpoint-to-cosigned latencies with two witnesses, each append made as soon as the
    /// one before was published (a steady stream: rounds are `MIN_ROUND_INTERVAL` apart).
    pub cosigned: Vec<Duration>,
    /// The same, each append made after a quiet pause longer than `MIN_ROUND_INTERVAL` (a lone
    /// entry).
    pub cosigned_alone: Vec<Duration>,
    /// (leaves, samples, p50, p99)
    pub proofs: Vec<(u64, usize, Duration, Duration)>,
}

/// Durable appends with `writers` concurrent writers, `total` appends in all.
async fn appends(
    dir: &Path,
    writers: usize,
    total: usize,
) -> Result<(usize, usize, f64, Duration, Duration), NodeError> {
    let log = concord_node::store::tlog::Log::open(&dir.join(format!("appends-{writers}.db")))?;
    let per = total / writers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let entry = format!(
                        "{{\"kind\":\"bench\",\"writer\":{w},\"n\":{i},\"pad\":\"{}\"}}",
                        "x".repeat(200)
                    );
                    let t = Instant::now();
                    log.append(entry.into_bytes()).await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, NodeError>(lat)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = lat.len();
    Ok((writers, n, n as f64 / secs, percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

/// One fsync'd SQLite transaction per entry, same settings as the log: the floor a durable log
/// without group commit starts from.
fn baseline_appends(dir: &Path, n: usize) -> Result<f64, NodeError> {
    let db = NodeError::Database;
    let conn = rusqlite::Connection::open(dir.join("baseline.db")).map_err(db)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
    conn.execute_batch("CREATE TABLE e (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)").map_err(db)?;
    let start = Instant::now();
    for i in 0..n {
        let entry = format!("{{\"kind\":\"bench\",\"writer\":0,\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(200));
        conn.execute(
            "INSERT INTO e (idx, data) VALUES (?1, ?2)",
            rusqlite::params![i as i64, entry.as_bytes()],
        )
        .map_err(db)?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Builds a log of `leaves` entries directly (a fixture, not a measurement) and times
/// inclusion proofs read from it.
fn proofs(dir: &Path, leaves: u64, samples: usize) -> Result<(u64, usize, Duration, Duration), NodeError> {
    use concord_log::merkle::{CompactRange, leaf_hash, verify_inclusion};
    let path = dir.join(format!("proofs-{leaves}.db"));
    let log = concord_node::store::tlog::Log::open(&path)?;
    {
        let mut conn = rusqlite::Connection::open(&path)?;
        let db = NodeError::Database;
        conn.pragma_update(None, "synchronous", "OFF").map_err(db)?;
        let mut range = CompactRange::default();
        let mut i = 0u64;
        while i < leaves {
            let tx = conn.transaction().map_err(db)?;
            {
                let mut e =
                    tx.prepare_cached("INSERT INTO log_entries (idx, data) VALUES (?1, ?2)").map_err(db)?;
                let mut n = tx
                    .prepare_cached("INSERT INTO log_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")
                    .map_err(db)?;
                let end = (i + 200_000).min(leaves);
                while i < end {
                    let data = i.to_be_bytes();
                    e.execute(rusqlite::params![i as i64, data.as_slice()]).map_err(db)?;
                    for (level, index, hash) in range.append(leaf_hash(&data)) {
                        n.execute(rusqlite::params![level, index as i64, hash.as_slice()]).map_err(db)?;
                    }
                    i += 1;
                }
            }
            tx.commit().map_err(db)?;
        }
    }
    let root = log.root(leaves)?;
    let mut rng = SplitMix::new(leaves);
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let index = rng.below(leaves);
        let t = Instant::now();
        let proof = log.inclusion_proof(index, leaves)?;
        lat.push(t.elapsed());
        let proof: Vec<Vec<u8>> = proof.iter().map(|h| h.to_vec()).collect();
        verify_inclusion(index, leaves, &leaf_hash(&index.to_be_bytes()), &proof, &root)?;
    }
    Ok((leaves, samples, percentile(&lat, 0.5), percentile(&lat, 0.99)))
}

/// Time from an append to a published checkpoint cosigned by both witnesses: appends back to
/// back, then appends after a quiet pause.
async fn cosigning(
    dir: &Path,
    port_base: u16,
    rounds: usize,
) -> Result<(Vec<Duration>, Vec<Duration>), NodeError> {
    let ids = ["alpha", "bravo", "charlie"];
    let mut specs = Vec::new();
    for id in ids {
        let folder = dir.join("cosign-data").join(id);
        std::fs::create_dir_all(&folder).map_err(|e| NodeError::io(&folder, e))?;
        let file = folder.join("tiny.csv");
        std::fs::write(&file, "x\n1\n").map_err(|e| NodeError::io(&file, e))?;
        specs.push(MemberSpec {
            id: id.into(),
            name: id.into(),
            jurisdiction: id.to_uppercase(),
            files: vec![file],
        });
    }
    let members = setup(&dir.join("cosign"), "bench", &specs, vec![], port_base).await?;
    let nodes = start_all(&members).await?;
    let log = nodes[0].node.log.clone();
    let (mut lat, mut alone) = (Vec::new(), Vec::new());
    let pause = concord_node::node::witness::MIN_ROUND_INTERVAL + Duration::from_millis(50);
    let result = async {
        for i in 0..2 * rounds {
            if i >= rounds {
                tokio::time::sleep(pause).await;
            }
            let t = Instant::now();
            let index = log.append(format!("{{\"kind\":\"bench\",\"n\":{i}}}").into_bytes()).await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if log.published_checkpoint()?.is_some_and(|(s, _)| s > index) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(NodeError::Config("a checkpoint was not cosigned within 30 s".into()));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if i < rounds { &mut lat } else { &mut alone }.push(t.elapsed());
        }
        Ok(())
    }
    .await;
    for n in nodes {
        n.stop().await;
    }
    result?;
    Ok((lat, alone))
}

/// `concord bench log`.
pub async fn log(
    dir: &Path,
    proof_sizes: &[u64],
    port_base: u16,
    progress: &dyn Fn(&str),
) -> Result<LogBenchReport, NodeError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    progress("baseline: one durable SQLite transaction per insert");
    let baseline = baseline_appends(dir, 2_000)?;
    let mut report = LogBenchReport {
        baseline,
        appends: vec![],
        cosigned: vec![],
        cosigned_alone: vec![],
        proofs: vec![],
    };
    for (writers, total) in [(1, 2_000), (8, 16_000), (64, 64_000)] {
        progress(&format!("durable appends with {writers} writers"));
        report.appends.push(appends(dir, writers, total).await?);
    }
    progress("checkpoint-to-cosigned latency with two witnesses");
    (report.cosigned, report.cosigned_alone) = cosigning(dir, port_base, 30).await?;
    for &leaves in proof_sizes {
        progress(&format!("building a log of {leaves} leaves for proof timings"));
        let d = dir.to_owned();
        report.proofs.push(tokio::task::spawn_blocking(move || proofs(&d, leaves, 2_000)).await??);
    }
    Ok(report)
}

impl LogBenchReport {
    /// Median and 99th percentile of the time from an append to a checkpoint cosigned by both
    /// witnesses: appends back to back, and lone appends.
    pub fn cosigned_percentiles(&self) -> [(Duration, Duration); 2] {
        [&self.cosigned, &self.cosigned_alone].map(|l| (percentile(l, 0.5), percentile(l, 0.99)))
    }
}
