//! Nodes killed with SIGKILL at random moments while analysts query, cycle after cycle
//! (`concord bench crash`, and the crash test with fewer cycles).
//!
//! Three members, each node in its own process (`concord node run`). Alpha's and bravo's
//! analysts query without pause; each cycle a node chosen at random is killed, in the middle of
//! whatever it was doing (appends included), restarted and waited for. At the end every answer
//! an analyst received must be in the requester's log as an access made with that receipt and in
//! the owner's log as its release, and an audit of every member must pass; what was served but
//! never received (a requester killed before it logged the answer) is counted, as the audit
//! names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_node::NodeError;
use concord_node::net::client::local_call;
use concord_node::net::protocol::commitment;
use concord_node::store::config::NodeDir;
use concord_node::store::entry::LogEntry;

use crate::demo::{DemoMember, MemberSpec, api_query, setup};
use crate::processes::NodeProcesses;

/// What to run.
pub struct CrashOptions {
    /// The federation's folder; made afresh.
    pub dir: PathBuf,
    /// How many times a node is killed and restarted.
    pub cycles: usize,
    /// The first of the nine ports the members listen on.
    pub port_base: u16,
    /// The `concord` executable that runs each node.
    pub exe: PathBuf,
    /// Seeds the choice of victims and of the moments they are killed.
    pub seed: u64,
}

/// What a run found.
pub struct CrashReport {
    /// Kills of each member.
    pub kills: BTreeMap<String, usize>,
    /// From each kill until the node answered again.
    pub restarts: Vec<Duration>,
    /// Answers the analysts received (one per owner's part, by its receipt).
    pub received: usize,
    /// Received answers not found in both logs, each named; empty when nothing was lost.
    pub lost: Vec<String>,
    /// Entries in the three logs at the end.
    pub entries: u64,
    /// Whether an audit of every member passed (within 90 s of the last restart).
    pub audit_passed: bool,
    /// The last audit's report when it did not pass.
    pub audit: serde_json::Value,
    /// Releases served but never received, as the audit names them.
    pub unreceived: usize,
    /// The whole run.
    pub wall: Duration,
}

/// Sets up the federation, runs the cycles and checks every log. The nodes are stopped at the end.
pub async fn run(opts: &CrashOptions, progress: &dyn Fn(&str)) -> Result<CrashReport, NodeError> {
    let started = Instant::now();
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| NodeError::io(&opts.dir, e))?;
    let ids = ["alpha", "bravo", "charlie"];
    let specs = specs_of(&opts.dir, &ids)?;
    let members = setup(&opts.dir, "crash", &specs, vec![cases_schema()], opts.port_base).await?;
    let mut nodes = NodeProcesses::start(&opts.exe, &members).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let analysts = analysts_querying(&members, &stop);
    let (kills, restarts) = kill_and_restart_at_random(&mut nodes, &members, opts, progress).await;
    let restarts = match restarts {
        Ok(r) => r,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut received = Vec::new();
    for a in analysts {
        received.extend(a.await?);
    }
    progress("checking every log");
    let dirs: Vec<PathBuf> = members.iter().map(|m| m.dir.clone()).collect();
    let (lost, entries) = answers_in_both_logs(&ids, &dirs, &received)?;
    let (audit_passed, audit) = audit_until_it_passes(&members[0]).await?;
    let unreceived = audit["report"]["unreceived"].as_array().map(Vec::len).unwrap_or(0);
    drop(nodes);
    Ok(CrashReport {
        kills,
        restarts,
        received: received.len(),
        lost,
        entries,
        audit_passed,
        audit,
        unreceived,
        wall: started.elapsed(),
    })
}

/// Each member's spec, with a `cases.csv` of 20 rows written under `dir`.
fn specs_of(dir: &Path, ids: &[&str]) -> Result<Vec<MemberSpec>, NodeError> {
    let mut specs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let folder = dir.join("data").join(id);
        std::fs::create_dir_all(&folder).map_err(|e| NodeError::io(&folder, e))?;
        let file = folder.join("cases.csv");
        let mut csv = String::from("region,days\n");
        for r in 0..20 {
            csv.push_str(&format!("r{},{}\n", (r + i) % 4, r));
        }
        std::fs::write(&file, csv).map_err(|e| NodeError::io(&file, e))?;
        specs.push(MemberSpec {
            id: (*id).into(),
            name: id.to_string(),
            jurisdiction: "XX".into(),
            files: vec![file],
        });
    }
    Ok(specs)
}

/// The shared schema `cases`: a region and a number of days.
fn cases_schema() -> concord_charter::SharedSchema {
    let column = |name: &str, ty| concord_charter::SchemaColumn { name: name.into(), ty, personal: false };
    concord_charter::SharedSchema {
        name: "cases".into(),
        version: 1,
        columns: vec![
            column("region", concord_charter::ColumnType::Utf8),
            column("days", concord_charter::ColumnType::Int64),
        ],
        privacy_unit: None,
    }
}

/// An analyst's task: the (requester, receipt digest) of every answer it received.
type Analyst = tokio::task::JoinHandle<Vec<(String, String)>>;

/// Alpha's and bravo's analysts query without pause until `stop` is set.
fn analysts_querying(members: &[DemoMember], stop: &Arc<AtomicBool>) -> Vec<Analyst> {
    let mut analysts = Vec::new();
    for m in members.iter().take(2).cloned() {
        let stop = stop.clone();
        analysts.push(tokio::spawn(async move {
            let mut received = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let sql =
                    format!("SELECT region, count(*) AS n, sum(days) + {i} AS s FROM cases GROUP BY region");
                if let Ok(r) = api_query(&m.local_url, &m.analyst_token, &sql).await {
                    for c in r.provenance.into_iter().filter_map(|c| c.receipt_digest) {
                        received.push((m.id.clone(), c));
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            received
        }));
    }
    analysts
}

/// `opts.cycles` times: a node chosen at random is killed with SIGKILL, restarted after a
/// random pause, and waited for. Returns the kills by member and each restart's time.
async fn kill_and_restart_at_random(
    nodes: &mut NodeProcesses,
    members: &[DemoMember],
    opts: &CrashOptions,
    progress: &dyn Fn(&str),
) -> (BTreeMap<String, usize>, Result<Vec<Duration>, NodeError>) {
    let mut seed = opts.seed;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut kills = BTreeMap::new();
    let mut restarts = Vec::new();
    for cycle in 0..opts.cycles {
        progress(&format!("cycle {} of {}", cycle + 1, opts.cycles));
        tokio::time::sleep(Duration::from_millis(200 + next(600))).await;
        let victim = next(members.len() as u64) as usize;
        let killed = Instant::now();
        nodes.kill(victim);
        *kills.entry(members[victim].id.clone()).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(next(300))).await;
        if let Err(e) = nodes.restart(victim).await {
            return (kills, Err(e));
        }
        restarts.push(killed.elapsed());
    }
    (kills, Ok(restarts))
}

fn log_of(dir: &Path) -> Result<Vec<LogEntry>, NodeError> {
    let log = NodeDir::new(dir).open_log()?;
    let raw = log.entries(0, log.size()?)?;
    Ok(raw.iter().filter_map(|e| LogEntry::from_bytes(e).ok()).collect())
}

/// Every answer received must be in the requester's log as an access made with that receipt,
/// and in the owner's as a release of that request. Returns those that are not, named, and the
/// number of entries in the logs.
fn answers_in_both_logs(
    ids: &[&str],
    dirs: &[PathBuf],
    received: &[(String, String)],
) -> Result<(Vec<String>, u64), NodeError> {
    let logs = dirs.iter().map(|d| log_of(d)).collect::<Result<Vec<_>, _>>()?;
    let entries = logs.iter().map(|l| l.len() as u64).sum();
    // (requester, receipt digest) -> (request id, owner)
    let mut made = BTreeMap::new();
    let mut released = BTreeSet::new();
    for (id, log) in ids.iter().zip(&logs) {
        for e in log {
            match e {
                LogEntry::AccessMade { request_id, owner, receipt, .. } => {
                    if let Ok(bytes) = B64.decode(receipt) {
                        made.insert(
                            (id.to_string(), commitment(&bytes)),
                            (request_id.clone(), owner.clone()),
                        );
                    }
                }
                LogEntry::AccessServed { request_id, decision, .. } if decision.released() => {
                    released.insert((id.to_string(), request_id.clone()));
                }
                _ => {}
            }
        }
    }
    let mut lost = Vec::new();
    for (requester, digest) in received {
        match made.get(&(requester.clone(), digest.clone())) {
            None => {
                lost.push(format!("{requester} received {digest} but its log has no access made with it"))
            }
            Some((request_id, owner)) if !released.contains(&(owner.clone(), request_id.clone())) => {
                lost.push(format!("{owner}'s log has no release of {request_id}, which {requester} received"))
            }
            Some(_) => {}
        }
    }
    Ok((lost, entries))
}

/// Alpha's audit of every member, asked until it passes (crashes are named, not alarmed) or 90 s
/// have passed. Returns whether it passed and its last report.
async fn audit_until_it_passes(alpha: &DemoMember) -> Result<(bool, serde_json::Value), NodeError> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body = serde_json::json!({"all": true});
        let resp = local_call(&alpha.local_url, "POST", "/v1/audit", Some(&alpha.auditor_token), Some(&body))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&resp.body)
            .map_err(|source| NodeError::Decode { what: "an audit report".into(), source })?;
        if v["ok"] == true {
            return Ok((true, v));
        }
        if Instant::now() > deadline {
            return Ok((false, v));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
