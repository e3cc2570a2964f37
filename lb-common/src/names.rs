//! Names of the kernel objects, shared so that the loader, the pins and the CLI agree.

/// XDP program attached to every uplink.
pub const PROG_XDP: &str = "lb_xdp";
/// TC (TCX) egress program attached to every uplink.
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";

/// Per-CPU packet/byte counters per (interface, hook).
pub const MAP_IFACE_STATS: &str = "IFACE_STATS";

/// Every map the agent pins under its pin directory.
pub const PINNED_MAPS: &[&str] = &[MAP_IFACE_STATS];
