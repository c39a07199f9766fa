//! `concord bench federated`: a GROUP BY aggregate over rows split across three members,
//! federated through the real protocol (local API, signed requests, mutual TLS, receipts) and
//! the same SQL over the pooled data in one DataFusion context, in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_charter::{ColumnType, SchemaColumn, SharedSchema};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::demo::{MemberSpec, SplitMix, api_query, setup, start_all};
use concord_node::NodeError;

/// What `concord bench federated` is given.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub dir: PathBuf,
    pub rows: usize,
    pub iterations: usize,
    pub port_base: u16,
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub rows: usize,
    pub groups: usize,
    pub pooled: Vec<Duration>,
    pub federated: Vec<Duration>,
}

pub const BENCH_SQL: &str = "SELECT region, count(*) AS n, sum(amount) AS total, avg(amount) AS mean, min(qty) AS lo, max(qty) AS hi FROM events GROUP BY region";

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

impl BenchReport {
    pub fn pooled_median(&self) -> Duration {
        median(&self.pooled)
    }
    pub fn federated_median(&self) -> Duration {
        median(&self.federated)
    }
    pub fn ratio(&self) -> f64 {
        self.federated_median().as_secs_f64() / self.pooled_median().as_secs_f64().max(1e-9)
    }
}

fn write_events(path: &Path, rows: usize, seed: u64) -> Result<(), NodeError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, true),
        Field::new("qty", DataType::Int64, true),
    ]));
    let regions: Vec<String> = (0..60).map(|i| format!("region-{i:02}")).collect();
    let file = std::fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    let pq =
        |e: datafusion::parquet::errors::ParquetError| NodeError::Config(format!("{}: {e}", path.display()));
    let mut w = ArrowWriter::try_new(file, schema.clone(), None).map_err(pq)?;
    let mut rng = SplitMix::new(seed);
    let mut left = rows;
    while left > 0 {
        let n = left.min(65_536);
        left -= n;
        let region: StringArray = (0..n).map(|_| Some(regions[rng.below(60) as usize].as_str())).collect();
        let amount: Float64Array =
            (0..n).map(|_| Some((rng.unit() * 1000.0 * 100.0).round() / 100.0)).collect();
        let qty: Int64Array = (0..n).map(|_| Some(rng.below(500) as i64)).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(region), Arc::new(amount), Arc::new(qty)])
                .map_err(|e| NodeError::Config(e.to_string()))?;
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
    let schema = SharedSchema {
        name: "events".into(),
        version: 1,
        columns: vec![
            SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
            SchemaColumn { name: "amount".into(), ty: ColumnType::Float64, personal: false },
            SchemaColumn { name: "qty".into(), ty: ColumnType::Int64, personal: false },
        ],
    };
    progress("setting up the federation");
    let members = setup(&opts.dir, "bench", &specs, vec![schema], opts.port_base).await?;
    let nodes = start_all(&members).await?;
    let pooled = SessionContext::new();
    let paths: Vec<String> = files.iter().filter_map(|p| p.to_str().map(String::from)).collect();
    let df = pooled
        .read_parquet(paths, ParquetReadOptions::default())
        .await
        .map_err(concord_query::QueryError::plan)?;
    pooled.register_table("events", df.into_view()).map_err(concord_query::QueryError::plan)?;
    let first = &members[0];
    let mut report =
        BenchReport { rows: opts.rows / 3 * 3, groups: 0, pooled: Vec::new(), federated: Vec::new() };
    let result = async {
        // One warm-up of each, then alternate so that both see the same machine state.
        for i in 0..=opts.iterations {
            let t = Instant::now();
            let p = pooled.sql(BENCH_SQL).await.map_err(concord_query::QueryError::plan)?;
            let p = p.collect().await.map_err(concord_query::QueryError::plan)?;
            let tp = t.elapsed();
            let t = Instant::now();
            let f = api_query(&first.local_url, &first.analyst_token, BENCH_SQL).await?;
            let tf = t.elapsed();
            // Let the nodes publish and cosign the checkpoints of this query's log entries
            // before the next timing, so that neither side is timed against that work.
            settle(&nodes).await?;
            let groups: usize = f.batches.iter().map(|b| b.num_rows()).sum();
            let pooled_groups: usize = p.iter().map(|b| b.num_rows()).sum();
            if groups != pooled_groups {
                return Err(NodeError::Config(format!(
                    "federated gave {groups} groups, pooled {pooled_groups}"
                )));
            }
            report.groups = groups;
            if i > 0 {
                progress(&format!("run {i}: pooled {:.1} ms, federated {:.1} ms", ms(tp), ms(tf)));
                report.pooled.push(tp);
                report.federated.push(tf);
            }
        }
        Ok::<_, NodeError>(())
    }
    .await;
    for n in nodes {
        n.stop().await;
    }
    result?;
    Ok(report)
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
    /// Checkpoint-to-cosigned latencies with two witnesses.
    pub cosigned: Vec<Duration>,
    /// (leaves, samples, p50, p99)
    pub proofs: Vec<(u64, usize, Duration, Duration)>,
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
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
        lat.extend(t.await.map_err(|e| NodeError::State(e.to_string()))??);
    }
    let secs = start.elapsed().as_secs_f64();
    let n = lat.len();
    Ok((writers, n, n as f64 / secs, percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)))
}

/// One fsync'd SQLite transaction per entry, same settings as the log: the floor a durable log
/// without group commit starts from.
fn baseline_appends(dir: &Path, n: usize) -> Result<f64, NodeError> {
    let db = |e: rusqlite::Error| NodeError::State(e.to_string());
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
        let mut conn = rusqlite::Connection::open(&path).map_err(|e| NodeError::State(e.to_string()))?;
        let db = |e: rusqlite::Error| NodeError::State(e.to_string());
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
    Ok((leaves, samples, percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)))
}

/// Time from an append to a published checkpoint cosigned by both witnesses.
async fn cosigning(dir: &Path, port_base: u16, rounds: usize) -> Result<Vec<Duration>, NodeError> {
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
    let mut lat = Vec::new();
    let result = async {
        for i in 0..rounds {
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
            lat.push(t.elapsed());
        }
        Ok(())
    }
    .await;
    for n in nodes {
        n.stop().await;
    }
    result?;
    Ok(lat)
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
    let mut report = LogBenchReport { baseline, appends: vec![], cosigned: vec![], proofs: vec![] };
    for (writers, total) in [(1, 2_000), (8, 16_000), (64, 64_000)] {
        progress(&format!("durable appends with {writers} writers"));
        report.appends.push(appends(dir, writers, total).await?);
    }
    progress("checkpoint-to-cosigned latency with two witnesses");
    report.cosigned = cosigning(dir, port_base, 30).await?;
    for &leaves in proof_sizes {
        progress(&format!("building a log of {leaves} leaves for proof timings"));
        let d = dir.to_owned();
        report.proofs.push(
            tokio::task::spawn_blocking(move || proofs(&d, leaves, 2_000))
                .await
                .map_err(|e| NodeError::State(e.to_string()))??,
        );
    }
    Ok(report)
}

impl LogBenchReport {
    pub fn cosigned_p50(&self) -> Duration {
        percentile(&mut self.cosigned.clone(), 0.5)
    }
    pub fn cosigned_p99(&self) -> Duration {
        percentile(&mut self.cosigned.clone(), 0.99)
    }
}
