//! Which way each pod process's requests are tied to the requests that
//! caused them, decided from its executable (never its name): Go programs
//! get goroutine correlation through uprobes, everything else thread
//! correlation (see `tagger-ebpf/src/procs.rs` for the kernel's side).
//!
//! The kernel asks about a pod's process the first time it reads or sends
//! a request, and again after every exec; until the answer is in, nothing
//! the process sends is trusted. At start the daemon also classifies every
//! process already in a pod, before redirection is switched on, so apps
//! started before the daemon are probed before their first request.
//!
//! A Go binary is inspected once per file (`golang::inspect`: version,
//! functions, offsets); one that cannot be probed (an unknown Go version
//! without DWARF, no net/http, a refused uprobe) is left exactly as it was
//! and marked `GO_UNPROBED`, so its calls are untrusted, never wrong.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tagger_common::{PROC_CLASSIFY, PROC_EXIT, kind};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use crate::{
    ebpf::Datapath,
    golang::{self, GoBinary, OffsetSource},
};

/// Inspections kept (one per distinct executable file).
const MAX_INSPECTED: usize = 256;

/// Identifies an executable file's content as far as a stat can: a file
/// replaced in place (new mtime or size) is inspected again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ExeId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn exe_id(path: &Path) -> std::io::Result<ExeId> {
    let meta = std::fs::metadata(path)?;
    Ok(ExeId {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

/// What an executable is to tagger.
#[derive(Debug, Clone)]
enum Inspection {
    NotGo,
    Go(Arc<GoBinary>),
    /// A Go binary tagger cannot probe, and why.
    GoUnprobeable(String),
}

/// How a process is correlated: shown in the config dump.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ProcessKind {
    Threads,
    Go {
        version: String,
        offsets: &'static str,
        uprobes: usize,
        /// grpc-go's streams: "followed", "not linked", or why not
        /// (its calls are then untrusted where the process serves).
        grpc: String,
    },
    GoUnprobed {
        version: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub exe: PathBuf,
    #[serde(flatten)]
    pub kind: ProcessKind,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessesDump {
    pub go: Vec<ProcessRow>,
    pub threads_classified: u64,
}

pub struct Classifier {
    datapath: Arc<Datapath>,
    inspected: Mutex<HashMap<ExeId, Inspection>>,
    /// Go processes, by pid.
    rows: Mutex<BTreeMap<u32, ProcessRow>>,
    /// Processes classified as thread-per-request so far.
    threads: AtomicU64,
    /// True while a successor takes over: the process ring and the kinds
    /// map are its to answer now. A watch, so that the classifier sleeps
    /// until it may answer again instead of looking now and then.
    paused: tokio::sync::watch::Sender<bool>,
}

impl Classifier {
    pub fn new(datapath: Arc<Datapath>) -> Self {
        Self {
            datapath,
            inspected: Mutex::new(HashMap::new()),
            rows: Mutex::new(BTreeMap::new()),
            threads: AtomicU64::new(0),
            paused: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Stops (or resumes) answering the kernel: a successor answers while
    /// it takes over, and for good once it has.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// The Go processes (probed or not), by pid, and how many processes
    /// were classified thread-per-request.
    pub fn dump(&self) -> ProcessesDump {
        ProcessesDump {
            go: self
                .rows
                .lock()
                .expect("rows lock")
                .values()
                .cloned()
                .collect(),
            threads_classified: self.threads.load(Ordering::Relaxed),
        }
    }

    /// Classifies every process whose cgroup is one of `pod_cgroups`
    /// (blocking: reads /proc and inspects binaries).
    pub fn scan(&self, pod_cgroups: &HashSet<u64>) {
        let Ok(root) = crate::cgroup::v2_root() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for pid in entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
        {
            if cgroup_of(&root, pid).is_some_and(|id| pod_cgroups.contains(&id)) {
                self.classify(pid);
            }
        }
    }

    /// Answers the kernel's question about `pid` (blocking).
    pub fn classify(&self, pid: u32) {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        // The image may change under us (exec): a second look settles it,
        // and a later exec asks again anyway.
        for _ in 0..2 {
            let Ok(before) = exe_id(&exe) else {
                return self.forget(pid); // gone, or a kernel thread
            };
            let inspection = self.inspect(&exe, before);
            let kind = self.apply(pid, &exe, &inspection);
            if exe_id(&exe).ok() != Some(before) {
                continue;
            }
            let mut rows = self.rows.lock().expect("rows lock");
            if matches!(kind, ProcessKind::Threads) {
                // Not kept: the kernel tells no exit of these (too many).
                rows.remove(&pid);
                self.threads.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let path = std::fs::read_link(&exe).unwrap_or(exe.clone());
            info!(pid, exe = %path.display(), ?kind, "Go process");
            rows.insert(
                pid,
                ProcessRow {
                    pid,
                    exe: path,
                    kind,
                },
            );
            return;
        }
    }

    /// A process exited (or exec'd out of Go): its uprobes go.
    pub fn forget(&self, pid: u32) {
        self.datapath.detach_go(pid);
        self.rows.lock().expect("rows lock").remove(&pid);
    }

    fn inspect(&self, exe: &Path, id: ExeId) -> Inspection {
        if let Some(known) = self.inspected.lock().expect("inspected lock").get(&id) {
            return known.clone();
        }
        let inspection = match golang::is_go_binary(exe) {
            Ok(false) => Inspection::NotGo,
            // Unreadable or damaged: not classifiable as Go, so it cannot
            // be trusted as threads either.
            Err(error) => Inspection::GoUnprobeable(error.to_string()),
            Ok(true) => match golang::inspect(exe) {
                Ok(binary) => Inspection::Go(Arc::new(binary)),
                Err(error) => Inspection::GoUnprobeable(error.to_string()),
            },
        };
        let mut inspected = self.inspected.lock().expect("inspected lock");
        if inspected.len() >= MAX_INSPECTED {
            inspected.clear();
        }
        inspected.insert(id, inspection.clone());
        inspection
    }

    /// Attaches (or not) and tells the kernel the process's kind.
    fn apply(&self, pid: u32, exe: &Path, inspection: &Inspection) -> ProcessKind {
        let (code, kind) = match inspection {
            Inspection::NotGo => {
                self.datapath.detach_go(pid);
                (kind::THREADS, ProcessKind::Threads)
            }
            Inspection::GoUnprobeable(reason) => {
                self.datapath.detach_go(pid);
                let kind = ProcessKind::GoUnprobed {
                    version: None,
                    reason: reason.clone(),
                };
                (kind::GO_UNPROBED, kind)
            }
            Inspection::Go(binary) => match self.datapath.attach_go(pid, exe, binary) {
                Ok(uprobes) => {
                    let kind = ProcessKind::Go {
                        version: binary.version.to_string(),
                        offsets: match binary.offsets.source {
                            OffsetSource::Dwarf => "dwarf",
                            OffsetSource::VersionTable => "version-table",
                        },
                        uprobes,
                        grpc: match crate::ebpf::grpc_probes(binary) {
                            Ok(()) => "followed".to_string(),
                            Err(why) => why.to_string(),
                        },
                    };
                    (kind::GO, kind)
                }
                Err(error) => {
                    let kind = ProcessKind::GoUnprobed {
                        version: Some(binary.version.to_string()),
                        reason: error.to_string(),
                    };
                    (kind::GO_UNPROBED, kind)
                }
            },
        };
        if let ProcessKind::GoUnprobed { reason, .. } = &kind {
            warn!(pid, %reason, "Go process not probed: its calls are untrusted (baseline unless a header or rule decides)");
        }
        if let Err(error) = self.datapath.set_process_kind(pid, code) {
            // The kernel keeps it unknown: untrusted, which is safe.
            warn!(pid, %error, "cannot record the process's kind");
        }
        kind
    }

    /// Answers the kernel's questions as they come, until the daemon stops.
    pub async fn run(self: Arc<Self>, mut ring: RingBuf<MapData>) {
        // SAFETY: `register_with_interest` needs the fd open and the same
        // for the AsyncFd's life: it owns this duplicate.
        let wakeups = ring.as_fd().try_clone_to_owned().and_then(|fd| {
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        let wakeups = match wakeups {
            Ok(wakeups) => wakeups,
            Err(error) => {
                warn!(%error, "cannot poll the process ring; processes stay unclassified (untrusted)");
                return;
            }
        };
        let mut paused = self.paused.subscribe();
        loop {
            if *paused.borrow_and_update() {
                // The sender is `self.paused`: it outlives this loop.
                let _ = paused.wait_for(|paused| !paused).await;
                continue;
            }
            let mut asked = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(event) = decode(&item) {
                    asked.push(event);
                }
            }
            if asked.is_empty() {
                // Woken by the kernel (each question wakes the reader), or
                // by a pause: the ring is drained first after one ends, so
                // questions asked meanwhile are not left waiting.
                tokio::select! {
                    ready = wakeups.readable() => {
                        if let Ok(mut ready) = ready {
                            ready.clear_ready();
                        }
                    }
                    _ = paused.changed() => {}
                }
                continue;
            }
            let this = self.clone();
            // Inspecting reads binaries: off the async threads, in order.
            let _ = tokio::task::spawn_blocking(move || {
                for (pid, what) in asked {
                    match what {
                        PROC_CLASSIFY => this.classify(pid),
                        PROC_EXIT => this.forget(pid),
                        _ => {}
                    }
                }
            })
            .await;
        }
    }
}

/// A `ProcEvent` from its bytes (layout in tagger-common).
fn decode(bytes: &[u8]) -> Option<(u32, u32)> {
    let word = |at: usize| Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    Some((word(0)?, word(4)?))
}

/// The cgroup v2 id of process `pid` (the inode of its cgroup directory).
fn cgroup_of(root: &Path, pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    crate::cgroup::id_of(&root.join(relative.trim_start_matches('/'))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_common_layout() {
        let event = tagger_common::ProcEvent {
            tgid: 4242,
            what: PROC_EXIT,
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&event.tgid.to_ne_bytes());
        bytes[4..].copy_from_slice(&event.what.to_ne_bytes());
        assert_eq!(decode(&bytes), Some((4242, PROC_EXIT)));
        assert_eq!(decode(&bytes[..6]), None);
        assert_eq!(std::mem::offset_of!(tagger_common::ProcEvent, what), 4);
    }

    #[test]
    fn this_process_is_found_in_its_own_cgroup() {
        let root = crate::cgroup::v2_root().unwrap();
        assert_eq!(
            cgroup_of(&root, std::process::id()),
            Some(crate::cgroup::own_id().unwrap())
        );
    }
}
