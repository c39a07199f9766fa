//! `concord bench tpch`: TPC-H queries federated over three members against the same SQL over
//! the pooled tables in one DataFusion context, in the same run.
//!
//! The data is what `tpchgen-cli parquet` writes (real TPC-H types: `decimal(15,2)`, dates,
//! text). `lineitem` and `orders` are split over alpha, bravo and charlie by order key
//! (`orderkey % 3`, so a line item lives with its order); `customer`, `nation`, `region`, `part`
//! and `supplier` are public reference tables held by charlie alone. Every dataset is under a
//! public policy (every column plain, rows readable by every member), and each table is a
//! shared schema, so the queries name tables as TPC-H does. Alpha's analyst asks, through
//! alpha's local API. The answers are written as Parquet for `bench/tpch.py`, which checks them
//! against DuckDB's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_charter::{SchemaColumn, SharedSchema};
use concord_node::NodeError;
use concord_query::QueryError;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use serde::Serialize;

use crate::demo::{DemoMember, MemberSpec, api_query, setup, start_all};

/// The members; the last one also holds the reference tables.
const MEMBERS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Tables split over the members by order key, with their key column.
const SPLIT: [(&str, &str); 2] = [("lineitem", "l_orderkey"), ("orders", "o_orderkey")];

/// Reference tables, held whole by the last member.
const REFERENCE: [&str; 5] = ["customer", "nation", "region", "part", "supplier"];

/// The TPC-H queries run, by name, with the substitution parameters of the specification's
/// validation run. Queries with a LIMIT order by a unique key last, so that ties cannot make
/// two correct answers differ.
pub const QUERIES: [(&str, &str); 8] = [
    (
        "q1",
        "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base_price, \
         sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price, \
         sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, avg(l_quantity) AS avg_qty, \
         avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc, count(*) AS count_order \
         FROM lineitem WHERE l_shipdate <= DATE '1998-09-02' \
         GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
    ),
    (
        "q3",
        "SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate, o_shippriority \
         FROM customer, orders, lineitem \
         WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey \
         AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15' \
         GROUP BY l_orderkey, o_orderdate, o_shippriority \
         ORDER BY revenue DESC, o_orderdate, l_orderkey LIMIT 10",
    ),
    (
        "q5",
        "SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue \
         FROM customer, orders, lineitem, supplier, nation, region \
         WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey \
         AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey \
         AND r_name = 'ASIA' AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < DATE '1995-01-01' \
         GROUP BY n_name ORDER BY revenue DESC, n_name",
    ),
    (
        "q6",
        "SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem \
         WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' \
         AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
    ),
    (
        "q10",
        "SELECT c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) AS revenue, c_acctbal, n_name, \
         c_address, c_phone, c_comment \
         FROM customer, orders, lineitem, nation \
         WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
         AND o_orderdate >= DATE '1993-10-01' AND o_orderdate < DATE '1994-01-01' \
         AND l_returnflag = 'R' AND c_nationkey = n_nationkey \
         GROUP BY c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment \
         ORDER BY revenue DESC, c_custkey LIMIT 20",
    ),
    (
        "q12",
        "SELECT l_shipmode, \
         sum(CASE WHEN o_orderpriority = '1-URGENT' OR o_orderpriority = '2-HIGH' THEN 1 ELSE 0 END) AS high_line_count, \
         sum(CASE WHEN o_orderpriority <> '1-URGENT' AND o_orderpriority <> '2-HIGH' THEN 1 ELSE 0 END) AS low_line_count \
         FROM orders, lineitem \
         WHERE o_orderkey = l_orderkey AND l_shipmode IN ('MAIL', 'SHIP') AND l_commitdate < l_receiptdate \
         AND l_shipdate < l_commitdate AND l_receiptdate >= DATE '1994-01-01' AND l_receiptdate < DATE '1995-01-01' \
         GROUP BY l_shipmode ORDER BY l_shipmode",
    ),
    (
        "q14",
        "SELECT 100.00 * sum(CASE WHEN p_type LIKE 'PROMO%' THEN l_extendedprice * (1 - l_discount) ELSE 0 END) \
         / sum(l_extendedprice * (1 - l_discount)) AS promo_revenue \
         FROM lineitem, part \
         WHERE l_partkey = p_partkey AND l_shipdate >= DATE '1995-09-01' AND l_shipdate < DATE '1995-10-01'",
    ),
    (
        "q19",
        "SELECT sum(l_extendedprice * (1 - l_discount)) AS revenue FROM lineitem, part \
         WHERE (p_partkey = l_partkey AND p_brand = 'Brand#12' \
         AND p_container IN ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG') AND l_quantity >= 1 AND l_quantity <= 11 \
         AND p_size BETWEEN 1 AND 5 AND l_shipmode IN ('AIR', 'AIR REG') AND l_shipinstruct = 'DELIVER IN PERSON') \
         OR (p_partkey = l_partkey AND p_brand = 'Brand#23' \
         AND p_container IN ('MED BAG', 'MED BOX', 'MED PKG', 'MED PACK') AND l_quantity >= 10 AND l_quantity <= 20 \
         AND p_size BETWEEN 1 AND 10 AND l_shipmode IN ('AIR', 'AIR REG') AND l_shipinstruct = 'DELIVER IN PERSON') \
         OR (p_partkey = l_partkey AND p_brand = 'Brand#34' \
         AND p_container IN ('LG CASE', 'LG BOX', 'LG PACK', 'LG PKG') AND l_quantity >= 20 AND l_quantity <= 30 \
         AND p_size BETWEEN 1 AND 15 AND l_shipmode IN ('AIR', 'AIR REG') AND l_shipinstruct = 'DELIVER IN PERSON')",
    ),
];

/// What `concord bench tpch` is given.
#[derive(Clone, Debug)]
pub struct TpchOptions {
    /// The pooled tables as `tpchgen-cli parquet` wrote them: `lineitem.parquet`, `orders.parquet`,
    /// and the reference tables.
    pub data: PathBuf,
    /// Folder for the members' files and nodes and the answers; wiped at the start of a run.
    pub dir: PathBuf,
    /// Timed runs of each query, after one untimed warm-up.
    pub iterations: usize,
    /// First of the ports the members listen on.
    pub port_base: u16,
    /// Only the queries with these names (all of [`QUERIES`] when empty).
    pub only: Vec<String>,
}

/// Figures and outcome of one query.
#[derive(Clone, Debug, Serialize)]
pub struct QueryRun {
    /// The query's name (`q1`).
    pub name: String,
    /// Wall-clock milliseconds of each timed federated run, through alpha's local API.
    pub federated_ms: Vec<f64>,
    /// Wall-clock milliseconds of each timed run over the pooled tables, in one DataFusion
    /// context, results collected.
    pub pooled_ms: Vec<f64>,
    /// Rows of the answer.
    pub rows: usize,
    /// Why the federation did not answer, in its own words; `None` when it did.
    pub not_answered: Option<String>,
    /// The first difference between the federated and the pooled answer; `None` when equal.
    pub differs: Option<String>,
    /// Where the federated answer is, as Parquet.
    pub federated_answer: Option<PathBuf>,
    /// Where the pooled answer is, as Parquet.
    pub pooled_answer: Option<PathBuf>,
}

/// Figures of a run, as `timings.json` holds them.
#[derive(Clone, Debug, Serialize)]
pub struct TpchReport {
    /// Rows of each table, pooled.
    pub tables: Vec<(String, usize)>,
    /// One entry per query run, in the order of [`QUERIES`].
    pub queries: Vec<QueryRun>,
}

/// Runs the benchmark; `progress` hears what is going on. The answers and `timings.json` go
/// under `opts.dir`.
pub async fn tpch(opts: &TpchOptions, progress: &dyn Fn(&str)) -> Result<TpchReport, NodeError> {
    let queries: Vec<(&str, &str)> = QUERIES
        .iter()
        .copied()
        .filter(|(n, _)| opts.only.is_empty() || opts.only.iter().any(|o| o == n))
        .collect();
    if queries.is_empty() {
        let names: Vec<&str> = QUERIES.iter().map(|(n, _)| *n).collect();
        return Err(NodeError::Config(format!("no such query; the queries are {}", names.join(", "))));
    }
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    let pooled = pooled_tables(&opts.data).await?;
    let tables = table_sizes(&pooled).await?;
    progress("splitting lineitem and orders over three members by order key");
    let specs = split_files(&pooled, &opts.data, &opts.dir.join("data")).await?;
    let schemas = schemas_of(&specs).await?;
    progress("setting up the federation");
    let members = setup(&opts.dir.join("federation"), "tpch", &specs, schemas, opts.port_base).await?;
    lift_limits(&members)?;
    let nodes = start_all(&members).await?;
    let answers = opts.dir.join("answers");
    std::fs::create_dir_all(&answers).map_err(|e| NodeError::io(&answers, e))?;
    let mut runs = Vec::new();
    let mut result = Ok(());
    for (name, sql) in queries {
        match run_query(opts, &pooled, &members[0], name, sql, &answers, progress).await {
            Ok(r) => runs.push(r),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    for n in nodes {
        n.stop().await;
    }
    result?;
    let report = TpchReport { tables, queries: runs };
    let path = opts.dir.join("timings.json");
    let text = serde_json::to_vec_pretty(&report)
        .map_err(|source| NodeError::Encode { what: "the benchmark's timings", source })?;
    std::fs::write(&path, text).map_err(|e| NodeError::io(&path, e))?;
    Ok(report)
}

/// Every table of `data` in one DataFusion context.
async fn pooled_tables(data: &Path) -> Result<SessionContext, NodeError> {
    let ctx = SessionContext::new();
    for table in SPLIT.iter().map(|(t, _)| *t).chain(REFERENCE) {
        let file = data.join(format!("{table}.parquet"));
        if !file.is_file() {
            return Err(NodeError::Config(format!(
                "{} is missing: generate the tables with `tpchgen-cli parquet -s SF --output-dir {}`",
                file.display(),
                data.display()
            )));
        }
        let path =
            file.to_str().ok_or_else(|| NodeError::Config(format!("{} is not UTF-8", file.display())))?;
        ctx.register_parquet(table, path, ParquetReadOptions::default()).await.map_err(QueryError::plan)?;
    }
    Ok(ctx)
}

async fn table_sizes(pooled: &SessionContext) -> Result<Vec<(String, usize)>, NodeError> {
    let mut sizes = Vec::new();
    for table in SPLIT.iter().map(|(t, _)| *t).chain(REFERENCE) {
        let n =
            pooled.table(table).await.map_err(QueryError::plan)?.count().await.map_err(QueryError::plan)?;
        sizes.push((table.to_owned(), n));
    }
    Ok(sizes)
}

/// Writes each member's share of the split tables, the reference tables at the last member, and
/// a public policy beside every file; returns the members' specs.
async fn split_files(pooled: &SessionContext, data: &Path, out: &Path) -> Result<Vec<MemberSpec>, NodeError> {
    let mut specs = Vec::new();
    for (i, id) in MEMBERS.iter().enumerate() {
        let folder = out.join(id);
        std::fs::create_dir_all(&folder).map_err(|e| NodeError::io(&folder, e))?;
        let mut files = Vec::new();
        for (table, key) in SPLIT {
            let file = folder.join(format!("{table}.parquet"));
            let path =
                file.to_str().ok_or_else(|| NodeError::Config(format!("{} is not UTF-8", file.display())))?;
            pooled
                .sql(&format!("SELECT * FROM {table} WHERE {key} % 3 = {i}"))
                .await
                .map_err(QueryError::plan)?
                .write_parquet(path, DataFrameWriteOptions::new().with_single_file_output(true), None)
                .await
                .map_err(QueryError::plan)?;
            files.push(file);
        }
        if i == MEMBERS.len() - 1 {
            for table in REFERENCE {
                let file = folder.join(format!("{table}.parquet"));
                let from = data.join(format!("{table}.parquet"));
                std::fs::copy(&from, &file).map_err(|e| NodeError::io(&from, e))?;
                files.push(file);
            }
        }
        for f in &files {
            write_public_policy(f).await?;
        }
        specs.push(MemberSpec {
            id: (*id).into(),
            name: (*id).into(),
            jurisdiction: id.to_uppercase(),
            files,
        });
    }
    Ok(specs)
}

/// `STEM.policy.toml` beside `file`: public, every column plain, rows readable by every member.
async fn write_public_policy(file: &Path) -> Result<(), NodeError> {
    let columns = file_columns(file).await?;
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let mut text = format!("# {stem}: public, every column plain, rows readable by every member.\n");
    text.push_str("classification = \"public\"\n\n[columns]\n");
    for c in &columns {
        text.push_str(&format!("{} = \"plain\"\n", c.name));
    }
    text.push_str(
        "\n[access]\nrules = '''\n@id(\"open data\")\npermit (principal, action, resource);\n'''\n",
    );
    let policy = file.with_file_name(format!("{stem}.policy.toml"));
    std::fs::write(&policy, text).map_err(|e| NodeError::io(&policy, e))
}

/// The columns of a data file as a shared schema would hold them; a column none can hold is
/// an error naming it (TPC-H has none).
async fn file_columns(file: &Path) -> Result<Vec<SchemaColumn>, NodeError> {
    use concord_query::dataset::{DatasetFormat, column_type_of, open};
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let table = open(stem, file, DatasetFormat::Parquet, None, &Default::default()).await?;
    datafusion::catalog::TableProvider::schema(table.as_ref())
        .fields()
        .iter()
        .map(|f| {
            column_type_of(f.data_type())
                .map(|ty| SchemaColumn { name: f.name().clone(), ty, personal: false })
                .map_err(|why| {
                    NodeError::Config(format!(
                        "{}: column {} cannot be shared: it {why}",
                        file.display(),
                        f.name()
                    ))
                })
        })
        .collect()
}

/// One shared schema per table, from the first member's file that holds it.
async fn schemas_of(specs: &[MemberSpec]) -> Result<Vec<SharedSchema>, NodeError> {
    let mut schemas: Vec<SharedSchema> = Vec::new();
    for f in specs.iter().flat_map(|s| &s.files) {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        if schemas.iter().all(|s| s.name != stem) {
            let columns = file_columns(f).await?;
            schemas.push(SharedSchema { name: stem, version: 1, columns, privacy_unit: None });
        }
    }
    Ok(schemas)
}

/// Raises the limits that TPC-H's row reads meet on the default configuration: a sub-query
/// releases up to 10 million rows (Q5 reads every line item), queries may take ten minutes,
/// and a requester may call its peers as often as the benchmark does.
fn lift_limits(members: &[DemoMember]) -> Result<(), NodeError> {
    for m in members {
        crate::bench::set_limits(&m.dir, |l| {
            l.max_groups = 10_000_000;
            l.query_memory_mb = l.query_memory_mb.max(4096);
            l.query_timeout_secs = 600;
            l.subquery_timeout_secs = 600;
            l.peer_timeout_secs = 600;
            crate::bench::unlimited_peer_rate(l);
        })?;
    }
    Ok(())
}

/// Times one query federated and pooled, in turn, and keeps both answers.
async fn run_query(
    opts: &TpchOptions,
    pooled: &SessionContext,
    alpha: &DemoMember,
    name: &str,
    sql: &str,
    answers: &Path,
    progress: &dyn Fn(&str),
) -> Result<QueryRun, NodeError> {
    let mut run = QueryRun {
        name: name.into(),
        federated_ms: Vec::new(),
        pooled_ms: Vec::new(),
        rows: 0,
        not_answered: None,
        differs: None,
        federated_answer: None,
        pooled_answer: None,
    };
    let mut last = None;
    for i in 0..=opts.iterations {
        let t = Instant::now();
        let df = pooled.sql(sql).await.map_err(QueryError::plan)?;
        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
        let p = df.collect().await.map_err(QueryError::plan)?;
        let tp = t.elapsed();
        let t = Instant::now();
        let f = match api_query(&alpha.local_url, &alpha.analyst_token, sql).await {
            Ok(f) => f,
            Err(e) => {
                progress(&format!("{name}: not answered: {e}"));
                run.not_answered = Some(e.to_string());
                break;
            }
        };
        let tf = t.elapsed();
        if i > 0 {
            progress(&format!("{name} run {i}: federated {:.1} ms, pooled {:.1} ms", ms(tf), ms(tp)));
            run.federated_ms.push(ms(tf));
            run.pooled_ms.push(ms(tp));
        }
        last = Some(((f.schema, f.batches), (schema, p)));
    }
    if let Some(((fschema, federated), (pschema, pooled))) = last {
        run.rows = federated.iter().map(RecordBatch::num_rows).sum();
        run.differs = differs(&fschema, &federated, &pschema, &pooled);
        let fpath = answers.join(format!("{name}.federated.parquet"));
        let ppath = answers.join(format!("{name}.pooled.parquet"));
        write_answer(&fpath, fschema, &federated)?;
        write_answer(&ppath, pschema, &pooled)?;
        run.federated_answer = Some(fpath);
        run.pooled_answer = Some(ppath);
    }
    Ok(run)
}

/// The first difference between a federated and a pooled answer, types included.
fn differs(
    fschema: &SchemaRef,
    federated: &[RecordBatch],
    pschema: &SchemaRef,
    pooled: &[RecordBatch],
) -> Option<String> {
    let types = |s: &SchemaRef| -> Vec<String> {
        s.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect()
    };
    if types(fschema) != types(pschema) {
        return Some(format!("columns differ: federated {:?}, pooled {:?}", types(fschema), types(pschema)));
    }
    concord_query::compare::compare(federated, pooled).err()
}

fn write_answer(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<(), NodeError> {
    let file = std::fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    let pq =
        |e: datafusion::parquet::errors::ParquetError| NodeError::Config(format!("{}: {e}", path.display()));
    let mut w = ArrowWriter::try_new(file, schema, None).map_err(pq)?;
    for b in batches {
        w.write(b).map_err(pq)?;
    }
    w.close().map_err(pq)?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
