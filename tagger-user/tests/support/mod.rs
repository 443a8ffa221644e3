//! What the in-process proxy tests share: the proxy on an ephemeral
//! loopback port, hyper upstreams that log what they saw, a fixed origin in
//! place of the kernel's flow map, and clients whose every step is bounded
//! by [`within`].
// Each test binary uses a part of this.
#![allow(dead_code)]
pub mod h2;

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
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use tagger::{
    config::ClusterFile,
    flows::FlowTable,
    propagation::ContextStore,
    proxy::{FlowLookup, Origin, Proxy, ProxyConfig},
    source::file::{PlacedPod, PlacedService, Placement, inventory},
    state::{Snapshot, StateHandle},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long any one step (connect, send, read) may take. Generous: a step
/// that takes this long is stuck, not slow.
pub const STEP: Duration = Duration::from_secs(5);

/// Awaits `future` for at most [`STEP`], failing the test with `step` named.
pub async fn within<T>(step: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP:?}: {step}"),
    }
}

/// Polls `done` until it holds, failing the test with `what` after [`STEP`].
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Every connection comes from `caller_cgroup` and meant to go to `dest`
/// (changeable between connections).
pub struct FixedOrigin {
    pub dest: Mutex<SocketAddrV4>,
    pub caller_cgroup: std::sync::atomic::AtomicU64,
    /// Connections the proxy accepted (each asks for its origin once).
    pub taken: AtomicUsize,
    /// What the kernel would have tagged the app's writes with.
    pub tags: Mutex<FakeTags>,
}

/// The kernel's tags as a test sets them (see [`tag_now`]).
#[derive(Default)]
pub struct FakeTags {
    /// The newest request written on the connection (any connection).
    pub connection: Option<tagger_common::RequestTag>,
    /// Per HTTP/2 stream id: the write that opened that stream.
    pub streams: std::collections::HashMap<u32, tagger_common::RequestTag>,
    /// The stream ids the proxy asked about, in order.
    pub asked: Vec<u32>,
}

/// The tag of a write made now (CLOCK_MONOTONIC, as the kernel's
/// `bpf_ktime_get_ns`) by the thread `pid_tgid` while it served its inbound
/// request `seq`.
pub fn tag_now((pid_tgid, seq): (u64, u64)) -> tagger_common::RequestTag {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    tagger_common::RequestTag {
        pid_tgid,
        seq,
        written_ns: now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64,
        ..Default::default()
    }
}

impl FixedOrigin {
    pub fn new(dest: SocketAddrV4, caller_cgroup: u64) -> Self {
        Self {
            dest: Mutex::new(dest),
            caller_cgroup: caller_cgroup.into(),
            taken: AtomicUsize::new(0),
            tags: Mutex::default(),
        }
    }

    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// Later connections come from the pod with this cgroup.
    pub fn set_caller(&self, cgroup_id: u64) {
        self.caller_cgroup.store(cgroup_id, Ordering::SeqCst);
    }

    pub fn set_dest(&self, dest: SocketAddrV4) {
        *self.dest.lock().unwrap() = dest;
    }
}

impl FlowLookup for FixedOrigin {
    fn take_origin(&self, _peer: SocketAddrV4) -> Option<Origin> {
        self.taken.fetch_add(1, Ordering::SeqCst);
        Some(Origin {
            original_destination: *self.dest.lock().unwrap(),
            cgroup_id: self.caller_cgroup.load(Ordering::SeqCst),
            cookie: 0,
        })
    }

    fn request_tag(&self, _cookie: u64) -> Option<tagger_common::RequestTag> {
        self.tags.lock().unwrap().connection
    }

    fn stream_tag(&self, _cookie: u64, stream_id: u32) -> Option<tagger_common::RequestTag> {
        let mut tags = self.tags.lock().unwrap();
        tags.asked.push(stream_id);
        tags.streams.get(&stream_id).copied()
    }
}

/// One request as an upstream received it, body read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub content_length: Option<String>,
    pub transfer_encoding: Option<String>,
    pub host: Option<String>,
    pub body_len: usize,
}

/// What an upstream saw: connections accepted and complete requests.
#[derive(Default)]
pub struct UpstreamLog {
    pub connections: AtomicUsize,
    pub requests: Mutex<Vec<Seen>>,
}

impl UpstreamLog {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.path).collect()
    }
}

/// An upstream that answers "<name> lane=<x-lane> len=<body bytes> sum=<byte sum>".
pub fn upstream(name: &'static str, listener: TcpListener) -> Arc<UpstreamLog> {
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
                            host: header("host"),
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
pub async fn endpoint_listeners(gray: bool) -> (TcpListener, Option<TcpListener>) {
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

/// The services every in-process test uses: `svc` (a baseline and a gray
/// endpoint on port 1, rewritten to the test's port) and `caller` (a
/// baseline and a gray caller pod), lane gray sticky. `svc_lines` go under
/// `svc` (e.g. `    protocol: grpc\n`), `tail` after the services (a
/// `rules:` block, or nothing).
pub fn two_services(svc_lines: &str, tail: &str) -> String {
    format!(
        r#"
lanes:
  - {{name: gray, sticky: true}}
services:
  - name: svc
    port: 1
{svc_lines}    pods:
      - {{name: base, command: [x]}}
      - {{name: gray, lane: gray, command: [x]}}
  - name: caller
    pods:
      - {{name: caller, command: [x]}}
      - {{name: caller-gray, lane: gray, command: [x]}}
{tail}"#
    )
}

/// The usual services, with a rule on a body field.
pub fn config() -> String {
    two_services(
        "",
        r#"body_match_limit: 1024
rules:
  - name: vip-users
    service: svc
    lane: gray
    conditions:
      - {source: body, name: user.vip, op: '=', value: 'true'}
"#,
    )
}

/// The model of a cluster file placed as `placement`.
pub fn file_snapshot(file: &ClusterFile, placement: &Placement) -> Snapshot {
    Snapshot::build(&inventory(file, placement, 0).unwrap(), &file.rules, None).unwrap()
}

pub struct Setup {
    pub proxy_addr: SocketAddr,
    pub state: StateHandle,
    pub flows: Arc<FlowTable>,
    pub origins: Arc<FixedOrigin>,
    /// The port every upstream listens on.
    pub port: u16,
    pub base: Arc<UpstreamLog>,
    /// Empty when the gray upstream is not started.
    pub gray: Arc<UpstreamLog>,
    /// The proxy's connection counts.
    pub gate: Arc<tagger::proxy::limits::ConnectionGate>,
    /// The proxy itself (to drain it).
    pub proxy: Arc<Proxy>,
}

/// Upstreams "base" on 127.0.0.2 and "gray" on 127.0.0.3 (same port), the
/// service address 127.0.0.9, and a proxy whose callers are `caller_pod`.
pub async fn setup(caller_pod: &str, gray_up: bool) -> Setup {
    setup_with(caller_pod, gray_up, "").await
}

/// [`setup`] with more top-level cluster-file settings (YAML lines).
pub async fn setup_with(caller_pod: &str, gray_up: bool, settings: &str) -> Setup {
    let (base, gray) = endpoint_listeners(gray_up).await;
    let port = base.local_addr().unwrap().port();
    let base = upstream("base", base);
    let gray = gray.map_or_else(Arc::default, |gray| upstream("gray", gray));
    let p = start_proxy(&format!("{settings}\n{}", config()), port, caller_pod).await;
    Setup {
        proxy_addr: p.proxy_addr,
        state: p.state,
        flows: p.flows,
        origins: p.origins,
        port,
        base,
        gray,
        gate: p.gate,
        proxy: p.proxy,
    }
}

/// A running proxy and what a test reads or changes of it.
pub struct Proxied {
    pub proxy_addr: SocketAddr,
    pub state: StateHandle,
    pub flows: Arc<FlowTable>,
    pub origins: Arc<FixedOrigin>,
    pub gate: Arc<tagger::proxy::limits::ConnectionGate>,
    pub proxy: Arc<Proxy>,
    /// Inbound contexts the proxy inherits from (a test feeds it events).
    pub contexts: Arc<ContextStore>,
}

/// The proxy for cluster file `text` (its `port: 1` made `port`), with the
/// pods of [`config`] placed on 127.0.0.2-5, the first service's address
/// 127.0.0.9 (where every connection meant to go), every endpoint ready,
/// and its callers being `caller_pod`.
pub async fn start_proxy(text: &str, port: u16, caller_pod: &str) -> Proxied {
    let text = text.replace("port: 1\n", &format!("port: {port}\n"));
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
    let snapshot = file_snapshot(&file, &placement);
    for endpoint in &snapshot.services[0].endpoints {
        endpoint.ready.store(true, Ordering::Relaxed);
    }
    let caller_cgroup = snapshot
        .pods
        .iter()
        .find(|p| p.name == caller_pod)
        .unwrap()
        .cgroup_ids[0];
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(snapshot));
    let flows = Arc::new(FlowTable::default());
    let origins = Arc::new(FixedOrigin::new(
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), port),
        caller_cgroup,
    ));
    let contexts = Arc::new(ContextStore::default());
    let proxy = Proxy::new(
        state.clone(),
        origins.clone(),
        flows.clone(),
        contexts.clone(),
        ProxyConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let gate = proxy.gate();
    tokio::spawn(proxy.clone().serve(listener));
    Proxied {
        proxy_addr,
        state,
        flows,
        origins,
        gate,
        proxy,
        contexts,
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
>;

/// One keep-alive connection to the proxy.
pub async fn connect(addr: SocketAddr) -> Sender {
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

pub async fn raw_connect(addr: SocketAddr) -> TcpStream {
    within(&format!("connect to {addr}"), TcpStream::connect(addr))
        .await
        .unwrap()
}

pub fn request(
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

pub async fn send(
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

pub async fn opaque_proxy(dest: SocketAddrV4) -> SocketAddr {
    let text = config().replace("port: 1", &format!("port: {}", dest.port()));
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
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(file_snapshot(&file, &placement)));
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
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads more bytes into `buffer`; the connection must not end here.
pub async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, step: &str) {
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

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (head, then a body framed by Content-Length or
/// chunks). Bytes after it stay in `buffer`: pipelined answers follow.
pub async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    step: &str,
) -> RawResponse {
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
pub async fn expect_closed(stream: &mut TcpStream, mut buffer: Vec<u8>, step: &str) {
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

pub async fn write_raw(stream: &mut TcpStream, bytes: &[u8], step: &str) {
    within(step, stream.write_all(bytes))
        .await
        .unwrap_or_else(|e| panic!("{step}: {e}"));
}
