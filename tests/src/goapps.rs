//! The Go test apps, built with the machine's Go (Debian's golang-go) into
//! `tests/apps/bin/` before a cluster that runs them starts, offline:
//! - `tests/apps/go` (standard library only): `hop-go` as `go build` makes
//!   it, `hop-go-stripped` with `-ldflags='-s -w'` (no symbols, no DWARF);
//! - `tests/apps/grpc-go`: `grpc-hop-go`, on grpc-go from Debian's
//!   golang-google-grpc-dev, built in GOPATH mode against
//!   /usr/share/gocode (Debian's Go libraries are sources there, with no
//!   module metadata a module build could use offline).
use std::{path::Path, process::Command, sync::Once};

use crate::workspace;

/// (binary name, extra `go build` flags, CGO_ENABLED).
const BUILDS: [(&str, &[&str], &str); 3] = [
    ("hop-go", &[], "1"),
    ("hop-go-stripped", &["-ldflags=-s -w"], "1"),
    ("hop-go-static", &[], "0"),
];

/// Where Debian's Go library packages put their sources.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// Builds the apps a cluster file runs, once per test process each.
pub fn prepare(cluster_file: &Path) {
    static BUILT: Once = Once::new();
    static GRPC_BUILT: Once = Once::new();
    let text = std::fs::read_to_string(cluster_file).unwrap_or_default();
    if text.contains("apps/bin/hop-go") {
        BUILT.call_once(|| {
            build();
        });
    }
    if text.contains("apps/bin/grpc-hop-go") {
        GRPC_BUILT.call_once(|| {
            build_grpc();
        });
    }
}

/// Builds `grpc-hop-go` and `grpc-hop-go-stripped` (`-s -w`: no symbols,
/// no DWARF) into `tests/apps/bin/` (the first also used by `cargo xtask
/// bench`); returns the first's path.
pub fn build_grpc() -> std::path::PathBuf {
    let root = workspace();
    let bin = root.join("tests/apps/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, flags) in [
        ("grpc-hop-go", &[][..]),
        ("grpc-hop-go-stripped", &["-ldflags=-s -w"][..]),
    ] {
        let partial = bin.join(format!(".{name}.partial"));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&partial)
            .args(flags)
            .arg(".")
            .current_dir(root.join("tests/apps/grpc-go"))
            .env("GOCACHE", root.join("target/go-cache"))
            .env("GO111MODULE", "off")
            .env("GOPATH", DEBIAN_GOPATH)
            .env("GOPROXY", "off")
            // GOPATH mode takes no -mod flag: drop one from the environment.
            .env_remove("GOFLAGS")
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|e| {
                panic!("`go` cannot run ({e}): `cargo xtask setup` installs golang-go")
            });
        assert!(
            out.status.success(),
            "go build {name} (`cargo xtask setup` installs golang-google-grpc-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Renamed into place: a pod never starts a half-written binary.
        std::fs::rename(&partial, bin.join(name)).unwrap();
    }
    bin.join("grpc-hop-go")
}

/// Builds `hop-go`, `hop-go-stripped`, `hop-go-static` and `hop-go-unknown` into
/// `tests/apps/bin/` (also used by `cargo xtask bench`); returns that dir.
pub fn build() -> std::path::PathBuf {
    let root = workspace();
    let bin = root.join("tests/apps/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, flags, cgo) in BUILDS {
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
            .env("CGO_ENABLED", cgo)
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
    unknown_version(&bin);
    bin
}

/// `hop-go-unknown`: the stripped build claiming a Go version tagger has no
/// offsets for (its version string patched in place): without DWARF it
/// cannot be probed, and must be left alone and untrusted.
fn unknown_version(bin: &Path) {
    let mut bytes = std::fs::read(bin.join("hop-go-stripped")).unwrap();
    // Same length, so every offset in the file stays: go1.19.x -> go1.99.x.
    let version = go_version();
    let minor = version
        .trim_start_matches("go1.")
        .split('.')
        .next()
        .unwrap_or("");
    let from = format!("go1.{minor}.");
    let to = format!("go1.{}.", "9".repeat(minor.len()));
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut count = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
        bytes[at + i..at + i + from.len()].copy_from_slice(to);
        at += i + from.len();
        count += 1;
    }
    assert!(count > 0, "{version} not found in hop-go-stripped");
    let partial = bin.join(".hop-go-unknown.partial");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::set_permissions(
        &partial,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&partial, bin.join("hop-go-unknown")).unwrap();
}

/// The machine's Go version, e.g. `go1.19.8`.
fn go_version() -> String {
    let out = Command::new("go")
        .args(["env", "GOVERSION"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
