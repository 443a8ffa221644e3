//! A watchdog per cluster: if a test hangs (a child that never exits, a
//! request that never ends), the cluster is taken down after its time limit,
//! which ends whatever waited on its pods, and the test binary exits naming
//! the test and the cluster, instead of holding CI until its own limit.
use std::{
    path::Path,
    process::Command,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    time::Duration,
};

use crate::tagger_bin;

/// Dropping it (when the cluster goes) stops the watch.
pub struct Watchdog(#[allow(dead_code)] Sender<()>);

impl Watchdog {
    pub fn start(file: &str, run_dir: &Path, limit: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        // libtest names each test's thread after the test.
        let test = std::thread::current()
            .name()
            .unwrap_or("(unnamed test)")
            .to_string();
        let (file, run_dir) = (file.to_string(), run_dir.to_path_buf());
        std::thread::spawn(move || {
            if stopped.recv_timeout(limit) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            eprintln!(
                "watchdog: test {test}: cluster {file} still up after {} s; taking it down and ending this test binary",
                limit.as_secs()
            );
            let _ = Command::new(tagger_bin())
                .arg("--run-dir")
                .arg(&run_dir)
                .args(["cluster", "down"])
                .output();
            let _ = std::fs::remove_dir_all(&run_dir);
            std::process::exit(101);
        });
        Watchdog(stop)
    }
}
