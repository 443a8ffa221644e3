//! SPEC section E end to end: two nodes on one host, each a `tagger daemon
//! --kubernetes` fed by the test API server, with pods in kubelet-shaped
//! cgroup trees under its own cgroup root (`tagger_e2e::kube_nodes`).
//! Every call chain crosses nodes at every hop, so lanes travel between the
//! nodes' proxies on the wire. The tests share the cluster and leave it as
//! they found it.
use std::time::Duration;

use serde_json::Value;
use tagger_e2e::{
    Answer, flow_delta,
    kube_nodes::{
        Nodes,
        fixture::{self, PORT},
        http::get,
        nodes,
    },
    now, text,
};
use tagger_test_apiserver::{Served, objects};

/// SPEC: a change through the API is in force within 1 s.
const IN_FORCE: f64 = 1.0;
/// Generous: how long a phase may take to show at all on a slow machine.
const LIMIT: Duration = Duration::from_secs(10);
/// Each load thread's pause between requests (4 threads).
const PACE: Duration = Duration::from_millis(60);
/// How long each list takes while the daemons relist.
const LIST_DELAY: Duration = Duration::from_secs(1);
/// How soon a pod made again at an old address must answer the node: its
/// app's start (a stale neighbour entry for the old pod's MAC took 20-30 s).
const REACHABLE: f64 = 5.0;

/// A request entering `pod` from outside the cluster (the host, as an
/// ingress would send it): its answer.
fn enter(cluster: &Nodes, pod: &str, headers: &[&str]) -> String {
    match get(cluster.pod(pod).ip, PORT, "/", headers) {
        Ok((200, body)) => body,
        other => panic!("entering {pod} with {headers:?}: {other:?}"),
    }
}

/// Both nodes' flow tables.
fn flows(cluster: &Nodes) -> [Vec<Value>; 2] {
    [cluster.nodes[0].flows(), cluster.nodes[1].flows()]
}

/// What each node's flows gained since `before`.
fn since(cluster: &Nodes, before: &[Vec<Value>; 2]) -> [Vec<Value>; 2] {
    let after = flows(cluster);
    [
        flow_delta(&before[0], &after[0]),
        flow_delta(&before[1], &after[1]),
    ]
}

/// The one row from `source` to `endpoint` (pods, `namespace/name`).
fn row<'a>(flows: &'a [Value], source: &str, endpoint: &str) -> &'a Value {
    let rows: Vec<&Value> = flows
        .iter()
        .filter(|f| f["source"] == source && f["endpoint"] == endpoint)
        .collect();
    assert_eq!(rows.len(), 1, "{source} -> {endpoint}: {flows:#?}");
    rows[0]
}

/// (lane, reason, fallback) of a flow row.
fn decision(row: &Value) -> (Option<&str>, Option<&str>, bool) {
    (
        row["lane"].as_str(),
        row["reason"].as_str(),
        row["fallback"] == true,
    )
}

/// When a load's answers switched to `new` after a change at `at`: the
/// first answer sent after `at` from which on every answer sent before
/// `until` is `new`. Panics unless that is within [`IN_FORCE`]. Seconds.
fn switch_time(
    what: &str,
    answers: &[Answer],
    at: f64,
    until: f64,
    new: impl Fn(&str) -> bool,
) -> f64 {
    let window: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at >= at && a.at < until)
        .collect();
    let first = window
        .iter()
        .rposition(|a| !new(&a.body))
        .map_or(0, |last_old| last_old + 1);
    let took = window.get(first).map_or(f64::INFINITY, |a| a.at - at);
    assert!(
        took <= IN_FORCE,
        "{what}: not in force within {IN_FORCE} s (took {took:.3} s): {:?}",
        window
            .iter()
            .map(|a| (a.at - at, &a.body))
            .collect::<Vec<_>>()
    );
    took
}

fn lost(answers: &[Answer]) -> Vec<&Answer> {
    answers
        .iter()
        .filter(|a| a.status != 200 || a.body.contains("ERROR"))
        .collect()
}

/// SPEC scenario A, the field report: `device -> charge -> order -> base`
/// with charge-v2 and order-v2 gray, the rule on charge from the API.
/// device-v1 and order-v2 are on node-a, the others on node-b.
#[test]
fn scenario_a_across_two_nodes() {
    let cluster = nodes();
    let device = cluster.pod("device-v1").ip;
    let gray = |user: &str| {
        format!("device.v1111 -> charge.v2222 --> order.v2222 --> base.v1111 (userId: {user})")
    };
    let base = |user: &str| {
        format!("device.v1111 -> charge.v1111 --> order.v1111 --> base.v1111 (userId: {user})")
    };
    let before = flows(&cluster);
    let mut cases: Vec<(String, Vec<&str>, String)> = Vec::new();
    for user in ["111", "222", "333", "101", "201", "1001"] {
        cases.push((format!("/device?userId={user}"), vec![], gray(user)));
    }
    for user in ["444", "1002"] {
        cases.push((format!("/device?userId={user}"), vec![], base(user)));
    }
    cases.push(("/device".into(), vec![], base("null")));
    for (name, lane) in [("msd01", true), ("msd02", true), ("msd04", false)] {
        let header = match name {
            "msd01" => "mse-username: msd01",
            "msd02" => "mse-username: msd02",
            _ => "mse-username: msd04",
        };
        let want = if lane { gray("null") } else { base("null") };
        cases.push(("/device".into(), vec![header], want));
    }
    for (path, headers, want) in &cases {
        for i in 0..10 {
            let answer = get(device, PORT, path, headers);
            assert_eq!(
                answer,
                Ok((200, want.clone())),
                "{path} {headers:?}, request {i}"
            );
        }
    }
    // Each node decided its own hops: node-a device's call (the rule) and
    // order-v2's (the gray lane that came in on the wire, inherited and
    // carried on to base, which has no gray pod), node-b charge-v2's.
    let [a, b] = since(&cluster, &before);
    let to_charge = row(&a, "shop/device-v1", "shop/charge-v2");
    assert_eq!(
        decision(to_charge),
        (Some("gray"), Some("rule:shop/charge-gray"), false)
    );
    assert_eq!(to_charge["requests"], 80);
    assert_eq!(
        decision(row(&b, "shop/charge-v2", "shop/order-v2")),
        (Some("gray"), Some("inherited-thread"), false)
    );
    assert_eq!(
        decision(row(&a, "shop/order-v2", "shop/base-v1")),
        (Some("gray"), Some("inherited-thread"), true)
    );
    println!(
        "scenario A across two nodes: {} cases, 10 requests each, all as the field report",
        cases.len()
    );
}

/// SPEC scenario B, `a -> b -> c` with hops that copy no header: a-base,
/// b-gray and c-base on node-a, the others on node-b. B4 removes b's gray
/// pod through the API; B3 makes the lane per-hop (`sticky: false`)
/// through the API, with a rule on b; both are put back.
#[test]
fn scenario_b_across_two_nodes() {
    let mut cluster = nodes();
    let before = flows(&cluster);
    for _ in 0..3 {
        // B1: a request entering a gray pod is dyed gray.
        assert_eq!(enter(&cluster, "a-gray", &[]), "a-gray -> b-gray -> c-gray");
        assert_eq!(enter(&cluster, "a-base", &[]), "a-base -> b-base -> c-base");
        // B2: the lane header sent to the baseline entry (alias x-mse-tag).
        assert_eq!(
            enter(&cluster, "a-base", &["x-mse-tag: gray"]),
            "a-base -> b-gray -> c-gray"
        );
    }
    let [a, b] = since(&cluster, &before);
    assert_eq!(
        decision(row(&b, "abc/a-gray", "abc/b-gray")),
        (Some("gray"), Some("pod-lane"), false)
    );
    assert_eq!(
        decision(row(&a, "abc/b-gray", "abc/c-gray")),
        (Some("gray"), Some("inherited-thread"), false)
    );

    // B4: b's gray pod goes; gray falls back to b-base and returns at c.
    {
        let mut cluster = cluster.changed(|c| c.reinstate("b-gray"));
        cluster.withdraw("b-gray");
        let fallback = "a-gray -> b-base -> c-gray";
        let seen = tagger_e2e::eventually(LIMIT, || {
            (enter(&cluster, "a-gray", &[]) == fallback).then_some(())
        });
        assert!(
            seen.is_some(),
            "B4: no fallback: {}",
            enter(&cluster, "a-gray", &[])
        );
        for _ in 0..3 {
            assert_eq!(enter(&cluster, "a-gray", &[]), fallback);
        }
    }
    let back = tagger_e2e::eventually(LIMIT, || {
        (enter(&cluster, "a-gray", &[]) == "a-gray -> b-gray -> c-gray").then_some(())
    });
    assert!(back.is_some(), "b-gray never came back");

    // B3: per-hop lane, b's rule on a header passed through from a's
    // inbound request (a copies nothing); c decides again: baseline.
    // Only abc's `gray` is made per-hop: shop's, of the same name, stays
    // sticky (each namespace's own), so scenario A's gray chain keeps its
    // lane past charge-v2 (a per-hop gray would end at order-v1).
    let cluster = cluster.changed(|c| {
        c.delete_if_present("TrafficRule", "abc", "b-user-100");
        c.api.apply(objects::lane("abc", "gray", true));
    });
    cluster.api.apply(objects::lane("abc", "gray", false));
    cluster
        .api
        .apply(fixture::user_rule("b-user-100", &["100"]));
    let want = "a-base -> b-gray -> c-base";
    let seen = tagger_e2e::eventually(LIMIT, || {
        (enter(&cluster, "a-base", &["x-user-id: 100"]) == want).then_some(())
    });
    assert!(
        seen.is_some(),
        "B3: {}; lanes: {}",
        enter(&cluster, "a-base", &["x-user-id: 100"]),
        cluster.nodes[0].config_dump()["state"]["lanes"]
    );
    let device = cluster.pod("device-v1").ip;
    let shop_gray =
        "device.v1111 -> charge.v2222 --> order.v2222 --> base.v1111 (userId: 111)".to_string();
    for _ in 0..3 {
        assert_eq!(enter(&cluster, "a-base", &["x-user-id: 100"]), want);
        assert_eq!(
            enter(&cluster, "a-base", &["x-user-id: 101"]),
            "a-base -> b-base -> c-base"
        );
        assert_eq!(
            get(device, PORT, "/device?userId=111", &[]),
            Ok((200, shop_gray.clone())),
            "shop's gray is still sticky; lanes: {}",
            cluster.nodes[0].config_dump()["state"]["lanes"]
        );
    }
    println!(
        "scenario B across two nodes: B1, B2, B4 (pod removed through the API), B3 (abc's lane made per-hop through the API while shop's gray stays sticky)"
    );
}

/// A `TrafficRule` created, changed, changed back and deleted through the
/// API under a steady load from a pod on each node: each change in force
/// on both nodes within 1 s, no request lost. An invalid rule beside it is
/// refused with its reason in its status, the valid one accepted.
#[test]
fn rule_changes_through_the_api_under_load() {
    let mut shared = nodes();
    let cluster = shared.changed(|c| {
        c.delete_if_present("TrafficRule", "abc", "vip");
        c.delete_if_present("TrafficRule", "abc", "bad-op");
    });
    cluster.api.apply(bad_rule());
    let loads = ["client-a", "client-b"]
        .map(|pod| cluster.steady_load(pod, &format!("http://b:{PORT}/"), PACE, &["x-user-id: 7"]));
    let gray = |body: &str| body.starts_with("b-gray -> ");
    let base = |body: &str| body.starts_with("b-base -> ");
    for load in &loads {
        load.wait_for("baseline before the rule", 0.0, 10, LIMIT, |a| {
            base(&a.body)
        });
    }
    let phases: [(&str, Option<&[&str]>, bool); 4] = [
        ("created", Some(&["7"]), true),
        ("changed", Some(&["8"]), false),
        ("changed back", Some(&["7", "8"]), true),
        ("deleted", None, false),
    ];
    let mut changes = Vec::new();
    for (what, values, to_gray) in phases {
        let at = now();
        match values {
            Some(values) => cluster.api.apply(fixture::user_rule("vip", values)),
            None => cluster.api.delete("TrafficRule", "abc", "vip"),
        }
        for load in &loads {
            load.wait_for(what, at, 10, LIMIT, |a| {
                if to_gray {
                    gray(&a.body)
                } else {
                    base(&a.body)
                }
            });
        }
        if what == "created" {
            let accepted = tagger_e2e::eventually(LIMIT, || cluster.accepted("abc", "vip"));
            assert_eq!(
                accepted.map(|a| (a.0, a.1)),
                Some(("True".into(), "Valid".into()))
            );
        }
        changes.push((what, at, to_gray));
    }
    let answers = loads.map(|load| load.finish());
    for (pod, answers) in ["client-a", "client-b"].iter().zip(&answers) {
        assert!(lost(answers).is_empty(), "{pod}: lost {:?}", lost(answers));
        let mut times = Vec::new();
        for (i, &(what, at, to_gray)) in changes.iter().enumerate() {
            let until = changes.get(i + 1).map_or(f64::INFINITY, |c| c.1);
            let took = switch_time(&format!("{pod}: rule {what}"), answers, at, until, |b| {
                if to_gray { gray(b) } else { base(b) }
            });
            times.push(format!("{what} {:.0} ms", took * 1000.0));
        }
        println!(
            "{pod}: {} requests, 0 lost; in force after: {}",
            answers.len(),
            times.join(", ")
        );
    }
    let refused = tagger_e2e::eventually(LIMIT, || cluster.accepted("abc", "bad-op"))
        .expect("the invalid rule got no status");
    assert_eq!(
        (refused.0.as_str(), refused.1.as_str()),
        ("False", "Invalid"),
        "{refused:?}"
    );
    assert!(refused.2.contains("op"), "{refused:?}");
    println!("invalid rule: Accepted=False, {}: {}", refused.1, refused.2);
}

/// The watches each daemon keeps, by kind: Services, EndpointSlices and
/// pods' metadata in each of the two managed namespaces, and its node's
/// Pods.
const WATCHES: [(&str, usize); 6] = [
    ("Namespace", 1),
    ("Service", 2),
    ("EndpointSlice", 2),
    ("Pod", 3),
    ("TrafficLane", 1),
    ("TrafficRule", 1),
];

/// When `node`'s daemon had every watch answered 410 Gone since `since`
/// and listed that kind again after it: the time of its last such list.
fn relisted(served: &[Served], node: &str, since: f64) -> Option<f64> {
    let mine: Vec<&Served> = served
        .iter()
        .filter(|s| s.at >= since && s.client.ends_with(&format!("(node {node})")))
        .collect();
    let mut last = since;
    for (kind, watches) in WATCHES {
        let gone: Vec<f64> = mine
            .iter()
            .filter(|s| s.kind == kind && s.gone)
            .map(|s| s.at)
            .collect();
        let lists: Vec<f64> = mine
            .iter()
            .filter(|s| s.kind == kind && !s.watch && gone.first().is_some_and(|g| s.at >= *g))
            .map(|s| s.at)
            .collect();
        if gone.len() < watches || lists.len() < watches {
            return None;
        }
        last = last.max(lists[watches - 1]);
    }
    Some(last)
}

/// The API's history compacted under a steady load from a pod on each
/// node, as etcd's compaction does to a real API server: every watch of
/// both daemons ends, and resuming it is answered 410 Gone, so each
/// daemon relists every kind; each list takes 1 s (a big cluster's). A
/// rule was added with no watch event for it: only a relist can learn it.
/// While the daemons relist, what they serve is the state before, whole:
/// the load's lane (another rule's) never changes, no request is lost;
/// after, the silent rule is in force; a change made through the API right
/// after the relists is in force within 1 s.
#[test]
fn a_410_gone_relists_both_daemons_under_load() {
    let mut shared = nodes();
    let cluster = shared.changed(|c| {
        c.api.set_list_delay(Duration::ZERO);
        c.delete_if_present("TrafficRule", "abc", "vip");
        c.delete_if_present("TrafficRule", "abc", "silent");
    });
    cluster.api.apply(fixture::user_rule("vip", &["7"]));
    let clients = ["client-a", "client-b"];
    let loads = clients
        .map(|pod| cluster.steady_load(pod, &format!("http://b:{PORT}/"), PACE, &["x-user-id: 7"]));
    let gray = |body: &str| body.starts_with("b-gray -> ");
    let base = |body: &str| body.starts_with("b-base -> ");
    for load in &loads {
        load.wait_for("gray before", 0.0, 10, LIMIT, |a| gray(&a.body));
    }
    // A request from `pod` with `x-user-id: 9` (the silent rule's): in gray?
    let silent_in_force = |pod: &str| {
        let out = cluster.exec(
            pod,
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                "-H",
                "x-user-id: 9",
                &format!("http://b:{PORT}/"),
            ],
        );
        gray(&text(&out.stdout))
    };
    assert!(!silent_in_force("client-a") && !silent_in_force("client-b"));
    cluster.api.set_list_delay(LIST_DELAY);
    let t_compact = now();
    cluster
        .api
        .replace_silently_and_compact(vec![fixture::user_rule("silent", &["9"])], &[]);
    let relists = tagger_e2e::eventually(LIMIT, || {
        let served = cluster.api.served();
        let a = relisted(&served, fixture::NODE_NAMES[0], t_compact)?;
        let b = relisted(&served, fixture::NODE_NAMES[1], t_compact)?;
        Some([a, b])
    });
    let served = cluster.api.served();
    let Some(relists) = relists else {
        panic!(
            "not every watch of both daemons was answered 410 Gone and relisted: {:#?}",
            served
                .iter()
                .filter(|s| s.at >= t_compact)
                .collect::<Vec<_>>()
        );
    };
    // The last lists answered: the silent rule in force on both nodes.
    let answered = relists[0].max(relists[1]) + LIST_DELAY.as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64((answered - now()).max(0.0)));
    let learnt = clients.map(|pod| {
        tagger_e2e::eventually(LIMIT, || silent_in_force(pod).then_some(now()))
            .unwrap_or_else(|| panic!("{pod}: the silently added rule never in force"))
    });
    cluster.api.set_list_delay(Duration::ZERO);
    // Right after the relists: watched again.
    let t_change = now();
    cluster.api.apply(fixture::user_rule("vip", &["8"]));
    for load in &loads {
        load.wait_for("changed after the relist", t_change, 10, LIMIT, |a| {
            base(&a.body)
        });
    }
    let answers = loads.map(|load| load.finish());
    let count = |node: &str, keep: &dyn Fn(&Served) -> bool| {
        served
            .iter()
            .filter(|s| s.at >= t_compact && s.client.ends_with(&format!("(node {node})")))
            .filter(|s| keep(s))
            .count()
    };
    for (i, (pod, answers)) in clients.iter().zip(&answers).enumerate() {
        let node = fixture::NODE_NAMES[i];
        let failed = lost(answers);
        assert!(
            failed.is_empty(),
            "{pod}: lost {} of {}, the first: {:?}",
            failed.len(),
            answers.len(),
            &failed[..failed.len().min(3)]
        );
        let during: Vec<&Answer> = answers
            .iter()
            .filter(|a| a.at >= t_compact && a.at < t_change)
            .collect();
        let off: Vec<(f64, &str)> = during
            .iter()
            .filter(|a| !gray(&a.body))
            .map(|a| (a.at - t_compact, a.body.as_str()))
            .collect();
        assert!(
            off.is_empty(),
            "{pod}: out of its lane while {node} relisted: {off:?}"
        );
        let took = switch_time(
            &format!("{pod}: changed after the relist"),
            answers,
            t_change,
            f64::INFINITY,
            base,
        );
        let gone = count(node, &|s| s.gone);
        let lists = count(node, &|s| !s.watch);
        println!(
            "{node}: {gone} watches answered 410 Gone, {lists} lists (1 s each), the last {:.0} ms after the compaction, the silent rule seen in force {:.0} ms after the compaction; {pod}: {} requests, 0 lost, {} during the relist all in their lane; a change after the relist in force after {:.0} ms",
            (relists[i] - t_compact) * 1000.0,
            (learnt[i] - t_compact) * 1000.0,
            answers.len(),
            during.len(),
            took * 1000.0
        );
    }
}

fn bad_rule() -> Value {
    let mut rule = fixture::user_rule("bad-op", &["1"]);
    rule["spec"]["conditions"][0]["op"] = "within".into();
    rule
}

/// A rolling replacement of a lane's pod under a steady gray load: b-gray
/// (node-a) is replaced by b-gray2, a pod made after start on node-b, as a
/// Deployment does it (the new pod not ready, then ready; the old one not
/// ready and terminating, then gone: out of the API, its app, cgroup and
/// network removed). No request is lost or leaves the lane, and the new
/// pod's own calls are routed (its node's daemon found its cgroups):
/// `b-gray2 -> c-gray`. Then rolled back the same way onto b-gray made
/// again on node-a under its old name and address (a StatefulSet's way;
/// a new UID, cgroup and veth): the node reaches it at once, its daemon
/// finds its new cgroup, and it takes the lane back.
#[test]
fn rolling_replacement_under_load_loses_nothing() {
    let mut shared = nodes();
    let mut cluster = shared.changed(|c| {
        if !c.has_pod("b-gray") {
            c.add_pod(fixture::pod_def("b-gray"), true)
                .expect("b-gray again");
            c.wait_listening("b-gray").expect("b-gray listens");
        }
        c.set_endpoint("b-gray", true, false);
        if c.has_pod("b-gray2") {
            let _ = c.remove_pod("b-gray2");
        }
        tagger_e2e::eventually(LIMIT, || c.node_knows_cgroup_of("b-gray").then_some(()))
            .expect("node-a's daemon never found b-gray's cgroup");
    });
    let (old, new) = ("b-gray -> c-gray", "b-gray2 -> c-gray");
    let load = cluster.steady_load(
        "client-a",
        &format!("http://b:{PORT}/"),
        PACE,
        &["x-lane: gray"],
    );
    load.wait_for("gray before", 0.0, 10, LIMIT, |a| a.body == old);
    let t_created = now();
    cluster
        .add_pod(fixture::b_gray_replacement(), false)
        .expect("a new pod");
    cluster
        .wait_listening("b-gray2")
        .expect("the new pod listens");
    let known = tagger_e2e::eventually(LIMIT, || {
        cluster.node_knows_cgroup_of("b-gray2").then_some(now())
    })
    .expect("node-b's daemon never found b-gray2's cgroups");
    let t_ready = now();
    cluster.set_endpoint("b-gray2", true, false);
    load.wait_for("the new pod", t_ready, 10, LIMIT, |a| a.body == new);
    let t_terminating = now();
    cluster.set_endpoint("b-gray", false, true);
    load.wait_for(
        "the new pod alone",
        t_terminating + IN_FORCE,
        10,
        LIMIT,
        |a| a.body == new,
    );
    // Gone, as kubelet ends a terminated pod.
    cluster.remove_pod("b-gray").expect("b-gray removed");
    let t_gone = now();
    load.wait_for("after the old pod went", t_gone, 20, LIMIT, |a| {
        a.body == new
    });

    // Back: b-gray made again, same name and address, on node-a.
    let t_again = now();
    cluster
        .add_pod(fixture::pod_def("b-gray"), false)
        .expect("b-gray made again");
    cluster
        .wait_listening("b-gray")
        .expect("b-gray made again listens");
    let reachable = now() - t_again;
    assert!(
        reachable < REACHABLE,
        "b-gray made again: reached from the node only after {reachable:.1} s"
    );
    let found = tagger_e2e::eventually(LIMIT, || {
        cluster.node_knows_cgroup_of("b-gray").then_some(now())
    })
    .expect("node-a's daemon never found b-gray's new cgroup");
    let t_back = now();
    cluster.set_endpoint("b-gray", true, false);
    cluster.set_endpoint("b-gray2", false, true);
    load.wait_for("b-gray back", t_back + IN_FORCE, 10, LIMIT, |a| {
        a.body == old
    });
    cluster.remove_pod("b-gray2").expect("b-gray2 removed");
    let answers = load.finish();
    assert!(lost(&answers).is_empty(), "lost: {:?}", lost(&answers));
    let wrong: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.body != old && a.body != new)
        .collect();
    assert!(wrong.is_empty(), "out of the lane: {wrong:?}");
    let old_late: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at > t_terminating + IN_FORCE && a.at < t_back && a.body == old)
        .collect();
    assert!(
        old_late.is_empty(),
        "b-gray served after it was terminating: {old_late:?}"
    );
    let new_late: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at > t_back + IN_FORCE && a.body == new)
        .collect();
    assert!(
        new_late.is_empty(),
        "b-gray2 served after it was terminating: {new_late:?}"
    );
    let first_new = answers
        .iter()
        .find(|a| a.body == new)
        .map_or(f64::NAN, |a| a.at);
    let first_back = answers
        .iter()
        .find(|a| a.at >= t_back && a.body == old)
        .map_or(f64::NAN, |a| a.at);
    println!(
        "rolling replacement: {} requests, 0 lost, 0 out of the lane; the new pod's cgroups found {:.0} ms after it was made, serving {:.0} ms after ready; \
         b-gray made again: reached from the node {:.0} ms after it was made, its cgroup found after {:.0} ms, serving {:.0} ms after ready",
        answers.len(),
        (known - t_created) * 1000.0,
        (first_new - t_ready) * 1000.0,
        reachable * 1000.0,
        (found - t_again) * 1000.0,
        (first_back - t_back) * 1000.0,
    );
}

/// What tagger must leave alone: a node's own process (kubelet probing a
/// pod IP) reaches that very pod; a pod of a namespace without the label
/// is never redirected (its lane header does nothing, a pod IP it calls
/// answers itself); a managed pod's call to an unmanaged Service goes
/// straight there (kube-proxy's way), never through the proxy.
#[test]
fn node_processes_and_unlabelled_namespaces_are_left_alone() {
    let cluster = nodes();
    let before = flows(&cluster);
    let curl = |url: String, headers: &[&str]| {
        let mut command = vec!["curl".to_string(), "-sS".into(), "-m".into(), "5".into()];
        for h in headers {
            command.extend(["-H".to_string(), h.to_string()]);
        }
        command.push(url);
        command
    };
    let run = |out: std::process::Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let b_gray = cluster.pod("b-gray").ip;
    let a_gray = cluster.pod("a-gray").ip;
    for (node, ip, answer) in [
        (0, b_gray, "b-gray -> c-gray"),
        (1, a_gray, "a-gray -> b-gray -> c-gray"),
    ] {
        let command = curl(format!("http://{ip}:{PORT}/"), &[]);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let out = cluster
            .on_node(node, &command)
            .expect("a probe on the node");
        assert_eq!(
            run(out),
            answer,
            "a probe from {}",
            fixture::NODE_NAMES[node]
        );
    }
    let in_pod = |pod: &str, url: String, headers: &[&str]| {
        let command = curl(url, headers);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        run(cluster.exec(pod, &command))
    };
    // Redirected, the lane header would pick b-gray; the pod IP, baseline.
    // Not redirected, it reaches b-base (kube-proxy's way) and rides on
    // from there: b-base's own call is tagger's, in the lane.
    assert_eq!(
        in_pod("web-1", format!("http://b:{PORT}/"), &["x-lane: gray"]),
        "b-base -> c-gray"
    );
    assert_eq!(
        in_pod("web-1", format!("http://{b_gray}:{PORT}/"), &[]),
        "b-gray -> c-gray"
    );
    assert_eq!(
        in_pod("client-a", format!("http://web:{PORT}/"), &["x-lane: gray"]),
        "web-1"
    );
    let [a, b] = since(&cluster, &before);
    // Only the calls of managed pods past the first hop were routed: none
    // of the probes', none of web-1's, none to plain/web.
    let routed: Vec<(&str, &str)> = a
        .iter()
        .chain(&b)
        .map(|f| {
            (
                f["source"].as_str().unwrap_or("?"),
                f["endpoint"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert!(
        routed
            .iter()
            .all(|(source, _)| ["abc/a-gray", "abc/b-gray", "abc/b-base"].contains(source)),
        "{routed:?}"
    );
    assert!(
        a.iter().chain(&b).all(|f| f["service"] != "plain/web"),
        "{a:#?}"
    );
    println!("left alone: kubelet-shaped probes on both nodes, namespace plain, Service plain/web");
}

/// SIGKILL of node-b's daemon under a gray load from node-a: node-a goes
/// on routing (the entry is a-gray, by the header), node-b's pods talk
/// directly (kube-proxy's way, to baseline) within 1 s; the daemon started
/// again resumes lane routing.
#[test]
fn killing_one_nodes_daemon_fails_open_on_that_node_only() {
    let mut shared = nodes();
    let mut cluster = shared.changed(|c| {
        if !c.nodes[1].is_running() {
            c.start_daemon(1).expect("starting node-b's daemon again");
        }
    });
    let (lane, open) = ("a-gray -> b-gray -> c-gray", "a-gray -> b-base -> c-base");
    let load = cluster.steady_load(
        "client-a",
        &format!("http://a:{PORT}/"),
        PACE,
        &["x-lane: gray"],
    );
    load.wait_for("gray before", 0.0, 20, LIMIT, |a| a.body == lane);
    let t_kill = now();
    cluster.nodes[1].signal_and_wait(libc::SIGKILL);
    let gone = now();
    load.wait_for("node-b open", gone, 20, LIMIT, |a| a.body == open);
    let t_start = now();
    cluster.start_daemon(1).expect("node-b's daemon again");
    let started = now();
    load.wait_for("gray again", started, 20, LIMIT, |a| a.body == lane);
    let answers = load.finish();
    // A request on node-b's proxy when it died fails with it (a-gray
    // reports it): at most one per load connection.
    let failed = lost(&answers);
    assert!(failed.len() <= 4, "{failed:?}");
    assert!(
        failed.iter().all(|a| a.at >= t_kill - 1.0 && a.at < gone),
        "{failed:?}"
    );
    // node-a routes throughout: every answer entered a-gray.
    let not_a_gray: Vec<&Answer> = answers
        .iter()
        .filter(|a| !a.body.starts_with("a-gray -> "))
        .collect();
    assert!(
        not_a_gray.is_empty(),
        "node-a stopped routing: {not_a_gray:?}"
    );
    let fail_open = switch_time("fail-open", &answers, t_kill, t_start, |b| b == open);
    let resumed = answers
        .iter()
        .find(|a| a.at >= started && a.body == lane)
        .map_or(f64::NAN, |a| a.at - started);
    assert!(
        answers
            .iter()
            .filter(|a| a.at >= started + resumed)
            .all(|a| a.body == lane),
        "after the restart: {:?}",
        answers
            .iter()
            .filter(|a| a.at >= started)
            .collect::<Vec<_>>()
    );
    println!(
        "node-b's daemon killed: {} requests, {} failed on its proxy, node-b direct {:.0} ms after the kill, node-a routing throughout; restarted in {:.0} ms, lanes again {:.0} ms after",
        answers.len(),
        failed.len(),
        fail_open * 1000.0,
        (started - t_start) * 1000.0,
        resumed * 1000.0
    );
}
