//! `tagger flows|lanes --kubernetes` in process: the test API server
//! (`tagger-test-apiserver`, `test-apiserver/`) serves daemon pods whose podIP is 127.0.0.1, each
//! with its own metrics port, where the daemon's own metrics listener runs
//! on a flow table with recorded requests (no eBPF: the proxy is what
//! records, and the table is all the views read). One pod's port is closed.
//! The CLI's code is called with the test server's client, and the binary
//! is run with a kubeconfig naming the server (given to the child only).

use std::{
    path::PathBuf,
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tagger::{
    admin::View,
    ctl::cluster::{self, ClusterTarget, ClusterView, Screen},
    flows::{FlowRow, FlowTable, LaneRate, RequestRecord},
    metrics::{Hub, serve},
    propagation::Correlation,
    routing::Reason,
};
use tagger_test_apiserver::ApiServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const NS: &str = "tagger-system";
/// Bounds every step: a step that takes this long is stuck.
const STEP: Duration = Duration::from_secs(10);

/// A daemon pod as the DaemonSet makes it: hostNetwork, the metrics port
/// named `metrics`, on `node`.
fn daemon_pod(ns: &str, node: &str, port: u16, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("tagger-{node}"), "namespace": ns, "labels": labels},
           "spec": {"nodeName": node, "hostNetwork": true, "containers": [{
               "name": "tagger", "image": "tagger:0.1.0",
               "ports": [{"name": "proxy", "containerPort": 15001},
                         {"name": "metrics", "containerPort": port}]}]},
           "status": {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1"}})
}

fn tagger_labels() -> Value {
    json!({"app.kubernetes.io/name": "tagger"})
}

fn record(table: &FlowTable, source: &str, lane: Option<&str>, reason: &Reason, rpc: Option<&str>) {
    table.record(RequestRecord {
        source,
        service: "shop/charge",
        endpoint: if lane.is_some() {
            "shop/charge-v2"
        } else {
            "shop/charge-v1"
        },
        lane,
        reason,
        fallback: false,
        served_lane: lane,
        correlation: Correlation::Trusted,
        rpc,
        ok: true,
        stripped: None,
    });
}

/// A node's daemon, as far as the views go: its flow table behind its own
/// metrics listener on an ephemeral port.
async fn node(requests: impl Fn(&FlowTable)) -> (Arc<FlowTable>, u16) {
    let flows = Arc::new(FlowTable::default());
    requests(&flows);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, Arc::new(Hub::new(flows.clone()))));
    (flows, port)
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

struct Cluster {
    server: Arc<ApiServer>,
    a: Arc<FlowTable>,
    b: Arc<FlowTable>,
    port_a: u16,
    /// Removed when dropped.
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// node-a (baseline traffic and a gRPC call), node-b (gray traffic),
/// node-c (its port closed; also labelled `tier=broken`), and pods that
/// are not daemons of this namespace.
async fn cluster(name: &str) -> Cluster {
    let (a, port_a) = node(|t| {
        for _ in 0..3 {
            record(t, "shop/device-v1", None, &Reason::Default, None);
        }
        record(
            t,
            "shop/web",
            None,
            &Reason::Default,
            Some("helloworld.Greeter/SayHello"),
        );
    })
    .await;
    let (b, port_b) = node(|t| {
        for _ in 0..5 {
            record(t, "shop/device-v2", Some("gray"), &Reason::PodLane, None);
        }
    })
    .await;
    let mut broken = tagger_labels();
    broken["tier"] = json!("broken");
    let server = ApiServer::start(vec![
        daemon_pod(NS, "node-a", port_a, tagger_labels()),
        daemon_pod(NS, "node-b", port_b, tagger_labels()),
        daemon_pod(NS, "node-c", closed_port().await, broken),
        // Not daemons: another app in the namespace, and a daemon-labelled
        // pod elsewhere. Both would answer if asked.
        daemon_pod(
            NS,
            "node-x",
            port_a,
            json!({"app.kubernetes.io/name": "other"}),
        ),
        daemon_pod("elsewhere", "node-y", port_b, tagger_labels()),
    ])
    .await;
    let dir =
        std::env::temp_dir().join(format!("tagger-cluster-view-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Cluster {
        server,
        a,
        b,
        port_a,
        dir,
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

/// The lines of a table whose first cell is `node`.
fn lines_of<'a>(text: &'a str, node: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some(node))
        .collect()
}

fn assert_node_c_unreachable(notes: &[String]) {
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].starts_with("node node-c unreachable (pod tagger-node-c at 127.0.0.1:")
            && notes[0].contains("cannot connect"),
        "{notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_shows_every_node_that_answered_and_reports_the_one_that_did_not() {
    let c = cluster("table").await;
    let client = c.server.client();
    let target = ClusterTarget::default();

    let Screen {
        text,
        notes,
        answered,
    } = within(
        "flows",
        cluster::flows_screen(&client, &target, false, false),
    )
    .await
    .unwrap();
    assert!(answered);
    assert!(text.starts_with("NODE    SOURCE "), "{text}");
    let a = lines_of(&text, "node-a");
    let b = lines_of(&text, "node-b");
    // The gRPC call is its own flow (another source) on node-a.
    assert_eq!(a.len(), 2, "{text}");
    assert!(
        a[0].contains("shop/device-v1") && a[0].contains("baseline") && a[0].contains(" 3 "),
        "{text}"
    );
    assert_eq!(b.len(), 1, "{text}");
    assert!(
        b[0].contains("shop/device-v2") && b[0].contains("gray") && b[0].contains("pod-lane"),
        "{text}"
    );
    assert!(lines_of(&text, "node-c").is_empty(), "{text}");
    assert!(
        !text.contains("node-x") && !text.contains("node-y"),
        "{text}"
    );
    assert_node_c_unreachable(&notes);

    let by_path = within(
        "by path",
        cluster::flows_screen(&client, &target, false, true),
    )
    .await
    .unwrap();
    assert!(
        by_path.text.starts_with("NODE    SERVICE "),
        "{}",
        by_path.text
    );
    assert!(
        lines_of(&by_path.text, "node-a")
            .iter()
            .any(|l| l.contains("helloworld.Greeter") && l.contains("SayHello")),
        "{}",
        by_path.text
    );

    let lanes = within("lanes", cluster::lanes_screen(&client, &target, false))
        .await
        .unwrap();
    assert!(lanes.text.starts_with("NODE    SERVICE "), "{}", lanes.text);
    assert!(lines_of(&lanes.text, "node-a")[0].contains("baseline"));
    assert!(lines_of(&lanes.text, "node-b")[0].contains("gray"));
    assert_node_c_unreachable(&lanes.notes);
}

/// `--json`: each node's rows are exactly what its flow table gives the
/// admin socket's `tagger flows --json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_holds_each_nodes_own_rows_and_the_unreachable_one() {
    let c = cluster("json").await;
    let client = c.server.client();
    let target = ClusterTarget::default();

    let screen = within(
        "flows --json",
        cluster::flows_screen(&client, &target, true, false),
    )
    .await
    .unwrap();
    let view: ClusterView<FlowRow> = serde_json::from_str(&screen.text).unwrap();
    let nodes: Vec<&str> = view.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(nodes, ["node-a", "node-b"]);
    // last_seen_ms moves: compare the rest.
    let settled = |rows: Vec<FlowRow>| -> Vec<FlowRow> {
        rows.into_iter()
            .map(|r| FlowRow {
                last_seen_ms: 0,
                ..r
            })
            .collect()
    };
    assert_eq!(settled(view.nodes[0].rows.clone()), settled(c.a.rows()));
    assert_eq!(settled(view.nodes[1].rows.clone()), settled(c.b.rows()));
    assert_eq!(view.nodes[0].address, format!("127.0.0.1:{}", c.port_a));
    assert_eq!(view.unreachable.len(), 1);
    assert_eq!(view.unreachable[0].node, "node-c");
    assert!(
        view.unreachable[0].error.contains("cannot connect"),
        "{:?}",
        view.unreachable
    );

    let screen = within(
        "lanes --json",
        cluster::lanes_screen(&client, &target, true),
    )
    .await
    .unwrap();
    let view: ClusterView<LaneRate> = serde_json::from_str(&screen.text).unwrap();
    assert_eq!(view.nodes[1].rows[0].lane.as_deref(), Some("gray"));
    assert_eq!(view.nodes[1].rows[0].total, 5);
    assert_eq!(view.unreachable[0].node, "node-c");
}

/// The metrics listener's `/debug/flows` is byte for byte the admin
/// socket's `/flows` (both are `View::json`), and read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_the_admin_sockets_json() {
    let c = cluster("debug").await;
    for (view, table) in [(View::Flows, &c.a), (View::Lanes, &c.a)] {
        let body = within("GET", get(c.port_a, "GET", view.debug_path())).await;
        let (head, body) = body.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let expected = String::from_utf8(view.json(table).unwrap()).unwrap();
        if view == View::Flows {
            // Ages move between the two reads.
            let strip = |t: &str| -> Vec<String> {
                t.lines()
                    .filter(|l| !l.contains("last_seen_ms"))
                    .map(String::from)
                    .collect()
            };
            assert_eq!(strip(body), strip(&expected));
        } else {
            assert_eq!(body, expected);
        }
    }
    let refused = within("POST", get(c.port_a, "POST", "/debug/flows")).await;
    assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
}

async fn get(port: u16, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Nodes are asked at once, each within the time limit: a node that
/// accepts and never answers costs the limit once, not per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_costs_one_timeout_and_the_others_still_show() {
    let c = cluster("silent").await;
    let mut silent = Vec::new();
    for node in ["node-s1", "node-s2"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        c.server
            .apply(daemon_pod("tagger-slow", node, port, tagger_labels()));
        // Accepts (the kernel's backlog would too) and never answers.
        silent.push(listener);
    }
    c.server.apply(daemon_pod(
        "tagger-slow",
        "node-a",
        c.port_a,
        tagger_labels(),
    ));
    let target = ClusterTarget {
        namespace: "tagger-slow".into(),
        timeout: Duration::from_millis(500),
        ..ClusterTarget::default()
    };
    let started = Instant::now();
    let screen = within(
        "flows",
        cluster::flows_screen(&c.server.client(), &target, false, false),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(screen.answered);
    assert_eq!(lines_of(&screen.text, "node-a").len(), 2, "{}", screen.text);
    assert_eq!(screen.notes.len(), 2, "{:?}", screen.notes);
    assert!(
        screen
            .notes
            .iter()
            .all(|n| n.contains("no answer within 500ms")),
        "{:?}",
        screen.notes
    );
    drop(silent);
}

/// The binary, as a user runs it: the API from KUBECONFIG (a plain http://
/// server), exit 0 when a node answered, non-zero when none did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_kubeconfig_and_fails_only_when_no_node_answers() {
    let c = cluster("binary").await;
    let kubeconfig = c.dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{{name: test, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\n",
            c.server.addr
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let kubeconfig = kubeconfig.clone();
        within(
            "the tagger binary",
            tokio::process::Command::new(env!("CARGO_BIN_EXE_tagger"))
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("RUST_LOG")
                .output(),
        )
    };
    let text = |o: &Output| {
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    let out = run(&["flows", "--kubernetes"]).await.unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(lines_of(&stdout, "node-a").len(), 2, "{stdout}");
    assert_eq!(lines_of(&stdout, "node-b").len(), 1, "{stdout}");
    assert!(stderr.contains("node node-c unreachable"), "{stderr}");

    let out = run(&["lanes", "--kubernetes", "--json", "-n", NS])
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let view: ClusterView<LaneRate> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(view.nodes.len(), 2);
    assert_eq!(view.unreachable.len(), 1);

    let out = run(&[
        "flows",
        "--kubernetes",
        "--by-path",
        "-l",
        "app.kubernetes.io/name=tagger,tier=broken",
    ])
    .await
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("node node-c unreachable"), "{stderr}");
    assert!(stderr.contains("no tagger daemon answered"), "{stderr}");
    // Not "no flows yet": nobody said so.
    assert_eq!(stdout, "");

    let out = run(&["flows", "--kubernetes", "-n", "nowhere"])
        .await
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no pods -l app.kubernetes.io/name=tagger in namespace nowhere"),
        "{stderr}"
    );
}
