use std::path::Path;

use super::*;

const VALID: &str = r#"
lane_header: x-lane
passthrough_headers: [mse-username]
lanes:
  - name: gray
    sticky: true
services:
  - name: charge
    port: 8080
    pods:
      - name: charge-v1
        command: [python3, app.py]
      - name: charge-v2
        lane: gray
        command: [python3, app.py]
  - name: client
    pods:
      - name: client
        command: [sleep, infinity]
rules:
  - name: charge-gray
    service: charge
    lane: gray
    mode: any
    conditions:
      - {source: query, name: userId, op: in, values: ["111", "222", 333]}
      - {source: query, name: userId, op: mod100, cmp: "=", value: 1}
"#;

fn parse(text: &str) -> Result<ClusterFile, ConfigError> {
    ClusterFile::parse(text, Path::new("cluster.yaml"))
}

#[test]
fn the_spec_example_parses() {
    let file = parse(VALID).expect("valid");
    assert_eq!(file.lane_header, "x-lane");
    assert_eq!(file.passthrough_headers, vec!["mse-username"]);
    assert!(file.lane("gray").unwrap().sticky);
    assert_eq!(file.services[0].pods[1].effective_lane(), Some("gray"));
    assert_eq!(file.services[1].port, None);
    assert_eq!(file.body_match_limit, 64 * 1024);
}

#[test]
fn defaults_and_lane_labels() {
    let text = r#"
lanes: [{name: gray}]
services:
  - name: s
    port: 80
    pods:
      - {name: a, command: [x], labels: {alicloud.service.tag: gray}}
      - {name: b, command: [x], labels: {tagger.io/lane: gray}}
      - {name: c, command: [x]}
"#;
    let file = parse(text).unwrap();
    assert_eq!(file.lane_header, DEFAULT_LANE_HEADER);
    assert!(!file.lanes[0].sticky);
    let lanes: Vec<_> = file.services[0]
        .pods
        .iter()
        .map(|p| p.effective_lane())
        .collect();
    assert_eq!(lanes, vec![Some("gray"), Some("gray"), None]);
}

/// `protocol:` is optional (files written before it stay valid) and names
/// what a service's endpoints speak.
#[test]
fn service_protocols() {
    let cases = [
        ("", None),
        ("    protocol: http1\n", Some(Protocol::Http1)),
        ("    protocol: http2\n", Some(Protocol::Http2)),
        ("    protocol: grpc\n", Some(Protocol::Grpc)),
    ];
    for (line, want) in cases {
        let text = VALID.replacen("    port: 8080\n", &format!("    port: 8080\n{line}"), 1);
        let file = parse(&text).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(file.services[0].protocol, want, "{line:?}");
        assert_eq!(
            want.is_some_and(Protocol::is_http2),
            matches!(want, Some(Protocol::Http2 | Protocol::Grpc)),
            "{line:?}"
        );
    }
}

/// `lane_header_from:` is optional (`any`, today's behaviour), and names
/// the services whose pods a service trusts with a lane header.
#[test]
fn lane_header_from_values() {
    let cases = [
        ("", LaneHeaderFrom::Any),
        ("    lane_header_from: any\n", LaneHeaderFrom::Any),
        ("    lane_header_from: none\n", LaneHeaderFrom::Nobody),
        (
            "    lane_header_from: [client, charge]\n",
            LaneHeaderFrom::Services(vec!["client".into(), "charge".into()]),
        ),
    ];
    for (line, expected) in cases {
        let text = VALID.replacen("    port: 8080\n", &format!("    port: 8080\n{line}"), 1);
        let file = parse(&text).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(file.services[0].lane_header_from, expected, "{line:?}");
        assert_eq!(file.services[1].lane_header_from, LaneHeaderFrom::Any);
    }
}

#[test]
fn errors_name_the_place() {
    // (what is changed, replacement, text the error must contain)
    let cases: &[(&str, &str, &str)] = &[
        (
            "    port: 8080\n",
            "    port: 8080\n    colour: red\n",
            "unknown field `colour`",
        ),
        (
            "lanes:\n",
            "limits: {max_connections_per_pod: 0}\nlanes:\n",
            "limits.max_connections_per_pod: must be at least 1",
        ),
        (
            "lanes:\n",
            "limits: {max_tracked_pods: 9000}\nlanes:\n",
            "limits.max_tracked_pods: must be at most 8191 (the kernel's pod slots)",
        ),
        (
            "lanes:\n",
            "limits: {header_read_timeout: 5}\nlanes:\n",
            "unknown field `header_read_timeout`",
        ),
        (
            "name: charge-v2",
            "name: charge-v1",
            "services[0].pods[1].name: pod name \"charge-v1\" is already used at services[0].pods[0]",
        ),
        (
            "        command: [sleep, infinity]\n",
            "",
            "services[1].pods[0].command: pod \"client\" has no command",
        ),
        (
            "lane: gray\n        command",
            "lane: grey\n        command",
            "services[0].pods[1].lane: lane \"grey\" is not declared",
        ),
        (
            "  - name: gray\n    sticky: true\n",
            "  - name: gray\n    sticky: true\n  - name: blue\n",
            "lanes[1]: no pod is in lane \"blue\"",
        ),
        (
            "  - name: client\n    pods:",
            "  - name: charge\n    pods:",
            "services[1].name: service \"charge\" is declared twice",
        ),
        (
            "name: charge-v1",
            "name: Charge_V1",
            "services[0].pods[0].name",
        ),
        (
            "name: charge-v1",
            "name: a-very-long-pod-name",
            "longer than 12 characters",
        ),
        ("port: 8080", "port: 0", "services[0].port: port 0"),
        ("port: 8080", "port: 70000", "port"),
        (
            "lane_header: x-lane",
            "lane_header: \"bad header\"",
            "lane_header",
        ),
        (
            "op: in,",
            "op: within,",
            "rules[0]: rule \"charge-gray\", conditions[0].op: \"within\" is not an operator",
        ),
        ("cmp: \"=\"", "cmp: \"~\"", "conditions[1].cmp"),
        (
            "value: 1}",
            "value: 100}",
            "mod100 compares with a whole number 0..99",
        ),
        (
            "service: charge\n",
            "service: nowhere\n",
            "rules[0].service: rule \"charge-gray\" guards unknown service \"nowhere\"",
        ),
        (
            "    lane: gray\n    mode",
            "    lane: blue\n    mode",
            "rules[0].lane",
        ),
        ("mode: any", "mode: some", "mode"),
        (
            "    port: 8080\n",
            "    port: 8080\n    protocol: h3\n",
            "unknown variant `h3`",
        ),
        (
            "  - name: client\n",
            "  - name: client\n    protocol: grpc\n",
            "services[1].protocol: service \"client\" has a protocol but no port",
        ),
        (
            "    port: 8080\n",
            "    port: 8080\n    lane_header_from: pods\n",
            "\"pods\" is neither `any` nor `none`",
        ),
        (
            "    port: 8080\n",
            "    port: 8080\n    lane_header_from: client\n",
            "list it: [client]",
        ),
        (
            "    port: 8080\n",
            "    port: 8080\n    lane_header_from: [gateway]\n",
            "services[0].lane_header_from: unknown service \"gateway\" (services: charge, client)",
        ),
        (
            "    port: 8080\n",
            "    port: 8080\n    lane_header_from: []\n",
            "an empty list trusts no caller: write `none`",
        ),
        (
            "    port: 8080\n",
            "    port: 8080\n    lane_header_from: [client, client]\n",
            "service \"client\" is listed twice",
        ),
        (
            "    port: 8080\n",
            "    port: 8080\n    lane_header_from: {from: client}\n",
            "expected `any`, `none` or a list of service names",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(
            VALID.contains(from),
            "case text {from:?} not in the base file"
        );
        let text = VALID.replacen(from, to, 1);
        let err = parse(&text).expect_err(&format!("{from:?} -> {to:?} was accepted"));
        let message = err.to_string();
        assert!(
            message.contains(expected),
            "{from:?} -> {to:?}: {message:?} lacks {expected:?}"
        );
        assert!(
            message.contains("cluster.yaml"),
            "{message} does not name the file"
        );
    }
}

#[test]
fn not_yaml_at_all() {
    let err = parse("services: [").unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    let err = ClusterFile::load(Path::new("/nonexistent/tagger.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read cluster file /nonexistent/tagger.yaml")
    );
}

/// Every cluster file the end-to-end tests and the demo start is valid:
/// a typo there would otherwise show only in a privileged run.
#[test]
fn the_repositorys_cluster_files_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests/clusters"))
        .expect("tests/clusters")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root.join("demo/scenario-a.yaml"));
    assert!(files.len() > 2, "{files:?}");
    for path in files {
        ClusterFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
