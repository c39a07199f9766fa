//! Datasets whose rows stay in another engine (a member's PostgreSQL database): the table the
//! node's DataFusion sees, and the hook through which an owner's whole checked plan runs inside
//! that engine, so that what comes back to the node is the groups and not the rows.
//!
//! The engine itself (connections, SQL dialect, reading its answers) lives in another crate:
//! this one does no network IO. It gives engines [`portable`], the owner's plan rewritten into
//! operations any SQL engine has (no DataFusion UDF, no join that matches NULL keys).
//!
//! The owner's plan is split ([`physical_plan`]): every aggregate over filters and projections
//! of the table runs inside the engine as one SQL statement, the shape DataFusion's unparser
//! writes reliably; whatever is above it (the minimum group size's cells kept, the per-unit caps
//! and random choice of differential privacy, the final totals) runs in DataFusion on the node
//! over what the engine sent, and anything else reads rows through the table's scan.
//!
//! Invariant: a plan that reads a [`RemoteTable`] computes what it would over the same rows in
//! a file: the engine runs a part of the plan, never another plan; the owner's check and
//! release rules act on the plan, not on where it runs.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchemaRef;
use datafusion::common::NullEquality;
use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::datasource::{TableType, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::execution::context::QueryPlanner;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::logical_expr::{
    Expr, ExprSchemable as _, Extension, LogicalPlan, TableProviderFilterPushDown, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, cast, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

/// An engine that holds a dataset's rows and runs SQL over them.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The engine's name, for messages: `PostgreSQL`.
    fn name(&self) -> &str;

    /// Reads rows of the table: the columns of `projection` (all without one; `schema` is the
    /// projected schema), rows that meet `filters` where the engine can apply them (DataFusion
    /// applies them again), at most `limit`.
    fn scan(
        &self,
        schema: SchemaRef,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError>;

    /// A plan that runs `plan` wholly inside the engine: an aggregate over filters and
    /// projections of this engine's table (analysed); its output has `plan`'s schema.
    fn run(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>, DataFusionError>;

    /// Whether the engine is DataFusion itself (a Ballista cluster of this DataFusion's
    /// version), which computes every expression as the node would: then any aggregate over
    /// filters and projections of the table whose functions are immutable (no clock, no random
    /// draw) is pushed, not only those `computes_alike` allows.
    fn computes_as_datafusion(&self) -> bool {
        false
    }
}

/// A dataset whose rows stay in an [`Engine`]. A base table: the owner's check sees one scan of
/// the dataset, as for a file.
#[derive(Debug)]
pub struct RemoteTable {
    schema: SchemaRef,
    engine: Arc<dyn Engine>,
    left_out: Vec<String>,
}

impl RemoteTable {
    /// The table of `engine`'s rows, with the columns of `schema`; `left_out` names the
    /// engine's columns no shared schema can hold, each with its type and why.
    pub fn new(schema: SchemaRef, engine: Arc<dyn Engine>, left_out: Vec<String>) -> Self {
        Self { schema, engine, left_out }
    }

    /// The engine that holds the rows.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The engine's columns this table leaves out, each with its type and why.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }
}

#[async_trait::async_trait]
impl TableProvider for RemoteTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        self.engine.scan(schema, projection, filters, limit)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // The engine applies what it can; DataFusion applies every filter again.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// `filter` with its columns named without their table: for an engine whose scan reads one
/// relation, the dataset alone.
pub fn unqualified(filter: &Expr) -> Result<Expr, DataFusionError> {
    use datafusion::common::Column;
    Ok(filter
        .clone()
        .transform_up(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(Expr::Column(Column::new_unqualified(c.name))),
                other => Transformed::no(other),
            })
        })?
        .data)
}

/// The engine of the one remote table every scan of `plan` reads (subqueries included), if
/// every scan reads the same [`RemoteTable`]'s engine.
pub fn engine_of(plan: &LogicalPlan) -> Option<Arc<dyn Engine>> {
    let mut found: Option<Arc<dyn Engine>> = None;
    let mut mixed = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let engine = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.downcast_ref::<RemoteTable>().map(|t| t.engine.clone()));
            match (&found, engine) {
                (_, None) => mixed = true,
                (None, Some(e)) => found = Some(e),
                (Some(f), Some(e)) if Arc::ptr_eq(f, &e) => {}
                (Some(_), Some(_)) => mixed = true,
            }
        }
        Ok(if mixed { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    if mixed { None } else { found }
}

/// `plan` in operations any SQL engine has, for an engine to run as its own SQL:
/// - the fixed-point clamp of differential privacy as CASE, LEAST, GREATEST, ROUND and casts
///   (with the same invariant: every non-NULL value within its bounds, whatever the input);
/// - a join that matches NULL keys with NULL keys as a join on equalities that can be hashed
///   (each key's text, NULL as the empty text, and whether it is NULL), since SQL's `=` never
///   matches NULL.
pub fn portable(plan: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
    let plan = bare_scans(plan)?;
    let plan = plan.transform_up_with_subqueries(|node| {
        let node = match node {
            LogicalPlan::Join(mut j) if j.null_equality == NullEquality::NullEqualsNull => {
                let mut on = Vec::with_capacity(j.on.len() * 2);
                for (l, r) in j.on {
                    let text = |e: Expr| coalesce(vec![cast(e, DataType::Utf8), lit("")]);
                    on.push((text(l.clone()), text(r.clone())));
                    on.push((l.is_null(), r.is_null()));
                }
                j.on = on;
                j.null_equality = NullEquality::NullEqualsNothing;
                Transformed::yes(LogicalPlan::Join(j))
            }
            other => Transformed::no(other),
        };
        node.transform_data(|n| n.map_expressions(|e| e.transform_up(crate::fixed::portable)))
    })?;
    Ok(plan.data)
}

/// `plan` with every scan under its table's bare name (`local.stays` as `stays`), its columns
/// renamed to match: the engine's SQL names the table by the CTE it writes, which cannot be
/// qualified.
fn bare_scans(plan: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
    use datafusion::common::{Column, TableReference};
    use datafusion::logical_expr::TableScanBuilder;
    let mut renames: Vec<(TableReference, TableReference)> = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && !matches!(scan.table_name, TableReference::Bare { .. })
        {
            renames.push((scan.table_name.clone(), TableReference::bare(scan.table_name.table())));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if renames.is_empty() {
        return Ok(plan);
    }
    let rename = |e: Expr| {
        e.transform(|x| {
            Ok(match x {
                Expr::Column(c) => match renames.iter().find(|(from, _)| c.relation.as_ref() == Some(from)) {
                    Some((_, to)) => Transformed::yes(Expr::Column(Column::new(Some(to.clone()), c.name))),
                    None => Transformed::no(Expr::Column(c)),
                },
                other => Transformed::no(other),
            })
        })
    };
    Ok(plan
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => {
                let name = renames
                    .iter()
                    .find(|(from, _)| *from == scan.table_name)
                    .map(|(_, to)| to.clone())
                    .unwrap_or(scan.table_name.clone());
                let filters = scan
                    .filters
                    .into_iter()
                    .map(|f| rename(f).map(|t| t.data))
                    .collect::<Result<Vec<_>, _>>()?;
                let rebuilt = TableScanBuilder::new(name, scan.source)
                    .with_projection(scan.projection)
                    .with_filters(filters)
                    .with_fetch(scan.fetch)
                    .with_statistics_requests(scan.statistics_requests)
                    .build()?;
                Ok(Transformed::yes(LogicalPlan::TableScan(rebuilt)))
            }
            other => {
                let mapped = other.map_expressions(&rename)?;
                Ok(Transformed::yes(mapped.data.recompute_schema()?))
            }
        })?
        .data)
}

/// A part of the owner's plan that runs inside the engine: an aggregate over filters and
/// projections of the one scan, the shape whose SQL is made and checked reliably. Its output
/// (the groups) is what crosses from the engine to the node; DataFusion runs the rest.
#[derive(Debug, Clone)]
pub struct Pushed {
    plan: LogicalPlan,
    engine: Arc<dyn Engine>,
}

impl PartialEq for Pushed {
    fn eq(&self, other: &Self) -> bool {
        self.plan == other.plan && Arc::ptr_eq(&self.engine, &other.engine)
    }
}

impl Eq for Pushed {}

impl std::hash::Hash for Pushed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.plan.hash(state);
    }
}

impl PartialOrd for Pushed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.plan.partial_cmp(&other.plan)
    }
}

impl UserDefinedLogicalNodeCore for Pushed {
    fn name(&self) -> &str {
        "PushedToEngine"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        Vec::new()
    }

    fn schema(&self) -> &DFSchemaRef {
        self.plan.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "PushedToEngine: {}", self.engine.name())
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        _inputs: Vec<LogicalPlan>,
    ) -> Result<Self, DataFusionError> {
        Ok(self.clone())
    }
}

/// Whether an expression of `node` itself holds a subquery.
fn has_subquery(node: &LogicalPlan) -> bool {
    node.expressions().iter().any(|e| {
        e.exists(|x| Ok(matches!(x, Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_))))
            .unwrap_or(true)
    })
}

/// Whether every expression of `node` is one an SQL engine computes as DataFusion does, so that
/// pushing it changes nothing of the answer: columns and literals; comparisons, AND, OR, NOT,
/// IS [NOT] NULL, BETWEEN, IN lists, LIKE, CASE; +, - and * (an overflow fails in the engine,
/// loudly, where DataFusion's may wrap); casts that widen without loss; a few functions with the
/// same meaning in both (`coalesce`, `nullif`, `least`, `greatest`, `length`, `strpos`,
/// `starts_with`, `concat`, calendar parts of dates and times, and differential privacy's
/// `clamp_fixed`, which [`portable`] writes out); and COUNT, SUM, MIN, MAX. Anything else (AVG,
/// division, float-to-integer casts, which truncate in DataFusion and round in SQL, grouping
/// sets, windows) keeps the aggregate on the node, over rows read through the scan.
fn computes_alike(node: &LogicalPlan) -> bool {
    use datafusion::logical_expr::Operator::*;
    let schema = match node {
        LogicalPlan::TableScan(scan) => {
            match datafusion::common::DFSchema::try_from_qualified_schema(
                scan.table_name.clone(),
                &scan.source.schema(),
            ) {
                Ok(s) => Arc::new(s),
                Err(_) => return false,
            }
        }
        other => match other.inputs().first() {
            Some(input) => input.schema().clone(),
            None => return false,
        },
    };
    node.expressions().iter().all(|e| {
        let mut alike = true;
        let _ = e.apply(|x| {
            let fine = match x {
                Expr::Column(_) | Expr::Literal(..) | Expr::Alias(_) => true,
                Expr::BinaryExpr(b) => matches!(
                    b.op,
                    Eq | NotEq
                        | Lt
                        | LtEq
                        | Gt
                        | GtEq
                        | And
                        | Or
                        | IsDistinctFrom
                        | IsNotDistinctFrom
                        | Plus
                        | Minus
                        | Multiply
                        | StringConcat
                ),
                Expr::Not(_)
                | Expr::IsNull(_)
                | Expr::IsNotNull(_)
                | Expr::IsTrue(_)
                | Expr::IsFalse(_)
                | Expr::IsNotTrue(_)
                | Expr::IsNotFalse(_)
                | Expr::Between(_)
                | Expr::InList(_)
                | Expr::Case(_) => true,
                Expr::Like(l) => !l.case_insensitive && l.escape_char.is_none(),
                Expr::Cast(c) => match (&*c.expr, c.expr.get_type(&schema)) {
                    (Expr::Literal(..), _) => true,
                    (_, Ok(from)) => widens(&from, c.field.data_type()),
                    (_, Err(_)) => false,
                },
                Expr::ScalarFunction(f) => match f.name() {
                    "coalesce" | "nullif" | "least" | "greatest" | "character_length" | "length"
                    | "octet_length" | "strpos" | "starts_with" | "concat" | "clamp_fixed" => true,
                    "date_part" => matches!(
                        f.args.first(),
                        Some(Expr::Literal(datafusion::common::ScalarValue::Utf8(Some(p)), _))
                            if ["year", "quarter", "month", "week", "day", "doy", "dow", "hour", "minute"]
                                .contains(&p.to_ascii_lowercase().as_str())
                    ),
                    _ => false,
                },
                Expr::AggregateFunction(a) => {
                    matches!(a.func.name(), "count" | "sum" | "min" | "max") && a.params.order_by.is_empty()
                }
                _ => false,
            };
            alike &= fine;
            Ok(match x {
                _ if !fine => TreeNodeRecursion::Stop,
                // The clamp's argument (a column, as the policy has it, read as Int64 or
                // Float64): its conversion may differ in the last bit of a float, which the
                // clamp rounds to its units either way.
                Expr::ScalarFunction(f) if f.name() == "clamp_fixed" => TreeNodeRecursion::Jump,
                _ => TreeNodeRecursion::Continue,
            })
        });
        alike
    })
}

/// Whether every function of `node`'s expressions gives the same value wherever and whenever it
/// runs (no `now()`, `current_date` or `random()`, which would take the engine's clock or draw
/// there): what a DataFusion engine may run for the node.
fn immutable(node: &LogicalPlan) -> bool {
    use datafusion::logical_expr::Volatility;
    node.expressions().iter().all(|e| {
        !e.exists(|x| {
            Ok(match x {
                Expr::ScalarFunction(f) => f.func.signature().volatility != Volatility::Immutable,
                Expr::AggregateFunction(a) => a.func.signature().volatility != Volatility::Immutable,
                _ => false,
            })
        })
        .unwrap_or(true)
    })
}

/// Whether every value of `from` is the same value as `to`, in DataFusion and in SQL alike.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int = |t: &DataType| match t {
        Int8 => Some(3),
        Int16 => Some(5),
        Int32 => Some(10),
        Int64 => Some(19),
        _ => None,
    };
    match (from, to) {
        (a, b) if a == b => true,
        (Dictionary(_, v), t) => widens(v, t),
        (a, b) if int(a).is_some() && int(b).is_some() => int(a) <= int(b),
        (a, Decimal128(p, s) | Decimal256(p, s)) if int(a).is_some() => {
            int(a).is_some_and(|d| i16::from(*p) - i16::from(*s) >= d)
        }
        (Decimal128(fp, fs) | Decimal256(fp, fs), Decimal128(p, s) | Decimal256(p, s)) => {
            *fs >= 0 && s >= fs && i16::from(*p) - i16::from(*s) >= i16::from(*fp) - i16::from(*fs)
        }
        (Int8 | Int16 | Int32 | Int64 | Float32, Float64) => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        _ => false,
    }
}

/// Whether `plan` is filters, projections and aliases down to one scan of `engine`'s table,
/// with no subquery: the input of an aggregate the engine runs.
fn linear(plan: &LogicalPlan, engine: &Arc<dyn Engine>) -> bool {
    !has_subquery(plan)
        && ((engine.computes_as_datafusion() && immutable(plan)) || computes_alike(plan))
        && match plan {
            LogicalPlan::Filter(f) => linear(&f.input, engine),
            LogicalPlan::Projection(p) => linear(&p.input, engine),
            LogicalPlan::SubqueryAlias(a) => linear(&a.input, engine),
            // An optimised plan's scan carries the filters pushed into it (applied again above).
            LogicalPlan::TableScan(scan) => {
                scan.fetch.is_none()
                    && source_as_provider(&scan.source)
                        .ok()
                        .and_then(|p| p.downcast_ref::<RemoteTable>().map(|t| Arc::ptr_eq(&t.engine, engine)))
                        .unwrap_or(false)
            }
            _ => false,
        }
}

/// `plan` (analysed) with every aggregate over a [`linear`] input of `engine`'s table replaced
/// by a [`Pushed`] node, which the engine runs; what is left reads the table through its scan.
pub fn push_down(plan: LogicalPlan, engine: &Arc<dyn Engine>) -> Result<LogicalPlan, DataFusionError> {
    Ok(plan
        .transform_down_with_subqueries(|node| {
            Ok(match &node {
                LogicalPlan::Aggregate(a)
                    if linear(&a.input, engine)
                        && !has_subquery(&node)
                        && ((engine.computes_as_datafusion() && immutable(&node))
                            || computes_alike(&node)) =>
                {
                    Transformed::new(
                        LogicalPlan::Extension(Extension {
                            node: Arc::new(Pushed { plan: node.clone(), engine: engine.clone() }),
                        }),
                        true,
                        TreeNodeRecursion::Jump,
                    )
                }
                _ => Transformed::no(node),
            })
        })?
        .data)
}

/// Plans [`Pushed`] nodes: the engine runs their plan.
#[derive(Debug)]
struct PushedPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for PushedPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>, DataFusionError> {
        match node.as_any().downcast_ref::<Pushed>() {
            Some(p) => Ok(Some(p.engine.run(&p.plan)?)),
            None => Ok(None),
        }
    }
}

/// The physical plan of an owner's `plan` (analysed) that reads `engine`'s table: its aggregates
/// run in the engine ([`push_down`]), the rest in DataFusion.
pub async fn physical_plan(
    state: &datafusion::execution::SessionState,
    plan: LogicalPlan,
    engine: &Arc<dyn Engine>,
) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
    let pushed = push_down(plan, engine)?;
    let optimized = state.optimize(&pushed)?;
    // Boxed: the planner's future is large, and it sits inside the owner's own futures.
    let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PushedPlanner)]);
    Box::pin(planner.create_physical_plan(&optimized, state)).await
}

/// The query planner of analysts' sessions: every aggregate over filters and projections of a
/// remote table runs inside its engine ([`push_down`], on the optimised plan), the rest in
/// DataFusion. A member's own analysts thus read groups from their database, not its rows.
#[derive(Debug)]
pub struct RemotePlanner;

#[async_trait::async_trait]
impl QueryPlanner for RemotePlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let mut pushed = plan.clone();
        for engine in engines_of(plan) {
            pushed = push_down(pushed, &engine)?;
        }
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(PushedPlanner)]);
        Box::pin(planner.create_physical_plan(&pushed, session)).await
    }
}

/// The engines of every remote table `plan` reads, each once.
fn engines_of(plan: &LogicalPlan) -> Vec<Arc<dyn Engine>> {
    let mut found: Vec<Arc<dyn Engine>> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(e) = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.downcast_ref::<RemoteTable>().map(|t| t.engine.clone()))
            && !found.iter().any(|f| Arc::ptr_eq(f, &e))
        {
            found.push(e);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::physical_plan::empty::EmptyExec;

    use super::*;

    /// An engine that keeps what it is asked: plans it runs, and scans (answered empty).
    #[derive(Debug, Default)]
    struct Recorder {
        runs: Mutex<Vec<String>>,
        scans: Mutex<usize>,
    }

    impl Engine for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }

        fn scan(
            &self,
            schema: SchemaRef,
            _projection: Option<&Vec<usize>>,
            _filters: &[Expr],
            _limit: Option<usize>,
        ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
            *self.scans.lock().expect("lock") += 1;
            Ok(Arc::new(EmptyExec::new(schema)))
        }

        fn run(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
            self.runs.lock().expect("lock").push(plan.display_indent().to_string());
            Ok(Arc::new(EmptyExec::new(Arc::new(plan.schema().as_arrow().clone()))))
        }
    }

    async fn analyst(sql: &str) -> (Vec<String>, usize) {
        let engine = Arc::new(Recorder::default());
        let schema = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, true),
            Field::new("days", DataType::Int64, true),
            Field::new("score", DataType::Float64, true),
        ]));
        let table = RemoteTable::new(schema, engine.clone(), Vec::new());
        let ctx = crate::limits::analyst_session(&Default::default()).expect("session");
        ctx.register_table("cases", Arc::new(table)).expect("register");
        ctx.sql(sql).await.expect("plans").collect().await.expect("runs");
        let runs = engine.runs.lock().expect("lock").clone();
        let scans = *engine.scans.lock().expect("lock");
        (runs, scans)
    }

    #[tokio::test]
    async fn an_analysts_aggregate_runs_in_the_engine_and_no_row_is_read() {
        let (runs, scans) =
            analyst("SELECT region, count(*), sum(days) FROM cases WHERE days > 2 GROUP BY region").await;
        assert_eq!(scans, 0, "no rows read through the scan: {runs:?}");
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert!(runs[0].starts_with("Aggregate"), "{}", runs[0]);
        assert!(runs[0].contains("days > Int64(2)"), "the filter goes with it: {}", runs[0]);
    }

    #[tokio::test]
    async fn what_an_engine_could_compute_otherwise_stays_on_the_node() {
        for sql in [
            // Truncated by DataFusion, rounded by SQL engines.
            "SELECT CAST(score AS INT) AS s, count(*) FROM cases GROUP BY 1",
            "SELECT avg(days) FROM cases",
            "SELECT sum(days / 2) FROM cases",
            "SELECT count(*) FROM cases WHERE ends_with(region, 'x')",
            "SELECT count(*) FROM cases WHERE region ILIKE 'n%'",
            "SELECT region, count(*) FROM cases GROUP BY ROLLUP(region)",
            "SELECT string_agg(region, ',') FROM cases",
        ] {
            let (runs, scans) = analyst(sql).await;
            assert!(runs.is_empty() && scans >= 1, "{sql}: {runs:?}");
        }
        // Widening casts and the functions both compute alike are sent.
        let (runs, scans) = analyst(
            "SELECT coalesce(region, '-') AS r, count(*), sum(CAST(days AS DOUBLE) + score) FROM cases \
             WHERE days BETWEEN 1 AND 9 AND region LIKE 'N%' GROUP BY 1",
        )
        .await;
        assert!(runs.len() == 1 && scans == 0, "{runs:?} {scans}");
    }

    #[tokio::test]
    async fn rows_and_joins_are_read_through_the_scan() {
        let (runs, scans) = analyst("SELECT region, days FROM cases WHERE days > 2").await;
        assert!(runs.is_empty() && scans == 1, "{runs:?} {scans}");
        let (runs, scans) = analyst(
            "SELECT a.region, count(*) FROM cases a JOIN cases b ON a.region = b.region GROUP BY a.region",
        )
        .await;
        assert!(runs.is_empty() && scans == 2, "a join is not sent as one statement: {runs:?} {scans}");
    }
}
