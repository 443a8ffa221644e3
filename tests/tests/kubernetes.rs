//! SPEC section E end to end: two nodes on one host, each a `tagger daemon
//! --kubernetes` fed by the test API server, with pods in kubelet-shaped
//! cgroup trees under its own cgroup root (`tagger_e2e::kube_nodes`).
//! Every call chain crosses nodes at every hop, so lanes travel between the
//! nodes' proxies on the wire. The tests share the cluster and leave it as
//! they found it.
use std::time::Duration;

use tagger_e2e::{
    kube_nodes::{fixture::PORT, http::get, nodes},
    text,
};

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
    let before = [cluster.nodes[0].flows(), cluster.nodes[1].flows()];
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
    let after = [cluster.nodes[0].flows(), cluster.nodes[1].flows()];
    let delta_a = tagger_e2e::flow_delta(&before[0], &after[0]);
    let delta_b = tagger_e2e::flow_delta(&before[1], &after[1]);
    println!("{delta_a:#?}\n{delta_b:#?}");
    println!(
        "scenario A: {} requests, each 10 times, all as the field report",
        cases.len() * 10
    );
}

#[test]
fn smoke_host_probe() {
    let cluster = nodes();
    let ip = cluster.pod("b-gray").ip;
    let out = cluster
        .on_node(
            0,
            &["curl", "-sS", "-m", "5", &format!("http://{ip}:{PORT}/")],
        )
        .unwrap();
    println!("{} {}", text(&out.stdout), text(&out.stderr));
    let _ = Duration::from_secs(1);
    println!("{:#}", cluster.nodes[1].config_dump()["state"]);
}
