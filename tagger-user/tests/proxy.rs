//! In-process proxy tests on ephemeral loopback ports: the real proxy and
//! hyper upstreams, with the kernel's flow map replaced by a fixed origin.
//!
//! Every connect, send and read is bounded by [`within`]: a proxy that stops
//! answering fails the test naming the step instead of hanging it. Nothing
//! sleeps to decide a result; waits poll for an event with a deadline.
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::atomic::Ordering,
};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::{Request, body::Frame};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

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
/// (`ProxyConfig::detect_timeout`) may wait for a server greeting, so the
/// proxy connects upstream too; but when the client then speaks first with
/// an HTTP request (a pool's connection dialled ahead of need, as Go's
/// Transport does), the request is routed by lane like any other, never
/// spliced to wherever the connection happened to go.
#[tokio::test]
async fn a_request_later_than_the_sniff_window_is_still_routed() {
    let s = setup("caller", true).await;
    let cases = [
        (
            "service address, x-lane: gray",
            Ipv4Addr::new(127, 0, 0, 9),
            "x-lane: gray\r\n",
            &s.base,
            "gray lane=gray len=0 sum=0",
        ),
        // Meant for the gray pod's address, from a baseline caller.
        (
            "gray endpoint address, no lane",
            Ipv4Addr::new(127, 0, 0, 3),
            "",
            &s.gray,
            "base lane=- len=0 sum=0",
        ),
    ];
    for (case, ip, lane, speculative, expected) in cases {
        s.origins.set_dest(SocketAddrV4::new(ip, s.port));
        let before = speculative.connections();
        let mut client = raw_connect(s.proxy_addr).await;
        // The speculative upstream connection is the sign that the window
        // has passed with nothing sent.
        wait_until(&format!("{case}: the window passes"), || {
            speculative.connections() > before
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
    assert_eq!(s.flows.rows().len(), 2, "both requests were decided");
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
