//! The `tagger` CLI against one of xtask's own local clusters, each in its
//! own run directory (the bench's, the live-change measurement's, the Go
//! bench's, the soak's), so that none touches a user's cluster.
use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `tagger --run-dir DIR ...`.
pub fn command(tagger: &Path, run_dir: &str) -> Command {
    let mut cmd = Command::new(tagger);
    cmd.args(["--run-dir", run_dir]);
    cmd
}

/// Runs `tagger --run-dir DIR ARGS`; its standard output, or its error.
pub fn tagger_ok(tagger: &Path, run_dir: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = command(tagger, run_dir).args(args).output()?;
    if !out.status.success() {
        bail!(
            "tagger {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The cluster record (`cluster.json`: pods, addresses, daemon pid) of a
/// run directory.
pub fn record(run_dir: &str) -> Result<Value> {
    let path = Path::new(run_dir).join("cluster.json");
    let text =
        std::fs::read(&path).with_context(|| format!("the cluster record {}", path.display()))?;
    Ok(serde_json::from_slice(&text)?)
}

/// `cluster up FILE` with tagger (and so its daemon) on CPU 0, the apps'
/// CPU 1 being the measured one; the cluster's record.
pub fn up_on_cpu0(tagger: &Path, run_dir: &str, file: &Path) -> Result<Value> {
    crate::run(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(tagger)
            .args(["--run-dir", run_dir, "cluster", "up"])
            .arg(file)
            .stdout(Stdio::null()),
    )?;
    record(run_dir)
}

/// Takes the cluster of a run directory down when dropped, however the
/// measurement ends.
pub struct Down<'a> {
    pub tagger: &'a Path,
    pub run_dir: &'static str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = command(self.tagger, self.run_dir)
            .args(["cluster", "down"])
            .output();
    }
}
