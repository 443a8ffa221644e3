//! HTTP/2 upstreams and clients for the in-process proxy tests: hyper's
//! h2c (prior knowledge) server and client, as gRPC uses them.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::mpsc};

use super::{raw_connect, within};

/// A body fed from a channel: frames as a handler produces them, an error
/// to reset the stream.
pub struct ChannelBody(pub mpsc::Receiver<Result<Frame<Bytes>, io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0.poll_recv(cx)
    }
}

pub type ClientBody = BoxBody<Bytes, io::Error>;

/// One request as an HTTP/2 upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Seen {
    pub version: http::Version,
    pub path: String,
    pub lane: Option<String>,
    pub te: Option<String>,
    pub host: Option<String>,
}

/// What an HTTP/2 upstream saw.
#[derive(Default)]
pub struct H2Log {
    pub connections: AtomicUsize,
    pub requests: Mutex<Vec<H2Seen>>,
    /// Streams whose answer could not be sent on: the peer reset them.
    pub cancelled: AtomicUsize,
}

impl H2Log {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<H2Seen> {
        self.requests.lock().unwrap().clone()
    }

    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// An h2c upstream named `name`. By path:
/// - `/echo`: streams every request data frame back as it comes, then
///   trailers `x-served-by`, `x-bytes` (bytes echoed) and
///   `x-request-trailer` (the request's `x-trailer` trailer, if any);
/// - `/slow?n=N`: N chunks "tick", 20 ms apart (default 200), then
///   trailers; counts a stream the peer reset as cancelled;
/// - `/reset`: one chunk, then resets the stream;
/// - `/goaway`: answers, and shuts its connection down gracefully (GOAWAY),
///   as a server that is being stopped does;
/// - anything else: "`name` lane=`x-lane` path=`path`" and trailer
///   `x-served-by`.
pub fn h2_upstream(name: &'static str, listener: TcpListener) -> Arc<H2Log> {
    let log = Arc::new(H2Log::default());
    let accept_log = log.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // As servers that answer RPCs do: a small answer goes out now,
            // not after the peer's delayed ACK.
            stream.set_nodelay(true).unwrap();
            accept_log.connections.fetch_add(1, Ordering::SeqCst);
            let log = accept_log.clone();
            tokio::spawn(async move {
                let goaway = Arc::new(tokio::sync::Notify::new());
                let asked = goaway.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let log = log.clone();
                    if request.uri().path() == "/goaway" {
                        asked.notify_one();
                    }
                    async move { Ok::<_, io::Error>(answer(name, &log, request)) }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = goaway.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    log
}

fn answer(
    name: &'static str,
    log: &Arc<H2Log>,
    request: Request<Incoming>,
) -> Response<ChannelBody> {
    let headers = request.headers();
    let lane = header(headers, "x-lane");
    log.requests.lock().unwrap().push(H2Seen {
        version: request.version(),
        path: request.uri().path().to_string(),
        lane: lane.clone(),
        te: header(headers, "te"),
        host: header(headers, "host"),
    });
    let (tx, rx) = mpsc::channel(4);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-served-by", HeaderValue::from_static(name));
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    match path.as_str() {
        "/echo" => {
            let mut body = request.into_body();
            tokio::spawn(async move {
                let mut bytes = 0usize;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return };
                    match frame.into_data() {
                        Ok(data) => {
                            bytes += data.len();
                            if tx.send(Ok(Frame::data(data))).await.is_err() {
                                return;
                            }
                        }
                        Err(frame) => {
                            if let Some(value) =
                                frame.trailers_ref().and_then(|t| t.get("x-trailer"))
                            {
                                trailers.insert("x-request-trailer", value.clone());
                            }
                        }
                    }
                }
                trailers.insert("x-bytes", HeaderValue::from(bytes));
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
        }
        "/slow" => {
            let n: usize = query
                .strip_prefix("n=")
                .and_then(|n| n.parse().ok())
                .unwrap_or(200);
            let log = log.clone();
            tokio::spawn(async move {
                for _ in 0..n {
                    let sent = tx.send(Ok(Frame::data(Bytes::from_static(b"tick")))).await;
                    // The proxy resets the stream when its client did; the
                    // channel's reader (hyper's stream) goes then.
                    if sent.is_err() {
                        log.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
        }
        "/reset" => {
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                let _ = tx.send(Err(io::Error::other("upstream gives up"))).await;
            });
        }
        _ => {
            let lane = lane.unwrap_or_else(|| "-".into());
            let text = format!("{name} lane={lane} path={path}");
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(text)))).await;
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
        }
    }
    Response::new(ChannelBody(rx))
}

pub type H2Sender = hyper::client::conn::http2::SendRequest<ClientBody>;

/// One HTTP/2 (prior knowledge) connection to the proxy.
pub async fn h2_connect(addr: SocketAddr) -> H2Sender {
    let stream = raw_connect(addr).await;
    let (sender, connection) = within(
        "HTTP/2 handshake with the proxy",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

pub fn empty_body() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A GET of `path` on `svc`, with a lane header if given.
pub fn h2_get(path: &str, lane: Option<&str>) -> Request<ClientBody> {
    let mut builder = Request::get(format!("http://svc{path}"));
    if let Some(lane) = lane {
        builder = builder.header("x-lane", lane);
    }
    builder.body(empty_body()).unwrap()
}

/// Sends `request`, reads the whole answer: status, body, trailers.
pub async fn h2_send(
    sender: &mut H2Sender,
    request: Request<ClientBody>,
) -> (u16, String, Option<HeaderMap>) {
    within("HTTP/2 connection ready", sender.ready())
        .await
        .unwrap();
    let response = within("response head", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let collected = within("response body", response.into_body().collect())
        .await
        .unwrap();
    let trailers = collected.trailers().cloned();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    (status, body, trailers)
}
