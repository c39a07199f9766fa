//! Arrow Flight SQL beside the local API (`flight_listen` in `concord.toml`), for the tools
//! analysts already use: ADBC (pandas, Polars, DuckDB), the Flight SQL JDBC driver (DBeaver).
//!
//! - Authentication: the local API's tokens, as `authorization: Bearer <token>` on every call;
//!   the handshake takes the same header, or HTTP Basic with the token as the password, and
//!   answers with the bearer header. Every command needs a token of role analyst.
//! - Statements and prepared statements (parameters `$1`, `$2`, ... or `?`) run as federated
//!   queries through [`Node::query`]; the query runs when its `FlightInfo` is asked for, so a
//!   refusal is the answer to that call, and its result waits, bound to the caller's token, for
//!   the `DoGet` of its ticket.
//! - The purpose and a partial result are call headers: `x-concord-purpose`, `x-concord-partial`.
//! - Metadata (`GetCatalogs`, `GetDbSchemas`, `GetTables`, `GetTableTypes`, `GetSqlInfo`,
//!   `GetPrimaryKeys`) lists what a query may name: the shared schemas (`public`), the member
//!   datasets the caller may use (schema = member id) and local tables (`local`).
//! - Errors are Flight statuses with the HTTP API's message; the code is in the status's
//!   `concord-code` metadata and in the message's end.
//!
//! Invariant: a result or prepared statement is used only by the token that made it, bounded
//! per token in number, bytes and age; one token's never displaces another's.
//! Invariant: parameters are bound in the planned statement
//! (`concord_query::federate::run_federated_bound`), never pasted into its text; the bound plan
//! passes every check a query's plan passes.
//! Invariant: connections are capped as the local listener's are (`max_connections`, per
//! address), and a call without a known token is refused before its body is decoded.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, SqlSupportedTransaction, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::arrow::array::{RecordBatch, new_empty_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::NodeError;
use crate::api::local::authorize;
use crate::node::Node;
use crate::wire::{Role, TableKind};

/// The catalog every table is in, as DataFusion names it: `datafusion.bravo.cases` works too.
const CATALOG: &str = "datafusion";
/// Results one token may have waiting for their `DoGet`; more are refused until it fetches.
const MAX_RESULTS_PER_TOKEN: usize = 16;
/// Bytes of results one token may have waiting; past that its own oldest go first.
const MAX_RESULT_BYTES_PER_TOKEN: usize = 256 * 1024 * 1024;
/// How long a result waits for its `DoGet`.
const RESULT_TTL: Duration = Duration::from_secs(300);
/// Prepared statements one token may hold open; more are refused until it closes some.
const MAX_PREPARED_PER_TOKEN: usize = 64;
/// How long a prepared statement is kept after it was last used.
const PREPARED_TTL: Duration = Duration::from_secs(3600);
/// Largest message a client may send, and largest row of parameters.
const MAX_MESSAGE: usize = 1024 * 1024;
/// Results streamed at once by the node; more callers are told to retry.
const MAX_STREAMS: usize = 16;

type DoGetStream = <FlightSqlServer as FlightService>::DoGetStream;

/// Serves Flight SQL on `listener` until `shutdown` turns true: at most `max_connections`
/// connections (`max_connections_per_address` from one address; more wait in the kernel's
/// backlog or are closed), each with at most 8 streams and closed after five idle timeouts; a
/// call without a known analyst token (or Basic credentials, which only the handshake takes) is
/// refused before its body is read.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let limits = &node.cfg.limits;
    let timeout = limits.query_timeout() + Duration::from_secs(limits.peer_timeout_secs);
    let age = Duration::from_secs(limits.idle_timeout_secs.max(1) * 5);
    let gate = node.clone();
    let service = tonic::service::interceptor::InterceptedService::new(
        FlightServiceServer::new(FlightSqlServer::new(node.clone())).max_decoding_message_size(MAX_MESSAGE),
        move |request: Request<()>| admit(&gate, request),
    );
    let incoming = capped::incoming(
        listener,
        limits.max_connections,
        limits.max_connections_per_address,
        shutdown.clone(),
    );
    let mut stop = shutdown;
    let stop = async move {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    let served = tonic::transport::Server::builder()
        .timeout(timeout)
        .max_concurrent_streams(Some(8))
        .max_connection_age(age)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = served {
        tracing::error!("the Flight SQL listener stopped: {e}");
    }
}

/// Lets a call through to be decoded only with a known analyst token, or with Basic
/// credentials (only the handshake takes them; every other call asks for the bearer token).
fn admit(node: &Node, request: Request<()>) -> Result<Request<()>, Status> {
    let headers = request.metadata().clone().into_headers();
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v.starts_with("Basic ") => Ok(request),
        _ => {
            authorize(node, &headers, &[Role::Analyst]).map_err(status)?;
            Ok(request)
        }
    }
}

/// Accepted connections under the listener's caps, as tonic's incoming stream.
mod capped {
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
    use tonic::transport::server::{Connected, TcpConnectInfo};

    /// Open connections per address.
    type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

    /// A connection holding its slot (and its address's count) until it is dropped.
    pub struct Capped {
        stream: TcpStream,
        _slot: OwnedSemaphorePermit,
        address: IpAddr,
        per_address: PerAddress,
    }

    impl Drop for Capped {
        fn drop(&mut self) {
            let mut map = self.per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = map.get_mut(&self.address) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.address);
                }
            }
        }
    }

    /// Connections accepted while a slot is free; the accept loop ends with `shutdown`.
    pub fn incoming(
        listener: TcpListener,
        max: usize,
        per_address_max: usize,
        mut shutdown: watch::Receiver<bool>,
    ) -> impl futures::Stream<Item = Result<Capped, std::io::Error>> {
        let (tx, rx) = mpsc::channel::<Result<Capped, std::io::Error>>(1);
        let slots = Arc::new(Semaphore::new(max.max(1)));
        let per_address: PerAddress = Arc::default();
        tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                    _ = shutdown.changed() => return,
                };
                let (stream, peer) = tokio::select! {
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("flight sql accept: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = shutdown.changed() => return,
                };
                let address = peer.ip();
                if !count_in(&per_address, address, per_address_max) {
                    tracing::warn!(%address, "flight sql: too many connections from one address; closed");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let capped = Capped { stream, _slot: slot, address, per_address: per_address.clone() };
                if tx.send(Ok(capped)).await.is_err() {
                    return;
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    /// Counts one more connection from `address`, unless it has `max` already.
    fn count_in(per_address: &PerAddress, address: IpAddr, max: usize) -> bool {
        let mut map = per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(address).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    impl Connected for Capped {
        type ConnectInfo = TcpConnectInfo;

        fn connect_info(&self) -> Self::ConnectInfo {
            self.stream.connect_info()
        }
    }

    impl AsyncRead for Capped {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Capped {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }
}

/// The Flight SQL service of one node.
pub struct FlightSqlServer {
    node: Arc<Node>,
    held: Mutex<Held>,
    streams: Arc<tokio::sync::Semaphore>,
}

/// Results waiting for their `DoGet` and prepared statements, by handle.
#[derive(Default)]
struct Held {
    results: HashMap<String, HeldResult>,
    prepared: HashMap<String, Prepared>,
}

/// A query's result, waiting for the `DoGet` of its ticket.
struct HeldResult {
    /// SHA-256 of the token that ran it.
    caller: [u8; 32],
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
    at: Instant,
}

/// A prepared statement: its SQL with numbered placeholders and the values bound last (one row,
/// at most [`MAX_MESSAGE`] bytes).
struct Prepared {
    caller: [u8; 32],
    sql: String,
    params: usize,
    values: Vec<ScalarValue>,
    used: Instant,
}

/// What a call carries besides its command: who calls, for what purpose, partial or not.
struct Call {
    caller: [u8; 32],
    purpose: String,
    partial: bool,
}

impl FlightSqlServer {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            held: Mutex::new(Held::default()),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The caller's token, checked (role analyst), and its call headers.
    fn call<T>(&self, request: &Request<T>) -> Result<Call, Status> {
        let headers = request.metadata().clone().into_headers();
        authorize(&self.node, &headers, &[Role::Analyst]).map_err(status)?;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim();
        let header = |name: &str| -> Result<Option<&str>, Status> {
            match headers.get(name).map(|v| v.to_str()) {
                None => Ok(None),
                Some(Ok(v)) => Ok(Some(v.trim())),
                Some(Err(_)) => Err(status(NodeError::BadRequest(format!(
                    "{name} is not visible ASCII; send one line of plain text"
                )))),
            }
        };
        let purpose = header("x-concord-purpose")?.unwrap_or("analysis").to_owned();
        if purpose.is_empty() || purpose.contains(['\n', '\r']) {
            return Err(status(NodeError::BadRequest("x-concord-purpose must be one line of text".into())));
        }
        let partial = match header("x-concord-partial")? {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(status(NodeError::BadRequest(format!(
                    "x-concord-partial is {other:?}; send true or false"
                ))));
            }
        };
        Ok(Call { caller: Sha256::digest(token.as_bytes()).into(), purpose, partial })
    }

    /// Runs `sql` as a federated query and keeps its result for a `DoGet`; returns its
    /// `FlightInfo` (the result's schema, with who contributed what in its metadata).
    async fn run(
        &self,
        call: &Call,
        sql: &str,
        params: &[ScalarValue],
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        self.room_for_a_result(call)?;
        let node = &self.node;
        let out = node.query_bound(sql, params, &call.purpose, call.partial).await.map_err(|e| {
            node.metrics.query_made(Some(e.code().as_str()));
            tracing::info!(code = e.code().as_str(), "flight sql query failed");
            status(e)
        })?;
        node.metrics.query_made(None);
        let schema = Arc::new(noted_schema(&out)?);
        let batches = out
            .batches
            .iter()
            .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(format!("the result cannot be sent: {e}")))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        tracing::info!(
            rows,
            owners = out.provenance.len(),
            missing = out.missing.len(),
            "flight sql query answered"
        );
        let handle = new_handle();
        let ticket = Ticket::new(
            TicketStatementQuery { statement_handle: handle.clone().into() }.as_any().encode_to_vec(),
        );
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("the result's schema cannot be sent: {e}")))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor)
            .with_total_records(rows as i64);
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if bytes > MAX_RESULT_BYTES_PER_TOKEN {
            return Err(status(NodeError::TooLarge(format!(
                "the result takes {bytes} bytes, more than the {MAX_RESULT_BYTES_PER_TOKEN} a token may have waiting; \
                 aggregate further or add LIMIT"
            ))));
        }
        let mut held = self.held();
        held.make_room(call.caller, bytes);
        held.results
            .insert(handle, HeldResult { caller: call.caller, schema, batches, bytes, at: Instant::now() });
        Ok(info)
    }

    /// Refuses a query, before it runs, when the caller has as many results waiting as it may.
    fn room_for_a_result(&self, call: &Call) -> Result<(), Status> {
        let mut held = self.held();
        held.expire();
        let waiting = held.results.values().filter(|r| r.caller == call.caller).count();
        if waiting >= MAX_RESULTS_PER_TOKEN {
            return Err(status(NodeError::RateLimited(format!(
                "{waiting} results of this token wait for their DoGet; fetch them (or wait {} s) before running more",
                RESULT_TTL.as_secs()
            ))));
        }
        Ok(())
    }

    /// A prepared statement of the caller's, by its handle.
    fn prepared_sql(&self, call: &Call, handle: &[u8]) -> Result<(String, Vec<ScalarValue>, usize), Status> {
        let key = handle_of(handle)?;
        let mut held = self.held();
        match held.prepared.get_mut(&key) {
            Some(p) if p.caller == call.caller => {
                p.used = Instant::now();
                Ok((p.sql.clone(), p.values.clone(), p.params))
            }
            _ => Err(Status::not_found(
                "no such prepared statement for this token: it was closed, expired or never made; prepare it again",
            )),
        }
    }
}

impl Held {
    /// Forgets results and prepared statements past their time.
    fn expire(&mut self) {
        self.results.retain(|_, r| r.at.elapsed() < RESULT_TTL);
        self.prepared.retain(|_, p| p.used.elapsed() < PREPARED_TTL);
    }

    /// Drops `caller`'s own oldest waiting results until one of `bytes` more fits its bound;
    /// another token's results are never touched.
    fn make_room(&mut self, caller: [u8; 32], bytes: usize) {
        loop {
            let mine = self.results.iter().filter(|(_, r)| r.caller == caller);
            let total: usize = mine.clone().map(|(_, r)| r.bytes).sum();
            if total + bytes <= MAX_RESULT_BYTES_PER_TOKEN {
                return;
            }
            let Some(oldest) = mine.min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone()) else { return };
            tracing::warn!(
                "a flight sql result was dropped before its DoGet for a newer one of the same token"
            );
            self.results.remove(&oldest);
        }
    }
}

/// A handle a client sent back: 32 hex digits, or a status saying it is none of ours.
fn handle_of(bytes: &[u8]) -> Result<String, Status> {
    match std::str::from_utf8(bytes) {
        Ok(h) if h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h.to_owned()),
        _ => Err(Status::invalid_argument("not a handle of this server: send back the handle it gave")),
    }
}

/// A fresh random handle, 32 hex digits.
fn new_handle() -> String {
    let bytes: [u8; 16] = rand::random();
    concord_charter::hex(&bytes)
}

/// The result's schema with who contributed what, who was missing and what was left out, as
/// JSON in its metadata (`concord.provenance`, `concord.missing`, `concord.left_out`).
fn noted_schema(out: &concord_query::QueryOutcome) -> Result<Schema, Status> {
    fn json<T: serde::Serialize>(v: &T) -> Result<String, Status> {
        serde_json::to_string(v).map_err(|e| Status::internal(format!("the result's notes: {e}")))
    }
    let mut metadata = out.schema.metadata().clone();
    metadata.insert("concord.provenance".into(), json(&out.provenance)?);
    metadata.insert("concord.missing".into(), json(&out.missing)?);
    metadata.insert("concord.left_out".into(), json(&out.left_out)?);
    Ok(Schema::new_with_metadata(out.schema.fields().clone(), metadata))
}

/// A node error as a Flight status: the HTTP API's message, its code in `concord-code`.
fn status(e: NodeError) -> Status {
    let code = match e.status() {
        400 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        408 => tonic::Code::DeadlineExceeded,
        409 => tonic::Code::FailedPrecondition,
        413 | 429 | 507 => tonic::Code::ResourceExhausted,
        502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    let wire = e.code().as_str();
    let mut s = Status::new(code, format!("{e} ({wire})"));
    if let Ok(v) = MetadataValue::try_from(wire) {
        s.metadata_mut().insert("concord-code", v);
    }
    s
}

/// A batch of metadata as a `DoGet` stream.
fn one_batch(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::once(async move { batch }))
        .map_err(Status::from);
    Box::pin(stream)
}

/// The `FlightInfo` of a metadata command: its schema, and the command itself as the ticket.
fn command_info(
    command: &impl ProstMessageExt,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(request.into_inner());
    Ok(Response::new(info))
}

/// What `GetSqlInfo` answers: the server, and a read-only SQL engine without transactions.
fn sql_info() -> Result<SqlInfoData, Status> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Concord");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build().map_err(|e| Status::internal(format!("server information: {e}")))
}

/// Flight SQL's table type of a kind of table.
fn table_type(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Federated => "FEDERATED TABLE",
        TableKind::MemberDataset => "MEMBER DATASET",
        TableKind::Local => "TABLE",
    }
}

/// The schema of `GetPrimaryKeys` (no table here has a primary key).
fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("key_name", DataType::Utf8, true),
    ]))
}

/// A schema as the IPC message Flight SQL carries.
fn schema_ipc(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: ArrowError| Status::internal(format!("schema: {e}")))?;
    Ok(bytes)
}

/// The token of a handshake: `Bearer <token>`, or HTTP Basic with the token as the password.
fn handshake_token(authorization: &str) -> Result<String, Status> {
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return Ok(token.trim().to_owned());
    }
    let Some(basic) = authorization.strip_prefix("Basic ") else {
        return Err(Status::unauthenticated(
            "send `authorization: Bearer <token>`, or Basic with the token as the password",
        ));
    };
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(basic.trim().trim_end_matches('='))
        .map_err(|_| Status::unauthenticated("the Basic credentials are not base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| Status::unauthenticated("the Basic credentials are not UTF-8"))?;
    let (_, password) = text.split_once(':').unwrap_or(("", text.as_str()));
    Ok(password.trim().to_owned())
}

/// The batches of a parameter `DoPut`, read as they come: at most [`MAX_MESSAGE`] bytes and
/// two rows (one too many) before the rest is refused unread.
async fn parameter_batches(input: PeekableFlightDataStream) -> Result<Vec<RecordBatch>, Status> {
    let mut stream =
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(input.map_err(FlightError::from));
    let (mut batches, mut bytes, mut rows) = (Vec::new(), 0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch
            .map_err(|e| status(NodeError::BadRequest(format!("the parameters cannot be read: {e}"))))?;
        bytes += batch.get_array_memory_size();
        rows += batch.num_rows();
        batches.push(batch);
        if bytes > MAX_MESSAGE {
            return Err(status(NodeError::TooLarge(format!("parameters of more than {MAX_MESSAGE} bytes"))));
        }
        if rows > 1 {
            break;
        }
    }
    Ok(batches)
}

/// One row of parameters from the batches a client bound.
fn parameter_row(batches: &[RecordBatch]) -> Result<Vec<ScalarValue>, Status> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    match batches.iter().find(|b| b.num_rows() > 0) {
        None => Ok(Vec::new()),
        Some(_) if rows > 1 => Err(status(NodeError::BadRequest(format!(
            "{rows} rows of parameters were bound; a query takes one row of values per execution"
        )))),
        Some(b) => b
            .columns()
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| status(NodeError::BadRequest(format!("a parameter cannot be read: {e}")))),
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("send `authorization: Bearer <token>`"))?;
        let token = handshake_token(authorization)?;
        let bearer = format!("Bearer {token}");
        let mut headers = axum::http::HeaderMap::new();
        let value = axum::http::HeaderValue::from_str(&bearer)
            .map_err(|_| Status::unauthenticated("the token is not a header value"))?;
        headers.insert("authorization", value);
        authorize(&self.node, &headers, &[Role::Analyst]).map_err(status)?;
        let answer = HandshakeResponse { protocol_version: 0, payload: token.into_bytes().into() };
        let mut response: Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>> =
            Response::new(Box::pin(futures::stream::iter([Ok(answer)])));
        let header = MetadataValue::try_from(bearer.as_str())
            .map_err(|_| Status::unauthenticated("the token is not a header value"))?;
        response.metadata_mut().insert("authorization", header);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self.call(&request)?;
        Ok(Response::new(self.run(&call, &query.query, &[], request.into_inner()).await?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let call = self.call(&request)?;
        let key = handle_of(&ticket.statement_handle)?;
        let slot = self.streams.clone().try_acquire_owned().map_err(|_| {
            status(NodeError::RateLimited(format!(
                "{MAX_STREAMS} results are being fetched at once; retry in a moment"
            )))
        })?;
        let result = {
            let mut held = self.held();
            match held.results.get(&key) {
                Some(r) if r.caller == call.caller => held.results.remove(&key),
                _ => None,
            }
        };
        let r = result.ok_or_else(|| {
            Status::not_found("no result for this ticket and token: it was fetched, expired or never made; run the query again")
        })?;
        // The stream holds a slot and ends by the query timeout, read or not.
        let deadline = tokio::time::sleep(self.node.cfg.limits.query_timeout());
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(r.schema)
            .build(futures::stream::iter(r.batches.into_iter().map(Ok)))
            .map_err(Status::from)
            .take_until(deadline)
            .map(move |item| {
                let _slot = &slot;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.call(&request)?;
        Err(status(NodeError::BadRequest("only queries (SELECT, WITH ... SELECT) are accepted".into())))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let call = self.call(&request)?;
        let (sql, params) = concord_query::params::numbered(&query.query).map_err(|e| status(e.into()))?;
        let (schema, types) = self.node.describe_query(&sql, &call.purpose).await.map_err(status)?;
        let fields: Vec<Field> = (0..params)
            .map(|i| {
                Field::new(
                    format!("${}", i + 1),
                    types.get(i).cloned().flatten().unwrap_or(DataType::Null),
                    true,
                )
            })
            .collect();
        let handle = new_handle();
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.clone().into(),
            dataset_schema: schema_ipc(&schema)?,
            parameter_schema: schema_ipc(&Schema::new(fields))?,
        };
        let mut held = self.held();
        held.expire();
        let open = held.prepared.values().filter(|p| p.caller == call.caller).count();
        if open >= MAX_PREPARED_PER_TOKEN {
            return Err(status(NodeError::RateLimited(format!(
                "this token holds {open} prepared statements; close some before preparing more"
            ))));
        }
        held.prepared.insert(
            handle,
            Prepared { caller: call.caller, sql, params, values: Vec::new(), used: Instant::now() },
        );
        Ok(result)
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let call = self.call(&request)?;
        let (_, _, params) = self.prepared_sql(&call, &query.prepared_statement_handle)?;
        let batches = parameter_batches(request.into_inner()).await?;
        let values = parameter_row(&batches)?;
        if values.len() != params {
            return Err(status(NodeError::BadRequest(format!(
                "{} parameters were bound; the statement has {params}",
                values.len()
            ))));
        }
        let key = handle_of(&query.prepared_statement_handle)?;
        match self.held().prepared.get_mut(&key) {
            Some(p) if p.caller == call.caller => p.values = values,
            _ => {
                return Err(Status::not_found("the prepared statement was closed while its parameters came"));
            }
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: None })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self.call(&request)?;
        let (sql, values, params) = self.prepared_sql(&call, &cmd.prepared_statement_handle)?;
        if values.len() != params {
            return Err(status(NodeError::BadRequest(format!(
                "the statement has {params} parameters and {} are bound; bind them first",
                values.len()
            ))));
        }
        Ok(Response::new(self.run(&call, &sql, &values, request.into_inner()).await?))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.call(&request)?;
        Err(status(NodeError::BadRequest("only queries (SELECT, WITH ... SELECT) are accepted".into())))
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let call = self.call(&request)?;
        let key = handle_of(&query.prepared_statement_handle)?;
        let mut held = self.held();
        if held.prepared.get(&key).is_some_and(|p| p.caller == call.caller) {
            held.prepared.remove(&key);
        }
        Ok(())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        let info = sql_info()?;
        command_info(&query, query.clone().into_builder(&info).schema().as_ref(), request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let info = sql_info()?;
        let builder = query.into_builder(&info);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        command_info(&query, &query.into_builder().schema(), request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        command_info(&query, &query.clone().into_builder().schema(), request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let listed = self.node.catalog_tables().await.map_err(status)?;
        warn_unlisted(&listed.warnings);
        let mut builder = query.into_builder();
        let mut schemas: Vec<&str> = listed.tables.iter().map(|t| t.db_schema.as_str()).collect();
        schemas.sort_unstable();
        schemas.dedup();
        for s in schemas {
            builder.append(CATALOG, s);
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        command_info(&query, &query.clone().into_builder().schema(), request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let listed = self.node.catalog_tables().await.map_err(status)?;
        warn_unlisted(&listed.warnings);
        let mut builder = query.into_builder();
        for t in &listed.tables {
            builder
                .append(CATALOG, &t.db_schema, &t.table, table_type(t.kind), &t.schema)
                .map_err(|e| Status::internal(format!("table {}: {e}", t.sql_name())))?;
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        command_info(&query, &query.into_builder().schema(), request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let mut builder = query.into_builder();
        for kind in [TableKind::Federated, TableKind::MemberDataset, TableKind::Local] {
            builder.append(table_type(kind));
        }
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        command_info(&query, &primary_keys_schema(), request)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let schema = primary_keys_schema();
        let columns = schema.fields().iter().map(|f| new_empty_array(f.data_type())).collect();
        Ok(Response::new(one_batch(
            schema.clone(),
            RecordBatch::try_new(schema, columns).map_err(FlightError::from),
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// A metadata listing cannot carry warnings: what it leaves out goes to the node's log.
fn warn_unlisted(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("flight sql listing: {w}");
    }
}
