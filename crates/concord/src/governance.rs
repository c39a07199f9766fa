//! Governance through a node (role delegate): `propose`, `vote`, `leave`, `proposals`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use concord_charter::governance::{Ballot, Change};
use concord_charter::{AccessNotes, CrossBorders, MemberCard, SharedSchema};
use concord_node::wire::{ProposeRequest, VoteOutcome, VoteReport, VoteRequest};

use crate::ListFormat;
use crate::connect::Connect;
use crate::out::say;

/// `concord propose`.
#[derive(Args)]
pub struct ProposeArgs {
    #[command(flatten)]
    connect: Connect,
    /// A candidate's member card (member-card.json).
    #[arg(long = "add-member", value_name = "CARD")]
    add_member: Vec<PathBuf>,
    /// A member to remove, by id.
    #[arg(long = "remove-member", value_name = "ID")]
    remove_member: Vec<String>,
    /// A member whose keys change; its new card with --card.
    #[arg(long = "rotate-key", requires = "card", value_name = "ID")]
    rotate_key: Option<String>,
    /// The new card of --rotate-key, made by `concord keys rotate` on that member's node.
    #[arg(long, value_name = "CARD")]
    card: Option<PathBuf>,
    /// `ID=HOST:PORT`: a member's new peer endpoint.
    #[arg(long = "endpoint", value_name = "ID=HOST:PORT")]
    endpoints: Vec<String>,
    /// A shared schema (new, or a higher version of one) as JSON.
    #[arg(long = "schema", value_name = "FILE")]
    schemas: Vec<PathBuf>,
    /// The smallest group an exact release may show.
    #[arg(long = "min-group-size")]
    min_group_size: Option<u64>,
    /// The most sensitive classification whose data may cross borders: public, general or
    /// important (core never does).
    #[arg(long = "cross-borders")]
    cross_borders: Option<String>,
    /// Who reads the notes of accesses (SQL, purpose, legal basis, sizes) in the logs:
    /// `parties` (the two parties; others see salted commitments) or `public`.
    #[arg(long = "access-notes")]
    access_notes: Option<String>,
    /// `M/N`: M yes signatures of the N members adopt the next version.
    #[arg(long)]
    threshold: Option<String>,
    /// Cosignatures a checkpoint needs to be published.
    #[arg(long = "witness-quorum")]
    witness_quorum: Option<usize>,
    /// How many members witness each log (the members after its owner in id order): a number,
    /// or `all` for every other member.
    #[arg(long = "witnesses-per-log")]
    witnesses_per_log: Option<String>,
    /// How long the proposal stays open: `7d`, `12h`, `30m`, `90s`.
    #[arg(long, default_value = "7d")]
    expires: String,
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a {what} as JSON", p.display()))
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
        other => bail!("{s:?}: unit {other:?} is not d, h, m or s"),
    };
    n.checked_mul(scale).ok_or_else(|| anyhow::anyhow!("{s:?} is too long"))
}

/// The changes the flags ask for, in a fixed order.
fn changes(a: &ProposeArgs) -> Result<Vec<Change>> {
    let mut changes = member_changes(a)?;
    changes.extend(rule_changes(a)?);
    if changes.is_empty() {
        bail!("a proposal needs at least one change (--add-member, --min-group-size, ...)");
    }
    Ok(changes)
}

/// The changes to the membership: members added, removed, rekeyed and moved, in that order.
fn member_changes(a: &ProposeArgs) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for p in &a.add_member {
        changes.push(Change::AddMember { card: read_json::<MemberCard>(p, "member card")? });
    }
    for id in &a.remove_member {
        changes.push(Change::RemoveMember { id: id.clone() });
    }
    if let (Some(id), Some(p)) = (&a.rotate_key, &a.card) {
        let card: MemberCard = read_json(p, "member card")?;
        if card.id != *id {
            bail!(
                "--rotate-key {id}: the card {} is member {}'s; give the card made by `concord keys rotate` on {id}'s node",
                p.display(),
                card.id
            );
        }
        changes.push(Change::RotateKey { card });
    }
    for e in &a.endpoints {
        let (id, endpoint) =
            e.split_once('=').ok_or_else(|| anyhow::anyhow!("--endpoint {e:?}: write ID=HOST:PORT"))?;
        changes.push(Change::ChangeEndpoint { id: id.to_owned(), endpoint: endpoint.to_owned() });
    }
    Ok(changes)
}

/// The changes to the charter's rules: schemas, release and border limits, notes, threshold, quorum.
fn rule_changes(a: &ProposeArgs) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for p in &a.schemas {
        changes.push(Change::SetSchema { schema: read_json::<SharedSchema>(p, "shared schema")? });
    }
    if let Some(size) = a.min_group_size {
        changes.push(Change::MinGroupSize { size });
    }
    if let Some(c) = &a.cross_borders {
        let ceiling = CrossBorders::parse(c)
            .ok_or_else(|| anyhow::anyhow!("--cross-borders {c:?}: write public, general or important"))?;
        changes.push(Change::CrossBorders { ceiling });
    }
    if let Some(v) = &a.access_notes {
        let visibility = AccessNotes::parse(v)
            .ok_or_else(|| anyhow::anyhow!("--access-notes {v:?}: write parties or public"))?;
        changes.push(Change::AccessNotes { visibility });
    }
    if let Some(t) = &a.threshold {
        let threshold = t
            .split('/')
            .next()
            .and_then(|m| m.trim().parse::<usize>().ok())
            .ok_or_else(|| anyhow::anyhow!("--threshold {t:?}: write M/N, for example 4/5"))?;
        changes.push(Change::Threshold { threshold });
    }
    if let Some(quorum) = a.witness_quorum {
        changes.push(Change::WitnessQuorum { quorum });
    }
    if let Some(k) = &a.witnesses_per_log {
        let count = match k.trim() {
            "all" => None,
            n => Some(n.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                anyhow::anyhow!("--witnesses-per-log {k:?}: write a number of at least 1, or `all`")
            })?),
        };
        changes.push(Change::WitnessesPerLog { count });
    }
    Ok(changes)
}

/// What a vote did, and what is left to do.
fn tell(r: &VoteReport) -> String {
    match r.outcome {
        VoteOutcome::Adopted => format!("adopted: charter version {} is in force", r.version),
        VoteOutcome::Dead => format!("the proposal can no longer be adopted; charter version {}", r.version),
        VoteOutcome::Counted => format!(
            "{} of {} yes votes; {} more needed (charter version {})",
            r.yes,
            r.threshold,
            r.needed(),
            r.version
        ),
    }
}

pub async fn propose(a: ProposeArgs) -> Result<()> {
    let changes = changes(&a)?;
    let expires_in_secs = duration_secs(&a.expires)?;
    let client = a.connect.client()?;
    let r = client.propose(&ProposeRequest { changes, expires_in_secs }).await?;
    say!("proposed on charter version {}: {}", r.base_version, r.changes.join("; "));
    match &r.vote {
        Some(v) => say!("this member voted yes: {}", tell(v)),
        None => say!(
            "this member already has a live yes on this version and did not vote; once that proposal is decided: concord vote {} yes",
            r.proposal
        ),
    }
    say!("proposal {}", r.proposal);
    Ok(())
}

/// `concord vote`.
#[derive(Args)]
pub struct VoteArgs {
    #[command(flatten)]
    connect: Connect,
    /// The proposal's id, as `concord propose` or `concord proposals` print it.
    proposal: String,
    /// `yes` or `no`.
    #[arg(value_parser = ["yes", "no"])]
    ballot: String,
    /// Why, in one line; signed with the vote.
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn vote(a: VoteArgs) -> Result<()> {
    let ballot = if a.ballot == "yes" { Ballot::Yes } else { Ballot::No };
    let r = a.connect.client()?.vote(&a.proposal, &VoteRequest { vote: ballot, reason: a.reason }).await?;
    say!("voted {} on {}: {}", a.ballot, a.proposal, tell(&r));
    Ok(())
}

/// `concord leave`.
#[derive(Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    connect: Connect,
}

pub async fn leave(a: LeaveArgs) -> Result<()> {
    let r = a.connect.client()?.leave().await?;
    say!("exit proposed and signed: {}", tell(&r));
    Ok(())
}

/// `concord proposals`.
#[derive(Args)]
pub struct ProposalsArgs {
    #[command(flatten)]
    connect: Connect,
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

pub async fn proposals(a: ProposalsArgs) -> Result<()> {
    let r = a.connect.client()?.proposals().await?;
    match a.format {
        ListFormat::Json => say!("{}", serde_json::to_string_pretty(&r)?),
        ListFormat::Table => {
            say!(
                "charter version {}: {}",
                r.version,
                crate::out::plural(r.proposals.len() as u64, "proposal", "proposals")
            );
            for p in &r.proposals {
                let status = match &p.dead_because {
                    Some(why) => format!("dead: {why}"),
                    None => p.status.as_str().to_owned(),
                };
                say!(
                    "{} by {} [{status}] {}; yes {} of {} ({}); no: {}; expires {}",
                    p.id,
                    p.proposer,
                    p.changes.join(", "),
                    p.yes.len(),
                    p.threshold,
                    p.yes.join(", "),
                    if p.no.is_empty() { "none".to_owned() } else { p.no.join(", ") },
                    crate::out::time(i64::try_from(p.expires).unwrap_or(i64::MAX))
                );
            }
        }
    }
    Ok(())
}
