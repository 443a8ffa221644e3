//! Installs what tagger needs to build and test, from Debian's packages,
//! crates.io and (for a Python that is not Debian's) PyPI only, skipping
//! what is already there.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

/// Debian packages: Debian's rustc with its std source (to build the eBPF
/// crate with `-Z build-std=core`), LLVM 22 for bpf-linker, and the tools the
/// local cluster and the tests drive.
const PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "llvm-22-dev",
    // The tests validate deploy/ with PyPI packages (PYPI_PACKAGES).
    "python3-pip",
    "iproute2",
    "iptables",
    "curl",
    "python3",
    // The ingress pod of scenario B5.
    "nginx-light",
    // The end-to-end harness checks that no BPF program or link is left.
    "bpftool",
    // Go 1.19: the Go binaries the Go inspector (tagger-user/src/golang) is
    // tested on are built with it (cgo builds use the gcc rustc already needs).
    "golang-go",
    // grpc-go's sources (GOPATH /usr/share/gocode): the Go gRPC hop of the
    // end-to-end tests and the bench is built from them offline.
    "golang-google-grpc-dev",
    // h2load: the bench's HTTP/2 (gRPC) load generator.
    "nghttp2-client",
    // libFuzzer (C++), which libfuzzer-sys builds for the fuzz targets.
    "g++",
];
/// Runtimes the end-to-end tests run apps in: (command, Debian package).
/// A machine that already has the command (from elsewhere) keeps its own.
const RUNTIMES: &[(&str, &str)] = &[("java", "default-jdk-headless"), ("node", "nodejs")];
/// What building the `tagger` binary alone needs (the container image's
/// builder stage, `cargo xtask setup --build-only`): the eBPF crate's
/// rustc and its std source, and LLVM for bpf-linker.
const BUILD_PACKAGES: &[&str] = &["rustc-web", "rust-web-src", "llvm-22-dev"];
/// PyPI packages the tests use: `kubernetes-validate` (Kubernetes' schemas
/// bundled, so offline) checks every manifest in deploy/, `jsonschema` the
/// sample custom resources against the generated CRDs
/// (tagger-user/tests/deploy.rs). (import name, pinned requirement)
const PYPI_PACKAGES: &[(&str, &str)] = &[
    ("kubernetes_validate", "kubernetes-validate==1.37.0"),
    ("jsonschema", "jsonschema==4.26.0"),
];
/// Python modules the tests import: (module, PyPI package, Debian package).
/// `grpc`: the gRPC servers and clients of `tagger-user/tests/grpc.rs`.
const PYTHON_MODULES: &[(&str, &str, &str)] = &[("grpc", "grpcio", "python3-grpcio")];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fuzz targets' driver (`cargo xtask fuzz`, and the bounded run in
/// `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// aya-ebpf 0.2.1 needs at least this rustc for the kernel crate.
const MIN_BPF_RUSTC: (u32, u32) = (1, 87);

pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_python_modules()?;
    ensure_bpf_rustc()?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_pypi()?;
    Ok(())
}

/// Only what building the `tagger` binary needs: the same steps as
/// `ensure`'s for it, so that the image's builder (deploy/Dockerfile) and a
/// developer's machine build alike.
pub fn ensure_build_only() -> Result<()> {
    install_debian(
        BUILD_PACKAGES
            .iter()
            .copied()
            .filter(|p| !installed(p))
            .collect(),
    )?;
    ensure_bpf_rustc()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_pypi() -> Result<()> {
    let missing: Vec<&str> = PYPI_PACKAGES
        .iter()
        .filter(|(module, _)| !python_has(module))
        .map(|(_, requirement)| *requirement)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing PyPI packages: {}", missing.join(" "));
    // Debian's Python refuses a plain `pip install` (PEP 668); these are
    // test tools with no Debian package, installed for root's python3.
    run(Command::new("python3")
        .args(["-m", "pip", "install", "-q", "--break-system-packages"])
        .args(&missing))
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn on_path(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ensure_packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    missing.extend(
        RUNTIMES
            .iter()
            .filter(|(cmd, _)| !on_path(cmd))
            .map(|(_, package)| *package),
    );
    install_debian(missing)
}

fn install_debian(missing: Vec<&str>) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Install daemons (nginx) without starting them on the host: the
        // tests start their own, inside pods.
        .env("RUNLEVEL", "1"))
}

fn python_imports(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether `python3` on PATH is Debian's own (its prefix is /usr), which
/// takes modules from Debian's packages (pip refuses it: PEP 668).
fn python_is_debians() -> bool {
    Command::new("python3")
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "/usr")
        .unwrap_or(false)
}

/// The Python modules the tests import, for the `python3` the tests run:
/// Debian's package for Debian's Python, else PyPI's through that Python's
/// own pip (pyenv, a virtual environment).
fn ensure_python_modules() -> Result<()> {
    let missing: Vec<&(&str, &str, &str)> = PYTHON_MODULES
        .iter()
        .filter(|(module, _, _)| !python_imports(module))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if python_is_debians() {
        let packages: Vec<&str> = missing.iter().map(|(_, _, debian)| *debian).collect();
        println!("xtask: installing Debian packages: {}", packages.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    } else {
        let packages: Vec<&str> = missing.iter().map(|(_, pypi, _)| *pypi).collect();
        println!("xtask: installing from PyPI: {}", packages.join(" "));
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&packages))
        .context("installing Python modules with pip")?;
    }
    for (module, _, _) in missing {
        if !python_imports(module) {
            bail!("python3 still cannot import {module} after installing it");
        }
    }
    Ok(())
}

fn rustc_version(rustc: &str) -> Option<(u32, u32)> {
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn ensure_bpf_rustc() -> Result<()> {
    match rustc_version("/usr/bin/rustc") {
        Some(v) if v >= MIN_BPF_RUSTC => Ok(()),
        Some(v) => {
            // An old package from a stale index: refresh and upgrade it.
            println!(
                "xtask: /usr/bin/rustc is {}.{}; upgrading rustc-web",
                v.0, v.1
            );
            run(Command::new("apt-get").args(["update", "-q"]))?;
            run(Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--only-upgrade",
                    "rustc-web",
                    "rust-web-src",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            match rustc_version("/usr/bin/rustc") {
                Some(v) if v >= MIN_BPF_RUSTC => Ok(()),
                _ => bail!(
                    "Debian's rustc-web is older than {}.{}; the eBPF crate cannot build",
                    MIN_BPF_RUSTC.0,
                    MIN_BPF_RUSTC.1
                ),
            }
        }
        None => bail!("/usr/bin/rustc is missing although rustc-web is installed"),
    }
}

fn ensure_bpf_linker() -> Result<()> {
    let current = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!("xtask: installing bpf-linker {BPF_LINKER_VERSION} from crates.io (about 2 minutes)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        // Without it the build finds LLVM 14 and fails.
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
    .context("installing bpf-linker")?;
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let current = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io (about 2 minutes)");
    run(Command::new(cargo).args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
    .context("installing cargo-fuzz")?;
    Ok(())
}
