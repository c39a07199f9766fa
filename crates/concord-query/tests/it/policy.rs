//! The owner's release rules against sub-queries written by someone who wants the rows: each
//! hostile query is refused for the right reason, or released only in groups of at least the
//! minimum size, checked against the raw data.

use std::collections::BTreeMap;
use std::sync::Arc;

use concord_policy::{Baseline, Policy};
use concord_query::QueryError;
use concord_query::compare::Cell;
use concord_query::owner::run_subquery;
use concord_query::release::Rules;
use datafusion::arrow::array::{Array, Date32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;

/// The sample demo's policy of health_cases, without noise: releases are exact, so they can be
/// compared with the raw data.
const EXACT: &str = r#"
classification = "general"
[personal]
privacy_unit = "case_id"
[columns]
case_id = "hidden"
region = "group"
age_band = "group"
sex = "group"
outcome = "group"
onset_date = "filter"
hospital_days = "aggregate"
[release]
min_group_size = 10
[access]
rules = '''
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
'''
"#;

/// The same with differential privacy.
const NOISY: &str = r#"
classification = "general"
[personal]
privacy_unit = "case_id"
[columns]
case_id = "hidden"
region = "group"
age_band = "group"
sex = "group"
outcome = "group"
onset_date = "filter"
hospital_days = "aggregate"
[release]
min_group_size = 10
[release.privacy]
mechanism = "zcdp"
cost = 0.005
budget_per_requester = 1.0
budget_per_dataset = 3.0
bounds = { hospital_days = [0, 60] }
delta = 1e-6
[release.privacy.keys]
sex = ["F", "M"]
[access]
rules = '''
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
'''
"#;

/// 600 cases over four regions; region `XS` holds only three people, and one person in `NO` is
/// 90+ (a group of one).
fn cases() -> RecordBatch {
    let regions = ["NO", "SO", "EA", "WE"];
    let bands = ["0-19", "20-39", "40-59", "60-79"];
    let outcomes = ["recovered", "hospitalised", "deceased"];
    let mut id = Vec::new();
    let mut region = Vec::new();
    let mut band = Vec::new();
    let mut sex = Vec::new();
    let mut onset = Vec::new();
    let mut outcome = Vec::new();
    let mut days = Vec::new();
    for i in 0..600i64 {
        id.push(1000 + i);
        region.push(regions[(i % 4) as usize].to_owned());
        band.push(bands[((i / 4) % 4) as usize].to_owned());
        sex.push(if i % 3 == 0 { "F" } else { "M" }.to_owned());
        onset.push(19_000 + (i % 60) as i32);
        outcome.push(outcomes[(i % 7 % 3) as usize].to_owned());
        days.push(i % 45);
    }
    for (i, r) in ["XS", "XS", "XS"].iter().enumerate() {
        id.push(5000 + i as i64);
        region.push((*r).to_owned());
        band.push("20-39".into());
        sex.push("F".into());
        onset.push(19_500);
        outcome.push("deceased".into());
        days.push(30);
    }
    id.push(6000);
    region.push("NO".into());
    band.push("90+".into());
    sex.push("M".into());
    onset.push(19_001);
    outcome.push("deceased".into());
    days.push(59);
    let schema = Arc::new(Schema::new(vec![
        Field::new("case_id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("age_band", DataType::Utf8, false),
        Field::new("sex", DataType::Utf8, false),
        Field::new("onset_date", DataType::Date32, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("hospital_days", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(StringArray::from(region)),
            Arc::new(StringArray::from(band)),
            Arc::new(StringArray::from(sex)),
            Arc::new(Date32Array::from(onset)),
            Arc::new(StringArray::from(outcome)),
            Arc::new(Int64Array::from(days)),
        ],
    )
    .expect("batch")
}

fn table() -> Arc<dyn TableProvider> {
    let b = cases();
    Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).expect("table"))
}

fn rules(policy: &str) -> Rules {
    Rules {
        policy: Arc::new(Policy::parse(policy, "test.policy.toml").expect("valid policy")),
        baseline: Baseline::default(),
        own: false,
        unit_is_row: false,
    }
}

fn run(policy: &str, sql: &str) -> Result<concord_query::owner::OwnerAnswer, QueryError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(run_subquery("cases", table(), sql, &rules(policy), &Default::default()))
}

/// Distinct people behind each group of `keys` under `filter` in the raw data.
fn raw_units(keys: &str, filter: &str) -> BTreeMap<String, i64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_table("cases", table()).expect("register");
        let select = if keys.is_empty() { "'all'".to_owned() } else { format!("concat_ws('|', {keys})") };
        let group = if keys.is_empty() { String::new() } else { format!("GROUP BY {keys}") };
        let sql =
            format!("SELECT {select} AS k, count(DISTINCT case_id) AS n FROM cases WHERE {filter} {group}");
        let batches = ctx.sql(&sql).await.expect("raw sql").collect().await.expect("raw run");
        let mut out = BTreeMap::new();
        for b in batches {
            let k = b.column(0).as_any().downcast_ref::<StringArray>().expect("keys").clone();
            let n = b.column(1).as_any().downcast_ref::<Int64Array>().expect("counts").clone();
            for i in 0..b.num_rows() {
                out.insert(k.value(i).to_owned(), n.value(i));
            }
        }
        out
    })
}

/// The released group keys, joined as `raw_units` joins them.
fn released_keys(answer: &concord_query::owner::OwnerAnswer, nkeys: usize) -> Vec<String> {
    let mut out = Vec::new();
    for b in &answer.batches {
        for r in 0..b.num_rows() {
            if nkeys == 0 {
                out.push("all".to_owned());
                continue;
            }
            let parts: Vec<String> = (0..nkeys)
                .map(|c| {
                    datafusion::arrow::util::display::array_value_to_string(b.column(c), r).expect("value")
                })
                .collect();
            out.push(parts.join("|"));
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Hostile sub-queries that must be refused, with a word of the reason each must give.
const REFUSED: &[(&str, &str)] = &[
    // The privacy unit, anywhere.
    ("SELECT case_id AS g0, count(1) AS p0 FROM cases GROUP BY case_id", "case_id is hidden"),
    ("SELECT count(case_id) AS p0 FROM cases", "case_id is hidden"),
    ("SELECT count(DISTINCT case_id) AS p0 FROM cases", "case_id is hidden"),
    ("SELECT count(1) AS p0 FROM cases WHERE case_id = 1007", "case_id is hidden"),
    ("SELECT count(1) AS p0 FROM cases WHERE case_id > 0", "case_id is hidden"),
    ("SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY region, case_id % 2", "case_id is hidden"),
    ("SELECT sum(case_id) AS p0 FROM cases", "case_id is hidden"),
    ("SELECT count(1) FILTER (WHERE case_id = 1003) AS p0 FROM cases", "case_id is hidden"),
    (
        "SELECT region AS g0, count(1) AS p0 FROM (SELECT region, case_id AS c FROM cases) WHERE c = 1 GROUP BY region",
        "case_id is hidden",
    ),
    (
        "SELECT x AS g0, count(1) AS p0 FROM (SELECT case_id + 0 AS x FROM cases) GROUP BY x",
        "case_id is hidden",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE CAST(case_id AS VARCHAR) LIKE '10%'", "case_id is hidden"),
    (
        "SELECT count(1) AS p0 FROM cases WHERE CASE WHEN case_id = 1 THEN true ELSE false END",
        "case_id is hidden",
    ),
    // Rows of personal data.
    ("SELECT region, age_band FROM cases", "cannot be output as a row value"),
    ("SELECT * FROM cases", "cannot be output"),
    ("SELECT hospital_days FROM cases WHERE region = 'NO'", "cannot be output"),
    // An aggregate column as a key or a filter.
    (
        "SELECT hospital_days AS g0, count(1) AS p0 FROM cases GROUP BY hospital_days",
        "hospital_days is aggregate",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE hospital_days = 59", "hospital_days is aggregate"),
    ("SELECT count(1) AS p0 FROM cases WHERE hospital_days > 50", "hospital_days is aggregate"),
    (
        "SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY region, hospital_days > 30",
        "hospital_days is aggregate",
    ),
    ("SELECT count(1) FILTER (WHERE hospital_days > 50) AS p0 FROM cases", "hospital_days is aggregate"),
    (
        "SELECT b AS g0, count(1) AS p0 FROM (SELECT hospital_days / 10 AS b FROM cases) GROUP BY b",
        "hospital_days is aggregate",
    ),
    (
        "SELECT d AS g0, count(1) AS p0 FROM (SELECT CAST(hospital_days AS VARCHAR) AS d FROM cases) GROUP BY d",
        "hospital_days is aggregate",
    ),
    // A filter column as a key or inside an aggregate.
    ("SELECT onset_date AS g0, count(1) AS p0 FROM cases GROUP BY onset_date", "onset_date is filter"),
    ("SELECT max(onset_date) AS p0 FROM cases", "onset_date is filter"),
    ("SELECT min(onset_date) AS p0 FROM cases WHERE region = 'NO'", "onset_date is filter"),
    ("SELECT count(onset_date) AS p0 FROM cases", "onset_date is filter"),
    (
        "SELECT m AS g0, count(1) AS p0 FROM (SELECT date_part('month', onset_date) AS m FROM cases) GROUP BY m",
        "onset_date is filter",
    ),
    (
        "SELECT sum(CASE WHEN onset_date = DATE '2022-01-08' THEN hospital_days END) AS p0 FROM cases",
        "onset_date is filter",
    ),
    // MIN and MAX of personal data, which this policy does not allow.
    ("SELECT max(hospital_days) AS p0 FROM cases", "MIN and MAX of hospital_days"),
    (
        "SELECT region AS g0, min(hospital_days) AS p0 FROM cases GROUP BY region",
        "MIN and MAX of hospital_days",
    ),
    ("SELECT max(region) AS p0 FROM cases", "MIN and MAX of region"),
    // Conditions inside an aggregate that pick people out of a group.
    (
        "SELECT region AS g0, sum(CASE WHEN sex = 'F' THEN hospital_days ELSE 0 END) AS p0 FROM cases GROUP BY region",
        "takes one column as it is",
    ),
    (
        "SELECT sum(CASE WHEN hospital_days > 50 THEN 1 ELSE 0 END) AS p0 FROM cases",
        "takes one column as it is",
    ),
    (
        "SELECT sum(hospital_days * (CASE WHEN age_band = '90+' THEN 1 ELSE 0 END)) AS p0 FROM cases",
        "takes one column as it is",
    ),
    ("SELECT count(nullif(region, 'NO')) AS p0 FROM cases", "takes one column as it is"),
    ("SELECT sum(coalesce(hospital_days, 0) + length(sex)) AS p0 FROM cases", "takes one column as it is"),
    // Columns the policy does not name, aliases of hidden columns, and row reads through CTEs.
    (
        "WITH t AS (SELECT case_id AS region FROM cases) SELECT region AS g0, count(1) AS p0 FROM t GROUP BY region",
        "case_id is hidden",
    ),
    (
        "WITH t AS (SELECT region, hospital_days FROM cases WHERE region = 'XS') SELECT region, hospital_days FROM t",
        "cannot be output",
    ),
    // Isolation through the values of an aggregate or filter column.
    (
        "SELECT region AS g0, count(1) AS p0 FROM cases WHERE hospital_days BETWEEN 58 AND 60 GROUP BY region",
        "hospital_days is aggregate",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE coalesce(hospital_days, 0) = 59", "hospital_days is aggregate"),
    (
        "SELECT count(1) AS p0 FROM cases WHERE length(CAST(hospital_days AS VARCHAR)) = 2",
        "hospital_days is aggregate",
    ),
    ("SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY region, onset_date", "onset_date is filter"),
    ("SELECT count(1) AS p0 FROM cases GROUP BY case_id", "case_id is hidden"),
    ("SELECT sum(hospital_days + case_id) AS p0 FROM cases", "case_id is hidden"),
    (
        "SELECT region AS g0, count(1) AS p0 FROM cases WHERE region = 'NO' AND case_id IN (1000, 1004) GROUP BY region",
        "case_id is hidden",
    ),
    ("SELECT region AS g0, max(sex) AS p0 FROM cases GROUP BY region", "MIN and MAX of sex"),
    // Failure as an oracle: an expression that fails for one value only tells, by whether the
    // owner's run fails, that someone has that value.
    ("SELECT count(1) AS p0 FROM cases WHERE 1 / (length(region) - 2) > 0", "can fail for some values only"),
    ("SELECT count(1) AS p0 FROM cases WHERE CAST(region AS INT) > 0", "casts Utf8 to Int32"),
    (
        "SELECT region AS g0, count(1) FILTER (WHERE 100 / (date_part('day', onset_date) - 5) > 1) AS p0 FROM cases GROUP BY region",
        "can fail for some values only",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE substr(region, 1, length(age_band) - 3) = 'N'", "can fail"),
    ("SELECT count(1) AS p0 FROM cases WHERE region LIKE age_band", "can fail"),
    // A constant that fails is evaluated only where the rows get to it.
    (
        "SELECT count(1) AS p0 FROM cases WHERE (region = 'NO' AND age_band = '90+') IS TRUE AND 1 / 0 = 1",
        "can fail",
    ),
    (
        "SELECT count(1) AS p0 FROM cases WHERE CASE WHEN region = 'NO' AND age_band = '90+' THEN 1 / 0 ELSE 0 END = 0",
        "can fail",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE substr(region, 1, 1 / 0) = 'N'", "can fail"),
    ("SELECT count(1) AS p0 FROM cases WHERE to_date(age_band) > DATE '2022-01-01'", "can fail"),
    // Casts that type coercion adds, as the query will run: text compared with a number is cast
    // to the number, which fails only where the victim's row makes the text not a number.
    (
        "SELECT count(1) AS p0 FROM cases WHERE CASE WHEN region = 'NO' AND age_band = '90+' THEN region ELSE '0' END = 0",
        "casts Utf8 to Int64",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE nullif(age_band, 0) IS NULL", "can fail"),
    ("SELECT count(1) AS p0 FROM cases WHERE region IN ('NO', 1)", "can fail"),
    ("SELECT count(1) AS p0 FROM cases WHERE onset_date < TIMESTAMP '2262-01-01 00:00:00'", "can fail"),
    // Functions that fail on their constant arguments, for every row that reaches them.
    (
        "SELECT substr(region, 1, -1) AS g0, count(1) AS p0 FROM cases WHERE region = 'NO' AND age_band = '90+' GROUP BY substr(region, 1, -1)",
        "can fail",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE substr(region, -9223372036854775808, 1) = 'N'", "can fail"),
    (
        "SELECT count(1) AS p0 FROM cases WHERE region = 'NO' AND age_band = '90+' AND date_part('century', onset_date) = 21",
        "can fail",
    ),
    (
        "SELECT count(1) AS p0 FROM cases WHERE region = 'NO' AND age_band = '90+' AND region LIKE CAST(1 / 0 AS VARCHAR)",
        "can fail",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE CAST(onset_date AS VARCHAR) LIKE '2022%'", "can fail"),
    // Distinct values are not counted per person.
    (
        "SELECT count(DISTINCT outcome) AS p0 FROM cases WHERE region = 'NO' AND (age_band = '90+' OR outcome = 'recovered')",
        "DISTINCT",
    ),
    ("SELECT sum(DISTINCT hospital_days) AS p0 FROM cases WHERE region = 'NO'", "DISTINCT"),
    (
        "SELECT g AS g0, count(1) AS p0 FROM (SELECT arrow_cast(age_band, 'Int64') AS g FROM cases) GROUP BY g",
        "can fail",
    ),
    // Functions of DataFusion's default features (hashes, encodings, arrays), which the node has
    // since the Ballista source (its crates turn the features on): not on the allow-list, so
    // refused over any column. Built alone, this crate has no such functions and planning
    // refuses them: either way the refusal names the function.
    ("SELECT md5(region) AS g0, count(1) AS p0 FROM cases GROUP BY md5(region)", "md5"),
    ("SELECT count(1) AS p0 FROM cases WHERE sha256(age_band) = sha256('90+')", "sha256"),
    (
        "SELECT digest(sex, 'sha512') AS g0, count(1) AS p0 FROM cases GROUP BY digest(sex, 'sha512')",
        "digest",
    ),
    ("SELECT count(1) AS p0 FROM cases WHERE array_has(make_array(region, age_band), 'NO')", "array"),
    ("SELECT count(1) AS p0 FROM cases WHERE cardinality(string_to_array(region, 'O')) = 2", "cardinality"),
    ("SELECT sha256(CAST(case_id AS VARCHAR)) AS g0, count(1) AS p0 FROM cases GROUP BY 1", "sha256"),
    // Shapes no owner runs.
    ("SELECT count(1) AS p0 FROM cases WHERE onset_date = (SELECT max(onset_date) FROM cases)", "subquery"),
    ("SELECT count(1) AS p0 FROM cases c1 JOIN cases c2 ON c1.case_id = c2.case_id", "not accepted"),
    ("SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY ROLLUP(region)", "GROUPING SETS"),
];

#[test]
fn hostile_subqueries_are_refused_for_the_right_reason() {
    for (sql, needle) in REFUSED {
        match run(EXACT, sql) {
            Err(QueryError::Policy(why)) => {
                assert!(why.contains(needle), "{sql}\n  refused for {why:?}, expected {needle:?}")
            }
            Err(QueryError::SubqueryRefused(why)) => {
                assert!(
                    why.contains(needle),
                    "{sql}\n  refused by the shape check: {why:?}, expected {needle:?}"
                )
            }
            other => panic!("{sql}\n  must be refused ({needle}), got {other:?}"),
        }
    }
}

/// Hostile or careless sub-queries that may run, but only release groups of at least ten
/// people: (sql, group keys as in the raw data, WHERE as in the raw data).
const NARROWED: &[(&str, &str, &str)] = &[
    ("SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY region", "region", "true"),
    (
        "SELECT region AS g0, age_band AS g1, count(1) AS p0 FROM cases GROUP BY region, age_band",
        "region, age_band",
        "true",
    ),
    (
        "SELECT region AS g0, age_band AS g1, sex AS g2, outcome AS g3, count(1) AS p0 FROM cases GROUP BY region, age_band, sex, outcome",
        "region, age_band, sex, outcome",
        "true",
    ),
    ("SELECT count(1) AS p0, sum(hospital_days) AS p1 FROM cases WHERE region = 'XS'", "", "region = 'XS'"),
    ("SELECT sum(hospital_days) AS p0 FROM cases WHERE age_band = '90+'", "", "age_band = '90+'"),
    (
        "SELECT count(1) AS p0 FROM cases WHERE onset_date = DATE '2022-01-08'",
        "",
        "onset_date = DATE '2022-01-08'",
    ),
    (
        "SELECT sum(hospital_days) AS p0 FROM cases WHERE region = 'NO' AND age_band = '90+' AND sex = 'M'",
        "",
        "region = 'NO' AND age_band = '90+' AND sex = 'M'",
    ),
    (
        "SELECT region AS g0, sum(hospital_days) AS p0 FROM cases WHERE onset_date > DATE '2022-02-25' GROUP BY region",
        "region",
        "onset_date > DATE '2022-02-25'",
    ),
    (
        "SELECT outcome AS g0, count(hospital_days) AS p0 FROM cases WHERE sex = 'F' AND region = 'XS' GROUP BY outcome",
        "outcome",
        "sex = 'F' AND region = 'XS'",
    ),
    (
        "SELECT age_band AS g0, count(1) AS p0 FROM cases WHERE region IN ('NO', 'XS') GROUP BY age_band",
        "age_band",
        "region IN ('NO', 'XS')",
    ),
    (
        "SELECT region AS g0, count(1) AS p0 FROM cases WHERE region <> 'NO' OR age_band = '90+' GROUP BY region",
        "region",
        "region <> 'NO' OR age_band = '90+'",
    ),
    ("SELECT upper(region) AS g0, count(1) AS p0 FROM cases GROUP BY upper(region)", "upper(region)", "true"),
    (
        "SELECT s AS g0, count(1) AS p0 FROM (SELECT substr(age_band, 1, 1) AS s FROM cases) GROUP BY s",
        "substr(age_band, 1, 1)",
        "true",
    ),
    (
        "SELECT count(1) AS p0 FROM cases WHERE onset_date BETWEEN DATE '2022-01-01' AND DATE '2022-01-02'",
        "",
        "onset_date BETWEEN DATE '2022-01-01' AND DATE '2022-01-02'",
    ),
    ("SELECT sex AS g0, count(1) AS p0 FROM cases WHERE region = 'XS' GROUP BY sex", "sex", "region = 'XS'"),
    // Differencing: complements and near-duplicates of the queries above.
    (
        "SELECT count(1) AS p0 FROM cases WHERE NOT (region = 'NO' AND age_band = '90+')",
        "",
        "NOT (region = 'NO' AND age_band = '90+')",
    ),
    (
        "SELECT region AS g0, count(1) AS p0 FROM cases WHERE age_band <> '90+' GROUP BY region",
        "region",
        "age_band <> '90+'",
    ),
    (
        "SELECT sex AS g0, outcome AS g1, count(1) AS p0 FROM cases WHERE region = 'XS' GROUP BY sex, outcome",
        "sex, outcome",
        "region = 'XS'",
    ),
];

#[test]
fn the_table_holds_at_least_sixty_hostile_queries() {
    assert!(REFUSED.len() + NARROWED.len() >= 60, "{} + {}", REFUSED.len(), NARROWED.len());
}

#[test]
fn one_row_per_unit_releases_what_the_general_path_releases() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    assert!(
        rt.block_on(concord_query::release::unit_is_row("cases", table(), "case_id", &Default::default()))
            .expect("runs")
    );
    assert!(
        !rt.block_on(concord_query::release::unit_is_row("cases", table(), "region", &Default::default()))
            .expect("runs")
    );
    let mut fast = rules(EXACT);
    fast.unit_is_row = true;
    for (sql, _, _) in NARROWED {
        let slow = run(EXACT, sql).expect("runs");
        let quick =
            rt.block_on(run_subquery("cases", table(), sql, &fast, &Default::default())).expect("runs");
        let (mut a, mut b) = (crate::common::cells(&slow.batches), crate::common::cells(&quick.batches));
        a.sort_by_key(|r| format!("{r:?}"));
        b.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(a, b, "{sql}");
        assert_eq!(slow.report.groups_suppressed, quick.report.groups_suppressed, "{sql}");
    }
}

#[test]
fn both_contribution_paths_release_every_public_key_under_differential_privacy() {
    // Public keys (sex): every key is released with noise, zeros included, whatever the data
    // holds; no group is held back, so nothing is decided on an exact count. The path for one
    // row per person (no per-person pass) must agree with the general path, and both with the
    // raw data.
    let policy = NOISY.replace("cost = 0.005", "cost = 1.0");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for filter in ["true", "region = 'XS'", "region = 'NO' AND age_band = '90+'", "region = 'NO'"] {
        let sql = format!(
            "SELECT sex AS g0, count(1) AS p0, sum(hospital_days) AS p1 FROM cases WHERE {filter} GROUP BY sex"
        );
        let raw = raw_units("sex", filter);
        for unit_is_row in [false, true] {
            let mut r = rules(&policy);
            r.unit_is_row = unit_is_row;
            let a = rt.block_on(run_subquery("cases", table(), &sql, &r, &Default::default())).expect("runs");
            let rows = crate::common::cells(&a.batches);
            let text = |c: &Cell| match c {
                Cell::Text(t) => t.clone(),
                other => panic!("not text: {other:?}"),
            };
            let mut got: Vec<String> = rows.iter().map(|row| text(&row[0])).collect();
            got.sort();
            assert_eq!(got, ["F", "M"], "{unit_is_row}: {sql}");
            assert_eq!(a.report.groups_suppressed, 0, "{unit_is_row}: {sql}");
            assert!(a.report.public_keys && !a.report.suppressed_not_counted);
            let scale = a.report.noise_scale.first().map(|(_, s)| *s).expect("a count's noise scale");
            for row in &rows {
                let key = text(&row[0]);
                let n = match &row[1] {
                    Cell::Float(n) => *n,
                    Cell::Text(t) => t.parse().expect("a count"),
                    Cell::Null => panic!("a NULL count"),
                };
                let want = raw.get(&key).copied().unwrap_or(0) as f64;
                // Six standard deviations: a false failure has a chance under 2e-9 per group.
                assert!((n - want).abs() < 6.0 * scale, "{unit_is_row}: {sql}: {key} {n} vs {want}");
            }
        }
    }
}

#[test]
fn groups_held_back_by_noisy_selection_are_not_counted() {
    // Region has no public keys: a group is released when its noisy count passes a threshold,
    // which hides whether NO's one 90+ person exists. A count of the groups held back would
    // tell it, deterministically: none is given.
    let policy = NOISY.replace("cost = 0.005", "cost = 1.0");
    for filter in ["age_band = '90+'", "age_band = '90+' AND region <> 'NO'"] {
        let sql = format!("SELECT region AS g0, count(1) AS p0 FROM cases WHERE {filter} GROUP BY region");
        let a = run(&policy, &sql).expect("runs");
        assert!(a.report.suppressed_not_counted, "{sql}");
        assert_eq!(a.report.groups_suppressed, 0, "{sql}");
        assert_eq!(a.report.groups_released, 0, "{sql}: no group of 90+ has ten people");
    }
}

#[test]
fn nulls_add_nothing_to_noisy_sums_even_with_a_low_bound_above_zero() {
    // Clamped to [100, 200], nothing must not become 100: a person outside an aggregate's FILTER
    // clause has no value in it (on the per-unit path, a NULL sum), and adds nothing.
    let policy = NOISY.replace("[0, 60]", "[100, 200]").replace("cost = 0.005", "cost = 1.0");
    for unit_is_row in [false, true] {
        let mut r = rules(&policy);
        r.unit_is_row = unit_is_row;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let sql = "SELECT count(1) AS p0, sum(hospital_days) FILTER (WHERE sex = 'F') AS p1 FROM cases WHERE region = 'SO'";
        let a = rt.block_on(run_subquery("cases", table(), sql, &r, &Default::default())).expect("runs");
        let b = &a.batches[0];
        let sum = datafusion::arrow::util::display::array_value_to_string(b.column(1), 0).expect("value");
        let sum: f64 = sum.parse().expect("a number");
        // SO's 50 women all have fewer than 100 days, so each adds exactly the low bound: 5000.
        // The 100 men must add nothing (10000 more if their empty sums were clamped). Six
        // standard deviations: a false failure has a chance under 2e-9.
        let scale = a.report.noise_scale.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        assert!((sum - 5000.0).abs() < 6.0 * scale, "{unit_is_row}: {sum} with scale {scale}");
        assert!(scale < 1000.0, "the noise is small enough to tell 5000 from 15000: {scale}");
    }
}

#[test]
fn differencing_under_differential_privacy_meets_noise() {
    // The two counts differ by the one 90+ person in NO; each release carries noise of its
    // reported scale, so their difference does not reveal that person.
    for sql in [
        "SELECT count(1) AS p0 FROM cases WHERE region = 'NO'",
        "SELECT count(1) AS p0 FROM cases WHERE region = 'NO' AND age_band <> '90+'",
    ] {
        let a = run(NOISY, sql).expect("runs");
        assert_eq!(a.report.mechanism.as_deref(), Some("zcdp"), "{sql}");
        assert!(a.report.noise_scale.iter().all(|(_, s)| *s >= 10.0), "{sql}: {:?}", a.report.noise_scale);
    }
}

#[test]
fn releases_stand_for_at_least_ten_people() {
    for (sql, keys, filter) in NARROWED {
        let answer = run(EXACT, sql).unwrap_or_else(|e| panic!("{sql}\n  must run: {e}"));
        let raw = raw_units(keys, filter);
        let nkeys = answer.schema.fields().iter().filter(|f| f.name().starts_with('g')).count();
        let released = released_keys(&answer, nkeys);
        for k in &released {
            let n = raw.get(k).copied().unwrap_or(0);
            assert!(n >= 10, "{sql}\n  released group {k:?} of {n} people");
        }
        let large = raw.values().filter(|n| **n >= 10).count() as u64;
        assert_eq!(released.len() as u64, large, "{sql}: every large enough group is released");
        // A count of small groups would tell a group of one from none: without public keys,
        // groups held back are not counted; a global aggregate is one group, there or not.
        if nkeys == 0 {
            assert_eq!(answer.report.groups_suppressed, 1 - large, "{sql}");
        } else {
            assert!(answer.report.suppressed_not_counted, "{sql}");
            assert_eq!(answer.report.groups_suppressed, 0, "{sql}");
        }
    }
}

#[test]
fn an_aggregate_filter_clause_cannot_narrow_a_group() {
    // Every region has many people, but only the three in XS are F and 20-39 and deceased.
    let sql = "SELECT region AS g0, count(1) AS p0, count(1) FILTER (WHERE age_band = '90+') AS p1 FROM cases GROUP BY region";
    let answer = run(EXACT, sql).expect("runs");
    // NO's one 90+ person is a cell of one: it is left out, so NO looks as if he were not there
    // (holding NO back would tell him from no one just as well).
    assert!(answer.report.small_cells_left_out);
    let rows = crate::common::cells(&answer.batches);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for row in rows {
        assert_eq!(row[2], Cell::Text("0".into()), "{row:?}: no 90+ cell of ten");
        if row[0] == Cell::Text("NO".into()) {
            assert_eq!(row[1], Cell::Text("150".into()), "{row:?}: the same as without him");
        }
    }
}

#[test]
fn filter_clauses_cannot_difference_out_a_few_people() {
    // Each set is large, but two sets of one group differ by a few people: the values of every
    // released group differ by none or by at least ten.
    for sql in [
        "SELECT region AS g0, count(1) AS p0, count(1) FILTER (WHERE age_band <> '90+') AS p1 FROM cases GROUP BY region",
        "SELECT region AS g0, count(1) FILTER (WHERE sex = 'M') AS p0, count(1) FILTER (WHERE sex = 'M' AND age_band <> '90+') AS p1 FROM cases GROUP BY region",
        "SELECT region AS g0, count(1) AS p0, count(1) FILTER (WHERE NOT (age_band = '90+' AND sex = 'M')) AS p1 FROM cases GROUP BY region",
        "SELECT region AS g0, count(1) FILTER (WHERE sex = 'F') AS p0, count(1) FILTER (WHERE sex = 'M') AS p1 FROM cases WHERE region <> 'XS' GROUP BY region",
    ] {
        let answer = run(EXACT, sql).unwrap_or_else(|e| panic!("{sql}\n  must run: {e}"));
        let rows = crate::common::cells(&answer.batches);
        assert_eq!(rows.len(), 4, "{sql}: every region of ten or more is released");
        for row in rows {
            let n = |i: usize| match &row[i] {
                Cell::Text(t) => t.parse::<i64>().expect("a count"),
                other => panic!("not a count: {other:?}"),
            };
            let d = (n(1) - n(2)).abs();
            assert!(d == 0 || d >= 10, "{sql}\n  {row:?}: the sets differ by {d} people");
        }
    }
}

#[test]
fn three_sets_cannot_difference_out_one_person_either() {
    // Every two of these sets differ by many, but M + (F or 90+) - all is NO's one 90+ man: his
    // count, or with sums his value. Each cell of the sets (here: men 90+) needs ten people.
    let sql = "SELECT region AS g0, count(1) AS p0, sum(hospital_days) FILTER (WHERE sex = 'M') AS p1, \
               sum(hospital_days) FILTER (WHERE sex = 'F' OR age_band = '90+') AS p2, sum(hospital_days) AS p3, \
               count(1) FILTER (WHERE sex = 'M') AS p4, count(1) FILTER (WHERE sex = 'F' OR age_band = '90+') AS p5 \
               FROM cases GROUP BY region";
    let answer = run(EXACT, sql).expect("runs");
    assert_eq!(sorted(released_keys(&answer, 1)), ["EA", "NO", "SO", "WE"]);
    for row in crate::common::cells(&answer.batches) {
        let n = |i: usize| match &row[i] {
            Cell::Text(t) => t.parse::<i64>().expect("a count"),
            other => panic!("not a count: {other:?}"),
        };
        assert_eq!(n(5) + n(6) - n(1), 0, "{row:?}: the sets overlap in no one (the man of 90+ left out)");
    }
}

/// The cases, where in region EA only one person has a value of hospital_days.
fn cases_with_few_values() -> Arc<dyn TableProvider> {
    let b = cases();
    let regions = b.column(1).as_any().downcast_ref::<StringArray>().expect("regions").clone();
    let days = b.column(6).as_any().downcast_ref::<Int64Array>().expect("days").clone();
    let mut first = true;
    let days: Int64Array = (0..b.num_rows())
        .map(|i| {
            if regions.value(i) != "EA" {
                return Some(days.value(i));
            }
            let keep = first;
            first = false;
            keep.then(|| days.value(i))
        })
        .collect();
    let mut columns = b.columns().to_vec();
    columns[6] = Arc::new(days);
    let b = RecordBatch::try_new(b.schema(), columns).expect("batch");
    Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).expect("table"))
}

#[test]
fn a_null_argument_narrows_a_set_as_a_filter_does() {
    // EA has 150 people but one value: count(hospital_days) would be 1 and the sum his value.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for (sql, at) in [
        ("SELECT region AS g0, count(1) AS p0, count(hospital_days) AS p1 FROM cases GROUP BY region", 2),
        ("SELECT region AS g0, sum(hospital_days) AS p0 FROM cases GROUP BY region", 1),
        ("SELECT region AS g0, count(1) AS p0, sum(hospital_days) AS p1 FROM cases GROUP BY region", 2),
    ] {
        let answer = rt
            .block_on(run_subquery("cases", cases_with_few_values(), sql, &rules(EXACT), &Default::default()))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = crate::common::cells(&answer.batches);
        let ea = rows.iter().find(|r| r[0] == Cell::Text("EA".into())).expect("EA is released");
        // His one value is a cell of one: left out, as if EA had no values at all.
        assert!(matches!(&ea[at], Cell::Null) || ea[at] == Cell::Text("0".into()), "{sql}: {ea:?}");
        assert_eq!(rows.len(), 4, "{sql}");
    }
}

#[test]
fn rows_without_a_privacy_unit_are_refused() {
    let b = cases();
    let ids = b.column(0).as_any().downcast_ref::<Int64Array>().expect("ids");
    let ids: Int64Array = ids.iter().enumerate().map(|(i, v)| if i == 7 { None } else { v }).collect();
    let mut columns = b.columns().to_vec();
    columns[0] = Arc::new(ids);
    let fields: Vec<Field> =
        b.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch");
    let t: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).expect("table"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let e = rt.block_on(concord_query::release::unit_is_row("cases", t, "case_id", &Default::default()));
    assert!(matches!(&e, Err(QueryError::Policy(why)) if why.contains("case_id is empty")), "{e:?}");
}

#[test]
fn only_released_groups_count_against_the_group_limit() {
    // 96 combinations of region, age band, sex and outcome, 16 of them with ten people or more:
    // whether the data holds more small groups than the limit must not show in an error.
    let sql = "SELECT region AS g0, age_band AS g1, sex AS g2, outcome AS g3, count(1) AS p0 FROM cases \
               GROUP BY region, age_band, sex, outcome";
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let limit = |n: u64| concord_query::limits::ExecLimits { max_groups: n, ..Default::default() };
    for policy in [EXACT.to_owned(), NOISY.replace("cost = 0.005", "cost = 1.0")] {
        let answer = rt
            .block_on(run_subquery("cases", table(), sql, &rules(&policy), &limit(16)))
            .unwrap_or_else(|e| panic!("{policy}: {e}"));
        assert!(answer.groups_released <= 16);
    }
    let answer =
        rt.block_on(run_subquery("cases", table(), sql, &rules(EXACT), &limit(16))).expect("16 groups fit");
    assert_eq!(answer.groups_released, 16);
    let e = rt.block_on(run_subquery("cases", table(), sql, &rules(EXACT), &limit(15))).err();
    assert!(e.is_some_and(|e| e.to_string().contains("more than 15")), "16 released groups exceed 15");
}

#[test]
fn groups_held_back_are_counted_against_public_keys_only() {
    // With public keys, every key not released counts, whether the data has it or not: the
    // three women of XS (a group of three, and no man) look like one man 90+ in NO (and no woman).
    let keyed = EXACT.replace("[access]", "[release.keys]\nsex = [\"F\", \"M\"]\n[access]");
    for filter in ["region = 'XS'", "region = 'NO' AND age_band = '90+'", "region = 'SO'"] {
        let sql = format!("SELECT sex AS g0, count(1) AS p0 FROM cases WHERE {filter} GROUP BY sex");
        let a = run(&keyed, &sql).expect("runs");
        assert!(!a.report.suppressed_not_counted, "{sql}");
        assert_eq!(a.report.groups_suppressed + a.report.groups_released, 2, "{sql}");
        // Without public keys nothing is counted.
        let b = run(EXACT, &sql).expect("runs");
        assert!(b.report.suppressed_not_counted, "{sql}");
        assert_eq!(b.report.groups_suppressed, 0, "{sql}");
    }
}

#[test]
fn too_many_filter_clauses_are_refused_before_running() {
    let clauses: Vec<String> =
        (0..9).map(|i| format!("count(1) FILTER (WHERE region <> 'R{i}') AS p{i}")).collect();
    let sql = format!("SELECT {} FROM cases", clauses.join(", "));
    let message = run(EXACT, &sql).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("at most 8"), "{message}");
    let sql = format!("SELECT {} FROM cases", clauses[..8].join(", "));
    run(EXACT, &sql).expect("eight clauses run");
}

#[test]
fn exact_answers_are_exact_where_they_are_released() {
    let answer = run(
        EXACT,
        "SELECT region AS g0, count(1) AS p0, sum(hospital_days) AS p1 FROM cases GROUP BY region",
    )
    .expect("runs");
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for b in &answer.batches {
        let keys = b.column(0).as_any().downcast_ref::<StringArray>().expect("keys");
        let counts = b.column(1).as_any().downcast_ref::<Int64Array>().expect("counts");
        for i in 0..b.num_rows() {
            got.insert(keys.value(i).to_owned(), counts.value(i));
        }
    }
    assert_eq!(got.get("NO"), Some(&151));
    assert_eq!(got.get("SO"), Some(&150));
    assert!(!got.contains_key("XS"));
}

#[test]
fn noisy_releases_follow_their_noise_scale() {
    let answer =
        run(NOISY, "SELECT sex AS g0, count(1) AS p0, sum(hospital_days) AS p1 FROM cases GROUP BY sex")
            .expect("runs");
    assert_eq!(answer.report.mechanism.as_deref(), Some("zcdp"));
    let scales: BTreeMap<String, f64> = answer.report.noise_scale.iter().cloned().collect();
    // Two noisy aggregates share rho = 0.005: sigma = sqrt(1 / (2 * 0.0025)) ~ 14.1 for a count.
    let count_sigma = scales["COUNT(*)"];
    assert!((count_sigma - (1.0f64 / 0.005).sqrt()).abs() < 1e-6, "{count_sigma}");
    assert!((scales["SUM(hospital_days)"] - 60.0 * count_sigma).abs() < 1e-6);
    let b = &answer.batches[0];
    let keys = b.column(0).as_any().downcast_ref::<StringArray>().expect("keys");
    let counts = b.column(1).as_any().downcast_ref::<Int64Array>().expect("counts");
    for i in 0..b.num_rows() {
        let exact = if keys.value(i) == "F" { 203 } else { 401 };
        // Six sigma: fails by chance with probability under 2e-9 per value.
        assert!(
            (counts.value(i) - exact).abs() as f64 <= 6.0 * count_sigma,
            "{} {}",
            keys.value(i),
            counts.value(i)
        );
    }
}

#[test]
fn differential_privacy_refuses_what_its_noise_cannot_cover() {
    for (sql, needle) in [
        ("SELECT max(hospital_days) AS p0 FROM cases", "never released under differential privacy"),
        ("SELECT count(DISTINCT region) AS p0 FROM cases", "DISTINCT"),
        ("SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY region", "count"),
    ] {
        match run(NOISY, sql) {
            Ok(a) if needle == "count" => {
                // Region has no public key set: groups pass only a noisy threshold.
                assert!(released_keys(&a, 1).iter().all(|k| k != "XS"), "{sql}");
            }
            Err(QueryError::Policy(why)) => assert!(why.contains(needle), "{sql}: {why}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn the_owner_itself_is_bound_by_no_rule() {
    let mut r = rules(EXACT);
    r.own = true;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let a = rt
        .block_on(run_subquery(
            "cases",
            table(),
            "SELECT case_id, region FROM cases",
            &r,
            &Default::default(),
        ))
        .expect("own rows");
    assert_eq!(a.groups_released, 604);
    assert!(a.batches[0].column(0).null_count() == 0);
}

#[test]
fn long_chains_and_patterns_are_refused_not_crashed() {
    // Run as the node runs its queries: on a thread of 16 MiB.
    let t = std::thread::Builder::new()
        .stack_size(16 * 1024 * 1024)
        .spawn(|| {
            let chain = |n: usize| {
                let terms: Vec<String> = (0..n).map(|i| format!("region = 'r{i}'")).collect();
                format!("SELECT count(1) AS p0 FROM cases WHERE {}", terms.join(" OR "))
            };
            // Within the bound a long chain plans and runs.
            run(EXACT, &chain(500)).expect("500 terms run");
            let e = run(EXACT, &chain(600)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("operators"), "{e}");
            // A pattern whose regular expression would not compile fails only where rows reach
            // it: refused whatever the data.
            let sql = format!(
                "SELECT count(1) AS p0 FROM cases WHERE age_band = '90+' AND region LIKE '%{}'",
                "_".repeat(2000)
            );
            let e = run(EXACT, &sql).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("pattern"), "{e}");
            let big = format!("SELECT count(1) AS p0 FROM cases WHERE region = '{}'", "x".repeat(70_000));
            let e = run(EXACT, &big).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("bytes"), "{e}");
        })
        .expect("thread");
    t.join().expect("no crash");
}

/// A number in a released cell.
fn number(c: &Cell) -> f64 {
    match c {
        Cell::Float(n) => *n,
        Cell::Text(t) => t.parse().unwrap_or_else(|_| panic!("not a number: {t}")),
        Cell::Null => panic!("a NULL where a noisy number was due"),
    }
}

/// 19 people: 9 in cell A, 10 in cell B, as an attacker pads a target's cell to k−1 or k.
fn padded_cells() -> Arc<dyn TableProvider> {
    let b = cases();
    let take: Vec<u32> = (0..19).collect();
    let idx = datafusion::arrow::array::UInt32Array::from(take);
    let mut columns: Vec<datafusion::arrow::array::ArrayRef> =
        b.columns().iter().map(|c| datafusion::arrow::compute::take(c, &idx, None).expect("take")).collect();
    let regions: Vec<&str> = (0..19).map(|i| if i < 9 { "A" } else { "B" }).collect();
    columns[1] = Arc::new(StringArray::from(regions));
    let b = RecordBatch::try_new(b.schema(), columns).expect("batch");
    Arc::new(MemTable::try_new(b.schema(), vec![vec![b]]).expect("table"))
}

#[test]
fn whether_a_cell_near_the_minimum_appears_is_not_decided_by_its_size() {
    // The padding attack: a cell of k−1 known people plus the target, or of k−1 without. An
    // exact gate at k would release one and never the other: the target's value with
    // certainty. On the noisy count both cells appear in some runs and not in others.
    let policy = NOISY.replace("cost = 0.005", "cost = 0.5");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let sql = "SELECT region AS g0, count(1) AS p0 FROM cases GROUP BY region";
    let mut seen: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for _ in 0..60 {
        let a = rt
            .block_on(run_subquery("cases", padded_cells(), sql, &rules(&policy), &Default::default()))
            .expect("runs");
        assert_eq!(a.report.threshold, Some(10), "the charter's minimum binds on the noisy count");
        assert_eq!(a.report.delta, Some(1e-6));
        assert!(a.report.guarantee.is_some_and(|g| g.epsilon > 0.5 && g.delta > 0.0));
        let released = released_keys(&a, 1);
        for cell in ["A", "B"] {
            let e = seen.entry(cell).or_default();
            if released.iter().any(|k| k == cell) { e.0 += 1 } else { e.1 += 1 }
        }
    }
    // With sigma = 1, the cell of 9 appears with probability about 0.24 and the cell of 10
    // about 0.6: each outcome is missed in 60 runs with a chance under 1e-7.
    for (cell, (shown, held)) in seen {
        assert!(
            shown > 0 && held > 0,
            "cell {cell}: shown {shown}, held back {held}: a deterministic decision"
        );
    }
}

#[test]
fn an_aggregate_without_groups_is_always_answered_with_noise() {
    // Three people (XS): an exact gate would answer nothing (or an exact 0) below ten and a
    // noisy count above, so the answer's form alone would tell which side of ten the set is.
    let mut values = Vec::new();
    for filter in ["region = 'XS'", "region = 'XS' AND age_band = '0-19'", "region = 'NO'"] {
        let sql = format!("SELECT count(1) AS p0 FROM cases WHERE {filter}");
        for _ in 0..4 {
            let a = run(NOISY, &sql).expect("runs");
            assert_eq!(a.groups_released, 1, "{sql}");
            assert_eq!(a.report.groups_suppressed, 0, "{sql}");
            let rows = crate::common::cells(&a.batches);
            values.push(number(&rows[0][0]));
        }
    }
    // With sigma = 10, twelve draws that are all exact would take a miracle.
    assert!(values.iter().any(|v| *v != 0.0 && *v != 3.0 && *v != 150.0 && *v != 151.0), "{values:?}");
}

#[test]
fn filter_sets_and_key_only_queries_are_not_gated_exactly() {
    let policy = NOISY.replace("cost = 0.005", "cost = 1.0");
    // A FILTER set of one person (NO's 90+ man) is no exact gate: its group comes back with a
    // noisy value, as it does with no one in the set.
    let sql = "SELECT region AS g0, count(1) AS p0, count(1) FILTER (WHERE age_band = '90+') AS p1 FROM cases GROUP BY region";
    let a = run(&policy, sql).expect("runs");
    assert_eq!(
        sorted(released_keys(&a, 1)),
        ["EA", "NO", "SO", "WE"],
        "large regions pass the noisy threshold"
    );
    assert!(!a.report.small_cells_left_out);
    // DISTINCT and GROUP BY without aggregates: the presence of a group is decided on the noisy
    // count, and costs what a count costs.
    for sql in [
        "SELECT region AS g0 FROM cases WHERE age_band = '90+' GROUP BY region",
        "SELECT region AS g0 FROM cases GROUP BY region",
    ] {
        let sub = rt_parse(sql);
        let plan = concord_query::release::check(sub, rules(&policy)).expect("checks");
        let p = plan.privacy.expect("noisy");
        assert_eq!(p.cost, concord_policy::Units::from_f64(1.0).expect("units"), "{sql}");
        let a = run(&policy, sql).expect("runs");
        assert_eq!(a.report.threshold, Some(10), "{sql}");
        assert!(a.report.suppressed_not_counted, "{sql}");
        if sql.contains("90+") {
            assert!(
                released_keys(&a, 1).is_empty(),
                "one 90+ person passes a threshold of 10 only by a 9-sigma draw"
            );
        } else {
            assert_eq!(sorted(released_keys(&a, 1)), ["EA", "NO", "SO", "WE"]);
        }
    }
}

fn rt_parse(sql: &str) -> concord_query::release::Subquery {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(concord_query::owner::parse_subquery("cases", table(), sql)).expect("parses")
}

#[test]
fn aggregates_under_differential_privacy_mean_what_they_mean_in_pooled_sql() {
    let policy = NOISY.replace("cost = 0.005", "cost = 1.0");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // EA has 151 people but one value of hospital_days (see cases_with_few_values).
    let sql = "SELECT sex AS g0, count(NULL) AS p0, count(hospital_days) AS p1, sum(hospital_days) AS p2, count(1) AS p3 \
               FROM cases WHERE region = 'EA' GROUP BY sex";
    let a = rt
        .block_on(run_subquery("cases", cases_with_few_values(), sql, &rules(&policy), &Default::default()))
        .expect("runs");
    let scales: BTreeMap<String, f64> = a.report.noise_scale.iter().cloned().collect();
    let raw = raw_units("sex", "region = 'EA'");
    for row in crate::common::cells(&a.batches) {
        let Cell::Text(sex) = &row[0] else { panic!("{row:?}") };
        // COUNT(NULL) is a noisy 0, not COUNT(*).
        assert!(number(&row[1]).abs() < 6.0 * scales["COUNT(NULL)"], "{row:?}");
        // COUNT(x) counts x's values: at most the one of EA.
        assert!(number(&row[2]) < 1.0 + 6.0 * scales["COUNT(hospital_days)"], "{row:?}");
        // COUNT(*) counts everyone.
        let all = raw.get(sex).copied().unwrap_or(0) as f64;
        assert!((number(&row[4]) - all).abs() < 6.0 * scales["COUNT(*)"], "{row:?} vs {all}");
    }
    // A sum over a group whose values are all NULL (EA's one value is case 1002's) is a noisy
    // sum of nothing, never NULL: a NULL would say exactly that no one has a value.
    let sql = "SELECT sex AS g0, sum(hospital_days) AS p0 FROM cases WHERE region = 'EA' AND case_id > 1002 GROUP BY sex";
    let a = rt
        .block_on(run_subquery(
            "cases",
            cases_with_few_values(),
            sql,
            &rules(&policy.replace("case_id = \"hidden\"", "case_id = \"filter\"")),
            &Default::default(),
        ))
        .expect("runs");
    let scale = a.report.noise_scale[0].1;
    for row in crate::common::cells(&a.batches) {
        assert!(number(&row[1]).abs() < 6.0 * scale, "{row:?}");
    }
    // Exactly, COUNT(NULL) is 0 too.
    let a = run(EXACT, "SELECT region AS g0, count(NULL) AS p0, count(1) AS p1 FROM cases GROUP BY region")
        .expect("runs");
    for row in crate::common::cells(&a.batches) {
        assert_eq!(row[1], Cell::Text("0".into()), "{row:?}");
    }
}

#[test]
fn public_keys_are_compared_as_values_of_their_column_and_a_bad_key_is_refused_before_running() {
    // Keys written `07` and `30` for an integer column are the values 7 and 30.
    let keyed = NOISY
        .replace("cost = 0.005", "cost = 1.0")
        .replace("hospital_days = \"aggregate\"", "hospital_days = \"group\"")
        .replace("sex = [\"F\", \"M\"]", "hospital_days = [\"07\", \"30\", \"7\"]");
    let a = run(&keyed, "SELECT hospital_days AS g0, count(1) AS p0 FROM cases GROUP BY hospital_days")
        .expect("runs");
    let rows = crate::common::cells(&a.batches);
    assert_eq!(rows.len(), 2, "7 once, and 30: {rows:?}");
    for row in &rows {
        // 600 cases over days 0..45: about 13 each (30 also has XS's three).
        assert!(number(&row[1]) > 5.0, "{row:?}: the data's 7s and 30s were matched");
    }
    let bad = keyed.replace("\"07\"", "\"seven\"");
    let e = run(&bad, "SELECT hospital_days AS g0, count(1) AS p0 FROM cases GROUP BY hospital_days")
        .expect_err("bad key");
    assert!(e.to_string().contains("not all values of its type"), "{e}");
}
