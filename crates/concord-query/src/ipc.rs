//! Arrow IPC stream encoding of results and schemas, as they cross the wire.
//!
//! Bytes from another member are read only after a walk over the stream's framing that bounds
//! everything a message declares: its metadata and body lengths against the bytes actually
//! there, its buffers against its body, its rows and columns against [`IpcLimits`], and no
//! compression at all (a compressed buffer declares the size it inflates to, and Concord never
//! compresses). Only then does arrow's reader, with its own validation, build arrays; a panic
//! of that reader on a malformed schema is caught and refused like any malformed stream.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};

use crate::QueryError;

/// Largest IPC stream accepted from a peer.
pub const MAX_IPC_BYTES: usize = 256 * 1024 * 1024;

/// What a stream from outside may declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpcLimits {
    /// Bytes of the whole stream.
    pub max_bytes: usize,
    /// Messages (schema, dictionaries, batches).
    pub max_messages: usize,
    /// Rows over all record batches, and values of any one array.
    pub max_rows: u64,
    /// Fields of the schema, nested ones included.
    pub max_fields: usize,
    /// Whether record batches may follow the schema.
    pub batches: bool,
}

impl IpcLimits {
    /// A partial aggregate from an owner, or a result.
    pub const RESULT: Self = Self {
        max_bytes: MAX_IPC_BYTES,
        max_messages: 65_536,
        max_rows: 16 * 1024 * 1024,
        max_fields: 4096,
        batches: true,
    };
    /// A dataset's schema in a catalog: one schema message, no batches.
    pub const SCHEMA: Self =
        Self { max_bytes: 1024 * 1024, max_messages: 1, max_rows: 0, max_fields: 4096, batches: false };
}

fn malformed(why: impl std::fmt::Display) -> QueryError {
    QueryError::Execution(format!("malformed Arrow IPC stream: {why}"))
}

/// Dictionary-encoded columns as their plain values. Concord's streams carry no dictionary
/// batches (a dictionary may be replaced or extended mid-stream, which the bounded reader does
/// not follow), so the values travel plain; a requester casts them back to the type it planned
/// with, and an analyst's result shows the same values.
pub fn without_dictionaries(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    if !schema.fields().iter().any(|f| matches!(f.data_type(), DataType::Dictionary(..))) {
        return Ok((schema.clone(), batches));
    }
    let plain: SchemaRef = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ));
    let batches = batches
        .into_iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(plain.fields())
                .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(plain.clone(), columns)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(QueryError::from)?;
    Ok((plain, batches))
}

/// Encodes batches (possibly none) as one Arrow IPC stream, dictionaries unpacked.
pub fn encode(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>, QueryError> {
    let (schema, batches) = without_dictionaries(&Arc::new(schema.clone()), batches.to_vec())?;
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &schema).map_err(QueryError::from)?;
    for b in &batches {
        w.write(b).map_err(QueryError::from)?;
    }
    w.finish().map_err(QueryError::from)?;
    drop(w);
    Ok(out)
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_le_bytes(b))
}

/// Walks the stream's messages and checks what each declares against `limits` and against the
/// bytes present. Nothing is allocated from a declared size.
pub fn check_stream(bytes: &[u8], limits: &IpcLimits) -> Result<(), QueryError> {
    if bytes.len() > limits.max_bytes {
        return Err(malformed(format!("{} bytes, over the limit of {}", bytes.len(), limits.max_bytes)));
    }
    let mut walk = StreamWalk { bytes, limits, at: 0, messages: 0, rows: 0, types: Vec::new() };
    loop {
        let len = walk.message_length()?;
        if len == 0 {
            // End of stream: nothing may follow.
            if walk.at != bytes.len() {
                return Err(malformed("bytes after the end-of-stream marker"));
            }
            if walk.messages == 0 {
                return Err(malformed("no schema"));
            }
            return Ok(());
        }
        walk.step_over_message(len)?;
    }
}

/// A walk over the messages of a stream: where it is, and what it has met so far.
struct StreamWalk<'a> {
    bytes: &'a [u8],
    limits: &'a IpcLimits,
    /// The offset of the next byte to read.
    at: usize,
    /// Messages read.
    messages: usize,
    /// Rows of the record batches read.
    rows: u64,
    /// Each column's type and the element width of its second buffer, from the schema.
    types: Vec<(datafusion::arrow::ipc::Type, i64)>,
}

impl StreamWalk<'_> {
    /// Reads the next message's metadata length, after its continuation marker if it has one;
    /// 0 marks the end of the stream.
    fn message_length(&mut self) -> Result<i32, QueryError> {
        let mut len = read_i32(self.bytes, self.at).ok_or_else(|| malformed("cut short before a message"))?;
        self.at += 4;
        if len == -1 {
            len = read_i32(self.bytes, self.at)
                .ok_or_else(|| malformed("cut short after a continuation marker"))?;
            self.at += 4;
        }
        Ok(len)
    }

    /// Checks one message with `len` bytes of metadata, and its body, and steps over both.
    fn step_over_message(&mut self, len: i32) -> Result<(), QueryError> {
        let (bytes, limits) = (self.bytes, self.limits);
        let len = usize::try_from(len).map_err(|_| malformed("a negative message length"))?;
        let meta_end = self.at.checked_add(len).filter(|e| *e <= bytes.len()).ok_or_else(|| {
            malformed(format!("a message declares {len} bytes of metadata beyond the stream's end"))
        })?;
        let message = root_as_message(&bytes[self.at..meta_end]).map_err(malformed)?;
        self.at = meta_end;
        self.messages += 1;
        if self.messages > limits.max_messages.saturating_add(1) {
            return Err(malformed(format!("more than {} messages", limits.max_messages)));
        }
        let at = self.at;
        let body = usize::try_from(message.bodyLength())
            .ok()
            .filter(|b| at.checked_add(*b).is_some_and(|e| e <= bytes.len()))
            .ok_or_else(|| {
                malformed(format!(
                    "a message declares a body of {} bytes beyond the stream's end",
                    message.bodyLength()
                ))
            })?;
        self.at += body;
        self.check_header(&message, body)?;
        if self.rows > limits.max_rows {
            return Err(malformed(format!("more than {} rows", limits.max_rows)));
        }
        Ok(())
    }

    /// Checks a message's header: the schema first and only once, then record batches (where
    /// `limits` allow them) within limits, and nothing else.
    fn check_header(
        &mut self,
        message: &datafusion::arrow::ipc::Message<'_>,
        body: usize,
    ) -> Result<(), QueryError> {
        match message.header_type() {
            MessageHeader::Schema if self.messages == 1 => {
                let schema = message.header_as_schema().ok_or_else(|| malformed("an empty schema header"))?;
                self.types = check_schema(&schema)?;
            }
            MessageHeader::Schema => return Err(malformed("a second schema")),
            _ if self.messages == 1 => return Err(malformed("the first message is not a schema")),
            MessageHeader::RecordBatch | MessageHeader::DictionaryBatch if !self.limits.batches => {
                return Err(malformed("record batches where only a schema was expected"));
            }
            MessageHeader::RecordBatch => {
                let batch =
                    message.header_as_record_batch().ok_or_else(|| malformed("an empty batch header"))?;
                self.rows = self
                    .rows
                    .saturating_add(u64::try_from(batch.length()).map_err(|_| malformed("negative rows"))?);
                check_batch(&batch, body, self.limits, &self.types)?;
            }
            MessageHeader::DictionaryBatch => {
                return Err(malformed("a dictionary batch, and dictionary-encoded columns are not accepted"));
            }
            other => return Err(malformed(format!("unexpected message type {other:?}"))),
        }
        Ok(())
    }
}

/// Checks every field of a schema message for what arrow's reader would panic on (a type id it
/// does not know, a type table missing, a bit width or unit out of range) and for what Concord
/// does not exchange (nested and dictionary-encoded columns, big-endian data).
fn check_schema(
    schema: &datafusion::arrow::ipc::Schema<'_>,
) -> Result<Vec<(datafusion::arrow::ipc::Type, i64)>, QueryError> {
    use datafusion::arrow::ipc::Endianness;
    if schema.endianness() != Endianness::Little {
        return Err(malformed("big-endian data"));
    }
    let fields = schema.fields().ok_or_else(|| malformed("a schema without fields"))?;
    for f in fields.iter() {
        check_field(&f)?;
    }
    // With each type, the width of the elements of its second buffer (values, offsets or views),
    // which that buffer's length must be a multiple of.
    Ok(fields.iter().map(|f| (f.type_type(), buffer_width(&f))).collect())
}

/// Refuses a field that is dictionary-encoded, nested, or of a type [`accepted_type`] refuses.
fn check_field(f: &datafusion::arrow::ipc::Field<'_>) -> Result<(), QueryError> {
    let bad = |why: &str| malformed(format!("field {:?}: {why}", f.name().unwrap_or_default()));
    if f.dictionary().is_some() {
        return Err(bad("dictionary-encoded columns are not accepted"));
    }
    if f.children().is_some_and(|c| !c.is_empty()) {
        return Err(bad("nested columns are not accepted"));
    }
    if !accepted_type(f) {
        return Err(bad(&format!(
            "type {:?} is not accepted, or its parameters are out of range",
            f.type_type()
        )));
    }
    Ok(())
}

/// Whether a field's type is a flat one Concord exchanges, with its type table present and its
/// bit width, unit or precision in range.
fn accepted_type(f: &datafusion::arrow::ipc::Field<'_>) -> bool {
    use datafusion::arrow::ipc::{DateUnit, IntervalUnit, Precision, TimeUnit, Type};
    match f.type_type() {
        Type::Null
        | Type::Bool
        | Type::Binary
        | Type::BinaryView
        | Type::LargeBinary
        | Type::Utf8
        | Type::Utf8View
        | Type::LargeUtf8 => true,
        Type::Int => f.type_as_int().is_some_and(|i| matches!(i.bitWidth(), 8 | 16 | 32 | 64)),
        Type::FloatingPoint => f.type_as_floating_point().is_some_and(|p| {
            matches!(p.precision(), Precision::HALF | Precision::SINGLE | Precision::DOUBLE)
        }),
        Type::Date => {
            f.type_as_date().is_some_and(|d| matches!(d.unit(), DateUnit::DAY | DateUnit::MILLISECOND))
        }
        Type::Time => f.type_as_time().is_some_and(|t| {
            matches!(
                (t.bitWidth(), t.unit()),
                (32, TimeUnit::SECOND | TimeUnit::MILLISECOND)
                    | (64, TimeUnit::MICROSECOND | TimeUnit::NANOSECOND)
            )
        }),
        Type::Timestamp => f.type_as_timestamp().is_some_and(|t| known_time_unit(t.unit())),
        Type::Duration => f.type_as_duration().is_some_and(|d| known_time_unit(d.unit())),
        Type::Interval => f.type_as_interval().is_some_and(|i| {
            matches!(
                i.unit(),
                IntervalUnit::YEAR_MONTH | IntervalUnit::DAY_TIME | IntervalUnit::MONTH_DAY_NANO
            )
        }),
        // A precision within the width's, a scale from 0 to the precision.
        Type::Decimal => f.type_as_decimal().is_some_and(|d| {
            let max = match d.bitWidth() {
                32 => 9,
                64 => 18,
                128 => 38,
                256 => 76,
                _ => 0,
            };
            (1..=max).contains(&d.precision()) && (0..=d.precision()).contains(&d.scale())
        }),
        _ => false,
    }
}

/// Whether a time unit is one of the four arrow knows.
fn known_time_unit(u: datafusion::arrow::ipc::TimeUnit) -> bool {
    use datafusion::arrow::ipc::TimeUnit;
    matches!(u, TimeUnit::SECOND | TimeUnit::MILLISECOND | TimeUnit::MICROSECOND | TimeUnit::NANOSECOND)
}

/// The width in bytes of the elements of a field's second buffer (values, offsets or views).
fn buffer_width(f: &datafusion::arrow::ipc::Field<'_>) -> i64 {
    use datafusion::arrow::ipc::{DateUnit, IntervalUnit, Precision, Type};
    match f.type_type() {
        Type::Int => f.type_as_int().map(|i| i64::from(i.bitWidth()) / 8).unwrap_or(1),
        Type::FloatingPoint => match f.type_as_floating_point().map(|p| p.precision()) {
            Some(Precision::HALF) => 2,
            Some(Precision::SINGLE) => 4,
            _ => 8,
        },
        Type::Date => match f.type_as_date().map(|d| d.unit()) {
            Some(DateUnit::DAY) => 4,
            _ => 8,
        },
        Type::Time => f.type_as_time().map(|t| i64::from(t.bitWidth()) / 8).unwrap_or(8),
        Type::Timestamp | Type::Duration => 8,
        Type::Interval => match f.type_as_interval().map(|i| i.unit()) {
            Some(IntervalUnit::YEAR_MONTH) => 4,
            Some(IntervalUnit::DAY_TIME) => 8,
            _ => 16,
        },
        Type::Decimal => f.type_as_decimal().map(|d| i64::from(d.bitWidth()) / 8).unwrap_or(16),
        Type::Utf8 | Type::Binary => 4,
        Type::LargeUtf8 | Type::LargeBinary => 8,
        Type::Utf8View | Type::BinaryView => 16,
        _ => 1,
    }
}

/// Checks a record batch message: no compression, rows and values within `limits`, each
/// column's buffers as its type needs them, every buffer inside the message's `body` bytes.
fn check_batch(
    batch: &datafusion::arrow::ipc::RecordBatch<'_>,
    body: usize,
    limits: &IpcLimits,
    types: &[(datafusion::arrow::ipc::Type, i64)],
) -> Result<(), QueryError> {
    if batch.compression().is_some() {
        return Err(malformed("compressed buffers, which Concord never sends"));
    }
    let max = i64::try_from(limits.max_rows).unwrap_or(i64::MAX);
    if !(0..=max).contains(&batch.length()) {
        return Err(malformed(format!("a batch of {} rows", batch.length())));
    }
    for node in batch.nodes().iter().flatten() {
        if !(0..=max).contains(&node.length()) || !(0..=node.length()).contains(&node.null_count()) {
            return Err(malformed(format!(
                "an array of {} values ({} null)",
                node.length(),
                node.null_count()
            )));
        }
    }
    check_column_buffers(batch, types)?;
    for buf in batch.buffers().iter().flatten() {
        let end = buf.offset().checked_add(buf.length());
        if buf.offset() < 0 || buf.length() < 0 || end.is_none_or(|e| e as u64 > body as u64) {
            return Err(malformed("a buffer outside its message body"));
        }
    }
    Ok(())
}

/// Checks each column's validity bitmap and values buffer against its values and type.
fn check_column_buffers(
    batch: &datafusion::arrow::ipc::RecordBatch<'_>,
    types: &[(datafusion::arrow::ipc::Type, i64)],
) -> Result<(), QueryError> {
    use datafusion::arrow::ipc::Type;
    // Each column's validity bitmap must hold a bit per value where it has nulls: arrow's reader
    // builds the bitmap before it validates the array, and panics on a short one.
    let nodes: Vec<_> = batch.nodes().iter().flatten().collect();
    let buffers: Vec<_> = batch.buffers().iter().flatten().collect();
    let mut variadic = batch.variadicBufferCounts().into_iter().flatten();
    let mut next = 0usize;
    for (node, (ty, width)) in nodes.iter().zip(types) {
        let count = match *ty {
            Type::Null => continue,
            Type::Utf8 | Type::Binary | Type::LargeUtf8 | Type::LargeBinary => 3,
            Type::Utf8View | Type::BinaryView => {
                let extra =
                    variadic.next().ok_or_else(|| malformed("a view column without its buffer count"))?;
                usize::try_from(extra)
                    .ok()
                    .and_then(|e| e.checked_add(2))
                    .ok_or_else(|| malformed("a negative buffer count"))?
            }
            _ => 2,
        };
        let validity = buffers.get(next).ok_or_else(|| malformed("fewer buffers than columns need"))?;
        let bits = u64::try_from(validity.length()).unwrap_or(0).saturating_mul(8);
        if node.null_count() > 0 && bits < u64::try_from(node.length()).unwrap_or(u64::MAX) {
            return Err(malformed(format!(
                "a validity bitmap of {} bytes for {} values",
                validity.length(),
                node.length()
            )));
        }
        if let Some(values) = buffers.get(next + 1)
            && values.length() % width.max(&1) != 0
        {
            return Err(malformed(format!("a buffer of {} bytes for elements of {width}", values.length())));
        }
        next = next.checked_add(count).ok_or_else(|| malformed("too many buffers"))?;
    }
    Ok(())
}

/// Every decimal value within its column's declared precision: arrow's reader does not check,
/// and a cast of an out-of-range value to a type arrow deems wide enough may panic.
fn check_decimals(batch: &RecordBatch) -> Result<(), QueryError> {
    use datafusion::arrow::array::AsArray as _;
    use datafusion::arrow::datatypes::{Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type};
    for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
        let checked = match field.data_type() {
            DataType::Decimal32(p, _) => {
                column.as_primitive::<Decimal32Type>().validate_decimal_precision(*p)
            }
            DataType::Decimal64(p, _) => {
                column.as_primitive::<Decimal64Type>().validate_decimal_precision(*p)
            }
            DataType::Decimal128(p, _) => {
                column.as_primitive::<Decimal128Type>().validate_decimal_precision(*p)
            }
            DataType::Decimal256(p, _) => {
                column.as_primitive::<Decimal256Type>().validate_decimal_precision(*p)
            }
            _ => Ok(()),
        };
        checked.map_err(|e| malformed(format!("column {:?}: {e}", field.name())))?;
    }
    Ok(())
}

fn field_count(t: &DataType) -> usize {
    match t {
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => 1usize.saturating_add(field_count(f.data_type())),
        DataType::Struct(fs) => fs.iter().fold(1usize, |n, f| n.saturating_add(field_count(f.data_type()))),
        DataType::Union(fs, _) => {
            fs.iter().fold(1usize, |n, (_, f)| n.saturating_add(field_count(f.data_type())))
        }
        DataType::Dictionary(_, v) => 1usize.saturating_add(field_count(v)),
        DataType::RunEndEncoded(r, v) => {
            1usize.saturating_add(field_count(r.data_type())).saturating_add(field_count(v.data_type()))
        }
        _ => 1,
    }
}

/// Decodes an Arrow IPC stream from outside within `limits`; a truncated, malformed or
/// oversized stream is an error, never a panic or an allocation of what it declares.
pub fn decode_limited(bytes: &[u8], limits: &IpcLimits) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    check_stream(bytes, limits)?;
    // arrow's reader panics on some malformed schemas (an unknown type id, a list without its
    // child); such a panic is caught here and the stream refused like any malformed one.
    let read = std::panic::catch_unwind(|| {
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(malformed)?;
        let schema = reader.schema();
        let fields = schema.fields().iter().fold(0usize, |n, f| n.saturating_add(field_count(f.data_type())));
        if fields > limits.max_fields {
            return Err(malformed(format!("{fields} fields, over the limit of {}", limits.max_fields)));
        }
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(malformed)?;
        for b in &batches {
            check_decimals(b)?;
        }
        Ok((schema, batches))
    });
    read.unwrap_or_else(|_| Err(malformed("arrow cannot read its schema or batches")))
}

/// Decodes a result stream (see [`IpcLimits::RESULT`]).
pub fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    decode_limited(bytes, &IpcLimits::RESULT)
}

/// Encodes a schema alone (an IPC stream with no batches).
pub fn encode_schema(schema: &Schema) -> Result<Vec<u8>, QueryError> {
    encode(schema, &[])
}

/// Decodes a schema alone: one schema message and nothing else (see [`IpcLimits::SCHEMA`]).
pub fn decode_schema(bytes: &[u8]) -> Result<SchemaRef, QueryError> {
    decode_limited(bytes, &IpcLimits::SCHEMA).map(|(s, _)| s)
}

/// An empty schema, for results of nothing.
pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}
