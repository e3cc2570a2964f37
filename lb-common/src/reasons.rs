//! Outcome counters: one slot of `VERDICTS` per outcome, forwards and every other verdict, so an
//! operator can tell why a packet was not balanced.

/// Why a packet was forwarded or not: the `VERDICTS` slot it is counted in (`reason as u32`).
/// The numbers are the map's layout: a restarted agent reads counters a running kernel program
/// wrote, so a variant keeps its number and new ones are appended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Forwarded to a backend reachable through this node's stack: destination rewritten, passed on.
    FwdLocal = 0,
    /// Reply from a backend rewritten back to the service address (TC egress).
    ReplyRewritten = 1,
    /// Not addressed to a service: passed untouched.
    NotService = 2,
    /// Not IPv4/IPv6, or not TCP/UDP: passed untouched.
    NotIpTcpUdp = 3,
    /// A new flow for a service with no active backend that may not be answered (a TCP reset, a
    /// broadcast or multicast source) or whose answer could not be built: dropped.
    NoBackend = 4,
    /// Truncated or inconsistent headers: passed to the stack, which drops or answers them.
    Malformed = 5,
    /// IP fragment: passed, never balanced (later fragments carry no ports).
    Fragment = 6,
    /// IPv4 options or IPv6 extension headers: passed, never balanced.
    IpOptions = 7,
    /// The flow table refused an insert: dropped so the flow retries rather than splitting.
    FlowTableFull = 8,
    /// A ring slot pointed at a backend id that is not in use (agent bug or torn update): dropped.
    BadBackend = 9,
    /// The rewrite helper failed: dropped.
    RewriteFailed = 10,
    /// A local socket's connect()/sendmsg() to a service was sent straight to a backend.
    FwdSocket = 11,
    /// A local socket's peer/source address was shown as the service (getpeername/recvmsg).
    SocketReplyRewritten = 12,
    /// Forwarded to a backend on another node with full NAT, back out of an uplink (XDP_TX/REDIRECT).
    FwdNat = 13,
    /// A backend's reply to a full-NAT flow, rewritten to the client and sent on.
    NatReply = 14,
    /// No route to the backend or the client (FIB lookup failed): dropped.
    FibFailure = 15,
    /// The next hop's link-layer address is not resolved yet: dropped (the client retransmits; the
    /// agent keeps backends' neighbours resolved).
    FibNoNeigh = 16,
    /// Every NAT source port for this backend that the probe tried is taken: dropped.
    NatPortsExhausted = 17,
    /// TTL / hop limit would reach zero on a forward: passed to the stack, which answers with ICMP.
    TtlExceeded = 18,
    /// TC egress could not read a packet's headers (truncated, inconsistent, or the skb could not
    /// be pulled): passed as it is, so if it was a local backend's reply its source stays the
    /// backend's address.
    EgressMalformed = 19,
    /// An IP fragment leaving on TC egress: passed as it is (fragments are never looked up, later
    /// ones carry no ports), so a fragmented reply of a local backend keeps the backend's address.
    EgressFragment = 20,
    /// An IPv4-options or IPv6-extension-header packet leaving on TC egress: passed as it is, so
    /// such a reply of a local backend keeps the backend's address.
    EgressIpOptions = 21,
    /// A new flow for a service with no active backend, refused at once: a TCP reset or an ICMP
    /// port unreachable sent back (uplinks), or connect()/sendmsg() failing with ECONNREFUSED
    /// (local sockets).
    NoBackendRejected = 22,
    /// A TCP reset to a service that belongs to no pinned flow: dropped, nothing pinned. A reset
    /// opens nothing, so it is no new flow: balancing it would pin a backend (and take a NAT
    /// port) for a connection that, if it existed, is ending. It is late (its flow already
    /// ended or was evicted) or forged; the stack would drop it too (no socket answers a reset),
    /// and dropping it here names the reason in the counters.
    ResetNoFlow = 23,
    /// A new flow for a service not exposed where it arrived (`lb run --expose`: its groups are
    /// not on that uplink, or for a service port not on that address): passed to the stack
    /// untouched, as if there were no service (lb_common::exposure).
    NotExposed = 24,
    /// A new flow from a client outside the service's source ranges (lb_common::sources),
    /// refused: a TCP reset or an ICMP administratively-prohibited sent back (uplinks; dropped
    /// when none may be sent), or connect()/sendmsg() failing with ECONNREFUSED (local sockets).
    /// Also counted per service (`SOURCE_REFUSALS`).
    SourceRefused = 25,
    /// Forwarded to a backend on another node inside the DSR encapsulation (lb_common::dsr),
    /// back out of an uplink: its replies go to the client directly.
    FwdDsr = 26,
    /// A DSR packet from a balancer node (`--decap-from`): decapsulated, its destination
    /// rewritten to the local backend it names, passed on.
    Decapsulated = 27,
    /// An encapsulated packet whose outer source is not in `--decap-from`: passed untouched
    /// (not decapsulated), so nobody outside the fabric injects traffic with a forged inner source.
    DecapRefused = 28,
    /// An encapsulated packet from a balancer node whose encapsulation or inner packet is not
    /// one the balancer sends: dropped, never forwarded.
    DecapMalformed = 29,
    /// A packet for a DSR backend that would not fit the egress once encapsulated: answered
    /// with ICMP fragmentation needed / ICMPv6 packet too big, carrying the MTU that fits.
    TooBig = 30,
    /// A decapsulated DSR packet of a connection this node holds no state for (not a SYN, no
    /// reply entry), whose service's previous ring (kept `--second-chance-secs` after a change)
    /// chose another backend: encapsulated once more, to that backend's node, which holds the
    /// connection (lb_common::dsr::HOP_SECOND_CHANCE: never forwarded again).
    SecondChance = 31,
}

/// Number of outcomes.
pub const COUNT: u32 = Reason::ALL.len() as u32;

/// Number of `VERDICTS` slots: room for outcomes added later, so an upgrade that counts a new
/// one still adopts the pinned counters (a map of another size would need `lb down`).
pub const SLOTS: u32 = 64;
const _: () = assert!(COUNT <= SLOTS);

impl Reason {
    /// Every reason, in slot order (`Reason::ALL[r as usize] == r`).
    pub const ALL: [Reason; 32] = [
        Reason::FwdLocal,
        Reason::ReplyRewritten,
        Reason::NotService,
        Reason::NotIpTcpUdp,
        Reason::NoBackend,
        Reason::Malformed,
        Reason::Fragment,
        Reason::IpOptions,
        Reason::FlowTableFull,
        Reason::BadBackend,
        Reason::RewriteFailed,
        Reason::FwdSocket,
        Reason::SocketReplyRewritten,
        Reason::FwdNat,
        Reason::NatReply,
        Reason::FibFailure,
        Reason::FibNoNeigh,
        Reason::NatPortsExhausted,
        Reason::TtlExceeded,
        Reason::EgressMalformed,
        Reason::EgressFragment,
        Reason::EgressIpOptions,
        Reason::NoBackendRejected,
        Reason::ResetNoFlow,
        Reason::NotExposed,
        Reason::SourceRefused,
        Reason::FwdDsr,
        Reason::Decapsulated,
        Reason::DecapRefused,
        Reason::DecapMalformed,
        Reason::TooBig,
        Reason::SecondChance,
    ];

    /// Whether the ingress programs drop a packet with this outcome: traffic for a service that
    /// cannot be served correctly is dropped, never mis-forwarded; everything else that is not
    /// forwarded (not ours, malformed, TTL 1…) goes on untouched.
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::NoBackend
                | Reason::FlowTableFull
                | Reason::BadBackend
                | Reason::RewriteFailed
                | Reason::FibFailure
                | Reason::FibNoNeigh
                | Reason::NatPortsExhausted
                | Reason::ResetNoFlow
                | Reason::SourceRefused
                | Reason::DecapMalformed
        )
    }

    /// The reason counted in `VERDICTS` slot `index`, if there is one.
    pub fn from_index(index: u32) -> Option<Reason> {
        Self::ALL.get(index as usize).copied()
    }

    /// The name `lb stats` prints.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::FwdLocal => "fwd_local",
            Reason::ReplyRewritten => "reply_rewritten",
            Reason::NotService => "not_service",
            Reason::NotIpTcpUdp => "not_ip_tcp_udp",
            Reason::NoBackend => "no_backend",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::IpOptions => "ip_options",
            Reason::FlowTableFull => "flow_table_full",
            Reason::BadBackend => "bad_backend",
            Reason::RewriteFailed => "rewrite_failed",
            Reason::FwdSocket => "fwd_socket",
            Reason::SocketReplyRewritten => "socket_reply_rewritten",
            Reason::FwdNat => "fwd_nat",
            Reason::NatReply => "nat_reply",
            Reason::FibFailure => "fib_failure",
            Reason::FibNoNeigh => "fib_no_neigh",
            Reason::NatPortsExhausted => "nat_ports_exhausted",
            Reason::TtlExceeded => "ttl_exceeded",
            Reason::EgressMalformed => "egress_malformed",
            Reason::EgressFragment => "egress_fragment",
            Reason::EgressIpOptions => "egress_ip_options",
            Reason::NoBackendRejected => "no_backend_rejected",
            Reason::ResetNoFlow => "reset_no_flow",
            Reason::NotExposed => "not_exposed",
            Reason::SourceRefused => "source_refused",
            Reason::FwdDsr => "fwd_dsr",
            Reason::Decapsulated => "decapsulated",
            Reason::DecapRefused => "decap_refused",
            Reason::DecapMalformed => "decap_malformed",
            Reason::TooBig => "too_big",
            Reason::SecondChance => "second_chance",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_sits_at_its_own_slot() {
        for (slot, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, slot, "{reason:?}");
            assert_eq!(Reason::from_index(slot as u32), Some(*reason));
        }
        assert_eq!(Reason::from_index(COUNT), None);
    }

    #[test]
    fn names_are_distinct_snake_case() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert!(a.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", a.name());
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
