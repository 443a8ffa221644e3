//! SPEC B5, the article's ingress canary, with Debian's nginx as the ingress
//! pod: user 100 (or `x-mse-tag: gray`) goes to the Service `a-gray`, whose
//! pods are all gray; the ingress is a baseline pod and copies no lane
//! header, and no hop copies anything. A Service of one lane must answer
//! from its pods (never 503 because the caller is baseline), and the gray
//! pod's sticky lane then dyes the rest of the chain.
use tagger_e2e::{Cluster, text};

const GRAY_CHAIN: &str = "a-v2 -> b-v2 -> c-v2";
const BASE_CHAIN: &str = "a-v1 -> b-v1 -> c-v1";

#[test]
fn b5_ingress_canary_routes_user_100_through_a_gray_only_service() {
    let cluster = Cluster::up("ingress-canary.yaml");
    let ingress = "http://ingress:9800/";
    for _ in 0..10 {
        assert_eq!(
            cluster.curl("client", ingress, &["x-user-id: 100"]),
            GRAY_CHAIN
        );
        assert_eq!(
            cluster.curl("client", ingress, &["x-user-id: 101"]),
            BASE_CHAIN
        );
        assert_eq!(cluster.curl("client", ingress, &[]), BASE_CHAIN);
    }
    // The lane header through the same ingress: nginx forwards it, and the
    // request is gray from the ingress on.
    assert_eq!(
        cluster.curl("client", ingress, &["x-mse-tag: gray"]),
        GRAY_CHAIN
    );

    // The ingress's call is baseline (it is a baseline pod and nothing
    // says otherwise), served by the only lane `a-gray` has.
    let only = cluster.flow("ingress", "a-gray", "a-v2");
    assert_eq!(only["lane"], serde_json::Value::Null, "{only}");
    assert_eq!(only["reason"], "default", "{only}");
    assert_eq!(only["fallback"], true, "{only}");
    assert_eq!(only["served_lane"], "gray", "{only}");
    assert_eq!(only["requests"], 10, "{only}");
    let table = text(&cluster.tagger(&["flows"]).stdout);
    assert!(table.contains("default (only lane gray)"), "{table}");

    // Called directly, by its name and by its pod's address (as a registry
    // client would), the gray-only Service answers from its pod.
    assert_eq!(
        cluster.curl("client", "http://a-gray:8080/", &[]),
        GRAY_CHAIN
    );
    let pod = format!("http://{}:8080/", cluster.pod_ip("a-v2"));
    assert_eq!(cluster.curl("client", &pod, &[]), GRAY_CHAIN);
    assert_eq!(
        cluster.flow("client", "a-gray", "a-v2")["requests"],
        2,
        "by name and by pod address"
    );

    // Each of those 12 requests entered a-v2 without a lane: the gray pod's
    // sticky lane dyed its call to b (the `x-mse-tag` one was inherited),
    // and nothing from a-v2 or b-v2 left the lane.
    let flows = cluster.flows();
    let requests = |source: &str, reason: &str| -> u64 {
        flows
            .iter()
            .filter(|f| f["source"] == source && f["reason"] == reason)
            .map(|f| f["requests"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(requests("a-v2", "pod-lane"), 12, "{flows:#?}");
    assert_eq!(requests("a-v2", "inherited-thread"), 1, "{flows:#?}");
    for flow in &flows {
        if flow["source"] == "a-v2" || flow["source"] == "b-v2" {
            assert_eq!(flow["lane"], "gray", "{flow}");
            assert!(
                flow["endpoint"].as_str().unwrap().ends_with("-v2"),
                "{flow}"
            );
        }
    }
}
