//! Kernel programs of the load balancer. Entry points are thin: parse → select → rewrite, and
//! every outcome becomes an explicit verdict and a counter (lb_common::reasons).
#![no_std]
#![no_main]

mod balance;
mod forward;
mod frame;
mod maps;
mod mem;
mod parse;
mod rewrite;
mod runtime;
mod select;
mod sockhooks;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{reasons, FAMILY_V4, FAMILY_V6, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP_INGRESS};

/// Uplink ingress in XDP: balance packets addressed to a service; send full-NAT replies to clients.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    stats::count_iface(ingress, HOOK_XDP_INGRESS, (ctx.data_end() - ctx.data()) as u64);
    balance::run(&ctx, ingress)
}

/// Uplink ingress in TC (TCX): the same balancing on the skb, for uplinks where native XDP is
/// slower than the stack (veth and other virtual devices; see crate::frame).
#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    stats::count_iface(ingress, HOOK_TC_INGRESS, ctx.len() as u64);
    balance::run(&ctx, ingress) as i32
}

/// Uplink egress (TCX): restore the service address on replies from backends.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count_iface(ifindex, HOOK_TC_EGRESS, ctx.len() as u64);
    match reverse(&ctx) {
        Ok(()) => {
            stats::count_verdict(reasons::REPLY_REWRITTEN);
            TC_ACT_OK
        }
        // Not a reply to a balanced flow: not ours, untouched, not counted as a verdict.
        Err(reasons::NOT_SERVICE) => TC_ACT_OK,
        Err(reason) if reason == reasons::REWRITE_FAILED => {
            stats::count_verdict(reason);
            TC_ACT_SHOT
        }
        Err(_) => TC_ACT_OK,
    }
}

#[inline(always)]
fn reverse(ctx: &TcContext) -> Result<(), u32> {
    frame::Frame::prepare(ctx)?;
    let packet = parse::parse(ctx.data(), ctx.data_end(), ctx.len() as usize)?;
    let reply = select::reply(&packet).ok_or(reasons::NOT_SERVICE)?;
    rewrite::restore_source(ctx, &packet, reply)
}

/// Local clients (cgroup socket hooks): connect/sendmsg go to a backend, getpeername/recvmsg
/// show the service.
#[cgroup_sock_addr(connect4)]
pub fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sockhooks::redirect(&ctx, FAMILY_V4, true)
}

#[cgroup_sock_addr(connect6)]
pub fn lb_connect6(ctx: SockAddrContext) -> i32 {
    sockhooks::redirect(&ctx, FAMILY_V6, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sockhooks::redirect(&ctx, FAMILY_V4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn lb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sockhooks::redirect(&ctx, FAMILY_V6, false)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sockhooks::restore(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sockhooks::restore(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    sockhooks::restore(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn lb_getpeername6(ctx: SockAddrContext) -> i32 {
    sockhooks::restore(&ctx, FAMILY_V6)
}
