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
//! Invariant: a result or prepared statement is used only by the token that made it, and both
//! are bounded in number, bytes and age.
//! Invariant: parameters are bound into the parsed statement (`concord_query::params`), never
//! pasted into its text.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
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
use futures::{Stream, TryStreamExt};
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
/// Results kept for their `DoGet`, per node.
const MAX_RESULTS: usize = 64;
/// Bytes of results kept for their `DoGet`, per node; the oldest go first.
const MAX_RESULT_BYTES: usize = 512 * 1024 * 1024;
/// How long a result waits for its `DoGet`.
const RESULT_TTL: Duration = Duration::from_secs(300);
/// Prepared statements kept, per node; the oldest go first.
const MAX_PREPARED: usize = 1024;
/// How long a prepared statement is kept after it was last used.
const PREPARED_TTL: Duration = Duration::from_secs(3600);
/// Largest message a client may send (parameters).
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

type DoGetStream = <FlightSqlServer as FlightService>::DoGetStream;

/// Serves Flight SQL on `listener` until `shutdown` turns true.
pub async fn serve(node: Arc<Node>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let limits = &node.cfg.limits;
    let timeout = limits.query_timeout() + Duration::from_secs(limits.peer_timeout_secs);
    let service =
        FlightServiceServer::new(FlightSqlServer::new(node.clone())).max_decoding_message_size(MAX_MESSAGE);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    let served = tonic::transport::Server::builder()
        .timeout(timeout)
        .max_concurrent_streams(Some(32))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    if let Err(e) = served {
        tracing::error!("the Flight SQL listener stopped: {e}");
    }
}

/// The Flight SQL service of one node.
pub struct FlightSqlServer {
    node: Arc<Node>,
    held: Mutex<Held>,
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

/// A prepared statement: its SQL with numbered placeholders and the values bound last.
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
        Self { node, held: Mutex::new(Held::default()) }
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
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let purpose = header("x-concord-purpose").unwrap_or("analysis").to_owned();
        if purpose.is_empty() || purpose.contains(['\n', '\r']) {
            return Err(status(NodeError::BadRequest("x-concord-purpose must be one line of text".into())));
        }
        let partial = match header("x-concord-partial") {
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
    async fn run(&self, call: &Call, sql: &str, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
        let node = &self.node;
        let out = node.query(sql, &call.purpose, call.partial).await.map_err(|e| {
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
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        let mut held = self.held();
        held.expire();
        held.make_room(bytes);
        held.results
            .insert(handle, HeldResult { caller: call.caller, schema, batches, bytes, at: Instant::now() });
        Ok(info)
    }

    /// A prepared statement of the caller's, by its handle.
    fn prepared_sql(&self, call: &Call, handle: &[u8]) -> Result<(String, Vec<ScalarValue>, usize), Status> {
        let mut held = self.held();
        let key = String::from_utf8_lossy(handle).into_owned();
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

    /// Drops the oldest results until one of `bytes` more fits the bounds.
    fn make_room(&mut self, bytes: usize) {
        loop {
            let total: usize = self.results.values().map(|r| r.bytes).sum();
            if self.results.is_empty()
                || (self.results.len() < MAX_RESULTS && total + bytes <= MAX_RESULT_BYTES)
            {
                return;
            }
            let oldest = self.results.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                tracing::warn!(
                    "a flight sql result was dropped before its DoGet to make room for a newer one"
                );
                self.results.remove(&k);
            }
        }
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
        413 | 429 => tonic::Code::ResourceExhausted,
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
    any: Vec<u8>,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(any)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// What `GetSqlInfo` answers: the server, and a read-only SQL engine without transactions.
fn sql_info() -> &'static SqlInfoData {
    static INFO: OnceLock<SqlInfoData> = OnceLock::new();
    INFO.get_or_init(|| {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "Concord");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
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
        b.build().unwrap_or_else(|e| unreachable!("a fixed list of values builds: {e}"))
    })
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
        Ok(Response::new(self.run(&call, &query.query, request.into_inner()).await?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let call = self.call(&request)?;
        let key = String::from_utf8_lossy(&ticket.statement_handle).into_owned();
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
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(r.schema)
            .build(futures::stream::iter(r.batches.into_iter().map(Ok)))
            .map_err(Status::from);
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
        if held.prepared.len() >= MAX_PREPARED
            && let Some(oldest) = held.prepared.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| k.clone())
        {
            held.prepared.remove(&oldest);
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
        let batches: Vec<RecordBatch> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(|e| status(NodeError::BadRequest(format!("the parameters cannot be read: {e}"))))?;
        let values = parameter_row(&batches)?;
        if values.len() != params {
            return Err(status(NodeError::BadRequest(format!(
                "{} parameters were bound; the statement has {params}",
                values.len()
            ))));
        }
        let key = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        if let Some(p) = self.held().prepared.get_mut(&key) {
            p.values = values;
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
        let bound = concord_query::params::bind(&sql, &values).map_err(|e| status(e.into()))?;
        Ok(Response::new(self.run(&call, &bound, request.into_inner()).await?))
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
        let key = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
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
        let any = query.as_any().encode_to_vec();
        command_info(any, query.into_builder(sql_info()).schema().as_ref(), request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.call(&request)?;
        let builder = query.into_builder(sql_info());
        Ok(Response::new(one_batch(builder.schema(), builder.build())))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.call(&request)?;
        let any = query.as_any().encode_to_vec();
        command_info(any, &query.into_builder().schema(), request.into_inner())
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
        let any = query.as_any().encode_to_vec();
        command_info(any, &query.into_builder().schema(), request.into_inner())
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
        let any = query.as_any().encode_to_vec();
        command_info(any, &query.into_builder().schema(), request.into_inner())
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
        let any = query.as_any().encode_to_vec();
        command_info(any, &query.into_builder().schema(), request.into_inner())
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
        command_info(query.as_any().encode_to_vec(), &primary_keys_schema(), request.into_inner())
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
