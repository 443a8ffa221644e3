//! The stores of every kind joined into one inventory: only managed
//! namespaces count; EndpointSlices join their Service by name; an
//! endpoint's lane is its pod's; this node's pods bring their cgroups; each
//! `TrafficRule` is checked against its namespace's Services and lanes, and
//! only accepted ones are in force (the others get `Accepted=False`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use super::{
    objects::{Condition, NodePodRec, ServiceRec, SliceRec},
    store::Store,
};
use crate::{
    config::{LaneHeaderFrom, LaneSpec},
    kubernetes::{TrafficRule, TrafficRuleSpec, TrafficRuleStatus, convert::checked_rule_spec},
    rules::RuleSpec,
    state::{
        EndpointEntry, Inventory, LaneEntry, PodEntry, PortMap, Readiness, RulesOrigin,
        ServiceEntry, ServicePort, SettingsSpec,
    },
};

/// What is kept of a `TrafficRule`: its spec, and what its status says now
/// (so that an unchanged verdict is not written again).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRec {
    pub spec: TrafficRuleSpec,
    pub generation: Option<i64>,
    pub status: Option<TrafficRuleStatus>,
}

pub fn rule(rule: &TrafficRule) -> Option<(super::objects::Key, RuleRec)> {
    let meta = &rule.metadata;
    Some((
        (meta.namespace.clone()?, meta.name.clone()?),
        RuleRec {
            spec: rule.spec.clone(),
            generation: meta.generation,
            status: rule.status.clone(),
        },
    ))
}

#[derive(Default)]
pub struct Stores {
    /// Managed namespaces, keyed `("", name)`.
    pub namespaces: Store<()>,
    pub services: Store<ServiceRec>,
    pub slices: Store<SliceRec>,
    /// Managed namespaces' pods' labels.
    pub pods: Store<BTreeMap<String, String>>,
    /// This node's pods.
    pub node_pods: Store<NodePodRec>,
    pub lanes: Store<LaneSpec>,
    pub rules: Store<RuleRec>,
}

impl Stores {
    /// Every kind has been listed once, the ones watched per managed
    /// namespace in each.
    pub fn synced(&self) -> bool {
        self.namespaces.synced
            && self.node_pods.synced
            && self.lanes.synced
            && self.rules.synced
            && self
                .namespaces
                .iter()
                .all(|((_, ns), ())| self.synced_in(ns))
    }

    /// Whether a namespace's Services, EndpointSlices and pods (each
    /// watched in it alone) have been listed.
    fn synced_in(&self, ns: &str) -> bool {
        self.services.synced_in(ns) && self.slices.synced_in(ns) && self.pods.synced_in(ns)
    }

    /// Managed namespaces whose objects have been listed: a namespace
    /// labelled just now counts once they are (until then its rules would
    /// be refused for Services not seen yet).
    pub fn managed(&self) -> BTreeSet<&str> {
        self.namespaces
            .iter()
            .map(|((_, n), ())| n.as_str())
            .filter(|n| self.synced_in(n))
            .collect()
    }
}

/// A rule's check, for its status.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVerdict {
    pub namespace: String,
    pub name: String,
    /// The rule as the model has it, or why it is refused.
    pub outcome: Result<RuleSpec, String>,
    pub generation: Option<i64>,
    pub status: Option<TrafficRuleStatus>,
}

/// How sure a source is that an endpoint takes requests: of one address in
/// two slices (as during a slice's rewrite), the surer one counts.
fn rank(readiness: Readiness) -> u8 {
    match readiness {
        Readiness::Ready | Readiness::Probe => 2,
        Readiness::NotReady => 1,
        Readiness::Terminating => 0,
    }
}

fn readiness(condition: Condition) -> Readiness {
    match condition {
        Condition::Ready => Readiness::Ready,
        Condition::NotReady => Readiness::NotReady,
        Condition::Terminating => Readiness::Terminating,
    }
}

/// The inventory, and a verdict for each `TrafficRule` of a managed
/// namespace. `cgroups`: this node's pods' cgroup ids by their cgroup UID.
pub fn join(
    stores: &Stores,
    cgroups: &HashMap<String, Vec<u64>>,
    settings: &SettingsSpec,
) -> (Inventory, Vec<RuleVerdict>) {
    let managed = stores.managed();
    let is_managed = |ns: &String| managed.contains(ns.as_str());

    let mut lanes = Vec::new();
    let mut lanes_by_ns: HashMap<&str, HashSet<&str>> = HashMap::new();
    for ((ns, _), lane) in stores.lanes.iter().filter(|((ns, _), _)| is_managed(ns)) {
        lanes.push(LaneEntry::new(ns, lane));
        lanes_by_ns
            .entry(ns)
            .or_default()
            .insert(lane.name.as_str());
    }

    let mut slices_of: HashMap<(&str, &str), Vec<&SliceRec>> = HashMap::new();
    for ((ns, _), slice) in stores.slices.iter() {
        slices_of
            .entry((ns.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    let mut services = Vec::new();
    let mut services_by_ns: HashMap<&str, HashSet<&str>> = HashMap::new();
    // Where each pod named by an endpoint is: the address of a pod of
    // another node.
    let mut endpoint_ips: HashMap<(&str, &str), Ipv4Addr> = HashMap::new();
    for ((ns, name), service) in stores.services.iter().filter(|((ns, _), _)| is_managed(ns)) {
        services_by_ns.entry(ns).or_default().insert(name.as_str());
        let mut endpoints: BTreeMap<Ipv4Addr, EndpointEntry> = BTreeMap::new();
        // Every pod the slices name, ready or not: who the Service is, as
        // a caller.
        let mut members: BTreeSet<String> = BTreeSet::new();
        for slice in slices_of
            .get(&(ns.as_str(), name.as_str()))
            .into_iter()
            .flatten()
        {
            // A slice's port reaches the Service port of the same name.
            let ports: Vec<PortMap> = slice
                .ports
                .iter()
                .filter_map(|(port_name, target_port)| {
                    let port = service.ports.iter().find(|p| &p.name == port_name)?.port;
                    Some(PortMap {
                        port,
                        target_port: *target_port,
                    })
                })
                .collect();
            for endpoint in &slice.endpoints {
                if let Some(pod) = &endpoint.pod {
                    endpoint_ips.insert((ns.as_str(), pod.as_str()), endpoint.ip);
                    members.insert(format!("{ns}/{pod}"));
                }
                let entry = EndpointEntry {
                    pod: endpoint
                        .pod
                        .as_ref()
                        .map_or_else(|| endpoint.ip.to_string(), |pod| format!("{ns}/{pod}")),
                    ip: endpoint.ip,
                    ports: ports.clone(),
                    readiness: readiness(endpoint.condition),
                };
                match endpoints.get(&endpoint.ip) {
                    Some(existing) if rank(existing.readiness) >= rank(entry.readiness) => {}
                    _ => {
                        endpoints.insert(endpoint.ip, entry);
                    }
                }
            }
        }
        services.push(ServiceEntry {
            name: format!("{ns}/{name}"),
            namespace: ns.clone(),
            address: service.cluster_ip,
            ports: service
                .ports
                .iter()
                .map(|p| ServicePort {
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            endpoints: endpoints.into_values().collect(),
            pods: members.into_iter().collect(),
            // The annotation names Services of the same namespace.
            lane_header_from: match &service.lane_header_from {
                LaneHeaderFrom::Services(names) => LaneHeaderFrom::Services(
                    names.iter().map(|name| format!("{ns}/{name}")).collect(),
                ),
                other => other.clone(),
            },
        });
    }

    let mut pods = Vec::new();
    for ((ns, name), local) in stores
        .node_pods
        .iter()
        .filter(|((ns, _), _)| is_managed(ns))
    {
        let Some(ip) = local.ip else { continue };
        pods.push(PodEntry {
            name: format!("{ns}/{name}"),
            namespace: ns.clone(),
            ip,
            labels: local.labels.clone(),
            lane: None,
            cgroup_ids: cgroups.get(&local.cgroup_uid).cloned().unwrap_or_default(),
        });
    }
    for ((ns, name), labels) in stores.pods.iter().filter(|((ns, _), _)| is_managed(ns)) {
        if stores.node_pods.get(&(ns.clone(), name.clone())).is_some() {
            continue;
        }
        // A pod of another node matters as an endpoint; its address is the
        // endpoint's.
        let Some(ip) = endpoint_ips.get(&(ns.as_str(), name.as_str())) else {
            continue;
        };
        pods.push(PodEntry {
            name: format!("{ns}/{name}"),
            namespace: ns.clone(),
            ip: *ip,
            labels: labels.clone(),
            lane: None,
            cgroup_ids: Vec::new(),
        });
    }

    let mut rules = Vec::new();
    let mut verdicts = Vec::new();
    let none = HashSet::new();
    for ((ns, name), rec) in stores.rules.iter().filter(|((ns, _), _)| is_managed(ns)) {
        let mut object = TrafficRule::new(name, rec.spec.clone());
        object.metadata.namespace = Some(ns.clone());
        let outcome = checked_rule_spec(
            &object,
            services_by_ns.get(ns.as_str()).unwrap_or(&none),
            lanes_by_ns.get(ns.as_str()).unwrap_or(&none),
        );
        if let Ok(spec) = &outcome {
            rules.push(RuleSpec {
                name: format!("{ns}/{name}"),
                service: format!("{ns}/{}", spec.service),
                ..spec.clone()
            });
        }
        verdicts.push(RuleVerdict {
            namespace: ns.clone(),
            name: name.clone(),
            outcome,
            generation: rec.generation,
            status: rec.status.clone(),
        });
    }

    let inventory = Inventory {
        settings: settings.clone(),
        namespaces: managed.iter().map(|n| n.to_string()).collect(),
        lanes,
        services,
        pods,
        rules,
        rules_origin: RulesOrigin::Api,
    };
    (inventory, verdicts)
}
