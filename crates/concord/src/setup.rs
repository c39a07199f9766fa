//! Node folders: `init`, `join`, `backup`, `keys rotate`, `token create`, `node run`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use concord_node::node::admin;
use concord_node::store::config::{InitOptions, NodeDir};

use crate::out::say;

/// `concord init`.
#[derive(Args)]
pub struct InitArgs {
    /// The node folder to create.
    dir: PathBuf,
    /// This member's id in the charter: lowercase letters, digits and '-'.
    #[arg(long)]
    member: String,
    /// The federation's name, the same at every member.
    #[arg(long)]
    federation: String,
    /// The member's name for people (default: its id).
    #[arg(long)]
    name: Option<String>,
    /// Where the member's data is held, e.g. FR or "EU/DE".
    #[arg(long)]
    jurisdiction: Option<String>,
    /// HOST:PORT of the peer listener (mutual TLS, other members' nodes).
    #[arg(long, default_value = "127.0.0.1:7101")]
    peer_listen: String,
    /// HOST:PORT of the local listener (this member's users and tools).
    #[arg(long, default_value = "127.0.0.1:7100")]
    local_listen: String,
    /// HOST:PORT of the Arrow Flight SQL listener (ADBC, JDBC, DBeaver), with the local API's
    /// tokens; none when absent.
    #[arg(long)]
    flight_listen: Option<String>,
    /// HOST:PORT other members dial, for the member card (default: the peer listen address).
    #[arg(long)]
    advertise: Option<String>,
}

pub fn init(a: InitArgs) -> Result<()> {
    let InitArgs {
        dir,
        member,
        federation,
        name,
        jurisdiction,
        peer_listen,
        local_listen,
        flight_listen,
        advertise,
    } = a;
    let card = concord_node::store::config::init(
        &dir,
        &InitOptions {
            member,
            federation,
            name,
            jurisdiction,
            peer_listen,
            local_listen,
            flight_listen,
            advertise,
        },
    )?;
    say!("created node {} in {}", card.id, dir.display());
    say!("member card: {}", NodeDir::new(&dir).card().display());
    say!("verifier key: {}", card.vkey);
    say!("TLS pin: {}", card.tls_pin);
    Ok(())
}

/// `concord join`.
#[derive(Args)]
pub struct JoinArgs {
    /// The node folder, made by `concord init`.
    dir: PathBuf,
    /// A member's peer endpoint, `https://HOST:PORT` or `HOST:PORT`.
    #[arg(long)]
    peer: String,
    /// The digest of charter version 1 (`genesis` in `concord charter show --format json`).
    #[arg(long)]
    genesis: String,
    /// The digest of the latest version, as a member you trust reads it (`digest` in
    /// `concord charter show --format json`): the chain must end there.
    #[arg(long)]
    head: Option<String>,
}

pub async fn join(a: JoinArgs) -> Result<()> {
    let sc =
        concord_node::node::governance::join(&NodeDir::new(&a.dir), &a.peer, &a.genesis, a.head.as_deref())
            .await?;
    say!(
        "joined federation {} at charter version {} ({} members), verified from genesis {}",
        sc.charter.federation,
        sc.charter.version,
        sc.charter.members.len(),
        a.genesis.trim().to_ascii_lowercase()
    );
    if a.head.is_none() {
        say!(
            "version {} has digest {}: compare it with `concord charter show` at a member you trust",
            sc.charter.version,
            sc.charter.digest()
        );
    }
    say!("start the node: concord node run {}", a.dir.display());
    Ok(())
}

/// `concord backup`.
#[derive(Args)]
pub struct BackupArgs {
    /// The node folder to copy.
    dir: PathBuf,
    /// The folder to create.
    #[arg(long)]
    to: PathBuf,
}

pub fn backup(a: BackupArgs) -> Result<()> {
    let b = admin::backup(&NodeDir::new(&a.dir), &a.to)?;
    for f in &b.files {
        say!("wrote {}", f.display());
    }
    say!("the copy's log holds {} entries", b.log_size);
    for f in &b.dataset_files {
        say!("not copied (back it up with the node): dataset file {}", f.display());
    }
    say!("to restore: stop the node, put {} in place of {}, start the node", a.to.display(), a.dir.display());
    Ok(())
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// New member, witness and TLS keys in DIR/keys/next and their card in
    /// DIR/member-card.next.json; the node takes them into use when it starts under a charter
    /// version that lists them.
    #[command(after_help = "Example:\n  concord keys rotate nodes/alpha")]
    Rotate {
        /// The node folder.
        dir: PathBuf,
    },
}

pub fn keys(command: KeysCommand) -> Result<()> {
    let KeysCommand::Rotate { dir } = command;
    let nd = NodeDir::new(&dir);
    let card = concord_node::store::config::rotate_keys(&nd)?;
    say!("new keys in {}", nd.next_keys().display());
    say!("their card: {}", nd.next_card().display());
    say!("TLS pin: {}", card.tls_pin);
    say!(
        "next: concord propose --rotate-key {} --card {}; once that version is adopted, restart the node",
        card.id,
        nd.next_card().display()
    );
    Ok(())
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it.
    #[command(after_help = "Example:\n  concord token create nodes/alpha --role analyst")]
    Create {
        /// The node folder.
        dir: PathBuf,
        /// analyst, steward, auditor, delegate or operator.
        #[arg(long)]
        role: String,
    },
}

pub fn token(command: TokenCommand) -> Result<()> {
    let TokenCommand::Create { dir, role } = command;
    say!("{}", admin::token_create(&NodeDir::new(dir), &role)?);
    Ok(())
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Start both listeners; stop with SIGINT or SIGTERM.
    #[command(after_help = "Example:\n  CONCORD_LOG=info concord node run nodes/alpha --log-format json")]
    Run {
        /// The node folder.
        dir: PathBuf,
    },
}

pub async fn node(command: NodeCommand) -> Result<()> {
    let NodeCommand::Run { dir } = command;
    let running = concord_node::run::start(&NodeDir::new(&dir)).await?;
    eprintln!(
        "node {} of {} running: local http://{}  peer {}",
        running.node.cfg.member,
        running.node.federation(),
        running.local_addr,
        running.peer_addr
    );
    concord_node::run::shutdown_signal().await;
    eprintln!("stopping");
    running.stop().await;
    Ok(())
}
