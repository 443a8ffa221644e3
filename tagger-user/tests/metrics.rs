//! `/metrics` end to end in process: the real proxy forwards requests, and
//! a scrape of the metrics listener shows exactly those requests, their
//! latencies, the proxy's connections and its own errors.
mod support;

use std::{net::SocketAddr, sync::Arc, sync::atomic::Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;
use tagger::metrics::{Hub, serve};
use tokio::net::TcpListener;

/// GET `path` on the metrics listener: (status, content type, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut sender = connect(addr).await;
    let request = hyper::Request::get(path)
        .header("host", "metrics")
        .body(
            http_body_util::Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    within("metrics ready", sender.ready()).await.unwrap();
    let response = within("metrics head", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = within("metrics body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[tokio::test]
async fn a_scrape_counts_exactly_the_requests_sent() {
    let s = setup("caller", true).await;
    let hub = Arc::new(Hub::new(s.flows.clone()));
    hub.set_gate(s.gate.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, hub.clone()));

    // Not ready until the daemon says so; alive all along.
    assert_eq!(get(metrics_addr, "/ready").await.0, 503);
    assert_eq!(get(metrics_addr, "/healthz").await.0, 200);
    hub.set_ready(true);
    assert_eq!(get(metrics_addr, "/ready").await.0, 200);

    // Two connections: three requests on the first, two on the second.
    let mut first = connect(s.proxy_addr).await;
    for lane in [Some("gray"), Some("gray"), None] {
        assert_eq!(send(&mut first, request(lane, Bytes::new())).await.0, 200);
    }
    let mut second = connect(s.proxy_addr).await;
    let vip = Bytes::from_static(br#"{"user": {"vip": true}}"#);
    let (status, body) = send(&mut second, request(None, vip)).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("gray lane=gray len=23 "), "{body}");
    // Nothing ready: tagger answers 503 itself.
    for endpoint in &s.state.load().services[0].endpoints {
        endpoint.ready.store(false, Ordering::Relaxed);
    }
    assert_eq!(send(&mut second, request(None, Bytes::new())).await.0, 503);

    let (status, content_type, text) = get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        lines(&text, "tagger_requests_total"),
        [
            "tagger_requests_total{service=\"svc\",lane=\"baseline\",reason=\"default\",correlation=\"none\",outcome=\"ok\"} 1",
            "tagger_requests_total{service=\"svc\",lane=\"baseline\",reason=\"default\",correlation=\"none\",outcome=\"error\"} 0",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"header\",correlation=\"none\",outcome=\"ok\"} 2",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"header\",correlation=\"none\",outcome=\"error\"} 0",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"rule:vip-users\",correlation=\"none\",outcome=\"ok\"} 1",
            "tagger_requests_total{service=\"svc\",lane=\"gray\",reason=\"rule:vip-users\",correlation=\"none\",outcome=\"error\"} 0",
        ]
    );
    assert_eq!(
        lines(&text, "tagger_proxy_errors_total"),
        ["tagger_proxy_errors_total{service=\"svc\",side=\"upstream\",code=\"503\"} 1"]
    );
    // Every request was decided (the 503 too: it had a lane, no endpoint);
    // four reached an upstream.
    assert_eq!(
        lines(&text, "tagger_decision_duration_seconds_count"),
        ["tagger_decision_duration_seconds_count 5"]
    );
    assert_eq!(
        lines(&text, "tagger_upstream_duration_seconds_count"),
        ["tagger_upstream_duration_seconds_count{service=\"svc\"} 4"]
    );
    assert!(
        text.contains("tagger_upstream_duration_seconds_bucket{service=\"svc\",le=\"+Inf\"} 4\n")
    );
    assert_eq!(
        lines(&text, "tagger_proxy_connections_total"),
        ["tagger_proxy_connections_total 2"]
    );
    assert_eq!(
        lines(&text, "tagger_proxy_connections_open"),
        ["tagger_proxy_connections_open 2"]
    );
    assert!(text.contains("tagger_ready 1\n"));

    // Closed connections leave the open gauge; the totals stay.
    drop(first);
    drop(second);
    wait_until("connections closed", || {
        s.gate.stats().connections_open == 0
    })
    .await;
    let (_, _, text) = get(metrics_addr, "/metrics").await;
    assert_eq!(
        lines(&text, "tagger_proxy_connections_"),
        [
            "tagger_proxy_connections_open 0",
            "tagger_proxy_connections_total 2",
            "tagger_proxy_connections_refused_total{limit=\"total\"} 0",
            "tagger_proxy_connections_refused_total{limit=\"pod\"} 0",
        ]
    );
    assert_eq!(get(metrics_addr, "/nope").await.0, 404);
}

struct NoKernel;

impl tagger::metrics::KernelSource for NoKernel {
    fn stats(&self) -> tagger::ebpf::KernelStats {
        tagger::ebpf::KernelStats {
            connect_seen: 0,
            connect_redirected: 0,
            flow_linked: 0,
            map_errors: 0,
            inbound_requests: 0,
            outbound_tagged: 0,
            events_dropped: 0,
            flows_full: 0,
        }
    }
    fn program_stats(&self) -> Vec<tagger::ebpf::ProgramStat> {
        Vec::new()
    }
    fn map_fill(&self) -> Vec<tagger::metrics::MapFill> {
        Vec::new()
    }
}

/// Every metric the Grafana dashboard (deploy/grafana/tagger-lanes.json)
/// queries is one the daemon exposes: renaming a metric without the
/// dashboard fails here.
#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let hub = Hub::new(Arc::default());
    hub.set_gate(Arc::default());
    hub.set_kernel(Arc::new(NoKernel));
    let exposition = hub.render();
    let types: std::collections::HashMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/tagger-lanes.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    let mut variables = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            variables.push(query.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let name = regex::Regex::new(r"tagger_[a-z0-9_]+").unwrap();
    let mut checked = 0;
    for expr in exprs.iter().chain(&variables) {
        for found in name.find_iter(expr) {
            let metric = found.as_str();
            let known = types.contains_key(metric)
                || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    metric
                        .strip_suffix(suffix)
                        .is_some_and(|base| types.get(base) == Some(&"histogram"))
                });
            assert!(
                known,
                "the dashboard queries {metric}, which /metrics does not have: {expr}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15);
    // The per-lane view per service is there.
    assert!(
        exprs
            .iter()
            .any(|e| e.starts_with("sum by (lane) (rate(tagger_requests_total{"))
    );
}
