//! Usage policies on running nodes: set while running, access requests across nodes, privacy
//! budgets (exhaustion, concurrency, replays, restarts), explanations without running.

use std::path::Path;

use concord_lab::demo::api_query;
use concord_node::NodeError;
use concord_node::net::client::local_call;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;
use concord_node::store::entry::LogEntry;

use crate::support::{Fed, Impostor, members_with, three_members};

fn entries(fed: &Fed, id: &str) -> Vec<LogEntry> {
    let i = fed.members.iter().position(|m| m.id == id).expect("member");
    let log = &fed.nodes[i].node.log;
    let raw = log.entries(0, log.size().expect("size")).expect("entries");
    raw.iter().map(|e| LogEntry::from_bytes(e).expect("a Concord entry")).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

async fn refusal(fed: &Fed, from: &str, sql: &str) -> (String, String) {
    match api_query(&fed.member(from).local_url, &fed.member(from).analyst_token, sql).await {
        Err(NodeError::Peer { code, message, .. }) => (code.to_string(), message),
        Err(e) => panic!("{sql}: unexpected error {e}"),
        Ok(_) => panic!("{sql}: must be refused"),
    }
}

const DAYS_HIDDEN: &str = r#"
classification = "general"
[columns]
region = "group"
days = "hidden"
[access]
rules = '''
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
'''
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_or_dataset_set_while_running_takes_effect_at_once() {
    let fed = three_members().await;
    let alpha = fed.member("alpha");
    let sql = "SELECT region, sum(days) AS d FROM charlie.cases GROUP BY region ORDER BY region";
    api_query(&alpha.local_url, &alpha.analyst_token, sql).await.expect("allowed by the default policy");
    let file = write(fed.dir.path(), "days-hidden.policy.toml", DAYS_HIDDEN);
    let p = admin::policy_set(&NodeDir::new(&fed.member("charlie").dir), "cases", &file).expect("policy set");
    let (code, message) = refusal(&fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused", "{message}");
    assert!(message.contains("charlie") && message.contains("column days is hidden"), "{message}");
    let logged = entries(&fed, "charlie").into_iter().any(|e| {
        matches!(e, LogEntry::PolicySet { dataset, policy_sha256, .. }
            if dataset == "cases" && policy_sha256 == format!("sha256:{}", p.digest()))
    });
    assert!(logged, "setting a policy is logged with its digest");
    // A dataset added to a running node is visible at once, to its own analysts and to others.
    let extra = write(fed.dir.path(), "extra.csv", "region,days\nnorth,1\nnorth,2\n");
    admin::dataset_add(&NodeDir::new(&fed.member("bravo").dir), "extra", &extra, None, Some("*"))
        .await
        .expect("dataset added");
    let bravo = fed.member("bravo");
    let own = api_query(&bravo.local_url, &bravo.analyst_token, "SELECT count(*) AS n FROM local.extra")
        .await
        .expect("own analysts see it");
    assert_eq!(concord_query::compare::cells(&own.batches).expect("cells").len(), 1);
    api_query(&alpha.local_url, &alpha.analyst_token, "SELECT count(*) AS n FROM bravo.extra")
        .await
        .expect("other members see it");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_policy_is_refused_and_nothing_changes() {
    let fed = three_members().await;
    let nd = NodeDir::new(&fed.member("bravo").dir);
    let before = admin::policy_show(&nd, "cases").expect("show").digest();
    let cases: &[(&str, &str, &str)] = &[
        ("unknown-column.toml", &DAYS_HIDDEN.replace("days = \"hidden\"", "dayz = \"hidden\""), "dayz"),
        ("cedar.toml", &DAYS_HIDDEN.replace("permit (principal,", "permit (principal"), "line 8"),
        ("mode.toml", &DAYS_HIDDEN.replace("\"hidden\"", "\"secret\""), "line 5"),
        (
            "loose.toml",
            &DAYS_HIDDEN.replace(
                "[columns]",
                "[personal]\nprivacy_unit = \"days\"\n[release]\nmin_group_size = 2\n[columns]",
            ),
            "groups of at least 10",
        ),
        ("member.toml", &DAYS_HIDDEN.replace("[access]", "[groups]\nfriends = [\"zulu\"]\n[access]"), "zulu"),
    ];
    for (name, text, needle) in cases {
        let file = write(fed.dir.path(), name, text);
        let e = admin::policy_set(&nd, "cases", &file).expect_err(name).to_string();
        assert!(e.contains(needle), "{name}: {e}");
    }
    let e = admin::policy_set(&nd, "nope", &write(fed.dir.path(), "ok.toml", DAYS_HIDDEN))
        .expect_err("no dataset");
    assert!(e.to_string().contains("no dataset nope"), "{e}");
    assert_eq!(admin::policy_show(&nd, "cases").expect("show").digest(), before, "nothing half-applied");
    fed.stop().await;
}

pub const IMPORTANT: &str = r#"
classification = "important"
[columns]
region = "group"
days = "aggregate"
[access]
rules = '''
@id("with a grant")
permit (principal, action == Action::"aggregate", resource) when { context.granted_actions.contains("aggregate") };
permit (principal, action == Action::"describe", resource);
'''
"#;

pub async fn steward(
    fed: &Fed,
    id: &str,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let m = fed.member(id);
    let r = local_call(&m.local_url, method, path, Some(&m.steward_token), Some(&body)).await.expect("sent");
    (r.status, serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_requests_end_to_end_with_expiry_and_revocation() {
    let fed = three_members().await;
    let file = write(fed.dir.path(), "important.toml", IMPORTANT);
    admin::policy_set(&NodeDir::new(&fed.member("bravo").dir), "cases", &file).expect("policy set");
    let sql = "SELECT region, sum(days) AS d FROM bravo.cases GROUP BY region ORDER BY region";
    let (code, message) = refusal(&fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused");
    assert!(message.contains("approved access request"), "{message}");
    let id = request_filed(&fed).await;
    only_stewards_decide(&fed, &id).await;
    approved_and_logged(&fed, &id, sql).await;
    revoked_at_once(&fed, &id, sql).await;
    expired_grant_serves_nothing(&fed, sql).await;
    refused_for_good(&fed, sql).await;
    fed.stop().await;
}

/// The body of an access request by alpha's analyst for `dataset`.
fn ask(dataset: &str) -> serde_json::Value {
    serde_json::json!({
        "dataset": dataset, "actions": ["aggregate"], "purpose": "analysis",
        "legal_basis": "public health act, art. 12", "days": 30
    })
}

/// Alpha's request for an unknown dataset leaves nothing; one for `bravo.cases` is pending.
async fn request_filed(fed: &Fed) -> String {
    let alpha = fed.member("alpha");
    // A request for a dataset that does not exist leaves nothing behind.
    let r = local_call(
        &alpha.local_url,
        "POST",
        "/v1/access/requests",
        Some(&alpha.analyst_token),
        Some(&ask("bravo.nope")),
    )
    .await
    .expect("sent");
    assert_ne!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("no dataset nope"));
    let r = local_call(
        &alpha.local_url,
        "POST",
        "/v1/access/requests",
        Some(&alpha.analyst_token),
        Some(&ask("bravo.cases")),
    )
    .await
    .expect("sent");
    assert_eq!(r.status, 200, "{:?}", r.error_parts());
    let filed: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let id = filed["id"].as_str().expect("id").to_owned();
    assert_eq!(filed["status"], "pending");
    id
}

/// Bravo's steward sees the request in its inbox; bravo's analyst may not decide it.
async fn only_stewards_decide(fed: &Fed, id: &str) {
    // The owner's steward sees it; an analyst's token cannot decide it.
    let (status, list) = steward(fed, "bravo", "GET", "/v1/access/requests", serde_json::Value::Null).await;
    assert_eq!(status, 200);
    assert!(list.as_array().expect("list").iter().any(|r| r["id"] == id && r["direction"] == "in"));
    let bravo = fed.member("bravo");
    let r = local_call(
        &bravo.local_url,
        "POST",
        &format!("/v1/access/requests/{id}/approve"),
        Some(&bravo.analyst_token),
        Some(&serde_json::json!({})),
    )
    .await
    .expect("sent");
    assert_eq!(r.status, 403, "only stewards decide");
}

/// Approved by bravo's steward: the query works under the grant, and both logs hold each step.
async fn approved_and_logged(fed: &Fed, id: &str, sql: &str) {
    let alpha = fed.member("alpha");
    let (status, approved) = steward(
        fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{id}/approve"),
        serde_json::json!({"days": 7}),
    )
    .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    let out = api_query(&alpha.local_url, &alpha.analyst_token, sql).await.expect("allowed with the grant");
    let bravo_part = out.provenance.iter().find(|c| c.member == "bravo").expect("bravo contributed");
    assert_eq!(bravo_part.release.grant.as_deref(), Some(id), "provenance names the grant");
    // The requester learned of the decision, and both logs hold every step.
    let (_, mine) = {
        let r = local_call(&alpha.local_url, "GET", "/v1/access/requests", Some(&alpha.analyst_token), None)
            .await
            .expect("sent");
        (r.status, serde_json::from_slice::<serde_json::Value>(&r.body).expect("json"))
    };
    assert!(mine.as_array().expect("list").iter().any(|r| r["id"] == id && r["status"] == "approved"));
    for who in ["alpha", "bravo"] {
        let e = entries(fed, who);
        assert!(
            e.iter()
                .any(|x| matches!(x, LogEntry::AccessRequestFiled { request_id, .. } if *request_id == id)),
            "{who}"
        );
        assert!(
            e.iter().any(|x| matches!(x, LogEntry::AccessRequestDecided { request_id, decision, .. } if *request_id == id && *decision == concord_node::wire::AccessStatus::Approved)),
            "{who}"
        );
    }
}

/// Revoked: alpha's query is refused again at once, and a second revocation is a conflict.
async fn revoked_at_once(fed: &Fed, id: &str, sql: &str) {
    // Revoked: refused again at once, and logged on both sides.
    let (status, revoked) = steward(
        fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{id}/revoke"),
        serde_json::json!({"reason": "the study ended"}),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    let (code, _) = refusal(fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused");
    let (status, _) = steward(
        fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{id}/revoke"),
        serde_json::json!({"reason": "again"}),
    )
    .await;
    assert_eq!(status, 409, "a revoked grant cannot be revoked again");
}

/// Expiry: a second grant serves until its period is over, then serves nothing.
async fn expired_grant_serves_nothing(fed: &Fed, sql: &str) {
    let (alpha, bravo) = (fed.member("alpha"), fed.member("bravo"));
    // Expiry: a second grant whose period is over no longer serves.
    let r = local_call(
        &alpha.local_url,
        "POST",
        "/v1/access/requests",
        Some(&alpha.analyst_token),
        Some(&ask("bravo.cases")),
    )
    .await
    .expect("sent");
    let id2 = serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) =
        steward(fed, "bravo", "POST", &format!("/v1/access/requests/{id2}/approve"), serde_json::json!({}))
            .await;
    assert_eq!(status, 200);
    api_query(&alpha.local_url, &alpha.analyst_token, sql).await.expect("allowed with the second grant");
    let db = rusqlite::Connection::open(NodeDir::new(&bravo.dir).state_db()).expect("db");
    db.execute(
        "UPDATE grants SET valid_until = ?1 WHERE id = ?2",
        rusqlite::params![chrono::Utc::now().timestamp() - 1, id2],
    )
    .expect("age the grant");
    let (code, _) = refusal(fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused", "an expired grant serves nothing");
}

/// Refused: a reason is needed, and a refused request cannot be approved afterwards.
async fn refused_for_good(fed: &Fed, sql: &str) {
    let alpha = fed.member("alpha");
    // Refused: a reason is needed, and a refused request cannot be approved afterwards.
    let r = local_call(
        &alpha.local_url,
        "POST",
        "/v1/access/requests",
        Some(&alpha.analyst_token),
        Some(&ask("bravo.cases")),
    )
    .await
    .expect("sent");
    let id3 = serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (status, _) =
        steward(fed, "bravo", "POST", &format!("/v1/access/requests/{id3}/refuse"), serde_json::json!({}))
            .await;
    assert_eq!(status, 400, "a refusal needs a reason");
    let (status, refused) = steward(
        fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{id3}/refuse"),
        serde_json::json!({"reason": "no legal basis for this purpose"}),
    )
    .await;
    assert_eq!((status, refused["status"].as_str()), (200, Some("refused")), "{refused}");
    let (status, _) =
        steward(fed, "bravo", "POST", &format!("/v1/access/requests/{id3}/approve"), serde_json::json!({}))
            .await;
    assert_eq!(status, 409);
    let (code, _) = refusal(fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused");
}

/// A personal dataset under differential privacy, with a small budget.
const PRIVATE: &str = r#"
classification = "general"
[personal]
privacy_unit = "id"
[columns]
id = "hidden"
region = "group"
days = "aggregate"
[release]
min_group_size = 10
[release.privacy]
mechanism = "zcdp"
cost = 0.01
budget_per_requester = BUDGET
budget_per_dataset = 100.0
bounds = { days = [0, 30] }
[release.privacy.keys]
region = ["north", "south"]
[access]
rules = '''
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
'''
"#;

async fn private_dataset(fed: &Fed, owner: &str, budget: &str) {
    let mut csv = String::from("id,region,days\n");
    for i in 0..200 {
        csv.push_str(&format!("{i},{},{}\n", if i % 2 == 0 { "north" } else { "south" }, i % 20));
    }
    let data = write(fed.dir.path(), "people.csv", &csv);
    let nd = NodeDir::new(&fed.member(owner).dir);
    admin::dataset_add(&nd, "people", &data, None, None).await.expect("dataset added");
    let policy = write(fed.dir.path(), "people.policy.toml", &PRIVATE.replace("BUDGET", budget));
    admin::policy_set(&nd, "people", &policy).expect("policy set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_is_spent_once_and_survives_a_restart() {
    let fed = three_members().await;
    private_dataset(&fed, "bravo", "0.05").await;
    let alpha = fed.member("alpha");
    let sql = "SELECT region, count(*) AS n FROM bravo.people GROUP BY region ORDER BY region";
    for i in 0..5 {
        let out = api_query(&alpha.local_url, &alpha.analyst_token, sql)
            .await
            .unwrap_or_else(|e| panic!("query {i}: {e}"));
        let b = out
            .provenance
            .iter()
            .find(|c| c.member == "bravo")
            .expect("bravo")
            .release
            .budget
            .clone()
            .expect("budget");
        assert_eq!(b.parameter, "rho");
        assert_eq!(b.charged, "0.01");
        assert_eq!(b.requester_remaining, format!("{}", ["0.04", "0.03", "0.02", "0.01", "0"][i]));
    }
    let (code, message) = refusal(&fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused");
    assert!(
        message.contains("budget exhausted") && message.contains("has 0 left") && message.contains("0.01"),
        "{message}"
    );
    // Charlie has a budget of its own.
    let charlie = fed.member("charlie");
    api_query(&charlie.local_url, &charlie.analyst_token, sql).await.expect("charlie's budget is untouched");

    // The ledger is in bravo's database: a restart changes nothing.
    let Fed { dir, members, nodes } = fed;
    for n in nodes {
        n.stop().await;
    }
    let nodes = concord_lab::demo::start_all(&members).await.expect("restart");
    let fed = Fed { dir, members, nodes };
    let (code, message) = refusal(&fed, "alpha", sql).await;
    assert_eq!(code, "policy_refused", "{message}");
    assert!(message.contains("budget exhausted"), "{message}");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_near_the_limit_never_overspend_and_replays_draw_no_new_noise() {
    let fed = members_with(&["alpha", "bravo"], |_, l| {
        l.peer_requests_per_sec = 1000;
        l.peer_burst = 1000;
        l.max_connections = 512;
        l.max_connections_per_address = 256;
    })
    .await;
    // Room for exactly 100 queries.
    private_dataset(&fed, "bravo", "1.0").await;
    let alpha = Impostor::of(&fed, "alpha");
    let mut sends = Vec::new();
    for _ in 0..130 {
        let mut request =
            alpha.request("bravo", "SELECT region AS g0, count(1) AS p0 FROM people GROUP BY region");
        request.dataset = "people".into();
        let body = request.sign(&alpha.signer).expect("signed").to_bytes();
        let (alpha, fed) = (&alpha, &fed);
        sends.push(async move { alpha.send(fed, "bravo", "POST", "/v1/query", body).await });
    }
    let answers = futures::future::join_all(sends).await;
    let released = answers.iter().filter(|r| r.status == 200).count();
    let exhausted =
        answers.iter().filter(|r| r.status == 403 && r.error_parts().1.contains("budget exhausted")).count();
    assert_eq!(released, 100, "exactly the budget's worth is released");
    assert_eq!(exhausted, 30, "the rest is refused for the budget");
    let db = rusqlite::Connection::open(NodeDir::new(&fed.member("bravo").dir).state_db()).expect("db");
    let spent: i64 = db
        .query_row(
            "SELECT sum(cost) FROM budget_charges WHERE dataset = 'people' AND requester = 'alpha'",
            [],
            |r| r.get(0),
        )
        .expect("sum");
    assert_eq!(spent, 1_000_000_000, "the ledger holds exactly the budget");

    // A replayed request gets the same release byte for byte, and is charged once.
    let fed2 = members_with(&["alpha", "bravo"], |_, _| {}).await;
    private_dataset(&fed2, "bravo", "1.0").await;
    let alpha = Impostor::of(&fed2, "alpha");
    let mut request =
        alpha.request("bravo", "SELECT region AS g0, count(1) AS p0 FROM people GROUP BY region");
    request.dataset = "people".into();
    let note = request.sign(&alpha.signer).expect("signed");
    let first = alpha.send(&fed2, "bravo", "POST", "/v1/query", note.to_bytes()).await;
    let again = alpha.send(&fed2, "bravo", "POST", "/v1/query", note.to_bytes()).await;
    assert_eq!(first.status, 200, "{:?}", first.error_parts());
    assert_eq!(again.status, 200, "{:?}", again.error_parts());
    assert_eq!(first.body, again.body, "the same noisy release");
    let db = rusqlite::Connection::open(NodeDir::new(&fed2.member("bravo").dir).state_db()).expect("db");
    let charges: i64 = db
        .query_row("SELECT count(*) FROM budget_charges WHERE dataset = 'people'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(charges, 1);
    fed.stop().await;
    fed2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_test_explains_without_running_and_explain_sends_nothing() {
    let fed = three_members().await;
    private_dataset(&fed, "bravo", "1.0").await;
    let test = |sql: &str| serde_json::json!({ "as": "alpha", "purpose": "analysis", "dataset": "people", "sql": sql });
    let golden: &[(&str, &[&str], &str)] = &[
        (
            "SELECT region, count(*) AS n FROM people GROUP BY region",
            &[
                "column region (group) used as a group key in GROUP BY: allowed",
                "differential privacy (zcdp): costs rho 0.01 (epsilon 0.7534 at delta 1e-6), noise scale per aggregate (fixed-point units) 7.07",
                "every combination of the public keys (2 groups) is released with noise, zeros included; values outside the keys are not",
            ],
            "released",
        ),
        (
            "SELECT region, sum(days) AS d, avg(days) AS a FROM people WHERE region = 'north' GROUP BY region",
            &[
                "column region (group) used in a filter in WHERE: allowed",
                "column region (group) used as a group key in GROUP BY: allowed",
                "column days (aggregate) aggregated in SUM(): allowed",
                "column days (aggregate) aggregated in COUNT(): allowed",
            ],
            "released",
        ),
        (
            "SELECT id, count(*) FROM people GROUP BY id",
            &["column id (hidden) used as a group key in GROUP BY: refused"],
            "refused: refused by policy: column id is hidden and cannot be used as a group key (in GROUP BY)",
        ),
        (
            "SELECT max(days) FROM people",
            &["column days (aggregate) inside MIN or MAX in MAX(): refused (MIN/MAX not allowed)"],
            "refused: refused by policy: MIN and MAX of days reveal one person's value and are never released under differential privacy",
        ),
    ];
    let bravo = fed.member("bravo");
    let log_size = entries(&fed, "bravo").len();
    for (sql, lines, verdict) in golden {
        let (status, report) = steward(&fed, "bravo", "POST", "/v1/policy/test", test(sql)).await;
        assert_eq!(status, 200, "{sql}: {report}");
        let q = &report["subqueries"][0];
        assert_eq!(q["access"]["outcome"].as_str(), Some("allowed"), "{sql}: {q}");
        let got: Vec<&str> =
            q["lines"].as_array().expect("lines").iter().filter_map(|l| l.as_str()).collect();
        for want in *lines {
            assert!(got.contains(want), "{sql}: expected line {want:?} in {got:#?}");
        }
        let got: concord_query::release::Verdict =
            serde_json::from_value(q["verdict"].clone()).expect("a verdict");
        assert_eq!(got.to_string(), *verdict, "{sql}");
        assert_eq!(q["budget_left"].as_str(), Some("rho 1 of 1"), "{sql}: nothing was spent");
    }
    // Only stewards explain.
    let r = local_call(
        &bravo.local_url,
        "POST",
        "/v1/policy/test",
        Some(&bravo.analyst_token),
        Some(&test("SELECT 1")),
    )
    .await
    .expect("sent");
    assert_eq!(r.status, 403);
    assert_eq!(entries(&fed, "bravo").len(), log_size, "explaining logs no access");

    // EXPLAIN shows the plan and each owner's sub-query; no owner hears of it.
    let alpha = fed.member("alpha");
    let sizes: Vec<usize> = ["bravo", "charlie"].iter().map(|m| entries(&fed, m).len()).collect();
    let out = api_query(
        &alpha.local_url,
        &alpha.analyst_token,
        "EXPLAIN SELECT region, count(*) FROM cases GROUP BY region",
    )
    .await
    .expect("explained");
    let cells = concord_query::compare::cells(&out.batches).expect("cells");
    let text = format!("{cells:?}");
    assert!(text.contains("sub-query for bravo.cases (not sent)") && text.contains("GROUP BY"), "{text}");
    assert!(out.provenance.is_empty());
    let after: Vec<usize> = ["bravo", "charlie"].iter().map(|m| entries(&fed, m).len()).collect();
    assert_eq!(sizes, after, "EXPLAIN sends nothing, so owners log nothing");
    fed.stop().await;
}
