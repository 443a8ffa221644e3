//! In-process proxy tests on ephemeral loopback ports: the real proxy and
//! hyper upstreams, with the kernel's flow map replaced by a fixed origin.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::{Arc, atomic::Ordering},
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

/// Every connection comes from `caller_cgroup` and meant to go to `dest`.
struct FixedOrigin {
    dest: SocketAddrV4,
    caller_cgroup: u64,
}

impl FlowLookup for FixedOrigin {
    fn take_origin(&self, _peer: SocketAddrV4) -> Option<Origin> {
        Some(Origin {
            original_destination: self.dest,
            cgroup_id: self.caller_cgroup,
            cookie: 0,
        })
    }
}

/// An upstream that answers "<name> lane=<x-lane> len=<body bytes> sum=<byte sum>".
async fn upstream(name: &'static str, ip: Ipv4Addr, port: u16) -> u16 {
    let listener = TcpListener::bind((ip, port)).await.expect("bind upstream");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service =
                    service_fn(move |request: Request<hyper::body::Incoming>| async move {
                        let lane = request
                            .headers()
                            .get("x-lane")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_else(|| "-".into());
                        let body = request.into_body().collect().await?.to_bytes();
                        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
                        let answer = format!("{name} lane={lane} len={} sum={sum}", body.len());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
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
}

/// Upstreams "base" on 127.0.0.2 and "gray" on 127.0.0.3 (same port), the
/// service address 127.0.0.9, and a proxy whose callers are `caller_pod`.
async fn setup(caller_pod: &str, gray_up: bool) -> Setup {
    let port = upstream("base", Ipv4Addr::new(127, 0, 0, 2), 0).await;
    if gray_up {
        upstream("gray", Ipv4Addr::new(127, 0, 0, 3), port).await;
    }
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
    let origins = Arc::new(FixedOrigin {
        dest: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), port),
        caller_cgroup,
    });
    let proxy = Proxy::new(
        state.clone(),
        origins,
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
    }
}

type Sender = hyper::client::conn::http1::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::io::Error>,
>;

/// One keep-alive connection to the proxy.
async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
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
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
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
    let mut client = TcpStream::connect(addr).await.unwrap();
    let payload = b"\x00\x01 SSH-2.0-not-http\r\n";
    client.write_all(payload).await.unwrap();
    let mut back = vec![0; payload.len()];
    client.read_exact(&mut back).await.unwrap();
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
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut greeting = vec![0; 11];
    client.read_exact(&mut greeting).await.unwrap();
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
    let origins = Arc::new(FixedOrigin {
        dest,
        caller_cgroup: 4,
    });
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
