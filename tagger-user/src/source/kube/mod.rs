//! The Kubernetes source (SPEC.md section E, "Kubernetes mode"): watchers
//! on the API, reached as kubectl reaches it, joined into inventories.
//!
//! | watch | why |
//! |-------|-----|
//! | Namespaces labelled `tagger.io/lanes=enabled` | which pods are managed |
//! | in each managed namespace: Services, EndpointSlices | addresses, ports, endpoints and their readiness |
//! | in each managed namespace: Pods' metadata | each endpoint's lane (its labels) |
//! | this node's Pods (`spec.nodeName`) | addresses and, through kubelet's cgroups, cgroup ids |
//! | `TrafficLane`, `TrafficRule` | lanes and rules; each rule's `Accepted` status is written back |
//!
//! The API cannot select objects by their namespace's labels, so the
//! kinds that follow the managed namespaces are watched in each of them
//! apart, started when a namespace is labelled and stopped when it is no
//! longer: what a daemon is sent and keeps follows its node's pods and the
//! managed namespaces, not the size of the cluster (SPEC section E,
//! "Scale"; `tests/tests/kube_scale.rs`).
//!
//! Each watcher relists with the default backoff when its watch breaks (a
//! 410 Gone included); a relist replaces its kind whole, or its kind in its
//! namespace ([`store`]). Events
//! are joined after a 50 ms settle, so a burst is one inventory and a change
//! is in force well within a second.
mod join;
pub mod objects;
mod store;

#[cfg(test)]
mod objects_tests;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{
    StreamExt,
    stream::{AbortHandle, Abortable, BoxStream, SelectAll},
};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use tokio::time::Instant;
use tracing::{info, warn};

pub use join::{RuleVerdict, Stores, join};

use super::{Source, Updates, publish};
use crate::{
    config::LimitsSpec,
    kubernetes::{
        TrafficLane, TrafficRule, TrafficRuleStatus,
        cgroups::{self, QosClass},
        convert::{now_rfc3339, rule_status, status_patch},
    },
    state::SettingsSpec,
};

/// Where the proxy listens when `--proxy-address` is not given: on
/// `$HOST_IP`, this port.
pub const DEFAULT_PROXY_PORT: u16 = 15001;
/// Events closer than this are joined into one inventory.
const SETTLE: Duration = Duration::from_millis(50);
/// How often pods of this node whose cgroups were not found yet are looked
/// for again (a pod the API shows before kubelet made its cgroup).
const CGROUP_RETRY: Duration = Duration::from_millis(500);
/// How often every pod's cgroups are read again (a restarted container
/// has a new one).
const CGROUP_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct KubeConfig {
    pub node_name: String,
    /// The cgroup v2 directory kubelet's pod cgroups are under.
    pub cgroup_root: PathBuf,
    pub lane_header: String,
    pub passthrough_headers: Vec<String>,
}

impl KubeConfig {
    fn settings(&self) -> SettingsSpec {
        SettingsSpec {
            lane_header: self.lane_header.clone(),
            passthrough_headers: self.passthrough_headers.clone(),
            body_match_limit: crate::config::DEFAULT_BODY_MATCH_LIMIT,
            limits: LimitsSpec::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "cannot find the Kubernetes API (KUBECONFIG, else the in-cluster service account): {0}"
    )]
    Config(#[from] kube::config::InferConfigError),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The API as kubectl finds it, for the CLI (`tagger flows --kubernetes`):
/// the file `KUBECONFIG` names (or `~/.kube/config`; a plain `http://`
/// server works), else the in-cluster service account. The user's own
/// credentials, not the daemon's.
pub async fn kubectl_client() -> Result<Client, KubeError> {
    Ok(Client::try_from(kube::Config::infer().await?)?)
}

pub struct KubeSource {
    client: Client,
    config: KubeConfig,
}

/// One watcher's event, of whichever kind. Each is applied to its store
/// as it arrives and dropped, one at a time: the variants' sizes do not add
/// up to anything.
#[allow(clippy::large_enum_variant)]
enum Change {
    Namespace(Event<Namespace>),
    /// Of the watch of one managed namespace (the first field).
    Service(String, Event<Service>),
    Slice(String, Event<EndpointSlice>),
    Pod(String, Event<PartialObjectMeta<Pod>>),
    NodePod(Event<Pod>),
    Lane(Event<TrafficLane>),
    Rule(Event<TrafficRule>),
}

type Watch = BoxStream<'static, Result<Change, watcher::Error>>;
/// Every watch's changes, as they come; a managed namespace's watches are
/// added to it and aborted as the namespace comes and goes.
type Changes = SelectAll<Watch>;

fn watch<K, F>(api: Api<K>, config: watcher::Config, wrap: F) -> Watch
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(Event<K>) -> Change + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .map(move |event| event.map(&wrap))
        .boxed()
}

impl KubeSource {
    /// The API as SPEC.md's fixed interface says: the pod's service
    /// account in a cluster, else the file `KUBECONFIG` names (or
    /// `~/.kube/config`, as kubectl; a plain `http://` server works).
    pub async fn connect(config: KubeConfig) -> Result<Self, KubeError> {
        let client_config = match kube::Config::incluster() {
            Ok(in_cluster) => in_cluster,
            Err(_) => kube::Config::infer().await?,
        };
        Self::with_client_config(client_config, config)
    }

    /// The API a kubeconfig file names (what `KUBECONFIG` does for
    /// [`KubeSource::connect`]).
    pub async fn from_kubeconfig(path: &Path, config: KubeConfig) -> Result<Self, KubeError> {
        let file = kube::config::Kubeconfig::read_from(path)?;
        let options = kube::config::KubeConfigOptions::default();
        let client_config = kube::Config::from_custom_kubeconfig(file, &options).await?;
        Self::with_client_config(client_config, config)
    }

    /// A client that says which node's daemon it is in its `User-Agent`
    /// ([`user_agent`]).
    fn with_client_config(
        mut client_config: kube::Config,
        config: KubeConfig,
    ) -> Result<Self, KubeError> {
        if let Ok(agent) = http::HeaderValue::from_str(&user_agent(&config.node_name)) {
            client_config
                .headers
                .push((http::header::USER_AGENT, agent));
        }
        Ok(Self::new(Client::try_from(client_config)?, config))
    }

    pub fn new(client: Client, config: KubeConfig) -> Self {
        Self { client, config }
    }

    /// The cluster-wide watches: managed namespaces (by label), this
    /// node's pods (by field), the custom resources.
    fn changes(&self) -> Changes {
        let c = &self.client;
        let managed = format!("{}={}", objects::MANAGED_LABEL, objects::MANAGED_VALUE);
        let on_node = format!("spec.nodeName={}", self.config.node_name);
        let all = watcher::Config::default;
        futures::stream::select_all([
            watch(
                Api::all(c.clone()),
                all().labels(&managed),
                Change::Namespace,
            ),
            watch(Api::all(c.clone()), all().fields(&on_node), Change::NodePod),
            watch(Api::all(c.clone()), all(), Change::Lane),
            watch(Api::all(c.clone()), all(), Change::Rule),
        ])
    }

    /// The watches of one managed namespace: its Services, EndpointSlices
    /// and pods (labels suffice for those: metadata only).
    fn namespace_watches(&self, ns: &str) -> [Watch; 3] {
        let c = &self.client;
        let all = watcher::Config::default;
        let (a, b, d) = (ns.to_string(), ns.to_string(), ns.to_string());
        [
            watch(Api::namespaced(c.clone(), ns), all(), move |e| {
                Change::Service(a.clone(), e)
            }),
            watch(Api::namespaced(c.clone(), ns), all(), move |e| {
                Change::Slice(b.clone(), e)
            }),
            watch(
                Api::<PartialObjectMeta<Pod>>::namespaced(c.clone(), ns),
                all(),
                move |e| Change::Pod(d.clone(), e),
            ),
        ]
    }

    /// Starts the watches of namespaces managed now and stops those of
    /// namespaces no longer managed, dropping what they brought; whether
    /// the stores changed.
    fn follow_namespaces(
        &self,
        stores: &mut Stores,
        changes: &mut Changes,
        watching: &mut HashMap<String, Vec<AbortHandle>>,
    ) -> bool {
        let managed: Vec<String> = stores
            .namespaces
            .iter()
            .map(|((_, ns), ())| ns.clone())
            .collect();
        let mut changed = false;
        watching.retain(|ns, handles| {
            if managed.contains(ns) {
                return true;
            }
            info!(namespace = %ns, "namespace no longer managed: its watches stop");
            handles.iter().for_each(AbortHandle::abort);
            changed |= stores.services.forget(ns);
            changed |= stores.slices.forget(ns);
            changed |= stores.pods.forget(ns);
            false
        });
        for ns in managed {
            if watching.contains_key(&ns) {
                continue;
            }
            let handles = self
                .namespace_watches(&ns)
                .into_iter()
                .map(|watch| {
                    let (handle, registration) = AbortHandle::new_pair();
                    changes.push(Abortable::new(watch, registration).boxed());
                    handle
                })
                .collect();
            watching.insert(ns, handles);
        }
        changed
    }

    /// Applies one change; whether what the stores answer changed.
    fn apply(&self, stores: &mut Stores, change: Change) -> bool {
        match change {
            Change::Namespace(e) => stores.namespaces.apply(e, objects::namespace),
            Change::Service(ns, e) => stores.services.apply_in(&ns, e, objects::service),
            Change::Slice(ns, e) => stores.slices.apply_in(&ns, e, objects::endpoint_slice),
            Change::Pod(ns, e) => stores.pods.apply_in(&ns, e, objects::pod_labels),
            Change::NodePod(e) => stores.node_pods.apply(e, objects::node_pod),
            Change::Lane(e) => stores.lanes.apply(e, objects::lane),
            Change::Rule(e) => stores.rules.apply(e, join::rule),
        }
    }

    /// Writes each rule's `Accepted` condition where it is not what the
    /// check says (skipping what was just written and not seen back yet).
    fn write_statuses(&self, verdicts: Vec<RuleVerdict>, written: &Written) {
        let now = now_rfc3339();
        for verdict in verdicts {
            let status = rule_status(
                verdict.status.as_ref(),
                &verdict.outcome,
                verdict.generation,
                &now,
            );
            let key = (verdict.namespace.clone(), verdict.name.clone());
            let mut pending = written.lock().expect("written lock");
            if verdict.status.as_ref() == Some(&status) || pending.get(&key) == Some(&status) {
                continue;
            }
            if let Err(message) = &verdict.outcome {
                info!(rule = %format!("{}/{}", key.0, key.1), %message, "TrafficRule refused");
            }
            pending.insert(key.clone(), status.clone());
            drop(pending);
            let api: Api<TrafficRule> = Api::namespaced(self.client.clone(), &verdict.namespace);
            let written = written.clone();
            tokio::spawn(async move {
                let patch = Patch::Merge(status_patch(&status));
                if let Err(e) = api
                    .patch_status(&verdict.name, &PatchParams::default(), &patch)
                    .await
                {
                    warn!(rule = %verdict.name, namespace = %verdict.namespace, error = %e, "cannot write the rule's status");
                    // Not written: the next change of anything tries again.
                    written.lock().expect("written lock").remove(&key);
                }
            });
        }
    }
}

/// What the daemon calls itself to the API: `tagger/<version> (node
/// <name>)`, as kubelet names its version, so that the API server's audit
/// log and its priority and fairness tell each node's daemon apart (and the
/// two-node test counts each daemon's relists).
pub fn user_agent(node_name: &str) -> String {
    format!("tagger/{} (node {node_name})", env!("CARGO_PKG_VERSION"))
}

/// Statuses written and not seen back yet, so that each is written once.
type Written = Arc<Mutex<HashMap<(String, String), TrafficRuleStatus>>>;

/// The cgroup ids of a pod of this node; empty until kubelet made them.
fn pod_cgroup_ids(root: &Path, uid: &str, qos: Option<QosClass>) -> Vec<u64> {
    let found = match qos {
        Some(qos) => cgroups::find_pod(root, uid, qos),
        None => cgroups::scan(root)
            .ok()
            .and_then(|pods| pods.into_iter().find(|p| p.uid == uid)),
    };
    found.map(|pod| pod.cgroup_ids()).unwrap_or_default()
}

/// Reads the cgroups of this node's pods: every pod's when `all`, else
/// those not found yet. Whether any changed.
fn refresh_cgroups(
    root: &Path,
    stores: &Stores,
    cgroups: &mut HashMap<String, Vec<u64>>,
    all: bool,
) -> bool {
    let mut changed = false;
    let mut seen = Vec::new();
    // Only managed pods' cgroups matter (and only they are looked for
    // again and again until found).
    let managed = |ns: &String| {
        stores
            .namespaces
            .get(&(String::new(), ns.clone()))
            .is_some()
    };
    for (_, pod) in stores.node_pods.iter().filter(|((ns, _), _)| managed(ns)) {
        seen.push(pod.cgroup_uid.as_str());
        let known = cgroups
            .get(&pod.cgroup_uid)
            .is_some_and(|ids| !ids.is_empty());
        if known && !all {
            continue;
        }
        let ids = pod_cgroup_ids(root, &pod.cgroup_uid, pod.qos);
        let before = cgroups.insert(pod.cgroup_uid.clone(), ids.clone());
        changed |= before.unwrap_or_default() != ids;
    }
    let mut gone = false;
    cgroups.retain(|uid, ids| {
        let keep = seen.contains(&uid.as_str());
        gone |= !keep && !ids.is_empty();
        keep
    });
    changed || gone
}

impl Source for KubeSource {
    type Error = KubeError;

    async fn run(self, updates: Updates) -> Result<(), KubeError> {
        let mut changes = self.changes();
        let settings = self.config.settings();
        let root = self.config.cgroup_root.clone();
        let mut stores = Stores::default();
        let mut cgroups: HashMap<String, Vec<u64>> = HashMap::new();
        let written = Written::default();
        let mut retry = tokio::time::interval(CGROUP_RETRY);
        let mut last_refresh = Instant::now();
        let mut settle_at: Option<Instant> = None;
        let mut first = true;
        let mut watching = HashMap::new();
        loop {
            let mut changed = false;
            tokio::select! {
                change = changes.next() => match change {
                    Some(Ok(change)) => {
                        let namespace = matches!(change, Change::Namespace(_));
                        let node_pod = matches!(change, Change::NodePod(_)) || namespace;
                        changed = self.apply(&mut stores, change);
                        if namespace {
                            changed |= self.follow_namespaces(&mut stores, &mut changes, &mut watching);
                        }
                        // A pod's containers may have come or gone, or a
                        // namespace's pods become managed.
                        if node_pod && changed {
                            refresh_cgroups(&root, &stores, &mut cgroups, true);
                        }
                    }
                    Some(Err(e)) => warn!(error = %e, "Kubernetes watch failed; retrying"),
                    None => return Ok(()),
                },
                _ = retry.tick() => {
                    let all = last_refresh.elapsed() >= CGROUP_REFRESH;
                    if all {
                        last_refresh = Instant::now();
                    }
                    changed = refresh_cgroups(&root, &stores, &mut cgroups, all);
                }
                () = sleep_until(settle_at) => {
                    settle_at = None;
                    if stores.synced() {
                        let (inventory, verdicts) = join(&stores, &cgroups, &settings);
                        if first {
                            info!(
                                services = inventory.services.len(),
                                pods = inventory.pods.len(),
                                rules = inventory.rules.len(),
                                "first sync with the Kubernetes API done"
                            );
                            first = false;
                        }
                        publish(&updates, inventory);
                        self.write_statuses(verdicts, &written);
                    }
                }
                () = updates.closed() => return Ok(()),
            }
            if changed && settle_at.is_none() {
                settle_at = Some(Instant::now() + SETTLE);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
