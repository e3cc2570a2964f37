//! The two uplink ingress hooks behind one interface, so the balancing stages are written once:
//! XDP (native on NICs that support it: no skb is built for a forwarded frame) and TC ingress
//! (TCX: the skb the stack already built is rewritten in place, which on veth and other virtual
//! uplinks avoids the copy native XDP makes of every multi-buffer or GRO frame).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_check_mtu, bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{csum, Reason, FAMILY_V4};

use crate::{forward, parse::Parsed, rewrite};

const ETH_LEN: usize = 14;
const BPF_MTU_CHK_RET_SUCCESS: i64 = 0;
const BPF_MTU_CHK_RET_FRAG_NEEDED: i64 = 1;

/// Whether the frame fits out of `egress` once `grow` bytes longer, and that interface's MTU
/// (bpf_check_mtu: a TC GSO skb is checked by its segments when they are built, not here).
#[inline(always)]
fn check_mtu(ctx: *mut core::ffi::c_void, egress: u32, grow: i32) -> Result<(bool, u32), Reason> {
    let mut mtu: u32 = 0;
    // SAFETY: ctx is this program's context; mtu is a u32 the helper reads (0: use the frame's
    // length) and writes (the interface's MTU).
    let ret = unsafe { bpf_check_mtu(ctx, egress, &mut mtu, grow, 0) };
    match ret {
        BPF_MTU_CHK_RET_SUCCESS => Ok((true, mtu)),
        BPF_MTU_CHK_RET_FRAG_NEEDED => Ok((false, mtu)),
        _ => Err(Reason::FibFailure),
    }
}

/// A received frame and what can be done with it.
pub trait Frame {
    /// Action that hands the frame to the stack.
    const PASS: u32;
    /// Action that drops the frame.
    const DROP: u32;
    /// Makes the headers readable in the window (TC: pulls them into the linear part).
    fn prepare(&self) -> Result<(), Reason>;
    /// The readable [start, end) window.
    fn window(&self) -> (usize, usize);
    /// Length of the whole frame (a TC skb's payload may lie beyond the window).
    fn frame_len(&self) -> usize;
    fn ctx_ptr(&self) -> *mut core::ffi::c_void;
    /// Rewrites addresses, ports and (for a hop) the TTL, with checksums.
    fn nat(&self, p: &Parsed, to: &rewrite::Nat) -> Result<(), Reason>;
    fn set_macs(&self, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<(), Reason>;
    /// Makes the frame exactly `bytes` (a refusal built in its place).
    fn replace<const N: usize>(&self, bytes: &[u8; N]) -> Result<(), Reason>;
    /// The action that transmits the frame out of `egress`.
    fn send(&self, ingress: u32, egress: u32) -> u32;
    /// The interface the frame arrived on.
    fn ingress(&self) -> u32;
    /// Whether the frame fits out of `egress` once `grow` bytes longer, and its MTU.
    fn check_mtu(&self, egress: u32, grow: i32) -> Result<(bool, u32), Reason> {
        check_mtu(self.ctx_ptr(), egress, grow)
    }
    /// Makes the TCP options of `p` readable in the window too.
    fn prepare_options(&self, p: &Parsed) -> Result<(), Reason>;
    /// Replaces the 16-bit field at `off` of the L4 header region (`old` → `new`), with the L4
    /// checksum.
    fn set_l4_u16(&self, p: &Parsed, off: usize, old: u16, new: u16) -> Result<(), Reason>;
    /// Puts `outer` (a new Ethernet header and the outer headers after it) in front of the IP
    /// packet, whose own Ethernet header it replaces.
    fn encap<const N: usize>(&self, outer: &[u8; N], family: u8) -> Result<(), Reason>;
    /// Removes the `len` bytes after the Ethernet header (an encapsulation), keeping that header.
    fn decap(&self, len: u32) -> Result<(), Reason>;
}

impl Frame for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;

    #[inline(always)]
    fn prepare(&self) -> Result<(), Reason> {
        Ok(())
    }

    #[inline(always)]
    fn window(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn nat(&self, p: &Parsed, to: &rewrite::Nat) -> Result<(), Reason> {
        rewrite::nat(self.data(), self.data_end(), p, to)
    }

    #[inline(always)]
    fn set_macs(&self, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<(), Reason> {
        rewrite::set_macs(self.data(), self.data_end(), smac, dmac)
    }

    #[inline(always)]
    fn replace<const N: usize>(&self, bytes: &[u8; N]) -> Result<(), Reason> {
        let delta = N as i32 - self.frame_len() as i32;
        // The whole frame is rewritten, so it may grow at either end: at the head, where every
        // XDP driver reserves XDP_PACKET_HEADROOM, rather than at the tail, which a veth's frame
        // built from a tight skb does not have. It shrinks at the tail.
        // SAFETY: ctx is this program's xdp_md; the helpers move data/data_end within the buffer
        // or fail, and data/data_end are re-read below.
        let moved = unsafe {
            if delta > 0 {
                bpf_xdp_adjust_head(self.ctx.cast(), -delta)
            } else if delta < 0 {
                bpf_xdp_adjust_tail(self.ctx.cast(), delta)
            } else {
                0
            }
        };
        if moved != 0 {
            return Err(Reason::RewriteFailed);
        }
        let (start, end) = self.window();
        if start + N > end || end - start != N {
            return Err(Reason::RewriteFailed);
        }
        // SAFETY: N bytes of packet memory, bounds-checked above, writable in XDP; `bytes` is
        // elsewhere (a map value); byte copies need no alignment.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, N) };
        Ok(())
    }

    #[inline(always)]
    fn send(&self, ingress: u32, egress: u32) -> u32 {
        forward::send(ingress, egress)
    }

    #[inline(always)]
    fn ingress(&self) -> u32 {
        // SAFETY: ctx is the xdp_md the kernel passed to this program, valid for the whole run.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn prepare_options(&self, _p: &Parsed) -> Result<(), Reason> {
        Ok(())
    }

    #[inline(always)]
    fn set_l4_u16(&self, p: &Parsed, off: usize, old: u16, new: u16) -> Result<(), Reason> {
        let (start, end) = self.window();
        let csum_off = p.l4_csum_off();
        if start + off + 2 > end || start + csum_off + 2 > end {
            return Err(Reason::Malformed);
        }
        // SAFETY: both 2-byte fields were bounds-checked above; XDP packet memory is writable.
        unsafe {
            let check = (start + csum_off) as *mut [u8; 2];
            let sum = csum::replace16(u16::from_be_bytes(*check), old, new);
            *check = sum.to_be_bytes();
            *((start + off) as *mut [u8; 2]) = new.to_be_bytes();
        }
        Ok(())
    }

    #[inline(always)]
    fn encap<const N: usize>(&self, outer: &[u8; N], _family: u8) -> Result<(), Reason> {
        // SAFETY: ctx is this program's xdp_md; the helper moves data within the headroom every
        // driver reserves (XDP_PACKET_HEADROOM) or fails; data/data_end are re-read below.
        if unsafe { bpf_xdp_adjust_head(self.ctx.cast(), -((N - ETH_LEN) as i32)) } != 0 {
            return Err(Reason::RewriteFailed);
        }
        let (start, end) = self.window();
        if start + N > end {
            return Err(Reason::RewriteFailed);
        }
        // SAFETY: N bytes of packet memory, bounds-checked above; `outer` is in a map value.
        unsafe { core::ptr::copy_nonoverlapping(outer.as_ptr(), start as *mut u8, N) };
        Ok(())
    }

    #[inline(always)]
    fn decap(&self, len: u32) -> Result<(), Reason> {
        let (start, end) = self.window();
        let len = len as usize;
        if len < ETH_LEN || start + len + ETH_LEN > end {
            return Err(Reason::Malformed);
        }
        // The Ethernet header moves up to just before the inner IP header (the two do not
        // overlap: every encapsulation is longer than it).
        // SAFETY: both 14-byte ranges are inside the packet (checked above) and disjoint.
        unsafe { core::ptr::copy_nonoverlapping(start as *const u8, (start + len) as *mut u8, ETH_LEN) };
        // SAFETY: as in `encap`; moving data forward within the frame always succeeds.
        if unsafe { bpf_xdp_adjust_head(self.ctx.cast(), len as i32) } != 0 {
            return Err(Reason::RewriteFailed);
        }
        Ok(())
    }
}

/// Headers the balancer reads: Ethernet + IPv6 + TCP (the longest case).
const HEADERS: u32 = 14 + 40 + 20;

impl Frame for TcContext {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;

    #[inline(always)]
    fn prepare(&self) -> Result<(), Reason> {
        let want = if self.len() < HEADERS { self.len() } else { HEADERS };
        if ((self.data_end() - self.data()) as u32) < want {
            self.pull_data(want).map_err(|_| Reason::Malformed)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn window(&self) -> (usize, usize) {
        (self.data(), self.data_end())
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn nat(&self, p: &Parsed, to: &rewrite::Nat) -> Result<(), Reason> {
        rewrite::nat_skb(self, p, to)
    }

    #[inline(always)]
    fn set_macs(&self, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<(), Reason> {
        rewrite::set_macs_skb(self, smac, dmac)
    }

    #[inline(always)]
    fn replace<const N: usize>(&self, bytes: &[u8; N]) -> Result<(), Reason> {
        // SAFETY: ctx is this program's __sk_buff; the helper trims or zero-extends the skb.
        if unsafe { bpf_skb_change_tail(self.skb.skb.cast(), N as u32, 0) } != 0 {
            return Err(Reason::RewriteFailed);
        }
        // A received skb with CHECKSUM_COMPLETE keeps a sum that matches the new bytes.
        self.store(0, bytes, BPF_F_RECOMPUTE_CSUM as u64).map_err(|_| Reason::RewriteFailed)
    }

    #[inline(always)]
    fn send(&self, _ingress: u32, egress: u32) -> u32 {
        // SAFETY: plain helper call; returns TC_ACT_REDIRECT (or TC_ACT_SHOT for a bad ifindex).
        unsafe { bpf_redirect(egress, 0) as u32 }
    }

    #[inline(always)]
    fn ingress(&self) -> u32 {
        // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program, valid for the
        // whole run.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn prepare_options(&self, p: &Parsed) -> Result<(), Reason> {
        // The longest TCP header: 60 bytes.
        let want = (p.l4 + 60) as u32;
        let want = if self.len() < want { self.len() } else { want };
        if ((self.data_end() - self.data()) as u32) < want {
            self.pull_data(want).map_err(|_| Reason::Malformed)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn set_l4_u16(&self, p: &Parsed, off: usize, old: u16, new: u16) -> Result<(), Reason> {
        let (old, new) = (old.to_be(), new.to_be());
        self.l4_csum_replace(p.l4_csum_off(), old as u64, new as u64, 2).map_err(|_| Reason::RewriteFailed)?;
        self.store(off, &new, 0).map_err(|_| Reason::RewriteFailed)
    }

    #[inline(always)]
    fn encap<const N: usize>(&self, outer: &[u8; N], family: u8) -> Result<(), Reason> {
        let l3 = if family == FAMILY_V4 { BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 } else { BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 };
        // Room after the Ethernet header; the flags tell GSO it is now a UDP tunnel packet.
        let flags = (l3 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) as u64;
        let grow = (N - ETH_LEN) as i32;
        // An skb that is still marked encapsulated (a veth hands the peer namespace the skb a
        // balancer encapsulated, mark and all, and the decapsulation does not clear it) refuses
        // the encapsulation flags (-EALREADY): its second chance is grown without them, which is
        // only GSO's business, and such an skb is one segment.
        self.adjust_room(grow, BPF_ADJ_ROOM_MAC, flags)
            .or_else(|_| self.adjust_room(grow, BPF_ADJ_ROOM_MAC, 0))
            .map_err(|_| Reason::RewriteFailed)?;
        self.store(0, outer, 0).map_err(|_| Reason::RewriteFailed)
    }

    #[inline(always)]
    fn decap(&self, len: u32) -> Result<(), Reason> {
        self.adjust_room(-(len as i32), BPF_ADJ_ROOM_MAC, 0).map_err(|_| Reason::Malformed)
    }
}
