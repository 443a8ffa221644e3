//! The read-only views of the flow table that `tagger flows` and `tagger
//! lanes` print, serialised in one place for both listeners that serve
//! them: the admin socket (`/flows`, `/lanes`, for the CLI on the node) and
//! the metrics listener (`/debug/flows`, `/debug/lanes`, for the
//! cluster-wide CLI, which reaches each node's daemon over the network).
//! Both answer the same bytes, so one decoder reads either.
//!
//! `tagger flows --by-path` needs no view of its own: it is rendered from
//! the same rows (their `rpc` field) by the CLI.
use crate::flows::FlowTable;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The flow-to-lane map: [`crate::flows::FlowRow`]s.
    Flows,
    /// Requests per second per lane per service: [`crate::flows::LaneRate`]s.
    Lanes,
}

impl View {
    /// Its path on the admin socket.
    pub fn admin_path(self) -> &'static str {
        match self {
            Self::Flows => "/flows",
            Self::Lanes => "/lanes",
        }
    }

    /// Its path on the metrics listener: under `/debug/`, apart from what
    /// Prometheus and kubelet read.
    pub fn debug_path(self) -> &'static str {
        match self {
            Self::Flows => "/debug/flows",
            Self::Lanes => "/debug/lanes",
        }
    }

    /// The view whose metrics-listener path this is.
    pub fn from_debug_path(path: &str) -> Option<Self> {
        [Self::Flows, Self::Lanes]
            .into_iter()
            .find(|v| v.debug_path() == path)
    }

    /// The JSON body, as `--json` prints it.
    pub fn json(self, flows: &FlowTable) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Self::Flows => serde_json::to_vec_pretty(&flows.rows()),
            Self::Lanes => serde_json::to_vec_pretty(&flows.lane_rates()),
        }
    }
}
