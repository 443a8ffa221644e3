//! The node daemon: keeps the state model current, owns the eBPF data path,
//! runs the proxy, the health checks and the admin API.
use std::{
    net::SocketAddrV4,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, task::JoinSet, time::timeout};
use tracing::{error, info, warn};

use crate::{
    config::{ClusterFile, ConfigError},
    ebpf::{Datapath, EbpfError, KernelStats},
    flows::FlowTable,
    procs::Classifier,
    propagation::{ContextStore, events::EventPump},
    proxy::{Proxy, ProxyConfig},
    rules::{RuleSet, RuleSpec},
    state::{Placement, Snapshot, StateError, StateHandle},
};

/// How often the sources are checked for changes: changes apply within 1 s.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
const HEALTH_INTERVAL: Duration = Duration::from_millis(1000);
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("placement file {path}: {message}")]
    Placement { path: PathBuf, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("cannot listen on {addr}: {source} (is another daemon running?)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot find this process's cgroup: {0}")]
    OwnCgroup(std::io::Error),
    #[error("rules: {0}")]
    Rules(String),
    #[error("no rule named {0:?}")]
    NoSuchRule(String),
}

#[derive(Debug, Clone)]
pub struct DaemonArgs {
    pub config: PathBuf,
    pub placement: PathBuf,
    /// cgroup v2 directory the programs attach to (parent of the pods').
    pub cgroup: PathBuf,
    pub proxy_addr: SocketAddrV4,
    pub admin_socket: PathBuf,
    /// Where Prometheus metrics, `/ready` and `/healthz` are served; none
    /// if `None`.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The sources the state is built from, and the rules in force (which
/// `tagger rules ...` can change without touching the file).
struct Sources {
    config_path: PathBuf,
    placement_path: PathBuf,
    file: ClusterFile,
    placement: Placement,
    rules: Vec<RuleSpec>,
    config_mtime: Option<SystemTime>,
    placement_mtime: Option<SystemTime>,
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
    sources: Mutex<Sources>,
}

#[derive(Serialize)]
pub struct ConfigDump<'a> {
    pub config_file: &'a Path,
    pub placement_file: &'a Path,
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

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_placement(path: &Path) -> Result<Placement, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| DaemonError::Placement {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| DaemonError::Placement {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl Controller {
    pub fn load(config_path: &Path, placement_path: &Path) -> Result<Self, DaemonError> {
        let config_mtime = mtime(config_path);
        let placement_mtime = mtime(placement_path);
        let file = ClusterFile::load(config_path)?;
        let placement = load_placement(placement_path)?;
        let snapshot = Snapshot::build(&file, &placement, None)?;
        Ok(Self {
            state: Arc::new(ArcSwap::from_pointee(snapshot)),
            flows: Arc::new(FlowTable::default()),
            contexts: Arc::new(ContextStore::default()),
            datapath: Mutex::new(None),
            gate: Mutex::new(None),
            classifier: Mutex::new(None),
            sources: Mutex::new(Sources {
                config_path: config_path.to_path_buf(),
                placement_path: placement_path.to_path_buf(),
                rules: file.rules.clone(),
                file,
                placement,
                config_mtime,
                placement_mtime,
            }),
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
        datapath.sync_pod_cgroups(&snapshot.pods.iter().map(|p| p.cgroup_id).collect())?;
        *self.datapath.lock().expect("datapath lock") = Some(datapath);
        Ok(())
    }

    /// Builds and publishes a snapshot from `sources`, then updates the
    /// kernel's managed set. On error nothing changes.
    fn publish(&self, sources: &Sources) -> Result<(), DaemonError> {
        let previous = self.state.load_full();
        let compiled = sources
            .rules
            .iter()
            .map(RuleSpec::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StateError::from)?;
        let rules = RuleSet::new(compiled, Some(&previous.rules));
        let snapshot =
            Snapshot::build_with_rules(&sources.file, &sources.placement, rules, Some(&previous))?;
        let snapshot = Arc::new(snapshot);
        // Managed addresses first, so a new endpoint is redirected before the
        // proxy can choose it; removals after, for the same reason reversed.
        if let Some(datapath) = self.datapath() {
            datapath.sync_managed(snapshot.destinations())?;
            datapath.sync_pod_cgroups(&snapshot.pods.iter().map(|p| p.cgroup_id).collect())?;
        }
        self.state.store(snapshot);
        Ok(())
    }

    /// Re-reads whichever source changed on disk. A bad file is reported and
    /// the state in force stays in force.
    pub fn reload_if_changed(&self) {
        let mut sources = self.sources.lock().expect("sources lock");
        let config_mtime = mtime(&sources.config_path);
        let placement_mtime = mtime(&sources.placement_path);
        if config_mtime == sources.config_mtime && placement_mtime == sources.placement_mtime {
            return;
        }
        let next_file = if config_mtime != sources.config_mtime {
            match ClusterFile::load(&sources.config_path) {
                Ok(file) => Some(file),
                Err(e) => {
                    error!(error = %e, "cluster file changed but is not valid; keeping the state in force");
                    sources.config_mtime = config_mtime;
                    return;
                }
            }
        } else {
            None
        };
        let next_placement = if placement_mtime != sources.placement_mtime {
            match load_placement(&sources.placement_path) {
                Ok(p) => Some(p),
                Err(e) => {
                    error!(error = %e, "placement changed but is not valid; keeping the state in force");
                    sources.placement_mtime = placement_mtime;
                    return;
                }
            }
        } else {
            None
        };
        let mut candidate = Sources {
            config_path: sources.config_path.clone(),
            placement_path: sources.placement_path.clone(),
            rules: match &next_file {
                // An edited file is the newest intent for rules too.
                Some(file) => file.rules.clone(),
                None => sources.rules.clone(),
            },
            file: next_file.unwrap_or_else(|| sources.file.clone()),
            placement: next_placement.unwrap_or_else(|| sources.placement.clone()),
            config_mtime,
            placement_mtime,
        };
        match self.publish(&candidate) {
            Ok(()) => {
                info!("state reloaded");
                std::mem::swap(&mut *sources, &mut candidate);
            }
            Err(e) => {
                error!(error = %e, "reload refused; keeping the state in force");
                sources.config_mtime = config_mtime;
                sources.placement_mtime = placement_mtime;
            }
        }
    }

    /// Changes the rules in force through `change`, validating the result
    /// against the cluster's services and lanes first.
    fn change_rules(
        &self,
        change: impl FnOnce(&mut Vec<RuleSpec>) -> Result<(), DaemonError>,
    ) -> Result<(), DaemonError> {
        let mut sources = self.sources.lock().expect("sources lock");
        let mut rules = sources.rules.clone();
        change(&mut rules)?;
        let mut check = sources.file.clone();
        check.rules = rules.clone();
        check
            .validate_rules()
            .map_err(|(place, message)| DaemonError::Rules(format!("{place}: {message}")))?;
        let previous_rules = std::mem::replace(&mut sources.rules, rules);
        if let Err(e) = self.publish(&sources) {
            sources.rules = previous_rules;
            return Err(e);
        }
        Ok(())
    }

    /// `tagger rules apply`: rules with a known name are replaced, new ones
    /// added. Returns the names applied.
    pub fn apply_rules_text(&self, text: &[u8]) -> Result<Vec<String>, DaemonError> {
        let incoming: Vec<RuleSpec> = match serde_yaml::from_slice::<RulesFile>(text) {
            Ok(file) => file.rules,
            Err(first) => serde_yaml::from_slice::<Vec<RuleSpec>>(text).map_err(|_| {
                DaemonError::Rules(format!("not a rules file (`rules: [...]`): {first}"))
            })?,
        };
        let names: Vec<String> = incoming.iter().map(|r| r.name.clone()).collect();
        // Two rules of one name in one file: which one was meant? Refused,
        // as the cluster file refuses it, rather than the last one winning.
        for (index, name) in names.iter().enumerate() {
            if let Some(first) = names[..index].iter().position(|n| n == name) {
                return Err(DaemonError::Rules(format!(
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

    pub fn set_rule_enabled(&self, name: &str, enabled: bool) -> Result<(), DaemonError> {
        self.change_rules(|rules| {
            let rule = rules
                .iter_mut()
                .find(|r| r.name == name)
                .ok_or_else(|| DaemonError::NoSuchRule(name.to_string()))?;
            rule.enabled = enabled;
            Ok(())
        })
    }

    pub fn delete_rule(&self, name: &str) -> Result<(), DaemonError> {
        self.change_rules(|rules| {
            let before = rules.len();
            rules.retain(|r| r.name != name);
            if rules.len() == before {
                return Err(DaemonError::NoSuchRule(name.to_string()));
            }
            Ok(())
        })
    }

    pub fn rule_rows(&self) -> Vec<RuleRow> {
        let sources = self.sources.lock().expect("sources lock");
        let snapshot = self.state.load();
        sources
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
        let rules = self.rule_rows();
        let sources = self.sources.lock().expect("sources lock");
        let dump = ConfigDump {
            config_file: &sources.config_path,
            placement_file: &sources.placement_path,
            state: &snapshot,
            rules,
            kernel: self.datapath().map(|d| d.stats()),
            programs: self
                .datapath()
                .map(|d| d.program_stats())
                .unwrap_or_default(),
            propagation: {
                let (threads, ids) = self.contexts.sizes();
                PropagationDump { threads, ids }
            },
            pod_flags: self
                .datapath()
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
            maps: self.datapath().map(|d| d.map_fill()),
        };
        serde_json::to_value(&dump)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// Probes every endpoint with a TCP connect, as a readiness probe would.
    pub async fn check_health(&self) {
        let snapshot = self.state.load_full();
        let mut probes = JoinSet::new();
        for endpoint in snapshot.services.iter().flat_map(|s| &s.endpoints) {
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

/// How long a stopping daemon waits for open proxied connections to finish
/// (well within Kubernetes' default 30 s termination grace period).
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: DaemonArgs) -> Result<(), DaemonError> {
    let controller = Arc::new(Controller::load(&args.config, &args.placement)?);
    controller.check_health().await;
    // Metrics first, so that liveness answers while the rest starts.
    let metrics = Arc::new(crate::metrics::Hub::new(controller.flows.clone()));
    if let Some(addr) = args.metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }

    let listener =
        TcpListener::bind(args.proxy_addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: args.proxy_addr.to_string(),
                source,
            })?;
    let admin = crate::admin::bind(&args.admin_socket).map_err(|source| DaemonError::Listen {
        addr: args.admin_socket.display().to_string(),
        source,
    })?;
    let datapath = Arc::new(Datapath::attach(&args.cgroup)?);
    // Loading parsed the kernel's BTF and the object (megabytes, now
    // freed): give those pages back rather than keep them resident.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    controller.set_datapath(datapath.clone())?;

    if let Some(events) = datapath.take_events() {
        let pump = Arc::new(EventPump::new(
            events,
            controller.contexts.clone(),
            controller.state.clone(),
        ));
        controller.contexts.set_pump(pump.clone());
        tokio::spawn(pump.run());
    }
    let proxy = Proxy::new(
        controller.state.clone(),
        datapath.clone(),
        controller.flows.clone(),
        controller.contexts.clone(),
        ProxyConfig::default(),
    );
    controller.set_connection_gate(proxy.gate());
    metrics.set_gate(proxy.gate());
    metrics.set_kernel(datapath.clone());
    // Every process already in a pod is classified (Go ones probed) before
    // redirection starts; later ones when the kernel first sees them.
    let classifier = Arc::new(Classifier::new(datapath.clone()));
    if let Some(ring) = datapath.take_proc_events() {
        tokio::spawn(classifier.clone().run(ring));
    }
    let pod_cgroups = controller
        .state
        .load()
        .pods
        .iter()
        .map(|p| p.cgroup_id)
        .collect();
    let scan = classifier.clone();
    let _ = tokio::task::spawn_blocking(move || scan.scan(&pod_cgroups)).await;
    controller.set_classifier(classifier);
    tokio::spawn(proxy.clone().serve(listener));
    tokio::spawn(crate::admin::serve(admin, controller.clone()));
    {
        let controller = controller.clone();
        tokio::spawn(async move {
            let mut last_health = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                controller.reload_if_changed();
                if last_health.elapsed() >= HEALTH_INTERVAL {
                    controller.check_health().await;
                    last_health = tokio::time::Instant::now();
                }
            }
        });
    }
    // Only now, with the proxy accepting, start redirecting.
    let own_cgroup = crate::cgroup::own_id().map_err(DaemonError::OwnCgroup)?;
    datapath.enable(args.proxy_addr, own_cgroup)?;
    metrics.set_ready(true);
    info!(proxy = %args.proxy_addr, cgroup = %args.cgroup.display(), "tagger daemon ready");

    wait_for_shutdown().await;
    metrics.set_ready(false);
    // Fail open first: from here on new connections go direct.
    if let Err(e) = datapath.disable() {
        warn!(error = %e, "could not switch redirection off; links close on exit anyway");
    }
    // Then let the connections already here finish: HTTP/2 clients get
    // GOAWAY and their accepted streams are served to the end.
    if !proxy.drain(DRAIN_GRACE).await {
        warn!(grace = ?DRAIN_GRACE, "connections still open after the grace period; closing them");
    }
    let _ = std::fs::remove_file(&args.admin_socket);
    info!("tagger daemon stopped");
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
