//! `concord bench governance`: many members on loopback, each round a proposal voted to its
//! threshold; timed from the vote that reaches the threshold until every node runs the new
//! version. The votes before it are cast first and their checkpoints cosigned, as when votes
//! come minutes apart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use concord_charter::governance::{Ballot, Change};
use concord_node::NodeError;

use crate::demo::{DemoMember, MemberSpec, setup, start_all};

/// What `concord bench governance` is given.
#[derive(Clone, Debug)]
pub struct GovernanceBenchOptions {
    /// Folder for the members' nodes; wiped at the start of a run.
    pub dir: PathBuf,
    /// Members of the federation; at least 2.
    pub members: usize,
    /// Proposals adopted, each timed.
    pub rounds: usize,
    /// First of the ports the members listen on, two per member (local, peer).
    pub port_base: u16,
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct GovernanceReport {
    /// Members of the federation.
    pub members: usize,
    /// Yes votes a proposal needs to be adopted, from the genesis charter.
    pub threshold: usize,
    /// Setting up and starting every node.
    pub setup: Duration,
    /// Per round: from the vote that reaches the threshold until every node runs the version.
    pub adoption: Vec<Duration>,
}

/// Waits (up to 30 s) until every node has published a checkpoint of its whole log.
pub(crate) async fn settle(nodes: &[std::sync::Arc<concord_node::node::Node>]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let done = nodes.iter().all(|n| {
            let size = n.log.size().unwrap_or(u64::MAX);
            n.log.published_checkpoint().ok().flatten().is_some_and(|(s, _)| s >= size)
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the benchmark; `progress` hears what it is doing.
pub async fn governance(
    opts: &GovernanceBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<GovernanceReport, NodeError> {
    if opts.members < 2 {
        return Err(NodeError::Config("a federation for this benchmark needs at least 2 members".into()));
    }
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    let started = Instant::now();
    let members = set_up_members(opts, progress).await?;
    let running = start_all(&members).await?;
    let setup_time = started.elapsed();
    let nodes: Vec<_> = running.iter().map(|r| r.node.clone()).collect();
    let threshold = nodes[0].charter().charter.threshold;
    let mut adoption = Vec::new();
    let result = async {
        for round in 0..opts.rounds {
            adoption.push(timed_round(&nodes, threshold, round, progress).await?);
        }
        Ok::<_, NodeError>(())
    }
    .await;
    for r in running {
        r.stop().await;
    }
    result?;
    Ok(GovernanceReport { members: opts.members, threshold, setup: setup_time, adoption })
}

/// Sets up `opts.members` members without data, each allowed to send a vote to every other.
async fn set_up_members(
    opts: &GovernanceBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<Vec<DemoMember>, NodeError> {
    let specs: Vec<MemberSpec> = (0..opts.members)
        .map(|i| MemberSpec {
            id: format!("m{i:03}"),
            name: format!("Member {i}"),
            jurisdiction: "XX".into(),
            files: Vec::new(),
        })
        .collect();
    progress(&format!("setting up {} members", opts.members));
    let members = setup(&opts.dir, "bench", &specs, Vec::new(), opts.port_base).await?;
    for m in &members {
        crate::bench::set_limits(&m.dir, crate::bench::unlimited_peer_rate)?;
    }
    Ok(members)
}

/// One round: a proposal and the votes below the threshold, cosigned, then the timed vote that
/// reaches it; returns the time until every node runs the new version.
pub(crate) async fn timed_round(
    nodes: &[std::sync::Arc<concord_node::node::Node>],
    threshold: usize,
    round: usize,
    progress: &dyn Fn(&str),
) -> Result<Duration, NodeError> {
    let version = nodes[0].charter_version();
    let size = 11 + round as u64;
    let id = nodes[0].propose(vec![Change::MinGroupSize { size }], Duration::from_secs(3600)).await?;
    for n in nodes.iter().take(threshold - 1) {
        n.cast_vote(&id, Ballot::Yes, "").await?;
    }
    // Votes come minutes apart in a federation: let the checkpoints of the votes so far
    // be cosigned (every log entry is witnessed by the others) before the timed vote.
    settle(nodes).await;
    let t = Instant::now();
    // The voter's call returns once its pushes are answered; the clock stops when the
    // last node runs the new version, however it learnt of it.
    let voter = nodes[threshold - 1].clone();
    let vote = tokio::spawn(async move { voter.cast_vote(&id, Ballot::Yes, "").await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes.iter().any(|n| n.charter_version() <= version) {
        if Instant::now() > deadline {
            return Err(NodeError::Config(format!(
                "round {round}: not every node adopted version {} within 60 s",
                version + 1
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t.elapsed();
    vote.await??;
    progress(&format!(
        "round {round}: version {} on all {} nodes {:.1} ms after the threshold vote",
        version + 1,
        nodes.len(),
        took.as_secs_f64() * 1000.0
    ));
    Ok(took)
}
