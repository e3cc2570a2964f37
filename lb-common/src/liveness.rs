//! Whether a pinned flow still holds its backend: decided once, here, for the programs
//! (lb-ebpf flow.rs), `lb explain` and `lb flows`, so the three cannot drift (explain once
//! skipped the UDP idle test and called flows "existing" that the programs had let go).

use crate::{BackendInfo, FlowInfo, BACKEND_UNUSED, PROTO_UDP};

/// The clock reading and the UDP idle timeout, both in nanoseconds of bpf_ktime_get_ns
/// (CLOCK_MONOTONIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpClock {
    pub now_ns: u64,
    pub timeout_ns: u64,
}

/// Whether `flow` (of protocol `proto`) is still pinned to `backend`, the entry its backend id
/// names now: the entry is in use with the generation the flow was pinned with (a removed
/// backend's id is unused, a re-used one has a newer generation), and a UDP flow has not been
/// idle for longer than the timeout. Only UDP flows idle out, so only they ask for the clock;
/// without one (no settings written yet) a UDP flow is taken as ended.
#[inline(always)]
pub fn flow_alive(flow: &FlowInfo, backend: &BackendInfo, proto: u8, udp_clock: impl FnOnce() -> Option<UdpClock>) -> bool {
    if backend.state == BACKEND_UNUSED || backend.generation != flow.backend_generation {
        return false;
    }
    if proto != PROTO_UDP {
        return true;
    }
    // Wrapping: the stamp is never after the reading; on a clock near its start a stamp made
    // up "before boot" (a test's) still reads as that long ago.
    udp_clock().is_some_and(|clock| clock.now_ns.wrapping_sub(flow.last_seen_ns) <= clock.timeout_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BACKEND_ACTIVE, BACKEND_DRAINING, PROTO_TCP};

    const SECOND: u64 = 1_000_000_000;

    fn pinned(generation: u32, last_seen_ns: u64) -> FlowInfo {
        FlowInfo { backend_id: 3, backend_generation: generation, last_seen_ns, ..FlowInfo::default() }
    }

    fn backend(state: u8, generation: u32) -> BackendInfo {
        BackendInfo { state, generation, ..BackendInfo::default() }
    }

    fn clock(now_ns: u64) -> impl FnOnce() -> Option<UdpClock> {
        move || Some(UdpClock { now_ns, timeout_ns: 30 * SECOND })
    }

    #[test]
    fn a_flow_holds_its_backend_while_the_entry_is_the_same_backend() {
        let flow = pinned(7, 0);
        assert!(flow_alive(&flow, &backend(BACKEND_ACTIVE, 7), PROTO_TCP, || None));
        assert!(flow_alive(&flow, &backend(BACKEND_DRAINING, 7), PROTO_TCP, || None), "draining keeps its flows");
        assert!(!flow_alive(&flow, &backend(BACKEND_ACTIVE, 8), PROTO_TCP, || None), "the id was re-used");
        assert!(!flow_alive(&flow, &backend(BACKEND_UNUSED, 7), PROTO_TCP, || None), "the backend was removed");
    }

    #[test]
    fn only_udp_flows_idle_out_and_only_they_read_the_clock() {
        let flow = pinned(1, 100 * SECOND);
        let live = backend(BACKEND_ACTIVE, 1);
        assert!(flow_alive(&flow, &live, PROTO_UDP, clock(130 * SECOND)));
        assert!(!flow_alive(&flow, &live, PROTO_UDP, clock(131 * SECOND)), "idle past the timeout");
        assert!(flow_alive(&flow, &live, PROTO_TCP, || panic!("TCP flows do not read the clock")));
        assert!(!flow_alive(&flow, &live, PROTO_UDP, || None), "no settings: no UDP flow holds");
        // A stamp "before boot" (a machine up for a minute) is long idle, not in the future.
        assert!(!flow_alive(&pinned(1, 0u64.wrapping_sub(600 * SECOND)), &live, PROTO_UDP, clock(60 * SECOND)));
    }
}
