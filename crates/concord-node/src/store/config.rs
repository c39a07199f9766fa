//! A node folder: `concord.toml`, keys, the state database and the member card.
//!
//! ```text
//! DIR/concord.toml        member id, federation, names, listen addresses
//! DIR/keys/member.key     Ed25519 note signing key (mode 0600)
//! DIR/keys/witness.key    Ed25519 cosigning key for witnessing other logs (mode 0600)
//! DIR/keys/tls.key        TLS private key (mode 0600)
//! DIR/keys/tls.crt        self-signed TLS certificate
//! DIR/state.db            SQLite state (WAL), the transparency log included
//! DIR/member-card.json    the public facts the founders put into the charter
//! ```

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use concord_charter::{MemberCard, check_federation_name, check_member_id};
use concord_log::NoteSigner;
use concord_log::checkpoint::CosignatureSigner;
use serde::{Deserialize, Serialize};

use crate::NodeError;
use crate::store::state::State;

/// `DIR/concord.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The federation's name; key names start with it (`<federation>/<member>`).
    pub federation: String,
    /// This node's member id, `[a-z][a-z0-9-]{1,31}`.
    pub member: String,
    /// The member's display name, as its card gives it.
    pub name: String,
    /// The jurisdiction the node runs in, as its card gives it (`unspecified` if none was given).
    pub jurisdiction: String,
    /// Where the peer listener binds.
    pub peer_listen: String,
    /// Where the local listener binds.
    pub local_listen: String,
    /// Where the Arrow Flight SQL listener binds (ADBC, JDBC), beside the local listener and
    /// with its tokens; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight_listen: Option<String>,
    /// What other members dial; the charter lists it.
    pub peer_endpoint: String,
    /// Bounds on what the node spends for others; every one has a default.
    #[serde(default)]
    pub limits: Limits,
}

/// `[limits]` of `concord.toml`: what one query, one peer and one connection may cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Memory the operators of one query may reserve (owner sub-queries and analysts' queries).
    pub query_memory_mb: u64,
    /// Wall time of one analyst's query, owners' answers included.
    pub query_timeout_secs: u64,
    /// Wall time of one sub-query this node runs as an owner.
    pub subquery_timeout_secs: u64,
    /// Groups an owner releases for one sub-query.
    pub max_groups: u64,
    /// Rows of one analyst's result.
    pub max_result_rows: u64,
    /// Queries and sub-queries that run at once; more wait for a slot.
    pub max_concurrent_queries: usize,
    /// How long the requester waits for one owner's answer.
    pub peer_timeout_secs: u64,
    /// How long the requester waits for one member's catalog.
    pub catalog_timeout_secs: u64,
    /// How long a member's catalog is used before it is read again: a dataset another member
    /// adds to or removes from a shared schema shows in this node's queries within this time.
    /// 0 reads the catalogs of the members a query names at every query.
    pub catalog_ttl_secs: u64,
    /// How long the node waits for one witness's cosignature.
    pub witness_timeout_secs: u64,
    /// Open connections per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one address per listener; more are closed at once.
    pub max_connections_per_address: usize,
    /// Time for a client to finish the TLS handshake and send a request's headers.
    pub header_timeout_secs: u64,
    /// Time a connection may stay open without a request.
    pub idle_timeout_secs: u64,
    /// Sustained requests per second each member may send to the peer listener.
    pub peer_requests_per_sec: u32,
    /// Requests a member may send at once above that rate.
    pub peer_burst: u32,
    /// New entries one audit verifies of one log; a log that grew more is reported, not read.
    pub audit_max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_memory_mb: 1024,
            query_timeout_secs: 60,
            subquery_timeout_secs: 20,
            max_groups: 1_000_000,
            max_result_rows: 1_000_000,
            max_concurrent_queries: 8,
            peer_timeout_secs: 25,
            catalog_timeout_secs: 5,
            catalog_ttl_secs: 10,
            witness_timeout_secs: 5,
            max_connections: 256,
            max_connections_per_address: 64,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            peer_requests_per_sec: 200,
            peer_burst: 400,
            audit_max_entries: 4 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// The limits of one query's execution.
    pub fn exec(&self) -> concord_query::limits::ExecLimits {
        concord_query::limits::ExecLimits {
            memory_bytes: usize::try_from(self.query_memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(usize::MAX),
            max_groups: self.max_groups,
        }
    }

    /// `query_timeout_secs` as a duration: the wall time of one analyst's query.
    pub fn query_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.query_timeout_secs)
    }

    /// Refuses limits that would stop the node from working at all.
    pub fn validate(&self) -> Result<(), NodeError> {
        let zero = [
            ("query_memory_mb", self.query_memory_mb == 0),
            ("query_timeout_secs", self.query_timeout_secs == 0),
            ("subquery_timeout_secs", self.subquery_timeout_secs == 0),
            ("max_concurrent_queries", self.max_concurrent_queries == 0),
            ("max_result_rows", self.max_result_rows == 0),
            ("peer_timeout_secs", self.peer_timeout_secs == 0),
            ("catalog_timeout_secs", self.catalog_timeout_secs == 0),
            ("witness_timeout_secs", self.witness_timeout_secs == 0),
            ("max_connections", self.max_connections == 0),
            ("max_connections_per_address", self.max_connections_per_address == 0),
            ("header_timeout_secs", self.header_timeout_secs == 0),
            ("idle_timeout_secs", self.idle_timeout_secs == 0),
            ("peer_requests_per_sec", self.peer_requests_per_sec == 0),
            ("peer_burst", self.peer_burst == 0),
            ("audit_max_entries", self.audit_max_entries == 0),
        ];
        match zero.iter().find(|(_, z)| *z) {
            Some((name, _)) => Err(NodeError::Config(format!(
                "[limits] {name} is 0 in concord.toml; it must be at least 1 (remove the line for the default)"
            ))),
            None => Ok(()),
        }
    }
}

/// Paths inside a node folder.
#[derive(Clone, Debug)]
pub struct NodeDir {
    /// The node folder itself.
    pub root: PathBuf,
    /// Where the keys are read from when not `root/keys`.
    keys: Option<PathBuf>,
}

const MEMBER_KEY: &str = "member.key";
const WITNESS_KEY: &str = "witness.key";
const TLS_KEY: &str = "tls.key";
const TLS_CERT: &str = "tls.crt";

impl NodeDir {
    /// The node folder at `root`, its keys in `root/keys`; nothing is read or created.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), keys: None }
    }
    /// `concord.toml`, the node's configuration.
    pub fn config(&self) -> PathBuf {
        self.root.join("concord.toml")
    }
    /// A key file: from the folder `with_keys_in` gave while it holds it (a rotation moved
    /// halfway has moved the rest already), else from `keys/`.
    fn key_file(&self, name: &str) -> PathBuf {
        match &self.keys {
            Some(k) if k.join(name).exists() => k.join(name),
            _ => self.root.join("keys").join(name),
        }
    }
    /// The same folder with its keys read from `keys` (a pending rotation's).
    pub fn with_keys_in(mut self, keys: &Path) -> Self {
        self.keys = Some(keys.to_path_buf());
        self
    }
    /// The member's Ed25519 note-signing key file (private).
    pub fn member_key(&self) -> PathBuf {
        self.key_file(MEMBER_KEY)
    }
    /// The Ed25519 key file the node cosigns other members' checkpoints with (private).
    pub fn witness_key(&self) -> PathBuf {
        self.key_file(WITNESS_KEY)
    }
    /// The TLS private key file, PEM (private).
    pub fn tls_key(&self) -> PathBuf {
        self.key_file(TLS_KEY)
    }
    /// The node's self-signed TLS certificate, PEM.
    pub fn tls_cert(&self) -> PathBuf {
        self.key_file(TLS_CERT)
    }
    /// Keys of a pending rotation (`concord keys rotate`).
    pub fn next_keys(&self) -> PathBuf {
        self.root.join("keys").join("next")
    }
    /// The card of a pending rotation's keys.
    pub fn next_card(&self) -> PathBuf {
        self.root.join("member-card.next.json")
    }
    /// `state.db`, the SQLite database of the node's state and its transparency log.
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    /// `member-card.json`, the public facts of the member's current keys.
    pub fn card(&self) -> PathBuf {
        self.root.join("member-card.json")
    }

    /// Reads `concord.toml` and checks its limits; a folder without one is not a node folder.
    pub fn load_config(&self) -> Result<NodeConfig, NodeError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            NodeError::Config(format!(
                "{} is not a node folder ({}: {e}); create one with `concord init`",
                self.root.display(),
                path.display()
            ))
        })?;
        let cfg: NodeConfig = toml::from_str(&text)
            .map_err(|source| NodeError::Toml { path: path.display().to_string(), source })?;
        cfg.limits.validate()?;
        Ok(cfg)
    }

    /// Writes `cfg` as the node's configuration, after checking its limits.
    pub fn save_config(&self, cfg: &NodeConfig) -> Result<(), NodeError> {
        cfg.limits.validate()?;
        let toml = toml::to_string(cfg)?;
        replace_file(&self.config(), toml.as_bytes())
    }

    /// The member's note signer, from a private key file that must name `<federation>/<member>`.
    pub fn load_signer(&self, cfg: &NodeConfig) -> Result<NoteSigner, NodeError> {
        let want = format!("{}/{}", cfg.federation, cfg.member);
        read_key(&self.member_key(), &want, NoteSigner::from_skey, |k| k.name())
    }

    /// The node's cosignature signer, from a private key file that must name
    /// `<federation>/<member>/witness`.
    pub fn load_witness(&self, cfg: &NodeConfig) -> Result<CosignatureSigner, NodeError> {
        let want = format!("{}/{}/witness", cfg.federation, cfg.member);
        read_key(&self.witness_key(), &want, CosignatureSigner::from_skey, |k| k.name())
    }

    /// The node's TLS certificate and key; the key file must be private.
    pub fn load_tls(&self) -> Result<crate::net::tls::TlsKeys, NodeError> {
        check_private(&self.tls_key())?;
        crate::net::tls::TlsKeys::load(&self.tls_cert(), &self.tls_key())
    }

    /// The node's transparency log (in the state database).
    pub fn open_log(&self) -> Result<crate::store::tlog::Log, NodeError> {
        crate::store::tlog::Log::open(&self.state_db())
    }

    /// The node's state database, created with its tables if it does not exist.
    pub fn open_state(&self) -> Result<State, NodeError> {
        State::open(&self.state_db())
    }

    /// The member's card as `member-card.json` holds it.
    pub fn load_card(&self) -> Result<MemberCard, NodeError> {
        let path = self.card();
        let text = std::fs::read_to_string(&path).map_err(|e| NodeError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|source| NodeError::Decode { what: path.display().to_string(), source })
    }
}

/// Refuses a private file that others than its owner may read or write, as ssh does.
pub fn check_private(path: &Path) -> Result<(), NodeError> {
    let meta = std::fs::metadata(path).map_err(|e| NodeError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(NodeError::Config(format!(
            "permissions {mode:04o} for {} are too open: a private key must not be accessible by others; \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Reads a private-key file and checks that the key is named `want`.
fn read_key<K>(
    path: &Path,
    want: &str,
    parse: fn(&str) -> Result<K, concord_log::LogError>,
    name: fn(&K) -> &str,
) -> Result<K, NodeError> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| NodeError::io(path, e))?;
    let key = parse(&text)?;
    if name(&key) != want {
        return Err(NodeError::Config(format!(
            "{} holds the key of {}, not {want}",
            path.display(),
            name(&key)
        )));
    }
    Ok(key)
}

/// What `concord init` is given.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The new node's member id, `[a-z][a-z0-9-]{1,31}`.
    pub member: String,
    /// The federation's name (lower-case letters, digits, `-` and `.`).
    pub federation: String,
    /// The member's display name; the member id when absent.
    pub name: Option<String>,
    /// The jurisdiction the node runs in; `unspecified` when absent.
    pub jurisdiction: Option<String>,
    /// Where the peer listener binds: `IP:PORT` with a numeric host.
    pub peer_listen: String,
    /// Where the local listener binds: `IP:PORT` with a numeric host.
    pub local_listen: String,
    /// Where the Arrow Flight SQL listener binds: `IP:PORT` with a numeric host; none when absent.
    pub flight_listen: Option<String>,
    /// `HOST:PORT` other members dial (the charter lists it); the peer listen address when
    /// absent. An unspecified host (0.0.0.0, ::) is refused: no one can dial it.
    pub advertise: Option<String>,
}

/// The peer endpoint a member card carries: what other members dial.
fn advertised(opts: &InitOptions) -> Result<String, NodeError> {
    let endpoint = opts.advertise.clone().unwrap_or_else(|| opts.peer_listen.clone());
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| {
        NodeError::Config(format!(
            "--advertise {endpoint:?} is not HOST:PORT, for example node.example.org:7101"
        ))
    })?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(NodeError::Config(format!("{endpoint:?} is not HOST:PORT with a port from 1 to 65535")));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(NodeError::Config(format!(
            "{endpoint:?} is the unspecified address, which other members cannot dial; listen on it if you \
             like, and give the address they use with --advertise HOST:PORT"
        )));
    }
    Ok(endpoint)
}

/// Creates a node folder. Everything is written into a temporary sibling folder first and moved
/// into place at the end, so a failure leaves nothing half-written.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<MemberCard, NodeError> {
    check_member_id(&opts.member)?;
    check_federation_name(&opts.federation)?;
    advertised(opts)?;
    for addr in
        [Some(&opts.peer_listen), Some(&opts.local_listen), opts.flight_listen.as_ref()].into_iter().flatten()
    {
        addr.parse::<std::net::SocketAddr>().map_err(|_| {
            NodeError::Config(format!(
                "{addr:?} is not HOST:PORT with a numeric host, for example 127.0.0.1:7101"
            ))
        })?;
    }
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| NodeError::io(dir, e))?.next().is_some() {
        return Err(NodeError::Config(format!(
            "{} exists and is not empty; choose a new folder for the node",
            dir.display()
        )));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| NodeError::io(parent, e))?;
    let leaf = dir.file_name().and_then(|n| n.to_str()).unwrap_or("node");
    let tmp = parent.join(format!(".{leaf}.init-{}", std::process::id()));
    let result = write_node(&tmp, opts);
    match result {
        Ok(card) => {
            if dir.exists() {
                std::fs::remove_dir(dir).map_err(|e| NodeError::io(dir, e))?;
            }
            std::fs::rename(&tmp, dir).map_err(|e| NodeError::io(dir, e))?;
            Ok(card)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_node(root: &Path, opts: &InitOptions) -> Result<MemberCard, NodeError> {
    let nd = NodeDir::new(root);
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys).map_err(|e| NodeError::io(&keys, e))?;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| NodeError::io(&keys, e))?;
    let cfg = NodeConfig {
        federation: opts.federation.clone(),
        member: opts.member.clone(),
        name: opts.name.clone().unwrap_or_else(|| opts.member.clone()),
        jurisdiction: opts.jurisdiction.clone().unwrap_or_else(|| "unspecified".into()),
        peer_listen: opts.peer_listen.clone(),
        local_listen: opts.local_listen.clone(),
        flight_listen: opts.flight_listen.clone(),
        peer_endpoint: advertised(opts)?,
        limits: Limits::default(),
    };
    let card = generate_keys(&keys, &cfg)?;
    nd.save_config(&cfg)?;
    nd.open_state()?;
    log_keys(&nd, &card)?;
    write_card(&nd.card(), &card)?;
    Ok(card)
}

/// New member, witness and TLS keys in `folder` (which exists), and the card that lists them.
fn generate_keys(folder: &Path, cfg: &NodeConfig) -> Result<MemberCard, NodeError> {
    let signer = NoteSigner::generate(&format!("{}/{}", cfg.federation, cfg.member))?;
    write_private(&folder.join(MEMBER_KEY), signer.to_skey().as_bytes())?;
    let witness = CosignatureSigner::generate(&format!("{}/{}/witness", cfg.federation, cfg.member))?;
    write_private(&folder.join(WITNESS_KEY), witness.to_skey().as_bytes())?;
    let tls = crate::net::tls::generate(&cfg.member)?;
    write_private(&folder.join(TLS_KEY), tls.key_pem.as_bytes())?;
    write_file(&folder.join(TLS_CERT), tls.cert_pem.as_bytes())?;
    let card = MemberCard {
        id: cfg.member.clone(),
        name: cfg.name.clone(),
        jurisdiction: cfg.jurisdiction.clone(),
        vkey: signer.vkey(),
        witness_vkey: witness.verifier().to_vkey(),
        tls_pin: tls.pin,
        peer_endpoint: cfg.peer_endpoint.clone(),
    };
    card.validate()?;
    Ok(card)
}

fn log_keys(nd: &NodeDir, card: &MemberCard) -> Result<(), NodeError> {
    let entry = crate::store::entry::LogEntry::keys_set(card);
    nd.open_log()?.append_blocking(entry.to_bytes()?)?;
    Ok(())
}

fn write_card(path: &Path, card: &MemberCard) -> Result<(), NodeError> {
    let json = serde_json::to_string_pretty(card)
        .map_err(|source| NodeError::Encode { what: "the member card", source })?;
    replace_file(path, format!("{json}\n").as_bytes())
}

/// `concord keys rotate`: new keys in `keys/next/` and the card that lists them in
/// `member-card.next.json`, for a `--rotate-key` proposal. The node goes on with its current
/// keys until a charter version lists the new ones; it takes them when it starts next
/// ([`rotation_listed`], [`finish_rotation`]).
pub fn rotate_keys(nd: &NodeDir) -> Result<MemberCard, NodeError> {
    let cfg = nd.load_config()?;
    let next = nd.next_keys();
    if next.exists() {
        return Err(NodeError::Config(format!(
            "a key rotation is pending already: {} holds new keys and {} their card. Propose it with `concord propose --rotate-key {} --card {}`, or, if no charter version lists them, delete both to start over",
            next.display(),
            nd.next_card().display(),
            cfg.member,
            nd.next_card().display()
        )));
    }
    let tmp = nd.root.join("keys").join(format!(".next-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| NodeError::io(&tmp, e))?;
    let made = generate_keys(&tmp, &cfg)
        .and_then(|card| write_card(&nd.next_card(), &card).map(|()| card))
        .and_then(|card| std::fs::rename(&tmp, &next).map_err(|e| NodeError::io(&next, e)).map(|()| card));
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(nd.next_card());
    }
    made
}

/// Whether the keys of a pending rotation are the ones `card` (this member's card in the
/// charter version in force) lists. A rotation interrupted halfway is judged on its keys as
/// they lie, each file from `keys/next/` if it is still there, else from `keys/`.
pub fn rotation_listed(nd: &NodeDir, card: &MemberCard) -> Result<bool, NodeError> {
    if !nd.next_keys().is_dir() {
        return Ok(false);
    }
    let cfg = nd.load_config()?;
    let pending = nd.clone().with_keys_in(&nd.next_keys());
    let signer = pending.load_signer(&cfg)?;
    let witness = pending.load_witness(&cfg)?;
    let tls = pending.load_tls()?;
    Ok(card.vkey == signer.vkey()
        && card.tls_pin == tls.pin
        && card.witness_vkey == witness.verifier().to_vkey())
}

/// Moves the keys of a pending rotation that [`rotation_listed`] found listed into `keys/`,
/// over the old private keys, and makes their card `member-card.json`. Each file is one rename
/// and the folders are synced, so a crash halfway leaves a rotation that the next call
/// finishes; the caller logs the change first (the node's log has one writer).
pub fn finish_rotation(nd: &NodeDir, card: &MemberCard) -> Result<(), NodeError> {
    static MOVING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MOVING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let next = nd.next_keys();
    let keys = nd.root.join("keys");
    for name in [MEMBER_KEY, WITNESS_KEY, TLS_KEY, TLS_CERT] {
        let from = next.join(name);
        if from.exists() {
            let to = keys.join(name);
            std::fs::rename(&from, &to).map_err(|e| NodeError::io(&to, e))?;
        }
    }
    sync_dir(&keys)?;
    if next.is_dir() {
        std::fs::remove_dir(&next).map_err(|e| NodeError::io(&next, e))?;
        sync_dir(&keys)?;
    }
    write_card(&nd.card(), card)?;
    let _ = std::fs::remove_file(nd.next_card());
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| NodeError::io(dir, e))
}

/// Writes a file readable by its owner only (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| NodeError::io(path, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| NodeError::io(path, e))
}

pub use crate::store::files::private_database;

/// Writes a file with the default mode, replacing one that exists (not atomically).
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    std::fs::write(path, bytes).map_err(|e| NodeError::io(path, e))
}

/// Replaces a file atomically: write a temporary sibling, then rename over.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    replace_with_mode(path, bytes, 0o644)
}

/// Replaces a file atomically with one readable by its owner only (tokens, keys).
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    replace_with_mode(path, bytes, 0o600)
}

fn replace_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NodeError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(NodeError::io(path, e));
    }
    Ok(())
}
