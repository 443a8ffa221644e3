//! `lane_header_from` through the real proxy on ephemeral loopback ports
//! (SPEC.md G, trust): by default a caller's lane header decides; `none`
//! takes it off the request (the endpoint never sees it) and the rules or
//! the caller's sticky pod lane decide; a list trusts the pods of the
//! listed services only. Endpoints answer with the lane headers they got.
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use support::*;
use tagger::{flows::FlowRow, metrics::Hub, propagation::InboundBytes, state::Settings};
use tokio::net::TcpListener;

/// Pod cgroups of [`start_proxy`]'s placement.
const BASE_POD: u64 = 1;
const CALLER: u64 = 3;
const CALLER_GRAY: u64 = 4;
/// No pod's cgroup: the caller is known by its address only, and
/// 127.0.0.1 is no pod's address.
const NOT_A_POD: u64 = 99;

/// An endpoint that answers `<name> x-lane=<values> x-mse-tag=<values>`
/// (`-` when absent, values joined by `,`).
fn echo_lane_headers(name: &'static str, listener: TcpListener) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service =
                    service_fn(move |request: Request<hyper::body::Incoming>| async move {
                        let values = |header: &str| {
                            let all: Vec<&str> = request
                                .headers()
                                .get_all(header)
                                .iter()
                                .map(|v| v.to_str().unwrap())
                                .collect();
                            if all.is_empty() {
                                "-".to_string()
                            } else {
                                all.join(",")
                            }
                        };
                        let answer = format!(
                            "{name} x-lane={} x-mse-tag={}",
                            values("x-lane"),
                            values("x-mse-tag")
                        );
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The proxy in front of `svc` (a base and a gray endpoint) with `svc`'s
/// `lane_header_from` line, a rule putting `?user=vip` in gray, and the
/// callers of [`two_services`]; lane gray sticky.
async fn proxy_with(lane_header_from: &str) -> Proxied {
    let (base, gray) = endpoint_listeners(true).await;
    let port = base.local_addr().unwrap().port();
    echo_lane_headers("base", base);
    echo_lane_headers("gray", gray.unwrap());
    let config = two_services(
        lane_header_from,
        r#"rules:
  - name: vip
    service: svc
    lane: gray
    conditions:
      - {source: query, name: user, op: '=', value: vip}
"#,
    );
    start_proxy(&config, port, "caller").await
}

/// A GET of `path` with these headers, on a new connection from the pod
/// with cgroup `caller`.
async fn ask(p: &Proxied, caller: u64, path: &str, headers: &[(&str, &str)]) -> String {
    p.origins.set_caller(caller);
    let mut conn = connect(p.proxy_addr).await;
    let mut request = Request::get(path).header("host", "svc");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let (status, body) = send(&mut conn, request).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// (requests, stripped) of the flows of this source and reason, summed
/// (an inherited request is a flow of its own: its correlation differs).
fn counts(rows: &[FlowRow], source: &str, reason: &str) -> (u64, u64) {
    let found: Vec<&FlowRow> = rows
        .iter()
        .filter(|r| r.source == source && r.reason == reason)
        .collect();
    assert!(!found.is_empty(), "no row {source} {reason}: {rows:#?}");
    found
        .iter()
        .fold((0, 0), |(r, s), row| (r + row.requests, s + row.stripped))
}

/// The app in front of the caller read an inbound request carrying
/// `x-lane: gray` and request id `id` (as the kernel would report it).
fn inbound_with_gray_lane(p: &Proxied, id: &str) {
    let bytes =
        format!("GET / HTTP/1.1\r\nhost: caller\r\nx-lane: gray\r\nx-request-id: {id}\r\n\r\n");
    let settings: Settings = p.state.load().settings.clone();
    p.contexts.on_inbound(
        InboundBytes {
            pid_tgid: 77,
            seq: 1,
            flags: tagger_common::EVENT_FIRST,
            data: bytes.as_bytes(),
        },
        &settings,
    );
}

#[tokio::test]
async fn by_default_every_callers_lane_header_decides() {
    let p = proxy_with("").await;
    assert_eq!(
        ask(&p, CALLER, "/", &[("x-lane", "gray")]).await,
        "gray x-lane=gray x-mse-tag=-"
    );
    assert_eq!(
        ask(&p, CALLER, "/", &[("x-mse-tag", "gray")]).await,
        "gray x-lane=gray x-mse-tag=gray"
    );
    // Inherited by a forwarded request id: also the caller's claim, kept.
    inbound_with_gray_lane(&p, "r-any");
    assert_eq!(
        ask(&p, CALLER, "/", &[("x-request-id", "r-any")]).await,
        "gray x-lane=gray x-mse-tag=-"
    );
    let rows = p.flows.rows();
    assert!(rows.iter().all(|r| r.stripped == 0), "{rows:#?}");
    assert_eq!(counts(&rows, "caller", "header"), (2, 0));
    assert_eq!(counts(&rows, "caller", "inherited-id"), (1, 0));
}

#[tokio::test]
async fn none_strips_the_lane_header_and_rules_or_the_pod_lane_decide() {
    let p = proxy_with("    lane_header_from: none\n").await;
    // The header alone: baseline, and the endpoint never sees it (nor its
    // alias, nor a second value).
    for headers in [
        &[("x-lane", "gray")][..],
        &[("x-mse-tag", "gray")],
        &[
            ("x-lane", "gray"),
            ("x-lane", "gray"),
            ("x-mse-tag", "blue"),
        ],
    ] {
        assert_eq!(
            ask(&p, CALLER, "/", headers).await,
            "base x-lane=- x-mse-tag=-",
            "{headers:?}"
        );
    }
    // A rule of the service decides instead (and a rule can no more read
    // the stripped header than the endpoint can).
    assert_eq!(
        ask(&p, CALLER, "/?user=vip", &[("x-lane", "blue")]).await,
        "gray x-lane=gray x-mse-tag=-"
    );
    // The caller's sticky pod lane is the operator's label, not a claim.
    assert_eq!(
        ask(&p, CALLER_GRAY, "/", &[("x-lane", "blue")]).await,
        "gray x-lane=gray x-mse-tag=-"
    );
    // A lane inherited from the caller's own inbound request is its claim
    // too: an app that does not copy headers is locked out the same way.
    inbound_with_gray_lane(&p, "r-none");
    assert_eq!(
        ask(&p, CALLER, "/", &[("x-request-id", "r-none")]).await,
        "base x-lane=- x-mse-tag=-"
    );
    // Nothing claimed: nothing stripped.
    assert_eq!(ask(&p, CALLER, "/", &[]).await, "base x-lane=- x-mse-tag=-");

    let rows = p.flows.rows();
    assert_eq!(counts(&rows, "caller", "default"), (5, 4));
    assert_eq!(counts(&rows, "caller", "rule:vip"), (1, 1));
    assert_eq!(counts(&rows, "caller-gray", "pod-lane"), (1, 1));
    let table = tagger::ctl::render_flows(&rows);
    assert!(
        table.lines().next().unwrap().contains("STRIPPED"),
        "{table}"
    );

    let metrics = Hub::new(p.flows.clone()).render();
    for line in [
        "tagger_lane_stripped_total{service=\"svc\",from=\"header\"} 5",
        "tagger_lane_stripped_total{service=\"svc\",from=\"inherited\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_list_trusts_the_pods_of_the_listed_services_only() {
    let p = proxy_with("    lane_header_from: [caller]\n").await;
    // Pods of `caller`, whatever their own lane.
    assert_eq!(
        ask(&p, CALLER, "/", &[("x-lane", "gray")]).await,
        "gray x-lane=gray x-mse-tag=-"
    );
    assert_eq!(
        ask(&p, CALLER_GRAY, "/", &[("x-lane", "blue")]).await,
        "base x-lane=blue x-mse-tag=-"
    );
    // A pod of another service (here `svc` itself) is not trusted...
    assert_eq!(
        ask(&p, BASE_POD, "/", &[("x-lane", "gray")]).await,
        "base x-lane=- x-mse-tag=-"
    );
    // ...nor a caller tagger cannot identify as a pod.
    assert_eq!(
        ask(&p, NOT_A_POD, "/", &[("x-lane", "gray")]).await,
        "base x-lane=- x-mse-tag=-"
    );
    let rows = p.flows.rows();
    assert_eq!(counts(&rows, "caller", "header"), (1, 0));
    assert_eq!(counts(&rows, "caller-gray", "header"), (1, 0));
    assert_eq!(counts(&rows, "base", "default"), (1, 1));
    assert_eq!(counts(&rows, "127.0.0.1", "default"), (1, 1));
}

/// The policy is part of the model: `config-dump` shows it per service,
/// resolved to the pods it trusts.
#[tokio::test]
async fn the_model_shows_whom_each_service_trusts() {
    let p = proxy_with("    lane_header_from: [caller]\n").await;
    let state = p.state.load();
    let dump = serde_json::to_value(&**state).unwrap();
    let services = dump["services"].as_array().unwrap();
    let svc = services.iter().find(|s| s["name"] == "svc").unwrap();
    assert_eq!(svc["lane_header_from"], serde_json::json!(["caller"]));
    assert_eq!(
        svc["lane_trust"],
        serde_json::json!(["caller", "caller-gray"])
    );
    let caller = services.iter().find(|s| s["name"] == "caller").unwrap();
    assert_eq!(caller["lane_header_from"], "any");
}
