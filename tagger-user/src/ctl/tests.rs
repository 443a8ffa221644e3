//! Golden tests of what `tagger flows`, `tagger lanes` and `tagger rules
//! list` print, in text and in `--json`. Scripts read both forms, so the
//! expected text is written out whole: any change to a column, a marker or
//! the JSON shape fails here first.
use super::*;
use crate::{
    propagation::Correlation,
    rules::{ConditionSpec, Mode, RuleSpec},
};

/// A row every case starts from; each case changes what it is about.
fn flow() -> FlowRow {
    FlowRow {
        source: "device-v1".into(),
        service: "charge".into(),
        endpoint: "charge-v1".into(),
        lane: None,
        reason: "default".into(),
        fallback: false,
        served_lane: None,
        correlation: Correlation::None,
        rpc: None,
        requests: 3,
        errors: 0,
        stripped: 0,
        last_seen_ms: 0,
    }
}

#[test]
fn flows_table() {
    let cases: Vec<(&str, Vec<FlowRow>, &str)> = vec![
        ("empty", vec![], "no flows yet\n"),
        (
            "one baseline row",
            vec![flow()],
            "\
SOURCE     SERVICE  ENDPOINT   LANE      REASON   CORRELATION  REQUESTS  ERRORS  STRIPPED  LAST
device-v1  charge   charge-v1  baseline  default  -            3         0       0         now
",
        ),
        (
            // The README's demo: a rule, an inherited lane, and a service
            // without a gray pod where baseline served (fallback marker).
            "the demo chain, rows kept in the given order",
            vec![
                FlowRow {
                    endpoint: "charge-v2".into(),
                    lane: Some("gray".into()),
                    reason: "rule:charge-gray".into(),
                    served_lane: Some("gray".into()),
                    correlation: Correlation::Trusted,
                    requests: 80,
                    last_seen_ms: 500,
                    ..flow()
                },
                FlowRow {
                    source: "charge-v2".into(),
                    service: "order".into(),
                    endpoint: "order-v2".into(),
                    lane: Some("gray".into()),
                    reason: "inherited-thread".into(),
                    served_lane: Some("gray".into()),
                    correlation: Correlation::Trusted,
                    requests: 80,
                    errors: 1,
                    last_seen_ms: 1_500,
                    ..flow()
                },
                FlowRow {
                    source: "order-v2".into(),
                    service: "base".into(),
                    endpoint: "base-v1".into(),
                    lane: Some("gray".into()),
                    reason: "inherited-thread".into(),
                    fallback: true,
                    served_lane: None,
                    correlation: Correlation::Trusted,
                    requests: 80,
                    last_seen_ms: 61_000,
                    ..flow()
                },
            ],
            "\
SOURCE     SERVICE  ENDPOINT   LANE  REASON                       CORRELATION  REQUESTS  ERRORS  STRIPPED  LAST
device-v1  charge   charge-v2  gray  rule:charge-gray             trusted      80        0       0         now
charge-v2  order    order-v2   gray  inherited-thread             trusted      80        1       0         1s ago
order-v2   base     base-v1    gray  inherited-thread (fallback)  trusted      80        0       0         1m ago
",
        ),
        (
            // Neither the lane nor baseline had a ready pod: the only lane
            // the service has served, and the row says which.
            "only-lane rows name the lane that served",
            vec![
                FlowRow {
                    source: "caller".into(),
                    service: "svc".into(),
                    endpoint: "svc-gray".into(),
                    fallback: true,
                    served_lane: Some("gray".into()),
                    ..flow()
                },
                FlowRow {
                    source: "caller".into(),
                    service: "svc".into(),
                    endpoint: "svc-gray".into(),
                    lane: Some("blue".into()),
                    reason: "header".into(),
                    fallback: true,
                    served_lane: Some("gray".into()),
                    requests: 1,
                    errors: 1,
                    last_seen_ms: 150_000,
                    ..flow()
                },
            ],
            "\
SOURCE  SERVICE  ENDPOINT  LANE      REASON                    CORRELATION  REQUESTS  ERRORS  STRIPPED  LAST
caller  svc      svc-gray  baseline  default (only lane gray)  -            3         0       0         now
caller  svc      svc-gray  blue      header (only lane gray)   -            1         1       0         2m ago
",
        ),
        (
            // A caller the service does not trust with a lane: the header
            // was stripped and the request decided by what came next.
            "stripped lane headers are counted",
            vec![FlowRow {
                source: "client".into(),
                service: "web".into(),
                endpoint: "web-v1".into(),
                stripped: 3,
                ..flow()
            }],
            "\
SOURCE  SERVICE  ENDPOINT  LANE      REASON   CORRELATION  REQUESTS  ERRORS  STRIPPED  LAST
client  web      web-v1    baseline  default  -            3         0       3         now
",
        ),
        (
            "wide values widen their columns",
            vec![FlowRow {
                source: "a-pod-with-a-rather-long-name".into(),
                service: "s".into(),
                endpoint: "e".into(),
                lane: Some("canary-2024-blue".into()),
                reason: "pod-lane".into(),
                correlation: Correlation::Untrusted,
                requests: 12_345_678_901,
                errors: 98_765,
                last_seen_ms: 59_999,
                ..flow()
            }],
            "\
SOURCE                         SERVICE  ENDPOINT  LANE              REASON    CORRELATION  REQUESTS     ERRORS  STRIPPED  LAST
a-pod-with-a-rather-long-name  s        e         canary-2024-blue  pod-lane  untrusted    12345678901  98765   0         59s ago
",
        ),
    ];
    for (name, rows, expected) in cases {
        assert_eq!(render_flows(&rows), expected, "case {name:?}");
    }
}

/// gRPC calls are counted per method: the plain table still shows one row
/// per flow, `--by-path` one per method, lane and endpoint.
#[test]
fn flows_by_grpc_method() {
    let grpc = |rpc: &str, lane: Option<&str>, endpoint: &str, requests, last_seen_ms| FlowRow {
        service: "orders".into(),
        endpoint: endpoint.into(),
        lane: lane.map(str::to_string),
        reason: if lane.is_some() { "header" } else { "default" }.into(),
        rpc: Some(rpc.into()),
        requests,
        last_seen_ms,
        ..flow()
    };
    let rows = vec![
        grpc("shop.Orders/Get", None, "orders-v1", 5, 3_000),
        grpc("shop.Orders/List", None, "orders-v1", 2, 500),
        grpc("shop.Orders/Get", Some("gray"), "orders-v2", 4, 0),
        FlowRow {
            errors: 1,
            ..flow()
        },
    ];
    assert_eq!(
        render_flows(&rows),
        "\
SOURCE     SERVICE  ENDPOINT   LANE      REASON   CORRELATION  REQUESTS  ERRORS  STRIPPED  LAST
device-v1  orders   orders-v1  baseline  default  -            7         0       0         now
device-v1  orders   orders-v2  gray      header   -            4         0       0         now
device-v1  charge   charge-v1  baseline  default  -            3         1       0         now
"
    );
    assert_eq!(
        render_by_method(&rows),
        "\
SERVICE  GRPC SERVICE  METHOD  LANE      ENDPOINT   REQUESTS  ERRORS
charge   -             -       baseline  charge-v1  3         1
orders   shop.Orders   Get     baseline  orders-v1  5         0
orders   shop.Orders   Get     gray      orders-v2  4         0
orders   shop.Orders   List    baseline  orders-v1  2         0
"
    );
    assert_eq!(render_by_method(&[]), "no flows yet\n");
    // The JSON carries the method; rows without one look as before.
    let json = to_json(&rows[..1].to_vec());
    assert!(json.contains(r#""rpc": "shop.Orders/Get""#), "{json}");
    assert!(!to_json(&rows[3..].to_vec()).contains("rpc"));
}

#[test]
fn ages() {
    let cases = [
        (0, "now"),
        (999, "now"),
        (1_000, "1s ago"),
        (59_999, "59s ago"),
        (60_000, "1m ago"),
        (3_599_999, "59m ago"),
        // Minutes keep counting: no hours or days to parse.
        (7_200_000, "120m ago"),
        (u64::MAX, "307445734561825m ago"),
    ];
    for (ms, expected) in cases {
        assert_eq!(format_age(ms), expected, "{ms} ms");
    }
}

#[test]
fn flows_json() {
    let rows = vec![
        FlowRow {
            source: "order-v2".into(),
            service: "base".into(),
            endpoint: "base-v1".into(),
            lane: Some("gray".into()),
            reason: "inherited-thread".into(),
            fallback: true,
            served_lane: None,
            correlation: Correlation::Trusted,
            rpc: None,
            requests: 80,
            errors: 0,
            stripped: 0,
            last_seen_ms: 61_000,
        },
        FlowRow {
            fallback: true,
            served_lane: Some("gray".into()),
            correlation: Correlation::Untrusted,
            stripped: 2,
            ..flow()
        },
    ];
    let expected = r#"[
  {
    "source": "order-v2",
    "service": "base",
    "endpoint": "base-v1",
    "lane": "gray",
    "reason": "inherited-thread",
    "fallback": true,
    "served_lane": null,
    "correlation": "trusted",
    "requests": 80,
    "errors": 0,
    "stripped": 0,
    "last_seen_ms": 61000
  },
  {
    "source": "device-v1",
    "service": "charge",
    "endpoint": "charge-v1",
    "lane": null,
    "reason": "default",
    "fallback": true,
    "served_lane": "gray",
    "correlation": "untrusted",
    "requests": 3,
    "errors": 0,
    "stripped": 2,
    "last_seen_ms": 0
  }
]
"#;
    assert_eq!(to_json(&rows), expected);
    let back: Vec<FlowRow> = serde_json::from_str(expected).unwrap();
    assert_eq!(back, rows);
    assert_eq!(to_json(&Vec::<FlowRow>::new()), "[]\n");
    // A daemon from before `served_lane` existed: the CLI still reads it.
    let older = r#"[{"source":"a","service":"b","endpoint":"b-1","lane":null,"reason":"default",
        "fallback":false,"correlation":"none","requests":1,"errors":0,"last_seen_ms":5}]"#;
    let rows: Vec<FlowRow> = serde_json::from_str(older).unwrap();
    assert_eq!(rows[0].served_lane, None);
    assert_eq!(rows[0].correlation, Correlation::None);
    assert_eq!(rows[0].stripped, 0, "a daemon from before lane_header_from");
}

fn rate(service: &str, lane: Option<&str>, requests_per_second: f64, total: u64) -> LaneRate {
    LaneRate {
        service: service.into(),
        lane: lane.map(str::to_string),
        requests_per_second,
        total,
    }
}

#[test]
fn lanes_table() {
    let cases: Vec<(&str, Vec<LaneRate>, &str)> = vec![
        ("empty", vec![], "no traffic yet\n"),
        (
            "baseline and a lane",
            vec![
                rate("charge", None, 0.0, 0),
                rate("charge", Some("gray"), 12.34, 1234),
            ],
            "\
SERVICE  LANE      RPS   TOTAL
charge   baseline  0.0   0
charge   gray      12.3  1234
",
        ),
        (
            "rates are rounded to one decimal",
            vec![
                rate("order", None, 7.96, 40),
                rate("order", Some("gray"), 0.04, 1),
            ],
            "\
SERVICE  LANE      RPS  TOTAL
order    baseline  8.0  40
order    gray      0.0  1
",
        ),
        (
            "wide values widen their columns",
            vec![rate(
                "a-service-with-a-long-name",
                Some("blue"),
                1234.56,
                99_999_999_999,
            )],
            "\
SERVICE                     LANE  RPS     TOTAL
a-service-with-a-long-name  blue  1234.6  99999999999
",
        ),
    ];
    for (name, rates, expected) in cases {
        assert_eq!(render_lanes(&rates), expected, "case {name:?}");
    }
}

#[test]
fn lanes_json() {
    let rates = vec![
        rate("charge", None, 0.0, 0),
        rate("charge", Some("gray"), 12.5, 1234),
    ];
    let expected = r#"[
  {
    "service": "charge",
    "lane": null,
    "requests_per_second": 0.0,
    "total": 0
  },
  {
    "service": "charge",
    "lane": "gray",
    "requests_per_second": 12.5,
    "total": 1234
  }
]
"#;
    assert_eq!(to_json(&rates), expected);
    let back: Vec<LaneRate> = serde_json::from_str(expected).unwrap();
    assert_eq!(back, rates);
}

fn text(s: &str) -> serde_yaml::Value {
    serde_yaml::Value::String(s.into())
}

fn rules() -> Vec<RuleRow> {
    vec![
        RuleRow {
            spec: RuleSpec {
                name: "charge-gray".into(),
                service: "charge".into(),
                lane: "gray".into(),
                mode: Mode::Any,
                priority: 10,
                enabled: true,
                conditions: vec![
                    ConditionSpec {
                        source: Some("query".into()),
                        name: Some("userId".into()),
                        op: "in".into(),
                        values: Some(vec![text("111"), text("222")]),
                        ..ConditionSpec::default()
                    },
                    ConditionSpec {
                        source: Some("header".into()),
                        name: Some("mse-username".into()),
                        op: "=".into(),
                        value: Some(text("msd01")),
                        ..ConditionSpec::default()
                    },
                ],
            },
            hits: 80,
        },
        RuleRow {
            spec: RuleSpec {
                name: "ten-percent".into(),
                service: "order".into(),
                lane: "gray".into(),
                mode: Mode::All,
                priority: -5,
                enabled: false,
                conditions: vec![
                    ConditionSpec {
                        op: "percentage".into(),
                        value: Some(serde_yaml::Value::Number(10.into())),
                        ..ConditionSpec::default()
                    },
                    ConditionSpec {
                        source: Some("query".into()),
                        name: Some("userId".into()),
                        op: "mod100".into(),
                        value: Some(serde_yaml::Value::Number(1.into())),
                        cmp: Some("<".into()),
                        ..ConditionSpec::default()
                    },
                ],
            },
            hits: 0,
        },
    ]
}

#[test]
fn rules_table() {
    let cases: Vec<(&str, Vec<RuleRow>, &str)> = vec![
        (
            "empty",
            vec![],
            "no rules: all traffic follows headers and pod lanes\n",
        ),
        (
            // Conditions as compact JSON, as written (numbers stay numbers),
            // fields left out when not given.
            "two rules, every column",
            rules(),
            r#"NAME         SERVICE  LANE  MODE  PRIORITY  ENABLED  HITS  CONDITIONS
charge-gray  charge   gray  any   10        true     80    {"source":"query","name":"userId","op":"in","values":["111","222"]} {"source":"header","name":"mse-username","op":"=","value":"msd01"}
ten-percent  order    gray  all   -5        false    0     {"op":"percentage","value":10} {"source":"query","name":"userId","op":"mod100","value":1,"cmp":"<"}
"#,
        ),
    ];
    for (name, rows, expected) in cases {
        assert_eq!(render_rules(&rows), expected, "case {name:?}");
    }
}

#[test]
fn rules_json() {
    let rows = rules();
    // The spec's fields and the hit count side by side (flattened).
    let expected = r#"[
  {
    "name": "charge-gray",
    "service": "charge",
    "lane": "gray",
    "mode": "any",
    "priority": 10,
    "enabled": true,
    "conditions": [
      {
        "source": "query",
        "name": "userId",
        "op": "in",
        "values": [
          "111",
          "222"
        ]
      },
      {
        "source": "header",
        "name": "mse-username",
        "op": "=",
        "value": "msd01"
      }
    ],
    "hits": 80
  },
  {
    "name": "ten-percent",
    "service": "order",
    "lane": "gray",
    "mode": "all",
    "priority": -5,
    "enabled": false,
    "conditions": [
      {
        "op": "percentage",
        "value": 10
      },
      {
        "source": "query",
        "name": "userId",
        "op": "mod100",
        "value": 1,
        "cmp": "<"
      }
    ],
    "hits": 0
  }
]
"#;
    assert_eq!(to_json(&rows), expected);
    let back: Vec<RuleRow> = serde_json::from_str(expected).unwrap();
    assert_eq!(back, rows);
    assert_eq!(to_json(&Vec::<RuleRow>::new()), "[]\n");
}
