//! Stage 2, when a new flow may not be balanced: one for a service with no active backend, or
//! from a client outside the service's source ranges, is refused at once, with a TCP reset or an
//! ICMP destination unreachable built in the frame's place (lb_common::refusal) and sent back out
//! of the interface it came in on. Established flows (of draining backends, or of clients a
//! range change left out until the agent removes them) never get here: the flow lookup comes
//! first.

use lb_common::{refusal::{self, Unreachable}, Reason, FAMILY_V4, PROTO_TCP};

use crate::{
    frame::Frame,
    maps,
    parse::{self, Parsed},
};

/// Why a new flow is refused.
#[derive(Clone, Copy)]
pub enum Refused {
    /// The service has no active backend: port unreachable.
    NoBackend,
    /// The client is outside the service's source ranges: administratively prohibited.
    Source,
}

impl Refused {
    /// (the verdict of an answered refusal, of one that may not be answered, the ICMP code).
    #[inline(always)]
    fn verdicts(self) -> (Reason, Reason, Unreachable) {
        match self {
            Refused::NoBackend => (Reason::NoBackendRejected, Reason::NoBackend, Unreachable::Port),
            Refused::Source => (Reason::SourceRefused, Reason::SourceRefused, Unreachable::Prohibited),
        }
    }
}

/// Answers a new flow that is refused; `Err` (dropped) when it may not be answered: a reset, a
/// broadcast or multicast source. Not inlined: a cold path, kept out of the balancing stages'
/// stack frame (the BPF stack is 512 bytes for the whole call chain).
#[inline(never)]
pub fn new_flow<F: Frame>(frame: &F, ingress: u32, p: &Parsed, why: Refused) -> Result<(Reason, u32), Reason> {
    let (answered, unanswered, unreachable) = why.verdicts();
    let (start, end) = frame.window();
    // Built in the per-CPU scratch area (the longest is 110 bytes), then copied over the frame.
    let room = &mut maps::scratch()?.refusal;
    let reset_v4 = |i: &_, o: &mut _| refusal::tcp_reset_v4(i, o);
    let reset_v6 = |i: &_, o: &mut _| refusal::tcp_reset_v6(i, o);
    let unreachable_v4 = |i: &_, o: &mut _| refusal::unreachable_v4(i, o, unreachable, 0);
    let unreachable_v6 = |i: &_, o: &mut _| refusal::unreachable_v6(i, o, unreachable, 0);
    // The parser accepted only option-free IPv4 and extension-free IPv6 headers, so each view is
    // exactly Ethernet + IP + the fixed L4 header.
    macro_rules! refuse {
        ($build:ident, $in_len:path, $out_len:path) => {{
            let out = room.first_chunk_mut::<{ $out_len }>().ok_or(unanswered)?;
            $build(parse::view::<{ $in_len }>(start, end, 0)?, out).ok_or(unanswered)?;
            frame.replace(out)?;
        }};
    }
    match (p.family == FAMILY_V4, p.proto == PROTO_TCP) {
        (true, true) => refuse!(reset_v4, refusal::TCP4_LEN, refusal::TCP4_LEN),
        (false, true) => refuse!(reset_v6, refusal::TCP6_LEN, refusal::TCP6_LEN),
        (true, false) => refuse!(unreachable_v4, refusal::UDP4_LEN, refusal::ICMP4_LEN),
        (false, false) => refuse!(unreachable_v6, refusal::UDP6_LEN, refusal::ICMP6_LEN),
    }
    Ok((answered, frame.send(ingress, ingress)))
}

/// Answers a packet that would not fit its egress once encapsulated with ICMP fragmentation
/// needed / packet too big announcing `mtu`, whatever its protocol (the quote is the IP header
/// and the first 8 bytes after it); dropped (Reason::TooBig) when it may not be answered.
#[inline(never)]
pub fn too_big<F: Frame>(frame: &F, ingress: u32, p: &Parsed, mtu: u16) -> Result<(Reason, u32), Reason> {
    let (start, end) = frame.window();
    let room = &mut maps::scratch()?.refusal;
    let why = Unreachable::TooBig;
    if p.family == FAMILY_V4 {
        let out = room.first_chunk_mut::<{ refusal::ICMP4_LEN }>().ok_or(Reason::TooBig)?;
        refusal::unreachable_v4(parse::view::<{ refusal::UDP4_LEN }>(start, end, 0)?, out, why, mtu).ok_or(Reason::TooBig)?;
        frame.replace(out)?;
    } else {
        let out = room.first_chunk_mut::<{ refusal::ICMP6_LEN }>().ok_or(Reason::TooBig)?;
        refusal::unreachable_v6(parse::view::<{ refusal::UDP6_LEN }>(start, end, 0)?, out, why, mtu).ok_or(Reason::TooBig)?;
        frame.replace(out)?;
    }
    Ok((Reason::TooBig, frame.send(ingress, ingress)))
}
