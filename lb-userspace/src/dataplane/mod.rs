//! The only code that touches BPF maps. Everything above it (CLI, sync, reconciler) talks to the
//! [`Dataplane`] trait, so it is tested against [`fake::FakeDataplane`] without root.

pub mod fake;
pub mod loader;
pub mod pinned;

use std::path::PathBuf;

use lb_common::{IfaceCounters, HOOK_TC_EGRESS, HOOK_XDP_INGRESS};
use serde::Serialize;
use thiserror::Error;

/// Default pin directory of the agent's maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("map {name} is not pinned at {path}: is the agent loaded (lb run) with this --pin-dir?")]
    NotPinned { name: &'static str, path: PathBuf },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
}

/// Packet counters of one (interface, hook), summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IfaceStat {
    pub ifindex: u32,
    pub hook: HookName,
    pub packets: u64,
    pub bytes: u64,
}

/// Which program counted a packet, as operators read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    XdpIngress,
    TcEgress,
    Unknown,
}

impl HookName {
    pub fn from_raw(hook: u32) -> Self {
        match hook {
            HOOK_XDP_INGRESS => Self::XdpIngress,
            HOOK_TC_EGRESS => Self::TcEgress,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::XdpIngress => "xdp_ingress",
            Self::TcEgress => "tc_egress",
            Self::Unknown => "unknown",
        }
    }
}

impl IfaceStat {
    pub fn new(ifindex: u32, hook: u32, counters: IfaceCounters) -> Self {
        Self { ifindex, hook: HookName::from_raw(hook), packets: counters.packets, bytes: counters.bytes }
    }
}

/// Map I/O of the data path.
pub trait Dataplane {
    /// Per-interface counters, summed over CPUs, sorted by (ifindex, hook).
    fn iface_stats(&self) -> Result<Vec<IfaceStat>, DataplaneError>;
}
