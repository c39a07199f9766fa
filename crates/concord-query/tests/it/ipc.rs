//! Arrow IPC from outside: every declared size is checked before anything is built from it.

use std::sync::Arc;

use concord_query::ipc::{IpcLimits, decode, decode_limited, decode_schema, encode, encode_schema};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

fn sample(rows: i64) -> (Arc<Schema>, Vec<u8>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g0", DataType::Utf8, true),
        Field::new("p0", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new((0..rows).map(|i| Some(format!("k{i}"))).collect::<StringArray>()),
            Arc::new((0..rows).map(Some).collect::<Int64Array>()),
        ],
    )
    .expect("batch");
    let bytes = encode(&schema, &[batch]).expect("encode");
    (schema, bytes)
}

#[test]
fn streams_round_trip_within_their_limits() {
    let (schema, bytes) = sample(100);
    let (got, batches) = decode(&bytes).expect("decodes");
    assert_eq!(got, schema);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    let only = encode_schema(&schema).expect("schema");
    assert_eq!(decode_schema(&only).expect("schema alone"), schema);
}

#[test]
fn every_cut_and_every_flipped_byte_is_an_error_or_a_valid_stream_never_a_panic() {
    let (_, bytes) = sample(20);
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0xff;
        let _ = decode(&b);
        let _ = decode_schema(&b);
    }
}

#[test]
fn declared_sizes_beyond_the_stream_or_the_limits_are_refused() {
    let (schema, bytes) = sample(100);
    // A metadata length far beyond the end.
    let mut b = bytes.clone();
    b[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    let err = decode(&b).expect_err("declared beyond the end").to_string();
    assert!(err.contains("beyond the stream's end"), "{err}");
    // A negative one.
    b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
    assert!(decode(&b).is_err());
    // More rows than the limit.
    let limits = IpcLimits { max_rows: 10, ..IpcLimits::RESULT };
    let err = decode_limited(&bytes, &limits).expect_err("too many rows").to_string();
    assert!(err.contains("more than 10 rows") || err.contains("a batch of 100 rows"), "{err}");
    // Batches where only a schema is expected (a catalog).
    let err = decode_schema(&bytes).expect_err("batches in a catalog").to_string();
    assert!(err.contains("only a schema"), "{err}");
    // Bytes after the end-of-stream marker.
    let mut b = encode_schema(&schema).expect("schema");
    b.extend([1, 2, 3]);
    assert!(decode_schema(&b).is_err());
    // Over the byte limit.
    let small = IpcLimits { max_bytes: 100, ..IpcLimits::RESULT };
    assert!(decode_limited(&bytes, &small).expect_err("too big").to_string().contains("over the limit"));
}

#[test]
fn streams_that_made_arrow_panic_are_refused_before_arrow_reads_them() {
    // What fuzzing found: arrow's reader panics on them (caught, but a panic all the same).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ipc_answer");
    let mut found = 0;
    for e in std::fs::read_dir(&dir).expect("corpus") {
        let path = e.expect("entry").path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("crash-")) {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                concord_query::ipc::check_stream(&bytes, &IpcLimits::RESULT).is_err(),
                "{} passes the check",
                path.display()
            );
            found += 1;
        }
    }
    assert!(found >= 3, "the crash inputs are in the corpus");
}

#[test]
fn decimals_beyond_their_declared_precision_are_refused_not_cast() {
    use datafusion::arrow::array::Decimal256Array;
    use datafusion::arrow::datatypes::i256;
    // A value near 2^252 declared as decimal256(1,0): a cast to decimal(25,2) would panic.
    let big = Decimal256Array::from(vec![Some(
        i256::from_i128(i128::MAX).wrapping_mul(i256::from_i128(i128::MAX)),
    )])
    .with_precision_and_scale(1, 0)
    .expect("parameters are valid");
    let schema = Arc::new(Schema::new(vec![Field::new("p0", DataType::Decimal256(1, 0), true)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(big)]).expect("batch");
    let bytes = encode(&schema, &[batch]).expect("encodes");
    let e = decode_limited(&bytes, &IpcLimits::RESULT).expect_err("out of its precision").to_string();
    assert!(e.contains("p0") && e.contains("precision"), "{e}");
}
