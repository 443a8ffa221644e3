//! SPEC section F end to end: gRPC call chains `a -> b -> c` through the
//! real daemon, in two flavours (tests/clusters/grpc.yaml): Python grpcio
//! (`tests/apps/grpc_hop.py`) and grpc-go (`tests/apps/grpc-go`, built by
//! the harness from Debian's golang-google-grpc-dev). Each hop makes every
//! call through one channel, so calls of all lanes share one HTTP/2
//! connection and tagger decides each stream on its own: by `x-lane`
//! metadata, by a rule on the method path, by the caller pod's sticky
//! lane, falling back to baseline where a service has no gray pod.
//!
//! The Go hops copy no metadata: tagger's uprobes on grpc-go carry each
//! stream's lane from the stream a handler serves to the streams it opens
//! (SPEC D, "Go gRPC"; `tagger-ebpf/src/grpc.rs`), so every Go test below
//! is propagation through unmodified apps. The Python hops copy `x-lane`
//! (as an app instrumented for lanes does): grpcio's C core reads and
//! writes every stream from its own threads, so no thread says which
//! stream caused a call; what tagger does when a Python gRPC hop copies
//! nothing (untrusted, never a guessed lane) is `python_propagation_without_copying`.
use std::{path::PathBuf, process::Command, sync::Once, time::Duration};

use serde_json::Value;
use tagger_e2e::{
    Cluster, SharedCluster, eventually, flow_delta, requests_where, shared, text, workspace,
};

const GRPC: &str = "grpc.yaml";

#[derive(Clone, Copy, Debug)]
enum Flavour {
    Python,
    Go,
}

impl Flavour {
    /// The chain's services are `{prefix}-a`, `-b`, `-c` (and `-f`, `-nb`,
    /// `-n`).
    fn prefix(self) -> &'static str {
        match self {
            Flavour::Python => "gpy",
            Flavour::Go => "ggo",
        }
    }

    /// Why a hop's call is in the lane of the call it serves: the Python
    /// hops copy the lane header; tagger carries it through the Go ones.
    fn carried(self) -> &'static str {
        match self {
            Flavour::Python => "header",
            Flavour::Go => "inherited-goroutine",
        }
    }

    /// The answer of a call entering at `{p}-a-{a}`: which pods served,
    /// and c's echo of the request.
    fn chain(self, a: &str, b: &str, c: &str, request: &str) -> String {
        let p = self.prefix();
        format!("{p}-a-{a} -> {p}-b-{b} -> {p}-c-{c}({request})")
    }
}

/// The shared cluster, its grpc-go callers started after the daemon.
///
/// grpc-go dials as soon as the app starts (a `ClientConn` connects
/// eagerly) and keeps that one connection for its life, while the local
/// cluster starts pods before the daemon: those connections were made
/// with nothing to redirect them (the iptables fallback took them to a
/// baseline pod) and would never be routed by lane. README's Limits say
/// so for any connection made while no daemon ran; here the Go pods that
/// call out are restarted once, as pods deployed after the daemon are.
fn grpc_cluster(flavour: Flavour) -> SharedCluster {
    static GO_RESTARTED: Once = Once::new();
    let cluster = shared(GRPC);
    if let Flavour::Go = flavour {
        GO_RESTARTED.call_once(|| {
            for pod in GO_PODS.iter().filter(|p| !p.starts_with("c-")) {
                let pod = format!("ggo-{pod}");
                for action in ["stop-pod", "start-pod"] {
                    let out = cluster.tagger(&["cluster", action, &pod]);
                    assert!(
                        out.status.success(),
                        "{action} {pod}: {}",
                        text(&out.stderr)
                    );
                }
            }
            // Probed: every Go pod's process is a Go process with uprobes,
            // grpc-go's streams followed (b's stripped binaries too: by the
            // grpc-go version table); a call made before would be
            // untrusted, not wrong.
            let probed = eventually(Duration::from_secs(10), || {
                let dump = cluster.config_dump();
                let rows = dump["processes"]["go"].as_array()?.clone();
                GO_PODS
                    .iter()
                    .flat_map(|pod| pod_pids(&cluster, &format!("ggo-{pod}")))
                    .all(|pid| {
                        rows.iter().any(|r| {
                            r["pid"] == pid && r["kind"] == "go" && r["grpc"] == "followed"
                        })
                    })
                    .then_some(())
            });
            assert!(
                probed.is_some(),
                "the Go pods were never probed: {:#}",
                cluster.config_dump()["processes"]
            );
            // Back in service once the daemon's probes found them ready.
            let gray = flavour.chain("gray", "gray", "gray", "m=ready");
            let ready = eventually(Duration::from_secs(10), || {
                (call(
                    &cluster,
                    "ggo-a",
                    "/lanes.Hop/Call",
                    "m=ready",
                    &["x-lane=gray"],
                ) == gray)
                    .then_some(())
            });
            assert!(
                ready.is_some(),
                "the restarted Go pods never served in their lane"
            );
        });
    }
    cluster
}

/// The Go pods (without the `ggo-` prefix); all but c's call out.
const GO_PODS: [&str; 9] = [
    "a-base", "a-gray", "b-base", "b-gray", "b-blue", "c-base", "c-gray", "f-base", "nb-base",
];

/// The processes of a pod, from its cgroup.
fn pod_pids(cluster: &Cluster, pod: &str) -> Vec<u32> {
    let record = cluster.record();
    let cgroup = record["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pod)
        .and_then(|p| p["cgroup"].as_str())
        .unwrap_or_else(|| panic!("no cgroup for {pod}"))
        .to_string();
    std::fs::read_to_string(PathBuf::from(cgroup).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn client_script() -> PathBuf {
    workspace().join("tests/apps/grpc_client.py")
}

/// One unary call from the client pod to `{prefix}-{service}:8080`, with
/// `metadata` (`key=value`); the answer.
fn call(
    cluster: &Cluster,
    service: &str,
    method: &str,
    request: &str,
    metadata: &[&str],
) -> String {
    let script = client_script();
    let target = format!("{service}:8080");
    let mut command = vec![
        "python3",
        script.to_str().unwrap(),
        "call",
        &target,
        method,
        request,
    ];
    command.extend_from_slice(metadata);
    let out = cluster.exec("client", &command);
    assert!(
        out.status.success(),
        "call {method} to {target} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The same from the node (outside every pod) straight to a pod's
/// address: how a call enters a given pod, as an ingress would send it.
fn call_pod_from_node(
    cluster: &Cluster,
    pod: &str,
    method: &str,
    request: &str,
    metadata: &[&str],
) -> String {
    let target = format!("{}:8080", cluster.pod_ip(pod));
    let out = Command::new("python3")
        .arg(client_script())
        .args(["call", &target, method, request])
        .args(metadata)
        .output()
        .expect("running the gRPC client");
    assert!(
        out.status.success(),
        "call {method} to {pod} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The one row of `flows` from `source` to `endpoint` (pods, without the
/// prefix), asserting there is exactly one.
fn only_row<'a>(flows: &'a [Value], flavour: Flavour, source: &str, endpoint: &str) -> &'a Value {
    let p = flavour.prefix();
    let (source, endpoint) = (format!("{p}-{source}"), format!("{p}-{endpoint}"));
    let rows: Vec<&Value> = flows
        .iter()
        .filter(|f| f["source"] == source.as_str() && f["endpoint"] == endpoint.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "{source} -> {endpoint}: {flows:#?}");
    rows[0]
}

/// (lane, reason, fallback, rpc, requests) of a flow row, to compare whole.
fn decision(row: &Value) -> (Option<&str>, &str, bool, &str, u64) {
    (
        row["lane"].as_str(),
        row["reason"].as_str().unwrap_or(""),
        row["fallback"].as_bool().unwrap_or(false),
        row["rpc"].as_str().unwrap_or(""),
        row["requests"].as_u64().unwrap_or(0),
    )
}

/// `x-lane: gray` metadata sent to a: every hop gray (the hops copy the
/// metadata); without it, every hop baseline.
fn lane_by_metadata(flavour: Flavour) {
    let cluster = grpc_cluster(flavour);
    let p = flavour.prefix();
    let before = cluster.flows();
    for i in 0..3 {
        let m = format!("m={i}");
        assert_eq!(
            call(
                &cluster,
                &format!("{p}-a"),
                "/lanes.Hop/Call",
                &m,
                &["x-lane=gray"]
            ),
            flavour.chain("gray", "gray", "gray", &m)
        );
        assert_eq!(
            call(&cluster, &format!("{p}-a"), "/lanes.Hop/Call", &m, &[]),
            flavour.chain("base", "base", "base", &m)
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let call = "lanes.Hop/Call";
    let carried = flavour.carried();
    for (source, endpoint, want) in [
        ("a-gray", "b-gray", (Some("gray"), carried, false, call, 3)),
        ("b-gray", "c-gray", (Some("gray"), carried, false, call, 3)),
        ("a-base", "b-base", (None, "default", false, call, 3)),
        ("b-base", "c-base", (None, "default", false, call, 3)),
    ] {
        // One row: every call of the pair decided alike, also in how sure
        // tagger was of its cause.
        let row = only_row(&flows, flavour, source, endpoint);
        assert_eq!(decision(row), want, "{flavour:?}: {row}");
        if let Flavour::Go = flavour {
            assert_eq!(row["correlation"], "trusted", "{row}");
        }
    }
}

#[test]
fn python_lane_by_metadata() {
    lane_by_metadata(Flavour::Python);
}

#[test]
fn go_lane_by_metadata() {
    lane_by_metadata(Flavour::Go);
}

/// Rules on the method path: a prefix at b (`/lanes.Hop/Gray...`) puts the
/// call in gray there and, gray being sticky, on to c; a regex at c
/// (`...Canary`) puts only c's hop in gray; any other method stays
/// baseline.
fn lane_by_method_rule(flavour: Flavour) {
    let cluster = grpc_cluster(flavour);
    let p = flavour.prefix();
    let a = format!("{p}-a");
    let before = cluster.flows();
    for i in 0..3 {
        let m = format!("m={i}");
        assert_eq!(
            call(&cluster, &a, "/lanes.Hop/GrayCall", &m, &[]),
            flavour.chain("base", "gray", "gray", &m)
        );
        assert_eq!(
            call(&cluster, &a, "/lanes.Hop/TryCanary", &m, &[]),
            flavour.chain("base", "base", "gray", &m)
        );
        assert_eq!(
            call(&cluster, &a, "/lanes.Hop/Call", &m, &[]),
            flavour.chain("base", "base", "base", &m)
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let by_prefix = format!("rule:{p}-b-gray-methods");
    let by_regex = format!("rule:{p}-c-canaries");
    let row = only_row(&flows, flavour, "a-base", "b-gray");
    assert_eq!(
        decision(row),
        (
            Some("gray"),
            by_prefix.as_str(),
            false,
            "lanes.Hop/GrayCall",
            3
        ),
        "{row}"
    );
    // The sticky lane travels on as the lane header, which the Python b
    // copies, and which tagger carries through the Go b.
    let row = only_row(&flows, flavour, "b-gray", "c-gray");
    assert_eq!(
        decision(row),
        (
            Some("gray"),
            flavour.carried(),
            false,
            "lanes.Hop/GrayCall",
            3
        ),
        "{row}"
    );
    let to_c: Vec<&Value> = flows
        .iter()
        .filter(|f| f["source"] == format!("{p}-b-base").as_str())
        .collect();
    let canary = to_c
        .iter()
        .find(|f| f["rpc"] == "lanes.Hop/TryCanary")
        .unwrap_or_else(|| panic!("{flows:#?}"));
    assert_eq!(
        (decision(canary), canary["endpoint"].as_str()),
        (
            (
                Some("gray"),
                by_regex.as_str(),
                false,
                "lanes.Hop/TryCanary",
                3
            ),
            Some(format!("{p}-c-gray").as_str())
        ),
        "{canary}"
    );
}

#[test]
fn python_lane_by_method_rule() {
    lane_by_method_rule(Flavour::Python);
}

#[test]
fn go_lane_by_method_rule() {
    lane_by_method_rule(Flavour::Go);
}

/// A gray call through `f -> nb -> c`, where nb has no gray pod: nb's
/// baseline pod serves it (fallback), the lane travels on, and c serves it
/// gray again.
fn fallback_and_return(flavour: Flavour) {
    let cluster = grpc_cluster(flavour);
    let p = flavour.prefix();
    let before = cluster.flows();
    for i in 0..3 {
        let m = format!("m={i}");
        assert_eq!(
            call(
                &cluster,
                &format!("{p}-f"),
                "/lanes.Hop/Call",
                &m,
                &["x-lane=gray"]
            ),
            format!("{p}-f-base -> {p}-nb-base -> {p}-c-gray({m})")
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let call = "lanes.Hop/Call";
    let row = only_row(&flows, flavour, "f-base", "nb-base");
    assert_eq!(
        decision(row),
        (Some("gray"), flavour.carried(), true, call, 3),
        "{row}"
    );
    let row = only_row(&flows, flavour, "nb-base", "c-gray");
    assert_eq!(
        decision(row),
        (Some("gray"), flavour.carried(), false, call, 3),
        "{row}"
    );
}

#[test]
fn python_fallback_and_return() {
    fallback_and_return(Flavour::Python);
}

#[test]
fn go_fallback_and_return() {
    fallback_and_return(Flavour::Go);
}

/// Pod dyeing (scenario B1): a call without metadata that enters a's gray
/// pod stays gray downstream (gray is sticky: tagger sends the lane on);
/// one that enters a's baseline pod stays baseline.
fn pod_dyeing(flavour: Flavour) {
    let cluster = grpc_cluster(flavour);
    let p = flavour.prefix();
    let before = cluster.flows();
    for i in 0..3 {
        let m = format!("m={i}");
        assert_eq!(
            call_pod_from_node(&cluster, &format!("{p}-a-gray"), "/lanes.Hop/Call", &m, &[]),
            flavour.chain("gray", "gray", "gray", &m)
        );
        assert_eq!(
            call_pod_from_node(&cluster, &format!("{p}-a-base"), "/lanes.Hop/Call", &m, &[]),
            flavour.chain("base", "base", "base", &m)
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let row = only_row(&flows, flavour, "a-gray", "b-gray");
    assert_eq!(
        decision(row),
        (Some("gray"), "pod-lane", false, "lanes.Hop/Call", 3),
        "{row}"
    );
}

#[test]
fn python_pod_dyeing() {
    pod_dyeing(Flavour::Python);
}

#[test]
fn go_pod_dyeing() {
    pod_dyeing(Flavour::Go);
}

/// Established TCP connections of a pod to the node proxy (every managed
/// call is redirected there).
fn proxy_connections(cluster: &Cluster, pod: &str) -> usize {
    let out = cluster.exec(
        pod,
        &[
            "ss",
            "-Htn",
            "state",
            "established",
            "dst",
            "10.77.0.1:15001",
        ],
    );
    assert!(out.status.success(), "ss in {pod}: {}", text(&out.stderr));
    text(&out.stdout).lines().count()
}

/// 2000 unary calls, every other one with `x-lane: gray`, 64 in flight
/// over 4 channels (4 HTTP/2 connections) from the client; each hop
/// multiplexes all its calls, of both lanes, on its one connection. Every
/// answer names the pods that served it: 0 in the wrong lane, and the
/// flows count exactly 2 hop decisions per call, the gray ones carried
/// (copied by the Python hops, inherited through the Go ones).
fn burst_is_exact(flavour: Flavour) {
    const CALLS: usize = 2000;
    let cluster = grpc_cluster(flavour);
    let p = flavour.prefix();
    let before = cluster.flows();
    let script = client_script();
    let target = format!("{p}-a:8080");
    let calls = CALLS.to_string();
    let out = cluster.exec(
        "client",
        &[
            "python3",
            script.to_str().unwrap(),
            "burst",
            &target,
            "/lanes.Hop/Call",
            &calls,
            "4",
            "64",
        ],
    );
    assert!(out.status.success(), "burst failed: {}", text(&out.stderr));
    let mut wrong = Vec::new();
    let mut answered = 0;
    for line in text(&out.stdout).lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        answered += 1;
        let i = row["i"].as_u64().unwrap();
        let lane = if row["gray"].as_bool().unwrap() {
            "gray"
        } else {
            "base"
        };
        let expected = flavour.chain(lane, lane, lane, &format!("m={i}"));
        if row["answer"] != expected.as_str() {
            wrong.push(format!("{i}: {} (expected {expected})", row["answer"]));
        }
    }
    let hops: Vec<Value> = flow_delta(&before, &cluster.flows())
        .into_iter()
        .filter(|f| f["source"] != "client")
        .collect();
    let carried = |f: &Value| f["lane"] == "gray" && f["reason"] == flavour.carried();
    println!(
        "| {flavour:?} gRPC | {CALLS} calls | {} wrong | {} hop decisions, {} gray {}, {} untrusted |",
        wrong.len(),
        requests_where(&hops, |_| true),
        requests_where(&hops, carried),
        flavour.carried(),
        requests_where(&hops, |f| f["correlation"] == "untrusted"),
    );
    assert_eq!(answered, CALLS, "every call answered");
    assert!(
        wrong.is_empty(),
        "{flavour:?}: {} of {CALLS} in the wrong lane, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(
        requests_where(&hops, |_| true),
        2 * CALLS as u64,
        "{hops:#?}"
    );
    // Every gray call carried. A hop decision tagger could not tie to its
    // cause is marked untrusted and takes the safe default (here the gray
    // pod's sticky lane, so the answer above stays right): allowed for a
    // handful of calls, never a trusted one in another lane. (Until the
    // runtime's own goroutines were told apart, about one run in three had
    // 1-3 such calls at the burst's start: the first GC cycle's mark
    // workers, started by a grpc-go reader, took the handoff meant for a
    // stream's handler. None in 6 runs since.)
    // (The Python hops' calls are all untrusted: grpcio ties no call to a
    // stream; their lane comes from the header they copy.)
    let (untrusted, gray_untrusted) = match flavour {
        Flavour::Go => (
            requests_where(&hops, |f| f["correlation"] == "untrusted"),
            requests_where(&hops, |f| {
                f["lane"] == "gray" && f["correlation"] == "untrusted"
            }),
        ),
        Flavour::Python => (0, 0),
    };
    assert!(
        untrusted <= CALLS as u64 / 200,
        "{untrusted} untrusted: {hops:#?}"
    );
    assert_eq!(
        requests_where(&hops, carried) + gray_untrusted,
        CALLS as u64,
        "{hops:#?}"
    );
    // Each hop pod made its calls of both lanes on one connection.
    for pod in ["a-base", "a-gray", "b-base", "b-gray"] {
        assert_eq!(
            proxy_connections(&cluster, &format!("{p}-{pod}")),
            1,
            "{p}-{pod}: one multiplexed connection"
        );
    }
}

#[test]
fn python_burst_is_exact() {
    burst_is_exact(Flavour::Python);
}

#[test]
fn go_burst_is_exact() {
    burst_is_exact(Flavour::Go);
}

/// A gray call through `gpy-n`, a Python grpcio hop that copies no
/// metadata: grpcio's C core reads every stream on its own poller threads,
/// so no thread says which inbound stream caused a call. What must hold
/// (SPEC D's "untrusted and safe, never wrong"): a baseline call never walks
/// into gray, and every call the hop makes while it serves is marked
/// untrusted (the kernel saw it read an HTTP/2 preface), never decided as
/// if it had no cause.
#[test]
fn python_propagation_without_copying() {
    let cluster = grpc_cluster(Flavour::Python);
    let (n, source) = ("gpy-n", "gpy-n-base");
    for i in 0..5 {
        let m = format!("m={i}");
        assert_eq!(
            call(&cluster, n, "/lanes.Hop/Call", &m, &[]),
            format!("{source} -> gpy-c-base({m})"),
            "a baseline call stays baseline"
        );
    }
    let before = cluster.flows();
    for i in 0..5 {
        let m = format!("m={i}");
        let answer = call(&cluster, n, "/lanes.Hop/Call", &m, &["x-lane=gray"]);
        assert_eq!(answer, format!("{source} -> gpy-c-base({m})"));
    }
    let flows = flow_delta(&before, &cluster.flows());
    let hops: Vec<&Value> = flows.iter().filter(|f| f["source"] == source).collect();
    assert_eq!(requests_where(&flows, |f| f["source"] == source), 5);
    for row in hops {
        assert_eq!(
            (row["lane"].as_str(), row["correlation"].as_str()),
            (None, Some("untrusted")),
            "{row}"
        );
    }
}

/// Scenarios B2 and B3 through the Go chain, whose hops copy nothing,
/// entering a's baseline pod: `x-lane: gray` gives `a -> b gray -> c gray`
/// (tagger carries the lane); `x-user-id: 100`, which b's rule reads as it
/// passes through a (a pass-through header), gives `a -> b blue -> c`,
/// blue being decided at b only; `101` gives the baseline chain.
#[test]
fn go_b2_and_b3_through_hops_that_copy_nothing() {
    let cluster = grpc_cluster(Flavour::Go);
    let before = cluster.flows();
    let call = |metadata: &[&str], m: &str| {
        call_pod_from_node(&cluster, "ggo-a-base", "/lanes.Hop/Call", m, metadata)
    };
    for i in 0..3 {
        let m = format!("m={i}");
        assert_eq!(
            call(&["x-lane=gray"], &m),
            format!("ggo-a-base -> ggo-b-gray -> ggo-c-gray({m})"),
            "B2"
        );
        assert_eq!(
            call(&["x-user-id=100"], &m),
            format!("ggo-a-base -> ggo-b-blue -> ggo-c-base({m})"),
            "B3, user 100"
        );
        assert_eq!(
            call(&["x-user-id=101"], &m),
            format!("ggo-a-base -> ggo-b-base -> ggo-c-base({m})"),
            "B3, user 101"
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let call = "lanes.Hop/Call";
    for (source, endpoint, want) in [
        (
            "a-base",
            "b-gray",
            (Some("gray"), "inherited-goroutine", false, call, 3),
        ),
        (
            "b-gray",
            "c-gray",
            (Some("gray"), "inherited-goroutine", false, call, 3),
        ),
        (
            "a-base",
            "b-blue",
            (Some("blue"), "rule:ggo-b-user-100", false, call, 3),
        ),
        ("b-blue", "c-base", (None, "default", false, call, 3)),
    ] {
        let row = only_row(&flows, Flavour::Go, source, endpoint);
        assert_eq!(decision(row), want, "{row}");
        assert_eq!(row["correlation"], "trusted", "{row}");
    }
}

/// Server streaming through the Go chain, whose hops copy nothing: each
/// hop relays its own streaming call's messages, all in the lane of the
/// stream it serves, gray or baseline, and the streams' contexts end with
/// their status (a later call of the same hop is decided afresh).
#[test]
fn go_streaming_keeps_its_lane() {
    let cluster = grpc_cluster(Flavour::Go);
    let stream = |metadata: &[&str], m: &str| {
        let script = client_script();
        let mut command = vec![
            "python3",
            script.to_str().unwrap(),
            "stream",
            "ggo-a:8080",
            "/lanes.Hop/ListStream",
            m,
        ];
        command.extend_from_slice(metadata);
        let out = cluster.exec("client", &command);
        assert!(out.status.success(), "stream: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let before = cluster.flows();
    for i in 0..3 {
        let m = format!("m={i}");
        for (metadata, lane) in [(&["x-lane=gray"][..], "gray"), (&[][..], "base")] {
            let want: Vec<String> = (1..=3)
                .map(|k| format!("{}#{k}", Flavour::Go.chain(lane, lane, lane, &m)))
                .collect();
            assert_eq!(stream(metadata, &m), want.join("\n"), "{lane}");
        }
    }
    let flows = flow_delta(&before, &cluster.flows());
    let row = only_row(&flows, Flavour::Go, "b-gray", "c-gray");
    assert_eq!(
        decision(row),
        (
            Some("gray"),
            "inherited-goroutine",
            false,
            "lanes.Hop/ListStream",
            3
        ),
        "{row}"
    );
    assert_eq!(row["correlation"], "trusted", "{row}");
}
