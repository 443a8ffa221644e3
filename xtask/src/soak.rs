//! `cargo xtask soak`: a bounded run of everything at once on one cluster
//! (tests/clusters/soak.yaml: a Python and a Go chain) with mixed lanes,
//! connection churn (tests/apps/soak.py checks every answer), b's gray
//! pods stopped and started and the rules disabled and enabled in turn.
//! Sampled every 10 s: the daemon's RSS and open fds, the kernel maps it
//! holds, its context store. Passes when no answer was in a wrong lane and
//! the figures are flat after the warm-up; writes target/soak/.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const RUN_DIR: &str = "/run/tagger-soak";
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The first samples are the warm-up: caches, pools and maps filling.
const WARM_UP: Duration = Duration::from_secs(60);
/// Disturbances, one every this long, in turn.
const DISTURB_EVERY: Duration = Duration::from_secs(15);
const DISTURBANCES: [(&str, &str, &str); 4] = [
    ("stop-pod", "start-pod", "py-b-gray"),
    ("stop-pod", "start-pod", "go-b-gray"),
    ("disable", "enable", "py-b-user-100"),
    ("disable", "enable", "go-b-user-100"),
];

fn tagger(tagger: &Path, args: &[&str]) -> Result<Vec<u8>> {
    crate::cluster::tagger_ok(tagger, RUN_DIR, args)
}

/// What soak.py reported last: (ok, wrong, failed), and its WRONG lines.
#[derive(Default)]
struct Tally {
    counts: (u64, u64, u64),
    wrong: Vec<String>,
}

fn sample(tagger_bin: &Path, elapsed: f64, tally: &Tally) -> Result<Value> {
    let record = crate::cluster::record(RUN_DIR)?;
    let daemon = record["daemon_pid"].as_u64().context("daemon pid")?;
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{daemon}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{daemon}/fd"))?.count();
    let dump: Value = serde_json::from_slice(&tagger(tagger_bin, &["config-dump"])?)?;
    Ok(json!({
        "t_s": elapsed.round(),
        "requests_ok": tally.counts.0,
        "wrong": tally.counts.1,
        "failed": tally.counts.2,
        "rss_kib": rss_kib,
        "fds": fds,
        "maps": dump["maps"],
        "contexts": dump["propagation"],
        "go_processes": dump["processes"]["go"].as_array().map_or(0, Vec::len),
    }))
}

/// The largest value of `key` (a JSON pointer) among samples.
fn peak(samples: &[&Value], key: &str) -> f64 {
    samples
        .iter()
        .filter_map(|s| s.pointer(key)?.as_f64())
        .fold(0.0, f64::max)
}

pub fn run(root: &Path, tagger_bin: &Path, seconds: u64) -> Result<()> {
    tagger_e2e::goapps::build();
    let _ = Command::new(tagger_bin)
        .args(["--run-dir", RUN_DIR, "cluster", "down"])
        .output();
    let cluster = root.join("tests/clusters/soak.yaml");
    tagger(tagger_bin, &["cluster", "up", cluster.to_str().unwrap()])?;
    let _down = crate::cluster::Down {
        tagger: tagger_bin,
        run_dir: RUN_DIR,
    };
    let mut client = Command::new(tagger_bin)
        .args(["--run-dir", RUN_DIR, "cluster", "exec", "client", "--"])
        .arg("python3")
        .arg(root.join("tests/apps/soak.py"))
        .arg("8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting soak.py")?;
    let stdout = client.stdout.take().context("soak.py stdout")?;
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let sink = tally.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut tally = sink.lock().unwrap();
            if let Some(wrong) = line.strip_prefix("WRONG ") {
                tally.wrong.push(wrong.to_string());
                continue;
            }
            let n: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [_, ok, wrong, failed] = n[..] {
                tally.counts = (ok, wrong, failed);
            }
        }
    });

    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut samples = Vec::new();
    let mut next_sample = start;
    let mut next_disturbance = start + DISTURB_EVERY;
    let mut turn = 0;
    let mut undo: Option<(&str, &str)> = None;
    println!("soak: {seconds} s, sampling every {SAMPLE_EVERY:?}");
    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_sample {
            let s = sample(
                tagger_bin,
                now.duration_since(start).as_secs_f64(),
                &tally.lock().unwrap(),
            )?;
            println!("soak: {s}");
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_disturbance {
            // Undo the last change first, then make the next one: one
            // thing is off at a time, for half a period.
            match undo.take() {
                Some((verb, name)) => apply(tagger_bin, verb, name)?,
                None => {
                    let (verb, back, name) = DISTURBANCES[turn % DISTURBANCES.len()];
                    apply(tagger_bin, verb, name)?;
                    undo = Some((back, name));
                    turn += 1;
                }
            }
            next_disturbance += DISTURB_EVERY / 2;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some((verb, name)) = undo.take() {
        apply(tagger_bin, verb, name)?;
    }
    drop(client.stdin.take());
    let _ = client.wait();
    let _ = reader.join();
    let tally = tally.lock().unwrap();
    samples.push(sample(tagger_bin, start.elapsed().as_secs_f64(), &tally)?);
    report(root, seconds, &samples, &tally, turn)
}

fn apply(tagger_bin: &Path, verb: &str, name: &str) -> Result<()> {
    match verb {
        "stop-pod" | "start-pod" => tagger(tagger_bin, &["cluster", verb, name]),
        _ => tagger(tagger_bin, &["rules", verb, name]),
    }
    .map(drop)
}

/// Checks the outcome and writes target/soak/results.{json,md}.
fn report(
    root: &Path,
    seconds: u64,
    samples: &[Value],
    tally: &Tally,
    changes: usize,
) -> Result<()> {
    let warm = WARM_UP.as_secs_f64().min(seconds as f64 / 3.0);
    let after: Vec<&Value> = samples
        .iter()
        .filter(|s| s["t_s"].as_f64().unwrap_or(0.0) >= warm)
        .collect();
    let (first, last) = after.split_at(after.len() / 2);
    let mut growth = serde_json::Map::new();
    let mut flat = true;
    // (figure, JSON pointer, slack): the second half's peak may exceed the
    // first half's by the slack at most.
    for (name, key, slack) in [
        ("rss_kib", "/rss_kib", 4096.0),
        ("fds", "/fds", 16.0),
        ("flows", "/maps/flows", 256.0),
        ("request_tags", "/maps/request_tags", 256.0),
        ("process_kinds", "/maps/process_kinds", 64.0),
        ("context_threads", "/contexts/threads", 64.0),
        ("context_ids", "/contexts/ids", 64.0),
    ] {
        let (before, later) = (peak(first, key), peak(last, key));
        let ok = later <= before * 1.1 + slack;
        flat &= ok;
        growth.insert(
            name.into(),
            json!({"first_half_peak": before, "second_half_peak": later, "flat": ok}),
        );
    }
    let (ok, wrong, failed) = tally.counts;
    let result = json!({
        "seconds": seconds,
        "changes": changes,
        "requests_ok": ok,
        "wrong": wrong,
        "failed": failed,
        "wrong_examples": tally.wrong,
        "growth_after_warm_up": growth,
        "samples": samples,
    });
    let dir = root.join("target/soak");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    let mut md = format!(
        "Soak: {seconds} s, {changes} changes (pod stop/start, rule disable/enable), {ok} answers right, {wrong} in a wrong lane, {failed} failed\n\n| figure | first half peak | second half peak | flat |\n|---|---|---|---|\n"
    );
    for (name, g) in &growth {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            g["first_half_peak"], g["second_half_peak"], g["flat"]
        );
    }
    std::fs::write(dir.join("results.md"), &md)?;
    println!("{md}");
    if ok == 0 {
        bail!("soak: no request was answered");
    }
    if wrong > 0 {
        bail!(
            "soak: {wrong} answers in a wrong lane, e.g. {:?}",
            tally.wrong
        );
    }
    if !flat {
        bail!("soak: figures still growing after the warm-up: {growth:?}");
    }
    Ok(())
}
