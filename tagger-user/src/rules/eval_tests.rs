//! Table-driven tests of every operator and source.
use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::rules::{ConditionSpec, RuleSpec};

/// A request to evaluate against: method, path?query, headers, body.
struct Req {
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    truncated: bool,
}

fn get(target: &'static str) -> Req {
    Req {
        method: "GET",
        target,
        headers: vec![],
        body: vec![],
        truncated: false,
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn body(mut self, content_type: &'static str, body: &str) -> Self {
        self.method = "POST";
        self.headers.push(("content-type", content_type));
        self.body = body.as_bytes().to_vec();
        self
    }
    fn truncated(mut self) -> Self {
        self.truncated = true;
        self
    }

    fn check(&self, condition: &Condition, random: f64) -> bool {
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let (path, query) = match self.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.target, None),
        };
        let view = RequestView {
            method: self.method,
            path,
            query,
            host: headers.get("host").and_then(|h| h.to_str().ok()),
            headers: &headers,
            body: &self.body,
            body_truncated: self.truncated,
        };
        condition.matches(&view, random)
    }
}

/// A rule of service `s`, lane gray, with these conditions.
fn rule_of(name: &str, conditions: Vec<ConditionSpec>) -> RuleSpec {
    RuleSpec {
        name: name.into(),
        service: "s".into(),
        lane: "gray".into(),
        mode: Mode::Any,
        priority: 0,
        enabled: true,
        conditions,
    }
}

fn condition(yaml: &str) -> Condition {
    let spec: ConditionSpec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    let rule = rule_of("t", vec![spec]);
    rule.compile()
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
        .conditions
        .remove(0)
}

/// (condition, request, expected) rows, evaluated with random = 0.5.
fn table(rows: Vec<(&str, Req, bool)>) {
    for (yaml, request, want) in rows {
        let got = request.check(&condition(yaml), 0.5);
        assert_eq!(
            got,
            want,
            "{yaml} on {} {:?} body {:?}",
            request.target,
            request.headers,
            String::from_utf8_lossy(&request.body)
        );
    }
}

#[test]
fn comparison_operators() {
    table(vec![
        (
            "{source: query, name: userId, op: '=', value: 111}",
            get("/?userId=111"),
            true,
        ),
        (
            "{source: query, name: userId, op: '=', value: '111'}",
            get("/?userId=0111"),
            true,
        ), // numeric equality
        (
            "{source: query, name: userId, op: '=', value: 111}",
            get("/?userId=112"),
            false,
        ),
        (
            "{source: query, name: userId, op: '!=', value: 111}",
            get("/?userId=112"),
            true,
        ),
        (
            "{source: query, name: userId, op: '!=', value: 111}",
            get("/?userId=111"),
            false,
        ),
        (
            "{source: query, name: userId, op: '>', value: 100}",
            get("/?userId=101"),
            true,
        ),
        (
            "{source: query, name: userId, op: '>', value: 100}",
            get("/?userId=100"),
            false,
        ),
        (
            "{source: query, name: userId, op: '>=', value: 100}",
            get("/?userId=100"),
            true,
        ),
        (
            "{source: query, name: userId, op: '<', value: 100}",
            get("/?userId=99"),
            true,
        ),
        (
            "{source: query, name: userId, op: '<', value: 100}",
            get("/?userId=-5"),
            true,
        ),
        (
            "{source: query, name: userId, op: '<=', value: -5}",
            get("/?userId=-5"),
            true,
        ),
        (
            "{source: query, name: userId, op: '<=', value: -5}",
            get("/?userId=-4"),
            false,
        ),
        // 9 < 10 numerically, though "9" > "10" as strings.
        (
            "{source: query, name: n, op: '<', value: 10}",
            get("/?n=9"),
            true,
        ),
        // Decimals compare as numbers too.
        (
            "{source: query, name: n, op: '>', value: 1.5}",
            get("/?n=1.75"),
            true,
        ),
        // Integers larger than any machine word still compare exactly.
        (
            "{source: query, name: n, op: '>', value: '123456789012345678901234567890'}",
            get("/?n=123456789012345678901234567891"),
            true,
        ),
        (
            "{source: query, name: n, op: '=', value: '123456789012345678901234567890'}",
            get("/?n=123456789012345678901234567891"),
            false,
        ),
        (
            "{source: query, name: n, op: '<', value: '-99999999999999999999'}",
            get("/?n=-100000000000000000000"),
            true,
        ),
        // A non-number against a number: string order, documented.
        (
            "{source: query, name: n, op: '>', value: 100}",
            get("/?n=abc"),
            true,
        ),
        (
            "{source: query, name: n, op: '=', value: 100}",
            get("/?n=abc"),
            false,
        ),
        // Strings.
        (
            "{source: header, name: x-env, op: '=', value: Staging}",
            get("/").header("x-env", "Staging"),
            true,
        ),
        (
            "{source: header, name: x-env, op: '=', value: staging}",
            get("/").header("x-env", "Staging"),
            false,
        ),
        // Empty value is a value, not a missing key.
        (
            "{source: query, name: userId, op: '=', value: ''}",
            get("/?userId="),
            true,
        ),
        (
            "{source: query, name: userId, op: '!=', value: ''}",
            get("/?userId="),
            false,
        ),
    ]);
}

#[test]
fn missing_keys_match_only_negations() {
    table(vec![
        (
            "{source: query, name: userId, op: '=', value: 1}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: '>', value: 1}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: in, values: [1]}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: regex, value: '.*'}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: prefix, value: ''}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: percentage, value: 100}",
            get("/"),
            false,
        ),
        (
            "{source: query, name: userId, op: '!=', value: 1}",
            get("/"),
            true,
        ),
        (
            "{source: query, name: userId, op: not_in, values: [1]}",
            get("/"),
            true,
        ),
        ("{source: query, name: userId, op: exists}", get("/"), false),
        (
            "{source: query, name: userId, op: exists, value: false}",
            get("/"),
            true,
        ),
        (
            "{source: query, name: userId, op: exists}",
            get("/?userId"),
            true,
        ),
        (
            "{source: query, name: userId, op: exists, value: false}",
            get("/?userId=1"),
            false,
        ),
    ]);
}

#[test]
fn lists_prefix_regex() {
    table(vec![
        (
            "{source: query, name: userId, op: in, values: [111, 222, 333]}",
            get("/?userId=222"),
            true,
        ),
        (
            "{source: query, name: userId, op: in, values: [111, 222, 333]}",
            get("/?userId=444"),
            false,
        ),
        (
            "{source: header, name: mse-username, op: in, values: [msd01, msd02, msd03]}",
            get("/").header("mse-username", "msd02"),
            true,
        ),
        (
            "{source: header, name: mse-username, op: in, values: [msd01, msd02, msd03]}",
            get("/").header("mse-username", "msd04"),
            false,
        ),
        (
            "{source: header, name: mse-username, op: not_in, values: [msd01]}",
            get("/").header("mse-username", "msd04"),
            true,
        ),
        (
            "{source: header, name: mse-username, op: not_in, values: [msd01]}",
            get("/").header("mse-username", "msd01"),
            false,
        ),
        (
            "{source: path, op: prefix, value: /api/v2}",
            get("/api/v2/orders"),
            true,
        ),
        (
            "{source: path, op: prefix, value: /api/v2}",
            get("/api/v1/orders"),
            false,
        ),
        (
            "{source: header, name: user-agent, op: regex, value: '^Mozilla/.*Android'}",
            get("/").header("user-agent", "Mozilla/5.0 (Linux; Android 14)"),
            true,
        ),
        (
            "{source: header, name: user-agent, op: regex, value: '^Mozilla/.*Android'}",
            get("/").header("user-agent", "curl/8"),
            false,
        ),
    ]);
}

#[test]
fn mod100_takes_the_integer_modulo_100() {
    table(vec![
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/?userId=101"),
            true,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/?userId=1001"),
            true,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/?userId=1002"),
            false,
        ),
        (
            "{source: query, name: userId, op: mod100, value: 1}",
            get("/?userId=1"),
            true,
        ), // cmp defaults to =
        (
            "{source: query, name: userId, op: mod100, cmp: '<', value: 10}",
            get("/?userId=205"),
            true,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '>=', value: 50}",
            get("/?userId=149"),
            false,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '!=', value: 0}",
            get("/?userId=300"),
            false,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '<=', value: 0}",
            get("/?userId=0"),
            true,
        ),
        // Negative numbers: the mathematical modulo, -1 mod 100 = 99.
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 99}",
            get("/?userId=-1"),
            true,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 0}",
            get("/?userId=-100"),
            true,
        ),
        // Very large integers work digit-wise.
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/?userId=98765432109876543210987654321001"),
            true,
        ),
        // Not an integer: no match.
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/?userId=1.01"),
            false,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '!=', value: 1}",
            get("/?userId=abc"),
            false,
        ),
        (
            "{source: query, name: userId, op: mod100, cmp: '=', value: 1}",
            get("/?userId="),
            false,
        ),
    ]);
}

#[test]
fn sources() {
    table(vec![
        (
            "{source: cookie, name: uid, op: '=', value: 7}",
            get("/").header("cookie", "a=1; uid=7"),
            true,
        ),
        (
            "{source: cookie, name: uid, op: '=', value: 7}",
            get("/").header("cookie", "a=1;uid = 7 ;b=2"),
            true,
        ),
        (
            "{source: cookie, name: uid, op: '=', value: 7}",
            get("/")
                .header("cookie", "a=1")
                .header("cookie", "uid=\"7\""),
            true,
        ),
        (
            "{source: cookie, name: uid, op: '=', value: 7}",
            get("/").header("cookie", "xuid=7"),
            false,
        ),
        (
            "{source: host, op: '=', value: shop.example}",
            get("/").header("host", "shop.example:8080"),
            true,
        ),
        (
            "{source: host, op: '=', value: shop.example}",
            get("/").header("host", "other.example"),
            false,
        ),
        (
            "{source: method, op: in, values: [POST, PUT]}",
            get("/").body("text/plain", "x"),
            true,
        ),
        ("{source: method, op: '=', value: POST}", get("/"), false),
        (
            "{source: path, op: '=', value: /device}",
            get("/device?userId=1"),
            true,
        ),
        (
            "{source: query, name: name, op: '=', value: 'a b'}",
            get("/?name=a%20b"),
            true,
        ),
        (
            "{source: query, name: name, op: '=', value: 'a b'}",
            get("/?name=a+b"),
            true,
        ),
        // Repeated keys: a positive operator wants any value, a negation all.
        (
            "{source: query, name: k, op: '=', value: 2}",
            get("/?k=1&k=2"),
            true,
        ),
        (
            "{source: query, name: k, op: '!=', value: 2}",
            get("/?k=1&k=2"),
            false,
        ),
        (
            "{source: header, name: x-k, op: '=', value: 2}",
            get("/").header("x-k", "1").header("x-k", "2"),
            true,
        ),
        (
            "{source: header, name: x-k, op: not_in, values: [2]}",
            get("/").header("x-k", "1").header("x-k", "2"),
            false,
        ),
        // Header names are case-insensitive.
        (
            "{source: header, name: X-User-Id, op: '=', value: 100}",
            get("/").header("x-user-id", "100"),
            true,
        ),
    ]);
}

#[test]
fn body_sources() {
    let json = "application/json";
    table(vec![
        (
            "{source: body, name: user.id, op: '=', value: 42}",
            get("/").body(json, r#"{"user": {"id": 42}}"#),
            true,
        ),
        (
            "{source: body, name: user.id, op: '=', value: 42}",
            get("/").body(json, r#"{"user": {"id": "42"}}"#),
            true,
        ),
        (
            "{source: body, name: user.vip, op: '=', value: 'true'}",
            get("/").body(json, r#"{"user": {"vip": true}}"#),
            true,
        ),
        (
            "{source: body, name: items.1.sku, op: '=', value: B}",
            get("/").body(json, r#"{"items": [{"sku": "A"}, {"sku": "B"}]}"#),
            true,
        ),
        (
            "{source: body, name: tags, op: in, values: [beta]}",
            get("/").body(json, r#"{"tags": ["x", "beta"]}"#),
            true,
        ),
        (
            "{source: body, name: user.id, op: '=', value: 42}",
            get("/").body(json, r#"{"user": 42}"#),
            false,
        ),
        (
            "{source: body, name: user.id, op: exists}",
            get("/").body(json, r#"{"user": {"id": null}}"#),
            false,
        ),
        // Invalid JSON: the key is missing.
        (
            "{source: body, name: user.id, op: '=', value: 42}",
            get("/").body(json, r#"{"user": {"id": 42"#),
            false,
        ),
        (
            "{source: body, name: user.id, op: '!=', value: 42}",
            get("/").body(json, "not json"),
            true,
        ),
        // Cut at the bound: JSON does not parse, so no match.
        (
            "{source: body, name: user.id, op: '=', value: 42}",
            get("/")
                .body(json, r#"{"user": {"id": 42, "pad": "xxxx"#)
                .truncated(),
            false,
        ),
        // Forms, and a truncated form drops its cut last field only.
        (
            "{source: body, name: uid, op: '=', value: 7}",
            get("/").body("application/x-www-form-urlencoded", "a=1&uid=7"),
            true,
        ),
        (
            "{source: body, name: uid, op: '=', value: 7}",
            get("/")
                .body("application/x-www-form-urlencoded", "uid=7&pad=xx")
                .truncated(),
            true,
        ),
        (
            "{source: body, name: pad, op: exists}",
            get("/")
                .body("application/x-www-form-urlencoded", "uid=7&pad=xx")
                .truncated(),
            false,
        ),
        (
            "{source: body, name: uid, op: '=', value: 7}",
            get("/"),
            false,
        ),
    ]);
}

#[test]
fn random_percentage_follows_the_draw() {
    let c = condition("{op: percentage, value: 30}");
    assert!(get("/").check(&c, 0.29));
    assert!(!get("/").check(&c, 0.30));
    assert!(!get("/").check(&condition("{op: percentage, value: 0}"), 0.0));
    assert!(get("/").check(&condition("{op: percentage, value: 100}"), 0.9999));
}

#[test]
fn stable_percentage_is_stable_per_key_and_near_the_share() {
    let c = condition("{source: header, name: x-user-id, op: percentage, value: 20}");
    let mut hits = 0;
    let total = 20_000;
    for i in 0..total {
        let id: &'static str = Box::leak(i.to_string().into_boxed_str());
        let request = get("/").header("x-user-id", id);
        let first = request.check(&c, 0.0);
        // The random draw does not matter: the key decides, every time.
        assert_eq!(
            first,
            request.check(&c, 0.99),
            "user {id} changed its answer"
        );
        hits += usize::from(first);
    }
    let share = hits as f64 / total as f64;
    assert!(
        (0.18..0.22).contains(&share),
        "share {share} is not near 0.20"
    );
}

#[test]
fn rule_modes_and_priority() {
    let rules_yaml = r#"
- name: late
  service: s
  lane: blue
  priority: 200
  conditions: [{source: query, name: u, op: exists}]
- name: both
  service: s
  lane: gray
  mode: all
  conditions:
    - {source: query, name: u, op: '=', value: 1}
    - {source: header, name: x-beta, op: exists}
- name: other-service
  service: t
  lane: gray
  conditions: [{source: query, name: u, op: exists}]
- name: tie-first
  service: s
  lane: red
  conditions: [{source: query, name: u, op: '=', value: 2}]
- name: tie-second
  service: s
  lane: green
  conditions: [{source: query, name: u, op: '=', value: 2}]
"#;
    let specs: Vec<RuleSpec> = serde_yaml::from_str(rules_yaml).unwrap();
    let set = RuleSet::new(specs.iter().map(|s| s.compile().unwrap()).collect(), None);
    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        ("/?u=1", Some("yes"), Some("both")),
        ("/?u=1", None, Some("late")), // `all` fails, the later one matches
        ("/?u=2", None, Some("tie-first")),
        ("/", None, None),
    ];
    for (target, beta, want) in cases {
        let mut request = get(target);
        if let Some(b) = beta {
            request = request.header("x-beta", b);
        }
        let mut headers = HeaderMap::new();
        for (n, v) in &request.headers {
            headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let (path, query) = target
            .split_once('?')
            .map_or((*target, None), |(p, q)| (p, Some(q)));
        let view = RequestView {
            method: "GET",
            path,
            query,
            host: None,
            headers: &headers,
            body: &[],
            body_truncated: false,
        };
        let got = set.evaluate("s", &view, 0.5).map(|r| r.name.as_str());
        assert_eq!(got, *want, "{target} beta {beta:?}");
    }
    let hits: Vec<(String, u64)> = set.iter().map(|(r, h)| (r.name.clone(), h)).collect();
    assert!(
        hits.contains(&("both".into(), 1)) && hits.contains(&("late".into(), 1)),
        "{hits:?}"
    );
    // Hit counts survive a reload of the same rule names.
    let reloaded = RuleSet::new(
        specs.iter().map(|s| s.compile().unwrap()).collect(),
        Some(&set),
    );
    assert_eq!(
        reloaded.iter().find(|(r, _)| r.name == "both").unwrap().1,
        1
    );
}

#[test]
fn bad_conditions_are_refused_with_the_field_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "{source: query, name: u, op: like, value: 1}",
            "conditions[0].op",
        ),
        (
            "{source: form, name: u, op: '=', value: 1}",
            "conditions[0].source: \"form\" is not a source",
        ),
        ("{source: query, op: '=', value: 1}", "conditions[0].name"),
        (
            "{source: query, name: u, op: '='}",
            "conditions[0].value: operator = needs a value",
        ),
        (
            "{source: query, name: u, op: in, value: 1}",
            "conditions[0].values",
        ),
        (
            "{source: query, name: u, op: regex, value: '('}",
            "regex does not compile",
        ),
        (
            "{source: query, name: u, op: percentage, value: 101}",
            "within 0..100",
        ),
        (
            "{source: query, name: u, op: percentage, value: abc}",
            "is not a number",
        ),
        (
            "{source: query, name: u, op: mod100, cmp: '=', value: 1.5}",
            "whole number",
        ),
        (
            "{source: path, name: u, op: '=', value: /}",
            "host, path and method take no name",
        ),
        ("{op: '=', value: 1}", "conditions[0].source: missing"),
        (
            "{source: header, name: 'bad name', op: exists}",
            "not a valid header name",
        ),
        (
            "{source: query, name: u, op: exists, value: maybe}",
            "exists takes true or false",
        ),
        (
            "{source: query, name: u, op: in, values: [[1]]}",
            "conditions[0].values: expected strings, numbers or booleans",
        ),
        // What the rules listing (JSON) could not carry, even where the
        // operator does not read it (found by fuzzing).
        (
            "{source: path, op: '=', value: x, values: [{[1]: 2}]}",
            "conditions[0].values: expected strings, numbers or booleans",
        ),
        (
            "{source: path, op: '=', value: .nan}",
            "conditions[0].value: expected a string, number or boolean",
        ),
        (
            "{source: path, op: in, values: [a, -.inf]}",
            "conditions[0].values",
        ),
        (
            "{source: path, op: in, values: [a], value: {a: 1}}",
            "conditions[0].value",
        ),
    ];
    for (yaml, expected) in cases {
        let spec: ConditionSpec = serde_yaml::from_str(yaml).unwrap();
        let rule = rule_of("r1", vec![spec]);
        let err = rule.compile().expect_err(yaml).to_string();
        assert!(err.contains(expected), "{yaml}: {err:?} lacks {expected:?}");
        assert!(err.starts_with("rule \"r1\""), "{err}");
    }
    let empty = rule_of("r2", vec![]);
    assert!(
        empty
            .compile()
            .unwrap_err()
            .to_string()
            .contains("at least one condition")
    );
}
