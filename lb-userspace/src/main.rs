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
            // One line, no usage block: what is wrong and with which flag (clap's first paragraph:
            // a missing argument is named on the lines after the first).
            let text = err.to_string();
            let paragraph: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let first = paragraph.join(" ");
            let first = first.trim_start_matches("error: ");
            eprintln!("lb: error: {first} (see lb --help)");
            return ExitCode::from(cli::exit::USAGE);
        }
        Err(ParseError::ConfigFile(err)) => {
            eprintln!("lb: error: {err}");
            return ExitCode::from(cli::exit::USAGE);
        }
    };
    match lb::commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) if lb::commands::output_closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole cause chain: the operator should know what to fix.
            eprintln!("lb: error: {err:#}");
            ExitCode::from(lb::commands::exit_code(&err))
        }
    }
}
