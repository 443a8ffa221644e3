//! Kubernetes objects, as `kubectl get -o json` shows them, to what the
//! daemon keeps; and the stores joined into an inventory.
use std::collections::HashMap;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;
use serde_json::json;

use super::{join::Stores, objects::*};
use crate::{
    config::LaneHeaderFrom,
    config::Protocol,
    kubernetes::cgroups::QosClass,
    state::{PortMap, Readiness},
};

fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a real-shaped object deserialises")
}

fn meta(namespace: &str, name: &str) -> serde_json::Value {
    json!({
        "name": name, "namespace": namespace,
        "uid": "5d0c7a3e-9a4b-4c1e-8f3a-0c2d9b1e7f21",
        "resourceVersion": "48213", "creationTimestamp": "2026-11-24T07:00:00Z",
        "labels": {"app": name}
    })
}

pub fn service_json(namespace: &str, name: &str, ip: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta(namespace, name),
        "spec": {
            "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name}, "sessionAffinity": "None",
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http"},
                {"name": "admin", "port": 9000, "protocol": "TCP", "targetPort": 9090,
                 "appProtocol": "kubernetes.io/h2c"},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53}
            ]
        },
        "status": {"loadBalancer": {}}
    })
}

/// Endpoints of `(ip, pod, ready, terminating)`.
pub fn slice_json(
    namespace: &str,
    service: &str,
    endpoints: &[(&str, &str, Option<bool>, Option<bool>)],
) -> serde_json::Value {
    let mut metadata = meta(namespace, &format!("{service}-x7k2p"));
    metadata["labels"] = json!({
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
    });
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": metadata, "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(ip, pod, ready, terminating)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            "nodeName": "node-a",
            "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace,
                          "uid": "9f1e2d3c-0000-4000-8000-000000000001"}
        })).collect::<Vec<_>>(),
        "ports": [
            {"name": "http", "port": 8081, "protocol": "TCP"},
            {"name": "admin", "port": 9090, "protocol": "TCP"}
        ]
    })
}

pub fn pod_json(
    namespace: &str,
    name: &str,
    ip: &str,
    lane: Option<&str>,
    host_network: bool,
) -> serde_json::Value {
    let mut metadata = meta(namespace, name);
    if let Some(lane) = lane {
        metadata["labels"]["tagger.io/lane"] = json!(lane);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
        "spec": {
            "nodeName": "node-a", "hostNetwork": host_network,
            "containers": [{"name": "app", "image": "registry.local/app:1",
                            "ports": [{"name": "http", "containerPort": 8081}]}]
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "10.0.0.11",
            "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

pub fn namespace_json(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "resourceVersion": "1", "labels": labels},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
    })
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

#[test]
fn a_service_keeps_its_tcp_ports_by_name() {
    let (k, rec) = service(&from::<Service>(service_json(
        "shop",
        "charge",
        "10.96.0.20",
    )))
    .unwrap();
    assert_eq!(k, key("shop", "charge"));
    assert_eq!(rec.cluster_ip, Some("10.96.0.20".parse().unwrap()));
    let ports: Vec<(&str, u16, Option<Protocol>)> = rec
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [("http", 8080, None), ("admin", 9000, Some(Protocol::Http2))],
        "UDP left out"
    );
    // appProtocol: the names the proxy can act on.
    for (name, want) in [
        ("kubernetes.io/h2c", Some(Protocol::Http2)),
        ("grpc", Some(Protocol::Grpc)),
        ("http", Some(Protocol::Http1)),
        ("kubernetes.io/wss", None),
        ("example.com/custom", None),
    ] {
        assert_eq!(app_protocol(name), want, "{name}");
    }
    // Headless: no address, ports kept (pods are called directly).
    let (_, headless) = service(&from::<Service>(service_json("shop", "charge", "None"))).unwrap();
    assert_eq!(headless.cluster_ip, None);
}

#[test]
fn an_endpoint_slice_keeps_readiness_and_pods() {
    // (ready, terminating) -> condition, as the API means them.
    let cases = [
        (Some(true), Some(false), Condition::Ready),
        (None, None, Condition::Ready),
        (Some(false), Some(false), Condition::NotReady),
        (Some(false), Some(true), Condition::Terminating),
        (Some(true), Some(true), Condition::Terminating),
    ];
    for (ready, terminating, want) in cases {
        let json = slice_json(
            "shop",
            "charge",
            &[("10.244.1.5", "charge-v1", ready, terminating)],
        );
        let (k, rec) = endpoint_slice(&from::<EndpointSlice>(json)).unwrap();
        assert_eq!(k, key("shop", "charge-x7k2p"));
        assert_eq!(rec.service, "charge");
        assert_eq!(
            rec.ports,
            [("http".to_string(), 8081), ("admin".to_string(), 9090)]
        );
        assert_eq!(
            rec.endpoints,
            [SliceEndpoint {
                ip: "10.244.1.5".parse().unwrap(),
                pod: Some("charge-v1".into()),
                condition: want
            }],
            "{ready:?} {terminating:?}"
        );
    }
    let mut ipv6 = slice_json("shop", "charge", &[("fd00::5", "charge-v1", None, None)]);
    ipv6["addressType"] = json!("IPv6");
    assert!(endpoint_slice(&from::<EndpointSlice>(ipv6)).is_none());
    let mut orphan = slice_json("shop", "charge", &[]);
    orphan["metadata"]["labels"] = json!({});
    assert!(endpoint_slice(&from::<EndpointSlice>(orphan)).is_none());
}

#[test]
fn a_node_pod_keeps_address_lane_and_cgroup_uid_and_host_network_ones_are_ignored() {
    let (k, rec) = node_pod(&from::<Pod>(pod_json(
        "shop",
        "charge-v2",
        "10.244.1.6",
        Some("gray"),
        false,
    )))
    .unwrap();
    assert_eq!(k, key("shop", "charge-v2"));
    assert_eq!(rec.cgroup_uid, "5d0c7a3e-9a4b-4c1e-8f3a-0c2d9b1e7f21");
    assert_eq!(rec.qos, Some(QosClass::Burstable));
    assert_eq!(rec.ip, Some("10.244.1.6".parse().unwrap()));
    assert_eq!(
        rec.labels.get("tagger.io/lane").map(String::as_str),
        Some("gray")
    );
    // A static pod's cgroup is named by its config hash.
    let mut mirror = pod_json("kube-system", "etcd-node-a", "10.0.0.11", None, false);
    mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "8c1f0e5d7b3a"});
    assert_eq!(
        node_pod(&from::<Pod>(mirror)).unwrap().1.cgroup_uid,
        "8c1f0e5d7b3a"
    );
    // hostNetwork: the node's own processes; finished pods: none left.
    assert!(
        node_pod(&from::<Pod>(pod_json(
            "shop",
            "agent",
            "10.0.0.11",
            None,
            true
        )))
        .is_none()
    );
    let mut done = pod_json("shop", "job", "10.244.1.9", None, false);
    done["status"]["phase"] = json!("Succeeded");
    assert!(node_pod(&from::<Pod>(done)).is_none());
}

#[test]
fn only_namespaces_labelled_lanes_enabled_are_managed() {
    let cases = [
        (json!({"tagger.io/lanes": "enabled"}), true),
        (json!({"tagger.io/lanes": "disabled"}), false),
        (json!({"tagger.io/managed": "true"}), false),
        (json!({}), false),
    ];
    for (labels, want) in cases {
        let ns: Namespace = from(namespace_json("shop", labels.clone()));
        assert_eq!(is_managed(&ns), want, "{labels}");
        assert_eq!(namespace(&ns).is_some(), want, "{labels}");
    }
}

/// Stores filled as a first list would, joined.
fn stores(objects: &[serde_json::Value]) -> Stores {
    let mut stores = Stores::default();
    let by_kind = |k: &'static str| objects.iter().filter(move |o| o["kind"] == k).cloned();
    let done = |s: &mut Stores| {
        s.namespaces.apply(Event::<Namespace>::InitDone, namespace);
        // Each namespace's own watches listed (none of its objects yet).
        for o in by_kind("Namespace") {
            let ns = o["metadata"]["name"].as_str().unwrap_or_default();
            s.services.apply_in(ns, Event::<Service>::InitDone, service);
            s.slices
                .apply_in(ns, Event::<EndpointSlice>::InitDone, endpoint_slice);
            s.pods.apply_in(ns, Event::InitDone, pod_labels);
        }
        s.node_pods.apply(Event::<Pod>::InitDone, node_pod);
        s.lanes.apply(Event::InitDone, lane);
        s.rules.apply(Event::InitDone, super::join::rule);
    };
    done(&mut stores);
    for o in by_kind("Namespace") {
        stores
            .namespaces
            .apply(Event::Apply(from::<Namespace>(o)), namespace);
    }
    for o in by_kind("Service") {
        stores
            .services
            .apply(Event::Apply(from::<Service>(o)), service);
    }
    for o in by_kind("EndpointSlice") {
        stores
            .slices
            .apply(Event::Apply(from::<EndpointSlice>(o)), endpoint_slice);
    }
    for o in by_kind("Pod") {
        stores.pods.apply(Event::Apply(from(o.clone())), pod_labels);
        stores
            .node_pods
            .apply(Event::Apply(from::<Pod>(o)), node_pod);
    }
    stores
}

#[test]
fn the_join_routes_each_service_port_to_its_target_port_in_managed_namespaces_only() {
    let stores = stores(&[
        namespace_json("shop", json!({"tagger.io/lanes": "enabled"})),
        namespace_json("other", json!({})),
        service_json("shop", "charge", "10.96.0.20"),
        service_json("other", "charge", "10.96.0.30"),
        slice_json(
            "shop",
            "charge",
            &[
                ("10.244.1.5", "charge-v1", Some(true), Some(false)),
                ("10.244.1.6", "charge-v2", Some(false), Some(true)),
            ],
        ),
        pod_json("shop", "charge-v1", "10.244.1.5", None, false),
        pod_json("shop", "charge-v2", "10.244.1.6", Some("gray"), false),
        pod_json("shop", "agent", "10.0.0.11", None, true),
        pod_json("other", "x", "10.244.1.7", None, false),
    ]);
    assert!(stores.synced());
    let cgroups = HashMap::from([(
        "5d0c7a3e-9a4b-4c1e-8f3a-0c2d9b1e7f21".to_string(),
        vec![7, 8],
    )]);
    let (inventory, verdicts) = super::join(
        &stores,
        &cgroups,
        &super::KubeConfig {
            node_name: "node-a".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            lane_header: "x-lane".into(),
            passthrough_headers: vec![],
        }
        .settings(),
    );
    assert!(verdicts.is_empty());
    assert_eq!(inventory.namespaces, ["shop"]);
    let [charge] = &inventory.services[..] else {
        panic!("{:?}", inventory.services)
    };
    assert_eq!(charge.name, "shop/charge");
    let ports: Vec<u16> = charge.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [8080, 9000]);
    let endpoints: Vec<(&str, Readiness, &[PortMap])> = charge
        .endpoints
        .iter()
        .map(|e| (e.pod.as_str(), e.readiness, &e.ports[..]))
        .collect();
    let ports = [
        PortMap {
            port: 8080,
            target_port: 8081,
        },
        PortMap {
            port: 9000,
            target_port: 9090,
        },
    ];
    assert_eq!(
        endpoints,
        [
            ("shop/charge-v1", Readiness::Ready, &ports[..]),
            ("shop/charge-v2", Readiness::Terminating, &ports[..]),
        ]
    );
    // Pods of managed namespaces, hostNetwork ones never; cgroups by UID.
    let pods: Vec<(&str, Option<&str>)> = inventory
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.lane()))
        .collect();
    assert_eq!(
        pods,
        [("shop/charge-v1", None), ("shop/charge-v2", Some("gray"))]
    );
    assert_eq!(inventory.pods[0].cgroup_ids, [7, 8]);
}

/// `tagger.io/lane-header-from` on a Service: its names qualified by the
/// namespace, each listed Service's pods (ready or not) its callers; an
/// annotation that cannot be read trusts nobody rather than everybody.
#[test]
fn the_join_carries_lane_header_trust_by_namespace() {
    let annotated = |name: &str, ip: &str, value: &str| {
        let mut service = service_json("shop", name, ip);
        service["metadata"]["annotations"] = json!({"tagger.io/lane-header-from": value});
        service
    };
    let stores = stores(&[
        namespace_json("shop", json!({"tagger.io/lanes": "enabled"})),
        annotated("web", "10.96.0.40", "gateway"),
        annotated("api", "10.96.0.41", "web,gateway-typo_"),
        service_json("shop", "gateway", "10.96.0.42"),
        slice_json(
            "shop",
            "gateway",
            &[
                ("10.244.1.5", "gw-1", Some(true), Some(false)),
                ("10.244.1.6", "gw-2", Some(false), Some(false)),
            ],
        ),
        slice_json(
            "shop",
            "web",
            &[("10.244.1.7", "web-1", Some(true), Some(false))],
        ),
    ]);
    let (inventory, _) = super::join(
        &stores,
        &HashMap::new(),
        &super::KubeConfig {
            node_name: "node-a".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            lane_header: "x-lane".into(),
            passthrough_headers: vec![],
        }
        .settings(),
    );
    let service = |name: &str| {
        inventory
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name}: {:?}", inventory.services))
    };
    assert_eq!(
        service("shop/web").lane_header_from,
        LaneHeaderFrom::Services(vec!["shop/gateway".into()])
    );
    assert_eq!(service("shop/api").lane_header_from, LaneHeaderFrom::Nobody);
    assert_eq!(
        service("shop/gateway").lane_header_from,
        LaneHeaderFrom::Any
    );
    assert_eq!(service("shop/gateway").pods, ["shop/gw-1", "shop/gw-2"]);
    let snapshot = crate::state::Snapshot::build(&inventory, &[], None).unwrap();
    let web = snapshot.service_at("shop/web", Some(8080)).unwrap();
    assert!(
        web.lane_trust.trusts(Some("shop/gw-2")),
        "not ready is still gateway"
    );
    assert!(!web.lane_trust.trusts(Some("shop/web-1")));
    assert!(!web.lane_trust.trusts(Some("gw-1")), "names are qualified");
}
