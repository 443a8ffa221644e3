//! Protocol sniffing and opaque TCP forwarding.
use std::{net::SocketAddrV4, time::Duration};

use tokio::{
    io::copy_bidirectional,
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{debug, warn};

use super::ProxyConfig;
use crate::state::{Destination, Snapshot};

/// The request-line starts that make a connection HTTP/1 (with the space).
pub const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113
/// 3.4): how gRPC and other h2c clients open a cleartext connection.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes the sniffer needs to decide (the whole h2 preface).
pub const SNIFF_LEN: usize = H2_PREFACE.len();

#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// HTTP/1.x: a method and a space.
    Http,
    /// HTTP/2 with prior knowledge: the whole connection preface.
    Http2,
    Opaque,
    Closed,
    /// Nothing sent within the window: a client that waits for a server
    /// greeting, or one that connected ahead of need (a pool dialling
    /// spare connections, as Go's Transport does). See [`first_speaker`].
    Silent,
}

/// Classifies what the first bytes say: HTTP/1, HTTP/2, not HTTP, or not
/// known yet (a strict prefix of a method or of the h2 preface).
pub fn classify(first: &[u8]) -> Option<Sniffed> {
    if first.is_empty() {
        return None;
    }
    // The whole preface, not "PRI ": a client that starts like h2 and goes
    // on otherwise is not one hyper's h2 server could serve.
    if first.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http2);
    }
    if H2_PREFACE.starts_with(first) {
        return None;
    }
    for method in METHODS {
        if first.starts_with(method) {
            return Some(Sniffed::Http);
        }
        if method.starts_with(first) {
            return None;
        }
    }
    Some(Sniffed::Opaque)
}

/// Peeks (without consuming) until the first bytes tell whether the client
/// speaks HTTP/1 or HTTP/2. A client that says nothing within `wait` is
/// `Silent`.
pub async fn sniff_http(stream: &TcpStream, wait: Duration) -> Sniffed {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; SNIFF_LEN];
    loop {
        let peeked = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.peek(&mut buf),
        )
        .await
        {
            Err(_) => return Sniffed::Silent,
            Ok(Err(_)) | Ok(Ok(0)) => return Sniffed::Closed,
            Ok(Ok(n)) => n,
        };
        if let Some(verdict) = classify(&buf[..peeked]) {
            return verdict;
        }
        // A method or preface split across segments: wait a moment for the
        // rest.
        if Instant::now() >= deadline {
            return Sniffed::Opaque;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Where opaque bytes go: the original destination when it is an endpoint;
/// for a service address (not routable from the node) a ready endpoint,
/// baseline first, else any ready one, as kube-proxy would pick.
pub fn opaque_target(
    snapshot: &Snapshot,
    original: SocketAddrV4,
    destination: Destination,
) -> Option<SocketAddrV4> {
    match destination {
        Destination::Endpoint { .. } => Some(original),
        Destination::ServiceAddress { service } => {
            let service = &snapshot.services[service];
            let turn = service
                .turn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::routing::choose_endpoint(&service.endpoints, None, turn, |_| false)
                .map(|c| c.endpoint.addr)
        }
    }
}

/// Who spoke first on a connection that was silent through the sniff
/// window.
#[derive(Debug)]
pub enum Speaker {
    /// The client, with HTTP/1 or HTTP/2 (`Http`, `Http2`): route it (the
    /// speculative upstream connection was never written to and is dropped).
    Client(Sniffed),
    /// The server greeted first, or the client sent bytes that are not
    /// HTTP: splice the two.
    Splice(TcpStream),
    /// Nobody within `idle_limit`, or the client left.
    Nobody,
}

/// For a client silent through the sniff window, connects to the opaque
/// target and waits for whichever side speaks first. A server-first
/// protocol gets its greeting through; an HTTP client that merely connected
/// early (a pooled connection used seconds later) is still routed by lane,
/// never spliced to wherever the connection happened to go.
pub async fn first_speaker(
    client: &TcpStream,
    target: SocketAddrV4,
    config: &ProxyConfig,
    idle_limit: Duration,
) -> Speaker {
    let Some(upstream) = connect(target, config).await else {
        return match sniff_http(client, idle_limit).await {
            http @ (Sniffed::Http | Sniffed::Http2) => Speaker::Client(http),
            _ => Speaker::Nobody,
        };
    };
    let client_first = tokio::select! {
        verdict = sniff_http(client, idle_limit) => Some(verdict),
        // Readable: a greeting, or the server hung up. Either way the
        // client must see it.
        _ = upstream.readable() => None,
    };
    match client_first {
        None | Some(Sniffed::Opaque) => Speaker::Splice(upstream),
        Some(http @ (Sniffed::Http | Sniffed::Http2)) => Speaker::Client(http),
        Some(_) => Speaker::Nobody,
    }
}

async fn connect(target: SocketAddrV4, config: &ProxyConfig) -> Option<TcpStream> {
    match timeout(config.upstream_connect_timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Ok(Err(error)) => {
            warn!(%target, %error, "opaque flow: upstream connect failed");
            None
        }
        Err(_) => {
            warn!(%target, "opaque flow: upstream connect timed out");
            None
        }
    }
}

/// Copies bytes both ways until both sides are done.
pub async fn splice(client: TcpStream, target: SocketAddrV4, config: &ProxyConfig) {
    if let Some(upstream) = connect(target, config).await {
        splice_with(client, upstream).await;
    }
}

/// Copies bytes both ways between two connected sockets until both sides
/// are done.
pub async fn splice_with(mut client: TcpStream, mut upstream: TcpStream) {
    let target = upstream.peer_addr().ok();
    match copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(?target, up, down, "opaque flow done"),
        Err(error) => debug!(?target, %error, "opaque flow ended with error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_first_bytes() {
        let cases: &[(&[u8], Option<Sniffed>)] = &[
            (b"", None),
            (b"G", None),
            (b"GE", None),
            (b"GET", None),
            (b"GET ", Some(Sniffed::Http)),
            (b"GET /x HTTP/1.1", Some(Sniffed::Http)),
            (b"POST /", Some(Sniffed::Http)),
            (b"OPTIONS", None),
            (b"GETX", Some(Sniffed::Opaque)),
            (b"get /", Some(Sniffed::Opaque)),
            (b"\x16\x03\x01", Some(Sniffed::Opaque)), // TLS hello
            (b"P", None),
            (b"PRI * HTTP/2.0", None), // the h2 preface, not whole yet
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Sniffed::Http2)),
            // The preface, then the client's SETTINGS frame.
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04",
                Some(Sniffed::Http2),
            ),
            (b"PRI * HTTP/2.0\r\n\r\nXX", Some(Sniffed::Opaque)),
            (b"PRI / HTTP/1.1\r\n", Some(Sniffed::Opaque)),
            (b"hello\n", Some(Sniffed::Opaque)),
        ];
        for (input, want) in cases {
            assert_eq!(
                &classify(input),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
