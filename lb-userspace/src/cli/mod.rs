//! Command line of `lb`: what it accepts (the commands, `lb run`'s flags and their value
//! parsers, the `--config` file) and nothing of what the commands do (`commands/`).

pub mod config_file;
mod run_args;

use std::{ffi::OsString, path::PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub use run_args::{Listen, RunArgs, ValueError};

use crate::dataplane::DEFAULT_PIN_DIR;
use config_file::ConfigFileError;

/// Exit codes that mean something to scripts and service managers (sysexits.h, systemctl).
pub mod exit {
    /// Bad usage or configuration: nothing was changed.
    pub const USAGE: u8 = 64;
    /// Not privileged enough.
    pub const NO_PERMISSION: u8 = 77;
    /// `lb status`, `lb dns`: no agent is running for this pin directory.
    pub const NOT_RUNNING: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(name = "lb", version, about = "Kernel (XDP/TC/socket-hook) L4 load balancer for Marathon clusters")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the data path, program it, and keep it programmed until SIGINT/SIGTERM.
    /// Programs stay attached and maps pinned after exit; `lb down` removes them.
    Run(Box<RunArgs>),
    /// Services and their backends, read from the pinned maps.
    Services(ServicesArgs),
    /// Entries of the flow table (connections pinned to backends).
    Flows(FlowArgs),
    /// Counters: per outcome, per service, per interface.
    Stats(ReadArgs),
    /// Whether the agent runs, the settings in force, Marathon reachability, last sync.
    /// Exit code 0 with a running agent, 3 without.
    Status(ReadArgs),
    /// Named VIPs and the addresses they were given.
    Vips(ReadArgs),
    /// What the running agent's DNS serves (`lb run --dns-listen`): every record, or one
    /// name's, read from its metrics listener. Exit code 1 for a name without records, 3
    /// without a running agent.
    Dns(DnsArgs),
    /// Which backend a connection gets: the flow table's if it is established, else the one the
    /// service's Maglev ring gives its first packet (same hash and ring as the programs).
    Explain(ExplainArgs),
    /// Detach every program and remove every pin under the pin directory.
    Down(DownArgs),
    /// Shell completion script for lb (e.g. `lb completions bash > /etc/bash_completion.d/lb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// bpffs directory holding the agent's pinned maps and links (a directory of its own).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Stop a running agent (SIGTERM) first instead of refusing.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// tcp or udp.
    #[arg(value_parser = run_args::protocol)]
    pub protocol: crate::desired::Proto,
    /// The client's ADDRESS:PORT ([ADDRESS]:PORT for IPv6).
    pub client: std::net::SocketAddr,
    /// The service's ADDRESS:PORT as clients connect to it (a VIP, or a node address for a
    /// service port).
    pub service: std::net::SocketAddr,
    /// The uplink the packet arrives on (where `lb run --expose` serves the service decides
    /// whether it is balanced); default: any uplink.
    #[arg(long, value_name = "IFACE")]
    pub via: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Only this name's records (`web.marathon.mesos`, `_web._tcp.marathon.mesos`).
    pub name: Option<String>,
    /// Print this zone (the --dns-domain or the --vip-domain) as a zone file (RFC 1035 master
    /// file), for a secondary server to load.
    #[arg(long, value_name = "ZONE", conflicts_with_all = ["name", "json"])]
    pub zone_file: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Only this service: its name, or ADDRESS:PORT as listed (`10.0.0.1:80`, `[fd00::1]:80`,
    /// `0.0.0.0:10001` for a service port).
    pub service: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct FlowArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Read at most this many flow-table entries (--service filters those).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Only flows pinned to backends of this service (name or ADDRESS:PORT, as `lb services`).
    #[arg(long)]
    pub service: Option<String>,
}

/// Why a command line was refused before anything ran.
#[derive(Debug)]
pub enum ParseError {
    Clap(clap::Error),
    ConfigFile(ConfigFileError),
}

/// Parses `args` (argv): with `lb run --config FILE`, the file's flags go before the command
/// line's, leaving out those the command line gives itself.
pub fn parse(args: Vec<OsString>) -> Result<Cli, ParseError> {
    let matches = Cli::command().try_get_matches_from(&args).map_err(ParseError::Clap)?;
    let config = matches.subcommand_matches("run").and_then(|run| Some((run, run.get_one::<PathBuf>("config")?)));
    let Some((given, path)) = config else {
        return Cli::from_arg_matches(&matches).map_err(ParseError::Clap);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ParseError::ConfigFile(ConfigFileError::Read { path: path.display().to_string(), why: e.to_string() }))?;
    let run = Cli::command().find_subcommand("run").expect("lb has a run command").clone();
    let from_file = config_file::flags(path, &text, &run, given).map_err(ParseError::ConfigFile)?;
    let after_run = args.iter().position(|a| a == "run").expect("the run command matched") + 1;
    let mut merged = args;
    merged.splice(after_run..after_run, from_file);
    let matches = Cli::command().try_get_matches_from(merged).map_err(ParseError::Clap)?;
    Cli::from_arg_matches(&matches).map_err(ParseError::Clap)
}
