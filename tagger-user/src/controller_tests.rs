//! The controller without a kernel: inventories in, rules changed by
//! `tagger rules` kept until the source's own rules change.
use std::sync::Arc;

use super::controller::{Controller, ControllerError, SourceInfo};
use crate::{
    config::ClusterFile,
    source::file::{Placement, inventory},
    state::{Inventory, RulesOrigin},
};

const FILE: &str = r#"
lanes: [{name: gray}]
services:
  - name: web
    port: 8080
    pods:
      - {name: web-1, command: [x]}
      - {name: web-2, command: [x], lane: gray}
rules:
  - {name: r, service: web, lane: gray, conditions: [{source: query, name: u, op: '=', value: 1}]}
"#;

fn file_inventory(text: &str, revision: u64) -> Arc<Inventory> {
    let file = ClusterFile::parse(text, "c.yaml".as_ref()).unwrap();
    let placement: Placement = serde_json::from_value(serde_json::json!({
        "pods": [{"name": "web-1", "ip": "10.0.0.1", "cgroup_id": 1},
                 {"name": "web-2", "ip": "10.0.0.2", "cgroup_id": 2}],
        "services": [{"name": "web", "address": "10.0.1.1"}]
    }))
    .unwrap();
    Arc::new(inventory(&file, &placement, revision).unwrap())
}

fn controller(inventory: Arc<Inventory>) -> Controller {
    Controller::new(inventory, SourceInfo::default(), Arc::default()).unwrap()
}

fn rule_names(c: &Controller) -> Vec<(String, bool)> {
    c.rule_rows()
        .into_iter()
        .map(|r| (r.spec.name, r.spec.enabled))
        .collect()
}

#[test]
fn rule_edits_last_until_the_source_changes_its_rules() {
    let c = controller(file_inventory(FILE, 0));
    let extra = "rules:\n  - {name: s, service: web, lane: gray, conditions: [{source: path, op: prefix, value: /v2}]}\n";
    assert_eq!(c.apply_rules_text(extra.as_bytes()).unwrap(), ["s"]);
    c.set_rule_enabled("r", false).unwrap();
    let edited = vec![("r".to_string(), false), ("s".to_string(), true)];
    assert_eq!(rule_names(&c), edited);
    // Same revision (the placement changed): edits stay.
    c.apply_inventory(file_inventory(FILE, 0)).unwrap();
    assert_eq!(rule_names(&c), edited);
    // The file was edited: its rules are the newest intent.
    c.apply_inventory(file_inventory(FILE, 1)).unwrap();
    assert_eq!(rule_names(&c), [("r".to_string(), true)]);
    assert_eq!(c.state.load().rules.iter().count(), 1);
}

#[test]
fn rule_changes_are_checked_against_the_state_in_force() {
    let c = controller(file_inventory(FILE, 0));
    // (rules file, the error's words)
    let cases = [
        (
            "rules:\n  - {name: x, service: nowhere, lane: gray, conditions: [{source: path, op: prefix, value: /}]}\n",
            "rules: rules[1].service: rule \"x\" guards unknown service \"nowhere\"",
        ),
        (
            "rules:\n  - {name: x, service: web, lane: purple, conditions: [{source: path, op: prefix, value: /}]}\n",
            "rules: rules[1].lane: rule \"x\" names unknown lane \"purple\"",
        ),
        ("colour: red\n", "not a rules file"),
    ];
    for (text, want) in cases {
        let error = c.apply_rules_text(text.as_bytes()).unwrap_err().to_string();
        assert!(error.contains(want), "{error:?} lacks {want:?}");
    }
    assert!(matches!(
        c.delete_rule("nope"),
        Err(ControllerError::NoSuchRule(_))
    ));
    assert_eq!(rule_names(&c), [("r".to_string(), true)]);
}

#[test]
fn rules_from_the_api_are_changed_there_only() {
    let mut inventory = (*file_inventory(FILE, 0)).clone();
    inventory.rules_origin = RulesOrigin::Api;
    let c = controller(Arc::new(inventory.clone()));
    for result in [
        c.set_rule_enabled("r", false),
        c.delete_rule("r"),
        c.apply_rules_text(b"rules: []").map(drop),
    ] {
        assert!(matches!(result, Err(ControllerError::RulesFromApi)));
    }
    // Every inventory's rules are the rules in force.
    inventory.rules.clear();
    c.apply_inventory(Arc::new(inventory)).unwrap();
    assert!(c.rule_rows().is_empty());
}

#[tokio::test]
async fn config_dump_names_the_source_and_keeps_its_fields() {
    let c = Controller::new(
        file_inventory(FILE, 0),
        SourceInfo {
            source: "file",
            config_file: Some("c.yaml".into()),
            ..SourceInfo::default()
        },
        Arc::default(),
    )
    .unwrap();
    let dump = c.config_dump();
    for field in [
        "source",
        "config_file",
        "state",
        "rules",
        "kernel",
        "programs",
        "propagation",
        "pod_flags",
        "proxy",
        "processes",
        "maps",
    ] {
        assert!(
            dump.get(field).is_some(),
            "config-dump lacks {field}: {dump:#}"
        );
    }
    assert_eq!(dump["state"]["services"][0]["port"], 8080);
}
