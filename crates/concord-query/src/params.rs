//! Placeholders of a prepared statement: `$1`, `$2`, ... or `?` (numbered here in order), checked
//! so that the statement takes exactly `1..=k` parameters with no gaps, at most
//! [`MAX_PARAMS`]. Values are bound to them in the planned statement
//! ([`crate::federate::run_federated_bound`]), never into its text.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value, ValueWithSpan, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::QueryError;

/// The most parameters one statement takes.
pub const MAX_PARAMS: usize = 1000;

/// The statement with every `?` numbered in order (`$1`, `$2`, ...), so that DataFusion plans
/// each as a parameter of its own, and how many parameters it takes. A statement without `?`
/// is returned as it was written. Mixing `?` with `$N`, a gap in the numbers (`$1`, `$3`) and
/// more than [`MAX_PARAMS`] are refused.
pub fn numbered(sql: &str) -> Result<(String, usize), QueryError> {
    crate::owner::check_size(sql).map_err(|e| match e {
        QueryError::SubqueryRefused(why) => {
            QueryError::Refused(why.replacen("the sub-query", "the statement", 1))
        }
        other => other,
    })?;
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| QueryError::Plan(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::Plan(format!(
            "a prepared statement is one statement; this text holds {}",
            statements.len()
        )));
    }
    let mut marks = 0usize;
    let mut numbers: Vec<usize> = Vec::new();
    let mut failure: Option<QueryError> = None;
    let _ = visit_expressions_mut(&mut statements, |expr| {
        let SqlExpr::Value(ValueWithSpan { value: Value::Placeholder(name), .. }) = expr else {
            return ControlFlow::Continue(());
        };
        if name == "?" {
            marks += 1;
            *name = format!("${marks}");
            return ControlFlow::Continue(());
        }
        match name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=MAX_PARAMS).contains(n))
        {
            Some(n) => {
                numbers.push(n);
                ControlFlow::Continue(())
            }
            None => {
                failure = Some(QueryError::Plan(format!(
                    "placeholder {name} is not $1 to ${MAX_PARAMS} or ?; name parameters by position"
                )));
                ControlFlow::Break(())
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    count_of(marks, &numbers).map(|count| {
        let text = if marks > 0 { statements[0].to_string() } else { sql.to_owned() };
        (text, count)
    })
}

/// How many parameters the placeholders make: `marks` question marks, or `$N` numbers that
/// cover `1..=k` without a gap.
fn count_of(marks: usize, numbers: &[usize]) -> Result<usize, QueryError> {
    if marks > 0 && !numbers.is_empty() {
        return Err(QueryError::Plan("write placeholders as ? or as $1, $2, ..., not both".into()));
    }
    if marks > MAX_PARAMS {
        return Err(QueryError::Plan(format!(
            "{marks} placeholders; a statement takes at most {MAX_PARAMS}"
        )));
    }
    let count = numbers.iter().copied().max().unwrap_or(marks);
    if let Some(gap) = (1..=count).find(|n| marks == 0 && !numbers.contains(n)) {
        return Err(QueryError::Plan(format!(
            "placeholder ${gap} is missing while ${count} is there; number parameters from $1 without gaps"
        )));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_in_order_and_dollars_kept() {
        assert_eq!(numbered("SELECT ? + ?, '?'").expect("numbers"), ("SELECT $1 + $2, '?'".to_owned(), 2));
        assert_eq!(numbered("SELECT $2, -$1").expect("numbers"), ("SELECT $2, -$1".to_owned(), 2));
        assert_eq!(numbered("SELECT 1 -- $7").expect("numbers"), ("SELECT 1 -- $7".to_owned(), 0));
        assert_eq!(numbered("SELECT 1").expect("numbers"), ("SELECT 1".to_owned(), 0));
    }

    #[test]
    fn gaps_mixing_huge_numbers_and_two_statements_are_refused() {
        let e = numbered("SELECT $1, $3").expect_err("a gap");
        assert!(e.to_string().contains("$2 is missing"), "{e}");
        let e = numbered("SELECT $1, ?").expect_err("mixed");
        assert!(e.to_string().contains("not both"), "{e}");
        for huge in ["SELECT $1000000000", "SELECT $18446744073709551615", "SELECT $99999999999999999999999"]
        {
            let e = numbered(huge).expect_err("huge");
            assert!(e.to_string().contains("$1 to $1000"), "{huge}: {e}");
        }
        let e = numbered("SELECT $0").expect_err("$0");
        assert!(e.to_string().contains("$0"), "{e}");
        let e = numbered("SELECT 1; SELECT $1").expect_err("two statements");
        assert!(e.to_string().contains("holds 2"), "{e}");
        let many = format!("SELECT {}", vec!["?"; MAX_PARAMS + 1].join(", "));
        assert!(numbered(&many).is_err());
    }
}
