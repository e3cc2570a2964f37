//! Prerequisites, checked cheaply and installed only when missing. A warm run installs nothing.

use std::{
    ffi::CString,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::step;

/// Debian packages the build and the tests need.
/// rustc-web/cargo-web/rust-web-src: a compiler whose std source matches it, to build `core` for the
/// BPF target; llvm-22-dev: the LLVM bpf-linker links against; bpftool/iproute2/ethtool/tcpdump:
/// inspection and the network-namespace tests; util-linux: nsenter/setpriv; chromium: the test
/// that renders the status page headless; systemd: `systemd-analyze verify` of the unit; bird2:
/// the BGP speaker the announcer tests drive; bind9-dnsutils and python3: `dig` and getaddrinfo, the DNS tests' clients.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "bpftool",
    "iproute2",
    "ethtool",
    "tcpdump",
    "util-linux",
    "chromium",
    "systemd",
    "curl",
    "openssl",
    "bird2",
    "bind9-dnsutils",
    "python3",
];

/// Debian packages only the benchmarks need: the load generators and the peers they are
/// compared with (nginx as the backends, nftables DNAT, HAProxy).
const BENCH_PACKAGES: &[&str] = &["nginx-light", "wrk", "iperf3", "haproxy", "nftables", "knot", "dnsperf"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Stable location, on every user's PATH, reused by later runs.
const BPF_LINKER_ROOT: &str = "/usr/local";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn ensure_all() -> Result<()> {
    require_root()?;
    ensure_debian_packages()?;
    ensure_bpf_linker()?;
    ensure_bpffs()?;
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        bail!("cargo xtask installs packages and loads BPF programs: run it as root");
    }
    Ok(())
}

extern "C" {
    fn geteuid() -> u32;
    fn statfs(path: *const std::ffi::c_char, buf: *mut StatFs) -> i32;
    fn mount(
        source: *const std::ffi::c_char,
        target: *const std::ffi::c_char,
        fstype: *const std::ffi::c_char,
        flags: u64,
        data: *const std::ffi::c_void,
    ) -> i32;
}

/// `struct statfs` on 64-bit Linux; only `f_type` is read.
#[repr(C)]
struct StatFs {
    f_type: i64,
    rest: [u64; 15],
}

/// The benchmarks' extra packages.
pub fn ensure_bench() -> Result<()> {
    install_missing(BENCH_PACKAGES)
}

fn ensure_debian_packages() -> Result<()> {
    install_missing(DEBIAN_PACKAGES)
}

fn install_missing(packages: &[&str]) -> Result<()> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}|${Package}\n"])
        .args(packages)
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_once('|'))
        .filter(|(status, _)| status.starts_with("ii"))
        .map(|(_, name)| name)
        .collect();
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed.contains(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_bpf_linker() -> Result<()> {
    let binary = Path::new(BPF_LINKER_ROOT).join("bin/bpf-linker");
    let current = Command::new(&binary).arg("--version").output().ok().filter(|o| o.status.success());
    if let Some(out) = current {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 into {BPF_LINKER_ROOT}/bin (about a minute, once)"
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "--locked", "--force", "--root", BPF_LINKER_ROOT])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        // Without it the build script finds /usr/bin/llvm-config (LLVM 14) and fails to link.
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

fn ensure_bpffs() -> Result<()> {
    if is_bpffs(BPFFS)? {
        return Ok(());
    }
    step(&format!("mounting bpffs on {BPFFS}"));
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let c = |s: &str| CString::new(s).unwrap();
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe { mount(c("bpf").as_ptr(), c(BPFFS).as_ptr(), c("bpf").as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!("mount -t bpf bpf {BPFFS}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn is_bpffs(path: &str) -> Result<bool> {
    let c_path = CString::new(path).unwrap();
    let mut buf = StatFs { f_type: 0, rest: [0; 15] };
    // SAFETY: c_path is NUL-terminated; buf is large enough for struct statfs.
    if unsafe { statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Ok(false);
    }
    Ok(buf.f_type == BPF_FS_MAGIC)
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
