//! `concord charter`: genesis, signatures and acceptance offline; show and history through a
//! node.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;
use concord_node::wire::CharterView;

use crate::ListFormat;
use crate::connect::Connect;
use crate::out::say;

#[derive(Subcommand)]
pub enum CharterCommand {
    /// Write charter version 1 from member cards and shared schemas.
    #[command(
        after_help = "Example:\n  concord charter genesis --federation health-eu --card alpha.json --card bravo.json \\\n    \
                            --schema health_cases.json -o charter-v1.note"
    )]
    Genesis {
        /// The federation's name, as every member's node was created with.
        #[arg(long)]
        federation: String,
        /// A founder's member card (member-card.json); one per founder.
        #[arg(long = "card", required = true)]
        cards: Vec<PathBuf>,
        /// A shared schema as JSON: {"name", "columns": [{"name", "type", "personal"}],
        /// "privacy_unit"}.
        #[arg(long = "schema")]
        schemas: Vec<PathBuf>,
        /// The charter file to write.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Add this node's member signature to a charter file.
    #[command(after_help = "Example:\n  concord charter sign nodes/alpha charter-v1.note")]
    Sign {
        /// The node folder whose member key signs.
        dir: PathBuf,
        /// The charter file, signed in place.
        file: PathBuf,
    },
    /// Verify a charter file and make it this node's charter.
    #[command(after_help = "Example:\n  concord charter accept nodes/alpha charter-v1.note")]
    Accept {
        /// The node folder.
        dir: PathBuf,
        /// The charter file, signed by every founder.
        file: PathBuf,
    },
    /// A charter version as a node holds it (the current one unless --version): members,
    /// shared schemas, the baseline and what it changed.
    #[command(
        after_help = "Examples:\n  concord charter show\n  concord charter show --version 1 --format json"
    )]
    Show {
        #[command(flatten)]
        connect: Connect,
        /// The version to show.
        #[arg(long)]
        version: Option<u64>,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Every charter version a node holds, from genesis, each with what it changed.
    #[command(after_help = "Example:\n  concord charter history")]
    History {
        #[command(flatten)]
        connect: Connect,
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// A charter version for people: one fact per line.
fn show(c: &CharterView) -> Result<()> {
    say!("version {} of {} (digest {})", c.version, c.federation, c.digest);
    say!("  signed by: {}", c.signers.join(", "));
    say!(
        "  threshold: {} of {} members; witness quorum {} of the {} witnesses of each log",
        c.threshold,
        c.members.len(),
        c.witness_quorum,
        c.witnesses_per_log
    );
    say!(
        "  baseline: minimum group size {}; data up to {} crosses borders; notes of accesses read by {}",
        c.min_group_size,
        c.cross_borders.as_str(),
        match c.access_notes {
            concord_charter::AccessNotes::Parties => "their two parties",
            concord_charter::AccessNotes::Public => "every member",
        }
    );
    say!("  members:");
    for m in &c.members {
        say!("    {:<12} {:<24} {:<8} {}", m.id, m.name, m.jurisdiction, m.peer_endpoint);
    }
    say!("  shared schemas:");
    if c.schemas.is_empty() {
        say!("    none");
    }
    for s in &c.schemas {
        let cols: Vec<String> = s
            .columns
            .iter()
            .map(|col| format!("{} {}{}", col.name, col.ty, if col.personal { " personal" } else { "" }))
            .collect();
        let unit = s.privacy_unit.as_ref().map(|u| format!("; privacy unit {u}")).unwrap_or_default();
        say!("    {} v{}: {}{unit}", s.name, s.version, cols.join(", "));
    }
    if !c.changes.is_empty() {
        say!("  changed from version {}: {}", c.version.saturating_sub(1), c.changes.join("; "));
    }
    Ok(())
}

pub async fn run(command: CharterCommand) -> Result<()> {
    match command {
        CharterCommand::Show { connect, version, format } => {
            let c = connect.client()?.charter(version).await?;
            match format {
                ListFormat::Json => say!("{}", serde_json::to_string_pretty(&c)?),
                ListFormat::Table => show(&c)?,
            }
        }
        CharterCommand::History { connect, format } => {
            let h = connect.client()?.charter_history().await?;
            match format {
                ListFormat::Json => say!("{}", serde_json::to_string_pretty(&h)?),
                ListFormat::Table => {
                    say!("genesis {}", h.genesis);
                    for c in &h.versions {
                        say!("");
                        show(c)?;
                    }
                }
            }
        }
        CharterCommand::Genesis { federation, cards, schemas, out } => {
            let c = admin::charter_genesis(&federation, &cards, &schemas, &out)?;
            say!(
                "wrote charter version 1 of {} with {} members and {} shared schemas to {}; threshold {}",
                c.federation,
                c.members.len(),
                c.schemas.len(),
                out.display(),
                c.threshold
            );
            say!("each founder now runs: concord charter sign DIR {}", out.display());
        }
        CharterCommand::Sign { dir, file } => {
            let signed = admin::charter_sign(&NodeDir::new(dir), &file)?;
            say!("signed; signatures so far: {}", signed.join(", "));
        }
        CharterCommand::Accept { dir, file } => {
            let sc = admin::charter_accept(&NodeDir::new(dir), &file)?;
            say!("accepted charter version {} of {}", sc.charter.version, sc.charter.federation);
        }
    }
    Ok(())
}
