//! Hostile members and careless analysts, one test per way they were seen to crash, stall,
//! mislead or read through a node. Each acts as the attacker would (an impostor with a member's
//! own keys, crafted notes and answers, a member that hangs, an analyst sending bombs) and then
//! checks that every node still answers, that nothing leaked, and that audits stay true.

use std::sync::Arc;

use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_lab::demo::{DemoMember, api_query};
use concord_log::Note;
use concord_log::checkpoint::Checkpoint;
use concord_node::net::client::local_call;
use concord_node::net::protocol::{ReleaseDetails, ReleaseReceipt, SignedRequest, commitment, result_digest};
use concord_node::store::entry::LogEntry;
use concord_query::dataset::shared_arrow_schema;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc as fb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Fed, Impostor, audit, cases_schema, eventually, members_with, settle, three_members};

fn rows(r: &concord_lab::demo::ApiResult) -> usize {
    r.batches.iter().map(|b| b.num_rows()).sum()
}

/// Every running member still answers its analysts.
async fn all_answer(fed: &Fed) {
    for n in &fed.nodes {
        let m = fed.member(&n.node.cfg.member);
        let r = api_query(&m.local_url, &m.analyst_token, "SELECT count(*) AS n FROM local.cases")
            .await
            .unwrap_or_else(|e| panic!("{} does not answer: {e}", m.id));
        assert_eq!(rows(&r), 1, "{}", m.id);
    }
}

/// The entries of a member's log.
fn entries(fed: &Fed, id: &str) -> Vec<LogEntry> {
    let i = fed.members.iter().position(|m| m.id == id).expect("member");
    let log = &fed.nodes[i].node.log;
    let raw = log.entries(0, log.size().expect("size")).expect("entries");
    raw.iter().map(|e| LogEntry::from_bytes(e).expect("a Concord entry")).collect()
}

/// The decisions the owner logged for a request, each with the reason the requester was told:
/// a note the owner keeps (its log holds only the decision's code).
fn served(fed: &Fed, owner: &str, request_id: &str) -> Vec<(String, Option<String>)> {
    let i = fed.members.iter().position(|m| m.id == owner).expect("member");
    let reason = fed.nodes[i]
        .node
        .state
        .notes(request_id, "alpha", concord_node::store::state::NoteKind::Reason)
        .expect("notes")
        .map(|r| String::from_utf8_lossy(&r).into_owned());
    entries(fed, owner)
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::AccessServed { request_id: id, decision, notes, .. } if id == request_id => {
                assert!(notes.is_none(), "the log holds no notes unless the charter makes them public");
                Some((decision.to_string(), reason.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_bombs_are_refused_naming_the_limit_and_every_node_answers() {
    let fed = three_members().await;
    let a = fed.member("alpha").clone();
    for (sql, says) in [
        // Finding 1, as it was sent.
        (
            "SELECT max(length(repeat(arrow_cast(region,'LargeUtf8'),1000000000000))) AS m FROM cases",
            "at most 16",
        ),
        ("SELECT max(length(lpad(region, 100000000))) FROM cases", "lpad"),
        ("SELECT count(*) FROM local.cases WHERE length(repeat(region, days)) > 0", "repeat(text, n)"),
        ("SELECT max(length(replace(region, region, 'x'))) FROM local.cases", "replace"),
        // Doubling through views: each layer is small, together they are not.
        (
            "WITH a AS (SELECT concat(region, region) r FROM local.cases), b AS (SELECT concat(r, r) r FROM a), \
             c AS (SELECT concat(r, r) r FROM b), d AS (SELECT concat(r, r) r FROM c), \
             e AS (SELECT concat(r, r) r FROM d) SELECT max(length(r)) FROM e",
            "at most 16",
        ),
        (
            "WITH RECURSIVE t(x) AS (SELECT 'a' UNION ALL SELECT concat(x, x) FROM t) SELECT count(*) FROM t",
            "recursive",
        ),
        ("SELECT count(input_file_name()) FROM cases", "allow-list"),
    ] {
        let err = api_query(&a.local_url, &a.analyst_token, sql).await.expect_err(sql).to_string();
        assert!(err.contains(says), "{sql}: {err}");
    }
    // Bounded functions within their bounds work.
    let ok = api_query(
        &a.local_url,
        &a.analyst_token,
        "SELECT lpad(region, 8, '.') AS r, count(*) AS n FROM cases GROUP BY lpad(region, 8, '.') ORDER BY r",
    )
    .await
    .expect("a bounded pad");
    assert_eq!(rows(&ok), 4);

    // The same bomb sent straight to an owner by a member: refused by the owner's own check,
    // and logged with its decision.
    let alpha = Impostor::of(&fed, "alpha");
    let request =
        alpha.request("bravo", "SELECT max(length(repeat(region, 1000000000000))) AS p0 FROM cases");
    let resp = alpha
        .send(&fed, "bravo", "POST", "/v1/query", request.sign(&alpha.signer).expect("sign").to_bytes())
        .await;
    assert_eq!(
        (resp.status, resp.error_parts().0.as_str()),
        (400, "subquery_refused"),
        "{:?}",
        resp.error_parts()
    );
    let decisions = served(&fed, "bravo", &request.request_id);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].0, "refused:subquery_refused");
    all_answer(&fed).await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_errors_carry_no_value_across_the_border() {
    let fed = three_members().await;
    let alpha = Impostor::of(&fed, "alpha");
    // Finding 6: a cast that fails on a row's value.
    let sql = "SELECT sum(CAST(concat(region, '|', region) AS BIGINT)) AS p0 FROM cases";
    let request = alpha.request("bravo", sql);
    let resp = alpha
        .send(&fed, "bravo", "POST", "/v1/query", request.sign(&alpha.signer).expect("sign").to_bytes())
        .await;
    let (code, message) = resp.error_parts();
    assert_eq!(code, "execution_failed", "{message}");
    for value in ["north", "east"] {
        assert!(!message.contains(value), "a value of bravo's data crossed the border: {message}");
    }
    assert!(message.contains("Cast error"), "the class of the error is told: {message}");
    // The owner logged the failure, with exactly what the requester was told.
    let decisions = served(&fed, "bravo", &request.request_id);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].0, "failed:execution_failed");
    assert!(
        decisions[0].1.as_deref().is_some_and(|r| r.contains("detail stays with bravo")),
        "{decisions:?}"
    );
    // An analyst asking through their node gets the same data-free answer.
    let a = fed.member("alpha");
    let err = api_query(
        &a.local_url,
        &a.analyst_token,
        "SELECT sum(CAST(concat(region, '|') AS BIGINT)) FROM bravo.cases",
    )
    .await
    .expect_err("fails")
    .to_string();
    assert!(err.contains("bravo") && !err.contains("north") && !err.contains("east"), "{err}");
    all_answer(&fed).await;
    fed.stop().await;
}

/// An Arrow IPC stream whose one batch claims LZ4 compression with a 2^62-byte uncompressed
/// buffer: what a hostile member answers to make a requester allocate without bound.
fn compressed_bomb(schema: &Schema) -> Vec<u8> {
    let mut out = concord_query::ipc::encode_schema(schema).expect("schema");
    out.truncate(out.len() - 8);
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let nodes = b.create_vector(&[fb::FieldNode::new(1, 0)]);
    let buffers = b.create_vector(&[fb::Buffer::new(0, 0), fb::Buffer::new(0, 16)]);
    let compression = {
        let mut c = fb::BodyCompressionBuilder::new(&mut b);
        c.add_codec(fb::CompressionType::LZ4_FRAME);
        c.add_method(fb::BodyCompressionMethod::BUFFER);
        c.finish()
    };
    let batch = {
        let mut r = fb::RecordBatchBuilder::new(&mut b);
        r.add_length(1);
        r.add_nodes(nodes);
        r.add_buffers(buffers);
        r.add_compression(compression);
        r.finish()
    };
    let message = {
        let mut m = fb::MessageBuilder::new(&mut b);
        m.add_version(fb::MetadataVersion::V5);
        m.add_header_type(fb::MessageHeader::RecordBatch);
        m.add_header(batch.as_union_value());
        m.add_bodyLength(16);
        m.finish()
    };
    b.finish(message, None);
    let meta = b.finished_data();
    let pad = (8 - meta.len() % 8) % 8;
    out.extend(0xFFFF_FFFFu32.to_le_bytes());
    out.extend(i32::try_from(meta.len() + pad).expect("small").to_le_bytes());
    out.extend(meta);
    out.extend(vec![0u8; pad]);
    out.extend((1i64 << 62).to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(0xFFFF_FFFFu32.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_answering_ipc_bombs_and_huge_logs_is_refused_by_name() {
    let mut fed = three_members().await;
    let charlie = Arc::new(Impostor::of(&fed, "charlie"));
    fed.nodes.remove(2).stop().await;
    let app = bombing_app(&charlie);
    let _stop = charlie.stand_in(&fed, app).await;
    let a = fed.member("alpha").clone();

    queries_over_charlie_name_it(&a).await;
    a_bomb_under_a_valid_receipt_is_refused(&fed).await;
    a_huge_log_costs_nothing_to_audit(&fed).await;
    all_answer(&fed).await;
    fed.stop().await;
}

/// Charlie's stand-in: a catalog, answers and a log checkpoint that are each a bomb.
fn bombing_app(charlie: &Arc<Impostor>) -> axum::Router {
    let shared = shared_arrow_schema(&cases_schema());
    // Findings 2 and 3: a catalog whose schema is followed by a compressed batch bomb, answers
    // that are bombs under a valid receipt, a log that claims 2^56 entries.
    let bomb = compressed_bomb(&Schema::new(vec![Field::new("p0", DataType::Int64, true)]));
    let catalog_bomb = compressed_bomb(&shared);
    axum::Router::new()
        .route(
            "/v1/catalog",
            get(move || {
                let body = serde_json::json!({ "datasets": [{
                    "name": "cases", "shared_schema": "cases", "schema_ipc": B64.encode(&catalog_bomb)
                }]});
                async move { axum::Json(body) }
            }),
        )
        .route("/v1/query", bombs_under_receipts(charlie.clone(), bomb))
        .route(
            "/v1/log/checkpoint",
            get({
                let c = charlie.clone();
                move || {
                    let cp = Checkpoint {
                        origin: "test/charlie".into(),
                        size: 1 << 56,
                        root: [7; 32],
                        extensions: vec![],
                    };
                    let mut note = Note::new(cp.to_text()).expect("note");
                    note.sign(&c.signer);
                    async move { note.to_string() }
                }
            }),
        )
}

/// `POST /v1/query` answered with `answer` under a receipt that verifies, signed with `c`'s key.
fn bombs_under_receipts(c: Arc<Impostor>, answer: Vec<u8>) -> axum::routing::MethodRouter {
    post(move |body: axum::body::Bytes| {
        let (c, answer) = (c.clone(), answer.clone());
        async move {
            let r = SignedRequest::from_bytes(&body).expect("request");
            let details = ReleaseDetails {
                salt: r.salt.clone(),
                result_sha256: result_digest(&r.salt, &answer),
                rows_scanned: Some(1),
                groups_released: 1,
                release: Default::default(),
            }
            .to_bytes();
            let receipt = ReleaseReceipt {
                federation: r.request.federation.clone(),
                request_id: r.request.request_id.clone(),
                owner: "charlie".into(),
                requester: r.request.requester.clone(),
                dataset: r.request.dataset.clone(),
                request_note: r.note_digest(),
                policy: commitment(b"policy"),
                cost: "none".into(),
                release: commitment(&details),
                log_index: 0,
            };
            let signed = receipt.sign(&c.signer).expect("sign");
            (
                [
                    ("concord-receipt", B64.encode(signed.to_bytes())),
                    ("concord-release-details", B64.encode(&details)),
                ],
                answer,
            )
        }
    })
}

/// A query not touching charlie is unaffected; one over the shared schema names it, or skips it.
async fn queries_over_charlie_name_it(a: &DemoMember) {
    // A query that does not touch charlie is not affected at all.
    api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM bravo.cases").await.expect("bravo only");
    // One over the shared schema names charlie; a partial one goes on without it, naming it.
    let err =
        api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM cases").await.expect_err("bomb");
    assert!(err.to_string().contains("charlie"), "{err}");
    let body = serde_json::json!({"sql": "SELECT count(*) AS n FROM cases", "partial": true});
    let resp = local_call(&a.local_url, "POST", "/v1/query", Some(&a.analyst_token), Some(&body))
        .await
        .expect("sent");
    assert_eq!(resp.status, 200, "{:?}", resp.error_parts());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(v["missing"], serde_json::json!(["charlie"]));
}

/// An answer that is a bomb, under a receipt that verifies, is refused naming charlie.
async fn a_bomb_under_a_valid_receipt_is_refused(fed: &Fed) {
    // An answer that is a bomb, under a receipt that verifies, is refused naming charlie.
    let alpha_node = &fed.nodes[0].node;
    let part = concord_query::Part { owner: "charlie".into(), dataset: "cases".into() };
    let err = alpha_node
        .request_partial(&part, "SELECT count(1) AS p0 FROM cases", "testing")
        .await
        .expect_err("bomb refused");
    assert_eq!(err.code().as_str(), "peer_error");
    assert!(err.to_string().contains("charlie") && err.to_string().contains("bad_answer"), "{err}");
    assert!(err.to_string().contains("compressed"), "{err}");
}

/// An audit of a log claiming 2^56 entries costs nothing and says so.
async fn a_huge_log_costs_nothing_to_audit(fed: &Fed) {
    // An audit of a log claiming 2^56 entries costs nothing and says so.
    let report = audit(fed, "alpha", serde_json::json!({"members": ["charlie"]})).await;
    assert_eq!(report["ok"], false);
    let problems = report["report"]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member"] == "charlie"))
        .map(|m| m["problems"].to_string())
        .unwrap_or_default();
    assert!(problems.contains("72057594037927936 new entries"), "{report}");
}

/// Queries an analyst sends faster than owners admit are paced by the requester's node, not
/// failed: an owner's `429 rate_limited` says when to retry, and the node retries within the
/// query's deadline. The owners' counted refusals show that pacing took place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_faster_than_owners_admit_is_paced_not_failed() {
    let fed = members_with(&["alpha", "bravo", "charlie"], |id, l| {
        if id != "alpha" {
            l.peer_requests_per_sec = 4;
            l.peer_burst = 2;
        }
    })
    .await;
    let a = fed.member("alpha");
    let sql = "SELECT region, count(*) AS n FROM cases GROUP BY region ORDER BY region";
    let first = api_query(&a.local_url, &a.analyst_token, sql).await.expect("the first query");
    let queries = (0..6).map(|_| api_query(&a.local_url, &a.analyst_token, sql));
    for r in futures::future::join_all(queries).await {
        let r = r.expect("a paced query is answered, not refused as rate_limited");
        assert_eq!(rows(&r), rows(&first));
    }
    let mut limited = 0;
    for owner in ["bravo", "charlie"] {
        let i = fed.members.iter().position(|m| m.id == owner).expect("member");
        concord_node::node::witness::log_refusals(&fed.nodes[i].node).await.expect("logged");
        limited += entries(&fed, owner)
            .iter()
            .filter_map(|e| match e {
                LogEntry::RefusalsCounted { counts, .. } => Some(
                    counts
                        .iter()
                        .filter(|c| c.member == "alpha" && c.code == "rate_limited")
                        .map(|c| c.count)
                        .sum::<u64>(),
                ),
                _ => None,
            })
            .sum::<u64>();
    }
    assert!(limited > 0, "the owners refused some calls, which alpha's node paced and retried");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_neither_grow_the_log_nor_mask_a_hidden_access() {
    let fed = members_with(&["alpha", "bravo", "charlie"], |id, l| {
        if id == "bravo" {
            l.peer_requests_per_sec = 1;
            l.peer_burst = 8;
        }
    })
    .await;
    let alpha = Impostor::of(&fed, "alpha");
    // Finding 4: a request sent by hand (alpha's node never logs it), then replayed.
    let request = alpha.request("bravo", "SELECT count(1) AS p0 FROM cases");
    let note = request.sign(&alpha.signer).expect("sign").to_bytes();
    let size_before = entries(&fed, "bravo").len();
    let first = alpha.send(&fed, "bravo", "POST", "/v1/query", note.clone()).await;
    assert_eq!(first.status, 200);
    // Finding 8: a replay gets the first release again and is not logged; past the burst the
    // member is rate-limited, and that is counted, not logged one by one.
    let mut codes = Vec::new();
    for _ in 0..20 {
        let r = alpha.send(&fed, "bravo", "POST", "/v1/query", note.clone()).await;
        if r.status == 200 {
            assert_eq!(r.body, first.body, "a replay gets the same release");
        }
        codes.push(r.error_parts().0);
    }
    assert!(codes.iter().any(|c| c == "http_200"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    let limited = codes.iter().filter(|c| *c == "rate_limited").count() as u64;
    assert_eq!(served(&fed, "bravo", &request.request_id).len(), 1, "one access, one entry");
    concord_node::node::witness::log_refusals(&fed.nodes[1].node).await.expect("logged");
    let all = entries(&fed, "bravo");
    assert!(
        all.len() <= size_before + 2,
        "the log grew by the access and one count: {}",
        all.len() - size_before
    );
    let counted: u64 = all
        .iter()
        .filter_map(|e| match e {
            LogEntry::RefusalsCounted { counts, .. } => {
                Some(counts.iter().filter(|c| c.member == "alpha").map(|c| c.count).sum::<u64>())
            }
            _ => None,
        })
        .sum();
    assert_eq!(counted, limited, "every rate-limited replay is counted");

    // The access stays visible to the audit, whatever came after it under the same id.
    settle(&fed).await;
    let report = audit(&fed, "alpha", serde_json::json!({"members": ["bravo"]})).await;
    assert_eq!(report["ok"], false, "{report}");
    let mismatches = report["report"]["mismatches"].as_array().expect("mismatches");
    assert!(
        mismatches.iter().any(|m| m["request_id"] == request.request_id.as_str()
            && m["problem"].as_str().is_some_and(|p| p.contains("hidden access"))),
        "{report}"
    );
    all_answer(&fed).await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_at_the_edges_of_i64_and_high_tile_levels_are_refused() {
    let fed = three_members().await;
    let alpha = Impostor::of(&fed, "alpha");
    // Finding 10: a request time near the smallest 64-bit integer is stale, not an overflow.
    for time in [i64::MIN, i64::MIN + 1, i64::MAX] {
        let mut r = alpha.request("bravo", "SELECT count(1) AS p0 FROM cases");
        r.time = time;
        let resp = alpha
            .send(&fed, "bravo", "POST", "/v1/query", r.sign(&alpha.signer).expect("sign").to_bytes())
            .await;
        assert_eq!((resp.status, resp.error_parts().0.as_str()), (408, "stale_request"), "{time}");
    }
    // Tile levels 32 to 63 once served level 0's tiles, marked immutable.
    settle(&fed).await;
    let a = fed.member("alpha");
    for level in [8, 32, 40, 63] {
        let path = format!("/v1/log/tile/{level}/000.p/1");
        let resp = local_call(&a.local_url, "GET", &path, Some(&a.auditor_token), None).await.expect("sent");
        assert_eq!(resp.status, 404, "{path}");
        let resp = alpha.send(&fed, "bravo", "GET", &path, vec![]).await;
        assert_eq!(resp.status, 404, "{path} on the peer listener");
    }
    all_answer(&fed).await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_and_the_listeners_keep_serving() {
    let fed = members_with(&["alpha", "bravo", "charlie"], |id, l| {
        if id == "bravo" {
            l.max_connections_per_address = 2;
        } else {
            l.max_connections = 4;
            l.header_timeout_secs = 1;
        }
    })
    .await;
    // No single address takes every slot: bravo serves two connections from one address, lets
    // two more wait for a slot of that address, and closes a fifth at once.
    let b = fed.member("bravo").local_url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(b.as_str()).await.expect("connects"));
    }
    let mut fifth = tokio::net::TcpStream::connect(b.as_str()).await.expect("connects");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), fifth.read(&mut buf))
        .await
        .expect("the fifth connection is closed at once");
    assert_eq!(n.unwrap_or(0), 0);
    // Waiting ones are served as soon as served ones end (members behind one address, or
    // fifty on loopback, queue instead of being reset): once two of the four end, whichever
    // two were served, the other two are served.
    drop(held.drain(..2).collect::<Vec<_>>());
    for mut waiting in held.drain(..) {
        waiting.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("writes");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiting.read(&mut buf))
            .await
            .expect("a waiting connection is served")
            .expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
    let a = fed.member("alpha").clone();
    let local = a.local_url.trim_start_matches("http://").to_owned();
    let peer = Impostor::of(&fed, "alpha").card.peer_endpoint;
    // Finding 7: more clients than the listener takes, each stalled mid-header (local) or
    // before its TLS handshake (peer).
    let mut stalled = Vec::new();
    for addr in [&local, &peer] {
        for _ in 0..6 {
            let mut s = tokio::net::TcpStream::connect(addr.as_str()).await.expect("connects");
            if addr == &local {
                s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow:").await.expect("writes");
            }
            stalled.push(s);
        }
    }
    // A client without a token is answered before it sends the body it announced.
    let mut s = tokio::net::TcpStream::connect(local.as_str()).await.expect("connects");
    s.write_all(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
        .await
        .expect("writes");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&buf[..n]));
    drop(s);
    // The listeners still answer: the stalled ones are dropped after the header deadline.
    let status =
        local_call(&a.local_url, "GET", "/v1/status", Some(&a.analyst_token), None).await.expect("answers");
    assert_eq!(status.status, 200);
    let r = api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM cases")
        .await
        .expect("federated query");
    assert_eq!(rows(&r), 1);
    for mut s in stalled {
        let mut buf = [0u8; 256];
        // Closed by the node: end of stream (or a 408), never a connection held forever.
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf))
            .await
            .expect("the node closed the stalled connection");
        assert!(n.map(|n| n == 0 || buf.starts_with(b"HTTP/1.1 408")).unwrap_or(true));
    }
    all_answer(&fed).await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_hangs_slows_nobody_else() {
    let ids = ["alpha", "bravo", "charlie", "delta"];
    let mut fed = members_with(&ids, |_, l| {
        l.catalog_timeout_secs = 1;
        l.peer_timeout_secs = 2;
        l.witness_timeout_secs = 2;
    })
    .await;
    let delta = Impostor::of(&fed, "delta");
    fed.nodes.remove(3).stop().await;
    let _hung = delta.hang().await;
    let a = fed.member("alpha").clone();
    // Finding 9: queries that do not touch delta are not affected.
    api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM local.cases").await.expect("local");
    api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM bravo.cases").await.expect("bravo only");
    // Those that do fail naming it, or go on without it.
    let err = api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM cases")
        .await
        .expect_err("delta hangs");
    assert!(err.to_string().contains("delta"), "{err}");
    let body = serde_json::json!({"sql": "SELECT count(*) AS n FROM cases", "partial": true});
    let resp = local_call(&a.local_url, "POST", "/v1/query", Some(&a.analyst_token), Some(&body))
        .await
        .expect("sent");
    assert_eq!(resp.status, 200, "{:?}", resp.error_parts());
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    assert_eq!(v["missing"], serde_json::json!(["delta"]));
    // Checkpoints go on: two of the three witnesses are the quorum, and they answer.
    let log = fed.nodes[0].node.log.clone();
    let size = log.size().expect("size");
    eventually("alpha publishes without delta's cosignature", || {
        let log = log.clone();
        async move { log.published_checkpoint().ok().flatten().is_some_and(|(s, _)| s >= size) }
    })
    .await;
    all_answer(&fed).await;
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_others_can_read_stop_the_node_and_the_database_is_private() {
    let fed = three_members().await;
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    let dir = fed.member("bravo").dir.clone();
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f} of a running node");
    }
    let fed_dir = fed.stop().await;
    // Finding 11: a key file others may read stops the node, saying how to fix it.
    for key in ["member.key", "witness.key", "tls.key"] {
        let path = dir.join("keys").join(key);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = match concord_node::run::start(&concord_node::store::config::NodeDir::new(&dir)).await {
            Ok(_) => panic!("started with {key} readable by others"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("too open") && err.contains("chmod 600"), "{key}: {err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    drop(fed_dir);
}
