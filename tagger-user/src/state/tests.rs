//! The model built from inventories: service ports to target ports,
//! readiness from the source or the probe, lanes, and what a rebuild keeps.
use std::{net::Ipv4Addr, sync::atomic::Ordering};

use super::*;
use crate::config::{LaneHeaderFrom, LimitsSpec};

fn settings() -> SettingsSpec {
    SettingsSpec {
        lane_header: "x-lane".into(),
        passthrough_headers: vec!["x-user-id".into()],
        body_match_limit: 1024,
        limits: LimitsSpec::default(),
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn endpoint(pod: &str, last: u8, readiness: Readiness, ports: &[(u16, u16)]) -> EndpointEntry {
    EndpointEntry {
        pod: pod.into(),
        ip: ip(last),
        ports: ports
            .iter()
            .map(|&(port, target_port)| PortMap { port, target_port })
            .collect(),
        readiness,
    }
}

/// A pod named `namespace/name`.
fn pod(name: &str, last: u8, lane_label: Option<&str>, cgroups: &[u64]) -> PodEntry {
    PodEntry {
        name: name.into(),
        namespace: name.split_once('/').map_or("", |(ns, _)| ns).into(),
        ip: ip(last),
        labels: lane_label
            .map(|l| [("tagger.io/lane".to_string(), l.to_string())].into())
            .unwrap_or_default(),
        lane: None,
        cgroup_ids: cgroups.to_vec(),
    }
}

/// `web` on ports 80 (to 8080) and 9000 (to 9090 on a, 9091 on b: a named
/// port may differ per pod); `job`, a pod group with no port.
fn inventory(b_readiness: Readiness) -> Inventory {
    Inventory {
        settings: settings(),
        namespaces: vec!["shop".into()],
        lanes: vec![lane("shop", "gray", true)],
        services: vec![
            ServiceEntry {
                name: "shop/web".into(),
                namespace: "shop".into(),
                address: Some(ip(100)),
                ports: vec![ServicePort::new(80), ServicePort::new(9000)],
                endpoints: vec![
                    endpoint("shop/a", 1, Readiness::Ready, &[(80, 8080), (9000, 9090)]),
                    endpoint("shop/b", 2, b_readiness, &[(80, 8080), (9000, 9091)]),
                ],
                pods: vec!["shop/a".into(), "shop/b".into()],
                lane_header_from: LaneHeaderFrom::Services(vec!["shop/job".into()]),
            },
            ServiceEntry {
                name: "shop/job".into(),
                namespace: "shop".into(),
                address: None,
                ports: vec![],
                endpoints: vec![],
                pods: vec!["shop/far".into()],
                lane_header_from: LaneHeaderFrom::Any,
            },
        ],
        pods: vec![
            pod("shop/a", 1, None, &[11, 12]),
            pod("shop/b", 2, Some("gray"), &[21]),
            pod("shop/far", 3, None, &[]),
        ],
        rules: vec![],
        rules_origin: RulesOrigin::Api,
    }
}

#[test]
fn each_service_port_is_a_destination_reaching_its_target_ports() {
    let snapshot = Snapshot::build(&inventory(Readiness::Ready), &[], None).unwrap();
    // (address, service port entry's port, endpoint addresses)
    let cases: [(Option<u16>, Option<&str>, &[&str]); 3] = [
        (
            Some(80),
            Some("10.0.0.100:80"),
            &["10.0.0.1:8080", "10.0.0.2:8080"],
        ),
        (
            Some(9000),
            Some("10.0.0.100:9000"),
            &["10.0.0.1:9090", "10.0.0.2:9091"],
        ),
        (None, None, &[]),
    ];
    for (port, address, endpoints) in cases {
        let name = if port.is_some() {
            "shop/web"
        } else {
            "shop/job"
        };
        let service = snapshot.service_at(name, port).expect("service port");
        assert_eq!(
            service.address,
            address.map(|a| a.parse().unwrap()),
            "{port:?}"
        );
        let addrs: Vec<String> = service
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(addrs, endpoints, "{port:?}");
        for addr in addrs.iter().chain(address.map(String::from).iter()) {
            let destination = snapshot.destination(addr.parse().unwrap()).unwrap();
            let entry = &snapshot.services[destination.service()];
            assert_eq!((entry.name.as_str(), entry.port), (name, port), "{addr}");
        }
    }
    assert_eq!(
        snapshot.service_at("shop/web", Some(81)).map(|s| s.port),
        None
    );
}

#[test]
fn pods_lanes_and_cgroups() {
    let snapshot = Snapshot::build(&inventory(Readiness::Ready), &[], None).unwrap();
    let b = snapshot.source_pod(21, ip(99)).unwrap();
    assert_eq!(
        (b.name.as_str(), b.lane.as_deref()),
        ("shop/b", Some("gray"))
    );
    assert_eq!(snapshot.source_pod(12, ip(99)).unwrap().name, "shop/a");
    // Not a pod cgroup: found by address (a pod of another node has none).
    assert_eq!(snapshot.source_pod(99, ip(3)).unwrap().name, "shop/far");
    assert_eq!(snapshot.pod_cgroups(), [11, 12, 21].into());
    let gray = snapshot.services[0].endpoints[1].lane.as_deref();
    assert_eq!(gray, Some("gray"), "an endpoint's lane is its pod's");
    assert!(snapshot.is_sticky("shop", "gray"));
}

fn lane(namespace: &str, name: &str, sticky: bool) -> LaneEntry {
    LaneEntry {
        namespace: namespace.into(),
        name: name.into(),
        sticky,
    }
}

/// `shop` and `abc` each with a Service `web` and a gray pod `g`, and each
/// declaring `gray`: per-hop in shop, sticky in abc.
fn two_namespaces() -> Inventory {
    let mut two = inventory(Readiness::Ready);
    two.namespaces = vec!["abc".into(), "shop".into()];
    two.lanes = vec![lane("shop", "gray", false), lane("abc", "gray", true)];
    let web = |ns: &str, last: u8| ServiceEntry {
        name: format!("{ns}/web"),
        namespace: ns.into(),
        address: Some(ip(last)),
        ports: vec![ServicePort::new(80)],
        endpoints: vec![],
        pods: vec![],
        lane_header_from: LaneHeaderFrom::Any,
    };
    two.services = vec![web("shop", 100), web("abc", 101)];
    two.pods = vec![
        pod("shop/g", 1, Some("gray"), &[11]),
        pod("abc/g", 2, Some("gray"), &[21]),
    ];
    two
}

/// A lane is namespaced: the same name sticky in one namespace and per-hop
/// in another is each, never merged. The caller's own lane is asked of the
/// caller's namespace, a rule's lane of the destination's (the rule's).
#[test]
fn stickiness_follows_the_namespace_of_the_declaration_that_applies() {
    let snapshot = Snapshot::build(&two_namespaces(), &[], None).unwrap();
    assert_eq!(snapshot.lanes.len(), 2, "{:?}", snapshot.lanes);
    // (caller pod, destination service, question, sticky)
    let cases: &[(Option<&str>, &str, StickyQuery, bool)] = &[
        (
            Some("abc/g"),
            "abc/web",
            StickyQuery::CallerLane("gray"),
            true,
        ),
        (
            Some("abc/g"),
            "shop/web",
            StickyQuery::CallerLane("gray"),
            true,
        ),
        (
            Some("shop/g"),
            "shop/web",
            StickyQuery::CallerLane("gray"),
            false,
        ),
        (
            Some("shop/g"),
            "abc/web",
            StickyQuery::CallerLane("gray"),
            false,
        ),
        (
            Some("shop/g"),
            "abc/web",
            StickyQuery::RuleLane("gray"),
            true,
        ),
        (None, "abc/web", StickyQuery::RuleLane("gray"), true),
        (
            Some("abc/g"),
            "shop/web",
            StickyQuery::RuleLane("gray"),
            false,
        ),
        (None, "shop/web", StickyQuery::RuleLane("gray"), false),
        // Not a pod, or one the model no longer has: no namespace.
        (None, "abc/web", StickyQuery::CallerLane("gray"), false),
        (
            Some("abc/gone"),
            "abc/web",
            StickyQuery::CallerLane("gray"),
            false,
        ),
        // A lane the namespace does not declare.
        (
            Some("abc/g"),
            "abc/web",
            StickyQuery::CallerLane("blue"),
            false,
        ),
        (
            Some("abc/g"),
            "abc/web",
            StickyQuery::RuleLane("blue"),
            false,
        ),
    ];
    for &(caller, service, query, want) in cases {
        let service = snapshot.service_at(service, Some(80)).unwrap();
        let sticky = snapshot.stickiness(service, caller);
        assert_eq!(
            sticky(query),
            want,
            "{caller:?} -> {}: {query:?}",
            service.name
        );
    }
    for (namespace, want) in [("abc", true), ("shop", false), ("plain", false)] {
        assert_eq!(snapshot.is_sticky(namespace, "gray"), want, "{namespace}");
    }
}

/// The cluster file is one namespace: its lanes answer for its pods and
/// its services' rules alike.
#[test]
fn the_cluster_file_is_one_namespace() {
    for (declared, want) in [("true", true), ("false", false)] {
        let file = crate::config::ClusterFile::parse(
            &format!(
                "lanes: [{{name: gray, sticky: {declared}}}]\n\
                 services: [{{name: s, port: 1, pods: [{{name: p, lane: gray, command: [x]}}]}}]"
            ),
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let placement = crate::source::file::Placement {
            pods: vec![crate::source::file::PlacedPod {
                name: "p".into(),
                ip: Ipv4Addr::LOCALHOST,
                cgroup_id: 1,
            }],
            services: vec![],
        };
        let inventory = crate::source::file::inventory(&file, &placement, 0).unwrap();
        let snapshot = Snapshot::build(&inventory, &file.rules, None).unwrap();
        let service = snapshot.service_at("s", Some(1)).unwrap();
        let sticky = snapshot.stickiness(service, Some("p"));
        assert_eq!(sticky(StickyQuery::CallerLane("gray")), want, "{declared}");
        assert_eq!(sticky(StickyQuery::RuleLane("gray")), want, "{declared}");
        assert_eq!(snapshot.is_sticky(FILE_NAMESPACE, "gray"), want);
    }
}

/// `lane_header_from` reaches every port of its service, its list
/// resolved to the pods of the services named (a pod group's included).
#[test]
fn lane_header_trust_is_resolved_to_pods() {
    let snapshot = Snapshot::build(&inventory(Readiness::Ready), &[], None).unwrap();
    for port in [80, 9000] {
        let web = snapshot.service_at("shop/web", Some(port)).unwrap();
        assert!(web.lane_trust.trusts(Some("shop/far")), "{port}");
        assert!(!web.lane_trust.trusts(Some("shop/a")), "{port}");
        assert!(!web.lane_trust.trusts(None), "{port}");
    }
    let job = snapshot.service_at("shop/job", None).unwrap();
    assert_eq!(job.lane_trust, LaneTrust::Any);
    // A service not in the inventory has no pods to trust.
    let mut inventory = inventory(Readiness::Ready);
    inventory.services[0].lane_header_from = LaneHeaderFrom::Services(vec!["shop/gone".into()]);
    let snapshot = Snapshot::build(&inventory, &[], None).unwrap();
    let web = &snapshot.services[0];
    assert!(!web.lane_trust.trusts(Some("shop/far")));
    let dump = serde_json::to_value(web).unwrap();
    assert_eq!(dump["lane_header_from"], serde_json::json!(["shop/gone"]));
    assert_eq!(dump["lane_trust"], serde_json::json!([]));
}

#[test]
fn readiness_comes_from_the_source_and_flags_outlive_a_rebuild() {
    // (what the source says of b, b's flag after the build, when the flag
    // was up before)
    let cases = [
        (Readiness::Ready, true),
        (Readiness::NotReady, false),
        (Readiness::Terminating, false),
        (Readiness::Probe, true),
    ];
    for (readiness, want) in cases {
        let first = Snapshot::build(&inventory(Readiness::Ready), &[], None).unwrap();
        let flag = first.services[0].endpoints[1].ready.clone();
        assert!(flag.load(Ordering::Relaxed));
        let next = Snapshot::build(&inventory(readiness), &[], Some(&first)).unwrap();
        let endpoint = &next.services[0].endpoints[1];
        assert_eq!(
            endpoint.ready.load(Ordering::Relaxed),
            want,
            "{readiness:?}"
        );
        assert!(Arc::ptr_eq(&endpoint.ready, &flag), "shared by address");
        assert!(Arc::ptr_eq(&next.services[0].turn, &first.services[0].turn));
    }
}

#[test]
fn a_bad_header_or_rule_is_refused() {
    let mut bad = inventory(Readiness::Ready);
    bad.settings.lane_header = "x lane".into();
    assert!(matches!(
        Snapshot::build(&bad, &[], None),
        Err(StateError::Header { .. })
    ));
    let rule: RuleSpec = serde_yaml::from_str(
        "{name: r, service: shop/web, lane: gray, conditions: [{source: query, name: a, op: within, value: 1}]}",
    )
    .unwrap();
    assert!(matches!(
        Snapshot::build(&inventory(Readiness::Ready), &[rule], None),
        Err(StateError::Rule(_))
    ));
}
