//! One HTTP/2 stream: decided and forwarded by [`RequestContext::handle`]
//! with its stream id, its answer sent back under the client's flow
//! control, and resets crossing both ways: a client that resets its stream
//! has the upstream request dropped (and with it the upstream stream), an
//! upstream failure mid-answer resets the client's stream.
use std::{
    cell::RefCell,
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use h2::{Reason, RecvStream, server::SendResponse};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version, header};
use http_body::Body;
use tracing::debug;

use super::{pipe::Pipe, recv::RecvBody};
use crate::proxy::{body::ProxyBody, http::RequestContext};

/// A stream being served, polled by its connection's task
/// ([`super::Server`]); boxed, so that the connection holds a pointer per
/// stream, not a future of kilobytes moved as the set grows.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves the stream `respond` answers: decided, forwarded, answered.
pub fn serve(
    context: Arc<RequestContext>,
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> Serving {
    let id = u32::from(respond.stream_id());
    let (parts, recv) = request.into_parts();
    let body = RecvBody::new(recv, &parts.headers);
    let request = Request::from_parts(parts, body);
    Box::pin(answer(context, request, respond, id))
}

async fn answer(
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
        let mut pipe = Pipe::new(body, send);
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

#[cfg(test)]
mod tests {
    use super::*;

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
