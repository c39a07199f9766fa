//! Access rules in the Cedar language: parsed and validated against Concord's fixed schema,
//! evaluated per request. Deny is Cedar's default, and ours.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::{AccessContext, Action, Decision, Policy};

/// The entities, actions and context every policy's rules are written against.
pub const CEDAR_SCHEMA: &str = r#"
entity Group;
entity Member in [Group];
entity Dataset;
action "aggregate", "read_rows", "describe" appliesTo {
    principal: [Member],
    resource: [Dataset],
    context: {
        purpose: String,
        grants: Set<String>,
        granted_actions: Set<String>,
        charter_version: Long,
    }
};
"#;

fn schema() -> Result<&'static Schema, String> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::from_cedarschema_str(CEDAR_SCHEMA).map(|(s, _)| s).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The line (1-based, within `text`) a diagnostic points at, and its message.
fn located(text: &str, d: &dyn Diagnostic, message: String) -> (usize, String) {
    let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    match offset {
        Some(o) => {
            let line = line_of(text, o);
            let line_start = text.get(..o).and_then(|t| t.rfind('\n')).map(|i| i + 1).unwrap_or(0);
            let column = text.get(line_start..o).map(|t| t.chars().count()).unwrap_or(0) + 1;
            (line, format!("{message} (at column {column})"))
        }
        None => (1, message),
    }
}

/// Parses and validates access rules; an error is the line within `text` and Cedar's message.
pub(crate) fn parse_rules(text: &str) -> Result<PolicySet, (usize, String)> {
    let set = PolicySet::from_str(text).map_err(|e| {
        let first = e.iter().next();
        match first {
            Some(d) => located(text, d, format!("Cedar syntax error: {d}")),
            None => (1, format!("Cedar syntax error: {e}")),
        }
    })?;
    let schema = schema().map_err(|e| (1, format!("Concord's Cedar schema does not parse: {e}")))?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if let Some(err) = result.validation_errors().next() {
        return Err(located(text, err, format!("Cedar validation error: {err}")));
    }
    Ok(set)
}

/// Whether a permit rule may allow an action other than `describe`.
pub(crate) fn may_permit_other_than_describe(p: &cedar_policy::Policy) -> bool {
    let describe = action_uid(Action::Describe);
    match p.action_constraint() {
        cedar_policy::ActionConstraint::Any => true,
        cedar_policy::ActionConstraint::Eq(a) => describe.as_ref().is_none_or(|d| &a != d),
        cedar_policy::ActionConstraint::In(list) => {
            list.iter().any(|a| describe.as_ref().is_none_or(|d| a != d))
        }
    }
}

fn uid(ty: &str, id: &str) -> Option<EntityUid> {
    let ty = EntityTypeName::from_str(ty).ok()?;
    Some(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

fn action_uid(a: Action) -> Option<EntityUid> {
    uid("Action", a.as_str())
}

/// A rule's name for explanations: its `@id("…")` annotation, or its place among the rules
/// (`#2`, Cedar's `policy1`) with how to name it.
pub(crate) fn rule_name(set: &PolicySet, id: &cedar_policy::PolicyId) -> String {
    if let Some(name) = set.policy(id).and_then(|p| p.annotation("id")) {
        return name.to_owned();
    }
    let id = id.to_string();
    match id.strip_prefix("policy").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => format!("#{} (unnamed: name it with @id(\"...\"))", n + 1),
        None => id,
    }
}

/// Evaluates the rules of `policy` for one request.
pub(crate) fn authorize(
    policy: &Policy,
    owner: &str,
    dataset: &str,
    action: Action,
    ctx: &AccessContext,
) -> Decision {
    match evaluate(policy, dataset, action, ctx) {
        Ok((CedarDecision::Allow, reasons)) => {
            Decision::Allow { by: format!("{owner}'s rule {}", reasons.join(", ")) }
        }
        Ok((CedarDecision::Deny, reasons)) if !reasons.is_empty() => Decision::Deny {
            reason: format!(
                "{owner}'s rule {} forbids {} to {} {dataset}",
                reasons.join(", "),
                ctx.requester,
                action.as_str()
            ),
        },
        Ok((CedarDecision::Deny, _)) => Decision::Deny {
            reason: format!(
                "no rule of {owner}'s policy for {dataset} permits {} to {}{}; ask {owner}'s stewards, or file an access request",
                ctx.requester,
                action.as_str(),
                if ctx.purpose.is_empty() {
                    String::new()
                } else {
                    format!(" for purpose {:?}", ctx.purpose)
                }
            ),
        },
        Err(why) => {
            Decision::Deny { reason: format!("{owner}'s access rules could not be evaluated: {why}") }
        }
    }
}

fn evaluate(
    policy: &Policy,
    dataset: &str,
    action: Action,
    ctx: &AccessContext,
) -> Result<(CedarDecision, Vec<String>), String> {
    let bad = |what: &str| format!("{what} is not a valid entity id");
    let principal = uid("Member", &ctx.requester).ok_or_else(|| bad(&ctx.requester))?;
    let resource = uid("Dataset", dataset).ok_or_else(|| bad(dataset))?;
    let action_id = action_uid(action).ok_or_else(|| bad(action.as_str()))?;
    let mut parents = HashSet::new();
    let mut entities = Vec::new();
    for (group, members) in &policy.groups {
        let g = uid("Group", group).ok_or_else(|| bad(group))?;
        if members.iter().any(|m| m == &ctx.requester) {
            parents.insert(g.clone());
        }
        entities.push(Entity::new_no_attrs(g, HashSet::new()));
    }
    entities.push(Entity::new_no_attrs(principal.clone(), parents));
    entities.push(Entity::new_no_attrs(resource.clone(), HashSet::new()));
    let schema = schema()?;
    let entities = Entities::from_entities(entities, Some(schema)).map_err(|e| e.to_string())?;
    let strings =
        |v: Vec<String>| RestrictedExpression::new_set(v.into_iter().map(RestrictedExpression::new_string));
    let mut granted: Vec<String> =
        ctx.grants.iter().flat_map(|(_, acts)| acts.iter().map(|a| a.as_str().to_owned())).collect();
    granted.sort();
    granted.dedup();
    let version =
        i64::try_from(ctx.charter_version).map_err(|_| "charter version out of range".to_owned())?;
    let context = Context::from_pairs(HashMap::from([
        ("purpose".to_owned(), RestrictedExpression::new_string(ctx.purpose.clone())),
        ("grants".to_owned(), strings(ctx.grants.iter().map(|(id, _)| id.clone()).collect())),
        ("granted_actions".to_owned(), strings(granted)),
        ("charter_version".to_owned(), RestrictedExpression::new_long(version)),
    ]))
    .map_err(|e| e.to_string())?;
    let request =
        Request::new(principal, action_id, resource, context, Some(schema)).map_err(|e| e.to_string())?;
    let response = Authorizer::new().is_authorized(&request, &policy.rules_parsed, &entities);
    if let Some(e) = response.diagnostics().errors().next() {
        return Err(e.to_string());
    }
    let reasons = response.diagnostics().reason().map(|id| rule_name(&policy.rules_parsed, id)).collect();
    Ok((response.decision(), reasons))
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes().iter().take(offset).filter(|&&b| b == b'\n').count() + 1
}
