//! Command line of `lb`.

use std::{io::Write, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tracing::info;

use crate::{
    dataplane::{
        loader::{self, AttachPlan},
        pinned::PinnedMaps,
        Dataplane, IfaceStat, DEFAULT_PIN_DIR,
    },
    preflight,
};

#[derive(Debug, Parser)]
#[command(name = "lb", version, about = "Kernel (XDP/TC/socket-hook) L4 load balancer for Marathon clusters")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the data path, then keep it programmed until SIGINT/SIGTERM.
    /// Programs stay attached and maps pinned after exit; `lb down` removes them.
    Run(RunArgs),
    /// Per-interface packet counters, read from the pinned maps.
    Stats(ReadArgs),
    /// Detach every program and remove every pin under the pin directory.
    Down(PinArgs),
}

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// bpffs directory holding the agent's pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
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
pub struct RunArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Uplink to attach XDP (ingress) and TC (egress) to; repeat for several.
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run_agent(args),
        Command::Stats(args) => {
            let stats = PinnedMaps::new(&args.pins.pin_dir).iface_stats()?;
            print_stats(&stats, args.json, &mut std::io::stdout().lock())
        }
        Command::Down(args) => {
            preflight::require_privileges()?;
            let removed = loader::tear_down(&args.pin_dir)?;
            println!("removed {removed} pins under {}", args.pin_dir.display());
            Ok(())
        }
    }
}

fn run_agent(args: RunArgs) -> Result<()> {
    init_logging();
    // Everything that can be checked is checked before the kernel is touched.
    preflight::require_privileges()?;
    preflight::require_bpffs(&args.pins.pin_dir)?;
    for iface in &args.ifaces {
        preflight::interface_index(iface)?;
    }
    let plan = AttachPlan { pin_dir: args.pins.pin_dir.clone(), ifaces: args.ifaces.clone() };
    let loaded = loader::bring_up(&plan)?;
    info!(pin_dir = %plan.pin_dir.display(), ifaces = ?plan.ifaces, "data path up");
    println!("ready");
    std::io::stdout().flush()?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(wait_for_shutdown())?;
    drop(loaded);
    info!("stopping; programs stay attached and maps pinned (lb down removes them)");
    Ok(())
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Prints counters as a table (interface names resolved in the current network namespace) or JSON.
pub fn print_stats(stats: &[IfaceStat], json: bool, out: &mut impl Write) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, stats)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<16} {:>7} {:<12} {:>12} {:>14}", "IFACE", "IFINDEX", "HOOK", "PACKETS", "BYTES")?;
    for stat in stats {
        let name = preflight::interface_name(stat.ifindex).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<16} {:>7} {:<12} {:>12} {:>14}",
            name,
            stat.ifindex,
            stat.hook.as_str(),
            stat.packets,
            stat.bytes
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{IfaceCounters, IfaceKey, HOOK_TC_EGRESS, HOOK_XDP_INGRESS};

    use super::*;
    use crate::dataplane::fake::FakeDataplane;

    fn fake() -> FakeDataplane {
        let mut fake = FakeDataplane::default();
        let per_cpu = |p, b| vec![IfaceCounters { packets: p, bytes: b }, IfaceCounters { packets: 1, bytes: 60 }];
        fake.iface_counters.insert(IfaceKey { ifindex: 1, hook: HOOK_XDP_INGRESS }, per_cpu(4, 400));
        fake.iface_counters.insert(IfaceKey { ifindex: 1, hook: HOOK_TC_EGRESS }, per_cpu(2, 100));
        fake
    }

    #[test]
    fn stats_json_sums_cpus_and_names_hooks() {
        let mut out = Vec::new();
        print_stats(&fake().iface_stats().unwrap(), true, &mut out).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                {"ifindex": 1, "hook": "xdp_ingress", "packets": 5, "bytes": 460},
                {"ifindex": 1, "hook": "tc_egress", "packets": 3, "bytes": 160},
            ])
        );
    }

    #[test]
    fn stats_table_has_a_row_per_hook() {
        let mut out = Vec::new();
        print_stats(&fake().iface_stats().unwrap(), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with("lo "), "{text}");
        assert!(text.contains("tc_egress"), "{text}");
    }
}
