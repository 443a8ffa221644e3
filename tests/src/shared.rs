//! One cluster shared by the tests of a test binary that can share it (for
//! example one cluster holding the chains of several runtimes): started by
//! the first test that asks, reused while tests ask for the same file, and
//! taken down when a test needs another cluster or when the binary exits.
use std::{
    ops::Deref,
    sync::{Mutex, MutexGuard, Once},
    time::Duration,
};

use crate::Cluster;

/// How long a shared cluster may live: the tests of one binary that use it.
pub const SHARED_LIMIT: Duration = Duration::from_secs(900);

static SHARED: Mutex<Option<Cluster>> = Mutex::new(None);
static AT_EXIT: Once = Once::new();

/// The shared cluster, held for the calling test: tests run one at a time
/// (`--test-threads=1`), and each leaves the cluster as it found it.
pub struct SharedCluster(MutexGuard<'static, Option<Cluster>>);

impl Deref for SharedCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        self.0.as_ref().expect("a shared cluster is up")
    }
}

/// The shared cluster of `file`, started if it is not up.
pub fn shared(file: &str) -> SharedCluster {
    // A test that panicked while holding it leaves it usable: each test
    // restores what it changes in guards that run on panic too.
    let mut guard = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|c| c.file != file) {
        // One local cluster at a time: the old one goes first.
        guard.take();
        *guard = Some(Cluster::start(file, SHARED_LIMIT));
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain extern "C" function without
            // arguments, as atexit(3) expects.
            unsafe { libc::atexit(take_down_at_exit) };
        });
    }
    SharedCluster(guard)
}

/// Takes the shared cluster down now: before a test starts a cluster of
/// its own (one local cluster runs at a time).
pub fn release() {
    SHARED.lock().unwrap_or_else(|p| p.into_inner()).take();
}

extern "C" fn take_down_at_exit() {
    let taken = std::panic::catch_unwind(release);
    if let Err(panic) = taken {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        eprintln!("taking the shared cluster down at exit failed: {why}");
        // SAFETY: _exit(2) ends the process at once; exit(3) must not be
        // called again from an atexit handler.
        unsafe { libc::_exit(101) };
    }
}
