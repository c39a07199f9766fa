//! Fuzz targets: what every parser of outside bytes must survive. Each takes any bytes and
//! must return without panicking, and where it accepts, what it accepts must round-trip.
//! `fuzz/` runs them under libFuzzer (nightly, `cargo fuzz`); the scenario tests replay the
//! corpora in `fuzz/corpus/<target>/` on the stable toolchain.

use std::sync::{Arc, OnceLock};

use concord_log::checkpoint::Checkpoint;
use concord_log::tiles::{Tile, TlogProof};
use concord_log::{Note, NoteSigner, NoteVerifier};
use concord_node::net::protocol::{ReleaseDetails, ReleaseReceipt, SignedRequest};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemTable, TableProvider};

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus folder.
pub const TARGETS: [(&str, Target); 9] = [
    ("signed_note", signed_note),
    ("checkpoint", checkpoint),
    ("tlog_proof", tlog_proof),
    ("request_note", request_note),
    ("charter_text", charter_text),
    ("tile_path", tile_path),
    ("witness_body", witness_body),
    ("ipc_answer", ipc_answer),
    ("subquery_sql", subquery_sql),
];

/// A fixed key, so that signatures in the corpus can verify.
pub fn key() -> &'static NoteSigner {
    static KEY: OnceLock<NoteSigner> = OnceLock::new();
    KEY.get_or_init(|| {
        NoteSigner::from_seed("fuzz/alpha", [7; 32]).unwrap_or_else(|e| panic!("fixed key: {e}"))
    })
}

fn verifier() -> NoteVerifier {
    key().verifier()
}

/// Signed notes: an accepted note re-parses to the same text, and verifying it against the fixed
/// key must not panic.
pub fn signed_note(data: &[u8]) {
    if let Ok(note) = Note::parse(data) {
        let again =
            Note::parse(&note.to_bytes()).unwrap_or_else(|e| panic!("an accepted note re-parses: {e}"));
        assert_eq!(again.text(), note.text());
        let _ = note.verify(&[verifier()]);
    }
}

/// Checkpoint text: what parses round-trips; opening the bytes as a signed checkpoint under the
/// fixed key must not panic.
pub fn checkpoint(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cp) = Checkpoint::from_text(text)
    {
        assert_eq!(Checkpoint::from_text(&cp.to_text()).ok().as_ref(), Some(&cp), "round trip");
    }
    let _ = Checkpoint::open(data, &verifier());
}

/// tlog-proof text (receipts): a parsed proof is verified against its own extra entry and the
/// fixed key without panicking.
pub fn tlog_proof(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(p) = TlogProof::parse(text)
    {
        let entry = p.extra.clone().unwrap_or_default();
        let _ = p.verify(&entry, &verifier());
    }
}

/// Peer protocol notes: signed query requests and release details round-trip; release receipts
/// are verified and parsed without panicking.
pub fn request_note(data: &[u8]) {
    if let Ok(r) = SignedRequest::from_bytes(data) {
        let again = SignedRequest::from_bytes(&r.to_bytes()).ok().map(|a| a.request);
        assert_eq!(again.as_ref(), Some(&r.request), "round trip");
    }
    if let Ok(d) = ReleaseDetails::from_bytes(data) {
        assert_eq!(ReleaseDetails::from_bytes(&d.to_bytes()).ok().as_ref(), Some(&d), "round trip");
    }
    let _ = ReleaseReceipt::verify(data, &verifier());
    if let Ok(note) = Note::parse(data) {
        let _ = ReleaseReceipt::from_text(note.text());
    }
}

/// Signed charter text: a charter that parses has its genesis signatures checked and its signers
/// listed without panicking.
pub fn charter_text(data: &[u8]) {
    if let Ok(c) = concord_charter::SignedCharter::parse(data) {
        let _ = c.verify_genesis();
        let _ = c.signed_by();
    }
}

/// Tile paths of the log: an accepted path is canonical, and asking whether the tile exists at
/// assorted tree sizes or reading its hashes from an empty tree must not panic.
pub fn tile_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(t) = Tile::parse(path) {
        assert_eq!(t.path(), path, "an accepted path is canonical");
        for size in [0, 1, 255, 256, 70_000, u64::MAX] {
            let _ = t.exists_in(size);
        }
        let _ = t.hashes(&concord_log::merkle::MemoryTree::new());
    }
}

/// A witness's `add-checkpoint` request body: an accepted one has at most 63 proof hashes, and
/// its checkpoint note parses without panicking.
pub fn witness_body(data: &[u8]) {
    if let Ok(req) = concord_node::node::witness::parse_request(data) {
        assert!(req.proof.len() <= 63);
        if let Ok(note) = Note::parse(req.checkpoint) {
            let _ = Checkpoint::from_text(note.text());
        }
    }
}

/// Arrow IPC answers from owners: decoding the batches, or the schema alone, must not panic.
pub fn ipc_answer(data: &[u8]) {
    let _ = concord_query::ipc::decode(data);
    let _ = concord_query::ipc::decode_schema(data);
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

fn cases() -> Arc<dyn TableProvider> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, true),
        Field::new("days", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![Some("north"), Some("east"), None])),
            Arc::new(Int64Array::from(vec![Some(3), None, Some(5)])),
        ],
    )
    .unwrap_or_else(|e| panic!("batch: {e}"));
    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap_or_else(|e| panic!("table: {e}")))
}

/// The owner's check of a sub-query's SQL text: planned and checked, not run.
pub fn subquery_sql(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    if sql.len() > 4096 {
        return;
    }
    runtime().block_on(async {
        let Ok(ctx) = concord_query::limits::session(&Default::default()) else { return };
        let _ = concord_query::owner::plan_subquery(&ctx, "cases", cases(), sql).await;
    });
}
