//! The daemon's wiring less the kernel, in process: the Kubernetes source
//! (against the test API server) feeds the controller, whose state the
//! proxy routes by. A `TrafficRule` created, changed and deleted through
//! the API is in force within a second, under steady load, with no request
//! lost.
#[path = "support/kube_fixture.rs"]
mod fixture;
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fixture::{CgroupTree, NODE, lane, namespace, service};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use support::{FixedOrigin, connect, send, upstream};
use tagger::{
    controller::{Controller, SourceInfo},
    proxy::{Proxy, ProxyConfig},
    source::{
        Source,
        kube::{KubeConfig, KubeSource},
    },
};
use tagger_test_apiserver::ApiServer;
use tokio::{net::TcpListener, sync::watch};

/// SPEC.md: changes apply within 1 s of the API event.
const IN_FORCE: Duration = Duration::from_secs(1);

/// One slice per pod: a named port is a different number on each.
fn slice(name: &str, ip: &str, pod: &str, port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
           "endpoints": [{"addresses": [ip], "conditions": {"ready": true},
                          "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod}}],
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

fn pod_meta(name: &str, ip: &str, lane: Option<&str>) -> Value {
    let labels = lane.map_or_else(|| json!({}), |l| json!({"tagger.io/lane": l}));
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": labels},
           "spec": {"nodeName": "node-b", "containers": [{"name": "app", "image": "app:1"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

fn user_rule(value: &str) -> Value {
    json!({"apiVersion": "tagger.io/v1alpha1", "kind": "TrafficRule",
           "metadata": {"name": "vip", "namespace": "shop"},
           "spec": {"service": "web", "lane": "gray",
                    "conditions": [{"source": "header", "name": "x-user-id", "op": "=", "value": value}]}})
}

/// Who answers a request from user `user` (the upstream's name).
async fn who(proxy: SocketAddr, user: &str) -> (u16, String) {
    let mut sender = connect(proxy).await;
    let request = http::Request::get("/")
        .header("host", "web")
        .header("x-user-id", user)
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let (status, body) = send(&mut sender, request).await;
    (
        status,
        body.split(' ').next().unwrap_or_default().to_string(),
    )
}

/// Waits until user `user` is answered by `want`; how long it took.
async fn settles(proxy: SocketAddr, user: &str, want: &str, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        if who(proxy, user).await.1 == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < IN_FORCE,
            "{what}: user {user} not answered by {want} within {IN_FORCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_changed_through_the_api_route_within_a_second_losing_nothing() {
    let base = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let gray = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let (base_port, gray_port) = (
        base.local_addr().unwrap().port(),
        gray.local_addr().unwrap().port(),
    );
    upstream("base", base);
    upstream("gray", gray);
    let server = ApiServer::start(vec![
        namespace("shop", true),
        service("shop", "web", "127.0.0.9", &[("http", 80)]),
        slice("web-base", "127.0.0.2", "web-base", base_port),
        slice("web-gray", "127.0.0.3", "web-gray", gray_port),
        pod_meta("web-base", "127.0.0.2", None),
        pod_meta("web-gray", "127.0.0.3", Some("gray")),
        lane("shop", "gray", false),
        user_rule("100"),
    ])
    .await;

    // daemon.rs's wiring, less the kernel.
    let tree = CgroupTree::new("routing");
    let source = KubeSource::new(
        server.client(),
        KubeConfig {
            node_name: NODE.into(),
            cgroup_root: tree.0.clone(),
            lane_header: "x-lane".into(),
            passthrough_headers: vec![],
        },
    );
    let (tx, mut rx) = watch::channel(None);
    tokio::spawn(source.run(tx));
    let first = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
        .await
        .expect("first sync")
        .unwrap()
        .clone()
        .unwrap();
    let controller =
        Arc::new(Controller::new(first, SourceInfo::default(), Arc::default()).unwrap());
    tokio::spawn(controller.clone().follow(rx));
    let origins = Arc::new(FixedOrigin::new(
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 80),
        99,
    ));
    let proxy = Proxy::new(
        controller.state.clone(),
        origins,
        controller.flows.clone(),
        Arc::default(),
        ProxyConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.serve(listener));

    assert_eq!(who(addr, "100").await, (200, "gray".into()));
    assert_eq!(who(addr, "101").await, (200, "base".into()));

    // Steady load beside the changes: every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (stop, statuses) = (stop.clone(), statuses.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = who(addr, "100").await.0;
                statuses.lock().unwrap().push(status);
            }
        })
    };
    let changed = {
        server.apply(user_rule("101"));
        settles(addr, "101", "gray", "rule changed").await
    };
    let deleted = {
        server.delete("TrafficRule", "shop", "vip");
        settles(addr, "101", "base", "rule deleted").await
    };
    let created = {
        server.apply(user_rule("102"));
        settles(addr, "102", "gray", "rule created").await
    };
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let statuses = statuses.lock().unwrap();
    assert!(statuses.len() > 10, "the load ran: {}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "a request failed: {statuses:?}"
    );
    println!("in force after: changed {changed:?}, deleted {deleted:?}, created {created:?}");
    // The flow-to-lane map names the rule by namespace.
    let rows = serde_json::to_value(controller.flows.rows()).unwrap();
    assert!(rows.to_string().contains("rule:shop/vip"), "{rows:#}");
}
