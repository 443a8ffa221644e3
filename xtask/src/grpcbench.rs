//! `cargo xtask bench`'s HTTP/2 part: unary gRPC calls over h2c (prior
//! knowledge, as gRPC clients inside a cluster speak) from the same pod to
//! the same gRPC server by three paths, side by side in one run:
//! - direct: the server's second port (8081), which no service declares;
//! - tagger: `grpc:8080` (`protocol: grpc`), redirected to the node proxy,
//!   which decides every stream on its own;
//! - envoy: one worker on the node, HTTP/2 both ways, to 8081.
//!
//! The server is the grpc-go hop of the end-to-end tests
//! (tests/apps/grpc-go, a leaf: it answers `<pod>(<request>)` with
//! `grpc-status` trailers); the load is `h2load` (nghttp2) posting one
//! gRPC-framed message per call. h2load reports no percentiles: they come
//! from its per-request log (latency from each request's start, not
//! corrected for coordinated omission). Proxies on CPU 0; h2load and the
//! server on CPU 1, as in the HTTP/1.1 bench.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{Mode, cpu_ms, envoy_binary, median, pin, wait_port};

const RUN_DIR: &str = "/run/tagger-bench-grpc";
const ENVOY_PORT: u16 = 10003;
pub const PATHS: [&str; 3] = ["direct", "tagger", "envoy"];
const METHOD: &str = "/lanes.Hop/Call";
/// Calls per second of the fixed-rate runs: 8 connections at 125 each.
const FIXED_RATE: u32 = 1000;

/// Stops Envoy (by its own handle) and removes the cluster, however the
/// measurement ends.
struct Cleanup<'a> {
    tagger: &'a Path,
    envoy: Option<Child>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(envoy) = &mut self.envoy {
            let _ = envoy.kill();
            let _ = envoy.wait();
        }
        let _ = crate::cluster::command(self.tagger, RUN_DIR)
            .args(["cluster", "down"])
            .output();
    }
}

fn cluster_file(dir: &Path, server: &Path) -> Result<PathBuf> {
    let s = server.display();
    let text = format!(
        "services:\n  - name: grpc\n    port: 8080\n    protocol: grpc\n    pods:\n      - {{name: grpc, command: [taskset, -c, \"1\", {s}, --port, \"8080\", --port, \"8081\"]}}\n\
         \x20 - name: load\n    pods:\n      - {{name: load, command: [taskset, -c, \"1\", sleep, infinity]}}\n"
    );
    let path = dir.join("grpc-cluster.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn envoy_config(dir: &Path, server: &str) -> Result<PathBuf> {
    let path = dir.join("envoy-grpc.yaml");
    std::fs::write(
        &path,
        format!(
            r#"static_resources:
  listeners:
  - address: {{socket_address: {{address: 10.77.0.1, port_value: {ENVOY_PORT}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: grpc
          codec_type: HTTP2
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: grpc}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: grpc
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {server}, port_value: 8081}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#
        ),
    )?;
    Ok(path)
}

/// One h2load run: calls per second, success share and latency
/// percentiles in µs.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    success: f64,
    p50: f64,
    p99: f64,
    calls: f64,
}

struct H2load<'a> {
    tagger: &'a Path,
    /// The gRPC-framed request body.
    body: PathBuf,
    log: PathBuf,
}

impl H2load<'_> {
    fn run(&self, url: &str, args: &[String]) -> Result<Sample> {
        let _ = std::fs::remove_file(&self.log);
        let out = crate::cluster::command(self.tagger, RUN_DIR)
            .args([
                "cluster", "exec", "load", "--", "taskset", "-c", "1", "h2load",
            ])
            .arg(format!("--log-file={}", self.log.display()))
            .arg(format!("--data={}", self.body.display()))
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .args(args)
            .arg(url)
            .output()
            .context("running h2load in the load pod")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "h2load failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(
            &stdout,
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

/// h2load's summary (`finished in 2.00s, 12345.67 req/s, ...` and
/// `requests: N total, ... S succeeded, ...`) and per-request log (start
/// µs, status, µs to the end of the response; tab-separated).
fn parse(summary: &str, log: &str) -> Result<Sample> {
    let field = |line_start: &str, before: &str| -> Option<f64> {
        let line = summary.lines().find(|l| l.starts_with(line_start))?;
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| *w == before)?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    let (Some(rps), Some(total), Some(succeeded)) = (
        field("finished in", "req/s"),
        field("requests:", "total"),
        field("requests:", "succeeded"),
    ) else {
        bail!("h2load's summary not understood: {summary}");
    };
    let mut latencies: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.get(1) == Some(&"200")).then(|| cols.get(2)?.trim().parse().ok())?
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Sample {
        rps,
        success: if total > 0.0 { succeeded / total } else { 0.0 },
        p50: at(0.5),
        p99: at(0.99),
        calls: succeeded,
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// One call through each path with a real gRPC client, checking the
/// answer: the paths carry gRPC end to end before anything is timed.
fn check_paths(tagger: &Path, urls: &BTreeMap<&str, String>) -> Result<()> {
    let client = tagger_e2e::workspace().join("tests/apps/grpc_client.py");
    for (path, url) in urls {
        let target = url.trim_start_matches("http://");
        let out = crate::cluster::tagger_ok(
            tagger,
            RUN_DIR,
            &[
                "cluster",
                "exec",
                "load",
                "--",
                "python3",
                client.to_str().unwrap_or_default(),
                "call",
                target,
                METHOD,
                "m=check",
            ],
        )?;
        let answer = String::from_utf8_lossy(&out);
        if answer.trim() != "grpc(m=check)" {
            bail!("gRPC through {path} answered {answer:?}");
        }
    }
    Ok(())
}

pub fn measure(tagger: &Path, dir: &Path, mode: Mode) -> Result<Value> {
    let server = tagger_e2e::goapps::build_grpc();
    let cluster = cluster_file(dir, &server)?;
    let _ = crate::cluster::command(tagger, RUN_DIR)
        .args(["cluster", "down"])
        .output();
    let mut cleanup = Cleanup {
        tagger,
        envoy: None,
    };
    let record = crate::cluster::up_on_cpu0(tagger, RUN_DIR, &cluster)?;
    let ip = record["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["name"] == "grpc"))
        .and_then(|p| p["ip"].as_str())
        .context("the grpc pod's address")?
        .to_string();
    let daemon = record["daemon_pid"].as_u64().context("daemon pid")? as u32;
    pin(daemon, "0")?;
    let envoy = Command::new("taskset")
        .args(["-c", "0"])
        .arg(envoy_binary())
        .args(["--concurrency", "1", "--log-level", "error", "-c"])
        .arg(envoy_config(dir, &ip)?)
        // Its own id: the HTTP/1.1 bench's Envoy may have left its shared
        // memory behind.
        .args(["--base-id", "7"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting envoy")?;
    let envoy_pid = envoy.id();
    cleanup.envoy = Some(envoy);
    wait_port(&format!("10.77.0.1:{ENVOY_PORT}"))?;
    wait_port(&format!("{ip}:8081"))?;

    let urls: BTreeMap<&str, String> = BTreeMap::from([
        ("direct", format!("http://{ip}:8081")),
        ("tagger", "http://grpc:8080".to_string()),
        ("envoy", format!("http://10.77.0.1:{ENVOY_PORT}")),
    ]);
    check_paths(tagger, &urls)?;
    // A gRPC message: uncompressed, 7 bytes.
    let body = dir.join("grpc-call.bin");
    std::fs::write(&body, b"\x00\x00\x00\x00\x07m=bench")?;
    let h2load = H2load {
        tagger,
        body,
        log: dir.join("h2load.log"),
    };
    let plan = mode.plan();
    let url = |path: &str| format!("{}{METHOD}", urls[path]);
    let warm = |secs: u32| -> Vec<String> {
        if plan.warmup {
            strings(&["--warm-up-time", "1s", "-D", &format!("{secs}s")])
        } else {
            strings(&["-D", &format!("{secs}s")])
        }
    };
    let fixed_args = [
        warm(plan.fixed),
        strings(&["-c", "8", "-m", "4", "--rps", &(FIXED_RATE / 8).to_string()]),
    ]
    .concat();
    let saturation_args = [warm(plan.saturation), strings(&["-c", "4", "-m", "16"])].concat();
    let proxy = |path: &str| match path {
        "tagger" => Some(daemon),
        "envoy" => Some(envoy_pid),
        _ => None,
    };

    // The paths take turns round by round, so that this shared machine's
    // slow moments fall on all of them. CPU is the proxy's utime + stime
    // over each fixed-rate run per 1000 calls answered.
    let mut fixed: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let mut cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut cpu_user: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // The daemon's CPU while the other paths run: what it spends on calls
    // it does not proxy (following the server's inbound streams for
    // propagation, its timers), a part of its figure on the tagger path too.
    let mut daemon_aside: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut saturation: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    // (user + system, user) ms per 1000 calls.
    let per_thousand = |pid: u32, (user, sys): (f64, f64), calls: f64| {
        let (user_after, sys_after) = cpu_ms(pid);
        let thousands = calls.max(1.0) / 1000.0;
        (
            (user_after - user + sys_after - sys) / thousands,
            (user_after - user) / thousands,
        )
    };
    for _ in 0..plan.grpc_rounds {
        for path in PATHS {
            let before = proxy(path).map(cpu_ms);
            let daemon_before = cpu_ms(daemon);
            let sample = h2load.run(&url(path), &fixed_args)?;
            if let (Some(pid), Some(before)) = (proxy(path), before) {
                let (total, user) = per_thousand(pid, before, sample.calls);
                cpu.entry(path).or_default().push(total);
                cpu_user.entry(path).or_default().push(user);
            }
            if path != "tagger" {
                daemon_aside
                    .entry(path)
                    .or_default()
                    .push(per_thousand(daemon, daemon_before, sample.calls).0);
            }
            fixed.entry(path).or_default().push(sample);
        }
        for path in PATHS {
            let sample = h2load.run(&url(path), &saturation_args)?;
            saturation.entry(path).or_default().push(sample);
        }
    }
    // Within a round tagger and Envoy run seconds apart: the round's ratio
    // shows how far this shared machine's drift moves the medians' one.
    let by_round: Vec<f64> = match (cpu.get("tagger"), cpu.get("envoy")) {
        (Some(t), Some(e)) => t.iter().zip(e).map(|(t, e)| t / e.max(1e-9)).collect(),
        _ => Vec::new(),
    };
    let mut results = serde_json::Map::new();
    let field = |samples: &[Sample], f: fn(&Sample) -> f64| {
        median(&mut samples.iter().map(f).collect::<Vec<_>>())
    };
    for path in PATHS {
        let (f, s) = (&fixed[path], &saturation[path]);
        results.insert(
            path.to_string(),
            json!({
                "fixed_1000rps": {
                    "p50_us": field(f, |x| x.p50),
                    "p99_us": field(f, |x| x.p99),
                    "success": field(f, |x| x.success),
                },
                "saturation": {"rps": field(s, |x| x.rps), "success": field(s, |x| x.success)},
                "cpu_ms_per_1000_calls": cpu.get_mut(path).map(|v| median(v)),
                "cpu_user_ms_per_1000_calls": cpu_user.get_mut(path).map(|v| median(v)),
                "daemon_cpu_ms_per_1000_calls": daemon_aside.get_mut(path).map(|v| median(v)),
            }),
        );
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let get = |path: &str, pointer: &str| results[path].pointer(pointer).and_then(Value::as_f64);
    let cpu_ratio = ratio(
        get("tagger", "/cpu_ms_per_1000_calls"),
        get("envoy", "/cpu_ms_per_1000_calls"),
    );
    let saturation_ratio = ratio(
        get("tagger", "/saturation/rps"),
        get("envoy", "/saturation/rps"),
    );
    results.insert("cpu_tagger_to_envoy".into(), json!(cpu_ratio));
    results.insert("cpu_tagger_to_envoy_by_round".into(), json!(by_round));
    results.insert("saturation_tagger_to_envoy".into(), json!(saturation_ratio));
    Ok(Value::Object(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_output_is_read() {
        let summary = "\
finished in 2.00s, 12345.67 req/s, 1.20MB/s
requests: 24691 total, 24691 started, 24691 done, 24690 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 24691 2xx, 0 3xx, 0 4xx, 0 5xx
";
        let log = "1700000000000000\t200\t100\n1700000000000100\t200\t300\n\
                   1700000000000200\t200\t200\n1700000000000300\t-1\t9999\n";
        let s = parse(summary, log).unwrap();
        assert_eq!((s.rps, s.calls), (12345.67, 24690.0));
        assert!((s.success - 24690.0 / 24691.0).abs() < 1e-9);
        // Failed requests (status -1) are not latencies.
        assert_eq!((s.p50, s.p99), (200.0, 300.0));
        assert!(parse("nothing", "").is_err());
    }
}
