//! Parquet files on a member's Apache DataFusion Ballista cluster: the owner's checked plan runs
//! on the cluster, and what comes back to the node is its output, the groups.
//!
//! The dataset is registered by the scheduler's address and the files' path, which the
//! scheduler and its executors read (a shared file system); the node reads the files' footers
//! once, for their columns. The owner's plan is sent as DataFusion's own plan encoding
//! (datafusion-proto), the way a Ballista client sends any query: the dataset's scan becomes the
//! reading of the files (each served column in its type, as for a file), and every aggregate over
//! filters and projections of it runs on the cluster ([`concord_query::remote::push_down`]).
//! Ballista is DataFusion, of the same version: it computes every expression as the node would.
//!
//! Limits: a plan that outlives the sub-query timeout is cancelled on the cluster (Ballista's
//! `CancelJob`), and so is one whose answer the node stops reading; the cluster's memory is its
//! executors' own pools; the groups that come back are counted by the node's limits like any
//! other rows.
//!
//! Invariant: what the cluster runs is the owner's plan over the dataset's rows, nothing more:
//! the plan the node checked, with the scan replaced by the reading of the registered files.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::serde::protobuf::CancelJobParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use concord_charter::SharedSchema;
use concord_query::dataset::{CsvOptions, DatasetFormat};
use concord_query::remote::{Engine, RemoteTable, portable};
use datafusion::arrow::array::{Array as _, Int64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::count::count;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, col, lit};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::SourceError;

/// Where a dataset on a Ballista cluster is, as the registry keeps it (the files' path is the
/// dataset's path).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BallistaSource {
    /// The scheduler: `df://HOST:PORT`.
    pub scheduler: String,
}

/// The scheduler's gRPC address (`http://HOST:PORT`) of `df://HOST:PORT`. Ballista's gRPC is
/// not encrypted, and the node fetches answers from the executors the scheduler names: only a
/// cluster on this machine's loopback is accepted (a remote one through a tunnel).
pub fn endpoint(url: &str) -> Result<String, SourceError> {
    let bad = |why: &str| {
        SourceError::Config(format!(
            "--ballista {url:?}: {why}; give the scheduler as df://HOST:PORT, for example df://127.0.0.1:50050"
        ))
    };
    let rest = url.strip_prefix("df://").ok_or_else(|| bad("it does not start with df://"))?;
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad("only a host and a port may follow df://"));
    }
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("it has no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("its port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("its port is 0"));
    }
    if !crate::loopback(host) {
        return Err(bad(
            "Ballista's gRPC is not encrypted, so the node talks only to a scheduler on its own loopback \
             (127.0.0.1, ::1 or localhost); reach a remote cluster through a tunnel",
        ));
    }
    Ok(format!("http://{host}:{port}"))
}

/// Every connection Ballista's client opens (to the scheduler, to the executors or flight proxy
/// the scheduler names for the answer) refused unless it is to loopback: the answer crosses in
/// clear, exact groups and per-person sums before the release rules.
fn loopback_only(
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Endpoint, Box<dyn std::error::Error + Send + Sync>> {
    match endpoint.uri().host() {
        Some(h) if crate::loopback(h) => Ok(endpoint),
        other => Err(format!(
            "the Ballista cluster named {} for its answer, which is not on loopback; Ballista's connections are \
             not encrypted, so the node reads answers from this machine only (run the executors' flight proxy on \
             the scheduler, or tunnel)",
            other.unwrap_or("no host")
        )
        .into()),
    }
}

/// How long a cancelled job's id is waited for (it comes with the scheduler's first answer).
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// How long the call that cancels a job may take.
const CANCEL_CALL: Duration = Duration::from_secs(10);

/// The engine of a dataset on a Ballista cluster: the scheduler, and the reading of the files.
#[derive(Debug)]
pub struct BallistaEngine {
    /// `http://HOST:PORT`.
    endpoint: String,
    /// The dataset's name, for messages.
    dataset: String,
    /// The reading of the files: their scan, then each served column in its type.
    reading: LogicalPlan,
    /// How long the cluster may take over one plan.
    timeout: Duration,
}

/// A dataset on a cluster as registration finds it: its schema, the columns left out, the rows
/// the cluster counted.
pub struct Described {
    /// The dataset's columns, with their shared types where a shared schema names them.
    pub schema: SchemaRef,
    /// The files' columns no shared schema can hold, each with its type and why.
    pub left_out: Vec<String>,
    /// The rows the cluster's `count(*)` found.
    pub rows: u64,
}

/// The table of the dataset `name`: the Parquet files at `path` (a file or a directory), read by
/// `source`'s cluster; `shared` as for a file. The node reads the files' footers for their
/// columns.
pub async fn table(
    name: &str,
    source: &BallistaSource,
    path: &Path,
    shared: Option<&SharedSchema>,
    timeout: Duration,
) -> Result<Arc<RemoteTable>, SourceError> {
    let endpoint = endpoint(&source.scheduler)?;
    let opened =
        concord_query::dataset::open(name, path, DatasetFormat::Parquet, shared, &CsvOptions::default())
            .await?;
    let engine =
        BallistaEngine { endpoint, dataset: name.to_owned(), reading: opened.plan().clone(), timeout };
    let schema = Arc::new(opened.plan().schema().as_arrow().clone());
    Ok(Arc::new(RemoteTable::new(schema, Arc::new(engine), opened.left_out().to_vec())))
}

/// Describes the dataset for registration: its columns, and its rows as the cluster counts
/// them (so that a cluster that cannot read the files is found now, not at a peer's query).
pub async fn describe(
    name: &str,
    source: &BallistaSource,
    path: &Path,
    shared: Option<&SharedSchema>,
    timeout: Duration,
) -> Result<Described, SourceError> {
    let table = table(name, source, path, shared, timeout).await?;
    let fail = |e: DataFusionError| cluster_error(name, &source.scheduler, e);
    let provider: Arc<dyn TableProvider> = table.clone();
    let count = LogicalPlanBuilder::scan("dataset", provider_as_source(provider), None)
        .and_then(|b| b.aggregate(Vec::<Expr>::new(), vec![count(lit(1)).alias("rows")]))
        .and_then(LogicalPlanBuilder::build)
        .map_err(fail)?;
    let plan = table.engine().run(&count).map_err(fail)?;
    let batches =
        datafusion::physical_plan::collect(plan, Arc::new(TaskContext::default())).await.map_err(fail)?;
    let rows = counted(&batches).ok_or_else(|| SourceError::Table {
        table: path.display().to_string(),
        reason: format!("the cluster at {} answered count(*) with no count", source.scheduler),
    })?;
    Ok(Described { schema: table.schema(), left_out: table.left_out().to_vec(), rows })
}

/// The one count of a `count(*)` answer.
fn counted(batches: &[RecordBatch]) -> Option<u64> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let c = b.column(0).as_any().downcast_ref::<Int64Array>()?;
    (!c.is_null(0)).then(|| u64::try_from(c.value(0)).ok()).flatten()
}

fn cluster_error(name: &str, scheduler: &str, e: DataFusionError) -> SourceError {
    SourceError::Ballista {
        target: scheduler.to_owned(),
        reason: format!(
            "dataset {name}: {}; check that the scheduler runs and that its executors read the files",
            e.strip_backtrace()
        ),
    }
}

impl BallistaEngine {
    /// The reading of the files under `name`, with `columns` of it.
    fn reading_as(
        &self,
        name: datafusion::common::TableReference,
        columns: &[String],
    ) -> Result<LogicalPlan, DataFusionError> {
        LogicalPlanBuilder::from(self.reading.clone())
            .alias(name.clone())?
            .project(columns.iter().map(|c| Expr::Column(Column::new(Some(name.clone()), c))))?
            .build()
    }

    /// A plan the cluster runs: `plan` as the scheduler reads it.
    fn exec(&self, plan: LogicalPlan) -> Arc<dyn ExecutionPlan> {
        let session = format!("concord-{}-{:016x}", self.dataset, rand::random::<u64>());
        let inner = DistributedQueryExec::<LogicalPlanNode>::new(
            self.endpoint.clone(),
            BallistaConfig::default(),
            plan,
            session,
        );
        Arc::new(ClusterExec {
            inner: Arc::new(inner),
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
        })
    }
}

impl Engine for BallistaEngine {
    fn name(&self) -> &str {
        "Ballista"
    }

    fn computes_as_datafusion(&self) -> bool {
        true
    }

    fn scan(
        &self,
        schema: SchemaRef,
        _projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        // Columns without their table: the reading is the only relation.
        let bare = filters.iter().map(concord_query::remote::unqualified).collect::<Result<Vec<_>, _>>()?;
        let mut b = LogicalPlanBuilder::from(self.reading.clone());
        if let Some(f) = conjunction(bare) {
            b = b.filter(f)?;
        }
        b = b.project(schema.fields().iter().map(|f| col(Column::new_unqualified(f.name()))))?;
        if let Some(n) = limit {
            b = b.limit(0, Some(n))?;
        }
        Ok(self.exec(b.build()?))
    }

    fn run(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        // Without the node's own functions (the clamp of differential privacy), which the
        // cluster does not have.
        let original = plan;
        let plan = portable(plan.clone())?;
        let on_cluster = plan
            .transform_up_with_subqueries(|node| match node {
                LogicalPlan::TableScan(scan)
                    if source_as_provider(&scan.source)
                        .ok()
                        .is_some_and(|p| p.downcast_ref::<RemoteTable>().is_some()) =>
                {
                    // The filters pushed into the scan are applied again above it.
                    let columns: Vec<String> =
                        scan.projected_schema.fields().iter().map(|f| f.name().clone()).collect();
                    Ok(Transformed::yes(self.reading_as(scan.table_name.clone(), &columns)?))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        // Each output under the name the node's plan has for it (`portable` names scans bare,
        // which renames the aggregates' outputs).
        let named: Vec<Expr> = on_cluster
            .schema()
            .iter()
            .zip(plan_names(original))
            .map(|((q, f), name)| Expr::Column(Column::from((q, f))).alias(name))
            .collect();
        let on_cluster = LogicalPlanBuilder::from(on_cluster).project(named)?.build()?;
        tracing::debug!(target: "concord_source::ballista", dataset = %self.dataset, "plan sent to the cluster:\n{}", on_cluster.display_indent());
        Ok(self.exec(on_cluster))
    }
}

/// The names of `plan`'s outputs, in order.
fn plan_names(plan: &LogicalPlan) -> Vec<String> {
    plan.schema().fields().iter().map(|f| f.name().clone()).collect()
}

/// A plan that runs on the cluster: Ballista's client, with the node's limits. The job is
/// cancelled on the cluster when the node stops reading its answer before the end (a timeout,
/// an error, a cancelled query) and when it outlives [`BallistaEngine::timeout`].
#[derive(Debug)]
struct ClusterExec {
    inner: Arc<DistributedQueryExec<LogicalPlanNode>>,
    endpoint: String,
    timeout: Duration,
}

impl DisplayAs for ClusterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "BallistaClusterExec: scheduler={}", self.endpoint)
    }
}

impl ExecutionPlan for ClusterExec {
    fn name(&self) -> &str {
        "BallistaClusterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        )
            -> Result<datafusion::common::tree_node::TreeNodeRecursion, DataFusionError>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion, DataFusionError> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("BallistaClusterExec has no children".into()))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream, DataFusionError> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "BallistaClusterExec has one partition, not {partition}"
            )));
        }
        use ballista_core::extension::SessionConfigExt as _;
        // Only the session's settings reach the client (and the scheduler): with every
        // connection held to loopback.
        let config = context
            .session_config()
            .clone()
            .with_ballista_override_create_grpc_client_endpoint(Arc::new(loopback_only));
        let stream = self.inner.execute(0, Arc::new(TaskContext::default().with_session_config(config)))?;
        Ok(Box::pin(Guarded {
            schema: self.inner.schema(),
            stream,
            exec: self.inner.clone(),
            endpoint: self.endpoint.clone(),
            deadline: Box::pin(tokio::time::sleep(self.timeout)),
            timeout: self.timeout,
            started: false,
            done: false,
        }))
    }
}

/// The cluster's answer, read within the deadline; the job is cancelled if it is not read to
/// its end.
struct Guarded {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    exec: Arc<DistributedQueryExec<LogicalPlanNode>>,
    endpoint: String,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    /// Whether the stream was polled: the job is submitted at the first poll.
    started: bool,
    done: bool,
}

impl Stream for Guarded {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.cancel();
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(SourceError::Ballista {
                target: self.endpoint.replace("http://", "df://"),
                reason: format!(
                    "it did not answer within {} s (the sub-query timeout); the job was cancelled",
                    self.timeout.as_secs_f64()
                ),
            })))));
        }
        self.started = true;
        let next = self.stream.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.cancel(),
            _ => {}
        }
        next
    }
}

impl RecordBatchStream for Guarded {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Guarded {
    /// Cancels the job on the cluster, once, in the background. A job whose id the scheduler
    /// has not sent yet is waited for (its stream read and dropped) for up to [`CANCEL_WAIT`];
    /// a stream never polled submitted no job.
    fn cancel(&mut self) {
        if std::mem::replace(&mut self.done, true) || !self.started {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let empty = Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(self.schema.clone()));
        let mut stream = std::mem::replace(&mut self.stream, empty);
        let (exec, endpoint) = (self.exec.clone(), self.endpoint.clone());
        rt.spawn(async move {
            let known = async {
                while exec.job_id().is_none() {
                    if futures::StreamExt::next(&mut stream).await.is_none() {
                        break;
                    }
                }
                exec.job_id()
            };
            let Ok(Some(job)) = tokio::time::timeout(CANCEL_WAIT, known).await else {
                return;
            };
            drop(stream);
            let job_id = job.to_string();
            let call = async {
                let mut client = SchedulerGrpcClient::connect(endpoint.clone()).await.map_err(|e| e.to_string())?;
                client.cancel_job(CancelJobParams { job_id: job_id.clone() }).await.map_err(|e| e.code().to_string())
            };
            match tokio::time::timeout(CANCEL_CALL, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(target: "concord_source::ballista", %endpoint, job = %job_id, "cancelling the job failed: {e}");
                }
                Err(_) => {
                    tracing::warn!(target: "concord_source::ballista", %endpoint, job = %job_id, "cancelling the job took over {} s", CANCEL_CALL.as_secs());
                }
            }
        });
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_scheduler_on_loopback_is_accepted() {
        assert_eq!(endpoint("df://127.0.0.1:50050").ok(), Some("http://127.0.0.1:50050".into()));
        assert_eq!(endpoint("df://[::1]:50050").ok(), Some("http://[::1]:50050".into()));
        assert_eq!(endpoint("df://localhost:1").ok(), Some("http://localhost:1".into()));
        for (url, why) in [
            ("http://127.0.0.1:50050", "does not start with df://"),
            ("df://127.0.0.1", "no port"),
            ("df://127.0.0.1:0", "port is 0"),
            ("df://127.0.0.1:99999", "not a number"),
            ("df://10.0.0.7:50050", "loopback"),
            ("df://localhost.example.org:50050", "loopback"),
            ("df://user@127.0.0.1:50050", "only a host and a port"),
            ("df://127.0.0.1:50050/x", "only a host and a port"),
        ] {
            let e = endpoint(url).expect_err(url).to_string();
            assert!(e.contains(why) && e.contains("df://HOST:PORT"), "{url}: {e}");
        }
    }

    /// A scheduler that takes the connection and never answers: the node's deadline ends the
    /// wait with an error that says so, instead of holding the query for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_that_does_not_answer_is_cut_off_at_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.sql("SELECT 1 AS x")
            .await
            .expect("plans")
            .write_parquet(
                dir.path().to_str().expect("utf-8"),
                datafusion::dataframe::DataFrameWriteOptions::new(),
                None,
            )
            .await
            .expect("writes");
        let source = BallistaSource { scheduler: format!("df://{addr}") };
        let t = table("t", &source, dir.path(), None, Duration::from_millis(300)).await.expect("opens");
        let e = describe("t", &source, dir.path(), None, Duration::from_millis(300))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("did not answer within 0.3 s") && e.contains(&source.scheduler), "{e}");
        // Another host, named where Ballista would connect, is refused.
        let far = tonic::transport::Endpoint::from_static("http://192.0.2.7:50051");
        let e = loopback_only(far).expect_err("not loopback").to_string();
        assert!(e.contains("192.0.2.7") && e.contains("not on loopback"), "{e}");
        let near = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051");
        assert!(loopback_only(near).is_ok());
        // A scan, too.
        let scan = t.engine().scan(t.schema(), None, &[], None).expect("plans");
        let e = datafusion::physical_plan::collect(scan, Arc::new(TaskContext::default()))
            .await
            .expect_err("no answer")
            .to_string();
        assert!(e.contains("did not answer within 0.3 s"), "{e}");
    }
}
