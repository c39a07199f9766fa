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
        DemoOptions { dir: dir.path().join("demo"), data: None, port_base: free_ports(6), smoke: true };
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
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&opts.dir.join("demo.json")), 0o600, "demo.json holds every token");
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
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
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
        DemoOptions { dir: dir.path().join("demo"), data: Some(data), port_base: free_ports(4), smoke: true };
    let demo = launch(&opts).await.expect("demo launches");
    let names: Vec<_> = demo.schemas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sales"], "only stems held by several members are shared");
    let cols: Vec<_> = demo.schemas[0].columns.iter().map(|c| (c.name.as_str(), c.ty)).collect();
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
