//! Property tests: rule parsing and evaluation never panic, whatever users
//! write and whatever requests arrive; and the inbound header scanner never
//! panics on arbitrary bytes.
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use tagger::{
    propagation::scan::{Wanted, scan},
    rules::{ConditionSpec, Mode, RequestView, RuleSet, RuleSpec},
};

fn yaml_value() -> impl Strategy<Value = serde_yaml::Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        any::<f64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        ".{0,12}".prop_map(serde_yaml::Value::String),
        any::<bool>().prop_map(serde_yaml::Value::Bool),
        Just(serde_yaml::Value::Null),
    ]
}

fn condition() -> impl Strategy<Value = ConditionSpec> {
    let sources = prop::option::of(prop::sample::select(vec![
        "header", "cookie", "query", "body", "host", "path", "method", "bogus",
    ]));
    let ops = prop::sample::select(vec![
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
        prop::option::of(yaml_value()),
        prop::option::of(prop::collection::vec(yaml_value(), 0..4)),
        prop::option::of(prop::sample::select(vec![
            "=", "!=", ">", ">=", "<", "<=", "~",
        ])),
    )
        .prop_map(|(source, name, op, value, values, cmp)| ConditionSpec {
            source: source.map(str::to_string),
            name,
            op: op.to_string(),
            value,
            values,
            cmp: cmp.map(str::to_string),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn rules_compile_and_evaluate_without_panicking(
        conditions in prop::collection::vec(condition(), 0..4),
        all in any::<bool>(),
        header_value in "[ -~]{0,40}",
        query in "[ -~]{0,60}",
        path in "/[ -~]{0,30}",
        body in prop::collection::vec(any::<u8>(), 0..200),
        json in any::<bool>(),
        truncated in any::<bool>(),
        random in 0.0f64..1.0,
    ) {
        let spec = RuleSpec {
            name: "fuzz".into(),
            service: "s".into(),
            lane: "gray".into(),
            mode: if all { Mode::All } else { Mode::Any },
            priority: 0,
            enabled: true,
            conditions,
        };
        let Ok(rule) = spec.compile() else { return Ok(()) };
        let rules = RuleSet::new(vec![rule], None);
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&header_value) {
            for name in ["x-user-id", "cookie", "host", "a", "mse-username"] {
                headers.append(HeaderName::from_static(name), value.clone());
            }
        }
        let content_type = if json { "application/json" } else { "application/x-www-form-urlencoded" };
        headers.insert("content-type", HeaderValue::from_static(content_type));
        let view = RequestView {
            method: "POST",
            path: &path,
            query: Some(&query),
            host: headers.get("host").and_then(|h| h.to_str().ok()),
            headers: &headers,
            body: &body,
            body_truncated: truncated,
        };
        let _ = rules.evaluate("s", &view, random);
    }

    #[test]
    fn the_header_scanner_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), prefix in any::<bool>()) {
        let lane = HeaderName::from_static("x-lane");
        let pass = [HeaderName::from_static("x-user-id")];
        let wanted = Wanted { lane_header: &lane, lane_alias: "x-mse-tag", passthrough: &pass };
        let mut input = if prefix { b"GET / HTTP/1.1\r\n".to_vec() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let _ = scan(&input, &wanted);
    }
}
