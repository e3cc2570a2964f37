//! `lb run --config FILE`: a TOML file whose keys are `lb run`'s long flag names. The file is
//! turned into the flags it stands for, each value checked by the flag's own parser (so a file
//! and a command line accept exactly the same values), and put before the command line's, minus
//! the ones the command line gives: flags override the file.

use std::{collections::BTreeMap, ffi::OsString, path::Path};

use clap::{parser::ValueSource, Arg, ArgAction, ArgMatches, Command};
use toml::{Spanned, Value};

/// Flags of `lb run` that make no sense in a file.
const NOT_IN_FILE: &[&str] = &["config", "check", "help"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigFileError {
    #[error("reading {path}: {why}")]
    Read { path: String, why: String },
    #[error("{path}: not TOML: {why}")]
    Syntax { path: String, why: String },
    #[error("{path}:{line}: unknown key {key:?}: keys are `lb run` flag names without the dashes (see lb run --help)")]
    UnknownKey { path: String, line: usize, key: String },
    #[error("{path}:{line}: {key}: {why}")]
    Value { path: String, line: usize, key: String, why: String },
}

/// The flags `text` (the contents of `path`) stands for, leaving out those `given` (the command
/// line's matches of `run`) sets itself. `run` is the `lb run` command.
pub fn flags(path: &Path, text: &str, run: &Command, given: &ArgMatches) -> Result<Vec<OsString>, ConfigFileError> {
    let shown = path.display().to_string();
    let table: BTreeMap<Spanned<String>, Spanned<Value>> =
        toml::from_str(text).map_err(|e| ConfigFileError::Syntax { path: shown.clone(), why: one_line(&e.to_string()) })?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let line = line_of(text, key.span().start);
        let name = key.get_ref();
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(name) && !NOT_IN_FILE.contains(&name.as_str()))
            .ok_or_else(|| ConfigFileError::UnknownKey { path: shown.clone(), line, key: name.clone() })?;
        let value_error = |why: String| ConfigFileError::Value { path: shown.clone(), line, key: name.clone(), why };
        let values = strings(arg, value.get_ref()).map_err(value_error)?;
        for v in &values {
            check(run, arg, v).map_err(value_error)?;
        }
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => {
                if values == ["true"] {
                    out.push(OsString::from(format!("--{name}")));
                }
            }
            _ => {
                for v in values {
                    out.push(OsString::from(format!("--{name}")));
                    out.push(OsString::from(v));
                }
            }
        }
    }
    Ok(out)
}

/// The flag values a TOML value stands for: a string, number or boolean is one; an array is one
/// per element, for flags that may be repeated.
fn strings(arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("expected a string or a number, found a {}", other.type_str())),
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, Value::Boolean(b)) => Ok(vec![b.to_string()]),
        (ArgAction::SetTrue, other) => Err(format!("expected true or false, found a {}", other.type_str())),
        (ArgAction::Append, Value::Array(items)) => items.iter().map(scalar).collect(),
        (_, Value::Array(_)) => Err("takes one value, not a list".into()),
        (_, v) => Ok(vec![scalar(v)?]),
    }
}

/// Runs the flag's own value parser on `value` (by parsing `run --flag=value`).
fn check(run: &Command, arg: &Arg, value: &str) -> Result<(), String> {
    if !arg.get_action().takes_values() {
        return Ok(());
    }
    let flag = format!("--{}={value}", arg.get_long().unwrap_or_default());
    run.clone().no_binary_name(true).try_get_matches_from([flag]).map(drop).map_err(|e| one_line(&e.to_string()))
}

/// clap's and toml's messages without their prefix, usage block and source excerpt.
fn one_line(text: &str) -> String {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    first.trim().trim_start_matches("error: ").trim_start_matches("TOML parse error at ").to_string()
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::{Cli, Command as LbCommand};

    fn run_command() -> Command {
        Cli::command().find_subcommand("run").unwrap().clone()
    }

    /// `lb run <file flags> <cli>` as the agent would see it.
    fn parse(text: &str, cli: &[&str]) -> Result<String, ConfigFileError> {
        let run = run_command();
        let given = run.clone().try_get_matches_from(std::iter::once("run").chain(cli.iter().copied())).unwrap();
        let mut args: Vec<OsString> = vec!["lb".into(), "run".into()];
        args.extend(flags(Path::new("lb.toml"), text, &run, &given)?);
        args.extend(cli.iter().map(OsString::from));
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let LbCommand::Run(run) = Cli::from_arg_matches(&matches).unwrap().command else { panic!() };
        Ok(format!("{run:?}"))
    }

    #[test]
    fn a_file_means_what_the_same_flags_mean() {
        let file = r#"
            # the node's uplinks
            iface = ["eth0", "eth1"]
            services = "/etc/lb/services.json"
            marathon = ["http://m1:8080", "http://m2:8080"]
            max-flows = 200000
            nat-ports = "62000-63999"
            ingress-hook = "tc"
        "#;
        let flags = [
            "--iface", "eth0", "--iface", "eth1", "--services", "/etc/lb/services.json", "--marathon", "http://m1:8080",
            "--marathon", "http://m2:8080", "--max-flows", "200000", "--nat-ports", "62000-63999", "--ingress-hook", "tc",
        ];
        assert_eq!(parse(file, &[]).unwrap(), parse("", &flags).unwrap());
    }

    #[test]
    fn flags_override_the_file_lists_included() {
        let file = "iface = [\"eth0\", \"eth1\"]\nmax-flows = 200000\n";
        let both = parse(file, &["--iface", "bond0", "--max-flows", "5000"]).unwrap();
        assert_eq!(both, parse("", &["--iface", "bond0", "--max-flows", "5000"]).unwrap());
        let one = parse(file, &["--max-flows", "5000"]).unwrap();
        assert_eq!(one, parse("", &["--iface", "eth0", "--iface", "eth1", "--max-flows", "5000"]).unwrap());
    }

    #[test]
    fn unknown_and_mistyped_keys_name_the_key_and_line() {
        let err = parse("iface = [\"eth0\"]\n\nmax_flows = 10\n", &[]).unwrap_err();
        assert_eq!(err, ConfigFileError::UnknownKey { path: "lb.toml".into(), line: 3, key: "max_flows".into() });
        assert!(err.to_string().starts_with("lb.toml:3: unknown key \"max_flows\""), "{err}");
        let cases = [
            ("max-flows = \"lots\"", "max-flows", "lots"),
            ("max-flows = 0", "max-flows", "≥ 1"),
            ("nat-ports = 61000", "nat-ports", "MIN-MAX"),
            ("services = [\"a\", \"b\"]", "services", "one value"),
            ("iface = { name = \"eth0\" }", "iface", "found a table"),
            ("ingress-hook = \"ebpf\"", "ingress-hook", "ebpf"),
            ("check = true", "check", "unknown key"),
        ];
        for (text, key, needle) in cases {
            let err = parse(&format!("# comment\n{text}\n"), &[]).unwrap_err().to_string();
            assert!(err.starts_with("lb.toml:2: ") && err.contains(key) && err.contains(needle), "{text}: {err}");
        }
        let syntax = parse("iface = [\"eth0\"\n", &[]).unwrap_err();
        assert!(matches!(syntax, ConfigFileError::Syntax { .. }), "{syntax}");
    }
}
