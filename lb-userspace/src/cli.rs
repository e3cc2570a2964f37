//! Command line of `lb`: argument definitions and dispatch. The agent itself is in `agent/`.

use std::{ffi::OsString, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{
    agent::{self, config as parse, lock, AgentConfig},
    dataplane::{
        loader::{self, IngressHook},
        pinned::{pin_name, PinnedMaps},
        Dataplane as _, DEFAULT_PIN_DIR,
    },
    config_file::{self, ConfigFileError},
    marathon::{client::Auth, vip::VipRange},
    preflight, report, status,
};

/// Exit codes that mean something to scripts and service managers (sysexits.h, systemctl).
pub mod exit {
    /// Bad usage or configuration: nothing was changed.
    pub const USAGE: u8 = 64;
    /// Not privileged enough.
    pub const NO_PERMISSION: u8 = 77;
    /// `lb status`: no agent is running for this pin directory.
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
    #[arg(value_parser = parse::protocol)]
    pub protocol: crate::model::Proto,
    /// The client's ADDRESS:PORT ([ADDRESS]:PORT for IPv6).
    pub client: std::net::SocketAddr,
    /// The service's ADDRESS:PORT as clients connect to it (a VIP, or a node address for a
    /// service port).
    pub service: std::net::SocketAddr,
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

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML file of flags: keys are the long flag names (`max-flows = 200000`, `iface =
    /// ["eth0"]`); flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (flags, --config file, interfaces, pinned maps) and exit: 0 if
    /// it is valid, 64 if not. Nothing is loaded or attached.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub pins: PinArgs,
    /// Uplink to balance on (ingress) and to restore replies on (TC egress); repeat for several.
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
    /// Program that balances on uplink ingress: `auto` = TC on veth, native XDP where the driver
    /// has it, TC otherwise; `xdp` (native, else generic); `tc`.
    #[arg(long, value_enum, default_value_t = IngressHook::Auto, value_name = "HOOK")]
    pub ingress_hook: IngressHook,
    /// Static services file (JSON, see README); reloaded on change and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub services: Option<PathBuf>,
    /// Marathon URL (http or https, optionally with user:password@); repeat for several: REST
    /// fails over between them, the event stream goes round them.
    #[arg(long = "marathon", value_name = "URL", value_parser = parse::marathon_url)]
    pub marathon: Vec<reqwest::Url>,
    /// HTTP basic credentials for Marathon (also LB_MARATHON_CREDENTIALS).
    #[arg(long, value_name = "USER:PASSWORD", env = "LB_MARATHON_CREDENTIALS", hide_env_values = true, value_parser = parse::credentials)]
    pub marathon_credentials: Option<Auth>,
    /// DC/OS token for Marathon, sent as `Authorization: token=…` (also LB_MARATHON_TOKEN).
    #[arg(long, value_name = "TOKEN", env = "LB_MARATHON_TOKEN", hide_env_values = true)]
    pub marathon_token: Option<String>,
    /// Range named VIPs (`/web:80` labels) get addresses from, the same on every node.
    #[arg(long, value_name = "CIDR", default_value = "11.0.0.0/8")]
    pub vip_cidr: VipRange,
    /// Seconds between full re-reads of Marathon's apps when no event asks for one.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse::seconds)]
    pub resync: u64,
    /// Seconds a Marathon request may take.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse::seconds)]
    pub marathon_timeout: u64,
    /// Seconds the event stream may go without a complete event or heartbeat (Marathon sends
    /// one every 10 s) before it is reopened and the apps re-read.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse::seconds)]
    pub event_stall: u64,
    /// Address of this node where service ports are served; repeat for several. Default: every
    /// address of every interface. 127.0.0.1 and ::1 are always included.
    #[arg(long = "node-ip", value_name = "ADDR")]
    pub node_ips: Vec<IpAddr>,
    /// cgroup v2 directory whose processes (and descendants') get the socket hooks: their
    /// connections to services go straight to a backend. Default: the cgroup v2 root (mounted
    /// at /run/lb/cgroup2 if the machine has no cgroup v2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Slots of the pool every service's Maglev ring comes from (4 bytes each; whole chunks of
    /// 65536, each holding rings of one size: at least one chunk per ring size in use). A
    /// service takes the smallest prime ring with 100 slots per backend (359 for 3 backends, at
    /// most 65521); the default holds 20,000 such services.
    #[arg(long, default_value_t = lb_common::ring_pool::DEFAULT_RING_SLOTS, value_parser = parse::ring_slots)]
    pub ring_slots: u32,
    /// Services (each address, port and protocol is one).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICES, value_parser = parse::count_at_least(1))]
    pub max_services: u32,
    /// Backend entries (one per service membership).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS, value_parser = parse::count_at_least(2))]
    pub max_backends: u32,
    /// Flow-table entries (LRU), per address family (IPv4 and IPv6 flows have their own tables).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_FLOWS, value_parser = parse::count_at_least(1))]
    pub max_flows: u32,
    /// Seconds of silence after which a UDP flow may move to another backend.
    #[arg(long, default_value_t = lb_common::DEFAULT_UDP_TIMEOUT_SECS, value_parser = parse::seconds)]
    pub udp_timeout: u64,
    /// Where Prometheus metrics (/metrics) and the status page (/) are served: ADDR:PORT, or
    /// `off`. A non-loopback address needs --metrics-listen-public.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9097", value_parser = parse::listen)]
    pub metrics_listen: parse::Listen,
    /// Allow --metrics-listen on an address other hosts can reach.
    #[arg(long)]
    pub metrics_listen_public: bool,
    /// Source ports for full NAT towards backends on other nodes (MIN-MAX). Must not overlap
    /// the node's ephemeral ports (net.ipv4.ip_local_port_range) nor any service port.
    #[arg(long, value_name = "MIN-MAX", default_value = "61000-65535", value_parser = parse::port_range)]
    pub nat_ports: (u16, u16),
    /// Serve the HTTP path (marathon-lb's HAPROXY_{n}_VHOST/PATH labels) in plain HTTP on
    /// ADDR:PORT. Off unless given.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "HTTP path")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Serve the HTTP path over TLS on ADDR:PORT (needs --ssl-certs).
    #[arg(long, value_name = "ADDR:PORT", requires = "ssl_certs", help_heading = "HTTP path")]
    pub https_listen: Option<std::net::SocketAddr>,
    /// Directory of PEM files, each a certificate chain and its key; SNI picks by the
    /// certificates' names, default.pem (else the first file) answers the rest. Re-read on
    /// change and on SIGHUP.
    #[arg(long, value_name = "DIR", requires = "https_listen", help_heading = "HTTP path")]
    pub ssl_certs: Option<PathBuf>,
    /// Serve apps whose HAPROXY_GROUP (or HAPROXY_{n}_GROUP) is NAME on the HTTP path;
    /// repeatable; `*` serves every group.
    #[arg(long = "group", value_name = "NAME", default_value = "external", help_heading = "HTTP path")]
    pub groups: Vec<String>,
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
            let services = report::services(&PinnedMaps::new(&args.read.pins.pin_dir))?;
            let services = report::select(services, args.service.as_deref())?;
            report::print_services(&services, args.read.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Flows(args) => {
            let maps = PinnedMaps::new(&args.read.pins.pin_dir);
            let only = match args.service.as_deref() {
                Some(selector) => Some(report::select(report::services(&maps)?, Some(selector))?.iter().map(|s| s.id).collect::<Vec<_>>()),
                None => None,
            };
            let flows = report::flows(&maps, args.limit, only.as_deref())?;
            report::print_flows(&flows, args.read.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Stats(args) => {
            let stats = report::stats(&PinnedMaps::new(&args.pins.pin_dir))?;
            // Interface indexes are per network namespace: the agent's own names come first.
            let uplinks = status::read(&args.pins.pin_dir).map(|s| s.uplinks).unwrap_or_default();
            let names = uplinks.into_iter().map(|u| (u.ifindex, u.name)).collect();
            report::print_stats(&stats, &names, args.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Status(args) => show_status(&args),
        Command::Vips(args) => {
            let vips = status::read_vips(&args.pins.pin_dir).with_context(|| {
                format!("no named VIPs for {} (has `lb run --marathon` run with this --pin-dir?)", args.pins.pin_dir.display())
            })?;
            report::print_vips(&vips, args.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Explain(args) => {
            let explained = crate::explain::explain(&PinnedMaps::new(&args.read.pins.pin_dir), args.protocol, args.client, args.service)?;
            crate::explain::print(&explained, args.read.json, &mut std::io::stdout().lock())?;
            Ok(0)
        }
        Command::Down(args) => down(&args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(0)
        }
    }
}

/// `lb status`: whether an agent holds the pin directory, the settings in force (read from the
/// pinned maps), and the agent's last report.
fn show_status(args: &ReadArgs) -> Result<u8> {
    let pin_dir = &args.pins.pin_dir;
    let holder = lock::holder(pin_dir).with_context(|| format!("reading the lock of {}", pin_dir.display()))?;
    let mut last = status::read(pin_dir).unwrap_or_else(|_| status::AgentStatus { pin_dir: pin_dir.display().to_string(), ..Default::default() });
    let maps = PinnedMaps::new(pin_dir);
    if let Ok(services) = maps.services() {
        last.services = services.len();
    }
    let view = status::StatusView {
        running: holder.is_some(),
        settings: loader::read_settings(pin_dir).map(status::SettingsView::from),
        maps_pinned: pin_dir.join(pin_name(lb_common::names::MAP_SERVICES)).exists(),
        agent: status::AgentStatus { pid: holder.map_or(last.pid, |pid| pid as u32), ..last },
    };
    report::print_status(&view, args.json, &mut std::io::stdout().lock())?;
    Ok(if view.running { 0 } else { exit::NOT_RUNNING })
}

/// `lb down`: refuses while an agent runs unless `--force`, which stops it first; then holds the
/// lock itself so no agent starts while the pins go.
fn down(args: &DownArgs) -> Result<u8> {
    let pin_dir = &args.pins.pin_dir;
    preflight::require_privileges()?;
    preflight::require_pin_dir(pin_dir).map_err(agent::ConfigError::from)?;
    if let Some(pid) = lock::holder(pin_dir)? {
        if !args.force {
            return Err(DownError::AgentRunning { pid }.into());
        }
        if !lock::stop_holder(pin_dir, pid, Duration::from_secs(10))? {
            return Err(DownError::AgentDidNotStop { pid }.into());
        }
        println!("stopped the agent (pid {pid})");
    }
    let _lock = lock::PinDirLock::acquire(pin_dir)?;
    let removed = loader::tear_down(pin_dir)?;
    // The agent's last status and VIP table describe what was just removed.
    for file in [status::path_for(pin_dir), status::vips_path_for(pin_dir)] {
        let _ = std::fs::remove_file(file);
    }
    println!("removed {removed} pins under {}", pin_dir.display());
    Ok(0)
}

#[derive(Debug, thiserror::Error)]
enum DownError {
    #[error("an agent (pid {pid}) is running with this pin directory: stop it first, or run `lb down --force` to stop it and remove everything")]
    AgentRunning { pid: i32 },
    #[error("the agent (pid {pid}) did not stop within 10 s of SIGTERM; nothing was removed")]
    AgentDidNotStop { pid: i32 },
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
