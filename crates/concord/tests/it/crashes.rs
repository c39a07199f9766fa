//! Nodes killed with SIGKILL at random moments while analysts query, many times over: every
//! answer an analyst received is in both logs, and the audit afterwards passes, naming the
//! accesses that were served but never received instead of calling them hidden.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_lab::demo::{DemoMember, MemberSpec, api_query, setup};
use concord_node::net::client::local_call;
use concord_node::store::config::NodeDir;
use concord_node::store::entry::LogEntry;
use sha2::{Digest as _, Sha256};

/// Where a node's own output goes, beside its folder, so that a node that does not come back
/// says why.
fn output_of(dir: &Path) -> PathBuf {
    dir.with_extension("out")
}

fn start(dir: &Path) -> Child {
    let out =
        std::fs::OpenOptions::new().create(true).append(true).open(output_of(dir)).expect("output file");
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["node", "run"])
        .arg(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("node starts")
}

async fn wait_up(m: &DemoMember) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up = local_call(&m.local_url, "GET", "/v1/status", Some(&m.analyst_token), None)
            .await
            .is_ok_and(|r| r.status == 200);
        if up {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let out = std::fs::read_to_string(output_of(&m.dir)).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(30).collect();
            panic!(
                "{} did not come back; the last lines it wrote:\n{}",
                m.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(dir: &Path) -> Vec<LogEntry> {
    let log = NodeDir::new(dir).open_log().expect("log");
    let raw = log.entries(0, log.size().expect("size")).expect("entries");
    raw.iter().filter_map(|e| LogEntry::from_bytes(e).ok()).collect()
}

/// Six free ports from 20000 to 32699: below Linux's ephemeral range (from 32768), where the
/// nodes' and the analysts' own outgoing connections take their source ports and could take a
/// killed node's port before it restarts; above the 15000–19999 of the other tests here.
fn base_port() -> u16 {
    let mut base = 20_000 + (std::process::id() % 120) as u16 * 100;
    loop {
        if (base..base + 6).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
        base += 6;
        if base > 32_700 {
            base = 20_000;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_at_random_while_analysts_query_leave_logs_that_tell_one_story() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ids = ["alpha", "bravo", "charlie"];
    let specs = specs_of(tmp.path(), &ids);
    let schema = cases_schema();
    let members = setup(tmp.path(), "test", &specs, vec![schema], base_port()).await.expect("setup");
    let dirs: Vec<PathBuf> = members.iter().map(|m| m.dir.clone()).collect();
    let mut nodes: Vec<Child> = dirs.iter().map(|d| start(d)).collect();
    for m in &members {
        wait_up(m).await;
    }

    // Two analysts query without pause; what they receive is kept: (requester, receipt digest).
    let stop = Arc::new(AtomicBool::new(false));
    let analysts = analysts_querying(&members, &stop);
    kill_and_restart_at_random(&mut nodes, &dirs, &members).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut received = Vec::new();
    for a in analysts {
        received.extend(a.await.expect("analyst"));
    }
    assert!(received.len() > 20, "the analysts received answers throughout ({})", received.len());
    every_answer_in_both_logs(&ids, &dirs, &received);
    let report = audit_passes(&members[0]).await;
    let unreceived = report["report"]["unreceived"].as_array().map(Vec::len).unwrap_or(0);
    eprintln!("{} answers received; {unreceived} releases served but not received", received.len());
    for mut n in nodes {
        let _ = Command::new("kill").args(["-TERM", &n.id().to_string()]).status();
        let _ = n.wait();
    }
}

/// Each member's spec, with a `cases.csv` of 20 rows written under `dir`.
fn specs_of(dir: &Path, ids: &[&str]) -> Vec<MemberSpec> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let folder = dir.join("data").join(id);
            std::fs::create_dir_all(&folder).expect("mkdir");
            let file = folder.join("cases.csv");
            let mut csv = String::from("region,days\n");
            for r in 0..20 {
                csv.push_str(&format!("r{},{}\n", (r + i) % 4, r));
            }
            std::fs::write(&file, csv).expect("csv");
            MemberSpec {
                id: (*id).into(),
                name: id.to_string(),
                jurisdiction: "XX".into(),
                files: vec![file],
            }
        })
        .collect()
}

/// The shared schema `cases`: a region and a number of days.
fn cases_schema() -> concord_charter::SharedSchema {
    concord_charter::SharedSchema {
        name: "cases".into(),
        version: 1,
        columns: vec![
            concord_charter::SchemaColumn {
                name: "region".into(),
                ty: concord_charter::ColumnType::Utf8,
                personal: false,
            },
            concord_charter::SchemaColumn {
                name: "days".into(),
                ty: concord_charter::ColumnType::Int64,
                personal: false,
            },
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

/// Twelve times: a node chosen at random is killed with SIGKILL, restarted, and waited for.
async fn kill_and_restart_at_random(nodes: &mut [Child], dirs: &[PathBuf], members: &[DemoMember]) {
    let mut seed = 0x5eed_cafe_u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(200 + next(600))).await;
        let victim = next(3) as usize;
        nodes[victim].kill().expect("SIGKILL");
        let _ = nodes[victim].wait();
        tokio::time::sleep(Duration::from_millis(next(300))).await;
        nodes[victim] = start(&dirs[victim]);
        wait_up(&members[victim]).await;
    }
}

/// Every answer received is in the requester's log as an access made, and in the owner's as a release.
fn every_answer_in_both_logs(ids: &[&str], dirs: &[PathBuf], received: &[(String, String)]) {
    // Every answer received is in both logs: the requester's access made with that receipt, and
    // the owner's release of that request.
    let logs: Vec<Vec<LogEntry>> = dirs.iter().map(|d| log_of(d)).collect();
    let made: Vec<(String, String, String)> = ids
        .iter()
        .zip(&logs)
        .flat_map(|(id, log)| {
            log.iter().filter_map(move |e| match e {
                LogEntry::AccessMade { request_id, owner, receipt, .. } => {
                    let bytes = B64.decode(receipt).ok()?;
                    let digest = format!("sha256:{}", concord_charter::hex(&Sha256::digest(&bytes)));
                    Some((format!("{id} {digest}"), request_id.clone(), owner.clone()))
                }
                _ => None,
            })
        })
        .collect();
    let released: BTreeSet<(String, String)> = ids
        .iter()
        .zip(&logs)
        .flat_map(|(id, log)| {
            log.iter().filter_map(move |e| match e {
                LogEntry::AccessServed { request_id, decision, .. } if decision.released() => {
                    Some((id.to_string(), request_id.clone()))
                }
                _ => None,
            })
        })
        .collect();
    for (requester, digest) in received {
        let key = format!("{requester} {digest}");
        let (_, request_id, owner) = made
            .iter()
            .find(|(k, _, _)| *k == key)
            .unwrap_or_else(|| panic!("{key} is not in {requester}'s log"));
        assert!(
            released.contains(&(owner.clone(), request_id.clone())),
            "{owner} has no release of {request_id}"
        );
    }
}

/// Alpha's audit of every member, once it passes; crashes are named, not alarmed.
async fn audit_passes(alpha: &DemoMember) -> serde_json::Value {
    // The audit passes once every log is published; crashes are named, not alarmed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let body = serde_json::json!({"all": true});
        let resp = local_call(&alpha.local_url, "POST", "/v1/audit", Some(&alpha.auditor_token), Some(&body))
            .await
            .expect("audit");
        let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
        if v["ok"] == true {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "the audit never passed: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
