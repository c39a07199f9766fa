use concord_lab::demo::api_query;
use concord_log::{Note, NoteSignature, NoteSigner};
use concord_node::net::client::{Response, peer_call};
use concord_node::net::protocol::{QueryRequest, envelope, new_request_id};
use concord_node::net::tls::{TlsKeys, generate};
use concord_node::store::config::NodeDir;
use datafusion::arrow::array::{Array, Int64Array, RecordBatch};
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::support::{Fed, three_members};

pub fn first_int(batches: &[RecordBatch]) -> Option<i64> {
    let col = batches.first()?.column(0);
    let a = col.as_any().downcast_ref::<Int64Array>()?;
    (!a.is_null(0)).then(|| a.value(0))
}

fn keys(fed: &Fed, id: &str) -> TlsKeys {
    let nd = NodeDir::new(&fed.member(id).dir);
    TlsKeys::load(&nd.tls_cert(), &nd.tls_key()).expect("tls keys")
}

fn signer(fed: &Fed, id: &str) -> NoteSigner {
    let nd = NodeDir::new(&fed.member(id).dir);
    nd.load_signer(&nd.load_config().expect("config")).expect("signer")
}

fn request(from: &str, to: &str) -> QueryRequest {
    QueryRequest {
        federation: "test".into(),
        request_id: new_request_id(),
        requester: from.into(),
        owner: to.into(),
        charter_version: 1,
        time: chrono::Utc::now().timestamp(),
        dataset: "cases".into(),
        purpose: "testing".into(),
        sql: "SELECT count(1) AS p0 FROM cases".into(),
    }
}

/// Sends `body` to bravo over mutual TLS with `keys` as the client certificate.
async fn to_bravo(fed: &Fed, keys: &TlsKeys, body: Vec<u8>) -> Result<Response, concord_node::NodeError> {
    let card = NodeDir::new(&fed.member("bravo").dir).load_card().expect("card");
    peer_call(keys, "bravo", &card.peer_endpoint, &card.tls_pin, "POST", "/v1/query", body).await
}

fn expect_refusal(resp: Response, status: u16, code: &str) -> String {
    let (got_code, message) = resp.error_parts();
    assert_eq!((resp.status, got_code.as_str()), (status, code), "{message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_peer_request_is_refused_and_the_node_stays_up() {
    let fed = three_members().await;
    let alpha_keys = keys(&fed, "alpha");
    let alpha = signer(&fed, "alpha");

    a_genuine_request_works(&fed, &alpha_keys, &alpha).await;
    unknown_or_misnamed_members_refused(&fed, &alpha_keys, &alpha).await;
    a_server_with_another_key_refused(&fed, &alpha_keys).await;
    bad_signatures_and_tampering_refused(&fed, &alpha_keys, &alpha).await;
    replays_answered_again_or_refused(&fed, &alpha_keys, &alpha).await;
    stale_mismatched_and_malformed_refused(&fed, &alpha_keys, &alpha).await;

    // After all that, the federation still answers.
    let a = fed.member("alpha");
    let out =
        api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM cases").await.expect("query works");
    assert_eq!(first_int(&out.batches), Some(9));
    fed.stop().await;
}

/// A genuine request from alpha is answered, with a receipt.
async fn a_genuine_request_works(fed: &Fed, alpha_keys: &TlsKeys, alpha: &NoteSigner) {
    // A genuine request works.
    let ok = to_bravo(fed, alpha_keys, request("alpha", "bravo").sign(alpha).expect("sign").to_bytes())
        .await
        .expect("sent");
    assert_eq!(ok.status, 200, "{:?}", ok.error_parts());
    assert!(ok.headers.contains_key("concord-receipt"));
}

/// An unpinned client, a requester not in the charter, and one not matching its TLS key.
async fn unknown_or_misnamed_members_refused(fed: &Fed, alpha_keys: &TlsKeys, alpha: &NoteSigner) {
    // Unknown member: a certificate whose pin is in no charter cannot even finish the handshake.
    let stranger = generate("zulu").expect("identity");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("c.pem"), stranger.cert_pem).expect("write");
    std::fs::write(dir.path().join("k.pem"), stranger.key_pem).expect("write");
    let stranger_keys = TlsKeys::load(&dir.path().join("c.pem"), &dir.path().join("k.pem")).expect("load");
    let err = to_bravo(fed, &stranger_keys, request("alpha", "bravo").sign(alpha).expect("sign").to_bytes())
        .await
        .expect_err("an unpinned client is refused");
    assert!(err.to_string().contains("bravo"), "{err}");

    // A requester that is not in the charter, over a member's connection.
    let zulu = NoteSigner::generate("test/zulu").expect("key");
    let resp = to_bravo(fed, alpha_keys, request("zulu", "bravo").sign(&zulu).expect("sign").to_bytes())
        .await
        .expect("sent");
    let msg = expect_refusal(resp, 401, "unknown_member");
    assert!(msg.contains("zulu"), "{msg}");

    // A member claiming to be another member than its TLS key says.
    let charlie = signer(fed, "charlie");
    let resp =
        to_bravo(fed, alpha_keys, request("charlie", "bravo").sign(&charlie).expect("sign").to_bytes())
            .await
            .expect("sent");
    expect_refusal(resp, 401, "unknown_member");
}

/// A server answering with another member's key is refused by the client.
async fn a_server_with_another_key_refused(fed: &Fed, alpha_keys: &TlsKeys) {
    // Wrong TLS key on the server side: the client expects charlie's pin at bravo's address.
    let bravo_card = NodeDir::new(&fed.member("bravo").dir).load_card().expect("card");
    let charlie_card = NodeDir::new(&fed.member("charlie").dir).load_card().expect("card");
    let err = peer_call(
        alpha_keys,
        "bravo",
        &bravo_card.peer_endpoint,
        &charlie_card.tls_pin,
        "GET",
        "/v1/catalog",
        vec![],
    )
    .await
    .expect_err("a server with another key is refused");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
}

/// Bad signatures, a body changed after signing and a note changed after signing are refused.
async fn bad_signatures_and_tampering_refused(fed: &Fed, alpha_keys: &TlsKeys, alpha: &NoteSigner) {
    // Bad signature: an impostor key under alpha's name, and a known key id with garbage.
    let impostor = NoteSigner::generate("test/alpha").expect("key");
    let resp = to_bravo(fed, alpha_keys, request("alpha", "bravo").sign(&impostor).expect("sign").to_bytes())
        .await
        .expect("sent");
    expect_refusal(resp, 401, "bad_signature");
    let genuine = request("alpha", "bravo").sign(alpha).expect("sign");
    let mut garbage = Note::new(genuine.note.text()).expect("note");
    garbage.add_signature(NoteSignature {
        name: "test/alpha".into(),
        key_id: alpha.key_id(),
        signature: vec![7; 64],
    });
    let resp = to_bravo(fed, alpha_keys, envelope(&garbage, &genuine.details)).await.expect("sent");
    expect_refusal(resp, 401, "bad_signature");

    // Tampered body: the SQL is changed after signing. The signed note commits to the details
    // (salt, purpose, SQL) by their hash, so other details are not the request's.
    let details = String::from_utf8(genuine.details.clone()).expect("utf8");
    let tampered = details.replace("SELECT count(1) AS p0 FROM cases", "SELECT max(days) AS p0 FROM cases");
    assert_ne!(details, tampered);
    let resp = to_bravo(fed, alpha_keys, envelope(&genuine.note, tampered.as_bytes())).await.expect("sent");
    let message = expect_refusal(resp, 400, "bad_request");
    assert!(message.contains("not those the note commits to"), "{message}");
    // And a note changed after signing (another dataset) fails its signature.
    let mut moved = Note::new(genuine.note.text().replace("dataset cases", "dataset people")).expect("note");
    for sig in genuine.note.signatures() {
        moved.add_signature(sig.clone());
    }
    let resp = to_bravo(fed, alpha_keys, envelope(&moved, &genuine.details)).await.expect("sent");
    expect_refusal(resp, 401, "bad_signature");
}

/// A replayed release is answered with the same bytes and receipt; a replayed refusal is refused.
async fn replays_answered_again_or_refused(fed: &Fed, alpha_keys: &TlsKeys, alpha: &NoteSigner) {
    // Replay of a release: the same bytes and receipt again, not a new access.
    let note = request("alpha", "bravo").sign(alpha).expect("sign").to_bytes();
    let first = to_bravo(fed, alpha_keys, note.clone()).await.expect("sent");
    assert_eq!(first.status, 200);
    let again = to_bravo(fed, alpha_keys, note).await.expect("sent");
    assert_eq!(again.status, 200);
    assert_eq!(
        (again.body, again.headers.get("concord-receipt")),
        (first.body, first.headers.get("concord-receipt"))
    );
    // Replay of a refusal: refused as a replay.
    let mut r = request("alpha", "bravo");
    r.sql = "SELECT region AS g0 FROM cases".into();
    let note = r.sign(alpha).expect("sign").to_bytes();
    let resp = to_bravo(fed, alpha_keys, note.clone()).await.expect("sent");
    expect_refusal(resp, 403, "policy_refused");
    let resp = to_bravo(fed, alpha_keys, note).await.expect("sent");
    expect_refusal(resp, 409, "replayed_request");
}

/// Stale and future times, another charter version, bad bodies and a sub-query of no known shape.
async fn stale_mismatched_and_malformed_refused(fed: &Fed, alpha_keys: &TlsKeys, alpha: &NoteSigner) {
    // Stale and future times.
    for delta in [-600, 600] {
        let mut r = request("alpha", "bravo");
        r.time += delta;
        let resp = to_bravo(fed, alpha_keys, r.sign(alpha).expect("sign").to_bytes()).await.expect("sent");
        expect_refusal(resp, 408, "stale_request");
    }

    // Another charter version.
    let mut r = request("alpha", "bravo");
    r.charter_version = 2;
    let resp = to_bravo(fed, alpha_keys, r.sign(alpha).expect("sign").to_bytes()).await.expect("sent");
    expect_refusal(resp, 409, "charter_mismatch");

    // Malformed and oversized bodies.
    let resp = to_bravo(fed, alpha_keys, b"not a note".to_vec()).await.expect("sent");
    let message = expect_refusal(resp, 400, "bad_request");
    assert!(message.contains("not a note with its details"), "{message}");
    let resp = to_bravo(fed, alpha_keys, vec![b'x'; 600 * 1024]).await.expect("sent");
    assert_eq!(resp.status, 413);

    // A sub-query that is neither a partial aggregate nor a row read, correctly signed: the
    // owner's check refuses it.
    let mut r = request("alpha", "bravo");
    r.sql = "SELECT count(1) + 1 AS p0 FROM cases".into();
    let resp = to_bravo(fed, alpha_keys, r.sign(alpha).expect("sign").to_bytes()).await.expect("sent");
    expect_refusal(resp, 400, "subquery_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_provenance_name_each_owner() {
    let fed = three_members().await;
    let a = fed.member("alpha");
    let out = api_query(&a.local_url, &a.analyst_token, "SELECT region, count(*) AS n, sum(days) AS d, avg(days) AS m FROM cases GROUP BY region ORDER BY region")
        .await
        .expect("query");
    let by: Vec<_> = out
        .provenance
        .iter()
        .map(|c| (c.member.as_str(), c.rows_scanned, c.receipt_digest.is_some()))
        .collect();
    assert_eq!(by, [("alpha", Some(3), false), ("bravo", Some(2), true), ("charlie", Some(4), true)]);
    let text = pretty_format_batches(&out.batches).expect("format").to_string().replace(' ', "");
    for line in ["|east|2|8|4.0|", "|north|3|13|6.5|", "|south|3|11|3.6666666666666665|", "|west|1|||"] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    fed.stop().await;
}
