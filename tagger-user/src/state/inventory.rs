//! What a source knows about the cluster, in no source's terms: the one
//! input of the state model ([`super::Snapshot::build`]). The local cluster
//! file (with its placement) is one source, the Kubernetes API the other;
//! each sends a whole `Inventory` whenever something changed, never a
//! piece of one, so the model is never built from half an update.
//!
//! Names are the source's own, already unique across the inventory: the
//! file's pod and service names; `namespace/name` in Kubernetes, where
//! two namespaces may both have a `charge`.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::Serialize;

use crate::{
    config::{LANE_LABELS, LaneHeaderFrom, LaneSpec, LimitsSpec, Protocol},
    rules::RuleSpec,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    pub settings: SettingsSpec,
    /// The namespaces whose pods are managed (the file's pods are all in
    /// one, unnamed).
    pub namespaces: Vec<String>,
    /// Each namespace's lanes: a lane's name may be declared in several,
    /// each with its own `sticky`.
    pub lanes: Vec<LaneEntry>,
    pub services: Vec<ServiceEntry>,
    pub pods: Vec<PodEntry>,
    pub rules: Vec<RuleSpec>,
    /// Where the rules come from, and so whether `tagger rules apply` may
    /// change them.
    pub rules_origin: RulesOrigin,
}

/// Settings every request reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsSpec {
    pub lane_header: String,
    pub passthrough_headers: Vec<String>,
    pub body_match_limit: usize,
    pub limits: LimitsSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesOrigin {
    /// The cluster file. `tagger rules apply|enable|disable|delete` change
    /// the rules in force until the file's rules change again (a new
    /// `revision`): an edited file is the newest intent.
    File { revision: u64 },
    /// `TrafficRule` objects: the API is where rules are changed.
    Api,
}

/// The namespace of the cluster file: its pods, services and lanes are
/// all in this one, unnamed.
pub const FILE_NAMESPACE: &str = "";

/// A lane as one namespace declares it (a `TrafficLane`; the cluster
/// file's `lanes:` entries, all in [`FILE_NAMESPACE`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaneEntry {
    pub namespace: String,
    pub name: String,
    pub sticky: bool,
}

impl LaneEntry {
    pub fn new(namespace: &str, spec: &LaneSpec) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: spec.name.clone(),
            sticky: spec.sticky,
        }
    }
}

/// A service: a name, maybe a virtual address, the ports callers use, and
/// the endpoints serving them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceEntry {
    pub name: String,
    /// Its namespace (whose lanes its rules put requests in).
    pub namespace: String,
    /// The virtual (cluster) address; `None` for a headless service or a
    /// plain pod group.
    pub address: Option<Ipv4Addr>,
    /// The ports callers use. Empty: a plain pod group, nothing to route.
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<EndpointEntry>,
    /// Every pod that is this service, serving or not (a pod group has no
    /// endpoints): a `lane_header_from` list that names the service trusts
    /// them as callers. The file's pods; in Kubernetes the pods its
    /// EndpointSlices name.
    pub pods: Vec<String>,
    /// Whose lane header a request to the service may be in.
    pub lane_header_from: LaneHeaderFrom,
}

/// A port callers use, and what the endpoints speak on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub port: u16,
    /// The file's `protocol:`, Kubernetes' `appProtocol`; `None`: what
    /// each request came as.
    pub protocol: Option<Protocol>,
}

impl ServicePort {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            protocol: None,
        }
    }
}

/// One address serving a service, with the port each service port reaches
/// on it (Kubernetes' `targetPort`, resolved per endpoint: a named port may
/// be a different number on each pod).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointEntry {
    /// The pod behind the address (its lane is the endpoint's), or the
    /// address itself when the source does not say.
    pub pod: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<PortMap>,
    pub readiness: Readiness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortMap {
    /// The service port a caller connects to.
    pub port: u16,
    /// Where that reaches the endpoint.
    pub target_port: u16,
}

/// Whether an endpoint takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// The source does not know: the daemon probes it (a TCP connect every
    /// second), as the local cluster has no kubelet.
    Probe,
    /// Ready by the source (EndpointSlice condition `ready`).
    Ready,
    /// Not ready by the source: no new requests.
    NotReady,
    /// Going away (`terminating`): no new requests, while the ones it has
    /// finish.
    Terminating,
}

/// A pod: where it is, which lane, and the cgroups its processes run in
/// (only this node's pods have any; their ids go to the kernel).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodEntry {
    pub name: String,
    /// Its namespace (whose lanes say whether its own lane is sticky).
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// The lane, when the source names it apart from the labels (the
    /// file's `lane:`); else the lane labels decide ([`PodEntry::lane`]).
    pub lane: Option<String>,
    pub cgroup_ids: Vec<u64>,
}

impl PodEntry {
    /// `lane`, else the first lane label (`tagger.io/lane`, then the
    /// reference product's `alicloud.service.tag`); `None` is baseline.
    pub fn lane(&self) -> Option<&str> {
        self.lane.as_deref().or_else(|| {
            LANE_LABELS
                .iter()
                .find_map(|label| self.labels.get(*label).map(String::as_str))
                .filter(|lane| !lane.is_empty())
        })
    }
}
