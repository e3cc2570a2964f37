use std::process::ExitCode;

use clap::Parser;
use lb::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line (clap's first), no usage block: what is wrong and with which flag.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("lb: error: {first} (see lb --help)");
            return ExitCode::from(cli::exit::USAGE);
        }
    };
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // One line, the whole cause chain: the operator should know what to fix.
            eprintln!("lb: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
