//! The console's pages other than the query page: overview, datasets and budgets, access
//! requests, governance and audit. Each calls the `Node` method its JSON route calls, with the
//! same roles.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use concord_charter::governance::{Ballot, Change};
use maud::{Markup, html};

use super::session::{self, Authed};
use super::{Console, chart, error_page, page, time};
use crate::NodeError;
use crate::wire::{AccessAsk, AccessRecord, AccessStatus, Decision, Direction, ProposalStatus, Role};

fn ok(who: &Authed, title: &str, body: Markup) -> Response {
    Html(page(who, title, body).into_string()).into_response()
}

fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

/// A hidden CSRF field for a form of `who`'s session.
fn csrf(who: &Authed) -> Markup {
    html! { input type="hidden" name="csrf" value=(who.csrf); }
}

// ----- overview -----

pub async fn overview(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match session::viewer(&c, &headers, &[]) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let charter = c.node.charter();
    let health = c.health().await;
    let body = html! {
        p { "Federation " strong { (who.federation) } ", member " strong { (who.member) }
            ", charter version " strong { (c.node.charter_version()) }
            " (" code { (short(&charter.charter.digest())) } "), threshold " (charter.charter.threshold)
            " of " (charter.charter.members.len()) " members." }
        h2 { "Members" }
        table {
            thead { tr { th { "Member" } th { "Name" } th { "Jurisdiction" } th { "Health" } th { "Charter version" } } }
            tbody { @for h in health.iter() { tr {
                td { (h.id) } td { (h.name) } td { (h.jurisdiction) }
                td { @match (&h.problem, h.latency_ms) {
                    (Some(p), _) => span.bad { "not answering: " (p) },
                    (None, Some(_)) if h.id == who.member => span.good { "this node" },
                    (None, Some(ms)) => span.good { "answers (" (ms) " ms)" },
                    _ => "—",
                } }
                td { @match h.charter_version {
                    Some(v) if v == c.node.charter_version() => (v),
                    Some(v) => span.bad { (v) " (this node has " (c.node.charter_version()) ")" },
                    None => "—",
                } }
            } } }
        }
        (log_section(&c))
    };
    ok(&who, "Overview", body)
}

fn short(digest: &str) -> String {
    digest.chars().take(16).collect()
}

fn log_section(c: &Console) -> Markup {
    let size = c.node.log.size();
    let published = c.node.log.published_checkpoint();
    html! {
        h2 { "This node's log" }
        @match size { Ok(n) => p { (n) " entries." }, Err(e) => p.warning { "The log's size cannot be read: " (e.to_string()) } }
        @match published {
            Ok(Some((n, note))) => {
                p { "Last published checkpoint: " (n) " entries, signed by " (note.signatures().first().map(|s| s.name.as_str()).unwrap_or("nobody")) "." }
                table {
                    thead { tr { th { "Cosigner" } th { "Cosigned at" } } }
                    tbody { @for s in note.signatures().iter().skip(1) { tr {
                        td { (s.name) }
                        td { @match cosigned_at(&s.signature) { Some(t) => (time(t)), None => "—" } }
                    } } }
                }
            }
            Ok(None) => p.warning { "No checkpoint is published yet: its witnesses have not cosigned one." },
            Err(e) => p.warning { "The checkpoint cannot be read: " (e.to_string()) },
        }
    }
}

/// The time of a C2SP tlog-cosignature: its first eight bytes, big-endian seconds.
fn cosigned_at(sig: &[u8]) -> Option<i64> {
    let raw: [u8; 8] = sig.get(..8)?.try_into().ok()?;
    (sig.len() == 72).then(|| i64::try_from(u64::from_be_bytes(raw)).ok()).flatten()
}

// ----- datasets and budgets -----

pub async fn datasets(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match session::viewer(&c, &headers, &[]) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let sets = match c.node.datasets().await {
        Ok(s) => s,
        Err(e) => return error_page(Some(&who), &e),
    };
    let body = html! {
        @if sets.map.is_empty() { p { "This node has no datasets." } }
        @for d in sets.map.values() {
            section.dataset {
                h2 { (d.record.name) }
                p { (d.record.format.as_str()) " · " (d.record.rows) " rows"
                    @if let Some(s) = &d.record.shared_schema { " · shared schema " code { (s) } }
                    " · policy " code { (short(&d.policy.digest())) } }
                @if let Err(e) = &d.table {
                    // Why a file cannot be read names paths on this machine: for its keepers.
                    @if matches!(who.role, Role::Steward | Role::Operator) { p.bad { "Unavailable: " (e) } }
                    @else { p.bad { "Unavailable now; this node's steward can see why." } }
                }
                ul { @for line in d.policy.in_words() { li { (line) } } }
                h3 { "Access rules" }
                ul { @for r in d.policy.rules_in_words() {
                    li { strong { (r.name) } (if r.permits { " permits: " } else { " forbids: " })
                         pre { (r.cedar) } }
                } }
            }
        }
        @if matches!(who.role, Role::Steward | Role::Auditor) { (budgets(&c, &sets)) }
    };
    ok(&who, "Datasets and policies", body)
}

fn budgets(c: &Console, sets: &crate::node::Datasets) -> Markup {
    let spent = c.node.state.budget_by_requester();
    html! {
        h2 { "Privacy budgets" }
        @match spent {
            Err(e) => p.warning { "The budgets cannot be read: " (e.to_string()) },
            Ok(rows) if rows.is_empty() => p { "No budget has been spent on this node's datasets." },
            Ok(rows) => {
                figure.chart { img src="/console/budgets.svg" alt="Budget spent per dataset and requester"; }
                table {
                    thead { tr { th { "Dataset" } th { "Requester" } th { "Queries" } th { "Spent" } th { "Left of the requester's budget" } } }
                    tbody { @for (dataset, requester, used, n) in &rows { tr {
                        td { (dataset) } td { (requester) } td { (n) }
                        @let privacy = sets.map.get(dataset).and_then(|d| d.policy.release.privacy.clone());
                        td { (format!("{used:.6}")) @if let Some(p) = &privacy { " " (p.mechanism.parameter()) } }
                        td { @match &privacy {
                            Some(p) => (format!("{:.6}", (p.budget_per_requester.as_f64() - used).max(0.0))),
                            None => "—",
                        } }
                    } } }
                }
            }
        }
    }
}

pub async fn budgets_chart(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Err(r) = session::viewer(&c, &headers, &[Role::Steward, Role::Auditor]) {
        return *r;
    }
    let rows = match c.node.state.budget_by_requester() {
        Ok(r) => r,
        Err(e) => return error_page(None, &e),
    };
    let pts: Vec<(String, f64)> =
        rows.into_iter().map(|(d, r, used, _)| (format!("{d} · {r}"), used)).collect();
    match chart::bars(&pts, "dataset · requester", "spent", "Privacy budget spent") {
        Ok(svg) => chart::response(svg),
        Err(why) => (StatusCode::NOT_FOUND, why).into_response(),
    }
}

// ----- access requests -----

pub async fn access(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match session::viewer(&c, &headers, &[Role::Analyst, Role::Steward]) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    access_view(&c, &who, None).await
}

async fn access_view(c: &Console, who: &Authed, done: Option<Markup>) -> Response {
    let list = match c.node.access_requests().await {
        Ok(l) => l,
        Err(e) => return error_page(Some(who), &e),
    };
    // A steward decides pending requests in the inbox; everything else is in the table.
    let (inbox, rest): (Vec<&AccessRecord>, Vec<&AccessRecord>) = list.iter().partition(|r| {
        who.role == Role::Steward && r.direction == Direction::In && r.status == AccessStatus::Pending
    });
    let body = html! {
        @if let Some(d) = done { (d) }
        @if who.role == Role::Analyst { (file_form(who)) }
        @if who.role == Role::Steward {
            h2 { "Inbox" }
            @if inbox.is_empty() { p { "No request waits for a decision." } }
            @for r in &inbox { (request_card(who, r)) }
        }
        h2 { "Requests" }
        (requests_table(who, &rest))
    };
    ok(who, "Access requests", body)
}

fn file_form(who: &Authed) -> Markup {
    html! {
        h2 { "File a request" }
        form.stack method="post" action="/console/access" {
            (csrf(who))
            label for="dataset" { "Dataset (member.dataset)" }
            input #dataset type="text" name="dataset" required placeholder="bravo.health_cases";
            fieldset { legend { "Actions" }
                label.check { input type="checkbox" name="aggregate" value="on" checked; " aggregate" }
                label.check { input type="checkbox" name="read_rows" value="on"; " read rows" }
                label.check { input type="checkbox" name="describe" value="on"; " describe" }
            }
            label for="purpose" { "Purpose" }
            input #purpose type="text" name="purpose" required;
            label for="legal_basis" { "Legal basis" }
            input #legal_basis type="text" name="legal_basis" required;
            label for="days" { "Days" }
            input #days type="number" name="days" min="1" value="30" required;
            button type="submit" { "File the request" }
        }
    }
}

fn request_card(who: &Authed, r: &AccessRecord) -> Markup {
    html! {
        article.request {
            p { strong { (r.requester) } " asks for " (actions(r)) " on " code { (r.dataset) }
                " for " em { (r.purpose) } " (legal basis: " (r.legal_basis) "), "
                (time(r.valid_from)) " to " (time(r.valid_until)) "." }
            p.hint { "Request " code { (r.id) } ", filed " (time(r.filed_at)) }
            form.inline method="post" action={"/console/access/" (r.id) "/decide"} {
                (csrf(who))
                input type="hidden" name="decision" value="approve";
                label { "Days " input type="number" name="days" min="1" placeholder="as asked"; }
                button type="submit" { "Approve" }
            }
            form.inline method="post" action={"/console/access/" (r.id) "/decide"} {
                (csrf(who))
                input type="hidden" name="decision" value="refuse";
                label { "Reason " input type="text" name="reason" required; }
                button.danger type="submit" { "Refuse" }
            }
        }
    }
}

fn actions(r: &AccessRecord) -> String {
    r.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}

fn requests_table(who: &Authed, list: &[&AccessRecord]) -> Markup {
    html! {
        @if list.is_empty() { p { "None." } } @else {
        table {
            thead { tr { th { "Request" } th { "Direction" } th { "Requester" } th { "Dataset" } th { "Actions" }
                         th { "Purpose" } th { "Until" } th { "Status" } th { "Reason" } } }
            tbody { @for r in list { tr {
                td { code { (r.id.chars().take(12).collect::<String>()) } }
                td { (if r.direction == Direction::In { "filed with us" } else { "filed by us" }) }
                td { (r.requester) } td { (r.dataset) } td { (actions(r)) } td { (r.purpose) }
                td { (time(r.valid_until)) }
                td { (r.status.as_str()) }
                td { (r.reason.as_deref().unwrap_or(""))
                    @if who.role == Role::Steward && r.direction == Direction::In && r.status == AccessStatus::Approved {
                        form.inline method="post" action={"/console/access/" (r.id) "/decide"} {
                            (csrf(who))
                            input type="hidden" name="decision" value="revoke";
                            input type="text" name="reason" required placeholder="reason";
                            button.danger type="submit" { "Revoke" }
                        }
                    }
                }
            } } }
        } }
    }
}

#[derive(serde::Deserialize)]
pub struct FileForm {
    #[serde(default)]
    dataset: String,
    aggregate: Option<String>,
    read_rows: Option<String>,
    describe: Option<String>,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    legal_basis: String,
    #[serde(default)]
    days: String,
}

pub async fn access_file(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (who, f) = match session::posted::<FileForm>(&c, &headers, &body, &[Role::Analyst]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    use concord_policy::Action;
    let actions: Vec<Action> =
        [(f.aggregate, Action::Aggregate), (f.read_rows, Action::ReadRows), (f.describe, Action::Describe)]
            .into_iter()
            .filter_map(|(on, a)| on.map(|_| a))
            .collect();
    let Ok(days) = f.days.trim().parse::<u64>() else {
        return error_page(
            Some(&who),
            &NodeError::BadRequest(format!("days {:?} is not a whole number; write 30", f.days)),
        );
    };
    let ask = AccessAsk {
        dataset: f.dataset.trim().to_owned(),
        actions,
        purpose: f.purpose,
        legal_basis: f.legal_basis,
        days,
    };
    match c.node.file_access_request(&ask).await {
        Ok(r) => {
            let done = notice(&format!("Request {} filed with {}: {}.", r.id, r.owner, r.status.as_str()));
            access_view(&c, &who, Some(done)).await
        }
        Err(e) => error_page(Some(&who), &e),
    }
}

#[derive(serde::Deserialize)]
pub struct DecideForm {
    #[serde(default)]
    decision: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    days: String,
}

pub async fn access_decide(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (who, f) = match session::posted::<DecideForm>(&c, &headers, &body, &[Role::Steward]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(decision) = Decision::parse(&f.decision) else {
        return error_page(
            Some(&who),
            &NodeError::BadRequest(format!("no decision {:?}; approve, refuse or revoke", f.decision)),
        );
    };
    let days = match f.days.trim() {
        "" => None,
        d => match d.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return error_page(
                    Some(&who),
                    &NodeError::BadRequest(format!("days {d:?} is not a whole number")),
                );
            }
        },
    };
    match c.node.decide_access_request(&id, decision, &f.reason, days).await {
        Ok(r) => {
            let done = notice(&format!("Request {} from {}: {}.", r.id, r.requester, r.status.as_str()));
            access_view(&c, &who, Some(done)).await
        }
        Err(e) => error_page(Some(&who), &e),
    }
}

// ----- governance -----

pub async fn governance(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match session::viewer(&c, &headers, &[Role::Delegate, Role::Auditor]) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    governance_view(&c, &who, None)
}

fn governance_view(c: &Console, who: &Authed, done: Option<Markup>) -> Response {
    let proposals = match c.node.proposals() {
        Ok(p) => p,
        Err(e) => return error_page(Some(who), &e),
    };
    let history = match super::super::local::history(&c.node) {
        Ok(h) => h,
        Err(e) => return error_page(Some(who), &e),
    };
    let body = html! {
        @if let Some(d) = done { (d) }
        h2 { "Proposals on version " (c.node.charter_version()) }
        @if proposals.is_empty() { p { "No proposal on this version." } }
        @for p in &proposals {
            article.proposal {
                p { strong { (p.status.as_str()) } " · proposed by " (p.proposer) " · expires " (time(p.expires as i64))
                    " · " code { (p.id.chars().take(16).collect::<String>()) } }
                ul { @for ch in &p.changes { li { (ch) } } }
                p { "Yes: " (p.yes.len()) " of " (p.threshold) " needed"
                    @if !p.yes.is_empty() { " (" (p.yes.join(", ")) ")" }
                    @if !p.no.is_empty() { " · No: " (p.no.join(", ")) } }
                @if let Some(why) = &p.dead_because { p.bad { (why) } }
                @if who.role == Role::Delegate && p.status == ProposalStatus::Live {
                    form.inline method="post" action={"/console/governance/" (p.id) "/vote"} {
                        (csrf(who))
                        label { "Reason " input type="text" name="reason"; }
                        button type="submit" name="vote" value="yes" { "Vote yes" }
                        button.danger type="submit" name="vote" value="no" { "Vote no" }
                    }
                }
            }
        }
        @if who.role == Role::Delegate { (propose_form(who)) }
        h2 { "Charter history" }
        @for v in history.iter().rev() {
            article.version {
                p { strong { "Version " (v.version) } " · " code { (short(&v.digest)) } " · signed by " (v.signers.join(", ")) }
                @if v.changes.is_empty() { p.hint { "Genesis." } }
                ul { @for ch in &v.changes { li { (ch) } } }
            }
        }
    };
    ok(who, "Governance", body)
}

fn propose_form(who: &Authed) -> Markup {
    html! {
        h2 { "Propose changes" }
        form.stack method="post" action="/console/governance" {
            (csrf(who))
            label for="changes" { "Changes, as the API takes them (JSON)" }
            textarea #changes name="changes" rows="3" required spellcheck="false"
                placeholder=r#"[{"change": "min-group-size", "size": 12}]"# {}
            label for="expires_days" { "Open for (days)" }
            input #expires_days type="number" name="expires_days" min="1" value="7" required;
            button type="submit" { "Propose and vote yes" }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct ProposeForm {
    #[serde(default)]
    changes: String,
    #[serde(default)]
    expires_days: String,
}

pub async fn propose(State(c): State<Arc<Console>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let (who, f) = match session::posted::<ProposeForm>(&c, &headers, &body, &[Role::Delegate]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let changes: Vec<Change> = match serde_json::from_str(&f.changes) {
        Ok(ch) => ch,
        Err(e) => {
            return error_page(
                Some(&who),
                &NodeError::BadRequest(format!(
                    "the changes cannot be read: {e}; write a JSON list such as [{{\"change\": \"min-group-size\", \"size\": 12}}]"
                )),
            );
        }
    };
    let Ok(days) = f.expires_days.trim().parse::<u64>() else {
        return error_page(
            Some(&who),
            &NodeError::BadRequest(format!("{:?} is not a number of days", f.expires_days)),
        );
    };
    let ttl = std::time::Duration::from_secs(days.saturating_mul(86_400));
    match c.node.propose_and_vote(changes, ttl).await {
        Ok((id, _)) => {
            governance_view(&c, &who, Some(notice(&format!("Proposal {id} filed; this member voted yes."))))
        }
        Err(e) => error_page(Some(&who), &e),
    }
}

#[derive(serde::Deserialize)]
pub struct VoteForm {
    vote: Ballot,
    #[serde(default)]
    reason: String,
}

pub async fn vote(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let (who, f) = match session::posted::<VoteForm>(&c, &headers, &body, &[Role::Delegate]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    match c.node.cast_vote(&id, f.vote, &f.reason).await {
        Ok(r) => {
            let text = format!(
                "Vote counted: {} yes of {} needed; the proposal is {} (charter version {}).",
                r.yes,
                r.threshold,
                r.outcome.as_str(),
                r.version
            );
            governance_view(&c, &who, Some(notice(&text)))
        }
        Err(e) => error_page(Some(&who), &e),
    }
}

// ----- audit -----

pub async fn audit_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let who = match session::viewer(&c, &headers, &[Role::Auditor]) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    ok(&who, "Audit", html! { (audit_form(&c, &who)) (evidence(&c)) })
}

fn audit_form(c: &Console, who: &Authed) -> Markup {
    let charter = c.node.charter();
    html! {
        form.inline method="post" action="/console/audit" {
            (csrf(who))
            label for="member" { "Audit " }
            select #member name="member" {
                option value="" { "every member" }
                @for m in &charter.charter.members { option value=(m.id) { (m.id) " — " (m.name) } }
            }
            button type="submit" { "Run the audit" }
        }
    }
}

fn evidence(c: &Console) -> Markup {
    let page = c.node.state.governance_evidence(0, 50);
    html! {
        h2 { "Evidence of misbehaviour kept by this node" }
        @match page {
            Err(e) => p.warning { "The evidence cannot be read: " (e.to_string()) },
            Ok(rows) if rows.is_empty() => p { "None: no member has signed two different votes or two bodies of one version." },
            Ok(rows) => {
                @if rows.len() == 50 { p.warning { "The first 50 pieces are shown; the local API's "
                    code { "GET /v1/governance/evidence?after=N" } " pages through them all." } }
                table {
                thead { tr { th { "#" } th { "Version" } th { "Kind" } th { "Received" } } }
                tbody { @for (seq, version, kind, _, at) in &rows { tr {
                    td { (seq) } td { (version) }
                    td { (if kind == "evidence" { "two votes of one member (equivocation)" } else { "a second body of a version (fork)" }) }
                    td { (at) }
                } } }
            } },
        }
    }
}

#[derive(serde::Deserialize)]
pub struct AuditForm {
    #[serde(default)]
    member: String,
}

pub async fn audit_run(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (who, f) = match session::posted::<AuditForm>(&c, &headers, &body, &[Role::Auditor]) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let targets: Vec<String> = if f.member.is_empty() {
        c.node.charter().charter.members.iter().map(|m| m.id.clone()).collect()
    } else {
        vec![f.member]
    };
    let report = match crate::node::audit::audit(&c.node, &targets).await {
        Ok(r) => r,
        Err(e) => return error_page(Some(&who), &e),
    };
    ok(&who, "Audit", html! { (audit_form(&c, &who)) (report_view(&report)) (evidence(&c)) })
}

fn report_view(r: &crate::wire::AuditReport) -> Markup {
    html! {
        @if r.ok() { p.notice role="status" { "The audit found nothing wrong." } }
        @else { p.refusal role="alert" { "The audit found problems; they are listed below." } }
        h2 { "Logs" }
        table {
            thead { tr { th { "Member" } th { "Entries" } th { "Root" } th { "Cosigners" } th { "New since last audit" } th { "Problems" } } }
            tbody { @for m in &r.members { tr {
                td { (m.member) } td { (m.size) } td { code { (short(&m.root)) } }
                td { (m.cosigners.join(", ")) " (quorum " (m.witness_quorum) ")" }
                td { (m.new_entries) }
                td { @if m.problems.is_empty() { span.good { "none" } } @else { ul { @for p in &m.problems { li.bad { (p) } } } } }
            } } }
        }
        h2 { "Reconciliation" }
        p { (r.notes_checked) " signed notes checked between requesters and owners." }
        @if r.mismatches.is_empty() && r.unreceived.is_empty() && r.notes_problems.is_empty() {
            p.good { "Every access a requester logged matches its owner's log." }
        }
        @for m in r.mismatches.iter().chain(&r.unreceived) {
            p.bad { "Request " code { (m.request_id) } " (" (m.requester) " → " (m.owner) "): " (m.problem) }
        }
        @for p in &r.notes_problems { p.bad { (p) } }
        h2 { "Fork evidence" }
        @if r.evidence.is_empty() { p.good { "No log showed two different trees." } }
        @for e in &r.evidence {
            article.evidence {
                p.bad { strong { (e.origin) } ": " (e.detail) " (" (time(e.time)) ")" }
                pre { (e.first) } pre { (e.second) }
            }
        }
    }
}
