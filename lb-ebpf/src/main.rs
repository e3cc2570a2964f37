//! Kernel programs of the load balancer. Entry points are thin: parse → select → rewrite, and
//! every outcome becomes an explicit verdict and a counter (lb_common::reasons).
#![no_std]
#![no_main]

mod forward;
mod maps;
mod mem;
mod parse;
mod rewrite;
mod select;
mod sockhooks;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
    EbpfContext,
};
use lb_common::{reasons, FAMILY_V4, FAMILY_V6, FLOW_NAT, HOOK_TC_EGRESS, HOOK_XDP_INGRESS};

/// Uplink ingress: balance packets addressed to a service; send full-NAT replies to clients.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    stats::count_iface(ingress, HOOK_XDP_INGRESS, (end - start) as u64);
    let (reason, action) = match balance(&ctx, ingress) {
        Ok(forwarded) => forwarded,
        Err(reason) => (reason, xdp_verdict(reason)),
    };
    stats::count_verdict(reason);
    action
}

/// Returns (reason, action) of a forward, or the reason not to forward.
#[inline(always)]
fn balance(ctx: &XdpContext, ingress: u32) -> Result<(u32, u32), u32> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let packet = parse::parse(start, end, end - start)?;
    let Some(service) = select::service(&packet) else {
        let reply = select::nat_reply(&packet).ok_or(reasons::NOT_SERVICE)?;
        return nat_reply(ctx, ingress, &packet, reply);
    };
    let target = select::backend(ctx.as_ptr(), ingress, &packet, &service)?;
    let len = (end - start) as u64;
    let backend = target.backend;
    if target.flow.kind == FLOW_NAT {
        let route = uplink_route(ctx, ingress, &packet, &backend.addr)?;
        let flow = target.flow;
        let to = rewrite::Nat { src: &flow.nat_addr, sport: flow.nat_port, dst: &backend.addr, dport: backend.port, hop: true };
        let action = route_out(ctx, ingress, &packet, &to, &route)?;
        stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
        return Ok((reasons::FWD_NAT, action));
    }
    let to = rewrite::Nat { src: &packet.src, sport: packet.sport, dst: &backend.addr, dport: backend.port, hop: false };
    rewrite::nat(start, end, &packet, &to)?;
    stats::count_traffic(target.service_id, target.backend_id, len, target.new_flow);
    Ok((reasons::FWD_LOCAL, xdp_action::XDP_PASS))
}

/// A full-NAT backend's reply: from the service, to the client, out towards the client.
#[inline(always)]
fn nat_reply(ctx: &XdpContext, ingress: u32, packet: &parse::Parsed, reply: &lb_common::NatReply) -> Result<(u32, u32), u32> {
    let route = uplink_route(ctx, ingress, packet, &reply.client_addr)?;
    let to = rewrite::Nat {
        src: &reply.service_addr,
        sport: reply.service_port,
        dst: &reply.client_addr,
        dport: reply.client_port,
        hop: true,
    };
    Ok((reasons::NAT_REPLY, route_out(ctx, ingress, packet, &to, &route)?))
}

/// The route to `dst`, which must leave through an uplink (the NAT paths never hand off to the
/// stack: it would see this node's own address as a forwarded packet's source).
#[inline(always)]
fn uplink_route(ctx: &XdpContext, ingress: u32, packet: &parse::Parsed, dst: &[u8; 16]) -> Result<forward::Route, u32> {
    if packet.ttl <= 1 {
        return Err(reasons::TTL_EXCEEDED);
    }
    match forward::lookup(ctx.as_ptr(), ingress, packet.family, packet.proto, dst)? {
        forward::Route::Local => Err(reasons::FIB_FAILURE),
        route => Ok(route),
    }
}

/// Rewrites the packet for `route` and returns the action that sends it.
#[inline(always)]
fn route_out(ctx: &XdpContext, ingress: u32, packet: &parse::Parsed, to: &rewrite::Nat, route: &forward::Route) -> Result<u32, u32> {
    let forward::Route::Uplink { ifindex, smac, dmac, .. } = route else { return Err(reasons::FIB_FAILURE) };
    let (start, end) = (ctx.data(), ctx.data_end());
    rewrite::nat(start, end, packet, to)?;
    rewrite::set_macs(start, end, smac, dmac)?;
    Ok(forward::send(ingress, *ifindex))
}

/// What happens to a packet that is not forwarded: traffic that is not ours goes on untouched;
/// traffic for a service that cannot be served correctly is dropped, never mis-forwarded.
#[inline(always)]
fn xdp_verdict(reason: u32) -> u32 {
    match reason {
        reasons::NO_BACKEND
        | reasons::FLOW_TABLE_FULL
        | reasons::BAD_BACKEND
        | reasons::REWRITE_FAILED
        | reasons::FIB_FAILURE
        | reasons::FIB_NO_NEIGH
        | reasons::NAT_PORTS_EXHAUSTED => xdp_action::XDP_DROP,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
