//! The release build of `bench`, `soak` and `release`: profile-guided.
//!
//! A build instrumented to count what runs (`-Cprofile-generate`) serves
//! the bench's smoke run (HTTP/1.1 at a fixed rate and at saturation, the
//! Go uprobes, a live change, gRPC over h2c: the paths a node's proxy
//! spends its time on); LLVM's `llvm-profdata` (Debian's LLVM 22, the
//! version rustc 1.95 is built on) merges the counts, and the release
//! build lays out and inlines by them (`-Cprofile-use`). The proxy's CPU
//! per gRPC call is ~15% lower than the same release build without the
//! profile, as a ratio to Envoy's (BENCHMARKS.md, "Profile-guided release
//! build").
//!
//! Each step is skipped when its input has not changed: the instrumented
//! build is incremental, the training runs again only when that build
//! produced a new binary, and the final build's flags name the profile by
//! its contents (a new profile rebuilds, the same one does not).
//!
//! Training needs what the bench needs: root, network namespaces, eBPF.
//! The image build (`deploy/Dockerfile`) cannot train (no privileges in a
//! builder) and uses the profile left in `deploy/pgo/` by
//! `cargo xtask release`, when there is one.
use std::{
    hash::{DefaultHasher, Hasher},
    path::{Path, PathBuf},
    process::Command,
    time::UNIX_EPOCH,
};

use anyhow::{Context, Result, bail};

/// Debian's `llvm-22` (a dependency of `llvm-22-dev`, a build package).
const LLVM_PROFDATA: &str = "/usr/lib/llvm-22/bin/llvm-profdata";
/// The release build, instrumented and guided alike (the image's too).
const RELEASE_BUILD: [&str; 6] = ["build", "--release", "-p", "tagger-user", "--bin", "tagger"];

/// Builds `target/release/tagger` guided by a profile of the bench's load;
/// returns its path.
pub fn build_release(root: &Path) -> Result<PathBuf> {
    let pgo = root.join("target/pgo");
    let raw = pgo.join("raw");
    let instrumented_dir = pgo.join("instrumented");
    println!("== release build, step 1 of 3: instrumented (target/pgo/instrumented)");
    crate::run(
        cargo(root, &format!("-Cprofile-generate={}", raw.display()))
            .args(RELEASE_BUILD)
            .arg("--target-dir")
            .arg(&instrumented_dir),
    )?;
    let instrumented = instrumented_dir.join("release/tagger");
    let stamp = pgo.join("trained-on");
    let profile = pgo.join("tagger.profdata");
    let built = fingerprint_of_file(&instrumented)?;
    let trained = std::fs::read_to_string(&stamp).ok();
    if trained.as_deref() == Some(built.as_str()) && profile.exists() {
        println!("== step 2 of 3: training skipped, the profile is of this build");
    } else {
        println!("== step 2 of 3: training on the bench's smoke run (numbers not kept)");
        // The build's own scripts, instrumented too, left counts here.
        let _ = std::fs::remove_dir_all(&raw);
        std::fs::create_dir_all(&raw)?;
        crate::bench::run_bench(
            root,
            &instrumented,
            crate::bench::Mode::Smoke,
            None,
            &pgo.join("bench"),
        )
        .context("training the release build on the bench's load")?;
        merge(&raw, &profile)?;
        std::fs::write(&stamp, &built)?;
    }
    // The profile named by its contents: the flags change with it, and
    // cargo rebuilds what a new profile changes (it does not track the
    // file itself).
    let named = pgo.join(format!("tagger-{}.profdata", content_hash(&profile)?));
    if !named.exists() {
        std::fs::copy(&profile, &named)?;
    }
    println!(
        "== step 3 of 3: release build guided by {}",
        named.display()
    );
    crate::run(cargo(root, &format!("-Cprofile-use={}", named.display())).args(RELEASE_BUILD))?;
    // The profile for the image build, which cannot train.
    let deploy = root.join("deploy/pgo");
    std::fs::create_dir_all(&deploy)?;
    std::fs::copy(&named, deploy.join("tagger.profdata"))?;
    Ok(root.join("target/release/tagger"))
}

/// Cargo with `flags` as the host build's RUSTFLAGS (the eBPF build clears
/// them: tagger-user/build.rs).
fn cargo(root: &Path, flags: &str) -> Command {
    let mut cmd = crate::cargo(root);
    cmd.env("RUSTFLAGS", flags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

fn merge(raw: &Path, profile: &Path) -> Result<()> {
    let counts: Vec<PathBuf> = std::fs::read_dir(raw)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    if counts.is_empty() {
        bail!(
            "the training left no counts in {}: the instrumented daemon did not exit cleanly",
            raw.display()
        );
    }
    crate::run(
        Command::new(LLVM_PROFDATA)
            .args(["merge", "-o"])
            .arg(profile)
            .args(&counts),
    )
    .with_context(|| format!("{LLVM_PROFDATA} (Debian's llvm-22; run `cargo xtask setup`)"))
}

/// What tells one build of a file from another: its length and time.
fn fingerprint_of_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    let modified = meta.modified()?.duration_since(UNIX_EPOCH)?.as_nanos();
    Ok(format!("{} {modified}\n", meta.len()))
}

fn content_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let mut hasher = DefaultHasher::new();
    hasher.write(&bytes);
    Ok(format!("{:016x}", hasher.finish()))
}
