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
        source: hyper_util::client::legacy::Error,
    },
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
