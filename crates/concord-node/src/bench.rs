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

use crate::NodeError;
use crate::demo::{MemberSpec, SplitMix, api_query, setup, start_all};

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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
