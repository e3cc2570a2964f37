//! Kernel programs of the load balancer. Entry points are thin: parse → select → rewrite, and
//! every outcome becomes an explicit verdict and a counter (lb_common::Reason).
#![no_std]
#![no_main]

mod balance;
mod dsr;
mod flow;
mod forward;
mod frame;
mod maps;
mod mem;
mod nat;
mod parse;
mod refuse;
mod rewrite;
mod ring;
mod runtime;
mod select;
mod service;
mod sockhooks;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{Hook, Reason, FAMILY_V4, FAMILY_V6};

/// Uplink ingress in XDP: balance packets addressed to a service; send full-NAT replies to clients.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: ctx.ctx is the xdp_md the kernel passed to this program, valid for the whole run, and
    // ingress_ifindex is a readable field of it.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    stats::count_iface(ingress, Hook::XdpIngress, (ctx.data_end() - ctx.data()) as u64);
    balance::run(&ctx, ingress)
}

/// Uplink ingress in TC (TCX): the same balancing on the skb, for uplinks where native XDP is
/// slower than the stack (veth and other virtual devices; see crate::frame).
#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program, valid for the whole
    // run, and ifindex is a readable field of it.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    stats::count_iface(ingress, Hook::TcIngress, ctx.len() as u64);
    balance::run(&ctx, ingress) as i32
}

/// Uplink egress (TCX): restore the service address on replies from backends.
#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed to this program, valid for the whole
    // run, and ifindex is a readable field of it.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count_iface(ifindex, Hook::TcEgress, ctx.len() as u64);
    match reverse(&ctx) {
        Ok(()) => {
            stats::count_verdict(Reason::ReplyRewritten);
            TC_ACT_OK
        }
        // Not a reply to a balanced flow (the node's own traffic, ARP, ICMP…): not ours,
        // untouched, not counted as a verdict.
        Err(Reason::NotService | Reason::NotIpTcpUdp) => TC_ACT_OK,
        // A reply that would reach the client from the backend's address is worse than none.
        Err(Reason::RewriteFailed) => {
            stats::count_verdict(Reason::RewriteFailed);
            TC_ACT_SHOT
        }
        // Packets whose headers are not looked up: passed, and counted, because a local
        // backend's reply among them leaves with the backend's address.
        Err(reason) => {
            stats::count_verdict(on_egress(reason));
            TC_ACT_OK
        }
    }
}

/// The egress counter of a packet the parser turned away: the ingress reasons mean "not
/// balanced", these mean "a reply here would not be restored".
#[inline(always)]
fn on_egress(reason: Reason) -> Reason {
    match reason {
        Reason::Malformed => Reason::EgressMalformed,
        Reason::Fragment => Reason::EgressFragment,
        Reason::IpOptions => Reason::EgressIpOptions,
        other => other,
    }
}

#[inline(always)]
fn reverse(ctx: &TcContext) -> Result<(), Reason> {
    frame::Frame::prepare(ctx)?;
    let packet = parse::parse(ctx.data(), ctx.data_end(), ctx.len() as usize)?;
    let reply = flow::reply(&packet).ok_or(Reason::NotService)?;
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
