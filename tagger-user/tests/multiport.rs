//! A service with two ports, through the proxy in process: a request to
//! service port P goes to the endpoint's target port for P (a named port
//! may be a different number on each pod), lanes decided as for any
//! service; an endpoint the source calls terminating gets no new requests.
mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use support::{FixedOrigin, connect, request, send, upstream};
use tagger::{
    config::LimitsSpec,
    proxy::{Proxy, ProxyConfig},
    state::{
        EndpointEntry, Inventory, LaneEntry, PodEntry, PortMap, Readiness, RulesOrigin,
        ServiceEntry, ServicePort, SettingsSpec, Snapshot, StateHandle,
    },
};
use tokio::net::TcpListener;

const SERVICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// A listener on `ip` answering as `name`; its port.
async fn listen(ip: &str, name: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    upstream(name, listener);
    port
}

fn pod(name: &str, last: u8, lane: Option<&str>, cgroup: u64) -> PodEntry {
    PodEntry {
        name: name.into(),
        namespace: "shop".into(),
        ip: Ipv4Addr::new(127, 0, 0, last),
        labels: Default::default(),
        lane: lane.map(String::from),
        cgroup_ids: vec![cgroup],
    }
}

/// `shop/web` on ports 80 and 9000; base (127.0.0.2) and gray (127.0.0.3)
/// each with their own target ports `[(80's, 9000's)]`.
fn inventory(base: (u16, u16), gray: (u16, u16), gray_readiness: Readiness) -> Inventory {
    let endpoint = |pod: &str, last: u8, (http, admin): (u16, u16), readiness| EndpointEntry {
        pod: pod.into(),
        ip: Ipv4Addr::new(127, 0, 0, last),
        ports: vec![
            PortMap {
                port: 80,
                target_port: http,
            },
            PortMap {
                port: 9000,
                target_port: admin,
            },
        ],
        readiness,
    };
    Inventory {
        settings: SettingsSpec {
            lane_header: "x-lane".into(),
            passthrough_headers: vec![],
            body_match_limit: 1024,
            limits: LimitsSpec::default(),
        },
        namespaces: vec!["shop".into()],
        lanes: vec![LaneEntry {
            namespace: "shop".into(),
            name: "gray".into(),
            sticky: false,
        }],
        services: vec![ServiceEntry {
            name: "shop/web".into(),
            namespace: "shop".into(),
            address: Some(SERVICE),
            ports: vec![ServicePort::new(80), ServicePort::new(9000)],
            endpoints: vec![
                endpoint("shop/base", 2, base, Readiness::Ready),
                endpoint("shop/gray", 3, gray, gray_readiness),
            ],
            pods: vec!["shop/base".into(), "shop/gray".into()],
            lane_header_from: Default::default(),
        }],
        pods: vec![
            pod("shop/base", 2, None, 1),
            pod("shop/gray", 3, Some("gray"), 2),
            pod("shop/caller", 4, None, 3),
        ],
        rules: vec![],
        rules_origin: RulesOrigin::Api,
    }
}

async fn ask(proxy: SocketAddr, lane: Option<&str>) -> String {
    let mut sender = connect(proxy).await;
    let (status, body) = send(&mut sender, request(lane, Bytes::new())).await;
    assert_eq!(status, 200, "{body}");
    body.split(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn each_service_port_reaches_its_target_port_in_the_lane() {
    let base = (
        listen("127.0.0.2", "base-http").await,
        listen("127.0.0.2", "base-admin").await,
    );
    let gray = (
        listen("127.0.0.3", "gray-http").await,
        listen("127.0.0.3", "gray-admin").await,
    );
    let first = inventory(base, gray, Readiness::Ready);
    let state: StateHandle = Arc::new(ArcSwap::from_pointee(
        Snapshot::build(&first, &[], None).unwrap(),
    ));
    let origins = Arc::new(FixedOrigin::new(SocketAddrV4::new(SERVICE, 80), 3));
    let proxy = Proxy::new(
        state.clone(),
        origins.clone(),
        Arc::default(),
        Arc::default(),
        ProxyConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy.serve(listener));

    // (where the caller connected, lane header, who answers)
    let cases = [
        (SocketAddrV4::new(SERVICE, 80), None, "base-http"),
        (SocketAddrV4::new(SERVICE, 80), Some("gray"), "gray-http"),
        (SocketAddrV4::new(SERVICE, 9000), None, "base-admin"),
        (SocketAddrV4::new(SERVICE, 9000), Some("gray"), "gray-admin"),
        // An endpoint's own address (a registry client): its service port.
        (
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), gray.1),
            None,
            "base-admin",
        ),
        (
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), base.0),
            Some("gray"),
            "gray-http",
        ),
    ];
    for (dest, lane, want) in cases {
        origins.set_dest(dest);
        assert_eq!(ask(addr, lane).await, want, "{dest} {lane:?}");
    }
    // Gray terminating: no new requests; gray ones fall back to baseline.
    let next = inventory(base, gray, Readiness::Terminating);
    let previous = state.load_full();
    state.store(Arc::new(
        Snapshot::build(&next, &[], Some(&previous)).unwrap(),
    ));
    origins.set_dest(SocketAddrV4::new(SERVICE, 9000));
    assert_eq!(ask(addr, Some("gray")).await, "base-admin");
}
