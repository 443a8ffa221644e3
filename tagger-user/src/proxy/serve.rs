//! One accepted HTTP connection, HTTP/1.1 or HTTP/2 (prior knowledge, as
//! the sniffer saw it), served by hyper: every request, every stream of a
//! multiplexed connection, is handed to [`RequestContext::handle`] and
//! decided on its own. When the proxy stops, each connection is shut down
//! gracefully: HTTP/2 sends GOAWAY and finishes the streams it accepted,
//! HTTP/1.1 finishes the request in flight and closes.
use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::watch};
use tracing::debug;

use super::http::RequestContext;

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
        let gate = self.context.proxy.gate();
        let mut stop = self.context.proxy.stopping();
        // An HTTP/2 client opened with the preface: many requests at once.
        let (http2, header_read_timeout) = (self.context.multiplexed, self.header_read_timeout);
        let context = Arc::new(self.context);
        let service = service_fn(move |request| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(context.handle(request).await) }
        });
        let io = TokioIo::new(stream);
        let result = if http2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // A live HTTP/2 connection may idle for long (a gRPC channel
                // between calls) and is not cut as an idle HTTP/1.1 one is;
                // a peer gone without a word (its pod's namespace deleted)
                // is found by a ping it does not answer, and its place
                // under the limits given back.
                .keep_alive_interval(header_read_timeout)
                .keep_alive_timeout(header_read_timeout.min(PING_TIMEOUT))
                .serve_connection(io, service);
            until_stopped(conn, &mut stop, Duration::ZERO, |conn| {
                conn.graceful_shutdown()
            })
            .await
        } else {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // A head not whole in time (slowloris), or a kept-alive
                // connection idle that long: closed.
                .header_read_timeout(header_read_timeout)
                .keep_alive(true)
                // As for the upstream client (see `upstream::Upstreams`).
                .writev(false)
                .serve_connection(io, service)
                // WebSocket and other upgrades (`upgrade`).
                .with_upgrades();
            until_stopped(conn, &mut stop, IDLE_CLOSE_AFTER, |conn| {
                conn.graceful_shutdown()
            })
            .await
        };
        if let Err(error) = result {
            if error.is_timeout() {
                gate.header_timed_out();
            }
            // Malformed requests get hyper's 400/431 before this; this is the
            // connection-level reason, for the operator.
            debug!(%error, http2, "downstream connection ended with error");
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
