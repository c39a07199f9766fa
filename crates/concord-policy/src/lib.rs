//! Usage policies: what an owner's node lets each requester do with each of its datasets.
//!
//! This is the enforcement point on the owner's node: every sub-query a peer sends is decided
//! here before it runs. The rule today is an allow-list of member ids; the Cedar policy language,
//! column modes and release rules plug in behind the same [`DatasetPolicy::decide`] call.
//!
//! Invariant: deny by default. A dataset with no rule admits nobody but its owner.

use serde::{Deserialize, Serialize};

/// Who may run aggregates on a dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
            let ok = id.len() >= 2
                && id.len() <= 32
                && id.starts_with(|c: char| c.is_ascii_lowercase())
                && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
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

    pub fn describe(&self) -> String {
        match self {
            Self::Nobody => "owner only".into(),
            Self::Everyone => "*".into(),
            Self::Members(ids) => ids.join(","),
        }
    }
}

/// The actions a requester may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Partial aggregates over the dataset.
    Aggregate,
    /// The dataset's name and schema.
    Describe,
}

/// The usage policy of one dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetPolicy {
    pub allow: AllowList,
}

/// Why a request was allowed or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { reason: String },
}

impl DatasetPolicy {
    /// Decides whether `requester` may do `action` on a dataset owned by `owner`.
    pub fn decide(&self, owner: &str, requester: &str, _action: Action) -> Decision {
        if requester == owner {
            return Decision::Allow;
        }
        match &self.allow {
            AllowList::Everyone => Decision::Allow,
            AllowList::Members(ids) if ids.iter().any(|id| id == requester) => Decision::Allow,
            _ => Decision::Deny {
                reason: format!(
                    "{owner}'s policy does not admit {requester}; ask {owner}'s stewards to add {requester} to the allow-list"
                ),
            },
        }
    }
}

/// Errors of policy definitions.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("bad allow-list: {0}")]
    BadAllowList(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_by_default_and_allow_lists() {
        let none = DatasetPolicy::default();
        assert!(matches!(none.decide("alpha", "bravo", Action::Aggregate), Decision::Deny { .. }));
        assert_eq!(none.decide("alpha", "alpha", Action::Aggregate), Decision::Allow);
        let some = DatasetPolicy { allow: AllowList::parse("charlie, bravo").expect("valid") };
        assert_eq!(some.allow, AllowList::Members(vec!["bravo".into(), "charlie".into()]));
        assert_eq!(some.decide("alpha", "bravo", Action::Aggregate), Decision::Allow);
        assert!(matches!(some.decide("alpha", "delta", Action::Aggregate), Decision::Deny { .. }));
        let all = DatasetPolicy { allow: AllowList::parse("*").expect("valid") };
        assert_eq!(all.decide("alpha", "zulu", Action::Describe), Decision::Allow);
        assert!(AllowList::parse("bravo;charlie").is_err());
        assert!(AllowList::parse("Bravo").is_err());
    }
}
