//! The daemon's one model of the cluster: pods, services, endpoints, lanes and
//! rules. It is built from a source (the local cluster file plus where its
//! pods were placed; the Kubernetes API in a cluster) and swapped atomically
//! on every change, so the proxy reads a consistent snapshot per request
//! without locks.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::{
    config::{ClusterFile, LANE_HEADER_ALIAS},
    routing::Candidate,
    rules::{RuleError, RuleSet},
};

/// Where the pods of a source run: addresses and cgroups. The local cluster
/// writes it when it starts pods; in Kubernetes it comes from the API and the
/// kubelet's cgroups.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Placement {
    pub pods: Vec<PlacedPod>,
    pub services: Vec<PlacedService>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlacedPod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlacedService {
    pub name: String,
    /// The virtual address callers reach the service by.
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    pub name: String,
    pub service: String,
    pub ip: Ipv4Addr,
    pub cgroup_id: u64,
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
    /// Flipped by the health checker; shared across snapshots by pod name.
    #[serde(serialize_with = "ser_atomic_bool")]
    pub ready: Arc<AtomicBool>,
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

#[derive(Debug, Serialize)]
pub struct Service {
    pub name: String,
    pub address: Option<SocketAddrV4>,
    pub endpoints: Vec<Endpoint>,
    /// What the endpoints speak; `None`: what each request came as.
    pub protocol: Option<crate::config::Protocol>,
    /// Round-robin position, shared across snapshots by service name.
    #[serde(skip)]
    pub turn: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lane {
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
    /// The service's virtual address.
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
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("pod {pod:?} of the cluster file has no placement (was it started?)")]
    Unplaced { pod: String },
    #[error(transparent)]
    Rule(#[from] RuleError),
}

impl Snapshot {
    /// Builds the model. `previous` lends its shared counters (readiness,
    /// round-robin, rule hits) so that a reload does not reset them.
    pub fn build(
        file: &ClusterFile,
        placement: &Placement,
        previous: Option<&Snapshot>,
    ) -> Result<Self, StateError> {
        let rules = file
            .rules
            .iter()
            .map(|r| r.compile())
            .collect::<Result<Vec<_>, _>>()?;
        Self::build_with_rules(
            file,
            placement,
            RuleSet::new(rules, previous.map(|p| &*p.rules)),
            previous,
        )
    }

    pub fn build_with_rules(
        file: &ClusterFile,
        placement: &Placement,
        rules: RuleSet,
        previous: Option<&Snapshot>,
    ) -> Result<Self, StateError> {
        let placed: HashMap<&str, &PlacedPod> = placement
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let addresses: HashMap<&str, Ipv4Addr> = placement
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.address))
            .collect();
        let mut pods = Vec::new();
        let mut services = Vec::new();
        for spec in &file.services {
            let mut endpoints = Vec::new();
            for pod_spec in &spec.pods {
                let placed =
                    placed
                        .get(pod_spec.name.as_str())
                        .ok_or_else(|| StateError::Unplaced {
                            pod: pod_spec.name.clone(),
                        })?;
                let lane = pod_spec.effective_lane().map(str::to_string);
                pods.push(Pod {
                    name: pod_spec.name.clone(),
                    service: spec.name.clone(),
                    ip: placed.ip,
                    cgroup_id: placed.cgroup_id,
                    lane: lane.clone(),
                });
                if let Some(port) = spec.port {
                    let ready = previous
                        .and_then(|p| p.endpoint_ready_flag(&pod_spec.name))
                        .unwrap_or_default();
                    let addr = SocketAddrV4::new(placed.ip, port);
                    endpoints.push(Endpoint {
                        pod: pod_spec.name.clone(),
                        addr,
                        authority: authority_of(addr),
                        lane,
                        ready,
                    });
                }
            }
            let address = match (spec.port, addresses.get(spec.name.as_str())) {
                (Some(port), Some(ip)) => Some(SocketAddrV4::new(*ip, port)),
                _ => None,
            };
            let turn = previous
                .and_then(|p| p.services.iter().find(|s| s.name == spec.name))
                .map(|s| s.turn.clone())
                .unwrap_or_default();
            services.push(Service {
                name: spec.name.clone(),
                address,
                endpoints,
                protocol: spec.protocol,
                turn,
            });
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
            .map(|(i, p)| (p.cgroup_id, i))
            .collect();
        let pods_by_ip = pods.iter().enumerate().map(|(i, p)| (p.ip, i)).collect();
        let settings = Settings {
            lane_header: http::HeaderName::from_bytes(file.lane_header.as_bytes())
                .expect("validated with the file"),
            passthrough_headers: file
                .passthrough_headers
                .iter()
                .map(|h| {
                    http::HeaderName::from_bytes(h.as_bytes()).expect("validated with the file")
                })
                .collect(),
            body_match_limit: file.body_match_limit,
            limits: file.limits,
        };
        Ok(Self {
            settings,
            lanes: file
                .lanes
                .iter()
                .map(|l| Lane {
                    name: l.name.clone(),
                    sticky: l.sticky,
                })
                .collect(),
            pods,
            services,
            rules: Arc::new(rules),
            destinations,
            pods_by_cgroup,
            pods_by_ip,
        })
    }

    fn endpoint_ready_flag(&self, pod: &str) -> Option<Arc<AtomicBool>> {
        self.services
            .iter()
            .flat_map(|s| &s.endpoints)
            .find(|e| e.pod == pod)
            .map(|e| e.ready.clone())
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

    pub fn is_sticky(&self, lane: &str) -> bool {
        self.lanes.iter().any(|l| l.name == lane && l.sticky)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The live model, swapped as a whole.
pub type StateHandle = Arc<ArcSwap<Snapshot>>;
