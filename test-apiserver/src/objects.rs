//! Kubernetes objects as the API serves them, as JSON: what a test puts
//! in the [`crate::ApiServer`]. Only the fields tagger reads.
use serde_json::{Value, json};

pub fn namespace(name: &str, managed: bool) -> Value {
    let labels = if managed {
        json!({"tagger.io/lanes": "enabled"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels}, "status": {"phase": "Active"}})
}

/// A Service with ports `(name, port)`, each to the pods' named port.
pub fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, u16)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                    "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP", "targetPort": n})).collect::<Vec<_>>()}})
}

/// An EndpointSlice of `service`: endpoints `(ip, pod, ready, terminating)`,
/// ports `(name, target port)`.
pub fn slice(
    ns: &str,
    service: &str,
    endpoints: &[(&str, &str, bool, bool)],
    ports: &[(&str, u16)],
) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("{service}-abc12"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": service}},
           "endpoints": endpoints.iter().map(|(ip, pod, ready, terminating)| json!({
               "addresses": [ip], "conditions": {"ready": ready, "serving": true, "terminating": terminating},
               "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}})).collect::<Vec<_>>(),
           "ports": ports.iter().map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"})).collect::<Vec<_>>()})
}

pub fn pod(
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
    ip: &str,
    lane: Option<&str>,
    host_network: bool,
) -> Value {
    let mut labels = json!({"app": name.rsplit_once('-').map_or(name, |(a, _)| a)});
    if let Some(lane) = lane {
        labels["tagger.io/lane"] = json!(lane);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
           "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "app", "image": "app:1"}]},
           "status": {"phase": "Running", "qosClass": "Burstable", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

pub fn lane(ns: &str, name: &str, sticky: bool) -> Value {
    json!({"apiVersion": "tagger.io/v1alpha1", "kind": "TrafficLane",
           "metadata": {"name": name, "namespace": ns}, "spec": {"sticky": sticky}})
}

pub fn rule(ns: &str, name: &str, service: &str, op: &str) -> Value {
    json!({"apiVersion": "tagger.io/v1alpha1", "kind": "TrafficRule",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"service": service, "lane": "gray", "mode": "any",
                    "conditions": [{"source": "query", "name": "userId", "op": op, "values": ["111", "222"]}]}})
}
