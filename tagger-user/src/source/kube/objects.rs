//! Kubernetes objects to the little the daemon keeps of each: a watcher's
//! event is converted at once and the object dropped, so the daemon's
//! memory follows what it uses, not the size of the API's objects.
use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    ResourceExt,
    core::{ObjectMeta, PartialObjectMeta},
};

use crate::{
    config::{LaneHeaderFrom, Protocol},
    kubernetes::{cgroups::QosClass, convert},
};

/// The label a Namespace needs for its pods to be managed (SPEC.md,
/// section E).
pub const MANAGED_LABEL: &str = "tagger.io/lanes";
pub const MANAGED_VALUE: &str = "enabled";
/// The label that joins an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kubelet names a static pod's cgroup by this annotation, not the mirror
/// pod's UID.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// `namespace/name`: how objects are keyed, and how the model names them.
pub type Key = (String, String);

fn key(meta: &ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// Whether the namespace's pods are managed.
pub fn is_managed(namespace: &Namespace) -> bool {
    namespace
        .labels()
        .get(MANAGED_LABEL)
        .is_some_and(|v| v == MANAGED_VALUE)
}

/// A managed namespace, keyed `("", name)`; others are not kept.
pub fn namespace(namespace: &Namespace) -> Option<(Key, ())> {
    is_managed(namespace).then_some(())?;
    Some(((String::new(), namespace.metadata.name.clone()?), ()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortRec {
    /// Matches the EndpointSlice port of the same name ("" when unnamed:
    /// a Service with one port may leave it so).
    pub name: String,
    pub port: u16,
    /// From `appProtocol`.
    pub protocol: Option<Protocol>,
}

/// A port's `appProtocol` as what the proxy speaks to the endpoints: the
/// standard name of h2c, gRPC's, and plain HTTP's; any other (TLS, a
/// vendor's name) says nothing the proxy can use, so each request goes as
/// it came.
pub fn app_protocol(name: &str) -> Option<Protocol> {
    match name {
        "kubernetes.io/h2c" | "h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "http" | "HTTP" => Some(Protocol::Http1),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRec {
    /// The ClusterIP; `None` for a headless Service (callers reach its
    /// pods by their own addresses) or an ExternalName one.
    pub cluster_ip: Option<Ipv4Addr>,
    /// TCP ports only: tagger routes HTTP over TCP.
    pub ports: Vec<ServicePortRec>,
    /// From the `tagger.io/lane-header-from` annotation; names unqualified.
    pub lane_header_from: LaneHeaderFrom,
}

pub fn service(service: &Service) -> Option<(Key, ServiceRec)> {
    let spec = service.spec.as_ref()?;
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(ServicePortRec {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                protocol: p.app_protocol.as_deref().and_then(app_protocol),
            })
        })
        .collect();
    // A lock that cannot be read locks: trusting every caller because of
    // a typo would open what the operator meant to close.
    let lane_header_from = convert::lane_header_from(service).unwrap_or_else(|error| {
        tracing::warn!(%error, "no caller's lane header is trusted until the annotation is fixed");
        LaneHeaderFrom::Nobody
    });
    Some((
        key(&service.metadata)?,
        ServiceRec {
            cluster_ip,
            ports,
            lane_header_from,
        },
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Ready,
    NotReady,
    Terminating,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub ip: Ipv4Addr,
    /// The pod behind the address (`targetRef` of kind Pod).
    pub pod: Option<String>,
    pub condition: Condition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRec {
    /// The Service's name (label `kubernetes.io/service-name`).
    pub service: String,
    /// (port name, number on the endpoints), TCP only.
    pub ports: Vec<(String, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// An EndpointSlice of IPv4 addresses that names its Service; others (IPv6,
/// FQDN, a slice a controller made for no Service) are not routed.
pub fn endpoint_slice(slice: &EndpointSlice) -> Option<(Key, SliceRec)> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let service = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    let mut endpoints = Vec::new();
    for endpoint in &slice.endpoints {
        let (ready, terminating) = endpoint
            .conditions
            .as_ref()
            .map_or((None, None), |c| (c.ready, c.terminating));
        // `ready` unset means ready (the API's own reading of it); a
        // terminating endpoint takes no new requests even while it still
        // serves the ones it has.
        let condition = match (ready, terminating) {
            (_, Some(true)) => Condition::Terminating,
            (Some(false), _) => Condition::NotReady,
            _ => Condition::Ready,
        };
        let pod = endpoint
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        for address in &endpoint.addresses {
            if let Ok(ip) = address.parse() {
                endpoints.push(SliceEndpoint {
                    ip,
                    pod: pod.clone(),
                    condition,
                });
            }
        }
    }
    Some((
        key(&slice.metadata)?,
        SliceRec {
            service,
            ports,
            endpoints,
        },
    ))
}

/// What is kept of every pod of the cluster: its labels (its lane).
pub fn pod_labels(meta: &PartialObjectMeta<Pod>) -> Option<(Key, BTreeMap<String, String>)> {
    Some((
        key(&meta.metadata)?,
        meta.metadata.labels.clone().unwrap_or_default(),
    ))
}

/// A pod of this node, as far as its cgroups and address go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePodRec {
    /// What kubelet names the pod's cgroup by.
    pub cgroup_uid: String,
    pub qos: Option<QosClass>,
    pub ip: Option<Ipv4Addr>,
    pub labels: BTreeMap<String, String>,
}

/// A pod of this node that tagger may manage: not hostNetwork (its
/// processes are the node's: never redirected), not finished.
pub fn node_pod(pod: &Pod) -> Option<(Key, NodePodRec)> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let uid = pod.metadata.uid.as_deref()?;
    let mirror = pod.annotations().get(MIRROR_ANNOTATION).map(String::as_str);
    Some((
        key(&pod.metadata)?,
        NodePodRec {
            cgroup_uid: crate::kubernetes::cgroups::cgroup_uid(uid, mirror).to_string(),
            qos: status
                .and_then(|s| s.qos_class.as_deref())
                .and_then(QosClass::from_status),
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            labels: pod.labels().clone(),
        },
    ))
}

/// A `TrafficLane` as the lane it declares; one whose name tagger cannot
/// use (it travels in a header) is left out, and said so.
pub fn lane(lane: &crate::kubernetes::TrafficLane) -> Option<(Key, crate::config::LaneSpec)> {
    match crate::kubernetes::convert::lane_spec(lane) {
        Ok(spec) => Some((key(&lane.metadata)?, spec)),
        Err(e) => {
            tracing::warn!(error = %e, "TrafficLane ignored");
            None
        }
    }
}
