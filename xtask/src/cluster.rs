//! The `tagger` CLI against one of xtask's own local clusters, each in its
//! own run directory (the bench's, the live-change measurement's, the Go
//! bench's, the soak's), so that none touches a user's cluster.
use std::{path::Path, process::Command};

use anyhow::{Result, bail};

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
