//! What each `lb` command does, given its parsed arguments (`cli`): the agent, the read-only
//! views, `lb down`. Returns the exit code (`cli::exit`).

mod dns;
mod down;
mod status;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::{
    agent::{self, AgentConfig},
    cli::{exit, Cli, Command},
    dataplane::pinned::PinnedMaps,
    inspect::{explain, report},
    node::preflight,
    status as agent_status,
};

/// Runs a parsed command line; Ok is the exit code.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) if args.check => {
            AgentConfig::from_args(&args)?;
            println!("configuration OK");
            Ok(0)
        }
        Command::Run(args) => {
            preflight::require_privileges()?;
            let config = AgentConfig::from_args(&args)?;
            agent::start(config)?;
            Ok(0)
        }
        Command::Services(args) => {
            let status = agent_status::read(&args.read.pins.pin_dir).ok();
            let maps = PinnedMaps::new(&args.read.pins.pin_dir);
            let services = report::select(report::services_served(&maps, status.as_ref())?, args.service.as_deref())?;
            let services = report::with_reach(services, &mut crate::inspect::reach::Reacher::new(&maps)?);
            report::print_services(&services, args.read.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Flows(args) => {
            let maps = PinnedMaps::new(&args.read.pins.pin_dir);
            let only = match args.service.as_deref() {
                Some(selector) => Some(report::select(report::services(&maps)?, Some(selector))?.iter().map(|s| s.id).collect::<Vec<_>>()),
                None => None,
            };
            let flows = report::flows(&maps, args.limit, only.as_deref(), explain::udp_clock(&args.read.pins.pin_dir))?;
            report::print_flows(&flows, args.read.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Stats(args) => {
            let stats = report::stats(&PinnedMaps::new(&args.pins.pin_dir))?;
            // Interface indexes are per network namespace: the agent's own names come first.
            let uplinks = agent_status::read(&args.pins.pin_dir).map(|s| s.uplinks).unwrap_or_default();
            let names = uplinks.into_iter().map(|u| (u.ifindex, u.name)).collect();
            report::print_stats(&stats, &names, args.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Status(args) => status::show(&args),
        Command::Vips(args) => {
            let vips = agent_status::read_vips(&args.pins.pin_dir).with_context(|| {
                format!("no named VIPs for {} (has `lb run --marathon` run with this --pin-dir?)", args.pins.pin_dir.display())
            })?;
            report::print_vips(&vips, args.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Dns(args) => dns::show(&args),
        Command::Explain(args) => explain(&args),
        Command::Down(args) => down::down(&args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(0)
        }
    }
}

/// The exit code for an error: 64 for configuration and usage, 77 for privileges, else 1.
/// Whether `err` is the reader of our output going away (`lb services | head`): not a failure
/// of lb's, so no message and exit 0.
pub fn output_closed(err: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
            || c.downcast_ref::<serde_json::Error>().and_then(serde_json::Error::io_error_kind) == pipe
    })
}

/// `lb explain`; an unknown `--via` interface is a usage error.
fn explain(args: &crate::cli::ExplainArgs) -> Result<u8> {
    let pin_dir = &args.read.pins.pin_dir;
    let via = args.via.as_deref().map(preflight::interface_index).transpose().map_err(agent::ConfigError::from)?;
    let maps = PinnedMaps::new(pin_dir);
    let status = agent_status::read(pin_dir).ok();
    let explained = explain::explain(&maps, args.protocol, args.client, args.service, explain::udp_clock(pin_dir), via, status.as_ref())?;
    let explained = explain::with_reach(explained, &mut crate::inspect::reach::Reacher::new(&maps)?);
    explain::print(&explained, args.read.json, &mut std::io::stdout().lock())?;
    Ok(0)
}

pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if matches!(cause.downcast_ref(), Some(preflight::PreflightError::NotPrivileged)) {
            return exit::NO_PERMISSION;
        }
        if cause.is::<agent::ConfigError>() {
            return exit::USAGE;
        }
    }
    1
}
