//! `concord access`: access requests through a node (file, list, approve, refuse, revoke).

use anyhow::Result;
use clap::Subcommand;
use concord_node::wire::{AccessAsk, AccessRecord, DecideRequest, Decision};
use concord_policy::Action;

use crate::ListFormat;
use crate::connect::Connect;
use crate::out::{say, time};

#[derive(Subcommand)]
pub enum AccessCommand {
    /// File an access request with a dataset's owner (role analyst).
    #[command(
        after_help = "Example:\n  concord access request --dataset bravo.health_cases --action read_rows \\\n    \
                            --purpose \"outbreak study\" --legal-basis \"GDPR art. 9(2)(i)\" --days 30"
    )]
    Request {
        #[command(flatten)]
        connect: Connect,
        /// `member.dataset`.
        #[arg(long)]
        dataset: String,
        /// aggregate, read_rows or describe; repeat or separate with commas.
        #[arg(long = "action", value_delimiter = ',', required = true, value_parser = action)]
        actions: Vec<Action>,
        /// What the data is for, in one line; queries under the grant state it.
        #[arg(long)]
        purpose: String,
        /// The law or agreement that allows the use.
        #[arg(long)]
        legal_basis: String,
        /// The period asked for, in days from now.
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// List access requests filed here and with this node (roles analyst, steward).
    #[command(after_help = "Example:\n  concord access list --format json")]
    List {
        #[command(flatten)]
        connect: Connect,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Approve a request filed with this node: a grant for its period, or at most --days (role steward).
    #[command(
        after_help = "Example:\n  concord access approve 9f2c... --days 14 --reason \"ethics board approval 2026-118\""
    )]
    Approve {
        #[command(flatten)]
        connect: Connect,
        /// The request's id, as `concord access list` prints it.
        id: String,
        /// Grant at most this many days of the period asked for.
        #[arg(long)]
        days: Option<u64>,
        /// Why, for the requester and the log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refuse a pending request, with a reason (role steward).
    #[command(
        after_help = "Example:\n  concord access refuse 9f2c... --reason \"no legal basis for row-level access\""
    )]
    Refuse {
        #[command(flatten)]
        connect: Connect,
        /// The request's id, as `concord access list` prints it.
        id: String,
        /// Why, for the requester and the log.
        #[arg(long)]
        reason: String,
    },
    /// Revoke an approved grant, with a reason (role steward).
    #[command(after_help = "Example:\n  concord access revoke 9f2c... --reason \"study closed\"")]
    Revoke {
        #[command(flatten)]
        connect: Connect,
        /// The request's id, as `concord access list` prints it.
        id: String,
        /// Why, for the requester and the log.
        #[arg(long)]
        reason: String,
    },
}

const HEADER: &str = "id                                dir  requester    owner        dataset              actions          status    valid until           purpose";

fn row(r: &AccessRecord) -> String {
    format!(
        "{:<33} {:<4} {:<12} {:<12} {:<20} {:<16} {:<9} {:<21} {}",
        r.id,
        r.direction.as_str(),
        r.requester,
        r.owner,
        r.dataset,
        actions_of(r),
        r.status.as_str(),
        time(r.valid_until),
        r.purpose
    )
}

/// An action named on the command line.
fn action(s: &str) -> Result<Action, String> {
    Action::parse(s).map_err(|e| e.to_string())
}

/// The actions of a request, as `access list` shows them: `aggregate,read_rows`.
fn actions_of(r: &AccessRecord) -> String {
    r.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
}

fn decided(word: &str, r: &AccessRecord) -> Result<()> {
    say!("{word}: request {} by {} for {}.{} ({})", r.id, r.requester, r.owner, r.dataset, actions_of(r));
    say!("status {}, valid until {}", r.status, time(r.valid_until));
    Ok(())
}

/// Prints the access requests filed here and with this node, as a table or JSON.
async fn list(connect: Connect, format: ListFormat) -> Result<()> {
    let list = connect.client()?.access_requests().await?;
    match format {
        ListFormat::Json => say!("{}", serde_json::to_string_pretty(&list)?),
        ListFormat::Table => {
            say!("{HEADER}");
            for r in &list {
                say!("{}", row(r));
            }
            if list.is_empty() {
                say!("(no access requests)");
            }
        }
    }
    Ok(())
}

pub async fn run(command: AccessCommand) -> Result<()> {
    match command {
        AccessCommand::Request { connect, dataset, actions, purpose, legal_basis, days } => {
            let ask = AccessAsk { dataset, actions, purpose, legal_basis, days };
            let r = connect.client()?.file_access_request(&ask).await?;
            say!(
                "filed with {}: {} on {} for {}, {}",
                r.owner,
                actions_of(&r),
                r.dataset,
                r.purpose,
                r.status
            );
            say!("access request {}", r.id);
        }
        AccessCommand::List { connect, format } => list(connect, format).await?,
        AccessCommand::Approve { connect, id, days, reason } => {
            let r = connect.client()?.decide(&id, Decision::Approve, &DecideRequest { reason, days }).await?;
            decided("approved", &r)?;
        }
        AccessCommand::Refuse { connect, id, reason } => {
            let r = connect
                .client()?
                .decide(&id, Decision::Refuse, &DecideRequest { reason, days: None })
                .await?;
            decided("refused", &r)?;
        }
        AccessCommand::Revoke { connect, id, reason } => {
            let r = connect
                .client()?
                .decide(&id, Decision::Revoke, &DecideRequest { reason, days: None })
                .await?;
            decided("revoked", &r)?;
        }
    }
    Ok(())
}
