//! `concord log` (show, receipt, verify-receipt) and `concord audit`.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use concord_charter::SignedCharter;
use concord_node::store::config::NodeDir;
use concord_node::store::entry::{Described, LogEntry};
use concord_node::wire::AuditRequest;
use serde::Serialize;

use crate::ListFormat;
use crate::connect::Connect;
use crate::out::{say, time};

#[derive(Subcommand)]
pub enum LogCommand {
    /// Print the entries of a node's log for people: time, kind, parties, dataset, decision,
    /// and whether a receipt's signature holds; filtered by kind, member and time.
    #[command(after_help = "Examples:\n  concord log show nodes/alpha --kind access_made --member bravo\n  \
                            concord log show nodes/alpha --since 2026-12-01 --format json")]
    Show {
        /// The node folder.
        dir: PathBuf,
        /// The first entry's index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only entries of this kind: access_served, access_requested, access_made,
        /// refusals_counted, charter_accepted, governance_proposal, governance_vote,
        /// equivocation, dataset_registered, dataset_removed, access_request_filed,
        /// access_request_decided, policy_set, keys_set, fork_evidence.
        #[arg(long)]
        kind: Option<String>,
        /// Only entries that involve this member.
        #[arg(long)]
        member: Option<String>,
        /// Only entries at or after this time: RFC 3339, or a date (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time: RFC 3339, or a date (YYYY-MM-DD, UTC).
        #[arg(long)]
        until: Option<String>,
        /// `table` for people, `json` for scripts (one object per line).
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Print each entry's JSON as it is logged (signed notes in base64) instead.
        #[arg(long)]
        raw: bool,
    },
    /// Fetch an offline receipt (C2SP tlog-proof) for one entry from a node (role auditor).
    #[command(after_help = "Example:\n  concord log receipt 42 > entry-42.proof")]
    Receipt {
        #[command(flatten)]
        connect: Connect,
        /// The entry's index.
        index: u64,
    },
    /// Check an offline receipt against the log's verifier key.
    #[command(
        after_help = "Example:\n  concord log verify-receipt entry-42.proof --vkey \"health-eu/alpha+1a2b3c4d+AaBb...\""
    )]
    VerifyReceipt {
        /// The receipt file, as `concord log receipt` wrote it.
        file: PathBuf,
        /// The log's verifier key (C2SP vkey), as `demo.json` or the member card gives it.
        #[arg(long)]
        vkey: String,
    },
}

/// A time filter's bound: RFC 3339, or a date at midnight UTC.
fn instant(s: &str) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp()));
    }
    bail!("{s:?} is not a time: write 2026-12-05 or 2026-12-05T14:30:00Z")
}

/// An entry as `log show` prints it.
#[derive(Serialize)]
struct Shown {
    index: u64,
    time: String,
    #[serde(flatten)]
    entry: Described,
    /// For an access made: whether the owner's receipt verifies under its key in the charter.
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt_verified: Option<bool>,
}

/// Whether `receipt` (base64 of a signed note) is signed by `owner` under any charter version
/// this node holds.
fn receipt_holds(charters: &[SignedCharter], owner: &str, receipt: &str) -> bool {
    let Ok(bytes) = B64.decode(receipt) else { return false };
    let Ok(note) = concord_log::Note::parse(&bytes) else { return false };
    charters
        .iter()
        .filter_map(|c| c.charter.member(owner))
        .filter_map(|card| card.verifier().ok())
        .any(|v| note.verify(std::slice::from_ref(&v)).is_ok())
}

struct Filter {
    kind: Option<String>,
    member: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
}

impl Filter {
    fn keeps(&self, d: &Described) -> bool {
        self.kind.as_deref().is_none_or(|k| k == d.kind)
            && self.member.as_ref().is_none_or(|m| d.parties.contains(m))
            && self.since.is_none_or(|s| d.time >= s)
            && self.until.is_none_or(|u| d.time < u)
    }
}

fn show(dir: PathBuf, from: u64, filter: &Filter, format: ListFormat, raw: bool) -> Result<()> {
    check_kind(filter.kind.as_deref())?;
    let nd = NodeDir::new(dir);
    nd.load_config()?;
    let charters = load_charters(&nd)?;
    let log = nd.open_log()?;
    let size = log.size()?;
    let mut start = from;
    if matches!(format, ListFormat::Table) && !raw {
        say!(
            "{:>7}  {:<20} {:<22} {:<18} {:<16} {:<18} detail",
            "index",
            "time",
            "kind",
            "parties",
            "dataset",
            "decision"
        );
    }
    while start < size {
        let end = (start + 1024).min(size);
        for (i, bytes) in log.entries(start, end)?.iter().enumerate() {
            show_entry(start + i as u64, bytes, filter, &charters, format, raw)?;
        }
        start = end;
    }
    Ok(())
}

/// Refuses a `--kind` that names no kind of entry.
fn check_kind(kind: Option<&str>) -> Result<()> {
    const KINDS: &[&str] = &[
        "access_served",
        "access_requested",
        "access_made",
        "refusals_counted",
        "charter_accepted",
        "governance_proposal",
        "governance_vote",
        "equivocation",
        "dataset_registered",
        "dataset_removed",
        "access_request_filed",
        "access_request_decided",
        "policy_set",
        "keys_set",
        "fork_evidence",
    ];
    if let Some(k) = kind
        && !KINDS.contains(&k)
    {
        bail!("--kind {k:?} is not a kind of entry; kinds: {}", KINDS.join(", "));
    }
    Ok(())
}

/// Every charter version the node holds, parsed, oldest first.
fn load_charters(nd: &NodeDir) -> Result<Vec<SignedCharter>> {
    let charters: Vec<SignedCharter> = nd
        .open_state()?
        .charter_history()?
        .iter()
        .map(|b| SignedCharter::parse(b))
        .collect::<Result<_, _>>()
        .context("the node's charter history cannot be read")?;
    Ok(charters)
}

/// Prints the entry at `index` if the filter keeps it: as logged, as JSON or as a table row.
fn show_entry(
    index: u64,
    bytes: &[u8],
    filter: &Filter,
    charters: &[SignedCharter],
    format: ListFormat,
    raw: bool,
) -> Result<()> {
    let Ok(entry) = LogEntry::from_bytes(bytes) else {
        say!("{index:>7}  (not a Concord entry: {} bytes)", bytes.len());
        return Ok(());
    };
    let described = entry.describe();
    if !filter.keeps(&described) {
        return Ok(());
    }
    if raw {
        say!("{index:>7}  {}", serde_json::to_string(&entry)?);
        return Ok(());
    }
    let receipt_verified = match &entry {
        LogEntry::AccessMade { owner, receipt, .. } => Some(receipt_holds(charters, owner, receipt)),
        _ => None,
    };
    let shown = Shown { index, time: time(described.time), entry: described, receipt_verified };
    match format {
        ListFormat::Json => say!("{}", serde_json::to_string(&shown)?),
        ListFormat::Table => print_row(&shown)?,
    }
    Ok(())
}

/// Prints one entry as a table row, its detail saying whether its receipt verifies.
fn print_row(shown: &Shown) -> Result<()> {
    let e = &shown.entry;
    let mut detail = e.detail.clone();
    if let Some(ok) = shown.receipt_verified {
        detail.push_str(if ok { "; receipt verified" } else { "; RECEIPT DOES NOT VERIFY" });
    }
    say!(
        "{:>7}  {:<20} {:<22} {:<18} {:<16} {:<18} {}",
        shown.index,
        shown.time,
        e.kind,
        e.parties.join(","),
        e.dataset.as_deref().unwrap_or("-"),
        e.decision.as_deref().unwrap_or("-"),
        detail
    );
    Ok(())
}

pub async fn run(command: LogCommand) -> Result<()> {
    match command {
        LogCommand::Show { dir, from, kind, member, since, until, format, raw } => {
            let filter = Filter {
                kind,
                member,
                since: since.as_deref().map(instant).transpose()?,
                until: until.as_deref().map(instant).transpose()?,
            };
            show(dir, from, &filter, format, raw)?;
        }
        LogCommand::Receipt { connect, index } => {
            let proof = connect.client()?.receipt(index).await?;
            use std::io::Write as _;
            write!(std::io::stdout().lock(), "{proof}")?;
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
            say!(
                "valid: entry {} is in {}'s log of {} entries, signed by {}",
                proof.index,
                cp.origin,
                cp.size,
                key.name()
            );
            match LogEntry::from_bytes(entry) {
                Ok(e) => {
                    let d = e.describe();
                    say!("{} {} {} {}", time(d.time), d.kind, d.parties.join(","), d.detail);
                    say!("{}", serde_json::to_string_pretty(&e)?);
                }
                Err(_) => say!("(entry of {} bytes)", entry.len()),
            }
        }
    }
    Ok(())
}

/// `concord audit`.
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    connect: Connect,
    /// The member to audit (with this node's own log).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    member: Option<String>,
    /// Audit every member.
    #[arg(long)]
    all: bool,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

pub async fn audit(a: AuditArgs) -> Result<()> {
    let req = match a.member {
        Some(m) if !a.all => AuditRequest { members: vec![m], all: false },
        _ => AuditRequest { members: vec![], all: true },
    };
    let progress = crate::out::Progress::start("auditing: fetching and verifying the logs");
    let v = a.connect.client()?.audit(&req).await?;
    drop(progress);
    crate::output::audit(&v, matches!(a.format, ListFormat::Json))
}
