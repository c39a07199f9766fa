//! Bounded execution: every query runs in a session with a memory pool of a set size, reads at
//! most a set number of groups, and uses only allow-listed scalar functions whose output size is
//! bounded by the SQL itself.
//!
//! A memory pool only sees what operators reserve (hash tables, sorts); values computed by
//! scalar functions are allocated outside it, batch by batch. So before a plan runs, every
//! expression in it gets an upper bound of the size of one value it computes, as `a·L + b`
//! bytes where `L` is the largest value read from any table: a column is `1·L`, a literal of
//! `n` bytes is `n`, `concat(x, y)` adds, `repeat(x, 3)` triples. A function not on the
//! allow-list, or one whose size the caller picks at run time (`repeat(x, n)` with `n` read from
//! the data), is refused; so is any expression whose bound passes [`MAX_GROWTH`] or
//! [`MAX_VALUE_BYTES`]. The bound follows values through projections, joins and unions, so
//! layers of views cannot multiply it past the limit either.
//!
//! Invariant: no plan runs here, on the owner's side or the requester's, before
//! [`check_plan`] accepted it.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::expr::{AggregateFunction, Case, ScalarFunction, WindowFunction};
use datafusion::logical_expr::{Expr, LogicalPlan, Operator};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::QueryError;

/// Largest factor by which a value may exceed the largest value read.
pub const MAX_GROWTH: u64 = 16;
/// Largest number of bytes a value may hold beyond that (literals, padding, formatting).
pub const MAX_VALUE_BYTES: u64 = 16 * 1024;
/// Largest factor, summed over the values of one row.
pub const MAX_ROW_GROWTH: u64 = 4 * MAX_GROWTH;
/// Largest number of bytes beyond that, summed over the values of one row.
pub const MAX_ROW_BYTES: u64 = 4 * MAX_VALUE_BYTES;
/// Longest `lpad`/`rpad` result, in characters.
pub const MAX_PAD: i64 = 4096;

/// Limits of one query's execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecLimits {
    /// Bytes that operators of one query may reserve (hash tables, sorts, joins).
    pub memory_bytes: usize,
    /// Groups (rows) an owner releases for one sub-query.
    pub max_groups: u64,
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self { memory_bytes: 1024 * 1024 * 1024, max_groups: 1_000_000 }
    }
}

/// A DataFusion session whose operators share a memory pool of `limits.memory_bytes`.
pub fn session(limits: &ExecLimits) -> Result<SessionContext, QueryError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .build_arc()
        .map_err(QueryError::plan)?;
    Ok(SessionContext::new_with_config_rt(SessionConfig::new(), runtime))
}

/// An analyst's session: [`session`] with DataFusion's `information_schema`, so that
/// `SHOW TABLES`, `SHOW COLUMNS FROM t` and `information_schema.tables` / `.columns` list what
/// the analyst's context holds. Owners' sessions never have it. Its planner runs the aggregates
/// over the member's own datasets in PostgreSQL there ([`crate::remote::RemotePlanner`]).
pub fn analyst_session(limits: &ExecLimits) -> Result<SessionContext, QueryError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .build_arc()
        .map_err(QueryError::plan)?;
    let config = SessionConfig::new().with_information_schema(true);
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_query_planner(Arc::new(crate::remote::RemotePlanner))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// An upper bound of one value's size: `a·L + b` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bound {
    a: u64,
    b: u64,
}

impl Bound {
    const INPUT: Self = Self { a: 1, b: 0 };
    /// Numbers, booleans, dates and other fixed-width values.
    const FIXED: Self = Self { a: 0, b: 64 };
    /// The largest bound a value may have.
    const LIMIT: Self = Self { a: MAX_GROWTH, b: MAX_VALUE_BYTES };

    fn bytes(n: u64) -> Self {
        Self { a: 0, b: n }
    }

    fn max(self, o: Self) -> Self {
        Self { a: self.a.max(o.a), b: self.b.max(o.b) }
    }

    fn plus(self, o: Self) -> Self {
        Self { a: self.a.saturating_add(o.a), b: self.b.saturating_add(o.b) }
    }

    fn times(self, k: u64) -> Self {
        Self { a: self.a.saturating_mul(k), b: self.b.saturating_mul(k) }
    }
}

/// How an allow-listed scalar function's output size follows from its arguments'.
enum Size {
    /// Fixed width, whatever the arguments.
    Fixed,
    /// At most the largest argument (trims, substrings, choices).
    Largest,
    /// At most `k` times the largest argument (case changes can turn one character into three;
    /// `translate` one byte into four; hex and base64 encodings).
    Times(u64),
    /// At most the sum of the arguments (concatenations, structs).
    Sum,
    /// Bounded by literal arguments: handled one by one.
    Literal,
}

/// Functions of fixed-width output.
const FIXED: &[&str] = &[
    "abs",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "cbrt",
    "ceil",
    "cos",
    "cosh",
    "cot",
    "degrees",
    "exp",
    "factorial",
    "floor",
    "gcd",
    "lcm",
    "isnan",
    "iszero",
    "ln",
    "log",
    "log10",
    "log2",
    "nanvl",
    "pi",
    "pow",
    "power",
    "radians",
    "round",
    "signum",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    "ascii",
    "bit_length",
    "char_length",
    "character_length",
    "length",
    "octet_length",
    "instr",
    "position",
    "strpos",
    "find_in_set",
    "levenshtein",
    "contains",
    "starts_with",
    "ends_with",
    "date_part",
    "datepart",
    "date_trunc",
    "datetrunc",
    "date_bin",
    "make_date",
    "make_time",
    "to_date",
    "to_time",
    "to_timestamp",
    "to_timestamp_seconds",
    "to_timestamp_millis",
    "to_timestamp_micros",
    "to_timestamp_nanos",
    "to_unixtime",
    "from_unixtime",
    "now",
    "current_date",
    "current_time",
    "current_timestamp",
    "today",
    "to_local_time",
    "arrow_typeof",
    "chr",
    "to_hex",
];

/// Functions whose output is at most their largest argument.
const LARGEST: &[&str] = &[
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "substr",
    "substring",
    "left",
    "right",
    "reverse",
    "split_part",
    "substr_index",
    "substring_index",
    "coalesce",
    "ifnull",
    "nvl",
    "nvl2",
    "nullif",
    "greatest",
    "least",
    "get_field",
    "decode",
];

fn size_of_function(name: &str) -> Option<Size> {
    Some(match name {
        n if FIXED.contains(&n) => Size::Fixed,
        n if LARGEST.contains(&n) => Size::Largest,
        "lower" | "upper" | "initcap" => Size::Times(3),
        "translate" => Size::Times(4),
        "encode" => Size::Times(2),
        "concat" | "overlay" | "struct" | "named_struct" | "row" => Size::Sum,
        "concat_ws" | "repeat" | "lpad" | "rpad" | "replace" | "regexp_replace" | "regexp_like"
        | "regexp_count" | "regexp_instr" | "to_char" | "date_format" | "arrow_cast" | "arrow_try_cast"
        | "cast_to_type" | "try_cast_to_type" => Size::Literal,
        _ => return None,
    })
}

/// Target types whose width the caller picks (`FixedSizeBinary(2147483647)`), anywhere inside.
fn caller_sized(t: &DataType) -> bool {
    match t {
        DataType::FixedSizeBinary(_) | DataType::FixedSizeList(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => caller_sized(f.data_type()),
        DataType::Struct(fs) => fs.iter().any(|f| caller_sized(f.data_type())),
        DataType::Dictionary(_, v) => caller_sized(v),
        _ => false,
    }
}

fn check_cast_target(t: &DataType) -> Result<(), QueryError> {
    if caller_sized(t) {
        return Err(refuse(format!(
            "a cast to {t} makes values of a width the query picks; cast to variable-width types instead"
        )));
    }
    Ok(())
}

fn literal_i64(e: &Expr) -> Option<i64> {
    match e {
        Expr::Alias(a) => literal_i64(&a.expr),
        Expr::Cast(c) => literal_i64(&c.expr),
        Expr::TryCast(c) => literal_i64(&c.expr),
        Expr::Literal(v, _) => match v.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(n) => n,
            _ => None,
        },
        _ => None,
    }
}

fn literal_str(e: &Expr) -> Option<&str> {
    match e {
        Expr::Alias(a) => literal_str(&a.expr),
        Expr::Cast(c) => literal_str(&c.expr),
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s),
        _ => None,
    }
}

fn literal_size(v: &ScalarValue) -> u64 {
    match v {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            s.len() as u64
        }
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => b.len() as u64,
        _ => 64,
    }
}

fn refuse(why: String) -> QueryError {
    QueryError::Refused(why)
}

/// The bounds of the columns an expression may read: one schema per input of its plan node.
struct Inputs<'a> {
    schemas: Vec<(&'a DFSchema, &'a [Bound])>,
}

impl Inputs<'_> {
    fn column(&self, c: &Column) -> Bound {
        for (schema, bounds) in &self.schemas {
            if let Ok(i) = schema.index_of_column(c) {
                return bounds.get(i).copied().unwrap_or(Bound::INPUT);
            }
        }
        // An outer reference or a column of a subquery's own input: a value read as it is.
        Bound::INPUT
    }
}

/// The bound of `e`'s values; refuses a function off the allow-list, or a bound over the limits.
fn bound(e: &Expr, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    let b = match e {
        Expr::Alias(a) => return bound(&a.expr, inputs),
        Expr::Column(c) => return Ok(inputs.column(c)),
        // A column of the enclosing query, whose bound is not known here: taken as the largest
        // allowed, so that nothing may grow it further.
        Expr::OuterReferenceColumn(..) => return Ok(Bound::LIMIT),
        // A literal is one value, not one per row: only what is computed from it counts.
        Expr::Literal(v, _) => return Ok(Bound::bytes(literal_size(v))),
        Expr::BinaryExpr(x) => {
            let (l, r) = (bound(&x.left, inputs)?, bound(&x.right, inputs)?);
            if x.op == Operator::StringConcat { l.plus(r) } else { Bound::FIXED.max(l.max(r)) }
        }
        Expr::Case(c) => case_bound(c, inputs)?,
        Expr::Cast(c) => cast_bound(c.field.data_type(), &c.expr, inputs)?,
        Expr::TryCast(c) => cast_bound(c.field.data_type(), &c.expr, inputs)?,
        // One value computed by its own plan, whose bound is that plan's.
        Expr::ScalarSubquery(s) => output_bounds(&s.subquery)?.first().copied().unwrap_or(Bound::INPUT),
        Expr::ScalarFunction(f) => function_bound(f, inputs)?,
        Expr::AggregateFunction(f) => aggregate_bound(f, inputs)?,
        Expr::WindowFunction(w) => window_bound(w, inputs)?,
        Expr::Placeholder(_) => {
            return Err(refuse("placeholders ($1) are not accepted; write the values into the SQL".into()));
        }
        Expr::Unnest(_) | Expr::HigherOrderFunction(_) | Expr::Lambda(_) | Expr::LambdaVariable(_) => {
            return Err(refuse(format!("{e} is not accepted in Concord queries")));
        }
        // Everything else yields booleans or fixed-width values from its operands, each of
        // which is checked on its own.
        other => children_bound(other, inputs)?,
    };
    if b.a > MAX_GROWTH || b.b > MAX_VALUE_BYTES {
        return Err(refuse(format!(
            "{e} could compute values of up to {}×(largest value read) + {} bytes; this node allows \
             at most {MAX_GROWTH}× + {MAX_VALUE_BYTES} bytes per value",
            b.a, b.b
        )));
    }
    Ok(b)
}

/// The bounds of a list of arguments, each checked.
fn arg_bounds(xs: &[Expr], inputs: &Inputs<'_>) -> Result<Vec<Bound>, QueryError> {
    xs.iter().map(|x| bound(x, inputs)).collect::<Result<Vec<_>, _>>()
}

/// The largest of some bounds (of none, 0 bytes).
fn largest(bs: &[Bound]) -> Bound {
    bs.iter().fold(Bound::bytes(0), |m, b| m.max(*b))
}

/// A CASE is as large as its largest result; its operand and conditions are checked.
fn case_bound(c: &Case, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    if let Some(x) = &c.expr {
        bound(x, inputs)?;
    }
    let mut m = Bound::bytes(0);
    for (w, t) in &c.when_then_expr {
        bound(w, inputs)?;
        m = m.max(bound(t, inputs)?);
    }
    if let Some(x) = &c.else_expr {
        m = m.max(bound(x, inputs)?);
    }
    Ok(m)
}

/// A cast (or try-cast) of `expr` to `target`: a target of a width the query picks is refused.
fn cast_bound(target: &DataType, expr: &Expr, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    check_cast_target(target)?;
    Ok(bound(expr, inputs)?.max(Bound::FIXED))
}

/// A scalar function's bound as the allow-list sizes it from its arguments'.
fn function_bound(f: &ScalarFunction, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    let name = f.func.name().to_ascii_lowercase();
    let Some(size) = size_of_function(&name) else {
        return Err(refuse(format!(
            "function {name}() is not on this node's allow-list of scalar functions; \
             see the README for the functions queries may use"
        )));
    };
    let bs = arg_bounds(&f.args, inputs)?;
    Ok(match size {
        Size::Fixed => Bound::FIXED.max(Bound::bytes(bs.iter().map(|b| b.b).max().unwrap_or(0))),
        Size::Largest => largest(&bs).max(Bound::FIXED),
        Size::Times(k) => largest(&bs).times(k).max(Bound::FIXED),
        Size::Sum => bs.iter().fold(Bound::bytes(0), |s, b| s.plus(*b)),
        Size::Literal => literal_bound(&name, &f.args, &bs)?,
    })
}

/// An aggregate's bound; its FILTER clause and ORDER BY are checked.
fn aggregate_bound(f: &AggregateFunction, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    let bs = arg_bounds(&f.params.args, inputs)?;
    if let Some(x) = &f.params.filter {
        bound(x, inputs)?;
    }
    for s in &f.params.order_by {
        bound(&s.expr, inputs)?;
    }
    // One value made of every row's (within the memory pool while it accumulates): taken
    // as the largest allowed, so that nothing may grow it further.
    Ok(match f.func.name().to_ascii_lowercase().as_str() {
        "string_agg" | "array_agg" => Bound::LIMIT,
        _ => largest(&bs).max(Bound::FIXED),
    })
}

/// A window function's bound; its PARTITION BY and ORDER BY are checked.
fn window_bound(w: &WindowFunction, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    let bs = arg_bounds(&w.params.args, inputs)?;
    for x in w.params.partition_by.iter().chain(w.params.order_by.iter().map(|s| &s.expr)) {
        bound(x, inputs)?;
    }
    Ok(largest(&bs).max(Bound::FIXED))
}

/// A fixed-width value computed from operands that are each checked on their own.
fn children_bound(e: &Expr, inputs: &Inputs<'_>) -> Result<Bound, QueryError> {
    let mut failed = None;
    let _ = e.apply_children(|child| match bound(child, inputs) {
        Ok(_) => Ok(TreeNodeRecursion::Continue),
        Err(err) => {
            failed = Some(err);
            Ok(TreeNodeRecursion::Stop)
        }
    });
    if let Some(err) = failed {
        return Err(err);
    }
    Ok(Bound::FIXED)
}

/// Functions whose output size a literal argument sets.
fn literal_bound(name: &str, args: &[Expr], bs: &[Bound]) -> Result<Bound, QueryError> {
    let first = bs.first().copied().unwrap_or(Bound::bytes(0));
    match name {
        "concat_ws" => {
            // The separator is written between every two of the other arguments.
            let rest = bs.iter().skip(1).fold(Bound::bytes(0), |s, b| s.plus(*b));
            Ok(rest.plus(first.times(bs.len().saturating_sub(2) as u64)))
        }
        "repeat" => {
            let n = args.get(1).and_then(literal_i64).ok_or_else(|| {
                refuse(
                    "repeat(text, n) needs n written as a number in the SQL, so that its size is known"
                        .into(),
                )
            })?;
            Ok(first.times(u64::try_from(n).unwrap_or(0)))
        }
        "lpad" | "rpad" => pad_bound(name, args),
        "replace" => replace_bound(args, first),
        "regexp_replace" => regexp_replace_bound(name, args, first),
        "regexp_like" | "regexp_count" | "regexp_instr" => {
            // A pattern from the data would be compiled anew for every value.
            check_pattern_literal(name, args)?;
            Ok(Bound::FIXED)
        }
        "to_char" | "date_format" => {
            // A directive such as %c writes up to 24 bytes for 2.
            let format = args.get(1).and_then(literal_str).ok_or_else(|| {
                refuse(format!("{name}(value, format) needs the format written as a string in the SQL"))
            })?;
            Ok(Bound::bytes(64 + 16 * format.len() as u64))
        }
        "arrow_cast" | "arrow_try_cast" | "cast_to_type" | "try_cast_to_type" => {
            let target = args.get(1).and_then(literal_str).ok_or_else(|| {
                refuse(format!("{name}(value, type) needs the type written as a string in the SQL"))
            })?;
            if let Ok(t) = target.parse::<DataType>() {
                check_cast_target(&t)?;
            }
            Ok(first.max(Bound::FIXED))
        }
        _ => Err(refuse(format!("function {name}() is not on this node's allow-list"))),
    }
}

/// Refuses a regular-expression function whose pattern is not written as a string in the SQL.
fn check_pattern_literal(name: &str, args: &[Expr]) -> Result<(), QueryError> {
    args.get(1).and_then(literal_str).map(|_| ()).ok_or_else(|| {
        refuse(format!("{name}(text, pattern, ...) needs the pattern written as a string in the SQL"))
    })
}

/// `lpad` and `rpad`: as long as their literal length says.
fn pad_bound(name: &str, args: &[Expr]) -> Result<Bound, QueryError> {
    let n = args.get(1).and_then(literal_i64).filter(|n| (0..=MAX_PAD).contains(n)).ok_or_else(|| {
        refuse(format!("{name}(text, n) needs n written as a number from 0 to {MAX_PAD} in the SQL"))
    })?;
    // n characters of at most 4 bytes each.
    Ok(Bound::bytes(n as u64 * 4))
}

/// `replace`: each occurrence of a literal `from` in `first` becomes a literal `to`.
fn replace_bound(args: &[Expr], first: Bound) -> Result<Bound, QueryError> {
    let (from, to) = match (args.get(1).and_then(literal_str), args.get(2).and_then(literal_str)) {
        (Some(f), Some(t)) if !f.is_empty() => (f.len() as u64, t.len() as u64),
        _ => {
            return Err(refuse(
                "replace(text, from, to) needs from (not empty) and to written as strings in the SQL".into(),
            ));
        }
    };
    Ok(first.times(to.div_ceil(from).max(1)))
}

/// `regexp_replace`: a literal replacement without references, written at every match.
fn regexp_replace_bound(name: &str, args: &[Expr], first: Bound) -> Result<Bound, QueryError> {
    check_pattern_literal(name, args)?;
    let to = args.get(2).and_then(literal_str).filter(|t| !t.contains(['$', '\\'])).ok_or_else(|| {
        refuse(
            "regexp_replace(text, pattern, replacement) needs the replacement written as a string \
             without references ($1, \\1) in the SQL"
                .into(),
        )
    })?;
    // A pattern may match at every position, empty matches included.
    Ok(first.times((to.len() as u64).saturating_add(1)).plus(Bound::bytes(to.len() as u64)))
}

/// Checks every expression of a plan, its subqueries included: allow-listed functions only, and
/// every value within [`MAX_GROWTH`] and [`MAX_VALUE_BYTES`]. Recursive queries are refused.
pub fn check_plan(plan: &LogicalPlan) -> Result<(), QueryError> {
    output_bounds(plan).map(|_| ())
}

/// The bounds of a plan's output columns, checking everything below.
fn output_bounds(plan: &LogicalPlan) -> Result<Vec<Bound>, QueryError> {
    let children = plan.inputs();
    let child_bounds = children.iter().map(|c| output_bounds(c)).collect::<Result<Vec<_>, _>>()?;
    let inputs = Inputs {
        schemas: children
            .iter()
            .zip(&child_bounds)
            .map(|(c, b)| (c.schema().as_ref(), b.as_slice()))
            .collect(),
    };
    check_subqueries(plan)?;
    let own = own_bounds(&plan.expressions(), &inputs)?;
    plan_bounds(plan, own, &child_bounds, &inputs)
}

/// Checks the subqueries inside a plan node's expressions.
fn check_subqueries(plan: &LogicalPlan) -> Result<(), QueryError> {
    // Subqueries inside expressions are plans of their own.
    let mut failed = None;
    let _ = plan.apply_subqueries(|sub| {
        if let Err(e) = output_bounds(sub) {
            failed = Some(e);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Jump)
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(())
}

/// The bounds of a plan node's own expressions, each value and the row they make within limits.
fn own_bounds(exprs: &[Expr], inputs: &Inputs<'_>) -> Result<Vec<Bound>, QueryError> {
    let mut own = Vec::with_capacity(exprs.len());
    let mut row = Bound::bytes(0);
    for e in exprs {
        let b = bound(e, inputs)?;
        // A literal in a select list is copied to every row: it counts like any value.
        if b.a > MAX_GROWTH || b.b > MAX_VALUE_BYTES {
            return Err(refuse(format!(
                "{e} is a value of up to {} bytes; this node allows at most {MAX_VALUE_BYTES} bytes per value",
                b.b
            )));
        }
        row = row.plus(b);
        own.push(b);
    }
    // Every row of a batch holds all of them at once.
    if row.a > MAX_ROW_GROWTH || row.b > MAX_ROW_BYTES {
        return Err(refuse(format!(
            "one row of this query could hold {}×(largest value read) + {} bytes; this node allows at most \
             {MAX_ROW_GROWTH}× + {MAX_ROW_BYTES} bytes per row",
            row.a, row.b
        )));
    }
    Ok(own)
}

/// The bounds of a plan node's output columns, from its own expressions' bounds and its
/// inputs'; recursive queries are refused.
fn plan_bounds(
    plan: &LogicalPlan,
    own: Vec<Bound>,
    child_bounds: &[Vec<Bound>],
    inputs: &Inputs<'_>,
) -> Result<Vec<Bound>, QueryError> {
    let width = plan.schema().fields().len();
    let all_inputs = child_bounds.iter().flatten().fold(Bound::INPUT, |m, b| m.max(*b));
    Ok(match plan {
        LogicalPlan::RecursiveQuery(_) => {
            return Err(refuse(
                "recursive queries are not accepted: their values could grow without bound".into(),
            ));
        }
        LogicalPlan::TableScan(_) | LogicalPlan::EmptyRelation(_) => vec![Bound::INPUT; width],
        LogicalPlan::Projection(_) => own,
        LogicalPlan::Aggregate(_) => own,
        LogicalPlan::Values(v) => values_bounds(&v.values, width, inputs)?,
        LogicalPlan::Window(_) => {
            let mut cols = child_bounds.first().cloned().unwrap_or_default();
            cols.extend(own);
            cols
        }
        LogicalPlan::Union(_) => union_bounds(child_bounds, width),
        LogicalPlan::Join(_) => {
            let cols: Vec<Bound> = child_bounds.iter().flatten().copied().collect();
            if cols.len() == width { cols } else { vec![all_inputs; width] }
        }
        _ => match child_bounds {
            [one] if one.len() == width => one.clone(),
            _ => vec![all_inputs; width],
        },
    })
}

/// The bounds of a VALUES list's `width` columns: each column's largest value over the rows.
fn values_bounds(rows: &[Vec<Expr>], width: usize, inputs: &Inputs<'_>) -> Result<Vec<Bound>, QueryError> {
    let mut cols = vec![Bound::bytes(0); width];
    for row in rows {
        for (i, e) in row.iter().enumerate() {
            if let Some(c) = cols.get_mut(i) {
                *c = c.max(bound(e, inputs)?);
            }
        }
    }
    Ok(cols)
}

/// The bounds of a union's `width` columns: each column's largest over the union's inputs.
fn union_bounds(child_bounds: &[Vec<Bound>], width: usize) -> Vec<Bound> {
    let mut cols = vec![Bound::bytes(0); width];
    for b in child_bounds {
        for (c, x) in cols.iter_mut().zip(b) {
            *c = c.max(*x);
        }
    }
    cols
}

/// Reads a plan's batches, stopping with a refusal as soon as more than `max_rows` arrived.
pub async fn collect_limited(
    ctx: &SessionContext,
    physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    max_rows: u64,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>, QueryError> {
    use futures::StreamExt as _;
    let mut stream =
        datafusion::physical_plan::execute_stream(physical, ctx.task_ctx()).map_err(QueryError::exec)?;
    let mut batches = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(QueryError::exec)?;
        rows = rows.saturating_add(batch.num_rows() as u64);
        if rows > max_rows {
            return Err(QueryError::Limit(format!(
                "the sub-query would release more than {max_rows} groups, the most this owner releases \
                 for one request; group by fewer or coarser columns"
            )));
        }
        batches.push(batch);
    }
    Ok(batches)
}
