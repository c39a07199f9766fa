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
    pub federation: String,
    pub member: String,
    pub name: String,
    pub jurisdiction: String,
    /// Where the peer listener binds.
    pub peer_listen: String,
    /// Where the local listener binds.
    pub local_listen: String,
    /// What other members dial; the charter lists it.
    pub peer_endpoint: String,
}

/// Paths inside a node folder.
#[derive(Clone, Debug)]
pub struct NodeDir {
    pub root: PathBuf,
}

impl NodeDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("concord.toml")
    }
    pub fn member_key(&self) -> PathBuf {
        self.root.join("keys").join("member.key")
    }
    pub fn witness_key(&self) -> PathBuf {
        self.root.join("keys").join("witness.key")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("keys").join("tls.key")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.root.join("keys").join("tls.crt")
    }
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    pub fn card(&self) -> PathBuf {
        self.root.join("member-card.json")
    }

    pub fn load_config(&self) -> Result<NodeConfig, NodeError> {
        let path = self.config();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            NodeError::Config(format!(
                "{} is not a node folder ({}: {e}); create one with `concord init`",
                self.root.display(),
                path.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
    }

    pub fn load_signer(&self, cfg: &NodeConfig) -> Result<NoteSigner, NodeError> {
        let want = format!("{}/{}", cfg.federation, cfg.member);
        read_key(&self.member_key(), &want, NoteSigner::from_skey, |k| k.name())
    }

    pub fn load_witness(&self, cfg: &NodeConfig) -> Result<CosignatureSigner, NodeError> {
        let want = format!("{}/{}/witness", cfg.federation, cfg.member);
        read_key(&self.witness_key(), &want, CosignatureSigner::from_skey, |k| k.name())
    }

    /// The node's transparency log (in the state database).
    pub fn open_log(&self) -> Result<crate::store::tlog::Log, NodeError> {
        crate::store::tlog::Log::open(&self.state_db())
    }

    pub fn open_state(&self) -> Result<State, NodeError> {
        State::open(&self.state_db())
    }

    pub fn load_card(&self) -> Result<MemberCard, NodeError> {
        let path = self.card();
        let text = std::fs::read_to_string(&path).map_err(|e| NodeError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
    }
}

/// Reads a private-key file and checks that the key is named `want`.
fn read_key<K>(
    path: &Path,
    want: &str,
    parse: fn(&str) -> Result<K, concord_log::LogError>,
    name: fn(&K) -> &str,
) -> Result<K, NodeError> {
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
    pub member: String,
    pub federation: String,
    pub name: Option<String>,
    pub jurisdiction: Option<String>,
    pub peer_listen: String,
    pub local_listen: String,
}

/// Creates a node folder. Everything is written into a temporary sibling folder first and moved
/// into place at the end, so a failure leaves nothing half-written.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<MemberCard, NodeError> {
    check_member_id(&opts.member)?;
    check_federation_name(&opts.federation)?;
    for addr in [&opts.peer_listen, &opts.local_listen] {
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
        peer_endpoint: opts.peer_listen.clone(),
    };
    let signer = NoteSigner::generate(&format!("{}/{}", cfg.federation, cfg.member))?;
    write_private(&nd.member_key(), signer.to_skey().as_bytes())?;
    let witness = CosignatureSigner::generate(&format!("{}/{}/witness", cfg.federation, cfg.member))?;
    write_private(&nd.witness_key(), witness.to_skey().as_bytes())?;
    let tls = crate::net::tls::generate(&cfg.member)?;
    write_private(&nd.tls_key(), tls.key_pem.as_bytes())?;
    write_file(&nd.tls_cert(), tls.cert_pem.as_bytes())?;
    let toml = toml::to_string(&cfg).map_err(|e| NodeError::Config(e.to_string()))?;
    write_file(&nd.config(), toml.as_bytes())?;
    nd.open_state()?;
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
    let entry = crate::store::entry::LogEntry::KeysSet {
        time: crate::store::entry::now(),
        member: card.id.clone(),
        vkey: card.vkey.clone(),
        witness_vkey: card.witness_vkey.clone(),
        tls_pin: card.tls_pin.clone(),
    };
    nd.open_log()?.append_blocking(entry.to_bytes()?)?;
    let json = serde_json::to_string_pretty(&card).map_err(|e| NodeError::Config(e.to_string()))?;
    write_file(&nd.card(), format!("{json}\n").as_bytes())?;
    Ok(card)
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

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    std::fs::write(path, bytes).map_err(|e| NodeError::io(path, e))
}

/// Replaces a file atomically: write a temporary sibling, then rename over.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(NodeError::io(path, e));
    }
    Ok(())
}
