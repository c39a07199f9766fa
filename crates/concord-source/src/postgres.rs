//! A PostgreSQL table as a dataset.
//!
//! The registry keeps a [`PostgresSource`]: the database's URL without a password, the table,
//! and where the password is (an environment variable's name or a file's path), never the
//! password itself. [`open`] connects, reads the table's columns from the catalog, maps their
//! types to Arrow as a file's would be (`numeric(p,s)` as an exact decimal; a column no shared
//! schema can hold is left out and named) and returns a [`RemoteTable`] whose engine is a
//! [`PgEngine`].
//!
//! The engine runs SQL made by DataFusion's unparser (PostgreSQL dialect) from the owner's
//! analysed plan, made [`portable`] first, over the table as a CTE that casts its columns to the
//! dataset's types (`WITH "cases" AS NOT MATERIALIZED (SELECT CAST(..) ..)`, inlined by the
//! planner). Each output column is read in a form the client decodes exactly (decimals as their
//! text, dates as days, times as microseconds) and cast to the plan's own type.
//!
//! Every session is read-only (`default_transaction_read_only`), bounded in time
//! (`statement_timeout`, the owner's sub-query timeout) and named `concord` in
//! `pg_stat_activity`. Connections are made per plan: a failed one never poisons another.
//!
//! Invariant: the node never sends PostgreSQL a password it did not read from the place the
//! registry names, and never writes one to the registry, a log line or an error.

use std::fmt;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use concord_charter::SharedSchema;
use concord_query::dataset::check_conformance;
use concord_query::remote::{Engine, RemoteTable, portable};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::tree_node::{TreeNode as _, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::sql::sqlparser::ast;
use datafusion::sql::unparser::Unparser;
use datafusion::sql::unparser::dialect::{Dialect, DistinctFromStyle, IntervalStyle, PostgreSqlDialect};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Row};

use crate::SourceError;

/// Rows per Arrow batch read from PostgreSQL.
const BATCH_ROWS: usize = 8192;

/// Where a dataset in PostgreSQL is, as the registry keeps it: no password in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSource {
    /// `postgresql://user@host:port/database` (or libpq's `key=value` form), without a password.
    pub url: String,
    /// The table (or view), as PostgreSQL reads a name: `cases`, `public.cases`, `"Cases"`.
    pub table: String,
    /// Where the password is, if the database asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Credential>,
}

/// Where a password is kept: never on the command line, never in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// An environment variable of the node's process.
    Env(String),
    /// A file only its owner can read (mode 0600 or 0400); its first line is the password.
    File(std::path::PathBuf),
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(v) => write!(f, "environment variable {v}"),
            Self::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// A password, kept out of every `Debug` and `Display`.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// A password as read from its [`Credential`].
    pub fn new(p: String) -> Self {
        Self(p)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// The database a URL names, checked: no password in it, a host on this machine (loopback or a
/// Unix socket; the connection is not encrypted), a user.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, SourceError> {
    let config = tokio_postgres::Config::from_str(url).map_err(|e| {
        SourceError::Config(format!(
            "--postgres takes a PostgreSQL URL such as postgresql://concord@127.0.0.1:5432/stats: {e}"
        ))
    })?;
    if config.get_password().is_some() {
        return Err(SourceError::Config(
            "the PostgreSQL URL holds a password; take it out and give it with --password-env VAR or --password-file \
             FILE (mode 0600), so that it is never on a command line, in the registry or in a log"
                .into(),
        ));
    }
    if config.get_user().is_none() {
        return Err(SourceError::Config(
            "the PostgreSQL URL names no user: write postgresql://USER@HOST:PORT/DATABASE".into(),
        ));
    }
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        return Err(SourceError::Config(
            "the PostgreSQL URL names no host: write postgresql://USER@HOST:PORT/DATABASE".into(),
        ));
    }
    if let Some(addr) = config.get_hostaddrs().iter().find(|a| !a.is_loopback()) {
        return Err(SourceError::Config(format!(
            "PostgreSQL address {addr} is not on this machine; connections to PostgreSQL are not encrypted yet, so \
             the node reads a database over loopback or a Unix socket only"
        )));
    }
    for h in hosts {
        if let tokio_postgres::config::Host::Tcp(name) = h
            && !crate::loopback(name)
        {
            return Err(SourceError::Config(format!(
                "PostgreSQL host {name} is not on this machine; connections to PostgreSQL are not encrypted yet, \
                 so the node reads a database over loopback (127.0.0.1, ::1) or a Unix socket only: run the node \
                 beside the database, or tunnel it"
            )));
        }
    }
    Ok(config)
}

/// The database of a config, for messages: `user@host:port/db`, never a password.
fn target_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().or(config.get_user()).unwrap_or("?")
    )
}

/// One column of the table: its name and the type the dataset reads it as.
#[derive(Clone, Debug)]
struct PgColumn {
    name: String,
    arrow: DataType,
}

impl PgColumn {
    /// The column as the dataset reads it, in SQL: cast to its type, and a value Arrow cannot
    /// hold (an infinite date or timestamp, one past year 290000, a numeric NaN) as NULL.
    fn select(&self) -> String {
        let c = ident(&self.name);
        let cast = |e: &str| match pg_type_of(&self.arrow) {
            Some(t) => format!("CAST({e} AS {t})"),
            None => e.to_owned(),
        };
        let value = match &self.arrow {
            DataType::Date32 | DataType::Date64 => {
                format!("CASE WHEN pg_catalog.isfinite({c}) THEN {} END", cast(&c))
            }
            DataType::Timestamp(..) => format!(
                "CASE WHEN pg_catalog.isfinite({c}) AND {c} < CAST('290000-01-01' AS TIMESTAMP) THEN {} END",
                cast(&c)
            ),
            DataType::Decimal128(..) | DataType::Decimal256(..) => {
                format!("NULLIF({}, CAST('NaN' AS NUMERIC))", cast(&c))
            }
            _ => cast(&c),
        };
        format!("{value} AS {c}")
    }
}

/// A PostgreSQL table that runs owners' plans: the connection settings (password included,
/// never shown), the table's qualified name and its columns.
pub struct PgEngine {
    config: tokio_postgres::Config,
    target: String,
    /// The table's name as PostgreSQL quotes it, schema included.
    relation: String,
    columns: Vec<PgColumn>,
}

impl fmt::Debug for PgEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEngine").field("target", &self.target).field("relation", &self.relation).finish()
    }
}

/// A table as registration finds it: the dataset's schema, the columns left out, the rows.
pub struct Described {
    /// The dataset's columns, with their shared types where a shared schema names them.
    pub schema: SchemaRef,
    /// The table's columns no shared schema can hold, each with its type and why.
    pub left_out: Vec<String>,
    /// The rows `count(*)` found.
    pub rows: u64,
    /// The table's name as PostgreSQL quotes it, its schema included (`public.cases`): what the
    /// registry keeps, so that a later `search_path` cannot make it another table.
    pub relation: String,
}

/// The settings of a connection to `source`'s database: `password` given, read-only, every
/// statement within `timeout`.
fn settings(
    source: &PostgresSource,
    password: Option<Password>,
    timeout: Duration,
    role: Session,
) -> Result<tokio_postgres::Config, SourceError> {
    let mut config = parse_url(&source.url)?;
    if let Some(Password(p)) = password {
        config.password(p);
    }
    let millis = timeout.as_millis().max(1);
    // Read-only and bounded in time; literals, time zones and the text of values as the node's
    // SQL assumes them; functions and operators from pg_catalog only, so that no one with CREATE
    // on a schema can plant an overload the node's plans would call.
    config
        .application_name("concord")
        .connect_timeout(Duration::from_secs(10).min(timeout.max(Duration::from_secs(1))))
        .options(format!(
            "-c default_transaction_read_only=on -c statement_timeout={millis}{} \
             -c standard_conforming_strings=on -c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=3",
            match role {
                // The table's name as the user gave it resolves on the user's own search path.
                Session::Register => "",
                Session::Plans => " -c search_path=pg_catalog",
            }
        ));
    Ok(config)
}

/// What a session is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    /// Registration: the table's name resolved, its columns read, its rows counted.
    Register,
    /// Owners' plans over the table, by its qualified name.
    Plans,
}

/// The columns of a table (`$1`, its qualified name): name, type, type modifier, type's name.
const COLUMNS_SQL: &str = "SELECT a.attname::text, a.atttypid, a.atttypmod, \
     pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// Why the table's columns (rows of [`COLUMNS_SQL`]) no longer hold the registered `columns`,
/// if they do not: a column gone, or of a type its registered type cannot hold without loss.
fn changed(rows: &[Row], columns: &[PgColumn]) -> Option<String> {
    for c in columns {
        let Some(r) = rows.iter().find(|r| r.get::<_, String>(0) == c.name) else {
            return Some(format!("column {} is gone", c.name));
        };
        let (oid, typmod, pg_type): (u32, i32, String) = (r.get(1), r.get(2), r.get(3));
        let holds = arrow_of(oid, typmod).ok().is_some_and(|own| {
            own == c.arrow
                || concord_query::dataset::column_type_of(&c.arrow)
                    .is_ok_and(|t| concord_query::dataset::fits(&own, &t))
        });
        if !holds {
            return Some(format!(
                "column {} is now {pg_type}, which its registered type {} cannot hold",
                c.name, c.arrow
            ));
        }
    }
    None
}

/// Connects to the database of `source` with `password`, reads the columns of its table and
/// maps them (with `shared`, its shared columns as the shared types, which they must hold
/// without loss), and counts its rows: what `concord dataset add --postgres` registers.
pub async fn describe(
    dataset: &str,
    source: &PostgresSource,
    password: Option<Password>,
    shared: Option<&SharedSchema>,
    timeout: Duration,
) -> Result<Described, SourceError> {
    let config = settings(source, password, timeout, Session::Register)?;
    let target = target_of(&config);
    let client = connect(&config, &target).await?;
    let relation = relation_of(&client, &config, &target, &source.table).await?;
    let rows = client
        .query(COLUMNS_SQL, &[&relation])
        .await
        .map_err(|e| pg_error(&target, "cannot read the table's columns", e))?;
    let mut fields = Vec::new();
    let mut left_out = Vec::new();
    for r in &rows {
        let (name, type_oid, typmod, pg_type): (String, u32, i32, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        match arrow_of(type_oid, typmod) {
            Ok(arrow) => fields.push(Field::new(name, arrow, true)),
            Err(why) => left_out.push(format!("{name} ({pg_type}): {why}")),
        }
    }
    if let Some(shared) = shared {
        check_conformance(dataset, &Schema::new(fields.clone()), shared, true)?;
        for f in &mut fields {
            if let Some(s) = shared.columns.iter().find(|s| s.name == *f.name()) {
                let want = concord_query::dataset::arrow_type(&s.ty);
                if pg_type_of(&want).is_none() {
                    return Err(SourceError::Table {
                        table: source.table.clone(),
                        reason: format!(
                            "shared schema {} wants column {} as {}, a type PostgreSQL has no counterpart of",
                            shared.name, s.name, s.ty
                        ),
                    });
                }
                *f = Field::new(f.name(), want, true);
            }
        }
    }
    let count = client
        .query_one(&format!("SELECT count(*) FROM {relation}"), &[])
        .await
        .map_err(|e| pg_error(&target, &format!("cannot count the rows of {relation}"), e))?;
    let rows: i64 = count.get(0);
    Ok(Described { schema: Arc::new(Schema::new(fields)), left_out, rows: rows.max(0) as u64, relation })
}

/// The table's name as PostgreSQL quotes it, schema included, if the user can see it.
async fn relation_of(
    client: &tokio_postgres::Client,
    config: &tokio_postgres::Config,
    target: &str,
    table: &str,
) -> Result<String, SourceError> {
    let found = client
        .query_opt(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = pg_catalog.to_regclass($1) AND c.relkind IN ('r', 'v', 'm', 'p', 'f')",
            &[&table],
        )
        .await
        .map_err(|e| pg_error(target, "cannot read the catalog", e))?;
    match found {
        Some(r) => Ok(r.get(0)),
        None => Err(SourceError::Table {
            table: table.to_owned(),
            reason: format!(
                "{target} has no table or view of that name that user {} can see; check the name \
                 (schema.table) and the user's USAGE on its schema",
                config.get_user().unwrap_or("?")
            ),
        }),
    }
}

/// The dataset's table over `source`, with the columns of `schema` as registered (each cast
/// in PostgreSQL to its type there). Nothing connects until a plan runs, so a database that is
/// down when the node starts serves again once it is up.
pub fn table(
    source: &PostgresSource,
    password: Option<Password>,
    schema: SchemaRef,
    timeout: Duration,
) -> Result<Arc<RemoteTable>, SourceError> {
    let config = settings(source, password, timeout, Session::Plans)?;
    let target = target_of(&config);
    let columns = schema
        .fields()
        .iter()
        .map(|f| PgColumn { name: f.name().clone(), arrow: f.data_type().clone() })
        .collect();
    let relation = quoted_relation(&source.table);
    let engine = Arc::new(PgEngine { config, target, relation, columns });
    Ok(Arc::new(RemoteTable::new(schema, engine, Vec::new())))
}

/// A table name as given (`cases`, `public.cases`, `"My Table"`) as SQL reads it safely: each
/// dotted part quoted, an unquoted one folded to lower case as PostgreSQL folds it.
fn quoted_relation(table: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = table.trim();
    while !rest.is_empty() {
        if let Some(q) = rest.strip_prefix('"') {
            // A quoted part runs to the next lone quote ("" is a quote inside it).
            let bytes = q.as_bytes();
            let mut i = 0;
            while i < bytes.len() && !(bytes[i] == b'"' && bytes.get(i + 1) != Some(&b'"')) {
                i += if bytes[i] == b'"' { 2 } else { 1 };
            }
            let end = i.min(q.len());
            parts.push(ident(&q[..end].replace("\"\"", "\"")));
            rest = q.get(end + 1..).unwrap_or("").trim_start_matches('.');
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            parts.push(ident(&rest[..end].to_lowercase()));
            rest = rest.get(end + 1..).unwrap_or("");
        }
    }
    parts.join(".")
}

async fn connect(
    config: &tokio_postgres::Config,
    target: &str,
) -> Result<tokio_postgres::Client, SourceError> {
    let (client, connection) =
        config.connect(NoTls).await.map_err(|e| pg_error(target, "cannot connect", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

fn pg_error(target: &str, what: &str, e: tokio_postgres::Error) -> SourceError {
    // The state code only: the server's message may quote a value of the data.
    if let Some(db) = e.as_db_error() {
        tracing::warn!(target: "concord_source::postgres", database = %target, sqlstate = db.code().code(), "{what}");
    }
    SourceError::Postgres {
        target: target.to_owned(),
        reason: format!("{what}: {}", in_words(&e)),
        source: Some(e),
    }
}

/// The server's message (and hint) where there is one, else the client's.
fn in_words(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} ({h})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

/// The Arrow type a column of PostgreSQL type `oid` (with its type modifier) is read as, or why
/// it cannot be.
fn arrow_of(oid: u32, typmod: i32) -> Result<DataType, String> {
    let t = Type::from_oid(oid);
    Ok(match t {
        Some(Type::BOOL) => DataType::Boolean,
        Some(Type::INT2) => DataType::Int16,
        Some(Type::INT4) => DataType::Int32,
        Some(Type::INT8) => DataType::Int64,
        Some(Type::FLOAT4) => DataType::Float32,
        Some(Type::FLOAT8) => DataType::Float64,
        Some(Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME) => DataType::Utf8,
        Some(Type::BYTEA) => DataType::Binary,
        Some(Type::DATE) => DataType::Date32,
        Some(Type::TIMESTAMP) => DataType::Timestamp(TimeUnit::Microsecond, None),
        Some(Type::TIMESTAMPTZ) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Some(Type::TIME) => DataType::Time64(TimeUnit::Microsecond),
        Some(Type::NUMERIC) => {
            if typmod < 4 {
                return Err(
                    "a numeric without precision and scale can hold any number of digits, which no exact \
                            decimal holds; declare it numeric(p,s), or register a view that casts it"
                        .into(),
                );
            }
            let m = typmod - 4;
            let (p, s) = ((m >> 16) & 0xffff, m & 0xffff);
            match (u8::try_from(p), i8::try_from(s)) {
                (Ok(p), Ok(s)) if s >= 0 && i16::from(s) <= i16::from(p) && p <= 38 => {
                    DataType::Decimal128(p, s)
                }
                (Ok(p), Ok(s)) if s >= 0 && i16::from(s) <= i16::from(p) && p <= 76 => {
                    DataType::Decimal256(p, s)
                }
                _ => return Err("its precision or scale is beyond an exact decimal's (76 digits)".into()),
            }
        }
        _ => return Err("no shared schema holds this type; register a view that casts it to one".into()),
    })
}

/// PostgreSQL's name for an Arrow type, where it has one.
fn pg_type_of(t: &DataType) -> Option<String> {
    Some(match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE PRECISION".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("NUMERIC({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "TEXT".into(),
        DataType::Dictionary(_, v) => return pg_type_of(v),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTEA".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        _ => return None,
    })
}

/// An identifier as PostgreSQL quotes it.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PgEngine {
    /// `WITH "name" AS NOT MATERIALIZED (SELECT .. FROM table)` for each name: the table under the
    /// dataset's name, its columns cast to the dataset's types. Not materialized: the planner
    /// inlines it, so filters and aggregates run on the table itself.
    fn with_clause(&self, names: &[String]) -> String {
        let columns: Vec<String> = self.columns.iter().map(PgColumn::select).collect();
        let body = format!("SELECT {} FROM {}", columns.join(", "), self.relation);
        let ctes: Vec<String> =
            names.iter().map(|n| format!("{} AS NOT MATERIALIZED ({body})", ident(n))).collect();
        format!("WITH {}", ctes.join(", "))
    }

    fn plan_exec(&self, sql: String, schema: SchemaRef) -> Arc<dyn ExecutionPlan> {
        let table = Registered { relation: self.relation.clone(), columns: self.columns.clone() };
        Arc::new(PgExec::new(self.config.clone(), self.target.clone(), table, sql, schema))
    }
}

impl Engine for PgEngine {
    fn name(&self) -> &str {
        "PostgreSQL"
    }

    fn scan(
        &self,
        schema: SchemaRef,
        _projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        const NAME: &str = "rows";
        let dialect = Pg(PostgreSqlDialect {});
        let unparser = Unparser::new(&dialect);
        let conditions: Vec<String> = filters
            .iter()
            .filter_map(|f| {
                // Columns without their table: the CTE is the only relation.
                let bare = concord_query::remote::unqualified(f).ok()?;
                unparser.expr_to_sql(&bare).ok().map(|e| format!("({e})"))
            })
            .collect();
        let mut sql = format!(
            "{} SELECT {} FROM {}",
            self.with_clause(&[NAME.to_owned()]),
            if schema.fields().is_empty() {
                "1".to_owned()
            } else {
                schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| format!("{} AS {}", ident(f.name()), ident(&format!("c{i}"))))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            ident(NAME)
        );
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        Ok(self.plan_exec(wrap(&sql, &schema)?, schema))
    }

    fn run(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let mut names: Vec<String> = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let name = scan.table_name.table().to_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        // Each output under its position's name, so that the SELECT list is in the plan's order
        // whatever order the unparser writes an aggregate's columns in.
        let portable = portable(plan.clone())?;
        let positional: Vec<Expr> = portable
            .schema()
            .iter()
            .enumerate()
            .map(|(i, (q, f))| Expr::Column(datafusion::common::Column::from((q, f))).alias(format!("c{i}")))
            .collect();
        let portable = LogicalPlanBuilder::from(portable).project(positional)?.build()?;
        let statement = unparse(&portable).map_err(|e| {
            DataFusionError::Plan(format!(
                "this owner's dataset is in PostgreSQL, and its plan for this query cannot be written as PostgreSQL's \
                 SQL: {e}"
            ))
        })?;
        let sql = format!("{} {statement}", self.with_clause(&names));
        tracing::debug!(target: "concord_source::postgres", relation = %self.relation, "plan sent to PostgreSQL: {sql}");
        Ok(self.plan_exec(wrap(&sql, &schema)?, schema))
    }
}

/// DataFusion's PostgreSQL dialect, with every string literal written as PostgreSQL's escape
/// string (`E'...'`, each quote and backslash escaped). The plain form is not safe: it does not
/// double a quote that follows a backslash, which PostgreSQL (with
/// `standard_conforming_strings`) reads as an ordinary character, so a peer's literal could end
/// the string and go on as SQL.
struct Pg(PostgreSqlDialect);

impl Dialect for Pg {
    fn use_array_keyword_for_array_literals(&self) -> bool {
        self.0.use_array_keyword_for_array_literals()
    }

    fn supports_qualify(&self) -> bool {
        self.0.supports_qualify()
    }

    fn requires_derived_table_alias(&self) -> bool {
        self.0.requires_derived_table_alias()
    }

    fn supports_empty_select_list(&self) -> bool {
        self.0.supports_empty_select_list()
    }

    fn identifier_quote_style(&self, id: &str) -> Option<char> {
        self.0.identifier_quote_style(id)
    }

    fn interval_style(&self) -> IntervalStyle {
        self.0.interval_style()
    }

    fn float64_ast_dtype(&self) -> ast::DataType {
        self.0.float64_ast_dtype()
    }

    fn int8_cast_dtype(&self) -> ast::DataType {
        self.0.int8_cast_dtype()
    }

    fn distinct_from_style(&self) -> DistinctFromStyle {
        self.0.distinct_from_style()
    }

    fn scalar_function_to_sql_overrides(
        &self,
        unparser: &Unparser,
        func_name: &str,
        args: &[Expr],
    ) -> Result<Option<ast::Expr>, DataFusionError> {
        self.0.scalar_function_to_sql_overrides(unparser, func_name, args)
    }

    fn string_literal_to_sql(&self, s: &str) -> Option<ast::Expr> {
        Some(ast::Expr::value(ast::Value::EscapedStringLiteral(s.to_owned())))
    }
}

/// Refuses a plan that names a column, alias or table with a double quote or a backslash: the
/// unparser's quoting of identifiers does not escape a quote after a backslash.
fn check_identifiers(plan: &LogicalPlan) -> Result<(), DataFusionError> {
    let bad = |name: &str| name.contains(['"', '\\']);
    let mut found: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        for f in node.schema().fields() {
            if bad(f.name()) {
                found = Some(f.name().clone());
            }
        }
        if let LogicalPlan::TableScan(scan) = node
            && bad(&scan.table_name.to_string())
        {
            found = Some(scan.table_name.to_string());
        }
        for e in node.expressions() {
            e.apply(|x| {
                match x {
                    Expr::Alias(a) if bad(&a.name) => found = Some(a.name.clone()),
                    Expr::Column(c) if bad(&c.name) => found = Some(c.name.clone()),
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    match found {
        Some(name) => Err(DataFusionError::Plan(format!(
            "the name {name:?} holds a double quote or a backslash, which this owner does not send to PostgreSQL"
        ))),
        None => Ok(()),
    }
}

/// The SQL of `plan` in PostgreSQL's dialect. The unparser recurses once per level of an
/// expression, with large frames in unoptimised builds: it runs on a thread of its own with a
/// stack of [`UNPARSE_STACK`] bytes, whatever the caller's.
fn unparse(plan: &LogicalPlan) -> Result<String, DataFusionError> {
    check_identifiers(plan)?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("concord-unparse".into())
            .stack_size(UNPARSE_STACK)
            .spawn_scoped(s, || {
                Unparser::new(&Pg(PostgreSqlDialect {})).plan_to_sql(plan).map(|s| s.to_string())
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .join()
            .map_err(|_| DataFusionError::Internal("the unparser panicked".into()))?
    })
}

/// The unparser thread's stack.
const UNPARSE_STACK: usize = 32 * 1024 * 1024;

/// `sql`, whose output columns are named by position (`"c0"`, ...), wrapped so that each comes
/// back in a form read exactly: cast to what [`Reader`] decodes for its Arrow type.
fn wrap(sql: &str, schema: &Schema) -> Result<String, DataFusionError> {
    if schema.fields().is_empty() {
        return Ok(format!("SELECT FROM ({sql}) AS q"));
    }
    let outputs = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Reader::of(f.data_type())
                .map(|r| r.select(&format!("q.{}", ident(&format!("c{i}"))), f.data_type()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("SELECT {} FROM ({sql}) AS q", outputs.join(", ")))
}

/// How one output column is asked for and decoded.
#[derive(Clone, Copy, Debug)]
enum Reader {
    Bool,
    I16,
    I32,
    I64,
    F32,
    F64,
    /// Text: strings, and decimals as their exact text at the column's scale.
    Text,
    Bytes,
    /// A date as days since 1970-01-01.
    Days,
    /// A timestamp or a time as microseconds (since 1970 or since midnight).
    Micros,
}

impl Reader {
    fn of(t: &DataType) -> Result<Self, DataFusionError> {
        Ok(match t {
            DataType::Boolean => Self::Bool,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => Self::I16,
            DataType::Int32 | DataType::UInt16 => Self::I32,
            DataType::Int64 | DataType::UInt32 => Self::I64,
            DataType::Float16 | DataType::Float32 => Self::F32,
            DataType::Float64 => Self::F64,
            DataType::UInt64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View => Self::Text,
            DataType::Dictionary(_, v) => Self::of(v)?,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Self::Bytes,
            DataType::Date32 | DataType::Date64 => Self::Days,
            DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) => Self::Micros,
            DataType::Null => Self::Bool,
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "a result column of type {other} cannot be read back from PostgreSQL"
                )));
            }
        })
    }

    /// The select-list item that asks for column `n` (of Arrow type `t`) in this reader's form.
    fn select(self, n: &str, t: &DataType) -> String {
        match (self, t) {
            (Self::Bool, DataType::Null) => "CAST(NULL AS BOOLEAN)".into(),
            (Self::Bool, _) => format!("CAST({n} AS BOOLEAN)"),
            (Self::I16, _) => format!("CAST({n} AS SMALLINT)"),
            (Self::I32, _) => format!("CAST({n} AS INTEGER)"),
            (Self::I64, _) => format!("CAST({n} AS BIGINT)"),
            (Self::F32, _) => format!("CAST({n} AS REAL)"),
            (Self::F64, _) => format!("CAST({n} AS DOUBLE PRECISION)"),
            (
                Self::Text,
                DataType::Decimal32(p, s)
                | DataType::Decimal64(p, s)
                | DataType::Decimal128(p, s)
                | DataType::Decimal256(p, s),
            ) => format!("CAST(CAST({n} AS NUMERIC({p},{s})) AS TEXT)"),
            (Self::Text, _) => format!("CAST({n} AS TEXT)"),
            (Self::Bytes, _) => format!("CAST({n} AS BYTEA)"),
            (Self::Days, _) => format!("({n} - DATE '1970-01-01')"),
            (Self::Micros, DataType::Time32(_) | DataType::Time64(_)) => {
                format!("CAST(EXTRACT(EPOCH FROM {n}) * 1000000 AS BIGINT)")
            }
            (Self::Micros, _) => format!("CAST(EXTRACT(EPOCH FROM {n}) * 1000000 AS BIGINT)"),
        }
    }

    /// The Arrow type this reader builds, before the cast to the column's own type.
    fn built(self, t: &DataType) -> DataType {
        match (self, t) {
            (Self::Bool, _) => DataType::Boolean,
            (Self::I16, _) => DataType::Int16,
            (Self::I32, _) => DataType::Int32,
            (Self::I64, _) => DataType::Int64,
            (Self::F32, _) => DataType::Float32,
            (Self::F64, _) => DataType::Float64,
            (Self::Text, _) => DataType::Utf8,
            (Self::Bytes, _) => DataType::Binary,
            (Self::Days, _) => DataType::Date32,
            (Self::Micros, DataType::Timestamp(_, tz)) => {
                DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
            }
            (Self::Micros, _) => DataType::Time64(TimeUnit::Microsecond),
        }
    }

    /// Column `i` of `rows`, as `t`.
    fn column(self, rows: &[Row], i: usize, t: &DataType) -> Result<ArrayRef, DataFusionError> {
        fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
            r: &'a Row,
            i: usize,
        ) -> Result<Option<T>, DataFusionError> {
            r.try_get::<_, Option<T>>(i).map_err(|e| DataFusionError::External(Box::new(e)))
        }
        let built: ArrayRef = match self {
            Self::Bool => {
                let mut b = BooleanBuilder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(get::<bool>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::I16 => {
                let mut b = Int16Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(get::<i16>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::I32 | Self::Days => {
                let mut b = Int32Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(get::<i32>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::I64 | Self::Micros => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(get::<i64>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::F32 => {
                let mut b = Float32Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(get::<f32>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::F64 => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(get::<f64>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::Text => {
                let mut b = StringBuilder::new();
                for r in rows {
                    b.append_option(get::<&str>(r, i)?);
                }
                Arc::new(b.finish())
            }
            Self::Bytes => {
                let mut b = BinaryBuilder::new();
                for r in rows {
                    b.append_option(get::<&[u8]>(r, i)?);
                }
                Arc::new(b.finish())
            }
        };
        // Integers of days and microseconds become dates, timestamps and times by reinterpretation.
        let typed = match self {
            Self::Days | Self::Micros => datafusion::arrow::array::make_array(
                built.to_data().into_builder().data_type(self.built(t)).build()?,
            ),
            _ => built,
        };
        if typed.data_type() == t {
            return Ok(typed);
        }
        // Exact: a decimal's text has exactly its scale's digits; a wider or finer type takes
        // every value. A value that does not fit is an error, not a NULL.
        let options = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
        Ok(datafusion::arrow::compute::cast_with_options(&typed, t, &options)?)
    }
}

/// The table as registered, checked before each plan runs.
#[derive(Clone, Debug)]
struct Registered {
    relation: String,
    columns: Vec<PgColumn>,
}

/// A plan run inside PostgreSQL: one SQL statement, its output read back as Arrow batches.
struct PgExec {
    config: tokio_postgres::Config,
    target: String,
    table: Registered,
    sql: String,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl PgExec {
    fn new(
        config: tokio_postgres::Config,
        target: String,
        table: Registered,
        sql: String,
        schema: SchemaRef,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { config, target, table, sql, schema, properties }
    }
}

impl fmt::Debug for PgExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgExec").field("target", &self.target).finish()
    }
}

impl DisplayAs for PgExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresExec: {}", self.target)
    }
}

impl ExecutionPlan for PgExec {
    fn name(&self) -> &str {
        "PostgresExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion, DataFusionError>,
    ) -> Result<TreeNodeRecursion, DataFusionError> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("PostgresExec has no children".into()))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream, DataFusionError> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "PostgresExec has one partition, not {partition}"
            )));
        }
        let schema = self.schema.clone();
        let readers = schema
            .fields()
            .iter()
            .map(|f| Reader::of(f.data_type()).map(|r| (r, f.data_type().clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let (config, target, sql) = (self.config.clone(), self.target.clone(), self.sql.clone());
        let table = self.table.clone();
        let batch_schema = schema.clone();
        let start = async move {
            let external = |e: SourceError| DataFusionError::External(Box::new(e));
            let client = connect(&config, &target).await.map_err(external)?;
            // A column whose type changed since registration could fail its cast for some
            // values only: the plan does not run, whatever the values.
            let columns = client
                .query(COLUMNS_SQL, &[&table.relation])
                .await
                .map_err(|e| external(pg_error(&target, "cannot read the table's columns", e)))?;
            if let Some(why) = changed(&columns, &table.columns) {
                return Err(external(SourceError::Table {
                    table: table.relation.clone(),
                    reason: format!(
                        "it changed since the dataset was registered: {why}; register it again (concord dataset add \
                         --replace)"
                    ),
                }));
            }
            let rows = client
                .query_raw(sql.as_str(), std::iter::empty::<i32>())
                .await
                .map_err(|e| external(pg_error(&target, "the owner's plan failed", e)))?;
            let target2 = target.clone();
            let chunks = rows
                .map_err(move |e| {
                    DataFusionError::External(Box::new(pg_error(&target2, "reading the answer failed", e)))
                })
                .try_chunks(BATCH_ROWS)
                .map(move |chunk| {
                    // The client lives as long as the stream reads from its connection.
                    let _ = &client;
                    let rows = chunk.map_err(|e| e.1)?;
                    let columns = readers
                        .iter()
                        .enumerate()
                        .map(|(i, (r, t))| r.column(&rows, i, t))
                        .collect::<Result<Vec<_>, _>>()?;
                    let options =
                        datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
                    Ok(RecordBatch::try_new_with_options(batch_schema.clone(), columns, &options)?)
                });
            Ok::<_, DataFusionError>(chunks)
        };
        let stream = futures::stream::once(start).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_password_or_a_remote_host_is_refused() {
        let e = parse_url("postgresql://u:secret@127.0.0.1/db").expect_err("password").to_string();
        assert!(e.contains("--password-env") && !e.contains("secret"), "{e}");
        let e = parse_url("postgresql://u@db.example.org/db").expect_err("remote").to_string();
        assert!(e.contains("not on this machine"), "{e}");
        let e = parse_url("postgresql://127.0.0.1/db").expect_err("user").to_string();
        assert!(e.contains("no user"), "{e}");
        parse_url("postgresql://u@127.0.0.1:5433/db").expect("loopback");
        parse_url("host=/tmp/pg user=u dbname=db").expect("socket");
        let e = parse_url("host=localhost hostaddr=203.0.113.9 user=u").expect_err("hostaddr").to_string();
        assert!(e.contains("203.0.113.9"), "{e}");
    }

    #[test]
    fn numeric_maps_to_an_exact_decimal_or_is_left_out_with_a_reason() {
        let typmod = |p: i32, s: i32| ((p << 16) | s) + 4;
        assert_eq!(arrow_of(1700, typmod(15, 2)), Ok(DataType::Decimal128(15, 2)));
        assert_eq!(arrow_of(1700, typmod(50, 10)), Ok(DataType::Decimal256(50, 10)));
        assert!(arrow_of(1700, -1).expect_err("unconstrained").contains("numeric(p,s)"));
        assert!(arrow_of(114, -1).expect_err("json").contains("view"));
    }

    #[test]
    fn a_password_is_never_shown() {
        let p = Password::new("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
        let mut c = parse_url("postgresql://u@127.0.0.1/db").expect("url");
        c.password("hunter2");
        let engine =
            PgEngine { target: target_of(&c), config: c, relation: "public.t".into(), columns: vec![] };
        assert!(!format!("{engine:?}").contains("hunter2"));
    }
}
