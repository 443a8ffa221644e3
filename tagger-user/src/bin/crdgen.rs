//! Writes `deploy/crds.yaml` from the Rust types of the custom resources
//! (`tagger::kubernetes::crd`). `cargo run -p tagger-user --bin crdgen`
//! writes the file; `--check` only says whether it is current (exit 1 if
//! not). The test `crds_yaml_is_current` does the same check on every
//! `cargo test`.
use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds.yaml");
    let text = match tagger::kubernetes::crds_yaml() {
        Ok(text) => text,
        Err(e) => {
            eprintln!("crdgen: serialising the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    if check {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == text {
            println!("crdgen: {} is current", path.display());
            return ExitCode::SUCCESS;
        }
        eprintln!(
            "crdgen: {} is not current; run `cargo run -p tagger-user --bin crdgen`",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::write(&path, &text) {
        eprintln!("crdgen: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("crdgen: wrote {}", path.display());
    ExitCode::SUCCESS
}
