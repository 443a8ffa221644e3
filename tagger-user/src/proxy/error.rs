//! One error type for the data path that says whose fault it was
//! (downstream or upstream), and the HTTP status the client gets for it.
use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The caller sent something we cannot forward.
    #[error("downstream: {0}")]
    Downstream(String),
    /// No ready endpoint at all in the destination service (of any lane).
    #[error("upstream: service {service} has no ready endpoint (lane {lane})")]
    NoEndpoint { service: String, lane: String },
    /// The chosen endpoint failed (connect refused, reset, bad response).
    #[error("upstream: endpoint {endpoint} of {service}: {source}")]
    Upstream {
        service: String,
        endpoint: String,
        #[source]
        source: UpstreamError,
    },
}

/// How sending to an endpoint failed, by the client that sent it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// hyper's pooled client (HTTP/1.1).
    #[error("{0}")]
    Http1(#[from] hyper_util::client::legacy::Error),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out")]
    ConnectTimeout,
    /// The endpoint accepted the connection but spoke no HTTP/2.
    #[error("HTTP/2 handshake: {0}")]
    Handshake(h2::Error),
    /// The stream or its connection failed (a reset, a GOAWAY).
    #[error("{0}")]
    H2(#[from] h2::Error),
}

impl UpstreamError {
    /// Nothing was sent: the connection was never made (the endpoint is
    /// gone; another may take the request).
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Http1(error) => error.is_connect(),
            Self::Connect(_) | Self::ConnectTimeout => true,
            Self::Handshake(_) | Self::H2(_) => false,
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Downstream(_) => StatusCode::BAD_REQUEST,
            Self::NoEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Which side, for logs and metrics.
    pub fn side(&self) -> &'static str {
        match self {
            Self::Downstream(_) => "downstream",
            Self::NoEndpoint { .. } | Self::Upstream { .. } => "upstream",
        }
    }
}
