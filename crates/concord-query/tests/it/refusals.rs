use concord_query::{QueryError, run_federated};

use crate::common::{Row, federation};

fn refused(sql: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let rows: Vec<Row> = vec![(Some("a".into()), Some(1), Some(2), Some(0.5)); 3];
        let (fed, owners, _) = federation(&[rows.clone(), rows, vec![]]);
        match run_federated(&fed, sql, &owners).await {
            Err(e @ (QueryError::Refused(_) | QueryError::Plan(_) | QueryError::Policy(_))) => e.to_string(),
            other => panic!("{sql} must be refused, got {other:?}"),
        }
    })
}

#[test]
fn raw_rows_are_refused_by_the_owners_policy_with_what_works() {
    let msg = refused("SELECT * FROM t");
    assert!(msg.contains("cannot be output as a row value") && msg.contains("What works"), "{msg}");
    let msg = refused("SELECT k FROM t WHERE x > 1 LIMIT 5");
    assert!(msg.contains("column k is group"), "{msg}");
}

#[test]
fn count_distinct_across_members_is_refused() {
    let msg = refused("SELECT count(DISTINCT k) FROM t");
    assert!(msg.contains("COUNT(DISTINCT") && msg.contains("member.dataset"), "{msg}");
}

#[test]
fn joins_and_windows_over_rows_need_the_rows() {
    // Both need rows; the permissive default policy releases none.
    let msg = refused("SELECT a.k, b.x FROM t a JOIN m0_data b ON a.k = b.k");
    assert!(msg.contains("cannot be output as a row value"), "{msg}");
    let msg = refused("SELECT k, row_number() OVER (ORDER BY x) FROM t");
    assert!(msg.contains("cannot be output as a row value"), "{msg}");
}

#[test]
fn unmergeable_aggregates_are_refused() {
    let msg = refused("SELECT median(x) FROM t");
    assert!(
        msg.contains("median() over t cannot be merged") && msg.contains("supported aggregates"),
        "{msg}"
    );
}

#[test]
fn unknown_columns_and_malformed_sql_name_the_problem() {
    let msg = refused("SELECT nope FROM t");
    assert!(msg.contains("nope"), "{msg}");
    let msg = refused("SELEC count(*) FROM t");
    assert!(msg.to_lowercase().contains("selec"), "{msg}");
    let msg = refused("SELECT count(*) FROM no_such_table");
    assert!(msg.contains("no_such_table"), "{msg}");
    let msg = refused("CREATE TABLE z AS SELECT 1");
    assert!(msg.contains("only queries"), "{msg}");
}
