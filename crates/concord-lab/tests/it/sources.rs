//! Datasets in a member's own engine: alpha's rows in PostgreSQL (Debian's server, started by
//! the test as an unprivileged user in a temporary folder), bravo's on an Apache DataFusion
//! Ballista cluster (a scheduler and two executors started by the test on 127.0.0.1, over
//! Parquet files split between them) and charlie's in Parquet. A federated query equals the
//! pooled answer, exact decimals and NULL groups included; alpha's checked plan runs inside
//! PostgreSQL and bravo's on the cluster; policy refusals and noise behave as for a file; the
//! database password stays out of every file the node keeps.
//!
//! Without PostgreSQL's server installed the PostgreSQL tests fail where
//! `CONCORD_TEST_POSTGRES=1` is set (`.ci/run` installs it and sets it), and are reported as
//! skipped elsewhere. The cluster needs nothing installed.

use std::path::{Path, PathBuf};

use concord_charter::{ColumnType, SchemaColumn, SharedSchema};
use concord_lab::demo::{DemoMember, MemberSpec, api_query, pooled_context, setup, start_all};
use concord_lab::postgres::PgServer;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;
use concord_query::compare::{Cell, cells, compare};
use concord_source::ballista::BallistaSource;
use concord_source::postgres::{Credential, PostgresSource};

use crate::support::{Fed, free_ports, set_limits};

const READER_PASSWORD: &str = "reader-Secret-4e1f9a";

/// The PostgreSQL server, or `None` (with a note) where it is not installed and not required.
fn postgres(folder: &tempfile::TempDir) -> Option<PgServer> {
    if concord_lab::postgres::server_bin().is_err() && std::env::var_os("CONCORD_TEST_POSTGRES").is_none() {
        eprintln!("skipped: PostgreSQL's server is not installed (apt-get install postgresql)");
        return None;
    }
    Some(PgServer::start(folder.path(), free_ports(1)).expect("PostgreSQL starts"))
}

fn cases_schema() -> SharedSchema {
    SharedSchema {
        name: "cases".into(),
        version: 1,
        columns: vec![
            SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
            SchemaColumn { name: "days".into(), ty: ColumnType::Int64, personal: false },
            SchemaColumn {
                name: "cost".into(),
                ty: ColumnType::Decimal128 { precision: 12, scale: 2 },
                personal: false,
            },
        ],
        privacy_unit: None,
    }
}

type Case = (Option<&'static str>, Option<i64>, Option<&'static str>);

/// Alpha's rows: three regions and a NULL one, each of at least five rows; NULL days and costs.
fn alpha_cases() -> Vec<Case> {
    let mut rows = Vec::new();
    let regions = [Some("North"), Some("South"), Some("Capital"), None];
    for i in 0..24i64 {
        let region = regions[(i % 4) as usize];
        let days = (i % 7 != 3).then_some(i % 9 + 1);
        let cost = [Some("12.34"), Some("0.01"), None, Some("99999.99"), Some("-5.50")][(i % 5) as usize];
        rows.push((region, days, cost));
    }
    rows
}

fn other_cases(seed: i64) -> Vec<Case> {
    (0..15)
        .map(|i: i64| {
            let region = [Some("North"), Some("East"), None][((i + seed) % 3) as usize];
            let cost = [Some("1.10"), Some("2.25"), Some("1000.00")][((i * seed) % 3) as usize];
            (region, Some((i * seed) % 11), cost)
        })
        .collect()
}

fn csv_of(rows: &[Case]) -> String {
    let mut s = String::from("region,days,cost\n");
    for (r, d, c) in rows {
        s.push_str(&format!(
            "{},{},{}\n",
            r.unwrap_or(""),
            d.map(|d| d.to_string()).unwrap_or_default(),
            c.unwrap_or("")
        ));
    }
    s
}

fn write_csv(folder: &Path, rows: &[Case]) -> PathBuf {
    std::fs::create_dir_all(folder).expect("folder");
    let p = folder.join("cases.csv");
    std::fs::write(&p, csv_of(rows)).expect("csv");
    p
}

/// `cases.parquet` with the shared types, from a CSV of the rows.
async fn write_parquet(folder: &Path, rows: &[Case]) -> PathBuf {
    let scratch = folder.join("scratch");
    let csv = write_csv(&scratch, rows);
    let table = concord_query::dataset::open(
        "cases",
        &csv,
        concord_query::dataset::DatasetFormat::Csv,
        Some(&cases_schema()),
        &Default::default(),
    )
    .await
    .expect("csv");
    let ctx = datafusion::prelude::SessionContext::new();
    let p = folder.join("cases.parquet");
    ctx.read_table(table)
        .expect("table")
        .write_parquet(
            p.to_str().expect("utf-8"),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .expect("parquet");
    std::fs::remove_dir_all(&scratch).expect("scratch");
    p
}

/// The rows as `parts` Parquet files in `folder/files` (the shared types), for a cluster's
/// executors to share out; returns that directory.
async fn write_parquet_parts(folder: &Path, rows: &[Case], parts: usize) -> PathBuf {
    let files = folder.join("files");
    std::fs::create_dir_all(&files).expect("folder");
    let chunk = rows.len().div_ceil(parts);
    for (i, part) in rows.chunks(chunk).enumerate() {
        let one = write_parquet(&folder.join(format!("part{i}")), part).await;
        std::fs::rename(&one, files.join(format!("part-{i}.parquet"))).expect("move");
    }
    files
}

/// A cluster of two executors on 127.0.0.1.
async fn cluster() -> concord_lab::ballista::Cluster {
    concord_lab::ballista::Cluster::start(2, 2, 256 << 20).await.expect("the cluster starts")
}

async fn register_on_cluster(
    m: &DemoMember,
    name: &str,
    cluster: &concord_lab::ballista::Cluster,
    files: &Path,
    schema: Option<&str>,
) -> admin::Registered {
    let spec = admin::DatasetSpec {
        name,
        file: files,
        shared_schema: schema,
        allow: Some("*"),
        csv: Default::default(),
        postgres: None,
        ballista: Some(BallistaSource { scheduler: cluster.url() }),
    };
    admin::dataset_register(&NodeDir::new(&m.dir), &spec, false).await.expect("registers on the cluster")
}

/// SQL literal of a row for PostgreSQL.
fn pg_values(rows: &[Case]) -> String {
    let q = |v: Option<String>| v.unwrap_or_else(|| "NULL".into());
    rows.iter()
        .map(|(r, d, c)| {
            format!(
                "({}, {}, {}, '{{\"x\": 1}}')",
                q(r.map(|r| format!("'{r}'"))),
                q(d.map(|d| d.to_string())),
                q(c.map(str::to_owned))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A 0600 file holding the reader's password.
fn password_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join("alpha-pg-password");
    std::fs::write(&p, format!("{READER_PASSWORD}\n")).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

fn pg_source(pg: &PgServer, table: &str, password: &Path) -> PostgresSource {
    PostgresSource {
        url: pg.url("reader", "stats"),
        table: table.into(),
        password: Some(Credential::File(password.to_owned())),
    }
}

async fn register(
    m: &DemoMember,
    name: &str,
    source: PostgresSource,
    schema: Option<&str>,
) -> admin::Registered {
    let spec = admin::DatasetSpec {
        name,
        file: Path::new(""),
        shared_schema: schema,
        allow: Some("*"),
        csv: Default::default(),
        postgres: Some(source),
        ballista: None,
    };
    admin::dataset_register(&NodeDir::new(&m.dir), &spec, false).await.expect("registers")
}

/// A role that may log in and read, and the database `stats`.
async fn reader_and_database(pg: &PgServer) {
    pg.execute("postgres", &format!("CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'"))
        .await
        .expect("role");
    pg.execute("postgres", "CREATE DATABASE stats").await.expect("database");
}

/// Alpha (PostgreSQL), bravo (a Ballista cluster), charlie (Parquet), and what the pooled data
/// would say.
struct Federation {
    fed: Fed,
    pooled: datafusion::prelude::SessionContext,
    _pg: PgServer,
}

async fn federation(dir: tempfile::TempDir, pg: PgServer) -> Federation {
    reader_and_database(&pg).await;
    pg.execute(
        "stats",
        &format!(
            "CREATE TABLE cases (region text, days integer, cost numeric(12,2), note jsonb); \
             INSERT INTO cases VALUES {}; GRANT SELECT ON cases TO reader;",
            pg_values(&alpha_cases())
        ),
    )
    .await
    .expect("table");
    let d = dir.path();
    let bravo = write_csv(&d.join("data/bravo"), &other_cases(2));
    let bravo_files = write_parquet_parts(&d.join("data/bravo-cluster"), &other_cases(2), 3).await;
    let charlie = write_parquet(&d.join("data/charlie"), &other_cases(5)).await;
    let spec = |id: &str, files: Vec<PathBuf>| MemberSpec {
        id: id.into(),
        name: format!("Member {id}"),
        jurisdiction: id.to_uppercase(),
        files,
    };
    let specs = vec![spec("alpha", vec![]), spec("bravo", vec![]), spec("charlie", vec![charlie.clone()])];
    let members = setup(d, "test", &specs, vec![cases_schema()], free_ports(9)).await.expect("setup");
    let password = password_file(d);
    let registered = register(&members[0], "cases", pg_source(&pg, "cases", &password), Some("cases")).await;
    assert_eq!(registered.record.rows, 24, "rows counted in PostgreSQL");
    assert_eq!(registered.record.format.as_str(), "postgres");
    assert!(
        registered.left_out.iter().any(|w| w.starts_with("note (jsonb)")),
        "a column no schema holds is named: {:?}",
        registered.left_out
    );
    let cluster = cluster().await;
    let on_cluster = register_on_cluster(&members[1], "cases", &cluster, &bravo_files, Some("cases")).await;
    assert_eq!(on_cluster.record.rows, 15, "rows counted by the cluster");
    assert_eq!(on_cluster.record.format.as_str(), "ballista");
    let with_pg = vec![
        spec("alpha", vec![write_csv(&d.join("data/alpha-pooled"), &alpha_cases())]),
        spec("bravo", vec![bravo]),
        specs[2].clone(),
    ];
    let pooled = pooled_context(&with_pg, &[cases_schema()]).await.expect("pooled");
    for m in &members {
        set_limits(&m.dir, |l| l.catalog_ttl_secs = 0);
    }
    let nodes = start_all(&members).await.expect("nodes start");
    Federation { fed: Fed { dir, members, nodes }, pooled, _pg: pg }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_whose_data_is_in_postgresql_and_on_a_cluster_answer_as_the_pooled_data_would() {
    // Declared first, so dropped last: the server stops before its folder goes.
    let pg_dir = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(pg) = postgres(&pg_dir) else { return };
    let f = federation(dir, pg).await;
    for asker in ["bravo", "alpha", "charlie"] {
        let m = f.fed.member(asker);
        for sql in [
            "SELECT region, count(*) AS n, sum(days) AS d, min(days) AS lo, max(days) AS hi, avg(days) AS mean, \
             sum(cost) AS spent, min(cost) AS cheapest, avg(cost) AS mean_cost FROM cases GROUP BY region ORDER BY region",
            "SELECT count(*) AS n, count(days) AS with_days, sum(cost) AS spent FROM cases WHERE days > 3 AND region LIKE '%th'",
            "SELECT region, count(*) FILTER (WHERE cost > 1) AS dear, max(cost) AS top FROM cases \
             WHERE cost IS NOT NULL GROUP BY region HAVING count(*) > 1 ORDER BY region NULLS FIRST",
            "SELECT count(*) AS n FROM alpha.cases WHERE region IS NULL",
        ] {
            let got = api_query(&m.local_url, &m.analyst_token, sql)
                .await
                .unwrap_or_else(|e| panic!("{asker}: {sql}: {e}"));
            let want = f.pooled.sql(sql).await.expect("plans").collect().await.expect("runs");
            if let Err(diff) = compare(&got.batches, &want) {
                panic!("{asker}: {sql}: {diff}");
            }
            for owner in ["alpha", "bravo"] {
                if sql.contains("alpha.") && owner == "bravo" {
                    continue;
                }
                assert!(
                    got.provenance.iter().any(|p| p.member == owner),
                    "{owner} answered: {:?}",
                    got.provenance
                );
            }
        }
    }
    // Exact decimals: a cent is a cent.
    let bravo = f.fed.member("bravo");
    let got = api_query(&bravo.local_url, &bravo.analyst_token, "SELECT sum(cost) AS s FROM alpha.cases")
        .await
        .expect("sum");
    assert_eq!(cells(&got.batches).expect("cells"), vec![vec![Cell::Text("500039.70".into())]]);
    f.fed.stop().await;
}

/// A policy with a minimum group size of five, for both of alpha's copies of the rows.
const SMALL_GROUPS_OUT: &str = r#"classification = "general"
[columns]
region = "group"
days = "group"
cost = "aggregate"
[release]
min_group_size = 5
[access]
rules = '''
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
'''
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_holds_in_postgresql_as_for_a_file_and_the_password_stays_out() {
    // Declared first, so dropped last: the server stops before its folder goes.
    let pg_dir = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(pg) = postgres(&pg_dir) else { return };
    reader_and_database(&pg).await;
    // One region of three rows: under the minimum group size.
    let mut rows = alpha_cases();
    rows.extend([(Some("Tiny"), Some(1), Some("1.00")); 3]);
    pg.execute(
        "stats",
        &format!(
            "CREATE TABLE cases (region text, days integer, cost numeric(12,2), note jsonb); \
             INSERT INTO cases VALUES {}; GRANT SELECT ON cases TO reader;",
            pg_values(&rows)
        ),
    )
    .await
    .expect("table");
    let d = dir.path();
    let spec = |id: &str, files: Vec<PathBuf>| MemberSpec {
        id: id.into(),
        name: format!("Member {id}"),
        jurisdiction: id.to_uppercase(),
        files,
    };
    let file = write_csv(&d.join("data/alpha"), &rows);
    let specs = vec![spec("alpha", vec![]), spec("bravo", vec![])];
    let members = setup(d, "test", &specs, vec![cases_schema()], free_ports(6)).await.expect("setup");
    let alpha = NodeDir::new(&members[0].dir);
    let as_file = admin::DatasetSpec {
        name: "cases_file",
        file: &file,
        shared_schema: Some("cases"),
        allow: Some("*"),
        csv: Default::default(),
        postgres: None,
        ballista: None,
    };
    admin::dataset_register(&alpha, &as_file, false).await.expect("file registers");

    // The password file must be private; a URL must not hold a password.
    let password = password_file(d);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let spec = admin::DatasetSpec {
            name: "cases_pg",
            file: Path::new(""),
            shared_schema: None,
            allow: Some("*"),
            csv: Default::default(),
            postgres: Some(pg_source(&pg, "cases", &password)),
            ballista: None,
        };
        let e = admin::dataset_register(&alpha, &spec, false).await.expect_err("0644").to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let with_password = PostgresSource {
            url: format!("postgresql://reader:{READER_PASSWORD}@127.0.0.1:{}/stats", pg.port()),
            ..pg_source(&pg, "cases", &password)
        };
        let e = admin::dataset_register(
            &alpha,
            &admin::DatasetSpec { postgres: Some(with_password), ..spec.clone() },
            false,
        )
        .await
        .expect_err("password in the URL")
        .to_string();
        assert!(e.contains("--password-env") && !e.contains(READER_PASSWORD), "{e}");
        let wrong = PostgresSource { table: "nosuch".into(), ..pg_source(&pg, "cases", &password) };
        let e = admin::dataset_register(
            &alpha,
            &admin::DatasetSpec { postgres: Some(wrong), ..spec.clone() },
            false,
        )
        .await
        .expect_err("no such table")
        .to_string();
        assert!(e.contains("no table or view"), "{e}");
        let e = admin::read_password(&Credential::Env("CONCORD_TEST_NO_SUCH_VARIABLE".into()), "cases_pg")
            .expect_err("unset")
            .to_string();
        assert!(e.contains("CONCORD_TEST_NO_SUCH_VARIABLE is not set"), "{e}");
    }
    register(&members[0], "cases_pg", pg_source(&pg, "cases", &password), Some("cases")).await;
    let fed = started_with_policies(
        dir,
        members,
        &[("cases_pg", SMALL_GROUPS_OUT), ("cases_file", SMALL_GROUPS_OUT)],
    )
    .await;
    let bravo = fed.member("bravo");
    let ask = |sql: String| async move { api_query(&bravo.local_url, &bravo.analyst_token, &sql).await };
    // The same answers from PostgreSQL as from the file: small groups and cells left out;
    // refusals read the same, whatever holds the rows.
    same_as_the_file(
        bravo,
        "cases_pg",
        &[
            "SELECT region, count(*) AS n, sum(cost) AS s FROM alpha.{t} GROUP BY region ORDER BY region",
            "SELECT region, count(*) FILTER (WHERE days > 4) AS long_stays, sum(days) AS d FROM alpha.{t} GROUP BY region ORDER BY region",
            "SELECT count(*) AS n FROM alpha.{t} WHERE region = 'Tiny'",
        ],
        &["SELECT region, days FROM alpha.{t}", "SELECT note FROM alpha.{t}"],
    )
    .await;
    // A literal that would end PostgreSQL's string after a backslash, and go on as SQL that
    // reads the table's rows: it stays a literal, and the answer is the file's.
    for sql in [
        r#"SELECT region, count(*) AS n FROM alpha.{t} WHERE region = 'x\'' UNION ALL SELECT region, 1000 FROM public.cases --' GROUP BY region"#,
        r#"SELECT region, count(*) AS n FROM alpha.{t} WHERE region <> 'a\b' AND region <> 'it''s' GROUP BY region ORDER BY region"#,
        r#"SELECT region, count(*) AS n FROM alpha.{t} WHERE region LIKE 'N%\_' OR region = 'x\' GROUP BY region ORDER BY region"#,
    ] {
        // The requester writes such a literal so that the owner reads it whole: both answer.
        let pg = ask(sql.replace("{t}", "cases_pg")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let file = ask(sql.replace("{t}", "cases_file")).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        if let Err(diff) = compare(&pg.batches, &file.batches) {
            panic!("{sql}: PostgreSQL and file differ: {diff}");
        }
    }
    // A column changed under the registration: every plan stops, whatever the values; once it
    // is back, the dataset serves again.
    pg.execute("stats", "ALTER TABLE cases ALTER COLUMN cost TYPE text").await.expect("alter");
    let sql = "SELECT region, sum(cost) AS s FROM alpha.cases_pg GROUP BY region".to_owned();
    let e = ask(sql.clone()).await.expect_err("changed column").to_string();
    assert!(e.contains("alpha") && e.contains("failed"), "{e}");
    pg.execute("stats", "ALTER TABLE cases ALTER COLUMN cost TYPE numeric(12,2) USING cost::numeric")
        .await
        .expect("alter back");
    ask(sql).await.expect("serves again");
    // The password is in no file of the node's folder, nor in its answers.
    let node = fed.member("alpha");
    let mut bytes = Vec::new();
    collect(&node.dir, &mut bytes);
    assert!(
        !bytes.windows(READER_PASSWORD.len()).any(|w| w == READER_PASSWORD.as_bytes()),
        "the password is kept nowhere"
    );
    fed.stop().await;
}

/// The federation of `members` running, alpha's datasets under the given policies (name, TOML).
async fn started_with_policies(
    dir: tempfile::TempDir,
    members: Vec<DemoMember>,
    policies: &[(&str, &str)],
) -> Fed {
    let alpha = NodeDir::new(&members[0].dir);
    for (name, policy) in policies {
        let p = dir.path().join(format!("{name}.policy.toml"));
        std::fs::write(&p, policy).expect("policy");
        admin::policy_set(&alpha, name, &p).expect("policy set");
    }
    for m in &members {
        set_limits(&m.dir, |l| l.catalog_ttl_secs = 0);
    }
    let nodes = start_all(&members).await.expect("nodes start");
    Fed { dir, members, nodes }
}

/// Each of `releases` (`{t}` for the table) asked by `asker` of alpha's `table` and of its
/// `cases_file` (the same rows, the same policy) gets the same answer, with the group of three
/// held back; each of `refusals` gets the same refusal.
async fn same_as_the_file(asker: &DemoMember, table: &str, releases: &[&str], refusals: &[&str]) {
    let ask = async |sql: &str, t: &str| {
        api_query(&asker.local_url, &asker.analyst_token, &sql.replace("{t}", t)).await
    };
    for sql in releases {
        let got = ask(sql, table).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let file = ask(sql, "cases_file").await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        if let Err(diff) = compare(&got.batches, &file.batches) {
            panic!("{sql}: {table} and the file differ: {diff}");
        }
        let text = format!("{:?}", cells(&got.batches).expect("cells"));
        assert!(!text.contains("Tiny"), "{sql}: a group of three is held back: {text}");
    }
    for sql in refusals {
        let e = ask(sql, table).await.expect_err(sql).to_string();
        let e_file = ask(sql, "cases_file").await.expect_err(sql).to_string();
        assert_eq!(e.replace(table, "cases_file"), e_file, "{sql}");
    }
}

fn collect(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).expect("folder").flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
}

/// Differential privacy over rows in PostgreSQL: people with several rows each (contributions
/// capped per person on the node over what PostgreSQL sums per person) and with one row each
/// (clamped and summed inside PostgreSQL), outliers, NaN and infinities included.
const PEOPLE_DP: &str = r#"classification = "general"
[personal]
privacy_unit = "person_id"
[columns]
person_id = "hidden"
region = "group"
income = "aggregate"
nights = "aggregate"
[release]
min_group_size = 10
[release.privacy]
mechanism = "zcdp"
cost = 0.5
max_rows_per_group = 3
budget_per_requester = 1000.0
budget_per_dataset = 1000.0
bounds = { income = [0, 1000], nights = [0, 10] }
delta = 1e-6
[access]
rules = '''
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
'''
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn noise_and_contribution_bounds_hold_in_postgresql() {
    let pg_dir = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(pg) = postgres(&pg_dir) else { return };
    reader_and_database(&pg).await;
    // 300 people in North, 200 in South; three rows each in `visits`, one in `residents`;
    // a few incomes far out of bounds, NaN and infinite.
    pg.execute(
        "stats",
        "CREATE TABLE visits (person_id bigint, region text, income double precision, nights bigint); \
         INSERT INTO visits SELECT p, CASE WHEN p <= 300 THEN 'North' ELSE 'South' END, \
           CASE WHEN p % 97 = 0 THEN 1e300 WHEN p % 89 = 0 THEN 'NaN' WHEN p % 83 = 0 THEN 'Infinity' ELSE 100 END, 1 \
           FROM generate_series(1, 500) AS p, generate_series(1, 3); \
         CREATE TABLE residents (person_id bigint, region text, income numeric(12,2), nights bigint); \
         INSERT INTO residents SELECT p, CASE WHEN p <= 300 THEN 'North' ELSE 'South' END, \
           CASE WHEN p % 97 = 0 THEN 9999999999.99 ELSE 100.50 END, \
           CASE WHEN p % 97 = 0 THEN 9223372036854775807 WHEN p % 89 = 0 THEN -9223372036854775808 ELSE 2 END \
           FROM generate_series(1, 500) AS p; \
         GRANT SELECT ON visits, residents TO reader;",
    )
    .await
    .expect("tables");
    let d = dir.path();
    let spec = |id: &str| MemberSpec {
        id: id.into(),
        name: format!("Member {id}"),
        jurisdiction: id.to_uppercase(),
        files: vec![],
    };
    let members =
        setup(d, "test", &[spec("alpha"), spec("bravo")], vec![], free_ports(6)).await.expect("setup");
    let password = password_file(d);
    let alpha = NodeDir::new(&members[0].dir);
    for table in ["visits", "residents"] {
        register(&members[0], table, pg_source(&pg, table, &password), None).await;
        let policy = d.join(format!("{table}.policy.toml"));
        std::fs::write(&policy, PEOPLE_DP).expect("policy");
        admin::policy_set(&alpha, table, &policy).expect("policy set");
    }
    for m in &members {
        set_limits(&m.dir, |l| l.catalog_ttl_secs = 0);
    }
    let nodes = start_all(&members).await.expect("nodes start");
    let fed = Fed { dir, members, nodes };
    let bravo = fed.member("bravo");
    for (table, per_person) in [("visits", 300.0), ("residents", 100.5)] {
        let sql = format!(
            "SELECT region, count(*) AS n, sum(income) AS s FROM alpha.{table} GROUP BY region ORDER BY region"
        );
        let mut answers = Vec::new();
        for _ in 0..3 {
            let got = api_query(&bravo.local_url, &bravo.analyst_token, &sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let p = got.provenance.iter().find(|p| p.member == "alpha").expect("alpha answered");
            assert_eq!(p.release.mechanism.as_deref(), Some("zcdp"), "{p:?}");
            answers.push(cells(&got.batches).expect("cells"));
        }
        for rows in &answers {
            assert_eq!(rows.len(), 2, "{table}: both regions, far above the threshold: {rows:?}");
            for (row, people) in rows.iter().zip([300.0, 200.0]) {
                let n = number(&row[1]);
                let s = number(&row[2]);
                // Counts of rows; each person's sum within [0, 1000] per row, so far from 1e300.
                let rows_each = if table == "visits" { 3.0 } else { 1.0 };
                assert!((n - people * rows_each).abs() < 60.0, "{table}: count {n} for {people} people");
                assert!(
                    (s - people * per_person).abs() < 0.2 * people * per_person + 20_000.0,
                    "{table}: sum {s}"
                );
            }
        }
        assert!(
            answers.windows(2).any(|w| w[0] != w[1]),
            "{table}: noise differs from run to run: {answers:?}"
        );
    }
    // A LIKE pattern that ends in an escape character fails in PostgreSQL only where a value
    // gets that far: refused on personal data before it runs.
    let sql = r"SELECT region, count(*) AS n FROM alpha.visits WHERE region LIKE 'No\' GROUP BY region";
    let e = api_query(&bravo.local_url, &bravo.analyst_token, sql).await.expect_err("pattern").to_string();
    assert!(e.contains("refused") && e.contains("pattern"), "{e}");
    // Integers at the ends of BIGINT are clamped exactly, without overflow: 2 nights a person,
    // at most 10 for the few at i64::MAX, 0 for those at i64::MIN.
    let sql = "SELECT region, sum(nights) AS s FROM alpha.residents GROUP BY region ORDER BY region";
    let got =
        api_query(&bravo.local_url, &bravo.analyst_token, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    for (row, people) in cells(&got.batches).expect("cells").iter().zip([300.0, 200.0]) {
        let s = number(&row[1]);
        assert!(
            (s - 2.0 * people).abs() < 0.3 * 2.0 * people + 200.0,
            "sum of nights {s} for {people} people"
        );
    }
    drop(fed.stop().await);
}

fn number(c: &Cell) -> f64 {
    match c {
        Cell::Float(f) => *f,
        Cell::Text(t) => t.parse().unwrap_or_else(|_| panic!("not a number: {t}")),
        Cell::Null => panic!("NULL where a number was due"),
    }
}

/// The people of the differential-privacy policy: 500 people, three rows each, North (300) and
/// South (200); a few incomes far out of bounds or NaN. Written as two Parquet files.
async fn write_people(folder: &Path) -> PathBuf {
    let rows = concord_lab::ballista::write_parts(
        "SELECT a.value AS person_id, CASE WHEN a.value <= 300 THEN 'North' ELSE 'South' END AS region, \
         CASE WHEN a.value % 97 = 0 THEN 1e300 WHEN a.value % 89 = 0 THEN CAST('NaN' AS DOUBLE) ELSE 100.0 END AS income, \
         CAST(1 AS BIGINT) AS nights \
         FROM generate_series(1, 500) AS a CROSS JOIN generate_series(1, 3) AS b",
        folder,
        2,
    )
    .await
    .expect("people");
    assert_eq!(rows, 1500);
    let parts = std::fs::read_dir(folder).expect("files").count();
    assert!(parts >= 2, "the people are in {parts} files");
    folder.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_and_noise_hold_on_a_ballista_cluster_as_for_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // One region of three rows: under the minimum group size.
    let mut rows = alpha_cases();
    rows.extend([(Some("Tiny"), Some(1), Some("1.00")); 3]);
    let file = write_csv(&d.join("data/alpha"), &rows);
    let files = write_parquet_parts(&d.join("data/alpha-cluster"), &rows, 2).await;
    let people = write_people(&d.join("data/people")).await;
    let spec = |id: &str| MemberSpec {
        id: id.into(),
        name: format!("Member {id}"),
        jurisdiction: id.to_uppercase(),
        files: vec![],
    };
    let members = setup(d, "test", &[spec("alpha"), spec("bravo")], vec![cases_schema()], free_ports(6))
        .await
        .expect("setup");
    let alpha = NodeDir::new(&members[0].dir);
    let as_file = admin::DatasetSpec {
        name: "cases_file",
        file: &file,
        shared_schema: Some("cases"),
        allow: Some("*"),
        csv: Default::default(),
        postgres: None,
        ballista: None,
    };
    admin::dataset_register(&alpha, &as_file, false).await.expect("file registers");
    let cluster = cluster().await;

    // A scheduler off loopback, and one that does not run, are refused by name.
    let far = admin::DatasetSpec {
        name: "cases_far",
        file: &files,
        ballista: Some(BallistaSource { scheduler: "df://10.1.2.3:50050".into() }),
        ..as_file.clone()
    };
    let e = admin::dataset_register(&alpha, &far, false).await.expect_err("not loopback").to_string();
    assert!(e.contains("loopback") && e.contains("df://10.1.2.3:50050"), "{e}");
    let down = format!("df://127.0.0.1:{}", free_ports(1));
    let e = admin::dataset_register(
        &alpha,
        &admin::DatasetSpec { ballista: Some(BallistaSource { scheduler: down.clone() }), ..far.clone() },
        false,
    )
    .await
    .expect_err("no scheduler")
    .to_string();
    assert!(e.contains(&down) && e.contains("check that the scheduler runs"), "{e}");

    let registered = register_on_cluster(&members[0], "cases_cluster", &cluster, &files, Some("cases")).await;
    assert_eq!(registered.record.rows, 27, "rows counted by the cluster");
    register_on_cluster(&members[0], "visits", &cluster, &people, None).await;
    let fed = started_with_policies(
        dir,
        members,
        &[("cases_cluster", SMALL_GROUPS_OUT), ("cases_file", SMALL_GROUPS_OUT), ("visits", PEOPLE_DP)],
    )
    .await;
    let bravo = fed.member("bravo");
    let ask = |sql: String| async move { api_query(&bravo.local_url, &bravo.analyst_token, &sql).await };
    // The same answers from the cluster as from the file: small groups and cells left out;
    // refusals read the same, whatever holds the rows.
    same_as_the_file(
        bravo,
        "cases_cluster",
        &[
            "SELECT region, count(*) AS n, sum(cost) AS s, avg(days) AS a FROM alpha.{t} GROUP BY region ORDER BY region",
            "SELECT region, count(*) FILTER (WHERE days > 4) AS long_stays, sum(days) AS d FROM alpha.{t} GROUP BY region ORDER BY region",
            "SELECT count(*) AS n FROM alpha.{t} WHERE region = 'Tiny'",
            r#"SELECT region, count(*) AS n FROM alpha.{t} WHERE region <> 'a\b' AND region <> 'it''s' GROUP BY region ORDER BY region"#,
        ],
        &["SELECT region, days FROM alpha.{t}", "SELECT region, count(*) FROM alpha.{t} GROUP BY cost, region"],
    )
    .await;
    // Differential privacy: per-person caps and noise on the node, over the cluster's sums per
    // person; outliers and NaN clamped.
    let sql =
        "SELECT region, count(*) AS n, sum(income) AS s FROM alpha.visits GROUP BY region ORDER BY region";
    let mut answers = Vec::new();
    for _ in 0..3 {
        let got = ask(sql.to_owned()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        let p = got.provenance.iter().find(|p| p.member == "alpha").expect("alpha answered");
        assert_eq!(p.release.mechanism.as_deref(), Some("zcdp"), "{p:?}");
        answers.push(cells(&got.batches).expect("cells"));
    }
    for rows in &answers {
        assert_eq!(rows.len(), 2, "both regions, far above the threshold: {rows:?}");
        for (row, people) in rows.iter().zip([300.0, 200.0]) {
            let (n, s) = (number(&row[1]), number(&row[2]));
            assert!((n - people * 3.0).abs() < 60.0, "count {n} for {people} people");
            assert!((s - people * 300.0).abs() < 0.2 * people * 300.0 + 20_000.0, "sum {s}");
        }
    }
    assert!(answers.windows(2).any(|w| w[0] != w[1]), "noise differs from run to run: {answers:?}");
    fed.stop().await;
}

/// A scan on the cluster that outlives the sub-query timeout is cut off at the node with an
/// error that says so, and the node has the scheduler cancel its job, which then no longer runs
/// there. (Whether the job's own work had ended by then depends on the machine's speed: Ballista
/// counts a cancellation either way, and the scan's output waits on the executors to be read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_job_that_outlives_the_timeout_is_cancelled_on_the_cluster() {
    use datafusion::datasource::TableProvider as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster().await;
    let files = dir.path().join("big");
    concord_lab::ballista::write_parts(
        "SELECT value AS k, value % 97 AS g FROM generate_series(1, 1000000)",
        &files,
        4,
    )
    .await
    .expect("written");
    let source = BallistaSource { scheduler: cluster.url() };
    let timeout = std::time::Duration::from_millis(50);
    let table = concord_source::ballista::table("big", &source, &files, None, timeout).await.expect("opens");
    let scan = table.engine().scan(table.schema(), None, &[], None).expect("plans");
    let ctx = std::sync::Arc::new(datafusion::execution::TaskContext::default());
    let e = datafusion::physical_plan::collect(scan, ctx).await.expect_err("cut off").to_string();
    assert!(e.contains("did not answer within 0.05 s") && e.contains("the job was cancelled"), "{e}");
    crate::support::eventually("the job is cancelled on the cluster", || {
        let (jobs, running) = (cluster.jobs(), cluster.running_jobs());
        async move { jobs.cancelled == 1 && running == 0 }
    })
    .await;
    let jobs = cluster.jobs();
    assert_eq!((jobs.submitted, jobs.cancelled), (1, 1), "one job, cancelled once: {jobs:?}");
}
