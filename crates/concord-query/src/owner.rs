//! The owner's side of a federated query: re-plan the sub-query a peer sent against the one
//! dataset it names, check its shape, reduce it to parts over the dataset's own columns, check
//! those against the dataset's policy ([`crate::release`]), and run the owner's own plan.
//!
//! Invariant: the owner checks every sub-query itself; nothing the requester planned is trusted
//! or run. The only plans accepted have one of two shapes, and what runs is rebuilt from their
//! parts:
//! `Projection(columns) -> Aggregate(COUNT|SUM|MIN|MAX) -> [Filter | Projection | SubqueryAlias]* -> TableScan(dataset)`
//! (an aggregate), or `Projection -> [Filter | Projection | SubqueryAlias]* -> TableScan(dataset)`
//! (rows, for `read_rows`).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;

use crate::QueryError;
use crate::limits::ExecLimits;
use crate::release::{ReleasePlan, ReleaseReport, Rules, Subquery};

/// What the owner computed for one sub-query.
#[derive(Debug)]
pub struct OwnerAnswer {
    /// The schema of the answer, dictionary columns unpacked as they travel.
    pub schema: SchemaRef,
    /// The rows as released, in that schema.
    pub batches: Vec<RecordBatch>,
    /// Rows read from the dataset; `None` where they are not told (differential privacy).
    pub rows_scanned: Option<u64>,
    /// Rows (groups) of the result.
    pub groups_released: u64,
    /// What the release rules held back and how they noised the rest.
    pub report: ReleaseReport,
}

/// Aggregate functions whose partials can be merged across members.
pub const PARTIAL_FUNCTIONS: [&str; 4] = ["count", "sum", "min", "max"];

fn refuse(reason: impl Into<String>) -> QueryError {
    QueryError::SubqueryRefused(reason.into())
}

/// Plans and checks `sql` against `dataset` alone, and reduces it to its parts.
pub async fn parse_subquery(
    dataset: &str,
    table: Arc<dyn TableProvider>,
    sql: &str,
) -> Result<Subquery, QueryError> {
    let ctx = SessionContext::new();
    let plan = plan_subquery(&ctx, dataset, table, sql).await?;
    Subquery::parse(&plan)
}

/// Runs a release that [`crate::release::check`] made, within `limits`.
pub async fn run_release(
    plan: &ReleasePlan,
    dataset: &str,
    table: Arc<dyn TableProvider>,
    limits: &ExecLimits,
) -> Result<OwnerAnswer, QueryError> {
    let (batches, report, rows_scanned) = crate::release::run(plan, dataset, table, limits).await?;
    // The answer as it travels: dictionaries unpacked (see `ipc::without_dictionaries`).
    let (schema, batches) = crate::ipc::without_dictionaries(&plan.subquery.schema, batches)?;
    Ok(OwnerAnswer {
        schema,
        groups_released: report.groups_released,
        batches,
        rows_scanned: Some(rows_scanned),
        report,
    })
}

/// Plans, checks and runs `sql` against `dataset` alone under `rules`, within `limits`.
pub async fn run_subquery(
    dataset: &str,
    table: Arc<dyn TableProvider>,
    sql: &str,
    rules: &Rules,
    limits: &ExecLimits,
) -> Result<OwnerAnswer, QueryError> {
    let sub = parse_subquery(dataset, table.clone(), sql).await?;
    let plan = crate::release::check(sub, rules.clone())?;
    run_release(&plan, dataset, table, limits).await
}

/// Plans `sql` against `dataset` alone in `ctx`, with types coerced as they will run, and
/// checks it: the shape of a partial aggregate or of a row read, and bounded values.
pub async fn plan_subquery(
    ctx: &SessionContext,
    dataset: &str,
    table: Arc<dyn TableProvider>,
    sql: &str,
) -> Result<LogicalPlan, QueryError> {
    check_size(sql)?;
    ctx.register_table(dataset, table.clone()).map_err(QueryError::plan)?;
    let plan =
        ctx.state().create_logical_plan(sql).await.map_err(|e| refuse(QueryError::plan(e).to_string()))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| refuse(e.strip_backtrace()))?;
    // Type coercion, as it would run: the casts it adds (text compared with a number is cast
    // to the number) are part of what the owner checks, since they can fail for some values.
    let state = ctx.state();
    let plan = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})
        .map_err(|e| refuse(e.strip_backtrace()))?;
    check_subquery_plan(&plan, dataset, &table)?;
    crate::limits::check_plan(&plan).map_err(|e| match e {
        QueryError::Refused(why) => refuse(why),
        other => other,
    })?;
    Ok(plan)
}

/// Operators (AND, OR, comparisons, arithmetic, ...) one sub-query may hold. The planner nests
/// parentheses only so deep, but a flat chain of operators becomes an expression tree as deep
/// as it is long, which every walk over the plan recurses through.
pub const MAX_SUBQUERY_OPERATORS: usize = 1024;

/// Bytes of one sub-query's SQL.
pub const MAX_SUBQUERY_BYTES: usize = 64 * 1024;

/// Refuses sub-query SQL too long, or with too many operators, to plan within a bounded stack.
pub(crate) fn check_size(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if sql.len() > MAX_SUBQUERY_BYTES {
        return Err(refuse(format!(
            "the sub-query is {} bytes; at most {MAX_SUBQUERY_BYTES} are planned",
            sql.len()
        )));
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().map_err(|e| refuse(e.to_string()))?;
    let operators = tokens
        .iter()
        .filter(|t| match t {
            Token::Word(w) => matches!(
                w.keyword,
                Keyword::AND | Keyword::OR | Keyword::NOT | Keyword::LIKE | Keyword::ILIKE | Keyword::IS
            ),
            Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::DuckIntDiv
            | Token::Mod
            | Token::StringConcat
            | Token::Ampersand
            | Token::Pipe
            | Token::Caret
            | Token::ShiftLeft
            | Token::ShiftRight => true,
            _ => false,
        })
        .count();
    if operators > MAX_SUBQUERY_OPERATORS {
        return Err(refuse(format!(
            "the sub-query holds {operators} operators; at most {MAX_SUBQUERY_OPERATORS} are planned. Use IN lists \
             rather than long chains of OR"
        )));
    }
    Ok(())
}

/// Checks the shape of a sub-query plan, see the module docs.
pub fn check_subquery_plan(
    plan: &LogicalPlan,
    dataset: &str,
    table: &Arc<dyn TableProvider>,
) -> Result<(), QueryError> {
    let LogicalPlan::Projection(proj) = plan else {
        return Err(refuse(
            "a sub-query must be SELECT <group keys and partial aggregates> FROM <dataset> [WHERE ...] [GROUP BY ...]",
        ));
    };
    for e in &proj.expr {
        if !matches!(e.clone().unalias(), Expr::Column(_)) {
            return Err(refuse(format!("select item {e} is neither a group key nor a partial aggregate")));
        }
    }
    let LogicalPlan::Aggregate(agg) = proj.input.as_ref() else {
        // A row read: what the policy's modes and rules say of it is decided later.
        return check_chain(proj.input.as_ref(), dataset, table);
    };
    for g in &agg.group_expr {
        if matches!(g, Expr::GroupingSet(_)) {
            return Err(refuse("GROUPING SETS, ROLLUP and CUBE are not accepted in sub-queries"));
        }
        check_scalar(g)?;
    }
    for a in &agg.aggr_expr {
        let Expr::AggregateFunction(f) = a.clone().unalias() else {
            return Err(refuse(format!("{a} is not an aggregate function")));
        };
        let name = f.func.name().to_ascii_lowercase();
        if !PARTIAL_FUNCTIONS.contains(&name.as_str()) {
            return Err(refuse(format!(
                "{name}() is not a partial aggregate; accepted: COUNT, SUM, MIN, MAX"
            )));
        }
        if !f.params.order_by.is_empty() {
            return Err(refuse("ORDER BY inside an aggregate is not accepted"));
        }
        for arg in f.params.args.iter().chain(f.params.filter.as_deref()) {
            check_scalar(arg)?;
        }
    }
    check_chain(agg.input.as_ref(), dataset, table)
}

/// Checks the chain below the aggregate (or the select list of a row read): filters,
/// projections and aliases over a plain scan of `dataset`, walked as the requester's split
/// walks it ([`crate::chain::walk`]).
fn check_chain(plan: &LogicalPlan, dataset: &str, table: &Arc<dyn TableProvider>) -> Result<(), QueryError> {
    use crate::chain::NotAChain;
    let chain = crate::chain::walk(plan).map_err(|e| match e {
        NotAChain::Operator(op) => refuse(format!(
            "{} is not accepted in a sub-query",
            op.split(':').next().unwrap_or("this operator")
        )),
        NotAChain::Refused(e, what) => refuse(format!("{e} holds {what}, which a sub-query may not")),
        NotAChain::Plan(e) => refuse(e.strip_backtrace()),
    })?;
    let scan = chain.scan;
    let source = datafusion::catalog::default_table_source::source_as_provider(&scan.source)
        .map_err(|e| refuse(e.strip_backtrace()))?;
    if scan.table_name.table() != dataset
        || !Arc::ptr_eq(&source, table)
        || scan.fetch.is_some()
        || !scan.filters.is_empty()
    {
        return Err(refuse(format!("a sub-query may read only dataset {dataset}, plainly")));
    }
    Ok(())
}

/// A scalar expression: nothing inside that the requester's split would keep on its side
/// ([`crate::chain::refused_in`]).
fn check_scalar(e: &Expr) -> Result<(), QueryError> {
    let bad = crate::chain::refused_in(e);
    match bad {
        Some(what) => Err(refuse(format!("{e} holds {what}, which a sub-query may not"))),
        None => Ok(()),
    }
}
