//! The two uplink ingress hooks behind one interface, so the balancing stages are written once:
//! XDP (native on NICs that support it: no skb is built for a forwarded frame) and TC ingress
//! (TCX: the skb the stack already built is rewritten in place, which on veth and other virtual
//! uplinks avoids the copy native XDP makes of every multi-buffer or GRO frame).

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_RECOMPUTE_CSUM, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use lb_common::Reason;

use crate::{forward, parse::Parsed, rewrite};

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
}
