//! The local API through its typed client, as each role calls it: every route answers what the
//! client reads, errors have one shape with stable codes, the OpenAPI document names every
//! route, and the metrics count what happened.

use concord_charter::governance::{Ballot, Change};
use concord_lab::demo::DemoMember;
use concord_node::net::local::{ClientError, LocalClient};
use concord_node::wire::{
    AccessAsk, AccessStatus, AuditRequest, DecideRequest, Decision, Direction, ErrorBody, ErrorCode,
    PolicyTestRequest, ProposeRequest, QueryRequest, Role, TableKind, VoteOutcome, VoteRequest,
};

use crate::support::three_members;

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, ErrorCode) {
    match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Retries `f` until it gives `Ok`, for at most 30 seconds (a checkpoint to be published, an
/// audit to pass once both logs are cosigned).
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match f().await {
            Ok(t) => return t,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("never happened: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_and_the_server_agree_on_every_route() {
    let fed = three_members().await;
    let (a, b) = (fed.member("alpha"), fed.member("bravo"));
    let analyst = LocalClient::new(&a.local_url, &a.analyst_token);
    let auditor = LocalClient::new(&a.local_url, &a.auditor_token);
    let delegate = LocalClient::new(&a.local_url, &a.delegate_token);
    let operator = LocalClient::new(&a.local_url, &a.operator_token);
    let steward_b = LocalClient::new(&b.local_url, &b.steward_token);

    who_and_what(&analyst).await;
    a_query_and_its_counters(&analyst, &operator, b).await;
    peer_calls_share_connections(&analyst, b).await;
    the_log_and_audits(&auditor).await;
    policy_test_and_access_request(&analyst, &steward_b).await;
    governance_adopts_version_2(&delegate, &analyst, b).await;
    a_burst_of_table_lists_reads_each_catalog_once(&analyst, b).await;
    let stranger = one_error_shape(a).await;
    every_route_documented(&stranger).await;
    fed.stop().await;
}

/// The status, tables and datasets an analyst sees.
async fn who_and_what(analyst: &LocalClient) {
    // Who and what.
    let status = analyst.status().await.expect("status");
    assert_eq!((status.member.as_str(), status.role, status.charter_version), ("alpha", Role::Analyst, 1));
    assert_eq!(status.members, ["alpha", "bravo", "charlie"]);
    let tables = analyst.tables().await.expect("tables");
    assert!(tables.warnings.is_empty(), "{:?}", tables.warnings);
    let kind = |n: &str| tables.tables.iter().find(|t| t.name == n).map(|t| t.kind);
    assert_eq!(kind("cases"), Some(TableKind::Federated));
    assert_eq!(kind("bravo.cases"), Some(TableKind::MemberDataset));
    assert_eq!(kind("local.cases"), Some(TableKind::Local));
    let datasets = analyst.datasets().await.expect("datasets");
    assert_eq!((datasets.len(), datasets[0].name.as_str(), datasets[0].available), (1, "cases", true));
}

/// A federated query and a refused one, counted in alpha's and bravo's metrics.
async fn a_query_and_its_counters(analyst: &LocalClient, operator: &LocalClient, b: &DemoMember) {
    // A federated query, and its counters on both sides.
    let q = |sql: &str| QueryRequest { sql: sql.into(), purpose: None, partial: false };
    let r = analyst.query(&q("SELECT count(*) AS n FROM cases")).await.expect("query");
    assert_eq!((r.columns.as_slice(), r.row_count, r.provenance.len()), (&["n".to_owned()][..], 1, 3));
    let code_of_refusal = code(analyst.query(&q("SELECT * FROM cases")).await);
    assert_eq!(code_of_refusal.0, 403, "{code_of_refusal:?}");
    let metrics = operator.metrics().await.expect("metrics");
    assert!(metrics.contains("concord_queries_made_total{member=\"alpha\"} 1\n"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "concord_query_errors_total{{member=\"alpha\",code=\"{}\"}} 1\n",
            code_of_refusal.1
        )),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE concord_log_append_seconds summary"), "{metrics}");
    let bravo_metrics = LocalClient::new(&b.local_url, &b.operator_token).metrics().await.expect("metrics");
    assert!(bravo_metrics.contains("concord_queries_served_total{member=\"bravo\"} 1\n"), "{bravo_metrics}");
    assert_eq!(code(analyst.metrics().await), (403, ErrorCode::Forbidden), "metrics need an operator");
}

/// A sample's value in Prometheus text (0 when the sample is absent).
fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Ten federated queries in a row reach bravo over one or two pooled HTTP/2 connections, not a
/// new connection (and TLS handshake) per call; no peer falls back to HTTP/1.1.
async fn peer_calls_share_connections(analyst: &LocalClient, b: &DemoMember) {
    let bravo = LocalClient::new(&b.local_url, &b.operator_token);
    let h2 = "concord_peer_connections_total{member=\"bravo\",protocol=\"h2\"}";
    let h1 = "concord_peer_connections_total{member=\"bravo\",protocol=\"http/1.1\"}";
    let served = "concord_queries_served_total{member=\"bravo\"}";
    let before = bravo.metrics().await.expect("metrics");
    for _ in 0..10 {
        let q = QueryRequest { sql: "SELECT count(*) AS n FROM cases".into(), purpose: None, partial: false };
        analyst.query(&q).await.expect("query");
    }
    let after = bravo.metrics().await.expect("metrics");
    assert_eq!(sample(&after, served) - sample(&before, served), 10, "{after}");
    let opened = sample(&after, h2) - sample(&before, h2);
    assert!(opened <= 3, "{opened} connections opened for 10 queries:\n{after}");
    assert_eq!(sample(&after, h1), 0, "{after}");
}

/// The checkpoint, a receipt, a tile and an audit, as alpha's auditor reads them.
async fn the_log_and_audits(auditor: &LocalClient) {
    // The log and audits (role auditor).
    let checkpoint = eventually(|| async { auditor.checkpoint().await.map_err(|e| e.to_string()) }).await;
    assert!(checkpoint.starts_with("test/alpha\n"), "{checkpoint}");
    let receipt = auditor.receipt(0).await.expect("receipt");
    let proof = concord_log::tiles::TlogProof::parse(&receipt).expect("a C2SP tlog-proof");
    assert_eq!(proof.index, 0);
    assert_eq!(code(auditor.receipt(1 << 40).await).1, ErrorCode::NotFound);
    let tile = auditor.tile("entries/000.p/1").await.expect("the first entry bundle");
    assert!(!tile.is_empty());
    let all = AuditRequest { members: vec![], all: true };
    let audit = eventually(|| async {
        let r = auditor.audit(&all).await.map_err(|e| e.to_string())?;
        if r.ok { Ok(r) } else { Err(format!("{:?}", r.report)) }
    })
    .await;
    assert_eq!(audit.report.members.len(), 3);
    assert_eq!(code(auditor.audit(&AuditRequest::default()).await), (400, ErrorCode::BadRequest));
}

/// A policy test by bravo's steward, and an access request from filing to approval.
async fn policy_test_and_access_request(analyst: &LocalClient, steward_b: &LocalClient) {
    // A policy test and an access request, from filing to approval.
    let t = PolicyTestRequest {
        as_member: "alpha".into(),
        purpose: "analysis".into(),
        dataset: "cases".into(),
        sql: "SELECT region, count(*) FROM cases GROUP BY region".into(),
    };
    let test = steward_b.policy_test(&t).await.expect("policy test");
    assert_eq!((test.requester.as_str(), test.subqueries.len()), ("alpha", 1));
    assert_eq!(test.subqueries[0].action, Some(concord_policy::Action::Aggregate));
    let ask = AccessAsk {
        dataset: "bravo.cases".into(),
        actions: vec![concord_policy::Action::Aggregate],
        purpose: "flu".into(),
        legal_basis: "charter".into(),
        days: 7,
    };
    let filed = analyst.file_access_request(&ask).await.expect("filed");
    assert_eq!((filed.direction, filed.status), (Direction::Out, AccessStatus::Pending));
    assert_eq!(filed.actions, [concord_policy::Action::Aggregate]);
    let inbox = steward_b.access_requests().await.expect("inbox");
    assert!(inbox.iter().any(|r| r.id == filed.id && r.direction == Direction::In));
    let approved = steward_b
        .decide(&filed.id, Decision::Approve, &DecideRequest { reason: String::new(), days: Some(1) })
        .await
        .expect("approved");
    assert_eq!(approved.status, AccessStatus::Approved);
    let again = steward_b
        .decide(&filed.id, Decision::Refuse, &DecideRequest { reason: "no".into(), days: None })
        .await;
    assert_eq!(code(again), (409, ErrorCode::Conflict));
    let mine = analyst.access_requests().await.expect("list");
    assert_eq!(mine.iter().find(|r| r.id == filed.id).map(|r| r.status), Some(AccessStatus::Approved));
}

/// A proposal, bravo's vote adopting version 2, and the charter's versions and history.
async fn governance_adopts_version_2(delegate: &LocalClient, analyst: &LocalClient, b: &DemoMember) {
    // Governance: the proposer votes yes, bravo's yes adopts version 2, which says what changed.
    let proposed = delegate
        .propose(&ProposeRequest { changes: vec![Change::MinGroupSize { size: 12 }], expires_in_secs: 3600 })
        .await
        .expect("proposed");
    let own = proposed.vote.expect("the proposer's yes");
    assert_eq!((own.outcome, own.yes, own.threshold, own.needed()), (VoteOutcome::Counted, 1, 2, 1));
    let listed = delegate.proposals().await.expect("proposals");
    assert_eq!(listed.proposals.len(), 1);
    assert_eq!(listed.proposals[0].yes, ["alpha"]);
    let same = ProposeRequest { changes: vec![Change::MinGroupSize { size: 10 }], expires_in_secs: 3600 };
    let (status, _) = code(delegate.propose(&same).await);
    assert_eq!(status, 400, "a proposal that changes nothing");
    let vote = VoteRequest { vote: Ballot::Yes, reason: "agreed".into() };
    let adopted = LocalClient::new(&b.local_url, &b.delegate_token)
        .vote(&proposed.proposal, &vote)
        .await
        .expect("vote");
    assert_eq!((adopted.outcome, adopted.version, adopted.needed()), (VoteOutcome::Adopted, 2, 0));
    let evidence = delegate.evidence(None).await.expect("evidence");
    assert!(evidence.evidence.is_empty() && evidence.next.is_none());
    let v2 = eventually(|| async {
        let c = analyst.charter(None).await.map_err(|e| e.to_string())?;
        if c.version == 2 { Ok(c) } else { Err(format!("version {}", c.version)) }
    })
    .await;
    assert_eq!((v2.min_group_size, v2.changes.as_slice()), (12, &["minimum group size 12".to_owned()][..]));
    let v1 = analyst.charter(Some(1)).await.expect("version 1");
    assert_eq!((v1.version, v1.changes.len(), v1.schemas.len()), (1, 0, 1));
    assert_eq!(code(analyst.charter(Some(9)).await), (404, ErrorCode::NotFound));
    let history = analyst.charter_history().await.expect("history");
    assert_eq!((history.versions.len(), history.genesis.as_str()), (2, v1.digest.as_str()));
    assert_eq!(code(analyst.leave().await), (403, ErrorCode::Forbidden), "leaving needs a delegate");
}

/// Sixteen `GET /v1/tables` at once, right after version 2 emptied alpha's catalog cache: bravo
/// is asked for its catalog once, not sixteen times.
async fn a_burst_of_table_lists_reads_each_catalog_once(analyst: &LocalClient, b: &DemoMember) {
    let bravo = LocalClient::new(&b.local_url, &b.operator_token);
    let served = || async {
        let text = bravo.metrics().await.expect("metrics");
        let line = text
            .lines()
            .find(|l| l.starts_with("concord_catalogs_served_total{member=\"bravo\"}"))
            .unwrap_or_else(|| panic!("no catalog counter in {text}"))
            .to_owned();
        line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).expect("a count")
    };
    let before = served().await;
    let lists = futures::future::join_all((0..16).map(|_| analyst.tables())).await;
    for l in lists {
        let l = l.expect("tables");
        assert!(
            l.warnings.is_empty() && l.tables.iter().any(|t| t.name == "bravo.cases"),
            "{:?}",
            l.warnings
        );
    }
    assert_eq!(served().await - before, 1, "one read of bravo's catalog served the burst");
}

/// One error shape for a malformed body, a bad parameter and an unknown token; returns that client.
async fn one_error_shape(a: &DemoMember) -> LocalClient {
    // One error shape, whatever the route: a malformed body, an unknown token.
    let raw = concord_node::net::client::local_request(
        &a.local_url,
        "POST",
        "/v1/query",
        Some(&a.analyst_token),
        b"{".to_vec(),
    )
    .await
    .expect("answers");
    let body: ErrorBody = serde_json::from_slice(&raw.body).expect("the error shape");
    assert_eq!((raw.status, body.error.code), (400, ErrorCode::BadRequest));
    let raw = concord_node::net::client::local_request(
        &a.local_url,
        "GET",
        "/v1/charter?version=x",
        Some(&a.analyst_token),
        vec![],
    )
    .await
    .expect("answers");
    let body: ErrorBody = serde_json::from_slice(&raw.body).expect("the error shape for a bad parameter");
    assert_eq!((raw.status, body.error.code), (400, ErrorCode::BadRequest));
    // An action that does not exist is named, with the ones that do.
    let ask = br#"{"dataset": "bravo.cases", "actions": ["delete"], "purpose": "p", "legal_basis": "l"}"#;
    let raw = concord_node::net::client::local_request(
        &a.local_url,
        "POST",
        "/v1/access/requests",
        Some(&a.analyst_token),
        ask.to_vec(),
    )
    .await
    .expect("answers");
    let body: ErrorBody = serde_json::from_slice(&raw.body).expect("the error shape for an unknown action");
    assert_eq!((raw.status, body.error.code), (400, ErrorCode::BadRequest));
    assert!(
        body.error.message.contains("delete") && body.error.message.contains("read_rows"),
        "{}",
        body.error.message
    );
    let stranger = LocalClient::new(&a.local_url, "concord_nobody");
    assert_eq!(code(stranger.status().await), (401, ErrorCode::Unauthorized));
    stranger
}

/// The OpenAPI document, fetched without a token, names every route with its methods.
async fn every_route_documented(stranger: &LocalClient) {
    // The document names every route the client calls, with its methods.
    let doc: serde_json::Value =
        serde_json::from_str(&stranger.openapi().await.expect("no token needed")).expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/status", "get"),
        ("/v1/tables", "get"),
        ("/v1/datasets", "get"),
        ("/v1/query", "post"),
        ("/v1/log/checkpoint", "get"),
        ("/v1/log/tile/{path}", "get"),
        ("/v1/log/receipt/{index}", "get"),
        ("/v1/audit", "post"),
        ("/v1/policy/test", "post"),
        ("/v1/access/requests", "get"),
        ("/v1/access/requests", "post"),
        ("/v1/access/requests/{id}/{decision}", "post"),
        ("/v1/governance/proposals", "get"),
        ("/v1/governance/proposals", "post"),
        ("/v1/governance/proposals/{id}/vote", "post"),
        ("/v1/governance/leave", "post"),
        ("/v1/governance/evidence", "get"),
        ("/v1/charter", "get"),
        ("/v1/charter/history", "get"),
        ("/metrics", "get"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(op["responses"]["200"].is_object() && op["responses"]["403"].is_object(), "{method} {path}");
    }
    assert_eq!(doc["paths"].as_object().map(|p| p.len()), Some(19), "no route left undocumented");
}
