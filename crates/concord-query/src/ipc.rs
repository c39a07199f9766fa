//! Arrow IPC stream encoding of results and schemas, as they cross the wire.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::QueryError;

/// Largest IPC stream accepted from a peer.
pub const MAX_IPC_BYTES: usize = 256 * 1024 * 1024;

/// Encodes batches (possibly none) as one Arrow IPC stream.
pub fn encode(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>, QueryError> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, schema).map_err(|e| QueryError::Execution(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| QueryError::Execution(e.to_string()))?;
    }
    w.finish().map_err(|e| QueryError::Execution(e.to_string()))?;
    drop(w);
    Ok(out)
}

/// Decodes an Arrow IPC stream; a truncated or malformed stream is an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    if bytes.len() > MAX_IPC_BYTES {
        return Err(QueryError::Execution(format!("result of {} bytes is over the limit", bytes.len())));
    }
    let bad = |e: datafusion::arrow::error::ArrowError| {
        QueryError::Execution(format!("malformed Arrow IPC stream: {e}"))
    };
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(bad)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    Ok((schema, batches))
}

/// Encodes a schema alone (an IPC stream with no batches).
pub fn encode_schema(schema: &Schema) -> Result<Vec<u8>, QueryError> {
    encode(schema, &[])
}

pub fn decode_schema(bytes: &[u8]) -> Result<SchemaRef, QueryError> {
    decode(bytes).map(|(s, _)| s)
}

/// An empty schema, for results of nothing.
pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}
