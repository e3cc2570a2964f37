//! Kernel programs of the load balancer. Entry points are thin: they hand the context to the
//! stage functions and turn the outcome into a verdict.
#![no_std]
#![no_main]

mod maps;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{HOOK_TC_EGRESS, HOOK_XDP_INGRESS};

/// Uplink ingress.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    stats::count_iface(ifindex, HOOK_XDP_INGRESS, len);
    xdp_action::XDP_PASS
}

/// Uplink egress (TCX).
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count_iface(ifindex, HOOK_TC_EGRESS, ctx.len() as u64);
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
