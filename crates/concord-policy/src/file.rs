//! The policy file: TOML, every error named by file, line and key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::dp::Units;
use crate::{Classification, ColumnMode, Mechanism, Personal, Policy, PolicyError, Privacy, Release};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    classification: Spanned<Classification>,
    personal: Option<Spanned<RawPersonal>>,
    #[serde(default)]
    columns: BTreeMap<Spanned<String>, ColumnMode>,
    #[serde(default)]
    release: RawRelease,
    #[serde(default)]
    groups: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    access: RawAccess,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersonal {
    privacy_unit: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    min_group_size: Option<Spanned<u64>>,
    #[serde(default)]
    min_max: Vec<String>,
    #[serde(default)]
    keys: BTreeMap<String, Vec<String>>,
    privacy: Option<Spanned<RawPrivacy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    mechanism: Mechanism,
    cost: Spanned<f64>,
    budget_per_requester: Spanned<f64>,
    budget_per_dataset: Spanned<f64>,
    #[serde(default = "one")]
    max_groups_per_unit: Spanned<u32>,
    #[serde(default = "one")]
    max_rows_per_group: Spanned<u32>,
    #[serde(default)]
    bounds: BTreeMap<String, Spanned<[f64; 2]>>,
    #[serde(default = "two")]
    decimals: Spanned<u32>,
    #[serde(default)]
    keys: BTreeMap<String, Vec<String>>,
    delta: Option<Spanned<f64>>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn two() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    rules: Spanned<String>,
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes().iter().take(offset).filter(|&&b| b == b'\n').count() + 1
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A TOML key for a column name: bare when it can be.
pub(crate) fn toml_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

pub(crate) fn parse(source: &str, file: &str) -> Result<Policy, PolicyError> {
    let at = |span: std::ops::Range<usize>, reason: String| PolicyError::Malformed {
        file: file.to_owned(),
        line: line_of(source, span.start),
        reason,
    };
    let raw: RawPolicy = toml::from_str(source).map_err(|e| {
        let line = e.span().map(|s| line_of(source, s.start)).unwrap_or(1);
        PolicyError::Malformed { file: file.to_owned(), line, reason: e.message().trim().to_owned() }
    })?;
    let mut columns = BTreeMap::new();
    for (name, mode) in raw.columns {
        check_column_name(name.get_ref()).map_err(|r| at(name.span(), format!("columns: {r}")))?;
        columns.insert(name.into_inner(), mode);
    }
    let personal = match raw.personal {
        None => None,
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            check_column_name(&p.privacy_unit)
                .map_err(|r| at(span.clone(), format!("personal.privacy_unit: {r}")))?;
            if matches!(columns.get(&p.privacy_unit), Some(ColumnMode::Plain | ColumnMode::Group)) {
                return Err(at(
                    span,
                    format!(
                        "personal.privacy_unit {} identifies people, so it cannot be plain or a group key; make it hidden",
                        p.privacy_unit
                    ),
                ));
            }
            Some(Personal { privacy_unit: p.privacy_unit })
        }
    };
    if let Some(n) = &raw.release.min_group_size
        && *n.get_ref() == 0
    {
        return Err(at(n.span(), "release.min_group_size must be at least 1".into()));
    }
    let privacy = match raw.release.privacy {
        None => None,
        Some(p) => {
            let span = p.span();
            let p = p.into_inner();
            if personal.is_none() {
                return Err(at(
                    span,
                    "release.privacy needs a privacy unit: add [personal] with privacy_unit = \"<column>\""
                        .into(),
                ));
            }
            let units = |v: &Spanned<f64>, key: &str| {
                Units::from_f64(*v.get_ref()).map_err(|r| at(v.span(), format!("release.privacy.{key}: {r}")))
            };
            let cost = units(&p.cost, "cost")?;
            if cost == Units::ZERO {
                return Err(at(p.cost.span(), "release.privacy.cost must be above zero".into()));
            }
            let budget_per_requester = units(&p.budget_per_requester, "budget_per_requester")?;
            let budget_per_dataset = units(&p.budget_per_dataset, "budget_per_dataset")?;
            for (v, key) in [
                (&p.max_groups_per_unit, "max_groups_per_unit"),
                (&p.max_rows_per_group, "max_rows_per_group"),
            ] {
                if !(1..=1000).contains(v.get_ref()) {
                    return Err(at(v.span(), format!("release.privacy.{key} must be from 1 to 1000")));
                }
            }
            if *p.decimals.get_ref() > 6 {
                return Err(at(p.decimals.span(), "release.privacy.decimals must be from 0 to 6".into()));
            }
            let mut bounds = BTreeMap::new();
            for (c, b) in p.bounds {
                let [lo, hi] = *b.get_ref();
                if !(lo.is_finite() && hi.is_finite() && lo <= hi && lo.abs() <= 1e12 && hi.abs() <= 1e12) {
                    return Err(at(
                        b.span(),
                        format!(
                            "release.privacy.bounds.{c}: [{lo}, {hi}] must be finite, low <= high, within ±1e12"
                        ),
                    ));
                }
                let fixed = lo.abs().max(hi.abs()) * 10f64.powi(*p.decimals.get_ref() as i32);
                if fixed > 1e9 {
                    return Err(at(
                        b.span(),
                        format!(
                            "release.privacy.bounds.{c}: with {} decimals a value reaches {fixed:e} fixed-point units, over 1e9; \
                             narrow the bounds or keep fewer decimals",
                            p.decimals.get_ref()
                        ),
                    ));
                }
                bounds.insert(c, (lo, hi));
            }
            let delta = match p.delta {
                None => None,
                Some(d) => {
                    let v = *d.get_ref();
                    if !(v > 0.0 && v < 1e-3) {
                        return Err(at(
                            d.span(),
                            format!("release.privacy.delta {v} must be above 0 and below 0.001"),
                        ));
                    }
                    Some(v)
                }
            };
            Some(Privacy {
                mechanism: p.mechanism,
                cost,
                budget_per_requester,
                budget_per_dataset,
                max_groups_per_unit: p.max_groups_per_unit.into_inner(),
                max_rows_per_group: p.max_rows_per_group.into_inner(),
                bounds,
                decimals: p.decimals.into_inner(),
                keys: p.keys,
                delta,
            })
        }
    };
    let mut groups = BTreeMap::new();
    for (name, members) in raw.groups {
        if !crate::is_member_id(name.get_ref()) {
            return Err(at(
                name.span(),
                format!("groups: {:?} must match [a-z][a-z0-9-]{{1,31}}", name.get_ref()),
            ));
        }
        let mut ids = Vec::new();
        for m in members {
            if !crate::is_member_id(m.get_ref()) {
                return Err(at(
                    m.span(),
                    format!("groups.{}: {:?} is not a member id", name.get_ref(), m.get_ref()),
                ));
            }
            ids.push(m.into_inner());
        }
        groups.insert(name.into_inner(), ids);
    }
    let rules_span = raw.access.rules.span();
    let rules = raw.access.rules.into_inner();
    // The rules' first line: after the opening quotes, and after the newline TOML trims there.
    let opening = source.get(rules_span.start..).unwrap_or("");
    let skip = if opening.starts_with("'''\n") || opening.starts_with("\"\"\"\n") { 1 } else { 0 };
    let first_line = line_of(source, rules_span.start) + skip;
    let rules_parsed =
        crate::cedar::parse_rules(&rules).map_err(|(line, reason)| PolicyError::Malformed {
            file: file.to_owned(),
            line: first_line + line.saturating_sub(1),
            reason: format!("access.rules: {reason}"),
        })?;
    let policy = Policy {
        classification: raw.classification.into_inner(),
        personal,
        columns,
        release: Release {
            min_group_size: raw.release.min_group_size.map(Spanned::into_inner),
            min_max: raw.release.min_max,
            keys: raw.release.keys,
            privacy,
        },
        groups,
        rules,
        rules_parsed,
        source: source.to_owned(),
    };
    if let Some(dp) = &policy.release.privacy {
        for c in dp.bounds.keys() {
            if !matches!(policy.mode(c), ColumnMode::Aggregate | ColumnMode::Group | ColumnMode::Plain) {
                return Err(PolicyError::Invalid(format!(
                    "{file}: release.privacy.bounds names {c}, whose mode {} does not let it be aggregated",
                    policy.mode(c).as_str()
                )));
            }
        }
        for (c, set) in &dp.keys {
            if !matches!(policy.mode(c), ColumnMode::Group | ColumnMode::Plain) {
                return Err(PolicyError::Invalid(format!(
                    "{file}: release.privacy.keys names {c}, which is not a group column"
                )));
            }
            if policy.release.keys.get(c).is_some_and(|other| other != set) {
                return Err(PolicyError::Invalid(format!(
                    "{file}: release.keys and release.privacy.keys give {c} different public key sets; keep one"
                )));
            }
        }
    }
    for c in policy.release.keys.keys() {
        if !matches!(policy.mode(c), ColumnMode::Group | ColumnMode::Plain) {
            return Err(PolicyError::Invalid(format!(
                "{file}: release.keys names {c}, which is not a group column"
            )));
        }
    }
    for c in &policy.release.min_max {
        if !matches!(policy.mode(c), ColumnMode::Aggregate | ColumnMode::Group | ColumnMode::Plain) {
            return Err(PolicyError::Invalid(format!(
                "{file}: release.min_max names {c}, whose mode {} does not let it be aggregated",
                policy.mode(c).as_str()
            )));
        }
    }
    Ok(policy)
}

fn check_column_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control()) {
        return Err(format!("{name:?} is not a column name"));
    }
    Ok(())
}
