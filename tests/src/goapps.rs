//! The Go test apps (`tests/apps/go`), built with the machine's Go
//! (Debian's golang-go) into `tests/apps/bin/` before a cluster that runs
//! them starts: `hop-go` as `go build` makes it, `hop-go-stripped` with
//! `-ldflags='-s -w'` (no symbols, no DWARF). Offline: standard library
//! only, no proxy.
use std::{path::Path, process::Command, sync::Once};

use crate::workspace;

/// (binary name, extra `go build` flags).
const BUILDS: [(&str, &[&str]); 2] = [("hop-go", &[]), ("hop-go-stripped", &["-ldflags=-s -w"])];

/// Builds the apps once per test process if the cluster file runs them.
pub(crate) fn prepare(cluster_file: &Path) {
    static BUILT: Once = Once::new();
    let text = std::fs::read_to_string(cluster_file).unwrap_or_default();
    if text.contains("apps/bin/") {
        BUILT.call_once(build);
    }
}

fn build() {
    let root = workspace();
    let bin = root.join("tests/apps/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, flags) in BUILDS {
        let partial = bin.join(format!(".{name}.partial"));
        let out = Command::new("go")
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(&partial)
            .arg(".")
            .current_dir(root.join("tests/apps/go"))
            .env("GOCACHE", root.join("target/go-cache"))
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|e| {
                panic!("`go` cannot run ({e}): `cargo xtask setup` installs golang-go")
            });
        assert!(
            out.status.success(),
            "go build {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Renamed into place: a pod never starts a half-written binary.
        std::fs::rename(&partial, bin.join(name)).unwrap();
    }
}
