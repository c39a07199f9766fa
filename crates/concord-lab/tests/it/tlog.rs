//! The transparency log's durability, group commit, checkpoints and tlog-tiles serving.

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use concord_log::checkpoint::Checkpoint;
use concord_log::merkle::{MemoryTree, leaf_hash, verify_inclusion};
use concord_log::tiles::{Tile, TileKind, decode_bundle};
use concord_node::net::client::local_call;
use concord_node::store::config::NodeDir;
use concord_node::store::tlog::Log;

const CHILD_ENV: &str = "CONCORD_TEST_LOG_APPENDER";

fn entry(task: u64, n: u64) -> Vec<u8> {
    format!("task {task} entry {n}").into_bytes()
}

/// Appends from 8 concurrent tasks and prints `index task n` for each acknowledged append.
/// Run as a child process by `log_survives_kill_9_at_random_moments`; on its own, a short run
/// that checks indices are unique and dense.
#[test]
fn appender() {
    let child_db = std::env::var(CHILD_ENV).ok();
    let dir = tempfile::tempdir().expect("tmp");
    let path = child_db.clone().map(std::path::PathBuf::from).unwrap_or_else(|| dir.path().join("log.db"));
    let log = Log::open(&path).expect("open log");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let child = child_db.is_some();
    let limit = if child { u64::MAX } else { 200 };
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let indices = rt.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|task| {
                let log = log.clone();
                let out = out.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut n = 0;
                    while n < limit {
                        let idx = log.append(entry(task, n)).await.expect("append");
                        if child {
                            let mut o = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let _ = writeln!(o, "ACK {idx} {task} {n}");
                            let _ = o.flush();
                        }
                        got.push(idx);
                        n += 1;
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let mut sorted = indices.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1600).collect::<Vec<u64>>(), "every append got its own index, densely");
    assert_eq!(log.size().expect("size"), 1600);
}

#[test]
fn log_survives_kill_9_at_random_moments() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("log.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut seed = 0x5eed_u64;
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args(["--exact", "tlog::appender", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        // Wait for the first acknowledgement, then let it run a random while before SIGKILL.
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(150 + (seed >> 33) % 400);
        std::thread::sleep(wait);
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let lines = reader.join().expect("reader");
        let before = acked.len();
        for l in lines.iter().filter(|l| l.starts_with("ACK ")) {
            let parts: Vec<u64> = l[4..].split(' ').filter_map(|p| p.parse().ok()).collect();
            if let [idx, task, n] = parts[..] {
                acked.push((idx, entry(task, n)));
            }
        }
        // The log is whole after every kill: every acknowledged entry present, in place.
        let log = Log::open(&db).expect("reopens");
        let size = log.size().expect("size");
        let all = log.entries(0, size).expect("entries");
        assert_eq!(all.len() as u64, size, "round {round}: entries are dense");
        for (idx, data) in &acked {
            assert_eq!(
                all.get(*idx as usize),
                Some(data),
                "round {round}: acknowledged entry {idx} is present"
            );
        }
        let mut tree = MemoryTree::new();
        for e in &all {
            tree.append(e);
        }
        assert_eq!(
            log.root(size).expect("root"),
            tree.root(),
            "round {round}: stored nodes match the entries"
        );
        if size > 0 {
            let i = size / 2;
            let proof: Vec<Vec<u8>> =
                log.inclusion_proof(i, size).expect("proof").iter().map(|h| h.to_vec()).collect();
            verify_inclusion(i, size, &leaf_hash(&all[i as usize]), &proof, &tree.root())
                .expect("inclusion verifies");
        }
        assert!(acked.len() >= before, "round {round}");
    }
    assert!(acked.len() > 100, "the children acknowledged appends ({})", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_follow_entries_and_tiles_verify() {
    let fed = crate::support::three_members().await;
    let a = fed.member("alpha").clone();
    let nd = NodeDir::new(&a.dir);
    let card = nd.load_card().expect("card");
    let get = |path: String| {
        let a = a.clone();
        async move { local_call(&a.local_url, "GET", &path, Some(&a.auditor_token), None).await.expect("sent") }
    };
    // New entries appear in a published, cosigned checkpoint within a short time.
    concord_lab::demo::api_query(&a.local_url, &a.analyst_token, "SELECT count(*) FROM cases")
        .await
        .expect("query");
    let size = fed.nodes[0].node.log.size().expect("size");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (cp, note) = loop {
        let resp = get("/v1/log/checkpoint".into()).await;
        if resp.status == 200 {
            let (cp, note) =
                Checkpoint::open(&resp.body, &card.verifier().expect("vkey")).expect("signed checkpoint");
            if cp.size >= size {
                break (cp, note);
            }
        }
        assert!(Instant::now() < deadline, "no published checkpoint of {size} entries in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(cp.origin, "test/alpha");
    let cosigned = ["bravo", "charlie"]
        .iter()
        .filter(|w| {
            let c = NodeDir::new(&fed.member(w).dir).load_card().expect("card");
            c.witness_verifier().expect("vkey").verify(&note).expect("valid").is_some()
        })
        .count();
    assert_eq!(cosigned, 2, "both witnesses cosigned");

    // The entry bundle and the level-0 tile agree with the signed root.
    let w = cp.size;
    let bundle =
        get(format!("/v1/log/{}", Tile { kind: TileKind::Entries, index: 0, width: w }.path())).await;
    assert_eq!(bundle.status, 200);
    let entries = decode_bundle(&bundle.body).expect("bundle");
    let tile =
        get(format!("/v1/log/{}", Tile { kind: TileKind::Hashes(0), index: 0, width: w }.path())).await;
    assert_eq!(tile.body.len() as u64, 32 * w);
    let mut tree = MemoryTree::new();
    for (i, e) in entries.iter().enumerate() {
        tree.append(e);
        assert_eq!(&tile.body[32 * i..32 * (i + 1)], leaf_hash(e).as_slice());
    }
    assert_eq!(tree.root(), cp.root);
    let kinds: Vec<String> = entries
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(e).expect("json")["kind"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    for k in ["keys_set", "charter_accepted", "dataset_registered", "access_made"] {
        assert!(kinds.iter().any(|x| x == k), "{k} is logged: {kinds:?}");
    }

    // Tiles beyond the tree, malformed paths and a missing token.
    assert_eq!(get("/v1/log/tile/0/001".into()).await.status, 404);
    assert_eq!(get("/v1/log/tile/0/1".into()).await.status, 400);
    let resp = local_call(&a.local_url, "GET", "/v1/log/checkpoint", None, None).await.expect("sent");
    assert_eq!(resp.status, 401);
    fed.stop().await;
}
