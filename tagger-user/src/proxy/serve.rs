//! One accepted HTTP connection, HTTP/1.1 or HTTP/2 (prior knowledge, as
//! the sniffer saw it), served by hyper (HTTP/1.1) or on h2 directly
//! (HTTP/2, [`http2`]: to know each request's stream id): every request,
//! every stream of a multiplexed connection, is handed to
//! [`RequestContext::handle`] and decided on its own. When the proxy
//! stops, each connection is shut down gracefully: HTTP/2 sends GOAWAY and
//! finishes the streams it accepted, HTTP/1.1 finishes the request in
//! flight and closes.
use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::watch};
use tracing::debug;

use super::{http::RequestContext, http2};

/// How long an HTTP/2 peer has to answer a keep-alive ping.
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// While draining, how long an HTTP/1.1 connection may stay open waiting
/// for its client's next request (answered with `Connection: close`)
/// before it is closed idle. Closing at once would race with a request on
/// its way; a client that sends nothing for this long is not mid-request.
pub const IDLE_CLOSE_AFTER: Duration = Duration::from_secs(3);

/// One accepted HTTP connection from a pod to a managed service: what its
/// requests share, and how long a request head may take.
pub struct Connection {
    pub context: RequestContext,
    /// The settings' `limits.header_read_timeout_ms`, when it was accepted.
    pub header_read_timeout: Duration,
}

impl Connection {
    pub async fn serve(self, stream: TcpStream) {
        // An HTTP/2 client opened with the preface: many requests at once.
        if self.context.multiplexed {
            self.serve_http2(stream).await;
        } else {
            self.serve_http1(stream).await;
        }
    }

    async fn serve_http1(self, stream: TcpStream) {
        let Self {
            context,
            header_read_timeout,
        } = self;
        let gate = context.proxy.gate();
        let mut stop = context.proxy.stopping();
        let context = Arc::new(context);
        let service = service_fn(move |request| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(context.handle(request, None).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // A head not whole in time (slowloris), or a kept-alive
            // connection idle that long: closed.
            .header_read_timeout(header_read_timeout)
            .keep_alive(true)
            // As for the upstream client (see `upstream::Upstreams`).
            .writev(false)
            .serve_connection(TokioIo::new(stream), service)
            // WebSocket and other upgrades (`upgrade`).
            .with_upgrades();
        let result = until_stopped(conn, &mut stop, IDLE_CLOSE_AFTER, |conn| {
            conn.graceful_shutdown()
        })
        .await;
        if let Err(error) = result {
            if error.is_timeout() {
                gate.header_timed_out();
            }
            // Malformed requests get hyper's 400/431 before this; this is the
            // connection-level reason, for the operator.
            debug!(%error, "downstream HTTP/1 connection ended with error");
        }
    }

    /// Served on h2 directly (`http2`): each stream is handled with its id.
    async fn serve_http2(self, stream: TcpStream) {
        let gate = self.context.proxy.gate();
        let mut stop = self.context.proxy.stopping();
        let timeout = self.header_read_timeout;
        // A live HTTP/2 connection may idle for long (a gRPC channel
        // between calls) and is not cut as an idle HTTP/1.1 one is; a peer
        // gone without a word (its pod's namespace deleted) is found by a
        // ping it does not answer, and its place under the limits given
        // back.
        let served = match http2::Server::handshake(
            stream,
            Arc::new(self.context),
            timeout,
            timeout.min(PING_TIMEOUT),
        )
        .await
        {
            Ok(server) => {
                until_stopped(server, &mut stop, Duration::ZERO, |server| {
                    server.graceful_shutdown()
                })
                .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = served {
            if matches!(error, http2::Ended::TimedOut) {
                gate.header_timed_out();
            }
            debug!(%error, "downstream HTTP/2 connection ended with error");
        }
    }
}

/// Runs `conn` to its end; if the proxy stops first, asks it to shut down
/// gracefully (`shutdown`) `delay` after the stop (the connection may end
/// on its own before), and runs it to its end still.
async fn until_stopped<C: Future>(
    conn: C,
    stop: &mut watch::Receiver<bool>,
    delay: Duration,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: it is the one that is ready nearly always.
        biased;
        output = conn.as_mut() => return output,
        () = stopped(stop) => {}
    }
    if !delay.is_zero() {
        tokio::select! {
            biased;
            output = conn.as_mut() => return output,
            () = tokio::time::sleep(delay) => {}
        }
    }
    shutdown(conn.as_mut());
    conn.await
}

/// Completes when the proxy is told to stop; never if it cannot be.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        // The sender is gone: no stop will come.
        std::future::pending::<()>().await;
    }
}
