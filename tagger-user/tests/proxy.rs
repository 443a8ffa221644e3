//! In-process proxy tests on ephemeral loopback ports: the real proxy and
//! hyper upstreams, with the kernel's flow map replaced by a fixed origin.
//!
//! Every connect, send and read is bounded by [`within`]: a proxy that stops
//! answering fails the test naming the step instead of hanging it. Nothing
//! sleeps to decide a result; waits poll for an event with a deadline.
use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use tagger::{
    config::ClusterFile,
    flows::FlowTable,
    proxy::{FlowLookup, Origin, Proxy, ProxyConfig},
    state::{PlacedPod, PlacedService, Placement, Snapshot, StateHandle},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long any one step (connect, send, read) may take. Generous: a step
/// that takes this long is stuck, not slow.
const STEP: Duration = Duration::from_secs(5);

/// Awaits `future` for at most [`STEP`], failing the test with `step` named.
async fn within<T>(step: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP:?}: {step}"),
    }
}

/// Polls `done` until it holds, failing the test with `what` after [`STEP`].
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Every connection comes from `caller_cgroup` and meant to go to `dest`
/// (changeable between connections).
struct FixedOrigin {
    dest: Mutex<SocketAddrV4>,
    caller_cgroup: u64,
}

impl FixedOrigin {
    fn new(dest: SocketAddrV4, caller_cgroup: u64) -> Self {
        Self {
            dest: Mutex::new(dest),
            caller_cgroup,
        }
    }

    fn set_dest(&self, dest: SocketAddrV4) {
        *self.dest.lock().unwrap() = dest;
    }
}

impl FlowLookup for FixedOrigin {
    fn take_origin(&self, _peer: SocketAddrV4) -> Option<Origin> {
        Some(Origin {
            original_destination: *self.dest.lock().unwrap(),
            cgroup_id: self.caller_cgroup,
            cookie: 0,
        })
    }
}

/// One request as an upstream received it, body read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    content_length: Option<String>,
    transfer_encoding: Option<String>,
    body_len: usize,
}

/// What an upstream saw: connections accepted and complete requests.
#[derive(Default)]
struct UpstreamLog {
    connections: AtomicUsize,
    requests: Mutex<Vec<Seen>>,
}

impl UpstreamLog {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.path).collect()
    }
}

/// An upstream that answers "<name> lane=<x-lane> len=<body bytes> sum=<byte sum>".
fn upstream(name: &'static str, listener: TcpListener) -> Arc<UpstreamLog> {
    let log = Arc::new(UpstreamLog::default());
    let accept_log = log.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            accept_log.connections.fetch_add(1, Ordering::SeqCst);
            let log = accept_log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_string())
                        };
                        let lane = header("x-lane").unwrap_or_else(|| "-".into());
                        let mut seen = Seen {
                            method: request.method().to_string(),
                            path: request.uri().path().to_string(),
                            content_length: header("content-length"),
                            transfer_encoding: header("transfer-encoding"),
                            body_len: 0,
                        };
                        let body = request.into_body().collect().await?.to_bytes();
                        seen.body_len = body.len();
                        log.requests.lock().unwrap().push(seen);
                        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
                        let answer = format!("{name} lane={lane} len={} sum={sum}", body.len());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    log
}

/// Listeners for "base" on 127.0.0.2 and, if asked, "gray" on 127.0.0.3 on
/// the same ephemeral port (a service's endpoints share its port). The port
/// the kernel gives on one address may be taken on the other by a test
/// running alongside: then another port is tried.
async fn endpoint_listeners(gray: bool) -> (TcpListener, Option<TcpListener>) {
    for _ in 0..100 {
        let base = TcpListener::bind("127.0.0.2:0").await.unwrap();
        if !gray {
            return (base, None);
        }
        let port = base.local_addr().unwrap().port();
        if let Ok(gray) = TcpListener::bind(("127.0.0.3", port)).await {
            return (base, Some(gray));
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

const CONFIG: &str = r#"
lanes:
  - {name: gray, sticky: true}
body_match_limit: 1024
services:
  - name: svc
    port: 1
    pods:
      - {name: base, command: [x]}
      - {name: gray, lane: gray, command: [x]}
  - name: caller
    pods:
      - {name: caller, command: [x]}
      - {name: caller-gray, lane: gray, command: [x]}
rules:
  - name: vip-users
    service: svc
    lane: gray
    conditions:
      - {source: body, name: user.vip, op: '=', value: 'true'}
"#;

struct Setup {
    proxy_addr: SocketAddr,
    state: StateHandle,
    flows: Arc<FlowTable>,
    origins: Arc<FixedOrigin>,
    /// The port every upstream listens on.
    port: u16,
    base: Arc<UpstreamLog>,
    /// Empty when the gray upstream is not started.
    gray: Arc<UpstreamLog>,
}

/// Upstreams "base" on 127.0.0.2 and "gray" on 127.0.0.3 (same port), the
/// service address 127.0.0.9, and a proxy whose callers are `caller_pod`.
async fn setup(caller_pod: &str, gray_up: bool) -> Setup {
    let (base, gray) = endpoint_listeners(gray_up).await;
    let port = base.local_addr().unwrap().port();
    let base = upstream("base", base);
    let gray = gray.map_or_else(Arc::default, |gray| upstream("gray", gray));
    let text = CONFIG.replace("port: 1", &format!("port: {port}"));
    let file = ClusterFile::parse(&text, Path::new("test.yaml")).unwrap();
    let placement = Placement {
        pods: vec![
            PlacedPod {
                name: "base".into(),
                ip: Ipv4Addr::new(127, 0, 0, 2),
                cgroup_id: 1,
            },
            PlacedPod {
                name: "gray".into(),
                ip: Ipv4Addr::new(127, 0, 0, 3),
                cgroup_id: 2,
            },
            PlacedPod {
                name: "caller".into(),
                ip: Ipv4Addr::new(127, 0, 0, 4),
                cgroup_id: 3,
            },
            PlacedPod {
                name: "caller-gray".into(),
                ip: Ipv4Addr::new(127, 0, 0, 5),
                cgroup_id: 4,
            },
        ],
        services: vec![PlacedService {
            name: "svc".into(),
            address: Ipv4Addr::new(127, 0, 0, 9),
        }],
    };
    let snapshot = Snapshot::build(&file, &placement, None).unwrap();
    for endpoint in &snapshot.services[0].endpoints {
        endpoint.ready.store(true, Ordering::Relaxed);
    }
    let caller_cgroup = snapshot
        .pods
        .iter()
        .find(|p| p.name == caller_pod)
        .unwrap()
        .cgroup_id;
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(snapshot));
    let flows = Arc::new(FlowTable::default());
    let origins = Arc::new(FixedOrigin::new(
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), port),
        caller_cgroup,
    ));
    let proxy = Proxy::new(
        state.clone(),
        origins.clone(),
        flows.clone(),
        Arc::default(),
        ProxyConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.serve(listener));
    Setup {
        proxy_addr,
        state,
        flows,
        origins,
        port,
        base,
        gray,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
>;

/// One keep-alive connection to the proxy.
async fn connect(addr: SocketAddr) -> Sender {
    let stream = raw_connect(addr).await;
    let (sender, connection) = within(
        "HTTP handshake with the proxy",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

async fn raw_connect(addr: SocketAddr) -> TcpStream {
    within(&format!("connect to {addr}"), TcpStream::connect(addr))
        .await
        .unwrap()
}

fn request(
    lane: Option<&str>,
    body: Bytes,
) -> Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>> {
    let mut builder = Request::post("/x").header("host", "svc");
    if let Some(lane) = lane {
        builder = builder.header("x-lane", lane);
    }
    builder
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .unwrap()
}

async fn send(
    sender: &mut Sender,
    request: Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>,
) -> (u16, String) {
    within("connection ready for a request", sender.ready())
        .await
        .unwrap();
    let response = within("response head", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = within("response body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn each_request_on_one_connection_gets_its_own_lane() {
    let s = setup("caller", true).await;
    let mut conn = connect(s.proxy_addr).await;
    for lane in [Some("gray"), None, Some("gray"), Some("blue"), None] {
        let (status, body) = send(&mut conn, request(lane, Bytes::new())).await;
        assert_eq!(status, 200);
        let expected = match lane {
            Some("gray") => "gray lane=gray len=0 sum=0",
            // blue has no endpoint: baseline serves it, the header stays on.
            Some("blue") => "base lane=blue len=0 sum=0",
            _ => "base lane=- len=0 sum=0",
        };
        assert_eq!(body, expected, "lane {lane:?}");
    }
    let rows = s.flows.rows();
    let blue = rows
        .iter()
        .find(|r| r.lane.as_deref() == Some("blue"))
        .unwrap();
    assert!(blue.fallback && blue.reason == "header" && blue.endpoint == "base");
}

#[tokio::test]
async fn sticky_caller_lane_is_carried_downstream() {
    let s = setup("caller-gray", true).await;
    let mut conn = connect(s.proxy_addr).await;
    let (_, body) = send(&mut conn, request(None, Bytes::new())).await;
    assert_eq!(body, "gray lane=gray len=0 sum=0");
    assert_eq!(s.flows.rows()[0].reason, "pod-lane");
}

#[tokio::test]
async fn body_rule_reads_a_bounded_prefix_and_forwards_the_whole_body() {
    let s = setup("caller", true).await;
    let mut conn = connect(s.proxy_addr).await;
    // Small JSON body: the rule matches.
    let body = Bytes::from_static(br#"{"user": {"vip": true}}"#);
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let (_, answer) = send(&mut conn, request(None, body.clone())).await;
    assert_eq!(
        answer,
        format!("gray lane=gray len={} sum={sum}", body.len())
    );
    // A 3 MiB chunked body, far over the 1 KiB bound: not JSON within the
    // bound, so baseline; every byte still arrives.
    let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
    let frames = (0..48).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
    let streaming = StreamBody::new(futures_stream(frames)).boxed();
    let request = Request::post("/x")
        .header("host", "svc")
        .body(streaming)
        .unwrap();
    let (status, answer) = send(&mut conn, request).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        format!(
            "base lane=- len={} sum={}",
            48 * 64 * 1024,
            48 * 64 * 1024 * u64::from(b'a')
        )
    );
}

fn futures_stream<I: Iterator + Send + 'static>(
    items: I,
) -> impl futures_core::Stream<Item = I::Item> + Send
where
    I::Item: Send,
{
    tokio_stream::iter(items)
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_and_no_endpoint_is_a_503() {
    let s = setup("caller", false).await; // "gray" is marked ready but nothing listens
    let mut conn = connect(s.proxy_addr).await;
    let (status, body) = send(&mut conn, request(Some("gray"), Bytes::new())).await;
    // A request without a body is retried on the baseline endpoint.
    assert_eq!((status, body.as_str()), (200, "base lane=gray len=0 sum=0"));
    assert!(
        !s.state.load().services[0].endpoints[1]
            .ready
            .load(Ordering::Relaxed)
    );
    // Nothing ready at all: 503 naming the service.
    for endpoint in &s.state.load().services[0].endpoints {
        endpoint.ready.store(false, Ordering::Relaxed);
    }
    let (status, body) = send(&mut conn, request(None, Bytes::new())).await;
    assert_eq!(status, 503);
    assert!(body.contains("service svc has no ready endpoint"), "{body}");
}

/// A service whose only ready pods are gray (the article's `a-gray`, an
/// ingress canary's target) serves a baseline caller from them: never a 503
/// while a pod is ready. The flow says which lane actually served.
#[tokio::test]
async fn a_service_with_only_gray_ready_serves_baseline_requests_from_gray() {
    let s = setup("caller", true).await;
    s.state.load().services[0].endpoints[0]
        .ready
        .store(false, Ordering::Relaxed); // baseline down: only gray is ready
    let mut conn = connect(s.proxy_addr).await;
    for _ in 0..3 {
        let (status, body) = send(&mut conn, request(None, Bytes::new())).await;
        // Baseline stays baseline: no lane header is invented.
        assert_eq!((status, body.as_str()), (200, "gray lane=- len=0 sum=0"));
    }
    let (status, body) = send(&mut conn, request(Some("blue"), Bytes::new())).await;
    assert_eq!((status, body.as_str()), (200, "gray lane=blue len=0 sum=0"));
    let rows = s.flows.rows();
    let only = |lane: Option<&str>| {
        rows.iter()
            .find(|r| r.lane.as_deref() == lane)
            .unwrap_or_else(|| panic!("no row for {lane:?}: {rows:#?}"))
    };
    let baseline = only(None);
    assert_eq!(
        (
            baseline.reason.as_str(),
            baseline.fallback,
            baseline.served_lane.as_deref(),
            baseline.requests
        ),
        ("default", true, Some("gray"), 3)
    );
    let blue = only(Some("blue"));
    assert_eq!(
        (
            blue.reason.as_str(),
            blue.fallback,
            blue.served_lane.as_deref()
        ),
        ("header", true, Some("gray"))
    );
    assert!(
        tagger::ctl::render_flows(&rows).contains("default (only lane gray)"),
        "{}",
        tagger::ctl::render_flows(&rows)
    );
}

#[tokio::test]
async fn a_body_request_to_a_dead_endpoint_is_a_502_not_a_retry() {
    let s = setup("caller", false).await;
    let mut conn = connect(s.proxy_addr).await;
    let (status, body) = send(
        &mut conn,
        request(Some("gray"), Bytes::from_static(b"payload")),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream") && body.contains("gray"), "{body}");
}

#[tokio::test]
async fn bytes_that_are_not_http_are_spliced_untouched() {
    // An echo server stands for the destination; it is an endpoint address,
    // so the opaque flow goes to it as it is.
    let echo = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let echo_addr = match echo.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let mut buf = vec![0; 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await.unwrap();
        }
    });
    let addr = opaque_proxy(echo_addr).await;
    let mut client = raw_connect(addr).await;
    let payload = b"\x00\x01 SSH-2.0-not-http\r\n";
    within("send opaque bytes", client.write_all(payload))
        .await
        .unwrap();
    let mut back = vec![0; payload.len()];
    within("read the echo", client.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, payload);
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_treated_as_opaque() {
    // Server-speaks-first protocols: after the sniff timeout the proxy
    // connects through and the greeting reaches the client.
    let server = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let server_addr = match server.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    tokio::spawn(async move {
        let (mut stream, _) = server.accept().await.unwrap();
        stream.write_all(b"220 hello\r\n").await.unwrap();
    });
    let addr = opaque_proxy(server_addr).await;
    let mut client = raw_connect(addr).await;
    let mut greeting = vec![0; 11];
    within(
        "read the server's greeting",
        client.read_exact(&mut greeting),
    )
    .await
    .unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
}

/// A proxy whose flows all meant to reach `dest`, an endpoint of `svc`.
async fn opaque_proxy(dest: SocketAddrV4) -> SocketAddr {
    let text = CONFIG.replace("port: 1", &format!("port: {}", dest.port()));
    let file = ClusterFile::parse(&text, Path::new("t.yaml")).unwrap();
    let pods = ["base", "gray", "caller", "caller-gray"];
    let placement = Placement {
        pods: pods
            .iter()
            .zip(2u8..)
            .map(|(name, host)| PlacedPod {
                name: name.to_string(),
                ip: Ipv4Addr::new(127, 0, 0, host),
                cgroup_id: u64::from(host),
            })
            .collect(),
        services: vec![],
    };
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(
        Snapshot::build(&file, &placement, None).unwrap(),
    ));
    let origins = Arc::new(FixedOrigin::new(dest, 4));
    let proxy = Proxy::new(
        state,
        origins,
        Arc::default(),
        Arc::default(),
        ProxyConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.serve(listener));
    addr
}

/// One response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads more bytes into `buffer`; the connection must not end here.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, step: &str) {
    let mut chunk = [0u8; 4096];
    let n = within(step, stream.read(&mut chunk))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{step}: {e}; read so far {:?}",
                String::from_utf8_lossy(buffer)
            )
        });
    assert!(
        n > 0,
        "{step}: connection closed; read so far {:?}",
        String::from_utf8_lossy(buffer)
    );
    buffer.extend_from_slice(&chunk[..n]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (head, then a body framed by Content-Length or
/// chunks). Bytes after it stay in `buffer`: pipelined answers follow.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>, step: &str) -> RawResponse {
    let head_end = loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            break end;
        }
        fill(stream, buffer, step).await;
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{step}: status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    let mut response = RawResponse {
        status,
        headers,
        body: String::new(),
    };
    let mut body = Vec::new();
    if response.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(end) = find(buffer, b"\r\n") {
                    break end;
                }
                fill(stream, buffer, step).await;
            };
            let size_text = String::from_utf8(buffer[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
            while buffer.len() < line_end + 2 + size + 2 {
                fill(stream, buffer, step).await;
            }
            body.extend_from_slice(&buffer[line_end + 2..line_end + 2 + size]);
            buffer.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        let length: usize = response
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while buffer.len() < length {
            fill(stream, buffer, step).await;
        }
        body = buffer.drain(..length).collect();
    }
    response.body = String::from_utf8(body).unwrap();
    response
}

/// The peer closes the connection, and sends nothing more first.
async fn expect_closed(stream: &mut TcpStream, mut buffer: Vec<u8>, step: &str) {
    let mut chunk = [0u8; 4096];
    loop {
        match within(step, stream.read(&mut chunk)).await {
            Ok(0) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            // A reset closes too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{step}: {e}"),
        }
    }
    assert!(
        buffer.is_empty(),
        "{step}: more after the answer: {:?}",
        String::from_utf8_lossy(&buffer)
    );
}

async fn write_raw(stream: &mut TcpStream, bytes: &[u8], step: &str) {
    within(step, stream.write_all(bytes))
        .await
        .unwrap_or_else(|e| panic!("{step}: {e}"));
}

/// A body framed both by Content-Length and Transfer-Encoding is the shape
/// of request smuggling (RFC 9112 6.1, 6.3). hyper frames it by the chunks
/// alone, drops the Content-Length, answers, and closes the connection, so
/// the bytes after the chunked body are never read as a request: the
/// upstream sees one request, framed one way.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_chunks_then_closed() {
    let cases = [
        (
            "Content-Length shorter, before",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            // Were the length obeyed, the proxy would wait for 100 bytes.
            "Content-Length longer, after",
            "Transfer-Encoding: chunked\r\nContent-Length: 100\r\n",
        ),
        (
            "Content-Length zero",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        ),
    ];
    for (case, framing) in cases {
        let s = setup("caller", true).await;
        let mut client = raw_connect(s.proxy_addr).await;
        // A request hidden after the body; its lane would send it to gray.
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: svc\r\nx-lane: gray\r\n\r\n";
        let raw = format!(
            "POST /x HTTP/1.1\r\nHost: svc\r\n{framing}\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
        );
        write_raw(&mut client, raw.as_bytes(), case).await;
        let mut buffer = Vec::new();
        let response = read_response(&mut client, &mut buffer, case).await;
        // "hello": 104 + 101 + 108 + 108 + 111.
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "base lane=- len=5 sum=532"),
            "{case}"
        );
        assert_eq!(response.header("connection"), Some("close"), "{case}");
        expect_closed(&mut client, buffer, case).await;
        let seen = s.base.requests();
        assert_eq!(seen.len(), 1, "{case}: {seen:?}");
        assert_eq!(seen[0].body_len, 5, "{case}");
        assert!(
            seen[0].content_length.is_none() || seen[0].transfer_encoding.is_none(),
            "{case}: the upstream got both framings: {seen:?}"
        );
        assert_eq!(s.gray.requests(), vec![], "{case}: smuggled through");
    }
}

/// A chunk size that is not a hex number, or does not fit, is the client's
/// error: 400, and the connection is closed (its framing is lost). Whether
/// the proxy reads the body for a rule or streams it to the upstream (a lane
/// header skips the rules), no upstream receives a complete request.
#[tokio::test]
async fn bad_chunk_sizes_are_a_400_and_close_the_connection() {
    let bodies = [
        ("not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("negative", "-5\r\nhello\r\n0\r\n\r\n"),
        ("overflows u64", "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("empty size", "\r\nhello\r\n0\r\n\r\n"),
    ];
    for lane in ["", "x-lane: gray\r\n"] {
        for (name, body) in bodies {
            let case = format!("{name}, {lane:?}");
            let s = setup("caller", true).await;
            let mut client = raw_connect(s.proxy_addr).await;
            let raw = format!(
                "POST /x HTTP/1.1\r\nHost: svc\r\n{lane}Transfer-Encoding: chunked\r\n\r\n{body}"
            );
            write_raw(&mut client, raw.as_bytes(), &case).await;
            let mut buffer = Vec::new();
            let response = read_response(&mut client, &mut buffer, &case).await;
            assert_eq!(response.status, 400, "{case}: {response:?}");
            expect_closed(&mut client, buffer, &case).await;
            assert_eq!(s.base.requests(), vec![], "{case}");
            assert_eq!(s.gray.requests(), vec![], "{case}");
        }
    }
}

/// Requests pipelined in one write are answered in order, and each is
/// decided on its own (a lane on one does not stick to the next).
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_each_on_its_own_lane() {
    let s = setup("caller", true).await;
    let requests = [
        (Some("gray"), "/one", "gray lane=gray len=0 sum=0"),
        (None, "/two", "base lane=- len=0 sum=0"),
        // No blue endpoint: baseline serves it, the header stays on.
        (Some("blue"), "/three", "base lane=blue len=0 sum=0"),
        (Some("gray"), "/four", "gray lane=gray len=0 sum=0"),
    ];
    let mut raw = String::new();
    for (i, (lane, path, _)) in requests.iter().enumerate() {
        raw += &format!("GET {path} HTTP/1.1\r\nHost: svc\r\n");
        if let Some(lane) = lane {
            raw += &format!("x-lane: {lane}\r\n");
        }
        if i + 1 == requests.len() {
            raw += "Connection: close\r\n";
        }
        raw += "\r\n";
    }
    let mut client = raw_connect(s.proxy_addr).await;
    write_raw(&mut client, raw.as_bytes(), "send the pipelined requests").await;
    let mut buffer = Vec::new();
    for (_, path, expected) in requests {
        let response = read_response(&mut client, &mut buffer, path).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, expected),
            "{path}"
        );
    }
    expect_closed(&mut client, buffer, "after the last answer").await;
    assert_eq!(s.gray.paths(), ["/one", "/four"]);
    assert_eq!(s.base.paths(), ["/two", "/three"]);
    let mut decided: Vec<(Option<String>, String, bool, u64)> = s
        .flows
        .rows()
        .into_iter()
        .map(|r| (r.lane, r.reason, r.fallback, r.requests))
        .collect();
    decided.sort();
    assert_eq!(
        decided,
        [
            (None, "default".to_string(), false, 1),
            (Some("blue".to_string()), "header".to_string(), true, 1),
            (Some("gray".to_string()), "header".to_string(), false, 2),
        ]
    );
}

/// A client silent for longer than the sniff window
/// (`ProxyConfig::detect_timeout`) is taken for a server-speaks-first
/// protocol, and its connection is spliced byte for byte: to the original
/// destination when that is an endpoint, else (a service address, not
/// routable from the node) to a ready baseline endpoint. An HTTP request
/// sent after that still gets its answer, but is not routed: the lane does
/// not choose the endpoint, and no flow records a decision.
#[tokio::test]
async fn a_request_later_than_the_sniff_window_is_spliced_not_routed() {
    let s = setup("caller", true).await;
    let cases = [
        // Routed, x-lane: gray would go to gray.
        (
            "service address",
            Ipv4Addr::new(127, 0, 0, 9),
            "x-lane: gray\r\n",
            &s.base,
            "base lane=gray len=0 sum=0",
        ),
        // Routed, a baseline caller's request would go to base.
        (
            "gray endpoint address",
            Ipv4Addr::new(127, 0, 0, 3),
            "",
            &s.gray,
            "gray lane=- len=0 sum=0",
        ),
    ];
    for (case, ip, lane, upstream, expected) in cases {
        s.origins.set_dest(SocketAddrV4::new(ip, s.port));
        let before = upstream.connections();
        let mut client = raw_connect(s.proxy_addr).await;
        // The splice connecting to the upstream is the sign that the window
        // has passed with nothing sent.
        wait_until(&format!("{case}: the silent client is spliced"), || {
            upstream.connections() > before
        })
        .await;
        let raw = format!("GET /late HTTP/1.1\r\nHost: svc\r\n{lane}Connection: close\r\n\r\n");
        write_raw(&mut client, raw.as_bytes(), case).await;
        let mut buffer = Vec::new();
        let response = read_response(&mut client, &mut buffer, case).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, expected),
            "{case}"
        );
        expect_closed(&mut client, buffer, case).await;
    }
    assert_eq!(s.flows.rows(), vec![], "spliced requests are not decided");
}

/// More header lines than hyper's limit (100, counting Host) is a 431 and a
/// closed connection; a request at the limit is served. Other connections,
/// open or new, are not affected.
#[tokio::test]
async fn too_many_headers_is_a_431_and_other_connections_go_on() {
    let s = setup("caller", true).await;
    let mut open = connect(s.proxy_addr).await;
    let ok = (200, "base lane=- len=0 sum=0".to_string());
    assert_eq!(send(&mut open, request(None, Bytes::new())).await, ok);
    for (headers, status) in [(100, 200), (101, 431), (400, 431)] {
        let case = format!("{headers} header lines");
        let mut client = raw_connect(s.proxy_addr).await;
        let mut raw = format!("GET /many-{headers} HTTP/1.1\r\nHost: svc\r\n");
        for i in 1..headers - 1 {
            raw += &format!("x-filler-{i}: v\r\n");
        }
        raw += "Connection: close\r\n\r\n";
        write_raw(&mut client, raw.as_bytes(), &case).await;
        let mut buffer = Vec::new();
        let response = read_response(&mut client, &mut buffer, &case).await;
        assert_eq!(response.status, status, "{case}: {response:?}");
        expect_closed(&mut client, buffer, &case).await;
        // The open connection and a new one are served as before.
        assert_eq!(
            send(&mut open, request(None, Bytes::new())).await,
            ok,
            "{case}"
        );
        let mut new = connect(s.proxy_addr).await;
        assert_eq!(
            send(&mut new, request(None, Bytes::new())).await,
            ok,
            "{case}"
        );
    }
    // Only the request at the limit went through.
    let many: Vec<String> = s
        .base
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("/many"))
        .collect();
    assert_eq!(many, ["/many-100"]);
}
