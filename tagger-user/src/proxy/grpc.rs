//! gRPC on the data path. gRPC is HTTP/2 with a content type, a path of the
//! form `/package.Service/Method`, and an outcome in trailers: the proxy
//! forwards it like any HTTP/2 request (trailers stream through with the
//! body). Three things are its own: recognising a call, answering tagger's
//! own failures as a gRPC status (a gRPC client reads the status from
//! `grpc-status`, and takes an HTTP error page for a broken server), and
//! naming the method for the flow map.
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::{ProxyError, body::ProxyBody};

/// What every gRPC content type starts with (`application/grpc`,
/// `application/grpc+proto`, `application/grpc+json`, ...).
const GRPC_CONTENT_TYPE: &[u8] = b"application/grpc";

/// gRPC status codes tagger answers with (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The request could not be forwarded as sent: the client's fault.
    Internal = 13,
    /// No endpoint, or the endpoint failed: retrying may succeed, which is
    /// what a gRPC client's retry policy keys on.
    Unavailable = 14,
}

impl Code {
    fn as_header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Internal => "13",
            Self::Unavailable => "14",
        })
    }
}

/// Whether a request is a gRPC call, by its content type.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(GRPC_CONTENT_TYPE))
}

/// The gRPC status for one of tagger's own failures.
pub fn code_for(error: &ProxyError) -> Code {
    match error {
        ProxyError::Downstream(_) => Code::Internal,
        ProxyError::NoEndpoint { .. } | ProxyError::Upstream { .. } => Code::Unavailable,
    }
}

/// A "trailers-only" answer (HTTP 200, the status in the only HEADERS
/// frame, no body): what a gRPC server sends when a call fails before any
/// message. `content_type` is the request's, so the client accepts it.
pub fn error_response(error: &ProxyError, content_type: HeaderValue) -> Response<ProxyBody> {
    let mut response = Response::new(super::body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert("grpc-status", code_for(error).as_header());
    let message = percent_encode(&format!("tagger: {error}"));
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", value);
    }
    headers.insert("x-tagger-error", HeaderValue::from_static(error.side()));
    response
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and
/// `%` itself (gRPC's PROTOCOL-HTTP2.md, "Responses").
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The method a gRPC path names, `package.Service/Method` (without the
/// leading `/`), or `None` for a path of another shape. The flow map keeps
/// it per flow: gRPC paths are few per service, where HTTP paths (with ids
/// in them) are not, so only gRPC calls are counted by path.
pub fn method_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    };
    (plain(service) && plain(method)).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_known_by_its_content_type() {
        let cases = [
            (Some("application/grpc"), true),
            (Some("application/grpc+proto"), true),
            (Some("application/grpc-web"), true),
            (Some("application/json"), false),
            (Some("text/plain"), false),
            (None, false),
        ];
        for (content_type, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = content_type {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            }
            assert_eq!(is_grpc(&headers), want, "{content_type:?}");
        }
    }

    #[test]
    fn methods_are_read_from_grpc_paths_only() {
        let cases = [
            (
                "/helloworld.Greeter/SayHello",
                Some("helloworld.Greeter/SayHello"),
            ),
            ("/Svc/M", Some("Svc/M")),
            (
                "/grpc.health.v1.Health/Check",
                Some("grpc.health.v1.Health/Check"),
            ),
            ("/", None),
            ("/pkg.Svc", None),
            ("/pkg.Svc/", None),
            ("//M", None),
            ("/a/b/c", None),
            ("/a/b?x=1", None),
            ("pkg.Svc/M", None),
        ];
        for (path, want) in cases {
            assert_eq!(method_of(path), want, "{path}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        let cases = [
            ("plain text", "plain text"),
            ("100%", "100%25"),
            ("line\nbreak", "line%0Abreak"),
            ("caf\u{e9}", "caf%C3%A9"),
        ];
        for (text, want) in cases {
            assert_eq!(percent_encode(text), want, "{text:?}");
        }
    }

    #[test]
    fn tagger_failures_are_a_trailers_only_status() {
        let cases = [
            (
                ProxyError::NoEndpoint {
                    service: "svc".into(),
                    lane: "gray".into(),
                },
                "14",
                "upstream",
            ),
            (ProxyError::Downstream("bad".into()), "13", "downstream"),
        ];
        for (error, code, side) in cases {
            let response =
                error_response(&error, HeaderValue::from_static("application/grpc+proto"));
            assert_eq!(response.status(), StatusCode::OK, "{error}");
            let header = |name: &str| response.headers().get(name).unwrap().to_str().unwrap();
            assert_eq!(header("grpc-status"), code, "{error}");
            assert_eq!(header("content-type"), "application/grpc+proto");
            assert_eq!(header("x-tagger-error"), side);
            assert!(header("grpc-message").starts_with("tagger: "), "{error}");
            assert!(http_body::Body::is_end_stream(response.body()));
        }
    }
}
