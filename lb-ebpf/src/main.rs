//! Kernel programs of the load balancer. Entry points are thin: parse → select → rewrite, and
//! every outcome becomes an explicit verdict and a counter (lb_common::reasons).
#![no_std]
#![no_main]

mod maps;
mod parse;
mod rewrite;
mod select;
mod sockhooks;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{reasons, FAMILY_V4, FAMILY_V6, HOOK_TC_EGRESS, HOOK_XDP_INGRESS};

/// Uplink ingress: balance packets addressed to a service.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    stats::count_iface(ifindex, HOOK_XDP_INGRESS, (end - start) as u64);
    let (reason, action) = match balance(start, end) {
        Ok(reason) => (reason, xdp_action::XDP_PASS),
        Err(reason) => (reason, xdp_verdict(reason)),
    };
    stats::count_verdict(reason);
    action
}

/// Returns the forward reason, or the reason not to forward.
#[inline(always)]
fn balance(start: usize, end: usize) -> Result<u32, u32> {
    let mut packet = parse::Parsed::default();
    parse::parse(start, end, end - start, &mut packet)?;
    let service = select::service(&packet).ok_or(reasons::NOT_SERVICE)?;
    let target = select::backend(&packet, &service)?;
    rewrite::dnat(start, end, &packet, target.backend)?;
    stats::count_traffic(target.service_id, target.backend_id, (end - start) as u64, target.new_flow);
    Ok(reasons::FWD_LOCAL)
}

/// What happens to a packet that is not forwarded: traffic that is not ours goes on untouched;
/// traffic for a service that cannot be served correctly is dropped, never mis-forwarded.
#[inline(always)]
fn xdp_verdict(reason: u32) -> u32 {
    match reason {
        reasons::NO_BACKEND | reasons::FLOW_TABLE_FULL | reasons::BAD_BACKEND | reasons::REWRITE_FAILED => {
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
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

/// Headers the reply path reads: Ethernet + IPv6 + TCP.
const REPLY_HEADERS: u32 = 14 + 40 + 20;

#[inline(always)]
fn reverse(ctx: &TcContext) -> Result<(), u32> {
    if ctx.data_end() - ctx.data() < REPLY_HEADERS as usize && ctx.len() >= REPLY_HEADERS {
        ctx.pull_data(REPLY_HEADERS).map_err(|_| reasons::MALFORMED)?;
    }
    let mut packet = parse::Parsed::default();
    parse::parse(ctx.data(), ctx.data_end(), ctx.len() as usize, &mut packet)?;
    let reply = select::reply(&packet).ok_or(reasons::NOT_SERVICE)?;
    rewrite::restore_source(ctx, &packet, &reply)
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
