//! `cargo xtask <build|test|demo|run>`: every command first makes sure this machine has what the
//! project needs (installing it idempotently and saying so), then does its job.

mod install;
mod prereqs;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};

const USAGE: &str = "usage: cargo xtask <command>
  build             install prerequisites, build the eBPF object and `lb` (release)
  test              install prerequisites, build, run every test (privileged ones included)
  demo              install prerequisites, build, show the data path working in network namespaces
  demo multi-node   the same for three balancer nodes behind a BGP/ECMP router, one of which dies
  run -- ARGS...    install prerequisites, build, run `lb run ARGS...` on this node
  bench [-- ARGS]   install prerequisites, build (release), measure; writes docs/benchmarks.{md,json}
  fuzz [--seed N] [--cases N] [--hook xdp|tc|both]
                    generated and mutated frames through the ingress programs, checked frame by
                    frame; violations are printed and saved under tests/corpus/
  soak [--minutes N] [--apps N] [--rate CHANGES_PER_S] [--seed N] [--json FILE]
                    churn a Marathon of 1,000 apps at >= 20 events/s under live connections
                    (default 2 minutes); fails if the agent grows, leaks or breaks anything
  install [--root DIR] [--binary PATH]
                    build (release) and install lb, its systemd unit, a default /etc/lb/lb.toml
                    (never overwritten), completions; under DIR (default /)
  uninstall [--root DIR]
                    remove what install added (an edited lb.toml is kept)
  setup             only install/check prerequisites";

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let mut args = env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.skip_while(|a| a == "--").collect();
    match command.as_str() {
        "setup" => prereqs::ensure_all(),
        "build" => {
            prereqs::ensure_all()?;
            build_release()
        }
        "test" => {
            prereqs::ensure_all()?;
            // The tests include seconds-long smoke runs of the benchmarks.
            prereqs::ensure_bench()?;
            test()
        }
        "demo" => {
            let bin = match rest.first().map(String::as_str) {
                None => "lb-demo",
                Some("multi-node") => "lb-demo-multi-node",
                Some(other) => bail!("cargo xtask demo: unknown demo {other:?} (none, or multi-node)"),
            };
            prereqs::ensure_all()?;
            build_release()?;
            cargo(&["run", "--release", "--quiet", "-p", "lb-tests", "--bin", bin], &release_env())
        }
        "bench" => bench(&rest),
        "fuzz" => {
            prereqs::ensure_all()?;
            step("fuzzing the ingress programs");
            // The debug profile: the frames run in the kernel, and a release build takes minutes.
            run_test_binary("lb-fuzz", &rest)
        }
        "soak" => {
            prereqs::ensure_all()?;
            step("building lb for the soak");
            cargo(&["build", "-p", "lb-userspace"], &[])?;
            step("churning Marathon under live connections");
            run_test_binary("lb-soak", &rest)
        }
        "install" => install(&rest),
        "uninstall" => install::uninstall(&install::Options::parse(&rest)?.root),
        "run" => {
            prereqs::ensure_all()?;
            build_release()?;
            let lb = workspace_root().join("target/release/lb");
            let status = Command::new(&lb).arg("run").args(&rest).status().context("starting lb")?;
            if !status.success() {
                bail!("lb run exited with {status}");
            }
            Ok(())
        }
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// `cargo xtask install`: a given binary, or one built here.
fn install(rest: &[String]) -> Result<()> {
    let options = install::Options::parse(rest)?;
    let binary = match options.binary {
        Some(binary) => binary,
        None => {
            prereqs::ensure_all()?;
            build_release()?;
            workspace_root().join("target/release/lb")
        }
    };
    install::install(&options.root, &binary)
}

/// One of lb-tests' binaries (debug profile) with `rest` as its arguments.
fn run_test_binary(name: &str, rest: &[String]) -> Result<()> {
    let mut args = vec!["run", "--quiet", "-p", "lb-tests", "--bin", name, "--"];
    args.extend(rest.iter().map(String::as_str));
    cargo(&args, &[])
}

/// `cargo xtask bench`: every benchmark, writing docs/benchmarks.{md,json}.
fn bench(rest: &[String]) -> Result<()> {
    prereqs::ensure_all()?;
    prereqs::ensure_bench()?;
    build_release()?;
    step("benchmarking (pinned to CPU 0; a few minutes)");
    let docs = workspace_root().join("docs");
    std::fs::create_dir_all(&docs)?;
    let (json, md) = (docs.join("benchmarks.json"), docs.join("benchmarks.md"));
    let outputs = ["--json", json.to_str().unwrap(), "--markdown", md.to_str().unwrap()];
    // End to end twice: wire-like (offloads off, every mode) and with veth's TSO/GSO on,
    // where XDP on a veth and TC ingress differ most.
    let offloads_on: &[&str] = &["--offloads", "on", "--modes", "direct,nftables,haproxy,xdp,tc"];
    let runs: [(&str, &[&str]); 7] = [
        ("lb-bench", &[]),
        ("lb-bench-control", &[]),
        ("lb-bench-e2e", &[]),
        ("lb-bench-e2e", offloads_on),
        ("lb-bench-http", &[]),
        ("lb-bench-multi-node", &[]),
        ("lb-bench-dns", &[]),
    ];
    for (bench, extra) in runs {
        let mut args = vec!["run", "--release", "--quiet", "-p", "lb-tests", "--bin", bench, "--"];
        args.extend(outputs);
        args.extend(extra);
        args.extend(rest.iter().map(String::as_str));
        cargo(&args, &release_env())?;
    }
    Ok(())
}

fn build_release() -> Result<()> {
    step("building eBPF object and lb (release)");
    cargo(&["build", "--release", "-p", "lb-userspace"], &[])?;
    println!("xtask: built {}", workspace_root().join("target/release/lb").display());
    Ok(())
}

fn test() -> Result<()> {
    step("building lb for the integration tests");
    cargo(&["build", "-p", "lb-userspace"], &[])?;
    step("running every test");
    let lb = workspace_root().join("target/debug/lb");
    let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo_bin)
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("LB_BIN", &lb)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Echo everything, and add up the per-binary summaries into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap())) {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            passed += count_before(summary, " passed");
            failed += count_before(summary, " failed");
        }
    }
    let status = child.wait()?;
    println!("xtask: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The number just before `label` in a cargo test summary ("ok. 12 passed; 0 failed; …").
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(label.trim_start()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn release_env() -> Vec<(&'static str, &'static str)> {
    vec![("LB_BIN", concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/lb"))]
}

fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub(crate) fn step(what: &str) {
    println!("xtask: {what}");
}
