//! Direct server return (lb_common::dsr): a balancer node sends a DSR flow's packets to the
//! backend's node inside the encapsulation (`encapsulate`), and that node's agent takes them out
//! (`decapsulate`) and hands them to its local path, from where the replies go to the client.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lb_common::{
    dsr::{self, Outer},
    hash, ring_pool, select, BackendInfo, Reason, ServiceKey, UplinkHop, FAMILY_V4, PROTO_TCP, TCP_SYN,
};

use crate::{
    flow,
    frame::Frame,
    maps::{self, scratch, settings, BACKENDS, DECAP_FROM, PREVIOUS_RINGS, SERVICES},
    parse::{self, Parsed},
    ring,
};

const ETH_LEN: usize = 14;
const TCP_LEN: usize = 20;
const TCP_OPT_MSS: u8 = 2;
/// Options a SYN's MSS is looked for among (it is the first in every common stack's SYN).
const MSS_SCAN: usize = 8;

/// What became of a DSR flow's packet.
pub enum Encapsulated {
    /// Encapsulated; the action that sends it.
    Sent(u32),
    /// It would not fit once encapsulated: to be answered with this MTU (refuse::too_big, called
    /// by the caller: from here the call chain's stack would pass the BPF limit).
    TooBig(u16),
}

/// Sends a DSR flow's packet out of `hop` to its backend's node: the client's SYN has its MSS
/// clamped so that full segments fit once encapsulated.
#[inline(never)]
pub fn encapsulate<F: Frame>(frame: &F, p: &Parsed, backend: &BackendInfo, hop: &UplinkHop, hop_flags: u8) -> Result<Encapsulated, Reason> {
    let settings = settings().ok_or(Reason::RewriteFailed)?;
    let overhead = dsr::overhead(p.family);
    let (fits, mtu) = frame.check_mtu(hop.ifindex, overhead as i32)?;
    if p.proto == PROTO_TCP && p.tcp_flags & TCP_SYN != 0 {
        clamp_mss(frame, p, dsr::mss_limit(mtu, p.family))?;
    }
    if !fits {
        let room = mtu.saturating_sub(overhead as u32);
        return Ok(Encapsulated::TooBig(if room > u16::MAX as u32 { u16::MAX } else { room as u16 }));
    }
    let s = scratch()?;
    let outer = Outer {
        hop,
        dst: &backend.addr,
        inner_len: (frame.frame_len() - ETH_LEN) as u16,
        hash: hash::flow_hash(&p.src, p.sport, p.proto),
        port: settings.dsr_port,
        backend_port: backend.port,
        hop_flags,
    };
    if p.family == FAMILY_V4 {
        let out = s.outer.first_chunk_mut::<{ dsr::OUTER4_LEN }>().ok_or(Reason::RewriteFailed)?;
        dsr::outer_v4(&outer, out);
        frame.encap(out, p.family)?;
    } else {
        let out = s.outer.first_chunk_mut::<{ dsr::OUTER6_LEN }>().ok_or(Reason::RewriteFailed)?;
        dsr::outer_v6(&outer, out);
        frame.encap(out, p.family)?;
    }
    Ok(Encapsulated::Sent(frame.send(frame.ingress(), hop.ifindex)))
}

/// Lowers the MSS option of a SYN to `limit` if it announces more.
#[inline(always)]
fn clamp_mss<F: Frame>(frame: &F, p: &Parsed, limit: u16) -> Result<(), Reason> {
    frame.prepare_options(p)?;
    let (start, end) = frame.window();
    let data_offset = ((parse::view::<1>(start, end, p.l4 + 12)?[0] >> 4) as usize) * 4;
    let options_end = p.l4 + data_offset;
    let mut at = p.l4 + TCP_LEN;
    for _ in 0..MSS_SCAN {
        if at + 4 > options_end {
            return Ok(());
        }
        let option = parse::view::<4>(start, end, at)?;
        match option[0] {
            0 => return Ok(()),
            1 => at += 1,
            TCP_OPT_MSS if option[1] == 4 => {
                let mss = u16::from_be_bytes([option[2], option[3]]);
                if mss > limit {
                    frame.set_l4_u16(p, at + 2, mss, limit)?;
                }
                return Ok(());
            }
            _ if option[1] < 2 => return Ok(()),
            _ => at += option[1] as usize,
        }
    }
    Ok(())
}

/// Whether `p` is an encapsulated packet this node is to look at: UDP to the DSR port while it
/// decapsulates.
#[inline(always)]
pub fn is_encapsulated(p: &Parsed) -> bool {
    settings().is_some_and(|s| s.dsr_flags & dsr::DECAP != 0 && p.dport == s.dsr_port && s.dsr_port != 0)
}

/// Takes an encapsulated packet from a balancer node out of its encapsulation: `p` becomes the
/// inner packet, and the local backend it names (the outer destination, and the port in the GUE
/// header) is returned, its address in the scratch area (`Scratch::decap_backend`); the reply
/// entry restoring the service address (the inner destination) is written. A mid-flow packet of
/// a connection this node does not hold, whose service's previous ring chose another backend,
/// returns port 0 instead, that backend's id in `Scratch::second_chance` (and the named port in
/// `Scratch::decap_port`). From anywhere else
/// the packet is not touched (Reason::DecapRefused); one that is not what a balancer sends is
/// dropped. The caller rewrites the destination: called from here, the rewrite's frame on top
/// of this one's and the balancer's would pass the 512-byte BPF stack.
#[inline(never)]
pub fn decapsulate<F: Frame>(frame: &F, p: &mut Parsed) -> Result<u16, Reason> {
    if !maps::in_node_ranges(&DECAP_FROM, p.family, &p.src) {
        return Err(Reason::DecapRefused);
    }
    let (start, end) = frame.window();
    let gue = parse::view::<{ dsr::GUE_LEN }>(start, end, p.l4 + 8).map_err(|_| Reason::DecapMalformed)?;
    let (backend_port, hop_flags) = dsr::read_gue(gue, p.family).ok_or(Reason::DecapMalformed)?;
    let s = scratch()?;
    s.decap_backend = p.dst;
    let family = p.family;
    frame.decap(dsr::overhead(family) as u32).map_err(|_| Reason::DecapMalformed)?;
    frame.prepare().map_err(|_| Reason::DecapMalformed)?;
    let (start, end) = frame.window();
    *p = parse::parse(start, end, frame.frame_len()).map_err(|_| Reason::DecapMalformed)?;
    if p.family != family {
        return Err(Reason::DecapMalformed);
    }
    let backend = s.decap_backend;
    s.decap_port = backend_port;
    let known = flow::reply_known(p, &backend, backend_port, s);
    if dsr::wants_second_chance(hop_flags, p.proto, p.tcp_flags, known) {
        if let Some(id) = previous_choice(p, &backend, backend_port) {
            s.second_chance = id;
            return Ok(0);
        }
    }
    flow::remember_service(p, &backend, backend_port, s)?;
    Ok(backend_port)
}

/// The backend the previous ring of `p`'s service (a VIP) gives `p`'s client, while that ring
/// is kept, if it is a second chance for a packet naming `named`:`named_port`.
#[inline(always)]
fn previous_choice(p: &Parsed, named: &[u8; 16], named_port: u16) -> Option<u32> {
    let key = ServiceKey { addr: p.dst, port: p.dport, proto: p.proto, family: p.family };
    // SAFETY: the id is copied out; no reference outlives the lookup.
    let service_id = unsafe { SERVICES.get(&key) }?.service_id;
    let previous = PREVIOUS_RINGS.get(service_id)?;
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if previous.ring_size == 0 || now >= previous.until_ns {
        return None;
    }
    let entry = select::ring_slot(&p.src, p.sport, p.proto, previous.ring_size);
    let id = ring::ring_entry(ring_pool::slot(previous.ring_start, entry)).ok()?;
    let backend = BACKENDS.get(id)?;
    dsr::second_chance_to(id, backend, service_id, p.family, named, named_port).then_some(id)
}
