//! Near-valid inbound requests for the header scanner.

use http::HeaderName;
use proptest::{prelude::*, sample::Index};
use tagger::propagation::scan::Wanted;

use super::rules_gen::pick;

/// The scanner's view of the configuration: lane header, alias and one
/// pass-through header.
pub fn with_wanted<R>(f: impl FnOnce(&Wanted<'_>) -> R) -> R {
    let lane = HeaderName::from_static("x-lane");
    let pass = [HeaderName::from_static("mse-username")];
    f(&Wanted {
        lane_header: &lane,
        lane_alias: "x-mse-tag",
        passthrough: &pass,
    })
}

pub fn line_end() -> impl Strategy<Value = &'static str> {
    pick(&["\r\n", "\n"])
}

/// Names of the other headers: never the lane header or its alias.
pub fn other_name() -> impl Strategy<Value = String> {
    prop_oneof![
        pick(&[
            "host",
            "mse-username",
            "MSE-Username",
            "x-user-id",
            "traceparent",
            "x-request-id",
            "b3",
            "content-length"
        ])
        .prop_map(str::to_string),
        "[a-zA-Z0-9-]{1,12}".prop_filter("not a lane header", |n| {
            !n.eq_ignore_ascii_case("x-lane") && !n.eq_ignore_ascii_case("x-mse-tag")
        }),
    ]
}

/// A header line as apps send them, and the ways they go wrong. None of them
/// ends the header block (an empty line) or names the lane.
pub fn header_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // name: value, with any spacing around the colon.
        4 => (other_name(), pick(&[":", ": ", " :\t", ":   "]), "[ -~]{0,20}", line_end())
            .prop_map(|(n, sep, v, end)| format!("{n}{sep}{v}{end}").into_bytes()),
        // obs-fold: continues the previous header's value (blank or not).
        1 => (pick(&[" ", "\t"]), prop_oneof!["[ -~]{1,12}", "[ \t]{0,3}"], line_end())
            .prop_map(|(lead, v, end)| format!("{lead}{v}{end}").into_bytes()),
        // No colon at all.
        1 => ("[a-zA-Z-]{1,12}", line_end()).prop_map(|(n, end)| format!("{n}{end}").into_bytes()),
        // Bytes that are not text: invalid names and values.
        1 => (prop::collection::vec(any::<u8>(), 1..24), line_end()).prop_filter_map(
            "would end the block, fold, or name the lane",
            |(mut bytes, end)| {
                bytes.retain(|b| *b != b'\n');
                let line = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
                let lower = bytes.to_ascii_lowercase();
                let names_lane = lower.windows(6).any(|w| w == b"x-lane")
                    || lower.windows(9).any(|w| w == b"x-mse-tag");
                if line.is_empty() || matches!(line[0], b' ' | b'\t') || names_lane {
                    return None;
                }
                bytes.extend_from_slice(end.as_bytes());
                Some(bytes)
            },
        ),
    ]
}

/// A request whose header block holds one lane header among mutated
/// others, with where the block ends and the lane it carries.
#[derive(Debug, Clone)]
pub struct NearValid {
    pub bytes: Vec<u8>,
    pub header_end: usize,
    pub lane: String,
}

pub fn near_valid_request() -> impl Strategy<Value = NearValid> {
    let request_line = (
        pick(&["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
        "/[a-zA-Z0-9/?=&._-]{0,20}",
        pick(&["HTTP/1.1", "HTTP/1.0"]),
        line_end(),
    )
        .prop_map(|(m, target, version, end)| format!("{m} {target} {version}{end}"));
    let lane_line = (
        pick(&["x-lane", "X-Lane", "X-LANE"]),
        pick(&["gray", "blue", "canary-1"]),
        pick(&["", " ", "\t", "  "]),
        line_end(),
    );
    (
        request_line,
        prop::collection::vec(header_line(), 0..12),
        any::<Index>(),
        lane_line,
        line_end(),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(first, mut lines, at, (name, lane, pad, end), last, body)| {
                let at = at.index(lines.len() + 1);
                lines.insert(at, format!("{name}:{pad}{lane}{pad}{end}").into_bytes());
                // Folded lines right after it continue the lane's value: one
                // space, then each one's text, blank ones adding nothing
                // (RFC 9112 5.2: obs-fold is whitespace, and a value is trimmed).
                let mut expected = lane.to_string();
                for line in lines[at + 1..]
                    .iter()
                    .take_while(|l| matches!(l[0], b' ' | b'\t'))
                {
                    let more = String::from_utf8_lossy(line);
                    let more = more.trim();
                    if !more.is_empty() {
                        expected.push(' ');
                        expected.push_str(more);
                    }
                }
                let mut bytes = first.into_bytes();
                bytes.extend(lines.concat());
                bytes.extend_from_slice(last.as_bytes());
                let header_end = bytes.len();
                bytes.extend(body);
                NearValid {
                    bytes,
                    header_end,
                    lane: expected,
                }
            },
        )
}
