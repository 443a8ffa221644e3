//! The header scanner for inbound requests seen by the kernel: from the raw
//! first bytes an app read, the lane, the pass-through header values and the
//! ids apps forward. It is lenient (bare LF line ends, folded lines,
//! duplicate headers) because it reads what apps accept, and it never
//! panics on arbitrary bytes.
use http::{HeaderName, HeaderValue};

/// What an inbound request carries that later hops need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundContext {
    /// The lane header's value (configured name, else `x-mse-tag`).
    pub lane: Option<String>,
    /// Values of the configured pass-through headers, first value of each.
    pub passthrough: Vec<(HeaderName, HeaderValue)>,
    /// Request ids apps forward: traceparent's trace id, x-request-id, b3.
    pub ids: Vec<String>,
}

impl InboundContext {
    /// Nothing worth carrying.
    pub fn is_empty(&self) -> bool {
        self.lane.is_none() && self.passthrough.is_empty()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The header block is complete.
    Complete(InboundContext),
    /// The header block has not ended yet: more bytes are needed.
    Partial,
    /// Not an HTTP/1 request.
    NotHttp,
}

/// What to look for.
pub struct Wanted<'a> {
    pub lane_header: &'a HeaderName,
    pub lane_alias: &'a str,
    pub passthrough: &'a [HeaderName],
}

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];

/// Scans the bytes of one request (the start of it).
pub fn scan(bytes: &[u8], wanted: &Wanted<'_>) -> Scan {
    let Some(line_end) = bytes.iter().position(|b| *b == b'\n') else {
        return if looks_like_request_start(bytes) {
            Scan::Partial
        } else {
            Scan::NotHttp
        };
    };
    if !is_request_line(trim_cr(&bytes[..line_end])) {
        return Scan::NotHttp;
    }
    let mut context = InboundContext::default();
    // (name, value) of the header being read; folded lines extend it.
    let mut current: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut rest = &bytes[line_end + 1..];
    loop {
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            return Scan::Partial;
        };
        let line = trim_cr(&rest[..end]);
        rest = &rest[end + 1..];
        if line.is_empty() {
            if let Some((name, value)) = current.take() {
                take_header(&mut context, &name, &value, wanted);
            }
            return Scan::Complete(context);
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // obs-fold: the line continues the previous header's value,
            // joined by one space. The value is trimmed (RFC 9112 5.2): a
            // blank continuation adds nothing, and one after an empty value
            // starts it without a space.
            let more = trim(line);
            if let Some((_, value)) = current.as_mut()
                && !more.is_empty()
            {
                if !value.is_empty() {
                    value.push(b' ');
                }
                value.extend_from_slice(more);
            }
            continue;
        }
        if let Some((name, value)) = current.take() {
            take_header(&mut context, &name, &value, wanted);
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            current = Some((
                trim(&line[..colon]).to_vec(),
                trim(&line[colon + 1..]).to_vec(),
            ));
        }
        // A line without a colon is malformed; apps' parsers differ, we skip it.
    }
}

fn looks_like_request_start(bytes: &[u8]) -> bool {
    METHODS.iter().any(|m| {
        let m = m.as_bytes();
        let n = bytes.len().min(m.len());
        bytes[..n] == m[..n] && (bytes.len() <= m.len() || bytes[m.len()] == b' ')
    })
}

fn is_request_line(line: &[u8]) -> bool {
    // The method starts the line, as `looks_like_request_start` wants while
    // the line is incomplete: with a leading space the whole line was taken
    // for HTTP but its first bytes were not (the daemon rescans as bytes
    // come, so a request read in pieces was dropped as not HTTP). Apps'
    // parsers refuse a leading space too. Found by fuzzing
    // (fuzz/regressions/scan/crash-leading-space-request-line).
    if line.first() == Some(&b' ') {
        return false;
    }
    let mut parts = line.split(|b| *b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    METHODS.iter().any(|m| m.as_bytes() == method) && version.starts_with(b"HTTP/1.")
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

fn take_header(context: &mut InboundContext, name: &[u8], value: &[u8], wanted: &Wanted<'_>) {
    let Ok(name) = HeaderName::from_bytes(name) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    if text.is_empty() {
        return;
    }
    // A value with a byte no header value may hold (a bare CR inside it,
    // NUL, DEL, other controls) is not taken for anything: apps' parsers
    // (httparse, llhttp) refuse such a request, and the lane, pass-through
    // values and ids must be sendable as header values on later hops. Found
    // by fuzzing (fuzz/regressions/scan/crash-bare-cr-in-request-id: an id
    // `463ac35c9f6413ad\ran` came out with its CR).
    if HeaderValue::from_bytes(value).is_err() {
        return;
    }
    // The configured header wins over the alias, whatever their order.
    if name == *wanted.lane_header || (name.as_str() == wanted.lane_alias && context.lane.is_none())
    {
        context.lane = Some(text.to_string());
    }
    if wanted.passthrough.contains(&name)
        && !context.passthrough.iter().any(|(n, _)| *n == name)
        && let Ok(value) = HeaderValue::from_bytes(value)
    {
        context.passthrough.push((name.clone(), value));
    }
    if let Some(id) = request_id(&name, text) {
        context.ids.push(id);
    }
}

/// The id part of the id headers apps forward unchanged.
pub fn request_id(name: &HeaderName, value: &str) -> Option<String> {
    let id = match name.as_str() {
        // version-traceid-parentid-flags: the trace id is what survives hops.
        "traceparent" => value.split('-').nth(1)?,
        "x-request-id" | "x-b3-traceid" => value,
        // traceid-spanid-sampled-parent
        "b3" => value.split('-').next()?,
        _ => return None,
    };
    let id = id.trim();
    (!id.is_empty() && id.len() <= 128).then(|| format!("{}={id}", name.as_str()))
}

#[cfg(test)]
mod tests;
