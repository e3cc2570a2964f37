use std::process::ExitCode;

use lb::cli::{self, ParseError};

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(err)) if !err.use_stderr() => {
            // --help, --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(ParseError::Clap(err)) => {
            // One line (clap's first), no usage block: what is wrong and with which flag.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("lb: error: {first} (see lb --help)");
            return ExitCode::from(cli::exit::USAGE);
        }
        Err(ParseError::ConfigFile(err)) => {
            eprintln!("lb: error: {err}");
            return ExitCode::from(cli::exit::USAGE);
        }
    };
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) if cli::output_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole cause chain: the operator should know what to fix.
            eprintln!("lb: error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
