//! `concord`: parses arguments and calls the libraries. One module per command group; each
//! declares its own arguments and runs them.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

mod access;
mod bench;
mod charter;
mod connect;
mod dataset;
mod demo;
mod governance;
mod log;
mod out;
mod output;
mod policy;
mod query;
mod setup;

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "A sovereign data federation under joint governance",
    after_help = "Commands that talk to a node read --node and --token, else CONCORD_NODE and CONCORD_TOKEN, \
                  else the profile `concord login` wrote.\nOutput is coloured only on a terminal, and never under NO_COLOR.\n\n\
                  Example:\n  cargo run --release -- demo\n  concord login --node http://127.0.0.1:7100\n  \
                  concord query \"SELECT region, count(*) FROM health_cases GROUP BY region\""
)]
struct Cli {
    /// How the node's own log lines (on standard error) are written: `text` or `json`.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node folder: config, member key, TLS key and certificate, state, member card.
    #[command(
        after_help = "Example:\n  concord init nodes/alpha --member alpha --federation health-eu --jurisdiction FR"
    )]
    Init(setup::InitArgs),
    /// Become a full member once an adopted charter version names this node's card.
    #[command(after_help = "Example:\n  concord join nodes/delta --peer 127.0.0.1:7101 --genesis 3f1a...")]
    Join(setup::JoinArgs),
    /// Copy a node folder (config, cards, keys, a consistent snapshot of its state) while the
    /// node runs. Dataset files are referenced, not copied.
    #[command(after_help = "Example:\n  concord backup nodes/alpha --to backups/alpha-2026-12-05")]
    Backup(setup::BackupArgs),
    /// This node's keys: `rotate` makes new ones for a `--rotate-key` proposal.
    Keys {
        #[command(subcommand)]
        command: setup::KeysCommand,
    },
    /// Bearer tokens for the node's local users.
    Token {
        #[command(subcommand)]
        command: setup::TokenCommand,
    },
    /// Run a node.
    Node {
        #[command(subcommand)]
        command: setup::NodeCommand,
    },
    /// Keep a node and a token for later commands (a profile file readable by you only).
    #[command(
        after_help = "Example:\n  concord login --node http://127.0.0.1:7100   (then paste the token)\n  \
                            echo \"$TOKEN\" | concord login --node http://127.0.0.1:7100 --token-stdin"
    )]
    Login(connect::LoginArgs),
    /// Charter versions: genesis, signatures, acceptance, show and history.
    Charter {
        #[command(subcommand)]
        command: charter::CharterCommand,
    },
    /// Datasets of this node: add, remove, show, list.
    Dataset {
        #[command(subcommand)]
        command: dataset::DatasetCommand,
    },
    /// Usage policies of datasets: set, show, check, test.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Access requests: file, list, approve, refuse, revoke (through a node's local API).
    Access {
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    /// Propose changes to the charter (role delegate); this node votes yes on it. The last word
    /// printed is the proposal id.
    #[command(after_help = "Example:\n  concord propose --min-group-size 12 --expires 3d")]
    Propose(governance::ProposeArgs),
    /// Vote on a proposal (role delegate): this node signs the vote.
    #[command(after_help = "Example:\n  concord vote 5c0e1d... yes --reason \"agreed at the board\"")]
    Vote(governance::VoteArgs),
    /// This member leaves the federation (role delegate): no vote of the others is needed.
    #[command(after_help = "Example:\n  concord leave --node http://127.0.0.1:7104")]
    Leave(governance::LeaveArgs),
    /// The proposals on the current charter version (roles delegate, auditor).
    #[command(after_help = "Example:\n  concord proposals --format json")]
    Proposals(governance::ProposalsArgs),
    /// Run federated SQL through a node (role analyst).
    #[command(
        after_help = "Examples:\n  concord query \"SELECT region, count(*) FROM health_cases GROUP BY region\"\n  \
                            concord query -f report.sql --format csv > report.csv\n  \
                            echo \"SHOW TABLES\" | concord query -"
    )]
    Query(query::QueryArgs),
    /// The tables a query may name: shared schemas, member datasets released to this member,
    /// and this node's own tables.
    #[command(after_help = "Example:\n  concord tables --format json")]
    Tables(query::TablesArgs),
    /// Audit members' transparency logs and reconcile accesses between them (role auditor).
    #[command(after_help = "Examples:\n  concord audit bravo\n  concord audit --all --format json")]
    Audit(log::AuditArgs),
    /// This node's transparency log: show, receipt, verify-receipt.
    Log {
        #[command(subcommand)]
        command: log::LogCommand,
    },
    /// The local API: its OpenAPI document.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
    },
    /// Shell completions: `concord completions bash > /etc/bash_completion.d/concord`.
    #[command(after_help = "Example:\n  concord completions zsh > ~/.zfunc/_concord")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// A whole three-member federation on 127.0.0.1 with sample data.
    #[command(
        after_help = "Examples:\n  cargo run --release -- demo\n  concord demo --smoke --port-base 7500"
    )]
    Demo(demo::DemoArgs),
    /// Benchmarks; each writes under target/ unless --dir says otherwise.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Print the local API's OpenAPI 3.1 document (also served at /api/openapi.json).
    #[command(after_help = "Example:\n  concord api openapi > openapi.json")]
    Openapi,
}

/// Whether standard error takes colour: a terminal, and NO_COLOR unset or empty.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONCORD_LOG").unwrap_or_else(|_| "warn".into());
    // Ballista's client logs a failed job's whole message, which may quote a value of the
    // member's data: never in the node's log, whatever CONCORD_LOG says.
    let filter = ["ballista_core", "ballista_scheduler", "ballista_executor"]
        .into_iter()
        .filter_map(|target| format!("{target}=off").parse().ok())
        .fold(filter, tracing_subscriber::EnvFilter::add_directive);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
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
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if out::broken_pipe(&e) => ExitCode::SUCCESS,
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

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Init(a) => setup::init(a),
        Command::Join(a) => setup::join(a).await,
        Command::Backup(a) => setup::backup(a),
        Command::Keys { command } => setup::keys(command),
        Command::Token { command } => setup::token(command),
        Command::Node { command } => setup::node(command).await,
        Command::Login(a) => connect::login(&a.node, a.token_stdin).await,
        Command::Charter { command } => charter::run(command).await,
        Command::Dataset { command } => dataset::run(command).await,
        Command::Policy { command } => policy::run(command).await,
        Command::Access { command } => access::run(command).await,
        Command::Propose(a) => governance::propose(a).await,
        Command::Vote(a) => governance::vote(a).await,
        Command::Leave(a) => governance::leave(a).await,
        Command::Proposals(a) => governance::proposals(a).await,
        Command::Query(a) => query::query(a).await,
        Command::Tables(a) => query::tables(a).await,
        Command::Audit(a) => log::audit(a).await,
        Command::Log { command } => log::run(command).await,
        Command::Api { command: ApiCommand::Openapi } => {
            out::say!("{}", concord_node::api::openapi::document_json());
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "concord", &mut buf);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &buf)?;
            Ok(())
        }
        Command::Demo(a) => demo::run(a).await,
        Command::Bench { command } => bench::run(command).await,
    }
}

/// Output of list-like commands.
#[derive(Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every option and positional has a description, and every command that runs something
    /// shows an example: `--help` is the manual.
    #[test]
    fn every_option_is_described_and_every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}: no description"));
                }
            }
            let subs: Vec<_> = cmd.get_subcommands().filter(|s| s.get_name() != "help").collect();
            if subs.is_empty() && !cmd.get_after_help().is_some_and(|h| h.to_string().contains("Example")) {
                missing.push(format!("{path}: no example"));
            }
            for s in subs {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "concord", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }
}
