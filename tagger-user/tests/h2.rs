//! HTTP/2 with prior knowledge (h2c) through the in-process proxy: hyper's
//! h2 client and server on ephemeral loopback ports, the kernel's flow map
//! replaced by a fixed origin (see `support`). Every stream of a
//! multiplexed connection is decided on its own and goes to its lane's
//! endpoint over one pooled HTTP/2 connection per endpoint; trailers, flow
//! control, resets both ways and a graceful stop (GOAWAY) pass through.
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::{h2::*, *};
use tokio::{io::AsyncWriteExt, sync::mpsc, task::JoinSet};

/// Two lanes and no rules: streams go by their lane header; `protocol`
/// is the service's `protocol:` line, if any.
fn h2_config(protocol: &str) -> String {
    two_services(protocol, "")
}

struct H2Setup {
    p: Proxied,
    base: Arc<H2Log>,
    gray: Arc<H2Log>,
}

/// h2c upstreams "base" (127.0.0.2) and "gray" (127.0.0.3) and the proxy.
async fn h2_setup(protocol: &str) -> H2Setup {
    h2_setup_with(protocol, "").await
}

/// [`h2_setup`] with more top-level cluster-file settings (YAML lines).
async fn h2_setup_with(protocol: &str, settings: &str) -> H2Setup {
    let (base, gray) = endpoint_listeners(true).await;
    let port = base.local_addr().unwrap().port();
    let base = h2_upstream("base", base);
    let gray = h2_upstream("gray", gray.unwrap());
    let config = format!("{settings}\n{}", h2_config(protocol));
    let p = start_proxy(&config, port, "caller").await;
    H2Setup { p, base, gray }
}

/// Many concurrent streams of mixed lanes on one client connection (900:
/// more than the 200 a hyper HTTP/2 server takes at once, at both hops, so
/// streams also wait for room): each is answered by its lane's upstream
/// (blue has none: baseline serves it, the header stays on), and each
/// upstream is reached over one HTTP/2 connection all its streams share.
#[tokio::test]
async fn every_stream_of_one_connection_goes_to_its_own_lane() {
    let s = h2_setup("").await;
    let sender = h2_connect(s.p.proxy_addr).await;
    let mut streams = JoinSet::new();
    for i in 0..900 {
        let lane = [Some("gray"), None, Some("blue")][i % 3];
        let mut sender = sender.clone();
        streams.spawn(async move {
            let answer = h2_send(&mut sender, h2_get(&format!("/item/{i}"), lane)).await;
            (i, lane, answer)
        });
    }
    let mut answered = 0;
    while let Some(joined) = within("every stream answered", streams.join_next()).await {
        let (i, lane, (status, body, trailers)) = joined.unwrap();
        let expected = match lane {
            Some("gray") => format!("gray lane=gray path=/item/{i}"),
            Some(other) => format!("base lane={other} path=/item/{i}"),
            None => format!("base lane=- path=/item/{i}"),
        };
        assert_eq!(
            (status, body.as_str()),
            (200, expected.as_str()),
            "stream {i}"
        );
        let served_by = trailers.unwrap()["x-served-by"].clone();
        assert_eq!(served_by, expected.split(' ').next().unwrap(), "stream {i}");
        answered += 1;
    }
    assert_eq!(answered, 900);
    assert_eq!(s.p.origins.taken(), 1);
    assert_eq!((s.base.connections(), s.gray.connections()), (1, 1));
    assert!(
        s.base
            .requests()
            .iter()
            .chain(s.gray.requests().iter())
            .all(|r| r.version == Version::HTTP_2)
    );
    let mut decided: HashMap<(Option<String>, String, bool), u64> = HashMap::new();
    for row in s.p.flows.rows() {
        *decided
            .entry((row.lane, row.endpoint, row.fallback))
            .or_default() += row.requests;
    }
    assert_eq!(
        decided,
        HashMap::from([
            ((Some("gray".into()), "gray".into(), false), 300),
            ((None, "base".into(), false), 300),
            ((Some("blue".into()), "base".into(), true), 300),
        ])
    );
    // Plain HTTP/2 is not gRPC: no method is counted.
    assert!(s.p.flows.rows().iter().all(|r| r.rpc.is_none()));
}

/// `te: trailers` reaches the upstream (gRPC servers require it); request
/// trailers go up and response trailers come back.
#[tokio::test]
async fn te_trailers_and_trailers_both_ways_pass_through() {
    let s = h2_setup("").await;
    let mut sender = h2_connect(s.p.proxy_addr).await;
    let mut request_trailers = HeaderMap::new();
    request_trailers.insert("x-trailer", HeaderValue::from_static("from-client"));
    let frames = vec![
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
        Ok(Frame::trailers(request_trailers)),
    ];
    let request = Request::post("http://svc/echo")
        .header("te", "trailers")
        .header("x-lane", "gray")
        .body(StreamBody::new(tokio_stream::iter(frames)).boxed())
        .unwrap();
    let (status, body, trailers) = h2_send(&mut sender, request).await;
    assert_eq!((status, body.as_str()), (200, "hello world"));
    let trailers = trailers.expect("response trailers");
    assert_eq!(trailers["x-served-by"], "gray");
    assert_eq!(trailers["x-bytes"], "11");
    assert_eq!(trailers["x-request-trailer"], "from-client");
    let seen = s.gray.requests();
    assert_eq!(seen[0].te.as_deref(), Some("trailers"));
    assert_eq!(seen[0].lane.as_deref(), Some("gray"));
}

/// 32 MiB up and the same back on one stream, the client reading while it
/// sends: far beyond every HTTP/2 flow-control window on the way (hyper's
/// are a few MiB), so it completes only if windows are given back as the
/// bytes move, on both connections, in both directions.
#[tokio::test]
async fn large_bodies_stream_both_ways_under_flow_control() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 512;
    let s = h2_setup("").await;
    let mut sender = h2_connect(s.p.proxy_addr).await;
    let (tx, rx) = mpsc::channel(8);
    let request = Request::post("http://svc/echo")
        .body(ChannelBody(rx).boxed())
        .unwrap();
    within("ready", sender.ready()).await.unwrap();
    let response = within("response head", sender.send_request(request));
    let feed = tokio::spawn(async move {
        for i in 0..CHUNKS {
            let chunk = Bytes::from(vec![(i % 251) as u8; CHUNK]);
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                panic!("request body dropped at chunk {i}");
            }
        }
    });
    let mut body = response.await.unwrap().into_body();
    let (mut received, mut sum) = (0usize, 0u64);
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(STEP, body.frame())
        .await
        .expect("the echo stalled")
    {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(data) => {
                received += data.len();
                sum += data.iter().map(|b| u64::from(*b)).sum::<u64>();
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    feed.await.unwrap();
    let expected_sum: u64 = (0..CHUNKS).map(|i| (i % 251) as u64 * CHUNK as u64).sum();
    assert_eq!((received, sum), (CHUNK * CHUNKS, expected_sum));
    assert_eq!(
        trailers.unwrap()["x-bytes"],
        (CHUNK * CHUNKS).to_string().as_str()
    );
}

/// A client that gives up on a stream (drops it: RST_STREAM CANCEL) has
/// the upstream's stream reset too, and the connection goes on serving.
#[tokio::test]
async fn a_stream_the_client_resets_is_reset_upstream() {
    let s = h2_setup("").await;
    let mut sender = h2_connect(s.p.proxy_addr).await;
    within("ready", sender.ready()).await.unwrap();
    let response = within("slow head", sender.send_request(h2_get("/slow", None)))
        .await
        .unwrap();
    let mut body = response.into_body();
    for _ in 0..2 {
        let frame = within("a tick", body.frame()).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "tick");
    }
    drop(body);
    wait_until("the upstream sees its stream reset", || {
        s.base.cancelled() == 1
    })
    .await;
    let (status, answer, _) = h2_send(&mut sender, h2_get("/after", None)).await;
    assert_eq!((status, answer.as_str()), (200, "base lane=- path=/after"));
}

/// An upstream that resets its stream has the client's stream reset: the
/// client sees the answer fail (its body, or the whole of it when the reset
/// overtakes the head), not a clean end it would take for the whole answer.
/// Other streams are not affected.
#[tokio::test]
async fn a_stream_the_upstream_resets_is_reset_to_the_client() {
    let s = h2_setup("").await;
    let mut sender = h2_connect(s.p.proxy_addr).await;
    within("ready", sender.ready()).await.unwrap();
    let answer = within("reset answer", async {
        let response = sender.send_request(h2_get("/reset", None)).await?;
        assert_eq!(response.status(), 200);
        response.into_body().collect().await
    })
    .await;
    let error = answer.expect_err("a reset stream ended cleanly");
    let text = format!("{error:?}");
    assert!(text.contains("Reset("), "{text}");
    let (status, answer, _) = h2_send(&mut sender, h2_get("/after", Some("gray"))).await;
    assert_eq!(
        (status, answer.as_str()),
        (200, "gray lane=gray path=/after")
    );
}

/// Stopping the proxy (the daemon's SIGTERM) sends GOAWAY: the stream in
/// flight is served to its end, trailers and all, new streams are refused,
/// no new connection is accepted, and the stop waits for the stream.
#[tokio::test]
async fn a_graceful_stop_sends_goaway_and_finishes_accepted_streams() {
    let s = h2_setup("").await;
    let mut sender = h2_connect(s.p.proxy_addr).await;
    within("ready", sender.ready()).await.unwrap();
    let response = within("slow head", sender.send_request(h2_get("/slow?n=25", None)))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = within("first tick", body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "tick");

    let proxy = s.p.proxy.clone();
    let drain = tokio::spawn(async move { proxy.drain(Duration::from_secs(10)).await });
    // New streams fail once the GOAWAY is in; until then they may pass.
    within("a new stream is refused", async {
        loop {
            let refused = match sender.ready().await {
                Err(_) => true,
                Ok(()) => sender.send_request(h2_get("/new", None)).await.is_err(),
            };
            if refused {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let (mut ticks, mut trailers) = (1, None);
    while let Some(frame) = within("the slow stream goes on", body.frame()).await {
        match frame.unwrap().into_data() {
            Ok(_) => ticks += 1,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    assert_eq!(ticks, 25);
    assert_eq!(trailers.unwrap()["x-served-by"], "base");
    assert!(
        within("the stop completes", drain).await.unwrap(),
        "the stop gave up waiting"
    );
    // No listener any more.
    assert!(
        tokio::net::TcpStream::connect(s.p.proxy_addr)
            .await
            .is_err(),
        "a connection was accepted after the stop"
    );
    assert_eq!(s.p.gate.stats().connections_open, 0);
}

/// `protocol: http2` on a service: an HTTP/1.1 client's requests go to its
/// endpoints as HTTP/2.
#[tokio::test]
async fn an_http1_client_reaches_an_http2_service() {
    let s = h2_setup("    protocol: http2\n").await;
    let mut conn = connect(s.p.proxy_addr).await;
    for lane in [Some("gray"), None] {
        let (status, body) = send(&mut conn, request(lane, Bytes::new())).await;
        let expected = match lane {
            Some(_) => "gray lane=gray path=/x",
            None => "base lane=- path=/x",
        };
        assert_eq!((status, body.as_str()), (200, expected));
    }
    for seen in [&s.gray.requests()[0], &s.base.requests()[0]] {
        assert_eq!(seen.version, Version::HTTP_2);
        // Its host is `:authority`; no `Host` that could differ from it.
        assert_eq!(seen.host, None);
    }
}

/// `protocol: http1` on a service: an HTTP/2 client's streams go to its
/// endpoints as HTTP/1.1 requests, `:authority` as `Host`.
#[tokio::test]
async fn an_http2_client_reaches_an_http1_service() {
    let (base, gray) = endpoint_listeners(true).await;
    let port = base.local_addr().unwrap().port();
    let base = upstream("base", base);
    let _gray = upstream("gray", gray.unwrap());
    let config = h2_config("    protocol: http1\n");
    let p = start_proxy(&config, port, "caller").await;
    let mut sender = h2_connect(p.proxy_addr).await;
    let (status, body, _) = h2_send(&mut sender, h2_get("/plain", Some("gray"))).await;
    assert_eq!((status, body.as_str()), (200, "gray lane=gray len=0 sum=0"));
    let request = Request::post("http://svc/up")
        .body(
            http_body_util::Full::new(Bytes::from_static(b"abc"))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let (status, body, _) = h2_send(&mut sender, request).await;
    assert_eq!((status, body.as_str()), (200, "base lane=- len=3 sum=294"));
    assert_eq!(base.paths(), ["/up"]);
    // `:authority` (http://svc/...) became the Host header.
    assert_eq!(base.requests()[0].host.as_deref(), Some("svc"));
}

/// Without a gRPC content type, tagger's own failure on HTTP/2 is the
/// HTTP answer HTTP/1.1 clients get: a 503 that says why.
#[tokio::test]
async fn no_endpoint_for_plain_http2_is_a_503() {
    let s = h2_setup("").await;
    for endpoint in &s.p.state.load().services[0].endpoints {
        endpoint.ready.store(false, Ordering::Relaxed);
    }
    let mut sender = h2_connect(s.p.proxy_addr).await;
    let (status, body, _) = h2_send(&mut sender, h2_get("/x", None)).await;
    assert_eq!(status, 503);
    assert!(body.contains("service svc has no ready endpoint"), "{body}");
}

/// An HTTP/2 peer that stops answering (gone without a FIN) is found by a
/// keep-alive ping after the header read timeout and its connection closed;
/// a live client idle for many such periods keeps its connection.
#[tokio::test]
async fn a_silent_http2_peer_is_closed_and_a_live_idle_one_kept() {
    let s = h2_setup_with("", "limits: {header_read_timeout_ms: 100}").await;
    let mut live = h2_connect(s.p.proxy_addr).await;
    let (status, _, _) = h2_send(&mut live, h2_get("/before", None)).await;
    assert_eq!(status, 200);
    // The preface and an empty SETTINGS frame, then nothing, not even an
    // answer to the proxy's SETTINGS or PING.
    let mut silent = raw_connect(s.p.proxy_addr).await;
    let mut hello = tagger::proxy::H2_PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    within("send the preface", silent.write_all(&hello))
        .await
        .unwrap();
    wait_until("the silent peer is opened", || {
        s.p.gate.stats().connections_open == 2
    })
    .await;
    wait_until("the silent peer is closed", || {
        s.p.gate.stats().connections_open == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body, _) = h2_send(&mut live, h2_get("/after", None)).await;
    assert_eq!((status, body.as_str()), (200, "base lane=- path=/after"));
    assert_eq!(
        s.p.origins.taken(),
        2,
        "the live client kept its connection"
    );
}

/// An endpoint that closes its HTTP/2 connection (GOAWAY, as a server being
/// stopped or rolled does) is reached again over a new one: no stream
/// after it fails.
#[tokio::test]
async fn an_upstream_goaway_is_followed_by_a_new_connection() {
    let s = h2_setup("").await;
    let mut sender = h2_connect(s.p.proxy_addr).await;
    let (status, _, _) = h2_send(&mut sender, h2_get("/goaway", None)).await;
    assert_eq!(status, 200);
    for i in 0..50 {
        let path = format!("/after/{i}");
        let (status, body, _) = h2_send(&mut sender, h2_get(&path, None)).await;
        assert_eq!(
            (status, body.as_str()),
            (200, format!("base lane=- path={path}").as_str())
        );
    }
    assert_eq!(s.base.connections(), 2);
}

/// Bytes that are not HTTP/2 after the preface end that connection (a
/// GOAWAY, then close) and no other: an open connection and a new one are
/// served as before.
#[tokio::test]
async fn a_broken_http2_connection_ends_alone() {
    let s = h2_setup("").await;
    let mut open = h2_connect(s.p.proxy_addr).await;
    let mut broken = raw_connect(s.p.proxy_addr).await;
    let mut bytes = tagger::proxy::H2_PREFACE.to_vec();
    // A frame header claiming a 16 MiB DATA frame on stream 0.
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(b"not a frame at all");
    within("send garbage", broken.write_all(&bytes))
        .await
        .unwrap();
    let mut sink = Vec::new();
    // Closed (a reset counts too) well within the step.
    let _ = within("the broken connection closes", async {
        tokio::io::AsyncReadExt::read_to_end(&mut broken, &mut sink).await
    })
    .await;
    assert!(
        frame_types(&sink).contains(&GOAWAY),
        "no GOAWAY before the close: {sink:?}"
    );
    for sender in [&mut open, &mut h2_connect(s.p.proxy_addr).await] {
        let (status, body, _) = h2_send(sender, h2_get("/fine", None)).await;
        assert_eq!((status, body.as_str()), (200, "base lane=- path=/fine"));
    }
    assert!(s.base.requests().iter().all(|r| r.path == "/fine"));
}

const GOAWAY: u8 = 0x7;

/// The types of the whole HTTP/2 frames in `bytes` (server to client: no
/// preface).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}
