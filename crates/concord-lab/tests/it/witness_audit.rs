//! Witnessing (C2SP tlog-witness answers) and audits with bilateral reconciliation.

use base64::Engine as _;
use concord_log::checkpoint::Checkpoint;
use concord_log::{Note, NoteSigner};
use concord_node::net::client::{Response, peer_call};
use concord_node::net::protocol::{QueryRequest, new_request_id};
use concord_node::net::tls::TlsKeys;
use concord_node::store::config::NodeDir;

use crate::support::{Fed, audit, settle, three_members};

fn signer(fed: &Fed, id: &str) -> NoteSigner {
    let nd = NodeDir::new(&fed.member(id).dir);
    nd.load_signer(&nd.load_config().expect("config")).expect("signer")
}

async fn to_peer(fed: &Fed, from: &str, to: &str, path: &str, body: Vec<u8>) -> Response {
    let nd = NodeDir::new(&fed.member(from).dir);
    let keys = TlsKeys::load(&nd.tls_cert(), &nd.tls_key()).expect("keys");
    let card = NodeDir::new(&fed.member(to).dir).load_card().expect("card");
    peer_call(&keys, to, &card.peer_endpoint, &card.tls_pin, "POST", path, body).await.expect("sent")
}

fn add_checkpoint_body(old: u64, proof: &[[u8; 32]], note: &Note) -> Vec<u8> {
    let mut s = format!("old {old}\n");
    for h in proof {
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(h));
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&note.to_string());
    s.into_bytes()
}

fn checkpoint(origin: &str, size: u64, root: [u8; 32], key: &NoteSigner) -> Note {
    let mut n = Note::new(Checkpoint { origin: origin.into(), size, root, extensions: vec![] }.to_text())
        .expect("note");
    n.sign(key);
    n
}

/// Waits until every node has published a checkpoint of all its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_answer_per_the_spec_and_keep_fork_evidence() {
    let fed = three_members().await;
    settle(&fed).await;
    let alpha = signer(&fed, "alpha");
    let alpha_log = &fed.nodes[0].node.log;
    let size = alpha_log.size().expect("size");
    let good = checkpoint("test/alpha", size, alpha_log.root(size).expect("root"), &alpha);
    let path = "/v1/witness/add-checkpoint";

    // 409: the old size is not what bravo last cosigned; the body says what it is.
    let resp = to_peer(&fed, "alpha", "bravo", path, add_checkpoint_body(0, &[], &good)).await;
    assert_eq!(resp.status, 409);
    assert_eq!(resp.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/x.tlog.size"));
    assert_eq!(String::from_utf8_lossy(&resp.body), format!("{size}\n"));

    // 200 again for the same checkpoint, with a cosignature line.
    let resp = to_peer(&fed, "alpha", "bravo", path, add_checkpoint_body(size, &[], &good)).await;
    assert_eq!(resp.status, 200);
    assert!(String::from_utf8_lossy(&resp.body).starts_with("\u{2014} test/bravo/witness "));

    // 404: an origin bravo does not witness.
    let zulu = NoteSigner::generate("test/zulu").expect("key");
    let resp = to_peer(
        &fed,
        "alpha",
        "bravo",
        path,
        add_checkpoint_body(0, &[], &checkpoint("test/zulu", 0, concord_log::merkle::empty_root(), &zulu)),
    )
    .await;
    assert_eq!(resp.status, 404);
    // 403: alpha's origin, another key.
    let impostor = NoteSigner::generate("test/alpha").expect("key");
    let resp = to_peer(
        &fed,
        "charlie",
        "bravo",
        path,
        add_checkpoint_body(size, &[], &checkpoint("test/alpha", size, [7; 32], &impostor)),
    )
    .await;
    assert_eq!(resp.status, 403);
    // 400: malformed, and an old size beyond the checkpoint.
    assert_eq!(to_peer(&fed, "alpha", "bravo", path, b"nonsense".to_vec()).await.status, 400);
    assert_eq!(
        to_peer(&fed, "alpha", "bravo", path, add_checkpoint_body(size + 5, &[], &good)).await.status,
        400
    );
    // 422: a size-0 checkpoint must carry the empty root.
    let resp = to_peer(
        &fed,
        "alpha",
        "charlie",
        path,
        add_checkpoint_body(0, &[], &checkpoint("test/alpha", 0, [1; 32], &alpha)),
    )
    .await;
    assert_eq!(resp.status, 422);

    // 422: a fork, two roots for one size, signed by alpha's own key. Bravo keeps the evidence.
    let fork = checkpoint("test/alpha", size, [9; 32], &alpha);
    let resp = to_peer(&fed, "alpha", "bravo", path, add_checkpoint_body(size, &[], &fork)).await;
    assert_eq!(resp.status, 422, "{}", String::from_utf8_lossy(&resp.body));
    // More second roots add nothing: the evidence is kept once.
    for root in [[10; 32], [11; 32]] {
        let again = checkpoint("test/alpha", size, root, &alpha);
        let resp = to_peer(&fed, "alpha", "bravo", path, add_checkpoint_body(size, &[], &again)).await;
        assert_eq!(resp.status, 422);
    }
    // A checkpoint padded to grow the witness's database is refused before anything else.
    let mut padded = format!("old {size}\n\ntest/alpha\n{size}\n");
    padded.push_str(&"x".repeat(9000));
    assert_eq!(to_peer(&fed, "alpha", "bravo", path, padded.into_bytes()).await.status, 400);
    // A bad consistency proof to a larger size, even with alpha's genuine signature, sent by
    // anyone: 422, and evidence of nothing.
    let bigger = checkpoint("test/alpha", size + 3, [8; 32], &alpha);
    let resp = to_peer(&fed, "charlie", "bravo", path, add_checkpoint_body(size, &[[3; 32]], &bigger)).await;
    assert_eq!(resp.status, 422);

    let report = audit(&fed, "bravo", serde_json::json!({"members": ["alpha"]})).await;
    assert_eq!(report["ok"], false, "evidence fails the audit: {report}");
    let evidence = report["report"]["evidence"].as_array().expect("evidence");
    assert_eq!(evidence.len(), 1, "only the fork, signed twice by alpha, is evidence: {report}");
    assert_eq!(evidence[0]["origin"], "test/alpha");
    // An audit of another member does not show evidence about alpha.
    let report = audit(&fed, "bravo", serde_json::json!({"members": ["charlie"]})).await;
    assert_eq!(report["report"]["evidence"].as_array().map(Vec::len), Some(0), "{report}");
    let bravo_log = &fed.nodes[1].node.log;
    let entries = bravo_log.entries(0, bravo_log.size().expect("size")).expect("entries");
    assert!(
        entries.iter().any(|e| String::from_utf8_lossy(e).contains("\"kind\":\"fork_evidence\"")),
        "bravo logged the fork"
    );
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_verify_logs_and_find_missing_twins() {
    let fed = three_members().await;
    let a = fed.member("alpha").clone();
    concord_lab::demo::api_query(
        &a.local_url,
        &a.analyst_token,
        "SELECT region, count(*) FROM cases GROUP BY region",
    )
    .await
    .expect("query");
    settle(&fed).await;
    let report = audit(&fed, "alpha", serde_json::json!({"all": true})).await;
    assert_eq!(report["ok"], true, "{report}");
    let members = report["report"]["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["cosigners"].as_array().map(Vec::len), Some(2), "{m}");
    }

    // Bravo serves a request that alpha's node never logged (it was sent by hand): the audit
    // names it by request id.
    let request = QueryRequest {
        federation: "test".into(),
        request_id: new_request_id(),
        requester: "alpha".into(),
        owner: "bravo".into(),
        charter_version: 1,
        time: chrono::Utc::now().timestamp(),
        dataset: "cases".into(),
        purpose: "unlogged".into(),
        sql: "SELECT count(1) AS p0 FROM cases".into(),
    };
    let note = request.sign(&signer(&fed, "alpha")).expect("sign");
    assert_eq!(to_peer(&fed, "alpha", "bravo", "/v1/query", note.to_bytes()).await.status, 200);
    settle(&fed).await;
    let report = audit(&fed, "alpha", serde_json::json!({"members": ["bravo"]})).await;
    assert_eq!(report["ok"], false);
    let mismatches = report["report"]["mismatches"].as_array().expect("mismatches");
    assert_eq!(mismatches.len(), 1, "{report}");
    assert_eq!(mismatches[0]["request_id"], request.request_id.as_str());
    assert_eq!(mismatches[0]["owner"], "bravo");

    // A rollback: this node saw charlie's log larger than it is now.
    let charlie_origin = "test/charlie";
    let state = concord_node::store::tlog::AuditState {
        size: 10_000,
        root: vec![0; 32],
        peaks: vec![[0; 32]; 10_000u64.count_ones() as usize],
        checkpoint: vec![],
    };
    fed.nodes[0].node.log.store_audit_step(charlie_origin, "charlie", &state, &[]).expect("set");
    let report = audit(&fed, "alpha", serde_json::json!({"members": ["charlie"]})).await;
    let charlie = report["report"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["member"] == "charlie")
        .cloned()
        .expect("charlie");
    assert!(charlie["problems"][0].as_str().is_some_and(|p| p.contains("rollback")), "{charlie}");
    fed.stop().await;
}
