//! Coverage-guided fuzzing of the parsers that read what others send or
//! write: the sniffer, the inbound header scanner, the rule compiler and
//! evaluator, the cluster file parser (`fuzz/`, bodies in
//! `tagger::fuzzing`).
//!
//! Built by cargo-fuzz (libFuzzer, address sanitizer) with the stable
//! toolchain and `RUSTC_BOOTSTRAP=1`, which lets it take the `-Z` flags the
//! sanitizer and the coverage instrumentation need. Each target runs from
//! its committed seeds (`fuzz/corpus/<target>`) plus a working corpus
//! (`fuzz/work/corpus/<target>`, not committed) that keeps what a run found
//! new; an input that breaks a target (crash, failed invariant, timeout,
//! out of memory) is copied to `fuzz/regressions/<target>/`, which the test
//! `tagger-user/tests/fuzz_regressions.rs` replays on every `cargo test`.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{run, runner::Outcome};

/// The targets, as in fuzz/Cargo.toml and `tagger::fuzzing::TARGETS`.
pub const TARGETS: [&str; 4] = ["sniff", "scan", "rules", "cluster_file"];

/// Prefixes of what libFuzzer writes for an input that broke the target.
const FINDINGS: [&str; 4] = ["crash-", "timeout-", "oom-", "leak-"];

/// What one run of one target did, from libFuzzer's closing lines.
#[derive(Debug, Default)]
pub struct Stats {
    pub target: String,
    pub took: Duration,
    pub execs: u64,
    pub execs_per_sec: u64,
    /// Coverage counters hit (`cov:`) and features (`ft:`), last report.
    pub cov: u64,
    pub features: u64,
    pub corpus: u64,
    /// New inputs copied into fuzz/regressions.
    pub findings: Vec<PathBuf>,
    pub exit_ok: bool,
}

fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .arg("fuzz")
        // The sanitizer and sancov flags are -Z flags: the stable compiler
        // takes them with this (there is no nightly toolchain to fetch).
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Builds every target (address sanitizer, debug assertions on).
pub fn build(root: &Path) -> Result<()> {
    run(cargo_fuzz(root).args(["build", "--debug-assertions"])).context("building the fuzz targets")
}

fn binary(root: &Path, target: &str) -> PathBuf {
    root.join("fuzz/target/x86_64-unknown-linux-gnu/release")
        .join(target)
}

/// Where a run keeps the inputs it found new: the working corpus, or for
/// the bounded run in `test` a scratch one emptied first, so that its time
/// does not grow with what earlier long runs found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    Working,
    Scratch,
}

/// Runs one target for `seconds`; findings go to fuzz/regressions.
pub fn run_target(root: &Path, target: &str, seconds: u64, corpus: Corpus) -> Result<Stats> {
    let fuzz = root.join("fuzz");
    let work = match corpus {
        Corpus::Working => fuzz.join("work/corpus").join(target),
        Corpus::Scratch => {
            let scratch = fuzz.join("work/scratch").join(target);
            let _ = std::fs::remove_dir_all(&scratch);
            scratch
        }
    };
    let artifacts = fuzz.join("work/artifacts").join(target);
    let seeds = fuzz.join("corpus").join(target);
    let regressions = fuzz.join("regressions").join(target);
    for dir in [&work, &artifacts, &regressions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let started = Instant::now();
    let bin = binary(root, target);
    if !bin.exists() {
        bail!("{} is not built", bin.display());
    }
    println!("== fuzz {target} for {seconds} s");
    let output = Command::new(&bin)
        // New inputs go to the first directory: the working corpus.
        .arg(&work)
        .arg(&seeds)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=4096")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let mut stats = parse_stats(&log);
    stats.target = target.to_string();
    stats.took = started.elapsed();
    stats.exit_ok = output.status.success();
    // Keep every finding, new or not yet committed, as a regression case.
    for entry in std::fs::read_dir(&artifacts)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !FINDINGS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let kept = regressions.join(&name);
        if !kept.exists() {
            std::fs::copy(entry.path(), &kept)?;
        }
        std::fs::remove_file(entry.path())?;
        stats.findings.push(kept);
    }
    if !stats.exit_ok || !stats.findings.is_empty() {
        // What libFuzzer said about it: the panic and the input.
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  | {line}");
        }
    }
    println!(
        "   {target}: {} runs in {:.0} s, {} exec/s, cov {} ft {} corpus {}{}",
        stats.execs,
        stats.took.as_secs_f64(),
        stats.execs_per_sec,
        stats.cov,
        stats.features,
        stats.corpus,
        if stats.findings.is_empty() {
            String::new()
        } else {
            format!(", FOUND {}", stats.findings.len())
        }
    );
    Ok(stats)
}

/// libFuzzer's `stat::` lines and its last `cov: ... ft: ... corp: ...`.
fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines() {
        let stat = |key: &str| -> Option<u64> { line.strip_prefix(key)?.trim().parse().ok() };
        if let Some(n) = stat("stat::number_of_executed_units:") {
            stats.execs = n;
        } else if let Some(n) = stat("stat::average_exec_per_sec:") {
            stats.execs_per_sec = n;
        } else if line.starts_with('#') && line.contains(" cov: ") {
            let after = |key: &str| -> Option<u64> {
                let rest = &line[line.find(key)? + key.len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            };
            stats.cov = after(" cov: ").unwrap_or(stats.cov);
            stats.features = after(" ft: ").unwrap_or(stats.features);
            stats.corpus = after(" corp: ").unwrap_or(stats.corpus);
        }
    }
    stats
}

/// Builds and runs `targets` for `seconds` each; fails if any found
/// something or could not run.
pub fn fuzz(root: &Path, seconds: u64, targets: &[&str], corpus: Corpus) -> Result<Vec<Stats>> {
    build(root)?;
    let mut all = Vec::new();
    for target in targets {
        all.push(run_target(root, target, seconds, corpus)?);
    }
    Ok(all)
}

/// `cargo xtask test`'s bounded step: every target for a few seconds, as
/// one outcome of the closing summary (a target that found something or
/// did not run is a failed one).
pub fn smoke(root: &Path, seconds: u64) -> Outcome {
    let started = Instant::now();
    let result = fuzz(root, seconds, &TARGETS, Corpus::Scratch);
    let (passed, failed, problem) = match result {
        Err(e) => (0, TARGETS.len() as u64, Some(format!("{e:#}"))),
        Ok(stats) => {
            let bad: Vec<String> = stats.iter().filter_map(problem).collect();
            let failed = bad.len() as u64;
            (
                stats.len() as u64 - failed,
                failed,
                (!bad.is_empty()).then(|| bad.join("; ")),
            )
        }
    };
    Outcome {
        name: format!("fuzz ({seconds} s per target)"),
        took: started.elapsed(),
        passed,
        failed,
        problem,
    }
}

/// Why a run did not pass, if it did not.
pub fn problem(stats: &Stats) -> Option<String> {
    if !stats.findings.is_empty() {
        let names: Vec<String> = stats
            .findings
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        Some(format!(
            "{} found {} (kept as regression cases): {}",
            stats.target,
            names.len(),
            names.join(", ")
        ))
    } else if !stats.exit_ok {
        Some(format!("{} did not run to its end", stats.target))
    } else if stats.execs == 0 {
        Some(format!("{} ran no input", stats.target))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_lines_are_read() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 3/40b exec/s: 0 rss: 30Mb\n#4096\tpulse  cov: 120 ft: 300 corp: 41/1200b lim: 43 exec/s: 2048 rss: 40Mb\nDone 5000 runs in 2 second(s)\nstat::number_of_executed_units: 5000\nstat::average_exec_per_sec:     2500\nstat::new_units_added:          38\n";
        let stats = parse_stats(log);
        assert_eq!(
            (
                stats.execs,
                stats.execs_per_sec,
                stats.cov,
                stats.features,
                stats.corpus
            ),
            (5000, 2500, 120, 300, 41)
        );
    }
}
