//! HTTP/1.1 Upgrade (WebSocket) through the in-process proxy: the
//! handshake is routed by its lane like any request; after the endpoint's
//! 101 the bytes flow both ways untouched, with that endpoint.
mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// An HTTP/1.1 upstream that accepts `Upgrade: websocket` on any path but
/// `/refuse` (426), then answers every chunk it reads with
/// "`name`: chunk". Other requests: "`name` upgrade=<Upgrade header>".
fn upgrading_upstream(name: &'static str, listener: TcpListener) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(move |mut request: Request<Incoming>| async move {
                    let upgrade = request
                        .headers()
                        .get("upgrade")
                        .map(|v| v.to_str().unwrap().to_string());
                    let lane = request
                        .headers()
                        .get("x-lane")
                        .map_or("-".to_string(), |v| v.to_str().unwrap().to_string());
                    let mut response = Response::new(Full::new(Bytes::new()));
                    match upgrade.as_deref() {
                        Some("websocket") if request.uri().path() != "/refuse" => {
                            let on_upgrade = hyper::upgrade::on(&mut request);
                            tokio::spawn(async move {
                                let mut io = TokioIo::new(on_upgrade.await.unwrap());
                                let mut buf = [0u8; 1024];
                                loop {
                                    let n = io.read(&mut buf).await.unwrap_or(0);
                                    if n == 0 {
                                        return;
                                    }
                                    let mut answer = format!("{name}: ").into_bytes();
                                    answer.extend_from_slice(&buf[..n]);
                                    io.write_all(&answer).await.unwrap();
                                }
                            });
                            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            let headers = response.headers_mut();
                            headers.insert("upgrade", "websocket".parse().unwrap());
                            headers.insert("connection", "upgrade".parse().unwrap());
                            headers.insert("x-seen-lane", lane.parse().unwrap());
                        }
                        Some("websocket") => {
                            *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
                        }
                        other => {
                            let text = format!("{name} upgrade={}", other.unwrap_or("-"));
                            *response.body_mut() = Full::new(Bytes::from(text));
                        }
                    }
                    Ok::<_, hyper::Error>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

async fn upgrade_setup() -> Proxied {
    let (base, gray) = endpoint_listeners(true).await;
    let port = base.local_addr().unwrap().port();
    upgrading_upstream("base", base);
    upgrading_upstream("gray", gray.unwrap());
    start_proxy(&config(), port, "caller").await
}

fn handshake(path: &str, lane: Option<&str>, protocol: &str) -> String {
    let lane = lane.map_or(String::new(), |l| format!("x-lane: {l}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n{lane}\r\n"
    )
}

/// A WebSocket handshake goes to its lane's endpoint; after the 101 the
/// client talks to that endpoint byte for byte, both ways, and the joined
/// connection keeps its place under the connection limits until it ends.
#[tokio::test]
async fn a_websocket_handshake_is_routed_by_lane_then_bytes_pass() {
    let p = upgrade_setup().await;
    for (lane, served) in [(Some("gray"), "gray"), (None, "base")] {
        let case = format!("lane {lane:?}");
        let mut client = raw_connect(p.proxy_addr).await;
        write_raw(
            &mut client,
            handshake("/ws", lane, "websocket").as_bytes(),
            &case,
        )
        .await;
        let mut buffer = Vec::new();
        let response = read_response(&mut client, &mut buffer, &case).await;
        assert_eq!(response.status, 101, "{case}: {response:?}");
        assert_eq!(response.header("upgrade"), Some("websocket"), "{case}");
        assert_eq!(response.header("connection"), Some("upgrade"), "{case}");
        assert_eq!(response.header("x-seen-lane"), Some(lane.unwrap_or("-")));
        for message in ["hello", "again"] {
            write_raw(&mut client, message.as_bytes(), &case).await;
            let want = format!("{served}: {message}");
            while buffer.len() < want.len() {
                fill(&mut client, &mut buffer, &case).await;
            }
            let got: Vec<u8> = buffer.drain(..want.len()).collect();
            assert_eq!(String::from_utf8(got).unwrap(), want, "{case}");
        }
        // The joined connection still counts under the limits.
        assert!(p.gate.stats().connections_open >= 1, "{case}");
    }
    wait_until("closed tunnels give their places back", || {
        p.gate.stats().connections_open == 0
    })
    .await;
    let mut lanes: Vec<(Option<String>, String)> = p
        .flows
        .rows()
        .into_iter()
        .map(|r| (r.lane, r.endpoint))
        .collect();
    lanes.sort();
    assert_eq!(
        lanes,
        [(None, "base".into()), (Some("gray".into()), "gray".into())]
    );
}

/// An endpoint that declines the upgrade answers in HTTP/1.1, and the
/// connection goes on as HTTP/1.1.
#[tokio::test]
async fn a_declined_upgrade_leaves_an_http1_connection() {
    let p = upgrade_setup().await;
    let mut client = raw_connect(p.proxy_addr).await;
    let case = "declined";
    write_raw(
        &mut client,
        handshake("/refuse", None, "websocket").as_bytes(),
        case,
    )
    .await;
    let mut buffer = Vec::new();
    let response = read_response(&mut client, &mut buffer, case).await;
    assert_eq!(response.status, 426, "{response:?}");
    write_raw(
        &mut client,
        b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n",
        case,
    )
    .await;
    let response = read_response(&mut client, &mut buffer, case).await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "base upgrade=-")
    );
}

/// `Upgrade: h2c` would turn the connection into one HTTP/2 connection to
/// one endpoint, below per-stream lanes: it is not passed on, and the
/// endpoint answers the request in HTTP/1.1.
#[tokio::test]
async fn an_h2c_upgrade_is_not_passed_on() {
    let p = upgrade_setup().await;
    let mut client = raw_connect(p.proxy_addr).await;
    let case = "h2c";
    write_raw(&mut client, handshake("/x", None, "h2c").as_bytes(), case).await;
    let mut buffer = Vec::new();
    let response = read_response(&mut client, &mut buffer, case).await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "base upgrade=-")
    );
}
