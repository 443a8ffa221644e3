//! Lanes and pass-through headers through apps that copy nothing, in three
//! runtimes written by others: Python (ThreadingHTTPServer + http.client
//! keep-alive), Java (JDK HttpServer with a thread pool +
//! HttpURLConnection), Node (http server + keep-alive agent).
//! SPEC scenarios B2, B3, B4, and the lane-correctness burst.
use std::{collections::HashMap, path::PathBuf};

use serde_json::Value;
use tagger_e2e::{Cluster, text, workspace};

#[derive(Clone, Copy, Debug)]
enum Runtime {
    Python,
    Java,
    Node,
}

impl Runtime {
    /// The command of one hop; `next` is the service it calls, `extra`
    /// more arguments.
    fn command_with(self, next: Option<&str>, echo_query: bool, extra: &[&str]) -> String {
        let apps = workspace().join("tests/apps");
        let mut parts: Vec<String> = match self {
            Runtime::Python => vec![
                "python3".into(),
                apps.join("hop.py").display().to_string(),
                "--keep-alive".into(),
            ],
            Runtime::Java => vec![
                "java".into(),
                "-XX:+UseSerialGC".into(),
                "-Xmx96m".into(),
                apps.join("Hop.java").display().to_string(),
            ],
            Runtime::Node => vec!["node".into(), apps.join("hop.js").display().to_string()],
        };
        if let Some(next) = next {
            parts.extend(["--next".into(), format!("http://{next}:8080/")]);
        }
        if echo_query {
            parts.push("--echo-query".into());
        }
        parts.extend(extra.iter().map(|e| e.to_string()));
        format!(
            "[{}]",
            parts
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// A chain a -> b -> c (each with base and gray pods, b's gray optional),
/// a client pod, lane gray (sticky or not), and optionally B3's rule on b.
fn chain(runtime: Runtime, sticky: bool, b_gray: bool, rule_on_b: bool) -> PathBuf {
    chain_with(runtime, sticky, b_gray, rule_on_b, &[])
}

fn chain_with(
    runtime: Runtime,
    sticky: bool,
    b_gray: bool,
    rule_on_b: bool,
    extra: &[&str],
) -> PathBuf {
    let mut yaml = format!(
        "passthrough_headers: [x-user-id]\nlanes:\n  - {{name: gray, sticky: {sticky}}}\nservices:\n"
    );
    for (service, next) in [("a", Some("b")), ("b", Some("c")), ("c", None)] {
        let command = runtime.command_with(next, next.is_none(), extra);
        yaml.push_str(&format!("  - name: {service}\n    port: 8080\n    pods:\n"));
        yaml.push_str(&format!(
            "      - {{name: {service}-base, command: {command}}}\n"
        ));
        if service != "b" || b_gray {
            yaml.push_str(&format!(
                "      - {{name: {service}-gray, lane: gray, command: {command}}}\n"
            ));
        }
    }
    yaml.push_str(
        "  - name: client\n    pods:\n      - {name: client, command: [sleep, infinity]}\n",
    );
    if rule_on_b {
        yaml.push_str(
            "rules:\n  - name: b-user-100\n    service: b\n    lane: gray\n    conditions:\n      - {source: header, name: x-user-id, op: '=', value: 100}\n",
        );
    }
    let path = std::env::temp_dir().join(format!(
        "tagger-prop-{runtime:?}-{sticky}-{b_gray}-{rule_on_b}-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn up(path: &PathBuf) -> Cluster {
    let cluster = Cluster::up(path.to_str().unwrap());
    std::fs::remove_file(path).unwrap();
    cluster
}

fn entry(cluster: &Cluster, pod: &str, headers: &[&str]) -> String {
    cluster.curl_from_node(&format!("http://{}:8080/", cluster.pod_ip(pod)), headers)
}

/// B2 and B4, and the flow map's source and confidence.
fn lane_header_and_fallback(runtime: Runtime) {
    let cluster = up(&chain(runtime, true, true, false));
    // B2: the header reaches a's base pod; a copies nothing.
    for _ in 0..3 {
        assert_eq!(
            entry(&cluster, "a-base", &["x-mse-tag: gray"]),
            "a-base -> b-gray -> c-gray()"
        );
        assert_eq!(
            entry(&cluster, "a-base", &[]),
            "a-base -> b-base -> c-base()"
        );
    }
    let inherited = cluster.flow("a-base", "b", "b-gray");
    assert_eq!(inherited["reason"], "inherited-thread", "{inherited}");
    assert_eq!(inherited["correlation"], "trusted");
    assert_eq!(cluster.flow("a-base", "b", "b-base")["reason"], "default");
    drop(cluster);

    // B4: b has no gray pod; the lane comes back at c.
    let cluster = up(&chain(runtime, true, false, false));
    assert_eq!(
        entry(&cluster, "a-gray", &[]),
        "a-gray -> b-base -> c-gray()"
    );
    assert_eq!(
        entry(&cluster, "a-base", &["x-lane: gray"]),
        "a-base -> b-base -> c-gray()"
    );
    let returned = cluster.flow("b-base", "c", "c-gray");
    assert_eq!(returned["reason"], "inherited-thread");
    assert_eq!(cluster.flow("a-gray", "b", "b-base")["fallback"], true);
}

/// B3: a non-sticky lane decided per hop by b's rule on a passed-through header.
fn per_hop_rule(runtime: Runtime) {
    let cluster = up(&chain(runtime, false, true, true));
    for _ in 0..3 {
        assert_eq!(
            entry(&cluster, "a-base", &["x-user-id: 100"]),
            "a-base -> b-gray -> c-base()"
        );
        assert_eq!(
            entry(&cluster, "a-base", &["x-user-id: 101"]),
            "a-base -> b-base -> c-base()"
        );
    }
    assert_eq!(
        cluster.flow("a-base", "b", "b-gray")["reason"],
        "rule:b-user-100"
    );
    // b-gray passed x-user-id on, but the lane is not sticky: c decides
    // again, and has no rule.
    assert_eq!(cluster.flow("b-gray", "c", "c-base")["reason"], "default");
}

/// At least 2000 requests at concurrency 32, half gray, each with a marker the
/// last hop echoes; the middle hops copy nothing. Returns the table row.
fn lane_correctness(runtime: Runtime) -> (usize, usize, u64, u64) {
    lane_correctness_in(runtime, &chain(runtime, true, true, false)).0
}

/// The burst against a given cluster file; also returns the flows.
fn lane_correctness_in(runtime: Runtime, file: &PathBuf) -> ((usize, usize, u64, u64), Vec<Value>) {
    let cluster = up(file);
    let load = workspace().join("tests/apps/load.py");
    let out = cluster.exec(
        "client",
        &[
            "python3",
            load.to_str().unwrap(),
            "http://a:8080/",
            "2000",
            "32",
        ],
    );
    assert!(out.status.success(), "load failed: {}", text(&out.stderr));
    let mut wrong = Vec::new();
    let mut total = 0;
    for line in text(&out.stdout).lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        total += 1;
        let i = row["i"].as_u64().unwrap();
        let lane = if row["gray"].as_bool().unwrap() {
            "gray"
        } else {
            "base"
        };
        let expected = format!("a-{lane} -> b-{lane} -> c-{lane}(m={i})");
        if row["answer"] != expected.as_str() {
            wrong.push(format!("{i}: {} (expected {expected})", row["answer"]));
        }
    }
    let mut by_correlation: HashMap<String, u64> = HashMap::new();
    for flow in cluster.flows() {
        if flow["source"] != "client" {
            *by_correlation
                .entry(flow["correlation"].as_str().unwrap().to_string())
                .or_default() += flow["requests"].as_u64().unwrap();
        }
    }
    assert_eq!(total, 2000);
    // Every trusted decision kept its lane: a gray pod's calls went to gray
    // endpoints and a base pod's to base ones (the entry hop, from the
    // client, has no correlation and is checked by the answers).
    let flows = cluster.flows();
    for flow in &flows {
        let (source, endpoint) = (
            flow["source"].as_str().unwrap(),
            flow["endpoint"].as_str().unwrap(),
        );
        if flow["correlation"] == "trusted" && source != "client" {
            assert_eq!(
                source.ends_with("-gray"),
                endpoint.ends_with("-gray"),
                "{runtime:?}: a trusted decision changed lanes: {flow}"
            );
        }
    }
    let trusted = by_correlation.get("trusted").copied().unwrap_or(0);
    let untrusted = by_correlation.get("untrusted").copied().unwrap_or(0);
    assert!(
        wrong.is_empty(),
        "{runtime:?}: {} of {total} in the wrong lane, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    ((total, wrong.len(), trusted, untrusted), flows)
}

fn print_row(runtime: Runtime, (total, wrong, trusted, untrusted): (usize, usize, u64, u64)) {
    println!("| {runtime:?} | {total} | {wrong} | {trusted} | {untrusted} |");
}

#[test]
fn python_b2_b4() {
    lane_header_and_fallback(Runtime::Python);
}

#[test]
fn python_b3() {
    per_hop_rule(Runtime::Python);
}

#[test]
fn java_b2_b4() {
    lane_header_and_fallback(Runtime::Java);
}

#[test]
fn java_b3() {
    per_hop_rule(Runtime::Java);
}

#[test]
fn node_b2_b4() {
    lane_header_and_fallback(Runtime::Node);
}

#[test]
fn node_b3() {
    per_hop_rule(Runtime::Node);
}

#[test]
fn lane_correctness_under_concurrency() {
    println!(
        "| runtime | requests | wrong lane | hop decisions trusted | untrusted (safe default) |"
    );
    println!("|---|---|---|---|---|");
    for runtime in [Runtime::Python, Runtime::Java, Runtime::Node] {
        let row = lane_correctness(runtime);
        print_row(runtime, row);
        // Thread-per-request runtimes must have trusted every decision.
        if !matches!(runtime, Runtime::Node) {
            assert_eq!(row.3, 0, "{runtime:?} had untrusted decisions");
        }
    }
}

/// An event loop that forwards the request id it received: where thread
/// correlation cannot be trusted, the id (learnt from the inbound request
/// on this node) carries the lane, and the decision is trusted again.
#[test]
fn node_forwarding_request_ids_is_correlated_by_id() {
    let file = chain_with(Runtime::Node, false, true, false, &["--forward-id"]);
    let ((total, wrong, _, _), flows) = lane_correctness_in(Runtime::Node, &file);
    assert_eq!((total, wrong), (2000, 0));
    // The lane is not sticky here: b-gray and c-gray are reached only by
    // inheriting the lane, so the ids did the work.
    let by_id = requests_where(&flows, |f| f["reason"] == "inherited-id");
    println!("node with forwarded ids: {by_id} hop decisions inherited by id");
    assert!(by_id > 0, "{flows:#?}");
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
                entry(&cluster, "a-base", &["x-lane: gray"]),
                "a-base -> b-gray",
                "--io {io}"
            );
            assert_eq!(
                entry(&cluster, "a-base", &[]),
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
    up(&path)
}

/// Requests counted in the flows that satisfy `keep`.
fn requests_where(flows: &[Value], keep: impl Fn(&Value) -> bool) -> u64 {
    flows
        .iter()
        .filter(|f| keep(f))
        .map(|f| f["requests"].as_u64().unwrap())
        .sum()
}
