//! The node proxy: every connection the connect hook redirected lands here.
//!
//! Per connection: find who connected and where it meant to go (the kernel's
//! flow map), sniff whether it speaks HTTP/1 or HTTP/2, then either serve it
//! request by request, stream by stream ([`serve`], [`http`]) or splice the
//! bytes to the original destination untouched ([`passthrough`]).
mod body;
mod error;
mod grpc;
mod headers;
mod http;
mod http2;
pub mod limits;
mod passthrough;
mod serve;
mod upgrade;
mod upstream;

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tagger_common::RequestTag;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, info, warn};

pub use error::{ProxyError, UpstreamError};
/// The sniffer's verdict on first bytes, for the fuzz target (`crate::fuzzing`).
#[doc(hidden)]
pub use passthrough::{H2_PREFACE, METHODS as HTTP_METHODS, SNIFF_LEN, Sniffed, classify};

use crate::{flows::FlowTable, propagation::ContextStore, state::StateHandle};

/// Where a redirected connection came from and meant to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub original_destination: SocketAddrV4,
    pub cgroup_id: u64,
    /// The client socket's cookie: names the connection in the kernel maps.
    pub cookie: u64,
}

/// What the proxy asks the kernel: the kernel maps in production, a table
/// in in-process tests.
pub trait FlowLookup: Send + Sync + 'static {
    /// Where an accepted connection came from and meant to go, by its peer
    /// address. Each connection is claimed once.
    fn take_origin(&self, peer: SocketAddrV4) -> Option<Origin>;

    /// What the kernel saw when the app wrote its newest request on the
    /// connection with this cookie (see `propagation`).
    fn request_tag(&self, _cookie: u64) -> Option<RequestTag> {
        None
    }

    /// What the kernel saw when the app wrote the HEADERS frame that opened
    /// HTTP/2 stream `stream_id` on the connection with this cookie: the
    /// tag of exactly that stream, where the kernel follows the app's
    /// streams (grpc-go: `tagger-ebpf/src/grpc.rs`). `None` where it cannot: the proxy then falls
    /// back to the connection's tag, as not tied to one stream.
    fn stream_tag(&self, _cookie: u64, _stream_id: u32) -> Option<RequestTag> {
        None
    }

    /// When requests from the pod with this cgroup are worth a tag lookup.
    fn tag_watch(&self, _cgroup_id: u64) -> TagWatch {
        TagWatch::Always
    }
}

/// Whether a connection's requests may carry a kernel tag, so that a
/// connection from a pod that never carried a context costs no lookup.
#[derive(Clone)]
pub enum TagWatch {
    /// Look for every request (pods the kernel does not track, tests).
    Always,
    /// Look once the pod's kernel flag says it wrote a tag.
    PodFlag {
        flags: Arc<crate::ebpf::PodFlags>,
        slot: u32,
    },
}

impl TagWatch {
    pub fn may_have_tags(&self) -> bool {
        match self {
            TagWatch::Always => true,
            TagWatch::PodFlag { flags, slot } => flags.is_set(*slot),
        }
    }
}

impl FlowLookup for crate::ebpf::Datapath {
    fn take_origin(&self, peer: SocketAddrV4) -> Option<Origin> {
        self.take_flow(peer).map(|o| Origin {
            original_destination: crate::ebpf::original_destination(&o),
            cgroup_id: o.cgroup_id,
            cookie: o.cookie,
        })
    }

    fn request_tag(&self, cookie: u64) -> Option<RequestTag> {
        crate::ebpf::Datapath::request_tag(self, cookie)
    }

    fn stream_tag(&self, cookie: u64, stream_id: u32) -> Option<RequestTag> {
        crate::ebpf::Datapath::stream_tag(self, cookie, stream_id)
    }

    fn tag_watch(&self, cgroup_id: u64) -> TagWatch {
        match self.pod_flag(cgroup_id) {
            Some((flags, slot)) => TagWatch::PodFlag { flags, slot },
            None => TagWatch::Always,
        }
    }
}

/// Tunables of the data path.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long to wait for a client's first bytes before also connecting
    /// upstream, to let a server-speaks-first protocol greet (the client
    /// may still speak first: an HTTP request is then routed).
    pub detect_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            detect_timeout: Duration::from_millis(300),
            upstream_connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

pub struct Proxy {
    state: StateHandle,
    kernel: Arc<dyn FlowLookup>,
    flows: Arc<FlowTable>,
    contexts: Arc<ContextStore>,
    config: ProxyConfig,
    upstreams: upstream::Upstreams,
    gate: Arc<limits::ConnectionGate>,
    /// Set once when the proxy stops; every HTTP connection and the
    /// accept loop watch it, and hold a receiver while they run.
    stop: watch::Sender<bool>,
}

impl Proxy {
    pub fn new(
        state: StateHandle,
        kernel: Arc<dyn FlowLookup>,
        flows: Arc<FlowTable>,
        contexts: Arc<ContextStore>,
        config: ProxyConfig,
    ) -> Arc<Self> {
        let upstreams = upstream::Upstreams::new(&config);
        Arc::new(Self {
            state,
            kernel,
            flows,
            contexts,
            config,
            upstreams,
            gate: Arc::default(),
            stop: watch::Sender::new(false),
        })
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Whether the proxy is draining.
    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stops gracefully: no more connections are accepted, HTTP/2 clients
    /// get GOAWAY (streams already accepted are served to their end),
    /// HTTP/1.1 connections get `Connection: close` on their next answer
    /// (idle ones are closed only after [`serve::IDLE_CLOSE_AFTER`]: the
    /// client may be sending on them). Waits for them up to `grace`;
    /// whether they all ended in it. Spliced (opaque) connections are not
    /// waited for.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.stop.send_replace(true);
        tokio::time::timeout(grace, self.stop.closed())
            .await
            .is_ok()
    }

    /// Open, refused and timed-out connections, shared with `config-dump`.
    pub fn gate(&self) -> Arc<limits::ConnectionGate> {
        self.gate.clone()
    }

    /// Accepts until [`Proxy::drain`]. Each connection runs on its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        info!(addr = ?listener.local_addr().ok(), "proxy listening");
        let mut stop = self.stopping();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = serve::stopped(&mut stop) => {
                    info!("proxy stops accepting");
                    return;
                }
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = self.clone();
            tokio::spawn(async move { proxy.handle_connection(stream, peer).await });
        }
    }

    async fn handle_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let SocketAddr::V4(peer) = peer else {
            debug!(%peer, "IPv6 peer: not a redirected flow");
            return;
        };
        let Some(origin) = self.kernel.take_origin(peer) else {
            // Not redirected by our hook (someone dialled the proxy port
            // directly): we do not know where it meant to go.
            warn!(%peer, "connection without a recorded origin; closing");
            return;
        };
        let snapshot = self.state.load_full();
        let source = snapshot
            .source_pod(origin.cgroup_id, *peer.ip())
            .map(|p| (p.name.clone(), p.lane.clone()));
        // Held until the connection ends; over a bound, refused at once.
        let admitted = match self.gate.admit(origin.cgroup_id, &snapshot.settings.limits) {
            Ok(admitted) => Arc::new(admitted),
            Err(refusal) => {
                let pod = source
                    .as_ref()
                    .map_or("(not a pod)", |(name, _)| name.as_str());
                self.refuse(stream, pod, refusal).await;
                return;
            }
        };
        let destination = snapshot.destination(origin.original_destination);
        debug!(%peer, dest = %origin.original_destination, ?source, "accepted redirected flow");

        let Some(destination) = destination else {
            passthrough::splice(stream, origin.original_destination, &self.config).await;
            return;
        };
        let header_read_timeout =
            Duration::from_millis(snapshot.settings.limits.header_read_timeout_ms);
        let opaque_target =
            || passthrough::opaque_target(&snapshot, origin.original_destination, destination);
        let sniffed = match passthrough::sniff_http(&stream, self.config.detect_timeout).await {
            passthrough::Sniffed::Silent => {
                let Some(target) = opaque_target() else {
                    warn!(dest = %origin.original_destination, "no endpoint for silent flow");
                    return;
                };
                match passthrough::first_speaker(&stream, target, &self.config, header_read_timeout)
                    .await
                {
                    passthrough::Speaker::Client(http) => http,
                    passthrough::Speaker::Splice(upstream) => {
                        passthrough::splice_with(stream, upstream).await;
                        return;
                    }
                    passthrough::Speaker::Nobody => return,
                }
            }
            sniffed => sniffed,
        };
        match sniffed {
            passthrough::Sniffed::Http | passthrough::Sniffed::Http2 => {
                let source_is_pod = source.is_some();
                let (source_name, source_lane) =
                    source.unwrap_or_else(|| (format!("{}", peer.ip()), None));
                let conn = serve::Connection {
                    context: http::RequestContext {
                        proxy: self.clone(),
                        source: source_name,
                        source_is_pod,
                        source_lane,
                        service: snapshot.services[destination.service()].name.clone(),
                        port: snapshot.services[destination.service()].port,
                        cookie: origin.cookie,
                        tag_watch: self.kernel.tag_watch(origin.cgroup_id),
                        multiplexed: sniffed == passthrough::Sniffed::Http2,
                        admitted,
                        last_tag_ns: std::sync::atomic::AtomicU64::new(0),
                    },
                    header_read_timeout,
                };
                conn.serve(stream).await;
            }
            passthrough::Sniffed::Opaque => match opaque_target() {
                Some(target) => passthrough::splice(stream, target, &self.config).await,
                None => {
                    warn!(dest = %origin.original_destination, "no endpoint for opaque flow")
                }
            },
            passthrough::Sniffed::Closed | passthrough::Sniffed::Silent => {}
        }
    }

    /// A connection over a bound: an HTTP client gets a 503 that says why
    /// (and `Connection: close`), anything else a close. Logged once per
    /// power of two refusals: a flood must not flood the log too.
    async fn refuse(&self, mut stream: TcpStream, pod: &str, refusal: limits::Refusal) {
        let stats = self.gate.stats();
        let refused = stats.refused_over_pod_limit + stats.refused_over_total_limit;
        if refused.is_power_of_two() {
            warn!(source = pod, %refusal, refused, "connection refused");
        }
        if passthrough::sniff_http(&stream, self.config.detect_timeout).await
            == passthrough::Sniffed::Http
        {
            let body = format!("tagger: {refusal} (source {pod})\n");
            let response = format!(
                "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\nx-tagger-error: downstream\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }
}
