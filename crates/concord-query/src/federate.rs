//! The requester's side of a federated query: split, fetch partials, merge.
//!
//! A federated table ([`FederatedTable`]) is registered in the requester's DataFusion context with
//! the schema its owners publish, but it cannot be scanned. [`run_federated`] plans the analyst's
//! SQL, then rewrites every `Aggregate` whose input is a chain of filters, projections and aliases
//! over one federated table:
//!
//! ```text
//! Aggregate(keys; aggs)             Projection(original names and types)
//!   Filter(w)                 =>      Aggregate(g*; merge(p*))
//!     TableScan(federated)              TableScan(partials: g*, p* from every owner)
//! ```
//!
//! Each owner receives `SELECT keys AS g0.., partials AS p0.. FROM <dataset> WHERE w GROUP BY keys`
//! as SQL text made by DataFusion's unparser. COUNT merges as SUM, SUM as SUM, MIN as MIN, MAX as
//! MAX, AVG as SUM(sum)/SUM(count). Everything above the rewritten aggregate (HAVING, ORDER BY,
//! LIMIT, CTEs, joins with local tables) runs here on the merged result.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SQLOptions;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Aggregate, Distinct, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, cast as cast_expr, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::QueryError;

/// One owner's dataset that is part of a federated table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The member that holds the dataset and answers its sub-queries.
    pub owner: String,
    /// The dataset's name at its owner, as the sub-query's FROM names it.
    pub dataset: String,
}

/// A table whose rows stay with their owners: a shared schema (the union of conforming datasets
/// of every member that admits the requester) or one member's dataset.
#[derive(Debug)]
pub struct FederatedTable {
    /// How the analyst names it: `health_cases` or `bravo.cases`.
    pub display: String,
    /// The columns every part offers, in the shared (or the one dataset's) types.
    pub schema: SchemaRef,
    /// The owners' datasets a query over the table reads, one sub-query each.
    pub parts: Vec<Part>,
    /// True for a shared schema, false for one member's dataset.
    pub shared: bool,
    /// Members whose catalogs could not be read, so whose parts are unknown.
    pub unreachable: Vec<String>,
    /// Datasets that conform but whose owners do not release them to this member, each as
    /// `member.dataset (why)`: not among the parts, and named in every result that reads the
    /// table.
    pub withheld: Vec<String>,
}

#[async_trait]
impl TableProvider for FederatedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Invariant: a federated table is never read row by row.
        Err(QueryError::Refused(raw_rows_message(&self.display)).into_df())
    }
}

/// What one owner contributed to a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Contribution {
    /// The owner that answered.
    pub member: String,
    /// The owner's dataset the sub-query read.
    pub dataset: String,
    /// The rows of the owner's dataset; `None` under differential privacy, where a dataset's
    /// size is an exact count that no noise covers.
    pub rows_scanned: Option<u64>,
    /// Rows (groups) of the owner's partial result, after its release rules.
    pub groups_released: u64,
    /// SHA-256 of the released Arrow IPC bytes, as the owner's signed receipt states it; `None`
    /// when the requester is the owner and nothing crossed a border.
    pub receipt_digest: Option<String>,
    /// What the owner's release rules held back, the noise they added, the budget they charged.
    #[serde(default)]
    pub release: crate::release::ReleaseReport,
}

/// An owner's answer to one sub-query.
#[derive(Debug)]
pub struct PartialAnswer {
    /// The owner's partial result, in the columns its sub-query selects.
    pub batches: Vec<RecordBatch>,
    /// Who answered and what they released, for the result's provenance.
    pub contribution: Contribution,
}

/// How the requester reaches owners: over the peer protocol, or in-process for its own data.
#[async_trait]
pub trait OwnerClient: Send + Sync {
    /// Sends `sql` to the owner of `part` and returns its answer; an owner that cannot be
    /// reached is [`QueryError::Unreachable`].
    async fn partial(&self, part: &Part, sql: &str) -> Result<PartialAnswer, QueryError>;

    /// Called once before any sub-query is sent, with every part and its SQL. A client may
    /// prepare every request here at once (the peer protocol logs them in one commit); with
    /// `check`, it also asks every owner whether it would answer, so that a query one owner
    /// refuses spends no privacy budget at another. By default nothing: every owner is asked
    /// directly.
    async fn before_partials(&self, _asks: &[(Part, String)], _check: bool) -> Result<(), QueryError> {
        Ok(())
    }
}

/// A finished query: its result and who contributed what.
#[derive(Debug)]
pub struct QueryOutcome {
    /// The schema of the result, as the analyst's SQL names and types it.
    pub schema: SchemaRef,
    /// The result rows, merged from every owner's partials.
    pub batches: Vec<RecordBatch>,
    /// Each owner's contribution, sorted by member and dataset.
    pub provenance: Vec<Contribution>,
    /// Members left out of a partial result because they could not be reached.
    pub missing: Vec<String>,
    /// Datasets of the shared schemas read that their owners do not release to this member
    /// (`member.dataset (why)`), left out of the result.
    pub left_out: Vec<String>,
}

/// Plans, splits, fetches and merges `sql` in `ctx`, where federated tables are registered as
/// [`FederatedTable`]s and the requester's own tables as ordinary tables. An owner that cannot
/// answer fails the query, naming it.
pub async fn run_federated(
    ctx: &SessionContext,
    sql: &str,
    client: &dyn OwnerClient,
) -> Result<QueryOutcome, QueryError> {
    run_federated_with(ctx, sql, client, false, crate::limits::ExecLimits::default().max_groups).await
}

/// As [`run_federated`]; with `allow_partial`, owners that cannot be reached are left out and
/// named in [`QueryOutcome::missing`] instead of failing the query. A result of more than
/// `max_rows` rows is refused, naming the limit.
pub async fn run_federated_with(
    ctx: &SessionContext,
    sql: &str,
    client: &dyn OwnerClient,
    allow_partial: bool,
    max_rows: u64,
) -> Result<QueryOutcome, QueryError> {
    run_federated_bound(ctx, sql, &[], client, allow_partial, max_rows).await
}

/// [`run_federated_with`] for a prepared statement: `params` bound to the placeholders `$1`,
/// `$2`, ... in the planned statement (never into its text), each value of the type the
/// statement expects there; the bound plan is then checked as any other.
pub async fn run_federated_bound(
    ctx: &SessionContext,
    sql: &str,
    params: &[datafusion::scalar::ScalarValue],
    client: &dyn OwnerClient,
    allow_partial: bool,
    max_rows: u64,
) -> Result<QueryOutcome, QueryError> {
    let plan = plan_checked(ctx, sql, params).await?;
    if let LogicalPlan::Explain(ex) = &plan {
        return explain(ex.plan.as_ref().clone(), allow_partial);
    }
    if let LogicalPlan::Analyze(an) = &plan {
        return explain(an.input.as_ref().clone(), allow_partial);
    }
    let (rewritten, jobs) = split(plan, allow_partial)?;
    let (mut provenance, missing) = fetch_partials(&jobs, client, allow_partial).await?;
    let (schema, batches) = run_merge(ctx, rewritten, max_rows).await?;
    provenance.sort_by(|a, b| (&a.member, &a.dataset).cmp(&(&b.member, &b.dataset)));
    let left_out: BTreeSet<String> = jobs.iter().flat_map(|j| j.table.withheld.iter().cloned()).collect();
    Ok(QueryOutcome {
        schema,
        batches,
        provenance,
        missing: missing.into_iter().collect(),
        left_out: left_out.into_iter().collect(),
    })
}

/// What an analyst's SQL would answer, without running it: the result's schema, and the types
/// of its placeholders (`$1`, `$2`, ...) in order, `None` where the SQL leaves one open. The SQL
/// must be a query; the bounds on values wait for the values, when it runs bound to them through
/// [`run_federated_with`], which checks it all.
pub async fn describe(
    ctx: &SessionContext,
    sql: &str,
) -> Result<(SchemaRef, Vec<Option<DataType>>), QueryError> {
    let plan = plan_query(ctx, sql).await?;
    let schema = Arc::new(plan.schema().as_arrow().clone());
    let types = plan.get_parameter_types().map_err(QueryError::plan)?;
    let mut named: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .map(|(name, t)| {
            let n = name.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX);
            (n, t)
        })
        .collect();
    named.sort_by_key(|(n, _)| *n);
    Ok((schema, named.into_iter().map(|(_, t)| t).collect()))
}

/// Asks every owner for its part of every job and fills each job's partials; returns who
/// contributed what, and the members left out because they could not be reached.
async fn fetch_partials(
    jobs: &[Job],
    client: &dyn OwnerClient,
    allow_partial: bool,
) -> Result<(Vec<Contribution>, BTreeSet<String>), QueryError> {
    let mut asks = Vec::new();
    for job in jobs {
        for part in &job.table.parts {
            asks.push((job, part.clone(), job.sql_for(&part.dataset)?));
        }
    }
    // A partial answer is asked for: owners that answer are used (and charge their budget)
    // whoever else refuses or cannot be reached. Otherwise every owner is checked first.
    let pairs: Vec<(Part, String)> = asks.iter().map(|(_, p, s)| (p.clone(), s.clone())).collect();
    client.before_partials(&pairs, !allow_partial).await?;
    let requests = asks.iter().map(|(job, part, sql)| async move { (*job, client.partial(part, sql).await) });
    let answers = futures::future::join_all(requests).await;
    let mut provenance = Vec::new();
    let mut missing: BTreeSet<String> =
        jobs.iter().flat_map(|j| j.table.unreachable.iter().cloned()).collect();
    let mut per_job: Vec<Vec<RecordBatch>> = vec![Vec::new(); jobs.len()];
    for (job, answer) in answers {
        let answer = match answer {
            Ok(a) => a,
            // Only an owner that cannot be reached is left out; a refusal still fails.
            Err(QueryError::Unreachable { member, .. }) if allow_partial => {
                missing.insert(member);
                continue;
            }
            Err(e) => return Err(e),
        };
        for b in answer.batches {
            per_job[job.index].push(conform(&job.partial_schema, b, &answer.contribution.member)?);
        }
        provenance.push(answer.contribution);
    }
    for (job, batches) in jobs.iter().zip(per_job) {
        // Set once per job; a job is never fetched twice.
        let _ = job.partials.batches.set(batches);
    }
    Ok((provenance, missing))
}

/// Runs the merge plan over the fetched partials, at most `max_rows` rows of result.
async fn run_merge(
    ctx: &SessionContext,
    rewritten: LogicalPlan,
    max_rows: u64,
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let df = ctx.execute_logical_plan(rewritten).await.map_err(QueryError::exec)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let physical = df.create_physical_plan().await.map_err(QueryError::exec)?;
    let batches = crate::limits::collect_limited(ctx, physical, max_rows).await.map_err(|e| match e {
        QueryError::Limit(_) => QueryError::Limit(format!(
            "the result has more than {max_rows} rows, the most this node returns; aggregate further or add LIMIT"
        )),
        other => other,
    })?;
    Ok((schema, batches))
}

/// Plans the analyst's SQL and checks it: queries only, bounded values.
async fn plan_checked(
    ctx: &SessionContext,
    sql: &str,
    params: &[datafusion::scalar::ScalarValue],
) -> Result<LogicalPlan, QueryError> {
    let mut plan = plan_query(ctx, sql).await?;
    if !params.is_empty() {
        plan = plan
            .with_param_values(params.to_vec())
            .map_err(|e| QueryError::Plan(format!("the parameters do not fit the statement: {e}")))?;
    }
    crate::limits::check_plan(&plan)?;
    Ok(plan)
}

/// Plans SQL of a bounded size that must be a query: no DDL, DML or statements.
async fn plan_query(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, QueryError> {
    crate::owner::check_size(sql).map_err(|e| match e {
        QueryError::SubqueryRefused(why) => {
            QueryError::Refused(why.replacen("the sub-query", "the query", 1))
        }
        other => other,
    })?;
    let plan = ctx.state().create_logical_plan(sql).await.map_err(QueryError::plan)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| QueryError::Refused("only queries (SELECT, WITH ... SELECT) are accepted".into()))?;
    Ok(plan)
}

/// Splits a plan: every aggregate and every row read over a federated table becomes a job of
/// per-owner sub-queries; returns the plan that merges their answers.
fn split(plan: LogicalPlan, allow_partial: bool) -> Result<(LogicalPlan, Vec<Job>), QueryError> {
    // SELECT DISTINCT over a federated table is a GROUP BY of every selected column.
    let plan = plan
        .transform_up_with_subqueries(|node| match &node {
            LogicalPlan::Distinct(Distinct::All(input)) if flatten(input)?.is_some() => {
                let columns = input.schema().columns().into_iter().map(Expr::Column);
                let agg = LogicalPlanBuilder::from(input.as_ref().clone())
                    .aggregate(columns, Vec::<Expr>::new())?
                    .build()?;
                Ok(Transformed::yes(agg))
            }
            _ => Ok(Transformed::no(node)),
        })
        .map_err(QueryError::plan)?
        .data;

    let mut jobs: Vec<Job> = Vec::new();
    let rewritten = plan
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::Aggregate(agg) = &node else {
                return Ok(Transformed::no(node));
            };
            let Some(flat) = flatten(&agg.input)? else {
                return Ok(Transformed::no(node));
            };
            let (replacement, job) =
                split_aggregate(agg, flat, jobs.len(), allow_partial).map_err(QueryError::into_df)?;
            jobs.push(job);
            Ok(Transformed::yes(replacement))
        })
        .map_err(QueryError::plan)?
        .data;
    // What still reads a federated table reads its rows: each maximal chain of filters and
    // projections over one becomes a row read that its owners' policies decide (`read_rows`).
    // Before that, joins written as `FROM a, b WHERE a.k = b.k` become joins, and predicates
    // and the columns used are pushed down to the scans, so that an owner sends only the rows
    // and columns the query needs.
    let rewritten = if reads_rows(&rewritten) { prune_row_reads(rewritten)? } else { rewritten };
    let rewritten = rewrite_row_reads(rewritten, &mut jobs, allow_partial)?;
    if let Some(reason) = explain_raw_use(&rewritten) {
        return Err(QueryError::Refused(reason));
    }
    Ok((rewritten, jobs))
}

/// One owner's part of a query, as it would be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSubquery {
    /// The owner's dataset the sub-query reads.
    pub part: Part,
    /// The sub-query as SQL text, exactly as it would be sent.
    pub sql: String,
}

/// Plans and splits `sql` without sending anything: the merge plan, and each owner's sub-query.
pub async fn plan_subqueries(
    ctx: &SessionContext,
    sql: &str,
) -> Result<(LogicalPlan, Vec<PlannedSubquery>), QueryError> {
    let plan = plan_checked(ctx, sql, &[]).await?;
    let plan = match &plan {
        LogicalPlan::Explain(ex) => ex.plan.as_ref().clone(),
        LogicalPlan::Analyze(an) => an.input.as_ref().clone(),
        _ => plan,
    };
    let (rewritten, jobs) = split(plan, true)?;
    let mut out = Vec::new();
    for job in &jobs {
        for part in &job.table.parts {
            out.push(PlannedSubquery { part: part.clone(), sql: job.sql_for(&part.dataset)? });
        }
    }
    Ok((rewritten, out))
}

/// EXPLAIN: the merge plan and each owner's sub-query, as rows; nothing is sent to any owner.
fn explain(plan: LogicalPlan, allow_partial: bool) -> Result<QueryOutcome, QueryError> {
    let (rewritten, jobs) = split(plan, allow_partial)?;
    let mut kinds = vec!["merge plan (runs here)".to_owned()];
    let mut texts = vec![rewritten.display_indent().to_string()];
    for job in &jobs {
        for part in &job.table.parts {
            kinds.push(format!("sub-query for {}.{} (not sent)", part.owner, part.dataset));
            texts.push(job.sql_for(&part.dataset)?);
        }
        for m in &job.table.unreachable {
            kinds.push(format!("sub-query for {m} (catalog unreachable)"));
            texts.push(String::new());
        }
    }
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new("plan_type", DataType::Utf8, false),
        datafusion::arrow::datatypes::Field::new("plan", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(datafusion::arrow::array::StringArray::from(kinds)),
            Arc::new(datafusion::arrow::array::StringArray::from(texts)),
        ],
    )
    .map_err(QueryError::from)?;
    Ok(QueryOutcome { schema, batches: vec![batch], provenance: vec![], missing: vec![], left_out: vec![] })
}

fn raw_rows_message(table: &str) -> String {
    format!(
        "the query reads raw rows of {table}, and raw rows never leave their owner's node. \
         What works: aggregates (COUNT, COUNT(*), SUM, AVG, MIN, MAX) with WHERE and GROUP BY, \
         and any SQL over their results (HAVING, ORDER BY, LIMIT, CTEs, joins with local tables)"
    )
}

/// Casts an owner's batch to the partial schema the requester expects; a batch of another shape
/// is the owner's error, named as such.
fn conform(schema: &SchemaRef, batch: RecordBatch, member: &str) -> Result<RecordBatch, QueryError> {
    let bad = |why: String| QueryError::Owner {
        member: member.to_owned(),
        reason: format!("malformed partial result: {why}"),
    };
    if batch.num_columns() != schema.fields().len() {
        return Err(bad(format!("{} columns, expected {}", batch.num_columns(), schema.fields().len())));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| bad(e.to_string()))
}

/// The merged partials of one split aggregate, filled after the owners answered.
#[derive(Debug)]
struct PartialsTable {
    schema: SchemaRef,
    batches: OnceLock<Vec<RecordBatch>>,
}

#[async_trait]
impl TableProvider for PartialsTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batches = self
            .batches
            .get()
            .ok_or_else(|| DataFusionError::Internal("partials scanned before they were fetched".into()))?;
        MemTable::try_new(self.schema.clone(), vec![batches.clone()])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// What each owner computes for a job.
enum JobKind {
    /// Partial aggregates: `SELECT g*, p* FROM dataset WHERE filters GROUP BY g*`.
    Aggregate { groups: Vec<Expr>, partial_aggs: Vec<Expr> },
    /// Rows: `SELECT columns FROM dataset WHERE filters`.
    Rows { columns: Vec<String> },
}

/// One aggregate or row read split into per-owner sub-queries.
struct Job {
    index: usize,
    table: Arc<FederatedTable>,
    filters: Vec<Expr>,
    kind: JobKind,
    partial_schema: SchemaRef,
    partials: Arc<PartialsTable>,
}

/// Wraps the operand of a minus in parentheses where it prints with a minus of its own: the
/// unparser writes `-(-1)` as `--1`, which SQL reads as the start of a comment.
fn parenthesize_negated_negatives(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, UnaryOperator, visit_expressions_mut};
    let _ = visit_expressions_mut(statement, |expr| {
        if let SqlExpr::UnaryOp { op: UnaryOperator::Minus, expr: inner } = expr
            && inner.to_string().starts_with('-')
        {
            let operand = std::mem::replace(
                inner.as_mut(),
                SqlExpr::value(datafusion::sql::sqlparser::ast::Value::Null),
            );
            **inner = SqlExpr::Nested(Box::new(operand));
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

impl Job {
    /// The sub-query for one owner's dataset, as SQL text.
    fn sql_for(&self, dataset: &str) -> Result<String, QueryError> {
        let plan = match &self.kind {
            JobKind::Aggregate { groups, partial_aggs } => {
                partial_plan(&self.table, dataset, &self.filters, groups, partial_aggs)
            }
            JobKind::Rows { columns } => rows_plan(&self.table, dataset, &self.filters, columns),
        }
        .map_err(QueryError::plan)?;
        let mut statement = datafusion::sql::unparser::Unparser::new(&OwnersDialect)
            .plan_to_sql(&plan)
            .map_err(QueryError::plan)?;
        parenthesize_negated_negatives(&mut statement);
        let sql = statement.to_string();
        if sql.contains(['\n', '\r']) {
            return Err(QueryError::Refused(
                "line breaks inside string literals cannot be sent to owners; remove them".into(),
            ));
        }
        Ok(sql)
    }
}

/// DataFusion's default dialect for the SQL sent to owners, with one correction: a string
/// literal whose text has a quote right after a backslash is written as a concatenation split
/// between the two. The printer takes a backslash-quote for one already escaped and leaves the
/// quote single, while the owner's parser (standard SQL strings) reads the backslash as itself,
/// so the literal would end there and its rest be read as SQL.
struct OwnersDialect;

impl datafusion::sql::unparser::dialect::Dialect for OwnersDialect {
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        datafusion::sql::unparser::dialect::DefaultDialect {}.identifier_quote_style(identifier)
    }

    fn string_literal_to_sql(&self, s: &str) -> Option<datafusion::sql::sqlparser::ast::Expr> {
        use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr as Ast, Value};
        if !s.contains("\\'") {
            return None;
        }
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("\\'") {
            pieces.push(&rest[..=at]);
            rest = &rest[at + 1..];
        }
        pieces.push(rest);
        pieces.into_iter().map(|p| Ast::value(Value::SingleQuotedString(p.to_owned()))).reduce(
            |left, right| {
                Ast::Nested(Box::new(Ast::BinaryOp {
                    left: Box::new(left),
                    op: BinaryOperator::StringConcat,
                    right: Box::new(right),
                }))
            },
        )
    }
}

fn partial_plan(
    table: &Arc<FederatedTable>,
    dataset: &str,
    filters: &[Expr],
    groups: &[Expr],
    partial_aggs: &[Expr],
) -> DfResult<LogicalPlan> {
    let source = provider_as_source(table.clone() as Arc<dyn TableProvider>);
    let mut b = LogicalPlanBuilder::scan(TableReference::bare(dataset), source, None)?;
    if let Some(pred) = conjunction(filters.iter().cloned()) {
        b = b.filter(pred)?;
    }
    let b = b.aggregate(groups.to_vec(), partial_aggs.to_vec())?;
    let ng = groups.len();
    let names = b.schema().columns();
    let proj = names.into_iter().enumerate().map(|(i, c)| {
        let alias = if i < ng { format!("g{i}") } else { format!("p{}", i - ng) };
        Expr::Column(c).alias(alias)
    });
    b.project(proj)?.build()
}

fn rows_plan(
    table: &Arc<FederatedTable>,
    dataset: &str,
    filters: &[Expr],
    columns: &[String],
) -> DfResult<LogicalPlan> {
    let source = provider_as_source(table.clone() as Arc<dyn TableProvider>);
    let mut b = LogicalPlanBuilder::scan(TableReference::bare(dataset), source, None)?;
    if let Some(pred) = conjunction(filters.iter().cloned()) {
        b = b.filter(pred)?;
    }
    b.project(columns.iter().map(|c| Expr::Column(Column::new_unqualified(c))))?.build()
}

/// Whether `plan` still scans a federated table once its aggregates are split.
fn reads_rows(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        found |= federated_of(node).is_some();
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// DataFusion's own rules that turn cross joins with equalities into joins and push filters
/// and projections down to the scans; the plan's output (names and types) stays the same.
fn prune_row_reads(plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
    use datafusion::optimizer::eliminate_cross_join::EliminateCrossJoin;
    use datafusion::optimizer::optimize_projections::OptimizeProjections;
    use datafusion::optimizer::push_down_filter::PushDownFilter;
    use datafusion::optimizer::{Optimizer, OptimizerContext, OptimizerRule};
    let rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = vec![
        Arc::new(EliminateCrossJoin::new()),
        Arc::new(PushDownFilter::new()),
        Arc::new(OptimizeProjections::new()),
    ];
    Optimizer::with_rules(rules).optimize(plan, &OptimizerContext::new(), |_, _| {}).map_err(QueryError::plan)
}

/// Replaces every maximal chain of filters, projections and aliases over a federated table by
/// the rows its owners release: a scan of the fetched rows under the chain's own projection.
fn rewrite_row_reads(
    plan: LogicalPlan,
    jobs: &mut Vec<Job>,
    allow_partial: bool,
) -> Result<LogicalPlan, QueryError> {
    plan.transform_down_with_subqueries(|node| {
        let Some(flat) = flatten(&node)? else {
            return Ok(Transformed::no(node));
        };
        let table = flat.table.clone();
        check_parts(&table, allow_partial).map_err(QueryError::into_df)?;
        let columns = fetched_columns(&table, &flat.outputs);
        let index = jobs.len();
        let sample = table.parts.first().map(|p| p.dataset.as_str()).unwrap_or("t");
        let fetched = rows_plan(&table, sample, &flat.filters, &columns)?;
        let partial_schema: SchemaRef = Arc::new(fetched.schema().as_arrow().clone());
        let partials = Arc::new(PartialsTable { schema: partial_schema.clone(), batches: OnceLock::new() });
        let restore = node.schema().iter().zip(&flat.outputs).map(|((q, f), e)| {
            cast_expr(e.clone(), f.data_type().clone()).alias_qualified(q.cloned(), f.name())
        });
        let replacement = LogicalPlanBuilder::scan(
            TableReference::bare(format!("__concord_rows_{index}")),
            provider_as_source(partials.clone() as Arc<dyn TableProvider>),
            None,
        )?
        .project(restore)?
        .build()?;
        jobs.push(Job {
            index,
            table,
            filters: flat.filters,
            kind: JobKind::Rows { columns },
            partial_schema,
            partials,
        });
        Ok(Transformed::new(replacement, true, TreeNodeRecursion::Jump))
    })
    .map(|t| t.data)
    .map_err(QueryError::plan)
}

/// The table's columns that `outputs` use, in the table's order; its first if they use none.
fn fetched_columns(table: &FederatedTable, outputs: &[Expr]) -> Vec<String> {
    let mut used: BTreeSet<String> = BTreeSet::new();
    for e in outputs {
        for c in e.column_refs() {
            used.insert(c.name.clone());
        }
    }
    // Keep the table's column order; a chain that uses no column still needs a row count.
    let mut columns: Vec<String> =
        table.schema.fields().iter().map(|f| f.name().clone()).filter(|n| used.contains(n)).collect();
    if columns.is_empty()
        && let Some(f) = table.schema.fields().first()
    {
        columns.push(f.name().clone());
    }
    columns
}

/// Refuses a federated table that no member (reachable or not) can answer for.
fn check_parts(table: &FederatedTable, allow_partial: bool) -> Result<(), QueryError> {
    if !table.unreachable.is_empty() && !allow_partial {
        return Err(QueryError::Unreachable {
            member: table.unreachable.join(", "),
            reason: format!(
                "its catalog could not be read, so {} cannot be computed in full; check that the member's node is up",
                table.display
            ),
        });
    }
    if table.parts.is_empty() && table.unreachable.is_empty() {
        return Err(QueryError::Refused(format!(
            "no member publishes a dataset in {} that admits you; ask the owners' stewards for access",
            table.display
        )));
    }
    Ok(())
}

/// A chain of filters, projections and aliases over one federated table, flattened: the filters
/// and the chain's output expressions, both over the table's own (unqualified) columns.
struct Flat {
    table: Arc<FederatedTable>,
    filters: Vec<Expr>,
    outputs: Vec<Expr>,
}

fn federated_of(plan: &LogicalPlan) -> Option<Arc<FederatedTable>> {
    let LogicalPlan::TableScan(scan) = plan else { return None };
    federated_scan(scan)
}

fn federated_scan(scan: &datafusion::logical_expr::TableScan) -> Option<Arc<FederatedTable>> {
    let provider = datafusion::catalog::default_table_source::source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<FederatedTable>()?;
    // Re-take the Arc as the concrete type: the provider is exactly a FederatedTable.
    let any: Arc<dyn std::any::Any + Send + Sync> = provider;
    any.downcast::<FederatedTable>().ok()
}

/// The chain of filters, projections and aliases over one federated table that `plan` is, if
/// it is one whose every expression an owner accepts ([`crate::chain::walk`], the walker the
/// owner's check uses too); otherwise it stays on this side.
fn flatten(plan: &LogicalPlan) -> DfResult<Option<Flat>> {
    match crate::chain::walk(plan) {
        Ok(chain) => {
            if chain.scan.fetch.is_some() {
                return Ok(None);
            }
            let Some(table) = federated_scan(chain.scan) else {
                return Ok(None);
            };
            Ok(Some(Flat { table, filters: chain.filters, outputs: chain.outputs }))
        }
        Err(crate::chain::NotAChain::Plan(e)) => Err(e),
        Err(_) => Ok(None),
    }
}

pub(crate) use crate::chain::substitute;

/// How a final aggregate is computed from partial columns.
#[derive(Clone, Copy)]
enum Merge {
    /// COUNT: SUM of the partial counts, 0 when there are none.
    Count(usize),
    Sum(usize),
    Min(usize),
    Max(usize),
    /// AVG: SUM of partial sums over SUM of partial counts, in AVG's own type and rounding.
    Avg {
        sum: usize,
        count: usize,
    },
}

impl Merge {
    /// The same merge over other partial columns.
    fn map(self, f: impl Fn(usize) -> usize) -> Self {
        match self {
            Self::Count(k) => Self::Count(f(k)),
            Self::Sum(k) => Self::Sum(f(k)),
            Self::Min(k) => Self::Min(f(k)),
            Self::Max(k) => Self::Max(f(k)),
            Self::Avg { sum, count } => Self::Avg { sum: f(sum), count: f(count) },
        }
    }
}

/// A cast is invisible in a column's name, so an AVG's widened sum (`sum(CAST(x AS DOUBLE))`)
/// and the query's own `sum(x)` would clash in one sub-query: such an AVG takes the query's sum
/// instead, and the slot it no longer uses is dropped.
fn share_clashing_sums(partial_aggs: Vec<Expr>, mut merges: Vec<Merge>) -> (Vec<Expr>, Vec<Merge>) {
    let names: Vec<String> = partial_aggs.iter().map(|e| e.schema_name().to_string()).collect();
    let avg_sums: Vec<usize> = merges
        .iter()
        .filter_map(|m| if let Merge::Avg { sum, .. } = m { Some(*sum) } else { None })
        .collect();
    let mut target: Vec<usize> = (0..partial_aggs.len()).collect();
    for &i in &avg_sums {
        let other = (0..partial_aggs.len())
            .filter(|&j| j != i && names[j] == names[i])
            .min_by_key(|j| (avg_sums.contains(j), *j));
        if let Some(j) = other
            && !(avg_sums.contains(&j) && j > i)
        {
            target[i] = j;
        }
    }
    for m in &mut merges {
        *m = m.map(|k| target[k]);
    }
    // Drop the slots nothing refers to any more, and number the rest anew.
    let used: Vec<bool> = (0..partial_aggs.len()).map(|k| target.contains(&k)).collect();
    let mut new_index = vec![0; partial_aggs.len()];
    let mut kept = Vec::new();
    for (k, e) in partial_aggs.into_iter().enumerate() {
        if used[k] {
            new_index[k] = kept.len();
            kept.push(e);
        }
    }
    for m in &mut merges {
        *m = m.map(|k| new_index[k]);
    }
    (kept, merges)
}

/// Splits one aggregate over a flattened federated table.
fn split_aggregate(
    agg: &Aggregate,
    flat: Flat,
    index: usize,
    allow_partial: bool,
) -> Result<(LogicalPlan, Job), QueryError> {
    let table = flat.table.clone();
    check_parts(&table, allow_partial)?;
    let input_schema = agg.input.schema();
    let groups = split_groups(agg, &flat.outputs)?;
    let mut slots = Slots::default();
    let mut merges = Vec::new();
    for a in &agg.aggr_expr {
        merges.push(split_call(a, &table, input_schema, &flat.outputs, &mut slots)?);
    }
    let (partial_aggs, merges) = share_clashing_sums(slots.0, merges);
    let sample = table.parts.first().map(|p| p.dataset.as_str()).unwrap_or("t");
    let partial =
        partial_plan(&table, sample, &flat.filters, &groups, &partial_aggs).map_err(QueryError::plan)?;
    let partial_schema: SchemaRef = Arc::new(partial.schema().as_arrow().clone());
    let partials = Arc::new(PartialsTable { schema: partial_schema.clone(), batches: OnceLock::new() });
    let merged = merge_plan(agg, &merges, groups.len(), index, &partials)?;
    let job = Job {
        index,
        table,
        filters: flat.filters,
        kind: JobKind::Aggregate { groups, partial_aggs },
        partial_schema,
        partials,
    };
    Ok((merged, job))
}

/// The aggregate's group keys over the table's own columns; grouping sets are refused.
fn split_groups(agg: &Aggregate, outputs: &[Expr]) -> Result<Vec<Expr>, QueryError> {
    let input_schema = agg.input.schema();
    let mut groups = Vec::new();
    for g in &agg.group_expr {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err(QueryError::Refused(
                "GROUPING SETS, ROLLUP and CUBE over federated tables are not supported; run one GROUP BY per grouping and combine them with UNION ALL".into(),
            ));
        }
        groups.push(substitute(g, input_schema, outputs).map_err(QueryError::plan)?);
    }
    Ok(groups)
}

/// The partial aggregates of one sub-query, each once: a merge refers to them by index.
#[derive(Default)]
struct Slots(Vec<Expr>);

impl Slots {
    /// The index of `e` among the partial aggregates, added if it is not there yet.
    fn slot(&mut self, e: Expr) -> usize {
        if let Some(i) = self.0.iter().position(|x| x == &e) {
            i
        } else {
            self.0.push(e);
            self.0.len() - 1
        }
    }
}

/// Splits one aggregate call: its partial aggregates go into `slots`, and how to merge them is
/// returned.
fn split_call(
    a: &Expr,
    table: &FederatedTable,
    input_schema: &DFSchema,
    outputs: &[Expr],
    slots: &mut Slots,
) -> Result<Merge, QueryError> {
    let Expr::AggregateFunction(f) = a.clone().unalias() else {
        return Err(QueryError::Refused(format!("{a} is not an aggregate function")));
    };
    let name = f.func.name().to_ascii_lowercase();
    if !f.params.order_by.is_empty() {
        return Err(QueryError::Refused(format!(
            "ORDER BY inside {name}() over {} is not supported",
            table.display
        )));
    }
    let (args, filter) = substituted_params(&f, input_schema, outputs)?;
    let same = |distinct: bool| {
        Expr::AggregateFunction(AggregateFunction::new_udf(
            f.func.clone(),
            args.clone(),
            distinct,
            filter.clone(),
            vec![],
            f.params.null_treatment,
        ))
    };
    if f.params.distinct && !matches!(name.as_str(), "min" | "max") {
        check_distinct(&name, table)?;
        return Ok(Merge::Count(slots.slot(same(true))));
    }
    Ok(match name.as_str() {
        "count" => Merge::Count(slots.slot(same(false))),
        "sum" => Merge::Sum(slots.slot(same(false))),
        "min" => Merge::Min(slots.slot(same(false))),
        "max" => Merge::Max(slots.slot(same(false))),
        "avg" => avg_partials(&f, &args, &filter, input_schema, slots)?,
        other => {
            return Err(QueryError::Refused(format!(
                "{other}() over {} cannot be merged from each member's partial results; \
                 supported aggregates: COUNT, COUNT(*), SUM, AVG, MIN, MAX",
                table.display
            )));
        }
    })
}

/// An aggregate call's arguments and FILTER clause, over the table's own columns.
fn substituted_params(
    f: &AggregateFunction,
    input_schema: &DFSchema,
    outputs: &[Expr],
) -> Result<(Vec<Expr>, Option<Box<Expr>>), QueryError> {
    let args = f
        .params
        .args
        .iter()
        .map(|x| substitute(x, input_schema, outputs))
        .collect::<DfResult<Vec<_>>>()
        .map_err(QueryError::plan)?;
    let filter = match &f.params.filter {
        Some(x) => Some(Box::new(substitute(x, input_schema, outputs).map_err(QueryError::plan)?)),
        None => None,
    };
    Ok((args, filter))
}

/// Refuses a DISTINCT aggregate that owners cannot compute whole: only COUNT(DISTINCT ...) over
/// one member's dataset is.
fn check_distinct(name: &str, table: &FederatedTable) -> Result<(), QueryError> {
    if name != "count" || table.shared || table.parts.len() != 1 {
        return Err(QueryError::Refused(format!(
            "{}(DISTINCT ...) over {} cannot be computed without moving rows across members: distinct values \
             would have to be compared across borders. What works: COUNT(...) or COUNT(*), or COUNT(DISTINCT ...) \
             on one member's dataset (member.dataset), which its owner computes whole",
            name.to_uppercase(),
            table.display
        )));
    }
    Ok(())
}

/// AVG's partials, a sum and a count under the call's FILTER clause, and their merge.
fn avg_partials(
    f: &AggregateFunction,
    args: &[Expr],
    filter: &Option<Box<Expr>>,
    input_schema: &DFSchema,
    slots: &mut Slots,
) -> Result<Merge, QueryError> {
    let arg = args.first().cloned().unwrap_or_else(|| lit(1i64));
    let with_filter = |e: Expr| match (filter, e) {
        (Some(fl), Expr::AggregateFunction(mut af)) => {
            af.params.filter = Some(fl.clone());
            Expr::AggregateFunction(af)
        }
        (_, e) => e,
    };
    // Summed as the pooled AVG sums: integers as Float64 (no wrapping), decimals of
    // high precision in 256 bits; both casts are lossless, so owners take them on
    // personal data too.
    let arg_type = f.params.args.first().map(|a| ExprSchemable::get_type(a, input_schema)).transpose();
    let summed = match arg_type.map_err(QueryError::plan)? {
        Some(t) if t.is_integer() => cast_expr(arg.clone(), DataType::Float64),
        Some(DataType::Decimal128(p, s)) if p > 25 => cast_expr(arg.clone(), DataType::Decimal256(76, s)),
        _ => arg.clone(),
    };
    Ok(Merge::Avg { sum: slots.slot(with_filter(sum(summed))), count: slots.slot(with_filter(count(arg))) })
}

/// The plan that merges the partials of one split aggregate into the aggregate's own output.
fn merge_plan(
    agg: &Aggregate,
    merges: &[Merge],
    ng: usize,
    index: usize,
    partials: &Arc<PartialsTable>,
) -> Result<LogicalPlan, QueryError> {
    // The merge: group by g*, merge p*, then restore the original output names and types.
    let p = |i: usize| Expr::Column(Column::new_unqualified(format!("p{i}")));
    let finals: Vec<Expr> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let e = match m {
                Merge::Count(k) => coalesce(vec![sum(p(*k)), lit(0i64)]),
                Merge::Sum(k) => sum(p(*k)),
                Merge::Min(k) => min(p(*k)),
                Merge::Max(k) => max(p(*k)),
                Merge::Avg { sum: s, count: c } => {
                    let target = agg.schema.field(ng + i).data_type().clone();
                    crate::merge_avg::avg_merge(sum(p(*s)), sum(p(*c)), target)
                }
            };
            e.alias(format!("f{i}"))
        })
        .collect();
    LogicalPlanBuilder::scan(
        TableReference::bare(format!("__concord_partials_{index}")),
        provider_as_source(partials.clone() as Arc<dyn TableProvider>),
        None,
    )
    .and_then(|b| {
        b.aggregate((0..ng).map(|j| Expr::Column(Column::new_unqualified(format!("g{j}")))), finals)
    })
    .and_then(|b| {
        let restore = agg.schema.iter().enumerate().map(|(i, (q, f))| {
            let src = if i < ng { format!("g{i}") } else { format!("f{}", i - ng) };
            cast_expr(Expr::Column(Column::new_unqualified(src)), f.data_type().clone())
                .alias_qualified(q.cloned(), f.name())
        });
        b.project(restore)
    })
    .and_then(LogicalPlanBuilder::build)
    .map_err(QueryError::plan)
}

/// If the plan still reads a federated table row by row, says where and what would work.
fn explain_raw_use(plan: &LogicalPlan) -> Option<String> {
    let mut reason = None;
    let _ = plan.apply_with_subqueries(|node| {
        let found = match node {
            LogicalPlan::Join(j) => {
                let (l, r) = (federated_tables(&j.left), federated_tables(&j.right));
                match (l.first(), r.first()) {
                    (Some(a), Some(b)) => Some(format!(
                        "joining {a} with {b} row by row would move one member's rows to another, and no raw row crosses \
                         a border. What works: aggregate each side in its own subquery or CTE (GROUP BY the join key), \
                         then join the aggregated results"
                    )),
                    (Some(a), None) | (None, Some(a)) => Some(format!(
                        "joining {a} row by row with another table would bring {a}'s rows here, and raw rows never leave \
                         their owner's node. What works: aggregate {a} first (GROUP BY the join key) in a subquery or CTE, \
                         then join the result"
                    )),
                    (None, None) => None,
                }
            }
            LogicalPlan::Window(w) => federated_tables(&w.input).first().map(|a| {
                format!(
                    "window functions over {a}'s rows would need its raw rows, which never leave their owner's node. \
                     What works: aggregate first in a subquery or CTE, then apply the window function to the aggregated result"
                )
            }),
            LogicalPlan::TableScan(_) => federated_of(node).map(|t| raw_rows_message(&t.display)),
            _ => None,
        };
        if found.is_some() {
            reason = found;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    reason
}

fn federated_tables(plan: &LogicalPlan) -> Vec<String> {
    let mut names = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|n| {
        if let Some(t) = federated_of(n) {
            names.insert(t.display.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names.into_iter().collect()
}
