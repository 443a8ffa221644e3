//! The pooled clients to endpoints. HTTP/1.1: hyper-util's pooled client,
//! connections kept alive per endpoint, one request on each at a time.
//! HTTP/2: one multiplexed connection per endpoint on h2 directly
//! (`http2::client`), which every stream of every caller to that endpoint
//! shares, opened again when it closes (GOAWAY, reset, idle). Failures of
//! both read the same way (`UpstreamError::is_connect`).
use http::Version;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::{ProxyConfig, body::ProxyBody, http2};
use crate::state::Service;

pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

pub struct Upstreams {
    pub http1: UpstreamClient,
    pub http2: http2::client::Clients,
}

impl Upstreams {
    pub fn new(config: &ProxyConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(256)
            // One buffer and one write(2) per message, not writev(2): for the
            // small messages of RPC traffic this measured ~10% less CPU per
            // request (BENCHMARKS.md); bodies are copied once more in memory.
            .http1_writev(false)
            .build(connector);
        let http2 =
            http2::client::Clients::new(config.upstream_connect_timeout, config.pool_idle_timeout);
        Self { http1, http2 }
    }
}

/// The version a request goes to `service`'s endpoints in: the service's
/// `protocol` when the cluster file says it, else the version it came in
/// (h2c prior knowledge stays HTTP/2, HTTP/1.x goes as HTTP/1.1).
pub fn version_for(service: &Service, request: Version) -> Version {
    let http2 = service
        .protocol
        .map_or(request == Version::HTTP_2, |p| p.is_http2());
    if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}
