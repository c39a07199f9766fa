//! Audit: fetch a member's checkpoint, verify the log's signature and its witnesses'
//! cosignatures, then take in only what is new since the last verified size, step by step:
//! entry bundles one at a time, each entry hashed into the tree's right edge (a compact range
//! resumed from the last audit), every hash tile checked against the nodes the entries complete,
//! and the new root compared with the signed one. Only then are the new entries' access facts
//! kept, and the state moves on. Reconciliation runs over the kept facts of every audited log.
//!
//! Memory stays bounded whatever a log claims: one bundle at a time, one hash per 256 new
//! entries, and at most `[limits] audit_max_entries` new entries per audit.
//!
//! Invariant: an audit trusts nothing it fetched until the entries hash to the signed root.
//! Invariant: evidence is kept only of what the log's owner signed and cannot all be true.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use concord_charter::MemberCard;
use concord_log::checkpoint::Checkpoint;
use concord_log::merkle::{CompactRange, Hash, leaf_hash};
use concord_log::tiles::{MAX_ENTRY_BYTES, TILE_WIDTH, Tile, TileKind, decode_bundle};
use concord_log::{LogError, Note};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

use crate::NodeError;
use crate::net::client::{Budget, peer_call_with};
use crate::net::protocol::{ReleaseReceipt, RequestFacts, SignedRequest, commitment, reason_commitment};
use crate::node::Node;
use crate::store::entry::{LogEntry, ServedDecision};
use crate::store::state::NoteKind;
use crate::store::tlog::{AccessFact, AuditState, FactKind};

/// Largest checkpoint read.
const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;
/// Largest entry bundle: 256 entries of at most 64 KiB, each with its length.
const MAX_BUNDLE_BYTES: usize = TILE_WIDTH as usize * (MAX_ENTRY_BYTES + 2);
/// Largest hash tile.
const MAX_TILE_BYTES: usize = TILE_WIDTH as usize * 32;
/// Time one audit step of one log may take (all logs are read at once).
const AUDIT_STEP_TIME: std::time::Duration = std::time::Duration::from_secs(45);
/// Most reconciliation findings listed per kind; more are counted.
const MAX_LISTED: usize = 1000;

/// Where an audit reads a log: a member's peer listener, or this node's own database.
#[async_trait]
pub trait LogSource: Send + Sync {
    /// `checkpoint` or `tile/...`, at most `max` bytes.
    async fn read(&self, path: &str, max: usize) -> Result<Vec<u8>, NodeError>;
}

struct Remote<'a> {
    node: &'a Node,
    card: &'a MemberCard,
}

#[async_trait]
impl LogSource for Remote<'_> {
    async fn read(&self, path: &str, max: usize) -> Result<Vec<u8>, NodeError> {
        let budget = Budget { timeout: std::time::Duration::from_secs(30), max_bytes: max };
        let resp = peer_call_with(
            &self.node.keys().tls,
            self.card,
            "GET",
            &format!("/v1/log/{path}"),
            vec![],
            budget,
        )
        .await?;
        if resp.status != 200 {
            let (code, message) = resp.failure();
            return Err(NodeError::Peer { member: self.card.id.clone(), code, message });
        }
        Ok(resp.body.to_vec())
    }
}

struct Local<'a>(&'a Node);

#[async_trait]
impl LogSource for Local<'_> {
    async fn read(&self, path: &str, _max: usize) -> Result<Vec<u8>, NodeError> {
        let (size, note) = self
            .0
            .log
            .published_checkpoint()?
            .ok_or_else(|| NodeError::NotFound("this node has published no checkpoint yet".into()))?;
        if path == "checkpoint" {
            return Ok(note.to_bytes());
        }
        let tile = Tile::parse(path)?;
        self.0.log.tile(&tile, size)?.ok_or_else(|| NodeError::NotFound(path.to_owned()))
    }
}

/// What one audit step verified of a log.
#[derive(Debug)]
pub struct Growth {
    /// The checkpoint verified, signed by the log's owner.
    pub checkpoint: Checkpoint,
    /// The note it came in, with its witnesses' cosignatures.
    pub note: Note,
    /// Ids of the other members whose witness cosignatures on it verify.
    pub cosigners: Vec<String>,
    /// The new state, to be kept once everything verified.
    pub state: AuditState,
    /// Access facts of the new entries.
    pub facts: Vec<AccessFact>,
    /// Entries that are no Concord entry, or access entries whose signed notes say otherwise:
    /// reported against this log, and not reconciled.
    pub strange: Vec<(u64, String)>,
}

/// Why a step failed, and whether it is evidence (two signed checkpoints that cannot both be
/// true) or a problem of what was served.
#[derive(Debug)]
pub enum StepFailure {
    /// What was served is wrong, missing or does not verify: evidence against no one.
    Problem(String),
    /// Two checkpoints the log's owner signed that cannot both be true: evidence.
    Fork {
        /// What the two disagree on.
        detail: String,
        /// The checkpoint note verified before.
        earlier: Vec<u8>,
        /// The checkpoint note served now.
        later: Vec<u8>,
    },
}

impl From<NodeError> for StepFailure {
    fn from(e: NodeError) -> Self {
        Self::Problem(e.to_string())
    }
}

impl From<concord_charter::CharterError> for StepFailure {
    fn from(e: concord_charter::CharterError) -> Self {
        Self::Problem(e.to_string())
    }
}

impl From<LogError> for StepFailure {
    fn from(e: LogError) -> Self {
        Self::Problem(e.to_string())
    }
}

fn problem(s: String) -> StepFailure {
    StepFailure::Problem(s)
}

/// Verifies what `source` serves of `card`'s log, from `previous` (the last verified state) on.
pub async fn verify_growth(
    card: &MemberCard,
    witnesses: &[MemberCard],
    source: &dyn LogSource,
    previous: Option<&AuditState>,
    max_entries: u64,
) -> Result<Growth, StepFailure> {
    let cp_bytes = source.read("checkpoint", MAX_CHECKPOINT_BYTES).await?;
    let (cp, note) = Checkpoint::open(&cp_bytes, &card.verifier()?)?;
    let cosigners = cosigners_of(card, witnesses, &note)?;
    let (start, range) = resume_from(previous, &cp, &note)?;
    let new = cp.size - start;
    if new > max_entries {
        return Err(problem(format!(
            "the checkpoint claims {new} new entries since the last verified size {start}; one audit takes at most \
             {max_entries} ([limits] audit_max_entries), so nothing of it was trusted"
        )));
    }
    let step = Step { card, witnesses, source, start, size: cp.size };
    let mut taken = Taken {
        range,
        facts: Vec::new(),
        strange: Vec::new(),
        // Nodes at tree levels 8, 16, ... that the new entries complete: what upper tiles must hold.
        upper: HashMap::new(),
    };
    if new > 0 {
        for b in start / TILE_WIDTH..=(cp.size - 1) / TILE_WIDTH {
            step.take_bundle(b, &mut taken).await?;
        }
    }
    if taken.range.root() != cp.root {
        return Err(problem(format!(
            "the entries served do not hash to the signed root of {} entries (from the {start} verified before): \
             an entry or tile was altered, or the log forked",
            cp.size
        )));
    }
    step.check_upper_tiles(&taken.upper).await?;
    let state = AuditState {
        size: cp.size,
        root: cp.root.to_vec(),
        peaks: taken.range.peaks(),
        checkpoint: note.to_bytes(),
    };
    Ok(Growth { checkpoint: cp, note, cosigners, state, facts: taken.facts, strange: taken.strange })
}

/// The other members whose witness cosignature on `note` verifies.
fn cosigners_of(
    card: &MemberCard,
    witnesses: &[MemberCard],
    note: &Note,
) -> Result<Vec<String>, StepFailure> {
    let mut cosigners = Vec::new();
    for w in witnesses.iter().filter(|w| w.id != card.id) {
        if w.witness_verifier()?.verify(note)?.is_some() {
            cosigners.push(w.id.clone());
        }
    }
    Ok(cosigners)
}

/// Where this step starts: the size verified before and the tree's right edge there. A log
/// that shrank is a problem; a second root for the verified size is a fork.
fn resume_from(
    previous: Option<&AuditState>,
    cp: &Checkpoint,
    note: &Note,
) -> Result<(u64, CompactRange), StepFailure> {
    let (start, range) = match previous {
        None => (0, CompactRange::default()),
        Some(p) => (p.size, CompactRange::from_peaks(p.size, &p.peaks)?),
    };
    if let Some(p) = previous {
        if cp.size < p.size {
            return Err(problem(format!(
                "rollback: the log shrank from {} entries (verified before) to {}",
                p.size, cp.size
            )));
        }
        if cp.size == p.size && cp.root.as_slice() != p.root.as_slice() {
            return Err(StepFailure::Fork {
                detail: format!("two signed checkpoints of {} entries with different roots", cp.size),
                earlier: p.checkpoint.clone(),
                later: note.to_bytes(),
            });
        }
    }
    Ok((start, range))
}

/// One audit step's reading of a log: whose it is, where it is read, and the sizes it goes
/// from and to.
struct Step<'a> {
    card: &'a MemberCard,
    /// Every member's card: the witnesses, and the signers of the notes entries carry.
    witnesses: &'a [MemberCard],
    source: &'a dyn LogSource,
    /// The size verified before.
    start: u64,
    /// The size the new checkpoint signs.
    size: u64,
}

/// What the new entries make, bundle by bundle.
struct Taken {
    /// The tree's right edge, with every new entry hashed in.
    range: CompactRange,
    /// Access facts of the new entries.
    facts: Vec<AccessFact>,
    /// New entries that are no Concord entry, or whose signed notes say otherwise, with why.
    strange: Vec<(u64, String)>,
    /// Upper-tree nodes the new entries complete, by (tile level, index).
    upper: HashMap<(u8, u64), Hash>,
}

impl Step<'_> {
    /// Reads entry bundle `b` and its level-0 hash tile, checks each entry against its hash, and
    /// takes in the entries past the size verified before.
    async fn take_bundle(&self, b: u64, taken: &mut Taken) -> Result<(), StepFailure> {
        let width = (self.size - b * TILE_WIDTH).min(TILE_WIDTH);
        let bundle_tile = Tile { kind: TileKind::Entries, index: b, width };
        let bundle = self.source.read(&bundle_tile.path(), MAX_BUNDLE_BYTES).await?;
        let entries = decode_bundle(&bundle).map_err(|e| problem(format!("{}: {e}", bundle_tile.path())))?;
        if entries.len() as u64 != width {
            return Err(problem(format!(
                "{} holds {} entries, the checkpoint needs {width}",
                bundle_tile.path(),
                entries.len()
            )));
        }
        let hash_tile = Tile { kind: TileKind::Hashes(0), index: b, width };
        let hashes = self.source.read(&hash_tile.path(), MAX_TILE_BYTES).await?;
        if hashes.len() as u64 != width * 32 {
            return Err(problem(format!("{} is not {width} hashes: the tile was altered", hash_tile.path())));
        }
        for (k, e) in entries.iter().enumerate() {
            let i = b * TILE_WIDTH + k as u64;
            let leaf = leaf_hash(e);
            if hashes[k * 32..(k + 1) * 32] != leaf {
                return Err(problem(format!(
                    "{} does not match entry {i}: the tile or the entry was altered",
                    hash_tile.path()
                )));
            }
            if i < self.start {
                continue;
            }
            taken.take_entry(&self.card.id, self.witnesses, i, e, leaf);
        }
        Ok(())
    }

    /// Every upper hash tile that holds a node the new entries completed must hold that node.
    async fn check_upper_tiles(&self, upper: &HashMap<(u8, u64), Hash>) -> Result<(), StepFailure> {
        let (start, size) = (self.start, self.size);
        for level in 1..8u8 {
            let nodes = size.checked_shr(8 * u32::from(level)).unwrap_or(0);
            let first_new = start.checked_shr(8 * u32::from(level)).unwrap_or(0);
            if nodes <= first_new {
                continue;
            }
            for t in first_new / TILE_WIDTH..=(nodes - 1) / TILE_WIDTH {
                let width = (nodes - t * TILE_WIDTH).min(TILE_WIDTH);
                let tile = Tile { kind: TileKind::Hashes(level), index: t, width };
                let bytes = self.source.read(&tile.path(), MAX_TILE_BYTES).await?;
                if bytes.len() as u64 != width * 32 {
                    return Err(problem(format!(
                        "{} is not {width} hashes: the tile was altered",
                        tile.path()
                    )));
                }
                for k in 0..width {
                    let index = t * TILE_WIDTH + k;
                    let Some(want) = upper.get(&(level, index)) else { continue };
                    if bytes[k as usize * 32..(k as usize + 1) * 32] != *want {
                        return Err(problem(format!(
                            "{} of {} does not match its entries: the tile was altered",
                            tile.path(),
                            self.card.id
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Taken {
    /// Takes in new entry `i` of `member`'s log: hashed into the range (keeping the upper nodes
    /// it completes), then its access fact, or why it is strange.
    fn take_entry(&mut self, member: &str, witnesses: &[MemberCard], i: u64, e: &[u8], leaf: Hash) {
        for (level, index, hash) in self.range.append(leaf) {
            if level > 0 && level % 8 == 0 {
                self.upper.insert((level / 8, index), hash);
            }
        }
        match LogEntry::from_bytes(e) {
            Ok(entry) => match fact_of(member, i, &entry, witnesses) {
                Ok(f) => self.facts.extend(f),
                Err(why) => self.strange.push((i, why)),
            },
            Err(_) => self.strange.push((i, "is not a Concord log entry".into())),
        }
    }
}

/// The access fact of entry `index` of `member`'s log, checked against the signatures it
/// carries: a request note must be signed by its requester and a receipt by its owner, and they
/// must say what the entry says. A log cannot so blame another member with invented entries.
fn fact_of(
    member: &str,
    index: u64,
    e: &LogEntry,
    cards: &[MemberCard],
) -> Result<Option<AccessFact>, String> {
    match e {
        LogEntry::AccessRequested { .. } => requested_fact(member, index, e, cards),
        LogEntry::AccessServed { .. } => served_fact(member, index, e, cards),
        LogEntry::AccessMade { .. } => made_fact(member, index, e, cards),
        _ => Ok(None),
    }
}

/// The card of member `id`, whose key checks a note an entry carries.
fn card_of<'a>(cards: &'a [MemberCard], id: &str) -> Result<&'a MemberCard, String> {
    cards.iter().find(|c| c.id == id).ok_or_else(|| format!("names {id}, who is not a member"))
}

/// The public note of a request: signed by its requester; its details stay with the two
/// parties, and its SHA-256 is what both logs must agree on.
fn request_note_of(b64: &str, signer: &MemberCard) -> Result<(RequestFacts, String), String> {
    let bytes = B64.decode(b64).map_err(|_| "holds a request note that is not base64".to_owned())?;
    let note = Note::parse(&bytes).map_err(|e| format!("holds a malformed request note: {e}"))?;
    let key = signer.verifier().map_err(|e| e.to_string())?;
    note.verify(std::slice::from_ref(&key))
        .map_err(|_| format!("holds a request note not signed by {}", signer.id))?;
    let r =
        RequestFacts::from_text(note.text()).map_err(|e| format!("holds a malformed request note: {e}"))?;
    Ok((r, concord_charter::hex(&Sha256::digest(&bytes))))
}

/// Why an entry is strange when a note it carries says otherwise.
fn differs() -> String {
    "holds a signed note that says otherwise than the entry".to_owned()
}

/// The fact of an "access requested" entry, whose request note `member` must have signed.
fn requested_fact(
    member: &str,
    index: u64,
    e: &LogEntry,
    cards: &[MemberCard],
) -> Result<Option<AccessFact>, String> {
    let LogEntry::AccessRequested { request_id, owner, dataset, request_note, .. } = e else {
        return Ok(None);
    };
    let (r, note) = request_note_of(request_note, card_of(cards, member)?)?;
    if r.request_id != *request_id || r.requester != member || r.owner != *owner || r.dataset != *dataset {
        return Err(differs());
    }
    Ok(Some(AccessFact {
        index,
        kind: FactKind::Requested,
        request_id: request_id.clone(),
        peer: owner.clone(),
        digest: None,
        note: Some(note),
    }))
}

/// The fact of an "access served" entry, whose request note its requester must have signed.
fn served_fact(
    member: &str,
    index: u64,
    e: &LogEntry,
    cards: &[MemberCard],
) -> Result<Option<AccessFact>, String> {
    let LogEntry::AccessServed {
        request_id,
        requester,
        dataset,
        decision,
        release,
        reason,
        request_note,
        ..
    } = e
    else {
        return Ok(None);
    };
    if requester == member {
        return Err("holds an access served to its own member".into());
    }
    // Every decision carries the requester's own signed request.
    let (r, note) = request_note_of(request_note, card_of(cards, requester)?)?;
    if r.request_id != *request_id
        || r.requester != *requester
        || r.owner != member
        || r.dataset != *dataset
        || decision.released() != release.is_some()
    {
        return Err(differs());
    }
    Ok(Some(AccessFact {
        index,
        kind: FactKind::Served(*decision),
        request_id: request_id.clone(),
        peer: requester.clone(),
        digest: release.clone().or_else(|| reason.clone()),
        note: Some(note),
    }))
}

/// The fact of an "access made" entry, whose receipt its owner must have signed.
fn made_fact(
    member: &str,
    index: u64,
    e: &LogEntry,
    cards: &[MemberCard],
) -> Result<Option<AccessFact>, String> {
    let LogEntry::AccessMade { request_id, owner, dataset, release, receipt, .. } = e else {
        return Ok(None);
    };
    let bytes = B64.decode(receipt).map_err(|_| "holds a receipt that is not base64".to_owned())?;
    let key = card_of(cards, owner)?.verifier().map_err(|e| e.to_string())?;
    let r =
        ReleaseReceipt::verify(&bytes, &key).map_err(|_| format!("holds a receipt not signed by {owner}"))?;
    if r.request_id != *request_id
        || r.owner != *owner
        || r.requester != member
        || r.dataset != *dataset
        || r.release != *release
    {
        return Err(differs());
    }
    Ok(Some(AccessFact {
        index,
        kind: FactKind::Made,
        request_id: request_id.clone(),
        peer: owner.clone(),
        digest: Some(release.clone()),
        note: None,
    }))
}

pub use crate::wire::{AuditReport, MemberAudit, Mismatch};

/// Checks the notes this node keeps of the accesses it was a party to against the
/// commitments of `member`'s verified entries: the request's public note (whose signature
/// commits to its details) and the release's details. Returns how many were checked.
fn check_notes(
    node: &Node,
    member: &str,
    facts: &[AccessFact],
    problems: &mut Vec<String>,
) -> Result<u64, NodeError> {
    let me = node.cfg.member.as_str();
    let mut checked = 0;
    for f in facts.iter().filter(|f| member == me || f.peer == me) {
        let mut problem = |what: String| {
            if problems.len() < MAX_LISTED {
                problems
                    .push(format!("request {} ({member}'s log, entry {}): {what}", f.request_id, f.index));
            }
        };
        // What this node must keep: the notes of what its own log holds, the request of an
        // access its peer served or made with it, the release of one it served, the reason of
        // one it refused. A request its peer logged may never have reached it, and a release may
        // never have come back.
        let own = member == me;
        let requester = if matches!(f.kind, FactKind::Served(_)) { f.peer.as_str() } else { member };
        let request_needed = own || f.kind != FactKind::Requested;
        let release_needed = own || f.kind == FactKind::Made;
        let request = node.state.notes(&f.request_id, requester, NoteKind::Request)?;
        let signed = request.as_deref().map(SignedRequest::from_bytes);
        let request_found = check_request_note(f, &signed, request_needed);
        let outcome_found = check_outcome_note(node, f, requester, own, release_needed, &signed)?;
        for found in [request_found, outcome_found].into_iter().flatten() {
            match found {
                Ok(()) => checked += 1,
                Err(what) => problem(what),
            }
        }
    }
    Ok(checked)
}

/// What checking one kept note against a log's commitment found: `Ok` it matches, `Err` why it
/// does not; `None` when there is nothing to check.
type NoteCheck = Option<Result<(), String>>;

/// The request this node keeps against the SHA-256 of the request note the entry commits to.
fn check_request_note(
    f: &AccessFact,
    signed: &Option<Result<SignedRequest, NodeError>>,
    request_needed: bool,
) -> NoteCheck {
    let note = f.note.as_ref()?;
    match signed {
        None if request_needed => Some(Err("this node keeps no notes of the request".into())),
        None => None,
        Some(Ok(r)) if concord_charter::hex(&Sha256::digest(r.note.to_bytes())) == *note => Some(Ok(())),
        Some(Ok(_)) => Some(Err("the request this node keeps is not the one the log commits to".into())),
        Some(Err(e)) => Some(Err(format!("the request notes this node keeps do not hold together: {e}"))),
    }
}

/// The release details or the refusal's reason this node keeps against the entry's
/// commitment to them.
fn check_outcome_note(
    node: &Node,
    f: &AccessFact,
    requester: &str,
    own: bool,
    release_needed: bool,
    signed: &Option<Result<SignedRequest, NodeError>>,
) -> Result<NoteCheck, NodeError> {
    Ok(match (&f.digest, f.kind) {
        (Some(release), FactKind::Made | FactKind::Served(ServedDecision::Released)) => {
            match node.state.notes(&f.request_id, requester, NoteKind::Release)? {
                Some(d) if commitment(&d) == *release => Some(Ok(())),
                Some(_) => {
                    Some(Err("the release details this node keeps are not those the log commits to".into()))
                }
                None if release_needed => Some(Err("this node keeps no details of the release".into())),
                None => None,
            }
        }
        (Some(reason), _) => {
            let kept = node.state.notes(&f.request_id, requester, NoteKind::Reason)?;
            match (kept, signed) {
                (Some(text), Some(Ok(r)))
                    if reason_commitment(&r.salt, &String::from_utf8_lossy(&text)) == *reason =>
                {
                    Some(Ok(()))
                }
                // The requester is told the reason in the answer; it keeps none.
                (None, _) if !own => None,
                _ => {
                    Some(Err("the refusal's reason this node keeps is not the one the log commits to".into()))
                }
            }
        }
        (None, _) => None,
    })
}

/// Audits `targets` (member ids) and reconciles them with each other and with this node's log.
pub async fn audit(node: &Node, targets: &[String]) -> Result<AuditReport, NodeError> {
    let charter = &node.charter().charter;
    let mut wanted: BTreeSet<String> = targets.iter().cloned().collect();
    wanted.insert(node.cfg.member.clone());
    let mut cards = Vec::new();
    for id in &wanted {
        let card = charter
            .member(id)
            .ok_or_else(|| NodeError::UnknownMember(format!("{id} is not in the charter")))?;
        let origin = card.log_origin()?;
        let previous = node.log.audit_state(&origin)?;
        cards.push((card, origin, previous));
    }
    let steps = read_logs(node, charter, &cards).await;
    let mut members = Vec::new();
    let mut notes_checked = 0;
    let mut notes_problems = Vec::new();
    let mut origins = Vec::new();
    let mut verified = Vec::new();
    for ((card, origin, previous), step) in cards.iter().zip(steps) {
        let id = &card.id;
        origins.push(origin.clone());
        let origin = origin.clone();
        let mut report = report_before(charter, id, previous.as_ref());
        match step {
            Err(StepFailure::Problem(p)) => report.problems.push(p),
            Err(StepFailure::Fork { detail, earlier, later }) => {
                report.problems.push(format!("fork: {detail}"));
                keep_fork(node, &origin, detail, &earlier, &later).await?;
            }
            Ok(g) => {
                report_growth(charter, id, &g, &mut report);
                node.log.store_audit_step(&origin, id, &g.state, &g.facts)?;
                notes_checked += check_notes(node, id, &g.facts, &mut notes_problems)?;
                verified.push(id.clone());
            }
        }
        members.push(report);
    }
    // Reconcile every pair of logs verified up to now, this audit's and earlier ones'.
    let (mismatches, unreceived) = node.log.reconcile(&wanted, MAX_LISTED)?;
    let evidence = node.log.evidence()?.into_iter().filter(|e| origins.contains(&e.origin)).collect();
    Ok(AuditReport { members, mismatches, unreceived, evidence, notes_checked, notes_problems })
}

/// One audit step of every log in `cards`, with the state each was verified to before.
async fn read_logs(
    node: &Node,
    charter: &concord_charter::Charter,
    cards: &[(&MemberCard, String, Option<AuditState>)],
) -> Vec<Result<Growth, StepFailure>> {
    // Every log is read at once, each within its own time: a member that answers slowly is
    // named, and delays no other member's audit.
    let max = node.cfg.limits.audit_max_entries;
    futures::future::join_all(cards.iter().map(|(card, _, previous)| async move {
        let work = async {
            if card.id == node.cfg.member {
                verify_growth(card, &charter.members, &Local(node), previous.as_ref(), max).await
            } else {
                verify_growth(card, &charter.members, &Remote { node, card }, previous.as_ref(), max).await
            }
        };
        match tokio::time::timeout(AUDIT_STEP_TIME, work).await {
            Ok(step) => step,
            Err(_) => Err(problem(format!(
                "{} did not serve its log within {} s; nothing new of it was trusted",
                card.id,
                AUDIT_STEP_TIME.as_secs()
            ))),
        }
    }))
    .await
}

/// A member's report as of the state verified before this audit.
fn report_before(charter: &concord_charter::Charter, id: &str, previous: Option<&AuditState>) -> MemberAudit {
    MemberAudit {
        member: id.to_owned(),
        size: previous.map(|p| p.size).unwrap_or(0),
        root: previous.map(|p| concord_charter::hex(&p.root)).unwrap_or_default(),
        cosigners: vec![],
        witness_quorum: charter.witness_quorum,
        previous_size: previous.map(|p| p.size),
        new_entries: 0,
        problems: vec![],
    }
}

/// Keeps a fork's two checkpoints as evidence, and logs it.
async fn keep_fork(
    node: &Node,
    origin: &str,
    detail: String,
    earlier: &[u8],
    later: &[u8],
) -> Result<(), NodeError> {
    node.log.keep_evidence(origin, &detail, earlier, later)?;
    let entry = LogEntry::ForkEvidence {
        time: crate::store::entry::now(),
        origin: origin.to_owned(),
        detail,
        checkpoints: vec![crate::store::entry::sha256(earlier), crate::store::entry::sha256(later)],
    };
    node.log.append(entry.to_bytes()?).await?;
    Ok(())
}

/// The cosigners of `id`'s checkpoint that count towards its quorum: only the log's own
/// witnesses under `charter`, since any two majorities of them overlap, which cosignatures
/// gathered from elsewhere in the federation need not.
fn counted_cosigners(charter: &concord_charter::Charter, id: &str, cosigners: &[String]) -> Vec<String> {
    let witnesses = charter.witnesses_of(id);
    cosigners.iter().filter(|c| witnesses.iter().any(|w| &w.id == *c)).cloned().collect()
}

/// What a verified step adds to member `id`'s report: the new size, root and cosigners, a
/// quorum not met, and the strange entries.
fn report_growth(charter: &concord_charter::Charter, id: &str, g: &Growth, report: &mut MemberAudit) {
    report.size = g.checkpoint.size;
    report.root = concord_charter::hex(&g.checkpoint.root);
    report.cosigners = counted_cosigners(charter, id, &g.cosigners);
    report.new_entries = g.checkpoint.size - report.previous_size.unwrap_or(0);
    if report.cosigners.len() < charter.witness_quorum {
        report.problems.push(format!(
            "{} cosignatures of its {} witnesses, the charter's quorum is {}",
            report.cosigners.len(),
            charter.witnesses_of_each_log(),
            charter.witness_quorum
        ));
    }
    for (i, why) in &g.strange {
        report.problems.push(format!("entry {i} of {id}'s log {why}"));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use concord_log::NoteSigner;
    use concord_log::checkpoint::CosignatureSigner;
    use concord_log::merkle::MemoryTree;
    use concord_log::tiles::encode_bundle;

    use super::*;

    struct Member {
        card: MemberCard,
        signer: NoteSigner,
        witness: CosignatureSigner,
    }

    fn member(id: &str, pin: char) -> Member {
        let signer = NoteSigner::generate(&format!("fed/{id}")).expect("key");
        let witness = CosignatureSigner::generate(&format!("fed/{id}/witness")).expect("key");
        let card = MemberCard {
            id: id.into(),
            name: id.into(),
            jurisdiction: "XX".into(),
            vkey: signer.vkey(),
            witness_vkey: witness.verifier().to_vkey(),
            tls_pin: format!("sha256/{}=", pin.to_string().repeat(43)),
            peer_endpoint: "127.0.0.1:1".into(),
        };
        Member { card, signer, witness }
    }

    /// A log served from memory: path -> bytes.
    #[derive(Clone, Default)]
    struct Served(BTreeMap<String, Vec<u8>>);

    #[async_trait]
    impl LogSource for Served {
        async fn read(&self, path: &str, max: usize) -> Result<Vec<u8>, NodeError> {
            let b = self.0.get(path).cloned().ok_or_else(|| NodeError::NotFound(path.into()))?;
            if b.len() > max {
                return Err(NodeError::TooLarge(path.into()));
            }
            Ok(b)
        }
    }

    /// The first `n` of `entries` served as alpha's log, cosigned by bravo.
    fn serve(a: &Member, b: &Member, entries: &[Vec<u8>], n: usize) -> Served {
        let mut tree = MemoryTree::new();
        for e in &entries[..n] {
            tree.append(e);
        }
        let cp =
            Checkpoint { origin: "fed/alpha".into(), size: n as u64, root: tree.root(), extensions: vec![] };
        let mut note = Note::new(cp.to_text()).expect("note");
        note.sign(&a.signer);
        note.add_signature(b.witness.cosign(note.text(), 1_800_000_000));
        let mut s = Served::default();
        s.0.insert("checkpoint".into(), note.to_bytes());
        for (i, chunk) in entries[..n].chunks(TILE_WIDTH as usize).enumerate() {
            let t = Tile { kind: TileKind::Entries, index: i as u64, width: chunk.len() as u64 };
            s.0.insert(t.path(), encode_bundle(chunk.iter().map(Vec::as_slice)).expect("bundle"));
        }
        for level in 0..8u8 {
            let nodes = (n as u64) >> (8 * u32::from(level));
            for t in 0..nodes.div_ceil(TILE_WIDTH) {
                let width = (nodes - t * TILE_WIDTH).min(TILE_WIDTH);
                let tile = Tile { kind: TileKind::Hashes(level), index: t, width };
                s.0.insert(tile.path(), tile.hashes(&tree).expect("hashes"));
            }
        }
        s
    }

    #[test]
    fn only_a_logs_own_witnesses_count_towards_its_quorum() {
        let cards: Vec<MemberCard> =
            (0..12u8).map(|i| member(&format!("m{i:02}"), char::from(b'A' + i)).card).collect();
        let charter = concord_charter::Charter::genesis("fed", cards, vec![]).expect("charter");
        assert_eq!((charter.witnesses_of_each_log(), charter.witness_quorum), (8, 5));
        // m00's witnesses are m01..m08: m09, m10 and m11 cosigning count for nothing.
        let signed: Vec<String> = ["m01", "m08", "m09", "m10", "m11"].map(String::from).to_vec();
        assert_eq!(counted_cosigners(&charter, "m00", &signed), ["m01", "m08"]);
        // m10's wrap around: m11, m00, ..., m06.
        assert_eq!(counted_cosigners(&charter, "m10", &signed), ["m01", "m11"]);
    }

    #[tokio::test]
    async fn growth_is_verified_step_by_step_and_every_kind_of_tampering_is_named() {
        let (a, b) = (member("alpha", 'A'), member("bravo", 'B'));
        let cards = [a.card.clone(), b.card.clone()];
        let entries: Vec<Vec<u8>> = (0..70_000).map(|i| format!("entry {i}").into_bytes()).collect();
        macro_rules! fails {
            ($e:expr $(,)?) => {
                match $e {
                    Err(StepFailure::Problem(p)) => p,
                    Err(StepFailure::Fork { detail, .. }) => panic!("line {}: a fork: {detail}", line!()),
                    Ok(g) => panic!("line {}: verified up to {}", line!(), g.state.size),
                }
            };
        }

        // From nothing to 40,000, then on to 70,000: the state resumes, the roots agree.
        let first = verify_growth(&a.card, &cards, &serve(&a, &b, &entries, 40_000), None, 1 << 20)
            .await
            .expect("verifies");
        assert_eq!(first.cosigners, ["bravo"]);
        let full = serve(&a, &b, &entries, 70_000);
        let second = verify_growth(&a.card, &cards, &full, Some(&first.state), 1 << 20).await.expect("grows");
        assert_eq!(second.state.size, 70_000);
        let whole = verify_growth(&a.card, &cards, &full, None, 1 << 20).await.expect("from zero");
        assert_eq!(whole.state, second.state, "resuming gives what a whole audit gives");

        // One audit takes a bounded number of new entries, whatever the checkpoint claims.
        let p = fails!(verify_growth(&a.card, &cards, &full, Some(&first.state), 1000).await);
        assert!(p.contains("30000 new entries") && p.contains("at most 1000"), "{p}");

        // A flipped byte in an entry, in a level-0 tile, in a level-1 tile.
        let mut t = full.clone();
        t.0.get_mut("tile/entries/200").expect("bundle")[10] ^= 1;
        assert!(
            fails!(verify_growth(&a.card, &cards, &t, Some(&first.state), 1 << 20).await).contains("altered")
        );
        // (Level-1 node 200 covers leaves from 51,200: new since 40,000, so it is checked.)
        for (path, byte) in [("tile/0/200", 40), ("tile/1/000", 200 * 32 + 5)] {
            let mut t = full.clone();
            t.0.get_mut(path).expect("tile")[byte] ^= 1;
            let p = fails!(verify_growth(&a.card, &cards, &t, Some(&first.state), 1 << 20).await);
            assert!(p.contains(path) && p.contains("altered"), "{path}: {p}");
        }
        // A truncated bundle, a missing one.
        let mut t = full.clone();
        t.0.get_mut("tile/entries/250").expect("bundle").truncate(100);
        assert!(!fails!(verify_growth(&a.card, &cards, &t, Some(&first.state), 1 << 20).await).is_empty());
        let mut t = full.clone();
        t.0.remove("tile/entries/260");
        assert!(
            fails!(verify_growth(&a.card, &cards, &t, Some(&first.state), 1 << 20).await)
                .contains("not found")
        );
        // The wrong key, an altered checkpoint.
        assert!(matches!(
            verify_growth(&b.card, &cards, &full, None, 1 << 20).await,
            Err(StepFailure::Problem(_))
        ));
        let mut t = full.clone();
        let cp =
            String::from_utf8(t.0["checkpoint"].clone()).expect("utf8").replacen("\n70000\n", "\n69999\n", 1);
        t.0.insert("checkpoint".into(), cp.into_bytes());
        assert!(fails!(verify_growth(&a.card, &cards, &t, None, 1 << 20).await).contains("signature"));

        // A rollback is a problem; a second root for a verified size is a fork with both notes.
        let p = fails!(
            verify_growth(&a.card, &cards, &serve(&a, &b, &entries, 30_000), Some(&first.state), 1 << 20)
                .await,
        );
        assert!(p.contains("rollback"), "{p}");
        let mut other = entries.clone();
        other[5] = b"rewritten".to_vec();
        match verify_growth(&a.card, &cards, &serve(&a, &b, &other, 40_000), Some(&first.state), 1 << 20)
            .await
        {
            Err(StepFailure::Fork { earlier, later, .. }) => {
                assert_eq!(earlier, first.state.checkpoint);
                assert_ne!(earlier, later);
            }
            other => panic!("expected a fork, got {other:?}"),
        }
        // A rewritten past under a larger size is named, never trusted.
        let p = fails!(
            verify_growth(&a.card, &cards, &serve(&a, &b, &other, 50_000), Some(&first.state), 1 << 20).await,
        );
        assert!(p.contains("do not hash to the signed root"), "{p}");
    }

    #[tokio::test]
    async fn invented_access_entries_count_against_the_log_that_holds_them() {
        let (a, b) = (member("alpha", 'A'), member("bravo", 'B'));
        let cards = [a.card.clone(), b.card.clone()];
        // Alpha's log "shows" a release to bravo and an access made from bravo, neither signed by
        // bravo: they would blame bravo for hiding them.
        let served = LogEntry::AccessServed {
            time: 0,
            request_id: "0123456789abcdef0123456789abcdef".into(),
            requester: "bravo".into(),
            dataset: "cases".into(),
            decision: ServedDecision::Released,
            request_note: B64.encode(b"not a note"),
            policy: None,
            cost: None,
            release: Some("sha256:00".into()),
            reason: None,
            notes: None,
        };
        let made = LogEntry::AccessMade {
            time: 0,
            request_id: "0123456789abcdef0123456789abcdef".into(),
            owner: "bravo".into(),
            dataset: "cases".into(),
            release: "sha256:00".into(),
            owner_log_index: 0,
            receipt: B64.encode(b"junk"),
            notes: None,
        };
        let entries = vec![served.to_bytes().expect("json"), made.to_bytes().expect("json")];
        let g = verify_growth(&a.card, &cards, &serve(&a, &b, &entries, 2), None, 1 << 20)
            .await
            .expect("verifies");
        assert!(g.facts.is_empty(), "{:?}", g.facts);
        assert_eq!(g.strange.len(), 2);
        assert!(g.strange[0].1.contains("malformed request note"), "{:?}", g.strange);
        assert!(g.strange[1].1.contains("not signed by bravo"), "{:?}", g.strange);
    }

    #[tokio::test]
    async fn a_checkpoint_claiming_2_pow_56_entries_costs_nothing() {
        let (a, b) = (member("alpha", 'A'), member("bravo", 'B'));
        let cards = [a.card.clone(), b.card.clone()];
        let cp = Checkpoint { origin: "fed/alpha".into(), size: 1 << 56, root: [7; 32], extensions: vec![] };
        let mut note = Note::new(cp.to_text()).expect("note");
        note.sign(&a.signer);
        let mut s = Served::default();
        s.0.insert("checkpoint".into(), note.to_bytes());
        match verify_growth(&a.card, &cards, &s, None, 1 << 20).await {
            Err(StepFailure::Problem(p)) => assert!(p.contains("72057594037927936 new entries"), "{p}"),
            other => panic!("{other:?}"),
        }
    }
}
