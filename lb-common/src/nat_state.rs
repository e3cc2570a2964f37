//! The life of a full-NAT port mapping (`NatReply::state`): the programs stamp it with the time
//! of the last packet and whether the connection closed; the agent frees the mapping (and its
//! port) once it can no longer carry the connection it was made for. Without this a NAT port,
//! once used towards a backend, stayed taken until LRU pressure on the whole table evicted it:
//! after a few thousand connections to one backend every new one was dropped as
//! `nat_ports_exhausted`.
//!
//! Layout: bits 0–29 a clock in units of 2^30 ns (~1.07 s, CLOCK_MONOTONIC as
//! bpf_ktime_get_ns reads it; wraps after ~36 years), bit 30 [`BACKEND_CLOSED`], bit 31
//! [`CLOSED`].

use crate::{FlowInfo, FlowKey, NatReply, FLOW_NAT, PROTO_UDP, TCP_FIN, TCP_RST};

/// The clock's unit: 2^30 ns, so the programs take the time with one shift.
pub const CLOCK_SHIFT: u32 = 30;
const CLOCK_MASK: u32 = (1 << 30) - 1;
/// A reset either way, or the client's FIN first: the backend's socket does not linger.
pub const CLOSED: u32 = 1 << 31;
/// The backend's FIN first: its socket lingers in TIME_WAIT (60 s on Linux), and a new
/// connection from the same NAT port before then could be refused.
pub const BACKEND_CLOSED: u32 = 1 << 30;

/// Units a closed connection's mapping is kept for its last ACKs and retransmissions.
pub const CLOSED_LINGER: u32 = 2;
/// Units a mapping is kept after the backend closed first (≥ Linux's 60 s TIME_WAIT).
pub const TIME_WAIT_LINGER: u32 = 60;
/// Units an open TCP connection may be idle before its mapping is freed (15 min, as IPVS's
/// default for established TCP; marathon-lb's HAProxy closed idle connections after 50 s).
pub const TCP_IDLE: u32 = 840;

/// The clock reading of `now_ns`.
#[inline(always)]
pub fn clock(now_ns: u64) -> u32 {
    (now_ns >> CLOCK_SHIFT) as u32 & CLOCK_MASK
}

/// `state` after a packet at `now_ns` with TCP `flags` (0 for UDP), sent by the backend or the
/// client.
#[inline(always)]
pub fn after_packet(state: u32, now_ns: u64, flags: u8, from_backend: bool) -> u32 {
    let mut closed = state & (CLOSED | BACKEND_CLOSED);
    if flags & TCP_RST != 0 {
        closed |= CLOSED;
    } else if flags & TCP_FIN != 0 && closed == 0 {
        closed = if from_backend { BACKEND_CLOSED } else { CLOSED };
    }
    closed | clock(now_ns)
}

/// Whether a mapping in `state` may be freed at `now_ns`: its connection closed and lingered,
/// or it has been idle past what its protocol allows (UDP: the flows' idle timeout). A zero
/// state is a mapping made by a version that did not stamp them: it is kept until a packet
/// stamps it, so an upgrade never cuts an idle connection.
pub fn expired(state: u32, now_ns: u64, proto: u8, udp_timeout_ns: u64) -> bool {
    if state == 0 {
        return false;
    }
    let idle = clock(now_ns).wrapping_sub(state & CLOCK_MASK) & CLOCK_MASK;
    let allowed = if proto == PROTO_UDP {
        (udp_timeout_ns >> CLOCK_SHIFT) as u32 + 1
    } else if state & CLOSED != 0 {
        CLOSED_LINGER
    } else if state & BACKEND_CLOSED != 0 {
        TIME_WAIT_LINGER
    } else {
        TCP_IDLE
    };
    idle > allowed
}

/// The client's flow entry key of the mapping `reply` under `key` (the backend's reply).
pub fn client_flow(key: &FlowKey, reply: &NatReply) -> FlowKey {
    FlowKey {
        src: reply.client_addr,
        dst: reply.service_addr,
        sport: reply.client_port,
        dport: reply.service_port,
        proto: key.proto,
        family: key.family,
        _pad: 0,
    }
}

/// Whether `flow` sends through the mapping under `key` (it may since have been re-pinned to
/// another port or backend, whose mapping must stay).
pub fn flow_uses(flow: &FlowInfo, key: &FlowKey) -> bool {
    flow.kind == FLOW_NAT && flow.nat_port == key.dport && flow.nat_source(key.family) == key.dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PROTO_TCP, TCP_ACK as ACK, TCP_SYN as SYN};

    const UNIT: u64 = 1 << CLOCK_SHIFT;

    fn expired_tcp(state: u32, units_later: u64, since: u64) -> bool {
        expired(state, since + units_later * UNIT, PROTO_TCP, 0)
    }

    #[test]
    fn an_open_connection_expires_only_after_the_idle_limit() {
        let t0 = 1000 * UNIT;
        let state = after_packet(0, t0, SYN | ACK, true);
        assert!(!expired_tcp(state, TCP_IDLE as u64, t0));
        assert!(expired_tcp(state, TCP_IDLE as u64 + 1, t0));
        let later = after_packet(state, t0 + 500 * UNIT, ACK, true);
        assert!(!expired_tcp(later, TCP_IDLE as u64, t0 + 500 * UNIT), "a packet restarts the idle time");
    }

    #[test]
    fn who_closes_first_decides_the_linger() {
        let t0 = 7 * UNIT;
        let client_first = after_packet(after_packet(0, t0, FIN_ACK, false), t0, FIN_ACK, true);
        assert_eq!(client_first & (CLOSED | BACKEND_CLOSED), CLOSED, "the backend's later FIN does not make it linger");
        assert!(!expired_tcp(client_first, CLOSED_LINGER as u64, t0) && expired_tcp(client_first, CLOSED_LINGER as u64 + 1, t0));
        let backend_first = after_packet(after_packet(0, t0, FIN_ACK, true), t0, FIN_ACK, false);
        assert_eq!(backend_first & (CLOSED | BACKEND_CLOSED), BACKEND_CLOSED);
        assert!(!expired_tcp(backend_first, TIME_WAIT_LINGER as u64, t0) && expired_tcp(backend_first, TIME_WAIT_LINGER as u64 + 1, t0));
        let reset = after_packet(backend_first, t0, TCP_RST, false);
        assert!(expired_tcp(reset, CLOSED_LINGER as u64 + 1, t0), "a reset ends TIME_WAIT");
    }

    #[test]
    fn udp_mappings_follow_the_flow_timeout_and_the_clock_wraps() {
        let timeout = 30 * UNIT;
        let t0 = (1 << 30) * UNIT - 5 * UNIT;
        let state = after_packet(0, t0, 0, true);
        assert!(!expired(state, t0 + 31 * UNIT, PROTO_UDP, timeout), "the clock wrapped in between");
        assert!(expired(state, t0 + 32 * UNIT, PROTO_UDP, timeout));
    }

    const FIN_ACK: u8 = TCP_FIN | ACK;

    #[test]
    fn mappings_from_before_the_stamps_are_kept() {
        assert!(!expired(0, u64::MAX / 2, PROTO_TCP, 0));
        assert!(!expired(0, u64::MAX / 2, PROTO_UDP, 0));
    }
}
