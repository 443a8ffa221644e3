//! The metrics listener: `/metrics` (Prometheus text), `/ready` (200 once
//! the data path is up, else 503: kubelet's readiness probe), `/healthz`
//! (200 while the daemon answers: its liveness probe), and the read-only
//! flow views `/debug/flows` and `/debug/lanes` (the admin socket's JSON,
//! [`crate::admin::View`]), which `tagger flows|lanes --kubernetes` reads
//! from every node. Plain HTTP/1 on TCP, apart from the admin API's Unix
//! socket, so that Prometheus, kubelet and the CLI can reach it on the
//! node's address. Nothing here changes anything: rules are changed on the
//! admin socket (or through the API) only.
use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{CONTENT_TYPE, Hub};
use crate::admin::View;

pub async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "metrics accept failed");
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let hub = hub.clone();
                async move { Ok::<_, Infallible>(route(&hub, &request)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "metrics connection ended");
            }
        });
    }
}

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn route(hub: &Hub, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => answer(StatusCode::OK, CONTENT_TYPE, hub.render()),
        "/ready" if hub.is_ready() => answer(StatusCode::OK, "text/plain", "ready\n".into()),
        "/ready" => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        "/healthz" => answer(StatusCode::OK, "text/plain", "ok\n".into()),
        path => match View::from_debug_path(path) {
            Some(view) => crate::admin::json_body(view.json(hub.flows())),
            None => answer(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no route for {path}\n"),
            ),
        },
    }
}
