//! Downstream HTTP/2 (prior knowledge, as gRPC speaks inside a cluster),
//! served on the `h2` crate directly rather than through hyper's server:
//! hyper never says which HTTP/2 stream a request came on, and the stream
//! id is what ties a request to the kernel's tag of exactly that stream
//! (`FlowLookup::stream_tag`). Each stream is handed to
//! [`RequestContext::handle`] with its id ([`stream`]); this file drives
//! the connection: the settings hyper served with, keep-alive pings, and a
//! graceful stop (GOAWAY, accepted streams finished).
pub mod client;
mod pipe;
mod recv;
mod stream;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use h2::{Ping, PingPong, Reason, server::Connection};
use tokio::{
    net::TcpStream,
    time::{Instant, Sleep},
};

use super::http::RequestContext;

// What hyper's HTTP/2 server used (the proxy served with its defaults), so
// that clients see the same connection as before: windows larger than the
// spec's 64 KiB (a proxy moves bulk data), at most 200 streams at once,
// header lists bounded at 16 KiB.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
pub const MAX_CONCURRENT_STREAMS: u32 = 200;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// How an HTTP/2 connection ended, when not cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    /// The client did not finish the preface, or answer a keep-alive ping,
    /// in time.
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    H2(#[from] h2::Error),
}

/// One accepted HTTP/2 connection being served, with its streams (a
/// future: it ends when the connection and its last stream do).
pub struct Server {
    conn: Connection<TcpStream, Bytes>,
    context: Arc<RequestContext>,
    keepalive: Option<KeepAlive>,
    /// The keep-alive gave up on the peer: the connection was shut down.
    timed_out: bool,
    /// The streams being served, polled by this connection's task. A
    /// task spawned per stream cost ~4% of the proxy's CPU under gRPC
    /// load (an allocation aligned for tokio's task cell, the task list's
    /// lock, a scheduling per wake-up). A stream waiting holds up neither
    /// the connection nor its other streams: each is its own future.
    streams: FuturesUnordered<stream::Serving>,
    /// How the connection ended, while its last streams finish.
    ended: Option<Result<(), Ended>>,
}

impl Server {
    /// Reads the client's preface (the sniffer saw it whole, so this takes
    /// no wait but for a client that stalls in the next bytes: bounded by
    /// `keepalive`, the header read timeout) and sends our settings.
    /// Keep-alive pings go every `keepalive`; an answer must come within
    /// `ping_timeout`.
    pub async fn handshake(
        stream: TcpStream,
        context: Arc<RequestContext>,
        keepalive: Duration,
        ping_timeout: Duration,
    ) -> Result<Self, Ended> {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_send_buffer_size(MAX_SEND_BUFFER);
        let mut conn = tokio::time::timeout(keepalive, builder.handshake(stream))
            .await
            .map_err(|_| Ended::TimedOut)??;
        let keepalive = conn.ping_pong().map(|pings| KeepAlive {
            pings,
            interval: keepalive,
            timeout: ping_timeout,
            sleep: Box::pin(tokio::time::sleep(keepalive)),
            sent: false,
        });
        Ok(Self {
            conn,
            context,
            keepalive,
            timed_out: false,
            streams: FuturesUnordered::new(),
            ended: None,
        })
    }

    /// GOAWAY: no new streams; the accepted ones are served to their end,
    /// then the connection closes.
    pub fn graceful_shutdown(mut self: Pin<&mut Self>) {
        self.conn.graceful_shutdown();
    }
}

impl Future for Server {
    type Output = Result<(), Ended>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if let Some(keepalive) = &mut this.keepalive {
                match keepalive.poll(cx) {
                    Alive::Yes => {}
                    Alive::Unknown => this.keepalive = None,
                    Alive::No => {
                        // A peer gone without a word (its pod's namespace
                        // deleted): its place under the limits is given back.
                        this.conn.abrupt_shutdown(Reason::NO_ERROR);
                        this.keepalive = None;
                        this.timed_out = true;
                    }
                }
            }
            // Polling for the next stream is what drives the connection:
            // every frame in and out of every stream goes through here.
            // New streams first, then what the streams have to say, then
            // once more the connection, so that what they said goes out in
            // this wake-up.
            let accepted = this.accept(cx);
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if accepted || this.accept(cx) {
                continue;
            }
            return match this.ended.take() {
                // A connection that failed takes its streams with it (they
                // can no longer answer); one closed cleanly has none left
                // (h2 ends it after its last stream) but may still be
                // piping an answer it had whole.
                Some(Err(error)) => Poll::Ready(Err(error)),
                Some(Ok(())) if this.streams.is_empty() => Poll::Ready(Ok(())),
                ended => {
                    this.ended = ended;
                    Poll::Pending
                }
            };
        }
    }
}

impl Server {
    /// Takes every stream the connection has opened (each joins
    /// `streams`, polled from the next look at them), and notes how the
    /// connection ended if it did: whether any stream was taken.
    fn accept(&mut self, cx: &mut Context<'_>) -> bool {
        let mut accepted = false;
        while self.ended.is_none() {
            match self.conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    self.streams
                        .push(stream::serve(self.context.clone(), request, respond));
                    accepted = true;
                }
                Poll::Ready(ended) => self.ended = Some(self.end(ended)),
                Poll::Pending => break,
            }
        }
        accepted
    }

    /// How the connection ended, from its last `poll_accept`.
    fn end<T>(&self, accepted: Option<Result<T, h2::Error>>) -> Result<(), Ended> {
        match accepted {
            Some(Err(_)) | None if self.timed_out => Err(Ended::TimedOut),
            Some(Err(error)) => Err(error.into()),
            _ => Ok(()),
        }
    }
}

/// Keep-alive pings: a live HTTP/2 connection may idle for long (a gRPC
/// channel between calls) and is not cut as an idle HTTP/1.1 one is; a
/// peer that does not answer a ping in time is taken for gone.
struct KeepAlive {
    pings: PingPong,
    interval: Duration,
    timeout: Duration,
    /// Until the next ping, or while one is out, until it times out.
    sleep: Pin<Box<Sleep>>,
    /// A ping is out, not answered yet.
    sent: bool,
}

enum Alive {
    Yes,
    No,
    /// The connection can take no more pings (it is closing): stop asking.
    Unknown,
}

impl KeepAlive {
    fn poll(&mut self, cx: &mut Context<'_>) -> Alive {
        loop {
            if self.sent {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.sent = false;
                        let next = Instant::now() + self.interval;
                        self.sleep.as_mut().reset(next);
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Alive::Unknown,
                    Poll::Pending => {}
                }
                return match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Alive::No,
                    Poll::Pending => Alive::Yes,
                };
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Alive::Yes;
            }
            if self.pings.send_ping(Ping::opaque()).is_err() {
                return Alive::Unknown;
            }
            self.sent = true;
            let deadline = Instant::now() + self.timeout;
            self.sleep.as_mut().reset(deadline);
        }
    }
}
