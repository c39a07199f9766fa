//! A policy told in sentences, for people who read it rather than the file: the web console's
//! dataset page and anything else that explains a policy to a steward or an analyst.

use crate::{Classification, ColumnMode, Policy};

/// One access rule of a policy, as a reader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInWords {
    /// The rule's `@id`, or its place among the rules.
    pub name: String,
    /// Whether the rule permits or forbids.
    pub permits: bool,
    /// The rule as written, in Cedar.
    pub cedar: String,
}

impl Policy {
    /// The policy in sentences: classification, personal data, what each column may be used for,
    /// the release rules and differential privacy. Access rules are in [`Policy::rules_in_words`].
    pub fn in_words(&self) -> Vec<String> {
        let mut out = vec![classification_in_words(self.classification).to_owned()];
        match &self.personal {
            Some(p) => out.push(format!(
                "It holds personal data; one person (a privacy unit) is a distinct value of column {}.",
                p.privacy_unit
            )),
            None => out.push("It declares no personal data.".into()),
        }
        for mode in [
            ColumnMode::Plain,
            ColumnMode::Group,
            ColumnMode::Aggregate,
            ColumnMode::Filter,
            ColumnMode::Hidden,
        ] {
            let cols: Vec<&str> =
                self.columns.iter().filter(|(_, m)| **m == mode).map(|(c, _)| c.as_str()).collect();
            if !cols.is_empty() {
                out.push(format!("{} {}", list(&cols), mode_in_words(mode, cols.len() > 1)));
            }
        }
        out.push("Every column the policy does not name is hidden.".into());
        self.release_in_words(&mut out);
        out
    }

    fn release_in_words(&self, out: &mut Vec<String>) {
        let r = &self.release;
        match r.min_group_size {
            Some(n) => out.push(format!(
                "A released group stands for at least {n} distinct {}; smaller groups are held back.",
                if self.personal.is_some() { "people" } else { "rows" }
            )),
            None => out.push("No minimum group size beyond the charter's baseline.".into()),
        }
        if !r.min_max.is_empty() {
            let cols: Vec<&str> = r.min_max.iter().map(String::as_str).collect();
            out.push(format!("MIN and MAX may be released for {}.", list(&cols)));
        }
        for (col, keys) in &r.keys {
            out.push(format!("Groups of {col} are the published values {}.", keys.join(", ")));
        }
        match &r.privacy {
            Some(p) => privacy_in_words(p, out),
            None => out.push("Results are released without differential privacy.".into()),
        }
    }

    /// The access rules, each with its name, effect and Cedar text; the same names a refusal
    /// gives.
    pub fn rules_in_words(&self) -> Vec<RuleInWords> {
        self.rules_parsed
            .policies()
            .map(|p| RuleInWords {
                name: crate::cedar::rule_name(&self.rules_parsed, p.id()),
                permits: p.effect() == cedar_policy::Effect::Permit,
                cedar: p.to_string(),
            })
            .collect()
    }
}

fn privacy_in_words(p: &crate::Privacy, out: &mut Vec<String>) {
    let param = p.mechanism.parameter();
    out.push(format!(
        "Every released number carries differential-privacy noise ({}): one query costs {param} = {}, \
             a requester may spend {param} = {} in all and all requesters together {param} = {}.",
        match p.mechanism {
            crate::Mechanism::Zcdp => "discrete Gaussian, zero-concentrated DP",
            crate::Mechanism::Pure => "discrete Laplace, pure DP",
        },
        p.cost,
        p.budget_per_requester,
        p.budget_per_dataset
    ));
    out.push(format!(
        "One person counts in at most {} group(s) of a query and with at most {} row(s) in each.",
        p.max_groups_per_unit, p.max_rows_per_group
    ));
    for (col, (lo, hi)) in &p.bounds {
        out.push(format!("Values of {col} are clamped to [{lo}, {hi}] before they are summed."));
    }
    for (col, keys) in &p.keys {
        out.push(format!(
            "Groups of {col} are always the published values {}, found or not.",
            keys.join(", ")
        ));
    }
    if let Some(delta) = p.delta {
        out.push(format!(
            "Other groups appear only when their noisy count passes a threshold (delta = {delta})."
        ));
    }
}

fn classification_in_words(c: Classification) -> &'static str {
    match c {
        Classification::Public => "Public: anyone in the federation may see it.",
        Classification::General => "General: released under the rules below.",
        Classification::Important => "Important: released only under an approved access request.",
        Classification::Core => "Core: it never leaves its owner.",
    }
}

fn mode_in_words(mode: ColumnMode, many: bool) -> String {
    let (one, several) = match mode {
        ColumnMode::Plain => ("may be output row by row", "may be output row by row"),
        ColumnMode::Group => (
            "is a group key, a filter or inside an aggregate",
            "are group keys, filters or inside aggregates",
        ),
        ColumnMode::Aggregate => {
            ("is used only inside COUNT, SUM or AVG", "are used only inside COUNT, SUM or AVG")
        }
        ColumnMode::Filter => ("is used only in WHERE", "are used only in WHERE"),
        ColumnMode::Hidden => ("is hidden", "are hidden"),
    };
    format!("{}.", if many { several } else { one })
}

fn list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => format!("Column {one}"),
        [init @ .., last] => format!("Columns {} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_policy_reads_as_sentences_naming_every_rule() {
        let p = crate::Policy::parse(crate::tests::HEALTH, "health.policy.toml").expect("parses");
        let words = p.in_words().join("\n");
        for expected in [
            "General: released under the rules below.",
            "distinct value of column case_id",
            "Columns age_band, outcome, region and sex are group keys",
            "Column onset_date is used only in WHERE.",
            "Column hospital_days is used only inside COUNT, SUM or AVG.",
            "Column case_id is hidden.",
            "at least 10 distinct people",
            "one query costs rho = 0.005, a requester may spend rho = 1 in all and all requesters together rho = 3",
            "threshold (delta = 0.000001)",
            "Values of hospital_days are clamped to [0, 60]",
        ] {
            assert!(words.contains(expected), "{expected:?} missing from:\n{words}");
        }
        assert!(!words.contains("[release"), "no TOML in the words");
        let rules = p.rules_in_words();
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["members aggregate", "rows for the nordic group with a grant"]);
        assert!(rules.iter().all(|r| r.permits));
        assert!(rules[1].cedar.contains("Group::\"nordic\""), "{}", rules[1].cedar);
    }
}
