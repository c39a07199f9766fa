//! An Apache DataFusion Ballista cluster on 127.0.0.1, for the scenario tests and `concord bench
//! scale`: a scheduler and executors started with Ballista's library API in this process, each
//! executor with a bounded memory pool (the cluster's own memory limit). The cluster runs until
//! the process's runtime ends. The scheduler counts its jobs' ends ([`JobCounts`]), so that a
//! test can see what became of a job the node gave up on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt as _;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::metrics::SchedulerMetricsCollector;
use ballista_scheduler::scheduler_process::start_grpc_service_with_listener;
use ballista_scheduler::scheduler_server::SchedulerServer;
use concord_node::NodeError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

/// A running cluster: its scheduler's address, and what became of its jobs.
pub struct Cluster {
    scheduler: SocketAddr,
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    jobs: Arc<JobEnds>,
}

/// How many of the scheduler's jobs were submitted, completed, failed and cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Jobs submitted.
    pub submitted: u64,
    /// Jobs that ran to their end.
    pub completed: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Jobs cancelled (by a client's `CancelJob`).
    pub cancelled: u64,
}

/// The scheduler's metrics collector: counts of job ends.
#[derive(Default)]
struct JobEnds {
    submitted: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

impl SchedulerMetricsCollector for JobEnds {
    fn record_submitted(&self, _job: &JobId, _queued_at: u64, _submitted_at: u64) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    fn record_completed(&self, _job: &JobId, _queued_at: u64, _completed_at: u64) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    fn record_failed(&self, _job: &JobId, _queued_at: u64, _failed_at: u64) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn record_cancelled(&self, _job: &JobId) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    fn set_pending_tasks_queue_size(&self, _value: u64) {}

    fn gather_metrics(&self) -> ballista_core::error::Result<Option<(Vec<u8>, String)>> {
        Ok(None)
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Config(format!("Ballista cluster for the tests: {what}: {e}"))
}

impl Cluster {
    /// Starts a scheduler on 127.0.0.1 and `executors` executors of `vcores` task slots and
    /// `memory` bytes of memory each, and waits until every executor has registered.
    pub async fn start(executors: usize, vcores: usize, memory: usize) -> Result<Self, NodeError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| failed("binding the scheduler", e))?;
        let scheduler = listener.local_addr().map_err(|e| failed("the scheduler's address", e))?;
        let config = SchedulerConfig {
            external_host: scheduler.ip().to_string(),
            bind_port: scheduler.port(),
            scheduling_policy: TaskSchedulingPolicy::PullStaged,
            min_ready_executors: executors,
            ..SchedulerConfig::default()
        };
        let cluster =
            BallistaCluster::new_from_config(&config).await.map_err(|e| failed("the cluster's state", e))?;
        let config = Arc::new(config);
        let jobs = Arc::new(JobEnds::default());
        let mut server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
            config.scheduler_endpoint(),
            cluster,
            BallistaCodec::default(),
            config.clone(),
            jobs.clone(),
        );
        server.init().await.map_err(|e| failed("starting the scheduler", e))?;
        tokio::spawn(start_grpc_service_with_listener(listener, server.clone()));
        for _ in 0..executors {
            let client = SchedulerGrpcClient::connect(format!("http://{scheduler}"))
                .await
                .map_err(|e| failed("connecting an executor to the scheduler", e))?;
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_limit(memory, 1.0)
                .build_arc()
                .map_err(|e| failed("an executor's memory pool", e))?;
            let state = SessionStateBuilder::new()
                .with_default_features()
                .with_config(SessionConfig::new_with_ballista())
                .with_runtime_env(runtime)
                .build();
            ballista_executor::new_standalone_executor_from_state(client, vcores, &state)
                .await
                .map_err(|e| failed("starting an executor", e))?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !server.is_ready() {
            if Instant::now() > deadline {
                return Err(failed(
                    "waiting for executors",
                    format!("fewer than {executors} registered within 30 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { scheduler, server, jobs })
    }

    /// What became of the scheduler's jobs so far.
    pub fn jobs(&self) -> JobCounts {
        JobCounts {
            submitted: self.jobs.submitted.load(Ordering::Relaxed),
            completed: self.jobs.completed.load(Ordering::Relaxed),
            failed: self.jobs.failed.load(Ordering::Relaxed),
            cancelled: self.jobs.cancelled.load(Ordering::Relaxed),
        }
    }

    /// Jobs running on the cluster now.
    pub fn running_jobs(&self) -> usize {
        self.server.state.task_manager.get_running_job_cache().len()
    }

    /// A Ballista client's session: its queries run on the cluster (for running the same SQL
    /// straight to the cluster, beside the federation).
    pub fn client(&self) -> Result<datafusion::prelude::SessionContext, NodeError> {
        use ballista_core::extension::SessionStateExt as _;
        let state =
            datafusion::execution::SessionState::new_ballista_state(format!("http://{}", self.scheduler))
                .map_err(|e| failed("a client session", e))?;
        Ok(datafusion::prelude::SessionContext::new_with_state(state))
    }

    /// The scheduler's address as `concord dataset add --ballista` takes it: `df://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("df://{}", self.scheduler)
    }
}

/// Writes the rows `sql` selects (DataFusion's SQL, table functions such as `generate_series`
/// included) as `parts` Parquet files in `dir`, dealt out by the hash of the first column, for a
/// cluster's executors to share out. Returns the rows written.
pub async fn write_parts(sql: &str, dir: &Path, parts: usize) -> Result<u64, NodeError> {
    use datafusion::logical_expr::{Partitioning, col};
    let ctx = datafusion::prelude::SessionContext::new();
    let df = ctx.sql(sql).await.map_err(|e| failed("the rows to write", e))?;
    let first = df
        .schema()
        .fields()
        .first()
        .map(|f| f.name().clone())
        .ok_or_else(|| failed("the rows to write", "no column"))?;
    let df = df
        .repartition(Partitioning::Hash(vec![col(datafusion::common::Column::new_unqualified(first))], parts))
        .map_err(|e| failed("dealing the rows out", e))?;
    std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    let p = dir.to_str().ok_or_else(|| failed("the folder", "not UTF-8"))?;
    let written = df
        .write_parquet(p, datafusion::dataframe::DataFrameWriteOptions::new(), None)
        .await
        .map_err(|e| failed("writing Parquet", e))?;
    let rows = written
        .first()
        .and_then(|b| {
            b.column(0).as_any().downcast_ref::<datafusion::arrow::array::UInt64Array>().map(|a| a.value(0))
        })
        .unwrap_or(0);
    Ok(rows)
}
