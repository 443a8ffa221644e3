//! Per-request routing decisions, as pure functions: which lane a request is
//! in (and why), and which endpoint of the destination serves it.
use std::fmt;

use serde::Serialize;

use crate::propagation::InheritSource;

mod trust;
pub use trust::{LaneTrust, Stripped, StrippedFrom};

/// Why a request is in its lane. Shown in `tagger flows`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "rule")]
pub enum Reason {
    /// The request carried a lane header.
    Header,
    /// The lane of the inbound request that caused this call, found by the
    /// thread that read it and wrote this one.
    InheritedThread,
    /// The same, found by the goroutine that served it (or one it started)
    /// and sent this one: a Go process.
    InheritedGoroutine,
    /// The same, found by a request id the app forwarded.
    InheritedId,
    /// A routing rule of the destination service matched.
    Rule(String),
    /// The caller pod's own lane, which is sticky.
    PodLane,
    /// Nothing put the request in a lane: baseline.
    Default,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header => f.write_str("header"),
            Self::InheritedThread => f.write_str("inherited-thread"),
            Self::InheritedGoroutine => f.write_str("inherited-goroutine"),
            Self::InheritedId => f.write_str("inherited-id"),
            Self::Rule(name) => write!(f, "rule:{name}"),
            Self::PodLane => f.write_str("pod-lane"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Everything the lane decision depends on, already extracted from the
/// request, the caller and the rules. `None` everywhere means baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaneInputs<'a> {
    /// Lane header on the request itself.
    pub header: Option<&'a str>,
    /// Lane of the inbound request that caused this one, and how it was
    /// found.
    pub inherited: Option<(&'a str, InheritSource)>,
    /// (lane, rule name) of the first matching rule of the destination.
    pub rule: Option<(&'a str, &'a str)>,
    /// The caller pod's lane.
    pub caller_lane: Option<&'a str>,
    /// The destination does not trust this caller with a lane
    /// ([`LaneTrust::trusts`]): its header and its inherited lane do not
    /// count.
    pub untrusted_caller: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneDecision {
    /// `None` is baseline.
    pub lane: Option<String>,
    pub reason: Reason,
    /// Send the lane header downstream with this request, so later hops stay
    /// in the lane (sticky lanes and explicit headers) .
    pub carry_header: bool,
    /// The lane the caller claimed and was not trusted with, if any: the
    /// reason is then what decided instead.
    pub stripped: Option<Stripped>,
}

/// A lane the decision asks whether it is sticky, and what put the request
/// in it: lanes are declared per namespace, so the answer depends on whose
/// declaration counts (`Snapshot::stickiness`: the rule's namespace, the
/// caller pod's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StickyQuery<'a> {
    /// A rule of the destination service put the request in this lane.
    RuleLane(&'a str),
    /// The caller pod's own lane (sticky: "dye the traffic that passes a
    /// tagged pod").
    CallerLane(&'a str),
}

/// The decision order of SPEC.md: header > inherited > rule > sticky pod lane
/// > baseline. `is_sticky` tells whether a lane holds for later hops.
///
/// An untrusted caller's header and inherited lane are set aside first (and
/// the one that would have decided is reported as stripped).
pub fn decide_lane(
    inputs: &LaneInputs<'_>,
    is_sticky: impl Fn(StickyQuery<'_>) -> bool,
) -> LaneDecision {
    let header = inputs.header.filter(|l| !l.is_empty());
    let inherited = inputs.inherited.filter(|(l, _)| !l.is_empty());
    if !inputs.untrusted_caller {
        return decide_trusted(header, inherited, inputs, is_sticky);
    }
    let stripped = match (header, inherited) {
        (Some(lane), _) => Some((StrippedFrom::Header, lane)),
        (None, Some((lane, _))) => Some((StrippedFrom::Inherited, lane)),
        (None, None) => None,
    };
    LaneDecision {
        stripped: stripped.map(|(from, lane)| Stripped {
            from,
            lane: lane.to_string(),
        }),
        ..decide_trusted(None, None, inputs, is_sticky)
    }
}

fn decide_trusted(
    header: Option<&str>,
    inherited: Option<(&str, InheritSource)>,
    inputs: &LaneInputs<'_>,
    is_sticky: impl Fn(StickyQuery<'_>) -> bool,
) -> LaneDecision {
    let decided = |lane: &str, reason: Reason, carry_header: bool| LaneDecision {
        lane: Some(lane.to_string()),
        reason,
        carry_header,
        stripped: None,
    };
    if let Some(lane) = header {
        return decided(lane, Reason::Header, true);
    }
    if let Some((lane, source)) = inherited {
        let reason = match source {
            InheritSource::Id => Reason::InheritedId,
            InheritSource::Goroutine => Reason::InheritedGoroutine,
            InheritSource::Thread | InheritSource::None => Reason::InheritedThread,
        };
        // A lane that reached this pod in a header keeps travelling: it was
        // sticky or explicit where it started.
        return decided(lane, reason, true);
    }
    if let Some((lane, rule)) = inputs.rule {
        let carry = is_sticky(StickyQuery::RuleLane(lane));
        return decided(lane, Reason::Rule(rule.to_string()), carry);
    }
    if let Some(lane) = inputs
        .caller_lane
        .filter(|l| is_sticky(StickyQuery::CallerLane(l)))
    {
        return decided(lane, Reason::PodLane, true);
    }
    LaneDecision {
        lane: None,
        reason: Reason::Default,
        carry_header: false,
        stripped: None,
    }
}

/// The part of an endpoint the choice looks at.
pub trait Candidate {
    fn lane(&self) -> Option<&str>;
    fn is_ready(&self) -> bool;
}

/// How the chosen endpoint stands to the decided lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Served {
    /// An endpoint of the decided lane (baseline for a baseline request).
    InLane,
    /// The lane has no ready endpoint in this service; a baseline one
    /// serves it, and the lane header stays on so a later hop returns.
    Baseline,
    /// Neither the lane nor baseline has a ready endpoint: every ready pod
    /// of the service is in another lane (a Service made for one lane, as
    /// an ingress canary sends to). The caller chose this service, so one
    /// of its pods serves the request rather than a 503; that pod's own
    /// (sticky) lane then dyes the calls it makes.
    OnlyLane,
}

/// A chosen endpoint, and how it stands to the decided lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice<'a, E> {
    pub endpoint: &'a E,
    pub served: Served,
}

impl<E> Choice<'_, E> {
    /// Served outside the decided lane.
    pub fn is_fallback(&self) -> bool {
        self.served != Served::InLane
    }
}

/// Round-robin over the ready endpoints of `lane`; when there are none, over
/// the ready baseline endpoints; when there are none either, over every
/// ready endpoint (the service has pods of other lanes only). `None` only
/// when nothing is ready. `turn` is a per-service counter. `skip` lets a
/// retry avoid an endpoint that just refused the connection.
pub fn choose_endpoint<'a, E: Candidate>(
    endpoints: &'a [E],
    lane: Option<&str>,
    turn: usize,
    skip: impl Fn(&E) -> bool,
) -> Option<Choice<'a, E>> {
    let pick = |keep: &dyn Fn(&E) -> bool| -> Option<&'a E> {
        let ready = || {
            endpoints
                .iter()
                .filter(|e| e.is_ready() && !skip(e) && keep(e))
        };
        let count = ready().count();
        if count == 0 {
            return None;
        }
        ready().nth(turn % count)
    };
    let chosen = |endpoint, served| Some(Choice { endpoint, served });
    if let Some(endpoint) = pick(&|e| e.lane() == lane) {
        return chosen(endpoint, Served::InLane);
    }
    if lane.is_some()
        && let Some(endpoint) = pick(&|e| e.lane().is_none())
    {
        return chosen(endpoint, Served::Baseline);
    }
    pick(&|_| true).and_then(|endpoint| chosen(endpoint, Served::OnlyLane))
}

#[cfg(test)]
mod tests;
