//! The admin API, on a Unix socket (root-only by file mode): what `tagger
//! flows|lanes|rules` read, and JSON dumps of the effective config and live
//! state for debugging (`/config_dump`, as ztunnel has).
//!
//! | method | path                    | what                                  |
//! |--------|-------------------------|---------------------------------------|
//! | GET    | /ready                  | 200 once the data path is up          |
//! | GET    | /flows                  | flow-to-lane map rows                 |
//! | GET    | /lanes                  | requests per second per lane/service  |
//! | GET    | /rules                  | rules in force with hit counts        |
//! | POST   | /rules                  | apply a rules file (YAML or JSON)     |
//! | POST   | /rules/NAME/enable      | enable a rule                         |
//! | POST   | /rules/NAME/disable     | disable a rule                        |
//! | DELETE | /rules/NAME             | delete a rule                         |
//! | GET    | /config_dump            | settings, lanes, services, endpoints, pods, kernel counters |
mod client;
mod views;

use std::{convert::Infallible, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tracing::{debug, warn};

pub use client::{AdminClient, AdminError, exchange};
pub use views::View;

use crate::controller::Controller;

/// Largest rules file the API takes.
const MAX_BODY: usize = 1 << 20;

pub async fn serve(listener: UnixListener, controller: Arc<Controller>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "admin accept failed");
                continue;
            }
        };
        let controller = controller.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let controller = controller.clone();
                async move { Ok::<_, Infallible>(route(&controller, request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended");
            }
        });
    }
}

/// Binds the socket, replacing a stale one left by a killed daemon.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    json_body(serde_json::to_vec_pretty(value))
}

/// A JSON answer, or 500 if it could not be serialised.
pub(crate) fn json_body(body: Result<Vec<u8>, serde_json::Error>) -> Response<Full<Bytes>> {
    match body {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serialising: {e}"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body + "\n")))
        .expect("static response parts")
}

async fn route(controller: &Controller, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        // The pid tells a starter which daemon answered: through a handover
        // the old one answers on this path until the new one binds it.
        (&Method::GET, ["ready"]) => {
            text(StatusCode::OK, format!("ready pid={}", std::process::id()))
        }
        (&Method::GET, ["flows"]) => json_body(View::Flows.json(&controller.flows)),
        (&Method::GET, ["lanes"]) => json_body(View::Lanes.json(&controller.flows)),
        (&Method::GET, ["rules"]) => json(&controller.rule_rows()),
        (&Method::GET, ["config_dump"]) => json(&controller.config_dump()),
        (&Method::POST, ["rules"]) => {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, format!("reading rules: {e}"));
                }
            };
            match controller.apply_rules_text(&body) {
                Ok(names) => text(StatusCode::OK, format!("applied: {}", names.join(", "))),
                Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        (&Method::POST, ["rules", name, action @ ("enable" | "disable")]) => {
            match controller.set_rule_enabled(name, *action == "enable") {
                Ok(()) => text(StatusCode::OK, format!("rule {name} {action}d")),
                Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
            }
        }
        (&Method::DELETE, ["rules", name]) => match controller.delete_rule(name) {
            Ok(()) => text(StatusCode::OK, format!("rule {name} deleted")),
            Err(e) => text(StatusCode::NOT_FOUND, e.to_string()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        ),
    }
}
