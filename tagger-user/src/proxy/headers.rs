//! Headers and targets between the hops: what one hop's headers are, what
//! the upstream request is addressed to.
use http::{
    HeaderMap, HeaderName, HeaderValue, Uri, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};

use super::ProxyError;
use crate::{
    config::LANE_HEADER_ALIAS,
    routing::LaneDecision,
    state::{Settings, Snapshot},
};

/// Connection-level headers that belong to one hop only (RFC 9110 7.6.1).
/// Typed names: removing by `&str` would parse the name on every request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The request's path and query, sent to `authority` (no formatting and
/// re-parsing per request: both parts are shared bytes).
pub fn endpoint_uri(authority: &Authority, original: &Uri) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        original
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::Downstream(format!("request target {original}: {e}")))
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect();
        for name in &listed {
            headers.remove(name.as_str());
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Hop-by-hop headers out; the lane header in when the lane travels on.
/// Going out as HTTP/2, `te: trailers` stays when the client sent it:
/// it says the client takes trailers, and gRPC servers require it.
pub fn prepare_headers(
    headers: &mut HeaderMap,
    snapshot: &Snapshot,
    decision: &LaneDecision,
    upstream: Version,
) {
    let te_trailers = upstream == Version::HTTP_2 && accepts_trailers(headers);
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let (true, Some(lane)) = (decision.carry_header, decision.lane.as_deref())
        && let Ok(value) = HeaderValue::from_str(lane)
    {
        headers.insert(snapshot.settings.lane_header.clone(), value);
    }
}

/// Takes the lane header (and its alias) off a request whose caller is not
/// trusted with one; the lane it named, if any. Every value goes: a second
/// `x-lane` must not slip through where the first was taken.
pub fn remove_lane_header(headers: &mut HeaderMap, settings: &Settings) -> Option<String> {
    let lane = settings.lane_from_headers(headers).map(str::to_string);
    headers.remove(&settings.lane_header);
    headers.remove(LANE_HEADER_ALIAS);
    lane
}

/// Whether `TE` lists `trailers`.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().unwrap_or("").trim() == "trailers")
}

/// A request that came as HTTP/2 and goes out as HTTP/1.1 names its host
/// in `:authority`, which HTTP/1.1 carries as `Host`.
pub fn host_from_authority(headers: &mut HeaderMap, original: &Uri) {
    if headers.contains_key(header::HOST) {
        return;
    }
    if let Some(value) = original
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(header::HOST, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_path_and_query_and_names_the_endpoint() {
        let authority = crate::state::authority_of("10.0.0.7:8080".parse().unwrap());
        for (original, expected) in [
            ("/", "http://10.0.0.7:8080/"),
            ("/a/b?x=1&y=%20", "http://10.0.0.7:8080/a/b?x=1&y=%20"),
            // Absolute form from a client that thinks it talks to a proxy,
            // and every HTTP/2 request (scheme and :authority).
            ("http://b.svc:8080/z?q", "http://10.0.0.7:8080/z?q"),
            ("http://b.svc:8080", "http://10.0.0.7:8080/"),
            (
                "http://b.svc:8080/pkg.Svc/Method",
                "http://10.0.0.7:8080/pkg.Svc/Method",
            ),
        ] {
            let uri: Uri = original.parse().unwrap();
            assert_eq!(
                endpoint_uri(&authority, &uri).unwrap().to_string(),
                expected,
                "{original}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-lane", "gray"),
            ("content-length", "3"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-lane"]);
    }

    #[test]
    fn te_trailers_is_kept_only_going_out_as_http2() {
        let cases: [(&[&str], Version, Option<&str>); 6] = [
            (&["trailers"], Version::HTTP_2, Some("trailers")),
            (&["gzip, trailers"], Version::HTTP_2, Some("trailers")),
            (
                &["deflate", "trailers;q=1"],
                Version::HTTP_2,
                Some("trailers"),
            ),
            (&["gzip"], Version::HTTP_2, None),
            (&[], Version::HTTP_2, None),
            (&["trailers"], Version::HTTP_11, None),
        ];
        let file = crate::config::ClusterFile::parse(
            "services: [{name: s, port: 1, pods: [{name: p, command: [x]}]}]",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let placement = crate::source::file::Placement {
            pods: vec![crate::source::file::PlacedPod {
                name: "p".into(),
                ip: std::net::Ipv4Addr::LOCALHOST,
                cgroup_id: 1,
            }],
            services: vec![],
        };
        let inventory = crate::source::file::inventory(&file, &placement, 0).unwrap();
        let snapshot = Snapshot::build(&inventory, &file.rules, None).unwrap();
        let decision = crate::routing::decide_lane(
            &crate::routing::LaneInputs {
                header: None,
                inherited: None,
                rule: None,
                caller_lane: None,
                untrusted_caller: false,
            },
            |_| false,
        );
        for (te, version, want) in cases {
            let mut headers = HeaderMap::new();
            for value in te {
                headers.append(header::TE, HeaderValue::from_static(value));
            }
            prepare_headers(&mut headers, &snapshot, &decision, version);
            let got: Vec<&str> = headers
                .get_all(header::TE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(
                got,
                want.into_iter().collect::<Vec<_>>(),
                "{te:?} {version:?}"
            );
        }
    }

    #[test]
    fn host_comes_from_the_authority_when_missing() {
        let cases = [
            (None, "http://svc:8080/p", Some("svc:8080")),
            (Some("given"), "http://svc:8080/p", Some("given")),
            (None, "/p", None),
        ];
        for (host, uri, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(host) = host {
                headers.insert(header::HOST, HeaderValue::from_static(host));
            }
            host_from_authority(&mut headers, &uri.parse().unwrap());
            assert_eq!(
                headers.get(header::HOST).map(|v| v.to_str().unwrap()),
                want,
                "{uri}"
            );
        }
    }
}
