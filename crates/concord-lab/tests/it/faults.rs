//! Faults between members, injected by a TCP proxy on loopback that stands between bravo's
//! advertised peer endpoint and its node: a connection cut in the middle of an owner's answer,
//! one stalled, one refused. Nothing hangs past the configured timeouts, the failure names the
//! member, a partial result says who is missing, and the audit names the release that never
//! arrived. And a node whose disk fills while it appends: it refuses new work with `disk_full`
//! and loses nothing it acknowledged.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_lab::demo::api_query;
use concord_node::net::client::local_call;
use concord_node::store::config::NodeDir;
use concord_node::store::entry::LogEntry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{audit, members_with, settle, three_members};

const PASS: u8 = 0;
/// Forward the client's bytes, and the server's until the TLS handshake is done; then hold
/// the server's until the test cuts: then forward half of what each connection holds and drop
/// it (in the middle of an answer).
const CUT: u8 = 1;
/// Accept and read, never forward, never answer.
const STALL: u8 = 2;
/// Close every connection as soon as it is accepted.
const REFUSE: u8 = 3;

/// A loopback TCP proxy whose behaviour the test switches. Peers keep their connections open
/// between calls (HTTP/2), so a switch also drops every connection open: the next call opens a
/// new one, which gets the new behaviour.
struct Proxy {
    mode: Arc<AtomicU8>,
    /// Bumped by every switch: open connections end.
    generation: tokio::sync::watch::Sender<u64>,
    /// Bumped by [`Proxy::cut`].
    cut: tokio::sync::watch::Sender<u64>,
    /// The server bytes each connection holds under CUT.
    held: Arc<Mutex<Vec<Arc<AtomicUsize>>>>,
}

impl Proxy {
    async fn start(listen: &str, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("the proxy binds bravo's endpoint");
        let p = Proxy {
            mode: Arc::new(AtomicU8::new(PASS)),
            generation: tokio::sync::watch::channel(0).0,
            cut: tokio::sync::watch::channel(0).0,
            held: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, held, generation, cut) =
            (p.mode.clone(), p.held.clone(), p.generation.clone(), p.cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = mode.load(Ordering::SeqCst);
                let counter = Arc::new(AtomicUsize::new(0));
                held.lock().expect("lock").push(counter.clone());
                let (mut ended, cut) = (generation.subscribe(), cut.subscribe());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = ended.changed() => {}
                        _ = relay(client, upstream, mode, cut, counter) => {}
                    }
                });
            }
        });
        p
    }

    /// Switches to `mode`: open connections end.
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.held.lock().expect("lock").clear();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Under CUT, waits until one connection holds at least `bytes` of the server's answer.
    async fn holding(&self, bytes: usize) {
        for _ in 0..500 {
            let most = self.held.lock().expect("lock").iter().map(|h| h.load(Ordering::SeqCst)).max();
            if most.unwrap_or(0) >= bytes {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no connection held {bytes} bytes of an answer");
    }

    /// Under CUT: every connection forwards half of what it holds, then drops.
    fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: u8,
    mut cut: tokio::sync::watch::Receiver<u64>,
    held: Arc<AtomicUsize>,
) {
    match mode {
        REFUSE => drop(client),
        STALL => {
            let mut buf = [0u8; 4096];
            let hold = async { while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(60), hold).await;
        }
        _ => {
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            // The client's bursts: past its first two (ClientHello, then its TLS Finished), the
            // handshake is done and CUT holds what the server sends.
            let bursts = Arc::new(AtomicUsize::new(0));
            let counted = bursts.clone();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
            let mut buf = vec![0u8; 16 * 1024];
            let mut kept = Vec::new();
            loop {
                tokio::select! {
                    r = sr.read(&mut buf) => {
                        let n = match r {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if mode == CUT && bursts.load(Ordering::SeqCst) >= 2 {
                            kept.extend_from_slice(&buf[..n]);
                            held.store(kept.len(), Ordering::SeqCst);
                        } else if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    _ = cut.changed(), if mode == CUT => {
                        let _ = cw.write_all(&kept[..kept.len() / 2]).await;
                        break;
                    }
                }
            }
            up.abort();
        }
    }
}

/// The analyst's query, as the local API answers it: the HTTP status and the JSON body.
async fn ask(url: &str, token: &str, sql: &str, partial: bool) -> (u16, serde_json::Value) {
    let body = serde_json::json!({"sql": sql, "partial": partial});
    // No fault may hang a query past its timeouts: 30 s is far beyond them.
    let call = local_call(url, "POST", "/v1/query", Some(token), Some(&body));
    let resp = tokio::time::timeout(Duration::from_secs(30), call).await.expect("no hang").expect("sent");
    (resp.status, serde_json::from_slice(&resp.body).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stalled_and_refused_connections_fail_fast_naming_the_owner() {
    let mut fed = members_with(&["alpha", "bravo", "charlie"], |_, l| {
        l.catalog_timeout_secs = 2;
        l.peer_timeout_secs = 3;
        l.witness_timeout_secs = 2;
    })
    .await;
    // bravo's node moves to another port; a proxy takes its advertised endpoint.
    let bravo_dir = NodeDir::new(&fed.member("bravo").dir);
    let endpoint = bravo_dir.load_config().expect("config").peer_listen;
    fed.nodes.remove(1).stop().await;
    let inner = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let inner_addr = inner.local_addr().expect("addr");
    drop(inner);
    let mut cfg = bravo_dir.load_config().expect("config");
    cfg.peer_listen = inner_addr.to_string();
    bravo_dir.save_config(&cfg).expect("saved");
    fed.nodes.insert(1, concord_node::run::start(&bravo_dir).await.expect("bravo restarts"));
    let proxy = Proxy::start(&endpoint, inner_addr).await;

    let a = fed.member("alpha").clone();
    let sql = "SELECT count(*) AS n FROM bravo.cases";
    // A first query reads bravo's catalog and is answered through the proxy.
    let (status, first) = ask(&a.local_url, &a.analyst_token, sql, false).await;
    assert_eq!(status, 200, "through the proxy: {first}");
    // The next answer is held by the proxy once bravo has sent most of it (its receipt, its
    // details and the Arrow IPC stream: over a kilobyte), then cut half way through.
    proxy.set(CUT);
    let asked = {
        let (url, token) = (a.local_url.clone(), a.analyst_token.clone());
        tokio::spawn(async move { ask(&url, &token, sql, false).await })
    };
    proxy.holding(1000).await;
    proxy.cut();
    let (status, body) = asked.await.expect("the query's task");
    assert_ne!(status, 200, "the answer was not cut: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("bravo"), "a cut answer names its owner: {body}");
    let (status, body) = ask(&a.local_url, &a.analyst_token, "SELECT count(*) AS n FROM cases", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["missing"], serde_json::json!(["bravo"]), "a partial result says who is missing");

    // A stalled connection ends by the configured timeout; a refused one at once.
    for mode in [STALL, REFUSE] {
        proxy.set(mode);
        let (status, body) = ask(&a.local_url, &a.analyst_token, sql, false).await;
        assert_ne!(status, 200, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("bravo"), "mode {mode}: {body}");
    }

    // Healed, the same query answers as before.
    proxy.set(PASS);
    let again = api_query(&a.local_url, &a.analyst_token, sql).await.expect("answers again");
    assert_eq!(again.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

    // bravo released what alpha never received: the audit names those releases, nothing is
    // silently lost.
    settle(&fed).await;
    let report = audit(&fed, "alpha", serde_json::json!({"members": ["alpha", "bravo"]})).await;
    let unreceived = report["report"]["unreceived"].as_array().cloned().unwrap_or_default();
    let owners: BTreeMap<String, usize> = unreceived.iter().fold(BTreeMap::new(), |mut m, u| {
        *m.entry(u["owner"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        m
    });
    assert!(owners.get("bravo").is_some_and(|n| *n >= 1), "{report}");
    assert!(report["report"]["mismatches"].as_array().is_some_and(|m| m.is_empty()), "{report}");
    fed.stop().await;
}

/// A small tmpfs mounted over a node's folder, holding what the folder held; unmounted when
/// dropped. Mounting needs root: `.ci/run` runs as root and sets `CONCORD_TEST_MOUNTS=1`, which
/// makes a refused mount fail the test; elsewhere the test says it cannot run and stops.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn over(dir: &Path, size: &str) -> Option<Self> {
        let held = dir.with_extension("held");
        let copy = |from: &Path, to: &Path| {
            let ok = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp runs");
            assert!(ok.success(), "copying {} to {}", from.display(), to.display());
        };
        copy(dir, &held);
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount runs");
        if !mounted.status.success() {
            let why = String::from_utf8_lossy(&mounted.stderr);
            assert!(
                std::env::var_os("CONCORD_TEST_MOUNTS").is_none(),
                "a small disk for the node is a tmpfs, and mounting one needs root: {why}"
            );
            eprintln!("not run: mounting a tmpfs needs root (.ci/run runs it): {why}");
            return None;
        }
        let disk = SmallDisk(dir.to_owned());
        copy(&held.join("."), dir);
        Some(disk)
    }

    /// Writes a file until the disk has no space left; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        for chunk in [64 * 1024, 512, 1] {
            let bytes = vec![0u8; chunk];
            loop {
                match f.write_all(&bytes) {
                    Ok(()) => {}
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "filling the disk: {e}");
                        break;
                    }
                }
            }
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_with_disk_full_and_loses_nothing_acknowledged() {
    let mut fed = three_members().await;
    let (a, b) = (fed.member("alpha").clone(), fed.member("bravo").clone());
    let alpha_dir = NodeDir::new(&a.dir);
    fed.nodes.remove(0).stop().await;
    let Some(disk) = SmallDisk::over(&a.dir, "32m") else {
        return fed.stop().await.close().expect("removed");
    };
    fed.nodes.insert(0, concord_node::run::start(&alpha_dir).await.expect("alpha starts on its small disk"));
    let sql = "SELECT count(*) AS n FROM cases";
    for m in [&a, &b] {
        let (status, body) = ask(&m.local_url, &m.analyst_token, sql, false).await;
        assert_eq!(status, 200, "{}: {body}", m.id);
    }

    // The disk fills. Appends may still fit in pages the databases already hold; the first
    // that does not is refused, and so is the work that needed it.
    let filler = disk.fill();
    let log = fed.nodes[0].node.log.clone();
    let mut refused = None;
    for _ in 0..300 {
        let (status, body) = ask(&a.local_url, &a.analyst_token, sql, false).await;
        if status != 200 {
            refused = Some((status, body));
            break;
        }
    }
    let (status, body) = refused.expect("alpha refuses work once its disk is full");
    assert_eq!((status, body["error"]["code"].as_str()), (507, Some("disk_full")), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("disk is full") && message.contains("space is freed"), "{body}");
    let acknowledged = log.entries(0, log.size().expect("size")).expect("entries");

    // Another member's query over alpha's data names alpha, and a partial result leaves it out.
    let mut named = None;
    for _ in 0..50 {
        let (status, body) =
            ask(&b.local_url, &b.analyst_token, "SELECT count(*) AS n FROM alpha.cases", false).await;
        if status != 200 {
            named = Some(body);
            break;
        }
    }
    let body = named.expect("alpha refuses to serve once its disk is full");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("alpha") && message.contains("disk is full"), "{body}");
    let mut left_out = None;
    for _ in 0..50 {
        let (status, body) = ask(&b.local_url, &b.analyst_token, sql, true).await;
        assert_eq!(status, 200, "{body}");
        if body["missing"] == serde_json::json!(["alpha"]) {
            left_out = Some(body);
            break;
        }
    }
    assert!(left_out.is_some(), "a partial result leaves alpha out while its disk is full");

    // alpha keeps serving what needs no disk.
    let status =
        local_call(&a.local_url, "GET", "/v1/status", Some(&a.analyst_token), None).await.expect("sent");
    assert_eq!(status.status, 200, "{:?}", status.error_parts());

    // Space freed, alpha takes work again; restarted, its log holds every entry it had
    // acknowledged, byte for byte, and the audit finds both sides' records agree.
    std::fs::remove_file(&filler).expect("filler removed");
    let (status, body) = ask(&a.local_url, &a.analyst_token, sql, false).await;
    assert_eq!(status, 200, "with space again: {body}");
    fed.nodes.remove(0).stop().await;
    fed.nodes.insert(0, concord_node::run::start(&alpha_dir).await.expect("alpha restarts"));
    let log = fed.nodes[0].node.log.clone();
    let kept = log.entries(0, acknowledged.len() as u64).expect("entries");
    assert!(kept == acknowledged, "alpha lost or changed entries it had acknowledged");
    // Every release bravo received from alpha is in alpha's log, at the index its receipt names.
    let bravo_log = fed.nodes[1].node.log.clone();
    let made: Vec<(String, u64)> = bravo_log
        .entries(0, bravo_log.size().expect("size"))
        .expect("entries")
        .iter()
        .filter_map(|e| match LogEntry::from_bytes(e).ok()? {
            LogEntry::AccessMade { request_id, owner, owner_log_index, .. } if owner == "alpha" => {
                Some((request_id, owner_log_index))
            }
            _ => None,
        })
        .collect();
    assert!(!made.is_empty(), "bravo received answers from alpha");
    for (request_id, index) in made {
        let entry = log.entries(index, index + 1).expect("entry").pop().expect("the receipt's index exists");
        match LogEntry::from_bytes(&entry).expect("an entry") {
            LogEntry::AccessServed { request_id: served, decision, .. } => {
                assert_eq!((served.as_str(), decision.released()), (request_id.as_str(), true))
            }
            other => panic!("alpha's entry {index} is not the release of {request_id}: {other:?}"),
        }
    }
    settle(&fed).await;
    let report = audit(&fed, "alpha", serde_json::json!({"members": ["alpha", "bravo", "charlie"]})).await;
    assert!(report["report"]["mismatches"].as_array().is_some_and(|m| m.is_empty()), "{report}");
    let dir = fed.stop().await;
    drop(disk);
    drop(dir);
}
