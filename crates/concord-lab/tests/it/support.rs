use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::sync::Arc;

use concord_charter::{ColumnType, MemberCard, SchemaColumn, SharedSchema};
use concord_lab::demo::{DemoMember, MemberSpec, setup, start_all};
use concord_log::NoteSigner;
use concord_node::api::listen::{Deadlines, Transport};
use concord_node::net::client::{Response, peer_call};
use concord_node::net::protocol::{QueryRequest, new_request_id};
use concord_node::net::tls::TlsKeys;
use concord_node::run::RunningNode;
use concord_node::store::config::{Limits, NodeDir};

static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A base port such that `n` consecutive ports are free now and not handed to another test.
pub fn free_ports(n: u16) -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Below Linux's ephemeral range (from 32768), where nodes' own outgoing connections take
    // their source ports: a port found free there could be taken before a node binds it.
    let mut base = 20_000 + (std::process::id() % 120) as u16 * 100;
    loop {
        if base + n > 32_000 {
            base = 20_000;
        }
        let range: Vec<u16> = (base..base + n).collect();
        if range.iter().all(|p| !taken.contains(p) && TcpListener::bind(("127.0.0.1", *p)).is_ok()) {
            taken.extend(range);
            return base;
        }
        base += n;
    }
}

pub fn cases_schema() -> SharedSchema {
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

/// Writes `cases.csv` for a member: `rows` of (region, days).
pub fn write_cases(dir: &Path, member: &str, rows: &[(&str, Option<i64>)]) -> PathBuf {
    let folder = dir.join("data").join(member);
    std::fs::create_dir_all(&folder).expect("data folder");
    let path = folder.join("cases.csv");
    let mut s = String::from("region,days\n");
    for (r, d) in rows {
        s.push_str(&format!("{r},{}\n", d.map(|d| d.to_string()).unwrap_or_default()));
    }
    std::fs::write(&path, s).expect("write csv");
    path
}

type CaseRow = (&'static str, Option<i64>);

/// Three members with small `cases` datasets, started.
pub struct Fed {
    pub dir: tempfile::TempDir,
    pub members: Vec<DemoMember>,
    pub nodes: Vec<RunningNode>,
}

impl Fed {
    /// Stops every node; the folder lives on in the returned handle.
    pub async fn stop(self) -> tempfile::TempDir {
        for n in self.nodes {
            n.stop().await;
        }
        self.dir
    }

    pub fn member(&self, id: &str) -> &DemoMember {
        self.members.iter().find(|m| m.id == id).expect("member exists")
    }
}

pub async fn three_members() -> Fed {
    members_with(&["alpha", "bravo", "charlie"], |_, _| {}).await
}

/// Rows of each member's `cases` dataset.
fn rows_of(id: &str) -> Vec<CaseRow> {
    match id {
        "alpha" => vec![("north", Some(3)), ("south", Some(5)), ("north", None)],
        "bravo" => vec![("north", Some(10)), ("east", Some(1))],
        "charlie" => vec![("south", Some(2)), ("south", Some(4)), ("east", Some(7)), ("west", None)],
        _ => vec![("west", Some(6)), ("north", Some(8))],
    }
}

/// Members with small `cases` datasets, each node's `[limits]` set by `limits`, started.
pub async fn members_with(ids: &[&str], limits: impl Fn(&str, &mut Limits)) -> Fed {
    let dir = tempfile::tempdir().expect("temp dir");
    let specs: Vec<MemberSpec> = ids
        .iter()
        .map(|id| MemberSpec {
            id: (*id).into(),
            name: format!("Member {id}"),
            jurisdiction: id.to_uppercase(),
            files: vec![write_cases(dir.path(), id, &rows_of(id))],
        })
        .collect();
    let n = u16::try_from(3 * ids.len()).expect("few members");
    let members =
        setup(dir.path(), "test", &specs, vec![cases_schema()], free_ports(n)).await.expect("setup");
    for m in &members {
        set_limits(&m.dir, |l| limits(&m.id, l));
    }
    let nodes = start_all(&members).await.expect("nodes start");
    Fed { dir, members, nodes }
}

/// Rewrites a node folder's `[limits]`.
pub fn set_limits(dir: &Path, change: impl FnOnce(&mut Limits)) {
    let nd = NodeDir::new(dir);
    let mut cfg = nd.load_config().expect("config");
    change(&mut cfg.limits);
    nd.save_config(&cfg).expect("write config");
}

/// Waits until `f` holds, polling, or fails after 60 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Acts as a member with that member's own keys: signs notes, calls peers, or stands in for
/// the member's node on its peer address with crafted answers, or hangs there.
pub struct Impostor {
    pub id: String,
    pub keys: TlsKeys,
    pub signer: NoteSigner,
    pub card: MemberCard,
}

impl Impostor {
    pub fn of(fed: &Fed, id: &str) -> Self {
        let nd = NodeDir::new(&fed.member(id).dir);
        let cfg = nd.load_config().expect("config");
        Self {
            id: id.to_owned(),
            keys: nd.load_tls().expect("tls keys"),
            signer: nd.load_signer(&cfg).expect("signer"),
            card: nd.load_card().expect("card"),
        }
    }

    /// A genuine request of this member to `owner`, with `sql`.
    pub fn request(&self, owner: &str, sql: &str) -> QueryRequest {
        QueryRequest {
            federation: "test".into(),
            request_id: new_request_id(),
            requester: self.id.clone(),
            owner: owner.into(),
            charter_version: 1,
            time: chrono::Utc::now().timestamp(),
            dataset: "cases".into(),
            purpose: "testing".into(),
            sql: sql.into(),
        }
    }

    /// Sends `body` to `to`'s peer listener.
    pub async fn send(&self, fed: &Fed, to: &str, method: &str, path: &str, body: Vec<u8>) -> Response {
        let card = NodeDir::new(&fed.member(to).dir).load_card().expect("card");
        peer_call(&self.keys, to, &card.peer_endpoint, &card.tls_pin, method, path, body).await.expect("sent")
    }

    /// Serves `app` on this member's peer address, over mutual TLS with this member's key, to
    /// every other member. The member's real node must be stopped first.
    pub async fn stand_in(&self, fed: &Fed, app: axum::Router) -> tokio::sync::watch::Sender<bool> {
        let pins: Vec<(String, String)> = fed
            .members
            .iter()
            .filter(|m| m.id != self.id)
            .map(|m| (NodeDir::new(&m.dir).load_card().expect("card").tls_pin, m.id.clone()))
            .collect();
        let pins = concord_node::net::tls::Pins::new(pins);
        let config = concord_node::net::tls::server_config(
            Arc::new(concord_node::net::tls::ServerCert::new(&self.keys).expect("cert")),
            pins.clone(),
        )
        .expect("tls config");
        let transport = Transport::Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            pins,
            on_connection: Arc::new(|_| {}),
        };
        let listener = tokio::net::TcpListener::bind(&self.card.peer_endpoint).await.expect("bind");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let deadlines = Deadlines::of(&Limits::default());
        tokio::spawn(concord_node::api::listen::serve(app, listener, transport, deadlines, rx));
        tx
    }

    /// Accepts connections on this member's peer address and never answers: a node that hangs.
    pub async fn hang(&self) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::TcpListener::bind(&self.card.peer_endpoint).await.expect("bind");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        })
    }
}

/// Waits until every node published a checkpoint of all its entries.
pub async fn settle(fed: &Fed) {
    for n in &fed.nodes {
        let log = n.node.log.clone();
        eventually("checkpoints published", || {
            let log = log.clone();
            async move {
                let size = log.size().unwrap_or(0);
                log.published_checkpoint().ok().flatten().is_some_and(|(s, _)| s >= size)
            }
        })
        .await;
    }
}

/// Audits `body`'s members from `from`'s node, as its auditor.
pub async fn audit(fed: &Fed, from: &str, body: serde_json::Value) -> serde_json::Value {
    let m = fed.member(from);
    let resp = concord_node::net::client::local_call(
        &m.local_url,
        "POST",
        "/v1/audit",
        Some(&m.auditor_token),
        Some(&body),
    )
    .await
    .expect("sent");
    assert_eq!(resp.status, 200, "{:?}", resp.error_parts());
    serde_json::from_slice(&resp.body).expect("json")
}
