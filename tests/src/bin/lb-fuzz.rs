//! `cargo xtask fuzz [--seed N] [--cases N] [--hook xdp|tc|both]`: seeded packet fuzzing of the
//! ingress programs (lb_tests::fuzz). Prints `N cases, V violations` per hook; every violation is
//! printed with its seed, case and frame, and saved as `tests/corpus/<hook>-<seed>-<case>.hex`
//! (replayed by the test suite). Exit code 1 if any.

use std::process::ExitCode;

use anyhow::Result;
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

/// Options of `cargo xtask fuzz`.
#[derive(clap::Parser, Debug)]
#[command(name = "lb-fuzz")]
struct Config {
    /// Seed of the generator: the same seed makes the same frames.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Frames per hook.
    #[arg(long, default_value_t = 20_000)]
    cases: u32,
    /// The ingress programs to run them through.
    #[arg(long, value_enum, default_value_t = Hooks::Both)]
    hook: Hooks,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Hooks {
    Xdp,
    Tc,
    Both,
}

fn run() -> Result<bool> {
    let Config { seed, cases, hook } = lb_tests::command_line();
    let hooks = match hook {
        Hooks::Xdp => vec![Hook::XdpIngress],
        Hooks::Tc => vec![Hook::TcIngress],
        Hooks::Both => INGRESS_HOOKS.to_vec(),
    };
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
