//! `concord dataset add --postgres`: a member's table in PostgreSQL (Debian's server, started by
//! the test in a temporary folder as an unprivileged user), registered with its password in an
//! environment variable, shown and listed without it, and queried by the member's own analyst
//! through a running node that reads the same variable.

use std::process::Command;

use super::{concord_env, fails, free_port, ok, query_when_up, solo_member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_in_postgresql_is_registered_shown_and_queried_with_its_password_from_the_environment() {
    if concord_lab::postgres::server_bin().is_err() && std::env::var_os("CONCORD_TEST_POSTGRES").is_none() {
        eprintln!("skipped: PostgreSQL's server is not installed (apt-get install postgresql)");
        return;
    }
    let pg_dir = tempfile::tempdir().expect("tmp");
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let pg = concord_lab::postgres::PgServer::start(pg_dir.path(), free_port()).expect("PostgreSQL starts");
    let secret = "Env-Secret-77b1";
    pg.execute("postgres", &format!("CREATE ROLE analyst_ro LOGIN PASSWORD '{secret}'")).await.expect("role");
    pg.execute(
        "postgres",
        "CREATE TABLE stays (region varchar(20), days smallint, cost numeric(8,2), admitted date); \
         INSERT INTO stays SELECT CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END, g % 5, g * 1.25, \
           DATE '2026-01-01' + g FROM generate_series(1, 40) AS g; \
         GRANT SELECT ON stays TO analyst_ro;",
    )
    .await
    .expect("table");
    let local = solo_member(d);
    let url = pg.url("analyst_ro", "postgres");
    let env = [("STAYS_PG_PASSWORD", secret)];
    let add = |extra: &[&str]| {
        let mut args = vec!["dataset", "add", "alpha", "stays", "--postgres", &url, "--table", "stays"];
        args.extend_from_slice(extra);
        concord_env(&args, d, &env, "")
    };
    // No password: PostgreSQL refuses, and says so.
    let o = add(&[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("PostgreSQL at analyst_ro@127.0.0.1") && err.contains("cannot connect"), "{err}");
    let err = fails(&["dataset", "add", "alpha", "x", "--postgres", &url], d);
    assert!(err.contains("--table"), "{err}");
    let err = fails(&["dataset", "add", "alpha", "x", "--table", "stays", "--file", "a.csv"], d);
    assert!(err.contains("--postgres"), "{err}");
    let o = add(&["--password-env", "STAYS_PG_PASSWORD", "--allow", "*"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(
            "registered dataset stays (postgres, 40 rows) at table public.stays in postgresql://analyst_ro@"
        ),
        "{out}"
    );
    let shown = ok(&["dataset", "show", "alpha", "stays"], d);
    assert!(
        shown.contains("cost DECIMAL(8,2)")
            && shown.contains("admitted DATE")
            && shown.contains("days SMALLINT"),
        "{shown}"
    );
    let listed = ok(&["dataset", "list", "alpha", "--format", "json"], d);
    assert!(listed.contains("\"format\": \"postgres\"") && listed.contains("STAYS_PG_PASSWORD"), "{listed}");
    assert!(!listed.contains(secret) && !shown.contains(secret));

    // The node reads the password from its own environment.
    let token = ok(&["token", "create", "alpha", "--role", "analyst"], d).trim().to_owned();
    let log = std::fs::File::create(d.join("alpha.log")).expect("log");
    let mut node = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["node", "run", "alpha"])
        .current_dir(d)
        .env("STAYS_PG_PASSWORD", secret)
        .env("CONCORD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("node starts");
    let node_url = format!("http://127.0.0.1:{local}");
    let sql = "SELECT region, count(*) AS n, sum(cost) AS spent, max(admitted) AS last FROM local.stays \
               WHERE days > 0 GROUP BY region ORDER BY region";
    let csv = query_when_up(&node_url, &token, sql, d);
    assert_eq!(csv, "region,n,spent,last\nnorth,16,400.00,2026-02-08\nsouth,16,400.00,2026-02-09\n");
    let rows = query_when_up(
        &node_url,
        &token,
        "SELECT region, days FROM local.stays WHERE cost < 3 ORDER BY cost",
        d,
    );
    assert_eq!(
        rows, "region,days\nsouth,1\nnorth,2\n",
        "the member's own rows, read through the table's scan"
    );
    // A literal whose backslash-quote would end PostgreSQL's plain string and go on as SQL: it
    // reaches PostgreSQL as an escape string, and matches no row.
    let injected = "SELECT count(*) AS n FROM local.stays \
                    WHERE region = concat('x', chr(92), chr(39), ' OR 1=1 OR region <> ', chr(39))";
    let n = query_when_up(&node_url, &token, injected, d);
    assert_eq!(n, "n\n0\n", "the literal stayed a literal");
    let n =
        query_when_up(&node_url, &token, r"SELECT count(*) AS n FROM local.stays WHERE region <> 'a\b'", d);
    assert_eq!(n, "n\n40\n");
    let _ = Command::new("kill").args(["-TERM", &node.id().to_string()]).status();
    let _ = node.wait();
    let log = std::fs::read_to_string(d.join("alpha.log")).expect("log");
    assert!(!log.contains(secret), "{log}");
    drop(pg);
}
