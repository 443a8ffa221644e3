//! `tagger flows --by-path`: the flow map by gRPC service and method, and
//! the merging that keeps the plain `tagger flows` one row per flow when
//! the daemon counts gRPC calls per method.
use crate::flows::FlowRow;

use super::Shape;

/// Rows that differ only by their gRPC method, merged into one (counts
/// added, the newest age kept), in the order the first of each came.
pub fn merge_methods(rows: &[FlowRow]) -> Vec<FlowRow> {
    let mut merged: Vec<FlowRow> = Vec::with_capacity(rows.len());
    for row in rows {
        let same = |m: &&mut FlowRow| {
            m.source == row.source
                && m.service == row.service
                && m.endpoint == row.endpoint
                && m.lane == row.lane
                && m.reason == row.reason
                && m.fallback == row.fallback
                && m.served_lane == row.served_lane
                && m.correlation == row.correlation
        };
        match merged.iter_mut().find(same) {
            Some(m) => {
                m.requests += row.requests;
                m.errors += row.errors;
                m.stripped += row.stripped;
                m.last_seen_ms = m.last_seen_ms.min(row.last_seen_ms);
            }
            None => merged.push(FlowRow {
                rpc: None,
                ..row.clone()
            }),
        }
    }
    merged
}

/// `tagger flows --by-path`: one row per (service, gRPC method, lane,
/// endpoint), over every source and reason: which lane served which method,
/// where. Requests that are not gRPC calls are one row per (service, lane,
/// endpoint), method `-`.
pub const BY_METHOD: Shape<FlowRow, 7> = Shape {
    header: [
        "SERVICE",
        "GRPC SERVICE",
        "METHOD",
        "LANE",
        "ENDPOINT",
        "REQUESTS",
        "ERRORS",
    ],
    cells: by_method_cells,
    empty: "no flows yet\n",
};

pub fn render_by_method(rows: &[FlowRow]) -> String {
    BY_METHOD.render(rows)
}

fn by_method_cells(rows: &[FlowRow]) -> Vec<[String; 7]> {
    // (service, grpc service, method, lane, endpoint) -> (requests, errors)
    let mut groups: Vec<([String; 5], u64, u64)> = Vec::new();
    for row in rows {
        let (grpc_service, method) = row
            .rpc
            .as_deref()
            .and_then(|rpc| rpc.split_once('/'))
            .unwrap_or(("-", "-"));
        let key = [
            row.service.clone(),
            grpc_service.to_string(),
            method.to_string(),
            row.lane.clone().unwrap_or_else(|| "baseline".into()),
            row.endpoint.clone(),
        ];
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, requests, errors)) => {
                *requests += row.requests;
                *errors += row.errors;
            }
            None => groups.push((key, row.requests, row.errors)),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
        .into_iter()
        .map(
            |([service, grpc_service, method, lane, endpoint], requests, errors)| {
                [
                    service,
                    grpc_service,
                    method,
                    lane,
                    endpoint,
                    requests.to_string(),
                    errors.to_string(),
                ]
            },
        )
        .collect()
}
