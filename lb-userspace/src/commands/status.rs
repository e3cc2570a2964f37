//! `lb status`.

use anyhow::{Context as _, Result};

use crate::{
    agent::lock,
    cli::{exit, ReadArgs},
    dataplane::{
        loader,
        pinned::{pin_name, PinnedMaps},
        Dataplane as _,
    },
    inspect::report,
    status,
};

/// `lb status`: whether an agent holds the pin directory, the settings in force (read from the
/// pinned maps), and the agent's last report.
pub fn show(args: &ReadArgs) -> Result<u8> {
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

