use concord_node::demo::{DemoFile, DemoOptions, launch};
use concord_node::smoke::tour;

use crate::support::free_ports;

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
    assert!(steps.len() >= 9, "the tour has all its steps: {steps:#?}");

    // demo.json is what scripts drive the demo with.
    let file: DemoFile =
        serde_json::from_slice(&std::fs::read(opts.dir.join("demo.json")).expect("demo.json"))
            .expect("parses");
    assert_eq!(file.federation, "demo");
    let ids: Vec<_> = file.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["alpha", "bravo", "charlie"]);
    for m in &file.members {
        assert!(m.local_url.starts_with("http://127.0.0.1:") && m.peer_url.starts_with("https://127.0.0.1:"));
        assert!(m.analyst_token.starts_with("concord_"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_a_data_folder_forms_shared_schemas_from_stems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    for (m, rows) in [("north-office", "1,2.5\n2,3.5\n"), ("south-office", "3,1.0\n")] {
        std::fs::create_dir_all(data.join(m)).expect("mkdir");
        std::fs::write(data.join(m).join("sales.csv"), format!("units,price\n{rows}")).expect("write");
    }
    std::fs::write(data.join("north-office").join("stock.csv"), "item,count\nbolts,4\n").expect("write");
    let opts =
        DemoOptions { dir: dir.path().join("demo"), data: Some(data), port_base: free_ports(4), smoke: true };
    let demo = launch(&opts).await.expect("demo launches");
    let names: Vec<_> = demo.schemas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sales"], "only stems held by several members are shared");
    let steps = tour(&demo, false).await;
    let north = &demo.file.members[0];
    let own = concord_node::demo::api_query(
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
