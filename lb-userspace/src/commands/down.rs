//! `lb down`.

use std::time::Duration;

use anyhow::Result;

use crate::{
    agent::{self, lock},
    cli::DownArgs,
    dataplane::loader,
    node::preflight,
    status,
};

/// `lb down`: refuses while an agent runs unless `--force`, which stops it first; then holds the
/// lock itself so no agent starts while the pins go.
pub fn down(args: &DownArgs) -> Result<u8> {
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
    withdraw_vips(pin_dir);
    let removed = loader::tear_down(pin_dir)?;
    // The agent's last status and VIP table describe what was just removed.
    for file in [status::path_for(pin_dir), status::vips_path_for(pin_dir)] {
        let _ = std::fs::remove_file(file);
    }
    println!("removed {removed} pins under {}", pin_dir.display());
    Ok(0)
}

/// The VIPs the last agent left announced (`--withdraw-on-stop false`) are withdrawn: a node
/// whose programs are gone must leave the routers' ECMP set. A BIRD that does not answer is
/// reported; the pins go all the same.
fn withdraw_vips(pin_dir: &std::path::Path) {
    let Some(bgp) = status::read(pin_dir).ok().and_then(|s| s.bgp) else { return };
    if bgp.announced.is_empty() {
        return;
    }
    match crate::announce::withdraw(bgp.socket.as_ref(), bgp.routes.as_ref()) {
        Ok(_) => println!("withdrew {} VIPs from BIRD ({})", bgp.announced.len(), bgp.socket),
        Err(why) => eprintln!("lb: warning: withdrawing the VIPs from BIRD: {why}"),
    }
}

#[derive(Debug, thiserror::Error)]
enum DownError {
    #[error("an agent (pid {pid}) is running with this pin directory: stop it first, or run `lb down --force` to stop it and remove everything")]
    AgentRunning { pid: i32 },
    #[error("the agent (pid {pid}) did not stop within 10 s of SIGTERM; nothing was removed")]
    AgentDidNotStop { pid: i32 },
}

