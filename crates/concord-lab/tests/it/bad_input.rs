use concord_lab::demo::{DemoMember, api_query};
use concord_node::NodeError;
use concord_node::net::client::local_call;
use concord_node::node::admin::{dataset_add, token_create};
use concord_node::store::config::{InitOptions, NodeDir, init};
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::support::{free_ports, three_members, write_cases};

fn refusal(e: NodeError) -> (String, String) {
    match e {
        NodeError::Peer { code, message, .. } => (code.to_string(), message),
        other => panic!("expected an error answer, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_get_clear_errors_and_the_node_stays_up() {
    let fed = three_members().await;
    let a = fed.member("alpha").clone();

    malformed_or_refused_queries_say_why(&a).await;
    tokens_and_roles_are_checked(&a).await;
    bad_bodies_are_refused(&a).await;
    local_tables_join_federated_aggregates(&a).await;

    // An owner that is down fails the query with its name.
    let mut nodes = fed.nodes;
    let charlie = nodes.pop().expect("charlie");
    charlie.stop().await;
    a_down_owner_is_named_or_left_out(&a).await;
    for n in nodes {
        n.stop().await;
    }
}

/// Malformed, unknown and refused queries each get their code and a message naming the cause.
async fn malformed_or_refused_queries_say_why(a: &DemoMember) {
    let q = |sql: &'static str| api_query(&a.local_url, &a.analyst_token, sql);

    let (code, msg) = refusal(q("SELEC count(*) FROM cases").await.expect_err("malformed"));
    assert_eq!(code, "invalid_query", "{msg}");
    let (code, msg) = refusal(q("SELECT count(*) FROM nowhere").await.expect_err("unknown table"));
    assert!(code == "invalid_query" && msg.contains("nowhere"), "{msg}");
    let (code, msg) = refusal(q("SELECT count(nope) FROM cases").await.expect_err("unknown column"));
    assert!(code == "invalid_query" && msg.contains("nope"), "{msg}");
    let (code, msg) = refusal(q("SELECT region FROM cases").await.expect_err("raw rows"));
    assert!(code == "policy_refused" && msg.contains("read_rows") && msg.contains("What works"), "{msg}");
    let (code, msg) = refusal(q("SELECT count(DISTINCT region) FROM cases").await.expect_err("distinct"));
    assert!(code == "query_refused" && msg.contains("DISTINCT"), "{msg}");
}

/// No token, an unknown token, and roles that may not query or audit are refused.
async fn tokens_and_roles_are_checked(a: &DemoMember) {
    // Tokens: none, unknown, and a role that may not query.
    let resp =
        local_call(&a.local_url, "POST", "/v1/query", None, Some(&serde_json::json!({"sql": "SELECT 1"})))
            .await
            .expect("sent");
    assert_eq!(resp.status, 401);
    let resp = local_call(&a.local_url, "GET", "/v1/status", Some("concord_nope"), None).await.expect("sent");
    assert_eq!((resp.status, resp.error_parts().0.as_str()), (401, "unauthorized"));
    let steward = token_create(&NodeDir::new(&a.dir), "steward").expect("token");
    let resp = local_call(
        &a.local_url,
        "POST",
        "/v1/query",
        Some(&steward),
        Some(&serde_json::json!({"sql": "SELECT 1"})),
    )
    .await
    .expect("sent");
    assert_eq!((resp.status, resp.error_parts().0.as_str()), (403, "forbidden"), "a steward may not query");
    // Nor may an analyst audit or read the log: that is the auditor's role.
    for (method, path) in [("POST", "/v1/audit"), ("GET", "/v1/log/checkpoint"), ("GET", "/v1/log/receipt/0")]
    {
        let body = serde_json::json!({"all": true});
        let resp = local_call(
            &a.local_url,
            method,
            path,
            Some(&a.analyst_token),
            (method == "POST").then_some(&body),
        )
        .await
        .expect("sent");
        assert_eq!(resp.status, 403, "{path}: {:?}", resp.error_parts());
    }
}

/// A body of the wrong shape and one too big are refused.
async fn bad_bodies_are_refused(a: &DemoMember) {
    let resp = local_call(
        &a.local_url,
        "POST",
        "/v1/query",
        Some(&a.analyst_token),
        Some(&serde_json::json!({"query": 1})),
    )
    .await
    .expect("sent");
    assert_eq!((resp.status, resp.error_parts().0.as_str()), (400, "bad_request"));
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = local_call(
        &a.local_url,
        "POST",
        "/v1/query",
        Some(&a.analyst_token),
        Some(&serde_json::json!({"sql": big})),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status, 413);
}

/// Local tables join with federated aggregates.
async fn local_tables_join_federated_aggregates(a: &DemoMember) {
    let q = |sql: &'static str| api_query(&a.local_url, &a.analyst_token, sql);
    // Local tables join with federated aggregates.
    let out = q("WITH f AS (SELECT region, count(*) AS n FROM cases GROUP BY region) \
                 SELECT f.region, f.n, l.c FROM f JOIN (SELECT region, count(*) AS c FROM local.cases GROUP BY region) l ON f.region = l.region ORDER BY f.region")
        .await
        .expect("join of federated and local aggregates");
    let text = pretty_format_batches(&out.batches).expect("fmt").to_string().replace(' ', "");
    assert!(text.contains("|north|3|2|") && text.contains("|south|3|1|"), "{text}");
}

/// With charlie down a query fails naming it; asked for a partial result, it goes on without.
async fn a_down_owner_is_named_or_left_out(a: &DemoMember) {
    let (code, msg) = refusal(
        api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM cases")
            .await
            .expect_err("charlie is down"),
    );
    assert!(
        code == "owner_unreachable" && msg.contains("charlie") && msg.contains("partial"),
        "{code}: {msg}"
    );
    // Asked for a partial result, the query goes on without charlie and says so.
    let resp = local_call(
        &a.local_url,
        "POST",
        "/v1/query",
        Some(&a.analyst_token),
        Some(&serde_json::json!({"sql": "SELECT count(*) AS n FROM cases", "partial": true})),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status, 200, "{:?}", resp.error_parts());
    let body: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(body["missing"], serde_json::json!(["charlie"]));
    let members: Vec<&str> = body["provenance"]
        .as_array()
        .expect("provenance")
        .iter()
        .filter_map(|c| c["member"].as_str())
        .collect();
    assert_eq!(members, ["alpha", "bravo"]);
    // Bravo's dataset alone still answers.
    let out = api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM bravo.cases")
        .await
        .expect("bravo answers");
    assert_eq!(crate::peer_refusals::first_int(&out.batches), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_missing_unreadable_or_not_conforming_are_refused_whole() {
    let fed = three_members().await;
    let a = fed.member("alpha");
    let nd = NodeDir::new(&a.dir);
    let before = nd.open_state().expect("state").datasets().expect("list").len();

    let err =
        dataset_add(&nd, "ghost", &fed.dir.path().join("nope.csv"), None, None).await.expect_err("missing");
    assert!(err.to_string().contains("nope.csv"), "{err}");
    let bad = fed.dir.path().join("bad.csv");
    std::fs::write(&bad, "region,days\nnorth,3\nsouth,4,5,6\n").expect("write");
    let err = dataset_add(&nd, "bad", &bad, None, None).await.expect_err("unreadable");
    assert!(err.to_string().contains("bad.csv"), "{err}");
    let other = fed.dir.path().join("other.csv");
    std::fs::write(&other, "place,days\nnorth,abc\n").expect("write");
    let err = dataset_add(&nd, "other", &other, Some("cases"), None).await.expect_err("not conforming");
    let msg = err.to_string();
    assert!(msg.contains("column region is missing") && msg.contains("column days"), "{msg}");
    let err = dataset_add(&nd, "x", &other, Some("no_schema"), None).await.expect_err("unknown schema");
    assert!(err.to_string().contains("no_schema"), "{err}");
    let err = dataset_add(&nd, "Bad Name", &other, None, None).await.expect_err("bad name");
    assert!(err.to_string().contains("dataset name"), "{err}");
    let err = dataset_add(&nd, "y", &other, None, Some("bravo;charlie")).await.expect_err("bad allow");
    assert!(err.to_string().contains("allow"), "{err}");
    assert_eq!(
        nd.open_state().expect("state").datasets().expect("list").len(),
        before,
        "nothing was registered"
    );

    // A registered file that disappears: the node answers with the dataset's name, and stays up.
    let b = fed.member("bravo").clone();
    let moved = write_cases(fed.dir.path(), "bravo-extra", &[("north", Some(1))]);
    dataset_add(&NodeDir::new(&b.dir), "extra", &moved, Some("cases"), Some("*")).await.expect("registered");
    let _dir = fed.stop().await;
    std::fs::remove_file(&moved).expect("remove");
    let bravo = concord_node::run::start(&NodeDir::new(&b.dir)).await.expect("bravo starts without the file");
    let (code, msg) = refusal(
        api_query(&b.local_url, &b.analyst_token, "SELECT count(*) FROM bravo.extra")
            .await
            .expect_err("file gone"),
    );
    assert!(
        code == "dataset_unavailable" && msg.contains("extra") && msg.contains("does not exist"),
        "{code}: {msg}"
    );
    let resp = local_call(&b.local_url, "GET", "/v1/datasets", Some(&b.analyst_token), None)
        .await
        .expect("still up");
    assert_eq!(resp.status, 200);
    bravo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_and_a_used_folder_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = free_ports(2);
    let opts = |m: &str| InitOptions {
        member: m.into(),
        federation: "test".into(),
        name: None,
        jurisdiction: None,
        peer_listen: format!("127.0.0.1:{}", base + 1),
        local_listen: format!("127.0.0.1:{base}"),
        flight_listen: None,
        advertise: None,
    };
    init(&dir.path().join("n"), &opts("alpha")).expect("init");
    let err = init(&dir.path().join("n"), &opts("alpha")).expect_err("folder in use");
    assert!(err.to_string().contains("not empty"), "{err}");
    let err = init(&dir.path().join("m"), &opts("Alpha")).expect_err("bad id");
    assert!(err.to_string().contains("member id"), "{err}");
    assert!(!dir.path().join("m").exists(), "nothing half-written");
    // A card must carry the address other members dial, never the unspecified one.
    let wild = InitOptions { peer_listen: format!("0.0.0.0:{}", base + 1), ..opts("golf") };
    let err = init(&dir.path().join("g"), &wild).expect_err("unspecified");
    assert!(err.to_string().contains("--advertise"), "{err}");
    assert!(!dir.path().join("g").exists(), "nothing half-written");
    let advertised = InitOptions { advertise: Some("node.golf.example:7101".into()), ..wild };
    let card = init(&dir.path().join("g"), &advertised).expect("advertised");
    assert_eq!(card.peer_endpoint, "node.golf.example:7101");

    let _blocker = std::net::TcpListener::bind(("127.0.0.1", base + 1)).expect("bind");
    let err = concord_node::run::bind(&format!("127.0.0.1:{}", base + 1)).await.expect_err("in use");
    assert!(err.to_string().contains("already in use"), "{err}");

    // Private keys are written for their owner only.
    use std::os::unix::fs::PermissionsExt as _;
    let nd = NodeDir::new(dir.path().join("n"));
    for p in [nd.member_key(), nd.tls_key()] {
        assert_eq!(
            std::fs::metadata(&p).expect("key").permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_added_replaced_and_removed_while_the_node_runs() {
    let fed = three_members().await;
    let bravo = NodeDir::new(&fed.member("bravo").dir);
    let a = fed.member("alpha");
    let count = || async {
        api_query(&a.local_url, &a.analyst_token, "SELECT count(*) AS n FROM bravo.cases").await.map(|r| {
            r.batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|c| c.value(0))
        })
    };
    assert_eq!(count().await.expect("runs"), Some(2));
    // Registering again does not replace it without a word.
    let file = write_cases(fed.dir.path(), "bravo", &[("north", Some(1)), ("east", Some(2)), ("west", None)]);
    let e = dataset_add(&bravo, "cases", &file, Some("cases"), Some("*")).await.expect_err("exists");
    assert!(e.to_string().contains("--replace"), "{e}");
    // An allow list with a typo names the members there are.
    let e = dataset_add(&bravo, "cases_2", &file, Some("cases"), Some("alpah"))
        .await
        .expect_err("no such member");
    assert!(e.to_string().contains("alpah") && e.to_string().contains("alpha, bravo, charlie"), "{e}");
    // A replacement keeps the policy: --allow, which would swap it for a default, is refused.
    let e = concord_node::node::admin::dataset_replace(&bravo, "cases", &file, Some("cases"), Some("alpha"))
        .await
        .expect_err("a new policy comes only from policy set");
    assert!(
        e.to_string().contains("keeps its policy") && e.to_string().contains("concord policy set"),
        "{e}"
    );
    // Replaced: says what changed, keeps the policy, and serves the new file at once.
    let (_, changes) =
        concord_node::node::admin::dataset_replace(&bravo, "cases", &file, Some("cases"), None)
            .await
            .expect("replaced");
    assert!(changes.iter().any(|c| c == "rows 2 -> 3"), "{changes:?}");
    assert!(changes.iter().any(|c| c.starts_with("policy kept (sha256:")), "{changes:?}");
    assert_eq!(count().await.expect("runs"), Some(3));
    // Removed: logged, and no longer served.
    concord_node::node::admin::dataset_remove(&bravo, "cases").await.expect("removed");
    assert!(concord_node::node::admin::dataset_remove(&bravo, "cases").await.is_err(), "gone already");
    assert!(count().await.is_err(), "bravo no longer serves cases");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_datasets_make_one_shared_schema_and_those_withheld_are_named() {
    // Catalogs read at every query, so that each change shows in the next one.
    let fed =
        crate::support::members_with(&["alpha", "bravo", "charlie"], |_, l| l.catalog_ttl_secs = 0).await;
    let bravo = NodeDir::new(&fed.member("bravo").dir);
    let a = fed.member("alpha");
    let total = || async {
        let r =
            api_query(&a.local_url, &a.analyst_token, "SELECT count(*) AS n FROM cases").await.expect("runs");
        let n = r.batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .map(|c| c.value(0));
        (n, r)
    };
    assert_eq!(total().await.0, Some(9), "3 + 2 + 4 rows");
    // A second dataset of bravo's in the same shared schema: part of it at once, said so at
    // registration, and named in the provenance beside the first.
    let older = fed.dir.path().join("data").join("bravo").join("cases_2024.csv");
    std::fs::write(&older, "region,days\nnorth,1\nwest,2\nwest,3\n").expect("write");
    let spec = concord_node::node::admin::DatasetSpec {
        name: "cases_2024",
        file: &older,
        shared_schema: Some("cases"),
        allow: Some("*"),
        csv: Default::default(),
        postgres: None,
        ballista: None,
    };
    let r = concord_node::node::admin::dataset_register(&bravo, &spec, false).await.expect("registered");
    assert!(
        r.notes.iter().any(|n| n.contains("2 datasets") && n.contains("cases, cases_2024")),
        "{:?}",
        r.notes
    );
    let (n, out) = total().await;
    assert_eq!(n, Some(12));
    let bravos: Vec<&str> =
        out.provenance.iter().filter(|c| c.member == "bravo").map(|c| c.dataset.as_str()).collect();
    assert_eq!(bravos, ["cases", "cases_2024"]);
    assert!(out.left_out.is_empty(), "{:?}", out.left_out);

    // A third that bravo shows everyone but releases to charlie only: alpha's answer leaves it
    // out and names it; charlie's answer counts it.
    let private = fed.dir.path().join("data").join("bravo").join("cases_private.csv");
    std::fs::write(&private, "region,days\neast,4\neast,5\n").expect("write");
    let spec = concord_node::node::admin::DatasetSpec {
        name: "cases_private",
        file: &private,
        shared_schema: Some("cases"),
        allow: Some("charlie"),
        csv: Default::default(),
        postgres: None,
        ballista: None,
    };
    concord_node::node::admin::dataset_register(&bravo, &spec, false).await.expect("registered");
    let record = bravo
        .open_state()
        .expect("state")
        .datasets()
        .expect("datasets")
        .into_iter()
        .find(|d| d.name == "cases_private")
        .expect("registered");
    let shown = record.policy.replace(
        r#"permit (principal, action in [Action::"aggregate", Action::"describe"], resource) when { [Member::"charlie"].contains(principal) };"#,
        "permit (principal, action == Action::\"describe\", resource);\npermit (principal, action == Action::\"aggregate\", resource) when { principal == Member::\"charlie\" };",
    );
    assert_ne!(shown, record.policy, "the default rule was found and replaced");
    let policy = fed.dir.path().join("cases_private.policy.toml");
    std::fs::write(&policy, shown).expect("write policy");
    concord_node::node::admin::policy_set(&bravo, "cases_private", &policy).expect("policy set");
    let (n, out) = total().await;
    assert_eq!(n, Some(12), "alpha's count leaves the withheld dataset out");
    assert_eq!(out.left_out.len(), 1, "{:?}", out.left_out);
    assert!(out.left_out[0].starts_with("bravo.cases_private ("), "{:?}", out.left_out);
    let c = fed.member("charlie");
    let r = api_query(&c.local_url, &c.analyst_token, "SELECT count(*) AS n FROM cases").await.expect("runs");
    assert_eq!(crate::peer_refusals::first_int(&r.batches), Some(14), "charlie may aggregate it");
    assert!(r.left_out.is_empty(), "{:?}", r.left_out);
    fed.stop().await;
}
