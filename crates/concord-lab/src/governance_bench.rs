//! `concord bench governance`: many members on loopback, each round a proposal voted to its
//! threshold; timed from the vote that reaches the threshold until every node runs the new
//! version. The votes before it are cast first and their checkpoints cosigned, as when votes
//! come minutes apart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use concord_charter::governance::{Ballot, Change};
use concord_node::NodeError;

use crate::demo::{MemberSpec, setup, start_all};

/// What `concord bench governance` is given.
#[derive(Clone, Debug)]
pub struct GovernanceBenchOptions {
    pub dir: PathBuf,
    pub members: usize,
    pub rounds: usize,
    pub port_base: u16,
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct GovernanceReport {
    pub members: usize,
    pub threshold: usize,
    /// Setting up and starting every node.
    pub setup: Duration,
    /// Per round: from the vote that reaches the threshold until every node runs the version.
    pub adoption: Vec<Duration>,
}

/// Waits (up to 30 s) until every node has published a checkpoint of its whole log.
async fn settle(nodes: &[std::sync::Arc<concord_node::node::Node>]) {
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
        // Every vote goes to every member: more than the default rate one member may send.
        let nd = concord_node::store::config::NodeDir::new(&m.dir);
        let mut cfg = nd.load_config()?;
        cfg.limits.peer_requests_per_sec = 1000;
        cfg.limits.peer_burst = 1000;
        nd.save_config(&cfg)?;
    }
    let running = start_all(&members).await?;
    let setup_time = started.elapsed();
    let nodes: Vec<_> = running.iter().map(|r| r.node.clone()).collect();
    let threshold = nodes[0].charter().charter.threshold;
    let mut adoption = Vec::new();
    let result = async {
        for round in 0..opts.rounds {
            let version = nodes[0].charter_version();
            let size = 11 + round as u64;
            let id = nodes[0].propose(vec![Change::MinGroupSize { size }], Duration::from_secs(3600)).await?;
            for n in nodes.iter().take(threshold - 1) {
                n.cast_vote(&id, Ballot::Yes, "").await?;
            }
            // Votes come minutes apart in a federation: let the checkpoints of the votes so far
            // be cosigned (every log entry is witnessed by the others) before the timed vote.
            settle(&nodes).await;
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
            adoption.push(took);
        }
        Ok(())
    }
    .await;
    for r in running {
        r.stop().await;
    }
    result?;
    Ok(GovernanceReport { members: opts.members, threshold, setup: setup_time, adoption })
}
