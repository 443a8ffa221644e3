//! HTTP/2 to endpoints on h2 directly: one multiplexed connection per
//! endpoint, which every stream of every caller to it shares. Each stream
//! is opened from the task that serves it (no hop through a connection
//! task and back, as hyper's client makes per request), its request body
//! sent by that task too unless it has more to come than it holds.
use std::{
    collections::HashMap,
    future::poll_fn,
    net::SocketAddrV4,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::Body;
use tokio::net::TcpStream;
use tracing::debug;

use super::{pipe::Pipe, recv::RecvBody};
use crate::proxy::{
    UpstreamError,
    body::{self, ProxyBody},
};

// hyper's client defaults (the proxy used them before): bulk data moves
// without waiting for window updates; a peer's header list up to 16 KiB.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// The HTTP/2 connections to endpoints, by endpoint address.
pub struct Clients {
    connect_timeout: Duration,
    idle_timeout: Duration,
    slots: Arc<Slots>,
}

type Slots = Mutex<HashMap<SocketAddrV4, Arc<Slot>>>;

/// One endpoint's connection.
#[derive(Default)]
struct Slot {
    /// Streams whose answer is still being read (for the idle close).
    in_flight: Arc<AtomicUsize>,
    /// The connection while it serves, with its number: its task clears it
    /// when it ends (GOAWAY, reset, idle).
    live: Mutex<Option<(u64, SendRequest<Bytes>)>>,
    /// Held while connecting, with the number of the last connection: the
    /// streams that find none wait for the one being made rather than each
    /// opening their own.
    connecting: tokio::sync::Mutex<u64>,
}

impl Slot {
    fn live(&self) -> Option<(u64, SendRequest<Bytes>)> {
        self.live.lock().expect("h2 slot lock").clone()
    }

    /// Forgets connection `number` (closed): the next stream connects anew.
    fn forget(&self, number: u64) {
        let mut live = self.live.lock().expect("h2 slot lock");
        if live.as_ref().is_some_and(|(n, _)| *n == number) {
            *live = None;
        }
    }
}

impl Clients {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            idle_timeout,
            slots: Arc::default(),
        }
    }

    /// Sends `request` (its URI names the endpoint) to the endpoint at
    /// `addr`; its answer as it starts. A connection found closed before
    /// the stream was opened on it is replaced once: nothing had been sent.
    /// (Not an `async fn`, which would keep `request` twice in its state
    /// across the awaits: see `proxy::http`.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    pub fn send(
        &self,
        addr: SocketAddrV4,
        request: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, UpstreamError>> + Send + '_ {
        async move {
            let slot = self
                .slots
                .lock()
                .expect("h2 clients lock")
                .entry(addr)
                .or_default()
                .clone();
            let mut replaced = false;
            let (number, mut sender) = loop {
                let (number, sender) = match slot.live() {
                    Some(live) => live,
                    // Boxed: connecting is rare, and its future would
                    // otherwise take room in every stream's.
                    None => Box::pin(self.connect(&slot, addr)).await?,
                };
                match sender.ready().await {
                    Ok(sender) => break (number, sender),
                    Err(error) => {
                        slot.forget(number);
                        if replaced {
                            return Err(UpstreamError::H2(error));
                        }
                        debug!(%addr, %error, "pooled HTTP/2 connection closed; connecting anew");
                        replaced = true;
                    }
                }
            };
            let in_flight = InFlight::new(&slot.in_flight);
            let (parts, body) = request.into_parts();
            let end = body.is_end_stream();
            let (response, send) = sender
                .send_request(Request::from_parts(parts, ()), end)
                .inspect_err(|_| slot.forget(number))?;
            if !end {
                // A unary call's body is whole at once: sent here, no task. A
                // body with more to come is sent on by a task of its own while
                // the answer comes (a bidirectional stream needs both at once).
                let mut pipe = Pipe::new(body, send);
                if poll_fn(|cx| Poll::Ready(pipe.poll(cx))).await.is_pending() {
                    tokio::spawn(async move {
                        if let Err(why) = poll_fn(|cx| pipe.poll(cx)).await {
                            debug!(%why, "request body not sent whole");
                        }
                    });
                }
            }
            let (parts, recv) = response.await?.into_parts();
            let body = RecvBody::new(recv, &parts.headers).holding(in_flight);
            Ok(Response::from_parts(parts, body::boxed(body)))
        }
    }

    /// Connects to the endpoint, unless a stream waiting before this one
    /// just did.
    async fn connect(
        &self,
        slot: &Arc<Slot>,
        addr: SocketAddrV4,
    ) -> Result<(u64, SendRequest<Bytes>), UpstreamError> {
        let mut number = slot.connecting.lock().await;
        if let Some(live) = slot.live() {
            return Ok(live);
        }
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        // A small answer goes out now, not after the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(UpstreamError::Handshake)?;
        *number += 1;
        let this = *number;
        *slot.live.lock().expect("h2 slot lock") = Some((this, sender.clone()));
        let (slot, idle_timeout, slots) = (slot.clone(), self.idle_timeout, self.slots.clone());
        tokio::spawn(async move {
            tokio::pin!(connection);
            // Closed after a whole idle period with no stream open (the
            // endpoint may be gone from the service for good).
            let mut idle_checks = tokio::time::interval(idle_timeout);
            idle_checks.tick().await;
            let mut was_idle = false;
            loop {
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(error) = ended {
                            debug!(%addr, %error, "HTTP/2 connection to endpoint ended");
                        }
                        break;
                    }
                    _ = idle_checks.tick() => {
                        let now_idle = slot.in_flight.load(Ordering::Relaxed) == 0;
                        if was_idle && now_idle {
                            break;
                        }
                        was_idle = now_idle;
                    }
                }
            }
            // Forgotten before the connection is dropped (at the end of
            // this task): a stream that takes it in between finds it closed
            // and connects anew.
            slot.forget(this);
            // Endpoints come and go (a pod's address is not reused for
            // long): an endpoint's entry goes with its last connection,
            // unless a stream is about to connect to it again.
            let mut slots = slots.lock().expect("h2 clients lock");
            if slots.get(&addr).is_some_and(|s| Arc::ptr_eq(s, &slot))
                && slot.live().is_none()
                && Arc::strong_count(&slot) == 2
            {
                slots.remove(&addr);
            }
        });
        Ok((this, sender))
    }
}

/// Counts a stream in flight on its endpoint's connection until dropped
/// (with the answer's body, or with the request when it failed).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
