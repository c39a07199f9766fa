//! The owner's side of a federated query: a peer's signed request checked (member, signature,
//! federation, charter version, freshness, replay), decided by the dataset's policy, its
//! sub-query checked and run, the decision logged, and the release signed.
//!
//! Invariant: nothing is released before its "access served" entry is on disk.

use std::sync::Arc;

use concord_log::Note;
use concord_policy::{AccessContext, Decision};
use concord_query::QueryError;
use concord_query::owner::{OwnerAnswer, parse_subquery, run_release};
use concord_query::release::{BudgetReport, Rules, Verdict};

use crate::NodeError;
use crate::net::protocol::{
    FRESHNESS_SECS, QueryRequest, ReleaseDetails, ReleaseReceipt, SignedRequest, commitment,
    reason_commitment, result_digest,
};
use crate::node::Node;
use crate::store::entry::{LogEntry, Notes, ServedDecision};
use crate::store::state::{Durability, NoteKind};
use crate::wire::{AccessVerdict, ErrorCode};

/// Largest query request body (note and details, base64 in JSON): its note is kept in a log
/// entry of at most 64 KiB, and its details in the entry too where notes are public.
pub const MAX_REQUEST_BODY: usize = 40 * 1024;

/// One sub-query to answer as an owner.
pub struct Ask<'a> {
    /// The requesting member's id (this member's own for its parts of its analysts' queries).
    pub requester: &'a str,
    /// The name of this node's dataset the sub-query reads.
    pub dataset: &'a str,
    /// The sub-query's SQL text, parsed and checked again here.
    pub sql: &'a str,
    /// The purpose the requester states; the policy's Cedar context and the grants see it.
    pub purpose: &'a str,
    /// The peer's request id: what a privacy budget is charged under.
    pub request_id: Option<&'a str>,
}

/// Sub-queries decided at the check round, kept for their run: by (requester, request id), with
/// the time their reservation ends. Bounded: past the bound the oldest is dropped, and its run
/// decides again.
#[derive(Default)]
pub struct CheckedRequests(std::sync::Mutex<std::collections::HashMap<(String, String), (i64, Decided)>>);

/// Decided sub-queries kept at once.
const MAX_CHECKED: usize = 4096;

impl CheckedRequests {
    fn put(&self, requester: &str, id: &str, until: i64, d: Decided) {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = chrono::Utc::now().timestamp();
        m.retain(|_, (u, _)| *u >= now);
        if m.len() >= MAX_CHECKED
            && let Some(oldest) = m.iter().min_by_key(|(_, (u, _))| *u).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert((requester.to_owned(), id.to_owned()), (until, d));
    }

    fn holds(&self, requester: &str, id: &str) -> bool {
        let m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.contains_key(&(requester.to_owned(), id.to_owned()))
    }

    fn take(&self, requester: &str, id: &str) -> Option<Decided> {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.remove(&(requester.to_owned(), id.to_owned())).map(|(_, d)| d)
    }
}

/// A sub-query the owner decided to answer: everything checked, nothing run or charged.
pub struct Decided {
    /// The checked sub-query with the rules it is released under (policy, baseline, privacy
    /// cost).
    pub plan: concord_query::release::ReleasePlan,
    table: Arc<dyn datafusion::catalog::TableProvider>,
    /// The rule that allowed it, and the grant it uses.
    rule: String,
    grant: Option<String>,
    rows: u64,
}

impl Node {
    /// The owner's side: the sub-query's shape, the policy's decision (baseline, Cedar), column
    /// modes and release rules, the privacy budget, execution within the node's limits. Used for
    /// peers' requests and for this member's own parts of a federated query.
    pub async fn answer_subquery(&self, ask: &Ask<'_>) -> Result<OwnerAnswer, NodeError> {
        let decided = self.decide_subquery(ask).await?;
        self.run_decided(ask, &decided).await
    }

    /// Charges a decided sub-query's privacy cost, then runs it within the node's limits.
    pub async fn run_decided(&self, ask: &Ask<'_>, decided: &Decided) -> Result<OwnerAnswer, NodeError> {
        let budget = match (&decided.plan.privacy, decided.plan.rules.policy.release.privacy.as_ref()) {
            (Some(p), Some(dp)) => Some(self.charge(ask, p.cost, dp)?),
            _ => None,
        };
        let limits = &self.cfg.limits;
        let _slot =
            self.subquery_slots.acquire().await.map_err(|_| NodeError::Stopped("the sub-query queue"))?;
        let exec = limits.exec();
        let run = run_release(&decided.plan, ask.dataset, decided.table.clone(), &exec);
        let mut answer =
            match tokio::time::timeout(std::time::Duration::from_secs(limits.subquery_timeout_secs), run)
                .await
            {
                Ok(answer) => answer?,
                Err(_) => {
                    return Err(NodeError::Query(QueryError::Limit(format!(
                        "the sub-query ran longer than the {} s {} allows one sub-query",
                        limits.subquery_timeout_secs, self.cfg.member
                    ))));
                }
            };
        // Provenance counts the rows the dataset holds, whether they were read or the answer
        // came from the file's statistics (the report says which). What the scan read after
        // the owner's pruning would tell a requester about values it may not see. Under
        // differential privacy the dataset's size is an exact count: not told.
        answer.rows_scanned = if decided.plan.privacy.is_some() { None } else { Some(decided.rows) };
        answer.report.budget = budget;
        answer.report.grant = decided.grant.clone();
        answer.report.rule = Some(decided.rule.clone());
        Ok(answer)
    }

    /// Every check of a sub-query short of running it: the dataset, the sub-query's shape, the
    /// access decision, the policy in force, column modes and release rules.
    pub async fn decide_subquery(&self, ask: &Ask<'_>) -> Result<Decided, NodeError> {
        let datasets = self.datasets().await?;
        let d = datasets.map.get(ask.dataset).ok_or_else(|| {
            NodeError::NotFound(format!("{} has no dataset {}", self.cfg.member, ask.dataset))
        })?;
        let table = d.table.clone().map_err(|why| {
            NodeError::Query(QueryError::Dataset { name: ask.dataset.to_owned(), reason: why })
        })?;
        let sub = parse_subquery(ask.dataset, table.clone(), ask.sql).await?;
        let action = sub.action();
        let baseline = self.baseline();
        let ctx = self.access_context(ask)?;
        let rule = self.allowing_rule(d, ask, action, &ctx, &baseline)?;
        let own = ask.requester == self.cfg.member;
        if !own && let Err(e) = super::policy_in_force(&self.charter().charter, d) {
            return Err(NodeError::PolicyRefused(format!(
                "{} does not serve {} to other members: {e}; its stewards must set a policy that keeps it",
                self.cfg.member, ask.dataset
            )));
        }
        let unit_is_row = !own && d.unit_is_row(&self.cfg.limits.exec()).await?;
        let rules = Rules { policy: d.policy.clone(), baseline, own, unit_is_row };
        let plan = concord_query::release::check(sub, rules)?;
        // Fixed by the policy, refused before anything is charged.
        if let Some(n) = plan.public_groups()
            && n > self.cfg.limits.max_groups
        {
            return Err(NodeError::Query(QueryError::Limit(format!(
                "the public keys of the group columns make {n} groups, more than the {} {} releases for one \
                 request; group by fewer columns",
                self.cfg.limits.max_groups, self.cfg.member
            ))));
        }
        Ok(Decided {
            plan,
            table,
            rule,
            grant: ctx.grant_for(action).map(str::to_owned),
            rows: d.record.rows,
        })
    }

    /// The access context `ask` is decided in: its requester, purpose and their live grants.
    fn access_context(&self, ask: &Ask<'_>) -> Result<AccessContext, NodeError> {
        Ok(AccessContext {
            requester: ask.requester.to_owned(),
            purpose: ask.purpose.to_owned(),
            grants: self.state.live_grants(
                ask.requester,
                ask.dataset,
                chrono::Utc::now().timestamp(),
                Some(ask.purpose),
            )?,
            charter_version: self.charter_version(),
        })
    }

    /// The rule of `d`'s policy that allows `action` to `ask`, or the policy's refusal.
    fn allowing_rule(
        &self,
        d: &super::LoadedDataset,
        ask: &Ask<'_>,
        action: concord_policy::Action,
        ctx: &AccessContext,
        baseline: &concord_policy::Baseline,
    ) -> Result<String, NodeError> {
        match d.policy.decide(&self.cfg.member, ask.dataset, action, ctx, baseline) {
            Decision::Allow { by } => Ok(by),
            Decision::Deny { reason } if action == concord_policy::Action::ReadRows => {
                Err(NodeError::PolicyRefused(format!(
                    "{reason}. The query reads rows of {}. What works: aggregates (COUNT, SUM, AVG, MIN, MAX) \
                     with WHERE and GROUP BY, and any SQL over their results",
                    ask.dataset
                )))
            }
            Decision::Deny { reason } => Err(NodeError::PolicyRefused(reason)),
        }
    }

    /// Charges a query's privacy cost before any noise is drawn (taking the reservation its
    /// check round made, if any); an exhausted budget is a refusal that names the budget and
    /// what remains.
    fn charge(
        &self,
        ask: &Ask<'_>,
        cost: concord_policy::Units,
        dp: &concord_policy::Privacy,
    ) -> Result<BudgetReport, NodeError> {
        self.spend(ask, cost, dp, None)
    }

    /// With `reserve_until`, holds the cost for the request until then instead of charging it:
    /// the check round's reservation, which the request's run turns into a charge.
    fn spend(
        &self,
        ask: &Ask<'_>,
        cost: concord_policy::Units,
        dp: &concord_policy::Privacy,
        reserve_until: Option<i64>,
    ) -> Result<BudgetReport, NodeError> {
        let request_id = ask.request_id.ok_or_else(|| {
            NodeError::Internal("a release under differential privacy needs a request id to charge".into())
        })?;
        let spent = match reserve_until {
            None => self.state.charge(
                request_id,
                ask.dataset,
                ask.requester,
                cost.0,
                dp.budget_per_requester.0,
                dp.budget_per_dataset.0,
            )?,
            Some(until) => self.state.reserve(
                request_id,
                ask.dataset,
                ask.requester,
                cost.0,
                (dp.budget_per_requester.0, dp.budget_per_dataset.0),
                until,
            )?,
        };
        let param = dp.mechanism.parameter();
        let units = concord_policy::Units;
        match spent {
            Ok(spent) => Ok(BudgetReport {
                parameter: param.to_owned(),
                charged: cost.to_string(),
                requester_remaining: units(dp.budget_per_requester.0.saturating_sub(spent.by_requester))
                    .to_string(),
                dataset_remaining: units(dp.budget_per_dataset.0.saturating_sub(spent.on_dataset))
                    .to_string(),
            }),
            Err(before) => Err(self.budget_exhausted(ask, cost, dp, before)),
        }
    }

    /// The refusal of a query costing `cost` when `before` was spent: which budget has too little left.
    fn budget_exhausted(
        &self,
        ask: &Ask<'_>,
        cost: concord_policy::Units,
        dp: &concord_policy::Privacy,
        before: crate::store::state::Spent,
    ) -> NodeError {
        let param = dp.mechanism.parameter();
        let units = concord_policy::Units;
        let left_requester = units(dp.budget_per_requester.0.saturating_sub(before.by_requester));
        let left_dataset = units(dp.budget_per_dataset.0.saturating_sub(before.on_dataset));
        let which = if left_requester < cost {
            format!(
                "{}'s privacy budget on {} ({param} {}) has {left_requester} left",
                ask.requester, ask.dataset, dp.budget_per_requester
            )
        } else {
            format!(
                "the privacy budget of {} for all requesters ({param} {}) has {left_dataset} left",
                ask.dataset, dp.budget_per_dataset
            )
        };
        NodeError::PolicyRefused(format!(
            "budget exhausted: {which}, and this query costs {cost}; ask {}'s stewards for more, or query less",
            self.cfg.member
        ))
    }
}

/// Checks before authentication: size, syntax, the TLS identity, the member's signature, the
/// details the note commits to.
fn authenticate(node: &Node, tls_member: &str, body: &[u8]) -> Result<SignedRequest, NodeError> {
    if body.len() > MAX_REQUEST_BODY {
        return Err(NodeError::TooLarge(format!(
            "a request of {} bytes is over {MAX_REQUEST_BODY}; shorten the SQL",
            body.len()
        )));
    }
    let signed = SignedRequest::from_bytes(body)?;
    let request = &signed.request;
    if request.requester != tls_member {
        return Err(NodeError::UnknownMember(format!(
            "the request names requester {} but the TLS connection is {tls_member}'s",
            request.requester
        )));
    }
    let charter = node.charter();
    let requester = charter.charter.member(&request.requester).ok_or_else(|| {
        NodeError::UnknownMember(format!("{} is not a member of {}", request.requester, node.federation()))
    })?;
    signed.note.verify(std::slice::from_ref(&requester.verifier()?)).map_err(|e| {
        NodeError::BadSignature(format!(
            "request {} is not signed by {}'s key: {e}",
            request.request_id, requester.id
        ))
    })?;
    // A request for another node is no access here: counted, not logged (its note would not
    // name this node, and a log holds no note that says otherwise than its entry).
    if request.federation != node.federation() || request.owner != node.cfg.member {
        return Err(NodeError::BadRequest(format!(
            "request is addressed to {}/{}, this node is {}/{}",
            request.federation,
            request.owner,
            node.federation(),
            node.cfg.member
        )));
    }
    Ok(signed)
}

/// Freshness and replay: a request from another time, or seen before, is no new access.
fn fresh_and_new(node: &Node, request: &QueryRequest) -> Result<(), NodeError> {
    fresh(request)?;
    // Whatever this request leads to is a durable commit after this record (see
    // `State::record_request`).
    if !record(node, request, Durability::WithNextCommit)? {
        return Err(NodeError::Replayed(format!("request {} was seen before", request.request_id)));
    }
    Ok(())
}

/// A request of this node's time, within the freshness window.
fn fresh(request: &QueryRequest) -> Result<(), NodeError> {
    let now = chrono::Utc::now().timestamp();
    // abs_diff cannot overflow, whatever time the request claims.
    if now.abs_diff(request.time) > FRESHNESS_SECS.unsigned_abs() {
        return Err(NodeError::Stale(format!(
            "request time {} is more than {FRESHNESS_SECS} s from this node's clock ({now}); check both clocks",
            request.time
        )));
    }
    Ok(())
}

/// Before when request ids (and kept releases) are forgotten: such requests are stale anyway.
fn forget_before() -> i64 {
    chrono::Utc::now().timestamp() - 2 * FRESHNESS_SECS - 60
}

/// Records a request's id as seen; false if it was seen before.
fn record(node: &Node, request: &QueryRequest, durability: Durability) -> Result<bool, NodeError> {
    let now = chrono::Utc::now().timestamp();
    node.state.record_request(&request.request_id, &request.requester, now, forget_before(), durability)
}

/// [`authenticate`], a failure counted against the connection's member.
fn authenticated(node: &Node, tls_member: &str, body: &[u8]) -> Result<SignedRequest, NodeError> {
    authenticate(node, tls_member, body).or_else(|e| {
        node.state.count_refusal(tls_member, e.code().as_str())?;
        Err(e)
    })
}

/// What the owner answers a released request with: the signed receipt, the release's details
/// (which the receipt commits to) and the Arrow IPC bytes.
pub struct Served {
    /// The request's id, for the node's log line.
    pub request_id: String,
    /// The release receipt, signed by this member.
    pub receipt: Note,
    /// The release's details (salt, result digest, counts, release report), which the receipt
    /// commits to.
    pub details: Vec<u8>,
    /// The partial result, as Arrow IPC bytes.
    pub ipc: Vec<u8>,
}

/// The owner's whole check of a peer's request, then the release.
///
/// What is not an access (a malformed, unsigned, stale or replayed request) is counted per
/// member and logged as a count, so that no member can grow this log without bound. Every
/// authenticated, fresh request is logged with its decision (`released`, `refused:<code>` or
/// `failed:<code>`) before anything is answered; errors carry codes and data-free reasons only.
/// The log holds the request's public note and the release's salted commitment; the details
/// stay with the two parties (unless the charter makes notes public).
pub async fn serve_query(node: &Node, tls_member: &str, body: &[u8]) -> Result<Served, NodeError> {
    let mut t = super::phases::Phases::start("serve");
    let signed = authenticated(node, tls_member, body)?;
    t.mark("authenticate");
    let request = &signed.request;
    let fresh = fresh_and_new(node, request);
    t.mark("replay_check");
    if let Err(e) = fresh {
        // A replay of a request that was released gets that release again, byte for byte: a
        // retry after a lost answer, never a fresh noise draw. It is no new access.
        if matches!(e, NodeError::Replayed(_))
            && let Some((receipt, ipc)) =
                node.state.kept_release(&request.request_id, &request.requester, forget_before())?
            && let Some(details) =
                node.state.notes(&request.request_id, &request.requester, NoteKind::Release)?
        {
            return Ok(Served {
                request_id: request.request_id.clone(),
                receipt: Note::parse(&receipt)?,
                details,
                ipc,
            });
        }
        node.state.count_refusal(&request.requester, e.code().as_str())?;
        return Err(e);
    }
    node.state.keep_notes(&request.request_id, &request.requester, NoteKind::Request, body)?;
    t.mark("keep_notes");
    let ran = decide_and_run(node, request).await;
    t.mark("decide_and_run");
    match ran {
        Ok((answer, ipc, decided)) => release_answer(node, &signed, answer, ipc, &decided, &mut t).await,
        Err(e) => Err(refused(node, &signed, e).await),
    }
}

/// Releases a sub-query that ran: its details kept, its "access served" entry logged, then its
/// receipt signed and the release kept for a replay.
async fn release_answer(
    node: &Node,
    signed: &SignedRequest,
    answer: OwnerAnswer,
    ipc: Vec<u8>,
    decided: &Decided,
    t: &mut super::phases::Phases,
) -> Result<Served, NodeError> {
    let request = &signed.request;
    let details = ReleaseDetails {
        salt: signed.salt.clone(),
        result_sha256: result_digest(&signed.salt, &ipc),
        rows_scanned: answer.rows_scanned,
        groups_released: answer.groups_released,
        release: answer.report.clone(),
    }
    .to_bytes();
    let release = commitment(&details);
    let cost = answer
        .report
        .budget
        .as_ref()
        .map_or_else(|| "none".to_owned(), |b| format!("{} {}", b.parameter, b.charged));
    let policy = format!("sha256:{}", decided.plan.rules.policy.digest());
    let charter = node.charter();
    let entry = served_entry(
        signed,
        ServedDecision::Released,
        Some(policy.clone()),
        Commitments { cost: Some(cost.clone()), release: Some(release.clone()), reason: None },
        Notes::public(&charter.charter, Some(&signed.details), Some(&details), None),
    );
    node.state.keep_notes(&request.request_id, &request.requester, NoteKind::Release, &details)?;
    t.mark("keep_details");
    // Invariant: nothing is released before its "access served" entry is on disk.
    let log_index = node.log.append(entry.to_bytes()?).await?;
    t.mark("log_append");
    let receipt = receipt_of(node, signed, policy, cost, release, log_index);
    tracing::info!(
        request = %request.request_id,
        requester = %request.requester,
        dataset = %request.dataset,
        log_index,
        "released partial aggregate"
    );
    let receipt = receipt.sign(&node.keys().signer)?;
    t.mark("sign");
    // Kept for a replay of this request (the same bytes, not a new draw); one not kept is
    // refused as a replay instead. The release itself is logged, so it goes out.
    if let Err(e) =
        node.state.keep_release(&request.request_id, &request.requester, &receipt.to_bytes(), &ipc)
    {
        tracing::warn!(request = %request.request_id, "release not kept for replays: {e}");
    }
    t.mark("keep_release");
    Ok(Served { request_id: request.request_id.clone(), receipt, details, ipc })
}

/// The receipt of a release logged at `log_index`, to be signed: what the requester's "access
/// made" entry holds, and what an audit matches with this node's entry.
fn receipt_of(
    node: &Node,
    signed: &SignedRequest,
    policy: String,
    cost: String,
    release: String,
    log_index: u64,
) -> ReleaseReceipt {
    let request = &signed.request;
    ReleaseReceipt {
        federation: request.federation.clone(),
        request_id: request.request_id.clone(),
        owner: node.cfg.member.clone(),
        requester: request.requester.clone(),
        dataset: request.dataset.clone(),
        request_note: signed.note_digest(),
        policy,
        cost,
        release,
        log_index,
    }
}

/// What an "access served" entry commits to besides the request's note.
struct Commitments {
    cost: Option<String>,
    release: Option<String>,
    reason: Option<String>,
}

/// The "access served" entry of a signed request: its public note, the decision, and what it
/// commits to.
fn served_entry(
    signed: &SignedRequest,
    decision: ServedDecision,
    policy: Option<String>,
    c: Commitments,
    notes: Option<Notes>,
) -> LogEntry {
    let request = &signed.request;
    LogEntry::AccessServed {
        time: crate::store::entry::now(),
        request_id: request.request_id.clone(),
        requester: request.requester.clone(),
        dataset: request.dataset.clone(),
        decision,
        request_note: crate::store::entry::b64(&signed.note.to_bytes()),
        policy,
        cost: c.cost,
        release: c.release,
        reason: c.reason,
        notes,
    }
}

/// Logs a request refused (or failed) with its code (its reason, which may quote the SQL, is a
/// note the parties keep), and returns the data-free reason the requester is sent. A refusal
/// that cannot be logged (this node's disk or database failing) is answered with that failure,
/// data-free as well: nothing of the node's own detail crosses either way.
async fn refused(node: &Node, signed: &SignedRequest, e: NodeError) -> NodeError {
    let request = &signed.request;
    let (decision, wire) = for_the_wire(&node.cfg.member, &request.request_id, e);
    match log_refusal(node, signed, decision, &wire).await {
        Ok(()) => wire,
        Err(failed) => for_the_wire(&node.cfg.member, &request.request_id, failed).1,
    }
}

/// Keeps a refusal's reason and appends its "access served" entry.
async fn log_refusal(
    node: &Node,
    signed: &SignedRequest,
    decision: ServedDecision,
    wire: &NodeError,
) -> Result<(), NodeError> {
    let request = &signed.request;
    let reason = wire.to_string();
    // The policy in force, when the registry can be read: a refusal is logged either way.
    let policy = node
        .datasets()
        .await
        .ok()
        .and_then(|d| d.map.get(&request.dataset).map(|d| format!("sha256:{}", d.policy.digest())));
    let charter = node.charter();
    let entry = served_entry(
        signed,
        decision,
        policy,
        Commitments { cost: None, release: None, reason: Some(reason_commitment(&signed.salt, &reason)) },
        Notes::public(&charter.charter, Some(&signed.details), None, Some(&reason)),
    );
    node.state.keep_notes(&request.request_id, &request.requester, NoteKind::Reason, reason.as_bytes())?;
    node.log.append(entry.to_bytes()?).await?;
    Ok(())
}

/// How long a check round's reservation holds a request's privacy cost: the request's own
/// freshness, after which it could not run anyway.
fn reservation_end(request: &QueryRequest) -> i64 {
    request.time.saturating_add(FRESHNESS_SECS + 60)
}

/// The check round of a query that reads several owners: every check of `serve_query` short of
/// running (the request authenticated and fresh, the policy's decision, the sub-query's check),
/// and the request's privacy cost reserved. A refusal is logged and final (the request id is
/// then spent); a pass releases nothing and logs nothing: the request itself comes next, or a
/// cancellation. So a query that any owner refuses costs no budget at any other.
pub async fn check_query(node: &Node, tls_member: &str, body: &[u8]) -> Result<(), NodeError> {
    let signed = authenticated(node, tls_member, body)?;
    let request = &signed.request;
    let fresh = fresh(request).and_then(|()| {
        match node.state.request_seen(&request.request_id, &request.requester)? {
            true => Err(NodeError::Replayed(format!("request {} was seen before", request.request_id))),
            false => Ok(()),
        }
    });
    if let Err(e) = fresh {
        node.state.count_refusal(&request.requester, e.code().as_str())?;
        return Err(e);
    }
    node.state.keep_notes(&request.request_id, &request.requester, NoteKind::Request, body)?;
    let checked = async {
        same_charter(node, request)?;
        let ask = ask_of(request);
        let decided = node.decide_subquery(&ask).await?;
        if let (Some(p), Some(dp)) =
            (&decided.plan.privacy, decided.plan.rules.policy.release.privacy.as_ref())
        {
            node.spend(&ask, p.cost, dp, Some(reservation_end(request)))?;
        }
        node.checked.put(&request.requester, &request.request_id, reservation_end(request), decided);
        Ok::<_, NodeError>(())
    }
    .await;
    match checked {
        Ok(()) => Ok(()),
        Err(e) => {
            // Final: the request cannot be sent again to run.
            record(node, request, Durability::Now)?;
            Err(refused(node, &signed, e).await)
        }
    }
}

/// A requester withdraws a request it checked (another owner refused it): its reservation is
/// released and the request id spent, so it can no longer run. Nothing was released. Only a
/// request this node holds for that requester can be withdrawn; anything else is counted.
pub fn cancel_query(node: &Node, tls_member: &str, body: &[u8]) -> Result<(), NodeError> {
    let request = authenticated(node, tls_member, body)?.request;
    let (requester, id) = (&request.requester, &request.request_id);
    if node.checked.holds(requester, id) || node.state.holds_reservation(id, requester) {
        // The id is spent on disk before what the check round holds is let go (nothing is
        // logged after a withdrawal): a withdrawal that fails leaves the request as it was.
        record(node, &request, Durability::Now)?;
        node.checked.take(requester, id);
        node.state.cancel_reservation(id, requester);
        return Ok(());
    }
    let e = NodeError::NotFound(format!(
        "{} holds no checked request {} of {}",
        node.cfg.member, request.request_id, request.requester
    ));
    node.state.count_refusal(tls_member, e.code().as_str())?;
    Err(e)
}

/// A request made under this node's charter version.
fn same_charter(node: &Node, request: &QueryRequest) -> Result<(), NodeError> {
    if request.charter_version != node.charter_version() {
        return Err(NodeError::WrongCharter(format!(
            "request made under charter version {}, this node is at version {}; both sides must accept the same version",
            request.charter_version,
            node.charter_version()
        )));
    }
    Ok(())
}

fn ask_of(request: &QueryRequest) -> Ask<'_> {
    Ask {
        requester: &request.requester,
        dataset: &request.dataset,
        sql: &request.sql,
        purpose: &request.purpose,
        request_id: Some(&request.request_id),
    }
}

/// Every check after authentication, then the run.
async fn decide_and_run(
    node: &Node,
    request: &QueryRequest,
) -> Result<(OwnerAnswer, Vec<u8>, Decided), NodeError> {
    let mut t = super::phases::Phases::start("decide_and_run");
    same_charter(node, request)?;
    let ask = ask_of(request);
    // What the check round decided stands while the dataset's policy is the one it decided by.
    let decided = match node.checked.take(&request.requester, &request.request_id) {
        Some(d)
            if node
                .datasets()
                .await?
                .map
                .get(&request.dataset)
                .is_some_and(|now| Arc::ptr_eq(&now.policy, &d.plan.rules.policy)) =>
        {
            d
        }
        _ => node.decide_subquery(&ask).await?,
    };
    t.mark("decide");
    let answer = node.run_decided(&ask, &decided).await?;
    t.mark("run");
    let ipc = concord_query::ipc::encode(&answer.schema, &answer.batches)?;
    t.mark("encode");
    Ok((answer, ipc, decided))
}

/// The leading words of an error message that hold no value from the data: `Arrow error: Cast
/// error` of `Arrow error: Cast error: Cannot cast string 'BR-West|…' to value of Int64 type`.
pub fn error_class(detail: &str) -> String {
    let words: Vec<&str> = detail
        .split(": ")
        .take_while(|s| {
            !s.is_empty() && s.len() <= 40 && s.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
        })
        .take(2)
        .collect();
    if words.is_empty() { "error".into() } else { words.join(": ") }
}

/// What may cross the border of an error: a code and a reason without values from the data, and
/// the decision to log. The detail stays on this node, in its own log output, as a class only.
fn for_the_wire(owner: &str, request_id: &str, e: NodeError) -> (ServedDecision, NodeError) {
    let code = e.code();
    if e.disk_full() {
        tracing::warn!(request = %request_id, "sub-query failed on this node, whose disk is full: {e}");
        return (ServedDecision::Failed(ErrorCode::DiskFull), NodeError::DiskFull(owner.to_owned()));
    }
    match e {
        NodeError::Query(QueryError::Execution(detail)) => ran_and_failed(owner, request_id, code, &detail),
        NodeError::Query(QueryError::Arrow(e)) => ran_and_failed(owner, request_id, code, &e.to_string()),
        NodeError::Query(QueryError::Dataset { name, .. }) => {
            tracing::warn!(request = %request_id, dataset = %name, "dataset unavailable for a sub-query");
            (
                ServedDecision::Failed(code),
                NodeError::Query(QueryError::Dataset {
                    name,
                    reason: format!("is unavailable on {owner} now; its stewards are told"),
                }),
            )
        }
        // This node's own trouble: its detail stays here. Exhaustive, so that a new kind of
        // error is placed on one side of the border or the other, never passed by default.
        NodeError::Config(_)
        | NodeError::Toml { .. }
        | NodeError::TomlEncode(_)
        | NodeError::Decode { .. }
        | NodeError::Io { .. }
        | NodeError::State(_)
        | NodeError::Database(_)
        | NodeError::DatabaseOpen { .. }
        | NodeError::LogAppend(_)
        | NodeError::LogStorage(_)
        | NodeError::Encode { .. }
        | NodeError::Stopped(_)
        | NodeError::Arrow(_)
        | NodeError::Header { .. }
        | NodeError::Task(_)
        | NodeError::Tls(_)
        | NodeError::Certificate(_)
        | NodeError::Rustls(_)
        | NodeError::Pem { .. }
        | NodeError::Listen { .. }
        | NodeError::Internal(_)
        | NodeError::DiskFull(_)
        | NodeError::Source(_)
        | NodeError::Peer { .. } => {
            tracing::warn!(request = %request_id, code = code.as_str(), "sub-query failed on this node: {e}");
            (
                ServedDecision::Failed(ErrorCode::Internal),
                NodeError::Internal(format!("{owner} could not answer; its operators are told")),
            )
        }
        // Refusals of the request itself: their reasons name what was asked, not the data.
        e @ (NodeError::Charter(_)
        | NodeError::Note(_)
        | NodeError::Query(_)
        | NodeError::Policy(_)
        | NodeError::BadRequest(_)
        | NodeError::Unauthorized(_)
        | NodeError::Forbidden(_)
        | NodeError::UnknownMember(_)
        | NodeError::BadSignature(_)
        | NodeError::Stale(_)
        | NodeError::Replayed(_)
        | NodeError::WrongCharter(_)
        | NodeError::PolicyRefused(_)
        | NodeError::NotFound(_)
        | NodeError::TooLarge(_)
        | NodeError::RateLimited(_)
        | NodeError::Conflict(_)) => (ServedDecision::Refused(code), e),
    }
}

/// A sub-query that failed as it ran: only the error's class crosses, the detail is logged here
/// as its class too.
fn ran_and_failed(
    owner: &str,
    request_id: &str,
    code: ErrorCode,
    detail: &str,
) -> (ServedDecision, NodeError) {
    let class = error_class(detail);
    tracing::warn!(request = %request_id, %class, "sub-query failed while running");
    (
        ServedDecision::Failed(code),
        NodeError::Query(QueryError::Execution(format!(
            "the sub-query failed while {owner} ran it ({class}); the detail stays with {owner}"
        ))),
    )
}

pub use crate::wire::{PolicyTest, SubqueryTest};

impl Node {
    /// Explains how this node's policy for `dataset` treats `sql` from `requester`, without
    /// running it, spending budget, or logging an access.
    pub async fn policy_test(
        &self,
        requester: &str,
        purpose: &str,
        dataset: &str,
        sql: &str,
    ) -> Result<PolicyTest, NodeError> {
        if requester != self.cfg.member && self.charter().charter.member(requester).is_none() {
            return Err(NodeError::UnknownMember(format!(
                "{requester} is not a member of {}",
                self.federation()
            )));
        }
        let datasets = self.datasets().await?;
        let d = datasets
            .map
            .get(dataset)
            .ok_or_else(|| NodeError::NotFound(format!("{} has no dataset {dataset}", self.cfg.member)))?;
        let table = d
            .table
            .clone()
            .map_err(|why| NodeError::Query(QueryError::Dataset { name: dataset.to_owned(), reason: why }))?;
        let planned = self.plan_alone(dataset, &table, sql).await?;
        let baseline = self.baseline();
        let access_ctx = AccessContext {
            requester: requester.to_owned(),
            purpose: purpose.to_owned(),
            grants: self.state.live_grants(
                requester,
                dataset,
                chrono::Utc::now().timestamp(),
                Some(purpose),
            )?,
            charter_version: self.charter_version(),
        };
        let inputs = TestInputs { d, dataset, requester, ctx: access_ctx, baseline };
        let mut subqueries = Vec::new();
        for p in planned {
            subqueries.push(self.test_subquery(&inputs, table.clone(), p.sql).await?);
        }
        Ok(PolicyTest {
            dataset: dataset.to_owned(),
            requester: requester.to_owned(),
            purpose: purpose.to_owned(),
            subqueries,
        })
    }

    /// Plans `sql` over `dataset` alone, as this node's own table, into the sub-queries its
    /// owner would receive.
    async fn plan_alone(
        &self,
        dataset: &str,
        table: &Arc<dyn datafusion::catalog::TableProvider>,
        sql: &str,
    ) -> Result<Vec<concord_query::federate::PlannedSubquery>, NodeError> {
        let ctx = concord_query::limits::session(&self.cfg.limits.exec())?;
        let fed = concord_query::FederatedTable {
            display: dataset.to_owned(),
            schema: table.schema(),
            parts: vec![concord_query::Part { owner: self.cfg.member.clone(), dataset: dataset.to_owned() }],
            shared: false,
            unreachable: vec![],
            withheld: vec![],
        };
        ctx.register_table(dataset, Arc::new(fed)).map_err(QueryError::plan)?;
        let (_, planned) = concord_query::federate::plan_subqueries(&ctx, sql).await?;
        Ok(planned)
    }

    /// Explains one sub-query of a `policy test`: the access decision, the column modes and
    /// release rules, and the requester's budget left.
    async fn test_subquery(
        &self,
        t: &TestInputs<'_>,
        table: Arc<dyn datafusion::catalog::TableProvider>,
        sql: String,
    ) -> Result<SubqueryTest, NodeError> {
        let sub = match parse_subquery(t.dataset, table, &sql).await {
            Ok(s) => s,
            Err(e) => {
                return Ok(SubqueryTest {
                    sql,
                    action: None,
                    access: None,
                    verdict: Verdict::Refused { reason: e.to_string() },
                    lines: vec![],
                    budget_left: None,
                });
            }
        };
        let action = sub.action();
        let decision = t.d.policy.decide(&self.cfg.member, t.dataset, action, &t.ctx, &t.baseline);
        let rules = Rules {
            policy: t.d.policy.clone(),
            baseline: t.baseline,
            own: t.requester == self.cfg.member,
            unit_is_row: false,
        };
        let explained = concord_query::release::explain(&sub, &rules);
        let (access, verdict) = match &decision {
            Decision::Allow { by } => (AccessVerdict::Allowed { by: by.to_string() }, explained.verdict),
            Decision::Deny { reason } => (
                AccessVerdict::Refused { reason: reason.to_string() },
                Verdict::Refused { reason: reason.to_string() },
            ),
        };
        let budget_left = self.budget_left(t.d, t.dataset, t.requester)?;
        Ok(SubqueryTest {
            sql,
            action: Some(action),
            access: Some(access),
            verdict,
            lines: explained.lines,
            budget_left,
        })
    }

    /// The requester's privacy budget on `dataset` left, as `policy test` shows it: only under
    /// differential privacy, and only for another member.
    fn budget_left(
        &self,
        d: &super::LoadedDataset,
        dataset: &str,
        requester: &str,
    ) -> Result<Option<String>, NodeError> {
        Ok(match (&d.policy.release.privacy, requester == self.cfg.member) {
            (Some(dp), false) => {
                let spent = self.state.spent(dataset, requester)?;
                let left = dp.budget_per_requester.0.saturating_sub(spent.by_requester);
                Some(format!(
                    "{} {} of {}",
                    dp.mechanism.parameter(),
                    concord_policy::Units(left),
                    dp.budget_per_requester
                ))
            }
            _ => None,
        })
    }
}

/// What every sub-query of one `policy test` is explained against.
struct TestInputs<'a> {
    /// The dataset as loaded, with its policy.
    d: &'a super::LoadedDataset,
    /// Its name.
    dataset: &'a str,
    /// The member the test is for.
    requester: &'a str,
    /// The access context the requester's queries would have: purpose, live grants.
    ctx: AccessContext,
    /// The charter's baseline.
    baseline: concord_policy::Baseline,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an owner's node answers for an error, as the requester reads it.
    fn answered(e: NodeError) -> (ServedDecision, String) {
        let (decision, wire) = for_the_wire("bravo", "r1", e);
        (decision, wire.to_string())
    }

    #[test]
    fn errors_that_may_hold_values_cross_as_their_class_only() {
        let cast = arrow::error::ArrowError::CastError(
            "Cannot cast string 'Alice Smith, 1961-04-02' to value of Int64 type".into(),
        );
        for e in [
            NodeError::Query(QueryError::Arrow(cast)),
            NodeError::Query(QueryError::Execution(
                "Arrow error: Cast error: Cannot cast string 'Alice Smith, 1961-04-02'".into(),
            )),
        ] {
            let (decision, text) = answered(e);
            assert_eq!(decision, ServedDecision::Failed(ErrorCode::ExecutionFailed));
            assert!(!text.contains("Alice") && !text.contains("1961"), "{text}");
            assert!(text.contains("the detail stays with bravo"), "{text}");
        }
    }

    #[test]
    fn this_nodes_own_trouble_is_not_described_to_a_peer() {
        let io = std::io::Error::other("/srv/concord/bravo/state.db: disk full");
        for e in [
            NodeError::io("/srv/concord/bravo/state.db", io),
            NodeError::Database(rusqlite::Error::InvalidQuery),
            NodeError::State("row 17 of budgets is malformed".into()),
            NodeError::Internal("the secret detail".into()),
        ] {
            let (decision, text) = answered(e);
            assert_eq!(decision, ServedDecision::Failed(ErrorCode::Internal));
            assert_eq!(text, "internal error: bravo could not answer; its operators are told");
        }
    }

    #[test]
    fn refusals_of_the_request_keep_their_reason() {
        let (decision, text) = answered(NodeError::Stale("the request is 400 s old".into()));
        assert_eq!(decision, ServedDecision::Refused(ErrorCode::StaleRequest));
        assert_eq!(text, "stale request: the request is 400 s old");
    }
}
