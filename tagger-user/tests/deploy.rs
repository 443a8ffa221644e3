//! `deploy/` is what `kubectl apply -f deploy/` installs: checked offline.
//!
//! - every manifest against Kubernetes' own schemas with
//!   `kubernetes-validate` (PyPI, schemas bundled) in strict mode (unknown
//!   fields are errors), for the oldest Kubernetes the crates target (1.33,
//!   k8s-openapi's `v1_33`) and the newest the tool has (1.37);
//! - the sample custom resources against the CRDs generated from the Rust
//!   types (`tests/deploy/check_crs.py`, Python `jsonschema`), and through
//!   tagger's own conversion and rule checks;
//! - the DaemonSet's arguments against SPEC.md's fixed interface and the
//!   ClusterRole against the least privilege the daemon needs.
//!
//! `cargo xtask setup` installs the Python packages; a machine without them
//! fails here, it does not skip.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tagger::kubernetes::{
    TrafficLane, TrafficRule,
    convert::{checked_rule_spec, lane_spec},
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML file under deploy/, subdirectories included, sorted.
fn manifests() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("deploy/ is readable") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&deploy_dir(), &mut out);
    out.sort();
    assert!(out.len() >= 5, "deploy/ holds only {out:?}");
    out
}

fn python(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "a Python package is missing ({stderr}); run `cargo xtask setup`"
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    let files = manifests();
    for version in ["1.33.0", "1.37.0"] {
        let fixed = ["-m", "kubernetes_validate", "--strict", "-k", version];
        let mut args: Vec<&std::ffi::OsStr> = fixed.iter().map(std::ffi::OsStr::new).collect();
        args.extend(files.iter().map(|p| p.as_os_str()));
        let out = python(&args);
        let report = text(&out.stdout) + &text(&out.stderr);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{report}"
        );
        // Its only warnings may be that it has no schema for our own kinds
        // (checked against our CRDs below); anything else it skipped is a
        // manifest nobody checked.
        for line in report.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                line.contains("with api version tagger.io/v1alpha1"),
                "kubernetes-validate {version} did not check: {line}"
            );
        }
        let passed = report
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        // CRDs 2, Namespace + quota 2, RBAC 3, DaemonSet 1, sample Namespace 1.
        assert!(passed >= 9, "only {passed} resources checked:\n{report}");
    }
}

fn check_crs(files: &[&Path]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deploy/check_crs.py");
    let crds = deploy_dir().join("crds.yaml");
    let mut args = vec![script.as_os_str(), crds.as_os_str()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    python(&args)
}

#[test]
fn samples_match_the_generated_crds() {
    let sample = deploy_dir().join("samples/shop.yaml");
    let out = check_crs(&[&sample]);
    let report = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        [
            "ok TrafficLane gray",
            "ok TrafficRule charge-gray",
            "ok TrafficLane blue",
            "ok TrafficRule order-blue"
        ]
    );

    // The check is not vacuous: what the API server would refuse is refused.
    let bad = std::env::temp_dir().join(format!("tagger-bad-crs-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        r#"
apiVersion: tagger.io/v1alpha1
kind: TrafficRule
metadata: {name: bad-mode, namespace: shop}
spec: {service: charge, lane: gray, mode: sometimes, conditions: [{source: path, op: prefix, value: /a}]}
---
apiVersion: tagger.io/v1alpha1
kind: TrafficRule
metadata: {name: unknown-field, namespace: shop}
spec: {service: charge, lane: gray, lanes: [gray], conditions: [{source: path, op: prefix, value: /a}]}
---
apiVersion: tagger.io/v1alpha1
kind: TrafficRule
metadata: {name: no-conditions, namespace: shop}
spec: {service: charge, lane: gray, priority: high}
---
apiVersion: tagger.io/v1alpha1
kind: TrafficLane
metadata: {name: no-spec, namespace: shop}
"#,
    )
    .unwrap();
    let out = check_crs(&[&bad]);
    let _ = std::fs::remove_file(&bad);
    let report = text(&out.stdout);
    assert!(!out.status.success(), "{report}");
    for want in [
        "error TrafficRule bad-mode: spec.mode: 'sometimes' is not one of ['any', 'all']",
        "error TrafficRule unknown-field: spec: Additional properties are not allowed ('lanes' was unexpected)",
        "error TrafficRule no-conditions: spec: 'conditions' is a required property",
        "error TrafficRule no-conditions: spec.priority: 'high' is not of type 'integer'",
        "error TrafficLane no-spec: (root): 'spec' is a required property",
    ] {
        assert!(
            report.lines().any(|l| l == want),
            "missing {want:?} in:\n{report}"
        );
    }
}

/// The sample objects, read as the daemon will read them, are lanes and
/// rules tagger accepts.
#[test]
fn samples_are_accepted_by_tagger() {
    let text = std::fs::read_to_string(deploy_dir().join("samples/shop.yaml")).unwrap();
    let mut lanes = Vec::new();
    let mut rules = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document).unwrap();
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("TrafficLane") => {
                lanes.push(serde_yaml::from_value::<TrafficLane>(value).unwrap())
            }
            Some("TrafficRule") => {
                rules.push(serde_yaml::from_value::<TrafficRule>(value).unwrap())
            }
            _ => {}
        }
    }
    assert_eq!((lanes.len(), rules.len()), (2, 2));
    let lane_specs: Vec<_> = lanes.iter().map(|l| lane_spec(l).unwrap()).collect();
    let lane_names: HashSet<&str> = lane_specs.iter().map(|l| l.name.as_str()).collect();
    let services: HashSet<&str> = ["charge", "order"].into();
    for rule in &rules {
        let spec = checked_rule_spec(rule, &services, &lane_names)
            .unwrap_or_else(|e| panic!("sample rule refused: {e}"));
        assert_eq!(spec.lane, rule.spec.lane);
    }
}

use serde::Deserialize as _;

fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

fn of_kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// SPEC.md's fixed interface: `tagger daemon --kubernetes --node-name ...
/// --proxy-address ... --metrics-address ...`, NODE_NAME and HOST_IP from
/// the downward API.
#[test]
fn daemonset_runs_the_fixed_interface() {
    let docs = documents("tagger-daemonset.yaml");
    let pod = &of_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(
        pod["priorityClassName"].as_str(),
        Some("system-node-critical")
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(true)
    );
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "daemon",
            "--kubernetes",
            "--node-name=$(NODE_NAME)",
            "--proxy-address=$(HOST_IP):15001",
            "--metrics-address=$(HOST_IP):15090",
            "--cgroup-root=/sys/fs/cgroup"
        ]
    );
    let env: BTreeMap<&str, &str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        env,
        [("HOST_IP", "status.hostIP"), ("NODE_NAME", "spec.nodeName")].into()
    );
    let mounts: BTreeSet<&str> = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.is_superset(&["/sys/fs/bpf", "/sys/fs/cgroup"].into()));
}

/// Read-only but for the rules' status: exactly these (group, resource,
/// verbs), nothing more.
#[test]
fn cluster_role_is_least_privilege() {
    let docs = documents("rbac.yaml");
    let role = of_kind(&docs, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_sequence().unwrap() {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    granted.insert(format!("{group}/{resource}:{verb}"));
                }
            }
        }
    }
    let mut want = BTreeSet::new();
    for resource in [
        "/pods",
        "/services",
        "/namespaces",
        "discovery.k8s.io/endpointslices",
        "tagger.io/trafficlanes",
        "tagger.io/trafficrules",
    ] {
        for verb in ["get", "list", "watch"] {
            want.insert(format!("{resource}:{verb}"));
        }
    }
    want.insert("tagger.io/trafficrules/status:update".to_string());
    want.insert("tagger.io/trafficrules/status:patch".to_string());
    assert_eq!(granted, want);
}

/// No image builder runs here (no docker), so what can be checked offline
/// is: the Dockerfile's builder runs the steps a developer's machine runs
/// (`cargo xtask setup --build-only`, then xtask's own release build of the
/// one binary, its eBPF programs embedded by build.rs), those steps exist
/// in xtask, and the image starts the daemon in Kubernetes mode.
#[test]
fn the_dockerfile_builds_with_the_steps_xtask_runs() {
    let read = |path: &str| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let dockerfile = read("deploy/Dockerfile");
    let run_lines: String = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for step in [
        "cargo xtask setup --build-only",
        "cargo build --release --locked -p tagger-user --bin tagger",
        r#"CMD ["daemon", "--kubernetes"]"#,
    ] {
        assert!(run_lines.contains(step), "deploy/Dockerfile lacks `{step}`");
    }
    // xtask's release build (xtask/src/pgo.rs) is the same cargo command,
    // guided by the profile it leaves where the Dockerfile looks for it.
    let pgo = read("xtask/src/pgo.rs");
    assert!(
        pgo.contains(r#""build", "--release", "-p", "tagger-user", "--bin", "tagger""#),
        "xtask's release build is no longer the Dockerfile's"
    );
    assert!(
        pgo.contains(r#"root.join("deploy/pgo")"#)
            && pgo.contains(r#""tagger.profdata""#)
            && run_lines.contains("-Cprofile-use=/src/deploy/pgo/tagger.profdata"),
        "the image build no longer uses the profile xtask leaves in deploy/pgo/"
    );
    assert!(
        read("xtask/src/main.rs").contains("build_only: true")
            && read("xtask/src/setup.rs").contains("pub fn ensure_build_only")
    );
}
