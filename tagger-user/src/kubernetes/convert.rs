//! Custom resources to the specs the rest of tagger already understands
//! (`config::LaneSpec`, `rules::RuleSpec`), and the status tagger writes
//! back on a `TrafficRule`; a Service's `tagger.io/lane-header-from`
//! annotation to the cluster file's `lane_header_from`.
//!
//! Names stay as the user wrote them (the rule `charge-gray` guards the
//! service `charge`, in lane `gray`): qualifying them by namespace is the
//! state model's business, and messages must name what the user wrote.
use std::collections::HashSet;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::crd::{
    ACCEPTED, RuleCondition, RuleMode, StatusCondition, TrafficLane, TrafficRule, TrafficRuleStatus,
};
use crate::{
    config::{LaneHeaderFrom, LaneSpec, check_name, check_rule},
    rules::{ConditionSpec, Mode, RuleSpec},
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CrError {
    #[error("{kind} has no metadata.name")]
    NoName { kind: &'static str },
    #[error("{kind} {namespace}/{name}: {message}")]
    Invalid {
        kind: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
}

/// A `TrafficLane` as the cluster file's lane entry. The lane's name is the
/// object's name, and must be a name the cluster file would take (a lane
/// name travels in a header and names interfaces in the local cluster).
pub fn lane_spec(lane: &TrafficLane) -> Result<LaneSpec, CrError> {
    let name = lane.metadata.name.clone().ok_or(CrError::NoName {
        kind: "TrafficLane",
    })?;
    check_name(&name).map_err(|message| CrError::Invalid {
        kind: "TrafficLane",
        namespace: lane.namespace().unwrap_or_default(),
        name: name.clone(),
        message,
    })?;
    Ok(LaneSpec {
        name,
        sticky: lane.spec.sticky,
    })
}

/// The Service annotation that says whose lane header the Service trusts:
/// `any` (also when absent), `none`, or names of Services of the same
/// namespace separated by commas. An annotation and not a field of a
/// custom resource: it belongs to the Service (one per Service, written
/// where the Service is), and tagger's resources are lanes and rules.
pub const LANE_HEADER_FROM_ANNOTATION: &str = "tagger.io/lane-header-from";

/// A Service's `lane_header_from`, its names as the user wrote them (the
/// join qualifies them by namespace). An annotation that cannot be read is
/// an error naming the Service; the caller decides what stands in for it.
pub fn lane_header_from(service: &Service) -> Result<LaneHeaderFrom, CrError> {
    let Some(value) = service.annotations().get(LANE_HEADER_FROM_ANNOTATION) else {
        return Ok(LaneHeaderFrom::Any);
    };
    LaneHeaderFrom::parse_annotation(value).map_err(|error| CrError::Invalid {
        kind: "Service",
        namespace: service.namespace().unwrap_or_default(),
        name: service.name_any(),
        message: format!("annotation {LANE_HEADER_FROM_ANNOTATION}: {error}"),
    })
}

/// A `TrafficRule` as the cluster file's rule entry, unchecked.
pub fn rule_spec(rule: &TrafficRule) -> RuleSpec {
    let spec = &rule.spec;
    RuleSpec {
        name: rule.name_any(),
        service: spec.service.clone(),
        lane: spec.lane.clone(),
        mode: match spec.mode {
            RuleMode::Any => Mode::Any,
            RuleMode::All => Mode::All,
        },
        priority: spec.priority,
        enabled: spec.enabled,
        conditions: spec.conditions.iter().map(condition_spec).collect(),
    }
}

fn condition_spec(condition: &RuleCondition) -> ConditionSpec {
    ConditionSpec {
        source: condition.source.clone(),
        name: condition.name.clone(),
        op: condition.op.clone(),
        value: condition.value.as_ref().map(yaml),
        values: condition
            .values
            .as_ref()
            .map(|values| values.iter().map(yaml).collect()),
        cmp: condition.cmp.clone(),
    }
}

/// JSON to the YAML value the rule compiler reads. Every JSON value is a
/// YAML value, so this cannot fail; the compiler then refuses what a rule
/// cannot compare (lists, maps) with its own message.
fn yaml(value: &serde_json::Value) -> serde_yaml::Value {
    serde_yaml::to_value(value).unwrap_or(serde_yaml::Value::Null)
}

/// Converts and checks a rule against the services and lanes of its
/// namespace. The error is the message for the rule's `Accepted=False`
/// condition: the words `tagger rules apply` uses for the same rule, less
/// the `rules[N]` place a single object has no use for.
pub fn checked_rule_spec(
    rule: &TrafficRule,
    services: &HashSet<&str>,
    lanes: &HashSet<&str>,
) -> Result<RuleSpec, String> {
    let spec = rule_spec(rule);
    check_rule(&spec, services, lanes).map_err(|(place, message)| {
        if place.is_empty() {
            message
        } else {
            format!("{place}: {message}")
        }
    })?;
    Ok(spec)
}

/// The status to write for a check's outcome. The transition time is kept
/// when the condition's status did not change, as `metav1.Condition` wants,
/// so that re-checking an unchanged rule writes an identical status (and the
/// caller can skip the write).
pub fn rule_status(
    previous: Option<&TrafficRuleStatus>,
    outcome: &Result<RuleSpec, String>,
    generation: Option<i64>,
    now: &str,
) -> TrafficRuleStatus {
    let (status, reason, message) = match outcome {
        Ok(_) => ("True", "Valid", "the rule is in force".to_string()),
        Err(message) => ("False", "Invalid", message.clone()),
    };
    let before = previous
        .into_iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == ACCEPTED);
    let last_transition_time = match before {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    let mut conditions: Vec<StatusCondition> = previous
        .into_iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.type_ != ACCEPTED)
        .cloned()
        .collect();
    conditions.push(StatusCondition {
        type_: ACCEPTED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    });
    TrafficRuleStatus { conditions }
}

/// The body of a merge patch on the `status` subresource.
pub fn status_patch(status: &TrafficRuleStatus) -> serde_json::Value {
    serde_json::json!({ "status": status })
}

/// The current time as `metav1.Time` writes it (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
