//! Access requests: the proper channel for what a policy does not release by itself.
//!
//! The requester's analyst files a request (dataset, actions, purpose, legal basis, period) with
//! its own node, which signs it and sends it to the owner. The owner keeps it and logs it; its
//! stewards approve it (a grant for a period, which Cedar sees in its context and the baseline
//! accepts for `important` data), refuse it with a reason, or later revoke the grant. Every
//! decision is a note signed by the owner, logged on its side, pushed to the requester (which
//! verifies and logs it too) and fetched again by the requester when it lists its requests.
//!
//! Invariant: a grant exists only on the owner's node, and only from a decision the owner
//! signed and logged; a requester's copy of a decision grants nothing.

use std::time::Duration;

use concord_log::Note;
use concord_policy::Action;

use crate::NodeError;
use crate::net::client::{Budget, peer_call_paced, peer_call_with};
use crate::net::protocol::{AccessDecision, AccessRequest, envelope, new_request_id, open_envelope};
use crate::node::Node;
use crate::store::entry::{LogEntry, Notes, b64};
use crate::store::state::DecisionRecord;
use crate::wire::{AccessAsk, AccessRecord, AccessStatus, Decision, Direction};

/// Largest access-request or decision note.
pub const MAX_ACCESS_NOTE: usize = 16 * 1024;
/// Access requests one member may have pending with one owner: filing costs the owner a log
/// entry, so it is bounded.
pub const MAX_PENDING: usize = 100;
/// Longest period one request may ask for, in days.
pub const MAX_DAYS: u64 = 366;

fn record_of(r: &AccessRequest, direction: Direction) -> AccessRecord {
    AccessRecord {
        id: r.request_id.clone(),
        direction,
        requester: r.requester.clone(),
        owner: r.owner.clone(),
        dataset: r.dataset.clone(),
        actions: r.actions.clone(),
        purpose: r.purpose.clone(),
        legal_basis: r.legal_basis.clone(),
        valid_from: r.valid_from,
        valid_until: r.valid_until,
        status: AccessStatus::Pending,
        reason: None,
        filed_at: r.time,
        decided_at: None,
    }
}

fn budget() -> Budget {
    Budget { timeout: Duration::from_secs(10), max_bytes: 64 * 1024 }
}

/// The actions an ask names, each once in the order first named; refused if it names none.
fn requested_actions(asked: &[Action]) -> Result<Vec<Action>, NodeError> {
    let mut actions: Vec<Action> = Vec::new();
    for a in asked {
        if !actions.contains(a) {
            actions.push(*a);
        }
    }
    if actions.is_empty() {
        return Err(NodeError::BadRequest("name at least one action: aggregate, read_rows, describe".into()));
    }
    Ok(actions)
}

/// The period (unix seconds, from and until) a decision sets: an approval from now (or the
/// start asked) to the end asked, cut to `days`; a revocation ends it now; a refusal is empty.
fn granted_period(
    id: &str,
    record: &AccessRecord,
    decision: Decision,
    days: Option<u64>,
    now: i64,
) -> Result<(i64, i64), NodeError> {
    let (from, until) = match (decision, days) {
        (Decision::Approve, Some(d)) => {
            let d = d.clamp(1, MAX_DAYS) as i64;
            (record.valid_from.max(now), record.valid_until.min(now.saturating_add(d * 86_400)))
        }
        (Decision::Approve, None) => (record.valid_from.max(now), record.valid_until),
        (Decision::Revoke, _) => (record.valid_from, now),
        (Decision::Refuse, _) => (record.valid_from, record.valid_from),
    };
    if decision == Decision::Approve && until <= now {
        return Err(NodeError::Conflict(format!("the period access request {id} asked for is over")));
    }
    Ok((from, until))
}

/// The "access request decided" entry of a signed decision: its public note; the reason is a
/// detail the two parties keep.
fn decided_entry(
    d: &AccessDecision,
    note: &Note,
    details: &[u8],
    charter: &concord_charter::Charter,
) -> LogEntry {
    LogEntry::AccessRequestDecided {
        time: crate::store::entry::now(),
        request_id: d.request_id.clone(),
        requester: d.requester.clone(),
        owner: d.owner.clone(),
        dataset: d.dataset.clone(),
        decision: d.decision,
        valid_until: d.valid_until,
        decision_note: b64(&note.to_bytes()),
        notes: Notes::public(charter, Some(details), None, None),
    }
}

impl Node {
    /// Requester side: signs the request, sends it to the owner, and keeps and logs it once
    /// the owner has. A request the owner refuses to file (no such dataset, a member it does
    /// not know) leaves nothing behind.
    pub async fn file_access_request(&self, ask: &AccessAsk) -> Result<AccessRecord, NodeError> {
        let (owner, dataset) = ask.dataset.split_once('.').ok_or_else(|| {
            NodeError::BadRequest(format!("dataset {:?} must be named as member.dataset", ask.dataset))
        })?;
        let charter = self.charter();
        let card = charter.charter.member(owner).ok_or_else(|| {
            NodeError::UnknownMember(format!("{owner} is not a member of {}", self.federation()))
        })?;
        if owner == self.cfg.member {
            return Err(NodeError::BadRequest(format!(
                "{} is this member's own dataset; its analysts need no access request",
                ask.dataset
            )));
        }
        if ask.days == 0 || ask.days > MAX_DAYS {
            return Err(NodeError::BadRequest(format!("the period must be from 1 to {MAX_DAYS} days")));
        }
        let actions = requested_actions(&ask.actions)?;
        let now = chrono::Utc::now().timestamp();
        let request = AccessRequest {
            federation: self.federation().to_owned(),
            request_id: new_request_id(),
            requester: self.cfg.member.clone(),
            owner: owner.to_owned(),
            dataset: dataset.to_owned(),
            actions,
            purpose: ask.purpose.trim().to_owned(),
            legal_basis: ask.legal_basis.trim().to_owned(),
            valid_from: now,
            valid_until: now.saturating_add((ask.days as i64).saturating_mul(86_400)),
            time: now,
        };
        let (note, details) = request.sign(&self.keys().signer)?;
        let body = envelope(&note, &details);
        self.send_access_request(card, owner, body.clone()).await?;
        let record = record_of(&request, Direction::Out);
        self.state.put_access_request(&record, &body)?;
        self.log_filed(&request, &note, &details).await?;
        Ok(record)
    }

    /// Sends a signed access request to its owner; an owner that does not file it is an error.
    async fn send_access_request(
        &self,
        card: &concord_charter::MemberCard,
        owner: &str,
        body: Vec<u8>,
    ) -> Result<(), NodeError> {
        let resp =
            peer_call_paced(&self.keys().tls, card, "POST", "/v1/access/request", body, budget()).await?;
        if resp.status != 200 {
            let (code, message) = resp.failure();
            return Err(NodeError::Peer { member: owner.to_owned(), code, message });
        }
        Ok(())
    }

    /// Logs an access request: its public note (actions, period); the purpose and legal basis
    /// are details the two parties keep.
    async fn log_filed(&self, r: &AccessRequest, note: &Note, details: &[u8]) -> Result<(), NodeError> {
        let entry = LogEntry::AccessRequestFiled {
            time: crate::store::entry::now(),
            request_id: r.request_id.clone(),
            requester: r.requester.clone(),
            owner: r.owner.clone(),
            dataset: r.dataset.clone(),
            request_note: b64(&note.to_bytes()),
            notes: Notes::public(&self.charter().charter, Some(details), None, None),
        };
        self.log.append(entry.to_bytes()?).await?;
        Ok(())
    }

    /// Owner side: a peer's signed access request, checked, logged and kept as pending.
    pub async fn receive_access_request(&self, tls_member: &str, body: &[u8]) -> Result<String, NodeError> {
        let (note, details, request) = self.verified_access_request(tls_member, body)?;
        self.check_can_file(&request).await?;
        self.log_filed(&request, &note, &details).await?;
        self.state.put_access_request(&record_of(&request, Direction::In), body)?;
        tracing::info!(request = %request.request_id, requester = %request.requester, dataset = %request.dataset, "access request filed");
        Ok(request.request_id)
    }

    /// A peer's access request note, details and fields: within size, of the TLS peer, signed by its key.
    fn verified_access_request(
        &self,
        tls_member: &str,
        body: &[u8],
    ) -> Result<(Note, Vec<u8>, AccessRequest), NodeError> {
        if body.len() > MAX_ACCESS_NOTE {
            return Err(NodeError::TooLarge(format!(
                "an access request note of {} bytes is over {MAX_ACCESS_NOTE}",
                body.len()
            )));
        }
        let (note, details) = open_envelope(body)?;
        let request = AccessRequest::from_parts(&note, &details)?;
        if request.requester != tls_member {
            return Err(NodeError::UnknownMember(format!(
                "the request names requester {} but the TLS connection is {tls_member}'s",
                request.requester
            )));
        }
        let charter = self.charter();
        let card = charter.charter.member(&request.requester).ok_or_else(|| {
            NodeError::UnknownMember(format!(
                "{} is not a member of {}",
                request.requester,
                self.federation()
            ))
        })?;
        note.verify(std::slice::from_ref(&card.verifier()?)).map_err(|e| {
            NodeError::BadSignature(format!("access request is not signed by {}'s key: {e}", card.id))
        })?;
        Ok((note, details, request))
    }

    /// Whether this node files `request`: addressed to it, fresh, in bounds, on a dataset it has.
    async fn check_can_file(&self, request: &AccessRequest) -> Result<(), NodeError> {
        if request.federation != self.federation() || request.owner != self.cfg.member {
            return Err(NodeError::BadRequest(format!(
                "the access request is addressed to {}/{}, this node is {}/{}",
                request.federation,
                request.owner,
                self.federation(),
                self.cfg.member
            )));
        }
        let now = chrono::Utc::now().timestamp();
        if now.abs_diff(request.time) > crate::net::protocol::FRESHNESS_SECS.unsigned_abs() {
            return Err(NodeError::Stale(format!(
                "access request time {} is far from this node's clock ({now}); check both clocks",
                request.time
            )));
        }
        if request.valid_until.saturating_sub(request.valid_from) > (MAX_DAYS as i64) * 86_400 {
            return Err(NodeError::BadRequest(format!("a request may ask for at most {MAX_DAYS} days")));
        }
        let pending = self.state.pending_from(&request.requester)?;
        if pending >= MAX_PENDING {
            return Err(NodeError::Conflict(format!(
                "{} already has {pending} access requests pending with {}; wait for decisions before filing more",
                request.requester, self.cfg.member
            )));
        }
        if !self.datasets().await?.map.contains_key(&request.dataset) {
            return Err(NodeError::NotFound(format!(
                "{} has no dataset {}; nothing was filed",
                self.cfg.member, request.dataset
            )));
        }
        Ok(())
    }

    /// Why a grant of `actions` on `d` to the request's requester, for its purpose, could never
    /// be used: the baseline or the Cedar rules would refuse every query even with it, or no
    /// column could be read as rows.
    fn unusable_grant(&self, d: &super::LoadedDataset, record: &AccessRecord) -> Option<String> {
        let actions = &record.actions;
        let ctx = concord_policy::AccessContext {
            requester: record.requester.clone(),
            purpose: record.purpose.clone(),
            grants: vec![("(this grant)".to_owned(), actions.to_vec())],
            charter_version: self.charter_version(),
        };
        let baseline = self.baseline();
        for a in actions {
            if let concord_policy::Decision::Deny { reason } =
                d.policy.decide(&self.cfg.member, &record.dataset, *a, &ctx, &baseline)
            {
                return Some(format!("{} would still be refused: {reason}", a.as_str()));
            }
            if *a == Action::ReadRows
                && !d.policy.columns.values().any(|m| *m == concord_policy::ColumnMode::Plain)
            {
                return Some(
                    "read_rows releases only plain columns, and the policy makes none plain".to_owned(),
                );
            }
        }
        None
    }

    /// Owner side: a steward approves (for at most `days`, within the period asked), refuses or
    /// revokes. The decision is signed, logged, recorded with its grant, then pushed to the
    /// requester.
    pub async fn decide_access_request(
        &self,
        id: &str,
        decision: Decision,
        reason: &str,
        days: Option<u64>,
    ) -> Result<AccessRecord, NodeError> {
        let record = self.decidable_request(id, decision)?;
        let status = decision.status();
        // A grant the policy would never honour is not signed: the requester would hear
        // "approved" and be refused at every query.
        if decision == Decision::Approve {
            self.check_usable_grant(&record).await?;
        }
        let reason = reason.trim();
        if decision != Decision::Approve && reason.is_empty() {
            return Err(NodeError::BadRequest(format!("to {} a request needs a reason", decision.as_str())));
        }
        let now = chrono::Utc::now().timestamp();
        let (from, until) = granted_period(id, &record, decision, days, now)?;
        let actions = record.actions.clone();
        let d = AccessDecision {
            federation: self.federation().to_owned(),
            request_id: id.to_owned(),
            owner: self.cfg.member.clone(),
            requester: record.requester.clone(),
            dataset: record.dataset.clone(),
            decision: status,
            actions,
            valid_from: from,
            valid_until: until,
            reason: if reason.is_empty() { "approved".to_owned() } else { reason.to_owned() },
            time: now,
        };
        let note_bytes = self.sign_log_and_record(id, &d).await?;
        tracing::info!(request = %id, requester = %d.requester, decision = %status, "access request decided");
        self.push_decision(id, &d.requester, &note_bytes).await;
        self.state
            .access_request(id)?
            .ok_or_else(|| NodeError::State(format!("access request {id} vanished")))
    }

    /// Signs decision `d`, logs it, then records it with its grant; returns its note as sent.
    async fn sign_log_and_record(&self, id: &str, d: &AccessDecision) -> Result<Vec<u8>, NodeError> {
        let (note, details) = d.sign(&self.keys().signer)?;
        let entry = decided_entry(d, &note, &details, &self.charter().charter);
        // Logged before the grant takes effect.
        self.log.append(entry.to_bytes()?).await?;
        let note_bytes = envelope(&note, &details);
        self.state.decide_access(&DecisionRecord {
            id,
            status: d.decision,
            valid_from: d.valid_from,
            valid_until: d.valid_until,
            reason: &d.reason,
            note: &note_bytes,
            grant: true,
        })?;
        Ok(note_bytes)
    }

    /// A request filed with this node that `decision` may decide: a pending one to approve or
    /// refuse, an approved one to revoke.
    fn decidable_request(&self, id: &str, decision: Decision) -> Result<AccessRecord, NodeError> {
        let record =
            self.state.access_request(id)?.filter(|r| r.direction == Direction::In).ok_or_else(|| {
                NodeError::NotFound(format!("no access request {id} was filed with {}", self.cfg.member))
            })?;
        let allowed_from = match decision {
            Decision::Approve | Decision::Refuse => AccessStatus::Pending,
            Decision::Revoke => AccessStatus::Approved,
        };
        let status = decision.status();
        if record.status != allowed_from {
            return Err(NodeError::Conflict(format!(
                "access request {id} is {}; only a {allowed_from} request can be {status}",
                record.status
            )));
        }
        Ok(record)
    }

    /// Refuses an approval whose grant the dataset's policy would never honour.
    async fn check_usable_grant(&self, record: &AccessRecord) -> Result<(), NodeError> {
        if let Some(d) = self.datasets().await?.map.get(&record.dataset)
            && let Some(why) = self.unusable_grant(d, record)
        {
            return Err(NodeError::Conflict(format!(
                "no grant can release {} to {} as asked: {why}. Refuse the request instead (with this reason), or \
                 change the policy first",
                record.dataset, record.requester
            )));
        }
        Ok(())
    }

    /// Sends a signed decision to its requester; one that does not take it now fetches it when
    /// it lists its requests.
    async fn push_decision(&self, id: &str, requester: &str, note_bytes: &[u8]) {
        if let Some(card) = self.charter().charter.member(requester) {
            match peer_call_with(
                &self.keys().tls,
                card,
                "POST",
                "/v1/access/decision",
                note_bytes.to_vec(),
                budget(),
            )
            .await
            {
                Ok(r) if r.status == 200 => {}
                Ok(r) => {
                    tracing::warn!(request = %id, status = r.status, "requester did not take the decision; it fetches it when it lists its requests")
                }
                Err(e) => {
                    tracing::warn!(request = %id, "requester unreachable for the decision ({e}); it fetches it when it lists its requests")
                }
            }
        }
    }

    /// Requester side: an owner's signed decision on one of this node's requests, verified,
    /// logged and recorded. The same decision twice is taken once.
    pub async fn receive_access_decision(&self, tls_member: &str, body: &[u8]) -> Result<(), NodeError> {
        if body.len() > MAX_ACCESS_NOTE {
            return Err(NodeError::TooLarge(format!(
                "a decision note of {} bytes is over {MAX_ACCESS_NOTE}",
                body.len()
            )));
        }
        let charter = self.charter();
        let card = charter.charter.member(tls_member).ok_or_else(|| {
            NodeError::UnknownMember(format!("{tls_member} is not a member of {}", self.federation()))
        })?;
        let (d, note, details) = AccessDecision::verify(body, &card.verifier()?)
            .map_err(|e| NodeError::BadSignature(format!("the decision is not {tls_member}'s: {e}")))?;
        let record = self
            .state
            .access_request(&d.request_id)?
            .filter(|r| {
                r.direction == Direction::Out && r.owner == tls_member && r.requester == self.cfg.member
            })
            .ok_or_else(|| {
                NodeError::NotFound(format!(
                    "this node filed no access request {} with {tls_member}",
                    d.request_id
                ))
            })?;
        let status = d.decision;
        let already = match status {
            AccessStatus::Revoked => record.status == AccessStatus::Revoked,
            _ => record.status != AccessStatus::Pending,
        };
        if already {
            return Ok(());
        }
        let entry = decided_entry(&d, &note, &details, &charter.charter);
        self.log.append(entry.to_bytes()?).await?;
        self.state.decide_access(&DecisionRecord {
            id: &d.request_id,
            status,
            valid_from: d.valid_from,
            valid_until: d.valid_until,
            reason: &d.reason,
            note: body,
            grant: false,
        })
    }

    /// Owner side: the decision note of a request, for the requester that filed it.
    pub fn access_decision_note(&self, tls_member: &str, id: &str) -> Result<Option<Vec<u8>>, NodeError> {
        let Some(r) = self
            .state
            .access_request(id)?
            .filter(|r| r.direction == Direction::In && r.requester == tls_member)
        else {
            return Err(NodeError::NotFound(format!("no access request {id} from {tls_member}")));
        };
        if r.status == AccessStatus::Pending {
            return Ok(None);
        }
        self.state.decision_note(id)
    }

    /// The access requests this node keeps; pending ones this node filed are first checked with
    /// their owners, each within a short time.
    pub async fn access_requests(&self) -> Result<Vec<AccessRecord>, NodeError> {
        let now = chrono::Utc::now().timestamp();
        for r in self.state.access_requests(now)? {
            if r.direction != Direction::Out
                || !matches!(r.status, AccessStatus::Pending | AccessStatus::Approved)
            {
                continue;
            }
            let charter = self.charter();
            let Some(card) = charter.charter.member(&r.owner) else { continue };
            let path = format!("/v1/access/decision/{}", r.id);
            match peer_call_with(&self.keys().tls, card, "GET", &path, Vec::new(), budget()).await {
                Ok(resp) if resp.status == 200 && !resp.body.is_empty() => {
                    if let Err(e) = self.receive_access_decision(&r.owner, &resp.body).await {
                        tracing::warn!(request = %r.id, owner = %r.owner, "decision not taken: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(request = %r.id, owner = %r.owner, "owner unreachable: {e}"),
            }
        }
        self.state.access_requests(now)
    }
}
