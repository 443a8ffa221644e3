//! HTTP/1.1 Upgrade (WebSocket and the like, RFC 9110 7.8). The handshake
//! is a request like any other: its lane is decided and an endpoint of that
//! lane chosen. When the endpoint agrees (101 Switching Protocols), the
//! client's and the endpoint's connections are joined byte for byte: what
//! follows is no longer HTTP, and stays with the endpoint the handshake
//! chose.
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::{
    body::Incoming,
    upgrade::{OnUpgrade, Upgraded},
};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::limits::Admitted;

/// A client's wish to switch protocols, taken before the request is
/// forwarded (the upgrade is tied to the downstream request).
pub struct Wanted {
    downstream: OnUpgrade,
    /// The `Upgrade` header as the client sent it.
    protocol: HeaderValue,
}

/// The client's upgrade, if the request asks for one this proxy can carry.
/// One header lookup on a request that does not.
pub fn wanted<B>(request: &mut Request<B>) -> Option<Wanted> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let protocol = request.headers().get(header::UPGRADE)?.clone();
    // `h2c` (RFC 7540 3.2, dropped in RFC 9113) would turn the connection
    // into one HTTP/2 connection to one endpoint, below the per-stream
    // lanes: it is dropped, as every hop-by-hop header, and the endpoint
    // answers in HTTP/1.1.
    if protocol.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return None;
    }
    if !lists_upgrade(request.headers()) {
        return None;
    }
    Some(Wanted {
        downstream: hyper::upgrade::on(request),
        protocol,
    })
}

/// Whether `Connection` names `upgrade`, as an upgrade request must.
fn lists_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

impl Wanted {
    /// Puts back the two headers that ask the endpoint to upgrade (hop by
    /// hop, so removed with the others).
    pub fn restore_request_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::UPGRADE, self.protocol.clone());
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    /// When the endpoint switched protocols (101): joins the two
    /// connections once hyper hands them over, after the 101 is written to
    /// the client, and says so. `admitted` is the client connection's place
    /// under the limits, held until the joined connections end.
    pub fn finish(self, response: &mut Response<Incoming>, admitted: Arc<Admitted>) -> bool {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return false;
        }
        let upstream = hyper::upgrade::on(response);
        tokio::spawn(async move {
            join(self.downstream, upstream).await;
            drop(admitted);
        });
        true
    }
}

/// Strips a 101's hop-by-hop headers with `strip`, but for the two the
/// client needs to see the switch.
pub fn strip_keeping_switch(headers: &mut HeaderMap, strip: impl FnOnce(&mut HeaderMap)) {
    let protocol = headers.remove(header::UPGRADE);
    strip(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

async fn join(downstream: OnUpgrade, upstream: OnUpgrade) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(error) => {
            debug!(%error, "upgrade did not complete");
            return;
        }
    };
    let mut downstream: TokioIo<Upgraded> = TokioIo::new(downstream);
    let mut upstream: TokioIo<Upgraded> = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((up, down)) => debug!(up, down, "upgraded connection done"),
        Err(error) => debug!(%error, "upgraded connection ended with error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_must_list_upgrade() {
        let cases = [
            (vec!["upgrade"], true),
            (vec!["Upgrade"], true),
            (vec!["keep-alive, Upgrade"], true),
            (vec!["keep-alive", "upgrade"], true),
            (vec!["keep-alive"], false),
            (vec!["upgraded"], false),
            (vec![], false),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for value in &values {
                headers.append(header::CONNECTION, HeaderValue::from_static(value));
            }
            assert_eq!(lists_upgrade(&headers), want, "{values:?}");
        }
    }
}
