//! SPEC G, trust: nobody walks into a gray lane by sending `x-lane: gray`
//! unless the operator wants it. `web` trusts the lane header from the
//! pods of `gateway` only, `admin` from nobody (its rule decides); a
//! stripped header never reaches the endpoint (web's pod would otherwise
//! carry it on to `api`), and `tagger flows` counts it.
use tagger_e2e::{Cluster, requests_where, text};

const GRAY_CHAIN: &str = "web-v2 -> api-v2";
const BASE_CHAIN: &str = "web-v1 -> api-v1";

#[test]
fn a_lane_header_is_trusted_only_where_the_service_says() {
    let cluster = Cluster::up("trust.yaml");
    let web = "http://web:8080/";
    for _ in 0..5 {
        // A pod that is not the gateway: stripped, so baseline all the way
        // (had web-v1 received the header, its call to api would be gray).
        assert_eq!(cluster.curl("client", web, &["x-lane: gray"]), BASE_CHAIN);
        assert_eq!(
            cluster.curl("client", web, &["x-mse-tag: gray"]),
            BASE_CHAIN
        );
        // Through the gateway, which copies the header: trusted.
        assert_eq!(
            cluster.curl("client", "http://gateway:9800/", &["x-lane: gray"]),
            format!("gateway -> {GRAY_CHAIN}")
        );
        // The relay copies nothing: its lane reaches web by propagation
        // only, and web does not trust the relay with it either.
        assert_eq!(
            cluster.curl("client", "http://relay:9801/", &["x-lane: gray"]),
            format!("relay -> {BASE_CHAIN}")
        );
        // Nothing claimed: baseline, nothing stripped.
        assert_eq!(cluster.curl("client", web, &[]), BASE_CHAIN);
    }
    // `none`: nobody's header counts; the service's rule still decides.
    let admin = "http://admin:8080/";
    assert_eq!(cluster.curl("client", admin, &["x-lane: gray"]), "admin-v1");
    assert_eq!(
        cluster.curl("gateway", admin, &["x-lane: gray"]),
        "admin-v1",
        "`none` trusts the gateway no more than anybody"
    );
    assert_eq!(
        cluster.curl("client", admin, &["x-lane: gray", "x-tester: yes"]),
        "admin-v2"
    );

    let flows = cluster.flows();
    let stripped = |source: &str, service: &str| -> u64 {
        flows
            .iter()
            .filter(|f| f["source"] == source && f["service"] == service)
            .map(|f| f["stripped"].as_u64().expect("a stripped count"))
            .sum()
    };
    let requests = |source: &str, service: &str, endpoint: &str| {
        requests_where(&flows, |f| {
            f["source"] == source && f["service"] == service && f["endpoint"] == endpoint
        })
    };
    assert_eq!(stripped("client", "web"), 10, "{flows:#?}");
    assert_eq!(requests("client", "web", "web-v1"), 15, "{flows:#?}");
    assert_eq!(stripped("gateway", "web"), 0, "{flows:#?}");
    assert_eq!(requests("gateway", "web", "web-v2"), 5, "{flows:#?}");
    assert_eq!(stripped("relay", "web"), 5, "{flows:#?}");
    assert_eq!(requests("relay", "web", "web-v1"), 5, "{flows:#?}");
    // web's pods called api in the lane web's request was decided in.
    assert_eq!(stripped("web-v1", "api") + stripped("web-v2", "api"), 0);
    assert_eq!(requests("web-v1", "api", "api-v1"), 20, "{flows:#?}");
    assert_eq!(requests("web-v2", "api", "api-v2"), 5, "{flows:#?}");
    assert_eq!(stripped("client", "admin"), 2, "{flows:#?}");
    assert_eq!(stripped("gateway", "admin"), 1, "{flows:#?}");
    let rule = flows
        .iter()
        .find(|f| f["source"] == "client" && f["reason"] == "rule:admin-testers")
        .unwrap_or_else(|| panic!("no rule flow in {flows:#?}"));
    assert_eq!(
        (rule["endpoint"].as_str(), rule["stripped"].as_u64()),
        (Some("admin-v2"), Some(1))
    );

    let table = text(&cluster.tagger(&["flows"]).stdout);
    assert!(
        table.lines().next().unwrap_or("").contains("STRIPPED"),
        "{table}"
    );

    // The config dump shows whom each service trusts, resolved to pods.
    let dump = cluster.config_dump();
    let service = |name: &str| {
        dump["state"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no service {name} in the dump"))
    };
    assert_eq!(
        service("web")["lane_header_from"],
        serde_json::json!(["gateway"])
    );
    assert_eq!(service("web")["lane_trust"], serde_json::json!(["gateway"]));
    assert_eq!(service("admin")["lane_header_from"], "none");
    assert_eq!(service("api")["lane_header_from"], "any");
}
