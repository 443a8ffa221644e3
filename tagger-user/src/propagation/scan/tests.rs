use super::*;

fn wanted() -> (HeaderName, Vec<HeaderName>) {
    (
        HeaderName::from_static("x-lane"),
        vec![
            HeaderName::from_static("mse-username"),
            HeaderName::from_static("x-user-id"),
        ],
    )
}

fn run(bytes: &[u8]) -> Scan {
    let (lane, pass) = wanted();
    scan(
        bytes,
        &Wanted {
            lane_header: &lane,
            lane_alias: "x-mse-tag",
            passthrough: &pass,
        },
    )
}

fn complete(bytes: &[u8]) -> InboundContext {
    match run(bytes) {
        Scan::Complete(c) => c,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

fn pass(c: &InboundContext) -> Vec<(String, String)> {
    c.passthrough
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

#[test]
fn plain_request() {
    let c = complete(b"GET /device?userId=1 HTTP/1.1\r\nHost: device\r\nx-lane: gray\r\nmse-username: msd01\r\n\r\n");
    assert_eq!(c.lane.as_deref(), Some("gray"));
    assert_eq!(pass(&c), vec![("mse-username".into(), "msd01".into())]);
    assert!(c.ids.is_empty());
}

#[test]
fn names_are_case_insensitive_and_values_trimmed() {
    let c = complete(b"POST / HTTP/1.0\r\nX-LANE:   gray  \r\nMSE-Username:\tmsd02\r\n\r\nbody");
    assert_eq!(c.lane.as_deref(), Some("gray"));
    assert_eq!(pass(&c), vec![("mse-username".into(), "msd02".into())]);
}

#[test]
fn alias_and_precedence() {
    let c = complete(b"GET / HTTP/1.1\r\nx-mse-tag: blue\r\n\r\n");
    assert_eq!(c.lane.as_deref(), Some("blue"));
    // The configured header wins, before or after the alias.
    let c = complete(b"GET / HTTP/1.1\r\nx-lane: gray\r\nx-mse-tag: blue\r\n\r\n");
    assert_eq!(c.lane.as_deref(), Some("gray"));
    let c = complete(b"GET / HTTP/1.1\r\nx-mse-tag: blue\r\nx-lane: gray\r\n\r\n");
    assert_eq!(c.lane.as_deref(), Some("gray"));
}

#[test]
fn duplicates_keep_the_first_pass_through_value() {
    let c = complete(b"GET / HTTP/1.1\r\nx-user-id: 100\r\nx-user-id: 101\r\n\r\n");
    assert_eq!(pass(&c), vec![("x-user-id".into(), "100".into())]);
}

#[test]
fn folded_lines_continue_the_value() {
    let c = complete(b"GET / HTTP/1.1\r\nmse-username: msd\r\n  01\r\nx-lane: gray\r\n\r\n");
    assert_eq!(pass(&c), vec![("mse-username".into(), "msd 01".into())]);
    assert_eq!(c.lane.as_deref(), Some("gray"));
}

#[test]
fn bare_line_feeds() {
    let c = complete(b"GET / HTTP/1.1\nx-lane: gray\n\n");
    assert_eq!(c.lane.as_deref(), Some("gray"));
}

#[test]
fn split_reads_are_partial_until_the_blank_line() {
    let full = b"GET / HTTP/1.1\r\nHost: a\r\nx-lane: gray\r\n\r\n";
    for cut in 1..full.len() - 1 {
        assert_eq!(run(&full[..cut]), Scan::Partial, "cut at {cut}");
    }
    assert_eq!(complete(full).lane.as_deref(), Some("gray"));
}

#[test]
fn header_at_the_end_of_a_large_block() {
    let mut block = b"GET /x HTTP/1.1\r\n".to_vec();
    for i in 0..300 {
        block.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(30)).as_bytes());
    }
    block.extend_from_slice(b"x-user-id: 100\r\nx-lane: gray\r\n\r\n");
    assert!(block.len() > 12_000);
    let c = complete(&block);
    assert_eq!(c.lane.as_deref(), Some("gray"));
    assert_eq!(pass(&c), vec![("x-user-id".into(), "100".into())]);
}

#[test]
fn ids_apps_forward() {
    let c = complete(
        b"GET / HTTP/1.1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx-request-id: abc-123\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\nx-b3-traceid: 463ac35c9f6413ad\r\n\r\n",
    );
    assert_eq!(
        c.ids,
        vec![
            "traceparent=4bf92f3577b34da6a3ce929d0e0e4736",
            "x-request-id=abc-123",
            "b3=80f198ee56343ba864fe8b2a57d3eff7",
            "x-b3-traceid=463ac35c9f6413ad",
        ]
    );
    assert!(c.is_empty(), "ids alone carry no lane");
}

#[test]
fn values_no_header_may_hold_are_not_taken() {
    // A bare CR (or another control byte) inside a value: apps refuse such
    // a request, and nothing of it could be sent on as a header value.
    let c = complete(
        b"GET / HTTP/1.1\r\nx-b3-traceid: 463ac35c9f6413ad\ran\r\nx-lane: gr\x00ay\r\nmse-username: a\x7fb\r\nx-user-id: 7\r\n\r\n",
    );
    assert_eq!(c.lane, None);
    assert!(c.ids.is_empty(), "{:?}", c.ids);
    assert_eq!(pass(&c), vec![("x-user-id".into(), "7".into())]);
}

#[test]
fn not_http() {
    let cases: &[&[u8]] = &[
        b"\x16\x03\x01\x02\x00",
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n", // a response, not a request
        b"GET\r\n\r\n",
        b"GETX / HTTP/1.1\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
        b"hello world\n",
        // A leading space: apps refuse it, and its first bytes alone
        // already scan as not HTTP.
        b" GET / HTTP/1.1\r\nx-lane: gray\r\n\r\n",
    ];
    for bytes in cases {
        assert_eq!(
            run(bytes),
            Scan::NotHttp,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // The start of a method with no line end yet: wait for more.
    assert_eq!(run(b"GE"), Scan::Partial);
    assert_eq!(run(b"POST /upl"), Scan::Partial);
    assert_eq!(run(b"XYZ"), Scan::NotHttp);
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: every prefix of a mix of valid and invalid
    // bytes, including invalid UTF-8 and header names.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"GET /:\r\n \tx-lane\xff\x00mse-username:gray\xc3";
    for _ in 0..2000 {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..(seed % 64) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        let _ = run(&bytes);
    }
}
