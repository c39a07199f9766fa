//! Every kind of DataFusion expression is decided once, for the requester's split and the
//! owner's check alike: a sample of each variant of `Expr`, the decision it gets, and the same
//! decision on both sides of a real sub-query.

use std::sync::Arc;

use concord_query::chain::{Kind, kind, refused_in};
use datafusion::common::{Column, Spans};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::expr::{
    Exists, InSubquery, Lambda, LambdaVariable, Placeholder, SetComparison, SetQuantifier, Unnest,
    WildcardOptions,
};
use datafusion::logical_expr::{
    Expr, GroupingSet, LogicalPlanBuilder, Operator, Subquery, cast, col, lit, try_cast, when,
};

/// The name of an expression's variant. No catch-all: a variant a new DataFusion adds fails
/// to compile here, as it does in `chain::kind`, until it is decided and sampled.
#[allow(deprecated)]
fn variant(e: &Expr) -> &'static str {
    match e {
        Expr::Alias(_) => "Alias",
        Expr::Column(_) => "Column",
        Expr::ScalarVariable(..) => "ScalarVariable",
        Expr::Literal(..) => "Literal",
        Expr::BinaryExpr(_) => "BinaryExpr",
        Expr::Like(_) => "Like",
        Expr::SimilarTo(_) => "SimilarTo",
        Expr::Not(_) => "Not",
        Expr::IsNotNull(_) => "IsNotNull",
        Expr::IsNull(_) => "IsNull",
        Expr::IsTrue(_) => "IsTrue",
        Expr::IsFalse(_) => "IsFalse",
        Expr::IsUnknown(_) => "IsUnknown",
        Expr::IsNotTrue(_) => "IsNotTrue",
        Expr::IsNotFalse(_) => "IsNotFalse",
        Expr::IsNotUnknown(_) => "IsNotUnknown",
        Expr::Negative(_) => "Negative",
        Expr::Between(_) => "Between",
        Expr::Case(_) => "Case",
        Expr::Cast(_) => "Cast",
        Expr::TryCast(_) => "TryCast",
        Expr::ScalarFunction(_) => "ScalarFunction",
        Expr::AggregateFunction(_) => "AggregateFunction",
        Expr::WindowFunction(_) => "WindowFunction",
        Expr::InList(_) => "InList",
        Expr::Exists(_) => "Exists",
        Expr::InSubquery(_) => "InSubquery",
        Expr::SetComparison(_) => "SetComparison",
        Expr::ScalarSubquery(_) => "ScalarSubquery",
        Expr::Wildcard { .. } => "Wildcard",
        Expr::GroupingSet(_) => "GroupingSet",
        Expr::Placeholder(_) => "Placeholder",
        Expr::OuterReferenceColumn(..) => "OuterReferenceColumn",
        Expr::Unnest(_) => "Unnest",
        Expr::HigherOrderFunction(_) => "HigherOrderFunction",
        Expr::Lambda(_) => "Lambda",
        Expr::LambdaVariable(_) => "LambdaVariable",
    }
}

/// Every variant, for the coverage check below.
const VARIANTS: usize = 37;

#[allow(deprecated)]
fn samples() -> Vec<(Expr, bool)> {
    let x = || col("region");
    let empty = LogicalPlanBuilder::empty(false).build().expect("plan");
    let sub =
        || Subquery { subquery: Arc::new(empty.clone()), outer_ref_columns: vec![], spans: Spans::new() };
    let field = Arc::new(datafusion::arrow::datatypes::Field::new(
        "v",
        datafusion::arrow::datatypes::DataType::Int64,
        true,
    ));
    let upper = datafusion::functions::string::upper();
    vec![
        (x().alias("r"), true),
        (x(), true),
        (Expr::ScalarVariable(field.clone(), vec!["@@x".into()]), false),
        (lit(1), true),
        (x().eq(lit("a")), true),
        (x().like(lit("a%")), true),
        (
            Expr::SimilarTo(datafusion::logical_expr::expr::Like::new(
                false,
                Box::new(x()),
                Box::new(lit("a")),
                None,
                false,
            )),
            true,
        ),
        (!x().eq(lit("a")), true),
        (x().is_not_null(), true),
        (x().is_null(), true),
        (x().eq(lit("a")).is_true(), true),
        (x().eq(lit("a")).is_false(), true),
        (x().eq(lit("a")).is_unknown(), true),
        (x().eq(lit("a")).is_not_true(), true),
        (x().eq(lit("a")).is_not_false(), true),
        (x().eq(lit("a")).is_not_unknown(), true),
        (Expr::Negative(Box::new(col("days"))), true),
        (col("days").between(lit(1), lit(2)), true),
        (when(x().eq(lit("a")), lit(1)).otherwise(lit(0)).expect("case"), true),
        (cast(col("days"), datafusion::arrow::datatypes::DataType::Float64), true),
        (try_cast(col("days"), datafusion::arrow::datatypes::DataType::Float64), true),
        (upper.call(vec![x()]), true),
        (count(x()), false),
        (row_number(), false),
        (x().in_list(vec![lit("a")], false), true),
        (Expr::Exists(Exists::new(sub(), false)), false),
        (Expr::InSubquery(InSubquery::new(Box::new(x()), sub(), false)), false),
        (
            Expr::SetComparison(SetComparison::new(Box::new(x()), sub(), Operator::Eq, SetQuantifier::Any)),
            false,
        ),
        (Expr::ScalarSubquery(sub()), false),
        (Expr::Wildcard { qualifier: None, options: Box::new(WildcardOptions::default()) }, false),
        (Expr::GroupingSet(GroupingSet::Rollup(vec![x()])), false),
        (Expr::Placeholder(Placeholder::new("$1".into(), None)), false),
        (Expr::OuterReferenceColumn(field.clone(), Column::new_unqualified("region")), false),
        (Expr::Unnest(Unnest::new(x())), false),
        (Expr::Lambda(Lambda::new(vec!["v".into()], lit(1))), false),
        (Expr::LambdaVariable(LambdaVariable::new("v".into(), Some(field))), false),
        // HigherOrderFunction needs a higher-order UDF, which this build has none of: the
        // exhaustive matches (here and in chain::kind) decide it at compile time.
    ]
}

#[test]
fn every_kind_of_expression_is_decided_once_for_both_sides() {
    let mut seen = std::collections::BTreeSet::new();
    for (e, travels) in samples() {
        let name = variant(&e);
        seen.insert(name);
        match (kind(&e), travels) {
            (Kind::Scalar, true) => assert_eq!(refused_in(&e), None, "{name}"),
            (Kind::Refused(why), false) => {
                assert_eq!(refused_in(&e), Some(why), "{name}");
                // Nested anywhere, it keeps the whole expression on the requester's side.
                let nested = when(e.clone().is_null(), lit(1)).otherwise(lit(0)).expect("case");
                assert_eq!(refused_in(&nested), Some(why), "{name} nested");
            }
            (k, _) => {
                panic!("{name}: decided {k:?}, expected {}", if travels { "to travel" } else { "refused" })
            }
        }
    }
    assert_eq!(seen.len() + 1, VARIANTS, "every variant but HigherOrderFunction is sampled: {seen:?}");
}

#[test]
fn what_the_split_keeps_home_the_owner_refuses_and_what_it_sends_the_owner_takes() {
    // Through the real entry points: a sub-query with a subquery in WHERE is refused by the
    // owner with the walker's words, and the split never sends one.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let table = crate::common::mem(&[(Some("a".into()), Some(1), Some(1), Some(1.0))]);
        for sql in [
            "SELECT count(1) AS p0 FROM data WHERE k IN (SELECT k FROM data)",
            "SELECT count(1) AS p0 FROM data WHERE EXISTS (SELECT 1)",
            "SELECT k AS g0, count(1) AS p0 FROM data WHERE x > (SELECT 1) GROUP BY k",
        ] {
            let e = concord_query::owner::parse_subquery("data", table.clone(), sql).await.expect_err(sql);
            let text = e.to_string();
            assert!(text.contains("subquery") || text.contains("not accepted"), "{sql}: {text}");
        }
        let (ctx, _, _) = crate::common::federation(&[vec![(Some("a".into()), Some(1), Some(1), Some(1.0))]]);
        let (_, planned) = concord_query::federate::plan_subqueries(
            &ctx,
            "SELECT k, count(*) FROM t WHERE upper(k) = 'A' AND x BETWEEN 1 AND 2 AND k IS NOT NULL GROUP BY k",
        )
        .await
        .expect("splits");
        for p in planned {
            concord_query::owner::parse_subquery("data", table.clone(), &p.sql).await.expect(&p.sql);
        }
    });
}
