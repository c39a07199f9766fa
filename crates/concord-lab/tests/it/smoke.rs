use concord_lab::demo::{DemoFile, DemoOptions, launch};
use concord_lab::smoke::tour;

use std::sync::Arc;

use datafusion::arrow::array::{Float32Array, Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

use crate::support::free_ports;

fn write_parquet(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("units", DataType::Int32, true),
        Field::new("price", DataType::Float32, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int32Array::from(vec![Some(3), None])),
            Arc::new(Float32Array::from(vec![Some(1.0), Some(4.0)])),
        ],
    )
    .expect("batch");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_smoke_tour_passes_every_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts =
        DemoOptions { dir: dir.path().join("demo"), data: None, port_base: free_ports(9), smoke: true };
    let demo = launch(&opts).await.expect("demo launches");
    let steps = tour(&demo, true).await;
    demo.stop().await;
    let failed: Vec<_> = steps.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(failed.is_empty(), "failed steps: {failed:#?}");
    assert!(steps.len() >= 11, "the tour has all its steps: {steps:#?}");

    // demo.json is what scripts drive the demo with.
    let file: DemoFile =
        serde_json::from_slice(&std::fs::read(opts.dir.join("demo.json")).expect("demo.json"))
            .expect("parses");
    assert_eq!(file.federation, "demo");
    let ids: Vec<_> = file.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "bravo", "charlie"]);
    for m in &file.members {
        assert!(m.local_url.starts_with("http://127.0.0.1:") && m.peer_url.starts_with("https://127.0.0.1:"));
        assert!(m.analyst_token.starts_with("concord_") && m.auditor_token.starts_with("concord_"));
    }

    // Files that hold tokens, keys or the log are readable by their owner only.
    use std::os::unix::fs::PermissionsExt as _;
    // SQLite removes its -wal and -shm files when the last connection closes, which may happen
    // while this loop runs: a file that is gone is not checked, one that is there must be 0600.
    let mode = |p: &std::path::Path| match std::fs::metadata(p) {
        Ok(m) => Some(m.permissions().mode() & 0o777),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", p.display()),
    };
    assert_eq!(mode(&opts.dir.join("demo.json")), Some(0o600), "demo.json holds every token");
    for m in &file.members {
        let node = opts.dir.join(&m.id).join("node");
        for f in [
            "state.db",
            "state.db-wal",
            "state.db-shm",
            "keys/member.key",
            "keys/witness.key",
            "keys/tls.key",
        ] {
            let p = node.join(f);
            let must_exist = !f.ends_with("-wal") && !f.ends_with("-shm");
            match mode(&p) {
                Some(m) => assert_eq!(m, 0o600, "{}", p.display()),
                None => assert!(!must_exist, "{} is missing", p.display()),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_a_data_folder_forms_shared_schemas_from_stems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("north-office")).expect("mkdir");
    std::fs::write(data.join("north-office").join("sales.csv"), "units,price\n1,2.5\n2,3.5\n")
        .expect("write");
    // The other member keeps the same table as Parquet, with narrower types.
    std::fs::create_dir_all(data.join("south-office")).expect("mkdir");
    write_parquet(&data.join("south-office").join("sales.parquet"));
    std::fs::write(data.join("north-office").join("stock.csv"), "item,count\nbolts,4\n").expect("write");
    let opts =
        DemoOptions { dir: dir.path().join("demo"), data: Some(data), port_base: free_ports(6), smoke: true };
    let demo = launch(&opts).await.expect("demo launches");
    let names: Vec<_> = demo.schemas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sales"], "only stems held by several members are shared");
    let cols: Vec<_> = demo.schemas[0].columns.iter().map(|c| (c.name.as_str(), c.ty.clone())).collect();
    use concord_charter::ColumnType;
    assert_eq!(cols, [("units", ColumnType::Int64), ("price", ColumnType::Float64)]);
    let total = concord_lab::demo::api_query(
        &demo.file.members[0].local_url,
        &demo.file.members[0].analyst_token,
        "SELECT count(*) AS rows, count(units) AS units_known FROM sales",
    )
    .await
    .expect("CSV and Parquet members together");
    assert_eq!(crate::peer_refusals::first_int(&total.batches), Some(4));
    let steps = tour(&demo, false).await;
    let north = &demo.file.members[0];
    let own = concord_lab::demo::api_query(
        &north.local_url,
        &north.analyst_token,
        "SELECT sum(count) AS n FROM \"north-office\".stock",
    )
    .await
    .expect("a single member's dataset is queryable");
    demo.stop().await;
    let failed: Vec<_> = steps.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(failed.is_empty(), "failed steps: {failed:#?}");
    assert_eq!(crate::peer_refusals::first_int(&own.batches), Some(4));
}

/// A member's share of a TPC-H-like line item table: decimals, a date, a timestamp with a time
/// zone, an unsigned count, dictionary-encoded flags, and (at the first member only) a list
/// column that no shared schema can hold.
fn write_lineitem(path: &std::path::Path, member: i64, with_list: bool) {
    use datafusion::arrow::array::{
        ArrayRef, Date32Array, Decimal128Array, DictionaryArray, Int64Array, ListBuilder, StringBuilder,
        TimestampMicrosecondArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Int32Type, TimeUnit};
    let n = 40i64;
    let keys: Vec<i64> = (0..n).map(|i| member * 1000 + i).collect();
    let mut fields = vec![
        Field::new("l_orderkey", DataType::Int64, false),
        Field::new("l_quantity", DataType::Decimal128(15, 2), true),
        Field::new("l_extendedprice", DataType::Decimal128(15, 2), true),
        Field::new("l_shipdate", DataType::Date32, true),
        Field::new("l_commit", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("l_pieces", DataType::UInt64, true),
        Field::new("l_flag", DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)), true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(keys.clone())),
        Arc::new(
            keys.iter()
                .map(|k| (k % 7 != 0).then_some(i128::from(k % 50 + 1) * 100 + i128::from(k % 3) * 25))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .expect("decimal"),
        ),
        Arc::new(
            keys.iter()
                .map(|k| Some(i128::from(*k) * 1_234_567 % 10_000_000_007))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(15, 2)
                .expect("decimal"),
        ),
        Arc::new(keys.iter().map(|k| Some(19_000 + (k % 365) as i32)).collect::<Date32Array>()),
        Arc::new(
            keys.iter()
                .map(|k| Some(1_700_000_000_000_000 + k * 3_600_000_123))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        Arc::new(keys.iter().map(|k| Some(u64::MAX / 1000 + *k as u64)).collect::<UInt64Array>()),
        Arc::new(
            keys.iter()
                .map(|k| Some(["A", "N", "R"][(k % 3) as usize]))
                .collect::<DictionaryArray<Int32Type>>(),
        ),
    ];
    if with_list {
        let mut b = ListBuilder::new(StringBuilder::new());
        for _ in 0..n {
            b.values().append_value("x");
            b.append(true);
        }
        fields.push(Field::new(
            "l_tags",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ));
        columns.push(Arc::new(b.finish()));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_typed_parquet_serves_decimals_timestamps_and_names_what_it_cannot_share() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    for (i, m) in ["alpha", "bravo", "charlie"].into_iter().enumerate() {
        std::fs::create_dir_all(data.join(m)).expect("mkdir");
        write_lineitem(&data.join(m).join("lineitem.parquet"), i as i64, i == 0);
    }
    let opts = DemoOptions {
        dir: dir.path().join("demo"),
        data: Some(data),
        port_base: free_ports(9),
        smoke: false,
    };
    let demo = launch(&opts).await.expect("demo launches");
    let types: Vec<String> = demo.schemas[0].columns.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
    assert_eq!(
        types,
        [
            "l_orderkey int64",
            "l_quantity decimal(15,2)",
            "l_extendedprice decimal(15,2)",
            "l_shipdate date32",
            "l_commit timestamp(us,UTC)",
            "l_pieces uint64",
            "l_flag dictionary(int32,utf8)",
        ]
    );
    assert!(
        demo.warnings.iter().any(|w| w.contains("l_tags") && w.contains("List") && w.contains("nested")),
        "the list column is named with its type and why: {:?}",
        demo.warnings
    );
    // Registration names the column it leaves out, with its type and why.
    let alpha_dir = concord_node::store::config::NodeDir::new(&demo.file.members[0].dir);
    let file = demo.specs[0].files[0].clone();
    let spec = concord_node::node::admin::DatasetSpec {
        name: "lineitem_copy",
        file: &file,
        shared_schema: None,
        allow: None,
        csv: Default::default(),
        postgres: None,
        ballista: None,
    };
    let r = concord_node::node::admin::dataset_register(&alpha_dir, &spec, false).await.expect("registered");
    assert!(
        r.left_out.iter().any(|w| w.contains("l_tags") && w.contains("List") && w.contains("nested")),
        "{:?}",
        r.left_out
    );
    let pooled = concord_lab::demo::pooled_context(&demo.specs, &demo.schemas).await.expect("pooled");
    let alpha = &demo.file.members[0];
    for sql in [
        "SELECT sum(l_quantity) AS q, avg(l_extendedprice) AS p, min(l_commit) AS first, max(l_shipdate) AS last, sum(l_pieces) AS pieces, count(*) AS n FROM lineitem",
        "SELECT l_flag, count(*) AS n, sum(l_quantity) AS q, avg(l_quantity) AS aq, max(l_commit) AS latest FROM lineitem GROUP BY l_flag ORDER BY l_flag",
    ] {
        let fed = concord_lab::demo::api_query(&alpha.local_url, &alpha.analyst_token, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(fed.provenance.len(), 3, "every member answered: {:?}", fed.provenance);
        let want = pooled.sql(sql).await.expect("plans").collect().await.expect("runs");
        if let Err(diff) = concord_query::compare::compare(&fed.batches, &want) {
            panic!("{sql}: {diff}");
        }
    }
    // Provenance counts the rows each dataset holds, and says when no row was read.
    let counted = concord_lab::demo::api_query(
        &alpha.local_url,
        &alpha.analyst_token,
        "SELECT count(*) AS n FROM lineitem",
    )
    .await
    .expect("runs");
    assert_eq!(counted.provenance.len(), 3);
    for c in &counted.provenance {
        assert_eq!(c.rows_scanned, Some(40), "{c:?}");
        assert!(c.release.rows_from_statistics, "a Parquet count(*) comes from the file's statistics: {c:?}");
    }
    let read = concord_lab::demo::api_query(
        &alpha.local_url,
        &alpha.analyst_token,
        "SELECT count(*) AS n FROM lineitem WHERE l_quantity > 10",
    )
    .await
    .expect("runs");
    for c in &read.provenance {
        assert_eq!(c.rows_scanned, Some(40), "{c:?}");
        assert!(!c.release.rows_from_statistics, "a filter reads rows: {c:?}");
    }
    // Decimal sums stay decimal, with DataFusion's own result type.
    let fed = concord_lab::demo::api_query(
        &alpha.local_url,
        &alpha.analyst_token,
        "SELECT sum(l_quantity) AS q, avg(l_quantity) AS a FROM lineitem",
    )
    .await
    .expect("runs");
    let schema = fed.batches[0].schema();
    assert_eq!(schema.field(0).data_type(), &DataType::Decimal128(25, 2));
    assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(19, 6));
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_on_a_taken_port_names_port_base_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = free_ports(9);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 3)).expect("takes a port");
    let opts = DemoOptions { dir: dir.path().join("demo"), data: None, port_base: base, smoke: true };
    let e = launch(&opts).await.err().expect("a port is taken").to_string();
    assert!(e.contains(&format!("port {}", base + 3)) && e.contains("--port-base"), "{e}");
    assert!(!e.contains("concord.toml"), "{e}");
    assert!(!opts.dir.exists(), "no half-built folder");
}
