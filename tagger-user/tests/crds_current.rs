//! `deploy/crds.yaml` is what `crdgen` makes from the Rust types: a type
//! changed without regenerating the file fails here (and so in `cargo xtask
//! test`), with the command that fixes it.
#[test]
fn crds_yaml_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    let in_tree = std::fs::read_to_string(&path).expect("deploy/crds.yaml exists");
    let generated = tagger::kubernetes::crds_yaml().expect("the CRDs serialise");
    assert!(
        in_tree == generated,
        "deploy/crds.yaml is not what the types in tagger-user/src/kubernetes/crd.rs give; \
         run `cargo run -p tagger-user --bin crdgen` and commit the result"
    );
}
