//! The custom resources of Kubernetes mode (SPEC.md, "Kubernetes mode"):
//! `TrafficLane` and `TrafficRule`, group `tagger.io`, version `v1alpha1`,
//! namespaced. `deploy/crds.yaml` is generated from these types
//! (`cargo run -p tagger-user --bin crdgen`), so the schema the API server
//! enforces and what the daemon reads cannot drift apart.
//!
//! The spec fields are the cluster file's `lanes:` and `rules:` entries
//! (`config::LaneSpec`, `rules::RuleSpec`) with the name taken from
//! `metadata.name`. The schema is deliberately loose where tagger's own
//! checks are precise: `op`, `source` and `cmp` are plain strings, so that a
//! wrong operator is refused by tagger with the message `tagger rules apply`
//! gives (in the rule's `Accepted` condition), not by the API server with a
//! bare enum error, and the aliases the rules compiler takes (`==`,
//! `not in`, `param`) keep working.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "tagger.io";
pub const VERSION: &str = "v1alpha1";
/// The one condition type tagger writes on a `TrafficRule`.
pub const ACCEPTED: &str = "Accepted";

/// A lane: a named group of pods (those labelled `tagger.io/lane: NAME`).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "tagger.io",
    version = "v1alpha1",
    kind = "TrafficLane",
    namespaced,
    doc = "A tagger lane: pods labelled `tagger.io/lane: NAME` (or `alicloud.service.tag`) are in it.",
    shortname = "tl",
    printcolumn = r#"{"name":"Sticky","type":"boolean","jsonPath":".spec.sticky"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficLaneSpec {
    /// A sticky lane holds for every later hop of a request once it is in
    /// it (the lane header travels on); a non-sticky lane is decided per
    /// hop.
    #[serde(default)]
    pub sticky: bool,
}

/// A routing rule: requests to `service` that match `conditions` go to
/// `lane`.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "tagger.io",
    version = "v1alpha1",
    kind = "TrafficRule",
    namespaced,
    doc = "A tagger routing rule: requests to a Service that match the conditions go to a lane.",
    shortname = "tr",
    status = "TrafficRuleStatus",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Lane","type":"string","jsonPath":".spec.lane"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRuleSpec {
    /// The Service (in the rule's namespace) whose callers the rule guards.
    pub service: String,
    /// The lane (a `TrafficLane` of the same namespace) matching requests
    /// go to.
    pub lane: String,
    /// `any`: one condition matching is enough (OR); `all`: every one must
    /// (AND).
    #[serde(default)]
    pub mode: RuleMode,
    /// Lower runs first.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// A disabled rule is kept but never matches.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Exactly the cluster file's conditions.
    pub conditions: Vec<RuleCondition>,
}

fn default_priority() -> i32 {
    100
}

fn default_enabled() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    #[default]
    Any,
    All,
}

/// One condition, as in the cluster file. Which fields are needed depends
/// on `op`; tagger checks that, not the schema.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleCondition {
    /// header | cookie | query | body | host | path | method (optional only
    /// for a random `percentage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The header, cookie, query parameter or body field (dotted JSON path
    /// or form field); not used for host, path and method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// = != > >= < <= in not_in exists prefix regex percentage mod100
    pub op: String,
    /// A string, number or boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "scalar_schema")]
    pub value: Option<serde_json::Value>,
    /// Strings, numbers or booleans (for `in` and `not_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "scalar_list_schema")]
    pub values: Option<Vec<serde_json::Value>>,
    /// The comparison of `mod100`: = != > >= < <=.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmp: Option<String>,
}

/// A value that may be a string, a number or a boolean. A structural
/// schema cannot say "one of these types", so the field keeps whatever was
/// written and tagger's rules compiler refuses the rest (a list, a map) in
/// the rule's status, with its own message.
fn scalar_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A string, number or boolean.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn scalar_list_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Strings, numbers or booleans.",
        "type": "array",
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// Written by tagger: whether the rule is in force.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRuleStatus {
    /// `Accepted`: `True` when the rule is in force, `False` with the reason
    /// in `message` when it is not.
    #[serde(default)]
    pub conditions: Vec<StatusCondition>,
}

/// The shape of `metav1.Condition`, so that `kubectl wait
/// --for=condition=Accepted` and generic tooling read it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// One CamelCase word: `Valid`, `Invalid`.
    pub reason: String,
    pub message: String,
    /// RFC 3339 time the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
