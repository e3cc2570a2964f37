//! Stages 3–4: rewrite addresses and ports, and fix checksums incrementally (RFC 1624).
//! XDP writes packet memory directly (received frames carry complete checksums); TC uses the
//! skb helpers, which also handle CHECKSUM_PARTIAL and CHECKSUM_COMPLETE skbs.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_csum_diff,
    programs::TcContext,
};
use lb_common::{csum, Reason, ReplyInfo, FAMILY_V4, PROTO_UDP};

use crate::parse::{Parsed, IPV4_CSUM_OFF, IPV4_SRC_OFF, IPV6_DST_OFF, IPV6_SRC_OFF};

#[inline(always)]
fn field<const N: usize>(start: usize, end: usize, off: usize) -> Result<*mut [u8; N], Reason> {
    if start + off + N > end {
        return Err(Reason::Malformed);
    }
    Ok((start + off) as *mut [u8; N])
}

/// The new addresses and ports of a rewritten packet.
pub struct Nat<'a> {
    pub src: &'a [u8; 16],
    pub sport: u16,
    pub dst: &'a [u8; 16],
    pub dport: u16,
    /// Forwarded as a router (XDP_TX/REDIRECT): TTL / hop limit goes down by one.
    pub hop: bool,
}

/// Rewrites source and destination in XDP with incremental checksum updates. Destination NAT
/// passes the packet's own source; full NAT changes both. Works on whole native-order words
/// (see `lb_common::csum::update32`). Not inlined: one copy serves the three forwarding paths.
#[inline(never)]
pub fn nat(start: usize, end: usize, p: &Parsed, to: &Nat) -> Result<(), Reason> {
    let l4_csum = field::<2>(start, end, p.l4_csum_off())? as *mut u16;
    let ports = field::<4>(start, end, p.l4)? as *mut u32;
    // SAFETY: every pointer was bounds-checked by `field`; packet memory is writable in XDP and
    // word accesses at any offset are allowed on the architectures this targets.
    unsafe {
        let old_l4 = *l4_csum;
        // A zero UDP checksum over IPv4 means "none": leave it so.
        let udp_without_csum = p.proto == PROTO_UDP && p.family == FAMILY_V4 && old_l4 == 0;
        let mut l4 = old_l4;
        if p.family == FAMILY_V4 {
            let ip_csum = field::<2>(start, end, p.l3 + IPV4_CSUM_OFF)? as *mut u16;
            let src = field::<4>(start, end, p.l3 + IPV4_SRC_OFF)? as *mut u32;
            let dst = field::<4>(start, end, p.l3 + IPV4_SRC_OFF + 4)? as *mut u32;
            let ttl_proto = field::<2>(start, end, p.l3 + 8)? as *mut u16;
            let (new_src, new_dst) = (word(to.src, 0), word(to.dst, 0));
            let mut ip = *ip_csum;
            ip = csum::update32(ip, *src, new_src);
            ip = csum::update32(ip, *dst, new_dst);
            l4 = csum::update32(l4, *src, new_src);
            l4 = csum::update32(l4, *dst, new_dst);
            *src = new_src;
            *dst = new_dst;
            if to.hop {
                let old = *ttl_proto;
                let ttl = field::<1>(start, end, p.l3 + 8)?;
                (*ttl)[0] = (*ttl)[0].wrapping_sub(1);
                ip = csum::update16(ip, old, *ttl_proto);
            }
            *ip_csum = ip;
        } else {
            let src = field::<16>(start, end, p.l3 + IPV6_SRC_OFF)? as *mut u32;
            let dst = field::<16>(start, end, p.l3 + IPV6_DST_OFF)? as *mut u32;
            for i in 0..4 {
                let (new_src, new_dst) = (word(to.src, i), word(to.dst, i));
                l4 = csum::update32(l4, *src.add(i), new_src);
                l4 = csum::update32(l4, *dst.add(i), new_dst);
                *src.add(i) = new_src;
                *dst.add(i) = new_dst;
            }
            if to.hop {
                let hop_limit = field::<1>(start, end, p.l3 + 7)?;
                (*hop_limit)[0] = (*hop_limit)[0].wrapping_sub(1);
            }
        }
        let new_ports = u32::from_ne_bytes(ports_bytes(to.sport, to.dport));
        l4 = csum::update32(l4, *ports, new_ports);
        *ports = new_ports;
        if !udp_without_csum {
            // A computed UDP checksum of 0 is sent as 0xffff (RFC 768); 0xffff is the same in
            // either byte order.
            if p.proto == PROTO_UDP && l4 == 0 {
                l4 = 0xffff;
            }
            *l4_csum = l4;
        }
    }
    Ok(())
}

/// The `i`th 32-bit word of an address, in memory (network) order.
#[inline(always)]
pub fn word(addr: &[u8; 16], i: usize) -> u32 {
    let b = i * 4;
    u32::from_ne_bytes([addr[b], addr[b + 1], addr[b + 2], addr[b + 3]])
}

/// Sets the Ethernet addresses for the next hop.
#[inline(always)]
pub fn set_macs(start: usize, end: usize, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<(), Reason> {
    let dst = field::<6>(start, end, 0)?;
    let src = field::<6>(start, end, 6)?;
    // SAFETY: bounds-checked by `field`.
    unsafe {
        *dst = *dmac;
        *src = *smac;
    }
    Ok(())
}

/// Source NAT of a backend's reply in TC: src address/port → the service address/port.
#[inline(always)]
pub fn restore_source(ctx: &TcContext, p: &Parsed, reply: &ReplyInfo) -> Result<(), Reason> {
    let to = Nat { src: &reply.service_addr, sport: reply.service_port, dst: &p.dst, dport: p.dport, hop: false };
    nat_skb(ctx, p, &to)
}

/// `nat` for an skb in TC. Checksums go through the helpers, which also keep CHECKSUM_PARTIAL
/// (locally sent or GSO) and CHECKSUM_COMPLETE skbs consistent: addresses change the pseudo
/// header (BPF_F_PSEUDO_HDR), ports only the L4 checksum. Only fields that change are touched,
/// and the new values are then written directly (the verifier makes a cloned skb private first):
/// a destination NAT costs three helper calls. Not inlined: one copy serves the forwarding paths
/// and the reply path.
#[inline(never)]
pub fn nat_skb(ctx: &TcContext, p: &Parsed, to: &Nat) -> Result<(), Reason> {
    let failed = |_| Reason::RewriteFailed;
    let l4_csum = p.l4_csum_off();
    // A zero UDP checksum over IPv4 means "none": the helper leaves it so.
    let l4_flags = if p.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let pseudo = l4_flags | BPF_F_PSEUDO_HDR as u64;
    if p.family == FAMILY_V4 {
        for (old, new) in [(word(&p.src, 0), word(to.src, 0)), (word(&p.dst, 0), word(to.dst, 0))] {
            if old != new {
                ctx.l3_csum_replace(p.l3 + IPV4_CSUM_OFF, old as u64, new as u64, 4).map_err(failed)?;
                ctx.l4_csum_replace(l4_csum, old as u64, new as u64, pseudo | 4).map_err(failed)?;
            }
        }
        if to.hop {
            let old_ttl = u16::from_ne_bytes([p.ttl, p.proto]);
            let new_ttl = u16::from_ne_bytes([p.ttl.wrapping_sub(1), p.proto]);
            ctx.l3_csum_replace(p.l3 + IPV4_CSUM_OFF, old_ttl as u64, new_ttl as u64, 2).map_err(failed)?;
        }
    } else {
        for (mut old, mut new) in [(p.src, *to.src), (p.dst, *to.dst)] {
            if old != new {
                let diff = csum_diff(&mut old, &mut new)?;
                ctx.l4_csum_replace(l4_csum, 0, diff, pseudo).map_err(failed)?;
            }
        }
    }
    let old_ports = u32::from_ne_bytes(ports_bytes(p.sport, p.dport));
    let new_ports = u32::from_ne_bytes(ports_bytes(to.sport, to.dport));
    if old_ports != new_ports {
        ctx.l4_csum_replace(l4_csum, old_ports as u64, new_ports as u64, l4_flags | 4).map_err(failed)?;
    }
    // The helpers above may have moved the packet: fresh pointers, checked again.
    let (start, end) = (ctx.data(), ctx.data_end());
    let ports = field::<4>(start, end, p.l4)? as *mut u32;
    // SAFETY: bounds-checked by `field`; TC packet memory is writable.
    unsafe {
        if p.family == FAMILY_V4 {
            let addrs = field::<8>(start, end, p.l3 + IPV4_SRC_OFF)? as *mut u32;
            *addrs = word(to.src, 0);
            *addrs.add(1) = word(to.dst, 0);
            if to.hop {
                (*field::<1>(start, end, p.l3 + 8)?)[0] = p.ttl.wrapping_sub(1);
            }
        } else {
            *field::<16>(start, end, p.l3 + IPV6_SRC_OFF)? = *to.src;
            *field::<16>(start, end, p.l3 + IPV6_DST_OFF)? = *to.dst;
            if to.hop {
                (*field::<1>(start, end, p.l3 + 7)?)[0] = p.ttl.wrapping_sub(1);
            }
        }
        *ports = new_ports;
    }
    Ok(())
}

/// Source and destination ports as they sit in the L4 header.
#[inline(always)]
fn ports_bytes(sport: u16, dport: u16) -> [u8; 4] {
    [(sport >> 8) as u8, sport as u8, (dport >> 8) as u8, dport as u8]
}

/// The checksum difference between two equally sized blocks of header words.
#[inline(always)]
fn csum_diff<T>(old: &mut T, new: &mut T) -> Result<u64, Reason> {
    let size = core::mem::size_of::<T>() as u32;
    // SAFETY: both are `size` bytes on the stack, as the helper reads them.
    let diff = unsafe { bpf_csum_diff((old as *mut T).cast(), size, (new as *mut T).cast(), size, 0) };
    if diff < 0 {
        return Err(Reason::RewriteFailed);
    }
    Ok(diff as u64)
}

/// `set_macs` for an skb in TC.
#[inline(always)]
pub fn set_macs_skb(ctx: &TcContext, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<(), Reason> {
    let macs = [dmac[0], dmac[1], dmac[2], dmac[3], dmac[4], dmac[5], smac[0], smac[1], smac[2], smac[3], smac[4], smac[5]];
    ctx.store(0, &macs, 0).map_err(|_| Reason::RewriteFailed)
}
