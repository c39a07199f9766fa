use concord_query::run_federated;
use proptest::prelude::*;

use crate::common::{Row, assert_same, cells, federation};

/// The family of queries: every supported aggregate, WHERE, GROUP BY on keys and expressions,
/// HAVING, ORDER BY, LIMIT, CTEs and subqueries over the merged result.
const QUERIES: &[&str] = &[
    // A negated negative literal in a filter: `--1` would start a comment in the owner's SQL.
    "SELECT k, count(*) FROM t WHERE x > -(-1) AND y IS NOT NULL GROUP BY k ORDER BY k NULLS FIRST",
    "SELECT count(*), count(x), sum(x), min(x), max(x), avg(x), sum(y), avg(y), min(y), max(y), min(k), max(k) FROM t",
    "SELECT k, count(*), sum(x), avg(y) FROM t GROUP BY k ORDER BY k NULLS FIRST",
    "SELECT k, g2, min(y), max(x), count(y) FROM t WHERE x > 3 GROUP BY k, g2 ORDER BY k NULLS FIRST, g2 NULLS FIRST",
    "SELECT k, count(*) AS n FROM t GROUP BY k HAVING count(*) > 2 ORDER BY n DESC, k NULLS FIRST LIMIT 3",
    "WITH s AS (SELECT k, sum(x) AS sx FROM t GROUP BY k) SELECT max(sx), count(*) FROM s",
    "SELECT upper(k) AS uk, count(*), avg(x) FROM t WHERE y IS NOT NULL AND k <> 'b' GROUP BY upper(k) ORDER BY uk NULLS FIRST",
    "SELECT g2 % 3 AS bucket, sum(y) * 2 AS twice, avg(x + 1) FROM t GROUP BY g2 % 3 ORDER BY bucket NULLS FIRST",
    "SELECT k, count(*) FILTER (WHERE x > 5) AS big, avg(y) FILTER (WHERE x > 5) AS ybig FROM t GROUP BY k ORDER BY k NULLS FIRST",
    "SELECT s.k, s.n FROM (SELECT k, count(*) AS n FROM t sub WHERE sub.g2 IS NOT NULL GROUP BY k) s WHERE s.n > 1 ORDER BY s.k NULLS FIRST",
    "SELECT count(*) AS n, max(y) FROM t WHERE k IN ('a', 'c') OR x BETWEEN 1 AND 4",
    "SELECT count(DISTINCT x), count(*) FROM m0_data",
    "SELECT DISTINCT k FROM t ORDER BY k NULLS FIRST",
    "SELECT count(*) AS combinations FROM (SELECT DISTINCT k, g2 FROM t WHERE x IS NOT NULL)",
];

fn row() -> impl Strategy<Value = Row> {
    (
        // Skewed keys: 'a' most often, some nulls.
        prop_oneof![6 => Just(Some("a".to_string())), 2 => Just(Some("b".to_string())), 1 => Just(Some("c".to_string())), 1 => Just(None)],
        prop::option::weighted(0.9, 0i64..6),
        prop::option::weighted(0.85, -20i64..50),
        prop::option::weighted(0.85, -1e6f64..1e6),
    )
}

fn splits() -> impl Strategy<Value = Vec<Vec<Row>>> {
    (prop::collection::vec((row(), 0usize..3), 0..120)).prop_map(|rows| {
        let mut s = vec![Vec::new(), Vec::new(), Vec::new()];
        for (r, m) in rows {
            s[m].push(r);
        }
        s
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn federated_equals_pooled(splits in splits()) {
        runtime().block_on(async {
            let (fed, owners, pooled) = federation(&splits);
            for sql in QUERIES {
                let f = run_federated(&fed, sql, &owners).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                let p = pooled.sql(sql).await.expect("pooled plan").collect().await.expect("pooled run");
                assert_same(sql, &f.batches, &p);
                assert_eq!(f.schema.fields().len(), p.first().map(|b| b.num_columns()).unwrap_or(f.schema.fields().len()));
            }
        });
    }
}

/// Queries that need rows, where every owner's policy releases them.
const ROW_QUERIES: &[&str] = &[
    "SELECT k, x FROM t WHERE x > 0 ORDER BY k, x",
    "SELECT * FROM m0_data ORDER BY k, g2, x, y",
    "SELECT a.k, b.x FROM t a JOIN m0_data b ON a.k = b.k ORDER BY a.k, b.x",
    "SELECT k, x, row_number() OVER (PARTITION BY k ORDER BY x, y) AS r FROM t ORDER BY k, x, r",
    "SELECT upper(k) AS u, x * 2 AS d FROM t WHERE y IS NOT NULL ORDER BY u, d",
    "SELECT a.k, sum(b.y) AS s, count(*) AS n FROM t a, m0_data b WHERE a.k = b.k AND a.x > 1 AND b.g2 <> 2 GROUP BY a.k ORDER BY a.k",
];

#[test]
fn a_join_sends_each_owner_only_its_own_filters_and_the_columns_used() {
    runtime().block_on(async {
        let (fed, _, _) = federation(&[vec![], vec![]]);
        let (_, planned) =
            concord_query::federate::plan_subqueries(&fed, ROW_QUERIES[5]).await.expect("splits");
        let sent: Vec<(String, String)> =
            planned.iter().map(|p| (p.part.owner.clone(), p.sql.clone())).collect();
        let of = |table: &str| -> Vec<&str> {
            sent.iter()
                .filter(|(_, sql)| sql.contains(&format!("FROM {table}")))
                .map(|(_, s)| s.as_str())
                .collect()
        };
        // Three parts: t at m0 and m1, m0_data at m0; each reads `data` at its owner.
        assert_eq!(sent.len(), 3, "{sent:#?}");
        for sql in of("data") {
            assert!(!sql.contains('*'), "{sql}");
            // Each read carries its own table's predicate and no column the query does not use.
            let own_t =
                sql.contains("x > 1") && sql.contains("k") && !sql.contains("y") && !sql.contains("g2");
            let own_m0 = sql.contains("g2 <> 2") && sql.contains("y") && !sql.contains("x >");
            assert!(own_t ^ own_m0, "{sql}");
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, .. ProptestConfig::default() })]

    #[test]
    fn released_rows_equal_pooled_rows(splits in splits()) {
        runtime().block_on(async {
            let (fed, mut owners, pooled) = federation(&splits);
            owners.rules = crate::common::open_data();
            for sql in ROW_QUERIES {
                let f = run_federated(&fed, sql, &owners).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                let p = pooled.sql(sql).await.expect("pooled plan").collect().await.expect("pooled run");
                assert_same(sql, &f.batches, &p);
            }
        });
    }
}

#[test]
fn empty_members_and_provenance() {
    runtime().block_on(async {
        let rows: Vec<Row> = vec![(Some("a".into()), Some(1), Some(2), Some(0.5)); 5];
        let (fed, owners, _) = federation(&[rows, vec![], vec![]]);
        let out = run_federated(&fed, "SELECT count(*) FROM t", &owners).await.expect("runs");
        assert_eq!(cells(&out.batches), vec![vec![crate::common::Cell::Text("5".into())]]);
        // Rows scanned are read from file scans' metrics; see the node's scenario tests.
        let members: Vec<_> = out.provenance.iter().map(|c| (c.member.as_str(), c.groups_released)).collect();
        assert_eq!(members, vec![("m0", 1), ("m1", 1), ("m2", 1)]);
    });
}

#[test]
fn an_unreachable_owner_fails_the_query_unless_a_partial_result_is_asked_for() {
    runtime().block_on(async {
        let rows: Vec<Row> = vec![(Some("a".into()), Some(1), Some(2), Some(0.5)); 4];
        let (fed, mut owners, _) = federation(&[rows.clone(), rows, vec![(None, None, None, None)]]);
        owners.tables.remove("m2");
        let err = run_federated(&fed, "SELECT count(*) FROM t", &owners).await.expect_err("m2 is down");
        assert!(
            matches!(&err, concord_query::QueryError::Unreachable { member, .. } if member == "m2"),
            "{err}"
        );
        let out = concord_query::run_federated_with(&fed, "SELECT count(*) FROM t", &owners, true, 1000)
            .await
            .expect("partial");
        assert_eq!(cells(&out.batches), vec![vec![crate::common::Cell::Text("8".into())]]);
        assert_eq!(out.missing, ["m2"]);
    });
}
