//! Governance on a running node: proposals and votes from this member's delegate or pushed by
//! peers, checked in the round of the current charter version
//! ([`concord_charter::governance::Round`]), stored, logged, pushed to every other member, and
//! the version they make adopted ([`Node::adopt`]).
//!
//! Invariant: every act is verified before it is stored, logged or pushed on; evidence of
//! equivocation is stored and logged, never dropped.

use std::time::Duration;

use concord_charter::SignedCharter;
use concord_charter::governance::{
    Ballot, Change, GovernanceError, Proposal, Round, SignedVote, Status, VoteOutcome,
};
use concord_log::Note;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::NodeError;
use crate::net::client::{Budget, peer_call_with};
use crate::store::entry::{LogEntry, now};
use crate::wire::{self, Equivocation, ProposalStatus, ProposalView, VoteReport, VoteWire, VotedOn};

impl VoteWire {
    fn of(v: &SignedVote) -> Self {
        Self { note: v.note.to_string(), body_signature: v.body_signature_line() }
    }

    fn parse(&self) -> Result<SignedVote, NodeError> {
        Ok(SignedVote::parse(self.note.as_bytes(), self.body_signature.as_deref())?)
    }
}

/// The acts on one charter version, as a peer pulls them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Acts {
    /// The charter version the acts are on: the serving node's current one.
    pub version: u64,
    /// Signed proposal notes.
    pub proposals: Vec<String>,
    /// Signed votes as they travel (for a yes, with the signature over the charter body).
    pub votes: Vec<VoteWire>,
}

/// How often a node pulls what it may have missed.
pub const PULL_INTERVAL: Duration = Duration::from_secs(30);

/// Pulls at start, then every [`PULL_INTERVAL`], until `shutdown`.
pub async fn pull_loop(node: std::sync::Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        node.pull_governance().await;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(PULL_INTERVAL) => {}
        }
    }
}

fn unix_now() -> u64 {
    u64::try_from(now()).unwrap_or(0)
}

/// The member a proposal lets out, if it is that member's own exit: its one change removes its
/// proposer.
fn exit_of(p: &Proposal) -> Option<String> {
    match p.changes.as_slice() {
        [Change::RemoveMember { id }] if *id == p.proposer => Some(id.clone()),
        _ => None,
    }
}

fn refused(e: GovernanceError) -> NodeError {
    match e {
        GovernanceError::Duplicate(what) => NodeError::Conflict(format!("already known: {what}")),
        GovernanceError::Equivocation { .. } => NodeError::Conflict(e.to_string()),
        GovernanceError::Charter(c) => NodeError::BadRequest(c.to_string()),
        GovernanceError::Refused(why) => NodeError::BadRequest(why),
    }
}

/// What a round made of one vote: the outcome, evidence of an equivocation it revealed (newly
/// stored, with its JSON), the base version, and the proposal's yes votes and threshold.
type CountedVote = (
    Result<VoteOutcome, GovernanceError>,
    Option<(concord_charter::governance::Equivocation, String)>,
    u64,
    (usize, usize),
);

fn budget() -> Budget {
    Budget { timeout: Duration::from_secs(10), max_bytes: 64 * 1024 }
}

/// What a pull may read: a charter of many members, or the acts of a busy version.
fn pull_budget() -> Budget {
    Budget { timeout: Duration::from_secs(30), max_bytes: 8 * 1024 * 1024 }
}

impl Node {
    /// The round of the current version, rebuilt from the stored acts when the version changed.
    fn with_round<T>(&self, f: impl FnOnce(&mut Round) -> T) -> Result<T, NodeError> {
        let mut round = self.round.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read under the round's lock: an adoption meanwhile rebuilds the round after it.
        let charter = self.charter();
        if round.as_ref().is_none_or(|r| r.base.version != charter.charter.version) {
            let mut fresh = Round::new(charter.charter.clone());
            let mut exits = Vec::new();
            for (kind, body, at) in self.state.governance_acts(charter.charter.version)? {
                // Acts were verified when they came; replayed at the time they came, the round
                // is the one this node had then.
                match kind.as_str() {
                    "proposal" => {
                        if let Ok(note) = Note::parse(body.as_bytes())
                            && let Ok(id) = fresh.propose(&note, at)
                            && let Some(leaver) = fresh.proposals.get(&id).and_then(|p| exit_of(&p.proposal))
                        {
                            exits.push((id, leaver));
                        }
                    }
                    "vote" => {
                        if let Ok(v) = serde_json::from_str::<VoteWire>(&body)
                            .map_err(|_| ())
                            .and_then(|w| w.parse().map_err(|_| ()))
                        {
                            let _ = fresh.vote(v, at);
                        }
                    }
                    _ => {}
                }
            }
            // The members leaving are those whose exit is open on this version: after a restart
            // they stay refused, and one whose exit died (expired, or its base replaced) is a
            // member like any other again, on every node alike.
            let now = unix_now();
            let open: std::collections::BTreeSet<String> = exits
                .into_iter()
                .filter(|(id, leaver)| {
                    fresh.status(id, now) == Some(Status::Live) && *leaver != self.cfg.member
                })
                .map(|(_, leaver)| leaver)
                .collect();
            *self.exiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = open;
            *round = Some(fresh);
        }
        match round.as_mut() {
            Some(r) => Ok(f(r)),
            None => Err(NodeError::State("no governance round".into())),
        }
    }

    /// Rebuilds the round of the current version from the stored acts, as it stood when each
    /// came; a member whose exit is still open stays refused.
    pub(crate) fn restore_governance(&self) -> Result<(), NodeError> {
        self.with_round(|_| ())?;
        self.refresh_pins();
        Ok(())
    }

    /// This member proposes `changes` to the current version, open for `ttl`.
    pub async fn propose(&self, changes: Vec<Change>, ttl: Duration) -> Result<String, NodeError> {
        for change in &changes {
            if let Change::SetSchema { schema } = change {
                concord_query::dataset::check_types(schema)?;
            }
        }
        let c = self.charter();
        let proposal = Proposal {
            federation: c.charter.federation.clone(),
            base_version: c.charter.version,
            base_digest: c.charter.digest(),
            proposer: self.cfg.member.clone(),
            expires: unix_now().saturating_add(ttl.as_secs()),
            changes,
        };
        let note = proposal.sign(&self.keys().signer)?;
        let id = self.take_proposal(note.to_string().as_bytes()).await?;
        self.push(&self.keys(), "/v1/governance/proposal", note.to_bytes()).await;
        Ok(id)
    }

    /// This member leaves the federation: it proposes its own removal and votes yes. Every
    /// other node refuses it from the next connection and votes yes itself (no delegate votes
    /// on an exit), so the version without it needs no one's decision.
    pub async fn leave(&self, ttl: Duration) -> Result<VoteReport, NodeError> {
        let base = self.charter_version();
        let id = self.propose(vec![Change::RemoveMember { id: self.cfg.member.clone() }], ttl).await?;
        // The others' own yes votes, pushed back while the proposal spread, may have made the
        // version already.
        if self.charter_version() > base {
            let threshold = self.charter().charter.threshold;
            return Ok(VoteReport {
                proposal: id,
                outcome: wire::VoteOutcome::Adopted,
                version: self.charter_version(),
                yes: threshold,
                threshold,
            });
        }
        self.cast_vote(&id, Ballot::Yes, "leaving").await
    }

    /// Proposes `changes` and votes yes on them as their proposer, unless this member already
    /// has a live yes on this version (one yes per version): then the vote is left to the
    /// delegate.
    pub async fn propose_and_vote(
        &self,
        changes: Vec<Change>,
        ttl: Duration,
    ) -> Result<(String, Option<VoteReport>), NodeError> {
        let base = self.charter_version();
        let id = self.propose(changes, ttl).await?;
        if self.charter_version() > base {
            let threshold = self.charter().charter.threshold;
            let report = VoteReport {
                proposal: id.clone(),
                outcome: wire::VoteOutcome::Adopted,
                version: self.charter_version(),
                yes: threshold,
                threshold,
            };
            return Ok((id, Some(report)));
        }
        if self.has_live_yes(&id)? {
            return Ok((id, None));
        }
        let vote = self.cast_vote(&id, Ballot::Yes, "proposed it").await?;
        Ok((id, Some(vote)))
    }

    /// Whether this node has a live yes on a proposal other than `except` in the current round.
    fn has_live_yes(&self, except: &str) -> Result<bool, NodeError> {
        let at = unix_now();
        self.with_round(|r| r.live_yes(&self.cfg.member, except, at).is_some())
    }

    /// Takes in a signed proposal (from this member or pushed by a peer).
    pub async fn take_proposal(&self, body: &[u8]) -> Result<String, NodeError> {
        let note = Note::parse(body)?;
        let proposal = Proposal::from_text(note.text())?;
        // Stored under the round's lock, so the stored order is the order the round took them in.
        let id = self.with_round(|r| {
            let id = r.propose(&note, unix_now()).map_err(refused)?;
            self.state.store_governance_act(proposal.base_version, "proposal", &note.to_string())?;
            Ok::<_, NodeError>(id)
        })??;
        let entry = LogEntry::GovernanceProposal {
            time: now(),
            proposal: id.clone(),
            proposer: proposal.proposer.clone(),
            base_version: proposal.base_version,
            changes: proposal.changes.iter().map(Change::summary).collect(),
            note: note.to_string(),
        };
        self.log.append(entry.to_bytes()?).await?;
        self.metrics.governance(super::metrics::GovernanceEvent::Proposal);
        // A member's own exit: out at once, and every other node votes yes by itself.
        if let Some(leaver) = exit_of(&proposal)
            && leaver != self.cfg.member
        {
            self.exiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(leaver.clone());
            self.refresh_pins();
            if !self.has_live_yes(&id)? {
                self.cast_vote(&id, Ballot::Yes, &format!("{leaver} leaves")).await?;
            }
        }
        Ok(id)
    }

    /// This member votes on `proposal`.
    pub async fn cast_vote(
        &self,
        proposal: &str,
        ballot: Ballot,
        reason: &str,
    ) -> Result<VoteReport, NodeError> {
        let at = unix_now();
        let vote = self.with_round(|r| {
            let p = r.proposals.get(proposal).ok_or_else(|| {
                NodeError::NotFound(format!("proposal {proposal} on charter version {}", r.base.version))
            })?;
            // This node never signs a second yes on one version: it would be its own equivocation.
            if ballot == Ballot::Yes
                && let Some((first, _)) = r.live_yes(&self.cfg.member, proposal, at)
            {
                return Err(NodeError::Conflict(format!(
                    "this member already voted yes on proposal {first} of charter version {}; one yes per version",
                    r.base.version
                )));
            }
            Ok::<_, NodeError>(SignedVote::cast(
                &self.keys().signer,
                &self.cfg.member,
                &p.proposal,
                &p.body,
                ballot,
                reason,
            )?)
        })??;
        let wire = VoteWire::of(&vote);
        let report = self.take_vote_from(&wire, true).await?;
        // A vote that made the version needs no push of its own: the version, pushed already,
        // carries its signature.
        if report.outcome != wire::VoteOutcome::Adopted {
            let body =
                serde_json::to_vec(&wire).map_err(|source| NodeError::Encode { what: "a vote", source })?;
            self.push(&self.keys(), "/v1/governance/vote", body).await;
        }
        Ok(report)
    }

    /// Takes in a signed vote pushed by a peer; adopts the version it completes.
    pub async fn take_vote(&self, wire: &VoteWire) -> Result<VoteReport, NodeError> {
        self.take_vote_from(wire, false).await
    }

    /// Takes in a signed vote; adopts the version it completes, and pushes that version on if
    /// the vote is this member's own (every member is sent the vote and assembles the version
    /// itself; the push is for those the vote did not reach, and so is the pull).
    async fn take_vote_from(&self, wire: &VoteWire, own: bool) -> Result<VoteReport, NodeError> {
        let vote = wire.parse()?;
        let body =
            serde_json::to_string(wire).map_err(|source| NodeError::Encode { what: "a vote", source })?;
        // Stored under the round's lock, so the stored order is the order the round took them in.
        let (outcome, new_evidence, base_version, (yes, threshold)) =
            self.with_round(|r| self.count_vote(r, &vote, &body))??;
        if let Some((ev, evidence)) = new_evidence {
            self.log_equivocation(&ev, evidence, base_version).await?;
        }
        let outcome = outcome.map_err(refused)?;
        self.log_vote(&vote, wire).await?;
        let outcome = match outcome {
            VoteOutcome::Adopted(next) => {
                self.adopt_voted(next, own).await?;
                wire::VoteOutcome::Adopted
            }
            VoteOutcome::Dead => wire::VoteOutcome::Dead,
            VoteOutcome::Counted => wire::VoteOutcome::Counted,
        };
        Ok(VoteReport {
            proposal: vote.vote.proposal,
            outcome,
            version: self.charter_version(),
            yes,
            threshold,
        })
    }

    /// Counts `vote` in round `r` (under the round's lock): the evidence of an equivocation it
    /// reveals is stored once, and a vote the round took is stored.
    fn count_vote(&self, r: &mut Round, vote: &SignedVote, body: &str) -> Result<CountedVote, NodeError> {
        let evidence_before = r.evidence.len();
        let outcome = r.vote(vote.clone(), unix_now());
        let mut new_evidence = None;
        if let Some(ev) = r.evidence.get(evidence_before) {
            let evidence = serde_json::to_string(&Equivocation {
                first: VotedOn { proposal: ev.first.0.clone(), vote: VoteWire::of(&ev.first.1) },
                second: VotedOn { proposal: ev.second.0.clone(), vote: VoteWire::of(&ev.second.1) },
            })
            .map_err(|source| NodeError::Encode { what: "equivocation evidence", source })?;
            // Kept once, across restarts too.
            if self.state.store_governance_act_once(r.base.version, "evidence", &evidence)? {
                new_evidence = Some((ev.clone(), evidence));
            }
        }
        if outcome.is_ok() {
            self.state.store_governance_act(r.base.version, "vote", body)?;
        }
        let count = (r.proposals.get(&vote.vote.proposal).map_or(0, |p| p.yes.len()), r.base.threshold);
        Ok((outcome, new_evidence, r.base.version, count))
    }

    /// Logs the evidence of an equivocation, newly stored.
    async fn log_equivocation(
        &self,
        ev: &concord_charter::governance::Equivocation,
        evidence: String,
        base_version: u64,
    ) -> Result<(), NodeError> {
        let entry = LogEntry::Equivocation {
            time: now(),
            voter: ev.voter.clone(),
            base_version,
            first: ev.first.0.clone(),
            second: ev.second.0.clone(),
            evidence,
        };
        self.log.append(entry.to_bytes()?).await?;
        self.metrics.governance(super::metrics::GovernanceEvent::Equivocation);
        Ok(())
    }

    /// Logs a vote the round counted.
    async fn log_vote(&self, vote: &SignedVote, wire: &VoteWire) -> Result<(), NodeError> {
        let entry = LogEntry::GovernanceVote {
            time: now(),
            proposal: vote.vote.proposal.clone(),
            voter: vote.vote.voter.clone(),
            ballot: vote.vote.ballot,
            note: wire.note.clone(),
        };
        self.log.append(entry.to_bytes()?).await?;
        self.metrics.governance(super::metrics::GovernanceEvent::Vote);
        Ok(())
    }

    /// Adopts the version a vote completed; if the vote is this member's own, pushes the
    /// version to the members before and after it.
    async fn adopt_voted(&self, next: Box<SignedCharter>, own: bool) -> Result<(), NodeError> {
        let bytes = next.to_bytes();
        // The others know this member by the keys of the version before until they
        // adopt this one, which may rotate them: the version goes out with those.
        let keys = self.keys();
        let before = self.charter();
        self.adopt(*next).await?;
        if own {
            // To the members of the version before as they knew each other (endpoints
            // and pins that the new version may change, and those it removes, who learn
            // of it), and to the members it adds.
            let after = self.charter();
            let to: Vec<concord_charter::MemberCard> = before
                .charter
                .members
                .iter()
                .chain(after.charter.members.iter().filter(|m| before.charter.member(&m.id).is_none()))
                .filter(|m| m.id != self.cfg.member)
                .cloned()
                .collect();
            self.push_to(&keys, &to, "/v1/governance/charter", bytes).await;
        }
        Ok(())
    }

    /// Takes in a charter version pushed by a peer: the next version is verified and adopted;
    /// one already held is fine; one that skips a number is refused.
    pub async fn take_charter(&self, body: &[u8]) -> Result<u64, NodeError> {
        let next = SignedCharter::parse(body)?;
        let current = self.charter_version();
        if next.charter.version <= current {
            // One held already: the same, or a fork whose signatures are the evidence.
            let held = SignedCharter::parse(&self.charter_note(next.charter.version)?)?;
            if held.charter.digest() != next.charter.digest() {
                next.verify_successor(&self.previous_of(next.charter.version)?)?;
                let evidence = String::from_utf8_lossy(&next.to_bytes()).into_owned();
                self.state.store_governance_act_once(next.charter.version - 1, "fork", &evidence)?;
                return Err(NodeError::Conflict(format!(
                    "a second charter version {} (digest {}), signed by the threshold; this node holds digest {}. Kept as evidence",
                    next.charter.version,
                    next.charter.digest(),
                    held.charter.digest()
                )));
            }
            return Ok(current);
        }
        if next.charter.version != current + 1 {
            return Err(NodeError::BadRequest(format!(
                "charter version {} does not follow version {current}; versions are adopted one at a time",
                next.charter.version
            )));
        }
        self.adopt(next).await?;
        Ok(self.charter_version())
    }

    /// The proposals on the current version, newest knowledge first.
    pub fn proposals(&self) -> Result<Vec<ProposalView>, NodeError> {
        let at = unix_now();
        self.with_round(|r| {
            let threshold = r.base.threshold;
            r.proposals
                .iter()
                .map(|(id, p)| ProposalView {
                    id: id.clone(),
                    proposer: p.proposal.proposer.clone(),
                    base_version: p.proposal.base_version,
                    expires: p.proposal.expires,
                    changes: p.proposal.changes.iter().map(Change::summary).collect(),
                    status: match r.status(id, at) {
                        Some(Status::Live) | None => ProposalStatus::Live,
                        Some(Status::Adopted) => ProposalStatus::Adopted,
                        Some(Status::Dead(_)) => ProposalStatus::Dead,
                    },
                    dead_because: match r.status(id, at) {
                        Some(Status::Dead(why)) => Some(why.to_string()),
                        _ => None,
                    },
                    yes: p.yes.keys().cloned().collect(),
                    no: p.no.keys().cloned().collect(),
                    threshold,
                })
                .collect()
        })
    }

    /// What a peer pulls: this node's version and the acts on it.
    pub fn acts(&self) -> Result<Acts, NodeError> {
        let version = self.charter_version();
        let mut acts = Acts { version, proposals: Vec::new(), votes: Vec::new() };
        for (kind, body, _) in self.state.governance_acts(version)? {
            match kind.as_str() {
                "proposal" => acts.proposals.push(body),
                "vote" => {
                    if let Ok(w) = serde_json::from_str(&body) {
                        acts.votes.push(w);
                    }
                }
                _ => {}
            }
        }
        Ok(acts)
    }

    /// The charter version before `version`.
    fn previous_of(&self, version: u64) -> Result<concord_charter::Charter, NodeError> {
        Ok(SignedCharter::parse(&self.charter_note(version.saturating_sub(1))?)?.charter)
    }

    /// A stored charter version's note bytes.
    pub fn charter_note(&self, version: u64) -> Result<Vec<u8>, NodeError> {
        self.state
            .charter_at(version)?
            .ok_or_else(|| NodeError::NotFound(format!("charter version {version}")))
    }

    /// Pulls from every other member what this node missed: later charter versions (each
    /// verified from the one before) and the proposals and votes on the current one. Returns
    /// the version in force after.
    pub async fn pull_governance(&self) -> u64 {
        let exiting = self.exiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let members: Vec<concord_charter::MemberCard> = self
            .charter()
            .charter
            .members
            .iter()
            .filter(|m| m.id != self.cfg.member && !exiting.contains(&m.id))
            .cloned()
            .collect();
        // Keys of a pending rotation: a node that was down while the others adopted it is
        // known to them only by those.
        let pending = self
            .dir
            .next_keys()
            .is_dir()
            .then(|| self.dir.clone().with_keys_in(&self.dir.next_keys()).load_tls().ok())
            .flatten();
        let current = self.keys();
        for m in members {
            let Some((acts, tls)) = self.pull_acts(&m, &current.tls, pending.as_ref()).await else {
                continue;
            };
            self.pull_charters(&m, tls, acts.version).await;
            if acts.version != self.charter_version() {
                continue;
            }
            for p in &acts.proposals {
                let _ = self.take_proposal(p.as_bytes()).await;
            }
            for v in &acts.votes {
                let _ = self.take_vote(v).await;
            }
        }
        self.charter_version()
    }

    /// The acts `m` serves, read with the first of `current` and `pending` it answers, and those keys.
    async fn pull_acts<'k>(
        &self,
        m: &concord_charter::MemberCard,
        current: &'k crate::net::tls::TlsKeys,
        pending: Option<&'k crate::net::tls::TlsKeys>,
    ) -> Option<(Acts, &'k crate::net::tls::TlsKeys)> {
        for keys in std::iter::once(current).chain(pending) {
            if let Ok(r) =
                peer_call_with(keys, m, "GET", "/v1/governance/acts", Vec::new(), pull_budget()).await
                && r.status == 200
            {
                return serde_json::from_slice::<Acts>(&r.body).ok().map(|acts| (acts, keys));
            }
        }
        None
    }

    /// Adopts from `m`, one at a time and each verified, the charter versions up to `latest`.
    async fn pull_charters(
        &self,
        m: &concord_charter::MemberCard,
        tls: &crate::net::tls::TlsKeys,
        latest: u64,
    ) {
        while self.charter_version() < latest {
            let before = self.charter_version();
            let path = format!("/v1/governance/charter/{}", before + 1);
            let next = match peer_call_with(tls, m, "GET", &path, Vec::new(), pull_budget()).await {
                Ok(r) if r.status == 200 => r.body,
                _ => break,
            };
            match self.take_charter(&next).await {
                // Only a version that advances this node counts: a peer must not keep it here.
                Ok(v) if v > before => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(member = %m.id, "charter pulled from {} not adopted: {e}", m.id);
                    break;
                }
            }
        }
    }

    /// Sends `body` to every other member of the current version; a member that cannot be
    /// reached catches up when it pulls.
    async fn push(&self, keys: &super::Keys, path: &str, body: Vec<u8>) {
        let to: Vec<_> =
            self.charter().charter.members.iter().filter(|m| m.id != self.cfg.member).cloned().collect();
        self.push_to(keys, &to, path, body).await;
    }

    /// Sends `body` to the members `to`, as their cards say.
    async fn push_to(
        &self,
        keys: &super::Keys,
        to: &[concord_charter::MemberCard],
        path: &str,
        body: Vec<u8>,
    ) {
        let calls = to.iter().map(|m| peer_call_with(&keys.tls, m, "POST", path, body.clone(), budget()));
        for (m, r) in to.iter().zip(futures::future::join_all(calls).await) {
            match r {
                Ok(resp) if resp.status < 300 => {}
                // Already known, or already past (a peer that adopted the version first).
                Ok(resp) if resp.status < 500 => {
                    tracing::debug!(member = %m.id, status = resp.status, "{path} not taken")
                }
                Ok(resp) => tracing::warn!(member = %m.id, status = resp.status, "{path} not taken"),
                Err(e) => tracing::warn!(member = %m.id, "{path} not delivered: {e}"),
            }
        }
    }
}

/// `concord join`: a candidate that an adopted charter version names fetches the chain of
/// versions from the member whose peer listener is at `peer`, verifies it from `genesis` (the
/// digest of version 1, which the candidate got from the members out of band) and stores it; the
/// node then starts as a full member with `concord node run`, and its pull catches up on
/// anything adopted since.
///
/// Invariant: nothing is stored unless every version verifies, from the genesis digest given to
/// the last, and the last names this member with this node's keys. Who serves the chain is not
/// trusted: it is read over TLS without a known pin, and the server must turn out to be a member
/// of the last version.
///
/// The genesis digest roots the chain, not its end: whoever held the threshold of keys of some
/// past version could sign a different history from there. `head`, the digest of the latest
/// version as a member the candidate trusts reads it, closes that; without it the caller shows
/// the digest it got, to be compared.
pub async fn join(
    dir: &crate::store::config::NodeDir,
    peer: &str,
    genesis: &str,
    head: Option<&str>,
) -> Result<SignedCharter, NodeError> {
    let cfg = dir.load_config()?;
    let state = dir.open_state()?;
    let held: Vec<SignedCharter> =
        state.charter_history()?.iter().map(|b| SignedCharter::parse(b)).collect::<Result<_, _>>()?;
    let key_sets = join_key_sets(dir, &cfg)?;
    let genesis = genesis_digest(genesis)?;
    let endpoint = peer.trim_end_matches('/');
    let endpoint = endpoint.strip_prefix("https://").unwrap_or(endpoint);
    let at = Candidate { endpoint, peer, member: &cfg.member, dir };
    let (keys, body, server_pin) = reach_candidate(&at, &key_sets).await?;
    let tls = &key_sets[keys].2;
    let latest = serde_json::from_slice::<Acts>(&body)
        .map_err(|source| NodeError::Decode {
            what: format!("the charter version the node at {peer} sent"),
            source,
        })?
        .version;
    let chain = fetch_chain(&at, tls, latest, &held, &genesis).await?;
    let last = chain
        .last()
        .ok_or_else(|| NodeError::Config(format!("the node at {peer} holds no charter version")))?
        .clone();
    check_head(&last, peer, head)?;
    check_names_me(&last, peer, &cfg, &key_sets[keys], dir)?;
    if !last.charter.members.iter().any(|m| m.tls_pin == server_pin && m.id != cfg.member) {
        return Err(NodeError::Config(format!(
            "the node at {peer} is not a member of charter version {} (its TLS key is not listed); join through a member's peer endpoint",
            last.charter.version
        )));
    }
    if last.charter.version <= held.last().map_or(0, |h| h.charter.version) {
        return Err(NodeError::Config(format!(
            "{} holds charter version {} already, the latest at {peer}; start it with `concord node run {}`",
            dir.root.display(),
            last.charter.version,
            dir.root.display()
        )));
    }
    log_and_store_joined(dir, &state, &held, &chain).await?;
    Ok(last)
}

/// One set of a member's keys: signing, witness cosigning, TLS.
type KeySet = (concord_log::NoteSigner, concord_log::checkpoint::CosignatureSigner, crate::net::tls::TlsKeys);

/// The key sets `join` may present, in the order it tries them.
fn join_key_sets(
    dir: &crate::store::config::NodeDir,
    cfg: &crate::store::config::NodeConfig,
) -> Result<Vec<KeySet>, NodeError> {
    // The keys the members may know: this node's, or a pending rotation's (a node that was down
    // while its rotation was adopted catches up with the new keys).
    let mut key_sets = vec![(dir.load_signer(cfg)?, dir.load_witness(cfg)?, dir.load_tls()?)];
    if dir.next_keys().is_dir() {
        let next = dir.clone().with_keys_in(&dir.next_keys());
        key_sets.push((next.load_signer(cfg)?, next.load_witness(cfg)?, next.load_tls()?));
    }
    Ok(key_sets)
}

/// The `--genesis` digest given to `join`, in lower case; refused unless it is 64 hex digits.
fn genesis_digest(genesis: &str) -> Result<String, NodeError> {
    let genesis = genesis.trim().to_ascii_lowercase();
    if genesis.len() != 64 || !genesis.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NodeError::Config(format!(
            "--genesis {genesis:?} is not a charter digest (64 hex digits); ask a member for the `genesis` field of `concord charter show --format json`"
        )));
    }
    Ok(genesis)
}

/// The peer listener `join` reads the chain from, and what its errors name.
struct Candidate<'a> {
    /// `host:port`, without a scheme.
    endpoint: &'a str,
    /// The peer as the operator gave it.
    peer: &'a str,
    /// This member's id.
    member: &'a str,
    /// This node's folder.
    dir: &'a crate::store::config::NodeDir,
}

impl Candidate<'_> {
    /// One GET at the candidate's peer, with `tls` as the client's keys: the body and the
    /// server's TLS pin.
    async fn get(
        &self,
        tls: &crate::net::tls::TlsKeys,
        path: String,
    ) -> Result<(bytes::Bytes, String), NodeError> {
        candidate_get(tls, self.endpoint, self.peer, self.member, self.dir, path).await
    }
}

/// The first key set the peer accepts, with its answer to `/v1/governance/acts` and its pin;
/// if it accepts none, the last refusal.
async fn reach_candidate(
    at: &Candidate<'_>,
    key_sets: &[KeySet],
) -> Result<(usize, bytes::Bytes, String), NodeError> {
    let peer = at.peer;
    let mut reached = None;
    let mut refusal = None;
    for (i, keys) in key_sets.iter().enumerate() {
        match at.get(&keys.2, "/v1/governance/acts".into()).await {
            Ok(r) => {
                reached = Some((i, r));
                break;
            }
            Err(e) => refusal = Some(e),
        }
    }
    let Some((keys, (body, server_pin))) = reached else {
        return Err(refusal.unwrap_or_else(|| NodeError::Config(format!("cannot reach {peer}"))));
    };
    Ok((keys, body, server_pin))
}

/// Fetches versions 1 to `latest` from the peer, each verified from the one before and the
/// first from the genesis digest; those this node holds must be the same.
async fn fetch_chain(
    at: &Candidate<'_>,
    tls: &crate::net::tls::TlsKeys,
    latest: u64,
    held: &[SignedCharter],
    genesis: &str,
) -> Result<Vec<SignedCharter>, NodeError> {
    let peer = at.peer;
    let mut chain: Vec<SignedCharter> = Vec::new();
    for version in 1..=latest {
        let (body, _) = at.get(tls, format!("/v1/governance/charter/{version}")).await?;
        let sc = SignedCharter::parse(&body)?;
        // What this node holds already must be what the chain says.
        if let Some(h) = held.get(chain.len())
            && h.charter.digest() != sc.charter.digest()
        {
            return Err(NodeError::Config(format!(
                "the node at {peer} serves charter version {version} with digest {}, this node holds digest {}; one of them is a fork: keep both notes and tell the members",
                sc.charter.digest(),
                h.charter.digest()
            )));
        }
        if sc.charter.version != version {
            return Err(NodeError::Config(format!(
                "the node at {peer} sent charter version {} when asked for version {version}",
                sc.charter.version
            )));
        }
        match chain.last() {
            None => {
                if sc.charter.digest() != genesis {
                    return Err(NodeError::Config(format!(
                        "the genesis charter at {peer} has digest {}, not the {genesis} you were given; this is not your federation's chain",
                        sc.charter.digest()
                    )));
                }
                sc.verify_genesis()?;
            }
            Some(prev) => sc.verify_successor(&prev.charter)?,
        }
        chain.push(sc);
    }
    Ok(chain)
}

/// With `head` given, the chain's last version must have that digest.
fn check_head(last: &SignedCharter, peer: &str, head: Option<&str>) -> Result<(), NodeError> {
    if let Some(head) = head
        && last.charter.digest() != head.trim().to_ascii_lowercase()
    {
        return Err(NodeError::Config(format!(
            "the latest charter version at {peer} is version {} with digest {}, not the {} you were given: that node is behind, or serves another history; join through another member",
            last.charter.version,
            last.charter.digest(),
            head.trim()
        )));
    }
    Ok(())
}

/// The chain's last version is of this node's federation and names this member with `keys`.
fn check_names_me(
    last: &SignedCharter,
    peer: &str,
    cfg: &crate::store::config::NodeConfig,
    keys: &KeySet,
    dir: &crate::store::config::NodeDir,
) -> Result<(), NodeError> {
    let (signer, witness, tls) = keys;
    if last.charter.federation != cfg.federation {
        return Err(NodeError::Config(format!(
            "the chain at {peer} is federation {}, this node was made for {}",
            last.charter.federation, cfg.federation
        )));
    }
    let me = last.charter.member(&cfg.member).ok_or_else(|| {
        NodeError::Config(format!(
            "charter version {} (the latest at {peer}) does not name member {}; join once the version that adds it is adopted",
            last.charter.version, cfg.member
        ))
    })?;
    if me.vkey != signer.vkey() || me.tls_pin != tls.pin || me.witness_vkey != witness.verifier().to_vkey() {
        return Err(NodeError::Config(format!(
            "charter version {} lists other keys for {} than {} holds; was the card proposed from another folder?",
            last.charter.version,
            cfg.member,
            dir.root.display()
        )));
    }
    Ok(())
}

/// Logs every version of `chain` this node does not hold yet, then stores them all.
async fn log_and_store_joined(
    dir: &crate::store::config::NodeDir,
    state: &crate::store::state::State,
    held: &[SignedCharter],
    chain: &[SignedCharter],
) -> Result<(), NodeError> {
    let new = &chain[held.len()..];
    // Logged first, then stored in one transaction: a crash in between leaves a node that joins
    // again (and logs the versions again), never versions held without their entries.
    let log = dir.open_log()?;
    let mut prev: Option<&SignedCharter> = held.len().checked_sub(1).map(|i| &chain[i]);
    for sc in new {
        let signers = match prev {
            None => sc.signed_by()?,
            Some(p) => sc.signed_by_members_of(&p.charter),
        };
        let entry = LogEntry::CharterAccepted {
            time: now(),
            version: sc.charter.version,
            digest: sc.charter.digest(),
            signers,
        };
        log.append(entry.to_bytes()?).await?;
        prev = Some(sc);
    }
    state.store_charters(&new.iter().map(|sc| (sc.charter.version, sc.to_bytes())).collect::<Vec<_>>())?;
    Ok(())
}

/// One GET of `join` at a peer listener whose pin is not known yet.
async fn candidate_get(
    tls: &crate::net::tls::TlsKeys,
    endpoint: &str,
    peer: &str,
    member: &str,
    dir: &crate::store::config::NodeDir,
    path: String,
) -> Result<(bytes::Bytes, String), NodeError> {
    let (resp, pin) = crate::net::client::candidate_call(tls, endpoint, "GET", &path, pull_budget())
        .await
        .map_err(|e| match e {
            // In TLS 1.3 a server refuses a client certificate after the client's handshake, so
            // the refusal shows as a failed handshake or a closed connection.
            NodeError::Peer { message, .. }
                if !message.contains("cannot connect")
                    && !message.contains("timed out")
                    && !message.contains("no answer within") =>
            {
                NodeError::Config(format!(
                    "the node at {peer} did not answer ({message}): it refuses this node's certificate until a charter version it holds names member {member} with these keys. A member proposes `--add-member {}`; once that version is adopted, join again",
                    dir.card().display()
                ))
            }
            other => other,
        })?;
    if resp.status != 200 {
        let (code, message) = resp.error_parts();
        return Err(NodeError::Config(format!("the node at {peer} answered {path} with {code}: {message}")));
    }
    Ok((resp.body, pin))
}
