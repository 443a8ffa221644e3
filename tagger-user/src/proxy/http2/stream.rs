//! One HTTP/2 stream: decided and forwarded by [`RequestContext::handle`]
//! with its stream id, its answer sent back under the client's flow
//! control, and resets crossing both ways: a client that resets its stream
//! has the upstream request dropped (hyper's client resets the upstream
//! stream), an upstream failure mid-answer resets the client's stream.
use std::{
    cell::RefCell,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream, server::SendResponse};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version, header};
use http_body::Body;
use tracing::debug;

use super::recv::RecvBody;
use crate::proxy::{
    body::{BodyError, ProxyBody},
    http::RequestContext,
};

/// Serves the stream `respond` answers on its own task: a slow stream
/// holds up neither the connection nor its other streams.
pub fn spawn(
    context: Arc<RequestContext>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let id = u32::from(respond.stream_id());
    let (parts, recv) = request.into_parts();
    let body = RecvBody::new(recv, &parts.headers);
    let request = Request::from_parts(parts, body);
    tokio::spawn(serve(context, request, respond, id));
}

async fn serve(
    context: Arc<RequestContext>,
    request: Request<RecvBody>,
    mut respond: SendResponse<Bytes>,
    id: u32,
) {
    let response = tokio::select! {
        // The answer first: it is what is ready nearly always.
        biased;
        response = context.handle(request, Some(id)) => response,
        // The client gave up before the answer's head (a cancelled call, a
        // deadline): the request is dropped, and with it the upstream
        // stream.
        reset = poll_fn(|cx| respond.poll_reset(cx)) => {
            debug!(stream = id, ?reset, "client reset the stream before its answer");
            return;
        }
    };
    let (mut head, body) = response.into_parts();
    prepare_head(&mut head.headers, head.version, &body);
    let end = body.is_end_stream();
    let send = match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(send) => send,
        Err(error) => {
            debug!(stream = id, %error, "answer head not sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !end {
        let mut pipe = Pipe {
            body,
            send,
            waiting: None,
        };
        if let Err(why) = poll_fn(|cx| pipe.poll(cx)).await {
            debug!(stream = id, %why, "answer not sent whole");
        }
    }
}

/// HTTP/2 has no connection-specific header fields (RFC 9113 8.2.2): what
/// an HTTP/1.1 endpoint's answer had of them goes (hop-by-hop headers are
/// already gone, `http::strip_hop_by_hop`; h2 refuses to send the rest).
/// `Date` as hyper's server added it (a proxy adds one when the origin did
/// not, RFC 9110 6.6.1), and the length of a body known whole.
fn prepare_head(headers: &mut HeaderMap, version: Version, body: &ProxyBody) {
    if version != Version::HTTP_2 {
        const CONNECTION_SPECIFIC: [HeaderName; 5] = [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ];
        for name in &CONNECTION_SPECIFIC {
            headers.remove(name);
        }
        if headers.get(header::TE).is_some_and(|te| te != "trailers") {
            headers.remove(header::TE);
        }
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
    }
    if !body.is_end_stream()
        && let Some(length) = body.size_hint().exact()
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// The current time as an HTTP date, formatted once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != second {
            *at = second;
            *value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .expect("an HTTP date is a valid header value");
        }
        value.clone()
    })
}

/// Why an answer's body did not reach the client whole.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("the client reset the stream ({0:?})")]
    ClientReset(Reason),
    #[error("sending to the client: {0}")]
    Send(h2::Error),
    #[error("the upstream answer failed: {0}")]
    Upstream(BodyError),
}

/// An answer's body on its way to the client: DATA as the client's window
/// allows (one frame in hand at most, so the upstream is read no faster
/// than the client takes), then trailers (a gRPC status) or the end.
struct Pipe {
    body: ProxyBody,
    send: SendStream<Bytes>,
    /// A DATA frame read from upstream, waiting for window to send it in,
    /// and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
}

impl Pipe {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Broken>> {
        loop {
            // Also registers for a reset while waiting for the body or for
            // window: a client gone is noticed at once.
            if let Poll::Ready(reset) = self.send.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => Broken::ClientReset(reason),
                    Err(error) => Broken::Send(error),
                }));
            }
            if let Some((data, end)) = self.waiting.take() {
                while self.send.capacity() == 0 {
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
                // and buffers the rest; no more is read from upstream until
                // that has gone.
                self.send.send_data(data, end).map_err(Broken::Send)?;
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
                    return Poll::Ready(Err(Broken::Upstream(error)));
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

/// The reset a client gets for an answer that failed upstream: the
/// endpoint's own reason when it reset its stream (a gRPC client reads
/// CANCEL and REFUSED_STREAM as such), else INTERNAL_ERROR.
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

    #[test]
    fn answers_from_http1_endpoints_lose_connection_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        prepare_head(&mut headers, Version::HTTP_11, &crate::proxy::body::empty());
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get(header::TE).is_none());
        assert_eq!(headers["x-kept"], "yes");
        assert!(headers.contains_key(header::DATE));
    }
}
