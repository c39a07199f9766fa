//! `concord bench scale`: the same GROUP BY over many rows (60 million by default) held by one
//! member as a Parquet file beside its node, as a table of a PostgreSQL server on this machine
//! (Debian's, started in the bench's folder) and as Parquet files on an Apache DataFusion
//! Ballista cluster of two executors (started in this process, on 127.0.0.1), asked by another
//! member through the real protocol; beside each, the same SQL straight to the engine
//! (DataFusion over the file, PostgreSQL over its table, a Ballista client to the cluster), so
//! that the node's share of the time shows. Every dataset holds the same rows (a formula of the
//! row number), and every answer must be equal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_node::NodeError;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;
use datafusion::arrow::array::{Decimal128Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::demo::{MemberSpec, api_query, setup, start_all};
use crate::postgres::PgServer;

/// The query, with `TABLE` for the dataset.
pub const SCALE_SQL: &str = "SELECT region, count(*) AS n, sum(qty) AS q, sum(amount) AS a FROM TABLE GROUP BY region ORDER BY region";

/// Regions of the rows: the groups of [`SCALE_SQL`].
const REGIONS: i64 = 60;

/// What `concord bench scale` is given.
#[derive(Clone, Debug)]
pub struct ScaleBenchOptions {
    /// Folder for the data, the PostgreSQL cluster and the nodes; wiped at the start of a run.
    pub dir: PathBuf,
    /// Rows of the dataset.
    pub rows: u64,
    /// Timed runs of each query, after one warm-up.
    pub iterations: usize,
    /// First of the ports: the two members take six, PostgreSQL the seventh.
    pub port_base: u16,
}

/// Parquet files the cluster's rows are split into.
const CLUSTER_FILES: u64 = 4;

/// Task slots of each of the cluster's two executors: one a core of this two-core machine.
const EXECUTOR_SLOTS: usize = 1;

/// Memory of each executor.
const EXECUTOR_MEMORY: usize = 2 << 30;

/// Times of one source.
#[derive(Clone, Debug, Default)]
pub struct SourceTimes {
    /// The SQL straight to the engine, per run.
    pub direct: Vec<Duration>,
    /// The federated query, asked by the other member, per run.
    pub federated: Vec<Duration>,
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct ScaleReport {
    /// Rows of the dataset.
    pub rows: u64,
    /// Writing the Parquet file.
    pub write_file: Duration,
    /// Loading the same rows into PostgreSQL (and analysing the table).
    pub load_postgres: Duration,
    /// The file: DataFusion over it, and the federated query.
    pub file: SourceTimes,
    /// PostgreSQL: its own run of the SQL, and the federated query.
    pub postgres: SourceTimes,
    /// The cluster: a Ballista client's run of the SQL, and the federated query.
    pub cluster: SourceTimes,
}

/// Row `g`'s values: region, quantity, amount in cents. PostgreSQL's load computes the same.
fn row(g: i64) -> (i64, i64, i64) {
    ((g * 7) % REGIONS, (g * 31) % 500, (g * 17) % 100_000)
}

/// A Parquet file of rows `first..=last` (region text, qty bigint, amount decimal(12,2)).
fn write_parquet(path: &Path, first: i64, last: i64) -> Result<(), NodeError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("qty", DataType::Int64, false),
        Field::new("amount", DataType::Decimal128(12, 2), false),
    ]));
    let names: Vec<String> = (0..REGIONS).map(|i| format!("region-{i:02}")).collect();
    let file = std::fs::File::create(path).map_err(|e| NodeError::io(path, e))?;
    let pq =
        |e: datafusion::parquet::errors::ParquetError| NodeError::Config(format!("{}: {e}", path.display()));
    let mut w = ArrowWriter::try_new(file, schema.clone(), None).map_err(pq)?;
    let mut g = first;
    while g <= last {
        let n = (last - g + 1).min(1 << 17);
        let values: Vec<(i64, i64, i64)> = (g..g + n).map(row).collect();
        let region: StringArray = values.iter().map(|v| Some(names[v.0 as usize].as_str())).collect();
        let qty: Int64Array = values.iter().map(|v| Some(v.1)).collect();
        let amount = Decimal128Array::from_iter_values(values.iter().map(|v| i128::from(v.2)))
            .with_precision_and_scale(12, 2)?;
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(region), Arc::new(qty), Arc::new(amount)])?;
        w.write(&batch).map_err(pq)?;
        g += n;
    }
    w.close().map_err(pq)?;
    Ok(())
}

/// The same rows into PostgreSQL's `events`, readable by role `reader`.
async fn load_postgres(pg: &PgServer, rows: u64, password: &str) -> Result<(), NodeError> {
    pg.execute("postgres", &format!("CREATE ROLE reader LOGIN PASSWORD '{password}'")).await?;
    pg.execute(
        "postgres",
        &format!(
            "CREATE TABLE events (region text NOT NULL, qty bigint NOT NULL, amount numeric(12,2) NOT NULL); \
             INSERT INTO events SELECT 'region-' || lpad(((g * 7) % {REGIONS})::text, 2, '0'), (g * 31) % 500, \
               ((g * 17) % 100000) / 100.0 FROM generate_series(1::bigint, {rows}::bigint) AS g; \
             GRANT SELECT ON events TO reader;"
        ),
    )
    .await?;
    pg.execute("postgres", "VACUUM ANALYZE events").await
}

/// Runs the benchmark; `progress` hears what it is doing.
pub async fn scale(opts: &ScaleBenchOptions, progress: &dyn Fn(&str)) -> Result<ScaleReport, NodeError> {
    if opts.rows == 0 || opts.iterations == 0 {
        return Err(NodeError::Config("--rows and --iterations must be at least 1".into()));
    }
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    let data = opts.dir.join("data/alpha");
    std::fs::create_dir_all(&data).map_err(|e| NodeError::io(&data, e))?;
    let file = data.join("events_file.parquet");
    progress(&format!("writing {} rows to {}", opts.rows, file.display()));
    let last = i64::try_from(opts.rows).unwrap_or(i64::MAX);
    let t = Instant::now();
    write_parquet(&file, 1, last)?;
    let write_file = t.elapsed();
    let parts = opts.dir.join("data/cluster/events");
    progress(&format!("writing the same rows as {CLUSTER_FILES} files in {}", parts.display()));
    std::fs::create_dir_all(&parts).map_err(|e| NodeError::io(&parts, e))?;
    let per = opts.rows.div_ceil(CLUSTER_FILES);
    for i in 0..CLUSTER_FILES {
        let first = i64::try_from(i * per + 1).unwrap_or(i64::MAX);
        let end = i64::try_from((i + 1) * per).unwrap_or(i64::MAX).min(last);
        if first <= end {
            write_parquet(&parts.join(format!("part-{i}.parquet")), first, end)?;
        }
    }
    progress("starting a Ballista scheduler and two executors");
    let cluster = crate::ballista::Cluster::start(2, EXECUTOR_SLOTS, EXECUTOR_MEMORY).await?;
    progress("starting PostgreSQL and loading the same rows");
    let pg = PgServer::start(&opts.dir.join("pg"), opts.port_base + 6)?;
    let password = format!("{}-reader", pg.password());
    let t = Instant::now();
    load_postgres(&pg, opts.rows, &password).await?;
    let load_postgres = t.elapsed();

    let spec = |id: &str, files: Vec<PathBuf>| MemberSpec {
        id: id.into(),
        name: format!("Member {id}"),
        jurisdiction: id.to_uppercase(),
        files,
    };
    let members = setup(
        &opts.dir,
        "scale",
        &[spec("alpha", vec![file.clone()]), spec("bravo", vec![])],
        vec![],
        opts.port_base,
    )
    .await?;
    let secret = opts.dir.join("reader-password");
    concord_node::store::config::write_private(&secret, password.as_bytes())?;
    let source = concord_source::postgres::PostgresSource {
        url: pg.url("reader", "postgres"),
        table: "events".into(),
        password: Some(concord_source::postgres::Credential::File(secret)),
    };
    let alpha = NodeDir::new(&members[0].dir);
    let spec = admin::DatasetSpec {
        name: "events_pg",
        file: Path::new(""),
        shared_schema: None,
        allow: Some("*"),
        csv: Default::default(),
        postgres: Some(source),
        ballista: None,
    };
    progress("registering the PostgreSQL table (its rows counted there)");
    admin::dataset_register(&alpha, &spec, false).await?;
    progress("registering the cluster's files (their rows counted by the cluster)");
    let on_cluster = admin::DatasetSpec {
        name: "events_cluster",
        file: &parts,
        postgres: None,
        ballista: Some(concord_source::ballista::BallistaSource { scheduler: cluster.url() }),
        ..spec
    };
    admin::dataset_register(&alpha, &on_cluster, false).await?;
    for m in &members {
        let nd = NodeDir::new(&m.dir);
        let mut cfg = nd.load_config()?;
        cfg.limits.subquery_timeout_secs = 600;
        cfg.limits.query_timeout_secs = 900;
        cfg.limits.peer_timeout_secs = 900;
        nd.save_config(&cfg)?;
    }
    let running = start_all(&members).await?;
    let engines = Engines { file: &file, pg: &pg, password: &password, cluster: &cluster, parts: &parts };
    let result = timed(opts, &members[1], &engines, progress).await;
    for r in running {
        r.stop().await;
    }
    let [file, postgres, cluster] = result?;
    Ok(ScaleReport { rows: opts.rows, write_file, load_postgres, file, postgres, cluster })
}

/// Where the same rows are, for the runs straight to each engine.
struct Engines<'a> {
    file: &'a Path,
    pg: &'a PgServer,
    password: &'a str,
    cluster: &'a crate::ballista::Cluster,
    parts: &'a Path,
}

/// `sql` in DataFusion's session `ctx`, collected.
async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, NodeError> {
    let df = ctx.sql(sql).await.map_err(concord_query::QueryError::plan)?;
    Ok(df.collect().await.map_err(concord_query::QueryError::plan)?)
}

/// The runs, interleaved: DataFusion over the file, the federated file, PostgreSQL, the
/// federated table, a Ballista client to the cluster, the federated cluster; the first of each
/// untimed. Every answer must equal the others. The times of the file, PostgreSQL and the
/// cluster, in that order.
async fn timed(
    opts: &ScaleBenchOptions,
    asker: &crate::demo::DemoMember,
    engines: &Engines<'_>,
    progress: &dyn Fn(&str),
) -> Result<[SourceTimes; 3], NodeError> {
    let Engines { file, pg, password, cluster, parts } = *engines;
    let utf8 = |p: &Path| {
        p.to_str().map(str::to_owned).ok_or_else(|| NodeError::Config("the data path is not UTF-8".into()))
    };
    let ctx = SessionContext::new();
    ctx.register_parquet("events", utf8(file)?, ParquetReadOptions::default())
        .await
        .map_err(concord_query::QueryError::plan)?;
    let remote = cluster.client()?;
    remote
        .register_parquet("events", utf8(parts)?, ParquetReadOptions::default())
        .await
        .map_err(concord_query::QueryError::plan)?;
    let mut config: tokio_postgres::Config = pg
        .url("reader", "postgres")
        .parse()
        .map_err(|e| NodeError::Config(format!("PostgreSQL URL: {e}")))?;
    config.password(password);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| NodeError::Config(format!("PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let direct_sql = SCALE_SQL.replace("TABLE", "events");
    let mut times: [SourceTimes; 3] = Default::default();
    let mut first: Option<Vec<Vec<concord_query::compare::Cell>>> = None;
    for i in 0..=opts.iterations {
        let keep = i > 0;
        let t = Instant::now();
        let local = collect(&ctx, &direct_sql).await?;
        let d = t.elapsed();
        let t = Instant::now();
        let fed_file = api_query(
            &asker.local_url,
            &asker.analyst_token,
            &SCALE_SQL.replace("TABLE", "alpha.events_file"),
        )
        .await?;
        let f = t.elapsed();
        let t = Instant::now();
        let rows = client
            .query(direct_sql.as_str(), &[])
            .await
            .map_err(|e| NodeError::Config(format!("PostgreSQL: {e}")))?;
        let p = t.elapsed();
        let t = Instant::now();
        let fed_pg =
            api_query(&asker.local_url, &asker.analyst_token, &SCALE_SQL.replace("TABLE", "alpha.events_pg"))
                .await?;
        let q = t.elapsed();
        let t = Instant::now();
        let on_cluster = collect(&remote, &direct_sql).await?;
        let c = t.elapsed();
        let t = Instant::now();
        let fed_cluster = api_query(
            &asker.local_url,
            &asker.analyst_token,
            &SCALE_SQL.replace("TABLE", "alpha.events_cluster"),
        )
        .await?;
        let k = t.elapsed();
        if rows.len() as i64 != REGIONS {
            return Err(NodeError::Config(format!("PostgreSQL gave {} groups, not {REGIONS}", rows.len())));
        }
        for (what, batches) in [
            ("DataFusion over the file", &local),
            ("the federated file", &fed_file.batches),
            ("the federated table", &fed_pg.batches),
            ("the cluster alone", &on_cluster),
            ("the federated cluster", &fed_cluster.batches),
        ] {
            let cells = concord_query::compare::cells(batches).map_err(NodeError::Config)?;
            match &first {
                None => first = Some(cells),
                Some(f) if *f == cells => {}
                Some(_) => {
                    return Err(NodeError::Config(format!("{what} answered otherwise than the others")));
                }
            }
        }
        if keep {
            for (t, direct, federated) in [(0, d, f), (1, p, q), (2, c, k)] {
                times[t].direct.push(direct);
                times[t].federated.push(federated);
            }
        }
        let ms = crate::bench::ms;
        progress(&format!(
            "run {i}: file {:.0}/{:.0} ms, PostgreSQL {:.0}/{:.0} ms, cluster {:.0}/{:.0} ms (alone/federated)",
            ms(d),
            ms(f),
            ms(p),
            ms(q),
            ms(c),
            ms(k)
        ));
    }
    Ok(times)
}
