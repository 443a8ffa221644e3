//! Rules and requests drawn from one small vocabulary (see main.rs).

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::{prelude::*, sample::Index, test_runner::Config};
use serde_yaml::Value;
use tagger::rules::{ConditionSpec, Mode, RequestView, RuleSpec};

/// Names of the headers, cookies and query parameters requests carry and
/// rules look at.
pub const KEYS: [&str; 5] = ["x-user-id", "mse-username", "userId", "region", "a"];
/// Keys in bodies: dotted JSON paths, and form fields.
pub const BODY_KEYS: [&str; 5] = ["user.id", "user.vip", "items.0.sku", "userId", "region"];
/// Values both sides use: numbers (negative, leading zeros, decimal, past
/// i64), words, the empty string, and what host, path and method hold.
pub const VALUES: [&str; 15] = [
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
pub const PATHS: [&str; 4] = ["/", "/api/v2/users", "/device", "/charge"];
pub const HOSTS: [&str; 5] = ["charge", "charge:8080", "device", "[::1]:8080", "10.0.0.7"];
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

pub fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failing inputs are saved next to this file, as `proptest!` does.
        source_file: Some(file!()),
        ..Config::default()
    }
}

pub fn pick<T: Clone + std::fmt::Debug + 'static>(
    items: &[T],
) -> impl Strategy<Value = T> + use<T> {
    prop::sample::select(items.to_vec())
}

pub fn text(s: &str) -> Value {
    Value::String(s.into())
}

/// A value as a rule writes it: mostly text, sometimes a YAML number.
pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => pick(&VALUES).prop_map(text),
        1 => pick(&[1i64, 42, -1, 101]).prop_map(|n| Value::Number(n.into())),
    ]
}

/// (source, name) of a condition with a key, each with a name it needs.
pub fn keyed_source() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop_oneof![
        3 => (pick(&["header", "cookie", "query"]), pick(&KEYS))
            .prop_map(|(s, k)| (Some(s.to_string()), Some(k.to_string()))),
        2 => pick(&BODY_KEYS).prop_map(|k| (Some("body".to_string()), Some(k.to_string()))),
        1 => pick(&["host", "path", "method"]).prop_map(|s| (Some(s.to_string()), None)),
    ]
}

/// A condition with only its operator set.
pub fn op(op: &str) -> ConditionSpec {
    ConditionSpec {
        op: op.into(),
        ..ConditionSpec::default()
    }
}

pub fn number(n: i64) -> Option<Value> {
    Some(Value::Number(n.into()))
}

/// An operator with its operands (value, values, cmp) in the shape it takes.
pub fn operands() -> impl Strategy<Value = ConditionSpec> {
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
pub fn well_formed_condition() -> impl Strategy<Value = ConditionSpec> {
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

pub fn any_yaml_value() -> impl Strategy<Value = Value> {
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
pub fn free_form_condition() -> impl Strategy<Value = ConditionSpec> {
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

pub fn condition() -> impl Strategy<Value = ConditionSpec> {
    prop_oneof![4 => well_formed_condition(), 1 => free_form_condition()]
}

pub fn rule_spec() -> impl Strategy<Value = RuleSpec> {
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
pub enum BodyKind {
    None,
    Json,
    Form,
    Raw,
}

/// A request as it arrives, before it is viewed by rules.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub method: &'static str,
    pub path: String,
    pub query: Option<String>,
    pub host: Option<&'static str>,
    pub headers: Vec<(&'static str, &'static str)>,
    /// One `Cookie` header per inner list.
    pub cookies: Vec<Vec<(&'static str, &'static str)>>,
    pub body_kind: BodyKind,
    pub body: Vec<u8>,
    pub content_type: Option<&'static str>,
    /// The body was cut at the match limit.
    pub truncated: bool,
}

pub fn percent_encode_all(key: &str) -> String {
    key.bytes().map(|b| format!("%{b:02X}")).collect()
}

pub fn query() -> impl Strategy<Value = Option<String>> {
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

pub fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        3 => pick(&VALUES).prop_map(|v| serde_json::Value::String(v.into())),
        1 => pick(&[1i64, 42, -1, 101]).prop_map(|n| serde_json::Value::Number(n.into())),
        1 => prop::collection::vec(pick(&VALUES), 0..3)
            .prop_map(|vs| serde_json::Value::Array(vs.into_iter().map(|v| v.into()).collect())),
    ]
}

/// A JSON object with some of the paths rules read (`user.id`, `user.vip`,
/// `items.0.sku`, `userId`, `region`).
pub fn json_body() -> impl Strategy<Value = Vec<u8>> {
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

pub fn form_body() -> impl Strategy<Value = Vec<u8>> {
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
pub fn body() -> impl Strategy<Value = (BodyKind, Vec<u8>, Option<&'static str>)> {
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

pub fn request() -> impl Strategy<Value = GenRequest> {
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
    pub fn header_map(&self) -> HeaderMap {
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

    pub fn view<'a>(&'a self, headers: &'a HeaderMap) -> RequestView<'a> {
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
pub fn negated(spec: &RuleSpec) -> Option<RuleSpec> {
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
