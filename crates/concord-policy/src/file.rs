//! The policy file: TOML, every error named by file, line and key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::cedar::line_of;
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

/// Parses a policy file: TOML first (a syntax error stops there), then every rule of the file
/// checked, each problem named with its line, all of them reported at once.
pub(crate) fn parse(source: &str, file: &str) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(source).map_err(|e| {
        let line = e.span().map(|s| line_of(source, s.start)).unwrap_or(1);
        PolicyError::Malformed { file: file.to_owned(), line, reason: e.message().trim().to_owned() }
    })?;
    let mut c = Check { source, file, problems: Vec::new() };
    let columns = c.columns(raw.columns);
    let personal = c.personal(raw.personal, &columns);
    if let Some(n) = &raw.release.min_group_size
        && *n.get_ref() == 0
    {
        c.at(n.span(), "release.min_group_size must be at least 1".into());
    }
    let privacy = c.privacy(raw.release.privacy, personal.is_some());
    let groups = c.groups(raw.groups);
    let rules = c.rules(raw.access.rules);
    let release = Release {
        min_group_size: raw.release.min_group_size.map(Spanned::into_inner),
        min_max: raw.release.min_max,
        keys: raw.release.keys,
        privacy,
    };
    c.release_columns(&release, &columns);
    match (c.problems.len(), rules) {
        (0, Some((rules, rules_parsed))) => Ok(Policy {
            classification: raw.classification.into_inner(),
            personal,
            columns,
            release,
            groups,
            rules,
            rules_parsed,
            source: source.to_owned(),
        }),
        (1, _) => Err(c.problems.remove(0)),
        _ => Err(PolicyError::Several(c.problems)),
    }
}

/// The problems found in one file.
struct Check<'a> {
    source: &'a str,
    file: &'a str,
    problems: Vec<PolicyError>,
}

impl Check<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, reason: String) {
        let line = line_of(self.source, span.start);
        self.problems.push(PolicyError::Malformed { file: self.file.to_owned(), line, reason });
    }

    fn invalid(&mut self, reason: String) {
        self.problems.push(PolicyError::Invalid(format!("{}: {reason}", self.file)));
    }

    fn columns(&mut self, raw: BTreeMap<Spanned<String>, ColumnMode>) -> BTreeMap<String, ColumnMode> {
        let mut columns = BTreeMap::new();
        for (name, mode) in raw {
            if let Err(r) = check_column_name(name.get_ref()) {
                self.at(name.span(), format!("columns: {r}"));
            }
            columns.insert(name.into_inner(), mode);
        }
        columns
    }

    fn personal(
        &mut self,
        raw: Option<Spanned<RawPersonal>>,
        columns: &BTreeMap<String, ColumnMode>,
    ) -> Option<Personal> {
        let p = raw?;
        let span = p.span();
        let p = p.into_inner();
        if let Err(r) = check_column_name(&p.privacy_unit) {
            self.at(span.clone(), format!("personal.privacy_unit: {r}"));
        }
        if matches!(columns.get(&p.privacy_unit), Some(ColumnMode::Plain | ColumnMode::Group)) {
            self.at(
                span,
                format!(
                    "personal.privacy_unit {} identifies people, so it cannot be plain or a group key; make it hidden",
                    p.privacy_unit
                ),
            );
        }
        Some(Personal { privacy_unit: p.privacy_unit })
    }

    fn units(&mut self, v: &Spanned<f64>, key: &str) -> Units {
        Units::from_f64(*v.get_ref()).unwrap_or_else(|r| {
            self.at(v.span(), format!("release.privacy.{key}: {r}"));
            Units::ZERO
        })
    }

    fn privacy(&mut self, raw: Option<Spanned<RawPrivacy>>, personal: bool) -> Option<Privacy> {
        let p = raw?;
        let span = p.span();
        let p = p.into_inner();
        if !personal {
            self.at(
                span,
                "release.privacy needs a privacy unit: add [personal] with privacy_unit = \"<column>\""
                    .into(),
            );
        }
        let cost = self.units(&p.cost, "cost");
        if cost == Units::ZERO && Units::from_f64(*p.cost.get_ref()).is_ok() {
            self.at(p.cost.span(), "release.privacy.cost must be above zero".into());
        }
        let budget_per_requester = self.units(&p.budget_per_requester, "budget_per_requester");
        let budget_per_dataset = self.units(&p.budget_per_dataset, "budget_per_dataset");
        self.privacy_limits(&p);
        let decimals = (*p.decimals.get_ref()).min(6);
        let mut bounds = BTreeMap::new();
        for (c, b) in p.bounds {
            if let Some(bound) = self.bound(&c, &b, decimals) {
                bounds.insert(c, bound);
            }
        }
        let delta = self.privacy_delta(p.delta);
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

    /// Checks the ranges of `max_groups_per_unit`, `max_rows_per_group` and `decimals`.
    fn privacy_limits(&mut self, p: &RawPrivacy) {
        for (v, key) in
            [(&p.max_groups_per_unit, "max_groups_per_unit"), (&p.max_rows_per_group, "max_rows_per_group")]
        {
            if !(1..=1000).contains(v.get_ref()) {
                self.at(v.span(), format!("release.privacy.{key} must be from 1 to 1000"));
            }
        }
        if *p.decimals.get_ref() > 6 {
            self.at(p.decimals.span(), "release.privacy.decimals must be from 0 to 6".into());
        }
    }

    /// The privacy delta, if one is given and it is above 0 and below 0.001.
    fn privacy_delta(&mut self, raw: Option<Spanned<f64>>) -> Option<f64> {
        raw.and_then(|d| {
            let v = *d.get_ref();
            if v > 0.0 && v < 1e-3 {
                Some(v)
            } else {
                self.at(d.span(), format!("release.privacy.delta {v} must be above 0 and below 0.001"));
                None
            }
        })
    }

    /// A column's clamping bounds, if they are finite, ordered and fit fixed-point units.
    fn bound(&mut self, c: &str, b: &Spanned<[f64; 2]>, decimals: u32) -> Option<(f64, f64)> {
        let [lo, hi] = *b.get_ref();
        if !(lo.is_finite() && hi.is_finite() && lo <= hi && lo.abs() <= 1e12 && hi.abs() <= 1e12) {
            self.at(
                b.span(),
                format!("release.privacy.bounds.{c}: [{lo}, {hi}] must be finite, low <= high, within ±1e12"),
            );
            return None;
        }
        let fixed = lo.abs().max(hi.abs()) * 10f64.powi(decimals as i32);
        if fixed > 1e9 {
            self.at(
                b.span(),
                format!(
                    "release.privacy.bounds.{c}: with {decimals} decimals a value reaches {fixed:e} fixed-point units, over 1e9; \
                     narrow the bounds or keep fewer decimals"
                ),
            );
            return None;
        }
        Some((lo, hi))
    }

    fn groups(
        &mut self,
        raw: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    ) -> BTreeMap<String, Vec<String>> {
        let mut groups = BTreeMap::new();
        for (name, members) in raw {
            if !crate::is_member_id(name.get_ref()) {
                self.at(
                    name.span(),
                    format!("groups: {:?} must match [a-z][a-z0-9-]{{1,31}}", name.get_ref()),
                );
            }
            let mut ids = Vec::new();
            for m in members {
                if !crate::is_member_id(m.get_ref()) {
                    self.at(
                        m.span(),
                        format!("groups.{}: {:?} is not a member id", name.get_ref(), m.get_ref()),
                    );
                }
                ids.push(m.into_inner());
            }
            groups.insert(name.into_inner(), ids);
        }
        groups
    }

    /// The access rules in Cedar, with the line of the file where an error is.
    fn rules(&mut self, raw: Spanned<String>) -> Option<(String, cedar_policy::PolicySet)> {
        let span = raw.span();
        let rules = raw.into_inner();
        // The rules' first line: after the opening quotes, and after the newline TOML trims there.
        let opening = self.source.get(span.start..).unwrap_or("");
        let skip = if opening.starts_with("'''\n") || opening.starts_with("\"\"\"\n") { 1 } else { 0 };
        let first_line = line_of(self.source, span.start) + skip;
        match crate::cedar::parse_rules(&rules) {
            Ok(parsed) => Some((rules, parsed)),
            Err((line, reason)) => {
                self.problems.push(PolicyError::Malformed {
                    file: self.file.to_owned(),
                    line: first_line + line.saturating_sub(1),
                    reason: format!("access.rules: {reason}"),
                });
                None
            }
        }
    }

    /// Columns the release rules name must have a mode that lets them do what the rule says.
    fn release_columns(&mut self, release: &Release, columns: &BTreeMap<String, ColumnMode>) {
        let mode = |c: &str| columns.get(c).copied().unwrap_or(ColumnMode::Hidden);
        let aggregated =
            |c: &str| matches!(mode(c), ColumnMode::Aggregate | ColumnMode::Group | ColumnMode::Plain);
        let grouped = |c: &str| matches!(mode(c), ColumnMode::Group | ColumnMode::Plain);
        if let Some(dp) = &release.privacy {
            for c in dp.bounds.keys().filter(|c| !aggregated(c)) {
                self.invalid(format!(
                    "release.privacy.bounds names {c}, whose mode {} does not let it be aggregated",
                    mode(c).as_str()
                ));
            }
            for (c, set) in &dp.keys {
                if !grouped(c) {
                    self.invalid(format!("release.privacy.keys names {c}, which is not a group column"));
                }
                if release.keys.get(c).is_some_and(|other| other != set) {
                    self.invalid(format!(
                        "release.keys and release.privacy.keys give {c} different public key sets; keep one"
                    ));
                }
            }
        }
        for c in release.keys.keys().filter(|c| !grouped(c)) {
            self.invalid(format!("release.keys names {c}, which is not a group column"));
        }
        for c in release.min_max.iter().filter(|c| !aggregated(c)) {
            self.invalid(format!(
                "release.min_max names {c}, whose mode {} does not let it be aggregated",
                mode(c).as_str()
            ));
        }
    }
}

fn check_column_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.chars().any(|c| c.is_control()) {
        return Err(format!("{name:?} is not a column name"));
    }
    Ok(())
}
