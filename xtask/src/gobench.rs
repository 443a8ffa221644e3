//! The cost of Go propagation (the uprobes), measured side by side in one
//! run: a Go chain `front -> back` (tests/apps/go, net/http, one shared
//! client) whose processes tagger probes, against the same chain built from
//! the same source with its Go version string patched to one tagger does
//! not know, which it therefore leaves unprobed. Both chains go through the
//! tagger proxy on both hops; the only difference is the uprobes.
//!
//! Reported: latency at a fixed rate, saturation, the Go processes' CPU per
//! 1000 requests (a uprobe's trap is charged to the process that hits it),
//! and from the kernel's BPF stats how many probe hits a request makes and
//! what each program run costs.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{Mode, median};

const RUN_DIR: &str = "/run/tagger-bench-go";
/// (path, the chain's front service).
const PATHS: [(&str, &str); 2] = [("go-probed", "gp-front"), ("go-unprobed", "gu-front")];

fn tagger_cmd(tagger: &Path) -> Command {
    crate::cluster::command(tagger, RUN_DIR)
}

/// Removes the cluster (and its pods) when the measurement ends, also on
/// error; restores the BPF stats switch.
struct Cleanup<'a> {
    tagger: &'a Path,
    bpf_stats_before: Option<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = tagger_cmd(self.tagger).args(["cluster", "down"]).output();
        if let Some(before) = &self.bpf_stats_before {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", before);
        }
    }
}

fn cluster_file(dir: &Path, bin: &Path) -> Result<PathBuf> {
    let b = bin.display();
    let pod = |name: &str, exe: &str, next: Option<&str>| {
        let next = next.map_or(String::new(), |n| format!(", --next, \"http://{n}:8080/\""));
        format!(
            "  - name: {name}\n    port: 8080\n    pods:\n      - {{name: {name}, command: [taskset, -c, \"1\", {b}/{exe}{next}]}}\n"
        )
    };
    let text = format!(
        "services:\n{}{}{}{}  - name: load\n    pods:\n      - {{name: load, command: [taskset, -c, \"1\", sleep, infinity]}}\n",
        pod("gp-front", "hop-go", Some("gp-back")),
        pod("gp-back", "hop-go", None),
        pod("gu-front", "hop-go-unknown", Some("gu-back")),
        pod("gu-back", "hop-go-unknown", None),
    );
    std::fs::create_dir_all(dir)?;
    let path = dir.join("go-cluster.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The pids of a pod's processes, from its cgroup.
fn pod_pids(record: &Value, pod: &str) -> Vec<u32> {
    let cgroup = record["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["name"] == pod))
        .and_then(|p| p["cgroup"].as_str())
        .unwrap_or_default();
    std::fs::read_to_string(Path::new(cgroup).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// utime + stime of processes, in ms.
fn cpu_ms(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|&pid| {
            let (user, sys) = crate::bench::cpu_ms(pid);
            user + sys
        })
        .sum()
}

/// Run counts and times of the Go programs, by name.
fn go_program_stats(tagger: &Path) -> Result<BTreeMap<String, (f64, f64)>> {
    let out = tagger_cmd(tagger).arg("config-dump").output()?;
    let dump: Value = serde_json::from_slice(&out.stdout).context("config dump")?;
    Ok(dump["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("tagger_go_"))
        })
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                (
                    p["run_count"].as_f64().unwrap_or(0.0),
                    p["run_time_ns"].as_f64().unwrap_or(0.0),
                ),
            )
        })
        .collect())
}

pub fn measure(tagger: &Path, dir: &Path, mode: Mode) -> Result<Value> {
    let bin = tagger_e2e::goapps::build();
    let cluster = cluster_file(dir, &bin)?;
    let _ = tagger_cmd(tagger).args(["cluster", "down"]).output();
    let _cleanup = Cleanup {
        tagger,
        bpf_stats_before: std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok(),
    };
    let record = crate::cluster::up_on_cpu0(tagger, RUN_DIR, &cluster)?;
    let processes = |front: &str| {
        let back = front.replace("front", "back");
        [pod_pids(&record, front), pod_pids(&record, &back)].concat()
    };
    // The probed chain must be probed, the other not: else the comparison
    // would say nothing.
    let dump: Value =
        serde_json::from_slice(&tagger_cmd(tagger).arg("config-dump").output()?.stdout)?;
    let go = dump["processes"]["go"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let probed = go.iter().filter(|p| p["kind"] == "go").count();
    let unprobed = go.iter().filter(|p| p["kind"] == "go-unprobed").count();
    if (probed, unprobed) != (2, 2) {
        bail!("expected 2 probed and 2 unprobed Go processes: {go:#?}");
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("enabling BPF run-time stats")?;
    let plan = mode.plan();
    let bench = crate::bench::Oha::new(tagger, RUN_DIR);
    let url = |front: &str| format!("http://{front}:8080/");
    for (_, front) in PATHS {
        bench.warm_up(&plan, &url(front))?;
    }
    // Fixed rate, the paths in turn (drift hits both alike).
    let mut fixed: BTreeMap<&str, Vec<crate::bench::Sample>> = BTreeMap::new();
    let mut cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut hits: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut probed_requests = 0.0;
    for _ in 0..plan.runs.max(2) {
        for (path, front) in PATHS {
            let pids = processes(front);
            let (cpu_before, stats_before) = (cpu_ms(&pids), go_program_stats(tagger)?);
            let sample = bench.oha(&url(front), &crate::bench::fixed_args(plan.fixed, 500))?;
            let thousands = sample.requests.max(1.0) / 1000.0;
            cpu.entry(path)
                .or_default()
                .push((cpu_ms(&pids) - cpu_before) / thousands);
            if path == "go-probed" {
                probed_requests += sample.requests;
                for (name, (runs, ns)) in go_program_stats(tagger)? {
                    let (runs0, ns0) = stats_before.get(&name).copied().unwrap_or_default();
                    let entry = hits.entry(name).or_default();
                    entry.0 += runs - runs0;
                    entry.1 += ns - ns0;
                }
            }
            fixed.entry(path).or_default().push(sample);
        }
    }
    let mut saturation: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..plan.runs.max(2) {
        for (path, front) in PATHS {
            let sample = bench.oha(&url(front), &crate::bench::saturation_args(plan.saturation))?;
            saturation.entry(path).or_default().push(sample.rps);
        }
    }
    let mut results = serde_json::Map::new();
    for (path, _) in PATHS {
        let sample = crate::bench::Sample::median_of(&fixed[path]);
        results.insert(
            path.to_string(),
            json!({
                "fixed_500rps": {"p50_us": sample.p50, "p99_us": sample.p99, "success": sample.success},
                "saturation_rps": median(saturation.get_mut(path).unwrap()),
                "go_cpu_ms_per_1000_requests": median(cpu.get_mut(path).unwrap()),
            }),
        );
    }
    let per_request: BTreeMap<String, Value> = hits
        .iter()
        .map(|(name, (runs, ns))| {
            (
                name.clone(),
                json!({
                    "hits_per_request": runs / probed_requests.max(1.0),
                    "ns_per_run": if *runs > 0.0 { ns / runs } else { 0.0 },
                }),
            )
        })
        .collect();
    let total_hits: f64 =
        hits.values().map(|(runs, _)| runs).sum::<f64>() / probed_requests.max(1.0);
    // ms per 1000 requests is µs per request.
    let added_cpu_us = results["go-probed"]["go_cpu_ms_per_1000_requests"]
        .as_f64()
        .unwrap_or(0.0)
        - results["go-unprobed"]["go_cpu_ms_per_1000_requests"]
            .as_f64()
            .unwrap_or(0.0);
    results.insert(
        "uprobes".into(),
        json!({
            "programs": per_request,
            "hits_per_request": total_hits,
            "added_cpu_us_per_request": added_cpu_us,
            "added_cpu_us_per_hit": if total_hits > 0.0 { added_cpu_us / total_hits } else { 0.0 },
        }),
    );
    Ok(Value::Object(results))
}
