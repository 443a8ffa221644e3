//! HTTP/1.1 per request: decide the lane, choose an endpoint of that lane
//! (else baseline), forward over a pooled upstream connection, stream the
//! answer back. A keep-alive connection may carry requests of many lanes.
use std::{convert::Infallible, net::SocketAddrV4, sync::Arc, sync::atomic::Ordering};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::{
    Proxy, ProxyConfig, ProxyError, TagWatch,
    body::{self, ProxyBody},
};
use crate::{
    flows::RequestRecord,
    propagation::Correlation,
    routing::{LaneDecision, LaneInputs, choose_endpoint, decide_lane},
    rules::RequestView,
    state::{Endpoint, Service, Snapshot},
};

pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// Connection-level headers that belong to one hop only (RFC 9110 7.6.1).
/// Typed names: removing by `&str` would parse the name on every request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];
/// How many endpoints a request with no body may try when upstreams fail.
const MAX_CONNECT_ATTEMPTS: usize = 3;

pub fn upstream_client(config: &ProxyConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.upstream_connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(256)
        // One buffer and one write(2) per message, not writev(2): for the
        // small messages of RPC traffic this measured ~10% less CPU per
        // request (BENCHMARKS.md); bodies are copied once more in memory.
        .http1_writev(false)
        .build(connector)
}

/// One accepted HTTP connection from a pod to a managed service.
pub struct Connection {
    pub proxy: Arc<Proxy>,
    pub source: String,
    pub source_lane: Option<String>,
    /// The destination service; each request looks it up in the snapshot
    /// current at that moment (rules and endpoints change live).
    pub service: String,
    /// The service port connected to (a service may have several).
    pub port: Option<u16>,
    /// The client socket's cookie, for the kernel's request tags.
    pub cookie: u64,
    pub tag_watch: TagWatch,
    /// The settings' `limits.header_read_timeout_ms`, when it was accepted.
    pub header_read_timeout: std::time::Duration,
}

impl Connection {
    pub async fn serve(self, stream: TcpStream) {
        let gate = self.proxy.gate();
        let conn = Arc::new(RequestContext {
            proxy: self.proxy,
            source: self.source,
            source_lane: self.source_lane,
            service: self.service,
            port: self.port,
            cookie: self.cookie,
            tag_watch: self.tag_watch,
            last_tag_ns: std::sync::atomic::AtomicU64::new(0),
        });
        let service = service_fn(move |request| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(request).await) }
        });
        let result = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // A head not whole in time (slowloris), or a kept-alive
            // connection idle that long: closed.
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true)
            // As for the upstream client (see `upstream_client`).
            .writev(false)
            .serve_connection(TokioIo::new(stream), service)
            .await;
        if let Err(error) = result {
            if error.is_timeout() {
                gate.header_timed_out();
            }
            // Malformed requests get hyper's 400/431 before this; this is the
            // connection-level reason, for the operator.
            debug!(%error, "downstream connection ended with error");
        }
    }
}

struct RequestContext {
    proxy: Arc<Proxy>,
    source: String,
    source_lane: Option<String>,
    service: String,
    port: Option<u16>,
    cookie: u64,
    tag_watch: TagWatch,
    /// Write time of the newest kernel tag used on this connection: a tag
    /// serves one request, never a later one on the same connection.
    last_tag_ns: std::sync::atomic::AtomicU64,
}

impl RequestContext {
    /// The kernel's tag for the request being handled, if the app wrote one
    /// since the last request on this connection.
    fn fresh_tag(&self) -> Option<tagger_common::RequestTag> {
        if !self.tag_watch.may_have_tags() {
            return None;
        }
        let tag = self.proxy.kernel.request_tag(self.cookie)?;
        let previous = self.last_tag_ns.swap(tag.written_ns, Ordering::Relaxed);
        (tag.written_ns != previous).then_some(tag)
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        match self.forward(request).await {
            Ok(response) => response,
            Err(error) => {
                warn!(source = %self.source, service = %self.service, side = error.side(), %error, "request failed");
                self.proxy.flows.metrics().proxy_error(
                    &self.service,
                    error.side(),
                    error.status().as_u16(),
                );
                let mut response = Response::new(body::full(format!("tagger: {error}\n")));
                *response.status_mut() = error.status();
                response
                    .headers_mut()
                    .insert("x-tagger-error", HeaderValue::from_static(error.side()));
                response
            }
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        let arrived = std::time::Instant::now();
        let snapshot = self.proxy.state.load_full();
        let service = snapshot
            .service_at(&self.service, self.port)
            .ok_or_else(|| ProxyError::NoEndpoint {
                service: self.service.clone(),
                lane: "any".into(),
            })?;
        let (mut parts, incoming) = request.into_parts();
        // What the app's inbound request carried, when the kernel could tie
        // this request to it: its pass-through headers join this request
        // (so the destination's rules see them) and its lane is inherited.
        let tag = self.fresh_tag();
        let inherited = self
            .proxy
            .contexts
            .inherit(tag, &parts.headers, monotonic_ns())
            .await;
        if let Some(context) = &inherited.context {
            for (name, value) in &context.passthrough {
                if !parts.headers.contains_key(name) {
                    parts.headers.insert(name.clone(), value.clone());
                }
            }
        }
        let inherited_lane = inherited
            .context
            .as_ref()
            .and_then(|c| c.lane.as_deref())
            .map(|lane| (lane, inherited.source));
        let header_lane = snapshot.settings.lane_from_headers(&parts.headers);
        // Rules come after an explicit or inherited lane: evaluate them (and
        // count their hits) only when they can decide.
        let (rule, body) = if header_lane.is_none() && inherited_lane.is_none() {
            matching_rule(&snapshot, service, &parts, incoming).await?
        } else {
            (None, incoming.boxed_unsync())
        };
        let decision = decide_lane(
            &LaneInputs {
                header: header_lane,
                inherited: inherited_lane,
                rule: rule
                    .as_ref()
                    .map(|(lane, name)| (lane.as_str(), name.as_str())),
                caller_lane: self.source_lane.as_deref(),
            },
            |lane| snapshot.is_sticky(lane),
        );
        self.proxy
            .flows
            .metrics()
            .observe_decision(arrived.elapsed());
        prepare_headers(&mut parts.headers, &snapshot, &decision);
        self.send(service, parts, body, &decision, inherited.correlation)
            .await
    }

    /// Sends to an endpoint of the decided lane. A request without a body is
    /// retried on another endpoint when the connect fails (nothing was sent).
    async fn send(
        &self,
        service: &Service,
        parts: http::request::Parts,
        body: ProxyBody,
        decision: &LaneDecision,
        correlation: Correlation,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let record = |endpoint: &Endpoint, fallback: bool, ok: bool| {
            self.proxy.flows.record(RequestRecord {
                source: &self.source,
                service: &service.name,
                endpoint: &endpoint.pod,
                lane: decision.lane.as_deref(),
                reason: &decision.reason,
                fallback,
                served_lane: endpoint.lane.as_deref(),
                correlation,
                ok,
            })
        };
        let retryable = body.is_end_stream();
        // A body streams from the client while it is sent: if reading it
        // fails, the upstream request fails, and that is the client's fault.
        let (body, client_failure) = if retryable {
            (body, None)
        } else {
            let (watched, failure) = body::Watched::new(body);
            (watched.boxed_unsync(), Some(failure))
        };
        let mut body = Some(body);
        let mut refused: Vec<SocketAddrV4> = Vec::new();
        let lane = decision.lane.as_deref();
        loop {
            let turn = service.turn.fetch_add(1, Ordering::Relaxed);
            let choice = choose_endpoint(&service.endpoints, lane, turn, |e| {
                refused.contains(&e.addr)
            })
            .ok_or_else(|| ProxyError::NoEndpoint {
                service: service.name.clone(),
                lane: lane.unwrap_or("baseline").to_string(),
            })?;
            let endpoint = choice.endpoint;
            let mut upstream = Request::from_parts(parts.clone(), ());
            *upstream.uri_mut() = endpoint_uri(&endpoint.authority, &parts.uri)?;
            let attempt_body = if retryable {
                body::empty()
            } else {
                body.take().expect("a body is sent once")
            };
            let upstream = upstream.map(|()| attempt_body);
            let sent = std::time::Instant::now();
            let result = self.proxy.client.request(upstream).await;
            self.proxy
                .flows
                .metrics()
                .observe_upstream(&service.name, sent.elapsed());
            let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
            match result {
                Ok(response) => {
                    record(endpoint, choice.is_fallback(), ok);
                    let (mut parts, incoming) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Ok(Response::from_parts(parts, incoming.boxed_unsync()));
                }
                Err(error) => {
                    if let Some(reason) = client_failure.as_ref().and_then(|f| f.get()) {
                        record(endpoint, choice.is_fallback(), false);
                        return Err(ProxyError::Downstream(format!(
                            "reading request body: {reason}"
                        )));
                    }
                    // Connect refused: the endpoint is gone; stop choosing it
                    // until the health check sees it again.
                    if error.is_connect() {
                        endpoint.ready.store(false, Ordering::Relaxed);
                    }
                    refused.push(endpoint.addr);
                    // A body-less request is retried elsewhere when nothing
                    // was sent (connect failed), or when it is idempotent
                    // (RFC 9110 9.2.2) and its pooled connection broke, as
                    // happens when an endpoint dies.
                    let safe_to_retry =
                        retryable && (error.is_connect() || parts.method.is_idempotent());
                    if safe_to_retry && refused.len() < MAX_CONNECT_ATTEMPTS {
                        debug!(endpoint = %endpoint.pod, %error, "upstream failed; trying another endpoint");
                        continue;
                    }
                    record(endpoint, choice.is_fallback(), false);
                    return Err(ProxyError::Upstream {
                        service: service.name.clone(),
                        endpoint: endpoint.pod.clone(),
                        source: error,
                    });
                }
            }
        }
    }
}

/// The request's path and query, sent to `authority` (no formatting and
/// re-parsing per request: both parts are shared bytes).
fn endpoint_uri(authority: &Authority, original: &Uri) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::Downstream(format!("request target {original}: {e}")))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        for name in &listed {
            headers.remove(name.as_str());
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Hop-by-hop headers out; the lane header in when the lane travels on.
fn prepare_headers(headers: &mut HeaderMap, snapshot: &Snapshot, decision: &LaneDecision) {
    strip_hop_by_hop(headers);
    if let (true, Some(lane)) = (decision.carry_header, decision.lane.as_deref())
        && let Ok(value) = HeaderValue::from_str(lane)
    {
        headers.insert(snapshot.settings.lane_header.clone(), value);
    }
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The first rule of `service` that matches the request, as (lane, rule
/// name), and the body to forward. The body is read (a bounded prefix, then
/// forwarded whole) only when a rule of the service looks at it.
async fn matching_rule(
    snapshot: &Snapshot,
    service: &Service,
    parts: &http::request::Parts,
    incoming: Incoming,
) -> Result<(Option<(String, String)>, ProxyBody), ProxyError> {
    let rules = &snapshot.rules;
    let (prefix, truncated, body) = if rules.reads_body(&service.name) {
        let (prefix, truncated, rest) =
            body::read_prefix(incoming, snapshot.settings.body_match_limit)
                .await
                .map_err(|e| ProxyError::Downstream(format!("reading request body: {e}")))?;
        (prefix, truncated, rest.boxed_unsync())
    } else {
        (Bytes::new(), false, incoming.boxed_unsync())
    };
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        host: parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str())),
        headers: &parts.headers,
        body: &prefix,
        body_truncated: truncated,
    };
    let rule = rules
        .evaluate(&service.name, &view, rand::random::<f64>())
        .map(|r| (r.lane.clone(), r.name.clone()));
    Ok((rule, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query_and_names_the_endpoint() {
        let authority = crate::state::authority_of("10.0.0.7:8080".parse().unwrap());
        for (original, expected) in [
            ("/", "http://10.0.0.7:8080/"),
            ("/a/b?x=1&y=%20", "http://10.0.0.7:8080/a/b?x=1&y=%20"),
            // Absolute form from a client that thinks it talks to a proxy.
            ("http://b.svc:8080/z?q", "http://10.0.0.7:8080/z?q"),
            ("http://b.svc:8080", "http://10.0.0.7:8080/"),
        ] {
            let uri: Uri = original.parse().unwrap();
            assert_eq!(
                endpoint_uri(&authority, &uri).unwrap().to_string(),
                expected,
                "{original}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-lane", "gray"),
            ("content-length", "3"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-lane"]);
    }
}
