//! Names of the kernel objects, shared so that the loader, the pins and the CLI agree.

/// Uplink ingress balancer in XDP (`--ingress-hook xdp`).
pub const PROG_XDP: &str = "lb_xdp";
/// The same balancer in TC (TCX) ingress (`--ingress-hook tc`).
pub const PROG_TC_INGRESS: &str = "lb_tc_ingress";
/// TC (TCX) egress program attached to every uplink.
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";

/// cgroup socket hooks for local clients, (program, attach point) pairs.
pub const PROG_SOCK_HOOKS: &[(&str, &str)] = &[
    ("lb_connect4", "connect4"),
    ("lb_connect6", "connect6"),
    ("lb_sendmsg4", "sendmsg4"),
    ("lb_sendmsg6", "sendmsg6"),
    ("lb_recvmsg4", "recvmsg4"),
    ("lb_recvmsg6", "recvmsg6"),
    ("lb_getpeername4", "getpeername4"),
    ("lb_getpeername6", "getpeername6"),
];

pub const MAP_IFACE_STATS: &str = "IFACE_STATS";
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_SERVICE_NAMES: &str = "SERVICE_NAMES";
pub const MAP_SERVICE_PORTS: &str = "SERVICE_PORTS";
pub const MAP_SERVICE_ADDRS: &str = "SERVICE_ADDRS";
pub const MAP_SERVICE_GROUPS: &str = "SERVICE_GROUPS";
pub const MAP_SERVICE_SOURCES: &str = "SERVICE_SOURCES";
pub const MAP_SOURCE_RANGES: &str = "SOURCE_RANGES";
pub const MAP_SOURCE_REFUSALS: &str = "SOURCE_REFUSALS";
pub const MAP_NODE_ADDRS: &str = "NODE_ADDRS";
pub const MAP_RINGS: &str = "RINGS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_FLOWS4: &str = "FLOWS4";
pub const MAP_REPLIES: &str = "REPLIES";
pub const MAP_REPLIES4: &str = "REPLIES4";
pub const MAP_SOCK_REPLIES: &str = "SOCK_REPLIES";
pub const MAP_NAT_REPLIES: &str = "NAT_REPLIES";
pub const MAP_UPLINKS: &str = "UPLINKS";
pub const MAP_FIB_SCRATCH: &str = "FIB_SCRATCH";
pub const MAP_SCRATCH: &str = "SCRATCH";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_VERDICTS: &str = "VERDICTS";
pub const MAP_SETTINGS: &str = "SETTINGS";
pub const MAP_TUPLE_FLOWS4: &str = "TUPLE_FLOWS4";
pub const MAP_ROUTES: &str = "ROUTES";
pub const MAP_DSR_NODES: &str = "DSR_NODES";
pub const MAP_DECAP_FROM: &str = "DECAP_FROM";
pub const MAP_PREVIOUS_RINGS: &str = "PREVIOUS_RINGS";

/// The flow-like maps, each sized by `--max-flows`.
pub const FLOW_MAPS: [&str; 6] = [MAP_FLOWS, MAP_FLOWS4, MAP_REPLIES, MAP_REPLIES4, MAP_NAT_REPLIES, MAP_SOCK_REPLIES];

/// Every map the agent pins under its pin directory. Settings first: they carry the layout
/// version, so maps of another layout are reported as that, not as a size that differs.
pub const PINNED_MAPS: &[&str] = &[
    MAP_SETTINGS,
    MAP_IFACE_STATS,
    MAP_SERVICES,
    MAP_SERVICE_NAMES,
    MAP_SERVICE_PORTS,
    MAP_SERVICE_ADDRS,
    MAP_SERVICE_GROUPS,
    MAP_SERVICE_SOURCES,
    MAP_SOURCE_RANGES,
    MAP_SOURCE_REFUSALS,
    MAP_NODE_ADDRS,
    MAP_RINGS,
    MAP_PREVIOUS_RINGS,
    MAP_BACKENDS,
    MAP_FLOWS,
    MAP_FLOWS4,
    MAP_REPLIES,
    MAP_REPLIES4,
    MAP_SOCK_REPLIES,
    MAP_NAT_REPLIES,
    MAP_TUPLE_FLOWS4,
    MAP_ROUTES,
    MAP_UPLINKS,
    MAP_DSR_NODES,
    MAP_DECAP_FROM,
    MAP_SERVICE_STATS,
    MAP_BACKEND_STATS,
    MAP_VERDICTS,
];
