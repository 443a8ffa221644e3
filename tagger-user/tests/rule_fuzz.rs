//! Property tests of the rule language and of the inbound header scanner.
//!
//! Rules and requests are drawn from one small vocabulary of keys and
//! values. Drawn independently from the whole space, as they once were, only
//! about 2% of the rules compiled (each of up to three conditions had to hit
//! a valid source, name, operator and value shape by chance) and a request
//! almost never carried a key a rule looks at, so `evaluate` saw hardly more
//! than "missing key". So each run counts what it reached, and fails when too
//! few rules compiled or when a source never both matched and missed.
//!
//! Beyond "never panics", evaluation is checked against two facts that hold
//! for every request: `RuleSet::evaluate` agrees with the rule's own
//! `matches`, and negating every condition of a rule (`=`/`!=`,
//! `in`/`not_in`, `exists`) and swapping any/all gives exactly the opposite
//! answer (De Morgan: a missing key and several values per key included).
use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestRunner},
};
use serde_yaml::Value;
use tagger::{
    propagation::scan::{Scan, Wanted, scan},
    rules::{Cmp, ConditionSpec, Matcher, Mode, RequestView, RuleSet, RuleSpec, Source},
};

/// Names of the headers, cookies and query parameters requests carry and
/// rules look at.
const KEYS: [&str; 5] = ["x-user-id", "mse-username", "userId", "region", "a"];
/// Keys in bodies: dotted JSON paths, and form fields.
const BODY_KEYS: [&str; 5] = ["user.id", "user.vip", "items.0.sku", "userId", "region"];
/// Values both sides use: numbers (negative, leading zeros, decimal, past
/// i64), words, the empty string, and what host, path and method hold.
const VALUES: [&str; 15] = [
    "1",
    "42",
    "101",
    "-1",
    "007",
    "1.5",
    "123456789012345678901",
    "msd01",
    "gray",
    "hz",
    "",
    "POST",
    "charge",
    "/device",
    "true",
];
const PATHS: [&str; 4] = ["/", "/api/v2/users", "/device", "/charge"];
const HOSTS: [&str; 5] = ["charge", "charge:8080", "device", "[::1]:8080", "10.0.0.7"];
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failing inputs are saved next to this file, as `proptest!` does.
        source_file: Some(file!()),
        ..Config::default()
    }
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &[T]) -> impl Strategy<Value = T> + use<T> {
    prop::sample::select(items.to_vec())
}

fn text(s: &str) -> Value {
    Value::String(s.into())
}

/// A value as a rule writes it: mostly text, sometimes a YAML number.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => pick(&VALUES).prop_map(text),
        1 => pick(&[1i64, 42, -1, 101]).prop_map(|n| Value::Number(n.into())),
    ]
}

/// (source, name) of a condition with a key, each with a name it needs.
fn keyed_source() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        3 => (pick(&["header", "cookie", "query"]), pick(&KEYS))
            .prop_map(|(s, k)| (Some(s.to_string()), Some(k.to_string()))),
        2 => pick(&BODY_KEYS).prop_map(|k| (Some("body".to_string()), Some(k.to_string()))),
        1 => pick(&["host", "path", "method"]).prop_map(|s| (Some(s.to_string()), None)),
    ]
}

/// A condition with only its operator set.
fn op(op: &str) -> ConditionSpec {
    ConditionSpec {
        op: op.into(),
        ..ConditionSpec::default()
    }
}

fn number(n: i64) -> Option<Value> {
    Some(Value::Number(n.into()))
}

/// An operator with its operands (value, values, cmp) in the shape it takes.
fn operands() -> impl Strategy<Value = ConditionSpec> {
    let compare = ["=", "==", "!=", ">", ">=", "<", "<="];
    let regexes = ["^msd0[1-3]$", "gray|hz", r"^-?\d+$", "^/api/", "(?i)post"];
    prop_oneof![
        (pick(&compare), scalar()).prop_map(|(o, v)| ConditionSpec {
            value: Some(v),
            ..op(o)
        }),
        (
            pick(&["in", "not_in"]),
            prop::collection::vec(scalar(), 1..4)
        )
            .prop_map(|(o, vs)| {
                ConditionSpec {
                    values: Some(vs),
                    ..op(o)
                }
            }),
        prop::option::of(any::<bool>()).prop_map(|b| ConditionSpec {
            value: b.map(Value::Bool),
            ..op("exists")
        }),
        pick(&["/", "/api", "1", "ms", "g", "c"]).prop_map(|p| ConditionSpec {
            value: Some(text(p)),
            ..op("prefix")
        }),
        pick(&regexes).prop_map(|re| ConditionSpec {
            value: Some(text(re)),
            ..op("regex")
        }),
        pick(&[0i64, 20, 50, 100]).prop_map(|n| ConditionSpec {
            value: number(n),
            ..op("percentage")
        }),
        (pick(&compare), 0i64..100).prop_map(|(cmp, n)| ConditionSpec {
            value: number(n),
            cmp: Some(cmp.to_string()),
            ..op("mod100")
        }),
    ]
}

/// A condition as a careful user writes it: it compiles.
fn well_formed_condition() -> impl Strategy<Value = ConditionSpec> {
    let keyed = (keyed_source(), operands()).prop_map(|((source, name), operands)| ConditionSpec {
        source,
        name,
        ..operands
    });
    // A random percentage takes no source.
    let random = pick(&[0i64, 30, 100]).prop_map(|n| ConditionSpec {
        value: number(n),
        ..op("percentage")
    });
    prop_oneof![9 => keyed, 1 => random]
}

fn any_yaml_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        ".{0,12}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

/// Anything in the shape of a condition: mostly refused by `compile`, which
/// must say why and never panic.
fn free_form_condition() -> impl Strategy<Value = ConditionSpec> {
    let sources = prop::option::of(pick(&[
        "header", "cookie", "query", "body", "host", "path", "method", "bogus",
    ]));
    let ops = pick(&[
        "=",
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
        "??",
    ]);
    (
        sources,
        prop::option::of("[a-zA-Z0-9._ -]{0,10}"),
        ops,
        prop::option::of(any_yaml_value()),
        prop::option::of(prop::collection::vec(any_yaml_value(), 0..4)),
        prop::option::of(pick(&["=", "!=", ">", ">=", "<", "<=", "~"])),
        // Regexes that do and do not compile.
        prop::option::of(pick(&["(", "[z-a]", "a{2,1}", "ok.*"])),
    )
        .prop_map(
            |(source, name, op, value, values, cmp, regex)| ConditionSpec {
                source: source.map(str::to_string),
                name,
                op: op.to_string(),
                value: regex.map(text).or(value),
                values,
                cmp: cmp.map(str::to_string),
            },
        )
}

fn condition() -> impl Strategy<Value = ConditionSpec> {
    prop_oneof![4 => well_formed_condition(), 1 => free_form_condition()]
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    let conditions = prop_oneof![
        1 => Just(Vec::new()), // refused: a rule needs a condition
        9 => prop::collection::vec(condition(), 1..4),
    ];
    (
        conditions,
        any::<bool>(),
        prop::bool::weighted(0.95),
        any::<i32>(),
    )
        .prop_map(|(conditions, all, enabled, priority)| RuleSpec {
            name: "fuzz".into(),
            service: "s".into(),
            lane: "gray".into(),
            mode: if all { Mode::All } else { Mode::Any },
            priority,
            enabled,
            conditions,
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Json,
    Form,
    Raw,
}

/// A request as it arrives, before it is viewed by rules.
#[derive(Debug, Clone)]
struct GenRequest {
    method: &'static str,
    path: String,
    query: Option<String>,
    host: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    /// One `Cookie` header per inner list.
    cookies: Vec<Vec<(&'static str, &'static str)>>,
    body_kind: BodyKind,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// The body was cut at the match limit.
    truncated: bool,
}

fn percent_encode_all(key: &str) -> String {
    key.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn query() -> impl Strategy<Value = Option<String>> {
    let pairs = prop::collection::vec((pick(&KEYS), pick(&VALUES), any::<bool>()), 0..6);
    prop::option::weighted(0.8, (pairs, prop::option::of("[ -~]{0,20}"))).prop_map(|q| {
        q.map(|(pairs, junk)| {
            let mut parts: Vec<String> = pairs
                .into_iter()
                // Percent-encoded keys are the same keys once decoded.
                .map(|(k, v, encode)| {
                    let k = if encode {
                        percent_encode_all(k)
                    } else {
                        k.to_string()
                    };
                    format!("{k}={v}")
                })
                .collect();
            parts.extend(junk);
            parts.join("&")
        })
    })
}

fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        3 => pick(&VALUES).prop_map(|v| serde_json::Value::String(v.into())),
        1 => pick(&[1i64, 42, -1, 101]).prop_map(|n| serde_json::Value::Number(n.into())),
        1 => prop::collection::vec(pick(&VALUES), 0..3)
            .prop_map(|vs| serde_json::Value::Array(vs.into_iter().map(|v| v.into()).collect())),
    ]
}

/// A JSON object with some of the paths rules read (`user.id`, `user.vip`,
/// `items.0.sku`, `userId`, `region`).
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let field = || prop::option::weighted(0.7, json_scalar());
    (
        field(),
        prop::option::weighted(0.7, any::<bool>()),
        field(),
        field(),
        field(),
    )
        .prop_map(|(user_id, vip, sku, top_user_id, region)| {
            let mut user = serde_json::Map::new();
            user.extend(user_id.map(|v| ("id".to_string(), v)));
            user.extend(vip.map(|v| ("vip".to_string(), v.into())));
            let mut root = serde_json::Map::new();
            root.insert("user".into(), user.into());
            if let Some(sku) = sku {
                root.insert("items".into(), serde_json::json!([{ "sku": sku }]));
            }
            root.extend(top_user_id.map(|v| ("userId".to_string(), v)));
            root.extend(region.map(|v| ("region".to_string(), v)));
            serde_json::to_vec(&serde_json::Value::Object(root)).expect("a JSON value")
        })
}

fn form_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((pick(&BODY_KEYS), pick(&VALUES)), 0..6).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    })
}

/// A body, its kind, and the content type it is sent with.
fn body() -> impl Strategy<Value = (BodyKind, Vec<u8>, Option<&'static str>)> {
    let json_types = ["application/json", "application/json; charset=utf-8"];
    let form_types = [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
    ];
    let any_types = [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
    ];
    let json = (json_body(), pick(&json_types)).prop_map(|(b, t)| (BodyKind::Json, b, Some(t)));
    let form = (form_body(), pick(&form_types)).prop_map(|(b, t)| (BodyKind::Form, b, Some(t)));
    let raw = (
        prop::collection::vec(any::<u8>(), 0..100),
        prop::option::of(pick(&any_types)),
    )
        .prop_map(|(b, t)| (BodyKind::Raw, b, t));
    prop_oneof![
        1 => Just((BodyKind::None, Vec::new(), None)),
        3 => json,
        3 => form,
        1 => raw,
    ]
}

fn request() -> impl Strategy<Value = GenRequest> {
    let pairs = || prop::collection::vec((pick(&KEYS), pick(&VALUES)), 0..4);
    (
        pick(&METHODS),
        prop_oneof![3 => pick(&PATHS).prop_map(str::to_string), 1 => "/[ -~]{0,20}"],
        query(),
        prop::option::weighted(0.8, pick(&HOSTS)),
        pairs(),
        prop::collection::vec(pairs(), 0..3),
        body(),
        // Where the match limit cut the body, if it did.
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(
            |(
                method,
                path,
                query,
                host,
                headers,
                cookies,
                (body_kind, mut body, content_type),
                cut,
            )| {
                if let Some(cut) = &cut {
                    body.truncate(cut.index(body.len() + 1));
                }
                GenRequest {
                    method,
                    path,
                    query,
                    host,
                    headers,
                    cookies,
                    body_kind,
                    body,
                    content_type,
                    truncated: cut.is_some(),
                }
            },
        )
}

impl GenRequest {
    fn header_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &str| {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                HeaderValue::from_str(value).expect("a valid value"),
            );
        };
        for (name, value) in &self.headers {
            add(name, value);
        }
        for cookie in &self.cookies {
            let line = cookie
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            add("cookie", &line);
        }
        if let Some(host) = self.host {
            add("host", host);
        }
        if let Some(content_type) = self.content_type {
            add("content-type", content_type);
        }
        headers
    }

    fn view<'a>(&'a self, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method: self.method,
            path: &self.path,
            query: self.query.as_deref(),
            host: self.host,
            headers,
            body: &self.body,
            body_truncated: self.truncated,
        }
    }
}

/// The rule that answers the opposite on every request, when every
/// condition has an exact negation.
fn negated(spec: &RuleSpec) -> Option<RuleSpec> {
    let conditions = spec
        .conditions
        .iter()
        .map(|c| {
            let (op, value) = match (c.op.as_str(), &c.value) {
                ("=" | "==", v) => ("!=", v.clone()),
                ("!=", v) => ("=", v.clone()),
                ("in", v) => ("not_in", v.clone()),
                ("not_in", v) => ("in", v.clone()),
                ("exists", None | Some(Value::Bool(true))) => ("exists", Some(Value::Bool(false))),
                ("exists", Some(Value::Bool(false))) => ("exists", Some(Value::Bool(true))),
                _ => return None,
            };
            Some(ConditionSpec {
                op: op.into(),
                value,
                ..c.clone()
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(RuleSpec {
        mode: match spec.mode {
            Mode::Any => Mode::All,
            Mode::All => Mode::Any,
        },
        conditions,
        ..spec.clone()
    })
}

/// What a run of the rule property reached.
#[derive(Default)]
struct Reached {
    cases: Cell<u32>,
    compiled: Cell<u32>,
    matched: Cell<u32>,
    missed: Cell<u32>,
    negations: Cell<u32>,
    /// How often a condition with a positive operator on a source (for
    /// body, on a body of a kind) matched and missed.
    outcomes: RefCell<BTreeMap<(&'static str, bool), u32>>,
}

fn bump(counter: &Cell<u32>) {
    counter.set(counter.get() + 1);
}

#[test]
fn rules_compile_and_evaluate_over_varied_requests() {
    let reached = Reached::default();
    let mut runner = TestRunner::new(config(2000));
    let result = runner.run(
        &(rule_spec(), request(), 0.0f64..1.0),
        |(spec, request, random)| {
            bump(&reached.cases);
            let Ok(rule) = spec.compile() else {
                return Ok(());
            };
            bump(&reached.compiled);
            let rules = RuleSet::new(vec![rule.clone()], None);
            let headers = request.header_map();
            let view = request.view(&headers);
            let matches = rule.matches(&view, random);
            let chosen = rules.evaluate("s", &view, random);
            prop_assert_eq!(chosen.is_some(), rule.enabled && matches);
            prop_assert!(rules.evaluate("other", &view, random).is_none());
            bump(if chosen.is_some() {
                &reached.matched
            } else {
                &reached.missed
            });
            if let Some(opposite) = negated(&spec) {
                let opposite = opposite.compile().expect("the negation of a valid rule");
                prop_assert_eq!(opposite.matches(&view, random), !matches);
                bump(&reached.negations);
            }
            // Each condition on its own: what its source held and whether
            // it matched. A missing key matches `!=`, `not_in` and
            // `exists: false`, so only the other operators tell that a
            // source's values were there and reached.
            for condition in &rule.conditions {
                let positive = !matches!(
                    condition.matcher,
                    Matcher::Compare(Cmp::Ne, _) | Matcher::NotIn(_) | Matcher::Exists(false)
                );
                let source = match (&condition.source, request.body_kind) {
                    (None, _) => continue,
                    (_, _) if !positive => continue,
                    (Some(Source::Header(_)), _) => "header",
                    (Some(Source::Cookie(_)), _) => "cookie",
                    (Some(Source::Query(_)), _) => "query",
                    (Some(Source::Body(_)), BodyKind::Json) => "body (json)",
                    (Some(Source::Body(_)), BodyKind::Form) => "body (form)",
                    (Some(Source::Body(_)), _) => "body (other)",
                    (Some(Source::Host), _) => "host",
                    (Some(Source::Path), _) => "path",
                    (Some(Source::Method), _) => "method",
                };
                *reached
                    .outcomes
                    .borrow_mut()
                    .entry((source, condition.matches(&view, random)))
                    .or_default() += 1;
            }
            Ok(())
        },
    );
    if let Err(error) = result {
        panic!("{error}");
    }
    let (cases, compiled) = (reached.cases.get(), reached.compiled.get());
    let (matched, missed) = (reached.matched.get(), reached.missed.get());
    eprintln!(
        "{cases} cases: {compiled} compiled and evaluated, {matched} matched, {missed} missed, \
         {} negations checked",
        reached.negations.get()
    );
    assert!(
        f64::from(compiled) >= 0.3 * f64::from(cases),
        "only {compiled} of {cases} rules compiled"
    );
    // Both outcomes, each a real share of the run.
    for (what, count) in [("matched", matched), ("missed", missed)] {
        assert!(
            f64::from(count) >= 0.05 * f64::from(compiled),
            "{what} {count} times of {compiled}"
        );
    }
    assert!(reached.negations.get() >= cases / 20);
    // Every source, and bodies in JSON and form, both matched and missed
    // under a positive operator.
    let outcomes = reached.outcomes.borrow();
    eprintln!("outcomes per source: {outcomes:?}");
    for source in [
        "header",
        "cookie",
        "query",
        "body (json)",
        "body (form)",
        "host",
        "path",
        "method",
    ] {
        for outcome in [true, false] {
            assert!(
                outcomes.get(&(source, outcome)).is_some_and(|n| *n >= 5),
                "a {source} condition {} fewer than 5 times: {outcomes:?}",
                if outcome { "matched" } else { "missed" }
            );
        }
    }
}

/// The scanner's view of the configuration: lane header, alias and one
/// pass-through header.
fn with_wanted<R>(f: impl FnOnce(&Wanted<'_>) -> R) -> R {
    let lane = HeaderName::from_static("x-lane");
    let pass = [HeaderName::from_static("mse-username")];
    f(&Wanted {
        lane_header: &lane,
        lane_alias: "x-mse-tag",
        passthrough: &pass,
    })
}

fn line_end() -> impl Strategy<Value = &'static str> {
    pick(&["\r\n", "\n"])
}

/// Names of the other headers: never the lane header or its alias.
fn other_name() -> impl Strategy<Value = String> {
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
fn header_line() -> impl Strategy<Value = Vec<u8>> {
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
struct NearValid {
    bytes: Vec<u8>,
    header_end: usize,
    lane: String,
}

fn near_valid_request() -> impl Strategy<Value = NearValid> {
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

#[test]
fn the_scanner_reads_near_valid_requests_split_anywhere() {
    let mut runner = TestRunner::new(config(2000));
    let cuts = prop::collection::vec(any::<Index>(), 3);
    let result = runner.run(&(near_valid_request(), cuts), |(request, cuts)| {
        with_wanted(|wanted| {
            let whole = &request.bytes;
            match scan(whole, wanted) {
                Scan::Complete(context) => {
                    prop_assert_eq!(context.lane.as_deref(), Some(request.lane.as_str()));
                }
                other => prop_assert!(false, "{:?}: {:?}", String::from_utf8_lossy(whole), other),
            }
            // What a read cut short shows: never a verdict before the block
            // ends, so the reader waits for more bytes.
            for cut in cuts {
                let cut = cut.index(request.header_end);
                prop_assert_eq!(
                    scan(&whole[..cut], wanted),
                    Scan::Partial,
                    "cut at {} of {:?}",
                    cut,
                    String::from_utf8_lossy(whole)
                );
            }
            Ok(())
        })
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn the_header_scanner_never_panics() {
    let inputs = prop_oneof![
        // Arbitrary bytes, alone or after a valid request line.
        (prop::collection::vec(any::<u8>(), 0..600), any::<bool>()).prop_map(|(bytes, prefix)| {
            let mut input = if prefix {
                b"GET / HTTP/1.1\r\n".to_vec()
            } else {
                Vec::new()
            };
            input.extend(bytes);
            input
        }),
        // Near-valid requests with bytes overwritten anywhere, and half of
        // them cut anywhere.
        (
            near_valid_request(),
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
            prop::option::of(any::<Index>()),
        )
            .prop_map(|(request, flips, cut)| {
                let mut bytes = request.bytes;
                for (at, byte) in flips {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes
            }),
    ];
    let complete = Cell::new(0u32);
    let mut runner = TestRunner::new(config(2000));
    let result = runner.run(&inputs, |input| {
        if let Scan::Complete(_) = with_wanted(|wanted| scan(&input, wanted)) {
            bump(&complete);
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    // The header-reading code ran to the end of a block, not only the
    // request-line check (about a fifth of the inputs do).
    eprintln!("{} complete header blocks of 2000", complete.get());
    assert!(complete.get() >= 200, "{} complete blocks", complete.get());
}
