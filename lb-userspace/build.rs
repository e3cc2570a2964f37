//! Builds the kernel object (lb-ebpf) so that `lb` embeds it and is self-contained.
//!
//! The BPF target needs `core` built from source by a compiler whose rust-src matches it: that is
//! Debian's rustc-web (/usr/bin/rustc, /usr/bin/cargo), not the rustup toolchain that builds this
//! crate. `cargo xtask build|test` installs it and bpf-linker first. Set LB_EBPF_DIR to a
//! directory of prebuilt objects to skip this build.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const DEBIAN_CARGO: &str = "/usr/bin/cargo";

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_DIR");
    // LB_EBPF_DIR: a directory holding prebuilt `lb-ebpf` and `xdp-pass` objects.
    let dir = match env::var_os("LB_EBPF_DIR") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => build_ebpf(),
    };
    println!("cargo:rustc-env=LB_EBPF_OBJ={}", dir.join("lb-ebpf").display());
    println!("cargo:rustc-env=LB_XDP_PASS_OBJ={}", dir.join("xdp-pass").display());
}

/// Builds every object of lb-ebpf and returns the directory holding them.
fn build_ebpf() -> PathBuf {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("lb-ebpf");
    for watched in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-ebpf/.cargo/config.toml", "lb-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    if !Path::new(DEBIAN_CARGO).exists() {
        panic!("{DEBIAN_CARGO} is missing: run `cargo xtask build` once to install the eBPF toolchain");
    }
    let target_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("ebpf-target");
    let mut cargo = Command::new(DEBIAN_CARGO);
    cargo
        .current_dir(&ebpf_dir)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer build's compiler settings must not leak into the BPF build.
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "CARGO_MAKEFLAGS", "CARGO_PRIMARY_PACKAGE", "RUSTDOC"]
    {
        cargo.env_remove(var);
    }
    let status = cargo.status().expect("running Debian's cargo for lb-ebpf");
    assert!(status.success(), "building lb-ebpf failed (see the compiler output above)");
    target_dir.join("bpfel-unknown-none/release")
}
