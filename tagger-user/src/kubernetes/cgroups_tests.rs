//! Pod cgroup discovery on plain directory trees shaped like kubelet's.
use std::path::{Path, PathBuf};

use super::cgroups::{Driver, PodCgroup, QosClass, cgroup_uid, find_pod, pod_path, scan};

/// A temporary directory, removed when dropped.
struct Tree(PathBuf);

impl Tree {
    fn new() -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tagger-cgroups-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn mkdir(&self, relative: impl AsRef<Path>) -> PathBuf {
        let dir = self.0.join(relative);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const UID_A: &str = "5f0c7d52-9f3e-4c1b-a7a2-0e8f6d1b2c3a";
const UID_B: &str = "c1d2e3f4-0000-4111-8222-933344445555";
/// Container ids are 64 hex characters.
fn cid(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

/// Makes pod `uid` with containers 1, 2 (app, sidecar) and 3 (pause), in
/// the layout `driver` + `runtime` (prefix `base` for nested kubelets).
/// Returns the pod's directory.
fn make_pod(
    tree: &Tree,
    base: &str,
    driver: Driver,
    runtime: &str,
    uid: &str,
    qos: QosClass,
) -> PathBuf {
    let pod = tree.mkdir(Path::new(base).join(pod_path(driver, uid, qos)));
    for n in 1..=3 {
        match driver {
            Driver::Systemd => tree.mkdir(pod.join(format!("{runtime}-{}.scope", cid(n)))),
            Driver::Cgroupfs => tree.mkdir(pod.join(cid(n))),
        };
    }
    if runtime == "crio" && driver == Driver::Systemd {
        // CRI-O's monitor: in the pod, not a container.
        tree.mkdir(pod.join(format!("crio-conmon-{}.scope", cid(1))));
    }
    pod
}

#[test]
fn pod_paths_are_kubelets() {
    let cases = [
        (
            Driver::Systemd,
            QosClass::Guaranteed,
            "kubepods.slice/kubepods-pod5f0c7d52_9f3e_4c1b_a7a2_0e8f6d1b2c3a.slice",
        ),
        (
            Driver::Systemd,
            QosClass::Burstable,
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f0c7d52_9f3e_4c1b_a7a2_0e8f6d1b2c3a.slice",
        ),
        (
            Driver::Systemd,
            QosClass::BestEffort,
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f0c7d52_9f3e_4c1b_a7a2_0e8f6d1b2c3a.slice",
        ),
        (
            Driver::Cgroupfs,
            QosClass::Guaranteed,
            "kubepods/pod5f0c7d52-9f3e-4c1b-a7a2-0e8f6d1b2c3a",
        ),
        (
            Driver::Cgroupfs,
            QosClass::Burstable,
            "kubepods/burstable/pod5f0c7d52-9f3e-4c1b-a7a2-0e8f6d1b2c3a",
        ),
        (
            Driver::Cgroupfs,
            QosClass::BestEffort,
            "kubepods/besteffort/pod5f0c7d52-9f3e-4c1b-a7a2-0e8f6d1b2c3a",
        ),
    ];
    for (driver, qos, want) in cases {
        assert_eq!(
            pod_path(driver, UID_A, qos),
            PathBuf::from(want),
            "{driver:?} {qos:?}"
        );
    }
}

/// Every driver x runtime x QoS class: the pod is found where kubelet put
/// it, with its three containers (not CRI-O's conmon), and not confused
/// with another pod of the node.
#[test]
fn find_pod_in_every_layout() {
    let layouts = [
        (Driver::Systemd, "cri-containerd"),
        (Driver::Systemd, "crio"),
        (Driver::Systemd, "docker"),
        (Driver::Cgroupfs, "containerd"),
    ];
    let classes = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];
    for (driver, runtime) in layouts {
        for qos in classes {
            let tree = Tree::new();
            let want_dir = make_pod(&tree, "", driver, runtime, UID_A, qos);
            // Another pod, in another class, beside it.
            let other_qos = if qos == QosClass::Burstable {
                QosClass::BestEffort
            } else {
                QosClass::Burstable
            };
            make_pod(&tree, "", driver, runtime, UID_B, other_qos);
            let what = format!("{driver:?} {runtime} {qos:?}");
            let pod = find_pod(&tree.0, UID_A, qos).unwrap_or_else(|| panic!("{what}: not found"));
            assert_eq!(
                (pod.uid.as_str(), pod.qos, pod.driver),
                (UID_A, qos, driver),
                "{what}"
            );
            assert_eq!(pod.dir, want_dir, "{what}");
            let ids: Vec<&str> = pod.containers.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids, [cid(1), cid(2), cid(3)], "{what}");
            let runtimes: Vec<Option<&str>> = pod
                .containers
                .iter()
                .map(|c| c.runtime.as_deref())
                .collect();
            let want_runtime = (driver == Driver::Systemd).then_some(runtime);
            assert_eq!(runtimes, [want_runtime; 3], "{what}");
            // The scan finds both pods, each with its class.
            let found: Vec<(String, QosClass, Driver, usize)> = scan(&tree.0)
                .unwrap()
                .into_iter()
                .map(|p| (p.uid, p.qos, p.driver, p.containers.len()))
                .collect();
            assert_eq!(
                found,
                [
                    (UID_A.to_string(), qos, driver, 3),
                    (UID_B.to_string(), other_qos, driver, 3)
                ],
                "{what}"
            );
            assert_eq!(
                find_pod(&tree.0, "00000000-0000-0000-0000-000000000000", qos),
                None,
                "{what}"
            );
        }
    }
}

/// A kubelet with `--cgroup-root=/kubelet` (as kind runs it) nests the
/// layout one level deeper; a pod created after the daemon started appears
/// in the next scan; a wrong QoS class still finds the pod.
#[test]
fn nested_roots_late_pods_and_wrong_classes() {
    let tree = Tree::new();
    let kind = tree.mkdir("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod5f0c7d52_9f3e_4c1b_a7a2_0e8f6d1b2c3a.slice");
    tree.mkdir(kind.join(format!("cri-containerd-{}.scope", cid(7))));
    // The host's own services are beside it and are not pods.
    tree.mkdir("system.slice/containerd.service");
    tree.mkdir("user.slice/user-0.slice/session-1.scope");
    let pods = scan(&tree.0).unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(
        (pods[0].uid.as_str(), pods[0].qos, pods[0].dir.as_path()),
        (UID_A, QosClass::BestEffort, kind.as_path())
    );
    assert_eq!(
        find_pod(&tree.0, UID_A, QosClass::BestEffort).map(|p| p.dir),
        Some(kind.clone())
    );
    // Told Guaranteed (stale or wrong): found all the same, as BestEffort.
    assert_eq!(
        find_pod(&tree.0, UID_A, QosClass::Guaranteed).map(|p| p.qos),
        Some(QosClass::BestEffort)
    );

    // A pod created later, cgroupfs this time, Guaranteed.
    assert_eq!(find_pod(&tree.0, UID_B, QosClass::Guaranteed), None);
    make_pod(
        &tree,
        "",
        Driver::Cgroupfs,
        "containerd",
        UID_B,
        QosClass::Guaranteed,
    );
    let uids: Vec<String> = scan(&tree.0).unwrap().into_iter().map(|p| p.uid).collect();
    assert_eq!(uids, [UID_A, UID_B]);
}

/// A static pod: kubelet names its cgroup by the config hash that the
/// mirror pod carries in an annotation.
#[test]
fn static_pods_by_their_config_hash() {
    let hash = "3b4e1f0a9c8d7e6f5a4b3c2d1e0f9a8b";
    assert_eq!(cgroup_uid("mirror-uid", Some(hash)), hash);
    assert_eq!(cgroup_uid(UID_A, None), UID_A);
    let tree = Tree::new();
    make_pod(
        &tree,
        "",
        Driver::Systemd,
        "cri-containerd",
        hash,
        QosClass::Burstable,
    );
    let pod = find_pod(&tree.0, hash, QosClass::Burstable).expect("found");
    assert_eq!(pod.containers.len(), 3);
}

/// `dirs` lists every cgroup a pod's process can be in: the pod, its
/// containers and anything nested in them.
#[test]
fn dirs_cover_nested_cgroups() {
    let tree = Tree::new();
    let pod_dir = make_pod(
        &tree,
        "",
        Driver::Systemd,
        "crio",
        UID_A,
        QosClass::Burstable,
    );
    let nested = tree.mkdir(pod_dir.join(format!("crio-{}.scope/container", cid(2))));
    let pod: PodCgroup = find_pod(&tree.0, UID_A, QosClass::Burstable).unwrap();
    let dirs = pod.dirs();
    assert_eq!(dirs.len(), 1 + 3 + 1, "{dirs:#?}");
    assert!(dirs.contains(&pod_dir) && dirs.contains(&nested));
    assert!(!dirs.iter().any(|d| d.to_string_lossy().contains("conmon")));
    // Ids are the directories' inodes, one per directory.
    let ids = pod.cgroup_ids();
    let inodes: Vec<u64> = dirs
        .iter()
        .map(|d| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(d).unwrap()))
        .collect();
    assert_eq!(ids, inodes);
    // A container gone since the scan is left out, not an error.
    std::fs::remove_dir_all(&nested).unwrap();
    assert_eq!(pod.cgroup_ids().len(), 4);
}

#[test]
fn qos_class_from_status() {
    for (text, want) in [
        ("Guaranteed", Some(QosClass::Guaranteed)),
        ("Burstable", Some(QosClass::Burstable)),
        ("BestEffort", Some(QosClass::BestEffort)),
        ("", None),
        ("besteffort", None),
    ] {
        assert_eq!(QosClass::from_status(text), want, "{text:?}");
    }
}

#[test]
fn scan_of_a_missing_root_is_an_error() {
    assert!(scan(Path::new("/nonexistent/tagger-cgroups")).is_err());
}
