use http::{HeaderName, HeaderValue};

use super::*;

fn settings() -> Settings {
    Settings {
        lane_header: HeaderName::from_static("x-lane"),
        passthrough_headers: vec![HeaderName::from_static("x-user-id")],
        body_match_limit: 1024,
        limits: Default::default(),
    }
}

fn event(pid_tgid: u64, seq: u64, first: bool, data: &[u8]) -> InboundBytes<'_> {
    InboundBytes {
        pid_tgid,
        seq,
        flags: if first { EVENT_FIRST } else { 0 },
        data,
    }
}

fn tag(pid_tgid: u64, seq: u64, flags: u32) -> RequestTag {
    RequestTag {
        pid_tgid,
        seq,
        written_ns: 1_000,
        flags,
        _pad: 0,
    }
}

#[tokio::test]
async fn a_thread_inherits_the_request_it_is_serving() {
    let store = ContextStore::default();
    store.on_inbound(
        event(
            7,
            1,
            true,
            b"GET / HTTP/1.1\r\nx-lane: gray\r\nx-user-id: 100\r\n\r\n",
        ),
        &settings(),
    );
    let got = store
        .inherit(Some(tag(7, 1, 0)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(got.correlation, Correlation::Trusted);
    assert_eq!(got.source, InheritSource::Thread);
    let context = got.context.unwrap();
    assert_eq!(context.lane.as_deref(), Some("gray"));
    assert_eq!(context.passthrough[0].1, "100");
}

#[tokio::test]
async fn split_reads_are_joined() {
    let store = ContextStore::default();
    store.on_inbound(event(7, 5, true, b"GET / HTTP/1.1\r\nx-la"), &settings());
    store.on_inbound(event(7, 5, false, b"ne: gray\r\n\r\n"), &settings());
    let got = store
        .inherit(Some(tag(7, 5, 0)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(got.context.unwrap().lane.as_deref(), Some("gray"));
}

#[tokio::test]
async fn a_newer_request_on_the_thread_replaces_the_old_one() {
    let store = ContextStore::default();
    store.on_inbound(
        event(7, 1, true, b"GET / HTTP/1.1\r\nx-lane: gray\r\n\r\n"),
        &settings(),
    );
    store.on_inbound(event(7, 2, true, b"GET / HTTP/1.1\r\n\r\n"), &settings());
    // A tag for the newer request gets nothing (baseline), never the old lane.
    let got = store
        .inherit(Some(tag(7, 2, 0)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!((got.context, got.correlation), (None, Correlation::Trusted));
    // A tag for the older one cannot be served any more: untrusted.
    let got = store
        .inherit(Some(tag(7, 1, 0)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(got.correlation, Correlation::Untrusted);
}

#[tokio::test]
async fn concurrent_requests_on_a_thread_are_untrusted_unless_an_id_says_more() {
    let store = ContextStore::default();
    store.on_inbound(
        event(
            7,
            3,
            true,
            b"GET / HTTP/1.1\r\nx-lane: gray\r\nx-request-id: r-1\r\n\r\n",
        ),
        &settings(),
    );
    let got = store
        .inherit(Some(tag(7, 3, TAG_CONCURRENT)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(
        (got.context, got.correlation),
        (None, Correlation::Untrusted)
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_static("r-1"));
    let got = store
        .inherit(Some(tag(7, 3, TAG_CONCURRENT)), &headers, 2_000)
        .await;
    assert_eq!(got.source, InheritSource::Id);
    assert_eq!(got.context.unwrap().lane.as_deref(), Some("gray"));
}

#[tokio::test]
async fn no_tag_no_open_request_or_stale_tag_inherit_nothing() {
    let store = ContextStore::default();
    store.on_inbound(
        event(7, 1, true, b"GET / HTTP/1.1\r\nx-lane: gray\r\n\r\n"),
        &settings(),
    );
    for (tag, now) in [
        (None, 2_000),
        (Some(tag(7, 0, 0)), 2_000),
        (Some(tag(7, 1, 0)), 31_000_000_000),
    ] {
        let got = store.inherit(tag, &HeaderMap::new(), now).await;
        assert_eq!(got, Inherited::default(), "{tag:?} at {now}");
    }
}

#[tokio::test]
async fn a_tag_ahead_of_its_bytes_waits_for_them() {
    let store = Arc::new(ContextStore::default());
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .inherit(Some(tag(9, 4, 0)), &HeaderMap::new(), 2_000)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    store.on_inbound(
        event(9, 4, true, b"GET / HTTP/1.1\r\nx-lane: gray\r\n\r\n"),
        &settings(),
    );
    let got = waiter.await.unwrap();
    assert_eq!(got.context.unwrap().lane.as_deref(), Some("gray"));
}

#[tokio::test]
async fn a_request_right_after_leaf_mode_ends_is_untrusted() {
    let store = ContextStore::default();
    let got = store
        .inherit(
            Some(tag(7, 0, tagger_common::TAG_UNSEEN)),
            &HeaderMap::new(),
            2_000,
        )
        .await;
    assert_eq!(
        (got.context, got.correlation),
        (None, Correlation::Untrusted)
    );
}

/// A Go connection's context is found by its key (`conn_key(tgid, fd)`) the
/// same way a thread's is, and reported as inherited by a goroutine.
#[tokio::test]
async fn a_goroutine_tag_inherits_its_connections_request() {
    let store = ContextStore::default();
    let key = tagger_common::golang::conn_key(42, 9);
    store.on_inbound(
        event(key, 3, true, b"GET / HTTP/1.1\r\nx-lane: gray\r\n\r\n"),
        &settings(),
    );
    let got = store
        .inherit(Some(tag(key, 3, TAG_GOROUTINE)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(
        (got.correlation, got.source),
        (Correlation::Trusted, InheritSource::Goroutine)
    );
    assert_eq!(got.context.unwrap().lane.as_deref(), Some("gray"));
    // A later request on the same connection (new seq) is not the old one.
    store.on_inbound(event(key, 4, true, b"GET / HTTP/1.1\r\n\r\n"), &settings());
    let stale = store
        .inherit(Some(tag(key, 3, TAG_GOROUTINE)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(stale.correlation, Correlation::Untrusted);
    assert!(stale.context.is_none());
}

/// An untrusted tag (cause unknown: unclassified process, unprobed Go,
/// a goroutine outliving its request) inherits nothing, unless a forwarded
/// id names the request.
#[tokio::test]
async fn an_untrusted_tag_inherits_nothing_but_a_forwarded_id() {
    let store = ContextStore::default();
    store.on_inbound(
        event(
            7,
            1,
            true,
            b"GET / HTTP/1.1\r\nx-lane: gray\r\nx-request-id: r1\r\n\r\n",
        ),
        &settings(),
    );
    let none = store
        .inherit(Some(tag(7, 0, TAG_UNTRUSTED)), &HeaderMap::new(), 2_000)
        .await;
    assert_eq!(
        (none.correlation, none.source, none.context),
        (Correlation::Untrusted, InheritSource::None, None)
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-request-id", HeaderValue::from_static("r1"));
    let by_id = store
        .inherit(Some(tag(7, 0, TAG_UNTRUSTED)), &headers, 2_000)
        .await;
    assert_eq!(
        (by_id.correlation, by_id.source),
        (Correlation::Trusted, InheritSource::Id)
    );
}

/// An HTTP/2 stream a probed grpc-go server decoded: an empty first event,
/// one header line per field, the empty line (tagger-ebpf/src/grpc.rs).
fn stream_events(lines: &[&[u8]]) -> Vec<(u32, Vec<u8>)> {
    let mut events = vec![(EVENT_FIRST | EVENT_FIELDS, Vec::new())];
    events.extend(lines.iter().map(|l| (EVENT_FIELDS, l.to_vec())));
    events.push((EVENT_FIELDS, b"\r\n".to_vec()));
    events
}

#[tokio::test]
async fn stream_fields_are_a_header_block() {
    // (header lines, lane, pass-through x-user-id)
    type Case<'a> = (&'a [&'a [u8]], Option<&'a str>, Option<&'a str>);
    let cases: [Case<'_>; 4] = [
        (
            &[b"x-lane: gray\r\n", b"x-user-id: 7\r\n"],
            Some("gray"),
            Some("7"),
        ),
        (&[b"content-type: application/grpc\r\n"], None, None),
        // The alias, and a traceparent's id.
        (
            &[b"x-mse-tag: blue\r\n", b"traceparent: 00-abc-01-01\r\n"],
            Some("blue"),
            None,
        ),
        (&[], None, None),
    ];
    for (i, (lines, lane, user)) in cases.into_iter().enumerate() {
        let store = ContextStore::default();
        let (key, seq) = (
            tagger_common::golang::stream_key(9, 5, 1 + 2 * i as u32),
            40,
        );
        for (flags, data) in stream_events(lines) {
            let event = InboundBytes {
                pid_tgid: key,
                seq,
                flags,
                data: &data,
            };
            store.on_inbound(event, &settings());
        }
        let got = store
            .inherit(Some(tag(key, seq, TAG_GOROUTINE)), &HeaderMap::new(), 2_000)
            .await;
        assert_eq!(got.correlation, Correlation::Trusted, "case {i}");
        assert_eq!(got.source, InheritSource::Goroutine, "case {i}");
        let context = got.context;
        assert_eq!(
            context.as_ref().and_then(|c| c.lane.as_deref()),
            lane,
            "case {i}"
        );
        let user_id = context.as_ref().and_then(|c| c.passthrough.first());
        assert_eq!(user_id.map(|(_, v)| v.to_str().unwrap()), user, "case {i}");
    }
}
