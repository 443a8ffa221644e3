//! The call chains of SPEC section D, one per runtime, and the checks every
//! runtime's chain must pass (B2, B3, B4, the lane-correctness burst).
use std::time::Duration;

use serde_json::Value;

use crate::{
    Cluster, SharedCluster, eventually, flow_delta, requests_where, shared, text, workspace,
};

/// A chain `{prefix}-a -> -b -> -c` of one runtime's hop apps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Runtime {
    Python,
    Java,
    Node,
    /// Node hops that forward the x-request-id they received.
    NodeForwardingIds,
    /// Go net/http hops, as `go build` makes them.
    Go,
    /// The same built with `-ldflags='-s -w'`.
    GoStripped,
}

impl Runtime {
    /// The chain's services are `{prefix}-a`, `-b`, `-c`.
    pub fn prefix(self) -> &'static str {
        match self {
            Runtime::Python => "py",
            Runtime::Java => "java",
            Runtime::Node => "node",
            Runtime::NodeForwardingIds => "nid",
            Runtime::Go => "go",
            Runtime::GoStripped => "gos",
        }
    }

    /// The cluster file (tests/clusters) holding the chain.
    pub fn cluster(self) -> &'static str {
        match self {
            Runtime::Go | Runtime::GoStripped => "go.yaml",
            _ => "runtimes.yaml",
        }
    }

    /// The reason of a decision that inherited its lane from the app's
    /// inbound request.
    pub fn inherited(self) -> &'static str {
        match self {
            Runtime::Go | Runtime::GoStripped => "inherited-goroutine",
            _ => "inherited-thread",
        }
    }

    /// The chain's answer when entered at `{p}-a-base`: which pods of b
    /// and c served, and c's echo of the query.
    pub fn chain(self, b: &str, c: &str, query: &str) -> String {
        let p = self.prefix();
        format!("{p}-a-base -> {p}-b-{b} -> {p}-c-{c}({query})")
    }
}

/// Enters the chain at its a pod, as an ingress would (from the node).
pub fn entry(cluster: &Cluster, runtime: Runtime, headers: &[&str]) -> String {
    let pod = format!("{}-a-base", runtime.prefix());
    cluster.curl_from_node(&format!("http://{}:8080/", cluster.pod_ip(&pod)), headers)
}

/// The one row of `flows` from `source` to `endpoint` (pods of the chain,
/// without the prefix), asserting there is exactly one.
pub fn only_row<'a>(
    flows: &'a [Value],
    runtime: Runtime,
    source: &str,
    endpoint: &str,
) -> &'a Value {
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
pub fn b2_lane_header(runtime: Runtime) {
    let cluster = shared(runtime.cluster());
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
        ("a-base", "b-gray", "gray", runtime.inherited()),
        ("b-gray", "c-gray", "gray", runtime.inherited()),
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
pub fn b3_per_hop_rule(runtime: Runtime) {
    let cluster = shared(runtime.cluster());
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
pub fn b4_fallback_and_return(runtime: Runtime) {
    let cluster = shared(runtime.cluster());
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
        (Some(runtime.inherited()), Some("trusted")),
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
pub struct Burst {
    pub requests: usize,
    pub wrong: Vec<String>,
    /// Hop decisions past the entry (a -> b and b -> c), from the flows.
    pub hops: Vec<Value>,
}

impl Burst {
    pub fn hop_requests(&self, keep: impl Fn(&Value) -> bool) -> u64 {
        requests_where(&self.hops, keep)
    }

    pub fn print(&self, runtime: Runtime) {
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
pub fn burst(runtime: Runtime) -> Burst {
    burst_with(runtime, 2000, "x-request-id")
}

/// `requests` requests, each with a distinct id in `id_header`.
pub fn burst_with(runtime: Runtime, requests: usize, id_header: &str) -> Burst {
    let cluster = shared(runtime.cluster());
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

/// Runtimes tagger correlates (threads, goroutines): every answer in its lane, and every hop
/// decision past the entry trusted, the gray ones inherited: exactly 2 hop
/// decisions per request, 2 inherited gray ones per gray request.
pub fn burst_is_exact(runtime: Runtime) {
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
        burst.hop_requests(|f| f["lane"] == "gray" && f["reason"] == runtime.inherited()),
        2000,
        "{:#?}",
        burst.hops
    );
}
