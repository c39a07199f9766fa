//! The one walker of what a sub-query carries, shared by the requester's split
//! ([`crate::federate`]) and the owner's check ([`crate::owner`], [`crate::release`]): which
//! kinds of expression travel to an owner ([`kind`], a match over every variant of DataFusion's
//! `Expr` with no catch-all, so that a kind a new DataFusion adds fails to compile until it is
//! decided here), and the chain of filters, projections and aliases down to one scan
//! ([`walk`]).
//!
//! Invariant: an expression the requester pushes to an owner is one the owner's check accepts,
//! and the other way round: both ask [`refused_in`].

use datafusion::common::tree_node::{Transformed, TreeNode as _, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};

/// Whether one kind of expression may be part of a sub-query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Computed row by row from the dataset's own columns: may travel, and the owner checks
    /// the columns it uses against their modes.
    Scalar,
    /// Never part of a sub-query: what it needs is not the owner's one dataset (a subquery,
    /// an outer reference), or it is not a value of one row (an aggregate, a window function).
    Refused(&'static str),
}

/// The decision for `e`'s own kind (not its children's).
#[allow(deprecated)] // Expr::Wildcard: decided like every other variant.
pub fn kind(e: &Expr) -> Kind {
    use Kind::{Refused, Scalar};
    match e {
        Expr::Alias(_)
        | Expr::Column(_)
        | Expr::Literal(..)
        | Expr::BinaryExpr(_)
        | Expr::Like(_)
        | Expr::SimilarTo(_)
        | Expr::Not(_)
        | Expr::IsNotNull(_)
        | Expr::IsNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Negative(_)
        | Expr::Between(_)
        | Expr::Case(_)
        | Expr::Cast(_)
        | Expr::TryCast(_)
        | Expr::ScalarFunction(_)
        | Expr::InList(_) => Scalar,
        // A session's variable has another value on the owner's node.
        Expr::ScalarVariable(..) => Refused("a session variable"),
        Expr::AggregateFunction(_) => Refused("a nested aggregate"),
        Expr::WindowFunction(_) => Refused("a window function"),
        Expr::Exists(_) | Expr::InSubquery(_) | Expr::SetComparison(_) | Expr::ScalarSubquery(_) => {
            Refused("a subquery")
        }
        Expr::OuterReferenceColumn(..) => Refused("an outer reference"),
        Expr::Wildcard { .. } => Refused("a wildcard"),
        Expr::GroupingSet(_) => Refused("GROUPING SETS, ROLLUP or CUBE"),
        Expr::Placeholder(_) => Refused("a parameter placeholder"),
        Expr::Unnest(_) => Refused("UNNEST"),
        Expr::HigherOrderFunction(_) | Expr::Lambda(_) | Expr::LambdaVariable(_) => {
            Refused("a higher-order function or lambda")
        }
    }
}

/// The first kind of expression inside `e` (itself included) that no sub-query carries.
pub fn refused_in(e: &Expr) -> Option<&'static str> {
    let mut found = None;
    let _ = e.apply(|x| match kind(x) {
        Kind::Scalar => Ok(TreeNodeRecursion::Continue),
        Kind::Refused(what) => {
            found = Some(what);
            Ok(TreeNodeRecursion::Stop)
        }
    });
    found
}

/// A chain of filters, projections and aliases down to one table scan, flattened: the filters
/// and the chain's output expressions, both over the scan's own (unqualified) columns.
#[derive(Debug)]
pub struct Chain<'a> {
    /// The table scan the chain ends in.
    pub scan: &'a TableScan,
    /// Every predicate on the way, the scan's pushed-down filters first; all must hold.
    pub filters: Vec<Expr>,
    /// One expression per output column of the chain's top, in order.
    pub outputs: Vec<Expr>,
}

/// Why a plan is not a chain a sub-query can be.
#[derive(Debug)]
pub enum NotAChain {
    /// An operator other than a filter, projection, alias or scan: its display.
    Operator(String),
    /// An expression of a kind no sub-query carries: the expression, and what it holds.
    Refused(String, &'static str),
    /// DataFusion failed to rewrite an expression over the scan's columns.
    Plan(DataFusionError),
}

/// Walks a chain of filters, projections and aliases down to its scan, every expression on
/// the way decided by [`refused_in`]. The scan's own filters (pushed down by an optimiser) come
/// first among the filters.
pub fn walk(plan: &LogicalPlan) -> Result<Chain<'_>, NotAChain> {
    let check = |e: &Expr| match refused_in(e) {
        Some(what) => Err(NotAChain::Refused(e.to_string(), what)),
        None => Ok(()),
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            let outputs = scan
                .projected_schema
                .fields()
                .iter()
                .map(|f| Expr::Column(Column::new_unqualified(f.name())))
                .collect();
            let mut filters = Vec::new();
            for f in &scan.filters {
                check(f)?;
                filters.push(unqualify(f).map_err(NotAChain::Plan)?);
            }
            Ok(Chain { scan, filters, outputs })
        }
        LogicalPlan::Filter(f) => {
            check(&f.predicate)?;
            let mut chain = walk(&f.input)?;
            let predicate =
                substitute(&f.predicate, f.input.schema(), &chain.outputs).map_err(NotAChain::Plan)?;
            chain.filters.push(predicate);
            Ok(chain)
        }
        LogicalPlan::Projection(p) => {
            for e in &p.expr {
                check(e)?;
            }
            let mut chain = walk(&p.input)?;
            chain.outputs = p
                .expr
                .iter()
                .map(|e| substitute(&e.clone().unalias(), p.input.schema(), &chain.outputs))
                .collect::<DfResult<Vec<_>>>()
                .map_err(NotAChain::Plan)?;
            Ok(chain)
        }
        LogicalPlan::SubqueryAlias(s) => walk(&s.input),
        other => Err(NotAChain::Operator(other.display().to_string())),
    }
}

fn unqualify(e: &Expr) -> DfResult<Expr> {
    e.clone()
        .transform_up(|x| match x {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

/// Replaces every column of `schema` in `e` by the expression that computes it.
pub(crate) fn substitute(e: &Expr, schema: &DFSchema, outputs: &[Expr]) -> DfResult<Expr> {
    e.clone()
        .transform_up(|x| match x {
            Expr::Column(c) => {
                let i = schema.index_of_column(&c)?;
                let out = outputs
                    .get(i)
                    .cloned()
                    .ok_or_else(|| DataFusionError::Internal(format!("column {c} has no expression")))?;
                Ok(Transformed::yes(out))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}
