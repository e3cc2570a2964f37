//! Stages 3–4: rewrite addresses and ports, and fix checksums incrementally (RFC 1624).
//! XDP writes packet memory directly (received frames carry complete checksums); TC uses the
//! skb helpers, which also handle CHECKSUM_PARTIAL packets from local senders.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use lb_common::{csum, reasons, BackendInfo, ReplyInfo, FAMILY_V4, PROTO_UDP};

use crate::parse::{Parsed, IPV4_CSUM_OFF, IPV4_DST_OFF, IPV4_SRC_OFF, IPV6_DST_OFF, IPV6_SRC_OFF};

#[inline(always)]
fn field<const N: usize>(start: usize, end: usize, off: usize) -> Result<*mut [u8; N], u32> {
    if start + off + N > end {
        return Err(reasons::MALFORMED);
    }
    Ok((start + off) as *mut [u8; N])
}

/// Destination NAT in XDP: dst address → backend address, dport → backend port.
#[inline(always)]
pub fn dnat(start: usize, end: usize, p: &Parsed, backend: &BackendInfo) -> Result<(), u32> {
    let l4_csum = field::<2>(start, end, p.l4_csum_off())?;
    let dport = field::<2>(start, end, p.l4 + 2)?;
    // SAFETY: every pointer was bounds-checked by `field`; packet memory is writable in XDP.
    unsafe {
        let old_l4 = u16::from_be_bytes(*l4_csum);
        // A zero UDP checksum over IPv4 means "none": leave it so.
        let udp_without_csum = p.proto == PROTO_UDP && p.family == FAMILY_V4 && old_l4 == 0;
        let mut l4 = old_l4;
        if p.family == FAMILY_V4 {
            let ip_csum = field::<2>(start, end, p.l3 + IPV4_CSUM_OFF)?;
            let dst = field::<4>(start, end, p.l3 + IPV4_DST_OFF)?;
            let new = [backend.addr[0], backend.addr[1], backend.addr[2], backend.addr[3]];
            let old = *dst;
            *ip_csum = csum::replace(u16::from_be_bytes(*ip_csum), &old, &new).to_be_bytes();
            l4 = csum::replace(l4, &old, &new);
            *dst = new;
        } else {
            let dst = field::<16>(start, end, p.l3 + IPV6_DST_OFF)?;
            l4 = csum::replace(l4, &*dst, &backend.addr);
            *dst = backend.addr;
        }
        l4 = csum::replace16(l4, p.dport, backend.port);
        *dport = backend.port.to_be_bytes();
        if !udp_without_csum {
            // A computed UDP checksum of 0 is sent as 0xffff (RFC 768).
            if p.proto == PROTO_UDP && l4 == 0 {
                l4 = 0xffff;
            }
            *l4_csum = l4.to_be_bytes();
        }
    }
    Ok(())
}

/// Source NAT of a backend's reply in TC: src address/port → the service address/port.
#[inline(always)]
pub fn restore_source(ctx: &TcContext, p: &Parsed, reply: &ReplyInfo) -> Result<(), u32> {
    let failed = |_| reasons::REWRITE_FAILED;
    let l4_csum = p.l4_csum_off();
    let udp_flag = if p.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if p.family == FAMILY_V4 {
        let old = u32::from_ne_bytes([p.src[0], p.src[1], p.src[2], p.src[3]]);
        let new_bytes = [reply.service_addr[0], reply.service_addr[1], reply.service_addr[2], reply.service_addr[3]];
        let new = u32::from_ne_bytes(new_bytes);
        ctx.l4_csum_replace(l4_csum, old as u64, new as u64, BPF_F_PSEUDO_HDR as u64 | udp_flag | 4).map_err(failed)?;
        ctx.l3_csum_replace(p.l3 + IPV4_CSUM_OFF, old as u64, new as u64, 4).map_err(failed)?;
        ctx.store(p.l3 + IPV4_SRC_OFF, &new_bytes, 0).map_err(failed)?;
    } else {
        let mut old = p.src;
        let mut new = reply.service_addr;
        // SAFETY: both buffers are 16 bytes on the stack, as the sizes say.
        let diff = unsafe { bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0) };
        if diff < 0 {
            return Err(reasons::REWRITE_FAILED);
        }
        ctx.l4_csum_replace(l4_csum, 0, diff as u64, BPF_F_PSEUDO_HDR as u64 | udp_flag).map_err(failed)?;
        ctx.store(p.l3 + IPV6_SRC_OFF, &new, 0).map_err(failed)?;
    }
    let old_port = p.sport.to_be() as u64;
    let new_port = reply.service_port.to_be() as u64;
    ctx.l4_csum_replace(l4_csum, old_port, new_port, udp_flag | 2).map_err(failed)?;
    ctx.store(p.l4, &reply.service_port.to_be_bytes(), 0).map_err(failed)?;
    Ok(())
}
