//! The only code that touches BPF maps. Everything above it (CLI, reconciler, sync) talks to the
//! [`Dataplane`] trait, so it is tested against [`fake::FakeDataplane`] without root.

pub mod dsr;
pub mod fake;
pub mod limits;
pub mod link;
pub mod loader;
pub mod pinned;
mod sys;

use std::path::PathBuf;

use lb_common::{
    sources::SourceRange, BackendInfo, FlowInfo, FlowKey, Hook, IfaceCounters, NatReply, NodeAddrKey, ServiceInfo, ServiceKey, TrafficCounters,
};
use serde::Serialize;
use thiserror::Error;

pub use limits::MapSizes;

/// Default pin directory of the agent's maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("map {name} is not pinned at {path}: is the agent loaded (lb run) with this --pin-dir?")]
    NotPinned { name: &'static str, path: PathBuf },
    #[error("map {name} at {path}: permission denied: run as root (lb reads BPF maps)")]
    PermissionDenied { name: &'static str, path: PathBuf },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name}: {detail}")]
    Layout { name: &'static str, detail: String },
    #[error("map {name}: mapping {what} into memory (maps created without BPF_F_MMAPABLE?)")]
    Mmap {
        name: &'static str,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exhausted: all {limit} in use (raise the limit with {flag})")]
    Full { what: &'static str, limit: u32, flag: &'static str },
}


/// Packet counters of one (interface, hook), summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IfaceStat {
    pub ifindex: u32,
    pub hook: Hook,
    pub packets: u64,
    pub bytes: u64,
}

impl IfaceStat {
    pub fn new(ifindex: u32, hook: Hook, counters: IfaceCounters) -> Self {
        Self { ifindex, hook, packets: counters.packets, bytes: counters.bytes }
    }
}

/// Map I/O of the data path. Reads return every CPU's counters summed.
/// The bitmaps the programs consult before any hash lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bitmap {
    /// (protocol, port) pairs some service uses (lb_common::service_port_bit).
    ServicePorts,
    /// Addresses services are served on (lb_common::service_addr_bit).
    ServiceAddrs,
}

impl Bitmap {
    pub fn map(self) -> &'static str {
        match self {
            Bitmap::ServicePorts => lb_common::names::MAP_SERVICE_PORTS,
            Bitmap::ServiceAddrs => lb_common::names::MAP_SERVICE_ADDRS,
        }
    }

    pub fn words(self) -> usize {
        match self {
            Bitmap::ServicePorts => lb_common::SERVICE_PORT_WORDS as usize,
            Bitmap::ServiceAddrs => lb_common::SERVICE_ADDR_WORDS as usize,
        }
    }
}

/// NAT mappings freed per [`Dataplane::expire_nat_mappings`] call at most: bounds the memory of
/// one sweep (the rest wait for the next).
pub const MAX_EXPIRED_PER_CALL: usize = 16384;

pub trait Dataplane {
    /// Sizes the maps were created with (read back from the kernel, so every process agrees).
    fn limits(&self) -> Result<MapSizes, DataplaneError>;

    /// Per-interface counters, sorted by (ifindex, hook).
    fn iface_stats(&self) -> Result<Vec<IfaceStat>, DataplaneError>;
    /// Packets per outcome, indexed by `lb_common::Reason as usize`.
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError>;
    /// The counters of services `0..ids`, indexed by service id (read as one batch: callers
    /// pass one more than the highest id they need, not the map's size).
    fn service_stats(&self, ids: u32) -> Result<Vec<TrafficCounters>, DataplaneError>;
    /// The counters of backends `0..ids`, indexed by backend id.
    fn backend_stats(&self, ids: u32) -> Result<Vec<TrafficCounters>, DataplaneError>;
    /// Zeroes a service's counters, its source refusals included (its id is being given to a
    /// new service).
    fn reset_service_stats(&mut self, service_id: u32) -> Result<(), DataplaneError>;
    fn reset_backend_stats(&mut self, backend_id: u32) -> Result<(), DataplaneError>;

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>, DataplaneError>;
    fn set_service(&mut self, key: &ServiceKey, info: &ServiceInfo) -> Result<(), DataplaneError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError>;
    fn service_name(&self, service_id: u32) -> Result<String, DataplaneError>;
    /// The names of service slots `0..ids`, indexed by service id ("" for an unused slot).
    fn service_names(&self, ids: u32) -> Result<Vec<String>, DataplaneError>;
    fn set_service_name(&mut self, service_id: u32, name: &str) -> Result<(), DataplaneError>;

    /// Every backend entry, used or not is told by its `state`; index = backend id.
    fn backends(&self) -> Result<Vec<BackendInfo>, DataplaneError>;
    fn set_backend(&mut self, backend_id: u32, info: &BackendInfo) -> Result<(), DataplaneError>;

    /// Writes `ring` into the pool's slots from `start`.
    fn write_ring(&mut self, start: u32, ring: &[u32]) -> Result<(), DataplaneError>;
    /// The `size` slots of the pool from `start`.
    fn read_ring(&self, start: u32, size: u32) -> Result<Vec<u32>, DataplaneError>;

    /// All words of one of the programs' bitmaps.
    fn bitmap_words(&self, bitmap: Bitmap) -> Result<Vec<u64>, DataplaneError>;
    fn set_bitmap_word(&mut self, bitmap: Bitmap, index: u32, word: u64) -> Result<(), DataplaneError>;

    /// The group word (lb_common::exposure) of service slot `service_id`.
    fn service_groups(&self, service_id: u32) -> Result<u32, DataplaneError>;
    /// The group words of service slots `0..ids` (one batch, as `service_names`).
    fn service_group_words(&self, ids: u32) -> Result<Vec<u32>, DataplaneError>;
    fn set_service_groups(&mut self, service_id: u32, groups: u32) -> Result<(), DataplaneError>;

    /// Every service's source ranges, as `SOURCE_RANGES` keys (prefix length, data).
    fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>, DataplaneError>;
    fn set_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<(), DataplaneError>;
    fn remove_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<(), DataplaneError>;
    /// How many source ranges service slots `0..ids` have (0: every client), as `service_names`.
    fn service_source_counts(&self, ids: u32) -> Result<Vec<u32>, DataplaneError>;
    fn set_service_sources(&mut self, service_id: u32, count: u32) -> Result<(), DataplaneError>;
    /// New flows refused for their source, of service slots `0..ids`.
    fn source_refusals(&self, ids: u32) -> Result<Vec<u64>, DataplaneError>;

    /// This node's addresses where service ports are served, with the group word of each.
    fn node_addrs(&self) -> Result<Vec<(NodeAddrKey, u32)>, DataplaneError>;
    fn set_node_addr(&mut self, addr: &NodeAddrKey, groups: u32) -> Result<(), DataplaneError>;
    fn remove_node_addr(&mut self, addr: &NodeAddrKey) -> Result<(), DataplaneError>;

    /// Interface indexes whose routes mean "another node" (full NAT), with the group word of
    /// each (what VIPs arriving there are served for).
    fn uplinks(&self) -> Result<Vec<(u32, u32)>, DataplaneError>;
    fn set_uplink(&mut self, ifindex: u32, groups: u32) -> Result<(), DataplaneError>;
    fn remove_uplink(&mut self, ifindex: u32) -> Result<(), DataplaneError>;

    /// What the node does with remote backends: the settings' DSR flags and `DSR_NODES`.
    fn dsr_view(&self) -> Result<dsr::DsrView, DataplaneError>;
    /// `PREVIOUS_RINGS` of service slots `0..ids`, as `service_names`.
    fn previous_rings(&self, ids: u32) -> Result<Vec<lb_common::PreviousRing>, DataplaneError>;
    fn set_previous_ring(&mut self, service_id: u32, ring: &lb_common::PreviousRing) -> Result<(), DataplaneError>;

    /// Entries of the flow table (at most `limit`).
    fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowInfo)>, DataplaneError>;
    /// (map name, entries, capacity) of each flow-like table.
    fn flow_table_fill(&self) -> Result<Vec<(&'static str, u32, u32)>, DataplaneError>;
    /// The flow-table entry of one connection, if there is one.
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowInfo>, DataplaneError>;
    /// Frees the full-NAT mappings `expired` picks (keyed by the backend's reply), with the flow
    /// entries still pointing at them, so their NAT ports can be taken again. At most
    /// `MAX_EXPIRED_PER_CALL` per call. Returns how many were freed.
    fn expire_nat_mappings(&mut self, expired: &mut dyn FnMut(&FlowKey, &NatReply) -> bool) -> Result<usize, DataplaneError>;
    /// Removes the flow entries `forget` picks (given each connection as the client sent it), so
    /// the connection's next packet is judged as a new flow. Returns how many were removed.
    fn forget_flows(&mut self, forget: &mut dyn FnMut(&FlowKey, &FlowInfo) -> bool) -> Result<usize, DataplaneError>;
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use lb_common::Hook;

    #[test]
    fn hooks_serialize_as_the_name_operators_read() {
        for hook in Hook::ALL {
            assert_eq!(serde_json::to_value(hook).unwrap(), hook.name());
            assert_eq!(serde_json::from_value::<Hook>(hook.name().into()).unwrap(), hook);
        }
    }
}
