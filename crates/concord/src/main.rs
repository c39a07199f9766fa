//! `concord`: parses arguments and calls the libraries.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use concord_lab::{bench, demo, smoke};
use concord_node::node::admin;
use concord_node::run as node;
use concord_node::store::config::{InitOptions, NodeDir};

mod output;

#[derive(Parser)]
#[command(name = "concord", version, about = "A sovereign data federation under joint governance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node folder: config, member key, TLS key and certificate, state, member card.
    Init {
        dir: PathBuf,
        #[arg(long)]
        member: String,
        #[arg(long)]
        federation: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        jurisdiction: Option<String>,
        #[arg(long, default_value = "127.0.0.1:7101")]
        peer_listen: String,
        #[arg(long, default_value = "127.0.0.1:7100")]
        local_listen: String,
        /// HOST:PORT other members dial, for the member card (default: the peer listen address).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Become a full member once an adopted charter version names this node's card: fetch the
    /// chain of charter versions from a member, verify it from the genesis digest, store it.
    /// Also catches up a node that was down while its own keys were rotated.
    Join {
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
    },
    /// Copy a node folder (config, cards, keys, a consistent snapshot of the state database)
    /// into a new folder, while the node runs. Dataset files are referenced, not copied.
    Backup {
        dir: PathBuf,
        /// The folder to create.
        #[arg(long)]
        to: PathBuf,
    },
    /// This node's keys: `rotate` makes new ones for a `--rotate-key` proposal.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Charter versions: genesis, signatures, acceptance.
    Charter {
        #[command(subcommand)]
        command: CharterCommand,
    },
    /// Datasets of this node.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Usage policies of datasets: set, show, check.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Access requests: file, list, approve, refuse, revoke (through a node's local API).
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Propose changes to the charter (role delegate). The last word printed is the proposal id.
    Propose {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        /// A candidate's member card (member-card.json).
        #[arg(long = "add-member")]
        add_member: Vec<PathBuf>,
        #[arg(long = "remove-member")]
        remove_member: Vec<String>,
        /// A member whose keys change; its new card with --card.
        #[arg(long = "rotate-key", requires = "card")]
        rotate_key: Option<String>,
        #[arg(long)]
        card: Option<PathBuf>,
        /// `ID=HOST:PORT`: a member's new peer endpoint.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// A shared schema (new, or a higher version of one) as JSON.
        #[arg(long = "schema")]
        schemas: Vec<PathBuf>,
        #[arg(long = "min-group-size")]
        min_group_size: Option<u64>,
        /// The most sensitive classification whose data may cross borders: public, general or
        /// important (core never does).
        #[arg(long = "cross-borders")]
        cross_borders: Option<String>,
        /// Who reads the notes of accesses (SQL, purpose, legal basis, sizes) in the logs:
        /// `parties` (the default: the two parties, others see salted commitments) or `public`.
        #[arg(long = "access-notes")]
        access_notes: Option<String>,
        /// `M/N`: M yes signatures of the N members adopt the next version.
        #[arg(long)]
        threshold: Option<String>,
        #[arg(long = "witness-quorum")]
        witness_quorum: Option<usize>,
        /// How long the proposal stays open: `7d`, `12h`, `30m`, `90s`.
        #[arg(long, default_value = "7d")]
        expires: String,
    },
    /// Vote on a proposal (role delegate): this node signs the vote.
    Vote {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        proposal: String,
        #[arg(value_parser = ["yes", "no"])]
        ballot: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// This member leaves the federation (role delegate): no vote of the others is needed.
    Leave {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
    },
    /// The proposals on the current charter version (roles delegate, auditor).
    Proposals {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Bearer tokens for the node's local users.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Run federated SQL through a node.
    Query {
        /// The node's local listener, for example http://127.0.0.1:7100.
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Show what each member contributed.
        #[arg(long)]
        provenance: bool,
        /// Purpose stated in every request to owners.
        #[arg(long, default_value = "analysis")]
        purpose: String,
        /// Go on without owners that cannot be reached, and name them.
        #[arg(long)]
        partial: bool,
        sql: String,
    },
    /// Audit members' transparency logs and reconcile accesses between them.
    Audit {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        /// The member to audit (with this node's own log).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        member: Option<String>,
        /// Audit every member.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// This node's transparency log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// A whole three-member federation on 127.0.0.1 with sample data.
    Demo {
        #[arg(long, default_value = "concord-demo")]
        dir: PathBuf,
        /// One sub-folder per member, each with CSV or Parquet files.
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 7100)]
        port_base: u16,
        /// Run a scripted tour and exit instead of waiting.
        #[arg(long)]
        smoke: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum CharterCommand {
    /// Write charter version 1 from member cards and shared schemas.
    Genesis {
        #[arg(long)]
        federation: String,
        #[arg(long = "card", required = true)]
        cards: Vec<PathBuf>,
        /// A shared schema as JSON: {"name", "columns": [{"name", "type", "personal"}]}.
        #[arg(long = "schema")]
        schemas: Vec<PathBuf>,
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Add this node's member signature to a charter file.
    Sign { dir: PathBuf, file: PathBuf },
    /// Verify a charter file and make it this node's charter.
    Accept { dir: PathBuf, file: PathBuf },
    /// A charter version as a node holds it (the current one unless --version).
    Show {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Every charter version a node holds, from genesis.
    History {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print the entries of a node's log, decoded.
    Show {
        dir: PathBuf,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Fetch an offline receipt (C2SP tlog-proof) for one entry from a node.
    Receipt {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        index: u64,
    },
    /// Check an offline receipt against the log's verifier key.
    VerifyReceipt {
        file: PathBuf,
        #[arg(long)]
        vkey: String,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Register a CSV or Parquet file by reference.
    Add {
        dir: PathBuf,
        name: String,
        #[arg(long)]
        file: PathBuf,
        /// The charter's shared schema this dataset conforms to.
        #[arg(long)]
        schema: Option<String>,
        /// Members that may use it under the policy it gets: ids separated by commas, or '*'.
        /// Only for a new dataset; where its shared schema marks personal columns, the policy
        /// is derived from the schema and --allow never makes them plain.
        #[arg(long)]
        allow: Option<String>,
        /// Replace a dataset of this name; says what changed. Its policy stays (change it with
        /// `concord policy set`).
        #[arg(long)]
        replace: bool,
        /// CSV: the character between fields (default ','), e.g. ';' or '|'; `tab` for a tab.
        #[arg(long)]
        delimiter: Option<String>,
        /// CSV: the file has no header line; its columns are the shared schema's, in order.
        #[arg(long)]
        no_header: bool,
        /// CSV: the text that stands for NULL besides an empty field, e.g. NA.
        #[arg(long)]
        null: Option<String>,
        /// CSV: how the shared schema's date columns are written, e.g. %d/%m/%Y.
        #[arg(long)]
        date_format: Option<String>,
        /// CSV: how the shared schema's timestamp columns are written, e.g. "%d/%m/%Y %H:%M:%S".
        #[arg(long)]
        timestamp_format: Option<String>,
    },
    /// Take a dataset out of the registry (its file stays); a running node stops serving it.
    Remove { dir: PathBuf, name: String },
    /// One dataset: file, rows, shared schema, columns with their types, and its policy file.
    Show { dir: PathBuf, name: String },
    /// List the datasets.
    List {
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

#[derive(Subcommand)]
enum AccessCommand {
    /// File an access request with a dataset's owner (role analyst).
    Request {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        /// `member.dataset`.
        #[arg(long)]
        dataset: String,
        /// aggregate, read_rows or describe; repeat or separate with commas.
        #[arg(long = "action", value_delimiter = ',', required = true)]
        actions: Vec<String>,
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        legal_basis: String,
        /// The period asked for, in days from now.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// List access requests filed here and with this node (roles analyst, steward).
    List {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Approve a request filed with this node: a grant for its period, or at most --days (role steward).
    Approve {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        id: String,
        #[arg(long)]
        days: Option<u64>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refuse a pending request, with a reason (role steward).
    Refuse {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Revoke an approved grant, with a reason (role steward).
    Revoke {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Set a dataset's usage policy from a policy file (see docs/policy.md); a running node
    /// applies it at once.
    Set { dir: PathBuf, dataset: String, file: PathBuf },
    /// Print the policy in force for a dataset.
    Show { dir: PathBuf, dataset: String },
    /// Check a policy file offline: syntax, Cedar rules, and the default baseline.
    Check { file: PathBuf },
    /// Explain what a node's policy would release for a member's SQL over one of its datasets,
    /// rule by rule, without running it or spending budget (role steward).
    Test {
        #[arg(long)]
        node: String,
        #[arg(long)]
        token: String,
        /// The requesting member.
        #[arg(long = "as")]
        as_member: String,
        #[arg(long, default_value = "analysis")]
        purpose: String,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        dataset: String,
        sql: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it.
    Create {
        dir: PathBuf,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// New member, witness and TLS keys in DIR/keys/next and their card in
    /// DIR/member-card.next.json; the node takes them into use when it starts under a charter
    /// version that lists them.
    Rotate { dir: PathBuf },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Start both listeners; stop with SIGINT or SIGTERM.
    Run { dir: PathBuf },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Federated GROUP BY against the same SQL over the pooled data.
    Federated {
        #[arg(long, default_value_t = 6_000_000)]
        rows: usize,
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        #[arg(long, default_value = "concord-bench")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7300)]
        port_base: u16,
    },
    /// Time from a proposal reaching its threshold to every node running the new version.
    Governance {
        #[arg(long, default_value_t = 50)]
        members: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value = "concord-bench-governance")]
        dir: PathBuf,
        #[arg(long, default_value_t = 7400)]
        port_base: u16,
    },
    /// Durable appends, checkpoint cosigning and inclusion proofs of the transparency log.
    Log {
        #[arg(long, default_value = "concord-bench-log")]
        dir: PathBuf,
        /// Tree sizes at which inclusion proofs are timed.
        #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
        proof_sizes: Vec<u64>,
        #[arg(long, default_value_t = 7400)]
        port_base: u16,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Planning deeply nested SQL recurses; 16 MiB per thread leaves room that 2 MiB does not.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors already hold their causes' messages; print a cause only if new.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            dir,
            member,
            federation,
            name,
            jurisdiction,
            peer_listen,
            local_listen,
            advertise,
        } => {
            let card = concord_node::store::config::init(
                &dir,
                &InitOptions { member, federation, name, jurisdiction, peer_listen, local_listen, advertise },
            )?;
            println!("created node {} in {}", card.id, dir.display());
            println!("member card: {}", NodeDir::new(&dir).card().display());
            println!("verifier key: {}", card.vkey);
            println!("TLS pin: {}", card.tls_pin);
        }
        Command::Join { dir, peer, genesis, head } => {
            let sc =
                concord_node::node::governance::join(&NodeDir::new(&dir), &peer, &genesis, head.as_deref())
                    .await?;
            println!(
                "joined federation {} at charter version {} ({} members), verified from genesis {}",
                sc.charter.federation,
                sc.charter.version,
                sc.charter.members.len(),
                genesis.trim().to_ascii_lowercase()
            );
            if head.is_none() {
                println!(
                    "version {} has digest {}: compare it with `concord charter show` at a member you trust",
                    sc.charter.version,
                    sc.charter.digest()
                );
            }
            println!("start the node: concord node run {}", dir.display());
        }
        Command::Backup { dir, to } => {
            let b = admin::backup(&NodeDir::new(&dir), &to)?;
            for f in &b.files {
                println!("wrote {}", f.display());
            }
            println!("the copy's log holds {} entries", b.log_size);
            for f in &b.dataset_files {
                println!("not copied (back it up with the node): dataset file {}", f.display());
            }
            println!(
                "to restore: stop the node, put {} in place of {}, start the node",
                to.display(),
                dir.display()
            );
        }
        Command::Keys { command: KeysCommand::Rotate { dir } } => {
            let nd = NodeDir::new(&dir);
            let card = concord_node::store::config::rotate_keys(&nd)?;
            println!("new keys in {}", nd.next_keys().display());
            println!("their card: {}", nd.next_card().display());
            println!("TLS pin: {}", card.tls_pin);
            println!(
                "next: concord propose --node URL --token T --rotate-key {} --card {}; once that version is adopted, restart the node",
                card.id,
                nd.next_card().display()
            );
        }
        Command::Charter { command } => charter(command).await?,
        Command::Propose {
            node,
            token,
            add_member,
            remove_member,
            rotate_key,
            card,
            endpoints,
            schemas,
            min_group_size,
            cross_borders,
            access_notes,
            threshold,
            witness_quorum,
            expires,
        } => {
            let mut changes = Vec::new();
            let read_json = |p: &PathBuf| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
            };
            for p in &add_member {
                changes.push(serde_json::json!({ "change": "add-member", "card": read_json(p)? }));
            }
            for id in remove_member {
                changes.push(serde_json::json!({ "change": "remove-member", "id": id }));
            }
            if let (Some(id), Some(p)) = (&rotate_key, &card) {
                let card = read_json(p)?;
                if card["id"].as_str() != Some(id.as_str()) {
                    anyhow::bail!(
                        "--rotate-key {id}: the card {} is member {}'s; give the card made by `concord keys rotate` on {id}'s node",
                        p.display(),
                        card["id"]
                    );
                }
                changes.push(serde_json::json!({ "change": "rotate-key", "card": card }));
            }
            for e in endpoints {
                let (id, endpoint) = e
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--endpoint {e:?}: write ID=HOST:PORT"))?;
                changes
                    .push(serde_json::json!({ "change": "change-endpoint", "id": id, "endpoint": endpoint }));
            }
            for p in &schemas {
                changes.push(serde_json::json!({ "change": "set-schema", "schema": read_json(p)? }));
            }
            if let Some(size) = min_group_size {
                changes.push(serde_json::json!({ "change": "min-group-size", "size": size }));
            }
            if let Some(c) = cross_borders {
                if concord_charter::CrossBorders::parse(&c).is_none() {
                    anyhow::bail!("--cross-borders {c:?}: write public, general or important");
                }
                changes.push(serde_json::json!({ "change": "cross-borders", "ceiling": c }));
            }
            if let Some(v) = access_notes {
                if concord_charter::AccessNotes::parse(&v).is_none() {
                    anyhow::bail!("--access-notes {v:?}: write parties or public");
                }
                changes.push(serde_json::json!({ "change": "access-notes", "visibility": v }));
            }
            if let Some(t) = threshold {
                let m = t
                    .split('/')
                    .next()
                    .and_then(|m| m.trim().parse::<usize>().ok())
                    .ok_or_else(|| anyhow::anyhow!("--threshold {t:?}: write M/N, for example 4/5"))?;
                changes.push(serde_json::json!({ "change": "threshold", "threshold": m }));
            }
            if let Some(q) = witness_quorum {
                changes.push(serde_json::json!({ "change": "witness-quorum", "quorum": q }));
            }
            if changes.is_empty() {
                anyhow::bail!("a proposal needs at least one change (--add-member, --min-group-size, ...)");
            }
            let secs = duration_secs(&expires)?;
            let body = serde_json::json!({ "changes": changes, "expires_in_secs": secs });
            let r = local_json(&node, &token, "POST", "/v1/governance/proposals", Some(body)).await?;
            let list: Vec<&str> =
                r["changes"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).collect();
            println!("proposed on charter version {}: {}", r["base_version"], list.join("; "));
            println!("proposal {}", r["proposal"].as_str().unwrap_or("?"));
        }
        Command::Vote { node, token, proposal, ballot, reason } => {
            let body = serde_json::json!({ "vote": ballot, "reason": reason });
            let r = local_json(
                &node,
                &token,
                "POST",
                &format!("/v1/governance/proposals/{proposal}/vote"),
                Some(body),
            )
            .await?;
            println!(
                "voted {ballot} on {proposal}: {}; charter version {}",
                r["outcome"].as_str().unwrap_or("?"),
                r["version"]
            );
        }
        Command::Leave { node, token } => {
            let r = local_json(&node, &token, "POST", "/v1/governance/leave", None).await?;
            println!(
                "exit proposed and signed ({}); charter version {}",
                r["outcome"].as_str().unwrap_or("?"),
                r["version"]
            );
        }
        Command::Proposals { node, token, format } => {
            let r = local_json(&node, &token, "GET", "/v1/governance/proposals", None).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                ListFormat::Table => {
                    println!("charter version {}", r["version"]);
                    for p in r["proposals"].as_array().into_iter().flatten() {
                        let words = |k: &str| -> String {
                            p[k].as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        println!(
                            "{} by {} [{}] {}; yes: {}; no: {}",
                            p["id"].as_str().unwrap_or("?"),
                            p["proposer"].as_str().unwrap_or("?"),
                            p["status"].as_str().unwrap_or("?"),
                            words("changes"),
                            words("yes"),
                            words("no")
                        );
                    }
                }
            }
        }
        Command::Dataset { command } => dataset(command).await?,
        Command::Policy { command } => policy(command).await?,
        Command::Access { command } => access(command).await?,
        Command::Token { command: TokenCommand::Create { dir, role } } => {
            println!("{}", admin::token_create(&NodeDir::new(dir), &role)?);
        }
        Command::Node { command: NodeCommand::Run { dir } } => {
            let running = node::start(&NodeDir::new(&dir)).await?;
            eprintln!(
                "node {} of {} running: local http://{}  peer {}",
                running.node.cfg.member,
                running.node.federation(),
                running.local_addr,
                running.peer_addr
            );
            node::shutdown_signal().await;
            eprintln!("stopping");
            running.stop().await;
        }
        Command::Query { node, token, format, provenance, purpose, partial, sql } => {
            output::query(&node, &token, &sql, &purpose, format_name(format), provenance, partial).await?;
        }
        Command::Demo { dir, data, port_base, smoke } => run_demo(dir, data, port_base, smoke).await?,
        Command::Audit { node, token, member, all, format } => {
            output::audit(&node, &token, member, all, matches!(format, ListFormat::Json)).await?;
        }
        Command::Log { command } => log(command).await?,
        Command::Bench { command: BenchCommand::Governance { members, rounds, dir, port_base } } => {
            if members < 2 || rounds == 0 {
                bail!("--members must be at least 2 and --rounds at least 1");
            }
            let opts =
                concord_lab::governance_bench::GovernanceBenchOptions { dir, members, rounds, port_base };
            let r = concord_lab::governance_bench::governance(&opts, &|s| eprintln!("{s}")).await?;
            println!(
                "{} members on loopback, threshold {}; set up and started in {:.1} s",
                r.members,
                r.threshold,
                r.setup.as_secs_f64()
            );
            println!(
                "threshold vote to every node on the new version: median {:.1} ms, max {:.1} ms over {} rounds (target 2000 ms)",
                bench::ms(bench::percentile(&r.adoption, 0.5)),
                bench::ms(r.adoption.iter().copied().max().unwrap_or_default()),
                r.adoption.len()
            );
        }
        Command::Bench { command: BenchCommand::Federated { rows, iterations, dir, port_base } } => {
            if rows < 3 || iterations == 0 {
                bail!("--rows must be at least 3 and --iterations at least 1");
            }
            let opts = bench::BenchOptions { dir, rows, iterations, port_base };
            let report = bench::federated(&opts, &|s| eprintln!("{s}")).await?;
            println!("query: {}", bench::BENCH_SQL);
            println!(
                "rows: {} across 3 members, {} groups, {} runs after one warm-up",
                report.rows,
                report.groups,
                report.pooled.len()
            );
            println!("pooled    median {:>9.1} ms", bench::ms(report.pooled_median()));
            println!("federated median {:>9.1} ms", bench::ms(report.federated_median()));
            println!("ratio federated/pooled: {:.2}", report.ratio());
            println!("with the usage policy: {}", bench::POLICY_SQL.replace("TABLE", "events_dp"));
            println!(
                "without policy median {:>9.1} ms",
                bench::ms(bench::percentile(&report.without_policy, 0.5))
            );
            println!(
                "with policy    median {:>9.1} ms",
                bench::ms(bench::percentile(&report.with_policy, 0.5))
            );
            println!(
                "paired ratio with/without policy (modes, minimum group, DP): {:.2}",
                report.policy_ratio()
            );
            println!(
                "owner's policy check per sub-query: p50 {:.3} ms, p99 {:.3} ms over {}",
                bench::ms(bench::percentile(&report.policy_check, 0.5)),
                bench::ms(bench::percentile(&report.policy_check, 0.99)),
                report.policy_check.len()
            );
            println!(
                "one owner's release alone ({} rows, no network): without policy median {:.1} ms, with policy {:.1} ms, paired ratio {:.2}",
                report.rows / 3,
                bench::ms(bench::percentile(&report.owner_without_policy, 0.5)),
                bench::ms(bench::percentile(&report.owner_with_policy, 0.5)),
                report.owner_policy_ratio()
            );
        }
        Command::Bench { command: BenchCommand::Log { dir, proof_sizes, port_base } } => {
            let r = bench::log(&dir, &proof_sizes, port_base, &|s| eprintln!("{s}")).await?;
            println!("baseline: {:.0} inserts/s, one durable SQLite transaction each, no tree", r.baseline);
            println!("durable appends (SQLite WAL, synchronous=FULL, group commit, Merkle nodes included):");
            for (w, n, rate, p50, p99) in &r.appends {
                println!(
                    "  {w:>3} writers: {n:>6} appends, {rate:>9.0} appends/s ({:.1}x baseline), p50 {:>7.2} ms, p99 {:>7.2} ms",
                    rate / r.baseline,
                    bench::ms(*p50),
                    bench::ms(*p99)
                );
            }
            println!(
                "checkpoint to cosigned by 2 witnesses: p50 {:.1} ms, p99 {:.1} ms over {} appends",
                bench::ms(r.cosigned_p50()),
                bench::ms(r.cosigned_p99()),
                r.cosigned.len()
            );
            for (leaves, n, p50, p99) in &r.proofs {
                println!(
                    "inclusion proof at {leaves} leaves: p50 {:.3} ms, p99 {:.3} ms over {n} proofs",
                    bench::ms(*p50),
                    bench::ms(*p99)
                );
            }
        }
    }
    Ok(())
}

async fn log(command: LogCommand) -> Result<()> {
    match command {
        LogCommand::Show { dir, from } => {
            let nd = NodeDir::new(dir);
            nd.load_config()?;
            let log = nd.open_log()?;
            let size = log.size()?;
            let mut out = std::io::stdout().lock();
            let mut start = from;
            while start < size {
                let end = (start + 1024).min(size);
                for (i, e) in log.entries(start, end)?.iter().enumerate() {
                    let shown = match concord_node::store::entry::LogEntry::from_bytes(e) {
                        Ok(entry) => serde_json::to_string(&entry)?,
                        Err(_) => format!("(not a Concord entry: {} bytes)", e.len()),
                    };
                    writeln!(out, "{:>8}  {shown}", start + i as u64)?;
                }
                start = end;
            }
        }
        LogCommand::Receipt { node, token, index } => {
            let resp = concord_node::net::client::local_call(
                &node,
                "GET",
                &format!("/v1/log/receipt/{index}"),
                Some(&token),
                None,
            )
            .await?;
            if resp.status != 200 {
                let (code, message) = resp.error_parts();
                bail!("{message} [{code}]");
            }
            print!("{}", String::from_utf8_lossy(&resp.body));
        }
        LogCommand::VerifyReceipt { file, vkey } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let proof = concord_log::tiles::TlogProof::parse(&text)?;
            let key = concord_log::NoteVerifier::from_vkey(&vkey)?;
            let Some(entry) = &proof.extra else {
                bail!("the receipt carries no entry (extra line); it cannot be checked alone");
            };
            let cp = proof.verify(entry, &key)?;
            println!(
                "valid: entry {} is in {}'s log of {} entries, signed by {}",
                proof.index,
                cp.origin,
                cp.size,
                key.name()
            );
            match concord_node::store::entry::LogEntry::from_bytes(entry) {
                Ok(e) => println!("{}", serde_json::to_string_pretty(&e)?),
                Err(_) => println!("(entry of {} bytes)", entry.len()),
            }
        }
    }
    Ok(())
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Table => "table",
        Format::Csv => "csv",
        Format::Json => "json",
    }
}

/// `7d`, `12h`, `30m`, `90s` in seconds.
fn duration_secs(s: &str) -> Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("{s:?} is not a duration such as 7d, 12h, 30m"))?;
    let scale = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" | "" => 1,
        other => anyhow::bail!("{s:?}: unit {other:?} is not d, h, m or s"),
    };
    n.checked_mul(scale).ok_or_else(|| anyhow::anyhow!("{s:?} is too long"))
}

async fn charter(command: CharterCommand) -> Result<()> {
    let show = |c: &serde_json::Value| {
        let members: Vec<&str> =
            c["members"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
        format!(
            "version {} of {} (digest {}): members {}; threshold {}; minimum group size {}; signed by {}",
            c["version"],
            c["federation"].as_str().unwrap_or("?"),
            c["digest"].as_str().unwrap_or("?"),
            members.join(", "),
            c["threshold"],
            c["min_group_size"],
            c["signers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match command {
        CharterCommand::Show { node, token, version, format } => {
            let path = match version {
                Some(v) => format!("/v1/charter?version={v}"),
                None => "/v1/charter".to_owned(),
            };
            let c = local_json(&node, &token, "GET", &path, None).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
                ListFormat::Table => println!("{}", show(&c)),
            }
        }
        CharterCommand::History { node, token, format } => {
            let h = local_json(&node, &token, "GET", "/v1/charter/history", None).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&h)?),
                ListFormat::Table => {
                    println!("genesis {}", h["genesis"].as_str().unwrap_or("?"));
                    for c in h["versions"].as_array().into_iter().flatten() {
                        println!("{}", show(c));
                    }
                }
            }
        }
        CharterCommand::Genesis { federation, cards, schemas, out } => {
            let c = admin::charter_genesis(&federation, &cards, &schemas, &out)?;
            println!(
                "wrote charter version 1 of {} with {} members and {} shared schemas to {}; threshold {}",
                c.federation,
                c.members.len(),
                c.schemas.len(),
                out.display(),
                c.threshold
            );
            println!("each founder now runs: concord charter sign DIR {}", out.display());
        }
        CharterCommand::Sign { dir, file } => {
            let signed = admin::charter_sign(&NodeDir::new(dir), &file)?;
            println!("signed; signatures so far: {}", signed.join(", "));
        }
        CharterCommand::Accept { dir, file } => {
            let sc = admin::charter_accept(&NodeDir::new(dir), &file)?;
            println!("accepted charter version {} of {}", sc.charter.version, sc.charter.federation);
        }
    }
    Ok(())
}

async fn dataset(command: DatasetCommand) -> Result<()> {
    match command {
        DatasetCommand::Show { dir, name } => {
            let nd = NodeDir::new(dir);
            nd.load_config()?;
            let d = nd
                .open_state()?
                .datasets()?
                .into_iter()
                .find(|d| d.name == name)
                .ok_or_else(|| anyhow::anyhow!("no dataset {name}; `concord dataset list` shows them"))?;
            let schema = concord_query::ipc::decode_schema(&d.schema_ipc)?;
            println!("dataset {} ({}, {} rows)", d.name, d.format, d.rows);
            println!("file: {}", d.path.display());
            println!("shared schema: {}", d.shared_schema.as_deref().unwrap_or("none"));
            println!("registered: {}", d.added_at);
            let options = d.csv.describe();
            if !options.is_empty() {
                println!("read with: {}", options.join(", "));
            }
            println!("columns:");
            for f in schema.fields() {
                println!(
                    "  {} {}{}",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "" } else { " not null" }
                );
            }
            println!("policy:");
            for line in concord_node::node::stored_policy(&d)?.source.lines() {
                println!("  {line}");
            }
        }
        DatasetCommand::Remove { dir, name } => {
            let r = admin::dataset_remove(&NodeDir::new(dir), &name).await?;
            println!("removed dataset {} ({} stays where it is)", r.name, r.path.display());
        }
        DatasetCommand::Add {
            dir,
            name,
            file,
            schema,
            allow,
            replace,
            delimiter,
            no_header,
            null,
            date_format,
            timestamp_format,
        } => {
            let nd = NodeDir::new(dir);
            let delimiter = match delimiter.as_deref() {
                None => None,
                Some("tab" | "\\t") => Some('\t'),
                Some(d) => {
                    let mut chars = d.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => Some(c),
                        _ => bail!("--delimiter takes one character (or `tab`), not {d:?}"),
                    }
                }
            };
            let csv = concord_query::dataset::CsvOptions {
                delimiter,
                header: no_header.then_some(false),
                null,
                date_format,
                timestamp_format,
            };
            let spec = admin::DatasetSpec {
                name: &name,
                file: &file,
                shared_schema: schema.as_deref(),
                allow: allow.as_deref(),
                csv,
            };
            let registered = admin::dataset_register(&nd, &spec, replace).await?;
            for c in &registered.changes {
                println!("changed: {c}");
            }
            for w in &registered.left_out {
                eprintln!("warning: {w}");
            }
            for n in &registered.notes {
                println!("note: {n}");
            }
            let r = registered.record;
            println!(
                "registered dataset {} ({}, {} rows{}) at {}",
                r.name,
                r.format,
                r.rows,
                r.shared_schema.map(|s| format!(", conforms to {s}")).unwrap_or_default(),
                r.path.display()
            );
        }
        DatasetCommand::List { dir, format } => {
            let nd = NodeDir::new(dir);
            nd.load_config()?;
            let list = nd.open_state()?.datasets()?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                ListFormat::Table => {
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "{:<24} {:<8} {:>10}  {:<20} {:<10} {:<8} path",
                        "name", "format", "rows", "shared schema", "class", "personal"
                    )?;
                    for d in list {
                        let policy = concord_node::node::stored_policy(&d)
                            .with_context(|| format!("policy of {}", d.name))?;
                        writeln!(
                            out,
                            "{:<24} {:<8} {:>10}  {:<20} {:<10} {:<8} {}",
                            d.name,
                            d.format,
                            d.rows,
                            d.shared_schema.as_deref().unwrap_or("-"),
                            policy.classification.as_str(),
                            if policy.holds_personal_data() { "yes" } else { "no" },
                            d.path.display()
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn local_json(
    node: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let resp = concord_node::net::client::local_call(node, method, path, Some(token), body.as_ref()).await?;
    if resp.status != 200 {
        let (code, message) = resp.error_parts();
        anyhow::bail!("{message} [{code}]");
    }
    serde_json::from_slice(&resp.body).context("the node's answer is malformed")
}

async fn access(command: AccessCommand) -> Result<()> {
    let show = |r: &serde_json::Value| {
        format!(
            "{} {} {} -> {} {} [{}] {} ({})",
            r["id"].as_str().unwrap_or("?"),
            r["direction"].as_str().unwrap_or("?"),
            r["requester"].as_str().unwrap_or("?"),
            r["owner"].as_str().unwrap_or("?"),
            r["dataset"].as_str().unwrap_or("?"),
            r["actions"].as_str().unwrap_or("?"),
            r["status"].as_str().unwrap_or("?"),
            r["purpose"].as_str().unwrap_or("")
        )
    };
    match command {
        AccessCommand::Request { node, token, dataset, actions, purpose, legal_basis, days } => {
            let body = serde_json::json!({
                "dataset": dataset, "actions": actions, "purpose": purpose, "legal_basis": legal_basis, "days": days
            });
            let r = local_json(&node, &token, "POST", "/v1/access/requests", Some(body)).await?;
            println!("filed: {}", show(&r));
            println!("access request {}", r["id"].as_str().unwrap_or("?"));
        }
        AccessCommand::List { node, token, format } => {
            let list = local_json(&node, &token, "GET", "/v1/access/requests", None).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                ListFormat::Table => {
                    for r in list.as_array().into_iter().flatten() {
                        println!("{}", show(r));
                    }
                }
            }
        }
        AccessCommand::Approve { node, token, id, days, reason } => {
            let body = serde_json::json!({ "reason": reason, "days": days });
            let r =
                local_json(&node, &token, "POST", &format!("/v1/access/requests/{id}/approve"), Some(body))
                    .await?;
            println!("approved: {}", show(&r));
        }
        AccessCommand::Refuse { node, token, id, reason } => {
            let body = serde_json::json!({ "reason": reason });
            let r =
                local_json(&node, &token, "POST", &format!("/v1/access/requests/{id}/refuse"), Some(body))
                    .await?;
            println!("refused: {}", show(&r));
        }
        AccessCommand::Revoke { node, token, id, reason } => {
            let body = serde_json::json!({ "reason": reason });
            let r =
                local_json(&node, &token, "POST", &format!("/v1/access/requests/{id}/revoke"), Some(body))
                    .await?;
            println!("revoked: {}", show(&r));
        }
    }
    Ok(())
}

async fn policy(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Test { node, token, as_member, purpose, format, dataset, sql } => {
            let body =
                serde_json::json!({ "as": as_member, "purpose": purpose, "dataset": dataset, "sql": sql });
            let resp = concord_node::net::client::local_call(
                &node,
                "POST",
                "/v1/policy/test",
                Some(&token),
                Some(&body),
            )
            .await?;
            if resp.status != 200 {
                let (code, message) = resp.error_parts();
                anyhow::bail!("{message} [{code}]");
            }
            let report: serde_json::Value =
                serde_json::from_slice(&resp.body).context("the node's answer is malformed")?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                ListFormat::Table => print!("{}", output::explain_policy_test(&report)),
            }
        }
        PolicyCommand::Set { dir, dataset, file } => {
            let p = admin::policy_set(&NodeDir::new(dir), &dataset, &file)?;
            println!(
                "policy of {dataset} set: {}, {}, sha256:{}",
                p.classification.as_str(),
                if p.holds_personal_data() { "personal data" } else { "no personal data" },
                p.digest()
            );
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
        }
        PolicyCommand::Show { dir, dataset } => {
            let p = admin::policy_show(&NodeDir::new(dir), &dataset)?;
            println!("# policy of {dataset}, sha256:{}", p.digest());
            print!("{}", p.source);
        }
        PolicyCommand::Check { file } => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let p = concord_policy::Policy::parse(&text, &file.display().to_string())?;
            p.check_baseline(&concord_policy::Baseline::default())?;
            println!(
                "{}: valid ({}, {} columns named, {} access rules)",
                file.display(),
                p.classification.as_str(),
                p.columns.len(),
                p.rule_count()
            );
            for w in p.warnings() {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(())
}

async fn run_demo(dir: PathBuf, data: Option<PathBuf>, port_base: u16, smoke_only: bool) -> Result<()> {
    let sample = data.is_none();
    eprintln!("building the demo federation in {}", dir.display());
    let d = demo::launch(&demo::DemoOptions { dir: dir.clone(), data, port_base, smoke: smoke_only }).await?;
    eprintln!("wrote {}", dir.join("demo.json").display());
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    if smoke_only {
        let steps = smoke::tour(&d, sample).await;
        d.stop().await;
        let mut failed = 0;
        for s in &steps {
            match &s.outcome {
                Ok(detail) => println!("ok      {}\n        {detail}", s.name),
                Err(why) => {
                    failed += 1;
                    println!("FAILED  {}\n        {why}", s.name);
                }
            }
        }
        println!("{} passed, {failed} failed", steps.len() - failed);
        if failed > 0 {
            bail!("{failed} smoke step(s) failed");
        }
        return Ok(());
    }
    let queries: Vec<String> = if sample {
        demo::sample_queries().into_iter().map(String::from).collect()
    } else {
        demo::data_queries(&d.schemas)
    };
    println!("{}", demo::guide(&d.file, &queries));
    if sample {
        println!("{}", demo::showcase(&d.file).await);
    }
    node::shutdown_signal().await;
    eprintln!("stopping the demo federation");
    d.stop().await;
    Ok(())
}
