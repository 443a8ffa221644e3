//! The flow-to-lane map: which pod called which service, where each request
//! went, in which lane and why; and requests per second per lane per service.
use std::{
    hash::{Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};

use crate::{
    propagation::Correlation,
    routing::{Reason, StrippedFrom},
};

/// Flows not seen for this long leave the map.
const FLOW_RETENTION: Duration = Duration::from_secs(600);
/// Seconds the per-lane rate is averaged over.
pub const RATE_WINDOW_SECS: u64 = 5;
const RATE_SLOTS: usize = 16;

/// A flow's identity, owned: made only when a flow is first seen. Every
/// request looks its flow up through [`FlowIdRef`], without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlowId {
    source: String,
    service: String,
    endpoint: String,
    lane: Option<String>,
    reason: Reason,
    fallback: bool,
    served_lane: Option<String>,
    correlation: Correlation,
    rpc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowIdRef<'a> {
    source: &'a str,
    service: &'a str,
    endpoint: &'a str,
    lane: Option<&'a str>,
    reason: &'a Reason,
    fallback: bool,
    served_lane: Option<&'a str>,
    correlation: Correlation,
    rpc: Option<&'a str>,
}

impl FlowId {
    fn as_ref(&self) -> FlowIdRef<'_> {
        FlowIdRef {
            source: &self.source,
            service: &self.service,
            endpoint: &self.endpoint,
            lane: self.lane.as_deref(),
            reason: &self.reason,
            fallback: self.fallback,
            served_lane: self.served_lane.as_deref(),
            correlation: self.correlation,
            rpc: self.rpc.as_deref(),
        }
    }
}

impl FlowIdRef<'_> {
    fn to_owned(self) -> FlowId {
        FlowId {
            source: self.source.to_string(),
            service: self.service.to_string(),
            endpoint: self.endpoint.to_string(),
            lane: self.lane.map(str::to_string),
            reason: self.reason.clone(),
            fallback: self.fallback,
            served_lane: self.served_lane.map(str::to_string),
            correlation: self.correlation,
            rpc: self.rpc.map(str::to_string),
        }
    }
}

// Hashed as its borrowed form, so that a `FlowIdRef` finds it.
impl Hash for FlowId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl Equivalent<FlowId> for FlowIdRef<'_> {
    fn equivalent(&self, key: &FlowId) -> bool {
        *self == key.as_ref()
    }
}

/// (service, lane) of the per-lane rates, owned and borrowed as above.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LaneKey(String, Option<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LaneKeyRef<'a>(&'a str, Option<&'a str>);

impl Hash for LaneKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        LaneKeyRef(&self.0, self.1.as_deref()).hash(state);
    }
}

impl Equivalent<LaneKey> for LaneKeyRef<'_> {
    fn equivalent(&self, key: &LaneKey) -> bool {
        *self == LaneKeyRef(&key.0, key.1.as_deref())
    }
}

#[derive(Debug, Clone)]
struct FlowStats {
    requests: u64,
    errors: u64,
    stripped: u64,
    last_seen: Instant,
}

/// One row of `tagger flows`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowRow {
    pub source: String,
    pub service: String,
    pub endpoint: String,
    /// `None` is baseline.
    pub lane: Option<String>,
    /// Why the lane: header, inherited, rule:NAME, pod-lane, default.
    pub reason: String,
    /// The lane had no ready endpoint here: a baseline one served it, or
    /// (with `served_lane` set) a pod of another lane when the service has
    /// no baseline pod either.
    pub fallback: bool,
    /// The lane of the pod that served (`None` is baseline).
    #[serde(default)]
    pub served_lane: Option<String>,
    /// Whether the inbound request that caused these was known for sure.
    pub correlation: Correlation,
    /// The gRPC method called, `package.Service/Method`; `None` for
    /// requests that are not gRPC calls (their paths are not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    pub requests: u64,
    pub errors: u64,
    /// Requests whose caller claimed a lane (a lane header, or one inherited
    /// from its own inbound request) that the service does not trust it
    /// with (`lane_header_from`): the claim was stripped and `reason` is
    /// what decided instead.
    #[serde(default)]
    pub stripped: u64,
    pub last_seen_ms: u64,
}

/// One row of `tagger lanes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaneRate {
    pub service: String,
    pub lane: Option<String>,
    pub requests_per_second: f64,
    pub total: u64,
}

/// What happened to one request, as the proxy reports it.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    pub source: &'a str,
    pub service: &'a str,
    pub endpoint: &'a str,
    pub lane: Option<&'a str>,
    pub reason: &'a Reason,
    /// Served outside `lane` (see [`FlowRow::fallback`]).
    pub fallback: bool,
    pub served_lane: Option<&'a str>,
    pub correlation: Correlation,
    /// The gRPC method, for gRPC calls (see [`FlowRow::rpc`]).
    pub rpc: Option<&'a str>,
    /// The caller's lane was not trusted, and came from this (see
    /// [`FlowRow::stripped`]).
    pub stripped: Option<StrippedFrom>,
    pub ok: bool,
}

#[derive(Debug, Default)]
struct LaneCounter {
    /// (unix second, requests in it), indexed by second % RATE_SLOTS.
    slots: [(u64, u64); RATE_SLOTS],
    total: u64,
}

#[derive(Debug, Default)]
pub struct FlowTable {
    flows: Mutex<HashMap<FlowId, FlowStats>>,
    lanes: Mutex<HashMap<LaneKey, LaneCounter>>,
    /// Prometheus counters of the same requests (lock-free).
    metrics: crate::metrics::RequestMetrics,
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FlowTable {
    /// The Prometheus side of the table; the proxy adds its latencies here.
    pub fn metrics(&self) -> &crate::metrics::RequestMetrics {
        &self.metrics
    }

    pub fn record(&self, r: RequestRecord<'_>) {
        self.metrics.request(&r);
        let now = Instant::now();
        let id = FlowIdRef {
            source: r.source,
            service: r.service,
            endpoint: r.endpoint,
            lane: r.lane,
            reason: r.reason,
            fallback: r.fallback,
            served_lane: r.served_lane,
            correlation: r.correlation,
            rpc: r.rpc,
        };
        {
            let mut flows = self.flows.lock().expect("flow table lock");
            let count = |stats: &mut FlowStats| {
                stats.requests += 1;
                stats.errors += u64::from(!r.ok);
                stats.stripped += u64::from(r.stripped.is_some());
                stats.last_seen = now;
            };
            match flows.get_mut(&id) {
                Some(stats) => count(stats),
                None => {
                    let mut fresh = FlowStats {
                        requests: 0,
                        errors: 0,
                        stripped: 0,
                        last_seen: now,
                    };
                    count(&mut fresh);
                    flows.insert(id.to_owned(), fresh);
                }
            }
        }
        let second = unix_second();
        let mut lanes = self.lanes.lock().expect("lane counter lock");
        let tick = |counter: &mut LaneCounter| {
            let slot = &mut counter.slots[(second % RATE_SLOTS as u64) as usize];
            if slot.0 != second {
                *slot = (second, 0);
            }
            slot.1 += 1;
            counter.total += 1;
        };
        let key = LaneKeyRef(r.service, r.lane);
        match lanes.get_mut(&key) {
            Some(counter) => tick(counter),
            None => {
                // First request of this lane to this service.
                let mut counter = LaneCounter::default();
                tick(&mut counter);
                lanes.insert(
                    LaneKey(key.0.to_string(), key.1.map(str::to_string)),
                    counter,
                );
            }
        }
    }

    /// Rows, most recent first. Drops flows idle past the retention.
    pub fn rows(&self) -> Vec<FlowRow> {
        let now = Instant::now();
        let mut flows = self.flows.lock().expect("flow table lock");
        flows.retain(|_, s| now.duration_since(s.last_seen) < FLOW_RETENTION);
        let mut rows: Vec<FlowRow> = flows
            .iter()
            .map(|(id, s)| FlowRow {
                source: id.source.clone(),
                service: id.service.clone(),
                endpoint: id.endpoint.clone(),
                lane: id.lane.clone(),
                reason: id.reason.to_string(),
                fallback: id.fallback,
                served_lane: id.served_lane.clone(),
                correlation: id.correlation,
                rpc: id.rpc.clone(),
                requests: s.requests,
                errors: s.errors,
                stripped: s.stripped,
                last_seen_ms: now.duration_since(s.last_seen).as_millis() as u64,
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                a.service.as_str(),
                a.source.as_str(),
                a.endpoint.as_str(),
                &a.reason,
                &a.rpc,
            )
                .cmp(&(
                    b.service.as_str(),
                    b.source.as_str(),
                    b.endpoint.as_str(),
                    &b.reason,
                    &b.rpc,
                ))
        });
        rows
    }

    /// Requests per second over the last [`RATE_WINDOW_SECS`] full seconds.
    pub fn lane_rates(&self) -> Vec<LaneRate> {
        let now = unix_second();
        let lanes = self.lanes.lock().expect("lane counter lock");
        let mut rates: Vec<LaneRate> = lanes
            .iter()
            .map(|(LaneKey(service, lane), counter)| {
                let recent: u64 = counter
                    .slots
                    .iter()
                    .filter(|(second, _)| *second < now && now - second <= RATE_WINDOW_SECS)
                    .map(|(_, n)| n)
                    .sum();
                LaneRate {
                    service: service.clone(),
                    lane: lane.clone(),
                    requests_per_second: recent as f64 / RATE_WINDOW_SECS as f64,
                    total: counter.total,
                }
            })
            .collect();
        rates.sort_by(|a, b| (&a.service, &a.lane).cmp(&(&b.service, &b.lane)));
        rates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_aggregate_by_flow() {
        let table = FlowTable::default();
        let gray = Reason::PodLane;
        let default = Reason::Default;
        for _ in 0..3 {
            table.record(RequestRecord {
                source: "a-gray",
                service: "b",
                endpoint: "b-gray",
                lane: Some("gray"),
                reason: &gray,
                fallback: false,
                served_lane: Some("gray"),
                correlation: Correlation::None,
                rpc: None,
                stripped: None,
                ok: true,
            });
        }
        table.record(RequestRecord {
            source: "a",
            service: "b",
            endpoint: "b-base",
            lane: None,
            reason: &default,
            fallback: false,
            served_lane: None,
            correlation: Correlation::None,
            rpc: None,
            stripped: Some(StrippedFrom::Header),
            ok: false,
        });
        let rows = table.rows();
        assert_eq!(rows.len(), 2);
        let gray_row = rows.iter().find(|r| r.source == "a-gray").unwrap();
        assert_eq!((gray_row.requests, gray_row.errors), (3, 0));
        assert_eq!(gray_row.reason, "pod-lane");
        let base_row = rows.iter().find(|r| r.source == "a").unwrap();
        assert_eq!((base_row.requests, base_row.errors), (1, 1));
        assert_eq!((gray_row.stripped, base_row.stripped), (0, 1));
        let totals: Vec<(Option<String>, u64)> = table
            .lane_rates()
            .into_iter()
            .map(|r| (r.lane, r.total))
            .collect();
        assert_eq!(totals, vec![(None, 1), (Some("gray".into()), 3)]);
    }

    /// Flows are found by their borrowed form: every field tells flows
    /// apart, and a flow seen again is counted, not duplicated.
    #[test]
    fn every_field_tells_flows_apart() {
        let table = FlowTable::default();
        let rule_a = Reason::Rule("a".into());
        let rule_b = Reason::Rule("b".into());
        let base = RequestRecord {
            source: "a",
            service: "b",
            endpoint: "b-1",
            lane: Some("gray"),
            reason: &rule_a,
            fallback: false,
            served_lane: Some("gray"),
            correlation: Correlation::None,
            rpc: None,
            stripped: None,
            ok: true,
        };
        let variants = [
            base,
            RequestRecord {
                source: "a2",
                ..base
            },
            RequestRecord {
                service: "c",
                ..base
            },
            RequestRecord {
                endpoint: "b-2",
                ..base
            },
            RequestRecord { lane: None, ..base },
            RequestRecord {
                lane: Some("blue"),
                ..base
            },
            RequestRecord {
                reason: &rule_b,
                ..base
            },
            RequestRecord {
                fallback: true,
                ..base
            },
            RequestRecord {
                served_lane: None,
                ..base
            },
            RequestRecord {
                correlation: Correlation::Trusted,
                ..base
            },
            RequestRecord {
                rpc: Some("pkg.Svc/Get"),
                ..base
            },
            RequestRecord {
                rpc: Some("pkg.Svc/Put"),
                ..base
            },
        ];
        for round in 0..2 {
            for record in variants {
                table.record(record);
            }
            assert_eq!(table.rows().len(), variants.len(), "round {round}");
        }
        assert!(table.rows().iter().all(|row| row.requests == 2));
    }
}
