//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs`), written once
//! and shared with the regression test (`tests/fuzz_regressions.rs`), which
//! replays every file of `fuzz/corpus` and `fuzz/regressions` through them
//! so that what a fuzzer once found stays fixed without a fuzzer.
//!
//! Each target takes arbitrary bytes, must not panic, and checks what is
//! cheap to check beyond that (it panics when an invariant breaks, which is
//! how a fuzzer learns of it). The property tests in `tests/rule_fuzz.rs`
//! draw from one small vocabulary; these are coverage guided and start from
//! anything.
#![doc(hidden)]

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    config::{ClusterFile, LANE_HEADER_ALIAS},
    daemon::RuleRow,
    propagation::scan::{self, InboundContext, Scan, Wanted},
    proxy::{Sniffed, classify},
    rules::{ConditionSpec, Mode, RequestView, Rule, RuleSet, RuleSpec},
};
// The sniffer's own list: the oracle checks its logic, not a copy of it.
use crate::proxy::{H2_PREFACE, HTTP_METHODS as SNIFF_METHODS, SNIFF_LEN};

/// A target's body: arbitrary bytes in, a panic when something is wrong.
pub type Target = fn(&[u8]);

/// Every target by name, for the regression test and `cargo xtask fuzz`.
pub const TARGETS: [(&str, Target); 4] = [
    ("sniff", sniff),
    ("scan", scan),
    ("rules", rules),
    ("cluster_file", cluster_file),
];

// ---------------------------------------------------------------- sniff

/// The first bytes of a connection, as `sniff_http` peeks them (at most
/// `SNIFF_LEN` at a time, growing): the verdict of every prefix agrees with
/// the definition (HTTP/2 when the whole h2 preface starts it, HTTP when a
/// method and a space do, undecided while it is a strict prefix of either,
/// opaque otherwise), and a decided prefix never
/// changes its mind when more bytes come.
pub fn sniff(data: &[u8]) {
    let mut decided: Option<Sniffed> = None;
    for end in 0..=data.len().min(64) {
        let first = &data[..end];
        let verdict = classify(first);
        let want = if first.is_empty() {
            None
        } else if first.starts_with(H2_PREFACE) {
            Some(Sniffed::Http2)
        } else if H2_PREFACE.starts_with(first) {
            None
        } else if SNIFF_METHODS.iter().any(|m| first.starts_with(m)) {
            Some(Sniffed::Http)
        } else if SNIFF_METHODS
            .iter()
            .any(|m| m.len() > first.len() && m.starts_with(first))
        {
            None
        } else {
            Some(Sniffed::Opaque)
        };
        assert_eq!(verdict, want, "classify({first:?})");
        if let Some(before) = &decided {
            assert_eq!(
                verdict.as_ref(),
                Some(before),
                "changed its mind at {first:?}"
            );
        }
        if verdict.is_some() {
            decided = verdict;
        }
    }
    // Undecided after SNIFF_LEN bytes cannot happen: sniff_http peeks no
    // more.
    if data.len() >= SNIFF_LEN {
        assert!(
            classify(&data[..SNIFF_LEN]).is_some(),
            "undecided after {SNIFF_LEN} bytes"
        );
    }
}

// ---------------------------------------------------------------- scan

/// A request's first bytes to the inbound header scanner, looking for a
/// configured lane header, the alias and two pass-through headers.
///
/// Beyond "no panic": no value it returns holds a byte that cannot be in a
/// header value (CR, LF, NUL, ...), and bytes arriving in pieces give the
/// same answer as all at once (the daemon rescans what it has each time a
/// piece comes): a prefix of a complete request scans as `Partial` (never
/// `NotHttp`, which would drop the request), and the whole as `Complete`.
pub fn scan(data: &[u8]) {
    let lane_header = HeaderName::from_static("x-lane");
    let passthrough = [
        HeaderName::from_static("mse-username"),
        HeaderName::from_static("x-tenant"),
    ];
    let wanted = Wanted {
        lane_header: &lane_header,
        lane_alias: LANE_HEADER_ALIAS,
        passthrough: &passthrough,
    };
    let whole = scan::scan(data, &wanted);
    let Scan::Complete(context) = &whole else {
        return;
    };
    check_context(context, &passthrough);
    // Cut where a piece most likely ends: within the request line, and
    // just before and after each line end.
    let mut cuts: Vec<usize> = (0..data.len().min(40)).collect();
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            cuts.extend([i, i + 1]);
        }
    }
    let end = data.len();
    for cut in cuts.into_iter().filter(|c| *c < end) {
        let (Scan::Complete(_) | Scan::Partial) = scan::scan(&data[..cut], &wanted) else {
            panic!(
                "a prefix of a complete request ({cut} of {end} bytes) is not HTTP: {:?}",
                String::from_utf8_lossy(&data[..cut])
            );
        };
    }
    // More bytes after a complete header block (the body) change nothing.
    let mut longer = data.to_vec();
    longer.extend_from_slice(b"\r\n\r\nGET / HTTP/1.1\r\nx-lane: other\r\n\r\n");
    assert_eq!(
        scan::scan(&longer, &wanted),
        whole,
        "the body changed the headers"
    );
}

fn check_context(context: &InboundContext, passthrough: &[HeaderName]) {
    let clean = |what: &str, text: &[u8]| {
        assert!(
            HeaderValue::from_bytes(text).is_ok(),
            "{what} {:?} cannot be a header value",
            String::from_utf8_lossy(text)
        );
        assert!(!text.is_empty(), "{what} is empty");
    };
    if let Some(lane) = &context.lane {
        clean("lane", lane.as_bytes());
    }
    for (name, value) in &context.passthrough {
        assert!(passthrough.contains(name), "{name} was not asked for");
        clean("pass-through value", value.as_bytes());
    }
    for id in &context.ids {
        clean("request id", id.as_bytes());
    }
}

// ---------------------------------------------------------------- rules

/// Rules as YAML text (up to the first NUL byte, as `tagger rules apply`
/// reads a rules file: `rules: [...]` or a bare list) and rules built from
/// the bytes after it, compiled; when some compile, evaluated against a
/// request built from the rest of the bytes.
///
/// Beyond "no panic": `evaluate` picks the first enabled rule of the service
/// in priority order whose `matches` holds, and gives the same answer for
/// the same draw every time.
pub fn rules(data: &[u8]) {
    let (text, rest) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let mut specs: Vec<RuleSpec> = Vec::new();
    if let Ok(text) = std::str::from_utf8(text) {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RulesFile {
            rules: Vec<RuleSpec>,
        }
        if let Ok(file) = serde_yaml::from_str::<RulesFile>(text) {
            specs = file.rules;
        } else if let Ok(list) = serde_yaml::from_str::<Vec<RuleSpec>>(text) {
            specs = list;
        }
    }
    let mut u = Unstructured::new(rest);
    let extra = u.int_in_range(0..=3u8).unwrap_or(0);
    for _ in 0..extra {
        match rule_spec(&mut u) {
            Ok(spec) => specs.push(spec),
            Err(_) => break,
        }
    }
    let compiled: Vec<Rule> = specs
        .iter()
        .filter_map(|spec| {
            let rule = spec.compile().ok()?;
            listed_again(spec, &rule);
            Some(rule)
        })
        .collect();
    if compiled.is_empty() {
        return;
    }
    let services: Vec<String> = compiled.iter().map(|r| r.service.clone()).collect();
    let set = RuleSet::new(compiled, None);
    let request = Request::build(&mut u);
    let headers = request.header_map();
    let view = request.view(&headers);
    let random = u
        .int_in_range(0..=u32::MAX)
        .map_or(0.5, |n| f64::from(n) / (f64::from(u32::MAX) + 1.0));
    for service in services.iter().map(String::as_str).chain(["no-such"]) {
        let first = set.evaluate(service, &view, random).map(|r| r.name.clone());
        let again = set.evaluate(service, &view, random).map(|r| r.name.clone());
        assert_eq!(first, again, "evaluate is not deterministic for {service}");
        let by_hand = set
            .iter()
            .map(|(rule, _)| rule)
            .find(|r| r.enabled && r.service == service && r.matches(&view, random))
            .map(|r| r.name.clone());
        assert_eq!(
            first, by_hand,
            "evaluate disagrees with matches for {service}"
        );
        let _ = set.reads_body(service);
    }
}

/// `tagger rules list` and the config dump send the rules in force as JSON
/// (`daemon::RuleRow`), and `ctl` reads them back: a rule the daemon accepts
/// must survive that unchanged.
fn listed_again(spec: &RuleSpec, rule: &Rule) {
    let row = RuleRow {
        spec: spec.clone(),
        hits: 0,
    };
    let json = serde_json::to_string(&row)
        .unwrap_or_else(|e| panic!("an accepted rule does not serialise to JSON: {e}: {spec:?}"));
    let back: RuleRow = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("a listed rule does not read back: {e}: {json}"));
    let again = back
        .spec
        .compile()
        .unwrap_or_else(|e| panic!("a listed rule no longer compiles: {e}: {json}"));
    assert_eq!(
        format!("{again:?}"),
        format!("{rule:?}"),
        "a listed rule compiles to another rule: {json}"
    );
}

/// Words that make a rule compile and a request match more often than
/// arbitrary text would.
const WORDS: [&str; 16] = [
    "x-user-id",
    "userId",
    "user.id",
    "items.0.sku",
    "region",
    "gray",
    "hz",
    "1",
    "42",
    "-1",
    "007",
    "1.5",
    "/api",
    "GET",
    "a.b",
    "",
];
const SOURCES: [&str; 8] = [
    "header", "cookie", "query", "body", "host", "path", "method", "param",
];
const OPS: [&str; 14] = [
    "=",
    "==",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "in",
    "not_in",
    "exists",
    "prefix",
    "regex",
    "percentage",
    "mod100",
];

fn word(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    if u.ratio(3, 4)? {
        Ok(u.choose(&WORDS)?.to_string())
    } else {
        let text: &str = u.arbitrary()?;
        Ok(text.chars().take(40).collect())
    }
}

fn yaml_value(u: &mut Unstructured<'_>, depth: u8) -> arbitrary::Result<serde_yaml::Value> {
    use serde_yaml::Value;
    Ok(match u.int_in_range(0..=6u8)? {
        0 | 1 => Value::String(word(u)?),
        2 => Value::Number(i64::arbitrary(u)?.into()),
        3 => Value::Number(u.int_in_range(-3..=120i64)?.into()),
        4 => Value::Number(f64::arbitrary(u)?.into()),
        5 => Value::Bool(bool::arbitrary(u)?),
        _ if depth > 0 => Value::Sequence(vec![yaml_value(u, depth - 1)?]),
        _ => Value::Null,
    })
}

fn maybe<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn rule_spec(u: &mut Unstructured<'_>) -> arbitrary::Result<RuleSpec> {
    let count = u.int_in_range(1..=3u8)?;
    let mut conditions = Vec::new();
    for _ in 0..count {
        let op = if u.ratio(7, 8)? {
            u.choose(&OPS)?.to_string()
        } else {
            word(u)?
        };
        conditions.push(ConditionSpec {
            source: maybe(u, |u| Ok(u.choose(&SOURCES)?.to_string()))?,
            name: maybe(u, word)?,
            op,
            value: maybe(u, |u| yaml_value(u, 1))?,
            values: maybe(u, |u| {
                let n = u.int_in_range(0..=3u8)?;
                (0..n).map(|_| yaml_value(u, 0)).collect()
            })?,
            cmp: maybe(u, |u| Ok(u.choose(&OPS[..7])?.to_string()))?,
        });
    }
    Ok(RuleSpec {
        name: format!("r{}", u.int_in_range(0..=9u8)?),
        service: u.choose(&["charge", "device"])?.to_string(),
        lane: "gray".into(),
        mode: if u.arbitrary()? { Mode::All } else { Mode::Any },
        priority: u.int_in_range(-2..=2)?,
        enabled: u.ratio(7, 8)?,
        conditions,
    })
}

/// A request as the proxy would hand it to the rules.
#[derive(Debug, Default)]
struct Request {
    method: String,
    path: String,
    query: Option<String>,
    host: Option<String>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    body_truncated: bool,
}

impl Request {
    fn build(u: &mut Unstructured<'_>) -> Self {
        Self::draw(u).unwrap_or_default()
    }

    fn draw(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let mut request = Request {
            method: u.choose(&["GET", "POST", "PUT"])?.to_string(),
            path: format!("/{}", word(u)?),
            ..Request::default()
        };
        request.query = maybe(u, |u| {
            let n = u.int_in_range(0..=3u8)?;
            let pairs: Vec<String> = (0..n)
                .map(|_| Ok(format!("{}={}", word(u)?, word(u)?)))
                .collect::<arbitrary::Result<_>>()?;
            Ok(pairs.join("&"))
        })?;
        request.host = maybe(u, |u| {
            Ok(
                u.choose(&["charge", "charge:8080", "[::1]:80", "[::1", "h:x"])?
                    .to_string(),
            )
        })?;
        let n = u.int_in_range(0..=4u8)?;
        for _ in 0..n {
            let name = if u.ratio(3, 4)? {
                u.choose(&["x-user-id", "cookie", "region", "content-type", "userId"])?
                    .as_bytes()
                    .to_vec()
            } else {
                <&[u8]>::arbitrary(u)?.to_vec()
            };
            let value = match u.int_in_range(0..=3u8)? {
                0 => format!("userId={}; region={}", word(u)?, word(u)?).into_bytes(),
                1 => u
                    .choose(&["application/json", "application/x-www-form-urlencoded"])?
                    .as_bytes()
                    .to_vec(),
                2 => word(u)?.into_bytes(),
                _ => <&[u8]>::arbitrary(u)?.to_vec(),
            };
            request.headers.push((name, value));
        }
        request.body_truncated = u.arbitrary()?;
        // The rest but the last 4 bytes (the random draw) is the body.
        request.body = u.bytes(u.len().saturating_sub(4))?.to_vec();
        Ok(request)
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        }
        map
    }

    fn view<'a>(&'a self, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            host: self.host.as_deref(),
            headers,
            body: &self.body,
            body_truncated: self.body_truncated,
        }
    }
}

// ---------------------------------------------------------------- cluster file

/// Text to `ClusterFile::parse` (parsing and validation).
///
/// Beyond "no panic": the verdict does not depend on hash order (two parses
/// of one text agree, error message included), and a file that is accepted
/// has rules that all compile.
pub fn cluster_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    let first = ClusterFile::parse(text, path);
    let again = ClusterFile::parse(text, path);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("two parses disagree: {first:?} / {again:?}"),
    }
    if let Ok(file) = first {
        for rule in &file.rules {
            rule.compile().expect("an accepted file's rules compile");
        }
    }
}
