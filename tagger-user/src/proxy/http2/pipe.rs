//! A body sent on an HTTP/2 stream under the peer's flow control, for both
//! directions of the proxy's HTTP/2 streams: answers to clients
//! ([`super::stream`]) and requests to endpoints ([`super::client`]).
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::Body;

use crate::proxy::body::{BodyError, ProxyBody};

/// Why a body did not reach the peer whole.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    #[error("the peer reset the stream ({0:?})")]
    PeerReset(Reason),
    #[error("sending: {0}")]
    Send(h2::Error),
    #[error("the body failed: {0}")]
    Source(BodyError),
}

/// A body on its way to an HTTP/2 peer (an answer to the client, a request
/// to an endpoint): DATA as the peer's window allows (one frame in hand at
/// most, so the body's own side is read no faster than the peer takes),
/// then trailers (a gRPC status) or the end. A body that fails resets the
/// stream; a peer that resets the stream stops it.
pub struct Pipe {
    body: ProxyBody,
    send: SendStream<Bytes>,
    /// A DATA frame read, waiting for window to send it in, and whether it
    /// ends the body.
    waiting: Option<(Bytes, bool)>,
    /// A DATA frame was handed to h2: from then on each waits for window.
    started: bool,
}

impl Pipe {
    pub fn new(body: ProxyBody, send: SendStream<Bytes>) -> Self {
        Self {
            body,
            send,
            waiting: None,
            started: false,
        }
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Broken>> {
        loop {
            // Also registers for a reset while waiting for the body or for
            // window: a peer gone is noticed at once.
            if let Poll::Ready(reset) = self.send.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => Broken::PeerReset(reason),
                    Err(error) => Broken::Send(error),
                }));
            }
            if let Some((data, end)) = self.waiting.take() {
                // The first frame goes to h2 at once, window or not: a
                // stream to an endpoint has none until h2 opens it, and
                // waiting for that sent its HEADERS in one write and its
                // DATA in another (the endpoint read and answered them
                // apart), from a task spawned to wait. h2 holds the frame
                // until the window lets it go: still one frame in hand.
                while self.started && self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Pending => {
                            self.waiting = Some((data, end));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(error))) => {
                            return Poll::Ready(Err(Broken::Send(error)));
                        }
                        // The stream can send no more (reset, or closed).
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(Broken::Send(Reason::CANCEL.into())));
                        }
                    }
                }
                // Window granted: h2 sends as much of the frame as it allows
                // and buffers the rest; no more is read until that has gone.
                self.send.send_data(data, end).map_err(Broken::Send)?;
                self.started = true;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let Some(frame) = ready!(Pin::new(&mut self.body).poll_frame(cx)) else {
                // No trailers: an empty DATA frame ends the stream.
                self.send
                    .send_data(Bytes::new(), true)
                    .map_err(Broken::Send)?;
                return Poll::Ready(Ok(()));
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    self.send.send_reset(reset_reason(&error));
                    return Poll::Ready(Err(Broken::Source(error)));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let end = self.body.is_end_stream();
                    if data.is_empty() {
                        // Takes no window.
                        self.send.send_data(data, end).map_err(Broken::Send)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // Asks for window as the frame is in hand, not before:
                    // capacity asked for ahead would be held from the other
                    // streams of the connection while the body waits.
                    self.send.reserve_capacity(1);
                    self.waiting = Some((data, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.send.reserve_capacity(0);
                        self.send.send_trailers(trailers).map_err(Broken::Send)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// The reset a peer gets for a body that failed on the other side: the
/// other peer's own reason when it reset its stream (a client's CANCEL
/// reaches the endpoint as CANCEL; a gRPC client reads an endpoint's
/// REFUSED_STREAM as such), else INTERNAL_ERROR.
fn reset_reason(error: &(dyn std::error::Error + 'static)) -> Reason {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason().unwrap_or(Reason::INTERNAL_ERROR);
        }
        cause = error.source();
    }
    Reason::INTERNAL_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_reset_reason_is_passed_on() {
        let reset = BodyError::from(h2::Error::from(Reason::REFUSED_STREAM));
        assert_eq!(reset_reason(&reset), Reason::REFUSED_STREAM);
        let other = std::io::Error::other("broken");
        assert_eq!(reset_reason(&other), Reason::INTERNAL_ERROR);
    }
}
