//! Bodies on the data path. Bodies stream through; only when a rule of the
//! destination reads the body is a bounded prefix held back, inspected, and
//! then sent first, followed by the rest of the stream.
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// A body's failure, whichever side's: hyper's (an HTTP/1.1 client, an
/// upstream) or h2's (an HTTP/2 client's stream, see `http2`). A concrete
/// type, not a boxed `dyn Error`: with the latter, the compiler could not
/// prove hyper's HTTP/1.1 connection future `Send`.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
    #[error("{0}")]
    H2(#[from] h2::Error),
}

/// Every body on the data path, boxed once: the request body whichever
/// server read it, the answer whichever client or tagger wrote it.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// Boxes a body for the data path.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BodyError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(text: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body whose first frames were already read.
pub struct Prefixed {
    prefix: VecDeque<Frame<Bytes>>,
    prefix_len: u64,
    rest: Option<ProxyBody>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(frame) = self.prefix.pop_front() {
            if let Some(data) = frame.data_ref() {
                self.prefix_len -= data.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .rest
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0));
        // Upper first: SizeHint asserts lower <= upper on every set.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.prefix_len);
        }
        hint.set_lower(rest.lower() + self.prefix_len);
        hint
    }
}

/// A request body on its way upstream that notes whether the client's side
/// of it failed (a malformed chunk, a reset): the upstream request then
/// fails too, but the fault is the client's, not the endpoint's.
pub struct Watched {
    inner: ProxyBody,
    failure: Arc<OnceLock<String>>,
}

impl Watched {
    /// The body, and where its first error is written.
    pub fn new(inner: ProxyBody) -> (Self, Arc<OnceLock<String>>) {
        let failure = Arc::new(OnceLock::new());
        (
            Self {
                inner,
                failure: failure.clone(),
            },
            failure,
        )
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            let _ = self.failure.set(error.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads frames until at least `limit` bytes (or the end) are in hand.
/// Returns the bytes seen (at most `limit`), whether the body went on past
/// them, and the whole body to forward.
pub async fn read_prefix(
    mut body: ProxyBody,
    limit: usize,
) -> Result<(Bytes, bool, Prefixed), BodyError> {
    let mut frames = VecDeque::new();
    let mut seen = BytesMut::new();
    let mut total: u64 = 0;
    let mut ended = false;
    while seen.len() < limit {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(frame) => {
                let frame = frame?;
                if let Some(data) = frame.data_ref() {
                    let room = limit - seen.len();
                    seen.extend_from_slice(&data[..data.len().min(room)]);
                    total += data.len() as u64;
                }
                frames.push_back(frame);
            }
        }
    }
    let truncated = !ended && !body.is_end_stream() || total > seen.len() as u64;
    Ok((
        seen.freeze(),
        truncated,
        Prefixed {
            prefix: frames,
            prefix_len: total,
            rest: if ended { None } else { Some(body) },
        },
    ))
}
