use super::*;

/// `gray` is sticky wherever asked.
fn sticky(query: StickyQuery<'_>) -> bool {
    matches!(
        query,
        StickyQuery::RuleLane("gray") | StickyQuery::CallerLane("gray")
    )
}

/// The decision asks about a rule's lane and the caller's own lane as
/// such, so that each is answered by its own namespace's declaration:
/// `gray` sticky where the rule's namespace is asked (`rule`) or the
/// caller's (`caller`), per case.
#[test]
fn a_lane_is_asked_as_what_put_the_request_in_it() {
    // (case, inputs, rule's namespace says sticky, caller's says sticky,
    // lane, reason, carry)
    let rule = LaneInputs {
        rule: Some(("gray", "r1")),
        caller_lane: Some("gray"),
        ..LaneInputs::default()
    };
    let pod = LaneInputs {
        caller_lane: Some("gray"),
        ..LaneInputs::default()
    };
    let header = LaneInputs {
        header: Some("gray"),
        caller_lane: Some("gray"),
        ..LaneInputs::default()
    };
    let cases = [
        (
            "rule, sticky in the rule's namespace",
            rule,
            true,
            false,
            Some("gray"),
            Reason::Rule("r1".into()),
            true,
        ),
        (
            "rule, sticky in the caller's only",
            rule,
            false,
            true,
            Some("gray"),
            Reason::Rule("r1".into()),
            false,
        ),
        (
            "pod lane, sticky in the caller's namespace",
            pod,
            false,
            true,
            Some("gray"),
            Reason::PodLane,
            true,
        ),
        (
            "pod lane, sticky in the rule's (destination's) only",
            pod,
            true,
            false,
            None,
            Reason::Default,
            false,
        ),
        (
            "header: carried whatever either says",
            header,
            false,
            false,
            Some("gray"),
            Reason::Header,
            true,
        ),
    ];
    for (name, inputs, in_rules_ns, in_callers_ns, lane, reason, carry) in cases {
        let asked = std::cell::RefCell::new(Vec::new());
        let got = decide_lane(&inputs, |query| {
            asked.borrow_mut().push(format!("{query:?}"));
            match query {
                StickyQuery::RuleLane(l) => l == "gray" && in_rules_ns,
                StickyQuery::CallerLane(l) => l == "gray" && in_callers_ns,
            }
        });
        assert_eq!(got.lane.as_deref(), lane, "{name}");
        assert_eq!(got.reason, reason, "{name}");
        assert_eq!(
            got.carry_header,
            carry,
            "{name}: asked {:?}",
            asked.borrow()
        );
    }
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
                inherited: Some(("gray", InheritSource::Thread)),
                rule: Some(("gray", "r1")),
                caller_lane: Some("gray"),
                untrusted_caller: false,
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
                inherited: Some(("gray", InheritSource::Thread)),
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
                inherited: Some(("blue", InheritSource::Id)),
                caller_lane: Some("gray"),
                ..LaneInputs::default()
            },
            lane: Some("blue"),
            reason: Reason::InheritedId,
            carry: true,
        },
        Case {
            name: "inherited by a goroutine (a Go process) beats rule and pod lane",
            inputs: LaneInputs {
                inherited: Some(("gray", InheritSource::Goroutine)),
                rule: Some(("blue", "r1")),
                caller_lane: Some("blue"),
                ..LaneInputs::default()
            },
            lane: Some("gray"),
            reason: Reason::InheritedGoroutine,
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
        assert_eq!(got.stripped, None, "{}: a trusted caller", case.name);
    }
}

/// A caller the destination does not trust with a lane: its header and its
/// inherited lane are set aside (the one that would have decided is
/// reported), and the rules, then its sticky pod lane, decide.
#[test]
fn an_untrusted_callers_lane_is_stripped() {
    let untrusted = |inputs: LaneInputs<'static>| LaneInputs {
        untrusted_caller: true,
        ..inputs
    };
    let stripped = |from, lane: &str| {
        Some(Stripped {
            from,
            lane: lane.into(),
        })
    };
    // (name, inputs, lane, reason, carry, stripped)
    let cases = [
        (
            "nothing claimed, nothing stripped",
            untrusted(LaneInputs::default()),
            None,
            Reason::Default,
            false,
            None,
        ),
        (
            "a header alone: baseline",
            untrusted(LaneInputs {
                header: Some("gray"),
                ..LaneInputs::default()
            }),
            None,
            Reason::Default,
            false,
            stripped(StrippedFrom::Header, "gray"),
        ),
        (
            "the header is what is reported when both were claimed",
            untrusted(LaneInputs {
                header: Some("blue"),
                inherited: Some(("gray", InheritSource::Thread)),
                ..LaneInputs::default()
            }),
            None,
            Reason::Default,
            false,
            stripped(StrippedFrom::Header, "blue"),
        ),
        (
            "an inherited lane is a claim too",
            untrusted(LaneInputs {
                inherited: Some(("gray", InheritSource::Goroutine)),
                ..LaneInputs::default()
            }),
            None,
            Reason::Default,
            false,
            stripped(StrippedFrom::Inherited, "gray"),
        ),
        (
            "an empty header claims nothing",
            untrusted(LaneInputs {
                header: Some(""),
                ..LaneInputs::default()
            }),
            None,
            Reason::Default,
            false,
            None,
        ),
        (
            "the rules decide instead",
            untrusted(LaneInputs {
                header: Some("gray"),
                rule: Some(("blue", "r1")),
                ..LaneInputs::default()
            }),
            Some("blue"),
            Reason::Rule("r1".into()),
            false,
            stripped(StrippedFrom::Header, "gray"),
        ),
        (
            "then the caller's sticky pod lane",
            untrusted(LaneInputs {
                header: Some("blue"),
                caller_lane: Some("gray"),
                ..LaneInputs::default()
            }),
            Some("gray"),
            Reason::PodLane,
            true,
            stripped(StrippedFrom::Header, "blue"),
        ),
    ];
    for (name, inputs, lane, reason, carry, want_stripped) in cases {
        let got = decide_lane(&inputs, sticky);
        assert_eq!(got.lane.as_deref(), lane, "{name}");
        assert_eq!(got.reason, reason, "{name}");
        assert_eq!(got.carry_header, carry, "{name}");
        assert_eq!(got.stripped, want_stripped, "{name}");
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

/// One row of the endpoint-choice table: the service's endpoints, the
/// request's lane, the turn, an endpoint to skip; the expected endpoint and
/// how it stands to the lane.
struct ChoiceCase {
    name: &'static str,
    endpoints: &'static [Ep],
    lane: Option<&'static str>,
    turn: usize,
    skip: Option<&'static str>,
    want: Option<(&'static str, Served)>,
}

const MIXED: &[Ep] = &[
    ep("b1", None, true),
    ep("b2", None, true),
    ep("g1", Some("gray"), true),
    ep("g2", Some("gray"), false),
    ep("x1", Some("blue"), false),
];
/// A Service whose pods are all gray (the article's `a-gray`).
const GRAY_ONLY: &[Ep] = &[ep("g1", Some("gray"), true), ep("g2", Some("gray"), true)];
/// Gray and blue pods, the gray ones down.
const BLUE_READY: &[Ep] = &[ep("g1", Some("gray"), false), ep("u1", Some("blue"), true)];
const NOTHING_READY: &[Ep] = &[ep("b1", None, false), ep("g1", Some("gray"), false)];

#[test]
fn endpoint_choice() {
    use Served::*;
    let case = |name, endpoints, lane, turn, skip, want| ChoiceCase {
        name,
        endpoints,
        lane,
        turn,
        skip,
        want,
    };
    let cases = [
        // The lane has a ready endpoint.
        case(
            "baseline, turn 0",
            MIXED,
            None,
            0,
            None,
            Some(("b1", InLane)),
        ),
        case(
            "baseline round-robin",
            MIXED,
            None,
            1,
            None,
            Some(("b2", InLane)),
        ),
        case("baseline wraps", MIXED, None, 2, None, Some(("b1", InLane))),
        case("gray", MIXED, Some("gray"), 0, None, Some(("g1", InLane))),
        case(
            "gray skips the unready",
            MIXED,
            Some("gray"),
            1,
            None,
            Some(("g1", InLane)),
        ),
        case(
            "retry avoids",
            MIXED,
            None,
            0,
            Some("b1"),
            Some(("b2", InLane)),
        ),
        // The lane has none, baseline has: fallback.
        case(
            "blue not ready",
            MIXED,
            Some("blue"),
            0,
            None,
            Some(("b1", Baseline)),
        ),
        case(
            "unknown lane",
            MIXED,
            Some("red"),
            1,
            None,
            Some(("b2", Baseline)),
        ),
        case(
            "gray refused",
            MIXED,
            Some("gray"),
            0,
            Some("g1"),
            Some(("b1", Baseline)),
        ),
        // Neither the lane nor baseline: the service's only lane serves.
        case(
            "baseline to gray-only",
            GRAY_ONLY,
            None,
            0,
            None,
            Some(("g1", OnlyLane)),
        ),
        case(
            "gray-only round-robin",
            GRAY_ONLY,
            None,
            1,
            None,
            Some(("g2", OnlyLane)),
        ),
        case(
            "gray to gray-only",
            GRAY_ONLY,
            Some("gray"),
            1,
            None,
            Some(("g2", InLane)),
        ),
        case(
            "blue to gray-only",
            GRAY_ONLY,
            Some("blue"),
            0,
            None,
            Some(("g1", OnlyLane)),
        ),
        case(
            "gray to blue",
            BLUE_READY,
            Some("gray"),
            0,
            None,
            Some(("u1", OnlyLane)),
        ),
        case(
            "baseline to blue",
            BLUE_READY,
            None,
            3,
            None,
            Some(("u1", OnlyLane)),
        ),
        case(
            "only lane refused",
            GRAY_ONLY,
            None,
            0,
            Some("g1"),
            Some(("g2", OnlyLane)),
        ),
        // Nothing ready: no endpoint at all.
        case(
            "nothing ready, baseline",
            NOTHING_READY,
            None,
            0,
            None,
            None,
        ),
        case(
            "nothing ready, gray",
            NOTHING_READY,
            Some("gray"),
            0,
            None,
            None,
        ),
        case("no endpoints", &[], Some("gray"), 0, None, None),
        case("all refused", GRAY_ONLY, None, 0, Some("g*"), None),
    ];
    for c in cases {
        let skip = |e: &Ep| match c.skip {
            Some("g*") => e.name.starts_with('g'),
            Some(name) => e.name == name,
            None => false,
        };
        let got = choose_endpoint(c.endpoints, c.lane, c.turn, skip)
            .map(|choice| (choice.endpoint.name, choice.served));
        assert_eq!(got, c.want, "{}", c.name);
    }
}
