//! `concord bench members`: a federation of many members on loopback, every node in this one
//! process with its own keys, state and listeners, answering one small federated query over all
//! of them; timed against the same query over three members, run alongside (first), with the
//! same rows per member. Also what grows with members beside the query: how long until every
//! node's log is published with its witnesses' cosignatures after the queries, and one charter
//! change from the deciding vote to every node on the new version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord_charter::{ColumnType, SchemaColumn, SharedSchema};
use concord_node::NodeError;

use crate::demo::{DemoMember, MemberSpec, api_query, setup, start_all};

/// The query every federation answers: a few groups over every member's rows.
pub const MEMBERS_SQL: &str =
    "SELECT region, count(*) AS n, sum(days) AS d FROM cases GROUP BY region ORDER BY region";

/// Members of the baseline federation.
pub const BASELINE_MEMBERS: usize = 3;

/// Rows each member holds.
const ROWS_PER_MEMBER: usize = 40;

/// What `concord bench members` is given.
#[derive(Clone, Debug)]
pub struct MembersBenchOptions {
    /// Folder for the members' nodes; wiped at the start of a run.
    pub dir: PathBuf,
    /// Members of the large federation; more than [`BASELINE_MEMBERS`].
    pub members: usize,
    /// Timed queries in each federation, after two warm-up queries.
    pub queries: usize,
    /// First of the ports; each member takes three, the baseline's after the large one's.
    pub port_base: u16,
}

/// Figures of one federation.
#[derive(Clone, Debug)]
pub struct FederationFigures {
    /// Members.
    pub members: usize,
    /// Setting up every node folder and starting every node.
    pub setup: Duration,
    /// Each timed query, as the analyst saw it.
    pub latency: Vec<Duration>,
    /// After the last query: until every node's log is published with its cosignatures.
    pub settle: Duration,
    /// Each timed query asked on a quiet federation: after every log was published and
    /// cosigned, so that no witnessing of the queries before it shares the machine's cores.
    pub quiet: Vec<Duration>,
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct MembersReport {
    /// The baseline, three members.
    pub baseline: FederationFigures,
    /// The large federation.
    pub large: FederationFigures,
    /// In the large federation: from the deciding vote to every node on the new version.
    pub adoption: Duration,
    /// Yes votes that decide, in the large federation.
    pub threshold: usize,
}

impl MembersReport {
    /// Median latency of the large federation over the baseline's.
    pub fn ratio(&self) -> f64 {
        crate::bench::ms(crate::bench::percentile(&self.large.latency, 0.5))
            / crate::bench::ms(crate::bench::percentile(&self.baseline.latency, 0.5)).max(1e-9)
    }

    /// What each member beyond the baseline adds to the median latency.
    pub fn per_member(&self) -> Duration {
        let (a, b) = (
            crate::bench::percentile(&self.baseline.latency, 0.5),
            crate::bench::percentile(&self.large.latency, 0.5),
        );
        b.saturating_sub(a) / (self.large.members - self.baseline.members).max(1) as u32
    }

    /// Median latency on a quiet federation, the large one's over the baseline's.
    pub fn quiet_ratio(&self) -> f64 {
        crate::bench::ms(crate::bench::percentile(&self.large.quiet, 0.5))
            / crate::bench::ms(crate::bench::percentile(&self.baseline.quiet, 0.5)).max(1e-9)
    }

    /// What each member beyond the baseline adds to the median latency on a quiet federation.
    pub fn quiet_per_member(&self) -> Duration {
        let (a, b) = (
            crate::bench::percentile(&self.baseline.quiet, 0.5),
            crate::bench::percentile(&self.large.quiet, 0.5),
        );
        b.saturating_sub(a) / (self.large.members - self.baseline.members).max(1) as u32
    }
}

fn cases_schema() -> SharedSchema {
    SharedSchema {
        name: "cases".into(),
        version: 1,
        columns: vec![
            SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
            SchemaColumn { name: "days".into(), ty: ColumnType::Int64, personal: false },
        ],
        privacy_unit: None,
    }
}

/// Member `i`'s `cases.csv`: [`ROWS_PER_MEMBER`] rows over four regions.
fn write_cases(dir: &Path, i: usize) -> Result<PathBuf, NodeError> {
    let folder = dir.join("data").join(format!("m{i:03}"));
    std::fs::create_dir_all(&folder).map_err(|e| NodeError::io(&folder, e))?;
    let path = folder.join("cases.csv");
    let mut text = String::from("region,days\n");
    for r in 0..ROWS_PER_MEMBER {
        text.push_str(&format!("R{},{}\n", (r + i) % 4, (r * 7 + i) % 30));
    }
    std::fs::write(&path, text).map_err(|e| NodeError::io(&path, e))?;
    Ok(path)
}

/// Runs the benchmark; `progress` hears what it is doing.
pub async fn members(
    opts: &MembersBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<MembersReport, NodeError> {
    if opts.members <= BASELINE_MEMBERS || opts.queries == 0 {
        return Err(NodeError::Config(format!(
            "--members must be more than {BASELINE_MEMBERS} (the baseline) and --queries at least 1"
        )));
    }
    let needed = 3 * (opts.members + BASELINE_MEMBERS);
    if usize::from(opts.port_base) + needed > usize::from(u16::MAX) {
        return Err(NodeError::Config(format!(
            "--port-base {} leaves no room for {needed} ports",
            opts.port_base
        )));
    }
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    let baseline_ports = opts.port_base + 3 * opts.members as u16;
    let (baseline, _) = federation(opts, BASELINE_MEMBERS, baseline_ports, false, progress).await?;
    let (large, governance) = federation(opts, opts.members, opts.port_base, true, progress).await?;
    let (adoption, threshold) = governance.unwrap_or_default();
    Ok(MembersReport { baseline, large, adoption, threshold })
}

/// One federation of `n` members set up, started, queried and stopped; with `govern`, one
/// charter change timed too (and the threshold).
async fn federation(
    opts: &MembersBenchOptions,
    n: usize,
    port_base: u16,
    govern: bool,
    progress: &dyn Fn(&str),
) -> Result<(FederationFigures, Option<(Duration, usize)>), NodeError> {
    let dir = opts.dir.join(format!("{n}-members"));
    let started = Instant::now();
    let specs = (0..n)
        .map(|i| {
            Ok(MemberSpec {
                id: format!("m{i:03}"),
                name: format!("Member {i}"),
                jurisdiction: "XX".into(),
                files: vec![write_cases(&dir, i)?],
            })
        })
        .collect::<Result<Vec<_>, NodeError>>()?;
    progress(&format!("setting up {n} members"));
    let members = setup(&dir, "bench", &specs, vec![cases_schema()], port_base).await?;
    for m in &members {
        crate::bench::set_limits(&m.dir, crate::bench::unlimited_peer_rate)?;
    }
    let running = start_all(&members).await?;
    let setup = started.elapsed();
    let nodes: Vec<_> = running.iter().map(|r| r.node.clone()).collect();
    let result = async {
        let latency = timed_queries(&members[0], n, opts.queries, None, progress).await?;
        let t = Instant::now();
        crate::governance_bench::settle(&nodes).await;
        let settle = t.elapsed();
        let quiet = timed_queries(&members[0], n, opts.queries, Some(&nodes), progress).await?;
        let governance = if govern {
            let threshold = nodes[0].charter().charter.threshold;
            let took = crate::governance_bench::timed_round(&nodes, threshold, 0, progress).await?;
            Some((took, threshold))
        } else {
            None
        };
        Ok::<_, NodeError>((FederationFigures { members: n, setup, latency, settle, quiet }, governance))
    }
    .await;
    for r in running {
        r.stop().await;
    }
    result
}

/// Two warm-up queries (catalogs read, connections opened), then `queries` timed ones; each
/// must have every member's part. With `quiet`, each is asked once every node's log is
/// published and cosigned (not timed).
async fn timed_queries(
    asker: &DemoMember,
    n: usize,
    queries: usize,
    quiet: Option<&[std::sync::Arc<concord_node::node::Node>]>,
    progress: &dyn Fn(&str),
) -> Result<Vec<Duration>, NodeError> {
    let mut latency = Vec::new();
    for i in 0..queries + 2 {
        if let Some(nodes) = quiet {
            crate::governance_bench::settle(nodes).await;
        }
        let t = Instant::now();
        let r = api_query(&asker.local_url, &asker.analyst_token, MEMBERS_SQL).await?;
        let took = t.elapsed();
        if r.provenance.len() != n {
            return Err(NodeError::Config(format!(
                "a query over {n} members had {} parts: {:?}",
                r.provenance.len(),
                r.provenance.iter().map(|p| p.member.as_str()).collect::<Vec<_>>()
            )));
        }
        if i >= 2 {
            latency.push(took);
            let how = if quiet.is_some() { "quiet query" } else { "query" };
            progress(&format!("{n} members: {how} {} took {:.1} ms", i - 1, crate::bench::ms(took)));
        }
    }
    Ok(latency)
}
