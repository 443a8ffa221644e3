//! Lanes and pass-through headers through apps that copy nothing, in
//! runtimes written by others (SPEC section D): Python (ThreadingHTTPServer
//! with http.client keep-alive), Java (JDK HttpServer on a thread pool with
//! HttpURLConnection), Node (http server with a keep-alive agent). Scenarios B2,
//! B3, B4 and the lane-correctness burst run on ONE shared cluster
//! (tests/clusters/runtimes.yaml) holding a chain per runtime whose entry
//! hop is a baseline pod and whose lane is not sticky: every gray answer
//! past the entry proves that tagger carried the lane (no dyeing can).
use std::time::Duration;

use serde_json::Value;
use tagger_e2e::{
    Cluster, SharedCluster, eventually, flow_delta, requests_where, shared, text, workspace,
};

const RUNTIMES: &str = "runtimes.yaml";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    Python,
    Java,
    Node,
    /// Node hops that forward the x-request-id they received.
    NodeForwardingIds,
}

impl Runtime {
    /// The chain's services are `{prefix}-a`, `-b`, `-c`.
    fn prefix(self) -> &'static str {
        match self {
            Runtime::Python => "py",
            Runtime::Java => "java",
            Runtime::Node => "node",
            Runtime::NodeForwardingIds => "nid",
        }
    }

    /// The chain's answer when entered at `{p}-a-base`: which pods of b
    /// and c served, and c's echo of the query.
    fn chain(self, b: &str, c: &str, query: &str) -> String {
        let p = self.prefix();
        format!("{p}-a-base -> {p}-b-{b} -> {p}-c-{c}({query})")
    }
}

/// Enters the chain at its a pod, as an ingress would (from the node).
fn entry(cluster: &Cluster, runtime: Runtime, headers: &[&str]) -> String {
    let pod = format!("{}-a-base", runtime.prefix());
    cluster.curl_from_node(&format!("http://{}:8080/", cluster.pod_ip(&pod)), headers)
}

/// The one row of `flows` from `source` to `endpoint` (pods of the chain,
/// without the prefix), asserting there is exactly one.
fn only_row<'a>(flows: &'a [Value], runtime: Runtime, source: &str, endpoint: &str) -> &'a Value {
    let p = runtime.prefix();
    let (source, endpoint) = (format!("{p}-{source}"), format!("{p}-{endpoint}"));
    let rows: Vec<&Value> = flows
        .iter()
        .filter(|f| f["source"] == source.as_str() && f["endpoint"] == endpoint.as_str())
        .collect();
    assert_eq!(rows.len(), 1, "{source} -> {endpoint}: {flows:#?}");
    rows[0]
}

/// B2: a lane header sent to the baseline entry pod, which copies nothing,
/// reaches b's and c's gray pods; a request without one stays baseline.
fn b2_lane_header(runtime: Runtime) {
    let cluster = shared(RUNTIMES);
    let before = cluster.flows();
    for _ in 0..3 {
        assert_eq!(
            entry(&cluster, runtime, &["x-mse-tag: gray"]),
            runtime.chain("gray", "gray", "")
        );
        assert_eq!(
            entry(&cluster, runtime, &[]),
            runtime.chain("base", "base", "")
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    for (source, endpoint, lane, reason) in [
        ("a-base", "b-gray", "gray", "inherited-thread"),
        ("b-gray", "c-gray", "gray", "inherited-thread"),
        ("a-base", "b-base", "", "default"),
        ("b-base", "c-base", "", "default"),
    ] {
        let row = only_row(&flows, runtime, source, endpoint);
        let want_lane = if lane.is_empty() {
            Value::Null
        } else {
            lane.into()
        };
        assert_eq!(
            (
                &row["lane"],
                row["reason"].as_str(),
                row["correlation"].as_str(),
                row["requests"].as_u64()
            ),
            (&want_lane, Some(reason), Some("trusted"), Some(3)),
            "{runtime:?}: {row}"
        );
    }
}

/// B3: b's rule matches a header the entry received and tagger passed
/// through (a copies nothing); the lane is not sticky, so c decides again.
fn b3_per_hop_rule(runtime: Runtime) {
    let cluster = shared(RUNTIMES);
    let before = cluster.flows();
    for _ in 0..3 {
        assert_eq!(
            entry(&cluster, runtime, &["x-user-id: 100"]),
            runtime.chain("gray", "base", "")
        );
        assert_eq!(
            entry(&cluster, runtime, &["x-user-id: 101"]),
            runtime.chain("base", "base", "")
        );
    }
    let flows = flow_delta(&before, &cluster.flows());
    let rule = format!("rule:{}-b-user-100", runtime.prefix());
    let by_rule = only_row(&flows, runtime, "a-base", "b-gray");
    assert_eq!(
        (by_rule["reason"].as_str(), by_rule["requests"].as_u64()),
        (Some(rule.as_str()), Some(3))
    );
    // b-gray passed x-user-id on (c has no rule) and the lane stops there.
    let next = only_row(&flows, runtime, "b-gray", "c-base");
    assert_eq!(
        (next["reason"].as_str(), next["correlation"].as_str()),
        (Some("default"), Some("trusted"))
    );
}

/// Starts a stopped pod again when dropped, so that a failing test leaves
/// the shared cluster whole.
struct Restart<'a>(&'a SharedCluster, String);

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        let out = self.0.tagger(&["cluster", "start-pod", &self.1]);
        if !std::thread::panicking() {
            assert!(
                out.status.success(),
                "start-pod {}: {}",
                self.1,
                text(&out.stderr)
            );
        }
    }
}

/// B4: b's gray pod goes away; a gray request falls back to b's baseline
/// pod and, the lane travelling on, comes back to gray at c.
fn b4_fallback_and_return(runtime: Runtime) {
    let cluster = shared(RUNTIMES);
    let b_gray = format!("{}-b-gray", runtime.prefix());
    let out = cluster.tagger(&["cluster", "stop-pod", &b_gray]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restart = Restart(&cluster, b_gray);
    let fallback = runtime.chain("base", "gray", "");
    // The first calls after the stop may still find the pod's old
    // connections; from the moment the fallback shows, it must hold.
    let seen = eventually(Duration::from_secs(10), || {
        (entry(&cluster, runtime, &["x-lane: gray"]) == fallback).then_some(())
    });
    assert!(seen.is_some(), "{runtime:?}: no fallback within 10 s");
    let before = cluster.flows();
    for _ in 0..3 {
        assert_eq!(entry(&cluster, runtime, &["x-lane: gray"]), fallback);
    }
    let flows = flow_delta(&before, &cluster.flows());
    let to_b = only_row(&flows, runtime, "a-base", "b-base");
    assert_eq!(
        (to_b["lane"].as_str(), &to_b["fallback"]),
        (Some("gray"), &true.into()),
        "{to_b}"
    );
    let back = only_row(&flows, runtime, "b-base", "c-gray");
    assert_eq!(
        (back["reason"].as_str(), back["correlation"].as_str()),
        (Some("inherited-thread"), Some("trusted")),
        "{back}"
    );
    drop(restart);
    let gray = runtime.chain("gray", "gray", "");
    let back = eventually(Duration::from_secs(10), || {
        (entry(&cluster, runtime, &["x-lane: gray"]) == gray).then_some(())
    });
    assert!(
        back.is_some(),
        "{runtime:?}: b's gray pod never served again"
    );
}

/// The burst's outcome for one runtime.
#[derive(Debug)]
struct Burst {
    requests: usize,
    wrong: Vec<String>,
    /// Hop decisions past the entry (a -> b and b -> c), from the flows.
    hops: Vec<Value>,
}

impl Burst {
    fn hop_requests(&self, keep: impl Fn(&Value) -> bool) -> u64 {
        requests_where(&self.hops, keep)
    }

    fn print(&self, runtime: Runtime) {
        println!(
            "| {runtime:?} | {} | {} | {} | {} |",
            self.requests,
            self.wrong.len(),
            self.hop_requests(|f| f["correlation"] == "trusted"),
            self.hop_requests(|f| f["correlation"] == "untrusted"),
        );
    }
}

/// 2000 requests at concurrency 32 through keep-alive connections, every
/// other one with `x-lane: gray`, each with a marker the last hop echoes.
fn burst(runtime: Runtime) -> Burst {
    burst_with(runtime, 2000, "x-request-id")
}

/// `requests` requests, each with a distinct id in `id_header`.
fn burst_with(runtime: Runtime, requests: usize, id_header: &str) -> Burst {
    let cluster = shared(RUNTIMES);
    let before = cluster.flows();
    let load = workspace().join("tests/apps/load.py");
    let url = format!("http://{}-a:8080/", runtime.prefix());
    let out = cluster.exec(
        "client",
        &[
            "python3",
            load.to_str().unwrap(),
            &url,
            &requests.to_string(),
            "32",
            id_header,
        ],
    );
    assert!(out.status.success(), "load failed: {}", text(&out.stderr));
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
        let expected = runtime.chain(lane, lane, &format!("m={i}"));
        if row["answer"] != expected.as_str() {
            wrong.push(format!("{i}: {} (expected {expected})", row["answer"]));
        }
    }
    assert_eq!(answered, requests);
    let hops = flow_delta(&before, &cluster.flows())
        .into_iter()
        .filter(|f| f["source"] != "client")
        .collect();
    Burst {
        requests,
        wrong,
        hops,
    }
}

/// Thread-per-request runtimes: every answer in its lane, and every hop
/// decision past the entry trusted, the gray ones inherited: exactly 2 hop
/// decisions per request, 2 inherited gray ones per gray request.
fn burst_is_exact(runtime: Runtime) {
    let burst = burst(runtime);
    burst.print(runtime);
    assert!(
        burst.wrong.is_empty(),
        "{runtime:?}: {} of 2000 in the wrong lane, e.g. {:?}",
        burst.wrong.len(),
        &burst.wrong[..burst.wrong.len().min(5)]
    );
    assert_eq!(burst.hop_requests(|_| true), 4000, "{:#?}", burst.hops);
    assert_eq!(
        burst.hop_requests(|f| f["correlation"] == "trusted"),
        4000,
        "{:#?}",
        burst.hops
    );
    assert_eq!(
        burst.hop_requests(|f| f["lane"] == "gray" && f["reason"] == "inherited-thread"),
        2000,
        "{:#?}",
        burst.hops
    );
}

#[test]
fn python_b2() {
    b2_lane_header(Runtime::Python);
}

#[test]
fn python_b3() {
    b3_per_hop_rule(Runtime::Python);
}

#[test]
fn python_b4() {
    b4_fallback_and_return(Runtime::Python);
}

#[test]
fn python_lane_correctness_burst() {
    burst_is_exact(Runtime::Python);
}

#[test]
fn java_b2() {
    b2_lane_header(Runtime::Java);
}

#[test]
fn java_b3() {
    b3_per_hop_rule(Runtime::Java);
}

#[test]
fn java_b4() {
    b4_fallback_and_return(Runtime::Java);
}

#[test]
fn java_lane_correctness_burst() {
    burst_is_exact(Runtime::Java);
}

#[test]
fn node_b2() {
    b2_lane_header(Runtime::Node);
}

#[test]
fn node_b3() {
    b3_per_hop_rule(Runtime::Node);
}

#[test]
fn node_b4() {
    b4_fallback_and_return(Runtime::Node);
}

/// Node under concurrency: one event-loop thread has many requests open,
/// so thread correlation cannot be trusted (SPEC D's Node row is a later
/// issue). What must hold today: hop decisions are marked untrusted rather
/// than guessed, untrusted ones take the safe default (baseline: the lane
/// is not sticky), and a baseline request never ends in gray.
#[test]
fn node_burst_is_untrusted_and_safe() {
    let burst = burst(Runtime::Node);
    burst.print(Runtime::Node);
    assert_eq!(burst.hop_requests(|_| true), 4000, "{:#?}", burst.hops);
    let base_into_gray = burst
        .wrong
        .iter()
        .filter(|w| w.contains("(expected node-a-base -> node-b-base"))
        .count();
    assert_eq!(base_into_gray, 0, "{:?}", burst.wrong);
    let untrusted = burst.hop_requests(|f| f["correlation"] == "untrusted");
    let untrusted_not_default =
        burst.hop_requests(|f| f["correlation"] == "untrusted" && f["lane"] != Value::Null);
    assert_eq!(
        untrusted_not_default, 0,
        "untrusted decisions must take the safe default: {:#?}",
        burst.hops
    );
    assert!(
        burst.wrong.len() as u64 <= untrusted,
        "{} wrong answers but only {untrusted} untrusted decisions: a trusted one was wrong: {:#?}",
        burst.wrong.len(),
        burst.hops
    );
}

/// An event loop that forwards the request id it received: where thread
/// correlation cannot be trusted, the id (learnt from the inbound request
/// on this node) carries the lane, and the decision is trusted again.
#[test]
fn node_forwarding_request_ids_is_correlated_by_id() {
    assert_inherited_by_id(2000, "x-request-id");
}

/// A burst of `requests` through the id-forwarding Node chain, each with a
/// distinct id in `id_header`: every answer in its lane, and past the entry
/// gray is reached only by inheriting the lane (2 hops per gray request),
/// here at least partly by id.
fn assert_inherited_by_id(requests: usize, id_header: &str) {
    let burst = burst_with(Runtime::NodeForwardingIds, requests, id_header);
    println!("{id_header}:");
    burst.print(Runtime::NodeForwardingIds);
    assert!(
        burst.wrong.is_empty(),
        "{id_header}: {:?}",
        &burst.wrong[..burst.wrong.len().min(5)]
    );
    let inherited = burst.hop_requests(|f| {
        f["lane"] == "gray"
            && f["correlation"] == "trusted"
            && f["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("inherited-"))
    });
    assert_eq!(
        inherited as usize, requests,
        "{id_header}: {:#?}",
        burst.hops
    );
    let by_id = burst.hop_requests(|f| f["reason"] == "inherited-id");
    println!("{id_header}: {by_id} hop decisions inherited by id");
    assert!(by_id > 0, "{id_header}: {:#?}", burst.hops);
}

/// The same with the trace ids of W3C Trace Context (`traceparent`) and
/// Zipkin (`b3`) instead of x-request-id: the trace id is what is learnt.
#[test]
fn node_forwarding_traceparent_or_b3_is_correlated_by_id() {
    for id_header in ["traceparent", "b3"] {
        assert_inherited_by_id(1000, id_header);
    }
}

/// A daemon restart (a new process, new programs and maps) keeps
/// propagation and rules working for the same app processes: B2's
/// inheritance and B3's rule on a passed-through header, not only pod lanes.
#[test]
fn after_a_daemon_restart_lanes_are_inherited_and_rules_apply() {
    {
        let cluster = shared(RUNTIMES);
        let out = cluster.tagger(&["cluster", "restart-daemon"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    b2_lane_header(Runtime::Python);
    b3_per_hop_rule(Runtime::Python);
    b2_lane_header(Runtime::Java);
}

/// A process that served many requests without calling out stops being
/// captured (leaf mode, for cost). When it starts calling out, the first
/// calls are marked untrusted (never guessed) and capture resumes at once.
#[test]
fn a_leaf_that_starts_calling_out_is_never_trusted_wrongly() {
    let apps = workspace().join("tests/apps");
    let hop = |extra: &str| format!("[python3, {}, {extra}]", apps.join("hop.py").display());
    let cluster = caller_and_callee(
        "b",
        "c",
        &hop("--next, \"http://c:8080/\", --call-after, \"80\""),
        &hop("--port, \"8080\""),
    );
    let url = format!("http://{}:8080/", cluster.pod_ip("b-base"));
    let mut answers = Vec::new();
    for _ in 0..120 {
        answers.push(cluster.curl_from_node(&url, &["x-lane: gray"]));
    }
    assert!(
        answers[..80].iter().all(|a| a == "b-base"),
        "{:?}",
        &answers[..80]
    );
    let called: Vec<&String> = answers[80..].iter().collect();
    let wrong = called
        .iter()
        .filter(|a| a.as_str() != "b-base -> c-gray")
        .count();
    let flows = cluster.flows();
    let untrusted = requests_where(&flows, |f| {
        f["source"] == "b-base" && f["correlation"] == "untrusted"
    });
    let trusted_wrong = requests_where(&flows, |f| {
        f["source"] == "b-base" && f["correlation"] == "trusted" && f["endpoint"] == "c-base"
    });
    println!("leaf wake-up: {wrong} of 40 calls not gray, {untrusted} decisions untrusted");
    assert_eq!(trusted_wrong, 0, "{flows:#?}");
    assert!(
        wrong as u64 <= untrusted,
        "a wrong lane was not marked untrusted: {flows:#?}"
    );
    // Capture resumes with the next request: the tail is all gray.
    assert!(
        called[called.len() - 30..]
            .iter()
            .all(|a| a.as_str() == "b-base -> c-gray"),
        "{called:?}"
    );
}

/// Apps on raw sockets doing scatter-gather I/O (`recvmsg`/`sendmsg`, then
/// `readv`/`writev`), whose outbound request puts its head and a 256 KiB
/// body in ONE syscall: the lane is inherited, and each request is tagged
/// exactly once, although a send that large passes the kernel's TCP send
/// loop (where the tag is written) many times.
#[test]
fn scatter_gather_io_and_large_sends_are_tagged_once() {
    let app = workspace().join("tests/apps/msg_hop.py");
    for io in ["msg", "vec"] {
        let hop = |extra: &str| format!("[python3, {}, --io, {io}{extra}]", app.display());
        let cluster = caller_and_callee(
            "a",
            "b",
            &hop(", --next, \"b:8080\", --body-kib, \"256\""),
            &hop(""),
        );
        let tagged = || {
            cluster.config_dump()["kernel"]["outbound_tagged"]
                .as_u64()
                .unwrap()
        };
        let before = tagged();
        for _ in 0..5 {
            assert_eq!(
                cluster.curl_from_node(
                    &format!("http://{}:8080/", cluster.pod_ip("a-base")),
                    &["x-lane: gray"]
                ),
                "a-base -> b-gray",
                "--io {io}"
            );
            assert_eq!(
                cluster.curl_from_node(&format!("http://{}:8080/", cluster.pod_ip("a-base")), &[]),
                "a-base -> b-base",
                "--io {io}"
            );
        }
        let inherited = cluster.flow("a-base", "b", "b-gray");
        assert_eq!(
            inherited["reason"], "inherited-thread",
            "--io {io}: {inherited}"
        );
        assert_eq!(inherited["correlation"], "trusted");
        assert_eq!(
            tagged() - before,
            10,
            "--io {io}: one tag per outbound request"
        );
    }
}

/// A cluster of `caller` (one baseline pod) calling `callee` (a baseline and
/// a gray pod), lane gray sticky; commands are YAML flow lists.
fn caller_and_callee(
    caller: &str,
    callee: &str,
    caller_command: &str,
    callee_command: &str,
) -> Cluster {
    let yaml = format!(
        "lanes:\n  - {{name: gray, sticky: true}}\nservices:\n  - name: {caller}\n    port: 8080\n    pods:\n      - {{name: {caller}-base, command: {caller_command}}}\n  - name: {callee}\n    port: 8080\n    pods:\n      - {{name: {callee}-base, command: {callee_command}}}\n      - {{name: {callee}-gray, lane: gray, command: {callee_command}}}\n"
    );
    let path = std::env::temp_dir().join(format!(
        "tagger-{caller}-{callee}-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, yaml).unwrap();
    let cluster = Cluster::up(path.to_str().unwrap());
    std::fs::remove_file(&path).unwrap();
    cluster
}
