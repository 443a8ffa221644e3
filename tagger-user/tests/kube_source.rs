//! The Kubernetes source in process, against a small API server
//! (`tagger-test-apiserver`, `test-apiserver/`) that lists and watches from a fixture: the
//! inventories it pushes on a first sync, on objects added, changed and
//! deleted (each within a second), on a relist forced by 410 Gone (swapped
//! whole), and the `Accepted` status it writes on each `TrafficRule`.
#[path = "support/kube_fixture.rs"]
mod fixture;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use fixture::*;
use tagger::{
    source::{
        Source,
        kube::{KubeConfig, KubeSource},
    },
    state::{Inventory, PortMap, Readiness, ServicePort, Snapshot},
};
use tagger_test_apiserver::ApiServer;
use tokio::sync::watch;

/// SPEC.md: changes apply within 1 s of the API event.
const IN_FORCE: Duration = Duration::from_secs(1);
/// A relist waits for the watcher's backoff (about a second, jittered).
const RELIST: Duration = Duration::from_secs(10);
type Inventories = watch::Receiver<Option<Arc<Inventory>>>;

async fn start(server: &ApiServer, cgroup_root: &Path) -> Inventories {
    let source = KubeSource::new(
        server.client(),
        KubeConfig {
            node_name: NODE.into(),
            cgroup_root: cgroup_root.to_path_buf(),
            lane_header: "x-lane".into(),
            passthrough_headers: vec!["x-user-id".into()],
        },
    );
    let (tx, rx) = watch::channel(None);
    tokio::spawn(source.run(tx));
    rx
}

/// The first inventory pushed that satisfies `done`, within `limit`.
async fn wait_for(
    rx: &mut Inventories,
    what: &str,
    limit: Duration,
    done: impl Fn(&Inventory) -> bool,
) -> Arc<Inventory> {
    let found = tokio::time::timeout(limit, async {
        loop {
            if let Some(inventory) = rx.borrow_and_update().clone()
                && done(&inventory)
            {
                return inventory;
            }
            rx.changed().await.expect("the source runs");
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "{what}: not within {limit:?}; last inventory: {:#?}",
            rx.borrow()
        )
    })
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| name(i).to_string()).collect()
}

/// The `Accepted` condition the server holds for a rule: (status, message).
fn accepted(server: &ApiServer, name: &str) -> Option<(String, String)> {
    let rule = server.object("TrafficRule", "shop", name)?;
    let condition = rule["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    Some((
        condition["status"].as_str()?.into(),
        condition["message"].as_str()?.into(),
    ))
}

async fn wait_for_status(server: &ApiServer, name: &str, want: (&str, &str)) {
    let deadline = Instant::now() + IN_FORCE;
    loop {
        let got = accepted(server, name);
        if got
            .as_ref()
            .is_some_and(|(s, m)| s == want.0 && m == want.1)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rule {name}: status {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const BAD_OP: &str = "rule \"bad-op\", conditions[0].op: \"within\" is not an operator (= != > >= < <= in not_in exists prefix regex percentage mod100)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_joins_every_kind_of_managed_namespaces_and_writes_rule_statuses() {
    let tree = CgroupTree::new("first");
    let (v1_ids, v2_ids) = (tree.add_pod(UID_V1), tree.add_pod(UID_V2));
    let server = ApiServer::start(fixture()).await;
    let mut rx = start(&server, &tree.0).await;
    let inventory = wait_for(&mut rx, "first sync", Duration::from_secs(5), |_| true).await;

    assert_eq!(inventory.namespaces, ["shop"]);
    assert_eq!(
        names(&inventory.services, |s| &s.name),
        ["shop/charge", "shop/order"]
    );
    let charge = &inventory.services[0];
    assert_eq!(
        (charge.address, &charge.ports[..]),
        (
            Some("10.96.0.20".parse().unwrap()),
            &[ServicePort::new(8080), ServicePort::new(9000)][..]
        )
    );
    let ports = [
        PortMap {
            port: 8080,
            target_port: 8081,
        },
        PortMap {
            port: 9000,
            target_port: 9090,
        },
    ];
    for endpoint in &charge.endpoints {
        assert_eq!(
            (&endpoint.ports[..], endpoint.readiness),
            (&ports[..], Readiness::Ready)
        );
    }
    // This node's pods with their cgroups; another node's as an endpoint's
    // pod; never a hostNetwork pod or an unmanaged namespace's.
    let pods: Vec<(String, Option<String>, BTreeSet<u64>)> = inventory
        .pods
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.lane().map(str::to_string),
                p.cgroup_ids.iter().copied().collect(),
            )
        })
        .collect();
    assert_eq!(
        pods,
        [
            ("shop/charge-v1".to_string(), None, v1_ids),
            (
                "shop/charge-v2".to_string(),
                Some("gray".to_string()),
                v2_ids
            ),
            ("shop/order-v1".to_string(), None, BTreeSet::new()),
        ]
    );
    assert_eq!(
        (inventory.lanes[0].name.as_str(), inventory.lanes[0].sticky),
        ("gray", true)
    );
    // The valid rule in force, named by namespace; the invalid one not.
    assert_eq!(names(&inventory.rules, |r| &r.name), ["shop/charge-gray"]);
    assert_eq!(inventory.rules[0].service, "shop/charge");
    wait_for_status(&server, "charge-gray", ("True", "the rule is in force")).await;
    wait_for_status(&server, "bad-op", ("False", BAD_OP)).await;
    // Written once each: a status seen back unchanged is not written again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.patches(), 2);

    // The model routes each service port to its target port.
    let snapshot = Snapshot::build(&inventory, &inventory.rules, None).unwrap();
    let admin = snapshot.service_at("shop/charge", Some(9000)).unwrap();
    assert_eq!(admin.address, Some("10.96.0.20:9000".parse().unwrap()));
    assert_eq!(
        names(&admin.endpoints, |e| &e.pod),
        ["shop/charge-v1", "shop/charge-v2"]
    );
    assert_eq!(admin.endpoints[1].addr, "10.244.1.6:9090".parse().unwrap());
    assert_eq!(admin.endpoints[1].lane.as_deref(), Some("gray"));
    assert!(
        snapshot
            .destination("10.244.1.6:8081".parse().unwrap())
            .is_some()
    );
    assert!(
        snapshot
            .destination("10.244.1.8:80".parse().unwrap())
            .is_none(),
        "unmanaged"
    );
    assert_eq!(snapshot.pod_cgroups().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_added_changed_and_deleted_are_in_force_within_a_second() {
    let tree = CgroupTree::new("changes");
    tree.add_pod(UID_V1);
    tree.add_pod(UID_V2);
    let server = ApiServer::start(fixture()).await;
    let mut rx = start(&server, &tree.0).await;
    wait_for(&mut rx, "first sync", Duration::from_secs(5), |_| true).await;

    // Added: a Service and its endpoints.
    server.apply(service("shop", "base", "10.96.0.22", &[("http", 8080)]));
    server.apply(slice(
        "shop",
        "base",
        &[("10.244.2.9", "base-v1", true, false)],
        &[("http", 8080)],
    ));
    wait_for(&mut rx, "service added", IN_FORCE, |i| {
        i.services
            .iter()
            .any(|s| s.name == "shop/base" && s.endpoints.len() == 1)
    })
    .await;
    // Changed: charge-v2 terminating (a scale-down), then a rule fixed.
    server.apply(slice(
        "shop",
        "charge",
        &[
            ("10.244.1.5", "charge-v1", true, false),
            ("10.244.1.6", "charge-v2", false, true),
        ],
        &[("http", 8081), ("admin", 9090)],
    ));
    wait_for(&mut rx, "endpoint terminating", IN_FORCE, |i| {
        i.services
            .iter()
            .filter(|s| s.name == "shop/charge")
            .flat_map(|s| &s.endpoints)
            .any(|e| e.pod == "shop/charge-v2" && e.readiness == Readiness::Terminating)
    })
    .await;
    wait_for_status(&server, "bad-op", ("False", BAD_OP)).await;
    server.apply(rule("shop", "bad-op", "charge", "not_in"));
    wait_for(&mut rx, "rule fixed", IN_FORCE, |i| {
        i.rules.iter().any(|r| r.name == "shop/bad-op")
    })
    .await;
    wait_for_status(&server, "bad-op", ("True", "the rule is in force")).await;
    // A pod created after start, its cgroup made after the API shows it.
    server.apply(pod(
        "shop",
        "charge-v3",
        UID_NEW,
        NODE,
        "10.244.1.10",
        Some("gray"),
        false,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ids = tree.add_pod(UID_NEW);
    let found = wait_for(&mut rx, "new pod's cgroups", IN_FORCE, |i| {
        i.pods
            .iter()
            .any(|p| p.name == "shop/charge-v3" && !p.cgroup_ids.is_empty())
    })
    .await;
    let new = found
        .pods
        .iter()
        .find(|p| p.name == "shop/charge-v3")
        .unwrap();
    assert_eq!(new.cgroup_ids.iter().copied().collect::<BTreeSet<_>>(), ids);
    // Deleted: a Service, a rule.
    server.delete("Service", "shop", "base");
    server.delete("TrafficRule", "shop", "charge-gray");
    wait_for(&mut rx, "deleted", IN_FORCE, |i| {
        !i.services.iter().any(|s| s.name == "shop/base")
            && !i.rules.iter().any(|r| r.name == "shop/charge-gray")
    })
    .await;
    // A namespace no longer labelled: nothing of it is managed.
    server.apply(namespace("shop", false));
    wait_for(&mut rx, "namespace unmanaged", IN_FORCE, |i| {
        i.namespaces.is_empty() && i.services.is_empty() && i.pods.is_empty() && i.rules.is_empty()
    })
    .await;
    // Labelled again: its own watches start again and list it whole.
    server.apply(namespace("shop", true));
    wait_for(&mut rx, "namespace managed again", IN_FORCE, |i| {
        i.namespaces == ["shop"]
            && i.services.iter().any(|s| s.name == "shop/charge")
            && i.pods.iter().any(|p| p.name == "shop/charge-v3")
    })
    .await;
    // Services, EndpointSlices and pods' metadata were asked of the
    // managed namespace only; other pods by this node's name only.
    for served in server.served() {
        let scoped = served.namespace.as_deref() == Some("shop");
        let ok = match served.kind {
            "Service" | "EndpointSlice" => scoped,
            "Pod" => {
                (scoped && served.metadata_only)
                    || served.field_selector.as_deref() == Some(&format!("spec.nodeName={NODE}"))
            }
            _ => true,
        };
        assert!(ok, "asked for more than the managed namespace: {served:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_410_gone_swaps_the_state_whole() {
    let tree = CgroupTree::new("relist");
    let server = ApiServer::start(vec![
        namespace("shop", true),
        service("shop", "a", "10.96.1.1", &[("http", 80)]),
        service("shop", "b", "10.96.1.2", &[("http", 80)]),
    ])
    .await;
    let mut rx = start(&server, &tree.0).await;
    wait_for(&mut rx, "first sync", Duration::from_secs(5), |i| {
        i.services.len() == 2
    })
    .await;
    // Every inventory the source pushes from here on.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut all = rx.clone();
    let record = seen.clone();
    tokio::spawn(async move {
        while all.changed().await.is_ok() {
            let inventory = all.borrow_and_update().clone().unwrap();
            record
                .lock()
                .unwrap()
                .push(names(&inventory.services, |s| &s.name));
        }
    });
    // a and b replaced by c and d with no event for it; the watch breaks
    // and resuming it answers 410 Gone.
    server.replace_silently_and_compact(
        vec![
            service("shop", "c", "10.96.1.3", &[("http", 80)]),
            service("shop", "d", "10.96.1.4", &[("http", 80)]),
        ],
        &[("Service", "shop", "a"), ("Service", "shop", "b")],
    );
    wait_for(&mut rx, "relisted", RELIST, |i| {
        names(&i.services, |s| &s.name) == ["shop/c", "shop/d"]
    })
    .await;
    assert!(server.gone() > 0, "no watch was answered 410 Gone");
    // Later changes are watched again.
    server.apply(service("shop", "e", "10.96.1.5", &[("http", 80)]));
    wait_for(&mut rx, "watching again", RELIST, |i| i.services.len() == 3).await;
    let seen = seen.lock().unwrap();
    for services in seen.iter() {
        assert!(
            [
                vec!["shop/a", "shop/b"],
                vec!["shop/c", "shop/d"],
                vec!["shop/c", "shop/d", "shop/e"]
            ]
            .iter()
            .any(|whole| services == whole),
            "half a relist was pushed: {services:?} (all: {seen:?})"
        );
    }
}

/// kubectl's way in, with a plain `http://` server (as the end-to-end test
/// API server is reached).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_naming_a_plain_http_server_is_enough() {
    let tree = CgroupTree::new("kubeconfig");
    let server = ApiServer::start(fixture()).await;
    let path = tree.0.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test, namespace: shop}}}}]\n",
            server.addr
        ),
    )
    .unwrap();
    let config = KubeConfig {
        node_name: NODE.into(),
        cgroup_root: tree.0.clone(),
        lane_header: "x-lane".into(),
        passthrough_headers: vec![],
    };
    let source = KubeSource::from_kubeconfig(&path, config).await.unwrap();
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(source.run(tx));
    let inventory = wait_for(&mut rx, "first sync", Duration::from_secs(5), |_| true).await;
    assert_eq!(inventory.services.len(), 2);
    // Every request says which node's daemon made it.
    let agents: std::collections::BTreeSet<String> =
        server.served().into_iter().map(|s| s.client).collect();
    assert_eq!(
        agents,
        [tagger::source::kube::user_agent(NODE)].into(),
        "{:?}",
        server.served()
    );
}
