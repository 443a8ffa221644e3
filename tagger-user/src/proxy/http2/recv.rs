//! A client's HTTP/2 request body as an `http_body::Body`, for the data
//! path that forwards it (`RequestContext::handle`).
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use h2::RecvStream;
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};

/// The request body of one stream: its DATA frames, then its trailers.
pub struct RecvBody {
    recv: RecvStream,
    /// The DATA frames are over; trailers (if any) are next.
    data_done: bool,
    /// What `content-length` says is still to come, if it was sent (h2
    /// checks that the DATA frames add up to it).
    remaining: Option<u64>,
    /// An endpoint's answer: counted on its connection while it is read.
    _in_flight: Option<super::client::InFlight>,
}

impl RecvBody {
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let remaining = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Self {
            recv,
            data_done: false,
            remaining,
            _in_flight: None,
        }
    }

    /// The body keeps its stream counted on its connection until dropped.
    pub fn holding(mut self, in_flight: super::client::InFlight) -> Self {
        self._in_flight = Some(in_flight);
        self
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window is given back as each frame is taken on
                    // its way upstream (the upstream side takes the next one
                    // when it has room for it): a client sends as fast as
                    // the endpoint takes, and the proxy never holds more
                    // than a window of it.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            // Ended with its HEADERS (a GET): nothing, and known to be so.
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}
