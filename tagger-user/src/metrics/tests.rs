//! The exposition format, the histogram, the lock-free family, and the
//! kernel and connection sections rendered from stand-ins.
use std::{sync::Arc, time::Duration};

use super::{
    Hub, KernelSource, MapFill,
    family::Family,
    histogram::{Histogram, seconds},
    text::{Text, escape_label},
};
use crate::{
    config::LimitsSpec,
    ebpf::{KernelStats, ProgramStat},
    flows::{FlowTable, RequestRecord},
    propagation::Correlation,
    proxy::limits::ConnectionGate,
    routing::{Reason, StrippedFrom},
};

#[test]
fn label_values_are_escaped() {
    for (value, want) in [
        ("gray", "gray"),
        ("rule:a\"b", "rule:a\\\"b"),
        ("back\\slash", "back\\\\slash"),
        ("two\nlines", "two\\nlines"),
    ] {
        assert_eq!(escape_label(value), want, "{value:?}");
    }
    let mut out = Text::default();
    out.family("m", "counter", "help with \\ and\nnewline");
    out.sample("m", &[("a", "x\"y"), ("b", "")], 3);
    out.sample("m", &[], 0.5);
    assert_eq!(
        out.finish(),
        "# HELP m help with \\\\ and\\nnewline\n# TYPE m counter\nm{a=\"x\\\"y\",b=\"\"} 3\nm 0.5\n"
    );
}

#[test]
fn seconds_are_decimal() {
    for (ns, want) in [
        (5_000, "0.000005"),
        (2_500_000, "0.0025"),
        (1_000_000_000, "1"),
        (0, "0"),
    ] {
        assert_eq!(seconds(ns), want);
    }
}

#[test]
fn histogram_buckets_are_cumulative_and_agree_with_the_count() {
    static BOUNDS: &[u64] = &[1_000, 10_000, 100_000];
    let h = Histogram::new(BOUNDS);
    for ns in [500, 1_000, 1_001, 50_000, 2_000_000] {
        h.observe(Duration::from_nanos(ns));
    }
    let mut out = Text::default();
    h.encode(&mut out, "d", &[("service", "svc")]);
    assert_eq!(
        out.finish(),
        "d_bucket{service=\"svc\",le=\"0.000001\"} 2\n\
         d_bucket{service=\"svc\",le=\"0.00001\"} 3\n\
         d_bucket{service=\"svc\",le=\"0.0001\"} 4\n\
         d_bucket{service=\"svc\",le=\"+Inf\"} 5\n\
         d_sum{service=\"svc\"} 0.002052501\n\
         d_count{service=\"svc\"} 5\n"
    );
}

/// Threads racing to create and bump the same few series lose no count.
#[test]
fn family_counts_from_many_threads() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let family: Arc<Family<String, AtomicU64>> = Arc::new(Family::new(AtomicU64::default));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let family = family.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let key = format!("s{}", (i + t) % 3);
                    family.with(
                        key.as_str(),
                        || key.clone(),
                        |c| {
                            c.fetch_add(1, Ordering::Relaxed);
                        },
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut entries: Vec<(String, u64)> = family
        .entries()
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries.iter().map(|e| e.1).sum::<u64>(), 40_000);
}

struct FakeKernel;

impl KernelSource for FakeKernel {
    fn stats(&self) -> KernelStats {
        KernelStats {
            connect_seen: 10,
            connect_redirected: 7,
            flow_linked: 7,
            map_errors: 0,
            inbound_requests: 3,
            outbound_tagged: 2,
            events_dropped: 1,
            flows_full: 4,
        }
    }

    fn program_stats(&self) -> Vec<ProgramStat> {
        vec![ProgramStat {
            name: "tagger_connect4".into(),
            run_count: 12,
            run_time_ns: 3_400,
        }]
    }

    fn map_fill(&self) -> Vec<MapFill> {
        vec![MapFill {
            map: "TAGGER_MANAGED",
            entries: 5,
            capacity: 16_384,
        }]
    }
}

fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn kernel_and_connection_sections() {
    let hub = Hub::new(Arc::new(FlowTable::default()));
    let before = hub.render();
    assert!(before.contains("tagger_ready 0\n"));
    // Parts not started yet are absent, not zero.
    assert!(!before.contains("tagger_ebpf") && !before.contains("tagger_proxy_connections"));

    let gate = Arc::new(ConnectionGate::default());
    let limits = LimitsSpec {
        max_connections_per_pod: 1,
        ..LimitsSpec::default()
    };
    let held = gate.admit(1, &limits).unwrap();
    assert!(gate.admit(1, &limits).is_err());
    let other = gate.admit(2, &limits).unwrap();
    drop(other);
    hub.set_gate(gate.clone());
    hub.set_kernel(Arc::new(FakeKernel));
    hub.set_ready(true);
    let text = hub.render();
    assert!(text.contains("tagger_ready 1\n"));
    assert_eq!(
        lines_of(&text, "tagger_proxy_connections"),
        [
            "tagger_proxy_connections_open 1",
            "tagger_proxy_connections_total 2",
            "tagger_proxy_connections_refused_total{limit=\"total\"} 0",
            "tagger_proxy_connections_refused_total{limit=\"pod\"} 1",
        ]
    );
    drop(held);
    assert_eq!(
        lines_of(&text, "tagger_ebpf"),
        [
            "tagger_ebpf_events_total{event=\"connect_seen\"} 10",
            "tagger_ebpf_events_total{event=\"connect_redirected\"} 7",
            "tagger_ebpf_events_total{event=\"flow_linked\"} 7",
            "tagger_ebpf_events_total{event=\"map_errors\"} 0",
            "tagger_ebpf_events_total{event=\"inbound_requests\"} 3",
            "tagger_ebpf_events_total{event=\"outbound_tagged\"} 2",
            "tagger_ebpf_ring_dropped_total 1",
            "tagger_ebpf_program_runs_total{program=\"tagger_connect4\"} 12",
            "tagger_ebpf_program_run_seconds_total{program=\"tagger_connect4\"} 0.0000034",
            "tagger_ebpf_map_entries{map=\"TAGGER_MANAGED\"} 5",
            "tagger_ebpf_map_capacity{map=\"TAGGER_MANAGED\"} 16384",
        ]
    );
    // Every family has HELP and TYPE once.
    for family in ["tagger_requests_total", "tagger_ebpf_map_entries"] {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{family}"
        );
    }
}

#[test]
fn requests_by_labels_and_outcome() {
    let flows = FlowTable::default();
    let rule = Reason::Rule("vip \"users\"".into());
    let record = |lane, reason: &Reason, correlation, ok| {
        flows.record(RequestRecord {
            source: "caller",
            service: "svc",
            endpoint: "base",
            lane,
            reason,
            fallback: false,
            served_lane: None,
            correlation,
            ok,
            rpc: None,
            stripped: None,
        })
    };
    record(Some("gray"), &rule, Correlation::None, true);
    record(Some("gray"), &rule, Correlation::None, false);
    record(None, &Reason::Default, Correlation::Untrusted, true);
    record(
        Some("gray"),
        &Reason::InheritedThread,
        Correlation::Trusted,
        true,
    );
    let hub = Hub::new(Arc::new(flows));
    let text = hub.render();
    assert_eq!(
        lines_of(&text, "tagger_requests_total"),
        [
            "tagger_requests_total{service=\"svc\",lane=\"baseline\",reason=\"default\",correlation=\"untrusted\",outcome=\"ok\"} 1",
            "tagger_requests_total{service=\"svc\",lane=\"baseline\",reason=\"default\",correlation=\"untrusted\",outcome=\"error\"} 0",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"inherited-thread\",correlation=\"trusted\",outcome=\"ok\"} 1",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"inherited-thread\",correlation=\"trusted\",outcome=\"error\"} 0",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"rule:vip \\\"users\\\"\",correlation=\"none\",outcome=\"ok\"} 1",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"rule:vip \\\"users\\\"\",correlation=\"none\",outcome=\"error\"} 1",
        ]
    );
}

/// A lane the service did not trust its caller with is counted by service
/// and where it came from, beside the request's own counters.
#[test]
fn stripped_lanes_by_service_and_claim() {
    let flows = FlowTable::default();
    let record = |service, stripped| {
        flows.record(RequestRecord {
            source: "client",
            service,
            endpoint: "base",
            lane: None,
            reason: &Reason::Default,
            fallback: false,
            served_lane: None,
            correlation: Correlation::None,
            rpc: None,
            stripped,
            ok: true,
        })
    };
    record("web", Some(StrippedFrom::Header));
    record("web", Some(StrippedFrom::Header));
    record("web", Some(StrippedFrom::Inherited));
    record("web", None);
    record("api", None);
    let hub = Hub::new(Arc::new(flows));
    let text = hub.render();
    assert_eq!(
        lines_of(&text, "tagger_lane_stripped_total"),
        [
            "tagger_lane_stripped_total{service=\"web\",from=\"header\"} 2",
            "tagger_lane_stripped_total{service=\"web\",from=\"inherited\"} 1",
        ],
        "{text}"
    );
    assert!(
        text.contains("# TYPE tagger_lane_stripped_total counter"),
        "{text}"
    );
}
