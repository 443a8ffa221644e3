//! Slow and greedy clients against the in-process proxy: a request head that
//! never completes is cut after the header read timeout, and connections
//! over a bound (per pod, in all) are refused with a 503 that says why,
//! while other clients go on being answered.
mod support;

use std::time::Instant;

use bytes::Bytes;
use support::*;

/// Small bounds, so that the tests hit them quickly.
const LIMITS: &str =
    "limits: {header_read_timeout_ms: 300, max_connections: 6, max_connections_per_pod: 3}";
/// cgroup ids of the two caller pods of the shared test config.
const CALLER: u64 = 3;
const CALLER_GRAY: u64 = 4;

/// A GET on a fresh connection; the raw answer.
async fn one_request(s: &Setup) -> RawResponse {
    let mut stream = raw_connect(s.proxy_addr).await;
    write_raw(
        &mut stream,
        b"GET /x HTTP/1.1\r\nhost: svc\r\n\r\n",
        "a request",
    )
    .await;
    read_response(&mut stream, &mut Vec::new(), "its answer").await
}

#[tokio::test]
async fn a_head_that_never_completes_is_cut_and_others_are_served_meanwhile() {
    let s = setup_with("caller", true, LIMITS).await;
    // Slowloris: half a head, then nothing, on three connections.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = raw_connect(s.proxy_addr).await;
        write_raw(
            &mut stream,
            b"GET /x HTTP/1.1\r\nhost: svc\r\nx-slow",
            "half a head",
        )
        .await;
        slow.push(stream);
    }
    // A kept-alive client of the other pod is answered at once meanwhile.
    s.origins.set_caller(CALLER_GRAY);
    let mut conn = connect(s.proxy_addr).await;
    for _ in 0..3 {
        let (status, _) = send(&mut conn, request(None, Bytes::new())).await;
        assert_eq!(status, 200);
    }
    let started = Instant::now();
    for stream in &mut slow {
        expect_closed(stream, Vec::new(), "the slow head is cut").await;
    }
    println!("slow heads cut after {:?}", started.elapsed());
    wait_until("the cuts are counted", || {
        s.gate.stats().closed_by_header_read_timeout >= 3
    })
    .await;
    // The kept-alive connection idle past the timeout is closed too, and a
    // new one works.
    let answer = one_request(&s).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_pod_over_its_connection_bound_gets_a_503_and_others_do_not() {
    let s = setup_with("caller", true, LIMITS).await;
    // Three idle connections of `caller`: its bound.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw_connect(s.proxy_addr).await);
    }
    wait_until("three connections admitted", || {
        s.gate.stats().connections_open == 3
    })
    .await;
    let refused = one_request(&s).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("this pod holds its maximum of 3 connections")
            && refused.body.contains("source caller"),
        "{}",
        refused.body
    );
    assert!(
        refused
            .headers
            .contains(&("connection".into(), "close".into()))
    );
    assert_eq!(s.gate.stats().refused_over_pod_limit, 1);
    // Another pod is not held back by this one.
    s.origins.set_caller(CALLER_GRAY);
    assert_eq!(one_request(&s).await.status, 200);
    // One of `caller`'s connections closes: it has room again.
    s.origins.set_caller(CALLER);
    drop(held.pop());
    wait_until("the closed connection is given back", || {
        s.gate.stats().connections_open == 2
    })
    .await;
    assert_eq!(one_request(&s).await.status, 200);
}

#[tokio::test]
async fn connections_over_the_proxy_bound_are_refused_whoever_asks() {
    let s = setup_with("caller", true, LIMITS).await;
    let mut held = Vec::new();
    let callers = [
        CALLER,
        CALLER,
        CALLER,
        CALLER_GRAY,
        CALLER_GRAY,
        CALLER_GRAY,
    ];
    for (n, caller) in callers.into_iter().enumerate() {
        s.origins.set_caller(caller);
        held.push(raw_connect(s.proxy_addr).await);
        // The proxy asks who connected after it accepts: let it, before the
        // caller changes.
        wait_until("the connection is admitted", || {
            s.gate.stats().connections_open == n + 1
        })
        .await;
    }
    let refused = one_request(&s).await;
    assert_eq!(refused.status, 503);
    assert!(
        refused
            .body
            .contains("the proxy holds its maximum of 6 connections"),
        "{}",
        refused.body
    );
    // Not HTTP: refused with a close, nothing written.
    let mut opaque = raw_connect(s.proxy_addr).await;
    write_raw(&mut opaque, b"\x16\x03\x01 not http", "opaque bytes").await;
    expect_closed(
        &mut opaque,
        Vec::new(),
        "an opaque connection over the bound",
    )
    .await;
    assert_eq!(s.gate.stats().refused_over_total_limit, 2);
    held.clear();
    wait_until("all given back", || s.gate.stats().connections_open == 0).await;
    assert_eq!(one_request(&s).await.status, 200);
}

/// A flood of connections that each send half a head: every one is cut at
/// the timeout and the count of open connections comes back to zero.
#[tokio::test]
async fn a_flood_of_slow_heads_is_all_cut() {
    let s = setup_with(
        "caller",
        true,
        "limits: {header_read_timeout_ms: 300, max_connections_per_pod: 5000}",
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..400 {
        let mut stream = raw_connect(s.proxy_addr).await;
        write_raw(&mut stream, b"GET / HTTP/1.1\r\nhost", "half a head").await;
        slow.push(stream);
    }
    wait_until("every slow head is cut", || {
        s.gate.stats().closed_by_header_read_timeout == 400 && s.gate.stats().connections_open == 0
    })
    .await;
    drop(slow);
}
