//! The owner's release rules applied to a checked sub-query: column modes wherever a column
//! appears, the minimum group size in distinct privacy units, and differential privacy with
//! contribution bounding and exact noise.
//!
//! The owner never runs the plan the requester's SQL gives. [`Subquery::parse`] reduces that plan
//! to parts over the dataset's own columns (filters, group keys, aggregates, or row outputs), the
//! parts are checked against the [`Policy`], and [`run`] builds and runs the owner's own plan from
//! them:
//!
//! ```text
//! exact:  Scan -> Filter(w) -> Aggregate(keys; aggs, COUNT(DISTINCT unit)) -> suppress groups under k
//! DP:     Scan -> Filter(w) -> Project(keys, unit, clamped fixed-point values)
//!              -> Aggregate(keys, unit; per-unit sums)            contributions of one unit to one group
//!              -> Project(capped at max_rows_per_group)  -> Window(row_number per unit, random order)
//!              -> Filter(rank <= max_groups_per_unit)             at most L0 groups per unit
//!              -> Aggregate(keys; sums, units) -> noise, then: every public key (zeros included),
//!                 or groups whose noisy count of units reaches the threshold, or the one global group
//! ```
//!
//! Invariant: in an exact release, every value released from personal data stands for at least
//! the minimum group size of distinct privacy units, counted exactly.
//! Invariant: under differential privacy, no decision that shapes a release depends on an exact
//! count: groups appear by public key sets or by a noisy count of units that must reach a
//! threshold of at least the minimum group size; no FILTER set is gated; a global aggregate is
//! always answered; the group limit counts groups that passed.
//! Invariant: a column is used only as its mode allows, wherever it appears (select list, WHERE,
//! GROUP BY, aggregate arguments and their FILTER clauses, inside CASE, casts and functions).

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_policy::dp::{Guarantee, Noise};
use concord_policy::{Action, Baseline, Mechanism, Policy, Use};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode as _, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, ScalarValue, TableReference};
use datafusion::common::{JoinType, NullEquality};
use datafusion::datasource::provider_as_source;
use datafusion::functions::expr_fn::{greatest, least, random};
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt as _, ExprSchemable as _, LogicalPlan, LogicalPlanBuilder, SortExpr, col, lit, when,
};
use datafusion::prelude::SessionContext;
use num_traits::ToPrimitive as _;

use crate::QueryError;
use crate::limits::ExecLimits;

/// Aggregate functions an owner computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggFunc {
    /// `COUNT(x)` or `COUNT(*)`: rows, or non-NULL values of `x`.
    Count,
    /// `SUM(x)`: the total of `x`'s non-NULL values.
    Sum,
    /// `MIN(x)`: the smallest value, one person's own under personal data.
    Min,
    /// `MAX(x)`: the largest value, one person's own under personal data.
    Max,
}

impl AggFunc {
    fn name(self) -> &'static str {
        match self {
            Self::Count => "COUNT",
            Self::Sum => "SUM",
            Self::Min => "MIN",
            Self::Max => "MAX",
        }
    }
}

/// One aggregate of a sub-query, over the dataset's own columns.
#[derive(Clone, Debug)]
pub struct AggSpec {
    /// Which aggregate function.
    pub func: AggFunc,
    /// `None` for `COUNT(*)`.
    pub arg: Option<Expr>,
    /// `DISTINCT` inside the call: each value counted or summed once.
    pub distinct: bool,
    /// The predicate of the aggregate's `FILTER (WHERE ...)` clause, if it has one.
    pub filter: Option<Expr>,
    /// The expression as the requester's plan had it (after substitution), for exact runs.
    pub expr: Expr,
    /// The type the requester expects.
    pub data_type: DataType,
}

impl AggSpec {
    /// How provenance names the aggregate: `COUNT(*)`, `SUM(hospital_days)`.
    pub fn label(&self) -> String {
        let arg = self
            .arg
            .as_ref()
            .map(|a| column_of(a).unwrap_or_else(|| a.to_string()))
            .unwrap_or_else(|| "*".into());
        let filter = if self.filter.is_some() { " FILTER (...)" } else { "" };
        format!("{}({arg}){filter}", self.func.name())
    }
}

/// Where an output column of a sub-query comes from.
#[derive(Clone, Debug)]
pub enum Output {
    /// The group key at this index of [`Shape::Aggregate`]'s `groups`.
    Group(usize),
    /// The aggregate at this index of [`Shape::Aggregate`]'s `aggs`.
    Agg(usize),
}

/// A sub-query reduced to parts over the dataset's own columns.
#[derive(Clone, Debug)]
pub enum Shape {
    /// A partial aggregate: `SELECT keys, aggregates ... GROUP BY keys`.
    Aggregate {
        /// The group keys, in GROUP BY order; empty for one global group.
        groups: Vec<Expr>,
        /// The aggregates, in the plan's order.
        aggs: Vec<AggSpec>,
        /// Each output column: its name and the key or aggregate it shows.
        outputs: Vec<(String, Output)>,
    },
    /// A row read: `SELECT expressions FROM dataset WHERE ...`.
    Rows {
        /// Each output column: its name and the expression that computes it.
        outputs: Vec<(String, Expr)>,
    },
}

/// A sub-query as the owner understands it.
#[derive(Clone, Debug)]
pub struct Subquery {
    /// The WHERE predicates, all of which a row must meet.
    pub filters: Vec<Expr>,
    /// A partial aggregate or a row read, with its parts.
    pub shape: Shape,
    /// The schema the requester expects.
    pub schema: SchemaRef,
    /// The dataset's columns the parts are written over.
    pub columns: DFSchemaRef,
}

fn refuse(reason: impl Into<String>) -> QueryError {
    QueryError::SubqueryRefused(reason.into())
}

fn policy_refusal(reason: impl Into<String>) -> QueryError {
    QueryError::Policy(reason.into())
}

impl Subquery {
    /// The action the sub-query asks for.
    pub fn action(&self) -> Action {
        match self.shape {
            Shape::Aggregate { .. } => Action::Aggregate,
            Shape::Rows { .. } => Action::ReadRows,
        }
    }

    /// Reduces a checked plan (see `owner::check_subquery_plan`) to its parts.
    pub fn parse(plan: &LogicalPlan) -> Result<Self, QueryError> {
        let LogicalPlan::Projection(proj) = plan else {
            return Err(refuse("a sub-query must be a SELECT"));
        };
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let columns = scan_schema(plan).ok_or_else(|| refuse("a sub-query reads one dataset"))?;
        let names: Vec<String> = plan.schema().fields().iter().map(|f| f.name().clone()).collect();
        if let LogicalPlan::Aggregate(agg) = proj.input.as_ref() {
            let (filters, base) = flatten(&agg.input)?;
            let shape = aggregate_shape(proj, agg, &base, names)?;
            return Ok(Self { filters, shape, schema, columns });
        }
        let (filters, base) = flatten(&proj.input)?;
        let outputs = proj
            .expr
            .iter()
            .zip(names)
            .map(|(e, name)| Ok((name, substitute(&e.clone().unalias(), proj.input.schema(), &base)?)))
            .collect::<Result<Vec<_>, QueryError>>()?;
        Ok(Self { filters, shape: Shape::Rows { outputs }, schema, columns })
    }

    /// Every column the sub-query touches, with how.
    fn uses(&self) -> Vec<(String, Use, String)> {
        let mut out = Vec::new();
        let mut add = |e: &Expr, u: Use, place: &str| {
            for c in e.column_refs() {
                out.push((c.name.clone(), u, place.to_owned()));
            }
        };
        // A filter of released rows says something of every row it keeps or drops: only
        // plain columns may pick rows.
        let where_use = match self.shape {
            Shape::Aggregate { .. } => Use::Filter,
            Shape::Rows { .. } => Use::RowFilter,
        };
        match &self.shape {
            Shape::Aggregate { groups, aggs, .. } => {
                for g in groups {
                    add(g, Use::GroupKey, "GROUP BY");
                }
                for a in aggs {
                    let u = match a.func {
                        AggFunc::Count | AggFunc::Sum => Use::Aggregated,
                        AggFunc::Min | AggFunc::Max => Use::Extreme,
                    };
                    if let Some(arg) = &a.arg {
                        add(arg, u, &format!("{}()", a.func.name()));
                    }
                    if let Some(f) = &a.filter {
                        add(f, Use::Filter, &format!("the FILTER clause of {}()", a.func.name()));
                    }
                }
            }
            Shape::Rows { outputs } => {
                for (_, e) in outputs {
                    add(e, Use::Output, "the select list");
                }
            }
        }
        for f in &self.filters {
            add(f, where_use, "WHERE");
        }
        out
    }
}

/// The columns of the scan under a plan of single inputs.
fn scan_schema(plan: &LogicalPlan) -> Option<DFSchemaRef> {
    match plan {
        LogicalPlan::TableScan(scan) => Some(scan.projected_schema.clone()),
        other => match other.inputs().as_slice() {
            [one] => scan_schema(one),
            _ => None,
        },
    }
}

/// The parts of a partial aggregate: its group keys and aggregates over the dataset's own
/// columns (`base` computes the aggregate's input columns), and where each output comes from.
fn aggregate_shape(
    proj: &datafusion::logical_expr::Projection,
    agg: &datafusion::logical_expr::Aggregate,
    base: &[Expr],
    names: Vec<String>,
) -> Result<Shape, QueryError> {
    let in_schema = agg.input.schema();
    let groups =
        agg.group_expr.iter().map(|g| substitute(g, in_schema, base)).collect::<Result<Vec<_>, _>>()?;
    let mut aggs = Vec::new();
    for (i, a) in agg.aggr_expr.iter().enumerate() {
        aggs.push(agg_spec(agg, i, a, base)?);
    }
    let ng = agg.group_expr.len();
    let mut outputs = Vec::new();
    for (e, name) in proj.expr.iter().zip(names) {
        let Expr::Column(c) = e.clone().unalias() else {
            return Err(refuse(format!("select item {e} is neither a group key nor a partial aggregate")));
        };
        let i = agg.schema.index_of_column(&c).map_err(|e| refuse(e.strip_backtrace()))?;
        outputs.push((name, if i < ng { Output::Group(i) } else { Output::Agg(i - ng) }));
    }
    Ok(Shape::Aggregate { groups, aggs, outputs })
}

/// Aggregate `a`, the `i`-th of `agg`, over the dataset's own columns.
fn agg_spec(
    agg: &datafusion::logical_expr::Aggregate,
    i: usize,
    a: &Expr,
    base: &[Expr],
) -> Result<AggSpec, QueryError> {
    let in_schema = agg.input.schema();
    let Expr::AggregateFunction(f) = a.clone().unalias() else {
        return Err(refuse(format!("{a} is not an aggregate function")));
    };
    let func = match f.func.name().to_ascii_lowercase().as_str() {
        "count" => AggFunc::Count,
        "sum" => AggFunc::Sum,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        other => return Err(refuse(format!("{other}() is not a partial aggregate"))),
    };
    let arg = match f.params.args.as_slice() {
        [] => None,
        [one] => {
            let e = substitute(one, in_schema, base)?;
            // COUNT(*) is planned as COUNT(1); COUNT(NULL) counts nothing, as in
            // pooled SQL, so it keeps its argument.
            match literal(&e) {
                Some(v) if func == AggFunc::Count && !v.is_null() => None,
                _ => Some(e),
            }
        }
        _ => return Err(refuse(format!("{a} takes more than one argument"))),
    };
    let filter = match &f.params.filter {
        Some(x) => Some(substitute(x, in_schema, base)?),
        None => None,
    };
    let expr = substitute(&a.clone().unalias(), in_schema, base)?;
    let data_type = agg.schema.field(agg.group_expr.len() + i).data_type().clone();
    Ok(AggSpec { func, arg, distinct: f.params.distinct, filter, expr, data_type })
}

/// Why evaluating `e` over personal data could fail for some values only, if it could: then
/// whether the owner's run fails would tell of one person's value (`1 / (x - 37)` in a WHERE
/// fails when someone's x is 37). Comparisons, boolean logic, BETWEEN, IN, LIKE, IS NULL,
/// CASE and [`TOTAL_FUNCTIONS`] cannot fail; arithmetic, other functions and narrowing casts of
/// a column can.
fn may_fail(e: &Expr, columns: &DFSchema) -> Option<String> {
    use datafusion::logical_expr::Operator::*;
    // Only a literal is safe as it is: a constant expression such as 1/0 is evaluated lazily
    // (skipped by AND, OR and CASE where the rows decide it), so it can fail for some rows only.
    if matches!(e, Expr::Literal(..)) {
        return None;
    }
    let all = |es: &[&Expr]| es.iter().find_map(|x| may_fail(x, columns));
    match e {
        Expr::Column(_) => None,
        Expr::Alias(a) => may_fail(&a.expr, columns),
        Expr::BinaryExpr(b) => match b.op {
            Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom | And | Or
            | StringConcat => all(&[&b.left, &b.right]),
            _ => Some(format!("{e} computes on a column ({})", b.op)),
        },
        Expr::Not(x)
        | Expr::IsNull(x)
        | Expr::IsNotNull(x)
        | Expr::IsTrue(x)
        | Expr::IsFalse(x)
        | Expr::IsUnknown(x)
        | Expr::IsNotTrue(x)
        | Expr::IsNotFalse(x)
        | Expr::IsNotUnknown(x) => may_fail(x, columns),
        Expr::Between(b) => all(&[&b.expr, &b.low, &b.high]),
        Expr::InList(l) => {
            let mut es: Vec<&Expr> = vec![&l.expr];
            es.extend(l.list.iter());
            all(&es)
        }
        // A pattern that is not a literal could be invalid for some rows only (a constant
        // expression too: it is evaluated only where rows reach it); a literal one must
        // compile now, since it is compiled only where rows reach it.
        Expr::Like(l) => match literal(&l.pattern) {
            Some(p) if like_compiles(&p, l.case_insensitive) => may_fail(&l.expr, columns),
            _ => Some(format!("{e} has a pattern that is not a literal that compiles")),
        },
        Expr::Case(c) => case_may_fail(c, columns),
        Expr::TryCast(t) => may_fail(&t.expr, columns),
        Expr::ScalarFunction(f) => function_may_fail(e, f, columns),
        Expr::Cast(c) => cast_may_fail(c, columns).or_else(|| may_fail(&c.expr, columns)),
        _ => Some(format!("{e} applies a function or an operation to a column")),
    }
}

/// Why a CASE could fail for some values: one of its operand, conditions or results could.
fn case_may_fail(c: &datafusion::logical_expr::expr::Case, columns: &DFSchema) -> Option<String> {
    let mut es: Vec<&Expr> = Vec::new();
    es.extend(c.expr.as_deref());
    for (w, t) in &c.when_then_expr {
        es.push(w);
        es.push(t);
    }
    es.extend(c.else_expr.as_deref());
    es.iter().find_map(|x| may_fail(x, columns))
}

/// Why the function call `e` could fail for some values, if it could: only a function that
/// cannot fail, over arguments that cannot, is safe.
fn function_may_fail(
    e: &Expr,
    f: &datafusion::logical_expr::expr::ScalarFunction,
    columns: &DFSchema,
) -> Option<String> {
    match f.name() {
        // These fail on a negative length, or a position that overflows: total when those are
        // literals within bounds.
        "substr" | "left" | "right"
            if f.args.iter().skip(1).enumerate().all(|(i, a)| safe_position(f.name(), i, a)) =>
        {
            f.args.first().and_then(|a| may_fail(a, columns))
        }
        // A part DataFusion does not know, or a part of a duration (which can overflow), fails.
        "date_part" => match f.args.as_slice() {
            [part, x] if safe_date_part(part, x, columns) => may_fail(x, columns),
            _ => Some(format!(
                "{e} takes a part other than year, quarter, month, week, day, doy or dow of a date or \
                 timestamp (or hour, minute, second of a timestamp), which can fail"
            )),
        },
        name if TOTAL_FUNCTIONS.contains(&name) => f.args.iter().find_map(|x| may_fail(x, columns)),
        _ => Some(format!("{e} applies a function or an operation to a column")),
    }
}

/// The value of a literal, or of a literal cast that works (as type coercion writes them).
fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Alias(a) => literal(&a.expr),
        Expr::Cast(c) => literal(&c.expr).and_then(|v| v.cast_to(c.field.data_type()).ok()),
        _ => None,
    }
}

/// Bytes of a LIKE pattern: the regular expression a longer one compiles to can exceed the
/// regex engine's size limit.
const MAX_LIKE_PATTERN: usize = 1024;

/// Whether a literal LIKE pattern compiles, on the path taken for any text (non-ASCII text goes
/// through a regular expression).
fn like_compiles(pattern: &ScalarValue, case_insensitive: bool) -> bool {
    use datafusion::arrow::array::{Scalar, StringArray};
    use datafusion::arrow::compute::kernels::comparison::{ilike, like};
    let p = match pattern {
        ScalarValue::Utf8(p) | ScalarValue::LargeUtf8(p) | ScalarValue::Utf8View(p) => p,
        _ => return false,
    };
    let Some(p) = p else { return true };
    if p.len() > MAX_LIKE_PATTERN {
        return false;
    }
    // A pattern that ends in an escape character: Arrow reads the backslash as itself, SQL
    // engines (PostgreSQL) refuse it, but only when a value gets that far.
    if p.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1 {
        return false;
    }
    let text = StringArray::from(vec!["\u{e9}t\u{e9}", "plain"]);
    let pattern = Scalar::new(StringArray::from(vec![p.as_str()]));
    if case_insensitive { ilike(&text, &pattern).is_ok() } else { like(&text, &pattern).is_ok() }
}

/// A literal position or length of `substr`, `left` or `right` (argument `i` after the string)
/// that cannot fail: a length of at least zero, nothing near the ends of i64.
fn safe_position(func: &str, i: usize, a: &Expr) -> bool {
    let Some(v) = literal(a) else { return false };
    if v.is_null() {
        return true;
    }
    let Ok(ScalarValue::Int64(Some(n))) = v.cast_to(&DataType::Int64) else { return false };
    let bound = 1i64 << 40;
    if func == "substr" && i == 1 { (0..bound).contains(&n) } else { n.unsigned_abs() < bound.unsigned_abs() }
}

/// Parts `date_part` gives for every date or timestamp.
const DATE_PARTS: &[&str] = &["year", "quarter", "month", "week", "day", "doy", "dow"];

/// Whether `date_part(part, x)` gives a value for every `x`.
fn safe_date_part(part: &Expr, x: &Expr, columns: &DFSchema) -> bool {
    let part = match literal(part) {
        Some(
            ScalarValue::Utf8(Some(p)) | ScalarValue::LargeUtf8(Some(p)) | ScalarValue::Utf8View(Some(p)),
        ) => p.to_ascii_lowercase(),
        _ => return false,
    };
    match x.get_type(columns) {
        Ok(DataType::Date32 | DataType::Date64) => DATE_PARTS.contains(&part.as_str()),
        Ok(DataType::Timestamp(..)) => {
            DATE_PARTS.contains(&part.as_str()) || matches!(part.as_str(), "hour" | "minute" | "second")
        }
        _ => false,
    }
}

/// Why a cast itself could fail for some values, if it could.
fn cast_may_fail(c: &datafusion::logical_expr::Cast, columns: &DFSchema) -> Option<String> {
    let to = c.field.data_type();
    // A literal cast that works now works for every row: `DATE '2022-01-08'`.
    if let Expr::Literal(v, _) = c.expr.as_ref() {
        return v.cast_to(to).is_err().then(|| format!("CAST({v} AS {to}) fails"));
    }
    match c.expr.get_type(columns) {
        Err(_) => Some(format!("CAST({} AS {to}) casts a value of unknown type", c.expr)),
        Ok(from) if lossless_cast(&from, to) => None,
        Ok(from) => {
            Some(format!("CAST({} AS {to}) casts {from} to {to}, which fails for some values", c.expr))
        }
    }
}

/// A cast in an analysed plan that could fail for some values: what type coercion added to
/// the owner's own plan, checked as the requester's parts were.
fn failing_cast(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply(|node| {
        let schema = match (node, node.inputs().first()) {
            (LogicalPlan::Join(_), _) => node.schema().clone(),
            (_, Some(input)) => input.schema().clone(),
            (_, None) => return Ok(TreeNodeRecursion::Continue),
        };
        let _ = node.apply_expressions(|e| {
            e.apply(|x| {
                if let Expr::Cast(c) = x
                    && let Some(why) = cast_may_fail(c, &schema)
                {
                    found = Some(why);
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// Functions that give a value (or NULL) for every input of their types, never an error.
const TOTAL_FUNCTIONS: &[&str] = &[
    "upper",
    "lower",
    "btrim",
    "ltrim",
    "rtrim",
    "character_length",
    "length",
    "octet_length",
    "concat",
    "concat_ws",
    "coalesce",
    "nullif",
    "starts_with",
    "ends_with",
    "strpos",
];

/// Whether every value of `from` converts to `to` without an error.
fn lossless_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to {
        return true;
    }
    // Numbers, booleans and text always have a text form; bytes that are not UTF-8, dates out
    // of range and nested values can fail.
    if matches!(to, Utf8 | LargeUtf8 | Utf8View) {
        return lossless_to_text(from, to);
    }
    match (int_width(from), int_width(to), to) {
        (Some((fs, fw)), Some((ts, tw)), _) => (fs == ts && tw >= fw) || (!fs && ts && tw > fw),
        (Some(_), None, Float64 | Float32) => true,
        (_, _, Decimal128(tp, ts) | Decimal256(tp, ts)) => lossless_to_decimal(from, *tp, *ts),
        _ => matches!(
            (from, to),
            (Float16 | Float32, Float64)
                | (Float16, Float32)
                | (Date32, Date64)
                | (Decimal128(..) | Decimal256(..), Float32 | Float64)
        ),
    }
}

/// Whether every value of `from` has a text form of the text type `to`.
fn lossless_to_text(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match from {
        Dictionary(_, v) => lossless_cast(v, to),
        _ => {
            from.is_integer()
                || from.is_floating()
                || matches!(from, Decimal128(..) | Decimal256(..) | Boolean | Utf8 | LargeUtf8 | Utf8View)
        }
    }
}

/// Whether an integer type is signed, and its width in bits; `None` for other types.
fn int_width(t: &DataType) -> Option<(bool, u32)> {
    use DataType::*;
    match t {
        Int8 => Some((true, 8)),
        Int16 => Some((true, 16)),
        Int32 => Some((true, 32)),
        Int64 => Some((true, 64)),
        UInt8 => Some((false, 8)),
        UInt16 => Some((false, 16)),
        UInt32 => Some((false, 32)),
        UInt64 => Some((false, 64)),
        _ => None,
    }
}

/// Whether every value of `from` fits a decimal of precision `tp` and scale `ts`.
fn lossless_to_decimal(from: &DataType, tp: u8, ts: i8) -> bool {
    use DataType::*;
    let whole = i16::from(tp) - i16::from(ts);
    match (from, int_width(from)) {
        // More digits on both sides of the point: every value fits.
        (Decimal128(fp, fs) | Decimal256(fp, fs), _) => ts >= *fs && whole >= i16::from(*fp) - i16::from(*fs),
        // Enough whole digits for the widest integer of the type.
        (_, Some((signed, width))) => {
            let digits = match (signed, width) {
                (_, 8) => 3,
                (_, 16) => 5,
                (_, 32) => 10,
                (true, _) => 19,
                (false, _) => 20,
            };
            whole >= digits
        }
        _ => false,
    }
}

/// A chain of filters, projections and aliases over the scan, flattened: the filters and the
/// chain's output expressions, both over the dataset's own columns. The walker is the
/// requester's split's ([`crate::chain::walk`]).
fn flatten(plan: &LogicalPlan) -> Result<(Vec<Expr>, Vec<Expr>), QueryError> {
    use crate::chain::NotAChain;
    let chain = crate::chain::walk(plan).map_err(|e| match e {
        NotAChain::Operator(op) => refuse(format!("{op} is not accepted in a sub-query")),
        NotAChain::Refused(e, what) => refuse(format!("{e} holds {what}, which a sub-query may not")),
        NotAChain::Plan(e) => refuse(e.strip_backtrace()),
    })?;
    if !chain.scan.filters.is_empty() || chain.scan.fetch.is_some() {
        return Err(refuse("a sub-query's scan must be plain"));
    }
    Ok((chain.filters, chain.outputs))
}

/// [`crate::chain::substitute`], its error a refusal.
fn substitute(e: &Expr, schema: &DFSchema, outputs: &[Expr]) -> Result<Expr, QueryError> {
    crate::chain::substitute(e, schema, outputs).map_err(|e| refuse(e.strip_backtrace()))
}

/// The rules one release follows.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The dataset's usage policy: column modes and release rules.
    pub policy: Arc<Policy>,
    /// The charter's floor under every policy, such as its minimum group size.
    pub baseline: Baseline,
    /// The requester is the owner itself: no rule binds, nothing crosses a border.
    pub own: bool,
    /// Each privacy unit has one row at most (known by the owner from its data): contributions
    /// are bounded without a per-unit pass.
    pub unit_is_row: bool,
}

/// What the rules make of a sub-query before it runs.
#[derive(Clone, Debug)]
pub struct ReleasePlan {
    /// The checked sub-query, as it will run.
    pub subquery: Subquery,
    /// The rules it was checked under.
    pub rules: Rules,
    /// Distinct privacy units (or rows, for non-personal data) a released group needs.
    pub min_group_size: Option<u64>,
    /// The noise of each aggregate, and the cost to charge, under differential privacy.
    pub privacy: Option<PrivacyPlan>,
}

/// How a release under differential privacy is noised and charged, fixed before it runs.
#[derive(Clone, Debug)]
pub struct PrivacyPlan {
    /// The noise mechanism (zCDP or pure DP), which fixes the parameter `cost` is in.
    pub mechanism: Mechanism,
    /// The privacy parameter (rho or epsilon) the release charges, split over its aggregates.
    pub cost: concord_policy::Units,
    /// Noise of each aggregate, by index.
    pub noise: Vec<Noise>,
    /// Which groups are released.
    pub groups: DpGroups,
    /// The factor sums are scaled by to be noised as integers: `10^decimals`.
    pub fixed_point: i64,
    /// The (epsilon, delta) the query's cost amounts to.
    pub guarantee: Guarantee,
}

/// Which groups a release under differential privacy holds. None of them depends on an exact
/// count: a decision on one would be an oracle (pad a cell to k−1 known people, and whether it
/// appears tells the target's value).
#[derive(Clone, Debug)]
pub enum DpGroups {
    /// No group keys: one group, always answered with noise.
    Global,
    /// Every group column has a public key set: every combination of keys is released with
    /// noise, zeros included, whatever the data holds; groups of other values are not.
    Public(Vec<Vec<String>>),
    /// Groups are released when their noisy count of distinct privacy units reaches
    /// `threshold`.
    Selected(Selection),
}

/// Partition selection on a noisy count of distinct privacy units.
#[derive(Clone, Debug)]
pub struct Selection {
    /// The noise of the count of units.
    pub noise: Noise,
    /// The aggregate whose noisy value is that count (a `COUNT(*)` that counts units, where
    /// one unit adds at most one row to a group), so that it takes no share of its own.
    pub reuse: Option<usize>,
    /// The noisy count a group needs: at least the minimum group size, and high enough that a
    /// group of one unit appears with probability at most `delta`.
    pub threshold: u64,
    /// The most probability with which a group of one unit is released.
    pub delta: f64,
}

/// What a release held back and how it was noised: the owner's provenance.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReleaseReport {
    /// Rows (groups) of the released result.
    pub groups_released: u64,
    /// Groups held back (under the minimum group size, or not selected under DP); never named.
    pub groups_suppressed: u64,
    /// Under differential privacy without public keys, groups held back are not counted: the
    /// count would tell whether a group of one person exists, which the noisy threshold hides.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suppressed_not_counted: bool,
    /// The query's aggregates cover different sets of rows (FILTER clauses, arguments that may be
    /// NULL): values leave out any cell of a group (rows by which sets hold them) of fewer than
    /// the minimum group size. Said of every such query, whatever the data holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub small_cells_left_out: bool,
    /// Distinct privacy units (or rows) a released group needed; `None` when no minimum applied.
    pub min_group_size: Option<u64>,
    /// `zcdp` or `pure`, when noise was added.
    pub mechanism: Option<String>,
    /// Noise scale of each released aggregate column, in its own units (σ or β).
    pub noise_scale: Vec<(String, f64)>,
    /// Privacy budget charged for this release, and what remains.
    #[serde(default)]
    pub budget: Option<BudgetReport>,
    /// The access grant this release used.
    #[serde(default)]
    pub grant: Option<String>,
    /// The rule that allowed it.
    #[serde(default)]
    pub rule: Option<String>,
    /// No row was read: the answer came from the file's statistics (a Parquet file's row
    /// counts), so the rows are the dataset's as registered, not a count of rows read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rows_from_statistics: bool,
    /// Under differential privacy without public keys: the noisy count of distinct privacy
    /// units a group needed to be released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u64>,
    /// The policy's delta: the most probability with which a group of one unit is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// The (epsilon, delta) of differential privacy that this release's cost amounts to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<Guarantee>,
    /// Under differential privacy every public key combination is released, zeros included.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_keys: bool,
}

/// A budget charge as provenance shows it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct BudgetReport {
    /// `rho` (zCDP) or `epsilon` (pure DP).
    pub parameter: String,
    /// What this release cost, in decimal (`0.005`).
    pub charged: String,
    /// What is left of the requester's budget on the dataset after the charge.
    pub requester_remaining: String,
    /// What is left of the dataset's budget for all requesters after the charge.
    pub dataset_remaining: String,
}

/// Checks a sub-query against the rules: column modes, what personal data allows, what
/// differential privacy allows. Nothing runs and no budget is spent.
pub fn check(subquery: Subquery, rules: Rules) -> Result<ReleasePlan, QueryError> {
    if rules.own {
        return Ok(ReleasePlan { subquery, rules, min_group_size: None, privacy: None });
    }
    let policy = rules.policy.clone();
    check_modes(&subquery, &policy)?;
    let personal = policy.personal.is_some();
    if personal {
        check_personal_conditions(&subquery)?;
    }
    if let Shape::Aggregate { groups, aggs, .. } = &subquery.shape {
        if personal {
            check_personal_aggregates(aggs, &subquery.columns)?;
        }
        let privacy = match &policy.release.privacy {
            Some(dp) => Some(privacy_plan(&policy, dp, &rules.baseline, groups, aggs, &subquery.columns)?),
            None => None,
        };
        let min_group_size = policy.min_group_size(&rules.baseline);
        // Exact releases count units in every cell of the aggregates' sets: keep that bounded.
        let sets = aggregate_sets(aggs, &subquery.columns).len();
        if min_group_size.is_some() && privacy.is_none() && sets > MAX_SETS {
            return Err(policy_refusal(format!(
                "the aggregates cover {sets} different sets of rows (each FILTER clause, and each column that \
                 may be NULL, since NULLs are skipped); at most {MAX_SETS} in one query under a minimum group size. \
                 Split the query"
            )));
        }
        return Ok(ReleasePlan { subquery, rules, min_group_size, privacy });
    }
    Ok(ReleasePlan { subquery, rules, min_group_size: None, privacy: None })
}

/// Refuses the first column used against its mode, or a MIN/MAX the policy does not allow.
fn check_modes(subquery: &Subquery, policy: &Policy) -> Result<(), QueryError> {
    // The first column used against its mode is named; MIN/MAX come after, since a column
    // that may not appear at all is the more basic refusal.
    let mut problems = Vec::new();
    let mut extremes = Vec::new();
    for (column, use_, place) in subquery.uses() {
        let mode = policy.mode(&column);
        if !mode.permits(use_) {
            let hint = if use_ == Use::Output {
                ". Rows are released only from plain columns, where the owner permits read_rows. What works: \
                 aggregates (COUNT, SUM, AVG, MIN, MAX) with WHERE and GROUP BY, and any SQL over their results \
                 (HAVING, ORDER BY, LIMIT, CTEs, joins with local tables)"
            } else {
                ""
            };
            problems.push(format!(
                "column {column} is {} and cannot be {} (in {place}){hint}",
                mode.as_str(),
                use_.as_str()
            ));
        } else if use_ == Use::Extreme && !policy.allows_extremes(&column) {
            extremes.push(if policy.release.privacy.is_some() {
                format!("MIN and MAX of {column} reveal one person's value and are never released under differential privacy")
            } else {
                format!("MIN and MAX of {column} reveal one person's value; the policy does not allow them for this column")
            });
        }
    }
    if let Some(first) = problems.into_iter().chain(extremes).next() {
        return Err(policy_refusal(first));
    }
    Ok(())
}

/// On personal data, refuses a WHERE, GROUP BY or FILTER that could fail for some values only.
fn check_personal_conditions(subquery: &Subquery) -> Result<(), QueryError> {
    let mut parts: Vec<&Expr> = subquery.filters.iter().collect();
    if let Shape::Aggregate { groups, aggs, .. } = &subquery.shape {
        parts.extend(groups);
        parts.extend(aggs.iter().filter_map(|a| a.filter.as_ref()));
    }
    if let Some(why) = parts.iter().find_map(|e| may_fail(e, &subquery.columns)) {
        return Err(policy_refusal(format!(
            "on personal data, WHERE, GROUP BY and FILTER compare columns with values (=, <, BETWEEN, IN, LIKE, \
             IS NULL, AND, OR, NOT, CASE) and nothing that can fail for some values only, since whether the query \
             fails would tell of one person's value: {why}"
        )));
    }
    Ok(())
}

/// On personal data, refuses DISTINCT aggregates and aggregates of anything but a column as it is.
fn check_personal_aggregates(aggs: &[AggSpec], columns: &DFSchema) -> Result<(), QueryError> {
    for a in aggs {
        if a.distinct {
            return Err(policy_refusal(format!(
                "{}(DISTINCT ...) on personal data is refused: distinct values are not counted per person, so \
                 whether one person adds a value would show; count or sum the column as it is",
                a.func.name()
            )));
        }
        if let Some(arg) = &a.arg
            && !column_as_is(arg, columns)
        {
            return Err(policy_refusal(format!(
                "on personal data an aggregate takes one column as it is, without casts or functions; {} \
                 could pick single people out of a group (by a condition, or by failing for some values). \
                 Filter with WHERE, or group by the condition's column",
                a.expr
            )));
        }
    }
    Ok(())
}

/// Distinct sets of rows the aggregates of one exact release of personal data cover: the
/// rows of a group fall into up to 2^MAX_SETS cells, each counted.
pub const MAX_SETS: usize = 8;

/// A column as it is, or widened without loss (type coercion widens a SUM's argument).
fn column_as_is(e: &Expr, columns: &DFSchema) -> bool {
    match e {
        // A constant (COUNT(NULL)) picks no one out.
        Expr::Column(_) | Expr::Literal(..) => true,
        Expr::Alias(a) => column_as_is(&a.expr, columns),
        Expr::Cast(c) => {
            c.expr.get_type(columns).is_ok_and(|from| lossless_cast(&from, c.field.data_type()))
                && column_as_is(&c.expr, columns)
        }
        _ => false,
    }
}

/// A column as it is. No cast: a narrowing cast fails (or, as TRY_CAST, turns NULL) for some
/// values only, which would let a query learn of one person's value from whether it fails.
fn bare_column(e: &Expr) -> bool {
    match e {
        Expr::Column(_) => true,
        Expr::Alias(a) => bare_column(&a.expr),
        _ => false,
    }
}

fn column_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::Cast(c) => column_of(&c.expr),
        Expr::TryCast(c) => column_of(&c.expr),
        Expr::Alias(a) => column_of(&a.expr),
        _ => None,
    }
}

/// The index of a `COUNT(*)` without FILTER.
fn plain_count(aggs: &[AggSpec]) -> Option<usize> {
    aggs.iter().position(|a| a.func == AggFunc::Count && a.filter.is_none() && a.arg.is_none() && !a.distinct)
}

/// How a release under differential privacy is noised and charged, and which of its groups are
/// released; refuses what differential privacy cannot release.
fn privacy_plan(
    policy: &Policy,
    dp: &concord_policy::Privacy,
    baseline: &Baseline,
    groups: &[Expr],
    aggs: &[AggSpec],
    columns: &DFSchema,
) -> Result<PrivacyPlan, QueryError> {
    let l0 = u64::from(dp.max_groups_per_unit);
    let linf = u64::from(dp.max_rows_per_group);
    let magnitudes = dp_magnitudes(dp, aggs)?;
    let kind = group_kind(policy, groups, columns)?;
    if matches!(kind, GroupKind::Selected) && dp.delta.is_none() {
        return Err(policy_refusal(format!(
            "grouping under differential privacy needs public key sets for the group columns ({}) or a delta for noisy selection; \
             the policy has neither",
            groups.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    // Groups are selected on a noisy count of distinct units. A COUNT(*) counts them where one
    // unit adds at most one row to a group, and then serves; otherwise the count takes a share.
    let reuse = plain_count(aggs).filter(|_| linf == 1);
    let selecting = matches!(kind, GroupKind::Selected);
    let shares = (magnitudes.len() + usize::from(selecting && reuse.is_none())) as u64;
    let noise: Vec<Noise> = magnitudes
        .iter()
        .map(|&m| Noise::for_aggregate(dp.mechanism, dp.cost, shares, l0, linf.saturating_mul(m)))
        .collect();
    let groups = match kind {
        GroupKind::Global => DpGroups::Global,
        GroupKind::Public(sets) => DpGroups::Public(sets),
        GroupKind::Selected => DpGroups::Selected(selection(policy, dp, baseline, shares, reuse)),
    };
    Ok(PrivacyPlan {
        mechanism: dp.mechanism,
        cost: dp.cost,
        noise,
        guarantee: dp.guarantee(selecting),
        groups,
        fixed_point: dp.fixed_point(),
    })
}

/// The most one row changes each aggregate, in fixed-point units (1 for a count); refuses what
/// differential privacy never releases.
fn dp_magnitudes(dp: &concord_policy::Privacy, aggs: &[AggSpec]) -> Result<Vec<u64>, QueryError> {
    let mut magnitudes = Vec::new();
    for a in aggs {
        if a.distinct {
            return Err(policy_refusal(format!(
                "{}(DISTINCT ...) is not released under differential privacy; one person can change it by more than the noise covers",
                a.func.name()
            )));
        }
        magnitudes.push(match a.func {
            AggFunc::Count => 1,
            AggFunc::Sum => {
                let column = a.arg.as_ref().and_then(column_of).unwrap_or_else(|| a.expr.to_string());
                dp.magnitude(&column).ok_or_else(|| {
                    policy_refusal(format!(
                        "SUM of {column} under differential privacy needs clamping bounds for it; the policy has bounds for: {}",
                        dp.bounds.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?
            }
            AggFunc::Min | AggFunc::Max => {
                return Err(policy_refusal(
                    "MIN and MAX reveal one person's value and are never released under differential privacy",
                ));
            }
        });
    }
    Ok(magnitudes)
}

/// How the groups of a private release are chosen, before its noise is known.
enum GroupKind {
    /// No group keys: one group.
    Global,
    /// Every group column has a public key set: the keys, as each column's type writes them.
    Public(Vec<Vec<String>>),
    /// Groups are selected on a noisy count of distinct units.
    Selected,
}

/// How the groups of a private release are chosen; public keys that are no values of their
/// column's type are the policy's error.
fn group_kind(policy: &Policy, groups: &[Expr], columns: &DFSchema) -> Result<GroupKind, QueryError> {
    let public: Option<Vec<Vec<String>>> = groups
        .iter()
        .map(|g| {
            column_of(g)
                .filter(|_| bare_column(g))
                .and_then(|c| policy.public_keys(&c))
                .map(<[String]>::to_vec)
        })
        .collect();
    Ok(match (groups.is_empty(), public) {
        (true, _) => GroupKind::Global,
        (false, Some(sets)) => GroupKind::Public(typed_keys(groups, sets, columns)?),
        (false, None) => GroupKind::Selected,
    })
}

/// Partition selection for a release whose noise is split in `shares`: the noise of the count
/// of units, and the threshold it must reach.
fn selection(
    policy: &Policy,
    dp: &concord_policy::Privacy,
    baseline: &Baseline,
    shares: u64,
    reuse: Option<usize>,
) -> Selection {
    let l0 = u64::from(dp.max_groups_per_unit);
    let unit_noise = Noise::for_aggregate(dp.mechanism, dp.cost, shares, l0, 1);
    let min = policy.min_group_size(baseline).unwrap_or(1);
    let threshold = dp.threshold(&unit_noise, min).unwrap_or(u64::MAX);
    Selection { noise: unit_noise, reuse, threshold, delta: dp.delta.unwrap_or(0.0) }
}

/// The public keys of each group column as its own type writes them (`1.5` for a decimal key
/// written `1.50`, `true` for `TRUE`), each once: data and keys are then compared as values.
/// A key that is no value of its column's type is the policy's error, named before anything
/// runs or is charged.
fn typed_keys(
    groups: &[Expr],
    sets: Vec<Vec<String>>,
    columns: &DFSchema,
) -> Result<Vec<Vec<String>>, QueryError> {
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::util::display::array_value_to_string;
    groups
        .iter()
        .zip(sets)
        .map(|(g, keys)| {
            let ty = g.get_type(columns).map_err(QueryError::plan)?;
            let text: ArrayRef = Arc::new(StringArray::from(keys.clone()));
            let typed = cast(&text, &ty).ok().filter(|t| t.null_count() == 0).ok_or_else(|| {
                policy_refusal(format!(
                    "the public keys of group column {g} ({}) are not all values of its type {ty}; the owner's policy \
                     must list values of that type",
                    keys.join(", ")
                ))
            })?;
            let mut out: Vec<String> = Vec::new();
            for i in 0..typed.len() {
                let v = array_value_to_string(&typed, i).map_err(QueryError::from)?;
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Ok(out)
        })
        .collect()
}

impl ReleasePlan {
    /// Under differential privacy with public keys, the groups every release holds (the
    /// combinations of keys): fixed by the policy, so checked against the group limit before
    /// anything runs or is charged.
    pub fn public_groups(&self) -> Option<u64> {
        match self.privacy.as_ref().map(|p| &p.groups) {
            Some(DpGroups::Public(sets)) => Some(key_combinations(sets)),
            _ => None,
        }
    }
}

/// Whether every privacy unit of `table` has exactly one row (no unit null, none repeated):
/// then contributions are bounded by the data itself and groups count units as rows. One pass
/// over the data; the owner keeps the answer while the file does not change.
///
/// A row without a unit (NULL) is an error: distinct units skip NULLs, so such rows would count
/// for no one in a minimum group size and could be singled out by difference.
pub async fn unit_is_row(
    dataset: &str,
    table: Arc<dyn TableProvider>,
    unit: &str,
    limits: &ExecLimits,
) -> Result<bool, QueryError> {
    let ctx = crate::limits::session(limits)?;
    let b = LogicalPlanBuilder::scan(TableReference::bare(dataset), provider_as_source(table), None)
        .and_then(|b| {
            b.aggregate(
                Vec::<Expr>::new(),
                vec![
                    count(lit(1i64)).alias("n"),
                    count_distinct(col(Column::new_unqualified(unit))).alias("u"),
                    count(col(Column::new_unqualified(unit))).alias("v"),
                ],
            )
        })
        .and_then(LogicalPlanBuilder::build)
        .map_err(QueryError::plan)?;
    let (batches, _) = execute(&ctx, b, 1, false).await?;
    let Some(batch) = batches.first() else { return Ok(false) };
    let get = |i: usize| {
        cast(batch.column(i), &DataType::Int64)
            .ok()
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)))
    };
    if get(2) != get(0) {
        return Err(policy_refusal(format!(
            "dataset {dataset} has rows whose privacy unit {unit} is empty (NULL); such rows would count for no \
             one, so releases of it are refused until every row names its unit. Owner: fix the data, or the \
             policy's privacy_unit"
        )));
    }
    Ok(matches!((get(0), get(1)), (Some(n), Some(u)) if n == u))
}

/// Runs a checked release on `table` (registered as `dataset`) and applies its rules.
pub async fn run(
    plan: &ReleasePlan,
    dataset: &str,
    table: Arc<dyn TableProvider>,
    limits: &ExecLimits,
) -> Result<(Vec<RecordBatch>, ReleaseReport, u64), QueryError> {
    let ctx = crate::limits::session(limits)?;
    let source = provider_as_source(table.clone());
    let mut b =
        LogicalPlanBuilder::scan(TableReference::bare(dataset), source, None).map_err(QueryError::plan)?;
    for f in &plan.subquery.filters {
        b = b.filter(f.clone()).map_err(QueryError::plan)?;
    }
    let (batches, mut report, scanned) = match (&plan.subquery.shape, &plan.privacy) {
        (Shape::Rows { outputs }, _) => {
            let exprs = outputs.iter().map(|(name, e)| e.clone().alias(name));
            let built = b.project(exprs).and_then(LogicalPlanBuilder::build).map_err(QueryError::plan)?;
            let (batches, scanned) = execute(&ctx, built, limits.max_groups, false).await?;
            let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
            let report = ReleaseReport { groups_released: rows, ..Default::default() };
            Ok((rename(batches, &plan.subquery.schema)?, report, scanned))
        }
        (Shape::Aggregate { groups, aggs, outputs }, None) => {
            exact_aggregate(plan, &ctx, b, groups, aggs, outputs, limits).await
        }
        (Shape::Aggregate { groups, aggs, outputs }, Some(dp)) => {
            private_aggregate(plan, dp, &ctx, b, groups, aggs, outputs, limits).await
        }
    }?;
    // No DataFusion scan in a plan over a remote table: its engine read the rows.
    let remote = table.as_ref().downcast_ref::<crate::remote::RemoteTable>().is_some();
    report.rows_from_statistics = scanned.is_none() && !remote;
    Ok((batches, report, scanned.unwrap_or(0)))
}

/// Runs an owner's plan, at most `max_rows` rows of result.
async fn execute(
    ctx: &SessionContext,
    plan: LogicalPlan,
    max_rows: u64,
    personal: bool,
) -> Result<(Vec<RecordBatch>, Option<u64>), QueryError> {
    let physical = physical_plan(ctx, plan, personal).await?;
    let batches = crate::limits::collect_limited(ctx, physical.clone(), max_rows).await?;
    Ok((batches, scanned_rows(&physical)))
}

/// The physical plan of an owner's plan. On personal data, the plan is analysed first and
/// refused if type coercion gave it a cast that can fail for some values only.
async fn physical_plan(
    ctx: &SessionContext,
    plan: LogicalPlan,
    personal: bool,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>, QueryError> {
    // A dataset in another engine runs the whole plan there, analysed (casts of type coercion
    // included), so that what comes back is the plan's output and not the rows.
    let remote = crate::remote::engine_of(&plan);
    let plan = if personal || remote.is_some() {
        let state = ctx.state();
        let analysed = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .map_err(QueryError::plan)?;
        if personal && let Some(why) = failing_cast(&analysed) {
            return Err(policy_refusal(format!(
                "on personal data nothing may fail for some values only, since whether the query fails would tell of \
                 one person's value; the owner's plan for this query needs {why}"
            )));
        }
        analysed
    } else {
        plan
    };
    if let Some(engine) = remote {
        return crate::remote::physical_plan(&ctx.state(), plan, &engine).await.map_err(QueryError::exec);
    }
    let df = ctx.execute_logical_plan(plan).await.map_err(QueryError::exec)?;
    df.create_physical_plan().await.map_err(QueryError::exec)
}

/// Gives batches the names and types the requester expects.
fn rename(batches: Vec<RecordBatch>, schema: &SchemaRef) -> Result<Vec<RecordBatch>, QueryError> {
    batches
        .into_iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(QueryError::from)?;
            RecordBatch::try_new(schema.clone(), columns).map_err(QueryError::from)
        })
        .collect()
}

/// Distinct privacy units of a group (rows, where each unit has one row or the data is not
/// personal).
fn units_expr(plan: &ReleasePlan) -> Expr {
    match &plan.rules.policy.personal {
        Some(p) if !plan.rules.unit_is_row => count_distinct(col(Column::new_unqualified(&p.privacy_unit))),
        _ => count(lit(1i64)),
    }
}

/// The rows an aggregate covers, as a condition: those its FILTER clause keeps whose argument
/// is not NULL (NULLs are skipped, so a NULL argument narrows as a FILTER does). `None` for an
/// aggregate over every row.
fn aggregate_set(a: &AggSpec, columns: &DFSchema) -> Option<Expr> {
    let not_null = a
        .arg
        .as_ref()
        .filter(|arg| arg.nullable(columns).unwrap_or(true))
        .map(|arg| arg.clone().is_not_null());
    match (a.filter.clone(), not_null) {
        (Some(f), Some(n)) => Some(f.and(n)),
        (f, n) => f.or(n),
    }
}

/// The distinct sets of rows a query's aggregates cover, see [`aggregate_set`].
fn aggregate_sets(aggs: &[AggSpec], columns: &DFSchema) -> Vec<Expr> {
    let mut out: Vec<Expr> = Vec::new();
    for set in aggs.iter().filter_map(|a| aggregate_set(a, columns)) {
        if !out.contains(&set) {
            out.push(set);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn exact_aggregate(
    plan: &ReleasePlan,
    ctx: &SessionContext,
    b: LogicalPlanBuilder,
    groups: &[Expr],
    aggs: &[AggSpec],
    outputs: &[(String, Output)],
    limits: &ExecLimits,
) -> Result<(Vec<RecordBatch>, ReleaseReport, Option<u64>), QueryError> {
    let ng = groups.len();
    let mut report = ReleaseReport { min_group_size: plan.min_group_size, ..Default::default() };
    let built = exact_plan(plan, b, groups, aggs, &mut report)?;
    // Only groups that are released count against the limit: an error must not tell how many
    // small groups the data holds.
    let personal = plan.rules.policy.personal.is_some();
    let (batches, scanned) = execute(ctx, built, limits.max_groups, personal).await?;
    let mut out = Vec::new();
    for batch in &batches {
        let rows = batch.num_rows();
        out.push(project_outputs(batch.columns(), rows, outputs, &plan.subquery.schema, |i| {
            batch.column(ng + i).clone()
        })?);
    }
    report.groups_released = out.iter().map(|b| b.num_rows() as u64).sum();
    if plan.min_group_size.is_some() {
        (report.groups_suppressed, report.suppressed_not_counted) = exact_held_back(plan, groups, &batches)?;
    }
    Ok((out, report, scanned))
}

/// The owner's plan of an exact aggregate: totals per group, under k cells and groups left out.
fn exact_plan(
    plan: &ReleasePlan,
    b: LogicalPlanBuilder,
    groups: &[Expr],
    aggs: &[AggSpec],
    report: &mut ReleaseReport,
) -> Result<LogicalPlan, QueryError> {
    let keys: Vec<Expr> =
        groups.iter().enumerate().map(|(i, g)| g.clone().alias(format!("__g{i}"))).collect();
    let mut values: Vec<Expr> =
        aggs.iter().enumerate().map(|(i, a)| a.expr.clone().alias(format!("__a{i}"))).collect();
    Ok(match plan.min_group_size {
        None => b.aggregate(keys, values).and_then(LogicalPlanBuilder::build).map_err(QueryError::plan)?,
        Some(k) => {
            let k = lit(i64::try_from(k).unwrap_or(i64::MAX));
            values.push(units_expr(plan).alias("__units"));
            let sets = aggregate_sets(aggs, &plan.subquery.columns);
            if !sets.is_empty() {
                report.small_cells_left_out = true;
            }
            if !sets.is_empty() && aggs.iter().all(|a| !a.distinct) {
                return large_cells_totals(plan, b, groups, aggs, &sets, k).map_err(QueryError::plan);
            }
            let rows = if sets.is_empty() {
                b
            } else {
                keep_large_cells(plan, b, groups, &sets, k.clone()).map_err(QueryError::plan)?
            };
            rows.aggregate(keys, values)
                .and_then(|a| a.filter(col("__units").gt_eq(k)))
                .and_then(LogicalPlanBuilder::build)
                .map_err(QueryError::plan)?
        }
    })
}

/// Groups an exact release held back, and whether uncounted, from its `batches` ([`held_back`]).
fn exact_held_back(
    plan: &ReleasePlan,
    groups: &[Expr],
    batches: &[RecordBatch],
) -> Result<(u64, bool), QueryError> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(Schema::empty()));
    let all = if batches.is_empty() {
        RecordBatch::new_empty(schema)
    } else {
        concat_batches(&schema, batches).map_err(QueryError::from)?
    };
    Ok(held_back(&plan.rules.policy, groups, &all))
}

/// The rows of cells that hold at least `k` units. Rows of a group fall into cells by which of
/// the aggregates' sets hold them; every aggregate is a sum over the cells it covers, so any
/// combination of a query's aggregates (`count(*)` beside `count(*) FILTER (WHERE age_band <>
/// '90+')`, or across three FILTER clauses) tells of a union of cells. A cell of fewer than `k`
/// units is left out, so that it looks exactly like an empty cell: holding its group back
/// instead would tell a cell of one from none.
fn keep_large_cells(
    plan: &ReleasePlan,
    b: LogicalPlanBuilder,
    groups: &[Expr],
    sets: &[Expr],
    k: Expr,
) -> Result<LogicalPlanBuilder, datafusion::error::DataFusionError> {
    let ng = groups.len();
    let rows = cell_rows(b, groups, sets)?;
    let cell_keys: Vec<Expr> = (0..ng)
        .map(|i| col(format!("__r{i}")).alias(format!("__c{i}")))
        .chain([col("__cell").alias("__cc")])
        .collect();
    let large = rows
        .clone()
        .aggregate(cell_keys, vec![units_expr(plan).alias("__cu")])?
        .filter(col("__cu").gt_eq(k))?
        .build()?;
    let left: Vec<Column> = (0..ng)
        .map(|i| format!("__r{i}"))
        .chain(["__cell".to_owned()])
        .map(Column::new_unqualified)
        .collect();
    let right: Vec<Column> =
        (0..ng).map(|i| format!("__c{i}")).chain(["__cc".to_owned()]).map(Column::new_unqualified).collect();
    rows.join_detailed(large, JoinType::LeftSemi, (left, right), None, NullEquality::NullEqualsNull)
}

/// The totals of an exact release whose aggregates have sets ([`keep_large_cells`]), none
/// DISTINCT, in one pass over the rows: partial aggregates and distinct units per cell (a group's
/// rows that the same sets hold), the cells of fewer than `k` units left out, then each group's
/// totals merged from its large cells (COUNT and SUM as sums, MIN as MIN, MAX as MAX). The same
/// release as the rows of large cells aggregated ([`keep_large_cells`]): a group appears when
/// one of its cells is large (then it has at least `k` units), and not when none is (then no row
/// of it is kept). What an engine beside the node sends back is the cells, not the rows.
fn large_cells_totals(
    plan: &ReleasePlan,
    b: LogicalPlanBuilder,
    groups: &[Expr],
    aggs: &[AggSpec],
    sets: &[Expr],
    k: Expr,
) -> Result<LogicalPlan, datafusion::error::DataFusionError> {
    use datafusion::functions_aggregate::expr_fn::{max, min};
    let rows = cell_rows(b, groups, sets)?;
    let ng = groups.len();
    let cell_keys: Vec<Expr> = (0..ng).map(|i| col(format!("__r{i}"))).chain([col("__cell")]).collect();
    let mut partials: Vec<Expr> =
        aggs.iter().enumerate().map(|(i, a)| a.expr.clone().alias(format!("__p{i}"))).collect();
    partials.push(units_expr(plan).alias("__cu"));
    let keys: Vec<Expr> = (0..ng).map(|i| col(format!("__r{i}")).alias(format!("__g{i}"))).collect();
    let mut totals: Vec<Expr> = aggs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let p = col(format!("__p{i}"));
            match a.func {
                AggFunc::Count | AggFunc::Sum => sum(p),
                AggFunc::Min => min(p),
                AggFunc::Max => max(p),
            }
            .alias(format!("__a{i}"))
        })
        .collect();
    // A global aggregate over no large cell is held back, as a group with none is.
    totals.push(count(lit(1i64)).alias("__cells"));
    rows.aggregate(cell_keys, partials)?
        .filter(col("__cu").gt_eq(k))?
        .aggregate(keys, totals)?
        .filter(col("__cells").gt(lit(0i64)))?
        .build()
}

/// The rows with each group key (`__r0`, ...) and the cell (`__cell`, a bit per set that holds
/// the row) beside their columns.
fn cell_rows(
    b: LogicalPlanBuilder,
    groups: &[Expr],
    sets: &[Expr],
) -> Result<LogicalPlanBuilder, datafusion::error::DataFusionError> {
    if sets.len() > MAX_SETS {
        return Err(datafusion::error::DataFusionError::Plan(format!("more than {MAX_SETS} sets")));
    }
    let mut cell = lit(0i64);
    for (j, set) in sets.iter().enumerate() {
        cell = cell + when(set.clone(), lit(1i64 << j)).otherwise(lit(0i64))?;
    }
    let row: Vec<Expr> = b
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .chain(groups.iter().enumerate().map(|(i, g)| g.clone().alias(format!("__r{i}"))))
        .chain([cell.alias("__cell")])
        .collect();
    b.project(row)
}

/// Groups held back, counted without telling more than the release: a global aggregate is one
/// group, there or not; where every group column has a public key set, the public keys not
/// released (whether the data has them or not: a group of one must look like no group);
/// otherwise not counted, since a count of groups found in the data would tell a group of one
/// from none. `kept` holds the released groups, their keys first.
fn held_back(policy: &Policy, groups: &[Expr], kept: &RecordBatch) -> (u64, bool) {
    let released = kept.num_rows() as u64;
    if groups.is_empty() {
        return (1u64.saturating_sub(released), false);
    }
    let mut sets = Vec::new();
    for g in groups {
        match column_of(g).filter(|_| bare_column(g)).and_then(|c| policy.public_keys(&c)) {
            Some(set) => sets.push(set.iter().map(String::as_str).collect::<BTreeSet<_>>()),
            None => return (0, true),
        }
    }
    let total = sets.iter().map(|s| s.len() as u64).fold(1u64, u64::saturating_mul);
    let public = (0..kept.num_rows())
        .filter(|&r| {
            sets.iter().enumerate().all(|(i, set)| {
                datafusion::arrow::util::display::array_value_to_string(kept.column(i), r)
                    .is_ok_and(|v| set.contains(v.as_str()))
            })
        })
        .count() as u64;
    (total.saturating_sub(public), false)
}

/// Builds the output batch of `rows` rows: group columns from `keys`, aggregate columns from
/// `agg`.
fn project_outputs(
    keys: &[ArrayRef],
    rows: usize,
    outputs: &[(String, Output)],
    schema: &SchemaRef,
    agg: impl Fn(usize) -> ArrayRef,
) -> Result<RecordBatch, QueryError> {
    let columns = outputs
        .iter()
        .zip(schema.fields())
        .map(|((_, o), f)| {
            let c = match o {
                Output::Group(i) => keys
                    .get(*i)
                    .cloned()
                    .ok_or_else(|| QueryError::Execution(format!("group column {i} is missing")))?,
                Output::Agg(i) => agg(*i),
            };
            cast(&c, f.data_type()).map_err(QueryError::from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(QueryError::from)
}

/// One value per row and aggregate under differential privacy (1 for a counted row, the clamped
/// fixed-point value for a sum; NULL where the row adds nothing), the same aggregates over rows
/// directly (where each unit has one row), and the bounds of one unit's contribution to a group.
/// Per-row values, direct aggregates and contribution bounds of a private release.
struct PrivateValues {
    values: Vec<Expr>,
    direct: Vec<Expr>,
    caps: Vec<(i64, i64)>,
}

fn private_values(
    aggs: &[AggSpec],
    schema: &DFSchema,
    privacy: &concord_policy::Privacy,
    fp: i64,
) -> Result<PrivateValues, QueryError> {
    let linf = i64::from(privacy.max_rows_per_group);
    let mut values = Vec::new();
    let mut direct = Vec::new();
    let mut caps = Vec::new();
    for a in aggs {
        let cond = counted_condition(a);
        let (value, lo, hi) = clamped_value(a, schema, privacy, fp, linf)?;
        direct.push(direct_aggregate(a, &value)?);
        let v = match cond {
            Some(c) => when(c, value).otherwise(lit(ScalarValue::Int64(None))).map_err(QueryError::plan)?,
            None => value,
        };
        values.push(v);
        caps.push((lo, hi));
    }
    Ok(PrivateValues { values, direct, caps })
}

/// When a row counts toward `a`: a count's argument not NULL, and `a`'s FILTER; `None` for always.
fn counted_condition(a: &AggSpec) -> Option<Expr> {
    // A NULL counts for nothing and adds nothing: a counted row needs a value, a clamped
    // value stays NULL. So COUNT(NULL) is a noisy 0 and COUNT(x) counts x's values, as in
    // pooled SQL.
    let counted = match a.func {
        AggFunc::Count => a.arg.as_ref().map(|arg| arg.clone().is_not_null()),
        _ => None,
    };
    match (counted, &a.filter) {
        (Some(c), Some(f)) => Some(c.and(f.clone())),
        (c, f) => c.or_else(|| f.clone()),
    }
}

/// A row's value for `a` (1, or the clamped fixed-point argument) and one unit's contribution bounds.
fn clamped_value(
    a: &AggSpec,
    schema: &DFSchema,
    privacy: &concord_policy::Privacy,
    fp: i64,
    linf: i64,
) -> Result<(Expr, i64, i64), QueryError> {
    Ok(match a.func {
        AggFunc::Count => (lit(1i64), 0i64, linf),
        _ => {
            let arg = a.arg.clone().unwrap_or(lit(0i64));
            let column = column_of(&arg).unwrap_or_default();
            let arg_type = arg.get_type(schema).map_err(QueryError::plan)?;
            let (lo, hi) = privacy.bounds.get(&column).copied().unwrap_or((0.0, 0.0));
            let lo_fp = (lo * fp as f64).round() as i64;
            let hi_fp = (hi * fp as f64).round() as i64;
            let fixed = crate::fixed::clamp_fixed(arg, &arg_type, lo_fp, hi_fp, fp);
            (fixed, lo_fp.saturating_mul(linf), hi_fp.saturating_mul(linf))
        }
    })
}

/// Aggregate `a` computed over rows directly, where each unit has one row; `value` is its row value.
fn direct_aggregate(a: &AggSpec, value: &Expr) -> Result<Expr, QueryError> {
    // Over rows directly, a count is DataFusion's own COUNT (NULLs skipped, FILTER as the
    // query's), and a sum of the clamped values under the FILTER clause.
    let over_rows = match a.func {
        AggFunc::Count => count(a.arg.clone().unwrap_or(lit(1i64))),
        _ => sum(value.clone()),
    };
    Ok(match &a.filter {
        Some(f) => over_rows.filter(f.clone()).build().map_err(QueryError::plan)?,
        None => over_rows,
    })
}

/// Runs a release under differential privacy: each unit's contribution bounded, totals per group
/// noised, and the groups the plan's [`DpGroups`] name released.
#[allow(clippy::too_many_arguments)]
async fn private_aggregate(
    plan: &ReleasePlan,
    dp: &PrivacyPlan,
    ctx: &SessionContext,
    b: LogicalPlanBuilder,
    groups: &[Expr],
    aggs: &[AggSpec],
    outputs: &[(String, Output)],
    limits: &ExecLimits,
) -> Result<(Vec<RecordBatch>, ReleaseReport, Option<u64>), QueryError> {
    use futures::StreamExt as _;
    let policy = &plan.rules.policy;
    let privacy =
        policy.release.privacy.as_ref().ok_or_else(|| QueryError::Execution("no privacy rules".into()))?;
    let unit = policy
        .personal
        .as_ref()
        .map(|p| p.privacy_unit.clone())
        .ok_or_else(|| QueryError::Execution("differential privacy without a privacy unit".into()))?;
    let fp = dp.fixed_point;
    let PrivateValues { values, direct, caps } = private_values(aggs, b.schema(), privacy, fp)?;
    let units_column = matches!(&dp.groups, DpGroups::Selected(s) if s.reuse.is_none());
    check_public_groups(dp, limits.max_groups)?;
    let built = if plan.rules.unit_is_row {
        unit_rows_plan(b, groups, direct, units_column)?
    } else {
        per_unit_plan(b, groups, values, &caps, &unit, privacy.max_groups_per_unit, units_column)?
    };
    let physical = physical_plan(ctx, built, true).await?;
    let planned = physical.schema();
    let mut stream = datafusion::physical_plan::execute_stream(physical.clone(), ctx.task_ctx())
        .map_err(QueryError::exec)?;
    let mut rng = concord_policy::dp::OsBlocks::new();
    let mut noised = Noised { rng: &mut rng, noise: &dp.noise, values: vec![Vec::new(); aggs.len()] };
    // Released keys, batch by batch (noisy selection), or totals by public key.
    let mut totals = PrivateTotals::new(dp, groups.len(), aggs.len(), units_column, limits.max_groups);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(QueryError::exec)?;
        totals.take(&batch, &mut noised)?;
    }
    let scanned = scanned_rows(&physical);
    let keys = totals.into_keys(&mut noised, &planned, groups)?;
    let noisy = noisy_columns(noised.values, aggs, fp);
    let rows = noisy.first().map(|a| a.len()).or_else(|| keys.first().map(|k| k.len())).unwrap_or(0);
    let batch = project_outputs(&keys, rows, outputs, &plan.subquery.schema, |i| noisy[i].clone())?;
    let report = private_report(plan, dp, aggs, outputs, batch.num_rows() as u64);
    Ok((vec![batch], report, scanned))
}

/// Refuses public key sets whose combinations (each one released) exceed the group limit.
fn check_public_groups(dp: &PrivacyPlan, max_groups: u64) -> Result<(), QueryError> {
    if let DpGroups::Public(sets) = &dp.groups {
        let combinations = key_combinations(sets);
        if combinations > max_groups {
            return Err(QueryError::Limit(format!(
                "the public keys of the group columns make {combinations} groups, more than the {} this owner \
                 releases for one request; group by fewer columns",
                max_groups
            )));
        }
    }
    Ok(())
}

/// The plan of a private release where each unit has one row: totals per group over the rows.
fn unit_rows_plan(
    b: LogicalPlanBuilder,
    groups: &[Expr],
    direct: Vec<Expr>,
    units_column: bool,
) -> Result<LogicalPlan, QueryError> {
    // Each unit has one row, so it contributes once to one group: aggregate the rows as they
    // are, the sums over clamped fixed-point values.
    let mut totals: Vec<Expr> =
        direct.into_iter().enumerate().map(|(j, e)| e.alias(format!("__t{j}"))).collect();
    if units_column {
        totals.push(count(lit(1i64)).alias("__units"));
    }
    let keys: Vec<Expr> =
        groups.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__g{i}"))).collect();
    b.aggregate(keys, totals).and_then(LogicalPlanBuilder::build).map_err(QueryError::plan)
}

/// The totals of a private plan, taken in batch by batch: the released keys (noisy selection,
/// noise drawn as groups arrive), the totals by public key, or the global group's totals.
struct PrivateTotals<'p> {
    dp: &'p PrivacyPlan,
    /// Group key columns, first in every batch.
    ng: usize,
    /// Aggregate totals, after the keys.
    naggs: usize,
    /// Whether a count of distinct units follows the totals.
    units_column: bool,
    /// The most groups one release holds.
    max_groups: u64,
    kept: Vec<RecordBatch>,
    released: u64,
    by_key: std::collections::HashMap<Vec<String>, Vec<i64>>,
    global: Option<Vec<i64>>,
}

impl<'p> PrivateTotals<'p> {
    /// Nothing taken in yet.
    fn new(dp: &'p PrivacyPlan, ng: usize, naggs: usize, units_column: bool, max_groups: u64) -> Self {
        Self {
            dp,
            ng,
            naggs,
            units_column,
            max_groups,
            kept: Vec::new(),
            released: 0,
            by_key: std::collections::HashMap::new(),
            global: None,
        }
    }

    /// Takes in one batch of the plan's output: keys, then totals (then units).
    fn take(&mut self, batch: &RecordBatch, noised: &mut Noised<'_>) -> Result<(), QueryError> {
        let totals: Vec<Int64Array> =
            (0..self.naggs).map(|j| int_column(batch, self.ng + j)).collect::<Result<_, _>>()?;
        let dp = self.dp;
        match &dp.groups {
            DpGroups::Global => {
                if batch.num_rows() > 0 {
                    self.global = Some(row_totals(&totals, 0));
                }
            }
            DpGroups::Public(sets) => self.take_public(batch, sets, &totals),
            DpGroups::Selected(sel) => self.take_selected(batch, sel, &totals, noised)?,
        }
        Ok(())
    }

    /// Keeps the totals of each group whose every key is in its column's public set.
    fn take_public(&mut self, batch: &RecordBatch, sets: &[Vec<String>], totals: &[Int64Array]) {
        for r in 0..batch.num_rows() {
            let key: Option<Vec<String>> = (0..self.ng)
                .map(|i| {
                    if batch.column(i).is_null(r) {
                        return None;
                    }
                    datafusion::arrow::util::display::array_value_to_string(batch.column(i), r)
                        .ok()
                        .filter(|v| sets[i].contains(v))
                })
                .collect();
            // Values outside the public sets are never released.
            if let Some(key) = key {
                self.by_key.insert(key, row_totals(totals, r));
            }
        }
    }

    /// Noises each group's totals and count of units, and keeps the keys of the groups whose
    /// noisy count reaches the threshold.
    fn take_selected(
        &mut self,
        batch: &RecordBatch,
        sel: &Selection,
        totals: &[Int64Array],
        noised: &mut Noised<'_>,
    ) -> Result<(), QueryError> {
        let units = if self.units_column { Some(int_column(batch, self.ng + self.naggs)?) } else { None };
        let mut mask = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            let t = row_totals(totals, r);
            let draws = noised.draw(&t)?;
            let noisy_units = match (&units, sel.reuse) {
                (_, Some(c)) => draws[c],
                (Some(u), None) => {
                    i128::from(if u.is_null(r) { 0 } else { u.value(r) }) + noised.one(&sel.noise)?
                }
                (None, None) => {
                    return Err(QueryError::Execution("no count of units to select groups on".into()));
                }
            };
            let keep = noisy_units >= i128::from(sel.threshold);
            if keep {
                noised.push(&draws);
                self.released += 1;
                // The limit counts released groups only: decided on noisy counts, it
                // tells nothing exact.
                if self.released > self.max_groups {
                    return Err(QueryError::Limit(format!(
                        "the sub-query would release more than {} groups, the most this owner releases for one \
                         request; group by fewer or coarser columns",
                        self.max_groups
                    )));
                }
            }
            mask.push(keep);
        }
        let keys = batch.project(&(0..self.ng).collect::<Vec<_>>()).map_err(QueryError::from)?;
        self.kept.push(filter_record_batch(&keys, &BooleanArray::from(mask)).map_err(QueryError::from)?);
        Ok(())
    }

    /// The key columns of the released groups. The global group and every public key are
    /// released whatever the data holds: their noise is drawn here.
    fn into_keys(
        self,
        noised: &mut Noised<'_>,
        planned: &Schema,
        groups: &[Expr],
    ) -> Result<Vec<ArrayRef>, QueryError> {
        let Self { dp, ng, naggs, kept, by_key, global, .. } = self;
        Ok(match &dp.groups {
            DpGroups::Global => {
                // A global aggregate is answered whatever the data holds, an empty set included.
                let t = global.unwrap_or_else(|| vec![0; naggs]);
                let draws = noised.draw(&t)?;
                noised.push(&draws);
                Vec::new()
            }
            DpGroups::Public(sets) => public_key_columns(sets, by_key, naggs, noised, planned, groups)?,
            DpGroups::Selected(_) => {
                let schema = kept.first().map(|b| b.schema()).unwrap_or_else(|| {
                    let keys = planned.project(&(0..ng).collect::<Vec<_>>());
                    Arc::new(keys.unwrap_or_else(|_| Schema::empty()))
                });
                let all = concat_batches(&schema, &kept).map_err(QueryError::from)?;
                all.columns().to_vec()
            }
        })
    }
}

/// Row `r` of a batch's totals, a NULL total as 0.
fn row_totals(totals: &[Int64Array], r: usize) -> Vec<i64> {
    totals.iter().map(|t| if t.is_null(r) { 0 } else { t.value(r) }).collect()
}

/// The key columns of every combination of public keys, in their columns' types, each
/// combination's totals (0 where the data has none) noised.
fn public_key_columns(
    sets: &[Vec<String>],
    mut by_key: std::collections::HashMap<Vec<String>, Vec<i64>>,
    naggs: usize,
    noised: &mut Noised<'_>,
    planned: &Schema,
    groups: &[Expr],
) -> Result<Vec<ArrayRef>, QueryError> {
    let mut columns: Vec<Vec<String>> = vec![Vec::new(); groups.len()];
    for key in combinations(sets) {
        let t = by_key.remove(&key).unwrap_or_else(|| vec![0; naggs]);
        let draws = noised.draw(&t)?;
        noised.push(&draws);
        for (i, v) in key.into_iter().enumerate() {
            columns[i].push(v);
        }
    }
    columns
        .into_iter()
        .enumerate()
        .map(|(i, vals)| {
            let text: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vals));
            let to = planned.field(i).data_type();
            cast(&text, to).map_err(|_| {
                policy_refusal(format!(
                    "a public key of group column {} cannot be read as its type {to}; the owner's policy must list \
                     values of that type",
                    groups[i]
                ))
            })
        })
        .collect()
}

/// The noisy totals as the requester's columns, fixed-point units divided out.
fn noisy_columns(values: Vec<Vec<i128>>, aggs: &[AggSpec], fp: i64) -> Vec<ArrayRef> {
    values
        .into_iter()
        .zip(aggs)
        .map(|(vals, a)| -> ArrayRef {
            match a.func {
                // Counts and sums of integers in the requester's integer type.
                AggFunc::Count => {
                    Arc::new(Int64Array::from_iter_values(vals.into_iter().map(|v| v.max(0) as i64)))
                }
                _ if a.data_type.is_integer() => Arc::new(Int64Array::from_iter_values(
                    vals.into_iter().map(|v| (v as f64 / fp as f64).round() as i64),
                )),
                _ => Arc::new(Float64Array::from_iter_values(vals.into_iter().map(|v| v as f64 / fp as f64))),
            }
        })
        .collect()
}

/// The provenance of a private release of `released` groups: noise, threshold, guarantee.
fn private_report(
    plan: &ReleasePlan,
    dp: &PrivacyPlan,
    aggs: &[AggSpec],
    outputs: &[(String, Output)],
    released: u64,
) -> ReleaseReport {
    let fp = dp.fixed_point;
    let (threshold, delta) = match &dp.groups {
        DpGroups::Selected(s) => (Some(s.threshold), Some(s.delta)),
        _ => (None, None),
    };
    ReleaseReport {
        groups_released: released,
        groups_suppressed: 0,
        // Under noisy selection nothing is counted: the noisy threshold hides whether a group
        // of one exists, and a count of groups held back would not. With public keys, or
        // without keys, nothing is held back.
        suppressed_not_counted: matches!(dp.groups, DpGroups::Selected(_)),
        min_group_size: plan.min_group_size,
        mechanism: Some(dp.mechanism.as_str().to_owned()),
        noise_scale: outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Agg(i) => Some((
                    aggs[*i].label(),
                    dp.noise[*i].scale() / if aggs[*i].func == AggFunc::Count { 1.0 } else { fp as f64 },
                )),
                Output::Group(_) => None,
            })
            .collect(),
        threshold,
        delta,
        guarantee: Some(dp.guarantee),
        public_keys: matches!(dp.groups, DpGroups::Public(_)),
        ..Default::default()
    }
}

/// Column `i` of a batch of totals as 64-bit integers.
fn int_column(batch: &RecordBatch, i: usize) -> Result<Int64Array, QueryError> {
    let c = cast(batch.column(i), &DataType::Int64).map_err(QueryError::from)?;
    c.as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| QueryError::Execution("aggregate totals are not integers".into()))
}

/// How many combinations of one key from each set there are.
fn key_combinations(sets: &[Vec<String>]) -> u64 {
    sets.iter().map(|s| s.len() as u64).fold(1u64, u64::saturating_mul)
}

/// Every combination of one key from each set, in the sets' order.
fn combinations(sets: &[Vec<String>]) -> Vec<Vec<String>> {
    sets.iter().fold(vec![Vec::new()], |acc, set| {
        acc.iter()
            .flat_map(|prefix| {
                set.iter().map(move |k| {
                    let mut next = prefix.clone();
                    next.push(k.clone());
                    next
                })
            })
            .collect()
    })
}

/// Noise drawn for the aggregates of released groups, kept in fixed-point units.
struct Noised<'a> {
    rng: &'a mut concord_policy::dp::OsBlocks,
    noise: &'a [Noise],
    values: Vec<Vec<i128>>,
}

impl Noised<'_> {
    fn one(&mut self, n: &Noise) -> Result<i128, QueryError> {
        n.sample_with(self.rng)
            .to_i128()
            .ok_or_else(|| QueryError::Execution("a noise draw is out of range".into()))
    }

    /// Each total with its own noise.
    fn draw(&mut self, totals: &[i64]) -> Result<Vec<i128>, QueryError> {
        let noise = self.noise;
        totals.iter().zip(noise).map(|(t, n)| Ok(i128::from(*t) + self.one(n)?)).collect()
    }

    fn push(&mut self, draws: &[i128]) {
        for (j, v) in draws.iter().enumerate() {
            self.values[j].push(*v);
        }
    }
}

/// The plan that bounds contributions per privacy unit: per (group, unit) sums capped, at most
/// `max_groups` groups per unit chosen at random, then totals per group (and, with `units`,
/// the distinct units of each group).
fn per_unit_plan(
    b: LogicalPlanBuilder,
    groups: &[Expr],
    values: Vec<Expr>,
    caps: &[(i64, i64)],
    unit: &str,
    max_groups: u32,
    units: bool,
) -> Result<LogicalPlan, QueryError> {
    let ng = groups.len();
    let naggs = values.len();
    let g = |i: usize| col(Column::new_unqualified(format!("__g{i}")));
    let v = |j: usize| col(Column::new_unqualified(format!("__v{j}")));
    let mut project: Vec<Expr> =
        groups.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__g{i}"))).collect();
    project.push(col(Column::new_unqualified(unit)).alias("__unit"));
    project.extend(values.into_iter().enumerate().map(|(j, e)| e.alias(format!("__v{j}"))));
    let mut b = b.project(project).map_err(QueryError::plan)?;
    // Contributions of one unit to one group, each capped.
    let keys: Vec<Expr> = (0..ng).map(g).chain([col("__unit")]).collect();
    let sums: Vec<Expr> = (0..naggs).map(|j| sum(v(j)).alias(format!("__v{j}"))).collect();
    b = b.aggregate(keys, sums).map_err(QueryError::plan)?;
    let mut capped: Vec<Expr> = (0..ng).map(g).chain([col("__unit")]).collect();
    for (j, (lo, hi)) in caps.iter().enumerate() {
        // A unit with nothing in this group (a NULL sum) contributes nothing.
        let cap = least(vec![greatest(vec![v(j), lit(*lo)]), lit(*hi)]);
        let kept =
            when(v(j).is_null(), lit(ScalarValue::Int64(None))).otherwise(cap).map_err(QueryError::plan)?;
        capped.push(kept.alias(format!("__v{j}")));
    }
    b = b.project(capped).map_err(QueryError::plan)?;
    // At most max_groups_per_unit groups per unit, chosen at random.
    let rank = row_number()
        .partition_by(vec![col("__unit")])
        .order_by(vec![SortExpr::new(random(), true, false)])
        .build()
        .map_err(QueryError::plan)?
        .alias("__rank");
    b = b.window(vec![rank]).map_err(QueryError::plan)?;
    b = b.filter(col("__rank").lt_eq(lit(u64::from(max_groups)))).map_err(QueryError::plan)?;
    let mut totals: Vec<Expr> = (0..naggs).map(|j| sum(v(j)).alias(format!("__t{j}"))).collect();
    if units {
        totals.push(count_distinct(col("__unit")).alias("__units"));
    }
    b.aggregate((0..ng).map(g).collect::<Vec<_>>(), totals)
        .and_then(LogicalPlanBuilder::build)
        .map_err(QueryError::plan)
}

/// What the rules would do with a sub-query, line by line, without running it or spending
/// budget: `policy test`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Explanation {
    /// Released, or refused with the reason.
    pub verdict: Verdict,
    /// One line per column use and per release rule, in a stable order.
    pub lines: Vec<String>,
}

/// What the rules do with a sub-query: `{"outcome": "released"}` or
/// `{"outcome": "refused", "reason": ...}` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Verdict {
    /// The result would be released.
    Released,
    /// The result would be refused.
    Refused {
        /// Why, as the refusal would say it.
        reason: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Released => f.write_str("released"),
            Self::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

/// Explains how `rules` treat `subquery`.
pub fn explain(subquery: &Subquery, rules: &Rules) -> Explanation {
    let mut lines = Vec::new();
    if rules.own {
        lines.push("the owner's own analysts: no rule binds".to_owned());
    } else {
        lines.extend(use_lines(subquery, rules));
    }
    match check(subquery.clone(), rules.clone()) {
        Ok(plan) => {
            let unit = rules.policy.personal.as_ref().map(|p| p.privacy_unit.as_str()).unwrap_or("rows");
            lines.extend(release_lines(&plan, unit));
            Explanation { verdict: Verdict::Released, lines }
        }
        Err(e) => Explanation { verdict: Verdict::Refused { reason: e.to_string() }, lines },
    }
}

/// One line per distinct use of a column, with what its mode says of it.
fn use_lines(subquery: &Subquery, rules: &Rules) -> Vec<String> {
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    for (column, use_, place) in subquery.uses() {
        if !seen.insert((column.clone(), use_.as_str(), place.clone())) {
            continue;
        }
        let mode = rules.policy.mode(&column);
        let verdict = if !mode.permits(use_) {
            "refused"
        } else if use_ == Use::Extreme && !rules.policy.allows_extremes(&column) {
            "refused (MIN/MAX not allowed)"
        } else {
            "allowed"
        };
        lines.push(format!("column {column} ({}) {} in {place}: {verdict}", mode.as_str(), use_.as_str()));
    }
    lines
}

/// What the release rules of a checked plan do: noise and groups, or a minimum group size.
fn release_lines(plan: &ReleasePlan, unit: &str) -> Vec<String> {
    match (&plan.privacy, plan.min_group_size) {
        (Some(p), _) => privacy_lines(p, plan.min_group_size, unit),
        (None, Some(k)) => vec![
            format!(
                "minimum group size {k}: groups of fewer distinct {unit} are suppressed (counted exactly, with no \
                 noise: exact releases are open to differencing across queries)"
            ),
            "exact values, no noise".to_owned(),
        ],
        (None, None) => vec!["no minimum group size".to_owned(), "exact values, no noise".to_owned()],
    }
}

/// What differential privacy does to a release: its cost and noise, and which groups appear.
fn privacy_lines(p: &PrivacyPlan, min_group_size: Option<u64>, unit: &str) -> Vec<String> {
    let scales: Vec<String> = p.noise.iter().map(|n| format!("{:.2}", n.scale())).collect();
    let cost = format!(
        "differential privacy ({}): costs {} {} (epsilon {:.4} at delta {:e}), noise scale per aggregate \
         (fixed-point units) {}",
        p.mechanism.as_str(),
        p.mechanism.parameter(),
        p.cost,
        p.guarantee.epsilon,
        p.guarantee.delta,
        scales.join(", ")
    );
    let groups = match &p.groups {
        DpGroups::Global => "one group, always answered with noise, whatever the data holds".to_owned(),
        DpGroups::Public(sets) => format!(
            "every combination of the public keys ({} groups) is released with noise, zeros included; \
             values outside the keys are not",
            key_combinations(sets)
        ),
        DpGroups::Selected(s) => format!(
            "a group is released when its noisy count of distinct {unit} reaches {} (the minimum group size {}, \
             noise scale {:.2}, delta {:e}: a group of one appears with probability at most delta); groups \
             held back are not counted",
            s.threshold,
            min_group_size.unwrap_or(1),
            s.noise.scale(),
            s.delta
        ),
    };
    vec![cost, groups]
}

/// Rows produced by the scans of an executed plan: what was read from the dataset; `None`
/// when the plan has no scan left (DataFusion answered from the file's statistics).
pub(crate) fn scanned_rows(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> Option<u64> {
    let children = plan.children();
    if children.is_empty() {
        return (plan.name() == "DataSourceExec")
            .then(|| plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0) as u64);
    }
    children.into_iter().filter_map(scanned_rows).reduce(|a, b| a.saturating_add(b))
}
