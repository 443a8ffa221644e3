//! Where kubelet puts a pod's cgroups, so that the daemon can tell the
//! kernel programs which cgroup ids are pods (only processes in pod cgroups
//! are redirected or traced: kubelet probing a pod IP, and every other host
//! process, never are).
//!
//! Two layouts, by kubelet's cgroup driver (SPEC.md, `--cgroup-root`):
//!
//! | driver   | QoS class  | pod directory                                                           |
//! |----------|------------|-------------------------------------------------------------------------|
//! | systemd  | Guaranteed | `kubepods.slice/kubepods-pod<uid_>.slice`                               |
//! | systemd  | Burstable  | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` |
//! | systemd  | BestEffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice` |
//! | cgroupfs | Guaranteed | `kubepods/pod<uid>`                                                      |
//! | cgroupfs | Burstable  | `kubepods/burstable/pod<uid>`                                            |
//! | cgroupfs | BestEffort | `kubepods/besteffort/pod<uid>`                                           |
//!
//! (`<uid_>` is the pod's UID with `-` replaced by `_`, as systemd unit names
//! need.) Inside, one directory per container: `<runtime>-<id>.scope` under
//! systemd (`cri-containerd`, `crio`, `docker`), `<id>` under cgroupfs; the
//! sandbox (pause) container is one of them. CRI-O's `crio-conmon-<id>.scope`
//! holds its monitor process, not the app, and is left out.
//!
//! Everything here reads directory names only, so it is tested on plain
//! directory trees. A cgroup's id is its directory's inode
//! (`crate::cgroup::id_of`).
use std::{
    io,
    path::{Path, PathBuf},
};

/// A pod's QoS class, `status.qosClass`: it decides the pod's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// From `status.qosClass`. A pod the API shows without one yet (just
    /// created) is found by the scan instead.
    pub fn from_status(text: &str) -> Option<Self> {
        match text {
            "Guaranteed" => Some(Self::Guaranteed),
            "Burstable" => Some(Self::Burstable),
            "BestEffort" => Some(Self::BestEffort),
            _ => None,
        }
    }

    /// The QoS level's own directory name part; Guaranteed has none (its
    /// pods sit right under `kubepods`).
    fn level(self) -> Option<&'static str> {
        match self {
            Self::Guaranteed => None,
            Self::Burstable => Some("burstable"),
            Self::BestEffort => Some("besteffort"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// A pod's cgroup directory and its containers'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID as the API shows it (dashes, not underscores).
    pub uid: String,
    pub qos: QosClass,
    pub driver: Driver,
    pub dir: PathBuf,
    /// Sorted by id.
    pub containers: Vec<ContainerCgroup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The container runtime's id (hex).
    pub id: String,
    /// `cri-containerd`, `crio`, `docker` under systemd; `None` under
    /// cgroupfs, whose directory names do not say.
    pub runtime: Option<String>,
    pub dir: PathBuf,
}

impl PodCgroup {
    /// Every directory a process of the pod can be in: the pod's, each
    /// container's, and anything below those (a runtime may nest one, as
    /// crun does for a container that manages its own cgroups).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.dir.clone()];
        for container in &self.containers {
            dirs.push(container.dir.clone());
            descendants(&container.dir, &mut dirs);
        }
        dirs
    }

    /// The cgroup ids (what `bpf_get_current_cgroup_id()` returns) of
    /// [`PodCgroup::dirs`], for the kernel's pod cgroup map. A directory
    /// gone meanwhile (a container that just ended) is left out.
    pub fn cgroup_ids(&self) -> Vec<u64> {
        self.dirs()
            .iter()
            .filter_map(|dir| crate::cgroup::id_of(dir).ok())
            .collect()
    }
}

fn descendants(dir: &Path, out: &mut Vec<PathBuf>) {
    for child in subdirs(dir) {
        out.push(child.clone());
        descendants(&child, out);
    }
}

/// The UID kubelet names a pod's cgroup by. For a static pod the API shows
/// a mirror pod with a UID of its own; kubelet's is the config hash in the
/// `kubernetes.io/config.mirror` annotation.
pub fn cgroup_uid<'a>(uid: &'a str, mirror_annotation: Option<&'a str>) -> &'a str {
    mirror_annotation.unwrap_or(uid)
}

/// The pod's cgroup under `root`: first where kubelet's two layouts put a
/// pod of this QoS class (two `stat`s), else by a scan (a kubelet with its
/// own `--cgroup-root`, as kind runs, nests `kubepods` one level deeper).
/// `None` if the pod has no cgroup on this node (yet).
pub fn find_pod(root: &Path, uid: &str, qos: QosClass) -> Option<PodCgroup> {
    for driver in [Driver::Systemd, Driver::Cgroupfs] {
        let dir = root.join(pod_path(driver, uid, qos));
        if dir.is_dir() {
            return Some(pod_cgroup(uid.to_string(), qos, driver, dir));
        }
    }
    scan(root).ok()?.into_iter().find(|pod| pod.uid == uid)
}

/// Where `driver` puts a pod, relative to the cgroup root.
pub fn pod_path(driver: Driver, uid: &str, qos: QosClass) -> PathBuf {
    match (driver, qos.level()) {
        (Driver::Systemd, None) => PathBuf::from("kubepods.slice")
            .join(format!("kubepods-pod{}.slice", uid.replace('-', "_"))),
        (Driver::Systemd, Some(level)) => PathBuf::from("kubepods.slice")
            .join(format!("kubepods-{level}.slice"))
            .join(format!(
                "kubepods-{level}-pod{}.slice",
                uid.replace('-', "_")
            )),
        (Driver::Cgroupfs, None) => PathBuf::from("kubepods").join(format!("pod{uid}")),
        (Driver::Cgroupfs, Some(level)) => PathBuf::from("kubepods")
            .join(level)
            .join(format!("pod{uid}")),
    }
}

/// Every pod cgroup under `root`, for pods the daemon has not been told
/// about yet (created after it started) and for layouts nested deeper.
/// Only directories named like kubelet's (`kube…`) are entered, so the
/// host's own services are not walked.
pub fn scan(root: &Path) -> io::Result<Vec<PodCgroup>> {
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("cgroup root {} is not a directory", root.display()),
        ));
    }
    let mut pods = Vec::new();
    scan_dir(root, 0, &mut pods);
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok(pods)
}

/// Deep enough for `kubelet.slice/kubelet-kubepods.slice/
/// kubelet-kubepods-burstable.slice/<pod>`, with a level to spare.
const MAX_DEPTH: usize = 5;

fn scan_dir(dir: &Path, depth: usize, pods: &mut Vec<PodCgroup>) {
    if depth >= MAX_DEPTH {
        return;
    }
    for child in subdirs(dir) {
        let Some(name) = child.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((uid, driver)) = pod_dir_name(name) {
            let parent = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let qos = qos_of(name, parent, driver);
            pods.push(pod_cgroup(uid, qos, driver, child));
        } else if name.contains("kube") || depth > 0 && is_qos_dir(name) {
            scan_dir(&child, depth + 1, pods);
        }
    }
}

fn is_qos_dir(name: &str) -> bool {
    name == "burstable" || name == "besteffort"
}

/// `kubepods-burstable-pod<uid_>.slice` (systemd) or `pod<uid>` (cgroupfs)
/// to the pod's UID.
fn pod_dir_name(name: &str) -> Option<(String, Driver)> {
    if let Some(unit) = name.strip_suffix(".slice") {
        let (_, uid) = unit.rsplit_once("-pod")?;
        return is_uid(uid).then(|| (uid.replace('_', "-"), Driver::Systemd));
    }
    let uid = name.strip_prefix("pod")?;
    is_uid(uid).then(|| (uid.to_string(), Driver::Cgroupfs))
}

/// A UUID (with `-` or systemd's `_`) or a static pod's config hash.
fn is_uid(text: &str) -> bool {
    text.len() >= 8
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
}

fn qos_of(name: &str, parent: &str, driver: Driver) -> QosClass {
    let said_by = match driver {
        // kubepods-burstable-pod…: the unit's own name says it.
        Driver::Systemd => name,
        // burstable/pod…: the parent does.
        Driver::Cgroupfs => parent,
    };
    if said_by.contains("besteffort") {
        QosClass::BestEffort
    } else if said_by.contains("burstable") {
        QosClass::Burstable
    } else {
        QosClass::Guaranteed
    }
}

fn pod_cgroup(uid: String, qos: QosClass, driver: Driver, dir: PathBuf) -> PodCgroup {
    let mut containers: Vec<ContainerCgroup> = subdirs(&dir)
        .into_iter()
        .filter_map(|child| {
            let name = child.file_name()?.to_str()?.to_string();
            let (runtime, id) = container_dir_name(&name, driver)?;
            Some(ContainerCgroup {
                id,
                runtime,
                dir: child,
            })
        })
        .collect();
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    PodCgroup {
        uid,
        qos,
        driver,
        dir,
        containers,
    }
}

/// `cri-containerd-<id>.scope` (systemd) or `<id>` (cgroupfs) to the
/// container's runtime and id.
fn container_dir_name(name: &str, driver: Driver) -> Option<(Option<String>, String)> {
    let is_id = |id: &str| id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    match driver {
        Driver::Systemd => {
            let unit = name.strip_suffix(".scope")?;
            let (runtime, id) = unit.rsplit_once('-')?;
            // CRI-O's monitor process, not a container.
            if runtime.ends_with("conmon") || !is_id(id) {
                return None;
            }
            Some((Some(runtime.to_string()), id.to_string()))
        }
        Driver::Cgroupfs => is_id(name).then(|| (None, name.to_string())),
    }
}

/// Subdirectories, sorted; unreadable ones (a cgroup removed while we look)
/// are skipped: the next scan sees the tree as it is then.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}
