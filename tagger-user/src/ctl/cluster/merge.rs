//! Every node's answer joined into one view: what `--json` prints and what
//! the tables render, NODE first. Pure: the network is `mod.rs`'s.
use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::ctl::Shape;

/// One daemon pod of the cluster: the node it runs on and where its
/// metrics listener is, or why it cannot be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub node: String,
    pub pod: String,
    pub address: Result<SocketAddr, PodProblem>,
}

/// Why a daemon pod cannot be asked at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodProblem {
    #[error("the pod is {0}, not Running")]
    NotRunning(String),
    #[error("the pod has no IP yet")]
    NoIp,
    #[error("the pod's IP {0:?} is not an IP address")]
    BadIp(String),
    #[error(
        "the pod has no container port named `metrics` nor a `prometheus.io/port` annotation (give --metrics-port)"
    )]
    NoMetricsPort,
}

/// What `tagger flows|lanes --kubernetes` shows: each node's rows exactly
/// as its daemon sent them (the JSON of `tagger flows|lanes --json` on that
/// node), and the nodes that did not answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView<T> {
    /// The nodes that answered, by node name.
    pub nodes: Vec<NodeAnswer<T>>,
    /// The nodes that did not, by node name.
    pub unreachable: Vec<Unreachable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAnswer<T> {
    pub node: String,
    pub pod: String,
    pub address: String,
    pub rows: Vec<T>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub node: String,
    pub pod: String,
    /// Where it was asked; `None` if it could not be (see `error`).
    pub address: Option<String>,
    pub error: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} unreachable (pod {}", self.node, self.pod)?;
        if let Some(address) = &self.address {
            write!(f, " at {address}")?;
        }
        write!(f, "): {}", self.error)
    }
}

/// One daemon and its answer: where it answered from and its rows, or the
/// error that stopped it.
pub type Answer<T, E> = (Daemon, Result<(SocketAddr, Vec<T>), E>);

/// Joins each daemon's answer into one view, nodes in name order (then pods,
/// for two on one node).
pub fn merge<T, E: fmt::Display>(mut answers: Vec<Answer<T, E>>) -> ClusterView<T> {
    answers.sort_by(|(a, _), (b, _)| (&a.node, &a.pod).cmp(&(&b.node, &b.pod)));
    let mut view = ClusterView {
        nodes: Vec::new(),
        unreachable: Vec::new(),
    };
    for (daemon, answer) in answers {
        match answer {
            Ok((address, rows)) => view.nodes.push(NodeAnswer {
                node: daemon.node,
                pod: daemon.pod,
                address: address.to_string(),
                rows,
            }),
            Err(error) => view.unreachable.push(Unreachable {
                node: daemon.node,
                pod: daemon.pod,
                address: daemon.address.ok().map(|a| a.to_string()),
                error: error.to_string(),
            }),
        }
    }
    view
}

impl<T> ClusterView<T> {
    /// Whether any node answered (else the command fails).
    pub fn answered(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The table of `shape` with every node's rows, NODE first.
    pub fn render<const N: usize>(&self, shape: &Shape<T, N>) -> String {
        shape.render_led(
            "NODE",
            self.nodes
                .iter()
                .map(|n| (n.node.as_str(), n.rows.as_slice())),
        )
    }

    /// One line per node that did not answer, for stderr.
    pub fn notes(&self) -> Vec<String> {
        self.unreachable.iter().map(ToString::to_string).collect()
    }
}
