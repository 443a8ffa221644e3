//! The controller: turns a source's inventories (and `tagger rules`
//! changes) into the state model, keeps the kernel's maps equal to it, and
//! answers the admin API. It knows no source: `daemon.rs` wires one to it,
//! and `admin/` calls it.
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinSet, time::timeout};
use tracing::{error, info};

use crate::{
    ebpf::{Datapath, EbpfError, KernelStats},
    flows::FlowTable,
    procs::Classifier,
    propagation::ContextStore,
    rules::RuleSpec,
    state::{Inventory, Readiness, RulesOrigin, Snapshot, StateError, StateHandle},
};

const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("rules: {0}")]
    Rules(String),
    #[error("no rule named {0:?}")]
    NoSuchRule(String),
    #[error(
        "rules come from TrafficRule objects in Kubernetes mode: change them with kubectl (`kubectl get trafficrules -A`)"
    )]
    RulesFromApi,
}

/// Where the state comes from, for `config-dump`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceInfo {
    /// `file` or `kubernetes`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_root: Option<PathBuf>,
}

/// The model's inputs as last applied: the source's inventory and the
/// rules in force (the inventory's, as `tagger rules` changed them).
struct Inputs {
    inventory: Arc<Inventory>,
    rules: Vec<RuleSpec>,
}

pub struct Controller {
    pub state: StateHandle,
    pub flows: Arc<FlowTable>,
    pub contexts: Arc<ContextStore>,
    datapath: Mutex<Option<Arc<Datapath>>>,
    /// The proxy's connection counts, once it runs.
    gate: Mutex<Option<Arc<crate::proxy::limits::ConnectionGate>>>,
    /// How each pod process is correlated (threads, Go), once classified.
    classifier: Mutex<Option<Arc<Classifier>>>,
    inputs: Mutex<Inputs>,
    source: SourceInfo,
}

#[derive(Serialize)]
pub struct ConfigDump<'a> {
    #[serde(flatten)]
    pub source: &'a SourceInfo,
    pub state: &'a Snapshot,
    pub rules: Vec<RuleRow>,
    pub kernel: Option<KernelStats>,
    /// Per-program run counts and times (while kernel.bpf_stats_enabled=1).
    pub programs: Vec<crate::ebpf::ProgramStat>,
    /// Threads with an inbound context, and learnt request ids.
    pub propagation: PropagationDump,
    /// Each pod cgroup's slot in the kernel's pod flags, and whether the pod
    /// has carried a context into a call (its requests' tags are looked up).
    pub pod_flags: Vec<crate::ebpf::PodFlagRow>,
    /// Proxied connections open, refused over a limit, and cut by the
    /// header read timeout.
    pub proxy: Option<crate::proxy::limits::GateStats>,
    /// Pod processes by how their requests are correlated: Go programs with
    /// their version, offsets' source and uprobes, or why not probed.
    pub processes: crate::procs::ProcessesDump,
    /// Entries of the kernel maps the daemon holds.
    pub maps: Option<crate::ebpf::MapFill>,
    /// This daemon's generation, the live one, and where the maps are pinned.
    pub handover: Option<crate::ebpf::HandoverDump>,
}

#[derive(Serialize)]
pub struct PropagationDump {
    pub threads: usize,
    pub ids: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuleRow {
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub hits: u64,
}

/// A rules file: `rules: [...]`, as in the cluster file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RuleSpec>,
}

impl Controller {
    /// A controller on a source's first inventory.
    pub fn new(
        inventory: Arc<Inventory>,
        source: SourceInfo,
        flows: Arc<FlowTable>,
    ) -> Result<Self, ControllerError> {
        let rules = inventory.rules.clone();
        let snapshot = Snapshot::build(&inventory, &rules, None)?;
        Ok(Self {
            state: Arc::new(ArcSwap::from_pointee(snapshot)),
            flows,
            contexts: Arc::new(ContextStore::default()),
            datapath: Mutex::new(None),
            gate: Mutex::new(None),
            classifier: Mutex::new(None),
            inputs: Mutex::new(Inputs { inventory, rules }),
            source,
        })
    }

    fn datapath(&self) -> Option<Arc<Datapath>> {
        self.datapath.lock().expect("datapath lock").clone()
    }

    pub fn set_connection_gate(&self, gate: Arc<crate::proxy::limits::ConnectionGate>) {
        *self.gate.lock().expect("gate lock") = Some(gate);
    }

    pub fn set_classifier(&self, classifier: Arc<Classifier>) {
        *self.classifier.lock().expect("classifier lock") = Some(classifier);
    }

    pub fn set_datapath(&self, datapath: Arc<Datapath>) -> Result<(), EbpfError> {
        let snapshot = self.state.load();
        datapath.sync_managed(snapshot.destinations())?;
        datapath.sync_pod_cgroups(
            &snapshot.pod_cgroups(),
            snapshot.settings.limits.max_tracked_pods,
        )?;
        *self.datapath.lock().expect("datapath lock") = Some(datapath);
        Ok(())
    }

    /// Builds and publishes a snapshot, then updates the kernel's maps. On
    /// error nothing changes.
    fn publish(&self, inventory: &Inventory, rules: &[RuleSpec]) -> Result<(), ControllerError> {
        let previous = self.state.load_full();
        let snapshot = Arc::new(Snapshot::build(inventory, rules, Some(&previous))?);
        // Managed addresses first, so a new endpoint is redirected before the
        // proxy can choose it; removals after, for the same reason reversed.
        if let Some(datapath) = self.datapath() {
            datapath.sync_managed(snapshot.destinations())?;
            datapath.sync_pod_cgroups(
                &snapshot.pod_cgroups(),
                snapshot.settings.limits.max_tracked_pods,
            )?;
            datapath.set_flow_limit(snapshot.settings.limits.max_kernel_flows as u32)?;
        }
        self.state.store(snapshot);
        Ok(())
    }

    /// Applies a source's new inventory. Rules changed through `tagger
    /// rules` stay in force until the source's own rules change.
    pub fn apply_inventory(&self, inventory: Arc<Inventory>) -> Result<(), ControllerError> {
        let mut inputs = self.inputs.lock().expect("inputs lock");
        let keep_edits = matches!(
            (inputs.inventory.rules_origin, inventory.rules_origin),
            (RulesOrigin::File { revision: a }, RulesOrigin::File { revision: b }) if a == b
        );
        let rules = if keep_edits {
            inputs.rules.clone()
        } else {
            inventory.rules.clone()
        };
        self.publish(&inventory, &rules)?;
        *inputs = Inputs { inventory, rules };
        Ok(())
    }

    /// Applies every inventory the source sends, until it stops. A refused
    /// one is reported and the state in force stays.
    pub async fn follow(self: Arc<Self>, mut updates: watch::Receiver<Option<Arc<Inventory>>>) {
        while updates.changed().await.is_ok() {
            let Some(inventory) = updates.borrow_and_update().clone() else {
                continue;
            };
            match self.apply_inventory(inventory) {
                Ok(()) => info!("state updated"),
                Err(e) => error!(error = %e, "update refused; keeping the state in force"),
            }
        }
    }

    /// Changes the rules in force through `change`, validating the result
    /// against the services and lanes in force first.
    fn change_rules(
        &self,
        change: impl FnOnce(&mut Vec<RuleSpec>) -> Result<(), ControllerError>,
    ) -> Result<(), ControllerError> {
        let mut inputs = self.inputs.lock().expect("inputs lock");
        if inputs.inventory.rules_origin == RulesOrigin::Api {
            return Err(ControllerError::RulesFromApi);
        }
        let mut rules = inputs.rules.clone();
        change(&mut rules)?;
        let inventory = &inputs.inventory;
        let services: HashSet<&str> = inventory.services.iter().map(|s| s.name.as_str()).collect();
        let lanes: HashSet<&str> = inventory.lanes.iter().map(|l| l.name.as_str()).collect();
        crate::config::validate_rules(&rules, &services, &lanes)
            .map_err(|(place, message)| ControllerError::Rules(format!("{place}: {message}")))?;
        self.publish(&inputs.inventory, &rules)?;
        inputs.rules = rules;
        Ok(())
    }

    /// `tagger rules apply`: rules with a known name are replaced, new ones
    /// added. Returns the names applied.
    pub fn apply_rules_text(&self, text: &[u8]) -> Result<Vec<String>, ControllerError> {
        let incoming: Vec<RuleSpec> = match serde_yaml::from_slice::<RulesFile>(text) {
            Ok(file) => file.rules,
            Err(first) => serde_yaml::from_slice::<Vec<RuleSpec>>(text).map_err(|_| {
                ControllerError::Rules(format!("not a rules file (`rules: [...]`): {first}"))
            })?,
        };
        let names: Vec<String> = incoming.iter().map(|r| r.name.clone()).collect();
        // Two rules of one name in one file: which one was meant? Refused,
        // as the cluster file refuses it, rather than the last one winning.
        for (index, name) in names.iter().enumerate() {
            if let Some(first) = names[..index].iter().position(|n| n == name) {
                return Err(ControllerError::Rules(format!(
                    "rules[{index}].name: rule name {name:?} is already used at rules[{first}]"
                )));
            }
        }
        self.change_rules(|rules| {
            for rule in incoming {
                match rules.iter_mut().find(|r| r.name == rule.name) {
                    Some(existing) => *existing = rule,
                    None => rules.push(rule),
                }
            }
            Ok(())
        })?;
        Ok(names)
    }

    pub fn set_rule_enabled(&self, name: &str, enabled: bool) -> Result<(), ControllerError> {
        self.change_rules(|rules| {
            let rule = rules
                .iter_mut()
                .find(|r| r.name == name)
                .ok_or_else(|| ControllerError::NoSuchRule(name.to_string()))?;
            rule.enabled = enabled;
            Ok(())
        })
    }

    pub fn delete_rule(&self, name: &str) -> Result<(), ControllerError> {
        self.change_rules(|rules| {
            let before = rules.len();
            rules.retain(|r| r.name != name);
            if rules.len() == before {
                return Err(ControllerError::NoSuchRule(name.to_string()));
            }
            Ok(())
        })
    }

    pub fn rule_rows(&self) -> Vec<RuleRow> {
        let inputs = self.inputs.lock().expect("inputs lock");
        let snapshot = self.state.load();
        inputs
            .rules
            .iter()
            .map(|spec| RuleRow {
                spec: spec.clone(),
                hits: snapshot
                    .rules
                    .iter()
                    .find(|(r, _)| r.name == spec.name)
                    .map_or(0, |(_, hits)| hits),
            })
            .collect()
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let snapshot = self.state.load_full();
        let datapath = self.datapath();
        let dump = ConfigDump {
            source: &self.source,
            state: &snapshot,
            rules: self.rule_rows(),
            kernel: datapath.as_ref().map(|d| d.stats()),
            programs: datapath
                .as_ref()
                .map(|d| d.program_stats())
                .unwrap_or_default(),
            propagation: {
                let (threads, ids) = self.contexts.sizes();
                PropagationDump { threads, ids }
            },
            pod_flags: datapath
                .as_ref()
                .map(|d| d.pod_flag_rows())
                .unwrap_or_default(),
            proxy: self
                .gate
                .lock()
                .expect("gate lock")
                .as_ref()
                .map(|g| g.stats()),
            processes: self
                .classifier
                .lock()
                .expect("classifier lock")
                .as_ref()
                .map(|c| c.dump())
                .unwrap_or_default(),
            maps: datapath.as_ref().map(|d| d.map_fill()),
            handover: datapath.as_ref().map(|d| d.handover_dump()),
        };
        serde_json::to_value(&dump)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// Probes endpoints with a TCP connect, as a readiness probe would:
    /// those whose source does not know (the local cluster), and those the
    /// source calls ready that a connect failure took out, to bring them
    /// back. What the source calls not ready is never probed into use.
    pub async fn check_health(&self) {
        let snapshot = self.state.load_full();
        let mut probes = JoinSet::new();
        for endpoint in snapshot.services.iter().flat_map(|s| &s.endpoints) {
            let probe = match endpoint.readiness {
                Readiness::Probe => true,
                Readiness::Ready => !endpoint.ready.load(Ordering::Relaxed),
                Readiness::NotReady | Readiness::Terminating => false,
            };
            if !probe {
                continue;
            }
            let addr = endpoint.addr;
            let ready = endpoint.ready.clone();
            let pod = endpoint.pod.clone();
            probes.spawn(async move {
                let ok = matches!(
                    timeout(HEALTH_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                );
                if ready.swap(ok, Ordering::Relaxed) != ok {
                    info!(%pod, %addr, ready = ok, "endpoint readiness changed");
                }
            });
        }
        while probes.join_next().await.is_some() {}
    }
}
