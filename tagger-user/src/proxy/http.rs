//! Per request (an HTTP/1.1 request or one HTTP/2 stream): decide the
//! lane, choose an endpoint of that lane (else baseline), forward over a
//! pooled upstream connection, stream the answer back (trailers too). A
//! keep-alive or multiplexed connection may carry requests of many lanes.
use std::{net::SocketAddrV4, sync::Arc, sync::atomic::Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tracing::{debug, warn};

use super::{
    Proxy, ProxyError, TagWatch, UpstreamError,
    body::{self, ProxyBody},
    grpc,
    headers::{
        endpoint_uri, host_from_authority, prepare_headers, remove_lane_header, strip_hop_by_hop,
    },
    limits::Admitted,
    upgrade, upstream,
};
use crate::{
    flows::RequestRecord,
    propagation::Correlation,
    routing::{LaneDecision, LaneInputs, choose_endpoint, decide_lane},
    rules::RequestView,
    state::{Endpoint, Service, Snapshot},
};

/// How many endpoints a request with no body may try when upstreams fail.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// What a request is, beyond its headers, that the way out depends on.
struct Shape {
    /// The version it goes to the endpoint in.
    upstream: Version,
    /// A gRPC call: its method for the flow map, and failures answered as
    /// a gRPC status.
    grpc: bool,
    /// An HTTP/1.1 Upgrade (WebSocket) the client asked for.
    upgrade: Option<upgrade::Wanted>,
}

/// What every request of one downstream connection shares.
pub struct RequestContext {
    pub proxy: Arc<Proxy>,
    pub source: String,
    /// `source` names a managed pod (else it is the peer's address: the
    /// caller is not known, and a `lane_header_from` list does not trust
    /// it).
    pub source_is_pod: bool,
    pub source_lane: Option<String>,
    pub service: String,
    /// The service port connected to (a service may have several).
    pub port: Option<u16>,
    pub cookie: u64,
    pub tag_watch: TagWatch,
    /// HTTP/2: many requests in flight on the connection at once.
    pub multiplexed: bool,
    /// The connection's place under the limits, handed to an upgraded
    /// connection that outlives the serving of this one.
    pub admitted: Arc<Admitted>,
    /// Write time of the newest kernel tag used on this connection: a tag
    /// serves one request, never a later one on the same connection.
    pub last_tag_ns: std::sync::atomic::AtomicU64,
}

impl RequestContext {
    /// The kernel's tag for the request being handled: `stream` is the
    /// HTTP/2 stream id the request came on, `None` for HTTP/1.x.
    ///
    /// HTTP/1.x: the connection's tag, if the app wrote one since the last
    /// request on this connection (one request at a time on it).
    ///
    /// HTTP/2: the kernel's tag of exactly this stream (it reads the stream
    /// id from the HEADERS frame the app wrote), taken as it is. Without
    /// one (a runtime the kernel cannot follow to the frame), the
    /// connection's newest tag may have been written for any of the
    /// streams open on it: it is marked concurrent, so that only a
    /// forwarded request id can decide (else untrusted and the safe
    /// default, never a guessed lane). No "written since the last request"
    /// test there: with streams in flight at once, "last" means nothing.
    fn fresh_tag(&self, stream: Option<u32>) -> Option<tagger_common::RequestTag> {
        if !self.tag_watch.may_have_tags() {
            return None;
        }
        let kernel = &self.proxy.kernel;
        if let Some(stream) = stream {
            if let Some(tag) = kernel.stream_tag(self.cookie, stream) {
                return Some(tag);
            }
            let mut tag = kernel.request_tag(self.cookie)?;
            tag.flags |= tagger_common::TAG_CONCURRENT;
            return Some(tag);
        }
        let mut tag = kernel.request_tag(self.cookie)?;
        let previous = self.last_tag_ns.swap(tag.written_ns, Ordering::Relaxed);
        if self.multiplexed {
            // Not reached by the servers (an HTTP/2 request has its stream
            // id); kept so that no caller can make a multiplexed tag exact.
            tag.flags |= tagger_common::TAG_CONCURRENT;
        }
        (tag.written_ns != previous).then_some(tag)
    }

    /// Decides, forwards and answers one request: `stream` is its HTTP/2
    /// stream id (`None` for HTTP/1.x). Generic over the body so that both
    /// servers' bodies (hyper's for HTTP/1.1, h2's stream for HTTP/2) are
    /// boxed once, here, and nothing after depends on which it was.
    pub fn handle<B>(
        &self,
        request: Request<B>,
        stream: Option<u32>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + '_
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<body::BodyError>,
    {
        // Not an `async fn`: the future is the same whichever the body was
        // (and the compiler proves it `Send` once, not per body type).
        let mut request = request.map(body::boxed);
        // gRPC is HTTP/2 only: an HTTP/1.1 request pays no lookup for it.
        let grpc_type = (request.version() == Version::HTTP_2 && grpc::is_grpc(request.headers()))
            .then(|| request.headers().get(header::CONTENT_TYPE).cloned())
            .flatten();
        let upgrade = upgrade::wanted(&mut request);
        let (parts, body) = request.into_parts();
        self.answer(parts, body, stream, grpc_type, upgrade)
    }

    // The futures of this file are written as `async move` blocks rather
    // than `async fn`s wherever an argument is used after an await: an
    // `async fn` keeps each argument twice in its state (as passed, and as
    // the local it is moved into), and a stream's whole chain of futures is
    // one allocation, copied whole into place for every HTTP/2 stream.

    /// The answer to one request: the endpoint's, or tagger's own failure
    /// (a gRPC status to a gRPC client).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    fn answer(
        &self,
        parts: http::request::Parts,
        body: ProxyBody,
        stream: Option<u32>,
        grpc_type: Option<HeaderValue>,
        upgrade: Option<upgrade::Wanted>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + '_ {
        async move {
            let forwarded = self
                .forward(parts, body, stream, grpc_type.is_some(), upgrade)
                .await;
            let mut response = match forwarded {
                Ok(response) => response,
                Err(error) => self.failed(&error, grpc_type),
            };
            if !self.multiplexed && self.proxy.is_stopping() {
                // Draining (a handover, a stop): this connection's last
                // answer. The client hears it before it sends again, so
                // closing races with nothing (closing an idle connection
                // would race with the request the client may be sending at
                // that moment).
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }

    /// tagger's own answer to a request it could not forward.
    fn failed(&self, error: &ProxyError, grpc_type: Option<HeaderValue>) -> Response<ProxyBody> {
        warn!(source = %self.source, service = %self.service, side = error.side(), %error, "request failed");
        self.proxy.flows.metrics().proxy_error(
            &self.service,
            error.side(),
            error.status().as_u16(),
        );
        if let Some(content_type) = grpc_type {
            return grpc::error_response(error, content_type);
        }
        let mut response = Response::new(body::full(format!("tagger: {error}\n")));
        *response.status_mut() = error.status();
        response
            .headers_mut()
            .insert("x-tagger-error", HeaderValue::from_static(error.side()));
        response
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    fn forward(
        &self,
        mut parts: http::request::Parts,
        incoming: ProxyBody,
        stream: Option<u32>,
        grpc: bool,
        upgrade: Option<upgrade::Wanted>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + '_ {
        async move {
            let arrived = std::time::Instant::now();
            let snapshot = self.proxy.state.load_full();
            let service = snapshot
                .service_at(&self.service, self.port)
                .ok_or_else(|| ProxyError::NoEndpoint {
                    service: self.service.clone(),
                    lane: "any".into(),
                })?;
            // A caller the service does not trust with a lane (its
            // `lane_header_from`): the lane header goes before anything reads
            // the request (rules included) and never reaches the endpoint.
            let trusted = service
                .lane_trust
                .trusts(self.source_is_pod.then_some(self.source.as_str()));
            let removed_lane = if trusted {
                None
            } else {
                remove_lane_header(&mut parts.headers, &snapshot.settings)
            };
            // What the app's inbound request carried, when the kernel could tie
            // this request to it: its pass-through headers join this request
            // (so the destination's rules see them) and its lane is inherited.
            let tag = self.fresh_tag(stream);
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
            let header_lane = if trusted {
                snapshot.settings.lane_from_headers(&parts.headers)
            } else {
                removed_lane.as_deref()
            };
            // Rules come after an explicit or inherited lane: evaluate them (and
            // count their hits) only when they can decide.
            let claimed = trusted && (header_lane.is_some() || inherited_lane.is_some());
            let (rule, body) = if !claimed {
                matching_rule(&snapshot, service, &parts, incoming, grpc).await?
            } else {
                (None, incoming)
            };
            let decision = decide_lane(
                &LaneInputs {
                    header: header_lane,
                    inherited: inherited_lane,
                    rule: rule
                        .as_ref()
                        .map(|(lane, name)| (lane.as_str(), name.as_str())),
                    caller_lane: self.source_lane.as_deref(),
                    untrusted_caller: !trusted,
                },
                snapshot.stickiness(service, self.source_is_pod.then_some(self.source.as_str())),
            );
            self.proxy
                .flows
                .metrics()
                .observe_decision(arrived.elapsed());
            let version = upstream::version_for(service, parts.version);
            let shape = Shape {
                upstream: version,
                grpc,
                // An HTTP/2 endpoint cannot take an HTTP/1.1 upgrade: it answers
                // the request as it is.
                upgrade: upgrade.filter(|_| version != Version::HTTP_2),
            };
            prepare_headers(&mut parts.headers, &snapshot, &decision, shape.upstream);
            if let Some(wanted) = &shape.upgrade {
                wanted.restore_request_headers(&mut parts.headers);
            }
            // Between HTTP/1.x and HTTP/2 the version changes (HTTP/1.0 stays
            // HTTP/1.0 to an HTTP/1.1 endpoint, as before).
            if (shape.upstream == Version::HTTP_2) != (parts.version == Version::HTTP_2) {
                if parts.version == Version::HTTP_2 {
                    host_from_authority(&mut parts.headers, &parts.uri);
                } else {
                    // HTTP/2 names the host in `:authority` (the endpoint's,
                    // which keys its pooled connection); a `Host` that differs
                    // from it must not be sent (RFC 9113 8.3.1). HTTP/2 frames
                    // bodies itself: no `Transfer-Encoding` (h2 refuses it).
                    parts.headers.remove(header::HOST);
                    parts.headers.remove(header::TRANSFER_ENCODING);
                }
                parts.version = shape.upstream;
            }
            self.send(
                service,
                parts,
                body,
                &decision,
                inherited.correlation,
                shape,
            )
            .await
        }
    }

    /// Sends to an endpoint of the decided lane. A request without a body is
    /// retried on another endpoint when the connect fails (nothing was sent).
    fn send<'a>(
        &'a self,
        service: &'a Service,
        parts: http::request::Parts,
        body: ProxyBody,
        decision: &'a LaneDecision,
        correlation: Correlation,
        mut shape: Shape,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a {
        // The path is shared bytes: kept for the flow map as the head moves
        // on to the endpoint.
        let path = parts.uri.path_and_query().cloned();
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
        let idempotent = parts.method.is_idempotent();
        let mut parts = Some(parts);
        let mut refused: Vec<SocketAddrV4> = Vec::new();
        async move {
            let rpc = if shape.grpc {
                path.as_ref().and_then(|p| grpc::method_of(p.path()))
            } else {
                None
            };
            let record = |endpoint: &Endpoint, fallback: bool, ok: bool| {
                let stripped = decision.stripped.as_ref();
                // The access log: one event per request, at debug level (a
                // node's request rate is no rate for a log by default).
                debug!(
                    target: "tagger::access",
                    source = %self.source,
                    service = %service.name,
                    endpoint = %endpoint.pod,
                    lane = decision.lane.as_deref().unwrap_or("baseline"),
                    reason = %decision.reason,
                    %correlation,
                    daemon = std::process::id(),
                    fallback,
                    ok,
                    lane_not_trusted = stripped.map(|s| s.from.as_str()),
                    claimed_lane = stripped.map(|s| s.lane.as_str()),
                    "request"
                );
                self.proxy.flows.record(RequestRecord {
                    source: &self.source,
                    service: &service.name,
                    endpoint: &endpoint.pod,
                    lane: decision.lane.as_deref(),
                    reason: &decision.reason,
                    fallback,
                    served_lane: endpoint.lane.as_deref(),
                    correlation,
                    rpc,
                    stripped: stripped.map(|s| s.from),
                    ok,
                })
            };
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
                // A body-less request may be tried again: it keeps its head for
                // the next try. One with a body is tried once: its head moves,
                // no header is copied.
                // (In a block: the head is not kept in the future's state
                // while the endpoint answers.)
                let upstream = {
                    let (mut head, attempt_body) = if retryable {
                        (parts.clone().expect("kept for a retry"), body::empty())
                    } else {
                        (
                            parts.take().expect("a request with a body is sent once"),
                            body.take().expect("a body is sent once"),
                        )
                    };
                    head.uri = endpoint_uri(&endpoint.authority, &head.uri)?;
                    Request::from_parts(head, attempt_body)
                };
                let sent = std::time::Instant::now();
                let result = self.exchange(&mut shape, endpoint.addr, upstream).await;
                self.proxy
                    .flows
                    .metrics()
                    .observe_upstream(&service.name, sent.elapsed());
                let ok = matches!(&result, Ok(r) if !r.status().is_server_error());
                match result {
                    Ok(response) => {
                        record(endpoint, choice.is_fallback(), ok);
                        return Ok(response);
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
                        let safe_to_retry = retryable && (error.is_connect() || idempotent);
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

    /// One try at an endpoint, by the version the request goes in: its
    /// answer's head, hop-by-hop headers out, and its body streaming.
    async fn exchange(
        &self,
        shape: &mut Shape,
        addr: SocketAddrV4,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        if shape.upstream == Version::HTTP_2 {
            let mut response = self.proxy.upstreams.http2.send(addr, request).await?;
            strip_hop_by_hop(response.headers_mut());
            return Ok(response);
        }
        let mut response = self.proxy.upstreams.http1.request(request).await?;
        let switched = shape
            .upgrade
            .take()
            .is_some_and(|wanted| wanted.finish(&mut response, self.admitted.clone()));
        let (mut parts, incoming) = response.into_parts();
        if switched {
            upgrade::strip_keeping_switch(&mut parts.headers, strip_hop_by_hop);
        } else {
            strip_hop_by_hop(&mut parts.headers);
        }
        Ok(Response::from_parts(parts, body::boxed(incoming)))
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
/// forwarded whole) only when a rule of the service looks at it, and never
/// for a gRPC call: its messages are length-prefixed protobuf, which no body
/// condition (JSON, form) reads, and holding a bidirectional stream's first
/// messages back until the prefix is full would stall it.
async fn matching_rule(
    snapshot: &Snapshot,
    service: &Service,
    parts: &http::request::Parts,
    incoming: ProxyBody,
    grpc: bool,
) -> Result<(Option<(String, String)>, ProxyBody), ProxyError> {
    let rules = &snapshot.rules;
    let (prefix, truncated, body) = if rules.reads_body(&service.name) && !grpc {
        let (prefix, truncated, rest) =
            body::read_prefix(incoming, snapshot.settings.body_match_limit)
                .await
                .map_err(|e| ProxyError::Downstream(format!("reading request body: {e}")))?;
        (prefix, truncated, rest.boxed_unsync())
    } else {
        (Bytes::new(), false, incoming)
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
