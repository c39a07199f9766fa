//! Parameters of a prepared statement bound into its SQL: each placeholder (`$1`, `$2`, ... or
//! `?` in order) replaced in the parsed statement by a literal of the value's own type, written
//! by DataFusion's unparser. The result is SQL text that runs through the same checks as any
//! other query.
//!
//! Invariant: values are bound into the syntax tree, never pasted into the text: a string value
//! is always one string literal, whatever quotes or SQL it holds.

use std::ops::ControlFlow;

use datafusion::logical_expr::Expr;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value, ValueWithSpan, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::QueryError;

/// Binds `values` to the placeholders of `sql`: `$N` takes the N-th value, each `?` the next
/// one. Every value must be used and every placeholder bound; one statement only.
pub fn bind(sql: &str, values: &[ScalarValue]) -> Result<String, QueryError> {
    let mut used = vec![false; values.len()];
    let bound = rewrite(sql, |index| {
        let lit = literal(values, index)?;
        used[index] = true;
        Ok(lit)
    })?;
    if let Some(unused) = used.iter().position(|u| !u) {
        return Err(QueryError::Plan(format!(
            "{} parameters were bound but the statement has no placeholder ${}; bind as many values as it has placeholders",
            values.len(),
            unused + 1
        )));
    }
    Ok(bound.0)
}

/// The statement with every `?` numbered in order (`$1`, `$2`, ...), so that DataFusion plans
/// each as a parameter of its own, and how many parameters it has.
pub fn numbered(sql: &str) -> Result<(String, usize), QueryError> {
    let (text, count) =
        rewrite(sql, |index| Ok(SqlExpr::Value(Value::Placeholder(format!("${}", index + 1)).into())))?;
    Ok((text, count))
}

/// Parses one statement and replaces each placeholder by `replace(its 0-based index)`; returns
/// the new text and the number of parameters (the highest index plus one).
fn rewrite(
    sql: &str,
    mut replace: impl FnMut(usize) -> Result<SqlExpr, QueryError>,
) -> Result<(String, usize), QueryError> {
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| QueryError::Plan(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::Plan(format!(
            "a prepared statement is one statement; this text holds {}",
            statements.len()
        )));
    }
    let mut next = 0usize;
    let mut count = 0usize;
    let mut failure: Option<QueryError> = None;
    let _ = visit_expressions_mut(&mut statements, |expr| {
        let SqlExpr::Value(ValueWithSpan { value: Value::Placeholder(name), .. }) = expr else {
            return ControlFlow::Continue(());
        };
        match placeholder_index(name, &mut next).and_then(|i| replace(i).map(|e| (i, e))) {
            Ok((index, new)) => {
                count = count.max(index + 1);
                *expr = new;
                ControlFlow::Continue(())
            }
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok((statements[0].to_string(), count)),
    }
}

/// The 0-based index a placeholder names: `$N` is N - 1; `?` is the next in order.
fn placeholder_index(name: &str, next: &mut usize) -> Result<usize, QueryError> {
    if name == "?" {
        *next += 1;
        return Ok(*next - 1);
    }
    name.strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .map(|n| n - 1)
        .ok_or_else(|| {
            QueryError::Plan(format!(
                "placeholder {name} is not $1, $2, ... or ?; name parameters by position"
            ))
        })
}

/// The SQL literal of value `index`, or an error naming the placeholder left without one.
fn literal(values: &[ScalarValue], index: usize) -> Result<SqlExpr, QueryError> {
    let value = values.get(index).ok_or_else(|| {
        QueryError::Plan(format!(
            "placeholder ${} has no value: {} were bound; bind one value per placeholder",
            index + 1,
            values.len()
        ))
    })?;
    datafusion::sql::unparser::expr_to_sql(&Expr::Literal(value.clone(), None))
        .map_err(|e| QueryError::Plan(format!("parameter ${} cannot be written as SQL: {e}", index + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ScalarValue {
        ScalarValue::Utf8(Some(v.to_owned()))
    }

    #[test]
    fn values_become_literals_of_their_type() {
        let sql = "SELECT region FROM cases WHERE days > $1 AND region = $2";
        let bound = bind(sql, &[ScalarValue::Int64(Some(3)), s("north")]).expect("binds");
        assert_eq!(bound, "SELECT region FROM cases WHERE days > 3 AND region = 'north'");
        let bound = bind("SELECT ? + ?", &[ScalarValue::Int32(Some(1)), ScalarValue::Float64(Some(2.5))])
            .expect("binds");
        assert_eq!(bound, "SELECT 1 + 2.5");
        let bound = bind("SELECT $1 IS NULL", &[ScalarValue::Int64(None)]).expect("binds");
        assert_eq!(bound, "SELECT NULL IS NULL");
        let date = ScalarValue::Date32(Some(19_000));
        assert!(bind("SELECT $1", &[date]).expect("binds").contains("2022-01-08"));
    }

    #[test]
    fn a_string_value_stays_one_literal_whatever_it_holds() {
        let hostile = "x' OR '1'='1'; DROP TABLE cases; --";
        let bound = bind("SELECT count(*) FROM cases WHERE region = $1", &[s(hostile)]).expect("binds");
        let again = Parser::parse_sql(&GenericDialect {}, &bound).expect("parses");
        assert_eq!(again.len(), 1, "{bound}");
        assert!(bound.ends_with("region = 'x'' OR ''1''=''1''; DROP TABLE cases; --'"), "{bound}");
        // A placeholder spelled inside a string literal is text, not a placeholder.
        let bound = bind("SELECT '$1', $1", &[s("v")]).expect("binds");
        assert_eq!(bound, "SELECT '$1', 'v'");
    }

    #[test]
    fn counts_and_names_must_agree() {
        let e = bind("SELECT $1, $2", &[s("a")]).expect_err("one short");
        assert!(e.to_string().contains("$2 has no value"), "{e}");
        let e = bind("SELECT $1", &[s("a"), s("b")]).expect_err("one too many");
        assert!(e.to_string().contains("no placeholder $2"), "{e}");
        let e = bind("SELECT $0", &[s("a")]).expect_err("$0");
        assert!(e.to_string().contains("$0"), "{e}");
        let e = bind("SELECT 1; SELECT $1", &[s("a")]).expect_err("two statements");
        assert!(e.to_string().contains("holds 2"), "{e}");
        assert_eq!(bind("SELECT 1", &[]).expect("nothing to bind"), "SELECT 1");
    }

    #[test]
    fn question_marks_are_numbered_in_order() {
        assert_eq!(numbered("SELECT ? + ?, '?'").expect("numbers"), ("SELECT $1 + $2, '?'".to_owned(), 2));
        assert_eq!(numbered("SELECT $2, $1").expect("numbers"), ("SELECT $2, $1".to_owned(), 2));
        assert_eq!(numbered("SELECT 1").expect("numbers"), ("SELECT 1".to_owned(), 0));
    }
}
