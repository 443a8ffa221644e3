use super::*;

fn sticky(lane: &str) -> bool {
    lane == "gray"
}

#[test]
fn lane_decision_order() {
    struct Case {
        name: &'static str,
        inputs: LaneInputs<'static>,
        lane: Option<&'static str>,
        reason: Reason,
        carry: bool,
    }
    let cases = [
        Case {
            name: "nothing is baseline",
            inputs: LaneInputs::default(),
            lane: None,
            reason: Reason::Default,
            carry: false,
        },
        Case {
            name: "header beats everything",
            inputs: LaneInputs {
                header: Some("blue"),
                inherited: Some(("gray", false)),
                rule: Some(("gray", "r1")),
                caller_lane: Some("gray"),
            },
            lane: Some("blue"),
            reason: Reason::Header,
            carry: true,
        },
        Case {
            name: "empty header is ignored",
            inputs: LaneInputs {
                header: Some(""),
                ..LaneInputs::default()
            },
            lane: None,
            reason: Reason::Default,
            carry: false,
        },
        Case {
            name: "inherited beats rule",
            inputs: LaneInputs {
                inherited: Some(("gray", false)),
                rule: Some(("blue", "r1")),
                ..LaneInputs::default()
            },
            lane: Some("gray"),
            reason: Reason::InheritedThread,
            carry: true,
        },
        Case {
            name: "inherited by id, even a non-sticky lane that came in a header",
            inputs: LaneInputs {
                inherited: Some(("blue", true)),
                caller_lane: Some("gray"),
                ..LaneInputs::default()
            },
            lane: Some("blue"),
            reason: Reason::InheritedId,
            carry: true,
        },
        Case {
            name: "rule beats pod lane",
            inputs: LaneInputs {
                rule: Some(("blue", "r1")),
                caller_lane: Some("gray"),
                ..LaneInputs::default()
            },
            lane: Some("blue"),
            reason: Reason::Rule("r1".into()),
            carry: false,
        },
        Case {
            name: "rule into sticky lane carries the header",
            inputs: LaneInputs {
                rule: Some(("gray", "r1")),
                ..LaneInputs::default()
            },
            lane: Some("gray"),
            reason: Reason::Rule("r1".into()),
            carry: true,
        },
        Case {
            name: "sticky pod lane dyes the call",
            inputs: LaneInputs {
                caller_lane: Some("gray"),
                ..LaneInputs::default()
            },
            lane: Some("gray"),
            reason: Reason::PodLane,
            carry: true,
        },
        Case {
            name: "non-sticky pod lane does not",
            inputs: LaneInputs {
                caller_lane: Some("blue"),
                ..LaneInputs::default()
            },
            lane: None,
            reason: Reason::Default,
            carry: false,
        },
    ];
    for case in cases {
        let got = decide_lane(&case.inputs, sticky);
        assert_eq!(got.lane.as_deref(), case.lane, "{}", case.name);
        assert_eq!(got.reason, case.reason, "{}", case.name);
        assert_eq!(got.carry_header, case.carry, "{}", case.name);
    }
}

#[derive(Debug, PartialEq)]
struct Ep {
    name: &'static str,
    lane: Option<&'static str>,
    ready: bool,
}

impl Candidate for Ep {
    fn lane(&self) -> Option<&str> {
        self.lane
    }
    fn is_ready(&self) -> bool {
        self.ready
    }
}

const fn ep(name: &'static str, lane: Option<&'static str>, ready: bool) -> Ep {
    Ep { name, lane, ready }
}

#[test]
fn endpoint_choice() {
    let endpoints = [
        ep("b1", None, true),
        ep("b2", None, true),
        ep("g1", Some("gray"), true),
        ep("g2", Some("gray"), false),
        ep("x1", Some("blue"), false),
    ];
    // (lane, turn, skip, expected endpoint, fallback)
    type Row<'a> = (
        Option<&'a str>,
        usize,
        Option<&'a str>,
        Option<&'a str>,
        bool,
    );
    let cases: &[Row] = &[
        (None, 0, None, Some("b1"), false),
        (None, 1, None, Some("b2"), false),
        (None, 2, None, Some("b1"), false),
        (Some("gray"), 0, None, Some("g1"), false),
        (Some("gray"), 1, None, Some("g1"), false), // g2 not ready
        (Some("blue"), 0, None, Some("b1"), true),  // no ready blue: fallback
        (Some("red"), 1, None, Some("b2"), true),   // unknown lane: fallback
        (Some("gray"), 0, Some("g1"), Some("b1"), true),
        (None, 0, Some("b1"), Some("b2"), false),
    ];
    for (lane, turn, skip, want, fallback) in cases {
        let got = choose_endpoint(&endpoints, *lane, *turn, |e| Some(e.name) == *skip);
        assert_eq!(
            got.as_ref().map(|c| c.endpoint.name),
            *want,
            "lane {lane:?} turn {turn}"
        );
        assert_eq!(
            got.map(|c| c.fallback).unwrap_or(false),
            *fallback,
            "lane {lane:?}"
        );
    }
}

#[test]
fn no_ready_baseline_means_no_endpoint() {
    let endpoints = [ep("b1", None, false), ep("g1", Some("gray"), false)];
    assert!(choose_endpoint(&endpoints, None, 0, |_| false).is_none());
    assert!(choose_endpoint(&endpoints, Some("gray"), 0, |_| false).is_none());
    assert!(choose_endpoint::<Ep>(&[], Some("gray"), 0, |_| false).is_none());
}
