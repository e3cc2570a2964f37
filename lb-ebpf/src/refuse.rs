//! Stage 2, when the service is empty: a new flow for a service with no active backend is
//! refused at once, with a TCP reset or an ICMP port unreachable built in the frame's place
//! (lb_common::refusal) and sent back out of the interface it came in on. Established flows of
//! draining backends never get here: the flow lookup comes first.

use lb_common::{refusal, Reason, FAMILY_V4, PROTO_TCP};

use crate::{
    frame::Frame,
    maps,
    parse::{self, Parsed},
};

/// Answers a new flow to an empty service; `Err(NoBackend)` (dropped) when it may not be
/// answered: a reset, a broadcast or multicast source. Not inlined: a cold path, kept out of
/// the balancing stages' stack frame (the BPF stack is 512 bytes for the whole call chain).
#[inline(never)]
pub fn new_flow<F: Frame>(frame: &F, ingress: u32, p: &Parsed) -> Result<(Reason, u32), Reason> {
    let (start, end) = frame.window();
    // Built in the per-CPU scratch area (the longest is 110 bytes), then copied over the frame.
    let room = &mut maps::scratch()?.refusal;
    // The parser accepted only option-free IPv4 and extension-free IPv6 headers, so each view is
    // exactly Ethernet + IP + the fixed L4 header.
    macro_rules! refuse {
        ($build:path, $in_len:path, $out_len:path) => {{
            let out = room.first_chunk_mut::<{ $out_len }>().ok_or(Reason::NoBackend)?;
            $build(parse::view::<{ $in_len }>(start, end, 0)?, out).ok_or(Reason::NoBackend)?;
            frame.replace(out)?;
        }};
    }
    match (p.family == FAMILY_V4, p.proto == PROTO_TCP) {
        (true, true) => refuse!(refusal::tcp_reset_v4, refusal::TCP4_LEN, refusal::TCP4_LEN),
        (false, true) => refuse!(refusal::tcp_reset_v6, refusal::TCP6_LEN, refusal::TCP6_LEN),
        (true, false) => refuse!(refusal::port_unreachable_v4, refusal::UDP4_LEN, refusal::ICMP4_LEN),
        (false, false) => refuse!(refusal::port_unreachable_v6, refusal::UDP6_LEN, refusal::ICMP6_LEN),
    }
    Ok((Reason::NoBackendRejected, frame.send(ingress, ingress)))
}
