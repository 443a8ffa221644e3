//! The daemon's one model of the cluster: pods, services, endpoints, lanes and
//! rules. It is built from an [`Inventory`] that a source sends (the local
//! cluster file plus where its pods were placed, `crate::source::file`; the
//! Kubernetes API, `crate::source::kube`) and swapped atomically on every
//! change, so the proxy reads a consistent snapshot per request without
//! locks.
mod inventory;
#[cfg(test)]
mod tests;

pub use inventory::{
    EndpointEntry, FILE_NAMESPACE, Inventory, LaneEntry, PodEntry, PortMap, Readiness, RulesOrigin,
    ServiceEntry, ServicePort, SettingsSpec,
};

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::{
    config::{LANE_HEADER_ALIAS, LaneHeaderFrom},
    routing::{Candidate, LaneTrust, StickyQuery},
    rules::{RuleError, RuleSet, RuleSpec},
};

#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    /// The cgroups its processes run in; empty for a pod of another node.
    pub cgroup_ids: Vec<u64>,
    pub lane: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub pod: String,
    pub addr: SocketAddrV4,
    /// `addr` as a URI authority, made once (not per request).
    #[serde(skip)]
    pub authority: http::uri::Authority,
    pub lane: Option<String>,
    /// Flipped by the health checker and by connect failures; set from the
    /// source's readiness where it has one. Shared across snapshots by
    /// address, so a reload does not forget what was learnt.
    #[serde(serialize_with = "ser_atomic_bool")]
    pub ready: Arc<AtomicBool>,
    /// What the source said, and so whether the daemon probes it.
    pub readiness: Readiness,
}

/// `ip:port` is always a valid URI authority.
pub fn authority_of(addr: SocketAddrV4) -> http::uri::Authority {
    http::uri::Authority::from_maybe_shared(bytes::Bytes::from(addr.to_string()))
        .expect("an IPv4 socket address is a URI authority")
}

fn ser_atomic_bool<S: serde::Serializer>(v: &Arc<AtomicBool>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(v.load(Ordering::Relaxed))
}

impl Candidate for Endpoint {
    fn lane(&self) -> Option<&str> {
        self.lane.as_deref()
    }
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// One port of a service: what a destination address stands for. A
/// service with several ports is several of these, of one name (rules and
/// flows are per service name); a plain pod group is one without a port.
#[derive(Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub port: Option<u16>,
    /// The virtual address and this port.
    pub address: Option<SocketAddrV4>,
    /// Each at the target port of `port`.
    pub endpoints: Vec<Endpoint>,
    /// What the endpoints speak on this port; `None`: what each request
    /// came as.
    pub protocol: Option<crate::config::Protocol>,
    /// Whose lane header it trusts, as the source said it...
    pub lane_header_from: LaneHeaderFrom,
    /// ...and resolved to pods, which the proxy asks per request.
    pub lane_trust: LaneTrust,
    /// Round-robin position, shared across snapshots by name and port.
    #[serde(skip)]
    pub turn: Arc<AtomicUsize>,
}

/// A lane as one namespace declares it.
#[derive(Debug, Clone, Serialize)]
pub struct Lane {
    pub namespace: String,
    pub name: String,
    pub sticky: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    #[serde(serialize_with = "ser_header")]
    pub lane_header: http::HeaderName,
    #[serde(serialize_with = "ser_headers")]
    pub passthrough_headers: Vec<http::HeaderName>,
    pub body_match_limit: usize,
    pub limits: crate::config::LimitsSpec,
}

fn ser_header<S: serde::Serializer>(h: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

fn ser_headers<S: serde::Serializer>(h: &[http::HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(http::HeaderName::as_str))
}

impl Settings {
    /// The lane named by a request's headers: the configured header, else
    /// the reference product's alias.
    pub fn lane_from_headers<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        headers
            .get(&self.lane_header)
            .or_else(|| headers.get(LANE_ALIAS))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// The alias of the lane header, typed once (a `&str` key is parsed on
/// every lookup).
const LANE_ALIAS: http::HeaderName = http::HeaderName::from_static(LANE_HEADER_ALIAS);

/// What a managed destination address stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The service's virtual address (`service` indexes
    /// [`Snapshot::services`]: a service port).
    ServiceAddress { service: usize },
    /// One endpoint's own address (registry-style clients).
    Endpoint { service: usize, endpoint: usize },
}

impl Destination {
    pub fn service(&self) -> usize {
        match self {
            Self::ServiceAddress { service } | Self::Endpoint { service, .. } => *service,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub settings: Settings,
    pub namespaces: Vec<String>,
    /// Per namespace: the same name may be sticky in one and per-hop in
    /// another ([`Snapshot::stickiness`]).
    pub lanes: Vec<Lane>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    #[serde(skip)]
    pub rules: Arc<RuleSet>,
    #[serde(skip)]
    destinations: HashMap<SocketAddrV4, Destination>,
    #[serde(skip)]
    pods_by_cgroup: HashMap<u64, usize>,
    #[serde(skip)]
    pods_by_ip: HashMap<Ipv4Addr, usize>,
    #[serde(skip)]
    pods_by_name: HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {name:?} is not a valid header name")]
    Header { what: &'static str, name: String },
    #[error(transparent)]
    Rule(#[from] RuleError),
}

fn header(what: &'static str, name: &str) -> Result<http::HeaderName, StateError> {
    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| StateError::Header {
        what,
        name: name.to_string(),
    })
}

impl Snapshot {
    /// Builds the model from a source's inventory and the rules in force
    /// (the inventory's, or what `tagger rules` made of them). `previous`
    /// lends its shared counters (readiness, round-robin, rule hits) so
    /// that a reload does not reset them. Fails only on a rule that does
    /// not compile or a bad header name; nothing else in an inventory can
    /// be wrong for the model.
    pub fn build(
        inventory: &Inventory,
        rules: &[RuleSpec],
        previous: Option<&Snapshot>,
    ) -> Result<Self, StateError> {
        let compiled = rules
            .iter()
            .map(RuleSpec::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let rules = RuleSet::new(compiled, previous.map(|p| &*p.rules));
        let settings = Settings {
            lane_header: header("lane header", &inventory.settings.lane_header)?,
            passthrough_headers: inventory
                .settings
                .passthrough_headers
                .iter()
                .map(|h| header("pass-through header", h))
                .collect::<Result<_, _>>()?,
            body_match_limit: inventory.settings.body_match_limit,
            limits: inventory.settings.limits,
        };
        let pods: Vec<Pod> = inventory
            .pods
            .iter()
            .map(|p| Pod {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                ip: p.ip,
                cgroup_ids: p.cgroup_ids.clone(),
                lane: p.lane().map(str::to_string),
            })
            .collect();
        let lane_of: HashMap<&str, Option<&str>> = pods
            .iter()
            .map(|p| (p.name.as_str(), p.lane.as_deref()))
            .collect();
        let mut services = Vec::new();
        for spec in &inventory.services {
            let lane_trust = lane_trust(&spec.lane_header_from, &inventory.services);
            if spec.ports.is_empty() {
                services.push(Service {
                    name: spec.name.clone(),
                    namespace: spec.namespace.clone(),
                    port: None,
                    address: None,
                    endpoints: Vec::new(),
                    protocol: None,
                    lane_header_from: spec.lane_header_from.clone(),
                    lane_trust: lane_trust.clone(),
                    turn: previous
                        .and_then(|p| p.service_at(&spec.name, None))
                        .map(|s| s.turn.clone())
                        .unwrap_or_default(),
                });
            }
            for &ServicePort { port, protocol } in &spec.ports {
                let endpoints = spec
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        let target = e.ports.iter().find(|p| p.port == port)?.target_port;
                        let addr = SocketAddrV4::new(e.ip, target);
                        Some(endpoint(e, addr, lane_of.get(e.pod.as_str()), previous))
                    })
                    .collect();
                services.push(Service {
                    name: spec.name.clone(),
                    namespace: spec.namespace.clone(),
                    port: Some(port),
                    address: spec.address.map(|ip| SocketAddrV4::new(ip, port)),
                    endpoints,
                    protocol,
                    lane_header_from: spec.lane_header_from.clone(),
                    lane_trust: lane_trust.clone(),
                    turn: previous
                        .and_then(|p| p.service_at(&spec.name, Some(port)))
                        .map(|s| s.turn.clone())
                        .unwrap_or_default(),
                });
            }
        }
        let mut destinations = HashMap::new();
        for (si, service) in services.iter().enumerate() {
            if let Some(addr) = service.address {
                destinations.insert(addr, Destination::ServiceAddress { service: si });
            }
            for (ei, endpoint) in service.endpoints.iter().enumerate() {
                destinations.insert(
                    endpoint.addr,
                    Destination::Endpoint {
                        service: si,
                        endpoint: ei,
                    },
                );
            }
        }
        let pods_by_cgroup = pods
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.cgroup_ids.iter().map(move |id| (*id, i)))
            .collect();
        let pods_by_ip = pods.iter().enumerate().map(|(i, p)| (p.ip, i)).collect();
        let pods_by_name = pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        // Each namespace's own: a lane travels by name on the wire, but
        // whether it is sticky is what the namespace that decides says
        // ([`Snapshot::stickiness`]). One namespace declaring a name twice
        // (not possible in Kubernetes, nor in the file) is sticky if either
        // says so.
        let mut lanes: Vec<Lane> = Vec::new();
        for spec in &inventory.lanes {
            match lanes
                .iter_mut()
                .find(|l| l.namespace == spec.namespace && l.name == spec.name)
            {
                Some(lane) => lane.sticky |= spec.sticky,
                None => lanes.push(Lane {
                    namespace: spec.namespace.clone(),
                    name: spec.name.clone(),
                    sticky: spec.sticky,
                }),
            }
        }
        Ok(Self {
            settings,
            namespaces: inventory.namespaces.clone(),
            lanes,
            pods,
            services,
            rules: Arc::new(rules),
            destinations,
            pods_by_cgroup,
            pods_by_ip,
            pods_by_name,
        })
    }

    fn endpoint_ready_flag(&self, addr: SocketAddrV4) -> Option<Arc<AtomicBool>> {
        match self.destinations.get(&addr)? {
            Destination::Endpoint { service, endpoint } => {
                Some(self.services[*service].endpoints[*endpoint].ready.clone())
            }
            Destination::ServiceAddress { .. } => None,
        }
    }

    pub fn destination(&self, addr: SocketAddrV4) -> Option<Destination> {
        self.destinations.get(&addr).copied()
    }

    /// Every managed destination, for the kernel's map.
    pub fn destinations(&self) -> impl Iterator<Item = (SocketAddrV4, Destination)> + '_ {
        self.destinations.iter().map(|(a, d)| (*a, *d))
    }

    /// The pod a flow came from: by cgroup (what the kernel saw at connect),
    /// else by source address.
    pub fn source_pod(&self, cgroup_id: u64, ip: Ipv4Addr) -> Option<&Pod> {
        self.pods_by_cgroup
            .get(&cgroup_id)
            .or_else(|| self.pods_by_ip.get(&ip))
            .map(|i| &self.pods[*i])
    }

    /// Whether `namespace` declares `lane` sticky. A lane it does not
    /// declare is not (another namespace's declaration does not count).
    pub fn is_sticky(&self, namespace: &str, lane: &str) -> bool {
        self.lanes
            .iter()
            .any(|l| l.sticky && l.name == lane && l.namespace == namespace)
    }

    /// What [`crate::routing::decide_lane`] asks for a request to
    /// `service` from the pod named `caller` (`None`: not a pod). A lane
    /// is declared per namespace (`TrafficLane`), so the same name may be
    /// sticky in one and per-hop in another; the declaration that counts
    /// is the one of the namespace whose object put the request in it:
    ///
    /// - a rule's lane: the rule's namespace, which is the destination
    ///   service's (a `TrafficRule` names a Service and lanes of its own
    ///   namespace);
    /// - the caller's own lane (the sticky pod lane): the caller pod's
    ///   namespace. A pod the model no longer has (its connection
    ///   outlived it) has none: its lane is not sticky.
    ///
    /// A lane that arrived in a header, or inherited, is carried whatever
    /// any namespace says (it was sticky or explicit where it started).
    /// The cluster file is one namespace ([`FILE_NAMESPACE`]).
    pub fn stickiness<'a>(
        &'a self,
        service: &'a Service,
        caller: Option<&'a str>,
    ) -> impl Fn(StickyQuery<'_>) -> bool + 'a {
        move |query| match query {
            StickyQuery::RuleLane(lane) => self.is_sticky(&service.namespace, lane),
            StickyQuery::CallerLane(lane) => caller
                .and_then(|name| self.pods_by_name.get(name))
                .is_some_and(|&i| self.is_sticky(&self.pods[i].namespace, lane)),
        }
    }

    /// The service port a connection was made to (`None`: a pod group).
    pub fn service_at(&self, name: &str, port: Option<u16>) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.port == port && s.name == name)
    }

    /// Every cgroup of this node's pods, for the kernel's pod cgroup map.
    pub fn pod_cgroups(&self) -> std::collections::HashSet<u64> {
        self.pods_by_cgroup.keys().copied().collect()
    }
}

/// A service's `lane_header_from` resolved to the pods it trusts: every pod
/// of each listed service. A listed service the inventory does not have
/// (a Kubernetes Service not created yet) has no pods to trust.
fn lane_trust(from: &LaneHeaderFrom, services: &[ServiceEntry]) -> LaneTrust {
    match from {
        LaneHeaderFrom::Any => LaneTrust::Any,
        LaneHeaderFrom::Nobody => LaneTrust::Nobody,
        LaneHeaderFrom::Services(names) => LaneTrust::Pods(Arc::new(
            services
                .iter()
                .filter(|s| names.contains(&s.name))
                .flat_map(|s| s.pods.iter().cloned())
                .collect(),
        )),
    }
}

/// The live model, swapped as a whole.
pub type StateHandle = Arc<ArcSwap<Snapshot>>;

/// An endpoint of the model, its readiness flag lent by `previous` and set
/// from the source where the source knows.
fn endpoint(
    entry: &EndpointEntry,
    addr: SocketAddrV4,
    lane: Option<&Option<&str>>,
    previous: Option<&Snapshot>,
) -> Endpoint {
    let ready = previous
        .and_then(|p| p.endpoint_ready_flag(addr))
        .unwrap_or_default();
    match entry.readiness {
        Readiness::Probe => {}
        Readiness::Ready => ready.store(true, Ordering::Relaxed),
        Readiness::NotReady | Readiness::Terminating => ready.store(false, Ordering::Relaxed),
    }
    Endpoint {
        pod: entry.pod.clone(),
        addr,
        authority: authority_of(addr),
        lane: lane.copied().flatten().map(str::to_string),
        ready,
        readiness: entry.readiness,
    }
}
