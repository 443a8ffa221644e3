//! Per-stream kernel tags on one multiplexed HTTP/2 connection, through the
//! in-process proxy with a fake kernel (`support::FakeTags`): the kernel's
//! tag of exactly a stream decides that stream's inherited lane, whatever
//! the other streams open beside it carry; without one, the connection's
//! newest tag is not taken as the stream's (only a forwarded request id
//! can then decide, else untrusted and baseline).
//!
//! The client is the `h2` crate's own: it says which stream id each request
//! got, as the kernel would have seen it in the HEADERS frame.
mod support;

use std::collections::HashMap;

use ::h2::client::{ResponseFuture, SendRequest};
use bytes::Bytes;
use http::Request;
use support::{h2::*, *};
use tagger::{
    propagation::{Correlation, InboundBytes},
    state::Settings,
};

/// The inbound requests the caller pod's app is serving: A came in gray,
/// B came in blue (a lane with no endpoint: baseline serves it, the header
/// stays on), each with its own request id.
const A: (u64, u64) = (77, 1);
const B: (u64, u64) = (78, 1);

/// HTTP/2 endpoints (the service says so: an HTTP/1.1 client's requests
/// reach them too) and the proxy, the caller's app serving A and B.
async fn proxy() -> Proxied {
    let (base, gray) = endpoint_listeners(true).await;
    let port = base.local_addr().unwrap().port();
    h2_upstream("base", base);
    h2_upstream("gray", gray.unwrap());
    let p = start_proxy(&two_services("    protocol: http2\n", ""), port, "caller").await;
    for ((pid_tgid, seq), lane, id) in [(A, "gray", "r-a"), (B, "blue", "r-b")] {
        let bytes = format!(
            "GET / HTTP/1.1\r\nhost: caller\r\nx-lane: {lane}\r\nx-request-id: {id}\r\n\r\n"
        );
        let settings: Settings = p.state.load().settings.clone();
        p.contexts.on_inbound(
            InboundBytes {
                pid_tgid,
                seq,
                flags: tagger_common::EVENT_FIRST,
                data: bytes.as_bytes(),
            },
            &settings,
        );
    }
    p
}

async fn h2_client(p: &Proxied) -> SendRequest<Bytes> {
    let stream = raw_connect(p.proxy_addr).await;
    let (client, connection) = within("HTTP/2 handshake", ::h2::client::handshake(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Opens a stream (its body left open, so that the streams opened after it
/// are decided while it is in flight); its id, its answer to come, and its
/// body to end.
async fn open(
    client: &mut SendRequest<Bytes>,
    path: &str,
    request_id: Option<&str>,
) -> (u32, ResponseFuture, ::h2::SendStream<Bytes>) {
    let mut builder = Request::post(format!("http://svc{path}"));
    if let Some(id) = request_id {
        builder = builder.header("x-request-id", id);
    }
    within("room for a stream", client.clone().ready())
        .await
        .unwrap();
    let (response, body) = client
        .send_request(builder.body(()).unwrap(), false)
        .unwrap();
    (u32::from(response.stream_id()), response, body)
}

/// Ends each stream's body, then reads every answer whole.
async fn answers(
    streams: Vec<(u32, ResponseFuture, ::h2::SendStream<Bytes>)>,
) -> HashMap<u32, String> {
    let mut pending = Vec::new();
    for (id, response, mut body) in streams {
        body.send_data(Bytes::new(), true).unwrap();
        pending.push((id, response));
    }
    let mut answers = HashMap::new();
    for (id, response) in pending {
        let response = within("answer head", response).await.unwrap();
        assert_eq!(response.status(), 200, "stream {id}");
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(data) = within("answer body", body.data()).await {
            let data = data.unwrap();
            body.flow_control().release_capacity(data.len()).unwrap();
            text.extend_from_slice(&data);
        }
        answers.insert(id, String::from_utf8(text).unwrap());
    }
    answers
}

/// Requests per (lane, reason, correlation) in the flow map.
fn decided(p: &Proxied) -> HashMap<(Option<String>, String, Correlation), u64> {
    let mut decided = HashMap::new();
    for row in p.flows.rows() {
        *decided
            .entry((row.lane, row.reason, row.correlation))
            .or_default() += row.requests;
    }
    decided
}

/// Four streams open at once on one connection, two caused by the gray
/// inbound request and two by the blue one, interleaved: each inherits the
/// lane of the request its own tag names. The connection's newest tag
/// (B's) decides none of them.
#[tokio::test]
async fn each_stream_inherits_the_lane_its_own_tag_names() {
    let p = proxy().await;
    {
        let mut tags = p.origins.tags.lock().unwrap();
        tags.connection = Some(tag_now(B));
        // A client numbers its streams 1, 3, 5, ... in the order it opens
        // them (checked below).
        tags.streams =
            HashMap::from([(1, A), (3, B), (5, B), (7, A)].map(|(id, cause)| (id, tag_now(cause))));
    }
    let mut client = h2_client(&p).await;
    let mut streams = Vec::new();
    for path in ["/1", "/3", "/5", "/7"] {
        streams.push(open(&mut client, path, None).await);
    }
    let ids: Vec<u32> = streams.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, [1, 3, 5, 7]);
    let answers = answers(streams).await;
    let expected = HashMap::from([
        (1, "gray lane=gray path=/1".to_string()),
        (3, "base lane=blue path=/3".to_string()),
        (5, "base lane=blue path=/5".to_string()),
        (7, "gray lane=gray path=/7".to_string()),
    ]);
    assert_eq!(answers, expected);
    let mut asked = p.origins.tags.lock().unwrap().asked.clone();
    asked.sort();
    assert_eq!(
        asked,
        [1, 3, 5, 7],
        "the kernel was asked for each stream's own tag"
    );
    let trusted = |lane: &str| {
        (
            Some(lane.to_string()),
            "inherited-thread".to_string(),
            Correlation::Trusted,
        )
    };
    assert_eq!(
        decided(&p),
        HashMap::from([(trusted("gray"), 2), (trusted("blue"), 2)])
    );
    assert_eq!(p.origins.taken(), 1, "one connection");
}

/// No stream tag (a runtime the kernel cannot follow to the frame): the
/// connection's newest tag may be any open stream's, so it decides
/// nothing. A stream that forwards its inbound request's id inherits by
/// it; the others are untrusted and go to baseline, every one of them (not
/// only the first after a write, as on an HTTP/1.1 connection).
#[tokio::test]
async fn without_a_stream_tag_the_connection_tag_is_not_the_streams() {
    let p = proxy().await;
    p.origins.tags.lock().unwrap().connection = Some(tag_now(A));
    let mut client = h2_client(&p).await;
    let streams = vec![
        open(&mut client, "/plain-1", None).await,
        open(&mut client, "/by-id", Some("r-b")).await,
        open(&mut client, "/plain-2", None).await,
    ];
    let answers = answers(streams).await;
    let expected = HashMap::from([
        (1, "base lane=- path=/plain-1".to_string()),
        (3, "base lane=blue path=/by-id".to_string()),
        (5, "base lane=- path=/plain-2".to_string()),
    ]);
    assert_eq!(answers, expected);
    assert_eq!(
        decided(&p),
        HashMap::from([
            ((None, "default".to_string(), Correlation::Untrusted), 2),
            (
                (
                    Some("blue".to_string()),
                    "inherited-id".to_string(),
                    Correlation::Trusted
                ),
                1
            ),
        ])
    );
}

/// An HTTP/1.1 connection is unchanged: the connection's tag serves the
/// one request written since it, not the next; no stream is asked about.
#[tokio::test]
async fn http1_requests_still_take_the_connection_tag_once() {
    let p = proxy().await;
    p.origins.tags.lock().unwrap().connection = Some(tag_now(A));
    let mut conn = connect(p.proxy_addr).await;
    let (status, first) = send(&mut conn, request(None, Bytes::new())).await;
    assert_eq!((status, first.as_str()), (200, "gray lane=gray path=/x"));
    let (status, second) = send(&mut conn, request(None, Bytes::new())).await;
    assert_eq!((status, second.as_str()), (200, "base lane=- path=/x"));
    assert!(p.origins.tags.lock().unwrap().asked.is_empty());
}
