//! Bounded execution: the allow-list of functions and the bounds on values, memory and groups.

use concord_query::QueryError;
use concord_query::limits::ExecLimits;
use concord_query::owner::run_subquery;

use crate::common::{Row, mem};

fn rows(n: usize) -> Vec<Row> {
    (0..n).map(|i| (Some(format!("key-{i}")), Some(i as i64 % 7), Some(i as i64), Some(0.5))).collect()
}

fn run(sql: &str, n: usize, limits: ExecLimits) -> Result<u64, QueryError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        run_subquery("data", mem(&rows(n)), sql, &crate::common::permissive(), &limits)
            .await
            .map(|a| a.groups_released)
    })
}

/// Plans `sql` over `data` in a plain context and checks it, as the requester does.
fn check(sql: &str) -> Result<(), QueryError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("data", mem(&rows(3))).expect("register");
        let plan = ctx.state().create_logical_plan(sql).await.map_err(QueryError::plan)?;
        concord_query::limits::check_plan(&plan)
    })
}

#[test]
fn functions_whose_size_the_sql_bounds_pass() {
    for sql in [
        "SELECT upper(k), length(k), substr(k, 1, 2), concat(k, '-', k) FROM data",
        "SELECT repeat(k, 3), lpad(k, 20, '*'), rpad(k, 4096), replace(k, 'key', 'KEY') FROM data",
        "SELECT regexp_replace(k, '[0-9]', 'n'), to_hex(x), round(y, 2), coalesce(k, 'none') FROM data",
        "SELECT date_trunc('month', now()), CASE WHEN x > 1 THEN k ELSE 'small' END FROM data",
        "WITH a AS (SELECT concat(k, k) r FROM data) SELECT concat(r, r) FROM a",
        "SELECT k, count(*), sum(x), string_agg(k, ',') FROM data GROUP BY k HAVING count(*) > 0 ORDER BY k",
        "SELECT k, rank() OVER (ORDER BY x) FROM data",
    ] {
        check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[test]
fn functions_whose_size_the_caller_picks_are_refused_naming_why() {
    for (sql, says) in [
        ("SELECT repeat(k, 1000000000000) FROM data", "at most 16"),
        ("SELECT repeat(k, x) FROM data", "repeat(text, n) needs n"),
        ("SELECT lpad(k, 5000) FROM data", "from 0 to 4096"),
        ("SELECT lpad(k, x) FROM data", "lpad(text, n)"),
        ("SELECT replace(k, 'k', repeat('y', 100)) FROM data", "replace"),
        ("SELECT replace(k, '', 'y') FROM data", "from (not empty)"),
        ("SELECT regexp_replace(k, 'a', '$0$0') FROM data", "without references"),
        ("SELECT concat(k, k, k, k, k, k, k, k, k, k, k, k, k, k, k, k, k) FROM data", "at most 16"),
        (
            "WITH a AS (SELECT concat(k, k, k, k) r FROM data), b AS (SELECT concat(r, r, r, r, r) r FROM a) \
             SELECT count(*) FROM b WHERE length(r) > 1",
            "at most 16",
        ),
        ("SELECT k FROM data UNION ALL SELECT repeat(k, 20) FROM data", "at most 16"),
        ("SELECT input_file_name() FROM data", "allow-list"),
        ("SELECT uuid() FROM data", "allow-list"),
        ("SELECT version()", "allow-list"),
        ("SELECT count(*) FROM data WHERE x IN (SELECT length(repeat(k, 100)) FROM data)", "at most 16"),
        // What a hostile review found.
        (
            "SELECT max(concat_ws(concat_ws(rpad(k, 4096, 'x'), '', '', '', '', ''), '', '', '', '', '')) FROM data",
            "16384 bytes",
        ),
        (
            "SELECT count(arrow_cast(arrow_cast(k, 'Binary'), 'FixedSizeBinary(2147483647)')) FROM data",
            "width",
        ),
        (
            "SELECT count(CAST(k AS INT)) FROM data WHERE arrow_cast(k, 'FixedSizeList(1000000, Int64)') IS NULL",
            "width",
        ),
        (
            "SELECT max(upper(translate(upper(translate(upper(k), 'FI', 'xy')), 'FI', 'xy'))) FROM data",
            "at most 16",
        ),
        ("SELECT to_char(now(), k) FROM data", "format written"),
        ("SELECT count(*) FROM data WHERE regexp_like(k, concat('a', k))", "pattern written"),
        ("SELECT repeat(string_agg(k, ','), 2) FROM data", "at most 16"),
        ("SELECT repeat((SELECT repeat((SELECT repeat(max(k), 8) FROM data), 8)), 8)", "at most 16"),
    ] {
        match check(sql) {
            Err(QueryError::Refused(why)) => assert!(why.contains(says), "{sql}: {why}"),
            other => panic!("{sql} must be refused, got {other:?}"),
        }
    }
    // A literal longer than the bound per value is refused where it would be copied per row.
    let long = "x".repeat(20_000);
    let err = check(&format!("SELECT concat(k, '{long}') FROM data")).expect_err("too long");
    assert!(err.to_string().contains("16384 bytes"), "{err}");
    let err = check(&format!("SELECT '{long}' AS a, k FROM data")).expect_err("a projected literal");
    assert!(err.to_string().contains("16384 bytes per value"), "{err}");
    // Many values of one row, each within the bound, are counted together.
    let many: Vec<String> = (0..20).map(|i| format!("max(rpad(k, {}, 'x')) AS m{i}", 4000 - i)).collect();
    let err = check(&format!("SELECT {} FROM data", many.join(", "))).expect_err("a wide row");
    assert!(err.to_string().contains("per row"), "{err}");
}

#[test]
fn a_result_over_its_row_limit_is_refused_naming_it() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("data", mem(&rows(50))).expect("register");
        let owners =
            crate::common::LocalOwners { tables: Default::default(), rules: crate::common::permissive() };
        let err = concord_query::run_federated_with(&ctx, "SELECT k FROM data", &owners, false, 10)
            .await
            .expect_err("50 rows");
        assert!(matches!(&err, QueryError::Limit(why) if why.contains("more than 10 rows")), "{err}");
        let out = concord_query::run_federated_with(&ctx, "SELECT k FROM data LIMIT 10", &owners, false, 10)
            .await
            .expect("10 rows");
        assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    });
}

#[test]
fn an_owner_releases_at_most_its_group_limit() {
    let limits = ExecLimits { max_groups: 10, ..ExecLimits::default() };
    assert_eq!(
        run("SELECT g2 AS g0, count(1) AS p0 FROM data GROUP BY g2", 100, limits).expect("7 groups"),
        7
    );
    match run("SELECT k AS g0, count(1) AS p0 FROM data GROUP BY k", 100, limits) {
        Err(QueryError::Limit(why)) => assert!(why.contains("more than 10 groups"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_query_over_its_memory_is_refused_naming_the_limit() {
    let limits = ExecLimits { memory_bytes: 64 * 1024, ..ExecLimits::default() };
    match run("SELECT k AS g0, count(1) AS p0 FROM data GROUP BY k", 200_000, limits) {
        Err(QueryError::Limit(why)) => assert!(why.contains("more memory"), "{why}"),
        other => panic!("{other:?}"),
    }
    let plenty = ExecLimits { memory_bytes: 512 * 1024 * 1024, max_groups: 1_000_000 };
    assert_eq!(
        run("SELECT k AS g0, count(1) AS p0 FROM data GROUP BY k", 200_000, plenty).expect("fits"),
        200_000
    );
}
