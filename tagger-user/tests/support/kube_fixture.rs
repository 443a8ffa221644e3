//! The Kubernetes source's tests' fixture (objects built by
//! `tagger_test_apiserver::objects`), and a kubelet-shaped cgroup tree.
// Each test binary uses a part of this.
#![allow(dead_code)]
use std::{collections::BTreeSet, path::PathBuf};

use serde_json::Value;
pub use tagger_test_apiserver::objects::*;

pub const NODE: &str = "node-a";
pub const UID_V1: &str = "11111111-1111-4111-8111-111111111111";
pub const UID_V2: &str = "22222222-2222-4222-8222-222222222222";
pub const UID_NEW: &str = "33333333-3333-4333-8333-333333333333";

/// The fixture: namespace `shop` managed, `plain` not; `charge` (two
/// ports) with a baseline and a gray pod on this node, `order` with a pod
/// on another node; a hostNetwork pod; a lane, a valid and an invalid rule.
pub fn fixture() -> Vec<Value> {
    vec![
        namespace("shop", true),
        namespace("plain", false),
        service(
            "shop",
            "charge",
            "10.96.0.20",
            &[("http", 8080), ("admin", 9000)],
        ),
        slice(
            "shop",
            "charge",
            &[
                ("10.244.1.5", "charge-v1", true, false),
                ("10.244.1.6", "charge-v2", true, false),
            ],
            &[("http", 8081), ("admin", 9090)],
        ),
        service("shop", "order", "10.96.0.21", &[("http", 8080)]),
        slice(
            "shop",
            "order",
            &[("10.244.2.7", "order-v1", true, false)],
            &[("http", 8080)],
        ),
        pod("shop", "charge-v1", UID_V1, NODE, "10.244.1.5", None, false),
        pod(
            "shop",
            "charge-v2",
            UID_V2,
            NODE,
            "10.244.1.6",
            Some("gray"),
            false,
        ),
        pod(
            "shop",
            "order-v1",
            "44444444-4444-4444-8444-444444444444",
            "node-b",
            "10.244.2.7",
            None,
            false,
        ),
        pod(
            "shop",
            "agent",
            "55555555-5555-4555-8555-555555555555",
            NODE,
            "10.0.0.11",
            None,
            true,
        ),
        service("plain", "web", "10.96.0.30", &[("http", 80)]),
        slice(
            "plain",
            "web",
            &[("10.244.1.8", "web-1", true, false)],
            &[("http", 80)],
        ),
        pod(
            "plain",
            "web-1",
            "66666666-6666-4666-8666-666666666666",
            NODE,
            "10.244.1.8",
            None,
            false,
        ),
        lane("shop", "gray", true),
        rule("shop", "charge-gray", "charge", "in"),
        rule("shop", "bad-op", "charge", "within"),
    ]
}

/// A kubelet-shaped cgroup tree (systemd driver, containerd), removed when
/// dropped.
pub struct CgroupTree(pub PathBuf);

impl CgroupTree {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tagger-kube-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A Burstable pod with one container; its directories' cgroup ids
    /// (inode numbers, as for cgroupfs).
    pub fn add_pod(&self, uid: &str) -> BTreeSet<u64> {
        let pod = self
            .0
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            ));
        let container = pod.join(format!("cri-containerd-{}.scope", "ab".repeat(32)));
        std::fs::create_dir_all(&container).unwrap();
        [pod, container]
            .iter()
            .map(|d| tagger::cgroup::id_of(d).unwrap())
            .collect()
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
