//! `cargo xtask fuzz [--seed N] [--cases N] [--hook xdp|tc|both]`: seeded packet fuzzing of the
//! ingress programs (lb_tests::fuzz). Prints `N cases, V violations` per hook; every violation is
//! printed with its seed, case and frame, and saved as `tests/corpus/<hook>-<seed>-<case>.hex`
//! (replayed by the test suite). Exit code 1 if any.

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use lb_common::Hook;
use lb_tests::{fixture::INGRESS_HOOKS, fuzz};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("lb-fuzz: {err:#}");
            ExitCode::from(64)
        }
    }
}

fn run() -> Result<bool> {
    let (mut seed, mut cases, mut hooks) = (1u64, 20_000u32, INGRESS_HOOKS.to_vec());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seed" => seed = value()?.parse().context("--seed: a whole number")?,
            "--cases" => cases = value()?.parse().context("--cases: a whole number")?,
            "--hook" => {
                hooks = match value()?.as_str() {
                    "xdp" => vec![Hook::XdpIngress],
                    "tc" => vec![Hook::TcIngress],
                    "both" => INGRESS_HOOKS.to_vec(),
                    other => bail!("--hook {other}: xdp, tc or both"),
                }
            }
            other => bail!("unknown argument {other} (--seed N, --cases N, --hook xdp|tc|both)"),
        }
    }
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut clean = true;
    for hook in hooks {
        let started = std::time::Instant::now();
        let report = fuzz::run(seed, cases, hook)?;
        println!(
            "{hook}: seed {seed}, {} cases, {} violations ({} frames too short for the kernel to run), {:.1} s",
            report.cases,
            report.violations.len(),
            report.not_runnable,
            started.elapsed().as_secs_f64()
        );
        let outcomes: Vec<String> = report.outcomes.iter().map(|(name, n)| format!("{name} {n}")).collect();
        println!("  outcomes: {}", outcomes.join(", "));
        for violation in &report.violations {
            println!("{}", fuzz::describe(seed, hook, violation));
            let file = corpus.join(format!("{hook}-{seed}-{}.hex", violation.case));
            std::fs::create_dir_all(&corpus)?;
            std::fs::write(&file, lb_tests::packet::hex(&violation.frame) + "\n")?;
            println!("  saved as {}", file.display());
        }
        clean &= report.violations.is_empty();
    }
    Ok(clean)
}
