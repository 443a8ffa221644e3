//! The cluster the two-node test runs: which pods, on which node, in which
//! lane, running what. Every call chain crosses nodes at every hop, so the
//! lane travels on the wire between the nodes' proxies.
//!
//! | namespace | what | pods (node) |
//! |-----------|------|-------------|
//! | `shop` (managed) | SPEC scenario A: `device -> charge -> order -> base`, `demo/app.py` | device-v1 (a), charge-v1 (a), charge-v2 gray (b), order-v1 (b), order-v2 gray (a), base-v1 (b) |
//! | `abc` (managed) | SPEC scenario B: `a -> b -> c`, `hop.py` copying no header | a-base (a), a-gray (b), b-base (b), b-gray (a), c-base (a), c-gray (b); client-a (a), client-b (b) |
//! | `plain` (not labelled) | left alone | web-1 (a) |
use std::net::Ipv4Addr;

use serde_json::{Value, json};
use tagger_test_apiserver::objects;

use super::cgroups::Qos;

/// Every service's port (and its pods' target port).
pub const PORT: u16 = 8080;
pub const NODE_NAMES: [&str; 2] = ["node-a", "node-b"];
/// The nodes' addresses on the bridge.
pub const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)];

#[derive(Debug, Clone)]
pub struct PodDef {
    pub ns: &'static str,
    pub name: &'static str,
    /// Index into [`NODE_NAMES`].
    pub node: usize,
    /// The Service whose endpoint it is.
    pub service: Option<&'static str>,
    /// The lane label `(key, lane)`.
    pub lane: Option<(&'static str, &'static str)>,
    pub qos: Qos,
    pub ip: Ipv4Addr,
    /// Relative paths from the workspace root.
    pub command: Vec<String>,
}

pub struct ServiceDef {
    pub ns: &'static str,
    pub name: &'static str,
    pub cluster_ip: Ipv4Addr,
}

pub fn services() -> Vec<ServiceDef> {
    let list = [
        ("shop", "device"),
        ("shop", "charge"),
        ("shop", "order"),
        ("shop", "base"),
        ("abc", "a"),
        ("abc", "b"),
        ("abc", "c"),
        ("plain", "web"),
    ];
    list.iter()
        .zip(1u8..)
        .map(|(&(ns, name), host)| ServiceDef {
            ns,
            name,
            cluster_ip: Ipv4Addr::new(10, 96, 0, host),
        })
        .collect()
}

const GRAY: Option<(&str, &str)> = Some(("tagger.io/lane", "gray"));
/// The field report's label, as MSE users have it.
const MSE_GRAY: Option<(&str, &str)> = Some(("alicloud.service.tag", "gray"));

/// (namespace, name, node, Service, lane label, command).
type Row = (
    &'static str,
    &'static str,
    usize,
    Option<&'static str>,
    Option<(&'static str, &'static str)>,
    Vec<String>,
);

/// The pods present from the start, each with its own address.
pub fn pods() -> Vec<PodDef> {
    let demo = |service: &str, version: &str| -> Vec<String> {
        [
            "python3",
            "demo/app.py",
            "--service",
            service,
            "--version",
            version,
        ]
        .map(String::from)
        .to_vec()
    };
    let hop = |next: Option<&str>| -> Vec<String> {
        let mut command = vec!["python3".to_string(), "tests/apps/hop.py".into()];
        if let Some(next) = next {
            command.extend(["--next".into(), format!("http://{next}:{PORT}/")]);
        }
        command
    };
    let sleep = || vec!["sleep".to_string(), "infinity".into()];
    #[rustfmt::skip]
    let table: Vec<Row> = vec![
        ("shop", "device-v1", 0, Some("device"), None, demo("device", "v1111")),
        ("shop", "charge-v1", 0, Some("charge"), None, demo("charge", "v1111")),
        ("shop", "charge-v2", 1, Some("charge"), MSE_GRAY, demo("charge", "v2222")),
        ("shop", "order-v1", 1, Some("order"), None, demo("order", "v1111")),
        ("shop", "order-v2", 0, Some("order"), MSE_GRAY, demo("order", "v2222")),
        ("shop", "base-v1", 1, Some("base"), None, demo("base", "v1111")),
        ("abc", "a-base", 0, Some("a"), None, hop(Some("b"))),
        ("abc", "a-gray", 1, Some("a"), GRAY, hop(Some("b"))),
        ("abc", "b-base", 1, Some("b"), None, hop(Some("c"))),
        ("abc", "b-gray", 0, Some("b"), GRAY, hop(Some("c"))),
        ("abc", "c-base", 0, Some("c"), None, hop(None)),
        ("abc", "c-gray", 1, Some("c"), GRAY, hop(None)),
        ("abc", "client-a", 0, None, None, sleep()),
        ("abc", "client-b", 1, None, None, sleep()),
        ("plain", "web-1", 0, Some("web"), None, hop(None)),
    ];
    let qos = [Qos::Burstable, Qos::BestEffort, Qos::Guaranteed];
    let mut next_host = [10u8, 10u8];
    table
        .into_iter()
        .enumerate()
        .map(|(i, (ns, name, node, service, lane, command))| {
            next_host[node] += 1;
            PodDef {
                ns,
                name,
                node,
                service,
                lane,
                qos: qos[i % qos.len()],
                ip: Ipv4Addr::new(10, 77, node as u8 + 1, next_host[node]),
                command,
            }
        })
        .collect()
}

/// One of the pods present from the start, as it was defined.
pub fn pod_def(name: &str) -> PodDef {
    pods()
        .into_iter()
        .find(|p| p.name == name)
        .expect("a pod of the fixture")
}

/// b's gray pod as a rolling update makes it anew: on the other node, at
/// another address.
pub fn b_gray_replacement() -> PodDef {
    let b_gray = pod_def("b-gray");
    PodDef {
        name: "b-gray2",
        node: 1,
        qos: Qos::Burstable,
        ip: Ipv4Addr::new(10, 77, 2, 99),
        ..b_gray
    }
}

/// The Pod object kubelet's node would show.
pub fn pod_object(pod: &PodDef, uid: &str) -> Value {
    let mut object = objects::pod(
        pod.ns,
        pod.name,
        uid,
        NODE_NAMES[pod.node],
        &pod.ip.to_string(),
        None,
        false,
    );
    object["metadata"]["labels"]["app"] = json!(pod.service.unwrap_or(pod.name));
    if let Some((key, lane)) = pod.lane {
        object["metadata"]["labels"][key] = json!(lane);
    }
    object["status"]["qosClass"] = json!(pod.qos.status());
    object
}

/// One endpoint of a slice: its pod, address and conditions.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub pod: &'static str,
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub terminating: bool,
}

pub fn slice_object(ns: &str, service: &str, endpoints: &[Endpoint]) -> Value {
    let ips: Vec<String> = endpoints.iter().map(|e| e.ip.to_string()).collect();
    let rows: Vec<(&str, &str, bool, bool)> = endpoints
        .iter()
        .zip(&ips)
        .map(|(e, ip)| (ip.as_str(), e.pod, e.ready, e.terminating))
        .collect();
    objects::slice(ns, service, &rows, &[("http", PORT)])
}

/// Namespaces, Services, lanes and the field report's rule: what does not
/// follow the pods.
pub fn static_objects() -> Vec<Value> {
    let mut all = vec![
        objects::namespace("shop", true),
        objects::namespace("abc", true),
        objects::namespace("plain", false),
        objects::lane("shop", "gray", true),
        objects::lane("abc", "gray", true),
        charge_rule(),
    ];
    for s in services() {
        all.push(objects::service(
            s.ns,
            s.name,
            &s.cluster_ip.to_string(),
            &[("http", PORT)],
        ));
    }
    all
}

/// SPEC scenario A's rule on charge.
fn charge_rule() -> Value {
    json!({"apiVersion": "tagger.io/v1alpha1", "kind": "TrafficRule",
           "metadata": {"name": "charge-gray", "namespace": "shop"},
           "spec": {"service": "charge", "lane": "gray", "mode": "any", "conditions": [
               {"source": "query", "name": "userId", "op": "in", "values": ["111", "222", "333"]},
               {"source": "query", "name": "userId", "op": "mod100", "cmp": "=", "value": 1},
               {"source": "header", "name": "mse-username", "op": "in", "values": ["msd01", "msd02", "msd03"]}]}})
}

/// A rule on `abc/b` putting requests with header `x-user-id` in `values`
/// in the gray lane.
pub fn user_rule(name: &str, values: &[&str]) -> Value {
    json!({"apiVersion": "tagger.io/v1alpha1", "kind": "TrafficRule",
           "metadata": {"name": name, "namespace": "abc"},
           "spec": {"service": "b", "lane": "gray", "mode": "any", "conditions": [
               {"source": "header", "name": "x-user-id", "op": "in", "values": values}]}})
}

/// A big cluster around the fixture's ([`scale`]): namespaces, of which
/// the first few are managed; Services per namespace; pods per Service.
pub const SCALE_NAMESPACES: usize = 200;
pub const SCALE_MANAGED: usize = 10;
pub const SCALE_SERVICES_PER_NAMESPACE: usize = 50;
pub const SCALE_PODS_PER_SERVICE: usize = 10;
/// The other nodes the big cluster's pods run on.
pub const SCALE_NODES: usize = 1000;

/// `scale-NNN`: managed for `n < SCALE_MANAGED`.
pub fn scale_namespace(n: usize) -> String {
    format!("scale-{n:03}")
}

/// 100k pods and 10k Services with their EndpointSlices in 200
/// namespaces, 10 of them managed (500 Services, 5k pods): the API of a
/// big cluster the two nodes are a small part of. Pods run on 1000 other
/// nodes, but for one in 500 of the unmanaged namespaces' on node-a or
/// node-b (other workloads of the daemons' nodes). Shaped as the API
/// serves them (owner, template hash, conditions, container status), but
/// small. Addresses: pods 100.64.0.0/10, Services 10.100.0.0/16.
pub fn scale() -> Vec<Value> {
    let mut all = Vec::new();
    let mut pod_index: u32 = 0;
    for n in 0..SCALE_NAMESPACES {
        let ns = scale_namespace(n);
        let managed = n < SCALE_MANAGED;
        all.push(objects::namespace(&ns, managed));
        for s in 0..SCALE_SERVICES_PER_NAMESPACE {
            let service = format!("svc-{s:02}");
            let number = (n * SCALE_SERVICES_PER_NAMESPACE + s) as u32;
            let cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + number);
            all.push(objects::service(
                &ns,
                &service,
                &cluster_ip.to_string(),
                &[("http", PORT)],
            ));
            let hash = format!("{:010x}", u64::from(number) * 0x9e37_79b9);
            let mut endpoints = Vec::new();
            for p in 0..SCALE_PODS_PER_SERVICE {
                pod_index += 1;
                let name = format!("{service}-{}-{:05x}", &hash[..8], pod_index);
                let ip =
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + pod_index).to_string();
                let node = if !managed && pod_index.is_multiple_of(500) {
                    NODE_NAMES[(pod_index / 500) as usize % 2].to_string()
                } else {
                    format!("worker-{:04}", pod_index as usize % SCALE_NODES)
                };
                let lane = (managed && p == 0).then_some("gray");
                all.push(scale_pod(&ns, &service, &name, &hash, &node, &ip, lane));
                endpoints.push((ip, name));
            }
            let rows: Vec<(&str, &str, bool, bool)> = endpoints
                .iter()
                .map(|(ip, name)| (ip.as_str(), name.as_str(), true, false))
                .collect();
            let mut slice = objects::slice(&ns, &service, &rows, &[("http", PORT)]);
            slice["metadata"]["name"] = json!(format!("{service}-{}", &hash[..5]));
            all.push(slice);
        }
    }
    all
}

fn scale_pod(
    ns: &str,
    service: &str,
    name: &str,
    hash: &str,
    node: &str,
    ip: &str,
    lane: Option<&str>,
) -> Value {
    let mut pod = objects::pod(ns, name, "", node, ip, lane, false);
    pod["metadata"]["uid"] = Value::Null;
    pod["metadata"]["labels"]["app"] = json!(service);
    pod["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    pod["metadata"]["generateName"] = json!(format!("{service}-{}-", &hash[..8]));
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": format!("{service}-{}", &hash[..8]), "uid": "5e1f0000-0000-4000-8000-000000000000",
        "controller": true, "blockOwnerDeletion": true}]);
    pod["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": PORT, "protocol": "TCP"}]);
    pod["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}});
    pod["spec"]["serviceAccountName"] = json!("default");
    pod["status"]["hostIP"] = json!("10.0.0.1");
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    pod["status"]["containerStatuses"] =
        json!([{"name": "app", "ready": true, "restartCount": 0, "image": "app:1"}]);
    pod
}
