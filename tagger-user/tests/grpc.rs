//! gRPC through the in-process proxy with a real gRPC stack on both ends:
//! Python `grpcio` servers (`grpc/server.py`: "base" and "gray" endpoints
//! of one service) and clients (`grpc/client.py`, one channel, so one
//! HTTP/2 connection, per scenario). Each test runs one client scenario;
//! the scenario asserts what a gRPC client sees and prints a summary that
//! the test checks against what the proxy recorded.
//!
//! Needs `python3` with `grpc` importable (`cargo xtask setup` installs
//! it); without it the tests fail saying so, never skip.
mod support;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Once, atomic::Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use support::*;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// How long one client scenario may take (16 MiB messages through a debug
/// build of the proxy included).
const SCENARIO: Duration = Duration::from_secs(60);

fn grpc_config(protocol: &str, rules: &str) -> String {
    two_services(protocol, rules)
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/grpc")
        .join(name)
}

/// Fails (never skips) when the gRPC stack is missing, saying what to do.
fn require_grpcio() {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(|| {
        let status = std::process::Command::new("python3")
            .args(["-c", "import grpc"])
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "python3 cannot import grpc: run `cargo xtask setup` (installs grpcio)"
        );
    });
}

struct GrpcSetup {
    p: Proxied,
    /// The servers; killed when the test ends.
    _servers: Child,
}

/// The Python gRPC servers and a proxy in front of them. `protocol` is a
/// `protocol:` line for the service (or nothing), `rules` a `rules:` block.
async fn grpc_setup(protocol: &str, rules: &str) -> GrpcSetup {
    require_grpcio();
    let mut servers = Command::new("python3")
        .arg(script("server.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the gRPC servers");
    let stdout = servers.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = within("the gRPC servers listen", lines.next_line())
        .await
        .unwrap()
        .expect("the gRPC servers printed their port");
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("server said {line:?}"));
    let config = grpc_config(protocol, rules);
    let p = start_proxy(&config, port, "caller").await;
    GrpcSetup {
        p,
        _servers: servers,
    }
}

fn client_command(s: &GrpcSetup, scenario: &str) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(script("client.py"))
        .arg(s.p.proxy_addr.to_string())
        .arg(scenario)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs a client scenario; its JSON summary (the last line it printed).
async fn client(s: &GrpcSetup, scenario: &str) -> Value {
    let output = tokio::time::timeout(SCENARIO, client_command(s, scenario).output())
        .await
        .unwrap_or_else(|_| panic!("scenario {scenario} took over {SCENARIO:?}"))
        .expect("run the gRPC client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scenario {scenario} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"))
}

/// Requests per (lane, endpoint, gRPC method) in the flow map.
fn decided(s: &GrpcSetup) -> Vec<(Option<String>, String, Option<String>, u64)> {
    let mut rows: Vec<_> =
        s.p.flows
            .rows()
            .into_iter()
            .map(|r| (r.lane, r.endpoint, r.rpc, r.requests))
            .collect();
    rows.sort();
    rows
}

/// 300 concurrent unary calls of mixed lanes on one connection: each
/// answered by its lane's server (blue has none: baseline), trailing
/// metadata intact; the flow map counts them under the gRPC method.
#[tokio::test]
async fn unary_calls_on_one_connection_each_go_to_their_lane() {
    let s = grpc_setup("", "").await;
    let summary = client(&s, "lanes").await;
    assert_eq!(summary, json!({"served": {"gray": 100, "base": 200}}));
    let unary = Some("test.Echo/Unary".to_string());
    assert_eq!(
        decided(&s),
        [
            (None, "base".into(), unary.clone(), 100),
            (Some("blue".into()), "base".into(), unary.clone(), 100),
            (Some("gray".into()), "gray".into(), unary.clone(), 100),
        ]
    );
    assert_eq!(s.p.origins.taken(), 1, "one channel, one connection");
}

/// Server streaming, 64 x 64 KiB and one 16 MiB message, per lane.
#[tokio::test]
async fn server_streaming_goes_to_its_lane_whole() {
    let s = grpc_setup("", "").await;
    let summary = client(&s, "server_stream").await;
    assert_eq!(summary, json!({"gray": 64, "baseline": 64}));
}

/// Client streaming, 16 MiB up in 64 messages.
#[tokio::test]
async fn client_streaming_goes_to_its_lane_whole() {
    let s = grpc_setup("", "").await;
    let summary = client(&s, "client_stream").await;
    assert_eq!(
        summary["answer"],
        "gray lane=gray user=- count=64 bytes=16777216"
    );
}

/// Bidirectional streaming in lock step (nothing held back on the way) and
/// 16 MiB messages both ways. The service has a body rule: a gRPC call's
/// body is not held back for it (its first message alone would never fill
/// the rule's prefix, and the stream would stall).
#[tokio::test]
async fn bidirectional_streaming_in_lock_step_and_large_messages() {
    let rules = r#"body_match_limit: 1024
rules:
  - name: vip-body
    service: svc
    lane: gray
    conditions: [{source: body, name: user.vip, op: '=', value: 'true'}]
"#;
    let s = grpc_setup("", rules).await;
    let summary = client(&s, "bidi").await;
    assert_eq!(summary["answers"], 100);
}

/// An application's status, its (percent-encoded, non-ASCII) message and
/// its trailing metadata reach the client as the server sent them.
#[tokio::test]
async fn grpc_status_message_and_trailers_pass_intact() {
    let s = grpc_setup("", "").await;
    let summary = client(&s, "status").await;
    assert_eq!(summary["code"], "NOT_FOUND");
    let rows = s.p.flows.rows();
    // A gRPC error is an HTTP 200: the call reached its endpoint.
    assert_eq!((rows[0].requests, rows[0].errors), (1, 0));
}

/// A deadline (`grpc-timeout`) reaches the server, which sees the call end
/// when it passes; the client gets DEADLINE_EXCEEDED on time.
#[tokio::test]
async fn deadlines_reach_the_server() {
    let s = grpc_setup("", "").await;
    let summary = client(&s, "deadline").await;
    let deadlines = summary["deadlines"].as_array().unwrap();
    assert_eq!(deadlines.len(), 1);
    // The deadline came with the call (a call without one has ~292 years
    // left at the server). `grpc-timeout` is rounded up on the wire, and
    // time passes on the way: about what the client gave, never more.
    let remaining = deadlines[0].as_f64().expect("the server saw no deadline");
    assert!(remaining <= 0.6, "the server saw {remaining} s left of 0.5");
}

/// Calls the client cancels are cancelled at the server: the reset crosses
/// the proxy, for a stream under way and for a unary call still waiting
/// for its answer head. The connection serves the next call.
#[tokio::test]
async fn cancellation_reaches_the_server() {
    let s = grpc_setup("", "").await;
    let summary = client(&s, "cancel").await;
    assert_eq!(summary["ended_early"]["gray"], 2);
}

/// No ready endpoint: tagger answers each kind of call as a gRPC server
/// would, UNAVAILABLE with a message, not an HTTP error page.
#[tokio::test]
async fn no_endpoint_is_grpc_unavailable_for_every_kind_of_call() {
    let s = grpc_setup("", "").await;
    for endpoint in &s.p.state.load().services[0].endpoints {
        endpoint.ready.store(false, Ordering::Relaxed);
    }
    let summary = client(&s, "unavailable").await;
    for kind in ["unary", "server_stream", "client_stream", "bidi"] {
        let details = summary[kind].as_str().unwrap();
        assert!(
            details.contains("service svc has no ready endpoint"),
            "{kind}: {details}"
        );
    }
}

/// An endpoint that refuses connections (the pod died, not yet seen by the
/// health check) is UNAVAILABLE too, and the endpoint is taken out.
#[tokio::test]
async fn a_refusing_endpoint_is_grpc_unavailable() {
    let s = grpc_setup("", "").await;
    // The servers go; the endpoints still look ready.
    drop(s._servers);
    let s = GrpcSetup {
        _servers: Command::new("true").kill_on_drop(true).spawn().unwrap(),
        ..s
    };
    wait_until_refused(&s).await;
    let summary = client(&s, "unavailable").await;
    let details = summary["unary"].as_str().unwrap();
    assert!(details.contains("upstream"), "{details}");
}

/// Waits until the base endpoint refuses connections.
async fn wait_until_refused(s: &GrpcSetup) {
    let addr = s.p.state.load().services[0].endpoints[0].addr;
    within("the servers are gone", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Rules see the method as the path (prefix and regex) and metadata as
/// headers; the flow map names the rule and the method.
#[tokio::test]
async fn rules_match_grpc_methods_and_metadata() {
    let rules = r#"rules:
  - name: client-stream-gray
    service: svc
    lane: gray
    conditions: [{source: path, op: prefix, value: /test.Echo/ClientStream}]
  - name: server-stream-gray
    service: svc
    lane: gray
    conditions: [{source: path, op: regex, value: '^/test\.Echo/Server[A-Za-z]+$'}]
  - name: vip-gray
    service: svc
    lane: gray
    conditions: [{source: header, name: x-user, op: '=', value: vip}]
"#;
    let s = grpc_setup("    protocol: grpc\n", rules).await;
    let summary = client(&s, "rules").await;
    assert_eq!(
        summary,
        json!({
            "unary": "base lane=-",
            "unary_vip": "gray lane=gray",
            "client_stream": "gray lane=gray",
            "server_stream": "gray lane=gray",
            "bidi": "base lane=-",
        })
    );
    let mut reasons: Vec<(String, String)> =
        s.p.flows
            .rows()
            .into_iter()
            .map(|r| (r.rpc.unwrap_or_default(), r.reason))
            .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("test.Echo/Bidi".into(), "default".into()),
            (
                "test.Echo/ClientStream".into(),
                "rule:client-stream-gray".into()
            ),
            (
                "test.Echo/ServerStream".into(),
                "rule:server-stream-gray".into()
            ),
            ("test.Echo/Unary".into(), "default".into()),
            ("test.Echo/Unary".into(), "rule:vip-gray".into()),
        ]
    );
    let by_method = tagger::ctl::render_by_method(&s.p.flows.rows());
    for line in [
        "svc      test.Echo     ClientStream  gray      gray      1",
        "svc      test.Echo     Unary         baseline  base      1",
        "svc      test.Echo     Unary         gray      gray      1",
    ] {
        assert!(by_method.contains(line), "{line:?} not in\n{by_method}");
    }
}

/// The proxy stops (GOAWAY) while a server stream is in flight: the stream
/// completes with status OK, and the stop waits for it.
#[tokio::test]
async fn a_graceful_stop_lets_a_grpc_stream_finish() {
    let s = grpc_setup("", "").await;
    let mut client = client_command(&s, "goaway")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = client.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let started = within("the stream started", lines.next_line())
        .await
        .unwrap();
    assert_eq!(started.as_deref(), Some("streaming"));
    let drained = within("the stop completes", s.p.proxy.drain(STEP)).await;
    assert!(drained, "the stop gave up waiting for the stream");
    let summary = within("the client's summary", lines.next_line())
        .await
        .unwrap()
        .unwrap_or_default();
    let status = within("the client exits", client.wait()).await.unwrap();
    assert!(status.success(), "client failed; printed {summary:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&summary).unwrap(),
        json!({"messages": 30})
    );
}
