//! The cluster-wide view without a cluster: which pods are daemons and
//! where they listen, how answers merge, and what is printed (golden, as
//! `ctl/tests.rs`: scripts read the text and the JSON).
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;
use crate::propagation::Correlation;

fn flow(source: &str, lane: Option<&str>, requests: u64) -> FlowRow {
    FlowRow {
        source: source.into(),
        service: "shop/charge".into(),
        endpoint: "shop/charge-v1".into(),
        lane: lane.map(Into::into),
        reason: "default".into(),
        fallback: false,
        served_lane: None,
        correlation: Correlation::None,
        rpc: None,
        requests,
        errors: 0,
        stripped: 0,
        last_seen_ms: 0,
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn daemon(node: &str, address: Result<&str, PodProblem>) -> Daemon {
    Daemon {
        node: node.into(),
        pod: format!("tagger-{node}"),
        address: address.map(addr),
    }
}

fn answered<T>(node: &str, address: &str, rows: Vec<T>) -> Answer<T, String> {
    (daemon(node, Ok(address)), Ok((addr(address), rows)))
}

fn failed<T>(node: &str, address: Result<&str, PodProblem>, error: &str) -> Answer<T, String> {
    (daemon(node, address), Err(error.into()))
}

#[test]
fn merge_orders_nodes_and_keeps_every_failure() {
    // (case, answers, nodes that answered, unreachable)
    type Case = (
        &'static str,
        Vec<Answer<u32, String>>,
        Vec<&'static str>,
        Vec<Unreachable>,
    );
    let cases: Vec<Case> = vec![
        ("nothing", vec![], vec![], vec![]),
        (
            "nodes by name, whatever order they answered in",
            vec![
                answered("node-b", "10.0.0.2:15090", vec![2]),
                answered("node-a", "10.0.0.1:15090", vec![1]),
            ],
            vec!["node-a", "node-b"],
            vec![],
        ),
        (
            "a node that answered with no rows is still a node that answered",
            vec![answered("node-a", "10.0.0.1:15090", vec![])],
            vec!["node-a"],
            vec![],
        ),
        (
            "failures keep their address when there was one",
            vec![
                failed("node-c", Ok("10.0.0.3:15090"), "cannot connect: refused"),
                answered("node-a", "10.0.0.1:15090", vec![1]),
                failed(
                    "node-b",
                    Err(PodProblem::NotRunning("Pending".into())),
                    "the pod is Pending, not Running",
                ),
            ],
            vec!["node-a"],
            vec![
                Unreachable {
                    node: "node-b".into(),
                    pod: "tagger-node-b".into(),
                    address: None,
                    error: "the pod is Pending, not Running".into(),
                },
                Unreachable {
                    node: "node-c".into(),
                    pod: "tagger-node-c".into(),
                    address: Some("10.0.0.3:15090".into()),
                    error: "cannot connect: refused".into(),
                },
            ],
        ),
    ];
    for (name, answers, nodes, unreachable) in cases {
        let view = merge(answers);
        let got: Vec<&str> = view.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(got, nodes, "case {name:?}");
        assert_eq!(view.unreachable, unreachable, "case {name:?}");
        assert_eq!(view.answered(), !nodes.is_empty(), "case {name:?}");
    }
}

#[test]
fn tables_have_the_node_first_and_each_nodes_rows_as_on_the_node() {
    let grpc = |method: &str, requests| FlowRow {
        service: "shop/greeter".into(),
        endpoint: "shop/greeter-v1".into(),
        rpc: Some(format!("helloworld.Greeter/{method}")),
        ..flow("shop/web", None, requests)
    };
    let two_nodes = merge(vec![
        answered(
            "node-b",
            "10.0.0.2:15090",
            vec![flow("shop/device-v2", Some("gray"), 7)],
        ),
        answered(
            "node-a",
            "10.0.0.1:15090",
            vec![
                flow("shop/device-v1", None, 3),
                // Counted per method on the node: one row per flow here.
                grpc("SayHello", 2),
                grpc("SayBye", 1),
            ],
        ),
        failed("node-c", Ok("10.0.0.3:15090"), "no answer within 2s"),
    ]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "flows",
            two_nodes.render(&FLOWS),
            "\
NODE    SOURCE          SERVICE       ENDPOINT         LANE      REASON   CORRELATION  REQUESTS  ERRORS  STRIPPED  LAST
node-a  shop/device-v1  shop/charge   shop/charge-v1   baseline  default  -            3         0       0         now
node-a  shop/web        shop/greeter  shop/greeter-v1  baseline  default  -            3         0       0         now
node-b  shop/device-v2  shop/charge   shop/charge-v1   gray      default  -            7         0       0         now
",
        ),
        (
            "by path",
            two_nodes.render(&BY_METHOD),
            "\
NODE    SERVICE       GRPC SERVICE        METHOD    LANE      ENDPOINT         REQUESTS  ERRORS
node-a  shop/charge   -                   -         baseline  shop/charge-v1   3         0
node-a  shop/greeter  helloworld.Greeter  SayBye    baseline  shop/greeter-v1  1         0
node-a  shop/greeter  helloworld.Greeter  SayHello  baseline  shop/greeter-v1  2         0
node-b  shop/charge   -                   -         gray      shop/charge-v1   7         0
",
        ),
        (
            "no node has flows",
            merge(vec![answered::<FlowRow>("node-a", "10.0.0.1:15090", vec![])]).render(&FLOWS),
            "no flows yet\n",
        ),
        (
            "lanes",
            merge(vec![
                answered(
                    "node-b",
                    "10.0.0.2:15090",
                    vec![LaneRate {
                        service: "shop/charge".into(),
                        lane: Some("gray".into()),
                        requests_per_second: 2.5,
                        total: 40,
                    }],
                ),
                answered(
                    "node-a",
                    "10.0.0.1:15090",
                    vec![LaneRate {
                        service: "shop/charge".into(),
                        lane: None,
                        requests_per_second: 10.0,
                        total: 1234,
                    }],
                ),
            ])
            .render(&LANES),
            "\
NODE    SERVICE      LANE      RPS   TOTAL
node-a  shop/charge  baseline  10.0  1234
node-b  shop/charge  gray      2.5   40
",
        ),
        (
            "lanes, no traffic",
            merge(vec![answered::<LaneRate>("node-a", "10.0.0.1:15090", vec![])]).render(&LANES),
            "no traffic yet\n",
        ),
    ];
    for (name, got, expected) in cases {
        assert_eq!(got, expected, "case {name:?}");
    }
    assert_eq!(
        two_nodes.notes(),
        ["node node-c unreachable (pod tagger-node-c at 10.0.0.3:15090): no answer within 2s"]
    );
}

/// `--json`: each node's rows exactly as `tagger flows --json` prints them
/// on that node, and the nodes that did not answer, with why.
#[test]
fn json_nests_each_nodes_own_answer() {
    let view = merge(vec![
        answered(
            "node-a",
            "10.0.0.1:15090",
            vec![flow("shop/device-v1", None, 3)],
        ),
        failed("node-b", Err(PodProblem::NoIp), "the pod has no IP yet"),
    ]);
    let value: serde_json::Value = serde_json::from_str(&to_json(&view)).unwrap();
    assert_eq!(
        value,
        json!({
            "nodes": [{
                "node": "node-a", "pod": "tagger-node-a", "address": "10.0.0.1:15090",
                "rows": [serde_json::to_value(flow("shop/device-v1", None, 3)).unwrap()],
            }],
            "unreachable": [{
                "node": "node-b", "pod": "tagger-node-b", "address": null,
                "error": "the pod has no IP yet",
            }],
        })
    );
    let back: ClusterView<FlowRow> = serde_json::from_value(value).unwrap();
    assert_eq!(back, view);
}

fn pod(phase: &str, ip: Option<&str>, ports: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "tagger-x7k2p", "namespace": "tagger-system"},
        "spec": {"nodeName": "node-a", "containers": [
            {"name": "sidecar", "image": "s", "ports": [{"name": "http", "containerPort": 8080}]},
            {"name": "tagger", "image": "t", "ports": ports},
        ]},
        "status": {"phase": phase, "podIP": ip},
    }))
    .unwrap()
}

#[test]
fn a_daemon_is_reached_at_its_pod_ip_and_named_metrics_port() {
    let deployed = json!([
        {"name": "proxy", "containerPort": 15001},
        {"name": "metrics", "containerPort": 15090},
    ]);
    // (case, pod, --metrics-port, where it is asked)
    type Case = (
        &'static str,
        Pod,
        Option<u16>,
        Result<&'static str, PodProblem>,
    );
    let cases: Vec<Case> = vec![
        (
            "as deploy/ runs it",
            pod("Running", Some("10.0.0.1"), deployed.clone()),
            None,
            Ok("10.0.0.1:15090"),
        ),
        (
            "--metrics-port wins",
            pod("Running", Some("10.0.0.1"), deployed.clone()),
            Some(9000),
            Ok("10.0.0.1:9000"),
        ),
        (
            "an IPv6 node",
            pod("Running", Some("fd00::1"), deployed.clone()),
            None,
            Ok("[fd00::1]:15090"),
        ),
        (
            "not running",
            pod("Pending", None, deployed.clone()),
            None,
            Err(PodProblem::NotRunning("Pending".into())),
        ),
        (
            "no IP",
            pod("Running", None, deployed.clone()),
            None,
            Err(PodProblem::NoIp),
        ),
        (
            "not an IP",
            pod("Running", Some("node-a"), deployed.clone()),
            None,
            Err(PodProblem::BadIp("node-a".into())),
        ),
        (
            "no port named metrics",
            pod(
                "Running",
                Some("10.0.0.1"),
                json!([{"name": "proxy", "containerPort": 15001}]),
            ),
            None,
            Err(PodProblem::NoMetricsPort),
        ),
        (
            "no ports, the scrape annotation (deploy/'s DaemonSet)",
            {
                let mut pod = pod("Running", Some("10.0.0.1"), json!([]));
                pod.metadata.annotations =
                    Some([("prometheus.io/port".to_string(), "15091".to_string())].into());
                pod
            },
            None,
            Ok("10.0.0.1:15091"),
        ),
    ];
    for (name, pod, port, expected) in cases {
        let daemon = daemon_of(&pod, port);
        assert_eq!(daemon.node, "node-a", "case {name:?}");
        assert_eq!(daemon.pod, "tagger-x7k2p", "case {name:?}");
        assert_eq!(daemon.address, expected.map(addr), "case {name:?}");
    }
}
