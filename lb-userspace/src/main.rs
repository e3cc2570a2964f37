use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = lb::cli::Cli::parse();
    match lb::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole cause chain: the operator should know what to fix.
            eprintln!("lb: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
