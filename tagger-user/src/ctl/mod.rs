//! The operator's commands: `tagger flows`, `tagger lanes`, `tagger rules`,
//! `tagger config-dump`. They read the running daemon's admin API; with
//! `--kubernetes`, `flows` and `lanes` read every node's daemon
//! ([`cluster`]).
pub mod cluster;
mod methods;
mod table;

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http::Method;

use crate::{
    admin::{AdminClient, AdminError, View},
    daemon::RuleRow,
    flows::{FlowRow, LaneRate},
};

pub use methods::{BY_METHOD, merge_methods, render_by_method};
pub use table::{Shape, Table};

#[derive(Debug, Clone, Copy)]
pub struct ViewOptions {
    pub watch: bool,
    pub json: bool,
}

const WATCH_EVERY: Duration = Duration::from_secs(1);

async fn show_repeatedly<F, Fut>(options: ViewOptions, render: F) -> Result<(), AdminError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<String, AdminError>>,
{
    loop {
        show(options.watch, &render().await?, &[]);
        if !options.watch {
            return Ok(());
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// Prints one view: `text` on stdout (in place with `--watch`), then
/// `notes` on stderr, after it, so that a refreshed screen keeps them.
fn show(watch: bool, text: &str, notes: &[String]) {
    use std::io::Write;
    if watch {
        // Clear the screen and home the cursor: refresh in place.
        print!("\x1b[2J\x1b[H{text}");
    } else {
        print!("{text}");
    }
    let _ = std::io::stdout().flush();
    for note in notes {
        eprintln!("{note}");
    }
}

/// What `--json` prints: the rows as the daemon sent them, pretty, one
/// trailing newline.
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// `tagger flows`; with `by_method`, the gRPC view (`--by-path`).
pub async fn flows(socket: &Path, options: ViewOptions, by_method: bool) -> Result<(), AdminError> {
    let client = AdminClient::new(socket);
    show_repeatedly(options, || async {
        let rows: Vec<FlowRow> = client.get_json(View::Flows.admin_path()).await?;
        Ok(match (options.json, by_method) {
            (true, _) => to_json(&rows),
            (false, true) => render_by_method(&rows),
            (false, false) => render_flows(&rows),
        })
    })
    .await
}

/// `tagger flows`: one row per flow; a gRPC flow counted per method shows
/// as one row (the methods are `--by-path`'s).
pub const FLOWS: Shape<FlowRow, 10> = Shape {
    header: [
        "SOURCE",
        "SERVICE",
        "ENDPOINT",
        "LANE",
        "REASON",
        "CORRELATION",
        "REQUESTS",
        "ERRORS",
        // Lane headers (or inherited lanes) the service did not trust the
        // caller with: `lane_header_from`.
        "STRIPPED",
        "LAST",
    ],
    cells: flow_cells,
    empty: "no flows yet\n",
};

pub fn render_flows(rows: &[FlowRow]) -> String {
    FLOWS.render(rows)
}

fn flow_cells(rows: &[FlowRow]) -> Vec<[String; 10]> {
    let merged;
    let rows = if rows.iter().any(|r| r.rpc.is_some()) {
        merged = merge_methods(rows);
        &merged[..]
    } else {
        rows
    };
    rows.iter()
        .map(|row| {
            let reason = match (row.fallback, row.served_lane.as_deref()) {
                (false, _) => row.reason.clone(),
                (true, None) => format!("{} (fallback)", row.reason),
                // The service had neither the lane nor baseline: a pod of the
                // only lane it has served.
                (true, Some(served)) => format!("{} (only lane {served})", row.reason),
            };
            [
                row.source.clone(),
                row.service.clone(),
                row.endpoint.clone(),
                row.lane.clone().unwrap_or_else(|| "baseline".into()),
                reason,
                row.correlation.to_string(),
                row.requests.to_string(),
                row.errors.to_string(),
                row.stripped.to_string(),
                format_age(row.last_seen_ms),
            ]
        })
        .collect()
}

/// How long ago a flow was last seen, for the LAST column.
fn format_age(ms: u64) -> String {
    match ms {
        0..1_000 => "now".into(),
        1_000..60_000 => format!("{}s ago", ms / 1000),
        _ => format!("{}m ago", ms / 60_000),
    }
}

pub async fn lanes(socket: &Path, options: ViewOptions) -> Result<(), AdminError> {
    let client = AdminClient::new(socket);
    show_repeatedly(options, || async {
        let rates: Vec<LaneRate> = client.get_json(View::Lanes.admin_path()).await?;
        Ok(if options.json {
            to_json(&rates)
        } else {
            render_lanes(&rates)
        })
    })
    .await
}

/// `tagger lanes`: requests per second per lane per service.
pub const LANES: Shape<LaneRate, 4> = Shape {
    header: ["SERVICE", "LANE", "RPS", "TOTAL"],
    cells: lane_cells,
    empty: "no traffic yet\n",
};

pub fn render_lanes(rates: &[LaneRate]) -> String {
    LANES.render(rates)
}

fn lane_cells(rates: &[LaneRate]) -> Vec<[String; 4]> {
    rates
        .iter()
        .map(|rate| {
            [
                rate.service.clone(),
                rate.lane.clone().unwrap_or_else(|| "baseline".into()),
                format!("{:.1}", rate.requests_per_second),
                rate.total.to_string(),
            ]
        })
        .collect()
}

pub async fn rules_list(socket: &Path, json: bool) -> Result<(), AdminError> {
    let rows: Vec<RuleRow> = AdminClient::new(socket).get_json("/rules").await?;
    print!(
        "{}",
        if json {
            to_json(&rows)
        } else {
            render_rules(&rows)
        }
    );
    Ok(())
}

pub fn render_rules(rows: &[RuleRow]) -> String {
    if rows.is_empty() {
        return "no rules: all traffic follows headers and pod lanes\n".into();
    }
    let mut table = Table::new([
        "NAME",
        "SERVICE",
        "LANE",
        "MODE",
        "PRIORITY",
        "ENABLED",
        "HITS",
        "CONDITIONS",
    ]);
    for row in rows {
        let spec = &row.spec;
        let conditions = spec
            .conditions
            .iter()
            .map(|c| serde_json::to_string(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        table.row([
            spec.name.clone(),
            spec.service.clone(),
            spec.lane.clone(),
            format!("{:?}", spec.mode).to_lowercase(),
            spec.priority.to_string(),
            spec.enabled.to_string(),
            row.hits.to_string(),
            conditions,
        ]);
    }
    table.render()
}

pub async fn rules_apply(socket: &Path, file: &Path) -> Result<String, AdminError> {
    let text = std::fs::read(file).map_err(|source| AdminError::ReadFile {
        path: file.to_path_buf(),
        source,
    })?;
    let answer = AdminClient::new(socket)
        .request(Method::POST, "/rules", Bytes::from(text))
        .await?;
    Ok(String::from_utf8_lossy(&answer).trim().to_string())
}

pub async fn rules_action(socket: &Path, name: &str, action: &str) -> Result<String, AdminError> {
    let client = AdminClient::new(socket);
    let answer = match action {
        "delete" => {
            client
                .request(Method::DELETE, &format!("/rules/{name}"), Bytes::new())
                .await?
        }
        _ => {
            client
                .request(
                    Method::POST,
                    &format!("/rules/{name}/{action}"),
                    Bytes::new(),
                )
                .await?
        }
    };
    Ok(String::from_utf8_lossy(&answer).trim().to_string())
}

pub async fn config_dump(socket: &Path) -> Result<(), AdminError> {
    let answer = AdminClient::new(socket)
        .request(Method::GET, "/config_dump", Bytes::new())
        .await?;
    println!("{}", String::from_utf8_lossy(&answer).trim());
    Ok(())
}

#[cfg(test)]
mod tests;
