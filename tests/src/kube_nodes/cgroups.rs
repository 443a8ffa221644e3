//! Each node's cgroup tree, shaped as kubelet makes it under the node's own
//! `--cgroup-root` (a subtree of the cgroup v2 mount): node-a as kubelet's
//! systemd driver with containerd, node-b as its cgroupfs driver, every QoS
//! class. Written here from kubelet's layout, not from tagger's code, so
//! that the daemon's reading of it is what is tested.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::NodesError;

/// Where every node's root is: `<cgroup v2>/tagger-nodes/<node>`.
pub const TREE: &str = "tagger-nodes";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn status(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }

    fn level(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

/// The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid host).
pub fn v2_mount() -> Result<PathBuf, NodesError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| NodesError::Io("reading /proc/self/mounts".into(), e))?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .ok_or(NodesError::NoCgroupV2)
}

/// The container's directory: where kubelet (through the runtime) puts a
/// pod's container of this QoS class under `root`.
pub fn container_dir(root: &Path, driver: Driver, qos: Qos, uid: &str, container: &str) -> PathBuf {
    let under = uid.replace('-', "_");
    match (driver, qos.level()) {
        (Driver::Systemd, None) => root
            .join("kubepods.slice")
            .join(format!("kubepods-pod{under}.slice")),
        (Driver::Systemd, Some(level)) => root
            .join("kubepods.slice")
            .join(format!("kubepods-{level}.slice"))
            .join(format!("kubepods-{level}-pod{under}.slice")),
        (Driver::Cgroupfs, None) => root.join("kubepods").join(format!("pod{uid}")),
        (Driver::Cgroupfs, Some(level)) => {
            root.join("kubepods").join(level).join(format!("pod{uid}"))
        }
    }
    .join(match driver {
        Driver::Systemd => format!("cri-containerd-{container}.scope"),
        Driver::Cgroupfs => container.to_string(),
    })
}

pub fn create(dir: &Path) -> Result<(), NodesError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| NodesError::Io(format!("creating cgroup {}", dir.display()), e))
}

/// Kills every process of `dir` and below (only this tree's: pods and
/// probes this test started), then removes the directories, deepest first.
pub fn remove_tree(dir: &Path) -> Result<(), NodesError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for child in children {
        remove_tree(&child)?;
    }
    // A process started a moment ago may join between the kill and the
    // removal (EBUSY): kill again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        kill(dir);
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(NodesError::Io(
                    format!("removing cgroup {}", dir.display()),
                    e,
                ));
            }
        }
    }
}

/// The processes of one cgroup, killed (`cgroup.kill`, else one by one)
/// and waited for.
pub fn kill(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in pids {
                // SAFETY: kill(2) on a pid listed in a cgroup of this
                // test's own tree.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
