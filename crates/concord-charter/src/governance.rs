//! Governance as pure values: proposals, votes, the round of one base version that decides
//! between them, and exits.
//!
//! A proposal names its base version (number and digest) and a list of [`Change`]s; applying
//! them to the base gives the next version's body ([`apply`]). A yes vote is the voter's
//! signature over that body, so version N+1 is the body with the yes signatures of at least the
//! threshold of version N's members, and [`crate::SignedCharter::verify_successor`] checks it
//! alone. A no vote is a signed refusal. [`Round`] keeps what one node has seen of the proposals
//! and votes on one base.
//!
//! Invariant: a member has at most one live yes per base version; a second yes on another live
//! proposal of the same base is refused and both signatures are kept as [`Equivocation`]
//! evidence. With a threshold of two thirds, two bodies of one version would need more than a
//! third of the members to equivocate.
//! Invariant: nothing here does IO or reads a clock; the time is an argument.

use std::collections::BTreeMap;

use concord_log::{Note, NoteSignature, NoteSigner, NoteVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{Charter, CharterError, MemberCard, SharedSchema, SignedCharter, check_line_text, hex};

/// First line of every proposal's canonical text.
pub const PROPOSAL_TYPE_LINE: &str = "concord/proposal/v1";
/// First line of every vote's canonical text.
pub const VOTE_TYPE_LINE: &str = "concord/vote/v1";

/// The longest a proposal may stay open, in seconds (30 days).
pub const MAX_PROPOSAL_TTL: u64 = 30 * 24 * 3600;
/// Bytes of a proposal's text.
pub const MAX_PROPOSAL_BYTES: usize = 16 * 1024;
/// Live proposals one member may have open on one base version.
pub const MAX_LIVE_PROPOSALS: usize = 4;

/// Changes a proposal may make to the charter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "change", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Change {
    /// A new member, by its member card.
    AddMember {
        /// The new member's card.
        card: MemberCard,
    },
    /// Removes a member by id.
    RemoveMember {
        /// Id of the member to remove.
        id: String,
    },
    /// A member's new card: signing key, witness key, TLS pin or endpoint (same id).
    RotateKey {
        /// The member's new card, with its current id.
        card: MemberCard,
    },
    /// Moves a member's peer listener to a new endpoint.
    ChangeEndpoint {
        /// Id of the member that moves.
        id: String,
        /// The new `host:port` of the member's peer listener.
        endpoint: String,
    },
    /// A new shared schema, or a new version of one.
    SetSchema {
        /// The schema; a new version of an existing name needs a higher version number.
        schema: SharedSchema,
    },
    /// A new baseline minimum group size.
    MinGroupSize {
        /// Fewest distinct people (privacy units) a released group of personal data may hold; at least 1.
        size: u64,
    },
    /// The most sensitive classification that may cross borders.
    CrossBorders {
        /// The new ceiling classification.
        ceiling: crate::CrossBorders,
    },
    /// Who reads the notes of accesses in the logs: `parties` or `public`.
    AccessNotes {
        /// Who reads the notes from the next version on.
        visibility: crate::AccessNotes,
    },
    /// A new threshold of yes signatures for adopting later versions.
    Threshold {
        /// Yes signatures of the new version's members needed; more than half of them.
        threshold: usize,
    },
    /// A new witness quorum.
    WitnessQuorum {
        /// Cosignatures a checkpoint needs before it is published; at most each log's witnesses.
        quorum: usize,
    },
    /// How many members witness each log.
    WitnessesPerLog {
        /// At most this many, the members after the log's owner in id order; `None`: every
        /// other member.
        count: Option<usize>,
    },
}

impl Change {
    /// One line of a summary: `add member golf`.
    pub fn summary(&self) -> String {
        match self {
            Self::AddMember { card } => format!("add member {}", card.id),
            Self::RemoveMember { id } => format!("remove member {id}"),
            Self::RotateKey { card } => format!("rotate the keys of {}", card.id),
            Self::ChangeEndpoint { id, endpoint } => format!("move {id} to {endpoint}"),
            Self::SetSchema { schema } => format!("shared schema {} version {}", schema.name, schema.version),
            Self::MinGroupSize { size } => format!("minimum group size {size}"),
            Self::CrossBorders { ceiling } => format!("data up to {} crosses borders", ceiling.as_str()),
            Self::AccessNotes { visibility: crate::AccessNotes::Public } => {
                "notes of accesses shown to every member".to_owned()
            }
            Self::AccessNotes { visibility: crate::AccessNotes::Parties } => {
                "notes of accesses kept by their two parties".to_owned()
            }
            Self::Threshold { threshold } => format!("threshold {threshold}"),
            Self::WitnessQuorum { quorum } => format!("witness quorum {quorum}"),
            Self::WitnessesPerLog { count } => witnesses_summary(*count),
        }
    }
}

/// `witnesses per log 8`, or `every member witnesses every other member's log`.
fn witnesses_summary(count: Option<usize>) -> String {
    count.map_or_else(
        || "every member witnesses every other member's log".to_owned(),
        |k| format!("witnesses per log {k}"),
    )
}

fn invalid(what: &'static str, reason: impl Into<String>) -> CharterError {
    CharterError::Invalid { what, reason: reason.into() }
}

/// The body of the version after `base` that `changes` make. Changing the members without an
/// explicit threshold keeps a threshold the federation chose (within the new size, at least a
/// majority) and moves a default one (two thirds) to the new size; witnesses per log left at
/// their default follow the new size too; the witness quorum moves to a majority of each log's
/// witnesses whenever they change; the result must keep at least one member and a threshold of
/// more than half of them.
pub fn apply(base: &Charter, changes: &[Change]) -> Result<Charter, CharterError> {
    if changes.is_empty() {
        return Err(invalid("proposal", "it changes nothing"));
    }
    let mut next = base.clone();
    next.version = base.version.checked_add(1).ok_or_else(|| invalid("proposal", "no version follows"))?;
    next.previous = Some(base.digest());
    let mut chosen = Chosen::default();
    for change in changes {
        apply_change(&mut next, change, &mut chosen)?;
    }
    next.members.sort_by(|a, b| a.id.cmp(&b.id));
    next.schemas.sort_by(|a, b| a.name.cmp(&b.name));
    settle_counts(base, &mut next, &chosen)?;
    next.validate()?;
    refuse_unchanged(base, &next)?;
    Ok(next)
}

/// What a proposal sets explicitly among the counts that depend on the members.
#[derive(Default)]
struct Chosen {
    threshold: Option<usize>,
    quorum: Option<usize>,
    witnesses_per_log: Option<Option<usize>>,
}

/// Applies one change to `next`; a new threshold, quorum or witnesses per log is only noted,
/// to be set once the members are known.
fn apply_change(next: &mut Charter, change: &Change, chosen: &mut Chosen) -> Result<(), CharterError> {
    match change {
        Change::AddMember { card } => add_member(next, card)?,
        Change::RemoveMember { id } => remove_member(next, id)?,
        Change::RotateKey { card } => rotate_key(next, card)?,
        Change::ChangeEndpoint { id, endpoint } => change_endpoint(next, id, endpoint)?,
        Change::SetSchema { schema } => set_schema(next, schema)?,
        Change::MinGroupSize { size } => next.min_group_size = *size,
        Change::CrossBorders { ceiling } => next.cross_borders = *ceiling,
        Change::AccessNotes { visibility } => next.access_notes = *visibility,
        Change::Threshold { threshold: t } => chosen.threshold = Some(*t),
        Change::WitnessQuorum { quorum: q } => chosen.quorum = Some(*q),
        Change::WitnessesPerLog { count } => chosen.witnesses_per_log = Some(*count),
    }
    Ok(())
}

/// Adds the member `card` names, which must be valid and not a member yet.
fn add_member(next: &mut Charter, card: &MemberCard) -> Result<(), CharterError> {
    card.validate()?;
    if next.member(&card.id).is_some() {
        return Err(invalid("proposal", format!("{} is already a member", card.id)));
    }
    next.members.push(card.clone());
    Ok(())
}

/// Removes the member `id`, which must be one.
fn remove_member(next: &mut Charter, id: &str) -> Result<(), CharterError> {
    let before = next.members.len();
    next.members.retain(|m| m.id != id);
    if next.members.len() == before {
        return Err(invalid("proposal", format!("{id} is not a member")));
    }
    Ok(())
}

/// Replaces a member's card with `card` (same id), which must be valid and differ.
fn rotate_key(next: &mut Charter, card: &MemberCard) -> Result<(), CharterError> {
    card.validate()?;
    let m = next
        .members
        .iter_mut()
        .find(|m| m.id == card.id)
        .ok_or_else(|| invalid("proposal", format!("{} is not a member", card.id)))?;
    if *m == *card {
        return Err(invalid("proposal", format!("the card of {} is unchanged", card.id)));
    }
    *m = card.clone();
    Ok(())
}

/// Moves the member `id`'s peer listener to `endpoint`.
fn change_endpoint(next: &mut Charter, id: &str, endpoint: &str) -> Result<(), CharterError> {
    check_line_text("peer endpoint", endpoint)?;
    let m = next
        .members
        .iter_mut()
        .find(|m| m.id == id)
        .ok_or_else(|| invalid("proposal", format!("{id} is not a member")))?;
    m.peer_endpoint = endpoint.to_owned();
    Ok(())
}

/// Adds a shared schema, or replaces the one of its name with a higher version.
fn set_schema(next: &mut Charter, schema: &SharedSchema) -> Result<(), CharterError> {
    schema.validate()?;
    match next.schemas.iter_mut().find(|s| s.name == schema.name) {
        Some(old) if schema.version <= old.version => {
            return Err(invalid(
                "proposal",
                format!(
                    "shared schema {} is at version {}; a change needs a higher version",
                    schema.name, old.version
                ),
            ));
        }
        Some(old) => *old = schema.clone(),
        None => next.schemas.push(schema.clone()),
    }
    Ok(())
}

/// Sets `next`'s threshold, witnesses per log and witness quorum (as the proposal chose them
/// where it did), once its members are known; refuses no members, and a threshold that is no
/// majority.
fn settle_counts(base: &Charter, next: &mut Charter, chosen: &Chosen) -> Result<(), CharterError> {
    let n = next.members.len();
    if n == 0 {
        return Err(invalid("proposal", "it would leave the federation without members"));
    }
    let resized = n != base.members.len();
    // A default threshold follows the members; one the federation chose stays, within the new
    // size and never below a majority.
    let kept = if base.threshold == crate::default_threshold(base.members.len()) {
        crate::default_threshold(n)
    } else {
        base.threshold.min(n).max(n / 2 + 1)
    };
    next.threshold = chosen.threshold.unwrap_or(if resized { kept } else { base.threshold });
    // Likewise witnesses per log: a default follows the members, a choice stays.
    let default_witnesses = base.witnesses_per_log == crate::default_witnesses_per_log(base.members.len());
    next.witnesses_per_log = chosen.witnesses_per_log.unwrap_or(if resized && default_witnesses {
        crate::default_witnesses_per_log(n)
    } else {
        base.witnesses_per_log
    });
    let witnesses_moved = next.witnesses_of_each_log() != base.witnesses_of_each_log();
    next.witness_quorum = chosen.quorum.unwrap_or(if witnesses_moved {
        crate::majority(next.witnesses_of_each_log())
    } else {
        base.witness_quorum
    });
    if next.threshold * 2 <= n {
        return Err(invalid(
            "threshold",
            format!(
                "{} of {n} members is not a majority; a minority could change the charter",
                next.threshold
            ),
        ));
    }
    Ok(())
}

/// Refuses a `next` that differs from `base` only in its version number and previous digest.
fn refuse_unchanged(base: &Charter, next: &Charter) -> Result<(), CharterError> {
    let mut unchanged = next.clone();
    unchanged.version = base.version;
    unchanged.previous.clone_from(&base.previous);
    if unchanged == *base {
        return Err(invalid(
            "proposal",
            "it changes nothing: each change sets what the charter already says",
        ));
    }
    Ok(())
}

/// What `after` changes from `before`, one line each, in the words of [`Change::summary`]:
/// how a charter's history reads.
pub fn diff(before: &Charter, after: &Charter) -> Vec<String> {
    let mut out = Vec::new();
    for m in &after.members {
        match before.member(&m.id) {
            None => out.push(format!("add member {}", m.id)),
            Some(old) if old == m => {}
            Some(old) => {
                if old.peer_endpoint != m.peer_endpoint {
                    out.push(format!("move {} to {}", m.id, m.peer_endpoint));
                }
                let mut keys = old.clone();
                keys.peer_endpoint.clone_from(&m.peer_endpoint);
                if keys != *m {
                    out.push(format!("rotate the keys of {}", m.id));
                }
            }
        }
    }
    for m in &before.members {
        if after.member(&m.id).is_none() {
            out.push(format!("remove member {}", m.id));
        }
    }
    for s in &after.schemas {
        match before.schema(&s.name) {
            Some(old) if old == s => {}
            _ => out.push(format!("shared schema {} version {}", s.name, s.version)),
        }
    }
    if before.min_group_size != after.min_group_size {
        out.push(format!("minimum group size {}", after.min_group_size));
    }
    if before.cross_borders != after.cross_borders {
        out.push(format!("data up to {} crosses borders", after.cross_borders.as_str()));
    }
    if before.access_notes != after.access_notes {
        out.push(Change::AccessNotes { visibility: after.access_notes }.summary());
    }
    if before.threshold != after.threshold {
        out.push(format!("threshold {}", after.threshold));
    }
    if before.witnesses_per_log != after.witnesses_per_log {
        out.push(witnesses_summary(after.witnesses_per_log));
    }
    if before.witness_quorum != after.witness_quorum {
        out.push(format!("witness quorum {}", after.witness_quorum));
    }
    out
}

/// A proposal, as its proposer signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The federation's name; a proposal for another federation is refused.
    pub federation: String,
    /// The charter version the proposal changes.
    pub base_version: u64,
    /// Hex SHA-256 of the base version's canonical text.
    pub base_digest: String,
    /// Member id of the proposer, who signs the proposal.
    pub proposer: String,
    /// Unix seconds after which the proposal is dead.
    pub expires: u64,
    /// The changes, applied in order to the base version to give the next version's body.
    pub changes: Vec<Change>,
}

impl Proposal {
    /// The canonical text:
    ///
    /// ```text
    /// concord/proposal/v1
    /// federation demo
    /// base 3 <hex digest of version 3>
    /// proposer alpha
    /// expires 1790000000
    /// change {"change":"min-group-size","size":12}
    /// ```
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{PROPOSAL_TYPE_LINE}\nfederation {}\nbase {} {}\nproposer {}\nexpires {}\n",
            self.federation, self.base_version, self.base_digest, self.proposer, self.expires
        );
        for c in &self.changes {
            // A serde value of these types always serialises.
            s.push_str(&format!("change {}\n", serde_json::to_string(c).unwrap_or_default()));
        }
        s
    }

    /// Parses a proposal's canonical text; any other form is refused as not canonical.
    pub fn from_text(text: &str) -> Result<Self, CharterError> {
        let bad = |line: usize, reason: String| CharterError::Malformed { line, reason };
        let lines: Vec<&str> = text.lines().collect();
        if lines.first() != Some(&PROPOSAL_TYPE_LINE) {
            return Err(bad(1, format!("a proposal starts with {PROPOSAL_TYPE_LINE}")));
        }
        let field = |n: usize, key: &str| -> Result<&str, CharterError> {
            lines
                .get(n - 1)
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or_else(|| bad(n, format!("expected `{key} ...`")))
        };
        let (v, d) = field(3, "base")?
            .split_once(' ')
            .ok_or_else(|| bad(3, "expected `base <version> <digest>`".into()))?;
        let mut changes = Vec::new();
        for (i, line) in lines.iter().enumerate().skip(5) {
            let json =
                line.strip_prefix("change ").ok_or_else(|| bad(i + 1, "expected `change {...}`".into()))?;
            changes.push(serde_json::from_str(json).map_err(|e| bad(i + 1, format!("change: {e}")))?);
        }
        let p = Self {
            federation: field(2, "federation")?.to_owned(),
            base_version: v.parse().map_err(|_| bad(3, "the base version is not a number".into()))?,
            base_digest: d.to_owned(),
            proposer: field(4, "proposer")?.to_owned(),
            expires: field(5, "expires")?.parse().map_err(|_| bad(5, "expires is not a number".into()))?,
            changes,
        };
        if p.to_text() != text {
            return Err(CharterError::NotCanonical);
        }
        Ok(p)
    }

    /// Hex SHA-256 of the canonical text: the proposal's id.
    pub fn id(&self) -> String {
        hex(&Sha256::digest(self.to_text().as_bytes()))
    }

    /// Signs the proposal as `signer`.
    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, CharterError> {
        let mut note = Note::new(self.to_text())?;
        note.sign(signer);
        Ok(note)
    }
}

/// How a member voted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ballot {
    /// For the proposal; the vote carries the voter's signature over the proposal's body.
    Yes,
    /// Against the proposal: a signed refusal.
    No,
}

/// A vote as its voter signs it: the vote note over the proposal, and for a yes, the voter's
/// signature over the body the proposal makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vote {
    /// The federation's name.
    pub federation: String,
    /// Id of the proposal voted on: hex SHA-256 of its canonical text.
    pub proposal: String,
    /// Member id of the voter, who signs the vote.
    pub voter: String,
    /// Yes or no.
    pub ballot: Ballot,
    /// An optional one-line reason; empty for none.
    pub reason: String,
}

impl Vote {
    /// The canonical text: type line, federation, proposal, voter, vote and an optional reason line.
    pub fn to_text(&self) -> String {
        let ballot = match self.ballot {
            Ballot::Yes => "yes",
            Ballot::No => "no",
        };
        let mut s = format!(
            "{VOTE_TYPE_LINE}\nfederation {}\nproposal {}\nvoter {}\nvote {ballot}\n",
            self.federation, self.proposal, self.voter
        );
        if !self.reason.is_empty() {
            s.push_str(&format!("reason {}\n", self.reason));
        }
        s
    }

    /// Parses a vote's canonical text; any other form is refused as not canonical.
    pub fn from_text(text: &str) -> Result<Self, CharterError> {
        let bad = |line: usize, reason: String| CharterError::Malformed { line, reason };
        let lines: Vec<&str> = text.lines().collect();
        if lines.first() != Some(&VOTE_TYPE_LINE) {
            return Err(bad(1, format!("a vote starts with {VOTE_TYPE_LINE}")));
        }
        let field = |n: usize, key: &str| -> Result<String, CharterError> {
            lines
                .get(n - 1)
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| bad(n, format!("expected `{key} ...`")))
        };
        let ballot = match field(5, "vote")?.as_str() {
            "yes" => Ballot::Yes,
            "no" => Ballot::No,
            other => return Err(bad(5, format!("vote {other:?} is neither yes nor no"))),
        };
        let reason = if lines.len() > 5 { field(6, "reason")? } else { String::new() };
        let v = Self {
            federation: field(2, "federation")?,
            proposal: field(3, "proposal")?,
            voter: field(4, "voter")?,
            ballot,
            reason,
        };
        if v.to_text() != text {
            return Err(CharterError::NotCanonical);
        }
        Ok(v)
    }
}

/// A vote with its signatures, as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVote {
    /// The vote, parsed from the note's text.
    pub vote: Vote,
    /// The vote note, signed by the voter.
    pub note: Note,
    /// For a yes: the voter's signature over the body the proposal makes.
    pub body_signature: Option<NoteSignature>,
}

impl SignedVote {
    /// `signer` votes on `proposal` (whose body is `body`).
    pub fn cast(
        signer: &NoteSigner,
        voter: &str,
        proposal: &Proposal,
        body: &Charter,
        ballot: Ballot,
        reason: &str,
    ) -> Result<Self, CharterError> {
        if !reason.is_empty() {
            check_line_text("reason", reason)?;
        }
        let vote = Vote {
            federation: proposal.federation.clone(),
            proposal: proposal.id(),
            voter: voter.to_owned(),
            ballot,
            reason: reason.to_owned(),
        };
        let mut note = Note::new(vote.to_text())?;
        note.sign(signer);
        let body_signature = (ballot == Ballot::Yes).then(|| signer.sign_text(&body.to_text()));
        Ok(Self { vote, note, body_signature })
    }

    /// Parses a vote note and, for a yes, the body signature (a note signature line without
    /// its em dash: `<key name> <base64>`).
    pub fn parse(note: &[u8], body_signature: Option<&str>) -> Result<Self, CharterError> {
        let note = Note::parse(note)?;
        let vote = Vote::from_text(note.text())?;
        let body_signature = match body_signature {
            None => None,
            Some(line) => {
                let parsed = Note::parse(format!("x\n\n\u{2014} {line}\n").as_bytes())?;
                parsed.signatures().first().cloned()
            }
        };
        Ok(Self { vote, note, body_signature })
    }

    /// The body signature as a line: `<key name> <base64>`.
    pub fn body_signature_line(&self) -> Option<String> {
        let sig = self.body_signature.as_ref()?;
        let mut note = Note::new("x\n").ok()?;
        note.add_signature(sig.clone());
        let bytes = note.to_string();
        bytes.lines().nth(2).and_then(|l| l.strip_prefix('\u{2014}')).map(|l| l.trim_start().to_owned())
    }
}

/// Two yes signatures by one member on two live proposals of one base: the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    /// Member id of the voter who equivocated.
    pub voter: String,
    /// The base charter version both proposals build on.
    pub base_version: u64,
    /// The first proposal and the vote on it, then the second.
    pub first: (String, SignedVote),
    /// The second proposal's id and the yes vote on it.
    pub second: (String, SignedVote),
}

/// Where a proposal stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Open: votes are still counted.
    Live,
    /// Enough yes votes: the next version.
    Adopted,
    /// No votes put the threshold out of reach, or the proposal expired; holds the reason.
    Dead(String),
}

/// What one node knows of a proposal.
#[derive(Clone, Debug)]
pub struct ProposalState {
    /// The proposal, parsed from the note's text.
    pub proposal: Proposal,
    /// The proposal note, signed by its proposer.
    pub note: Note,
    /// The body the proposal makes.
    pub body: Charter,
    /// Yes votes, by voter member id.
    pub yes: BTreeMap<String, SignedVote>,
    /// No votes, by voter member id.
    pub no: BTreeMap<String, SignedVote>,
}

/// Errors of governance acts, each with its reason.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    /// The proposal, vote or resulting charter is invalid.
    #[error("{0}")]
    Charter(#[from] CharterError),
    /// The act is refused; the text says why.
    #[error("refused: {0}")]
    Refused(String),
    /// The proposal or vote was already taken in: a replay.
    #[error("already known: {0}")]
    Duplicate(String),
    /// A member voted yes on a second live proposal of one base version; the evidence is kept.
    #[error(
        "equivocation: {voter} already voted yes on proposal {first} of base version {base}; both signatures are kept as evidence"
    )]
    Equivocation {
        /// Id of the member who voted yes twice.
        voter: String,
        /// Id of the proposal the member's earlier yes is on.
        first: String,
        /// The base charter version both proposals build on.
        base: u64,
    },
}

fn refused(reason: impl Into<String>) -> GovernanceError {
    GovernanceError::Refused(reason.into())
}

/// Checks that a yes vote `v` carries `voter`'s signature (by `key`) over the proposal's `body`.
fn check_body_signature(
    v: &SignedVote,
    body: &Charter,
    key: &NoteVerifier,
    voter: &str,
) -> Result<(), GovernanceError> {
    let sig =
        v.body_signature.clone().ok_or_else(|| refused("a yes vote carries a signature over the body"))?;
    let mut signed = Note::new(body.to_text()).map_err(CharterError::from)?;
    signed.add_signature(sig);
    signed
        .verify(std::slice::from_ref(key))
        .map_err(|e| refused(format!("{voter}'s yes is not a signature over the proposal's body: {e}")))?;
    Ok(())
}

/// Refuses a proposal that has expired at `now`, or that stays open longer than allowed.
fn check_proposal_lifetime(proposal: &Proposal, now: u64) -> Result<(), GovernanceError> {
    if now > proposal.expires {
        return Err(refused("the proposal has expired"));
    }
    if proposal.expires > now.saturating_add(MAX_PROPOSAL_TTL) {
        return Err(refused(format!(
            "the proposal stays open until {}, more than {} days from now",
            proposal.expires,
            MAX_PROPOSAL_TTL / 86_400
        )));
    }
    Ok(())
}

/// What a vote did.
#[derive(Debug)]
pub enum VoteOutcome {
    /// Counted; the proposal is still live.
    Counted,
    /// The proposal reached the threshold: the next version, signed.
    Adopted(Box<SignedCharter>),
    /// Counted, and the proposal can no longer reach the threshold.
    Dead,
}

/// The proposals and votes on one base version, as one node has seen them.
#[derive(Clone, Debug)]
pub struct Round {
    /// The charter version the proposals build on.
    pub base: Charter,
    /// The proposals taken in, by proposal id.
    pub proposals: BTreeMap<String, ProposalState>,
    /// Evidence of equivocation seen in this round.
    pub evidence: Vec<Equivocation>,
}

impl Round {
    /// An empty round on `base`.
    pub fn new(base: Charter) -> Self {
        Self { base, proposals: BTreeMap::new(), evidence: Vec::new() }
    }

    fn verifier(&self, id: &str) -> Result<NoteVerifier, GovernanceError> {
        self.base
            .member(id)
            .ok_or_else(|| refused(format!("{id} is not a member of charter version {}", self.base.version)))?
            .verifier()
            .map_err(GovernanceError::from)
    }

    /// Where proposal `id` stands at `now` (unix seconds).
    pub fn status(&self, id: &str, now: u64) -> Option<Status> {
        let p = self.proposals.get(id)?;
        let n = self.base.members.len();
        Some(if p.yes.len() >= self.base.threshold {
            Status::Adopted
        } else if p.no.len() > n - self.base.threshold {
            Status::Dead(format!(
                "{} no votes of {n} members: the threshold of {} is out of reach",
                p.no.len(),
                self.base.threshold
            ))
        } else if now > p.proposal.expires {
            Status::Dead("expired".into())
        } else {
            Status::Live
        })
    }

    /// Takes a signed proposal in. Refused: another federation, a stale or unknown base, an
    /// expired proposal, a proposer who is not a member, a bad signature, changes that do not
    /// apply. A replay is [`GovernanceError::Duplicate`].
    pub fn propose(&mut self, note: &Note, now: u64) -> Result<String, GovernanceError> {
        let proposal = Proposal::from_text(note.text())?;
        let id = proposal.id();
        if self.proposals.contains_key(&id) {
            return Err(GovernanceError::Duplicate(format!("proposal {id}")));
        }
        self.check_proposal_base(&proposal)?;
        check_proposal_lifetime(&proposal, now)?;
        if note.text().len() > MAX_PROPOSAL_BYTES {
            return Err(refused(format!("the proposal's text is over {MAX_PROPOSAL_BYTES} bytes")));
        }
        self.check_live_proposals(&proposal.proposer, now)?;
        let v = self.verifier(&proposal.proposer)?;
        note.verify(std::slice::from_ref(&v))
            .map_err(|e| refused(format!("the proposal is not signed by {}: {e}", proposal.proposer)))?;
        let body = apply(&self.base, &proposal.changes)?;
        self.proposals.insert(
            id.clone(),
            ProposalState { proposal, note: note.clone(), body, yes: BTreeMap::new(), no: BTreeMap::new() },
        );
        Ok(id)
    }

    /// Refuses a proposal for another federation, or on a base other than this round's.
    fn check_proposal_base(&self, proposal: &Proposal) -> Result<(), GovernanceError> {
        if proposal.federation != self.base.federation {
            return Err(refused(format!("the proposal is for federation {}", proposal.federation)));
        }
        if proposal.base_version != self.base.version || proposal.base_digest != self.base.digest() {
            return Err(refused(format!(
                "the proposal's base is version {}, the current version is {} (digest {}): propose again on it",
                proposal.base_version,
                self.base.version,
                self.base.digest()
            )));
        }
        Ok(())
    }

    /// Refuses `proposer`'s proposal when it already has the most live proposals on this base.
    fn check_live_proposals(&self, proposer: &str, now: u64) -> Result<(), GovernanceError> {
        let open = self
            .proposals
            .iter()
            .filter(|(id, p)| p.proposal.proposer == proposer && self.status(id, now) == Some(Status::Live))
            .count();
        if open >= MAX_LIVE_PROPOSALS {
            return Err(refused(format!(
                "{proposer} already has {open} live proposals on version {}; at most {MAX_LIVE_PROPOSALS}",
                self.base.version
            )));
        }
        Ok(())
    }

    /// Takes a signed vote in. Refused: a voter who is not a member of the base, a bad
    /// signature, an unknown or no longer live proposal, a second vote of one voter on one
    /// proposal (duplicate), a yes while the voter's yes on another live proposal of this base
    /// stands (equivocation: evidence kept).
    pub fn vote(&mut self, v: SignedVote, now: u64) -> Result<VoteOutcome, GovernanceError> {
        let voter = v.vote.voter.clone();
        let key = self.verifier(&voter)?;
        v.note
            .verify(std::slice::from_ref(&key))
            .map_err(|e| refused(format!("the vote is not signed by {voter}: {e}")))?;
        if v.vote.federation != self.base.federation {
            return Err(refused(format!("the vote is for federation {}", v.vote.federation)));
        }
        let pid = v.vote.proposal.clone();
        self.check_live(&pid, now)?;
        let state = self.proposals.get(&pid).ok_or_else(|| refused("unknown proposal"))?;
        if state.yes.contains_key(&voter) || state.no.contains_key(&voter) {
            return Err(GovernanceError::Duplicate(format!("{voter}'s vote on proposal {pid}")));
        }
        if v.vote.ballot == Ballot::Yes {
            check_body_signature(&v, &state.body, &key, &voter)?;
            // One live yes per base version.
            if let Some(first) = self.live_yes(&voter, &pid, now) {
                return Err(self.keep_equivocation(voter, first, pid, v));
            }
        }
        let ballot = v.vote.ballot;
        let state = self.proposals.get_mut(&pid).ok_or_else(|| refused("unknown proposal"))?;
        match ballot {
            Ballot::Yes => state.yes.insert(voter, v),
            Ballot::No => state.no.insert(voter, v),
        };
        Ok(match self.status(&pid, now) {
            Some(Status::Adopted) => VoteOutcome::Adopted(Box::new(self.assemble(&pid)?)),
            Some(Status::Dead(_)) => VoteOutcome::Dead,
            _ => VoteOutcome::Counted,
        })
    }

    /// Refuses a vote on proposal `pid` unless it is known and live at `now`.
    fn check_live(&self, pid: &str, now: u64) -> Result<(), GovernanceError> {
        match self.status(pid, now) {
            None => Err(refused(format!(
                "proposal {pid} is unknown on base version {}: a vote on a stale base, or before the proposal",
                self.base.version
            ))),
            Some(Status::Live) => Ok(()),
            Some(Status::Adopted) => Err(refused(format!("proposal {pid} is already adopted"))),
            Some(Status::Dead(why)) => Err(refused(format!("proposal {pid} is dead: {why}"))),
        }
    }

    /// Keeps `voter`'s yes `v` on `pid` and its earlier live yes `first` as evidence (once per
    /// pair of proposals), and gives the error that refuses `v`.
    fn keep_equivocation(
        &mut self,
        voter: String,
        (first, first_vote): (String, SignedVote),
        pid: String,
        v: SignedVote,
    ) -> GovernanceError {
        let seen = self.evidence.iter().any(|e| e.voter == voter && e.first.0 == first && e.second.0 == pid);
        if !seen {
            self.evidence.push(Equivocation {
                voter: voter.clone(),
                base_version: self.base.version,
                first: (first.clone(), first_vote),
                second: (pid, v),
            });
        }
        GovernanceError::Equivocation { voter, first, base: self.base.version }
    }

    /// `voter`'s yes on a live proposal of this base other than `except`, if any.
    pub fn live_yes(&self, voter: &str, except: &str, now: u64) -> Option<(String, SignedVote)> {
        self.proposals
            .iter()
            .filter(|(id, p)| {
                *id != except && p.yes.contains_key(voter) && self.status(id, now) == Some(Status::Live)
            })
            .find_map(|(id, p)| p.yes.get(voter).map(|v| (id.clone(), v.clone())))
    }

    /// The next version from proposal `id`: its body with every yes signature seen.
    pub fn assemble(&self, id: &str) -> Result<SignedCharter, GovernanceError> {
        let p = self.proposals.get(id).ok_or_else(|| refused(format!("proposal {id} is unknown")))?;
        let mut sc = SignedCharter::unsigned(p.body.clone())?;
        for v in p.yes.values() {
            if let Some(sig) = &v.body_signature {
                sc.note.add_signature(sig.clone());
            }
        }
        sc.verify_successor(&self.base)?;
        Ok(sc)
    }
}

#[cfg(test)]
mod tests;
