//! Usage policies: what an owner's node lets each requester do with each of its datasets.
//!
//! A dataset's policy is a TOML file ([`Policy::parse`], format in `docs/policy.md`): its
//! classification, whether it holds personal data and its privacy unit, a mode per column, release
//! rules (minimum group size, differential privacy) and access rules in the Cedar language. The
//! charter's [`Baseline`] applies on top of every policy; a policy can be stricter, never looser.
//!
//! - [`Policy::decide`]: may this requester do this action on this dataset at all (baseline, then
//!   Cedar).
//! - [`Policy::mode`]: how a column may be used; the owner's SQL check (in `concord-query`) asks it
//!   for every column a sub-query touches.
//! - [`dp`]: exact samplers for differential privacy and the arithmetic of budgets.
//!
//! Invariant: deny by default. No Cedar rule, no access; a column the policy does not name is
//! `hidden`; the owner's own analysts are the only requester no rule binds.
//! Invariant: this crate does no IO and knows nothing of SQL engines.

#![warn(missing_docs)]

mod cedar;
pub mod dp;
mod file;
mod words;
pub use words::RuleInWords;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

pub use cedar::CEDAR_SCHEMA;
pub use dp::Units;

/// How sensitive a dataset is; the charter's baseline says what each class may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Anyone may see it.
    Public,
    /// Released under the policy's rules.
    General,
    /// Released only under an approved access request.
    Important,
    /// Never leaves its owner.
    Core,
}

impl Classification {
    /// The name the policy file uses: `public`, `general`, `important` or `core`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::General => "general",
            Self::Important => "important",
            Self::Core => "core",
        }
    }
}

/// How a column may be used, after SCQL's column control lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnMode {
    /// Output as is, row by row; also a group key, a filter, an aggregate argument.
    Plain,
    /// A group key (output as such), a filter, an aggregate argument.
    Group,
    /// Only inside COUNT, SUM, AVG (and MIN, MAX where the release rules allow them).
    Aggregate,
    /// Only in WHERE comparisons.
    Filter,
    /// Never referenced.
    Hidden,
}

impl ColumnMode {
    /// The name the policy file uses: `plain`, `group`, `aggregate`, `filter` or `hidden`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Group => "group",
            Self::Aggregate => "aggregate",
            Self::Filter => "filter",
            Self::Hidden => "hidden",
        }
    }
}

/// Where in a query a column is used; [`ColumnMode::permits`] says which modes allow which use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Output row by row (a `read_rows` select item).
    Output,
    /// A group key, or output as one.
    GroupKey,
    /// WHERE, or an aggregate's FILTER clause.
    Filter,
    /// WHERE of a row read: it picks which rows are released.
    RowFilter,
    /// Inside the argument of COUNT, SUM or AVG.
    Aggregated,
    /// Inside the argument of MIN or MAX.
    Extreme,
}

impl Use {
    /// The use in words, as refusals phrase it: "column x is hidden and cannot be used as a group key".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Output => "output as a row value",
            Self::GroupKey => "used as a group key",
            Self::Filter => "used in a filter",
            Self::RowFilter => "used to pick released rows",
            Self::Aggregated => "aggregated",
            Self::Extreme => "inside MIN or MAX",
        }
    }
}

impl ColumnMode {
    /// Whether a column of this mode may be used so.
    pub fn permits(self, use_: Use) -> bool {
        match self {
            Self::Plain => true,
            Self::Group => !matches!(use_, Use::Output | Use::RowFilter),
            Self::Aggregate => matches!(use_, Use::Aggregated | Use::Extreme),
            Self::Filter => matches!(use_, Use::Filter),
            Self::Hidden => false,
        }
    }
}

/// What a requester asks to do with a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Aggregates over the dataset.
    Aggregate,
    /// Rows of the dataset, as they are.
    ReadRows,
    /// The dataset's name and schema.
    Describe,
}

impl Action {
    /// The action's name as Cedar rules and access requests spell it: `aggregate`, `read_rows` or `describe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aggregate => "aggregate",
            Self::ReadRows => "read_rows",
            Self::Describe => "describe",
        }
    }

    /// Parses an action's name; an unknown one is an error that lists the three.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s {
            "aggregate" => Ok(Self::Aggregate),
            "read_rows" => Ok(Self::ReadRows),
            "describe" => Ok(Self::Describe),
            other => Err(PolicyError::Invalid(format!(
                "unknown action {other:?}; actions are aggregate, read_rows and describe"
            ))),
        }
    }
}

/// The rules of the charter that bind every dataset of every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    /// Personal data is released only in groups of at least this many distinct privacy units.
    pub min_group_size: u64,
    /// The most sensitive classification that may cross borders; core data never does.
    pub cross_borders: Classification,
}

impl Default for Baseline {
    fn default() -> Self {
        Self { min_group_size: 10, cross_borders: Classification::Important }
    }
}

/// What a shared schema of the charter says of the people its data describes. A dataset that
/// conforms to a schema with personal columns or a privacy unit is protected by default
/// ([`Policy::derived`]), and no policy of it may loosen that ([`Policy::check_schema`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersonalSchema {
    /// The shared schema's name.
    pub name: String,
    /// Columns that describe people: those the schema marks personal, and its privacy unit.
    pub columns: Vec<String>,
    /// The schema's privacy unit column, if it names one.
    pub privacy_unit: Option<String>,
}

impl PersonalSchema {
    /// Whether the schema describes people: it names personal columns or a privacy unit.
    pub fn is_personal(&self) -> bool {
        self.privacy_unit.is_some() || !self.columns.is_empty()
    }
}

/// What a policy derived from a personal schema costs and spends when a steward set none: rho
/// 0.01 a query, 1 per requester (100 queries), 3 for all requesters together, delta
/// [`dp::DEFAULT_DELTA`].
pub const DERIVED_COST: f64 = 0.01;
/// What one requester may spend on a dataset under a derived policy, in rho.
pub const DERIVED_BUDGET_PER_REQUESTER: f64 = 1.0;
/// What all requesters together may spend on a dataset under a derived policy, in rho.
pub const DERIVED_BUDGET_PER_DATASET: f64 = 3.0;

/// The personal data a dataset holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Personal {
    /// The column that identifies a data subject (a person, a household).
    pub privacy_unit: String,
}

/// Differential-privacy mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Discrete Gaussian noise; cost and budgets are rho of zero-concentrated DP.
    Zcdp,
    /// Discrete Laplace noise; cost and budgets are epsilon of pure DP.
    Pure,
}

impl Mechanism {
    /// The name the policy file uses: `zcdp` or `pure`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zcdp => "zcdp",
            Self::Pure => "pure",
        }
    }

    /// The name of the privacy parameter budgets are counted in.
    pub fn parameter(self) -> &'static str {
        match self {
            Self::Zcdp => "rho",
            Self::Pure => "epsilon",
        }
    }
}

/// Differential privacy as a dataset's release rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Privacy {
    /// The noise mechanism, which also fixes the parameter (rho or epsilon) costs are counted in.
    pub mechanism: Mechanism,
    /// Privacy spent by one query (rho or epsilon), split evenly over its noisy aggregates.
    pub cost: Units,
    /// Total one requester may spend on this dataset.
    pub budget_per_requester: Units,
    /// Total all requesters together may spend on this dataset.
    pub budget_per_dataset: Units,
    /// Groups one privacy unit may contribute to in one query (L0 bound).
    pub max_groups_per_unit: u32,
    /// Rows one privacy unit may contribute to one group (Linf bound).
    pub max_rows_per_group: u32,
    /// Clamping bounds of every column that may be summed: `[low, high]`.
    pub bounds: BTreeMap<String, (f64, f64)>,
    /// Decimal places kept when summing float columns as fixed-point integers.
    pub decimals: u32,
    /// Public key sets of group columns: the groups released whatever the data holds.
    pub keys: BTreeMap<String, Vec<String>>,
    /// Groups not covered by public keys are released only if their noisy count passes a
    /// threshold chosen so that a group of one unit appears with probability at most `delta`.
    pub delta: Option<f64>,
}

/// Release rules of a dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Release {
    /// Distinct privacy units every released group stands for, at least; the charter's baseline
    /// raises it for personal data.
    pub min_group_size: Option<u64>,
    /// Columns whose MIN and MAX may be released from personal data (never under DP).
    pub min_max: Vec<String>,
    /// Public key sets of group columns, whatever the release: the values a group column can
    /// take, published by the owner. Groups held back are counted only against these (a count
    /// of groups found in the data would tell a group of one from none).
    pub keys: BTreeMap<String, Vec<String>>,
    /// Differential privacy, when the policy asks for it.
    pub privacy: Option<Privacy>,
}

/// The usage policy of one dataset.
#[derive(Clone, Debug)]
pub struct Policy {
    /// How sensitive the dataset is.
    pub classification: Classification,
    /// The personal data the dataset holds, when the policy declares any (`[personal]`).
    pub personal: Option<Personal>,
    /// Modes of the columns the policy names; every other column is hidden.
    pub columns: BTreeMap<String, ColumnMode>,
    /// The rules every released result must follow.
    pub release: Release,
    /// Member groups the Cedar rules may name: `Group::"<name>"`.
    pub groups: BTreeMap<String, Vec<String>>,
    /// The access rules, Cedar source.
    pub rules: String,
    rules_parsed: cedar_policy::PolicySet,
    /// The policy file as it was written.
    pub source: String,
}

/// What a requester brings to a decision besides its name.
#[derive(Clone, Debug, Default)]
pub struct AccessContext {
    /// Member id of the requester.
    pub requester: String,
    /// The purpose the requester states; Cedar rules may test it.
    pub purpose: String,
    /// Ids of the live grants the requester holds on this dataset, and the actions they cover.
    pub grants: Vec<(String, Vec<Action>)>,
    /// The charter version in force; Cedar rules may test it.
    pub charter_version: u64,
}

impl AccessContext {
    /// The grant that covers `action`, if any.
    pub fn grant_for(&self, action: Action) -> Option<&str> {
        self.grants.iter().find(|(_, acts)| acts.contains(&action)).map(|(id, _)| id.as_str())
    }
}

/// Why a request was allowed or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `by` names the rule (a Cedar policy id, or why no rule binds).
    Allow {
        /// The rule that allows: a Cedar policy id, or why no rule binds.
        by: String,
    },
    /// Refused; `reason` says why.
    Deny {
        /// Why, in words the requester can act on.
        reason: String,
    },
}

impl Decision {
    /// Whether the request was allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

/// Errors of policy definitions.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file is malformed: where, and what.
    #[error("{file} line {line}: {reason}")]
    Malformed {
        /// The policy file's name, as given to [`Policy::parse`].
        file: String,
        /// The 1-based line of the problem.
        line: usize,
        /// What is wrong there.
        reason: String,
    },
    /// The policy does not fit its dataset.
    #[error("{0}")]
    Invalid(String),
    /// The policy would loosen a rule of the charter's baseline.
    #[error("the policy loosens the charter's baseline rule \"{rule}\": {reason}")]
    LoosensBaseline {
        /// The baseline rule, in words.
        rule: String,
        /// How the policy loosens it, and how to fix that.
        reason: String,
    },
    /// An `--allow` list names something that is not a member id.
    #[error("bad allow-list: {0}")]
    BadAllowList(String),
    /// Several problems of one file, each on its own line.
    #[error("{} problems:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Several(Vec<PolicyError>),
}

impl Policy {
    /// Parses and validates a policy file; `file` names it in errors.
    pub fn parse(source: &str, file: &str) -> Result<Self, PolicyError> {
        file::parse(source, file)
    }

    /// The policy a dataset gets without a file: aggregates and descriptions for `members` (or
    /// every member), every column a group key, no rows, no personal data declared.
    pub fn default_for(columns: &[String], members: &AllowList) -> Result<Self, PolicyError> {
        let mut s = String::from(
            "# Default policy: aggregates for the members allowed, every column a group key, no rows.\n\
             classification = \"general\"\n\n[columns]\n",
        );
        for c in columns {
            s.push_str(&format!("{} = \"group\"\n", file::toml_key(c)));
        }
        s.push_str("\n[access]\nrules = '''\n");
        if let Some(cond) = members.condition() {
            s.push_str(&format!(
                "permit (principal, action in [Action::\"aggregate\", Action::\"describe\"], resource){cond};\n"
            ));
        }
        s.push_str("'''\n");
        file::parse(&s, "default policy")
    }

    /// The policy of a dataset registered without one whose shared schema describes people:
    /// with a privacy unit, the unit hidden, personal columns aggregate-only, other columns
    /// group keys, the charter's minimum group size and differential privacy at the documented
    /// defaults ([`DERIVED_COST`], ...), for `members`. Without one nothing can bound what a
    /// person contributes, so `members` may only see that the dataset exists (describe), and
    /// personal columns are hidden. `members` never makes a personal column plain.
    pub fn derived(
        columns: &[String],
        schema: &PersonalSchema,
        baseline: &Baseline,
        members: &AllowList,
    ) -> Result<Self, PolicyError> {
        let mut s = Self::derived_header(schema);
        Self::derived_columns(&mut s, columns, schema);
        let actions = if schema.privacy_unit.is_some() {
            s.push_str(&format!(
                "\n[release]\nmin_group_size = {}\n\n[release.privacy]\nmechanism = \"zcdp\"\ncost = {DERIVED_COST}\n\
                 budget_per_requester = {DERIVED_BUDGET_PER_REQUESTER:?}\nbudget_per_dataset = {DERIVED_BUDGET_PER_DATASET:?}\n\
                 max_groups_per_unit = 1\nmax_rows_per_group = 1\ndelta = {:e}\n",
                baseline.min_group_size,
                dp::DEFAULT_DELTA
            ));
            "[Action::\"aggregate\", Action::\"describe\"]"
        } else {
            "[Action::\"describe\"]"
        };
        s.push_str("\n[access]\nrules = '''\n");
        if let Some(cond) = members.condition() {
            s.push_str(&format!("permit (principal, action in {actions}, resource){cond};\n"));
        }
        s.push_str("'''\n");
        file::parse(&s, "derived policy")
    }

    /// The start of a derived policy file: comment, classification, `[personal]`, `[columns]` header.
    fn derived_header(schema: &PersonalSchema) -> String {
        match &schema.privacy_unit {
            Some(u) => format!(
                "# Derived policy: shared schema {} describes people (privacy unit {u}), so this dataset is\n\
                 # protected by default: the unit hidden, personal columns aggregate-only, differential privacy.\n\
                 # A steward's own policy comes with `concord policy set`.\n\
                 classification = \"general\"\n\n[personal]\nprivacy_unit = {}\n\n[columns]\n",
                schema.name,
                file::toml_string(u),
            ),
            None => format!(
                "# Derived policy: shared schema {} marks personal columns but names no privacy unit, so nothing\n\
                 # can bound what one person contributes: other members may see that the dataset exists, no more,\n\
                 # and personal columns are hidden. A steward's own policy (with [personal]) comes with\n\
                 # `concord policy set`.\n\
                 classification = \"general\"\n\n[columns]\n",
                schema.name
            ),
        }
    }

    /// Appends a derived policy's mode of each column: the unit hidden, personal ones aggregate or hidden.
    fn derived_columns(s: &mut String, columns: &[String], schema: &PersonalSchema) {
        for c in columns {
            let mode = if schema.privacy_unit.as_ref() == Some(c) {
                "hidden"
            } else if schema.columns.contains(c) {
                if schema.privacy_unit.is_some() { "aggregate" } else { "hidden" }
            } else {
                "group"
            };
            s.push_str(&format!("{} = \"{mode}\"\n", file::toml_key(c)));
        }
    }

    /// Whether a rule may permit another member more than describe.
    fn lets_data_cross(&self) -> bool {
        self.rules_parsed
            .policies()
            .any(|p| p.effect() == cedar_policy::Effect::Permit && cedar::may_permit_other_than_describe(p))
    }

    /// Checks that the policy protects what the shared schema marks personal, naming the rule
    /// it would loosen: no personal column plain; a policy that lets other members aggregate
    /// or read declares the data personal, with the schema's privacy unit when it names one.
    pub fn check_schema(&self, schema: &PersonalSchema) -> Result<(), PolicyError> {
        if !schema.is_personal() {
            return Ok(());
        }
        let rule = format!(
            "data of shared schema {} describes people and is protected as personal data",
            schema.name
        );
        if let Some(c) = schema.columns.iter().find(|c| self.mode(c) == ColumnMode::Plain) {
            return Err(PolicyError::LoosensBaseline {
                rule,
                reason: format!(
                    "column {c} is personal in the shared schema and cannot be plain; make it group, aggregate, \
                     filter or hidden"
                ),
            });
        }
        match (&self.personal, &schema.privacy_unit) {
            (None, unit) if self.lets_data_cross() => Err(PolicyError::LoosensBaseline {
                rule,
                reason: format!(
                    "the schema marks {} as personal, yet the policy declares no [personal] privacy_unit{}; declare \
                     it, or permit only describe",
                    schema.columns.join(", "),
                    unit.as_ref().map(|u| format!(" (the schema's is {u})")).unwrap_or_default()
                ),
            }),
            (Some(p), Some(u)) if &p.privacy_unit != u => Err(PolicyError::LoosensBaseline {
                rule,
                reason: format!(
                    "the schema's privacy unit is {u}, the policy names {}; name {u}",
                    p.privacy_unit
                ),
            }),
            _ => Ok(()),
        }
    }

    /// What a steward should know of a valid policy: personal data released exactly.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.personal
            && self.release.privacy.is_none()
            && self.lets_data_cross()
        {
            out.push(format!(
                "personal data (privacy unit {}) is released exactly, without differential privacy: each query's \
                 groups hold at least the minimum group size, but exact answers to several queries can be \
                 subtracted to single a person out (a tracker). Add [release.privacy] unless the charter allows \
                 exact releases of this data",
                p.privacy_unit
            ));
        }
        out
    }

    /// SHA-256 of the policy file, hex: what the log records when a policy is set.
    pub fn digest(&self) -> String {
        hex(&Sha256::digest(self.source.as_bytes()))
    }

    /// How `column` may be used; a column the policy does not name is hidden.
    pub fn mode(&self, column: &str) -> ColumnMode {
        self.columns.get(column).copied().unwrap_or(ColumnMode::Hidden)
    }

    /// Whether the policy declares personal data (a `[personal]` table).
    pub fn holds_personal_data(&self) -> bool {
        self.personal.is_some()
    }

    /// The minimum group size in force: the policy's, raised to the baseline's for personal
    /// data; `None` when no minimum applies.
    pub fn min_group_size(&self, baseline: &Baseline) -> Option<u64> {
        let own = self.release.min_group_size;
        if self.personal.is_some() {
            Some(own.unwrap_or(0).max(baseline.min_group_size).max(1))
        } else {
            own.filter(|&n| n > 1)
        }
    }

    /// The public key set of a group column (`release.keys`, or `release.privacy.keys`).
    pub fn public_keys(&self, column: &str) -> Option<&[String]> {
        self.release
            .keys
            .get(column)
            .or_else(|| self.release.privacy.as_ref().and_then(|p| p.keys.get(column)))
            .map(Vec::as_slice)
    }

    /// Whether MIN and MAX of `column` may be released.
    pub fn allows_extremes(&self, column: &str) -> bool {
        if self.release.privacy.is_some() {
            return false;
        }
        self.personal.is_none() || self.release.min_max.iter().any(|c| c == column)
    }

    /// Checks the policy against the columns of its dataset: every column it names exists, and
    /// its privacy unit, bounds and key sets name columns of fitting modes.
    pub fn check_columns(&self, dataset: &str, columns: &[String]) -> Result<(), PolicyError> {
        let known = |c: &str| columns.iter().any(|x| x == c);
        let unknown = |what: &str, c: &str| {
            PolicyError::Invalid(format!(
                "{what} {c:?} is not a column of dataset {dataset}; its columns are {}",
                columns.join(", ")
            ))
        };
        for c in self.columns.keys() {
            if !known(c) {
                return Err(unknown("the policy names column", c));
            }
        }
        if let Some(p) = &self.personal
            && !known(&p.privacy_unit)
        {
            return Err(unknown("the privacy unit", &p.privacy_unit));
        }
        for c in &self.release.min_max {
            if !known(c) {
                return Err(unknown("release.min_max names", c));
            }
        }
        for c in self.release.keys.keys() {
            if !known(c) {
                return Err(unknown("release.keys names", c));
            }
        }
        if let Some(dp) = &self.release.privacy {
            for c in dp.bounds.keys() {
                if !known(c) {
                    return Err(unknown("release.privacy.bounds names", c));
                }
            }
            for c in dp.keys.keys() {
                if !known(c) {
                    return Err(unknown("release.privacy.keys names", c));
                }
            }
        }
        Ok(())
    }

    /// Checks that the policy is no looser than the charter's baseline; the error names the rule.
    pub fn check_baseline(&self, baseline: &Baseline) -> Result<(), PolicyError> {
        if self.personal.is_some()
            && let Some(n) = self.release.min_group_size
            && n < baseline.min_group_size
        {
            return Err(PolicyError::LoosensBaseline {
                rule: format!(
                    "personal data is released only in groups of at least {}",
                    baseline.min_group_size
                ),
                reason: format!(
                    "release.min_group_size is {n}; set it to {} or more, or leave it out",
                    baseline.min_group_size
                ),
            });
        }
        let crossing: Vec<String> = self
            .rules_parsed
            .policies()
            .filter(|p| p.effect() == cedar_policy::Effect::Permit)
            .filter(|p| cedar::may_permit_other_than_describe(p))
            .map(|p| p.id().to_string())
            .collect();
        if self.classification == Classification::Core && !crossing.is_empty() {
            return Err(PolicyError::LoosensBaseline {
                rule: "core data never leaves its owner".into(),
                reason: format!(
                    "the dataset is classified core, yet rule {} permits aggregate or read_rows; \
                     permit only describe, or classify it lower",
                    crossing.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Whether `ctx.requester` may do `action` on `dataset` of `owner`: the baseline first, then
    /// the Cedar rules. Column modes and release rules are checked on the query itself.
    pub fn decide(
        &self,
        owner: &str,
        dataset: &str,
        action: Action,
        ctx: &AccessContext,
        baseline: &Baseline,
    ) -> Decision {
        if ctx.requester == owner {
            return Decision::Allow {
                by: format!("{owner}'s own analysts read its data without crossing a border"),
            };
        }
        if let Some(reason) = self.baseline_denial(owner, dataset, action, ctx, baseline) {
            return Decision::Deny { reason };
        }
        cedar::authorize(self, owner, dataset, action, ctx)
    }

    /// Why the charter's baseline refuses another member `action` on `dataset`, if it does.
    fn baseline_denial(
        &self,
        owner: &str,
        dataset: &str,
        action: Action,
        ctx: &AccessContext,
        baseline: &Baseline,
    ) -> Option<String> {
        let crosses = action != Action::Describe;
        if crosses && self.classification == Classification::Core {
            return Some(format!(
                "{dataset} is classified core, and core data never leaves its owner (charter baseline)"
            ));
        }
        if crosses && self.classification > baseline.cross_borders {
            return Some(format!(
                "{dataset} is classified {}, and the charter lets only data classified up to {} cross borders (charter baseline)",
                self.classification.as_str(),
                baseline.cross_borders.as_str()
            ));
        }
        if crosses && self.classification == Classification::Important && ctx.grant_for(action).is_none() {
            return Some(format!(
                "{dataset} is classified important: {} needs an approved access request (charter baseline); \
                 file one with `concord access request --dataset {owner}.{dataset} --action {} ...`",
                action.as_str(),
                action.as_str()
            ));
        }
        if action == Action::ReadRows && self.personal.is_some() {
            return Some(format!(
                "{dataset} holds personal data, which is released only in groups of at least {} people \
                 (charter baseline), never as rows; aggregate it instead",
                self.min_group_size(baseline).unwrap_or(baseline.min_group_size)
            ));
        }
        None
    }

    /// Number of Cedar rules (permit and forbid).
    pub fn rule_count(&self) -> usize {
        self.rules_parsed.policies().count()
    }

    /// Member ids the policy's groups name.
    pub fn named_members(&self) -> impl Iterator<Item = &str> {
        self.groups.values().flatten().map(String::as_str)
    }
}

/// Who may run aggregates on a dataset registered without a policy file (`--allow`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowList {
    /// Only the owner itself.
    #[default]
    Nobody,
    /// Every member of the federation.
    Everyone,
    /// These members (besides the owner).
    Members(Vec<String>),
}

impl AllowList {
    /// The Cedar condition of a rule for these members (`""` for everyone); `None` for nobody.
    fn condition(&self) -> Option<String> {
        match self {
            AllowList::Nobody => None,
            AllowList::Everyone => Some(String::new()),
            AllowList::Members(ids) => Some(format!(
                " when {{ [{}].contains(principal) }}",
                ids.iter().map(|m| format!("Member::\"{m}\"")).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Parses `--allow`: `'*'` for every member, otherwise comma-separated member ids.
    pub fn parse(spec: &str) -> Result<Self, PolicyError> {
        let spec = spec.trim();
        if spec == "*" {
            return Ok(Self::Everyone);
        }
        if spec.is_empty() {
            return Ok(Self::Nobody);
        }
        let mut ids: Vec<String> = Vec::new();
        for id in spec.split(',').map(str::trim) {
            if !is_member_id(id) {
                return Err(PolicyError::BadAllowList(format!(
                    "{id:?} is not a member id; give ids separated by commas, or '*' for every member"
                )));
            }
            if !ids.iter().any(|x| x == id) {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(Self::Members(ids))
    }
}

/// `[a-z][a-z0-9-]{1,31}`.
pub fn is_member_id(id: &str) -> bool {
    id.len() >= 2
        && id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
