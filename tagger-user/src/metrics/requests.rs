//! Per-request metrics, counted where every request's outcome is recorded
//! (`FlowTable::record`), plus the latencies the proxy measures around the
//! lane decision and the upstream call. Nothing here takes a lock once a
//! label combination has been seen (see `family`).
use std::{
    hash::{Hash, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use hashbrown::Equivalent;

use super::{
    family::Family,
    histogram::{DECISION_BOUNDS_NS, Histogram, UPSTREAM_BOUNDS_NS},
    text::Text,
};
use crate::{
    flows::RequestRecord,
    propagation::Correlation,
    routing::{Reason, StrippedFrom},
};

/// Labels of `tagger_requests_total` but the outcome, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    service: String,
    lane: Option<String>,
    reason: Reason,
    correlation: Correlation,
}

/// The same, borrowed from a request's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKeyRef<'a> {
    service: &'a str,
    lane: Option<&'a str>,
    reason: &'a Reason,
    correlation: Correlation,
}

impl RequestKey {
    fn as_ref(&self) -> RequestKeyRef<'_> {
        RequestKeyRef {
            service: &self.service,
            lane: self.lane.as_deref(),
            reason: &self.reason,
            correlation: self.correlation,
        }
    }
}

// Hashed as its borrowed form, so that a `RequestKeyRef` finds it.
impl Hash for RequestKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl Equivalent<RequestKey> for RequestKeyRef<'_> {
    fn equivalent(&self, key: &RequestKey) -> bool {
        *self == key.as_ref()
    }
}

/// Requests of one label combination, by outcome.
#[derive(Default)]
pub struct Outcomes {
    ok: AtomicU64,
    error: AtomicU64,
}

/// Lanes of one service's callers that it did not trust, by where the
/// claim came from.
#[derive(Default)]
pub struct StrippedCounts {
    header: AtomicU64,
    inherited: AtomicU64,
}

impl StrippedCounts {
    fn of(&self, from: StrippedFrom) -> &AtomicU64 {
        match from {
            StrippedFrom::Header => &self.header,
            StrippedFrom::Inherited => &self.inherited,
        }
    }
}

/// `tagger_proxy_errors_total` labels: (service, side, status code).
type ErrorKey = (String, &'static str, u16);

pub struct RequestMetrics {
    requests: Family<RequestKey, Outcomes>,
    errors: Family<ErrorKey, AtomicU64>,
    stripped: Family<String, StrippedCounts>,
    decision: Histogram,
    upstream: Family<String, Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::new(Outcomes::default),
            errors: Family::new(AtomicU64::default),
            stripped: Family::new(StrippedCounts::default),
            decision: Histogram::new(DECISION_BOUNDS_NS),
            upstream: Family::new(|| Histogram::new(UPSTREAM_BOUNDS_NS)),
        }
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

/// Baseline has no lane name; the label says so.
const BASELINE: &str = "baseline";

fn correlation_label(correlation: Correlation) -> &'static str {
    match correlation {
        Correlation::None => "none",
        Correlation::Trusted => "trusted",
        Correlation::Untrusted => "untrusted",
    }
}

impl RequestMetrics {
    /// One forwarded request (called by `FlowTable::record`).
    pub fn request(&self, r: &RequestRecord<'_>) {
        let key = RequestKeyRef {
            service: r.service,
            lane: r.lane,
            reason: r.reason,
            correlation: r.correlation,
        };
        let owned = || RequestKey {
            service: r.service.to_string(),
            lane: r.lane.map(str::to_string),
            reason: r.reason.clone(),
            correlation: r.correlation,
        };
        self.requests.with(&key, owned, |outcomes| {
            let counter = if r.ok { &outcomes.ok } else { &outcomes.error };
            counter.fetch_add(1, Ordering::Relaxed);
        });
        if let Some(from) = r.stripped {
            self.stripped.with(
                r.service,
                || r.service.to_string(),
                |counts| {
                    counts.of(from).fetch_add(1, Ordering::Relaxed);
                },
            );
        }
    }

    /// From the request's arrival to its lane being decided (inheritance,
    /// rules, the decision itself).
    pub fn observe_decision(&self, elapsed: Duration) {
        self.decision.observe(elapsed);
    }

    /// From sending upstream to the response head (or the failure).
    pub fn observe_upstream(&self, service: &str, elapsed: Duration) {
        self.upstream
            .with(service, || service.to_string(), |h| h.observe(elapsed));
    }

    /// A request answered by tagger itself with an error (no endpoint, bad
    /// request, endpoint failed): `side` is whose fault, `status` the code.
    pub fn proxy_error(&self, service: &str, side: &'static str, status: u16) {
        let key = (service.to_string(), side, status);
        self.errors.with(
            &key,
            || key.clone(),
            |c| {
                c.fetch_add(1, Ordering::Relaxed);
            },
        );
    }

    pub fn encode(&self, out: &mut Text) {
        let mut requests = self.requests.entries();
        requests.sort_by(|a, b| {
            (&a.0.service, &a.0.lane, &a.0.reason, a.0.correlation).cmp(&(
                &b.0.service,
                &b.0.lane,
                &b.0.reason,
                b.0.correlation,
            ))
        });
        out.family(
            "tagger_requests_total",
            "counter",
            "HTTP requests the proxy forwarded, by destination service, lane (baseline for none), \
             why that lane, how sure the inherited context was, and outcome (error: a 5xx or a \
             failed upstream)",
        );
        for (key, outcomes) in &requests {
            let reason = key.reason.to_string();
            for (outcome, counter) in [("ok", &outcomes.ok), ("error", &outcomes.error)] {
                out.sample(
                    "tagger_requests_total",
                    &[
                        ("service", &key.service),
                        ("lane", key.lane.as_deref().unwrap_or(BASELINE)),
                        ("reason", &reason),
                        ("correlation", correlation_label(key.correlation)),
                        ("outcome", outcome),
                    ],
                    counter.load(Ordering::Relaxed),
                );
            }
        }
        let mut errors = self.errors.entries();
        errors.sort_by(|a, b| a.0.cmp(&b.0));
        out.family(
            "tagger_proxy_errors_total",
            "counter",
            "Requests tagger answered with its own error, by service, whose fault (downstream, \
             upstream) and status code; those that reached an endpoint first (502, a body that \
             broke off) also count in tagger_requests_total as errors, a 503 (no endpoint) only \
             here",
        );
        for ((service, side, status), count) in &errors {
            out.sample(
                "tagger_proxy_errors_total",
                &[
                    ("service", service),
                    ("side", side),
                    ("code", &status.to_string()),
                ],
                count.load(Ordering::Relaxed),
            );
        }
        let mut stripped = self.stripped.entries();
        stripped.sort_by(|a, b| a.0.cmp(&b.0));
        out.family(
            "tagger_lane_stripped_total",
            "counter",
            "Requests whose caller claimed a lane the service does not trust it with \
             (lane_header_from), by service and where the claim came from (header: a lane \
             header, removed; inherited: the caller's own inbound request's lane, not used); \
             the request was decided by the service's rules and the caller's pod lane",
        );
        for (service, counts) in &stripped {
            for from in [StrippedFrom::Header, StrippedFrom::Inherited] {
                out.sample(
                    "tagger_lane_stripped_total",
                    &[("service", service), ("from", from.as_str())],
                    counts.of(from).load(Ordering::Relaxed),
                );
            }
        }
        out.family(
            "tagger_decision_duration_seconds",
            "histogram",
            "Time from a request's head to its lane decision (inheritance, rules)",
        );
        self.decision
            .encode(out, "tagger_decision_duration_seconds", &[]);
        let mut upstream = self.upstream.entries();
        upstream.sort_by(|a, b| a.0.cmp(&b.0));
        out.family(
            "tagger_upstream_duration_seconds",
            "histogram",
            "Time from sending a request to an endpoint to its response head, by service",
        );
        for (service, histogram) in &upstream {
            histogram.encode(
                out,
                "tagger_upstream_duration_seconds",
                &[("service", service)],
            );
        }
    }
}
