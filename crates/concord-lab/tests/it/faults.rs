//! Faults between members, injected by a TCP proxy on loopback that stands between bravo's
//! advertised peer endpoint and its node: a connection cut in the middle of an owner's answer,
//! one stalled, one refused. Nothing hangs past the configured timeouts, the failure names the
//! member, a partial result says who is missing, and the audit names the release that never
//! arrived.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_lab::demo::api_query;
use concord_node::net::client::local_call;
use concord_node::store::config::NodeDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{audit, members_with, settle};

const PASS: u8 = 0;
/// Forward both ways, but drop a connection whose client sent at least `cut_client` bytes
/// (a signed query) once its server has sent more than `cut_after` (in its answer).
const CUT: u8 = 1;
/// Accept and read, never forward, never answer.
const STALL: u8 = 2;
/// Close every connection as soon as it is accepted.
const REFUSE: u8 = 3;

/// A loopback TCP proxy whose behaviour the test switches.
struct Proxy {
    mode: Arc<AtomicU8>,
    cut: Arc<Cut>,
    /// Bytes the client and the server sent on each connection, as the connections closed.
    sent: Arc<Mutex<Vec<(usize, usize)>>>,
}

/// Which connections CUT drops, and where.
struct Cut {
    client_at_least: AtomicUsize,
    after: AtomicUsize,
}

impl Proxy {
    async fn start(listen: &str, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("the proxy binds bravo's endpoint");
        let p = Proxy {
            mode: Arc::new(AtomicU8::new(PASS)),
            cut: Arc::new(Cut {
                client_at_least: AtomicUsize::new(usize::MAX),
                after: AtomicUsize::new(usize::MAX),
            }),
            sent: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, cut, sent) = (p.mode.clone(), p.cut.clone(), p.sent.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (mode, cut, sent) = (mode.load(Ordering::SeqCst), cut.clone(), sent.clone());
                tokio::spawn(relay(client, upstream, mode, cut, sent));
            }
        });
        p
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: u8,
    cut: Arc<Cut>,
    sent: Arc<Mutex<Vec<(usize, usize)>>>,
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
            let from_client = Arc::new(AtomicUsize::new(0));
            let counted = from_client.clone();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    counted.fetch_add(n, Ordering::SeqCst);
                }
            });
            let mut total = 0usize;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let limit = if mode == CUT
                    && from_client.load(Ordering::SeqCst) >= cut.client_at_least.load(Ordering::SeqCst)
                {
                    cut.after.load(Ordering::SeqCst)
                } else {
                    usize::MAX
                };
                // Forward up to the cut-off, then drop both sides in the middle of the answer.
                let keep = n.min(limit.saturating_sub(total));
                if keep > 0 && cw.write_all(&buf[..keep]).await.is_err() {
                    break;
                }
                total += n;
                if keep < n {
                    break;
                }
            }
            up.abort();
            sent.lock().expect("lock").push((from_client.load(Ordering::SeqCst), total));
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
    // The query's own connections: its check round and its query carry the signed request,
    // the largest thing a client sends; of the two, the query's answer is the larger.
    proxy.sent.lock().expect("lock").clear();
    let (status, first) = ask(&a.local_url, &a.analyst_token, sql, false).await;
    assert_eq!(status, 200, "through the proxy: {first}");
    let sizes = proxy.sent.lock().expect("lock").clone();
    let request = sizes.iter().map(|s| s.0).max().expect("connections were made");
    let answer = sizes.iter().filter(|s| s.0 + 64 >= request).map(|s| s.1).max().expect("the query");
    // Cut its answer 200 bytes before its end: inside the last records of the HTTP answer.
    proxy.cut.client_at_least.store(request - 64, Ordering::SeqCst);
    proxy.cut.after.store(answer - 200, Ordering::SeqCst);
    proxy.set(CUT);
    let (status, body) = ask(&a.local_url, &a.analyst_token, sql, false).await;
    assert_ne!(status, 200, "the answer was not cut; connections (client, server bytes): {sizes:?}");
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
