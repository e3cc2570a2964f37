//! Outcome counters: one slot of `VERDICTS` per outcome, forwards and every other verdict, so an
//! operator can tell why a packet was not balanced.

/// Forwarded to a backend reachable through this node's stack: destination rewritten, passed on.
pub const FWD_LOCAL: u32 = 0;
/// Reply from a backend rewritten back to the service address (TC egress).
pub const REPLY_REWRITTEN: u32 = 1;
/// Not addressed to a service: passed untouched.
pub const NOT_SERVICE: u32 = 2;
/// Not IPv4/IPv6, or not TCP/UDP: passed untouched.
pub const NOT_IP_TCP_UDP: u32 = 3;
/// Addressed to a service with no live backend: dropped.
pub const NO_BACKEND: u32 = 4;
/// Truncated or inconsistent headers: passed to the stack, which drops or answers them.
pub const MALFORMED: u32 = 5;
/// IP fragment: passed, never balanced (later fragments carry no ports).
pub const FRAGMENT: u32 = 6;
/// IPv4 options or IPv6 extension headers: passed, never balanced.
pub const IP_OPTIONS: u32 = 7;
/// The flow table refused an insert: dropped so the flow retries rather than splitting.
pub const FLOW_TABLE_FULL: u32 = 8;
/// A ring slot pointed at a backend id that is not in use (agent bug or torn update): dropped.
pub const BAD_BACKEND: u32 = 9;
/// The rewrite helper failed: dropped.
pub const REWRITE_FAILED: u32 = 10;

/// A local socket's connect()/sendmsg() to a service was sent straight to a backend.
pub const FWD_SOCKET: u32 = 11;
/// A local socket's peer/source address was shown as the service (getpeername/recvmsg).
pub const SOCKET_REPLY_REWRITTEN: u32 = 12;

/// Forwarded to a backend on another node with full NAT, back out of an uplink (XDP_TX/REDIRECT).
pub const FWD_NAT: u32 = 13;
/// A backend's reply to a full-NAT flow, rewritten to the client and sent on.
pub const NAT_REPLY: u32 = 14;
/// No route to the backend or the client (FIB lookup failed): dropped.
pub const FIB_FAILURE: u32 = 15;
/// The next hop's link-layer address is not resolved yet: dropped (the client retransmits; the
/// agent keeps backends' neighbours resolved).
pub const FIB_NO_NEIGH: u32 = 16;
/// Every NAT source port for this backend that the probe tried is taken: dropped.
pub const NAT_PORTS_EXHAUSTED: u32 = 17;
/// TTL / hop limit would reach zero on a forward: passed to the stack, which answers with ICMP.
pub const TTL_EXCEEDED: u32 = 18;

/// Number of `VERDICTS` slots.
pub const COUNT: u32 = 19;

/// Names, indexed by the constants above (as `lb stats` prints them).
pub const NAMES: [&str; COUNT as usize] = [
    "fwd_local",
    "reply_rewritten",
    "not_service",
    "not_ip_tcp_udp",
    "no_backend",
    "malformed",
    "fragment",
    "ip_options",
    "flow_table_full",
    "bad_backend",
    "rewrite_failed",
    "fwd_socket",
    "socket_reply_rewritten",
    "fwd_nat",
    "nat_reply",
    "fib_failure",
    "fib_no_neigh",
    "nat_ports_exhausted",
    "ttl_exceeded",
];
