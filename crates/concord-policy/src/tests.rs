use super::*;

/// The sample demo's policy of `health_cases`.
pub const HEALTH: &str = r#"
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

[groups]
nordic = ["alpha", "bravo"]

[access]
rules = '''
@id("members aggregate")
permit (principal, action in [Action::"aggregate", Action::"describe"], resource);
@id("rows for the nordic group with a grant")
permit (principal in Group::"nordic", action == Action::"read_rows", resource)
when { context.granted_actions.contains("read_rows") };
'''
"#;

fn ctx(requester: &str) -> AccessContext {
    AccessContext {
        requester: requester.into(),
        purpose: "surveillance".into(),
        grants: vec![],
        charter_version: 1,
    }
}

#[test]
fn a_full_policy_parses_and_decides() {
    let p = Policy::parse(HEALTH, "health.policy.toml").expect("valid");
    let base = Baseline::default();
    assert_eq!(p.classification, Classification::General);
    assert_eq!(p.mode("case_id"), ColumnMode::Hidden);
    assert_eq!(p.mode("not_named"), ColumnMode::Hidden);
    assert_eq!(p.mode("onset_date"), ColumnMode::Filter);
    assert_eq!(p.min_group_size(&base), Some(10));
    assert!(!p.allows_extremes("hospital_days"), "never MIN/MAX under DP");
    let dp = p.release.privacy.as_ref().expect("dp");
    assert_eq!(dp.budget_per_requester.0 / dp.cost.0, 200);
    assert!(p.decide("bravo", "health_cases", Action::Aggregate, &ctx("alpha"), &base).is_allowed());
    match p.decide("bravo", "health_cases", Action::Aggregate, &ctx("alpha"), &base) {
        Decision::Allow { by } => assert!(by.contains("members aggregate"), "{by}"),
        other => panic!("{other:?}"),
    }
    // Personal data is never released as rows, grant or not.
    let mut granted = ctx("alpha");
    granted.grants.push(("g1".into(), vec![Action::ReadRows]));
    assert!(!p.decide("bravo", "health_cases", Action::ReadRows, &granted, &base).is_allowed());
    // The owner's own analysts are bound by no rule.
    assert!(p.decide("bravo", "health_cases", Action::ReadRows, &ctx("bravo"), &base).is_allowed());
    p.check_columns(
        "health_cases",
        &["case_id", "region", "age_band", "sex", "onset_date", "outcome", "hospital_days"].map(String::from),
    )
    .expect("columns fit");
    p.check_baseline(&base).expect("no looser than the baseline");
}

#[test]
fn deny_by_default_and_groups() {
    let src = r#"
classification = "public"
[columns]
year = "plain"
[groups]
nordic = ["alpha"]
[access]
rules = '''
permit (principal in Group::"nordic", action == Action::"read_rows", resource);
'''
"#;
    let p = Policy::parse(src, "p.toml").expect("valid");
    let base = Baseline::default();
    assert!(p.decide("bravo", "d", Action::ReadRows, &ctx("alpha"), &base).is_allowed());
    match p.decide("bravo", "d", Action::ReadRows, &ctx("charlie"), &base) {
        Decision::Deny { reason } => assert!(reason.contains("no rule"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!p.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &base).is_allowed());
    let none = Policy::default_for(&["a".into()], &AllowList::Nobody).expect("valid");
    assert!(!none.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &base).is_allowed());
    let some =
        Policy::default_for(&["a".into()], &AllowList::parse("alpha, charlie").expect("ok")).expect("valid");
    assert!(some.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &base).is_allowed());
    assert!(some.decide("bravo", "d", Action::Describe, &ctx("charlie"), &base).is_allowed());
    assert!(!some.decide("bravo", "d", Action::Aggregate, &ctx("delta"), &base).is_allowed());
    assert!(!some.decide("bravo", "d", Action::ReadRows, &ctx("alpha"), &base).is_allowed());
    let all = Policy::default_for(&["a".into()], &AllowList::Everyone).expect("valid");
    assert!(all.decide("bravo", "d", Action::Aggregate, &ctx("zulu"), &base).is_allowed());
    assert_eq!(all.mode("a"), ColumnMode::Group);
}

#[test]
fn forbid_rules_and_context() {
    let src = r#"
classification = "general"
[columns]
x = "group"
[access]
rules = '''
permit (principal, action == Action::"aggregate", resource);
@id("no marketing")
forbid (principal, action, resource) when { context.purpose == "marketing" };
'''
"#;
    let p = Policy::parse(src, "p.toml").expect("valid");
    let base = Baseline::default();
    assert!(p.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &base).is_allowed());
    let mut m = ctx("alpha");
    m.purpose = "marketing".into();
    match p.decide("bravo", "d", Action::Aggregate, &m, &base) {
        Decision::Deny { reason } => assert!(reason.contains("no marketing"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_baseline_binds_every_class() {
    let base = Baseline { min_group_size: 10, ..Baseline::default() };
    let core = r#"
classification = "core"
[columns]
x = "group"
[access]
rules = '''
permit (principal, action == Action::"describe", resource);
'''
"#;
    let p = Policy::parse(core, "p.toml").expect("valid");
    p.check_baseline(&base).expect("describe only is fine");
    assert!(!p.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &base).is_allowed());
    let loose = core.replace("action == Action::\"describe\"", "action");
    let p = Policy::parse(&loose, "p.toml").expect("parses");
    let e = p.check_baseline(&base).expect_err("core permits aggregates");
    assert!(e.to_string().contains("core data never leaves its owner"), "{e}");
    let important = loose.replace("\"core\"", "\"important\"");
    let p = Policy::parse(&important, "p.toml").expect("valid");
    p.check_baseline(&base).expect("important may permit, with a grant");
    match p.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &base) {
        Decision::Deny { reason } => assert!(reason.contains("approved access request"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut granted = ctx("alpha");
    granted.grants.push(("g7".into(), vec![Action::Aggregate]));
    assert!(p.decide("bravo", "d", Action::Aggregate, &granted, &base).is_allowed());
    // A charter that lets only general data cross: important data stays home, grant or not,
    // and general data still crosses.
    let strict = Baseline { cross_borders: Classification::General, ..base };
    match p.decide("bravo", "d", Action::Aggregate, &granted, &strict) {
        Decision::Deny { reason } => {
            assert!(reason.contains("only data classified up to general"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(p.decide("alpha", "d", Action::Aggregate, &granted, &strict).is_allowed(), "its own analysts");
    let general = Policy::parse(&important.replace("\"important\"", "\"general\""), "p.toml").expect("valid");
    assert!(general.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &strict).is_allowed());
    let public_only = Baseline { cross_borders: Classification::Public, ..base };
    assert!(!general.decide("bravo", "d", Action::Aggregate, &ctx("alpha"), &public_only).is_allowed());
    let small = HEALTH.replace("min_group_size = 10", "min_group_size = 5");
    let p = Policy::parse(&small, "p.toml").expect("parses");
    let e = p.check_baseline(&base).expect_err("5 < 10");
    assert!(e.to_string().contains("groups of at least 10"), "{e}");
    // Without its own minimum, personal data takes the baseline's.
    let none = HEALTH.replace("min_group_size = 10\n", "");
    let p = Policy::parse(&none, "p.toml").expect("parses");
    assert_eq!(p.min_group_size(&Baseline { min_group_size: 25, ..Baseline::default() }), Some(25));
}

#[test]
fn bad_files_name_file_line_and_key() {
    let cases: &[(&str, &str, usize, &str)] = &[
        ("unknown mode", &HEALTH.replace("sex = \"group\"", "sex = \"public\""), 11, "unknown variant"),
        ("unknown key", &HEALTH.replace("[release]", "[release]\nminimum = 3"), 17, "minimum"),
        ("bad class", &HEALTH.replace("\"general\"", "\"secret\""), 2, "secret"),
        ("missing access", &HEALTH.replace("[access]", "[other]"), 30, "access"),
        (
            "cedar syntax",
            &HEALTH.replace("permit (principal, action in", "permit (principal action in"),
            33,
            "Cedar",
        ),
        ("cedar validation", &HEALTH.replace("context.granted_actions", "context.grantz"), 36, "grantz"),
        ("unit as group", &HEALTH.replace("case_id = \"hidden\"", "case_id = \"group\""), 4, "privacy_unit"),
        ("zero group", &HEALTH.replace("min_group_size = 10", "min_group_size = 0"), 17, "at least 1"),
        ("bad bounds", &HEALTH.replace("[0, 60]", "[60, 0]"), 24, "bounds"),
        ("bad member", &HEALTH.replace("\"bravo\"]", "\"Bravo\"]"), 28, "member id"),
    ];
    for (what, src, line, needle) in cases {
        let e = Policy::parse(src, "health.policy.toml").expect_err(what);
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("health.policy.toml line {line}:")), "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // Every problem of a file at once, each with its line, in the file's order of checks.
    let three = HEALTH
        .replace("min_group_size = 10", "min_group_size = 0")
        .replace("[0, 60]", "[60, 0]")
        .replace("\"bravo\"]", "\"Bravo\"]");
    let msg = Policy::parse(&three, "health.policy.toml").expect_err("three problems").to_string();
    assert!(msg.starts_with("3 problems:"), "{msg}");
    for (line, needle) in [(17, "at least 1"), (24, "bounds"), (28, "member id")] {
        assert!(msg.contains(&format!("health.policy.toml line {line}: ")) && msg.contains(needle), "{msg}");
    }
    let p = Policy::parse(HEALTH, "p.toml").expect("valid");
    let e = p.check_columns("health_cases", &["region".into()]).expect_err("unknown column");
    assert!(e.to_string().contains("is not a column of dataset health_cases"), "{e}");
}

fn people_schema(unit: Option<&str>) -> PersonalSchema {
    PersonalSchema {
        name: "people".into(),
        columns: ["person_id", "income", "age_band"].iter().map(|s| (*s).to_owned()).collect(),
        privacy_unit: unit.map(str::to_owned),
    }
}

fn people_columns() -> Vec<String> {
    ["person_id", "region", "income", "age_band"].iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn a_personal_schema_gets_a_protective_policy_whatever_allow_says() {
    let ctx = AccessContext { requester: "bravo".into(), ..Default::default() };
    let b = Baseline::default();
    for allow in [AllowList::Everyone, AllowList::Members(vec!["bravo".into()])] {
        let p = Policy::derived(&people_columns(), &people_schema(Some("person_id")), &b, &allow)
            .expect("derives");
        assert_eq!(p.personal.as_ref().map(|x| x.privacy_unit.as_str()), Some("person_id"));
        assert_eq!(p.mode("person_id"), ColumnMode::Hidden);
        assert_eq!(p.mode("income"), ColumnMode::Aggregate);
        assert_eq!(p.mode("age_band"), ColumnMode::Aggregate);
        assert_eq!(p.mode("region"), ColumnMode::Group);
        let dp = p.release.privacy.as_ref().expect("differential privacy by default");
        assert_eq!(dp.cost, Units::from_f64(DERIVED_COST).expect("units"));
        assert_eq!(dp.delta, Some(dp::DEFAULT_DELTA));
        assert_eq!(p.min_group_size(&b), Some(10));
        assert!(p.decide("alpha", "people", Action::Aggregate, &ctx, &b).is_allowed());
        assert!(!p.decide("alpha", "people", Action::ReadRows, &ctx, &b).is_allowed());
        p.check_schema(&people_schema(Some("person_id"))).expect("the derived policy keeps the baseline");
        p.check_baseline(&b).expect("and the charter's");
    }
    // Without a privacy unit nothing bounds one person's part: others may only describe.
    let p =
        Policy::derived(&people_columns(), &people_schema(None), &b, &AllowList::Everyone).expect("derives");
    assert_eq!(p.mode("income"), ColumnMode::Hidden);
    assert!(p.decide("alpha", "people", Action::Describe, &ctx, &b).is_allowed());
    assert!(!p.decide("alpha", "people", Action::Aggregate, &ctx, &b).is_allowed());
    p.check_schema(&people_schema(None)).expect("describe only keeps the baseline");
}

#[test]
fn a_policy_that_loosens_a_personal_schema_is_refused_naming_the_rule() {
    let schema = people_schema(Some("person_id"));
    let plain = Policy::default_for(&people_columns(), &AllowList::Everyone)
        .expect("default")
        .source
        .replace("income = \"group\"", "income = \"plain\"");
    let plain = Policy::parse(&plain, "p.toml").expect("parses");
    let e = plain.check_schema(&schema).expect_err("a personal column plain");
    assert!(e.to_string().contains("column income is personal"), "{e}");
    let undeclared = Policy::default_for(&people_columns(), &AllowList::Everyone).expect("default");
    let e = undeclared.check_schema(&schema).expect_err("personal data not declared");
    assert!(e.to_string().contains("declares no [personal]") && e.to_string().contains("person_id"), "{e}");
    let other_unit = HEALTH.replace("case_id", "region").replace("region = \"group\"\n", "");
    let columns = ["region", "age_band", "sex", "outcome", "onset_date", "hospital_days"];
    let p = Policy::parse(&other_unit, "p.toml").expect("parses");
    let s = PersonalSchema {
        name: "health".into(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        privacy_unit: Some("case_id".into()),
    };
    let e = p.check_schema(&s).expect_err("another unit");
    assert!(e.to_string().contains("the schema's privacy unit is case_id"), "{e}");
    // Nothing personal: nothing to loosen.
    undeclared.check_schema(&PersonalSchema::default()).expect("no personal columns");
}

#[test]
fn exact_releases_of_personal_data_are_warned_of() {
    let exact = HEALTH.split("[release.privacy]").next().unwrap_or_default().to_owned()
        + "[access]\nrules = '''\npermit (principal, action, resource);\n'''\n";
    let p = Policy::parse(&exact, "p.toml").expect("parses");
    assert!(p.warnings().iter().any(|w| w.contains("without differential privacy")), "{:?}", p.warnings());
    let noisy = Policy::parse(HEALTH, "p.toml").expect("parses");
    assert!(noisy.warnings().is_empty());
}
