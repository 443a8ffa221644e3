//! Prometheus metrics (SPEC.md "What people use it through"; issue 10
//! point 6): requests by service, lane, reason, correlation and outcome,
//! decision and upstream latency histograms, proxy connections, eBPF
//! program costs, ring buffer drops and map fill levels, in the text format
//! at `/metrics` on a listener of their own (`--metrics-address`), in
//! local and Kubernetes mode alike. The same listener answers `/ready` and
//! `/healthz` for kubelet's probes, and the read-only flow views
//! `/debug/flows` and `/debug/lanes` for `tagger flows|lanes --kubernetes`.
//!
//! Request counters live in the flow table ([`crate::flows::FlowTable`]
//! records every request's outcome in one place) and are bumped without a
//! lock; everything else is read when scraped.
mod family;
mod histogram;
mod requests;
mod server;
mod text;

#[cfg(test)]
mod tests;

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

pub use requests::RequestMetrics;
pub use server::serve;
pub use text::CONTENT_TYPE;

use crate::{
    ebpf::{KernelStats, ProgramStat},
    flows::FlowTable,
    proxy::limits::ConnectionGate,
};
use histogram::seconds;
use text::Text;

/// How full a kernel map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

/// What the kernel side reports: the daemon's `Datapath`, or a stand-in in
/// tests.
pub trait KernelSource: Send + Sync {
    fn stats(&self) -> KernelStats;
    fn program_stats(&self) -> Vec<ProgramStat>;
    /// Only maps whose fill is known without walking them.
    fn map_fill(&self) -> Vec<MapFill>;
    /// Pods left out of the kernel's tracking over its capacity.
    fn pods_untracked(&self) -> usize {
        0
    }
}

impl KernelSource for crate::ebpf::Datapath {
    fn stats(&self) -> KernelStats {
        crate::ebpf::Datapath::stats(self)
    }

    fn program_stats(&self) -> Vec<ProgramStat> {
        crate::ebpf::Datapath::program_stats(self)
    }

    fn map_fill(&self) -> Vec<MapFill> {
        vec![
            MapFill {
                map: "TAGGER_MANAGED",
                entries: self.managed_count() as u64,
                capacity: u64::from(tagger_common::MAX_MANAGED),
            },
            MapFill {
                map: "TAGGER_POD_CGROUPS",
                entries: self.pod_flag_rows().len() as u64,
                capacity: u64::from(tagger_common::MAX_POD_SLOTS),
            },
        ]
    }

    fn pods_untracked(&self) -> usize {
        crate::ebpf::Datapath::pods_untracked(self)
    }
}

/// Everything a scrape reads. Parts the daemon starts later (the proxy's
/// connection gate, the kernel programs) are set when they exist; until
/// then their metrics are absent, not zero.
pub struct Hub {
    flows: Arc<FlowTable>,
    gate: OnceLock<Arc<ConnectionGate>>,
    kernel: OnceLock<Arc<dyn KernelSource>>,
    ready: AtomicBool,
}

impl Hub {
    pub fn new(flows: Arc<FlowTable>) -> Self {
        Self {
            flows,
            gate: OnceLock::new(),
            kernel: OnceLock::new(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn set_gate(&self, gate: Arc<ConnectionGate>) {
        let _ = self.gate.set(gate);
    }

    pub fn set_kernel(&self, kernel: Arc<dyn KernelSource>) {
        let _ = self.kernel.set(kernel);
    }

    /// The data path is up (programs attached, state synced): `/ready`
    /// answers 200 from now on.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The flow table the request counters live in (the metrics listener
    /// serves its views too).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The whole exposition.
    pub fn render(&self) -> String {
        let mut out = Text::default();
        out.family("tagger_build_info", "gauge", "The running tagger's version");
        out.sample(
            "tagger_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        out.family(
            "tagger_ready",
            "gauge",
            "1 once the data path is up (programs attached, state synced)",
        );
        out.sample("tagger_ready", &[], u8::from(self.is_ready()));
        self.flows.metrics().encode(&mut out);
        if let Some(gate) = self.gate.get() {
            encode_gate(&mut out, gate);
        }
        if let Some(kernel) = self.kernel.get() {
            encode_kernel(&mut out, kernel.as_ref());
        }
        out.finish()
    }
}

fn encode_gate(out: &mut Text, gate: &ConnectionGate) {
    let stats = gate.stats();
    out.family(
        "tagger_proxy_connections_open",
        "gauge",
        "Proxied connections open now",
    );
    out.sample("tagger_proxy_connections_open", &[], stats.connections_open);
    out.family(
        "tagger_proxy_connections_total",
        "counter",
        "Proxied connections admitted",
    );
    out.sample(
        "tagger_proxy_connections_total",
        &[],
        stats.connections_total,
    );
    out.family(
        "tagger_proxy_connections_refused_total",
        "counter",
        "Connections refused over a limit (limit: total or pod)",
    );
    out.sample(
        "tagger_proxy_connections_refused_total",
        &[("limit", "total")],
        stats.refused_over_total_limit,
    );
    out.sample(
        "tagger_proxy_connections_refused_total",
        &[("limit", "pod")],
        stats.refused_over_pod_limit,
    );
    out.family(
        "tagger_proxy_header_timeouts_total",
        "counter",
        "Connections closed because a request head did not arrive in time",
    );
    out.sample(
        "tagger_proxy_header_timeouts_total",
        &[],
        stats.closed_by_header_read_timeout,
    );
}

fn encode_kernel(out: &mut Text, kernel: &dyn KernelSource) {
    let stats = kernel.stats();
    out.family(
        "tagger_ebpf_events_total",
        "counter",
        "What the kernel programs counted, by event",
    );
    for (event, value) in [
        ("connect_seen", stats.connect_seen),
        ("connect_redirected", stats.connect_redirected),
        ("flow_linked", stats.flow_linked),
        ("map_errors", stats.map_errors),
        ("inbound_requests", stats.inbound_requests),
        ("outbound_tagged", stats.outbound_tagged),
    ] {
        out.sample("tagger_ebpf_events_total", &[("event", event)], value);
    }
    out.family(
        "tagger_ebpf_ring_dropped_total",
        "counter",
        "Inbound request events the ring buffer had no room for",
    );
    out.sample("tagger_ebpf_ring_dropped_total", &[], stats.events_dropped);
    out.family(
        "tagger_flows_full_total",
        "counter",
        "Connects left direct (no lane) because limits.max_kernel_flows redirected connections were open",
    );
    out.sample("tagger_flows_full_total", &[], stats.flows_full);
    let programs = kernel.program_stats();
    out.family(
        "tagger_ebpf_program_runs_total",
        "counter",
        "Runs of each eBPF program (counted while kernel.bpf_stats_enabled=1)",
    );
    for p in &programs {
        out.sample(
            "tagger_ebpf_program_runs_total",
            &[("program", &p.name)],
            p.run_count,
        );
    }
    out.family(
        "tagger_ebpf_program_run_seconds_total",
        "counter",
        "Time spent in each eBPF program (counted while kernel.bpf_stats_enabled=1)",
    );
    for p in &programs {
        out.sample(
            "tagger_ebpf_program_run_seconds_total",
            &[("program", &p.name)],
            seconds(p.run_time_ns),
        );
    }
    let maps = kernel.map_fill();
    out.family(
        "tagger_ebpf_map_entries",
        "gauge",
        "Entries in a kernel map",
    );
    for m in &maps {
        out.sample("tagger_ebpf_map_entries", &[("map", m.map)], m.entries);
    }
    out.family(
        "tagger_ebpf_map_capacity",
        "gauge",
        "Capacity of a kernel map (a full map degrades to direct connections)",
    );
    for m in &maps {
        out.sample("tagger_ebpf_map_capacity", &[("map", m.map)], m.capacity);
    }
    out.family(
        "tagger_pods_untracked",
        "gauge",
        "Pods over the kernel's capacity (limits.max_tracked_pods): their calls go direct, without lanes",
    );
    out.sample("tagger_pods_untracked", &[], kernel.pods_untracked() as u64);
}
