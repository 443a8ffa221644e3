//! `cargo xtask`: set-up, tests, the demo and the local cluster.
//!
//! Every command first makes sure the machine has what it needs (Debian
//! packages, bpf-linker) and installs only what is missing, so each one works
//! on a fresh Debian/Ubuntu VM as root.
mod bench;
mod cluster;
mod demo;
mod fuzz;
mod gobench;
mod grpcbench;
mod pgo;
mod runner;
mod setup;
mod soak;
mod switch;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup {
        /// Only what building the `tagger` binary needs (the image's builder).
        #[arg(long)]
        build_only: bool,
    },
    /// Build the workspace (the eBPF programs come with it).
    Build,
    /// Every test: format and lint checks, unit tests, privileged end-to-end tests.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Scenario A of the spec end to end: build, start, send, show, clean up.
    Demo,
    /// Start a local cluster from FILE and the node daemon; return when ready.
    Up { file: PathBuf },
    /// Run a command inside a pod of the local cluster.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove everything `up` made.
    Down,
    /// Fuzz the sniffer, header scanner, rules and cluster file parser
    /// (libFuzzer); findings are kept in fuzz/regressions/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (sniff, scan, rules, cluster_file).
        target: Option<String>,
    },
    /// Measure a tagger hop against direct, Envoy and HAProxy; writes target/bench/.
    Bench {
        #[arg(long, value_enum, default_value = "full")]
        mode: bench::Mode,
        /// Only this part (results written as for a whole run).
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
    /// The release build, guided by a profile of the bench's load
    /// (target/release/tagger; the profile also to deploy/pgo/ for the
    /// image build).
    Release,
    /// Everything at once for a bounded time (mixed lanes, connection churn,
    /// pods stopped and started, rules toggled): 0 wrong lanes, RSS, fds and
    /// maps flat after the warm-up; writes target/soak/.
    Soak {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup { build_only: false } => setup::ensure()?,
        Task::Setup { build_only: true } => setup::ensure_build_only()?,
        Task::Build => {
            setup::ensure()?;
            build(&root)?;
        }
        Task::Test { filter } => {
            require_root("the end-to-end tests create network namespaces, cgroups and load eBPF")?;
            setup::ensure()?;
            test(&root, filter.as_deref())?;
        }
        Task::Demo => {
            require_root("the demo creates network namespaces, cgroups and loads eBPF")?;
            setup::ensure()?;
            build(&root)?;
            return demo(&root);
        }
        Task::Up { file } => {
            require_root("a local cluster needs network namespaces, cgroups and eBPF")?;
            setup::ensure()?;
            build(&root)?;
            let file = std::fs::canonicalize(&file)
                .with_context(|| format!("cluster file {}", file.display()))?;
            return tagger(
                &root,
                &["cluster".as_ref(), "up".as_ref(), file.as_os_str()],
            );
        }
        Task::Exec { pod, command } => {
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "cluster".as_ref(),
                "exec".as_ref(),
                pod.as_ref(),
                "--".as_ref(),
            ];
            args.extend(command.iter().map(|c| std::ffi::OsStr::new(c.as_str())));
            return tagger(&root, &args);
        }
        Task::Down => return tagger(&root, &["cluster".as_ref(), "down".as_ref()]),
        Task::Fuzz { seconds, target } => {
            setup::ensure()?;
            let targets: Vec<&str> = match target.as_deref() {
                None => fuzz::TARGETS.to_vec(),
                Some(t) if fuzz::TARGETS.contains(&t) => vec![t],
                Some(t) => bail!(
                    "no fuzz target {t:?}; the targets are {}",
                    fuzz::TARGETS.join(", ")
                ),
            };
            let stats = fuzz::fuzz(&root, seconds, &targets, fuzz::Corpus::Working)?;
            let problems: Vec<String> = stats.iter().filter_map(fuzz::problem).collect();
            if !problems.is_empty() {
                bail!("{}", problems.join("\n"));
            }
        }
        Task::Bench { mode, only } => {
            require_root("the bench creates network namespaces, cgroups and loads eBPF")?;
            setup::ensure()?;
            let tagger = pgo::build_release(&root)?;
            bench::run_bench(&root, &tagger, mode, only, &root.join("target/bench"))?;
        }
        Task::Release => {
            require_root("training the build runs the bench: network namespaces, cgroups, eBPF")?;
            setup::ensure()?;
            let tagger = pgo::build_release(&root)?;
            println!("built: {}", tagger.display());
        }
        Task::Soak { seconds } => {
            require_root("the soak creates network namespaces, cgroups and loads eBPF")?;
            setup::ensure()?;
            let tagger = pgo::build_release(&root)?;
            soak::run(&root, &tagger, seconds)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    if euid != 0 {
        bail!("this must run as root: {why}. Not being root is a failure, not a skip.");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

pub(crate) fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn build(root: &Path) -> Result<()> {
    run(cargo(root).args(["build", "--workspace", "--bins"]))
}

fn tagger_bin(root: &Path) -> PathBuf {
    root.join("target/debug/tagger")
}

fn tagger(root: &Path, args: &[&std::ffi::OsStr]) -> Result<ExitCode> {
    let bin = tagger_bin(root);
    if !bin.exists() {
        bail!(
            "{} is not built; run `cargo xtask build` or `cargo xtask up FILE`",
            bin.display()
        );
    }
    let status = Command::new(&bin)
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(ExitCode::from(status.code().unwrap_or(1) as u8))
}

fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    if filter.is_none() {
        println!("== format and lint");
        run(cargo(root).args(["fmt", "--all", "--check"]))?;
        // The kernel crate and the fuzz targets are outside the workspace
        // (their own target and lock).
        run(cargo(root).args([
            "fmt",
            "--manifest-path",
            "tagger-ebpf/Cargo.toml",
            "--check",
        ]))?;
        run(cargo(root).args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
        run(cargo(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The kernel crate too, checked for the host (clippy's lints do not
        // depend on the target; its build for bpfel needs build-std).
        run(cargo(root).args([
            "clippy",
            "--manifest-path",
            "tagger-ebpf/Cargo.toml",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    println!("== build");
    build(root)?;
    run(cargo(root).args(["test", "--workspace", "--no-run"]))?;
    let limit = binary_limit();
    let mut outcomes = Vec::new();
    println!("== unit and in-process tests");
    let mut unit = cargo(root);
    unit.args(["test", "--workspace", "--exclude", "tagger-e2e"]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    outcomes.push(runner::run_limited(
        "unit and in-process",
        &mut unit,
        limit,
    )?);
    if filter.is_none() {
        println!("== fuzz targets, a few seconds each (`cargo xtask fuzz` runs longer)");
        outcomes.push(fuzz::smoke(root, fuzz_seconds()));
    }
    println!("== privileged end-to-end tests");
    for binary in e2e_binaries(root)? {
        let mut e2e = cargo(root);
        e2e.args(["test", "-p", "tagger-e2e", "--test", &binary])
            .env("TAGGER_BIN", tagger_bin(root))
            .arg("--")
            // One local cluster at a time: they share the bridge and names.
            .arg("--test-threads=1");
        if let Some(f) = filter {
            e2e.arg(f);
        }
        outcomes.push(runner::run_limited(
            &format!("e2e {binary}"),
            &mut e2e,
            limit,
        )?);
    }
    if filter.is_none() {
        println!("== bench harness smoke run (checks it produces a table, not timings)");
        let started = std::time::Instant::now();
        let smoke = bench::run_bench(
            root,
            &tagger_bin(root),
            bench::Mode::Smoke,
            None,
            &root.join("target/bench"),
        )
        .and_then(|()| bench::check_report(&root.join("target/bench")));
        outcomes.push(runner::Outcome {
            name: "bench smoke".into(),
            took: started.elapsed(),
            passed: u64::from(smoke.is_ok()),
            failed: u64::from(smoke.is_err()),
            problem: smoke.err().map(|e| format!("{e:#}")),
        });
    }
    print!("{}", runner::summary(&outcomes));
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.problem.as_ref().map(|p| format!("{}: {p}", o.name)))
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Each test binary's time limit: `TAGGER_TEST_BINARY_LIMIT` seconds, else
/// 15 minutes (the slowest binary takes about a tenth of that here).
fn binary_limit() -> std::time::Duration {
    let secs = std::env::var("TAGGER_TEST_BINARY_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    std::time::Duration::from_secs(secs)
}

/// Seconds per fuzz target in `test`: `TAGGER_TEST_FUZZ_SECONDS`, else 5.
fn fuzz_seconds() -> u64 {
    std::env::var("TAGGER_TEST_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// The end-to-end test binaries: one per file in tests/tests.
fn e2e_binaries(root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("tests/tests"))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

fn demo(root: &Path) -> Result<ExitCode> {
    demo::run(root, &tagger_bin(root))
}
