//! Builds the kernel programs (`tagger-ebpf`) for `bpfel-unknown-none` and
//! leaves the object in OUT_DIR, where `src/ebpf/mod.rs` embeds it.
//!
//! The eBPF crate needs `-Z build-std=core`, so it is built with Debian's
//! `rustc` (which ships its std source) and `RUSTC_BOOTSTRAP=1`, and linked by
//! `bpf-linker`; `cargo xtask` installs both. Nothing of the host build's
//! environment (flags, wrappers, target dir) may leak into that build.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../tagger-ebpf");
    let common_dir = manifest_dir.join("../tagger-common/src");
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=TAGGER_BPF_RUSTC");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let rustc = env::var("TAGGER_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1");
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    // Profile and LTO settings of the host build must not reach the eBPF one.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_CFG_") {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().with_context(|| {
        format!("running {cargo} to build the eBPF programs (run `cargo xtask setup` first)")
    })?;
    if !status.success() {
        bail!(
            "building tagger-ebpf failed; it needs {rustc} (Debian package rustc-web with \
             rust-web-src) and bpf-linker on PATH: run `cargo xtask setup`"
        );
    }
    let object = target_dir.join("bpfel-unknown-none/release/tagger-ebpf");
    std::fs::copy(&object, out_dir.join("tagger-ebpf.o"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}
