//! Privacy against an adaptive analyst, acted out on started federations: each test is an
//! attack that must fail. No release under differential privacy is decided on an exact count;
//! personal data is protected by default; a budget is spent only where something is released;
//! third members see no query text, purpose or literal; grants and refusals are named.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use concord_charter::governance::{Ballot, Change};
use concord_charter::{AccessNotes, ColumnType, SchemaColumn, SharedSchema};
use concord_lab::demo::{ApiResult, DemoMember, MemberSpec, setup, start_all};
use concord_node::net::client::local_call;
use concord_node::node::admin;
use concord_node::store::config::NodeDir;
use concord_node::store::entry::LogEntry;
use concord_query::compare::Cell;

use crate::support::{Fed, audit, free_ports, set_limits, settle};

/// The shared schema of the tests: people, identified by person_id, with personal columns.
fn people_schema() -> SharedSchema {
    let c = |name: &str, ty, personal| SchemaColumn { name: name.into(), ty, personal };
    SharedSchema {
        name: "people".into(),
        version: 1,
        columns: vec![
            c("person_id", ColumnType::Int64, true),
            c("region", ColumnType::Utf8, false),
            c("age_band", ColumnType::Utf8, true),
            c("income", ColumnType::Int64, true),
        ],
        privacy_unit: Some("person_id".into()),
    }
}

/// 400 people a member (north and south alike); bravo also holds two small regions of 9 and
/// 10 people, as an attacker pads a target's cell to k−1 or k.
fn write_people(dir: &Path, member: u64) -> std::path::PathBuf {
    let folder = dir.join("data").join(member.to_string());
    std::fs::create_dir_all(&folder).expect("folder");
    let path = folder.join("people.csv");
    let mut s = String::from("person_id,region,age_band,income\n");
    let bands = ["0-29", "30-59", "60-89", "90+"];
    for i in 0..400u64 {
        let region = if i % 2 == 0 { "north" } else { "south" };
        s.push_str(&format!(
            "{},{region},{},{}\n",
            member * 10_000 + i,
            bands[(i % 4) as usize],
            (i * 37) % 1000
        ));
    }
    if member == 1 {
        for i in 0..19u64 {
            let region = if i < 9 { "tiny9" } else { "tiny10" };
            s.push_str(&format!("{},{region},30-59,500\n", member * 10_000 + 5000 + i));
        }
    }
    std::fs::write(&path, s).expect("write");
    path
}

/// Alpha, bravo and charlie, each with a `people` dataset registered with `--allow '*'` and no
/// policy of its own: the policy is derived from the schema. Catalogs are read at every query.
async fn people_federation() -> Fed {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = ["alpha", "bravo", "charlie"];
    let specs: Vec<MemberSpec> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| MemberSpec {
            id: (*id).into(),
            name: format!("Member {id}"),
            jurisdiction: id.to_uppercase(),
            files: vec![write_people(dir.path(), i as u64)],
        })
        .collect();
    let members =
        setup(dir.path(), "test", &specs, vec![people_schema()], free_ports(9)).await.expect("setup");
    for m in &members {
        set_limits(&m.dir, |l| {
            l.catalog_ttl_secs = 0;
            // The attacks send many queries in a row: more than a member may send by default.
            l.peer_requests_per_sec = 1000;
            l.peer_burst = 1000;
        });
    }
    let nodes = start_all(&members).await.expect("nodes start");
    Fed { dir, members, nodes }
}

/// A query through the analyst's local API, with a purpose and partial flag.
async fn ask(m: &DemoMember, sql: &str, purpose: &str, partial: bool) -> Result<ApiResult, (String, String)> {
    let body = serde_json::json!({ "sql": sql, "purpose": purpose, "partial": partial });
    let resp = local_call(&m.local_url, "POST", "/v1/query", Some(&m.analyst_token), Some(&body))
        .await
        .expect("sent");
    if resp.status != 200 {
        return Err(resp.error_parts());
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json");
    let ipc = B64.decode(v["arrow_ipc"].as_str().expect("ipc")).expect("base64");
    let (schema, batches) = concord_query::ipc::decode(&ipc).expect("ipc");
    Ok(ApiResult {
        schema,
        batches,
        provenance: serde_json::from_value(v["provenance"].clone()).expect("provenance"),
        left_out: serde_json::from_value(v["left_out"].clone()).unwrap_or_default(),
    })
}

fn rows(r: &ApiResult) -> Vec<Vec<Cell>> {
    concord_query::compare::cells(&r.batches).expect("cells")
}

fn number(c: &Cell) -> f64 {
    match c {
        Cell::Float(f) => *f,
        Cell::Text(t) => t.parse().unwrap_or_else(|_| panic!("not a number: {t}")),
        Cell::Null => panic!("NULL where a number was due"),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn node_of<'a>(fed: &'a Fed, id: &str) -> &'a concord_node::node::Node {
    &fed.nodes.iter().find(|n| n.node.cfg.member == id).expect("running").node
}

fn db(fed: &Fed, id: &str) -> rusqlite::Connection {
    rusqlite::Connection::open(NodeDir::new(&fed.member(id).dir).state_db()).expect("db")
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

/// Every byte under a folder, for searching what a member's node keeps.
fn folder_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("folder") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            out.extend(folder_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

/// Whether `needle` is in `haystack` as it is, or inside any base64 text of it.
fn holds(haystack: &[u8], needle: &str) -> bool {
    let raw = |h: &[u8]| h.windows(needle.len()).any(|w| w == needle.as_bytes());
    if raw(haystack) {
        return true;
    }
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    haystack.split(|c| !b64(c)).filter(|run| run.len() >= 16).any(|run| {
        (0..4).any(|skip| {
            let run = &run[skip.min(run.len())..];
            let run = &run[..run.len() / 4 * 4];
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(run).is_ok_and(|d| raw(&d))
        })
    })
}

/// A policy of people with a cost and budget of the test's choosing.
fn dp_policy(cost: &str, budget: &str, rules: &str) -> String {
    format!(
        r#"classification = "general"
[personal]
privacy_unit = "person_id"
[columns]
person_id = "hidden"
region = "group"
age_band = "filter"
income = "aggregate"
[release]
min_group_size = 10
[release.privacy]
mechanism = "zcdp"
cost = {cost}
budget_per_requester = {budget}
budget_per_dataset = 1000.0
bounds = {{ income = [0, 1000] }}
delta = 1e-6
[access]
rules = '''
{rules}
'''
"#
    )
}

const EVERYONE: &str =
    r#"permit (principal, action in [Action::"aggregate", Action::"describe"], resource);"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_personal_schema_is_protected_by_default_whatever_allow_says() {
    let fed = people_federation().await;
    let alpha = fed.member("alpha");
    the_derived_policy_refuses_what_it_must(alpha).await;
    releases_come_with_noise_and_their_guarantee(alpha).await;
    let bravo = NodeDir::new(&fed.member("bravo").dir);
    a_file_allowed_to_one_member_releases_no_person(&fed, alpha, &bravo).await;
    a_replacement_keeps_the_derived_policy(&fed, &bravo).await;
    a_plain_personal_column_is_refused(&fed, &bravo);
    fed.stop().await;
}

/// The derived policy: the unit hidden, personal columns aggregate-only, no rows.
async fn the_derived_policy_refuses_what_it_must(alpha: &DemoMember) {
    // The derived policy: the unit hidden, personal columns aggregate-only, noise.
    for (sql, says) in [
        ("SELECT person_id, sum(income) FROM bravo.people GROUP BY person_id", "person_id is hidden"),
        ("SELECT count(*) FROM bravo.people WHERE person_id = 10007", "person_id is hidden"),
        ("SELECT region, income FROM bravo.people", "personal data"),
        ("SELECT age_band, count(*) FROM bravo.people GROUP BY age_band", "age_band is aggregate"),
        ("SELECT region, sum(income) FROM bravo.people GROUP BY region", "clamping bounds"),
        ("SELECT * FROM people", "rows"),
    ] {
        let (code, message) = ask(alpha, sql, "analysis", false).await.expect_err(sql);
        assert!(code.contains("refused"), "{sql}: {code} {message}");
        assert!(message.contains(says), "{sql}: {message}");
    }
}

/// What it releases comes with noise, its threshold and its (epsilon, delta); small cells stay out.
async fn releases_come_with_noise_and_their_guarantee(alpha: &DemoMember) {
    // What it releases comes with noise, its threshold and its (epsilon, delta).
    let r = ask(
        alpha,
        "SELECT region, count(*) AS n FROM people GROUP BY region ORDER BY region",
        "analysis",
        false,
    )
    .await
    .expect("counts by region");
    for c in r.provenance.iter().filter(|c| c.member != "alpha") {
        assert_eq!(c.rows_scanned, None, "no dataset size under differential privacy: {c:?}");
        assert_eq!(c.release.mechanism.as_deref(), Some("zcdp"));
        assert!(c.release.threshold.is_some_and(|t| t >= 10), "{c:?}");
        assert_eq!(c.release.delta, Some(1e-6));
        assert!(c.release.guarantee.is_some_and(|g| g.epsilon > 0.0 && g.delta > 0.0), "{c:?}");
        assert_eq!(
            c.release.budget.as_ref().map(|b| b.charged.as_str()),
            Some("0.01"),
            "the documented default cost"
        );
    }
    let got: Vec<String> = rows(&r).iter().map(|row| format!("{:?}", row[0])).collect();
    assert!(
        got.iter().all(|k| !k.contains("tiny")),
        "cells of 9 and 10 people pass a threshold near 40 only by a 4-sigma draw: {got:?}"
    );
}

/// A file added under the schema with `--allow` for alpha still gives alpha no row and no person.
async fn a_file_allowed_to_one_member_releases_no_person(fed: &Fed, alpha: &DemoMember, bravo: &NodeDir) {
    // A file added under the schema with --allow for one member: no row and no single
    // person's value comes back to that member either.
    let extra = write(
        fed.dir.path(),
        "more.csv",
        "person_id,region,age_band,income\n1,north,30-59,999\n2,north,30-59,5\n",
    );
    let added = admin::dataset_register(
        bravo,
        &admin::DatasetSpec {
            name: "more",
            file: &extra,
            shared_schema: Some("people"),
            allow: Some("alpha"),
            csv: Default::default(),
            postgres: None,
            ballista: None,
        },
        false,
    )
    .await
    .expect("registered");
    assert!(added.notes.iter().any(|n| n.contains("derived")), "{:?}", added.notes);
    for sql in [
        "SELECT person_id, region, income FROM bravo.more",
        "SELECT person_id, count(*) FROM bravo.more GROUP BY person_id",
        "SELECT region, age_band, count(*) FROM bravo.more GROUP BY region, age_band",
    ] {
        ask(alpha, sql, "analysis", false).await.expect_err(sql);
    }
    // Two people: the count comes back noisy, never the exact 2.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r =
            ask(alpha, "SELECT count(*) AS n FROM bravo.more", "analysis", false).await.expect("noisy count");
        seen.push(number(&rows(&r)[0][0]));
    }
    assert!(seen.iter().any(|v| *v != 2.0), "five exact answers: {seen:?}");
}

/// A replacement keeps the derived policy and says so; `--allow` cannot swap it.
async fn a_replacement_keeps_the_derived_policy(fed: &Fed, bravo: &NodeDir) {
    // A replacement keeps the derived policy and says so; --allow cannot swap it.
    let before = admin::policy_show(bravo, "people").expect("policy").digest();
    let file = write_people(fed.dir.path(), 1);
    let (_, changes) =
        admin::dataset_replace(bravo, "people", &file, Some("people"), None).await.expect("replaced");
    assert!(changes.iter().any(|c| c.starts_with("policy kept")), "{changes:?}");
    assert_eq!(admin::policy_show(bravo, "people").expect("policy").digest(), before);
    admin::dataset_replace(bravo, "people", &file, Some("people"), Some("*"))
        .await
        .expect_err("--allow on replace");
}

/// A policy that would make a personal column plain is refused, naming the rule.
fn a_plain_personal_column_is_refused(fed: &Fed, bravo: &NodeDir) {
    // A policy that would make a personal column plain is refused, naming the rule.
    let plain = write(
        fed.dir.path(),
        "plain.toml",
        &dp_policy("0.01", "1.0", EVERYONE).replace("income = \"aggregate\"", "income = \"plain\""),
    );
    let e = admin::policy_set(bravo, "people", &plain).expect_err("plain personal column");
    assert!(e.to_string().contains("column income is personal"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_release_under_differential_privacy_is_decided_on_an_exact_count() {
    let fed = people_federation().await;
    let alpha = fed.member("alpha");
    let bravo = NodeDir::new(&fed.member("bravo").dir);
    // Little noise, so that cells near the minimum sometimes pass: sigma 1, threshold 10.
    let policy = write(fed.dir.path(), "loud.toml", &dp_policy("0.5", "1000.0", EVERYONE));
    admin::policy_set(&bravo, "people", &policy).expect("set");

    // The padding attack: cells of k−1 and k people. An exact gate would show one and never
    // the other; on the noisy count each is shown in some runs and held back in others.
    let sql =
        "SELECT region, count(*) AS n FROM bravo.people WHERE region IN ('tiny9', 'tiny10') GROUP BY region";
    let (mut nine, mut ten) = ((0, 0), (0, 0));
    for _ in 0..40 {
        let r = ask(alpha, sql, "analysis", false).await.expect("runs");
        let keys: Vec<String> = rows(&r).iter().map(|row| format!("{:?}", row[0])).collect();
        let shown = |k: &str| keys.iter().any(|x| x.contains(k));
        if shown("tiny9") {
            nine.0 += 1
        } else {
            nine.1 += 1
        }
        if shown("tiny10") {
            ten.0 += 1
        } else {
            ten.1 += 1
        }
        let c = r.provenance.iter().find(|c| c.member == "bravo").expect("bravo");
        assert_eq!(c.release.threshold, Some(10), "the minimum binds on the noisy count");
        assert_eq!(c.release.groups_suppressed, 0, "held back groups are not counted");
    }
    // Shown with probability about 0.24 and 0.6: each outcome missed in 40 runs by chance
    // under 1e-4.
    assert!(nine.0 > 0 && nine.1 > 0 && ten.0 > 0 && ten.1 > 0, "nine {nine:?}, ten {ten:?}");

    // A global aggregate over no one (tiny9's people are all 30-59) or an empty region is
    // answered, with noise: never an exact 0 for "held back", never a form that tells which
    // side of ten the set is on. A noisy count below 0 is released as 0, so with sigma 1 about
    // 0.7 of the answers are 0: 40 of them all 0 by chance is under 1e-6.
    let tiny = "SELECT count(*) AS n FROM bravo.people WHERE region = 'tiny9' AND age_band = '90+'";
    let empty = "SELECT count(*) AS n FROM bravo.people WHERE region = 'nowhere'";
    for sql in [tiny, empty] {
        let values: Vec<f64> = {
            let mut v = Vec::new();
            for _ in 0..40 {
                let r = ask(alpha, sql, "analysis", false).await.expect("answered");
                assert_eq!(r.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "{sql}");
                v.push(number(&rows(&r)[0][0]));
            }
            v
        };
        assert!(values.iter().any(|v| *v != 0.0), "{sql}: {values:?}");
    }

    // FILTER sets are not gated: a set of one person in a large group gives a noisy value,
    // and the group is there either way.
    let filtered = "SELECT region, count(*) AS n, count(*) FILTER (WHERE age_band = '90+' AND region = 'tiny10') AS f \
                    FROM bravo.people WHERE region IN ('north', 'south') GROUP BY region";
    let r = ask(alpha, filtered, "analysis", false).await.expect("runs");
    assert_eq!(rows(&r).len(), 2, "both large regions pass: {:?}", rows(&r));

    // DISTINCT and keys alone: presence decided on the noisy count, and charged as a count.
    let before = count(&db(&fed, "bravo"), "SELECT count(*) FROM budget_charges");
    let r = ask(alpha, "SELECT DISTINCT region FROM bravo.people WHERE age_band = '90+'", "analysis", false)
        .await
        .expect("runs");
    let c = r.provenance.iter().find(|c| c.member == "bravo").expect("bravo");
    assert_eq!(c.release.budget.as_ref().map(|b| b.charged.as_str()), Some("0.5"));
    assert_eq!(count(&db(&fed, "bravo"), "SELECT count(*) FROM budget_charges"), before + 1);

    // Differencing two queries that differ by one person meets noise of its stated scale.
    let all = "SELECT count(*) AS n FROM bravo.people WHERE region = 'tiny10'";
    let but_one = "SELECT count(*) AS n FROM bravo.people WHERE region = 'tiny10' AND age_band <> '90+'";
    let mut differences = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let a = number(&rows(&ask(alpha, all, "analysis", false).await.expect("a"))[0][0]);
        let b = number(&rows(&ask(alpha, but_one, "analysis", false).await.expect("b"))[0][0]);
        differences.insert((a - b) as i64);
    }
    assert!(
        differences.len() > 1,
        "the difference of two noisy counts is not a fixed number: {differences:?}"
    );

    // COUNT(NULL) counts nothing, as in pooled SQL: a noisy 0, not the count of rows.
    let r = ask(
        alpha,
        "SELECT count(NULL) AS nothing, count(*) AS everyone FROM bravo.people",
        "analysis",
        false,
    )
    .await
    .expect("runs");
    let row = &rows(&r)[0];
    let sigma =
        r.provenance.iter().find(|c| c.member == "bravo").map(|c| c.release.noise_scale[0].1).expect("scale");
    assert!(number(&row[0]).abs() < 6.0 * sigma, "{row:?} with sigma {sigma}");
    assert!((number(&row[1]) - 419.0).abs() < 6.0 * sigma, "{row:?}");
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_one_owner_refuses_spends_no_budget_at_any_other() {
    let fed = people_federation().await;
    let alpha = fed.member("alpha");
    // Charlie's budget cannot pay for one query: it refuses at the check round.
    let poor = write(fed.dir.path(), "poor.toml", &dp_policy("0.01", "0.001", EVERYONE));
    admin::policy_set(&NodeDir::new(&fed.member("charlie").dir), "people", &poor).expect("set");
    let sql = "SELECT region, count(*) AS n FROM people GROUP BY region";
    for _ in 0..3 {
        let (code, message) = ask(alpha, sql, "analysis", false).await.expect_err("charlie refuses");
        assert_eq!(code, "policy_refused", "{message}");
        assert!(message.contains("charlie") && message.contains("budget exhausted"), "{message}");
    }
    let bravo = db(&fed, "bravo");
    assert_eq!(count(&bravo, "SELECT count(*) FROM budget_charges"), 0, "bravo charged nothing");
    assert_eq!(node_of(&fed, "bravo").state.reserved(), 0, "and holds nothing back");
    // The withdrawn requests cannot be run later: their ids are spent at bravo.
    let requested: Vec<String> = entries(&fed, "alpha")
        .into_iter()
        .filter_map(|e| match e {
            LogEntry::AccessRequested { request_id, owner, .. } if owner == "bravo" => Some(request_id),
            _ => None,
        })
        .collect();
    assert_eq!(requested.len(), 3);
    for id in &requested {
        assert!(node_of(&fed, "bravo").state.request_seen(id, "alpha").expect("state"), "{id}");
    }
    // With a partial answer asked for, each owner answers on its own: bravo's release is used
    // and charged, whatever charlie says.
    let (code, _) = ask(alpha, sql, "analysis", true).await.expect_err("a refusal still fails the query");
    assert_eq!(code, "policy_refused");
    assert_eq!(
        count(&bravo, "SELECT count(*) FROM budget_charges"),
        1,
        "--partial: bravo released and charged"
    );
    // A query that every owner answers is charged once at each.
    let rich = write(fed.dir.path(), "rich.toml", &dp_policy("0.01", "1.0", EVERYONE));
    admin::policy_set(&NodeDir::new(&fed.member("charlie").dir), "people", &rich).expect("set");
    ask(alpha, sql, "analysis", false).await.expect("every owner answers");
    assert_eq!(count(&bravo, "SELECT count(*) FROM budget_charges"), 2);
    assert_eq!(count(&db(&fed, "charlie"), "SELECT count(*) FROM budget_charges"), 1);
    assert_eq!(node_of(&fed, "bravo").state.reserved(), 0, "the reservation became the charge");
    fed.stop().await;
}

fn entries(fed: &Fed, id: &str) -> Vec<LogEntry> {
    let log = &node_of(fed, id).log;
    let raw = log.entries(0, log.size().expect("size")).expect("entries");
    raw.iter().map(|e| LogEntry::from_bytes(e).expect("a Concord entry")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_third_member_sees_who_asked_whom_and_no_query_text() {
    let fed = people_federation().await;
    let alpha = fed.member("alpha");
    let needle = "zz-needle-7731";
    let purpose = "purpose-needle-5519";
    a_query_and_a_refusal_carry_needles(alpha, needle, purpose).await;
    let id = an_access_request_filed(alpha, purpose).await;
    a_useless_grant_refused_then_the_request(&fed, &id).await;
    settle(&fed).await;

    // Charlie audits everyone: twins reconciled, nothing of the notes seen or kept.
    let secrets = [needle, purpose, "zz-refused-4410", "basis-needle-3301", "reason-needle-8812"];
    charlie_sees_and_keeps_none_of(&fed, secrets).await;
    the_parties_keep_and_check_the_notes(&fed, needle).await;
    public_notes_by_charter_are_in_the_log(&fed, alpha, purpose).await;
    fed.stop().await;
}

/// Alpha's analyst runs a query and has one refused, each with a needle in its SQL and purpose.
async fn a_query_and_a_refusal_carry_needles(alpha: &DemoMember, needle: &str, purpose: &str) {
    let sql = format!("SELECT count(*) AS n FROM bravo.people WHERE region = '{needle}'");
    ask(alpha, &sql, purpose, false).await.expect("runs");
    ask(alpha, "SELECT region, income FROM bravo.people WHERE region = 'zz-refused-4410'", purpose, false)
        .await
        .expect_err("refused: its reason, which quotes the SQL, stays with the parties");
}

/// Alpha files an access request whose purpose and legal basis are needles; returns its id.
async fn an_access_request_filed(alpha: &DemoMember, purpose: &str) -> String {
    // An access request and its decision: purpose and legal basis stay with the parties too.
    let body = serde_json::json!({"dataset": "bravo.people", "actions": ["read_rows"], "purpose": purpose,
        "legal_basis": "basis-needle-3301", "days": 30});
    let r =
        local_call(&alpha.local_url, "POST", "/v1/access/requests", Some(&alpha.analyst_token), Some(&body))
            .await
            .expect("sent");
    assert_eq!(r.status, 200, "{:?}", r.error_parts());
    let filed: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    filed["id"].as_str().expect("id").to_owned()
}

/// Approving a grant the policy could never use is refused; the request is refused with a reason.
async fn a_useless_grant_refused_then_the_request(fed: &Fed, id: &str) {
    // A grant the policy could never use is refused at approval, with the reason.
    let (status, answer) = crate::policy::steward(
        fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{id}/approve"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.to_string().contains("personal data") && answer.to_string().contains("read_rows"),
        "{answer}"
    );
    let (status, _) = crate::policy::steward(
        fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{id}/refuse"),
        serde_json::json!({"reason": "reason-needle-8812"}),
    )
    .await;
    assert_eq!(status, 200);
}

/// Charlie's audit passes, and neither it, charlie's folder nor the logs it read hold a secret.
async fn charlie_sees_and_keeps_none_of(fed: &Fed, secrets: [&str; 5]) {
    let report = audit(fed, "charlie", serde_json::json!({"all": true})).await;
    assert_eq!(report["ok"], true, "{report}");
    let text = report.to_string();
    for s in secrets {
        assert!(!text.contains(s), "{s} in charlie's audit: {text}");
    }
    let charlie_folder = folder_bytes(&fed.member("charlie").dir);
    for s in secrets {
        assert!(!holds(&charlie_folder, s), "{s} in charlie's node folder");
    }
    // The logs charlie read hold the public facts, not the notes.
    for id in ["alpha", "bravo"] {
        for e in entries(fed, id) {
            let raw = String::from_utf8(e.to_bytes().expect("json")).expect("utf8");
            let decoded: String = raw
                .split('"')
                .filter_map(|s| B64.decode(s).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .collect();
            for s in secrets {
                assert!(!raw.contains(s) && !decoded.contains(s), "{s} in {id}'s log: {raw}");
            }
        }
    }
}

/// The parties keep the notes, and their audits check them against the commitments.
async fn the_parties_keep_and_check_the_notes(fed: &Fed, needle: &str) {
    // The parties keep the notes, and their audits check them against the commitments.
    for id in ["alpha", "bravo"] {
        assert!(holds(&folder_bytes(&fed.member(id).dir), needle), "{id} keeps the request's details");
        let report = audit(fed, id, serde_json::json!({"all": true})).await;
        assert_eq!(report["ok"], true, "{report}");
        assert!(report["report"]["notes_checked"].as_u64().is_some_and(|n| n >= 2), "{report}");
    }
}

/// With access notes made public by a charter version, the owner's log shows a request's details.
async fn public_notes_by_charter_are_in_the_log(fed: &Fed, alpha: &DemoMember, purpose: &str) {
    // A federation that wants full transparency says so in its charter: then the notes are in
    // the logs for every member to read.
    let a = node_of(fed, "alpha");
    let p = a
        .propose(vec![Change::AccessNotes { visibility: AccessNotes::Public }], Duration::from_secs(3600))
        .await
        .expect("proposed");
    for voter in ["alpha", "bravo"] {
        node_of(fed, voter).cast_vote(&p, Ballot::Yes, "").await.expect("vote");
    }
    crate::support::eventually("version 2 everywhere", || async {
        fed.nodes.iter().all(|n| n.node.charter_version() == 2)
    })
    .await;
    let public_needle = "zz-public-6120";
    ask(
        alpha,
        &format!("SELECT count(*) AS n FROM bravo.people WHERE region = '{public_needle}'"),
        purpose,
        false,
    )
    .await
    .expect("runs");
    let shown = entries(fed, "bravo").into_iter().any(|e| match e {
        LogEntry::AccessServed { notes: Some(n), .. } => n
            .details
            .and_then(|d| B64.decode(d).ok())
            .is_some_and(|d| String::from_utf8_lossy(&d).contains(public_needle)),
        _ => false,
    });
    assert!(shown, "with access-notes public the owner's log shows the request's details");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_that_withholds_or_hides_is_named_and_a_purpose_bound_grant_breaks_nothing() {
    let fed = people_federation().await;
    let alpha = fed.member("alpha");
    let sql = "SELECT region, count(*) AS n FROM people GROUP BY region";
    // Charlie's data is important: it needs a grant, which alpha does not hold yet.
    let important = dp_policy("0.01", "1.0", EVERYONE)
        .replace("classification = \"general\"", "classification = \"important\"");
    let charlie = NodeDir::new(&fed.member("charlie").dir);
    admin::policy_set(&charlie, "people", &write(fed.dir.path(), "important.toml", &important)).expect("set");
    let r = ask(alpha, sql, "analysis", false).await.expect("runs without charlie");
    assert!(r.left_out.iter().any(|l| l.starts_with("charlie.people")), "{:?}", r.left_out);
    assert!(!r.provenance.iter().any(|c| c.member == "charlie"));
    // A grant for research: a query without that purpose still runs, charlie left out and
    // named with the purpose that would admit it; with it, charlie answers.
    let body = serde_json::json!({"dataset": "charlie.people", "actions": ["aggregate"], "purpose": "research",
        "legal_basis": "statute 12", "days": 30});
    let r =
        local_call(&alpha.local_url, "POST", "/v1/access/requests", Some(&alpha.analyst_token), Some(&body))
            .await
            .expect("sent");
    let filed: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let id = filed["id"].as_str().expect("id").to_owned();
    let (status, answer) = crate::policy::steward(
        &fed,
        "charlie",
        "POST",
        &format!("/v1/access/requests/{id}/approve"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let r = ask(alpha, sql, "analysis", false).await.expect("a grant for another purpose breaks nothing");
    let named = r.left_out.iter().find(|l| l.starts_with("charlie.people")).expect("charlie named");
    assert!(named.contains("research") && named.contains("--purpose"), "{named}");
    let r = ask(alpha, sql, "research", false).await.expect("with the grant's purpose");
    assert!(r.provenance.iter().any(|c| c.member == "charlie"), "{:?}", r.provenance);
    assert!(r.left_out.is_empty(), "{:?}", r.left_out);

    // Bravo hides its dataset from alpha altogether: named in every answer over the schema.
    let hiding = dp_policy(
        "0.01",
        "1.0",
        &format!("{EVERYONE}\nforbid (principal == Member::\"alpha\", action, resource);"),
    );
    admin::policy_set(
        &NodeDir::new(&fed.member("bravo").dir),
        "people",
        &write(fed.dir.path(), "hiding.toml", &hiding),
    )
    .expect("set");
    let r = ask(alpha, sql, "research", false).await.expect("runs without bravo");
    assert!(
        r.left_out.iter().any(|l| l.starts_with("bravo (") && l.contains("does not show")),
        "{:?}",
        r.left_out
    );
    assert!(!r.provenance.iter().any(|c| c.member == "bravo"));
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sample_demos_oracles_are_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = concord_lab::demo::DemoOptions {
        dir: dir.path().join("demo"),
        data: None,
        port_base: free_ports(9),
        smoke: true,
    };
    let demo = concord_lab::demo::launch(&opts).await.expect("demo launches");
    let alpha = demo.file.members.iter().find(|m| m.id == "alpha").expect("alpha").clone();
    let cell = "onset_date = DATE '2025-06-01' AND age_band = '80+' AND outcome = 'deceased'";
    // Two people: an exact gate answered an exact 0 three times out of three, and said "1
    // groups suppressed"; a set of ten answered a noisy number.
    // A noisy count is clamped at zero, so a count of two reads 0 often: twelve tries make
    // an all-zero run a one-in-tens-of-thousands event rather than a coin toss.
    let mut values = Vec::new();
    for _ in 0..12 {
        let r = ask(
            &alpha,
            &format!("SELECT count(*) AS n FROM bravo.health_cases WHERE {cell}"),
            "analysis",
            false,
        )
        .await
        .expect("answered");
        let c = r.provenance.iter().find(|c| c.member == "bravo").expect("bravo");
        assert_eq!((c.groups_released, c.release.groups_suppressed), (1, 0), "{c:?}");
        values.push(number(&rows(&r)[0][0]));
    }
    assert!(values.iter().any(|v| *v != 0.0), "{values:?}");
    // Presence bits: DISTINCT over public keys releases every key, whatever the data holds;
    // over other columns, the noisy threshold holds back a set of two as it holds back none.
    for (sql, want) in [
        (
            "SELECT DISTINCT outcome FROM bravo.health_cases WHERE onset_date = DATE '2025-06-01' AND age_band = '80+'".to_owned(),
            3,
        ),
        (
            "SELECT DISTINCT outcome FROM bravo.health_cases WHERE onset_date = DATE '2030-01-01'".to_owned(),
            3,
        ),
        (format!("SELECT DISTINCT region FROM bravo.health_cases WHERE {cell}"), 0),
        ("SELECT DISTINCT region FROM bravo.health_cases WHERE onset_date = DATE '2030-01-01'".to_owned(), 0),
    ] {
        let r = ask(&alpha, &sql, "analysis", false).await.expect("answered");
        assert_eq!(rows(&r).len(), want, "{sql}");
    }
    // A FILTER set of two people: its regions come back, noisy, as they do without it.
    let r = ask(
        &alpha,
        &format!(
            "SELECT region, count(*) FILTER (WHERE {cell}) AS n FROM bravo.health_cases GROUP BY region"
        ),
        "analysis",
        false,
    )
    .await
    .expect("answered");
    assert_eq!(rows(&r).len(), 2, "both of bravo's regions: {:?}", rows(&r));
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_members_request_ids_and_misaddressed_notes_harm_no_one() {
    let fed = people_federation().await;
    let alpha = fed.member("alpha");
    ask(alpha, "SELECT count(*) AS n FROM bravo.people", "analysis", false).await.expect("runs");
    let x = entries(&fed, "alpha")
        .into_iter()
        .find_map(|e| match e {
            LogEntry::AccessRequested { request_id, .. } => Some(request_id),
            _ => None,
        })
        .expect("alpha asked");
    let charlie = crate::support::Impostor::of(&fed, "charlie");
    let mut r = charlie.request("bravo", "SELECT count(1) AS p0 FROM people");
    r.dataset = "people".into();
    r.request_id = x.clone();
    let body = r.sign(&charlie.signer).expect("sign").to_bytes();
    // Charlie cannot withdraw alpha's request, nor one it never checked: counted, nothing done.
    let resp = charlie.send(&fed, "bravo", "POST", "/v1/query/cancel", body.clone()).await;
    assert_eq!(resp.error_parts().0, "not_found", "{:?}", resp.error_parts());
    // Charlie's own request under alpha's id is its own access: alpha's notes at bravo stay.
    let resp = charlie.send(&fed, "bravo", "POST", "/v1/query", body).await;
    assert_eq!(resp.status, 200, "{:?}", resp.error_parts());
    let kept = node_of(&fed, "bravo")
        .state
        .notes(&x, "alpha", concord_node::store::state::NoteKind::Request)
        .expect("state")
        .expect("alpha's request kept");
    let kept = concord_node::net::protocol::SignedRequest::from_bytes(&kept).expect("parses");
    assert_eq!(kept.request.requester, "alpha");
    // A signed request addressed to another owner is no access at bravo: not logged.
    let before = entries(&fed, "bravo").len();
    let mut elsewhere = charlie.request("alpha", "SELECT count(1) AS p0 FROM people");
    elsewhere.dataset = "people".into();
    let resp = charlie
        .send(&fed, "bravo", "POST", "/v1/query", elsewhere.sign(&charlie.signer).expect("sign").to_bytes())
        .await;
    assert_eq!(resp.status, 400, "{:?}", resp.error_parts());
    assert_eq!(entries(&fed, "bravo").len(), before, "a misaddressed request is counted, not logged");
    settle(&fed).await;
    // Audits find charlie's request, made around its own log, as charlie's hidden access; alpha's
    // notes and accesses are whole everywhere.
    for auditor in ["alpha", "bravo", "charlie"] {
        let report = audit(&fed, auditor, serde_json::json!({"all": true})).await;
        let r = &report["report"];
        // Charlie's own node never saw the request its impostor made, so keeps no notes of it.
        let problems = r["notes_problems"].as_array().expect("problems");
        assert!(
            problems.iter().all(|p| auditor == "charlie" && p.as_str().is_some_and(|p| p.contains(&x))),
            "{auditor}: {report}"
        );
        let mismatches = r["mismatches"].as_array().expect("mismatches");
        assert_eq!(mismatches.len(), 1, "{auditor}: {report}");
        assert_eq!(mismatches[0]["requester"], "charlie", "{auditor}: {report}");
        assert!(mismatches[0]["problem"].as_str().is_some_and(|p| p.contains("hidden access")), "{report}");
        assert!(
            r["members"].as_array().expect("members").iter().all(|m| m["problems"] == serde_json::json!([])),
            "{report}"
        );
    }
    fed.stop().await;
}
