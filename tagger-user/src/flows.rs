//! The flow-to-lane map: which pod called which service, where each request
//! went, in which lane and why; and requests per second per lane per service.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{propagation::Correlation, routing::Reason};

/// Flows not seen for this long leave the map.
const FLOW_RETENTION: Duration = Duration::from_secs(600);
/// Seconds the per-lane rate is averaged over.
pub const RATE_WINDOW_SECS: u64 = 5;
const RATE_SLOTS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowId {
    source: String,
    service: String,
    endpoint: String,
    lane: Option<String>,
    reason: Reason,
    fallback: bool,
    correlation: Correlation,
}

#[derive(Debug, Clone)]
struct FlowStats {
    requests: u64,
    errors: u64,
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
    /// The lane had no ready endpoint here; a baseline one served it.
    pub fallback: bool,
    /// Whether the inbound request that caused these was known for sure.
    pub correlation: Correlation,
    pub requests: u64,
    pub errors: u64,
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
    pub fallback: bool,
    pub correlation: Correlation,
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
    lanes: Mutex<HashMap<(String, Option<String>), LaneCounter>>,
}

fn unix_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl FlowTable {
    pub fn record(&self, r: RequestRecord<'_>) {
        let now = Instant::now();
        let id = FlowId {
            source: r.source.to_string(),
            service: r.service.to_string(),
            endpoint: r.endpoint.to_string(),
            lane: r.lane.map(str::to_string),
            reason: r.reason.clone(),
            fallback: r.fallback,
            correlation: r.correlation,
        };
        {
            let mut flows = self.flows.lock().expect("flow table lock");
            let stats = flows.entry(id).or_insert(FlowStats {
                requests: 0,
                errors: 0,
                last_seen: now,
            });
            stats.requests += 1;
            stats.errors += u64::from(!r.ok);
            stats.last_seen = now;
        }
        let second = unix_second();
        let mut lanes = self.lanes.lock().expect("lane counter lock");
        let counter = lanes
            .entry((r.service.to_string(), r.lane.map(str::to_string)))
            .or_default();
        let slot = &mut counter.slots[(second % RATE_SLOTS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += 1;
        counter.total += 1;
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
                correlation: id.correlation,
                requests: s.requests,
                errors: s.errors,
                last_seen_ms: now.duration_since(s.last_seen).as_millis() as u64,
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                a.service.as_str(),
                a.source.as_str(),
                a.endpoint.as_str(),
                &a.reason,
            )
                .cmp(&(
                    b.service.as_str(),
                    b.source.as_str(),
                    b.endpoint.as_str(),
                    &b.reason,
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
            .map(|((service, lane), counter)| {
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
                correlation: Correlation::None,
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
            correlation: Correlation::None,
            ok: false,
        });
        let rows = table.rows();
        assert_eq!(rows.len(), 2);
        let gray_row = rows.iter().find(|r| r.source == "a-gray").unwrap();
        assert_eq!((gray_row.requests, gray_row.errors), (3, 0));
        assert_eq!(gray_row.reason, "pod-lane");
        let base_row = rows.iter().find(|r| r.source == "a").unwrap();
        assert_eq!((base_row.requests, base_row.errors), (1, 1));
        let totals: Vec<(Option<String>, u64)> = table
            .lane_rates()
            .into_iter()
            .map(|r| (r.lane, r.total))
            .collect();
        assert_eq!(totals, vec![(None, 1), (Some("gray".into()), 3)]);
    }
}
