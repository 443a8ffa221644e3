//! Replays every input of `fuzz/corpus/<target>` (the seeds) and
//! `fuzz/regressions/<target>` (what a fuzzer once found: crashes, broken
//! invariants, timeouts) through the fuzz targets' own bodies
//! (`tagger::fuzzing`), so a finding stays fixed without a fuzzer.
//! `cargo xtask fuzz` adds new findings to `fuzz/regressions`.
use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tagger::fuzzing::TARGETS;

/// Slower than this on one input is a finding too (libFuzzer's `timeout-`
/// files); generous, for a debug build on a busy machine.
const SLOW: Duration = Duration::from_secs(10);

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut failures = Vec::new();
    let mut seeds = 0;
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} has no seeds");
        seeds += corpus.len();
        for file in corpus
            .iter()
            .chain(&inputs(&fuzz.join("regressions").join(name)))
        {
            let data = std::fs::read(file).expect("readable input");
            let started = Instant::now();
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(format!("{name}: {} panicked", file.display()));
            } else if started.elapsed() > SLOW {
                failures.push(format!(
                    "{name}: {} took {:?}",
                    file.display(),
                    started.elapsed()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(seeds >= TARGETS.len());
}
