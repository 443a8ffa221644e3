//! `tagger flows|lanes --kubernetes`: the flow-to-lane map and per-lane
//! traffic of every node (issue 10, point 7). The daemon pods are listed
//! through the Kubernetes API with the user's own credentials (as kubectl
//! finds them); each Running one is asked, concurrently and each within a
//! time limit, for its view on its metrics listener (`/debug/flows`,
//! `/debug/lanes`: the admin socket's JSON); the answers are merged with a
//! NODE column ([`merge`]). A node that does not answer is reported, the
//! others still shown; the command fails only if none answered.
mod merge;

#[cfg(test)]
mod tests;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

pub use merge::{Answer, ClusterView, Daemon, NodeAnswer, PodProblem, Unreachable, merge};

use super::{BY_METHOD, FLOWS, LANES, ViewOptions, WATCH_EVERY, show, to_json};
use crate::{
    admin::{AdminError, View, exchange},
    flows::{FlowRow, LaneRate},
};

/// Where `deploy/` installs the daemons.
pub const DEFAULT_NAMESPACE: &str = "tagger-system";
/// The DaemonSet's pod label (`deploy/tagger-daemonset.yaml`).
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=tagger";
/// How long one node may take to answer: a node that is down must not hold
/// the whole view (or a `--watch` refresh) up.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// The daemon container's port for the metrics listener.
const METRICS_PORT_NAME: &str = "metrics";
const METRICS_PORT_ANNOTATION: &str = "prometheus.io/port";

/// Which pods are the daemons, and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    pub namespace: String,
    /// A label selector, as `kubectl -l` takes it.
    pub selector: String,
    /// The daemons' metrics port; `None`: each pod's container port named
    /// `metrics`.
    pub metrics_port: Option<u16>,
    pub timeout: Duration,
}

impl Default for ClusterTarget {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.into(),
            selector: DEFAULT_SELECTOR.into(),
            metrics_port: None,
            timeout: NODE_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("listing the tagger daemons (pods -l {selector} in namespace {namespace}): {source}")]
    List {
        namespace: String,
        selector: String,
        source: kube::Error,
    },
    #[error(
        "no pods -l {selector} in namespace {namespace}: is tagger installed (`kubectl apply -f deploy/`)? (--namespace and --selector choose others)"
    )]
    NoDaemons { namespace: String, selector: String },
    #[error("no tagger daemon answered ({0} unreachable, listed above)")]
    NoneAnswered(usize),
}

/// Why one node's view could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Pod(#[from] PodProblem),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Answer(#[from] AdminError),
}

/// The daemon a pod is, from its spec and status.
pub fn daemon_of(pod: &Pod, metrics_port: Option<u16>) -> Daemon {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let address = (|| {
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Unknown");
        if phase != "Running" {
            return Err(PodProblem::NotRunning(phase.to_string()));
        }
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| !ip.is_empty())
            .ok_or(PodProblem::NoIp)?;
        let ip: IpAddr = ip.parse().map_err(|_| PodProblem::BadIp(ip.to_string()))?;
        let port = match metrics_port {
            Some(port) => port,
            None => spec
                .into_iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(METRICS_PORT_NAME))
                .and_then(|p| u16::try_from(p.container_port).ok())
                // The DaemonSet declares no ports (on the host network they
                // would be host ports, and a surge pod of a rolling update
                // could not be scheduled beside the old one): its scrape
                // annotation names the port.
                .or_else(|| {
                    pod.metadata
                        .annotations
                        .as_ref()?
                        .get(METRICS_PORT_ANNOTATION)?
                        .parse()
                        .ok()
                })
                .ok_or(PodProblem::NoMetricsPort)?,
        };
        Ok(SocketAddr::new(ip, port))
    })();
    Daemon {
        node: spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "<none>".into()),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        address,
    }
}

/// The daemon pods, whatever their state (those that cannot be asked are
/// reported, not left out).
pub async fn daemons(client: &Client, target: &ClusterTarget) -> Result<Vec<Daemon>, ClusterError> {
    let pods = Api::<Pod>::namespaced(client.clone(), &target.namespace)
        .list(&ListParams::default().labels(&target.selector))
        .await
        .map_err(|source| ClusterError::List {
            namespace: target.namespace.clone(),
            selector: target.selector.clone(),
            source,
        })?;
    if pods.items.is_empty() {
        return Err(ClusterError::NoDaemons {
            namespace: target.namespace.clone(),
            selector: target.selector.clone(),
        });
    }
    Ok(pods
        .items
        .iter()
        .map(|pod| daemon_of(pod, target.metrics_port))
        .collect())
}

/// One node's view, read from its metrics listener within `timeout`.
async fn ask<T: DeserializeOwned>(
    daemon: &Daemon,
    view: View,
    timeout: Duration,
) -> Result<(SocketAddr, Vec<T>), NodeError> {
    let address = daemon.address.clone()?;
    let ask = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(NodeError::Connect)?;
        let request = Request::get(view.debug_path())
            .header("host", address.to_string())
            .body(Full::new(Bytes::new()))
            .expect("static request parts");
        let body = exchange(stream, request).await?;
        let rows = serde_json::from_slice(&body).map_err(AdminError::from)?;
        Ok((address, rows))
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| NodeError::Timeout(timeout))?
}

/// Every daemon's `view`, asked at once, merged.
pub async fn collect<T: DeserializeOwned>(
    client: &Client,
    target: &ClusterTarget,
    view: View,
) -> Result<ClusterView<T>, ClusterError> {
    let daemons = daemons(client, target).await?;
    let answers = futures::future::join_all(
        daemons
            .iter()
            .map(|daemon| ask::<T>(daemon, view, target.timeout)),
    )
    .await;
    Ok(merge(daemons.into_iter().zip(answers).collect()))
}

/// One refresh of the view: what goes to stdout, the lines about nodes that
/// did not answer for stderr, and whether any node did.
#[derive(Debug, Clone, PartialEq)]
pub struct Screen {
    pub text: String,
    pub notes: Vec<String>,
    pub answered: bool,
}

impl Screen {
    fn of<T: serde::Serialize>(
        view: &ClusterView<T>,
        json: bool,
        table: impl Fn() -> String,
    ) -> Self {
        Self {
            // With no node answering, an empty table would read as "no
            // flows yet", which no daemon said.
            text: match (json, view.answered()) {
                (true, _) => to_json(view),
                (false, true) => table(),
                (false, false) => String::new(),
            },
            notes: view.notes(),
            answered: view.answered(),
        }
    }
}

/// `tagger flows --kubernetes` once; with `by_method`, `--by-path`'s table.
pub async fn flows_screen(
    client: &Client,
    target: &ClusterTarget,
    json: bool,
    by_method: bool,
) -> Result<Screen, ClusterError> {
    let view: ClusterView<FlowRow> = collect(client, target, View::Flows).await?;
    Ok(Screen::of(&view, json, || match by_method {
        true => view.render(&BY_METHOD),
        false => view.render(&FLOWS),
    }))
}

/// `tagger lanes --kubernetes` once.
pub async fn lanes_screen(
    client: &Client,
    target: &ClusterTarget,
    json: bool,
) -> Result<Screen, ClusterError> {
    let view: ClusterView<LaneRate> = collect(client, target, View::Lanes).await?;
    Ok(Screen::of(&view, json, || view.render(&LANES)))
}

/// `tagger flows --kubernetes` (`--watch`: refreshed every second; a
/// refresh with no node answering is shown and the next one tried).
pub async fn flows(
    client: Client,
    target: ClusterTarget,
    options: ViewOptions,
    by_method: bool,
) -> Result<(), ClusterError> {
    show_repeatedly(options, || {
        flows_screen(&client, &target, options.json, by_method)
    })
    .await
}

/// `tagger lanes --kubernetes`.
pub async fn lanes(
    client: Client,
    target: ClusterTarget,
    options: ViewOptions,
) -> Result<(), ClusterError> {
    show_repeatedly(options, || lanes_screen(&client, &target, options.json)).await
}

async fn show_repeatedly<F, Fut>(options: ViewOptions, screen: F) -> Result<(), ClusterError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Screen, ClusterError>>,
{
    loop {
        let screen = screen().await?;
        show(options.watch, &screen.text, &screen.notes);
        if !options.watch {
            return match screen.answered {
                true => Ok(()),
                false => Err(ClusterError::NoneAnswered(screen.notes.len())),
            };
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}
