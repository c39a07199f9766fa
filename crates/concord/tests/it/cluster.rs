//! `concord dataset add --ballista`: Parquet files on a member's Apache DataFusion Ballista
//! cluster (a scheduler and two executors started by the test on 127.0.0.1), registered, shown
//! and listed, and queried by the member's own analyst through a running node: aggregates run on
//! the cluster, and row reads go through its scan.

use super::{Node, fails, ok, query_when_up, solo_member};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parquet_files_on_a_ballista_cluster_are_registered_shown_and_queried() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let cluster = concord_lab::ballista::Cluster::start(2, 2, 256 << 20).await.expect("the cluster starts");
    let files = d.join("stays");
    let rows = concord_lab::ballista::write_parts(
        "SELECT CASE WHEN value % 2 = 0 THEN 'north' ELSE 'south' END AS region, CAST(value % 5 AS SMALLINT) AS days, \
         CAST(value * 1.25 AS DECIMAL(8,2)) AS cost FROM generate_series(1, 40)",
        &files,
        2,
    )
    .await
    .expect("files");
    assert_eq!(rows, 40);
    let local = solo_member(d);
    let url = cluster.url();
    let table = files.to_str().expect("utf-8");
    // Bad addresses are named, with the form to use.
    let err =
        fails(&["dataset", "add", "alpha", "x", "--ballista", "http://127.0.0.1:50050", "--table", table], d);
    assert!(err.contains("does not start with df://") && err.contains("df://HOST:PORT"), "{err}");
    let err =
        fails(&["dataset", "add", "alpha", "x", "--ballista", "df://192.0.2.1:50050", "--table", table], d);
    assert!(err.contains("loopback"), "{err}");
    let err = fails(&["dataset", "add", "alpha", "x", "--ballista", &url], d);
    assert!(err.contains("--table"), "{err}");
    let err =
        fails(&["dataset", "add", "alpha", "x", "--ballista", &url, "--table", table, "--file", "a.csv"], d);
    assert!(err.contains("--file") && err.contains("--ballista"), "{err}");

    let out =
        ok(&["dataset", "add", "alpha", "stays", "--ballista", &url, "--table", table, "--allow", "*"], d);
    assert!(
        out.contains(&format!(
            "registered dataset stays (ballista, 40 rows) at Parquet {} on the Ballista cluster at {url}",
            std::fs::canonicalize(&files).expect("path").display()
        )),
        "{out}"
    );
    let shown = ok(&["dataset", "show", "alpha", "stays"], d);
    assert!(shown.contains("cost DECIMAL(8,2)") && shown.contains("days SMALLINT"), "{shown}");
    let listed = ok(&["dataset", "list", "alpha", "--format", "json"], d);
    assert!(listed.contains("\"format\": \"ballista\"") && listed.contains(&url), "{listed}");

    let token = ok(&["token", "create", "alpha", "--role", "analyst"], d).trim().to_owned();
    let node = Node::run("alpha", d);
    let node_url = format!("http://127.0.0.1:{local}");
    let sql = "SELECT region, count(*) AS n, sum(cost) AS spent, avg(days) AS mean FROM local.stays \
               WHERE days > 0 GROUP BY region ORDER BY region";
    let csv = query_when_up(&node_url, &token, sql, d);
    assert_eq!(csv, "region,n,spent,mean\nnorth,16,400.00,2.5\nsouth,16,400.00,2.5\n");
    let rows = query_when_up(
        &node_url,
        &token,
        "SELECT region, days FROM local.stays WHERE cost < 3 ORDER BY cost",
        d,
    );
    assert_eq!(
        rows, "region,days\nsouth,1\nnorth,2\n",
        "the member's own rows, read through the cluster's scan"
    );
    assert!(node.stop().success());
}
