//! The pooled clients to endpoints. HTTP/1.1: connections kept alive per
//! endpoint, one request on each at a time. HTTP/2: one multiplexed
//! connection per endpoint, which every stream of every caller to that
//! endpoint shares, opened again when it closes (GOAWAY, reset, idle).
//! Both are hyper-util's pooled client, keyed by the endpoint's address,
//! so that failures read the same way (`is_connect`) whatever the protocol.
use http::Version;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::{ProxyConfig, body::ProxyBody};
use crate::state::Service;

pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

pub struct Upstreams {
    http1: UpstreamClient,
    http2: UpstreamClient,
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
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector);
        Self { http1, http2 }
    }

    pub fn client(&self, protocol: Version) -> &UpstreamClient {
        if protocol == Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        }
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
