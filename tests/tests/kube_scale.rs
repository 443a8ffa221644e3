//! SPEC section E, scale: the two nodes of `tests/kubernetes.rs` in the
//! API of a big cluster (100k pods and 10k Services with their
//! EndpointSlices in 200 namespaces, 10 managed: [`fixture::scale`]). Each
//! daemon's memory follows its node's pods and the managed Services, not
//! the cluster: its RSS stays under 150 MB; what it asks the API for is
//! only what it needs (its node's pods by `spec.nodeName`, the managed
//! namespaces' Services, EndpointSlices and pod metadata), so the bytes
//! it is sent are a small part of the cluster's; and a rule change is in
//! force within 1 s.
use std::{collections::BTreeMap, time::Duration};

use tagger_e2e::{
    Answer,
    kube_nodes::{
        fixture::{self, PORT},
        nodes_with,
    },
    now,
};
use tagger_test_apiserver::Served;

/// SPEC: a daemon's RSS stays under this.
const RSS_LIMIT_KB: u64 = 150 * 1024;
/// SPEC: a change through the API is in force within 1 s.
const IN_FORCE: f64 = 1.0;
/// What a daemon may be sent of the cluster's objects, at most.
const SHARE_LIMIT: f64 = 0.10;
const LIMIT: Duration = Duration::from_secs(10);
const PACE: Duration = Duration::from_millis(60);

/// (VmRSS, VmHWM) of a process, in kB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time a process has used (user and system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("its stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of proc(5), in clock ticks.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf(3) reads a constant of the system.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Whether a request of `node`'s daemon asks only what the daemon needs:
/// its node's pods (by field selector), or one managed namespace's
/// Services, EndpointSlices and pods' metadata; namespaces by their label.
fn needed(served: &Served, node: &str, managed: &[String]) -> Result<(), String> {
    let in_managed = served
        .namespace
        .as_ref()
        .is_some_and(|ns| managed.contains(ns));
    let ok = match served.kind {
        "Pod" => {
            served.field_selector.as_deref() == Some(&format!("spec.nodeName={node}"))
                || (served.metadata_only && in_managed)
        }
        "Service" | "EndpointSlice" => in_managed,
        "Namespace" => served.label_selector.as_deref() == Some("tagger.io/lanes=enabled"),
        // The custom resources live where tagger is used only.
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{served:?}"))
    }
}

/// When a load's answers switched to `new` after a change at `at`: the
/// first answer sent after `at` from which on every one is `new`.
fn switch_time(answers: &[Answer], at: f64, new: impl Fn(&str) -> bool) -> f64 {
    let window: Vec<&Answer> = answers.iter().filter(|a| a.at >= at).collect();
    let first = window
        .iter()
        .rposition(|a| !new(&a.body))
        .map_or(0, |last_old| last_old + 1);
    window.get(first).map_or(f64::INFINITY, |a| a.at - at)
}

#[test]
fn a_big_cluster_costs_each_daemon_only_its_share() {
    let started = now();
    let mut shared = nodes_with(fixture::scale);
    let up = now() - started;
    let cluster = shared.changed(|c| c.delete_if_present("TrafficRule", "abc", "vip"));
    let sizes = cluster.api.size();
    let total: u64 = sizes.values().map(|(_, bytes)| bytes).sum();
    println!("cluster up with the big API in {up:.1} s; the API holds:");
    for (kind, (count, bytes)) in &sizes {
        println!(
            "  {kind:>14}: {count:>6} objects, {:>7.1} MB",
            *bytes as f64 / 1e6
        );
    }
    println!("  {:>14}: {:>7.1} MB", "total", total as f64 / 1e6);
    let managed: Vec<String> = ["shop", "abc"]
        .into_iter()
        .map(String::from)
        .chain((0..fixture::SCALE_MANAGED).map(fixture::scale_namespace))
        .collect();

    // Every managed Service is in each daemon's model (500 of the big
    // cluster's, 7 of the fixture's), none of another namespace.
    let want = fixture::SCALE_MANAGED * fixture::SCALE_SERVICES_PER_NAMESPACE + 7;
    for node in &cluster.nodes {
        let services = tagger_e2e::eventually(LIMIT, || {
            let dump = node.config_dump();
            let services = dump["state"]["services"].as_array().map_or(0, Vec::len);
            (services == want).then_some(services)
        });
        assert_eq!(services, Some(want), "{}'s services", node.name);
    }
    let synced: Vec<(u64, u64)> = cluster
        .nodes
        .iter()
        .map(|n| rss_kb(n.pid().expect("running")))
        .collect();
    let cpu_synced: Vec<f64> = cluster
        .nodes
        .iter()
        .map(|n| cpu_seconds(n.pid().expect("running")))
        .collect();

    // A rule made after the big sync, under load from a pod on each node.
    let loads = ["client-a", "client-b"]
        .map(|pod| cluster.steady_load(pod, &format!("http://b:{PORT}/"), PACE, &["x-user-id: 7"]));
    let gray = |body: &str| body.starts_with("b-gray -> ");
    let base = |body: &str| body.starts_with("b-base -> ");
    for load in &loads {
        load.wait_for("baseline", 0.0, 10, LIMIT, |a| base(&a.body));
    }
    // Not in force within `LIMIT` is reported with the other checks.
    let settled = |load: &tagger_e2e::SteadyLoad, since: f64, keep: &dyn Fn(&str) -> bool| {
        tagger_e2e::eventually(LIMIT, || {
            let n = load
                .seen()
                .iter()
                .filter(|a| a.at >= since && keep(&a.body))
                .count();
            (n >= 10).then_some(())
        })
    };
    let at = now();
    cluster.api.apply(fixture::user_rule("vip", &["7"]));
    for load in &loads {
        settled(load, at, &gray);
    }
    let changed_at = now();
    cluster.api.apply(fixture::user_rule("vip", &["8"]));
    for load in &loads {
        settled(load, changed_at, &base);
    }
    let answers = loads.map(|load| load.finish());
    let mut took = Vec::new();
    for (pod, answers) in ["client-a", "client-b"].iter().zip(&answers) {
        let before: Vec<Answer> = answers
            .iter()
            .filter(|a| a.at < changed_at)
            .cloned()
            .collect();
        let created = switch_time(&before, at, gray);
        let changed = switch_time(answers, changed_at, base);
        println!(
            "{pod}: {} requests; rule in force after {:.0} ms, its change after {:.0} ms",
            answers.len(),
            created * 1000.0,
            changed * 1000.0
        );
        took.push((pod, created, changed));
    }
    let after: Vec<(u64, u64)> = cluster
        .nodes
        .iter()
        .map(|n| rss_kb(n.pid().expect("running")))
        .collect();
    let cpu_after: Vec<f64> = cluster
        .nodes
        .iter()
        .map(|n| cpu_seconds(n.pid().expect("running")))
        .collect();

    let served = cluster.api.served();
    let mut wrong = Vec::new();
    let mut sent = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mine: Vec<&Served> = served
            .iter()
            .filter(|s| s.client.ends_with(&format!("(node {})", node.name)))
            .collect();
        // (kind, list or watch, scope, selector): requests, bytes.
        let mut table: BTreeMap<(String, &str, String, String), (usize, u64)> = BTreeMap::new();
        for s in &mine {
            if let Err(e) = needed(s, node.name, &managed) {
                wrong.push(e);
            }
            let scope = match &s.namespace {
                Some(ns) if ns.starts_with("scale-") => "scale-NNN (managed)".to_string(),
                Some(ns) => ns.clone(),
                None => "cluster".to_string(),
            };
            let selector = [
                s.label_selector.as_ref().map(|l| format!("labels {l}")),
                s.field_selector.as_ref().map(|f| format!("fields {f}")),
                s.metadata_only.then(|| "metadata".to_string()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            let row = table
                .entry((
                    s.kind.to_string(),
                    if s.watch { "watch" } else { "list" },
                    scope,
                    selector,
                ))
                .or_default();
            row.0 += 1;
            row.1 += s.bytes;
        }
        let bytes: u64 = mine.iter().map(|s| s.bytes).sum();
        println!(
            "{}: VmRSS {} kB (peak {} kB) after the first sync, {} kB (peak {} kB) after the rule's changes; \
             sent {:.2} MB in {} requests, {:.2} % of the API's objects:",
            node.name,
            synced[i].0,
            synced[i].1,
            after[i].0,
            after[i].1,
            bytes as f64 / 1e6,
            mine.len(),
            100.0 * bytes as f64 / total as f64
        );
        println!(
            "  CPU {:.2} s up to the first sync, {:.2} s since (the load's requests through its proxy)",
            cpu_synced[i],
            cpu_after[i] - cpu_synced[i]
        );
        for ((kind, how, scope, selector), (count, bytes)) in &table {
            println!("  {count:>3} x {kind:>13} {how:<5} {scope:<20} {selector:<40} {bytes:>10} B");
        }
        sent.push((node.name, bytes));
    }

    // Every check, so that one run says each that fails.
    let mut failed = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        if after[i].1 >= RSS_LIMIT_KB {
            failed.push(format!(
                "{}: RSS peaked at {} kB, over {RSS_LIMIT_KB} kB",
                node.name, after[i].1
            ));
        }
    }
    if !wrong.is_empty() {
        failed.push(format!(
            "{} requests for more than needed, first: {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        ));
    }
    for (node, bytes) in sent {
        if bytes as f64 >= SHARE_LIMIT * total as f64 {
            failed.push(format!("{node} was sent {bytes} B of the API's {total} B"));
        }
    }
    for (pod, created, changed) in took {
        if created > IN_FORCE || changed > IN_FORCE {
            failed.push(format!(
                "{pod}: rule in force after {created:.3} s, its change after {changed:.3} s"
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
