//! Custom resources, as the API server returns them, to tagger's specs; and
//! a bad rule's status message, checked against what `tagger rules apply`
//! says for the same rule.
use std::collections::HashSet;

use super::{
    convert::{checked_rule_spec, lane_spec, rule_spec, rule_status, status_patch},
    crd::{StatusCondition, TrafficLane, TrafficRule, TrafficRuleStatus},
};
use crate::{
    config::{ClusterFile, LimitsSpec, ServiceSpec},
    rules::{Mode, RuleSpec},
};

/// A `TrafficRule` the way `kubectl get -o json` shows it, with `spec`
/// spliced in.
fn rule_json(name: &str, spec: serde_json::Value) -> TrafficRule {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tagger.io/v1alpha1",
        "kind": "TrafficRule",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "0b6f6c1e-3c1a-4d5e-9a51-2f1d0f7c9e11",
            "resourceVersion": "48213",
            "generation": 3,
            "creationTimestamp": "2026-11-24T07:00:00Z",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                               "apiVersion": "tagger.io/v1alpha1", "time": "2026-11-24T07:00:00Z",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
        },
        "spec": spec
    }))
    .expect("a real-shaped TrafficRule deserialises")
}

fn set<'a>(names: &[&'a str]) -> HashSet<&'a str> {
    names.iter().copied().collect()
}

/// What `tagger rules apply` answers for `rule` (the daemon's check,
/// `ClusterFile::validate_rules`, against services charge, order and lane
/// gray), less its `rules: rules[0]` place.
fn rules_apply_message(rule: &RuleSpec) -> Option<String> {
    let file = ClusterFile {
        lane_header: "x-lane".into(),
        passthrough_headers: vec![],
        lanes: vec![crate::config::LaneSpec {
            name: "gray".into(),
            sticky: true,
        }],
        services: ["charge", "order"]
            .iter()
            .map(|name| ServiceSpec {
                name: name.to_string(),
                port: Some(8080),
                protocol: None,
                lane_header_from: Default::default(),
                pods: vec![],
            })
            .collect(),
        rules: vec![rule.clone()],
        body_match_limit: 1024,
        limits: LimitsSpec::default(),
    };
    let (place, message) = file.validate_rules().err()?;
    let place = place.strip_prefix("rules[0]").expect("one rule");
    Some(match place.strip_prefix('.') {
        Some(field) => format!("{field}: {message}"),
        None => message,
    })
}

#[test]
fn rules_convert_with_the_messages_rules_apply_gives() {
    let services = set(&["charge", "order"]);
    let lanes = set(&["gray"]);
    // (what, spec JSON, Ok(()) or the exact message)
    let cases: Vec<(&str, serde_json::Value, Result<(), &str>)> = vec![
        (
            "the SPEC's rule",
            serde_json::json!({"service": "charge", "lane": "gray", "mode": "any",
                "conditions": [
                    {"source": "query", "name": "userId", "op": "in", "values": ["111", "222", "333"]},
                    {"source": "query", "name": "userId", "op": "mod100", "cmp": "=", "value": 1},
                    {"source": "header", "name": "mse-username", "op": "in", "values": ["msd01", "msd02", "msd03"]}]}),
            Ok(()),
        ),
        (
            "numbers, booleans and a float where the rule takes text",
            serde_json::json!({"service": "order", "lane": "gray", "mode": "all", "priority": 5, "enabled": false,
                "conditions": [
                    {"source": "query", "name": "userId", "op": "in", "values": [111, "222", true]},
                    {"op": "percentage", "value": 12.5},
                    {"source": "body", "name": "user.vip", "op": "=", "value": true}]}),
            Ok(()),
        ),
        (
            "a bad operator",
            serde_json::json!({"service": "charge", "lane": "gray",
                "conditions": [{"source": "query", "name": "userId", "op": "within", "value": 7}]}),
            Err(
                "rule \"charge-gray\", conditions[0].op: \"within\" is not an operator (= != > >= < <= in not_in exists prefix regex percentage mod100)",
            ),
        ),
        (
            "a list where a value goes",
            serde_json::json!({"service": "charge", "lane": "gray",
                "conditions": [{"source": "header", "name": "x-user", "op": "=", "value": ["a"]}]}),
            Err(
                "rule \"charge-gray\", conditions[0].value: expected a string, number or boolean, got - a",
            ),
        ),
        (
            "a header condition without a name",
            serde_json::json!({"service": "charge", "lane": "gray",
                "conditions": [{"source": "query", "name": "userId", "op": "exists"},
                               {"source": "header", "op": "=", "value": "x"}]}),
            Err(
                "rule \"charge-gray\", conditions[1].name: a header condition needs the header's name",
            ),
        ),
        (
            "mod100 out of range",
            serde_json::json!({"service": "charge", "lane": "gray",
                "conditions": [{"source": "query", "name": "userId", "op": "mod100", "value": 100}]}),
            Err(
                "rule \"charge-gray\", conditions[0].value: mod100 compares with a whole number 0..99, not 100",
            ),
        ),
        (
            "no conditions",
            serde_json::json!({"service": "charge", "lane": "gray", "conditions": []}),
            Err("rule \"charge-gray\", conditions: a rule needs at least one condition"),
        ),
        (
            "a service the namespace does not have",
            serde_json::json!({"service": "nowhere", "lane": "gray",
                "conditions": [{"source": "path", "op": "prefix", "value": "/v2"}]}),
            Err("service: rule \"charge-gray\" guards unknown service \"nowhere\""),
        ),
        (
            "a lane the namespace does not have",
            serde_json::json!({"service": "charge", "lane": "purple",
                "conditions": [{"source": "method", "op": "=", "value": "POST"}]}),
            Err("lane: rule \"charge-gray\" names unknown lane \"purple\""),
        ),
    ];
    for (what, spec, expect) in cases {
        let rule = rule_json("charge-gray", spec);
        let got = checked_rule_spec(&rule, &services, &lanes);
        match (&got, expect) {
            (Ok(spec), Ok(())) => {
                assert_eq!(
                    rules_apply_message(spec),
                    None,
                    "{what}: rules apply refuses it"
                )
            }
            (Err(message), Err(want)) => {
                assert_eq!(message, want, "{what}");
                assert_eq!(
                    rules_apply_message(&rule_spec(&rule)).as_deref(),
                    Some(want),
                    "{what}: rules apply says otherwise"
                );
            }
            _ => panic!("{what}: got {got:?}, want {expect:?}"),
        }
    }
}

/// The SPEC's rule as a custom resource is the SPEC's rule in the cluster
/// file, field for field (defaults included).
#[test]
fn the_specs_rule_is_the_cluster_files_rule() {
    let from_file: Vec<RuleSpec> = serde_yaml::from_str(
        r#"
- name: charge-gray
  service: charge
  lane: gray
  mode: any
  conditions:
    - {source: query, name: userId, op: in, values: ["111", "222", "333"]}
    - {source: query, name: userId, op: mod100, cmp: "=", value: 1}
    - {source: header, name: mse-username, op: in, values: [msd01, msd02, msd03]}
"#,
    )
    .unwrap();
    let from_cr: TrafficRule = serde_yaml::from_str(
        r#"
apiVersion: tagger.io/v1alpha1
kind: TrafficRule
metadata: {name: charge-gray, namespace: shop}
spec:
  service: charge
  lane: gray
  mode: any
  conditions:
    - {source: query, name: userId, op: in, values: ["111", "222", "333"]}
    - {source: query, name: userId, op: mod100, cmp: "=", value: 1}
    - {source: header, name: mse-username, op: in, values: [msd01, msd02, msd03]}
"#,
    )
    .unwrap();
    let spec = rule_spec(&from_cr);
    assert_eq!(spec, from_file[0]);
    assert_eq!(
        (spec.priority, spec.enabled, spec.mode),
        (100, true, Mode::Any)
    );
    // And it compiles to the same rule.
    assert_eq!(
        format!("{:?}", spec.compile().unwrap()),
        format!("{:?}", from_file[0].compile().unwrap())
    );
}

#[test]
fn lanes_convert_and_bad_names_are_refused() {
    let lane = |name: &str, spec: serde_json::Value| -> TrafficLane {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tagger.io/v1alpha1", "kind": "TrafficLane",
            "metadata": {"name": name, "namespace": "shop", "uid": "u", "resourceVersion": "7", "generation": 1},
            "spec": spec
        }))
        .unwrap()
    };
    type Want = Result<(&'static str, bool), &'static str>;
    let cases: Vec<(TrafficLane, Want)> = vec![
        (
            lane("gray", serde_json::json!({"sticky": true})),
            Ok(("gray", true)),
        ),
        (lane("blue", serde_json::json!({})), Ok(("blue", false))),
        (
            lane("gray.v2", serde_json::json!({})),
            Err(
                "TrafficLane shop/gray.v2: \"gray.v2\" is not a valid name (lowercase letters, digits and '-', at most 63)",
            ),
        ),
    ];
    for (object, expect) in cases {
        let got = lane_spec(&object);
        match (got, expect) {
            (Ok(spec), Ok((name, sticky))) => {
                assert_eq!((spec.name.as_str(), spec.sticky), (name, sticky))
            }
            (Err(e), Err(want)) => assert_eq!(e.to_string(), want),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }
}

fn accepted(status: &TrafficRuleStatus) -> &StatusCondition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .expect("Accepted")
}

#[test]
fn status_says_accepted_and_keeps_its_transition_time() {
    let rule = rule_json(
        "charge-gray",
        serde_json::json!({"service": "charge", "lane": "gray",
            "conditions": [{"source": "query", "name": "userId", "op": "within", "value": 7}]}),
    );
    let services = set(&["charge"]);
    let lanes = set(&["gray"]);
    let bad = checked_rule_spec(&rule, &services, &lanes);
    let first = rule_status(None, &bad, Some(3), "2026-11-24T07:00:00Z");
    let c = accepted(&first);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.observed_generation),
        ("False", "Invalid", Some(3))
    );
    assert!(
        c.message
            .starts_with("rule \"charge-gray\", conditions[0].op: \"within\"")
    );
    // Checked again, unchanged: the very same status, so no write is needed.
    let again = rule_status(Some(&first), &bad, Some(3), "2026-11-24T07:05:00Z");
    assert_eq!(again, first);
    // Fixed: True, with a new transition time; another tool's condition stays.
    let mut with_other = first.clone();
    with_other.conditions.push(StatusCondition {
        type_: "Reviewed".into(),
        status: "True".into(),
        reason: "Ok".into(),
        message: "by a person".into(),
        ..Default::default()
    });
    let good = Ok(rule_spec(&rule));
    let fixed = rule_status(Some(&with_other), &good, Some(4), "2026-11-24T07:06:00Z");
    let c = accepted(&fixed);
    assert_eq!(
        (
            c.status.as_str(),
            c.reason.as_str(),
            c.last_transition_time.as_deref()
        ),
        ("True", "Valid", Some("2026-11-24T07:06:00Z"))
    );
    assert!(fixed.conditions.iter().any(|c| c.type_ == "Reviewed"));
    // The patch is the JSON the CRD's status schema describes.
    assert_eq!(
        status_patch(&first),
        serde_json::json!({"status": {"conditions": [{
            "type": "Accepted", "status": "False", "reason": "Invalid",
            "message": c_message(&first),
            "lastTransitionTime": "2026-11-24T07:00:00Z", "observedGeneration": 3}]}})
    );
}

fn c_message(status: &TrafficRuleStatus) -> String {
    accepted(status).message.clone()
}

/// A Service as `kubectl get -o json` shows it, with `annotations`.
fn annotated_service(annotations: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": "7c2d1e0f-5a4b-4c3d-9e8f-1a2b3c4d5e6f",
            "resourceVersion": "51234",
            "creationTimestamp": "2026-11-24T07:00:00Z",
            "labels": {"app": "web"},
            "annotations": annotations
        },
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.40", "clusterIPs": ["10.96.0.40"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": "web"}, "sessionAffinity": "None",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"}]
        },
        "status": {"loadBalancer": {}}
    }))
    .expect("a real-shaped Service deserialises")
}

/// `tagger.io/lane-header-from`: absent is `any` (today's behaviour);
/// names stay as written (the join qualifies them); a value that cannot be
/// read is an error naming the Service and the annotation.
#[test]
fn the_lane_header_from_annotation() {
    use super::convert::{LANE_HEADER_FROM_ANNOTATION, lane_header_from};
    use crate::config::LaneHeaderFrom;
    let other = "kubectl.kubernetes.io/last-applied-configuration";
    let cases = [
        (serde_json::json!({other: "{}"}), Ok(LaneHeaderFrom::Any)),
        (
            serde_json::json!({LANE_HEADER_FROM_ANNOTATION: "any"}),
            Ok(LaneHeaderFrom::Any),
        ),
        (
            serde_json::json!({LANE_HEADER_FROM_ANNOTATION: "none", other: "{}"}),
            Ok(LaneHeaderFrom::Nobody),
        ),
        (
            serde_json::json!({LANE_HEADER_FROM_ANNOTATION: "gateway, edge"}),
            Ok(LaneHeaderFrom::Services(vec![
                "gateway".into(),
                "edge".into(),
            ])),
        ),
        (
            serde_json::json!({LANE_HEADER_FROM_ANNOTATION: ""}),
            Err(
                "Service shop/web: annotation tagger.io/lane-header-from: an empty list \
                 trusts no caller: write `none`",
            ),
        ),
        (
            serde_json::json!({LANE_HEADER_FROM_ANNOTATION: "Gateway"}),
            Err(
                "Service shop/web: annotation tagger.io/lane-header-from: \"Gateway\" is not \
                 a service name: \"Gateway\" is not a valid name (lowercase letters, digits \
                 and '-', at most 63)",
            ),
        ),
    ];
    for (annotations, want) in cases {
        let got = lane_header_from(&annotated_service(annotations.clone()));
        assert_eq!(
            got.map_err(|e| e.to_string()),
            want.map_err(str::to_string),
            "{annotations}"
        );
    }
}
