//! The model built from inventories: service ports to target ports,
//! readiness from the source or the probe, lanes, and what a rebuild keeps.
use std::{net::Ipv4Addr, sync::atomic::Ordering};

use super::*;
use crate::config::{LaneHeaderFrom, LaneSpec, LimitsSpec};

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

fn pod(name: &str, last: u8, lane_label: Option<&str>, cgroups: &[u64]) -> PodEntry {
    PodEntry {
        name: name.into(),
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
        lanes: vec![
            LaneSpec {
                name: "gray".into(),
                sticky: false,
            },
            LaneSpec {
                name: "gray".into(),
                sticky: true,
            },
        ],
        services: vec![
            ServiceEntry {
                name: "shop/web".into(),
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
    // Declared twice (two namespaces): sticky if either says so.
    assert_eq!(snapshot.lanes.len(), 1);
    assert!(snapshot.is_sticky("gray"));
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
