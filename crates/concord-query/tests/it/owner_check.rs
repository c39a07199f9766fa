use concord_query::QueryError;
use concord_query::owner::run_subquery;

use crate::common::{Row, mem};

fn check(sql: &str) -> Result<u64, QueryError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let rows: Vec<Row> = vec![(Some("a".into()), Some(1), Some(2), Some(0.5)); 4];
        run_subquery("data", mem(&rows), sql, &crate::common::permissive(), &Default::default())
            .await
            .map(|a| a.groups_released)
    })
}

#[test]
fn partial_aggregates_pass() {
    assert_eq!(
        check("SELECT k AS g0, count(1) AS p0, sum(x) AS p1 FROM data WHERE x > 0 GROUP BY k")
            .expect("passes"),
        1
    );
    assert_eq!(check("SELECT min(y) AS p0, max(k) AS p1 FROM data").expect("passes"), 1);
}

#[test]
fn everything_else_is_refused() {
    for sql in ["SELECT * FROM data", "SELECT k FROM data"] {
        match check(sql) {
            Err(QueryError::Policy(why)) => assert!(why.contains("cannot be output as a row value"), "{why}"),
            other => panic!("{sql}: rows of group columns are refused by the policy, got {other:?}"),
        }
    }
    for sql in [
        "SELECT k AS g0, count(1) AS p0 FROM data GROUP BY k HAVING count(1) > 1",
        "SELECT k AS g0, count(1) AS p0 FROM data GROUP BY k ORDER BY k",
        "SELECT count(1) AS p0 FROM data LIMIT 1",
        "SELECT avg(x) AS p0 FROM data",
        "SELECT array_agg(k) AS p0 FROM data",
        "SELECT count(1) AS p0 FROM data WHERE x IN (SELECT x FROM data)",
        "SELECT count(1) AS p0 FROM (SELECT * FROM data LIMIT 2)",
        "SELECT count(1) AS p0 FROM generate_series(1, 10)",
        "SELECT count(1) AS p0 FROM other",
        "DROP TABLE data",
        "SELECT count(1) AS p0 FROM data; SELECT * FROM data",
        "SELECT count(1) + 1 AS p0 FROM data",
    ] {
        match check(sql) {
            Err(QueryError::SubqueryRefused(_)) => {}
            other => panic!("{sql} must be refused by the owner's check, got {other:?}"),
        }
    }
}
