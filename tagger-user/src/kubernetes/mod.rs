//! Kubernetes mode (SPEC.md section E, "Kubernetes mode"): the pieces that
//! need no API server. The custom resources and their conversion to the
//! cluster file's specs (`crd`, `convert`), the CRD manifest generator's
//! core (`crds_yaml`), and where kubelet puts a pod's cgroups (`cgroups`).
pub mod cgroups;
pub mod convert;
pub mod crd;

#[cfg(test)]
mod cgroups_tests;
#[cfg(test)]
mod convert_tests;

use kube::CustomResourceExt;

pub use crd::{
    RuleCondition, RuleMode, StatusCondition, TrafficLane, TrafficLaneSpec, TrafficRule,
    TrafficRuleSpec, TrafficRuleStatus,
};

/// What `deploy/crds.yaml` holds: both CRDs, one YAML document each, with a
/// header saying where it comes from. `crdgen` writes it and a test checks
/// the file in the tree is this, byte for byte.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated from tagger-user/src/kubernetes/crd.rs by\n\
         # `cargo run -p tagger-user --bin crdgen`; do not edit.\n",
    );
    for crd in [TrafficLane::crd(), TrafficRule::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
